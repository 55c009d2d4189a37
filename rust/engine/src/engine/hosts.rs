//! The facade's pinned and registered host memory: ranges the devices reach by one DMA, kept
//! in the engine's host table and found by address on every transfer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::host::{HostMemory, HostRange};
use crate::sync::{read, write};

use super::{Engine, Inner};

impl Engine {
    /// `size` zeroed bytes of host memory device `index` reads and writes by DMA (host-visible
    /// device memory): `write`/`read_into` from or to it take one DMA, no staging copy. The
    /// memory stays valid while the returned value (or a clone) lives, even after
    /// `host_release` or `close`, which only stop treating it as pinned.
    pub fn host_alloc(&self, index: usize, size: u64) -> Result<HostMemory> {
        self.call(|i| {
            let device = i.device(index)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            let range = Arc::new(crate::host::allocate(&device.ctx, id, size)?);
            let inserted = write(&i.hosts).insert(Arc::clone(&range));
            // A refused range is dropped here, after the table's lock was released.
            inserted.map_err(|(e, _rejected)| e)?;
            Ok(HostMemory(range))
        })
    }

    /// Stop treating pinned memory `id` as pinned (its memory lives on while the `HostMemory`
    /// does).
    pub fn host_release(&self, id: u64) -> Result<()> {
        self.host_unregister(id)
    }

    /// Register the caller's `[ptr, ptr+len)` on device `index`: its pages are imported once
    /// (VK_EXT_external_memory_host), and later transfers from or to it are one DMA. `keep`
    /// must keep the memory alive; it is dropped once the import is freed (never, if the device
    /// hangs). Returns the registration id.
    ///
    /// # Safety
    /// `[ptr, ptr+len)` must stay valid (mapped, not freed) until `keep` is dropped.
    pub unsafe fn host_register(
        &self,
        index: usize,
        ptr: *mut u8,
        len: usize,
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<u64> {
        self.call(|i| {
            let device = i.device(index)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            let range = Arc::new(crate::host::register(&device.ctx, id, ptr, len, keep)?);
            let inserted = write(&i.hosts).insert(range);
            // A refused range (its import, the caller's buffer) is dropped here, after the
            // table's lock was released.
            inserted.map(|()| id).map_err(|(e, _rejected)| e)
        })
    }

    /// Forget registration (or pinned buffer) `id`; its import is freed once no transfer uses it.
    pub fn host_unregister(&self, id: u64) -> Result<()> {
        self.call(|i| {
            let removed = write(&i.hosts).remove(id);
            match removed {
                Some(r) => {
                    drop(r); // outside the table's lock
                    Ok(())
                }
                None => Err(EngineError::InvalidArgument(format!(
                    "no pinned or registered host buffer with id {id}"
                ))),
            }
        })
    }
}

impl Inner {
    /// The pinned/registered range on device `index` holding `[ptr, ptr+len)`, if any.
    pub(super) fn host_range(
        &self,
        ptr: *const u8,
        len: usize,
        index: usize,
    ) -> Option<(Arc<HostRange>, u64)> {
        let table = read(&self.hosts);
        if table.is_empty() {
            return None;
        }
        table.find(index, ptr, len)
    }
}
