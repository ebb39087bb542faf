//! The transmission phase: the connection's task parses requests and runs
//! them concurrently itself (no task per request: they finish out of order
//! in one `FuturesUnordered`), and one writer task sends replies, batching
//! whatever is ready into one socket write.
//! Bad requests get the errno the protocol asks for and the connection goes
//! on; garbage (bad magic, an oversized or truncated payload) ends this
//! connection only.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use raftblock_storage::gather::{write_all_vectored, MAX_IOVECS};
use raftblock_storage::{zeros, ReadSegment, StorageError, VolumeIo, ZeroMode, ZERO_RUN};

use super::handshake::Negotiated;
use super::proto::*;
use crate::metrics::{NbdMetrics, Op, VolumeCounters};

/// Requests in flight per connection before the reader stops reading.
const MAX_INFLIGHT: usize = 256;

struct Conn<V> {
    volume: Arc<V>,
    structured: bool,
    allocation_context: bool,
    counters: Arc<VolumeCounters>,
}

/// Serves requests read from `rd` with replies written to `wr` (the owned
/// halves of a TCP connection after the handshake, or of the kernel's
/// socket pair: no lock shared between reader and writer) until the client
/// disconnects, sends garbage, or the server shuts down; in-flight requests
/// always get their replies.
pub async fn serve<V, R, W>(
    rd: R,
    wr: W,
    n: Negotiated<V>,
    metrics: Arc<NbdMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    V: VolumeIo,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let rd = BufReader::with_capacity(256 << 10, rd);
    let (tx, rx) = mpsc::channel::<Vec<Bytes>>(MAX_INFLIGHT);
    let writer = tokio::spawn(write_replies(wr, rx));
    let conn = Conn {
        counters: metrics.volume(n.export.volume.name()),
        volume: n.export.volume.clone(),
        structured: n.structured,
        allocation_context: n.allocation_context,
    };
    let _guard = n.export.guard;
    let mut inflight = FuturesUnordered::new();
    let mut reading = Box::pin(read_request(rd));
    let result: io::Result<()> = loop {
        tokio::select! {
            // Replies first, so a busy client cannot starve them.
            biased;
            Some(reply) = inflight.next(), if !inflight.is_empty() => {
                if tx.send(reply).await.is_err() {
                    break Ok(()); // the writer failed: the socket is gone
                }
            }
            (rd, next) = &mut reading, if inflight.len() < MAX_INFLIGHT => {
                match next {
                    Ok(Some((req, _))) if req.kind == CMD_DISC => break Ok(()),
                    Ok(Some((req, payload))) => {
                        inflight.push(conn.execute(req, payload));
                        reading.set(read_request(rd));
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            _ = shutdown.changed() => break Ok(()),
        }
    };
    // In-flight requests still get their replies; the writer ends once
    // the sender is gone.
    drop(reading);
    while let Some(reply) = inflight.next().await {
        let _ = tx.send(reply).await;
    }
    drop(tx);
    let _ = writer.await;
    result
}

/// Reads the next request and its payload; `None` at a clean end of the
/// stream. Takes the reader and hands it back, so the connection task can
/// keep this future across the requests it runs meanwhile.
async fn read_request<R: AsyncRead + Unpin>(
    mut rd: R,
) -> (R, io::Result<Option<(Request, Bytes)>>) {
    let mut hdr = [0u8; 28];
    match rd.read_exact(&mut hdr).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (rd, Ok(None)),
        Err(e) => return (rd, Err(e)),
    }
    let Some(req) = Request::parse(&hdr) else {
        let e = io::Error::new(io::ErrorKind::InvalidData, "bad request magic");
        return (rd, Err(e));
    };
    if req.kind != CMD_WRITE {
        return (rd, Ok(Some((req, Bytes::new()))));
    }
    if req.length > MAX_PAYLOAD {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("write payload of {} bytes exceeds 32 MiB", req.length),
        );
        return (rd, Err(e));
    }
    let r = read_payload(&mut rd, req.length as usize).await;
    let r = r.map(|payload| Some((req, payload))).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "write payload cut short ({} bytes announced): {e}",
                req.length
            ),
        )
    });
    (rd, r)
}

