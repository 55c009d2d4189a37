"""Values no machine can hold and strings that are not Unicode are refused as `CheckpointError`
naming the file (and the tensor), wherever they appear: integers of thousands of digits (Python's
own int conversion would raise a bare `ValueError` past 4,300) or merely past 2**64 - 1 in a
shape, an offset, metadata or an index; layer indexes of that size in tensor names when `layers=`
is given; lone surrogates (`\\ud800` escapes without a partner, which the reference parser refuses)
in a tensor name, a metadata key or value, a dtype, an index entry."""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from exo_gpu_plugins.cli import main
from exo_gpu_plugins.errors import CheckpointError
from exo_gpu_plugins.weights import LayerRange, plan_checkpoint
from exo_gpu_plugins.weights.format import read_header

T = "model.layers.0.mlp.weight"
HUGE = "9" * 5000  # past Python's 4,300-digit conversion limit
HUGE_INDEX = "1" * 5000


def file_with(path: Path, header_text: str, data: bytes = b"") -> Path:
    """A safetensors file whose header is exactly `header_text` (hand-written JSON)."""
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def good_entry(begin: int = 0, end: int = 4) -> str:
    return f'{{"dtype": "U8", "shape": [{end - begin}], "data_offsets": [{begin}, {end}]}}'


def refused(path: Path, call: Callable[[], object], *fragments: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert len(message) < 1000, "the message repeats the huge value"
    return message


# --------------------------------------------------------------------------------------------------
# Integers


@pytest.mark.parametrize(
    "entry",
    [
        f'{{"dtype": "U8", "shape": [{HUGE}], "data_offsets": [0, 4]}}',
        f'{{"dtype": "U8", "shape": [4, -{HUGE}], "data_offsets": [0, 4]}}',
        f'{{"dtype": "U8", "shape": [4], "data_offsets": [0, {HUGE}]}}',
        f'{{"dtype": "U8", "shape": [4], "data_offsets": [{HUGE}, 4]}}',
        # Past 2**64 - 1 (20 digits, below Python's limit): no machine's size either.
        f'{{"dtype": "U8", "shape": [{2**64}, 0], "data_offsets": [0, 0]}}',
        f'{{"dtype": "U8", "shape": [4], "data_offsets": [0, {2**64 + 4}]}}',
    ],
    ids=["shape", "negative shape", "end offset", "begin offset", "shape 2**64", "offset 2**64"],
)
def test_integers_no_machine_holds(entry: str, tmp_path: Path) -> None:
    path = file_with(tmp_path / "huge.safetensors", f'{{"{T}": {entry}}}', bytes(4))
    refused(path, lambda: read_header(path), repr(T))
    refused(path, lambda: plan_checkpoint(path), repr(T))


def test_huge_integer_in_metadata(tmp_path: Path) -> None:
    path = file_with(
        tmp_path / "meta.safetensors",
        f'{{"__metadata__": {{"total": {HUGE}}}, "{T}": {good_entry()}}}',
        bytes(4),
    )
    refused(path, lambda: read_header(path), "__metadata__", "'total'", "5000 digits")


def test_largest_size_still_parses(tmp_path: Path) -> None:
    """2**64 - 1 is a size the format allows: refused here only because the file is smaller."""
    path = file_with(
        tmp_path / "max.safetensors",
        f'{{"{T}": {{"dtype": "U8", "shape": [{2**64 - 1}], "data_offsets": [0, 4]}}}}',
        bytes(4),
    )
    refused(path, lambda: read_header(path), "need 18446744073709551615 bytes")


def test_huge_integer_in_an_index(tmp_path: Path) -> None:
    """An index's metadata is not checked, so a huge total_size is no reason to refuse it."""
    file_with(tmp_path / "model-00001-of-00001.safetensors", f'{{"{T}": {good_entry()}}}', bytes(4))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        f'{{"metadata": {{"total_size": {HUGE}}}, '
        f'"weight_map": {{"{T}": "model-00001-of-00001.safetensors"}}}}'
    )
    plan = plan_checkpoint(index)
    assert [tensor.name for tensor in plan.tensors] == [T]
    index.write_text(f'{{"weight_map": {{"{T}": {HUGE}}}}}')
    refused(index, lambda: plan_checkpoint(index), repr(T), "5000 digits")


