//! RocksDB directories (the chain databases of Substrate and Polkadot-SDK
//! nodes, `chains/<chain>/db/full`): which files make up the database,
//! read from `CURRENT` and its manifest ([`RocksDb`] is the flavor
//! [`crate::copy`] copies).
//!
//! What a RocksDB directory holds (RocksDB's `file/filename.cc`,
//! `db/version_edit.h`, `db/version_set.cc`, `db/db_impl/db_impl_open.cc`):
//! - `CURRENT`: the name of the live manifest, `MANIFEST-NNNNNN\n`.
//! - `MANIFEST-NNNNNN`: a log-format file of version edits; replayed in
//!   order they give the column families, each one's live tables (and blob
//!   files) and log number, and the sequence.
//! - `NNNNNN.sst` (`.ldb` when RocksDB opened a LevelDB database): sorted
//!   tables, immutable once written; `NNNNNN.blob`: blob files (values kept
//!   out of the tables), immutable once listed in the manifest.
//! - `NNNNNN.log`: the write-ahead logs, shared by all column families;
//!   recovery replays those numbered at least the smallest log number of
//!   the column families (and at least the minimum log number to keep).
//! - `IDENTITY` (the database's id) and `OPTIONS-NNNNNN` (the options it
//!   was last opened with; the newest one counts).
//! - Not part of the database state: `LOCK`, the info logs `LOG` and
//!   `LOG.old.<time>`, `NNNNNN.dbtmp` and `OPTIONS-NNNNNN.dbtmp` being
//!   written, older manifests and `OPTIONS` files, and tables, blob files
//!   and logs made obsolete but still on disk.

use std::collections::{BTreeMap, BTreeSet};

use crate::copy::{Flavor, LeftOut, LiveSet, LiveTable, TableMeta};
use crate::log::{LogFormat, read_log_as};
use crate::{LsmError, length_prefixed, parse_current, varint};

/// RocksDB, as a flavor of [`crate::copy`].
#[derive(Debug, Clone, Copy)]
pub struct RocksDb;

impl Flavor for RocksDb {
    type Manifest = RocksDbManifest;
    const NAME: &'static str = "RocksDB";
    const LOG_FORMAT: LogFormat = LogFormat::RocksDb;
    const LOG_NUMBER_NAMES_A_LOG: bool = false;

    fn live_set(current: &[u8], manifest: &[u8], names: &[&str]) -> Result<LiveSet<RocksDbManifest>, LsmError> {
        live_set(current, manifest, names.iter().copied())
    }
}

// ---------------------------------------------------------------------------
// Version edits (RocksDB's db/version_edit.h and version_edit.cc)

/// Field tags of a version edit; each is a varint, followed by its value.
pub mod tag {
    /// Length-prefixed name of the key comparator.
    pub const COMPARATOR: u64 = 1;
    /// Varint: the column family's oldest log still needed.
    pub const LOG_NUMBER: u64 = 2;
    /// Varint: the next file number to hand out.
    pub const NEXT_FILE_NUMBER: u64 = 3;
    /// Varint: the last sequence number written.
    pub const LAST_SEQUENCE: u64 = 4;
    /// Varint level, length-prefixed internal key (LevelDB's compaction
    /// pointer; RocksDB's `kCompactCursor`).
    pub const COMPACT_CURSOR: u64 = 5;
    /// Varint level, varint file number: a table leaves the version.
    pub const DELETED_FILE: u64 = 6;
    /// Varint level, number and size; length-prefixed smallest and
    /// largest internal keys: a table joins the version.
    pub const NEW_FILE: u64 = 7;
    // 8 was used for large value references, long gone.
    /// Varint: the log before `LOG_NUMBER`, still needed (old versions).
    pub const PREV_LOG_NUMBER: u64 = 9;
    /// Varint: logs older than this may be deleted (`kMinLogNumberToKeep`).
    pub const MIN_LOG_NUMBER_TO_KEEP: u64 = 10;
    /// `NEW_FILE`, then the smallest and largest sequence numbers
    /// (varints).
    pub const NEW_FILE2: u64 = 100;
    /// Level, number, varint path id, size, keys, sequence numbers.
    pub const NEW_FILE3: u64 = 102;
    /// `NEW_FILE2`, then custom fields (see [`custom`]) ending with tag 1.
    pub const NEW_FILE4: u64 = 103;
    /// Varint: the column family the edit applies to (0, the default one,
    /// when absent).
    pub const COLUMN_FAMILY: u64 = 200;
    /// Length-prefixed name: the edit creates the column family.
    pub const COLUMN_FAMILY_ADD: u64 = 201;
    /// No value: the edit drops the column family.
    pub const COLUMN_FAMILY_DROP: u64 = 202;
    /// Varint: the largest column family id handed out.
    pub const MAX_COLUMN_FAMILY: u64 = 203;
    /// Varint: the edit belongs to an atomic group; this many edits of it
    /// follow.
    pub const IN_ATOMIC_GROUP: u64 = 300;
    /// Inline (not length-prefixed): varint blob file number, blob count
    /// and bytes, length-prefixed checksum method and value, custom
    /// fields ending with tag 0.
    pub const BLOB_FILE_ADDITION: u64 = 400;
    /// Inline: varint blob file number, garbage blob count and bytes,
    /// custom fields ending with tag 0.
    pub const BLOB_FILE_GARBAGE: u64 = 401;
    /// Tags with this bit are forward compatible: unless known, their value
    /// is length-prefixed and skipped (`kTagSafeIgnoreMask`).
    pub const SAFE_IGNORE_MASK: u64 = 1 << 13;
    /// Length-prefixed: the database id (also in `IDENTITY`).
    pub const DB_ID: u64 = SAFE_IGNORE_MASK + 1;
    /// The first encoding of `BLOB_FILE_ADDITION` (inline).
    pub const BLOB_FILE_ADDITION_DEPRECATED: u64 = SAFE_IGNORE_MASK + 2;
    /// The first encoding of `BLOB_FILE_GARBAGE` (inline).
    pub const BLOB_FILE_GARBAGE_DEPRECATED: u64 = SAFE_IGNORE_MASK + 3;
    /// Inline: varint WAL number, then tags ending with 1 (tag 2: varint
    /// synced size). Tracked WALs (`track_and_verify_wals_in_manifest`).
    pub const WAL_ADDITION: u64 = SAFE_IGNORE_MASK + 4;
    /// Inline: varint WAL number; WALs before it are no longer tracked.
    pub const WAL_DELETION: u64 = SAFE_IGNORE_MASK + 5;
    // The later ones (kFullHistoryTsLow, kWalAddition2, kWalDeletion2,
    // kPersistUserDefinedTimestamps, ...) are length-prefixed and skipped.
}

