//! Buffers backed by gpu-allocator memory: creation (with per-heap accounting), destruction, and
//! the user-visible `Allocation` whose memory is released when its last `Arc` drops.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ash::vk;
use gpu_allocator::vulkan::{AllocationCreateDesc, AllocationScheme, Allocator};
use gpu_allocator::MemoryLocation;

use crate::device::DeviceContext;
use crate::error::{EngineError, Result};
use crate::sync::lock;

/// Buffers at least this large get their own (dedicated) memory allocation.
pub(crate) const DEDICATED_THRESHOLD: u64 = 64 << 20;

/// A `vk::Buffer` bound to gpu-allocator memory.
pub(crate) struct GpuBuffer {
    pub(crate) buffer: vk::Buffer,
    alloc: Option<gpu_allocator::vulkan::Allocation>,
    /// Size of the `vk::Buffer` (may exceed the user-visible size, see `Allocation`).
    pub(crate) size: u64,
    /// Persistent host mapping of the buffer's first byte, when host-visible.
    pub(crate) mapped: Option<NonNull<u8>>,
    /// The memory is HOST_COHERENT (no flush/invalidate needed).
    pub(crate) coherent: bool,
    heap: usize,
    accounted: u64,
}

// SAFETY: the raw mapped pointer points into device memory owned by `alloc`, valid until the
// buffer is destroyed; it carries no thread affinity. Concurrent access to the bytes is
// coordinated by the engine (bounds-checked memcpy; the caller owns the data race semantics of
// overlapping writes, as with any device memory).
unsafe impl Send for GpuBuffer {}
// SAFETY: see `Send`; `&GpuBuffer` exposes only the pointer value and plain fields.
unsafe impl Sync for GpuBuffer {}

impl GpuBuffer {
    /// `VkDeviceMemory` and offset of the buffer's memory (for flush/invalidate).
    pub(crate) fn memory_range(&self) -> Option<(vk::DeviceMemory, u64)> {
        // SAFETY: the handle is only used for flush/invalidate of a range of this allocation.
        self.alloc
            .as_ref()
            .map(|a| (unsafe { a.memory() }, a.offset()))
    }
}

impl DeviceContext {
    /// Create a buffer of `size` bytes with `usage`, memory from `location`.
    pub(crate) fn create_buffer(
        &self,
        size: u64,
        usage: vk::BufferUsageFlags,
        location: MemoryLocation,
        name: &str,
    ) -> Result<GpuBuffer> {
        let d = &self.device;
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid device and create info.
        let buffer =
            unsafe { d.create_buffer(&info, None) }.map_err(|r| self.fail("vkCreateBuffer", r))?;
        // SAFETY: the buffer was just created on this device.
        let requirements = unsafe { d.get_buffer_memory_requirements(buffer) };
        let scheme = if size >= DEDICATED_THRESHOLD {
            AllocationScheme::DedicatedBuffer(buffer)
        } else {
            AllocationScheme::GpuAllocatorManaged
        };
        let result = {
            let mut guard = lock(&self.allocator);
            match guard.as_mut() {
                Some(a) => a
                    .allocate(&AllocationCreateDesc {
                        name,
                        requirements,
                        location,
                        linear: true,
                        allocation_scheme: scheme,
                    })
                    .map_err(EngineError::from),
                None => Err(EngineError::Closed),
            }
        };
        let alloc = match result {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: the buffer is unused and unbound.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(e);
            }
        };
        // SAFETY: memory/offset come from an allocation satisfying `requirements`.
        if let Err(r) = unsafe { d.bind_buffer_memory(buffer, alloc.memory(), alloc.offset()) } {
            if let Some(a) = lock(&self.allocator).as_mut() {
                let _ = a.free(alloc);
            }
            // SAFETY: the buffer is unused.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(self.fail("vkBindBufferMemory", r));
        }
        let flags = alloc.memory_properties();
        let heap = self.heap_of(requirements.memory_type_bits, flags);
        let accounted = alloc.size();
        if let Some(h) = self.heap_bytes.get(heap) {
            h.fetch_add(accounted, Ordering::Relaxed);
        }
        Ok(GpuBuffer {
            buffer,
            mapped: alloc.mapped_ptr().map(|p| p.cast::<u8>()),
            coherent: flags.contains(vk::MemoryPropertyFlags::HOST_COHERENT),
            alloc: Some(alloc),
            size,
            heap,
            accounted,
        })
    }

    /// Heap of the first memory type allowed by `bits` with exactly `flags` (the type
    /// gpu-allocator picked; it does not expose the index itself).
    fn heap_of(&self, bits: u32, flags: vk::MemoryPropertyFlags) -> usize {
        let types = &self.info.memory_types;
        let pick = |exact: bool| {
            types.iter().enumerate().find(|(i, t)| {
                *i < 32
                    && bits & (1 << i) != 0
                    && if exact {
                        t.flags == flags.as_raw()
                    } else {
                        vk::MemoryPropertyFlags::from_raw(t.flags).contains(flags)
                    }
            })
        };
        pick(true)
            .or_else(|| pick(false))
            .map(|(_, t)| t.heap as usize)
            .unwrap_or(0)
    }

    /// Destroy a buffer and return its memory to the allocator.
    pub(crate) fn destroy_buffer(&self, buf: &mut GpuBuffer) {
        let mut guard = lock(&self.allocator);
        destroy_buffer_with(&self.device, guard.as_mut(), buf);
        if let Some(h) = self.heap_bytes.get(buf.heap) {
            h.fetch_sub(std::mem::take(&mut buf.accounted), Ordering::Relaxed);
        }
    }
}

