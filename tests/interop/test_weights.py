"""A loaded checkpoint as torch tensors in place: equal to `safetensors.torch.load_file`, every
dtype mapped, the tensors' storage inside the loaded memory (a torch write is read back by
`copy_from_device`), and a dtype DLPack cannot carry refused with the tensor named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop import DLPACK_DTYPES
from exo_gpu_plugins.weights import load_weights
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama, write_safetensors
from tests.interop.conftest import device_of, require_torch, view_device


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama(tmp_path_factory.mktemp("llama"), LlamaShape(layers=2), shards=2)


@pytest.mark.parametrize("exportable", [False, True])
async def test_loaded_tensors_equal_safetensors(
    backend: GPUBackend[Any], llama: Path, exportable: bool
) -> None:
    torch = require_torch()
    from safetensors.torch import load_file

    where = view_device(backend)
    if where == "cuda" and not exportable:
        pytest.skip("CUDA views need exportable allocations")
    loaded = await load_weights(backend, device_of(backend), llama, exportable=exportable)
    tensors = await loaded.to_torch(backend, device=where)
    expected: dict[str, Any] = {}
    for file in loaded.files:
        expected.update(load_file(file, device=str(next(iter(tensors.values())).device)))
    assert tensors.keys() == expected.keys()
    for name, tensor in tensors.items():
        assert tensor.dtype == expected[name].dtype and tensor.shape == expected[name].shape, name
        # Bit for bit (random bytes hold NaNs, which torch.equal calls unequal to themselves).
        same = torch.equal(tensor.view(torch.uint8), expected[name].view(torch.uint8))
        assert same, f"{name} differs from load_file's"
    # The tensors are the loaded memory: an in-place write is read back from the device.
    name, entry = next((n, t) for n, t in loaded.tensors.items() if t.dtype == "BF16")
    tensors[name].fill_(1.0)
    if tensors[name].is_cuda:
        torch.cuda.synchronize()  # the consumer's writes finish before the backend reads
    assert entry.handle is not None
    raw = await backend.copy_from_device(entry.handle, entry.offset_bytes, entry.size_bytes)
    assert raw == torch.ones(entry.shape, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()
    await loaded.deallocate(backend)
    assert torch.equal(tensors[name].cpu(), torch.ones(entry.shape, dtype=torch.bfloat16))


async def test_every_dtype_of_a_checkpoint(backend: GPUBackend[Any], tmp_path: Path) -> None:
    torch = require_torch()
    from safetensors.torch import load_file

    path = tmp_path / "dtypes.safetensors"
    write_safetensors(path, [(f"t.{dtype}", dtype, (3, 5)) for dtype in DLPACK_DTYPES])
    where = view_device(backend)
    loaded = await load_weights(backend, device_of(backend), path, exportable=where == "cuda")
    views = await loaded.views(backend, device=where)
    tensors = await loaded.to_torch(backend, device=where)
    expected = load_file(path)
    for name, tensor in tensors.items():
        assert views[name].dtype == loaded.tensors[name].dtype
        assert tensor.dtype == expected[name].dtype, name
        assert torch.equal(tensor.cpu().view(torch.uint8), expected[name].view(torch.uint8)), name


async def test_empty_tensors_come_out_empty(backend: GPUBackend[Any], tmp_path: Path) -> None:
    torch = require_torch()
    path = tmp_path / "empty.safetensors"
    write_safetensors(path, [("a", "F16", (0, 4)), ("b", "F32", (2, 2))])
    where = view_device(backend)
    loaded = await load_weights(backend, device_of(backend), path, exportable=where == "cuda")
    tensors = await loaded.to_torch(backend, device=where)
    assert tensors["a"].shape == (0, 4) and tensors["a"].dtype == torch.float16
    assert tensors["b"].shape == (2, 2)


@pytest.mark.parametrize("dtype", ["F4", "F6_E3M2"])
async def test_a_dtype_without_dlpack_form_names_the_tensor(
    backend: GPUBackend[Any], tmp_path: Path, dtype: str
) -> None:
    path = tmp_path / "odd.safetensors"
    write_safetensors(path, [("odd.weight", dtype, (4, 4)), ("fine.weight", "F16", (4,))])
    loaded = await load_weights(backend, device_of(backend), path)
    with pytest.raises(InteropError, match=rf"'odd\.weight'.*{dtype}"):
        await loaded.views(backend)


async def test_a_size_past_int64_names_the_tensor(backend: GPUBackend[Any], tmp_path: Path) -> None:
    """safetensors allows sizes up to 2**64 - 1, DLPack (and torch) only to 2**63 - 1: an empty
    tensor with such a size loads, and its views name it instead of handing out a wrapped size."""
    cases = (
        ("wide", (0, 2**63), r"2\*\*63 - 1"),
        ("strided", (0, 2**62, 2), "int64 strides"),  # sizes fit int64, its strides do not
    )
    for name, shape, why in cases:
        path = tmp_path / f"{name}.safetensors"
        write_safetensors(path, [(f"{name}.weight", "F16", shape), ("fine.weight", "F16", (4,))])
        loaded = await load_weights(backend, device_of(backend), path)
        with pytest.raises(InteropError, match=rf"'{name}\.weight'.*{why}"):
            await loaded.views(backend)
        require_torch()
        with pytest.raises(InteropError, match=rf"'{name}\.weight'.*{why}"):
            await loaded.to_torch(backend)
        await loaded.deallocate(backend)


async def test_a_misaligned_tensor_is_named_not_viewed(backend: GPUBackend[Any], tmp_path: Path) -> None:
    require_torch()
    import json

    header = {
        "a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(range(11)))
    where = view_device(backend)
    loaded = await load_weights(backend, device_of(backend), path, exportable=where == "cuda")
    with pytest.raises(InteropError, match=r"'b' \(F32\) at offset 3 is not aligned"):
        await loaded.to_torch(backend, device=where)
