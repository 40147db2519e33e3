//! Read-ahead for sequential readers: each open file has a [`Prefetcher`] that, after every
//! read, says which blocks the fetcher should bring in before they are asked for.
//!
//! The rule is small on purpose. A read that starts exactly where the previous one ended is
//! sequential, and extends the reader's *run*: the bytes it has read in sequence. The window
//! ahead of the reader is as long as its run (rounded up to whole blocks), up to a maximum, so
//! it grows with a reader that keeps going (as rclone's chunks and Mountpoint's read window do)
//! while a reader that stops early has caused about as many extra bytes as it read at most (plus
//! the rounding to a whole GET). Any other read ends the run, so a shuffled reader of small files
//! or a random reader of a large one causes no extra GETs. The window's end is rounded up to a
//! whole GET, so a sequential reader's misses arrive in a few large GETs instead of one per block.
//!
//! Why the window must grow: a GET to S3 waits tens of milliseconds for its first byte, so one
//! reader is only as fast as the GETs it keeps in flight. 1 GiB read in 1 MiB reads, cold, from
//! the bench server answering every GET 30 ms late (`benches/seqread.sh`, medians of 3): 120 MB/s
//! with the old window of at most 8 blocks, 242 MB/s with this one; 16 parallel 8 MiB GETs of the
//! same bytes, 362 MB/s.

use std::ops::Range;
use std::sync::Mutex;

/// Read-ahead tuning for sequential readers.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefetchConfig {
    /// Most blocks fetched ahead of a sequential reader; `Some(0)` disables read-ahead. `None`
    /// (the default): as many as the fetcher's read-ahead GETs carry at once
    /// ([`crate::fetch::Fetcher::prefetch_capacity`]), 96 MiB with the default limits.
    pub max_blocks: Option<u64>,
}

/// One open file's read-ahead state.
#[derive(Debug, Default)]
pub struct Prefetcher {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Offset at which the next read counts as sequential: where the last one ended.
    next: u64,
    /// Where the current sequential run began.
    run_start: u64,
    /// First block past what this run has already asked for: each read asks only for the part
    /// of its window beyond it.
    asked: u64,
}

impl Prefetcher {
    /// After a read of bytes `range`: the blocks to fetch ahead, at most `max_blocks` past the
    /// read's last block, rounded up so they end on a multiple of `per_get` blocks, or `None`.
    /// Blocks this run asked for already are left out; the caller drops blocks past the
    /// object's end and those already present or coming.
    pub fn after_read(&self, range: Range<u64>, block_size: u64, max_blocks: u64, per_get: u64) -> Option<Range<u64>> {
        let last = range.end.saturating_sub(1) / block_size;
        let mut w = self.window.lock().unwrap();
        let sequential = range.start == w.next && range.start != 0;
        if !sequential {
            *w = Window { next: range.end, run_start: range.start, asked: 0 };
            return None;
        }
        w.next = range.end;
        let ahead = (range.end - w.run_start).div_ceil(block_size).min(max_blocks);
        if ahead == 0 {
            return None;
        }
        let end = (last + 1 + ahead).next_multiple_of(per_get.max(1));
        let start = (last + 1).max(w.asked);
        w.asked = w.asked.max(end);
        (start < end).then_some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Reads of `len` bytes one after another from offset 0, 1 MiB blocks.
    fn sequential(p: &Prefetcher, reads: u64, len: u64, max_blocks: u64, per_get: u64) -> Vec<Option<Range<u64>>> {
        (0..reads).map(|i| p.after_read(i * len..(i + 1) * len, MIB, max_blocks, per_get)).collect()
    }

    #[test]
    fn a_sequential_reader_s_window_grows_with_what_it_has_read() {
        let got = sequential(&Prefetcher::default(), 12, MIB, 8, 1);
        // The first read (at 0) proves nothing. After k blocks read in sequence the window runs
        // k blocks past the last one read, until it is 8 long; each read asks for the new part.
        let want = [None, Some(2..4), Some(4..6), Some(6..8), Some(8..10), Some(10..12), Some(12..14), Some(14..16)];
        assert_eq!(got[..8], want);
        assert_eq!(got[8..], [Some(16..17), Some(17..18), Some(18..19), Some(19..20)], "at the maximum it slides a block a read");
    }

    #[test]
    fn a_reader_that_stops_has_caused_at_most_as_many_extra_blocks_as_it_read() {
        for reads in 1..64 {
            let p = Prefetcher::default();
            let asked_end = sequential(&p, reads, MIB, u64::MAX, 1).into_iter().flatten().map(|r| r.end).max().unwrap_or(0);
            let extra = asked_end.saturating_sub(reads);
            assert!(extra <= reads, "{reads} blocks read, {extra} more asked for");
        }
    }

    #[test]
    fn a_read_elsewhere_ends_the_run() {
        let p = Prefetcher::default();
        sequential(&p, 4, MIB, 8, 1);
        assert_eq!(p.after_read(100 * MIB..101 * MIB, MIB, 8, 1), None, "a jump is not sequential");
        assert_eq!(p.after_read(101 * MIB..102 * MIB, MIB, 8, 1), Some(102..104), "a new run starts small");
    }

    #[test]
    fn the_window_ends_on_a_whole_get_and_is_asked_for_once() {
        let p = Prefetcher::default();
        p.after_read(0..MIB, MIB, 8, 8);
        // Two blocks ahead of block 1 would be 2..4; with GETs of 8 blocks it runs to block 8.
        assert_eq!(p.after_read(MIB..2 * MIB, MIB, 8, 8), Some(2..8));
        assert_eq!(p.after_read(2 * MIB..3 * MIB, MIB, 8, 8), None, "3 ahead of block 2 is inside what was asked");
        assert_eq!(p.after_read(3 * MIB..4 * MIB, MIB, 8, 8), None, "so is 4 ahead of block 3");
        assert_eq!(p.after_read(4 * MIB..5 * MIB, MIB, 8, 8), Some(8..16), "5 ahead of block 4 needs the next GET");
    }

    #[test]
    fn a_maximum_of_zero_disables_read_ahead() {
        let got = sequential(&Prefetcher::default(), 5, MIB, 0, 1);
        assert!(got.iter().all(Option::is_none), "{got:?}");
    }

    #[test]
    fn small_reads_inside_one_block_still_count_as_sequential() {
        // 128 KiB reads, as the kernel sends them: the second asks for the next block, and the
        // reads after it, still inside block 0, ask for nothing new.
        let got = sequential(&Prefetcher::default(), 4, 128 << 10, 8, 1);
        assert_eq!(got, vec![None, Some(1..2), None, None]);
    }
}
