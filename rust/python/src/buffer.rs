//! Minimal buffer-protocol access for the abi3-py310 build (pyo3 exposes `PyBuffer` only for
//! 3.11+ stable ABI). `Py_buffer`'s layout has been unchanged since Python 3.0 and is part of the
//! stable ABI since 3.11; `PyObject_GetBuffer`/`PyBuffer_Release` are exported by every CPython.

use std::ffi::{c_char, c_int, c_void};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi::{PyObject, Py_ssize_t};
use pyo3::prelude::*;

/// `Py_buffer` from `Include/pybuffer.h` (CPython).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut PyObject,
    len: Py_ssize_t,
    itemsize: Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut Py_ssize_t,
    strides: *mut Py_ssize_t,
    suboffsets: *mut Py_ssize_t,
    internal: *mut c_void,
}

const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;
const PYBUF_C_CONTIGUOUS: c_int = 0x0020 | PYBUF_STRIDES;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// Storage for one `Py_buffer`, on the caller's stack: exporters may point `shape` at fields of
/// the view itself, so it must not move while exported (the guard borrows it mutably).
pub struct BufferSlot(RawBuffer);

impl BufferSlot {
    /// An empty slot.
    pub fn new() -> Self {
        BufferSlot(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        })
    }
}

/// A C-contiguous buffer exported by a Python object; released (with the GIL) on drop.
pub struct BufferGuard<'a, 'py> {
    view: &'a mut RawBuffer,
    _py: Python<'py>,
}

/// Pointer + length of a buffer's bytes, to carry into `Python::detach`.
#[derive(Clone, Copy)]
pub struct RawBytes {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
}

// SAFETY: the exporter keeps the memory alive and in place until `PyBuffer_Release`, which only
// happens when the `BufferGuard` drops, after the detached closure using these bytes returned.
// The bytes themselves have no thread affinity.
unsafe impl Send for RawBytes {}

impl RawBytes {
    /// Pointer and length of `s` (the caller keeps the storage alive while the value is used).
    pub fn from_slice(s: &mut [u8]) -> RawBytes {
        RawBytes {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// The bytes as a shared slice.
    ///
    /// # Safety
    /// The owning `BufferGuard` must be alive for `'a`, and no one may write the buffer
    /// concurrently (callers accept the same data-race semantics as any Python buffer shared
    /// between threads).
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: per the function contract, `ptr` is valid for `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes as a mutable slice.
    ///
    /// # Safety
    /// As `as_slice`, and the buffer must have been acquired writable.
    pub unsafe fn as_mut_slice<'a>(self) -> &'a mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: per the function contract, `ptr` is valid and writable for `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<'a, 'py> BufferGuard<'a, 'py> {
    /// Acquire a C-contiguous buffer of `obj` into `slot`; `writable` additionally requires it
    /// to be writable. Non-buffers, non-contiguous and (for `writable`) read-only buffers raise
    /// `TypeError`.
    pub fn acquire(
        slot: &'a mut BufferSlot,
        obj: &Bound<'py, PyAny>,
        writable: bool,
        what: &str,
    ) -> PyResult<Self> {
        let py = obj.py();
        let view = &mut slot.0;
        // Ask for contiguity only; writability is checked below so read-only objects get a
        // TypeError rather than the exporter's BufferError.
        // SAFETY: `obj` is a valid object (we hold the GIL through `py`), `view` points to a
        // writable Py_buffer-sized struct that stays in place while borrowed.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), view, PYBUF_C_CONTIGUOUS) };
        if rc != 0 {
            let cause = PyErr::take(py)
                .map(|e| e.to_string())
                .unwrap_or_else(|| "unknown error".into());
            let tname = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(PyTypeError::new_err(format!(
                "{what} must be a C-contiguous object supporting the buffer protocol, \
                 not {tname} ({cause})"
            )));
        }
        let guard = BufferGuard { view, _py: py };
        if writable && guard.view.readonly != 0 {
            return Err(PyTypeError::new_err(format!(
                "{what} must be a writable buffer (e.g. bytearray, memoryview of one, numpy \
                 array), got a read-only one"
            )));
        }
        if guard.view.len < 0 || (guard.view.len > 0 && guard.view.buf.is_null()) {
            return Err(PyTypeError::new_err(format!("{what}: invalid buffer")));
        }
        Ok(guard)
    }

    /// Pointer and length of the bytes.
    pub fn bytes(&self) -> RawBytes {
        RawBytes {
            ptr: self.view.buf.cast::<u8>(),
            len: usize::try_from(self.view.len).unwrap_or(0),
        }
    }
}

impl BufferGuard<'_, '_> {
    /// Release the buffer, unless `result` says a DMA of the hung device straight to or from
    /// these pages may still be in flight: then the export (and the object) is kept forever.
    /// Any other failure, a device loss included, leaves the memory untouched by the device.
    pub fn release_unless_in_flight<T>(self, result: &Result<T, exo_vk_engine::EngineError>) {
        if matches!(result, Err(e) if e.caller_memory_in_use()) {
            std::mem::forget(self);
        }
    }
}

impl Drop for BufferGuard<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released exactly
        // once; the GIL is held (the guard carries the `Python<'py>` token of the method that
        // acquired it and is dropped there, outside any `detach`).
        unsafe { PyBuffer_Release(self.view) }
    }
}

/// An exported buffer kept beyond one call (a registration): the `Py_buffer` lives on the heap
/// so it never moves, and is released exactly once, with the GIL, by `release`.
pub struct HeldBuffer {
    view: Box<BufferSlot>,
    released: bool,
}

// SAFETY: the view is only touched under the GIL (acquire in `hold`, release in `release`,
// both called with the GIL held); the bytes it points to have no thread affinity.
unsafe impl Send for HeldBuffer {}
// SAFETY: as above; `&HeldBuffer` exposes only the pointer and length.
unsafe impl Sync for HeldBuffer {}

impl HeldBuffer {
    /// Export `obj`'s C-contiguous buffer (read-only accepted) until `release`.
    pub fn hold(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<HeldBuffer> {
        // On the heap from the start: the exporter may point into the view itself.
        let mut slot = Box::new(BufferSlot::new());
        let guard = BufferGuard::acquire(&mut slot, obj, false, what)?;
        std::mem::forget(guard); // the export is now owned by `HeldBuffer`, released in `release`
        Ok(HeldBuffer {
            view: slot,
            released: false,
        })
    }

    /// Pointer and length of the bytes.
    pub fn bytes(&self) -> RawBytes {
        RawBytes {
            ptr: self.view.0.buf.cast::<u8>(),
            len: usize::try_from(self.view.0.len).unwrap_or(0),
        }
    }

    /// Release the export (the GIL must be held).
    pub fn release(&mut self) {
        if !self.released {
            self.released = true;
            // SAFETY: the view came from a successful PyObject_GetBuffer and is released once;
            // the caller holds the GIL.
            unsafe { PyBuffer_Release(&mut self.view.0) }
        }
    }
}
