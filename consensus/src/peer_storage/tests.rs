//! A three-replica group run by hand over three real WALs: election,
//! replication, restart from disk, compaction and a snapshot-only restart.

use super::*;
use raft::prelude::{Config, Message, RawNode};
use raft::Storage as _;
use std::collections::VecDeque;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn config(id: u64, applied: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 3,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 64,
        applied,
        ..Config::default()
    }
}

struct Replica {
    node: RawNode<PeerStorage>,
    wal: Arc<Wal>,
    applied: Vec<Bytes>,
}

const GROUP: u64 = 9;

fn open(dir: &std::path::Path, id: u64, create: bool) -> Replica {
    let wal = Arc::new(Wal::open(dir, Default::default()).expect("open wal"));
    let storage = if create {
        let mut batch = WalBatch::new();
        let s = PeerStorage::create(wal.clone(), GROUP, &[1, 2, 3], &mut batch);
        wal.write(batch, true).expect("write");
        s
    } else {
        PeerStorage::open(wal.clone(), GROUP)
            .expect("state")
            .expect("group exists")
    };
    let applied = storage.applied();
    let node = RawNode::new(&config(id, applied), storage, &logger()).expect("raw node");
    Replica {
        node,
        wal,
        applied: Vec::new(),
    }
}

/// Handles every replica's Ready once; returns the messages to deliver.
fn round(replicas: &mut [Replica]) -> Vec<Message> {
    let mut out = Vec::new();
    for r in replicas.iter_mut() {
        if !r.node.has_ready() {
            continue;
        }
        let mut rd = r.node.ready();
        let number = rd.number();
        out.extend(rd.take_messages());
        let mut batch = WalBatch::new();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            r.node.mut_store().stage_snapshot(number, &snap, &mut batch);
        }
        for e in rd.take_committed_entries() {
            if !e.data.is_empty() {
                r.applied.push(e.data.clone());
            }
        }
        let entries = rd.take_entries();
        r.node
            .mut_store()
            .stage_entries(number, &entries, &mut batch);
        if let Some(hs) = rd.hs() {
            let hs = hs.clone();
            r.node.mut_store().stage_hard_state(&hs, &mut batch);
        }
        r.wal.write(batch, true).expect("wal write");
        r.node.mut_store().persisted(number);
        out.extend(rd.take_persisted_messages());
        let mut light = r.node.advance(rd);
        if let Some(c) = light.commit_index() {
            let mut batch = WalBatch::new();
            r.node.mut_store().stage_commit(c, &mut batch);
            r.wal.write(batch, true).expect("wal write");
        }
        out.extend(light.take_messages());
        for e in light.take_committed_entries() {
            if !e.data.is_empty() {
                r.applied.push(e.data.clone());
            }
        }
        r.node.advance_apply();
    }
    out
}

fn run(replicas: &mut [Replica], rounds: usize, down: &[u64]) {
    let mut queue: VecDeque<Message> = VecDeque::new();
    for _ in 0..rounds {
        queue.extend(round(replicas));
        while let Some(m) = queue.pop_front() {
            if down.contains(&m.to) || down.contains(&m.from) {
                continue;
            }
            let to = (m.to - 1) as usize;
            let _ = replicas[to].node.step(m);
        }
    }
}

fn leader(replicas: &[Replica]) -> usize {
    replicas
        .iter()
        .position(|r| r.node.raft.state == raft::StateRole::Leader)
        .expect("a leader")
}

#[test]
fn replicates_and_restarts_from_the_wal() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut rs: Vec<Replica> = (0..3)
        .map(|i| open(dirs[i].path(), i as u64 + 1, true))
        .collect();
    rs[0].node.campaign().expect("campaign");
    run(&mut rs, 10, &[]);
    let l = leader(&rs);
    for i in 0..20u32 {
        rs[l]
            .node
            .propose(vec![], format!("w{i}").into_bytes())
            .expect("propose");
    }
    run(&mut rs, 10, &[]);
    for r in &rs {
        assert_eq!(r.applied.len(), 20, "every replica applied every write");
    }
    let last = rs[0].node.store().last_index().expect("last");
    drop(rs);

    // Restart all three from their WALs: the log and hard state are there.
    let mut rs: Vec<Replica> = (0..3)
        .map(|i| open(dirs[i].path(), i as u64 + 1, false))
        .collect();
    for r in &rs {
        let st = r.node.store();
        assert_eq!(st.last_index().expect("last"), last);
        let state = st.initial_state().expect("state");
        assert_eq!(state.hard_state.commit, last);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        let es = st
            .entries(1, last + 1, None, GetEntriesContext::empty(false))
            .expect("entries");
        let datas: Vec<_> = es
            .iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| e.data.clone())
            .collect();
        assert_eq!(datas.len(), 20);
        assert_eq!(&datas[19][..], b"w19");
    }
    // Applied was never made durable, so a restart replays all 20.
    run(&mut rs, 30, &[]);
    for r in &rs {
        assert_eq!(r.applied.len(), 20, "replayed after restart");
    }
    // The restarted group elects a leader and takes writes again.
    for _ in 0..40 {
        for r in rs.iter_mut() {
            r.node.tick();
        }
        run(&mut rs, 1, &[]);
    }
    let l = leader(&rs);
    rs[l]
        .node
        .propose(vec![], b"after".to_vec())
        .expect("propose");
    run(&mut rs, 10, &[]);
    assert!(rs
        .iter()
        .all(|r| r.applied.last().map(|b| &b[..]) == Some(&b"after"[..])));
}

