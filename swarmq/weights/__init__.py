"""The weight space of a swarm: expert pools read from safetensors, positions written back."""

from __future__ import annotations

from swarmq.weights._export import export_adapter, state_dict_from_vector
from swarmq.weights._io import Expert, Pool, discover_experts, load_pool, read_expert
from swarmq.weights._layout import Layout, TensorSpec

__all__ = [
    "Expert",
    "Layout",
    "Pool",
    "TensorSpec",
    "discover_experts",
    "export_adapter",
    "load_pool",
    "read_expert",
    "state_dict_from_vector",
]
