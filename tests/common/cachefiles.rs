//! A cache dir's data files as the tests see them: found on disk, evicted from the page cache,
//! and asked how much of each is in memory (`mincore`).

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Every file under `root`, at any depth, whose extension is `ext`.
pub fn find_files(root: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out
}

/// Every data file of the cache at `cache`.
pub fn data_files(cache: &Path) -> Vec<PathBuf> {
    find_files(&cache.join("objects"), "data")
}

/// Each object's data file in the cache at `cache`, found by its bytes. It reads every data file,
/// so call it before evicting any.
pub fn data_file_of_each(cache: &Path, objects: &[(String, Vec<u8>)]) -> Vec<PathBuf> {
    let files = data_files(cache);
    objects
        .iter()
        .map(|(key, want)| {
            files.iter().find(|p| std::fs::read(p).unwrap() == *want).unwrap_or_else(|| panic!("no data file holds {key}")).clone()
        })
        .collect()
}

/// Drops `path`'s pages from the page cache (written back first: dirty pages cannot be dropped),
/// and fails loudly if any stay, since a test relying on it could then not tell.
pub fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: advice on a descriptor held open for the call.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(resident_pages(path).0, 0, "{} is still in the page cache after DONTNEED: this test cannot tell", path.display());
}

/// Pages of `path` in the page cache, and pages in all.
pub fn resident_pages(path: &Path) -> (usize, usize) {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    if len == 0 {
        return (0, 0);
    }
    // SAFETY: a read-only map of a cache file nothing writes while the test looks at it; only
    // its residency is read, never its bytes.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping, as mincore(2) requires.
    assert_eq!(unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) }, 0);
    (vec.iter().filter(|&&v| v & 1 == 1).count(), pages)
}
