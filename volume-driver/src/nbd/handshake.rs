//! Option haggling: fixed newstyle greeting, then EXPORT_NAME, ABORT, LIST,
//! INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT. Any
//! other option is answered NBD_REP_ERR_UNSUP and negotiation goes on.

use bytes::{BufMut, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proto::*;
use super::{ExportCatalog, OpenExport};

/// What negotiation agreed on.
pub struct Negotiated<V> {
    /// The export entered.
    pub export: OpenExport<V>,
    /// Structured replies negotiated.
    pub structured: bool,
    /// `base:allocation` selected for this export.
    pub allocation_context: bool,
}

/// Transmission flags for an export, given what was negotiated.
pub fn transmission_flags(structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_CAN_MULTI_CONN
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO;
    if structured {
        f |= TF_SEND_DF;
    }
    f
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

struct Parser<'a> {
    data: &'a [u8],
}

impl<'a> Parser<'a> {
    fn u16(&mut self) -> Option<u16> {
        let (h, t) = self.data.split_first_chunk::<2>()?;
        self.data = t;
        Some(u16::from_be_bytes(*h))
    }
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.data.split_first_chunk::<4>()?;
        self.data = t;
        Some(u32::from_be_bytes(*h))
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (h, t) = self.data.split_at(n);
        self.data = t;
        Some(h)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).ok()
    }
}

