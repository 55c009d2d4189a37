//! The parallel copy and fill kernels built on the `workers` pool: non-temporal (SSE2) stores
//! for large copies, streaming (SSE4.1) loads out of uncached memory such as a GPU's BAR,
//! parallel zeroing, and transparent huge pages for fresh memory.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use crate::tuning::tuning;
use crate::workers::{part_range, parts_for, workers, SendPtr};

thread_local! {
    /// Set while this thread fills a fresh (never touched) destination: its pages are faulted in
    /// by the copy itself, and the kernel has just zeroed each page into the cache, so plain
    /// stores beat non-temporal ones there.
    static FRESH: Cell<bool> = const { Cell::new(false) };
}

/// While alive, copies made by this thread treat their destination as fresh memory.
pub(crate) struct FreshDestination(bool);

impl FreshDestination {
    pub(crate) fn enter() -> FreshDestination {
        FreshDestination(FRESH.with(|f| f.replace(true)))
    }
}

impl Drop for FreshDestination {
    fn drop(&mut self) {
        FRESH.with(|f| f.set(self.0));
    }
}

/// Copy `len` bytes from `src` to `dst` (non-overlapping), on several threads when large.
///
/// # Safety
/// `src` must be valid for reading and `dst` for writing `len` bytes, the ranges must not
/// overlap, and nobody else may write them during the call.
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    let t = tuning();
    let streaming = t.nt_min > 0 && len as u64 >= t.nt_min && !FRESH.with(Cell::get);
    let parts = parts_for(len);
    if parts <= 1 {
        // SAFETY: per the function contract.
        unsafe { copy_part(dst, src, len, streaming) };
        drain_write_combining();
        return;
    }
    let (d, s) = (SendPtr(dst), SendPtr(src.cast_mut()));
    workers().run(parts, &move |i| {
        let (a, b) = part_range(len, parts, i);
        // SAFETY: `[a, b)` lies within both ranges (contract) and parts are disjoint.
        unsafe { copy_part(d.add(a), s.add(a), b - a, streaming) };
        drain_write_combining();
    });
}

/// One thread's share of a copy: with `streaming`, non-temporal stores, which write whole lines
/// without first reading them into the cache (a plain store to a line not in cache reads it
/// first: a third of a large memcpy's memory traffic), and do not evict the cache for data that
/// is not read again soon.
///
/// # Safety
/// As `copy`.
unsafe fn copy_part(dst: *mut u8, src: *const u8, len: usize, streaming: bool) {
    #[cfg(target_arch = "x86_64")]
    if streaming {
        // SAFETY: SSE2 is part of x86_64; ranges per the function contract.
        unsafe { copy_nt_sse2(dst, src, len) };
        return;
    }
    let _ = streaming;
    // SAFETY: per the function contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(target_arch = "x86_64")]
unsafe fn copy_nt_sse2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    // Head up to 16-byte alignment of the destination.
    let head = ((dst as usize).next_multiple_of(16) - dst as usize).min(len);
    // SAFETY: in-bounds per the function contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i + 64 <= len {
        // SAFETY: 64 in-bounds bytes; `dst + i` is 16-byte aligned, loads are unaligned.
        unsafe {
            let s = src.add(i) as *const __m128i;
            let a = _mm_loadu_si128(s);
            let b = _mm_loadu_si128(s.add(1));
            let c = _mm_loadu_si128(s.add(2));
            let e = _mm_loadu_si128(s.add(3));
            let o = dst.add(i) as *mut __m128i;
            _mm_stream_si128(o, a);
            _mm_stream_si128(o.add(1), b);
            _mm_stream_si128(o.add(2), c);
            _mm_stream_si128(o.add(3), e);
        }
        i += 64;
    }
    // SAFETY: the remaining tail is in bounds; the fence orders the streaming stores before
    // any later store (and the caller's completion signal).
    unsafe {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        _mm_sfence();
    }
}

