//! The simulated faults: one node at a time crashed or cut off, leadership
//! moved (sometimes followed by the old leader going deaf), and the
//! network's loss and delay changed now and then; each ends on schedule.

use rand::Rng;

use raftblock_consensus::driver::DriverMsg;
use raftblock_consensus::meta::shard_group;
use raftblock_consensus::META_GROUP;

use super::{Sim, NODES};

impl Sim {
    /// Starts and ends faults: one node at a time crashed or cut off, and
    /// the network's loss and delay changed now and then.
    pub(super) fn faults(&mut self) {
        let now = self.now_ms;
        let back: Vec<u64> = self
            .down_until
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in back {
            self.down_until.remove(&n);
            let (net, clock) = (self.net.clone(), self.clock.clone());
            self.node(n).start(&net, &clock, &[1, 2, 3]);
        }
        let healed: Vec<u64> = self
            .cut_until
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in healed {
            self.cut_until.remove(&n);
            self.net.set_cut(n, false);
        }
        let healed: Vec<u64> = self
            .deaf_until
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in healed {
            self.deaf_until.remove(&n);
            self.net.set_deaf(n, false);
        }
        if self.rng.gen_bool(1.0 / 150.0) {
            // Leadership moves, as hand-back and drain move it; sometimes
            // the old leader then stops hearing anyone (its lease must not
            // outlive the move).
            let group = if self.rng.gen_bool(0.2) {
                META_GROUP
            } else {
                shard_group(self.volume_id, self.rng.gen_range(0..2))
            };
            let n = self
                .guess_leader(group)
                .unwrap_or_else(|| self.rng.gen_range(1..=NODES));
            let to = self.rng.gen_range(1..=NODES);
            if let Some(h) = self.node(n).handle() {
                h.send(DriverMsg::TransferLeader { group, to });
            }
            self.stats.transfers += 1;
            let calm = self.down_until.is_empty()
                && self.cut_until.is_empty()
                && self.deaf_until.is_empty();
            if calm && self.rng.gen_bool(0.5) {
                self.net.set_deaf(n, true);
                let until = now + self.rng.gen_range(20..400);
                self.deaf_until.insert(n, until);
            }
        }
        if !self.rng.gen_bool(1.0 / 400.0) {
            return;
        }
        let calm =
            self.down_until.is_empty() && self.cut_until.is_empty() && self.deaf_until.is_empty();
        match self.rng.gen_range(0..3) {
            0 if calm => {
                let n = self.rng.gen_range(1..=NODES);
                let until = now + self.rng.gen_range(50..1500);
                self.node(n).crash();
                self.down_until.insert(n, until);
                self.stats.crashes += 1;
            }
            1 if calm => {
                let n = self.rng.gen_range(1..=NODES);
                let until = now + self.rng.gen_range(50..1500);
                self.net.set_cut(n, true);
                self.cut_until.insert(n, until);
                self.stats.partitions += 1;
            }
            _ => {
                let loss = [0.0, 0.0, 0.01, 0.05, 0.2][self.rng.gen_range(0..5)];
                let delay = [500, 2_000, 5_000, 20_000][self.rng.gen_range(0..4)];
                self.net.set_quality(loss, delay);
            }
        }
    }
}
