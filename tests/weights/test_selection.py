"""Layer ranges select exactly the tensors exo's node needs, on a checkpoint shaped like Llama's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import CheckpointError
from exo_gpu_plugins.weights import LayerRange, load_weights, plan_checkpoint
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama, write_safetensors

EMBED = "model.embed_tokens.weight"
HEAD = {"model.norm.weight", "lm_head.weight"}


def layer(i: int) -> set[str]:
    """The nine tensors of Llama layer `i`, spelled out as in Hugging Face checkpoints."""
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight",
        p + "post_attention_layernorm.weight",
        p + "self_attn.q_proj.weight",
        p + "self_attn.k_proj.weight",
        p + "self_attn.v_proj.weight",
        p + "self_attn.o_proj.weight",
        p + "mlp.gate_proj.weight",
        p + "mlp.up_proj.weight",
        p + "mlp.down_proj.weight",
    }


def expected(start: int, end: int, count: int = 6) -> set[str]:
    names: set[str] = set().union(*(layer(i) for i in range(start, end)))
    if start == 0:
        names.add(EMBED)
    if end == count:
        names |= HEAD
    return names


def chosen(paths: Any, layers: LayerRange | None = None, **kwargs: Any) -> set[str]:
    return {t.name for t in plan_checkpoint(paths, layers, **kwargs).tensors}


# ---------------------------------------------------------------------------------------------
# LayerRange itself


def test_parse_is_a_half_open_slice() -> None:
    assert LayerRange.parse("0:16") == LayerRange(0, 16)
    assert LayerRange.parse("4:") == LayerRange(4, None)
    assert LayerRange.parse(":8", count=32) == LayerRange(0, 8, 32)
    assert LayerRange.parse(" 2 : 5 ") == LayerRange(2, 5)
    assert str(LayerRange(2, 5, 6)) == "2:5 of 6"


@pytest.mark.parametrize("text", ["5", "a:b", "1:2:3", "-1:4", "4:4", "5:2", "", ":"])
def test_parse_refuses(text: str) -> None:
    if text == ":":  # the whole model: valid
        assert LayerRange.parse(text) == LayerRange()
        return
    with pytest.raises(ValueError):
        LayerRange.parse(text)


def test_range_checks_itself() -> None:
    with pytest.raises(ValueError, match="empty"):
        LayerRange(3, 3)
    with pytest.raises(ValueError, match="past the 32 layers"):
        LayerRange(0, 33, 32)
    with pytest.raises(ValueError, match="past the 32 layers"):
        LayerRange(32, None, 32)
    with pytest.raises(ValueError):
        LayerRange(-1, 4)


def test_from_exo_shards() -> None:
    # exo's PipelineShardMetadata: [start_layer, end_layer), is_last_layer == (end_layer == n_layers)
    pipeline = SimpleNamespace(start_layer=16, end_layer=32, n_layers=32)
    assert LayerRange.from_shard(pipeline) == LayerRange(16, 32, 32)
    # exo's older Shard: end_layer inclusive, is_last_layer == (end_layer == n_layers - 1)
    assert LayerRange.from_inclusive(16, 31, 32) == LayerRange(16, 32, 32)
    with pytest.raises(TypeError, match="end_layer"):
        LayerRange.from_shard(SimpleNamespace(start_layer=0, n_layers=4))


# ---------------------------------------------------------------------------------------------
# What a range selects


@pytest.mark.parametrize(
    "start,end", [(0, 2), (2, 4), (4, 6), (0, 6), (1, 5), (0, 1), (5, 6), (3, 4)], ids=str
)
def test_range_selects_exactly(sharded: Path, single: Path, start: int, end: int) -> None:
    assert chosen(sharded, LayerRange(start, end)) == expected(start, end)
    assert chosen(single, LayerRange(start, end, 6)) == expected(start, end)


def test_no_range_is_everything(sharded: Path) -> None:
    assert chosen(sharded) == expected(0, 6)
    assert chosen(sharded.parent) == expected(0, 6)  # the folder, through its index


def test_open_end_reaches_the_last_layer(sharded: Path) -> None:
    plan = plan_checkpoint(sharded, LayerRange(4))
    assert {t.name for t in plan.tensors} == expected(4, 6)
    assert plan.layers == LayerRange(4, 6, 6)


def test_ranges_partition_the_model(sharded: Path) -> None:
    parts = [chosen(sharded, LayerRange(s, e, 6)) for s, e in [(0, 2), (2, 3), (3, 6)]]
    assert set().union(*parts) == expected(0, 6)
    assert sum(len(p) for p in parts) == len(expected(0, 6))


def test_layer_10_is_not_layer_1(tmp_path: Path) -> None:
    path = write_llama(tmp_path, LlamaShape(layers=12))
    assert chosen(path, LayerRange(1, 2)) == layer(1)
    assert chosen(path, LayerRange(10, 11)) == layer(10)


def test_tied_embeddings_go_to_the_last_range(tmp_path: Path) -> None:
    path = write_llama(tmp_path, LlamaShape(layers=4, tied=True), shards=2)
    assert chosen(path, LayerRange(2, 4)) == layer(2) | layer(3) | {"model.norm.weight", EMBED}
    assert chosen(path, LayerRange(0, 2)) == layer(0) | layer(1) | {EMBED}
    assert chosen(path, LayerRange(1, 3)) == layer(1) | layer(2)


def test_count_from_exo_leaves_extra_layers_out(tmp_path: Path) -> None:
    # DeepSeek-V3-like: the checkpoint has one layer more (multi-token prediction) than exo runs.
    path = write_llama(tmp_path, LlamaShape(layers=7))
    assert chosen(path, LayerRange(4, 6, 6)) == layer(4) | layer(5) | HEAD
    assert chosen(path, LayerRange(4, None, 6)) == layer(4) | layer(5) | HEAD


def test_range_not_at_the_end_of_a_larger_model(sharded: Path) -> None:
    # exo says 8 layers, this node runs 0:6: no head here.
    assert chosen(sharded, LayerRange(0, 6, 8)) == expected(0, 6) - HEAD


@pytest.mark.parametrize(
    "layers,text",
    [
        (LayerRange(0, 8), "past the model's 6 layers"),
        (LayerRange(6, None), "past the model's 6 layers"),
        (LayerRange(6, 8, 8), "layer 6, which has no tensor"),
    ],
    ids=str,
)
def test_range_past_the_checkpoint(sharded: Path, layers: LayerRange, text: str) -> None:
    with pytest.raises(CheckpointError, match=text):
        plan_checkpoint(sharded, layers)


def test_select_applies_on_top_of_the_range(sharded: Path) -> None:
    names = chosen(sharded, LayerRange(2, 4), select=lambda n: ".mlp." in n)
    assert names == {n for n in layer(2) | layer(3) if ".mlp." in n}
    assert chosen(sharded, select=lambda n: n == EMBED) == {EMBED}


def test_selecting_nothing_is_an_error(sharded: Path) -> None:
    with pytest.raises(CheckpointError, match="chooses no tensor"):
        plan_checkpoint(sharded, select=lambda n: False)


def test_range_on_a_checkpoint_without_layers(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    write_safetensors(path, [("encoder.weight", "F32", (4,))])
    with pytest.raises(CheckpointError, match=r"no model\.layers"):
        plan_checkpoint(path, LayerRange(0, 1))


def test_other_tensors_go_with_the_first_range(tmp_path: Path) -> None:
    specs = [
        (name, "F16", (4,)) for name in [EMBED, "vision_tower.patch.weight", *layer(0), *layer(1), *HEAD]
    ]
    path = tmp_path / "mm.safetensors"
    write_safetensors(path, specs)
    assert "vision_tower.patch.weight" in chosen(path, LayerRange(0, 1))
    assert chosen(path, LayerRange(1, 2)) == layer(1) | HEAD


def test_partial_download(sharded: Path, tmp_path: Path) -> None:
    """exo downloads only the shards of its range: the index names shards that are not there."""
    folder = tmp_path / "partial"
    folder.mkdir()
    for path in sharded.parent.iterdir():
        if not path.name.startswith("model-00003"):
            (folder / path.name).write_bytes(path.read_bytes())
    plan = plan_checkpoint(folder, LayerRange(0, 2))
    assert {t.name for t in plan.tensors} == expected(0, 2)
    with pytest.raises(CheckpointError, match=r"model-00003-of-00003\.safetensors.*does not exist"):
        plan_checkpoint(folder, LayerRange(4, 6))
    with pytest.raises(CheckpointError, match="does not exist"):
        plan_checkpoint(folder)


def test_list_of_files_and_duplicates(sharded: Path) -> None:
    shards = sorted(sharded.parent.glob("model-*.safetensors"))
    assert chosen(shards, LayerRange(0, 6)) == expected(0, 6)
    assert chosen([*shards, sharded], LayerRange(0, 6)) == expected(0, 6)  # the same files twice


async def test_loaded_tensors_match_the_range(
    sharded: Path, backend: GPUBackend[Any], device: str
) -> None:
    for start, end in [(0, 2), (2, 4), (4, 6)]:
        loaded = await load_weights(backend, device, sharded, layers=LayerRange(start, end, 6))
        assert set(loaded.tensors) == expected(start, end)
        assert loaded.layers == LayerRange(start, end, 6)
        await loaded.deallocate(backend)
    assert backend.live_handles() == []
