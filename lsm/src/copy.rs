//! The live set of a LevelDB or RocksDB database, and a copy of it made
//! consistently while the database is written.
//!
//! A database's state is what `CURRENT` and the manifest it names say:
//! live tables (immutable once written), write-ahead logs from a log
//! number on, and for RocksDB a few small files beside them (`OPTIONS`,
//! `IDENTITY`). A [`Flavor`] reads that state from the files' bytes;
//! [`copy_live_set`] copies it whatever the flavor.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;

use coffer_sdk::{EntryMeta, Error, FileOutcome, FileSource, Sink, Timestamp, host};

use crate::log::{LogFormat, log_complete_len_as};
use crate::{LsmError, parse_current};

/// A database flavor: how its manifest names its state.
pub trait Flavor {
    /// What the flavor's manifest says, beyond the live set.
    type Manifest: fmt::Debug + Clone + PartialEq + Eq;
    /// The database's name in messages (`LevelDB`, `RocksDB`).
    const NAME: &'static str;
    /// The record types its logs may hold.
    const LOG_FORMAT: LogFormat = LogFormat::LevelDb;
    /// True when the log the live set's `log_number` names always exists
    /// while the state is current (LevelDB records the number of the log
    /// it has just created), so that its absence, with newer logs listed,
    /// means a flush deleted it. RocksDB may record a number no log has
    /// (after recovery, the last replayed log's number plus one).
    const LOG_NUMBER_NAMES_A_LOG: bool = true;
    /// The live set: `current` is `CURRENT`'s bytes, `manifest` the bytes
    /// of the manifest it names, `names` the directory's file names.
    fn live_set(current: &[u8], manifest: &[u8], names: &[&str]) -> Result<LiveSet<Self::Manifest>, LsmError>;
    /// The names of the manifest's column families (RocksDB), in id order;
    /// none for a flavor without them.
    fn column_families(_manifest: &Self::Manifest) -> Vec<String> {
        Vec::new()
    }
}

/// A live table, as the manifest describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableMeta {
    /// File number (`NNNNNN.ldb`, `NNNNNN.sst`).
    pub number: u64,
    /// Level (0 to 6 by default).
    pub level: u32,
    /// Size in bytes.
    pub size: u64,
    /// The column family it belongs to (RocksDB; 0, the default one, for
    /// LevelDB).
    pub column_family: u32,
}

/// A live table found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTable {
    /// Its file name (`.ldb`, or `.sst` when only that exists).
    pub name: String,
    /// Number, level and size from the manifest.
    pub meta: TableMeta,
}

/// Files of the directory that are not part of the database state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeftOut {
    /// Tables no longer in the manifest (left by a compaction).
    pub obsolete_tables: Vec<String>,
    /// Logs older than the manifest's log number.
    pub old_logs: Vec<String>,
    /// Manifests other than the one `CURRENT` names.
    pub old_manifests: Vec<String>,
    /// `LOCK`, `LOG`, `LOG.old`, `CURRENT.bak`, temporary files, anything
    /// else.
    pub other: Vec<String>,
}

impl LeftOut {
    /// How many files were left out.
    pub fn len(&self) -> usize {
        self.obsolete_tables.len() + self.old_logs.len() + self.old_manifests.len() + self.other.len()
    }

    /// True when nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} obsolete tables, {} old logs, {} old manifests, {} other files",
            self.obsolete_tables.len(),
            self.old_logs.len(),
            self.old_manifests.len(),
            self.other.len()
        )?;
        if !self.other.is_empty() {
            write!(f, " ({})", self.other.join(", "))?;
        }
        Ok(())
    }
}

/// The files that make up a database, from `CURRENT`, the
/// manifest it names and the directory's file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSet<M> {
    /// The manifest's file name.
    pub manifest_name: String,
    /// What the manifest says.
    pub manifest: M,
    /// Logs numbered at least this are needed (0: every log listed).
    pub log_number: u64,
    /// Bytes of the manifest up to the end of its last complete edit.
    pub manifest_complete_len: usize,
    /// Bytes after it: an edit being appended when it was read.
    pub manifest_partial_tail: usize,
    /// The live tables present in the directory, by number.
    pub tables: Vec<LiveTable>,
    /// Live tables the directory lacks (a compaction removed them after
    /// the manifest was read, or the database is damaged).
    pub missing_tables: Vec<u64>,
    /// The logs the database replays on open, in number order.
    pub logs: Vec<String>,
    /// Other files of the state, small, stored from the bytes read
    /// (RocksDB's newest `OPTIONS` file and `IDENTITY`).
    pub extra: Vec<String>,
    /// Everything else.
    pub left_out: LeftOut,
}

