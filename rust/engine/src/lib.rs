//! `exo-vk-engine`: a small Vulkan memory + transfer engine (no Python).
//!
//! The loader is opened at run time (`ash::Entry::load`), so a machine without libvulkan gets an
//! [`EngineError::Unavailable`] value, never a link failure.
//!
//! Modules, one concept each (one file per type with its impl), imports running one way (each
//! uses only those above it):
//! - [`error`]: the error enum; `sync`: poison-tolerant locks; `tuning`: sizes and thresholds
//!   (`EXO_VULKAN_TUNE`);
//! - [`instance`]: loader entry, instance, validation layer + debug messenger (and the per-call
//!   log the thread pool carries to its threads), enumeration;
//! - `workers`: the thread pool; `memcpy`: the parallel copy and fill kernels on it;
//! - [`properties`]: device information, queue-family and strategy choice, memory budgets
//!   (`query` gathers them from the driver);
//! - [`device`]: the raw logical device and its lost/hung state and wait timeout;
//! - `queue`: submission under a lock held only around vkQueueSubmit, completion as timeline
//!   values waited on outside every lock; `slots`: command slots, the `Slots` command ring and
//!   the one command path on it (`submit_one`, `run_now`) every one-shot piece of work takes;
//! - `memory`: `Memory` (buffers from gpu-allocator with running counters), with `types`
//!   (memory type per use), `buffers` (buffers, views, atom-aligned flush/invalidate), `slabs`
//!   (O(1) pools of small buffers) and `heaps` (process-wide heap accounting, reservations);
//! - `export`: dedicated memory shared as opaque file descriptors (CUDA, other processes);
//! - `staging`: one staging ring per direction (memcpy/file reads of slot k+1 overlap the DMA
//!   of slot k; uploads and downloads in flight at once); `import`: host-pointer import;
//!   `file_read`: parallel (and `O_DIRECT`) file reads into slots or mappings;
//! - `pipeline_setup`: the compute-pipeline setup (shared with the copy probe); `compute`: the
//!   compute-shader copy;
//! - [`context`]: `DeviceContext`, one device as the engine uses it (queues, rings, memory,
//!   device-side fills and copies) and the cache that shares it;
//! - `plan`: the plan that picks a path per transfer; `host`: pinned and registered host memory;
//! - `transfer`: `EngineDevice`, one engine's view of a device (its plan, counters, copy paths);
//! - `allocation`: user allocations; [`cross`]: copies between two devices (`paths`: which
//!   path; `side`: one device's half of a link);
//! - [`engine`]: the public facade (`engine/`: state, allocations and transfers; validation
//!   log, reports, cross-device links, host memory, interop, fault injection).

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
mod slots;
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
