//! The small part of MongoDB's query and update language the stand-in
//! understands: BSON value ordering, filters (equality, `$gt`/`$gte`/`$lt`/
//! `$lte`/`$ne`/`$in`/`$nin`/`$exists`, `$and`/`$or`), sorts, inclusion
//! projections and `$set`/`$unset`/`$inc`/`$setOnInsert` updates.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// An error in a filter or update, as MongoDB reports it (code, codeName,
/// message).
#[derive(Debug, Clone)]
pub struct QueryError {
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
}

impl QueryError {
    pub fn bad_value(message: impl Into<String>) -> Self {
        QueryError { code: 2, code_name: "BadValue", message: message.into() }
    }
    fn failed_to_parse(message: impl Into<String>) -> Self {
        QueryError { code: 9, code_name: "FailedToParse", message: message.into() }
    }
}

/// MongoDB's canonical type order (BSON comparison spec).
fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Double(d) => Some(*d),
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        _ => None,
    }
}

/// Compares two BSON values the way MongoDB orders them.
pub fn cmp_bson(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        _ if ra == 2 => {
            let (x, y) = (as_f64(a).unwrap_or(f64::NAN), as_f64(b).unwrap_or(f64::NAN));
            x.partial_cmp(&y).unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()).reverse())
        }
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Document(x), Bson::Document(y)) => cmp_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = cmp_bson(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.as_str().cmp(y.pattern.as_str()).then(x.options.as_str().cmp(y.options.as_str()))
        }
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn cmp_docs(x: &Document, y: &Document) -> Ordering {
    let mut yi = y.iter();
    for (k, v) in x {
        let Some((k2, v2)) = yi.next() else { return Ordering::Greater };
        let o = type_rank(v).cmp(&type_rank(v2)).then(k.as_bytes().cmp(k2.as_bytes())).then(cmp_bson(v, v2));
        if o != Ordering::Equal {
            return o;
        }
    }
    if yi.next().is_some() { Ordering::Less } else { Ordering::Equal }
}

/// The value at a dotted `path` (no traversal into arrays).
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut cur = doc;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let v = cur.get(p)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        match v {
            Bson::Document(d) => cur = d,
            _ => return None,
        }
    }
    None
}

