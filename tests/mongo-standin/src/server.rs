//! The server's state (databases, collections, the oplog, cursors) and its
//! commands, answered with the documents a MongoDB 7.0 server sends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Document, Timestamp, doc};

use crate::auth::{self, Conversation, Credential, Mechanism};
use crate::query::{self, QueryError, shell_string};
use crate::wire::{MAX_BSON_SIZE, MAX_MESSAGE_SIZE};
use crate::{Databases, FaultState, Options, lock};

/// The version a `buildInfo` reports.
const VERSION: &str = "7.0.14";
/// maxWireVersion of MongoDB 7.0.
const MAX_WIRE_VERSION: i32 = 21;
/// maxWriteBatchSize of MongoDB 3.6 and later.
const MAX_WRITE_BATCH: i32 = 100_000;
/// Documents in a first batch when the client names no batchSize.
const DEFAULT_FIRST_BATCH: usize = 101;
/// How long a tailable awaitData getMore waits without maxTimeMS.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);
/// The replica set's term (there are no elections).
const TERM: i64 = 1;

/// A command's error as the server reports it.
#[derive(Debug, Clone)]
pub(crate) struct CmdError {
    code: i32,
    name: &'static str,
    msg: String,
    /// A duplicate key's pattern and value (for keyPattern/keyValue).
    dup: Option<Box<(Document, Document)>>,
    /// Fields the error reply carries before `ok` (applyOps' `applied` and
    /// `results`).
    extra: Option<Box<Document>>,
}

fn err(code: i32, msg: impl Into<String>) -> CmdError {
    CmdError { code, name: code_name(code), msg: msg.into(), dup: None, extra: None }
}

impl From<QueryError> for CmdError {
    fn from(e: QueryError) -> Self {
        CmdError { code: e.code, name: e.code_name, msg: e.message, dup: None, extra: None }
    }
}

/// MongoDB's names of the error codes this server sends.
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        1 => "InternalError",
        2 => "BadValue",
        9 => "FailedToParse",
        11 => "UserNotFound",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        17 => "ProtocolError",
        18 => "AuthenticationFailed",
        26 => "NamespaceNotFound",
        27 => "IndexNotFound",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        48 => "NamespaceExists",
        50 => "MaxTimeMSExpired",
        59 => "CommandNotFound",
        66 => "ImmutableField",
        67 => "CannotCreateIndex",
        72 => "InvalidOptions",
        73 => "InvalidNamespace",
        85 => "IndexOptionsConflict",
        86 => "IndexKeySpecsConflict",
        91 => "ShutdownInProgress",
        96 => "OperationFailed",
        112 => "WriteConflict",
        136 => "CappedPositionLost",
        166 => "CommandNotSupportedOnView",
        175 => "QueryPlanKilled",
        189 => "PrimarySteppedDown",
        262 => "ExceededTimeLimit",
        334 => "MechanismUnavailable",
        10107 => "NotWritablePrimary",
        10334 => "BSONObjectTooLarge",
        11000 => "DuplicateKey",
        11600 => "InterruptedAtShutdown",
        11602 => "InterruptedDueToReplStateChange",
        13435 => "NotPrimaryNoSecondaryOk",
        _ => "UnknownError",
    }
}

/// `{ok: 0.0, errmsg, code, codeName}`.
pub(crate) fn error_doc(code: i32, code_name: &str, message: &str) -> Document {
    doc! { "ok": 0.0, "errmsg": message, "code": code, "codeName": code_name }
}

pub(crate) enum Outcome {
    Reply(Document),
    /// Close the connection without replying.
    Close,
}

type CmdResult = Result<Document, CmdError>;

/// One collection, view or time-series collection.
pub(crate) struct Collection {
    pub uuid: [u8; 16],
    /// `collection`, `view` or `timeseries`.
    pub kind: &'static str,
    /// The options of `create` as listCollections echoes them.
    pub options: Document,
    /// Index specs (`{v: 2, key, name, ...}`), `_id_` first.
    pub indexes: Vec<Document>,
    /// Documents in natural (insertion) order, by record id.
    pub docs: BTreeMap<u64, Document>,
    /// `_id` (as BSON bytes) to record id.
    by_id: HashMap<Vec<u8>, u64>,
    next_record: u64,
    /// Unique secondary indexes: name to (key bytes to record id).
    unique: HashMap<String, HashMap<Vec<u8>, u64>>,
    /// A capped collection's `max` (the oplog's entry cap).
    max_docs: Option<usize>,
    /// Records dropped off a capped collection so far (the last one's id).
    pub last_dropped: u64,
}

impl Collection {
    pub fn new(kind: &'static str, options: Document) -> Collection {
        let max_docs = if options.get_bool("capped").unwrap_or(false) {
            options.get("max").and_then(as_i64).filter(|m| *m > 0).map(|m| m as usize)
        } else {
            None
        };
        let indexes = if kind == "collection" && !is_no_id_index(&options) { vec![id_index()] } else { Vec::new() };
        Collection {
            uuid: *uuid::new_v4().as_bytes(),
            kind,
            options,
            indexes,
            docs: BTreeMap::new(),
            by_id: HashMap::new(),
            unique: HashMap::new(),
            next_record: 1,
            max_docs,
            last_dropped: 0,
        }
    }

    fn is_capped(&self) -> bool {
        self.options.get_bool("capped").unwrap_or(false)
    }

    fn has_id_index(&self) -> bool {
        self.indexes.iter().any(|i| i.get_str("name").ok() == Some("_id_"))
    }

    /// Adds a document; `Err` with the clashing key on a duplicate.
    fn push(&mut self, doc: Document) -> Result<u64, Box<DupKey>> {
        let key = doc.get("_id").map(id_key);
        if let Some(k) = &key
            && self.has_id_index()
            && self.by_id.contains_key(k)
        {
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            return Err(Box::new(DupKey {
                index: "_id_".into(),
                pattern: doc! { "_id": 1 },
                value: doc! { "_id": id },
            }));
        }
        self.check_unique(&doc, None)?;
        let rec = self.next_record;
        self.next_record += 1;
        if let Some(k) = key
            && self.has_id_index()
        {
            self.by_id.insert(k, rec);
        }
        self.add_unique(rec, &doc);
        self.docs.insert(rec, doc);
        if let Some(max) = self.max_docs {
            while self.docs.len() > max {
                let Some((old, d)) = self.docs.pop_first() else { break };
                if let Some(id) = d.get("_id") {
                    self.by_id.remove(&id_key(id));
                }
                self.remove_unique(&d);
                self.last_dropped = old;
            }
        }
        Ok(rec)
    }

    /// Rebuilds the `_id` lookup (after the `_id` index is replaced).
    fn rebuild_id_map(&mut self) {
        self.by_id = self.docs.iter().filter_map(|(r, d)| d.get("_id").map(|id| (id_key(id), *r))).collect();
    }

    fn remove(&mut self, rec: u64) -> Option<Document> {
        let d = self.docs.remove(&rec)?;
        if let Some(id) = d.get("_id") {
            self.by_id.remove(&id_key(id));
        }
        self.remove_unique(&d);
        Some(d)
    }

    /// The unique indexes other than `_id_`.
    fn unique_specs(&self) -> impl Iterator<Item = &Document> {
        self.indexes.iter().filter(|i| i.get("unique").is_some_and(truthy) && i.get_str("name").ok() != Some("_id_"))
    }

    /// A unique index's key for `doc`: its bytes and `{field: value}`, or
    /// `None` when a sparse or partial index leaves the document out.
    fn index_key(spec: &Document, doc: &Document) -> Option<(Vec<u8>, Document)> {
        let pattern = spec.get_document("key").ok()?;
        let mut value = Document::new();
        let mut normalized = Document::new();
        let mut any = false;
        for field in pattern.keys() {
            let v = query::get_path(doc, field).cloned();
            any |= v.is_some();
            let v = v.unwrap_or(Bson::Null);
            normalized.insert(field.clone(), normalize_number(&v));
            value.insert(field.clone(), v);
        }
        if !any && spec.get("sparse").is_some_and(truthy) {
            return None;
        }
        if let Ok(partial) = spec.get_document("partialFilterExpression")
            && !query::matches(doc, partial).unwrap_or(false)
        {
            return None;
        }
        Some((normalized.to_vec().unwrap_or_default(), value))
    }

    fn check_unique(&self, doc: &Document, except: Option<u64>) -> Result<(), Box<DupKey>> {
        for spec in self.unique_specs() {
            let name = spec.get_str("name").unwrap_or("").to_string();
            if let Some((bytes, value)) = Self::index_key(spec, doc)
                && let Some(rec) = self.unique.get(&name).and_then(|m| m.get(&bytes))
                && Some(*rec) != except
            {
                let pattern = spec.get_document("key").cloned().unwrap_or_default();
                return Err(Box::new(DupKey { index: name, pattern, value }));
            }
        }
        Ok(())
    }

    fn add_unique(&mut self, rec: u64, doc: &Document) {
        let keys: Vec<(String, Vec<u8>)> = self
            .unique_specs()
            .filter_map(|spec| Some((spec.get_str("name").ok()?.to_string(), Self::index_key(spec, doc)?.0)))
            .collect();
        for (name, bytes) in keys {
            self.unique.entry(name).or_default().insert(bytes, rec);
        }
    }

    fn remove_unique(&mut self, doc: &Document) {
        let keys: Vec<(String, Vec<u8>)> = self
            .unique_specs()
            .filter_map(|spec| Some((spec.get_str("name").ok()?.to_string(), Self::index_key(spec, doc)?.0)))
            .collect();
        for (name, bytes) in keys {
            if let Some(m) = self.unique.get_mut(&name) {
                m.remove(&bytes);
            }
        }
    }

    /// Rebuilds the unique indexes' maps (after an index is added or
    /// dropped); `Err` names the first duplicate found.
    fn rebuild_unique(&mut self) -> Result<(), Box<DupKey>> {
        let mut maps: HashMap<String, HashMap<Vec<u8>, u64>> = HashMap::new();
        for spec in self.unique_specs() {
            let name = spec.get_str("name").unwrap_or("").to_string();
            let map = maps.entry(name.clone()).or_default();
            for (rec, d) in &self.docs {
                if let Some((bytes, value)) = Self::index_key(spec, d)
                    && map.insert(bytes, *rec).is_some()
                {
                    let pattern = spec.get_document("key").cloned().unwrap_or_default();
                    return Err(Box::new(DupKey { index: name, pattern, value }));
                }
            }
        }
        self.unique = maps;
        Ok(())
    }

    fn find_id(&self, id: &Bson) -> Option<u64> {
        if self.has_id_index() {
            self.by_id.get(&id_key(id)).copied()
        } else {
            self.docs.iter().find(|(_, d)| d.get("_id") == Some(id)).map(|(r, _)| *r)
        }
    }

    /// Replaces a document (same `_id`); `Err` when it would clash with
    /// another under a unique index.
    fn replace(&mut self, rec: u64, doc: Document) -> Result<(), Box<DupKey>> {
        self.check_unique(&doc, Some(rec))?;
        if let Some(old) = self.docs.remove(&rec) {
            self.remove_unique(&old);
        }
        self.add_unique(rec, &doc);
        self.docs.insert(rec, doc);
        Ok(())
    }

    fn uuid_bson(&self) -> Bson {
        Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: self.uuid.to_vec() })
    }
}

/// A duplicate key under a unique index.
pub(crate) struct DupKey {
    index: String,
    pattern: Document,
    value: Document,
}

fn is_no_id_index(options: &Document) -> bool {
    options.get_bool("autoIndexId").ok() == Some(false)
}

fn id_index() -> Document {
    doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" }
}

/// A value's identity for `_id` uniqueness (its BSON encoding).
fn id_key(id: &Bson) -> Vec<u8> {
    let mut d = Document::new();
    d.insert("", normalize_number(id));
    d.to_vec().unwrap_or_default()
}

/// 1, 1L and 1.0 are the same `_id` to MongoDB.
fn normalize_number(v: &Bson) -> Bson {
    match v {
        Bson::Int32(i) => Bson::Double(f64::from(*i)),
        Bson::Int64(i) => Bson::Double(*i as f64),
        other => other.clone(),
    }
}

fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        other => as_i64(other).is_none_or(|n| n != 0),
    }
}

#[derive(Default)]
pub(crate) struct Database {
    pub colls: BTreeMap<String, Collection>,
}

/// A cursor's source for tailing: new records after `last_record` that
/// match `filter`.
struct Tail {
    filter: Document,
    last_record: u64,
    await_data: bool,
}

struct Cursor {
    db: String,
    coll: String,
    pending: VecDeque<Document>,
    tail: Option<Tail>,
    /// Documents still allowed by `limit`.
    remaining: Option<usize>,
    /// Who opened it (cursors are not shared between users).
    owner: Vec<(String, String)>,
}

pub(crate) struct State {
    pub dbs: Databases,
    cursors: HashMap<i64, Cursor>,
    last_ts: Timestamp,
    /// The retryable write being applied: its oplog entries carry the
    /// session, the transaction number, statement ids and the chain of
    /// previous optimes.
    session: Option<WriteSession>,
}

struct WriteSession {
    /// `{id: UUID, uid: SHA-256 of the user}`.
    lsid: Document,
    txn_number: i64,
    stmt_id: i32,
    prev: Option<Timestamp>,
}

/// What every connection thread shares.
pub(crate) struct Shared {
    pub options: Options,
    port: u16,
    pub state: Mutex<State>,
    pub changed: Condvar,
    pub faults: Arc<Mutex<FaultState>>,
    pub next_conn: AtomicI64,
    pub stopping: AtomicBool,
    pub sockets: Mutex<HashMap<i64, TcpStream>>,
    process_id: ObjectId,
}

