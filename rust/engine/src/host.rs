//! Host memory the device reads and writes directly: engine-allocated pinned buffers (HOST_VISIBLE
//! device memory, the equivalent of `cudaHostAlloc`) and caller buffers registered once by
//! importing their pages (VK_EXT_external_memory_host, the equivalent of `cudaHostRegister`).
//! Transfers whose host side lies inside one of them are a single DMA, no staging copy.
//!
//! The table is ordered by address, so finding the range around a pointer is O(log n). A range is
//! reference counted: the table holds one reference, each transfer using it another, the Python
//! object of a pinned buffer a third; its memory and its import are released when the last one
//! drops, and never while the device may still touch them (on a hung device they leak, together
//! with whatever keeps a registered caller buffer alive).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;

use crate::context::DeviceContext;
use crate::error::{EngineError, Result};
use crate::import::{import_align, import_host, release_imports, HostImport};
use crate::memory::{BufView, GpuBuffer, Kind};

/// What backs a range.
enum Backing {
    /// Host-visible device memory the engine allocated.
    Allocated(GpuBuffer),
    /// A caller's pages imported into the device, and what keeps them alive (dropped after the
    /// import is freed).
    Imported {
        import: Option<HostImport>,
        keep: Option<Box<dyn Any + Send + Sync>>,
    },
}

/// A host range the device reaches directly.
pub(crate) struct HostRange {
    pub(crate) id: u64,
    pub(crate) ctx: Arc<DeviceContext>,
    /// First byte of the range the caller sees.
    start: NonNull<u8>,
    pub(crate) len: usize,
    /// The transfer buffer and the offset of `start` in it.
    pub(crate) buffer: vk::Buffer,
    pub(crate) buffer_offset: u64,
    /// For flush/invalidate of non-coherent pinned memory (`None`: imported, no mapping).
    view: Option<BufView>,
    backing: Backing,
}

// SAFETY: `start` points into memory this range owns (or keeps alive through `keep`) until it
// drops; the bytes have no thread affinity, concurrent access follows the caller's buffer rules.
unsafe impl Send for HostRange {}
// SAFETY: as above; `&HostRange` exposes the pointer value and plain fields only.
unsafe impl Sync for HostRange {}

impl HostRange {
    /// Address of the first byte.
    pub(crate) fn addr(&self) -> usize {
        self.start.as_ptr() as usize
    }

    /// Pointer to the first byte.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.start.as_ptr()
    }

    /// Device index of the range.
    pub(crate) fn device_index(&self) -> usize {
        self.ctx.info.index
    }

    /// Make host writes to `[off, off+len)` visible to the device.
    pub(crate) fn flush(&self, off: u64, len: u64) -> Result<()> {
        match &self.view {
            Some(v) => crate::memory::flush(self.ctx.raw(), v, off, len),
            None => Ok(()),
        }
    }

    /// Make device writes to `[off, off+len)` visible to the host.
    pub(crate) fn invalidate(&self, off: u64, len: u64) -> Result<()> {
        match &self.view {
            Some(v) => crate::memory::invalidate(self.ctx.raw(), v, off, len),
            None => Ok(()),
        }
    }
}

impl Drop for HostRange {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        if ctx.is_hung() {
            // The device may still DMA into the memory: keep all of it (and the caller's buffer).
            // The import is plain handles (left alone); `keep` must not run its drop.
            if let Backing::Imported { keep, .. } = &mut self.backing {
                std::mem::forget(keep.take());
            }
            return;
        }
        match &mut self.backing {
            Backing::Allocated(buf) => ctx.mem.destroy_buffer(ctx.raw(), buf),
            Backing::Imported { import, keep } => {
                if let Some(i) = import.take() {
                    release_imports(ctx.raw(), vec![i]);
                }
                drop(keep.take());
            }
        }
    }
}

/// Pinned memory handed to the caller: valid as long as this value (and any clone) lives, even
/// after the engine stopped treating it as pinned.
#[derive(Clone)]
pub struct HostMemory(pub(crate) Arc<HostRange>);

