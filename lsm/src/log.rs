//! The log format of LevelDB and RocksDB (LevelDB's `doc/log_format.md`;
//! goleveldb's journal package and RocksDB's `db/log_format.h` write the
//! same physical records): manifests and write-ahead logs are sequences of
//! CRC-checked records in 32 KiB blocks. RocksDB adds record types of its
//! own (recyclable records, WAL metadata records), read with
//! [`LogFormat::RocksDb`].

/// A log-format file is a sequence of blocks of this size; only the last
/// one may be partial.
pub const BLOCK_SIZE: usize = 32 * 1024;
/// A physical record's header: masked CRC-32C of the type byte and the
/// payload (4 bytes, little-endian), payload length (2 bytes,
/// little-endian), record type (1 byte). A record never starts in a
/// block's last 6 bytes: those are zero padding, skipped by readers.
pub const HEADER_SIZE: usize = 7;
/// RocksDB's recyclable records (`kRecyclableHeaderSize`): the header
/// above, then the number of the log the record was written to (4 bytes,
/// little-endian), which the CRC covers after the type byte. A log file
/// reused for a new log keeps the old log's records after the new ones;
/// their log number tells them apart. A writer of recyclable records pads
/// a block's last 10 bytes or fewer with zeroes.
pub const RECYCLABLE_HEADER_SIZE: usize = 11;
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
/// RocksDB: [`FULL_TYPE`] to [`LAST_TYPE`] with the recyclable header
/// (`kRecyclableFullType` 5 to `kRecyclableLastType` 8, in that order).
pub const RECYCLABLE_FULL_TYPE: u8 = 5;
/// RocksDB: a recyclable first fragment.
pub const RECYCLABLE_FIRST_TYPE: u8 = 6;
/// RocksDB: a recyclable middle fragment.
pub const RECYCLABLE_MIDDLE_TYPE: u8 = 7;
/// RocksDB: a recyclable last fragment.
pub const RECYCLABLE_LAST_TYPE: u8 = 8;
/// RocksDB: `kSetCompressionType`, the first record of a WAL written with
/// `wal_compression`: the compression type of the records after it (a
/// fixed32 whose low byte is RocksDB's compression type). Legacy header.
pub const SET_COMPRESSION_TYPE: u8 = 9;
/// RocksDB: `kUserDefinedTimestampSizeType`, the user-defined timestamp
/// sizes of column families for the records after it. Legacy header.
pub const USER_DEFINED_TIMESTAMP_SIZE_TYPE: u8 = 10;
/// RocksDB: the same with the recyclable header.
pub const RECYCLABLE_USER_DEFINED_TIMESTAMP_SIZE_TYPE: u8 = 11;
/// RocksDB: `kPredecessorWALInfoType` (RocksDB 9.x), information on the
/// previous WAL. Legacy header.
pub const PREDECESSOR_WAL_INFO_TYPE: u8 = 130;
/// RocksDB: the same with the recyclable header.
pub const RECYCLABLE_PREDECESSOR_WAL_INFO_TYPE: u8 = 131;
/// RocksDB: `kRecordTypeSafeIgnoreMask`, a record type with this bit that
/// the reader does not know is skipped (a newer writer's metadata); any
/// other unknown type is corruption.
pub const RECORD_TYPE_SAFE_IGNORE_MASK: u8 = 0x80;

/// Which implementation wrote a log-format file: it decides which record
/// types are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// LevelDB and goleveldb: types 0 to 4 only.
    LevelDb,
    /// RocksDB: also its recyclable and metadata records.
    RocksDb,
}

/// CRC-32C (Castagnoli), the checksum of log records and tables.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// LevelDB stores CRCs masked (rotated right by 15 bits, plus this
/// constant) so that a CRC of data holding CRCs stays meaningful
/// (`util/crc32c.h` `Mask`, goleveldb's `util.CRC.Value`).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// The masked CRC-32C a log record stores for its type byte and payload.
pub fn masked_crc(kind: u8, payload: &[u8]) -> u32 {
    masked_crc_parts(&[&[kind], payload])
}

/// The masked CRC-32C of a RocksDB recyclable record: its type byte, log
/// number (little-endian) and payload.
pub fn masked_recyclable_crc(kind: u8, log_number: u32, payload: &[u8]) -> u32 {
    masked_crc_parts(&[&[kind], &log_number.to_le_bytes(), payload])
}

fn masked_crc_parts(parts: &[&[u8]]) -> u32 {
    let mut d = CRC32C.digest();
    for p in parts {
        d.update(p);
    }
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
    /// The offset just past each record's last physical record (one per
    /// record in `records`).
    pub record_ends: Vec<usize>,
    /// Bytes up to the end of the last complete logical record (the whole
    /// file when it ends cleanly).
    pub complete_len: usize,
    /// Bytes at the end that do not form a complete record: a record
    /// being appended when the file was read (a writer appends whole
    /// records; LevelDB's own reader ignores such a tail), or, in a RocksDB
    /// log file reused for a new log, the records left from the old log
    /// (RocksDB stops reading at the first one).
    pub partial_tail: usize,
    /// RocksDB: the compression type a `kSetCompressionType` record names
    /// (the records after it hold compressed data).
    pub wal_compression: Option<u8>,
}

/// How a record's type is handled.
enum Kind {
    /// A fragment of a logical record (full, first, middle or last).
    Fragment(u8),
    /// A RocksDB metadata record: whole by itself, not a logical record.
    Metadata,
}

