"""Which backend the user asked for: explicit name > EXO_GPU_BACKEND > exo's TOML config > automatic.

exo's config file is `EXO_CONFIG_FILE`, else `~/.config/exo/config.toml`; its `[gpu]` table may say
`backend = "vulkan"` (or "auto"). A missing file means automatic; a broken one is a `ConfigError`,
since silently ignoring a config the user wrote would pick a backend they did not ask for. A key of
`[gpu]` this package does not know (a misspelling) is logged as a warning naming the known ones.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from exo_gpu_plugins.errors import ConfigError
from exo_gpu_plugins.file_copy import open_regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["AUTO", "Selection", "config_path", "requested_backend"]

log = logging.getLogger(__name__)

AUTO = "auto"
KNOWN_GPU_KEYS = ("backend",)
ENV_BACKEND = "EXO_GPU_BACKEND"
ENV_CONFIG_FILE = "EXO_CONFIG_FILE"


@dataclass(frozen=True)
class Selection:
    """A backend name (or AUTO) and where the choice came from, for messages and logs."""

    name: str
    source: str

    @property
    def automatic(self) -> bool:
        return self.name == AUTO


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """exo's config file: `EXO_CONFIG_FILE`, else `~/.config/exo/config.toml`."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_CONFIG_FILE)
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".config" / "exo" / "config.toml"


def requested_backend(name: str | None = None, env: Mapping[str, str] | None = None) -> Selection:
    """The backend the caller, the environment or the config file asks for, in that order."""
    env = os.environ if env is None else env
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"backend name must be a str, not {type(name).__name__}")
        return Selection(name.strip().lower() or AUTO, "argument")
    from_env = env.get(ENV_BACKEND, "").strip().lower()
    if from_env:
        return Selection(from_env, ENV_BACKEND)
    path = config_path(env)
    from_file = _backend_from_file(path)
    if from_file:
        return Selection(from_file, f"config file {path}")
    return Selection(AUTO, "automatic")


def _backend_from_file(path: Path) -> str | None:
    try:
        fd, _ = open_regular_file(path, ConfigError)  # a FIFO or a device is refused, not waited on
    except ConfigError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise ConfigError(f"cannot read exo config {exc}") from exc.__cause__
    try:
        with open(fd, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read exo config {path}: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"exo config {path} is not valid TOML: {exc}") from exc
    gpu = document.get("gpu")
    if gpu is None:
        return None
    if not isinstance(gpu, dict):
        raise ConfigError(f"exo config {path}: [gpu] must be a table")
    unknown = sorted(key for key in gpu if key not in KNOWN_GPU_KEYS)
    if unknown:
        log.warning(
            "exo config %s: unknown key %s in [gpu], ignored (known keys: %s)",
            path,
            ", ".join(f"gpu.{key}" for key in unknown),
            ", ".join(KNOWN_GPU_KEYS),
        )
    backend = gpu.get("backend")
    if backend is None:
        return None
    if not isinstance(backend, str) or not backend.strip():
        raise ConfigError(f"exo config {path}: gpu.backend must be a non-empty string")
    return backend.strip().lower()
