//! Device information gathered from a physical device (no logical device needed): identity, PCI
//! address, limits, memory heaps/types, extension support, queue choice and transfer strategy.
//! The records live here; `query` gathers them from the driver.

mod query;

pub(crate) use query::{fill_device_groups, gather, query_budgets};

use crate::error::{EngineError, Result};

/// How host<->device transfers are done on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Allocations live in DEVICE_LOCAL|HOST_VISIBLE memory and are accessed through a persistent
    /// mapping (memcpy).
    Mapped,
    /// Allocations live in GPU-only memory; transfers go through a ring of host staging buffers
    /// (on a discrete "auto" device, small ones may use a host-visible mapping, see `tuning`).
    Staging,
    /// As `Staging`, but the page-aligned interior of the caller's buffer is imported
    /// (VK_EXT_external_memory_host) and DMAed to/from directly; head and tail go through staging.
    Import,
}

impl Strategy {
    /// `"mapped"` / `"staging"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Mapped => "mapped",
            Strategy::Staging => "staging",
            Strategy::Import => "import",
        }
    }
}

/// What the caller asked for in `Engine::new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyRequest {
    /// Mapped on UMA-like devices (a DEVICE_LOCAL|HOST_VISIBLE|HOST_CACHED type), else staging.
    Auto,
    /// Force mapped (error on devices without a DEVICE_LOCAL|HOST_VISIBLE type).
    Mapped,
    /// Force staging.
    Staging,
    /// Force import (error on devices without VK_EXT_external_memory_host).
    Import,
}

impl StrategyRequest {
    /// Parse `"auto"` (or `None`), `"mapped"`, `"staging"`, `"import"`.
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s.map(str::trim) {
            None | Some("auto") | Some("") => Ok(StrategyRequest::Auto),
            Some("mapped") => Ok(StrategyRequest::Mapped),
            Some("staging") => Ok(StrategyRequest::Staging),
            Some("import") => Ok(StrategyRequest::Import),
            Some(other) => Err(EngineError::InvalidArgument(format!(
                "unknown transfer strategy {other:?} (expected \"auto\", \"mapped\", \"staging\" \
                 or \"import\")"
            ))),
        }
    }
}

/// One memory heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapInfo {
    /// Size in bytes.
    pub size: u64,
    /// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT` set.
    pub device_local: bool,
}

/// One memory type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryTypeInfo {
    /// Raw `VkMemoryPropertyFlags`.
    pub flags: u32,
    /// Index of the heap it allocates from.
    pub heap: u32,
}

/// Device extensions the engine cares about (support, not necessarily enabled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceExtensions {
    /// VK_EXT_memory_budget.
    pub memory_budget: bool,
    /// VK_EXT_pci_bus_info.
    pub pci_bus_info: bool,
    /// VK_EXT_external_memory_host.
    pub external_memory_host: bool,
    /// VK_KHR_external_memory_fd (core VK_KHR_external_memory is Vulkan 1.1).
    pub external_memory_fd: bool,
    /// VK_NV_shader_sm_builtins.
    pub nv_shader_sm_builtins: bool,
    /// VK_AMD_shader_core_properties.
    pub amd_shader_core_properties: bool,
    /// VK_AMD_shader_core_properties2.
    pub amd_shader_core_properties2: bool,
    /// VK_KHR_driver_properties (core in 1.2).
    pub driver_properties: bool,
    /// VK_KHR_maintenance4 (core in 1.3).
    pub maintenance4: bool,
    /// VK_KHR_portability_subset (must be enabled when present: MoltenVK).
    pub portability_subset: bool,
    /// VK_KHR_push_descriptor (the compute copy binds its buffers with it).
    pub push_descriptor: bool,
}

/// What vkGetPhysicalDeviceExternalBufferProperties says of opaque-fd buffers with the engine's
/// usage: both directions are supported (else the device offers no sharing at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaqueFdSupport {
    /// The driver only exports and imports such memory as dedicated allocations.
    pub dedicated_only: bool,
}

