//! Backups of a live server over the wire protocol, in the layout
//! `mongodump` writes: `<db>/<coll>.bson` streamed from a cursor in `_id`
//! order (so an unchanged collection stores the same bytes and
//! deduplicates), `<db>/<coll>.metadata.json` (options, indexes, UUID,
//! type), users and roles with the `admin` database, and on a replica set
//! `oplog.bson`: the oplog entries written while the dump ran, from the
//! position recorded before it, so a restore replays to one instant (what
//! `mongodump --oplog` does).

use std::io::Write;

use bson::{Bson, Document, RawBsonRef, doc};
use coffer_sdk::{EntryMeta, Error, Sink, Timestamp, host};

use crate::bsonfile::{self, Ts};
use crate::client;
use crate::dump::{self, Filter};
use crate::uri::Uri;
use crate::wire::{CommandError, Conn, code};

/// Documents per batch asked of the server (the server still caps a batch
/// at 16 MiB).
const BATCH: i32 = 1000;
/// Longest file name most file systems take.
const MAX_FILE_NAME: usize = 255;

/// What the backup took, for attributes and the closing line.
#[derive(Default)]
pub struct LiveTotals {
    /// Collections (and time-series collections) with documents dumped.
    pub collections: u64,
    /// Views (metadata only).
    pub views: u64,
    /// Documents.
    pub documents: u64,
    /// BSON bytes of the documents.
    pub bson_bytes: u64,
    /// `(path of the .bson, documents)`.
    pub counts: Vec<(String, u64)>,
    /// Oplog entries captured, and their first and last `ts`.
    pub oplog: Option<(u64, Option<Ts>, Option<Ts>)>,
    /// Collections dropped while they were read.
    pub dropped: Vec<String>,
    /// The replica set's name.
    pub set: Option<String>,
    /// The oplog position recorded before the dump.
    pub start: Option<Ts>,
}

/// A collection to dump.
struct Coll {
    name: String,
    kind: String,
    options: Document,
    uuid: Option<String>,
    /// Time-series: the buckets collection whose documents are dumped.
    data_from: Option<String>,
}

/// Databases a full backup leaves out: the server's own.
fn skipped_db(db: &str, filter: &Filter) -> bool {
    matches!(db, "local" | "config") && !filter.databases.iter().any(|d| d == db)
}

/// System collections mongodump takes; the others are the server's.
fn takes_system(db: &str, coll: &str) -> bool {
    match coll {
        "system.users" | "system.roles" | "system.version" => db == "admin",
        "system.js" => true,
        _ => false,
    }
}

/// The file name stem of a collection: escaped, and shortened with a hash
/// when `<stem>.metadata.json` would be too long for a file name (the
/// metadata's `collectionName` keeps the real name for mongorestore).
pub fn file_stem(coll: &str) -> String {
    let esc = dump::escape(coll);
    let room = MAX_FILE_NAME - ".metadata.json".len();
    if esc.len() <= room {
        return esc;
    }
    let hash = name_hash(coll.as_bytes());
    let mut cut = room - "%24".len() - hash.len();
    // Never split a %XX escape.
    while let Some(p) = esc[..cut].rfind('%') {
        if cut - p >= 3 {
            break;
        }
        cut = p;
    }
    format!("{}%24{hash}", &esc[..cut])
}

/// 22 hex digits of a hash of `bytes` (FNV-1a 64 twice, seeded apart):
/// enough to keep shortened names apart.
fn name_hash(bytes: &[u8]) -> String {
    let fnv = |seed: u64| bytes.iter().fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    let a = fnv(0xcbf29ce484222325);
    let b = fnv(0x84222325cbf29ce4);
    format!("{a:016x}{:06x}", b >> 40)
}

fn run(conn: &mut Conn, db: &str, cmd: Document, what: &str) -> Result<Document, Error> {
    conn.run(db, cmd).map_err(|e| e.into_error(what))
}

/// The newest oplog entry's `ts`.
fn oplog_head(conn: &mut Conn) -> Result<Option<bson::Timestamp>, CommandError> {
    let batch = conn.cursor(
        "local",
        doc! { "find": "oplog.rs", "filter": {}, "sort": {"$natural": -1}, "limit": 1i32, "singleBatch": true,
        "projection": {"ts": 1i32} },
    )?;
    for d in batch.documents() {
        let d = d.map_err(|e| CommandError::Other(Error::Other(e)))?;
        if let Ok(Some(RawBsonRef::Timestamp(ts))) = d.get("ts") {
            return Ok(Some(ts));
        }
    }
    Ok(None)
}

