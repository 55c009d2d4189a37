"""Which backend the user asked for: explicit name > EXO_GPU_BACKEND > exo's TOML config > automatic.

exo's config file is `EXO_CONFIG_FILE`, else `~/.config/exo/config.toml`; its `[gpu]` table may say
`backend = "vulkan"` (or "auto"). The default file missing means automatic; a broken one, a key of
`[gpu]` this package does not know (a misspelling) or an `EXO_CONFIG_FILE` that names no file is a
`ConfigError`, since silently ignoring what a user wrote would pick a backend they did not ask for.

Every setting read from the environment goes through `env_flag` or `env_choice`: a value they do not
know is a `ConfigError` naming the variable, the value and the valid ones, never a default.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from exo_gpu_plugins.errors import ConfigError
from exo_gpu_plugins.file_copy import open_regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "AUTO",
    "FLAG_WORDS",
    "Selection",
    "config_path",
    "env_choice",
    "env_flag",
    "requested_backend",
]

log = logging.getLogger(__name__)

AUTO = "auto"
KNOWN_GPU_KEYS = ("backend",)
ENV_BACKEND = "EXO_GPU_BACKEND"
ENV_CONFIG_FILE = "EXO_CONFIG_FILE"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
FLAG_WORDS = _TRUE + _FALSE


def env_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    """A yes/no setting: unset or empty is False; any other word than FLAG_WORDS (any case) is a
    `ConfigError` naming the variable, its value and the valid words."""
    env = os.environ if env is None else env
    raw = env.get(name, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if not value or value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no setting; valid: {', '.join(FLAG_WORDS)}")


def env_choice(
    name: str, choices: Sequence[str], default: str, env: Mapping[str, str] | None = None
) -> str:
    """One of `choices` (compared in lower case); unset or empty is `default`. Anything else is a
    `ConfigError` naming the variable, its value and the choices."""
    env = os.environ if env is None else env
    raw = env.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


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
    from_file = _backend_from_file(path, explicit=bool(env.get(ENV_CONFIG_FILE)))
    if from_file:
        return Selection(from_file, f"config file {path}")
    return Selection(AUTO, "automatic")


def _backend_from_file(path: Path, *, explicit: bool = False) -> str | None:
    if str(path) == os.devnull:  # EXO_CONFIG_FILE=/dev/null: no config file, said on purpose
        return None
    try:
        fd, _ = open_regular_file(path, ConfigError)  # a FIFO or a device is refused, not waited on
    except ConfigError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            if explicit:
                raise ConfigError(f"{ENV_CONFIG_FILE}={str(path)!r} names no file") from None
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
        raise ConfigError(
            f"exo config {path}: unknown key {', '.join(f'gpu.{key}' for key in unknown)} in [gpu]; "
            f"known keys: {', '.join(KNOWN_GPU_KEYS)}"
        )
    backend = gpu.get("backend")
    if backend is None:
        return None
    if not isinstance(backend, str) or not backend.strip():
        raise ConfigError(f"exo config {path}: gpu.backend must be a non-empty string")
    return backend.strip().lower()
