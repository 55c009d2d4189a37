//! Copies between two devices, pipelined through host memory so that both devices' transfer
//! queues work at once.
//!
//! A `Link` joins a source and a destination device (one per ordered pair and engine, made on
//! first use) and owns a ring of slots in host memory plus, on each device, command buffers and
//! command slots of its own on the device's DMA queues. A copy is cut into slot-sized chunks:
//! the source device DMAs chunk k into slot k while the destination device DMAs chunk k-1 out of
//! its slot, so both PCIe links (and both copy engines) run at the same time.
//!
//! Paths, best first (chosen per pair at run time, reported by `Engine::stats` as
//! `cross_device_path`):
//! - `"p2p"`: device-to-device without host memory. Vulkan offers it only inside a device group
//!   (vkEnumeratePhysicalDeviceGroups listing several physical devices together, then one
//!   logical device spanning them); the engine reports groups in `DeviceInfo::device_group` but
//!   opens one logical device per physical device, so this path is never chosen yet.
//! - `"host-import"`: ONE page-aligned host ring imported into both devices with
//!   VK_EXT_external_memory_host: the source DMAs into the very pages the destination DMAs from;
//!   the CPU touches no byte.
//! - `"host-staging"`: where either device cannot import (or the driver refuses): each device
//!   has its own host-visible staging ring and the (parallel) memcpy of chunk k from one to the
//!   other overlaps both devices' DMAs of neighbouring chunks.
//!
//! Measured on two H100 80GB HBM3 joined by NVLink (NV18), driver 580, 2026-11-27: each device is
//! alone in its device group (no "p2p" through Vulkan, although CUDA copies peer to peer at ~394
//! GB/s there); a 1 GiB copy takes "host-import" at ~46-47 GB/s either way (the single-card
//! 256 MiB host->device write: ~39-41 GB/s), "host-staging" ~40.5 GB/s. Ring settings from
//! 8 MiB x 8 to 64 MiB x 4 differ by under 3 GB/s. Copies in both directions at once total ~46
//! GB/s: each device's one DMA queue carried both its outgoing and its incoming chunks (measured
//! before the engine split uploads and downloads onto two queues; now each side uses its
//! device's download (source) or upload (destination) queue).
//!
//! Locking: a link's mutex serialises the copies that use it; while holding it a copy takes a
//! device's queue mutex only around each vkQueueSubmit (waits are on timeline values, outside
//! every queue lock), so copies in both directions at once (two links) cannot deadlock, with
//! each other or with host<->device transfers. Each side submits to its device's download
//! (source) or upload (destination) queue through a command ring of its own (`queue::Slots`,
//! the one-shot path every other DMA takes too).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use ash::vk;

use crate::context::DeviceContext;
use crate::error::{EngineError, Result};
use crate::import::{import_host, release_imports, HostImport};
use crate::memcpy;
use crate::memory::{flush, invalidate, mapped_of, BufView, GpuBuffer, Kind};
use crate::properties::DeviceInfo;
use crate::queue::{CmdSlot, Frame, Slots};
use crate::sync::lock;
use crate::tuning::Tuning;

/// How bytes travel between two devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrossPath {
    /// Directly between the devices (device groups); not used yet, see the module docs.
    P2p,
    /// Through one host ring imported into both devices (no CPU copy).
    HostImport,
    /// Through each device's own staging ring, with a CPU memcpy between them.
    HostStaging,
}

impl CrossPath {
    /// `"p2p"`, `"host-import"` or `"host-staging"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CrossPath::P2p => "p2p",
            CrossPath::HostImport => "host-import",
            CrossPath::HostStaging => "host-staging",
        }
    }
}

/// What the engine was asked to use for cross-device copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrossRequest {
    /// The best path both devices allow.
    Auto,
    /// The shared imported ring (staging where a device cannot import).
    Import,
    /// Per-device staging rings and a memcpy.
    Staging,
}

impl CrossRequest {
    /// `"auto"`, `"import"`/`"host-import"`, `"staging"`/`"host-staging"`.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "" | "auto" => Ok(CrossRequest::Auto),
            "import" | "host-import" => Ok(CrossRequest::Import),
            "staging" | "host-staging" => Ok(CrossRequest::Staging),
            other => Err(EngineError::InvalidArgument(format!(
                "unknown cross-device path {other:?} (expected \"auto\", \"host-import\" or \
                 \"host-staging\")"
            ))),
        }
    }
}

