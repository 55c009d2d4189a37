//! Buffers backed by gpu-allocator memory: memory-type choice per use, creation (with per-heap
//! accounting), destruction, pools of small buffers ("slabs"), and the user-visible `Allocation`
//! whose memory is released when its last `Arc` drops.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ash::vk;
use gpu_allocator::vulkan::{AllocationCreateDesc, AllocationScheme, Allocator};
use gpu_allocator::MemoryLocation;

use crate::device::{DeviceContext, EngineDevice};
use crate::error::{EngineError, Result};
use crate::properties::DeviceInfo;
use crate::sync::lock;

/// Buffers at least this large get their own (dedicated) memory allocation.
pub(crate) const DEDICATED_THRESHOLD: u64 = 64 << 20;

/// What a buffer is for; picks its memory type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Device-local memory the host cannot map (VRAM on discrete GPUs).
    Device,
    /// DEVICE_LOCAL|HOST_VISIBLE memory (UMA, ReBAR, CPU devices).
    DeviceMapped,
    /// Host memory the device reads from (upload staging).
    Upload,
    /// Host memory the device writes to and the host reads back (download staging).
    Download,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Device,
        Kind::DeviceMapped,
        Kind::Upload,
        Kind::Download,
    ];

    fn index(self) -> usize {
        match self {
            Kind::Device => 0,
            Kind::DeviceMapped => 1,
            Kind::Upload => 2,
            Kind::Download => 3,
        }
    }

    fn location(self) -> MemoryLocation {
        match self {
            Kind::Device => MemoryLocation::GpuOnly,
            Kind::DeviceMapped | Kind::Upload => MemoryLocation::CpuToGpu,
            Kind::Download => MemoryLocation::GpuToCpu,
        }
    }
}

/// The memory type index chosen for each `Kind` (`None`: let gpu-allocator pick by location).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryTypes {
    index: [Option<u32>; 4],
    heap: [usize; 4],
}

impl MemoryTypes {
    /// Pick a type per kind from the device's memory types.
    pub(crate) fn choose(info: &DeviceInfo, upload_cached: bool) -> MemoryTypes {
        use vk::MemoryPropertyFlags as F;
        let odd =
            F::LAZILY_ALLOCATED | F::PROTECTED | F::DEVICE_COHERENT_AMD | F::DEVICE_UNCACHED_AMD;
        let types: Vec<F> = info
            .memory_types
            .iter()
            .map(|t| F::from_raw(t.flags))
            .collect();
        let find = |has: F, not: F| -> Option<u32> {
            types
                .iter()
                .position(|&f| f.contains(has) && !f.intersects(not | odd))
                .and_then(|i| u32::try_from(i).ok())
        };
        let (dl, hv, hc, cached) = (
            F::DEVICE_LOCAL,
            F::HOST_VISIBLE,
            F::HOST_COHERENT,
            F::HOST_CACHED,
        );
        let device = find(dl, hv).or_else(|| find(dl, F::empty()));
        let device_mapped = find(dl | hv | hc | cached, F::empty())
            .or_else(|| find(dl | hv | hc, F::empty()))
            .or_else(|| find(dl | hv, F::empty()));
        let upload = if upload_cached {
            find(hv | hc | cached, dl).or_else(|| find(hv | hc, dl))
        } else {
            find(hv | hc, dl | cached).or_else(|| find(hv | hc, dl))
        }
        .or_else(|| find(hv | hc, F::empty()))
        .or_else(|| find(hv, F::empty()));
        let download = find(hv | hc | cached, dl)
            .or_else(|| find(hv | cached, dl))
            .or_else(|| find(hv | hc, dl))
            .or_else(|| find(hv | cached, F::empty()))
            .or_else(|| find(hv, F::empty()));
        let index = [device, device_mapped, upload, download];
        let heap = index.map(|i| {
            i.and_then(|i| info.memory_types.get(i as usize))
                .map_or(0, |t| t.heap as usize)
        });
        MemoryTypes { index, heap }
    }

