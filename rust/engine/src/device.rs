//! Logical device: queue, allocator, one command pool with reused command buffers + fences
//! (slots), submission/wait helpers, device-lost state, and orderly destruction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ash::vk;
use gpu_allocator::vulkan::{Allocator, AllocatorCreateDesc};
use gpu_allocator::{AllocationSizes, AllocatorDebugSettings};

use crate::error::{EngineError, Result};
use crate::instance::InstanceContext;
use crate::properties::{DeviceInfo, Strategy};
use crate::sync::lock;
use crate::transfer::StagingRing;

/// Number of command-buffer/fence slots (and staging-ring slots).
pub(crate) const SLOTS: usize = 4;

/// Fence waits give up after this long: the device is then treated as lost (never a hang).
pub(crate) const FENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// One reusable command buffer + fence.
pub(crate) struct Slot {
    pub(crate) cmd: vk::CommandBuffer,
    pub(crate) fence: vk::Fence,
    /// Submitted and not yet waited for.
    pub(crate) pending: bool,
}

/// Everything that needs external synchronisation for queue work; guarded by
/// `DeviceContext::submit`.
pub(crate) struct SubmitState {
    pub(crate) queue: vk::Queue,
    pool: vk::CommandPool,
    pub(crate) slots: Vec<Slot>,
    /// Host staging buffers (created on first use, "staging" strategy only).
    pub(crate) ring: StagingRing,
}

/// A logical device and its per-device state. Shared through `Arc`: every allocation holds one,
/// so the device outlives all its buffers.
pub struct DeviceContext {
    /// Keeps the instance alive until this device (and every buffer on it) is destroyed.
    #[allow(dead_code)]
    instance: Arc<InstanceContext>,
    pub(crate) device: ash::Device,
    pub(crate) info: DeviceInfo,
    pub(crate) strategy: Strategy,
    /// `None` only during destruction.
    pub(crate) allocator: Mutex<Option<Allocator>>,
    pub(crate) submit: Mutex<SubmitState>,
    lost: AtomicBool,
    /// Bytes of device memory the engine holds, per heap (allocations, staging, temporaries).
    pub(crate) heap_bytes: Vec<AtomicU64>,
    /// Live user allocations on this device.
    pub(crate) live_allocations: AtomicU64,
    /// Bytes requested by live user allocations.
    pub(crate) live_bytes: AtomicU64,
}

