//! Raft configuration checks on hand-run raft-rs nodes (in memory): a
//! lagging follower catches up with bounded multi-entry appends.

use super::config::raft_config;
use super::*;
use raft::prelude::{Message, MessageType};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};

fn node(id: u64) -> RawNode<MemStorage> {
    let store = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&raft_config(&DriverConfig::new(id), 0), store, &logger).expect("node")
}

/// One Ready per node, persisted at once; returns the messages sent.
fn pump(nodes: &mut [RawNode<MemStorage>]) -> Vec<Message> {
    let mut out = Vec::new();
    for n in nodes.iter_mut() {
        if !n.has_ready() {
            continue;
        }
        let mut rd = n.ready();
        out.extend(rd.take_messages());
        let store = n.raft.raft_log.store.clone();
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        store.wl().append(rd.entries()).expect("append");
        out.extend(rd.take_persisted_messages());
        let mut light = n.advance(rd);
        out.extend(light.take_messages());
        n.advance_apply();
    }
    out
}

#[test]
fn a_lagging_follower_gets_many_entries_per_append() {
    let mut nodes: Vec<_> = (1..=3).map(node).collect();
    nodes[0].campaign().expect("campaign");
    let mut appends_to_3: Vec<usize> = Vec::new();
    let mut largest_bytes = 0usize;
    let mut cut_off = false;
    for round in 0..200 {
        if round == 20 {
            // Node 3 stops hearing anything while 200 entries go in.
            cut_off = true;
            for i in 0..200u32 {
                // 16 KiB each, 3.2 MiB in all.
                nodes[0]
                    .propose(vec![], i.to_le_bytes().repeat(4096))
                    .expect("propose");
            }
        }
        if round == 60 {
            cut_off = false;
            nodes[0].tick(); // a heartbeat tick brings node 3 back into view
        }
        for m in pump(&mut nodes) {
            if m.to == 3 && cut_off {
                continue;
            }
            if m.to == 3 && m.get_msg_type() == MessageType::MsgAppend && !cut_off {
                appends_to_3.push(m.entries.len());
                largest_bytes = largest_bytes.max(m.entries.iter().map(|e| e.data.len()).sum());
            }
            let to = (m.to - 1) as usize;
            let _ = nodes[to].step(m);
        }
        if round > 60 && round % 3 == 0 {
            nodes[0].tick();
        }
    }
    assert_eq!(nodes[0].raft.state, StateRole::Leader);
    let caught_up = nodes[2].raft.raft_log.last_index();
    assert_eq!(
        caught_up,
        nodes[0].raft.raft_log.last_index(),
        "{appends_to_3:?}"
    );
    let most = appends_to_3.iter().copied().max().unwrap_or(0);
    assert!(
        most > 30,
        "appends to the lagging follower carried at most {most} entries: {appends_to_3:?}"
    );
    // Bounded too: one message must stay far below the transport's
    // frame limit however far behind the follower is.
    assert!(largest_bytes <= (1 << 20) + (16 << 10), "{largest_bytes}");
}
