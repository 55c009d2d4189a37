"""Decoding what Vulkan reports into what people read (no device needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("exo_gpu_vulkan")

from exo_gpu_vulkan.properties import (
    api_version_text,
    driver_version_text,
    pci_bus_id_text,
    uuid_text,
    vendor_name,
)


def test_vendor_names() -> None:
    assert vendor_name(0x10DE) == "nvidia" and vendor_name(0x1002) == "amd"
    assert vendor_name(0x8086) == "intel" and vendor_name(0x10005) == "mesa"
    assert vendor_name(0xABCD) == "0xabcd"


def test_nvidia_driver_version_packing() -> None:
    raw = (580 << 22) | (95 << 14) | (5 << 6)
    assert driver_version_text(0x10DE, raw) == "580.95.05"
    assert driver_version_text(0x10DE, raw, "580.95.05 ") == "580.95.05"


def test_default_driver_version_is_vulkan_packing() -> None:
    raw = (22 << 22) | (3 << 12) | 6
    assert driver_version_text(0x10005, raw) == "22.3.6"
    assert driver_version_text(0x10005, raw, "Mesa 22.3.6") == "Mesa 22.3.6"


def test_api_version() -> None:
    assert api_version_text((1 << 22) | (3 << 12) | 239) == "1.3.239"


def test_uuid_matches_nvml_format_on_nvidia() -> None:
    raw = bytes(range(16))
    assert uuid_text(raw, 0x10DE) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert uuid_text(raw, 0x1002) == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert uuid_text(bytes(16), 0x10DE) is None


def test_pci_bus_id() -> None:
    assert pci_bus_id_text((0, 0x65, 0, 0)) == "0000:65:00.0"
    assert pci_bus_id_text(None) is None
