//! Copy paths: memcpy through persistent mappings ("mapped", and small copies on ReBAR devices),
//! a pipelined ring of host staging buffers ("staging"), DMA straight to/from the caller's own
//! pages imported with VK_EXT_external_memory_host ("import"), device-side copies (incl. memmove
//! within one buffer) and zero fill. Large memcpys are spread over the `workers` pool.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use ash::vk;
use gpu_allocator::vulkan::Allocator;

use crate::device::{DeviceContext, EngineDevice, QueueState};
use crate::error::{EngineError, Result};
use crate::memory::{destroy_buffer_with, BufView, GpuBuffer, Kind};
use crate::sync::lock;
use crate::tuning::tuning;
use crate::workers::{self, workers};

/// Largest temporary buffer used for an overlapping (memmove) device copy.
const MEMMOVE_CHUNK: u64 = 32 << 20;

/// Writes at least this large may be split between mapping and staging (`tuning` `hybrid`).
const HYBRID_MIN: u64 = 8 << 20;

/// Imports are split into pieces of at least this size, imported (pinned) in parallel.
const IMPORT_PIECE: usize = 16 << 20;

/// Persistently mapped host staging buffers, one per command slot and direction, created on
/// first use. Guarded by the DMA queue's mutex (it lives in its `QueueState`).
#[derive(Default)]
pub(crate) struct StagingRing {
    upload: Vec<GpuBuffer>,
    download: Vec<GpuBuffer>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Upload,
    Download,
}

impl StagingRing {
    /// Destroy every staging buffer (device idle).
    pub(crate) fn destroy(mut self, device: &ash::Device, mut allocator: Option<&mut Allocator>) {
        for mut b in self.upload.drain(..).chain(self.download.drain(..)) {
            destroy_buffer_with(device, allocator.as_deref_mut(), &mut b);
        }
    }

    fn buffers(&self, dir: Direction) -> &[GpuBuffer] {
        match dir {
            Direction::Upload => &self.upload,
            Direction::Download => &self.download,
        }
    }
}

/// `(base + offset)` as a pointer into a mapping, after bounds were checked by the caller.
fn at(base: std::ptr::NonNull<u8>, offset: u64) -> Result<*mut u8> {
    let off = usize::try_from(offset)
        .map_err(|_| EngineError::OutOfBounds(format!("offset {offset} exceeds address space")))?;
    // SAFETY: callers bounds-check `offset` against the mapped range, so the result stays
    // within (or one past) the mapping.
    Ok(unsafe { base.as_ptr().add(off) })
}

pub(crate) fn mapped_of(v: &BufView) -> Result<std::ptr::NonNull<u8>> {
    v.mapped
        .ok_or_else(|| EngineError::Internal("buffer is not host-visible".into()))
}

/// Index of `EngineDevice::moved` per path.
pub(crate) const PATH_MAPPED: usize = 0;
pub(crate) const PATH_STAGED: usize = 1;
pub(crate) const PATH_IMPORT: usize = 2;
/// Device-to-device bytes copied by the compute shader.
pub(crate) const PATH_COMPUTE: usize = 3;
/// Bytes copied to or from the device by cross-device copies.
pub(crate) const PATH_CROSS: usize = 4;

/// Outcome of an import attempt.
pub(crate) enum Imported {
    /// The bytes moved by DMA to/from the caller's own pages.
    Done,
    /// The buffer is too small or not importable here: nothing moved.
    Skipped,
    /// The driver refused the import: nothing moved.
    Refused,
}

/// An imported interior: bytes before it (head), its length, and its pieces as
/// `(import, offset within the interior, length)`.
type Interior = (usize, usize, Vec<(HostImport, usize, usize)>);

/// A buffer bound to imported host memory (VK_EXT_external_memory_host).
pub(crate) struct HostImport {
    pub(crate) buffer: vk::Buffer,
    pub(crate) memory: vk::DeviceMemory,
}

