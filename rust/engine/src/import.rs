//! Host memory imported into a device (VK_EXT_external_memory_host): the caller's own pages
//! become a transfer buffer, so bytes move by DMA with no staging copy. Used by the "import"
//! strategy for one transfer, by registered host buffers for their lifetime, and by the
//! cross-device ring.

use std::ffi::c_void;
use std::sync::Mutex;

use ash::vk;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::memory::{mapped_of, BufView, Memory};
use crate::staging::StagingRing;
use crate::sync::lock;
use crate::workers::workers;

/// Imports are split into pieces of at least this size, imported (pinned) in parallel.
const IMPORT_PIECE: usize = 16 << 20;

/// A buffer bound to imported host memory.
pub(crate) struct HostImport {
    pub(crate) buffer: vk::Buffer,
    pub(crate) memory: vk::DeviceMemory,
}

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

/// The device's import alignment, when it can import at all.
pub(crate) fn import_align(dev: &RawDevice) -> Option<usize> {
    dev.ext_host.as_ref()?;
    dev.info
        .min_imported_host_pointer_alignment
        .and_then(|a| usize::try_from(a).ok())
        .filter(|a| *a > 0 && a.is_power_of_two())
}

/// Import `len` bytes of host memory at `ptr` (both aligned to minImportedHostPointerAlignment)
/// as a transfer buffer. The caller keeps the memory alive until `release_imports`.
pub(crate) fn import_host(dev: &RawDevice, ptr: *mut u8, len: u64) -> Result<HostImport> {
    let ext = dev
        .ext_host
        .as_ref()
        .ok_or_else(|| EngineError::Unavailable("VK_EXT_external_memory_host".into()))?;
    let handle_type = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
    let mut props = vk::MemoryHostPointerPropertiesEXT::default();
    // SAFETY: the extension is enabled; `ptr` is an aligned pointer into host memory the caller
    // keeps alive; `props` is a valid out-struct.
    let r = unsafe {
        (ext.fp().get_memory_host_pointer_properties_ext)(
            dev.device.handle(),
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
    let d = &dev.device;
    let (mode, families) = dev.sharing();
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle_type);
    let info = vk::BufferCreateInfo::default()
        .size(len)
        .usage(vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST)
        .sharing_mode(mode)
        .queue_family_indices(families)
        .push_next(&mut external);
    // SAFETY: valid device and create info.
    let buffer =
        unsafe { d.create_buffer(&info, None) }.map_err(|r| dev.fail("vkCreateBuffer", r))?;
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
    // Prefer a HOST_COHERENT type: imported memory is never mapped, so it cannot be flushed.
    let coherent = dev.info.memory_types.iter().enumerate().position(|(i, t)| {
        i < 32
            && bits & (1 << i) != 0
            && vk::MemoryPropertyFlags::from_raw(t.flags)
                .contains(vk::MemoryPropertyFlags::HOST_COHERENT)
    });
    let type_index = coherent
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(bits.trailing_zeros());
    let alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(len)
        .memory_type_index(type_index)
        .push_next(&mut import);
    // SAFETY: `ptr`/`len` are aligned as the extension requires and stay valid until the memory
    // is freed (caller).
    let memory = match unsafe { d.allocate_memory(&alloc, None) } {
        Ok(m) => m,
        Err(r) => {
            // SAFETY: unused, unbound buffer.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(dev.fail("vkAllocateMemory", r));
        }
    };
    // SAFETY: the memory satisfies the buffer's requirements (type bits, size, offset 0).
    if let Err(r) = unsafe { d.bind_buffer_memory(buffer, memory, 0) } {
        // SAFETY: unused objects of this device.
        unsafe {
            d.destroy_buffer(buffer, None);
            d.free_memory(memory, None);
        }
        return Err(dev.fail("vkBindBufferMemory", r));
    }
    Ok(HostImport { buffer, memory })
}

/// Free imports whose transfers finished (never on a hung device: leaked, as the DMA may still
/// run; the caller then also keeps the host memory).
pub(crate) fn release_imports(dev: &RawDevice, imports: Vec<HostImport>) {
    if dev.is_hung() {
        return; // plain handles: left alone, never destroyed
    }
    for i in imports {
        // SAFETY: the transfers using them finished (value waited) or never started.
        unsafe {
            dev.device.destroy_buffer(i.buffer, None);
            dev.device.free_memory(i.memory, None);
        }
    }
}

/// Import the aligned interior of `[ptr, ptr+len)`, in pieces pinned in parallel. `Err` when the
/// interior is smaller than `min` or the driver refuses the import (the caller then stages).
fn import_interior(
    dev: &RawDevice,
    ptr: *mut u8,
    len: usize,
    min: u64,
    max_edge: u64,
) -> std::result::Result<Interior, Imported> {
    let align = import_align(dev).ok_or(Imported::Skipped)?;
    // Head and tail (each < align) share one staging slot.
    if (align as u64) * 2 > max_edge {
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
    workers().run(parts, &|i| {
        let off = (per * i).min(interior);
        let n = per.min(interior - off);
        if n == 0 {
            return;
        }
        let r = import_host(dev, (start + off) as *mut u8, n as u64);
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
    if failed || dev.is_lost() {
        release_imports(dev, ok.into_iter().map(|(i, _, _)| i).collect());
        return Err(Imported::Refused);
    }
    Ok((start - ptr as usize, interior, ok))
}

/// Write `src` by DMA from its own (imported) pages; head and tail through one staging slot.
/// Unless `Done`, nothing was written. On a device fault the imports are leaked; when the DMA was
/// submitted the error is `DeviceLostInFlight` (the caller must keep `src` alive: a late DMA may
/// still read it).
pub(crate) fn write_imported(
    dev: &RawDevice,
    mem: &Memory,
    ring: &StagingRing,
    dst: &BufView,
    offset: u64,
    src: &[u8],
    min: u64,
) -> Result<Imported> {
    let (head, interior, pieces) =
        match import_interior(dev, src.as_ptr().cast_mut(), src.len(), min, ring.slot_size) {
            Ok(p) => p,
            Err(outcome) => return Ok(outcome),
        };
    let tail = src.len() - head - interior;
    let result = (|| -> Result<()> {
        let mut s = ring.take_one(dev, mem)?;
        let staging = s.buf.view();
        let r = (|| -> Result<u64> {
            let sptr = mapped_of(&staging)?;
            let tail_at = (staging.len / 2) as usize;
            // SAFETY: head and tail are each smaller than the import alignment, at most half a
            // staging slot (checked in `import_interior`); the slot is idle and ours.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), sptr.as_ptr(), head);
                std::ptr::copy_nonoverlapping(
                    src.as_ptr().add(head + interior),
                    sptr.as_ptr().add(tail_at),
                    tail,
                );
            }
            crate::memory::flush(dev, &staging, 0, staging.len)?;
            let base = dst.offset + offset;
            let dbuf = dst.buffer;
            // A host-visible destination may be read through its mapping next.
            let frame = crate::slots::Frame {
                after_earlier: true,
                host_reads: dst.mapped.is_some(),
            };
            ring.slots.submit(dev, &mut s, frame, |d, cmd| {
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
                // SAFETY: recording state; all buffers stay alive until the value is waited.
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
            })
        })();
        ring.put(dev, s);
        // A failed wait: the DMA from the caller's pages may still run.
        ring.slots
            .queue
            .wait(dev, r?)
            .map_err(EngineError::in_flight)
    })();
    release_imports(dev, pieces.into_iter().map(|(i, _, _)| i).collect());
    result.map(|()| Imported::Done)
}

/// Read into `dst` by DMA into its own (imported) pages; head and tail through staging. Unless
/// `Done`, nothing was read. On a device fault the imports are leaked; when the DMA was submitted
/// the error is `DeviceLostInFlight` (the caller must keep `dst` alive: a late DMA may still
/// write it).
pub(crate) fn read_imported(
    dev: &RawDevice,
    mem: &Memory,
    ring: &StagingRing,
    src: &BufView,
    offset: u64,
    dst: &mut [u8],
    min: u64,
) -> Result<Imported> {
    let (head, interior, pieces) =
        match import_interior(dev, dst.as_mut_ptr(), dst.len(), min, ring.slot_size) {
            Ok(p) => p,
            Err(outcome) => return Ok(outcome),
        };
    let tail = dst.len() - head - interior;
    let result = (|| -> Result<()> {
        let mut s = ring.take_one(dev, mem)?;
        let staging = s.buf.view();
        let tail_at = (staging.len / 2) as usize;
        let base = src.offset + offset;
        let sbuf = src.buffer;
        let frame = crate::slots::Frame {
            after_earlier: true,
            host_reads: true,
        };
        let submitted = ring.slots.submit(dev, &mut s, frame, |d, cmd| {
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
            // SAFETY: recording state; all buffers stay alive until the value is waited.
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
        });
        let r = submitted
            .and_then(|v| {
                // A failed wait: the DMA into the caller's pages may still run.
                ring.slots
                    .queue
                    .wait(dev, v)
                    .map_err(EngineError::in_flight)
            })
            .and_then(|()| crate::memory::invalidate(dev, &staging, 0, staging.len))
            .and_then(|()| {
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
            });
        ring.put(dev, s);
        r
    })();
    release_imports(dev, pieces.into_iter().map(|(i, _, _)| i).collect());
    result.map(|()| Imported::Done)
}
