//! WAL tests on real files: replay, suffix replacement, compaction, rotation
//! and purge, a torn tail cut on recovery, corruption in the middle refused.

use super::*;
use std::os::unix::fs::FileExt;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn small() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        preallocate: false,
    }
}

/// Files that end where the log does, so tests can cut them there.
fn grown() -> WalOptions {
    WalOptions {
        preallocate: false,
        ..WalOptions::default()
    }
}

fn datas(wal: &Wal, g: u64, low: u64, high: u64) -> Vec<String> {
    wal.entries(g, low, high, u64::MAX)
        .expect("entries")
        .into_iter()
        .map(|(_, d)| String::from_utf8_lossy(&d.to_bytes()).to_string())
        .collect()
}

#[test]
fn entries_and_states_survive_reopen() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = Wal::open(dir.path(), grown())?;
        let mut batch = WalBatch::new();
        batch.append(1, [(1, 1, b("a")), (2, 1, b("b")), (3, 2, b("c"))]);
        batch.append(2, [(5, 3, b("x"))]);
        batch.set_state(1, b("s1"));
        wal.write(batch, true)?;
        let mut batch = WalBatch::new();
        batch.set_state(1, b("s1'"));
        wal.write(batch, true)?;
        assert_eq!(datas(&wal, 1, 1, 4), ["a", "b", "c"]);
    }
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(wal.groups(), vec![1, 2]);
    assert_eq!(wal.range(1), Some((1, 4)));
    assert_eq!(wal.range(2), Some((5, 6)));
    assert_eq!(wal.term(1, 3), Some(2));
    assert_eq!(wal.term(1, 4), None);
    assert_eq!(wal.state(1), Some(b("s1'")));
    assert_eq!(datas(&wal, 1, 1, 4), ["a", "b", "c"]);
    assert_eq!(datas(&wal, 2, 5, 6), ["x"]);
    assert!(wal.entries(1, 0, 2, u64::MAX).is_err(), "below first");
    assert!(wal.entries(1, 2, 5, u64::MAX).is_err(), "past last");
    Ok(())
}

#[test]
fn a_new_leader_replaces_the_tail_and_compaction_drops_the_head() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = Wal::open(dir.path(), grown())?;
        let mut batch = WalBatch::new();
        batch.append(7, (1..=5).map(|i| (i, 1, b(&format!("t1-{i}")))));
        wal.write(batch, true)?;
        let mut batch = WalBatch::new();
        batch.append(7, [(4, 2, b("t2-4"))]);
        wal.write(batch, true)?;
        assert_eq!(wal.range(7), Some((1, 5)));
        let mut batch = WalBatch::new();
        batch.compact(7, 3);
        wal.write(batch, true)?;
        assert_eq!(datas(&wal, 7, 3, 5), ["t1-3", "t2-4"]);
        let mut batch = WalBatch::new();
        batch.append(7, [(9, 2, b("gap"))]);
        assert!(matches!(wal.write(batch, true), Err(WalError::Gap { .. })));
        // A refused batch writes nothing and leaves the log usable.
        let mut batch = WalBatch::new();
        batch.append(7, [(5, 2, b("t2-5"))]);
        wal.write(batch, true)?;
    }
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(datas(&wal, 7, 3, 6), ["t1-3", "t2-4", "t2-5"]);
    Ok(())
}

#[test]
fn compaction_past_the_end_moves_the_first_index() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), grown())?;
    let mut batch = WalBatch::new();
    batch.append(1, [(1, 1, b("a"))]);
    batch.compact(1, 10);
    wal.write(batch, true)?;
    assert_eq!(wal.range(1), Some((10, 10)));
    let mut batch = WalBatch::new();
    batch.append(1, [(10, 3, b("j"))]);
    wal.write(batch, true)?;
    drop(wal);
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(wal.range(1), Some((10, 11)));
    assert_eq!(datas(&wal, 1, 10, 11), ["j"]);
    Ok(())
}

