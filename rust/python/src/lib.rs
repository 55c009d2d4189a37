//! `exo_gpu_vulkan._native`: thin PyO3 bindings over `exo_vk_engine::Engine`.
//!
//! Every call that can wait (on a lock, a timeline value, device creation) releases the GIL;
//! every method body runs under `catch_unwind` so a Rust panic surfaces as
//! `GPUError("internal error: ...")`; engine errors become the core package's exception classes
//! (`exo_gpu_plugins.errors`). When a transfer fails because the device was lost, the caller's
//! buffer is kept exported forever: a late DMA of the hung device may still touch it.

#![warn(clippy::undocumented_unsafe_blocks)]

mod buffer;
mod errors;
mod host;
#[cfg(unix)]
mod interop;

use std::panic::{catch_unwind, AssertUnwindSafe};

use exo_vk_engine::{DeviceInfo, Engine, EngineError};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyTuple};

use buffer::{BufferGuard, BufferSlot};

use errors::{internal_error, to_pyerr, Op};

/// Run a method body, turning a Rust panic into `GPUError("internal error: ...")`.
fn guarded<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(internal_error(py, &msg))
        }
    }
}

/// A non-negative Python int (or `__index__`-able object) as u64: negatives → ValueError,
/// non-ints → TypeError, too large → ValueError.
#[inline]
fn uint(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    // Fast path: an exact int that fits (the common case; no attribute lookups).
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(v) = obj.extract::<u64>() {
            return Ok(v);
        }
    }
    uint_slow(obj, name)
}

#[cold]
fn uint_slow(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    let int = if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not bool"
        )));
    } else if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else if obj.hasattr("__index__")? {
        obj.call_method0("__index__")?
    } else {
        let t = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {t}"
        )));
    };
    match int.extract::<u64>() {
        Ok(v) => Ok(v),
        Err(_) => {
            if int.lt(0)? {
                Err(PyValueError::new_err(format!(
                    "{name} must be >= 0, got {int}"
                )))
            } else {
                Err(PyValueError::new_err(format!("{name} is too large: {int}")))
            }
        }
    }
}

fn index(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    let v = uint(obj, name)?;
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} is too large: {v}")))
}

fn info_dict<'py>(py: Python<'py>, info: &DeviceInfo) -> PyResult<Bound<'py, PyDict>> {
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

/// The Vulkan engine (one per backend instance). Thread-safe.
#[pyclass(module = "exo_gpu_vulkan._native", name = "Engine", frozen)]
pub struct PyEngine {
    pub(crate) engine: Engine,
}

