"""Clauses "file copy" and "file copy errors": copy_file_to_device puts exactly the asked-for bytes of
a file where they were asked for, and refuses a bad range or an unreadable file with nothing written.

Every backend has this call (the core's default reads the file and writes it with `_write`); a
backend that overrides `_write_from_file` (`capabilities().native_file_copy`) is held to the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exo_gpu_plugins.errors import FileReadError, OutOfBoundsError
from exo_gpu_plugins.testing.contract._base import KitBase, assert_bytes_equal, clause
from exo_gpu_plugins.testing.contract._helpers import SIZE, MiB, deferred
from exo_gpu_plugins.testing.support import pattern

FILE_BYTES = 5 * 1024 + 9

# (file_offset, size_bytes or None for "to the end", offset in the allocation)
_RANGES = [
    (0, None, 0),
    (0, None, SIZE - FILE_BYTES),
    (1, None, 3),
    (1000, 1, 0),
    (7, 4096, 1001),
    (FILE_BYTES - 1, 1, SIZE - 1),
    (FILE_BYTES, None, 10),
    (FILE_BYTES, 0, SIZE),
]


class FileCopyContract(KitBase):
    """copy_file_to_device: full files, ranges and offsets byte-exact; bad ranges and files refused."""

    def source_file(self, tmp_path: Path, size: int = FILE_BYTES, seed: int = 51) -> tuple[Path, bytes]:
        """A file of pseudo-random bytes, and those bytes."""
        path = tmp_path / f"weights-{size}-{seed}.bin"
        data = pattern(seed, size)
        path.write_bytes(data)
        return path, data

    @clause("file copy")
    @pytest.mark.parametrize(("file_offset", "size", "offset"), _RANGES)
    def test_ranges(self, tmp_path: Path, file_offset: int, size: int | None, offset: int) -> None:
        path, data = self.source_file(tmp_path)
        handle, model = self.filled()
        count = self.run(
            self.backend.copy_file_to_device(
                path, handle, offset, file_offset=file_offset, size_bytes=size
            )
        )
        expected = len(data) - file_offset if size is None else size
        assert count == expected, f"copy_file_to_device returned {count!r}, not {expected}"
        model[offset : offset + expected] = data[file_offset : file_offset + expected]
        self.assert_content(
            handle, model, f"after copying {expected} bytes from file offset {file_offset} to {offset}"
        )

    @clause("file copy")
    @pytest.mark.parametrize("kind", ["str", "Path", "file descriptor", "file object"])
    def test_source_kinds(self, tmp_path: Path, kind: str) -> None:
        path, data = self.source_file(tmp_path)
        handle, model = self.filled(seed=52)
        with open(path, "rb") as opened:
            opened.seek(123)
            source: object = {
                "str": str(path),
                "Path": path,
                "file descriptor": opened.fileno(),
                "file object": opened,
            }[kind]
            count = self.run(self.backend.copy_file_to_device(source, handle, 2, file_offset=5))
            assert opened.tell() == 123, f"copying from a {kind} moved the file's position"
        assert count == len(data) - 5, f"returned {count!r}, not {len(data) - 5}"
        model[2 : 2 + count] = data[5:]
        self.assert_content(handle, model, f"after copy_file_to_device from a {kind}")

    @clause("file copy")
    def test_file_larger_than_the_default_chunk(self, tmp_path: Path) -> None:
        """Spans several of the core's 16 MiB read chunks and ends off any power of two."""
        size = 33 * MiB + 4099
        path, data = self.source_file(tmp_path, size, seed=53)
        handle = self.alloc(size + 3)
        count = self.run(self.backend.copy_file_to_device(path, handle, 3))
        assert count == size, f"returned {count!r}, not {size}"
        got = self.run(self.backend.copy_from_device(handle, 0, size + 3))
        assert got[:3] == bytes(3), "bytes before the copied range changed"
        assert_bytes_equal(got[3:], data, f"allocation after copying a {size}-byte file")
        self.run(self.backend.deallocate(handle))

    @clause("file copy")
    def test_empty_file_and_zero_size(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty.bin"
        empty.write_bytes(b"")
        path, _ = self.source_file(tmp_path)
        handle, model = self.filled(seed=54)
        for source, offset, size in ((empty, 0, None), (empty, SIZE, None), (path, 9, 0)):
            count = self.run(self.backend.copy_file_to_device(source, handle, offset, size_bytes=size))
            assert count == 0, (
                f"copy_file_to_device of {source.name} at offset {offset} (size_bytes={size}) "
                f"returned {count!r}, not 0"
            )
        self.assert_content(handle, model, "allocation after copies of zero bytes")

    @clause("file copy errors")
    @pytest.mark.parametrize(
        ("file_offset", "size", "offset"),
        [
            (0, FILE_BYTES + 1, 0),
            (FILE_BYTES - 3, 4, 0),
            (FILE_BYTES + 1, None, 0),
            (FILE_BYTES + 1, 0, 0),
            (1 << 40, 1, 0),
            (0, None, SIZE - FILE_BYTES + 1),
            (0, 1, SIZE + 1),
            (0, 16, SIZE - 8),
        ],
    )
    def test_range_outside_file_or_allocation(
        self, tmp_path: Path, file_offset: int, size: int | None, offset: int
    ) -> None:
        path, _ = self.source_file(tmp_path)
        handle, model = self.filled(seed=55)
        with self.canary_kept("a refused file copy"):
            self.expect_error(
                OutOfBoundsError,
                lambda: self.backend.copy_file_to_device(
                    path, handle, offset, file_offset=file_offset, size_bytes=size
                ),
                f"copy_file_to_device(file_offset={file_offset}, size_bytes={size}, offset={offset}) "
                f"of a {FILE_BYTES}-byte file into {SIZE} bytes",
            )
        self.assert_content(handle, model, "allocation after a refused file copy (nothing written)")

    @clause("file copy errors")
    @pytest.mark.parametrize(
        ("size", "missing"),
        [(FILE_BYTES, 1), (FILE_BYTES, FILE_BYTES // 2), (16 * MiB + 5000, 4096 + 3)],
    )
    def test_file_that_ends_early(self, tmp_path: Path, size: int, missing: int) -> None:
        """A file that holds fewer bytes than its size said when the copy began, as when it
        shrinks during the copy: a read comes back short, and that must be a `FileReadError`, not
        a copy that returns as if it were complete. The core learns the size from `os.fstat` of
        the descriptor; for this one descriptor the kit makes it report `missing` bytes more than
        the file holds, so the shrinking happens at a known point, the same for every backend."""
        path, _ = self.source_file(tmp_path, size - missing, seed=58)
        handle = self.alloc(size)
        real_fstat = os.fstat
        with open(path, "rb") as opened:
            fd = opened.fileno()
            held = real_fstat(fd)
            claimed = os.stat_result((*held[:6], size, *held[7:]))

            def fstat(target: int) -> os.stat_result:
                return claimed if target == fd else real_fstat(target)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(os, "fstat", fstat)
                try:
                    count = self.run(self.backend.copy_file_to_device(fd, handle, 0))
                except FileReadError:
                    return
                except Exception as exc:
                    raise AssertionError(
                        f"a file that ended {missing} bytes short of its size during the copy: "
                        f"expected FileReadError, got {type(exc).__name__}: {exc}"
                    ) from exc
        raise AssertionError(
            f"a file that ended {missing} bytes short of its {size} bytes during the copy (as when "
            f"it shrinks): copy_file_to_device returned {count!r} instead of raising FileReadError "
            "(a short read taken for a complete one?)"
        )

    @clause("file copy")
    def test_file_reader_hook(self, tmp_path: Path) -> None:
        """`_read_file_into`, the reads that feed CUDA's copy engine (docs/interop.md): exact
        bytes at any offset, into exactly the buffer given."""
        path, data = self.source_file(tmp_path, 3 * MiB + 7, seed=59)
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset, size in ((0, len(data)), (5, 4096), (len(data) - 1, 1), (77, 0)):
                out = bytearray(size + 2)
                self.backend._read_file_into(fd, offset, memoryview(out)[1 : size + 1])
                assert bytes(out[1 : size + 1]) == data[offset : offset + size], (
                    f"_read_file_into of {size} bytes at file offset {offset} read other bytes"
                )
                assert out[0] == 0 and out[-1] == 0, "_read_file_into wrote outside its buffer"
        finally:
            os.close(fd)

    @clause("file copy errors")
    def test_file_reader_hook_at_the_end(self, tmp_path: Path) -> None:
        """`_read_file_into` past the end of the file is a `FileReadError`, not a short fill."""
        path, _ = self.source_file(tmp_path, seed=60)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(FileReadError):
                self.backend._read_file_into(fd, FILE_BYTES - 3, memoryview(bytearray(8)))
        finally:
            os.close(fd)

    @clause("file copy errors")
    def test_unreadable_sources(self, tmp_path: Path) -> None:
        handle, model = self.filled(seed=56)
        locked = tmp_path / "locked.bin"
        locked.write_bytes(b"secret")
        locked.chmod(0)
        b = self.backend
        cases = [
            ("a missing path", deferred(b.copy_file_to_device, tmp_path / "missing.bin", handle)),
            ("a directory", deferred(b.copy_file_to_device, tmp_path, handle)),
            ("a descriptor that is not open", deferred(b.copy_file_to_device, 1 << 30, handle)),
        ]
        if os.access(locked, os.R_OK):  # root reads anything: that case says nothing then
            locked.chmod(0o600)
        else:
            cases.append(
                ("a file without read permission", deferred(b.copy_file_to_device, locked, handle))
            )
        with self.canary_kept("copies from unreadable files"):
            self.expect_errors(FileReadError, cases)
        locked.chmod(0o600)
        self.assert_content(handle, model, "allocation after refused file copies")

    @clause("file copy errors")
    def test_file_copy_arguments(self, tmp_path: Path) -> None:
        path, _ = self.source_file(tmp_path)
        handle, model = self.filled(seed=57)
        b = self.backend
        with self.canary_kept("file copies with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"src {bad!r}", deferred(b.copy_file_to_device, bad, handle))
                    for bad in (None, 1.5, [str(path)])
                ]
                + [
                    (f"handle {bad!r}", deferred(b.copy_file_to_device, path, bad))
                    for bad in (None, "h")
                ]
                + [
                    ("offset True", lambda: b.copy_file_to_device(path, handle, True)),
                    ("file_offset 1.0", lambda: b.copy_file_to_device(path, handle, file_offset=1.0)),  # type: ignore[arg-type]
                    ("size_bytes '1'", lambda: b.copy_file_to_device(path, handle, size_bytes="1")),  # type: ignore[arg-type]
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("offset -1", lambda: b.copy_file_to_device(path, handle, -1)),
                    ("file_offset -1", lambda: b.copy_file_to_device(path, handle, file_offset=-1)),
                    ("size_bytes -1", lambda: b.copy_file_to_device(path, handle, size_bytes=-1)),
                ],
            )
        self.assert_content(handle, model, "allocation after refused file copies")