impl DeviceContext {
    fn ensure_ring(&self, st: &mut QueueState, dir: Direction) -> Result<()> {
        if !st.ring.buffers(dir).is_empty() {
            return Ok(());
        }
        let t = tuning();
        let (kind, usage, name) = match dir {
            Direction::Upload => (
                Kind::Upload,
                vk::BufferUsageFlags::TRANSFER_SRC,
                "exo-staging-upload",
            ),
            Direction::Download => (
                Kind::Download,
                vk::BufferUsageFlags::TRANSFER_DST,
                "exo-staging-download",
            ),
        };
        let mut made = Vec::with_capacity(t.slots);
        for _ in 0..st.slots.len() {
            match self.create_buffer(t.slot_size, usage, kind, name) {
                Ok(b) if b.mapped.is_some() => made.push(b),
                Ok(mut b) => {
                    self.destroy_buffer(&mut b);
                    for mut m in made {
                        self.destroy_buffer(&mut m);
                    }
                    return Err(EngineError::Internal(
                        "staging memory is not host-visible".into(),
                    ));
                }
                Err(e) => {
                    for mut m in made {
                        self.destroy_buffer(&mut m);
                    }
                    return Err(e);
                }
            }
        }
        match dir {
            Direction::Upload => st.ring.upload = made,
            Direction::Download => st.ring.download = made,
        }
        Ok(())
    }

    /// Make host writes to `[offset, offset+len)` of a mapped range visible to the device.
    pub(crate) fn flush(&self, v: &BufView, offset: u64, len: u64) -> Result<()> {
        if v.coherent || len == 0 {
            return Ok(());
        }
        let range = self.mapped_range(v, offset);
        // SAFETY: the range lies in host-visible memory of this device that is mapped.
        unsafe { self.device.flush_mapped_memory_ranges(&[range]) }
            .map_err(|r| self.fail("vkFlushMappedMemoryRanges", r))
    }

    /// Make device writes to a mapped range visible to the host.
    pub(crate) fn invalidate(&self, v: &BufView, offset: u64, len: u64) -> Result<()> {
        if v.coherent || len == 0 {
            return Ok(());
        }
        let range = self.mapped_range(v, offset);
        // SAFETY: as in `flush`.
        unsafe { self.device.invalidate_mapped_memory_ranges(&[range]) }
            .map_err(|r| self.fail("vkInvalidateMappedMemoryRanges", r))
    }

