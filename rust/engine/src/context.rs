//! One device as the engine uses it: the raw device, its memory, its queues (universal, upload,
//! download), the two staging rings, the command ring for device-side work, the compute-shader
//! copy; and the process-wide cache that shares it between engines.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use ash::vk;

use crate::compute::CopyPipeline;
use crate::device::RawDevice;
use crate::error::Result;
use crate::instance::InstanceContext;
use crate::memcpy;
use crate::memory::{at, flush, invalidate, mapped_of, BufView, Kind, Memory};
use crate::properties::DeviceInfo;
use crate::queue::Queue;
use crate::slots::{CmdSlot, Frame, Slots};
use crate::staging::{Direction, StagingRing};
use crate::sync::lock;
use crate::tuning::{tuning, Tuning};

/// Command slots for device-side work (fills, device copies, memmove) per device.
const WORK_SLOTS: usize = 16;

/// Largest temporary buffer used for an overlapping (memmove) device copy.
const MEMMOVE_CHUNK: u64 = 32 << 20;

/// A logical device, shared by every engine of the process that uses this physical device with
/// the same validation setting (see `shared_device`). Every allocation holds an `Arc` (through
/// its `EngineDevice`), so the device outlives all its buffers.
pub struct DeviceContext {
    pub(crate) mem: Memory,
    /// Device-side copies, fills, memmove.
    pub(crate) universal: Arc<Queue>,
    /// Host -> device and device -> host queues (may be one queue, or the universal one).
    pub(crate) upload_queue: Arc<Queue>,
    pub(crate) download_queue: Arc<Queue>,
    pub(crate) up: StagingRing,
    pub(crate) down: StagingRing,
    /// Command ring for device-side work.
    pub(crate) work: Slots<CmdSlot>,
    /// The compute-shader copy (universal queue), when the device supports it.
    pub(crate) copy: Option<CopyPipeline>,
    key: (bool, u64),
    /// Destroyed last (its `Drop` destroys the VkDevice).
    raw: RawDevice,
}

impl Deref for DeviceContext {
    type Target = RawDevice;
    fn deref(&self) -> &RawDevice {
        &self.raw
    }
}

/// The process-wide device cache (see `shared_device`).
static DEVICES: Mutex<Vec<Arc<DeviceContext>>> = Mutex::new(Vec::new());

/// The logical device for `physical` on `instance`: created on first use and then shared by
/// every engine, for the life of the process, so that engines do not cycle through device
/// creation (slow, and limited on some drivers). A device that was lost leaves the cache: the
/// next engine to ask gets a fresh one, engines still holding the lost one fail fast.
pub(crate) fn shared_device(
    instance: &Arc<InstanceContext>,
    physical: vk::PhysicalDevice,
    info: &DeviceInfo,
) -> Result<Arc<DeviceContext>> {
    use ash::vk::Handle;
    let key = (instance.has_validation(), physical.as_raw());
    let mut cache = lock(&DEVICES);
    cache.retain(|d| !d.is_lost());
    if let Some(d) = cache.iter().find(|d| d.key == key) {
        return Ok(Arc::clone(d));
    }
    let d = Arc::new(DeviceContext::new(
        Arc::clone(instance),
        physical,
        info.clone(),
        key,
        tuning(),
    )?);
    cache.push(Arc::clone(&d));
    Ok(d)
}

