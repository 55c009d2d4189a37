//! `exo-vk-engine`: a small Vulkan memory + transfer engine (no Python).
//!
//! The loader is opened at run time (`ash::Entry::load`), so a machine without libvulkan gets an
//! [`EngineError::Unavailable`] value, never a link failure.
//!
//! Modules, one concept each, imports running one way (each uses only those above it):
//! - [`error`]: the error enum; `sync`: poison-tolerant locks; `tuning`: sizes and thresholds
//!   (`EXO_VULKAN_TUNE`); `workers`: the memcpy/pread thread pool;
//! - [`instance`]: loader entry, instance, validation layer + debug messenger, enumeration;
//! - [`properties`]: device information, queue-family and strategy choice, memory budgets;
//! - [`device`]: the raw logical device and its lost/hung state and wait timeout;
//! - `queue`: submission under a lock held only around vkQueueSubmit, completion as timeline
//!   values waited on outside every lock, command slots and the `Slots` command ring;
//! - `memory`: memory types per use, gpu-allocator backed buffers with running counters, O(1)
//!   pools of small buffers, atom-aligned flush/invalidate;
//! - `export`: dedicated memory shared as opaque file descriptors (CUDA, other processes);
//! - `staging`: one staging ring per direction (memcpy/file reads of slot k+1 overlap the DMA
//!   of slot k; uploads and downloads in flight at once); `import`: host-pointer import;
//! - [`context`]: one device as the engine uses it (queues, rings, memory) and the cache that
//!   shares it; `compute`: the compute-shader device copy;
//! - `plan`: one engine's view of a device (the plan that picks a path, its counters);
//! - `allocation`: user allocations; `host`: pinned and registered host memory;
//! - `transfer`: the copy paths; [`cross`]: copies between two devices;
//! - [`engine`]: the public facade.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod allocation;
mod compute;
pub mod context;
pub mod cross;
pub mod device;
pub mod engine;
pub mod error;
#[cfg(unix)]
mod export;
#[cfg(unix)]
mod file_read;
mod host;
mod import;
pub mod instance;
mod memcpy;
mod memory;
mod pipeline_setup;
mod plan;
pub mod properties;
mod queue;
mod staging;
mod sync;
#[cfg(test)]
mod test_support;
mod transfer;
mod tuning;
mod workers;

pub use cross::CrossPath;
#[cfg(unix)]
pub use engine::Retained;
pub use engine::{Engine, HeapReport, Stats};
pub use error::{EngineError, Result};
#[cfg(unix)]
pub use export::ExportInfo;
pub use host::HostMemory;
pub use properties::{DeviceExtensions, DeviceInfo, HeapInfo, MemoryTypeInfo, Strategy};

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Engine>();
    is::<allocation::Allocation>();
    is::<context::DeviceContext>();
    is::<transfer::EngineDevice>();
}
