//! coffer's `mongodb` plugin.
//!
//! - **Backup of a mongodump directory** (`--set dump_dir=DIR`): every
//!   `<db>/<coll>.bson` and `<db>/<coll>.metadata.json`, the collection
//!   files at the top, `oplog.bson` and `prelude.json`, stored under the
//!   same paths byte for byte. Each `.bson` is read one document at a time
//!   while it is copied and every document is checked element by element
//!   ([`bsonfile`]); damage is stored as the dump holds it, with a warning
//!   naming the document and its byte offset.
//! - **Verify** walks every `.bson` entry again (document counts against
//!   the backup's, oplog `ts` order) and checks every `.metadata.json`
//!   against what mongorestore and the server accept ([`dump`]).
//! - **Restore** into a directory (`--target DIR`) writes the mongodump
//!   layout back, byte for byte, for `mongorestore DIR`.
//!
//! Backing up a live server over the wire protocol (`url`) is not built
//! yet; its config fields are declared so that grants and TLS settings are
//! already the ones it will use.

pub mod archive;
pub mod bsonfile;
pub mod client;
pub mod dump;
pub mod follow;
pub mod live;
pub mod restore;
pub mod scram;
pub mod uri;
pub mod wire;

use std::fs;
use std::io::{Read, Write};

use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, EntryMeta, Error, Plugin, PluginInfo, RestoreOptions, Sink,
    SnapshotReader, Timestamp, VerifyReport, host,
};
use dump::{DumpFile, Filter};
use serde::Deserialize;

/// The plugin.
pub struct MongoDb;

/// `coffer backup mongodb --set dump_dir=DIR [--set databases=a,b]
/// [--set collections=db.coll,...] [--set exclude=db,db.coll,...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// A directory `mongodump` wrote (granted read-only).
    #[serde(default)]
    dump_dir: Option<String>,
    /// A file `mongodump --archive` wrote (granted read-only).
    #[serde(default)]
    archive_file: Option<String>,
    /// Restore into a directory as `dir` (the mongodump layout, the
    /// default) or `archive` (one `mongodump --archive` file).
    #[serde(default)]
    format: Option<String>,
    /// The archive's file name in the target directory (`format=archive`).
    #[serde(default)]
    archive_name: Option<String>,
    /// `mongodb://` or `mongodb+srv://` URL of a server: not built yet.
    #[serde(default)]
    url: Option<String>,
    /// User for the server; the URL's when absent.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    /// Password. The host fills it from `password_file` or `password_env`
    /// and never stores it.
    #[serde(default)]
    #[allow(dead_code)]
    password: Option<String>,
    /// Read by the host into `password`.
    #[serde(default)]
    #[allow(dead_code)]
    password_file: Option<String>,
    /// Read by the host into `password`.
    #[serde(default)]
    #[allow(dead_code)]
    password_env: Option<String>,
    /// Only these databases (none: all).
    #[serde(default)]
    databases: Vec<String>,
    /// Only these `db.coll` namespaces (none: all), besides `databases`.
    #[serde(default)]
    collections: Vec<String>,
    /// Never these databases (`db`) or namespaces (`db.coll`).
    #[serde(default)]
    exclude: Vec<String>,
    /// TLS: a CA certificate file trusted besides the system's; read by the
    /// host only.
    #[serde(default)]
    #[allow(dead_code)]
    ca_file: Option<String>,
    /// The client certificate the host presents; read by the host only.
    #[serde(default)]
    #[allow(dead_code)]
    cert_file: Option<String>,
    /// Its key; read by the host only, never by this plugin.
    #[serde(default)]
    #[allow(dead_code)]
    key_file: Option<String>,
    /// How strictly the host checks the server (read by the host).
    #[serde(default)]
    #[allow(dead_code)]
    tls_verify: Option<serde_json::Value>,
    /// Capture the oplog written during a live backup (`oplog.bson`), for
    /// one point in time: on by default on a replica set.
    #[serde(default)]
    oplog: Option<bool>,
    /// Restore: drop each collection before restoring it.
    #[serde(default)]
    drop: bool,
    /// Restore: namespaces to rename (`db.coll` or `db.*`), paired with
    /// `ns_to`.
    #[serde(default)]
    ns_from: Vec<String>,
    /// Restore: the new names.
    #[serde(default)]
    ns_to: Vec<String>,
    /// Restore: `admin.system.users` and `admin.system.roles` too.
    #[serde(default)]
    restore_users: bool,
    /// Restore: replay the backup's `oplog.bson` (default true).
    #[serde(default)]
    oplog_replay: Option<bool>,
    /// Restore to this point: RFC 3339 or Unix seconds.
    #[serde(default)]
    to_time: Option<String>,
    /// Restore to this oplog entry: `seconds:increment`.
    #[serde(default)]
    to_ts: Option<String>,
    /// Follow: cut an item at this many bytes.
    #[serde(default = "default_item_max_bytes")]
    item_max_bytes: usize,
    /// Follow: cut an item this many seconds after its first entry.
    #[serde(default = "default_item_max_seconds")]
    item_max_seconds: u64,
    /// Follow: where a first follow starts, `oldest` (the default: all the
    /// oplog holds) or `newest`.
    #[serde(default)]
    start: Option<String>,
    /// Follow: give up after failing this long (0: never).
    #[serde(default = "default_give_up")]
    give_up_after_seconds: u64,
}

fn default_item_max_bytes() -> usize {
    16 << 20
}

fn default_item_max_seconds() -> u64 {
    10
}

fn default_give_up() -> u64 {
    600
}