def test_huge_layer_index_with_layers(tmp_path: Path) -> None:
    huge = f"model.layers.{HUGE_INDEX}.mlp.weight"
    path = file_with(
        tmp_path / "layers.safetensors",
        f'{{"{T}": {good_entry(0, 4)}, "{huge}": {good_entry(4, 8)}}}',
        bytes(8),
    )
    assert len(plan_checkpoint(path).tensors) == 2  # without layers= the name is only a name
    message = refused(path, lambda: plan_checkpoint(path, LayerRange(0, 1)), "5000 digits")
    assert "model.layers.111" in message


def test_far_layer_index_does_not_walk_the_range(tmp_path: Path) -> None:
    """A layer index of 18 digits makes the model 10**18 layers long: the check for layers
    without tensors counts, it does not walk the range (which never ended)."""
    far = "model.layers.999999999999999999.mlp.weight"
    path = file_with(
        tmp_path / "far.safetensors",
        f'{{"{T}": {good_entry(0, 4)}, "{far}": {good_entry(4, 8)}}}',
        bytes(8),
    )
    outcome: list[BaseException] = []

    def plan() -> None:
        try:
            plan_checkpoint(path, LayerRange(0))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=plan, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "planning walked a range of 10**18 layers"
    assert isinstance(outcome[0], CheckpointError), outcome
    assert "includes layer 1, which has no tensor" in str(outcome[0])
    assert "999999999999999998 such layer(s)" in str(outcome[0])


def test_cli_reports_a_huge_integer_in_one_line(tmp_path: Path) -> None:
    path = file_with(
        tmp_path / "huge.safetensors",
        f'{{"{T}": {{"dtype": "U8", "shape": [{HUGE}], "data_offsets": [0, 4]}}}}',
        bytes(4),
    )
    out, err = io.StringIO(), io.StringIO()
    status = main(["load", str(path), "--device", "host:0"], out=out, err=err)
    assert status == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and repr(T) in lines[0], err.getvalue()


# --------------------------------------------------------------------------------------------------
# Lone surrogates


@pytest.mark.parametrize(
    ("header", "where"),
    [
        ('{{"a\\ud800b": {entry}}}', "'a\\ud800b'"),
        ('{{"\\udfff": {entry}}}', "'\\udfff'"),
        ('{{"x\\uDBFF": {entry}}}', "'x\\udbff'"),
        ('{{"__metadata__": {{"k\\ud800": "v"}}, "t": {entry}}}', "__metadata__"),
        ('{{"__metadata__": {{"k": "v\\ud800"}}, "t": {entry}}}', "__metadata__"),
        (
            '{{"t": {{"dtype": "U8\\ud800", "shape": [4], "data_offsets": [0, 4]}}}}',
            "tensor 't'",
        ),
        (
            '{{"t": {{"dtype": "U8", "shape": [4], "data_offsets": [0, 4], "x": ["\\ud800"]}}}}',
            "tensor 't'",
        ),
    ],
    ids=[
        "name",
        "low surrogate",
        "upper-case escape",
        "metadata key",
        "metadata value",
        "dtype",
        "extra",
    ],
)
def test_lone_surrogates(header: str, where: str, tmp_path: Path) -> None:
    path = file_with(tmp_path / "s.safetensors", header.format(entry=good_entry()), bytes(4))
    message = refused(path, lambda: read_header(path), where)
    assert "Unicode" in message or "unknown dtype" in message


def test_surrogate_pairs_are_unicode(tmp_path: Path) -> None:
    """An escaped pair is one character (U+1F600): a valid name."""
    path = file_with(tmp_path / "pair.safetensors", f'{{"a\\ud83d\\ude00": {good_entry()}}}', bytes(4))
    assert [tensor.name for tensor in read_header(path).tensors] == ["a\U0001f600"]


def test_lone_surrogate_in_an_index(tmp_path: Path) -> None:
    file_with(tmp_path / "m.safetensors", f'{{"{T}": {good_entry()}}}', bytes(4))
    index = tmp_path / "model.safetensors.index.json"
    for weight_map in ('{"a\\ud800": "m.safetensors"}', '{"a": "m\\ud800.safetensors"}'):
        index.write_text(f'{{"weight_map": {weight_map}}}')
        refused(index, lambda: plan_checkpoint(index), "Unicode")


