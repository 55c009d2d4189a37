//! Pinned host memory as a Python object (`HostMemory`: engine-allocated host-visible memory,
//! exposed as a writable memoryview) and the keep-alive of registered caller buffers.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};

use exo_vk_engine::HostMemory;
use pyo3::prelude::*;

use crate::buffer::HeldBuffer;
use crate::errors::{to_pyerr, Op};
use crate::PyEngine;

/// Zero-filled host memory the device reads and writes by DMA (the equivalent of
/// `cudaHostAlloc`). Writable through `view()`; its memory stays valid while this object or any
/// view of it lives, also after `release()` (which only stops the engine from treating it as
/// pinned).
#[pyclass(module = "exo_gpu_vulkan._native", name = "HostMemory", frozen)]
pub struct PyHostMemory {
    /// Dropped in `Drop` with the GIL released (the last reference frees the memory).
    mem: ManuallyDrop<HostMemory>,
    engine: Py<PyEngine>,
    released: AtomicBool,
}

impl PyHostMemory {
    pub fn new(mem: HostMemory, engine: Py<PyEngine>) -> Self {
        PyHostMemory {
            mem: ManuallyDrop::new(mem),
            engine,
            released: AtomicBool::new(false),
        }
    }
}

impl Drop for PyHostMemory {
    fn drop(&mut self) {
        // SAFETY: `mem` is taken exactly once, here, and never used afterwards.
        let mem = unsafe { ManuallyDrop::take(&mut self.mem) };
        // The last reference destroys the buffer and frees (maybe GiBs of) memory: not with the
        // GIL held. Without an interpreter (shutdown) there is no GIL to release: the closure,
        // and the memory with it, is simply dropped.
        let _ = Python::try_attach(move |py| py.detach(move || drop(mem)));
    }
}

#[pymethods]
impl PyHostMemory {
    /// The engine's id of this buffer.
    #[getter]
    fn id(&self) -> u64 {
        self.mem.id()
    }

    /// Whether the engine still treats the memory as pinned (False after `release()`).
    #[getter]
    fn pinned(&self) -> bool {
        !self.released.load(Ordering::Acquire)
    }

    fn __len__(&self) -> usize {
        self.mem.len()
    }

    /// Stop treating the memory as pinned; idempotent. Exports stay valid memory.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let engine = self.engine.get();
        let id = self.mem.id();
        match py.detach(|| engine.engine.host_release(id)) {
            // Already gone (the engine was closed, which released it): nothing to do.
            Ok(()) | Err(exo_vk_engine::EngineError::InvalidArgument(_)) => Ok(()),
            Err(exo_vk_engine::EngineError::Closed) => Ok(()),
            Err(e) => Err(to_pyerr(py, Op::Other, e)),
        }
    }

    /// A flat, writable memoryview (format "B") of the memory. Its base object holds a
    /// reference to this HostMemory, so the memory outlives every view. (The abi3 build for
    /// Python 3.10 cannot give a PyO3 class the buffer protocol; a ctypes array over the memory
    /// carries the reference instead.)
    fn view<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let ctypes = py.import("ctypes")?;
        let array_type = ctypes.getattr("c_ubyte")?.mul(me.mem.len())?;
        let array = array_type.call_method1("from_address", (me.mem.as_ptr() as usize,))?;
        array.setattr("_exo_host_memory", slf)?;
        let view = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((array,))?;
        view.call_method1("cast", ("B",))
    }

    /// Address of the first byte (for diagnostics and tests).
    #[getter]
    fn address(&self) -> usize {
        self.mem.as_ptr() as usize
    }
}

/// What keeps a registered caller buffer alive: its export, released (with the GIL) when the
/// engine drops the registration after the import was freed, and never if the device hung.
pub struct Registration(pub HeldBuffer);

impl Drop for Registration {
    fn drop(&mut self) {
        // During interpreter shutdown there is no GIL to take: the export then simply ends with
        // the process.
        let _ = Python::try_attach(|_py| self.0.release());
    }
}
