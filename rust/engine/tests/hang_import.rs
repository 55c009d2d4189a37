//! A device hung (fault injection) while DMAs straight to or from the caller's own pages (the
//! "import" strategy) were in flight: those calls report `DeviceLostInFlight`, so the caller
//! keeps its memory; calls refused before any DMA report a plain `DeviceLost` (the memory is
//! free to go). Its own test binary: the hung device is leaked for the life of the process.

#![cfg(feature = "fault-injection")]

use std::time::Duration;

mod common;

use common::{engine, pattern};
use exo_vk_engine::EngineError;

#[test]
fn import_dma_in_flight_is_reported() {
    let Some(e) = engine("import") else { return };
    let size = 32 << 20;
    let a = e.allocate(0, size, true).unwrap();
    let data = pattern(size as usize, 5);
    e.write(a, 0, &data).unwrap();
    let before = e.stats(0).unwrap();
    assert!(
        before.imported_bytes > 0,
        "the write did not take the import path: {before:?}"
    );
    e.inject_hang(0, Duration::from_millis(300)).unwrap();
    let r = e.write(a, 0, &data);
    assert!(
        matches!(r, Err(EngineError::DeviceLostInFlight(_))),
        "{r:?}"
    );
    assert!(r.unwrap_err().caller_memory_in_use());
    // Refused before any DMA: the caller's buffer is not in use.
    let mut out = vec![0u8; size as usize];
    let r = e.read_into(a, 0, &mut out);
    assert!(matches!(r, Err(EngineError::DeviceLost(_))), "{r:?}");
    assert!(r.as_ref().unwrap_err().is_device_lost());
    assert!(!r.unwrap_err().caller_memory_in_use());
    e.free(a).unwrap();
    e.close().unwrap();
}
