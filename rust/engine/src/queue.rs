//! Submission and completion, in the shape of wgpu-hal and CUDA streams: a queue's mutex is held
//! only around vkQueueSubmit; every submission signals the queue's timeline semaphore with the
//! next value, and callers wait for values outside every lock.
//!
//! A semaphore signal made by vkQueueSubmit covers every command submitted earlier to that
//! queue, so "value v reached" means all work up to v on the queue is done.
//!
//! `slots` holds the command ring built on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ash::vk;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::sync::lock;

/// A blocking wait checks the device's lost state at least this often.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(20);

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
