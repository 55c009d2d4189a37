//! Logical devices: queues (a universal one for device-side copies and fills, a transfer one for
//! host<->device DMA), command slots, submission/wait helpers, device-lost state, the
//! process-wide device cache, and the per-engine view of a device (`EngineDevice`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ash::vk;
use gpu_allocator::vulkan::{Allocator, AllocatorCreateDesc};
use gpu_allocator::{AllocationSizes, AllocatorDebugSettings};

use crate::compute::CopyPipeline;
use crate::error::{EngineError, Result};
use crate::instance::InstanceContext;
use crate::memory::{MemoryTypes, Slabs};
use crate::properties::{DeviceInfo, Strategy, StrategyRequest};
use crate::sync::lock;
use crate::transfer::StagingRing;
use crate::tuning::{tuning, Tuning};

/// Fence waits give up after this long: the device is then treated as lost (never a hang).
pub(crate) const FENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// One reusable command buffer + fence.
pub(crate) struct Slot {
    pub(crate) cmd: vk::CommandBuffer,
    pub(crate) fence: vk::Fence,
    /// Submitted and not yet waited for.
    pub(crate) pending: bool,
}

/// Everything that needs external synchronisation for one queue's work.
pub(crate) struct QueueState {
    pub(crate) queue: vk::Queue,
    /// The family supports compute (barriers then cover compute-shader copies too).
    pub(crate) compute: bool,
    pool: vk::CommandPool,
    pub(crate) slots: Vec<Slot>,
    /// Host staging buffers (created on first use; only on the DMA queue).
    pub(crate) ring: StagingRing,
}

/// A queue and its state.
pub(crate) struct Queue {
    pub(crate) state: Mutex<QueueState>,
}

/// A logical device, shared by every engine of the process that uses this physical device with
/// the same validation setting (see `shared_device`). Every allocation holds an `Arc` (through its
/// `EngineDevice`), so the device outlives all its buffers.
pub struct DeviceContext {
    /// Keeps the instance alive until this device (and every buffer on it) is destroyed.
    #[allow(dead_code)]
    instance: Arc<InstanceContext>,
    pub(crate) device: ash::Device,
    pub(crate) info: DeviceInfo,
    /// `None` only during destruction.
    pub(crate) allocator: Mutex<Option<Allocator>>,
    /// Device-side copies, fills, memmove.
    pub(crate) universal: Arc<Queue>,
    /// Host<->device DMA (the same `Arc` as `universal` when there is no separate family).
    pub(crate) dma: Arc<Queue>,
    /// The distinct queue families in use (buffers are shared CONCURRENTly between them).
    pub(crate) families: Vec<u32>,
    /// VK_EXT_external_memory_host functions, when enabled.
    pub(crate) ext_host: Option<ash::ext::external_memory_host::Device>,
    /// Memory type per use.
    pub(crate) types: MemoryTypes,
    /// The compute-shader copy (universal queue), when the device supports it.
    pub(crate) copy: Option<CopyPipeline>,
    /// Pools of small buffers.
    pub(crate) slabs: Mutex<Slabs>,
    lost: AtomicBool,
    /// Lost through a fence timeout: work may still be running, so nothing is ever freed.
    hung: AtomicBool,
    /// How long a wait polls its fence before blocking (zero on CPU devices, whose queue
    /// threads need the cores a poll would take).
    fence_spin: Duration,
    /// Bytes of device memory held, per heap (allocations, staging, pools, temporaries).
    pub(crate) heap_bytes: Vec<AtomicU64>,
    key: (bool, u64),
}

/// The process-wide device cache (see `shared_device`).
static DEVICES: Mutex<Vec<Arc<DeviceContext>>> = Mutex::new(Vec::new());

