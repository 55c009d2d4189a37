//! Gathering `DeviceInfo` from the driver: properties, limits, memory, extensions, queue
//! families, device groups and VK_EXT_memory_budget budgets.

use std::collections::HashSet;
use std::ffi::{CStr, CString};

use ash::vk;

use crate::error::{vkerr, EngineError, Result};
use crate::instance::InstanceContext;

use super::{
    DeviceExtensions, DeviceInfo, HeapBudget, HeapInfo, MemoryTypeInfo, OpaqueFdSupport, Strategy,
    StrategyRequest,
};

fn device_type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
        vk::PhysicalDeviceType::CPU => "cpu",
        _ => "other",
    }
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Names of the device extensions a physical device supports.
pub(crate) fn supported_extensions(
    ctx: &InstanceContext,
    pd: vk::PhysicalDevice,
) -> Result<HashSet<CString>> {
    // SAFETY: `pd` was enumerated from this instance, which is alive.
    let exts = unsafe { ctx.instance.enumerate_device_extension_properties(pd) }
        .map_err(vkerr("vkEnumerateDeviceExtensionProperties"))?;
    Ok(exts
        .iter()
        .filter_map(|e| e.extension_name_as_c_str().ok().map(CStr::to_owned))
        .collect())
}

/// Pick the queue family for host<->device DMA: a transfer-only family when there is one, else
/// the first family with graphics, compute or transfer. Returns (index, transfer_only, queue_count).
pub(crate) fn choose_queue_family(
    families: &[vk::QueueFamilyProperties],
) -> Option<(u32, bool, u32)> {
    let gc = vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE;
    let transfer_only = families.iter().enumerate().find(|(_, f)| {
        f.queue_count > 0
            && f.queue_flags.contains(vk::QueueFlags::TRANSFER)
            && !f.queue_flags.intersects(gc)
    });
    if let Some((i, f)) = transfer_only {
        return Some((u32::try_from(i).ok()?, true, f.queue_count));
    }
    families
        .iter()
        .enumerate()
        .find(|(_, f)| f.queue_count > 0 && f.queue_flags.intersects(gc | vk::QueueFlags::TRANSFER))
        .and_then(|(i, f)| Some((u32::try_from(i).ok()?, false, f.queue_count)))
}

/// Pick the family for device-side copies: graphics+compute, else compute, else graphics, else
/// whatever `choose_queue_family` picked.
pub(crate) fn choose_universal_family(families: &[vk::QueueFamilyProperties]) -> Option<u32> {
    let find = |want: vk::QueueFlags| {
        families
            .iter()
            .position(|f| f.queue_count > 0 && f.queue_flags.contains(want))
            .and_then(|i| u32::try_from(i).ok())
    };
    find(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE)
        .or_else(|| find(vk::QueueFlags::COMPUTE))
        .or_else(|| find(vk::QueueFlags::GRAPHICS))
        .or_else(|| choose_queue_family(families).map(|(i, _, _)| i))
}

