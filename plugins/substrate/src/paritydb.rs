//! ParityDB directories: the chain database of a Substrate / Polkadot-SDK
//! node started with `--database paritydb` (`chains/<chain>/paritydb/full`).
//! Which files make up the database, what its `metadata` declares, a
//! structural check for `verify`, and a backup that refuses a live database.
//!
//! What a ParityDB directory holds (parity-db 0.4 and 0.5, the crate
//! sc-client-db opens; file names from `src/index.rs`, `src/table.rs`,
//! `src/log.rs`, `src/db.rs`, `src/options.rs`):
//! - `metadata`: text, one `key=value` a line: `version=N`, `salt=` 32
//!   bytes in hex (the key of the hash every key is indexed by: without it
//!   no value can be found, so it is never printed), and per column, in
//!   order, `colN=preimage: B, uniform: B, refc: B, compression: N,
//!   ordered: B` (0.5 adds `multitree`, `append_only`,
//!   `allow_direct_node_access`).
//! - `index_CC_B`: a hash-indexed column's index, `CC` the column (two
//!   digits at least), `B` its bit count (16 to 64): 2^B chunks of 64
//!   entries of 8 bytes after a 16 KiB header, so exactly
//!   `512 * 2^B + 16384` bytes (the crate sets that length whenever it
//!   opens one). A column holds more than one while it is being reindexed
//!   into a larger one; all are live.
//! - `table_CC_TT`: value tables, `TT` the size tier in hex: tiers `00` to
//!   `fe` have fixed entry sizes from 32 to 32,760 bytes, `ff` holds values
//!   too big for those in 4 KiB parts. Entry 0 is a header: the free-list
//!   head and the number of entries in use (8 bytes each, little-endian).
//!   A table grows 256 KiB at a time, so its size is a multiple of 256 KiB
//!   (not of its entry size). Btree columns (`ordered`) keep their nodes in
//!   their value tables and have no index.
//! - `refcount_CC_B` (0.5, multitree columns): reference counts,
//!   `512 * 2^B` bytes.
//! - `logN`: the write-ahead logs. Commits go to a log first and reach the
//!   index and value tables later; a database that was not closed (a
//!   killed node) has logs that the next open replays, so they are part
//!   of the database. Each record starts with byte 1 and its 8-byte record
//!   id and ends with byte 4 and a CRC-32; an empty log is one kept for
//!   reuse.
//! - Not part of the database: `lock` (empty; the running process holds an
//!   exclusive `flock` on it, and the file stays after it closes),
//!   `stats.txt` (statistics written on close), and anything else.
//!
//! With a parent snapshot, files whose size, modification time and mode
//! are unchanged are kept from it. Every open of the database sets each
//! index file's length, which moves its modification time, so index files
//! are read again after each node restart; value tables no write touched
//! keep theirs.
//!
//! Why a live ParityDB is refused. RocksDB only ever adds immutable files
//! and append-only logs, with a manifest naming the live set, so a copy of
//! a running RocksDB can be made consistent by copying one manifest's set.
//! ParityDB instead maps its index and value tables into memory and
//! rewrites their entries in place as it enacts logs (and deletes or
//! empties the logs it has enacted): while it runs, no set of files read
//! one after the other is a state the database was ever in, and nothing
//! in the files tells which writes a copy caught. So a backup first asks
//! whether another process holds the `lock` file, refuses if one does,
//! and after copying asks again and compares the listing, refusing a copy
//! during which the database was opened or its files changed. Stop the
//! node (or back up a filesystem snapshot of a stopped one) and run the
//! backup again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;

use coffer_sdk::{Error, Sink, Timestamp, host};

// ---------------------------------------------------------------------------
// The format

/// The metadata file's name.
pub const METADATA: &str = "metadata";
/// The lock file's name.
pub const LOCK: &str = "lock";
/// The statistics parity-db writes on close (not part of the database).
pub const STATS: &str = "stats.txt";

/// The oldest format version parity-db still opens (`LAST_SUPPORTED_VERSION`
/// in `src/options.rs`); older databases need a migration first.
pub const OLDEST_VERSION: u32 = 4;
/// The newest format version known here: parity-db 0.4 writes 8, 0.5
/// writes 9. A newer one may lay its files out differently.
pub const NEWEST_VERSION: u32 = 9;

/// Index bit counts parity-db opens (`MIN_INDEX_BITS` in `src/column.rs`
/// up to 64).
const MIN_INDEX_BITS: u8 = 16;
const MAX_INDEX_BITS: u8 = 64;
/// An index file's header: a 512-byte header and the column's statistics.
const INDEX_META_SIZE: u64 = 16 * 1024;
/// An index chunk: 64 entries of 8 bytes.
const INDEX_CHUNK_SIZE: u64 = 64 * 8;
/// A reference-count chunk (0.5): 32 entries of 16 bytes, no header.
const REF_COUNT_CHUNK_SIZE: u64 = 32 * 16;
/// Value tables grow by this much (`GROW_SIZE_BYTES` in `src/file.rs`).
pub const TABLE_GROW_SIZE: u64 = 256 * 1024;
/// The tier of values too big for the fixed-size tiers, stored in parts.
const MULTIPART_TIER: u8 = 255;
/// The entry size of the multipart tier.
const MULTIPART_ENTRY_SIZE: u16 = 4096;
/// A value table's header, entry 0: free-list head (u64 LE), entries in use
/// (u64 LE).
const TABLE_HEADER_SIZE: usize = 16;
/// A log record's start: the record type and the record id (u64 LE).
const LOG_RECORD_START: usize = 9;
/// The type byte that starts a log record (`BEGIN_RECORD`).
const BEGIN_RECORD: u8 = 1;
/// The bytes of each value table and log that [`check_structure`] looks
/// at (value table header; start of the first log record).
pub const HEAD_LEN: usize = TABLE_HEADER_SIZE;

/// Entry sizes of tiers 0 to 254 (`SIZES` in `src/column.rs`): 32 to
/// 32,760 bytes in a logarithmic progression,
/// `round(32 * f^i)` with `f = (32760 / 32)^(1/254)`.
const ENTRY_SIZES: [u16; 255] = [
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 50, 51, 52, 54, 55, 57, 58, 60, 62, 63, 65, 67, 69,
    71, 73, 75, 77, 79, 81, 83, 85, 88, 90, 93, 95, 98, 101, 103, 106, 109, 112, 115, 119, 122, 125, 129, 132, 136,
    140, 144, 148, 152, 156, 160, 165, 169, 174, 179, 183, 189, 194, 199, 205, 210, 216, 222, 228, 235, 241, 248, 255,
    262, 269, 276, 284, 292, 300, 308, 317, 325, 334, 344, 353, 363, 373, 383, 394, 405, 416, 428, 439, 452, 464, 477,
    490, 504, 518, 532, 547, 562, 577, 593, 610, 627, 644, 662, 680, 699, 718, 738, 758, 779, 801, 823, 846, 869, 893,
    918, 943, 969, 996, 1024, 1052, 1081, 1111, 1142, 1174, 1206, 1239, 1274, 1309, 1345, 1382, 1421, 1460, 1500, 1542,
    1584, 1628, 1673, 1720, 1767, 1816, 1866, 1918, 1971, 2025, 2082, 2139, 2198, 2259, 2322, 2386, 2452, 2520, 2589,
    2661, 2735, 2810, 2888, 2968, 3050, 3134, 3221, 3310, 3402, 3496, 3593, 3692, 3794, 3899, 4007, 4118, 4232, 4349,
    4469, 4593, 4720, 4850, 4984, 5122, 5264, 5410, 5559, 5713, 5871, 6034, 6200, 6372, 6548, 6729, 6916, 7107, 7303,
    7506, 7713, 7927, 8146, 8371, 8603, 8841, 9085, 9337, 9595, 9860, 10133, 10413, 10702, 10998, 11302, 11614, 11936,
    12266, 12605, 12954, 13312, 13681, 14059, 14448, 14848, 15258, 15681, 16114, 16560, 17018, 17489, 17973, 18470,
    18981, 19506, 20046, 20600, 21170, 21756, 22358, 22976, 23612, 24265, 24936, 25626, 26335, 27064, 27812, 28582,
    29372, 30185, 31020, 31878, 32760,
];