impl<M> LiveSet<M> {
    /// Every file name of the database state: tables, logs, the manifest
    /// and `CURRENT`.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tables.iter().map(|t| t.name.clone()).collect();
        v.extend(self.logs.iter().cloned());
        v.extend(self.extra.iter().cloned());
        v.push(self.manifest_name.clone());
        v.push("CURRENT".into());
        v
    }
}

/// How many times the backup reads `CURRENT` and the manifest before it
/// gives up on a database that changes between every two reads.
pub const MAX_ROUNDS: usize = 10;

/// A file of the directory as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Its name in the directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Permission bits.
    pub mode: u32,
    /// False for directories and symlinks (never part of a database).
    pub is_file: bool,
}

/// What the backup of one database directory needs: the host in a plugin,
/// a fake directory in tests.
pub trait LsmDir {
    /// The directory's items.
    fn list(&mut self) -> Result<Vec<ListedFile>, Error>;
    /// A file's bytes; `None` when it no longer exists.
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Keeps the parent snapshot's copy of a file that has not changed;
    /// false when there is none to keep.
    fn reuse_unchanged(&mut self, file: &ListedFile) -> bool;
    /// Copies files as they are; for each, false when it vanished first.
    fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error>;
    /// Stores `bytes` as the file `file.name`.
    fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error>;
}

/// What the backup of a database directory did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyReport {
    /// The manifest stored.
    pub manifest: String,
    /// Live tables stored.
    pub tables: usize,
    /// Of those, kept unchanged from the parent snapshot without reading.
    pub tables_reused: usize,
    /// Tables copied that a later compaction made obsolete before the
    /// copy finished (stored, harmless: the database deletes them on open).
    pub tables_extra: usize,
    /// Logs stored.
    pub logs: usize,
    /// Bytes of partly appended records left off the end of the logs and
    /// the manifest.
    pub partial_bytes: u64,
    /// Reads of `CURRENT` and the manifest it took to find a state that
    /// did not change while it was copied.
    pub rounds: usize,
    /// Files of the directory left out, as of the last read.
    pub left_out: LeftOut,
    /// The column families of the state copied (RocksDB).
    pub column_families: Vec<String>,
}

/// One read of the database's state.
struct State<M> {
    current: Vec<u8>,
    manifest: Vec<u8>,
    live: LiveSet<M>,
    listed: BTreeMap<String, ListedFile>,
    /// The listing shows the manifest at the size that was read, and
    /// `CURRENT`, read again after the listing, still names it. A database
    /// deletes a log or table only after the manifest edit (or the new
    /// manifest named by `CURRENT`) that makes it obsolete is written; the
    /// listing reads the names first, then each file's size. So when the
    /// state is unchanged, every file it needs that was deleted before the
    /// names were read would have shown as a manifest grown or replaced:
    /// the logs listed are all of its logs. (A file deleted after the
    /// names were read fails to be read, and the state is read again.)
    unchanged: bool,
}

/// Reads `CURRENT`, the manifest it names, then lists the directory (in
/// that order, so that every live table is listed unless a compaction
/// removed it since). A manifest that vanished between the two reads (a
/// new one replaced it) is retried.
fn read_state<F: Flavor>(dir: &mut impl LsmDir, label: &str) -> Result<State<F::Manifest>, Error> {
    let mut last = String::new();
    for _ in 0..MAX_ROUNDS {
        let Some(current) = dir.read("CURRENT")? else {
            return Err(Error::Corrupt(format!(
                "{label}: no CURRENT file, so no way to tell which files hold the database; is it a {} \
                 directory?",
                F::NAME
            )));
        };
        let (name, _) = parse_current(&current).map_err(|e| Error::Corrupt(format!("{label}/{e}")))?;
        let Some(manifest) = dir.read(&name)? else {
            last = name;
            continue;
        };
        let listed: BTreeMap<String, ListedFile> = dir.list()?.into_iter().map(|f| (f.name.clone(), f)).collect();
        // CURRENT once more, after the listing: see `State::unchanged`.
        let current_after = dir.read("CURRENT")?;
        let names: Vec<&str> = listed.values().filter(|f| f.is_file).map(|f| f.name.as_str()).collect();
        let mut live = F::live_set(&current, &manifest, &names).map_err(|e| Error::Corrupt(format!("{label}/{e}")))?;
        // Directories, symlinks and special files are never part of a
        // database.
        live.left_out.other.extend(listed.values().filter(|f| !f.is_file).map(|f| f.name.clone()));
        let listed_manifest = listed.get(&live.manifest_name).map(|f| f.size);
        let unchanged =
            current_after.as_deref() == Some(&current[..]) && listed_manifest == Some(manifest.len() as u64);
        return Ok(State { current, manifest, live, listed, unchanged });
    }
    Err(Error::Corrupt(format!("{label}/CURRENT names {last}, which is not in the directory")))
}

