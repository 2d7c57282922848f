//! The mongodump directory layout: which files belong to a dump (and so to
//! a snapshot), which collection each is, the `databases`/`collections`/
//! `exclude` filters, and the checks of `.metadata.json` files against
//! what `mongorestore` and the server accept.

use serde_json::Value;

/// What a file of a dump directory is. Paths are relative to the dump
/// directory, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpFile {
    /// `<db>/<coll>.bson`, or `<coll>.bson` at the top: a collection's
    /// documents.
    Collection {
        /// The database directory; `None` at the top.
        db: Option<String>,
        /// The collection, as mongodump spelled it in the file name.
        coll: String,
    },
    /// `<db>/<coll>.metadata.json` (or at the top): options, indexes, UUID
    /// and type of a collection.
    Metadata {
        /// As for [`DumpFile::Collection`].
        db: Option<String>,
        /// As for [`DumpFile::Collection`].
        coll: String,
    },
    /// `oplog.bson` at the top (`mongodump --oplog`).
    Oplog,
    /// `prelude.json` at the top: the server and tool versions.
    Prelude,
    /// A file `mongodump --gzip` wrote (`.bson.gz`, `.metadata.json.gz`,
    /// `prelude.json.gz`): stored as it is, not checked.
    Gzip {
        /// As for [`DumpFile::Collection`], when the file is a collection's.
        db: Option<String>,
        /// The collection, or `None` for `oplog.bson.gz`/`prelude.json.gz`.
        coll: Option<String>,
    },
}

/// What `rel` (one or two path components) is in a dump, or `None` when it
/// is not a file mongodump writes.
pub fn classify(rel: &str) -> Option<DumpFile> {
    let (db, name) = match rel.split_once('/') {
        None => (None, rel),
        Some((db, name)) if !db.is_empty() && !name.contains('/') => (Some(db.to_string()), name),
        Some(_) => return None,
    };
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    if db.is_none() {
        match name {
            "oplog.bson" => return Some(DumpFile::Oplog),
            "prelude.json" => return Some(DumpFile::Prelude),
            "oplog.bson.gz" | "prelude.json.gz" => return Some(DumpFile::Gzip { db: None, coll: None }),
            _ => {}
        }
    }
    let stem = |suffix: &str| name.strip_suffix(suffix).filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(coll) = stem(".metadata.json") {
        return Some(DumpFile::Metadata { db, coll });
    }
    if let Some(coll) = stem(".bson") {
        return Some(DumpFile::Collection { db, coll });
    }
    if let Some(coll) = stem(".metadata.json.gz").or_else(|| stem(".bson.gz")) {
        return Some(DumpFile::Gzip { db, coll: Some(coll) });
    }
    None
}

/// A name as mongodump wrote it in a file name, with its `%XX` escapes
/// decoded (`caf%C3%A9s` is `cafés`). Escapes that do not make UTF-8 are
/// kept as they are.
pub fn unescape(name: &str) -> String {
    if !name.contains('%') {
        return name.to_string();
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| name.to_string())
}

/// A database or collection name as mongodump writes it in a file name:
/// bytes outside an URL path segment's safe set (`/`, `%`, spaces,
/// control characters, non-ASCII) as `%XX`, which [`unescape`] undoes.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        let safe = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Which databases and collections a backup takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these databases (none: all).
    pub databases: Vec<String>,
    /// Only these `db.coll` namespaces (none: all), besides `databases`.
    pub collections: Vec<String>,
    /// Never these databases (`db`) or namespaces (`db.coll`).
    pub exclude: Vec<String>,
}

impl Filter {
    /// True when the files of collection `coll` of `db` (`None`: a file at
    /// the top of the dump, which belongs to no database) are taken. Names
    /// are compared unescaped.
    pub fn takes(&self, db: Option<&str>, coll: &str) -> bool {
        let coll = unescape(coll);
        let Some(db) = db.map(unescape) else {
            // Top-level collection files belong to no database: a filter
            // that names databases or namespaces leaves them out.
            return self.databases.is_empty() && self.collections.is_empty() && !self.exclude.contains(&coll);
        };
        let ns = format!("{db}.{coll}");
        if self.exclude.iter().any(|x| *x == db || *x == ns) {
            return false;
        }
        if self.databases.is_empty() && self.collections.is_empty() {
            return true;
        }
        self.databases.contains(&db) || self.collections.contains(&ns)
    }

