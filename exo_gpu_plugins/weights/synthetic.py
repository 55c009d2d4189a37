"""Synthetic safetensors checkpoints shaped like Llama's, for tests, the benchmark and the CLI.

The files are real safetensors bytes, laid out the way Hugging Face writes them: tensors are
assigned to shards in model order (embedding, layers 0..n-1, final norm, head), and inside each
file the tensors are ordered by name (so `model.layers.10.` comes before `model.layers.2.`, as in
real checkpoints), the header padded with spaces to a multiple of 8 bytes. A sharded checkpoint
comes with its `model.safetensors.index.json`.

Tensor bytes are pseudo-random but reproducible: `tensor_bytes(name, size, seed)` gives the bytes
of any tensor without reading the file, so a test can compare what reached the device. Plain
Python (numpy is not a dependency of the package), so the CLI can use it wherever it runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from exo_gpu_plugins.dtypes import DTYPES
from exo_gpu_plugins.weights.checkpoint import INDEX_NAME

__all__ = ["LlamaShape", "TensorSpec", "tensor_bytes", "write_llama", "write_safetensors"]

TensorSpec = tuple[str, str, tuple[int, ...]]  # name, dtype, shape

_POOL_BYTES = (1 << 20) + 9  # not a power of two, so shifted copies of the pool never line up
_CHUNK = 8 << 20


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama-style decoder (defaults: a tiny one for tests)."""

    layers: int = 4
    hidden: int = 64
    kv_hidden: int = 16
    intermediate: int = 176
    vocab: int = 256
    dtype: str = "BF16"
    tied: bool = False

    @classmethod
    def for_size(cls, size_bytes: int, *, dtype: str = "BF16") -> LlamaShape:
        """A TinyLlama-wide model (hidden 2048) with as many layers as make about `size_bytes`."""
        base = cls._wide(0, dtype).nbytes
        per_layer = cls._wide(1, dtype).nbytes - base
        return cls._wide(max(1, round((size_bytes - base) / per_layer)), dtype)

    @classmethod
    def _wide(cls, layers: int, dtype: str) -> LlamaShape:
        return cls(
            layers=layers, hidden=2048, kv_hidden=256, intermediate=5632, vocab=32000, dtype=dtype
        )

    def tensors(self) -> list[TensorSpec]:
        """Every tensor in model order, named as in Hugging Face Llama checkpoints."""
        h, kv, inter, d = self.hidden, self.kv_hidden, self.intermediate, self.dtype
        specs: list[TensorSpec] = [("model.embed_tokens.weight", d, (self.vocab, h))]
        for i in range(self.layers):
            prefix = f"model.layers.{i}."
            specs += [
                (prefix + "input_layernorm.weight", d, (h,)),
                (prefix + "self_attn.q_proj.weight", d, (h, h)),
                (prefix + "self_attn.k_proj.weight", d, (kv, h)),
                (prefix + "self_attn.v_proj.weight", d, (kv, h)),
                (prefix + "self_attn.o_proj.weight", d, (h, h)),
                (prefix + "post_attention_layernorm.weight", d, (h,)),
                (prefix + "mlp.gate_proj.weight", d, (inter, h)),
                (prefix + "mlp.up_proj.weight", d, (inter, h)),
                (prefix + "mlp.down_proj.weight", d, (h, inter)),
            ]
        specs.append(("model.norm.weight", d, (h,)))
        if not self.tied:
            specs.append(("lm_head.weight", d, (self.vocab, h)))
        return specs

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(dtype, shape) for _, dtype, shape in self.tensors())


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * DTYPES[dtype].bits // 8


def _pool(seed: int) -> bytes:
    return random.Random(seed).randbytes(_POOL_BYTES)


def tensor_bytes(name: str, size: int, seed: int = 0) -> bytes:
    """The bytes `write_safetensors` writes for tensor `name` of `size` bytes."""
    return b"".join(_chunks(_pool(seed), name, size))


def _chunks(pool: bytes, name: str, size: int) -> Iterator[bytes]:
    start = zlib.crc32(name.encode()) % _POOL_BYTES
    rotated = pool[start:] + pool[:start]
    if size <= _POOL_BYTES:
        yield rotated[:size]
        return
    periods = min(-(-size // _POOL_BYTES), -(-_CHUNK // _POOL_BYTES))
    block = rotated * periods  # a whole number of periods: consecutive pieces join up
    left = size
    while left > 0:
        piece = block if left >= len(block) else block[:left]
        yield piece
        left -= len(piece)


def write_safetensors(
    path: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    *,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file holding `specs` (bytes from `tensor_bytes`); returns its size.
    Tensors are laid out as safetensors' own serializer does, larger elements first (then by
    name), so every tensor is aligned to its element size."""
    ordered = sorted(specs, key=lambda spec: (-DTYPES[spec[1]].bits, spec[0]))
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    position = 0
    for name, dtype, shape in ordered:
        size = _nbytes(dtype, shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [position, position + size],
        }
        position += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    pool = _pool(seed)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little"))
        handle.write(raw)
        for name, dtype, shape in ordered:
            for piece in _chunks(pool, name, _nbytes(dtype, shape)):
                handle.write(piece)
    return 8 + len(raw) + position


def write_llama(
    folder: str | os.PathLike[str], shape: LlamaShape | None = None, *, shards: int = 1, seed: int = 0
) -> Path:
    """Write a Llama-shaped checkpoint into `folder`: `model.safetensors` when `shards` is 1, else
    `model-0000k-of-0000n.safetensors` files and their index. Returns what to load: the file, or
    the index."""
    shape = shape or LlamaShape()
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    specs = shape.tensors()
    if shards <= 1:
        path = target / "model.safetensors"
        write_safetensors(path, specs, seed=seed)
        return path
    groups = _split(specs, shards)
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, start=1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(target / name, group, seed=seed)
        weight_map.update({spec[0]: name for spec in group})
    index = target / INDEX_NAME
    index.write_text(
        json.dumps(
            {"metadata": {"total_size": shape.nbytes}, "weight_map": dict(sorted(weight_map.items()))},
            indent=2,
        )
    )
    return index


def _split(specs: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Consecutive groups of about equal bytes, in model order (how Hugging Face shards)."""
    total = sum(_nbytes(d, s) for _, d, s in specs)
    limit = total / shards
    groups: list[list[TensorSpec]] = [[]]
    filled = 0
    for spec in specs:
        size = _nbytes(spec[1], spec[2])
        if groups[-1] and filled + size > limit * 1.0001 and len(groups) < shards:
            groups.append([])
            filled = 0
        groups[-1].append(spec)
        filled += size
    return groups
