//! Tables (LevelDB's `.ldb`/`.sst` and RocksDB's block-based `.sst`
//! files) checked block by block: the footer, the metaindex block and
//! every block it names, the index block and every data block the index
//! points to, each against the checksum in its trailer.
//!
//! The layout (LevelDB's `doc/table_format.md`; RocksDB's `table/format.h`,
//! `table/format.cc`, `table/block_based/block.cc`):
//! - Blocks, each followed by a 5-byte trailer: the compression type (1
//!   byte) and a checksum (fixed32) of the block's stored bytes and that
//!   type byte.
//! - A footer at the end, whose last 8 bytes are the magic number: it names
//!   the metaindex block and (format_version 5 and before) the index block
//!   by their block handles (varint offset and size, trailer excluded).
//! - The metaindex block maps names (`rocksdb.properties`,
//!   `filter.<policy>`, `fullfilter.<policy>`, `rocksdb.index` from
//!   format_version 6, ...) to block handles; the index block maps keys to
//!   the handles of the data blocks, in order.
//!
//! Checksums cover the stored bytes, so data blocks are checked without
//! being decompressed. An index block stored compressed is decompressed to
//! be walked when it is Snappy (RocksDB's default) or LZ4; with another
//! codec (ZSTD, Zlib, ...) the data blocks are not walked, and the report
//! says so.
//!
//! Not checked: the keys and values inside blocks, and the partitions of a
//! partitioned filter (only the block the metaindex names). Plain and
//! cuckoo tables are recognised and not checked.

use std::fmt;

use crate::log::CRC32C;
use crate::{LsmError, varint};

/// LevelDB's footer magic, also RocksDB's for format_version 0 tables
/// (`kLegacyBlockBasedTableMagicNumber`).
pub const LEGACY_BLOCK_BASED_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// RocksDB's block-based table magic (`kBlockBasedTableMagicNumber`).
pub const BLOCK_BASED_MAGIC: u64 = 0x88e2_41b7_85f4_cff7;
/// RocksDB's plain table magic, and its legacy one.
pub const PLAIN_TABLE_MAGIC: u64 = 0x8242_2296_63bf_9564;
/// The legacy plain table magic (`kLegacyPlainTableMagicNumber`).
pub const LEGACY_PLAIN_TABLE_MAGIC: u64 = 0x4f34_18eb_7a8f_13b8;
/// RocksDB's cuckoo table magic (`kCuckooTableMagicNumber`).
pub const CUCKOO_TABLE_MAGIC: u64 = 0x9267_89d0_c5f1_7873;

/// The legacy footer: metaindex and index handles padded to 40 bytes,
/// magic (8 bytes).
const LEGACY_FOOTER_LEN: usize = 48;
/// RocksDB's footer from format_version 1: checksum type (1 byte), 40
/// bytes (the two handles padded, or from format_version 6 the extended
/// magic, footer checksum, base context checksum, metaindex size and
/// padding), format_version (fixed32), magic (8 bytes).
const FOOTER_LEN: usize = 53;
/// Every block's trailer: compression type and checksum.
const TRAILER_LEN: usize = 5;
/// format_version 6's footer starts its second part with these bytes.
const EXTENDED_MAGIC: [u8; 4] = [0x3e, 0x00, 0x7a, 0x00];
/// The newest format_version read here.
const MAX_FORMAT_VERSION: u32 = 6;
/// The XXH3 checksum's modifier for the block's last byte
/// (`ModifyChecksumForLastByte`, table/format.cc).
const XXH3_LAST_BYTE_PRIME: u32 = 0x6b90_83d9;
/// LevelDB's masked CRC (`crc32c::Mask`).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// How blocks are checksummed (RocksDB's `ChecksumType`, the footer's
/// first byte; LevelDB and format_version 0 use CRC-32C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumType {
    /// 0: no checksums.
    None,
    /// 1: masked CRC-32C, as LevelDB.
    Crc32c,
    /// 2: XXH32, seed 0.
    XxHash,
    /// 3: the lower 32 bits of XXH64, seed 0.
    XxHash64,
    /// 4: the lower 32 bits of XXH3-64 of all but the last byte, modified
    /// by the last byte (RocksDB's default since 6.27).
    Xxh3,
}

