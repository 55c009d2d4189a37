"""Plugin discovery and backend selection.

Each entry point of the `exo_gpu_plugins` group is loaded on its own, after the built-in host
plugin: one that fails to import, register or answer its hook is recorded (distribution, version,
error), logged and skipped, and the others still load. `EXO_GPU_STRICT_PLUGINS=1` re-raises instead,
for plugin authors. `EXO_GPU_LOAD_PLUGINS` (allow-list) and `EXO_GPU_DISABLED_PLUGINS` (block-list)
take comma-separated entry-point or distribution names; the built-in host plugin is always loaded.
A name in either list that matches no installed plugin is a `ConfigError` listing the installed
ones (a misspelt block-list would load what the user meant to block). Backend names are
compared case-insensitively. A backend whose `BackendInfo.automatic` is False (an example, a test
fixture) is used only when named, never chosen automatically.

Discovery imports only each plugin's hook module. A backend's class and probe are imported when that
backend is selected or probed.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, cast

import pluggy

from exo_gpu_plugins import config
from exo_gpu_plugins.errors import (
    BackendUnavailableError,
    ConfigError,
    PluginError,
    UnknownBackendError,
)
from exo_gpu_plugins.hookspecs import PROJECT_NAME, BackendInfo, BackendSpecs

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend

__all__ = [
    "BackendEntry",
    "BackendReport",
    "PluginRecord",
    "Registry",
    "get_registry",
    "open_backend",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "exo_gpu_plugins"
ENV_STRICT = "EXO_GPU_STRICT_PLUGINS"
ENV_ALLOW = "EXO_GPU_LOAD_PLUGINS"
ENV_BLOCK = "EXO_GPU_DISABLED_PLUGINS"
_BUILTIN = "exo_gpu_plugins.host.plugin"


@dataclass(frozen=True)
class PluginRecord:
    """What happened to one plugin: its backends, or why it was skipped."""

    name: str
    distribution: str
    version: str
    module: str
    status: Literal["loaded", "failed", "disabled"]
    backends: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class BackendEntry:
    """A backend offered by a loaded plugin."""

    info: BackendInfo
    plugin: PluginRecord

    @property
    def name(self) -> str:
        return self.info.name

    def load_class(self) -> type[GPUBackend[Any]]:
        """Import and return the backend class (the first native import happens here)."""
        from exo_gpu_plugins.backend import GPUBackend

        target = _resolve(self.info.backend)
        backend_class = target() if _is_factory(target) else target
        if not (isinstance(backend_class, type) and issubclass(backend_class, GPUBackend)):
            raise PluginError(
                f"plugin {self.plugin.distribution}: backend {self.name!r} is "
                f"{backend_class!r}, not a GPUBackend subclass"
            )
        return backend_class

    def unavailable_reason(self) -> str | None:
        """`None` when the backend can run here; else why not. A crashing probe counts as 'not'."""
        if self.info.probe is None:
            return None
        try:
            probe = cast(Callable[[], "str | None"], _resolve(self.info.probe))
            return probe()
        except Exception as exc:
            return f"probe failed: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class BackendReport:
    """One row of `exo-gpu plugins`: a plugin and one of its backends (or none, when the plugin
    failed or is disabled), with whether that backend can run here. `--json` prints these as they
    are; the table shows the same records."""

    plugin: str
    distribution: str
    version: str
    status: str
    backend: str | None
    priority: int | None
    automatic: bool | None
    available: bool | None
    unavailable_reason: str | None
    error: str | None


def _resolve(target: object) -> Any:
    if isinstance(target, str):
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module
    return target


def _is_factory(target: object) -> bool:
    return callable(target) and not isinstance(target, type)


@dataclass
class Registry:
    """The plugins found in this environment and the backends they provide."""

    plugins: list[PluginRecord] = field(default_factory=list)
    backends: dict[str, BackendEntry] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def discover(
        cls,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Registry:
        """Load the built-in host plugin and every installed plugin entry point."""
        env = os.environ if env is None else env
        strict = config.env_flag(ENV_STRICT, env)
        allow = _name_set(env.get(ENV_ALLOW))
        block = _name_set(env.get(ENV_BLOCK)) or set()
        registry = cls()
        manager = pluggy.PluginManager(PROJECT_NAME)
        manager.add_hookspecs(BackendSpecs)
        builtin = PluginRecord(
            "host", "exo-gpu-plugins", _version("exo-gpu-plugins"), _BUILTIN, "loaded"
        )
        registry._load(manager, builtin, lambda: importlib.import_module(_BUILTIN), strict=True)
        found = list(entry_points if entry_points is not None else _entry_points())
        _refuse_unmatched(ENV_ALLOW, allow or set(), found, env)
        _refuse_unmatched(ENV_BLOCK, block, found, env)
        for entry_point in sorted(found, key=lambda ep: (_dist_name(ep), ep.name)):
            record = PluginRecord(
                entry_point.name,
                _dist_name(entry_point),
                _dist_version(entry_point),
                entry_point.value,
                "loaded",
            )
            names = {record.name.lower(), record.distribution.lower()}
            if (allow is not None and not names & allow) or names & block:
                registry.plugins.append(replace(record, status="disabled"))
                log.info(
                    "plugin %s (%s) disabled by %s",
                    record.name,
                    record.distribution,
                    ENV_BLOCK if names & block else ENV_ALLOW,
                )
                continue
            registry._load(manager, record, entry_point.load, strict=strict)
        return registry

    def _load(
        self,
        manager: pluggy.PluginManager,
        record: PluginRecord,
        load: Callable[[], object],
        *,
        strict: bool,
    ) -> None:
        try:
            module = load()
            manager.register(module, name=f"{record.distribution}:{record.name}")
            infos = self._call_hook(manager, module)
            claimed = self._claim(record, infos)
        except Exception as exc:
            failed = replace(record, status="failed", error=f"{type(exc).__name__}: {exc}")
            self.plugins.append(failed)
            log.warning(
                "plugin %s from %s %s failed to load and is skipped: %s",
                record.name,
                record.distribution,
                record.version,
                failed.error,
            )
            if strict:
                raise PluginError(
                    f"plugin {record.name} from {record.distribution} {record.version} "
                    f"failed: {failed.error}"
                ) from exc
            return
        loaded = replace(record, backends=tuple(info.name for info in claimed))
        self.plugins.append(loaded)
        for info in claimed:
            self.backends[info.name] = BackendEntry(info, loaded)

    @staticmethod
    def _call_hook(manager: pluggy.PluginManager, module: object) -> list[BackendInfo]:
        impls = [i for i in manager.hook.exo_gpu_backends.get_hookimpls() if i.plugin is module]
        if not impls:
            raise PluginError("the plugin module implements no exo_gpu_backends hook")
        infos: list[BackendInfo] = []
        for impl in impls:
            result = impl.function()
            if not isinstance(result, Sequence) or not all(
                isinstance(info, BackendInfo) for info in result
            ):
                raise PluginError("exo_gpu_backends() must return a list of BackendInfo")
            infos.extend(result)
        return infos

    def _claim(self, record: PluginRecord, infos: list[BackendInfo]) -> list[BackendInfo]:
        for info in infos:
            if not info.name or info.name != info.name.strip().lower() or ":" in info.name:
                raise PluginError(f"backend name {info.name!r} must be lower-case without ':'")
            holder = self.backends.get(info.name)
            if holder is not None:
                raise PluginError(
                    f"backend name {info.name!r} is claimed by both {holder.plugin.distribution} "
                    f"(plugin {holder.plugin.name}) and {record.distribution} (plugin {record.name})"
                )
        return infos

    # ----------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Backend names, highest automatic-selection priority first."""
        ordered = sorted(self.backends.values(), key=lambda entry: -entry.info.priority)
        return [entry.name for entry in ordered]

    def entry(self, name: str, source: str | None = None) -> BackendEntry:
        """The backend of that name, in any case; `UnknownBackendError` listing the choices
        otherwise. `source` says where the name came from (e.g. `EXO_GPU_BACKEND`), for the message."""
        found = self.backends.get(name.strip().lower())
        if found is None:
            origin = f" (from {source})" if source else ""
            raise UnknownBackendError(
                f"unknown GPU backend {name!r}{origin}; installed backends: {', '.join(self.names())}"
                + self._failures_hint()
            )
        return found

    def report(self) -> list[BackendReport]:
        """Every plugin with each of its backends, probed now: what `exo-gpu plugins` shows."""
        rows: list[BackendReport] = []
        for plugin in self.plugins:
            for name in plugin.backends or (None,):
                entry = self.backends.get(name) if name else None
                reason = entry.unavailable_reason() if entry else None
                rows.append(
                    BackendReport(
                        plugin=plugin.name,
                        distribution=plugin.distribution,
                        version=plugin.version,
                        status=plugin.status,
                        backend=name,
                        priority=entry.info.priority if entry else None,
                        automatic=entry.info.automatic if entry else None,
                        available=(reason is None) if entry else None,
                        unavailable_reason=reason,
                        error=plugin.error,
                    )
                )
        return rows

    def _failures_hint(self) -> str:
        failed = [f"{p.name} ({p.error})" for p in self.plugins if p.status == "failed"]
        disabled = [p.name for p in self.plugins if p.status == "disabled"]
        hint = ""
        if failed:
            hint += f"; plugins that failed to load: {'; '.join(failed)}"
        if disabled:
            hint += f"; disabled plugins: {', '.join(disabled)}"
        return hint

    def select(self, name: str | None = None, env: Mapping[str, str] | None = None) -> str:
        """The backend to use: explicit name > EXO_GPU_BACKEND > config file > automatic."""
        selection = config.requested_backend(name, env)
        if not selection.automatic:
            entry = self.entry(selection.name, selection.source)
            reason = entry.unavailable_reason()
            if reason is not None:
                raise BackendUnavailableError(
                    f"backend {selection.name!r} (chosen by {selection.source}) cannot run here: "
                    f"{reason}"
                )
            log.info("GPU backend %s chosen by %s", selection.name, selection.source)
            return selection.name
        skipped: list[str] = []
        for entry, reason in self.by_priority():
            if reason is None:
                if skipped:
                    self.warn_fallback(entry.name, skipped)
                else:
                    log.info("GPU backend %s chosen automatically", entry.name)
                return entry.name
            skipped.append(f"{entry.name}: {reason}")
        raise BackendUnavailableError("no backend can run here: " + "; ".join(skipped))

    def warn_fallback(self, chosen: str, skipped: Sequence[str]) -> None:
        """The one warning of automatic selection passing over backends that cannot run here (no
        driver, no device), said once per process however often selection runs."""
        reasons = "; ".join(skipped)
        message = (
            f"falling back to host memory: {reasons}"
            if chosen == "host"
            else f"using GPU backend {chosen}, passed over {reasons}"
        )
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def by_priority(self) -> Iterator[tuple[BackendEntry, str | None]]:
        """Each backend open to automatic selection, highest priority first, with why it cannot run
        here (`None`: it can). Probes run lazily, so a caller that stops at the first usable backend
        probes no further. Backends with `automatic=False` are left out."""
        for name in self.names():
            entry = self.backends[name]
            if entry.info.automatic:
                yield entry, entry.unavailable_reason()

    def create(self, name: str | None = None, env: Mapping[str, str] | None = None) -> GPUBackend[Any]:
        """A new, not yet initialized instance of the selected backend."""
        chosen = self.select(name, env)
        return self.entry(chosen).load_class()()


