//! Restores into a live server: collections created with their options,
//! documents inserted in unordered batches within the server's message
//! size, indexes built after the data, views last; then the backup's
//! `oplog.bson` replayed (and, for a point in time, the oplog stream's
//! items up to it) through `applyOps`, as `mongorestore --oplogReplay`
//! does.

use std::collections::BTreeMap;
use std::io::Read;

use bson::{Bson, Document, RawBsonRef, RawDocument, doc};
use coffer_sdk::{EntryKind, Error, SnapshotReader, host};

use crate::bsonfile::{DocumentStream, Ts};
use crate::dump::{self, DumpFile, Filter};
use crate::wire::{CommandError, Conn, code};

/// Room left in a message for the command around the documents.
const MESSAGE_SLACK: usize = 16 * 1024;
/// Oplog entries per `applyOps`.
const APPLY_BATCH: usize = 500;
/// `NamespaceExists`.
const NAMESPACE_EXISTS: i32 = 48;
/// `DuplicateKey`.
const DUPLICATE_KEY: i32 = 11000;

/// How to map namespaces (`ns_from`/`ns_to`): `db.coll` to `db.coll`, or
/// `db.*` to `db2.*`.
#[derive(Debug, Clone, Default)]
pub struct Renames {
    pairs: Vec<(String, String)>,
}

impl Renames {
    /// Pairs `from[i]` with `to[i]`.
    pub fn new(from: &[String], to: &[String]) -> Result<Renames, Error> {
        if from.len() != to.len() {
            return Err(Error::InvalidConfig(format!(
                "ns_from names {} namespaces and ns_to {}: give one target for each",
                from.len(),
                to.len()
            )));
        }
        for (f, t) in from.iter().zip(to) {
            let stars = |s: &str| s.matches('*').count();
            let ok = |s: &str| {
                s.split_once('.').is_some_and(|(d, c)| !d.is_empty() && !c.is_empty() && !d.contains('*'))
                    && (stars(s) == 0 || s.ends_with(".*") && stars(s) == 1)
            };
            if !ok(f) || !ok(t) || stars(f) != stars(t) {
                return Err(Error::InvalidConfig(format!(
                    "ns_from={f} ns_to={t}: write db.coll to db.coll, or db.* to db.* (a whole database)"
                )));
            }
        }
        Ok(Renames { pairs: from.iter().cloned().zip(to.iter().cloned()).collect() })
    }

    /// Where `db.coll` goes.
    pub fn map(&self, db: &str, coll: &str) -> (String, String) {
        for (f, t) in &self.pairs {
            if let (Some(fdb), Some(tdb)) = (f.strip_suffix(".*"), t.strip_suffix(".*")) {
                if fdb == db {
                    return (tdb.to_string(), coll.to_string());
                }
            } else if *f == format!("{db}.{coll}") {
                let (d, c) = t.split_once('.').expect("checked in new");
                return (d.to_string(), c.to_string());
            }
        }
        (db.to_string(), coll.to_string())
    }

    /// Where namespace `ns` goes (`db.coll`, or `db.$cmd`).
    pub fn map_ns(&self, ns: &str) -> String {
        match ns.split_once('.') {
            Some((db, "$cmd")) => {
                let (d, _) = self.map(db, "$cmd");
                // A whole-database rename moves its commands; a single
                // collection's does not.
                format!("{d}.$cmd")
            }
            Some((db, coll)) => {
                let (d, c) = self.map(db, coll);
                format!("{d}.{c}")
            }
            None => ns.to_string(),
        }
    }
}

/// What the restore is asked to do.
pub struct Plan<'a> {
    /// Which namespaces.
    pub filter: &'a Filter,
    /// Renames.
    pub renames: &'a Renames,
    /// Drop each collection before restoring it.
    pub drop: bool,
    /// Restore `admin.system.users` and `admin.system.roles`.
    pub users: bool,
    /// Replay the backup's `oplog.bson`.
    pub oplog_replay: bool,
    /// Stop the replay after this `ts` (point in time).
    pub until: Option<Ts>,
}

