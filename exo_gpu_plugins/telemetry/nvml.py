"""NVIDIA devices through NVML (the optional `nvidia-ml-py` package), matched by GPU UUID.

Every figure is its own NVML call, guarded on its own: an `NVMLError` for one (a query the card or
driver does not support) makes that figure `None` and leaves the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from exo_gpu_plugins.telemetry.source import DeviceFacts

__all__ = ["NvmlSource", "nvidia_tensor_core_count", "peak_bandwidth_gbps"]

log = logging.getLogger(__name__)

# Tensor cores per SM by CUDA compute capability, from NVIDIA's architecture whitepapers: Volta
# (V100: 640 on 80 SMs; Xavier) and Turing (TU102: 576 on 72 SMs) have 8 per SM; Ampere (A100: 432
# on 108 SMs; GA10x; Orin), Ada (AD102: 576 on 144 SMs), Hopper (H100 SXM5: 528 on 132 SMs) and
# consumer Blackwell (RTX 5090: 680 on 170 SMs) have 4. Data-centre Blackwell (10.x) and later parts
# have no published per-SM figure here, so they get None. Before Volta (below 7.0) there are none.
_TENSOR_CORES_PER_SM = {
    "7.0": 8,
    "7.2": 8,
    "7.5": 8,
    "8.0": 4,
    "8.6": 4,
    "8.7": 4,
    "8.9": 4,
    "9.0": 4,
    "12.0": 4,
}


def nvidia_tensor_core_count(compute_capability: str | None, sm_count: int | None) -> int | None:
    """Tensor cores of an NVIDIA device: the per-SM figure for its architecture times its SMs, or
    None where either is unknown (see the table's sources above)."""
    if compute_capability is None or sm_count is None:
        return None
    major, _, _ = compute_capability.partition(".")
    if major.isdigit() and int(major) < 7:
        return 0
    per_sm = _TENSOR_CORES_PER_SM.get(compute_capability)
    return None if per_sm is None else per_sm * sm_count


def peak_bandwidth_gbps(memory_clock_mhz: int | None, bus_width_bits: int | None) -> float | None:
    """Peak memory bandwidth in GB/s from NVML's maximum memory clock and bus width.

    Two transfers per clock as NVML states the clock: the H100 SXM's 2619 MHz on 5120 bits gives
    2 * 2619e6 * 5120 / 8 / 1e9 = 3352 GB/s, its published 3.35 TB/s; the H200's 3201 MHz on 6016
    bits (NVML's figures on the test machine) 4814 GB/s, its published 4.8 TB/s; an RTX 4090's
    10501 MHz (GDDR6X) on 384 bits 1008 GB/s, its published 1008 GB/s.
    """
    if not memory_clock_mhz or not bus_width_bits:
        return None
    return round(2 * memory_clock_mhz * 1e6 * bus_width_bits / 8 / 1e9, 1)


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
    """An NVIDIA device's readings and facts through NVML."""

    handle: Any
    nvml: Any
    has_temperature: bool = True
    has_power: bool = True
    has_clock: bool = True
    has_utilization: bool = True

    @classmethod
    def for_uuid(cls, uuid: str) -> NvmlSource | None:
        nvml = _nvml.get()
        if nvml is None:
            return None
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid.encode())
        except nvml.NVMLError as exc:  # not found, or not a UUID NVML accepts
            log.debug("NVML has no device %s: %s", uuid, exc)
            return None
        source = cls(handle, nvml)
        source.has_temperature = source.temperature_c() is not None
        source.has_power = source.power_w() is not None
        source.has_clock = source.clock_mhz() is not None
        source.has_utilization = source.utilization_percent() is not None
        return source

    def _read(self, call: str, *args: Any) -> Any:
        """One NVML query, or None when NVML refuses it (or this nvidia-ml-py lacks the call)."""
        try:
            return getattr(self.nvml, call)(self.handle, *args)
        except (self.nvml.NVMLError, AttributeError) as exc:
            log.debug("NVML %s: %s", call, exc)
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

    def utilization_percent(self) -> float | None:
        """Percent of the last sample period (1/6 s to 1 s, by card) in which a kernel ran."""
        rates = self._read("nvmlDeviceGetUtilizationRates")
        return None if rates is None else float(rates.gpu)

    def memory(self) -> tuple[int, int] | None:
        """(total, free) bytes as nvidia-smi shows them."""
        info = self._read("nvmlDeviceGetMemoryInfo")
        return None if info is None else (int(info.total), int(info.free))

    def device_facts(self, compute_units: int | None = None) -> DeviceFacts:
        """Compute capability ("9.0"), maximum SM and memory clocks, bus width and the peak bandwidth
        they give; tensor cores when the caller passes the SM count (NVML does not report it)."""
        capability = self._read("nvmlDeviceGetCudaComputeCapability")
        compute_capability = None if capability is None else f"{capability[0]}.{capability[1]}"
        sm_clock = self._read("nvmlDeviceGetMaxClockInfo", self.nvml.NVML_CLOCK_SM)
        memory_clock = self._read("nvmlDeviceGetMaxClockInfo", self.nvml.NVML_CLOCK_MEM)
        bus_width = self._read("nvmlDeviceGetMemoryBusWidth")
        # Some virtual GPUs answer 0 for these: not a figure, so None.
        max_graphics = int(sm_clock) if sm_clock else None
        max_memory = int(memory_clock) if memory_clock else None
        bus_bits = int(bus_width) if bus_width else None
        return DeviceFacts(
            source="nvml",
            compute_capability=compute_capability,
            max_graphics_clock_mhz=max_graphics,
            max_memory_clock_mhz=max_memory,
            memory_bus_width_bits=bus_bits,
            bandwidth_gbps=peak_bandwidth_gbps(max_memory, bus_bits),
            tensor_core_count=nvidia_tensor_core_count(compute_capability, compute_units),
        )
