//! Seeding from a mongodump directory: `<db>/<coll>.bson` (BSON documents
//! back to back) and `<db>/<coll>.metadata.json` (extended JSON with
//! `options`, `indexes`, `uuid`, `type`), as mongodump 100.x writes them.
//! Compressed (`--gzip`) and archive dumps are not read.

use std::io;
use std::path::Path;

use bson::{Bson, Document};

use crate::server::{Shared, State};

fn bad(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

/// Loads every database directory under `dir`.
pub(crate) fn load(shared: &Shared, st: &mut State, dir: &Path) -> io::Result<()> {
    let mut dbs: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    dbs.sort_by_key(|e| e.file_name());
    for db in dbs {
        if !db.file_type()?.is_dir() {
            continue; // oplog.bson and prelude.json of `mongodump --oplog`
        }
        let db_name = db.file_name().to_string_lossy().into_owned();
        let mut files: Vec<_> = std::fs::read_dir(db.path())?.collect::<io::Result<_>>()?;
        files.sort_by_key(|e| e.file_name());
        // Collections first, views after (a view names its source).
        let mut views = Vec::new();
        for f in &files {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(coll) = name.strip_suffix(".metadata.json") else { continue };
            let path = f.path();
            let text = std::fs::read_to_string(&path)?;
            let meta = if text.trim().is_empty() {
                Bson::Document(Document::new())
            } else {
                parse_json(&text).map_err(|e| bad(&path, e))?
            };
            let meta = match meta {
                Bson::Document(d) => d,
                _ => return Err(bad(&path, "not a JSON object")),
            };
            let coll = unescape(coll);
            if meta.get_str("type").ok() == Some("view")
                || meta.get_document("options").is_ok_and(|o| o.contains_key("viewOn"))
            {
                views.push((coll, meta));
                continue;
            }
            let docs_path = db.path().join(format!("{}.bson", name.trim_end_matches(".metadata.json")));
            let docs = if docs_path.exists() { read_bson_file(&docs_path)? } else { Vec::new() };
            shared.load_collection(st, &db_name, &coll, &meta, docs).map_err(|e| bad(&path, e))?;
        }
        for (coll, meta) in views {
            shared.load_collection(st, &db_name, &coll, &meta, Vec::new()).map_err(|e| bad(db.path().as_path(), e))?;
        }
        // A .bson file without metadata still holds a collection.
        for f in &files {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(coll) = name.strip_suffix(".bson") else { continue };
            if db.path().join(format!("{coll}.metadata.json")).exists() {
                continue;
            }
            let docs = read_bson_file(&f.path())?;
            shared
                .load_collection(st, &db_name, &unescape(coll), &Document::new(), docs)
                .map_err(|e| bad(&f.path(), e))?;
        }
    }
    Ok(())
}

/// mongodump percent-escapes some characters of collection names.
fn unescape(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&name[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_bson_file(path: &Path) -> io::Result<Vec<Document>> {
    let data = std::fs::read(path)?;
    let mut docs = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data.len() - i < 5 {
            return Err(bad(path, format!("truncated document at byte {i}")));
        }
        let len = i32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        if len < 5 || i + len as usize > data.len() {
            return Err(bad(path, format!("document at byte {i} has length {len}, past the end")));
        }
        let doc = Document::from_reader(&data[i..i + len as usize])
            .map_err(|e| bad(path, format!("document at byte {i}: {e}")))?;
        docs.push(doc);
        i += len as usize;
    }
    Ok(docs)
}

/// Parses (canonical or relaxed) extended JSON, keeping key order.
pub(crate) fn parse_json(text: &str) -> Result<Bson, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    /// A value as plain JSON (for extended JSON wrappers) or BSON.
    fn value(&mut self) -> Result<Bson, String> {
        let raw = self.raw()?;
        to_bson(raw)
    }

    fn raw(&mut self) -> Result<Raw, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Raw::Object(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    let v = self.raw()?;
                    fields.push((key, v));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Raw::Object(fields));
                        }
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Raw::Array(items));
                }
                loop {
                    items.push(self.raw()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Raw::Array(items));
                        }
                        _ => return Err(format!("expected ',' or ']' at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => Ok(Raw::Scalar(serde_json::Value::String(self.string()?))),
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(self.s[self.i], b',' | b'}' | b']')
                    && !self.s[self.i].is_ascii_whitespace()
                {
                    self.i += 1;
                }
                let tok = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                serde_json::from_str(tok).map(Raw::Scalar).map_err(|e| format!("at byte {start}: {e}"))
            }
            None => Err("unexpected end of JSON".into()),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("expected a string at byte {}", self.i));
        }
        let start = self.i;
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    return serde_json::from_str(text).map_err(|e| format!("at byte {start}: {e}"));
                }
                _ => self.i += 1,
            }
        }
        Err("unterminated string".into())
    }
}

enum Raw {
    Object(Vec<(String, Raw)>),
    Array(Vec<Raw>),
    Scalar(serde_json::Value),
}

