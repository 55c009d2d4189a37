//! A device hung by fault injection (every submission waits for a semaphore that is never
//! signalled): every call fails within one timeout, later calls fail at once, and nothing the
//! device may still touch is freed. Its own test binary: the hung device is leaked for the life
//! of the process.

#![cfg(feature = "fault-injection")]

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{engine, pattern, read};
use exo_vk_engine::EngineError;

const TIMEOUT: Duration = Duration::from_millis(400);

fn lost<T: std::fmt::Debug>(r: Result<T, EngineError>) {
    assert!(matches!(r, Err(EngineError::DeviceLost(_))), "{r:?}");
}

#[test]
fn hung_device_fails_every_call_within_one_timeout() {
    let Some(e) = engine("staging") else { return };
    let size = 24 << 20;
    let a = e.allocate(0, size, true).unwrap();
    let b = e.allocate(0, size, true).unwrap();
    let data = pattern(size as usize, 3);
    e.write(a, 0, &data).unwrap();
    let before = e.stats(0).unwrap();
    e.inject_hang(0, TIMEOUT).unwrap();

    // Several calls at once, each waiting on work that never finishes: together they take one
    // timeout, not one each (a wait returns as soon as another marks the device lost).
    let e = Arc::new(e);
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|k| {
            let e = Arc::clone(&e);
            let data = data.clone();
            std::thread::spawn(move || match k {
                0 => lost(e.write(b, 0, &data)),
                1 => {
                    let mut out = vec![0u8; size as usize];
                    lost(e.read_into(a, 0, &mut out));
                }
                2 => lost(e.copy(a, 0, b, 0, size)),
                _ => lost(e.allocate(0, 1 << 20, true)),
            })
        })
        .collect();
    for c in calls {
        c.join().unwrap();
    }
    let took = start.elapsed();
    assert!(
        took < TIMEOUT * 2,
        "hung calls took {took:?} (timeout {TIMEOUT:?})"
    );

    // Later calls fail at once.
    let start = Instant::now();
    lost(e.write(a, 0, &[1, 2, 3]));
    lost(e.synchronize(0));
    lost(e.allocate(0, 64, true));
    assert!(start.elapsed() < TIMEOUT, "later calls waited");
    // Freeing is accepted but leaks: the device may still touch the memory.
    e.free(a).unwrap();
    e.free(b).unwrap();
    assert!(before.allocator_allocated_bytes >= 2 * size);
    let e = Arc::into_inner(e).expect("threads joined");
    e.close().unwrap();

    // A new engine gets a fresh, working device.
    let Some(e2) = engine("staging") else { return };
    let id = e2.allocate(0, 1 << 20, true).unwrap();
    let fresh = pattern(1 << 20, 9);
    e2.write(id, 0, &fresh).unwrap();
    assert!(read(&e2, id, 0, 1 << 20) == fresh);
    e2.close().unwrap();
}
