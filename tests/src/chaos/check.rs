//! The read-back check: every block read through every node of the
//! cluster and judged by its history ([`Oracle::check`]). Each bad block is
//! one problem naming the seed, what each node returned and the writes that
//! matter; the first few come with the daemons' log lines from the time of
//! those writes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::blocks::{block_len, decode, Seen, Stamp, Workload};
use super::oracle::{BlockLog, Oracle, WriteEnd, WriteRecord};
use super::report::log_excerpt;
use crate::cluster::TestCluster;
use crate::nbd::RawNbd;

/// How long a read during the check may wait for its reply.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Oracle::check`] found.
#[derive(Debug, Default)]
pub struct Check {
    /// One entry per bad block (each naming the seed), empty when every
    /// node returned an acceptable version of every block.
    pub problems: Vec<String>,
    /// Blocks every node returned at their last acknowledged version, at
    /// a later version of unknown outcome, and as never written.
    pub read_back: (usize, usize, usize),
    /// Blocks read through each node.
    pub blocks_checked: usize,
    /// Per block, what each node returned (node order).
    pub(super) seen: BTreeMap<u64, Vec<Seen>>,
}

impl Oracle {
    /// Reads every block through every node and judges it; one problem per
    /// bad block, the first few with the daemons' log lines of the time.
    /// Only meaningful with the writers stopped.
    pub fn check(&self, c: &TestCluster, workload: &Workload) -> Check {
        let seed = workload.seed;
        let total = workload.total_blocks();
        let mut out = Check {
            blocks_checked: total as usize,
            ..Check::default()
        };
        for (i, d) in c.nodes.iter().enumerate() {
            let mut conn = None;
            for b in 0..total {
                let want = Stamp {
                    seed,
                    writer: workload.owner(b) as u32,
                    block: b,
                    version: 0,
                };
                let offset = workload.block_offset(b);
                let s = match read_block(&mut conn, d.nbd, &workload.volume, offset, block_len(b)) {
                    Ok(data) => decode(&data, want),
                    Err(e) => Seen::Garbage(format!("read through node {} failed: {e}", i + 1)),
                };
                out.seen.entry(b).or_default().push(s);
            }
        }
        let empty = BlockLog::default();
        let mut detailed = 0;
        for (b, per_node) in &out.seen {
            let log = self.logs.get(b).unwrap_or(&empty);
            let verdicts: Vec<String> = per_node
                .iter()
                .enumerate()
                .filter_map(|(i, s)| log.judge(s).err().map(|e| format!("node {}: {e}", i + 1)))
                .collect();
            let agree = per_node.windows(2).all(|w| w[0] == w[1]);
            if verdicts.is_empty() && agree {
                match per_node.first() {
                    Some(Seen::Version(v)) if log.acked == Some(*v) => out.read_back.0 += 1,
                    Some(Seen::Version(_)) => out.read_back.1 += 1,
                    _ => out.read_back.2 += 1,
                }
                continue;
            }
            let mut p = format!(
                "seed {seed}: block {b} (writer {}, offset {}): {}{}\n  nodes returned: {}\n  \
                 oracle: last acknowledged {:?}, later of unknown outcome {:?}, highest sent {}{}\n",
                workload.owner(*b),
                workload.block_offset(*b),
                verdicts.join("; "),
                if agree { "" } else { "; nodes disagree" },
                per_node
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("node {} {s}", i + 1))
                    .collect::<Vec<_>>()
                    .join(", "),
                log.acked,
                log.unknown,
                log.sent,
                match log.settled {
                    Some(s) => format!(", v{s} settled by an earlier read-back"),
                    None => String::new(),
                }
            );
            // The writes that matter: the last acknowledged one and whatever
            // version the nodes returned instead.
            let mut records: Vec<&WriteRecord> = log.recent.iter().collect();
            let returned = per_node.iter().filter_map(|s| match s {
                Seen::Version(v) => Some(*v),
                _ => None,
            });
            for v in returned.chain(log.settled) {
                if let Some(r) = log.find(v) {
                    if !records.iter().any(|x| x.version == r.version) {
                        records.push(r);
                    }
                }
            }
            records.extend(log.unacked.iter().filter(|r| Some(r.version) > log.acked));
            records.sort_by_key(|r| r.version);
            records.dedup_by_key(|r| r.version);
            for r in &records {
                p.push_str(&format!("  write {r}\n"));
            }
            if detailed < 3 {
                detailed += 1;
                for r in records
                    .iter()
                    .filter(|r| !matches!(r.end, WriteEnd::Acked) || Some(r.version) == log.acked)
                {
                    let from = r.sent_wall - Duration::from_secs(1);
                    let to = r.sent_wall + r.took + Duration::from_secs(1);
                    p.push_str(&format!(
                        "  daemon logs around v{} (sent at +{:.3} s):\n{}",
                        r.version,
                        r.at.as_secs_f64(),
                        log_excerpt(c, from, to, 40)
                    ));
                }
            }
            out.problems.push(p);
        }
        out
    }
}

/// Reads the `len` bytes of the block at `offset` through the NBD server
/// at `addr`, reconnecting once if the connection is gone.
fn read_block(
    conn: &mut Option<RawNbd>,
    addr: SocketAddr,
    volume: &str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, String> {
    for _ in 0..2 {
        if conn.is_none() {
            *conn = Some(
                RawNbd::connect_timeout(addr, volume, Duration::from_secs(10), READ_TIMEOUT)
                    .map_err(|e| format!("connect: {e:#}"))?,
            );
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.read(offset, len as u32) {
            Ok(Ok(data)) => return Ok(data),
            Ok(Err(errno)) => return Err(format!("read error reply errno {errno}")),
            Err(e) => {
                *conn = None;
                if !e.chain().any(|c| c.is::<std::io::Error>()) {
                    return Err(format!("protocol: {e:#}"));
                }
            }
        }
    }
    Err("connection lost twice".into())
}