/// One collection in the snapshot.
#[derive(Default)]
struct Found {
    metadata: Option<String>,
    data: Option<String>,
}

/// Totals, for the closing line.
#[derive(Default, Debug)]
pub struct Restored {
    /// Collections restored.
    pub collections: u64,
    /// Views created.
    pub views: u64,
    /// Documents inserted.
    pub documents: u64,
    /// Documents refused as duplicates of an `_id` already there.
    pub duplicates: u64,
    /// Indexes built.
    pub indexes: u64,
    /// Oplog entries applied.
    pub applied: u64,
    /// The last oplog entry applied.
    pub last_applied: Option<Ts>,
}

fn server(what: &str) -> impl Fn(CommandError) -> Error + '_ {
    move |e| e.into_error(what)
}

/// Reads a whole metadata entry (small).
fn read_all(snapshot: &SnapshotReader, path: &str) -> Result<Vec<u8>, Error> {
    let mut r = snapshot.open(path)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| Error::from(e).context(path))?;
    Ok(out)
}

/// A metadata file's JSON as BSON (extended JSON decoded).
fn metadata_doc(bytes: &[u8], path: &str) -> Result<Document, Error> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::Other(format!("{path}: not JSON: {e}")))?;
    let b = Bson::try_from(v).map_err(|e| Error::Other(format!("{path}: not extended JSON: {e}")))?;
    match b {
        Bson::Document(d) => Ok(d),
        _ => Err(Error::Other(format!("{path}: not a JSON object"))),
    }
}

