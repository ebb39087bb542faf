//! A small NBD client: fixed newstyle handshake with NBD_OPT_GO, simple
//! replies, pipelined requests matched by cookie. The demo's self-check uses
//! it to drive the server the same way an external client would.

use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::proto::*;

/// A connected NBD client in transmission phase.
pub struct NbdClient {
    rd: BufReader<OwnedReadHalf>,
    wr: BufWriter<OwnedWriteHalf>,
    size: u64,
    flags: u16,
    next_cookie: u64,
    /// cookie -> read length expected (0 for non-reads)
    pending: HashMap<u64, u32>,
}

/// One completed request.
#[derive(Debug)]
pub struct Completion {
    /// The request's cookie.
    pub cookie: u64,
    /// NBD error value (0 = success).
    pub error: u32,
    /// Data of a successful READ.
    pub data: Vec<u8>,
}

fn err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl NbdClient {
    /// Connects and enters transmission for `export`.
    pub async fn connect(addr: impl ToSocketAddrs, export: &str) -> io::Result<NbdClient> {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return Err(err("not an NBD newstyle server".into()));
        }
        let _hs_flags = s.read_u16().await?;
        s.write_u32(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)
            .await?;
        let mut data = BytesMut::new();
        data.put_u32(export.len() as u32);
        data.put_slice(export.as_bytes());
        data.put_u16(0);
        let mut opt = BytesMut::new();
        opt.put_u64(IHAVEOPT);
        opt.put_u32(OPT_GO);
        opt.put_u32(data.len() as u32);
        opt.put_slice(&data);
        s.write_all(&opt).await?;
        let (mut size, mut flags) = (None, 0u16);
        loop {
            if s.read_u64().await? != OPT_REPLY_MAGIC {
                return Err(err("bad option reply magic".into()));
            }
            let _opt = s.read_u32().await?;
            let kind = s.read_u32().await?;
            let len = s.read_u32().await?;
            if len > MAX_OPTION_LEN {
                return Err(err("option reply too large".into()));
            }
            let mut body = vec![0u8; len as usize];
            s.read_exact(&mut body).await?;
            match kind {
                REP_ACK => break,
                REP_INFO if body.len() >= 12 && body[..2] == INFO_EXPORT.to_be_bytes() => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&body[2..10]);
                    size = Some(u64::from_be_bytes(b));
                    flags = u16::from_be_bytes([body[10], body[11]]);
                }
                REP_INFO => {}
                k if k & (1 << 31) != 0 => {
                    return Err(err(format!(
                        "server refused export `{export}`: {}",
                        String::from_utf8_lossy(&body)
                    )))
                }
                _ => {}
            }
        }
        let size = size.ok_or_else(|| err("server sent no export size".into()))?;
        let (rd, wr) = s.into_split();
        Ok(NbdClient {
            rd: BufReader::new(rd),
            wr: BufWriter::new(wr),
            size,
            flags,
            next_cookie: 1,
            pending: HashMap::new(),
        })
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags the server advertised.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    async fn send(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> io::Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut h = BytesMut::with_capacity(28);
        h.put_u32(REQUEST_MAGIC);
        h.put_u16(flags);
        h.put_u16(kind);
        h.put_u64(cookie);
        h.put_u64(offset);
        h.put_u32(len);
        self.wr.write_all(&h).await?;
        self.wr.write_all(data).await?;
        self.pending
            .insert(cookie, if kind == CMD_READ { len } else { 0 });
        Ok(cookie)
    }

    /// Queues a WRITE; call [`NbdClient::complete`] for its reply.
    pub async fn send_write(&mut self, offset: u64, data: &[u8]) -> io::Result<u64> {
        self.send(CMD_WRITE, 0, offset, data.len() as u32, data)
            .await
    }

    /// Queues a READ.
    pub async fn send_read(&mut self, offset: u64, len: u32) -> io::Result<u64> {
        self.send(CMD_READ, 0, offset, len, &[]).await
    }

    /// Queues a FLUSH.
    pub async fn send_flush(&mut self) -> io::Result<u64> {
        self.send(CMD_FLUSH, 0, 0, 0, &[]).await
    }

    /// Sends queued requests and waits for the next reply.
    pub async fn complete(&mut self) -> io::Result<Completion> {
        self.wr.flush().await?;
        if self.rd.read_u32().await? != SIMPLE_REPLY_MAGIC {
            return Err(err("bad reply magic".into()));
        }
        let error = self.rd.read_u32().await?;
        let cookie = self.rd.read_u64().await?;
        let len = self
            .pending
            .remove(&cookie)
            .ok_or_else(|| err(format!("reply for unknown cookie {cookie}")))?;
        let mut data = Vec::new();
        if error == 0 && len > 0 {
            data = vec![0u8; len as usize];
            self.rd.read_exact(&mut data).await?;
        }
        Ok(Completion {
            cookie,
            error,
            data,
        })
    }

    /// Number of requests sent and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sends NBD_CMD_DISC and closes.
    pub async fn disconnect(mut self) -> io::Result<()> {
        let _ = self.send(CMD_DISC, 0, 0, 0, &[]).await?;
        self.wr.flush().await?;
        self.wr.shutdown().await
    }
}
