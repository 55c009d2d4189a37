//! Pools of small buffers ("slabs"): power-of-two slot classes per memory kind, each carving
//! slots out of chunk buffers, so a small allocation costs no vkCreateBuffer/vkAllocateMemory
//! and allocate and free are O(1).

use std::collections::HashMap;

use gpu_allocator::vulkan::Allocator;

use crate::error::{EngineError, Result};

use super::buffers::{destroy_buffer_with, BufView, GpuBuffer};
use super::types::Kind;

/// Smallest pool slot (also the alignment of every slot: >= any minStorageBufferOffsetAlignment
/// and any nonCoherentAtomSize, both at most 256 by the spec's limits).
const MIN_SLOT: u64 = 256;
const CLASSES: usize = 17; // 256 B .. 16 MiB

/// A free slot of class `c` (which has room), with the slabs lock held.
fn take_slot(
    c: &mut Class,
    kind: Kind,
    class: usize,
    slot_size: u64,
) -> Result<(BufView, SlabRef)> {
    let id = *c
        .room
        .last()
        .ok_or_else(|| EngineError::Internal("pool class without room".into()))?;
    let chunk = c
        .chunks
        .get_mut(&id)
        .ok_or_else(|| EngineError::Internal("pool chunk missing".into()))?;
    let slot = chunk
        .free
        .pop()
        .ok_or_else(|| EngineError::Internal("pool chunk without room".into()))?;
    let view = chunk.buf.slice(u64::from(slot) * slot_size, slot_size);
    if chunk.free.is_empty() {
        c.remove_room(id);
    }
    Ok((
        view,
        SlabRef {
            kind,
            class,
            chunk: id,
            slot,
        },
    ))
}

/// Where a pooled allocation lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlabRef {
    kind: Kind,
    class: usize,
    chunk: u64,
    slot: u32,
}

struct Chunk {
    buf: GpuBuffer,
    free: Vec<u32>,
    slots: u32,
    /// Position in the class's `room` list while the chunk has free slots.
    room_pos: usize,
}

#[derive(Default)]
struct Class {
    chunks: HashMap<u64, Chunk>,
    /// Chunks with free slots (allocation takes the last).
    room: Vec<u64>,
}

impl Class {
    /// Drop `id` from `room` (swap-remove, fixing the moved chunk's position).
    fn remove_room(&mut self, id: u64) {
        let Some(pos) = self.chunks.get(&id).map(|c| c.room_pos) else {
            return;
        };
        if self.room.get(pos) != Some(&id) {
            return;
        }
        self.room.swap_remove(pos);
        if let Some(&moved) = self.room.get(pos) {
            if let Some(c) = self.chunks.get_mut(&moved) {
                c.room_pos = pos;
            }
        }
    }
}

/// Power-of-two slot classes per memory kind; each class carves slots out of "chunk" buffers, so
/// a small allocation costs no vkCreateBuffer/vkAllocateMemory.
#[derive(Default)]
pub(crate) struct Slabs {
    classes: Vec<Class>,
    next_chunk: u64,
}

/// The class and slot size of a pooled allocation of `size` bytes (`InvalidArgument` past the
/// largest class).
pub(super) fn class_of(size: u64) -> Result<(usize, u64)> {
    let slot = size.max(MIN_SLOT).next_power_of_two();
    let class = (slot.trailing_zeros() - MIN_SLOT.trailing_zeros()) as usize;
    if class >= CLASSES {
        return Err(EngineError::Internal(format!(
            "{size} bytes is too large for a pool"
        )));
    }
    Ok((class, slot))
}

/// Bytes of a chunk buffer holding slots of `slot` bytes.
pub(super) fn chunk_bytes(slot: u64) -> u64 {
    (slot * 64).clamp(1 << 20, 16 << 20).max(slot)
}

impl Slabs {
    fn class_mut(&mut self, kind: Kind, class: usize) -> &mut Class {
        let i = kind.index() * CLASSES + class;
        if self.classes.len() <= i {
            self.classes
                .resize_with(Kind::ALL.len() * CLASSES, Class::default);
        }
        &mut self.classes[i]
    }

    /// A free slot of `class`, if a chunk has room.
    pub(super) fn take(
        &mut self,
        kind: Kind,
        class: usize,
        slot_size: u64,
    ) -> Option<Result<(BufView, SlabRef)>> {
        let c = self.class_mut(kind, class);
        if c.room.is_empty() {
            return None;
        }
        Some(take_slot(c, kind, class, slot_size))
    }

    /// A free slot of `class`, adding `buf` as a new chunk first unless another thread added
    /// one meanwhile (then `buf` comes back, spare, for the caller to destroy).
    pub(super) fn take_or_add(
        &mut self,
        kind: Kind,
        class: usize,
        slot_size: u64,
        buf: GpuBuffer,
    ) -> (Result<(BufView, SlabRef)>, Option<GpuBuffer>) {
        let mut spare = None;
        if self.class_mut(kind, class).room.is_empty() {
            let slots = u32::try_from(buf.size / slot_size).unwrap_or(u32::MAX);
            let id = self.next_chunk;
            self.next_chunk += 1;
            let c = self.class_mut(kind, class);
            c.room.push(id);
            c.chunks.insert(
                id,
                Chunk {
                    buf,
                    free: (0..slots).rev().collect(),
                    slots,
                    room_pos: c.room.len() - 1,
                },
            );
        } else {
            spare = Some(buf);
        }
        (
            take_slot(self.class_mut(kind, class), kind, class, slot_size),
            spare,
        )
    }

    /// Put a slot back; returns the chunk's buffer when the chunk became empty and is not the
    /// class's only one with room (the caller destroys it, outside the lock).
    pub(super) fn release(&mut self, r: SlabRef) -> Option<GpuBuffer> {
        let c = self.class_mut(r.kind, r.class);
        let chunk = c.chunks.get_mut(&r.chunk)?;
        chunk.free.push(r.slot);
        let was_full = chunk.free.len() == 1;
        let now_empty = chunk.free.len() == chunk.slots as usize;
        if was_full {
            c.room.push(r.chunk);
            let pos = c.room.len() - 1;
            if let Some(ch) = c.chunks.get_mut(&r.chunk) {
                ch.room_pos = pos;
            }
        }
        if now_empty && c.room.len() > 1 {
            c.remove_room(r.chunk);
            c.chunks.remove(&r.chunk).map(|ch| ch.buf)
        } else {
            None
        }
    }

    /// Destroy every chunk (device idle).
    pub(super) fn destroy(mut self, device: &ash::Device, mut allocator: Option<&mut Allocator>) {
        for class in &mut self.classes {
            for (_, mut c) in class.chunks.drain() {
                destroy_buffer_with(device, allocator.as_deref_mut(), &mut c.buf);
            }
        }
    }
}