/// Custom field tags of `NEW_FILE4`; each is a varint, followed by a
/// length-prefixed value.
pub mod custom {
    /// Ends the custom fields (no value follows).
    pub const TERMINATE: u64 = 1;
    /// Fixed64 inside the value: the minimum log number to keep (written
    /// here by versions that had no `MIN_LOG_NUMBER_TO_KEEP` tag).
    pub const MIN_LOG_NUMBER_TO_KEEP_HACK: u64 = 3;
    /// Varint inside the value: the oldest blob file the table refers to.
    pub const OLDEST_BLOB_FILE_NUMBER: u64 = 4;
    /// A field with this bit that a reader does not know makes the
    /// manifest unreadable (`kCustomTagNonSafeIgnoreMask`); others are
    /// skipped.
    pub const NON_SAFE_IGNORE_MASK: u64 = 1 << 6;
    /// One byte: the `db_paths` entry holding the table (0: the database
    /// directory).
    pub const PATH_ID: u64 = NON_SAFE_IGNORE_MASK + 1;
}

/// Blob files' custom fields with this bit cannot be ignored
/// (`BlobFileAddition::kForwardIncompatibleMask`).
const BLOB_FORWARD_INCOMPATIBLE_MASK: u64 = 1 << 6;

/// A blob file's header and footer (`BlobLogHeader::kSize`,
/// `BlobLogFooter::kSize`): its size is these and its blob bytes
/// (`SharedBlobFileMetaData::GetBlobFileSize`).
const BLOB_HEADER_SIZE: u64 = 30;
const BLOB_FOOTER_SIZE: u64 = 32;

/// The level given to blob files in [`LiveSet::tables`]: they have none.
pub const BLOB_FILE_LEVEL: u32 = u32::MAX;

/// A live table as the manifest describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SstMeta {
    /// Number, level, size and column family.
    pub meta: TableMeta,
    /// The `db_paths` entry holding it (0: the database directory).
    pub path_id: u32,
    /// The oldest blob file it refers to (0: none).
    pub oldest_blob_file: u64,
}

/// A blob file as the manifest describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobFileMeta {
    /// File number (`NNNNNN.blob`).
    pub number: u64,
    /// Blobs written to it.
    pub total_blob_count: u64,
    /// Bytes of its blob records.
    pub total_blob_bytes: u64,
    /// Blobs no longer referred to.
    pub garbage_blob_count: u64,
    /// Their bytes.
    pub garbage_blob_bytes: u64,
}

impl BlobFileMeta {
    /// The file's size: header, blob records, footer.
    pub fn file_size(&self) -> u64 {
        BLOB_HEADER_SIZE + self.total_blob_bytes + BLOB_FOOTER_SIZE
    }
}