/// The size of an index file with `bits` index bits, or `None` when no
/// file can be that large.
pub fn index_file_size(bits: u8) -> Option<u64> {
    1u64.checked_shl(u32::from(bits))?.checked_mul(INDEX_CHUNK_SIZE)?.checked_add(INDEX_META_SIZE)
}

/// The size of a reference-count file (0.5) with `bits` index bits.
pub fn ref_count_file_size(bits: u8) -> Option<u64> {
    1u64.checked_shl(u32::from(bits))?.checked_mul(REF_COUNT_CHUNK_SIZE)
}

/// The entry size of a value table's size tier.
pub fn table_entry_size(tier: u8) -> u16 {
    if tier == MULTIPART_TIER { MULTIPART_ENTRY_SIZE } else { ENTRY_SIZES[usize::from(tier)] }
}

/// What a file of a ParityDB directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// `metadata`.
    Metadata,
    /// `index_CC_B`: a hash-indexed column's index.
    Index {
        /// The column.
        column: u8,
        /// Its bit count.
        bits: u8,
    },
    /// `table_CC_TT`: a value table.
    Table {
        /// The column.
        column: u8,
        /// The size tier.
        tier: u8,
    },
    /// `refcount_CC_B`: a multitree column's reference counts (0.5).
    RefCount {
        /// The column.
        column: u8,
        /// Its bit count.
        bits: u8,
    },
    /// `logN`: a write-ahead log.
    Log(u32),
    /// `lock`.
    Lock,
    /// `stats.txt`.
    Stats,
    /// Anything else.
    Other,
}

impl FileKind {
    /// True for the files that make up the database.
    pub fn is_database(self) -> bool {
        !matches!(self, FileKind::Lock | FileKind::Stats | FileKind::Other)
    }
}

/// `s` read as a base-`radix` number, accepted only when `canonical`
/// formats the number back to `s` (parity-db opens files by the names it
/// formats, so `index_0_16` or `log07` are not its files).
fn number<T: TryFrom<u64> + Copy>(s: &str, radix: u32, canonical: impl Fn(T) -> String) -> Option<T> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let n = u64::from_str_radix(s, radix).ok()?;
    let n = T::try_from(n).ok()?;
    (canonical(n) == s).then_some(n)
}

/// Classifies a file of a ParityDB directory by its name.
pub fn file_kind(name: &str) -> FileKind {
    match name {
        METADATA => return FileKind::Metadata,
        LOCK => return FileKind::Lock,
        STATS => return FileKind::Stats,
        _ => {}
    }
    let two = |rest: &str| -> Option<(u8, String)> {
        let (col, tail) = rest.split_once('_')?;
        Some((number(col, 10, |c: u8| format!("{c:02}"))?, tail.to_string()))
    };
    if let Some((column, tail)) = name.strip_prefix("index_").and_then(two)
        && let Some(bits) = number(&tail, 10, |b: u8| b.to_string())
        && (MIN_INDEX_BITS..=MAX_INDEX_BITS).contains(&bits)
    {
        return FileKind::Index { column, bits };
    }
    if let Some((column, tail)) = name.strip_prefix("table_").and_then(two)
        && let Some(tier) = number(&tail, 16, |t: u8| format!("{t:02x}"))
    {
        return FileKind::Table { column, tier };
    }
    if let Some((column, tail)) = name.strip_prefix("refcount_").and_then(two)
        && let Some(bits) = number(&tail, 10, |b: u8| b.to_string())
    {
        return FileKind::RefCount { column, bits };
    }
    if let Some(n) = name.strip_prefix("log").and_then(|s| number(s, 10, |n: u32| n.to_string())) {
        return FileKind::Log(n);
    }
    FileKind::Other
}

/// True when a directory with these file names is a ParityDB database: it
/// has `metadata` and the lock file or a file only ParityDB names so (an
/// index, a value table, a log). [`parse_metadata`] then tells for sure.
pub fn looks_like_paritydb<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut metadata, mut other) = (false, false);
    for n in names {
        match file_kind(n) {
            FileKind::Metadata => metadata = true,
            FileKind::Stats | FileKind::Other => {}
            _ => other = true,
        }
    }
    metadata && other
}

// ---------------------------------------------------------------------------
// Metadata

/// A column's value compression (`CompressionType` in `src/compress.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// 0.
    None,
    /// 1.
    Lz4,
    /// 2.
    Snappy,
}

/// A column's options, as `metadata` declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnOptions {
    /// `preimage`: a value always has the same key.
    pub preimage: bool,
    /// `uniform`: keys are at least 32 uniformly distributed bytes.
    pub uniform: bool,
    /// `refc`: values are reference-counted.
    pub ref_counted: bool,
    /// `compression`.
    pub compression: Compression,
    /// `ordered`: a btree column (no index file).
    pub btree_index: bool,
    /// `multitree` (0.5).
    pub multitree: bool,
    /// `append_only` (0.5).
    pub append_only: bool,
    /// `allow_direct_node_access` (0.5).
    pub allow_direct_node_access: bool,
}

/// What `metadata` declares. The salt is checked to be there and
/// well-formed but not kept, so that it is never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The format version.
    pub version: u32,
    /// The columns, in order.
    pub columns: Vec<ColumnOptions>,
}

impl Metadata {
    /// One line for a report: `version 8, 13 columns (1 btree, 2 reference-counted)`.
    pub fn summary(&self) -> String {
        let btree = self.columns.iter().filter(|c| c.btree_index).count();
        let refc = self.columns.iter().filter(|c| c.ref_counted).count();
        format!("version {}, {} columns ({btree} btree, {refc} reference-counted)", self.version, self.columns.len())
    }
}

/// What is wrong with a ParityDB directory's `metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParityDbError {
    /// The file is not what parity-db writes (or would open).
    BadMetadata {
        /// The line concerned (from 1), when there is one.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A format version this module does not know.
    UnknownVersion(u32),
}

impl fmt::Display for ParityDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParityDbError::BadMetadata { line: Some(l), reason } => write!(f, "{METADATA}: line {l}: {reason}"),
            ParityDbError::BadMetadata { line: None, reason } => write!(f, "{METADATA}: {reason}"),
            ParityDbError::UnknownVersion(v) if *v < OLDEST_VERSION => write!(
                f,
                "{METADATA}: ParityDB format version {v} is older than any parity-db still opens \
                 ({OLDEST_VERSION} to {NEWEST_VERSION} are known); the node itself cannot open this database"
            ),
            ParityDbError::UnknownVersion(v) => write!(
                f,
                "{METADATA}: ParityDB format version {v} is newer than this plugin knows (versions \
                 {OLDEST_VERSION} to {NEWEST_VERSION}, written by parity-db 0.4 and 0.5), so it cannot tell \
                 which files hold the database; use a coffer release that knows version {v}"
            ),
        }
    }
}

impl std::error::Error for ParityDbError {}

impl From<ParityDbError> for Error {
    fn from(e: ParityDbError) -> Self {
        match e {
            ParityDbError::UnknownVersion(_) => Error::Unsupported(e.to_string()),
            ParityDbError::BadMetadata { .. } => Error::Corrupt(e.to_string()),
        }
    }
}

