//! The log format of LevelDB and RocksDB (LevelDB's `doc/log_format.md`;
//! goleveldb's journal package and RocksDB's `db/log_format.h` write the
//! same physical records): manifests and write-ahead logs are sequences of
//! CRC-checked records in 32 KiB blocks.

/// A log-format file is a sequence of blocks of this size; only the last
/// one may be partial.
pub const BLOCK_SIZE: usize = 32 * 1024;
/// A physical record's header: masked CRC-32C of the type byte and the
/// payload (4 bytes, little-endian), payload length (2 bytes,
/// little-endian), record type (1 byte). A record never starts in a
/// block's last 6 bytes: those are zero padding, skipped by readers.
pub const HEADER_SIZE: usize = 7;
/// Type 0: zeroes preallocated by LevelDB's mmap writer; a reader skips
/// the rest of the block.
pub const ZERO_TYPE: u8 = 0;
/// A whole logical record in one physical record.
pub const FULL_TYPE: u8 = 1;
/// The first fragment of a logical record that spans blocks.
pub const FIRST_TYPE: u8 = 2;
/// A middle fragment.
pub const MIDDLE_TYPE: u8 = 3;
/// The last fragment.
pub const LAST_TYPE: u8 = 4;

/// CRC-32C (Castagnoli), the checksum of log records and tables.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// LevelDB stores CRCs masked (rotated right by 15 bits, plus this
/// constant) so that a CRC of data holding CRCs stays meaningful
/// (`util/crc32c.h` `Mask`, goleveldb's `util.CRC.Value`).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// The masked CRC-32C a log record stores for its type byte and payload.
pub fn masked_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(&[kind]);
    d.update(payload);
    d.finalize().rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// A damage found by [`read_log`], before it is tied to a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError {
    /// Byte offset of the physical record concerned.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// The logical records of a log-format file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogScan {
    /// Each complete logical record: the offset of its first physical
    /// record, and its payload.
    pub records: Vec<(usize, Vec<u8>)>,
    /// Bytes up to the end of the last complete logical record (the whole
    /// file when it ends cleanly).
    pub complete_len: usize,
    /// Bytes at the end that do not form a complete record: a record
    /// being appended when the file was read (a writer appends whole
    /// records; LevelDB's own reader ignores such a tail).
    pub partial_tail: usize,
}

/// Reads a log-format file (a manifest or a write-ahead log): physical
/// records in 32 KiB blocks, reassembled into logical records. With
/// `check_crc`, every record's CRC is checked. A record cut short by the
/// end of the data is a partial tail, not an error; anything else that
/// does not follow the format is.
pub fn read_log(data: &[u8], check_crc: bool) -> Result<LogScan, LogError> {
    let mut scan = LogScan::default();
    let mut pending: Option<(usize, Vec<u8>)> = None;
    let mut pos = 0usize;
    let mut clean_end = true;
    while pos < data.len() {
        let block_left = BLOCK_SIZE - pos % BLOCK_SIZE;
        if block_left < HEADER_SIZE {
            // Block trailer: zero padding.
            pos += block_left;
            continue;
        }
        if data.len() - pos < HEADER_SIZE {
            clean_end = false;
            break;
        }
        let h = &data[pos..pos + HEADER_SIZE];
        let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u16::from_le_bytes([h[4], h[5]]) as usize;
        let kind = h[6];
        if kind == ZERO_TYPE && len == 0 {
            // Preallocated zeroes (LevelDB's mmap writer); LevelDB skips
            // the rest of the block.
            pos += block_left;
            continue;
        }
        if HEADER_SIZE + len > block_left {
            return Err(LogError {
                offset: pos,
                reason: format!(
                    "a record of {len} bytes runs past the end of its 32 KiB block ({} bytes left in it)",
                    block_left - HEADER_SIZE
                ),
            });
        }
        let end = pos + HEADER_SIZE + len;
        if end > data.len() {
            clean_end = false;
            break;
        }
        let payload = &data[pos + HEADER_SIZE..end];
        if check_crc {
            let want = masked_crc(kind, payload);
            if want != crc {
                return Err(LogError {
                    offset: pos,
                    reason: format!("record checksum mismatch (stored {crc:#010x}, computed {want:#010x})"),
                });
            }
        }
        match kind {
            FULL_TYPE => {
                if pending.is_some() {
                    return Err(LogError { offset: pos, reason: "a whole record inside a fragmented one".into() });
                }
                scan.records.push((pos, payload.to_vec()));
                scan.complete_len = end;
            }
            FIRST_TYPE => {
                if pending.is_some() {
                    return Err(LogError {
                        offset: pos,
                        reason: "a record's first fragment where its previous one had not ended".into(),
                    });
                }
                pending = Some((pos, payload.to_vec()));
            }
            MIDDLE_TYPE | LAST_TYPE => {
                let Some((start, mut bytes)) = pending.take() else {
                    return Err(LogError {
                        offset: pos,
                        reason: "a record fragment without the fragment that starts it".into(),
                    });
                };
                bytes.extend_from_slice(payload);
                if kind == LAST_TYPE {
                    scan.records.push((start, bytes));
                    scan.complete_len = end;
                } else {
                    pending = Some((start, bytes));
                }
            }
            other => {
                return Err(LogError { offset: pos, reason: format!("unknown record type {other}") });
            }
        }
        pos = end;
    }
    if clean_end && pending.is_none() {
        scan.complete_len = data.len();
    }
    scan.partial_tail = data.len() - scan.complete_len;
    Ok(scan)
}

/// The length of a write-ahead log's complete records: the log as it
/// should be stored when it was read while being appended to. The CRCs
/// are not checked (LevelDB's recovery decides what to do with a damaged
/// record); a log whose framing is damaged is kept whole.
pub fn log_complete_len(data: &[u8]) -> usize {
    read_log(data, false).map_or(data.len(), |s| s.complete_len)
}