/// A column family as the manifest leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFamily {
    /// Its name (`default` for id 0).
    pub name: String,
    /// Its comparator's name, when an edit sets it.
    pub comparator: Option<String>,
    /// Logs numbered at least this hold writes not yet in its tables (0:
    /// no edit set it).
    pub log_number: u64,
    /// Its live tables, by file number.
    pub tables: BTreeMap<u64, SstMeta>,
    /// The blob files listed for it, by number, before obsolete ones are
    /// dropped (see [`RocksDbManifest::live_blob_files`]).
    pub blob_files: BTreeMap<u64, BlobFileMeta>,
}

impl ColumnFamily {
    fn new(name: &str) -> Self {
        ColumnFamily {
            name: name.to_string(),
            comparator: None,
            log_number: 0,
            tables: BTreeMap::new(),
            blob_files: BTreeMap::new(),
        }
    }
}

/// The database state a RocksDB manifest describes: its version edits
/// replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksDbManifest {
    /// The live column families by id; dropped ones are gone.
    pub column_families: BTreeMap<u32, ColumnFamily>,
    /// The next file number RocksDB will hand out.
    pub next_file_number: u64,
    /// The last sequence number written.
    pub last_sequence: u64,
    /// The previous log number (0 in current versions).
    pub prev_log_number: u64,
    /// Logs older than this may be deleted, when an edit says so.
    pub min_log_number_to_keep: Option<u64>,
    /// The largest column family id handed out.
    pub max_column_family: u32,
    /// The database id, when the manifest holds it (`write_dbid_to_manifest`).
    pub db_id: Option<String>,
    /// How many version edits the manifest holds (an atomic group cut
    /// short at the end not counted).
    pub edits: usize,
    /// Bytes up to the end of the last complete edit (or atomic group).
    pub complete_len: usize,
    /// Bytes after it: an edit, or edits of an atomic group, being appended
    /// when the manifest was read.
    pub partial_tail: usize,
}

impl RocksDbManifest {
    /// The first log recovery replays: the smallest log number of the
    /// live column families, or the minimum log number to keep when it is
    /// larger (`DBImpl::RecoverLogFiles` without two-phase commit; with
    /// `allow_2pc`, RocksDB would also keep older logs back to the minimum
    /// log number to keep, which this does not follow).
    pub fn log_number(&self) -> u64 {
        let cf_min = self.column_families.values().map(|cf| cf.log_number).min().unwrap_or(0);
        cf_min.max(self.min_log_number_to_keep.unwrap_or(0))
    }

    /// Every live table of every column family, by file number.
    pub fn tables(&self) -> BTreeMap<u64, SstMeta> {
        self.column_families.values().flat_map(|cf| cf.tables.iter().map(|(n, t)| (*n, *t))).collect()
    }

    /// The live blob files of every column family, with the column family
    /// id. RocksDB's `VersionBuilder::SaveBlobFilesTo` drops, per column
    /// family, the blob files older than the oldest one a live table refers
    /// to (all of them when no table refers to any), and those no table
    /// refers to whose blobs are all garbage.
    pub fn live_blob_files(&self) -> Vec<(u32, BlobFileMeta)> {
        let mut out = Vec::new();
        for (id, cf) in &self.column_families {
            let refs: Vec<u64> =
                cf.tables.values().map(|t| t.oldest_blob_file).filter(|&n| n != 0).collect::<Vec<_>>();
            let Some(&oldest) = refs.iter().min() else { continue };
            let linked: BTreeSet<u64> = refs.iter().copied().collect();
            for b in cf.blob_files.values() {
                if b.number < oldest {
                    continue;
                }
                if !linked.contains(&b.number) && b.garbage_blob_count >= b.total_blob_count {
                    continue;
                }
                out.push((*id, *b));
            }
        }
        out
    }
}

/// A new table in an edit.
#[derive(Debug, Clone, Copy)]
struct NewTable {
    level: u64,
    number: u64,
    size: u64,
    path_id: u32,
    oldest_blob_file: u64,
}

/// One version edit, decoded.
#[derive(Debug, Clone, Default)]
struct Edit {
    column_family: u32,
    add: Option<String>,
    drop: bool,
    comparator: Option<String>,
    log_number: Option<u64>,
    prev_log_number: Option<u64>,
    next_file_number: Option<u64>,
    last_sequence: Option<u64>,
    max_column_family: Option<u32>,
    min_log_number_to_keep: Option<u64>,
    db_id: Option<String>,
    deleted: Vec<(u64, u64)>,
    added: Vec<NewTable>,
    blob_added: Vec<BlobFileMeta>,
    blob_garbage: Vec<(u64, u64, u64)>,
    atomic_group: Option<u64>,
}