/// Per-engine cross-device settings (from `EXO_VULKAN_TUNE`, changed by
/// `Engine::force_cross_device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrossSettings {
    pub(crate) request: CrossRequest,
    /// Copies between two allocations of one device take the pipeline too (tests).
    pub(crate) same_device: bool,
}

impl CrossSettings {
    pub(crate) fn from_tuning(t: &Tuning) -> CrossSettings {
        CrossSettings {
            request: CrossRequest::parse(&t.cross_path).unwrap_or(CrossRequest::Auto),
            same_device: t.cross_same_device,
        }
    }
}

/// The import alignment of a device that can take part in the shared ring.
fn import_alignment(info: &DeviceInfo) -> Option<u64> {
    info.min_imported_host_pointer_alignment
        .filter(|a| a.is_power_of_two() && *a <= 64 << 20)
}

/// The path a copy from `src` to `dst` takes under `request` (unless the driver then refuses
/// the import).
pub(crate) fn plan_path(request: CrossRequest, src: &DeviceInfo, dst: &DeviceInfo) -> CrossPath {
    let both_import = import_alignment(src).is_some() && import_alignment(dst).is_some();
    match request {
        CrossRequest::Staging => CrossPath::HostStaging,
        CrossRequest::Auto | CrossRequest::Import if both_import => CrossPath::HostImport,
        CrossRequest::Auto | CrossRequest::Import => CrossPath::HostStaging,
    }
}

