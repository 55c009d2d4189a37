"""AMD and Intel devices through sysfs (amdgpu, i915, xe), matched by PCI address.

Everything is found from the PCI device, `/sys/bus/pci/devices/<address>/`: its DRM card
(`drm/card<N>/`), its hwmon directory (`hwmon/hwmon<N>/`: temperature, power, amdgpu's clock) and
the driver's own files. A file that is missing or unreadable (a runtime-suspended card refuses some)
gives `None` for that figure only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from exo_gpu_plugins.telemetry.source import DeviceFacts

__all__ = ["HwmonSource", "dpm_levels"]

log = logging.getLogger(__name__)

_CARD = re.compile(r"card\d+")
# amdgpu's pp_dpm_sclk / pp_dpm_mclk: "1: 1900Mhz *" (the starred level is the current one);
# newer kernels add "S: 19Mhz *" while the GPU sleeps.
_DPM_LINE = re.compile(r"\s*(\w+):\s*(\d+)\s*mhz\s*(\*?)\s*", re.IGNORECASE)


def _read_number(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _first_number(*paths: Path | None) -> int | None:
    """The first of these files that reads as a number (0 is a reading: an idle Intel GT)."""
    for path in paths:
        value = _read_number(path)
        if value is not None:
            return value
    return None


def dpm_levels(path: Path) -> tuple[list[int], int | None] | None:
    """An amdgpu DPM table as (the numbered levels' MHz, the current MHz), or None if unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    levels: list[int] = []
    current: int | None = None
    for line in lines:
        match = _DPM_LINE.fullmatch(line)
        if match is None:
            continue
        key, mhz, star = match.groups()
        if key.isdigit():
            levels.append(int(mhz))
        if star:
            current = int(mhz)
    return (levels, current) if levels or current is not None else None


@dataclass
class HwmonSource:
    """A DRM device's readings and facts from sysfs.

    Clocks: amdgpu's hwmon `freq1_input` (Hz) or the starred `pp_dpm_sclk` level now, the highest
    `pp_dpm_sclk` / `pp_dpm_mclk` level as the maximum; i915's `gt_act_freq_mhz` now (not
    `gt_cur_freq_mhz`, which is the frequency requested, not the one running) and `gt_RP0_freq_mhz`
    (the hardware maximum; `gt_max_freq_mhz`, the user-set limit, only without it); xe's
    `tile0/gt0/freq0/act_freq` and `rp0_freq` (else `max_freq`).

    Utilization: amdgpu's `gpu_busy_percent`. i915 and xe have no busy figure in sysfs (only the
    perf PMU and per-client fdinfo, which this module does not read), so theirs is None.

    Memory bus width is not in sysfs for any of these drivers, so neither it nor the peak bandwidth
    is known here; nor is a compute capability or a tensor core count.
    """

    device: Path
    card: Path | None
    hwmon: Path | None
    has_temperature: bool = field(default=False, init=False)
    has_power: bool = field(default=False, init=False)
    has_clock: bool = field(default=False, init=False)
    has_utilization: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.has_temperature = self.temperature_c() is not None
        self.has_power = self.power_w() is not None
        self.has_clock = self.clock_mhz() is not None
        self.has_utilization = self.utilization_percent() is not None

    @classmethod
    def for_pci(cls, pci_bus_id: str, sysfs_root: Path = Path("/sys")) -> HwmonSource | None:
        """The device at `pci_bus_id` ('0000:03:00.0'), if the kernel has it and sysfs knows
        anything about it."""
        device = sysfs_root / "bus" / "pci" / "devices" / pci_bus_id.lower()
        if not device.is_dir():
            return None
        cards = sorted(p for p in device.glob("drm/card*") if _CARD.fullmatch(p.name))
        hwmons = sorted(device.glob("hwmon/hwmon*"))
        source = cls(device, cards[0] if cards else None, hwmons[0] if hwmons else None)
        known = source.has_temperature or source.has_power or source.has_clock
        if known or source.has_utilization or source.device_facts() != DeviceFacts(source="sysfs"):
            return source
        log.debug("sysfs has no readings for %s", pci_bus_id)
        return None

    # Files (any of them may be absent)

    def _hwmon_file(self, *names: str) -> Path | None:
        return None if self.hwmon is None else _first_existing(*(self.hwmon / n for n in names))

    def _card_file(self, *names: str) -> Path | None:
        return None if self.card is None else _first_existing(*(self.card / n for n in names))

    def _xe_file(self, *names: str) -> Path | None:
        freq = self.device / "tile0" / "gt0" / "freq0"
        return _first_existing(*(freq / n for n in names))

    def _dpm(self, name: str) -> tuple[list[int], int | None] | None:
        path = self.device / name
        return dpm_levels(path) if path.exists() else None

    # Readings

    def temperature_c(self) -> float | None:
        millidegrees = _read_number(self._hwmon_file("temp1_input", "temp2_input"))
        return None if millidegrees is None else millidegrees / 1000.0

    def power_w(self) -> float | None:
        microwatts = _read_number(self._hwmon_file("power1_average", "power1_input"))
        return None if microwatts is None else microwatts / 1_000_000.0

    def clock_mhz(self) -> int | None:
        hertz = _read_number(self._hwmon_file("freq1_input"))
        if hertz is not None:
            return round(hertz / 1_000_000)
        sclk = self._dpm("pp_dpm_sclk")
        if sclk is not None and sclk[1] is not None:
            return sclk[1]
        return _first_number(self._card_file("gt_act_freq_mhz"), self._xe_file("act_freq"))

    def utilization_percent(self) -> float | None:
        busy = _read_number(self.device / "gpu_busy_percent")
        return None if busy is None else float(busy)

    def device_facts(self, compute_units: int | None = None) -> DeviceFacts:
        """The highest graphics and memory clocks sysfs states (see the class docstring);
        `compute_units` is accepted for the common signature and unused."""
        sclk, mclk = self._dpm("pp_dpm_sclk"), self._dpm("pp_dpm_mclk")
        graphics = max(sclk[0]) if sclk and sclk[0] else None
        if graphics is None:
            graphics = _first_number(
                self._card_file("gt_RP0_freq_mhz", "gt_max_freq_mhz"),
                self._xe_file("rp0_freq", "max_freq"),
            )
        return DeviceFacts(
            source="sysfs",
            max_graphics_clock_mhz=graphics,
            max_memory_clock_mhz=max(mclk[0]) if mclk and mclk[0] else None,
        )
