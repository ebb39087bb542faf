//! The fallback engine: plain pread/pwrite/fdatasync/fallocate on a small pool
//! of threads, for kernels without io_uring (or with it disabled by policy).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::oneshot;

use super::{OpDone, OpKind, PUNCH_MODE};

struct Job {
    file: Arc<File>,
    op: OpKind,
    reply: oneshot::Sender<OpDone>,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

/// A pool of blocking I/O threads.
pub struct ThreadEngine {
    queue: Arc<Queue>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ThreadEngine {
    /// Starts `threads` workers (at least one).
    pub fn start(threads: usize) -> ThreadEngine {
        let queue = Arc::new(Queue::default());
        let workers = (0..threads.max(1))
            .map(|i| {
                let q = queue.clone();
                std::thread::Builder::new()
                    .name(format!("rb-io-{i}"))
                    .spawn(move || worker(q))
                    .expect("spawning an I/O thread")
            })
            .collect();
        ThreadEngine { queue, workers }
    }

    pub(crate) fn submit(&self, file: Arc<File>, op: OpKind) -> oneshot::Receiver<OpDone> {
        let (tx, rx) = oneshot::channel();
        let mut g = self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
        g.0.push_back(Job {
            file,
            op,
            reply: tx,
        });
        drop(g);
        self.queue.ready.notify_one();
        rx
    }
}

impl Drop for ThreadEngine {
    fn drop(&mut self) {
        self.queue.jobs.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.queue.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(q: Arc<Queue>) {
    loop {
        let job = {
            let mut g = q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(j) = g.0.pop_front() {
                    break j;
                }
                if g.1 {
                    return;
                }
                g = q.ready.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        let done = run(&job.file, job.op);
        let _ = job.reply.send(done);
    }
}

/// Does one request on the calling thread.
pub(crate) fn run(file: &File, op: OpKind) -> OpDone {
    match op {
        OpKind::Read {
            mut buf,
            buf_off,
            offset,
        } => {
            let result = file.read_at(&mut buf[buf_off..], offset);
            OpDone {
                buf: Some(buf),
                result,
            }
        }
        OpKind::Write { data, offset } => OpDone {
            buf: None,
            result: file.write_at(&data, offset),
        },
        OpKind::Sync => OpDone {
            buf: None,
            result: file.sync_data().map(|_| 0),
        },
        OpKind::Punch { offset, len } => {
            // SAFETY: fallocate on a valid open descriptor with plain integers.
            let rc =
                unsafe { libc::fallocate(file.as_raw_fd(), PUNCH_MODE, offset as i64, len as i64) };
            let result = if rc == 0 {
                Ok(0)
            } else {
                Err(io::Error::last_os_error())
            };
            OpDone { buf: None, result }
        }
    }
}
