"""Safetensors weights into device memory: a file, a sharded checkpoint or exo's layer range of it.

    loaded = await load_weights(backend, "vulkan:0", "model/", layers=LayerRange(0, 16, 32))
    ...
    await loaded.deallocate(backend)

`format` checks a file's header, `checkpoint` resolves files, folders and indexes, `selection`
picks tensors by layer range and name, `plan` lays them out in allocations, `loader` copies them
file to device, `placement` and `spread` do the same over several devices of a node at once
(`load_across`), `models` holds the results, `verify` compares them with the files, `synthetic`
writes Llama-shaped test checkpoints.
"""

from __future__ import annotations

from exo_gpu_plugins.weights.loader import load_plan, load_weights
from exo_gpu_plugins.weights.models import (
    LoadedWeights,
    LoadProgress,
    PlacedWeights,
    PlacementProgress,
)
from exo_gpu_plugins.weights.placement import (
    DeviceRoom,
    PlacementPlan,
    SplitRequest,
    place_checkpoint,
)
from exo_gpu_plugins.weights.plan import CheckpointPlan, plan_checkpoint
from exo_gpu_plugins.weights.selection import LayerRange
from exo_gpu_plugins.weights.spread import load_across, load_placement, plan_across
from exo_gpu_plugins.weights.tensors import LoadedTensor

__all__ = [
    "CheckpointPlan",
    "DeviceRoom",
    "LayerRange",
    "LoadProgress",
    "LoadedTensor",
    "LoadedWeights",
    "PlacedWeights",
    "PlacementPlan",
    "PlacementProgress",
    "SplitRequest",
    "load_across",
    "load_placement",
    "load_plan",
    "load_weights",
    "place_checkpoint",
    "plan_across",
    "plan_checkpoint",
]