    fn mapped_range(&self, v: &BufView, offset: u64) -> vk::MappedMemoryRange<'static> {
        let atom = self.info.non_coherent_atom_size;
        let start = v.memory_offset.saturating_add(offset) / atom * atom;
        // WHOLE_SIZE: the end of a sub-allocation need not be atom-aligned within its block.
        vk::MappedMemoryRange::default()
            .memory(v.memory)
            .offset(start)
            .size(vk::WHOLE_SIZE)
    }

    /// memcpy `src` into a mapped range at `offset` (bounds already checked).
    pub(crate) fn write_mapped(&self, v: &BufView, offset: u64, src: &[u8]) -> Result<()> {
        let dst = at(mapped_of(v)?, offset)?;
        // SAFETY: `[offset, offset+len)` is within the mapped range (checked by the caller);
        // `src` is a distinct host slice.
        unsafe { workers::copy(dst, src.as_ptr(), src.len()) };
        self.flush(v, offset, src.len() as u64)
    }

    /// memcpy from a mapped range at `offset` into `dst` (bounds already checked).
    pub(crate) fn read_mapped(&self, v: &BufView, offset: u64, dst: &mut [u8]) -> Result<()> {
        let base = mapped_of(v)?;
        self.invalidate(v, offset, dst.len() as u64)?;
        let src = at(base, offset)?;
        let stream = tuning().stream_reads;
        if stream == 2 || (stream == 1 && !v.cached) {
            // SAFETY: in-bounds range of the mapping; `dst` is a distinct host slice.
            unsafe { workers::copy_from_uncached(dst.as_mut_ptr(), src, dst.len()) };
        } else {
            // SAFETY: as above.
            unsafe { workers::copy(dst.as_mut_ptr(), src, dst.len()) };
        }
        Ok(())
    }

    /// Upload through the staging ring: the (parallel) memcpy of chunk k+1 overlaps the DMA of
    /// chunk k.
    pub(crate) fn write_staged(&self, dst: &BufView, offset: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut st = lock(&self.dma.state);
        self.check_alive()?;
        self.ensure_ring(&mut st, Direction::Upload)?;
        let t = tuning();
        let chunk = t.slot_size as usize;
        let slots = st.ring.upload.len();
        let dst_buffer = dst.buffer;
        let base = dst.offset + offset;
        let result = (|| -> Result<()> {
            for (k, piece) in src.chunks(chunk).enumerate() {
                let slot = k % slots;
                self.wait_slot(&mut st, slot)?;
                let staging = st.ring.upload[slot].view();
                let ptr = mapped_of(&staging)?;
                if !t.diag_no_memcpy {
                    // SAFETY: the slot's previous copy finished (fence waited), the staging
                    // buffer holds `chunk >= piece.len()` bytes.
                    unsafe { workers::copy(ptr.as_ptr(), piece.as_ptr(), piece.len()) };
                }
                self.flush(&staging, 0, piece.len() as u64)?;
                if t.diag_no_dma {
                    continue;
                }
                let region = vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: base + (k * chunk) as u64,
                    size: piece.len() as u64,
                };
                self.submit_slot(&mut st, slot, |d, cmd| {
                    // SAFETY: recording state; both buffers alive until the fence wait below.
                    unsafe { d.cmd_copy_buffer(cmd, staging.buffer, dst_buffer, &[region]) }
                })?;
            }
            Ok(())
        })();
        let waited = self.wait_all(&mut st);
        result.and(waited)
    }

    /// Download through the staging ring: chunk k+SLOTS is submitted as soon as chunk k was
    /// copied out, so the DMA of later chunks overlaps the (parallel) memcpy of earlier ones.
    pub(crate) fn read_staged(&self, src: &BufView, offset: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let mut st = lock(&self.dma.state);
        self.check_alive()?;
        self.ensure_ring(&mut st, Direction::Download)?;
        let t = tuning();
        let chunk = t.slot_size as usize;
        let slots = st.ring.download.len();
        let n = dst.len().div_ceil(chunk);
        let total = dst.len();
        let src_buffer = src.buffer;
        let base = src.offset + offset;
        let submit = |st: &mut QueueState, k: usize| -> Result<()> {
            let slot = k % slots;
            let len = chunk.min(total - k * chunk);
            let region = vk::BufferCopy {
                src_offset: base + (k * chunk) as u64,
                dst_offset: 0,
                size: len as u64,
            };
            let sbuf = st.ring.download[slot].buffer;
            if t.diag_no_dma {
                return Ok(());
            }
            self.submit_slot(st, slot, |d, cmd| {
                // SAFETY: recording state; both buffers alive until the fence wait.
                unsafe { d.cmd_copy_buffer(cmd, src_buffer, sbuf, &[region]) }
            })
        };
        let result = (|| -> Result<()> {
            for k in 0..n.min(slots) {
                submit(&mut st, k)?;
            }
            for (k, out) in dst.chunks_mut(chunk).enumerate() {
                let slot = k % slots;
                self.wait_slot(&mut st, slot)?;
                let staging = st.ring.download[slot].view();
                self.invalidate(&staging, 0, out.len() as u64)?;
                let ptr = mapped_of(&staging)?;
                if !t.diag_no_memcpy {
                    // SAFETY: the copy into this slot finished (fence waited, host-read barrier
                    // recorded); the slot holds at least `out.len()` bytes.
                    unsafe { workers::copy(out.as_mut_ptr(), ptr.as_ptr(), out.len()) };
                }
                if k + slots < n {
                    submit(&mut st, k + slots)?;
                }
            }
            Ok(())
        })();
        let waited = self.wait_all(&mut st);
        result.and(waited)
    }

    // ---------------------------------------------------------------------------------------------
    // Import (VK_EXT_external_memory_host)

    /// Import `len` bytes of host memory at `ptr` (both aligned to
    /// minImportedHostPointerAlignment) as a transfer buffer.
    pub(crate) fn import_host(&self, ptr: *mut u8, len: u64) -> Result<HostImport> {
        let ext = self
            .ext_host
            .as_ref()
            .ok_or_else(|| EngineError::Unavailable("VK_EXT_external_memory_host".into()))?;
        let handle_type = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: the extension is enabled; `ptr` is an aligned pointer into host memory the
        // caller keeps alive for the whole transfer; `props` is a valid out-struct.
        let r = unsafe {
            (ext.fp().get_memory_host_pointer_properties_ext)(
                self.device.handle(),
                handle_type,
                ptr as *const c_void,
                &mut props,
            )
        };
        if r != vk::Result::SUCCESS {
            return Err(EngineError::from_vk(
                "vkGetMemoryHostPointerPropertiesEXT",
                r,
            ));
        }
        let d = &self.device;
        let (mode, families) = self.sharing();
        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle_type);
        let info = vk::BufferCreateInfo::default()
            .size(len)
            .usage(vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST)
            .sharing_mode(mode)
            .queue_family_indices(families)
            .push_next(&mut external);
        // SAFETY: valid device and create info.
        let buffer =
            unsafe { d.create_buffer(&info, None) }.map_err(|r| self.fail("vkCreateBuffer", r))?;
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let bits = req.memory_type_bits & props.memory_type_bits;
        if bits == 0 || req.size > len {
            // SAFETY: unused, unbound buffer.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(EngineError::Internal(
                "no memory type can import this host memory".into(),
            ));
        }
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(handle_type)
            .host_pointer(ptr.cast::<c_void>());
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(len)
            .memory_type_index(bits.trailing_zeros())
            .push_next(&mut import);
        // SAFETY: `ptr`/`len` are aligned as the extension requires and stay valid until the
        // memory is freed (before the transfer returns).
        let memory = match unsafe { d.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(r) => {
                // SAFETY: unused, unbound buffer.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(self.fail("vkAllocateMemory", r));
            }
        };
        // SAFETY: the memory satisfies the buffer's requirements (type bits, size, offset 0).
        if let Err(r) = unsafe { d.bind_buffer_memory(buffer, memory, 0) } {
            // SAFETY: unused objects of this device.
            unsafe {
                d.destroy_buffer(buffer, None);
                d.free_memory(memory, None);
            }
            return Err(self.fail("vkBindBufferMemory", r));
        }
        Ok(HostImport { buffer, memory })
    }

    pub(crate) fn release_imports(&self, imports: Vec<HostImport>) {
        if self.is_hung() {
            return;
        }
        for i in imports {
            // SAFETY: the transfer using them finished (fence waited) or never started.
            unsafe {
                self.device.destroy_buffer(i.buffer, None);
                self.device.free_memory(i.memory, None);
            }
        }
    }

    /// Import the page-aligned interior of `[ptr, ptr+len)`, in pieces pinned in parallel.
    /// Returns `(head, pieces)`, where `head` is the byte count before the interior and every
    /// piece covers `(offset within the interior, length)`; `None` when the interior is smaller
    /// than `min` or the driver refuses the import (the caller then uses staging).
    fn import_interior(
        &self,
        ptr: *mut u8,
        len: usize,
        min: u64,
    ) -> std::result::Result<Interior, Imported> {
        let align = self
            .info
            .min_imported_host_pointer_alignment
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(Imported::Skipped)?;
        // Head and tail (each < align) share one staging slot.
        if align == 0
            || !align.is_power_of_two()
            || self.ext_host.is_none()
            || (align as u64) * 2 > tuning().slot_size
        {
            return Err(Imported::Skipped);
        }
        let start = (ptr as usize).next_multiple_of(align);
        let end = (ptr as usize + len) & !(align - 1);
        if end <= start || ((end - start) as u64) < min {
            return Err(Imported::Skipped);
        }
        let interior = end - start;
        let parts = (interior / IMPORT_PIECE).clamp(1, workers().threads());
        let per = interior.div_ceil(parts).next_multiple_of(align);
        let results: Vec<Mutex<Option<Result<HostImport>>>> =
            (0..parts).map(|_| Mutex::new(None)).collect();
        let base = start;
        workers().run(parts, &|i| {
            let off = (per * i).min(interior);
            let n = per.min(interior - off);
            if n == 0 {
                return;
            }
            let r = self.import_host((base + off) as *mut u8, n as u64);
            *lock(&results[i]) = Some(r);
        });
        let mut ok = Vec::with_capacity(parts);
        let mut failed = false;
        for (i, r) in results.into_iter().enumerate() {
            let off = (per * i).min(interior);
            let n = per.min(interior - off);
            match r.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(Ok(imp)) => ok.push((imp, off, n)),
                Some(Err(_)) => failed = true,
                None => {}
            }
        }
        if failed || self.is_lost() {
            self.release_imports(ok.into_iter().map(|(i, _, _)| i).collect());
            return Err(Imported::Refused);
        }
        Ok((start - ptr as usize, interior, ok))
    }

    /// Write `src` by DMA from its own (imported) pages; head/tail through staging. Unless
    /// `Done`, nothing was written.
    pub(crate) fn write_imported(
        &self,
        dst: &BufView,
        offset: u64,
        src: &[u8],
        min: u64,
    ) -> Result<Imported> {
        let (head, interior, pieces) =
            match self.import_interior(src.as_ptr().cast_mut(), src.len(), min) {
                Ok(p) => p,
                Err(outcome) => return Ok(outcome),
            };
        let tail = src.len() - head - interior;
        let result = (|| -> Result<()> {
            let mut st = lock(&self.dma.state);
            self.check_alive()?;
            self.ensure_ring(&mut st, Direction::Upload)?;
            self.wait_slot(&mut st, 0)?;
            let staging = st.ring.upload[0].view();
            let sptr = mapped_of(&staging)?;
            let tail_at = (staging.len / 2) as usize;
            // SAFETY: head and tail are each smaller than the import alignment (<= 64 KiB here),
            // far below half a staging slot; slot 0 is idle (waited above).
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), sptr.as_ptr(), head);
                std::ptr::copy_nonoverlapping(
                    src.as_ptr().add(head + interior),
                    sptr.as_ptr().add(tail_at),
                    tail,
                );
            }
            self.flush(&staging, 0, staging.len)?;
            let base = dst.offset + offset;
            let dbuf = dst.buffer;
            self.submit_slot(&mut st, 0, |d, cmd| {
                let mut staged = Vec::with_capacity(2);
                if head > 0 {
                    staged.push(vk::BufferCopy {
                        src_offset: 0,
                        dst_offset: base,
                        size: head as u64,
                    });
                }
                if tail > 0 {
                    staged.push(vk::BufferCopy {
                        src_offset: tail_at as u64,
                        dst_offset: base + (head + interior) as u64,
                        size: tail as u64,
                    });
                }
                // SAFETY: recording state; all buffers alive until the fence wait below.
                unsafe {
                    if !staged.is_empty() {
                        d.cmd_copy_buffer(cmd, staging.buffer, dbuf, &staged);
                    }
                    for (imp, off, n) in &pieces {
                        let r = vk::BufferCopy {
                            src_offset: 0,
                            dst_offset: base + (head + off) as u64,
                            size: *n as u64,
                        };
                        d.cmd_copy_buffer(cmd, imp.buffer, dbuf, &[r]);
                    }
                }
            })?;
            self.wait_slot(&mut st, 0)
        })();
        self.release_imports(pieces.into_iter().map(|(i, _, _)| i).collect());
        result.map(|()| Imported::Done)
    }

    /// Read into `dst` by DMA into its own (imported) pages; head/tail through staging. Unless
    /// `Done`, nothing was read.
    pub(crate) fn read_imported(
        &self,
        src: &BufView,
        offset: u64,
        dst: &mut [u8],
        min: u64,
    ) -> Result<Imported> {
        let (head, interior, pieces) = match self.import_interior(dst.as_mut_ptr(), dst.len(), min)
        {
            Ok(p) => p,
            Err(outcome) => return Ok(outcome),
        };
        let tail = dst.len() - head - interior;
        let result = (|| -> Result<()> {
            let mut st = lock(&self.dma.state);
            self.check_alive()?;
            self.ensure_ring(&mut st, Direction::Download)?;
            let staging = st.ring.download[0].view();
            let tail_at = (staging.len / 2) as usize;
            let base = src.offset + offset;
            let sbuf = src.buffer;
            self.submit_slot(&mut st, 0, |d, cmd| {
                let mut staged = Vec::with_capacity(2);
                if head > 0 {
                    staged.push(vk::BufferCopy {
                        src_offset: base,
                        dst_offset: 0,
                        size: head as u64,
                    });
                }
                if tail > 0 {
                    staged.push(vk::BufferCopy {
                        src_offset: base + (head + interior) as u64,
                        dst_offset: tail_at as u64,
                        size: tail as u64,
                    });
                }
                // SAFETY: recording state; all buffers alive until the fence wait below.
                unsafe {
                    if !staged.is_empty() {
                        d.cmd_copy_buffer(cmd, sbuf, staging.buffer, &staged);
                    }
                    for (imp, off, n) in &pieces {
                        let r = vk::BufferCopy {
                            src_offset: base + (head + off) as u64,
                            dst_offset: 0,
                            size: *n as u64,
                        };
                        d.cmd_copy_buffer(cmd, sbuf, imp.buffer, &[r]);
                    }
                }
            })?;
            self.wait_slot(&mut st, 0)?;
            self.invalidate(&staging, 0, staging.len)?;
            let sptr = mapped_of(&staging)?;
            // SAFETY: the DMA finished; head/tail are within the slot and within `dst`.
            unsafe {
                std::ptr::copy_nonoverlapping(sptr.as_ptr(), dst.as_mut_ptr(), head);
                std::ptr::copy_nonoverlapping(
                    sptr.as_ptr().add(tail_at),
                    dst.as_mut_ptr().add(head + interior),
                    tail,
                );
            }
            Ok(())
        })();
        self.release_imports(pieces.into_iter().map(|(i, _, _)| i).collect());
        result.map(|()| Imported::Done)
    }

    // ---------------------------------------------------------------------------------------------
    // Device-side work

    /// The queue for device-to-device copies and fills.
    fn copy_queue(&self) -> &crate::device::Queue {
        if tuning().d2d_transfer {
            &self.dma
        } else {
            &self.universal
        }
    }

    /// vkCmdFillBuffer zeros over a whole range, on the universal queue.
    pub(crate) fn fill_zero(&self, v: &BufView) -> Result<()> {
        let (b, off, len) = (v.buffer, v.offset, v.len);
        self.run_now(self.copy_queue(), |d, cmd| {
            // SAFETY: recording state; offset and length are multiples of 4 within the buffer.
            unsafe { d.cmd_fill_buffer(cmd, b, off, len, 0) }
        })
    }

    /// Device-side copy between two distinct ranges (one vkCmdCopyBuffer on the universal queue:
    /// on discrete GPUs the copy engines behind a transfer-only queue are far slower for this).
    /// Returns whether the compute shader did the copy.
    pub(crate) fn copy_buffers(
        &self,
        src: &BufView,
        src_offset: u64,
        dst: &BufView,
        dst_offset: u64,
        size: u64,
    ) -> Result<bool> {
        if size == 0 {
            return Ok(false);
        }
        let (s, t) = (src.buffer, dst.buffer);
        let (sa, da) = (src.offset + src_offset, dst.offset + dst_offset);
        let t_ = tuning();
        if let Some(cp) = self.copy.as_ref() {
            if !t_.d2d_transfer && size >= t_.compute_min && cp.suits(sa, da, size) {
                return self
                    .run_now(&self.universal, |d, cmd| {
                        cp.record(d, cmd, (s, sa), (t, da), size)
                    })
                    .map(|()| true);
            }
        }
        let region = vk::BufferCopy {
            src_offset: sa,
            dst_offset: da,
            size,
        };
        self.run_now(self.copy_queue(), |d, cmd| {
            // SAFETY: recording state; regions are in bounds and do not overlap.
            unsafe { d.cmd_copy_buffer(cmd, s, t, &[region]) }
        })
        .map(|()| false)
    }

    /// memmove within one range whose source and destination overlap, through a temporary
    /// device buffer, chunk by chunk, in the order that never overwrites source bytes before
    /// they were read (forward when moving down, backward when up).
    pub(crate) fn move_within(
        &self,
        v: &BufView,
        src_offset: u64,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if size == 0 || src_offset == dst_offset {
            return Ok(());
        }
        let tmp_size = size.min(MEMMOVE_CHUNK).next_multiple_of(4);
        let mut tmp = self.create_buffer(
            tmp_size,
            vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST,
            Kind::Device,
            "exo-memmove-tmp",
        )?;
        let mut chunks = Vec::new();
        let mut done = 0u64;
        while done < size {
            let len = tmp_size.min(size - done);
            chunks.push((done, len));
            done += len;
        }
        if dst_offset > src_offset {
            chunks.reverse();
        }
        let (b, t, base) = (v.buffer, tmp.buffer, v.offset);
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::TRANSFER_READ)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)];
        let result = self.run_now(self.copy_queue(), |d, cmd| {
            for (start, len) in &chunks {
                let to_tmp = vk::BufferCopy {
                    src_offset: base + src_offset + start,
                    dst_offset: 0,
                    size: *len,
                };
                let from_tmp = vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: base + dst_offset + start,
                    size: *len,
                };
                // SAFETY: recording state; all regions in bounds; the barriers order the two
                // copies of a chunk and consecutive chunks.
                unsafe {
                    d.cmd_copy_buffer(cmd, b, t, &[to_tmp]);
                    d.cmd_pipeline_barrier(
                        cmd,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::DependencyFlags::empty(),
                        &barrier,
                        &[],
                        &[],
                    );
                    d.cmd_copy_buffer(cmd, t, b, &[from_tmp]);
                    d.cmd_pipeline_barrier(
                        cmd,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::DependencyFlags::empty(),
                        &barrier,
                        &[],
                        &[],
                    );
                }
            }
        });
        // On a hung device the temporary may still be in use: `destroy_buffer` leaks it then.
        self.destroy_buffer(&mut tmp);
        result
    }
}

