//! Buffers backed by gpu-allocator memory: memory-type choice per use, creation and destruction
//! with running per-heap counters, pools of small buffers ("slabs", O(1) allocate and free),
//! and exact, atom-aligned flush/invalidate of non-coherent mappings.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ash::vk;
use gpu_allocator::vulkan::{AllocationCreateDesc, AllocationScheme, Allocator};
use gpu_allocator::MemoryLocation;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::properties::{query_budgets, DeviceInfo, MemoryTypeInfo};
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
    /// Host memory the device writes to and the host reads back (download staging, pinned
    /// host buffers).
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
    pub(crate) fn choose(memory_types: &[MemoryTypeInfo], upload_cached: bool) -> MemoryTypes {
        use vk::MemoryPropertyFlags as F;
        let odd =
            F::LAZILY_ALLOCATED | F::PROTECTED | F::DEVICE_COHERENT_AMD | F::DEVICE_UNCACHED_AMD;
        let types: Vec<F> = memory_types.iter().map(|t| F::from_raw(t.flags)).collect();
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
        // On UMA devices every device-local type is host-visible: prefer a coherent one.
        let device = find(dl, hv)
            .or_else(|| find(dl | hc, F::empty()))
            .or_else(|| find(dl, F::empty()));
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
            i.and_then(|i| memory_types.get(i as usize))
                .map_or(0, |t| t.heap as usize)
        });
        MemoryTypes { index, heap }
    }

    /// Whether a DEVICE_LOCAL|HOST_VISIBLE type exists.
    pub(crate) fn has_mapped(&self) -> bool {
        self.index[Kind::DeviceMapped.index()].is_some()
    }

    /// The memory type chosen for `kind`, if the device has one.
    pub(crate) fn type_of(&self, kind: Kind) -> Option<u32> {
        self.index[kind.index()]
    }

    /// Whether every user allocation lands in host-visible, host-coherent memory (UMA and CPU
    /// devices: even `Device` memory is mapped), so the CPU can always read it in place.
    pub(crate) fn every_allocation_mapped(&self, memory_types: &[MemoryTypeInfo]) -> bool {
        use vk::MemoryPropertyFlags as F;
        let coherent = |kind: Kind| {
            self.type_of(kind)
                .and_then(|i| memory_types.get(i as usize))
                .is_some_and(|t| F::from_raw(t.flags).contains(F::HOST_VISIBLE | F::HOST_COHERENT))
        };
        coherent(Kind::Device)
            && (self.type_of(Kind::DeviceMapped).is_none() || coherent(Kind::DeviceMapped))
    }

    /// The heap memory of `kind` comes from, when the type is pinned (not left to gpu-allocator).
    fn heap_of(&self, kind: Kind) -> Option<usize> {
        self.index[kind.index()].map(|_| self.heap[kind.index()])
    }
}

/// Bytes held on each heap of a physical device by the whole process: engines with and without
/// validation open separate logical devices of one physical device, and some drivers (lavapipe)
/// grant allocations far past a heap's size, so the engine holds the heaps itself.
type ProcessHeaps = Arc<[AtomicU64]>;
/// A physical device: its UUID and its index in the device list.
type PhysicalKey = ([u8; 16], usize);
static PROCESS_HEAPS: Mutex<Vec<(PhysicalKey, ProcessHeaps)>> = Mutex::new(Vec::new());

/// The process-wide heap counters of the physical device `info` describes.
pub(crate) fn process_heaps(info: &DeviceInfo) -> ProcessHeaps {
    let key = (info.device_uuid, info.index);
    let mut all = lock(&PROCESS_HEAPS);
    if let Some((_, heaps)) = all.iter().find(|(k, _)| *k == key) {
        return Arc::clone(heaps);
    }
    let heaps: ProcessHeaps = info.heaps.iter().map(|_| AtomicU64::new(0)).collect();
    all.push((key, Arc::clone(&heaps)));
    heaps
}

