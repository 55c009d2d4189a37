"""Telemetry through sysfs hwmon, against fixture trees shaped like real amdgpu, i915 and xe cards
(no such card on the test machines), and NVML's absence handled as 'no reading'."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_gpu_plugins import telemetry
from exo_gpu_plugins.telemetry import HwmonSource, find_source


def make_card(root: Path, card: str, pci: str, files: dict[str, str]) -> None:
    """/sys/class/drm/<card>/device -> /sys/devices/pci0000:00/<pci>, as the kernel lays it out."""
    device = root / "devices" / "pci0000:00" / pci
    for relative, text in files.items():
        path = (
            device / relative
            if not relative.startswith("@card/")
            else root / "class" / "drm" / card / relative[6:]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "class" / "drm" / card).mkdir(parents=True, exist_ok=True)
    (root / "class" / "drm" / card / "device").symlink_to(device)
    (root / "class" / "drm" / f"{card}-DP-1").mkdir()  # connectors are skipped


def test_amdgpu_card(tmp_path: Path) -> None:
    make_card(
        tmp_path,
        "card1",
        "0000:03:00.0",
        {
            "hwmon/hwmon4/temp1_input": "52000\n",
            "hwmon/hwmon4/power1_average": "187000000\n",
            "hwmon/hwmon4/freq1_input": "2105000000\n",
        },
    )
    source = HwmonSource.for_pci("0000:03:00.0", tmp_path)
    assert source is not None
    assert (source.has_temperature, source.has_power, source.has_clock) == (True, True, True)
    assert source.temperature_c() == 52.0
    assert source.power_w() == 187.0
    assert source.clock_mhz() == 2105


def test_amdgpu_clock_from_dpm_table(tmp_path: Path) -> None:
    make_card(
        tmp_path,
        "card0",
        "0000:0c:00.0",
        {
            "hwmon/hwmon1/temp1_input": "40000",
            "pp_dpm_sclk": "0: 500Mhz\n1: 1200Mhz *\n2: 2400Mhz\n",
        },
    )
    source = HwmonSource.for_pci("0000:0c:00.0", tmp_path)
    assert source is not None and source.clock_mhz() == 1200 and not source.has_power


def test_i915_card(tmp_path: Path) -> None:
    make_card(
        tmp_path,
        "card0",
        "0000:00:02.0",
        {
            "hwmon/hwmon3/power1_input": "9500000",
            "@card/gt_act_freq_mhz": "1300\n",
        },
    )
    source = HwmonSource.for_pci("0000:00:02.0", tmp_path)
    assert source is not None
    assert source.temperature_c() is None and not source.has_temperature
    assert source.power_w() == 9.5 and source.clock_mhz() == 1300


def test_xe_card(tmp_path: Path) -> None:
    make_card(
        tmp_path,
        "card0",
        "0000:03:00.0",
        {
            "hwmon/hwmon2/temp2_input": "61000",
            "tile0/gt0/freq0/act_freq": "2050",
        },
    )
    source = HwmonSource.for_pci("0000:03:00.0", tmp_path)
    assert source is not None and source.temperature_c() == 61.0 and source.clock_mhz() == 2050


def test_card_is_matched_by_pci_address(tmp_path: Path) -> None:
    make_card(tmp_path, "card0", "0000:03:00.0", {"hwmon/hwmon0/temp1_input": "30000"})
    make_card(tmp_path, "card1", "0000:04:00.0", {"hwmon/hwmon1/temp1_input": "70000"})
    source = HwmonSource.for_pci("0000:04:00.0", tmp_path)
    assert source is not None and source.temperature_c() == 70.0
    assert HwmonSource.for_pci("0000:09:00.0", tmp_path) is None


def test_card_without_readings_is_no_source(tmp_path: Path) -> None:
    make_card(tmp_path, "card0", "0000:03:00.0", {"vendor": "0x1002"})
    assert HwmonSource.for_pci("0000:03:00.0", tmp_path) is None


def test_vanished_sensor_reads_none(tmp_path: Path) -> None:
    make_card(tmp_path, "card0", "0000:03:00.0", {"hwmon/hwmon0/temp1_input": "30000"})
    source = HwmonSource.for_pci("0000:03:00.0", tmp_path)
    assert source is not None
    (tmp_path / "devices/pci0000:00/0000:03:00.0/hwmon/hwmon0/temp1_input").write_text("garbage")
    assert source.temperature_c() is None


def test_no_nvml_means_no_nvidia_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = telemetry._Nvml()
    fake._tried, fake.module = True, None
    monkeypatch.setattr(telemetry, "_nvml", fake)
    assert find_source("GPU-00000000-0000-0000-0000-000000000000", None, "nvidia", tmp_path) is None