impl DeviceContext {
    fn new(
        instance: Arc<InstanceContext>,
        physical: vk::PhysicalDevice,
        info: DeviceInfo,
        key: (bool, u64),
        t: &Tuning,
    ) -> Result<Self> {
        let raw = RawDevice::new(Arc::clone(&instance), physical, info, t)?;
        let layout = raw.layout;
        let mut made: Vec<((u32, u32), Arc<Queue>)> = Vec::new();
        let mut queue = |at: (u32, u32)| -> Result<Arc<Queue>> {
            if let Some((_, q)) = made.iter().find(|(k, _)| *k == at) {
                return Ok(Arc::clone(q));
            }
            let q = Arc::new(Queue::new(&raw, at)?);
            made.push((at, Arc::clone(&q)));
            Ok(q)
        };
        let built = (|| -> Result<_> {
            Ok((
                queue(layout.universal)?,
                queue(layout.upload)?,
                queue(layout.download)?,
            ))
        })();
        let (universal, upload_queue, download_queue) = match built {
            Ok(q) => q,
            Err(e) => {
                for (_, q) in &made {
                    q.destroy(&raw);
                }
                return Err(e);
            }
        };
        let mem = match Memory::new(&raw, t.upload_cached) {
            Ok(m) => m,
            Err(e) => {
                for (_, q) in &made {
                    q.destroy(&raw);
                }
                return Err(e);
            }
        };
        let copy = if raw.push_descriptor {
            CopyPipeline::new(&instance.instance, &raw.device, &raw.info)
        } else {
            None
        };
        {
            let distinct: Vec<&Arc<Queue>> = made.iter().map(|(_, q)| q).collect();
            Queue::link_peers(&distinct);
        }
        let work_queue = if t.d2d_transfer {
            Arc::clone(&upload_queue)
        } else {
            Arc::clone(&universal)
        };
        Ok(DeviceContext {
            mem,
            up: StagingRing::new(
                Arc::clone(&upload_queue),
                Direction::Upload,
                t.slot_size,
                t.slots,
            ),
            down: StagingRing::new(
                Arc::clone(&download_queue),
                Direction::Download,
                t.slot_size,
                t.slots,
            ),
            work: Slots::new(work_queue, WORK_SLOTS),
            universal,
            upload_queue,
            download_queue,
            copy,
            key,
            raw,
        })
    }

    /// The raw device.
    pub(crate) fn raw(&self) -> &RawDevice {
        &self.raw
    }

