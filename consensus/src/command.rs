//! What a shard's Raft log carries: block commands in volume offsets, each
//! inside one chunk of the shard, with the attach epoch of the writer so a
//! fenced node's late writes are refused at apply time on every replica
//! alike. Encoded with prost (derive macros; no protoc needed).

use bytes::Bytes;
use prost::Message as _;

/// A command in a shard's log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardCommand {
    /// Volume id.
    #[prost(uint64, tag = "1")]
    pub volume: u64,
    /// Attach epoch of the writer (0: not fenced).
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// What to do.
    #[prost(oneof = "BlockOp", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub op: Option<BlockOp>,
}

/// A block operation at volume offsets.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum BlockOp {
    /// Write `data` at `offset`.
    #[prost(message, tag = "3")]
    Write(WriteOp),
    /// Deallocate `[offset, offset + len)` (reads as zeros).
    #[prost(message, tag = "4")]
    Trim(RangeOp),
    /// Zero `[offset, offset + len)`, keeping it allocated.
    #[prost(message, tag = "5")]
    ZeroAllocated(RangeOp),
    /// Zero `[offset, offset + len)`, punching holes where whole blocks are covered.
    #[prost(message, tag = "6")]
    Zero(RangeOp),
    /// From here on, refuse writes whose epoch is below this command's
    /// (the volume was attached again, with this epoch).
    #[prost(message, tag = "7")]
    Fence(FenceOp),
    /// Every replica records its checksum tables of the shard here, at the
    /// same log index, and notes the blocks written after it (`verify`).
    #[prost(message, tag = "8")]
    Cut(CutOp),
    /// Rewrite one block found to differ between replicas at cut `cut`,
    /// unless it was written after the cut.
    #[prost(message, tag = "9")]
    Repair(RepairOp),
    /// The comparison at cut `id` is over.
    #[prost(message, tag = "10")]
    CutEnd(CutOp),
    /// The volume goes from `from` bytes to `size` (`meta::resize`): each
    /// replica clears the shard's blocks between the two sizes.
    #[prost(message, tag = "11")]
    Resize(ResizeOp),
}

/// A resize of the volume.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResizeOp {
    /// The size before.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The size after.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// The volume's resize number (`meta::PendingResize::seq`): a replica
    /// applies each one once, so a late duplicate proposal changes nothing.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
}

/// A consistent cut for comparing replicas.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CutOp {
    /// Chosen by the comparing node.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// A block repaired from the replicas' majority.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepairOp {
    /// The cut the comparison was made at.
    #[prost(uint64, tag = "1")]
    pub cut: u64,
    /// Volume offset of the 4 KiB block.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// The majority's bytes (empty: the majority holds a hole).
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
}

/// A fence; its epoch is the command's.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FenceOp {}

/// A write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteOp {
    /// Volume offset.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// The bytes.
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
}

/// A range without payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeOp {
    /// Volume offset.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// Length in bytes.
    #[prost(uint64, tag = "2")]
    pub len: u64,
}

impl ShardCommand {
    /// A write command.
    pub fn write(volume: u64, epoch: u64, offset: u64, data: Bytes) -> ShardCommand {
        ShardCommand {
            volume,
            epoch,
            op: Some(BlockOp::Write(WriteOp { offset, data })),
        }
    }

    /// A trim command.
    pub fn trim(volume: u64, epoch: u64, offset: u64, len: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch,
            op: Some(BlockOp::Trim(RangeOp { offset, len })),
        }
    }

    /// A zero-but-keep-allocated command.
    pub fn zero_allocated(volume: u64, epoch: u64, offset: u64, len: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch,
            op: Some(BlockOp::ZeroAllocated(RangeOp { offset, len })),
        }
    }

    /// A zero command that may punch holes.
    pub fn zero(volume: u64, epoch: u64, offset: u64, len: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch,
            op: Some(BlockOp::Zero(RangeOp { offset, len })),
        }
    }

    /// A fence at `epoch`.
    pub fn fence(volume: u64, epoch: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch,
            op: Some(BlockOp::Fence(FenceOp {})),
        }
    }

    /// A cut for comparing the replicas.
    pub fn cut(volume: u64, id: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch: 0,
            op: Some(BlockOp::Cut(CutOp { id })),
        }
    }

    /// A repair of the block at `offset` found divergent at cut `cut`.
    pub fn repair(volume: u64, cut: u64, offset: u64, data: Bytes) -> ShardCommand {
        ShardCommand {
            volume,
            epoch: 0,
            op: Some(BlockOp::Repair(RepairOp { cut, offset, data })),
        }
    }

    /// The end of the comparison at cut `id`.
    pub fn cut_end(volume: u64, id: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch: 0,
            op: Some(BlockOp::CutEnd(CutOp { id })),
        }
    }

    /// Resize number `seq`, from `from` to `size` bytes.
    pub fn resize(volume: u64, seq: u64, from: u64, size: u64) -> ShardCommand {
        ShardCommand {
            volume,
            epoch: 0,
            op: Some(BlockOp::Resize(ResizeOp { from, size, seq })),
        }
    }

    /// Encodes for a Raft proposal.
    pub fn encode_bytes(&self) -> Bytes {
        self.encode_to_vec().into()
    }

    /// Decodes a committed entry's data.
    pub fn decode_bytes(data: &[u8]) -> Result<ShardCommand, prost::DecodeError> {
        ShardCommand::decode(data)
    }

    /// `(offset, len)` the command touches.
    pub fn range(&self) -> Option<(u64, u64)> {
        match &self.op {
            Some(BlockOp::Write(w)) => Some((w.offset, w.data.len() as u64)),
            Some(BlockOp::Trim(r)) | Some(BlockOp::ZeroAllocated(r)) | Some(BlockOp::Zero(r)) => {
                Some((r.offset, r.len))
            }
            Some(BlockOp::Repair(r)) => Some((r.offset, raftblock_storage::BLOCK_SIZE)),
            Some(BlockOp::Fence(_) | BlockOp::Cut(_) | BlockOp::CutEnd(_) | BlockOp::Resize(_))
            | None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() -> Result<(), prost::DecodeError> {
        let cmds = [
            ShardCommand::write(3, 7, 4096, Bytes::from_static(b"abc")),
            ShardCommand::trim(3, 7, 0, 1 << 20),
            ShardCommand::zero_allocated(3, 0, 8192, 4096),
            ShardCommand::fence(3, 9),
            ShardCommand::cut(3, 11),
            ShardCommand::repair(3, 11, 8192, Bytes::from_static(b"z")),
            ShardCommand::cut_end(3, 11),
            ShardCommand::resize(3, 1, 1 << 30, 2 << 30),
        ];
        for c in cmds {
            let back = ShardCommand::decode_bytes(&c.encode_bytes())?;
            assert_eq!(back, c);
        }
        assert_eq!(
            ShardCommand::write(1, 1, 10, Bytes::from_static(b"xy")).range(),
            Some((10, 2))
        );
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ShardCommand::decode_bytes(&[0xff, 0xff, 0xff]).is_err());
    }
}
