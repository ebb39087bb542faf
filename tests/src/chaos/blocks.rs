//! The blocks the writers write: where each one lives in the volume and
//! who owns it ([`Workload`]), and what a write puts in it: a header naming
//! who wrote it (seed, writer, block, version), filler derived from that
//! header and a checksum over everything before it. A read is decoded back
//! into the version it holds, zeroes, or garbage; a torn, shifted or
//! misplaced block can never pass for another version, which is what lets
//! the oracle tell a lost write from a late one.

use std::fmt;
use std::time::Duration;

/// The size of the even-numbered blocks.
pub const BLOCK: usize = 4096;
/// The size of the odd-numbered ones: large writes, which replicas leave
/// in their Raft logs when they apply them.
pub const LARGE_BLOCK: usize = 128 << 10;
const MAGIC: &[u8; 8] = b"RBCHAOS1";

/// The length of block `b`.
pub fn block_len(b: u64) -> usize {
    if b % 2 == 1 {
        LARGE_BLOCK
    } else {
        BLOCK
    }
}

/// What the writers write where: one volume, `writers` threads each owning
/// `blocks_per_writer` blocks (4 KiB and 128 KiB in turn) spread over the
/// whole volume.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Goes into every block (and seeds the writers' choices).
    pub seed: u64,
    /// The export every writer uses.
    pub volume: String,
    /// Its size in bytes.
    pub volume_size: u64,
    /// Its chunk size: chunk `c` belongs to shard `c % shards`.
    pub chunk_size: u64,
    /// Its shard count.
    pub shards: u32,
    /// Writer threads; writer `w` starts on node `w % nodes + 1`.
    pub writers: usize,
    /// Blocks each writer owns.
    pub blocks_per_writer: u64,
    /// An I/O error from a healthy node up to this long after a fault
    /// ended is blamed on the fault ([`super::Blame::Grace`]).
    pub grace: Duration,
}

impl Workload {
    /// Blocks of all writers together.
    pub fn total_blocks(&self) -> u64 {
        self.writers as u64 * self.blocks_per_writer
    }

    /// Byte offset of block `b`: spread evenly over the volume, so every
    /// writer's blocks fall into every chunk and shard.
    pub fn block_offset(&self, b: u64) -> u64 {
        let stride = (self.volume_size / BLOCK as u64) / self.total_blocks();
        assert!(
            stride * BLOCK as u64 >= LARGE_BLOCK as u64,
            "blocks would overlap"
        );
        b * stride * BLOCK as u64
    }

    /// The writer that owns block `b`.
    pub fn owner(&self, b: u64) -> usize {
        (b % self.writers as u64) as usize
    }

    /// The shard the byte at `offset` belongs to.
    pub fn shard_of(&self, offset: u64) -> u64 {
        offset / self.chunk_size % u64::from(self.shards)
    }

    /// Writer `w`'s blocks with their offsets.
    pub(super) fn blocks_of(&self, w: usize) -> Vec<(u64, u64)> {
        (0..self.total_blocks())
            .filter(|b| self.owner(*b) == w)
            .map(|b| (b, self.block_offset(b)))
            .collect()
    }
}

/// Who wrote a block's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The run's seed, so blocks of an earlier run never count.
    pub seed: u64,
    /// The writer that owns the block.
    pub writer: u32,
    /// The block's index in the workload.
    pub block: u64,
    /// Counts the writes to this block, from 1.
    pub version: u64,
}

