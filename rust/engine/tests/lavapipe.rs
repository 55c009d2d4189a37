//! Engine tests against whatever Vulkan device is present (lavapipe in CI). Every test skips
//! with a note when no Vulkan device is usable, and fails instead under
//! `EXO_GPU_REQUIRE_VULKAN=1`.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

mod common;

use common::{engine, finish, pattern, read};
use exo_vk_engine::{Engine, EngineError};

const MIB: u64 = 1 << 20;

/// Engines of one process share the logical device; the fault-injection test really marks it
/// lost, so it runs alone (write lock) while the others share (read lock).
static SERIAL: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|e| e.into_inner())
}

#[allow(dead_code)]
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERIAL.write().unwrap_or_else(|e| e.into_inner())
}

fn roundtrip(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    assert!(e.device_count().unwrap() >= 1);
    let stats = e.stats(0).unwrap();
    assert_eq!(stats.strategy, strategy);
    assert!(!stats.device_created);

    // Odd size: not a multiple of 4 (exercises the fill rounding).
    let size = 10 * MIB + 3;
    let id = e.allocate(0, size, true).unwrap();
    assert_eq!(e.allocation_size(id).unwrap(), size);
    assert!(
        read(&e, id, 0, size as usize).iter().all(|&b| b == 0),
        "fresh memory is zero"
    );

    let data = pattern(5 * MIB as usize, 7);
    e.write(id, 123, &data).unwrap();
    assert_eq!(read(&e, id, 123, data.len()), data);
    assert_eq!(read(&e, id, 0, 123), vec![0u8; 123]);
    let tail = read(
        &e,
        id,
        123 + data.len() as u64,
        (size - 123) as usize - data.len(),
    );
    assert!(tail.iter().all(|&b| b == 0));
    // The very last byte is addressable.
    e.write(id, size - 1, &[0x5A]).unwrap();
    assert_eq!(read(&e, id, size - 1, 1), vec![0x5A]);

    // Copy to a second allocation.
    let id2 = e.allocate(0, 6 * MIB, true).unwrap();
    e.copy(id, 123, id2, 1000, data.len() as u64).unwrap();
    assert_eq!(read(&e, id2, 1000, data.len()), data);
    assert_eq!(read(&e, id2, 0, 1000), vec![0u8; 1000]);

    let s = e.stats(0).unwrap();
    assert!(s.device_created);
    assert_eq!(s.live_allocations, 2);
    assert_eq!(s.live_bytes, size + 6 * MIB);
    assert!(s.block_count >= 1);
    assert!(s.allocator_capacity_bytes >= size + 6 * MIB);

    let heaps = e.memory_heaps(0).unwrap();
    assert!(!heaps.is_empty());
    let own: u64 = heaps.iter().map(|h| h.engine_allocated).sum();
    assert!(own >= size + 6 * MIB, "engine_allocated {own}");

    e.synchronize(0).unwrap();
    e.free(id).unwrap();
    e.free(id2).unwrap();
    let s = e.stats(0).unwrap();
    assert_eq!((s.live_allocations, s.live_bytes), (0, 0));
    finish(e);
}

#[test]
fn roundtrip_mapped() {
    let _serial = shared();
    roundtrip("mapped");
}

#[test]
fn roundtrip_staging() {
    let _serial = shared();
    roundtrip("staging");
}

#[test]
fn roundtrip_import() {
    let _serial = shared();
    roundtrip("import");
}

fn large(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    // > 4 ring slots of 16 MiB and >= the dedicated-allocation threshold.
    let size = 70 * MIB + 5;
    let id = e.allocate(0, size, true).unwrap();
    let data = pattern(size as usize - 9, 3);
    e.write(id, 9, &data).unwrap();
    assert_eq!(read(&e, id, 9, data.len()), data);
    assert_eq!(read(&e, id, 0, 9), vec![0u8; 9]);
    // The strategy's own path carried the bytes.
    let s = e.stats(0).unwrap();
    match strategy {
        "mapped" => assert!(s.mapped_bytes >= 2 * data.len() as u64 && s.staged_bytes == 0),
        "staging" => assert!(s.staged_bytes >= 2 * data.len() as u64 && s.mapped_bytes == 0),
        _ => assert!(
            s.imported_bytes >= 2 * data.len() as u64 && s.import_refused == 0,
            "{s:?}"
        ),
    }
    e.free(id).unwrap();
    finish(e);
}