#[test]
fn compaction_keeps_the_truncated_term_and_refuses_older_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path(), Default::default()).expect("wal"));
    let mut batch = WalBatch::new();
    let mut st = PeerStorage::create(wal.clone(), 1, &[1], &mut batch);
    let entries: Vec<Entry> = (1..=10)
        .map(|i| Entry {
            index: i,
            term: if i < 5 { 1 } else { 2 },
            data: Bytes::from(format!("e{i}")),
            ..Entry::default()
        })
        .collect();
    st.stage_entries(0, &entries, &mut batch);
    wal.write(batch, true).expect("write");
    let mut batch = WalBatch::new();
    assert!(st.stage_compact(6, &mut batch).is_err(), "not applied yet");
    st.stage_applied(8, &mut batch);
    st.stage_compact(6, &mut batch).expect("compact");
    wal.write(batch, true).expect("write");
    assert_eq!(st.first_index().expect("first"), 7);
    assert_eq!(st.term(6).expect("term"), 2);
    assert!(matches!(
        st.term(5),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert!(matches!(
        st.entries(5, 8, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    drop(st);
    let st = PeerStorage::open(wal, 1).expect("state").expect("group");
    assert_eq!(st.first_index().expect("first"), 7);
    assert_eq!(st.last_index().expect("last"), 10);
    assert_eq!(st.applied(), 8);
    let es = st
        .entries(7, 11, None, GetEntriesContext::empty(false))
        .expect("entries");
    assert_eq!(es.len(), 4);
    assert_eq!(&es[0].data[..], b"e7");
}

#[test]
fn entries_decode_in_two_pieces_and_joined() -> Result<(), PeerStorageError> {
    for (len, context) in [
        (0, &b""[..]),
        (10, b"c"),
        (DATA_PIECE_MIN, b""),
        (1 << 20, b"ctx"),
    ] {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = 7;
        e.term = 3;
        e.data = (0..len).map(|i| i as u8).collect::<Vec<_>>().into();
        e.context = Bytes::copy_from_slice(context);
        let stored = encode_entry(&e);
        // Large data is referenced, not copied.
        assert_eq!(
            len >= DATA_PIECE_MIN,
            !stored.body.is_empty() && stored.body.as_ptr() == e.data.as_ptr()
        );
        // As the WAL's cache holds it, and as a segment gives it back.
        assert_eq!(decode_entry(7, 3, stored.clone())?, e);
        assert_eq!(decode_entry(7, 3, stored.to_bytes().into())?, e);
    }
    Ok(())
}

#[test]
fn a_head_too_short_for_its_data_is_an_error() {
    let bad = EntryBytes {
        head: Bytes::from_static(b"\x12"),
        body: Bytes::from(vec![1u8; 300]),
    };
    assert!(matches!(
        decode_entry(1, 1, bad),
        Err(PeerStorageError::UndecodableEntry { index: 1, .. })
    ));
}

/// A write's payload is found in the WAL where `payload_from_end` says,
/// in the entry as cached and as read back from disk after a restart:
/// what the apply task relies on when it leaves large writes in the log.
#[test]
fn a_large_payload_is_found_at_its_offset_from_the_entry_end() {
    use crate::command::{BlockOp, ShardCommand};
    let dir = tempfile::tempdir().expect("tempdir");
    let payload: Bytes = (0..256 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let cmd = ShardCommand::write(3, 7, 1 << 20, payload.clone());
    let e = Entry {
        index: 5,
        term: 2,
        data: cmd.encode_bytes(),
        ..Default::default()
    };
    let find = |e: &Entry| {
        let decoded = ShardCommand::decode(e.data.clone()).expect("decode");
        let Some(BlockOp::Write(w)) = decoded.op else {
            panic!("not a write")
        };
        (
            payload_from_end(&e.data, &w.data).expect("a piece of its own"),
            w.data.len(),
        )
    };
    let (from_end, len) = find(&e);
    {
        let wal = Wal::open(dir.path(), Default::default()).expect("wal");
        let mut batch = WalBatch::new();
        batch.append(GROUP, [(e.index, e.term, encode_entry(&e))]);
        wal.write(batch, true).expect("write");
        assert_eq!(
            wal.read_tail(GROUP, 5, from_end, len).expect("cached"),
            payload
        );
    }
    let wal = Wal::open(dir.path(), Default::default()).expect("wal");
    assert_eq!(
        wal.read_tail(GROUP, 5, from_end, len).expect("from disk"),
        payload
    );
    // Small data is not known to end its entry; a foreign slice is refused.
    let small = ShardCommand::write(3, 7, 0, Bytes::from_static(b"tiny")).encode_bytes();
    assert_eq!(payload_from_end(&small, &small.slice(4..)), None);
    assert_eq!(payload_from_end(&e.data, &payload), None);
}