/// Room for `size` more bytes on a heap, held from the check until the buffer made with it is
/// counted (then dropped): two threads cannot both take the heap's last bytes.
pub(crate) struct Reservation<'a> {
    counter: Option<&'a AtomicU64>,
    size: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_sub(self.size, Ordering::Relaxed);
        }
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

/// A device's memory: the allocator, the type per use, and running counters (so that reports
/// cost the same with 10 or 200,000 live allocations).
pub(crate) struct Memory {
    /// `None` only during destruction.
    allocator: Mutex<Option<Allocator>>,
    pub(crate) types: MemoryTypes,
    /// Bytes held per heap (allocations, staging, pools, temporaries).
    pub(crate) heap_bytes: Vec<AtomicU64>,
    /// Bytes held per heap by the whole process (`process_heaps`).
    process: ProcessHeaps,
    /// Live buffers per memory object: its length is the number of memory objects in use.
    blocks: Mutex<HashMap<vk::DeviceMemory, u32>>,
    /// Pools of small buffers.
    slabs: Mutex<Slabs>,
}

impl Memory {
    pub(crate) fn new(dev: &RawDevice, upload_cached: bool) -> Result<Memory> {
        let mut debug_settings = gpu_allocator::AllocatorDebugSettings::default();
        debug_settings.log_leaks_on_shutdown = false;
        let allocator = Allocator::new(&gpu_allocator::vulkan::AllocatorCreateDesc {
            instance: dev.instance.instance.clone(),
            device: dev.device.clone(),
            physical_device: dev.physical,
            debug_settings,
            buffer_device_address: false,
            allocation_sizes: gpu_allocator::AllocationSizes::default(),
        })?;
        Ok(Memory {
            allocator: Mutex::new(Some(allocator)),
            types: MemoryTypes::choose(&dev.info.memory_types, upload_cached),
            heap_bytes: dev.info.heaps.iter().map(|_| AtomicU64::new(0)).collect(),
            process: process_heaps(&dev.info),
            blocks: Mutex::new(HashMap::new()),
            slabs: Mutex::new(Slabs::default()),
        })
    }

    /// Memory objects in use and bytes sub-allocated from them (counters, O(1)); the capacity
    /// walks the allocator's blocks (few: one per 256 MiB or per dedicated allocation).
    pub(crate) fn figures(&self) -> (u64, u64, u64) {
        let blocks = lock(&self.blocks).len() as u64;
        let allocated = self
            .heap_bytes
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .sum();
        let capacity = lock(&self.allocator).as_ref().map_or(0, |a| a.capacity());
        (blocks, capacity, allocated)
    }

    /// Create a buffer of `size` bytes with `usage` in memory of `kind`, shared by every queue
    /// family of the device. On non-coherent host-visible memory the buffer starts and ends on
    /// nonCoherentAtomSize boundaries, so flushes never reach a neighbour.
    pub(crate) fn create_buffer(
        &self,
        dev: &RawDevice,
        size: u64,
        usage: vk::BufferUsageFlags,
        kind: Kind,
        name: &str,
    ) -> Result<GpuBuffer> {
        let d = &dev.device;
        let (mode, families) = dev.sharing();
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(mode)
            .queue_family_indices(families);
        // SAFETY: valid device and create info.
        let buffer =
            unsafe { d.create_buffer(&info, None) }.map_err(|r| dev.fail("vkCreateBuffer", r))?;
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
        if size < DEDICATED_THRESHOLD
            && non_coherent_allowed(&dev.info.memory_types, requirements.memory_type_bits)
        {
            // The memory may be host-visible but not coherent (also `Device` memory on UMA
            // devices): align both ends of a sub-allocation to the atom, so flushes and
            // invalidates never reach a neighbour. A dedicated allocation is its memory object:
            // they stop at its end (`memory_end`).
            let atom = dev.info.non_coherent_atom_size.max(1);
            requirements.alignment = requirements.alignment.max(atom);
            requirements.size = requirements.size.next_multiple_of(atom);
        }
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
            return Err(dev.fail("vkBindBufferMemory", r));
        }
        let flags = alloc.memory_properties();
        let heap = heap.unwrap_or_else(|| heap_of(&dev.info, requirements.memory_type_bits, flags));
        let accounted = alloc.size();
        self.account(heap, accounted);
        // SAFETY: the handle is only used as a map key.
        *lock(&self.blocks)
            .entry(unsafe { alloc.memory() })
            .or_insert(0) += 1;
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

