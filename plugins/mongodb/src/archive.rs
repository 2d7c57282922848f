//! `mongodump --archive` files, read and written as mongo-tools does
//! (`common/archive`): a magic number, a prelude (a header document, one
//! document per collection with its metadata JSON, a terminator), then
//! namespace blocks whose documents several collections may interleave,
//! each collection closed by an end header carrying a CRC-64 of its bytes.
//!
//! [`ArchiveReader`] streams the events of any reader, one document in
//! memory at a time; [`plan_archive`] walks a seekable file once and
//! records where each collection's documents lie, so that
//! [`copy_collection`] can then write one collection at a time to one
//! output (`<db>/<coll>.bson`). [`ArchiveWriter`] and [`write_archive`]
//! write an archive that `mongorestore --archive` loads.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! archive   = magic:int32 0x8199e26d, header, *collection-metadata, terminator,
//!             *(namespace-header, *document, terminator)
//! header    = {concurrent_collections: int32, version: "0.1",
//!              server_version: string, tool_version: string}
//! collection-metadata = {db, collection, metadata: string (extended JSON,
//!              the `.metadata.json` file's content, "" for none),
//!              size: int32|int64, type: string (absent before tools 100)}
//! namespace-header = {db, collection, EOF: bool, CRC: int64}
//! terminator = int32 -1 (0xffffffff)
//! ```
//!
//! A namespace's documents may come in several segments (each a header
//! with `EOF: false` and `CRC: 0`, documents, a terminator); its last block
//! is a header with `EOF: true` and the CRC-64 (Go's `hash/crc64` with the
//! ECMA table, that is CRC-64/XZ) of all its documents' bytes, and no
//! documents. The oplog is the namespace `""`.`"oplog"`; a time-series
//! collection `X` is listed in the prelude as `X` with type `timeseries`
//! and its buckets come as `system.buckets.X` (servers before 8.3).
//!
//! Turning an archive into the mongodump directory layout, one output at
//! a time:
//!
//! ```ignore
//! use coffer_plugin_mongodb::archive::{copy_collection, plan_archive};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let plan = plan_archive("/backups/all.archive")?;
//! for p in plan.problems.iter().chain(&plan.damage) {
//!     eprintln!("warning: {p}");
//! }
//! let mut file = std::fs::File::open("/backups/all.archive")?;
//! for n in &plan.namespaces {
//!     // `oplog.bson` for the oplog, else `<db>/<collection>.bson`, with
//!     // `plan.metadata(n)` as `<db>/<prelude collection>.metadata.json`.
//!     let mut out = Vec::new();
//!     let stats = copy_collection(&mut file, &plan, n, &mut out)?;
//!     for d in &stats.damage {
//!         eprintln!("warning: {d}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use bson::RawDocument;
use bson::raw::RawBsonRef;

use crate::bsonfile::{MAX_DOCUMENT, check_document, read_full};
use crate::dump::check_metadata;

/// The first four bytes of every archive (`MagicNumber`), little-endian.
pub const MAGIC: u32 = 0x8199_e26d;

/// The archive format version mongodump writes (`archiveFormatVersion`).
pub const FORMAT_VERSION: &str = "0.1";

/// Ends the prelude and every block: an int32 -1 where a document's length
/// would be.
const TERMINATOR: [u8; 4] = [0xff; 4];

/// The largest document mongo-tools' archive parser accepts
/// (`db.MaxBSONSize`). The reader accepts up to [`MAX_DOCUMENT`] like the
/// `.bson` walker; the writer leaves out larger documents, which
/// `mongorestore --archive` would refuse.
pub const MAX_ARCHIVE_DOCUMENT: usize = 16 * 1024 * 1024;

/// The smallest document: a length and the terminating NUL.
const MIN_DOCUMENT: usize = 5;

/// Bytes read from the archive at a time.
const READ_BUFFER: usize = 1 << 20;

/// Damaged documents listed per namespace (by a plan, and by a copy); the
/// rest are counted.
pub const MAX_LISTED_DAMAGE: u64 = 20;

/// The oplog's namespace in an archive: database `""`, collection `oplog`.
pub const OPLOG_COLLECTION: &str = "oplog";

/// Prefix of a time-series collection's buckets collection.
const BUCKETS_PREFIX: &str = "system.buckets.";

// ---------------------------------------------------------------------------
// CRC-64

/// The reflected ECMA-182 polynomial of Go's `crc64.ECMA` table.
const CRC64_POLY: u64 = 0xc96c_5795_d787_0f42;

/// Slice-by-8 tables of [`CRC64_POLY`].
static CRC64_TABLES: [[u64; 256]; 8] = crc64_tables();

const fn crc64_tables() -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ CRC64_POLY } else { crc >> 1 };
            k += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

/// CRC-64 as mongo-tools computes a collection's checksum:
/// `crc64.New(crc64.MakeTable(crc64.ECMA))` in Go, which is CRC-64/XZ
/// (reflected ECMA-182 polynomial, initial value and final XOR all ones).
#[derive(Debug, Clone, Copy)]
pub struct Crc64 {
    /// The running CRC, inverted (as Go keeps it between writes).
    state: u64,
}

impl Default for Crc64 {
    fn default() -> Self {
        Crc64::new()
    }
}

impl Crc64 {
    /// A CRC of nothing yet.
    pub fn new() -> Self {
        Crc64 { state: !0 }
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        let t = &CRC64_TABLES;
        let mut crc = self.state;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            crc ^= u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            crc = t[7][(crc & 0xff) as usize]
                ^ t[6][((crc >> 8) & 0xff) as usize]
                ^ t[5][((crc >> 16) & 0xff) as usize]
                ^ t[4][((crc >> 24) & 0xff) as usize]
                ^ t[3][((crc >> 32) & 0xff) as usize]
                ^ t[2][((crc >> 40) & 0xff) as usize]
                ^ t[1][((crc >> 48) & 0xff) as usize]
                ^ t[0][(crc >> 56) as usize];
        }
        for &b in chunks.remainder() {
            crc = t[0][((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
        }
        self.state = crc;
    }

    /// The CRC of everything added (Go's `Sum64`).
    pub fn value(&self) -> u64 {
        !self.state
    }
}

// ---------------------------------------------------------------------------
// Errors

/// What kind of problem an [`ArchiveError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveErrorKind {
    /// Reading the archive (or a writer's input) failed.
    Io,
    /// Writing the output failed.
    Output,
    /// The file does not start with the archive magic number.
    NotAnArchive,
    /// The archive's framing is damaged: a length, a terminator, a header;
    /// nothing after it can be read.
    Format,
    /// A document is framed correctly but is not valid BSON.
    Document,
    /// A collection's documents do not give the CRC its end header holds.
    Crc,
    /// The archive ends before a collection's end header, or lacks a
    /// collection its prelude lists.
    Unfinished,
    /// A collection's metadata JSON would be refused by mongorestore.
    Metadata,
    /// What a writer was given cannot make a valid archive.
    Input,
}

/// A problem in an archive, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError {
    /// The archive, as the caller named it (usually its path).
    pub archive: String,
    /// The namespace (`db.collection`) concerned, if one is.
    pub namespace: Option<String>,
    /// The byte offset in the archive where the problem is.
    pub offset: u64,
    /// What kind of problem.
    pub kind: ArchiveErrorKind,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "archive {}: at byte {}", self.archive, self.offset)?;
        if let Some(ns) = &self.namespace {
            write!(f, " (namespace {ns})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ArchiveError {}

/// `db.collection` as mongo-tools spells a namespace (the oplog is
/// `.oplog`).
pub fn namespace(db: &str, collection: &str) -> String {
    format!("{db}.{collection}")
}

// ---------------------------------------------------------------------------
// Prelude

/// The archive's header document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    /// `concurrent_collections`: collections mongodump dumped at once
    /// (`--numParallelCollections`); mongorestore restores at least that
    /// many at once.
    pub concurrent_collections: i32,
    /// `version`: the format version, [`FORMAT_VERSION`].
    pub version: String,
    /// `server_version`: the source server's version. mongorestore refuses
    /// an archive whose version is not `MAJOR.MINOR.PATCH` (with an
    /// optional `-suffix`).
    pub server_version: String,
    /// `tool_version`: the version of the tool that wrote the archive.
    pub tool_version: String,
}

impl ArchiveHeader {
    /// A header for an archive written one collection at a time.
    pub fn new(server_version: impl Into<String>, tool_version: impl Into<String>) -> Self {
        ArchiveHeader {
            concurrent_collections: 1,
            version: FORMAT_VERSION.to_string(),
            server_version: server_version.into(),
            tool_version: tool_version.into(),
        }
    }
}

/// One collection of the prelude.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionMetadata {
    /// `db`: the database (`""` for the oplog).
    pub db: String,
    /// `collection`: the collection (a time-series collection's own name,
    /// not its buckets').
    pub collection: String,
    /// `metadata`: the `.metadata.json` content (canonical extended JSON);
    /// empty when the collection has none (the oplog).
    pub metadata: String,
    /// `size`: the collection's size in bytes as the writer knew it
    /// (mongodump writes 0).
    pub size: i64,
    /// `type`: `collection`, `view`, `timeseries`, or `""` (the oplog);
    /// `None` when the field is absent (tools before 100).
    pub kind: Option<String>,
}

impl CollectionMetadata {
    /// A collection with its metadata JSON; its type is the JSON's `type`
    /// field, or `collection`.
    pub fn new(db: impl Into<String>, collection: impl Into<String>, metadata: impl Into<String>) -> Self {
        let metadata = metadata.into();
        let kind = serde_json::from_str::<serde_json::Value>(&metadata)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_else(|| "collection".to_string());
        CollectionMetadata { db: db.into(), collection: collection.into(), metadata, size: 0, kind: Some(kind) }
    }