/// Page-aligned host memory for the shared ring.
struct HostRing {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain heap memory owned by the ring; devices access it only while a copy holds the
// link's mutex.
unsafe impl Send for HostRing {}
// SAFETY: as above.
unsafe impl Sync for HostRing {}

impl HostRing {
    fn new(len: usize, align: usize) -> Result<HostRing> {
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
struct Side {
    ctx: Arc<DeviceContext>,
    /// The command ring on the side's queue (one slot per ring slot in flight at most).
    cmds: Slots<CmdSlot>,
    /// Per ring slot: the timeline value of its latest DMA (0: none yet).
    values: Vec<u64>,
    /// Per slot: the buffer holding it and the slot's offset in that buffer.
    slots: Vec<(vk::Buffer, u64)>,
    imports: Vec<HostImport>,
    staging: Option<GpuBuffer>,
}

impl Side {
    fn new(ctx: &Arc<DeviceContext>, count: usize, source: bool) -> Result<Side> {
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
    fn import_ring(&mut self, ring: &HostRing, slot: u64, count: usize) -> Result<()> {
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
    fn drop_imports(&mut self) {
        self.slots.clear();
        let imports = std::mem::take(&mut self.imports);
        release_imports(self.ctx.raw(), imports);
    }

    /// A host-visible staging ring of this device's own: written by the device (`download`,
    /// the source side) or read by it.
    fn own_staging(&mut self, slot: u64, count: usize, download: bool) -> Result<()> {
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
    fn staging_view(&self, slot: usize, len: u64) -> Result<BufView> {
        let buf = self
            .staging
            .as_ref()
            .ok_or_else(|| EngineError::Internal("cross-device side without staging".into()))?;
        Ok(buf.slice(self.slots[slot].1, len))
    }

    /// Submit `record` for ring slot `slot` through the side's command ring, once the slot's
    /// previous DMA finished (the queue's mutex is held only around the submission).
    fn submit(
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

    fn wait(&self, slot: usize) -> Result<()> {
        self.cmds.queue.wait(self.ctx.raw(), self.values[slot])
    }

    /// Wait for every submission of the side.
    fn wait_all(&self) -> Result<()> {
        let last = self.values.iter().copied().max().unwrap_or(0);
        self.cmds.queue.wait(self.ctx.raw(), last)
    }

    /// Destroy everything (idempotent). On a hung device nothing is freed: work may still use it.
    fn destroy(&mut self) {
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

struct LinkState {
    src: Side,
    dst: Side,
    /// The shared ring (host-import only). Dropped after both sides released their imports.
    ring: Option<HostRing>,
}

impl Drop for LinkState {
    fn drop(&mut self) {
        self.src.destroy();
        self.dst.destroy();
        if self.src.ctx.is_hung() || self.dst.ctx.is_hung() {
            // A device may still DMA into the ring: leak it rather than free it under the GPU.
            std::mem::forget(self.ring.take());
        }
    }
}

/// A source device, a destination device (possibly the same one, for tests) and the ring
/// between them.
pub(crate) struct Link {
    /// The path this link takes.
    pub(crate) path: CrossPath,
    /// Whether the driver refused the import this link was planned with.
    pub(crate) import_refused: bool,
    slot: u64,
    /// The two devices (also held by the sides; here so that checks need not wait for a copy
    /// in flight).
    devices: [Arc<DeviceContext>; 2],
    state: Mutex<LinkState>,
}

/// Borrowed source/destination ranges of one copy, as the DMA commands address them.
#[derive(Clone, Copy)]
struct Ends {
    src: vk::Buffer,
    src_base: u64,
    dst: vk::Buffer,
    dst_base: u64,
    size: u64,
    slot: u64,
}

impl Ends {
    /// How many slot-sized chunks the copy takes.
    fn chunks(&self) -> Result<usize> {
        usize::try_from(self.size.div_ceil(self.slot))
            .map_err(|_| EngineError::OutOfBounds("copy exceeds address space".into()))
    }

    /// Offset and length of chunk `k`.
    fn piece(&self, k: usize) -> (u64, u64) {
        let off = k as u64 * self.slot;
        (off, self.slot.min(self.size - off))
    }

    /// Source DMA of chunk `k` into ring slot `k % slots` of `side`.
    fn pull(&self, side: &mut Side, k: usize) -> Result<()> {
        let (off, len) = self.piece(k);
        let s = k % side.slots.len();
        let (buf, at) = side.slots[s];
        let region = vk::BufferCopy {
            src_offset: self.src_base + off,
            dst_offset: at,
            size: len,
        };
        let src = self.src;
        side.submit(s, |d, cmd| {
            // SAFETY: recording state; both buffers stay alive until the value is waited (the caller
            // holds the allocation, the link holds the slot).
            unsafe { d.cmd_copy_buffer(cmd, src, buf, &[region]) }
        })
    }

    /// Destination DMA of chunk `k` out of ring slot `k % slots` of `side`.
    fn push(&self, side: &mut Side, k: usize) -> Result<()> {
        let (off, len) = self.piece(k);
        let s = k % side.slots.len();
        let (buf, at) = side.slots[s];
        let region = vk::BufferCopy {
            src_offset: at,
            dst_offset: self.dst_base + off,
            size: len,
        };
        let dst = self.dst;
        side.submit(s, |d, cmd| {
            // SAFETY: as in `pull`.
            unsafe { d.cmd_copy_buffer(cmd, buf, dst, &[region]) }
        })
    }
}

impl Link {
    /// Make a link from `src` to `dst` taking `path` (host-import falls back to host-staging
    /// when the driver refuses the import).
    pub(crate) fn new(
        src: &Arc<DeviceContext>,
        dst: &Arc<DeviceContext>,
        path: CrossPath,
        t: &Tuning,
    ) -> Result<Link> {
        let count = t.cross_slots.max(2);
        let mut state = LinkState {
            src: Side::new(src, count, true)?,
            dst: Side::new(dst, count, false)?,
            ring: None,
        };
        let mut slot = t.cross_slot_size;
        let mut import_refused = false;
        let mut path = path;
        if path == CrossPath::HostImport {
            let align = import_alignment(&src.info)
                .max(import_alignment(&dst.info))
                .unwrap_or(4096)
                .max(4096);
            slot = slot.next_multiple_of(align);
            let len = usize::try_from(slot * count as u64)
                .map_err(|_| EngineError::OutOfMemory("ring exceeds address space".into()))?;
            // 2 MiB alignment lets the kernel back the ring with huge pages.
            let ring = HostRing::new(len, (align as usize).max(2 << 20))?;
            let imported = state
                .src
                .import_ring(&ring, slot, count)
                .and_then(|()| state.dst.import_ring(&ring, slot, count));
            state.ring = Some(ring);
            if imported.is_err() {
                src.check_alive()?;
                dst.check_alive()?;
                state.src.drop_imports();
                state.dst.drop_imports();
                state.ring = None;
                import_refused = true;
                path = CrossPath::HostStaging;
                slot = t.cross_slot_size;
            }
        }
        if path != CrossPath::HostImport {
            path = CrossPath::HostStaging;
            state.src.own_staging(slot, count, true)?;
            state.dst.own_staging(slot, count, false)?;
        }
        Ok(Link {
            path,
            import_refused,
            slot,
            devices: [Arc::clone(src), Arc::clone(dst)],
            state: Mutex::new(state),
        })
    }

    /// Whether both devices are still alive (never waits for a copy in flight).
    pub(crate) fn is_alive(&self) -> bool {
        self.devices.iter().all(|d| !d.is_lost())
    }

    /// Copy `size` bytes from `src`+`src_offset` (on the source device) to `dst`+`dst_offset`
    /// (on the destination device); bounds were checked by the caller. Returns when every byte
    /// is in place.
    pub(crate) fn copy(
        &self,
        src: &BufView,
        src_offset: u64,
        dst: &BufView,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.src.ctx.check_alive()?;
        st.dst.ctx.check_alive()?;
        let ends = Ends {
            src: src.buffer,
            src_base: src.offset + src_offset,
            dst: dst.buffer,
            dst_base: dst.offset + dst_offset,
            size,
            slot: self.slot,
        };
        let result = match self.path {
            CrossPath::HostImport => st.run_shared(&ends),
            _ => st.run_staged(&ends),
        };
        // Never leave work in flight on the ring, whatever happened.
        let a = st.src.wait_all();
        let b = st.dst.wait_all();
        result.and(a).and(b)
    }
}

impl LinkState {
    /// One shared ring: the source fills slot k while the destination drains slot k-1. Chunk k
    /// may enter a slot once the destination has drained the chunk before it there.
    fn run_shared(&mut self, e: &Ends) -> Result<()> {
        let slots = self.src.slots.len();
        let n = e.chunks()?;
        for k in 0..n.min(slots) {
            e.pull(&mut self.src, k)?;
        }
        for k in 0..n {
            self.src.wait(k % slots)?;
            e.push(&mut self.dst, k)?;
            // Refill the slot drained by the previous chunk (waiting for it, not for chunk k
            // just submitted, keeps the destination queue fed with two chunks).
            if k >= 1 && k - 1 + slots < n {
                self.dst.wait((k - 1) % slots)?;
                e.pull(&mut self.src, k - 1 + slots)?;
            }
        }
        Ok(())
    }

    /// Two rings: chunk k is DMAed into the source's slot, copied by the CPU (memcpy threads)
    /// into the destination's slot and DMAed out of it, while both devices' DMAs of other chunks
    /// run.
    fn run_staged(&mut self, e: &Ends) -> Result<()> {
        let slots = self.src.slots.len();
        let n = e.chunks()?;
        for k in 0..n.min(slots) {
            e.pull(&mut self.src, k)?;
        }
        for k in 0..n {
            let s = k % slots;
            let (_, len) = e.piece(k);
            self.src.wait(s)?;
            self.dst.wait(s)?;
            let from = self.src.staging_view(s, len)?;
            let to = self.dst.staging_view(s, len)?;
            invalidate(self.src.ctx.raw(), &from, 0, len)?;
            let (sp, dp) = (mapped_of(&from)?, mapped_of(&to)?);
            let bytes = usize::try_from(len)
                .map_err(|_| EngineError::OutOfBounds("chunk exceeds address space".into()))?;
            // SAFETY: both slots hold at least `len` bytes, are distinct buffers, and no DMA
            // uses either now (both slots waited above).
            unsafe { memcpy::copy(dp.as_ptr(), sp.as_ptr(), bytes) };
            flush(self.dst.ctx.raw(), &to, 0, len)?;
            e.push(&mut self.dst, k)?;
            if k + slots < n {
                e.pull(&mut self.src, k + slots)?;
            }
        }
        Ok(())
    }
}