/// A `true`/`false` option of a column line.
fn flag(vals: &BTreeMap<&str, &str>, key: &str) -> Result<Option<bool>, String> {
    match vals.get(key) {
        None => Ok(None),
        Some(&"true") => Ok(Some(true)),
        Some(&"false") => Ok(Some(false)),
        Some(v) => Err(format!("`{key}: {v}` is neither true nor false")),
    }
}

/// A column line's value (`preimage: false, uniform: false, ...`), as
/// parity-db's `ColumnOptions::from_string` reads it: anything from
/// `sizes: ` on is ignored (written by old versions); `preimage`,
/// `uniform` and `refc` are required, the others default to off.
fn parse_column(v: &str) -> Result<ColumnOptions, String> {
    let v = v.split("sizes: ").next().unwrap_or_default();
    let vals: BTreeMap<&str, &str> = v.split(", ").filter_map(|p| p.split_once(": ")).collect();
    let required = |k: &str| flag(&vals, k)?.ok_or_else(|| format!("no `{k}` option"));
    let compression = match vals.get("compression") {
        None | Some(&"0") => Compression::None,
        Some(&"1") => Compression::Lz4,
        Some(&"2") => Compression::Snappy,
        Some(c) => return Err(format!("unknown compression {c} (0 none, 1 LZ4 and 2 Snappy are known)")),
    };
    Ok(ColumnOptions {
        preimage: required("preimage")?,
        uniform: required("uniform")?,
        ref_counted: required("refc")?,
        compression,
        btree_index: flag(&vals, "ordered")?.unwrap_or(false),
        multitree: flag(&vals, "multitree")?.unwrap_or(false),
        append_only: flag(&vals, "append_only")?.unwrap_or(false),
        allow_direct_node_access: flag(&vals, "allow_direct_node_access")?.unwrap_or(false),
    })
}

/// Parses `metadata` the way parity-db's `Options::load_metadata_file`
/// does (every line `key=value`; `version`, `salt` and lines whose key
/// starts with `col`, one column each in order; other keys ignored), and
/// rejects format versions outside [`OLDEST_VERSION`]..=[`NEWEST_VERSION`].
pub fn parse_metadata(bytes: &[u8]) -> Result<Metadata, ParityDbError> {
    let bad = |line: Option<usize>, reason: String| ParityDbError::BadMetadata { line, reason };
    let text = std::str::from_utf8(bytes).map_err(|_| bad(None, "not text (not UTF-8)".into()))?;
    let (mut version, mut salt, mut columns) = (None, false, Vec::new());
    for (i, line) in text.lines().enumerate() {
        let n = Some(i + 1);
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(n, "not `key=value`".into()));
        };
        // parity-db splits on every `=` and takes the first two pieces.
        let v = v.split('=').next().unwrap_or_default();
        if k == "version" {
            version = Some(v.parse::<u32>().map_err(|_| bad(n, format!("version `{v}` is not a number")))?);
        } else if k == "salt" {
            // Its value is never shown.
            if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(n, "the salt is not 32 bytes in hex".into()));
            }
            salt = true;
        } else if k.starts_with("col") {
            columns.push(parse_column(v).map_err(|r| bad(n, format!("column {}: {r}", columns.len())))?);
        }
    }
    let version = version.ok_or_else(|| bad(None, "no `version=` line".into()))?;
    if !(OLDEST_VERSION..=NEWEST_VERSION).contains(&version) {
        return Err(ParityDbError::UnknownVersion(version));
    }
    if !salt {
        return Err(bad(
            None,
            "no `salt=` line (keys are hashed with the salt: without it nothing can be found)".into(),
        ));
    }
    Ok(Metadata { version, columns })
}

// ---------------------------------------------------------------------------
// The file set

pub use coffer_lsm::copy::ListedFile;
use coffer_lsm::copy::LsmDir;

/// Files of the directory that are not part of the database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeftOut {
    /// `lock`, when there is one.
    pub lock: bool,
    /// `stats.txt`, when there is one.
    pub stats: bool,
    /// Anything else: files parity-db does not name so, directories (such
    /// as a migration's `to_revert_overwrite`), symlinks, special files.
    pub unknown: Vec<String>,
}

impl LeftOut {
    /// How many files were left out.
    pub fn len(&self) -> usize {
        usize::from(self.lock) + usize::from(self.stats) + self.unknown.len()
    }

    /// True when nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.lock {
            parts.push(LOCK.to_string());
        }
        if self.stats {
            parts.push(STATS.to_string());
        }
        match self.unknown.len() {
            0 => {}
            n => parts.push(format!("{n} unknown ({})", self.unknown.join(", "))),
        }
        if parts.is_empty() { write!(f, "nothing") } else { write!(f, "{}", parts.join(", ")) }
    }
}

/// The files that make up a ParityDB database, from the directory's
/// listing: each kind in parity-db's order (column, then bits or tier;
/// logs by number).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileSet {
    /// Whether `metadata` is there.
    pub metadata: bool,
    /// Index files.
    pub indexes: Vec<String>,
    /// Value tables.
    pub tables: Vec<String>,
    /// Reference-count files (0.5 multitree columns).
    pub ref_counts: Vec<String>,
    /// Write-ahead logs.
    pub logs: Vec<String>,
    /// Everything else.
    pub left_out: LeftOut,
}

impl FileSet {
    /// Every file of the database but `metadata`: indexes, value tables,
    /// reference counts, logs.
    pub fn data_files(&self) -> Vec<String> {
        let mut v = self.indexes.clone();
        v.extend(self.tables.iter().cloned());
        v.extend(self.ref_counts.iter().cloned());
        v.extend(self.logs.iter().cloned());
        v
    }

    /// Every file of the database, `metadata` included.
    pub fn files(&self) -> Vec<String> {
        let mut v = self.data_files();
        if self.metadata {
            v.push(METADATA.to_string());
        }
        v
    }
}

/// Works out which files make up the database: `metadata`, every index,
/// value table, reference-count file and log, whatever column it names
/// (parity-db keeps every file it names; [`check_structure`] says which do
/// not fit the metadata). Left out: `lock`, `stats.txt`, and anything
/// else, directories and special files included.
pub fn file_set(files: &[ListedFile]) -> FileSet {
    let mut set = FileSet::default();
    let mut db: BTreeMap<FileKind, String> = BTreeMap::new();
    for f in files {
        if !f.is_file {
            set.left_out.unknown.push(f.name.clone());
            continue;
        }
        match file_kind(&f.name) {
            FileKind::Metadata => set.metadata = true,
            FileKind::Lock => set.left_out.lock = true,
            FileKind::Stats => set.left_out.stats = true,
            FileKind::Other => set.left_out.unknown.push(f.name.clone()),
            k => {
                db.insert(k, f.name.clone());
            }
        }
    }
    for (k, name) in db {
        match k {
            FileKind::Index { .. } => set.indexes.push(name),
            FileKind::Table { .. } => set.tables.push(name),
            FileKind::RefCount { .. } => set.ref_counts.push(name),
            _ => set.logs.push(name),
        }
    }
    set.left_out.unknown.sort();
    set
}

// ---------------------------------------------------------------------------
// The structural check

/// A problem found in one file of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file's name in the directory.
    pub file: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)
    }
}

/// What [`check_structure`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StructureCheck {
    /// The metadata, when it parsed.
    pub metadata: Option<Metadata>,
    /// The database's files.
    pub files: FileSet,
    /// Problems, by file, in file order.
    pub problems: Vec<Problem>,
}