#[test]
fn large_mapped() {
    let _serial = shared();
    large("mapped");
}

#[test]
fn large_staging() {
    let _serial = shared();
    large("staging");
}

#[test]
fn large_import() {
    let _serial = shared();
    large("import");
}

fn memmove(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    // Bigger than the 32 MiB memmove chunk so the staging path needs several chunks.
    let size = 40 * MIB;
    let id = e.allocate(0, size, true).unwrap();
    let data = pattern(size as usize, 11);
    for (src, dst) in [(0u64, 1000u64), (1000, 0), (5, 6), (6, 5), (0, 3 * MIB)] {
        e.write(id, 0, &data).unwrap();
        let len = size - src.max(dst);
        e.copy(id, src, id, dst, len).unwrap();
        let mut expect = data.clone();
        expect.copy_within(src as usize..(src + len) as usize, dst as usize);
        let got = read(&e, id, 0, size as usize);
        assert!(
            got == expect,
            "memmove src={src} dst={dst} len={len} ({strategy})"
        );
    }
    // Identical ranges: a no-op.
    e.copy(id, 64, id, 64, 128).unwrap();
    // Disjoint ranges of one allocation.
    e.write(id, 0, &data).unwrap();
    e.copy(id, 0, id, size / 2, size / 2).unwrap();
    assert_eq!(
        read(&e, id, size / 2, (size / 2) as usize),
        data[..(size / 2) as usize]
    );
    finish(e);
}

#[test]
fn memmove_mapped() {
    let _serial = shared();
    memmove("mapped");
}

#[test]
fn memmove_staging() {
    let _serial = shared();
    memmove("staging");
}

#[test]
fn memmove_import() {
    let _serial = shared();
    memmove("import");
}

fn errors(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    let id = e.allocate(0, 4096, true).unwrap();
    let other = e.allocate(0, 100, true).unwrap();
    e.write(id, 0, &[1u8; 4096]).unwrap();

    // Bounds: nothing written.
    let r = e.write(id, 4095, &[9, 9]);
    assert!(matches!(r, Err(EngineError::OutOfBounds(_))), "{r:?}");
    assert_eq!(read(&e, id, 4095, 1), vec![1]);
    assert!(matches!(
        e.write(id, u64::MAX, &[1]),
        Err(EngineError::OutOfBounds(_))
    ));
    let mut buf = [0u8; 2];
    assert!(matches!(
        e.read_into(id, 4095, &mut buf),
        Err(EngineError::OutOfBounds(_))
    ));
    assert!(matches!(
        e.copy(id, 0, other, 1, 100),
        Err(EngineError::OutOfBounds(_))
    ));
    assert!(matches!(
        e.copy(id, 4000, other, 0, 100),
        Err(EngineError::OutOfBounds(_))
    ));
    assert!(matches!(
        e.copy(id, u64::MAX, other, 0, 2),
        Err(EngineError::OutOfBounds(_))
    ));
    assert_eq!(read(&e, other, 0, 100), vec![0u8; 100]);
    // Zero-length operations at the end are fine.
    e.write(id, 4096, &[]).unwrap();
    e.read_into(id, 4096, &mut []).unwrap();

    // Size 0, absurd sizes.
    assert!(matches!(
        e.allocate(0, 0, true),
        Err(EngineError::InvalidArgument(_))
    ));
    for absurd in [1u64 << 50, u64::MAX] {
        let r = e.allocate(0, absurd, true);
        assert!(matches!(r, Err(EngineError::OutOfMemory(_))), "{r:?}");
    }
    // Still usable.
    let again = e.allocate(0, 64, true).unwrap();
    e.write(again, 0, &[3u8; 64]).unwrap();
    assert_eq!(read(&e, again, 0, 64), vec![3u8; 64]);

    // Unknown ids, double free, use after free.
    assert!(matches!(
        e.free(987_654_321),
        Err(EngineError::InvalidAllocation(_))
    ));
    e.free(again).unwrap();
    assert!(matches!(
        e.free(again),
        Err(EngineError::InvalidAllocation(_))
    ));
    assert!(matches!(
        e.write(again, 0, &[1]),
        Err(EngineError::InvalidAllocation(_))
    ));
    assert!(matches!(
        e.copy(id, 0, again, 0, 1),
        Err(EngineError::InvalidAllocation(_))
    ));

    // Bad device index.
    assert!(matches!(
        e.allocate(99, 1, true),
        Err(EngineError::NoSuchDevice(99))
    ));
    assert!(matches!(
        e.device_info(99),
        Err(EngineError::NoSuchDevice(99))
    ));
    assert!(matches!(
        e.synchronize(99),
        Err(EngineError::NoSuchDevice(99))
    ));
    e.synchronize(0).unwrap();

    finish(e);
}

