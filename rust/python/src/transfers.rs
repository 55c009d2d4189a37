//! Bodies of the transfer methods that hand a Python buffer to the engine: the buffer stays
//! exported while the engine runs (GIL released), and for ever when the device was lost with a
//! DMA from or to it in flight.

use exo_vk_engine::{Engine, EngineError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::args::uint;
use crate::buffer::{self, BufferGuard, BufferSlot};
use crate::errors::{to_pyerr, Op};

/// `write` (`to_host` false: `buf` is read) or `read_into` (`to_host` true: `buf` is written).
pub(crate) fn buffer_transfer(
    py: Python<'_>,
    engine: &Engine,
    alloc: &Bound<'_, PyAny>,
    offset: &Bound<'_, PyAny>,
    buf: &Bound<'_, PyAny>,
    to_host: bool,
) -> PyResult<()> {
    let id = uint(alloc, "alloc")?;
    let offset = uint(offset, "offset")?;
    let mut slot = BufferSlot::new();
    let guard = BufferGuard::acquire(&mut slot, buf, to_host, if to_host { "dst" } else { "src" })?;
    let bytes = guard.bytes();
    let r = py.detach(move || {
        if to_host {
            // SAFETY: `guard` keeps the exported buffer, acquired writable, alive until after
            // this returns.
            let out = unsafe { bytes.as_mut_slice() };
            engine.read_into(id, offset, out)
        } else {
            // SAFETY: `guard` keeps the exported buffer alive until after this returns.
            let data = unsafe { bytes.as_slice() };
            engine.write(id, offset, data)
        }
    });
    guard.release_unless_in_flight(&r);
    r.map_err(|e| to_pyerr(py, Op::Transfer, e))
}

/// `read_file_into`: file bytes into the writable buffer `dst`, exported while the engine's
/// threads read (GIL released).
pub(crate) fn file_into_buffer(
    py: Python<'_>,
    engine: &Engine,
    fd: i32,
    file_offset: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let file_offset = uint(file_offset, "file_offset")?;
    let mut slot = BufferSlot::new();
    let guard = BufferGuard::acquire(&mut slot, dst, true, "dst")?;
    let bytes = guard.bytes();
    let r = py.detach(move || {
        // SAFETY: `guard` keeps the exported buffer, acquired writable, alive until after this
        // returns; as for `read_into`, the caller does not touch it meanwhile.
        let out = unsafe { bytes.as_mut_slice() };
        engine.read_file_into(fd, file_offset, out)
    });
    guard.release_unless_in_flight(&r);
    r.map_err(|e| to_pyerr(py, Op::Transfer, e))
}

/// `read`: a new bytes object of `size` bytes of `alloc` at `offset`, filled once by the engine.
pub(crate) fn read_new_bytes<'py>(
    py: Python<'py>,
    engine: &Engine,
    alloc: &Bound<'py, PyAny>,
    offset: &Bound<'py, PyAny>,
    size: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let id = uint(alloc, "alloc")?;
    let offset = uint(offset, "offset")?;
    let size = uint(size, "size")?;
    // Validate before creating a possibly huge bytes object.
    let total = py
        .detach(|| engine.allocation_size(id))
        .map_err(|e| to_pyerr(py, Op::Transfer, e))?;
    if offset.checked_add(size).is_none_or(|end| end > total) {
        return Err(to_pyerr(
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
        engine.read_into_fresh(id, offset, out)
    });
    if let Err(e) = r {
        if e.caller_memory_in_use() {
            // A late DMA of the hung device may still write the storage: keep it.
            std::mem::forget(obj);
        }
        return Err(to_pyerr(py, Op::Transfer, e));
    }
    // SAFETY: the object is a bytes object (created above).
    Ok(unsafe { obj.cast_into_unchecked::<PyBytes>() })
}