impl Config for MongoConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.url
            && !(u.starts_with("mongodb://") || u.starts_with("mongodb+srv://"))
        {
            return Err(ConfigError::field("url", "must start with mongodb:// or mongodb+srv://"));
        }
        if [self.url.is_some(), self.dump_dir.is_some(), self.archive_file.is_some()].iter().filter(|x| **x).count() > 1
        {
            return Err(ConfigError::field(
                "dump_dir",
                "give one of url (a server), dump_dir (a mongodump directory) or archive_file (a mongodump \
                 --archive file)",
            ));
        }
        if let Some(f) = &self.format
            && f != "dir"
            && f != "archive"
        {
            return Err(ConfigError::field("format", "is dir (the mongodump layout) or archive (one file)"));
        }
        if let Some(n) = &self.archive_name
            && (n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.'))
        {
            return Err(ConfigError::field("archive_name", "is a file name, without a directory"));
        }
        if let Some(d) = &self.dump_dir
            && !d.starts_with('/')
        {
            return Err(ConfigError::field("dump_dir", "must be an absolute path"));
        }
        for db in self.databases.iter().chain(self.exclude.iter().filter(|x| !x.contains('.'))) {
            if db.is_empty() || db.contains(['/', '\\', ' ', '"', '$', '\0']) {
                return Err(ConfigError::field("databases", format!("`{db}` is not a database name")));
            }
        }
        if self.item_max_bytes < 4096 || self.item_max_bytes > 1 << 30 {
            return Err(ConfigError::field("item_max_bytes", "must be between 4096 and 1073741824"));
        }
        if self.item_max_seconds == 0 {
            return Err(ConfigError::field("item_max_seconds", "must be at least 1"));
        }
        if let Some(s) = &self.start
            && s != "oldest"
            && s != "newest"
        {
            return Err(ConfigError::field("start", "is oldest or newest"));
        }
        if self.to_time.is_some() && self.to_ts.is_some() {
            return Err(ConfigError::field("to_ts", "give to_time or to_ts, not both"));
        }
        for ns in &self.collections {
            if !ns.split_once('.').is_some_and(|(d, c)| !d.is_empty() && !c.is_empty()) {
                return Err(ConfigError::field("collections", format!("`{ns}` is not a namespace `db.collection`")));
            }
        }
        Ok(())
    }
}

impl MongoConfig {
    fn uri(&self, url: &str) -> Result<uri::Uri, Error> {
        uri::Uri::parse(url, self.user.as_deref(), self.password.as_deref())
    }

    fn filter(&self) -> Filter {
        Filter {
            databases: self.databases.clone(),
            collections: self.collections.clone(),
            exclude: self.exclude.clone(),
        }
    }

    fn dump_dir(&self) -> Result<&str, Error> {
        self.dump_dir
            .as_deref()
            .map(|d| if d.len() > 1 { d.trim_end_matches('/') } else { d })
            .ok_or_else(|| Error::InvalidConfig("dump_dir: is required (a directory mongodump wrote)".into()))
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "dump_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "A directory mongodump wrote (<db>/<coll>.bson and .metadata.json, oplog.bson); granted read-only."},
    "archive_file": {"type": "string", "x-coffer-grant": "read-file", "description": "A file mongodump --archive wrote; granted read-only. Stored in the mongodump directory layout."},
    "format": {"type": "string", "enum": ["dir", "archive"], "description": "Restore into a directory: dir (the mongodump layout, the default) or archive (one mongodump --archive file for mongorestore --archive)."},
    "archive_name": {"type": "string", "description": "format=archive: the file's name in the target directory (default dump.archive)."},
    "url": {"type": "string", "x-coffer-grant": "connect", "description": "mongodb:// or mongodb+srv:// URL of a server; granted as an address (every host of a seed list; the SRV targets of a +srv name)."},
    "drop": {"type": "boolean", "description": "Restore into a server: drop each collection before restoring it."},
    "ns_from": {"type": "array", "items": {"type": "string"}, "description": "Restore: namespaces to rename, db.coll or db.* (comma-separated), paired with ns_to."},
    "ns_to": {"type": "array", "items": {"type": "string"}, "description": "Restore: the new names, in the order of ns_from."},
    "restore_users": {"type": "boolean", "description": "Restore: admin.system.users and admin.system.roles too (needs the restore role)."},
    "oplog_replay": {"type": "boolean", "description": "Restore: replay the backup's oplog.bson to its consistent point (default true)."},
    "to_time": {"type": "string", "description": "Restore to this point in time (RFC 3339 or Unix seconds): the backup, then the oplog stream up to it."},
    "to_ts": {"type": "string", "description": "Restore to this oplog entry (seconds:increment), inclusive."},
    "item_max_bytes": {"type": "integer", "description": "stream follow: cut an item at this many bytes (default 16 MiB)."},
    "item_max_seconds": {"type": "integer", "description": "stream follow: cut an item this many seconds after its first entry (default 10)."},
    "start": {"type": "string", "enum": ["oldest", "newest"], "description": "stream follow: where a first follow starts: oldest (all the oplog holds, the default) or newest."},
    "give_up_after_seconds": {"type": "integer", "description": "stream follow: stop after failing to reach the server this long (default 600; 0: never)."},
    "oplog": {"type": "boolean", "description": "Live backups of a replica set: capture the oplog written during the dump as oplog.bson, so a restore replays to one instant (default: true on a replica set)."},
    "user": {"type": "string", "description": "User to authenticate as (default: the URL's)."},
    "password": {"type": "string", "description": "Password; prefer password_file or password_env. Never stored."},
    "password_file": {"type": "string", "description": "File holding the password, read by the host."},
    "password_env": {"type": "string", "description": "Environment variable holding the password, read by the host."},
    "databases": {"type": "array", "items": {"type": "string"}, "description": "Only these databases (comma-separated with --set)."},
    "collections": {"type": "array", "items": {"type": "string"}, "description": "Only these namespaces db.collection (comma-separated), besides `databases`."},
    "exclude": {"type": "array", "items": {"type": "string"}, "description": "Leave out these databases (db) and namespaces (db.collection)."},
    "ca_file": {"type": "string", "x-coffer-grant": "tls-ca", "description": "TLS: PEM file of the CA that signed the server's certificate (tlsCAFile), trusted besides the system's; read by the host."},
    "cert_file": {"type": "string", "x-coffer-grant": "tls-client-cert", "description": "TLS: PEM client certificate the host presents (tlsCertificateKeyFile's certificate)."},
    "key_file": {"type": "string", "x-coffer-grant": "tls-client-key", "description": "TLS: its PEM private key; read by the host only, never by the plugin."},
    "tls_verify": {"type": ["string", "boolean"], "x-coffer-grant": "tls-verify", "description": "TLS: full (the default: chain and host name checked), chain (tlsAllowInvalidHostnames) or off (tlsInsecure)."}
  }
}"#;

