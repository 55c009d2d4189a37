"""The plugin hook: how a distribution tells exo-gpu-plugins which backends it provides.

A plugin is a module named by an entry point in the `exo_gpu_plugins` group. It implements
`exo_gpu_backends()` and returns `BackendInfo` records. The records name the backend class and its
availability probe as import paths ("package.module:attribute"), so discovering a plugin imports only
that small module: native code is imported when a backend is actually asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import pluggy

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend

__all__ = ["PROJECT_NAME", "BackendInfo", "BackendSpecs", "hookimpl", "hookspec"]

PROJECT_NAME = "exo_gpu_plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

BackendFactory = Union[str, Callable[[], "type[GPUBackend[object]]"]]  # noqa: UP007 (string forward refs)
Probe = Union[str, Callable[[], "str | None"], None]  # noqa: UP007


@dataclass(frozen=True)
class BackendInfo:
    """One backend a plugin provides.

    `backend`: the `GPUBackend` subclass, or its import path "module:Class" (imported lazily).
    `probe`: a callable (or its import path) returning `None` when the backend can run here, or a
    one-line reason when it cannot; `None` means always available.
    `priority`: automatic selection tries higher priorities first; the host backend has 0.
    `automatic`: `False` keeps the backend out of automatic selection, so it is used only when asked
    for by name: for examples and test fixtures, which must never become a user's backend.
    """

    name: str
    backend: BackendFactory
    probe: Probe = None
    priority: int = 100
    description: str = ""
    automatic: bool = True


class BackendSpecs:
    """Hook specifications; plugin modules implement them with `@hookimpl`."""

    @hookspec
    def exo_gpu_backends(self) -> Sequence[BackendInfo]:  # type: ignore[empty-body]
        """Return the backends this plugin provides."""
