"""Frozen pydantic records built from values the library has already checked, without pydantic's
validation: a handle per allocate, a tensor record per tensor of a checkpoint (thousands per
load). Validating them again would cost more than the work around them (a `MemoryHandle` ~3 us on
a small machine, more than the rest of `allocate`)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["trusted"]

ModelT = TypeVar("ModelT", bound=BaseModel)

# BaseModel's slots, set through their descriptors: a third cheaper than object.__setattr__.
_make_model = object.__new__
_set_attribute = object.__setattr__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__

# One shared fields-set per model: a frozen model never adds to it, and copies take their own.
_FIELDS_SETS: dict[type[BaseModel], set[str]] = {}


def trusted(model: type[ModelT], values: dict[str, Any]) -> ModelT:
    """An instance of the frozen `model` holding `values`: every field, each already of its
    field's type and within its bounds (the caller's promise; nothing is checked)."""
    fields_set = _FIELDS_SETS.get(model)
    if fields_set is None:
        fields_set = _FIELDS_SETS[model] = set(model.model_fields)
    record: ModelT = _make_model(model)
    _set_attribute(record, "__dict__", values)
    _set_fields_set(record, fields_set)
    _set_extra(record, None)
    _set_private(record, None)
    return record