/// Restores `snapshot` into the server `conn` is connected to.
pub fn restore(conn: &mut Conn, snapshot: &SnapshotReader, plan: &Plan<'_>) -> Result<Restored, Error> {
    if !conn.hello.writable_primary {
        return Err(Error::Other(format!(
            "{} is not a writable primary: restore into the replica set's primary (readPreference does not apply \
             to restores)",
            conn.addr()
        )));
    }
    let mut colls: BTreeMap<(String, String), Found> = BTreeMap::new();
    let mut oplog = None;
    for e in snapshot.entries() {
        if e.kind != EntryKind::File {
            continue;
        }
        match dump::classify(&e.path) {
            Some(DumpFile::Collection { db: Some(db), coll }) => {
                colls.entry((dump::unescape(&db), coll)).or_default().data = Some(e.path)
            }
            Some(DumpFile::Metadata { db: Some(db), coll }) => {
                colls.entry((dump::unescape(&db), coll)).or_default().metadata = Some(e.path)
            }
            Some(DumpFile::Oplog) => oplog = Some(e.path),
            Some(DumpFile::Gzip { .. }) => {
                return Err(Error::Unsupported(format!(
                    "{} is gzip-compressed (mongodump --gzip); restore into a directory with --target and load it \
                     with mongorestore --gzip",
                    e.path
                )));
            }
            _ => {}
        }
    }
    let mut t = Restored::default();
    let max_message = conn.hello.max_message.saturating_sub(MESSAGE_SLACK).max(1 << 20);
    let max_batch = conn.hello.max_write_batch;
    let mut views: Vec<(String, String, Document)> = Vec::new();
    // Time-series collections' buckets: the file is `system.buckets.X`,
    // the metadata is `X`'s.
    let mut bucket_files: BTreeMap<(String, String), String> = BTreeMap::new();
    for ((db, stem), f) in &colls {
        if let (Some(real), Some(data)) = (stem.strip_prefix("system.buckets."), &f.data) {
            bucket_files.insert((db.clone(), real.to_string()), data.clone());
        }
    }
    for ((db, stem), f) in &colls {
        host::check_cancelled()?;
        if stem.starts_with("system.buckets.") {
            continue;
        }
        let meta = match &f.metadata {
            Some(p) => Some(metadata_doc(&read_all(snapshot, p)?, p)?),
            None => None,
        };
        let coll = meta
            .as_ref()
            .and_then(|m| m.get_str("collectionName").ok().map(str::to_string))
            .unwrap_or_else(|| dump::unescape(stem));
        if db == "admin"
            && coll.starts_with("system.")
            && (!plan.users || !matches!(coll.as_str(), "system.users" | "system.roles"))
        {
            if coll != "system.version" {
                host::info(format!("admin.{coll} is not restored (set restore_users=true for users and roles)"));
            }
            continue;
        }
        if !plan.filter.takes(Some(db), &dump::escape(&coll)) {
            continue;
        }
        let (tdb, tcoll) = plan.renames.map(db, &coll);
        let kind = meta.as_ref().and_then(|m| m.get_str("type").ok()).unwrap_or("collection").to_string();
        let options = meta.as_ref().and_then(|m| m.get_document("options").ok()).cloned().unwrap_or_default();
        if kind == "view" {
            views.push((tdb, tcoll, options));
            continue;
        }
        if plan.drop {
            match conn.run(&tdb, doc! { "drop": tcoll.as_str() }) {
                Ok(_) => {}
                Err(CommandError::Server(e)) if e.code == code::NAMESPACE_NOT_FOUND => {}
                Err(e) => return Err(e.into_error(&format!("dropping {tdb}.{tcoll}"))),
            }
        }
        if !(db == "admin" && coll.starts_with("system.")) {
            let mut create = doc! { "create": tcoll.as_str() };
            for (k, v) in options.iter() {
                // The UUID is the old collection's; a new one is made.
                if k != "uuid" {
                    create.insert(k.clone(), v.clone());
                }
            }
            match conn.run(&tdb, create) {
                Ok(_) => {}
                Err(CommandError::Server(e)) if e.code == NAMESPACE_EXISTS => {
                    host::info(format!("{tdb}.{tcoll} exists; documents are added to it (drop=true replaces it)"));
                }
                Err(e) => return Err(e.into_error(&format!("creating {tdb}.{tcoll}"))),
            }
        }
        let (data_path, data_coll) = if kind == "timeseries" {
            (bucket_files.get(&(db.clone(), coll.clone())).cloned(), format!("system.buckets.{tcoll}"))
        } else {
            (f.data.clone(), tcoll.clone())
        };
        if let Some(path) = data_path {
            let (n, dups) = insert_file(conn, snapshot, &path, &tdb, &data_coll, max_message, max_batch)?;
            t.documents += n;
            t.duplicates += dups;
        }
        if let Some(m) = &meta {
            t.indexes += create_indexes(conn, m, &tdb, &tcoll)?;
        }
        t.collections += 1;
    }
    for (db, coll, options) in views {
        let mut create = doc! { "create": coll.as_str() };
        create.extend(options);
        if plan.drop {
            let _ = conn.run(&db, doc! { "drop": coll.as_str() });
        }
        match conn.run(&db, create) {
            Ok(_) => t.views += 1,
            Err(CommandError::Server(e)) if e.code == NAMESPACE_EXISTS => {
                host::warn(format!("view {db}.{coll} exists and is kept (drop=true replaces it)"))
            }
            Err(e) => return Err(e.into_error(&format!("creating view {db}.{coll}"))),
        }
    }
    if let Some(path) = oplog.filter(|_| plan.oplog_replay) {
        let r = snapshot.open(&path)?;
        let mut replay = Replay::new(plan);
        replay.apply_stream(conn, r, &path)?;
        replay.flush(conn)?;
        t.applied += replay.applied;
        t.last_applied = replay.last;
    }
    Ok(t)
}

