//! The cross-device pipeline (`cross`), byte-exact with validation on. With one device (lavapipe)
//! `Engine::force_cross_device(path, true)` sends copies between two allocations of that device
//! through it; with two or more devices the real pairs are tested as well.
//!
//! This binary runs with small ring slots (64 KiB x 3, set before the first engine), so short
//! copies wrap the ring many times.

use std::sync::Once;

mod common;

use common::{finish, pattern};
use exo_vk_engine::{Engine, EngineError};

const KIB: u64 = 1 << 10;
const SLOT: u64 = 64 * KIB;
const PATHS: [&str; 2] = ["host-import", "host-staging"];

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Read once per process (on the first engine); nothing else in this binary sets it.
        std::env::set_var("EXO_VULKAN_TUNE", "xslot=64k,xslots=3");
    });
}

/// A shared-helper engine, after the small ring slots of this binary are set.
fn engine(strategy: &str) -> Option<Engine> {
    setup();
    common::engine(strategy)
}

/// (source offset, destination offset, length) for allocations of `size` bytes.
fn cases(size: u64) -> Vec<(u64, u64, u64)> {
    vec![
        (0, 0, size),
        (1, 3, 1),
        (7, 1001, 3000),
        (5, 2, 3 * SLOT),
        (4096, 0, 3 * SLOT + 1),
        (3, 0, size - 3),
        (0, 5, size - 5),
        (13, 17, 7 * SLOT - 9),
        (size - 1, 0, 1),
    ]
}

/// Copies from `(ea, a_dev)` to `(eb, b_dev)` and back at every case: every byte lands, no byte
/// outside the range changes, the source is untouched.
fn exact_between(e: &Engine, a_dev: usize, b_dev: usize, what: &str) {
    let size = 17 * SLOT + 4099;
    let n = size as usize;
    let a = e.allocate(a_dev, size, true).unwrap();
    let b = e.allocate(b_dev, size, true).unwrap();
    let (a_data, b_data) = (pattern(n, 1), pattern(n, 3));
    for (so, doff, len) in cases(size) {
        for (src, dst, src_data) in [(a, b, &a_data), (b, a, &b_data)] {
            e.write(src, 0, src_data).unwrap();
            let before = pattern(n, 2);
            e.write(dst, 0, &before).unwrap();
            e.copy(src, so, dst, doff, len).unwrap();
            let mut expect = before;
            expect[doff as usize..(doff + len) as usize]
                .copy_from_slice(&src_data[so as usize..(so + len) as usize]);
            assert!(
                common::read(e, dst, 0, n) == expect,
                "{what}: copy {so} -> {doff} ({len} bytes), {src} -> {dst}"
            );
            assert!(
                common::read(e, src, 0, n) == *src_data,
                "{what}: source changed"
            );
        }
    }
    e.free(a).unwrap();
    e.free(b).unwrap();
}

#[test]
fn forced_pipeline_is_byte_exact_on_one_device() {
    for strategy in ["auto", "staging", "import"] {
        for path in PATHS {
            let Some(e) = engine(strategy) else { return };
            assert!(!e.stats(0).unwrap().cross_device_path.is_empty());
            e.force_cross_device(path, true).unwrap();
            let can_import = e
                .device_info(0)
                .unwrap()
                .min_imported_host_pointer_alignment
                .is_some();
            let planned = if path == "host-import" && !can_import {
                "host-staging"
            } else {
                path
            };
            assert_eq!(e.cross_device_path(0, 0).unwrap(), planned);
            exact_between(&e, 0, 0, &format!("{strategy}/{path}"));
            let stats = e.stats(0).unwrap();
            assert_eq!(stats.cross_device_path, planned, "{strategy}/{path}");
            assert_eq!(stats.import_refused, 0, "{strategy}/{path}");
            assert!(stats.cross_device_bytes >= 2 * 17 * SLOT);
            finish(e);
        }
    }
}