    /// True when some collection of `db` may be taken (so its directory is
    /// worth listing).
    pub fn may_take_db(&self, db: &str) -> bool {
        let db = unescape(db);
        if self.exclude.contains(&db) {
            return false;
        }
        (self.databases.is_empty() && self.collections.is_empty())
            || self.databases.contains(&db)
            || self.collections.iter().any(|ns| ns.split_once('.').is_some_and(|(d, _)| d == db))
    }
}

/// Index options the server and `mongorestore` know: the server's
/// `allowedFieldNames` (index_key_validate) and mongorestore's
/// `validIndexOptions`, the options of every index version.
pub const KNOWN_INDEX_OPTIONS: &[&str] = &[
    "2dsphereIndexVersion",
    "_id",
    "background",
    "bits",
    "bucketSize",
    "clustered",
    "coarsestIndexedLevel",
    "collation",
    "columnstoreCompressor",
    "columnstoreProjection",
    "default_language",
    "dropDups",
    "expireAfterSeconds",
    "finestIndexedLevel",
    "hidden",
    "key",
    "language_override",
    "max",
    "min",
    "name",
    "ns",
    "originalSpec",
    "partialFilterExpression",
    "prepareUnique",
    "sparse",
    "storageEngine",
    "textIndexVersion",
    "unique",
    "v",
    "weights",
    "wildcardProjection",
];

/// Index types a key may name instead of a direction.
const INDEX_TYPES: &[&str] = &["2d", "2dsphere", "2dsphere_bucket", "text", "hashed", "geoHaystack", "columnstore"];

/// Collection types mongodump records.
const COLLECTION_TYPES: &[&str] = &["collection", "view", "timeseries"];

/// Top-level fields of a metadata file.
const METADATA_FIELDS: &[&str] = &["options", "indexes", "uuid", "collectionName", "type"];

/// A number in JSON or in extended JSON (`{"$numberInt": "2"}`,
/// `$numberLong`, `$numberDouble`, `$numberDecimal`).
pub fn ext_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Object(o) if o.len() == 1 => {
            let (k, v) = o.iter().next()?;
            if !["$numberInt", "$numberLong", "$numberDouble", "$numberDecimal"].contains(&k.as_str()) {
                return None;
            }
            v.as_str()?.trim().parse::<f64>().ok()
        }
        _ => None,
    }
}

/// What checking a metadata file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataCheck {
    /// Indexes it defines.
    pub indexes: u64,
    /// What `mongorestore` or the server would refuse.
    pub problems: Vec<String>,
    /// What restores only with care (legacy index specs).
    pub notes: Vec<String>,
}

/// Checks a `.metadata.json` file as `mongorestore` reads it: an empty file
/// (no metadata) or a JSON object with `indexes` (each with a `key`
/// document and a `name`, naming only known options), `options` (an
/// object), `uuid` (32 hex digits), `type` (collection, view or
/// timeseries). Indexes of version 0 or 1 (servers before 3.4) may carry
/// options and key values that servers from 3.4 refuse: those are notes,
/// since `mongorestore --convertLegacyIndexes` restores them.
pub fn check_metadata(bytes: &[u8]) -> MetadataCheck {
    let mut c = MetadataCheck::default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        c.notes.push("empty: mongorestore restores the collection without metadata".into());
        return c;
    }
    let doc: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            c.problems.push(format!("not JSON: {e}"));
            return c;
        }
    };
    let Some(obj) = doc.as_object() else {
        c.problems.push("not a JSON object".into());
        return c;
    };
    for k in obj.keys() {
        if !METADATA_FIELDS.contains(&k.as_str()) {
            c.notes.push(format!("unknown field `{k}` (mongorestore ignores it)"));
        }
    }
    if let Some(o) = obj.get("options")
        && !o.is_object()
    {
        c.problems.push("`options` is not an object".into());
    }
    if let Some(u) = obj.get("uuid")
        && !u.as_str().is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        c.problems.push(format!("`uuid` is {u}, not 32 hex digits"));
    }
    if let Some(t) = obj.get("type")
        && !t.as_str().is_some_and(|s| COLLECTION_TYPES.contains(&s))
    {
        c.problems.push(format!("`type` is {t}, not one of collection, view, timeseries"));
    }
    if let Some(n) = obj.get("collectionName")
        && !n.is_string()
    {
        c.problems.push("`collectionName` is not a string".into());
    }
    match obj.get("indexes") {
        None => {}
        Some(Value::Array(indexes)) => {
            for (i, index) in indexes.iter().enumerate() {
                c.indexes += 1;
                check_index(i, index, &mut c);
            }
        }
        Some(_) => c.problems.push("`indexes` is not an array".into()),
    }
    c
}

