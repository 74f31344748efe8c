"""swarmq: Model Swarms over LLM expert adapters, as a crash-safe job queue.

The packages, by concern:

* :mod:`swarmq.swarm` - the algorithm, pure and I/O-free;
* :mod:`swarmq.weights` - the weight space: expert pools, layouts, export;
* :mod:`swarmq.objectives` - utilities (what the swarm maximises) and their data;
* :mod:`swarmq.modeling` - the resident base model that evaluates positions;
* :mod:`swarmq.storage` - the database and the artifact store;
* :mod:`swarmq.engine` - create, evaluate, coordinate and recover searches;
* :mod:`swarmq.execution` - Celery tasks and the embedded runner;
* :mod:`swarmq.reporting` - reports, baselines, audit and history of a search;
* :mod:`swarmq.cli` - the ``swarmq`` command.
"""

__version__ = "0.1.0"