/// Everything `device_info` reports about one physical device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Index in the engine's device list.
    pub index: usize,
    /// `deviceName`.
    pub name: String,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// "discrete", "integrated", "virtual", "cpu" or "other".
    pub device_type: &'static str,
    /// Raw `driverVersion` (vendor-specific encoding).
    pub driver_version: u32,
    /// Raw `apiVersion` of the device.
    pub api_version: u32,
    /// `VkPhysicalDeviceDriverProperties::driverName`, when available.
    pub driver_name: Option<String>,
    /// `VkPhysicalDeviceDriverProperties::driverInfo`, when available.
    pub driver_info: Option<String>,
    /// `VkPhysicalDeviceIDProperties::deviceUUID` (zeros if the device is older than 1.1).
    pub device_uuid: [u8; 16],
    /// `VkPhysicalDeviceIDProperties::driverUUID`: memory shared as an opaque descriptor opens
    /// only on a device with the same device and driver UUIDs.
    pub driver_uuid: [u8; 16],
    /// How buffers like the engine's allocations can be shared as opaque file descriptors
    /// (`None`: not at all on this device).
    pub opaque_fd: Option<OpaqueFdSupport>,
    /// (domain, bus, device, function), when VK_EXT_pci_bus_info is supported.
    pub pci_address: Option<(u32, u32, u32, u32)>,
    /// SMs (NVIDIA) or compute units (AMD), when the vendor extension reports them.
    pub compute_units: Option<u32>,
    /// `maxComputeWorkGroupInvocations`.
    pub max_compute_work_group_invocations: u32,
    /// `VkPhysicalDeviceMaintenance3Properties::maxMemoryAllocationSize`.
    pub max_memory_allocation_size: u64,
    /// `VkPhysicalDeviceMaintenance4Properties::maxBufferSize`, when available.
    pub max_buffer_size: Option<u64>,
    /// `nonCoherentAtomSize`.
    pub non_coherent_atom_size: u64,
    /// `minStorageBufferOffsetAlignment`.
    pub min_storage_buffer_offset_alignment: u64,
    /// `maxStorageBufferRange`.
    pub max_storage_buffer_range: u64,
    /// `maxComputeWorkGroupCount[0]`.
    pub max_compute_work_group_count_x: u32,
    /// Memory heaps.
    pub heaps: Vec<HeapInfo>,
    /// Memory types.
    pub memory_types: Vec<MemoryTypeInfo>,
    /// Extension support.
    pub extensions: DeviceExtensions,
    /// `minImportedHostPointerAlignment`, when VK_EXT_external_memory_host is supported.
    pub min_imported_host_pointer_alignment: Option<u64>,
    /// Queue family of host<->device DMA (transfer-only when the device has one); on NVIDIA,
    /// uploads use a compute family instead (`device.rs`, `nvidia_upload_family`).
    pub transfer_queue_family: u32,
    /// Queue family (graphics/compute) used for device-side copies and fills: on discrete GPUs
    /// the copy engines behind a transfer-only family are far slower for VRAM-to-VRAM copies.
    pub universal_queue_family: u32,
    /// Whether that family is transfer-only (no graphics/compute).
    pub transfer_only: bool,
    /// Queue count of that family.
    pub transfer_queue_count: u32,
    /// Some memory type is DEVICE_LOCAL|HOST_VISIBLE.
    pub host_visible_device_local: bool,
    /// Some memory type is DEVICE_LOCAL|HOST_VISIBLE|HOST_CACHED (UMA-like).
    pub host_cached_device_local: bool,
    /// Chosen strategy; `None` when the requested strategy is not supported by this device.
    pub strategy: Option<Strategy>,
    /// The request the strategy was chosen from.
    pub requested: StrategyRequest,
    /// Engine indices of the physical devices in this device's group
    /// (vkEnumeratePhysicalDeviceGroups), itself included: more than one means the driver offers
    /// a device-group logical device spanning them (peer memory access).
    pub device_group: Vec<usize>,
    /// `subsetAllocation` of that group.
    pub device_group_subset_allocation: bool,
}

impl DeviceInfo {
    /// The strategy, or `Unavailable` when the requested one cannot work on this device.
    pub fn require_strategy(&self) -> Result<Strategy> {
        self.strategy.ok_or_else(|| {
            let missing = if self.requested == StrategyRequest::Import {
                "VK_EXT_external_memory_host, so the \"import\""
            } else {
                "DEVICE_LOCAL|HOST_VISIBLE memory type, so the \"mapped\""
            };
            EngineError::Unavailable(format!(
                "device {} ({}) has no {missing} transfer strategy cannot be used (use \"auto\" \
                 or \"staging\")",
                self.index, self.name
            ))
        })
    }
}

/// Budget/usage of one heap (from VK_EXT_memory_budget), `None` when unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapBudget {
    /// Bytes this process may use from the heap.
    pub budget: u64,
    /// Bytes this process currently uses from the heap.
    pub usage: u64,
}
