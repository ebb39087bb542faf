//! The io_uring engine: one thread owns a ring, takes requests from a queue,
//! submits them in batches and completes them out of order. A read on an
//! eventfd stays armed in the ring so a new request wakes the thread even
//! while it waits for completions.

use io_uring::{opcode, types, IoUring};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use super::{OpDone, OpKind, PUNCH_MODE};

const RING_ENTRIES: u32 = 256;
const WAKE_TOKEN: u64 = u64::MAX;

struct Pending {
    file: Arc<File>,
    op: OpKind,
    reply: oneshot::Sender<OpDone>,
}

struct Shared {
    queue: Mutex<Vec<Pending>>,
    sleeping: AtomicBool,
    stopping: AtomicBool,
    wake: OwnedFd,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

/// An io_uring ring driven by its own thread.
pub struct UringEngine {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UringEngine {
    /// Creates the ring; fails where the kernel does not allow io_uring.
    pub fn start() -> io::Result<UringEngine> {
        let ring = IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 2)
            .build(RING_ENTRIES)?;
        // Probe that the ring really works (seccomp may allow setup but not enter).
        ring.submit()?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wake,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rb-uring".into())
            .spawn(move || run(ring, s))?;
        Ok(UringEngine {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) fn submit(&self, file: Arc<File>, op: OpKind) -> oneshot::Receiver<OpDone> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                file,
                op,
                reply: tx,
            });
        if self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.wake();
        }
        rx
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn build(p: &mut Pending, key: u64) -> io_uring::squeue::Entry {
    let fd = types::Fd(p.file.as_raw_fd());
    let e = match &mut p.op {
        OpKind::Read {
            buf,
            buf_off,
            offset,
        } => {
            let rest = &mut buf[*buf_off..];
            opcode::Read::new(fd, rest.as_mut_ptr(), rest.len() as u32)
                .offset(*offset)
                .build()
        }
        OpKind::Write { data, offset } => opcode::Write::new(fd, data.as_ptr(), data.len() as u32)
            .offset(*offset)
            .build(),
        OpKind::Sync => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
        OpKind::Punch { offset, len } => opcode::Fallocate::new(fd, *len)
            .offset(*offset)
            .mode(PUNCH_MODE)
            .build(),
    };
    e.user_data(key)
}

fn run(mut ring: IoUring, shared: Arc<Shared>) {
    let mut slots: Vec<Option<Pending>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut inflight = 0usize;
    let mut wake_buf = Box::new([0u8; 8]);
    let mut wake_armed = false;
    let cap = RING_ENTRIES as usize - 1;
    loop {
        if !wake_armed {
            let e = opcode::Read::new(types::Fd(shared.wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: wake_buf lives for the whole loop; the SQ has room
            // because we never fill it past `cap`.
            if unsafe { ring.submission().push(&e) }.is_ok() {
                wake_armed = true;
            }
        }
        // Move queued requests into the submission ring.
        let batch: Vec<Pending> = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let room = cap.saturating_sub(inflight);
            let take = q.len().min(room);
            q.drain(..take).collect()
        };
        for mut p in batch {
            let key = match free.pop() {
                Some(k) => k,
                None => {
                    slots.push(None);
                    slots.len() - 1
                }
            };
            let e = build(&mut p, key as u64);
            slots[key] = Some(p);
            // SAFETY: buffers are owned by `slots[key]` until completion.
            while unsafe { ring.submission().push(&e) }.is_err() {
                if let Err(err) = ring.submit() {
                    tracing::error!(error = %err, "io_uring submit failed");
                }
            }
            inflight += 1;
        }
        if shared.stopping.load(Ordering::SeqCst) && inflight == 0 {
            let empty = shared.queue.lock().map(|q| q.is_empty()).unwrap_or(true);
            if empty {
                return;
            }
        }
        shared.sleeping.store(true, Ordering::SeqCst);
        let queued = !shared.queue.lock().map(|q| q.is_empty()).unwrap_or(true);
        let want = if queued && inflight < cap { 0 } else { 1 };
        if let Err(err) = ring.submit_and_wait(want) {
            if err.kind() != io::ErrorKind::Interrupted && err.raw_os_error() != Some(libc::EBUSY) {
                tracing::error!(error = %err, "io_uring wait failed");
            }
        }
        shared.sleeping.store(false, Ordering::SeqCst);
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (key, res) in done {
            if key == WAKE_TOKEN {
                wake_armed = false;
                continue;
            }
            let Some(p) = slots.get_mut(key as usize).and_then(Option::take) else {
                continue;
            };
            free.push(key as usize);
            inflight -= 1;
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            let buf = match p.op {
                OpKind::Read { buf, .. } => Some(buf),
                _ => None,
            };
            drop(p.file);
            let _ = p.reply.send(OpDone { buf, result });
        }
    }
}
