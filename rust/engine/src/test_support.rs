//! What the unit tests and the integration tests (`tests/common`, which includes this file)
//! share: a test that finds no usable Vulkan device skips, unless `EXO_GPU_REQUIRE_VULKAN=1`
//! (set by `scripts/test.sh`), where it fails. Free of crate imports, so both can include it.

/// `true` (after a note) when the caller may skip because Vulkan is not usable here (`probe`:
/// `Engine::probe()`, the reason or `None`); panics instead when Vulkan is required.
pub(crate) fn skip_without(probe: Option<String>) -> bool {
    let Some(reason) = probe else {
        return false;
    };
    assert!(
        !std::env::var("EXO_GPU_REQUIRE_VULKAN").is_ok_and(|v| v == "1"),
        "EXO_GPU_REQUIRE_VULKAN=1 but Vulkan is not usable: {reason}"
    );
    eprintln!("note: skipping Vulkan test: {reason}");
    true
}
