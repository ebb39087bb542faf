//! A deliberately small NBD client over a blocking socket: fixed newstyle
//! handshake with `NBD_OPT_GO`, simple replies only, and raw access to the
//! stream so tests can send exactly the bytes they mean — valid requests,
//! requests the server must refuse, and garbage.

use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// `NBD_CMD_FLAG_FUA`.
pub const FLAG_FUA: u16 = 1;
/// `NBD_CMD_FLAG_DF` (only valid on reads with structured replies).
pub const FLAG_DF: u16 = 1 << 2;

/// `EIO` as NBD sends it.
pub const EIO: u32 = 5;
/// `EINVAL` as NBD sends it.
pub const EINVAL: u32 = 22;
/// `ENOSPC` as NBD sends it.
pub const ENOSPC: u32 = 28;
/// `EOVERFLOW` as NBD sends it.
pub const EOVERFLOW: u32 = 75;

/// One simple reply.
#[derive(Debug)]
pub struct Reply {
    /// NBD error code (0 on success).
    pub error: u32,
    /// The handle of the request it answers.
    pub handle: u64,
}

/// A connection in the transmission phase.
pub struct RawNbd {
    stream: TcpStream,
    /// Export size from `NBD_INFO_EXPORT`.
    pub size: u64,
    /// Transmission flags from `NBD_INFO_EXPORT`.
    pub flags: u16,
    next_handle: u64,
}

impl RawNbd {
    /// Connects and negotiates export `name` with `NBD_OPT_GO`.
    pub fn connect(addr: SocketAddr, name: &str) -> Result<RawNbd> {
        let s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        RawNbd::handshake(s, name)
    }

    /// Like [`RawNbd::connect`], but gives up when connecting or the
    /// handshake takes longer than `timeout` (a SIGSTOPped server still
    /// accepts connections in the kernel, then never greets); after the
    /// handshake every send and reply may take up to `io_timeout`.
    pub fn connect_timeout(
        addr: SocketAddr,
        name: &str,
        timeout: Duration,
        io_timeout: Duration,
    ) -> Result<RawNbd> {
        let s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let nbd = RawNbd::handshake(s, name)?;
        nbd.stream.set_read_timeout(Some(io_timeout))?;
        nbd.stream.set_write_timeout(Some(io_timeout))?;
        Ok(nbd)
    }

    fn handshake(mut s: TcpStream, name: &str) -> Result<RawNbd> {
        s.set_nodelay(true)?;
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).context("server greeting")?;
        if be64(&greet[0..8]) != NBDMAGIC || be64(&greet[8..16]) != IHAVEOPT {
            bail!("not a newstyle NBD server");
        }
        // Client flags: fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes())?;
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        s.write_all(&opt)?;
        let (mut size, mut flags) = (None, 0);
        loop {
            let mut hdr = [0u8; 20];
            s.read_exact(&mut hdr).context("option reply")?;
            if be64(&hdr[0..8]) != OPT_REPLY_MAGIC {
                bail!("bad option reply magic");
            }
            let kind = be32(&hdr[12..16]);
            let mut body = vec![0u8; be32(&hdr[16..20]) as usize];
            s.read_exact(&mut body).context("option reply body")?;
            match kind {
                REP_ACK => break,
                REP_INFO if body.len() >= 12 && u16::from_be_bytes([body[0], body[1]]) == 0 => {
                    size = Some(be64(&body[2..10]));
                    flags = u16::from_be_bytes([body[10], body[11]]);
                }
                REP_INFO => {}
                k if k & (1 << 31) != 0 => {
                    bail!(
                        "NBD_OPT_GO refused: {k:#x} {}",
                        String::from_utf8_lossy(&body)
                    )
                }
                k => bail!("unexpected option reply {k}"),
            }
        }
        Ok(RawNbd {
            stream: s,
            size: size.context("no NBD_INFO_EXPORT")?,
            flags,
            next_handle: 1,
        })
    }

    /// Sends one request header (and `payload` after it); returns its handle.
    pub fn send(
        &mut self,
        flags: u16,
        cmd: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut req = Vec::with_capacity(28 + payload.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.stream.write_all(&req)?;
        Ok(handle)
    }

    /// Reads one simple reply header.
    pub fn reply(&mut self) -> Result<Reply> {
        let mut hdr = [0u8; 16];
        self.stream.read_exact(&mut hdr).context("reply header")?;
        if be32(&hdr[0..4]) != SIMPLE_REPLY_MAGIC {
            bail!("bad simple reply magic {:#x}", be32(&hdr[0..4]));
        }
        Ok(Reply {
            error: be32(&hdr[4..8]),
            handle: be64(&hdr[8..16]),
        })
    }

    /// Reads `len` bytes at `offset`: the data, or the NBD error code.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Result<Vec<u8>, u32>> {
        let h = self.send(0, CMD_READ, offset, len, &[])?;
        let r = self.reply()?;
        if r.handle != h {
            bail!("reply for handle {} instead of {h}", r.handle);
        }
        if r.error != 0 {
            return Ok(Err(r.error));
        }
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data).context("read payload")?;
        Ok(Ok(data))
    }

    /// Sends a request without payload and returns the error code of its reply.
    pub fn command(&mut self, flags: u16, cmd: u16, offset: u64, len: u32) -> Result<u32> {
        let h = self.send(flags, cmd, offset, len, &[])?;
        let r = self.reply()?;
        if r.handle != h {
            bail!("reply for handle {} instead of {h}", r.handle);
        }
        Ok(r.error)
    }

    /// Writes `data` at `offset` (with FUA if asked); returns the error code.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<u32> {
        let flags = if fua { FLAG_FUA } else { 0 };
        let h = self.send(flags, CMD_WRITE, offset, data.len() as u32, data)?;
        let r = self.reply()?;
        if r.handle != h {
            bail!("reply for handle {} instead of {h}", r.handle);
        }
        Ok(r.error)
    }

    /// Sends `NBD_CMD_FLUSH`; returns the error code.
    pub fn flush(&mut self) -> Result<u32> {
        self.command(0, CMD_FLUSH, 0, 0)
    }

    /// Sends arbitrary bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Whether the server has closed the connection (waits up to `wait`).
    pub fn closed_by_server(&mut self, wait: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(wait));
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Half-closes the sending side (a client that stops mid-request).
    pub fn shutdown_write(&mut self) -> Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}