#[test]
fn rotation_restates_groups_and_purge_frees_old_segments() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = Bytes::from(vec![7u8; 1000]);
    {
        let wal = Wal::open(dir.path(), small())?;
        let mut batch = WalBatch::new();
        batch.set_state(99, b("idle group state"));
        wal.write(batch, true)?;
        for i in 1..=40u64 {
            let mut batch = WalBatch::new();
            batch.append(1, [(i, 1, payload.clone())]);
            batch.set_state(1, b(&format!("applied {i}")));
            if i > 2 {
                batch.compact(1, i - 1); // keep the last two entries
            }
            wal.write(batch, true)?;
        }
        assert!(
            wal.segment_count() <= 3,
            "old segments purged: {}",
            wal.segment_count()
        );
    }
    assert!(segment::list_segments(dir.path())?.first().copied() > Some(1));
    let wal = Wal::open(dir.path(), small())?;
    assert_eq!(
        wal.state(99),
        Some(b("idle group state")),
        "restated at rotation"
    );
    assert_eq!(wal.state(1), Some(b("applied 40")));
    assert_eq!(wal.range(1), Some((39, 41)));
    assert_eq!(wal.entries(1, 39, 41, u64::MAX)?.len(), 2);
    Ok(())
}

#[test]
fn a_lagging_group_pins_its_segments() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = Bytes::from(vec![1u8; 1500]);
    let wal = Wal::open(dir.path(), small())?;
    // Too big to be copied forward at rotation.
    let big = Bytes::from(vec![9u8; (REWRITE_MAX_BYTES + 1) as usize]);
    let mut batch = WalBatch::new();
    batch.append(2, [(1, 1, big.clone())]);
    wal.write(batch, true)?;
    for i in 1..=20u64 {
        let mut batch = WalBatch::new();
        batch.append(1, [(i, 1, payload.clone())]);
        batch.compact(1, i);
        wal.write(batch, true)?;
    }
    assert!(wal.segment_count() > 5, "group 2 pins the first segment");
    wal.evict_cache(2, 2);
    let back = wal.entries(2, 1, 2, u64::MAX)?;
    assert!(back[0].1.to_bytes() == big, "read back from disk");
    let mut batch = WalBatch::new();
    batch.compact(2, 2);
    wal.write(batch, true)?;
    wal.purge()?;
    assert!(wal.segment_count() <= 2, "{}", wal.segment_count());
    Ok(())
}

/// Writes three records to a fresh log and returns the segment path.
fn three_records(dir: &Path) -> Result<PathBuf, WalError> {
    let wal = Wal::open(dir, grown())?;
    for i in 1..=3u64 {
        let mut batch = WalBatch::new();
        batch.append(1, [(i, 1, Bytes::from(vec![i as u8; 300]))]);
        wal.write(batch, true)?;
    }
    let seqs = segment::list_segments(dir)?;
    Ok(segment_path(dir, seqs[0]))
}

#[test]
fn a_torn_tail_is_cut_and_earlier_records_kept() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = three_records(dir.path())?;
    let len = std::fs::metadata(&path).expect("stat").len();
    // Cut the last record in the middle, as a crash during write would.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(len - 100))
        .expect("truncate");
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(wal.range(1), Some((1, 3)));
    let (torn_path, _) = wal
        .recovery()
        .torn_tail
        .clone()
        .expect("torn tail reported");
    assert_eq!(torn_path, path);
    // New writes go after the cut and survive.
    let mut batch = WalBatch::new();
    batch.append(1, [(3, 2, b("rewritten"))]);
    wal.write(batch, true)?;
    drop(wal);
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(datas(&wal, 1, 3, 4), ["rewritten"]);
    assert!(wal.recovery().torn_tail.is_none());
    Ok(())
}