/// Checks the structure of a ParityDB directory without reading its data:
/// `metadata` is its metadata's bytes (`None` when there is no such file),
/// `files` its listing, `heads` the first [`HEAD_LEN`] bytes of any of its
/// value tables and logs (a file not in it is checked by size only).
///
/// - `metadata` parses, with a known version.
/// - Every index, value table and reference-count file names a column the
///   metadata declares; index files belong to hash columns (btree columns
///   have none), reference-count files to multitree columns; a hash column
///   with value tables has an index.
/// - An index file is exactly `512 * 2^B + 16384` bytes, a
///   reference-count file `512 * 2^B`.
/// - A value table is a non-zero multiple of 256 KiB; its header's count
///   of entries in use fits in the file, and its free-list head is below
///   that count.
/// - A non-empty log of at least 9 bytes starts with a record (byte 1).
///   Shorter ones are a first write cut short, which parity-db discards
///   on open, as it does empty ones; neither is a problem.
pub fn check_structure(
    metadata: Option<&[u8]>,
    files: &[ListedFile],
    heads: &BTreeMap<String, Vec<u8>>,
) -> StructureCheck {
    let set = file_set(files);
    let mut problems = Vec::new();
    let meta = match metadata.map(parse_metadata) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            let reason = e.to_string();
            let reason = reason.strip_prefix(&format!("{METADATA}: ")).unwrap_or(&reason).to_string();
            problems.push(Problem { file: METADATA.into(), reason });
            None
        }
        None => {
            problems.push(Problem {
                file: METADATA.into(),
                reason: "missing: without it parity-db cannot open the database (its columns and the salt its \
                         keys are hashed with are there)"
                    .into(),
            });
            None
        }
    };
    let sizes: BTreeMap<&str, u64> = files.iter().map(|f| (f.name.as_str(), f.size)).collect();
    let mut indexed: BTreeSet<u8> = BTreeSet::new();
    for name in &set.indexes {
        if let FileKind::Index { column, .. } = file_kind(name) {
            indexed.insert(column);
        }
    }
    let mut unindexed_reported: BTreeSet<u8> = BTreeSet::new();
    for name in set.data_files() {
        let size = sizes[name.as_str()];
        let mut problem = |reason: String| problems.push(Problem { file: name.clone(), reason });
        let kind = file_kind(&name);
        let column = match kind {
            FileKind::Index { column, .. } | FileKind::Table { column, .. } | FileKind::RefCount { column, .. } => {
                Some(column)
            }
            _ => None,
        };
        if let (Some(m), Some(c)) = (&meta, column) {
            match m.columns.get(usize::from(c)) {
                None => problem(format!(
                    "belongs to column {c}, but the metadata declares {} columns (0 to {})",
                    m.columns.len(),
                    m.columns.len().saturating_sub(1)
                )),
                Some(o) => match kind {
                    FileKind::Index { .. } if o.btree_index => {
                        problem(format!("an index file for column {c}, a btree column, which keeps no index"))
                    }
                    FileKind::RefCount { .. } if !o.multitree => {
                        problem(format!("a reference-count file for column {c}, which is not a multitree column"))
                    }
                    FileKind::Table { .. }
                        if !o.btree_index && !indexed.contains(&c) && unindexed_reported.insert(c) =>
                    {
                        problem(format!(
                            "column {c} has value tables but no index file (index_{c:02}_NN): its values cannot \
                             be found"
                        ))
                    }
                    _ => {}
                },
            }
        }
        match kind {
            FileKind::Index { bits, .. } => match index_file_size(bits) {
                Some(want) if want == size => {}
                Some(want) => problem(format!(
                    "{size} bytes; an index of {bits} bits is {want} bytes (2^{bits} chunks of 512 bytes after \
                     a 16 KiB header): {}",
                    if size < want { "truncated" } else { "extended" }
                )),
                None => problem(format!("an index of {bits} bits would be larger than any file can be")),
            },
            FileKind::RefCount { bits, .. } => match ref_count_file_size(bits) {
                Some(want) if want == size => {}
                Some(want) => problem(format!(
                    "{size} bytes; a reference-count file of {bits} bits is {want} bytes: {}",
                    if size < want { "truncated" } else { "extended" }
                )),
                None => problem(format!("a reference-count file of {bits} bits would be larger than any file can be")),
            },
            FileKind::Table { tier, .. } => {
                if size == 0 {
                    problem(
                        "empty; parity-db creates value tables 256 KiB long and writes their header first, \
                         so the table was truncated and its values are lost"
                            .into(),
                    );
                    continue;
                }
                if !size.is_multiple_of(TABLE_GROW_SIZE) {
                    problem(format!(
                        "{size} bytes, not a multiple of 256 KiB (value tables grow 256 KiB at a time): \
                         truncated or extended"
                    ));
                }
                let Some(head) = heads.get(&name).filter(|h| h.len() >= TABLE_HEADER_SIZE) else {
                    continue;
                };
                let entry = u64::from(table_entry_size(tier));
                let last_removed = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default());
                let filled = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default()).max(1);
                let holds = size / entry;
                if filled > holds {
                    problem(format!(
                        "its header says {filled} entries of {entry} bytes are in use, but the file holds \
                         {holds}: truncated"
                    ));
                } else if last_removed >= filled {
                    problem(format!(
                        "its header's free-list head, entry {last_removed}, is not below its {filled} entries \
                         in use"
                    ));
                }
            }
            FileKind::Log(_) => {
                if let Some(head) = heads.get(&name)
                    && size >= LOG_RECORD_START as u64
                    && head.len() >= LOG_RECORD_START
                    && head[0] != BEGIN_RECORD
                {
                    problem(format!(
                        "does not start with a log record (its first byte is {}, a record starts with \
                         {BEGIN_RECORD}): parity-db would discard this log and the ones after it when \
                         replaying, losing their commits",
                        head[0]
                    ));
                }
            }
            _ => {}
        }
    }
    StructureCheck { metadata: meta, files: set, problems }
}

// ---------------------------------------------------------------------------
// Backup

/// What the backup and verify of one ParityDB directory need: the host in
/// the plugin, a fake directory in tests.
pub trait ParityDbDir {
    /// The directory's items.
    fn list(&mut self) -> Result<Vec<ListedFile>, Error>;
    /// A file's bytes; `None` when it does not exist.
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// A file's first `len` bytes (fewer when it is shorter); `None` when
    /// it does not exist.
    fn read_head(&mut self, name: &str, len: usize) -> Result<Option<Vec<u8>>, Error>;
    /// Whether another process holds the lock on the file `name` (the host
    /// answers; only asked about `lock` when it exists).
    fn locked(&mut self, name: &str) -> Result<bool, Error>;
    /// Keeps the parent snapshot's copy of a file that has not changed;
    /// false when there is none to keep.
    fn reuse_unchanged(&mut self, file: &ListedFile) -> bool;
    /// Copies files as they are; for each, false when it vanished first.
    fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error>;
    /// Stores `bytes` as the file `file.name`.
    fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error>;
}

/// What the backup of a ParityDB directory did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParityDbReport {
    /// What the metadata declares.
    pub metadata: Option<Metadata>,
    /// Index files stored.
    pub indexes: usize,
    /// Value tables stored.
    pub tables: usize,
    /// Reference-count files stored.
    pub ref_counts: usize,
    /// Logs stored (a database that was not closed cleanly has some).
    pub logs: usize,
    /// Files kept unchanged from the parent snapshot without reading.
    pub reused: usize,
    /// Bytes of the database's files, as listed.
    pub bytes: u64,
    /// Structural problems found in the files as listed (stored all the
    /// same: the copy is of the database as it is).
    pub problems: Vec<Problem>,
    /// Files left out.
    pub left_out: LeftOut,
}

/// The error for a database another process has open.
fn live(label: &str, when: &str) -> Error {
    Error::Unavailable(format!(
        "{label}: the ParityDB database {when} (another process holds its `{LOCK}` file): ParityDB rewrites its \
         index and value tables in place while it runs, so a copy would not be consistent; stop the node (or back \
         up a filesystem snapshot taken while it was stopped) and run the backup again"
    ))
}