impl PyEngine {
    fn err(&self, py: Python<'_>, op: Op, e: EngineError) -> PyErr {
        to_pyerr(py, op, e)
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (validation = false, strategy = "auto"))]
    fn new(py: Python<'_>, validation: bool, strategy: &str) -> PyResult<Self> {
        guarded(py, || {
            let engine = py
                .detach(|| Engine::new(validation, Some(strategy)))
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
            Ok(PyEngine { engine })
        })
    }

    /// `None` when a Vulkan device is usable, else a human-readable reason.
    #[staticmethod]
    fn probe(py: Python<'_>) -> PyResult<Option<String>> {
        guarded(py, || Ok(py.detach(Engine::probe)))
    }

    fn device_count(&self, py: Python<'_>) -> PyResult<usize> {
        guarded(py, || {
            self.engine
                .device_count()
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    fn device_info<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            let info = self
                .engine
                .device_info(i)
                .map_err(|e| self.err(py, Op::Other, e))?;
            info_dict(py, &info)
        })
    }

    fn memory_heaps<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            let heaps = py
                .detach(|| self.engine.memory_heaps(i))
                .map_err(|e| self.err(py, Op::Other, e))?;
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
        })
    }

    /// Allocate `size` bytes on device `index`: zero-filled unless `zeroed` is false, and as a
    /// dedicated memory object that `export_fd` can share when `exportable`.
    #[pyo3(signature = (index, size, zeroed = true, exportable = false))]
    fn allocate(
        &self,
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
        zeroed: bool,
        exportable: bool,
    ) -> PyResult<u64> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            let size = uint(size, "size")?;
            py.detach(|| {
                #[cfg(unix)]
                if exportable {
                    return self.engine.allocate_exportable(i, size, zeroed);
                }
                #[cfg(not(unix))]
                if exportable {
                    return Err(EngineError::Interop(
                        "exportable memory needs a POSIX system (file descriptors)".into(),
                    ));
                }
                self.engine.allocate(i, size, zeroed)
            })
            .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    #[cfg(unix)]
    /// A new opaque file descriptor of an exportable allocation's memory (the caller owns and
    /// must close it), the allocation's size and `(allocation_size, memory_type, memory_flags)`,
    /// which a receiver needs.
    fn export_fd(
        &self,
        py: Python<'_>,
        alloc: &Bound<'_, PyAny>,
    ) -> PyResult<(i32, u64, u64, u32, u32)> {
        guarded(py, || {
            use std::os::fd::IntoRawFd;
            let id = uint(alloc, "alloc")?;
            let (fd, info, size) = py
                .detach(|| -> exo_vk_engine::Result<_> {
                    let (fd, info) = self.engine.export_fd(id)?;
                    Ok((fd, info, self.engine.allocation_size(id)?))
                })
                .map_err(|e| self.err(py, Op::Other, e))?;
            Ok((
                fd.into_raw_fd(),
                size,
                info.allocation_size,
                info.memory_type,
                info.memory_flags,
            ))
        })
    }

    #[cfg(unix)]
    /// Open memory exported elsewhere (`fd` borrowed: the engine imports a duplicate) as an
    /// allocation of `size` bytes on device `index`; returns its id.
    #[allow(clippy::too_many_arguments)]
    fn import_fd(
        &self,
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        fd: i32,
        size: &Bound<'_, PyAny>,
        allocation_size: &Bound<'_, PyAny>,
        memory_type: u32,
        memory_flags: u32,
    ) -> PyResult<u64> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            let size = uint(size, "size")?;
            let info = exo_vk_engine::ExportInfo {
                allocation_size: uint(allocation_size, "allocation_size")?,
                memory_type,
                memory_flags,
            };
            py.detach(|| self.engine.import_fd(i, fd, size, info))
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    #[cfg(unix)]
    /// Keep an allocation's memory alive beyond `free` and `close` (for an export's consumer).
    fn retain(&self, py: Python<'_>, alloc: &Bound<'_, PyAny>) -> PyResult<interop::PyRetained> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            let held = self
                .engine
                .retain(id)
                .map_err(|e| self.err(py, Op::Other, e))?;
            Ok(interop::PyRetained::new(held))
        })
    }

    #[cfg(unix)]
    /// Whether every allocation on device `index` is host-visible, coherent memory.
    fn allocations_host_mapped(&self, py: Python<'_>, index: &Bound<'_, PyAny>) -> PyResult<bool> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            self.engine
                .allocations_host_mapped(i)
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    fn free(&self, py: Python<'_>, alloc: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            py.detach(|| self.engine.free(id))
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    fn write(
        &self,
        py: Python<'_>,
        alloc: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
        src: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            let offset = uint(offset, "offset")?;
            let mut slot = BufferSlot::new();
            let guard = BufferGuard::acquire(&mut slot, src, false, "src")?;
            let bytes = guard.bytes();
            let r = py.detach(move || {
                // SAFETY: `guard` keeps the exported buffer alive until after this returns.
                let data = unsafe { bytes.as_slice() };
                self.engine.write(id, offset, data)
            });
            guard.release_unless_in_flight(&r);
            r.map_err(|e| self.err(py, Op::Transfer, e))
        })
    }

    fn read_into(
        &self,
        py: Python<'_>,
        alloc: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
        dst: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            let offset = uint(offset, "offset")?;
            let mut slot = BufferSlot::new();
            let guard = BufferGuard::acquire(&mut slot, dst, true, "dst")?;
            let bytes = guard.bytes();
            let r = py.detach(move || {
                // SAFETY: `guard` keeps the exported, writable buffer alive until after this
                // returns.
                let out = unsafe { bytes.as_mut_slice() };
                self.engine.read_into(id, offset, out)
            });
            guard.release_unless_in_flight(&r);
            r.map_err(|e| self.err(py, Op::Transfer, e))
        })
    }

    /// `size` zeroed bytes of pinned host memory for device `index` (see `HostMemory`).
    fn host_alloc(
        slf: &Bound<'_, Self>,
        index: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
    ) -> PyResult<host::PyHostMemory> {
        let py = slf.py();
        guarded(py, || {
            let i = self::index(index, "index")?;
            let size = uint(size, "size")?;
            let me = slf.get();
            let mem = py
                .detach(|| me.engine.host_alloc(i, size))
                .map_err(|e| me.err(py, Op::Other, e))?;
            Ok(host::PyHostMemory::new(mem, slf.clone().unbind()))
        })
    }

    /// Register a caller's C-contiguous buffer with device `index` (its pages are imported once;
    /// transfers from or to it are then one DMA). Returns the registration id. The buffer stays
    /// exported (and alive) until `host_unregister` or `close`.
    fn host_register(
        &self,
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            let held = buffer::HeldBuffer::hold(buffer, "buffer")?;
            let bytes = held.bytes();
            let (addr, len) = (bytes.ptr as usize, bytes.len);
            let keep: Box<dyn std::any::Any + Send + Sync> = Box::new(host::Registration(held));
            py.detach(move || {
                // SAFETY: `keep` holds the export, so the memory stays valid until the engine
                // drops `keep` (after the import is freed, never on a hung device).
                unsafe { self.engine.host_register(i, addr as *mut u8, len, keep) }
            })
            .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    /// Forget a registration (or pinned buffer); its buffer is released once no transfer uses it.
    fn host_unregister(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let id = uint(id, "id")?;
            py.detach(|| self.engine.host_unregister(id))
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    /// Fill `size` bytes of `alloc` at `offset` from file descriptor `fd` (borrowed) at
    /// `file_offset` (parallel preads overlapped with the DMA; GIL released).
    fn write_from_file(
        &self,
        py: Python<'_>,
        alloc: &Bound<'_, PyAny>,
        offset: &Bound<'_, PyAny>,
        fd: i32,
        file_offset: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            let offset = uint(offset, "offset")?;
            let file_offset = uint(file_offset, "file_offset")?;
            let size = uint(size, "size")?;
            py.detach(|| {
                self.engine
                    .write_from_file(id, offset, fd, file_offset, size)
            })
            .map_err(|e| self.err(py, Op::Transfer, e))
        })
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        alloc: &Bound<'py, PyAny>,
        offset: &Bound<'py, PyAny>,
        size: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            let offset = uint(offset, "offset")?;
            let size = uint(size, "size")?;
            // Validate before creating a possibly huge bytes object.
            let total = py
                .detach(|| self.engine.allocation_size(id))
                .map_err(|e| self.err(py, Op::Transfer, e))?;
            if offset.checked_add(size).is_none_or(|end| end > total) {
                return Err(self.err(
                    py,
                    Op::Transfer,
                    EngineError::OutOfBounds(format!(
                        "read: offset {offset} + length {size} exceeds allocation size {total}"
                    )),
                ));
            }
            let len = usize::try_from(size)
                .map_err(|_| PyValueError::new_err(format!("size is too large: {size}")))?;
            let ssize = pyo3::ffi::Py_ssize_t::try_from(len)
                .map_err(|_| PyValueError::new_err(format!("size is too large: {size}")))?;
            // An uninitialised bytes object, filled once by the engine (`PyBytes::new_with`
            // would zero it first: a second pass over fresh memory).
            // SAFETY: a null source asks CPython for an uninitialised object of `ssize` bytes;
            // a null result means a Python exception (MemoryError) is set.
            let raw = unsafe { pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), ssize) };
            if raw.is_null() {
                return Err(PyErr::fetch(py));
            }
            // SAFETY: `raw` is a new, owned reference to a bytes object.
            let obj = unsafe { Bound::from_owned_ptr(py, raw) };
            // SAFETY: the object's buffer holds `len` bytes; nobody else has seen the object, so
            // writing it before returning it is the documented way to build a bytes object.
            let out = unsafe {
                std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(raw).cast::<u8>(), len)
            };
            let bytes = buffer::RawBytes::from_slice(out);
            let r = py.detach(move || {
                // SAFETY: `obj` (held below) keeps the storage alive; nobody else accesses it.
                let out = unsafe { bytes.as_mut_slice() };
                self.engine.read_into_fresh(id, offset, out)
            });
            if let Err(e) = r {
                if e.caller_memory_in_use() {
                    // A late DMA of the hung device may still write the storage: keep it.
                    std::mem::forget(obj);
                }
                return Err(self.err(py, Op::Transfer, e));
            }
            // SAFETY: the object is a bytes object (created above).
            Ok(unsafe { obj.cast_into_unchecked::<PyBytes>() })
        })
    }

    fn copy(
        &self,
        py: Python<'_>,
        src: &Bound<'_, PyAny>,
        src_offset: &Bound<'_, PyAny>,
        dst: &Bound<'_, PyAny>,
        dst_offset: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guarded(py, || {
            let s = uint(src, "src")?;
            let so = uint(src_offset, "src_offset")?;
            let d = uint(dst, "dst")?;
            let doff = uint(dst_offset, "dst_offset")?;
            let n = uint(size, "size")?;
            py.detach(|| self.engine.copy(s, so, d, doff, n))
                .map_err(|e| self.err(py, Op::Transfer, e))
        })
    }

    fn synchronize(&self, py: Python<'_>, index: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            py.detach(|| self.engine.synchronize(i))
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    fn stats<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            let s = py
                .detach(|| self.engine.stats(i))
                .map_err(|e| self.err(py, Op::Other, e))?;
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
        })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || {
            py.detach(|| self.engine.close())
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    /// The path a copy from device `src` to device `dst` takes: "p2p", "host-import" or
    /// "host-staging" (private: the backend reports it through `stats`).
    fn _cross_device_path(
        &self,
        py: Python<'_>,
        src: &Bound<'_, PyAny>,
        dst: &Bound<'_, PyAny>,
    ) -> PyResult<&'static str> {
        guarded(py, || {
            let (s, d) = (self::index(src, "src")?, self::index(dst, "dst")?);
            // Waits for the links' lock, which a link being made holds across ring set-up.
            py.detach(|| self.engine.cross_device_path(s, d))
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    /// Test hook: take `path` ("auto", "host-import", "host-staging") for cross-device copies
    /// and, with `same_device`, send copies between two allocations of one device through the
    /// cross-device pipeline too (so one device exercises it).
    #[pyo3(signature = (path, same_device = true))]
    fn _force_cross_device(&self, py: Python<'_>, path: &str, same_device: bool) -> PyResult<()> {
        guarded(py, || {
            py.detach(|| self.engine.force_cross_device(path, same_device))
                .map_err(|e| self.err(py, Op::Other, e))
        })
    }

    /// Test hook: `"panic"` panics inside the engine, `"device_lost"` marks device `index` lost,
    /// `"hang"` makes every later submission on it wait forever, with waits giving up after
    /// `timeout_ms`. Builds without the `fault-injection` feature raise RuntimeError.
    #[pyo3(signature = (kind, index = 0, timeout_ms = 1000))]
    fn _inject_fault(
        &self,
        py: Python<'_>,
        kind: &str,
        index: i64,
        timeout_ms: u64,
    ) -> PyResult<()> {
        guarded(py, || {
            let index = usize::try_from(index)
                .map_err(|_| PyValueError::new_err(format!("index must be >= 0, got {index}")))?;
            self.inject(py, kind, index, timeout_ms)
        })
    }
}

impl PyEngine {
    #[cfg(feature = "fault-injection")]
    fn inject(&self, py: Python<'_>, kind: &str, index: usize, timeout_ms: u64) -> PyResult<()> {
        match kind {
            "hang" => {
                let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
                py.detach(|| self.engine.inject_hang(index, timeout))
                    .map_err(|e| self.err(py, Op::Other, e))
            }
            "panic" => py
                .detach(|| self.engine.inject_panic())
                .map_err(|e| self.err(py, Op::Other, e)),
            "device_lost" => py
                .detach(|| self.engine.inject_device_lost(index))
                .map_err(|e| self.err(py, Op::Other, e)),
            other => Err(PyValueError::new_err(format!(
                "unknown fault kind {other:?} (expected \"panic\", \"device_lost\" or \"hang\")"
            ))),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn inject(
        &self,
        _py: Python<'_>,
        _kind: &str,
        _index: usize,
        _timeout_ms: u64,
    ) -> PyResult<()> {
        Err(pyo3::exceptions::PyRuntimeError::new_err(
            "exo_gpu_vulkan._native was built without the fault-injection feature",
        ))
    }
}

/// The extension module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<host::PyHostMemory>()?;
    #[cfg(unix)]
    m.add_class::<interop::PyRetained>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FAULT_INJECTION", cfg!(feature = "fault-injection"))?;
    Ok(())
}