/// The logical device for `physical` on `instance`: created on first use and then shared by
/// every engine, for the life of the process, so that engines do not cycle through device
/// creation (slow, and limited on some drivers). A device that was lost is dropped from the
/// cache: the next engine to ask gets a fresh one, engines still holding the lost one fail fast.
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
    /// Create the logical device, its queues, allocator, command pools and slots.
    fn new(
        instance: Arc<InstanceContext>,
        physical: vk::PhysicalDevice,
        info: DeviceInfo,
        key: (bool, u64),
        tuning: &Tuning,
    ) -> Result<Self> {
        let priorities = [1.0f32];
        let universal_family = info.universal_queue_family;
        let dma_family = info.transfer_queue_family;
        let mut families = vec![universal_family];
        if dma_family != universal_family {
            families.push(dma_family);
        }
        let queue_infos: Vec<_> = families
            .iter()
            .map(|&f| {
                vk::DeviceQueueCreateInfo::default()
                    .queue_family_index(f)
                    .queue_priorities(&priorities)
            })
            .collect();
        let mut extensions = Vec::new();
        if info.extensions.memory_budget {
            extensions.push(ash::ext::memory_budget::NAME.as_ptr());
        }
        if info.extensions.portability_subset {
            extensions.push(ash::khr::portability_subset::NAME.as_ptr());
        }
        let import = info.min_imported_host_pointer_alignment.is_some();
        if import {
            extensions.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        // SAFETY: `physical` belongs to `instance`.
        let families_props = unsafe {
            instance
                .instance
                .get_physical_device_queue_family_properties(physical)
        };
        let compute_of = |f: u32| {
            families_props
                .get(f as usize)
                .is_some_and(|p| p.queue_flags.contains(vk::QueueFlags::COMPUTE))
        };
        let want_compute_copy = info.extensions.push_descriptor && compute_of(universal_family);
        if want_compute_copy {
            extensions.push(ash::khr::push_descriptor::NAME.as_ptr());
        }
        let create_info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_infos)
            .enabled_extension_names(&extensions);
        // SAFETY: `physical` belongs to `instance`; all pointers in `create_info` are alive.
        let device = unsafe {
            instance
                .instance
                .create_device(physical, &create_info, None)
        }
        .map_err(|r| EngineError::from_vk("vkCreateDevice", r))?;

        // From here on, `Partial` destroys what was created if a later step fails.
        let mut partial = Partial {
            device: Some(device.clone()),
            pools: Vec::new(),
            fences: Vec::new(),
        };
        let mut make_queue = |family: u32| -> Result<Arc<Queue>> {
            // SAFETY: the family was requested with one queue in `create_info`.
            let queue = unsafe { device.get_device_queue(family, 0) };
            let pool_info = vk::CommandPoolCreateInfo::default()
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
                .queue_family_index(family);
            // SAFETY: valid device and create info.
            let pool = unsafe { device.create_command_pool(&pool_info, None) }
                .map_err(|r| EngineError::from_vk("vkCreateCommandPool", r))?;
            partial.pools.push(pool);
            let alloc_info = vk::CommandBufferAllocateInfo::default()
                .command_pool(pool)
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(tuning.slots as u32);
            // SAFETY: the pool was created on this device.
            let cmds = unsafe { device.allocate_command_buffers(&alloc_info) }
                .map_err(|r| EngineError::from_vk("vkAllocateCommandBuffers", r))?;
            let mut slots = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                // SAFETY: valid device; default create info (unsignaled).
                let fence = unsafe { device.create_fence(&vk::FenceCreateInfo::default(), None) }
                    .map_err(|r| EngineError::from_vk("vkCreateFence", r))?;
                partial.fences.push(fence);
                slots.push(Slot {
                    cmd,
                    fence,
                    pending: false,
                });
            }
            Ok(Arc::new(Queue {
                state: Mutex::new(QueueState {
                    queue,
                    compute: compute_of(family),
                    pool,
                    slots,
                    ring: StagingRing::default(),
                }),
            }))
        };
        let universal = make_queue(universal_family)?;
        let dma = if dma_family == universal_family {
            Arc::clone(&universal)
        } else {
            make_queue(dma_family)?
        };
        let mut debug_settings = AllocatorDebugSettings::default();
        debug_settings.log_leaks_on_shutdown = false;
        let allocator = Allocator::new(&AllocatorCreateDesc {
            instance: instance.instance.clone(),
            device: device.clone(),
            physical_device: physical,
            debug_settings,
            buffer_device_address: false,
            allocation_sizes: AllocationSizes::default(),
        })?;
        let copy = if want_compute_copy && tuning.d2d_compute {
            CopyPipeline::new(&instance.instance, &device, &info)
        } else {
            None
        };
        partial.disarm();
        let fence_spin = if info.device_type == "cpu" {
            Duration::ZERO
        } else {
            Duration::from_micros(tuning.fence_spin_us)
        };
        let heap_bytes = info.heaps.iter().map(|_| AtomicU64::new(0)).collect();
        let ext_host = import
            .then(|| ash::ext::external_memory_host::Device::new(&instance.instance, &device));
        Ok(DeviceContext {
            types: MemoryTypes::choose(&info, tuning.upload_cached),
            copy,
            instance,
            device,
            info,
            allocator: Mutex::new(Some(allocator)),
            universal,
            dma,
            families,
            ext_host,
            slabs: Mutex::new(Slabs::default()),
            lost: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            fence_spin,
            heap_bytes,
            key,
        })
    }

    /// Fail fast with `DeviceLost` once the device was lost.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            Err(EngineError::DeviceLost(format!(
                "device {} ({}) was lost earlier; every later call on it fails \
                 (open a new backend to get a fresh device)",
                self.info.index, self.info.name
            )))
        } else {
            Ok(())
        }
    }

    /// Mark the device lost: every later call on it fails with `DeviceLost`, and it leaves the
    /// device cache so later engines get a fresh device.
    pub(crate) fn mark_lost(&self) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        let me: *const DeviceContext = self;
        let evicted: Vec<_> = {
            let mut cache = lock(&DEVICES);
            let (gone, keep) = std::mem::take(&mut *cache)
                .into_iter()
                .partition(|d| std::ptr::eq(Arc::as_ptr(d), me));
            *cache = keep;
            gone
        };
        // Dropped outside the cache lock (never the last reference: the caller holds one).
        drop(evicted);
    }

    /// Whether the device was marked lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Whether GPU work may still be running on a lost device (fence timeout).
    pub(crate) fn is_hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }

    /// Convert a failed Vulkan call, marking the device lost on VK_ERROR_DEVICE_LOST.
    pub(crate) fn fail(&self, call: &'static str, r: vk::Result) -> EngineError {
        if r == vk::Result::ERROR_DEVICE_LOST {
            self.mark_lost();
        }
        EngineError::from_vk(call, r)
    }

    /// Wait for a slot's fence if it was submitted. A timeout marks the device lost.
    pub(crate) fn wait_slot(&self, st: &mut QueueState, slot: usize) -> Result<()> {
        let s = st
            .slots
            .get_mut(slot)
            .ok_or_else(|| EngineError::Internal(format!("no command slot {slot}")))?;
        if !s.pending {
            return Ok(());
        }
        self.wait_fence(s.fence)?;
        s.pending = false;
        Ok(())
    }

    /// Wait for a submitted fence of this device. A timeout marks the device lost (and hung:
    /// nothing the work may use is ever freed).
    pub(crate) fn wait_fence(&self, fence: vk::Fence) -> Result<()> {
        // Poll first: a blocking wait sleeps until the driver's interrupt wakes it (tens of
        // microseconds on NVIDIA), a poll sees the fence as soon as it signals.
        if !self.fence_spin.is_zero() {
            let start = std::time::Instant::now();
            let limit = self.fence_spin;
            loop {
                // SAFETY: the fence belongs to this device.
                match unsafe { self.device.get_fence_status(fence) } {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(r) => return Err(self.fail("vkGetFenceStatus", r)),
                }
                if start.elapsed() >= limit {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let timeout = u64::try_from(FENCE_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device and was submitted with a batch.
        match unsafe { self.device.wait_for_fences(&[fence], true, timeout) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => {
                // The command buffer may still run: never reuse or free anything, fail every
                // later call.
                self.hung.store(true, Ordering::Release);
                self.mark_lost();
                Err(EngineError::DeviceLost(format!(
                    "GPU work did not finish within {} s (device treated as lost)",
                    FENCE_TIMEOUT.as_secs()
                )))
            }
            Err(r) => Err(self.fail("vkWaitForFences", r)),
        }
    }

    /// Wait for every pending slot; returns the first error but always tries all of them.
    pub(crate) fn wait_all(&self, st: &mut QueueState) -> Result<()> {
        let mut first = Ok(());
        for i in 0..st.slots.len() {
            if let Err(e) = self.wait_slot(st, i) {
                if first.is_ok() {
                    first = Err(e);
                }
                if self.is_lost() {
                    break;
                }
            }
        }
        first
    }

    /// Record commands into `slot` (waiting for its previous use first) and submit them with the
    /// slot's fence. The recording is framed by barriers making earlier transfer/host writes
    /// visible to the copy, and the copy's writes visible to the host after the fence wait.
    pub(crate) fn submit_slot(
        &self,
        st: &mut QueueState,
        slot: usize,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        self.check_alive()?;
        self.wait_slot(st, slot)?;
        let (queue, compute) = (st.queue, st.compute);
        let s = st
            .slots
            .get_mut(slot)
            .ok_or_else(|| EngineError::Internal(format!("no command slot {slot}")))?;
        // The fence and command buffer are idle (waited above, access serialised by the queue
        // mutex held by the caller through `st`).
        self.record_framed(s.cmd, s.fence, compute, record)?;
        let cmds = [s.cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        // SAFETY: the command buffer was recorded above; the queue is externally synchronised by
        // its mutex; everything referenced by the commands is kept alive by the caller until the
        // fence wait.
        unsafe { self.device.queue_submit(queue, &submit, s.fence) }
            .map_err(|r| self.fail("vkQueueSubmit", r))?;
        s.pending = true;
        Ok(())
    }

    /// Submit `cmd` (recorded with `record_framed`) to `queue` with `fence`, holding the queue's
    /// mutex only for the submission itself.
    pub(crate) fn submit_to(
        &self,
        queue: &Queue,
        cmd: vk::CommandBuffer,
        fence: vk::Fence,
    ) -> Result<()> {
        let cmds = [cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        let st = lock(&queue.state);
        self.check_alive()?;
        // SAFETY: the command buffer is recorded and idle; the queue is externally synchronised
        // by its mutex (held); the caller keeps everything the commands use alive until it has
        // waited for `fence`.
        unsafe { self.device.queue_submit(st.queue, &submit, fence) }
            .map_err(|r| self.fail("vkQueueSubmit", r))
    }

    /// Whether `queue`'s family supports compute.
    pub(crate) fn queue_compute(&self, queue: &Queue) -> bool {
        lock(&queue.state).compute
    }

    /// Reset `fence` and (re-)record `cmd`: `record`'s commands, framed by barriers making
    /// earlier transfer/host writes visible to them, and their writes visible to the host after
    /// the fence wait. `compute`: the queue family supports compute (the barriers then cover
    /// compute-shader copies too). The caller guarantees that neither object is in use.
    pub(crate) fn record_framed(
        &self,
        cmd: vk::CommandBuffer,
        fence: vk::Fence,
        compute: bool,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let d = &self.device;
        // SAFETY: the fence and command buffer belong to this device and are idle (caller).
        unsafe {
            d.reset_fences(&[fence])
                .map_err(|r| self.fail("vkResetFences", r))?;
            d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())
                .map_err(|r| self.fail("vkResetCommandBuffer", r))?;
            d.begin_command_buffer(
                cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(|r| self.fail("vkBeginCommandBuffer", r))?;
        }
        // Stages/accesses of this queue's work: transfers, and compute-shader copies where the
        // family supports compute.
        let (stages, writes, reads) = if compute {
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
        };
        let before = [vk::MemoryBarrier::default()
            .src_access_mask(writes | vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(reads | writes)];
        // SAFETY: the command buffer is in the recording state.
        unsafe {
            d.cmd_pipeline_barrier(
                cmd,
                stages | vk::PipelineStageFlags::HOST,
                stages,
                vk::DependencyFlags::empty(),
                &before,
                &[],
                &[],
            )
        };
        record(d, cmd);
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
            );
            d.end_command_buffer(cmd)
                .map_err(|r| self.fail("vkEndCommandBuffer", r))?;
        }
        Ok(())
    }

    /// Record, submit on `queue` and wait: for one-shot work (fills, device copies).
    pub(crate) fn run_now(
        &self,
        queue: &Queue,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let mut st = lock(&queue.state);
        self.submit_slot(&mut st, 0, record)?;
        self.wait_slot(&mut st, 0)
    }

    /// Wait until all work submitted to the device has finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        let queues: &[&Arc<Queue>] = if Arc::ptr_eq(&self.universal, &self.dma) {
            &[&self.universal]
        } else {
            &[&self.universal, &self.dma]
        };
        for q in queues {
            let mut st = lock(&q.state);
            self.wait_all(&mut st)?;
            // SAFETY: the queue is externally synchronised by its mutex.
            unsafe { self.device.queue_wait_idle(st.queue) }
                .map_err(|r| self.fail("vkQueueWaitIdle", r))?;
        }
        Ok(())
    }

    /// Sharing mode arguments for buffers used by every queue family of this device.
    pub(crate) fn sharing(&self) -> (vk::SharingMode, &[u32]) {
        if self.families.len() > 1 {
            (vk::SharingMode::CONCURRENT, &self.families)
        } else {
            (vk::SharingMode::EXCLUSIVE, &[])
        }
    }

    /// Whether both queues are one.
    pub(crate) fn single_queue(&self) -> bool {
        Arc::ptr_eq(&self.universal, &self.dma)
    }
}

impl Drop for DeviceContext {
    fn drop(&mut self) {
        if self.is_hung() {
            // Work may still be running on the device: destroying anything could fault it.
            // Leak the device and its memory instead (the driver reclaims it at process exit).
            if let Some(a) = self
                .allocator
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                std::mem::forget(a);
            }
            return;
        }
        // SAFETY: nothing else uses the device any more (we are the last Arc); waiting idle
        // before destroying is always valid, errors (device lost) are irrelevant here.
        let _ = unsafe { self.device.device_wait_idle() };
        let mut allocator = self
            .allocator
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = self.copy.take() {
            c.destroy(&self.device);
        }
        let slabs = std::mem::take(self.slabs.get_mut().unwrap_or_else(|e| e.into_inner()));
        slabs.destroy(&self.device, allocator.as_mut());
        let mut queues = vec![Arc::clone(&self.universal)];
        if !self.single_queue() {
            queues.push(Arc::clone(&self.dma));
        }
        for q in queues {
            let mut st = lock(&q.state);
            let ring = std::mem::take(&mut st.ring);
            ring.destroy(&self.device, allocator.as_mut());
            // SAFETY: the device is idle; fences/pool were created on it and are unused.
            unsafe {
                for s in &st.slots {
                    self.device.destroy_fence(s.fence, None);
                }
                self.device.destroy_command_pool(st.pool, None);
            }
        }
        // Frees every remaining memory block; must happen before the device goes.
        drop(allocator);
        // SAFETY: every child object of the device was destroyed above (all buffers were
        // destroyed by their owners, which held an Arc to this context).
        unsafe { self.device.destroy_device(None) };
    }
}

/// Cleanup guard for a half-built device.
struct Partial {
    device: Option<ash::Device>,
    pools: Vec<vk::CommandPool>,
    fences: Vec<vk::Fence>,
}

impl Partial {
    fn disarm(&mut self) {
        self.device = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(device) = self.device.take() {
            // SAFETY: the objects were created on this device and never submitted.
            unsafe {
                for f in &self.fences {
                    device.destroy_fence(*f, None);
                }
                for p in &self.pools {
                    device.destroy_command_pool(*p, None);
                }
                device.destroy_device(None);
            }
        }
    }
}

/// How one engine moves bytes on one device: the strategy and the size thresholds of each path.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Allocations up to this size live in DEVICE_LOCAL|HOST_VISIBLE memory (when the device
    /// has such a type).
    pub(crate) map_alloc_max: u64,
    /// Writes/reads up to this size go through the mapping of a host-visible allocation.
    pub(crate) map_write_max: u64,
    pub(crate) map_read_max: u64,
    /// Fresh host-visible allocations up to this size are zeroed through the mapping.
    pub(crate) map_zero_max: u64,
    /// Host buffers whose page-aligned interior is at least this large are imported.
    pub(crate) import_min: Option<u64>,
    /// Device-to-device copies by host memcpy (CPU devices: the device's own copy is a
    /// single-threaded memcpy on its queue thread).
    pub(crate) host_d2d: bool,
    /// Allocations up to this size are sub-allocated from pooled buffers.
    pub(crate) small_max: u64,
    /// Percent of a large write to a mapped allocation sent through the mapping while the rest
    /// goes through staging (0: off).
    pub(crate) hybrid_percent: u64,
}

