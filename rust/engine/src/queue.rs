//! Submission and completion, in the shape of wgpu-hal and CUDA streams: a queue's mutex is held
//! only around vkQueueSubmit; every submission signals the queue's timeline semaphore with the
//! next value, and callers wait for values outside every lock.
//!
//! A semaphore signal made by vkQueueSubmit covers every command submitted earlier to that
//! queue, so "value v reached" means all work up to v on the queue is done.
//!
//! `Slots` is the command ring built on it: items holding a command buffer (plus, for staging,
//! a host buffer) that users check out one at a time, so many threads record and submit at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ash::vk;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::sync::lock;

/// A blocking wait checks the device's lost state at least this often.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// One queue and its timeline.
pub(crate) struct Queue {
    /// External synchronisation of the queue: held only around vkQueueSubmit.
    handle: Mutex<vk::Queue>,
    pub(crate) family: u32,
    /// The family supports compute.
    pub(crate) compute: bool,
    timeline: vk::Semaphore,
    /// Value of the latest submission (assigned under `handle`, so values follow submission
    /// order).
    submitted: AtomicU64,
    /// Highest value seen reached (a cache of the semaphore's counter), shared with the other
    /// queues of the device (see `peers`).
    completed: Arc<AtomicU64>,
    /// The device's other queues: timeline and completed value. Each submission waits (on the
    /// device) for the values the host has already seen reached there: free, since they are
    /// reached, and it makes their writes visible to this queue, as the memory model asks for
    /// work that the host ordered after them.
    peers: OnceLock<Vec<(vk::Semaphore, Arc<AtomicU64>)>>,
}

impl Queue {
    /// Queue `index` of `family`, with a fresh timeline semaphore.
    pub(crate) fn new(dev: &RawDevice, (family, index): (u32, u32)) -> Result<Queue> {
        // SAFETY: the queue was requested at device creation (`QueueLayout::requests`).
        let handle = unsafe { dev.device.get_device_queue(family, index) };
        let mut kind = vk::SemaphoreTypeCreateInfo::default()
            .semaphore_type(vk::SemaphoreType::TIMELINE)
            .initial_value(0);
        let ci = vk::SemaphoreCreateInfo::default().push_next(&mut kind);
        // SAFETY: valid device and create info (timeline semaphores are enabled).
        let timeline = unsafe { dev.device.create_semaphore(&ci, None) }
            .map_err(|r| dev.fail("vkCreateSemaphore", r))?;
        Ok(Queue {
            handle: Mutex::new(handle),
            family,
            compute: dev.family_compute(family),
            timeline,
            submitted: AtomicU64::new(0),
            completed: Arc::new(AtomicU64::new(0)),
            peers: OnceLock::new(),
        })
    }

    /// Tell each queue about the device's other (distinct) queues; called once, after creation.
    pub(crate) fn link_peers(queues: &[&Arc<Queue>]) {
        for q in queues {
            let peers = queues
                .iter()
                .filter(|o| !Arc::ptr_eq(o, q))
                .map(|o| (o.timeline, Arc::clone(&o.completed)))
                .collect();
            let _ = q.peers.set(peers);
        }
    }

    /// Submit one recorded command buffer; returns the timeline value that marks its completion.
    pub(crate) fn submit(&self, dev: &RawDevice, cmd: vk::CommandBuffer) -> Result<u64> {
        dev.check_alive()?;
        let cmds = [cmd];
        let sems = [self.timeline];
        // Device-side waits: the peers' values the host saw reached, plus (fault injection) a
        // semaphore never signalled.
        // At most two peers (three distinct queues) and the injected hang.
        let mut wait_sems = [vk::Semaphore::null(); 4];
        let mut wait_values = [0u64; 4];
        let mut n = 0;
        for (sem, done) in self
            .peers
            .get()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .take(3)
        {
            let v = done.load(Ordering::Acquire);
            if v > 0 {
                wait_sems[n] = *sem;
                wait_values[n] = v;
                n += 1;
            }
        }
        #[cfg(feature = "fault-injection")]
        if dev.hang.load(Ordering::Acquire) {
            wait_sems[n] = dev.never;
            wait_values[n] = 1;
            n += 1;
        }
        let wait_stages = [vk::PipelineStageFlags::ALL_COMMANDS; 4];
        let (wait_sems, wait_values, wait_stages) =
            (&wait_sems[..n], &wait_values[..n], &wait_stages[..n]);
        let guard = lock(&self.handle);
        let value = self.submitted.load(Ordering::Relaxed) + 1;
        let values = [value];
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
            .signal_semaphore_values(&values)
            .wait_semaphore_values(wait_values);
        let submit = vk::SubmitInfo::default()
            .command_buffers(&cmds)
            .signal_semaphores(&sems)
            .wait_semaphores(wait_sems)
            .wait_dst_stage_mask(wait_stages)
            .push_next(&mut timeline);
        // SAFETY: the command buffer is recorded and not in use; the queue is externally
        // synchronised by `handle` (held); the caller keeps everything the commands use alive
        // until it has waited for `value`.
        unsafe {
            dev.device
                .queue_submit(*guard, &[submit], vk::Fence::null())
        }
        .map_err(|r| dev.fail("vkQueueSubmit", r))?;
        self.submitted.store(value, Ordering::Release);
        Ok(value)
    }

