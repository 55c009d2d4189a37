//! Copy paths: memcpy through persistent mappings ("mapped"), a pipelined ring of host staging
//! buffers ("staging"), device-side copies (incl. memmove within one buffer) and zero fill.

use ash::vk;
use gpu_allocator::vulkan::Allocator;
use gpu_allocator::MemoryLocation;

use crate::device::{DeviceContext, SubmitState, SLOTS};
use crate::error::{EngineError, Result};
use crate::memory::{destroy_buffer_with, GpuBuffer};
use crate::sync::lock;

/// Size of one staging-ring slot.
pub(crate) const RING_SLOT_SIZE: u64 = 16 << 20;

/// Largest temporary buffer used for an overlapping (memmove) device copy.
const MEMMOVE_CHUNK: u64 = 32 << 20;

/// Persistently mapped host staging buffers, one per command slot and direction, created on
/// first use. Guarded by the device's `submit` mutex (it lives in `SubmitState`).
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
    // SAFETY: callers bounds-check `offset` against the mapped buffer size, so the result stays
    // within (or one past) the mapping.
    Ok(unsafe { base.as_ptr().add(off) })
}

impl DeviceContext {
    fn ensure_ring(&self, st: &mut SubmitState, dir: Direction) -> Result<()> {
        if !st.ring.buffers(dir).is_empty() {
            return Ok(());
        }
        let (location, usage, name) = match dir {
            Direction::Upload => (
                MemoryLocation::CpuToGpu,
                vk::BufferUsageFlags::TRANSFER_SRC,
                "exo-staging-upload",
            ),
            Direction::Download => (
                MemoryLocation::GpuToCpu,
                vk::BufferUsageFlags::TRANSFER_DST,
                "exo-staging-download",
            ),
        };
        let mut made = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            match self.create_buffer(RING_SLOT_SIZE, usage, location, name) {
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

    /// Make host writes to `[offset, offset+len)` of a mapped buffer visible to the device.
    fn flush(&self, buf: &GpuBuffer, offset: u64, len: u64) -> Result<()> {
        if buf.coherent || len == 0 {
            return Ok(());
        }
        let range = self.mapped_range(buf, offset)?;
        // SAFETY: the range lies in host-visible memory of this device that is mapped.
        unsafe { self.device.flush_mapped_memory_ranges(&[range]) }
            .map_err(|r| self.fail("vkFlushMappedMemoryRanges", r))
    }

    /// Make device writes to a mapped buffer visible to the host.
    fn invalidate(&self, buf: &GpuBuffer, offset: u64, len: u64) -> Result<()> {
        if buf.coherent || len == 0 {
            return Ok(());
        }
        let range = self.mapped_range(buf, offset)?;
        // SAFETY: as in `flush`.
        unsafe { self.device.invalidate_mapped_memory_ranges(&[range]) }
            .map_err(|r| self.fail("vkInvalidateMappedMemoryRanges", r))
    }

    fn mapped_range(&self, buf: &GpuBuffer, offset: u64) -> Result<vk::MappedMemoryRange<'static>> {
        let (memory, base) = buf
            .memory_range()
            .ok_or_else(|| EngineError::Internal("buffer has no memory".into()))?;
        let atom = self.info.non_coherent_atom_size;
        let start = base.saturating_add(offset) / atom * atom;
        // WHOLE_SIZE: the end of a sub-allocation need not be atom-aligned within its block.
        Ok(vk::MappedMemoryRange::default()
            .memory(memory)
            .offset(start)
            .size(vk::WHOLE_SIZE))
    }

    /// Zero a freshly created buffer: memset through the mapping, or vkCmdFillBuffer.
    pub(crate) fn zero_fill(&self, buf: &GpuBuffer) -> Result<()> {
        match (self.strategy, buf.mapped) {
            (crate::properties::Strategy::Mapped, Some(ptr)) => {
                let len = usize::try_from(buf.size)
                    .map_err(|_| EngineError::OutOfMemory("buffer exceeds address space".into()))?;
                // SAFETY: the mapping covers the whole buffer (`buf.size` bytes) and nothing else
                // accesses the fresh buffer yet.
                unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
                self.flush(buf, 0, buf.size)
            }
            _ => {
                let b = buf.buffer;
                self.run_now(|d, cmd| {
                    // SAFETY: recording state; buffer size is a multiple of 4 so WHOLE_SIZE
                    // clears every byte.
                    unsafe { d.cmd_fill_buffer(cmd, b, 0, vk::WHOLE_SIZE, 0) }
                })
            }
        }
    }

    /// memcpy `src` into a mapped buffer at `offset` (bounds already checked).
    pub(crate) fn write_mapped(&self, buf: &GpuBuffer, offset: u64, src: &[u8]) -> Result<()> {
        let base = buf
            .mapped
            .ok_or_else(|| EngineError::Internal("buffer is not mapped".into()))?;
        let dst = at(base, offset)?;
        // SAFETY: `[offset, offset+len)` is within the mapped buffer (checked by the caller);
        // `src` is a distinct host slice.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        self.flush(buf, offset, src.len() as u64)
    }

    /// memcpy from a mapped buffer at `offset` into `dst` (bounds already checked).
    pub(crate) fn read_mapped(&self, buf: &GpuBuffer, offset: u64, dst: &mut [u8]) -> Result<()> {
        let base = buf
            .mapped
            .ok_or_else(|| EngineError::Internal("buffer is not mapped".into()))?;
        self.invalidate(buf, offset, dst.len() as u64)?;
        let src = at(base, offset)?;
        // SAFETY: in-bounds range of the mapping; `dst` is a distinct host slice.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Upload through the staging ring: memcpy of chunk k+1 overlaps the DMA of chunk k.
    pub(crate) fn write_staged(&self, buf: &GpuBuffer, offset: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut st = lock(&self.submit);
        self.check_alive()?;
        self.ensure_ring(&mut st, Direction::Upload)?;
        let chunk = RING_SLOT_SIZE as usize;
        let dst_buffer = buf.buffer;
        let result = (|| -> Result<()> {
            for (k, piece) in src.chunks(chunk).enumerate() {
                let slot = k % SLOTS;
                self.wait_slot(&mut st, slot)?;
                let staging = &st.ring.upload[slot];
                let ptr = staging
                    .mapped
                    .ok_or_else(|| EngineError::Internal("staging buffer not mapped".into()))?;
                // SAFETY: the slot's previous copy finished (fence waited), the staging buffer
                // holds RING_SLOT_SIZE >= piece.len() bytes.
                unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), ptr.as_ptr(), piece.len()) };
                self.flush(staging, 0, piece.len() as u64)?;
                let region = vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: offset + (k * chunk) as u64,
                    size: piece.len() as u64,
                };
                let sbuf = staging.buffer;
                self.submit_slot(&mut st, slot, |d, cmd| {
                    // SAFETY: recording state; both buffers alive until the fence wait below.
                    unsafe { d.cmd_copy_buffer(cmd, sbuf, dst_buffer, &[region]) }
                })?;
            }
            Ok(())
        })();
        let waited = self.wait_all(&mut st);
        result.and(waited)
    }

    /// Download through the staging ring: chunk k+SLOTS is submitted as soon as chunk k was
    /// copied out, so the DMA of later chunks overlaps the memcpy of earlier ones.
    pub(crate) fn read_staged(&self, buf: &GpuBuffer, offset: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let mut st = lock(&self.submit);
        self.check_alive()?;
        self.ensure_ring(&mut st, Direction::Download)?;
        let chunk = RING_SLOT_SIZE as usize;
        let n = dst.len().div_ceil(chunk);
        let total = dst.len();
        let src_buffer = buf.buffer;
        let submit = |st: &mut SubmitState, k: usize| -> Result<()> {
            let slot = k % SLOTS;
            let len = chunk.min(total - k * chunk);
            let region = vk::BufferCopy {
                src_offset: offset + (k * chunk) as u64,
                dst_offset: 0,
                size: len as u64,
            };
            let sbuf = st.ring.download[slot].buffer;
            self.submit_slot(st, slot, |d, cmd| {
                // SAFETY: recording state; both buffers alive until the fence wait.
                unsafe { d.cmd_copy_buffer(cmd, src_buffer, sbuf, &[region]) }
            })
        };
        let result = (|| -> Result<()> {
            for k in 0..n.min(SLOTS) {
                submit(&mut st, k)?;
            }
            for (k, out) in dst.chunks_mut(chunk).enumerate() {
                let slot = k % SLOTS;
                self.wait_slot(&mut st, slot)?;
                let staging = &st.ring.download[slot];
                self.invalidate(staging, 0, out.len() as u64)?;
                let ptr = staging
                    .mapped
                    .ok_or_else(|| EngineError::Internal("staging buffer not mapped".into()))?;
                // SAFETY: the copy into this slot finished (fence waited, host-read barrier
                // recorded); the slot holds at least `out.len()` bytes.
                unsafe { std::ptr::copy_nonoverlapping(ptr.as_ptr(), out.as_mut_ptr(), out.len()) };
                if k + SLOTS < n {
                    submit(&mut st, k + SLOTS)?;
                }
            }
            Ok(())
        })();
        let waited = self.wait_all(&mut st);
        result.and(waited)
    }

    /// Device-side copy between two distinct buffers (or disjoint ranges of one).
    pub(crate) fn copy_buffers(
        &self,
        src: &GpuBuffer,
        src_offset: u64,
        dst: &GpuBuffer,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        let (s, t) = (src.buffer, dst.buffer);
        let region = vk::BufferCopy {
            src_offset,
            dst_offset,
            size,
        };
        self.run_now(|d, cmd| {
            // SAFETY: recording state; regions are in bounds and do not overlap.
            unsafe { d.cmd_copy_buffer(cmd, s, t, &[region]) }
        })
    }

    /// memmove within one buffer whose source and destination ranges overlap.
    pub(crate) fn move_within(
        &self,
        buf: &GpuBuffer,
        src_offset: u64,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if size == 0 || src_offset == dst_offset {
            return Ok(());
        }
        if let (crate::properties::Strategy::Mapped, Some(base)) = (self.strategy, buf.mapped) {
            let len = usize::try_from(size)
                .map_err(|_| EngineError::OutOfBounds("size exceeds address space".into()))?;
            self.invalidate(buf, src_offset.min(dst_offset), size)?;
            let (s, d) = (at(base, src_offset)?, at(base, dst_offset)?);
            // SAFETY: both ranges are in bounds of the mapping; `ptr::copy` allows overlap.
            unsafe { std::ptr::copy(s, d, len) };
            return self.flush(buf, dst_offset, size);
        }
        // Through a temporary device buffer, chunk by chunk, in the order that never overwrites
        // source bytes before they were read (forward when moving down, backward when up).
        let tmp_size = size.min(MEMMOVE_CHUNK);
        let mut tmp = self.create_buffer(
            tmp_size,
            vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST,
            MemoryLocation::GpuOnly,
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
        let (b, t) = (buf.buffer, tmp.buffer);
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE | vk::AccessFlags::TRANSFER_READ)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)];
        let result = self.run_now(|d, cmd| {
            for (start, len) in &chunks {
                let to_tmp = vk::BufferCopy {
                    src_offset: src_offset + start,
                    dst_offset: 0,
                    size: *len,
                };
                let from_tmp = vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: dst_offset + start,
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
        // On a lost/hung device the temporary may still be in use: leak it rather than free it.
        if !self.is_lost() {
            self.destroy_buffer(&mut tmp);
        }
        result
    }
}
