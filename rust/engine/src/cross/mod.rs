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

mod paths;
mod side;

use std::sync::{Arc, Mutex};

use ash::vk;

use crate::context::DeviceContext;
use crate::error::{EngineError, Result};
use crate::memcpy;
use crate::memory::{flush, invalidate, mapped_of, BufView};
use crate::sync::lock;
use crate::tuning::Tuning;

pub use paths::CrossPath;
pub(crate) use paths::{plan_path, CrossRequest, CrossSettings};

use paths::import_alignment;
use side::{HostRing, Side};

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