impl fmt::Display for ChecksumType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumType::None => "none",
            ChecksumType::Crc32c => "CRC-32C",
            ChecksumType::XxHash => "xxHash32",
            ChecksumType::XxHash64 => "xxHash64",
            ChecksumType::Xxh3 => "XXH3",
        })
    }
}

impl ChecksumType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => ChecksumType::None,
            1 => ChecksumType::Crc32c,
            2 => ChecksumType::XxHash,
            3 => ChecksumType::XxHash64,
            4 => ChecksumType::Xxh3,
            _ => return None,
        })
    }

    /// The checksum of `data` followed by `last` (`ComputeBuiltinChecksumWithLastByte`).
    fn with_last_byte(self, data: &[u8], last: u8) -> u32 {
        match self {
            ChecksumType::None => 0,
            ChecksumType::Crc32c => {
                let mut d = CRC32C.digest();
                d.update(data);
                d.update(&[last]);
                d.finalize().rotate_right(15).wrapping_add(CRC_MASK_DELTA)
            }
            ChecksumType::XxHash => {
                let mut h = xxhash_rust::xxh32::Xxh32::new(0);
                h.update(data);
                h.update(&[last]);
                h.digest()
            }
            ChecksumType::XxHash64 => {
                let mut h = xxhash_rust::xxh64::Xxh64::new(0);
                h.update(data);
                h.update(&[last]);
                h.digest() as u32
            }
            ChecksumType::Xxh3 => {
                (xxhash_rust::xxh3::xxh3_64(data) as u32) ^ u32::from(last).wrapping_mul(XXH3_LAST_BYTE_PRIME)
            }
        }
    }

    /// The checksum of `data` (`ComputeBuiltinChecksum`): for XXH3 the last
    /// byte is handled as above, and an empty input sums to 0.
    fn of(self, data: &[u8]) -> u32 {
        match (self, data.split_last()) {
            (ChecksumType::Xxh3, None) => 0,
            (ChecksumType::Xxh3, Some((last, rest))) => self.with_last_byte(rest, *last),
            (ChecksumType::Crc32c, _) => CRC32C.checksum(data).rotate_right(15).wrapping_add(CRC_MASK_DELTA),
            (ChecksumType::XxHash, _) => xxhash_rust::xxh32::xxh32(data, 0),
            (ChecksumType::XxHash64, _) => xxhash_rust::xxh64::xxh64(data, 0) as u32,
            (ChecksumType::None, _) => 0,
        }
    }
}

/// format_version 6 adds this to every checksum, from a random base the
/// footer holds and the block's offset (`ChecksumModifierForContext`,
/// table/format.h); 0 when the base is 0.
fn context_modifier(base: u32, offset: u64) -> u32 {
    if base == 0 {
        return 0;
    }
    base ^ (offset as u32).wrapping_add((offset >> 32) as u32)
}

/// RocksDB's compression type byte, by name.
fn compression_name(t: u8) -> String {
    match t {
        0 => "no compression".into(),
        1 => "Snappy".into(),
        2 => "Zlib".into(),
        3 => "BZip2".into(),
        4 => "LZ4".into(),
        5 => "LZ4HC".into(),
        6 => "Xpress".into(),
        7 => "ZSTD".into(),
        0x40 => "ZSTD (pre-release)".into(),
        other => format!("compression type {other}"),
    }
}

/// What kind of table a file is, from its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A block-based table: LevelDB's, or RocksDB's default.
    BlockBased,
    /// RocksDB's plain table (`PlainTableFactory`): not checked.
    Plain,
    /// RocksDB's cuckoo table: not checked.
    Cuckoo,
}

