//! The facade's interop calls: exportable allocations, opaque-fd export and import, and
//! references that keep an allocation's memory alive for a consumer (a DLPack tensor, a CUDA
//! mapping) after the allocation was freed or the engine closed.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::allocation::{new_exportable, new_imported, Allocation};
use crate::error::Result;
use crate::export::ExportInfo;
use crate::memory::MemoryTypes;
use crate::sync::write;
use crate::tuning::tuning;

use super::Engine;

/// An allocation's memory, kept alive for as long as this value lives (whatever happens to the
/// allocation id or the engine meanwhile): what an export hands its consumer.
pub struct Retained(Arc<Allocation>);

impl Retained {
    /// Host address of the first byte, where the CPU reads and writes the memory in place
    /// (host-visible, coherent memory only).
    pub fn host_address(&self) -> Option<usize> {
        self.0.host_address()
    }

    /// The allocation's size in bytes.
    pub fn size(&self) -> u64 {
        self.0.size
    }
}

impl Engine {
    /// Allocate `size` bytes on device `index` as a dedicated memory object that `export_fd`
    /// can share (zero-filled when `zeroed`); `Interop` where the device cannot share memory.
    pub fn allocate_exportable(&self, index: usize, size: u64, zeroed: bool) -> Result<u64> {
        self.call(|i| {
            let device = i.device(index)?;
            let alloc = new_exportable(&device, size, zeroed)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            write(&i.allocations).insert(id, Arc::new(alloc));
            Ok(id)
        })
    }

    /// A new opaque file descriptor of allocation `id`'s memory (the caller owns it) and what a
    /// receiver needs to open it. Work on the device is not waited for: synchronize first.
    pub fn export_fd(&self, id: u64) -> Result<(OwnedFd, ExportInfo)> {
        self.call(|i| i.allocation(id)?.export())
    }

    /// Open memory exported elsewhere (`fd` borrowed, never closed) as a new allocation of
    /// `size` bytes on device `index`.
    pub fn import_fd(&self, index: usize, fd: RawFd, size: u64, info: ExportInfo) -> Result<u64> {
        self.call(|i| {
            let device = i.device(index)?;
            let alloc = new_imported(&device, fd, size, info)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            write(&i.allocations).insert(id, Arc::new(alloc));
            Ok(id)
        })
    }

    /// Keep allocation `id`'s memory alive beyond `free` and `close`, for a consumer.
    pub fn retain(&self, id: u64) -> Result<Retained> {
        self.call(|i| Ok(Retained(i.allocation(id)?)))
    }

    /// Whether every allocation on device `index` is host-visible and coherent memory (UMA and
    /// CPU devices), so that the CPU can always use it in place.
    pub fn allocations_host_mapped(&self, index: usize) -> Result<bool> {
        self.call(|i| {
            let info = i.info(index)?;
            let types = MemoryTypes::choose(&info.memory_types, tuning().upload_cached);
            Ok(types.every_allocation_mapped(&info.memory_types))
        })
    }
}
