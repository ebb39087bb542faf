//! NBD wire constants and the encoding of option and transmission replies
//! (fixed newstyle handshake, compact headers, simple and structured replies).

use bytes::{BufMut, Bytes, BytesMut};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_CACHE: u16 = 1 << 10;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Smallest I/O unit advertised (requests must be aligned to it).
pub const MIN_BLOCK: u32 = 512;
/// Preferred I/O unit advertised.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest READ/WRITE payload advertised and accepted.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload accepted during negotiation.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// The meta context we serve and its id on every connection.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Maps a Linux errno to the NBD error value on the wire.
pub fn nbd_errno(errno: i32) -> u32 {
    match errno {
        libc_errno::EPERM => EPERM,
        libc_errno::EINVAL => EINVAL,
        libc_errno::ENOSPC | libc_errno::EDQUOT | libc_errno::EFBIG => ENOSPC,
        libc_errno::EOVERFLOW => EOVERFLOW,
        libc_errno::ENOTSUP => ENOTSUP,
        libc_errno::ESHUTDOWN => ESHUTDOWN,
        _ => EIO,
    }
}

/// Linux errno values (kept local so this crate needs no libc).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EOVERFLOW: i32 = 75;
    pub const ENOTSUP: i32 = 95;
    pub const ESHUTDOWN: i32 = 108;
    pub const EDQUOT: i32 = 122;
}

/// An option reply header plus payload.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(OPT_REPLY_MAGIC);
    b.put_u32(option);
    b.put_u32(kind);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

/// A simple reply header (READ data, if any, follows separately).
pub fn simple_reply(error: u32, cookie: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u32(SIMPLE_REPLY_MAGIC);
    b.put_u32(error);
    b.put_u64(cookie);
    b.freeze()
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> BytesMut {
    let mut b = BytesMut::with_capacity(20 + 16);
    b.put_u32(STRUCTURED_REPLY_MAGIC);
    b.put_u16(flags);
    b.put_u16(kind);
    b.put_u64(cookie);
    b.put_u32(len);
    b
}

/// A structured error chunk (always the last of its reply).
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Bytes {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut b = chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    b.put_u32(error);
    b.put_u16(msg.len() as u16);
    b.put_slice(msg);
    b.freeze()
}

/// A 28-byte compact request header.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Parses a header; `None` when the magic is wrong.
    pub fn parse(h: &[u8; 28]) -> Option<Request> {
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if magic != REQUEST_MAGIC {
            return None;
        }
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&h[8..16]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&h[16..24]);
        Some(Request {
            flags: u16::from_be_bytes([h[4], h[5]]),
            kind: u16::from_be_bytes([h[6], h[7]]),
            cookie: u64::from_be_bytes(cookie),
            offset: u64::from_be_bytes(offset),
            length: u32::from_be_bytes([h[24], h[25], h[26], h[27]]),
        })
    }
}

/// Human name of a command, for logs and metrics.
pub fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disc",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write_zeroes",
        CMD_BLOCK_STATUS => "block_status",
        _ => "unknown",
    }
}

impl crate::metrics::Op {
    /// The metrics series a command counts in (kept here, beside the wire
    /// codes, so the metrics module does not depend on the NBD server).
    pub fn of(kind: u16) -> crate::metrics::Op {
        use crate::metrics::Op;
        match kind {
            CMD_READ => Op::Read,
            CMD_WRITE => Op::Write,
            CMD_FLUSH => Op::Flush,
            CMD_TRIM => Op::Trim,
            CMD_WRITE_ZEROES => Op::WriteZeroes,
            CMD_BLOCK_STATUS => Op::BlockStatus,
            _ => Op::Other,
        }
    }
}