fn check_index(i: usize, index: &Value, c: &mut MetadataCheck) {
    let Some(spec) = index.as_object() else {
        c.problems.push(format!("index {i} is not an object"));
        return;
    };
    let name = match spec.get("name").and_then(Value::as_str) {
        Some(n) => format!("index {i} (`{n}`)"),
        None => {
            c.problems.push(format!("index {i} has no `name`"));
            format!("index {i}")
        }
    };
    // Version 2 from MongoDB 3.4; 0 and 1 before. Absent means the
    // server's default (2).
    let version = spec.get("v").map(ext_number);
    let legacy = match version {
        None => false,
        Some(Some(v)) if v == 0.0 || v == 1.0 => true,
        Some(Some(2.0)) => false,
        Some(v) => {
            c.problems.push(format!(
                "{name} has version {}, not 0, 1 or 2",
                v.map(|v| v.to_string()).unwrap_or_else(|| "not a number".into())
            ));
            false
        }
    };
    match spec.get("key").and_then(Value::as_object) {
        None => c.problems.push(format!("{name} has no `key` document")),
        Some(key) if key.is_empty() => c.problems.push(format!("{name} has an empty `key`")),
        Some(key) => {
            for (field, dir) in key {
                let ok = match dir {
                    Value::String(s) => INDEX_TYPES.contains(&s.as_str()),
                    other => ext_number(other).is_some_and(|n| n != 0.0 && n.is_finite()),
                };
                if ok {
                    continue;
                }
                let what = format!("{name}: key `{field}` is {dir}, neither a direction nor an index type");
                if legacy {
                    c.notes.push(format!(
                        "{what}; servers from 3.4 refuse it, `mongorestore --convertLegacyIndexes` makes it 1"
                    ));
                } else {
                    c.problems.push(what);
                }
            }
        }
    }
    for option in spec.keys() {
        if KNOWN_INDEX_OPTIONS.contains(&option.as_str()) {
            continue;
        }
        if legacy {
            c.notes.push(format!(
                "{name} has option `{option}`, which servers from 3.4 refuse; `mongorestore --convertLegacyIndexes` \
                 drops it"
            ));
        } else {
            c.problems.push(format!("{name} has option `{option}`, which neither mongorestore nor the server knows"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_paths_are_classified() {
        let coll = |db: Option<&str>, c: &str| DumpFile::Collection { db: db.map(str::to_string), coll: c.into() };
        let meta = |db: Option<&str>, c: &str| DumpFile::Metadata { db: db.map(str::to_string), coll: c.into() };
        assert_eq!(classify("test/foo.bson"), Some(coll(Some("test"), "foo")));
        assert_eq!(classify("admin/system.version.bson"), Some(coll(Some("admin"), "system.version")));
        assert_eq!(classify("test/foo.metadata.json"), Some(meta(Some("test"), "foo")));
        assert_eq!(classify("hashedIndexes.bson"), Some(coll(None, "hashedIndexes")));
        assert_eq!(classify("hashedIndexes.metadata.json"), Some(meta(None, "hashedIndexes")));
        assert_eq!(classify("oplog.bson"), Some(DumpFile::Oplog));
        assert_eq!(classify("prelude.json"), Some(DumpFile::Prelude));
        assert_eq!(classify("db/oplog.bson"), Some(coll(Some("db"), "oplog")));
        assert_eq!(
            classify("test/foo.bson.gz"),
            Some(DumpFile::Gzip { db: Some("test".into()), coll: Some("foo".into()) })
        );
        for not in ["badfile.txt", "db2/c1.bin", "db1/baddir/out.bson", ".bson", "db/.metadata.json", "db/prelude.json"]
        {
            assert_eq!(classify(not), None, "{not}");
        }
    }

    #[test]
    fn names_are_unescaped_and_filtered() {
        assert_eq!(unescape("caf%C3%A9s"), "cafés");
        assert_eq!(unescape("a%24b"), "a$b");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%FF"), "%FF");
        let all = Filter::default();
        assert!(all.takes(Some("db1"), "c1") && all.takes(None, "x"));
        let f = Filter {
            databases: vec!["db1".into()],
            collections: vec!["test.cafés".into()],
            exclude: vec!["db1.secret".into()],
        };
        assert!(f.takes(Some("db1"), "c1"));
        assert!(!f.takes(Some("db1"), "secret"));
        assert!(f.takes(Some("test"), "caf%C3%A9s"));
        assert!(!f.takes(Some("test"), "other"));
        assert!(!f.takes(None, "x"));
        assert!(f.may_take_db("test") && f.may_take_db("db1") && !f.may_take_db("admin"));
        let ex = Filter { exclude: vec!["admin".into()], ..Filter::default() };
        assert!(!ex.may_take_db("admin") && !ex.takes(Some("admin"), "system.users") && ex.takes(Some("a"), "b"));
    }

    fn data(rel: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/mongodb/mongorestore-testdata")
            .join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn real_metadata_files_pass() {
        for rel in [
            "coll_with_index/test/foo.metadata.json",
            "coll_with_ttl_index/test/foo.metadata.json",
            "coll_with_geohaystack_index/geohaystack_test/foo.metadata.json",
            "hashedIndexes.metadata.json",
            "indexmetadata/indextest/test_coll_no_index_ns.metadata.json",
            "timeseries_tests/ts_dump/timeseries_test/foo_ts.metadata.json",
            "usersdump/admin/system.users.metadata.json",
            "dump_local_oplog/local/oplog.rs.metadata.json",
            "local/test_auto_idx.metadata.json",
            "testdirs/db1/c3.metadata.json",
        ] {
            let c = check_metadata(&data(rel));
            assert!(c.problems.is_empty(), "{rel}: {c:?}");
        }
        let c = check_metadata(&data("hashedIndexes.metadata.json"));
        assert_eq!(c.indexes, 4);
    }

    #[test]
    fn legacy_indexes_are_notes_and_unknown_options_of_v2_problems() {
        // Version-1 indexes with `safe: true` and key values 3.4 refuses:
        // mongorestore --convertLegacyIndexes restores them.
        let c = check_metadata(&data("indextestdump/indextest/test_collection.metadata.json"));
        assert!(c.problems.is_empty(), "{c:?}");
        assert!(c.notes.iter().any(|n| n.contains("`safe`") && n.contains("convertLegacyIndexes")), "{c:?}");
        let c = check_metadata(&data("duplicate_index_key/indextest/duplicate_index_key.metadata.json"));
        assert!(c.problems.is_empty() && c.notes.iter().any(|n| n.contains("`foo_`")), "{c:?}");

        let v2 = br#"{"indexes":[{"v":{"$numberInt":"2"},"key":{"a":1},"name":"a_1","safe":true},
            {"v":2,"key":{"b":""},"name":"b_"},{"v":2,"name":"nokey"},{"v":2,"key":{"c":1}}],
            "uuid":"xyz","type":"table","options":[]}"#;
        let c = check_metadata(v2);
        let all = c.problems.join("\n");
        for needle in [
            "index 0 (`a_1`) has option `safe`",
            "index 1 (`b_`): key `b`",
            "index 2 (`nokey`) has no `key`",
            "index 3 has no `name`",
            "`uuid` is \"xyz\"",
            "`type` is \"table\"",
            "`options` is not an object",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        assert!(!check_metadata(b"{not json").problems.is_empty());
        assert!(!check_metadata(b"[1]").problems.is_empty());
    }
}
