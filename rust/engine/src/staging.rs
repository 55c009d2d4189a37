//! Staging rings: persistently mapped host buffers, one ring per direction, each on its own
//! queue where the device has two transfer queues. A transfer checks slots out one at a time:
//! the CPU fills slot k+1 (parallel memcpy, or file reads) while the DMA of slot k runs, and
//! several transfers, uploads and downloads, are in flight at once.

use std::collections::VecDeque;
use std::sync::Arc;

use ash::vk;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::memcpy;
use crate::memory::{flush, invalidate, mapped_of, BufView, GpuBuffer, Kind, Memory};
use crate::queue::Queue;
use crate::slots::{CmdSlot, Frame, HasCmd, Slots};

/// Which way a ring moves bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Direction {
    /// Host -> device.
    Upload,
    /// Device -> host.
    Download,
}

/// A command buffer with its staging buffer.
pub(crate) struct StagedSlot {
    cmd: CmdSlot,
    pub(crate) buf: GpuBuffer,
}

impl HasCmd for StagedSlot {
    fn cmd(&mut self) -> &mut CmdSlot {
        &mut self.cmd
    }
}

impl StagedSlot {
    /// The slot's mapped bytes.
    fn ptr(&self) -> Result<*mut u8> {
        mapped_of(&self.buf.view()).map(|p| p.as_ptr())
    }
}

/// Writes chunk bytes into a staging slot: `(slot, position in the transfer, length)` to where
/// in the slot they start.
pub(crate) type SlotFill<'a> = dyn Fn(&mut [u8], u64, usize) -> Result<usize> + Sync + 'a;

/// One direction's ring.
pub(crate) struct StagingRing {
    pub(crate) slots: Slots<StagedSlot>,
    /// Command buffers for direct DMAs (pinned / registered host memory), which need no staging
    /// buffer, on the same queue.
    cmds: Slots<CmdSlot>,
    dir: Direction,
    pub(crate) slot_size: u64,
}

impl StagingRing {
    pub(crate) fn new(queue: Arc<Queue>, dir: Direction, slot_size: u64, count: usize) -> Self {
        StagingRing {
            cmds: Slots::new(Arc::clone(&queue), count),
            slots: Slots::new(queue, count),
            dir,
            slot_size,
        }
    }

    /// An idle slot (made on first need).
    pub(crate) fn take(
        &self,
        dev: &RawDevice,
        mem: &Memory,
        block: bool,
    ) -> Result<Option<StagedSlot>> {
        self.slots.take(dev, block, || {
            let (kind, usage, name) = match self.dir {
                Direction::Upload => (
                    Kind::Upload,
                    vk::BufferUsageFlags::TRANSFER_SRC,
                    "exo-staging-upload",
                ),
                Direction::Download => (
                    Kind::Download,
                    vk::BufferUsageFlags::TRANSFER_DST | vk::BufferUsageFlags::TRANSFER_SRC,
                    "exo-staging-download",
                ),
            };
            let mut buf = mem.create_buffer(dev, self.slot_size, usage, kind, name)?;
            if buf.mapped.is_none() {
                mem.destroy_buffer(dev, &mut buf);
                return Err(EngineError::Internal(
                    "staging memory is not host-visible".into(),
                ));
            }
            match CmdSlot::new(dev, self.slots.queue.family) {
                Ok(cmd) => Ok(StagedSlot { cmd, buf }),
                Err(e) => {
                    mem.destroy_buffer(dev, &mut buf);
                    Err(e)
                }
            }
        })
    }

    /// Blocking `take`.
    pub(crate) fn take_one(&self, dev: &RawDevice, mem: &Memory) -> Result<StagedSlot> {
        self.take(dev, mem, true)?
            .ok_or_else(|| EngineError::Internal("blocking slot checkout returned none".into()))
    }

    /// Give a slot back, unless the device hung (it may still be in use: leaked).
    pub(crate) fn put(&self, dev: &RawDevice, slot: StagedSlot) {
        self.slots.put(dev, slot);
    }

