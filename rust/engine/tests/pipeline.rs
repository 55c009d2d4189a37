//! The transfer pipeline: uploads and downloads in flight at once, many small copies at once,
//! and bookkeeping whose cost does not grow with the number of live allocations. Every test
//! skips with a note when no Vulkan device is usable (fails under `EXO_GPU_REQUIRE_VULKAN=1`).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{engine, finish, pattern, read};
use exo_vk_engine::Engine;

const MIB: usize = 1 << 20;

/// One thread uploads into `a` while another downloads `b`, both larger than a staging slot,
/// round after round; every byte arrives intact both ways.
fn opposite_directions(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    let e = Arc::new(e);
    let size = 40 * MIB + 12;
    let a = e.allocate(0, size as u64, true).unwrap();
    let b = e.allocate(0, size as u64, true).unwrap();
    let down = pattern(size, 91);
    e.write(b, 0, &down).unwrap();
    let rounds = 3u8;
    let up = {
        let e = Arc::clone(&e);
        std::thread::spawn(move || {
            for r in 0..rounds {
                let data = pattern(size, r);
                e.write(a, 0, &data).unwrap();
            }
        })
    };
    for _ in 0..rounds {
        assert!(read(&e, b, 0, size) == down, "download corrupted");
    }
    up.join().unwrap();
    assert!(
        read(&e, a, 0, size) == pattern(size, rounds - 1),
        "upload corrupted"
    );
    e.free(a).unwrap();
    e.free(b).unwrap();
    let e = Arc::into_inner(e).expect("threads joined");
    finish(e);
}

#[test]
fn opposite_directions_staging() {
    opposite_directions("staging");
}

#[test]
fn opposite_directions_mapped() {
    opposite_directions("mapped");
}

#[test]
fn opposite_directions_import() {
    opposite_directions("import");
}

/// 32 threads each write and read back their own 64 KiB region of one allocation, many times:
/// more transfers than staging slots, so slots are shared and handed over between threads.
#[test]
fn many_small_copies_at_once() {
    let Some(e) = engine("staging") else { return };
    let e = Arc::new(e);
    let piece = 64 << 10;
    let threads = 32usize;
    let id = e.allocate(0, (piece * threads) as u64, true).unwrap();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                for round in 0..8u8 {
                    let data = pattern(piece, t as u8 ^ round.wrapping_mul(37));
                    let off = (t * piece) as u64;
                    e.write(id, off, &data).unwrap();
                    assert!(read(&e, id, off, piece) == data, "thread {t} round {round}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    e.free(id).unwrap();
    let e = Arc::into_inner(e).expect("threads joined");
    finish(e);
}

/// Fastest of `n` timings of `f`.
fn fastest(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// stats(), memory_heaps() and allocate + free keep running counters: with 20,000 live
/// allocations they cost about what they cost with 100 (a generous 10x bound against noise;
/// walking every allocation costs ~200x here).
#[test]
fn bookkeeping_does_not_grow_with_allocations() {
    let Some(e) = engine("staging") else { return };
    let report = |e: &Engine| {
        fastest(200, || {
            e.stats(0).unwrap();
            e.memory_heaps(0).unwrap();
        })
    };
    let churn = |e: &Engine| {
        fastest(200, || {
            let id = e.allocate(0, 4096, true).unwrap();
            e.free(id).unwrap();
        })
    };
    let mut live: Vec<u64> = (0..100)
        .map(|_| e.allocate(0, 4096, true).unwrap())
        .collect();
    let (few_report, few_churn) = (report(&e), churn(&e));
    live.extend((0..19_900).map(|_| e.allocate(0, 4096, true).unwrap()));
    let (many_report, many_churn) = (report(&e), churn(&e));
    assert_eq!(e.stats(0).unwrap().live_allocations, 20_000);
    let slack = Duration::from_micros(20);
    assert!(
        many_report <= few_report * 10 + slack,
        "report {few_report:?} at 100 vs {many_report:?} at 20,000"
    );
    assert!(
        many_churn <= few_churn * 10 + slack,
        "allocate+free {few_churn:?} at 100 vs {many_churn:?} at 20,000"
    );
    for id in live {
        e.free(id).unwrap();
    }
    assert_eq!(e.stats(0).unwrap().live_allocations, 0);
    finish(e);
}