    /// Whether a DEVICE_LOCAL|HOST_VISIBLE type exists.
    pub(crate) fn has_mapped(&self) -> bool {
        self.index[Kind::DeviceMapped.index()].is_some()
    }
}

/// A `vk::Buffer` bound to gpu-allocator memory.
pub(crate) struct GpuBuffer {
    pub(crate) buffer: vk::Buffer,
    alloc: Option<gpu_allocator::vulkan::Allocation>,
    /// Size of the `vk::Buffer`.
    pub(crate) size: u64,
    /// Persistent host mapping of the buffer's first byte, when host-visible.
    pub(crate) mapped: Option<NonNull<u8>>,
    /// The memory is HOST_COHERENT (no flush/invalidate needed).
    pub(crate) coherent: bool,
    /// The memory is HOST_CACHED (else host reads are uncached, e.g. a write-combined BAR).
    pub(crate) cached: bool,
    pub(crate) heap: usize,
    accounted: u64,
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
        let (memory, memory_offset) = self
            .alloc
            .as_ref()
            // SAFETY: the handle is only used for flush/invalidate of a range of this allocation.
            .map(|a| (unsafe { a.memory() }, a.offset()))
            .unwrap_or((vk::DeviceMemory::null(), 0));
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

impl DeviceContext {
    /// Create a buffer of `size` bytes with `usage` in memory of `kind`, shared by every queue
    /// family of the device.
    pub(crate) fn create_buffer(
        &self,
        size: u64,
        usage: vk::BufferUsageFlags,
        kind: Kind,
        name: &str,
    ) -> Result<GpuBuffer> {
        let d = &self.device;
        let (mode, families) = self.sharing();
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(mode)
            .queue_family_indices(families);
        // SAFETY: valid device and create info.
        let buffer =
            unsafe { d.create_buffer(&info, None) }.map_err(|r| self.fail("vkCreateBuffer", r))?;
        // SAFETY: the buffer was just created on this device.
        let mut requirements = unsafe { d.get_buffer_memory_requirements(buffer) };
        let scheme = if size >= DEDICATED_THRESHOLD {
            AllocationScheme::DedicatedBuffer(buffer)
        } else {
            AllocationScheme::GpuAllocatorManaged
        };
        // Pin the chosen type by masking the allowed bits; fall back to gpu-allocator's choice.
        let chosen = self.types.index[kind.index()]
            .filter(|&i| i < 32 && requirements.memory_type_bits & (1 << i) != 0);
        let (location, heap) = match chosen {
            Some(i) => {
                requirements.memory_type_bits = 1 << i;
                (MemoryLocation::Unknown, Some(self.types.heap[kind.index()]))
            }
            None => (kind.location(), None),
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
        let heap = heap.unwrap_or_else(|| self.heap_of(requirements.memory_type_bits, flags));
        let accounted = alloc.size();
        if let Some(h) = self.heap_bytes.get(heap) {
            h.fetch_add(accounted, Ordering::Relaxed);
        }
        Ok(GpuBuffer {
            buffer,
            mapped: alloc.mapped_ptr().map(|p| p.cast::<u8>()),
            coherent: flags.contains(vk::MemoryPropertyFlags::HOST_COHERENT),
            cached: flags.contains(vk::MemoryPropertyFlags::HOST_CACHED),
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
        if self.is_hung() {
            return; // work may still use it: leak rather than free under the GPU
        }
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

// -------------------------------------------------------------------------------------------------
// Pools of small buffers

/// Smallest pool slot (also the alignment of every slot: >= any minStorageBufferOffsetAlignment).
const MIN_SLOT: u64 = 256;
const CLASSES: usize = 17; // 256 B .. 16 MiB

/// Where a pooled allocation lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabRef {
    kind: Kind,
    class: usize,
    chunk: u64,
    slot: u32,
}

struct Chunk {
    id: u64,
    buf: GpuBuffer,
    free: Vec<u32>,
    slots: u32,
}

#[derive(Default)]
struct Class {
    chunks: Vec<Chunk>,
}

/// Power-of-two slot classes per memory kind; each class carves slots out of "chunk" buffers, so
/// a small allocation costs no vkCreateBuffer/vkAllocateMemory. A chunk that becomes empty is
/// destroyed unless it is the class's only one with room.
#[derive(Default)]
pub(crate) struct Slabs {
    classes: Vec<Class>,
    next_chunk: u64,
}

fn class_of(size: u64) -> (usize, u64) {
    let slot = size.max(MIN_SLOT).next_power_of_two();
    let class = (slot.trailing_zeros() - MIN_SLOT.trailing_zeros()) as usize;
    (class, slot)
}

fn chunk_bytes(slot: u64) -> u64 {
    (slot * 64).clamp(1 << 20, 16 << 20).max(slot)
}

impl Slabs {
    fn class_mut(&mut self, kind: Kind, class: usize) -> &mut Class {
        let i = kind.index() * CLASSES + class;
        if self.classes.len() <= i {
            self.classes
                .resize_with(Kind::ALL.len() * CLASSES, Class::default);
        }
        &mut self.classes[i]
    }

    /// Destroy every chunk (device idle).
    pub(crate) fn destroy(mut self, device: &ash::Device, mut allocator: Option<&mut Allocator>) {
        for class in &mut self.classes {
            for mut c in class.chunks.drain(..) {
                destroy_buffer_with(device, allocator.as_deref_mut(), &mut c.buf);
            }
        }
    }
}

impl DeviceContext {
    /// A pooled slot of at least `size` bytes (`size <= 16 MiB`).
    pub(crate) fn allocate_slab(&self, kind: Kind, size: u64) -> Result<(BufView, SlabRef)> {
        let (class, slot_size) = class_of(size);
        if class >= CLASSES {
            return Err(EngineError::Internal(format!(
                "{size} bytes is too large for a pool"
            )));
        }
        let mut slabs = lock(&self.slabs);
        let next_id = slabs.next_chunk;
        let c = slabs.class_mut(kind, class);
        let pos = match c.chunks.iter().rposition(|ch| !ch.free.is_empty()) {
            Some(p) => p,
            None => {
                let bytes = chunk_bytes(slot_size);
                let buf = self.create_buffer(bytes, allocation_usage(), kind, "exo-pool")?;
                let slots = u32::try_from(bytes / slot_size).unwrap_or(u32::MAX);
                c.chunks.push(Chunk {
                    id: next_id,
                    buf,
                    free: (0..slots).rev().collect(),
                    slots,
                });
                slabs.next_chunk += 1;
                let c = slabs.class_mut(kind, class);
                c.chunks.len() - 1
            }
        };
        let c = slabs.class_mut(kind, class);
        let chunk = &mut c.chunks[pos];
        let slot = chunk
            .free
            .pop()
            .ok_or_else(|| EngineError::Internal("pool chunk without room".into()))?;
        let view = chunk.buf.slice(u64::from(slot) * slot_size, slot_size);
        Ok((
            view,
            SlabRef {
                kind,
                class,
                chunk: chunk.id,
                slot,
            },
        ))
    }

    /// Return a pooled slot.
    pub(crate) fn free_slab(&self, r: SlabRef) {
        if self.is_hung() {
            return;
        }
        let mut empty = None;
        {
            let mut slabs = lock(&self.slabs);
            let c = slabs.class_mut(r.kind, r.class);
            let Some(pos) = c.chunks.iter().position(|ch| ch.id == r.chunk) else {
                return;
            };
            let chunk = &mut c.chunks[pos];
            chunk.free.push(r.slot);
            let now_empty = chunk.free.len() == chunk.slots as usize;
            let other_room = c
                .chunks
                .iter()
                .enumerate()
                .any(|(i, ch)| i != pos && !ch.free.is_empty());
            if now_empty && other_room {
                empty = Some(c.chunks.swap_remove(pos));
            }
        }
        if let Some(mut chunk) = empty {
            self.destroy_buffer(&mut chunk.buf);
        }
    }
}

// -------------------------------------------------------------------------------------------------
// User allocations

enum Backing {
    Own(GpuBuffer),
    Slab(SlabRef),
}

/// A user allocation. The table holds one `Arc`; an operation in flight holds another, so
/// `free` never pulls memory out from under a running copy.
pub struct Allocation {
    pub(crate) id: u64,
    pub(crate) dev: Arc<EngineDevice>,
    pub(crate) view: BufView,
    backing: Backing,
    /// User-visible size (the backing range is rounded up to 4 bytes for vkCmdFillBuffer).
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
        self.dev.ctx.info.index
    }

    pub(crate) fn ctx(&self) -> &DeviceContext {
        &self.dev.ctx
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        let ctx = &self.dev.ctx;
        match &mut self.backing {
            Backing::Own(buf) => ctx.destroy_buffer(buf),
            Backing::Slab(r) => ctx.free_slab(*r),
        }
        let d = &self.dev;
        d.live_allocations.fetch_sub(1, Ordering::Relaxed);
        d.live_bytes.fetch_sub(self.size, Ordering::Relaxed);
        if let Some(h) = d.heap_bytes.get(self.view.heap) {
            h.fetch_sub(self.view.len, Ordering::Relaxed);
        }
    }
}

/// Create a zero-filled user allocation of `size` bytes on `dev`.
pub(crate) fn new_allocation(dev: &Arc<EngineDevice>, id: u64, size: u64) -> Result<Allocation> {
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
    let ctx = &dev.ctx;
    let info = &ctx.info;
    // maxMemoryAllocationSize is advice, not a limit: the spec lets larger allocations fail with
    // VK_ERROR_OUT_OF_DEVICE_MEMORY (mapped to OutOfMemory), and some drivers report a smaller
    // figure than they grant. So only maxBufferSize and the heap sizes refuse up front.
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
    let plan = &dev.plan;
    let kind = if ctx.types.has_mapped() && buffer_size <= plan.map_alloc_max {
        Kind::DeviceMapped
    } else {
        Kind::Device
    };
    let make = |kind: Kind| -> Result<(BufView, Backing)> {
        if buffer_size <= plan.small_max {
            let (view, r) = ctx.allocate_slab(kind, buffer_size)?;
            Ok((view, Backing::Slab(r)))
        } else {
            let buf = ctx.create_buffer(buffer_size, allocation_usage(), kind, "exo-alloc")?;
            Ok((buf.view(), Backing::Own(buf)))
        }
    };
    let (view, backing) = match make(kind) {
        // Host-visible device memory can be scarcer (a BAR smaller than VRAM): fall back to
        // plain device memory, which the copy paths reach by DMA.
        Err(EngineError::OutOfMemory(_)) if kind == Kind::DeviceMapped => make(Kind::Device)?,
        other => other?,
    };
    let kind = if view.mapped.is_some() {
        kind
    } else {
        Kind::Device
    };
    // Counted before anything can fail, so Drop's decrement always matches.
    dev.live_allocations.fetch_add(1, Ordering::Relaxed);
    dev.live_bytes.fetch_add(size, Ordering::Relaxed);
    if let Some(h) = dev.heap_bytes.get(view.heap) {
        h.fetch_add(view.len, Ordering::Relaxed);
    }
    let alloc = Allocation {
        id,
        dev: Arc::clone(dev),
        view,
        backing,
        size,
    };
    if kind == Kind::DeviceMapped && alloc.view.mapped.is_none() {
        return Err(EngineError::Internal(
            "gpu-allocator returned non-host-visible memory for a mapped allocation".into(),
        ));
    }
    dev.zero_fill(&alloc.view)?;
    Ok(alloc)
}
