"""The weight space of a swarm: expert pools read from safetensors, positions written back."""

from __future__ import annotations

from swarmq.weights._export import export_adapter, state_dict_from_vector
from swarmq.weights._io import (
    ADAPTER_CONFIG,
    CONFIG_FIELDS,
    MAX_WEIGHT,
    Expert,
    Pool,
    check_weights,
    discover_experts,
    load_pool,
    read_adapter_config,
    read_expert,
)
from swarmq.weights._layout import Layout, TensorSpec

__all__ = [
    "ADAPTER_CONFIG",
    "CONFIG_FIELDS",
    "MAX_WEIGHT",
    "Expert",
    "Layout",
    "Pool",
    "TensorSpec",
    "check_weights",
    "discover_experts",
    "export_adapter",
    "load_pool",
    "read_adapter_config",
    "read_expert",
    "state_dict_from_vector",
]
