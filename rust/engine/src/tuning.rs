//! Transfer tunables: sizes and thresholds of the copy paths, read once per process.
//!
//! The defaults come from measurements on lavapipe (2 cores) and on an H100 80GB HBM3 (PCIe Gen5,
//! driver 580, 16 host cores; 2026-11-27). There, per 256 MiB: the staging DMA alone moves
//! ~48 GB/s and the 16-thread memcpy alone ~45 GB/s each way, but together they share the
//! host's memory bandwidth (h2d ~37, d2h ~45 GB/s); writes through the ReBAR mapping reach ~25-31
//! GB/s from 4 MiB up without touching staging memory, so large writes are split between both
//! (`hybrid`, ~40 GB/s); importing host pages costs more than it saves (~10 GB/s: pinning); a DMA
//! round trip costs ~20 us (~50 us from a host-visible VRAM allocation), a streaming-load read
//! of 4 KiB through the BAR ~7 us; vkCmdCopyBuffer moves 1 GiB at ~400 GB/s, a compute shader at
//! ~1.25-1.35 TB/s.
//!
//! `EXO_VULKAN_TUNE="key=value,key=value"` overrides the defaults, for measuring other machines
//! (sizes accept `k`/`m`/`g` suffixes and `max`, booleans `0`/`1`). An item that is not
//! `key=value`, an unknown key or a value its key does not take is an error naming the item and
//! what is valid: `Engine::new` refuses to start with it (`EngineError::Config`), so a misspelt
//! setting never runs silently on the defaults. Numbers outside a key's range are clamped to it.
//! `rust/engine/tools/transfer_sweep.py` measures a list of settings side by side. Keys:
//!
//! | key | meaning |
//! |---|---|
//! | `slot` | bytes per staging-ring slot (one DMA submission) |
//! | `slots` | staging slots / DMA submissions in flight |
//! | `threads` | threads (the caller included) sharing a large memcpy |
//! | `part` | fewest bytes one memcpy thread handles |
//! | `map_write` | discrete "auto": writes up to this many bytes go through a host-visible mapping of device memory (ReBAR) instead of DMA |
//! | `map_read` | the same for reads |
//! | `map_alloc` | discrete "auto": allocations up to this size live in DEVICE_LOCAL\|HOST_VISIBLE memory |
//! | `map_zero` | discrete "auto": fresh mapped allocations up to this size are zeroed through the mapping |
//! | `small` | allocations up to this size are sub-allocated from pooled buffers |
//! | `import` | "import": the page-aligned interior of a host buffer is imported when at least this large |
//! | `auto_import` | discrete "auto": bulk copies use import (1) or staging (0) |
//! | `hugepages` | advise transparent huge pages for fresh destination buffers (Linux) |
//! | `upload_cached` | upload staging in HOST_CACHED memory (1) or write-combined (0) |
//! | `d2d_transfer` | device-to-device copies on the transfer queue (1) instead of the universal one (0) |
//! | `fence_spin` | microseconds a wait polls its queue's timeline semaphore before blocking in vkWaitSemaphores (default 2000 with 8 or more CPUs, else 200; never on CPU devices) |
//! | `d2d_compute` | device-to-device copies by compute shader (1) or vkCmdCopyBuffer (0) |
//! | `compute_min` | smallest device-to-device copy given to the compute shader |
//! | `file_direct` | file copies through staging read with `O_DIRECT`: 0 never, 1 always (whatever the size), 2 when under half the range is in the page cache and it holds at least `direct_min` bytes |
//! | `direct_min` | smallest file copy that may read with `O_DIRECT` |
//! | `upload_family`, `download_family` | queue family of the upload / download queue instead of the default (the transfer family; for NVIDIA uploads the compute family without graphics, see `device.rs`); `rust/engine/examples/queue_probe.rs` measures each |
//! | `hybrid` | discrete "auto": percent of a large write to a mapped allocation sent through the mapping while the rest goes through staging, both at once |
//! | `diag` | measurement only, corrupts data: `nomemcpy` skips the staging memcpy, `nodma` skips the DMA |
//! | `nt_min` | memcpys at least this large use non-temporal stores (0: never) |
//! | `spin` | microseconds an idle memcpy thread spins for new work before sleeping |
//! | `stream_reads` | reads through a mapping use streaming loads: 0 never, 1 when uncached, 2 always |
//! | `plan` | `discrete`: use the discrete-GPU "auto" plan on any device (to test its paths on lavapipe) |
//! | `xpath` | cross-device copies: `auto` (the best path the two devices allow), `import` (one host ring imported into both devices; falls back to staging where refused), `staging` (each device's own staging ring, memcpy between them) |
//! | `xsame` | `1`: copies between two allocations of one device also take the cross-device pipeline (to test it with one device) |
//! | `xslot` | bytes per cross-device ring slot (one DMA per device per slot) |
//! | `xslots` | cross-device ring slots (chunks in flight) |
//! | `timeout_ms` | how long a wait for GPU work may take before the device counts as hung (default 60 s) |

