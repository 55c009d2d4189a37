//! Pinned (engine-allocated) and registered (caller) host memory, and file reads straight into
//! device memory, under every transfer strategy. Every test skips with a note when no Vulkan
//! device (or the strategy) is usable here; no device fails under `EXO_GPU_REQUIRE_VULKAN=1`.

use std::io::Write;
use std::os::unix::io::AsRawFd;

mod common;

use common::{engine, finish, pattern, read};
use exo_vk_engine::EngineError;

const MIB: usize = 1 << 20;

fn pinned(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    let size = 20 * MIB + 7;
    let src = e.host_alloc(0, size as u64).unwrap();
    let dst = e.host_alloc(0, size as u64).unwrap();
    assert_eq!(src.len(), size);
    // SAFETY: the engine allocated `size` bytes at `as_ptr()`, alive while `src` lives.
    let s = unsafe { std::slice::from_raw_parts_mut(src.as_ptr(), size) };
    assert!(s.iter().all(|&b| b == 0), "pinned memory starts zeroed");
    s.copy_from_slice(&pattern(size, 5));
    let id = e.allocate(0, size as u64 + 100, true).unwrap();
    e.write(id, 100, s).unwrap();
    // SAFETY: as above, for `dst`.
    let d = unsafe { std::slice::from_raw_parts_mut(dst.as_ptr(), size) };
    e.read_into(id, 100, d).unwrap();
    assert!(d == s, "pinned round trip");
    // A sub-range of pinned memory is pinned too.
    e.read_into(id, 101, &mut d[3..1000]).unwrap();
    assert!(d[3..1000] == s[1..998]);
    let moved = e.stats(0).unwrap().pinned_bytes;
    if strategy != "mapped" {
        assert!(moved >= 2 * size as u64, "direct DMA used: {moved}");
    }
    e.host_release(src.id()).unwrap();
    assert!(matches!(
        e.host_release(src.id()),
        Err(EngineError::InvalidArgument(_))
    ));
    // Released memory stays valid and still works as an ordinary buffer.
    e.write(id, 100, s).unwrap();
    assert!(read(&e, id, 100, size) == s);
    e.free(id).unwrap();
    finish(e);
    // After close, the memory is still the caller's.
    s[0] = 1;
    d[0] = 2;
    assert_eq!((s[0], d[0]), (1, 2));
}

#[test]
fn pinned_staging() {
    pinned("staging");
}

#[test]
fn pinned_mapped() {
    pinned("mapped");
}

#[test]
fn pinned_import() {
    pinned("import");
}

fn registered(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    if e.device_info(0)
        .unwrap()
        .min_imported_host_pointer_alignment
        .is_none()
    {
        eprintln!("note: no VK_EXT_external_memory_host: registration unavailable");
        return;
    }
    let size = 20 * MIB + 3;
    let mut backing = pattern(size + 64, 8);
    let mut out_backing = vec![0u8; size + 64];
    // Deliberately unaligned starts.
    let (src, dst) = (&mut backing[13..13 + size], &mut out_backing[5..5 + size]);
    // SAFETY: both buffers outlive the registrations (unregistered / engine closed below).
    let rs = unsafe { e.host_register(0, src.as_mut_ptr(), size, Box::new(())) }.unwrap();
    // SAFETY: as above.
    let rd = unsafe { e.host_register(0, dst.as_mut_ptr(), size, Box::new(())) }.unwrap();
    // SAFETY: as above; overlapping registrations are refused.
    let again = unsafe { e.host_register(0, src.as_mut_ptr().add(10), 10, Box::new(())) };
    assert!(matches!(again, Err(EngineError::InvalidArgument(_))));
    let id = e.allocate(0, size as u64, true).unwrap();
    e.write(id, 0, src).unwrap();
    e.read_into(id, 0, dst).unwrap();
    assert!(dst == src, "registered round trip");
    if strategy != "mapped" {
        assert!(e.stats(0).unwrap().pinned_bytes >= 2 * size as u64);
    }
    e.host_unregister(rs).unwrap();
    assert!(e.host_unregister(rs).is_err());
    e.free(id).unwrap();
    let _ = rd; // released by close
    finish(e);
}

#[test]
fn registered_staging() {
    registered("staging");
}

#[test]
fn registered_mapped() {
    registered("mapped");
}

#[test]
fn registered_import() {
    registered("import");
}

fn from_file(strategy: &str) {
    let Some(e) = engine(strategy) else { return };
    let size = 40 * MIB + 3;
    let data = pattern(size, 21);
    let path =
        std::env::temp_dir().join(format!("exo-engine-file-{strategy}-{}", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&data))
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let fd = file.as_raw_fd();
    let id = e.allocate(0, size as u64 + 8, true).unwrap();
    let n = size - 11;
    e.write_from_file(id, 7, fd, 11, n as u64).unwrap();
    assert!(read(&e, id, 7, n) == data[11..], "file bytes in place");
    assert_eq!(read(&e, id, 0, 7), vec![0u8; 7]);
    // Past the end of the file: a short read.
    let r = e.write_from_file(id, 0, fd, 20, size as u64);
    assert!(matches!(r, Err(EngineError::FileRead(_))), "{r:?}");
    // Past the allocation: nothing read.
    let r = e.write_from_file(id, 9, fd, 0, size as u64);
    assert!(matches!(r, Err(EngineError::OutOfBounds(_))), "{r:?}");
    // File offsets past i64::MAX (off_t), or wrapping u64: nothing read.
    for (at, len) in [
        (i64::MAX as u64, 1),
        (i64::MAX as u64 - 100, 4096),
        (u64::MAX, 4096),
    ] {
        let r = e.write_from_file(id, 0, fd, at, len);
        assert!(
            matches!(r, Err(EngineError::OutOfBounds(_))),
            "{at}+{len}: {r:?}"
        );
    }
    // A descriptor that is not open (far above any this process uses).
    let r = e.write_from_file(id, 0, 1 << 20, 0, 4096);
    assert!(matches!(r, Err(EngineError::FileRead(_))), "{r:?}");
    drop(file);
    std::fs::remove_file(&path).unwrap();
    e.free(id).unwrap();
    finish(e);
}

#[test]
fn from_file_staging() {
    from_file("staging");
}

#[test]
fn from_file_mapped() {
    from_file("mapped");
}

#[test]
fn from_file_import() {
    from_file("import");
}
