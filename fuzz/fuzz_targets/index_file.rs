//! Every byte sequence an index file could hold: parsing returns an error or a consistent
//! snapshot, never a panic or an out-of-bounds read.
//!
//!     cargo +nightly fuzz run index_file
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hoardfs::cache::format::IndexHeader::decode(data);
    let dir = std::env::temp_dir().join(format!("hoardfs-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("x.idx");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(snap) = hoardfs::cache::index::ObjectIndex::read_snapshot(&path) {
            let n = snap.header.block_count();
            let _ = (0..n.min(4096)).map(|b| snap.is_present(b)).count();
            let _ = snap.present_count();
        }
    }
});