    /// The oplog's entry, as mongodump writes it.
    pub fn oplog() -> Self {
        CollectionMetadata {
            db: String::new(),
            collection: OPLOG_COLLECTION.to_string(),
            metadata: String::new(),
            size: 0,
            kind: Some(String::new()),
        }
    }

    /// True for the oplog's entry.
    pub fn is_oplog(&self) -> bool {
        self.db.is_empty() && self.collection == OPLOG_COLLECTION
    }

    /// True for a time-series collection.
    pub fn is_timeseries(&self) -> bool {
        self.kind.as_deref() == Some("timeseries")
    }

    /// `db.collection`.
    pub fn namespace(&self) -> String {
        namespace(&self.db, &self.collection)
    }

    /// The collection whose name the archive's blocks carry for this one's
    /// documents: `system.buckets.X` for a time-series collection `X` from
    /// a server before 8.3 (mongo-tools' `Intent.DataCollection`), else
    /// its own name.
    pub fn data_collection(&self, server_version: &str) -> String {
        if self.is_timeseries() && parse_server_version(server_version).is_none_or(|v| v < (8, 3, 0)) {
            format!("{BUCKETS_PREFIX}{}", self.collection)
        } else {
            self.collection.clone()
        }
    }
}

/// `MAJOR.MINOR.PATCH` of a server version as mongo-tools parses it
/// (`db.StrToVersion`: a `-` or `+` suffix is dropped); `None` when it
/// does not parse (mongorestore then refuses the archive).
pub fn parse_server_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.split('-').next()?.split('+').next()?;
    let mut parts = v.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    Some((major, minor, patch))
}

/// Everything before the first namespace block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prelude {
    /// The header document.
    pub header: ArchiveHeader,
    /// The collections, in the archive's order.
    pub collections: Vec<CollectionMetadata>,
    /// Where each collection's prelude document starts.
    pub offsets: Vec<u64>,
    /// Where the namespace blocks start (after the prelude's terminator).
    pub end: u64,
}

impl Prelude {
    /// The prelude entry whose documents come under `db`.`collection` in
    /// the blocks (a time-series collection's for its buckets).
    pub fn entry_for_data(&self, db: &str, collection: &str) -> Option<usize> {
        let exact = self.collections.iter().position(|c| c.db == db && c.collection == collection);
        exact.or_else(|| {
            let view = collection.strip_prefix(BUCKETS_PREFIX)?;
            self.collections.iter().position(|c| c.db == db && c.collection == view && c.is_timeseries())
        })
    }
}

// ---------------------------------------------------------------------------
// Reading

/// One step of an archive after its prelude.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveEvent<'a> {
    /// A segment of a namespace's documents starts (a namespace may have
    /// several, between other namespaces' segments).
    Begin {
        /// The database.
        db: &'a str,
        /// The collection, as the blocks name it.
        collection: &'a str,
        /// Where the segment's header starts.
        offset: u64,
    },
    /// One document of the current segment.
    Document {
        /// Its bytes, length and terminating NUL included.
        bytes: &'a [u8],
        /// Where it starts in the archive.
        offset: u64,
        /// Why it is not valid BSON (its framing is sound, so reading goes
        /// on), if it is not.
        damage: Option<String>,
    },
    /// A namespace's end header: it has no more documents.
    End {
        /// The database.
        db: &'a str,
        /// The collection.
        collection: &'a str,
        /// Where the end header starts.
        offset: u64,
        /// The namespace's documents, in all its segments.
        documents: u64,
        /// Their bytes.
        bytes: u64,
        /// The CRC-64 the header holds.
        crc_expected: u64,
        /// The CRC-64 of the documents read.
        crc_computed: u64,
        /// True when the two agree.
        crc_ok: bool,
    },
}

/// What follows in the archive, as the reader's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between blocks: a header or the end of the archive.
    Blocks,
    /// Inside a segment of namespace `.0`: documents or its terminator.
    Segment(usize),
    /// After an end header: its terminator.
    AfterEnd,
    /// At the end, or after an error.
    Done,
}

/// A namespace seen in the blocks.
#[derive(Debug, Clone)]
struct NamespaceState {
    db: String,
    collection: String,
    crc: Crc64,
    documents: u64,
    bytes: u64,
    ended: bool,
}

/// What a read of a length-or-terminator found.
enum Frame {
    /// The input ended cleanly before it.
    Eof,
    /// The terminator.
    Terminator,
    /// A document, now in `doc`.
    Document,
}

/// A step without borrows (see [`ArchiveEvent`]).
enum Step {
    Begin(usize, u64),
    Document(u64, Option<String>),
    End(usize, u64, u64),
}

/// Reads an archive from any reader: the prelude at once, then one event
/// (one document at most) at a time.
pub struct ArchiveReader<R> {
    r: BufReader<R>,
    name: String,
    /// Bytes read so far: the offset of what comes next.
    pos: u64,
    /// The current document (at most [`MAX_DOCUMENT`]); reused.
    doc: Vec<u8>,
    prelude: Prelude,
    namespaces: Vec<NamespaceState>,
    index: HashMap<(String, String), usize>,
    state: State,
    check_documents: bool,
}

impl<R: Read> ArchiveReader<R> {
    /// Reads the magic number and the prelude of `r`; `name` (usually the
    /// path) names the archive in errors.
    pub fn new(r: R, name: impl Into<String>) -> Result<Self, ArchiveError> {
        let mut reader = ArchiveReader {
            r: BufReader::with_capacity(READ_BUFFER, r),
            name: name.into(),
            pos: 0,
            doc: Vec::new(),
            prelude: Prelude {
                header: ArchiveHeader::new("", ""),
                collections: Vec::new(),
                offsets: Vec::new(),
                end: 0,
            },
            namespaces: Vec::new(),
            index: HashMap::new(),
            state: State::Blocks,
            check_documents: true,
        };
        reader.read_prelude()?;
        Ok(reader)
    }

    /// Whether each document is checked element by element (default: yes).
    /// Framing and CRCs are always checked.
    pub fn check_documents(&mut self, yes: bool) {
        self.check_documents = yes;
    }

    /// The prelude.
    pub fn prelude(&self) -> &Prelude {
        &self.prelude
    }