impl Plan {
    pub(crate) fn new(info: &DeviceInfo, strategy: Strategy, t: &Tuning) -> Plan {
        let none = Plan {
            map_alloc_max: 0,
            map_write_max: 0,
            map_read_max: 0,
            map_zero_max: 0,
            import_min: None,
            host_d2d: false,
            small_max: t.small_max,
            hybrid_percent: 0,
        };
        let can_import = info.min_imported_host_pointer_alignment.is_some();
        let discrete_auto = t.force_discrete_plan
            && info.requested == StrategyRequest::Auto
            && info.host_visible_device_local;
        match strategy {
            Strategy::Mapped if !discrete_auto => Plan {
                map_alloc_max: u64::MAX,
                map_write_max: u64::MAX,
                map_read_max: u64::MAX,
                map_zero_max: u64::MAX,
                host_d2d: info.device_type == "cpu",
                ..none
            },
            Strategy::Mapped | Strategy::Staging if info.requested == StrategyRequest::Auto => {
                let hv = info.host_visible_device_local;
                Plan {
                    map_alloc_max: if hv { t.map_alloc_max } else { 0 },
                    map_write_max: if hv { t.map_write_max } else { 0 },
                    map_read_max: if hv { t.map_read_max } else { 0 },
                    map_zero_max: if hv { t.map_zero_max } else { 0 },
                    import_min: (t.auto_import && can_import).then_some(t.import_min),
                    hybrid_percent: if hv { t.hybrid_percent } else { 0 },
                    ..none
                }
            }
            Strategy::Mapped | Strategy::Staging => none,
            Strategy::Import => Plan {
                import_min: Some(t.import_min),
                ..none
            },
        }
    }
}