use std::sync::OnceLock;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Every tunable, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub(crate) slot_size: u64,
    pub(crate) slots: usize,
    pub(crate) threads: usize,
    pub(crate) min_part: usize,
    pub(crate) map_write_max: u64,
    pub(crate) map_read_max: u64,
    pub(crate) map_alloc_max: u64,
    pub(crate) map_zero_max: u64,
    pub(crate) small_max: u64,
    pub(crate) import_min: u64,
    pub(crate) auto_import: bool,
    pub(crate) hugepages: bool,
    pub(crate) upload_cached: bool,
    pub(crate) d2d_transfer: bool,
    pub(crate) stream_reads: u8,
    pub(crate) force_discrete_plan: bool,
    pub(crate) spin_us: u64,
    pub(crate) fence_spin_us: u64,
    pub(crate) d2d_compute: bool,
    pub(crate) compute_min: u64,
    pub(crate) upload_family: Option<u32>,
    pub(crate) download_family: Option<u32>,
    pub(crate) file_direct: u8,
    pub(crate) direct_min: u64,
    pub(crate) hybrid_percent: u64,
    pub(crate) diag_no_memcpy: bool,
    pub(crate) diag_no_dma: bool,
    pub(crate) nt_min: u64,
    pub(crate) cross_path: String,
    pub(crate) cross_same_device: bool,
    pub(crate) cross_slot_size: u64,
    pub(crate) cross_slots: usize,
    pub(crate) timeout: std::time::Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Tuning {
            slot_size: 16 * MIB,
            slots: 4,
            threads: cores.clamp(1, 16),
            min_part: (MIB as usize),
            map_write_max: 16 * MIB,
            map_read_max: 16 * KIB,
            map_alloc_max: u64::MAX,
            map_zero_max: 256 * KIB,
            small_max: 256 * KIB,
            import_min: 4 * MIB,
            auto_import: false,
            hugepages: true,
            upload_cached: true,
            d2d_transfer: false,
            stream_reads: 1,
            force_discrete_plan: false,
            spin_us: 0,
            // Polling beats blocking by the 50-100 us a blocked wait takes to wake (H200, driver
            // 580: a 1 GiB device copy 595 -> 542 us, 256 MiB pinned uploads 6.0 -> 5.7 ms). With
            // cores to spare, poll for longer, as CUDA's default scheduling does.
            fence_spin_us: if cores >= 8 { 2000 } else { 200 },
            d2d_compute: true,
            compute_min: MIB,
            upload_family: None,
            download_family: None,
            file_direct: 2,
            direct_min: 64 * MIB,
            hybrid_percent: 30,
            diag_no_memcpy: false,
            diag_no_dma: false,
            nt_min: 4 * MIB,
            cross_path: "auto".into(),
            cross_same_device: false,
            cross_slot_size: 16 * MIB,
            cross_slots: 6,
            timeout: std::time::Duration::from_secs(60),
        }
    }
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    if v == "max" || v == "inf" {
        return Some(u64::MAX);
    }
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], KIB),
        'm' => (&v[..v.len() - 1], MIB),
        'g' => (&v[..v.len() - 1], MIB << 10),
        _ => (&v[..], 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Every key `EXO_VULKAN_TUNE` takes, in the order of the table above (for error messages).
pub(crate) const KEYS: &[&str] = &[
    "slot",
    "slots",
    "threads",
    "part",
    "map_write",
    "map_read",
    "map_alloc",
    "map_zero",
    "small",
    "import",
    "auto_import",
    "hugepages",
    "upload_cached",
    "d2d_transfer",
    "fence_spin",
    "d2d_compute",
    "compute_min",
    "file_direct",
    "direct_min",
    "upload_family",
    "download_family",
    "hybrid",
    "diag",
    "nt_min",
    "spin",
    "stream_reads",
    "plan",
    "xpath",
    "xsame",
    "xslot",
    "xslots",
    "timeout_ms",
];

/// One `key=value` item's value, read as its key requires; `Err` says what the key takes.
fn size_of(v: &str) -> Result<u64, String> {
    parse_size(v).ok_or_else(|| "a size (e.g. 4096, 64k, 16m, 1g or max)".to_string())
}

fn flag_of(v: &str) -> Result<bool, String> {
    match v.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err("0 or 1".to_string()),
    }
}

