//! Memory that leaves the engine: dedicated allocations made exportable as opaque file
//! descriptors (VK_KHR_external_memory_fd), for CUDA or another process, and the import of such
//! a descriptor on the receiving side.
//!
//! gpu-allocator cannot export its blocks, so each exportable allocation is its own
//! `VkDeviceMemory`, allocated with `VkExportMemoryAllocateInfo` and
//! `VkMemoryDedicatedAllocateInfo` (CUDA imports it with `CUDA_EXTERNAL_MEMORY_DEDICATED` to
//! match). Each export hands out a new descriptor that the receiver owns.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use ash::vk;

use crate::device::RawDevice;
use crate::error::{EngineError, Result};
use crate::memory::{allocation_usage, BufView, Kind, Memory};

const OPAQUE_FD: vk::ExternalMemoryHandleTypeFlags = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;

/// What a receiver needs besides the descriptor to open the memory again: the memory object's
/// size and type (the Vulkan spec requires both to match the exporter's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// `allocationSize` of the memory object.
    pub allocation_size: u64,
    /// Index of its memory type on this device.
    pub memory_type: u32,
    /// That type's `VkMemoryPropertyFlags`.
    pub memory_flags: u32,
}

/// A dedicated memory object with one buffer over it, exportable or imported.
pub(crate) struct ExternalMemory {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    buffer_size: u64,
    info: ExportInfo,
    mapped: Option<NonNull<u8>>,
    coherent: bool,
    cached: bool,
    heap: usize,
    /// For imported memory: a duplicate of the descriptor it came from, so that it can be
    /// exported again (to CUDA in this process, or to a third process).
    source: Option<OwnedFd>,
}

// SAFETY: the mapped pointer points into the memory object owned by this value, valid until it
// is destroyed; it carries no thread affinity (as for `memory::GpuBuffer`).
unsafe impl Send for ExternalMemory {}
// SAFETY: see `Send`; `&ExternalMemory` exposes only handles and the pointer value.
unsafe impl Sync for ExternalMemory {}

impl ExternalMemory {
    /// A new exportable memory object holding a buffer of `buffer_size` bytes, in the memory
    /// type the engine uses for device allocations.
    pub(crate) fn allocate(dev: &RawDevice, mem: &Memory, buffer_size: u64) -> Result<Self> {
        functions(dev)?;
        // Some drivers (lavapipe) grant allocations far past a heap's size: refuse those here.
        let _room = mem.reserve(dev, Kind::Device, buffer_size)?;
        let (buffer, requirements) = external_buffer(dev, buffer_size)?;
        let chosen = mem
            .types
            .type_of(Kind::Device)
            .filter(|&i| i < 32 && requirements.memory_type_bits & (1 << i) != 0)
            .or_else(|| first_device_local(dev, requirements.memory_type_bits));
        let Some(memory_type) = chosen else {
            destroy_buffer(dev, buffer);
            return Err(EngineError::Interop(format!(
                "device {} ({}) has no device-local memory type that can be exported",
                dev.info.index, dev.info.name
            )));
        };
        let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(OPAQUE_FD);
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
        let allocate = vk::MemoryAllocateInfo::default()
            .allocation_size(requirements.size)
            .memory_type_index(memory_type)
            .push_next(&mut export)
            .push_next(&mut dedicated);
        // SAFETY: valid device; the chained structs outlive the call; the buffer is unbound.
        let memory = match unsafe { dev.device.allocate_memory(&allocate, None) } {
            Ok(m) => m,
            Err(r) => {
                destroy_buffer(dev, buffer);
                return Err(dev.fail("vkAllocateMemory", r));
            }
        };
        Self::bind(
            dev,
            mem,
            buffer,
            buffer_size,
            memory,
            requirements.size,
            memory_type,
            None,
        )
    }

