//! A frame on the wire: a little-endian u32 length, then a prost `Frame`.
//!
//! Both directions avoid copying large Raft messages in user space. The
//! encoder writes a frame as pieces for one vectored write: small items are
//! encoded into a header buffer as usual, but an envelope whose message is
//! at least [`REFERENCE_MIN`] bytes is written by reference (its prost
//! field header goes into the buffer, its bytes are a piece of their own).
//! The reader cuts each frame out of one receive buffer that the socket
//! fills directly, so prost's decode slices messages out of it. Each byte of
//! a 1 MiB write is then copied by the kernel on either side and not again
//! by the transport.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{OutgoingEnvelope, MAX_FRAME};
use crate::rpc::{RpcRequest, RpcResponse};

/// Messages at least this long are written by reference, not copied into
/// the frame buffer (below it one memcpy is cheaper than an extra iovec).
pub const REFERENCE_MIN: usize = 16 << 10;
/// The receive buffer grows by this much when it runs low.
const READ_CHUNK: usize = 256 << 10;
/// Below this much free room the receive buffer is grown before reading.
const MIN_READ: usize = 16 << 10;

/// A frame being sent: the same fields as [`super::Frame`], with the Raft
/// messages in pieces.
#[derive(Debug, Default)]
pub struct OutgoingFrame {
    /// Sending node id.
    pub from: u64,
    /// The messages.
    pub envelopes: Vec<OutgoingEnvelope>,
    /// Forwarded requests.
    pub requests: Vec<RpcRequest>,
    /// Answers to requests this node received.
    pub responses: Vec<RpcResponse>,
}

/// Bytes of an envelope's body (its fields, without its own field header).
fn envelope_body_len(e: &OutgoingEnvelope) -> usize {
    let group = if e.group != 0 {
        1 + encoded_len_varint(e.group)
    } else {
        0
    };
    let len = e.message_len();
    let message = if len == 0 {
        0
    } else {
        1 + encoded_len_varint(len as u64) + len
    };
    group + message
}

/// The frame's encoded length (without the length prefix).
fn frame_len(frame: &OutgoingFrame) -> usize {
    let from = if frame.from != 0 {
        1 + encoded_len_varint(frame.from)
    } else {
        0
    };
    let envelopes: usize = frame
        .envelopes
        .iter()
        .map(|e| {
            let body = envelope_body_len(e);
            1 + encoded_len_varint(body as u64) + body
        })
        .sum();
    from + envelopes
        + prost::encoding::message::encoded_len_repeated(3, &frame.requests)
        + prost::encoding::message::encoded_len_repeated(4, &frame.responses)
}

/// The frame with its length prefix, as pieces to write in order: a
/// `super::Frame` as prost encodes it.
pub fn encode(frame: &OutgoingFrame) -> Vec<Bytes> {
    let len = frame_len(frame);
    let mut head = BytesMut::with_capacity(4 + len.min(64 << 10));
    head.put_u32_le(len as u32);
    let mut parts = Vec::new();
    if frame.from != 0 {
        prost::encoding::uint64::encode(1, &frame.from, &mut head);
    }
    for e in &frame.envelopes {
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(envelope_body_len(e) as u64, &mut head);
        if e.group != 0 {
            prost::encoding::uint64::encode(1, &e.group, &mut head);
        }
        let len = e.message_len();
        if len == 0 {
            continue;
        }
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(len as u64, &mut head);
        for piece in &e.pieces {
            if piece.len() >= REFERENCE_MIN {
                parts.push(head.split().freeze());
                parts.push(piece.clone());
            } else {
                head.extend_from_slice(piece);
            }
        }
    }
    for r in &frame.requests {
        prost::encoding::message::encode(3, r, &mut head);
    }
    for r in &frame.responses {
        prost::encoding::message::encode(4, r, &mut head);
    }
    if !head.is_empty() {
        parts.push(head.freeze());
    }
    parts
}