fn level_of(v: &str, max: u8) -> Result<u8, String> {
    match v.trim().parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("a number from 0 to {max}")),
    }
}

fn choice_of<'a>(v: &str, choices: &[&'a str]) -> Result<&'a str, String> {
    let v = v.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|c| **c == v)
        .copied()
        .ok_or_else(|| choices.join(" or "))
}

impl Tuning {
    /// Defaults overridden by `spec` (`key=value,...`; empty items are allowed). `Err` names the
    /// first bad item: not `key=value`, an unknown key (listing the known ones), or a value its
    /// key does not take (saying what it takes).
    pub(crate) fn parse(spec: &str) -> Result<Tuning, String> {
        let mut t = Tuning::default();
        for item in spec.split(',') {
            if item.trim().is_empty() {
                continue;
            }
            let Some((k, v)) = item.split_once('=') else {
                return Err(format!("{:?} is not key=value", item.trim()));
            };
            let key = k.trim();
            t.set(key, v).map_err(|valid| {
                if KEYS.contains(&key) {
                    format!("{key}={:?}: {key} takes {valid}", v.trim())
                } else {
                    format!("unknown key {key:?}; known keys: {}", KEYS.join(", "))
                }
            })?;
        }
        Ok(t)
    }

    /// Set one key; `Err` says what the key takes (or is empty for an unknown key).
    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        let t = self;
        match key {
            "slot" => t.slot_size = size_of(v)?.clamp(64 * KIB, 1 << 30),
            "slots" => t.slots = size_of(v)?.clamp(2, 64) as usize,
            "threads" => t.threads = size_of(v)?.clamp(1, 64) as usize,
            "part" => t.min_part = size_of(v)?.clamp(4 * KIB, 1 << 30) as usize,
            "map_write" => t.map_write_max = size_of(v)?,
            "map_read" => t.map_read_max = size_of(v)?,
            "map_alloc" => t.map_alloc_max = size_of(v)?,
            "map_zero" => t.map_zero_max = size_of(v)?,
            "small" => t.small_max = size_of(v)?.min(16 * MIB),
            "import" => t.import_min = size_of(v)?.max(4 * KIB),
            "auto_import" => t.auto_import = flag_of(v)?,
            "hugepages" => t.hugepages = flag_of(v)?,
            "upload_cached" => t.upload_cached = flag_of(v)?,
            "d2d_transfer" => t.d2d_transfer = flag_of(v)?,
            "stream_reads" => t.stream_reads = level_of(v, 2)?,
            "plan" => t.force_discrete_plan = choice_of(v, &["auto", "discrete"])? == "discrete",
            "spin" => t.spin_us = size_of(v)?.min(10_000),
            "fence_spin" => t.fence_spin_us = size_of(v)?.min(100_000),
            "d2d_compute" => t.d2d_compute = flag_of(v)?,
            "compute_min" => t.compute_min = size_of(v)?,
            "file_direct" => t.file_direct = level_of(v, 2)?,
            "direct_min" => t.direct_min = size_of(v)?,
            "upload_family" | "download_family" => {
                let family =
                    u32::try_from(size_of(v)?).map_err(|_| "a queue family index".to_string())?;
                if key == "upload_family" {
                    t.upload_family = Some(family);
                } else {
                    t.download_family = Some(family);
                }
            }
            "nt_min" => t.nt_min = size_of(v)?,
            "xpath" => {
                let valid = ["auto", "import", "host-import", "staging", "host-staging"];
                t.cross_path = choice_of(v, &valid)?.to_string();
            }
            "xsame" => t.cross_same_device = flag_of(v)?,
            "xslot" => {
                t.cross_slot_size = size_of(v)?
                    .clamp(64 * KIB, 1 << 30)
                    .next_multiple_of(64 * KIB)
            }
            "xslots" => t.cross_slots = size_of(v)?.clamp(2, 64) as usize,
            "timeout_ms" => {
                t.timeout = std::time::Duration::from_millis(size_of(v)?.clamp(10, 3_600_000))
            }
            "hybrid" => t.hybrid_percent = size_of(v)?.min(100),
            "diag" => match choice_of(v, &["nomemcpy", "nodma"])? {
                "nomemcpy" => t.diag_no_memcpy = true,
                _ => t.diag_no_dma = true,
            },
            _ => return Err(String::new()),
        }
        Ok(())
    }
}

