//! The plan that picks a path per transfer on one device: the strategy and the size thresholds
//! of each path (from `tuning`).

use crate::properties::{DeviceInfo, Strategy, StrategyRequest};
use crate::tuning::Tuning;

/// How one engine moves bytes on one device: the strategy and the size thresholds of each path.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Allocations up to this size live in DEVICE_LOCAL|HOST_VISIBLE memory (when the device
    /// has such a type).
    pub(crate) map_alloc_max: u64,
    /// Writes/reads up to this size go through the mapping of a host-visible allocation.
    pub(crate) map_write_max: u64,
    pub(crate) map_read_max: u64,
    /// Fresh host-visible allocations up to this size are zeroed through the mapping.
    pub(crate) map_zero_max: u64,
    /// Host buffers whose page-aligned interior is at least this large are imported.
    pub(crate) import_min: Option<u64>,
    /// Device-to-device copies by host memcpy (CPU devices: the device's own copy is a
    /// single-threaded memcpy on its queue thread).
    pub(crate) host_d2d: bool,
    /// Allocations up to this size are sub-allocated from pooled buffers.
    pub(crate) small_max: u64,
    /// Percent of a large write to a mapped allocation sent through the mapping while the rest
    /// goes through staging (0: off).
    pub(crate) hybrid_percent: u64,
}

impl Plan {
    pub(crate) fn new(info: &DeviceInfo, strategy: Strategy, t: &Tuning) -> Plan {
        let none = Plan {
            map_alloc_max: 0,
            map_write_max: 0,
            map_read_max: 0,
            map_zero_max: 0,
            import_min: None,
            host_d2d: false,
            small_max: t.small_max,
            hybrid_percent: 0,
        };
        let can_import = info.min_imported_host_pointer_alignment.is_some();
        let discrete_auto = t.force_discrete_plan
            && info.requested == StrategyRequest::Auto
            && info.host_visible_device_local;
        match strategy {
            Strategy::Mapped if !discrete_auto => Plan {
                map_alloc_max: u64::MAX,
                map_write_max: u64::MAX,
                map_read_max: u64::MAX,
                map_zero_max: u64::MAX,
                host_d2d: info.device_type == "cpu",
                ..none
            },
            Strategy::Mapped | Strategy::Staging if info.requested == StrategyRequest::Auto => {
                let hv = info.host_visible_device_local;
                Plan {
                    map_alloc_max: if hv { t.map_alloc_max } else { 0 },
                    map_write_max: if hv { t.map_write_max } else { 0 },
                    map_read_max: if hv { t.map_read_max } else { 0 },
                    map_zero_max: if hv { t.map_zero_max } else { 0 },
                    import_min: (t.auto_import && can_import).then_some(t.import_min),
                    hybrid_percent: if hv { t.hybrid_percent } else { 0 },
                    ..none
                }
            }
            Strategy::Mapped | Strategy::Staging => none,
            Strategy::Import => Plan {
                import_min: Some(t.import_min),
                ..none
            },
        }
    }
}
