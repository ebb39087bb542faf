//! Segment files of the write-ahead log: naming (`<seq as 16 hex>.wal`), the
//! file header, and the recovery scan that tells a torn tail (cut it, the
//! write was never acknowledged) from corruption in the middle (refuse to
//! start, naming the file and offset, because acknowledged data is damaged).

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{decode_payload, parse_header, Item, HEADER_LEN};
use super::WalError;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"RBWAL\x00\x01\x00";
/// Bytes of the segment file header: magic, then the sequence number.
pub const SEGMENT_HEADER_LEN: u64 = 16;

/// The file name of segment `seq`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// Sequence numbers of the segment files in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let rd = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, "list", e))?;
    let mut seqs = Vec::new();
    for e in rd {
        let e = e.map_err(|e| WalError::io(dir, "list", e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name.strip_suffix(".wal") {
            if hex.len() == 16 {
                if let Ok(seq) = u64::from_str_radix(hex, 16) {
                    seqs.push(seq);
                }
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Creates segment `seq` with its header, synced, and syncs the directory.
pub fn create_segment(dir: &Path, seq: u64) -> Result<File, WalError> {
    let path = segment_path(dir, seq);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, "create", e))?;
    let mut hdr = [0u8; SEGMENT_HEADER_LEN as usize];
    hdr[..8].copy_from_slice(SEGMENT_MAGIC);
    hdr[8..].copy_from_slice(&seq.to_le_bytes());
    f.write_all(&hdr)
        .and_then(|_| f.sync_all())
        .map_err(|e| WalError::io(&path, "write header", e))?;
    sync_dir(dir)?;
    Ok(f)
}

/// fsyncs a directory so a created or removed file name is durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, "sync directory", e))
}

/// A record found by the scan: its items and where its payload starts.
pub struct ScannedRecord {
    /// File offset of the payload (entry data offsets are relative to it).
    pub payload_offset: u64,
    /// The decoded items.
    pub items: Vec<Item>,
}

/// What the recovery scan of one segment found.
pub struct SegmentScan {
    /// The intact records, in order.
    pub records: Vec<ScannedRecord>,
    /// Where the intact part ends (the file is cut here if a tail was torn).
    pub valid_len: u64,
    /// Offset of a torn tail that was cut, if any.
    pub torn_at: Option<u64>,
}

/// Reads segment `seq` and checks every record. In the last segment an
/// invalid record with nothing valid after it is a torn tail: the file is
/// truncated there. Anything else invalid is corruption.
pub fn scan_segment(dir: &Path, seq: u64, is_last: bool) -> Result<SegmentScan, WalError> {
    let path = segment_path(dir, seq);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, "open", e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| WalError::io(&path, "read", e))?;
    let buf = Bytes::from(buf);
    let corrupt = |offset: u64, reason: String| WalError::Corrupt {
        path: path.clone(),
        offset,
        reason,
    };
    if buf.len() < SEGMENT_HEADER_LEN as usize {
        if is_last {
            // Crashed while creating it: nothing was ever acknowledged here.
            f.set_len(0)
                .map_err(|e| WalError::io(&path, "truncate", e))?;
            drop(f);
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, "remove", e))?;
            return Ok(SegmentScan {
                records: Vec::new(),
                valid_len: 0,
                torn_at: Some(0),
            });
        }
        return Err(corrupt(0, "segment header is missing".into()));
    }
    if &buf[..8] != SEGMENT_MAGIC {
        return Err(corrupt(0, "not a raftblock WAL segment (bad magic)".into()));
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&buf[8..16]);
    if u64::from_le_bytes(seq_bytes) != seq {
        return Err(corrupt(
            8,
            "sequence number does not match the file name".into(),
        ));
    }

    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_LEN as usize;
    while at < buf.len() {
        match record_at(&buf, at) {
            Ok((rec, next)) => {
                records.push(rec);
                at = next;
            }
            Err(reason) => {
                if is_last && !valid_record_after(&buf, at + 1) {
                    f.set_len(at as u64)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| WalError::io(&path, "truncate torn tail", e))?;
                    return Ok(SegmentScan {
                        records,
                        valid_len: at as u64,
                        torn_at: Some(at as u64),
                    });
                }
                return Err(corrupt(at as u64, reason));
            }
        }
    }
    Ok(SegmentScan {
        records,
        valid_len: buf.len() as u64,
        torn_at: None,
    })
}

/// Parses and checks the record at `at`; returns it and the next offset.
fn record_at(buf: &Bytes, at: usize) -> Result<(ScannedRecord, usize), String> {
    if buf.len() - at < HEADER_LEN {
        return Err(format!(
            "{} stray bytes where a record header should be",
            buf.len() - at
        ));
    }
    let h = parse_header(&buf[at..]).ok_or("invalid record header")?;
    let start = at + HEADER_LEN;
    let end = start + h.payload_len as usize;
    if end > buf.len() {
        return Err(format!(
            "record of {} bytes runs past the end of the file",
            h.payload_len
        ));
    }
    let payload = buf.slice(start..end);
    if crc32fast::hash(&payload) != h.payload_crc {
        return Err("record checksum mismatch".into());
    }
    let items = decode_payload(&payload).map_err(|e| format!("malformed record: {e}"))?;
    Ok((
        ScannedRecord {
            payload_offset: start as u64,
            items,
        },
        end,
    ))
}

/// Whether any intact record starts at or after `from`.
fn valid_record_after(buf: &Bytes, from: usize) -> bool {
    let magic = super::record::RECORD_MAGIC.to_le_bytes();
    let mut at = from;
    while at + HEADER_LEN <= buf.len() {
        match buf[at..].windows(4).position(|w| w == magic) {
            Some(p) => {
                if record_at(buf, at + p).is_ok() {
                    return true;
                }
                at += p + 1;
            }
            None => return false,
        }
    }
    false
}

/// Reads `len` bytes at `offset` of an open segment.
pub fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Bytes, WalError> {
    let mut v = vec![0u8; len];
    file.read_exact_at(&mut v, offset)
        .map_err(|e| WalError::io(path, "read entry", e))?;
    Ok(Bytes::from(v))
}