impl DeviceContext {
    /// Create the logical device, its queue, allocator, command pool and slots.
    pub(crate) fn new(
        instance: Arc<InstanceContext>,
        physical: vk::PhysicalDevice,
        info: DeviceInfo,
    ) -> Result<Self> {
        let strategy = info.require_strategy()?;
        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(info.transfer_queue_family)
            .queue_priorities(&priorities)];
        let mut extensions = Vec::new();
        if info.extensions.memory_budget {
            extensions.push(ash::ext::memory_budget::NAME.as_ptr());
        }
        if info.extensions.portability_subset {
            extensions.push(ash::khr::portability_subset::NAME.as_ptr());
        }
        let create_info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_info)
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
            pool: vk::CommandPool::null(),
            fences: Vec::new(),
        };
        // SAFETY: the family/queue index pair was requested in `create_info`.
        let queue = unsafe { device.get_device_queue(info.transfer_queue_family, 0) };
        let pool_info = vk::CommandPoolCreateInfo::default()
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
            .queue_family_index(info.transfer_queue_family);
        // SAFETY: valid device and create info.
        partial.pool = unsafe { device.create_command_pool(&pool_info, None) }
            .map_err(|r| EngineError::from_vk("vkCreateCommandPool", r))?;
        let alloc_info = vk::CommandBufferAllocateInfo::default()
            .command_pool(partial.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(SLOTS as u32);
        // SAFETY: the pool was created on this device.
        let cmds = unsafe { device.allocate_command_buffers(&alloc_info) }
            .map_err(|r| EngineError::from_vk("vkAllocateCommandBuffers", r))?;
        let mut slots = Vec::with_capacity(SLOTS);
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
        let pool = partial.pool;
        partial.disarm();
        let heap_bytes = info.heaps.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(DeviceContext {
            instance,
            device,
            strategy,
            info,
            allocator: Mutex::new(Some(allocator)),
            submit: Mutex::new(SubmitState {
                queue,
                pool,
                slots,
                ring: StagingRing::default(),
            }),
            lost: AtomicBool::new(false),
            heap_bytes,
            live_allocations: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
        })
    }

    /// Fail fast with `DeviceLost` once the device was lost.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            Err(EngineError::DeviceLost(format!(
                "device {} ({}) was lost earlier",
                self.info.index, self.info.name
            )))
        } else {
            Ok(())
        }
    }

    /// Mark the device lost: every later call on it fails with `DeviceLost`.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Whether the device was marked lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Convert a failed Vulkan call, marking the device lost on VK_ERROR_DEVICE_LOST.
    pub(crate) fn fail(&self, call: &'static str, r: vk::Result) -> EngineError {
        if r == vk::Result::ERROR_DEVICE_LOST {
            self.mark_lost();
        }
        EngineError::from_vk(call, r)
    }

    /// Wait for a slot's fence if it was submitted. A timeout marks the device lost.
    pub(crate) fn wait_slot(&self, st: &mut SubmitState, slot: usize) -> Result<()> {
        let s = st
            .slots
            .get_mut(slot)
            .ok_or_else(|| EngineError::Internal(format!("no command slot {slot}")))?;
        if !s.pending {
            return Ok(());
        }
        let timeout = u64::try_from(FENCE_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device and was submitted with a batch.
        match unsafe { self.device.wait_for_fences(&[s.fence], true, timeout) } {
            Ok(()) => {
                s.pending = false;
                Ok(())
            }
            Err(vk::Result::TIMEOUT) => {
                // The command buffer may still run: never reuse it, fail every later call.
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
    pub(crate) fn wait_all(&self, st: &mut SubmitState) -> Result<()> {
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
        st: &mut SubmitState,
        slot: usize,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        self.check_alive()?;
        self.wait_slot(st, slot)?;
        let queue = st.queue;
        let s = st
            .slots
            .get_mut(slot)
            .ok_or_else(|| EngineError::Internal(format!("no command slot {slot}")))?;
        let d = &self.device;
        // SAFETY: the fence and command buffer belong to this device and are idle (waited above,
        // access serialised by the `submit` mutex held by the caller through `st`).
        unsafe {
            d.reset_fences(&[s.fence])
                .map_err(|r| self.fail("vkResetFences", r))?;
            d.reset_command_buffer(s.cmd, vk::CommandBufferResetFlags::empty())
                .map_err(|r| self.fail("vkResetCommandBuffer", r))?;
            d.begin_command_buffer(
                s.cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(|r| self.fail("vkBeginCommandBuffer", r))?;
        }
        let before = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)];
        // SAFETY: the command buffer is in the recording state.
        unsafe {
            d.cmd_pipeline_barrier(
                s.cmd,
                vk::PipelineStageFlags::TRANSFER | vk::PipelineStageFlags::HOST,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &before,
                &[],
                &[],
            )
        };
        record(d, s.cmd);
        let after = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ | vk::AccessFlags::HOST_WRITE)];
        let cmds = [s.cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        // SAFETY: recording state; the queue is externally synchronised by the `submit` mutex;
        // everything referenced by the commands is kept alive by the caller until the fence
        // wait.
        unsafe {
            d.cmd_pipeline_barrier(
                s.cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &after,
                &[],
                &[],
            );
            d.end_command_buffer(s.cmd)
                .map_err(|r| self.fail("vkEndCommandBuffer", r))?;
            d.queue_submit(queue, &submit, s.fence)
                .map_err(|r| self.fail("vkQueueSubmit", r))?;
        }
        s.pending = true;
        Ok(())
    }

    /// Record, submit on slot 0 and wait: for one-shot work (fills, device copies).
    pub(crate) fn run_now(
        &self,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let mut st = lock(&self.submit);
        self.submit_slot(&mut st, 0, record)?;
        self.wait_slot(&mut st, 0)
    }

    /// Wait until all work submitted to the device has finished.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        let mut st = lock(&self.submit);
        self.wait_all(&mut st)?;
        // SAFETY: the queue is externally synchronised by the `submit` mutex.
        unsafe { self.device.queue_wait_idle(st.queue) }
            .map_err(|r| self.fail("vkQueueWaitIdle", r))
    }

    /// Total bytes the engine holds on each heap.
    pub(crate) fn heap_usage(&self) -> Vec<u64> {
        self.heap_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for DeviceContext {
    fn drop(&mut self) {
        // SAFETY: nothing else uses the device any more (we are the last Arc); waiting idle
        // before destroying is always valid, errors (device lost) are irrelevant here.
        let _ = unsafe { self.device.device_wait_idle() };
        let st = self.submit.get_mut().unwrap_or_else(|e| e.into_inner());
        let ring = std::mem::take(&mut st.ring);
        let mut allocator = self
            .allocator
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        ring.destroy(&self.device, allocator.as_mut());
        // SAFETY: the device is idle; fences/pool were created on it and are no longer used.
        unsafe {
            for s in &st.slots {
                self.device.destroy_fence(s.fence, None);
            }
            self.device.destroy_command_pool(st.pool, None);
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
    pool: vk::CommandPool,
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
                if self.pool != vk::CommandPool::null() {
                    device.destroy_command_pool(self.pool, None);
                }
                device.destroy_device(None);
            }
        }
    }
}
