//! `EngineDevice`, one engine's view of a shared device: its `Plan`, its counters, and the copy
//! paths it picks from per call: memcpy through persistent mappings ("mapped", and small copies
//! on ReBAR devices), the staging rings ("staging"), DMA straight to/from the caller's own pages
//! ("import"), pinned and registered host memory (direct DMA), device-side copies (incl.
//! memmove within one buffer) and zero fill.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ash::vk;

use crate::context::DeviceContext;
use crate::error::{EngineError, Result};
#[cfg(unix)]
use crate::file_read::FileSource;
use crate::host::HostRange;
use crate::import::{read_imported, write_imported, Imported};
use crate::memcpy;
use crate::memory::{at, flush, invalidate, mapped_of, BufView};
use crate::plan::Plan;
use crate::workers::{self, workers};

/// Writes at least this large may be split between mapping and staging (`tuning` `hybrid`).
const HYBRID_MIN: u64 = 8 << 20;

/// Index of `EngineDevice::moved` per path.
pub(crate) const PATH_MAPPED: usize = 0;
pub(crate) const PATH_STAGED: usize = 1;
pub(crate) const PATH_IMPORT: usize = 2;
/// Device-to-device bytes copied by the compute shader.
pub(crate) const PATH_COMPUTE: usize = 3;
/// Bytes copied to or from the device by cross-device copies.
pub(crate) const PATH_CROSS: usize = 4;
/// Bytes moved by direct DMA from or to pinned / registered host memory.
pub(crate) const PATH_PINNED: usize = 5;
/// File bytes read with `O_DIRECT` (cold files) for a file copy.
pub(crate) const PATH_FILE_DIRECT: usize = 6;

/// One engine's view of a shared device: its plan and its own allocation counters.
pub(crate) struct EngineDevice {
    pub(crate) ctx: Arc<DeviceContext>,
    pub(crate) plan: Plan,
    /// Live allocations of this engine on the device.
    pub(crate) live_allocations: AtomicU64,
    /// Bytes requested by them.
    pub(crate) live_bytes: AtomicU64,
    /// Bytes of device memory they hold, per heap.
    pub(crate) heap_bytes: Vec<AtomicU64>,
    /// Bytes moved between host and device by each path (mapping, staging ring, import),
    /// device-to-device bytes copied by the compute shader, bytes copied to or from the
    /// device by cross-device copies, bytes moved by DMA from/to pinned or registered host
    /// memory, and file bytes read with `O_DIRECT`.
    pub(crate) moved: [AtomicU64; 7],
    /// Imports the driver refused (the copy then went through staging).
    pub(crate) import_refused: AtomicU64,
}

impl EngineDevice {
    pub(crate) fn new(ctx: Arc<DeviceContext>, plan: Plan) -> EngineDevice {
        let heap_bytes = ctx.info.heaps.iter().map(|_| AtomicU64::new(0)).collect();
        EngineDevice {
            ctx,
            plan,
            live_allocations: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            heap_bytes,
            moved: Default::default(),
            import_refused: AtomicU64::new(0),
        }
    }

