//! Map engine errors onto the core package's exception classes (`exo_gpu_plugins.errors`),
//! imported lazily and cached; builtin exceptions are the fallback if the core is missing.

use exo_vk_engine::EngineError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyType};

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// What kind of call failed (transfers map device failures to `TransferError`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// write / read / read_into / copy.
    Transfer,
    /// Anything else.
    Other,
}

fn class<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyType>> {
    let module = ERRORS_MODULE
        .get_or_try_init(py, || {
            py.import("exo_gpu_plugins.errors").map(Bound::unbind)
        })
        .ok()?;
    module
        .bind(py)
        .getattr(name)
        .ok()?
        .cast_into::<PyType>()
        .ok()
}

fn raise(py: Python<'_>, name: &str, msg: String) -> PyErr {
    match class(py, name) {
        Some(ty) => PyErr::from_type(ty, msg),
        None => PyRuntimeError::new_err(format!("{name}: {msg}")),
    }
}

/// `GPUError("internal error: ...")` for a caught panic.
pub fn internal_error(py: Python<'_>, msg: &str) -> PyErr {
    raise(py, "GPUError", format!("internal error: {msg}"))
}

/// Convert an engine error into the matching Python exception.
pub fn to_pyerr(py: Python<'_>, op: Op, e: EngineError) -> PyErr {
    let msg = e.to_string();
    match e {
        EngineError::Unavailable(_) => raise(py, "BackendUnavailableError", msg),
        EngineError::OutOfMemory(_) => raise(py, "OutOfMemoryError", msg),
        EngineError::InvalidAllocation(_) => raise(py, "InvalidHandleError", msg),
        EngineError::OutOfBounds(_) => raise(py, "OutOfBoundsError", msg),
        EngineError::NoSuchDevice(_) => raise(py, "DeviceNotFoundError", msg),
        EngineError::Closed => raise(py, "BackendClosedError", msg),
        EngineError::InvalidArgument(_) => PyValueError::new_err(msg),
        EngineError::Vulkan { .. } if op == Op::Transfer => raise(py, "TransferError", msg),
        EngineError::DeviceLost(_)
        | EngineError::Validation(_)
        | EngineError::Vulkan { .. }
        | EngineError::Internal(_) => raise(py, "GPUError", msg),
    }
}