/// What [`check_table`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// The table's kind.
    pub kind: TableKind,
    /// The footer's format_version (0: the legacy footer of LevelDB and old
    /// RocksDB tables).
    pub format_version: u32,
    /// How blocks are checksummed.
    pub checksum: ChecksumType,
    /// Data blocks checked.
    pub data_blocks: u64,
    /// Their bytes, trailers included.
    pub data_bytes: u64,
    /// Other blocks checked: the metaindex, the index (and its partitions),
    /// and the blocks the metaindex names.
    pub meta_blocks: u64,
    /// How many data blocks the table properties say the table has, when it
    /// has them (RocksDB); checked against the index when it was walked.
    pub properties_data_blocks: Option<u64>,
    /// The index type from the table properties (0 binary search, 1 hash
    /// search, 2 partitioned, 3 binary search with first keys; 0 for
    /// LevelDB).
    pub index_type: u32,
    /// Index partitions checked (partitioned indexes).
    pub index_partitions: u64,
    /// True when the index values are delta-encoded (format_version 4 and
    /// later).
    pub index_value_delta: bool,
    /// The compression type byte the index block is stored with (0: none,
    /// 1: Snappy, 4: LZ4, 7: ZSTD, ...).
    pub index_compression: u8,
    /// True when the index was walked, so that every data block was
    /// checked; false when a compressed index hid them.
    pub data_blocks_walked: bool,
    /// What was not checked and why, in words.
    pub note: Option<String>,
}

impl TableReport {
    /// A report of a table of this kind before any block is checked.
    fn nothing_checked(kind: TableKind, format_version: u32, checksum: ChecksumType) -> Self {
        TableReport {
            kind,
            format_version,
            checksum,
            data_blocks: 0,
            data_bytes: 0,
            meta_blocks: 0,
            properties_data_blocks: None,
            index_type: 0,
            index_partitions: 0,
            index_value_delta: false,
            index_compression: 0,
            data_blocks_walked: false,
            note: None,
        }
    }
}

/// A block's place: offset and size, trailer excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    offset: u64,
    size: u64,
}

fn read_handle(b: &[u8], pos: &mut usize) -> Option<Handle> {
    Some(Handle { offset: varint(b, pos)?, size: varint(b, pos)? })
}

/// The table being checked.
struct Table<'a> {
    name: &'a str,
    bytes: &'a [u8],
    /// Where the footer starts: blocks end before it.
    footer_start: u64,
    checksum: ChecksumType,
    /// format_version 6's base context checksum (0 before).
    base_context: u32,
}

impl<'a> Table<'a> {
    fn err(&self, offset: Option<u64>, reason: String) -> LsmError {
        LsmError { file: self.name.to_string(), offset, reason }
    }

    /// A block's stored bytes and compression type, its trailer checked;
    /// `what` names it in errors.
    fn block(&self, h: Handle, what: &str) -> Result<(&'a [u8], u8), LsmError> {
        let end = h.offset.checked_add(h.size).and_then(|e| e.checked_add(TRAILER_LEN as u64));
        if end.is_none_or(|e| e > self.footer_start) {
            return Err(self.err(
                Some(h.offset),
                format!(
                    "{what}: a block of {} bytes would run past the footer at byte {} (the file is cut short or \
                     damaged)",
                    h.size, self.footer_start
                ),
            ));
        }
        let (start, len) = (h.offset as usize, h.size as usize);
        let data = &self.bytes[start..start + len];
        let kind = self.bytes[start + len];
        let t = &self.bytes[start + len + 1..start + len + TRAILER_LEN];
        let stored = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        if self.checksum != ChecksumType::None {
            let computed =
                self.checksum.with_last_byte(data, kind).wrapping_add(context_modifier(self.base_context, h.offset));
            if computed != stored {
                return Err(self.err(
                    Some(h.offset),
                    format!(
                        "{what}: checksum mismatch ({} stored {stored:#010x}, computed {computed:#010x} over {} bytes)",
                        self.checksum, h.size
                    ),
                ));
            }
        }
        Ok((data, kind))
    }
}

/// One entry of a block.
struct Entry<'k, 'a> {
    /// Its whole key, rebuilt from the prefix it shares.
    key: &'k [u8],
    /// How many bytes of the previous key it shares.
    shared: u64,
    /// Its value (with `value_delta`, the rest of the entries).
    value: &'a [u8],
}

