//! The raft-rs traps listed in ../shared/reference/raft-rs-guide.md, each
//! against real drivers: three in-process nodes on loopback, each with its
//! own WAL and chunk store in a temporary directory, talking over the real
//! transport.
//!
//! - a ReadIndex request without a leader is dropped silently by raft-rs:
//!   the driver must answer it (with an error) instead of letting it hang;
//! - a membership change proposed while another is pending is silently
//!   logged as an empty entry: it must not be acknowledged;
//! - `max_size_per_msg` defaults to one entry per message: a follower that
//!   is behind must get many entries per append;
//! - a follower must persist entries before acknowledging them.

mod common;

use std::time::{Duration, Instant};

use raftblock_consensus::driver::DriverMsg;
use raftblock_consensus::{MetaCommand, ReplicaError, META_GROUP};
use tokio::sync::oneshot;

use common::{listeners, meta_leader, node_info, start, start_all};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_without_a_leader_is_answered_not_dropped() {
    let (addrs, mut ls) = listeners(3).await;
    // Nodes 2 and 3 never start: node 1 can never have a leader.
    let lonely = start(1, &addrs, ls.remove(&1).expect("listener"));
    drop(ls);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        lonely.driver.read_barrier(META_GROUP),
    )
    .await
    .expect("raft-rs dropped the ReadIndex and the driver never answered");
    assert!(
        matches!(
            got,
            Err(ReplicaError::Retry(_) | ReplicaError::NotLeader { .. })
        ),
        "a leaderless read must fail: {got:?}"
    );
    println!("leaderless read answered in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_succeed_once_there_is_a_leader() {
    let nodes = start_all(3).await;
    meta_leader(&nodes).await;
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match n.driver.read_barrier(META_GROUP).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "node {}: {e}", n.id);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_refused_by_raft_is_not_acknowledged() {
    let nodes = start_all(3).await;
    let leader = meta_leader(&nodes).await;
    let l = &nodes[(leader - 1) as usize];
    // Two changes back to back: raft-rs logs the second one as an empty
    // entry because the first is still pending.
    let (tx4, rx4) = oneshot::channel();
    let (tx5, rx5) = oneshot::channel();
    for (node, reply) in [(4, tx4), (5, tx5)] {
        assert!(l.driver.send(DriverMsg::AddMember {
            node,
            learner: true,
            reply,
        }));
    }
    let r4 = tokio::time::timeout(Duration::from_secs(20), rx4)
        .await
        .expect("first change answered")
        .expect("reply");
    let r5 = tokio::time::timeout(Duration::from_secs(20), rx5)
        .await
        .expect("second change answered")
        .expect("reply");
    assert_eq!(r4, Ok(()));
    assert_eq!(
        r5,
        Err(ReplicaError::Retry(META_GROUP)),
        "the refused change must not be reported as done"
    );
    let status = l.driver.status().await;
    let meta = status
        .iter()
        .find(|g| g.group == META_GROUP)
        .expect("meta status");
    let peers: Vec<u64> = meta.matched.iter().map(|(p, _)| *p).collect();
    assert!(peers.contains(&4) && !peers.contains(&5), "{peers:?}");
    // Asked again, it goes through.
    let (tx, rx) = oneshot::channel();
    assert!(l.driver.send(DriverMsg::AddMember {
        node: 5,
        learner: true,
        reply: tx,
    }));
    assert_eq!(rx.await.expect("reply"), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_acknowledges_only_what_it_persisted() {
    let scenario = fail::FailScenario::setup();
    let nodes = start_all(3).await;
    let leader = meta_leader(&nodes).await;
    let l = &nodes[(leader - 1) as usize];
    let followers: Vec<String> = nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.wal_dir.display().to_string())
        .collect();
    // Baseline: a metadata write commits quickly.
    let t = Instant::now();
    l.cluster
        .propose_meta(MetaCommand::PutNode(node_info(7)))
        .await
        .expect("propose");
    let quick = t.elapsed();
    // Every follower WAL write now takes 1.5 s longer. The leader's own write
    // is fast, so if a follower acknowledged entries before they were on
    // its disk, the entry would commit long before that.
    let delay = Duration::from_millis(1500);
    fail::cfg(
        "wal::write",
        &format!(
            "return(delay:{}:{})",
            delay.as_millis(),
            followers.join(",")
        ),
    )
    .expect("fail point");
    let t = Instant::now();
    let res = l
        .cluster
        .propose_meta(MetaCommand::PutNode(node_info(8)))
        .await;
    let slow = t.elapsed();
    fail::remove("wal::write");
    res.expect("propose while followers are slow");
    println!("commit took {quick:?} normally, {slow:?} with slow follower disks");
    assert!(
        slow >= delay,
        "committed in {slow:?}, before any follower could have persisted the entry"
    );
    scenario.teardown();
}
