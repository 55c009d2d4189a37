//! Interop objects: `Retained`, which keeps an allocation's memory alive for a consumer (a
//! DLPack tensor, a CUDA mapping) beyond `free` and `close`.

use exo_vk_engine::Retained;
use pyo3::prelude::*;

/// An allocation's memory, alive while this object lives: the owner an export hands to its
/// consumer. `host_address` is where the CPU can use it in place, or None.
#[pyclass(module = "exo_gpu_vulkan._native", name = "Retained", frozen)]
pub struct PyRetained {
    /// Taken in `Drop`, where the memory is let go with the GIL released (so `Some` until then).
    held: Option<Retained>,
}

impl PyRetained {
    pub fn new(retained: Retained) -> Self {
        PyRetained {
            held: Some(retained),
        }
    }
}

impl Drop for PyRetained {
    fn drop(&mut self) {
        let held = self.held.take();
        // The last reference may free (maybe GiBs of) device memory: not with the GIL held.
        // Without an interpreter (shutdown) the memory is simply dropped here.
        let _ = Python::try_attach(move |py| py.detach(move || drop(held)));
    }
}

#[pymethods]
impl PyRetained {
    /// Host address of the first byte where the CPU can read and write the memory in place
    /// (host-visible, coherent memory), else None.
    #[getter]
    fn host_address(&self) -> Option<usize> {
        self.held.as_ref().and_then(Retained::host_address)
    }

    /// The allocation's size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.held.as_ref().map_or(0, Retained::size)
    }
}
