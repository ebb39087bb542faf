//! Gathering writes of `Bytes` pieces to a stream: a header and the data it
//! describes go out in one system call without first being copied into one
//! buffer. Here because both the NBD server (volume-driver) and the Raft
//! transport (consensus) write this way, and storage is the crate below both.

use bytes::{Buf, Bytes};
use std::io::{self, IoSlice};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most iovecs handed to one `writev` (Linux's IOV_MAX is 1024).
pub const MAX_IOVECS: usize = 1024;

/// Writes every piece in order with vectored writes, then empties `pieces`.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    pieces: &mut Vec<Bytes>,
) -> io::Result<()> {
    pieces.retain(|p| !p.is_empty());
    let mut start = 0;
    while start < pieces.len() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> = pieces[start..]
                .iter()
                .take(MAX_IOVECS)
                .map(|b| IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && start < pieces.len() {
            let len = pieces[start].len();
            if n >= len {
                n -= len;
                start += 1;
            } else {
                pieces[start].advance(n);
                n = 0;
            }
        }
    }
    pieces.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn pieces_arrive_in_order_through_short_writes() -> io::Result<()> {
        let mut pieces: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![i as u8; (i % 7) as usize]))
            .collect();
        let want: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
        // A small pipe makes every write short.
        let (mut tx, mut rx) = tokio::io::duplex(97);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.map(|_| got)
        });
        write_all_vectored(&mut tx, &mut pieces).await?;
        drop(tx);
        assert!(pieces.is_empty());
        assert_eq!(reader.await.map_err(io::Error::other)??, want);
        Ok(())
    }
}
