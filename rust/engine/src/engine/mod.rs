//! The facade: `Engine` holds the (process-wide) instance, the physical-device list, its views of
//! lazily opened (shared) logical devices and its allocation table; with validation, every
//! public call is checked against the messages it caused.
//!
//! This file holds the engine's state and its allocation and transfer calls; the rest of its
//! calls live beside it by concept: `validation` (the per-call validation log), `reports`
//! (heaps and stats), `links` (cross-device links), `hosts` (pinned and registered host
//! memory), `interop` (export, import, retained memory), `faults` (fault injection).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ash::vk;

use crate::allocation::{new_allocation, Allocation};
use crate::context::shared_device;
use crate::cross::{CrossSettings, Link};
use crate::error::{EngineError, Result};
use crate::host::HostTable;
use crate::instance::{CallLog, CallLogScope, InstanceContext};
use crate::plan::Plan;
use crate::properties::{fill_device_groups, gather, DeviceInfo, StrategyRequest};
use crate::sync::{lock, read, write};
use crate::transfer::{EngineDevice, PATH_CROSS};
use crate::tuning::tuning;

#[cfg(feature = "fault-injection")]
mod faults;
mod hosts;
#[cfg(unix)]
mod interop;
mod links;
mod reports;
mod validation;

#[cfg(unix)]
pub use interop::Retained;
pub use reports::{HeapReport, Stats};

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

    /// Number of physical devices.
    pub fn device_count(&self) -> Result<usize> {
        self.call(|i| Ok(i.infos.len()))
    }

    /// Static information about a device (no logical device is needed).
    pub fn device_info(&self, index: usize) -> Result<DeviceInfo> {
        self.call(|i| i.info(index).cloned())
    }

    /// Allocate `size` bytes on device `index`; returns the allocation id. Zero-filled when
    /// `zeroed`; otherwise the content is unspecified, so the caller must write every byte before
    /// reading any (a model's weights, loaded whole), and saves a pass over the memory.
    pub fn allocate(&self, index: usize, size: u64, zeroed: bool) -> Result<u64> {
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
                    "write_from_file: file offset {file_offset} + size {size} exceeds the \
                     largest file offset ({})",
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

    /// Fill `out` from file descriptor `fd` (borrowed, never closed) at `file_offset` by the
    /// parallel `pread`s of the engine's file copies, into the caller's memory: the CUDA copy
    /// path's pinned ring reads at the rate the engine's own loads do (Python threads read
    /// slower, under the GIL). A short read or an I/O error is `FileRead`.
    pub fn read_file_into(&self, fd: i32, file_offset: u64, out: &mut [u8]) -> Result<()> {
        self.call(|_| {
            #[cfg(unix)]
            {
                crate::file_read::FileSource::open(fd, file_offset, out.len() as u64, false)?
                    .read_into(out, file_offset)
            }
            #[cfg(not(unix))]
            {
                let _ = (fd, file_offset, out);
                Err(EngineError::Unavailable(
                    "read_file_into needs pread (Unix)".into(),
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

    /// Wait for all submitted work on device `index` (no-op if this engine never used it).
    pub fn synchronize(&self, index: usize) -> Result<()> {
        self.call(|i| match i.existing_device(index)? {
            Some(d) => d.ctx.synchronize(),
            None => Ok(()),
        })
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
}
