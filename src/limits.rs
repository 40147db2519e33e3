//! The open-file budget: how many descriptors this process may hold, and how the pools that hold
//! them (cache entries kept open, passthrough backings) are sized from it.
//!
//! Most login shells and systemd services start with a soft `RLIMIT_NOFILE` of 1024, which a
//! training epoch over thousands of files exceeds if every pool assumes it is alone. At start
//! the soft limit is raised to the hard one (what `ulimit -Sn unlimited` would do, no privilege
//! needed), and every pool is sized from what results; hitting EMFILE anyway degrades (fewer
//! entries kept open) and never destroys cached data.

/// Descriptors kept free for everything that is not a pool: FUSE channels (one per thread),
/// S3 connections (at most `--max-concurrent-gets` GETs plus metadata requests), io_uring,
/// the log, the lock, the catalog's slabs, the metrics listener.
const RESERVED: u64 = 256;
/// The largest number of cache entries kept open, however high the limit. Default: 4096.
pub const MAX_OPEN_ENTRIES: usize = 4096;
/// The smallest, however low the limit: below this an epoch reopens entries constantly.
const MIN_OPEN_ENTRIES: usize = 16;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force after.
/// Never fails: if the limit cannot be read or raised, the one in force is used.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write or read the struct we own; no other memory is involved.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The current soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// How many cache entries (each holding its data file open) may stay open under `limit`
/// descriptors: three quarters of what the reserve leaves, within
/// [`MIN_OPEN_ENTRIES`]..=[`MAX_OPEN_ENTRIES`]. With the common 1024: 576.
pub fn open_entries_for(limit: u64) -> usize {
    let spare = limit.saturating_sub(RESERVED) * 3 / 4;
    usize::try_from(spare).unwrap_or(usize::MAX).clamp(MIN_OPEN_ENTRIES, MAX_OPEN_ENTRIES)
}

/// Whether an I/O error means "out of descriptors" (this process's or the system's): a reason
/// to shed open entries and retry, never a sign of damage.
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_fit_the_common_limits() {
        assert_eq!(open_entries_for(1024), 576);
        assert_eq!(open_entries_for(1 << 20), MAX_OPEN_ENTRIES);
        assert_eq!(open_entries_for(64), MIN_OPEN_ENTRIES);
        // The pool plus the reserve never exceeds the limit once it is above the floor.
        for limit in [512u64, 1024, 4096, 8192] {
            assert!(open_entries_for(limit) as u64 + RESERVED <= limit, "{limit}");
        }
    }

    #[test]
    fn emfile_and_enfile_are_exhaustion_and_eio_is_not() {
        assert!(is_fd_exhaustion(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_fd_exhaustion(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_fd_exhaustion(&std::io::Error::from_raw_os_error(libc::EIO)));
    }
}
