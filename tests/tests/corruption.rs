//! Corruption on disk is caught, not served: a byte flipped inside a chunk
//! file makes reads of that 4 KiB block fail with EIO while the blocks around
//! it still read correctly, and the checksum-error metric counts it. In a
//! cluster the shard leader repairs such a block from another replica and
//! the read succeeds.

use raftblock_tests::cluster::TestCluster;
use raftblock_tests::nbd::{RawNbd, EIO};
use raftblock_tests::{pattern, Daemon};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Flips the bits `mask` of the byte at `offset` of `path` on disk; returns
/// the open file.
fn flip_bit(path: &Path, offset: u64, mask: u8) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open chunk");
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= mask;
    f.write_all_at(&byte, offset).expect("flip byte");
    f.sync_all().expect("sync chunk");
    f
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
    flip_bit(&files[0], 4096 + 1234, 0x40);

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

#[test]
fn a_corrupt_block_on_the_shard_leader_is_repaired_from_a_replica() {
    let mut c = TestCluster::start(3);
    c.create_volume("heal", 16 << 20, 3, Some(1));
    let blocks: Vec<Vec<u8>> = (0..3).map(|i| pattern(200 + i, 4096)).collect();
    {
        let mut n = RawNbd::connect(c.nodes[0].nbd, "heal").expect("connect");
        assert_eq!(n.write(0, &blocks.concat(), false).expect("write"), 0);
        assert_eq!(n.flush().expect("flush"), 0);
    }
    c.wait_converged("heal", Duration::from_secs(30));
    let leader = c.leader("heal", 0).expect("shard leader");
    let files = chunk_files(c.node(leader).data_dir());
    assert_eq!(files.len(), 1, "one chunk written: {files:?}");
    let f = flip_bit(&files[0], 4096 + 99, 0x10);

    // Read through the leader's node (another node reads its own replica
    // now): the leader finds the bad block, fetches it from a follower
    // whose bytes match the recorded checksum, rewrites it.
    let mut n = RawNbd::connect(c.node(leader).nbd, "heal").expect("connect");
    assert_eq!(
        n.read(0, 3 * 4096).expect("read").ok(),
        Some(blocks.concat()),
        "the read over the corrupt block returns the written data"
    );
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 4096)
        .expect("read repaired block");
    assert_eq!(
        back, blocks[1],
        "the leader's chunk file holds the good block again"
    );
    let log = c.node(leader).log_text();
    assert!(
        log.contains("corrupt block repaired from a replica"),
        "{log}"
    );
    let errors = c
        .node(leader)
        .metric("raftblock_checksum_errors_total{volume=\"heal\"}")
        .expect("checksum error metric");
    assert!(
        errors >= 1.0,
        "the checksum error is still counted: {errors}"
    );
}

#[test]
fn scrub_finds_and_repairs_a_corrupt_block_on_a_follower() {
    let mut c = TestCluster::start(3);
    c.create_volume("scrub", 16 << 20, 3, Some(1));
    let data = pattern(300, 4 * 4096);
    {
        let mut n = RawNbd::connect(c.nodes[0].nbd, "scrub").expect("connect");
        assert_eq!(n.write(0, &data, false).expect("write"), 0);
        assert_eq!(n.flush().expect("flush"), 0);
    }
    c.wait_converged("scrub", Duration::from_secs(30));
    let leader = c.leader("scrub", 0).expect("shard leader");
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let files = chunk_files(c.node(follower).data_dir());
    assert_eq!(files.len(), 1, "{files:?}");
    let f = flip_bit(&files[0], 2 * 4096 + 7, 0x01);

    // A clean scrub of the other nodes, one bad block repaired on the follower.
    let out = c.nodes[0].cli(&["volume", "scrub", "scrub", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scrub JSON");
    for n in v["nodes"].as_array().expect("nodes") {
        let (bad, repaired) = (n["bad"].as_u64(), n["repaired"].as_u64());
        if n["node"] == follower {
            assert_eq!((bad, repaired), (Some(1), Some(1)), "{v}");
        } else {
            assert_eq!((bad, repaired), (Some(0), Some(0)), "{v}");
        }
    }
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 2 * 4096)
        .expect("read repaired block");
    assert_eq!(
        back,
        data[2 * 4096..3 * 4096],
        "the follower's block is good again"
    );

    // The same block bad everywhere: nothing to repair from, said clearly.
    for n in 1..=3 {
        let files = chunk_files(c.node(n).data_dir());
        flip_bit(&files[0], 4096 + 11, 0x80);
    }
    let out = c.nodes[1].cli(&["volume", "scrub", "scrub"]);
    assert!(
        !out.status.success(),
        "a scrub that could not repair must fail"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not be verified or repaired"), "{err}");
    // A header, one line per node, and what comparing the replicas found
    // (their checksum tables agree: the bytes went bad under them).
    assert_eq!(
        text.lines().count(),
        5,
        "a header, one line per node, the comparison: {text}"
    );
    assert!(
        text.contains("replicas compared: 1 shard(s), 1 chunk(s); 0 divergent"),
        "{text}"
    );
}

#[test]
fn the_periodic_scrub_repairs_a_follower_on_its_own() {
    let mut c = TestCluster::start_each(3, |_| vec!["--scrub-interval".into(), "1s".into()]);
    c.create_volume("bg", 16 << 20, 3, Some(1));
    let data = pattern(400, 2 * 4096);
    {
        let mut n = RawNbd::connect(c.nodes[0].nbd, "bg").expect("connect");
        assert_eq!(n.write(0, &data, false).expect("write"), 0);
        assert_eq!(n.flush().expect("flush"), 0);
    }
    c.wait_converged("bg", Duration::from_secs(30));
    let leader = c.leader("bg", 0).expect("shard leader");
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let files = chunk_files(c.node(follower).data_dir());
    let f = flip_bit(&files[0], 4096 + 5, 0x02);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut back = vec![0u8; 4096];
    loop {
        f.read_exact_at(&mut back, 4096).expect("read block");
        if back == data[4096..] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the periodic scrub did not repair node {follower}'s block"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