    /// Bytes read so far: where the next event starts.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    fn error(
        &self,
        kind: ArchiveErrorKind,
        ns: Option<String>,
        offset: u64,
        reason: impl Into<String>,
    ) -> ArchiveError {
        ArchiveError { archive: self.name.clone(), namespace: ns, offset, kind, reason: reason.into() }
    }

    fn io_error(&self, e: &io::Error) -> ArchiveError {
        self.error(ArchiveErrorKind::Io, None, self.pos, format!("reading failed: {e}"))
    }

    /// Reads a document's length or a terminator, and the document.
    fn read_frame(&mut self, ns: Option<String>) -> Result<Frame, ArchiveError> {
        let start = self.pos;
        let mut len = [0u8; 4];
        let got = read_full(&mut self.r, &mut len).map_err(|e| self.io_error(&e))?;
        self.pos += got as u64;
        if got == 0 {
            return Ok(Frame::Eof);
        }
        if got < 4 {
            return Err(self.error(
                ArchiveErrorKind::Format,
                ns,
                start,
                format!("the archive ends {got} bytes into a document's length"),
            ));
        }
        if len == TERMINATOR {
            return Ok(Frame::Terminator);
        }
        let declared = i32::from_le_bytes(len);
        if declared < MIN_DOCUMENT as i32 || declared as usize > MAX_DOCUMENT {
            return Err(self.error(
                ArchiveErrorKind::Format,
                ns,
                start,
                format!("{declared} is neither a document length (5 to {MAX_DOCUMENT} bytes) nor the terminator"),
            ));
        }
        let size = declared as usize;
        self.doc.clear();
        self.doc.resize(size, 0);
        self.doc[..4].copy_from_slice(&len);
        let body = read_full(&mut self.r, &mut self.doc[4..]).map_err(|e| self.io_error(&e))?;
        self.pos += body as u64;
        if body < size - 4 {
            return Err(self.error(
                ArchiveErrorKind::Format,
                ns,
                start,
                format!("a document of {size} bytes starts here; the archive ends {} bytes into it", body + 4),
            ));
        }
        if self.doc[size - 1] != 0 {
            return Err(self.error(
                ArchiveErrorKind::Format,
                ns,
                start,
                format!("the document of {size} bytes starting here does not end with a NUL byte"),
            ));
        }
        Ok(Frame::Document)
    }

    fn read_prelude(&mut self) -> Result<(), ArchiveError> {
        let mut magic = [0u8; 4];
        let got = read_full(&mut self.r, &mut magic).map_err(|e| self.io_error(&e))?;
        self.pos = got as u64;
        let found = u32::from_le_bytes(magic);
        if got < 4 || found != MAGIC {
            let what = if got < 4 {
                format!("it has only {got} bytes")
            } else if magic[..2] == [0x1f, 0x8b] {
                // `mongodump --archive --gzip` compresses the whole stream.
                "it is gzip-compressed (mongodump --archive --gzip): decompress it first".to_string()
            } else {
                format!("it starts with 0x{found:08x}")
            };
            return Err(self.error(
                ArchiveErrorKind::NotAnArchive,
                None,
                0,
                format!("not a mongodump archive: an archive starts with the magic number 0x{MAGIC:08x}; {what}"),
            ));
        }
        let at = self.pos;
        match self.read_frame(None)? {
            Frame::Document => {}
            Frame::Eof => {
                return Err(self.error(ArchiveErrorKind::Format, None, at, "the archive ends before its header"));
            }
            Frame::Terminator => {
                return Err(self.error(ArchiveErrorKind::Format, None, at, "a terminator where the header should be"));
            }
        }
        self.prelude.header = self.parse_header(at)?;
        loop {
            let at = self.pos;
            match self.read_frame(None)? {
                Frame::Terminator => break,
                Frame::Eof => {
                    return Err(self.error(
                        ArchiveErrorKind::Format,
                        None,
                        at,
                        "the archive ends inside its prelude (no terminator after the collections)",
                    ));
                }
                Frame::Document => {
                    let c = self.parse_collection(at)?;
                    // mongo-tools does not refuse a collection listed twice
                    // either; lookups take the first.
                    self.prelude.collections.push(c);
                    self.prelude.offsets.push(at);
                }
            }
        }
        self.prelude.end = self.pos;
        Ok(())
    }

    /// The current document, checked; `what` names it in errors.
    fn checked_doc(&self, at: u64, what: &str) -> Result<&RawDocument, ArchiveError> {
        check_document(&self.doc)
            .and_then(|()| RawDocument::from_bytes(&self.doc).map_err(|e| e.to_string()))
            .map_err(|e| self.error(ArchiveErrorKind::Format, None, at, format!("the {what} is not valid BSON: {e}")))
    }

    fn parse_header(&self, at: u64) -> Result<ArchiveHeader, ArchiveError> {
        let doc = self.checked_doc(at, "archive header")?;
        let bad = |field: &str, e: String| {
            self.error(ArchiveErrorKind::Format, None, at, format!("archive header: `{field}` {e}"))
        };
        Ok(ArchiveHeader {
            concurrent_collections: get_int(doc, "concurrent_collections")
                .map_err(|e| bad("concurrent_collections", e))?
                .unwrap_or(0)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            version: get_string(doc, "version").map_err(|e| bad("version", e))?.unwrap_or_default(),
            server_version: get_string(doc, "server_version")
                .map_err(|e| bad("server_version", e))?
                .unwrap_or_default(),
            tool_version: get_string(doc, "tool_version").map_err(|e| bad("tool_version", e))?.unwrap_or_default(),
        })
    }

    fn parse_collection(&self, at: u64) -> Result<CollectionMetadata, ArchiveError> {
        let doc = self.checked_doc(at, "prelude's collection document")?;
        let bad = |field: &str, e: String| {
            self.error(ArchiveErrorKind::Format, None, at, format!("prelude collection: `{field}` {e}"))
        };
        let c = CollectionMetadata {
            db: get_string(doc, "db").map_err(|e| bad("db", e))?.unwrap_or_default(),
            collection: get_string(doc, "collection").map_err(|e| bad("collection", e))?.unwrap_or_default(),
            metadata: get_string(doc, "metadata").map_err(|e| bad("metadata", e))?.unwrap_or_default(),
            size: get_int(doc, "size").map_err(|e| bad("size", e))?.unwrap_or(0),
            kind: get_string(doc, "type").map_err(|e| bad("type", e))?,
        };
        if c.collection.is_empty() {
            return Err(bad("collection", "is missing or empty".into()));
        }
        Ok(c)
    }

    /// The next event; `None` at the end of a complete archive. An error
    /// (damaged framing, a namespace left unfinished, a prelude collection
    /// without data) ends the reading: later calls give `None`.
    pub fn next_event(&mut self) -> Result<Option<ArchiveEvent<'_>>, ArchiveError> {
        let step = match self.step() {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.state = State::Done;
                return Ok(None);
            }
            Err(e) => {
                self.state = State::Done;
                return Err(e);
            }
        };
        Ok(Some(match step {
            Step::Begin(i, offset) => {
                let n = &self.namespaces[i];
                ArchiveEvent::Begin { db: &n.db, collection: &n.collection, offset }
            }
            Step::Document(offset, damage) => ArchiveEvent::Document { bytes: &self.doc, offset, damage },
            Step::End(i, offset, expected) => {
                let n = &self.namespaces[i];
                let computed = n.crc.value();
                ArchiveEvent::End {
                    db: &n.db,
                    collection: &n.collection,
                    offset,
                    documents: n.documents,
                    bytes: n.bytes,
                    crc_expected: expected,
                    crc_computed: computed,
                    crc_ok: expected == computed,
                }
            }
        }))
    }

    fn step(&mut self) -> Result<Option<Step>, ArchiveError> {
        loop {
            let at = self.pos;
            match self.state {
                State::Done => return Ok(None),
                State::AfterEnd => match self.read_frame(None)? {
                    Frame::Terminator => self.state = State::Blocks,
                    Frame::Eof => {
                        return Err(self.error(
                            ArchiveErrorKind::Format,
                            None,
                            at,
                            "the archive ends after an end header, without its terminator",
                        ));
                    }
                    Frame::Document => {
                        return Err(self.error(
                            ArchiveErrorKind::Format,
                            None,
                            at,
                            "a document follows a namespace's end header (collection data without a collection header)",
                        ));
                    }
                },
                State::Segment(i) => {
                    let ns = namespace(&self.namespaces[i].db, &self.namespaces[i].collection);
                    match self.read_frame(Some(ns.clone()))? {
                        Frame::Terminator => self.state = State::Blocks,
                        Frame::Eof => {
                            return Err(self.error(
                                ArchiveErrorKind::Unfinished,
                                Some(ns),
                                at,
                                "the archive ends inside a segment of this namespace (no terminator)",
                            ));
                        }
                        Frame::Document => {
                            let damage = if self.check_documents { check_document(&self.doc).err() } else { None };
                            let n = &mut self.namespaces[i];
                            n.crc.update(&self.doc);
                            n.documents += 1;
                            n.bytes += self.doc.len() as u64;
                            return Ok(Some(Step::Document(at, damage)));
                        }
                    }
                }
                State::Blocks => match self.read_frame(None)? {
                    Frame::Eof => {
                        self.finish(at)?;
                        return Ok(None);
                    }
                    Frame::Terminator => {
                        return Err(self.error(
                            ArchiveErrorKind::Format,
                            None,
                            at,
                            "a terminator where a namespace header should be (consecutive terminators)",
                        ));
                    }
                    Frame::Document => return self.header(at).map(Some),
                },
            }
        }
    }

    /// A namespace header just read at `at`.
    fn header(&mut self, at: u64) -> Result<Step, ArchiveError> {
        let doc = self.checked_doc(at, "namespace header")?;
        let bad = |e: String| self.error(ArchiveErrorKind::Format, None, at, format!("namespace header: {e}"));
        let db = get_string(doc, "db").map_err(|e| bad(format!("`db` {e}")))?.unwrap_or_default();
        let collection = get_string(doc, "collection").map_err(|e| bad(format!("`collection` {e}")))?;
        let eof = match doc.get("EOF") {
            Ok(None) => false,
            Ok(Some(RawBsonRef::Boolean(b))) => b,
            Ok(Some(other)) => return Err(bad(format!("`EOF` is a {:?}, not a boolean", other.element_type()))),
            Err(e) => return Err(bad(e.to_string())),
        };
        let crc = get_int(doc, "CRC").map_err(|e| bad(format!("`CRC` {e}")))?.unwrap_or(0) as u64;
        let Some(collection) = collection.filter(|c| !c.is_empty()) else {
            return Err(bad("no collection".into()));
        };
        let ns = namespace(&db, &collection);
        let key = (db, collection);
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.namespaces.push(NamespaceState {
                    db: key.0.clone(),
                    collection: key.1.clone(),
                    crc: Crc64::new(),
                    documents: 0,
                    bytes: 0,
                    ended: false,
                });
                self.index.insert(key, self.namespaces.len() - 1);
                self.namespaces.len() - 1
            }
        };
        if self.namespaces[i].ended {
            let what = if eof { "a second end header" } else { "a segment after its end header" };
            return Err(self.error(ArchiveErrorKind::Format, Some(ns), at, format!("{what} for this namespace")));
        }
        if eof {
            self.namespaces[i].ended = true;
            self.state = State::AfterEnd;
            Ok(Step::End(i, at, crc))
        } else {
            self.state = State::Segment(i);
            Ok(Step::Begin(i, at))
        }
    }

    /// At the end of the input: every namespace ended, and every collection
    /// of the prelude had its blocks (mongo-tools does not require them of
    /// time-series collections).
    fn finish(&self, at: u64) -> Result<(), ArchiveError> {
        let open: Vec<String> =
            self.namespaces.iter().filter(|n| !n.ended).map(|n| namespace(&n.db, &n.collection)).collect();
        if !open.is_empty() {
            return Err(self.error(
                ArchiveErrorKind::Unfinished,
                Some(open.join(", ")),
                at,
                "the archive ends before the end header of this namespace (cut short?)",
            ));
        }
        for c in &self.prelude.collections {
            if c.is_timeseries() {
                continue;
            }
            if !self.index.contains_key(&(c.db.clone(), c.collection.clone())) {
                return Err(self.error(
                    ArchiveErrorKind::Unfinished,
                    Some(c.namespace()),
                    at,
                    "the prelude lists this collection but the archive holds no block for it (cut short?)",
                ));
            }
        }
        Ok(())
    }
}

/// A string field: `None` when absent, an error for another type.
fn get_string(doc: &RawDocument, key: &str) -> Result<Option<String>, String> {
    match doc.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(RawBsonRef::String(s))) => Ok(Some(s.to_string())),
        Ok(Some(other)) => Err(format!("is a {:?}, not a string", other.element_type())),
        Err(e) => Err(e.to_string()),
    }
}

