"""Which tensors a node loads: exo's layer range, and an optional name predicate.

`LayerRange(start, end, count)` is a half-open range of decoder layers, `start <= i < end`, out of
`count` layers in the model: the same convention as a Python slice, as `--layers START:END` on the
command line and as exo's `PipelineShardMetadata` (`start_layer`, `end_layer` exclusive,
`n_layers`; its `is_last_layer` is `end_layer == n_layers`). `LayerRange.from_shard(shard)` takes
such a shard as it is. exo's older `Shard` (exo/inference/shard.py) had an *inclusive* end_layer
(`is_last_layer` was `end_layer == n_layers - 1`); `LayerRange.from_inclusive(...)` converts it.
`end=None` means "through the last layer", `count=None` "as many as the checkpoint has" (one
more than the highest `model.layers.{i}.` index in it).

The rule, for a range `start:end` of `count` layers:
- `model.layers.{i}.*`: loaded when `start <= i < end`;
- the head side, `model.norm.*`, `model.final_layernorm.*` and `lm_head.*`: loaded when the range
  ends at the last layer (`end == count`);
- the embedding, `model.embed_tokens.*`: loaded when the range starts at 0, and also on the last
  range when the checkpoint has no `lm_head.*` tensor (tied embeddings: the head *is* the
  embedding matrix, e.g. Llama 3.2 1B/3B);
- any other tensor outside the layer stack (position tables, a vision encoder and its projector):
  loaded with the first range. In decoder-only models everything outside the stack that is not
  the final norm or the head feeds the first layer, so the node holding layer 0 is the one that
  runs it. A caller who knows better passes `select`, which is applied on top of the range.
Layers past `count` (e.g. DeepSeek-V3's multi-token-prediction layer 61 of a 61-layer model) are
outside every range and never loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from exo_gpu_plugins.errors import CheckpointError

__all__ = ["LayerRange", "Selection", "layer_index", "make_selection"]

_LAYER = re.compile(r"model\.layers\.([0-9]+)\.")
_HEAD_PREFIXES = ("model.norm.", "model.final_layernorm.", "lm_head.")
_EMBED_PREFIX = "model.embed_tokens."
# A layer index of more digits than this (10**19 > 2**63) cannot be a layer of any model; it is
# refused rather than converted (thousands of digits would be Python's own int-limit ValueError).
_MAX_LAYER_DIGITS = 19


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to (`model.layers.{i}.`), or None outside the stack.
    An index of more than 19 digits raises `CheckpointError` naming the tensor."""
    match = _LAYER.match(name)
    if match is None:
        return None
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > _MAX_LAYER_DIGITS:
        shown = name if len(name) <= 80 else f"{name[:60]}...{name[-12:]}"
        raise CheckpointError(
            f"tensor {shown!r}: a layer index of {len(digits)} digits cannot be a layer number"
        )
    return int(digits)


