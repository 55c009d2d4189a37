//! What the unit tests share (the integration tests have the same in `tests/common`): a test
//! that finds no usable Vulkan device skips, unless `EXO_GPU_REQUIRE_VULKAN=1` (set by
//! `scripts/test.sh`), where it fails.

use crate::Engine;

/// `true` (after a note) when the caller may skip because Vulkan is not usable here; panics
/// instead when Vulkan is required.
pub(crate) fn skip_without_vulkan() -> bool {
    let Some(reason) = Engine::probe() else {
        return false;
    };
    assert!(
        !std::env::var("EXO_GPU_REQUIRE_VULKAN").is_ok_and(|v| v == "1"),
        "EXO_GPU_REQUIRE_VULKAN=1 but Vulkan is not usable: {reason}"
    );
    eprintln!("note: skipping Vulkan test: {reason}");
    true
}