/// Gather everything about one physical device.
pub(crate) fn gather(
    ctx: &InstanceContext,
    pd: vk::PhysicalDevice,
    index: usize,
    request: StrategyRequest,
) -> Result<DeviceInfo> {
    let inst = &ctx.instance;
    // SAFETY: `pd` was enumerated from this live instance.
    let base = unsafe { inst.get_physical_device_properties(pd) };
    let ext_names = supported_extensions(ctx, pd)?;
    let has = |name: &CStr| ext_names.contains(name);
    // Core structs may be chained only when both the instance and the device reach that version.
    let version = base.api_version.min(ctx.api_version);
    let v11 = version >= vk::API_VERSION_1_1;
    let extensions = DeviceExtensions {
        memory_budget: has(ash::ext::memory_budget::NAME),
        pci_bus_info: has(ash::ext::pci_bus_info::NAME),
        external_memory_host: has(ash::ext::external_memory_host::NAME),
        external_memory_fd: v11 && has(ash::khr::external_memory_fd::NAME),
        nv_shader_sm_builtins: has(ash::nv::shader_sm_builtins::NAME),
        amd_shader_core_properties: has(ash::amd::shader_core_properties::NAME),
        amd_shader_core_properties2: has(ash::amd::shader_core_properties2::NAME),
        driver_properties: version >= vk::API_VERSION_1_2 || has(ash::khr::driver_properties::NAME),
        maintenance4: version >= vk::API_VERSION_1_3 || has(ash::khr::maintenance4::NAME),
        portability_subset: has(ash::khr::portability_subset::NAME),
        push_descriptor: has(ash::khr::push_descriptor::NAME),
    };

    let mut id_props = vk::PhysicalDeviceIDProperties::default();
    let mut m3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut m4 = vk::PhysicalDeviceMaintenance4Properties::default();
    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut pci = vk::PhysicalDevicePCIBusInfoPropertiesEXT::default();
    let mut sm = vk::PhysicalDeviceShaderSMBuiltinsPropertiesNV::default();
    let mut amd1 = vk::PhysicalDeviceShaderCorePropertiesAMD::default();
    let mut amd2 = vk::PhysicalDeviceShaderCoreProperties2AMD::default();
    let mut emh = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let mut limits = base.limits;
    if v11 {
        let mut p2 = vk::PhysicalDeviceProperties2::default()
            .push_next(&mut id_props)
            .push_next(&mut m3);
        if extensions.maintenance4 {
            p2 = p2.push_next(&mut m4);
        }
        if extensions.driver_properties {
            p2 = p2.push_next(&mut driver);
        }
        if extensions.pci_bus_info {
            p2 = p2.push_next(&mut pci);
        }
        if extensions.nv_shader_sm_builtins {
            p2 = p2.push_next(&mut sm);
        }
        if extensions.amd_shader_core_properties {
            p2 = p2.push_next(&mut amd1);
        }
        if extensions.amd_shader_core_properties2 {
            p2 = p2.push_next(&mut amd2);
        }
        if extensions.external_memory_host {
            p2 = p2.push_next(&mut emh);
        }
        // SAFETY: every chained struct belongs to an extension/version the device supports and
        // outlives the call.
        unsafe { inst.get_physical_device_properties2(pd, &mut p2) };
        limits = p2.properties.limits;
    }

    let compute_units = if extensions.nv_shader_sm_builtins && sm.shader_sm_count > 0 {
        Some(sm.shader_sm_count)
    } else if extensions.amd_shader_core_properties2 && amd2.active_compute_unit_count > 0 {
        Some(amd2.active_compute_unit_count)
    } else if extensions.amd_shader_core_properties {
        let n = amd1
            .shader_engine_count
            .saturating_mul(amd1.shader_arrays_per_engine_count)
            .saturating_mul(amd1.compute_units_per_shader_array);
        (n > 0).then_some(n)
    } else {
        None
    };

    // SAFETY: `pd` belongs to this live instance.
    let mem = unsafe { inst.get_physical_device_memory_properties(pd) };
    let heaps: Vec<HeapInfo> = mem
        .memory_heaps_as_slice()
        .iter()
        .map(|h| HeapInfo {
            size: h.size,
            device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
        })
        .collect();
    let memory_types: Vec<MemoryTypeInfo> = mem
        .memory_types_as_slice()
        .iter()
        .map(|t| MemoryTypeInfo {
            flags: t.property_flags.as_raw(),
            heap: t.heap_index,
        })
        .collect();
    let dl_hv = vk::MemoryPropertyFlags::DEVICE_LOCAL | vk::MemoryPropertyFlags::HOST_VISIBLE;
    let host_visible_device_local = mem
        .memory_types_as_slice()
        .iter()
        .any(|t| t.property_flags.contains(dl_hv));
    let host_cached_device_local = mem.memory_types_as_slice().iter().any(|t| {
        t.property_flags
            .contains(dl_hv | vk::MemoryPropertyFlags::HOST_CACHED)
    });
    let can_import = v11 && extensions.external_memory_host;
    let strategy = match request {
        StrategyRequest::Auto if host_cached_device_local => Some(Strategy::Mapped),
        StrategyRequest::Auto | StrategyRequest::Staging => Some(Strategy::Staging),
        StrategyRequest::Mapped => host_visible_device_local.then_some(Strategy::Mapped),
        StrategyRequest::Import => can_import.then_some(Strategy::Import),
    };

    // SAFETY: `pd` belongs to this live instance.
    let families = unsafe { inst.get_physical_device_queue_family_properties(pd) };
    let (transfer_queue_family, transfer_only, transfer_queue_count) =
        choose_queue_family(&families).ok_or_else(|| {
            EngineError::Unavailable(format!("device {index} has no usable queue family"))
        })?;
    let universal_queue_family =
        choose_universal_family(&families).unwrap_or(transfer_queue_family);

    Ok(DeviceInfo {
        index,
        name: c_chars_to_string(&base.device_name),
        vendor_id: base.vendor_id,
        device_id: base.device_id,
        device_type: device_type_name(base.device_type),
        driver_version: base.driver_version,
        api_version: base.api_version,
        driver_name: extensions
            .driver_properties
            .then(|| c_chars_to_string(&driver.driver_name)),
        driver_info: extensions
            .driver_properties
            .then(|| c_chars_to_string(&driver.driver_info)),
        device_uuid: id_props.device_uuid,
        driver_uuid: id_props.driver_uuid,
        opaque_fd: if extensions.external_memory_fd {
            opaque_fd_support(inst, pd)
        } else {
            None
        },
        pci_address: extensions.pci_bus_info.then_some((
            pci.pci_domain,
            pci.pci_bus,
            pci.pci_device,
            pci.pci_function,
        )),
        compute_units,
        max_compute_work_group_invocations: limits.max_compute_work_group_invocations,
        max_memory_allocation_size: if v11 && m3.max_memory_allocation_size > 0 {
            m3.max_memory_allocation_size
        } else {
            u64::MAX
        },
        max_buffer_size: (v11 && extensions.maintenance4 && m4.max_buffer_size > 0)
            .then_some(m4.max_buffer_size),
        non_coherent_atom_size: limits.non_coherent_atom_size.max(1),
        min_storage_buffer_offset_alignment: limits.min_storage_buffer_offset_alignment.max(1),
        max_storage_buffer_range: u64::from(limits.max_storage_buffer_range),
        max_compute_work_group_count_x: limits.max_compute_work_group_count[0],
        heaps,
        memory_types,
        min_imported_host_pointer_alignment: (v11 && extensions.external_memory_host)
            .then_some(emh.min_imported_host_pointer_alignment),
        extensions,
        transfer_queue_family,
        transfer_only,
        transfer_queue_count,
        universal_queue_family,
        host_visible_device_local,
        host_cached_device_local,
        strategy,
        requested: request,
        device_group: vec![index],
        device_group_subset_allocation: false,
    })
}