impl HostMemory {
    /// The id to pass to `Engine::host_release`.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// First byte (writable; zero-filled when allocated).
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether the buffer is empty (never: sizes are > 0).
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

/// Allocate `size` zeroed bytes of host-visible memory on `ctx` that it reaches by DMA.
pub(crate) fn allocate(ctx: &Arc<DeviceContext>, id: u64, size: u64) -> Result<HostRange> {
    if size == 0 {
        return Err(EngineError::InvalidArgument(
            "host buffer size must be > 0".into(),
        ));
    }
    let len = usize::try_from(size)
        .map_err(|_| EngineError::OutOfMemory(format!("{size} bytes exceeds address space")))?;
    let usage = vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST;
    // Coherent memory only: the caller writes any bytes at any time with no flush, and an
    // invalidate (rounded out to whole atoms) after a download would discard unflushed writes
    // next to the range. The download type first (often cached), else the upload type.
    let mut chosen = None;
    for kind in [Kind::Download, Kind::Upload] {
        let mut buf = ctx
            .mem
            .create_buffer(ctx.raw(), size, usage, kind, "exo-host")?;
        if buf.mapped.is_some() && buf.coherent {
            chosen = Some(buf);
            break;
        }
        ctx.mem.destroy_buffer(ctx.raw(), &mut buf);
    }
    let Some((buf, start)) = chosen.and_then(|b| b.mapped.map(|p| (b, p))) else {
        return Err(EngineError::Unavailable(
            "the device has no host-visible, host-coherent memory for pinned buffers".into(),
        ));
    };
    let view = buf.view();
    crate::memcpy::advise_huge_pages(start.as_ptr(), len);
    // SAFETY: the mapping holds `len` bytes nobody else uses yet.
    unsafe { crate::memcpy::zero(start.as_ptr(), len) };
    crate::memory::flush(ctx.raw(), &view, 0, size)?;
    Ok(HostRange {
        id,
        ctx: Arc::clone(ctx),
        start,
        len,
        buffer: buf.buffer,
        buffer_offset: 0,
        view: Some(view),
        backing: Backing::Allocated(buf),
    })
}

/// Register `[ptr, ptr+len)` of a caller's buffer on `ctx`: its pages (rounded out to the import
/// alignment: every page overlapping the buffer is mapped while the buffer lives) are imported
/// once. `keep` holds the buffer alive and is dropped after the import is freed.
pub(crate) fn register(
    ctx: &Arc<DeviceContext>,
    id: u64,
    ptr: *mut u8,
    len: usize,
    keep: Box<dyn Any + Send + Sync>,
) -> Result<HostRange> {
    let start = NonNull::new(ptr)
        .filter(|_| len > 0)
        .ok_or_else(|| EngineError::InvalidArgument("cannot register an empty buffer".into()))?;
    let align = import_align(ctx.raw()).ok_or_else(|| {
        EngineError::Unavailable(format!(
            "device {} cannot import host memory (no VK_EXT_external_memory_host)",
            ctx.info.index
        ))
    })?;
    let addr = ptr as usize;
    let base = addr & !(align - 1);
    let end = addr
        .checked_add(len)
        .map(|e| e.next_multiple_of(align))
        .ok_or_else(|| EngineError::InvalidArgument("buffer wraps the address space".into()))?;
    // A lost device and exhausted memory are failures of their own; anything else is the
    // driver refusing these pages (read-only or file-backed memory, no importable type, ...).
    let import =
        import_host(ctx.raw(), base as *mut u8, (end - base) as u64).map_err(|e| match e {
            EngineError::DeviceLost(_)
            | EngineError::DeviceLostInFlight(_)
            | EngineError::OutOfMemory(_)
            | EngineError::Closed => e,
            other => EngineError::Unavailable(format!(
                "the driver refused to import the buffer: {other}"
            )),
        })?;
    Ok(HostRange {
        id,
        ctx: Arc::clone(ctx),
        start,
        len,
        buffer: import.buffer,
        buffer_offset: (addr - base) as u64,
        view: None,
        backing: Backing::Imported {
            import: Some(import),
            keep: Some(keep),
        },
    })
}

/// The engine's host ranges, by (device, address) and by id: one buffer may be registered (or
/// pinned memory used) with several devices; ranges overlap only across devices.
#[derive(Default)]
pub(crate) struct HostTable {
    by_addr: BTreeMap<(usize, usize), Arc<HostRange>>,
    by_id: HashMap<u64, (usize, usize)>,
}

impl HostTable {
    /// Add a range (refused when it overlaps one already there). A refused range comes back
    /// with the error, for the caller to drop after releasing the table's lock (dropping the
    /// last reference frees its memory or import and releases a caller's buffer).
    pub(crate) fn insert(
        &mut self,
        r: Arc<HostRange>,
    ) -> std::result::Result<(), (EngineError, Arc<HostRange>)> {
        let (dev, a, n) = (r.device_index(), r.addr(), r.len);
        let before = self
            .by_addr
            .range((dev, 0)..(dev, a.saturating_add(n)))
            .next_back()
            .map(|(_, o)| (o.addr(), o.len));
        if let Some((oa, on)) = before {
            if oa + on > a {
                return Err((
                    EngineError::InvalidArgument(
                        "the buffer overlaps one already registered or pinned".into(),
                    ),
                    r,
                ));
            }
        }
        self.by_id.insert(r.id, (dev, a));
        self.by_addr.insert((dev, a), r);
        Ok(())
    }

    /// Remove the range with `id`.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Arc<HostRange>> {
        let a = self.by_id.remove(&id)?;
        self.by_addr.remove(&a)
    }

    /// The range of device `dev` holding all of `[ptr, ptr+len)`, with the offset of `ptr` in
    /// it.
    pub(crate) fn find(
        &self,
        dev: usize,
        ptr: *const u8,
        len: usize,
    ) -> Option<(Arc<HostRange>, u64)> {
        let a = ptr as usize;
        let (_, r) = self.by_addr.range((dev, 0)..=(dev, a)).next_back()?;
        let end = a.checked_add(len)?;
        (end <= r.addr() + r.len).then(|| (Arc::clone(r), (a - r.addr()) as u64))
    }

    /// Every range (the table is emptied).
    pub(crate) fn take_all(&mut self) -> Vec<Arc<HostRange>> {
        self.by_id.clear();
        std::mem::take(&mut self.by_addr).into_values().collect()
    }

    /// Whether there is no range (the transfer paths then skip the lookup).
    pub(crate) fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}