/// Destroy `buf` given the device and (if still alive) the allocator.
pub(crate) fn destroy_buffer_with(
    device: &ash::Device,
    allocator: Option<&mut Allocator>,
    buf: &mut GpuBuffer,
) {
    if buf.buffer != vk::Buffer::null() {
        // SAFETY: no submitted work uses the buffer (every engine call waits for its work before
        // returning, and the device is idle during teardown).
        unsafe { device.destroy_buffer(buf.buffer, None) };
        buf.buffer = vk::Buffer::null();
    }
    buf.mapped = None;
    if let (Some(a), Some(alloc)) = (allocator, buf.alloc.take()) {
        let _ = a.free(alloc);
    }
}

/// A user allocation. The table holds one `Arc`; an operation in flight holds another, so
/// `free` never pulls memory out from under a running copy.
pub struct Allocation {
    pub(crate) id: u64,
    pub(crate) device: Arc<DeviceContext>,
    pub(crate) buf: GpuBuffer,
    /// User-visible size (the buffer is rounded up to 4 bytes for vkCmdFillBuffer).
    pub(crate) size: u64,
}

impl Allocation {
    /// The id the engine handed out.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Requested size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Index of the device the allocation lives on.
    pub fn device_index(&self) -> usize {
        self.device.info.index
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.device.destroy_buffer(&mut self.buf);
        self.device.live_allocations.fetch_sub(1, Ordering::Relaxed);
        self.device
            .live_bytes
            .fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// Usage of every user allocation.
pub(crate) fn allocation_usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST
        | vk::BufferUsageFlags::STORAGE_BUFFER
}

/// Create a zero-filled user allocation of `size` bytes on `device`.
pub(crate) fn new_allocation(
    device: &Arc<DeviceContext>,
    id: u64,
    size: u64,
) -> Result<Allocation> {
    use crate::properties::Strategy;
    if size == 0 {
        return Err(EngineError::InvalidArgument(
            "allocation size must be > 0".into(),
        ));
    }
    // vkCmdFillBuffer works in 4-byte units: round the buffer up so the whole range is zeroed.
    let buffer_size = size
        .checked_add(3)
        .map(|s| s & !3)
        .ok_or_else(|| EngineError::OutOfMemory(format!("{size} bytes is too large")))?;
    let info = &device.info;
    if buffer_size > info.max_memory_allocation_size {
        return Err(EngineError::OutOfMemory(format!(
            "{size} bytes exceeds maxMemoryAllocationSize ({}) of device {}",
            info.max_memory_allocation_size, info.index
        )));
    }
    if let Some(max) = info.max_buffer_size {
        if buffer_size > max {
            return Err(EngineError::OutOfMemory(format!(
                "{size} bytes exceeds maxBufferSize ({max}) of device {}",
                info.index
            )));
        }
    }
    if info.heaps.iter().all(|h| buffer_size > h.size) {
        return Err(EngineError::OutOfMemory(format!(
            "{size} bytes exceeds every memory heap of device {}",
            info.index
        )));
    }
    let location = match device.strategy {
        Strategy::Mapped => MemoryLocation::CpuToGpu,
        Strategy::Staging => MemoryLocation::GpuOnly,
    };
    let name = format!("exo-alloc-{id}");
    let buf = device.create_buffer(buffer_size, allocation_usage(), location, &name)?;
    let alloc = Allocation {
        id,
        device: Arc::clone(device),
        buf,
        size,
    };
    // Counted before anything can fail, so Drop's decrement always matches.
    device.live_allocations.fetch_add(1, Ordering::Relaxed);
    device.live_bytes.fetch_add(size, Ordering::Relaxed);
    if device.strategy == Strategy::Mapped && alloc.buf.mapped.is_none() {
        return Err(EngineError::Internal(
            "gpu-allocator returned non-host-visible memory for a mapped allocation".into(),
        ));
    }
    device.zero_fill(&alloc.buf)?;
    Ok(alloc)
}
