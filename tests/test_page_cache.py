"""`page_cache.cached_fraction`: what decides whether a copy may read through the page cache
(the CUDA copy path) or should read directly (a cold file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exo_gpu_plugins.page_cache import cached_fraction, is_cached


def test_a_file_just_written_is_cached_at_any_offset(tmp_path: Path) -> None:
    path = tmp_path / "warm"
    path.write_bytes(os.urandom(9 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached_fraction(fd, 0, 9 << 20) == 1.0
        assert cached_fraction(fd, 4097, (9 << 20) - 5000) == 1.0
        assert is_cached(fd, 12_345, 1000)
    finally:
        os.close(fd)


def test_an_evicted_file_is_cold(tmp_path: Path) -> None:
    path = tmp_path / "cold"
    path.write_bytes(os.urandom(8 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        fraction = cached_fraction(fd, 0, 8 << 20)
        if fraction == 1.0:
            pytest.skip(f"{tmp_path} keeps files in memory (tmpfs)")
        assert fraction is not None and fraction < 0.5
        assert not is_cached(fd, 0, 8 << 20)
    finally:
        os.close(fd)


def test_what_cannot_be_told_is_none(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        assert cached_fraction(read, 0, 4096) is None  # a pipe cannot be mapped
        assert not is_cached(read, 0, 4096)
    finally:
        os.close(read)
        os.close(write)
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached_fraction(fd, 0, 0) is None
        assert cached_fraction(fd, -1, 5) is None
    finally:
        os.close(fd)


def test_a_file_mincore_cannot_tell_about_is_unknown(tmp_path: Path) -> None:
    # Linux reports every page of a file the caller neither owns nor may write as resident.
    if os.geteuid() != 0:
        pytest.skip("needs root, to read a file as another user")
    path = tmp_path / "theirs"
    path.write_bytes(os.urandom(8 << 20))
    path.chmod(0o644)
    fd = os.open(path, os.O_RDONLY)
    read, write = os.pipe()
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        child = os.fork()
        if child == 0:  # as nobody, on the descriptor root opened
            try:
                os.setresuid(65534, 65534, 65534)
                os.write(write, repr(cached_fraction(fd, 0, 8 << 20)).encode())
            except PermissionError:
                os.write(write, b"no setuid")
            finally:
                os._exit(0)
        os.close(write)
        _, status = os.waitpid(child, 0)
        answer = os.read(read, 100).decode()
    finally:
        os.close(fd)
        os.close(read)
    assert status == 0
    if answer == "no setuid":
        pytest.skip("this root cannot change its user (no CAP_SETUID)")
    assert answer == "None"
