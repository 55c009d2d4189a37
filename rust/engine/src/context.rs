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
use crate::memory::Memory;
use crate::properties::DeviceInfo;
use crate::queue::{CmdSlot, Queue, Slots};
use crate::staging::{Direction, StagingRing};
use crate::sync::lock;
use crate::tuning::{tuning, Tuning};

/// Command slots for device-side work (fills, device copies, memmove) per device.
const WORK_SLOTS: usize = 16;

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
