//! One device's half of a link (`Side`: its command ring and its view of each ring slot) and
//! the page-aligned host memory of a shared ring (`HostRing`).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;

use crate::context::DeviceContext;
use crate::error::{EngineError, Result};
use crate::import::{import_host, release_imports, HostImport};
use crate::memcpy;
use crate::memory::{BufView, GpuBuffer, Kind};
use crate::slots::{CmdSlot, Frame, Slots};

/// Page-aligned host memory for the shared ring.
pub(super) struct HostRing {
    pub(super) ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain heap memory owned by the ring; devices access it only while a copy holds the
// link's mutex.
unsafe impl Send for HostRing {}
// SAFETY: as above.
unsafe impl Sync for HostRing {}

impl HostRing {
    pub(super) fn new(len: usize, align: usize) -> Result<HostRing> {
        let layout = Layout::from_size_align(len, align)
            .map_err(|e| EngineError::OutOfMemory(format!("cross-device ring: {e}")))?;
        // SAFETY: `len > 0` (a ring has at least two slots of at least 64 KiB).
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            EngineError::OutOfMemory(format!("cannot allocate a {len}-byte cross-device ring"))
        })?;
        memcpy::advise_huge_pages(ptr.as_ptr(), len);
        // Fault every page in (in parallel) before the drivers pin them.
        // SAFETY: the allocation holds `len` bytes nobody else uses yet.
        unsafe { memcpy::zero(ptr.as_ptr(), len) };
        Ok(HostRing { ptr, layout })
    }
}

impl Drop for HostRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// One device's half of a link: command slots on one of its DMA queues (the download queue on
/// the source side, the upload queue on the destination side) and its view of each ring slot.
pub(super) struct Side {
    pub(super) ctx: Arc<DeviceContext>,
    /// The command ring on the side's queue (one slot per ring slot in flight at most).
    cmds: Slots<CmdSlot>,
    /// Per ring slot: the timeline value of its latest DMA (0: none yet).
    values: Vec<u64>,
    /// Per slot: the buffer holding it and the slot's offset in that buffer.
    pub(super) slots: Vec<(vk::Buffer, u64)>,
    imports: Vec<HostImport>,
    staging: Option<GpuBuffer>,
}

impl Side {
    pub(super) fn new(ctx: &Arc<DeviceContext>, count: usize, source: bool) -> Result<Side> {
        let queue = if source {
            Arc::clone(&ctx.download_queue)
        } else {
            Arc::clone(&ctx.upload_queue)
        };
        Ok(Side {
            ctx: Arc::clone(ctx),
            cmds: Slots::new(queue, count),
            values: vec![0; count],
            slots: Vec::new(),
            imports: Vec::new(),
            staging: None,
        })
    }

    /// Import every slot of `ring` (`count` slots of `slot` bytes).
    pub(super) fn import_ring(&mut self, ring: &HostRing, slot: u64, count: usize) -> Result<()> {
        for i in 0..count {
            let off = usize::try_from(slot * i as u64)
                .map_err(|_| EngineError::OutOfMemory("ring exceeds address space".into()))?;
            // SAFETY: `off + slot` lies within the ring's allocation.
            let ptr = unsafe { ring.ptr.as_ptr().add(off) };
            let imp = import_host(self.ctx.raw(), ptr, slot)?;
            self.slots.push((imp.buffer, 0));
            self.imports.push(imp);
        }
        Ok(())
    }

    /// Give up imported slots (before falling back to staging).
    pub(super) fn drop_imports(&mut self) {
        self.slots.clear();
        let imports = std::mem::take(&mut self.imports);
        release_imports(self.ctx.raw(), imports);
    }

    /// A host-visible staging ring of this device's own: written by the device (`download`,
    /// the source side) or read by it.
    pub(super) fn own_staging(&mut self, slot: u64, count: usize, download: bool) -> Result<()> {
        let (kind, usage, name) = if download {
            (
                Kind::Download,
                vk::BufferUsageFlags::TRANSFER_DST,
                "exo-cross-download",
            )
        } else {
            (
                Kind::Upload,
                vk::BufferUsageFlags::TRANSFER_SRC,
                "exo-cross-upload",
            )
        };
        let ctx = &self.ctx;
        let mut buf = ctx
            .mem
            .create_buffer(ctx.raw(), slot * count as u64, usage, kind, name)?;
        if buf.mapped.is_none() {
            ctx.mem.destroy_buffer(ctx.raw(), &mut buf);
            return Err(EngineError::Internal(
                "cross-device staging memory is not host-visible".into(),
            ));
        }
        self.slots = (0..count).map(|i| (buf.buffer, slot * i as u64)).collect();
        self.staging = Some(buf);
        Ok(())
    }

    /// The staging view of `[slot offset, +len)`.
    pub(super) fn staging_view(&self, slot: usize, len: u64) -> Result<BufView> {
        let buf = self
            .staging
            .as_ref()
            .ok_or_else(|| EngineError::Internal("cross-device side without staging".into()))?;
        Ok(buf.slice(self.slots[slot].1, len))
    }

    /// Submit `record` for ring slot `slot` through the side's command ring, once the slot's
    /// previous DMA finished (the queue's mutex is held only around the submission).
    pub(super) fn submit(
        &mut self,
        slot: usize,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        self.wait(slot)?;
        let frame = Frame {
            after_earlier: true,
            host_reads: true,
        };
        self.values[slot] = self.cmds.submit_one(self.ctx.raw(), frame, record)?;
        Ok(())
    }

    pub(super) fn wait(&self, slot: usize) -> Result<()> {
        self.cmds.queue.wait(self.ctx.raw(), self.values[slot])
    }

    /// Wait for every submission of the side.
    pub(super) fn wait_all(&self) -> Result<()> {
        let last = self.values.iter().copied().max().unwrap_or(0);
        self.cmds.queue.wait(self.ctx.raw(), last)
    }

    /// Destroy everything (idempotent). On a hung device nothing is freed: work may still use it.
    pub(super) fn destroy(&mut self) {
        if self.ctx.is_hung() {
            return;
        }
        if !self.ctx.is_lost() {
            let _ = self.wait_all();
        }
        if self.ctx.is_hung() {
            return;
        }
        self.drop_imports();
        if let Some(mut b) = self.staging.take() {
            self.ctx.mem.destroy_buffer(self.ctx.raw(), &mut b);
        }
        self.cmds.drain(|c| c.destroy(self.ctx.raw()));
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.destroy();
    }
}
