//! Whether a cache file's bytes are in the page cache, asked the way that also starts reading
//! them.
//!
//! The open path asks this of every small file it may hand to the kernel (`fs::open`), and a
//! directory pass of every file it is about to read (`fs::ahead`): bytes on disk only mean a
//! reader is about to wait. The question is a one-byte read that may not wait
//! (`preadv2(RWF_NOWAIT)`). On a miss the kernel starts its synchronous read-ahead of the file's
//! start before it answers `EAGAIN` (`filemap_get_pages`), so the probe also *begins* the read it
//! detects: 16 KiB at the file's start, with the read-ahead mark that lets the kernel grow its
//! window as the reader goes on.
//!
//! That side effect is wanted, and measured: every caller reads the file next. `cachestat(2)`
//! (Linux 6.5) answers the same question and reads nothing; with it instead, 2,000 × 2 MiB files
//! ran at 0.85x raw disk after a remount against 1.10x with this probe, and at 0.91x against
//! 1.07x warm (medians of 3 and 2 interleaved rounds; docs/DESIGN.md, "The probe that reads").
//! 128 KiB files, CPU-bound on two cores, measured the same either way, although the probe splits
//! each file's read into ~3 disk requests instead of 1.

use std::os::fd::AsRawFd;

/// Whether the first page of `file` is in the page cache; if not, the kernel has started to read
/// the file's start (see the module's note). `false` also when the kernel cannot say, which
/// costs a read that was not needed and nothing else.
pub fn first_page_resident_or_start_reading(file: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    let iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    // SAFETY: one iovec over a byte this frame owns, on a descriptor the caller holds open.
    unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) == 1 }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Pages of `file`'s first `len` bytes in the page cache (`mincore` over a map of it).
    fn resident_pages(file: &std::fs::File, len: usize) -> usize {
        // SAFETY: a read-only map of a file this test owns; only its residency is read.
        let map = unsafe { memmap2::Mmap::map(file) }.unwrap();
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `vec` has one byte per page of the range, as mincore(2) requires.
        assert_eq!(unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) }, 0);
        vec.iter().filter(|&&v| v & 1 == 1).count()
    }

    /// The probe answers, and on a miss starts the read it found missing: the callers rely on
    /// that (the module's note has the measurement). A probe changed to one that reads nothing
    /// fails here.
    #[test]
    fn a_probe_that_misses_starts_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 256 * 1024]).unwrap();
        f.sync_all().unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert!(first_page_resident_or_start_reading(&f), "a file just written is in memory");
        // SAFETY: advice on a descriptor this test holds open.
        assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        if resident_pages(&f, 4096) > 0 {
            eprintln!("SKIPPED: the page cache kept the file after DONTNEED; nothing to check");
            return;
        }
        assert!(!first_page_resident_or_start_reading(&f), "an evicted file is on disk only");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while resident_pages(&f, 4096) == 0 {
            assert!(std::time::Instant::now() < deadline, "the probe's miss started no read of the file's start");
            std::thread::yield_now();
        }
        assert!(first_page_resident_or_start_reading(&f), "the read the probe started is seen by the next probe");
    }
}
