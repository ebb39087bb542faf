//! Power-cut scenarios through a real mount: what was synced survives a
//! SIGKILL of the filesystem and a remount, what was not is gone, and
//! before the cut every read sees the unsynced state. Each test also checks
//! the backing directory where that tells synced from unsynced directly.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::*;

const PAGE: usize = 4096;

fn rw(path: &std::path::Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn unsynced_writes_are_lost_synced_survive() {
    let Some(mut fx) = Fixture::new("unsynced_writes_are_lost_synced_survive") else {
        return;
    };
    let p = fx.path("f");
    let a = pattern(1, 10_000);
    let f = rw(&p);
    f.write_all_at(&a, 0).unwrap();
    f.sync_data().unwrap();
    // Overwrite the tail and extend: the view shows it, the backing not.
    let b = pattern(2, 5_000);
    f.write_all_at(&b, 8_000).unwrap();
    let mut view = a.clone();
    view.resize(13_000, 0);
    view[8_000..].copy_from_slice(&b);
    assert_eq!(fs::metadata(&p).unwrap().len(), 13_000);
    assert_eq!(fs::read(&p).unwrap(), view);
    assert_eq!(fs::read(fx.backing.join("f")).unwrap(), a);
    drop(f);

    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), a);

    // Now fsync (not fdatasync) the second write: it survives.
    let f = rw(&p);
    f.write_all_at(&b, 8_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), view);
}

#[test]
fn truncate_waits_for_fsync() {
    let Some(mut fx) = Fixture::new("truncate_waits_for_fsync") else {
        return;
    };
    let p = fx.path("t");
    let a = pattern(3, 8_192);
    write_synced(&p, &a);
    let f = rw(&p);
    f.set_len(100).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 100);
    f.set_len(5_000).unwrap();
    let mut view = a[..100].to_vec();
    view.resize(5_000, 0);
    assert_eq!(fs::read(&p).unwrap(), view);
    drop(f);
    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), a);

    let f = rw(&p);
    f.set_len(100).unwrap();
    f.sync_data().unwrap();
    f.set_len(0).unwrap();
    drop(f);
    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), &a[..100]);
}

#[test]
fn punch_hole_zero_range_and_allocate_wait_for_fsync() {
    let Some(mut fx) = Fixture::new("punch_hole_zero_range_and_allocate_wait_for_fsync") else {
        return;
    };
    let p = fx.path("h");
    let a = pattern(4, 3 * PAGE);
    write_synced(&p, &a);
    let f = rw(&p);
    fallocate(&f, PUNCH, PAGE as u64, PAGE as u64);
    // ZERO_RANGE past the end grows the file; plain allocate grows it more.
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE,
        2 * PAGE as u64 + 10,
        PAGE as u64,
    );
    fallocate(&f, 0, 0, 5 * PAGE as u64);
    let mut view = a.clone();
    view[PAGE..2 * PAGE].fill(0);
    view[2 * PAGE + 10..].fill(0);
    view.resize(5 * PAGE, 0);
    assert_eq!(fs::read(&p).unwrap(), view);
    assert_eq!(fs::read(fx.backing.join("h")).unwrap(), a);
    drop(f);
    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), a);

    let f = rw(&p);
    fallocate(&f, PUNCH, PAGE as u64, PAGE as u64);
    fdatasync(&f);
    fallocate(&f, PUNCH, 0, PAGE as u64);
    drop(f);
    fx.power_cut_and_remount();
    let mut synced = a.clone();
    synced[PAGE..2 * PAGE].fill(0);
    assert_eq!(fs::read(&p).unwrap(), synced);
}

