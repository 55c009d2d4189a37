//! What the facade reports: per-heap memory (`HeapReport`) and per-device counters (`Stats`).

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::properties::{query_budgets, Strategy};
use crate::transfer::{
    PATH_COMPUTE, PATH_CROSS, PATH_FILE_DIRECT, PATH_IMPORT, PATH_MAPPED, PATH_PINNED, PATH_STAGED,
};

use super::Engine;

/// One memory heap as reported by `Engine::memory_heaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapReport {
    /// Heap index.
    pub index: usize,
    /// Heap size in bytes.
    pub size: u64,
    /// DEVICE_LOCAL heap.
    pub device_local: bool,
    /// VK_EXT_memory_budget budget for this process, if supported.
    pub budget: Option<u64>,
    /// VK_EXT_memory_budget usage of this process, if supported.
    pub usage: Option<u64>,
    /// Bytes of this heap this engine's allocations hold.
    pub engine_allocated: u64,
    /// Bytes of this heap the whole process's engines hold (allocations, pools, staging): the
    /// engine refuses an allocation that would take it past `size`.
    pub process_allocated: u64,
}

/// Per-device counters reported by `Engine::stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Transfer strategy of the device ("mapped"/"staging"/"import", "unavailable" if
    /// unsupported).
    pub strategy: &'static str,
    /// Whether this engine has opened the (shared) logical device yet.
    pub device_created: bool,
    /// Live user allocations of this engine.
    pub live_allocations: u64,
    /// Bytes requested by this engine's live user allocations.
    pub live_bytes: u64,
    /// Memory objects (VkDeviceMemory) backing live buffers of the device (all engines).
    pub block_count: u64,
    /// Total bytes of those blocks.
    pub allocator_capacity_bytes: u64,
    /// Bytes sub-allocated from those blocks (incl. staging buffers and alignment).
    pub allocator_allocated_bytes: u64,
    /// Bytes this engine moved between host and device through a host-visible mapping.
    pub mapped_bytes: u64,
    /// Bytes it moved through the staging ring.
    pub staged_bytes: u64,
    /// Bytes it moved by DMA to/from imported host memory (heads and tails included).
    pub imported_bytes: u64,
    /// Imports the driver refused (those copies went through staging).
    pub import_refused: u64,
    /// Device-to-device bytes this engine copied with the compute shader.
    pub compute_copied_bytes: u64,
    /// How this engine copies between this device and the others ("p2p", "host-import",
    /// "host-staging"; see `cross`): the path of a link already made, else the planned one
    /// (with one device: what a forced same-device pipeline would take).
    pub cross_device_path: &'static str,
    /// Bytes this engine copied to or from this device across devices.
    pub cross_device_bytes: u64,
    /// Bytes moved by direct DMA from or to pinned / registered host memory.
    pub pinned_bytes: u64,
    /// File bytes read with `O_DIRECT` (cold files) for `write_from_file`.
    pub direct_read_bytes: u64,
}

impl Engine {
    /// Per-heap size, budget/usage (VK_EXT_memory_budget) and this engine's own usage.
    pub fn memory_heaps(&self, index: usize) -> Result<Vec<HeapReport>> {
        self.call(|i| {
            let info = i.info(index)?;
            let device = i.existing_device(index)?;
            let own = device
                .as_ref()
                .map(|d| d.heap_usage())
                .unwrap_or_else(|| vec![0; info.heaps.len()]);
            let budgets = query_budgets(&i.instance, i.physical[index], info);
            let process: Vec<u64> = crate::memory::process_heaps(info)
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            Ok(info
                .heaps
                .iter()
                .enumerate()
                .map(|(h, heap)| {
                    let b = budgets.get(h).copied().flatten();
                    HeapReport {
                        index: h,
                        size: heap.size,
                        device_local: heap.device_local,
                        budget: b.map(|b| b.budget),
                        usage: b.map(|b| b.usage),
                        engine_allocated: own.get(h).copied().unwrap_or(0),
                        process_allocated: process.get(h).copied().unwrap_or(0),
                    }
                })
                .collect())
        })
    }

    /// Allocation/allocator counters of device `index`: live allocations and bytes are this
    /// engine's; the allocator figures are those of the (shared) device.
    pub fn stats(&self, index: usize) -> Result<Stats> {
        self.call(|i| {
            let info = i.info(index)?;
            let strategy = info.strategy.map(Strategy::as_str).unwrap_or("unavailable");
            let Some(d) = i.existing_device(index)? else {
                return Ok(Stats {
                    strategy,
                    device_created: false,
                    live_allocations: 0,
                    live_bytes: 0,
                    block_count: 0,
                    allocator_capacity_bytes: 0,
                    allocator_allocated_bytes: 0,
                    mapped_bytes: 0,
                    staged_bytes: 0,
                    imported_bytes: 0,
                    import_refused: 0,
                    compute_copied_bytes: 0,
                    cross_device_path: i.device_cross_path(index)?,
                    cross_device_bytes: 0,
                    pinned_bytes: 0,
                    direct_read_bytes: 0,
                });
            };
            let (blocks, capacity, allocated) = d.ctx.mem.figures();
            Ok(Stats {
                strategy,
                device_created: true,
                live_allocations: d.live_allocations.load(Ordering::Relaxed),
                live_bytes: d.live_bytes.load(Ordering::Relaxed),
                block_count: blocks,
                allocator_capacity_bytes: capacity,
                allocator_allocated_bytes: allocated,
                mapped_bytes: d.moved[PATH_MAPPED].load(Ordering::Relaxed),
                staged_bytes: d.moved[PATH_STAGED].load(Ordering::Relaxed),
                imported_bytes: d.moved[PATH_IMPORT].load(Ordering::Relaxed),
                import_refused: d.import_refused.load(Ordering::Relaxed),
                compute_copied_bytes: d.moved[PATH_COMPUTE].load(Ordering::Relaxed),
                cross_device_path: i.device_cross_path(index)?,
                cross_device_bytes: d.moved[PATH_CROSS].load(Ordering::Relaxed),
                pinned_bytes: d.moved[PATH_PINNED].load(Ordering::Relaxed),
                direct_read_bytes: d.moved[PATH_FILE_DIRECT].load(Ordering::Relaxed),
            })
        })
    }
}