/// Whether another process holds the database's lock, asked only when the
/// listing has a `lock` file.
fn lock_held(dir: &mut impl ParityDbDir, listed: &[ListedFile]) -> Result<bool, Error> {
    if listed.iter().any(|f| f.is_file && f.name == LOCK) { dir.locked(LOCK) } else { Ok(false) }
}

/// Copies a ParityDB database that no process has open: `metadata`
/// (stored from the bytes parsed), every index, value table,
/// reference-count file and log; files unchanged since the parent snapshot
/// are kept from it without reading. Refused: a database another process
/// has open (see the module docs), before copying and again after (when
/// it was opened meanwhile), and a copy during which a file of the
/// database changed, appeared or vanished. A `metadata` that does not
/// parse, or has an unknown version, is refused before anything is
/// copied. Structural problems ([`check_structure`], sizes only) do not
/// stop the copy; they are in the report. `label` names the directory in
/// messages.
pub fn copy_database(dir: &mut impl ParityDbDir, label: &str) -> Result<ParityDbReport, Error> {
    let listed = dir.list()?;
    if lock_held(dir, &listed)? {
        return Err(live(label, "is open"));
    }
    let Some(meta_bytes) = dir.read(METADATA)? else {
        return Err(Error::Corrupt(format!(
            "{label}: no `{METADATA}` file, so this is not a ParityDB database (or it lost the file naming its \
             columns and salt)"
        )));
    };
    let meta = parse_metadata(&meta_bytes).map_err(|e| Error::from(e).context(label))?;
    let check = check_structure(Some(&meta_bytes), &listed, &BTreeMap::new());
    let set = &check.files;
    let by_name: BTreeMap<&str, &ListedFile> = listed.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut report = ParityDbReport {
        metadata: Some(meta),
        indexes: set.indexes.len(),
        tables: set.tables.len(),
        ref_counts: set.ref_counts.len(),
        logs: set.logs.len(),
        problems: check.problems.clone(),
        left_out: set.left_out.clone(),
        ..ParityDbReport::default()
    };
    let mut to_copy = Vec::new();
    for name in set.data_files() {
        let f = by_name[name.as_str()];
        report.bytes += f.size;
        if dir.reuse_unchanged(f) {
            report.reused += 1;
        } else {
            to_copy.push(name);
        }
    }
    for (name, added) in to_copy.iter().zip(dir.add_files(&to_copy)?) {
        if !added {
            return Err(Error::Unavailable(format!(
                "{label}/{name} vanished while the database was copied: a process is using it; stop the node and \
                 run the backup again"
            )));
        }
    }
    let meta_file = by_name[METADATA];
    report.bytes += meta_file.size;
    dir.add_bytes(meta_file, &meta_bytes)?;
    // Opened, or changed by anything, while it was copied?
    let after = dir.list()?;
    if lock_held(dir, &after)? {
        return Err(live(label, "was opened while it was copied"));
    }
    let before: BTreeMap<&str, (u64, Timestamp)> =
        listed.iter().filter(|f| f.is_file).map(|f| (f.name.as_str(), (f.size, f.mtime))).collect();
    for f in after.iter().filter(|f| f.is_file && file_kind(&f.name).is_database()) {
        let changed = match before.get(f.name.as_str()) {
            None => "appeared",
            Some(&(size, mtime)) if (size, mtime) != (f.size, f.mtime) => "changed",
            _ => continue,
        };
        return Err(Error::Unavailable(format!(
            "{label}/{} {changed} while the database was copied, so the copy is not consistent: a process writes to \
             it; stop the node and run the backup again",
            f.name
        )));
    }
    let still: BTreeSet<&str> = after.iter().map(|f| f.name.as_str()).collect();
    if let Some(gone) = set.files().iter().find(|n| !still.contains(n.as_str())) {
        return Err(Error::Unavailable(format!(
            "{label}/{gone} vanished while the database was copied, so the copy is not consistent: a process writes \
             to it; stop the node and run the backup again"
        )));
    }
    Ok(report)
}

/// Checks a ParityDB directory for `verify` (a restored copy, or the
/// source): reads `metadata` and the first [`HEAD_LEN`] bytes of each value
/// table and log, and runs [`check_structure`].
pub fn check_dir(dir: &mut impl ParityDbDir) -> Result<StructureCheck, Error> {
    let listed = dir.list()?;
    check_files(&listed, |name, head| match head {
        Some(len) => dir.read_head(name, len),
        None => dir.read(name),
    })
}

/// [`check_dir`] of the files `listed`, wherever they are: `read(name,
/// Some(len))` gives at most the first `len` bytes of a file, `read(name,
/// None)` all of it (`None` for a file that is not there). `coffer verify`
/// reads them from the snapshot.
pub fn check_files(
    listed: &[ListedFile],
    mut read: impl FnMut(&str, Option<usize>) -> Result<Option<Vec<u8>>, Error>,
) -> Result<StructureCheck, Error> {
    let metadata = read(METADATA, None)?;
    let set = file_set(listed);
    let mut heads = BTreeMap::new();
    for name in set.tables.iter().chain(&set.logs) {
        if let Some(h) = read(name, Some(HEAD_LEN))? {
            heads.insert(name.clone(), h);
        }
    }
    Ok(check_structure(metadata.as_deref(), listed, &heads))
}

/// The directory on the host: coffer-lsm's, which lists, reads and stores
/// a database directory's files for the plugin, with the lock question.
struct HostDir<'a, 'b> {
    inner: coffer_lsm::copy::HostDir<'a, 'b>,
    /// The host's answer to "does another process hold a lock on this
    /// file".
    locked: &'a dyn Fn(&str) -> Result<bool, Error>,
}

impl ParityDbDir for HostDir<'_, '_> {
    fn list(&mut self) -> Result<Vec<ListedFile>, Error> {
        self.inner.list()
    }

    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        self.inner.read(name)
    }

    fn read_head(&mut self, name: &str, len: usize) -> Result<Option<Vec<u8>>, Error> {
        let path = self.inner.host_path(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::from(e).context(&path)),
        };
        let mut out = Vec::new();
        file.take(len as u64).read_to_end(&mut out).map_err(|e| Error::from(e).context(&path))?;
        Ok(Some(out))
    }

    fn locked(&mut self, name: &str) -> Result<bool, Error> {
        (self.locked)(&self.inner.host_path(name))
    }

    fn reuse_unchanged(&mut self, file: &ListedFile) -> bool {
        self.inner.reuse_unchanged(file)
    }

    fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error> {
        self.inner.add_files(names)
    }

    fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error> {
        self.inner.add_bytes(file, bytes)
    }
}

