//! `exo-vk-engine`: a small Vulkan memory + transfer engine (no Python).
//!
//! The loader is opened at run time (`ash::Entry::load`), so a machine without libvulkan gets an
//! [`EngineError::Unavailable`] value, never a link failure.
//!
//! Modules, one concept each:
//! - [`error`]: the error enum;
//! - [`instance`]: loader entry, instance, validation layer + debug messenger, enumeration;
//! - [`properties`]: device information, queue-family and strategy choice, memory budgets;
//! - [`device`]: logical devices (shared process-wide), queues, command slots, waits,
//!   device-lost state, per-engine plans;
//! - [`memory`]: memory types per use, gpu-allocator backed buffers, pools of small buffers,
//!   user allocations;
//! - [`transfer`]: mapped memcpy, staging ring, host-pointer import, device copies, memmove,
//!   zero fill; `compute`: the compute-shader device copy;
//! - [`cross`]: copies between two devices, pipelined through one host ring imported into both
//!   (or two staging rings);
//! - `workers`: the memcpy thread pool; `tuning`: sizes and thresholds (`EXO_VULKAN_TUNE`);
//! - [`engine`]: the public facade.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod compute;
pub mod cross;
pub mod device;
pub mod engine;
pub mod error;
pub mod instance;
pub mod memory;
pub mod properties;
mod sync;
pub mod transfer;
mod tuning;
mod workers;

pub use cross::CrossPath;
pub use engine::{Engine, HeapReport, Stats};
pub use error::{EngineError, Result};
pub use properties::{DeviceExtensions, DeviceInfo, HeapInfo, MemoryTypeInfo, Strategy};

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Engine>();
    is::<memory::Allocation>();
    is::<device::DeviceContext>();
    is::<device::EngineDevice>();
}