/// An int32 or int64 field (as Go decodes into an integer): `None` when
/// absent.
fn get_int(doc: &RawDocument, key: &str) -> Result<Option<i64>, String> {
    match doc.get(key) {
        Ok(None) => Ok(None),
        Ok(Some(RawBsonRef::Int32(i))) => Ok(Some(i as i64)),
        Ok(Some(RawBsonRef::Int64(i))) => Ok(Some(i)),
        Ok(Some(other)) => Err(format!("is a {:?}, not an integer", other.element_type())),
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Planning and copying

/// Where one namespace's documents lie in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// The database (`""` for the oplog).
    pub db: String,
    /// The collection as the blocks name it (`system.buckets.X` for a
    /// time-series collection `X`).
    pub collection: String,
    /// Its prelude entry (metadata), by index in `Prelude::collections`.
    pub prelude: Option<usize>,
    /// The byte ranges of its documents in the archive, in order (one per
    /// non-empty segment).
    pub ranges: Vec<Range<u64>>,
    /// Its documents.
    pub documents: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The CRC-64 of its end header; `None` when the archive has none.
    pub crc: Option<u64>,
    /// Whether the documents gave that CRC (`None` without an end header).
    pub crc_ok: Option<bool>,
    /// Documents framed correctly but not valid BSON.
    pub damaged_documents: u64,
}

impl NamespacePlan {
    /// `db.collection` (`.oplog` for the oplog), as [`copy_collection`]
    /// takes it.
    pub fn namespace(&self) -> String {
        namespace(&self.db, &self.collection)
    }

    /// True for the oplog (`mongodump --oplog`), whose dump file is
    /// `oplog.bson` at the top.
    pub fn is_oplog(&self) -> bool {
        self.db.is_empty() && self.collection == OPLOG_COLLECTION
    }

    /// True when the archive holds all of it, undamaged.
    pub fn is_complete(&self) -> bool {
        self.crc_ok == Some(true) && self.damaged_documents == 0
    }
}

/// What one walk over an archive found: its prelude and where each
/// namespace's documents are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePlan {
    /// The archive's name in messages.
    pub archive: String,
    /// The prelude.
    pub prelude: Prelude,
    /// The namespaces, in the order their first block comes.
    pub namespaces: Vec<NamespacePlan>,
    /// Damage that ended the walk early: the namespaces hold what came
    /// before it.
    pub damage: Option<ArchiveError>,
    /// Problems the walk went on after: damaged documents, CRC mismatches,
    /// metadata JSON that mongorestore would refuse.
    pub problems: Vec<ArchiveError>,
    /// Bytes walked.
    pub length: u64,
}

impl ArchivePlan {
    /// The namespace `ns` (`db.collection`; the first, should an archive
    /// name two alike, as `a.b`+`c` and `a`+`b.c`).
    pub fn namespace(&self, ns: &str) -> Option<&NamespacePlan> {
        self.namespaces.iter().find(|n| n.namespace() == ns)
    }

    /// The metadata JSON of namespace `n` (its prelude entry's), or `None`
    /// when it has none (the oplog, or no prelude entry).
    pub fn metadata(&self, n: &NamespacePlan) -> Option<&str> {
        let c = &self.prelude.collections[n.prelude?];
        (!c.metadata.is_empty()).then_some(c.metadata.as_str())
    }

    /// True when the archive is whole: no damage and no problems.
    pub fn is_clean(&self) -> bool {
        self.damage.is_none() && self.problems.is_empty()
    }
}

/// Walks the archive at `path` once ([`plan_reader`]).
pub fn plan_archive(path: impl AsRef<Path>) -> Result<ArchivePlan, ArchiveError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| ArchiveError {
        archive: name.clone(),
        namespace: None,
        offset: 0,
        kind: ArchiveErrorKind::Io,
        reason: format!("cannot open: {e}"),
    })?;
    plan_reader(file, name)
}

/// Walks an archive once, checking every document, every CRC and every
/// collection's metadata JSON, and records where each namespace's
/// documents lie. Damaged framing ends the walk ([`ArchivePlan::damage`]);
/// damaged documents and CRC mismatches are [`ArchivePlan::problems`].
/// `Err` only when the prelude cannot be read or reading fails.
pub fn plan_reader<R: Read>(r: R, name: impl Into<String>) -> Result<ArchivePlan, ArchiveError> {
    let mut reader = ArchiveReader::new(r, name)?;
    let prelude = reader.prelude().clone();
    let mut namespaces: Vec<NamespacePlan> = Vec::new();
    let mut problems = Vec::new();
    for (i, c) in prelude.collections.iter().enumerate() {
        if c.metadata.is_empty() {
            continue;
        }
        for p in check_metadata(c.metadata.as_bytes()).problems {
            problems.push(ArchiveError {
                archive: reader.name.clone(),
                namespace: Some(c.namespace()),
                offset: prelude.offsets[i],
                kind: ArchiveErrorKind::Metadata,
                reason: format!("metadata that mongorestore would refuse: {p}"),
            });
        }
    }
    let mut current: Option<usize> = None;
    // Whether the next document of `current` starts a new range.
    let mut new_segment = false;
    let mut damage = None;
    let name = reader.name.clone();
    loop {
        let event = match reader.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) if e.kind == ArchiveErrorKind::Io => return Err(e),
            Err(e) => {
                damage = Some(e);
                break;
            }
        };
        match event {
            ArchiveEvent::Begin { db, collection, offset: _ } => {
                let i = match namespaces.iter().position(|n| n.db == db && n.collection == collection) {
                    Some(i) => i,
                    None => {
                        namespaces.push(NamespacePlan {
                            db: db.to_string(),
                            collection: collection.to_string(),
                            prelude: prelude.entry_for_data(db, collection),
                            ranges: Vec::new(),
                            documents: 0,
                            bytes: 0,
                            crc: None,
                            crc_ok: None,
                            damaged_documents: 0,
                        });
                        namespaces.len() - 1
                    }
                };
                current = Some(i);
                new_segment = true;
            }
            ArchiveEvent::Document { bytes, offset, damage: doc_damage } => {
                let Some(i) = current else { continue };
                let n = &mut namespaces[i];
                let end = offset + bytes.len() as u64;
                match n.ranges.last_mut() {
                    Some(r) if !new_segment => r.end = end,
                    _ => n.ranges.push(offset..end),
                }
                new_segment = false;
                n.documents += 1;
                n.bytes += bytes.len() as u64;
                if let Some(d) = doc_damage {
                    n.damaged_documents += 1;
                    if n.damaged_documents > MAX_LISTED_DAMAGE {
                        continue;
                    }
                    problems.push(ArchiveError {
                        archive: name.clone(),
                        namespace: Some(n.namespace()),
                        offset,
                        kind: ArchiveErrorKind::Document,
                        reason: format!("document {} of the namespace is not valid BSON: {d}", n.documents),
                    });
                }
            }
            ArchiveEvent::End { db, collection, offset, crc_expected, crc_computed, crc_ok, documents, .. } => {
                current = None;
                let i = match namespaces.iter().position(|n| n.db == db && n.collection == collection) {
                    Some(i) => i,
                    None => {
                        // An end header without a segment before it: a
                        // namespace without documents.
                        namespaces.push(NamespacePlan {
                            db: db.to_string(),
                            collection: collection.to_string(),
                            prelude: prelude.entry_for_data(db, collection),
                            ranges: Vec::new(),
                            documents: 0,
                            bytes: 0,
                            crc: None,
                            crc_ok: None,
                            damaged_documents: 0,
                        });
                        namespaces.len() - 1
                    }
                };
                let n = &mut namespaces[i];
                n.crc = Some(crc_expected);
                n.crc_ok = Some(crc_ok);
                if !crc_ok {
                    problems.push(ArchiveError {
                        archive: name.clone(),
                        namespace: Some(n.namespace()),
                        offset,
                        kind: ArchiveErrorKind::Crc,
                        reason: format!(
                            "the CRC-64 of the namespace's {documents} documents is 0x{crc_computed:016x}; its end header says 0x{crc_expected:016x}"
                        ),
                    });
                }
            }
        }
    }
    for n in &namespaces {
        if n.damaged_documents > MAX_LISTED_DAMAGE {
            problems.push(ArchiveError {
                archive: name.clone(),
                namespace: Some(n.namespace()),
                offset: n.ranges.last().map_or(0, |r| r.end),
                kind: ArchiveErrorKind::Document,
                reason: format!(
                    "{} damaged documents in all; the first {MAX_LISTED_DAMAGE} are listed",
                    n.damaged_documents
                ),
            });
        }
    }
    Ok(ArchivePlan { archive: name, prelude, namespaces, damage, problems, length: reader.offset() })
}

/// What [`copy_collection`] wrote and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Documents written.
    pub documents: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The CRC-64 of those bytes.
    pub crc: u64,
    /// Damaged documents (written as they are; the first
    /// [`MAX_LISTED_DAMAGE`], then their count), a CRC mismatch, a missing
    /// end header.
    pub damage: Vec<ArchiveError>,
}

