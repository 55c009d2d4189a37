"""A checkpoint on disk: what a file, a folder or a `model.safetensors.index.json` stands for.

- a `.safetensors` file is itself;
- an index (`*.safetensors.index.json`, the Hugging Face layout) is the shards its `weight_map`
  names, resolved next to the index;
- a folder is its `model.safetensors.index.json`, else its only `*.safetensors.index.json`, else
  every `*.safetensors` file in it (an index is preferred because some repositories hold the same
  weights twice, e.g. `consolidated.safetensors` beside the sharded files).

Every header present is read and checked (`format.read_header`). A shard the index names but
that is not on disk is kept as `MissingShard` with the tensor names the index gives it: exo
downloads only the shards of its own layer range, so whether a missing shard is an error depends
on the selection, and `plan.py` decides (a missing shard holding a selected tensor is refused).
The index and the headers must agree: a tensor the index places in a shard that lacks it, a
tensor in a shard the index does not name, or one name in two files is a `CheckpointError`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Union

from exo_gpu_plugins.errors import CheckpointError
from exo_gpu_plugins.file_copy import file_kind, open_regular_file
from exo_gpu_plugins.weights.format import SafetensorsFile, load_json, lone_surrogate, read_header

__all__ = ["Checkpoint", "MissingShard", "PathsArg", "open_checkpoint"]

PathsArg = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]

INDEX_NAME = "model.safetensors.index.json"
_INDEX_SUFFIX = ".safetensors.index.json"
_MAX_INDEX_BYTES = 64 << 20  # a 100k-tensor index is a few MiB; anything near this is not an index


@dataclass(frozen=True, slots=True)
class MissingShard:
    """A shard named by `index` that is not on disk, and the tensors the index says it holds."""

    path: str
    index: str
    tensor_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Checked headers of the files present, in load order, and the shards that are missing."""

    files: tuple[SafetensorsFile, ...]
    missing: tuple[MissingShard, ...]

    def tensor_names(self) -> Iterable[str]:
        """Every tensor name of the checkpoint, present or in a missing shard."""
        for file in self.files:
            for tensor in file.tensors:
                yield tensor.name
        for shard in self.missing:
            yield from shard.tensor_names

    def locate(self, name: str) -> str:
        """The file that holds (or, for a missing shard, would hold) tensor `name` ("" if none)."""
        for file in self.files:
            if any(tensor.name == name for tensor in file.tensors):
                return file.path
        return next((shard.path for shard in self.missing if name in shard.tensor_names), "")


@dataclass(frozen=True, slots=True)
class _Index:
    path: str
    shards: dict[str, list[str]]  # shard path -> tensor names, in the index's order


def open_checkpoint(paths: PathsArg) -> Checkpoint:
    """Resolve `paths` (one path or a list) and check every header; nothing is allocated."""
    sources = _as_list(paths)
    if not sources:
        raise CheckpointError("no checkpoint paths given")
    files: list[SafetensorsFile] = []
    missing: list[MissingShard] = []
    seen: set[str] = set()
    owner: dict[str, str] = {}
    for source in sources:
        for shard_path, index in _expand(source):
            key = os.path.realpath(shard_path)
            if key in seen:
                continue
            seen.add(key)
            expected = index.shards[shard_path] if index is not None else None
            if index is not None and _stat(shard_path) is None:
                missing.append(MissingShard(shard_path, index.path, tuple(expected or ())))
                names: Iterable[str] = expected or ()
            else:
                header = read_header(shard_path)
                if index is not None and expected is not None:
                    _check_agrees(header, expected, index.path)
                files.append(header)
                names = (tensor.name for tensor in header.tensors)
            for name in names:
                other = owner.setdefault(name, shard_path)
                if other != shard_path:
                    raise CheckpointError(
                        f"{shard_path}: tensor {name!r}: also in {other} (a tensor name must be unique "
                        "across the files of a checkpoint)"
                    )
    return Checkpoint(files=tuple(files), missing=tuple(missing))


def _as_list(paths: PathsArg) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, (bytes, bytearray)):
        raise TypeError("checkpoint paths must be str or os.PathLike, not bytes")
    result = []
    for item in paths:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"checkpoint paths must be str or os.PathLike, not {type(item).__name__}")
        result.append(os.fspath(item))
    return result