/// Inserts the documents of entry `path` into `db.coll` in unordered
/// batches; returns documents inserted and duplicates refused.
fn insert_file(
    conn: &mut Conn,
    snapshot: &SnapshotReader,
    path: &str,
    db: &str,
    coll: &str,
    max_message: usize,
    max_batch: usize,
) -> Result<(u64, u64), Error> {
    let mut docs = DocumentStream::new(snapshot.open(path)?);
    let mut batch: Vec<u8> = Vec::new();
    let mut offsets: Vec<usize> = Vec::new();
    let (mut inserted, mut dups) = (0u64, 0u64);
    let what = format!("inserting the documents of {path} into {db}.{coll}");
    loop {
        let next = docs.next_document().map_err(|e| Error::Other(format!("{path}: {e}")))?;
        let full = match next {
            Some(d) => batch.len() + d.as_bytes().len() > max_message || offsets.len() >= max_batch,
            None => true,
        };
        if full && !offsets.is_empty() {
            host::check_cancelled()?;
            let slices: Vec<&[u8]> = offsets
                .iter()
                .enumerate()
                .map(|(i, &s)| &batch[s..offsets.get(i + 1).copied().unwrap_or(batch.len())])
                .collect();
            let reply = conn
                .run_raw(db, doc! { "insert": coll, "ordered": false }, Some(("documents", &slices)))
                .map_err(server(&what))?;
            let (n, d) = write_result(&reply, &what)?;
            inserted += n;
            dups += d;
            batch.clear();
            offsets.clear();
        }
        match next {
            Some(d) => {
                offsets.push(batch.len());
                batch.extend_from_slice(d.as_bytes());
            }
            None => break,
        }
    }
    if dups > 0 {
        host::warn(format!("{db}.{coll}: {dups} documents have an _id that is already there; they were left out"));
    }
    Ok((inserted, dups))
}

/// `n` and the duplicate-key errors of an insert's reply; any other write
/// error fails the restore.
fn write_result(reply: &RawDocument, what: &str) -> Result<(u64, u64), Error> {
    let n = match reply.get("n") {
        Ok(Some(RawBsonRef::Int32(i))) => i as u64,
        Ok(Some(RawBsonRef::Int64(i))) => i as u64,
        _ => 0,
    };
    let mut dups = 0;
    if let Ok(errors) = reply.get_array("writeErrors") {
        for e in errors.into_iter().flatten() {
            let Some(e) = e.as_document() else { continue };
            let code = match e.get("code") {
                Ok(Some(RawBsonRef::Int32(c))) => c,
                _ => 0,
            };
            if code == DUPLICATE_KEY {
                dups += 1;
            } else {
                return Err(Error::Other(format!(
                    "{what}: the server refused document {}: {} (code {code})",
                    match e.get("index") {
                        Ok(Some(RawBsonRef::Int32(i))) => i.to_string(),
                        _ => "?".into(),
                    },
                    e.get_str("errmsg").unwrap_or("no message")
                )));
            }
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(Error::Other(format!("{what}: {}", wce.get_str("errmsg").unwrap_or("write concern error"))));
    }
    Ok((n, dups))
}

/// Builds the metadata's indexes (all but `_id_`) on `db.coll`.
fn create_indexes(conn: &mut Conn, meta: &Document, db: &str, coll: &str) -> Result<u64, Error> {
    let Ok(indexes) = meta.get_array("indexes") else { return Ok(0) };
    let mut specs = Vec::new();
    for i in indexes {
        let Some(spec) = i.as_document() else { continue };
        if spec.get_str("name").is_ok_and(|n| n == "_id_") {
            continue;
        }
        let mut spec = spec.clone();
        spec.remove("ns");
        specs.push(Bson::Document(spec));
    }
    if specs.is_empty() {
        return Ok(0);
    }
    let n = specs.len() as u64;
    conn.run(db, doc! { "createIndexes": coll, "indexes": specs })
        .map_err(server(&format!("building the indexes of {db}.{coll}")))?;
    Ok(n)
}

/// Applies oplog entries in order through `applyOps`.
pub struct Replay<'a> {
    plan: &'a Plan<'a>,
    pending: Vec<Bson>,
    /// Entries applied.
    pub applied: u64,
    /// The last entry applied (or skipped as before the start).
    pub last: Option<Ts>,
    /// Entries at or before this were applied already (a stream item that
    /// overlaps the backup's oplog).
    pub after: Option<Ts>,
    /// The replay reached [`Plan::until`].
    pub done: bool,
}

