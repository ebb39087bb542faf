//! The overlay against the real thing: every view read must equal the
//! backing file after the same operations were applied to it.

#![allow(clippy::unwrap_used)] // tests may unwrap

use super::*;
use std::os::unix::fs::FileExt;

fn backing(content: &[u8]) -> File {
    let f = tempfile::tempfile().unwrap();
    f.write_all_at(content, 0).unwrap();
    f
}

/// The view of `[offset, offset + len)` as the filesystem computes it.
fn view(file: &File, p: &Pending, offset: u64, len: usize) -> Vec<u8> {
    let end = (offset + len as u64).min(p.size());
    if offset >= end {
        return Vec::new();
    }
    let mut buf = vec![0u8; (end - offset) as usize];
    let n = file.read_at(&mut buf, offset).unwrap_or(0);
    buf[n..].fill(0);
    // A single read_at suffices for these small files.
    p.overlay(offset, &mut buf);
    buf
}

fn whole(file: &File) -> Vec<u8> {
    let len = file.metadata().unwrap().len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn write_extends_and_overlays() {
    let f = backing(b"aaaaaaaa");
    let mut p = Pending::new(8);
    p.write(6, b"XYZW".to_vec());
    assert_eq!(p.size(), 10);
    assert_eq!(view(&f, &p, 0, 100), b"aaaaaaXYZW");
    assert_eq!(view(&f, &p, 7, 2), b"YZ");
}

#[test]
fn shrink_then_grow_reads_zeros() {
    let f = backing(b"abcdefgh");
    let mut p = Pending::new(8);
    p.set_size(2);
    p.set_size(6);
    assert_eq!(view(&f, &p, 0, 100), b"ab\0\0\0\0");
}

#[test]
fn punch_keeps_size_zero_range_may_extend() {
    let f = backing(b"abcdefgh");
    let mut p = Pending::new(8);
    p.fallocate(
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        2,
        100,
    );
    assert_eq!(p.size(), 8);
    assert_eq!(view(&f, &p, 0, 100), b"ab\0\0\0\0\0\0");
    let mut p = Pending::new(8);
    p.fallocate(libc::FALLOC_FL_ZERO_RANGE, 6, 4);
    assert_eq!(view(&f, &p, 0, 100), b"abcdef\0\0\0\0");
    let mut p = Pending::new(8);
    p.fallocate(0, 0, 12);
    assert_eq!(view(&f, &p, 0, 100), b"abcdefgh\0\0\0\0");
}

#[test]
fn fallocate_modes() {
    use libc::{FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_KEEP_SIZE as K, FALLOC_FL_PUNCH_HOLE as P};
    assert!(check_fallocate(0).is_ok());
    assert!(check_fallocate(K).is_ok());
    assert!(check_fallocate(P | K).is_ok());
    assert!(check_fallocate(libc::FALLOC_FL_ZERO_RANGE | K).is_ok());
    assert_eq!(check_fallocate(P), Err(Errno(libc::EOPNOTSUPP)));
    assert_eq!(
        check_fallocate(FALLOC_FL_COLLAPSE_RANGE),
        Err(Errno(libc::EOPNOTSUPP))
    );
}

#[test]
fn failed_apply_keeps_what_was_not_applied() {
    let path = tempfile::NamedTempFile::new().unwrap();
    let mut p = Pending::new(0);
    p.write(0, b"abc".to_vec());
    p.set_size(1);
    let read_only = File::open(path.path()).unwrap();
    assert!(p.apply(&read_only).is_err());
    assert_eq!(p.ops().len(), 2);
    let rw = File::options().write(true).open(path.path()).unwrap();
    p.apply(&rw).unwrap();
    assert!(p.ops().is_empty());
    assert_eq!(std::fs::read(path.path()).unwrap(), b"a");
}

/// Random operations: the view must match the backing file once they are
/// applied, at every step and for random windows.
#[test]
fn random_ops_view_equals_applied() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for _round in 0..40 {
        let initial: Vec<u8> = (0..next(3000)).map(|i| i as u8 | 1).collect();
        let base = backing(&initial);
        let mut p = Pending::new(initial.len() as u64);
        for _ in 0..30 {
            let (off, len) = (next(4000), 1 + next(1500));
            match next(6) {
                0 | 1 => p.write(off, vec![next(255) as u8 + 1; len as usize]),
                2 => p.set_size(next(4000)),
                3 => p.fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                ),
                4 => p.fallocate(libc::FALLOC_FL_ZERO_RANGE, off, len),
                _ => p.fallocate(0, off, len),
            }
            let applied = backing(&initial);
            p.clone().apply(&applied).unwrap();
            let expect = whole(&applied);
            assert_eq!(expect.len() as u64, p.size());
            assert_eq!(view(&base, &p, 0, 10_000), expect);
            let (o, l) = (next(6000), next(3000) as usize);
            let lo = (o as usize).min(expect.len());
            let hi = (o as usize + l).min(expect.len());
            assert_eq!(view(&base, &p, o, l), &expect[lo..hi]);
        }
    }
}