/// Copy buffer.
const BUF: usize = 1 << 20;
/// Per-collection count attributes at most (the host takes 1024 attribute
/// writes a snapshot; the others need a few).
const MAX_COUNT_ATTRS: usize = 960;
/// Longest attribute key the host takes.
const MAX_ATTR_KEY: usize = 256;
/// Paths per `restore_files` call.
const RESTORE_BATCH: usize = 10_000;

/// The attribute holding the document count of the collection file `path`.
fn count_attr(path: &str) -> String {
    format!("mongodb.docs.{}", path.strip_suffix(".bson").unwrap_or(path))
}

/// One file of the dump to take.
struct Planned {
    /// Path in the dump and in the snapshot.
    rel: String,
    kind: DumpFile,
    mode: u32,
    mtime: Timestamp,
    size: u64,
}

/// A directory of the dump (one database), with the files taken from it.
struct PlannedDir {
    name: String,
    mode: u32,
    mtime: Timestamp,
}

/// Lists what to take from `dir`, warning about what is not a dump file.
fn plan(dir: &str, filter: &Filter) -> Result<(Vec<PlannedDir>, Vec<Planned>), Error> {
    let top = host::list_dir(dir)
        .map_err(|e| e.context(format!("listing the dump directory {dir} (is it a directory mongodump wrote?)")))?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for name in top.special.iter().chain(top.not_utf8.iter()) {
        skipped.push(name.clone());
    }
    for item in top.items {
        match item.kind {
            EntryKind::File => match dump::classify(&item.name) {
                Some(kind) => {
                    let take = match &kind {
                        DumpFile::Collection { coll, .. } | DumpFile::Metadata { coll, .. } => filter.takes(None, coll),
                        DumpFile::Gzip { coll: Some(coll), .. } => filter.takes(None, coll),
                        _ => true,
                    };
                    if take {
                        files.push(Planned {
                            rel: item.name,
                            kind,
                            mode: item.mode,
                            mtime: item.mtime,
                            size: item.size,
                        });
                    }
                }
                None => skipped.push(item.name),
            },
            EntryKind::Dir => {
                if !filter.may_take_db(&item.name) {
                    host::debug(format!("database {} is not taken (filters)", item.name));
                    continue;
                }
                let path = format!("{}/{}", dir.trim_end_matches('/'), item.name);
                let inner = host::list_dir(&path).map_err(|e| e.context(format!("listing {path}")))?;
                for name in inner.special.iter().chain(inner.not_utf8.iter()) {
                    skipped.push(format!("{}/{name}", item.name));
                }
                let before = files.len();
                for sub in inner.items {
                    let rel = format!("{}/{}", item.name, sub.name);
                    let kind = match (sub.kind, dump::classify(&rel)) {
                        (EntryKind::File, Some(kind)) => kind,
                        _ => {
                            skipped.push(rel);
                            continue;
                        }
                    };
                    let take = match &kind {
                        DumpFile::Collection { coll, .. } | DumpFile::Metadata { coll, .. } => {
                            filter.takes(Some(&item.name), coll)
                        }
                        DumpFile::Gzip { coll: Some(coll), .. } => filter.takes(Some(&item.name), coll),
                        _ => true,
                    };
                    if take {
                        files.push(Planned { rel, kind, mode: sub.mode, mtime: sub.mtime, size: sub.size });
                    }
                }
                if files.len() > before {
                    dirs.push(PlannedDir { name: item.name, mode: item.mode, mtime: item.mtime });
                }
            }
            EntryKind::Symlink => skipped.push(item.name),
        }
    }
    if !skipped.is_empty() {
        let shown: Vec<&str> = skipped.iter().take(20).map(String::as_str).collect();
        host::warn(format!(
            "skipped {} item{} of {dir} that mongodump does not write (not <db>/<coll>.bson, .metadata.json, \
             oplog.bson or prelude.json; symlinks are not followed): {}{}",
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if skipped.len() > shown.len() { ", ..." } else { "" }
        ));
    }
    Ok((dirs, files))
}

/// Copies what is read from `r` into `w`.
struct Tee<'a, R> {
    r: R,
    w: &'a mut coffer_sdk::EntryWriter,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(out)?;
        self.w.write_all(&out[..n])?;
        Ok(n)
    }
}

/// What a backup found, for attributes and the closing line.
#[derive(Default)]
struct Totals {
    collections: u64,
    documents: u64,
    bson_bytes: u64,
    metadata: u64,
    damaged: u64,
    counts: Vec<(String, u64)>,
    oplog: Option<bsonfile::FileCheck>,
    gzip: u64,
}

/// Copies one `.bson` file into `entry`, checking its documents.
fn copy_bson(
    src: &str,
    rel: &str,
    oplog: bool,
    entry: &mut coffer_sdk::EntryWriter,
) -> Result<bsonfile::FileCheck, Error> {
    let fd = fs::File::open(src).map_err(|e| Error::from(e).context(src))?;
    let tee = Tee { r: fd, w: entry };
    let (check, rest) = bsonfile::check_file(tee, oplog, host::cancelled).map_err(|e| {
        if e.reason == "cancelled" { Error::Cancelled } else { Error::Unavailable(format!("reading {src}: {e}")) }
    })?;
    if let Some(d) = &check.damage {
        host::warn(format!(
            "{rel}: {d}; stored as the dump holds it ({} valid documents before it), and verify will report it",
            check.documents
        ));
        // The rest of the file, byte for byte.
        let mut rest = rest;
        std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| Error::from(e).context(src))?;
    }
    for p in &check.order_problems {
        host::warn(format!("{rel}: {p}"));
    }
    Ok(check)
}