#[test]
fn a_torn_header_is_cut_too() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = three_records(dir.path())?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    // The first bytes of a header that never finished.
    std::io::Write::write_all(&mut f, &record::RECORD_MAGIC.to_le_bytes()[..3]).expect("append");
    drop(f);
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(wal.range(1), Some((1, 4)));
    Ok(())
}

#[test]
fn corruption_in_the_middle_is_refused_with_file_and_offset() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = three_records(dir.path())?;
    // Flip a byte inside the first record's payload.
    let at = SEGMENT_HEADER_LEN + record::HEADER_LEN as u64 + 40;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).expect("read");
    byte[0] ^= 0xff;
    f.write_all_at(&byte, at).expect("write");
    drop(f);
    match Wal::open(dir.path(), grown()) {
        Err(WalError::Corrupt {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, SEGMENT_HEADER_LEN);
            let msg = WalError::Corrupt {
                path: p,
                offset,
                reason: "x".into(),
            }
            .to_string();
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains("offset 16"),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a corrupt middle record was accepted"),
    }
    // The file is left as it was for inspection.
    assert!(std::fs::metadata(&path).expect("stat").len() > at);
    Ok(())
}

#[test]
fn an_injected_write_error_keeps_the_log_consistent() -> Result<(), WalError> {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), grown())?;
    let mut batch = WalBatch::new();
    batch.append(1, [(1, 1, b("one"))]);
    wal.write(batch, true)?;
    let only_here = format!("return({})", dir.path().display());
    fail::cfg("wal::write", &only_here).expect("fail point");
    let mut batch = WalBatch::new();
    batch.append(1, [(2, 1, b("two"))]);
    assert!(wal.write(batch, true).is_err());
    fail::remove("wal::write");
    assert_eq!(
        wal.range(1),
        Some((1, 2)),
        "the failed record is not in the index"
    );
    let mut batch = WalBatch::new();
    batch.append(1, [(2, 1, b("two again"))]);
    wal.write(batch, true)?;
    drop(wal);
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(datas(&wal, 1, 1, 3), ["one", "two again"]);
    scenario.teardown();
    Ok(())
}

#[test]
fn a_segment_cut_while_being_created_is_dropped_and_the_previous_one_goes_on(
) -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = three_records(dir.path())?;
    let seq = segment::list_segments(dir.path())?[0];
    // A crash right after creating the next segment, before its header.
    std::fs::write(segment_path(dir.path(), seq + 1), b"RBW").expect("write stub");
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(segment::list_segments(dir.path())?, vec![seq]);
    let mut batch = WalBatch::new();
    batch.append(1, [(4, 1, b("four"))]);
    wal.write(batch, true)?;
    drop(wal);
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(datas(&wal, 1, 4, 5), ["four"]);
    assert!(std::fs::metadata(&path).expect("stat").len() > 0);
    Ok(())
}

#[test]
fn a_default_batch_is_a_valid_record() -> Result<(), WalError> {
    // Regression: a derived Default left no room for the record header, so
    // batches made with `mem::take` were written unreadable.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = Wal::open(dir.path(), grown())?;
        let mut first = WalBatch::default();
        first.set_state(1, b("s"));
        wal.write(first, true)?;
        let mut batch = std::mem::take(&mut WalBatch::new());
        batch.append(1, [(1, 1, b("a")), (2, 1, b("b"))]);
        wal.write(batch, true)?;
    }
    let wal = Wal::open(dir.path(), grown())?;
    assert!(wal.recovery().torn_tail.is_none());
    assert_eq!(datas(&wal, 1, 1, 3), ["a", "b"]);
    Ok(())
}

/// Writes `count` one-entry records of `size` bytes to group 1, keeping
/// only the last two entries live so old segments retire.
fn churn(wal: &Wal, from: u64, count: u64, size: usize) -> Result<(), WalError> {
    for i in from..from + count {
        let mut batch = WalBatch::new();
        batch.append(1, [(i, 1, Bytes::from(vec![i as u8; size]))]);
        if i > 2 {
            batch.compact(1, i - 1);
        }
        wal.write(batch, true)?;
    }
    Ok(())
}

