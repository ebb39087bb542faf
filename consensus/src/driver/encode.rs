//! Raft messages encoded for the transport in pieces. A MsgAppend carrying
//! a 1 MiB write would otherwise be copied whole into its protobuf buffer,
//! once per follower. Here the message is encoded without its entries,
//! then each entry without its data, and large data goes out as a piece
//! of its own by reference. Protobuf readers accept fields in any order
//! and append repeated fields, so the pieces joined decode to the same
//! message (the test below checks it against the crate's own parser).

use bytes::{Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use protobuf::{Message as _, ProtobufError};
use raft::prelude::Message;

use crate::transport::OutgoingEnvelope;

/// Entry data at least this long becomes a piece of its own.
const PIECE_MIN: usize = 16 << 10;
/// `Message.entries` and `Entry.data` in eraftpb.proto.
const ENTRIES_FIELD: u32 = 7;
const DATA_FIELD: u32 = 4;

/// Encodes `m` of `group` for sending.
pub(super) fn envelope(group: u64, m: Message) -> Result<OutgoingEnvelope, ProtobufError> {
    Ok(OutgoingEnvelope {
        group,
        pieces: pieces(m)?,
    })
}

fn pieces(mut m: Message) -> Result<Vec<Bytes>, ProtobufError> {
    if m.entries.iter().all(|e| e.data.len() < PIECE_MIN) {
        return Ok(vec![m.write_to_bytes()?.into()]);
    }
    let entries = m.take_entries();
    let mut pieces = vec![Bytes::from(m.write_to_bytes()?)];
    let mut head = BytesMut::new();
    for mut e in entries.into_iter() {
        let data = std::mem::take(&mut e.data);
        let rest = e.write_to_bytes()?;
        let data_len = if data.is_empty() {
            0
        } else {
            1 + encoded_len_varint(data.len() as u64) + data.len()
        };
        encode_key(ENTRIES_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint((rest.len() + data_len) as u64, &mut head);
        head.extend_from_slice(&rest);
        if data.is_empty() {
            continue;
        }
        encode_key(DATA_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint(data.len() as u64, &mut head);
        if data.len() >= PIECE_MIN {
            pieces.push(head.split().freeze());
            pieces.push(data);
        } else {
            head.extend_from_slice(&data);
        }
    }
    if !head.is_empty() {
        pieces.push(head.freeze());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{Entry, EntryType, MessageType};

    fn entry(index: u64, data: usize, context: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.set_entry_type(if index.is_multiple_of(2) {
            EntryType::EntryNormal
        } else {
            EntryType::EntryConfChange
        });
        e.index = index;
        e.term = 3;
        e.data = Bytes::from((0..data).map(|i| i as u8).collect::<Vec<_>>());
        e.context = Bytes::copy_from_slice(context);
        e
    }

    #[test]
    fn pieces_decode_to_the_message() -> Result<(), ProtobufError> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        m.index = 9;
        m.log_term = 2;
        m.commit = 8;
        m.context = Bytes::from_static(b"ctx");
        let small = m.clone();
        m.set_entries(
            vec![
                entry(10, 1 << 20, b""),
                entry(11, 10, b"c"),
                entry(12, 0, b""),
                entry(13, PIECE_MIN, b"more"),
                entry(14, PIECE_MIN - 1, b""),
            ]
            .into(),
        );
        for msg in [m, small] {
            let env = envelope(5, msg.clone())?;
            assert_eq!(env.group, 5);
            let joined = env.to_envelope().message;
            assert_eq!(Message::parse_from_carllerche_bytes(&joined)?, msg);
        }
        Ok(())
    }

    #[test]
    fn large_data_is_not_copied() -> Result<(), ProtobufError> {
        let mut m = Message::default();
        m.set_entries(vec![entry(2, 1 << 20, b"")].into());
        let data = m.entries[0].data.clone();
        let env = envelope(1, m)?;
        assert!(env.pieces.iter().any(|p| p.as_ptr() == data.as_ptr()));
        Ok(())
    }
}