fn snapshot_dump(config: &MongoConfig, sink: &Sink) -> Result<(), Error> {
    let dir = config.dump_dir()?;
    let (dirs, files) = plan(dir, &config.filter())?;
    let filtered = !(config.databases.is_empty() && config.collections.is_empty() && config.exclude.is_empty());
    // With filters, the oplog and prelude alone are not what was asked for.
    let collections = files.iter().filter(|f| !matches!(f.kind, DumpFile::Oplog | DumpFile::Prelude)).count();
    if files.is_empty() || (filtered && collections == 0) {
        return Err(Error::Other(format!(
            "{dir} holds no mongodump files (<db>/<coll>.bson, .metadata.json, oplog.bson){}",
            if filtered { " that the filters take: check databases, collections and exclude" } else { "" }
        )));
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    for d in &dirs {
        sink.add_entry(EntryMeta::dir(d.name.as_str(), d.mode & 0o7777).mtime(d.mtime))?.finish()?;
    }
    let mut t = Totals::default();
    let mut done = 0u64;
    let mut buf = vec![0u8; BUF];
    for f in &files {
        host::check_cancelled()?;
        let src = format!("{}/{}", dir.trim_end_matches('/'), f.rel);
        let mut entry =
            sink.add_entry(EntryMeta::file(f.rel.as_str(), f.mode & 0o7777).mtime(f.mtime).size_hint(f.size))?;
        match &f.kind {
            DumpFile::Collection { .. } | DumpFile::Oplog => {
                let oplog = f.kind == DumpFile::Oplog;
                let check = copy_bson(&src, &f.rel, oplog, &mut entry)?;
                if check.damage.is_some() {
                    t.damaged += 1;
                }
                t.bson_bytes += check.bytes;
                if oplog {
                    t.oplog = Some(check);
                } else {
                    t.collections += 1;
                    t.documents += check.documents;
                    t.counts.push((f.rel.clone(), check.documents));
                }
            }
            DumpFile::Metadata { .. } | DumpFile::Prelude | DumpFile::Gzip { .. } => {
                let mut fd = fs::File::open(&src).map_err(|e| Error::from(e).context(&src))?;
                let mut held = Vec::new();
                loop {
                    let n = fd.read(&mut buf).map_err(|e| Error::from(e).context(&src))?;
                    if n == 0 {
                        break;
                    }
                    entry.write_all(&buf[..n])?;
                    // Metadata files are small; the first 16 MiB are checked.
                    if held.len() < 16 << 20 && !matches!(f.kind, DumpFile::Gzip { .. }) {
                        held.extend_from_slice(&buf[..n]);
                    }
                }
                match f.kind {
                    DumpFile::Metadata { .. } => {
                        t.metadata += 1;
                        let c = dump::check_metadata(&held);
                        for p in c.problems {
                            host::warn(format!("{}: {p}", f.rel));
                        }
                    }
                    DumpFile::Prelude => {
                        if serde_json::from_slice::<serde_json::Value>(&held).is_err() {
                            host::warn(format!("{}: not JSON", f.rel));
                        }
                    }
                    _ => t.gzip += 1,
                }
            }
        }
        let digest = entry.finish()?;
        done += digest.size;
        host::progress(done, Some(total));
    }
    sink.set_attribute("mongodb.mode", "dump")?;
    sink.set_attribute("mongodb.collections", &t.collections.to_string())?;
    sink.set_attribute("mongodb.documents", &t.documents.to_string())?;
    sink.set_attribute("mongodb.metadata-files", &t.metadata.to_string())?;
    sink.set_attribute("mongodb.damaged-files", &t.damaged.to_string())?;
    set_count_attributes(sink, &t.counts)?;
    if let Some(o) = &t.oplog {
        sink.set_attribute("mongodb.oplog-entries", &o.documents.to_string())?;
        if let (Some(first), Some(last)) = (o.first_ts, o.last_ts) {
            sink.set_attribute("mongodb.oplog-first", &first.to_string())?;
            sink.set_attribute("mongodb.oplog-last", &last.to_string())?;
        }
    }
    if t.gzip > 0 {
        sink.set_attribute("mongodb.gzip-files", &t.gzip.to_string())?;
        host::warn(format!(
            "{} files are gzip-compressed (mongodump --gzip): stored as they are, their documents not checked or counted",
            t.gzip
        ));
    }
    host::info(format!(
        "mongodump directory {dir}: {} collections, {} documents ({} bytes of BSON), {} metadata files{}{}",
        t.collections,
        t.documents,
        t.bson_bytes,
        t.metadata,
        match &t.oplog {
            Some(o) => format!(", oplog of {} entries", o.documents),
            None => String::new(),
        },
        if t.damaged > 0 { format!("; {} damaged .bson files stored as they are", t.damaged) } else { String::new() }
    ));
    Ok(())
}

/// Backs up a `mongodump --archive` file in the mongodump directory
/// layout: one walk records where each collection's documents lie, then
/// each collection is copied into its own `<db>/<coll>.bson` entry
/// (documents checked, CRCs compared), with the prelude's metadata as
/// `<db>/<coll>.metadata.json` and the oplog as `oplog.bson`.
fn snapshot_archive(config: &MongoConfig, file: &str, sink: &Sink) -> Result<(), Error> {
    use std::collections::BTreeSet;
    let plan = archive::plan_archive(file).map_err(|e| Error::Other(e.to_string()))?;
    if let Some(d) = &plan.damage {
        host::warn(format!("{d}; the collections the archive finished before it are stored"));
    }
    for p in &plan.problems {
        host::warn(p.to_string());
    }
    let filter = config.filter();
    let now: Timestamp = std::time::SystemTime::now().into();
    let prelude = &plan.prelude;
    let takes = |db: &str, coll: &str| filter.takes(Some(db), &dump::escape(coll));
    let mut dirs = BTreeSet::new();
    for c in prelude.collections.iter().filter(|c| !c.is_oplog() && takes(&c.db, &c.collection)) {
        dirs.insert(dump::escape(&c.db));
    }
    for n in plan.namespaces.iter().filter(|n| !n.is_oplog()) {
        let owner = n.prelude.map(|i| prelude.collections[i].collection.clone()).unwrap_or(n.collection.clone());
        if takes(&n.db, &owner) {
            dirs.insert(dump::escape(&n.db));
        }
    }
    for d in &dirs {
        sink.add_entry(EntryMeta::dir(d.as_str(), 0o755).mtime(now))?.finish()?;
    }
    let mut t = Totals::default();
    let mut fd = fs::File::open(file).map_err(|e| Error::from(e).context(file))?;
    let mut done = 0u64;
    for n in &plan.namespaces {
        host::check_cancelled()?;
        let entry_of = n.prelude.map(|i| &prelude.collections[i]);
        if entry_of.is_some_and(|c| c.kind.as_deref() == Some("view")) && n.documents == 0 {
            continue;
        }
        let rel = if n.is_oplog() {
            "oplog.bson".to_string()
        } else {
            let owner = entry_of.map(|c| c.collection.clone()).unwrap_or(n.collection.clone());
            if !takes(&n.db, &owner) {
                continue;
            }
            format!("{}/{}.bson", dump::escape(&n.db), live::file_stem(&n.collection))
        };
        let mut entry = sink.add_entry(EntryMeta::file(rel.as_str(), 0o644).mtime(now).size_hint(n.bytes))?;
        let stats = archive::copy_collection(&mut fd, &plan, n, &mut entry).map_err(|e| Error::Other(e.to_string()))?;
        entry.finish()?;
        for d in &stats.damage {
            host::warn(format!("{rel}: {d}; stored as the archive holds it"));
        }
        if !stats.damage.is_empty() {
            t.damaged += 1;
        }
        t.bson_bytes += stats.bytes;
        done += stats.bytes;
        host::progress(done, Some(plan.length));
        if n.is_oplog() {
            sink.set_attribute("mongodb.oplog-entries", &stats.documents.to_string())?;
        } else {
            t.collections += 1;
            t.documents += stats.documents;
            t.counts.push((rel, stats.documents));
        }
    }
    for c in &prelude.collections {
        if c.is_oplog() || c.metadata.is_empty() || !takes(&c.db, &c.collection) {
            continue;
        }
        let rel = format!("{}/{}.metadata.json", dump::escape(&c.db), live::file_stem(&c.collection));
        let mut entry = sink.add_entry(EntryMeta::file(rel.as_str(), 0o644).mtime(now))?;
        entry.write_all(c.metadata.as_bytes())?;
        entry.finish()?;
        t.metadata += 1;
    }
    sink.set_attribute("mongodb.mode", "archive")?;
    sink.set_attribute("mongodb.server-version", &prelude.header.server_version)?;
    sink.set_attribute("mongodb.collections", &t.collections.to_string())?;
    sink.set_attribute("mongodb.documents", &t.documents.to_string())?;
    sink.set_attribute("mongodb.metadata-files", &t.metadata.to_string())?;
    sink.set_attribute("mongodb.damaged-files", &t.damaged.to_string())?;
    set_count_attributes(sink, &t.counts)?;
    host::info(format!(
        "mongodump archive {file} (server {}): {} collections, {} documents ({} bytes of BSON), {} metadata files",
        prelude.header.server_version, t.collections, t.documents, t.bson_bytes, t.metadata
    ));
    Ok(())
}

/// Writes the snapshot as one `mongodump --archive` file into `dir`.
fn restore_archive(
    config: &MongoConfig,
    snapshot: &SnapshotReader,
    dir: &str,
    options: &RestoreOptions,
) -> Result<(), Error> {
    let name = config.archive_name.as_deref().unwrap_or("dump.archive");
    let path = format!("{}/{name}", dir.trim_end_matches('/'));
    if fs::metadata(&path).is_ok() && !options.force {
        return Err(Error::Other(format!("{path} exists; pass --force to overwrite it")));
    }
    let attrs: std::collections::BTreeMap<String, String> = snapshot.attributes().into_iter().collect();
    let version = attrs
        .get("mongodb.server-version")
        .filter(|v| archive::parse_server_version(v).is_some())
        .cloned()
        .unwrap_or_else(|| {
            host::warn("the snapshot does not name a server version; the archive says 0.0.0");
            "0.0.0".into()
        });
    // Metadata first: the prelude lists every collection.
    let mut collections = Vec::new();
    let mut data: Vec<(String, String, String)> = Vec::new();
    let mut oplog = None;
    let mut metadata_of = std::collections::BTreeMap::new();
    for e in snapshot.entries() {
        if e.kind != EntryKind::File || !options.includes(&e.path) {
            continue;
        }
        match dump::classify(&e.path) {
            Some(DumpFile::Metadata { db: Some(db), coll }) => {
                let mut r = snapshot.open(&e.path)?;
                let mut text = String::new();
                r.read_to_string(&mut text).map_err(|err| Error::from(err).context(&e.path))?;
                let name = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("collectionName").and_then(|n| n.as_str()).map(str::to_string))
                    .unwrap_or_else(|| dump::unescape(&coll));
                metadata_of.insert((db.clone(), coll.clone()), name.clone());
                collections.push(archive::CollectionMetadata::new(dump::unescape(&db), name, text));
            }
            Some(DumpFile::Collection { db: Some(db), coll }) => data.push((db, coll, e.path)),
            Some(DumpFile::Oplog) => oplog = Some(e.path),
            Some(DumpFile::Gzip { .. }) => {
                return Err(Error::Unsupported(format!(
                    "{} is gzip-compressed (mongodump --gzip); restore with format=dir",
                    e.path
                )));
            }
            _ => {}
        }
    }
    for (db, coll, _) in &data {
        let known = metadata_of.contains_key(&(db.clone(), coll.clone()))
            || coll
                .strip_prefix("system.buckets.")
                .is_some_and(|x| metadata_of.contains_key(&(db.clone(), x.to_string())));
        if !known {
            collections.push(archive::CollectionMetadata::new(dump::unescape(db), dump::unescape(coll), ""));
        }
    }
    if oplog.is_some() {
        collections.push(archive::CollectionMetadata::oplog());
    }
    let header = archive::ArchiveHeader::new(version, format!("coffer {}", env!("CARGO_PKG_VERSION")));
    let out =
        std::io::BufWriter::with_capacity(BUF, fs::File::create(&path).map_err(|e| Error::from(e).context(&path))?);
    let mut w = archive::ArchiveWriter::new(out, path.clone(), &header, &collections)
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut documents = 0u64;
    for (db, coll, entry) in &data {
        host::check_cancelled()?;
        let name = metadata_of.get(&(db.clone(), coll.clone())).cloned().unwrap_or_else(|| dump::unescape(coll));
        let written = w
            .write_collection(&dump::unescape(db), &name, snapshot.open(entry)?)
            .map_err(|e| Error::Other(e.to_string()))?;
        documents += written.documents;
    }
    if let Some(o) = &oplog {
        w.write_oplog(snapshot.open(o)?).map_err(|e| Error::Other(e.to_string()))?;
    }
    let (out, _) = w.finish().map_err(|e| Error::Other(e.to_string()))?;
    let file = out.into_inner().map_err(|e| Error::from(e.into_error()).context(&path))?;
    file.sync_all().map_err(|e| Error::from(e).context(&path))?;
    host::info(format!(
        "wrote {path}: {} collections, {documents} documents; load it with `mongorestore --archive={path}`",
        data.len()
    ));
    Ok(())
}

