"""The kit's export clauses catch a backend that frees memory a DLPack view still uses."""

from __future__ import annotations

from exo_gpu_plugins.host.backend import HostBackend, HostMemory
from exo_gpu_plugins.testing.check import run_kit


class FreesExportedMemory(HostBackend):
    """Frees memory a view still uses: its free clears the bytes, as handing them out again would."""

    def _free(self, native: HostMemory) -> None:
        super()._free(native)
        native[:] = bytes(len(native))


def test_kit_catches_memory_freed_under_a_view() -> None:
    result = run_kit(FreesExportedMemory, extra_args=["-k", "test_export"])
    assert not result.errors, result.errors
    summary = result.clauses["export lifetime"]
    failing = result.failed_clauses()
    assert summary.failed, f"the kit passed a backend that frees viewed memory: {failing}"
    assert "freed or reused" in (summary.first_reason or ""), summary.first_reason
    assert not result.clauses["exports"].failed, result.clauses["exports"].first_reason
    assert result.clauses["shared memory"].failed, "memory freed under an importer went unnoticed"


def test_kit_passes_the_host_backends_exports() -> None:
    result = run_kit(HostBackend, extra_args=["-k", "test_export"])
    assert not result.errors, result.errors
    for name in ("exports", "export lifetime", "shared memory"):
        assert result.clauses[name].passed and not result.clauses[name].failed, (
            name,
            result.clauses[name].first_reason,
        )
