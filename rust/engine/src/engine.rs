//! The facade: `Engine` holds the (process-wide) instance, the physical-device list, its views of
//! lazily opened (shared) logical devices and its allocation table; with validation, every
//! public call is checked against the messages it caused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ash::vk;

use crate::allocation::{new_allocation, Allocation};
use crate::context::shared_device;
use crate::cross::{plan_path, CrossRequest, CrossSettings, Link};
use crate::error::{EngineError, Result};
use crate::host::{HostMemory, HostRange, HostTable};
use crate::instance::{CallLog, CallLogScope, InstanceContext};
use crate::plan::Plan;
use crate::properties::{
    fill_device_groups, gather, query_budgets, DeviceInfo, Strategy, StrategyRequest,
};
use crate::sync::{lock, read, write};
use crate::transfer::EngineDevice;
use crate::transfer::{
    PATH_COMPUTE, PATH_CROSS, PATH_FILE_DIRECT, PATH_IMPORT, PATH_MAPPED, PATH_PINNED, PATH_STAGED,
};
use crate::tuning::tuning;

#[cfg(unix)]
mod interop;
#[cfg(unix)]
pub use interop::Retained;

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

struct Inner {
    // Field order is drop order: allocations, then device views, then the instance.
    allocations: RwLock<HashMap<u64, Arc<Allocation>>>,
    /// Pinned and registered host ranges.
    hosts: RwLock<HostTable>,
    /// Cross-device links by (source index, destination index), made on first use.
    links: Mutex<HashMap<(usize, usize), Arc<Link>>>,
    devices: Vec<Mutex<Option<Arc<EngineDevice>>>>,
    physical: Vec<vk::PhysicalDevice>,
    infos: Vec<DeviceInfo>,
    next_id: AtomicU64,
    /// Cross-device path request and the same-device test switch.
    cross: Mutex<CrossSettings>,
    /// Validation warnings raised by this engine's calls (bounded, oldest dropped first).
    warnings: Mutex<Vec<String>>,
    instance: Arc<InstanceContext>,
}

/// The Vulkan engine. `Send + Sync`: every method takes `&self` and may be called from several
/// threads at once.
///
/// Engines share process-wide Vulkan objects: one instance per validation setting (never
/// destroyed) and one logical device per physical device and validation setting (dropped from
/// the cache only when lost). An engine owns its allocations: `close` frees all of them.
pub struct Engine {
    state: RwLock<Option<Arc<Inner>>>,
}

fn check_range(what: &str, size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(EngineError::OutOfBounds(format!(
            "{what}: offset {offset} + length {len} exceeds allocation size {size}"
        ))),
    }
}

/// At most this many validation warnings are kept per engine.
const MAX_WARNINGS: usize = 256;

impl Engine {
    /// Open the process-wide instance (optionally the one with the validation layer) and
    /// enumerate devices. `strategy`: `None`/`"auto"`, `"mapped"`, `"staging"` or `"import"`.
    pub fn new(validation: bool, strategy: Option<&str>) -> Result<Self> {
        crate::tuning::check()?;
        let request = StrategyRequest::parse(strategy)?;
        let instance = InstanceContext::shared(validation)?;
        let log = CallLog::default();
        let scope = CallLogScope::enter(if validation { &log } else { std::ptr::null() });
        let physical = instance.physical_devices()?;
        if physical.is_empty() {
            return Err(EngineError::Unavailable("no Vulkan physical device".into()));
        }
        let mut infos = physical
            .iter()
            .enumerate()
            .map(|(i, pd)| gather(&instance, *pd, i, request))
            .collect::<Result<Vec<_>>>()?;
        fill_device_groups(&instance, &physical, &mut infos);
        drop(scope);
        if matches!(request, StrategyRequest::Mapped | StrategyRequest::Import)
            && infos.iter().all(|i| i.strategy.is_none())
        {
            infos[0].require_strategy()?;
        }
        let inner = Inner {
            allocations: RwLock::new(HashMap::new()),
            hosts: RwLock::new(HostTable::default()),
            links: Mutex::new(HashMap::new()),
            devices: physical.iter().map(|_| Mutex::new(None)).collect(),
            physical,
            infos,
            next_id: AtomicU64::new(1),
            cross: Mutex::new(CrossSettings::from_tuning(tuning())),
            warnings: Mutex::new(Vec::new()),
            instance,
        };
        inner.finish_call(&log, Ok(()))?;
        Ok(Engine {
            state: RwLock::new(Some(Arc::new(inner))),
        })
    }

