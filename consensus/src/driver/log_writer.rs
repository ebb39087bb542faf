//! The log writer: persistence off the driver thread, as TiKV's store
//! writer does it. Each driver round hands over one `WriteTask` (the
//! round's WAL batch, the Readies it persists, and the follower messages
//! that promise persistence) and goes on stepping, proposing and answering.
//! The writer takes every task queued meanwhile, writes them as one record
//! with one fdatasync (group commit across rounds), then sends their
//! messages and reports the last task done; the driver then tells raft-rs
//! the Readies are persisted (`on_persist_ready`).
//!
//! Order is the point: tasks are written in the order the driver made them
//! (one writer, one FIFO), and a task's messages leave only after its
//! record and every earlier one is durable, so a vote or an append ack
//! never promises what a crash could take back.
//!
//! The deterministic simulation runs the writer on the driver's own thread
//! (`Deferred`): tasks queue until the simulation chooses to persist them,
//! so its seeds also cover rounds written late, in batches, or never.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use raftblock_storage::{Wal, WalBatch};

use crate::transport::OutgoingEnvelope;

use super::{fatal, DriverError, DriverMsg, RaftNetwork};

/// Rounds the driver may be ahead of the disk before it waits (the bound
/// on unpersisted log in memory).
const QUEUE_ROUNDS: usize = 32;
/// A merged record stops growing past this many bytes.
const MERGE_BYTES: usize = 8 << 20;

/// How the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogWriterMode {
    /// On a thread of its own (a node).
    Thread,
    /// On the driver's thread when [`super::Driver::persist_pending`] is
    /// called (the simulation).
    Deferred,
}

/// One driver round's share of the log.
pub(super) struct WriteTask {
    /// Tasks are numbered from 1 in the order they are made.
    pub(super) seq: u64,
    pub(super) batch: WalBatch,
    pub(super) sync: bool,
    /// Messages to send once the record is durable: `(to, envelope)`.
    pub(super) messages: Vec<(u64, OutgoingEnvelope)>,
}

/// The driver's end of the writer.
pub(super) enum LogWriter {
    Thread {
        tx: Option<SyncSender<WriteTask>>,
        /// The last task the writer finished.
        done: Arc<AtomicU64>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Deferred(VecDeque<WriteTask>),
}

impl LogWriter {
    /// Starts a writer; a thread one tells the driver of finished tasks
    /// with `DriverMsg::Persisted` on `driver`.
    pub(super) fn start(
        mode: LogWriterMode,
        wal: Arc<Wal>,
        network: Arc<dyn RaftNetwork>,
        driver: std::sync::mpsc::Sender<DriverMsg>,
    ) -> Result<LogWriter, DriverError> {
        if mode == LogWriterMode::Deferred {
            return Ok(LogWriter::Deferred(VecDeque::new()));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_ROUNDS);
        let done = Arc::new(AtomicU64::new(0));
        let finished = done.clone();
        let rt = tokio::runtime::Handle::try_current().ok();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                let _guard = rt.as_ref().map(|rt| rt.enter());
                run(&rx, &wal, network.as_ref(), &finished, &driver);
            })
            .map_err(|source| DriverError::Thread {
                name: "raft log writer",
                source,
            })?;
        Ok(LogWriter::Thread {
            tx: Some(tx),
            done,
            thread: Some(thread),
        })
    }

    /// Queues a task (waits while the writer is `QUEUE_ROUNDS` behind).
    pub(super) fn submit(&mut self, task: WriteTask) {
        match self {
            LogWriter::Thread { tx, .. } => {
                if tx.as_ref().is_none_or(|tx| tx.send(task).is_err()) {
                    fatal("the raft log writer stopped");
                }
            }
            LogWriter::Deferred(queue) => queue.push_back(task),
        }
    }

    /// The last task known written (a thread writer's report may still be
    /// on its way to the driver).
    pub(super) fn done(&self) -> u64 {
        match self {
            LogWriter::Thread { done, .. } => done.load(Ordering::Acquire),
            LogWriter::Deferred(_) => 0,
        }
    }

    /// Deferred: writes up to `max` queued tasks now; returns the last
    /// written, if any.
    pub(super) fn persist_queued(
        &mut self,
        max: usize,
        wal: &Wal,
        network: &dyn RaftNetwork,
    ) -> Option<u64> {
        let LogWriter::Deferred(queue) = self else {
            return None;
        };
        let n = max.min(queue.len());
        if n == 0 {
            return None;
        }
        let tasks: Vec<WriteTask> = queue.drain(..n).collect();
        Some(persist(wal, network, tasks))
    }

    /// Waits until the writer has written every task queued so far (a
    /// snapshot is installed only with nothing of the group in flight).
    pub(super) fn wait_idle(&mut self, last: u64, wal: &Wal, network: &dyn RaftNetwork) {
        match self {
            LogWriter::Thread { done, .. } => {
                while done.load(Ordering::Acquire) < last {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            }
            LogWriter::Deferred(_) => {
                self.persist_queued(usize::MAX, wal, network);
            }
        }
    }

    /// Stops a thread writer after it wrote what was queued.
    pub(super) fn stop(&mut self) {
        if let LogWriter::Thread { tx, thread, .. } = self {
            tx.take();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The writer thread: group-commits whatever rounds queued up.
fn run(
    rx: &Receiver<WriteTask>,
    wal: &Wal,
    network: &dyn RaftNetwork,
    done: &AtomicU64,
    driver: &std::sync::mpsc::Sender<DriverMsg>,
) {
    while let Ok(first) = rx.recv() {
        let mut bytes = first.batch.len_bytes();
        let mut tasks = vec![first];
        while bytes < MERGE_BYTES {
            match rx.try_recv() {
                Ok(t) => {
                    bytes += t.batch.len_bytes();
                    tasks.push(t);
                }
                Err(_) => break,
            }
        }
        let last = persist(wal, network, tasks);
        done.store(last, Ordering::Release);
        if driver.send(DriverMsg::Persisted).is_err() {
            return; // the driver is gone
        }
    }
}

/// Writes `tasks` as one record (synced if any asks), then sends their
/// messages in order; returns the last task's number.
fn persist(wal: &Wal, network: &dyn RaftNetwork, tasks: Vec<WriteTask>) -> u64 {
    let mut batch = WalBatch::new();
    let mut sync = false;
    let mut last = 0;
    let mut messages = Vec::new();
    for t in tasks {
        batch.absorb(t.batch);
        sync |= t.sync;
        last = t.seq;
        messages.push(t.messages);
    }
    if let Err(e) = wal.write(batch, sync) {
        fatal(&format!("writing the raft log failed: {e}"));
    }
    for (to, env) in messages.into_iter().flatten() {
        network.send(to, env);
    }
    last
}