/// Writes the documents of namespace `ns` (one of `plan.namespaces`) from
/// `file`, the archive `plan` was made of, to `out`: the `.bson` file
/// mongodump would have written for it. Every document is checked; damaged
/// ones are written as they are and listed in [`CopyStats::damage`], with a
/// CRC that differs from the end header's or a namespace the archive does
/// not finish. `Err` when reading or writing fails, or the file no longer
/// matches the plan.
pub fn copy_collection<F: Read + Seek, W: Write>(
    file: &mut F,
    plan: &ArchivePlan,
    ns: &NamespacePlan,
    out: &mut W,
) -> Result<CopyStats, ArchiveError> {
    let name = ns.namespace();
    let err = |kind, offset, reason: String| ArchiveError {
        archive: plan.archive.clone(),
        namespace: Some(name.clone()),
        offset,
        kind,
        reason,
    };
    let n = ns;
    let mut stats = CopyStats::default();
    let mut crc = Crc64::new();
    let mut damaged = 0u64;
    let mut doc = Vec::new();
    for range in &n.ranges {
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| err(ArchiveErrorKind::Io, range.start, format!("seeking failed: {e}")))?;
        let mut r = BufReader::with_capacity(READ_BUFFER, (&mut *file).take(range.end - range.start));
        let mut at = range.start;
        while at < range.end {
            let mut len = [0u8; 4];
            let got = read_full(&mut r, &mut len)
                .map_err(|e| err(ArchiveErrorKind::Io, at, format!("reading failed: {e}")))?;
            let declared = i32::from_le_bytes(len);
            if got < 4
                || declared < MIN_DOCUMENT as i32
                || declared as usize > MAX_DOCUMENT
                || at + declared as u64 > range.end
            {
                return Err(err(
                    ArchiveErrorKind::Format,
                    at,
                    "the archive changed since it was planned: no document where one was".into(),
                ));
            }
            let size = declared as usize;
            doc.clear();
            doc.resize(size, 0);
            doc[..4].copy_from_slice(&len);
            let got = read_full(&mut r, &mut doc[4..])
                .map_err(|e| err(ArchiveErrorKind::Io, at, format!("reading failed: {e}")))?;
            if got < size - 4 {
                return Err(err(
                    ArchiveErrorKind::Format,
                    at,
                    "the archive changed since it was planned: it is shorter".into(),
                ));
            }
            if let Err(d) = check_document(&doc) {
                damaged += 1;
                if damaged <= MAX_LISTED_DAMAGE {
                    stats.damage.push(err(
                        ArchiveErrorKind::Document,
                        at,
                        format!("document {} of the namespace is not valid BSON: {d}", stats.documents + 1),
                    ));
                }
            }
            crc.update(&doc);
            out.write_all(&doc)
                .map_err(|e| err(ArchiveErrorKind::Output, at, format!("writing the collection failed: {e}")))?;
            stats.documents += 1;
            stats.bytes += size as u64;
            at += size as u64;
        }
    }
    stats.crc = crc.value();
    let end = n.ranges.last().map_or(0, |r| r.end);
    if damaged > MAX_LISTED_DAMAGE {
        stats.damage.push(err(
            ArchiveErrorKind::Document,
            end,
            format!("{damaged} damaged documents in all; the first {MAX_LISTED_DAMAGE} are listed"),
        ));
    }
    match n.crc {
        Some(expected) if expected != stats.crc => stats.damage.push(err(
            ArchiveErrorKind::Crc,
            end,
            format!(
                "the CRC-64 of the namespace's {} documents is 0x{:016x}; its end header says 0x{expected:016x}",
                stats.documents, stats.crc
            ),
        )),
        Some(_) => {}
        None => stats.damage.push(err(
            ArchiveErrorKind::Unfinished,
            end,
            "the archive has no end header for this namespace: its documents may be incomplete".into(),
        )),
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------
// Writing

/// Appends a BSON element's type, key and NUL.
fn put_key(buf: &mut Vec<u8>, kind: u8, key: &str) {
    buf.push(kind);
    buf.extend_from_slice(key.as_bytes());
    buf.push(0);
}

fn put_string(buf: &mut Vec<u8>, key: &str, value: &str) {
    put_key(buf, 0x02, key);
    buf.extend_from_slice(&((value.len() + 1) as i32).to_le_bytes());
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
}

fn put_i32(buf: &mut Vec<u8>, key: &str, value: i32) {
    put_key(buf, 0x10, key);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_i64(buf: &mut Vec<u8>, key: &str, value: i64) {
    put_key(buf, 0x12, key);
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_bool(buf: &mut Vec<u8>, key: &str, value: bool) {
    put_key(buf, 0x08, key);
    buf.push(value as u8);
}

/// A document from its elements: length, elements, NUL.
fn document(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = vec![0u8; 4];
    build(&mut buf);
    buf.push(0);
    let len = buf.len() as i32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf
}

/// The header document, fields in mongo-tools' order.
fn header_document(h: &ArchiveHeader) -> Vec<u8> {
    document(|b| {
        put_i32(b, "concurrent_collections", h.concurrent_collections);
        put_string(b, "version", &h.version);
        put_string(b, "server_version", &h.server_version);
        put_string(b, "tool_version", &h.tool_version);
    })
}

/// A prelude collection document; `size` as Go writes an `int` (int32
/// when it fits).
fn collection_document(c: &CollectionMetadata) -> Vec<u8> {
    document(|b| {
        put_string(b, "db", &c.db);
        put_string(b, "collection", &c.collection);
        put_string(b, "metadata", &c.metadata);
        match i32::try_from(c.size) {
            Ok(s) => put_i32(b, "size", s),
            Err(_) => put_i64(b, "size", c.size),
        }
        if let Some(kind) = &c.kind {
            put_string(b, "type", kind);
        }
    })
}

/// A namespace header.
fn namespace_header(db: &str, collection: &str, eof: bool, crc: u64) -> Vec<u8> {
    document(|b| {
        put_string(b, "db", db);
        put_string(b, "collection", collection);
        put_bool(b, "EOF", eof);
        put_i64(b, "CRC", crc as i64);
    })
}

/// What [`ArchiveWriter::write_collection`] wrote for one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceWritten {
    /// The database.
    pub db: String,
    /// The collection as the blocks name it (a time-series collection's
    /// buckets for servers before 8.3).
    pub collection: String,
    /// `db.collection`.
    pub namespace: String,
    /// Documents written.
    pub documents: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their CRC-64, in the end header.
    pub crc: u64,
    /// What was wrong with the input: documents that are not valid BSON
    /// (written as they are; the first [`MAX_LISTED_DAMAGE`], then their
    /// count), documents too large for mongorestore and damaged framing
    /// (left out: mongorestore could not read past them).
    pub problems: Vec<String>,
}

/// Writes an archive one collection at a time (as `mongodump
/// --numParallelCollections=1` does: one segment per namespace).
pub struct ArchiveWriter<W: Write> {
    out: W,
    name: String,
    /// Bytes written so far.
    pos: u64,
    header: ArchiveHeader,
    collections: Vec<CollectionMetadata>,
    /// Whether each collection's block has been written.
    written: Vec<bool>,
    summary: Vec<NamespaceWritten>,
}

impl<W: Write> ArchiveWriter<W> {
    /// Writes the magic number and the prelude listing `collections` (the
    /// oplog's entry, [`CollectionMetadata::oplog`], among them if there is
    /// an oplog). `name` names the archive in errors. Refuses a header
    /// whose server version mongorestore cannot parse, a collection listed
    /// twice or without a name.
    pub fn new(
        mut out: W,
        name: impl Into<String>,
        header: &ArchiveHeader,
        collections: &[CollectionMetadata],
    ) -> Result<Self, ArchiveError> {
        let name = name.into();
        let input = |ns: Option<String>, reason: String| ArchiveError {
            archive: name.clone(),
            namespace: ns,
            offset: 0,
            kind: ArchiveErrorKind::Input,
            reason,
        };
        if parse_server_version(&header.server_version).is_none() {
            return Err(input(
                None,
                format!(
                    "server version {:?} is not MAJOR.MINOR.PATCH: mongorestore refuses such an archive",
                    header.server_version
                ),
            ));
        }
        for (i, c) in collections.iter().enumerate() {
            if c.collection.is_empty() {
                return Err(input(Some(c.namespace()), "a collection without a name".into()));
            }
            if collections[..i].iter().any(|x| x.db == c.db && x.collection == c.collection) {
                return Err(input(Some(c.namespace()), "the collection is listed twice".into()));
            }
        }
        let mut prelude = MAGIC.to_le_bytes().to_vec();
        prelude.extend_from_slice(&header_document(header));
        for c in collections {
            prelude.extend_from_slice(&collection_document(c));
        }
        prelude.extend_from_slice(&TERMINATOR);
        out.write_all(&prelude).map_err(|e| ArchiveError {
            kind: ArchiveErrorKind::Output,
            ..input(None, format!("writing the prelude failed: {e}"))
        })?;
        Ok(ArchiveWriter {
            out,
            name,
            pos: prelude.len() as u64,
            header: header.clone(),
            collections: collections.to_vec(),
            written: vec![false; collections.len()],
            summary: Vec::new(),
        })
    }

    fn output_error(&self, ns: &str, e: &io::Error) -> ArchiveError {
        ArchiveError {
            archive: self.name.clone(),
            namespace: Some(ns.to_string()),
            offset: self.pos,
            kind: ArchiveErrorKind::Output,
            reason: format!("writing failed: {e}"),
        }
    }

    fn put(&mut self, ns: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.out.write_all(bytes).map_err(|e| self.output_error(ns, &e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the documents of collection `collection` of `db` (BSON
    /// documents one after another, as in a `.bson` file) as one namespace
    /// block. `collection` is the prelude's name or, for a time-series
    /// collection, that of its buckets (`system.buckets.X`); the block gets
    /// the name mongorestore expects. Each collection is written once;
    /// `("", "oplog")` is the oplog.
    pub fn write_collection(
        &mut self,
        db: &str,
        collection: &str,
        documents: impl Read,
    ) -> Result<NamespaceWritten, ArchiveError> {
        let ns = namespace(db, collection);
        let input = |reason: String| ArchiveError {
            archive: self.name.clone(),
            namespace: Some(ns.clone()),
            offset: self.pos,
            kind: ArchiveErrorKind::Input,
            reason,
        };
        let found = self.collections.iter().position(|c| c.db == db && c.collection == collection).or_else(|| {
            let view = collection.strip_prefix(BUCKETS_PREFIX)?;
            self.collections.iter().position(|c| c.db == db && c.collection == view && c.is_timeseries())
        });
        let Some(i) = found else {
            return Err(input("the prelude does not list this collection: mongorestore would not restore it".into()));
        };
        if self.written[i] {
            return Err(input("this collection's block is already written".into()));
        }
        self.written[i] = true;
        let data_collection = self.collections[i].data_collection(&self.header.server_version);
        self.write_block(db, &data_collection, documents)
    }

    /// Writes the oplog (the collection `("", "oplog")`).
    pub fn write_oplog(&mut self, documents: impl Read) -> Result<NamespaceWritten, ArchiveError> {
        self.write_collection("", OPLOG_COLLECTION, documents)
    }

    fn write_block(
        &mut self,
        db: &str,
        collection: &str,
        documents: impl Read,
    ) -> Result<NamespaceWritten, ArchiveError> {
        let ns = namespace(db, collection);
        let mut w = NamespaceWritten {
            db: db.to_string(),
            collection: collection.to_string(),
            namespace: ns.clone(),
            ..NamespaceWritten::default()
        };
        self.put(&ns, &namespace_header(db, collection, false, 0))?;
        let mut r = BufReader::with_capacity(READ_BUFFER, documents);
        let mut crc = Crc64::new();
        let mut doc = Vec::new();
        // Offset in the input, for messages.
        let mut at = 0u64;
        let mut damaged = 0u64;
        loop {
            let mut len = [0u8; 4];
            let got = read_full(&mut r, &mut len).map_err(|e| ArchiveError {
                archive: self.name.clone(),
                namespace: Some(ns.clone()),
                offset: self.pos,
                kind: ArchiveErrorKind::Io,
                reason: format!("reading the collection's documents failed at their byte {at}: {e}"),
            })?;
            if got == 0 {
                break;
            }
            let declared = i32::from_le_bytes(len);
            if got < 4 || declared < MIN_DOCUMENT as i32 || declared as usize > MAX_DOCUMENT {
                w.problems.push(format!(
                    "input byte {at}: not a document's length ({}); the rest of the input is left out",
                    if got < 4 { format!("only {got} bytes") } else { declared.to_string() }
                ));
                break;
            }
            let size = declared as usize;
            doc.clear();
            doc.resize(size, 0);
            doc[..4].copy_from_slice(&len);
            let body = read_full(&mut r, &mut doc[4..]).map_err(|e| ArchiveError {
                archive: self.name.clone(),
                namespace: Some(ns.clone()),
                offset: self.pos,
                kind: ArchiveErrorKind::Io,
                reason: format!("reading the collection's documents failed at their byte {at}: {e}"),
            })?;
            if body < size - 4 {
                w.problems.push(format!(
                    "input byte {at}: a document of {size} bytes is cut after {} bytes; it is left out",
                    body + 4
                ));
                break;
            }
            if doc[size - 1] != 0 {
                w.problems.push(format!(
                    "input byte {at}: the document of {size} bytes does not end with a NUL byte; it and the rest are left out"
                ));
                break;
            }
            at += size as u64;
            if size > MAX_ARCHIVE_DOCUMENT {
                w.problems.push(format!(
                    "input byte {}: a document of {size} bytes, more than mongorestore reads from an archive ({MAX_ARCHIVE_DOCUMENT}); it is left out",
                    at - size as u64
                ));
                continue;
            }
            if let Err(d) = check_document(&doc) {
                damaged += 1;
                if damaged <= MAX_LISTED_DAMAGE {
                    w.problems.push(format!(
                        "input byte {}: document {} is not valid BSON ({d}); written as it is",
                        at - size as u64,
                        w.documents + 1
                    ));
                }
            }
            crc.update(&doc);
            let bytes = std::mem::take(&mut doc);
            self.put(&ns, &bytes)?;
            doc = bytes;
            w.documents += 1;
            w.bytes += size as u64;
        }
        if damaged > MAX_LISTED_DAMAGE {
            w.problems.push(format!(
                "{damaged} documents are not valid BSON in all (written as they are); the first {MAX_LISTED_DAMAGE} are listed"
            ));
        }
        w.crc = crc.value();
        self.put(&ns, &TERMINATOR)?;
        self.put(&ns, &namespace_header(db, collection, true, w.crc))?;
        self.put(&ns, &TERMINATOR)?;
        self.summary.push(w.clone());
        Ok(w)
    }

    /// Writes an empty block for each collection of the prelude that has
    /// none yet (views and empty collections, as mongodump does; not
    /// time-series collections, whose data is their buckets'), flushes,
    /// and returns the output and what was written.
    pub fn finish(mut self) -> Result<(W, Vec<NamespaceWritten>), ArchiveError> {
        for i in 0..self.collections.len() {
            let c = &self.collections[i];
            if self.written[i] || c.is_timeseries() {
                continue;
            }
            let (db, coll) = (c.db.clone(), c.collection.clone());
            self.written[i] = true;
            self.write_block(&db, &coll, io::empty())?;
        }
        self.out.flush().map_err(|e| self.output_error("", &e))?;
        Ok((self.out, self.summary))
    }
}

/// Writes a whole archive: the prelude of `collections` (plus the oplog's
/// entry when `oplog` is given), each collection's documents (`None`: a
/// view or an empty collection) as one block, then the oplog. All readers
/// exist at once; to open them one at a time use [`ArchiveWriter`].
pub fn write_archive<W: Write, R: Read, O: Read>(
    out: W,
    name: impl Into<String>,
    header: &ArchiveHeader,
    collections: impl IntoIterator<Item = (CollectionMetadata, Option<R>)>,
    oplog: Option<O>,
) -> Result<(W, Vec<NamespaceWritten>), ArchiveError> {
    let (mut entries, readers): (Vec<CollectionMetadata>, Vec<Option<R>>) = collections.into_iter().unzip();
    if oplog.is_some() && !entries.iter().any(CollectionMetadata::is_oplog) {
        entries.push(CollectionMetadata::oplog());
    }
    let mut w = ArchiveWriter::new(out, name, header, &entries)?;
    for (c, r) in entries.iter().zip(readers) {
        if let Some(r) = r {
            w.write_collection(&c.db, &c.collection, r)?;
        }
    }
    if let Some(o) = oplog {
        w.write_oplog(o)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mongodb/mongorestore-testdata").join(name)
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(data(name)).unwrap_or_else(|e| panic!("{}: {e}", data(name).display()))
    }

    /// Every event of an archive, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Begin(String),
        Document(Vec<u8>, u64, bool),
        End(String, u64, bool),
    }

    fn events(bytes: &[u8]) -> (Prelude, Vec<Owned>, Option<ArchiveError>) {
        let mut r = ArchiveReader::new(bytes, "test").expect("prelude");
        let prelude = r.prelude().clone();
        let mut out = Vec::new();
        loop {
            match r.next_event() {
                Ok(None) => return (prelude, out, None),
                Err(e) => return (prelude, out, Some(e)),
                Ok(Some(ArchiveEvent::Begin { db, collection, .. })) => {
                    out.push(Owned::Begin(namespace(db, collection)))
                }
                Ok(Some(ArchiveEvent::Document { bytes, offset, damage })) => {
                    out.push(Owned::Document(bytes.to_vec(), offset, damage.is_none()))
                }
                Ok(Some(ArchiveEvent::End { db, collection, documents, crc_ok, .. })) => {
                    out.push(Owned::End(namespace(db, collection), documents, crc_ok))
                }
            }
        }
    }

    /// The documents of each namespace, concatenated, in order of first
    /// appearance.
    fn by_namespace(events: &[Owned]) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut current = String::new();
        for e in events {
            match e {
                Owned::Begin(ns) => {
                    current = ns.clone();
                    if !out.iter().any(|(n, _)| n == ns) {
                        out.push((ns.clone(), Vec::new()));
                    }
                }
                Owned::Document(b, _, _) => out.iter_mut().find(|(n, _)| *n == current).unwrap().1.extend_from_slice(b),
                Owned::End(..) => {}
            }
        }
        out
    }

    #[test]
    fn crc64_is_go_ecma() {
        // CRC-64/XZ's check value (Go: crc64.Checksum("123456789", ECMA)).
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0x995d_c9bb_df19_39fa);
        assert_eq!(Crc64::new().value(), 0);
        // In pieces of every size, the same.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = Crc64::new();
        whole.update(&data);
        for step in [1, 3, 7, 8, 9, 64, 999] {
            let mut c = Crc64::new();
            for chunk in data.chunks(step) {
                c.update(chunk);
            }
            assert_eq!(c.value(), whole.value(), "step {step}");
        }
    }

    #[test]
    fn test_bar_archive_reads_with_its_prelude_and_crcs() {
        let bytes = read("test.bar.archive");
        let (prelude, events, err) = events(&bytes);
        assert_eq!(err, None);
        assert_eq!(
            prelude.header,
            ArchiveHeader {
                concurrent_collections: 4,
                version: "0.1".into(),
                server_version: "3.4.3".into(),
                tool_version: "r3.4.3".into()
            }
        );
        let names: Vec<String> = prelude.collections.iter().map(CollectionMetadata::namespace).collect();
        assert_eq!(names, ["test.bar", "admin.system.version"]);
        assert_eq!(
            prelude.collections[0].metadata,
            r#"{"options":{},"indexes":[{"v":2,"key":{"_id":1},"name":"_id_","ns":"test.bar"}]}"#
        );
        // Tools 3.4 wrote no `type`.
        assert!(prelude.collections.iter().all(|c| c.kind.is_none() && c.size == 0));
        let ends: Vec<&Owned> = events.iter().filter(|e| matches!(e, Owned::End(..))).collect();
        assert_eq!(
            ends,
            [&Owned::End("admin.system.version".into(), 1, true), &Owned::End("test.bar".into(), 1, true)]
        );
        let docs = by_namespace(&events);
        let doc = RawDocument::from_bytes(&docs[1].1).unwrap();
        assert_eq!(doc.get_str("foo").unwrap(), "bar");
        let doc = RawDocument::from_bytes(&docs[0].1).unwrap();
        assert_eq!(doc.get_str("_id").unwrap(), "featureCompatibilityVersion");
    }

    /// Rewrites an archive from what a reader gives, namespace after
    /// namespace in order of first appearance, empty ones by `finish`.
    fn rewrite(bytes: &[u8]) -> Vec<u8> {
        let (prelude, events, err) = events(bytes);
        assert_eq!(err, None);
        let mut w = ArchiveWriter::new(Vec::new(), "copy", &prelude.header, &prelude.collections).unwrap();
        for (ns, docs) in by_namespace(&events) {
            let (db, coll) = ns.split_once('.').unwrap();
            let got = w.write_collection(db, coll, &docs[..]).unwrap();
            assert!(got.problems.is_empty(), "{got:?}");
        }
        w.finish().unwrap().0
    }

    #[test]
    fn rewriting_real_archives_gives_the_same_bytes() {
        // One segment per namespace (as these were written): the writer
        // gives back every byte, CRCs and field order included.
        for name in ["test.bar.archive", "timeseries_tests/dump.archive", "bad-format.archive"] {
            let bytes = read(name);
            assert!(rewrite(&bytes) == bytes, "{name}");
        }
    }

    #[test]
    fn timeseries_archive_plans_buckets_under_the_view() {
        let plan = plan_archive(data("timeseries_tests/dump.archive")).unwrap();
        assert!(plan.is_clean(), "{:?} {:?}", plan.damage, plan.problems);
        assert_eq!(plan.prelude.header.server_version, "5.0.0-rc0");
        let names: Vec<String> = plan.namespaces.iter().map(NamespacePlan::namespace).collect();
        assert_eq!(names, ["admin.system.version", "admin.system.views", "timeseries_test.system.buckets.foo_ts"]);
        let buckets = &plan.namespaces[2];
        assert_eq!((buckets.documents, buckets.bytes, buckets.ranges.len()), (10, 38020, 1));
        let entry = &plan.prelude.collections[buckets.prelude.unwrap()];
        assert_eq!((entry.collection.as_str(), entry.kind.as_deref()), ("foo_ts", Some("timeseries")));
        assert_eq!(entry.data_collection(&plan.prelude.header.server_version), "system.buckets.foo_ts");
        assert!(plan.metadata(buckets).unwrap().contains("\"timeField\":\"ts\""));
        // The empty collection: no ranges, a CRC of 0.
        assert_eq!((plan.namespaces[1].ranges.len(), plan.namespaces[1].crc), (0, Some(0)));

        // The buckets copied out are a whole `.bson` file, document by
        // document what the directory dump of the same data holds.
        let mut f = File::open(data("timeseries_tests/dump.archive")).unwrap();
        let mut out = Vec::new();
        let stats = copy_collection(&mut f, &plan, &plan.namespaces[2], &mut out).unwrap();
        assert_eq!((stats.documents, stats.bytes, stats.damage.len()), (10, 38020, 0));
        let (check, _) = crate::bsonfile::check_file(&out[..], false, || false).unwrap();
        assert_eq!((check.documents, check.damage), (10, None));
        let mut version = Vec::new();
        copy_collection(&mut f, &plan, plan.namespace("admin.system.version").unwrap(), &mut version).unwrap();
        assert_eq!(version, read("timeseries_tests/ts_dump/admin/system.version.bson"));
        assert!(plan.namespace("no.such").is_none());
    }

    #[test]
    fn bad_format_archive_names_its_metadata_with_offset() {
        // Its index key `{"a":"b"}` is written into the JSON unescaped:
        // mongorestore fails on the metadata, not on the framing.
        let plan = plan_archive(data("bad-format.archive")).unwrap();
        assert_eq!(plan.damage, None);
        assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
        let p = &plan.problems[0];
        assert_eq!((p.kind, p.namespace.as_deref(), p.offset), (ArchiveErrorKind::Metadata, Some("test.ixtest"), 106));
        let msg = p.to_string();
        assert!(
            msg.contains("bad-format.archive: at byte 106 (namespace test.ixtest)") && msg.contains("not JSON"),
            "{msg}"
        );
        // The collection itself: one empty segment and its end.
        let n = &plan.namespaces[0];
        assert_eq!((n.documents, n.crc_ok), (0, Some(true)));
    }

    #[test]
    fn a_flipped_byte_is_a_crc_mismatch() {
        let mut bytes = read("test.bar.archive");
        // The `r` of the value "bar" of test.bar's document (at 0x31c):
        // still valid BSON, another CRC.
        let at = 0x31c + bytes[0x31c..0x33f].windows(4).position(|w| w == b"bar\0").unwrap() + 2;
        bytes[at] = b'z';
        let (_, events, err) = events(&bytes);
        assert_eq!(err, None);
        assert!(events.contains(&Owned::End("test.bar".into(), 1, false)));
        assert!(events.contains(&Owned::End("admin.system.version".into(), 1, true)));

        let dir = std::env::temp_dir().join(format!("coffer-archive-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flipped.archive");
        std::fs::write(&path, &bytes).unwrap();
        let plan = plan_archive(&path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(plan.damage, None);
        let crc: Vec<&ArchiveError> = plan.problems.iter().filter(|p| p.kind == ArchiveErrorKind::Crc).collect();
        assert_eq!(crc.len(), 1);
        assert_eq!((crc[0].namespace.as_deref(), crc[0].offset), (Some("test.bar"), 0x343));
        assert!(crc[0].to_string().contains("its end header says 0x"), "{}", crc[0]);
        let mut out = Vec::new();
        let stats = copy_collection(&mut io::Cursor::new(&bytes), &plan, plan.namespace("test.bar").unwrap(), &mut out)
            .unwrap();
        assert_eq!(stats.documents, 1);
        assert_eq!(stats.damage.len(), 1);
        assert_eq!(stats.damage[0].kind, ArchiveErrorKind::Crc);
    }

    #[test]
    fn damaged_documents_are_reported_and_reading_goes_on() {
        let mut bytes = read("test.bar.archive");
        // test.bar's document: `_id` is an ObjectId (type 7); make its
        // type 0xaa.
        let at = 0x31c + 4;
        assert_eq!(bytes[at], 0x07);
        bytes[at] = 0xaa;
        let plan = plan_reader(&bytes[..], "damaged").unwrap();
        assert_eq!(plan.damage, None);
        let kinds: Vec<ArchiveErrorKind> = plan.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ArchiveErrorKind::Document, ArchiveErrorKind::Crc]);
        assert_eq!(plan.problems[0].offset, 0x31c);
        assert_eq!(plan.namespace("test.bar").unwrap().damaged_documents, 1);
        let mut out = Vec::new();
        let stats = copy_collection(&mut io::Cursor::new(&bytes), &plan, plan.namespace("test.bar").unwrap(), &mut out)
            .unwrap();
        // Written as it is, and named.
        assert_eq!(out, bytes[0x31c..0x31c + 0x23]);
        assert_eq!(stats.damage[0].kind, ArchiveErrorKind::Document);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = read("test.bar.archive");
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            match plan_reader(part, "cut") {
                Err(e) => assert!(
                    matches!(e.kind, ArchiveErrorKind::NotAnArchive | ArchiveErrorKind::Format),
                    "cut at {cut}: {e}"
                ),
                Ok(plan) => {
                    let d = plan.damage.unwrap_or_else(|| panic!("a cut at {cut} passed"));
                    assert!(d.offset <= cut as u64, "cut at {cut}: {d}");
                }
            }
        }
        assert!(plan_reader(&bytes[..], "whole").unwrap().is_clean());
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let bytes = read("timeseries_tests/dump.archive");
        for at in (0..bytes.len()).step_by(7).chain(0..1200) {
            for v in [0x00u8, 0xff, bytes[at] ^ 0x01] {
                let mut b = bytes.clone();
                b[at] = v;
                if let Ok(plan) = plan_reader(&b[..], "flipped") {
                    for n in &plan.namespaces {
                        let _ = copy_collection(&mut io::Cursor::new(&b), &plan, n, &mut io::sink());
                    }
                }
            }
        }
    }

    #[test]
    fn not_an_archive_and_framing_errors_are_named() {
        let e = plan_reader(&read("testdirs/db1/c1.bson")[..], "c1.bson").unwrap_err();
        assert_eq!(e.kind, ArchiveErrorKind::NotAnArchive);
        assert!(e.to_string().contains("not a mongodump archive"), "{e}");
        let e = plan_reader(&read("prelude_test/prelude_gzip/prelude.json.gz")[..], "gz").unwrap_err();
        assert!(e.reason.contains("gzip-compressed"), "{e}");

        let good = read("test.bar.archive");
        // A document after an end header (test.bar's end header is at
        // 0x343; its terminator after 0x39 bytes).
        let mut b = good[..0x343 + 0x39].to_vec();
        b.extend_from_slice(&good[0x31c..0x31c + 0x23]);
        let plan = plan_reader(&b[..], "x").unwrap();
        let d = plan.damage.unwrap();
        assert_eq!((d.kind, d.offset), (ArchiveErrorKind::Format, 0x343 + 0x39));
        assert!(d.reason.contains("follows a namespace's end header"), "{d}");

        // A segment after the namespace ended.
        let mut b = good.clone();
        b.extend_from_slice(&namespace_header("test", "bar", false, 0));
        b.extend_from_slice(&TERMINATOR);
        let d = plan_reader(&b[..], "x").unwrap().damage.unwrap();
        assert!(d.reason.contains("after its end header") && d.namespace.as_deref() == Some("test.bar"), "{d}");

        // The prelude lists a collection the blocks never mention.
        let c = CollectionMetadata::new("db", "missing", "{}");
        let w = ArchiveWriter::new(Vec::new(), "w", &ArchiveHeader::new("7.0.0", "t"), &[c]).unwrap();
        let only_prelude = w.out.clone();
        let d = plan_reader(&only_prelude[..], "x").unwrap().damage.unwrap();
        assert_eq!((d.kind, d.namespace.as_deref()), (ArchiveErrorKind::Unfinished, Some("db.missing")));

        // Not a length, not a terminator.
        let mut b = good[..0x216].to_vec();
        b.extend_from_slice(&3i32.to_le_bytes());
        let d = plan_reader(&b[..], "x").unwrap().damage.unwrap();
        assert!(d.reason.contains("3 is neither a document length"), "{d}");
    }

    #[test]
    fn interleaved_segments_are_planned_and_copied_in_order() {
        // Two namespaces in alternating segments, as mongodump's parallel
        // collections write them.
        let docs: Vec<Vec<u8>> = (0..6).map(|i| document(|b| put_string(b, "v", &format!("doc{i}")))).collect();
        let header = ArchiveHeader::new("6.0.1", "test");
        let colls = [CollectionMetadata::new("a", "x", "{}"), CollectionMetadata::new("a", "y.z", "{}")];
        let mut b = MAGIC.to_le_bytes().to_vec();
        b.extend(header_document(&header));
        for c in &colls {
            b.extend(collection_document(c));
        }
        b.extend(TERMINATOR);
        let mut crc = [Crc64::new(), Crc64::new()];
        for (i, d) in docs.iter().enumerate() {
            let which = i % 2;
            b.extend(namespace_header("a", &colls[which].collection, false, 0));
            b.extend(d);
            b.extend(TERMINATOR);
            crc[which].update(d);
        }
        for which in [1, 0] {
            b.extend(namespace_header("a", &colls[which].collection, true, crc[which].value()));
            b.extend(TERMINATOR);
        }
        let plan = plan_reader(&b[..], "interleaved").unwrap();
        assert!(plan.is_clean(), "{:?} {:?}", plan.damage, plan.problems);
        let y = plan.namespace("a.y.z").unwrap();
        assert_eq!((y.documents, y.ranges.len(), y.crc_ok), (3, 3, Some(true)));
        let mut out = Vec::new();
        let stats = copy_collection(&mut io::Cursor::new(&b), &plan, y, &mut out).unwrap();
        assert_eq!(out, [docs[1].clone(), docs[3].clone(), docs[5].clone()].concat());
        assert!(stats.damage.is_empty());
    }

    /// The `.bson` and metadata files of a dump directory, as
    /// (collection metadata, documents) for the writer.
    fn dump_collections(dir: &str) -> Vec<(CollectionMetadata, Option<Vec<u8>>)> {
        let root = data(dir);
        let mut out = Vec::new();
        let mut dbs: Vec<_> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        dbs.sort();
        for db in dbs {
            let db_name = db.file_name().unwrap().to_str().unwrap().to_string();
            let mut files: Vec<_> = std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                let name = f.file_name().unwrap().to_str().unwrap();
                let Some(coll) = name.strip_suffix(".metadata.json") else { continue };
                let metadata = std::fs::read_to_string(&f).unwrap();
                let c = CollectionMetadata::new(&db_name, coll, metadata);
                let bson_name =
                    if c.is_timeseries() { format!("system.buckets.{coll}.bson") } else { format!("{coll}.bson") };
                let docs = std::fs::read(db.join(bson_name)).ok();
                out.push((c, docs));
            }
        }
        out
    }

    #[test]
    fn a_dump_directory_with_an_oplog_becomes_an_archive_and_back() {
        let dir = "timeseries_tests/ts_dump_with_oplog";
        let collections = dump_collections(dir);
        assert_eq!(collections.len(), 6);
        let oplog = read(&format!("{dir}/oplog.bson"));
        let header = ArchiveHeader::new("5.0.0", "coffer");
        let readers = collections.iter().map(|(c, d)| (c.clone(), d.as_deref()));
        let (bytes, written) = write_archive(Vec::new(), "new", &header, readers, Some(&oplog[..])).unwrap();
        assert!(written.iter().all(|w| w.problems.is_empty()), "{written:?}");
        assert_eq!(written.last().unwrap().namespace, ".oplog");

        let plan = plan_reader(&bytes[..], "new").unwrap();
        assert!(plan.is_clean(), "{:?} {:?}", plan.damage, plan.problems);
        assert_eq!(plan.prelude.header, header);
        // Every collection's metadata, the oplog's entry last.
        assert_eq!(plan.prelude.collections.len(), 7);
        assert!(plan.prelude.collections[6].is_oplog());
        for (c, docs) in &collections {
            let i = plan.prelude.collections.iter().position(|x| x.namespace() == c.namespace()).unwrap();
            assert_eq!(plan.prelude.collections[i], *c);
            let data_ns = namespace(&c.db, &c.data_collection("5.0.0"));
            let n = plan.namespace(&data_ns).unwrap_or_else(|| panic!("{data_ns}"));
            assert_eq!(n.prelude, Some(i));
            let mut out = Vec::new();
            copy_collection(&mut io::Cursor::new(&bytes), &plan, n, &mut out).unwrap();
            assert_eq!(out, docs.clone().unwrap_or_default(), "{data_ns}");
        }
        let n = plan.namespace(".oplog").unwrap();
        assert!(n.is_oplog() && plan.metadata(n).is_none());
        let mut out = Vec::new();
        let stats = copy_collection(&mut io::Cursor::new(&bytes), &plan, n, &mut out).unwrap();
        assert!(out == oplog && stats.damage.is_empty());
    }

    #[test]
    fn a_dump_directory_with_indexes_round_trips_through_the_streaming_reader() {
        let collections = dump_collections("testdirs");
        let names: Vec<String> = collections.iter().map(|(c, _)| c.namespace()).collect();
        assert_eq!(names, ["db1.c1", "db1.c3", "db1.c4"]);
        let header = ArchiveHeader::new("4.4.0", "coffer");
        let readers = collections.iter().map(|(c, d)| (c.clone(), d.as_deref()));
        let (bytes, _) = write_archive(Vec::new(), "new", &header, readers, None::<&[u8]>).unwrap();
        let (prelude, events, err) = events(&bytes);
        assert_eq!(err, None);
        assert_eq!(
            prelude.collections.iter().map(|c| c.metadata.clone()).collect::<Vec<_>>(),
            collections.iter().map(|(c, _)| c.metadata.clone()).collect::<Vec<_>>()
        );
        let got = by_namespace(&events);
        for (c, docs) in &collections {
            let (_, d) = got.iter().find(|(n, _)| *n == c.namespace()).unwrap();
            assert_eq!(*d, docs.clone().unwrap_or_default());
        }
        assert!(events.iter().all(|e| !matches!(e, Owned::End(_, _, false) | Owned::Document(_, _, false))));
    }

    #[test]
    fn the_writer_refuses_what_mongorestore_would() {
        let c = CollectionMetadata::new("db", "c", "{}");
        let e = ArchiveWriter::new(Vec::new(), "w", &ArchiveHeader::new("unknown", "t"), std::slice::from_ref(&c))
            .err()
            .unwrap();
        assert!(e.reason.contains("not MAJOR.MINOR.PATCH"), "{e}");
        let e = ArchiveWriter::new(Vec::new(), "w", &ArchiveHeader::new("7.0.2", "t"), &[c.clone(), c.clone()])
            .err()
            .unwrap();
        assert!(e.reason.contains("twice"), "{e}");
        let mut w = ArchiveWriter::new(Vec::new(), "w", &ArchiveHeader::new("7.0.2", "t"), &[c]).unwrap();
        let e = w.write_collection("db", "other", io::empty()).unwrap_err();
        assert!(e.reason.contains("does not list"), "{e}");
        // A cut document is left out and named; the archive stays whole.
        let doc = document(|b| put_string(b, "a", "b"));
        let input = [doc.clone(), doc[..7].to_vec()].concat();
        let got = w.write_collection("db", "c", &input[..]).unwrap();
        assert_eq!(got.documents, 1);
        assert!(got.problems[0].contains("is cut after"), "{:?}", got.problems);
        let (bytes, _) = w.finish().unwrap();
        assert!(plan_reader(&bytes[..], "w").unwrap().is_clean());
    }

    #[test]
    fn many_damaged_documents_are_counted_past_the_first_listed() {
        // 25 documents whose one element has type 0xaa.
        let bad = [10u8, 0, 0, 0, 0xaa, b'a', 0, 0, 0, 0];
        let input = bad.repeat(25);
        let c = CollectionMetadata::new("db", "c", "{}");
        let (bytes, written) =
            write_archive(Vec::new(), "w", &ArchiveHeader::new("7.0.2", "t"), [(c, Some(&input[..]))], None::<&[u8]>)
                .unwrap();
        assert_eq!((written[0].documents, written[0].problems.len()), (25, 21));
        assert!(written[0].problems[20].starts_with("25 documents are not valid BSON"), "{:?}", written[0].problems);
        let plan = plan_reader(&bytes[..], "w").unwrap();
        assert_eq!(plan.namespaces[0].damaged_documents, 25);
        assert_eq!(plan.problems.len(), 21, "{:?}", plan.problems);
        assert!(plan.problems[20].reason.starts_with("25 damaged documents in all"), "{}", plan.problems[20]);
        let mut out = Vec::new();
        let stats = copy_collection(&mut io::Cursor::new(&bytes), &plan, &plan.namespaces[0], &mut out).unwrap();
        assert_eq!((out, stats.damage.len()), (input, 21));
    }

    #[test]
    fn server_versions_parse_as_mongo_tools_does() {
        assert_eq!(parse_server_version("5.0.0-rc0"), Some((5, 0, 0)));
        assert_eq!(parse_server_version("8.3.1+ent"), Some((8, 3, 1)));
        assert_eq!(parse_server_version("unknown"), None);
        assert_eq!(parse_server_version("7.0"), None);
        let ts = CollectionMetadata::new("d", "t", r#"{"type":"timeseries"}"#);
        assert_eq!(ts.data_collection("8.0.4"), "system.buckets.t");
        assert_eq!(ts.data_collection("8.3.0"), "t");
        assert_eq!(CollectionMetadata::new("d", "c", "{}").kind.as_deref(), Some("collection"));
    }
}