def _name_set(value: str | None) -> set[str] | None:
    """Comma-separated names, lower-cased; `None` when unset or empty."""
    names = {part.strip().lower() for part in (value or "").split(",") if part.strip()}
    return names or None


def _refuse_unmatched(
    variable: str, names: set[str], found: Sequence[metadata.EntryPoint], env: Mapping[str, str]
) -> None:
    """A list name that matches nothing installed is a typo or a missing install: a `ConfigError`
    naming the variable, its value and the installed plugins."""
    known = {"host", "exo-gpu-plugins"}
    for entry_point in found:
        known |= {entry_point.name.lower(), _dist_name(entry_point).lower()}
    unmatched = sorted(names - known)
    if unmatched:
        raise ConfigError(
            f"{variable}={env.get(variable, '')!r} names {', '.join(unmatched)}, which no installed "
            f"plugin has; installed: {', '.join(sorted(known))}"
        )


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return str(dist.metadata["Name"]) if dist is not None else "unknown"


def _dist_version(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return str(dist.version) if dist is not None else "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "source"


@dataclass
class _Cache:
    registry: Registry | None = None


_cache = _Cache()
_default_lock = threading.Lock()


def get_registry(*, reload: bool = False) -> Registry:
    """The registry of this process, discovered on first use (pass `reload=True` to rescan)."""
    with _default_lock:
        if _cache.registry is None or reload:
            _cache.registry = Registry.discover()
        return _cache.registry


async def open_backend(name: str | None = None, *, registry: Registry | None = None) -> GPUBackend[Any]:
    """exo's one call at startup: select a backend (by name, env, config or automatically),
    create it and initialize it. In automatic mode a backend that cannot run here (its probe says
    so, or its initialization raises `BackendUnavailableError`: no driver, no device) is passed
    over with one warning; any other error, a `ConfigError` above all, is raised: nothing falls
    back to another backend because of a setting it does not understand."""
    registry = registry or get_registry()
    selection = config.requested_backend(name)
    if not selection.automatic:
        backend = registry.create(name)  # select() again, so errors name the selection's source
        await backend.initialize()
        return backend
    failures: list[str] = []
    for entry, unavailable in registry.by_priority():
        if unavailable is not None:
            failures.append(f"{entry.name}: {unavailable}")
            continue
        try:
            backend = entry.load_class()()
            await backend.initialize()
        except BackendUnavailableError as exc:
            failures.append(f"{entry.name}: {exc}")
            continue
        if failures:
            registry.warn_fallback(entry.name, failures)
        return backend
    raise BackendUnavailableError("no backend could be opened: " + "; ".join(failures))
