//! Attach epochs fence writers, against three real in-process nodes: once
//! a volume is attached with a newer epoch, writes from the older
//! attachment are refused by the shard on every replica (and the fence is on
//! each replica's disk, so a restart keeps it), while the new holder and
//! unfenced writers go on.

mod common;

use bytes::Bytes;
use std::time::Duration;

use raftblock_consensus::fence::FenceHistory;
use raftblock_consensus::{AttachError, MetaCommand, NodeInfo};
use raftblock_storage::{ReadSegment, VolumeIo};

use common::{meta_leader, node_info, start_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_attach_epoch_cannot_write_once_the_volume_moved() {
    let nodes = start_all(3).await;
    let leader = meta_leader(&nodes).await;
    for n in &nodes {
        nodes[(leader - 1) as usize]
            .cluster
            .propose_meta(MetaCommand::PutNode(NodeInfo {
                raft_addr: n.raft_addr,
                ..node_info(n.id)
            }))
            .await
            .expect("register node");
    }
    let rec = nodes[0]
        .cluster
        .create_volume(
            "f",
            raftblock_consensus::VolumeSpec {
                size: 8 << 20,
                chunk_size: 1 << 20,
                replicas: 3,
                shards: 2,
                ..Default::default()
            },
        )
        .await
        .expect("create volume");
    let grace = Duration::from_secs(30);
    let first = nodes[0]
        .cluster
        .attach_volume("f", grace)
        .await
        .expect("attach on node 1");
    assert_eq!(first.epoch(), 1);
    first
        .write(0, Bytes::from(vec![1u8; 4096]), true)
        .await
        .expect("the holder writes");

    // Node 2 may not take it while node 1 is alive and within its grace.
    let refused = nodes[1].cluster.attach_volume("f", grace).await;
    match refused {
        Err(AttachError::HeldElsewhere { node: 1, .. }) => {}
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("node 2 attached a volume node 1 holds"),
    }
    // With no grace left (as after node 1 went silent) it takes over.
    let second = nodes[1]
        .cluster
        .attach_volume("f", Duration::ZERO)
        .await
        .expect("takeover on node 2");
    assert_eq!(second.epoch(), 2);

    // Every shard refuses the old epoch, whichever offset it writes.
    for offset in [0u64, 1 << 20, 5 << 20] {
        let e = first
            .write(offset, Bytes::from(vec![9u8; 4096]), true)
            .await
            .expect_err("a write from the fenced attachment succeeded");
        assert!(e.to_string().contains("refused"), "{e}");
        // Whether the shard's leader is local or remote, the NBD client
        // sees EPERM (not permitted), not EIO (a broken disk).
        assert_eq!(e.errno(), raftblock_storage::error::errno::EPERM, "{e}");
    }
    let e = first
        .trim(0, 4096, false)
        .await
        .expect_err("a trim from the fenced attachment succeeded");
    assert!(e.to_string().contains("refused"), "{e}");
    second
        .write(4096, Bytes::from(vec![2u8; 4096]), true)
        .await
        .expect("the new holder writes");
    // Node 3 reads what the holders wrote, and nothing of the refused writes.
    let reader = raftblock_consensus::ClusterVolume::new(nodes[2].cluster.clone(), rec.clone());
    let got = reader.read(0, 8192).await.expect("read");
    let bytes: Vec<u8> = got
        .iter()
        .flat_map(|s| match s {
            ReadSegment::Data(b) => b.to_vec(),
            ReadSegment::Hole(n) => vec![0; *n as usize],
        })
        .collect();
    assert_eq!(&bytes[..4096], &[1u8; 4096][..]);
    assert_eq!(&bytes[4096..], &[2u8; 4096][..]);

    // Each replica of each shard keeps the fence on disk.
    for n in &nodes {
        let vol = n.store.volume("f").expect("local copy");
        for shard in 0..2 {
            let path = FenceHistory::path(vol.dir(), shard);
            let h = FenceHistory::load(&path).expect("fence file");
            assert_eq!(h.current(), 2, "node {} shard {shard}: {h:?}", n.id);
        }
    }
    // A stale detach does not end the new attachment.
    nodes[0]
        .cluster
        .detach_volume("f", 1)
        .await
        .expect("stale detach is a no-op");
    let meta = nodes[2].view.meta();
    let a = meta.volumes["f"]
        .attachment
        .clone()
        .expect("still attached");
    assert_eq!((a.node, a.epoch), (2, 2));
}
