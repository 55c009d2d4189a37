//! The records the bindings return, as the dicts `_native.pyi` declares (`DeviceInfo`,
//! `HeapReport`, `Stats`): keep the two in step (stubtest checks names, the tests check keys).

use exo_vk_engine::{DeviceInfo, HeapReport, Stats};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

/// `device_info`'s record (`DeviceInfo` in `_native.pyi`).
pub(crate) fn info_dict<'py>(py: Python<'py>, info: &DeviceInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", info.index)?;
    d.set_item("name", &info.name)?;
    d.set_item("vendor_id", info.vendor_id)?;
    d.set_item("device_id", info.device_id)?;
    d.set_item("device_type", info.device_type)?;
    d.set_item("driver_version", info.driver_version)?;
    d.set_item("api_version", info.api_version)?;
    d.set_item("driver_name", info.driver_name.as_deref())?;
    d.set_item("driver_info", info.driver_info.as_deref())?;
    d.set_item("device_uuid", PyBytes::new(py, &info.device_uuid))?;
    d.set_item("driver_uuid", PyBytes::new(py, &info.driver_uuid))?;
    d.set_item("opaque_fd", info.opaque_fd.is_some())?;
    let pci = match info.pci_address {
        Some((a, b, c, e)) => PyTuple::new(py, [a, b, c, e])?.into_any(),
        None => py.None().into_bound(py),
    };
    d.set_item("pci_address", pci)?;
    d.set_item("compute_units", info.compute_units)?;
    d.set_item(
        "max_compute_work_group_invocations",
        info.max_compute_work_group_invocations,
    )?;
    d.set_item(
        "max_memory_allocation_size",
        info.max_memory_allocation_size,
    )?;
    d.set_item("max_buffer_size", info.max_buffer_size)?;
    let heaps = PyList::empty(py);
    for (i, h) in info.heaps.iter().enumerate() {
        let hd = PyDict::new(py);
        hd.set_item("index", i)?;
        hd.set_item("size", h.size)?;
        hd.set_item("device_local", h.device_local)?;
        heaps.append(hd)?;
    }
    d.set_item("heaps", heaps)?;
    let types = PyList::empty(py);
    for (i, t) in info.memory_types.iter().enumerate() {
        let td = PyDict::new(py);
        td.set_item("index", i)?;
        td.set_item("flags", t.flags)?;
        td.set_item("heap", t.heap)?;
        td.set_item("device_local", t.flags & 0x1 != 0)?;
        td.set_item("host_visible", t.flags & 0x2 != 0)?;
        td.set_item("host_coherent", t.flags & 0x4 != 0)?;
        td.set_item("host_cached", t.flags & 0x8 != 0)?;
        types.append(td)?;
    }
    d.set_item("memory_types", types)?;
    d.set_item("memory_budget", info.extensions.memory_budget)?;
    d.set_item("pci_bus_info", info.extensions.pci_bus_info)?;
    d.set_item("external_memory_host", info.extensions.external_memory_host)?;
    d.set_item(
        "min_imported_host_pointer_alignment",
        info.min_imported_host_pointer_alignment,
    )?;
    d.set_item("transfer_queue_family", info.transfer_queue_family)?;
    d.set_item("transfer_only", info.transfer_only)?;
    d.set_item("transfer_queue_count", info.transfer_queue_count)?;
    d.set_item("host_visible_device_local", info.host_visible_device_local)?;
    d.set_item("strategy", info.strategy.map(|s| s.as_str()))?;
    d.set_item("device_group", PyList::new(py, &info.device_group)?)?;
    d.set_item(
        "device_group_subset_allocation",
        info.device_group_subset_allocation,
    )?;
    Ok(d)
}

/// `memory_heaps`' records (`HeapReport` in `_native.pyi`).
pub(crate) fn heaps_list<'py>(
    py: Python<'py>,
    heaps: &[HeapReport],
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for h in heaps {
        let d = PyDict::new(py);
        d.set_item("index", h.index)?;
        d.set_item("size", h.size)?;
        d.set_item("device_local", h.device_local)?;
        d.set_item("budget", h.budget)?;
        d.set_item("usage", h.usage)?;
        d.set_item("engine_allocated", h.engine_allocated)?;
        d.set_item("process_allocated", h.process_allocated)?;
        list.append(d)?;
    }
    Ok(list)
}

/// `stats`' record (`Stats` in `_native.pyi`).
pub(crate) fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("strategy", s.strategy)?;
    d.set_item("device_created", u64::from(s.device_created))?;
    d.set_item("live_allocations", s.live_allocations)?;
    d.set_item("live_bytes", s.live_bytes)?;
    d.set_item("block_count", s.block_count)?;
    d.set_item("allocator_capacity_bytes", s.allocator_capacity_bytes)?;
    d.set_item("allocator_allocated_bytes", s.allocator_allocated_bytes)?;
    d.set_item("mapped_bytes", s.mapped_bytes)?;
    d.set_item("staged_bytes", s.staged_bytes)?;
    d.set_item("imported_bytes", s.imported_bytes)?;
    d.set_item("import_refused", s.import_refused)?;
    d.set_item("compute_copied_bytes", s.compute_copied_bytes)?;
    d.set_item("cross_device_path", s.cross_device_path)?;
    d.set_item("cross_device_bytes", s.cross_device_bytes)?;
    d.set_item("pinned_bytes", s.pinned_bytes)?;
    d.set_item("direct_read_bytes", s.direct_read_bytes)?;
    Ok(d)
}