/// A user's credentials and roles, read from `admin.system.users`.
struct StoredUser {
    sha1: Option<Credential>,
    sha256: Option<Credential>,
    roles: Vec<(String, String)>,
}

impl StoredUser {
    fn credential(&self, mech: Mechanism) -> Option<Credential> {
        match mech {
            Mechanism::Sha1 => self.sha1.clone(),
            Mechanism::Sha256 => self.sha256.clone(),
        }
    }
}

/// Per-connection state: who is authenticated and a SASL conversation.
pub(crate) struct Connection {
    id: i64,
    users: Vec<(String, String)>,
    /// The authenticated users' roles as `(role, db)`.
    roles: Vec<(String, String)>,
    conversation: Option<Conversation>,
    /// Whether the last command must not be compressed (hello, SASL).
    pub last_uncompressible: bool,
}

impl Connection {
    pub fn new(id: i64) -> Connection {
        Connection { id, users: Vec::new(), roles: Vec::new(), conversation: None, last_uncompressible: false }
    }
}

fn now_ts(last: Timestamp) -> Timestamp {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as u32;
    if secs > last.time {
        Timestamp { time: secs, increment: 1 }
    } else {
        Timestamp { time: last.time, increment: last.increment + 1 }
    }
}

/// Actions the role check knows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Read,
    Write,
    /// listCollections/listIndexes (read roles and restore).
    ListMeta,
    /// listDatabases of every database.
    ListAllDatabases,
    /// serverStatus, replSetGetStatus, getParameter...
    Monitor,
    ApplyOps,
    UserAdmin,
}