/// `mongodb:[set/]host:port,...` for a URL, without user or password (the
/// `+srv` name as it is, not its targets).
fn url_source(url: &str) -> Option<String> {
    let rest = url.strip_prefix("mongodb://").or_else(|| url.strip_prefix("mongodb+srv://"))?;
    let rest = rest.split(['?']).next().unwrap_or(rest);
    let after_user = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hosts = after_user.split('/').next().unwrap_or(after_user);
    let set = url.split_once('?').and_then(|(_, q)| {
        q.split('&')
            .find_map(|kv| kv.split_once('=').filter(|(k, _)| k.eq_ignore_ascii_case("replicaSet")).map(|(_, v)| v))
    });
    Some(match set {
        Some(s) => format!("mongodb:{s}/{hosts}"),
        None => format!("mongodb:{hosts}"),
    })
}

fn snapshot_live(config: &MongoConfig, url: &str, sink: &Sink) -> Result<(), Error> {
    let uri = config.uri(url)?;
    let t = live::snapshot(&uri, &config.filter(), config.oplog, sink)?;
    if let Some(set) = &t.set {
        // A later point in time needs the oplog stream from the backup's
        // consistent point on.
        let from = t.oplog.as_ref().and_then(|o| o.2).or(t.start);
        if let Some(from) = from {
            sink.need_stream(&follow::stream_name(set), follow::position(from))?;
        }
    }
    sink.set_attribute("mongodb.collections", &t.collections.to_string())?;
    sink.set_attribute("mongodb.views", &t.views.to_string())?;
    sink.set_attribute("mongodb.documents", &t.documents.to_string())?;
    sink.set_attribute("mongodb.damaged-files", "0")?;
    set_count_attributes(sink, &t.counts)?;
    if let Some((n, first, last)) = &t.oplog {
        sink.set_attribute("mongodb.oplog-entries", &n.to_string())?;
        if let (Some(first), Some(last)) = (first, last) {
            sink.set_attribute("mongodb.oplog-first", &first.to_string())?;
            sink.set_attribute("mongodb.oplog-last", &last.to_string())?;
        }
    }
    if !t.dropped.is_empty() {
        sink.set_attribute("mongodb.dropped-during-backup", &t.dropped.join(","))?;
    }
    host::info(format!(
        "{}: {} collections, {} views, {} documents ({} bytes of BSON){}",
        uri.display,
        t.collections,
        t.views,
        t.documents,
        t.bson_bytes,
        match &t.oplog {
            Some((n, _, _)) => format!(", {n} oplog entries written during the backup"),
            None => String::new(),
        }
    ));
    Ok(())
}

