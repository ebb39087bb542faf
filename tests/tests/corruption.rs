//! Corruption on disk is caught, not served: a byte flipped inside a chunk
//! file makes reads of that 4 KiB block fail with EIO while the blocks around
//! it still read correctly, and the checksum-error metric counts it.

use raftblock_tests::nbd::{RawNbd, EIO};
use raftblock_tests::{pattern, Daemon};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Every `*.data` chunk file under the node's data directory.
fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "data") {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn flipped_byte_fails_its_block_only() {
    let d = Daemon::start();
    d.create_volume("bad", "16M");
    d.create_volume("good", "16M");
    let blocks: Vec<Vec<u8>> = (0..3).map(|i| pattern(100 + i, 4096)).collect();
    let mut c = RawNbd::connect(d.nbd, "bad").expect("connect");
    assert_eq!(c.write(0, &blocks.concat(), false).expect("write"), 0);
    assert_eq!(c.flush().expect("flush"), 0);

    let files = chunk_files(d.data_dir());
    assert_eq!(files.len(), 1, "one chunk written: {files:?}");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files[0])
        .expect("open chunk");
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 4096 + 1234).expect("read byte");
    byte[0] ^= 0x40;
    f.write_all_at(&byte, 4096 + 1234).expect("flip byte");
    f.sync_all().expect("sync chunk");

    assert_eq!(
        c.read(4096, 4096).expect("read").err(),
        Some(EIO),
        "corrupt block"
    );
    assert_eq!(
        c.read(4096 + 512, 512).expect("read").err(),
        Some(EIO),
        "part of corrupt block"
    );
    assert_eq!(
        c.read(0, 3 * 4096).expect("read").err(),
        Some(EIO),
        "range over corrupt block"
    );
    assert_eq!(
        c.read(0, 4096).expect("read").ok(),
        Some(blocks[0].clone()),
        "block before"
    );
    assert_eq!(
        c.read(8192, 4096).expect("read").ok(),
        Some(blocks[2].clone()),
        "block after"
    );

    let errors = d
        .metric("raftblock_checksum_errors_total{volume=\"bad\"}")
        .expect("checksum error metric");
    assert!(errors >= 3.0, "checksum errors counted: {errors}");

    // The daemon goes on serving everyone, and a whole-block rewrite heals it.
    let mut g = RawNbd::connect(d.nbd, "good").expect("connect good");
    assert_eq!(g.write(0, &blocks[1], false).expect("write good"), 0);
    assert_eq!(
        g.read(0, 4096).expect("read good").ok(),
        Some(blocks[1].clone())
    );
    assert_eq!(c.write(4096, &blocks[1], false).expect("rewrite"), 0);
    assert_eq!(
        c.read(0, 3 * 4096).expect("read").ok(),
        Some(blocks.concat()),
        "healed"
    );
}
