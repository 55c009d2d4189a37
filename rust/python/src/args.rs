//! Arguments from Python: non-negative ints (`uint`, `index`) with the contract's TypeError and
//! ValueError, and `guarded`, which turns a Rust panic in a method body into
//! `GPUError("internal error: ...")`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use crate::errors::internal_error;

/// Run a method body, turning a Rust panic into `GPUError("internal error: ...")`.
pub(crate) fn guarded<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
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
pub(crate) fn uint(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
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

pub(crate) fn index(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    let v = uint(obj, name)?;
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} is too large: {v}")))
}