fn scalar_str(raw: &Raw) -> Option<&str> {
    match raw {
        Raw::Scalar(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

fn field<'a>(fields: &'a [(String, Raw)], name: &str) -> Option<&'a Raw> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn number(v: &serde_json::Value) -> Result<Bson, String> {
    if let Some(i) = v.as_i64() {
        return Ok(i32::try_from(i).map(Bson::Int32).unwrap_or(Bson::Int64(i)));
    }
    v.as_f64().map(Bson::Double).ok_or_else(|| format!("{v} is not a number BSON holds"))
}

/// An extended JSON wrapper (`{"$numberInt": "2"}`, `{"$oid": ...}`...).
fn wrapper(fields: &[(String, Raw)]) -> Result<Bson, String> {
    let (key, value) = &fields[0];
    let text = || scalar_str(value).ok_or_else(|| format!("{key} needs a string"));
    Ok(match key.as_str() {
        "$numberInt" => Bson::Int32(text()?.parse().map_err(|e| format!("$numberInt: {e}"))?),
        "$numberLong" => Bson::Int64(text()?.parse().map_err(|e| format!("$numberLong: {e}"))?),
        "$numberDouble" => Bson::Double(match text()? {
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            t => t.parse().map_err(|e| format!("$numberDouble: {e}"))?,
        }),
        "$oid" => Bson::ObjectId(bson::oid::ObjectId::parse_str(text()?).map_err(|e| format!("$oid: {e}"))?),
        "$date" => match value {
            Raw::Object(inner) => match field(inner, "$numberLong").and_then(scalar_str) {
                Some(ms) => Bson::DateTime(bson::DateTime::from_millis(ms.parse().map_err(|e| format!("$date: {e}"))?)),
                None => return Err("$date: expected {\"$numberLong\": ...}".into()),
            },
            Raw::Scalar(serde_json::Value::Number(n)) => {
                Bson::DateTime(bson::DateTime::from_millis(n.as_i64().ok_or("$date: not an integer")?))
            }
            Raw::Scalar(serde_json::Value::String(s)) => {
                Bson::DateTime(bson::DateTime::parse_rfc3339_str(s).map_err(|e| format!("$date: {e}"))?)
            }
            _ => return Err("$date: unexpected value".into()),
        },
        "$binary" => {
            let Raw::Object(inner) = value else { return Err("$binary: expected an object".into()) };
            let data = field(inner, "base64").and_then(scalar_str).ok_or("$binary: no base64")?;
            let sub = field(inner, "subType").and_then(scalar_str).ok_or("$binary: no subType")?;
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("$binary: {e}"))?;
            let sub = u8::from_str_radix(sub, 16).map_err(|e| format!("$binary subType: {e}"))?;
            Bson::Binary(bson::Binary { subtype: sub.into(), bytes })
        }
        "$uuid" => {
            let hex = text()?.replace('-', "");
            let bytes: Option<Vec<u8>> =
                (0..hex.len() / 2).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Uuid,
                bytes: bytes.ok_or("$uuid: not hex")?,
            })
        }
        "$timestamp" => {
            let Raw::Object(inner) = value else { return Err("$timestamp: expected an object".into()) };
            let get = |k: &str| match field(inner, k) {
                Some(Raw::Scalar(v)) => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(format!("$timestamp.{k}")),
                _ => Err(format!("$timestamp: no {k}")),
            };
            Bson::Timestamp(bson::Timestamp { time: get("t")?, increment: get("i")? })
        }
        "$regularExpression" => {
            let Raw::Object(inner) = value else { return Err("$regularExpression: expected an object".into()) };
            let pattern = field(inner, "pattern").and_then(scalar_str).ok_or("$regularExpression: no pattern")?;
            let options = field(inner, "options").and_then(scalar_str).unwrap_or("");
            let mut options: Vec<char> = options.chars().collect();
            options.sort_unstable();
            let options: String = options.into_iter().collect();
            Bson::RegularExpression(bson::Regex {
                pattern: pattern.to_string().try_into().map_err(|e| format!("$regularExpression: {e}"))?,
                options: options.try_into().map_err(|e| format!("$regularExpression: {e}"))?,
            })
        }
        "$minKey" => Bson::MinKey,
        "$maxKey" => Bson::MaxKey,
        "$undefined" => Bson::Undefined,
        "$symbol" => Bson::Symbol(text()?.to_string()),
        "$code" if fields.len() == 1 => Bson::JavaScriptCode(text()?.to_string()),
        // Not a wrapper: an ordinary document whose first key starts with $.
        _ => {
            let mut d = Document::new();
            for (k, v) in fields.iter() {
                d.insert(k.clone(), to_bson_ref(v)?);
            }
            Bson::Document(d)
        }
    })
}

fn to_bson_ref(raw: &Raw) -> Result<Bson, String> {
    match raw {
        Raw::Object(fields) => {
            if fields.first().is_some_and(|(k, _)| k.starts_with('$')) {
                return wrapper(fields);
            }
            let mut d = Document::new();
            for (k, v) in fields {
                d.insert(k.clone(), to_bson_ref(v)?);
            }
            Ok(Bson::Document(d))
        }
        Raw::Array(items) => Ok(Bson::Array(items.iter().map(to_bson_ref).collect::<Result<_, _>>()?)),
        Raw::Scalar(serde_json::Value::Null) => Ok(Bson::Null),
        Raw::Scalar(serde_json::Value::Bool(b)) => Ok(Bson::Boolean(*b)),
        Raw::Scalar(serde_json::Value::String(s)) => Ok(Bson::String(s.clone())),
        Raw::Scalar(v @ serde_json::Value::Number(_)) => number(v),
        Raw::Scalar(other) => Err(format!("unexpected JSON value {other}")),
    }
}

fn to_bson(raw: Raw) -> Result<Bson, String> {
    to_bson_ref(&raw)
}