    /// Destroy a buffer and return its memory to the allocator (never on a hung device: work
    /// may still use it, so it is leaked).
    pub(crate) fn destroy_buffer(&self, dev: &RawDevice, buf: &mut GpuBuffer) {
        if dev.is_hung() {
            return;
        }
        if let Some(a) = buf.alloc.as_ref() {
            // SAFETY: the handle is only used as a map key.
            let memory = unsafe { a.memory() };
            let mut blocks = lock(&self.blocks);
            if let Some(n) = blocks.get_mut(&memory) {
                *n -= 1;
                if *n == 0 {
                    blocks.remove(&memory);
                }
            }
        }
        let mut guard = lock(&self.allocator);
        destroy_buffer_with(&dev.device, guard.as_mut(), buf);
        let accounted = std::mem::take(&mut buf.accounted);
        self.unaccount(buf.heap, accounted);
    }

    /// Count `bytes` as held on `heap`, by this device and by the whole process.
    pub(crate) fn account(&self, heap: usize, bytes: u64) {
        for counters in [&self.heap_bytes[..], &self.process[..]] {
            if let Some(h) = counters.get(heap) {
                h.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Stop counting `bytes` on `heap` (the memory was freed).
    pub(crate) fn unaccount(&self, heap: usize, bytes: u64) {
        for counters in [&self.heap_bytes[..], &self.process[..]] {
            if let Some(h) = counters.get(heap) {
                h.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Reserve `size` bytes on the heap memory of `kind` comes from, or refuse with
    /// `OutOfMemory` when the process's bytes there would pass the heap's size, or (for an
    /// allocation of its own memory object, where the query costs nothing next to
    /// vkAllocateMemory) the driver's VK_EXT_memory_budget budget.
    pub(crate) fn reserve(
        &self,
        dev: &RawDevice,
        kind: Kind,
        size: u64,
    ) -> Result<Reservation<'_>> {
        let found = self.types.heap_of(kind).and_then(|heap| {
            let counter = self.process.get(heap)?;
            Some((heap, counter, dev.info.heaps.get(heap)?.size))
        });
        let Some((heap, counter, heap_size)) = found else {
            return Ok(Reservation {
                counter: None,
                size: 0,
            });
        };
        let held = counter.fetch_add(size, Ordering::Relaxed);
        let reservation = Reservation {
            counter: Some(counter),
            size,
        };
        let device = dev.info.index;
        if held.saturating_add(size) > heap_size {
            return Err(EngineError::OutOfMemory(format!(
                "{size} bytes do not fit in memory heap {heap} of device {device}: this process \
                 holds {held} of its {heap_size} bytes"
            )));
        }
        if size >= DEDICATED_THRESHOLD {
            let budgets = query_budgets(&dev.instance, dev.physical, &dev.info);
            if let Some(Some(b)) = budgets.get(heap) {
                if b.usage.saturating_add(size) > b.budget {
                    return Err(EngineError::OutOfMemory(format!(
                        "{size} bytes exceed the driver's budget for memory heap {heap} of device \
                         {device}: this process uses {} of its budget of {} bytes",
                        b.usage, b.budget
                    )));
                }
            }
        }
        Ok(reservation)
    }

    /// Destroy the pools and the allocator (device idle); on a hung device, leak them.
    pub(crate) fn destroy(&self, dev: &RawDevice) {
        let mut allocator = lock(&self.allocator).take();
        if dev.is_hung() {
            std::mem::forget(allocator);
            return;
        }
        let slabs = std::mem::take(&mut *lock(&self.slabs));
        slabs.destroy(&dev.device, allocator.as_mut());
        drop(allocator);
    }

    /// A pooled slot of at least `size` bytes (`size <= 16 MiB`), O(1).
    pub(crate) fn allocate_slab(
        &self,
        dev: &RawDevice,
        kind: Kind,
        size: u64,
    ) -> Result<(BufView, SlabRef)> {
        let (class, slot_size) = class_of(size);
        if class >= CLASSES {
            return Err(EngineError::Internal(format!(
                "{size} bytes is too large for a pool"
            )));
        }
        let mut slabs = lock(&self.slabs);
        // A new chunk is created outside the lock (vkCreateBuffer, maybe vkAllocateMemory); one
        // made needless by another thread meanwhile is destroyed after the lock.
        let mut spare = None;
        if slabs.class_mut(kind, class).room.is_empty() {
            drop(slabs);
            let bytes = chunk_bytes(slot_size);
            let buf = self.create_buffer(dev, bytes, allocation_usage(), kind, "exo-pool")?;
            slabs = lock(&self.slabs);
            if slabs.class_mut(kind, class).room.is_empty() {
                let slots = u32::try_from(bytes / slot_size).unwrap_or(u32::MAX);
                let id = slabs.next_chunk;
                slabs.next_chunk += 1;
                let c = slabs.class_mut(kind, class);
                c.room.push(id);
                c.chunks.insert(
                    id,
                    Chunk {
                        buf,
                        free: (0..slots).rev().collect(),
                        slots,
                        room_pos: c.room.len() - 1,
                    },
                );
            } else {
                spare = Some(buf);
            }
        }
        let taken = take_slot(slabs.class_mut(kind, class), kind, class, slot_size);
        drop(slabs);
        if let Some(mut b) = spare {
            self.destroy_buffer(dev, &mut b);
        }
        taken
    }

    /// Return a pooled slot, O(1). A chunk that becomes empty is destroyed unless it is the
    /// class's only one with room.
    pub(crate) fn free_slab(&self, dev: &RawDevice, r: SlabRef) {
        if dev.is_hung() {
            return;
        }
        let empty = {
            let mut slabs = lock(&self.slabs);
            let c = slabs.class_mut(r.kind, r.class);
            let Some(chunk) = c.chunks.get_mut(&r.chunk) else {
                return;
            };
            chunk.free.push(r.slot);
            let was_full = chunk.free.len() == 1;
            let now_empty = chunk.free.len() == chunk.slots as usize;
            if was_full {
                c.room.push(r.chunk);
                let pos = c.room.len() - 1;
                if let Some(ch) = c.chunks.get_mut(&r.chunk) {
                    ch.room_pos = pos;
                }
            }
            if now_empty && c.room.len() > 1 {
                c.remove_room(r.chunk);
                c.chunks.remove(&r.chunk)
            } else {
                None
            }
        };
        if let Some(mut chunk) = empty {
            self.destroy_buffer(dev, &mut chunk.buf);
        }
    }
}

/// Heap of the first memory type allowed by `bits` with exactly `flags` (the type gpu-allocator
/// picked; it does not expose the index itself).
fn heap_of(info: &DeviceInfo, bits: u32, flags: vk::MemoryPropertyFlags) -> usize {
    let types = &info.memory_types;
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

/// Whether any memory type allowed by `bits` is HOST_VISIBLE but not HOST_COHERENT (a buffer
/// there needs atom-aligned ends; `bits` names exactly the chosen type when one was pinned).
fn non_coherent_allowed(memory_types: &[MemoryTypeInfo], bits: u32) -> bool {
    use vk::MemoryPropertyFlags as F;
    memory_types.iter().enumerate().any(|(i, t)| {
        let f = F::from_raw(t.flags);
        i < 32
            && bits & (1 << i) != 0
            && f.contains(F::HOST_VISIBLE)
            && !f.contains(F::HOST_COHERENT)
    })
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

// -------------------------------------------------------------------------------------------------
// Pools of small buffers

/// Smallest pool slot (also the alignment of every slot: >= any minStorageBufferOffsetAlignment
/// and any nonCoherentAtomSize, both at most 256 by the spec's limits).
const MIN_SLOT: u64 = 256;
const CLASSES: usize = 17; // 256 B .. 16 MiB

/// A free slot of class `c` (which has room), with the slabs lock held.
fn take_slot(
    c: &mut Class,
    kind: Kind,
    class: usize,
    slot_size: u64,
) -> Result<(BufView, SlabRef)> {
    let id = *c
        .room
        .last()
        .ok_or_else(|| EngineError::Internal("pool class without room".into()))?;
    let chunk = c
        .chunks
        .get_mut(&id)
        .ok_or_else(|| EngineError::Internal("pool chunk missing".into()))?;
    let slot = chunk
        .free
        .pop()
        .ok_or_else(|| EngineError::Internal("pool chunk without room".into()))?;
    let view = chunk.buf.slice(u64::from(slot) * slot_size, slot_size);
    if chunk.free.is_empty() {
        c.remove_room(id);
    }
    Ok((
        view,
        SlabRef {
            kind,
            class,
            chunk: id,
            slot,
        },
    ))
}

/// Where a pooled allocation lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabRef {
    kind: Kind,
    class: usize,
    chunk: u64,
    slot: u32,
}

struct Chunk {
    buf: GpuBuffer,
    free: Vec<u32>,
    slots: u32,
    /// Position in the class's `room` list while the chunk has free slots.
    room_pos: usize,
}

#[derive(Default)]
struct Class {
    chunks: HashMap<u64, Chunk>,
    /// Chunks with free slots (allocation takes the last).
    room: Vec<u64>,
}

impl Class {
    /// Drop `id` from `room` (swap-remove, fixing the moved chunk's position).
    fn remove_room(&mut self, id: u64) {
        let Some(pos) = self.chunks.get(&id).map(|c| c.room_pos) else {
            return;
        };
        if self.room.get(pos) != Some(&id) {
            return;
        }
        self.room.swap_remove(pos);
        if let Some(&moved) = self.room.get(pos) {
            if let Some(c) = self.chunks.get_mut(&moved) {
                c.room_pos = pos;
            }
        }
    }
}

/// Power-of-two slot classes per memory kind; each class carves slots out of "chunk" buffers, so
/// a small allocation costs no vkCreateBuffer/vkAllocateMemory.
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
    fn destroy(mut self, device: &ash::Device, mut allocator: Option<&mut Allocator>) {
        for class in &mut self.classes {
            for (_, mut c) in class.chunks.drain() {
                destroy_buffer_with(device, allocator.as_deref_mut(), &mut c.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vk::MemoryPropertyFlags as F;

    fn types(flags: &[F]) -> Vec<MemoryTypeInfo> {
        flags
            .iter()
            .map(|f| MemoryTypeInfo {
                flags: f.as_raw(),
                heap: 0,
            })
            .collect()
    }

    /// A UMA device whose first device-local type is host-visible but not coherent: `Device`
    /// takes the coherent one, and only the non-coherent type asks for atom-aligned buffers.
    #[test]
    fn uma_prefers_coherent_and_aligns_by_flags() {
        let t = types(&[
            F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_CACHED,
            F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT,
        ]);
        let m = MemoryTypes::choose(&t, false);
        assert_eq!(m.index[Kind::Device.index()], Some(1));
        assert_eq!(m.index[Kind::DeviceMapped.index()], Some(1));
        assert!(non_coherent_allowed(&t, 0b01));
        assert!(!non_coherent_allowed(&t, 0b10));
        assert!(non_coherent_allowed(&t, 0b11));
        // Device-local memory the host cannot map needs no alignment.
        let t = types(&[F::DEVICE_LOCAL]);
        assert!(!non_coherent_allowed(&t, 0b1));
        assert_eq!(
            MemoryTypes::choose(&t, false).index[Kind::Device.index()],
            Some(0)
        );
    }
}