#[test]
fn retired_segments_are_reused_and_their_old_records_ignored() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = Wal::open(dir.path(), small())?;
        churn(&wal, 1, 60, 1500)?;
    }
    let spares = segment::list_spares(dir.path())?;
    assert!(
        !spares.is_empty() && spares.len() <= MAX_SPARES,
        "{spares:?}"
    );
    let before: Vec<PathBuf> = spares.clone();
    {
        let wal = Wal::open(dir.path(), small())?;
        // Short records: a reused file keeps longer old records behind them.
        churn(&wal, 61, 40, 300)?;
        assert_eq!(datas(&wal, 1, 99, 101).len(), 2);
    }
    // Every spare seen before was taken by a rotation since.
    let now = segment::list_spares(dir.path())?;
    assert!(
        before.iter().all(|p| !now.contains(p)),
        "{before:?} {now:?}"
    );
    let seqs = segment::list_segments(dir.path())?;
    let last = segment_path(dir.path(), *seqs.last().expect("a segment"));
    let len = std::fs::metadata(&last).expect("stat").len();
    let wal = Wal::open(dir.path(), small())?;
    assert!(
        wal.recovery().torn_tail.is_none(),
        "old records are not a torn tail"
    );
    assert_eq!(wal.range(1), Some((99, 101)));
    assert_eq!(
        wal.entries(1, 99, 101, u64::MAX)?
            .iter()
            .map(|(_, d)| d.len())
            .collect::<Vec<_>>(),
        [300, 300]
    );
    assert_eq!(
        std::fs::metadata(&last).expect("stat").len(),
        len,
        "a reused segment is not truncated on recovery"
    );
    Ok(())
}

#[test]
fn a_sealed_last_segment_takes_no_more_records() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = three_records(dir.path())?;
    // The crash came right after a rotation sealed the segment.
    let len = std::fs::metadata(&path).expect("stat").len();
    let mut seal = RecordBuilder::new();
    seal.seal();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.write_all_at(&seal.finish(1).to_vec(), len).expect("seal");
    drop(f);
    {
        let wal = Wal::open(dir.path(), grown())?;
        let mut batch = WalBatch::new();
        batch.append(1, [(4, 1, b("after the seal"))]);
        wal.write(batch, true)?;
    }
    assert_eq!(segment::list_segments(dir.path())?.len(), 2);
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(datas(&wal, 1, 4, 5), ["after the seal"]);
    Ok(())
}

#[test]
fn an_idle_groups_few_entries_move_forward_and_stop_pinning() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = Wal::open(dir.path(), small())?;
        // Group 5 writes three entries and goes idle; they are never compacted.
        let mut batch = WalBatch::new();
        batch.append(5, (1..=3).map(|i| (i, 1, b(&format!("idle-{i}")))));
        wal.write(batch, true)?;
        wal.evict_cache(5, 4);
        churn(&wal, 1, 60, 1500)?;
        assert!(
            wal.segment_count() <= 3,
            "the idle group pins nothing: {}",
            wal.segment_count()
        );
        assert_eq!(datas(&wal, 5, 1, 4), ["idle-1", "idle-2", "idle-3"]);
    }
    let wal = Wal::open(dir.path(), small())?;
    assert_eq!(wal.range(5), Some((1, 4)));
    assert_eq!(datas(&wal, 5, 1, 4), ["idle-1", "idle-2", "idle-3"]);
    Ok(())
}

#[test]
fn many_small_records_share_blocks_and_survive_reopen() -> Result<(), WalError> {
    // Records far smaller than a block: every direct write rewrites the
    // block holding the log's end.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = Wal::open(dir.path(), grown())?;
        for i in 1..=300u64 {
            let mut batch = WalBatch::new();
            batch.append(1, [(i, 1, b(&format!("r{i}")))]);
            wal.write(batch, i % 7 == 0)?;
        }
    }
    let wal = Wal::open(dir.path(), grown())?;
    assert!(wal.recovery().torn_tail.is_none());
    let got = datas(&wal, 1, 1, 301);
    assert_eq!(got.len(), 300);
    assert_eq!(got[299], "r300");
    Ok(())
}