/// Decodes one version edit; `Err` is the reason, without the place.
fn decode_edit(rec: &[u8]) -> Result<Edit, String> {
    let mut e = Edit::default();
    let mut pos = 0;
    let cut = |what: &str| format!("bad {what} (cut short)");
    while pos < rec.len() {
        let t = varint(rec, &mut pos).ok_or_else(|| "a field tag is cut short".to_string())?;
        let mut num = |what: &str| varint(rec, &mut pos).ok_or_else(|| cut(what));
        match t {
            tag::COMPARATOR => {
                let name = length_prefixed(rec, &mut pos).ok_or_else(|| cut("comparator name"))?;
                e.comparator = Some(String::from_utf8_lossy(name).into_owned());
            }
            tag::LOG_NUMBER => e.log_number = Some(num("log number")?),
            tag::PREV_LOG_NUMBER => e.prev_log_number = Some(num("previous log number")?),
            tag::NEXT_FILE_NUMBER => e.next_file_number = Some(num("next file number")?),
            tag::LAST_SEQUENCE => e.last_sequence = Some(num("last sequence number")?),
            tag::MIN_LOG_NUMBER_TO_KEEP => e.min_log_number_to_keep = Some(num("minimum log number to keep")?),
            tag::MAX_COLUMN_FAMILY => e.max_column_family = Some(u32_of(num("max column family")?, "max column family")?),
            tag::COMPACT_CURSOR => {
                num("compaction cursor level")?;
                length_prefixed(rec, &mut pos).ok_or_else(|| cut("compaction cursor key"))?;
            }
            tag::DELETED_FILE => {
                let level = num("deleted file's level")?;
                let number = num("deleted file's number")?;
                e.deleted.push((level, number));
            }
            tag::NEW_FILE | tag::NEW_FILE2 | tag::NEW_FILE3 | tag::NEW_FILE4 => {
                let level = varint(rec, &mut pos).ok_or_else(|| cut("new file's level"))?;
                let number = varint(rec, &mut pos).ok_or_else(|| cut("new file's number"))?;
                let mut path_id = 0;
                if t == tag::NEW_FILE3 {
                    path_id = u32_of(varint(rec, &mut pos).ok_or_else(|| cut("new file's path id"))?, "path id")?;
                }
                let size = varint(rec, &mut pos).ok_or_else(|| cut("new file's size"))?;
                length_prefixed(rec, &mut pos).ok_or_else(|| cut("new file's smallest key"))?;
                length_prefixed(rec, &mut pos).ok_or_else(|| cut("new file's largest key"))?;
                if t != tag::NEW_FILE {
                    varint(rec, &mut pos).ok_or_else(|| cut("new file's smallest sequence number"))?;
                    varint(rec, &mut pos).ok_or_else(|| cut("new file's largest sequence number"))?;
                }
                let mut oldest_blob_file = 0;
                if t == tag::NEW_FILE4 {
                    loop {
                        let field = varint(rec, &mut pos).ok_or_else(|| cut("new file's custom field tag"))?;
                        if field == custom::TERMINATE {
                            break;
                        }
                        let value = length_prefixed(rec, &mut pos).ok_or_else(|| cut("new file's custom field"))?;
                        match field {
                            custom::PATH_ID => {
                                let [p] = value else {
                                    return Err(format!("table {number:06}'s path id is {} bytes, not 1", value.len()));
                                };
                                path_id = u32::from(*p);
                            }
                            custom::MIN_LOG_NUMBER_TO_KEEP_HACK => {
                                let b: [u8; 8] = value
                                    .try_into()
                                    .map_err(|_| "bad minimum log number to keep in a new file's field".to_string())?;
                                e.min_log_number_to_keep = Some(u64::from_le_bytes(b));
                            }
                            custom::OLDEST_BLOB_FILE_NUMBER => {
                                let mut p = 0;
                                oldest_blob_file = varint(value, &mut p)
                                    .ok_or_else(|| "bad oldest blob file number in a new file's field".to_string())?;
                            }
                            f if f & custom::NON_SAFE_IGNORE_MASK != 0 => {
                                return Err(format!(
                                    "table {number:06} has custom field {f}, which a reader must understand and this \
                                     one does not (a newer RocksDB wrote it)"
                                ));
                            }
                            _ => {}
                        }
                    }
                }
                e.added.push(NewTable { level, number, size, path_id, oldest_blob_file });
            }
            tag::COLUMN_FAMILY => e.column_family = u32_of(num("column family id")?, "column family id")?,
            tag::COLUMN_FAMILY_ADD => {
                let name = length_prefixed(rec, &mut pos).ok_or_else(|| cut("new column family's name"))?;
                e.add = Some(String::from_utf8_lossy(name).into_owned());
            }
            tag::COLUMN_FAMILY_DROP => e.drop = true,
            tag::IN_ATOMIC_GROUP => e.atomic_group = Some(num("atomic group's remaining edits")?),
            tag::BLOB_FILE_ADDITION | tag::BLOB_FILE_ADDITION_DEPRECATED => {
                let number = num("blob file number")?;
                let total_blob_count = num("blob count")?;
                let total_blob_bytes = num("blob bytes")?;
                length_prefixed(rec, &mut pos).ok_or_else(|| cut("blob file checksum method"))?;
                length_prefixed(rec, &mut pos).ok_or_else(|| cut("blob file checksum"))?;
                blob_custom_fields(rec, &mut pos, number)?;
                e.blob_added.push(BlobFileMeta {
                    number,
                    total_blob_count,
                    total_blob_bytes,
                    garbage_blob_count: 0,
                    garbage_blob_bytes: 0,
                });
            }
            tag::BLOB_FILE_GARBAGE | tag::BLOB_FILE_GARBAGE_DEPRECATED => {
                let number = num("blob file number")?;
                let count = num("garbage blob count")?;
                let bytes = num("garbage blob bytes")?;
                blob_custom_fields(rec, &mut pos, number)?;
                e.blob_garbage.push((number, count, bytes));
            }
            tag::WAL_ADDITION => {
                num("tracked WAL's number")?;
                loop {
                    match num("tracked WAL's field tag")? {
                        1 => break,
                        2 => {
                            num("tracked WAL's synced size")?;
                        }
                        other => return Err(format!("unknown field {other} of a tracked WAL")),
                    }
                }
            }
            tag::WAL_DELETION => {
                num("tracked WAL deletion's number")?;
            }
            tag::DB_ID => {
                let id = length_prefixed(rec, &mut pos).ok_or_else(|| cut("database id"))?;
                e.db_id = Some(String::from_utf8_lossy(id).into_owned());
            }
            t if t & tag::SAFE_IGNORE_MASK != 0 => {
                length_prefixed(rec, &mut pos).ok_or_else(|| cut(&format!("value of the ignorable field {t}")))?;
            }
            other => {
                return Err(format!(
                    "unknown field tag {other}, which RocksDB cannot ignore (a newer or damaged manifest)"
                ));
            }
        }
    }
    Ok(e)
}

