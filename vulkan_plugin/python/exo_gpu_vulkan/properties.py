"""Turning the raw numbers Vulkan reports into what people read: vendor names, driver versions
decoded by each vendor's convention, UUIDs in NVML's format, PCI addresses."""

from __future__ import annotations

__all__ = [
    "api_version_text",
    "driver_version_text",
    "pci_bus_id_text",
    "uuid_text",
    "vendor_name",
]

_VENDORS = {
    0x10DE: "nvidia",
    0x1002: "amd",
    0x1022: "amd",
    0x8086: "intel",
    0x106B: "apple",
    0x13B5: "arm",
    0x5143: "qualcomm",
    0x1010: "imagination",
    0x14E4: "broadcom",
    0x10005: "mesa",
    0x10002: "vivante",
    0x10004: "codeplay",
}


def vendor_name(vendor_id: int) -> str:
    """Lower-case vendor for a PCI (or Khronos) vendor id; unknown ids as hex."""
    return _VENDORS.get(vendor_id, f"0x{vendor_id:04x}")


def driver_version_text(vendor_id: int, raw: int, driver_info: str | None = None) -> str:
    """The driver version as its vendor prints it.

    The driver's own string (VkPhysicalDeviceDriverProperties.driverInfo) wins when it has one;
    otherwise NVIDIA packs 10.8.8.6 bits, Intel's Windows driver 18.14 bits, and everyone else
    follows VK_MAKE_API_VERSION.
    """
    if driver_info and driver_info.strip():
        return driver_info.strip()
    if vendor_id == 0x10DE:
        return f"{(raw >> 22) & 0x3FF}.{(raw >> 14) & 0xFF}.{(raw >> 6) & 0xFF:02d}"
    return api_version_text(raw)


def api_version_text(raw: int) -> str:
    """VK_API_VERSION_MAJOR/MINOR/PATCH of a packed version."""
    return f"{(raw >> 22) & 0x7F}.{(raw >> 12) & 0x3FF}.{raw & 0xFFF}"


def uuid_text(raw: bytes, vendor_id: int) -> str | None:
    """deviceUUID as 8-4-4-4-12 hex; NVIDIA's carry NVML's 'GPU-' prefix so they compare equal."""
    if len(raw) != 16 or not any(raw):
        return None
    h = raw.hex()
    text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return f"GPU-{text}" if vendor_id == 0x10DE else text


def pci_bus_id_text(address: tuple[int, int, int, int] | None) -> str | None:
    """(domain, bus, device, function) as 'dddd:bb:dd.f', the form sysfs and nvidia-smi use."""
    if address is None:
        return None
    domain, bus, device, function = address
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function:x}"