def test_long_integer_is_named_by_its_length(tmp_path: Path) -> None:
    """An integer of 100 digits (Python converts it, but it is no size) is named by its length,
    not printed whole."""
    entry = f'{{"dtype": "U8", "shape": [{"9" * 100}], "data_offsets": [0, 4]}}'
    path = file_with(tmp_path / "long.safetensors", f'{{"{T}": {entry}}}', bytes(4))
    message = refused(path, lambda: read_header(path), repr(T), "100 digits")
    assert "9" * 30 not in message


def test_a_long_digit_run_in_a_name_is_only_a_name(tmp_path: Path) -> None:
    """A tensor name holding 30 digits makes the header take the careful integer path; the file
    is still accepted, its sizes read exactly."""
    name = "model.layers.0." + "7" * 30 + ".weight"
    path = file_with(tmp_path / "name.safetensors", f'{{"{name}": {good_entry(0, 4)}}}', bytes(4))
    (tensor,) = read_header(path).tensors
    assert (tensor.name, tensor.shape, tensor.nbytes) == (name, (4,), 4)


@pytest.mark.parametrize("dims", [300, 200_000], ids=["product of 5,800 digits", "200,000 dims"])
def test_a_shape_whose_product_no_machine_holds(dims: int, tmp_path: Path) -> None:
    """Each dimension is a valid size, but their product is thousands of digits long (past
    Python's str conversion limit) or would take minutes to multiply out: refused as needing
    more bytes than the data section holds, quickly, without printing the product or the shape."""
    shape = ", ".join([str(2**64 - 1)] * dims)
    entry = f'{{"dtype": "U8", "shape": [{shape}], "data_offsets": [0, 4]}}'
    path = file_with(tmp_path / "dims.safetensors", f'{{"{T}": {entry}}}', bytes(4))
    message = refused(path, lambda: read_header(path), repr(T), f"{dims} dimensions", "more than")
    assert message.count(str(2**64 - 1)) <= 4, "the message lists the whole shape"


def test_a_zero_among_many_dims_is_an_empty_tensor(tmp_path: Path) -> None:
    """A zero anywhere makes the product zero, however large the other dimensions."""
    shape = ", ".join([str(2**64 - 1)] * 50 + ["0"])
    entry = f'{{"dtype": "U8", "shape": [{shape}], "data_offsets": [0, 0]}}'
    path = file_with(tmp_path / "zero.safetensors", f'{{"{T}": {entry}, "b": {good_entry()}}}', bytes(4))
    tensors = {tensor.name: tensor for tensor in read_header(path).tensors}
    assert tensors[T].nbytes == 0 and len(tensors[T].shape) == 51


def test_many_dims_of_the_wrong_size_are_abbreviated(tmp_path: Path) -> None:
    """200,000 dimensions of 1 hold one element, not the two bytes on offer: the exact-size
    message names the tensor without listing the shape."""
    shape = ", ".join(["1"] * 200_000)
    entry = f'{{"dtype": "U8", "shape": [{shape}], "data_offsets": [0, 2]}}'
    path = file_with(tmp_path / "ones.safetensors", f'{{"{T}": {entry}}}', bytes(2))
    refused(path, lambda: read_header(path), repr(T), "need 1 bytes", "200000 dimensions")


def test_many_dims_that_fit_are_read(tmp_path: Path) -> None:
    shape = ", ".join(["2"] * 12)
    entry = f'{{"dtype": "F4", "shape": [{shape}], "data_offsets": [0, 2048]}}'
    path = file_with(tmp_path / "twelve.safetensors", f'{{"{T}": {entry}}}', bytes(2048))
    (tensor,) = read_header(path).tensors
    assert tensor.shape == (2,) * 12 and tensor.nbytes == 2048


@pytest.mark.parametrize(
    "entry",
    [
        '{"dtype": "U8", "shape": "%s", "data_offsets": [0, 4]}',
        '{"dtype": "U8", "shape": [4], "data_offsets": "%s"}',
        '{"dtype": "%s", "shape": [4], "data_offsets": [0, 4]}',
    ],
    ids=["shape", "data_offsets", "dtype"],
)
def test_a_long_wrong_value_is_quoted_short(entry: str, tmp_path: Path) -> None:
    """A 100 kB string where a shape, offsets or a dtype belong is quoted by its start and length."""
    path = file_with(tmp_path / "long.safetensors", f'{{"{T}": {entry % ("x" * 100_000)}}}', bytes(4))
    refused(path, lambda: read_header(path), repr(T), "100002 characters")