/// The environment variable the tunables are read from.
pub const ENV_TUNE: &str = "EXO_VULKAN_TUNE";

static TUNING: OnceLock<(Tuning, Option<String>)> = OnceLock::new();

fn read_env() -> &'static (Tuning, Option<String>) {
    TUNING.get_or_init(|| {
        let spec = std::env::var(ENV_TUNE).unwrap_or_default();
        match Tuning::parse(&spec) {
            Ok(t) => (t, None),
            Err(why) => (
                Tuning::default(),
                Some(format!("{ENV_TUNE}={spec:?}: {why}")),
            ),
        }
    })
}

/// The process-wide tunables (`EXO_VULKAN_TUNE`, read on first use). `Engine::new` calls
/// [`check`] first, so no engine runs on defaults that stand in for a malformed setting.
pub(crate) fn tuning() -> &'static Tuning {
    &read_env().0
}

/// `Err(EngineError::Config)` naming the variable, its value and what is wrong with it.
pub(crate) fn check() -> crate::error::Result<()> {
    match &read_env().1 {
        None => Ok(()),
        Some(message) => Err(crate::error::EngineError::Config(message.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overrides() {
        let t = Tuning::parse("slot=32m, slots=8,threads=3,map_write=0,auto_import=1,,").unwrap();
        assert_eq!(t.slot_size, 32 * MIB);
        assert_eq!(t.slots, 8);
        assert_eq!(t.threads, 3);
        assert_eq!(t.map_write_max, 0);
        assert!(t.auto_import);
        assert_eq!(parse_size("max"), Some(u64::MAX));
        assert_eq!(parse_size("4k"), Some(4096));
        let x = Tuning::parse("xpath=Staging,xsame=1,xslot=100k,xslots=1").unwrap();
        assert_eq!(x.cross_path, "staging");
        assert!(x.cross_same_device);
        assert_eq!(x.cross_slot_size, 128 * KIB);
        assert_eq!(x.cross_slots, 2);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let unknown = Tuning::parse("slot=32m,nosuch=1").unwrap_err();
        assert!(unknown.contains("unknown key \"nosuch\""), "{unknown}");
        assert!(unknown.contains("known keys: slot, slots"), "{unknown}");
        let garbage = Tuning::parse("garbage").unwrap_err();
        assert!(
            garbage.contains("\"garbage\" is not key=value"),
            "{garbage}"
        );
        let value = Tuning::parse("small=x").unwrap_err();
        assert!(value.contains("small takes a size"), "{value}");
        assert!(Tuning::parse("hugepages=2").unwrap_err().contains("0 or 1"));
        assert!(Tuning::parse("file_direct=3").is_err());
        assert!(Tuning::parse("xpath=nowhere").is_err());
        assert!(Tuning::parse("diag=x").is_err());
        assert!(Tuning::parse("").is_ok());
        assert!(Tuning::parse(" , ").is_ok());
    }
}