#[test]
fn a_filesystem_without_o_direct_gets_buffered_writes() -> Result<(), WalError> {
    // tmpfs refuses O_DIRECT.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIPPED: no /dev/shm tmpfs here");
        return Ok(());
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir");
    {
        let wal = Wal::open(dir.path(), small())?;
        churn(&wal, 1, 30, 700)?;
    }
    let wal = Wal::open(dir.path(), small())?;
    assert_eq!(wal.range(1), Some((29, 31)));
    assert_eq!(datas(&wal, 1, 29, 31).len(), 2);
    Ok(())
}

#[test]
fn merged_batches_write_as_one_record_and_replay_alike() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = |c: u8| Bytes::from(vec![c; 20 << 10]); // referenced, not copied
    {
        let wal = Wal::open(dir.path(), grown())?;
        let mut first = WalBatch::new();
        first.append(1, [(1, 1, b("a")), (2, 1, big(b'x'))]);
        first.set_state(1, b("s1"));
        let mut second = WalBatch::new();
        second.append(1, [(2, 2, b("b")), (3, 2, big(b'y'))]);
        second.append(2, [(1, 1, big(b'z'))]);
        second.compact(1, 2);
        first.absorb(second);
        wal.write(first, true)?;
        assert_eq!(wal.recovery().records, 0);
        assert_eq!(wal.range(1), Some((2, 4)));
        assert_eq!(wal.entries(1, 3, 4, u64::MAX)?[0].1, big(b'y').into());
        assert_eq!(wal.entries(2, 1, 2, u64::MAX)?[0].1, big(b'z').into());
    }
    let wal = Wal::open(dir.path(), grown())?;
    assert_eq!(wal.recovery().records, 1, "one record");
    assert_eq!(wal.range(1), Some((2, 4)));
    assert_eq!(wal.term(1, 2), Some(2));
    assert_eq!(datas(&wal, 1, 2, 3), ["b"]);
    assert_eq!(wal.entries(1, 3, 4, u64::MAX)?[0].1, big(b'y').into());
    assert_eq!(wal.entries(2, 1, 2, u64::MAX)?[0].1, big(b'z').into());
    assert_eq!(wal.state(1), Some(b("s1")));
    Ok(())
}

#[test]
fn a_preallocated_segment_replays_to_its_last_record_and_a_torn_one_is_cut() -> Result<(), WalError>
{
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = WalOptions {
        segment_size: 1 << 20,
        preallocate: true,
    };
    let path = {
        let wal = Wal::open(dir.path(), opts.clone())?;
        for i in 1..=3u64 {
            let mut batch = WalBatch::new();
            batch.append(1, [(i, 1, Bytes::from(vec![i as u8; 300]))]);
            wal.write(batch, true)?;
        }
        segment_path(dir.path(), segment::list_segments(dir.path())?[0])
    };
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 20);
    {
        // The zeros after the log are its end, not a torn record.
        let wal = Wal::open(dir.path(), opts.clone())?;
        assert_eq!(wal.range(1), Some((1, 4)));
        assert!(wal.recovery().torn_tail.is_none());
        let mut batch = WalBatch::new();
        batch.append(1, [(4, 1, Bytes::from(vec![4u8; 300]))]);
        wal.write(batch, true)?;
    }
    // Zero the end of the last record, as a write cut short by a crash.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    let wal = Wal::open(dir.path(), opts.clone())?;
    drop(wal);
    let scan = segment::scan_segment(dir.path(), segment::list_segments(dir.path())?[0], true)?;
    let last = scan.records.last().expect("records").payload_offset;
    f.write_all_at(&[0u8; 100], last + 250).expect("tear");
    let wal = Wal::open(dir.path(), opts)?;
    assert_eq!(wal.range(1), Some((1, 4)), "the torn fourth entry is gone");
    assert!(wal.recovery().torn_tail.is_some());
    Ok(())
}

