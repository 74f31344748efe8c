"""Scoring several particles together: each utility runs unchanged, the model calls are shared.

A utility's ``score`` is ordinary sequential code that calls ``generator.generate`` (perhaps more
than once, with prompts that depend on earlier answers). To serve K particles with one model call
per step without changing that code, each particle's ``score`` runs in its own thread against a
:class:`ParticleGenerator`, whose ``generate`` posts a request and waits. The calling thread is
the only one that touches the model: it waits until every particle still scoring has posted a
request (or returned), serves that round with one mixed-adapter call per ``max_new_tokens``, hands
the answers back, and waits for the next round.

The rounds are a pure function of the utilities' own call sequences (round r holds each particle's
r-th call), never of thread timing, so the work done per particle is deterministic. This module
imports no model library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmq.errors import UtilityError
from swarmq.modeling._judges import LoadsModels
from swarmq.objectives import Utility, UtilityResult

__all__ = ["ParticleGenerator", "Request", "score_together"]

# How long the serving thread waits for the particle threads to end after an error stopped the
# round trip; they only run utility code (no model calls), so this is generous.
_JOIN_TIMEOUT = 60.0


@dataclass
class Request:
    """One model call a particle's utility made: ``generate``, or another model method by name."""

    slot: int
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class _Rendezvous:
    """Collects one request per live particle, then lets the serving thread answer the round."""

    def __init__(self, count: int) -> None:
        self._cond = threading.Condition()
        self._live = count  # particles whose score() has not returned yet
        self._pending: dict[int, Request] = {}
        self._failure: BaseException | None = None

    def submit(self, request: Request) -> Any:
        """Called by a particle thread: post ``request`` and wait for its answer."""
        with self._cond:
            if self._failure is not None:
                raise self._failure
            if request.slot in self._pending:
                raise UtilityError(
                    "a utility called its generator from two threads at once; calls to one "
                    "generator must be sequential"
                )
            self._pending[request.slot] = request
            self._cond.notify_all()
            while not request.done:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def leave(self) -> None:
        """Called by a particle thread when its score() returned or raised."""
        with self._cond:
            self._live -= 1
            self._cond.notify_all()

    def next_round(self) -> list[Request] | None:
        """Wait until every live particle has posted a request; None once all have left."""
        with self._cond:
            while len(self._pending) < self._live:
                self._cond.wait()
            if not self._pending:
                return None
            requests = [self._pending[slot] for slot in sorted(self._pending)]
            self._pending.clear()
            return requests

    def answer(self, requests: Sequence[Request]) -> None:
        with self._cond:
            for request in requests:
                request.done = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """Stop the round trip: waiting and later requests raise ``error``."""
        with self._cond:
            self._failure = error
            for request in self._pending.values():
                request.error, request.done = error, True
            self._pending.clear()
            self._cond.notify_all()


class ParticleGenerator(LoadsModels):
    """The :class:`swarmq.objectives.TextGenerator` one particle's utility sees in a shared batch.

    ``generate`` and ``generate_chat`` are answered by the shared, mixed-adapter call of their
    round. The other model methods named in ``methods`` (``loglikelihood``,
    ``loglikelihood_tokens``) are forwarded too and run for this particle alone, with its
    position loaded: exact, only not batched.
    """

    def __init__(
        self,
        rendezvous: _Rendezvous,
        slot: int,
        methods: Collection[str],
        device: str | None = None,
    ) -> None:
        self._rendezvous = rendezvous
        self._slot = slot
        self._methods = frozenset(methods)
        #: The evaluated model's device, as the evaluator has it: judge and reward models of a
        #: utility default to it.
        self.device = device

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` under this particle's position (new text only)."""
        result: list[str] = self._rendezvous.submit(
            Request(self._slot, "generate", (list(prompts), max_new_tokens))
        )
        return result

    def generate_chat(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy chat replies (see :class:`swarmq.objectives.ChatGenerator`), batched too."""
        result: list[str] = self._rendezvous.submit(
            Request(self._slot, "generate_chat", (list(prompts), max_new_tokens))
        )
        return result

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Only the evaluator's declared model methods: a utility that probes for an optional
        # capability (hasattr, a runtime-checkable Protocol) must see what the model really has.
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._rendezvous.submit(Request(self._slot, name, args, dict(kwargs)))

        return call


def score_together(
    utilities: Sequence[Utility],
    examples: Sequence[Mapping[str, Any]],
    serve: Callable[[list[Request]], None],
    methods: Collection[str] = (),
    device: str | None = None,
) -> list[UtilityResult]:
    """Run ``utilities[i].score`` for every slot i at once; ``serve`` answers each round.

    ``serve`` receives the round's requests (at most one per slot, in slot order) and sets each
    one's ``result`` or ``error``; it runs in the calling thread, which is the only one that
    should touch the model. An error raised by ``serve`` itself stops every particle and is
    raised here; otherwise the first particle's (by slot) error is raised, after all finished.
    Give one utility instance per slot: a utility that keeps state between calls stays correct.
    ``device`` is what the generators report as theirs (a utility's judge model defaults to it).
    """
    count = len(utilities)
    rendezvous = _Rendezvous(count)
    results: list[UtilityResult | None] = [None] * count
    errors: list[BaseException | None] = [None] * count

    def run(slot: int) -> None:
        try:
            generator = ParticleGenerator(rendezvous, slot, methods, device)
            results[slot] = utilities[slot].score(generator, examples)
        except BaseException as err:  # handed to the calling thread, which raises it
            errors[slot] = err
        finally:
            rendezvous.leave()

    threads = [
        threading.Thread(target=run, args=(slot,), name=f"swarmq-particle-{slot}", daemon=True)
        for slot in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        while (requests := rendezvous.next_round()) is not None:
            serve(requests)
            rendezvous.answer(requests)
    except BaseException as err:
        # A model error, or a soft time limit raised into this thread: stop the particles too.
        rendezvous.fail(err)
        for thread in threads:
            thread.join(_JOIN_TIMEOUT)
        raise
    for thread in threads:
        thread.join()
    for slot in range(count):
        error = errors[slot]
        if error is not None:
            raise error
    out: list[UtilityResult] = []
    for slot, result in enumerate(results):
        if not isinstance(result, UtilityResult):
            raise UtilityError(
                f"utility {utilities[slot].name!r} returned {type(result).__name__}, "
                "not a UtilityResult"
            )
        out.append(result)
    return out