/// Reads a LevelDB log-format file (a manifest or a write-ahead log):
/// [`read_log_as`] with [`LogFormat::LevelDb`].
pub fn read_log(data: &[u8], check_crc: bool) -> Result<LogScan, LogError> {
    read_log_as(data, check_crc, LogFormat::LevelDb)
}

/// Reads a log-format file (a manifest or a write-ahead log): physical
/// records in 32 KiB blocks, reassembled into logical records. With
/// `check_crc`, every record's CRC is checked. A record cut short by the
/// end of the data is a partial tail, not an error; anything else that
/// does not follow the format is. RocksDB's recyclable records carry the
/// number of the log they were written to: the first one names the log,
/// and a record naming another log ends it (what a reused file holds of
/// its previous log, which RocksDB's reader takes as the end).
pub fn read_log_as(data: &[u8], check_crc: bool, format: LogFormat) -> Result<LogScan, LogError> {
    let mut scan = LogScan::default();
    let mut pending: Option<(usize, Vec<u8>)> = None;
    let mut pos = 0usize;
    let mut clean_end = true;
    // The log number of the first recyclable record.
    let mut log_number: Option<u32> = None;
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
            // Preallocated zeroes (LevelDB's mmap writer), or the zero
            // padding of a block's last 10 bytes that a RocksDB writer of
            // recyclable records leaves; readers skip the rest of the block.
            pos += block_left;
            continue;
        }
        let (handling, recyclable) = match (format, kind) {
            (_, FULL_TYPE..=LAST_TYPE) => (Kind::Fragment(kind), false),
            (LogFormat::RocksDb, RECYCLABLE_FULL_TYPE..=RECYCLABLE_LAST_TYPE) => {
                (Kind::Fragment(kind - RECYCLABLE_FULL_TYPE + FULL_TYPE), true)
            }
            (
                LogFormat::RocksDb,
                SET_COMPRESSION_TYPE | USER_DEFINED_TIMESTAMP_SIZE_TYPE | PREDECESSOR_WAL_INFO_TYPE,
            ) => (Kind::Metadata, false),
            (
                LogFormat::RocksDb,
                RECYCLABLE_USER_DEFINED_TIMESTAMP_SIZE_TYPE | RECYCLABLE_PREDECESSOR_WAL_INFO_TYPE,
            ) => (Kind::Metadata, true),
            (LogFormat::RocksDb, k) if k & RECORD_TYPE_SAFE_IGNORE_MASK != 0 => (Kind::Metadata, false),
            (_, other) => {
                return Err(LogError { offset: pos, reason: format!("unknown record type {other}") });
            }
        };
        let header = if recyclable { RECYCLABLE_HEADER_SIZE } else { HEADER_SIZE };
        if header + len > block_left {
            return Err(LogError {
                offset: pos,
                reason: format!(
                    "a record of {len} bytes runs past the end of its 32 KiB block ({} bytes left in it)",
                    block_left.saturating_sub(header)
                ),
            });
        }
        let end = pos + header + len;
        if end > data.len() {
            clean_end = false;
            break;
        }
        let payload = &data[pos + header..end];
        let record_log = if recyclable {
            let n = &data[pos + HEADER_SIZE..pos + RECYCLABLE_HEADER_SIZE];
            Some(u32::from_le_bytes([n[0], n[1], n[2], n[3]]))
        } else {
            None
        };
        if check_crc {
            let want = match record_log {
                Some(n) => masked_recyclable_crc(kind, n, payload),
                None => masked_crc(kind, payload),
            };
            if want != crc {
                return Err(LogError {
                    offset: pos,
                    reason: format!("record checksum mismatch (stored {crc:#010x}, computed {want:#010x})"),
                });
            }
        }
        if let Some(n) = record_log {
            match log_number {
                None => log_number = Some(n),
                // A record of the log this file held before: the end.
                Some(first) if first != n => {
                    clean_end = false;
                    break;
                }
                Some(_) => {}
            }
        }
        match handling {
            Kind::Metadata => {
                if pending.is_some() {
                    return Err(LogError {
                        offset: pos,
                        reason: format!("a metadata record (type {kind}) inside a fragmented record"),
                    });
                }
                if kind == SET_COMPRESSION_TYPE {
                    scan.wal_compression = payload.first().copied();
                }
                scan.complete_len = end;
            }
            Kind::Fragment(FULL_TYPE) => {
                if pending.is_some() {
                    return Err(LogError { offset: pos, reason: "a whole record inside a fragmented one".into() });
                }
                scan.records.push((pos, payload.to_vec()));
                scan.record_ends.push(end);
                scan.complete_len = end;
            }
            Kind::Fragment(FIRST_TYPE) => {
                if pending.is_some() {
                    return Err(LogError {
                        offset: pos,
                        reason: "a record's first fragment where its previous one had not ended".into(),
                    });
                }
                pending = Some((pos, payload.to_vec()));
            }
            Kind::Fragment(fragment) => {
                let Some((start, mut bytes)) = pending.take() else {
                    return Err(LogError {
                        offset: pos,
                        reason: "a record fragment without the fragment that starts it".into(),
                    });
                };
                bytes.extend_from_slice(payload);
                if fragment == LAST_TYPE {
                    scan.records.push((start, bytes));
                    scan.record_ends.push(end);
                    scan.complete_len = end;
                } else {
                    pending = Some((start, bytes));
                }
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
    log_complete_len_as(data, LogFormat::LevelDb)
}

/// [`log_complete_len`] for a log written by `format`.
pub fn log_complete_len_as(data: &[u8], format: LogFormat) -> usize {
    read_log_as(data, false, format).map_or(data.len(), |s| s.complete_len)
}
