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
//! (sizes accept `k`/`m`/`g` suffixes and `max`, booleans `0`/`1`). Unknown keys are ignored.
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
//! | `upload_family`, `download_family` | queue family of the upload / download queue instead of the transfer family (`rust/engine/examples/queue_probe.rs` measures each) |
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

impl Tuning {
    /// Defaults overridden by `spec` (`key=value,...`).
    pub(crate) fn parse(spec: &str) -> Tuning {
        let mut t = Tuning::default();
        for item in spec.split(',') {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let size = parse_size(v);
            let flag = size.map(|s| s != 0);
            match k.trim() {
                "slot" => t.slot_size = size.unwrap_or(t.slot_size).clamp(64 * KIB, 1 << 30),
                "slots" => t.slots = size.map_or(t.slots, |s| s.clamp(2, 64) as usize),
                "threads" => t.threads = size.map_or(t.threads, |s| s.clamp(1, 64) as usize),
                "part" => {
                    t.min_part = size.map_or(t.min_part, |s| s.clamp(4 * KIB, 1 << 30) as usize)
                }
                "map_write" => t.map_write_max = size.unwrap_or(t.map_write_max),
                "map_read" => t.map_read_max = size.unwrap_or(t.map_read_max),
                "map_alloc" => t.map_alloc_max = size.unwrap_or(t.map_alloc_max),
                "map_zero" => t.map_zero_max = size.unwrap_or(t.map_zero_max),
                "small" => t.small_max = size.unwrap_or(t.small_max).min(16 * MIB),
                "import" => t.import_min = size.unwrap_or(t.import_min).max(4 * KIB),
                "auto_import" => t.auto_import = flag.unwrap_or(t.auto_import),
                "hugepages" => t.hugepages = flag.unwrap_or(t.hugepages),
                "upload_cached" => t.upload_cached = flag.unwrap_or(t.upload_cached),
                "d2d_transfer" => t.d2d_transfer = flag.unwrap_or(t.d2d_transfer),
                "stream_reads" => t.stream_reads = size.map_or(t.stream_reads, |s| s.min(2) as u8),
                "plan" => t.force_discrete_plan = v.trim() == "discrete",
                "spin" => t.spin_us = size.map_or(t.spin_us, |s| s.min(10_000)),
                "fence_spin" => t.fence_spin_us = size.map_or(t.fence_spin_us, |s| s.min(100_000)),
                "d2d_compute" => t.d2d_compute = flag.unwrap_or(t.d2d_compute),
                "compute_min" => t.compute_min = size.unwrap_or(t.compute_min),
                "file_direct" => t.file_direct = size.map_or(t.file_direct, |s| s.min(2) as u8),
                "direct_min" => t.direct_min = size.unwrap_or(t.direct_min),
                "upload_family" => {
                    t.upload_family = size.and_then(|s| u32::try_from(s).ok()).or(t.upload_family)
                }
                "download_family" => {
                    t.download_family = size
                        .and_then(|s| u32::try_from(s).ok())
                        .or(t.download_family)
                }
                "nt_min" => t.nt_min = size.unwrap_or(t.nt_min),
                "xpath" => t.cross_path = v.trim().to_ascii_lowercase(),
                "xsame" => t.cross_same_device = flag.unwrap_or(t.cross_same_device),
                "xslot" => {
                    t.cross_slot_size = size
                        .unwrap_or(t.cross_slot_size)
                        .clamp(64 * KIB, 1 << 30)
                        .next_multiple_of(64 * KIB)
                }
                "xslots" => t.cross_slots = size.map_or(t.cross_slots, |s| s.clamp(2, 64) as usize),
                "timeout_ms" => {
                    t.timeout = size.map_or(t.timeout, |s| {
                        std::time::Duration::from_millis(s.clamp(10, 3_600_000))
                    })
                }
                "hybrid" => t.hybrid_percent = size.map_or(t.hybrid_percent, |s| s.min(100)),
                "diag" => match v.trim() {
                    "nomemcpy" => t.diag_no_memcpy = true,
                    "nodma" => t.diag_no_dma = true,
                    _ => {}
                },
                _ => {}
            }
        }
        t
    }
}

static TUNING: OnceLock<Tuning> = OnceLock::new();

/// The process-wide tunables (`EXO_VULKAN_TUNE`, read on first use).
pub(crate) fn tuning() -> &'static Tuning {
    TUNING.get_or_init(|| Tuning::parse(&std::env::var("EXO_VULKAN_TUNE").unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overrides() {
        let t =
            Tuning::parse("slot=32m, slots=8,threads=3,map_write=0,auto_import=1,bogus=5,small=x");
        assert_eq!(t.slot_size, 32 * MIB);
        assert_eq!(t.slots, 8);
        assert_eq!(t.threads, 3);
        assert_eq!(t.map_write_max, 0);
        assert!(t.auto_import);
        assert_eq!(t.small_max, Tuning::default().small_max);
        assert_eq!(parse_size("max"), Some(u64::MAX));
        assert_eq!(parse_size("4k"), Some(4096));
        let x = Tuning::parse("xpath=Staging,xsame=1,xslot=100k,xslots=1");
        assert_eq!(x.cross_path, "staging");
        assert!(x.cross_same_device);
        assert_eq!(x.cross_slot_size, 128 * KIB);
        assert_eq!(x.cross_slots, 2);
    }
}
