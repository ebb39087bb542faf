//! Where a chunk lives: chunks of a volume are striped round-robin over its
//! shards, so sequential I/O spreads over several shard leaders (and nodes)
//! instead of hammering one group.

use raftblock_storage::VolumeMeta;

/// A shard of one volume: a Raft group holding a subset of its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    /// Volume id (from the catalog).
    pub volume: u64,
    /// Shard index within the volume.
    pub index: u32,
}

/// How a volume's chunks map to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    volume: u64,
    chunk_size: u64,
    chunks: u64,
    shards: u32,
}

/// Shard count chosen for a volume when none is given: one per 16 chunks
/// (1 GiB at the default chunk size), at least 1 and at most 64.
pub fn default_shards(size: u64, chunk_size: u64) -> u32 {
    let chunks = size.div_ceil(chunk_size);
    chunks.div_ceil(16).clamp(1, 64) as u32
}

impl ShardLayout {
    /// The layout of `meta` with `shards` shards (capped at the chunk count).
    pub fn new(meta: &VolumeMeta, shards: u32) -> ShardLayout {
        let chunks = meta.size.div_ceil(meta.chunk_size).max(1);
        ShardLayout {
            volume: meta.id,
            chunk_size: meta.chunk_size,
            chunks,
            shards: shards.clamp(1, chunks.min(u32::MAX as u64) as u32),
        }
    }

    /// The same striping over a volume of `size` bytes (a resize keeps the
    /// shard count, so every chunk stays in its shard).
    pub fn with_size(&self, size: u64) -> ShardLayout {
        ShardLayout {
            chunks: size.div_ceil(self.chunk_size).max(1),
            ..*self
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard holding chunk `chunk`.
    pub fn shard_of_chunk(&self, chunk: u64) -> ShardId {
        ShardId {
            volume: self.volume,
            index: (chunk % self.shards as u64) as u32,
        }
    }

    /// The shard holding volume offset `offset`.
    pub fn shard_of_offset(&self, offset: u64) -> ShardId {
        self.shard_of_chunk(offset / self.chunk_size)
    }

    /// The chunks of `shard`, in order.
    pub fn chunks_of(&self, shard: ShardId) -> impl Iterator<Item = u64> + '_ {
        (shard.index as u64..self.chunks).step_by(self.shards as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, chunk: u64) -> VolumeMeta {
        VolumeMeta {
            id: 9,
            name: "v".into(),
            size,
            chunk_size: chunk,
            created_unix: 0,
            checksum: String::new(),
        }
    }

    #[test]
    fn chunks_are_striped_and_each_lands_once() {
        let l = ShardLayout::new(&meta(10 << 20, 1 << 20), 3);
        assert_eq!(l.shards(), 3);
        assert_eq!(l.shard_of_offset(0).index, 0);
        assert_eq!(l.shard_of_offset(1 << 20).index, 1);
        assert_eq!(l.shard_of_offset(3 << 20).index, 0);
        let mut seen: Vec<u64> = (0..3)
            .flat_map(|i| {
                l.chunks_of(ShardId {
                    volume: 9,
                    index: i,
                })
                .collect::<Vec<_>>()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn shard_count_is_capped_by_chunks() {
        assert_eq!(ShardLayout::new(&meta(2 << 20, 1 << 20), 8).shards(), 2);
        assert_eq!(default_shards(1 << 30, 64 << 20), 1);
        assert_eq!(default_shards(100 << 30, 64 << 20), 64);
    }
}
