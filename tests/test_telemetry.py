"""Telemetry through sysfs, against fixture trees laid out and filled as real amdgpu, i915 and xe
devices are (no such card on the test machines), and through NVML with a fake `pynvml` module that
can refuse any one call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

import pytest

from exo_gpu_plugins.telemetry import (
    DeviceFacts,
    HwmonSource,
    NvmlSource,
    find_source,
    nvidia_tensor_core_count,
    peak_bandwidth_gbps,
)
from exo_gpu_plugins.telemetry import nvml as nvml_module
from exo_gpu_plugins.telemetry.sysfs import dpm_levels

# --------------------------------------------------------------------------------------------------
# Fixture trees: file contents as the drivers write them (trailing spaces and newlines included).

# Radeon RX 7900 XTX (Navi 31, amdgpu, kernel 6.8): busy, mid-level clocks.
AMDGPU_DISCRETE = {
    "vendor": "0x1002\n",
    "device": "0x744c\n",
    "gpu_busy_percent": "23\n",
    "mem_busy_percent": "4\n",
    "pp_dpm_sclk": "0: 500Mhz \n1: 1834Mhz *\n2: 2526Mhz \n",
    "pp_dpm_mclk": "0: 96Mhz \n1: 456Mhz \n2: 772Mhz \n3: 1249Mhz *\n",
    "pp_dpm_fclk": "0: 97Mhz \n1: 1900Mhz *\n",
    "hwmon/hwmon3/name": "amdgpu\n",
    "hwmon/hwmon3/temp1_input": "47000\n",
    "hwmon/hwmon3/temp1_label": "edge\n",
    "hwmon/hwmon3/temp2_input": "52000\n",
    "hwmon/hwmon3/temp2_label": "junction\n",
    "hwmon/hwmon3/power1_average": "67000000\n",
    "hwmon/hwmon3/power1_cap": "303000000\n",
    "hwmon/hwmon3/freq1_input": "1834000000\n",
    "hwmon/hwmon3/freq1_label": "sclk\n",
    "hwmon/hwmon3/freq2_input": "1249000000\n",
    "hwmon/hwmon3/freq2_label": "mclk\n",
    "drm/card1/dev": "226:1\n",
    "drm/renderD128/dev": "226:128\n",
}

# A Radeon APU (Strix Point, amdgpu, kernel 6.12) in deep sleep: no hwmon clock, the "S:" line.
AMDGPU_APU = {
    "vendor": "0x1002\n",
    "device": "0x150e\n",
    "gpu_busy_percent": "0\n",
    "pp_dpm_sclk": "S: 19Mhz *\n0: 600Mhz \n1: 2900Mhz \n",
    "pp_dpm_mclk": "0: 400Mhz \n1: 1000Mhz \n2: 2000Mhz \n",
    "hwmon/hwmon5/name": "amdgpu\n",
    "hwmon/hwmon5/temp1_input": "39000\n",
    "hwmon/hwmon5/power1_input": "4000000\n",
    "drm/card0/dev": "226:0\n",
}

# Alder Lake-P integrated graphics (i915): idle in RC6, so the actual frequency reads 0; no hwmon.
I915_INTEGRATED = {
    "vendor": "0x8086\n",
    "device": "0x46a6\n",
    "drm/card0/gt_act_freq_mhz": "0\n",
    "drm/card0/gt_cur_freq_mhz": "300\n",
    "drm/card0/gt_boost_freq_mhz": "1400\n",
    "drm/card0/gt_max_freq_mhz": "1400\n",
    "drm/card0/gt_min_freq_mhz": "100\n",
    "drm/card0/gt_RP0_freq_mhz": "1400\n",
    "drm/card0/gt_RP1_freq_mhz": "700\n",
    "drm/card0/gt_RPn_freq_mhz": "100\n",
    "drm/renderD128/dev": "226:128\n",
}

# Arc A770 (DG2, i915) with the user's limit below the hardware's; hwmon has energy, no power now.
I915_DG2 = {
    "vendor": "0x8086\n",
    "device": "0x56a0\n",
    "drm/card0/gt_act_freq_mhz": "2000\n",
    "drm/card0/gt_cur_freq_mhz": "2000\n",
    "drm/card0/gt_max_freq_mhz": "2050\n",
    "drm/card0/gt_RP0_freq_mhz": "2400\n",
    "drm/card0/gt_RPn_freq_mhz": "300\n",
    "hwmon/hwmon2/name": "i915\n",
    "hwmon/hwmon2/power1_max": "190000000\n",
    "hwmon/hwmon2/power1_rated_max": "190000000\n",
    "hwmon/hwmon2/energy1_input": "1403210934\n",
    "hwmon/hwmon2/in0_input": "725\n",
}

# Arc B580 (Battlemage, xe): the graphics GT is gt0, the media GT gt1.
XE_BATTLEMAGE = {
    "vendor": "0x8086\n",
    "device": "0xe20b\n",
    "tile0/gt0/freq0/act_freq": "1700\n",
    "tile0/gt0/freq0/cur_freq": "1700\n",
    "tile0/gt0/freq0/max_freq": "2850\n",
    "tile0/gt0/freq0/min_freq": "400\n",
    "tile0/gt0/freq0/rp0_freq": "2850\n",
    "tile0/gt0/freq0/rpe_freq": "2200\n",
    "tile0/gt0/freq0/rpn_freq": "400\n",
    "tile0/gt1/freq0/act_freq": "0\n",
    "tile0/gt1/freq0/rp0_freq": "1800\n",
    "hwmon/hwmon4/name": "xe\n",
    "hwmon/hwmon4/temp2_input": "48000\n",
    "hwmon/hwmon4/temp2_label": "pkg\n",
    "hwmon/hwmon4/temp3_input": "50000\n",
    "hwmon/hwmon4/temp3_label": "vram\n",
    "hwmon/hwmon4/power1_max": "190000000\n",
    "hwmon/hwmon4/energy1_input": "982734123\n",
    "drm/card2/dev": "226:2\n",
    "drm/renderD129/dev": "226:129\n",
}


def make_device(root: Path, pci: str, files: dict[str, str], bridge: str = "0000:00:01.0") -> Path:
    """A PCI device as the kernel lays it out: the real directory under /sys/devices, a link to it
    from /sys/bus/pci/devices, and /sys/class/drm/cardN links to its DRM cards."""
    device = root / "devices" / "pci0000:00" / bridge / pci
    for relative, text in files.items():
        path = device / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    links = root / "bus" / "pci" / "devices"
    links.mkdir(parents=True, exist_ok=True)
    (links / pci).symlink_to(device)
    (root / "class" / "drm").mkdir(parents=True, exist_ok=True)
    for card in (device / "drm").glob("*"):
        (root / "class" / "drm" / card.name).symlink_to(card)
        if card.name.startswith("card"):
            (card / f"{card.name}-DP-1").mkdir()  # connectors live under the card
    return device


def source_for(root: Path, pci: str, files: dict[str, str]) -> HwmonSource:
    make_device(root, pci, files)
    source = HwmonSource.for_pci(pci, root)
    assert source is not None
    return source


# --------------------------------------------------------------------------------------------------
# sysfs


def test_amdgpu_discrete(tmp_path: Path) -> None:
    source = source_for(tmp_path, "0000:03:00.0", AMDGPU_DISCRETE)
    assert (source.has_temperature, source.has_power, source.has_clock, source.has_utilization) == (
        True,
        True,
        True,
        True,
    )
    assert source.temperature_c() == 47.0  # edge, not junction
    assert source.power_w() == 67.0
    assert source.clock_mhz() == 1834
    assert source.utilization_percent() == 23.0
    assert source.card is not None and source.card.name == "card1"
    assert source.device_facts() == DeviceFacts(
        source="sysfs", max_graphics_clock_mhz=2526, max_memory_clock_mhz=1249
    )


def test_amdgpu_apu_asleep(tmp_path: Path) -> None:
    source = source_for(tmp_path, "0000:c4:00.0", AMDGPU_APU)
    assert source.clock_mhz() == 19  # the starred deep-sleep level is the clock now
    assert source.power_w() == 4.0  # power1_input where power1_average is gone
    assert source.utilization_percent() == 0.0 and source.has_utilization
    facts = source.device_facts()
    assert (facts.max_graphics_clock_mhz, facts.max_memory_clock_mhz) == (2900, 2000)
    assert facts.memory_bus_width_bits is None and facts.bandwidth_gbps is None


def test_amdgpu_readings_follow_the_files(tmp_path: Path) -> None:
    device = make_device(tmp_path, "0000:03:00.0", AMDGPU_DISCRETE)
    source = HwmonSource.for_pci("0000:03:00.0", tmp_path)
    assert source is not None
    (device / "gpu_busy_percent").write_text("91\n")
    (device / "hwmon/hwmon3/freq1_input").unlink()
    (device / "pp_dpm_sclk").write_text("0: 500Mhz \n1: 1834Mhz \n2: 2526Mhz *\n")
    assert source.utilization_percent() == 91.0
    assert source.clock_mhz() == 2526


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0: 500Mhz \n1: 1834Mhz *\n2: 2526Mhz \n", ([500, 1834, 2526], 1834)),
        ("S: 19Mhz *\n0: 600Mhz \n1: 2900Mhz \n", ([600, 2900], 19)),
        ("0: 96Mhz \n1: 1249Mhz \n", ([96, 1249], None)),
        ("0: 800MHz *\n", ([800], 800)),
        ("garbage\n\n", None),
        ("", None),
    ],
)
def test_dpm_table(tmp_path: Path, text: str, expected: tuple[list[int], int | None] | None) -> None:
    path = tmp_path / "pp_dpm_sclk"
    path.write_text(text)
    assert dpm_levels(path) == expected


def test_i915_integrated_idle(tmp_path: Path) -> None:
    source = source_for(tmp_path, "0000:00:02.0", I915_INTEGRATED)
    assert source.hwmon is None
    assert source.clock_mhz() == 0 and source.has_clock  # RC6: a reading, not a missing one
    assert source.temperature_c() is None and not source.has_temperature
    assert source.power_w() is None and not source.has_power
    assert source.utilization_percent() is None and not source.has_utilization
    assert source.device_facts() == DeviceFacts(source="sysfs", max_graphics_clock_mhz=1400)


def test_i915_discrete_takes_the_hardware_maximum(tmp_path: Path) -> None:
    source = source_for(tmp_path, "0000:03:00.0", I915_DG2)
    assert source.clock_mhz() == 2000
    assert source.device_facts().max_graphics_clock_mhz == 2400  # RP0, not the user's 2050
    assert source.power_w() is None  # energy1_input only: no figure for power now
    assert source.temperature_c() is None


def test_xe_battlemage(tmp_path: Path) -> None:
    source = source_for(tmp_path, "0000:03:00.0", XE_BATTLEMAGE)
    assert source.clock_mhz() == 1700  # gt0 (graphics), not the idle media GT
    assert source.temperature_c() == 48.0
    assert source.power_w() is None
    assert source.utilization_percent() is None and not source.has_utilization
    assert source.device_facts() == DeviceFacts(source="sysfs", max_graphics_clock_mhz=2850)


@pytest.mark.parametrize(
    ("files", "remove", "maximum"),
    [
        (I915_DG2, "drm/card0/gt_RP0_freq_mhz", 2050),
        (XE_BATTLEMAGE, "tile0/gt0/freq0/rp0_freq", 2850),
    ],
)
def test_user_limit_without_hardware_maximum(
    tmp_path: Path, files: dict[str, str], remove: str, maximum: int
) -> None:
    source = source_for(tmp_path, "0000:03:00.0", {k: v for k, v in files.items() if k != remove})
    assert source.device_facts().max_graphics_clock_mhz == maximum


def test_device_is_matched_by_pci_address(tmp_path: Path) -> None:
    make_device(tmp_path, "0000:03:00.0", AMDGPU_DISCRETE)
    make_device(tmp_path, "0000:0a:00.0", XE_BATTLEMAGE, bridge="0000:00:1c.0")
    xe = HwmonSource.for_pci("0000:0A:00.0", tmp_path)  # the case the caller wrote it in
    assert xe is not None and xe.temperature_c() == 48.0
    amd = HwmonSource.for_pci("0000:03:00.0", tmp_path)
    assert amd is not None and amd.temperature_c() == 47.0
    assert HwmonSource.for_pci("0000:09:00.0", tmp_path) is None


def test_device_without_readings_is_no_source(tmp_path: Path) -> None:
    # An NVIDIA card under nvidia-drm: a DRM card, nothing this module reads.
    make_device(tmp_path, "0000:17:00.0", {"vendor": "0x10de\n", "drm/card0/dev": "226:0\n"})
    assert HwmonSource.for_pci("0000:17:00.0", tmp_path) is None
    assert find_source(None, "0000:17:00.0", "nvidia", tmp_path) is None


def test_unreadable_file_reads_none_for_that_figure_only(tmp_path: Path) -> None:
    device = make_device(tmp_path, "0000:03:00.0", AMDGPU_DISCRETE)
    source = HwmonSource.for_pci("0000:03:00.0", tmp_path)
    assert source is not None
    (device / "hwmon/hwmon3/temp1_input").write_text("garbage")
    (device / "gpu_busy_percent").unlink()
    (device / "gpu_busy_percent").mkdir()  # reading it raises IsADirectoryError, an OSError
    (device / "pp_dpm_mclk").unlink()
    assert source.temperature_c() is None and source.utilization_percent() is None
    assert source.power_w() == 67.0 and source.clock_mhz() == 1834
    assert source.device_facts() == DeviceFacts(source="sysfs", max_graphics_clock_mhz=2526)


# --------------------------------------------------------------------------------------------------
# NVML, through a fake pynvml


T = TypeVar("T")
H100_UUID = "GPU-5a1b3c4d-0000-1111-2222-333344445555"


class FakeNvml:
    """The calls and constants of nvidia-ml-py this package uses, answering as an H100 SXM does;
    any call named in `failing` raises NVMLError, as an unsupported query does."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    class NVMLError(Exception):
        pass

    def __init__(self, *failing: str) -> None:
        self.failing = set(failing)
        self.initialized = False

    def _answer(self, call: str, value: T) -> T:
        if call in self.failing:
            raise self.NVMLError(f"{call}: Not Supported")
        return value

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> object:
        if uuid != H100_UUID.encode():
            raise self.NVMLError("Not Found")
        return "handle-0"

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:
        assert (handle, sensor) == ("handle-0", self.NVML_TEMPERATURE_GPU)
        return self._answer("temperature", 34)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self._answer("power", 71250)

    def nvmlDeviceGetClockInfo(self, handle: object, clock: int) -> int:
        assert clock == self.NVML_CLOCK_GRAPHICS
        return self._answer("clock", 345)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Any:
        rates = type("c_nvmlUtilization_t", (), {"gpu": 87, "memory": 12})()
        return self._answer("utilization", rates)

    def nvmlDeviceGetCudaComputeCapability(self, handle: object) -> tuple[int, int]:
        return self._answer("capability", (9, 0))

    def nvmlDeviceGetMaxClockInfo(self, handle: object, clock: int) -> int:
        return self._answer(f"max{clock}", {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[clock])

    def nvmlDeviceGetMemoryBusWidth(self, handle: object) -> int:
        return self._answer("bus", 5120)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a FakeNvml as `pynvml` and a fresh process-wide NVML state; returns a function that
    sets which calls fail."""

    def install(*failing: str) -> FakeNvml:
        fake = FakeNvml(*failing)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(nvml_module, "_nvml", nvml_module._Nvml())
        return fake

    return install


def test_nvml_readings_and_facts(fake_nvml: Any) -> None:
    fake = fake_nvml()
    source = find_source(H100_UUID, "0000:17:00.0", "nvidia")
    assert isinstance(source, NvmlSource) and fake.initialized
    assert (source.has_temperature, source.has_power, source.has_clock, source.has_utilization) == (
        True,
        True,
        True,
        True,
    )
    assert source.temperature_c() == 34.0
    assert source.power_w() == 71.25
    assert source.clock_mhz() == 345
    assert source.utilization_percent() == 87.0
    assert source.device_facts(compute_units=132) == DeviceFacts(
        source="nvml",
        compute_capability="9.0",
        max_graphics_clock_mhz=1980,
        max_memory_clock_mhz=2619,
        memory_bus_width_bits=5120,
        bandwidth_gbps=3352.3,  # H100 SXM's published 3.35 TB/s
        tensor_core_count=528,
    )
    assert source.device_facts().tensor_core_count is None  # NVML alone has no SM count


@pytest.mark.parametrize(
    ("failing", "missing"),
    [
        ("capability", {"compute_capability", "tensor_core_count"}),
        ("max1", {"max_graphics_clock_mhz"}),
        ("max2", {"max_memory_clock_mhz", "bandwidth_gbps"}),
        ("bus", {"memory_bus_width_bits", "bandwidth_gbps"}),
    ],
)
def test_nvml_error_loses_only_its_fact(fake_nvml: Any, failing: str, missing: set[str]) -> None:
    fake_nvml(failing)
    source = NvmlSource.for_uuid(H100_UUID)
    assert source is not None
    facts = source.device_facts(compute_units=132)
    unknown = {name for name, value in vars(facts).items() if value is None}
    assert unknown == missing


@pytest.mark.parametrize("failing", ["temperature", "power", "clock", "utilization"])
def test_nvml_error_loses_only_its_reading(fake_nvml: Any, failing: str) -> None:
    fake_nvml(failing)
    source = NvmlSource.for_uuid(H100_UUID)
    assert source is not None
    has = {
        "temperature": source.has_temperature,
        "power": source.has_power,
        "clock": source.has_clock,
        "utilization": source.has_utilization,
    }
    assert {name for name, known in has.items() if not known} == {failing}
    assert source.utilization_percent() == (None if failing == "utilization" else 87.0)
    assert source.device_facts().compute_capability == "9.0"


def test_nvml_binding_without_a_call(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml()
    monkeypatch.delattr(FakeNvml, "nvmlDeviceGetMemoryBusWidth")  # an older nvidia-ml-py
    source = NvmlSource.for_uuid(H100_UUID)
    assert source is not None
    facts = source.device_facts()
    assert facts.memory_bus_width_bits is None and facts.max_memory_clock_mhz == 2619


def test_nvml_without_the_device_falls_back_to_sysfs(fake_nvml: Any, tmp_path: Path) -> None:
    fake_nvml()
    make_device(tmp_path, "0000:03:00.0", AMDGPU_DISCRETE)
    source = find_source("GPU-00000000-0000-0000-0000-000000000000", "0000:03:00.0", "nvidia", tmp_path)
    assert isinstance(source, HwmonSource)
    assert find_source("GPU-00000000-0000-0000-0000-000000000000", None, "nvidia", tmp_path) is None


def test_no_nvml_means_no_nvidia_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    monkeypatch.setattr(nvml_module, "_nvml", nvml_module._Nvml())
    assert find_source(H100_UUID, None, "nvidia", tmp_path) is None
    assert nvml_module._nvml.error is not None and "pynvml" in nvml_module._nvml.error


def test_amd_device_never_asks_nvml(fake_nvml: Any, tmp_path: Path) -> None:
    fake = fake_nvml()
    make_device(tmp_path, "0000:03:00.0", AMDGPU_DISCRETE)
    assert isinstance(find_source(H100_UUID, "0000:03:00.0", "amd", tmp_path), HwmonSource)
    assert not fake.initialized


# --------------------------------------------------------------------------------------------------
# Published figures


@pytest.mark.parametrize(
    ("capability", "sms", "tensor_cores"),
    [
        ("7.0", 80, 640),  # Tesla V100
        ("7.5", 72, 576),  # TU102 (Titan RTX)
        ("8.0", 108, 432),  # A100
        ("8.9", 128, 512),  # RTX 4090
        ("9.0", 132, 528),  # H100 SXM5 / H200
        ("12.0", 170, 680),  # RTX 5090
        ("6.1", 28, 0),  # Pascal: no tensor cores
        ("10.0", 148, None),  # no published per-SM figure
        (None, 132, None),
        ("9.0", None, None),
    ],
)
def test_tensor_core_count(capability: str | None, sms: int | None, tensor_cores: int | None) -> None:
    assert nvidia_tensor_core_count(capability, sms) == tensor_cores


@pytest.mark.parametrize(
    ("memory_clock", "bus_width", "gbps"),
    [
        (2619, 5120, 3352.3),  # H100 SXM: 3.35 TB/s published
        (3201, 6016, 4814.3),  # H200 (NVML's figures on the test machine): 4.8 TB/s published
        (10501, 384, 1008.1),  # RTX 4090 (GDDR6X): 1008 GB/s published
        (7000, 256, 448.0),  # RTX 2080 (GDDR6): 448 GB/s published
        (None, 5120, None),
        (2619, None, None),
        (0, 5120, None),
    ],
)
def test_peak_bandwidth(memory_clock: int | None, bus_width: int | None, gbps: float | None) -> None:
    assert peak_bandwidth_gbps(memory_clock, bus_width) == gbps
