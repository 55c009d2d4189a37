//! `_inject_fault`'s body: the engine's fault injection (feature `fault-injection`), or a
//! RuntimeError in builds without it.

use exo_vk_engine::Engine;
#[cfg(feature = "fault-injection")]
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[cfg(feature = "fault-injection")]
use crate::errors::{to_pyerr, Op};

#[cfg(feature = "fault-injection")]
pub(crate) fn inject(
    py: Python<'_>,
    engine: &Engine,
    kind: &str,
    index: usize,
    timeout_ms: u64,
) -> PyResult<()> {
    match kind {
        "hang" => {
            let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
            py.detach(|| engine.inject_hang(index, timeout))
                .map_err(|e| to_pyerr(py, Op::Other, e))
        }
        "panic" => py
            .detach(|| engine.inject_panic())
            .map_err(|e| to_pyerr(py, Op::Other, e)),
        "device_lost" => py
            .detach(|| engine.inject_device_lost(index))
            .map_err(|e| to_pyerr(py, Op::Other, e)),
        other => Err(PyValueError::new_err(format!(
            "unknown fault kind {other:?} (expected \"panic\", \"device_lost\" or \"hang\")"
        ))),
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn inject(
    _py: Python<'_>,
    _engine: &Engine,
    _kind: &str,
    _index: usize,
    _timeout_ms: u64,
) -> PyResult<()> {
    Err(pyo3::exceptions::PyRuntimeError::new_err(
        "exo_gpu_vulkan._native was built without the fault-injection feature",
    ))
}