impl EngineDevice {
    /// Zero a fresh range: memset through the mapping when it is host-visible and small enough
    /// (or the device is the CPU), else vkCmdFillBuffer.
    pub(crate) fn zero_fill(&self, v: &BufView) -> Result<()> {
        let ctx = &self.ctx;
        match v.mapped {
            Some(ptr) if v.len <= self.plan.map_zero_max => {
                let len = usize::try_from(v.len)
                    .map_err(|_| EngineError::OutOfMemory("buffer exceeds address space".into()))?;
                if ctx.info.device_type == "cpu" {
                    // Device memory is ordinary host memory here: fault it in as huge pages.
                    workers::advise_huge_pages(ptr.as_ptr(), len);
                }
                // SAFETY: the mapping covers the whole range and nothing else accesses the fresh
                // range yet.
                unsafe { workers::zero(ptr.as_ptr(), len) };
                ctx.flush(v, 0, v.len)
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
            match ctx.write_imported(v, offset, src, min)? {
                Imported::Done => {
                    self.count(PATH_IMPORT, n);
                    return Ok(());
                }
                Imported::Refused => self.refused(),
                Imported::Skipped => {}
            }
        }
        self.count(PATH_STAGED, n);
        ctx.write_staged(v, offset, src)
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
            || ctx.write_staged(v, offset, &src[..staged]),
        );
        self.count(PATH_MAPPED, mapped as u64);
        self.count(PATH_STAGED, staged as u64);
        staged_result?;
        ctx.flush(v, offset + staged as u64, mapped as u64)
    }

    fn count(&self, path: usize, n: u64) {
        self.moved[path].fetch_add(n, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.import_refused.fetch_add(1, Ordering::Relaxed);
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
            match ctx.read_imported(v, offset, dst, min)? {
                Imported::Done => {
                    self.count(PATH_IMPORT, n);
                    return Ok(());
                }
                Imported::Refused => self.refused(),
                Imported::Skipped => {}
            }
        }
        self.count(PATH_STAGED, n);
        ctx.read_staged(v, offset, dst)
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
            ctx.invalidate(src, src_offset, size)?;
            let (sp, dp) = (at(s, src_offset)?, at(d, dst_offset)?);
            if overlap {
                // SAFETY: both ranges are in bounds of the mapping; `ptr::copy` allows overlap.
                unsafe { std::ptr::copy(sp, dp, len) };
            } else {
                // SAFETY: in-bounds, non-overlapping ranges of live mappings.
                unsafe { workers::copy(dp, sp, len) };
            }
            return ctx.flush(dst, dst_offset, size);
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