impl Shared {
    pub fn new(options: Options, port: u16) -> std::io::Result<Shared> {
        let mut credentials = HashMap::new();
        for u in &options.users {
            let c1 = Credential::derive(Mechanism::Sha1, &u.name, &u.password).map_err(std::io::Error::other)?;
            let c256 = Credential::derive(Mechanism::Sha256, &u.name, &u.password)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("user {}: {e}", u.name)))?;
            credentials.insert((u.db.clone(), u.name.clone()), (c1, c256));
            // (kept only until the users are written to admin.system.users)
        }
        let shared = Shared {
            port,
            state: Mutex::new(State {
                dbs: BTreeMap::new(),
                cursors: HashMap::new(),
                last_ts: Timestamp { time: 0, increment: 0 },
                session: None,
            }),
            changed: Condvar::new(),
            faults: Arc::new(Mutex::new(FaultState::default())),
            next_conn: AtomicI64::new(1),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            process_id: ObjectId::new(),
            options,
        };
        {
            let mut st = lock(&shared.state);
            if shared.options.replset.is_some() {
                let mut opts = doc! { "capped": true, "size": 1_073_741_824i64 };
                if let Some(max) = shared.options.oplog_max_entries {
                    opts.insert("max", max as i64);
                }
                let mut oplog = Collection::new("collection", opts);
                oplog.indexes.clear();
                st.dbs.entry("local".into()).or_default().colls.insert("oplog.rs".into(), oplog);
                shared.log_op(&mut st, "n", "", None, doc! { "msg": "initiating set" }, None);
                st.dbs.entry("local".into()).or_default().colls.insert(
                    "startup_log".into(),
                    Collection::new("collection", doc! { "capped": true, "size": 10_485_760 }),
                );
                let mut config = Collection::new("collection", Document::new());
                let _ = config.push(shared.replset_config());
                st.dbs.entry("local".into()).or_default().colls.insert("system.replset".into(), config);
            }
            if !shared.options.users.is_empty() {
                let mut docs = Vec::new();
                for u in &shared.options.users {
                    let (c1, c256) = &credentials[&(u.db.clone(), u.name.clone())];
                    let roles: Vec<Bson> =
                        u.roles.iter().map(|(r, d)| Bson::Document(doc! { "role": r, "db": d })).collect();
                    docs.push(doc! {
                        "_id": format!("{}.{}", u.db, u.name),
                        "userId": Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: uuid::new_v4().as_bytes().to_vec() }),
                        "user": &u.name,
                        "db": &u.db,
                        "credentials": { "SCRAM-SHA-1": c1.to_doc(), "SCRAM-SHA-256": c256.to_doc() },
                        "roles": roles,
                    });
                }
                shared
                    .insert_docs(&mut st, "admin", "system.users", docs, true)
                    .map_err(|e| std::io::Error::other(e.msg))?;
                shared
                    .insert_docs(
                        &mut st,
                        "admin",
                        "system.version",
                        vec![doc! { "_id": "authSchema", "currentVersion": 5 }],
                        true,
                    )
                    .map_err(|e| std::io::Error::other(e.msg))?;
            }
            if let Some(dir) = shared.options.load_dump.clone() {
                crate::dump::load(&shared, &mut st, &dir)?;
            }
        }
        Ok(shared)
    }

    /// Creates a collection from a dump's metadata (options, type, uuid,
    /// indexes) and inserts its documents.
    pub(crate) fn load_collection(
        &self,
        st: &mut State,
        db: &str,
        coll: &str,
        meta: &Document,
        docs: Vec<Document>,
    ) -> Result<(), String> {
        let options = meta.get_document("options").cloned().unwrap_or_default();
        let kind = match meta.get_str("type") {
            Ok("view") => "view",
            Ok("timeseries") => "timeseries",
            _ if options.contains_key("viewOn") => "view",
            _ if options.contains_key("timeseries") => "timeseries",
            _ => "collection",
        };
        let uuid = meta.get_str("uuid").ok().and_then(|h| {
            let h = h.replace('-', "");
            let bytes: Option<Vec<u8>> =
                (0..h.len() / 2).map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            bytes.and_then(|b| <[u8; 16]>::try_from(b).ok())
        });
        self.create_collection_with_uuid(st, db, coll, kind, options, uuid).map_err(|e| e.msg)?;
        if let Ok(indexes) = meta.get_array("indexes") {
            let c = Self::get_coll_mut(st, db, coll).expect("created");
            let uuid = c.uuid;
            let mut logged = Vec::new();
            for spec in indexes.iter().filter_map(Bson::as_document) {
                let mut spec = spec.clone();
                spec.remove("ns");
                if spec.get_str("name").ok() == Some("_id_") {
                    c.indexes.retain(|i| i.get_str("name").ok() != Some("_id_"));
                    c.indexes.insert(0, spec);
                    c.rebuild_id_map();
                } else if !c.indexes.iter().any(|i| i.get("name") == spec.get("name")) {
                    c.indexes.push(spec.clone());
                    logged.push(spec);
                }
            }
            for spec in logged {
                let mut o = doc! { "createIndexes": coll };
                for (k, v) in spec {
                    o.insert(k, v);
                }
                self.log_op(st, "c", &format!("{db}.$cmd"), Some(uuid), o, None);
            }
        }
        let (_, errors) = self.insert_docs(st, db, coll, docs, true).map_err(|e| e.msg)?;
        match errors.into_iter().next() {
            Some((i, e)) => Err(format!("document {i}: {}", e.msg)),
            None => Ok(()),
        }
    }

    pub fn documents(&self, db: &str, coll: &str) -> Vec<Document> {
        let st = lock(&self.state);
        st.dbs.get(db).and_then(|d| d.colls.get(coll)).map(|c| c.docs.values().cloned().collect()).unwrap_or_default()
    }

    pub fn insert_direct(&self, db: &str, coll: &str, docs: Vec<Document>) -> Result<(), String> {
        let mut st = lock(&self.state);
        let r = self.insert_docs(&mut st, db, coll, docs, true).map_err(|e| e.msg);
        self.changed.notify_all();
        match r? {
            (_, errors) if !errors.is_empty() => {
                Err(errors.into_iter().map(|(_, e)| e.msg).collect::<Vec<_>>().join("; "))
            }
            _ => Ok(()),
        }
    }

    /// A secondary of its set ([`crate::Options::secondary_of`]).
    fn is_secondary(&self) -> bool {
        self.is_replset() && self.options.secondary_of.is_some()
    }

    fn is_replset(&self) -> bool {
        self.options.replset.is_some()
    }

    // -----------------------------------------------------------------------
    // The oplog

    /// Appends an oplog entry (replica sets only) and returns its ts.
    pub(crate) fn log_op(
        &self,
        st: &mut State,
        op: &str,
        ns: &str,
        ui: Option<[u8; 16]>,
        o: Document,
        o2: Option<Document>,
    ) -> Timestamp {
        let ts = now_ts(st.last_ts);
        st.last_ts = ts;
        if !self.is_replset() {
            return ts;
        }
        let session = st.session.as_mut().filter(|_| matches!(op, "i" | "u" | "d"));
        let mut entry = Document::new();
        if let Some(s) = &session {
            entry.insert("lsid", s.lsid.clone());
            entry.insert("txnNumber", s.txn_number);
        }
        entry.insert("op", op);
        entry.insert("ns", ns);
        if let Some(ui) = ui {
            entry.insert("ui", Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: ui.to_vec() }));
        }
        entry.insert("o", o);
        if let Some(o2) = o2 {
            entry.insert("o2", o2);
        }
        entry.insert("ts", ts);
        entry.insert("t", TERM);
        entry.insert("v", 2i64);
        entry.insert("wall", DateTime::now());
        if let Some(s) = session {
            entry.insert("stmtId", s.stmt_id);
            let prev = match s.prev {
                Some(p) => doc! { "ts": p, "t": TERM },
                None => doc! { "ts": Timestamp { time: 0, increment: 0 }, "t": -1i64 },
            };
            entry.insert("prevOpTime", prev);
            s.stmt_id += 1;
            s.prev = Some(ts);
        }
        if let Some(oplog) = st.dbs.get_mut("local").and_then(|d| d.colls.get_mut("oplog.rs")) {
            let _ = oplog.push(entry);
        }
        ts
    }

    // -----------------------------------------------------------------------
    // Collections

    fn get_coll<'a>(st: &'a State, db: &str, coll: &str) -> Option<&'a Collection> {
        st.dbs.get(db).and_then(|d| d.colls.get(coll))
    }

    fn get_coll_mut<'a>(st: &'a mut State, db: &str, coll: &str) -> Option<&'a mut Collection> {
        st.dbs.get_mut(db).and_then(|d| d.colls.get_mut(coll))
    }

    /// Creates `db.coll` (logging `create`) unless it exists.
    fn create_collection(
        &self,
        st: &mut State,
        db: &str,
        coll: &str,
        kind: &'static str,
        options: Document,
    ) -> CmdResult {
        self.create_collection_with_uuid(st, db, coll, kind, options, None)
    }

    /// [`Self::create_collection`] with a given collection UUID (a dump's).
    fn create_collection_with_uuid(
        &self,
        st: &mut State,
        db: &str,
        coll: &str,
        kind: &'static str,
        options: Document,
        uuid: Option<[u8; 16]>,
    ) -> CmdResult {
        check_names(db, coll)?;
        if let Some(existing) = Self::get_coll(st, db, coll) {
            if existing.options == options && existing.kind == kind {
                return Ok(Document::new());
            }
            return Err(err(48, format!("Collection {db}.{coll} already exists.")));
        }
        if kind == "timeseries" {
            // A time-series collection is a view on `system.buckets.<name>`.
            let mut bucket_options = doc! { "clusteredIndex": true };
            if let Some(ts) = options.get("timeseries") {
                bucket_options.insert("timeseries", ts.clone());
            }
            let buckets = format!("system.buckets.{coll}");
            if Self::get_coll(st, db, &buckets).is_none() {
                self.create_collection_with_uuid(st, db, &buckets, "collection", bucket_options, uuid)?;
            }
        }
        let mut c = Collection::new(kind, options.clone());
        if let Some(u) = uuid {
            c.uuid = u;
        }
        let uuid = c.uuid;
        let mut o = doc! { "create": coll };
        for (k, v) in &options {
            o.insert(k.clone(), v.clone());
        }
        if kind == "collection" && !is_no_id_index(&options) && !options.contains_key("clusteredIndex") {
            o.insert("idIndex", id_index());
        }
        st.dbs.entry(db.to_string()).or_default().colls.insert(coll.to_string(), c);
        let ui = (kind == "collection").then_some(uuid);
        self.log_op(st, "c", &format!("{db}.$cmd"), ui, o, None);
        if kind == "view" {
            // A view is a document in system.views.
            let mut v = doc! { "_id": format!("{db}.{coll}") };
            if let Ok(on) = options.get_str("viewOn") {
                v.insert("viewOn", on);
            }
            v.insert("pipeline", options.get("pipeline").cloned().unwrap_or(Bson::Array(vec![])));
            if let Some(c) = options.get("collation") {
                v.insert("collation", c.clone());
            }
            if Self::get_coll(st, db, "system.views").is_none() {
                st.dbs
                    .entry(db.to_string())
                    .or_default()
                    .colls
                    .insert("system.views".into(), Collection::new("collection", Document::new()));
            }
            if let Some(views) = Self::get_coll_mut(st, db, "system.views") {
                let _ = views.push(v);
            }
        }
        Ok(Document::new())
    }

    /// Adds an index; a unique one over duplicate values fails as
    /// MongoDB's index build does, and is not added.
    fn add_index(st: &mut State, db: &str, coll: &str, spec: Document) -> Result<(), CmdError> {
        let c = Self::get_coll_mut(st, db, coll).expect("the caller made the collection");
        c.indexes.push(spec);
        if let Err(dup) = c.rebuild_unique() {
            c.indexes.pop();
            let _ = c.rebuild_unique();
            let h = query::hex(&c.uuid);
            let uuid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            let mut e = dup_key_error(db, coll, *dup);
            e.msg = format!("Index build failed: {uuid}: Collection {db}.{coll} ( {uuid} ) :: caused by :: {}", e.msg);
            return Err(e);
        }
        Ok(())
    }

    fn drop_collection(&self, st: &mut State, db: &str, coll: &str) -> Option<usize> {
        if Self::get_coll(st, db, coll).is_some_and(|c| c.kind == "timeseries") {
            self.drop_collection(st, db, &format!("system.buckets.{coll}"));
        }
        let c = st.dbs.get_mut(db)?.colls.remove(coll)?;
        let n = c.indexes.len();
        st.cursors.retain(|_, cur| !(cur.db == db && cur.coll == coll));
        let ui = (c.kind == "collection").then_some(c.uuid);
        self.log_op(
            st,
            "c",
            &format!("{db}.$cmd"),
            ui,
            doc! { "drop": coll },
            Some(doc! { "numRecords": c.docs.len() as i64 }),
        );
        if c.kind == "view"
            && let Some(views) = Self::get_coll_mut(st, db, "system.views")
        {
            let id = Bson::String(format!("{db}.{coll}"));
            if let Some(rec) = views.find_id(&id) {
                views.remove(rec);
            }
        }
        if st.dbs.get(db).is_some_and(|d| d.colls.is_empty()) {
            st.dbs.remove(db);
        }
        Some(n)
    }

    /// Inserts documents (creating the collection), logging each; stops at
    /// the first error. Returns `(inserted, errors as (index, error))`.
    fn insert_docs(
        &self,
        st: &mut State,
        db: &str,
        coll: &str,
        docs: Vec<Document>,
        ordered: bool,
    ) -> Result<(usize, Vec<(usize, CmdError)>), CmdError> {
        check_names(db, coll)?;
        match Self::get_coll(st, db, coll) {
            None => {
                self.create_collection(st, db, coll, "collection", Document::new())?;
            }
            Some(c) if c.kind == "view" => {
                return Err(err(166, format!("Namespace {db}.{coll} is a view, not a collection")));
            }
            Some(_) => {}
        }
        let ns = format!("{db}.{coll}");
        let mut n = 0;
        let mut errors = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            let size = doc.to_vec().map(|v| v.len()).unwrap_or(0);
            if size > MAX_BSON_SIZE {
                errors.push((
                    i,
                    err(10334, format!("object to insert too large. size in bytes: {size}, max size: {MAX_BSON_SIZE}")),
                ));
                if ordered {
                    break;
                }
                continue;
            }
            let doc = with_id_first(doc);
            let c = Self::get_coll_mut(st, db, coll).expect("created above");
            let uuid = c.uuid;
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            match c.push(doc.clone()) {
                Ok(_) => {
                    n += 1;
                    self.log_op(st, "i", &ns, Some(uuid), doc, Some(doc! { "_id": id }));
                }
                Err(dup) => {
                    errors.push((i, dup_key_error(db, coll, *dup)));
                    if ordered {
                        break;
                    }
                }
            }
        }
        Ok((n, errors))
    }

    // -----------------------------------------------------------------------
    // Authorization

    fn roles<'a>(&self, conn: &'a Connection) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        conn.roles.iter().map(|(r, d)| (r.as_str(), d.as_str()))
    }

    /// A user as `admin.system.users` holds it (users restored into it
    /// log in too).
    fn stored_user(&self, db: &str, name: &str) -> Option<StoredUser> {
        let st = lock(&self.state);
        let c = Self::get_coll(&st, "admin", "system.users")?;
        let u = c.docs.values().find(|u| u.get_str("user").ok() == Some(name) && u.get_str("db").ok() == Some(db))?;
        let creds = u.get_document("credentials").ok();
        let cred = |m: &str| creds.and_then(|c| c.get_document(m).ok()).and_then(Credential::from_doc);
        let roles = u
            .get_array("roles")
            .map(|list| {
                list.iter()
                    .filter_map(Bson::as_document)
                    .filter_map(|r| Some((r.get_str("role").ok()?.to_string(), r.get_str("db").ok()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Some(StoredUser { sha1: cred("SCRAM-SHA-1"), sha256: cred("SCRAM-SHA-256"), roles })
    }

    fn auth_required(&self) -> bool {
        !self.options.users.is_empty()
    }

    /// Whether the connection's users may do `action` on `db` (`coll`).
    fn allowed(&self, conn: &Connection, action: Action, db: &str, coll: Option<&str>) -> bool {
        if !self.auth_required() {
            return true;
        }
        let system = coll.is_some_and(|c| c.starts_with("system.")) && db == "admin";
        let internal = db == "local" || db == "config";
        self.roles(conn).any(|(role, rdb)| match role {
            "root" => true,
            "__system" => true,
            "read" => rdb == db && !system && matches!(action, Action::Read | Action::ListMeta),
            "readWrite" => rdb == db && !system && matches!(action, Action::Read | Action::Write | Action::ListMeta),
            "readAnyDatabase" => {
                !internal && !system && matches!(action, Action::Read | Action::ListMeta | Action::ListAllDatabases)
            }
            "readWriteAnyDatabase" => {
                !internal
                    && !system
                    && matches!(action, Action::Read | Action::Write | Action::ListMeta | Action::ListAllDatabases)
            }
            "backup" => matches!(action, Action::Read | Action::ListMeta | Action::ListAllDatabases | Action::Monitor),
            "restore" => {
                !internal
                    && matches!(
                        action,
                        Action::Write
                            | Action::ListMeta
                            | Action::ApplyOps
                            | Action::ListAllDatabases
                            | Action::UserAdmin
                    )
            }
            "clusterMonitor" => matches!(action, Action::Monitor | Action::ListAllDatabases),
            "userAdminAnyDatabase" => matches!(action, Action::UserAdmin),
            "dbOwner" => {
                rdb == db && !system && !matches!(action, Action::ListAllDatabases | Action::Monitor | Action::ApplyOps)
            }
            _ => false,
        })
    }

    fn require(
        &self,
        conn: &Connection,
        action: Action,
        db: &str,
        coll: Option<&str>,
        cmd: &Document,
    ) -> Result<(), CmdError> {
        if self.allowed(conn, action, db, coll) {
            Ok(())
        } else {
            Err(err(
                13,
                format!("not authorized on {db} to execute command {}", shell_string(&Bson::Document(cmd.clone()))),
            ))
        }
    }

    /// Databases the connection's users hold any role on.
    fn role_databases(&self, conn: &Connection) -> Vec<String> {
        self.roles(conn).map(|(_, d)| d.to_string()).collect()
    }

    // -----------------------------------------------------------------------
    // Requests

    pub fn handle_legacy_query(&self, conn: &mut Connection, collection: &str, query: Document) -> Outcome {
        let name = query.keys().next().cloned().unwrap_or_default();
        let Some(db) = collection.strip_suffix(".$cmd") else {
            return Outcome::Close;
        };
        let mut reply = match name.as_str() {
            "hello" | "isMaster" | "ismaster" => {
                let mut d = self.hello(conn, &query, name != "hello", db);
                d.insert("ok", 1.0);
                d
            }
            // MongoDB 6.0+ answers every other OP_QUERY command with an error.
            _ => error_doc(
                5739101,
                "Location5739101",
                &format!(
                    "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal"
                ),
            ),
        };
        self.add_cluster_time(&mut reply);
        Outcome::Reply(reply)
    }

    pub fn handle_msg(
        &self,
        conn: &mut Connection,
        mut body: Document,
        sequences: Vec<(String, Vec<Document>)>,
    ) -> Outcome {
        for (ident, docs) in sequences {
            body.insert(ident, Bson::Array(docs.into_iter().map(Bson::Document).collect()));
        }
        let name = body.keys().next().cloned().unwrap_or_default();
        conn.last_uncompressible = matches!(
            name.as_str(),
            "hello"
                | "isMaster"
                | "ismaster"
                | "saslStart"
                | "saslContinue"
                | "getnonce"
                | "authenticate"
                | "createUser"
                | "updateUser"
        );
        let result = match body.get_str("$db") {
            Err(_) => Err(err(40571, "OP_MSG requests require a $db argument")),
            Ok(db) => {
                let db = db.to_string();
                match self.fault(&name) {
                    Some(Fault::Close) => return Outcome::Close,
                    Some(Fault::Error(e)) => Err(e),
                    None => self.run(conn, &db, &name, &body),
                }
            }
        };
        let mut reply = match result {
            Ok(mut d) => {
                d.insert("ok", 1.0);
                d
            }
            Err(e) => {
                let mut d = match e.extra {
                    Some(extra) => {
                        let mut d = *extra;
                        d.insert("ok", 0.0);
                        d.insert("errmsg", e.msg.as_str());
                        d.insert("code", e.code);
                        d.insert("codeName", e.name);
                        d
                    }
                    None => error_doc(e.code, e.name, &e.msg),
                };
                if e.code == 40571 {
                    d.insert("codeName", "Location40571");
                }
                d
            }
        };
        self.add_cluster_time(&mut reply);
        Outcome::Reply(reply)
    }

    /// A replica-set member's replies end with `$clusterTime` and
    /// `operationTime`.
    fn add_cluster_time(&self, reply: &mut Document) {
        if self.is_replset() {
            let ts = lock(&self.state).last_ts;
            reply.insert(
                "$clusterTime",
                doc! {
                    "clusterTime": ts,
                    "signature": { "hash": auth::binary(vec![0; 20]), "keyId": 0i64 },
                },
            );
            reply.insert("operationTime", ts);
        }
    }

    /// How long an awaitable hello waits: its `maxAwaitTimeMS` when its
    /// `topologyVersion` is this server's current one.
    pub fn awaitable_hello(&self, body: &Document) -> Option<Duration> {
        let name = body.keys().next()?;
        if !matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
            return None;
        }
        let tv = body.get_document("topologyVersion").ok()?;
        if tv.get_object_id("processId").ok()? != self.process_id || tv.get("counter").and_then(as_i64) != Some(0) {
            return None;
        }
        let ms = body.get("maxAwaitTimeMS").and_then(as_i64)?;
        Some(Duration::from_millis(ms.clamp(0, 60_000) as u64))
    }

    /// The session of a retryable write (`lsid` and `txnNumber` on a
    /// replica set), as its oplog entries record it.
    fn write_session(&self, conn: &Connection, cmd: &Document) -> Option<WriteSession> {
        use sha2::Digest as _;
        if !self.is_replset() {
            return None;
        }
        let id = cmd.get_document("lsid").ok()?.get("id")?.clone();
        let txn_number = cmd.get("txnNumber").and_then(as_i64)?;
        let user = conn.users.first().map(|(db, name)| format!("{name}@{db}")).unwrap_or_default();
        let uid = sha2::Sha256::digest(user.as_bytes()).to_vec();
        Some(WriteSession { lsid: doc! { "id": id, "uid": auth::binary(uid) }, txn_number, stmt_id: 0, prev: None })
    }

    fn fault(&self, name: &str) -> Option<Fault> {
        let mut f = lock(&self.faults);
        if name == "getMore"
            && let Some(n) = f.close_on_getmore
        {
            if n <= 1 {
                f.close_on_getmore = None;
                return Some(Fault::Close);
            }
            f.close_on_getmore = Some(n - 1);
        }
        if let Some(pos) = f.fail_command.iter().position(|(c, _, _, times)| c == name && *times > 0) {
            let (_, code, msg, times) = &mut f.fail_command[pos];
            *times -= 1;
            let e = err(*code, msg.clone());
            if *times == 0 {
                f.fail_command.remove(pos);
            }
            return Some(Fault::Error(e));
        }
        None
    }

    fn run(&self, conn: &mut Connection, db: &str, name: &str, cmd: &Document) -> CmdResult {
        const OPEN: &[&str] = &[
            "hello",
            "isMaster",
            "ismaster",
            "ping",
            "saslStart",
            "saslContinue",
            "buildInfo",
            "buildinfo",
            "endSessions",
            "logout",
            "getnonce",
        ];
        if cmd.get("startTransaction").is_some_and(truthy) || cmd.get("autocommit").is_some() {
            return Err(err(
                263,
                "this MongoDB stand-in does not run multi-document transactions (startTransaction/autocommit)",
            )
            .with_name("OperationNotSupportedInTransaction"));
        }
        if self.auth_required() && conn.users.is_empty() && !OPEN.contains(&name) {
            return Err(err(13, format!("Command {name} requires authentication")));
        }
        if self.is_secondary() && !OPEN.contains(&name) {
            const WRITES: &[&str] = &[
                "insert",
                "update",
                "delete",
                "findAndModify",
                "create",
                "drop",
                "dropDatabase",
                "createIndexes",
                "dropIndexes",
                "collMod",
                "applyOps",
                "renameCollection",
            ];
            if WRITES.contains(&name) {
                return Err(err(10107, "not primary").with_name("NotWritablePrimary"));
            }
            let mode =
                cmd.get_document("$readPreference").ok().and_then(|r| r.get_str("mode").ok()).unwrap_or("primary");
            if mode == "primary" {
                return Err(err(13435, "not primary and secondaryOk=false").with_name("NotPrimaryNoSecondaryOk"));
            }
        }
        match name {
            "hello" | "isMaster" | "ismaster" => Ok(self.hello(conn, cmd, name != "hello", db)),
            "ping" => Ok(Document::new()),
            "buildInfo" | "buildinfo" => Ok(build_info()),
            "endSessions" | "logout" => Ok(Document::new()),
            "saslStart" => self.sasl_start(conn, db, cmd),
            "saslContinue" => self.sasl_continue(conn, cmd),
            "serverStatus" => {
                self.require(conn, Action::Monitor, "admin", None, cmd)?;
                Ok(self.server_status())
            }
            "getParameter" => {
                self.require(conn, Action::Monitor, "admin", None, cmd)?;
                Ok(get_parameter(cmd))
            }
            "connectionStatus" => Ok(self.connection_status(conn)),
            "replSetGetConfig" => {
                self.require(conn, Action::Monitor, "admin", None, cmd)?;
                if !self.is_replset() {
                    return Err(err(76, "not running with --replSet").with_name("NoReplicationEnabled"));
                }
                Ok(doc! { "config": self.replset_config() })
            }
            "replSetGetStatus" => {
                self.require(conn, Action::Monitor, "admin", None, cmd)?;
                self.repl_set_get_status()
            }
            "listDatabases" => self.list_databases(conn, cmd),
            "listCollections" => self.list_collections(conn, db, cmd),
            "listIndexes" => self.list_indexes(conn, db, cmd),
            "create" => self.create(conn, db, cmd),
            "createIndexes" => self.create_indexes(conn, db, cmd),
            "drop" => self.drop(conn, db, cmd),
            "dropDatabase" => self.drop_database(conn, db, cmd),
            "dropIndexes" | "deleteIndexes" => self.drop_indexes(conn, db, cmd),
            "count" => self.count(conn, db, cmd),
            "find" => self.find(conn, db, cmd),
            "getMore" => self.get_more(conn, db, cmd),
            "killCursors" => self.kill_cursors(db, cmd),
            "insert" => self.insert(conn, db, cmd),
            "update" => self.update(conn, db, cmd),
            "delete" => self.delete(conn, db, cmd),
            "aggregate" => self.aggregate(conn, db, cmd),
            "applyOps" => self.apply_ops(conn, db, cmd),
            "usersInfo" => self.users_info(conn, db, cmd),
            "rolesInfo" => {
                self.require(conn, Action::UserAdmin, db, None, cmd)
                    .or_else(|_| self.require(conn, Action::Read, db, Some("system.roles"), cmd))?;
                Ok(doc! { "roles": [] })
            }
            "dbStats" => self.db_stats(conn, db, cmd),
            "collMod" => {
                let coll = coll_name(cmd, "collMod")?;
                self.require(conn, Action::Write, db, Some(&coll), cmd)?;
                let mut st = lock(&self.state);
                self.coll_mod(&mut st, db, &coll, cmd)
            }
            _ => Err(err(59, format!("no such command: '{name}'"))),
        }
    }

    // -----------------------------------------------------------------------
    // Handshake and server information

    fn hello(&self, conn: &mut Connection, cmd: &Document, legacy: bool, db: &str) -> Document {
        let last_ts = lock(&self.state).last_ts;
        let me = format!("127.0.0.1:{}", self.port);
        let mut d = Document::new();
        if cmd.get_bool("helloOk").unwrap_or(false) {
            d.insert("helloOk", true);
        }
        d.insert("topologyVersion", doc! { "processId": self.process_id, "counter": 0i64 });
        let secondary = self.is_secondary();
        if let Some(rs) = &self.options.replset {
            let hosts: Vec<Bson> = if self.options.members.is_empty() {
                vec![Bson::String(me.clone())]
            } else {
                self.options.members.iter().map(|m| Bson::String(m.clone())).collect()
            };
            d.insert("hosts", hosts);
            d.insert("setName", rs.as_str());
            d.insert("setVersion", 1);
        }
        d.insert(if legacy { "ismaster" } else { "isWritablePrimary" }, !secondary);
        if self.is_replset() {
            d.insert("secondary", secondary);
            d.insert("primary", self.options.secondary_of.clone().unwrap_or_else(|| me.clone()));
            d.insert("me", me.as_str());
            d.insert("electionId", ObjectId::from_bytes([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1]));
            let optime = doc! { "ts": last_ts, "t": TERM };
            let when = DateTime::from_millis(i64::from(last_ts.time) * 1000);
            d.insert(
                "lastWrite",
                doc! {
                    "opTime": optime.clone(),
                    "lastWriteDate": when,
                    "majorityOpTime": optime,
                    "majorityWriteDate": when,
                },
            );
        }
        d.insert("maxBsonObjectSize", MAX_BSON_SIZE as i32);
        d.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
        d.insert("maxWriteBatchSize", MAX_WRITE_BATCH);
        d.insert("localTime", DateTime::now());
        d.insert("logicalSessionTimeoutMinutes", 30);
        d.insert("connectionId", conn.id as i32);
        d.insert("minWireVersion", 0);
        d.insert("maxWireVersion", MAX_WIRE_VERSION);
        d.insert("readOnly", false);
        if let Ok(Bson::Array(offered)) = cmd.get("compression").cloned().ok_or(()) {
            let agreed: Vec<Bson> = offered
                .iter()
                .filter_map(|c| c.as_str())
                .filter(|c| self.options.compressors.iter().any(|s| s == c) && matches!(*c, "snappy" | "noop"))
                .map(Bson::from)
                .collect();
            if !agreed.is_empty() {
                d.insert("compression", agreed);
            }
        }
        if let Ok(user) = cmd.get_str("saslSupportedMechs")
            && let Some((udb, name)) = user.split_once('.')
            && self.stored_user(udb, name).is_some()
        {
            d.insert("saslSupportedMechs", vec![Bson::from("SCRAM-SHA-1"), Bson::from("SCRAM-SHA-256")]);
        }
        let _ = db;
        // The first SCRAM step, carried by the handshake (a failure is left
        // for the full conversation to report).
        if let Ok(spec) = cmd.get_document("speculativeAuthenticate")
            && spec.contains_key("saslStart")
        {
            let auth_db = spec.get_str("db").unwrap_or("admin").to_string();
            if let Ok(reply) = self.sasl_start(conn, &auth_db, spec) {
                d.insert("speculativeAuthenticate", reply);
            }
        }
        d
    }

    fn server_status(&self) -> Document {
        let st = lock(&self.state);
        let mut d = doc! {
            "host": format!("127.0.0.1:{}", self.port),
            "version": VERSION,
            "process": "mongod",
            "pid": i64::from(std::process::id()),
            "uptime": 1.0,
            "localTime": DateTime::now(),
            "connections": { "current": lock(&self.sockets).len() as i32, "available": 51200, "totalCreated": lock(&self.sockets).len() as i32 },
            "storageEngine": { "name": "inMemory", "supportsCommittedReads": true, "persistent": false },
        };
        if let Some(rs) = &self.options.replset {
            d.insert(
                "repl",
                doc! {
                    "topologyVersion": { "processId": self.process_id, "counter": 0i64 },
                    "hosts": [format!("127.0.0.1:{}", self.port)],
                    "setName": rs.as_str(),
                    "setVersion": 1,
                    "isWritablePrimary": true,
                    "secondary": false,
                    "primary": format!("127.0.0.1:{}", self.port),
                    "me": format!("127.0.0.1:{}", self.port),
                    "lastWrite": { "opTime": { "ts": st.last_ts, "t": TERM } },
                },
            );
        }
        d
    }

    fn connection_status(&self, conn: &Connection) -> Document {
        let users: Vec<Bson> = conn.users.iter().map(|(db, u)| Bson::Document(doc! { "user": u, "db": db })).collect();
        let roles: Vec<Bson> = self.roles(conn).map(|(r, d)| Bson::Document(doc! { "role": r, "db": d })).collect();
        doc! { "authInfo": { "authenticatedUsers": users, "authenticatedUserRoles": roles } }
    }

    /// The one-member replica-set configuration (`local.system.replset`).
    fn replset_config(&self) -> Document {
        doc! {
            "_id": self.options.replset.clone().unwrap_or_default(),
            "version": 1,
            "term": TERM as i32,
            "members": [{
                "_id": 0,
                "host": format!("127.0.0.1:{}", self.port),
                "arbiterOnly": false,
                "buildIndexes": true,
                "hidden": false,
                "priority": 1.0,
                "tags": {},
                "secondaryDelaySecs": 0i64,
                "votes": 1,
            }],
            "protocolVersion": 1i64,
            "writeConcernMajorityJournalDefault": true,
            "settings": {
                "chainingAllowed": true,
                "heartbeatIntervalMillis": 2000,
                "heartbeatTimeoutSecs": 10,
                "electionTimeoutMillis": 10000,
                "catchUpTimeoutMillis": -1,
                "catchUpTakeoverDelayMillis": 30000,
            },
        }
    }

    fn repl_set_get_status(&self) -> CmdResult {
        let Some(rs) = &self.options.replset else {
            return Err(err(76, "not running with --replSet").with_name("NoReplicationEnabled"));
        };
        let st = lock(&self.state);
        let optime = doc! { "ts": st.last_ts, "t": TERM };
        Ok(doc! {
            "set": rs.as_str(),
            "date": DateTime::now(),
            "myState": 1,
            "term": TERM,
            "heartbeatIntervalMillis": 2000i64,
            "optimes": { "lastCommittedOpTime": optime.clone(), "appliedOpTime": optime.clone(), "durableOpTime": optime.clone() },
            "members": [{
                "_id": 0,
                "name": format!("127.0.0.1:{}", self.port),
                "health": 1.0,
                "state": 1,
                "stateStr": "PRIMARY",
                "optime": optime,
                "self": true,
            }],
        })
    }

    // -----------------------------------------------------------------------
    // Authentication

    fn sasl_start(&self, conn: &mut Connection, db: &str, cmd: &Document) -> CmdResult {
        let mech_name = cmd.get_str("mechanism").unwrap_or("");
        let Some(mech) = Mechanism::parse(mech_name) else {
            return Err(err(2, format!("Received authentication for mechanism {mech_name} which is not enabled"))
                .with_name("MechanismUnavailable")
                .with_code(334));
        };
        let payload = binary_payload(cmd)?;
        let skip = cmd.get_document("options").ok().and_then(|o| o.get_bool("skipEmptyExchange").ok()).unwrap_or(false);
        let lookup = |user: &str| self.stored_user(db, user).and_then(|u| u.credential(mech));
        let id = 1;
        match auth::start(id, mech, db, &payload, lookup, skip) {
            Ok((conv, reply)) => {
                conn.conversation = Some(conv);
                Ok(doc! { "conversationId": id, "done": false, "payload": auth::binary(reply) })
            }
            Err(_) => Err(err(18, "Authentication failed.")),
        }
    }

    fn sasl_continue(&self, conn: &mut Connection, cmd: &Document) -> CmdResult {
        let payload = binary_payload(cmd)?;
        let Some(conv) = conn.conversation.as_mut() else {
            return Err(err(17, "No SASL session state found"));
        };
        if cmd.get("conversationId").and_then(as_i64) != Some(i64::from(conv.id)) {
            return Err(err(17, "Mismatched conversation id"));
        }
        if conv.done {
            // The empty third exchange of a client that does not skip it.
            let id = conv.id;
            conn.conversation = None;
            return Ok(doc! { "conversationId": id, "done": true, "payload": auth::binary(Vec::new()) });
        }
        let Some(stored) = self.stored_user(&conv.db, &conv.user) else {
            conn.conversation = None;
            return Err(err(18, "Authentication failed."));
        };
        let Some(cred) = stored.credential(conv.mech) else {
            conn.conversation = None;
            return Err(err(18, "Authentication failed."));
        };
        match conv.finish(&payload, &cred) {
            Ok(reply) => {
                let (id, skip) = (conv.id, conv.skip_empty_exchange);
                let user = (conv.db.clone(), conv.user.clone());
                if !conn.users.contains(&user) {
                    conn.users.push(user);
                    conn.roles.extend(stored.roles);
                }
                if skip {
                    conn.conversation = None;
                }
                Ok(doc! { "conversationId": id, "done": skip, "payload": auth::binary(reply) })
            }
            Err(_) => {
                conn.conversation = None;
                Err(err(18, "Authentication failed."))
            }
        }
    }

    fn users_info(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let wanted: Option<Vec<(String, String)>> = match cmd.get("usersInfo") {
            Some(Bson::String(u)) => Some(vec![(db.to_string(), u.clone())]),
            Some(Bson::Document(d)) => {
                Some(vec![(d.get_str("db").unwrap_or(db).to_string(), d.get_str("user").unwrap_or("").to_string())])
            }
            Some(Bson::Array(list)) => Some(
                list.iter()
                    .filter_map(|v| match v {
                        Bson::String(u) => Some((db.to_string(), u.clone())),
                        Bson::Document(d) => Some((
                            d.get_str("db").unwrap_or(db).to_string(),
                            d.get_str("user").unwrap_or("").to_string(),
                        )),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        };
        let own_only = wanted.as_ref().is_some_and(|w| w.iter().all(|u| conn.users.contains(u)));
        if !own_only {
            self.require(conn, Action::UserAdmin, db, None, cmd)
                .or_else(|_| self.require(conn, Action::Read, "admin", Some("system.users"), cmd))?;
        }
        let show_credentials = cmd.get_bool("showCredentials").unwrap_or(false);
        let st = lock(&self.state);
        let mut users = Vec::new();
        if let Some(c) = Self::get_coll(&st, "admin", "system.users") {
            for u in c.docs.values() {
                let key = (u.get_str("db").unwrap_or("").to_string(), u.get_str("user").unwrap_or("").to_string());
                let pick = match &wanted {
                    Some(w) => w.contains(&key),
                    None => key.0 == db,
                };
                if pick {
                    let mut out = doc! {
                        "_id": u.get("_id").cloned().unwrap_or(Bson::Null),
                        "userId": u.get("userId").cloned().unwrap_or(Bson::Null),
                        "user": &key.1,
                        "db": &key.0,
                        "roles": u.get("roles").cloned().unwrap_or(Bson::Array(vec![])),
                        "mechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
                    };
                    if show_credentials && let Some(c) = u.get("credentials") {
                        out.insert("credentials", c.clone());
                    }
                    users.push(Bson::Document(out));
                }
            }
        }
        Ok(doc! { "users": users })
    }

    // -----------------------------------------------------------------------
    // Databases and collections

    fn list_databases(&self, conn: &Connection, cmd: &Document) -> CmdResult {
        let name_only = cmd.get("nameOnly").is_some_and(truthy);
        let filter = cmd.get_document("filter").ok().cloned().unwrap_or_default();
        let all = self.allowed(conn, Action::ListAllDatabases, "admin", None);
        let authorized_only = cmd.get("authorizedDatabases").map(truthy);
        if authorized_only == Some(false) && !all {
            self.require(conn, Action::ListAllDatabases, "admin", None, cmd)?;
        }
        let mine = self.role_databases(conn);
        let st = lock(&self.state);
        let mut list = Vec::new();
        let mut total = 0i64;
        for (name, d) in &st.dbs {
            if !all && !mine.contains(name) {
                continue;
            }
            let size: i64 = d
                .colls
                .values()
                .flat_map(|c| c.docs.values())
                .map(|x| x.to_vec().map(|v| v.len() as i64).unwrap_or(0))
                .sum();
            // An on-disk size: a storage engine allocates in pages.
            let size_on_disk = 4096 * (1 + d.colls.len() as i64) + size;
            let entry = if name_only {
                doc! { "name": name }
            } else {
                doc! { "name": name, "sizeOnDisk": size_on_disk, "empty": false }
            };
            if !query::matches(&doc! { "name": name, "sizeOnDisk": size_on_disk, "empty": false }, &filter)? {
                continue;
            }
            total += size_on_disk;
            list.push(Bson::Document(entry));
        }
        let mut out = doc! { "databases": list };
        if !name_only {
            out.insert("totalSize", total);
            out.insert("totalSizeMb", total / (1024 * 1024));
        }
        Ok(out)
    }

    fn list_collections(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        self.require(conn, Action::ListMeta, db, None, cmd)?;
        let filter = cmd.get_document("filter").ok().cloned().unwrap_or_default();
        let name_only = cmd.get("nameOnly").is_some_and(truthy);
        let st = lock(&self.state);
        let mut out = Vec::new();
        if let Some(d) = st.dbs.get(db) {
            for (name, c) in &d.colls {
                let mut info = doc! { "readOnly": c.kind == "view" };
                if c.kind == "collection" {
                    info.insert("uuid", c.uuid_bson());
                }
                let mut entry = doc! { "name": name, "type": c.kind, "options": c.options.clone(), "info": info };
                if c.kind == "collection" && c.has_id_index() && !c.options.contains_key("clusteredIndex") {
                    entry.insert("idIndex", id_index());
                }
                if !query::matches(&entry, &filter)? {
                    continue;
                }
                if name_only {
                    entry = doc! { "name": name, "type": c.kind };
                }
                out.push(entry);
            }
        }
        drop(st);
        self.cursor_reply_all(
            conn,
            db,
            "$cmd.listCollections",
            out,
            cmd.get_document("cursor").ok().and_then(|c| c.get("batchSize")).and_then(as_i64),
        )
    }

    fn list_indexes(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "listIndexes")?;
        self.require(conn, Action::ListMeta, db, Some(&coll), cmd)?;
        let st = lock(&self.state);
        let Some(c) = Self::get_coll(&st, db, &coll) else {
            return Err(err(26, format!("ns does not exist: {db}.{coll}")));
        };
        if c.kind == "view" {
            return Err(err(166, format!("Namespace {db}.{coll} is a view, not a collection")));
        }
        let idx = c.indexes.clone();
        drop(st);
        self.cursor_reply_all(
            conn,
            db,
            &coll,
            idx,
            cmd.get_document("cursor").ok().and_then(|c| c.get("batchSize")).and_then(as_i64),
        )
    }

    /// A cursor over a fixed list (listCollections, listIndexes, aggregate).
    fn cursor_reply_all(
        &self,
        conn: &Connection,
        db: &str,
        coll: &str,
        docs: Vec<Document>,
        batch: Option<i64>,
    ) -> CmdResult {
        let mut st = lock(&self.state);
        let cursor = Cursor {
            db: db.into(),
            coll: coll.into(),
            pending: docs.into(),
            tail: None,
            remaining: None,
            owner: conn.users.clone(),
        };
        Ok(self.first_batch(&mut st, cursor, batch.map(|b| b.max(0) as usize), false))
    }

    fn create(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "create")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let mut options = Document::new();
        let mut kind = "collection";
        for (k, v) in cmd.iter().skip(1) {
            match k.as_str() {
                "capped"
                | "size"
                | "max"
                | "validator"
                | "validationLevel"
                | "validationAction"
                | "collation"
                | "viewOn"
                | "pipeline"
                | "timeseries"
                | "expireAfterSeconds"
                | "storageEngine"
                | "indexOptionDefaults"
                | "changeStreamPreAndPostImages"
                | "clusteredIndex"
                | "encryptedFields"
                | "autoIndexId" => {
                    options.insert(k.clone(), v.clone());
                }
                // Accepted and not stored (as 7.0 does with these).
                "flags" | "idIndex" | "temp" | "recordPreImages" => {}
                k if k.starts_with('$') || GENERIC_FIELDS.contains(&k) => {}
                other => {
                    return Err(err(40415, format!("BSON field 'create.{other}' is an unknown field."))
                        .with_name("Location40415"));
                }
            }
        }
        if options.contains_key("viewOn") {
            kind = "view";
            if !options.contains_key("pipeline") {
                options.insert("pipeline", Bson::Array(vec![]));
            }
        } else if options.contains_key("pipeline") {
            return Err(err(9, "'pipeline' requires 'viewOn' to also be specified"));
        }
        if let Ok(ts) = options.get_document("timeseries") {
            kind = "timeseries";
            let ts = timeseries_options(ts)?;
            options.insert("timeseries", ts);
        }
        if options.get_bool("capped").unwrap_or(false) && !options.contains_key("size") {
            return Err(err(72, "the 'size' field is required when 'capped' is true"));
        }
        if let Some(Bson::Int32(_)) = options.get("size") {
        } else if let Some(size) = options.get("size").and_then(as_i64) {
            // The server stores an integral size as given (int or long).
            options.insert("size", size);
        }
        let mut st = lock(&self.state);
        let r = self.create_collection(&mut st, db, &coll, kind, options);
        self.changed.notify_all();
        r
    }

    fn create_indexes(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "createIndexes")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let Ok(specs) = cmd.get_array("indexes") else {
            return Err(err(40414, "BSON field 'createIndexes.indexes' is missing but a required field")
                .with_name("Location40414"));
        };
        let mut st = lock(&self.state);
        let mut created_coll = false;
        if Self::get_coll(&st, db, &coll).is_none() {
            self.create_collection(&mut st, db, &coll, "collection", Document::new())?;
            created_coll = true;
        }
        let c = Self::get_coll(&st, db, &coll).expect("exists");
        if c.kind == "view" {
            return Err(err(166, format!("Namespace {db}.{coll} is a view, not a collection")));
        }
        let before = c.indexes.len();
        let uuid = c.uuid;
        let mut new_specs = Vec::new();
        for spec in specs {
            let Bson::Document(spec) = spec else { return Err(err(14, "index specification must be an object")) };
            let Ok(key) = spec.get_document("key") else { return Err(err(2, "Index spec is missing the 'key' field")) };
            let name = match spec.get_str("name") {
                Ok(n) => n.to_string(),
                Err(_) => {
                    return Err(err(
                        2,
                        "Error in specification { key: ... } :: caused by :: The 'name' field is a required property of an index specification",
                    ));
                }
            };
            let mut full = doc! { "v": 2, "key": key.clone(), "name": &name };
            for (k, v) in spec {
                if !matches!(k.as_str(), "key" | "name" | "v" | "ns") {
                    full.insert(k.clone(), v.clone());
                }
            }
            let c = Self::get_coll(&st, db, &coll).expect("exists");
            if let Some(existing) = c.indexes.iter().find(|i| i.get_str("name").ok() == Some(name.as_str())) {
                if existing == &full {
                    continue;
                }
                return Err(err(
                    86,
                    format!(
                        "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                        shell_string(&Bson::Document(full)),
                        shell_string(&Bson::Document(existing.clone()))
                    ),
                ));
            }
            if let Some(existing) = c.indexes.iter().find(|i| i.get_document("key").ok() == Some(key))
                && existing.get_str("name").ok() != Some(name.as_str())
            {
                return Err(err(
                    85,
                    format!("Index already exists with a different name: {}", existing.get_str("name").unwrap_or("")),
                ));
            }
            new_specs.push(full);
        }
        for spec in &new_specs {
            Self::add_index(&mut st, db, &coll, spec.clone())?;
            let mut o = doc! { "createIndexes": &coll };
            for (k, v) in spec {
                o.insert(k.clone(), v.clone());
            }
            self.log_op(&mut st, "c", &format!("{db}.$cmd"), Some(uuid), o, None);
        }
        let after = Self::get_coll(&st, db, &coll).expect("exists").indexes.len();
        let mut out = doc! { "numIndexesBefore": before as i32, "numIndexesAfter": after as i32 };
        if new_specs.is_empty() {
            out.insert("note", "all indexes already exist");
        }
        out.insert("createdCollectionAutomatically", created_coll);
        if self.is_replset() {
            out.insert("commitQuorum", "votingMembers");
        }
        self.changed.notify_all();
        Ok(out)
    }

    fn drop(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "drop")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let mut st = lock(&self.state);
        let r = match self.drop_collection(&mut st, db, &coll) {
            Some(n) => doc! { "nIndexesWas": n as i32, "ns": format!("{db}.{coll}") },
            // 7.0: dropping a collection that does not exist succeeds.
            None => Document::new(),
        };
        self.changed.notify_all();
        Ok(r)
    }

    fn drop_database(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        self.require(conn, Action::Write, db, None, cmd)?;
        let mut st = lock(&self.state);
        let names: Vec<String> = st.dbs.get(db).map(|d| d.colls.keys().cloned().collect()).unwrap_or_default();
        let existed = !names.is_empty();
        for n in names {
            self.drop_collection(&mut st, db, &n);
        }
        if existed {
            self.log_op(&mut st, "c", &format!("{db}.$cmd"), None, doc! { "dropDatabase": 1 }, None);
        }
        self.changed.notify_all();
        Ok(if existed {
            doc! { "dropped": db }
        } else {
            Document::new()
        })
    }

    fn drop_indexes(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "dropIndexes")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let mut st = lock(&self.state);
        let Some(c) = Self::get_coll_mut(&mut st, db, &coll) else {
            return Err(err(26, format!("ns not found {db}.{coll}")));
        };
        let before = c.indexes.len();
        let uuid = c.uuid;
        let dropped: Vec<Document> = match cmd.get("index") {
            Some(Bson::String(s)) if s == "*" => {
                let gone: Vec<Document> =
                    c.indexes.iter().filter(|i| i.get_str("name").ok() != Some("_id_")).cloned().collect();
                c.indexes.retain(|i| i.get_str("name").ok() == Some("_id_"));
                gone
            }
            Some(Bson::String(name)) => {
                if name == "_id_" {
                    return Err(err(72, "cannot drop _id index"));
                }
                let Some(pos) = c.indexes.iter().position(|i| i.get_str("name").ok() == Some(name.as_str())) else {
                    return Err(err(27, format!("index not found with name [{name}]")));
                };
                vec![c.indexes.remove(pos)]
            }
            Some(Bson::Document(key)) => {
                let Some(pos) = c.indexes.iter().position(|i| i.get_document("key").ok() == Some(key)) else {
                    return Err(err(
                        27,
                        format!("can't find index with key: {}", shell_string(&Bson::Document(key.clone()))),
                    ));
                };
                if c.indexes[pos].get_str("name").ok() == Some("_id_") {
                    return Err(err(72, "cannot drop _id index"));
                }
                vec![c.indexes.remove(pos)]
            }
            _ => {
                return Err(err(40414, "BSON field 'dropIndexes.index' is missing but a required field")
                    .with_name("Location40414"));
            }
        };
        let _ = c.rebuild_unique();
        for spec in dropped {
            let name = spec.get_str("name").unwrap_or("").to_string();
            self.log_op(
                &mut st,
                "c",
                &format!("{db}.$cmd"),
                Some(uuid),
                doc! { "dropIndexes": &coll, "index": name },
                Some(spec),
            );
        }
        Ok(doc! { "nIndexesWas": before as i32 })
    }

    /// collMod: validator and validation settings, a view's pipeline, a
    /// time-series collection's expireAfterSeconds, and an index's
    /// expireAfterSeconds or hidden.
    fn coll_mod(&self, st: &mut State, db: &str, coll: &str, cmd: &Document) -> CmdResult {
        let Some(c) = Self::get_coll_mut(st, db, coll) else {
            return Err(err(26, format!("ns does not exist: {db}.{coll}")));
        };
        let old_options = c.options.clone();
        let uuid = c.uuid;
        let kind = c.kind;
        let mut reply = Document::new();
        for (k, v) in cmd.iter().skip(1) {
            match k.as_str() {
                "validator"
                | "validationLevel"
                | "validationAction"
                | "changeStreamPreAndPostImages"
                | "expireAfterSeconds" => {
                    c.options.insert(k.clone(), v.clone());
                }
                "viewOn" | "pipeline" if kind == "view" => {
                    c.options.insert(k.clone(), v.clone());
                }
                "index" => {
                    let Bson::Document(spec) = v else { return Err(err(14, "index must be an object")) };
                    let pos = if let Ok(name) = spec.get_str("name") {
                        c.indexes.iter().position(|i| i.get_str("name").ok() == Some(name))
                    } else if let Ok(key) = spec.get_document("keyPattern") {
                        c.indexes.iter().position(|i| i.get_document("key").ok() == Some(key))
                    } else {
                        return Err(err(2, "no keyPattern or name specified"));
                    };
                    let Some(pos) = pos else {
                        return Err(err(27, format!("cannot find index {} for ns {db}.{coll}", shell_string(v))));
                    };
                    for field in ["expireAfterSeconds", "hidden"] {
                        if let Some(new) = spec.get(field) {
                            let old = c.indexes[pos].get(field).cloned();
                            c.indexes[pos].insert(field, new.clone());
                            if let Some(old) = old {
                                reply.insert(format!("{field}_old"), old);
                            }
                            reply.insert(format!("{field}_new"), new.clone());
                        }
                    }
                }
                k if k.starts_with('$') || GENERIC_FIELDS.contains(&k) => {}
                other => {
                    return Err(err(40415, format!("BSON field 'collMod.{other}' is an unknown field."))
                        .with_name("Location40415"));
                }
            }
        }
        let mut o = Document::new();
        for (k, v) in cmd {
            if !k.starts_with('$') && !GENERIC_FIELDS.contains(&k.as_str()) {
                o.insert(k.clone(), v.clone());
            }
        }
        let ui = (kind == "collection").then_some(uuid);
        self.log_op(st, "c", &format!("{db}.$cmd"), ui, o, Some(doc! { "collectionOptions_old": old_options }));
        self.changed.notify_all();
        Ok(reply)
    }

    fn db_stats(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        self.require(conn, Action::Read, db, None, cmd)?;
        let st = lock(&self.state);
        let (colls, views, objects) = st
            .dbs
            .get(db)
            .map(|d| {
                (
                    d.colls.values().filter(|c| c.kind != "view").count() as i64,
                    d.colls.values().filter(|c| c.kind == "view").count() as i64,
                    d.colls.values().map(|c| c.docs.len() as i64).sum::<i64>(),
                )
            })
            .unwrap_or_default();
        Ok(doc! { "db": db, "collections": colls, "views": views, "objects": objects })
    }

    // -----------------------------------------------------------------------
    // Reads

    /// The documents of `db.coll` that match `filter` (through a view's
    /// pipeline), with their record ids.
    fn scan(&self, st: &State, db: &str, coll: &str, filter: &Document) -> Result<Vec<(u64, Document)>, CmdError> {
        let Some(c) = Self::get_coll(st, db, coll) else { return Ok(Vec::new()) };
        if c.kind == "view" {
            let on = c.options.get_str("viewOn").unwrap_or("").to_string();
            let pipeline = c.options.get_array("pipeline").cloned().unwrap_or_default();
            let base: Vec<Document> = self.scan(st, db, &on, &Document::new())?.into_iter().map(|(_, d)| d).collect();
            let docs = run_pipeline(base, &pipeline)?;
            let mut out = Vec::new();
            for (i, d) in docs.into_iter().enumerate() {
                if query::matches(&d, filter)? {
                    out.push((i as u64, d));
                }
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        if let Ok(Bson::Document(_)) | Ok(Bson::Array(_)) = filter.get("_id").ok_or(()).map(|_| Bson::Null) {}
        // A plain `_id` equality looks the record up.
        if filter.len() == 1
            && let Some(id) = filter.get("_id")
            && !matches!(id, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')))
            && !matches!(id, Bson::Array(_))
            && c.has_id_index()
        {
            if let Some(rec) = c.find_id(id) {
                let d = &c.docs[&rec];
                if query::matches(d, filter)? {
                    out.push((rec, d.clone()));
                }
            }
            return Ok(out);
        }
        for (rec, d) in &c.docs {
            if query::matches(d, filter)? {
                out.push((*rec, d.clone()));
            }
        }
        Ok(out)
    }

    fn find(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "find")?;
        self.require(conn, Action::Read, db, Some(&coll), cmd)?;
        let filter = opt_doc(cmd, "filter")?;
        let sort = opt_doc(cmd, "sort")?;
        let projection = opt_doc(cmd, "projection")?;
        let skip = cmd.get("skip").and_then(as_i64).unwrap_or(0);
        let limit = cmd.get("limit").and_then(as_i64).unwrap_or(0);
        let batch = cmd.get("batchSize").and_then(as_i64);
        if skip < 0 {
            return Err(
                err(51024, "BSON field 'skip' value must be >= 0, actual value '-1'").with_name("Location51024")
            );
        }
        if limit < 0 {
            return Err(err(51024, format!("BSON field 'limit' value must be >= 0, actual value '{limit}'"))
                .with_name("Location51024"));
        }
        if let Some(b) = batch
            && b < 0
        {
            return Err(err(51024, format!("BSON field 'batchSize' value must be >= 0, actual value '{b}'"))
                .with_name("Location51024"));
        }
        let single_batch = cmd.get("singleBatch").is_some_and(truthy);
        let tailable = cmd.get("tailable").is_some_and(truthy);
        let await_data = cmd.get("awaitData").is_some_and(truthy);
        if await_data && !tailable {
            return Err(err(9, "Cannot set 'awaitData' without also setting 'tailable'"));
        }
        let mut st = lock(&self.state);
        if let Some(c) = Self::get_coll(&st, db, &coll) {
            match cmd.get("hint") {
                None => {}
                Some(Bson::String(name))
                    if !c.indexes.iter().any(|i| i.get_str("name").ok() == Some(name.as_str())) =>
                {
                    return Err(err(
                        2,
                        "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
                    ));
                }
                Some(Bson::String(_)) => {}
                Some(Bson::Document(key)) => {
                    let natural = key.keys().next().is_some_and(|k| k == "$natural");
                    if !natural && !c.indexes.iter().any(|i| i.get_document("key").ok() == Some(key)) {
                        return Err(err(
                            2,
                            "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
                        ));
                    }
                }
                Some(_) => return Err(err(9, "hint must be either a string or nested object")),
            }
            if tailable && !c.is_capped() {
                return Err(err(
                    2,
                    format!(
                        "error processing query: ns={db}.{coll} tailable cursor requested on non capped collection"
                    ),
                ));
            }
        }
        let last_record = Self::get_coll(&st, db, &coll).and_then(|c| c.docs.keys().next_back().copied()).unwrap_or(0);
        let mut docs: Vec<Document> = self.scan(&st, db, &coll, &filter)?.into_iter().map(|(_, d)| d).collect();
        if !sort.is_empty() {
            if tailable && sort.keys().any(|k| k != "$natural") {
                return Err(err(
                    2,
                    "error processing query: tailable cursor requested on non capped collection: cannot sort a tailable cursor other than by $natural",
                ));
            }
            query::sort_docs(&mut docs, &sort)?;
        }
        let docs: VecDeque<Document> =
            docs.into_iter().skip(skip as usize).map(|d| query::project(&d, &projection)).collect();
        let tail = tailable.then(|| Tail { filter: filter.clone(), last_record, await_data });
        let cursor = Cursor {
            db: db.into(),
            coll: coll.clone(),
            pending: docs,
            tail,
            remaining: (limit > 0).then_some(limit as usize),
            owner: conn.users.clone(),
        };
        let batch = batch.map(|b| b as usize).or(if limit > 0 { Some(limit as usize) } else { None });
        Ok(self.first_batch(&mut st, cursor, batch, single_batch))
    }

    /// Takes a first batch off `cursor`; registers it if anything is left.
    fn first_batch(&self, st: &mut State, mut cursor: Cursor, batch: Option<usize>, single: bool) -> Document {
        let docs = take_batch(&mut cursor, batch.or(Some(DEFAULT_FIRST_BATCH)));
        let ns = format!("{}.{}", cursor.db, cursor.coll);
        let exhausted = (cursor.pending.is_empty() && cursor.tail.is_none()) || cursor.remaining == Some(0) || single;
        let id = if exhausted {
            0i64
        } else {
            let mut id;
            loop {
                id = (rand::random::<u64>() >> 2) as i64;
                if id != 0 && !st.cursors.contains_key(&id) {
                    break;
                }
            }
            st.cursors.insert(id, cursor);
            id
        };
        doc! { "cursor": { "firstBatch": docs, "id": id, "ns": ns } }
    }

    fn get_more(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let Some(id) = cmd.get("getMore").and_then(|v| if let Bson::Int64(i) = v { Some(*i) } else { None }) else {
            return Err(err(14, "BSON field 'getMore.getMore' is the wrong type, expected type 'long'"));
        };
        let coll = cmd
            .get_str("collection")
            .map_err(|_| {
                err(40414, "BSON field 'getMore.collection' is missing but a required field").with_name("Location40414")
            })?
            .to_string();
        let batch = cmd.get("batchSize").and_then(as_i64).filter(|b| *b > 0).map(|b| b as usize);
        let max_time =
            cmd.get("maxTimeMS").and_then(as_i64).filter(|m| *m > 0).map(|m| Duration::from_millis(m as u64));
        let mut st = lock(&self.state);
        let Some(cur) = st.cursors.get(&id) else {
            return Err(err(43, format!("cursor id {id} not found")));
        };
        if cur.db != db || cur.coll != coll {
            return Err(err(
                13,
                format!(
                    "Requested getMore on namespace '{db}.{coll}', but cursor belongs to a different namespace {}.{}",
                    cur.db, cur.coll
                ),
            ));
        }
        if max_time.is_some() && !cur.tail.as_ref().is_some_and(|t| t.await_data) {
            return Err(err(2, "cannot set maxTimeMS on getMore command for a non-awaitData cursor"));
        }
        if self.auth_required() && cur.owner != conn.users {
            return Err(err(13, format!("cursor id {id} was not created by the authenticated user")));
        }
        let drop_now = lock(&self.faults).drop_on_getmore.as_deref() == Some(&format!("{db}.{coll}"));
        if drop_now {
            lock(&self.faults).drop_on_getmore = None;
            self.drop_collection(&mut st, db, &coll);
            self.changed.notify_all();
            st.cursors.remove(&id);
            return Err(err(175, "collection dropped"));
        }
        let ns = format!("{db}.{coll}");
        let deadline = Instant::now() + max_time.unwrap_or(DEFAULT_AWAIT);
        loop {
            let mut cur = st.cursors.remove(&id).expect("checked above");
            if cur.pending.is_empty()
                && let Some(tail) = cur.tail.as_mut()
            {
                let Some(c) = Self::get_coll(&st, db, &coll) else {
                    return Err(err(175, "collection dropped"));
                };
                if c.last_dropped > tail.last_record {
                    return Err(err(
                        136,
                        format!(
                            "CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({})",
                            tail.last_record
                        ),
                    ));
                }
                for (rec, d) in c.docs.range(tail.last_record + 1..) {
                    tail.last_record = *rec;
                    if query::matches(d, &tail.filter)? {
                        cur.pending.push_back(d.clone());
                    }
                }
            }
            let await_data = cur.tail.as_ref().is_some_and(|t| t.await_data);
            if cur.pending.is_empty() && await_data && !self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let now = Instant::now();
                if now < deadline {
                    st.cursors.insert(id, cur);
                    st = self.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
                    if !st.cursors.contains_key(&id) {
                        return Err(err(175, "collection dropped"));
                    }
                    continue;
                }
            }
            let docs = take_batch(&mut cur, batch);
            let exhausted = (cur.pending.is_empty() && cur.tail.is_none()) || cur.remaining == Some(0);
            let out_id = if exhausted { 0 } else { id };
            if !exhausted {
                st.cursors.insert(id, cur);
            }
            return Ok(doc! { "cursor": { "nextBatch": docs, "id": out_id, "ns": ns } });
        }
    }

    fn kill_cursors(&self, db: &str, cmd: &Document) -> CmdResult {
        let ids = cmd.get_array("cursors").cloned().unwrap_or_default();
        let mut st = lock(&self.state);
        let (mut killed, mut missing) = (Vec::new(), Vec::new());
        for id in ids {
            let Bson::Int64(i) = id else { continue };
            if st.cursors.get(&i).is_some_and(|c| c.db == db) {
                st.cursors.remove(&i);
                killed.push(Bson::Int64(i));
            } else {
                missing.push(Bson::Int64(i));
            }
        }
        Ok(doc! { "cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": [] })
    }

    fn count(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "count")?;
        self.require(conn, Action::Read, db, Some(&coll), cmd)?;
        let filter = opt_doc(cmd, "query")?;
        let skip = cmd.get("skip").and_then(as_i64).unwrap_or(0).max(0) as usize;
        let limit = cmd.get("limit").and_then(as_i64).unwrap_or(0).unsigned_abs() as usize;
        let st = lock(&self.state);
        let n = if filter.is_empty() {
            Self::get_coll(&st, db, &coll)
                .map(|c| if c.kind == "view" { None } else { Some(c.docs.len()) })
                .unwrap_or(Some(0))
        } else {
            None
        };
        let n = match n {
            Some(n) => n,
            None => self.scan(&st, db, &coll, &filter)?.len(),
        };
        let mut n = n.saturating_sub(skip);
        if limit > 0 {
            n = n.min(limit);
        }
        Ok(doc! { "n": n as i32 })
    }

    fn aggregate(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = match cmd.get("aggregate") {
            Some(Bson::String(s)) => s.clone(),
            _ => return Err(err(2, "this MongoDB stand-in runs aggregate on a collection only")),
        };
        self.require(conn, Action::Read, db, Some(&coll), cmd)?;
        let pipeline = cmd
            .get_array("pipeline")
            .map_err(|_| {
                err(40414, "BSON field 'aggregate.pipeline' is missing but a required field").with_name("Location40414")
            })?
            .clone();
        let Ok(cursor_opts) = cmd.get_document("cursor") else {
            return Err(err(9, "The 'cursor' option is required, except for aggregate with the explain argument"));
        };
        let batch = cursor_opts.get("batchSize").and_then(as_i64);
        let st = lock(&self.state);
        let docs: Vec<Document> = self.scan(&st, db, &coll, &Document::new())?.into_iter().map(|(_, d)| d).collect();
        drop(st);
        let out = run_pipeline(docs, &pipeline)?;
        self.cursor_reply_all(conn, db, &coll, out, batch)
    }

    // -----------------------------------------------------------------------
    // Writes

    fn write_reply(&self, n: usize, errors: Vec<(usize, CmdError)>, extra: Document) -> Document {
        let mut out = doc! { "n": n as i32 };
        for (k, v) in extra {
            out.insert(k, v);
        }
        if !errors.is_empty() {
            let list: Vec<Bson> = errors
                .into_iter()
                .map(|(i, e)| {
                    let mut d = doc! { "index": i as i32, "code": e.code };
                    if let Some(dup) = e.dup {
                        let (pattern, value) = *dup;
                        d.insert("keyPattern", pattern);
                        d.insert("keyValue", value);
                    }
                    d.insert("errmsg", e.msg);
                    Bson::Document(d)
                })
                .collect();
            out.insert("writeErrors", list);
        }
        if self.is_replset() {
            let ts = lock(&self.state).last_ts;
            out.insert("opTime", doc! { "ts": ts, "t": TERM });
            out.insert("electionId", ObjectId::from_bytes([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1]));
        }
        out
    }

    fn insert(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "insert")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let docs = cmd.get_array("documents").map_err(|_| {
            err(40414, "BSON field 'insert.documents' is missing but a required field").with_name("Location40414")
        })?;
        if docs.len() > MAX_WRITE_BATCH as usize {
            return Err(err(
                10334,
                format!("Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. Got {} operations.", docs.len()),
            )
            .with_code(2)
            .with_name("BadValue"));
        }
        let ordered = cmd.get("ordered").is_none_or(truthy);
        let docs: Vec<Document> = docs.iter().filter_map(|d| d.as_document().cloned()).collect();
        let mut st = lock(&self.state);
        st.session = self.write_session(conn, cmd);
        let r = self.insert_docs(&mut st, db, &coll, docs, ordered);
        st.session = None;
        let (n, errors) = r?;
        drop(st);
        self.changed.notify_all();
        Ok(self.write_reply(n, errors, Document::new()))
    }

    fn update(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "update")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let updates = cmd
            .get_array("updates")
            .map_err(|_| {
                err(40414, "BSON field 'update.updates' is missing but a required field").with_name("Location40414")
            })?
            .clone();
        let ordered = cmd.get("ordered").is_none_or(truthy);
        let mut st = lock(&self.state);
        st.session = self.write_session(conn, cmd);
        let (mut n, mut modified) = (0usize, 0usize);
        let mut upserted = Vec::new();
        let mut errors = Vec::new();
        for (i, u) in updates.iter().enumerate() {
            let Bson::Document(u) = u else { continue };
            match self.update_one_spec(&mut st, db, &coll, u) {
                Ok((matched, changed, up)) => {
                    n += matched;
                    modified += changed;
                    if let Some(id) = up {
                        n += 1;
                        upserted.push(Bson::Document(doc! { "index": i as i32, "_id": id }));
                    }
                }
                Err(e) => {
                    errors.push((i, e));
                    if ordered {
                        break;
                    }
                }
            }
        }
        st.session = None;
        drop(st);
        self.changed.notify_all();
        let mut extra = doc! {};
        if !upserted.is_empty() {
            extra.insert("upserted", upserted);
        }
        extra.insert("nModified", modified as i32);
        Ok(self.write_reply(n, errors, extra))
    }

    /// One update statement `{q, u, multi, upsert}`: (matched, modified,
    /// upserted _id).
    fn update_one_spec(
        &self,
        st: &mut State,
        db: &str,
        coll: &str,
        spec: &Document,
    ) -> Result<(usize, usize, Option<Bson>), CmdError> {
        let q = spec.get_document("q").cloned().unwrap_or_default();
        let u = match spec.get("u") {
            Some(Bson::Document(d)) => d.clone(),
            Some(Bson::Array(_)) => return Err(err(2, "this MongoDB stand-in does not run pipeline updates")),
            _ => return Err(err(40414, "BSON field 'q.u' is missing but a required field").with_name("Location40414")),
        };
        let multi = spec.get("multi").is_some_and(truthy);
        let upsert = spec.get("upsert").is_some_and(truthy);
        let operator = query::is_operator_update(&u);
        if multi && !operator {
            return Err(err(9, "multi update is not supported for replacement-style update"));
        }
        if Self::get_coll(st, db, coll).is_some_and(|c| c.kind == "view") {
            return Err(err(166, format!("Namespace {db}.{coll} is a view, not a collection")));
        }
        let mut matched: Vec<u64> = self.scan(st, db, coll, &q)?.into_iter().map(|(r, _)| r).collect();
        if !multi {
            matched.truncate(1);
        }
        if matched.is_empty() {
            if !upsert {
                return Ok((0, 0, None));
            }
            // The new document: the query's equality fields, then the update.
            let mut base = Document::new();
            for (k, v) in &q {
                if !k.starts_with('$')
                    && !matches!(v, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')))
                    && !k.contains('.')
                {
                    base.insert(k.clone(), v.clone());
                }
            }
            let doc = if operator {
                query::apply_update(&mut base, &u, true)?;
                base
            } else {
                let mut d = u.clone();
                if let Some(id) = base.get("_id")
                    && !d.contains_key("_id")
                {
                    d.insert("_id", id.clone());
                }
                d
            };
            let mut doc = with_id_first(doc);
            if !doc.contains_key("_id") {
                doc.insert("_id", ObjectId::new());
                doc = with_id_first(doc);
            }
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            let (_, errs) = self.insert_docs(st, db, coll, vec![doc], true)?;
            if let Some((_, e)) = errs.into_iter().next() {
                return Err(e);
            }
            return Ok((0, 0, Some(id)));
        }
        let ns = format!("{db}.{coll}");
        let mut modified = 0;
        for rec in &matched {
            let c = Self::get_coll_mut(st, db, coll).expect("scanned");
            let uuid = c.uuid;
            let old = c.docs[rec].clone();
            let id = old.get("_id").cloned().unwrap_or(Bson::Null);
            let (new, entry) = if operator {
                let mut new = old.clone();
                let diff = query::apply_update(&mut new, &u, false)?;
                if diff.is_empty() {
                    continue;
                }
                (new, diff.to_oplog())
            } else {
                if let Some(nid) = u.get("_id")
                    && query::cmp_bson(nid, &id) != std::cmp::Ordering::Equal
                {
                    return Err(err(
                        66,
                        format!(
                            "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {}",
                            shell_string(nid)
                        ),
                    ));
                }
                let mut new = doc! { "_id": id.clone() };
                for (k, v) in &u {
                    if k != "_id" {
                        new.insert(k.clone(), v.clone());
                    }
                }
                if new == old {
                    continue;
                }
                (new.clone(), new)
            };
            let size = new.to_vec().map(|v| v.len()).unwrap_or(0);
            if size > MAX_BSON_SIZE {
                return Err(err(10334, format!("Resulting document after update is larger than {MAX_BSON_SIZE}")));
            }
            c.replace(*rec, new).map_err(|d| dup_key_error(db, coll, *d))?;
            modified += 1;
            self.log_op(st, "u", &ns, Some(uuid), entry, Some(doc! { "_id": id }));
        }
        Ok((matched.len(), modified, None))
    }

    fn delete(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        let coll = coll_name(cmd, "delete")?;
        self.require(conn, Action::Write, db, Some(&coll), cmd)?;
        let deletes = cmd
            .get_array("deletes")
            .map_err(|_| {
                err(40414, "BSON field 'delete.deletes' is missing but a required field").with_name("Location40414")
            })?
            .clone();
        let mut st = lock(&self.state);
        st.session = self.write_session(conn, cmd);
        let mut n = 0;
        let ns = format!("{db}.{coll}");
        let mut errors = Vec::new();
        for (i, d) in deletes.iter().enumerate() {
            let Bson::Document(d) = d else { continue };
            let q = d.get_document("q").cloned().unwrap_or_default();
            let limit = d.get("limit").and_then(as_i64).unwrap_or(0);
            let matched = match self.scan(&st, db, coll.as_str(), &q) {
                Ok(m) => m,
                Err(e) => {
                    errors.push((i, e));
                    continue;
                }
            };
            for (k, (rec, _)) in matched.into_iter().enumerate() {
                if limit == 1 && k == 1 {
                    break;
                }
                let Some(c) = Self::get_coll_mut(&mut st, db, &coll) else { break };
                let uuid = c.uuid;
                if let Some(old) = c.remove(rec) {
                    n += 1;
                    let id = old.get("_id").cloned().unwrap_or(Bson::Null);
                    self.log_op(&mut st, "d", &ns, Some(uuid), doc! { "_id": id }, None);
                }
            }
        }
        st.session = None;
        drop(st);
        self.changed.notify_all();
        Ok(self.write_reply(n, errors, Document::new()))
    }

    // -----------------------------------------------------------------------
    // applyOps: oplog entries replayed

    fn apply_ops(&self, conn: &Connection, db: &str, cmd: &Document) -> CmdResult {
        if db != "admin" {
            return Err(err(
                13,
                format!("not authorized on {db} to execute command {}", shell_string(&Bson::Document(cmd.clone()))),
            ));
        }
        self.require(conn, Action::ApplyOps, "admin", None, cmd)?;
        let ops = cmd.get_array("applyOps").map_err(|_| err(14, "ApplyOps must be an array"))?.clone();
        let always_upsert = cmd.get("alwaysUpsert").is_none_or(truthy);
        let mut st = lock(&self.state);
        let mut results = Vec::new();
        let mut applied = 0;
        let mut failure = None;
        for op in &ops {
            let Bson::Document(op) = op else { return Err(err(2, "applyOps entries must be documents")) };
            match self.apply_one(&mut st, op, always_upsert) {
                Ok(()) => {
                    applied += 1;
                    results.push(Bson::Boolean(true));
                }
                Err(e) => {
                    results.push(Bson::Boolean(false));
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(st);
        self.changed.notify_all();
        if let Some(mut e) = failure {
            // The failed operation's error, with what was applied before it.
            e.extra = Some(Box::new(doc! { "applied": applied, "results": results }));
            return Err(e);
        }
        Ok(doc! { "applied": applied, "results": results })
    }

    fn apply_one(&self, st: &mut State, op: &Document, always_upsert: bool) -> Result<(), CmdError> {
        let kind = op
            .get_str("op")
            .map_err(|_| err(40414, "BSON field 'op' is missing but a required field").with_name("Location40414"))?;
        let ns = op.get_str("ns").unwrap_or("");
        let o = op
            .get_document("o")
            .map_err(|_| err(40414, "BSON field 'o' is missing but a required field").with_name("Location40414"))?;
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        match kind {
            "n" => Ok(()),
            "i" => {
                let id = o.get("_id").cloned();
                if let Some(id) = &id
                    && always_upsert
                    && let Some(rec) = Self::get_coll(st, db, coll).and_then(|c| c.find_id(id))
                {
                    let c = Self::get_coll_mut(st, db, coll).expect("found");
                    let uuid = c.uuid;
                    c.replace(rec, o.clone()).map_err(|d| dup_key_error(db, coll, *d))?;
                    self.log_op(st, "u", ns, Some(uuid), o.clone(), Some(doc! { "_id": id.clone() }));
                    return Ok(());
                }
                let (_, errs) = self.insert_docs(st, db, coll, vec![o.clone()], true)?;
                match errs.into_iter().next() {
                    Some((_, e)) => Err(e),
                    None => Ok(()),
                }
            }
            "u" => {
                let o2 = op.get_document("o2").map_err(|_| {
                    err(40414, "BSON field 'o2' is missing but a required field").with_name("Location40414")
                })?;
                let id = o2.get("_id").cloned().unwrap_or(Bson::Null);
                let rec = Self::get_coll(st, db, coll).and_then(|c| c.find_id(&id));
                let uuid = Self::get_coll(st, db, coll).map(|c| c.uuid);
                let diff_style = o.get("$v").and_then(as_i64) == Some(2);
                match rec {
                    Some(rec) => {
                        let c = Self::get_coll_mut(st, db, coll).expect("found");
                        let mut doc = c.docs[&rec].clone();
                        if diff_style {
                            query::apply_oplog_diff(
                                &mut doc,
                                o.get_document("diff").map_err(|_| err(2, "$v: 2 update without a diff"))?,
                            )?;
                        } else if query::is_operator_update(o) {
                            let mut plain = o.clone();
                            plain.remove("$v");
                            query::apply_update(&mut doc, &plain, false)?;
                        } else {
                            doc = with_id_first(o.clone());
                            if !doc.contains_key("_id") {
                                doc.insert("_id", id.clone());
                                doc = with_id_first(doc);
                            }
                        }
                        c.replace(rec, doc).map_err(|d| dup_key_error(db, coll, *d))?;
                        self.log_op(st, "u", ns, uuid, o.clone(), Some(o2.clone()));
                        Ok(())
                    }
                    None if always_upsert || op.get("b").is_some_and(truthy) => {
                        let mut doc = doc! { "_id": id.clone() };
                        if diff_style {
                            query::apply_oplog_diff(
                                &mut doc,
                                o.get_document("diff").map_err(|_| err(2, "$v: 2 update without a diff"))?,
                            )?;
                        } else if query::is_operator_update(o) {
                            let mut plain = o.clone();
                            plain.remove("$v");
                            query::apply_update(&mut doc, &plain, true)?;
                        } else {
                            doc = with_id_first(o.clone());
                        }
                        let (_, errs) = self.insert_docs(st, db, coll, vec![doc], true)?;
                        match errs.into_iter().next() {
                            Some((_, e)) => Err(e),
                            None => Ok(()),
                        }
                    }
                    None => Err(err(
                        26,
                        format!(
                            "Failed to apply operation due to missing collection or document ({ns}): {}",
                            shell_string(&Bson::Document(op.clone()))
                        ),
                    )),
                }
            }
            "d" => {
                let id = o.get("_id").cloned().unwrap_or(Bson::Null);
                let Some(c) = Self::get_coll_mut(st, db, coll) else { return Ok(()) };
                let uuid = c.uuid;
                if let Some(rec) = c.find_id(&id) {
                    c.remove(rec);
                    self.log_op(st, "d", ns, Some(uuid), doc! { "_id": id }, None);
                }
                Ok(())
            }
            "c" => {
                let Some((name, arg)) = o.iter().next() else { return Err(err(2, "empty command in applyOps")) };
                let target = arg.as_str().unwrap_or("").to_string();
                match name.as_str() {
                    "create" => {
                        let mut options = Document::new();
                        for (k, v) in o.iter().skip(1) {
                            if k != "idIndex" {
                                options.insert(k.clone(), v.clone());
                            }
                        }
                        let kind = if options.contains_key("viewOn") {
                            "view"
                        } else if options.contains_key("timeseries") {
                            "timeseries"
                        } else {
                            "collection"
                        };
                        self.create_collection(st, db, &target, kind, options).map(|_| ())
                    }
                    "drop" => {
                        self.drop_collection(st, db, &target);
                        Ok(())
                    }
                    "dropDatabase" => {
                        let names: Vec<String> =
                            st.dbs.get(db).map(|d| d.colls.keys().cloned().collect()).unwrap_or_default();
                        for n in names {
                            self.drop_collection(st, db, &n);
                        }
                        Ok(())
                    }
                    "createIndexes" => {
                        if Self::get_coll(st, db, &target).is_none() {
                            self.create_collection(st, db, &target, "collection", Document::new())?;
                        }
                        let mut spec = Document::new();
                        for (k, v) in o.iter().skip(1) {
                            spec.insert(k.clone(), v.clone());
                        }
                        let c = Self::get_coll_mut(st, db, &target).expect("created");
                        let uuid = c.uuid;
                        if !c.indexes.iter().any(|i| i.get("name") == spec.get("name")) {
                            Self::add_index(st, db, &target, spec.clone())?;
                            let mut o = doc! { "createIndexes": &target };
                            for (k, v) in spec {
                                o.insert(k, v);
                            }
                            self.log_op(st, "c", &format!("{db}.$cmd"), Some(uuid), o, None);
                        }
                        Ok(())
                    }
                    "dropIndexes" | "deleteIndexes" => {
                        let index = o.get_str("index").unwrap_or("").to_string();
                        if let Some(c) = Self::get_coll_mut(st, db, &target) {
                            let uuid = c.uuid;
                            if let Some(pos) =
                                c.indexes.iter().position(|i| i.get_str("name").ok() == Some(index.as_str()))
                            {
                                let spec = c.indexes.remove(pos);
                                let _ = c.rebuild_unique();
                                self.log_op(st, "c", &format!("{db}.$cmd"), Some(uuid), o.clone(), Some(spec));
                            }
                        }
                        Ok(())
                    }
                    "collMod" => self.coll_mod(st, db, &target, o).map(|_| ()),
                    // A transaction's operations, as one entry holds them.
                    "applyOps" => {
                        for inner in o.get_array("applyOps").cloned().unwrap_or_default() {
                            let Bson::Document(inner) = inner else {
                                return Err(err(2, "applyOps entries must be documents"));
                            };
                            self.apply_one(st, &inner, always_upsert)?;
                        }
                        Ok(())
                    }
                    other => Err(err(2, format!("this MongoDB stand-in does not apply the oplog command {other}"))),
                }
            }
            other => Err(err(14, format!("Invalid op type: {other}"))),
        }
    }
}

enum Fault {
    Close,
    Error(CmdError),
}

impl CmdError {
    fn with_name(mut self, name: &'static str) -> CmdError {
        self.name = name;
        self
    }
    fn with_code(mut self, code: i32) -> CmdError {
        self.code = code;
        self
    }
}

/// Fields any command may carry (sessions, API version, concerns...).
const GENERIC_FIELDS: &[&str] = &[
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "readConcern",
    "writeConcern",
    "comment",
    "mayBypassWriteBlocking",
];

/// A time-series collection's options as 7.0 stores them: `granularity`
/// defaults to seconds, and `bucketMaxSpanSeconds` follows it.
fn timeseries_options(ts: &Document) -> Result<Document, CmdError> {
    let Ok(time_field) = ts.get_str("timeField") else {
        return Err(
            err(40414, "BSON field 'timeseries.timeField' is missing but a required field").with_name("Location40414")
        );
    };
    let mut out = doc! { "timeField": time_field };
    if let Ok(meta) = ts.get_str("metaField") {
        out.insert("metaField", meta);
    }
    let custom = ts.contains_key("bucketRoundingSeconds");
    if custom {
        for k in ["bucketMaxSpanSeconds", "bucketRoundingSeconds"] {
            if let Some(v) = ts.get(k) {
                out.insert(k, v.clone());
            }
        }
        return Ok(out);
    }
    let granularity = ts.get_str("granularity").unwrap_or("seconds");
    let span = match granularity {
        "seconds" => 3600,
        "minutes" => 86400,
        "hours" => 2_592_000,
        other => {
            return Err(err(
                2,
                format!("Enumeration value '{other}' for field 'timeseries.granularity' is not a valid value."),
            ));
        }
    };
    out.insert("granularity", granularity);
    out.insert("bucketMaxSpanSeconds", span);
    Ok(out)
}

fn build_info() -> Document {
    doc! {
        "version": VERSION,
        "gitVersion": "0000000000000000000000000000000000000000",
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "versionArray": [7, 0, 14, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": MAX_BSON_SIZE as i32,
        "storageEngines": ["inMemory"],
    }
}

fn get_parameter(cmd: &Document) -> Document {
    let mut out = Document::new();
    let all = matches!(cmd.get("getParameter"), Some(Bson::String(s)) if s == "*");
    let known = doc! {
        "featureCompatibilityVersion": { "version": "7.0" },
        "authenticationMechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
        "scramIterationCount": auth::SHA1_ITERATIONS as i32,
        "scramSHA256IterationCount": auth::SHA256_ITERATIONS as i32,
    };
    for (k, v) in &known {
        if all || cmd.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn binary_payload(cmd: &Document) -> Result<Vec<u8>, CmdError> {
    match cmd.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(err(40414, "BSON field 'payload' is missing but a required field").with_name("Location40414")),
    }
}

fn coll_name(cmd: &Document, command: &str) -> Result<String, CmdError> {
    match cmd.get(command) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Bson::String(_)) => Err(err(73, "Invalid namespace specified")),
        _ => Err(err(
            73,
            format!("collection name has invalid type {}", cmd.get(command).map(query::type_name).unwrap_or("missing")),
        )),
    }
}

fn opt_doc(cmd: &Document, key: &str) -> Result<Document, CmdError> {
    match cmd.get(key) {
        None | Some(Bson::Null) => Ok(Document::new()),
        Some(Bson::Document(d)) => Ok(d.clone()),
        Some(other) => Err(err(
            14,
            format!("BSON field '{key}' is the wrong type '{}', expected type 'object'", query::type_name(other)),
        )),
    }
}

fn check_names(db: &str, coll: &str) -> Result<(), CmdError> {
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(err(73, format!("Invalid database name: '{db}'")));
    }
    if coll.is_empty()
        || coll.contains('\0')
        || coll.starts_with('.')
        || (coll.contains('$') && !coll.starts_with("$cmd"))
    {
        return Err(err(73, format!("Invalid collection name: {coll}")));
    }
    Ok(())
}

/// The server keeps `_id` first (moving it there if the client did not),
/// and adds an ObjectId when there is none.
fn with_id_first(doc: Document) -> Document {
    if doc.keys().next().is_some_and(|k| k == "_id") {
        return doc;
    }
    let mut out = Document::new();
    out.insert("_id", doc.get("_id").cloned().unwrap_or_else(|| Bson::ObjectId(ObjectId::new())));
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}

fn dup_key_error(db: &str, coll: &str, dup: DupKey) -> CmdError {
    let mut e = err(
        11000,
        format!(
            "E11000 duplicate key error collection: {db}.{coll} index: {} dup key: {}",
            dup.index,
            shell_string(&Bson::Document(dup.value.clone()))
        ),
    );
    let DupKey { pattern, value, .. } = dup;
    e.dup = Some(Box::new((pattern, value)));
    e
}

/// Takes up to `batch` documents (and 16 MiB) off the cursor.
fn take_batch(cursor: &mut Cursor, batch: Option<usize>) -> Vec<Bson> {
    let mut n = batch.filter(|b| *b > 0).unwrap_or(usize::MAX);
    if batch == Some(0) {
        n = 0;
    }
    if let Some(r) = cursor.remaining {
        n = n.min(r);
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < n {
        let Some(d) = cursor.pending.front() else { break };
        let size = d.to_vec().map(|v| v.len()).unwrap_or(0);
        if !out.is_empty() && bytes + size > MAX_BSON_SIZE {
            break;
        }
        bytes += size;
        out.push(Bson::Document(cursor.pending.pop_front().expect("front exists")));
    }
    if let Some(r) = cursor.remaining.as_mut() {
        *r -= out.len();
    }
    out
}

/// The aggregation stages the stand-in runs: `$match`, `$skip`, `$limit`,
/// `$project` (inclusion), `$sort`, `$count`, and `$group` with a constant
/// `_id` and `$sum` accumulators (what drivers' countDocuments sends).
fn run_pipeline(mut docs: Vec<Document>, pipeline: &[Bson]) -> Result<Vec<Document>, CmdError> {
    for stage in pipeline {
        let Bson::Document(stage) = stage else {
            return Err(err(14, "Each element of the 'pipeline' array must be an object"));
        };
        let Some((name, arg)) = stage.iter().next() else {
            return Err(err(40323, "A pipeline stage specification object must contain exactly one field."));
        };
        match (name.as_str(), arg) {
            ("$match", Bson::Document(f)) => {
                let mut kept = Vec::new();
                for d in docs {
                    if query::matches(&d, f)? {
                        kept.push(d);
                    }
                }
                docs = kept;
            }
            ("$skip", n) => docs = docs.into_iter().skip(as_i64(n).unwrap_or(0).max(0) as usize).collect(),
            ("$limit", n) => docs.truncate(as_i64(n).unwrap_or(0).max(0) as usize),
            ("$project", Bson::Document(p)) => docs = docs.iter().map(|d| query::project(d, p)).collect(),
            ("$sort", Bson::Document(s)) => query::sort_docs(&mut docs, s)?,
            ("$count", Bson::String(field)) => {
                docs = if docs.is_empty() { Vec::new() } else { vec![doc! { field: docs.len() as i32 }] };
            }
            ("$group", Bson::Document(g)) => {
                let id = g.get("_id").cloned().unwrap_or(Bson::Null);
                if matches!(&id, Bson::String(s) if s.starts_with('$')) {
                    return Err(err(2, "this MongoDB stand-in groups by a constant _id only"));
                }
                if docs.is_empty() {
                    continue;
                }
                let mut out = doc! { "_id": id };
                for (field, acc) in g.iter().filter(|(k, _)| *k != "_id") {
                    let Bson::Document(acc) = acc else {
                        return Err(err(40234, format!("The field '{field}' must be an accumulator object")));
                    };
                    match acc.get("$sum") {
                        Some(v) if as_i64(v).is_some() => {
                            let total = as_i64(v).unwrap_or(0) * docs.len() as i64;
                            out.insert(
                                field.clone(),
                                if let Ok(t) = i32::try_from(total) { Bson::Int32(t) } else { Bson::Int64(total) },
                            );
                        }
                        _ => return Err(err(2, "this MongoDB stand-in runs $group with {$sum: <constant>} only")),
                    }
                }
                docs = vec![out];
            }
            (other, _) => {
                return Err(
                    err(40324, format!("Unrecognized pipeline stage name: '{other}'")).with_name("Location40324")
                );
            }
        }
    }
    Ok(docs)
}

mod uuid {
    //! Random (version 4) UUIDs.
    pub struct Uuid([u8; 16]);
    impl Uuid {
        pub fn as_bytes(&self) -> &[u8; 16] {
            &self.0
        }
    }
    pub fn new_v4() -> Uuid {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}
