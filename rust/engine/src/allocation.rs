//! User allocations: the engine's table holds one `Arc` per allocation, an operation in flight
//! another, so memory is released only when the last of them drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::context::DeviceContext;
use crate::error::{EngineError, Result};
use crate::memory::{allocation_usage, BufView, GpuBuffer, Kind, SlabRef};
use crate::transfer::EngineDevice;

#[cfg(unix)]
use crate::export::{ExportInfo, ExternalMemory};
#[cfg(unix)]
use std::os::fd::{OwnedFd, RawFd};

enum Backing {
    Own(GpuBuffer),
    Slab(SlabRef),
    /// A dedicated memory object that can leave the engine (exportable, or imported).
    #[cfg(unix)]
    External(ExternalMemory),
}

/// A user allocation. The table holds one `Arc`; an operation in flight holds another, so
/// `free` never pulls memory out from under a running copy.
pub struct Allocation {
    pub(crate) dev: Arc<EngineDevice>,
    pub(crate) view: BufView,
    backing: Backing,
    /// User-visible size (the backing range is rounded up to 4 bytes for vkCmdFillBuffer).
    pub(crate) size: u64,
}

impl Allocation {
    /// Index of the device the allocation lives on.
    pub fn device_index(&self) -> usize {
        self.dev.ctx.info.index
    }

    pub(crate) fn ctx(&self) -> &DeviceContext {
        &self.dev.ctx
    }

    /// A new descriptor of the allocation's memory and what a receiver needs to open it;
    /// `Interop` unless it was allocated exportable (or imported).
    #[cfg(unix)]
    pub(crate) fn export(&self) -> Result<(OwnedFd, ExportInfo)> {
        match &self.backing {
            Backing::External(m) => m.export(self.ctx().raw()),
            _ => Err(EngineError::Interop(
                "this allocation cannot be shared: allocate it with exportable=True".into(),
            )),
        }
    }

