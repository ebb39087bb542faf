//! Per-block checksums. Every 4 KiB block of a chunk has a 32-bit slot in the
//! chunk's checksum table. Slot value 0 means "hole: never written or
//! trimmed, reads as zeros"; any written block stores its crc32 with 0 mapped
//! to `u32::MAX`, so a hole can never be mistaken for data whose crc is 0.

/// The slot value for a block that holds no data.
pub const HOLE: u32 = 0;

/// Encodes the checksum slot for a block's contents.
pub fn block_slot(data: &[u8]) -> u32 {
    match crc32fast::hash(data) {
        0 => u32::MAX,
        c => c,
    }
}

/// Whether `data` matches the stored slot. A hole slot matches only zeros.
pub fn verify(slot: u32, data: &[u8]) -> bool {
    if slot == HOLE {
        return data.iter().all(|&b| b == 0);
    }
    block_slot(data) == slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_block_never_looks_like_a_hole() {
        let zeros = [0u8; 4096];
        assert_ne!(block_slot(&zeros), HOLE);
        assert!(verify(block_slot(&zeros), &zeros));
        assert!(verify(HOLE, &zeros));
        let mut data = [7u8; 4096];
        let slot = block_slot(&data);
        data[100] ^= 1;
        assert!(!verify(slot, &data));
        assert!(!verify(HOLE, &data));
    }
}