/// The per-collection document counts, as many as the host takes.
fn set_count_attributes(sink: &Sink, counts: &[(String, u64)]) -> Result<(), Error> {
    let mut unrecorded = 0u64;
    let mut written = 0usize;
    for (rel, n) in counts {
        let key = count_attr(rel);
        if key.len() > MAX_ATTR_KEY || written >= MAX_COUNT_ATTRS {
            unrecorded += 1;
            continue;
        }
        sink.set_attribute(&key, &n.to_string())?;
        written += 1;
    }
    if unrecorded > 0 {
        sink.set_attribute("mongodb.docs-unrecorded", &unrecorded.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Restore

/// Restores into the server `url` names: the backup, its oplog to its
/// consistent point, and for `to_time`/`to_ts` the oplog stream's items up
/// to that point.
fn restore_live(config: &MongoConfig, url: &str, snapshot: &SnapshotReader) -> Result<(), Error> {
    let mut uri = config.uri(url)?;
    uri.read_preference = uri::ReadPreference::Primary;
    let until = restore::parse_until(config.to_ts.as_deref(), config.to_time.as_deref())?;
    let attrs: std::collections::BTreeMap<String, String> = snapshot.attributes().into_iter().collect();
    let parse_ts = |k: &str| {
        attrs
            .get(k)
            .and_then(|v| v.split_once(':'))
            .and_then(|(a, b)| Some(bsonfile::Ts { time: a.parse().ok()?, increment: b.parse().ok()? }))
    };
    let base_end = parse_ts("mongodb.oplog-last");
    let replay = config.oplog_replay.unwrap_or(true);
    if let (Some(u), Some(end)) = (until, base_end)
        && u < end
    {
        return Err(Error::Other(format!(
            "the point asked for ({u}) is before this backup's consistent point ({end}): the data would not be one              point in time; restore an older snapshot and roll it forward"
        )));
    }
    if until.is_some() && !replay {
        return Err(Error::InvalidConfig(
            "oplog_replay=false cannot restore to a point in time (to_time/to_ts)".into(),
        ));
    }
    let renames = restore::Renames::new(&config.ns_from, &config.ns_to)?;
    let filter = config.filter();
    let plan = restore::Plan {
        filter: &filter,
        renames: &renames,
        drop: config.drop,
        users: config.restore_users,
        oplog_replay: replay,
        until,
    };
    let mut conn = client::connect(&uri)?;
    let mut t = restore::restore(&mut conn, snapshot, &plan)?;
    let mut reached = t.last_applied.or(base_end);
    if let Some(u) = until {
        let stream = snapshot.needed_streams().into_iter().find(|(s, _)| s.starts_with("oplog-"));
        let base = base_end.ok_or_else(|| {
            Error::Other(
                "this snapshot has no oplog (a standalone server, or oplog=false), so it cannot be rolled forward to                  a point in time"
                    .into(),
            )
        })?;
        let Some((name, from)) = stream else {
            return Err(Error::Other(format!(
                "this snapshot names no oplog stream; it restores to its own point ({base}) only"
            )));
        };
        let reader = snapshot.streams();
        let mut replay = restore::Replay::new(&plan);
        replay.after = Some(base);
        let mut anchored = false;
        for item in reader.items(&name, Some(from)) {
            let item = item?;
            host::check_cancelled()?;
            let Some((first, last)) = follow::parse_key(&item.key) else {
                host::warn(format!(
                    "stream {name}: item {} is not named as this plugin names items; skipped",
                    item.key
                ));
                continue;
            };
            if last < base {
                continue;
            }
            if !anchored && first > base {
                return Err(Error::Other(format!(
                    "stream {name} has no entries between the backup's consistent point ({base}) and {first}: the                      follower was not running then; the latest point reachable from this backup is {base}"
                )));
            }
            anchored = true;
            let r = reader.open(&name, &item.key)?;
            replay.apply_stream(&mut conn, r, &format!("{name}/{}", item.key))?;
            if replay.done {
                break;
            }
        }
        replay.flush(&mut conn)?;
        t.applied += replay.applied;
        if replay.last.is_some() {
            reached = replay.last;
        }
        if !replay.done && replay.last.is_none_or(|l| l < u) {
            let end = reached.map(|r| r.to_string()).unwrap_or_else(|| "(no entries)".into());
            return Err(Error::Other(format!(
                "the oplog stream {name} ends at {end}, before the point asked for ({u}): the server now holds the \
                 data as of {end}; keep `coffer stream follow mongodb` running to reach later points"
            )));
        }
    }
    host::info(format!(
        "restored {} collections ({} documents{}), {} views, {} indexes into {}; {} oplog entries applied{}",
        t.collections,
        t.documents,
        if t.duplicates > 0 { format!(", {} duplicates left out", t.duplicates) } else { String::new() },
        t.views,
        t.indexes,
        conn.addr(),
        t.applied,
        match reached {
            Some(r) => format!(", to {r}"),
            None => String::new(),
        }
    ));
    Ok(())
}

fn restore_dir(snapshot: &SnapshotReader, dir: &str, options: &RestoreOptions) -> Result<(), Error> {
    let empty = fs::read_dir(dir).map_err(|e| Error::from(e).context(dir))?.next().is_none();
    if !empty && !options.force {
        return Err(Error::Other(format!(
            "{dir} is not empty; restore into an empty directory, or pass --force to overwrite the dump's files"
        )));
    }
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for e in snapshot.entries() {
        if !options.includes(&e.path) {
            continue;
        }
        match e.kind {
            EntryKind::Dir => {
                let dest = format!("{}/{}", dir.trim_end_matches('/'), e.path);
                fs::create_dir_all(&dest).map_err(|err| Error::from(err).context(&dest))?;
                dirs.push(e);
            }
            EntryKind::File => {
                if let Some((parent, _)) = e.path.rsplit_once('/') {
                    let dest = format!("{}/{parent}", dir.trim_end_matches('/'));
                    fs::create_dir_all(&dest).map_err(|err| Error::from(err).context(&dest))?;
                }
                files.push(e.path);
            }
            EntryKind::Symlink => {}
        }
    }
    if files.is_empty() && !options.include.is_empty() {
        return Err(Error::Other(format!("the snapshot holds no file named {}", options.include.join(", "))));
    }
    let mut bytes = 0u64;
    for batch in files.chunks(RESTORE_BATCH) {
        host::check_cancelled()?;
        bytes += snapshot.restore_files(batch)?;
    }
    // Directory times last: writing files into them changed them.
    for d in dirs.iter().rev() {
        host::set_metadata(&d.path, d.mode, d.mtime)?;
    }
    host::info(format!(
        "wrote {} files ({bytes} bytes) of the mongodump layout into {dir}; load them with `mongorestore {dir}`",
        files.len()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Verify

fn verify_dump(snapshot: &SnapshotReader, report: &mut VerifyReport) -> Result<(), Error> {
    let attrs: std::collections::BTreeMap<String, String> = snapshot.attributes().into_iter().collect();
    let mut documents = 0u64;
    let mut seen_counts = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; BUF];
    for e in snapshot.entries() {
        if e.kind != EntryKind::File {
            continue;
        }
        host::check_cancelled()?;
        let Some(kind) = dump::classify(&e.path) else {
            report.problem(&e.path, "not a file mongodump writes");
            continue;
        };
        match kind {
            DumpFile::Collection { .. } | DumpFile::Oplog => {
                let oplog = kind == DumpFile::Oplog;
                let r = snapshot.open(&e.path)?;
                let (check, mut rest) = bsonfile::check_file(r, oplog, host::cancelled).map_err(|err| {
                    if err.reason == "cancelled" {
                        Error::Cancelled
                    } else {
                        Error::Unavailable(format!("reading {}: {err}", e.path))
                    }
                })?;
                report.checked(check.documents + 1, check.bytes);
                if let Some(d) = &check.damage {
                    report.problem(&e.path, d.to_string());
                    // Read the rest, so that the whole entry is read back.
                    let n = std::io::copy(&mut rest, &mut std::io::sink())
                        .map_err(|err| Error::from(err).context(&e.path))?;
                    report.checked(0, n);
                } else if check.bytes != e.size {
                    report.problem(&e.path, format!("parsed {} bytes of {}", check.bytes, e.size));
                }
                for p in &check.order_problems {
                    report.problem(&e.path, p.clone());
                }
                let (recorded, what) = if oplog {
                    (attrs.get("mongodb.oplog-entries"), "entries")
                } else {
                    documents += check.documents;
                    let key = count_attr(&e.path);
                    seen_counts.insert(key.clone());
                    (attrs.get(&key), "documents")
                };
                if let Some(r) = recorded
                    && *r != check.documents.to_string()
                {
                    report.problem(&e.path, format!("holds {} {what}, the backup recorded {r}", check.documents));
                }
                if oplog && let (Some(first), Some(last)) = (check.first_ts, check.last_ts) {
                    report.note(format!("{}: {} entries from ts {first} to {last}", e.path, check.documents));
                }
            }
            DumpFile::Metadata { .. } | DumpFile::Prelude => {
                let mut r = snapshot.open(&e.path)?;
                let mut held = Vec::new();
                loop {
                    let n = r.read(&mut buf).map_err(|err| Error::from(err).context(&e.path))?;
                    if n == 0 {
                        break;
                    }
                    if held.len() < 16 << 20 {
                        held.extend_from_slice(&buf[..n]);
                    }
                    report.checked(0, n as u64);
                }
                report.checked(1, 0);
                if kind == DumpFile::Prelude {
                    if let Err(err) = serde_json::from_slice::<serde_json::Value>(&held) {
                        report.problem(&e.path, format!("not JSON: {err}"));
                    }
                    continue;
                }
                let c = dump::check_metadata(&held);
                for p in c.problems {
                    report.problem(&e.path, p);
                }
                for n in c.notes {
                    report.note(format!("{}: {n}", e.path));
                }
            }
            DumpFile::Gzip { .. } => {
                report.note(format!("{}: gzip-compressed (mongodump --gzip), not checked", e.path));
            }
        }
    }
    for key in attrs.keys().filter(|k| k.starts_with("mongodb.docs.")) {
        if !seen_counts.contains(key) {
            let path = format!("{}.bson", &key["mongodb.docs.".len()..]);
            report.problem(&path, "the backup recorded this collection file; the snapshot does not hold it");
        }
    }
    if let Some(r) = attrs.get("mongodb.documents")
        && *r != documents.to_string()
    {
        report.problem("(dump)", format!("its collections hold {documents} documents, the backup recorded {r}"));
    }
    report.note(format!("{documents} documents in the collection files"));
    Ok(())
}

/// With `url` granted: the backup's document counts beside the server's
/// now, as notes (the server has moved on since the backup; a collection
/// the server no longer has is named).
fn compare_with_server(
    config: &MongoConfig,
    url: &str,
    snapshot: &SnapshotReader,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let uri = config.uri(url)?;
    let mut conn = match client::connect(&uri) {
        Ok(c) => c,
        Err(e) => {
            report.note(format!("not compared with the server: {e}"));
            return Ok(());
        }
    };
    let mut compared = 0u64;
    let mut differ = 0u64;
    for (key, value) in snapshot.attributes() {
        let Some(path) = key.strip_prefix("mongodb.docs.") else { continue };
        let Some((db, stem)) = path.split_once('/') else { continue };
        let (db, coll) = (dump::unescape(db), dump::unescape(stem));
        host::check_cancelled()?;
        let r = conn.run(&db, bson::doc! { "count": coll.as_str() });
        let now = match r {
            Ok(d) => match d.get("n") {
                Some(bson::Bson::Int32(n)) => *n as i64,
                Some(bson::Bson::Int64(n)) => *n,
                Some(bson::Bson::Double(n)) => *n as i64,
                _ => continue,
            },
            Err(e) => {
                report.note(format!("{db}.{coll}: not counted on the server: {}", e.into_error("count")));
                continue;
            }
        };
        compared += 1;
        if now.to_string() != value {
            differ += 1;
            report.note(format!("{db}.{coll}: {value} documents in the backup, {now} on the server now"));
        }
    }
    report.note(format!(
        "compared {compared} collections' document counts with {}: {}",
        conn.addr(),
        if differ == 0 {
            "all equal".to_string()
        } else {
            format!("{differ} differ (the server changed since the backup)")
        }
    ));
    Ok(())
}

impl Plugin for MongoDb {
    type Config = MongoConfig;

    fn info() -> PluginInfo {
        PluginInfo::new(
            "mongodb",
            env!("CARGO_PKG_VERSION"),
            "MongoDB: mongodump directories (every BSON document checked), verify, restore into a directory for mongorestore",
        )
        .schema(SCHEMA)
        .restore_modes(true, true)
    }

    fn source(config: &MongoConfig) -> String {
        match (&config.dump_dir, &config.url) {
            (Some(d), _) => format!("mongodb:dump:{}", config.dump_dir().unwrap_or(d)),
            (None, _) if config.archive_file.is_some() => {
                format!("mongodb:archive:{}", config.archive_file.as_deref().unwrap_or_default())
            }
            // The seed list without the user or password: the same server
            // is the same source whoever backs it up.
            (None, Some(u)) => url_source(u).unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn capabilities(config: &MongoConfig) -> Vec<Capability> {
        config.dump_dir.iter().map(|d| Capability::ReadDir(d.clone())).collect()
    }

    fn snapshot(config: MongoConfig, _parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        match (&config.url, &config.archive_file) {
            (Some(url), _) => snapshot_live(&config, url, sink),
            (None, Some(file)) => snapshot_archive(&config, file, sink),
            (None, None) => snapshot_dump(&config, sink),
        }
    }

    fn restore(config: MongoConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        match (&options.directory, &config.url) {
            (Some(dir), _) if config.format.as_deref() == Some("archive") => {
                restore_archive(&config, snapshot, &dir.clone(), &options)
            }
            (Some(dir), _) => restore_dir(snapshot, &dir.clone(), &options),
            (None, Some(url)) => restore_live(&config, url, snapshot),
            (None, None) => Err(Error::InvalidConfig(
                "restore into a directory with --target DIR, or into a server with --set url=mongodb://...".into(),
            )),
        }
    }

    fn follow(config: MongoConfig, sink: &coffer_sdk::StreamSink) -> Result<(), Error> {
        let url = config.url.as_deref().ok_or_else(|| {
            Error::InvalidConfig("url: is required to follow a replica set's oplog (mongodb://...)".into())
        })?;
        let uri = config.uri(url)?;
        follow::follow(
            &uri,
            follow::Settings {
                max_bytes: config.item_max_bytes,
                max_age: std::time::Duration::from_secs(config.item_max_seconds),
                from_oldest: config.start.as_deref() != Some("newest"),
                give_up: std::time::Duration::from_secs(config.give_up_after_seconds),
            },
            sink,
        )
    }

    fn verify(config: MongoConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        verify_dump(snapshot, &mut report)?;
        if let Some(url) = &config.url {
            compare_with_server(&config, url, snapshot, &mut report)?;
        }
        Ok(report)
    }
}

coffer_sdk::export!(MongoDb);