/// A block's entries (`Block`, table/block_based/block.cc): each entry is
/// varint shared key length, varint unshared length, varint value length,
/// unshared key bytes, value; then the restart offsets (fixed32 each) and
/// their count (fixed32, whose top bit marks a data block's hash index).
/// With `value_delta`, entries have no value length: the value runs to the
/// next entry, and `decode_value` says where it ends.
fn entries<'a>(
    block: &'a [u8],
    value_delta: bool,
    mut decode_value: impl FnMut(&Entry<'_, 'a>, &'a [u8]) -> Result<usize, String>,
) -> Result<usize, String> {
    if block.len() < 4 {
        return Err(format!("a block of {} bytes is too short for its restart count", block.len()));
    }
    let n = block.len();
    let packed = u32::from_le_bytes([block[n - 4], block[n - 3], block[n - 2], block[n - 1]]);
    if packed & (1 << 31) != 0 {
        return Err("a block with a data block hash index where none belongs".into());
    }
    let restarts = packed as usize;
    let restarts_len = restarts.checked_mul(4).and_then(|r| r.checked_add(4));
    let Some(limit) = restarts_len.and_then(|r| n.checked_sub(r)) else {
        return Err(format!("{restarts} restart points do not fit in a block of {n} bytes"));
    };
    let data = &block[..limit];
    let mut pos = 0;
    let mut count = 0;
    let mut key: Vec<u8> = Vec::new();
    while pos < data.len() {
        let bad = |what: &str| format!("entry {} of the block: bad {what}", count + 1);
        let shared = varint(data, &mut pos).ok_or_else(|| bad("shared key length"))?;
        let unshared = varint(data, &mut pos).ok_or_else(|| bad("key length"))? as usize;
        let value_len =
            if value_delta { None } else { Some(varint(data, &mut pos).ok_or_else(|| bad("value length"))? as usize) };
        let key_end =
            pos.checked_add(unshared).filter(|&p| p <= data.len()).ok_or_else(|| bad("key (runs past the entries)"))?;
        if shared > key.len() as u64 {
            return Err(bad("key (it shares more than the previous key has)"));
        }
        key.truncate(shared as usize);
        key.extend_from_slice(&data[pos..key_end]);
        pos = key_end;
        let rest = &data[pos..];
        let value = match value_len {
            Some(l) if l <= rest.len() => &rest[..l],
            Some(_) => return Err(bad("value (runs past the entries)")),
            None => rest,
        };
        let used =
            decode_value(&Entry { key: &key, shared, value }, rest).map_err(|e| format!("entry {}: {e}", count + 1))?;
        pos += value_len.unwrap_or(used);
        count += 1;
    }
    Ok(count)
}

/// The properties the checker uses (`TablePropertiesNames`,
/// `BlockBasedTablePropertyNames`).
#[derive(Default)]
struct Properties {
    /// `rocksdb.block.based.table.index.type` (fixed32): 0 binary search,
    /// 1 hash search, 2 two-level (partitioned), 3 binary search with the
    /// first key of each block in the index values.
    index_type: u32,
    /// `rocksdb.index.value.is.delta.encoded` (varint).
    value_delta: bool,
    /// `rocksdb.num.data.blocks` (varint).
    data_blocks: Option<u64>,
}

const INDEX_PARTITIONED: u32 = 2;
const INDEX_WITH_FIRST_KEY: u32 = 3;

fn parse_properties(block: &[u8]) -> Result<Properties, String> {
    let mut p = Properties::default();
    entries(block, false, |e, _| {
        let value = e.value;
        let num = || {
            let mut q = 0;
            varint(value, &mut q)
        };
        match e.key {
            b"rocksdb.block.based.table.index.type" => {
                let b: [u8; 4] = value.try_into().map_err(|_| "bad index type property")?;
                p.index_type = u32::from_le_bytes(b);
            }
            b"rocksdb.index.value.is.delta.encoded" => p.value_delta = num().ok_or("bad delta-encoding property")? != 0,
            b"rocksdb.num.data.blocks" => p.data_blocks = Some(num().ok_or("bad data block count property")?),
            _ => {}
        }
        Ok(value.len())
    })?;
    Ok(p)
}