#[test]
fn mmap_shared_writes_survive_only_when_synced() {
    let Some(mut fx) = Fixture::new("mmap_shared_writes_survive_only_when_synced") else {
        return;
    };
    let p = fx.path("m.crc");
    let a = vec![b'a'; 3 * PAGE];
    write_synced(&p, &a);
    let f = rw(&p);
    // SAFETY: mapping 3 pages of a file that long, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: the mapping is 3 pages long and only used through this slice.
    let map = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), 3 * PAGE) };
    map[..PAGE].fill(b'M');
    // SAFETY: msync of the first page of our mapping.
    assert_eq!(unsafe { libc::msync(ptr, PAGE, libc::MS_SYNC) }, 0);
    map[PAGE..2 * PAGE].fill(b'D');
    fdatasync(&f);
    map[2 * PAGE..].fill(b'U');
    // SAFETY: unmapping exactly the mapping made above; `map` is not used again.
    assert_eq!(unsafe { libc::munmap(ptr, 3 * PAGE) }, 0);
    // close() writes the dirty page back to the filesystem, unsynced.
    drop(f);

    let mut expect = [vec![b'M'; PAGE], vec![b'D'; PAGE], vec![b'U'; PAGE]].concat();
    assert_eq!(fs::read(&p).unwrap(), expect);
    let backing = fs::read(fx.backing.join("m.crc")).unwrap();
    expect[2 * PAGE..].fill(b'a');
    assert_eq!(
        backing, expect,
        "msync'd and fdatasync'd pages applied, the other not"
    );

    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), expect);
}

#[test]
fn pending_data_follows_renames() {
    let Some(mut fx) = Fixture::new("pending_data_follows_renames") else {
        return;
    };
    // Written, renamed, then fsync'd under the new name through a
    // read-only descriptor (fsync on one is allowed).
    let (old, new) = (pattern(5, 3_000), pattern(6, 4_000));
    write_synced(&fx.path("tmp"), &old);
    rw(&fx.path("tmp")).write_all_at(&new, 0).unwrap();
    fs::rename(fx.path("tmp"), fx.path("final")).unwrap();
    assert_eq!(fs::read(fx.path("final")).unwrap(), new);
    File::open(fx.path("final")).unwrap().sync_all().unwrap();

    // Written and renamed, never synced: the name moves, the data does not.
    let (old2, new2) = (pattern(7, 2_000), pattern(8, 2_500));
    write_synced(&fx.path("tmp2"), &old2);
    rw(&fx.path("tmp2")).write_all_at(&new2, 0).unwrap();
    fs::rename(fx.path("tmp2"), fx.path("final2")).unwrap();
    assert_eq!(fs::read(fx.path("final2")).unwrap(), new2);

    // Renamed over a file with pending data: the replaced file's changes
    // are gone with it; the survivor shows its own synced content.
    let (src, victim) = (pattern(9, 1_000), pattern(10, 1_500));
    write_synced(&fx.path("src"), &src);
    write_synced(&fx.path("victim"), &victim);
    rw(&fx.path("victim"))
        .write_all_at(&pattern(11, 9_000), 0)
        .unwrap();
    fs::rename(fx.path("src"), fx.path("victim")).unwrap();
    assert_eq!(fs::read(fx.path("victim")).unwrap(), src);

    // A directory with a file with pending data, renamed.
    fs::create_dir(fx.path("d")).unwrap();
    let in_dir = pattern(12, 5_000);
    rw(&fx.path("d/f")).write_all_at(&in_dir, 0).unwrap();
    fs::rename(fx.path("d"), fx.path("e")).unwrap();
    assert_eq!(fs::read(fx.path("e/f")).unwrap(), in_dir);
    File::open(fx.path("e/f")).unwrap().sync_data().unwrap();

    fx.power_cut_and_remount();
    assert!(!fx.path("tmp").exists() && !fx.path("tmp2").exists() && !fx.path("d").exists());
    assert_eq!(fs::read(fx.path("final")).unwrap(), new);
    assert_eq!(fs::read(fx.path("final2")).unwrap(), old2);
    assert_eq!(fs::read(fx.path("victim")).unwrap(), src);
    assert_eq!(fs::read(fx.path("e/f")).unwrap(), in_dir);
    let names: Vec<_> = fs::read_dir(fx.path("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["f"]);
}

/// A buffer of `len` bytes aligned for O_DIRECT, carved out of a larger Vec.
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.resize(len + PAGE, 0);
    let skip = buf.as_ptr().align_offset(PAGE);
    &mut buf[skip..skip + len]
}

#[test]
fn o_direct_write_and_fdatasync() {
    let Some(mut fx) = Fixture::new("o_direct_write_and_fdatasync") else {
        return;
    };
    let p = fx.path("wal");
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .expect("O_DIRECT open must be accepted");
    let (a, b) = (pattern(13, PAGE), pattern(14, PAGE));
    let mut storage = Vec::new();
    let buf = aligned(&mut storage, PAGE);
    buf.copy_from_slice(&a);
    f.write_all_at(buf, 0).unwrap();
    fdatasync(&f);
    buf.copy_from_slice(&b);
    f.write_all_at(buf, PAGE as u64).unwrap();
    let mut storage2 = Vec::new();
    let back = aligned(&mut storage2, 2 * PAGE);
    f.read_exact_at(back, 0).unwrap();
    assert_eq!(back, [a.clone(), b].concat());
    assert_eq!(fs::read(fx.backing.join("wal")).unwrap(), a);
    drop(f);
    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), a);
}

