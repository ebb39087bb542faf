//! Log entries a replica staged that the log writer has not written yet.
//! raft-rs reads a replica's log back through `Storage` as soon as a Ready
//! is handed over (`advance_append_async`), before its record reaches the
//! WAL, so the replica answers from here until the writer reports the
//! Ready persisted. From `first` on this is the log: WAL entries at and
//! after it are an older tail that a pending record replaces.

use raft::prelude::Entry;
use std::collections::VecDeque;

/// The unwritten tail of one replica's log.
#[derive(Debug, Default)]
pub(super) struct Unpersisted {
    /// Index of `entries[0]` (of the next entry when empty).
    first: u64,
    /// Each entry with the number of the Ready that staged it.
    entries: VecDeque<(u64, Entry)>,
    /// The newest Ready that changed this tail: once it is persisted the
    /// WAL holds exactly this log.
    last_ready: u64,
}

impl Unpersisted {
    /// Entries from Ready `ready` replace the tail at and after their first
    /// index.
    pub(super) fn stage(slot: &mut Option<Unpersisted>, ready: u64, entries: &[Entry]) {
        let Some(start) = entries.first().map(|e| e.index) else {
            return;
        };
        let tail = slot.get_or_insert_with(|| Unpersisted {
            first: start,
            ..Unpersisted::default()
        });
        if start < tail.first {
            tail.first = start;
            tail.entries.clear();
        } else {
            tail.entries.truncate((start - tail.first) as usize);
        }
        tail.entries
            .extend(entries.iter().map(|e| (ready, e.clone())));
        tail.last_ready = ready;
    }

    /// A snapshot at `index` from Ready `ready` drops the whole log.
    pub(super) fn reset(slot: &mut Option<Unpersisted>, ready: u64, index: u64) {
        *slot = Some(Unpersisted {
            first: index + 1,
            entries: VecDeque::new(),
            last_ready: ready,
        });
    }

    /// Readies up to `ready` are in the WAL: their entries are read from
    /// there from now on.
    pub(super) fn persisted(slot: &mut Option<Unpersisted>, ready: u64) {
        let Some(tail) = slot else {
            return;
        };
        if tail.last_ready <= ready {
            *slot = None;
            return;
        }
        while tail.entries.front().is_some_and(|(n, _)| *n <= ready) {
            tail.entries.pop_front();
            tail.first += 1;
        }
    }

    /// Where this tail starts (WAL entries from here on are hidden).
    pub(super) fn first(&self) -> u64 {
        self.first
    }

    /// The last index of the log: the tail's end.
    pub(super) fn last_index(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    /// The entry at `index`, if the tail holds it.
    pub(super) fn get(&self, index: u64) -> Option<&Entry> {
        let at = index.checked_sub(self.first)?;
        self.entries.get(at as usize).map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn terms(t: &Unpersisted) -> Vec<(u64, u64)> {
        t.entries.iter().map(|(_, e)| (e.index, e.term)).collect()
    }

    #[test]
    fn a_new_tail_replaces_the_old_from_its_first_index() {
        let mut slot = None;
        Unpersisted::stage(&mut slot, 1, &[entry(5, 1), entry(6, 1), entry(7, 1)]);
        Unpersisted::stage(&mut slot, 2, &[entry(6, 2)]);
        let t = slot.as_ref().expect("tail");
        assert_eq!(terms(t), [(5, 1), (6, 2)]);
        assert_eq!(t.last_index(), 6);
        Unpersisted::stage(&mut slot, 3, &[entry(4, 3)]);
        let t = slot.as_ref().expect("tail");
        assert_eq!((t.first(), terms(t)), (4, vec![(4, 3)]));
    }

    #[test]
    fn persisted_readies_leave_and_the_last_one_ends_the_tail() {
        let mut slot = None;
        Unpersisted::stage(&mut slot, 1, &[entry(5, 1), entry(6, 1)]);
        Unpersisted::stage(&mut slot, 2, &[entry(7, 1)]);
        Unpersisted::persisted(&mut slot, 1);
        let t = slot.as_ref().expect("tail");
        assert_eq!((t.first(), terms(t)), (7, vec![(7, 1)]));
        assert!(t.get(6).is_none());
        Unpersisted::persisted(&mut slot, 2);
        assert!(slot.is_none());
    }

    #[test]
    fn a_snapshot_hides_the_old_log_until_it_is_written() {
        let mut slot = None;
        Unpersisted::stage(&mut slot, 1, &[entry(5, 1)]);
        Unpersisted::reset(&mut slot, 2, 100);
        Unpersisted::persisted(&mut slot, 1);
        let t = slot.as_ref().expect("tail");
        assert_eq!((t.first(), t.last_index()), (101, 100));
        Unpersisted::persisted(&mut slot, 2);
        assert!(slot.is_none());
    }
}