class LayerRange(BaseModel):
    """Decoder layers `start <= i < end` of a `count`-layer model (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int = Field(default=0, ge=0, description="first layer, inclusive")
    end: int | None = Field(
        default=None, ge=1, description="last layer + 1 (exclusive); None = to the end"
    )
    count: int | None = Field(
        default=None, ge=1, description="layers in the model; None = from the checkpoint"
    )

    def __init__(self, start: int = 0, end: int | None = None, count: int | None = None) -> None:
        super().__init__(start=start, end=end, count=count)

    @model_validator(mode="after")
    def _ordered(self) -> LayerRange:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"layer range {self.start}:{self.end} is empty (end must be > start)")
        if self.count is not None:
            end = self.end if self.end is not None else self.count
            if end > self.count or self.start >= self.count:
                raise ValueError(f"layer range {self.start}:{end} reaches past the {self.count} layers")
        return self

    @classmethod
    def from_shard(cls, shard: object) -> LayerRange:
        """From exo's `PipelineShardMetadata` (or anything with `start_layer`, `end_layer` exclusive
        and `n_layers`)."""
        return cls(_attr(shard, "start_layer"), _attr(shard, "end_layer"), _attr(shard, "n_layers"))

    @classmethod
    def from_inclusive(cls, start_layer: int, end_layer: int, n_layers: int) -> LayerRange:
        """From exo's older `Shard`, whose `end_layer` is the last layer itself."""
        return cls(start_layer, end_layer + 1, n_layers)

    @classmethod
    def parse(cls, text: str, count: int | None = None) -> LayerRange:
        """`'START:END'` as on the command line (END exclusive); either side may be left out."""
        start_text, colon, end_text = text.strip().partition(":")
        if not colon:
            raise ValueError(f"layer range {text!r} must look like START:END (END exclusive), e.g. 0:16")
        try:
            start = int(start_text) if start_text.strip() else 0
            end = int(end_text) if end_text.strip() else None
        except ValueError:
            raise ValueError(f"layer range {text!r}: START and END must be whole numbers") from None
        return cls(start, end, count)

    def __str__(self) -> str:
        end = "" if self.end is None else str(self.end)
        return f"{self.start}:{end}" + ("" if self.count is None else f" of {self.count}")


def _attr(shard: object, name: str) -> int:
    value = getattr(shard, name, None)
    if type(value) is not int:
        raise TypeError(f"shard must have an int {name!r} (exo's PipelineShardMetadata), got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Selection:
    """A resolved choice: the range in whole numbers (None when every layer is loaded) and the
    predicate the plan applies to each tensor name."""

    start: int | None
    end: int | None
    count: int | None
    predicate: Callable[[str], bool]

    def __call__(self, name: str) -> bool:
        return self.predicate(name)


def make_selection(
    names: Iterable[str],
    layers: LayerRange | None,
    select: Callable[[str], bool] | None,
    where: str,
    locate: Callable[[str], str] | None = None,
) -> Selection:
    """Resolve `layers` against the checkpoint's tensor `names` (`where` names it in errors, and
    `locate(name)`, when given, the file of one tensor)."""
    if layers is None:
        return Selection(None, None, None, select if select is not None else _everything)
    indexes: set[int] = set()
    has_head = False
    for name in names:
        try:
            index = layer_index(name)
        except CheckpointError as exc:
            file = locate(name) if locate is not None else where
            raise CheckpointError(f"{file}: {exc}") from None
        if index is not None:
            indexes.add(index)
        elif name.startswith("lm_head."):
            has_head = True
    if not indexes:
        raise CheckpointError(f"{where}: no model.layers.{{i}}. tensors, so a layer range cannot apply")
    count = layers.count if layers.count is not None else max(indexes) + 1
    start = layers.start
    end = layers.end if layers.end is not None else count
    if end > count or start >= count:
        raise CheckpointError(
            f"{where}: layer range {start}:{end} reaches past the model's {count} layers"
        )
    # Counted from the layers present, never by walking the range (a count can be 10**18).
    present = sum(1 for i in indexes if start <= i < end)
    if present < end - start:
        first_absent = next(i for i in range(start, end) if i not in indexes)
        raise CheckpointError(
            f"{where}: layer range {start}:{end} of {count} includes layer {first_absent}, which has "
            f"no tensor in the checkpoint ({end - start - present} such layer(s))"
        )
    first = start == 0
    last = end == count

    def in_range(name: str) -> bool:
        index = layer_index(name)
        if index is not None:
            return start <= index < end
        if name.startswith(_HEAD_PREFIXES):
            return last
        if name.startswith(_EMBED_PREFIX):
            return first or (last and not has_head)
        return first

    if select is None:
        predicate = in_range
    else:
        user = select

        def predicate(name: str) -> bool:
            return in_range(name) and bool(user(name))

    return Selection(start, end, count, predicate)


def _everything(name: str) -> bool:
    return True
