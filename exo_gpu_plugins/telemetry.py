"""Live device readings (temperature, power, graphics clock) for any backend that knows a device's
identity: NVML for NVIDIA cards, matched by UUID (the optional `nvidia-ml-py` package), and sysfs
hwmon for amdgpu, i915 and xe, matched by PCI address. No source means `None`, never a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["HwmonSource", "NvmlSource", "TelemetrySource", "find_source"]

log = logging.getLogger(__name__)


class TelemetrySource(Protocol):
    """Which readings a device has, and how to take them now."""

    has_temperature: bool
    has_power: bool
    has_clock: bool

    def temperature_c(self) -> float | None: ...

    def power_w(self) -> float | None: ...

    def clock_mhz(self) -> int | None: ...


# --------------------------------------------------------------------------------------------------
# NVML


class _Nvml:
    """nvidia-ml-py, initialized once per process on first use."""

    def __init__(self) -> None:
        self.module: Any = None
        self.error: str | None = None
        self._tried = False

    def get(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self.module = pynvml
            except Exception as exc:  # ImportError, or NVMLError when no driver is loaded
                self.error = f"{type(exc).__name__}: {exc}"
                log.debug("NVML unavailable: %s", self.error)
        return self.module


_nvml = _Nvml()


@dataclass
class NvmlSource:
    """An NVIDIA device's readings through NVML."""

    handle: Any
    nvml: Any
    has_temperature: bool = True
    has_power: bool = True
    has_clock: bool = True

    @classmethod
    def for_uuid(cls, uuid: str) -> NvmlSource | None:
        nvml = _nvml.get()
        if nvml is None:
            return None
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid.encode())
        except Exception:
            return None
        source = cls(handle, nvml)
        source.has_temperature = source.temperature_c() is not None
        source.has_power = source.power_w() is not None
        source.has_clock = source.clock_mhz() is not None
        return source

    def _read(self, call: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, call)(self.handle, *args)
        except Exception:
            return None

    def temperature_c(self) -> float | None:
        value = self._read("nvmlDeviceGetTemperature", self.nvml.NVML_TEMPERATURE_GPU)
        return None if value is None else float(value)

    def power_w(self) -> float | None:
        milliwatts = self._read("nvmlDeviceGetPowerUsage")
        return None if milliwatts is None else milliwatts / 1000.0

    def clock_mhz(self) -> int | None:
        value = self._read("nvmlDeviceGetClockInfo", self.nvml.NVML_CLOCK_GRAPHICS)
        return None if value is None else int(value)

    def memory(self) -> tuple[int, int] | None:
        """(total, free) bytes as nvidia-smi shows them."""
        info = self._read("nvmlDeviceGetMemoryInfo")
        return None if info is None else (int(info.total), int(info.free))


# --------------------------------------------------------------------------------------------------
# sysfs hwmon (amdgpu, i915, xe)


def _read_number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class HwmonSource:
    """Readings from a DRM card's hwmon directory (and the driver's own clock files)."""

    hwmon: Path | None
    clock_files: list[Path] = field(default_factory=list)
    dpm_file: Path | None = None
    has_temperature: bool = False
    has_power: bool = False
    has_clock: bool = False

    def __post_init__(self) -> None:
        self.has_temperature = self._temperature_file() is not None
        self.has_power = self._power_file() is not None
        self.has_clock = self.clock_mhz() is not None

    def _temperature_file(self) -> Path | None:
        if self.hwmon is None:
            return None
        for name in ("temp1_input", "temp2_input"):
            if (self.hwmon / name).exists():
                return self.hwmon / name
        return None

    def _power_file(self) -> Path | None:
        if self.hwmon is None:
            return None
        for name in ("power1_average", "power1_input"):
            if (self.hwmon / name).exists():
                return self.hwmon / name
        return None

    def temperature_c(self) -> float | None:
        path = self._temperature_file()
        millidegrees = _read_number(path) if path else None
        return None if millidegrees is None else millidegrees / 1000.0

    def power_w(self) -> float | None:
        path = self._power_file()
        microwatts = _read_number(path) if path else None
        return None if microwatts is None else microwatts / 1_000_000.0

    def clock_mhz(self) -> int | None:
        if self.hwmon is not None:
            hertz = _read_number(self.hwmon / "freq1_input")
            if hertz is not None:
                return round(hertz / 1_000_000)
        if self.dpm_file is not None:
            mhz = _active_dpm_level(self.dpm_file)
            if mhz is not None:
                return mhz
        for path in self.clock_files:
            value = _read_number(path)
            if value is not None:
                return value
        return None

    @classmethod
    def for_pci(cls, pci_bus_id: str, sysfs_root: Path = Path("/sys")) -> HwmonSource | None:
        """The card whose PCI device is `pci_bus_id` ('0000:03:00.0'), if the kernel has it."""
        drm = sysfs_root / "class" / "drm"
        try:
            cards = sorted(p for p in drm.iterdir() if p.name.startswith("card") and "-" not in p.name)
        except OSError:
            return None
        for card in cards:
            device = card / "device"
            try:
                address = device.resolve().name
            except OSError:
                continue
            if address.lower() != pci_bus_id.lower():
                continue
            hwmons = sorted((device / "hwmon").glob("hwmon*")) if (device / "hwmon").is_dir() else []
            clocks = [card / "gt_act_freq_mhz", *sorted(device.glob("tile*/gt*/freq0/act_freq"))]
            dpm = device / "pp_dpm_sclk"
            source = cls(
                hwmons[0] if hwmons else None,
                [p for p in clocks if p.exists()],
                dpm if dpm.exists() else None,
            )
            if source.has_temperature or source.has_power or source.has_clock:
                return source
            return None
        return None


def _active_dpm_level(path: Path) -> int | None:
    """amdgpu's pp_dpm_sclk marks the current level with '*': '1: 1200Mhz *'."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.rstrip().endswith("*"):
            for token in line.split():
                lowered = token.lower()
                if lowered.endswith("mhz") and lowered[:-3].isdigit():
                    return int(lowered[:-3])
    return None


def find_source(
    uuid: str | None,
    pci_bus_id: str | None,
    vendor: str,
    sysfs_root: Path = Path("/sys"),
) -> NvmlSource | HwmonSource | None:
    """The best telemetry source for a device: NVML by UUID for NVIDIA, else sysfs by PCI address."""
    if vendor == "nvidia" and uuid:
        source = NvmlSource.for_uuid(uuid)
        if source is not None:
            return source
    if pci_bus_id:
        return HwmonSource.for_pci(pci_bus_id, sysfs_root)
    return None