    /// `None` when Vulkan is usable (a loader and at least one physical device), else a reason.
    /// Reuses the process-wide instance.
    pub fn probe() -> Option<String> {
        crate::instance::probe()
    }

    fn inner(&self) -> Result<Arc<Inner>> {
        read(&self.state).clone().ok_or(EngineError::Closed)
    }

    /// Run `f`; with validation, turn validation errors raised meanwhile into
    /// `EngineError::Validation`. Messages are attributed by thread (the validation layer
    /// reports on the thread making the offending call), so concurrent engines do not see each
    /// other's messages; only messages raised outside any engine call (none are expected) go to
    /// whichever engine call finishes next.
    fn call<T>(&self, f: impl FnOnce(&Inner) -> Result<T>) -> Result<T> {
        let inner = self.inner()?;
        if !inner.instance.has_validation() {
            return f(&inner);
        }
        let log = CallLog::default();
        let result = {
            let _scope = CallLogScope::enter(&log);
            f(&inner)
        };
        inner.finish_call(&log, result)
    }

    /// Number of physical devices.
    pub fn device_count(&self) -> Result<usize> {
        self.call(|i| Ok(i.infos.len()))
    }

    /// Static information about a device (no logical device is needed).
    pub fn device_info(&self, index: usize) -> Result<DeviceInfo> {
        self.call(|i| i.info(index).cloned())
    }

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

    /// Allocate `size` zeroed bytes on device `index`; returns the allocation id.
    pub fn allocate(&self, index: usize, size: u64) -> Result<u64> {
        self.allocate_with(index, size, true)
    }

    /// `allocate`, zeroing only when `zeroed`: otherwise the content is unspecified, so the
    /// caller must write every byte before reading any (a model's weights, loaded whole), and
    /// saves a pass over the memory.
    pub fn allocate_with(&self, index: usize, size: u64, zeroed: bool) -> Result<u64> {
        self.call(|i| {
            if size == 0 {
                return Err(EngineError::InvalidArgument(
                    "allocation size must be > 0".into(),
                ));
            }
            let device = i.device(index)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            let alloc = new_allocation(&device, size, zeroed)?;
            write(&i.allocations).insert(id, Arc::new(alloc));
            Ok(id)
        })
    }

    /// Forget an allocation; its memory is released once no call in flight uses it.
    pub fn free(&self, id: u64) -> Result<()> {
        self.call(|i| {
            let removed = write(&i.allocations).remove(&id);
            match removed {
                Some(alloc) => {
                    drop(alloc);
                    Ok(())
                }
                None => Err(EngineError::InvalidAllocation(id)),
            }
        })
    }

    /// Size in bytes of a live allocation.
    pub fn allocation_size(&self, id: u64) -> Result<u64> {
        self.call(|i| Ok(i.allocation(id)?.size))
    }

    /// Device index of a live allocation.
    pub fn allocation_device(&self, id: u64) -> Result<usize> {
        self.call(|i| Ok(i.allocation(id)?.device_index()))
    }

    /// Copy `src` into allocation `id` at `offset`; returns when the bytes are in place.
    pub fn write(&self, id: u64, offset: u64, src: &[u8]) -> Result<()> {
        self.call(|i| {
            let a = i.allocation(id)?;
            check_range("write", a.size, offset, src.len() as u64)?;
            a.ctx().check_alive()?;
            if src.is_empty() {
                return Ok(());
            }
            if let Some((h, off)) = i.host_range(src.as_ptr(), src.len(), a.device_index()) {
                return a.dev.write_from_host(&a.view, offset, &h, off, src);
            }
            a.dev.write(&a.view, offset, src)
        })
    }

