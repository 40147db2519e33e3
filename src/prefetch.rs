//! Read-ahead for sequential readers: each open file has a [`Prefetcher`] that, after every
//! read, says which blocks the fetcher should bring in before they are asked for.
//!
//! The rule is small on purpose. A read that starts exactly where the previous one ended is
//! sequential: the window doubles (1, 2, 4, … blocks, up to [`PrefetchConfig::max_blocks`]).
//! Any other read resets it to nothing, so a shuffled reader of small files or a random reader
//! of a large one causes no extra GETs. The window's end is rounded up to a whole GET, so a
//! sequential reader's misses arrive in a few large GETs instead of one per block.

use std::ops::Range;
use std::sync::Mutex;

/// Read-ahead tuning for sequential readers.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchConfig {
    /// Most blocks fetched ahead of a sequential reader; 0 disables read-ahead. Default: 8
    /// (8 MiB with 1 MiB blocks).
    pub max_blocks: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self { max_blocks: 8 }
    }
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
    /// Blocks the last read fetched ahead (0: it was not sequential).
    blocks: u64,
}

impl Prefetcher {
    /// After a read of bytes `range`, whose last block is `last`: the blocks to fetch ahead,
    /// rounded up so they end on a multiple of `per_get` blocks, or `None`. The caller drops
    /// blocks past the object's end and those already present or coming.
    pub fn after_read(&self, range: Range<u64>, last: u64, config: PrefetchConfig, per_get: u64) -> Option<Range<u64>> {
        let blocks = {
            let mut w = self.window.lock().unwrap();
            let sequential = range.start == w.next && range.start != 0;
            let blocks = if sequential { (w.blocks * 2).max(1).min(config.max_blocks) } else { 0 };
            *w = Window { next: range.end, blocks };
            blocks
        };
        (blocks > 0).then(|| last + 1..(last + 1 + blocks).next_multiple_of(per_get.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const EIGHT: PrefetchConfig = PrefetchConfig { max_blocks: 8 };

    /// Reads of `len` bytes one after another from offset 0, 1 MiB blocks, GETs of one block.
    fn sequential(p: &Prefetcher, reads: u64, len: u64, config: PrefetchConfig) -> Vec<Option<Range<u64>>> {
        (0..reads).map(|i| p.after_read(i * len..(i + 1) * len, ((i + 1) * len - 1) / MIB, config, 1)).collect()
    }

    #[test]
    fn a_sequential_reader_s_window_doubles_up_to_the_maximum() {
        let got = sequential(&Prefetcher::default(), 6, MIB, EIGHT);
        // The first read (at 0) proves nothing; then 1, 2, 4, 8, 8 blocks past the one just read.
        assert_eq!(got, vec![None, Some(2..3), Some(3..5), Some(4..8), Some(5..13), Some(6..14)]);
    }

    #[test]
    fn a_read_elsewhere_resets_the_window() {
        let p = Prefetcher::default();
        sequential(&p, 4, MIB, EIGHT);
        assert_eq!(p.after_read(100 * MIB..101 * MIB, 100, EIGHT, 1), None, "a jump is not sequential");
        assert_eq!(p.after_read(101 * MIB..102 * MIB, 101, EIGHT, 1), Some(102..103), "it starts again from one block");
    }

    #[test]
    fn the_window_ends_on_a_whole_get() {
        let p = Prefetcher::default();
        p.after_read(0..MIB, 0, EIGHT, 8);
        // One block ahead of block 1 would be 2..3; with GETs of 8 blocks it runs to block 8.
        assert_eq!(p.after_read(MIB..2 * MIB, 1, EIGHT, 8), Some(2..8));
    }

    #[test]
    fn a_maximum_of_zero_disables_read_ahead() {
        let got = sequential(&Prefetcher::default(), 5, MIB, PrefetchConfig { max_blocks: 0 });
        assert!(got.iter().all(Option::is_none), "{got:?}");
    }

    #[test]
    fn small_reads_inside_one_block_still_count_as_sequential() {
        // 128 KiB reads, as the kernel sends them: the window grows while the reader stays in block 0.
        let got = sequential(&Prefetcher::default(), 4, 128 << 10, EIGHT);
        assert_eq!(got, vec![None, Some(1..2), Some(1..3), Some(1..5)]);
    }
}
