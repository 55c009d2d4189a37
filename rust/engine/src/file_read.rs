//! Reading a file range for a copy into device memory: parallel `pread` where the file is in the
//! page cache, `O_DIRECT` reads where it is not (a cold file then streams at the disk's rate with
//! no page-cache copy and no cache pollution). The caller's descriptor is borrowed, never closed;
//! direct reads go through a second descriptor of the same file, opened here.

use std::os::unix::fs::FileExt;
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{EngineError, Result};
use crate::tuning::tuning;
use crate::workers::{part_range, parts_for, workers, SendPtr};

/// Alignment of direct reads: file offset, length and buffer address (the largest logical
/// block size of common devices).
const DIRECT_ALIGN: usize = 4096;

/// Bytes of a staging slot a direct read may need beyond the data itself: the buffer's
/// alignment, the block before the first byte and the block after the last.
pub(crate) const DIRECT_HEADROOM: u64 = 3 * DIRECT_ALIGN as u64;

/// Bytes per direct read: a slot's reads are claimed by the pool's threads one at a time, so
/// several per thread keep the disk busy until the slot's last bytes arrive (one large read per
/// thread would leave the disk idle while the slowest finishes).
const DIRECT_PART: usize = 512 << 10;

/// Below this fraction of pages in the page cache a file range counts as cold (`tuning`
/// `file_direct=2`).
const COLD_BELOW: f64 = 0.5;

/// A file range being read: the caller's descriptor, and a direct one when the range is cold.
pub(crate) struct FileSource {
    fd: i32,
    direct: Option<std::fs::File>,
    /// A direct read was refused (alignment, or memory the kernel cannot pin for DMA, as a
    /// driver's VM_PFNMAP staging mapping): the rest of the copy reads buffered.
    refused: AtomicBool,
}

impl FileSource {
    /// Reads of `[at, at+size)` from `fd`. `staged`: the bytes go through staging slots, where
    /// direct reads are possible (`tuning` `file_direct`: 0 never, 1 always, 2 when cold, the
    /// default, and the range holds at least `direct_min` bytes).
    pub(crate) fn open(fd: i32, at: u64, size: u64, staged: bool) -> Result<FileSource> {
        if fd < 0 {
            return Err(EngineError::InvalidArgument(format!(
                "file descriptor must be >= 0, got {fd}"
            )));
        }
        let t = tuning();
        let wanted = staged
            && match t.file_direct {
                0 => false,
                1 => true,
                _ => {
                    size >= t.direct_min
                        && cached_fraction(fd, at, size).is_some_and(|f| f < COLD_BELOW)
                }
            };
        let direct = if wanted { open_direct(fd) } else { None };
        Ok(FileSource {
            fd,
            direct,
            refused: AtomicBool::new(false),
        })
    }

    /// Whether reads bypass the page cache.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Extra slot bytes `fill_slot` needs beyond the data.
    pub(crate) fn headroom(&self) -> u64 {
        if self.is_direct() {
            DIRECT_HEADROOM
        } else {
            0
        }
    }

    /// Fill `out` from file offset `at` by parallel buffered `pread`s.
    pub(crate) fn read_into(&self, out: &mut [u8], at: u64) -> Result<()> {
        pread_into(self.fd, out, at)
    }

    /// Read `len` bytes at file offset `at` into `slot` (which holds at least `len +
    /// headroom()` bytes); returns where in `slot` they start.
    pub(crate) fn fill_slot(&self, slot: &mut [u8], at: u64, len: usize) -> Result<usize> {
        let Some(direct) = self.direct.as_ref() else {
            self.read_into(&mut slot[..len], at)?;
            return Ok(0);
        };
        let lead = (at % DIRECT_ALIGN as u64) as usize;
        let first = at - lead as u64;
        let span = (lead + len).next_multiple_of(DIRECT_ALIGN);
        let pad = slot.as_ptr().align_offset(DIRECT_ALIGN);
        if pad + span > slot.len() {
            return Err(EngineError::Internal(format!(
                "direct read of {span} bytes does not fit a slot of {}",
                slot.len()
            )));
        }
        let window = &mut slot[pad..pad + span];
        // The bytes of the window that must arrive: up to the last requested one.
        let needed = lead + len;
        let parts = span.div_ceil(DIRECT_PART);
        let base = SendPtr(window.as_mut_ptr());
        workers().try_run(parts, &|i| {
            let (a, b) = part_range(span, parts, i);
            if a >= needed {
                return Ok(());
            }
            // SAFETY: `[a, b)` lies within the window and parts are disjoint.
            let part = unsafe { std::slice::from_raw_parts_mut(base.add(a), b - a) };
            self.read_direct(direct, part, first + a as u64, needed.min(b) - a)
        })?;
        Ok(pad + lead)
    }

