//! `.bson` files as mongodump writes them: BSON documents one after
//! another, each starting with its own length. [`DocumentStream`] reads
//! them one document at a time (never more than one in memory) and checks
//! every element of each, nested ones included; [`check_file`] walks a
//! whole file and counts its documents, and for an oplog checks that the
//! entries' `ts` values go up.

use std::fmt;
use std::io::{self, Read};

use bson::RawDocument;
use bson::raw::{RawBsonRef, RawIter};

/// The largest document a `.bson` file may hold: MongoDB's 16 MiB limit
/// on a stored document plus the 16 KiB its internal documents (oplog
/// entries, `applyOps`) may exceed it by (`BSONObjMaxInternalSize`).
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024 + 16 * 1024;

/// The smallest document: a 4-byte length and the terminating NUL.
const MIN_DOCUMENT: usize = 5;

/// Bytes read from the file at a time.
const READ_BUFFER: usize = 1 << 20;

/// Why a `.bson` file could not be read past a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BsonError {
    /// The document's number, counting from 1.
    pub document: u64,
    /// The byte offset in the file where that document starts.
    pub offset: u64,
    /// What is wrong, in words.
    pub reason: String,
    /// True when reading the file failed (an I/O error), not its content.
    pub io: bool,
}

impl fmt::Display for BsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} at byte {}: {}", self.document, self.offset, self.reason)
    }
}

/// Reads the documents of a `.bson` file one at a time.
pub struct DocumentStream<R> {
    r: io::BufReader<R>,
    /// The current document's bytes; reused, at most [`MAX_DOCUMENT`].
    doc: Vec<u8>,
    /// Where the next document starts.
    offset: u64,
    /// Documents read so far.
    count: u64,
}

impl<R: Read> DocumentStream<R> {
    /// Reads from `r`.
    pub fn new(r: R) -> Self {
        DocumentStream { r: io::BufReader::with_capacity(READ_BUFFER, r), doc: Vec::new(), offset: 0, count: 0 }
    }

    /// Documents read so far.
    pub fn documents(&self) -> u64 {
        self.count
    }

    /// Bytes of whole documents read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The reader, for what follows a damaged document.
    pub fn into_inner(self) -> io::BufReader<R> {
        self.r
    }

    fn error(&self, reason: impl Into<String>) -> BsonError {
        BsonError { document: self.count + 1, offset: self.offset, reason: reason.into(), io: false }
    }

    fn io_error(&self, e: &io::Error) -> BsonError {
        BsonError { document: self.count + 1, offset: self.offset, reason: e.to_string(), io: true }
    }