#[test]
fn unlinked_file_keeps_its_data_while_open() {
    let Some(mut fx) = Fixture::new("unlinked_file_keeps_its_data_while_open") else {
        return;
    };
    let p = fx.path("u");
    let data = pattern(15, 7_000);
    let f = rw(&p);
    f.write_all_at(&data, 0).unwrap();
    fs::remove_file(&p).unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, data);
    f.sync_data().unwrap();
    drop(f);
    // A new file of the same name starts empty, in the view and after a cut.
    let g = rw(&p);
    assert_eq!(g.metadata().unwrap().len(), 0);
    g.write_all_at(b"unsynced", 0).unwrap();
    drop(g);
    fx.power_cut_and_remount();
    assert_eq!(fs::read(&p).unwrap(), b"");
}

#[test]
fn copy_file_range_waits_for_fsync() {
    let Some(mut fx) = Fixture::new("copy_file_range_waits_for_fsync") else {
        return;
    };
    let src = pattern(16, 10_000);
    write_synced(&fx.path("src"), &src);
    write_synced(&fx.path("dst"), b"");
    let copy = |fx: &Fixture| {
        let (i, o) = (File::open(fx.path("src")).unwrap(), rw(&fx.path("dst")));
        let (mut off_in, mut off_out): (i64, i64) = (0, 0);
        while (off_in as usize) < src.len() {
            // SAFETY: two open descriptors and offsets we own.
            let n = unsafe {
                libc::copy_file_range(
                    i.as_raw_fd(),
                    &mut off_in,
                    o.as_raw_fd(),
                    &mut off_out,
                    src.len(),
                    0,
                )
            };
            assert!(
                n > 0,
                "copy_file_range: {}",
                std::io::Error::last_os_error()
            );
        }
        o
    };
    drop(copy(&fx));
    assert_eq!(fs::read(fx.path("dst")).unwrap(), src);
    assert_eq!(fs::read(fx.backing.join("dst")).unwrap(), b"");
    fx.power_cut_and_remount();
    assert_eq!(fs::read(fx.path("dst")).unwrap(), b"");

    copy(&fx).sync_data().unwrap();
    fx.power_cut_and_remount();
    assert_eq!(fs::read(fx.path("dst")).unwrap(), src);
}

#[test]
fn clean_unmount_writes_everything() {
    let Some(mut fx) = Fixture::new("clean_unmount_writes_everything") else {
        return;
    };
    let data = pattern(17, 20_000);
    let f = rw(&fx.path("c"));
    f.write_all_at(&data, 0).unwrap();
    drop(f);
    assert_eq!(fs::read(fx.backing.join("c")).unwrap(), b"");
    fx.unmount_clean();
    assert_eq!(fs::read(fx.backing.join("c")).unwrap(), data);
    fx.mount();
    assert_eq!(fs::read(fx.path("c")).unwrap(), data);
}