/// Reads exactly `len` payload bytes into a fresh buffer without zeroing it
/// first (at 1 MiB writes the memset alone was a tenth of the CPU).
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let mut limited = (&mut *rd).take((len - buf.len()) as u64);
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> io::Result<()> {
    let mut pending: Vec<Bytes> = Vec::new();
    while let Some(parts) = rx.recv().await {
        pending.extend(parts);
        // Replies that are ready now go out with the same system call.
        while pending.len() < MAX_IOVECS {
            match rx.try_recv() {
                Ok(more) => pending.extend(more),
                Err(_) => break,
            }
        }
        write_all_vectored(&mut wr, &mut pending).await?;
    }
    wr.shutdown().await
}

/// A request refused before it reached the volume.
struct Refused(u32, &'static str);

impl<V: VolumeIo> Conn<V> {
    fn check(&self, req: &Request) -> Result<(), Refused> {
        let allowed = match req.kind {
            CMD_READ if self.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
            CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => return Err(Refused(EINVAL, "unknown command")),
        };
        if req.flags & !allowed != 0 {
            return Err(Refused(EINVAL, "flag not valid for this command"));
        }
        if req.kind == CMD_FLUSH {
            return Ok(()); // offset and length are meaningless; be lenient
        }
        let size = self.volume.size();
        let past_end = req
            .offset
            .checked_add(req.length as u64)
            .is_none_or(|end| end > size);
        if past_end {
            return Err(match req.kind {
                CMD_WRITE | CMD_WRITE_ZEROES => {
                    Refused(ENOSPC, "request extends past the end of the export")
                }
                _ => Refused(EINVAL, "request extends past the end of the export"),
            });
        }
        if !req.offset.is_multiple_of(MIN_BLOCK as u64) || !req.length.is_multiple_of(MIN_BLOCK) {
            return Err(Refused(EINVAL, "request not aligned to 512 bytes"));
        }
        if req.kind == CMD_READ && req.length > MAX_PAYLOAD {
            // EOVERFLOW is reserved for a DF read that cannot fit one chunk.
            let errno = if req.flags & CMD_FLAG_DF != 0 {
                EOVERFLOW
            } else {
                EINVAL
            };
            return Err(Refused(
                errno,
                "read larger than the 32 MiB maximum payload",
            ));
        }
        if req.kind == CMD_BLOCK_STATUS {
            if !self.structured || !self.allocation_context {
                return Err(Refused(EINVAL, "no metadata context selected"));
            }
            if req.length == 0 {
                return Err(Refused(EINVAL, "zero-length block status"));
            }
        }
        if req.kind == CMD_WRITE_ZEROES
            && req.flags & CMD_FLAG_FAST_ZERO != 0
            && req.flags & CMD_FLAG_NO_HOLE != 0
        {
            return Err(Refused(
                ENOTSUP,
                "allocated zeroing is not faster than a write",
            ));
        }
        Ok(())
    }

    async fn execute(&self, req: Request, payload: Bytes) -> Vec<Bytes> {
        let op = Op::of(req.kind);
        let started = Instant::now();
        if let Err(Refused(errno, why)) = self.check(&req) {
            tracing::debug!(
                cookie = req.cookie,
                cmd = command_name(req.kind),
                offset = req.offset,
                len = req.length,
                errno,
                why,
                "request refused"
            );
            self.counters.record(op, 0, started.elapsed(), false);
            return self.error_reply(&req, errno, why);
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let len = req.length as u64;
        let result: Result<Vec<Bytes>, StorageError> = match req.kind {
            CMD_READ if len == 0 => Ok(self.empty_read_reply(&req)),
            CMD_READ => self
                .volume
                .read(req.offset, len)
                .await
                .map(|segs| self.read_reply(&req, segs)),
            CMD_WRITE => self
                .volume
                .write(req.offset, payload, fua)
                .await
                .map(|_| vec![simple_reply(0, req.cookie)]),
            CMD_FLUSH => self
                .volume
                .flush()
                .await
                .map(|_| vec![simple_reply(0, req.cookie)]),
            CMD_TRIM if len == 0 => Ok(vec![simple_reply(0, req.cookie)]),
            CMD_TRIM => self
                .volume
                .trim(req.offset, len, fua)
                .await
                .map(|_| vec![simple_reply(0, req.cookie)]),
            CMD_WRITE_ZEROES if len == 0 => Ok(vec![simple_reply(0, req.cookie)]),
            CMD_WRITE_ZEROES => {
                let mode = if req.flags & CMD_FLAG_NO_HOLE != 0 {
                    ZeroMode::Allocate
                } else {
                    ZeroMode::Punch
                };
                self.volume
                    .write_zeroes(req.offset, len, mode, fua)
                    .await
                    .map(|_| vec![simple_reply(0, req.cookie)])
            }
            // A prefetch hint: data is served from the page cache already.
            CMD_CACHE => Ok(vec![simple_reply(0, req.cookie)]),
            CMD_BLOCK_STATUS => self
                .volume
                .block_status(req.offset, len)
                .await
                .map(|ext| vec![self.block_status_reply(&req, ext)]),
            _ => Ok(self.error_reply(&req, EINVAL, "unknown command")),
        };
        match result {
            Ok(reply) => {
                let bytes = if matches!(req.kind, CMD_READ | CMD_WRITE) {
                    len
                } else {
                    0
                };
                self.counters.record(op, bytes, started.elapsed(), true);
                reply
            }
            Err(e) => {
                tracing::warn!(volume = %self.volume.name(), cmd = command_name(req.kind),
                    offset = req.offset, len = req.length, error = %e, "request failed");
                self.counters.record(op, 0, started.elapsed(), false);
                self.error_reply(&req, nbd_errno(e.errno()), &e.to_string())
            }
        }
    }

    fn error_reply(&self, req: &Request, errno: u32, msg: &str) -> Vec<Bytes> {
        if self.structured && matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS) {
            vec![error_chunk(req.cookie, errno, msg)]
        } else {
            vec![simple_reply(errno, req.cookie)]
        }
    }

    fn empty_read_reply(&self, req: &Request) -> Vec<Bytes> {
        if self.structured {
            vec![chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0).freeze()]
        } else {
            vec![simple_reply(0, req.cookie)]
        }
    }

    fn read_reply(&self, req: &Request, segs: Vec<ReadSegment>) -> Vec<Bytes> {
        let df = req.flags & CMD_FLAG_DF != 0;
        if !self.structured
            || df
            || (segs.len() > 1 && segs.iter().all(|s| matches!(s, ReadSegment::Data(_))))
        {
            // One contiguous payload.
            let mut parts = Vec::with_capacity(segs.len() + 1);
            if self.structured {
                let mut h = chunk_header(
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    req.cookie,
                    8 + req.length,
                );
                h.put_u64(req.offset);
                parts.push(h.freeze());
            } else {
                parts.push(simple_reply(0, req.cookie));
            }
            for s in segs {
                match s {
                    ReadSegment::Data(b) => parts.push(b),
                    ReadSegment::Hole(mut n) => {
                        // Zeros from one shared buffer, not a fresh allocation.
                        while n > 0 {
                            let run = n.min(ZERO_RUN as u64);
                            parts.push(zeros(run as usize));
                            n -= run;
                        }
                    }
                }
            }
            return parts;
        }
        let last = segs.len().saturating_sub(1);
        let mut parts = Vec::with_capacity(segs.len() * 2);
        let mut offset = req.offset;
        for (i, s) in segs.into_iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            match s {
                ReadSegment::Data(b) => {
                    let mut h = chunk_header(
                        flags,
                        REPLY_TYPE_OFFSET_DATA,
                        req.cookie,
                        8 + b.len() as u32,
                    );
                    h.put_u64(offset);
                    offset += b.len() as u64;
                    parts.push(h.freeze());
                    parts.push(b);
                }
                ReadSegment::Hole(n) => {
                    let mut h = chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, req.cookie, 12);
                    h.put_u64(offset);
                    h.put_u32(n as u32);
                    offset += n;
                    parts.push(h.freeze());
                }
            }
        }
        parts
    }

    fn block_status_reply(&self, req: &Request, extents: Vec<raftblock_storage::Extent>) -> Bytes {
        let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
        let mut descs: Vec<(u32, u32)> = Vec::new();
        let mut covered = 0u64;
        for e in extents {
            let status = if e.hole { STATE_HOLE | STATE_ZERO } else { 0 };
            let len = if req_one {
                e.len.min(req.length as u64)
            } else {
                e.len
            };
            descs.push((len as u32, status));
            covered += len;
            if req_one || covered >= req.length as u64 || descs.len() >= 1 << 20 {
                break;
            }
        }
        let mut h = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            req.cookie,
            4 + 8 * descs.len() as u32,
        );
        h.put_u32(BASE_ALLOCATION_ID);
        for (len, status) in descs {
            h.put_u32(len);
            h.put_u32(status);
        }
        h.freeze()
    }
}