#[test]
fn errors_mapped() {
    let _serial = shared();
    errors("mapped");
}

#[test]
fn errors_staging() {
    let _serial = shared();
    errors("staging");
}

#[test]
fn errors_import() {
    let _serial = shared();
    errors("import");
}

/// Unaligned host buffers of every size class through every strategy: heads, tails and
/// interiors (imported or staged) land exactly.
fn unaligned(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    let size = 12 * MIB + 4096 * 3 + 5;
    let id = e.allocate(0, size, true).unwrap();
    let backing = pattern(size as usize + 8192, 5);
    for (skew, len, off) in [
        (1usize, 9 * MIB as usize + 17, 3u64),
        (4095, 5 * MIB as usize, 4096),
        (0, 8 * MIB as usize, 0),
        (17, 100, 77),
        (3, 4096 * 2 + 1, 1),
    ] {
        let src = &backing[skew..skew + len];
        e.write(id, off, src).unwrap();
        let mut out = vec![0u8; len + 8192];
        let dst = &mut out[skew..skew + len];
        e.read_into(id, off, dst).unwrap();
        assert!(dst == src, "{strategy}: skew {skew} len {len} off {off}");
        assert!(
            out[..skew].iter().all(|&b| b == 0),
            "no write before the destination"
        );
        assert!(
            out[skew + len..].iter().all(|&b| b == 0),
            "no write after it"
        );
    }
    e.free(id).unwrap();
    finish(e);
}

#[test]
fn unaligned_mapped() {
    let _serial = shared();
    unaligned("mapped");
}

#[test]
fn unaligned_staging() {
    let _serial = shared();
    unaligned("staging");
}

#[test]
fn unaligned_import() {
    let _serial = shared();
    unaligned("import");
}

/// Small allocations come from pools and are reused: a reused slot reads as zeros again.
fn pooled(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    for round in 0..3u8 {
        let ids: Vec<u64> = (0..300u64)
            .map(|i| e.allocate(0, 1 + (i * 37) % 20000, true).unwrap())
            .collect();
        for &id in &ids {
            let n = e.allocation_size(id).unwrap() as usize;
            assert!(
                read(&e, id, 0, n).iter().all(|&b| b == 0),
                "fresh pooled memory is zero"
            );
            e.write(id, 0, &pattern(n, round ^ id as u8)).unwrap();
        }
        for &id in &ids {
            let n = e.allocation_size(id).unwrap() as usize;
            assert_eq!(read(&e, id, 0, n), pattern(n, round ^ id as u8));
        }
        // Copies between pooled allocations (often in one buffer).
        e.copy(ids[1], 0, ids[2], 0, 38).unwrap();
        assert_eq!(read(&e, ids[2], 0, 38), pattern(38, round ^ ids[1] as u8));
        for id in ids {
            e.free(id).unwrap();
        }
        assert_eq!(e.stats(0).unwrap().live_allocations, 0);
    }
    finish(e);
}

