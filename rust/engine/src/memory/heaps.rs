//! Process-wide heap accounting: the bytes every engine of the process holds on each heap of a
//! physical device, and reservations that refuse an allocation past the heap's size (or the
//! driver's budget) before any memory is taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::properties::{query_budgets, DeviceInfo};
use crate::sync::lock;

use super::DEDICATED_THRESHOLD;

/// Bytes held on each heap of a physical device by the whole process: engines with and without
/// validation open separate logical devices of one physical device, and some drivers (lavapipe)
/// grant allocations far past a heap's size, so the engine holds the heaps itself.
pub(crate) type ProcessHeaps = Arc<[AtomicU64]>;
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

/// Reserve `size` bytes on `heap` (`None`: the type is left to gpu-allocator, nothing is held),
/// or refuse with `OutOfMemory` when the process's bytes there would pass the heap's size, or
/// (for an allocation of its own memory object, where the query costs nothing next to
/// vkAllocateMemory) the driver's VK_EXT_memory_budget budget.
pub(super) fn reserve<'a>(
    dev: &RawDevice,
    process: &'a ProcessHeaps,
    heap: Option<usize>,
    size: u64,
) -> Result<Reservation<'a>> {
    let found = heap.and_then(|heap| {
        let counter = process.get(heap)?;
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