/// A copy within one allocation still behaves like memmove when the pipeline is forced (it
/// never takes the pipeline), and the switch can be turned off again.
#[test]
fn forced_pipeline_keeps_memmove_and_switches_back() {
    let Some(e) = engine("auto") else { return };
    e.force_cross_device("host-import", true).unwrap();
    let size = 5 * SLOT + 3;
    let n = size as usize;
    let a = e.allocate(0, size, true).unwrap();
    let data = pattern(n, 7);
    e.write(a, 0, &data).unwrap();
    e.copy(a, 0, a, 1000, size - 1000).unwrap();
    let mut expect = data.clone();
    expect.copy_within(0..n - 1000, 1000);
    assert!(common::read(&e, a, 0, n) == expect);
    assert_eq!(e.stats(0).unwrap().cross_device_bytes, 0);
    let b = e.allocate(0, size, true).unwrap();
    e.copy(a, 0, b, 0, size).unwrap();
    assert_eq!(e.stats(0).unwrap().cross_device_bytes, size);
    e.force_cross_device("auto", false).unwrap();
    e.copy(b, 1, a, 0, 100).unwrap();
    assert_eq!(e.stats(0).unwrap().cross_device_bytes, size);
    assert!(matches!(
        e.force_cross_device("teleport", true),
        Err(EngineError::InvalidArgument(_))
    ));
    finish(e);
}

#[test]
fn pipeline_errors_write_nothing() {
    let Some(e) = engine("auto") else { return };
    e.force_cross_device("host-staging", true).unwrap();
    let a = e.allocate(0, 1000, true).unwrap();
    let b = e.allocate(0, 1000, true).unwrap();
    e.write(b, 0, &pattern(1000, 4)).unwrap();
    assert!(matches!(
        e.copy(a, 1, b, 0, 1000),
        Err(EngineError::OutOfBounds(_))
    ));
    assert!(matches!(
        e.copy(a, 0, b, 1, 1000),
        Err(EngineError::OutOfBounds(_))
    ));
    assert!(common::read(&e, b, 0, 1000) == pattern(1000, 4));
    e.free(a).unwrap();
    assert_eq!(
        e.copy(a, 0, b, 0, 10),
        Err(EngineError::InvalidAllocation(a))
    );
    e.copy(b, 0, b, 0, 0).unwrap();
    finish(e);
}

/// Copies in both directions at once (each direction its own pair of allocations), beside
/// host transfers to the same device: none deadlocks, every byte lands.
fn concurrent(e: &Engine, x: usize, y: usize) {
    let size = 9 * SLOT + 77;
    let n = size as usize;
    std::thread::scope(|s| {
        for (t, (from, to)) in [(x, y), (y, x), (x, y), (y, x)].into_iter().enumerate() {
            s.spawn(move || {
                let a = e.allocate(from, size, true).unwrap();
                let b = e.allocate(to, size, true).unwrap();
                for round in 0..6u8 {
                    let data = pattern(n, round ^ (t as u8 * 16));
                    e.write(a, 0, &data).unwrap();
                    e.copy(a, 0, b, 0, size).unwrap();
                    assert!(common::read(e, b, 0, n) == data, "thread {t} round {round}");
                }
                e.free(a).unwrap();
                e.free(b).unwrap();
            });
        }
        s.spawn(move || {
            let h = e.allocate(x, 3 * SLOT, true).unwrap();
            for round in 0..20u8 {
                let data = pattern(3 * SLOT as usize, round);
                e.write(h, 0, &data).unwrap();
                assert!(common::read(e, h, 0, data.len()) == data);
            }
            e.free(h).unwrap();
        });
    });
}

#[test]
fn concurrent_copies_do_not_deadlock() {
    for path in PATHS {
        let Some(e) = engine("auto") else { return };
        e.force_cross_device(path, true).unwrap();
        concurrent(&e, 0, 0);
        let count = e.device_count().unwrap();
        if count >= 2 {
            concurrent(&e, 0, 1);
        }
        finish(e);
    }
}

/// Two or more devices (the GPU machine): the real pairs, each path, both directions.
#[test]
fn across_real_devices() {
    let Some(e) = engine("auto") else { return };
    let count = e.device_count().unwrap();
    for i in 0..count {
        let info = e.device_info(i).unwrap();
        assert!(info.device_group.contains(&i), "{:?}", info.device_group);
    }
    if count < 2 {
        eprintln!("note: one Vulkan device; the forced tests cover the pipeline");
        finish(e);
        return;
    }
    let planned = e.cross_device_path(0, 1).unwrap();
    assert!(
        ["p2p", "host-import", "host-staging"].contains(&planned),
        "{planned}"
    );
    exact_between(&e, 0, 1, "auto 0<->1");
    assert!(e.stats(1).unwrap().cross_device_bytes > 0);
    for path in PATHS {
        e.force_cross_device(path, false).unwrap();
        exact_between(&e, 0, 1, path);
        exact_between(&e, 1, 0, path);
    }
    finish(e);
}
