//! Replicas are compared with each other, not only each with its own
//! checksums: a replica whose bytes and checksums went wrong together (as a
//! lost or misplaced write leaves them) passes its own scrub, and
//! `volume verify` finds the block, names its shard, chunk, offset and
//! node, and repairs it from the majority.

use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raftblock_storage::checksum::block_slot;
use raftblock_tests::cluster::{chunk_files, TestCluster};
use raftblock_tests::nbd::RawNbd;
use raftblock_tests::pattern;

const MIB: u64 = 1 << 20;

/// The one `*.data` chunk file of the node's volumes.
fn chunk_file(data_dir: &Path) -> PathBuf {
    let data: Vec<PathBuf> = chunk_files(data_dir)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|x| x == "data"))
        .collect();
    assert_eq!(data.len(), 1, "one chunk written: {data:?}");
    data_dir.join("volumes").join(&data[0])
}

/// Rewrites block `block` of a chunk and its checksum slot consistently:
/// the replica's own checks cannot tell.
fn rewrite_consistently(data: &Path, block: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data)
        .expect("open chunk");
    f.write_all_at(bytes, block * 4096).expect("write block");
    f.sync_all().expect("sync chunk");
    let crc = data.with_extension("crc");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&crc)
        .expect("open checksums");
    f.write_all_at(&block_slot(bytes).to_le_bytes(), block * 4)
        .expect("write slot");
    f.sync_all().expect("sync checksums");
}

#[test]
fn verify_finds_a_replica_that_differs_and_repairs_it_from_the_majority() {
    let mut c = TestCluster::start(3);
    c.create_volume("dv", 64 * MIB, 3, Some(1));
    c.wait_converged("dv", Duration::from_secs(30));
    let blocks: Vec<Vec<u8>> = (0..4).map(|i| pattern(300 + i, 4096)).collect();
    let mut w = RawNbd::connect(c.node(1).nbd, "dv").expect("connect");
    assert_eq!(w.write(0, &blocks.concat(), false).expect("write"), 0);
    assert_eq!(w.flush().expect("flush"), 0);
    drop(w);
    c.wait_converged("dv", Duration::from_secs(30));

    // Node 3's copy of block 2 changes under the running daemon, with a
    // matching checksum (the table is mapped shared: it sees the change).
    // A restart would not do: replaying the log rewrites the block.
    let file = chunk_file(c.node(3).data_dir());
    let wrong = pattern(999, 4096);
    rewrite_consistently(&file, 2, &wrong);

    // Its own scrub finds nothing wrong: only a comparison can.
    let local = c.node(3).admin_client().scrub_local("dv").expect("scrub");
    assert_eq!(local["bad"], 0, "{local}");

    let out = c.node(1).cli(&["volume", "verify", "dv", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("verify json");
    assert!(
        out.status.success(),
        "verify repaired everything: {report:#}"
    );
    assert_eq!(report["divergent"], 1, "{report:#}");
    assert_eq!(report["repaired"], 1, "{report:#}");
    let b = &report["blocks"][0];
    assert_eq!(b["offset"], 2 * 4096, "{report:#}");
    assert_eq!(b["chunk"], 0, "{report:#}");
    assert_eq!(b["shard"], 0, "{report:#}");
    assert_eq!(b["minority"], serde_json::json!([3]), "{report:#}");
    assert_eq!(
        c.node(1)
            .metric("raftblock_replica_divergences_total{result=\"repaired\"}"),
        Some(1.0)
    );

    // Node 3 holds the majority's bytes again (after its apply synced them).
    c.wait_converged("dv", Duration::from_secs(30));
    let mut got = vec![0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        std::fs::File::open(&file)
            .expect("open chunk")
            .read_exact_at(&mut got, 2 * 4096)
            .expect("read block");
        if got == blocks[2] || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(got == blocks[2], "node 3's block 2 was repaired");

    // A second comparison finds nothing; the scrub command compares too.
    let again = c.node(2).cli(&["volume", "scrub", "dv", "--json"]);
    let report: Value = serde_json::from_slice(&again.stdout).expect("scrub json");
    assert!(again.status.success(), "{report:#}");
    assert_eq!(report["replicas"]["divergent"], 0, "{report:#}");
    assert_eq!(report["replicas"]["shards"], 1, "{report:#}");
}