/// The metadata file's JSON, as mongodump writes it (canonical extended
/// JSON of `options`, `indexes`, `uuid`, `collectionName`, `type`).
fn metadata_json(c: &Coll, indexes: &[Document]) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    if !c.options.is_empty() {
        m.insert("options".into(), Bson::Document(c.options.clone()).into_canonical_extjson());
    }
    m.insert(
        "indexes".into(),
        serde_json::Value::Array(indexes.iter().map(|i| Bson::Document(i.clone()).into_canonical_extjson()).collect()),
    );
    if let Some(u) = &c.uuid {
        m.insert("uuid".into(), serde_json::Value::String(u.clone()));
    }
    m.insert("collectionName".into(), serde_json::Value::String(c.name.clone()));
    m.insert("type".into(), serde_json::Value::String(c.kind.clone()));
    serde_json::to_vec(&serde_json::Value::Object(m)).expect("JSON values serialize")
}

/// Lists the collections of `db` that the filter takes.
fn collections(conn: &mut Conn, db: &str, filter: &Filter) -> Result<Vec<Coll>, Error> {
    let list = conn
        .collect(db, doc! { "listCollections": 1i32 })
        .map_err(|e| e.into_error(&format!("listing the collections of {db}")))?;
    let mut out = Vec::new();
    for entry in list {
        let Ok(name) = entry.get_str("name") else { continue };
        let kind = entry.get_str("type").unwrap_or("collection").to_string();
        if name.starts_with("system.") && !takes_system(db, name) {
            continue;
        }
        if !filter.takes(Some(db), name) {
            continue;
        }
        let options = entry.get_document("options").cloned().unwrap_or_default();
        let uuid = match entry.get_document("info").ok().and_then(|i| i.get("uuid")) {
            Some(Bson::Binary(b)) if b.bytes.len() == 16 => Some(b.bytes.iter().map(|x| format!("{x:02x}")).collect()),
            _ => None,
        };
        let data_from = match kind.as_str() {
            "collection" => Some(name.to_string()),
            "timeseries" => Some(format!("system.buckets.{name}")),
            _ => None,
        };
        out.push(Coll { name: name.to_string(), kind, options, uuid, data_from });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Streams the documents of `db.coll` (in `_id` order where it has that
/// index) into `entry`. Returns documents and bytes, and whether the
/// collection went away while it was read.
fn dump_documents(
    conn: &mut Conn,
    db: &str,
    coll: &str,
    entry: &mut coffer_sdk::EntryWriter,
    progress: &mut u64,
) -> Result<(u64, u64, bool), Error> {
    let what = format!("reading {db}.{coll}");
    let find = |hint: bool| {
        let mut cmd = doc! { "find": coll, "filter": {}, "batchSize": BATCH };
        if hint {
            cmd.insert("hint", doc! {"_id": 1i32});
        }
        cmd
    };
    let mut batch = match conn.cursor(db, find(true)) {
        Ok(b) => b,
        // No `_id` index (a capped collection made without one, a
        // clustered buckets collection on an old server): natural order.
        Err(CommandError::Server(e)) if matches!(e.code, code::BAD_VALUE | code::OPERATION_FAILED) => {
            host::debug(format!("{db}.{coll}: no _id index to read in order ({e}); reading in natural order"));
            conn.cursor(db, find(false)).map_err(|e| e.into_error(&what))?
        }
        Err(e) => return Err(e.into_error(&what)),
    };
    let (mut docs, mut bytes) = (0u64, 0u64);
    loop {
        host::check_cancelled()?;
        for d in batch.documents() {
            let d = d.map_err(|e| Error::Other(format!("{what}: {e}")))?;
            let raw = d.as_bytes();
            bsonfile::check_document(raw).map_err(|e| {
                Error::Other(format!("{what}: document {} from the server is not valid BSON: {e}", docs + 1))
            })?;
            entry.write_all(raw)?;
            docs += 1;
            bytes += raw.len() as u64;
            *progress += raw.len() as u64;
        }
        host::progress(*progress, None);
        if batch.id == 0 {
            return Ok((docs, bytes, false));
        }
        match conn.get_more(db, coll, batch.id, Some(BATCH), None) {
            Ok(b) => batch = b,
            Err(CommandError::Server(e))
                if matches!(e.code, code::QUERY_PLAN_KILLED | code::CURSOR_NOT_FOUND | code::NAMESPACE_NOT_FOUND) =>
            {
                host::debug(format!("{what}: {e}"));
                return Ok((docs, bytes, true));
            }
            Err(e) => return Err(e.into_error(&what)),
        }
    }
}

/// Copies the oplog from `start` (inclusive) into `oplog.bson`. With
/// filters, only entries of the databases taken (and transactions, whose
/// inner operations may touch them) are kept.
fn dump_oplog(
    conn: &mut Conn,
    start: bson::Timestamp,
    filter: &Filter,
    sink: &Sink,
    now: Timestamp,
) -> Result<(u64, Option<Ts>, Option<Ts>), Error> {
    let filtered = !(filter.databases.is_empty() && filter.collections.is_empty() && filter.exclude.is_empty());
    let what = "reading the oplog (local.oplog.rs) written during the backup";
    let mut batch = conn
        .cursor("local", doc! { "find": "oplog.rs", "filter": {"ts": {"$gte": start}}, "sort": {"$natural": 1i32}, "batchSize": BATCH })
        .map_err(|e| e.into_error(what))?;
    let mut entry = sink.add_entry(EntryMeta::file("oplog.bson", 0o644).mtime(now))?;
    let (mut n, mut first, mut last) = (0u64, None, None);
    let mut seen_start = false;
    loop {
        host::check_cancelled()?;
        for d in batch.documents() {
            let d = d.map_err(|e| Error::Other(format!("{what}: {e}")))?;
            let ts = match d.get("ts") {
                Ok(Some(RawBsonRef::Timestamp(t))) => t,
                _ => return Err(Error::Other(format!("{what}: an entry without a ts"))),
            };
            if !seen_start {
                if ts != start {
                    return Err(Error::Other(format!(
                        "the oplog rolled over during the backup: its oldest entry is now at {}:{}, after the \
                         position {}:{} recorded when the backup began, so the dump is not one point in time; \
                         make the oplog larger (replSetResizeOplog) or back up a smaller set of databases",
                        ts.time, ts.increment, start.time, start.increment
                    )));
                }
                seen_start = true;
            }
            if filtered {
                let ns = d.get_str("ns").unwrap_or_default();
                let db = ns.split_once('.').map(|(d, _)| d).unwrap_or(ns);
                let keep = ns == "admin.$cmd" || (!ns.is_empty() && filter.may_take_db(db));
                if !keep {
                    continue;
                }
            }
            entry.write_all(d.as_bytes())?;
            let t = Ts { time: ts.time, increment: ts.increment };
            first.get_or_insert(t);
            last = Some(t);
            n += 1;
        }
        if batch.id == 0 {
            break;
        }
        batch = conn.get_more("local", "oplog.rs", batch.id, Some(BATCH), None).map_err(|e| match e.code() {
            Some(code::CAPPED_POSITION_LOST) | Some(code::QUERY_PLAN_KILLED) => Error::Other(
                "the oplog rolled over while it was read: make the oplog larger (replSetResizeOplog)".into(),
            ),
            _ => e.into_error(what),
        })?;
    }
    if !seen_start {
        return Err(Error::Other(format!(
            "the oplog holds no entry at or after {}:{}, the position recorded when the backup began: it was \
             truncated; back up again",
            start.time, start.increment
        )));
    }
    entry.finish()?;
    Ok((n, first, last))
}

/// Backs up the server `uri` names.
pub fn snapshot(uri: &Uri, filter: &Filter, oplog: Option<bool>, sink: &Sink) -> Result<LiveTotals, Error> {
    let mut conn = client::connect(uri)?;
    let now: Timestamp = std::time::SystemTime::now().into();
    let build = run(&mut conn, "admin", doc! { "buildInfo": 1i32 }, "asking the server's version (buildInfo)")?;
    let version = build.get_str("version").unwrap_or("unknown").to_string();
    let role = client::role(&conn);
    host::info(format!(
        "MongoDB {version} at {} ({role}{})",
        conn.addr(),
        match &conn.hello.set_name {
            Some(s) => format!(" of replica set {s}"),
            None => String::new(),
        }
    ));
    let replica = conn.hello.set_name.is_some();
    let capture = match (oplog, replica) {
        (Some(true), false) => {
            return Err(Error::InvalidConfig(format!(
                "oplog: {} is not a replica-set member ({role}), so it has no oplog to make the backup one point \
                 in time; leave oplog unset",
                conn.addr()
            )));
        }
        (Some(o), _) => o,
        (None, r) => r,
    };
    if conn.hello.mongos {
        return Err(Error::Unsupported(format!(
            "{} is a mongos router: back up each shard's replica set (and the config servers) instead; a dump \
             through mongos is not consistent across shards",
            conn.addr()
        )));
    }
    let start = if capture {
        let head = oplog_head(&mut conn).map_err(|e| match e {
            CommandError::Server(s) if s.code == code::UNAUTHORIZED => Error::AccessDenied(format!(
                "reading the oplog (local.oplog.rs) to make the backup one point in time: the server refused: {s}; \
                 give the user the `backup` role, or set oplog=false to back up without a consistent point"
            )),
            e => e.into_error("reading the oplog's newest entry"),
        })?;
        Some(head.ok_or_else(|| Error::Other("the replica set's oplog is empty: is the set initiated?".into()))?)
    } else {
        if !replica {
            host::warn(format!(
                "{} is a standalone server: it has no oplog, so writes during the backup may be partly in it \
                 (run a replica set, even of one member, for consistent backups)",
                conn.addr()
            ));
        }
        None
    };
    sink.set_attribute("mongodb.mode", "live")?;
    sink.set_attribute("mongodb.server-version", &version)?;
    sink.set_attribute("mongodb.member", conn.addr())?;
    sink.set_attribute("mongodb.role", role)?;
    if let Some(s) = conn.hello.set_name.clone() {
        sink.set_attribute("mongodb.replica-set", &s)?;
    }

    let dbs = run(&mut conn, "admin", doc! { "listDatabases": 1i32, "nameOnly": true }, "listing the databases")?;
    let mut names: Vec<String> = dbs
        .get_array("databases")
        .map(|a| {
            a.iter().filter_map(|d| d.as_document().and_then(|d| d.get_str("name").ok()).map(str::to_string)).collect()
        })
        .unwrap_or_default();
    names.sort();
    names.retain(|db| !skipped_db(db, filter) && filter.may_take_db(db));
    for want in &filter.databases {
        if !names.contains(want) {
            host::warn(format!("database {want} (databases=) is not on the server, or this user may not see it"));
        }
    }
    let mut t = LiveTotals {
        set: conn.hello.set_name.clone(),
        start: start.map(|s| Ts { time: s.time, increment: s.increment }),
        ..LiveTotals::default()
    };
    let mut progress = 0u64;
    for db in &names {
        host::check_cancelled()?;
        let colls = collections(&mut conn, db, filter)?;
        if colls.is_empty() {
            continue;
        }
        let dir = dump::escape(db);
        sink.add_entry(EntryMeta::dir(dir.as_str(), 0o755).mtime(now))?.finish()?;
        for c in &colls {
            host::check_cancelled()?;
            let stem = file_stem(&c.name);
            let indexes = if c.kind == "view" {
                Vec::new()
            } else {
                match conn.collect(db, doc! { "listIndexes": c.name.as_str() }) {
                    Ok(i) => i,
                    Err(CommandError::Server(e)) if e.code == code::NAMESPACE_NOT_FOUND => {
                        t.dropped.push(format!("{db}.{}", c.name));
                        host::warn(format!("{db}.{} was dropped while the backup ran; it is left out", c.name));
                        continue;
                    }
                    Err(e) => return Err(e.into_error(&format!("listing the indexes of {db}.{}", c.name))),
                }
            };
            if let Some(source) = &c.data_from {
                let rel = format!("{dir}/{}.bson", file_stem(source));
                let mut entry = sink.add_entry(EntryMeta::file(rel.as_str(), 0o644).mtime(now))?;
                let (docs, bytes, dropped) = dump_documents(&mut conn, db, source, &mut entry, &mut progress)?;
                entry.finish()?;
                if dropped {
                    t.dropped.push(format!("{db}.{source}"));
                    host::warn(format!(
                        "{db}.{source} was dropped or renamed while it was read: the {docs} documents read before \
                         are stored{}",
                        if start.is_some() { ", and the oplog replays the drop" } else { "" }
                    ));
                }
                t.collections += 1;
                t.documents += docs;
                t.bson_bytes += bytes;
                t.counts.push((rel, docs));
            } else {
                t.views += 1;
            }
            let rel = format!("{dir}/{stem}.metadata.json");
            let mut entry = sink.add_entry(EntryMeta::file(rel.as_str(), 0o644).mtime(now))?;
            entry.write_all(&metadata_json(c, &indexes))?;
            entry.finish()?;
        }
    }
    if let Some(start) = start {
        t.oplog = Some(dump_oplog(&mut conn, start, filter, sink, now)?);
    }
    sink.set_attribute("mongodb.consistent", if start.is_some() { "true" } else { "false" })?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_without_splitting_an_escape() {
        let name = "é".repeat(200);
        let stem = file_stem(&name);
        assert!(stem.len() + ".metadata.json".len() <= MAX_FILE_NAME, "{}", stem.len());
        assert!(stem.contains("%24"));
        let head = stem.split("%24").next().unwrap();
        assert!(head.ends_with("%A9"), "{head}");
        assert_ne!(file_stem(&format!("{name}a")), file_stem(&format!("{name}b")));
        assert_eq!(file_stem("a/b c"), "a%2Fb%20c");
        assert_eq!(dump::unescape(&file_stem("a/b c")), "a/b c");
    }
}