/// Make this thread's stores globally visible, including those still sitting in write-combining
/// buffers (stores to a GPU's BAR): a full fence drains them on x86, so the caller (and, after
/// its queue submission, the device) sees every byte a worker wrote.
#[inline]
fn drain_write_combining() {
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Copy `len` bytes out of uncached (write-combined) memory, e.g. a GPU's BAR: ordinary loads
/// from such memory are serialised one small PCIe read at a time; streaming loads (SSE4.1
/// MOVNTDQA) fetch whole 64-byte lines. Falls back to `copy` where unsupported.
///
/// # Safety
/// As `copy`.
pub(crate) unsafe fn copy_from_uncached(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.1") {
            // SAFETY: the CPU supports SSE4.1; ranges per the function contract.
            unsafe { stream_copy_sse41(dst, src, len) };
            return;
        }
    }
    // SAFETY: per the function contract.
    unsafe { copy(dst, src, len) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn stream_copy_sse41(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_storeu_si128, _mm_stream_load_si128};
    // Head up to 16-byte alignment of the source.
    let head = (src as usize).next_multiple_of(16) - src as usize;
    let head = head.min(len);
    // SAFETY: in-bounds per the function contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while i + 64 <= len {
        // SAFETY: `src + i` is 16-byte aligned and 64 bytes are in bounds; stores are unaligned.
        unsafe {
            let s = src.add(i) as *mut __m128i;
            let a = _mm_stream_load_si128(s);
            let b = _mm_stream_load_si128(s.add(1));
            let c = _mm_stream_load_si128(s.add(2));
            let d = _mm_stream_load_si128(s.add(3));
            let o = dst.add(i) as *mut __m128i;
            _mm_storeu_si128(o, a);
            _mm_storeu_si128(o.add(1), b);
            _mm_storeu_si128(o.add(2), c);
            _mm_storeu_si128(o.add(3), d);
        }
        i += 64;
    }
    // SAFETY: the remaining tail is in bounds.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
}

/// Fill `len` bytes at `dst` with zeros, on several threads when large.
///
/// # Safety
/// `dst` must be valid for writing `len` bytes that nobody else accesses during the call.
pub(crate) unsafe fn zero(dst: *mut u8, len: usize) {
    let parts = parts_for(len);
    if parts <= 1 {
        // SAFETY: per the function contract.
        unsafe { std::ptr::write_bytes(dst, 0, len) };
        drain_write_combining();
        return;
    }
    let d = SendPtr(dst);
    workers().run(parts, &move |i| {
        let (a, b) = part_range(len, parts, i);
        // SAFETY: disjoint in-bounds part.
        unsafe { std::ptr::write_bytes(d.add(a), 0, b - a) };
        drain_write_combining();
    });
}

/// Ask the kernel for transparent huge pages under `[ptr, ptr+len)` before it is first touched:
/// filling fresh memory then takes one page fault per 2 MiB instead of one per 4 KiB (several
/// times faster). Only whole 2 MiB pages inside the range are affected; failure is ignored.
pub(crate) fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        if !tuning().hugepages || len < 4 * HUGE {
            return;
        }
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of this range, which lies
            // within memory the caller owns; it never changes contents of resident pages.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_copy_and_zero_are_exact() {
        let len = (9 << 20) + 12345;
        let src: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut dst = vec![0xEEu8; len];
        // SAFETY: both vectors hold `len` bytes and do not overlap.
        unsafe { copy(dst.as_mut_ptr(), src.as_ptr(), len) };
        assert!(dst == src);
        // SAFETY: `dst` holds `len - 7` bytes after offset 7.
        unsafe { zero(dst.as_mut_ptr().add(7), len - 7) };
        assert!(dst[..7] == src[..7] && dst[7..].iter().all(|&b| b == 0));
        for skew in [0usize, 3, 17] {
            let n = (3 << 20) + 5;
            let mut out = vec![0u8; n + 64];
            // SAFETY: `src[skew..]` holds `n` bytes; `out[1..]` holds `n`.
            unsafe { copy_part(out.as_mut_ptr().add(1), src.as_ptr().add(skew), n, true) };
            assert!(out[1..n + 1] == src[skew..skew + n] && out[0] == 0 && out[n + 1] == 0);
        }
        for skew in [0usize, 1, 15, 16, 63] {
            let n = 4096 + 77;
            let mut out = vec![0u8; n];
            // SAFETY: `src[skew..]` holds at least `n` bytes; `out` holds `n`.
            unsafe { copy_from_uncached(out.as_mut_ptr(), src.as_ptr().add(skew), n) };
            assert!(out[..] == src[skew..skew + n]);
        }
        for parts in 1..9 {
            let mut covered = 0;
            for i in 0..parts {
                let (a, b) = part_range(len, parts, i);
                assert_eq!(a, covered.min(len));
                covered = b;
            }
            assert_eq!(covered, len);
        }
    }
}