def _stat(path: str) -> os.stat_result | None:
    """`os.stat` of `path`, `None` when nothing is there (also a dangling link); any other
    failure (a symbolic link loop, no permission, a name too long) is a `CheckpointError` saying
    which, never "missing"."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:  # a NUL byte, or a name the file system encoding cannot hold
        raise CheckpointError(f"{path!r}: not a usable path: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = f"a symbolic link loop ({exc.strerror})"
        else:
            reason = exc.strerror or str(exc)
        raise CheckpointError(f"{path}: cannot open: {reason}") from exc


def _expand(source: str) -> list[tuple[str, _Index | None]]:
    """The shard files `source` stands for, each with the index that named it (if any)."""
    info = _stat(source)
    if info is None:
        raise CheckpointError(f"{source}: no such file or folder")
    if stat.S_ISDIR(info.st_mode):
        index = _folder_index(source)
        if index is not None:
            return _index_shards(index)
        # Every *.safetensors entry, whatever it is: `read_header` refuses one that is not a
        # regular file (a FIFO, a dangling link) by name, where skipping it would load less.
        found = sorted(p for p in _list(source) if p.endswith(".safetensors"))
        if not found:
            raise CheckpointError(f"{source}: folder holds no *.safetensors file and no index")
        return [(os.path.join(source, p), None) for p in found]
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{source}: not a regular file or folder: it is {file_kind(info.st_mode)}")
    if source.endswith(".json"):
        return _index_shards(source)
    return [(source, None)]


def _list(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise CheckpointError(f"{folder}: cannot list the folder: {exc.strerror or exc}") from exc


def _folder_index(folder: str) -> str | None:
    preferred = os.path.join(folder, INDEX_NAME)
    if os.path.lexists(preferred):  # whatever it is: `_read_index` refuses a special file
        return preferred
    indexes = sorted(p for p in _list(folder) if p.endswith(_INDEX_SUFFIX))
    if len(indexes) == 1:
        return os.path.join(folder, indexes[0])
    if len(indexes) > 1:
        raise CheckpointError(
            f"{folder}: several indexes ({', '.join(indexes)}) and no {INDEX_NAME}; name the one to load"
        )
    return None


def _index_shards(path: str) -> list[tuple[str, _Index | None]]:
    index = _read_index(path)
    return [(shard, index) for shard in index.shards]


def _read_index(path: str) -> _Index:
    fd, _ = open_regular_file(path, CheckpointError)
    try:
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(_MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the index: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_INDEX_BYTES:
        raise CheckpointError(f"{path}: larger than {_MAX_INDEX_BYTES} bytes; not a checkpoint index")
    try:
        document = load_json(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError
        raise CheckpointError(f"{path}: index is not valid JSON: {exc}") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: index has no 'weight_map' object")
    folder = Path(path).parent
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if lone_surrogate(name) is not None or lone_surrogate(shard) is not None:
            raise CheckpointError(
                f"{path}: tensor {name!r}: the name or its shard {shard!r} is not valid Unicode "
                "(it holds a lone surrogate)"
            )
        if not isinstance(shard, str) or not _is_plain_relative(shard):
            raise CheckpointError(
                f"{path}: tensor {name!r}: shard {shard!r} must be a file name relative to the index"
            )
        shards.setdefault(str(folder / shard), []).append(name)
    if not shards:
        raise CheckpointError(f"{path}: index's weight_map names no tensor")
    return _Index(path=path, shards=shards)


def _is_plain_relative(name: str) -> bool:
    """Inside the index's folder: not absolute, no `..`, no empty or drive-qualified parts, no NUL."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return (
        bool(parts)
        and not name.startswith(("/", "\\"))
        and ".." not in parts
        and ":" not in name
        and "\0" not in name
    )


def _check_agrees(header: SafetensorsFile, expected: list[str], index: str) -> None:
    present = {tensor.name for tensor in header.tensors}
    wanted = set(expected)
    lacking = [name for name in expected if name not in present]
    if lacking:
        raise CheckpointError(
            f"{header.path}: tensor {lacking[0]!r}: the index {index} places it in this file, which "
            f"lacks it ({len(lacking)} such tensor(s))"
        )
    extra = sorted(present - wanted)
    if extra:
        raise CheckpointError(
            f"{header.path}: tensor {extra[0]!r}: in this file but not in the index {index} "
            f"({len(extra)} such tensor(s))"
        )