    /// Open memory another engine (maybe in another process) exported: `fd` is borrowed (the
    /// engine imports a duplicate), `info` is what the exporter reported for it. The caller has
    /// checked that the descriptor comes from a device with this device's UUIDs.
    pub(crate) fn import(
        dev: &RawDevice,
        mem: &Memory,
        fd: RawFd,
        buffer_size: u64,
        info: ExportInfo,
    ) -> Result<Self> {
        functions(dev)?;
        let types = &dev.info.memory_types;
        let Some(found) = types.get(info.memory_type as usize) else {
            return Err(EngineError::Interop(format!(
                "the shared memory names memory type {} but device {} has {} types: it comes \
                 from another device or driver",
                info.memory_type,
                dev.info.index,
                types.len()
            )));
        };
        if found.flags != info.memory_flags {
            return Err(EngineError::Interop(format!(
                "the shared memory's type {} has flags {:#x} here and {:#x} where it was \
                 exported: it comes from another device or driver",
                info.memory_type, found.flags, info.memory_flags
            )));
        }
        let _room = mem.reserve(dev, Kind::Device, buffer_size)?;
        let (buffer, requirements) = external_buffer(dev, buffer_size)?;
        let fail = |e: EngineError| {
            destroy_buffer(dev, buffer);
            Err(e)
        };
        if info.memory_type >= 32 || requirements.memory_type_bits & (1 << info.memory_type) == 0 {
            return fail(EngineError::Interop(format!(
                "a buffer of {buffer_size} bytes cannot live in memory type {} of device {}",
                info.memory_type, dev.info.index
            )));
        }
        // A dedicated import must be the exporter's buffer exactly (same size, hence the same
        // requirements) and its memory object's exact size.
        if info.allocation_size != requirements.size {
            return fail(EngineError::Interop(format!(
                "the shared memory object holds {} bytes, but a buffer of {buffer_size} bytes \
                 needs exactly {}: the sizes it claims are not the exporter's",
                info.allocation_size, requirements.size
            )));
        }
        let (owned, source) = match (duplicate(fd), duplicate(fd)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return fail(e),
        };
        let mut import = vk::ImportMemoryFdInfoKHR::default()
            .handle_type(OPAQUE_FD)
            .fd(owned.as_raw_fd());
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
        let allocate = vk::MemoryAllocateInfo::default()
            .allocation_size(info.allocation_size)
            .memory_type_index(info.memory_type)
            .push_next(&mut import)
            .push_next(&mut dedicated);
        // SAFETY: valid device; `owned` is an open descriptor; the chained structs outlive the
        // call. On success the implementation owns the descriptor (so it is forgotten below),
        // on failure it is still ours and `owned` closes it.
        let memory = match unsafe { dev.device.allocate_memory(&allocate, None) } {
            Ok(m) => {
                std::mem::forget(owned);
                m
            }
            Err(r) => {
                return fail(EngineError::Interop(format!(
                    "device {} refused to import the shared memory ({}): it is not memory of \
                     this device and driver, or its size or type differ",
                    dev.info.index,
                    crate::error::vk_result_name(r)
                )))
            }
        };
        Self::bind(
            dev,
            mem,
            buffer,
            buffer_size,
            memory,
            info.allocation_size,
            info.memory_type,
            Some(source),
        )
    }