#[test]
fn pooled_mapped() {
    let _serial = shared();
    pooled("mapped");
}

#[test]
fn pooled_staging() {
    let _serial = shared();
    pooled("staging");
}

/// Device copies at every alignment (the compute-shader copy takes 16-byte-congruent ones, with
/// head and tail by vkCmdCopyBuffer; the rest use vkCmdCopyBuffer): every byte lands, none
/// outside the range changes.
fn d2d_alignments(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    let size = 6 * MIB + 100;
    let a = e.allocate(0, size, true).unwrap();
    let b = e.allocate(0, size, true).unwrap();
    let src = pattern(size as usize, 9);
    e.write(a, 0, &src).unwrap();
    for (so, doff, len) in [
        (0u64, 0u64, 5 * MIB + 3),
        (16, 48, 2 * MIB),
        (5, 21, 3 * MIB + 7),
        (3, 8, 2 * MIB + 1),
        (7, 7, 64),
        (1, 2, 100),
    ] {
        let before = pattern(size as usize, 1);
        e.write(b, 0, &before).unwrap();
        e.copy(a, so, b, doff, len).unwrap();
        let mut expect = before.clone();
        expect[doff as usize..(doff + len) as usize]
            .copy_from_slice(&src[so as usize..(so + len) as usize]);
        assert!(
            read(&e, b, 0, size as usize) == expect,
            "{strategy}: copy {so} -> {doff} ({len} bytes)"
        );
    }
    if strategy == "staging" {
        // lavapipe has VK_KHR_push_descriptor: the large congruent copies took the shader.
        assert!(e.stats(0).unwrap().compute_copied_bytes >= 7 * MIB);
    }
    finish(e);
}

#[test]
fn d2d_alignments_mapped() {
    let _serial = shared();
    d2d_alignments("mapped");
}

#[test]
fn d2d_alignments_staging() {
    let _serial = shared();
    d2d_alignments("staging");
}

/// Hundreds of engines in one process reuse one instance and one device (drivers limit
/// instance create/destroy cycles per process).
#[test]
fn many_engines() {
    let _serial = shared();
    if engine("auto").is_none() {
        return;
    }
    for k in 0..300u32 {
        let e = Engine::new(false, None).unwrap();
        if k % 10 == 0 {
            let id = e.allocate(0, 4096, true).unwrap();
            e.write(id, 0, &k.to_le_bytes()).unwrap();
            assert_eq!(read(&e, id, 0, 4), k.to_le_bytes().to_vec());
        }
        e.close().unwrap();
        assert!(Engine::probe().is_none());
    }
}

#[test]
fn closed_and_lazy() {
    let _serial = shared();
    let Some(e) = engine("auto") else { return };
    // Nothing created yet: synchronize is a no-op, stats are zero.
    e.synchronize(0).unwrap();
    assert!(!e.stats(0).unwrap().device_created);
    let id = e.allocate(0, 1000, true).unwrap();
    e.close().unwrap();
    assert!(e.is_closed());
    assert_eq!(e.allocate(0, 10, true), Err(EngineError::Closed));
    assert_eq!(e.write(id, 0, &[1]), Err(EngineError::Closed));
    assert_eq!(e.device_count(), Err(EngineError::Closed));
    e.close().unwrap();
}

#[test]
fn bad_strategy() {
    let _serial = shared();
    assert!(matches!(
        Engine::new(false, Some("fast")),
        Err(EngineError::InvalidArgument(_))
    ));
}