/// Whether buffers with the engine's usage can be exported and imported as opaque fds.
fn opaque_fd_support(inst: &ash::Instance, pd: vk::PhysicalDevice) -> Option<OpaqueFdSupport> {
    use vk::ExternalMemoryFeatureFlags as F;
    let info = vk::PhysicalDeviceExternalBufferInfo::default()
        .usage(
            vk::BufferUsageFlags::TRANSFER_SRC
                | vk::BufferUsageFlags::TRANSFER_DST
                | vk::BufferUsageFlags::STORAGE_BUFFER,
        )
        .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
    let mut props = vk::ExternalBufferProperties::default();
    // SAFETY: `pd` belongs to this live instance (API >= 1.1, checked by the caller through
    // `external_memory_fd`); `props` is a valid out-struct.
    unsafe { inst.get_physical_device_external_buffer_properties(pd, &info, &mut props) };
    let features = props.external_memory_properties.external_memory_features;
    features
        .contains(F::EXPORTABLE | F::IMPORTABLE)
        .then_some(OpaqueFdSupport {
            dedicated_only: features.contains(F::DEDICATED_ONLY),
        })
}

/// Fill `device_group` of every device from vkEnumeratePhysicalDeviceGroups (left as the device
/// alone when the query fails).
pub(crate) fn fill_device_groups(
    ctx: &InstanceContext,
    physical: &[vk::PhysicalDevice],
    infos: &mut [DeviceInfo],
) {
    // SAFETY: the instance is alive and created with API >= 1.1 (checked at creation).
    let Ok(count) = (unsafe { ctx.instance.enumerate_physical_device_groups_len() }) else {
        return;
    };
    let mut groups = vec![vk::PhysicalDeviceGroupProperties::default(); count];
    // SAFETY: `groups` holds exactly `count` default-initialised structs.
    if unsafe { ctx.instance.enumerate_physical_device_groups(&mut groups) }.is_err() {
        return;
    }
    for g in &groups {
        let n = (g.physical_device_count as usize).min(g.physical_devices.len());
        let members: Vec<usize> = g.physical_devices[..n]
            .iter()
            .filter_map(|pd| physical.iter().position(|p| p == pd))
            .collect();
        for &m in &members {
            if let Some(info) = infos.get_mut(m) {
                info.device_group = members.clone();
                info.device_group_subset_allocation = g.subset_allocation == vk::TRUE;
            }
        }
    }
}

/// Query per-heap budgets; `None` per heap when VK_EXT_memory_budget is not supported.
pub(crate) fn query_budgets(
    ctx: &InstanceContext,
    pd: vk::PhysicalDevice,
    info: &DeviceInfo,
) -> Vec<Option<HeapBudget>> {
    let n = info.heaps.len();
    if !info.extensions.memory_budget || info.api_version.min(ctx.api_version) < vk::API_VERSION_1_1
    {
        return vec![None; n];
    }
    let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
    let mut p2 = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
    // SAFETY: the device supports VK_EXT_memory_budget; the chained struct outlives the call.
    unsafe {
        ctx.instance
            .get_physical_device_memory_properties2(pd, &mut p2)
    };
    (0..n)
        .map(|i| {
            Some(HeapBudget {
                budget: budget.heap_budget.get(i).copied().unwrap_or(0),
                usage: budget.heap_usage.get(i).copied().unwrap_or(0),
            })
        })
        .collect()
}
