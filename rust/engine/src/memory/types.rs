//! Which memory type each use of a buffer takes (`Kind` -> type index and heap), and what the
//! device's types say about a buffer there (coherence, the heap gpu-allocator picked).

use ash::vk;
use gpu_allocator::MemoryLocation;

use crate::properties::{DeviceInfo, MemoryTypeInfo};

/// What a buffer is for; picks its memory type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Device-local memory the host cannot map (VRAM on discrete GPUs).
    Device,
    /// DEVICE_LOCAL|HOST_VISIBLE memory (UMA, ReBAR, CPU devices).
    DeviceMapped,
    /// Host memory the device reads from (upload staging).
    Upload,
    /// Host memory the device writes to and the host reads back (download staging, pinned
    /// host buffers).
    Download,
}

impl Kind {
    pub(super) const ALL: [Kind; 4] = [
        Kind::Device,
        Kind::DeviceMapped,
        Kind::Upload,
        Kind::Download,
    ];

    pub(super) fn index(self) -> usize {
        match self {
            Kind::Device => 0,
            Kind::DeviceMapped => 1,
            Kind::Upload => 2,
            Kind::Download => 3,
        }
    }

    pub(super) fn location(self) -> MemoryLocation {
        match self {
            Kind::Device => MemoryLocation::GpuOnly,
            Kind::DeviceMapped | Kind::Upload => MemoryLocation::CpuToGpu,
            Kind::Download => MemoryLocation::GpuToCpu,
        }
    }
}

/// The memory type index chosen for each `Kind` (`None`: let gpu-allocator pick by location).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryTypes {
    pub(super) index: [Option<u32>; 4],
    pub(super) heap: [usize; 4],
}

impl MemoryTypes {
    /// Pick a type per kind from the device's memory types.
    pub(crate) fn choose(memory_types: &[MemoryTypeInfo], upload_cached: bool) -> MemoryTypes {
        use vk::MemoryPropertyFlags as F;
        let odd =
            F::LAZILY_ALLOCATED | F::PROTECTED | F::DEVICE_COHERENT_AMD | F::DEVICE_UNCACHED_AMD;
        let types: Vec<F> = memory_types.iter().map(|t| F::from_raw(t.flags)).collect();
        let find = |has: F, not: F| -> Option<u32> {
            types
                .iter()
                .position(|&f| f.contains(has) && !f.intersects(not | odd))
                .and_then(|i| u32::try_from(i).ok())
        };
        let (dl, hv, hc, cached) = (
            F::DEVICE_LOCAL,
            F::HOST_VISIBLE,
            F::HOST_COHERENT,
            F::HOST_CACHED,
        );
        // On UMA devices every device-local type is host-visible: prefer a coherent one.
        let device = find(dl, hv)
            .or_else(|| find(dl | hc, F::empty()))
            .or_else(|| find(dl, F::empty()));
        let device_mapped = find(dl | hv | hc | cached, F::empty())
            .or_else(|| find(dl | hv | hc, F::empty()))
            .or_else(|| find(dl | hv, F::empty()));
        let upload = if upload_cached {
            find(hv | hc | cached, dl).or_else(|| find(hv | hc, dl))
        } else {
            find(hv | hc, dl | cached).or_else(|| find(hv | hc, dl))
        }
        .or_else(|| find(hv | hc, F::empty()))
        .or_else(|| find(hv, F::empty()));
        let download = find(hv | hc | cached, dl)
            .or_else(|| find(hv | cached, dl))
            .or_else(|| find(hv | hc, dl))
            .or_else(|| find(hv | cached, F::empty()))
            .or_else(|| find(hv, F::empty()));
        let index = [device, device_mapped, upload, download];
        let heap = index.map(|i| {
            i.and_then(|i| memory_types.get(i as usize))
                .map_or(0, |t| t.heap as usize)
        });
        MemoryTypes { index, heap }
    }

    /// Whether a DEVICE_LOCAL|HOST_VISIBLE type exists.
    pub(crate) fn has_mapped(&self) -> bool {
        self.index[Kind::DeviceMapped.index()].is_some()
    }