/// Skips a blob file record's custom fields (ended by tag 0).
fn blob_custom_fields(rec: &[u8], pos: &mut usize, number: u64) -> Result<(), String> {
    loop {
        let field = varint(rec, pos).ok_or_else(|| "bad blob file custom field (cut short)".to_string())?;
        if field == 0 {
            return Ok(());
        }
        if field & BLOB_FORWARD_INCOMPATIBLE_MASK != 0 {
            return Err(format!(
                "blob file {number:06} has custom field {field}, which a reader must understand and this one does not"
            ));
        }
        length_prefixed(rec, pos).ok_or_else(|| "bad blob file custom field (cut short)".to_string())?;
    }
}

fn u32_of(v: u64, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

/// What replaying the edits accumulates beyond the column families.
#[derive(Default)]
struct Globals {
    next_file_number: Option<u64>,
    last_sequence: Option<u64>,
    prev_log_number: u64,
    min_log_number_to_keep: Option<u64>,
    max_column_family: u32,
    db_id: Option<String>,
    any_log_number: bool,
}

/// Applies one edit as `VersionEditHandler` does: a column family added or
/// dropped, or its tables and blob files changed (deletions before
/// additions), then the edit's numbers.
fn apply(cfs: &mut BTreeMap<u32, ColumnFamily>, g: &mut Globals, e: &Edit) -> Result<(), String> {
    let id = e.column_family;
    if let Some(name) = &e.add {
        if cfs.contains_key(&id) {
            return Err(format!("adds column family {id} ({name:?}), which exists already"));
        }
        cfs.insert(id, ColumnFamily::new(name));
    } else if e.drop {
        if id == 0 {
            return Err("drops the default column family".into());
        }
        if cfs.remove(&id).is_none() {
            return Err(format!("drops column family {id}, which does not exist"));
        }
    } else {
        let Some(cf) = cfs.get_mut(&id) else {
            return Err(format!("changes column family {id}, which was never added or was dropped"));
        };
        for &(level, number) in &e.deleted {
            match cf.tables.get(&number) {
                Some(t) if u64::from(t.meta.level) == level => {
                    cf.tables.remove(&number);
                }
                Some(t) => {
                    return Err(format!(
                        "deletes table {number:06} from level {level}, but it is on level {}",
                        t.meta.level
                    ));
                }
                None => return Err(format!("deletes table {number:06} from level {level}, but it is not live")),
            }
        }
        for t in &e.added {
            if let Some(prev) = cf.tables.get(&t.number) {
                return Err(format!("adds table {:06}, which is live already on level {}", t.number, prev.meta.level));
            }
            let level = u32::try_from(t.level).map_err(|_| format!("table {:06}'s level {}", t.number, t.level))?;
            let meta = TableMeta { number: t.number, level, size: t.size, column_family: id };
            cf.tables.insert(t.number, SstMeta { meta, path_id: t.path_id, oldest_blob_file: t.oldest_blob_file });
        }
        for b in &e.blob_added {
            if cf.blob_files.contains_key(&b.number) {
                return Err(format!("adds blob file {:06} twice", b.number));
            }
            cf.blob_files.insert(b.number, *b);
        }
        for &(number, count, bytes) in &e.blob_garbage {
            let Some(b) = cf.blob_files.get_mut(&number) else {
                return Err(format!("adds garbage to blob file {number:06}, which is not listed"));
            };
            b.garbage_blob_count = b.garbage_blob_count.saturating_add(count);
            b.garbage_blob_bytes = b.garbage_blob_bytes.saturating_add(bytes);
        }
    }
    if let Some(cf) = cfs.get_mut(&id) {
        if let Some(c) = &e.comparator {
            cf.comparator = Some(c.clone());
        }
        // RocksDB keeps a column family's log number from decreasing.
        if let Some(n) = e.log_number {
            cf.log_number = cf.log_number.max(n);
        }
    }
    g.any_log_number |= e.log_number.is_some();
    if let Some(n) = e.next_file_number {
        g.next_file_number = Some(n);
    }
    if let Some(n) = e.last_sequence {
        g.last_sequence = Some(n);
    }
    if let Some(n) = e.prev_log_number {
        g.prev_log_number = n;
    }
    if let Some(n) = e.min_log_number_to_keep {
        g.min_log_number_to_keep = Some(g.min_log_number_to_keep.unwrap_or(0).max(n));
    }
    if let Some(n) = e.max_column_family {
        g.max_column_family = n;
    }
    if let Some(id) = &e.db_id {
        g.db_id = Some(id.clone());
    }
    Ok(())
}

/// Parses a RocksDB manifest's bytes (`file` names it in errors): checks
/// every record's CRC, decodes every version edit and replays them. An
/// edit cut short at the end, or an atomic group whose last edits are not
/// written yet, is left out and counted in `partial_tail`: RocksDB applies
/// an atomic group only whole.
pub fn parse_manifest(file: &str, bytes: &[u8]) -> Result<RocksDbManifest, LsmError> {
    let err = |offset: usize, reason: String| LsmError { file: file.to_string(), offset: Some(offset as u64), reason };
    let scan = read_log_as(bytes, true, LogFormat::RocksDb).map_err(|e| err(e.offset, e.reason))?;
    let total = scan.records.len();
    let mut cfs: BTreeMap<u32, ColumnFamily> = BTreeMap::new();
    cfs.insert(0, ColumnFamily::new("default"));
    let mut g = Globals::default();
    // The edits of an atomic group read so far, with the number each one
    // says is left after it.
    let mut group: Vec<(usize, Edit)> = Vec::new();
    let mut group_size = 0usize;
    let mut applied_edits = 0usize;
    let mut complete_len = 0usize;
    for (i, (offset, rec)) in scan.records.iter().enumerate() {
        let at = |reason: String| err(*offset, format!("version edit {} (of {total}): {reason}", i + 1));
        let e = decode_edit(rec).map_err(at)?;
        let end = scan.record_ends[i];
        match e.atomic_group {
            Some(remaining) => {
                let remaining = usize::try_from(remaining).unwrap_or(usize::MAX);
                if group.is_empty() {
                    group_size = remaining.saturating_add(1);
                }
                if group.len() + 1 + remaining != group_size {
                    return Err(at(format!(
                        "an atomic group of {group_size} edits says {remaining} follow after its edit {}",
                        group.len() + 1
                    )));
                }
                group.push((i, e));
                if group.len() == group_size {
                    for (j, e) in group.drain(..) {
                        apply(&mut cfs, &mut g, &e).map_err(|r| {
                            err(scan.records[j].0, format!("version edit {} (of {total}): {r}", j + 1))
                        })?;
                        applied_edits += 1;
                    }
                    complete_len = end;
                }
            }
            None => {
                if !group.is_empty() {
                    return Err(at(format!(
                        "an edit outside the atomic group of {group_size} edits, {} of which were read",
                        group.len()
                    )));
                }
                apply(&mut cfs, &mut g, &e).map_err(at)?;
                applied_edits += 1;
                complete_len = end;
            }
        }
    }
    if group.is_empty() {
        complete_len = scan.complete_len;
    }
    let missing = |what: &str| LsmError {
        file: file.to_string(),
        offset: None,
        reason: format!("no version edit sets the {what}; RocksDB refuses to open such a manifest"),
    };
    if !g.any_log_number {
        return Err(missing("log number"));
    }
    Ok(RocksDbManifest {
        column_families: cfs,
        next_file_number: g.next_file_number.ok_or_else(|| missing("next file number"))?,
        last_sequence: g.last_sequence.ok_or_else(|| missing("last sequence number"))?,
        prev_log_number: g.prev_log_number,
        min_log_number_to_keep: g.min_log_number_to_keep,
        max_column_family: g.max_column_family,
        db_id: g.db_id,
        edits: applied_edits,
        complete_len,
        partial_tail: bytes.len() - complete_len,
    })
}

/// True when the manifest's edits use a field only RocksDB writes (column
/// families, the newer new-file encodings, the minimum log number to keep,
/// ignorable fields, ...): what tells a RocksDB manifest from a LevelDB
/// one. A manifest that does not read is not RocksDB's.
pub fn has_rocksdb_fields(manifest: &[u8]) -> bool {
    read_log_as(manifest, false, LogFormat::RocksDb)
        .is_ok_and(|scan| scan.records.iter().any(|(_, rec)| rec_has_rocksdb_tag(rec)))
}

/// Whether an edit has a tag LevelDB does not write, walking its fields.
fn rec_has_rocksdb_tag(rec: &[u8]) -> bool {
    let mut pos = 0;
    while pos < rec.len() {
        let Some(t) = varint(rec, &mut pos) else { return false };
        if t > tag::PREV_LOG_NUMBER {
            return true;
        }
        let ok = match t {
            tag::COMPARATOR => length_prefixed(rec, &mut pos).is_some(),
            tag::LOG_NUMBER | tag::NEXT_FILE_NUMBER | tag::LAST_SEQUENCE | tag::PREV_LOG_NUMBER => {
                varint(rec, &mut pos).is_some()
            }
            tag::COMPACT_CURSOR => varint(rec, &mut pos).is_some() && length_prefixed(rec, &mut pos).is_some(),
            tag::DELETED_FILE => varint(rec, &mut pos).is_some() && varint(rec, &mut pos).is_some(),
            tag::NEW_FILE => {
                varint(rec, &mut pos).is_some()
                    && varint(rec, &mut pos).is_some()
                    && varint(rec, &mut pos).is_some()
                    && length_prefixed(rec, &mut pos).is_some()
                    && length_prefixed(rec, &mut pos).is_some()
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    false
}

// ---------------------------------------------------------------------------
// File names (RocksDB's file/filename.cc, ParseFileName)

/// What a file in a RocksDB directory is, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `NNNNNN.sst` (or `NNNNNN.ldb`): a table.
    Table(u64),
    /// `NNNNNN.blob`: a blob file.
    Blob(u64),
    /// `NNNNNN.log`: a write-ahead log.
    Log(u64),
    /// `MANIFEST-NNNNNN`.
    Manifest(u64),
    /// `CURRENT`.
    Current,
    /// `IDENTITY`: the database id.
    Identity,
    /// `OPTIONS-NNNNNN`: the options of an opening.
    Options(u64),
    /// `NNNNNN.dbtmp` or `OPTIONS-NNNNNN.dbtmp`: a file being written.
    Temp,
    /// `LOCK`.
    Lock,
    /// `LOG` or `LOG.old.<time>`: the human-readable info log.
    InfoLog,
    /// Anything else.
    Other,
}

/// Classifies a file of a RocksDB directory by its name.
pub fn file_kind(name: &str) -> FileKind {
    match name {
        "CURRENT" => return FileKind::Current,
        "LOCK" => return FileKind::Lock,
        "IDENTITY" => return FileKind::Identity,
        "LOG" => return FileKind::InfoLog,
        _ => {}
    }
    if name.strip_prefix("LOG.old.").and_then(crate::number).is_some() {
        return FileKind::InfoLog;
    }
    if let Some(n) = name.strip_prefix("MANIFEST-").and_then(crate::number) {
        return FileKind::Manifest(n);
    }
    if let Some(rest) = name.strip_prefix("OPTIONS-") {
        if let Some(n) = crate::number(rest) {
            return FileKind::Options(n);
        }
        if rest.strip_suffix(".dbtmp").and_then(crate::number).is_some() {
            return FileKind::Temp;
        }
        return FileKind::Other;
    }
    if let Some((stem, ext)) = name.split_once('.')
        && let Some(n) = crate::number(stem)
    {
        return match ext {
            "sst" | "ldb" => FileKind::Table(n),
            "blob" => FileKind::Blob(n),
            "log" => FileKind::Log(n),
            "dbtmp" => FileKind::Temp,
            _ => FileKind::Other,
        };
    }
    FileKind::Other
}

/// True when a directory with these file names is a RocksDB database: it
/// has `CURRENT` and a manifest, and `IDENTITY` or an `OPTIONS-NNNNNN`
/// file, which RocksDB writes and LevelDB does not. (To tell the two
/// apart by the manifest itself, see [`has_rocksdb_fields`].)
pub fn looks_like_rocksdb<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut current, mut manifest, mut rocks) = (false, false, false);
    for n in names {
        match file_kind(n) {
            FileKind::Current => current = true,
            FileKind::Manifest(_) => manifest = true,
            FileKind::Identity | FileKind::Options(_) => rocks = true,
            _ => {}
        }
    }
    current && manifest && rocks
}

// ---------------------------------------------------------------------------
// The live set

/// Works out the live set: `current` is `CURRENT`'s bytes, `manifest` the
/// bytes of the manifest it names, `names` the directory's file names.
///
/// Tables are the live tables of every live column family, then the live
/// blob files (level [`BLOB_FILE_LEVEL`], their size from the manifest as
/// for tables). Logs are those numbered at least
/// [`RocksDbManifest::log_number`]. `extra` holds `IDENTITY` and the newest
/// `OPTIONS-NNNNNN` when present. A table kept in another `db_paths`
/// directory is refused: this copy would miss it.
pub fn live_set<'a>(
    current: &[u8],
    manifest: &[u8],
    names: impl IntoIterator<Item = &'a str>,
) -> Result<LiveSet<RocksDbManifest>, LsmError> {
    let (manifest_name, _) = parse_current(current)?;
    let m = parse_manifest(&manifest_name, manifest)?;
    let ssts = m.tables();
    if let Some(t) = ssts.values().find(|t| t.path_id != 0) {
        return Err(LsmError {
            file: manifest_name,
            offset: None,
            reason: format!(
                "table {:06} is kept in the database's extra path number {} (db_paths), outside this directory; \
                 such a database cannot be copied from its directory alone",
                t.meta.number, t.path_id
            ),
        });
    }
    // Every live file with its number: tables first, then blob files.
    let wanted: BTreeMap<u64, TableMeta> = ssts.iter().map(|(n, t)| (*n, t.meta)).collect();
    let mut blobs: BTreeMap<u64, TableMeta> = BTreeMap::new();
    for (cf, b) in m.live_blob_files() {
        blobs.insert(
            b.number,
            TableMeta { number: b.number, level: BLOB_FILE_LEVEL, size: b.file_size(), column_family: cf },
        );
    }
    let log_number = m.log_number();
    let mut left_out = LeftOut::default();
    let mut tables: BTreeMap<u64, String> = BTreeMap::new();
    let mut blob_names: BTreeMap<u64, String> = BTreeMap::new();
    let mut logs: BTreeMap<u64, String> = BTreeMap::new();
    let mut options: BTreeMap<u64, String> = BTreeMap::new();
    let mut identity = None;
    for name in names {
        match file_kind(name) {
            FileKind::Table(n) if wanted.contains_key(&n) => {
                // RocksDB opens `NNNNNN.sst`, and `NNNNNN.ldb` only when
                // there is no `.sst`.
                match tables.get(&n) {
                    Some(prev) if prev.ends_with(".sst") => left_out.other.push(name.to_string()),
                    Some(prev) => {
                        left_out.other.push(prev.clone());
                        tables.insert(n, name.to_string());
                    }
                    None => {
                        tables.insert(n, name.to_string());
                    }
                }
            }
            FileKind::Blob(n) if blobs.contains_key(&n) => {
                blob_names.insert(n, name.to_string());
            }
            FileKind::Table(_) | FileKind::Blob(_) => left_out.obsolete_tables.push(name.to_string()),
            FileKind::Log(n) if n >= log_number => {
                logs.insert(n, name.to_string());
            }
            FileKind::Log(_) => left_out.old_logs.push(name.to_string()),
            FileKind::Manifest(_) if name == manifest_name => {}
            FileKind::Manifest(_) => left_out.old_manifests.push(name.to_string()),
            FileKind::Current => {}
            FileKind::Identity => identity = Some(name.to_string()),
            FileKind::Options(n) => {
                options.insert(n, name.to_string());
            }
            _ => left_out.other.push(name.to_string()),
        }
    }
    let mut extra: Vec<String> = identity.into_iter().collect();
    if let Some((_, newest)) = options.pop_last() {
        extra.push(newest);
    }
    left_out.other.extend(options.into_values());
    let mut missing_tables: Vec<u64> = wanted.keys().filter(|n| !tables.contains_key(n)).copied().collect();
    missing_tables.extend(blobs.keys().filter(|n| !blob_names.contains_key(n)));
    let mut live_tables: Vec<LiveTable> = tables.into_iter().map(|(n, name)| LiveTable { name, meta: wanted[&n] }).collect();
    live_tables.extend(blob_names.into_iter().map(|(n, name)| LiveTable { name, meta: blobs[&n] }));
    Ok(LiveSet {
        manifest_name,
        log_number,
        manifest_complete_len: m.complete_len,
        manifest_partial_tail: m.partial_tail,
        manifest: m,
        tables: live_tables,
        missing_tables,
        logs: logs.into_values().collect(),
        extra,
        left_out,
    })
}