/// Cuts frames out of one receive buffer the socket reads into.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame's bytes (without the length prefix); `None` when the
    /// peer closed the connection between two frames.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<Option<Bytes>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("frame of {len} bytes exceeds {MAX_FRAME}"),
                    ));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                // Room for the whole frame, so its bytes stay contiguous.
                self.buf.reserve(4 + len - self.buf.len());
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(READ_CHUNK);
            }
            if rd.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Frame;
    use prost::Message as _;

    fn frame() -> OutgoingFrame {
        let big = |n: usize, b: u8| Bytes::from(vec![b; n]);
        OutgoingFrame {
            from: 7,
            envelopes: vec![
                OutgoingEnvelope {
                    group: 0,
                    pieces: vec![big(REFERENCE_MIN, 1)],
                },
                OutgoingEnvelope {
                    group: 3,
                    pieces: vec![big(10, 2)],
                },
                OutgoingEnvelope {
                    group: u64::MAX,
                    pieces: vec![big(7, 4), big(1 << 20, 3), big(5, 6), big(REFERENCE_MIN, 7)],
                },
                OutgoingEnvelope {
                    group: 5,
                    pieces: vec![],
                },
                OutgoingEnvelope {
                    group: 6,
                    pieces: vec![Bytes::new(), Bytes::new()],
                },
            ],
            requests: vec![RpcRequest::default()],
            responses: vec![RpcResponse::default(), RpcResponse::default()],
        }
    }

    /// What the receiver should decode `f` as.
    fn decoded(f: &OutgoingFrame) -> Frame {
        Frame {
            from: f.from,
            envelopes: f
                .envelopes
                .iter()
                .map(OutgoingEnvelope::to_envelope)
                .collect(),
            requests: f.requests.clone(),
            responses: f.responses.clone(),
        }
    }

    #[test]
    fn pieces_decode_to_the_frame() {
        for f in [frame(), OutgoingFrame::default()] {
            let parts = encode(&f);
            let mut all = Vec::new();
            for p in &parts {
                all.extend_from_slice(p);
            }
            let len = u32::from_le_bytes([all[0], all[1], all[2], all[3]]) as usize;
            assert_eq!(len, all.len() - 4);
            let want = decoded(&f);
            assert_eq!(len, want.encoded_len());
            assert_eq!(Frame::decode(&all[4..]).ok(), Some(want));
        }
    }

    #[tokio::test]
    async fn frames_survive_any_split_of_the_stream() -> io::Result<()> {
        let frames = [frame(), OutgoingFrame::default(), frame()];
        let mut stream = Vec::new();
        for f in &frames {
            for p in encode(f) {
                stream.extend_from_slice(&p);
            }
        }
        // The reader sees the stream in pieces of awkward sizes.
        let (mut tx, mut rx) = tokio::io::duplex(7919);
        let writer = tokio::spawn(async move {
            let mut parts = vec![Bytes::from(stream)];
            raftblock_storage::gather::write_all_vectored(&mut tx, &mut parts).await
        });
        let mut reader = FrameReader::default();
        for f in &frames {
            let bytes = reader.next(&mut rx).await?;
            assert_eq!(bytes.and_then(|b| Frame::decode(b).ok()), Some(decoded(f)));
        }
        writer.await.map_err(io::Error::other)??;
        assert_eq!(reader.next(&mut rx).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn an_oversized_length_is_an_error() {
        let mut stream: &[u8] = &(MAX_FRAME as u32 + 1).to_le_bytes();
        let r = FrameReader::default().next(&mut stream).await;
        assert!(matches!(r, Err(e) if e.kind() == io::ErrorKind::InvalidData));
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error() {
        let mut stream: &[u8] = &[10, 0, 0, 0, 1, 2];
        let r = FrameReader::default().next(&mut stream).await;
        assert!(matches!(r, Err(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }
}