    /// Fill `size` bytes of allocation `id` at `offset` from file descriptor `fd` (borrowed,
    /// never closed) at `file_offset`: parallel preads straight into staging slots or the
    /// mapping, overlapped with the DMA. A short read or I/O error is `FileRead` (the
    /// allocation's range then holds partial data); `file_offset + size` beyond `i64::MAX` is
    /// `OutOfBounds`.
    pub fn write_from_file(
        &self,
        id: u64,
        offset: u64,
        fd: i32,
        file_offset: u64,
        size: u64,
    ) -> Result<()> {
        self.call(|i| {
            let a = i.allocation(id)?;
            check_range("write_from_file", a.size, offset, size)?;
            // File offsets are signed 64-bit (off_t): the last byte read must be one.
            if file_offset
                .checked_add(size)
                .is_none_or(|end| end > i64::MAX as u64)
            {
                return Err(EngineError::OutOfBounds(format!(
                    "write_from_file: file offset {file_offset} + size {size} exceeds the                      largest file offset ({})",
                    i64::MAX
                )));
            }
            a.ctx().check_alive()?;
            if size == 0 {
                return Ok(());
            }
            #[cfg(unix)]
            {
                a.dev
                    .write_from_file(&a.view, offset, fd, file_offset, size)
            }
            #[cfg(not(unix))]
            {
                let _ = (fd, file_offset);
                Err(EngineError::Unavailable(
                    "write_from_file needs pread (Unix)".into(),
                ))
            }
        })
    }

    /// Copy `dst.len()` bytes of allocation `id` starting at `offset` into `dst`.
    pub fn read_into(&self, id: u64, offset: u64, dst: &mut [u8]) -> Result<()> {
        self.call(|i| i.read_into(id, offset, dst))
    }

    /// `read_into` for a destination that was never touched (e.g. a new `bytes` object): on
    /// Linux its pages are first advised as transparent huge pages, and the copy uses plain
    /// stores (the kernel zeroes each fresh page into the cache just before it is written).
    pub fn read_into_fresh(&self, id: u64, offset: u64, dst: &mut [u8]) -> Result<()> {
        crate::memcpy::advise_huge_pages(dst.as_mut_ptr(), dst.len());
        let _fresh = crate::memcpy::FreshDestination::enter();
        self.read_into(id, offset, dst)
    }