/// Copies a LevelDB or RocksDB database consistently while it may be written.
///
/// A state is what one read of `CURRENT` and the manifest it names says:
/// its live tables, and the logs from its log number on that the listing
/// after it shows. That state's tables are immutable and hold every write
/// before its first log; its logs are append-only and are read in number
/// order, so what is read of them is a prefix of the writes after. The
/// copy is consistent when every one of the state's tables and logs could
/// still be read: it does not matter that the database moved on since. A
/// table or log that vanished first (a compaction or a flush deleted it),
/// a listing that shows newer logs but not the state's own (LevelDB), or a
/// manifest that grew or was replaced while the directory was listed
/// (then the listing may lack a log the state needs), means the state is
/// gone: the state is read again and only what is new is copied,
/// up to [`MAX_ROUNDS`] times. Unchanged tables are kept from the parent
/// snapshot without reading. The logs, the manifest and `CURRENT` are
/// stored from the bytes read (the manifest cut at its last complete
/// edit, each log at its last complete record). No file is stored twice.
/// `label` names the directory in messages.
pub fn copy_live_set<F: Flavor>(dir: &mut impl LsmDir, label: &str) -> Result<CopyReport, Error> {
    let mut report = CopyReport::default();
    // Tables stored (copied or reused).
    let mut stored: BTreeSet<String> = BTreeSet::new();
    let mut state = read_state::<F>(dir, label)?;
    let mut why = String::new();
    for round in 1..=MAX_ROUNDS {
        report.rounds = round;
        if round > 1 {
            let previous = (std::mem::take(&mut state.current), std::mem::take(&mut state.manifest));
            state = read_state::<F>(dir, label)?;
            // The same state again, still without a table it lists: not a
            // compaction in passing but a damaged database.
            if let Some(n) = state.live.missing_tables.first()
                && previous == (state.current.clone(), state.manifest.clone())
            {
                return Err(Error::Corrupt(format!(
                    "{label}: table {n:06} is not in the directory, yet {} lists it as a live table; the \
                     database is damaged",
                    state.live.manifest_name
                )));
            }
        }
        let mut whole = true;
        if let Some(n) = state.live.missing_tables.first() {
            whole = false;
            why = format!("table {n:06} of {} was deleted before it was copied", state.live.manifest_name);
        }
        // The state's first log is gone while newer ones are there: a
        // flush moved its writes into a table this state does not list.
        let live = &state.live;
        let first_log = live.logs.first().and_then(|l| crate::number(l.strip_suffix(".log")?));
        if F::LOG_NUMBER_NAMES_A_LOG && first_log.is_some_and(|n| n > live.log_number) && live.log_number != 0 {
            whole = false;
            why = format!("log {:06} of {} was deleted before it was read", live.log_number, live.manifest_name);
        }
        if !state.unchanged {
            whole = false;
            why = format!("{} was written to or replaced while the directory was listed", live.manifest_name);
        }
        if !whole {
            continue;
        }
        // The logs first, in number order, right after the listing (a
        // flush deletes the oldest soon); the immutable tables after.
        let mut logs: Vec<(String, Vec<u8>)> = Vec::new();
        for name in &state.live.logs {
            match dir.read(name)? {
                Some(bytes) => logs.push((name.clone(), bytes)),
                None => {
                    whole = false;
                    why = format!("log {name} was deleted before it was read");
                    break;
                }
            }
        }
        let mut extra: Vec<(String, Vec<u8>)> = Vec::new();
        for name in &state.live.extra {
            match dir.read(name)? {
                Some(bytes) => extra.push((name.clone(), bytes)),
                None => {
                    whole = false;
                    why = format!("{name} was replaced before it was read");
                    break;
                }
            }
        }
        if !whole {
            continue;
        }
        let mut to_copy = Vec::new();
        for t in &state.live.tables {
            if stored.contains(&t.name) {
                continue;
            }
            let f = &state.listed[&t.name];
            if f.size != t.meta.size {
                return Err(Error::Corrupt(format!(
                    "{label}/{}: the table is {} bytes; the manifest {} says {} (tables never change once written)",
                    t.name, f.size, state.live.manifest_name, t.meta.size
                )));
            }
            if dir.reuse_unchanged(f) {
                stored.insert(t.name.clone());
                report.tables_reused += 1;
            } else {
                to_copy.push(t.name.clone());
            }
        }
        for (name, added) in to_copy.iter().zip(dir.add_files(&to_copy)?) {
            if added {
                stored.insert(name.clone());
            } else {
                whole = false;
                why = format!("table {name} was deleted before it was copied");
            }
        }
        if !whole {
            continue;
        }
        let live: BTreeSet<&str> = state.live.tables.iter().map(|t| t.name.as_str()).collect();
        report.tables = live.len();
        report.tables_extra = stored.iter().filter(|n| !live.contains(n.as_str())).count();
        for (name, bytes) in &logs {
            let keep = log_complete_len_as(bytes, F::LOG_FORMAT);
            report.partial_bytes += (bytes.len() - keep) as u64;
            let mut file = state.listed[name].clone();
            file.size = keep as u64;
            dir.add_bytes(&file, &bytes[..keep])?;
            report.logs += 1;
        }
        for (name, bytes) in &extra {
            let mut file = state.listed[name].clone();
            file.size = bytes.len() as u64;
            dir.add_bytes(&file, bytes)?;
        }
        report.partial_bytes += state.live.manifest_partial_tail as u64;
        let manifest_file = state.listed.get(&state.live.manifest_name).cloned().unwrap_or(ListedFile {
            name: state.live.manifest_name.clone(),
            size: state.manifest.len() as u64,
            mtime: Timestamp::default(),
            mode: 0o644,
            is_file: true,
        });
        dir.add_bytes(&manifest_file, &state.manifest[..state.live.manifest_complete_len])?;
        let current_file = state.listed.get("CURRENT").cloned().unwrap_or(ListedFile {
            name: "CURRENT".into(),
            size: state.current.len() as u64,
            mtime: Timestamp::default(),
            mode: 0o644,
            is_file: true,
        });
        dir.add_bytes(&current_file, &state.current)?;
        report.manifest = state.live.manifest_name.clone();
        report.left_out = state.live.left_out.clone();
        report.column_families = F::column_families(&state.live.manifest);
        return Ok(report);
    }
    Err(Error::Unavailable(format!(
        "{label}: the database moved on before each of {MAX_ROUNDS} states read from its manifest could be copied \
         (the last time: {why}), so no consistent copy was made; run the backup again, or while the peer is less \
         busy"
    )))
}