    /// Bind `buffer` to `memory`, map it if host-visible, and count its bytes on its heap.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        dev: &RawDevice,
        mem: &Memory,
        buffer: vk::Buffer,
        buffer_size: u64,
        memory: vk::DeviceMemory,
        allocation_size: u64,
        memory_type: u32,
        source: Option<OwnedFd>,
    ) -> Result<Self> {
        let release = |e: EngineError| {
            destroy_buffer(dev, buffer);
            // SAFETY: the memory is unused (nothing was bound to it or mapped).
            unsafe { dev.device.free_memory(memory, None) };
            Err(e)
        };
        // SAFETY: the dedicated memory was allocated for exactly this buffer.
        if let Err(r) = unsafe { dev.device.bind_buffer_memory(buffer, memory, 0) } {
            return release(dev.fail("vkBindBufferMemory", r));
        }
        let t = dev.info.memory_types.get(memory_type as usize);
        let flags = vk::MemoryPropertyFlags::from_raw(t.map_or(0, |t| t.flags));
        let heap = t.map_or(0, |t| t.heap as usize);
        let mapped = if flags.contains(vk::MemoryPropertyFlags::HOST_VISIBLE) {
            // SAFETY: host-visible memory of this device, not mapped yet; the whole object.
            match unsafe {
                dev.device
                    .map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            } {
                Ok(p) => NonNull::new(p.cast::<u8>()),
                Err(r) => return release(dev.fail("vkMapMemory", r)),
            }
        } else {
            None
        };
        mem.account(heap, allocation_size);
        Ok(ExternalMemory {
            buffer,
            memory,
            buffer_size,
            info: ExportInfo {
                allocation_size,
                memory_type,
                memory_flags: flags.as_raw(),
            },
            mapped,
            coherent: flags.contains(vk::MemoryPropertyFlags::HOST_COHERENT),
            cached: flags.contains(vk::MemoryPropertyFlags::HOST_CACHED),
            heap,
            source,
        })
    }

    /// The whole buffer as the copy paths see it.
    pub(crate) fn view(&self) -> BufView {
        BufView {
            buffer: self.buffer,
            offset: 0,
            len: self.buffer_size,
            mapped: self.mapped,
            coherent: self.coherent,
            cached: self.cached,
            memory: self.memory,
            memory_offset: 0,
            memory_end: self.info.allocation_size,
            heap: self.heap,
        }
    }

    /// A new descriptor for the memory (the caller owns it) and what a receiver must know.
    pub(crate) fn export(&self, dev: &RawDevice) -> Result<(OwnedFd, ExportInfo)> {
        if let Some(source) = &self.source {
            return Ok((duplicate(source.as_raw_fd())?, self.info));
        }
        let functions = functions(dev)?;
        let get = vk::MemoryGetFdInfoKHR::default()
            .memory(self.memory)
            .handle_type(OPAQUE_FD);
        // SAFETY: the memory was allocated exportable as an opaque fd on this device.
        let fd = unsafe { functions.get_memory_fd(&get) }
            .map_err(|r| dev.fail("vkGetMemoryFdKHR", r))?;
        if fd < 0 {
            return Err(EngineError::Interop(format!(
                "vkGetMemoryFdKHR returned no descriptor ({fd})"
            )));
        }
        // SAFETY: vkGetMemoryFdKHR returned a new descriptor that the application owns.
        Ok((unsafe { OwnedFd::from_raw_fd(fd) }, self.info))
    }

    /// Unmap, destroy and free (never on a hung device: work may still use the memory, so it is
    /// leaked, as `Memory::destroy_buffer` does).
    pub(crate) fn destroy(&mut self, dev: &RawDevice, mem: &Memory) {
        if dev.is_hung() || self.memory == vk::DeviceMemory::null() {
            return;
        }
        destroy_buffer(dev, self.buffer);
        // SAFETY: no submitted work uses the memory (every engine call waits for its work, and
        // every export view holds the allocation alive); unmapping happens with the free.
        unsafe {
            if self.mapped.take().is_some() {
                dev.device.unmap_memory(self.memory);
            }
            dev.device.free_memory(self.memory, None);
        }
        self.memory = vk::DeviceMemory::null();
        mem.unaccount(self.heap, self.info.allocation_size);
    }
}

fn functions(dev: &RawDevice) -> Result<&ash::khr::external_memory_fd::Device> {
    dev.ext_fd.as_ref().ok_or_else(|| {
        EngineError::Interop(format!(
            "device {} ({}) cannot share memory as a file descriptor: its driver lacks \
             VK_KHR_external_memory_fd for buffers",
            dev.info.index, dev.info.name
        ))
    })
}

/// A buffer of `size` bytes that may be bound to opaque-fd external memory.
fn external_buffer(dev: &RawDevice, size: u64) -> Result<(vk::Buffer, vk::MemoryRequirements)> {
    let (mode, families) = dev.sharing();
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(OPAQUE_FD);
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(allocation_usage())
        .sharing_mode(mode)
        .queue_family_indices(families)
        .push_next(&mut external);
    // SAFETY: valid device and create info; the chained struct outlives the call.
    let buffer = unsafe { dev.device.create_buffer(&info, None) }
        .map_err(|r| dev.fail("vkCreateBuffer", r))?;
    // SAFETY: the buffer was just created on this device.
    let requirements = unsafe { dev.device.get_buffer_memory_requirements(buffer) };
    Ok((buffer, requirements))
}

fn destroy_buffer(dev: &RawDevice, buffer: vk::Buffer) {
    // SAFETY: the buffer belongs to this device and no submitted work uses it.
    unsafe { dev.device.destroy_buffer(buffer, None) };
}

/// The first DEVICE_LOCAL type allowed by `bits` (else the first allowed type).
fn first_device_local(dev: &RawDevice, bits: u32) -> Option<u32> {
    let allowed = |i: usize| i < 32 && bits & (1 << i) != 0;
    let types = &dev.info.memory_types;
    let device_local = vk::MemoryPropertyFlags::DEVICE_LOCAL.as_raw();
    types
        .iter()
        .enumerate()
        .find(|(i, t)| allowed(*i) && t.flags & device_local != 0)
        .or_else(|| types.iter().enumerate().find(|(i, _)| allowed(*i)))
        .and_then(|(i, _)| u32::try_from(i).ok())
}

/// A close-on-exec duplicate of a borrowed descriptor.
fn duplicate(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on any value is safe: an invalid descriptor gives -1 / EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(EngineError::Interop(format!(
            "descriptor {fd} cannot be duplicated: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `dup` is a new descriptor this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}