/// Checks a table: `name` names it in errors, `bytes` is the whole file.
/// See the module's documentation for what is checked.
pub fn check_table(name: &str, bytes: &[u8]) -> Result<TableReport, LsmError> {
    let err = |offset: Option<u64>, reason: String| LsmError { file: name.to_string(), offset, reason };
    if bytes.len() < LEGACY_FOOTER_LEN {
        return Err(err(
            None,
            format!("is {} bytes, shorter than any table footer (48 bytes); the file is cut short", bytes.len()),
        ));
    }
    let n = bytes.len();
    let magic = u64::from_le_bytes(bytes[n - 8..].try_into().unwrap_or_default());
    let unchecked = |kind: TableKind, what: &str| TableReport {
        note: Some(format!("a RocksDB {what}: only block-based tables are checked")),
        ..TableReport::nothing_checked(kind, 0, ChecksumType::None)
    };
    match magic {
        PLAIN_TABLE_MAGIC | LEGACY_PLAIN_TABLE_MAGIC => return Ok(unchecked(TableKind::Plain, "plain table")),
        CUCKOO_TABLE_MAGIC => return Ok(unchecked(TableKind::Cuckoo, "cuckoo table")),
        LEGACY_BLOCK_BASED_MAGIC | BLOCK_BASED_MAGIC => {}
        other => {
            return Err(err(
                Some((n - 8) as u64),
                format!(
                    "no table magic number at the end (found {other:#018x}); the file is cut short or is not a table"
                ),
            ));
        }
    }
    // The footer: metaindex and index handles, checksum type, version.
    let (footer_start, checksum, format_version, base_context, metaindex, mut index) = if magic
        == LEGACY_BLOCK_BASED_MAGIC
    {
        let f = &bytes[n - LEGACY_FOOTER_LEN..];
        let mut pos = 0;
        let bad = || err(Some((n - LEGACY_FOOTER_LEN) as u64), "the footer's block handles do not decode".into());
        let meta = read_handle(f, &mut pos).ok_or_else(bad)?;
        let index = read_handle(f, &mut pos).ok_or_else(bad)?;
        ((n - LEGACY_FOOTER_LEN) as u64, ChecksumType::Crc32c, 0, 0, meta, Some(index))
    } else {
        if n < FOOTER_LEN {
            return Err(err(None, format!("is {n} bytes, shorter than RocksDB's table footer (53 bytes)")));
        }
        let start = n - FOOTER_LEN;
        let f = &bytes[start..];
        let version = u32::from_le_bytes([f[41], f[42], f[43], f[44]]);
        if version > MAX_FORMAT_VERSION {
            return Err(err(
                Some(start as u64),
                format!("format_version {version} is not supported (this reader knows 0 to {MAX_FORMAT_VERSION})"),
            ));
        }
        let checksum = ChecksumType::from_byte(f[0])
            .ok_or_else(|| err(Some(start as u64), format!("unknown checksum type {} in the footer", f[0])))?;
        if version >= 6 {
            if f[1..5] != EXTENDED_MAGIC {
                return Err(err(Some(start as u64), "format_version 6 footer without its extended magic".into()));
            }
            let stored = u32::from_le_bytes([f[5], f[6], f[7], f[8]]);
            let base = u32::from_le_bytes([f[9], f[10], f[11], f[12]]);
            let meta_size = u32::from_le_bytes([f[13], f[14], f[15], f[16]]);
            if base == 0 {
                return Err(err(
                    Some(start as u64),
                    "format_version 6 footer with a zero base context checksum".into(),
                ));
            }
            if f[33..41].iter().any(|&b| b != 0) {
                return Err(err(
                    Some(start as u64),
                    "the footer uses a feature newer than format_version 6 (reserved bytes set)".into(),
                ));
            }
            if checksum != ChecksumType::None {
                let mut copy = [0u8; FOOTER_LEN];
                copy.copy_from_slice(f);
                copy[5..9].fill(0);
                let computed = checksum.of(&copy).wrapping_add(context_modifier(base, start as u64));
                if computed != stored {
                    return Err(err(
                        Some(start as u64),
                        format!("footer checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"),
                    ));
                }
            }
            // The metaindex ends right before the footer.
            let meta_offset = (start as u64).checked_sub(TRAILER_LEN as u64 + u64::from(meta_size));
            let meta_offset = meta_offset
                .ok_or_else(|| err(Some(start as u64), "the metaindex size runs past the file's start".into()))?;
            (start as u64, checksum, version, base, Handle { offset: meta_offset, size: u64::from(meta_size) }, None)
        } else {
            let mut pos = 1;
            let bad = || err(Some(start as u64), "the footer's block handles do not decode".into());
            let meta = read_handle(f, &mut pos).ok_or_else(bad)?;
            let index = read_handle(f, &mut pos).ok_or_else(bad)?;
            (start as u64, checksum, version, 0, meta, Some(index))
        }
    };
    let table = Table { name, bytes, footer_start, checksum, base_context };
    let mut report = TableReport::nothing_checked(TableKind::BlockBased, format_version, checksum);
    // The metaindex, and every block it names.
    let (meta_block, meta_kind) = table.block(metaindex, "the metaindex block")?;
    report.meta_blocks += 1;
    if meta_kind != 0 {
        return Err(err(
            Some(metaindex.offset),
            format!("the metaindex block is stored with {}, which no writer does", compression_name(meta_kind)),
        ));
    }
    let mut named: Vec<(Vec<u8>, Handle)> = Vec::new();
    entries(meta_block, false, |e, _| {
        let mut pos = 0;
        let h = read_handle(e.value, &mut pos).ok_or("a metaindex value is not a block handle")?;
        named.push((e.key.to_vec(), h));
        Ok(e.value.len())
    })
    .map_err(|r| err(Some(metaindex.offset), format!("the metaindex block: {r}")))?;
    let mut props = Properties::default();
    for (k, h) in &named {
        let what = format!("meta block {:?}", String::from_utf8_lossy(k));
        let (block, kind) = table.block(*h, &what)?;
        report.meta_blocks += 1;
        match &k[..] {
            b"rocksdb.properties" | b"rocksdb.stats" if kind == 0 => {
                props = parse_properties(block).map_err(|r| err(Some(h.offset), format!("{what}: {r}")))?;
                report.properties_data_blocks = props.data_blocks;
            }
            b"rocksdb.index" => index = Some(*h),
            _ => {}
        }
    }
    let Some(index) = index else {
        return Err(err(
            Some(metaindex.offset),
            "format_version 6 table whose metaindex has no rocksdb.index entry".into(),
        ));
    };
    // The index, then the data blocks it points to.
    let (index_block, index_kind) = table.block(index, "the index block")?;
    if !named.iter().any(|(_, h)| *h == index) {
        report.meta_blocks += 1;
    }
    let first_key = props.index_type == INDEX_WITH_FIRST_KEY;
    report.index_type = props.index_type;
    report.index_value_delta = props.value_delta;
    report.index_compression = index_kind;
    let not_walked = |what: &str, kind: u8| {
        format!(
            "{what} compressed with {}: data blocks not walked (only the metaindex, the blocks it names and the index \
             were checked)",
            compression_name(kind)
        )
    };
    let Some(index_block) = uncompressed(index_block, index_kind, format_version)
        .map_err(|r| err(Some(index.offset), format!("the index block: {r}")))?
    else {
        report.note = Some(not_walked("index", index_kind));
        return Ok(report);
    };
    let data_handles = if props.index_type == INDEX_PARTITIONED {
        let partitions = index_handles(&index_block, props.value_delta, first_key)
            .map_err(|r| err(Some(index.offset), format!("the top-level index block: {r}")))?;
        let mut all = Vec::new();
        for (i, p) in partitions.iter().enumerate() {
            let what = format!("index partition {} (of {})", i + 1, partitions.len());
            let (block, kind) = table.block(*p, &what)?;
            report.meta_blocks += 1;
            report.index_partitions += 1;
            let Some(block) =
                uncompressed(block, kind, format_version).map_err(|r| err(Some(p.offset), format!("{what}: {r}")))?
            else {
                report.note = Some(not_walked("index partitions", kind));
                return Ok(report);
            };
            all.extend(
                index_handles(&block, props.value_delta, first_key)
                    .map_err(|r| err(Some(p.offset), format!("{what}: {r}")))?,
            );
        }
        all
    } else {
        index_handles(&index_block, props.value_delta, first_key)
            .map_err(|r| err(Some(index.offset), format!("the index block: {r}")))?
    };
    let total = data_handles.len();
    for (i, h) in data_handles.iter().enumerate() {
        table.block(*h, &format!("data block {} (of {total})", i + 1))?;
        report.data_blocks += 1;
        report.data_bytes += h.size + TRAILER_LEN as u64;
    }
    report.data_blocks_walked = true;
    if let Some(want) = props.data_blocks
        && want != report.data_blocks
    {
        return Err(err(
            Some(index.offset),
            format!("the index points to {} data blocks; the table properties say {want}", report.data_blocks),
        ));
    }
    Ok(report)
}