    /// Direct-read into `buf` (aligned, whole blocks) from aligned file offset `at` until at
    /// least `want` bytes arrived; the file may end after `want` (the block's rest stays
    /// unread). A refused direct read (EINVAL: an alignment the device does not accept;
    /// EFAULT/EOPNOTSUPP: memory the kernel cannot pin for DMA) is redone buffered, and so is
    /// every later one of this copy.
    fn read_direct(
        &self,
        direct: &std::fs::File,
        buf: &mut [u8],
        at: u64,
        want: usize,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < want {
            let pos = at + done as u64;
            if self.refused.load(Ordering::Relaxed) {
                return pread_exact(self.fd, &mut buf[done..want], pos);
            }
            match direct.read_at(&mut buf[done..], pos) {
                Ok(0) => return Err(short_read(pos, at + want as u64)),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EFAULT | libc::EOPNOTSUPP)
                    ) =>
                {
                    self.refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(EngineError::FileRead(format!("read at byte {pos}: {e}"))),
            }
        }
        Ok(())
    }
}

/// The fraction of `[at, at+size)`'s pages in the page cache (`None`: unknown), from up to
/// `SAMPLES` evenly spaced windows of `WINDOW` pages: a long range costs a few dozen `mincore`
/// calls, not a walk over every page.
fn cached_fraction(fd: i32, at: u64, size: u64) -> Option<f64> {
    const SAMPLES: usize = 64;
    const WINDOW: usize = 64;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| *p > 0)?;
    let start = at / page as u64 * page as u64;
    if size == 0 {
        return None;
    }
    let len = usize::try_from(at + size - start).ok()?;
    let off = libc::off_t::try_from(start).ok()?;
    // SAFETY: a fresh read-only shared mapping of the caller's file, never dereferenced (only
    // passed to mincore) and unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            off,
        )
    };
    if map == libc::MAP_FAILED {
        return None;
    }
    let pages = len.div_ceil(page);
    let windows = pages.div_ceil(WINDOW).min(SAMPLES);
    // Windows never overlap: a short range is read whole, a long one at even spacing.
    let stride = (pages / windows).max(WINDOW);
    let mut resident = [0u8; WINDOW];
    let (mut seen, mut cached) = (0usize, 0usize);
    let mut ok = true;
    for w in 0..windows {
        let first = w * stride;
        let n = WINDOW.min(pages - first);
        let bytes = (n * page).min(len - first * page);
        // SAFETY: `[first*page, +bytes)` lies within the live mapping; `resident` holds one byte
        // for each of its `n` pages.
        let r = unsafe {
            libc::mincore(
                map.cast::<u8>().add(first * page).cast(),
                bytes,
                resident.as_mut_ptr(),
            )
        };
        if r != 0 {
            ok = false;
            break;
        }
        seen += n;
        cached += resident[..n].iter().filter(|r| **r & 1 != 0).count();
    }
    // SAFETY: the mapping made above, unused from here on.
    unsafe { libc::munmap(map, len) };
    (ok && seen > 0).then(|| cached as f64 / seen as f64)
}

/// A second descriptor of `fd`'s file opened with `O_DIRECT` (`None` where the file system
/// refuses it, for a descriptor that is not open for reading, and for anything but a regular file
/// or block device: reopening a FIFO could block).
fn open_direct(fd: i32) -> Option<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // SAFETY: F_GETFL on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE == libc::O_WRONLY {
        return None;
    }
    // SAFETY: as in `pread_exact`: the `File` is never dropped, so `fd` is only borrowed.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let kind = file.metadata().ok()?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return None;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()
}

fn short_read(pos: u64, end: u64) -> EngineError {
    EngineError::FileRead(format!(
        "short read: the file ends before byte {pos} (needed up to {end})"
    ))
}

