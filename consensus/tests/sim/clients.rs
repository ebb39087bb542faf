//! The simulated clients: versioned block writes and reads sent to the
//! node some live node believes leads the block's shard, answers polled each
//! step, and every read checked by the oracle the moment it completes.

use bytes::Bytes;
use rand::Rng;
use tokio::sync::oneshot;

use raftblock_consensus::command::ShardCommand;
use raftblock_consensus::driver::DriverMsg;
use raftblock_consensus::meta::shard_group;

use super::oracle;
use super::{read_block, Op, Sim, BLOCKS_PER_CHUNK, CHUNK, SIZE, VOLUME};

impl Sim {
    pub(super) fn client_ops(&mut self) {
        if self.ops.len() >= 6 || !self.rng.gen_bool(0.3) {
            return;
        }
        let chunk = self.rng.gen_range(0..SIZE / CHUNK);
        let base = chunk * CHUNK;
        let offset =
            base + self.rng.gen_range(0..BLOCKS_PER_CHUNK) * oracle::block_len(base) as u64;
        let group = shard_group(self.volume_id, (chunk % 2) as u32);
        let Some(node) = self.guess_leader(group) else {
            return;
        };
        if self.rng.gen_bool(0.65) {
            if !self.oracle.idle(offset) {
                return;
            }
            let version = self.oracle.send_write(offset);
            let cmd = ShardCommand::write(
                self.volume_id,
                0,
                offset,
                Bytes::from(oracle::encode(offset, version)),
            );
            match self.propose(node, group, cmd.encode_bytes()) {
                Some(rx) => self.ops.push(Op::Write {
                    offset,
                    version,
                    rx,
                    started: self.now_ms,
                }),
                None => self.oracle.write_done(offset, version, false),
            }
        } else {
            let floor = self.oracle.read_floor(offset);
            let (reply, rx) = oneshot::channel();
            let Some(h) = self.node(node).handle().cloned() else {
                return;
            };
            h.send(DriverMsg::Read { group, reply });
            self.ops.push(Op::Read {
                offset,
                node,
                floor,
                rx,
                started: self.now_ms,
            });
        }
    }

    /// Answers that arrived; a read is checked the moment it completes.
    pub(super) fn poll_ops(&mut self) -> Result<(), String> {
        let mut keep = Vec::new();
        for op in std::mem::take(&mut self.ops) {
            match op {
                Op::Write {
                    offset,
                    version,
                    mut rx,
                    started,
                } => match rx.try_recv() {
                    Ok(r) => self.oracle.write_done(offset, version, r.is_ok()),
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.oracle.write_done(offset, version, false)
                    }
                    Err(oneshot::error::TryRecvError::Empty) if self.now_ms - started > 5_000 => {
                        self.oracle.write_done(offset, version, false)
                    }
                    Err(oneshot::error::TryRecvError::Empty) => keep.push(Op::Write {
                        offset,
                        version,
                        rx,
                        started,
                    }),
                },
                Op::Read {
                    offset,
                    node,
                    floor,
                    mut rx,
                    started,
                } => match rx.try_recv() {
                    Ok(Ok(())) => {
                        let Some(v) = self.nodes[(node - 1) as usize].volume(VOLUME) else {
                            continue;
                        };
                        let data = read_block(&v, offset);
                        self.oracle.read_done(offset, floor, &data).map_err(|e| {
                            format!("at {} ms, read on node {node}: {e}", self.now_ms)
                        })?;
                    }
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                    Err(oneshot::error::TryRecvError::Empty) if self.now_ms - started > 5_000 => {}
                    Err(oneshot::error::TryRecvError::Empty) => keep.push(Op::Read {
                        offset,
                        node,
                        floor,
                        rx,
                        started,
                    }),
                },
            }
        }
        self.ops = keep;
        Ok(())
    }
}