#[test]
fn an_entry_in_two_pieces_is_cached_as_given_and_read_back_joined() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = Bytes::from(vec![7u8; 64 << 10]);
    let pieces = [
        EntryBytes {
            head: b("head"),
            body: big.clone(),
        },
        EntryBytes {
            head: big.clone(),
            body: b("tail"),
        },
        EntryBytes {
            head: b("short"),
            body: b("body"),
        },
    ];
    {
        let wal = Wal::open(dir.path(), grown())?;
        let mut batch = WalBatch::new();
        batch.append(1, (1..).zip(pieces.iter().cloned()).map(|(i, p)| (i, 1, p)));
        wal.write(batch, true)?;
        let cached: Vec<EntryBytes> = wal
            .entries(1, 1, 4, u64::MAX)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(cached, pieces);
    }
    let wal = Wal::open(dir.path(), grown())?;
    let joined: Vec<Bytes> = wal
        .entries(1, 1, 4, u64::MAX)?
        .into_iter()
        .map(|(_, d)| d.to_bytes())
        .collect();
    let want: Vec<Bytes> = pieces.iter().map(EntryBytes::to_bytes).collect();
    assert_eq!(joined, want);
    Ok(())
}

#[test]
fn live_bytes_and_tail_reads_follow_appends_truncation_and_compaction() -> Result<(), WalError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = |h: &'static str, body: &str| EntryBytes {
        head: Bytes::from_static(h.as_bytes()),
        body: b(body),
    };
    {
        let wal = Wal::open(dir.path(), small())?;
        let mut batch = WalBatch::new();
        batch.append(
            1,
            (1..=4).map(|i| (i, 1, two("hd", &format!("payload-{i}")))),
        );
        batch.append(2, [(1, 1, b("zz"))]);
        wal.write(batch, true)?;
        assert_eq!(wal.live_bytes(), 4 * 11 + 2);
        // Entries 3 and 4 replaced by a longer 3.
        let mut batch = WalBatch::new();
        batch.append(1, [(3, 2, two("hd", "replaced-3"))]);
        wal.write(batch, true)?;
        assert_eq!(wal.live_bytes(), 2 * 11 + 12 + 2);
        let mut batch = WalBatch::new();
        batch.compact(1, 2);
        wal.write(batch, true)?;
        assert_eq!(wal.live_bytes(), 11 + 12 + 2);
        assert_eq!(
            wal.read_tail(1, 3, 12, 12)?,
            b("hdreplaced-3"),
            "the whole entry"
        );
        // The tail of entry 3, cached and then from disk.
        assert_eq!(wal.read_tail(1, 3, 10, 8)?, b("replaced"));
        wal.evict_cache(1, 4);
        assert_eq!(wal.read_tail(1, 3, 10, 8)?, b("replaced"));
        assert_eq!(wal.read_tail(1, 2, 9, 9)?, b("payload-2"));
        assert!(matches!(
            wal.read_tail(1, 1, 2, 2),
            Err(WalError::Missing { .. })
        ));
        assert!(matches!(
            wal.read_tail(1, 3, 13, 2),
            Err(WalError::Corrupt { .. })
        ));
        assert!(matches!(
            wal.read_tail(1, 3, 2, 3),
            Err(WalError::Corrupt { .. })
        ));
    }
    // Replayed from disk, the same.
    let wal = Wal::open(dir.path(), small())?;
    assert_eq!(wal.live_bytes(), 11 + 12 + 2);
    assert_eq!(wal.read_tail(1, 3, 10, 8)?, b("replaced"));
    Ok(())
}
