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

    fn column_families(manifest: &RocksDbManifest) -> Vec<String> {
        manifest.column_families.values().map(|c| c.name.clone()).collect()
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
    /// The next file number, as the last edit setting it says (on opening,
    /// RocksDB gives this number to its new manifest).
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
            let refs: Vec<u64> = cf.tables.values().map(|t| t.oldest_blob_file).filter(|&n| n != 0).collect::<Vec<_>>();
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
            tag::MAX_COLUMN_FAMILY => {
                e.max_column_family = Some(u32_of(num("max column family")?, "max column family")?)
            }
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
                        apply(&mut cfs, &mut g, &e)
                            .map_err(|r| err(scan.records[j].0, format!("version edit {} (of {total}): {r}", j + 1)))?;
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
    let mut live_tables: Vec<LiveTable> =
        tables.into_iter().map(|(n, name)| LiveTable { name, meta: wanted[&n] }).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::testing::{DiskDir, names_of};
    use crate::copy::*;
    use crate::log::*;
    use crate::table::check_table;
    use coffer_sdk::Error;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    // -----------------------------------------------------------------
    // Manifests built by hand.

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// Writes logical records in the log format (legacy headers), or with
    /// recyclable headers naming `recycled` as the log number.
    fn write_log(records: &[Vec<u8>], recycled: Option<u32>) -> Vec<u8> {
        let header = if recycled.is_some() { RECYCLABLE_HEADER_SIZE } else { HEADER_SIZE };
        let mut out = Vec::new();
        for rec in records {
            let mut left = &rec[..];
            let mut first = true;
            loop {
                let block_left = BLOCK_SIZE - out.len() % BLOCK_SIZE;
                if block_left < header {
                    out.resize(out.len() + block_left, 0);
                    continue;
                }
                let n = left.len().min(block_left - header);
                let last = n == left.len();
                let mut kind = match (first, last) {
                    (true, true) => FULL_TYPE,
                    (true, false) => FIRST_TYPE,
                    (false, true) => LAST_TYPE,
                    (false, false) => MIDDLE_TYPE,
                };
                let crc = match recycled {
                    Some(log) => {
                        kind += RECYCLABLE_FULL_TYPE - FULL_TYPE;
                        masked_recyclable_crc(kind, log, &left[..n])
                    }
                    None => masked_crc(kind, &left[..n]),
                };
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(&(n as u16).to_le_bytes());
                out.push(kind);
                if let Some(log) = recycled {
                    out.extend_from_slice(&log.to_le_bytes());
                }
                out.extend_from_slice(&left[..n]);
                left = &left[n..];
                first = false;
                if last {
                    break;
                }
            }
        }
        out
    }

    /// An edit built field by field.
    #[derive(Default)]
    struct E(Vec<u8>);

    impl E {
        fn num(mut self, t: u64, v: u64) -> Self {
            put_varint(&mut self.0, t);
            put_varint(&mut self.0, v);
            self
        }
        fn cf(self, id: u64) -> Self {
            self.num(tag::COLUMN_FAMILY, id)
        }
        fn add_cf(mut self, name: &str) -> Self {
            put_varint(&mut self.0, tag::COLUMN_FAMILY_ADD);
            put_bytes(&mut self.0, name.as_bytes());
            self
        }
        fn drop_cf(mut self) -> Self {
            put_varint(&mut self.0, tag::COLUMN_FAMILY_DROP);
            self
        }
        fn group(self, remaining: u64) -> Self {
            self.num(tag::IN_ATOMIC_GROUP, remaining)
        }
        fn delete(mut self, level: u64, n: u64) -> Self {
            put_varint(&mut self.0, tag::DELETED_FILE);
            put_varint(&mut self.0, level);
            put_varint(&mut self.0, n);
            self
        }
        /// A `NEW_FILE4` with the custom fields RocksDB 7.8 writes, and
        /// `extra` (tag, value) ones.
        fn table(mut self, level: u64, n: u64, size: u64, extra: &[(u64, &[u8])]) -> Self {
            put_varint(&mut self.0, tag::NEW_FILE4);
            put_varint(&mut self.0, level);
            put_varint(&mut self.0, n);
            put_varint(&mut self.0, size);
            put_bytes(&mut self.0, b"a\x01\x00\x00\x00\x00\x00\x00\x00");
            put_bytes(&mut self.0, b"z\x01\x00\x00\x00\x00\x00\x00\x00");
            put_varint(&mut self.0, 1);
            put_varint(&mut self.0, 9);
            for (t, v) in [(5u64, &[0x80u8, 0x01][..]), (6, &[0]), (13, &[1])].iter().chain(extra) {
                put_varint(&mut self.0, *t);
                put_bytes(&mut self.0, v);
            }
            put_varint(&mut self.0, custom::TERMINATE);
            self
        }
        fn raw(mut self, t: u64, value: &[u8]) -> Self {
            put_varint(&mut self.0, t);
            put_bytes(&mut self.0, value);
            self
        }
        fn blob(mut self, n: u64, count: u64, bytes: u64) -> Self {
            put_varint(&mut self.0, tag::BLOB_FILE_ADDITION);
            for v in [n, count, bytes] {
                put_varint(&mut self.0, v);
            }
            put_bytes(&mut self.0, b"");
            put_bytes(&mut self.0, b"");
            put_varint(&mut self.0, 0);
            self
        }
        fn garbage(mut self, n: u64, count: u64, bytes: u64) -> Self {
            put_varint(&mut self.0, tag::BLOB_FILE_GARBAGE);
            for v in [n, count, bytes] {
                put_varint(&mut self.0, v);
            }
            put_varint(&mut self.0, 0);
            self
        }
    }

    /// The opening edits: comparator, then numbers and two tables in the
    /// default column family.
    fn base() -> Vec<Vec<u8>> {
        let mut cmp = Vec::new();
        put_varint(&mut cmp, tag::COMPARATOR);
        put_bytes(&mut cmp, b"leveldb.BytewiseComparator");
        vec![
            cmp,
            E::default()
                .num(tag::LOG_NUMBER, 5)
                .num(tag::NEXT_FILE_NUMBER, 20)
                .num(tag::LAST_SEQUENCE, 100)
                .table(0, 8, 1000, &[])
                .table(1, 9, 2000, &[])
                .0,
        ]
    }

    #[test]
    fn column_families_added_and_dropped() {
        let mut edits = base();
        edits.push(E::default().cf(1).add_cf("cf1").num(tag::LOG_NUMBER, 5).0);
        edits.push(E::default().cf(2).add_cf("doomed").num(tag::LOG_NUMBER, 5).0);
        edits.push(E::default().cf(2).table(0, 10, 300, &[]).num(tag::LOG_NUMBER, 11).0);
        edits.push(E::default().cf(1).table(0, 12, 400, &[]).num(tag::LOG_NUMBER, 11).0);
        edits.push(E::default().cf(2).drop_cf().num(tag::MAX_COLUMN_FAMILY, 2).0);
        // The default family flushes: log 13; the minimum to keep is 13 by
        // the hack field of a new file.
        edits.push(
            E::default()
                .delete(0, 8)
                .table(1, 14, 900, &[(custom::MIN_LOG_NUMBER_TO_KEEP_HACK, &13u64.to_le_bytes())])
                .num(tag::LOG_NUMBER, 13)
                .0,
        );
        let m = parse_manifest("MANIFEST-000004", &write_log(&edits, None)).unwrap();
        assert_eq!(m.edits, 8);
        assert_eq!(m.column_families.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(m.column_families[&1].name, "cf1");
        assert_eq!(m.column_families[&0].comparator.as_deref(), Some("leveldb.BytewiseComparator"));
        assert_eq!((m.column_families[&0].log_number, m.column_families[&1].log_number), (13, 11));
        assert_eq!(m.min_log_number_to_keep, Some(13));
        // max(smallest family log number 11, minimum to keep 13).
        assert_eq!(m.log_number(), 13);
        assert_eq!((m.next_file_number, m.last_sequence, m.max_column_family), (20, 100, 2));
        let tables: Vec<(u64, u32, u64, u32)> =
            m.tables().values().map(|t| (t.meta.number, t.meta.level, t.meta.size, t.meta.column_family)).collect();
        assert_eq!(tables, [(9, 1, 2000, 0), (12, 0, 400, 1), (14, 1, 900, 0)]);
        // The dropped family's table and the deleted one are left out.
        let names = [
            "CURRENT",
            "MANIFEST-000004",
            "MANIFEST-000001",
            "000008.sst",
            "000009.sst",
            "000010.sst",
            "000012.sst",
            "000014.sst",
            "000014.ldb",
            "000005.log",
            "000011.log",
            "000013.log",
            "000015.log",
            "IDENTITY",
            "OPTIONS-000003",
            "OPTIONS-000016",
            "OPTIONS-000017.dbtmp",
            "000018.dbtmp",
            "LOCK",
            "LOG",
            "LOG.old.1796692001956767",
            "notes.txt",
        ];
        let live = live_set(b"MANIFEST-000004\n", &write_log(&edits, None), names).unwrap();
        assert_eq!(
            live.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["000009.sst", "000012.sst", "000014.sst"]
        );
        assert_eq!(live.logs, ["000013.log", "000015.log"]);
        assert_eq!(live.log_number, 13);
        assert_eq!(live.extra, ["IDENTITY", "OPTIONS-000016"]);
        assert_eq!(live.left_out.obsolete_tables, ["000008.sst", "000010.sst"]);
        assert_eq!(live.left_out.old_logs, ["000005.log", "000011.log"]);
        assert_eq!(live.left_out.old_manifests, ["MANIFEST-000001"]);
        assert_eq!(
            live.left_out.other,
            [
                "000014.ldb",
                "OPTIONS-000017.dbtmp",
                "000018.dbtmp",
                "LOCK",
                "LOG",
                "LOG.old.1796692001956767",
                "notes.txt",
                "OPTIONS-000003"
            ]
        );
        assert!(live.missing_tables.is_empty());
        assert!(looks_like_rocksdb(names));
        assert!(!looks_like_rocksdb(["CURRENT", "MANIFEST-000004", "000005.log"]));
        assert!(has_rocksdb_fields(&write_log(&edits, None)));
        assert!(!has_rocksdb_fields(&write_log(&base()[..1], None)));
    }

    #[test]
    fn atomic_groups_apply_whole() {
        let mut edits = base();
        edits.push(E::default().cf(1).add_cf("cf1").num(tag::LOG_NUMBER, 5).0);
        let whole_len = write_log(&edits, None).len();
        // An atomic flush of both families: three edits, the last one cut
        // short by the reader.
        let group = [
            E::default().table(0, 21, 10, &[]).num(tag::LOG_NUMBER, 22).group(2).0,
            E::default().cf(1).table(0, 23, 10, &[]).num(tag::LOG_NUMBER, 22).group(1).0,
            E::default().num(tag::MIN_LOG_NUMBER_TO_KEEP, 22).num(tag::NEXT_FILE_NUMBER, 24).group(0).0,
        ];
        let mut all = edits.clone();
        all.extend(group.iter().cloned());
        let full = write_log(&all, None);
        let m = parse_manifest("M", &full).unwrap();
        assert_eq!((m.edits, m.log_number(), m.complete_len), (6, 22, full.len()));
        assert!(m.tables().contains_key(&23));
        // Without the group's last edit, or with it cut, the group is left
        // out whole, like a partial tail.
        let two = write_log(&all[..all.len() - 1], None);
        for cut in [two.len(), full.len() - 3] {
            let m = parse_manifest("M", &full[..cut]).unwrap();
            assert_eq!((m.edits, m.log_number(), m.complete_len, m.partial_tail), (3, 5, whole_len, cut - whole_len));
            assert!(!m.tables().contains_key(&21));
            let live = live_set(b"MANIFEST-000002\n", &full[..cut], ["000005.log"]).unwrap();
            assert_eq!(live.manifest_complete_len, whole_len);
        }
        // A group whose counts disagree, and a plain edit inside a group.
        let mut bad = edits.clone();
        bad.push(group[0].clone());
        bad.push(group[2].clone());
        let e = parse_manifest("M", &write_log(&bad, None)).unwrap_err().to_string();
        assert!(e.contains("version edit 5 (of 5): an atomic group of 3 edits says 0 follow after its edit 2"), "{e}");
        let mut bad = edits;
        bad.push(group[0].clone());
        bad.push(E::default().num(tag::LAST_SEQUENCE, 1).0);
        let e = parse_manifest("M", &write_log(&bad, None)).unwrap_err().to_string();
        assert!(e.contains("an edit outside the atomic group of 3 edits, 1 of which were read"), "{e}");
    }

    #[test]
    fn unknown_fields_and_ignorable_ones() {
        let check = |extra: Vec<u8>, want: Option<&str>| {
            let mut edits = base();
            edits.push(extra);
            let got = parse_manifest("MANIFEST-000009", &write_log(&edits, None));
            match want {
                None => {
                    let m = got.unwrap();
                    assert_eq!(m.edits, 3);
                    m
                }
                Some(w) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.starts_with("MANIFEST-000009: at byte"), "{e}");
                    assert!(e.contains(w), "{e} should say {w}");
                    base_manifest()
                }
            }
        };
        // Ignorable: kFullHistoryTsLow, kWalAddition2, a future one; the
        // db id is read; the inline kWalAddition and kWalDeletion.
        let mut wal = Vec::new();
        put_varint(&mut wal, tag::WAL_ADDITION);
        for v in [7, 2, 4096, 1] {
            put_varint(&mut wal, v);
        }
        put_varint(&mut wal, tag::WAL_DELETION);
        put_varint(&mut wal, 6);
        let e = E(wal)
            .raw(tag::SAFE_IGNORE_MASK + 6, b"\x01\x02")
            .raw(tag::SAFE_IGNORE_MASK + 7, b"\x07\x00\x01")
            .raw(tag::SAFE_IGNORE_MASK + 99, b"future")
            .raw(tag::DB_ID, b"6b5e0d6c-0000-4000-8000-000000000000")
            .table(2, 30, 77, &[(12, &[0; 16]), (40, b"new and ignorable")]);
        let m = check(e.0, None);
        assert_eq!(m.db_id.as_deref(), Some("6b5e0d6c-0000-4000-8000-000000000000"));
        assert_eq!(m.tables()[&30].meta.level, 2);
        // Not ignorable.
        check(
            E::default().num(8, 1).0,
            Some("version edit 3 (of 3): unknown field tag 8, which RocksDB cannot ignore"),
        );
        check(E::default().raw(500, b"x").0, Some("unknown field tag 500"));
        check(
            E::default().table(0, 31, 5, &[(custom::NON_SAFE_IGNORE_MASK + 9, b"?")]).0,
            Some("table 000031 has custom field 73, which a reader must understand"),
        );
        // A table in another db_paths directory reads, but is no copy's.
        let mut edits = base();
        edits.push(E::default().table(0, 32, 5, &[(custom::PATH_ID, &[1])]).0);
        let m = write_log(&edits, None);
        assert_eq!(parse_manifest("M", &m).unwrap().tables()[&32].path_id, 1);
        let e = live_set(b"MANIFEST-000002\n", &m, ["000032.sst"]).unwrap_err().to_string();
        assert!(e.contains("table 000032 is kept in the database's extra path number 1 (db_paths)"), "{e}");
        // Replay errors.
        check(E::default().delete(0, 9).0, Some("deletes table 000009 from level 0, but it is on level 1"));
        check(E::default().delete(0, 99).0, Some("deletes table 000099 from level 0, but it is not live"));
        check(E::default().table(3, 8, 1, &[]).0, Some("adds table 000008, which is live already on level 0"));
        check(E::default().cf(4).num(tag::LOG_NUMBER, 1).0, Some("changes column family 4, which was never added"));
        check(E::default().add_cf("again").0, Some("adds column family 0 (\"again\"), which exists already"));
        check(E::default().cf(3).drop_cf().0, Some("drops column family 3, which does not exist"));
        check(vec![tag::NEW_FILE4 as u8, 0, 5], Some("bad new file's size (cut short)"));
        let e = parse_manifest("M", &write_log(&base()[..1], None)).unwrap_err().to_string();
        assert!(e.contains("no version edit sets the log number"), "{e}");
    }

    fn base_manifest() -> RocksDbManifest {
        parse_manifest("M", &write_log(&base(), None)).unwrap()
    }

    #[test]
    fn blob_files_live_while_tables_refer_to_them() {
        let mut edits = base();
        // Blob files 40, 41, 42; table 43 refers to 41 at the oldest, 44
        // to 42. 40 is older than any referred to; 42 is all garbage but
        // referred to; 45 is all garbage and not referred to.
        edits.push(
            E::default()
                .blob(40, 10, 1000)
                .blob(41, 10, 1000)
                .blob(42, 10, 1000)
                .blob(45, 2, 200)
                .table(0, 43, 50, &[(custom::OLDEST_BLOB_FILE_NUMBER, &[41])])
                .table(0, 44, 50, &[(custom::OLDEST_BLOB_FILE_NUMBER, &[42])])
                .0,
        );
        edits.push(E::default().garbage(42, 10, 1000).garbage(45, 2, 200).garbage(41, 3, 300).0);
        let m = write_log(&edits, None);
        let parsed = parse_manifest("M", &m).unwrap();
        let live: Vec<(u64, u64, u64)> =
            parsed.live_blob_files().iter().map(|(_, b)| (b.number, b.garbage_blob_count, b.file_size())).collect();
        assert_eq!(live, [(41, 3, 1062), (42, 10, 1062)]);
        let set = live_set(
            b"MANIFEST-000002\n",
            &m,
            ["000008.sst", "000009.sst", "000043.sst", "000044.sst", "000040.blob", "000041.blob", "000045.blob"],
        )
        .unwrap();
        let names: Vec<(&str, u32, u64)> =
            set.tables.iter().map(|t| (t.name.as_str(), t.meta.level, t.meta.size)).collect();
        assert_eq!(
            names,
            [
                ("000008.sst", 0, 1000),
                ("000009.sst", 1, 2000),
                ("000043.sst", 0, 50),
                ("000044.sst", 0, 50),
                ("000041.blob", BLOB_FILE_LEVEL, 1062)
            ]
        );
        assert_eq!(set.missing_tables, [42]);
        assert_eq!(set.left_out.obsolete_tables, ["000040.blob", "000045.blob"]);
        let e = parse_manifest("M", &write_log(&[base(), vec![E::default().garbage(7, 1, 1).0]].concat(), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("adds garbage to blob file 000007, which is not listed"), "{e}");
    }

    #[test]
    fn recyclable_and_metadata_log_records() {
        let records = vec![b"first batch".to_vec(), vec![7u8; 40_000], b"third".to_vec()];
        let log = write_log(&records, Some(33));
        // LevelDB's reader refuses RocksDB's record types.
        assert!(read_log(&log, true).unwrap_err().reason.contains("unknown record type 5"));
        let scan = read_log_as(&log, true, LogFormat::RocksDb).unwrap();
        assert_eq!(scan.records.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), records);
        assert_eq!((scan.complete_len, scan.partial_tail), (log.len(), 0));
        // A reused file: the new log's records, then what is left of the
        // old log (number 12) after them.
        let old = write_log(&[vec![1u8; 300], vec![2u8; 5000]], Some(12));
        let new = write_log(&[b"new".to_vec()], Some(33));
        let mut reused = new.clone();
        reused.extend_from_slice(&old[new.len()..]);
        // Cut where an old record starts: the old log's second record.
        let second = write_log(&[vec![1u8; 300]], Some(12)).len();
        let mut reused2 = write_log(&[vec![9u8; 300]], Some(33));
        assert_eq!(reused2.len(), second);
        reused2.extend_from_slice(&old[second..]);
        let scan = read_log_as(&reused2, true, LogFormat::RocksDb).unwrap();
        assert_eq!((scan.records.len(), scan.complete_len, scan.partial_tail), (1, second, old.len() - second));
        assert_eq!(log_complete_len_as(&reused2, LogFormat::RocksDb), second);
        // The same bytes read without checksums: still the end.
        assert_eq!(read_log_as(&reused, false, LogFormat::RocksDb).map(|s| s.records.len()).unwrap_or(1), 1);
        // kSetCompressionType (legacy header) then records; an ignorable
        // future type; a type that is not.
        let mut wal = Vec::new();
        let comp = 7u32.to_le_bytes();
        wal.extend_from_slice(&masked_crc(SET_COMPRESSION_TYPE, &comp).to_le_bytes());
        wal.extend_from_slice(&4u16.to_le_bytes());
        wal.push(SET_COMPRESSION_TYPE);
        wal.extend_from_slice(&comp);
        wal.extend_from_slice(&masked_crc(0x85, b"later").to_le_bytes());
        wal.extend_from_slice(&5u16.to_le_bytes());
        wal.push(0x85);
        wal.extend_from_slice(b"later");
        wal.extend(write_log(&[b"batch".to_vec()], None));
        let scan = read_log_as(&wal, true, LogFormat::RocksDb).unwrap();
        assert_eq!((scan.wal_compression, scan.records.len(), scan.complete_len), (Some(7), 1, wal.len()));
        wal[4 + 2 + 4 + 1 + 6] = 0x25;
        let e = read_log_as(&wal, false, LogFormat::RocksDb).unwrap_err();
        assert_eq!((e.offset, e.reason.as_str()), (11, "unknown record type 37"));
    }

    /// A directory in memory whose database flushes (a new manifest edit,
    /// a new log, the old log deleted) right after it is first listed: the
    /// listing shows the new log only, with the old manifest read.
    struct FlushingDir {
        files: BTreeMap<String, Vec<u8>>,
        flush: Option<Flush>,
        stored: BTreeMap<String, Vec<u8>>,
    }

    /// A change to a directory's files.
    type Flush = Box<dyn FnOnce(&mut BTreeMap<String, Vec<u8>>)>;

    impl LsmDir for FlushingDir {
        fn list(&mut self) -> Result<Vec<ListedFile>, Error> {
            // The flush happens while the names are read, before the sizes.
            if let Some(f) = self.flush.take() {
                f(&mut self.files);
            }
            Ok(self
                .files
                .iter()
                .map(|(n, b)| ListedFile {
                    name: n.clone(),
                    size: b.len() as u64,
                    mtime: coffer_sdk::Timestamp { seconds: 1, nanoseconds: 0 },
                    mode: 0o644,
                    is_file: true,
                })
                .collect())
        }

        fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
            Ok(self.files.get(name).cloned())
        }

        fn reuse_unchanged(&mut self, _: &ListedFile) -> bool {
            false
        }

        fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error> {
            Ok(names
                .iter()
                .map(|n| self.files.get(n).cloned().map(|b| self.stored.insert(n.clone(), b)).is_some())
                .collect())
        }

        fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error> {
            assert!(self.stored.insert(file.name.clone(), bytes.to_vec()).is_none(), "{} stored twice", file.name);
            Ok(())
        }
    }

    #[test]
    fn copy_reads_again_when_the_manifest_grows_during_the_listing() {
        let m1 = write_log(&base(), None);
        let mut edits = base();
        edits.push(E::default().table(0, 21, 70, &[]).num(tag::LOG_NUMBER, 22).0);
        let m2 = write_log(&edits, None);
        let log5 = write_log(&[b"writes now in table 21".to_vec()], None);
        let log22 = write_log(&[b"later writes".to_vec()], None);
        let m2c = m2.clone();
        let l22 = log22.clone();
        let mut dir = FlushingDir {
            files: [
                ("CURRENT", b"MANIFEST-000004\n".to_vec()),
                ("MANIFEST-000004", m1),
                ("000008.sst", vec![8; 1000]),
                ("000009.sst", vec![9; 2000]),
                ("000005.log", log5),
                ("IDENTITY", b"id".to_vec()),
            ]
            .into_iter()
            .map(|(n, b)| (n.to_string(), b))
            .collect(),
            flush: Some(Box::new(move |f| {
                f.insert("MANIFEST-000004".into(), m2c);
                f.insert("000021.sst".into(), vec![21; 70]);
                f.insert("000022.log".into(), l22);
                f.remove("000005.log");
            })),
            stored: BTreeMap::new(),
        };
        // The first state (log 5) would have been stored with log 22 only:
        // the writes of log 5 lost. It is read again instead.
        let r = copy_live_set::<RocksDb>(&mut dir, "db").unwrap();
        assert_eq!((r.rounds, r.tables, r.logs), (2, 3, 1));
        assert_eq!(dir.stored["MANIFEST-000004"], m2);
        assert_eq!(dir.stored["000022.log"], log22);
        assert_eq!(
            dir.stored.keys().map(String::as_str).collect::<Vec<_>>(),
            ["000008.sst", "000009.sst", "000021.sst", "000022.log", "CURRENT", "IDENTITY", "MANIFEST-000004"]
        );
        // A log number no log has (RocksDB records the last replayed log
        // plus one after recovery) is no reason to read again.
        let mut dir = FlushingDir {
            files: [
                ("CURRENT", b"MANIFEST-000004\n".to_vec()),
                ("MANIFEST-000004", write_log(&base(), None)),
                ("000008.sst", vec![8; 1000]),
                ("000009.sst", vec![9; 2000]),
                ("000011.log", write_log(&[b"after recovery".to_vec()], None)),
            ]
            .into_iter()
            .map(|(n, b)| (n.to_string(), b))
            .collect(),
            flush: None,
            stored: BTreeMap::new(),
        };
        let r = copy_live_set::<RocksDb>(&mut dir, "db").unwrap();
        assert_eq!((r.rounds, r.logs), (1, 1));
    }

    // -----------------------------------------------------------------
    // Databases written by RocksDB itself (Debian's rocksdb-tools: ldb).

    /// `ldb`, or a panic that says how to get it.
    fn ldb() -> &'static str {
        let ok = Command::new("ldb").arg("--help").output().is_ok_and(|o| o.status.success() || !o.stdout.is_empty());
        if !ok {
            panic!(
                "this test needs RocksDB's ldb tool to write a real RocksDB database: install the Debian package \
                 rocksdb-tools (apt-get install rocksdb-tools)"
            );
        }
        "ldb"
    }

    /// Runs ldb on `db` with `args` (and `input` on its standard input).
    fn run(db: &Path, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = Command::new(ldb());
        cmd.arg(format!("--db={}", db.display())).args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(text) = input {
            stdin.write_all(text.as_bytes()).unwrap();
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    fn ok(db: &Path, args: &[&str], input: Option<&str>) -> String {
        let out = run(db, args, input);
        assert!(
            out.status.success(),
            "ldb {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Small memtables and files so that a few thousand keys make several
    /// tables. (The Debian build asserts when the write buffer is below
    /// 512 KiB.)
    const SMALL: [&str; 3] = ["--write_buffer_size=524288", "--file_size=65536", "--compression_type=no"];

    fn lines(from: usize, to: usize, tag: &str) -> String {
        (from..to).map(|i| format!("k{i:06} ==> {tag}{i}-{}\n", "v".repeat(100 + i % 50))).collect()
    }

    fn load(db: &Path, cf: &str, text: &str) {
        let cf = format!("--column_family={cf}");
        let mut args: Vec<&str> = SMALL.to_vec();
        args.extend([cf.as_str(), "load"]);
        ok(db, &args, Some(text));
    }

    fn live_of(dir: &Path) -> LiveSet<RocksDbManifest> {
        let current = std::fs::read(dir.join("CURRENT")).unwrap();
        let (name, _) = parse_current(&current).unwrap();
        let manifest = std::fs::read(dir.join(&name)).unwrap();
        let names = names_of(dir);
        live_set(&current, &manifest, names.iter().map(String::as_str)).unwrap()
    }

    /// What `ldb manifest_dump --verbose` says of the live files: (column
    /// family id, level, number, size) of every table, each family's log
    /// number, and the closing line's numbers.
    struct Dump {
        tables: Vec<(u32, u32, u64, u64)>,
        logs: BTreeMap<u32, u64>,
        blobs: Vec<(u64, u64)>,
        summary: BTreeMap<String, u64>,
    }

    fn manifest_dump(db: &Path) -> Dump {
        let text = ok(db, &["manifest_dump", "--verbose"], None);
        let mut d = Dump { tables: Vec::new(), logs: BTreeMap::new(), blobs: Vec::new(), summary: BTreeMap::new() };
        let (mut cf, mut level) = (None, 0u32);
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("--------------- Column family ") {
                let id = rest.split("(ID ").nth(1).unwrap().split(')').next().unwrap();
                cf = Some(id.parse::<u32>().unwrap());
            } else if let Some(n) = line.strip_prefix("log number: ") {
                d.logs.insert(cf.unwrap(), n.parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("--- level ") {
                level = rest.split(' ').next().unwrap().parse().unwrap();
            } else if let Some(rest) = line.strip_prefix(' ')
                && let Some(cf) = cf
                && let Some((num, rest)) = rest.split_once(':')
                && let Ok(number) = num.parse::<u64>()
            {
                let size = rest.split('[').next().unwrap().parse().unwrap();
                d.tables.push((cf, level, number, size));
            } else if let Some(rest) = line.strip_prefix("blob_file_number: ") {
                let mut w = rest.split_whitespace();
                let n = w.next().unwrap().parse().unwrap();
                let bytes = rest.split("total_blob_bytes: ").nth(1).unwrap().split(' ').next().unwrap();
                d.blobs.push((n, bytes.parse().unwrap()));
            } else if line.starts_with("next_file_number ") {
                let w: Vec<&str> = line.split_whitespace().collect();
                for pair in w.chunks(2) {
                    d.summary.insert(pair[0].to_string(), pair[1].parse().unwrap());
                }
            }
        }
        d.tables.sort();
        d
    }

    fn check_against_dump(db: &Path, live: &LiveSet<RocksDbManifest>) {
        let dump = manifest_dump(db);
        let m = &live.manifest;
        let mut ours: Vec<(u32, u32, u64, u64)> =
            m.tables().values().map(|t| (t.meta.column_family, t.meta.level, t.meta.number, t.meta.size)).collect();
        ours.sort();
        assert_eq!(ours, dump.tables);
        let logs: BTreeMap<u32, u64> = m.column_families.iter().map(|(id, cf)| (*id, cf.log_number)).collect();
        assert_eq!(logs, dump.logs);
        let blobs: Vec<(u64, u64)> = m.live_blob_files().iter().map(|(_, b)| (b.number, b.total_blob_bytes)).collect();
        assert_eq!(blobs, dump.blobs);
        // RocksDB's recovery takes the manifest's next file number for the
        // manifest it writes, and hands out the one after.
        assert_eq!(dump.summary["next_file_number"], m.next_file_number + 1);
        assert_eq!(dump.summary["last_sequence"], m.last_sequence);
        assert_eq!(dump.summary["max_column_family"], u64::from(m.max_column_family));
        assert_eq!(dump.summary["min_log_number_to_keep"], m.min_log_number_to_keep.unwrap_or(0));
        // Every live file has the size the manifest gives it.
        for t in &live.tables {
            assert_eq!(std::fs::metadata(db.join(&t.name)).unwrap().len(), t.meta.size, "{}", t.name);
        }
    }

    /// `ldb scan` of each column family: (success, output).
    fn scans(db: &Path, cfs: &[&str]) -> Vec<(bool, String)> {
        cfs.iter()
            .map(|cf| {
                let out = run(db, &[&format!("--column_family={cf}"), "scan"], None);
                (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .collect()
    }

    /// Copies the live set of `db` into new directories: whole, and
    /// without each of `drop`; returns (whole, [(dropped, copy)]).
    fn copies(tmp: &Path, db: &Path, drop: &[String]) -> (PathBuf, Vec<(String, PathBuf)>) {
        let live = live_of(db);
        let mut without = Vec::new();
        for d in drop {
            let copy = tmp.join(format!("without-{d}"));
            std::fs::create_dir(&copy).unwrap();
            for name in live.files() {
                if &name != d {
                    std::fs::copy(db.join(&name), copy.join(&name)).unwrap();
                }
            }
            without.push((d.clone(), copy));
        }
        let restored = tmp.join("restored");
        std::fs::create_dir(&restored).unwrap();
        let r = copy_live_set::<RocksDb>(&mut DiskDir { dir: db.to_path_buf(), out: restored.clone() }, "db").unwrap();
        assert_eq!((r.tables, r.logs, r.rounds), (live.tables.len(), live.logs.len(), 1));
        let mut want = live.files();
        want.sort();
        assert_eq!(names_of(&restored), want);
        (restored, without)
    }

    #[test]
    fn real_rocksdb_with_column_families_and_compactions() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        let keep = tmp.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        ok(&db, &["--create_if_missing", "put", "seed", "1"], None);
        for cf in ["cf1", "cf2", "doomed"] {
            ok(&db, &["create_column_family", cf], None);
        }
        load(&db, "default", &lines(0, 6000, "d"));
        load(&db, "cf1", &lines(0, 6000, "one"));
        load(&db, "cf2", &lines(3000, 7000, "two"));
        load(&db, "doomed", &lines(0, 100, "gone"));
        for n in names_of(&db).iter().filter(|n| n.ends_with(".sst")) {
            std::fs::copy(db.join(n), keep.join(n)).unwrap();
        }
        ok(&db, &["drop_column_family", "doomed"], None);
        for cf in ["default", "cf1"] {
            let cf = format!("--column_family={cf}");
            let mut args: Vec<&str> = SMALL.to_vec();
            args.extend([cf.as_str(), "compact"]);
            ok(&db, &args, None);
        }
        load(&db, "default", &lines(6000, 7500, "later"));
        // The last writes stay in the write-ahead log.
        load(&db, "cf1", &lines(100, 400, "in the log"));
        // A table RocksDB had deleted, put back (what a crash between a
        // compaction and its cleanup leaves).
        let stray = names_of(&keep).into_iter().find(|n| !db.join(n).exists()).unwrap();
        std::fs::copy(keep.join(&stray), db.join(&stray)).unwrap();

        let live = live_of(&db);
        assert!(looks_like_rocksdb(names_of(&db).iter().map(String::as_str)));
        assert!(has_rocksdb_fields(&std::fs::read(db.join(&live.manifest_name)).unwrap()));
        check_against_dump(&db, &live);
        let m = &live.manifest;
        assert_eq!(m.column_families.values().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["default", "cf1", "cf2"]);
        assert!(live.tables.len() >= 6, "{live:?}");
        let levels: BTreeSet<u32> = live.tables.iter().map(|t| t.meta.level).collect();
        assert!(levels.len() >= 2, "{levels:?}");
        assert!(live.tables.iter().any(|t| t.meta.column_family == 2));
        assert!(live.missing_tables.is_empty());
        assert_eq!(live.logs.len(), 1, "{live:?}");
        assert_eq!(live.extra.len(), 2, "{live:?}");
        assert!(live.extra[0] == "IDENTITY" && live.extra[1].starts_with("OPTIONS-"));
        assert!(live.left_out.obsolete_tables.contains(&stray), "{live:?}");
        assert!(live.left_out.other.iter().any(|n| n == "LOCK"));
        assert!(live.left_out.other.iter().any(|n| n.starts_with("LOG.old.")));
        assert!(live.left_out.other.iter().any(|n| n.starts_with("OPTIONS-")), "{live:?}");
        // The live log is RocksDB's and reads whole.
        let wal = std::fs::read(db.join(&live.logs[0])).unwrap();
        let scan = read_log_as(&wal, true, LogFormat::RocksDb).unwrap();
        // One write batch per key loaded.
        assert_eq!((scan.complete_len, scan.records.len()), (wal.len(), 300));

        // Every live table passes the table check, every data block walked.
        for t in &live.tables {
            let bytes = std::fs::read(db.join(&t.name)).unwrap();
            let r = check_table(&t.name, &bytes).unwrap();
            assert!(r.data_blocks_walked && r.data_blocks > 0, "{} {r:?}", t.name);
            assert_eq!(r.properties_data_blocks, Some(r.data_blocks), "{}", t.name);
            assert_eq!(r.format_version, 5, "{}", t.name);
        }
        damaged_tables(&db, &live);

        let cfs = ["default", "cf1", "cf2"];
        let drop = vec![live.tables[live.tables.len() / 2].name.clone(), live.logs[0].clone()];
        let (restored, without) = copies(tmp.path(), &db, &drop);
        let want = scans(&db, &cfs);
        assert!(want.iter().all(|(ok, out)| *ok && out.lines().count() > 1000), "{want:?}");
        assert!(want[1].1.contains("in the log"));
        assert_eq!(scans(&restored, &cfs), want);
        for (d, copy) in without {
            assert_ne!(scans(&copy, &cfs), want, "RocksDB read the same contents without {d}");
        }
    }

    /// A flipped byte in a data block is found in that block, by this
    /// check and by RocksDB's `sst_dump --command=verify`; a table cut
    /// short fails on its footer.
    fn damaged_tables(db: &Path, live: &LiveSet<RocksDbManifest>) {
        let t = live.tables.iter().max_by_key(|t| t.meta.size).unwrap();
        let bytes = std::fs::read(db.join(&t.name)).unwrap();
        let report = check_table(&t.name, &bytes).unwrap();
        assert!(report.data_blocks >= 3, "{report:?}");
        let at = bytes.len() / 3;
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let e = check_table(&t.name, &bad).unwrap_err();
        let block = e.offset.unwrap();
        assert!(block <= at as u64 && at as u64 - block < 8192, "{e}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: at byte {block}: data block ", t.name)), "{text}");
        assert!(text.contains("checksum mismatch (XXH3 stored"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(&t.name);
        std::fs::write(&path, &bad).unwrap();
        // RocksDB agrees on the block (sst_dump comes with ldb).
        let out = Command::new("sst_dump")
            .args([&format!("--file={}", path.display()), "--command=verify", "--verify_checksum"])
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(said.contains(&format!("block checksum mismatch: stored = {}", bad_stored(&bad, block))), "{said}");
        assert!(said.contains(&format!("offset {block} size")), "sst_dump: {said}");
        for cut in [bytes.len() - 1, bytes.len() - 20, bytes.len() / 2] {
            let e = check_table(&t.name, &bytes[..cut]).unwrap_err().to_string();
            assert!(e.contains("no table magic number at the end"), "{e}");
        }
        assert!(check_table(&t.name, &bytes[..30]).unwrap_err().to_string().contains("shorter than any table footer"));
        // Whatever byte is damaged, or wherever the file is cut, the check
        // answers without panicking.
        for at in (0..bytes.len()).step_by(61) {
            let mut bad = bytes.clone();
            bad[at] ^= 0xa5;
            let _ = check_table(&t.name, &bad);
            let _ = check_table(&t.name, &bytes[..at]);
        }
        // A damaged index or footer handle is reported, not a panic.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 53 + 1] = 0xff;
        bad[n - 53 + 2] = 0xff;
        assert!(check_table(&t.name, &bad).is_err());
    }

    /// The checksum stored in the trailer of the damaged block at
    /// `offset` (its size is in check_table's message).
    fn bad_stored(bytes: &[u8], offset: u64) -> u32 {
        let (_, rest) = bytes.split_at(offset as usize);
        // The block's size is in the error message of check_table.
        let e = check_table("t", bytes).unwrap_err().reason;
        let size: usize = e.split(" over ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        u32::from_le_bytes(rest[size + 1..size + 5].try_into().unwrap())
    }

    /// Tables written with other table options: the newest `OPTIONS` file
    /// edited, then `ldb compact` (which loads it) rewrites two overlapping
    /// tables into one.
    #[test]
    fn tables_in_every_format_ldb_writes() {
        use crate::table::ChecksumType as C;
        // (checksum, format_version, other options, expected checksum type)
        type Variant<'a> = (&'a str, u32, &'a [(&'a str, &'a str)], C);
        let variants: &[Variant] = &[
            ("kCRC32c", 2, &[], C::Crc32c),
            ("kxxHash", 3, &[("filter_policy", "bloomfilter:10:true")], C::XxHash),
            ("kxxHash64", 4, &[("index_block_restart_interval", "16")], C::XxHash64),
            (
                "kXXH3",
                5,
                &[
                    ("index_type", "kTwoLevelIndexSearch"),
                    ("index_block_restart_interval", "4"),
                    ("metadata_block_size", "256"),
                    ("filter_policy", "bloomfilter:10:false"),
                    ("partition_filters", "true"),
                ],
                C::Xxh3,
            ),
            (
                "kXXH3",
                5,
                &[
                    ("index_type", "kBinarySearchWithFirstKey"),
                    ("index_block_restart_interval", "8"),
                    ("data_block_index_type", "kDataBlockBinaryAndHash"),
                ],
                C::Xxh3,
            ),
            ("kNoChecksum", 5, &[("index_block_restart_interval", "3")], C::None),
            // Compressed blocks are checked as stored; a compressed index
            // is decompressed (Snappy, LZ4) or hides the data blocks (ZSTD).
            ("kXXH3", 5, &[("compression", "kSnappyCompression")], C::Xxh3),
            ("kCRC32c", 4, &[("compression", "kLZ4Compression"), ("index_block_restart_interval", "8")], C::Crc32c),
            ("kXXH3", 5, &[("compression", "kZSTD")], C::Xxh3),
        ];
        for (i, (checksum, version, extra, want)) in variants.iter().enumerate() {
            let tmp = tempfile::tempdir().unwrap();
            let db = tmp.path().join("db");
            ok(&db, &["--create_if_missing", "put", "seed", "1"], None);
            load(&db, "default", &lines(0, 3000, "a"));
            load(&db, "default", &lines(0, 3000, "b"));
            let options = names_of(&db).into_iter().rfind(|n| n.starts_with("OPTIONS-")).unwrap();
            let mut set: Vec<(&str, String)> =
                vec![("checksum", checksum.to_string()), ("format_version", version.to_string())];
            set.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            let text = std::fs::read_to_string(db.join(&options)).unwrap();
            let edited: String = text
                .lines()
                .map(|l| {
                    let key = l.trim().split('=').next().unwrap_or("");
                    match set.iter().find(|(k, _)| *k == key) {
                        Some((k, v)) => format!("  {k}={v}\n"),
                        None => format!("{l}\n"),
                    }
                })
                .collect();
            std::fs::write(db.join(&options), edited).unwrap();
            let before = names_of(&db);
            ok(&db, &["compact"], None);
            let live = live_of(&db);
            let new: Vec<&LiveTable> = live.tables.iter().filter(|t| !before.contains(&t.name)).collect();
            assert!(!new.is_empty(), "variant {i}: no table rewritten {live:?}");
            let (mut blocks, mut partitions) = (0, 0);
            for t in new {
                let bytes = std::fs::read(db.join(&t.name)).unwrap();
                let r = check_table(&t.name, &bytes).unwrap_or_else(|e| panic!("variant {i}: {e}"));
                assert_eq!((r.format_version, r.checksum), (*version, *want), "variant {i}");
                let codec = match extra.iter().find(|(k, _)| *k == "compression") {
                    Some((_, "kSnappyCompression")) => 1,
                    Some((_, "kLZ4Compression")) => 4,
                    Some((_, "kZSTD")) => 7,
                    _ => 0,
                };
                assert_eq!(r.index_compression, codec, "variant {i}: {r:?}");
                if let Some(note) = &r.note {
                    assert!(note.starts_with("index compressed with ZSTD: data blocks not walked"), "{note}");
                    assert!(!r.data_blocks_walked && r.data_blocks == 0 && r.meta_blocks >= 3, "{r:?}");
                    blocks += r.properties_data_blocks.unwrap();
                    continue;
                }
                assert!(r.data_blocks_walked && r.data_blocks > 0, "variant {i}: {r:?}");
                blocks += r.data_blocks;
                assert_eq!(r.properties_data_blocks, Some(r.data_blocks), "variant {i}");
                if extra.iter().any(|(k, _)| *k == "filter_policy") {
                    assert!(r.meta_blocks >= 4, "variant {i}: {r:?}");
                }
                // The options took: the index is what they asked for.
                let want_type = match extra.iter().find(|(k, _)| *k == "index_type") {
                    Some((_, "kTwoLevelIndexSearch")) => 2,
                    Some((_, "kBinarySearchWithFirstKey")) => 3,
                    _ => 0,
                };
                assert_eq!((r.index_type, r.index_value_delta), (want_type, *version >= 4), "variant {i}");
                assert_eq!(r.index_partitions > 0, want_type == 2, "variant {i}: {r:?}");
                partitions += r.index_partitions;
                // Damage found wherever it is, unless nothing is summed.
                if *want != C::None {
                    for at in [bytes.len() / 5, bytes.len() / 2, bytes.len() - 100] {
                        let mut bad = bytes.clone();
                        bad[at] ^= 1;
                        assert!(check_table(&t.name, &bad).is_err(), "variant {i}: byte {at}");
                    }
                }
            }
            assert!(blocks > 50, "variant {i}: {blocks} data blocks");
            assert!(partitions == 0 || partitions > blocks / 10, "variant {i}: {partitions} index partitions");
        }
    }

    #[test]
    fn real_rocksdb_with_blob_files() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        let blobs = ["--enable_blob_files", "--min_blob_size=64"];
        ok(&db, &["--create_if_missing", "put", "seed", "1"], None);
        for (from, to) in [(0, 3000), (3000, 4000)] {
            let mut args: Vec<&str> = SMALL.to_vec();
            args.extend(blobs);
            args.push("load");
            ok(&db, &args, Some(&lines(from, to, "blob")));
        }
        let mut args = blobs.to_vec();
        args.extend(["put", "last", "in the log"]);
        ok(&db, &args, None);
        let live = live_of(&db);
        check_against_dump(&db, &live);
        let blob: Vec<&LiveTable> = live.tables.iter().filter(|t| t.name.ends_with(".blob")).collect();
        assert!(!blob.is_empty(), "{live:?}");
        assert!(blob.iter().all(|t| t.meta.level == BLOB_FILE_LEVEL));
        for t in live.tables.iter().filter(|t| t.name.ends_with(".sst")) {
            check_table(&t.name, &std::fs::read(db.join(&t.name)).unwrap()).unwrap();
        }
        let drop = vec![blob[0].name.clone()];
        let (restored, without) = copies(tmp.path(), &db, &drop);
        let want = scans(&db, &["default"]);
        assert!(want[0].0 && want[0].1.contains("in the log"), "{want:?}");
        assert_eq!(scans(&restored, &["default"]), want);
        for (d, copy) in without {
            assert_ne!(scans(&copy, &["default"]), want, "RocksDB read the same contents without {d}");
        }
    }
}