    /// The distinct queues.
    fn queues(&self) -> Vec<&Arc<Queue>> {
        let mut out: Vec<&Arc<Queue>> = vec![&self.universal];
        for q in [&self.upload_queue, &self.download_queue] {
            if !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                out.push(q);
            }
        }
        out
    }

    /// Wait until all work submitted to the device so far has finished (each queue's latest
    /// timeline value, waited outside every lock).
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        for q in self.queues() {
            q.wait_idle(&self.raw)?;
        }
        Ok(())
    }

    /// memcpy `src` into a mapped range at `offset` (bounds already checked).
    pub(crate) fn write_mapped(&self, v: &BufView, offset: u64, src: &[u8]) -> Result<()> {
        let dst = at(mapped_of(v)?, offset)?;
        // SAFETY: `[offset, offset+len)` is within the mapped range (checked by the caller);
        // `src` is a distinct host slice.
        unsafe { memcpy::copy(dst, src.as_ptr(), src.len()) };
        flush(self.raw(), v, offset, src.len() as u64)
    }

    /// memcpy from a mapped range at `offset` into `dst` (bounds already checked).
    pub(crate) fn read_mapped(&self, v: &BufView, offset: u64, dst: &mut [u8]) -> Result<()> {
        let base = mapped_of(v)?;
        invalidate(self.raw(), v, offset, dst.len() as u64)?;
        let src = at(base, offset)?;
        let stream = tuning().stream_reads;
        if stream == 2 || (stream == 1 && !v.cached) {
            // SAFETY: in-bounds range of the mapping; `dst` is a distinct host slice.
            unsafe { memcpy::copy_from_uncached(dst.as_mut_ptr(), src, dst.len()) };
        } else {
            // SAFETY: as above.
            unsafe { memcpy::copy(dst.as_mut_ptr(), src, dst.len()) };
        }
        Ok(())
    }

    /// Record and submit device-side work on the work ring and wait for it (outside every lock).
    pub(crate) fn run_now(
        &self,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let frame = Frame {
            after_earlier: true,
            host_reads: true,
        };
        self.work.run_now(self.raw(), frame, record)
    }

    /// vkCmdFillBuffer zeros over a whole range, on the universal queue.
    pub(crate) fn fill_zero(&self, v: &BufView) -> Result<()> {
        let (b, off, len) = (v.buffer, v.offset, v.len);
        self.run_now(|d, cmd| {
            // SAFETY: recording state; offset and length are multiples of 4 within the buffer.
            unsafe { d.cmd_fill_buffer(cmd, b, off, len, 0) }
        })
    }

    /// Device-side copy between two distinct ranges (one vkCmdCopyBuffer on the universal queue:
    /// on discrete GPUs the copy engines behind a transfer-only queue are far slower for this).
    /// Returns whether the compute shader did the copy.
    pub(crate) fn copy_buffers(
        &self,
        src: &BufView,
        src_offset: u64,
        dst: &BufView,
        dst_offset: u64,
        size: u64,
    ) -> Result<bool> {
        if size == 0 {
            return Ok(false);
        }
        let (s, t) = (src.buffer, dst.buffer);
        let (sa, da) = (src.offset + src_offset, dst.offset + dst_offset);
        let t_ = tuning();
        if let Some(cp) = self.copy.as_ref() {
            if !t_.d2d_transfer && size >= t_.compute_min && cp.suits(sa, da, size) {
                return self
                    .run_now(|d, cmd| cp.record(d, cmd, (s, sa), (t, da), size))
                    .map(|()| true);
            }
        }
        let region = vk::BufferCopy {
            src_offset: sa,
            dst_offset: da,
            size,
        };
        self.run_now(|d, cmd| {
            // SAFETY: recording state; regions are in bounds and do not overlap.
            unsafe { d.cmd_copy_buffer(cmd, s, t, &[region]) }
        })
        .map(|()| false)
    }

    /// memmove within one range whose source and destination overlap, through a temporary
    /// device buffer, chunk by chunk, in the order that never overwrites source bytes before
    /// they were read (forward when moving down, backward when up).
    pub(crate) fn move_within(
        &self,
        v: &BufView,
        src_offset: u64,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if size == 0 || src_offset == dst_offset {
            return Ok(());
        }
        let tmp_size = size.min(MEMMOVE_CHUNK).next_multiple_of(4);
        let mut tmp = self.mem.create_buffer(
            self.raw(),
            tmp_size,
            vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST,
            Kind::Device,
            "exo-memmove-tmp",
        )?;
        let mut chunks = Vec::new();
        let mut done = 0u64;
        while done < size {
            let len = tmp_size.min(size - done);
            chunks.push((done, len));
            done += len;
        }
        if dst_offset > src_offset {
            chunks.reverse();
        }
        let (b, t, base) = (v.buffer, tmp.buffer, v.offset);
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::TRANSFER_READ)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)];
        let result = self.run_now(|d, cmd| {
            for (start, len) in &chunks {
                let to_tmp = vk::BufferCopy {
                    src_offset: base + src_offset + start,
                    dst_offset: 0,
                    size: *len,
                };
                let from_tmp = vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: base + dst_offset + start,
                    size: *len,
                };
                // SAFETY: recording state; all regions in bounds; the barrier after each copy
                // orders the two copies of a chunk and consecutive chunks.
                unsafe {
                    for (from, to, region) in [(b, t, to_tmp), (t, b, from_tmp)] {
                        d.cmd_copy_buffer(cmd, from, to, &[region]);
                        d.cmd_pipeline_barrier(
                            cmd,
                            vk::PipelineStageFlags::TRANSFER,
                            vk::PipelineStageFlags::TRANSFER,
                            vk::DependencyFlags::empty(),
                            &barrier,
                            &[],
                            &[],
                        );
                    }
                }
            }
        });
        // On a hung device the temporary may still be in use: `destroy_buffer` leaks it then.
        self.mem.destroy_buffer(self.raw(), &mut tmp);
        result
    }
}

impl Drop for DeviceContext {
    fn drop(&mut self) {
        if self.raw.is_hung() {
            // Work may still run: leak every object (memory, rings, queues, the device).
            self.mem.destroy(&self.raw);
            return;
        }
        // SAFETY: we are the last reference; waiting idle before destroying is always valid.
        let _ = unsafe { self.raw.device.device_wait_idle() };
        if let Some(c) = self.copy.take() {
            c.destroy(&self.raw.device);
        }
        self.up.destroy(&self.raw, &self.mem);
        self.down.destroy(&self.raw, &self.mem);
        self.work.drain(|s| s.destroy(&self.raw));
        for q in self.queues() {
            q.destroy(&self.raw);
        }
        self.mem.destroy(&self.raw);
    }
}