    /// The value of the latest submission (0: none yet).
    pub(crate) fn last_submitted(&self) -> u64 {
        self.submitted.load(Ordering::Acquire)
    }

    /// Whether `value` is known to be reached, without any call into the driver.
    pub(crate) fn known_done(&self, value: u64) -> bool {
        value == 0 || self.completed.load(Ordering::Acquire) >= value
    }

    fn counter(&self, dev: &RawDevice) -> Result<u64> {
        // SAFETY: the semaphore belongs to this device.
        let v = unsafe { dev.device.get_semaphore_counter_value(self.timeline) }
            .map_err(|r| dev.fail("vkGetSemaphoreCounterValue", r))?;
        self.completed.fetch_max(v, Ordering::AcqRel);
        Ok(v)
    }

    /// Wait until `value` is reached, holding no lock. Fails with `DeviceLost` (marking the
    /// device hung: the work may still run) after the device's one timeout, at once when another
    /// thread marks the device lost meanwhile, and on any other non-success result (also then
    /// `DeviceLost`, never `OutOfMemory`).
    pub(crate) fn wait(&self, dev: &RawDevice, value: u64) -> Result<()> {
        if self.known_done(value) {
            return Ok(());
        }
        // Every failed wait leaves the work's state unknown: the device counts as lost (not
        // out of memory or a plain Vulkan error, which would let callers free what the work
        // may still touch).
        let fault = |e: EngineError| {
            dev.mark_hung();
            match e {
                EngineError::DeviceLost(_) => e,
                other => EngineError::DeviceLost(format!(
                    "waiting for GPU work failed ({other}); device {} treated as lost",
                    dev.info.index
                )),
            }
        };
        if !dev.spin.is_zero() {
            let start = Instant::now();
            while start.elapsed() < dev.spin {
                if self.counter(dev).map_err(fault)? >= value {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
        }
        let deadline = Instant::now() + dev.timeout();
        let sems = [self.timeline];
        let values = [value];
        let info = vk::SemaphoreWaitInfo::default()
            .semaphores(&sems)
            .values(&values);
        loop {
            if dev.is_lost() {
                dev.mark_hung();
                return Err(dev.lost_error());
            }
            let now = Instant::now();
            if now >= deadline {
                dev.mark_hung();
                return Err(EngineError::DeviceLost(format!(
                    "GPU work did not finish within {:.1} s (device {} treated as lost)",
                    dev.timeout().as_secs_f64(),
                    dev.info.index
                )));
            }
            let slice = (deadline - now).min(WAIT_SLICE);
            let ns = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
            // SAFETY: the semaphore belongs to this device; `info` points to live arrays.
            match unsafe { dev.device.wait_semaphores(&info, ns) } {
                Ok(()) => {
                    self.completed.fetch_max(value, Ordering::AcqRel);
                    return Ok(());
                }
                Err(vk::Result::TIMEOUT) => {}
                Err(r) => return Err(fault(dev.fail("vkWaitSemaphores", r))),
            }
        }
    }

    /// Wait for everything submitted so far.
    pub(crate) fn wait_idle(&self, dev: &RawDevice) -> Result<()> {
        self.wait(dev, self.last_submitted())
    }

    /// Destroy the semaphore (device idle).
    pub(crate) fn destroy(&self, dev: &RawDevice) {
        // SAFETY: no submission signalling it is pending (device idle).
        unsafe { dev.device.destroy_semaphore(self.timeline, None) };
    }
}

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

    /// Give an item back (its latest submission may still run: the next user waits for it).
    pub(crate) fn put(&self, item: T) {
        lock(&self.state).free.push_back(item);
        self.returned.notify_one();
    }

    /// Give an item back unless the device hung (its work may still run: it is leaked).
    pub(crate) fn put_unless_hung(&self, dev: &RawDevice, item: T) {
        if !dev.is_hung() {
            self.put(item);
        }
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
        self.put_unless_hung(dev, slot);
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