#[test]
fn device_info() {
    let _serial = shared();
    let Some(e) = engine("auto") else { return };
    let info = e.device_info(0).unwrap();
    eprintln!("{info:#?}");
    assert!(!info.name.is_empty());
    assert!(!info.heaps.is_empty());
    assert!(!info.memory_types.is_empty());
    assert!(info.api_version >= ash_api_1_1());
    assert!(info.max_memory_allocation_size > 0);
    assert!(info.max_compute_work_group_invocations > 0);
    assert!(info.transfer_queue_count >= 1);
    assert!(info.strategy.is_some());
    let heaps = e.memory_heaps(0).unwrap();
    assert_eq!(heaps.len(), info.heaps.len());
    for h in &heaps {
        assert_eq!(h.budget.is_some(), info.extensions.memory_budget);
        assert_eq!(h.engine_allocated, 0);
    }
    // device_info needs no logical device.
    assert!(!e.stats(0).unwrap().device_created);
    finish(e);
}

fn ash_api_1_1() -> u32 {
    (1 << 22) | (1 << 12)
}

#[test]
fn threads() {
    let _serial = shared();
    let Some(e) = engine("staging") else { return };
    let e = std::sync::Arc::new(e);
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let e = std::sync::Arc::clone(&e);
            std::thread::spawn(move || {
                for round in 0..5u8 {
                    let size = 3 * MIB as usize + t as usize;
                    let id = e.allocate(0, size as u64, true).unwrap();
                    let data = pattern(size, t ^ round);
                    e.write(id, 0, &data).unwrap();
                    let id2 = e.allocate(0, size as u64, true).unwrap();
                    e.copy(id, 0, id2, 0, size as u64).unwrap();
                    assert_eq!(read(&e, id2, 0, size), data);
                    e.free(id).unwrap();
                    e.free(id2).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    e.close().unwrap();
}

#[cfg(feature = "fault-injection")]
#[test]
fn fault_injection() {
    let _serial = exclusive();
    let Some(e) = engine("auto") else { return };
    let id = e.allocate(0, 64, true).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.inject_panic()));
    assert!(r.is_err());
    // Still usable after a panic.
    e.write(id, 0, &[1u8; 64]).unwrap();
    e.inject_device_lost(0).unwrap();
    assert!(matches!(
        e.write(id, 0, &[1]),
        Err(EngineError::DeviceLost(_))
    ));
    assert!(matches!(
        e.allocate(0, 8, true),
        Err(EngineError::DeviceLost(_))
    ));
    assert!(matches!(e.synchronize(0), Err(EngineError::DeviceLost(_))));
    e.free(id).unwrap();
    e.close().unwrap();
    // The lost device left the cache: a new engine gets a fresh, working device.
    let Some(e2) = engine("auto") else { return };
    let id = e2.allocate(0, 64, true).unwrap();
    e2.write(id, 0, &[7u8; 64]).unwrap();
    assert_eq!(read(&e2, id, 0, 64), vec![7u8; 64]);
    finish(e2);
}

/// Small allocations from many threads at once: pool chunks are created outside the pool's lock,
/// and a chunk made needless by another thread is discarded, so every slot is distinct (each
/// allocation keeps its own bytes) and freeing them all leaves no live allocation.
#[test]
fn concurrent_small_allocations_are_distinct() {
    let _g = shared();
    let Some(e) = engine("staging") else { return };
    let e = std::sync::Arc::new(e);
    let threads: Vec<_> = (0..6u8)
        .map(|t| {
            let e = std::sync::Arc::clone(&e);
            std::thread::spawn(move || {
                let ids: Vec<(u64, Vec<u8>)> = (0..60u8)
                    .map(|k| {
                        let size = 256usize << (k % 5);
                        let id = e.allocate(0, size as u64, true).unwrap();
                        let data = pattern(size, t.wrapping_mul(61).wrapping_add(k));
                        e.write(id, 0, &data).unwrap();
                        (id, data)
                    })
                    .collect();
                for (id, data) in &ids {
                    assert!(
                        read(&e, *id, 0, data.len()) == *data,
                        "allocation {id} clobbered"
                    );
                }
                for (id, _) in ids {
                    e.free(id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(e.stats(0).unwrap().live_allocations, 0);
    let e = std::sync::Arc::into_inner(e).expect("threads joined");
    finish(e);
}
