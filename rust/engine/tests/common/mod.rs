//! Helpers shared by the engine's integration tests (each test binary includes this module).

#![allow(dead_code)] // each binary uses its own subset

use exo_vk_engine::{Engine, EngineError};

#[path = "../../src/test_support.rs"]
mod test_support;

/// `true` (after a note) when the caller may skip because Vulkan is not usable here; panics
/// instead when Vulkan is required (`EXO_GPU_REQUIRE_VULKAN=1`).
pub fn skip_without_vulkan() -> bool {
    test_support::skip_without(Engine::probe())
}

/// An engine with the given strategy, with validation when the layer is installed, or `None`
/// (after printing why) when Vulkan is not usable here (a failure when it is required), or when
/// the device lacks what "mapped" (host-visible device memory) or "import"
/// (VK_EXT_external_memory_host) need. Any other failure fails the test.
pub fn engine(strategy: &str) -> Option<Engine> {
    if skip_without_vulkan() {
        return None;
    }
    let attempt = match Engine::new(true, Some(strategy)) {
        Err(EngineError::Unavailable(m)) if m.contains("validation") => {
            eprintln!("note: VK_LAYER_KHRONOS_validation not installed; testing without it");
            Engine::new(false, Some(strategy))
        }
        other => other,
    };
    match attempt {
        Ok(e) => Some(e),
        Err(EngineError::Unavailable(m)) if matches!(strategy, "mapped" | "import") => {
            eprintln!("note: skipping {strategy} test: {m}");
            None
        }
        Err(e) => panic!("Engine::new failed: {e}"),
    }
}

/// Deterministic bytes that differ at every offset and between seeds.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// `len` bytes of allocation `id` from `off`, read into a buffer pre-filled with 0xAA.
pub fn read(e: &Engine, id: u64, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0xAAu8; len];
    e.read_into(id, off, &mut v).expect("read_into");
    v
}

/// No validation warnings, then close (twice: close is idempotent).
pub fn finish(e: Engine) {
    let warnings = e.take_validation_warnings();
    assert!(warnings.is_empty(), "validation warnings: {warnings:?}");
    e.close().expect("close");
    e.close().expect("close is idempotent");
}