    /// Copy `size` bytes from `src`+`src_offset` to `dst`+`dst_offset` (memmove semantics when
    /// both are the same allocation; through host memory across devices).
    pub fn copy(
        &self,
        src: u64,
        src_offset: u64,
        dst: u64,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        self.call(|i| {
            let s = i.allocation(src)?;
            let d = i.allocation(dst)?;
            check_range("copy source", s.size, src_offset, size)?;
            check_range("copy destination", d.size, dst_offset, size)?;
            s.ctx().check_alive()?;
            d.ctx().check_alive()?;
            if size == 0 {
                return Ok(());
            }
            let same = Arc::ptr_eq(&s, &d);
            let settings = *lock(&i.cross);
            if Arc::ptr_eq(&s.dev.ctx, &d.dev.ctx) && (same || !settings.same_device) {
                return s
                    .dev
                    .copy(&s.view, src_offset, &d.view, dst_offset, size, same);
            }
            // Across devices (or, for tests, between two allocations of one device): pipelined
            // through host memory by the pair's link.
            let link = i.link(&s.dev, &d.dev, settings.request)?;
            link.copy(&s.view, src_offset, &d.view, dst_offset, size)?;
            s.dev.moved[PATH_CROSS].fetch_add(size, Ordering::Relaxed);
            if !Arc::ptr_eq(&s.dev, &d.dev) {
                d.dev.moved[PATH_CROSS].fetch_add(size, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// The path a copy from device `src` to device `dst` takes (`"p2p"`, `"host-import"` or
    /// `"host-staging"`): that of the pair's link once made (a refused import falls back to
    /// staging), else the planned one.
    pub fn cross_device_path(&self, src: usize, dst: usize) -> Result<&'static str> {
        self.call(|i| i.cross_path(src, dst))
    }

    /// Test and measurement hook: take `path` (`"auto"`, `"host-import"`, `"host-staging"`) for
    /// cross-device copies from now on and, with `same_device`, send copies between two
    /// allocations of one device through the cross-device pipeline as well (so one device
    /// exercises it). Links made so far are dropped. `EXO_VULKAN_TUNE` keys `xpath`/`xsame` set
    /// the defaults.
    pub fn force_cross_device(&self, path: &str, same_device: bool) -> Result<()> {
        let request = CrossRequest::parse(path)?;
        self.call(|i| {
            *lock(&i.cross) = CrossSettings {
                request,
                same_device,
            };
            let old = std::mem::take(&mut *lock(&i.links));
            drop(old);
            Ok(())
        })
    }

    /// Wait for all submitted work on device `index` (no-op if this engine never used it).
    pub fn synchronize(&self, index: usize) -> Result<()> {
        self.call(|i| match i.existing_device(index)? {
            Some(d) => d.ctx.synchronize(),
            None => Ok(()),
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

    /// `size` zeroed bytes of host memory device `index` reads and writes by DMA (host-visible
    /// device memory): `write`/`read_into` from or to it take one DMA, no staging copy. The
    /// memory stays valid while the returned value (or a clone) lives, even after
    /// `host_release` or `close`, which only stop treating it as pinned.
    pub fn host_alloc(&self, index: usize, size: u64) -> Result<HostMemory> {
        self.call(|i| {
            let device = i.device(index)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            let range = Arc::new(crate::host::allocate(&device.ctx, id, size)?);
            let inserted = write(&i.hosts).insert(Arc::clone(&range));
            // A refused range is dropped here, after the table's lock was released.
            inserted.map_err(|(e, _rejected)| e)?;
            Ok(HostMemory(range))
        })
    }

    /// Stop treating pinned memory `id` as pinned (its memory lives on while the `HostMemory`
    /// does).
    pub fn host_release(&self, id: u64) -> Result<()> {
        self.host_unregister(id)
    }

    /// Register the caller's `[ptr, ptr+len)` on device `index`: its pages are imported once
    /// (VK_EXT_external_memory_host), and later transfers from or to it are one DMA. `keep`
    /// must keep the memory alive; it is dropped once the import is freed (never, if the device
    /// hangs). Returns the registration id.
    ///
    /// # Safety
    /// `[ptr, ptr+len)` must stay valid (mapped, not freed) until `keep` is dropped.
    pub unsafe fn host_register(
        &self,
        index: usize,
        ptr: *mut u8,
        len: usize,
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<u64> {
        self.call(|i| {
            let device = i.device(index)?;
            let id = i.next_id.fetch_add(1, Ordering::Relaxed);
            let range = Arc::new(crate::host::register(&device.ctx, id, ptr, len, keep)?);
            let inserted = write(&i.hosts).insert(range);
            // A refused range (its import, the caller's buffer) is dropped here, after the
            // table's lock was released.
            inserted.map(|()| id).map_err(|(e, _rejected)| e)
        })
    }

    /// Forget registration (or pinned buffer) `id`; its import is freed once no transfer uses it.
    pub fn host_unregister(&self, id: u64) -> Result<()> {
        self.call(|i| {
            let removed = write(&i.hosts).remove(id);
            match removed {
                Some(r) => {
                    drop(r); // outside the table's lock
                    Ok(())
                }
                None => Err(EngineError::InvalidArgument(format!(
                    "no pinned or registered host buffer with id {id}"
                ))),
            }
        })
    }

    /// Validation-layer warnings raised by this engine's calls so far (and any raised outside
    /// engine calls), drained. Empty without validation.
    pub fn take_validation_warnings(&self) -> Vec<String> {
        let Ok(inner) = self.inner() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut *lock(&inner.warnings));
        if let Some(v) = inner.instance.validation.as_ref() {
            out.extend(v.take_warnings());
        }
        out
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        read(&self.state).is_none()
    }

    /// Wait for this engine's work, free every allocation it holds and let go of its devices
    /// (the shared instance and devices stay for later engines). Idempotent. Calls in flight on
    /// other threads finish first (they hold a reference); memory they use is released when the
    /// last of them returns.
    pub fn close(&self) -> Result<()> {
        let Some(inner) = write(&self.state).take() else {
            return Ok(());
        };
        let log = CallLog::default();
        let scope = CallLogScope::enter(if inner.instance.has_validation() {
            &log
        } else {
            std::ptr::null()
        });
        for slot in &inner.devices {
            let device = lock(slot).clone(); // waited for outside the slot's lock
            if let Some(d) = device {
                if !d.ctx.is_lost() {
                    let _ = d.ctx.synchronize();
                }
            }
        }
        // Dropped outside the table's lock: freeing memory can take a while, and other calls
        // (under the GIL, e.g. a size check) may want the lock meanwhile.
        let allocations = std::mem::take(&mut *write(&inner.allocations));
        drop(allocations);
        let hosts = write(&inner.hosts).take_all();
        drop(hosts);
        let links = std::mem::take(&mut *lock(&inner.links));
        drop(links);
        for slot in &inner.devices {
            lock(slot).take();
        }
        drop(scope);
        let result = inner.finish_call(&log, Ok(()));
        drop(inner);
        result
    }

    /// Fault injection: panic inside the engine.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self) -> Result<()> {
        self.call(|_| -> Result<()> { panic!("injected panic inside the Vulkan engine") })
    }

    /// Fault injection: make device `index` hang (opening it first if needed): every later
    /// submission waits for a semaphore that is never signalled, and waits give up after
    /// `timeout` (then the device counts as hung: lost, and nothing it may touch is freed).
    #[cfg(feature = "fault-injection")]
    pub fn inject_hang(&self, index: usize, timeout: std::time::Duration) -> Result<()> {
        self.call(|i| {
            i.device(index)?.ctx.inject_hang(timeout);
            Ok(())
        })
    }

    /// Fault injection: mark device `index` lost (opening it first if needed), exactly as a
    /// VK_ERROR_DEVICE_LOST from the driver does: every engine holding the device fails fast,
    /// and later engines get a fresh device.
    #[cfg(feature = "fault-injection")]
    pub fn inject_device_lost(&self, index: usize) -> Result<()> {
        self.call(|i| {
            i.device(index)?.ctx.mark_lost();
            Ok(())
        })
    }
}

impl Inner {
    fn info(&self, index: usize) -> Result<&DeviceInfo> {
        self.infos
            .get(index)
            .ok_or(EngineError::NoSuchDevice(index))
    }

    /// This engine's view of the device, opening the (shared) logical device on first use.
    fn device(&self, index: usize) -> Result<Arc<EngineDevice>> {
        let info = self.info(index)?;
        let slot = self
            .devices
            .get(index)
            .ok_or(EngineError::NoSuchDevice(index))?;
        let mut guard = lock(slot);
        if let Some(d) = guard.as_ref() {
            d.ctx.check_alive()?;
            return Ok(Arc::clone(d));
        }
        let strategy = info.require_strategy()?;
        let ctx = shared_device(&self.instance, self.physical[index], info)?;
        let d = Arc::new(EngineDevice::new(ctx, Plan::new(info, strategy, tuning())));
        *guard = Some(Arc::clone(&d));
        Ok(d)
    }

    /// The device view if this engine opened it (failing with DeviceLost if it was lost).
    fn existing_device(&self, index: usize) -> Result<Option<Arc<EngineDevice>>> {
        self.info(index)?;
        let slot = self
            .devices
            .get(index)
            .ok_or(EngineError::NoSuchDevice(index))?;
        let guard = lock(slot);
        match guard.as_ref() {
            Some(d) => {
                d.ctx.check_alive()?;
                Ok(Some(Arc::clone(d)))
            }
            None => Ok(None),
        }
    }

    /// The link from `s` to `d`, made on first use (a link whose device was lost is replaced).
    fn link(
        &self,
        s: &Arc<EngineDevice>,
        d: &Arc<EngineDevice>,
        request: CrossRequest,
    ) -> Result<Arc<Link>> {
        let key = (s.ctx.info.index, d.ctx.info.index);
        let mut links = lock(&self.links);
        if let Some(l) = links.get(&key) {
            if l.is_alive() {
                return Ok(Arc::clone(l));
            }
        }
        let path = plan_path(request, &s.ctx.info, &d.ctx.info);
        let link = Arc::new(Link::new(&s.ctx, &d.ctx, path, tuning())?);
        if link.import_refused {
            s.import_refused.fetch_add(1, Ordering::Relaxed);
        }
        links.insert(key, Arc::clone(&link));
        Ok(link)
    }

    fn cross_path(&self, src: usize, dst: usize) -> Result<&'static str> {
        let (a, b) = (self.info(src)?, self.info(dst)?);
        if let Some(l) = lock(&self.links).get(&(src, dst)) {
            return Ok(l.path.as_str());
        }
        let request = lock(&self.cross).request;
        Ok(plan_path(request, a, b).as_str())
    }

    /// The cross-device path of device `index`: of a link it is part of, else the one planned
    /// to the first other device (or to itself when it is the only one).
    fn device_cross_path(&self, index: usize) -> Result<&'static str> {
        self.info(index)?;
        let made = lock(&self.links)
            .iter()
            .filter(|((a, b), _)| *a == index || *b == index)
            .map(|(_, l)| l.path)
            .max_by_key(|p| *p as u8);
        if let Some(p) = made {
            return Ok(p.as_str());
        }
        let other = (0..self.infos.len()).find(|&j| j != index).unwrap_or(index);
        self.cross_path(index, other)
    }

    /// The pinned/registered range on device `index` holding `[ptr, ptr+len)`, if any.
    fn host_range(
        &self,
        ptr: *const u8,
        len: usize,
        index: usize,
    ) -> Option<(Arc<HostRange>, u64)> {
        let table = read(&self.hosts);
        if table.is_empty() {
            return None;
        }
        table.find(index, ptr, len)
    }

    fn allocation(&self, id: u64) -> Result<Arc<Allocation>> {
        read(&self.allocations)
            .get(&id)
            .cloned()
            .ok_or(EngineError::InvalidAllocation(id))
    }

    fn read_into(&self, id: u64, offset: u64, dst: &mut [u8]) -> Result<()> {
        let a = self.allocation(id)?;
        check_range("read", a.size, offset, dst.len() as u64)?;
        a.ctx().check_alive()?;
        if dst.is_empty() {
            return Ok(());
        }
        if let Some((h, off)) = self.host_range(dst.as_ptr(), dst.len(), a.device_index()) {
            return a.dev.read_to_host(&a.view, offset, &h, off, dst);
        }
        a.dev.read_into(&a.view, offset, dst)
    }

    /// Collect a call's validation messages (plus unattributed ones): errors fail the call,
    /// warnings are kept for `take_validation_warnings`.
    fn finish_call<T>(&self, log: &CallLog, result: Result<T>) -> Result<T> {
        let Some(global) = self.instance.validation.as_ref() else {
            return result;
        };
        let mut errors = log.take_errors();
        errors.extend(global.take_errors());
        let warnings = log.take_warnings();
        if !warnings.is_empty() {
            let mut w = lock(&self.warnings);
            w.extend(warnings);
            let excess = w.len().saturating_sub(MAX_WARNINGS);
            w.drain(..excess);
        }
        match result {
            Ok(v) if errors.is_empty() => Ok(v),
            Ok(_) => Err(EngineError::Validation(errors.join("\n"))),
            // The original failure is the more precise report.
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation_engine() -> Option<Engine> {
        if let Some(reason) = Engine::probe() {
            eprintln!("note: skipping Vulkan test: {reason}");
            return None;
        }
        match Engine::new(true, Some("staging")) {
            Ok(e) => Some(e),
            Err(EngineError::Unavailable(m)) => {
                eprintln!("note: skipping validation test: {m}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Provoke a validation error: a fill at a misaligned offset.
    fn bad_fill(e: &Engine, id: u64) -> Result<()> {
        e.call(|i| {
            let a = i.allocation(id)?;
            let (b, off) = (a.view.buffer, a.view.offset);
            let ctx = a.ctx();
            ctx.run_now(|d, cmd| {
                // SAFETY: deliberately invalid usage (dstOffset not a multiple of 4) inside the
                // buffer's bounds, to provoke a validation message; harmless for the driver.
                unsafe { d.cmd_fill_buffer(cmd, b, off + 1, 4, 0) }
            })
        })
    }

    /// The debug messenger is wired: a deliberately invalid command (misaligned fill offset)
    /// turns an otherwise successful call into `EngineError::Validation`.
    #[test]
    fn validation_errors_become_engine_errors() {
        let Some(e) = validation_engine() else { return };
        let id = e.allocate(0, 64).expect("allocate");
        match bad_fill(&e, id) {
            Err(EngineError::Validation(m)) => assert!(m.contains("vkCmdFillBuffer"), "{m}"),
            other => panic!("expected a validation error, got {other:?}"),
        }
        // The next call is clean again.
        e.write(id, 0, &[1, 2, 3])
            .expect("write after validation error");
        e.close().expect("close");
    }

    /// A hung device (fault injection) frees nothing it may still touch: allocations freed
    /// after the hang keep their memory (the allocator's figures do not fall). Without
    /// validation, so it gets a logical device of its own (the others use the validation one).
    #[cfg(feature = "fault-injection")]
    #[test]
    fn hung_device_frees_nothing() {
        if Engine::probe().is_some() {
            return;
        }
        let e = Engine::new(false, Some("staging")).expect("engine");
        let size = 8 << 20;
        let a = e.allocate(0, size).expect("allocate");
        let b = e.allocate(0, size).expect("allocate");
        e.write(a, 0, &vec![7u8; size as usize]).expect("write");
        // Pinned host memory whose direct DMA is in flight when the device hangs.
        let pinned = e.host_alloc(0, size).expect("host_alloc");
        // SAFETY: the HostMemory (alive until dropped below) owns `size` bytes at `as_ptr`.
        let host = unsafe { std::slice::from_raw_parts(pinned.as_ptr(), pinned.len()) };
        e.write(b, 0, host).expect("pinned write");
        assert!(e.stats(0).expect("stats").pinned_bytes >= size);
        let ctx = Arc::clone(&e.inner().expect("open").device(0).expect("device").ctx);
        let before = ctx.mem.figures();
        e.inject_hang(0, std::time::Duration::from_millis(200))
            .expect("inject");
        assert!(matches!(
            e.write(b, 0, host),
            Err(EngineError::DeviceLost(_))
        ));
        assert!(ctx.is_hung());
        assert!(matches!(
            e.write(b, 0, &vec![1u8; size as usize]),
            Err(EngineError::DeviceLost(_))
        ));
        // Neither releasing nor dropping the pinned memory frees it: the DMA may still read it.
        e.host_release(pinned.id()).expect("host_release");
        drop(pinned);
        e.free(a).expect("free");
        e.free(b).expect("free");
        e.close().expect("close");
        let after = ctx.mem.figures();
        assert_eq!(
            (after.0, after.2),
            (before.0, before.2),
            "memory was released"
        );
    }

    /// Engines sharing the validation instance see only the messages their own calls caused.
    #[test]
    fn validation_messages_stay_with_their_engine() {
        let Some(a) = validation_engine() else { return };
        let Some(b) = validation_engine() else { return };
        let ida = a.allocate(0, 64).expect("allocate");
        let idb = b.allocate(0, 4096).expect("allocate");
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..20 {
                    assert!(matches!(bad_fill(&a, ida), Err(EngineError::Validation(_))));
                }
            });
            s.spawn(|| {
                for k in 0..200u32 {
                    b.write(idb, 0, &k.to_le_bytes())
                        .expect("clean engine sees no errors");
                }
            });
        });
        assert!(b.take_validation_warnings().is_empty());
        a.close().expect("close");
        b.close().expect("close");
    }
}