    /// The memory type chosen for `kind`, if the device has one.
    pub(crate) fn type_of(&self, kind: Kind) -> Option<u32> {
        self.index[kind.index()]
    }

    /// Whether every user allocation lands in host-visible, host-coherent memory (UMA and CPU
    /// devices: even `Device` memory is mapped), so the CPU can always read it in place.
    pub(crate) fn every_allocation_mapped(&self, memory_types: &[MemoryTypeInfo]) -> bool {
        use vk::MemoryPropertyFlags as F;
        let coherent = |kind: Kind| {
            self.type_of(kind)
                .and_then(|i| memory_types.get(i as usize))
                .is_some_and(|t| F::from_raw(t.flags).contains(F::HOST_VISIBLE | F::HOST_COHERENT))
        };
        coherent(Kind::Device)
            && (self.type_of(Kind::DeviceMapped).is_none() || coherent(Kind::DeviceMapped))
    }

    /// The heap memory of `kind` comes from, when the type is pinned (not left to gpu-allocator).
    pub(super) fn heap_of(&self, kind: Kind) -> Option<usize> {
        self.index[kind.index()].map(|_| self.heap[kind.index()])
    }
}

/// Heap of the first memory type allowed by `bits` with exactly `flags` (the type gpu-allocator
/// picked; it does not expose the index itself).
pub(super) fn heap_of_type(info: &DeviceInfo, bits: u32, flags: vk::MemoryPropertyFlags) -> usize {
    let types = &info.memory_types;
    let pick = |exact: bool| {
        types.iter().enumerate().find(|(i, t)| {
            *i < 32
                && bits & (1 << i) != 0
                && if exact {
                    t.flags == flags.as_raw()
                } else {
                    vk::MemoryPropertyFlags::from_raw(t.flags).contains(flags)
                }
        })
    };
    pick(true)
        .or_else(|| pick(false))
        .map(|(_, t)| t.heap as usize)
        .unwrap_or(0)
}

/// Whether any memory type allowed by `bits` is HOST_VISIBLE but not HOST_COHERENT (a buffer
/// there needs atom-aligned ends; `bits` names exactly the chosen type when one was pinned).
pub(super) fn non_coherent_allowed(memory_types: &[MemoryTypeInfo], bits: u32) -> bool {
    use vk::MemoryPropertyFlags as F;
    memory_types.iter().enumerate().any(|(i, t)| {
        let f = F::from_raw(t.flags);
        i < 32
            && bits & (1 << i) != 0
            && f.contains(F::HOST_VISIBLE)
            && !f.contains(F::HOST_COHERENT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vk::MemoryPropertyFlags as F;

    fn types(flags: &[F]) -> Vec<MemoryTypeInfo> {
        flags
            .iter()
            .map(|f| MemoryTypeInfo {
                flags: f.as_raw(),
                heap: 0,
            })
            .collect()
    }

    /// A UMA device whose first device-local type is host-visible but not coherent: `Device`
    /// takes the coherent one, and only the non-coherent type asks for atom-aligned buffers.
    #[test]
    fn uma_prefers_coherent_and_aligns_by_flags() {
        let t = types(&[
            F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_CACHED,
            F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT,
        ]);
        let m = MemoryTypes::choose(&t, false);
        assert_eq!(m.index[Kind::Device.index()], Some(1));
        assert_eq!(m.index[Kind::DeviceMapped.index()], Some(1));
        assert!(non_coherent_allowed(&t, 0b01));
        assert!(!non_coherent_allowed(&t, 0b10));
        assert!(non_coherent_allowed(&t, 0b11));
        // Device-local memory the host cannot map needs no alignment.
        let t = types(&[F::DEVICE_LOCAL]);
        assert!(!non_coherent_allowed(&t, 0b1));
        assert_eq!(
            MemoryTypes::choose(&t, false).index[Kind::Device.index()],
            Some(0)
        );
    }
}
