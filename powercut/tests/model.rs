//! Random data operations through the mount checked against a model that
//! keeps each file's current and last-synced contents: reads must match the
//! current contents at any time, and after a power cut and remount every
//! file must match its last-synced contents exactly.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::*;

const FILES: usize = 3;
const SPAN: u64 = 256 << 10;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64: deterministic, so a failing seed replays.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Clone, Default)]
struct Model {
    current: Vec<u8>,
    synced: Vec<u8>,
}

fn zero(v: &mut [u8], off: u64, len: u64) {
    let (s, e) = (
        (off as usize).min(v.len()),
        ((off + len) as usize).min(v.len()),
    );
    v[s..e].fill(0);
}

fn grow(v: &mut Vec<u8>, end: u64) {
    if v.len() < end as usize {
        v.resize(end as usize, 0);
    }
}

/// One random operation on file `i` (through `files`), mirrored in `m`.
fn step(
    rng: &mut Rng,
    files: &[File],
    m: &mut [Model],
    i: usize,
    paths: &[std::path::PathBuf],
) -> String {
    let (off, len) = (rng.below(SPAN), 1 + rng.below(64 << 10));
    let f = &files[i];
    match rng.below(10) {
        0..=3 => {
            let data = pattern(rng.below(250) as u8, len as usize);
            f.write_all_at(&data, off).unwrap();
            grow(&mut m[i].current, off + len);
            m[i].current[off as usize..(off + len) as usize].copy_from_slice(&data);
            format!("write {off}+{len}")
        }
        4 => {
            let size = rng.below(SPAN + (64 << 10));
            f.set_len(size).unwrap();
            m[i].current.resize(size as usize, 0);
            format!("truncate {size}")
        }
        5 => {
            fallocate(f, PUNCH, off, len);
            zero(&mut m[i].current, off, len);
            format!("punch {off}+{len}")
        }
        6 => {
            fallocate(f, libc::FALLOC_FL_ZERO_RANGE, off, len);
            grow(&mut m[i].current, off + len);
            zero(&mut m[i].current, off, len);
            format!("zero range {off}+{len}")
        }
        7 => {
            fallocate(f, 0, off, len);
            grow(&mut m[i].current, off + len);
            format!("allocate {off}+{len}")
        }
        8 => {
            let j = (i + 1) % FILES;
            let (mut o_in, mut o_out) = (off as i64, rng.below(SPAN) as i64);
            let at = o_out as usize;
            // SAFETY: two open descriptors and offsets we own.
            let n = unsafe {
                libc::copy_file_range(
                    files[j].as_raw_fd(),
                    &mut o_in,
                    f.as_raw_fd(),
                    &mut o_out,
                    len as usize,
                    0,
                )
            };
            assert!(
                n >= 0,
                "copy_file_range: {}",
                std::io::Error::last_os_error()
            );
            let n = n as usize;
            if n == 0 {
                return format!("copy from file {j} at {off}: past its end");
            }
            let src = m[j].current[off as usize..off as usize + n].to_vec();
            grow(&mut m[i].current, (at + n) as u64);
            m[i].current[at..at + n].copy_from_slice(&src);
            format!("copy {n} from file {j} at {off} to {at}")
        }
        _ => {
            if rng.below(2) == 0 {
                f.sync_data().unwrap();
            } else {
                f.sync_all().unwrap();
            }
            m[i].synced = m[i].current.clone();
            // Sometimes check the whole file through a fresh descriptor.
            assert_eq!(
                fs::read(&paths[i]).unwrap(),
                m[i].current,
                "file {i} after sync"
            );
            "sync".to_string()
        }
    }
}

fn run(seed: u64) {
    let Some(mut fx) = Fixture::new("random_operations_match_the_model") else {
        return;
    };
    let mut rng = Rng(seed);
    let paths: Vec<_> = (0..FILES).map(|i| fx.path(&format!("f{i}"))).collect();
    for p in &paths {
        write_synced(p, b"");
    }
    let mut models = vec![Model::default(); FILES];
    for round in 0..3 {
        let files: Vec<File> = paths
            .iter()
            .map(|p| File::options().read(true).write(true).open(p).unwrap())
            .collect();
        for n in 0..300 {
            let i = rng.below(FILES as u64) as usize;
            let what = step(&mut rng, &files, &mut models, i, &paths);
            let mut back = vec![0u8; models[i].current.len()];
            files[i].read_exact_at(&mut back, 0).unwrap();
            assert!(
                back == models[i].current
                    && files[i].metadata().unwrap().len() == back.len() as u64,
                "seed {seed} round {round} step {n}: file {i} differs after {what}"
            );
        }
        drop(files);
        fx.power_cut_and_remount();
        for (i, p) in paths.iter().enumerate() {
            assert!(
                fs::read(p).unwrap() == models[i].synced,
                "seed {seed} round {round}: file {i} after the power cut is not its synced state"
            );
            models[i].current = models[i].synced.clone();
        }
    }
}

#[test]
fn random_operations_match_the_model() {
    for seed in [0x5eed_0001, 0xdead_beef_1234] {
        run(seed);
    }
}
