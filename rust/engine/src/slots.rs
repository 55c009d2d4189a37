//! The command ring on a queue: `Slots` of items holding a command buffer (`CmdSlot`, plus, for
//! staging, a host buffer) that users check out one at a time, so many threads record and submit
//! at once; and the one command path on it (`submit_one`, `run_now`: take a slot, record, submit,
//! give it back, wait) that every one-shot piece of work takes.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use ash::vk;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::queue::{Queue, WAIT_SLICE};
use crate::sync::lock;

/// One command buffer with a pool of its own (so that slots record on many threads at once) and
/// the timeline value of its latest submission.
pub(crate) struct CmdSlot {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    /// Timeline value of the latest submission (0: never submitted).
    pub(crate) value: u64,
}

/// Stages and accesses of a queue's work: transfers, plus compute-shader copies where the family
/// supports compute.
fn scopes(compute: bool) -> (vk::PipelineStageFlags, vk::AccessFlags, vk::AccessFlags) {
    if compute {
        (
            vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::SHADER_WRITE,
            vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::SHADER_READ,
        )
    } else {
        (
            vk::PipelineStageFlags::TRANSFER,
            vk::AccessFlags::TRANSFER_WRITE,
            vk::AccessFlags::TRANSFER_READ,
        )
    }
}

/// How a recording is framed by barriers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    /// Make earlier device writes on this queue visible first (the first chunk of an operation;
    /// later chunks touch other bytes and need not wait for each other).
    pub(crate) after_earlier: bool,
    /// Make the writes visible to host reads once the timeline value is reached.
    pub(crate) host_reads: bool,
}

impl CmdSlot {
    pub(crate) fn new(dev: &RawDevice, family: u32) -> Result<CmdSlot> {
        let d = &dev.device;
        let info = vk::CommandPoolCreateInfo::default()
            .flags(vk::CommandPoolCreateFlags::TRANSIENT)
            .queue_family_index(family);
        // SAFETY: valid device and create info.
        let pool = unsafe { d.create_command_pool(&info, None) }
            .map_err(|r| dev.fail("vkCreateCommandPool", r))?;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool was created on this device.
        let cmd = match unsafe { d.allocate_command_buffers(&alloc) } {
            Ok(v) => v[0],
            Err(r) => {
                // SAFETY: the pool is unused.
                unsafe { d.destroy_command_pool(pool, None) };
                return Err(dev.fail("vkAllocateCommandBuffers", r));
            }
        };
        Ok(CmdSlot {
            pool,
            cmd,
            value: 0,
        })
    }

