"""The 'Loading weights' code in docs/exo-integration.md runs as written, on every backend."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.weights.synthetic import tensor_bytes

DOC = Path(__file__).parents[2] / "docs" / "exo-integration.md"


def doc_functions() -> dict[str, Any]:
    section = DOC.read_text().split("## Loading weights", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


async def test_load_shard_from_the_docs(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    functions = doc_functions()
    # exo's PipelineShardMetadata for the last of two nodes of a 6-layer model: layers [3, 6).
    shard = SimpleNamespace(start_layer=3, end_layer=6, n_layers=6)
    weights = await functions["load_shard"](backend, device, str(sharded.parent), shard)
    layers = {name.split(".")[2] for name in weights.tensors if name.startswith("model.layers.")}
    assert layers == {"3", "4", "5"}
    assert {"model.norm.weight", "lm_head.weight"} <= set(weights.tensors)
    assert "model.embed_tokens.weight" not in weights.tensors
    name = "model.layers.4.mlp.up_proj.weight"
    tensor = weights.tensors[name]
    assert tensor.shape == (176, 64) and tensor.dtype == "BF16"
    assert await weights.read(backend, name) == tensor_bytes(name, tensor.size_bytes)
    await functions["unload_shard"](backend, weights)
    assert backend.live_handles() == []