/// Backs up the ParityDB database in the host directory `source` as the
/// snapshot directory `rel` (its files become `rel/NAME`; the directory
/// entry itself is the caller's): see [`copy_database`]. `locked` is the
/// host's answer to "does another process hold a lock on this file"
/// (given a host path). With a parent snapshot, files whose size,
/// modification time and mode are unchanged are kept from it without
/// being read. Logs what was stored, what was left out, and any
/// structural problem.
pub fn backup(
    source: &str,
    rel: &str,
    has_parent: bool,
    locked: &dyn Fn(&str) -> Result<bool, Error>,
    sink: &Sink,
) -> Result<ParityDbReport, Error> {
    host::check_cancelled()?;
    let mut dir = HostDir { inner: coffer_lsm::copy::HostDir::new(source, rel, has_parent, sink), locked };
    let r = copy_database(&mut dir, source)?;
    let mut msg = format!(
        "ParityDB {source}: {}; {} index files, {} value tables, {} logs ({} files kept from the parent snapshot), \
         {} bytes",
        r.metadata.as_ref().map(Metadata::summary).unwrap_or_default(),
        r.indexes,
        r.tables,
        r.logs,
        r.reused,
        r.bytes
    );
    if r.ref_counts > 0 {
        msg.push_str(&format!(", {} reference-count files", r.ref_counts));
    }
    if r.logs > 0 {
        msg.push_str("; the database was not closed cleanly: its logs are stored for the next open to replay");
    }
    if !r.left_out.is_empty() {
        msg.push_str(&format!("; left out (not part of the database): {}", r.left_out));
    }
    host::info(msg);
    for p in &r.problems {
        host::warn(format!("ParityDB {source}/{p} (stored as it is)"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use parity_db::{ColumnOptions as DbColumn, CompressionType, Db, Operation, Options};

    // -----------------------------------------------------------------
    // Real databases, written with parity-db as a node writes them.

    /// Four columns as sc-client-db sets them up (column 1 the state
    /// column: ref-counted, preimage, uniform, LZ4), column 3 a btree.
    fn options(path: &Path) -> Options {
        let mut o = Options::with_columns(path, 4);
        o.columns[1] = DbColumn {
            ref_counted: true,
            preimage: true,
            uniform: true,
            compression: CompressionType::Lz4,
            ..DbColumn::default()
        };
        o.columns[3].btree_index = true;
        o
    }

    fn key(col: u8, i: u32) -> Vec<u8> {
        if col == 1 {
            // 32 bytes, uniform enough.
            (0..32u32).map(|b| (i.wrapping_mul(2_654_435_761).rotate_left(b) ^ b) as u8).collect()
        } else {
            format!("key-{col}-{i:06}").into_bytes()
        }
    }

    /// Small values, and every fifth one larger than the largest size
    /// tier (stored in parts in `table_CC_ff`).
    fn value(col: u8, i: u32) -> Vec<u8> {
        let len = if i % 5 == 3 { 40_000 } else { 20 + (i as usize % 7) * 90 };
        (0..len).map(|j| (j as u32).wrapping_mul(31).wrapping_add(i * 7 + u32::from(col)) as u8).collect()
    }

    /// One commit's operations.
    type Commit = Vec<(u8, Operation<Vec<u8>, Vec<u8>>)>;

    /// Sets keys `range` in every column.
    fn changes(range: std::ops::Range<u32>) -> Commit {
        (0..4u8).flat_map(|c| range.clone().map(move |i| (c, Operation::Set(key(c, i), value(c, i))))).collect()
    }

    /// A closed database with `n` keys in each column, in two commits.
    fn write_db(path: &Path, n: u32) {
        let db = Db::open_or_create(&options(path)).unwrap();
        db.commit_changes(changes(0..n / 2)).unwrap();
        db.commit_changes(changes(n / 2..n)).unwrap();
    }

    /// Every key of [`write_db`] is in the database at `path`, with its value.
    fn assert_values(path: &Path, n: u32) {
        let db = Db::open_read_only(&options(path)).unwrap();
        for c in 0..4u8 {
            for i in 0..n {
                assert_eq!(db.get(c, &key(c, i)).unwrap(), Some(value(c, i)), "column {c} key {i}");
            }
        }
    }

    fn listing(dir: &Path) -> Vec<ListedFile> {
        let mut v: Vec<ListedFile> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                ListedFile {
                    name: e.file_name().into_string().unwrap(),
                    size: md.len(),
                    mtime: md.modified().unwrap().into(),
                    mode: 0o644,
                    is_file: md.is_file(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Something done to the directory during a copy.
    type Touch = Box<dyn FnOnce(&Path)>;

    /// A directory on disk, copied into `out`; `parent` holds the files
    /// a parent snapshot has (name, size and mtime); `on_add_files` runs
    /// once after files are copied (a process touching the database).
    struct DiskDir {
        dir: PathBuf,
        out: PathBuf,
        parent: BTreeMap<String, (u64, Timestamp)>,
        stored: Vec<String>,
        on_add_files: Option<Touch>,
    }

    impl DiskDir {
        fn new(dir: &Path, out: &Path) -> Self {
            std::fs::create_dir_all(out).unwrap();
            DiskDir {
                dir: dir.into(),
                out: out.into(),
                parent: BTreeMap::new(),
                stored: Vec::new(),
                on_add_files: None,
            }
        }
    }

    impl ParityDbDir for DiskDir {
        fn list(&mut self) -> Result<Vec<ListedFile>, Error> {
            Ok(listing(&self.dir))
        }

        fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
            Ok(std::fs::read(self.dir.join(name)).ok())
        }

        fn read_head(&mut self, name: &str, len: usize) -> Result<Option<Vec<u8>>, Error> {
            Ok(std::fs::read(self.dir.join(name)).ok().map(|mut b| {
                b.truncate(len);
                b
            }))
        }

        fn locked(&mut self, name: &str) -> Result<bool, Error> {
            // flock locks belong to an open file: another open of the file
            // conflicts with the database's, even in this process.
            let f = std::fs::File::open(self.dir.join(name)).unwrap();
            Ok(matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
        }

        fn reuse_unchanged(&mut self, file: &ListedFile) -> bool {
            if self.parent.get(&file.name) == Some(&(file.size, file.mtime)) {
                // What a parent snapshot's copy restores to.
                std::fs::copy(self.dir.join(&file.name), self.out.join(&file.name)).unwrap();
                self.stored.push(format!("{} (parent)", file.name));
                return true;
            }
            false
        }

        fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error> {
            let out = names
                .iter()
                .map(|n| {
                    self.stored.push(n.clone());
                    std::fs::copy(self.dir.join(n), self.out.join(n)).is_ok()
                })
                .collect();
            if let Some(f) = self.on_add_files.take() {
                f(&self.dir);
            }
            Ok(out)
        }

        fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error> {
            self.stored.push(file.name.clone());
            std::fs::write(self.out.join(&file.name), bytes).unwrap();
            Ok(())
        }
    }

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_real_database_is_recognised_parsed_and_copied_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("full");
        write_db(&db, 60);
        let files = listing(&db);
        assert!(looks_like_paritydb(files.iter().map(|f| f.name.as_str())));
        assert!(!looks_like_paritydb(["CURRENT", "MANIFEST-000001", "000003.log"]));
        assert!(!looks_like_paritydb(["metadata", "notes.txt"]));

        let meta = parse_metadata(&std::fs::read(db.join(METADATA)).unwrap()).unwrap();
        assert_eq!(meta.version, 8);
        assert_eq!(meta.columns.len(), 4);
        let state = meta.columns[1];
        assert!(state.ref_counted && state.preimage && state.uniform && !state.btree_index);
        assert_eq!(state.compression, Compression::Lz4);
        assert!(meta.columns[3].btree_index && !meta.columns[3].ref_counted);
        assert_eq!(meta.columns[0], ColumnOptions { compression: Compression::None, ..meta.columns[2] });
        assert_eq!(meta.summary(), "version 8, 4 columns (1 btree, 1 reference-counted)");
        // The salt is never in what the module keeps or prints.
        let salt = std::fs::read_to_string(db.join(METADATA)).unwrap();
        let salt = salt.lines().find_map(|l| l.strip_prefix("salt=")).unwrap().to_string();
        assert!(!format!("{meta:?}").contains(&salt));

        // Hash columns have an index of 16 bits; the btree column none;
        // every column has small values, and multipart ones (tier ff)
        // but the state column, whose LZ4 shrinks them.
        let set = file_set(&files);
        assert!(set.metadata);
        assert_eq!(names(&set.indexes), ["index_00_16", "index_01_16", "index_02_16"]);
        for c in [0, 2, 3] {
            assert!(set.tables.contains(&format!("table_{c:02}_ff")), "{:?}", set.tables);
        }
        assert!(set.logs.is_empty(), "a closed database keeps no logs: {:?}", set.logs);
        assert!(set.left_out.lock && set.left_out.stats && set.left_out.unknown.is_empty());
        assert_eq!(set.left_out.to_string(), "lock, stats.txt");

        let check = check_dir(&mut DiskDir::new(&db, &tmp.path().join("unused"))).unwrap();
        assert_eq!(check.problems, []);
        assert_eq!(check.metadata, Some(meta));

        let out = tmp.path().join("copy");
        let mut dir = DiskDir::new(&db, &out);
        let r = copy_database(&mut dir, "full").unwrap();
        assert_eq!((r.indexes, r.tables, r.logs, r.reused), (3, set.tables.len(), 0, 0));
        assert_eq!(dir.stored.last().map(String::as_str), Some(METADATA));
        assert!(!out.join(LOCK).exists() && !out.join(STATS).exists());
        assert_values(&out, 60);
    }

    #[test]
    fn entry_sizes_follow_the_formula() {
        // parity-db's generator: 255 tiers from 32 to 32,760 bytes.
        let f = ((32760f64).ln() - 32f64.ln()) / 254.0;
        let mut s = 32f64;
        for (tier, &size) in ENTRY_SIZES.iter().enumerate() {
            assert_eq!(s.round() as u16, size, "tier {tier}");
            s *= f.exp();
        }
        assert_eq!(table_entry_size(255), 4096);
        assert_eq!(index_file_size(16), Some(33_570_816));
        assert_eq!(index_file_size(64), None);
        assert_eq!(ref_count_file_size(16), Some(33_554_432));
    }

    #[test]
    fn file_names() {
        assert_eq!(file_kind("index_01_16"), FileKind::Index { column: 1, bits: 16 });
        assert_eq!(file_kind("index_120_23"), FileKind::Index { column: 120, bits: 23 });
        assert_eq!(file_kind("table_03_ff"), FileKind::Table { column: 3, tier: 255 });
        assert_eq!(file_kind("table_00_0a"), FileKind::Table { column: 0, tier: 10 });
        assert_eq!(file_kind("refcount_02_16"), FileKind::RefCount { column: 2, bits: 16 });
        assert_eq!(file_kind("log0"), FileKind::Log(0));
        assert_eq!(file_kind("log12"), FileKind::Log(12));
        assert_eq!(file_kind("lock"), FileKind::Lock);
        assert_eq!(file_kind("stats.txt"), FileKind::Stats);
        // Not names parity-db formats (it would never open them).
        for other in
            ["index_1_16", "index_01_15", "index_01_016", "table_01_FF", "table_01_1", "log07", "log", "logx", "LOCK"]
        {
            assert_eq!(file_kind(other), FileKind::Other, "{other}");
        }
    }

    #[test]
    fn a_truncated_table_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("full");
        write_db(&db, 60);
        // Column 2's multipart table: twelve 40 KB values in 4 KiB parts,
        // more than 256 KiB of them.
        let big = db.join("table_02_ff");
        assert!(std::fs::metadata(&big).unwrap().len() > TABLE_GROW_SIZE);
        let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.set_len(TABLE_GROW_SIZE).unwrap();
        let small = db.join("table_00_ff");
        std::fs::OpenOptions::new().write(true).open(&small).unwrap().set_len(600_000).unwrap();
        let index = db.join("index_01_16");
        std::fs::OpenOptions::new().write(true).open(&index).unwrap().set_len(1 << 20).unwrap();
        let check = check_dir(&mut DiskDir::new(&db, &tmp.path().join("unused"))).unwrap();
        let p: Vec<String> = check.problems.iter().map(Problem::to_string).collect();
        assert_eq!(p.len(), 3, "{p:#?}");
        assert_eq!(
            p[0],
            "index_01_16: 1048576 bytes; an index of 16 bits is 33570816 bytes (2^16 chunks of 512 bytes after a 16 \
             KiB header): truncated"
        );
        assert_eq!(
            p[1],
            "table_00_ff: 600000 bytes, not a multiple of 256 KiB (value tables grow 256 KiB at a time): truncated or \
             extended"
        );
        assert!(
            p[2].starts_with("table_02_ff: its header says ")
                && p[2].ends_with(" entries of 4096 bytes are in use, but the file holds 64: truncated"),
            "{}",
            p[2]
        );
        // Emptied.
        std::fs::write(&big, b"").unwrap();
        let check = check_dir(&mut DiskDir::new(&db, &tmp.path().join("unused"))).unwrap();
        assert!(check.problems.iter().any(|p| p.file == "table_02_ff" && p.reason.starts_with("empty;")));
        // A backup stores the damaged database as it is, with the problems.
        let r = copy_database(&mut DiskDir::new(&db, &tmp.path().join("copy")), "full").unwrap();
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
    }

    #[test]
    fn unknown_files_are_left_out_and_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("full");
        write_db(&db, 20);
        std::fs::write(db.join("notes.txt"), b"mine").unwrap();
        std::fs::write(db.join("log07"), b"not parity-db's").unwrap();
        std::fs::create_dir(db.join("to_revert_overwrite")).unwrap();
        let out = tmp.path().join("copy");
        let mut dir = DiskDir::new(&db, &out);
        let r = copy_database(&mut dir, "full").unwrap();
        assert_eq!(r.left_out.unknown, ["log07", "notes.txt", "to_revert_overwrite"]);
        assert_eq!(r.left_out.len(), 5);
        assert_eq!(r.left_out.to_string(), "lock, stats.txt, 3 unknown (log07, notes.txt, to_revert_overwrite)");
        assert!(!dir.stored.iter().any(|n| n.contains("notes") || n.contains("log07")), "{:?}", dir.stored);
        assert!(!out.join("notes.txt").exists());
        assert_values(&out, 20);
    }

    #[test]
    fn unknown_versions_and_bad_metadata_are_refused_clearly() {
        let meta = |v: &str| {
            format!(
                "version={v}\nsalt={}\ncol0=preimage: false, uniform: false, refc: false, compression: 0, ordered: false",
                "ab".repeat(32)
            )
        };
        assert_eq!(parse_metadata(meta("8").as_bytes()).unwrap().version, 8);
        assert_eq!(parse_metadata(meta("9").as_bytes()).unwrap().version, 9);
        let e = parse_metadata(meta("10").as_bytes()).unwrap_err();
        assert_eq!(e, ParityDbError::UnknownVersion(10));
        assert_eq!(
            e.to_string(),
            "metadata: ParityDB format version 10 is newer than this plugin knows (versions 4 to 9, written by \
             parity-db 0.4 and 0.5), so it cannot tell which files hold the database; use a coffer release that \
             knows version 10"
        );
        assert!(matches!(Error::from(e), Error::Unsupported(_)));
        assert!(parse_metadata(meta("3").as_bytes()).unwrap_err().to_string().contains("older than any parity-db"));

        let bad = |text: &str| parse_metadata(text.as_bytes()).unwrap_err().to_string();
        let salt = format!("salt={}", "00".repeat(32));
        assert_eq!(bad(&salt), "metadata: no `version=` line");
        assert_eq!(
            bad("version=8"),
            "metadata: no `salt=` line (keys are hashed with the salt: without it nothing can be found)"
        );
        assert_eq!(bad("version=8\nsalt=abcd"), "metadata: line 2: the salt is not 32 bytes in hex");
        assert_eq!(bad("version=eight"), "metadata: line 1: version `eight` is not a number");
        assert_eq!(bad("version=8\n\nsalt=00"), "metadata: line 2: not `key=value`");
        assert_eq!(
            bad(&format!("version=8\n{salt}\ncol0=preimage: true, uniform: false")),
            "metadata: line 3: column 0: no `refc` option"
        );
        assert_eq!(
            bad(&format!("version=8\n{salt}\ncol0=preimage: true, uniform: false, refc: true, compression: 7")),
            "metadata: line 3: column 0: unknown compression 7 (0 none, 1 LZ4 and 2 Snappy are known)"
        );
        // Old versions wrote the value table sizes after the options;
        // 0.5 adds multitree options.
        let m = parse_metadata(
            format!(
                "version=9\n{salt}\ncol0=preimage: true, uniform: true, refc: true, compression: 2, ordered: false, \
                 multitree: true, append_only: false, allow_direct_node_access: true\ncol1=preimage: false, uniform: \
                 false, refc: false, sizes: [32, 64]"
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(m.columns[0].multitree && m.columns[0].allow_direct_node_access);
        assert_eq!(m.columns[0].compression, Compression::Snappy);
        assert_eq!(m.columns[1], ColumnOptions { compression: Compression::None, ..m.columns[1] });

        // A real database whose metadata has an unknown version: nothing
        // is copied.
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("full");
        write_db(&db, 10);
        let text = std::fs::read_to_string(db.join(METADATA)).unwrap().replace("version=8", "version=12");
        std::fs::write(db.join(METADATA), text).unwrap();
        let mut dir = DiskDir::new(&db, &tmp.path().join("copy"));
        let e = copy_database(&mut dir, "/node/chains/dev/paritydb/full").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "unsupported: /node/chains/dev/paritydb/full: metadata: ParityDB format version 12 is newer"
            ),
            "{e}"
        );
        assert!(dir.stored.is_empty());
        let check = check_dir(&mut dir).unwrap();
        assert_eq!(check.problems.len(), 1);
        assert_eq!(check.problems[0].file, "metadata");
    }

    #[test]
    fn files_that_do_not_fit_the_metadata_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("full");
        write_db(&db, 20);
        // A column the metadata does not declare; an index for the btree
        // column; a hash column's tables without their index.
        std::fs::copy(db.join("table_00_ff"), db.join("table_07_ff")).unwrap();
        std::fs::copy(db.join("index_00_16"), db.join("index_03_16")).unwrap();
        std::fs::remove_file(db.join("index_02_16")).unwrap();
        let check = check_dir(&mut DiskDir::new(&db, &tmp.path().join("unused"))).unwrap();
        let p: Vec<String> = check.problems.iter().map(Problem::to_string).collect();
        assert_eq!(p.len(), 3, "{p:#?}");
        assert_eq!(p[0], "index_03_16: an index file for column 3, a btree column, which keeps no index");
        assert!(
            p[1].starts_with("table_02_")
                && p[1]
                    .ends_with("column 2 has value tables but no index file (index_02_NN): its values cannot be found"),
            "{}",
            p[1]
        );
        assert_eq!(p[2], "table_07_ff: belongs to column 7, but the metadata declares 4 columns (0 to 3)");
    }

    #[test]
    fn a_live_database_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("full");
        let db = Db::open_or_create(&options(&path)).unwrap();
        db.commit_changes(changes(0..5)).unwrap();
        let mut dir = DiskDir::new(&path, &tmp.path().join("copy"));
        let e = copy_database(&mut dir, "full").unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e}");
        assert!(
            e.to_string().contains(
                "full: the ParityDB database is open (another process holds its `lock` file): ParityDB rewrites"
            ),
            "{e}"
        );
        assert!(dir.stored.is_empty());
        drop(db);
        // Closed: the lock file stays, unlocked.
        assert!(path.join(LOCK).exists());
        copy_database(&mut dir, "full").unwrap();
    }

    #[test]
    fn a_database_opened_or_changed_during_the_copy_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("full");
        write_db(&path, 20);
        let mut dir = DiskDir::new(&path, &tmp.path().join("copy"));
        let p = path.clone();
        dir.on_add_files = Some(Box::new(move |_| {
            let db = Db::open(&options(&p)).unwrap();
            std::mem::forget(db);
        }));
        let e = copy_database(&mut dir, "full").unwrap_err();
        assert!(e.to_string().contains("the ParityDB database was opened while it was copied"), "{e}");

        let path = tmp.path().join("other");
        write_db(&path, 20);
        let mut dir = DiskDir::new(&path, &tmp.path().join("copy2"));
        dir.on_add_files = Some(Box::new(|d| {
            let f = std::fs::OpenOptions::new().append(true).open(d.join("table_00_ff")).unwrap();
            f.set_len(2 * 1024 * 1024).unwrap();
        }));
        let e = copy_database(&mut dir, "other").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unavailable: other/table_00_ff changed while the database was copied, so the copy is not consistent: a \
             process writes to it; stop the node and run the backup again"
        );
    }

    #[test]
    fn unchanged_files_are_kept_from_the_parent_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("full");
        write_db(&path, 20);
        let first = listing(&path);
        // More writes to column 0 only, after a pause so that mtimes move.
        // Every open sets each index file's length, which moves its mtime:
        // the index files are copied again, unchanged value tables not.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let db = Db::open(&options(&path)).unwrap();
        db.commit_changes((20..30).map(|i| (0u8, Operation::Set(key(0, i), value(0, i))))).unwrap();
        drop(db);
        let mut dir = DiskDir::new(&path, &tmp.path().join("copy"));
        dir.parent = first.iter().map(|f| (f.name.clone(), (f.size, f.mtime))).collect();
        let r = copy_database(&mut dir, "full").unwrap();
        let copied: Vec<&str> = dir.stored.iter().filter(|n| !n.ends_with("(parent)")).map(String::as_str).collect();
        assert!(r.reused > 0 && copied.len() > 1, "{:?}", dir.stored);
        assert!(
            copied.iter().all(|n| n.starts_with("index_") || n.starts_with("table_00") || *n == METADATA),
            "{copied:?}"
        );
        let db = Db::open_read_only(&options(&tmp.path().join("copy"))).unwrap();
        assert_eq!(db.get(0, &key(0, 25)).unwrap(), Some(value(0, 25)));
        assert_eq!(db.get(2, &key(2, 5)).unwrap(), Some(value(2, 5)));
    }

    #[test]
    fn a_database_left_open_by_a_killed_node_is_copied_with_its_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("full");
        write_db(&path, 20);
        // More commits written to the logs only, no background threads:
        // then the files as a killed node leaves them (the lock released).
        let mut o = options(&path);
        o.with_background_thread = false;
        let db = Db::open(&o).unwrap();
        for i in 20..26 {
            db.commit_changes(changes(i..i + 1)).unwrap();
            db.process_commits().unwrap();
            db.flush_logs().unwrap();
        }
        let killed = tmp.path().join("killed");
        std::fs::create_dir(&killed).unwrap();
        for f in listing(&path) {
            if f.name != LOCK {
                std::fs::copy(path.join(&f.name), killed.join(&f.name)).unwrap();
            }
        }
        drop(db);
        let set = file_set(&listing(&killed));
        assert!(!set.logs.is_empty(), "{set:?}");
        let check = check_dir(&mut DiskDir::new(&killed, &tmp.path().join("unused"))).unwrap();
        assert_eq!(check.problems, []);
        let out = tmp.path().join("copy");
        let r = copy_database(&mut DiskDir::new(&killed, &out), "killed").unwrap();
        assert_eq!(r.logs, set.logs.len());
        // The next open replays them.
        assert_values(&out, 26);

        // A log that does not start with a record.
        let log = killed.join(&set.logs[0]);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[0] = 9;
        std::fs::write(&log, bytes).unwrap();
        let check = check_dir(&mut DiskDir::new(&killed, &tmp.path().join("unused"))).unwrap();
        assert_eq!(check.problems.len(), 1);
        assert!(
            check.problems[0]
                .to_string()
                .starts_with(&format!("{}: does not start with a log record (its first byte is 9", set.logs[0])),
            "{:?}",
            check.problems
        );
    }
}
