//! The acknowledged-write oracle: what clients sent, what was acknowledged,
//! what reads saw, and the rules a correct store keeps. Each block is
//! written by one operation at a time, so the versions of a block commit in
//! the order they were issued (an unacknowledged write may or may not have
//! committed, never after a later one: Raft's log terms only grow). A read
//! must see a version at least as new as every acknowledged write and every
//! read that completed before it was issued; the final state of every
//! replica must hold the last acknowledged version or a later one whose
//! outcome was unknown.

use std::collections::BTreeMap;

pub const BLOCK: usize = 4096;
/// Blocks from this volume offset on are 128 KiB, written whole: large
/// writes, which replicas leave in the log when they apply them.
pub const LARGE_FROM: u64 = 2 << 20;
const LARGE: usize = 128 << 10;

/// The length of the block at `offset`.
pub fn block_len(offset: u64) -> usize {
    if offset >= LARGE_FROM {
        LARGE
    } else {
        BLOCK
    }
}

/// The bytes a block holds at `version` (0: never written, zeros).
pub fn encode(offset: u64, version: u64) -> Vec<u8> {
    let len = block_len(offset);
    if version == 0 {
        return vec![0; len];
    }
    let mut b = vec![(version.wrapping_mul(31) ^ offset) as u8; len];
    b[..8].copy_from_slice(&version.to_le_bytes());
    b[8..16].copy_from_slice(&offset.to_le_bytes());
    b
}

/// The version a block's bytes encode, or why they are garbage.
pub fn decode(offset: u64, data: &[u8]) -> Result<u64, String> {
    let mut v = [0u8; 8];
    v.copy_from_slice(data.get(..8).ok_or("short block")?);
    let version = u64::from_le_bytes(v);
    if data == encode(offset, version).as_slice() {
        Ok(version)
    } else {
        Err(format!(
            "block {offset} holds bytes no write sent (first 16: {:02x?})",
            &data[..16.min(data.len())]
        ))
    }
}

#[derive(Default)]
struct Block {
    /// Versions sent, in order.
    issued: Vec<u64>,
    /// The newest acknowledged version.
    acked: u64,
    /// Versions whose outcome is unknown (error, timeout, crash).
    unknown: Vec<u64>,
    /// The newest version a completed read returned.
    seen: u64,
    /// A write in flight.
    busy: bool,
}

#[derive(Default)]
pub struct Oracle {
    blocks: BTreeMap<u64, Block>,
    next_version: u64,
    pub acked: u64,
    pub unknown: u64,
    pub reads: u64,
}

impl Oracle {
    /// Whether a write to `offset` may be sent now.
    pub fn idle(&self, offset: u64) -> bool {
        !self.blocks.get(&offset).is_some_and(|b| b.busy)
    }

    /// A new write of `offset`; returns its version.
    pub fn send_write(&mut self, offset: u64) -> u64 {
        self.next_version += 1;
        let v = self.next_version;
        let b = self.blocks.entry(offset).or_default();
        b.issued.push(v);
        b.busy = true;
        v
    }

    pub fn write_done(&mut self, offset: u64, version: u64, acked: bool) {
        let b = self.blocks.entry(offset).or_default();
        b.busy = false;
        if acked {
            b.acked = b.acked.max(version);
            self.acked += 1;
        } else {
            b.unknown.push(version);
            self.unknown += 1;
        }
    }

    /// The oldest version a read of `offset` issued now may return.
    pub fn read_floor(&self, offset: u64) -> u64 {
        self.blocks.get(&offset).map_or(0, |b| b.acked.max(b.seen))
    }

    /// Checks what a read issued with `floor` returned.
    pub fn read_done(&mut self, offset: u64, floor: u64, data: &[u8]) -> Result<(), String> {
        let v = decode(offset, data)?;
        let b = self.blocks.entry(offset).or_default();
        if v != 0 && !b.issued.contains(&v) {
            return Err(format!("block {offset}: read version {v}, never sent"));
        }
        if v < floor {
            return Err(format!(
                "block {offset}: read version {v}, older than {floor} (acknowledged or already read before this read began)"
            ));
        }
        b.seen = b.seen.max(v);
        self.reads += 1;
        Ok(())
    }

    /// Checks a replica's final copy of every block.
    pub fn check_final(&self, node: u64, read: impl Fn(u64) -> Vec<u8>) -> Result<(), String> {
        for (&offset, b) in &self.blocks {
            let v = decode(offset, &read(offset)).map_err(|e| format!("node {node}: {e}"))?;
            let ok = v == b.acked || (v > b.acked && b.unknown.contains(&v));
            if !ok {
                return Err(format!(
                    "node {node}: block {offset} holds version {v}; last acknowledged {}, unknown {:?}",
                    b.acked, b.unknown
                ));
            }
        }
        Ok(())
    }

    /// Every block ever written.
    pub fn offsets(&self) -> Vec<u64> {
        self.blocks.keys().copied().collect()
    }
}
