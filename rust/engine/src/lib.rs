//! `exo-vk-engine`: a small Vulkan memory + transfer engine (no Python).
//!
//! The loader is opened at run time (`ash::Entry::load`), so a machine without libvulkan gets an
//! [`EngineError::Unavailable`] value, never a link failure.
//!
//! Modules, one concept each:
//! - [`error`]: the error enum;
//! - [`instance`]: loader entry, instance, validation layer + debug messenger, enumeration;
//! - [`properties`]: device information, queue-family and strategy choice, memory budgets;
//! - [`device`]: logical device, queue, command pool/buffers/fences, waits, device-lost state;
//! - [`memory`]: gpu-allocator backed buffers and user allocations;
//! - [`transfer`]: mapped memcpy, staging ring, device copies, memmove, zero fill;
//! - [`engine`]: the public facade.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod device;
pub mod engine;
pub mod error;
pub mod instance;
pub mod memory;
pub mod properties;
mod sync;
pub mod transfer;

pub use engine::{Engine, HeapReport, Stats};
pub use error::{EngineError, Result};
pub use properties::{DeviceExtensions, DeviceInfo, HeapInfo, MemoryTypeInfo, Strategy};

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Engine>();
    is::<memory::Allocation>();
    is::<device::DeviceContext>();
}
