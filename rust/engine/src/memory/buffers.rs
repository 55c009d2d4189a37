//! Buffers as the copy paths see them: a `GpuBuffer` (a `vk::Buffer` bound to gpu-allocator
//! memory, persistently mapped when host-visible), `BufView` ranges of one, and exact,
//! atom-aligned flush/invalidate of non-coherent mappings.

use std::ptr::NonNull;

use ash::vk;
use gpu_allocator::vulkan::Allocator;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};

/// A `vk::Buffer` bound to gpu-allocator memory.
pub(crate) struct GpuBuffer {
    pub(crate) buffer: vk::Buffer,
    pub(super) alloc: Option<gpu_allocator::vulkan::Allocation>,
    /// Size of the `vk::Buffer`.
    pub(crate) size: u64,
    /// Persistent host mapping of the buffer's first byte, when host-visible.
    pub(crate) mapped: Option<NonNull<u8>>,
    /// The memory is HOST_COHERENT (no flush/invalidate needed).
    pub(crate) coherent: bool,
    /// The memory is HOST_CACHED (else host reads are uncached, e.g. a write-combined BAR).
    pub(crate) cached: bool,
    pub(crate) heap: usize,
    /// Bytes counted on `heap` for this buffer (returned by `Memory::destroy_buffer`).
    pub(super) accounted: u64,
}

// SAFETY: the raw mapped pointer points into device memory owned by `alloc`, valid until the
// buffer is destroyed; it carries no thread affinity. Concurrent access to the bytes is
// coordinated by the engine (bounds-checked memcpy; the caller owns the data race semantics of
// overlapping writes, as with any device memory).
unsafe impl Send for GpuBuffer {}
// SAFETY: see `Send`; `&GpuBuffer` exposes only the pointer value and plain fields.
unsafe impl Sync for GpuBuffer {}

/// A range of a buffer as the copy paths see it: a whole `GpuBuffer` or one slot of a pool.
#[derive(Clone, Copy)]
pub(crate) struct BufView {
    pub(crate) buffer: vk::Buffer,
    /// Offset of the range within `buffer`.
    pub(crate) offset: u64,
    /// Bytes in the range (a multiple of 4, at least the user-visible size).
    pub(crate) len: u64,
    /// Host mapping of the range's first byte, when host-visible.
    pub(crate) mapped: Option<NonNull<u8>>,
    pub(crate) coherent: bool,
    pub(crate) cached: bool,
    /// Memory object and the range's offset in it (for flush/invalidate).
    pub(crate) memory: vk::DeviceMemory,
    pub(crate) memory_offset: u64,
    /// End of the buffer's sub-allocation in the memory object (flushes never pass it).
    pub(crate) memory_end: u64,
    pub(crate) heap: usize,
}

// SAFETY: as for `GpuBuffer`: plain handles and a pointer into memory kept alive by the owner.
unsafe impl Send for BufView {}
// SAFETY: as above.
unsafe impl Sync for BufView {}

impl GpuBuffer {
    /// The whole buffer as a view.
    pub(crate) fn view(&self) -> BufView {
        self.slice(0, self.size)
    }

    /// `[offset, offset+len)` of the buffer as a view (caller keeps it in bounds).
    pub(crate) fn slice(&self, offset: u64, len: u64) -> BufView {
        let (memory, memory_offset, memory_end) = self
            .alloc
            .as_ref()
            // SAFETY: the handle is only used for flush/invalidate of a range of this allocation.
            .map(|a| (unsafe { a.memory() }, a.offset(), a.offset() + a.size()))
            .unwrap_or((vk::DeviceMemory::null(), 0, 0));
        BufView {
            buffer: self.buffer,
            offset,
            len,
            // SAFETY: `offset < size` (caller), so the pointer stays inside the mapping.
            mapped: self
                .mapped
                .map(|p| unsafe { NonNull::new_unchecked(p.as_ptr().add(offset as usize)) }),
            coherent: self.coherent,
            cached: self.cached,
            memory,
            memory_offset: memory_offset + offset,
            memory_end,
            heap: self.heap,
        }
    }
}

/// Usage of every user allocation (and pool buffer).
pub(crate) fn allocation_usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST
        | vk::BufferUsageFlags::STORAGE_BUFFER
}

/// The host mapping of a view.
pub(crate) fn mapped_of(v: &BufView) -> Result<NonNull<u8>> {
    v.mapped
        .ok_or_else(|| EngineError::Internal("buffer is not host-visible".into()))
}

/// `(base + offset)` as a pointer into a mapping, after bounds were checked by the caller.
pub(crate) fn at(base: NonNull<u8>, offset: u64) -> Result<*mut u8> {
    let off = usize::try_from(offset)
        .map_err(|_| EngineError::OutOfBounds(format!("offset {offset} exceeds address space")))?;
    // SAFETY: callers bounds-check `offset` against the mapped range, so the result stays
    // within (or one past) the mapping.
    Ok(unsafe { base.as_ptr().add(off) })
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

/// The atom-aligned memory range covering `[offset, offset+len)` of `v`: its start rounded down
/// and its end rounded up to nonCoherentAtomSize, capped at the end of the sub-allocation (which
/// `create_buffer` aligned to the atom, or which ends its dedicated memory object), so it never
/// reaches a neighbour.
fn mapped_range(
    dev: &RawDevice,
    v: &BufView,
    offset: u64,
    len: u64,
) -> vk::MappedMemoryRange<'static> {
    let atom = dev.info.non_coherent_atom_size.max(1);
    let first = v.memory_offset.saturating_add(offset);
    let start = first / atom * atom;
    let end = first
        .saturating_add(len)
        .next_multiple_of(atom)
        .min(v.memory_end.max(first.saturating_add(len)));
    // Non-coherent sub-allocations start and end on atoms (`create_buffer`), dedicated ones
    // are their memory object: the range is whole atoms or ends with the memory.
    debug_assert!(
        end <= v.memory_end && (end % atom == 0 || end == v.memory_end),
        "flush/invalidate range [{start}, {end}) vs allocation end {}",
        v.memory_end
    );
    vk::MappedMemoryRange::default()
        .memory(v.memory)
        .offset(start)
        .size(end - start)
}

/// Make host writes to `[offset, offset+len)` of a mapped range visible to the device.
pub(crate) fn flush(dev: &RawDevice, v: &BufView, offset: u64, len: u64) -> Result<()> {
    if v.coherent || len == 0 {
        return Ok(());
    }
    let range = mapped_range(dev, v, offset, len);
    // SAFETY: the range lies in host-visible memory of this device that is mapped.
    unsafe { dev.device.flush_mapped_memory_ranges(&[range]) }
        .map_err(|r| dev.fail("vkFlushMappedMemoryRanges", r))
}

/// Make device writes to `[offset, offset+len)` of a mapped range visible to the host.
///
/// On non-coherent memory the range is rounded out to whole atoms (within the allocation), so
/// host writes to bytes of the same allocation that share an edge atom and are not yet flushed
/// would be discarded: the engine flushes every host write within the call that made it, picks
/// coherent types wherever the device has them (`MemoryTypes::choose`), and pinned host memory
/// is always coherent (`host::allocate`).
pub(crate) fn invalidate(dev: &RawDevice, v: &BufView, offset: u64, len: u64) -> Result<()> {
    if v.coherent || len == 0 {
        return Ok(());
    }
    let range = mapped_range(dev, v, offset, len);
    // SAFETY: as in `flush`.
    unsafe { dev.device.invalidate_mapped_memory_ranges(&[range]) }
        .map_err(|r| dev.fail("vkInvalidateMappedMemoryRanges", r))
}
