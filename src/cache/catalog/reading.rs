//! Reading the catalog's slabs with plain reads, beside a mount or before one: the scan at
//! mount, the checkpoint's keys, `cache stat` and `cache ls`. A slot being written by a mount at
//! that instant reads as damaged or not yet used.

use std::fs::File;
use std::path::Path;

use super::{slab_path, slab_sizes, SlotAt, SLOT_HEADER};
use crate::cache::ObjectId;

/// A used slot as read from a slab with plain reads.
pub struct SlotRead {
    /// Where it is.
    pub at: SlotAt,
    /// The id it claims.
    pub id: ObjectId,
    /// Its index bytes (not yet validated), or `None` if its length does not fit the slot.
    pub index: Option<Vec<u8>>,
}

/// Every used slot of `dir`'s catalog, read with plain reads (for the scan at mount and for
/// readers beside a mount, which see a slot being written as damaged or not yet used).
pub fn read_slots(dir: &Path) -> std::io::Result<Vec<SlotRead>> {
    let mut out = Vec::new();
    each_slot(dir, |at, id, index| out.push(SlotRead { at, id, index: index.map(<[u8]>::to_vec) }))?;
    Ok(out)
}

/// Calls `f` with every used slot of `dir`'s catalog, read as [`read_slots`] reads them, without
/// holding them all: the slot, the id, and the index bytes (`None` if the length overruns the
/// slot).
pub fn each_slot(dir: &Path, mut f: impl FnMut(SlotAt, ObjectId, Option<&[u8]>)) -> std::io::Result<()> {
    for size in slab_sizes(dir)? {
        read_slab_range(&slab_path(dir, size), size, 0..u32::MAX, &mut f)?;
    }
    Ok(())
}

/// [`each_slot`] on `threads` threads, each folding its share of every slab into its own `T`
/// (start from `init()`); returns the `T`s. Slots are visited in no particular order.
pub fn fold_slots<T: Send>(
    dir: &Path,
    threads: usize,
    init: impl Fn() -> T + Sync,
    f: impl Fn(&mut T, SlotAt, ObjectId, Option<&[u8]>) + Sync,
) -> std::io::Result<Vec<T>> {
    let threads = threads.max(1) as u32;
    let mut parts = Vec::new();
    for size in slab_sizes(dir)? {
        let slots = (std::fs::metadata(slab_path(dir, size))?.len() / size as u64).min(u32::MAX as u64) as u32;
        let per = slots.div_ceil(threads).max(1);
        parts.extend((0..threads).map(|t| (size, t.saturating_mul(per)..(t + 1).saturating_mul(per).min(slots))));
    }
    let (init, f) = (&init, &f);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as usize)
            .map(|t| {
                let mine: Vec<_> = parts.iter().skip(t).step_by(threads as usize).cloned().collect();
                s.spawn(move || -> std::io::Result<T> {
                    let mut acc = init();
                    for (size, range) in mine {
                        read_slab_range(&slab_path(dir, size), size, range, &mut |at, id, index| f(&mut acc, at, id, index))?;
                    }
                    Ok(acc)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("a catalog reader panicked")))).collect()
    })
}

/// Reads slots `range` of the slab at `path` (stopping at its end) with plain reads.
fn read_slab_range(
    path: &Path,
    size: u32,
    range: std::ops::Range<u32>,
    f: &mut impl FnMut(SlotAt, ObjectId, Option<&[u8]>),
) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    if range.is_empty() {
        return Ok(());
    }
    let mut file = File::open(path)?;
    file.seek(std::io::SeekFrom::Start(range.start as u64 * size as u64))?;
    let mut file = std::io::BufReader::with_capacity(1 << 20, file);
    let mut slot = vec![0u8; size as usize];
    for n in range {
        match file.read_exact(&mut slot) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(slot[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            continue;
        }
        let id = ObjectId(slot[8..40].try_into().expect("32 bytes"));
        f(SlotAt { size, slot: n }, id, slot.get(SLOT_HEADER..SLOT_HEADER + len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Catalog;
    use super::*;

    /// However many threads share the slabs, every used slot is folded exactly once.
    #[test]
    fn a_parallel_fold_visits_every_used_slot_once() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path(), []).unwrap();
        let mut held = Vec::new();
        for i in 0..700u32 {
            let slot = catalog.alloc(&ObjectId([(i % 251) as u8; 32]), &vec![i as u8; if i % 3 == 0 { 300 } else { 100 }]).unwrap();
            held.push(slot);
        }
        for slot in held.drain(..).step_by(7) {
            let at = slot.at();
            drop(slot);
            catalog.free(at);
        }
        let mut want: Vec<(SlotAt, Vec<u8>)> = read_slots(dir.path()).unwrap().into_iter().map(|s| (s.at, s.index.unwrap())).collect();
        want.sort();
        for threads in [1, 2, 3, 16] {
            let parts = fold_slots(dir.path(), threads, Vec::new, |v, at, _, index| v.push((at, index.unwrap().to_vec()))).unwrap();
            let mut got: Vec<(SlotAt, Vec<u8>)> = parts.into_iter().flatten().collect();
            got.sort();
            assert_eq!(got, want, "{threads} threads");
        }
    }
}