    /// Upload `len` bytes to `dst` at `offset`: `fill(slot, position, n)` writes the `n` bytes
    /// of each chunk into its staging slot (a memcpy, or file reads), overlapping the DMA of the
    /// chunk before, and returns where in the slot they start; a chunk leaves `headroom` bytes
    /// of its slot spare for that (aligned direct reads). Returns once every byte is in place
    /// (or, on error, once no DMA of it runs any more).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_with(
        &self,
        dev: &RawDevice,
        mem: &Memory,
        dst: &BufView,
        offset: u64,
        len: u64,
        headroom: u64,
        fill: &SlotFill<'_>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut last = 0u64;
        let base = dst.offset + offset;
        let dst_buffer = dst.buffer;
        let dst_mapped = dst.mapped.is_some();
        let mut pos = 0u64;
        let mut first = true;
        // Whole pages per chunk, so that chunk boundaries keep the file's block alignment.
        let room = self
            .slot_size
            .checked_sub(headroom)
            .map(|r| r / 4096 * 4096)
            .filter(|r| *r > 0)
            .ok_or_else(|| {
                EngineError::Internal("staging slot smaller than its headroom".into())
            })?;
        let body = (|| -> Result<()> {
            while pos < len {
                let piece = room.min(len - pos);
                let mut s = self.take_one(dev, mem)?;
                let r = (|| -> Result<u64> {
                    let n = usize::try_from(piece).map_err(|_| {
                        EngineError::OutOfBounds("chunk exceeds address space".into())
                    })?;
                    let whole = usize::try_from(self.slot_size).map_err(|_| {
                        EngineError::OutOfBounds("slot exceeds address space".into())
                    })?;
                    // SAFETY: the slot is idle (its previous DMA was waited for) and owned by
                    // this thread; its buffer holds `slot_size` mapped bytes.
                    let out = unsafe { std::slice::from_raw_parts_mut(s.ptr()?, whole) };
                    let start = fill(out, pos, n)?;
                    if start.checked_add(n).is_none_or(|end| end > whole) {
                        return Err(EngineError::Internal("a chunk overran its slot".into()));
                    }
                    let start = start as u64;
                    flush(dev, &s.buf.view(), start, piece)?;
                    let region = vk::BufferCopy {
                        src_offset: start,
                        dst_offset: base + pos,
                        size: piece,
                    };
                    let sbuf = s.buf.buffer;
                    // A host-visible destination may be read through its mapping next: the
                    // last chunk's barrier makes every chunk's writes (earlier submissions on
                    // this queue) visible to the host.
                    let frame = Frame {
                        after_earlier: first,
                        host_reads: dst_mapped && pos + piece >= len,
                    };
                    self.slots.submit(dev, &mut s, frame, |d, cmd| {
                        // SAFETY: recording state; both buffers stay alive until the value is
                        // waited for (the slot is only reused after that wait, the caller holds
                        // the destination).
                        unsafe { d.cmd_copy_buffer(cmd, sbuf, dst_buffer, &[region]) }
                    })
                })();
                self.put(dev, s);
                last = r?;
                first = false;
                pos += piece;
            }
            Ok(())
        })();
        let waited = self.slots.queue.wait(dev, last);
        body.and(waited)
    }

    /// Upload `src` to `dst` at `offset` (bounds checked by the caller).
    pub(crate) fn write(
        &self,
        dev: &RawDevice,
        mem: &Memory,
        dst: &BufView,
        offset: u64,
        src: &[u8],
    ) -> Result<()> {
        let diag = crate::tuning::tuning().diag_no_memcpy;
        self.write_with(
            dev,
            mem,
            dst,
            offset,
            src.len() as u64,
            0,
            &|out, pos, n| {
                let at = pos as usize;
                if !diag {
                    // SAFETY: `out[..n]` (a slot) and `src[at..at+n]` are distinct, in bounds.
                    unsafe { memcpy::copy(out.as_mut_ptr(), src.as_ptr().add(at), n) };
                }
                Ok(0)
            },
        )
    }

    /// Download `dst.len()` bytes of `src` at `offset`: up to a ring's worth of chunks in
    /// flight, each copied out (parallel memcpy) while the DMAs of later ones run.
    pub(crate) fn read(
        &self,
        dev: &RawDevice,
        mem: &Memory,
        src: &BufView,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let chunk = self.slot_size as usize;
        let total = dst.len();
        let n = total.div_ceil(chunk);
        let base = src.offset + offset;
        let src_buffer = src.buffer;
        let out = dst.as_mut_ptr() as usize;
        let diag = crate::tuning::tuning().diag_no_memcpy;
        let mut inflight: VecDeque<(StagedSlot, usize)> = VecDeque::new();
        let finish = |(s, k): (StagedSlot, usize)| -> Result<()> {
            let r = (|| -> Result<()> {
                self.slots.queue.wait(dev, s.cmd.value)?;
                let len = chunk.min(total - k * chunk);
                invalidate(dev, &s.buf.view(), 0, len as u64)?;
                if !diag {
                    // SAFETY: the DMA into this slot finished (value waited, host-read barrier
                    // recorded); `[k*chunk, +len)` lies within `dst`, which outlives the call.
                    unsafe { memcpy::copy((out + k * chunk) as *mut u8, s.ptr()?, len) };
                }
                Ok(())
            })();
            self.put(dev, s);
            r
        };
        let body = (|| -> Result<()> {
            for k in 0..n {
                let mut s = loop {
                    let got = self.take(dev, mem, inflight.is_empty())?;
                    match got {
                        Some(s) => break s,
                        // Every slot is taken, some by us: drain our oldest rather than wait
                        // for others' (two readers holding half the ring each never deadlock).
                        None => match inflight.pop_front() {
                            Some(old) => finish(old)?,
                            None => continue,
                        },
                    }
                };
                let len = chunk.min(total - k * chunk) as u64;
                let region = vk::BufferCopy {
                    src_offset: base + (k * chunk) as u64,
                    dst_offset: 0,
                    size: len,
                };
                let sbuf = s.buf.buffer;
                let frame = Frame {
                    after_earlier: k == 0,
                    host_reads: true,
                };
                let submitted = self.slots.submit(dev, &mut s, frame, |d, cmd| {
                    // SAFETY: recording state; both buffers stay alive until the value is waited.
                    unsafe { d.cmd_copy_buffer(cmd, src_buffer, sbuf, &[region]) }
                });
                inflight.push_back((s, k));
                submitted?;
                // Keep one chunk's copy-out overlapping the DMAs of the others.
                if inflight.len() >= self.slots_max().min(n) && inflight.len() > 1 {
                    if let Some(old) = inflight.pop_front() {
                        finish(old)?;
                    }
                }
            }
            while let Some(old) = inflight.pop_front() {
                finish(old)?;
            }
            Ok(())
        })();
        // After an error: never hand back a slot whose DMA may still run.
        for (s, _) in inflight.drain(..) {
            if self.slots.queue.wait(dev, s.cmd.value).is_ok() {
                self.put(dev, s);
            }
        }
        body
    }

    fn slots_max(&self) -> usize {
        self.slots.max()
    }

    /// One DMA without staging (between two buffers the device reaches directly: pinned or
    /// imported host memory and an allocation), on this ring's queue; waits for it.
    /// `dst_mapped`: the destination is host-visible (an upload into a mapped allocation), so
    /// its writes are made visible to host reads too, as a download's always are. Uses a
    /// command slot of its own, not a staging slot.
    pub(crate) fn direct(
        &self,
        dev: &RawDevice,
        dst_mapped: bool,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let frame = Frame {
            after_earlier: true,
            host_reads: self.dir == Direction::Download || dst_mapped,
        };
        self.cmds.run_now(dev, frame, record)
    }

    /// Destroy every slot (device idle).
    pub(crate) fn destroy(&self, dev: &RawDevice, mem: &Memory) {
        self.slots.drain(|mut s| {
            s.cmd.destroy(dev);
            mem.destroy_buffer(dev, &mut s.buf);
        });
        self.cmds.drain(|c| c.destroy(dev));
    }
}