    /// Bytes this engine holds on each heap.
    pub(crate) fn heap_usage(&self) -> Vec<u64> {
        self.heap_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Ready a fresh range. On the CPU device its memory is ordinary host memory: ask for huge
    /// pages before anything touches it, so the first writes (the zeroing, or the caller's own
    /// when `zeroed` is false) fault it in 2 MiB at a time. Then zero it when `zeroed`: memset
    /// through the mapping when it is host-visible and small enough (or the device is the CPU),
    /// else vkCmdFillBuffer.
    pub(crate) fn prepare_fresh(&self, v: &BufView, zeroed: bool) -> Result<()> {
        let ctx = &self.ctx;
        let mapped = match v.mapped {
            Some(ptr) => Some((
                ptr,
                usize::try_from(v.len)
                    .map_err(|_| EngineError::OutOfMemory("buffer exceeds address space".into()))?,
            )),
            None => None,
        };
        if let Some((ptr, len)) = mapped.filter(|_| ctx.info.device_type == "cpu") {
            memcpy::advise_huge_pages(ptr.as_ptr(), len);
        }
        if !zeroed {
            return Ok(());
        }
        match mapped {
            Some((ptr, len)) if v.len <= self.plan.map_zero_max => {
                // SAFETY: the mapping covers the whole range and nothing else accesses the fresh
                // range yet.
                unsafe { memcpy::zero(ptr.as_ptr(), len) };
                flush(ctx.raw(), v, 0, v.len)
            }
            _ => ctx.fill_zero(v),
        }
    }

    /// Copy `src` into `v` at `offset` (bounds checked by the caller) by the plan's path.
    pub(crate) fn write(&self, v: &BufView, offset: u64, src: &[u8]) -> Result<()> {
        let ctx = &self.ctx;
        let n = src.len() as u64;
        if v.mapped.is_some() && n <= self.plan.map_write_max {
            self.count(PATH_MAPPED, n);
            return ctx.write_mapped(v, offset, src);
        }
        if v.mapped.is_some() && self.plan.hybrid_percent > 0 && n >= HYBRID_MIN {
            return self.write_hybrid(v, offset, src);
        }
        if let Some(min) = self.plan.import_min {
            let outcome = write_imported(ctx.raw(), &ctx.mem, &ctx.up, v, offset, src, min)?;
            if self.took_import(outcome, n) {
                return Ok(());
            }
        }
        self.count(PATH_STAGED, n);
        ctx.up.write(ctx.raw(), &ctx.mem, v, offset, src)
    }

    /// A large write to a mapped allocation over both paths at once: the tail (`hybrid`
    /// percent) by pool threads through the mapping, the head through the staging ring, whose
    /// memcpy runs on the remaining threads. The two use different resources (the CPU's
    /// write-combining path to the BAR, the copy engine's DMA) and add up.
    fn write_hybrid(&self, v: &BufView, offset: u64, src: &[u8]) -> Result<()> {
        let ctx = &self.ctx;
        let n = src.len();
        let mapped = (n as u64 * self.plan.hybrid_percent / 100) as usize & !4095;
        let staged = n - mapped;
        let threads = workers().threads();
        let parts = ((threads as u64 * self.plan.hybrid_percent / 100) as usize).clamp(1, threads);
        let base = mapped_of(v)?;
        let dst = at(base, offset + staged as u64)?;
        let tail = &src[staged..];
        let (d, s) = (
            workers::SendPtr(dst),
            workers::SendPtr(tail.as_ptr().cast_mut()),
        );
        let per = mapped.div_ceil(parts).next_multiple_of(4096);
        let staged_result = workers().run_beside(
            parts,
            &move |i| {
                let a = (per * i).min(mapped);
                let b = (per * (i + 1)).min(mapped);
                // SAFETY: disjoint in-bounds parts of the mapping and of `src` (bounds checked
                // by the caller); both outlive the call.
                unsafe { std::ptr::copy_nonoverlapping(s.add(a), d.add(a), b - a) };
                std::sync::atomic::fence(Ordering::SeqCst);
            },
            || ctx.up.write(ctx.raw(), &ctx.mem, v, offset, &src[..staged]),
        );
        self.count(PATH_MAPPED, mapped as u64);
        self.count(PATH_STAGED, staged as u64);
        staged_result?;
        flush(ctx.raw(), v, offset + staged as u64, mapped as u64)
    }

    fn count(&self, path: usize, n: u64) {
        self.moved[path].fetch_add(n, Ordering::Relaxed);
    }

    /// Count an import attempt's outcome; whether it moved the `n` bytes.
    fn took_import(&self, outcome: Imported, n: u64) -> bool {
        match outcome {
            Imported::Done => {
                self.count(PATH_IMPORT, n);
                true
            }
            Imported::Refused => {
                self.import_refused.fetch_add(1, Ordering::Relaxed);
                false
            }
            Imported::Skipped => false,
        }
    }

    /// Fill `[offset, offset+size)` of `v` from file `fd` at `file_offset`: parallel preads
    /// straight into the mapping (host-visible allocations), or into the upload ring's slots
    /// (direct reads there when the range is cold), each slot's reads overlapping the DMA of the
    /// slot before.
    #[cfg(unix)]
    pub(crate) fn write_from_file(
        &self,
        v: &BufView,
        offset: u64,
        fd: i32,
        file_offset: u64,
        size: u64,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let whole_mapped = v.mapped.is_some() && size <= self.plan.map_write_max;
        let file = FileSource::open(fd, file_offset, size, !whole_mapped)?;
        if whole_mapped {
            let n = usize::try_from(size)
                .map_err(|_| EngineError::OutOfBounds("size exceeds address space".into()))?;
            let dst = at(mapped_of(v)?, offset)?;
            // SAFETY: `[offset, offset+size)` lies within the mapping (checked by the caller).
            let out = unsafe { std::slice::from_raw_parts_mut(dst, n) };
            file.read_into(out, file_offset)?;
            flush(ctx.raw(), v, offset, size)?;
            self.count(PATH_MAPPED, size);
            return Ok(());
        }
        ctx.up.write_with(
            ctx.raw(),
            &ctx.mem,
            v,
            offset,
            size,
            file.headroom(),
            &|slot, pos, n| file.fill_slot(slot, file_offset + pos, n),
        )?;
        self.count(PATH_STAGED, size);
        if file.is_direct() {
            self.count(PATH_FILE_DIRECT, size);
        }
        Ok(())
    }

    /// Write `len` bytes from host range `host` (at `host_off`) to `v` at `offset` by one DMA
    /// (the mapping for small writes to host-visible allocations).
    pub(crate) fn write_from_host(
        &self,
        v: &BufView,
        offset: u64,
        host: &HostRange,
        host_off: u64,
        src: &[u8],
    ) -> Result<()> {
        let ctx = &self.ctx;
        let n = src.len() as u64;
        if v.mapped.is_some() && n <= self.plan.map_write_max {
            self.count(PATH_MAPPED, n);
            return ctx.write_mapped(v, offset, src);
        }
        host.flush(host_off, n)?;
        let region = vk::BufferCopy {
            src_offset: host.buffer_offset + host_off,
            dst_offset: v.offset + offset,
            size: n,
        };
        let (s, d) = (host.buffer, v.buffer);
        ctx.up.direct(ctx.raw(), v.mapped.is_some(), |dev, cmd| {
            // SAFETY: recording state; the host range (held by the caller) and the allocation
            // stay alive until the DMA's value is waited for.
            unsafe { dev.cmd_copy_buffer(cmd, s, d, &[region]) }
        })?;
        self.count(PATH_PINNED, n);
        Ok(())
    }

    /// Read `dst.len()` bytes of `v` at `offset` into host range `host` (at `host_off`) by one
    /// DMA (the mapping for small reads from host-visible allocations).
    pub(crate) fn read_to_host(
        &self,
        v: &BufView,
        offset: u64,
        host: &HostRange,
        host_off: u64,
        dst: &mut [u8],
    ) -> Result<()> {
        let ctx = &self.ctx;
        let n = dst.len() as u64;
        if v.mapped.is_some() && n <= self.plan.map_read_max {
            self.count(PATH_MAPPED, n);
            return ctx.read_mapped(v, offset, dst);
        }
        let region = vk::BufferCopy {
            src_offset: v.offset + offset,
            dst_offset: host.buffer_offset + host_off,
            size: n,
        };
        let (s, d) = (v.buffer, host.buffer);
        ctx.down.direct(ctx.raw(), true, |dev, cmd| {
            // SAFETY: as in `write_from_host`.
            unsafe { dev.cmd_copy_buffer(cmd, s, d, &[region]) }
        })?;
        host.invalidate(host_off, n)?;
        self.count(PATH_PINNED, n);
        Ok(())
    }

    /// Copy `dst.len()` bytes of `v` at `offset` into `dst` by the plan's path.
    pub(crate) fn read_into(&self, v: &BufView, offset: u64, dst: &mut [u8]) -> Result<()> {
        let ctx = &self.ctx;
        let n = dst.len() as u64;
        if v.mapped.is_some() && n <= self.plan.map_read_max {
            self.count(PATH_MAPPED, n);
            return ctx.read_mapped(v, offset, dst);
        }
        if let Some(min) = self.plan.import_min {
            let outcome = read_imported(ctx.raw(), &ctx.mem, &ctx.down, v, offset, dst, min)?;
            if self.took_import(outcome, n) {
                return Ok(());
            }
        }
        self.count(PATH_STAGED, n);
        ctx.down.read(ctx.raw(), &ctx.mem, v, offset, dst)
    }

    /// Copy between two ranges of this device; `same` when both are one allocation (memmove).
    pub(crate) fn copy(
        &self,
        src: &BufView,
        src_offset: u64,
        dst: &BufView,
        dst_offset: u64,
        size: u64,
        same: bool,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let overlap = same && src_offset < dst_offset + size && dst_offset < src_offset + size;
        if same && src_offset == dst_offset {
            return Ok(());
        }
        if let (true, Some(s), Some(d)) = (self.plan.host_d2d, src.mapped, dst.mapped) {
            let len = usize::try_from(size)
                .map_err(|_| EngineError::OutOfBounds("size exceeds address space".into()))?;
            invalidate(ctx.raw(), src, src_offset, size)?;
            let (sp, dp) = (at(s, src_offset)?, at(d, dst_offset)?);
            if overlap {
                // SAFETY: both ranges are in bounds of the mapping; `ptr::copy` allows overlap.
                unsafe { std::ptr::copy(sp, dp, len) };
            } else {
                // SAFETY: in-bounds, non-overlapping ranges of live mappings.
                unsafe { memcpy::copy(dp, sp, len) };
            }
            return flush(ctx.raw(), dst, dst_offset, size);
        }
        if overlap {
            ctx.move_within(src, src_offset, dst_offset, size)
        } else {
            if ctx.copy_buffers(src, src_offset, dst, dst_offset, size)? {
                self.count(PATH_COMPUTE, size);
            }
            Ok(())
        }
    }
}
