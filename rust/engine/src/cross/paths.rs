//! Which path a cross-device copy takes: what was asked for (`CrossRequest`, `CrossSettings`)
//! and what both devices allow (`plan_path`).

use crate::error::{EngineError, Result};
use crate::properties::DeviceInfo;
use crate::tuning::Tuning;

/// How bytes travel between two devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrossPath {
    /// Directly between the devices (device groups); not used yet, see the module docs.
    P2p,
    /// Through one host ring imported into both devices (no CPU copy).
    HostImport,
    /// Through each device's own staging ring, with a CPU memcpy between them.
    HostStaging,
}

impl CrossPath {
    /// `"p2p"`, `"host-import"` or `"host-staging"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CrossPath::P2p => "p2p",
            CrossPath::HostImport => "host-import",
            CrossPath::HostStaging => "host-staging",
        }
    }
}

/// What the engine was asked to use for cross-device copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrossRequest {
    /// The best path both devices allow.
    Auto,
    /// The shared imported ring (staging where a device cannot import).
    Import,
    /// Per-device staging rings and a memcpy.
    Staging,
}

impl CrossRequest {
    /// `"auto"`, `"import"`/`"host-import"`, `"staging"`/`"host-staging"`.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "" | "auto" => Ok(CrossRequest::Auto),
            "import" | "host-import" => Ok(CrossRequest::Import),
            "staging" | "host-staging" => Ok(CrossRequest::Staging),
            other => Err(EngineError::InvalidArgument(format!(
                "unknown cross-device path {other:?} (expected \"auto\", \"host-import\" or \
                 \"host-staging\")"
            ))),
        }
    }
}

/// Per-engine cross-device settings (from `EXO_VULKAN_TUNE`, changed by
/// `Engine::force_cross_device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrossSettings {
    pub(crate) request: CrossRequest,
    /// Copies between two allocations of one device take the pipeline too (tests).
    pub(crate) same_device: bool,
}

impl CrossSettings {
    pub(crate) fn from_tuning(t: &Tuning) -> CrossSettings {
        CrossSettings {
            request: CrossRequest::parse(&t.cross_path).unwrap_or(CrossRequest::Auto),
            same_device: t.cross_same_device,
        }
    }
}

/// The import alignment of a device that can take part in the shared ring.
pub(super) fn import_alignment(info: &DeviceInfo) -> Option<u64> {
    info.min_imported_host_pointer_alignment
        .filter(|a| a.is_power_of_two() && *a <= 64 << 20)
}

/// The path a copy from `src` to `dst` takes under `request` (unless the driver then refuses
/// the import).
pub(crate) fn plan_path(request: CrossRequest, src: &DeviceInfo, dst: &DeviceInfo) -> CrossPath {
    let both_import = import_alignment(src).is_some() && import_alignment(dst).is_some();
    match request {
        CrossRequest::Staging => CrossPath::HostStaging,
        CrossRequest::Auto | CrossRequest::Import if both_import => CrossPath::HostImport,
        CrossRequest::Auto | CrossRequest::Import => CrossPath::HostStaging,
    }
}