/// Runs the handshake. `Ok(None)` means the client left cleanly (ABORT).
pub async fn negotiate<C: ExportCatalog>(
    sock: &mut TcpStream,
    catalog: &C,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> io::Result<Option<Negotiated<C::Volume>>> {
    let mut hello = BytesMut::with_capacity(18);
    hello.put_u64(NBDMAGIC);
    hello.put_u64(IHAVEOPT);
    hello.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    sock.write_all(&hello).await?;
    let client_flags = sock.read_u32().await?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(bad("client sent unknown handshake flags"));
    }
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let mut structured = false;
    // (export name, selected) from the last SET_META_CONTEXT.
    let mut meta_selection: Option<(String, bool)> = None;
    loop {
        let magic = sock.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(bad("bad option magic"));
        }
        let option = sock.read_u32().await?;
        let len = sock.read_u32().await?;
        if len > MAX_OPTION_LEN {
            // Too big to be a real option: answer, then hang up (DoS guard).
            let _ = sock
                .write_all(&option_reply(option, REP_ERR_TOO_BIG, b"option too large"))
                .await;
            return Err(bad("option payload too large"));
        }
        let mut data = vec![0u8; len as usize];
        sock.read_exact(&mut data).await?;
        if *shutdown.borrow() && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                return Err(bad("server is shutting down"));
            }
            reply_err(sock, option, REP_ERR_SHUTDOWN, "server is shutting down").await?;
            continue;
        }
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8(data).map_err(|_| bad("export name is not UTF-8"))?;
                let export = super::open_export(catalog, &name)
                    .await
                    .map_err(|e| bad(&format!("EXPORT_NAME for `{name}` refused: {e}")))?;
                let mut b = BytesMut::with_capacity(10 + 124);
                b.put_u64(raftblock_storage::VolumeIo::size(export.volume.as_ref()));
                b.put_u16(transmission_flags(structured));
                if !no_zeroes {
                    b.put_bytes(0, 124);
                }
                sock.write_all(&b).await?;
                let allocation_context = matches!(&meta_selection, Some((n, true)) if *n == name);
                return Ok(Some(Negotiated {
                    export,
                    structured,
                    allocation_context,
                }));
            }
            OPT_ABORT => {
                let _ = sock.write_all(&option_reply(option, REP_ACK, &[])).await;
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_err(sock, option, REP_ERR_INVALID, "LIST takes no data").await?;
                    continue;
                }
                for e in catalog.list() {
                    let mut b = BytesMut::new();
                    b.put_u32(e.name.len() as u32);
                    b.put_slice(e.name.as_bytes());
                    b.put_slice(e.description.as_bytes());
                    sock.write_all(&option_reply(option, REP_SERVER, &b))
                        .await?;
                }
                sock.write_all(&option_reply(option, REP_ACK, &[])).await?;
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_err(
                        sock,
                        option,
                        REP_ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                    continue;
                }
                structured = true;
                sock.write_all(&option_reply(option, REP_ACK, &[])).await?;
            }
            OPT_INFO | OPT_GO => {
                let mut p = Parser { data: &data };
                let Some(name) = p.string() else {
                    reply_err(sock, option, REP_ERR_INVALID, "malformed INFO/GO request").await?;
                    continue;
                };
                let Some(n) = p.u16() else {
                    reply_err(sock, option, REP_ERR_INVALID, "malformed INFO/GO request").await?;
                    continue;
                };
                let mut wanted = Vec::new();
                for _ in 0..n {
                    match p.u16() {
                        Some(i) => wanted.push(i),
                        None => break,
                    }
                }
                if wanted.len() != n as usize || !p.data.is_empty() {
                    reply_err(sock, option, REP_ERR_INVALID, "INFO/GO length mismatch").await?;
                    continue;
                }
                let export = match super::open_export(catalog, &name).await {
                    Ok(e) => e,
                    Err(e) => {
                        reply_err(sock, option, REP_ERR_UNKNOWN, &e.to_string()).await?;
                        continue;
                    }
                };
                let vol = export.volume.as_ref();
                let mut b = BytesMut::new();
                b.put_u16(INFO_EXPORT);
                b.put_u64(raftblock_storage::VolumeIo::size(vol));
                b.put_u16(transmission_flags(structured));
                sock.write_all(&option_reply(option, REP_INFO, &b)).await?;
                if wanted.contains(&INFO_NAME) {
                    let mut b = BytesMut::new();
                    b.put_u16(INFO_NAME);
                    b.put_slice(raftblock_storage::VolumeIo::name(vol).as_bytes());
                    sock.write_all(&option_reply(option, REP_INFO, &b)).await?;
                }
                if wanted.contains(&INFO_DESCRIPTION) {
                    let mut b = BytesMut::new();
                    b.put_u16(INFO_DESCRIPTION);
                    b.put_slice(export.description.as_bytes());
                    sock.write_all(&option_reply(option, REP_INFO, &b)).await?;
                }
                let mut b = BytesMut::new();
                b.put_u16(INFO_BLOCK_SIZE);
                b.put_u32(MIN_BLOCK);
                b.put_u32(PREFERRED_BLOCK);
                b.put_u32(MAX_PAYLOAD);
                sock.write_all(&option_reply(option, REP_INFO, &b)).await?;
                sock.write_all(&option_reply(option, REP_ACK, &[])).await?;
                if option == OPT_GO {
                    let allocation_context =
                        matches!(&meta_selection, Some((n, true)) if *n == name);
                    return Ok(Some(Negotiated {
                        export,
                        structured,
                        allocation_context,
                    }));
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = option == OPT_SET_META_CONTEXT;
                if set {
                    meta_selection = None;
                }
                if !structured {
                    reply_err(
                        sock,
                        option,
                        REP_ERR_INVALID,
                        "negotiate structured replies first",
                    )
                    .await?;
                    continue;
                }
                let mut p = Parser { data: &data };
                let parsed = (|| {
                    let name = p.string()?;
                    let count = p.u32()?;
                    let mut queries = Vec::new();
                    for _ in 0..count {
                        queries.push(p.string()?);
                    }
                    p.data.is_empty().then_some((name, queries))
                })();
                let Some((name, queries)) = parsed else {
                    reply_err(
                        sock,
                        option,
                        REP_ERR_INVALID,
                        "malformed meta context request",
                    )
                    .await?;
                    continue;
                };
                if let Err(e) = super::open_export(catalog, &name).await {
                    reply_err(sock, option, REP_ERR_UNKNOWN, &e.to_string()).await?;
                    continue;
                }
                let matches = if set {
                    queries.iter().any(|q| q == BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries.iter().any(|q| q == BASE_ALLOCATION || q == "base:")
                };
                if matches {
                    let mut b = BytesMut::new();
                    b.put_u32(if set { BASE_ALLOCATION_ID } else { 0 });
                    b.put_slice(BASE_ALLOCATION.as_bytes());
                    sock.write_all(&option_reply(option, REP_META_CONTEXT, &b))
                        .await?;
                }
                if set {
                    meta_selection = Some((name, matches));
                }
                sock.write_all(&option_reply(option, REP_ACK, &[])).await?;
            }
            other => {
                tracing::debug!(option = other, "unsupported option");
                reply_err(sock, other, REP_ERR_UNSUP, "option not supported").await?;
            }
        }
    }
}

async fn reply_err(sock: &mut TcpStream, option: u32, kind: u32, msg: &str) -> io::Result<()> {
    sock.write_all(&option_reply(option, kind, msg.as_bytes()))
        .await
}