/// A block's contents, decompressed when stored with a codec this crate
/// has (Snappy, and LZ4 from format_version 2, where RocksDB puts the
/// uncompressed size as a varint before the LZ4 block); `None` for other
/// codecs.
fn uncompressed(block: &[u8], kind: u8, format_version: u32) -> Result<Option<std::borrow::Cow<'_, [u8]>>, String> {
    use std::borrow::Cow;
    match kind {
        0 => Ok(Some(Cow::Borrowed(block))),
        1 => snap::raw::Decoder::new()
            .decompress_vec(block)
            .map(|v| Some(Cow::Owned(v)))
            .map_err(|e| format!("the Snappy data does not decompress ({e})")),
        4 | 5 if format_version >= 2 => {
            let mut pos = 0;
            let size = varint(block, &mut pos).ok_or("bad uncompressed size before the LZ4 data")?;
            let size = usize::try_from(size).map_err(|_| "bad uncompressed size before the LZ4 data")?;
            lz4_flex::block::decompress(&block[pos..], size)
                .map(|v| Some(Cow::Owned(v)))
                .map_err(|e| format!("the LZ4 data does not decompress ({e})"))
        }
        _ => Ok(None),
    }
}

/// The block handles an index block (or index partition) holds, in order.
/// Values are block handles, followed by a length-prefixed first key when
/// the index has them. With `value_delta` (format_version 4 and later), an
/// entry whose key shares a prefix with the previous one stores only the
/// size difference (zigzag varint) from the previous handle, its block
/// starting right after the previous block's trailer
/// (`IndexValue::DecodeFrom`, table/format.cc).
fn index_handles(block: &[u8], value_delta: bool, first_key: bool) -> Result<Vec<Handle>, String> {
    let mut out: Vec<Handle> = Vec::new();
    entries(block, value_delta, |e, rest| {
        let src = if value_delta { rest } else { e.value };
        let mut pos = 0;
        let h = match out.last() {
            Some(prev) if value_delta && e.shared != 0 => {
                let z = varint(src, &mut pos).ok_or("bad delta-encoded block size")?;
                let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
                let size = prev.size.checked_add_signed(delta).ok_or("a delta-encoded block size out of range")?;
                let offset = prev
                    .size
                    .checked_add(TRAILER_LEN as u64)
                    .and_then(|n| prev.offset.checked_add(n))
                    .ok_or("a block offset out of range")?;
                Handle { offset, size }
            }
            _ => read_handle(src, &mut pos).ok_or("a value that is not a block handle")?,
        };
        if first_key {
            crate::length_prefixed(src, &mut pos).ok_or("bad first key in an index value")?;
        }
        out.push(h);
        Ok(pos)
    })?;
    Ok(out)
}
