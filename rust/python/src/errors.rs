//! Map engine errors onto the core package's exception classes (`exo_gpu_plugins.errors`), one
//! variant to one class, each class declared with `import_exception!` (a misspelt name is a
//! compile error, not a silent fallback).

use exo_vk_engine::EngineError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pyo3::import_exception!(exo_gpu_plugins.errors, GPUError);
pyo3::import_exception!(exo_gpu_plugins.errors, BackendUnavailableError);
pyo3::import_exception!(exo_gpu_plugins.errors, OutOfMemoryError);
pyo3::import_exception!(exo_gpu_plugins.errors, InvalidHandleError);
pyo3::import_exception!(exo_gpu_plugins.errors, OutOfBoundsError);
pyo3::import_exception!(exo_gpu_plugins.errors, DeviceNotFoundError);
pyo3::import_exception!(exo_gpu_plugins.errors, DeviceLostError);
pyo3::import_exception!(exo_gpu_plugins.errors, BackendClosedError);
pyo3::import_exception!(exo_gpu_plugins.errors, TransferError);
pyo3::import_exception!(exo_gpu_plugins.errors, FileReadError);
pyo3::import_exception!(exo_gpu_plugins.errors, InteropError);
pyo3::import_exception!(exo_gpu_plugins.errors, ConfigError);

/// What kind of call failed (transfers map device failures to `TransferError`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// write / read / read_into / copy / write_from_file.
    Transfer,
    /// Anything else.
    Other,
}

/// `GPUError("internal error: ...")` for a caught panic.
pub fn internal_error(_py: Python<'_>, msg: &str) -> PyErr {
    GPUError::new_err(format!("internal error: {msg}"))
}

/// Convert an engine error into the matching Python exception.
pub fn to_pyerr(_py: Python<'_>, op: Op, e: EngineError) -> PyErr {
    let msg = e.to_string();
    match e {
        EngineError::Unavailable(_) => BackendUnavailableError::new_err(msg),
        EngineError::OutOfMemory(_) => OutOfMemoryError::new_err(msg),
        EngineError::InvalidAllocation(_) => InvalidHandleError::new_err(msg),
        EngineError::OutOfBounds(_) => OutOfBoundsError::new_err(msg),
        EngineError::NoSuchDevice(_) => DeviceNotFoundError::new_err(msg),
        EngineError::Closed => BackendClosedError::new_err(msg),
        EngineError::InvalidArgument(_) => PyValueError::new_err(msg),
        EngineError::Config(_) => ConfigError::new_err(msg),
        EngineError::FileRead(_) => FileReadError::new_err(msg),
        EngineError::Interop(_) => InteropError::new_err(msg),
        EngineError::Vulkan { .. } if op == Op::Transfer => TransferError::new_err(msg),
        EngineError::DeviceLost(_) | EngineError::DeviceLostInFlight(_) => {
            DeviceLostError::new_err(msg)
        }
        EngineError::Validation(_) | EngineError::Vulkan { .. } | EngineError::Internal(_) => {
            GPUError::new_err(msg)
        }
    }
}
