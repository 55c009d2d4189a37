//! A device's memory: `Memory` (the gpu-allocator allocator, the memory type per use, running
//! per-heap counters, the slab pools) creating and destroying buffers. Its parts, one concept
//! each: `types` (memory-type choice per use), `buffers` (buffers, views, flush/invalidate),
//! `slabs` (pools of small buffers), `heaps` (process-wide heap accounting and reservations).

mod buffers;
mod heaps;
mod slabs;
mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ash::vk;
use gpu_allocator::vulkan::{AllocationCreateDesc, AllocationScheme, Allocator};
use gpu_allocator::MemoryLocation;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::sync::lock;

pub(crate) use buffers::{
    allocation_usage, at, destroy_buffer_with, flush, invalidate, mapped_of, BufView, GpuBuffer,
};
pub(crate) use heaps::{process_heaps, Reservation};
pub(crate) use slabs::SlabRef;
pub(crate) use types::{Kind, MemoryTypes};

use heaps::{reserve, ProcessHeaps};
use slabs::{chunk_bytes, class_of, Slabs};
use types::{heap_of_type, non_coherent_allowed};

/// Buffers at least this large get their own (dedicated) memory allocation.
pub(crate) const DEDICATED_THRESHOLD: u64 = 64 << 20;

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
        let heap =
            heap.unwrap_or_else(|| heap_of_type(&dev.info, requirements.memory_type_bits, flags));
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

    /// Reserve `size` bytes on the heap memory of `kind` comes from (see `heaps::reserve`).
    pub(crate) fn reserve(
        &self,
        dev: &RawDevice,
        kind: Kind,
        size: u64,
    ) -> Result<Reservation<'_>> {
        let heap = self.types.heap_of(kind);
        reserve(dev, &self.process, heap, size)
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
        let (class, slot_size) = class_of(size)?;
        if let Some(taken) = lock(&self.slabs).take(kind, class, slot_size) {
            return taken;
        }
        // A new chunk is created outside the lock (vkCreateBuffer, maybe vkAllocateMemory); one
        // made needless by another thread meanwhile is destroyed after the lock.
        let buf = self.create_buffer(
            dev,
            chunk_bytes(slot_size),
            allocation_usage(),
            kind,
            "exo-pool",
        )?;
        let (taken, spare) = lock(&self.slabs).take_or_add(kind, class, slot_size, buf);
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
        let empty = lock(&self.slabs).release(r);
        if let Some(mut buf) = empty {
            self.destroy_buffer(dev, &mut buf);
        }
    }
}
