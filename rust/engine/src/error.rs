//! The engine's error type: one enum, one variant per kind the Python layer maps to an exception.

use std::fmt;

use ash::vk;

/// Everything an engine call can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// Vulkan (loader, driver, device, validation layer, requested strategy) is not usable here.
    Unavailable(String),
    /// The device or host cannot hold the requested memory; the engine stays usable.
    OutOfMemory(String),
    /// The allocation id is unknown (never allocated, or already freed).
    InvalidAllocation(u64),
    /// An offset/size pair reaches outside an allocation; nothing was transferred.
    OutOfBounds(String),
    /// No physical device with this index.
    NoSuchDevice(usize),
    /// A malformed argument (size 0, unknown strategy name, ...).
    InvalidArgument(String),
    /// A setting read from the environment (`EXO_VULKAN_TUNE`) is malformed; the message names
    /// the variable, its value and what is valid.
    Config(String),
    /// The device was lost (or hung); every later call on it fails fast with this. The
    /// caller's own memory passed to the call was not reached by any DMA still in flight.
    DeviceLost(String),
    /// The device was lost (or hung) while a DMA straight to or from the caller's own pages (the
    /// import path) was in flight: a late DMA may still touch them, so the caller must keep that
    /// memory alive forever.
    DeviceLostInFlight(String),
    /// The validation layer reported errors during the call.
    Validation(String),
    /// A Vulkan call failed with a result that has no more specific kind.
    Vulkan {
        /// The Vulkan function that failed, e.g. `"vkQueueSubmit"`.
        call: &'static str,
        /// Its result code.
        result: vk::Result,
    },
    /// A file could not be read into device memory (I/O error, short read, end of file).
    FileRead(String),
    /// Memory could not be exported or imported (the driver lacks the handle type, the
    /// descriptor does not match this device, the allocation was not made exportable).
    Interop(String),
    /// The engine was closed.
    Closed,
    /// A bug or an unexpected state inside the engine (including a caught panic).
    Internal(String),
}

impl EngineError {
    /// Map a failed Vulkan call onto the most specific kind.
    pub fn from_vk(call: &'static str, result: vk::Result) -> Self {
        match result {
            vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY => {
                EngineError::OutOfMemory(format!("{call} failed: {result:?}"))
            }
            vk::Result::ERROR_DEVICE_LOST => {
                EngineError::DeviceLost(format!("{call} failed: VK_ERROR_DEVICE_LOST"))
            }
            _ => EngineError::Vulkan { call, result },
        }
    }

    /// Whether the device was lost (either variant).
    pub fn is_device_lost(&self) -> bool {
        matches!(
            self,
            EngineError::DeviceLost(_) | EngineError::DeviceLostInFlight(_)
        )
    }

    /// Whether the caller's own memory passed to the failed call may still be touched by a
    /// DMA of the hung device (the caller must then keep it alive forever).
    pub fn caller_memory_in_use(&self) -> bool {
        matches!(self, EngineError::DeviceLostInFlight(_))
    }

    /// A failed wait for a DMA of the caller's own pages: the device is lost and the DMA may
    /// still run.
    pub(crate) fn in_flight(self) -> Self {
        match self {
            EngineError::DeviceLost(m) | EngineError::DeviceLostInFlight(m) => {
                EngineError::DeviceLostInFlight(m)
            }
            other => EngineError::DeviceLostInFlight(other.to_string()),
        }
    }

    /// Short machine-readable name of the kind (used by the Python layer and in tests).
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Unavailable(_) => "unavailable",
            EngineError::OutOfMemory(_) => "out_of_memory",
            EngineError::InvalidAllocation(_) => "invalid_allocation",
            EngineError::OutOfBounds(_) => "out_of_bounds",
            EngineError::NoSuchDevice(_) => "no_such_device",
            EngineError::InvalidArgument(_) => "invalid_argument",
            EngineError::Config(_) => "config",
            EngineError::DeviceLost(_) | EngineError::DeviceLostInFlight(_) => "device_lost",
            EngineError::Validation(_) => "validation",
            EngineError::Vulkan { .. } => "vulkan",
            EngineError::FileRead(_) => "file_read",
            EngineError::Interop(_) => "interop",
            EngineError::Closed => "closed",
            EngineError::Internal(_) => "internal",
        }
    }
}

/// Render a `vk::Result` the way the spec spells it (`VK_ERROR_DEVICE_LOST`), falling back to the
/// raw number for codes ash does not name.
pub fn vk_result_name(result: vk::Result) -> String {
    let dbg = format!("{result:?}");
    if dbg
        .chars()
        .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
    {
        format!("VK_{dbg}")
    } else {
        format!("VkResult({})", result.as_raw())
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Unavailable(m) => write!(f, "Vulkan unavailable: {m}"),
            EngineError::OutOfMemory(m) => write!(f, "out of memory: {m}"),
            EngineError::InvalidAllocation(id) => write!(f, "unknown or freed allocation {id}"),
            EngineError::OutOfBounds(m) => write!(f, "out of bounds: {m}"),
            EngineError::NoSuchDevice(i) => write!(f, "no Vulkan device with index {i}"),
            EngineError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            EngineError::Config(m) => write!(f, "{m}"),
            EngineError::DeviceLost(m) => write!(f, "device lost: {m}"),
            EngineError::DeviceLostInFlight(m) => write!(
                f,
                "device lost: {m} (a DMA of the caller's memory may still be in flight)"
            ),
            EngineError::Validation(m) => write!(f, "Vulkan validation: {m}"),
            EngineError::Vulkan { call, result } => {
                write!(f, "{call} failed: {}", vk_result_name(*result))
            }
            EngineError::FileRead(m) => write!(f, "file read failed: {m}"),
            EngineError::Interop(m) => write!(f, "{m}"),
            EngineError::Closed => write!(f, "the Vulkan engine is closed"),
            EngineError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<gpu_allocator::AllocationError> for EngineError {
    fn from(e: gpu_allocator::AllocationError) -> Self {
        match e {
            gpu_allocator::AllocationError::OutOfMemory => {
                EngineError::OutOfMemory("gpu-allocator: out of memory".into())
            }
            gpu_allocator::AllocationError::NoCompatibleMemoryTypeFound => {
                EngineError::Unavailable(
                    "gpu-allocator: no compatible memory type available".into(),
                )
            }
            other => {
                let msg = format!("gpu-allocator: {other}");
                // vkAllocateMemory/vkMapMemory failing with VK_ERROR_OUT_OF_HOST_MEMORY reaches us
                // as `Internal`/`FailedToMap` text; it is still an out-of-memory condition.
                if msg.contains("OUT_OF_HOST_MEMORY") || msg.contains("OUT_OF_DEVICE_MEMORY") {
                    EngineError::OutOfMemory(msg)
                } else {
                    EngineError::Internal(msg)
                }
            }
        }
    }
}

/// Result alias used throughout the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Shorthand: `.map_err(vkerr("vkCreateBuffer"))`.
pub(crate) fn vkerr(call: &'static str) -> impl Fn(vk::Result) -> EngineError {
    move |r| EngineError::from_vk(call, r)
}