/// Whether `doc` matches `filter`.
pub fn matches(doc: &Document, filter: &Document) -> Result<bool, QueryError> {
    for (key, cond) in filter {
        let ok = match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let Bson::Array(list) = cond else {
                    return Err(QueryError::bad_value(format!("{key} must be an array")));
                };
                let mut results = Vec::new();
                for sub in list {
                    let Bson::Document(sub) = sub else {
                        return Err(QueryError::bad_value(format!("{key} argument's entries must be objects")));
                    };
                    results.push(matches(doc, sub)?);
                }
                match key.as_str() {
                    "$and" => results.iter().all(|r| *r),
                    "$or" => results.iter().any(|r| *r),
                    _ => !results.iter().any(|r| *r),
                }
            }
            k if k.starts_with('$') => {
                return Err(QueryError::bad_value(format!("unknown top level operator: {k}")));
            }
            path => field_matches(get_path(doc, path), cond)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn is_operator_doc(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

/// Equality the way a query sees it: a field holding an array matches any of
/// its elements, or the whole array.
fn equals(value: Option<&Bson>, want: &Bson) -> bool {
    match value {
        None => matches!(want, Bson::Null),
        Some(v) => {
            if cmp_bson(v, want) == Ordering::Equal && type_rank(v) == type_rank(want) {
                return true;
            }
            if let Bson::Array(items) = v {
                return items.iter().any(|i| cmp_bson(i, want) == Ordering::Equal && type_rank(i) == type_rank(want));
            }
            false
        }
    }
}

fn compare(value: Option<&Bson>, want: &Bson, ok: fn(Ordering) -> bool) -> bool {
    let one = |v: &Bson| type_rank(v) == type_rank(want) && ok(cmp_bson(v, want));
    match value {
        None => matches!(want, Bson::Null) && ok(Ordering::Equal),
        Some(Bson::Array(items)) => items.iter().any(one) || one(&Bson::Array(items.clone())),
        Some(v) => one(v),
    }
}

fn field_matches(value: Option<&Bson>, cond: &Bson) -> Result<bool, QueryError> {
    let Bson::Document(ops) = cond else { return Ok(equals(value, cond)) };
    if !is_operator_doc(ops) {
        return Ok(equals(value, cond));
    }
    for (op, arg) in ops {
        let ok = match op.as_str() {
            "$eq" => equals(value, arg),
            "$ne" => !equals(value, arg),
            "$gt" => compare(value, arg, |o| o == Ordering::Greater),
            "$gte" => compare(value, arg, |o| o != Ordering::Less),
            "$lt" => compare(value, arg, |o| o == Ordering::Less),
            "$lte" => compare(value, arg, |o| o != Ordering::Greater),
            "$in" | "$nin" => {
                let Bson::Array(list) = arg else {
                    return Err(QueryError::bad_value(format!("{op} needs an array")));
                };
                let found = list.iter().any(|w| equals(value, w));
                if op == "$in" { found } else { !found }
            }
            "$exists" => {
                let want = match arg {
                    Bson::Boolean(b) => *b,
                    other => as_f64(other).is_some_and(|n| n != 0.0),
                };
                value.is_some() == want
            }
            "$not" => !field_matches(value, arg)?,
            other => return Err(QueryError::bad_value(format!("unknown operator: {other}"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sorts `docs` by a sort specification (`{field: 1 | -1}`); `$natural`
/// keeps (or reverses) insertion order.
pub fn sort_docs(docs: &mut [Document], sort: &Document) -> Result<(), QueryError> {
    let mut keys = Vec::new();
    for (k, v) in sort {
        let dir = match as_f64(v) {
            Some(1.0) => 1,
            Some(-1.0) => -1,
            _ => return Err(QueryError::bad_value(format!("bad sort specification: {k}"))),
        };
        keys.push((k.clone(), dir));
    }
    if let [(k, dir)] = keys.as_slice()
        && k == "$natural"
    {
        if *dir == -1 {
            docs.reverse();
        }
        return Ok(());
    }
    docs.sort_by(|a, b| {
        for (k, dir) in &keys {
            let (x, y) = (get_path(a, k).cloned().unwrap_or(Bson::Null), get_path(b, k).cloned().unwrap_or(Bson::Null));
            let o = cmp_bson(&x, &y);
            if o != Ordering::Equal {
                return if *dir == 1 { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    });
    Ok(())
}

/// Applies an inclusion (or exclusion) projection.
pub fn project(doc: &Document, projection: &Document) -> Document {
    if projection.is_empty() {
        return doc.clone();
    }
    let truthy = |v: &Bson| match v {
        Bson::Boolean(b) => *b,
        other => as_f64(other).is_some_and(|n| n != 0.0),
    };
    let inclusion = projection.iter().any(|(k, v)| k != "_id" && truthy(v));
    let id_excluded = projection.get("_id").is_some_and(|v| !truthy(v));
    if inclusion {
        let mut out = Document::new();
        for (k, v) in doc {
            let included = if k == "_id" { !id_excluded } else { projection.get(k).is_some_and(truthy) };
            if included {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    } else {
        let mut out = doc.clone();
        for (k, v) in projection {
            if !truthy(v) {
                out.remove(k);
            }
        }
        out
    }
}

/// What an update changed at the top level, for an oplog `$v: 2` diff.
#[derive(Default, Debug)]
pub struct Diff {
    pub updated: Document,
    pub inserted: Document,
    pub deleted: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.inserted.is_empty() && self.deleted.is_empty()
    }
    /// `{$v: 2, diff: {d: {...}, u: {...}, i: {...}}}` as an oplog holds it.
    pub fn to_oplog(&self) -> Document {
        let mut diff = Document::new();
        if !self.deleted.is_empty() {
            let mut d = Document::new();
            for k in &self.deleted {
                d.insert(k.clone(), false);
            }
            diff.insert("d", d);
        }
        if !self.updated.is_empty() {
            diff.insert("u", self.updated.clone());
        }
        if !self.inserted.is_empty() {
            diff.insert("i", self.inserted.clone());
        }
        bson::doc! { "$v": 2, "diff": diff }
    }
}

/// Whether an update document uses operators (`$set`...) rather than
/// replacing the document.
pub fn is_operator_update(update: &Document) -> bool {
    update.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn set_path(doc: &mut Document, path: &str, value: Bson) -> Result<(), QueryError> {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
            Ok(())
        }
        Some((head, rest)) => {
            if !doc.contains_key(head) {
                doc.insert(head, Document::new());
            }
            match doc.get_mut(head) {
                Some(Bson::Document(sub)) => set_path(sub, rest, value),
                _ => Err(QueryError {
                    code: 28,
                    code_name: "PathNotViable",
                    message: format!("Cannot create field '{rest}' in element {{{head}: ...}}"),
                }),
            }
        }
    }
}

fn unset_path(doc: &mut Document, path: &str) {
    match path.split_once('.') {
        None => {
            doc.remove(path);
        }
        Some((head, rest)) => {
            if let Some(Bson::Document(sub)) = doc.get_mut(head) {
                unset_path(sub, rest);
            }
        }
    }
}

/// Applies `$set`/`$unset`/`$inc` (and `$setOnInsert` when `inserting`) to
/// `doc` and returns the top-level diff.
pub fn apply_update(doc: &mut Document, update: &Document, inserting: bool) -> Result<Diff, QueryError> {
    let before = doc.clone();
    for (op, fields) in update {
        let Bson::Document(fields) = fields else {
            return Err(QueryError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {fields}}}",
                type_name(fields)
            )));
        };
        for (path, value) in fields {
            if path == "_id" || path.starts_with("_id.") {
                if op == "$set" && get_path(doc, path) == Some(value) {
                    continue;
                }
                return Err(QueryError {
                    code: 66,
                    code_name: "ImmutableField",
                    message: "Performing an update on the path '_id' would modify the immutable field '_id'".into(),
                });
            }
            match op.as_str() {
                "$set" => set_path(doc, path, value.clone())?,
                "$setOnInsert" => {
                    if inserting {
                        set_path(doc, path, value.clone())?
                    }
                }
                "$unset" => unset_path(doc, path),
                "$inc" => {
                    let cur = get_path(doc, path).cloned();
                    let sum = match (cur, value) {
                        (None, v) => v.clone(),
                        (Some(Bson::Int32(a)), Bson::Int32(b)) => match a.checked_add(*b) {
                            Some(s) => Bson::Int32(s),
                            None => Bson::Int64(i64::from(a) + i64::from(*b)),
                        },
                        (Some(Bson::Int32(a)), Bson::Int64(b)) => Bson::Int64(i64::from(a) + b),
                        (Some(Bson::Int64(a)), Bson::Int32(b)) => Bson::Int64(a + i64::from(*b)),
                        (Some(Bson::Int64(a)), Bson::Int64(b)) => Bson::Int64(a + b),
                        (Some(a), b) => match (as_f64(&a), as_f64(b)) {
                            (Some(x), Some(y)) => Bson::Double(x + y),
                            _ => {
                                return Err(QueryError {
                                    code: 14,
                                    code_name: "TypeMismatch",
                                    message: format!(
                                        "Cannot apply $inc to a value of non-numeric type. {{_id: ...}} has the field '{path}' of non-numeric type {}",
                                        type_name(&a)
                                    ),
                                });
                            }
                        },
                    };
                    set_path(doc, path, sum)?
                }
                other => {
                    return Err(QueryError::failed_to_parse(format!(
                        "Unknown modifier: {other}. Expected a valid update modifier or pipeline-style update specified as an array"
                    )));
                }
            }
        }
    }
    Ok(top_level_diff(&before, doc))
}

/// The top-level differences between two versions of a document.
pub fn top_level_diff(before: &Document, after: &Document) -> Diff {
    let mut diff = Diff::default();
    for (k, v) in after {
        match before.get(k) {
            None => {
                diff.inserted.insert(k.clone(), v.clone());
            }
            Some(old) if old != v => {
                diff.updated.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            diff.deleted.push(k.clone());
        }
    }
    diff
}

/// Applies an oplog `$v: 2` diff (`d`, `u`, `i`, and `s<field>` subdiffs).
pub fn apply_oplog_diff(doc: &mut Document, diff: &Document) -> Result<(), QueryError> {
    for (k, v) in diff {
        match (k.as_str(), v) {
            ("d", Bson::Document(d)) => {
                for f in d.keys() {
                    doc.remove(f);
                }
            }
            ("u", Bson::Document(u)) | ("i", Bson::Document(u)) => {
                for (f, val) in u {
                    doc.insert(f.clone(), val.clone());
                }
            }
            (s, Bson::Document(sub)) if s.starts_with('s') && s.len() > 1 => {
                let field = &s[1..];
                if !matches!(doc.get(field), Some(Bson::Document(_))) {
                    doc.insert(field, Document::new());
                }
                if let Some(Bson::Document(inner)) = doc.get_mut(field) {
                    apply_oplog_diff(inner, sub)?;
                }
            }
            _ => return Err(QueryError::bad_value(format!("unsupported oplog diff field {k:?}"))),
        }
    }
    Ok(())
}

/// MongoDB's name for a value's type (as in `$type` and error messages).
pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "object",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::Timestamp(_) => "timestamp",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::DateTime(_) => "date",
        Bson::Symbol(_) => "symbol",
        Bson::Decimal128(_) => "decimal",
        Bson::Undefined => "undefined",
        Bson::MaxKey => "maxKey",
        Bson::MinKey => "minKey",
        Bson::DbPointer(_) => "dbPointer",
    }
}

/// A document rendered the way the server writes one into an error message
/// (`{ find: "c", filter: {}, $db: "test" }`).
pub fn shell_string(v: &Bson) -> String {
    match v {
        Bson::Document(d) => {
            if d.is_empty() {
                return "{}".into();
            }
            let fields: Vec<String> = d.iter().map(|(k, v)| format!("{k}: {}", shell_string(v))).collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Bson::Array(a) => {
            if a.is_empty() {
                return "[]".into();
            }
            format!("[ {} ]", a.iter().map(shell_string).collect::<Vec<_>>().join(", "))
        }
        Bson::String(s) => format!("{s:?}"),
        Bson::Double(d) => {
            if d.fract() == 0.0 && d.abs() < 1e15 {
                format!("{d:.1}")
            } else {
                format!("{d}")
            }
        }
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".into(),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        Bson::Binary(b) if u8::from(b.subtype) == 4 && b.bytes.len() == 16 => {
            let h = hex(&b.bytes);
            format!("UUID(\"{}-{}-{}-{}-{}\")", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
        }
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        other => other.to_string(),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