    /// The next document, checked element by element; `None` at the end of
    /// the file.
    pub fn next_document(&mut self) -> Result<Option<&RawDocument>, BsonError> {
        let mut len = [0u8; 4];
        let got = read_full(&mut self.r, &mut len).map_err(|e| self.io_error(&e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(self.error(format!(
                "{got} byte{} follow{} the last document, too few for a document's length",
                if got == 1 { "" } else { "s" },
                if got == 1 { "s" } else { "" }
            )));
        }
        let declared = i32::from_le_bytes(len);
        if declared < MIN_DOCUMENT as i32 {
            return Err(self.error(format!("declares a length of {declared} bytes; a document has at least 5")));
        }
        let size = declared as usize;
        if size > MAX_DOCUMENT {
            return Err(self.error(format!(
                "declares a length of {size} bytes, more than MongoDB's largest document ({MAX_DOCUMENT} bytes)"
            )));
        }
        self.doc.clear();
        self.doc.resize(size, 0);
        self.doc[..4].copy_from_slice(&len);
        let body = read_full(&mut self.r, &mut self.doc[4..]).map_err(|e| self.io_error(&e))?;
        if body < size - 4 {
            return Err(
                self.error(format!("declares a length of {size} bytes; the file ends {} bytes into it", body + 4))
            );
        }
        if let Err(reason) = check_document(&self.doc) {
            return Err(self.error(reason));
        }
        self.offset += size as u64;
        self.count += 1;
        // Checked above: a valid document.
        RawDocument::from_bytes(&self.doc).map(Some).map_err(|e| self.error(describe(&e)))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a bson error says, without its type's boilerplate.
fn describe(e: &bson::error::Error) -> String {
    let what = match &e.message {
        Some(m) => m.clone(),
        None => e.kind.to_string(),
    };
    match (&e.key, e.index) {
        (Some(k), _) => format!("{what} (field {k:?})"),
        (None, Some(i)) => format!("{what} (array index {i})"),
        (None, None) => what,
    }
}

/// Checks one document completely: its length and terminator, every
/// element's type, size and value (UTF-8 of strings and field names,
/// booleans, binary lengths, code with scope), and every embedded
/// document, array and scope the same way. Nesting is walked with an
/// explicit stack, so a deeply nested document cannot exhaust the stack.
pub fn check_document(bytes: &[u8]) -> Result<(), String> {
    let doc = RawDocument::from_bytes(bytes).map_err(|e| describe(&e))?;
    // Each level: its elements, and the field that holds it (for messages).
    let mut stack: Vec<(RawIter<'_>, String)> = vec![(doc.iter_elements(), String::new())];
    loop {
        let next = match stack.last_mut() {
            None => break,
            Some((iter, _)) => iter.next(),
        };
        let Some(next) = next else {
            stack.pop();
            continue;
        };
        // The dotted path of the field `key` at the current level.
        let at = |key: Option<&str>, stack: &[(RawIter<'_>, String)]| -> String {
            let mut path: Vec<&str> = stack.iter().skip(1).map(|(_, k)| k.as_str()).collect();
            path.extend(key);
            path.join(".")
        };
        let element = next.map_err(|e| match &e.key {
            Some(k) => format!("{} (field {:?})", describe_plain(&e), at(Some(k), &stack)),
            None if stack.len() > 1 => format!("{} (in field {:?})", describe_plain(&e), at(None, &stack)),
            None => describe_plain(&e),
        })?;
        let key = element.key().as_str();
        let value =
            element.value().map_err(|e| format!("{} (field {:?})", describe_plain(&e), at(Some(key), &stack)))?;
        let nested = match value {
            RawBsonRef::Document(d) => Some(d.iter_elements()),
            RawBsonRef::Array(a) => Some(a.iter_elements()),
            RawBsonRef::JavaScriptCodeWithScope(c) => Some(c.scope.iter_elements()),
            _ => None,
        };
        if let Some(iter) = nested {
            stack.push((iter, key.to_string()));
        }
    }
    Ok(())
}

/// What a bson error says, without the field it names.
fn describe_plain(e: &bson::error::Error) -> String {
    match &e.message {
        Some(m) => m.clone(),
        None => e.kind.to_string(),
    }
}

/// A BSON timestamp: seconds and an increment within the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts {
    /// Seconds since the Unix epoch.
    pub time: u32,
    /// Order within the second.
    pub increment: u32,
}

impl fmt::Display for Ts {
    /// `seconds:increment`, the form the `mongodb.oplog-*` attributes hold.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.time, self.increment)
    }
}

/// What a walk over a whole `.bson` file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCheck {
    /// Valid documents before the end or the damage.
    pub documents: u64,
    /// Bytes of those documents.
    pub bytes: u64,
    /// Where the file stops being valid BSON, if it does.
    pub damage: Option<BsonError>,
    /// Oplogs: the first and last entry's `ts`.
    pub first_ts: Option<Ts>,
    /// See `first_ts`.
    pub last_ts: Option<Ts>,
    /// Oplogs: each entry without a timestamp `ts`, or whose `ts` is not
    /// after the one before (at most [`MAX_ORDER_PROBLEMS`] listed).
    pub order_problems: Vec<String>,
}

/// Ordering problems listed per oplog; the rest are counted.
pub const MAX_ORDER_PROBLEMS: usize = 20;

/// Walks every document of `r` (a `.bson` file) with [`DocumentStream`]; an
/// oplog's entries must carry a timestamp `ts` that goes up. Damage ends
/// the walk and is returned in [`FileCheck::damage`] with what came before
/// it; the reader is handed back so that the caller can read the rest.
/// Only reading errors (and `cancelled()`) are `Err`.
pub fn check_file<R: Read>(
    r: R,
    oplog: bool,
    mut cancelled: impl FnMut() -> bool,
) -> Result<(FileCheck, io::BufReader<R>), BsonError> {
    let mut stream = DocumentStream::new(r);
    let mut check = FileCheck::default();
    let mut unordered = 0usize;
    loop {
        let number = stream.documents() + 1;
        let offset = stream.offset();
        let doc = match stream.next_document() {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) if e.io => return Err(e),
            Err(e) => {
                check.damage = Some(e);
                break;
            }
        };
        if oplog {
            let problem = match doc.get("ts") {
                Ok(Some(RawBsonRef::Timestamp(t))) => {
                    let ts = Ts { time: t.time, increment: t.increment };
                    let before = check.last_ts;
                    check.first_ts.get_or_insert(ts);
                    check.last_ts = Some(ts);
                    match before {
                        Some(b) if ts <= b => Some(format!(
                            "entry {number} at byte {offset} has ts {ts}, not after the entry before it ({b})"
                        )),
                        _ => None,
                    }
                }
                Ok(Some(other)) => Some(format!(
                    "entry {number} at byte {offset}: `ts` is a {:?}, not a timestamp",
                    other.element_type()
                )),
                Ok(None) => Some(format!("entry {number} at byte {offset} has no `ts`")),
                Err(e) => Some(format!("entry {number} at byte {offset}: {}", describe(&e))),
            };
            if let Some(p) = problem {
                unordered += 1;
                if check.order_problems.len() < MAX_ORDER_PROBLEMS {
                    check.order_problems.push(p);
                }
            }
        }
        if stream.documents().is_multiple_of(4096) && cancelled() {
            return Err(BsonError {
                document: stream.documents(),
                offset: stream.offset(),
                reason: "cancelled".into(),
                io: true,
            });
        }
    }
    if unordered > MAX_ORDER_PROBLEMS {
        check.order_problems.push(format!("... and {} more", unordered - MAX_ORDER_PROBLEMS));
    }
    check.documents = stream.documents();
    check.bytes = stream.offset();
    Ok((check, stream.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mongodb").join(name)
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(data(name)).unwrap_or_else(|e| panic!("{}: {e}", data(name).display()))
    }

    fn walk(bytes: &[u8], oplog: bool) -> FileCheck {
        check_file(bytes, oplog, || false).expect("no I/O errors from a slice").0
    }

    #[test]
    fn good_files_parse_with_their_counts() {
        for (name, docs) in [
            ("bsondump-testdata/sample.bson", 4),
            ("bsondump-testdata/all_types.bson", 0),
            ("bsondump-testdata/all_in_one_doc.bson", 1),
            ("mongorestore-testdata/hashedIndexes.bson", 0),
            ("mongorestore-testdata/indextestdump/indextest/test_collection.bson", 0),
            ("mongorestore-testdata/timeseries_tests/ts_dump/timeseries_test/system.buckets.foo_ts.bson", 0),
            ("mongorestore-testdata/usersdump/admin/system.users.bson", 0),
        ] {
            let bytes = read(name);
            let c = walk(&bytes, false);
            assert_eq!(c.damage, None, "{name}");
            assert_eq!(c.bytes, bytes.len() as u64, "{name}");
            if docs > 0 {
                assert_eq!(c.documents, docs, "{name}");
            } else {
                assert!(c.documents > 0, "{name}");
            }
        }
    }

    #[test]
    fn oplogs_are_in_timestamp_order() {
        for name in [
            "mongorestore-testdata/oplogdump/oplog.bson",
            "mongorestore-testdata/collMod_ttl_index/oplog.bson",
            "mongorestore-testdata/timeseries_tests/ts_dump_with_oplog/oplog.bson",
        ] {
            let c = walk(&read(name), true);
            assert_eq!(c.damage, None, "{name}");
            assert!(c.documents > 0 && c.order_problems.is_empty(), "{name}: {c:?}");
            assert!(c.first_ts <= c.last_ts, "{name}");
        }
    }

    #[test]
    fn damaged_files_are_rejected_with_document_and_offset() {
        // (file, document number, its offset, words of the reason).
        for (name, document, offset, words) in [
            // The NUL that ends the field name `b` of document 1 became
            // 0x01: the name runs on into the string's length.
            ("bad_cstring.bson", 1, 0, "(field \"b\\u{1}\\u{e}\")"),
            // Element type 0xaa in document 1.
            ("bad_type.bson", 1, 0, "invalid tag: 170 (field \"a\")"),
            // Document 2 has a field named `a.d` (valid BSON: MongoDB
            // stores dotted names since 3.6); the file is damaged by the
            // one byte (0x0a) after its last document.
            ("invalid_field_name.bson", 5, 283, "too few for a document's length"),
            // Cut inside document 3 (at byte 164).
            ("partial_file.bson", 3, 164, "the file ends 13 bytes into it"),
            ("random_bytes.bson", 1, 0, "declares a length"),
        ] {
            let bytes = read(&format!("bsondump-testdata/{name}"));
            let c = walk(&bytes, false);
            let e = c.damage.unwrap_or_else(|| panic!("{name} passed"));
            assert_eq!((e.document, e.offset), (document, offset), "{name}: {e}");
            assert!(e.reason.contains(words), "{name}: {e}");
            assert_eq!(c.documents, document - 1, "{name}");
            assert!(!e.io);
        }
    }

    #[test]
    fn sample_decodes_to_what_bsondump_prints() {
        let bytes = read("bsondump-testdata/sample.bson");
        let expected: Vec<serde_json::Value> = std::fs::read_to_string(data("bsondump-testdata/sample.json"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut stream = DocumentStream::new(&bytes[..]);
        let mut got = Vec::new();
        while let Some(doc) = stream.next_document().unwrap() {
            let doc = bson::Document::try_from(doc).unwrap();
            got.push(bson::Bson::Document(doc).into_canonical_extjson());
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = read("bsondump-testdata/all_types.bson");
        // Where each document ends: a cut there leaves valid documents.
        let mut ends = vec![0u64];
        let mut stream = DocumentStream::new(&bytes[..]);
        while stream.next_document().unwrap().is_some() {
            ends.push(stream.offset());
        }
        assert!(ends.len() > 2, "several documents");
        for cut in 0..bytes.len() {
            let c = walk(&bytes[..cut], false);
            if let Some(k) = ends.iter().position(|&e| e == cut as u64) {
                assert_eq!((c.damage, c.documents), (None, k as u64), "cut at {cut}");
                continue;
            }
            let e = c.damage.unwrap_or_else(|| panic!("a cut at {cut} passed"));
            let inside = ends.iter().rposition(|&e| e < cut as u64).unwrap();
            assert_eq!((e.document, e.offset), (inside as u64 + 1, ends[inside]), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        // Every byte of a file of every type, set to a few values: the walk
        // ends in a result, never a panic.
        let bytes = read("bsondump-testdata/all_in_one_doc.bson");
        for at in 0..bytes.len() {
            for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff, bytes[at] ^ 0x20] {
                let mut b = bytes.clone();
                b[at] = v;
                let _ = walk(&b, true);
            }
        }
    }

    #[test]
    fn deep_nesting_does_not_exhaust_the_stack() {
        // 100,000 nested documents `{a: {a: ...}}`.
        let depth = 100_000usize;
        let mut doc = vec![5u8, 0, 0, 0, 0];
        for _ in 0..depth {
            let mut outer = Vec::with_capacity(doc.len() + 8);
            let len = (doc.len() + 4 + 1 + 2 + 1) as i32;
            outer.extend_from_slice(&len.to_le_bytes());
            outer.extend_from_slice(&[0x03, b'a', 0]);
            outer.extend_from_slice(&doc);
            outer.push(0);
            doc = outer;
        }
        assert!(doc.len() < MAX_DOCUMENT);
        assert_eq!(check_document(&doc), Ok(()));
        // Damage at the bottom is found, and named by its path.
        let n = doc.len();
        doc[n / 2] = 0x42;
        assert!(check_document(&doc).is_err());
    }

    #[test]
    fn oversized_and_undersized_lengths_are_refused() {
        let mut big = Vec::new();
        big.extend_from_slice(&((MAX_DOCUMENT + 1) as i32).to_le_bytes());
        let e = walk(&big, false).damage.unwrap();
        assert!(e.reason.contains("largest document"), "{e}");
        let e = walk(&[4, 0, 0, 0, 0], false).damage.unwrap();
        assert!(e.reason.contains("at least 5"), "{e}");
        let e = walk(&(-1i32).to_le_bytes(), false).damage.unwrap();
        assert!(e.reason.contains("at least 5"), "{e}");
    }

    #[test]
    fn oplog_order_problems_are_named() {
        let oplog = read("mongorestore-testdata/oplogdump/oplog.bson");
        let c = walk(&oplog, true);
        assert!(c.documents >= 2);
        // The file twice: the second copy's first entry goes back in time.
        let twice = [oplog.clone(), oplog.clone()].concat();
        let c2 = walk(&twice, true);
        assert_eq!(c2.documents, 2 * c.documents);
        let p = &c2.order_problems[0];
        assert!(
            p.starts_with(&format!("entry {} at byte {}", c.documents + 1, oplog.len())) && p.contains("not after"),
            "{p}"
        );
    }
}