/// One engine's view of a shared device: its plan and its own allocation counters.
pub(crate) struct EngineDevice {
    pub(crate) ctx: Arc<DeviceContext>,
    pub(crate) plan: Plan,
    /// Live allocations of this engine on the device.
    pub(crate) live_allocations: AtomicU64,
    /// Bytes requested by them.
    pub(crate) live_bytes: AtomicU64,
    /// Bytes of device memory they hold, per heap.
    pub(crate) heap_bytes: Vec<AtomicU64>,
    /// Bytes moved between host and device by each path (mapping, staging ring, import),
    /// device-to-device bytes copied by the compute shader, and bytes copied to or from the
    /// device by cross-device copies.
    pub(crate) moved: [AtomicU64; 5],
    /// Imports the driver refused (the copy then went through staging).
    pub(crate) import_refused: AtomicU64,
}

impl EngineDevice {
    pub(crate) fn new(ctx: Arc<DeviceContext>, plan: Plan) -> EngineDevice {
        let heap_bytes = ctx.info.heaps.iter().map(|_| AtomicU64::new(0)).collect();
        EngineDevice {
            ctx,
            plan,
            live_allocations: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            heap_bytes,
            moved: Default::default(),
            import_refused: AtomicU64::new(0),
        }
    }

    /// Bytes this engine holds on each heap.
    pub(crate) fn heap_usage(&self) -> Vec<u64> {
        self.heap_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}