impl<'a> Replay<'a> {
    /// A replay for `plan`.
    pub fn new(plan: &'a Plan<'a>) -> Replay<'a> {
        Replay { plan, pending: Vec::new(), applied: 0, last: None, after: None, done: false }
    }

    /// Applies the entries of one `.bson` stream (the backup's oplog, or a
    /// stream item).
    pub fn apply_stream(&mut self, conn: &mut Conn, r: impl Read, name: &str) -> Result<(), Error> {
        let mut docs = DocumentStream::new(r);
        while let Some(d) = docs.next_document().map_err(|e| Error::Other(format!("{name}: {e}")))? {
            if self.done {
                return Ok(());
            }
            let entry = Document::try_from(d).map_err(|e| Error::Other(format!("{name}: an oplog entry: {e}")))?;
            self.push(conn, entry, name)?;
        }
        Ok(())
    }

    fn push(&mut self, conn: &mut Conn, mut entry: Document, name: &str) -> Result<(), Error> {
        let ts = match entry.get("ts") {
            Some(Bson::Timestamp(t)) => Ts { time: t.time, increment: t.increment },
            _ => return Err(Error::Other(format!("{name}: an oplog entry without a ts"))),
        };
        if self.after.is_some_and(|a| ts <= a) || self.last.is_some_and(|l| ts <= l) {
            return Ok(());
        }
        if self.plan.until.is_some_and(|u| ts > u) {
            self.done = true;
            return Ok(());
        }
        self.last = Some(ts);
        let op = entry.get_str("op").unwrap_or_default().to_string();
        let ns = entry.get_str("ns").unwrap_or_default().to_string();
        if op == "n" || ns.is_empty() {
            return Ok(());
        }
        let db = ns.split_once('.').map(|(d, _)| d).unwrap_or(&ns);
        if matches!(db, "local" | "config") {
            return Ok(());
        }
        if entry.get_bool("partialTxn").unwrap_or(false)
            || entry.get_document("o").is_ok_and(|o| o.get_bool("partialTxn").unwrap_or(false))
        {
            return Err(Error::Unsupported(format!(
                "{name}: the oplog entry at {ts} is part of a transaction spread over several entries, which \
                 replay does not apply yet; restore to a point before it (to_ts=) or load the dump with \
                 mongorestore --oplogReplay"
            )));
        }
        if op != "c" {
            let coll = ns.split_once('.').map(|(_, c)| c).unwrap_or_default();
            if !self.plan.filter.takes(Some(db), &dump::escape(coll)) {
                return Ok(());
            }
        } else if !self.plan.filter.may_take_db(db) {
            return Ok(());
        }
        strip_for_apply(&mut entry, self.plan.renames);
        self.pending.push(Bson::Document(entry));
        if self.pending.len() >= APPLY_BATCH {
            self.flush(conn)?;
        }
        Ok(())
    }

    /// Applies what is pending.
    pub fn flush(&mut self, conn: &mut Conn) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.pending);
        let n = ops.len() as u64;
        conn.run("admin", doc! { "applyOps": ops }).map_err(server("replaying the oplog (applyOps)"))?;
        self.applied += n;
        Ok(())
    }
}

/// Makes an entry fit for `applyOps` on another server: the collection
/// UUID (`ui`) is the old server's, and namespaces follow the renames;
/// a transaction's inner operations alike.
fn strip_for_apply(entry: &mut Document, renames: &Renames) {
    entry.remove("ui");
    if let Ok(ns) = entry.get_str("ns") {
        let mapped = renames.map_ns(ns);
        let (from_db, to_db) =
            (ns.split('.').next().unwrap_or("").to_string(), mapped.split('.').next().unwrap_or("").to_string());
        entry.insert("ns", mapped);
        if entry.get_str("op").is_ok_and(|o| o == "c")
            && let Ok(o) = entry.get_document_mut("o")
        {
            for key in ["create", "drop", "createIndexes", "dropIndexes", "collMod", "deleteIndexes"] {
                if let Ok(c) = o.get_str(key) {
                    let (d2, c2) = renames.map(&from_db, c);
                    if d2 == to_db {
                        o.insert(key, c2);
                    }
                }
            }
            if let Ok(inner) = o.get_array_mut("applyOps") {
                for op in inner.iter_mut() {
                    if let Bson::Document(d) = op {
                        strip_for_apply(d, renames);
                    }
                }
            }
        }
    }
}