/// One step of splitmix64: a good 64-bit mix from a counter.
pub(crate) fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The bytes a stamp stands for: header, filler derived from the stamp (so
/// a torn or shifted block cannot pass as another version), checksum (the
/// FNV-1a 64 of everything before it, in the last 8 bytes).
pub fn encode(s: Stamp) -> Vec<u8> {
    let len = block_len(s.block);
    let sum_at = len - 8;
    let mut b = vec![0u8; len];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&s.seed.to_le_bytes());
    b[16..20].copy_from_slice(&s.writer.to_le_bytes());
    b[20..28].copy_from_slice(&s.block.to_le_bytes());
    b[28..36].copy_from_slice(&s.version.to_le_bytes());
    let mut x = s.seed
        ^ s.block.rotate_left(17)
        ^ s.version.rotate_left(41)
        ^ u64::from(s.writer).rotate_left(7);
    for chunk in b[36..sum_at].chunks_mut(8) {
        let v = splitmix(&mut x).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let sum = fnv1a(&b[..sum_at]);
    b[sum_at..].copy_from_slice(&sum.to_le_bytes());
    b
}

/// What a read of a block returned, as far as the oracle is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// All zeroes: never written.
    Zero,
    /// A version this block's writer wrote.
    Version(u64),
    /// Anything else, described.
    Garbage(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Zero => f.write_str("zeroes"),
            Seen::Version(v) => write!(f, "version {v}"),
            Seen::Garbage(g) => write!(f, "garbage ({g})"),
        }
    }
}

/// Decodes what was read from `want`'s block (its version is ignored).
/// Never panics: `data` comes off the network.
pub fn decode(data: &[u8], want: Stamp) -> Seen {
    let len = block_len(want.block);
    if data.len() != len {
        return Seen::Garbage(format!("{} bytes instead of {len}", data.len()));
    }
    let sum_at = len - 8;
    if data.iter().all(|b| *b == 0) {
        return Seen::Zero;
    }
    if &data[0..8] != MAGIC {
        return Seen::Garbage(format!("no block header, starts {:02x?}", &data[..16]));
    }
    let got = Stamp {
        seed: le64(&data[8..16]),
        writer: u32::from_le_bytes([data[16], data[17], data[18], data[19]]),
        block: le64(&data[20..28]),
        version: le64(&data[28..36]),
    };
    if fnv1a(&data[..sum_at]) != le64(&data[sum_at..]) {
        return Seen::Garbage(format!(
            "checksum mismatch; header says seed {} writer {} block {} version {}",
            got.seed, got.writer, got.block, got.version
        ));
    }
    if (got.seed, got.writer, got.block) != (want.seed, want.writer, want.block) {
        return Seen::Garbage(format!(
            "holds seed {} writer {} block {} version {} (misplaced)",
            got.seed, got.writer, got.block, got.version
        ));
    }
    if encode(got) != data {
        return Seen::Garbage(format!(
            "header and checksum of version {} but other contents",
            got.version
        ));
    }
    Seen::Version(got.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(version: u64) -> Stamp {
        Stamp {
            seed: 42,
            writer: 1,
            block: 7,
            version,
        }
    }

    #[test]
    fn blocks_decode_to_their_version_and_damage_is_garbage() {
        let b = encode(stamp(9));
        assert_eq!(decode(&b, stamp(0)), Seen::Version(9));
        assert_eq!(decode(&vec![0u8; block_len(7)], stamp(0)), Seen::Zero);
        assert_eq!(block_len(7), LARGE_BLOCK);
        let small = Stamp {
            block: 8,
            ..stamp(3)
        };
        assert_eq!(encode(small).len(), BLOCK);
        assert_eq!(decode(&encode(small), small), Seen::Version(3));
        let mut torn = b.clone();
        torn[2048..].copy_from_slice(&encode(stamp(10))[2048..]);
        assert!(matches!(decode(&torn, stamp(0)), Seen::Garbage(_)));
        let other = encode(Stamp {
            block: 8,
            ..stamp(9)
        });
        assert!(matches!(decode(&other, stamp(0)), Seen::Garbage(_)));
        let other_seed = encode(Stamp {
            seed: 43,
            ..stamp(9)
        });
        assert!(matches!(decode(&other_seed, stamp(0)), Seen::Garbage(_)));
    }
}