/// Fill `out` with the bytes of file descriptor `fd` (>= 0: `FileSource::open` checked it) from
/// file offset `at`, by parallel `pread`s (several threads when large). A short read (end of
/// file) or an I/O error is `FileRead`. The descriptor is borrowed, never closed.
fn pread_into(fd: i32, out: &mut [u8], at: u64) -> Result<()> {
    let len = out.len();
    if at
        .checked_add(len as u64)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(EngineError::OutOfBounds(format!(
            "file offset {at} + {len} exceeds the largest file offset"
        )));
    }
    let parts = parts_for(len);
    let base = SendPtr(out.as_mut_ptr());
    workers().try_run(parts, &|i| {
        let (a, b) = part_range(len, parts, i);
        // SAFETY: `[a, b)` lies within `out` and parts are disjoint.
        let part = unsafe { std::slice::from_raw_parts_mut(base.add(a), b - a) };
        // Cannot overflow: `at + len <= i64::MAX` (checked above) and `a < len`.
        pread_exact(fd, part, at + a as u64)
    })
}

/// `pread` until `buf` is full: a short read or an I/O error is `FileRead`.
fn pread_exact(fd: i32, buf: &mut [u8], at: u64) -> Result<()> {
    // SAFETY: `fd >= 0` (checked by the callers); the `File` is never dropped (ManuallyDrop),
    // so the caller's descriptor is only borrowed, never closed. An invalid descriptor makes
    // `read_at` fail with EBADF.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut done = 0usize;
    while done < buf.len() {
        let pos = at + done as u64;
        match file.read_at(&mut buf[done..], pos) {
            Ok(0) => return Err(short_read(pos, at + buf.len() as u64)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EngineError::FileRead(format!("read at byte {pos}: {e}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample(len: usize) -> (std::fs::File, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        let path = std::env::temp_dir().join(format!("exo-file-read-{}-{len}", std::process::id()));
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&data).expect("write");
        drop(f);
        let f = std::fs::File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        (f, data)
    }

    #[test]
    fn direct_slot_fill_matches_buffered_at_odd_offsets() {
        use std::os::unix::io::AsRawFd;
        let len = 3 * 1024 * 1024 + 1234;
        let (f, data) = sample(len);
        let fd = f.as_raw_fd();
        let Some(file) = open_direct(fd) else {
            eprintln!(
                "O_DIRECT is not available in {:?}: skipped",
                std::env::temp_dir()
            );
            return;
        };
        let direct = FileSource {
            fd,
            direct: Some(file),
            refused: AtomicBool::new(false),
        };
        let mut slot = vec![0u8; 1024 * 1024 + DIRECT_HEADROOM as usize + 17];
        for (at, n) in [
            (0usize, 4096usize),
            (1, 1000),
            (4095, 1 << 20),
            (len - 300, 300),
            (12_345, 777_777),
        ] {
            let start = direct
                .fill_slot(&mut slot[17..], at as u64, n)
                .expect("fill");
            assert_eq!(
                &slot[17 + start..17 + start + n],
                &data[at..at + n],
                "at {at} len {n}"
            );
        }
        let err = direct.fill_slot(&mut slot[17..], (len - 10) as u64, 20);
        assert!(matches!(err, Err(EngineError::FileRead(_))), "{err:?}");
    }

    #[test]
    fn a_fresh_file_counts_as_cached() {
        use std::os::unix::io::AsRawFd;
        let (f, _) = sample(64 * 1024);
        // Just written: every page is in the page cache.
        let got = cached_fraction(f.as_raw_fd(), 0, 64 * 1024);
        assert_eq!(got, Some(1.0));
        let (big, _) = sample(9 * 1024 * 1024 + 5);
        assert_eq!(
            cached_fraction(big.as_raw_fd(), 4097, 9 * 1024 * 1024 - 4092),
            Some(1.0)
        );
    }

    #[test]
    fn an_evicted_file_counts_as_cold() {
        use std::os::unix::io::AsRawFd;
        let (f, _) = sample(8 * 1024 * 1024);
        let fd = f.as_raw_fd();
        // SAFETY: plain syscalls on a descriptor this test owns.
        unsafe {
            libc::fsync(fd);
            libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        let got = cached_fraction(fd, 0, 8 * 1024 * 1024);
        assert!(got.is_some_and(|x| x < COLD_BELOW), "{got:?}");
    }
}
