//! `exo_gpu_vulkan._native`: thin PyO3 bindings over `exo_vk_engine::Engine`.
//!
//! Every call that can wait (on a lock, a timeline value, device creation) releases the GIL;
//! every method body runs under `catch_unwind` so a Rust panic surfaces as
//! `GPUError("internal error: ...")`; engine errors become the core package's exception classes
//! (`exo_gpu_plugins.errors`). When a transfer fails because the device was lost, the caller's
//! buffer is kept exported forever: a late DMA of the hung device may still touch it.

#![warn(clippy::undocumented_unsafe_blocks)]

mod args;
mod buffer;
mod errors;
mod faults;
mod host;
#[cfg(unix)]
mod interop;
mod records;
mod transfers;

use exo_vk_engine::Engine;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use args::{guarded, index, uint};
use errors::{to_pyerr, Op};

/// The Vulkan engine (one per backend instance). Thread-safe.
#[pyclass(module = "exo_gpu_vulkan._native", name = "Engine", frozen)]
pub struct PyEngine {
    pub(crate) engine: Engine,
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
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
            records::info_dict(py, &info)
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
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
            records::heaps_list(py, &heaps)
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
            .map_err(|e| to_pyerr(py, Op::Other, e))
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
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
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
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
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
                .map_err(|e| to_pyerr(py, Op::Other, e))
        })
    }

    fn free(&self, py: Python<'_>, alloc: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let id = uint(alloc, "alloc")?;
            py.detach(|| self.engine.free(id))
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
            transfers::buffer_transfer(py, &self.engine, alloc, offset, src, false)
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
            transfers::buffer_transfer(py, &self.engine, alloc, offset, dst, true)
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
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
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
            .map_err(|e| to_pyerr(py, Op::Other, e))
        })
    }

    /// Forget a registration (or pinned buffer); its buffer is released once no transfer uses it.
    fn host_unregister(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let id = uint(id, "id")?;
            py.detach(|| self.engine.host_unregister(id))
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
            .map_err(|e| to_pyerr(py, Op::Transfer, e))
        })
    }

    /// Fill the writable buffer `dst` from file descriptor `fd` (borrowed) at `file_offset`
    /// by the engine's parallel preads (GIL released).
    fn read_file_into(
        &self,
        py: Python<'_>,
        fd: i32,
        file_offset: &Bound<'_, PyAny>,
        dst: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guarded(py, || {
            transfers::file_into_buffer(py, &self.engine, fd, file_offset, dst)
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
            transfers::read_new_bytes(py, &self.engine, alloc, offset, size)
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
                .map_err(|e| to_pyerr(py, Op::Transfer, e))
        })
    }

    fn synchronize(&self, py: Python<'_>, index: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let i = self::index(index, "index")?;
            py.detach(|| self.engine.synchronize(i))
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
                .map_err(|e| to_pyerr(py, Op::Other, e))?;
            records::stats_dict(py, &s)
        })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || {
            py.detach(|| self.engine.close())
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
                .map_err(|e| to_pyerr(py, Op::Other, e))
        })
    }

    /// Test hook: take `path` ("auto", "host-import", "host-staging") for cross-device copies
    /// and, with `same_device`, send copies between two allocations of one device through the
    /// cross-device pipeline too (so one device exercises it).
    #[pyo3(signature = (path, same_device = true))]
    fn _force_cross_device(&self, py: Python<'_>, path: &str, same_device: bool) -> PyResult<()> {
        guarded(py, || {
            py.detach(|| self.engine.force_cross_device(path, same_device))
                .map_err(|e| to_pyerr(py, Op::Other, e))
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
            faults::inject(py, &self.engine, kind, index, timeout_ms)
        })
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