    /// The host address of the allocation's first byte, where the CPU can read and write it in
    /// place (host-visible, coherent memory); `None` elsewhere.
    pub(crate) fn host_address(&self) -> Option<usize> {
        if self.view.coherent {
            self.view.mapped.map(|p| p.as_ptr() as usize)
        } else {
            None
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        let ctx = &self.dev.ctx;
        match &mut self.backing {
            Backing::Own(buf) => ctx.mem.destroy_buffer(ctx.raw(), buf),
            Backing::Slab(r) => ctx.mem.free_slab(ctx.raw(), *r),
            #[cfg(unix)]
            Backing::External(m) => m.destroy(ctx.raw(), &ctx.mem),
        }
        let d = &self.dev;
        d.live_allocations.fetch_sub(1, Ordering::Relaxed);
        d.live_bytes.fetch_sub(self.size, Ordering::Relaxed);
        if let Some(h) = d.heap_bytes.get(self.view.heap) {
            h.fetch_sub(self.view.len, Ordering::Relaxed);
        }
    }
}

/// `size` rounded up to the 4-byte unit of vkCmdFillBuffer, so the whole range can be zeroed.
fn buffer_size_of(size: u64) -> Result<u64> {
    if size == 0 {
        return Err(EngineError::InvalidArgument(
            "allocation size must be > 0".into(),
        ));
    }
    size.checked_add(3)
        .map(|s| s & !3)
        .ok_or_else(|| EngineError::OutOfMemory(format!("{size} bytes is too large")))
}

/// Refuse a buffer of `buffer_size` bytes (for `size` asked) that the device cannot hold.
/// maxMemoryAllocationSize is advice, not a limit: the spec lets larger allocations fail with
/// VK_ERROR_OUT_OF_DEVICE_MEMORY (mapped to OutOfMemory), and some drivers report a smaller
/// figure than they grant. So only maxBufferSize and the heap sizes refuse up front.
fn check_buffer_size(dev: &EngineDevice, size: u64, buffer_size: u64) -> Result<()> {
    let info = &dev.ctx.info;
    if let Some(max) = info.max_buffer_size {
        if buffer_size > max {
            return Err(EngineError::OutOfMemory(format!(
                "{size} bytes exceeds maxBufferSize ({max}) of device {}",
                info.index
            )));
        }
    }
    if info.heaps.iter().all(|h| buffer_size > h.size) {
        return Err(EngineError::OutOfMemory(format!(
            "{size} bytes exceeds every memory heap of device {}",
            info.index
        )));
    }
    Ok(())
}

/// Exportable buffers of at least this many bytes are rounded up to a whole number of
/// `EXPORT_PAGE`s (at most 3 % more memory).
const EXPORT_ROUNDED_MIN: u64 = 64 << 20;
/// CUDA imports a memory object that is a whole number of 2 MiB pages ~50x faster than one that
/// is not (a checkpoint's 8630562816 bytes on an H100: 1 ms rounded against 52-61 ms;
/// benchmarks/RESULTS.md), so large exportable buffers end on a 2 MiB boundary.
const EXPORT_PAGE: u64 = 2 << 20;

/// The buffer size of an exportable (or imported) allocation of `size` bytes. The exporter and
/// every importer compute it alike: a dedicated import must be the exporter's buffer exactly.
fn export_buffer_size(size: u64) -> Result<u64> {
    let buffer_size = buffer_size_of(size)?;
    if buffer_size < EXPORT_ROUNDED_MIN {
        return Ok(buffer_size);
    }
    buffer_size
        .checked_next_multiple_of(EXPORT_PAGE)
        .ok_or_else(|| EngineError::OutOfMemory(format!("{size} bytes is too large")))
}

/// Count a new allocation on its device and wrap it (counted before anything can fail, so
/// `Drop`'s decrement always matches).
fn counted(dev: &Arc<EngineDevice>, view: BufView, backing: Backing, size: u64) -> Allocation {
    dev.live_allocations.fetch_add(1, Ordering::Relaxed);
    dev.live_bytes.fetch_add(size, Ordering::Relaxed);
    if let Some(h) = dev.heap_bytes.get(view.heap) {
        h.fetch_add(view.len, Ordering::Relaxed);
    }
    Allocation {
        dev: Arc::clone(dev),
        view,
        backing,
        size,
    }
}

/// An exportable allocation of `size` bytes: a dedicated memory object that `Allocation::export`
/// hands out as an opaque file descriptor (zero-filled when `zeroed`).
#[cfg(unix)]
pub(crate) fn new_exportable(
    dev: &Arc<EngineDevice>,
    size: u64,
    zeroed: bool,
) -> Result<Allocation> {
    let buffer_size = export_buffer_size(size)?;
    check_buffer_size(dev, size, buffer_size)?;
    let ctx = &dev.ctx;
    let memory = ExternalMemory::allocate(ctx.raw(), &ctx.mem, buffer_size)?;
    let alloc = counted(dev, memory.view(), Backing::External(memory), size);
    dev.prepare_fresh(&alloc.view, zeroed)?;
    Ok(alloc)
}

/// An allocation over memory another engine exported (`fd` borrowed; see
/// `ExternalMemory::import`). Its bytes are whatever the exporter holds.
#[cfg(unix)]
pub(crate) fn new_imported(
    dev: &Arc<EngineDevice>,
    fd: RawFd,
    size: u64,
    info: ExportInfo,
) -> Result<Allocation> {
    let buffer_size = export_buffer_size(size)?;
    let ctx = &dev.ctx;
    let memory = ExternalMemory::import(ctx.raw(), &ctx.mem, fd, buffer_size, info).map_err(
        |e| match e {
            // The sizes a refusal names are the buffer's: say which size the sender claimed.
            EngineError::Interop(why) => {
                EngineError::Interop(format!("shared memory claimed as {size} bytes: {why}"))
            }
            other => other,
        },
    )?;
    Ok(counted(dev, memory.view(), Backing::External(memory), size))
}

/// Create a user allocation of `size` bytes on `dev`, zero-filled when `zeroed` (otherwise its
/// bytes are whatever the memory held: for callers that overwrite all of it before reading).
pub(crate) fn new_allocation(
    dev: &Arc<EngineDevice>,
    size: u64,
    zeroed: bool,
) -> Result<Allocation> {
    let buffer_size = buffer_size_of(size)?;
    check_buffer_size(dev, size, buffer_size)?;
    let ctx = &dev.ctx;
    let plan = &dev.plan;
    let kind = if ctx.mem.types.has_mapped() && buffer_size <= plan.map_alloc_max {
        Kind::DeviceMapped
    } else {
        Kind::Device
    };
    let make = |kind: Kind| -> Result<(BufView, Backing)> {
        // Some drivers (lavapipe) grant allocations far past a heap's size: refuse those here.
        let _room = ctx.mem.reserve(ctx.raw(), kind, buffer_size)?;
        if buffer_size <= plan.small_max {
            let (view, r) = ctx.mem.allocate_slab(ctx.raw(), kind, buffer_size)?;
            Ok((view, Backing::Slab(r)))
        } else {
            let buf = ctx.mem.create_buffer(
                ctx.raw(),
                buffer_size,
                allocation_usage(),
                kind,
                "exo-alloc",
            )?;
            Ok((buf.view(), Backing::Own(buf)))
        }
    };
    let (view, backing) = match make(kind) {
        // Host-visible device memory can be scarcer (a BAR smaller than VRAM): fall back to
        // plain device memory, which the copy paths reach by DMA.
        Err(EngineError::OutOfMemory(_)) if kind == Kind::DeviceMapped => make(Kind::Device)?,
        other => other?,
    };
    let kind = if view.mapped.is_some() {
        kind
    } else {
        Kind::Device
    };
    let alloc = counted(dev, view, backing, size);
    if kind == Kind::DeviceMapped && alloc.view.mapped.is_none() {
        return Err(EngineError::Internal(
            "gpu-allocator returned non-host-visible memory for a mapped allocation".into(),
        ));
    }
    dev.prepare_fresh(&alloc.view, zeroed)?;
    Ok(alloc)
}