/// The directory on the host, for [`copy_live_set`] inside the plugin.
pub struct HostDir<'a, 'b> {
    /// Host path of the directory.
    source: &'a str,
    /// Its path in the snapshot.
    rel: &'a str,
    /// Whether there is a parent snapshot to keep files from.
    has_parent: bool,
    sink: &'a Sink<'b>,
}

impl<'a, 'b> HostDir<'a, 'b> {
    /// The host directory `source`, stored as the snapshot directory `rel`
    /// (its files become `rel/NAME`); with `has_parent`, unchanged files
    /// may be kept from the parent snapshot.
    pub fn new(source: &'a str, rel: &'a str, has_parent: bool, sink: &'a Sink<'b>) -> Self {
        HostDir { source, rel, has_parent, sink }
    }

    /// The host path of the directory's file `name`.
    pub fn host_path(&self, name: &str) -> String {
        format!("{}/{name}", self.source.trim_end_matches('/'))
    }

    /// The snapshot path of the directory's file `name`.
    pub fn snapshot_path(&self, name: &str) -> String {
        if self.rel.is_empty() { name.to_string() } else { format!("{}/{name}", self.rel) }
    }
}

/// Files handed to the host per `add-files` call.
const ADD_FILES: usize = 500;

impl LsmDir for HostDir<'_, '_> {
    fn list(&mut self) -> Result<Vec<ListedFile>, Error> {
        let listing = host::list_dir(self.source)?;
        let mut out: Vec<ListedFile> = listing
            .items
            .into_iter()
            .map(|i| ListedFile {
                is_file: i.kind == coffer_sdk::EntryKind::File,
                name: i.name,
                size: i.size,
                mtime: i.mtime,
                mode: i.mode,
            })
            .collect();
        out.extend(listing.special.into_iter().chain(listing.not_utf8).map(|name| ListedFile {
            name,
            size: 0,
            mtime: Timestamp::default(),
            mode: 0,
            is_file: false,
        }));
        Ok(out)
    }

    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.host_path(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e).context(&path)),
        }
    }

    fn reuse_unchanged(&mut self, file: &ListedFile) -> bool {
        self.has_parent && self.sink.reuse_unchanged(&self.snapshot_path(&file.name), file.size, file.mtime, file.mode)
    }

    fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(ADD_FILES) {
            host::check_cancelled()?;
            let batch: Vec<FileSource> =
                chunk.iter().map(|n| FileSource { path: self.snapshot_path(n), source: self.host_path(n) }).collect();
            for (file, outcome) in batch.iter().zip(self.sink.add_files(&batch)?) {
                match outcome {
                    FileOutcome::Added(_) => out.push(true),
                    FileOutcome::Gone => out.push(false),
                    FileOutcome::Unreadable(why) => {
                        return Err(Error::Other(format!("{} cannot be read ({why})", file.source)));
                    }
                }
            }
        }
        Ok(out)
    }

    fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error> {
        let path = self.snapshot_path(&file.name);
        let mut w =
            self.sink.add_entry(EntryMeta::file(&path, file.mode).mtime(file.mtime).size_hint(bytes.len() as u64))?;
        w.write_all(bytes).map_err(|e| Error::from(e).context(&path))?;
        w.finish()?;
        Ok(())
    }
}

