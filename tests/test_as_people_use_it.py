"""Issue 24: the project as people use it. Each numbered point of the issue is a test here (3 and 6
belong to other issues); the CLI ones run the installed `exo-gpu` in a fresh process, with this
checkout first on its path, and check the exit status and how many lines stderr got."""

from __future__ import annotations

import datetime
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.models import DeviceType, GPUDevice, MemoryReport

from .conftest import EMPTY_CONFIG
from .test_cli_load import write_safetensors

ROOT = Path(__file__).resolve().parents[1]
# The installed command: beside this interpreter (a venv), else on PATH (pip --target installs).
EXO_GPU = (
    Path(sys.executable).parent / "exo-gpu"
    if (Path(sys.executable).parent / "exo-gpu").exists()
    else Path(shutil.which("exo-gpu") or "exo-gpu")
)
# Children see this checkout first, then whatever the suite itself was given.
CHILD_PATH = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])


def exo_gpu(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The installed `exo-gpu ARGV` in a fresh process: the user's environment without EXO_*
    settings, this checkout first on the path, plus `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    environ["EXO_CONFIG_FILE"] = EMPTY_CONFIG
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    return subprocess.run(
        [str(EXO_GPU), *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )


def vulkan_runs() -> bool:
    from exo_gpu_plugins.registry import get_registry

    entry = get_registry().backends.get("vulkan")
    return entry is not None and entry.unavailable_reason() is None


needs_vulkan = pytest.mark.skipif(not vulkan_runs(), reason="no Vulkan device")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_installed_command_runs_this_checkout() -> None:
    result = exo_gpu("--version", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["version"]
    code = "import exo_gpu_plugins, sys; print(exo_gpu_plugins.__file__)"
    path = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": CHILD_PATH},
        check=True,
    ).stdout
    assert path.strip().startswith(str(ROOT))


# --------------------------------------------------------------------------------------------------
# 1. Strict configuration: no silent fallback


@needs_vulkan
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EXO_VULKAN_TRANSFER": "bogus"}, ["EXO_VULKAN_TRANSFER", "'bogus'", "staging"]),
        ({"EXO_VULKAN_TUNE": "nosuch=1"}, ["EXO_VULKAN_TUNE", "nosuch", "known keys: slot"]),
        ({"EXO_VULKAN_TUNE": "garbage"}, ["EXO_VULKAN_TUNE", "garbage", "key=value"]),
        ({"EXO_VULKAN_TUNE": "hugepages=yes"}, ["EXO_VULKAN_TUNE", "hugepages", "0 or 1"]),
        ({"EXO_VULKAN_VALIDATION": "maybe"}, ["EXO_VULKAN_VALIDATION", "'maybe'", "true"]),
    ],
)
def test_a_vulkan_setting_it_does_not_know_is_an_error_not_host_memory(
    env: dict[str, str], named: list[str]
) -> None:
    result = exo_gpu("roundtrip", "--size", "1M", env=env)
    line = one_error_line(result)
    assert all(word in line for word in named), line
    assert "host:0" not in result.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EXO_GPU_STRICT_PLUGINS": "2"}, ["EXO_GPU_STRICT_PLUGINS", "'2'", "false"]),
        ({"EXO_GPU_DISABLED_PLUGINS": "vulcan"}, ["EXO_GPU_DISABLED_PLUGINS", "vulcan", "installed"]),
        ({"EXO_GPU_LOAD_PLUGINS": "vulcan"}, ["EXO_GPU_LOAD_PLUGINS", "vulcan", "installed"]),
        ({"EXO_CONFIG_FILE": "/nonexistent/config.toml"}, ["EXO_CONFIG_FILE", "names no file"]),
    ],
)
def test_a_core_setting_it_does_not_know_is_an_error(env: dict[str, str], named: list[str]) -> None:
    line = one_error_line(exo_gpu("roundtrip", "--size", "1M", env=env))
    assert all(word in line for word in named), line


def test_a_misspelt_config_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nbackned = "host"\n')
    line = one_error_line(exo_gpu("devices", env={"EXO_CONFIG_FILE": str(config)}))
    assert str(config) in line and "gpu.backned" in line and "known keys: backend" in line


@needs_vulkan
def test_no_driver_falls_back_with_one_warning_and_an_explicit_backend_never() -> None:
    no_driver = {"VK_ICD_FILENAMES": "/nonexistent/icd.json", "VK_DRIVER_FILES": "/nonexistent.json"}
    result = exo_gpu("roundtrip", "--size", "1M", env=no_driver)
    assert result.returncode == 0 and "host:0" in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and "falling back to host memory: vulkan:" in warnings[0]
    devices = exo_gpu("devices", env=no_driver)
    assert devices.returncode == 0 and len(devices.stderr.splitlines()) == 1
    explicit = exo_gpu("roundtrip", "--size", "1M", env={**no_driver, "EXO_GPU_BACKEND": "vulkan"})
    assert "cannot run here" in one_error_line(explicit)


# --------------------------------------------------------------------------------------------------
# 2. The machine's view


def _device(**fields: Any) -> GPUDevice:
    base: dict[str, Any] = {
        "device_id": "vulkan:0",
        "backend": "vulkan",
        "backend_name": "vulkan",
        "name": "card",
        "vendor": "amd",
        "device_type": DeviceType.DISCRETE,
        "memory_bytes": 16 << 30,
        "pci_bus_id": "0000:03:00.0",
    }
    return GPUDevice(**{**base, **fields})


def _report(source: str = "VK_EXT_memory_budget", used: int = 1 << 30, free: int = 10 << 30) -> Any:
    total = 16 << 30
    return MemoryReport(
        device_id="vulkan:0",
        total_bytes=total,
        used_bytes=used,
        available_bytes=free,
        reserved_bytes=total - used - free,
        source=source,
    )


def _fake_machine(
    tmp_path: Path, fdinfo: dict[int, list[str]], vram_used: int | None
) -> tuple[Path, Path]:
    """A /sys with one amdgpu card at 0000:03:00.0 and a /proc whose processes hold DRM files."""
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    card = sys_root / "bus" / "pci" / "devices" / "0000:03:00.0"
    (card / "drm" / "card1").mkdir(parents=True)
    if vram_used is not None:
        (card / "mem_info_vram_used").write_text(f"{vram_used}\n")
    for pid, infos in fdinfo.items():
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "fdinfo").mkdir()
        (proc / str(pid) / "comm").write_text(f"proc{pid}\n")
        for fd, text in enumerate(infos, start=3):
            (proc / str(pid) / "fd" / str(fd)).symlink_to("/dev/dri/renderD128")
            (proc / str(pid) / "fdinfo" / str(fd)).write_text(text)
        (proc / str(pid) / "fd" / "1").symlink_to("/dev/null")
        (proc / str(pid) / "fdinfo" / "1").write_text("pos: 0\n")
    return sys_root, proc


AMD_CLIENT = (
    "drm-driver: amdgpu\ndrm-pdev: 0000:03:00.0\ndrm-client-id: {id}\ndrm-memory-vram: {kib} KiB\n"
)
XE_CLIENT = (
    "drm-driver: xe\ndrm-pdev: 0000:03:00.0\ndrm-client-id: {id}\n"
    "drm-total-vram0: {kib} KiB\ndrm-resident-vram0: {kib} KiB\ndrm-total-system: 4 KiB\n"
)


def test_whole_device_use_and_processes_from_sysfs_and_fdinfo(tmp_path: Path) -> None:
    from exo_gpu_plugins.machine import device_usage

    sys_root, proc = _fake_machine(
        tmp_path,
        {
            100: [AMD_CLIENT.format(id=1, kib=1 << 20), AMD_CLIENT.format(id=1, kib=1 << 20)],
            200: [XE_CLIENT.format(id=2, kib=2048)],
            300: ["drm-driver: amdgpu\ndrm-pdev: 0000:09:00.0\ndrm-client-id: 3\n"],
        },
        vram_used=3 << 30,
    )
    usage = device_usage(_device(), _report(), sysfs_root=sys_root, proc_root=proc)
    assert usage.device_used_bytes == 3 << 30 and usage.device_used_source == "sysfs:mem_info_vram_used"
    assert usage.processes_source == "drm-fdinfo" and usage.processes is not None
    held = {p.pid: (p.name, p.used_bytes) for p in usage.processes}
    # One client seen through two descriptors counts once; another device's client is left out.
    assert held == {100: ("proc100", 1 << 30), 200: ("proc200", 2 << 20)}
    # Without mem_info_vram_used (i915, xe), every process readable: the clients' sum.
    (sys_root / "bus/pci/devices/0000:03:00.0/mem_info_vram_used").unlink()
    summed = device_usage(
        _device(), _report("heap-size-minus-own-allocations"), sysfs_root=sys_root, proc_root=proc
    )
    assert summed.device_used_bytes == (1 << 30) + (2 << 20)
    assert summed.device_used_source == "drm-fdinfo (sum over processes)"


def test_no_drm_client_is_no_process_and_no_source_says_so(tmp_path: Path) -> None:
    from exo_gpu_plugins.machine import device_usage

    sys_root, proc = _fake_machine(tmp_path, {}, vram_used=None)
    idle = device_usage(_device(), _report(), sysfs_root=sys_root, proc_root=proc)
    assert idle.processes == () and idle.processes_note is None
    # The budget accounts for every process: what is not available is in use.
    assert idle.device_used_bytes == (16 << 30) - (10 << 30)
    assert idle.device_used_source == "VK_EXT_memory_budget"
    cpu = _device(device_type=DeviceType.CPU, vendor="mesa", pci_bus_id=None)
    blind = device_usage(
        cpu, _report("heap-size-minus-own-allocations"), sysfs_root=sys_root, proc_root=proc
    )
    assert blind.device_used_bytes is None and blind.processes is None
    assert blind.device_used_note and "no memory budget" in blind.device_used_note
    assert blind.processes_note and "cannot tell which processes" in blind.processes_note


def test_nvml_gives_used_memory_and_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from exo_gpu_plugins import machine
    from exo_gpu_plugins.telemetry.nvml import NvmlSource

    class Error(Exception):
        pass

    class Info:
        used = 5 << 30

    class Process:
        def __init__(self, pid: int, used: int | None) -> None:
            self.pid, self.usedGpuMemory = pid, used

    class FakeNvml:
        NVMLError = Error
        nvmlMemory_v2 = 2

        def nvmlDeviceGetMemoryInfo(self, handle: object, version: int = 1) -> Info:
            return Info()

        def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[Process]:
            return [Process(os.getpid(), 4 << 30)]

        def nvmlDeviceGetGraphicsRunningProcesses(self, handle: object) -> list[Process]:
            return [Process(os.getpid(), None), Process(999_999_999, None)]

    source = NvmlSource(object(), FakeNvml())
    monkeypatch.setattr(machine, "_nvml_source", lambda device: source)
    device = _device(vendor="nvidia", uuid="GPU-1", pci_bus_id=None)
    usage = machine.device_usage(device, _report(), proc_root=tmp_path)
    assert usage.device_used_bytes == 5 << 30 and usage.device_used_source == "nvml"
    assert usage.processes is not None
    assert [(p.pid, p.used_bytes) for p in usage.processes] == [
        (os.getpid(), 4 << 30),
        (999_999_999, None),
    ]
    assert usage.processes_note and "other pid namespaces" in usage.processes_note


# Run by a fresh interpreter (subprocess), so asyncio.run: that process's one event loop.
HOLDER = """
import asyncio, sys
from exo_gpu_plugins.registry import get_registry

async def main():
    backend = get_registry().entry("vulkan").load_class()()
    await backend.initialize()
    await backend.allocate("vulkan:0", 1 << 30)
    print("holding", flush=True)
    sys.stdin.read()
    await backend.shutdown()

asyncio.run(main())
"""


@needs_vulkan
def test_ps_and_devices_see_another_process_or_say_they_cannot() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": CHILD_PATH},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("holding")
        # One observing process reads both views, as `devices` and `ps` render them (a fresh
        # interpreter, so asyncio.run).
        code = (
            "import asyncio, json, dataclasses; from exo_gpu_plugins.machine import machine_state\n"
            "states = asyncio.run(machine_state(['vulkan']))\n"
            "print(json.dumps([dataclasses.asdict(s.usage)"
            " | {'report': s.memory.model_dump(mode='json')} for s in states]))"
        )
        seen = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": CHILD_PATH},
        )
        usage = json.loads(seen.stdout)[0]
        devices = exo_gpu("devices", "--backend", "vulkan")
        ps = exo_gpu("ps", "--backend", "vulkan")
    finally:
        holder.kill()
        holder.wait()
    assert devices.returncode == 0 and ps.returncode == 0
    if usage["device_used_source"] is not None:
        assert usage["device_used_bytes"] >= 1 << 30  # the other process's gigabyte is in it
    else:
        assert usage["device_used_bytes"] is None and "unknown" in usage["device_used_note"]
        assert "vulkan:0: the whole device's use is unknown" in devices.stdout
    if usage["processes"] is not None:
        assert holder.pid in [p["pid"] for p in usage["processes"]]
        assert str(holder.pid) in ps.stdout
    else:
        assert "cannot tell which processes" in usage["processes_note"]
        assert "vulkan:0: the system cannot tell which processes use this device" in ps.stdout
    assert usage["report"]["used_bytes"] == 0  # this process's own figure stays its own


@needs_vulkan
def test_machine_view_benchmark_runs_and_kills_its_holder() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "machine_view.py"), "--size", "64M", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": CHILD_PATH},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    row = data["rows"][0]
    assert row["device_id"] == "vulkan:0"
    if shutil.which("nvidia-smi") is None:
        assert "nvidia-smi is not installed here" in row["note"]
    if row["holder_listed"] == "cannot tell":
        assert "cannot tell which processes" in row["note"]
    with pytest.raises(ProcessLookupError):
        os.kill(data["holder_pid"], 0)


def test_machine_view_comparison() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import machine_view
    finally:
        sys.path.pop(0)
    devices = [
        {
            "device_id": "vulkan:0",
            "name": "H100",
            "uuid": "GPU-1",
            "device_used_bytes": 101 << 20,
            "device_used_source": "nvml",
        }
    ]
    processes = [
        {
            "device_id": "vulkan:0",
            "processes": [{"pid": 7, "used_bytes": 64 << 20}],
            "processes_note": None,
        }
    ]
    (row,) = machine_view.compare(devices, processes, {"GPU-1": 100 << 20}, None, 7)
    assert row.difference_percent == 1.0 and row.holder_listed == "yes" and row.note == ""
    (missing,) = machine_view.compare(devices, processes, None, "nvidia-smi is not installed here", 8)
    assert missing.holder_listed == "no" and missing.smi_used_bytes is None
    assert "nvidia-smi is not installed here" in missing.note


def test_monitor_and_info_show_the_whole_device() -> None:
    monitor = exo_gpu("monitor", "host:0", "--count", "1", "--json")
    row = json.loads(monitor.stdout)
    assert row["device_used_bytes"] > 0 and row["device_used_source"] == "os:/proc/meminfo"
    info = exo_gpu("info", "host:0", "--json")
    assert json.loads(info.stdout)["machine"]["processes_note"].startswith("host memory")


# --------------------------------------------------------------------------------------------------
# 4. check's advice fits the install, the testing extra holds what the kit needs, skips say why


def test_testing_extra_holds_numpy() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    testing = re.search(r"^testing = \[(.*)\]$", text, re.MULTILINE)
    assert testing is not None and '"numpy"' in testing.group(1)


def test_check_advice_fits_an_install_from_a_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from exo_gpu_plugins.testing import check

    class Wheel:
        def read_text(self, name: str) -> str | None:
            return None  # no direct_url.json: installed from an index or a wheel

    monkeypatch.setattr(metadata, "distribution", lambda name: Wheel())
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    report = check.run_check("host")
    assert report.exit_code == 2 and report.error is not None
    line = f"exo-gpu: error: {report.error}"
    assert line.startswith("exo-gpu: error: ") and "pip install 'exo-gpu-plugins[testing]'" in line
    assert "checkout" not in line


def test_a_skipped_check_says_why_in_the_table() -> None:
    from exo_gpu_plugins.cli.check import show
    from exo_gpu_plugins.cli.render import Screen
    from exo_gpu_plugins.testing.check import CheckReport, KitResult, TestOutcome, _summarize

    tests = [TestOutcome("t::a", "a", "copy to device", "skipped", "could not import 'numpy'")]
    result = KitResult("host", tests, _summarize(tests, ["copy to device"]), 0, 0.1)
    out = io.StringIO()
    show(CheckReport("host", 0, result), Screen(out, io.StringIO()))
    assert "skipped: could not import 'numpy'" in out.getvalue()


# --------------------------------------------------------------------------------------------------
# 5. One line for every error


@pytest.mark.parametrize(
    "argv",
    [
        ["roundtrip", "--size", "-5"],
        ["check", "host", "--examples", "0"],
        ["devices", "--no-such-option"],
        ["nosuch"],
    ],
)
def test_argparse_errors_are_one_line(argv: list[str]) -> None:
    line = one_error_line(exo_gpu(*argv))
    assert line.startswith("exo-gpu: error: ") and "usage:" not in line


@pytest.mark.parametrize("layers", ["3:1", "2:2"])
def test_an_empty_layer_range_is_one_line(tmp_path: Path, layers: str) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"model.layers.0.mlp.weight": b"\x01" * 64})
    line = one_error_line(exo_gpu("load", str(path), "--layers", layers, "--device", "host:0"))
    assert f"--layers {layers}" in line and "end must be > start" in line and "http" not in line


def test_layers_may_leave_out_the_start(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {f"model.layers.{i}.mlp.weight": bytes([i]) * 64 for i in range(4)})
    result = exo_gpu("load", str(path), "--layers", ":2", "--device", "host:0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tensors"] == 2


def test_json_errors_are_a_json_object_on_stderr() -> None:
    for argv in (["roundtrip", "--size", "-5", "--json"], ["info", "nosuch:0", "--json"]):
        result = exo_gpu(*argv)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
        error = json.loads(result.stderr)
        assert error["exit_status"] == 2 and error["error"] and error["type"]


def test_debug_adds_the_traceback_and_keeps_the_status() -> None:
    result = exo_gpu("--debug", "info", "nosuch:0")
    assert result.returncode == 2 and "Traceback" in result.stderr


# --------------------------------------------------------------------------------------------------
# 7. roundtrip: progress from the first byte, memory under 2.2 times the size


def test_roundtrip_peak_memory_stays_under_twice_the_size() -> None:
    size = 512 << 20
    code = (
        "import resource, subprocess, sys\n"
        f"argv = [{str(EXO_GPU)!r}, 'roundtrip', '--backend', 'host', '--size', '512M']\n"
        "subprocess.run(argv, check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": CHILD_PATH, "EXO_CONFIG_FILE": EMPTY_CONFIG},
    )
    peak = int(result.stdout.splitlines()[-1])
    assert "bytes identical" in result.stdout
    assert peak < 2.2 * size, f"peak {peak / (1 << 20):.0f} MiB for a {size >> 20} MiB round trip"


def test_roundtrip_progress_starts_before_the_first_random_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    from exo_gpu_plugins.cli import main
    from exo_gpu_plugins.cli import roundtrip as command
    from exo_gpu_plugins.cli.render import Screen

    events: list[str] = []
    original_progress = Screen.progress
    original_urandom = os.urandom

    def progress(self: Screen, total: int, description: str) -> Any:
        events.append("progress")
        return original_progress(self, total, description)

    def urandom(count: int) -> bytes:
        events.append("random")
        return original_urandom(count)

    monkeypatch.setattr(Screen, "progress", progress)
    monkeypatch.setattr(command.os, "urandom", urandom)
    assert (
        main(["roundtrip", "--device", "host:0", "--size", "1M"], out=io.StringIO(), err=io.StringIO())
        == 0
    )
    assert events[:2] == ["progress", "random"]


# --------------------------------------------------------------------------------------------------
# 8. Whole device names


def test_devices_prints_whole_names() -> None:
    listed = json.loads(exo_gpu("devices", "--json").stdout)
    table = exo_gpu("devices").stdout
    for device in listed:
        assert device["name"] in table
    assert "…" not in table


# --------------------------------------------------------------------------------------------------
# 9. Duplicate warnings, make wheels' noise


def test_building_the_vulkan_sdist_prints_no_error(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "maturin").exists():
        pytest.skip("maturin is not installed in this environment")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "wheels.sh"), "--vulkan-sdist", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "VENV": str(Path(sys.executable).parent.parent)},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("exo_gpu_vulkan-*.tar.gz"))
    assert "error" not in result.stderr.lower()


# --------------------------------------------------------------------------------------------------
# 10. Help without a command; python -m exo_gpu_plugins


def test_no_command_prints_the_help() -> None:
    result = exo_gpu()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: exo-gpu") and "roundtrip" in result.stdout


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exo_gpu_plugins", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": CHILD_PATH},
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("exo-gpu ")


# --------------------------------------------------------------------------------------------------
# 11. Names and defaults


async def test_copy_from_device_defaults_to_the_rest_of_the_allocation() -> None:
    from exo_gpu_plugins.host.backend import HostBackend

    async with HostBackend() as backend:
        handle = await backend.allocate("host:0", 4096)
        await backend.copy_to_device(bytes(range(256)) * 16, handle)
        assert await backend.copy_from_device(handle) == bytes(range(256)) * 16
        assert await backend.copy_from_device(handle, 4000) == (bytes(range(256)) * 16)[4000:]
        assert await backend.copy_from_device(handle, 4096) == b""
        assert await backend.copy_from_device(handle, offset_bytes=10, size_bytes=2) == bytes([10, 11])


def test_one_verb_for_freeing() -> None:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.weights import LoadedWeights

    assert inspect.iscoroutinefunction(LoadedWeights.deallocate)
    assert list(inspect.signature(LoadedWeights.deallocate).parameters) == ["self", "backend"]
    assert "deallocate" in (LoadedWeights.free.__doc__ or "")  # the older name, an alias
    parameters = inspect.signature(GPUBackend.copy_from_device).parameters
    assert parameters["offset_bytes"].default == 0 and parameters["size_bytes"].default is None


# --------------------------------------------------------------------------------------------------
# 12. Small ones


def test_one_tensor_is_singular(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"lm_head.weight": b"\x01" * 64})
    result = exo_gpu("load", str(path), "--device", "host:0")
    assert result.returncode == 0 and "loaded 1 tensor, " in result.stdout
    assert "1 file onto" in result.stdout and "1 allocation" in result.stdout


def test_trailing_bytes_without_tensors_read_plainly(tmp_path: Path) -> None:
    from exo_gpu_plugins.errors import CheckpointError
    from exo_gpu_plugins.weights.format import read_header

    path = tmp_path / "model.safetensors"
    write_safetensors(path, {})
    with path.open("ab") as file:
        file.write(b"\x00" * 80)
    with pytest.raises(CheckpointError) as caught:
        read_header(path)
    message = str(caught.value)
    assert "80 bytes at the end of the file belong to no tensor (the header lists none)" in message
    assert "and no tensor belong" not in message


def test_bench_device_copy_follows_the_sizes_and_peers_print_as_text() -> None:
    result = exo_gpu("bench", "--backend", "host", "--sizes", "4K", "1M", "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr
    labels = [figure["label"] for figure in json.loads(result.stdout)["figures"]]
    assert "device -> device, 1 MiB" in labels and not any("1 GiB" in label for label in labels)
    text = exo_gpu("bench", "--backend", "host", "--sizes", "4K", "--repeats", "1", "--no-peers")
    assert "peers: not measured" in text.stdout and "{" not in text.stdout


def test_check_errors_use_the_cli_prefix() -> None:
    line = one_error_line(exo_gpu("check", "nosuch"))
    assert line.startswith("exo-gpu: error: ")


def test_monitor_json_times_have_a_date() -> None:
    result = exo_gpu("monitor", "host:0", "--count", "1", "--json")
    stamp = datetime.datetime.fromisoformat(json.loads(result.stdout)["time"])
    assert stamp.tzinfo is not None and stamp.date() == datetime.date.today()


def test_version_takes_json() -> None:
    from exo_gpu_plugins import __version__

    result = exo_gpu("--version", "--json")
    assert json.loads(result.stdout) == {"version": __version__}


# --------------------------------------------------------------------------------------------------
# 13. Docs; the README's CLI section word for word


def test_docs_name_what_exists() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert "EXO_VULKAN_TRANSFER=auto\\|mapped\\|staging\\|import" in configuration
    assert "../.venv/bin/maturin" in (ROOT / "docs" / "gpu-testing.md").read_text()
    assert "(docs/reliability.md)" in (ROOT / "README.md").read_text()


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The CLI") : readme.index("## Documentation")]
    return re.findall(r"^\| `exo-gpu ([^`]*)` \|", section, re.MULTILINE)


def _runnable(command: str, checkpoint: Path) -> list[str]:
    """A README command with its placeholders filled in and its long runs kept short."""
    words = command.replace("[", "").replace("]", "").replace("...", "").split()
    values = {"ID": "host:0", "N": "1M", "DEVICE": "host:0", "PATH": str(checkpoint), "BACKEND": "host"}
    values["START:END"] = "0:1"
    argv = [values.get(word, word) for word in words]
    if argv[0] == "bench":
        argv = ["bench", "--backend", "host", "--sizes", "4K", "64K", "--repeats", "1", "--no-peers"]
    if argv[0] == "monitor":
        argv += ["--count", "1"]
    if argv[0] == "check":
        argv += ["--examples", "1"]
    return argv


def test_every_command_of_the_readme_runs_as_it_says(tmp_path: Path) -> None:
    commands = _readme_commands()
    assert len(commands) == 10 and commands[0] == "plugins" and commands[-1] == "--version"
    checkpoint = tmp_path / "model.safetensors"
    write_safetensors(checkpoint, {"model.layers.0.mlp.weight": b"\x01" * 64})
    for command in commands:
        argv = _runnable(command, checkpoint)
        result = exo_gpu(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert result.stdout.strip(), argv
        as_json = exo_gpu(*argv, "--json")  # "Each takes --json"
        assert as_json.returncode == 0, (argv, as_json.stderr)
        first = as_json.stdout.strip().splitlines()[0]
        json.loads(as_json.stdout if first in ("[", "{") else first)


def test_readme_help_and_pipe_promises() -> None:
    assert exo_gpu().stdout.startswith("usage:")  # "`exo-gpu` alone prints the help"
    piped = exo_gpu("devices")
    assert "\x1b[" not in piped.stdout  # plain text without colour