/// Parses `to_ts` (`seconds:increment`) or `to_time` (RFC 3339 or Unix
/// seconds): the last oplog entry to apply.
pub fn parse_until(to_ts: Option<&str>, to_time: Option<&str>) -> Result<Option<Ts>, Error> {
    if let Some(s) = to_ts {
        let (a, b) = s.split_once(':').ok_or_else(|| {
            Error::InvalidConfig(format!("to_ts={s}: write seconds:increment, as the oplog's ts (1733590000:3)"))
        })?;
        let time = a.parse().map_err(|_| Error::InvalidConfig(format!("to_ts={s}: {a} is not seconds")))?;
        let increment = b.parse().map_err(|_| Error::InvalidConfig(format!("to_ts={s}: {b} is not a number")))?;
        return Ok(Some(Ts { time, increment }));
    }
    let Some(s) = to_time else { return Ok(None) };
    let seconds: i64 = match s.parse::<i64>() {
        Ok(n) => n,
        Err(_) => bson::DateTime::parse_rfc3339_str(s)
            .map_err(|_| {
                Error::InvalidConfig(format!("to_time={s}: write RFC 3339 (2026-12-07T18:30:00Z) or Unix seconds"))
            })?
            .timestamp_millis()
            .div_euclid(1000),
    };
    let time = u32::try_from(seconds).map_err(|_| Error::InvalidConfig(format!("to_time={s} is out of range")))?;
    Ok(Some(Ts { time, increment: u32::MAX }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_map_collections_and_databases() {
        let r = Renames::new(&["shop.orders".into(), "auth.*".into()], &["shop.orders_old".into(), "auth2.*".into()])
            .unwrap();
        assert_eq!(r.map("shop", "orders"), ("shop".into(), "orders_old".into()));
        assert_eq!(r.map("shop", "items"), ("shop".into(), "items".into()));
        assert_eq!(r.map("auth", "users"), ("auth2".into(), "users".into()));
        assert_eq!(r.map_ns("auth.$cmd"), "auth2.$cmd");
        assert!(Renames::new(&["a.*".into()], &["b.c".into()]).is_err());
        assert!(Renames::new(&["a".into()], &["b".into()]).is_err());
        assert!(Renames::new(&["a.b".into()], &[]).is_err());
    }

    #[test]
    fn entries_lose_their_uuid_and_follow_renames() {
        let r = Renames::new(&["a.*".into()], &["b.*".into()]).unwrap();
        let mut e = doc! { "op": "c", "ns": "a.$cmd", "ui": 1, "o": {"create": "x", "applyOps": [{"op": "i", "ns": "a.x", "ui": 2, "o": {"_id": 1}}]} };
        strip_for_apply(&mut e, &r);
        assert_eq!(e.get_str("ns").unwrap(), "b.$cmd");
        assert!(!e.contains_key("ui"));
        let inner = e.get_document("o").unwrap().get_array("applyOps").unwrap()[0].as_document().unwrap().clone();
        assert_eq!(inner.get_str("ns").unwrap(), "b.x");
        assert!(!inner.contains_key("ui"));
    }

    #[test]
    fn points_in_time_parse() {
        assert_eq!(parse_until(Some("100:3"), None).unwrap(), Some(Ts { time: 100, increment: 3 }));
        assert_eq!(
            parse_until(None, Some("1970-01-01T00:01:40Z")).unwrap(),
            Some(Ts { time: 100, increment: u32::MAX })
        );
        assert_eq!(parse_until(None, Some("100")).unwrap(), Some(Ts { time: 100, increment: u32::MAX }));
        assert!(parse_until(Some("x"), None).is_err());
        assert!(parse_until(None, Some("yesterday")).is_err());
        assert_eq!(parse_until(None, None).unwrap(), None);
    }
}