/// Backs up the database (of flavor `F`) in the host directory `source` as the
/// snapshot directory `rel` (its files become `rel/NAME`; the directory
/// entry itself is the caller's): see [`copy_live_set`]. With a parent
/// snapshot, live tables whose size, modification time and mode are
/// unchanged are kept from it without being read. Logs what was stored
/// and what was left out.
pub fn backup<F: Flavor>(source: &str, rel: &str, has_parent: bool, sink: &Sink) -> Result<CopyReport, Error> {
    host::check_cancelled()?;
    let mut dir = HostDir { source, rel, has_parent, sink };
    let r = copy_live_set::<F>(&mut dir, source)?;
    let mut msg = format!(
        "{} {source}: {} live tables ({} kept from the parent snapshot), {} logs, {}",
        F::NAME,
        r.tables,
        r.tables_reused,
        r.logs,
        r.manifest
    );
    if r.rounds > 1 {
        msg.push_str(&format!("; the database changed while it was copied, consistent after {} reads", r.rounds));
    }
    if r.tables_extra > 0 {
        msg.push_str(&format!("; {} tables copied became obsolete meanwhile", r.tables_extra));
    }
    if r.partial_bytes > 0 {
        msg.push_str(&format!("; {} bytes of records being appended left off", r.partial_bytes));
    }
    if !r.left_out.is_empty() {
        msg.push_str(&format!("; left out (not part of the database state): {}", r.left_out));
    }
    host::info(msg);
    Ok(r)
}

/// What the tests of the flavors share.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    use coffer_sdk::Error;

    use super::{ListedFile, LsmDir};

    /// The names in a directory, sorted.
    pub fn names_of(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    /// A directory on disk, copied into `out`.
    pub struct DiskDir {
        pub dir: PathBuf,
        pub out: PathBuf,
    }

    impl LsmDir for DiskDir {
        fn list(&mut self) -> Result<Vec<ListedFile>, Error> {
            Ok(names_of(&self.dir)
                .into_iter()
                .map(|name| {
                    let md = std::fs::metadata(self.dir.join(&name)).unwrap();
                    ListedFile {
                        name,
                        size: md.len(),
                        mtime: md.modified().unwrap().into(),
                        mode: 0o644,
                        is_file: md.is_file(),
                    }
                })
                .collect())
        }

        fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
            Ok(std::fs::read(self.dir.join(name)).ok())
        }

        fn reuse_unchanged(&mut self, _: &ListedFile) -> bool {
            false
        }

        fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error> {
            Ok(names.iter().map(|n| std::fs::copy(self.dir.join(n), self.out.join(n)).is_ok()).collect())
        }

        fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error> {
            std::fs::write(self.out.join(&file.name), bytes).unwrap();
            Ok(())
        }
    }
}
