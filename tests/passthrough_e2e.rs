//! FUSE passthrough: once an object is complete and verified (and its blocks were checked in
//! this mount), opens hand the kernel the cache file and reads never reach the daemon.

mod common;

use std::os::unix::fs::FileExt;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn complete_verified_objects_are_read_by_the_kernel_directly() {
    let server = S3Server::start();
    let body = bytes(3, 5 * MIB + 11);
    server.bucket("passthrough", &[("shard.tar", &body)]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mount = TestMount::new(&server, "passthrough", &cache, tmp.path());

    // First open: the daemon fetches, verifies and caches every block; mmap works on this
    // daemon-served (direct I/O) open too.
    let f = std::fs::File::open(mount.path("shard.tar")).unwrap();
    // SAFETY: the mapped file is on a read-only mount; nothing can change it under the map.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_same("epoch 1 through mmap, daemon path", &map[..], &body);
    drop((map, f));
    assert_eq!(mount.metric(|m| &m.passthrough_opens), 0);
    let hits = mount.metric(|m| &m.cache_hit_blocks);

    // Next open: passthrough. Reads (plain and at odd offsets) never reach the daemon.
    drop_page_cache();
    assert_same("epoch 2", &std::fs::read(mount.path("shard.tar")).unwrap(), &body);
    let f = std::fs::File::open(mount.path("shard.tar")).unwrap();
    let mut buf = vec![0u8; 3 * MIB];
    f.read_exact_at(&mut buf, 777_777).unwrap();
    assert_same("pread", &buf, &body[777_777..777_777 + 3 * MIB]);
    // SAFETY: as above.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_same("mmap, passthrough", &map[..], &body);
    drop(map);
    assert_eq!(mount.metric(|m| &m.passthrough_opens), 2);
    assert_eq!(mount.metric(|m| &m.cache_hit_blocks), hits, "no read reached the daemon");
    // Six blocks, one coalesced GET (verifying the object's checksum needs them all at once).
    assert_eq!(mount.gets(), 1);
    drop(f);
    mount.unmount();

    // After a remount every block's blake3 is checked once before the kernel gets the file:
    // at open (16 reads in flight) for objects up to 1 GiB, so even the first open is passthrough.
    let again = TestMount::new(&server, "passthrough", &cache, tmp.path());
    assert_same("remount, first open", &std::fs::read(again.path("shard.tar")).unwrap(), &body);
    assert_eq!(again.metric(|m| &m.passthrough_opens), 1);
    assert_eq!(again.metric(|m| &m.cache_hit_blocks), 6, "all six blocks were checked at open");
    assert_eq!(again.gets(), 0);
    again.unmount();

    // Past the at-open limit (lowered here to 8 MiB for a 9 MiB object), the first open after a
    // remount is served by the daemon while a background pass checks every block; the opens
    // after that pass are passthrough.
    let big = bytes(5, 9 * MIB);
    server.bucket("passthrough-big", &[("big.bin", &big)]);
    let cache = tmp.path().join("cache-big");
    TestMount::new(&server, "passthrough-big", &cache, tmp.path()).unmount_after(|m| {
        assert_same("fill", &std::fs::read(m.path("big.bin")).unwrap(), &big);
    });
    let m = TestMount::with(&server, "passthrough-big", &cache, tmp.path(), |c| c.check_at_open_max = 8 * MIB as u64);
    // One byte read: the other eight blocks are checked by the pass, not by reads.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut std::fs::File::open(m.path("big.bin")).unwrap(), &mut first).unwrap();
    assert_eq!(first[0], big[0]);
    assert_eq!(m.metric(|m| &m.passthrough_opens), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Waited for by its end, not by block reads counted: a prefetch of the reader's next blocks
    // may read (and count) a block the pass reads too, so 9 reads did not mean 9 blocks checked.
    while m.metric(|m| &m.check_passes) < 1 {
        assert!(std::time::Instant::now() < deadline, "the background pass never finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_same("remount, second open", &std::fs::read(m.path("big.bin")).unwrap(), &big);
    assert_eq!(m.metric(|m| &m.passthrough_opens), 1);
    assert_eq!(m.gets(), 0);
    m.unmount();

    // With the default limit the same object's first open after a remount is passthrough.
    let m = TestMount::new(&server, "passthrough-big", &cache, tmp.path());
    assert_same("remount, default limit", &std::fs::read(m.path("big.bin")).unwrap(), &big);
    assert_eq!(m.metric(|m| &m.passthrough_opens), 1);
}

#[test]
fn passthrough_can_be_turned_off() {
    let server = S3Server::start();
    let body = bytes(4, 2 * MIB);
    server.bucket("no-passthrough", &[("a", &body)]);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::with(&server, "no-passthrough", &tmp.path().join("cache"), tmp.path(), |c| c.passthrough = false);
    for _ in 0..3 {
        assert_same("a", &std::fs::read(mount.path("a")).unwrap(), &body);
    }
    assert_eq!(mount.metric(|m| &m.passthrough_opens), 0);
}

fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Many small files read by 8 threads, twice (the second time through passthrough): every
/// passthrough open is matched by its release once the files are closed. A release that reached
/// the daemon before the open was recorded used to be lost, pinning the backing for the whole
/// mount and making every later open scan past it.
#[test]
fn every_passthrough_open_is_released() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..600).map(|i| (format!("d/f{i:04}"), bytes(i, 4096 + i as usize))).collect();
    upload_many(&server, "released", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let mount = TestMount::new(&server, "released", &tmp.path().join("cache"), tmp.path());
    for _ in 0..2 {
        read_all_parallel(&mount.mountpoint, &objects, 8);
    }
    let opens = mount.metric(|m| &m.passthrough_opens);
    assert!(opens >= 600, "passthrough was not used ({opens} opens): the test proves nothing");
    // The kernel sends RELEASE after close(2) returns: wait for the count to catch up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mount.metric(|m| &m.passthrough_releases) < opens {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {opens} passthrough opens were released",
            mount.metric(|m| &m.passthrough_releases)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A warm epoch over more objects than the cache keeps open: every open is passthrough and the
/// daemon reads no block back, because the blocks were checked earlier in this mount (entries
/// that leave memory keep that fact). After a remount they are checked again, once.
#[test]
fn a_warm_epoch_past_the_entries_kept_open_reads_nothing_back() {
    let server = S3Server::start();
    // Above READ_AT_OPEN_MAX: smaller objects are read at every open on purpose (next test).
    let size = hoardfs::fs::READ_AT_OPEN_MAX as usize + 1;
    let objects: Vec<(String, Vec<u8>)> = (0..40).map(|i| (format!("d/f{i:03}"), bytes(i, size + i as usize))).collect();
    upload_many(&server, "warm-past-open", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let few_open = |c: &mut hoardfs::mount::MountConfig| c.cache.open_entries = 4;
    let mount = TestMount::with(&server, "warm-past-open", &cache, tmp.path(), few_open);
    read_all_parallel(&mount.mountpoint, &objects, 4);
    let (hits, opens) = (mount.metric(|m| &m.cache_hit_blocks), mount.metric(|m| &m.passthrough_opens));
    read_all_parallel(&mount.mountpoint, &objects, 4);
    assert_eq!(mount.metric(|m| &m.passthrough_opens) - opens, 40, "every warm open is passthrough");
    assert_eq!(mount.metric(|m| &m.cache_hit_blocks), hits, "the warm epoch read blocks back to check them again");
    assert_eq!(mount.gets(), 40);
    mount.unmount();

    let again = TestMount::with(&server, "warm-past-open", &cache, tmp.path(), few_open);
    for _epoch in 0..2 {
        read_all_parallel(&again.mountpoint, &objects, 4);
    }
    assert_eq!(again.metric(|m| &m.cache_hit_blocks), 40, "each block checked once in the new mount");
    assert_eq!(again.metric(|m| &m.passthrough_opens), 80);
    // Listed names and cached entries: every open, the first after the remount included (its one
    // block read and hashed there), is answered on the FUSE thread without a hand-off.
    assert_eq!(again.metric(|m| &m.fuse_opens_inline), 80);
    // A FLUSH at every close(2) is a round trip the reader waits for: the first is refused as
    // unneeded, so the kernel stops (closes racing that first answer may still send one each).
    let flushes = again.metric(|m| &m.fuse_flushes);
    assert!((1..=4).contains(&flushes), "{flushes} FLUSH requests for 80 closes by 4 readers");
    assert_eq!(again.gets(), 0);
}

/// Objects up to READ_AT_OPEN_MAX whose bytes are not in memory have their one block read and
/// hashed at every open, so the kernel's read finds it in memory; a block damaged on disk after
/// its check is caught at its next open in the same mount, and its reader still gets the right
/// bytes. Bytes already in memory are not read again.
#[test]
fn small_objects_are_read_and_checked_again_at_every_open_from_disk() {
    let server = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("s/f{i:02}"), bytes(i, 8192 + i as usize))).collect();
    upload_many(&server, "read-at-open", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // Without directory read-ahead, which would read (and check) the evicted files before
    // their opens do (tests/read_ahead_e2e.rs).
    let mount = TestMount::with(&server, "read-at-open", &cache, tmp.path(), |c| c.dir_read_ahead = 0);
    read_all_parallel(&mount.mountpoint, &objects, 4);
    let files = data_files(&cache);
    assert_eq!(files.len(), 20);
    let hits = || mount.metric(|m| &m.cache_hit_blocks);

    // In memory after the first epoch: the next opens read nothing back.
    let (before, opens) = (hits(), mount.metric(|m| &m.passthrough_opens));
    read_all_parallel(&mount.mountpoint, &objects, 4);
    assert_eq!(mount.metric(|m| &m.passthrough_opens) - opens, 20, "every warm open is passthrough");
    assert_eq!(hits(), before, "bytes in memory were read again");

    // Evicted: each open reads and checks its block, and leaves it in memory for the kernel.
    // Each file is evicted just before its open: evicted all at once, one of twenty was now and
    // then back in memory by its open (about one run in forty, before this change too), and
    // its open then rightly read nothing.
    let file_of = data_file_of_each(&cache, &objects);
    for ((key, want), file) in objects.iter().zip(&file_of) {
        evict(file);
        let before = hits();
        assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
        assert_eq!(hits() - before, 1, "the open of {key} read and checked its block");
    }

    // Damage one cached file on disk, out of memory as bit rot would be.
    let (key, want) = &objects[7];
    let damaged = &file_of[7];
    let mut bad = want.clone();
    bad[100] ^= 0xff;
    std::fs::write(damaged, &bad).unwrap();
    evict(damaged);
    let gets = mount.gets();
    assert_same(key, &std::fs::read(mount.path(key)).unwrap(), want);
    assert_eq!(mount.metric(|m| &m.blake3_mismatches), 1, "the damaged block was caught at its open");
    assert_eq!(mount.gets(), gets + 1, "and fetched again");
    mount.unmount();
}

/// After a remount with the page cache dropped, an open of a cached object of several blocks
/// reads every block back from disk, checks each, leaves the object in memory and hands it to
/// the kernel. A block damaged on disk is caught there, and only it is fetched again.
#[test]
fn multi_block_objects_on_disk_are_read_back_checked_and_left_in_memory() {
    let server = S3Server::start();
    let size = (2 << 20) + (600 << 10); // blocks of 1 MiB, 1 MiB and 600 KiB
    let objects: Vec<(String, Vec<u8>)> = (0..2).map(|i| (format!("m/f{i}"), bytes(i, size + i as usize))).collect();
    upload_many(&server, "multi-block-from-disk", &objects);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let quiet = |c: &mut hoardfs::mount::MountConfig| c.dir_read_ahead = 0; // each open reads for itself
    TestMount::with(&server, "multi-block-from-disk", &cache, tmp.path(), quiet)
        .unmount_after(|m| read_all_parallel(&m.mountpoint, &objects, 2));
    let file_of = data_file_of_each(&cache, &objects);
    // Bit rot in the last block of the second object; both out of memory, as after a reboot.
    let (rotten_key, rotten) = &objects[1];
    let mut bad = rotten.clone();
    bad[(2 << 20) + 12_345] ^= 0x01;
    std::fs::write(&file_of[1], &bad).unwrap();
    file_of.iter().for_each(|f| evict(f));

    let m = TestMount::with(&server, "multi-block-from-disk", &cache, tmp.path(), quiet);
    let (key, want) = &objects[0];
    let (hits, opens) = (m.metric(|m| &m.cache_hit_blocks), m.metric(|m| &m.passthrough_opens));
    assert_same(key, &std::fs::read(m.path(key)).unwrap(), want);
    assert_eq!(m.metric(|m| &m.cache_hit_blocks) - hits, 3, "the open read and checked each of the 3 blocks");
    assert_eq!(m.metric(|m| &m.passthrough_opens) - opens, 1, "and handed the object to the kernel");
    let (resident, pages) = resident_pages(&file_of[0]);
    assert_eq!(resident, pages, "the object is in memory for the kernel's reads");

    let gets = m.gets();
    assert_same(rotten_key, &std::fs::read(m.path(rotten_key)).unwrap(), rotten);
    assert_eq!(m.metric(|m| &m.blake3_mismatches), 1, "the damaged block was caught");
    assert_eq!(m.gets(), gets + 1, "and only it was fetched again");
    m.unmount();
}