    /// (Re-)record the command buffer with `record`'s commands framed per `frame`. The caller
    /// has waited for the slot's previous submission and owns the slot.
    pub(crate) fn record(
        &mut self,
        dev: &RawDevice,
        compute: bool,
        frame: Frame,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<vk::CommandBuffer> {
        let d = &dev.device;
        let cmd = self.cmd;
        // SAFETY: the pool and its one command buffer are idle (previous submission waited,
        // slot owned by this thread).
        unsafe {
            d.reset_command_pool(self.pool, vk::CommandPoolResetFlags::empty())
                .map_err(|r| dev.fail("vkResetCommandPool", r))?;
            d.begin_command_buffer(
                cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(|r| dev.fail("vkBeginCommandBuffer", r))?;
        }
        let (stages, writes, reads) = scopes(compute);
        if frame.after_earlier {
            let before = [vk::MemoryBarrier::default()
                .src_access_mask(writes)
                .dst_access_mask(reads | writes)];
            // SAFETY: the command buffer is in the recording state.
            unsafe {
                d.cmd_pipeline_barrier(
                    cmd,
                    stages,
                    stages,
                    vk::DependencyFlags::empty(),
                    &before,
                    &[],
                    &[],
                )
            };
        }
        record(d, cmd);
        if frame.host_reads {
            let after = [vk::MemoryBarrier::default()
                .src_access_mask(writes)
                .dst_access_mask(vk::AccessFlags::HOST_READ | vk::AccessFlags::HOST_WRITE)];
            // SAFETY: recording state.
            unsafe {
                d.cmd_pipeline_barrier(
                    cmd,
                    stages,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &after,
                    &[],
                    &[],
                )
            };
        }
        // SAFETY: recording state.
        unsafe { d.end_command_buffer(cmd) }.map_err(|r| dev.fail("vkEndCommandBuffer", r))?;
        Ok(cmd)
    }

    /// Destroy the pool (and its command buffer); the slot's work has finished.
    pub(crate) fn destroy(&self, dev: &RawDevice) {
        // SAFETY: no submission of this slot is pending (waited, or the device is idle).
        unsafe { dev.device.destroy_command_pool(self.pool, None) };
    }
}

/// Something that owns a `CmdSlot` (a bare one, or a staging slot with its buffer).
pub(crate) trait HasCmd {
    fn cmd(&mut self) -> &mut CmdSlot;
}

impl HasCmd for CmdSlot {
    fn cmd(&mut self) -> &mut CmdSlot {
        self
    }
}

struct SlotState<T> {
    free: VecDeque<T>,
    /// Items made so far (free or checked out).
    made: usize,
}

/// A command ring on one queue: up to `max` items, made on first need, checked out one at a
/// time (oldest submission first) and put back with their timeline value. Only the checkout is
/// under a (short) lock; waits and recording are not. An item whose wait failed is never put
/// back (the device hung: it may still be in use).
pub(crate) struct Slots<T: HasCmd> {
    pub(crate) queue: Arc<Queue>,
    state: Mutex<SlotState<T>>,
    returned: Condvar,
    max: usize,
}

impl<T: HasCmd> Slots<T> {
    pub(crate) fn new(queue: Arc<Queue>, max: usize) -> Slots<T> {
        Slots {
            queue,
            state: Mutex::new(SlotState {
                free: VecDeque::new(),
                made: 0,
            }),
            returned: Condvar::new(),
            max: max.max(1),
        }
    }

    /// An idle item (its previous submission finished), made with `make` while fewer than `max`
    /// exist, else the oldest returned one; with `block`, waits for one to be returned
    /// (`Ok(None)` only without `block`).
    pub(crate) fn take(
        &self,
        dev: &RawDevice,
        block: bool,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<Option<T>> {
        let mut st = lock(&self.state);
        let item = loop {
            // While the ring may grow, a new item beats waiting for the oldest returned one
            // that is still in flight: waiting would serialise the CPU's fill of chunk k+1
            // behind the DMA of chunk k (a sequential upload would never use a second slot).
            let oldest_busy = match st.free.front_mut() {
                Some(oldest) => !self.queue.known_done(oldest.cmd().value),
                None => false,
            };
            if !oldest_busy || st.made >= self.max {
                if let Some(item) = st.free.pop_front() {
                    break item;
                }
            }
            if st.made < self.max {
                st.made += 1;
                drop(st);
                return match make() {
                    Ok(item) => Ok(Some(item)),
                    Err(e) => {
                        lock(&self.state).made -= 1;
                        Err(e)
                    }
                };
            }
            if !block {
                return Ok(None);
            }
            dev.check_alive()?;
            st = self
                .returned
                .wait_timeout(st, WAIT_SLICE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(st);
        let mut item = item;
        let value = item.cmd().value;
        self.queue.wait(dev, value)?; // on failure the item stays out: the device hung
        Ok(Some(item))
    }

    /// An idle item, waiting for one if all are in use.
    pub(crate) fn take_blocking(
        &self,
        dev: &RawDevice,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.take(dev, true, make)?
            .ok_or_else(|| EngineError::Internal("blocking slot checkout returned none".into()))
    }

    /// Record `record` into the item and submit it; returns the completion value.
    pub(crate) fn submit(
        &self,
        dev: &RawDevice,
        item: &mut T,
        frame: Frame,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<u64> {
        let slot = item.cmd();
        let cmd = slot.record(dev, self.queue.compute, frame, record)?;
        let value = self.queue.submit(dev, cmd)?;
        slot.value = value;
        Ok(value)
    }

    /// The most items this ring makes.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Give an item back (its latest submission may still run: the next user waits for it),
    /// unless the device hung (its work may still run: it is leaked).
    pub(crate) fn put(&self, dev: &RawDevice, item: T) {
        if dev.is_hung() {
            return;
        }
        lock(&self.state).free.push_back(item);
        self.returned.notify_one();
    }

    /// Hand every returned item to `destroy` (device idle; nothing is checked out).
    pub(crate) fn drain(&self, destroy: impl FnMut(T)) {
        let items: Vec<T> = lock(&self.state).free.drain(..).collect();
        items.into_iter().for_each(destroy);
    }
}

/// The one-shot command path: every piece of work that needs no buffer of its own beside its
/// command buffer (fills, device copies, direct DMAs, cross-device chunks) goes through these.
impl Slots<CmdSlot> {
    /// Take a slot, record `record` into it framed per `frame`, submit it and give the slot
    /// back; returns the completion value (not waited for).
    pub(crate) fn submit_one(
        &self,
        dev: &RawDevice,
        frame: Frame,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<u64> {
        let family = self.queue.family;
        let mut slot = self.take_blocking(dev, || CmdSlot::new(dev, family))?;
        let submitted = self.submit(dev, &mut slot, frame, record);
        self.put(dev, slot);
        submitted
    }

    /// `submit_one`, then wait for the work (outside every lock).
    pub(crate) fn run_now(
        &self,
        dev: &RawDevice,
        frame: Frame,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let value = self.submit_one(dev, frame, record)?;
        self.queue.wait(dev, value)
    }
}
