"""How an allocation's one CUDA import is shared and closed (interop/views.py `CudaImports`):
counted uses (views, file copies) and the `prepare` hold keep it open; the last to go closes it,
once, on the CUDA release thread. The CUDA import itself is replaced by a recording fake, so
these run on any machine; tests/interop/test_cuda.py runs the real one on an NVIDIA GPU."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from exo_gpu_plugins.interop import cuda
from exo_gpu_plugins.interop.views import CudaImports

RELEASE_WAIT_S = 10.0


@dataclass
class FakeMapping:
    """Stands for a CudaMapping: records its closes."""

    ordinal: int = 0
    pointer: int = 0x7F00_0000_0000
    closes: int = 0

    @property
    def closed(self) -> bool:
        return self.closes > 0

    def close(self) -> None:
        self.closes += 1


@pytest.fixture
def imported(monkeypatch: pytest.MonkeyPatch) -> list[FakeMapping]:
    """Every import made, in order; `import_into_cuda` records instead of importing."""
    made: list[FakeMapping] = []

    def fake_import(shared: object, owner: object) -> FakeMapping:
        mapping = FakeMapping()
        made.append(mapping)
        return mapping

    monkeypatch.setattr(cuda, "import_into_cuda", fake_import)
    cuda._start_releaser()
    return made


def share() -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext(object())


def retain() -> Any:
    return SimpleNamespace(owner=object())


def view(imports: CudaImports, handle_id: str = "h") -> Any:
    return imports.view(handle_id, share, retain, "U8", (16,), 0)


def drain() -> None:
    """Wait until the release thread has run everything queued so far."""
    gc.collect()
    done = threading.Event()
    cuda.release_later(done.set)
    assert done.wait(RELEASE_WAIT_S), "the CUDA release thread is stuck"


@contextlib.contextmanager
def release_thread_paused() -> Iterator[None]:
    """Hold the release thread, so that releases queue up behind it."""
    go = threading.Event()
    cuda.release_later(go.wait)
    try:
        yield
    finally:
        go.set()


def test_views_share_one_import_closed_once_by_the_last(imported: list[FakeMapping]) -> None:
    imports = CudaImports()
    first, second = view(imports), view(imports)
    assert len(imported) == 1
    del first
    drain()
    assert not imported[0].closed
    del second
    drain()
    assert imported[0].closes == 1


def test_a_view_made_while_the_last_one_goes_keeps_the_import_open(
    imported: list[FakeMapping],
) -> None:
    # The last view's release is queued but has not run yet: a new view in that moment must
    # get the same import, counted, and the queued release must not close it under the view.
    imports = CudaImports()
    tensor = view(imports)
    with release_thread_paused():
        del tensor
        tensor = view(imports)
    drain()
    assert len(imported) == 1
    assert not imported[0].closed, "a live view's import was closed"
    del tensor
    drain()
    assert imported[0].closes == 1


def test_a_prepared_import_lives_until_a_view_takes_it_or_it_is_forgotten(
    imported: list[FakeMapping],
) -> None:
    imports = CudaImports()
    imports.prepare("a", share, retain)
    imports.prepare("a", share, retain)  # held once, imported once
    imports.prepare("b", share, retain)
    drain()
    assert len(imported) == 2
    assert not any(mapping.closed for mapping in imported)
    tensor = view(imports, "a")  # the views hold "a" from now on
    del tensor
    imports.forget("b")
    drain()
    assert [mapping.closes for mapping in imported] == [1, 1]


def test_forgetting_a_freed_allocation_leaves_its_views_and_copies_their_import(
    imported: list[FakeMapping],
) -> None:
    imports = CudaImports()
    imports.prepare("h", share, retain)
    copy = imports.held("h")  # a file copy running into it
    assert copy is not None
    assert copy.pointer == imported[0].pointer
    imports.forget()  # freed, or the backend shut down
    drain()
    assert not imported[0].closed
    tensor = view(imports)
    del copy
    drain()
    assert not imported[0].closed
    del tensor
    drain()
    assert imported[0].closes == 1
    assert imports.held("h") is None  # nothing holds it: a copy takes the backend's own path


def test_of_two_imports_racing_for_one_allocation_one_is_kept_and_the_other_closed(
    imported: list[FakeMapping], monkeypatch: pytest.MonkeyPatch
) -> None:
    imports = CudaImports()
    inner: list[Any] = []

    def import_racing(shared: object, owner: object) -> FakeMapping:
        mapping = FakeMapping()
        imported.append(mapping)
        if len(imported) == 1:  # another thread imports the same allocation meanwhile
            inner.append(view(imports))
        return mapping

    monkeypatch.setattr(cuda, "import_into_cuda", import_racing)
    outer = view(imports)
    drain()
    assert len(imported) == 2
    kept, lost = imported[1], imported[0]
    assert outer._owner.mapping is kept
    assert lost.closes == 1 and not kept.closed
    inner.clear()
    del outer
    drain()
    assert kept.closes == 1


def test_views_made_and_dropped_on_many_threads_never_see_a_closed_import(
    imported: list[FakeMapping],
) -> None:
    imports = CudaImports()
    failures: list[str] = []

    def churn() -> None:
        for _ in range(300):
            tensor = view(imports)
            if tensor._owner.mapping.closed:
                failures.append("a new view got a closed import")
            del tensor

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drain()
    assert failures == []
    assert imported, "no import was made"
    assert all(mapping.closes == 1 for mapping in imported)
    assert imports.held("h") is None


def test_a_file_copy_into_a_prepared_import_leaves_it_held(imported: list[FakeMapping]) -> None:
    # The loader prepares an allocation, then copies into it piece by piece: each copy's use
    # goes before the next starts, and the import must stay for the next and for the views.
    imports = CudaImports()
    imports.prepare("h", share, retain)
    for _ in range(3):
        copy = imports.held("h")
        assert copy is not None
        del copy
        drain()
    assert not imported[0].closed
    assert imports.held("h") is not None


def test_forgetting_one_allocation_leaves_the_others_held(imported: list[FakeMapping]) -> None:
    imports = CudaImports()
    imports.prepare("a", share, retain)
    imports.prepare("b", share, retain)
    imports.forget("b")
    drain()
    assert [mapping.closed for mapping in imported] == [False, True]
    assert imports.held("a") is not None


def test_a_close_that_fails_stops_no_later_release(
    imported: list[FakeMapping], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def close_failing(self: FakeMapping) -> None:
        self.closes += 1
        if self.closes == 1 and self is imported[0]:
            raise RuntimeError("the CUDA driver refused")

    monkeypatch.setattr(FakeMapping, "close", close_failing)
    imports = CudaImports()
    first = view(imports, "a")
    second = view(imports, "b")
    del first
    drain()
    del second
    drain()
    assert [mapping.closes for mapping in imported] == [1, 1]
    assert "a CUDA release failed" in caplog.text


def test_nothing_is_queued_once_the_interpreter_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(cuda, "_exiting", [True])
    cuda.release_later(lambda: ran.append("ran"))
    monkeypatch.setattr(cuda, "_exiting", [False])
    drain()
    assert ran == []
