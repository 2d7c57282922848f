//! coffer-sdk: write a coffer data-source plugin.
//!
//! A plugin is a WebAssembly component (built with
//! `cargo build --target wasm32-wasip2 --release`) that knows how to snapshot,
//! restore and verify one kind of system. The coffer host gives it a
//! [`Sink`] to write entries into, a [`SnapshotReader`] to read stored
//! snapshots from, and only the directories and addresses the operator
//! granted. Everything else (chunking, deduplication, compression,
//! encryption, storage, retention) is the host's job.
//!
//! Implement [`Plugin`] for a type and name it in [`export!`]. The example
//! is a real crate, `examples/plugin-notes` in the coffer repository: it
//! backs up the `.txt` files of a directory with [`host::list_dir`],
//! [`Sink::reuse_unchanged`] and [`Sink::add_files`], restores them with
//! [`SnapshotReader::restore_files`] and verifies them.
//! `docs/writing-a-plugin.md` walks through it from `cargo new` to
//! `coffer backup`, `restore` and `verify`, and CI runs its commands.

#![deny(missing_docs)]

use std::io;

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod bindings {
    //! Generated bindings of the `coffer:plugin` contract. Plugin authors use
    //! the types of the crate root instead.
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "coffer:plugin/plugin@0.2.0",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::coffer_sdk::bindings",
    });
}

use bindings::coffer::plugin0_1_0 as wit;
use bindings::coffer::plugin0_2_0 as wit2;

pub use wit::types::EntryKind;
pub use wit2::locks::LockHeld;

// ---------------------------------------------------------------------------
// Errors

/// What a plugin call failed with. Each variant reaches the host as the
/// contract's `error` variant and is shown to the operator with the
/// plugin's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The config is wrong; the text names the field.
    InvalidConfig(String),
    /// Something needed was not granted, or credentials were refused.
    AccessDenied(String),
    /// The source cannot be reached.
    Unavailable(String),
    /// Data is damaged.
    Corrupt(String),
    /// The host cancelled the job.
    Cancelled,
    /// Not supported by this plugin.
    Unsupported(String),
    /// Anything else.
    Other(String),
}

impl Error {
    /// An [`Error::Other`] from anything printable.
    pub fn other(msg: impl std::fmt::Display) -> Self {
        Error::Other(msg.to_string())
    }

    /// Adds context in front of the message (`reading etc/passwd: ...`).
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::InvalidConfig(m) => Error::InvalidConfig(format!("{what}: {m}")),
            Error::AccessDenied(m) => Error::AccessDenied(format!("{what}: {m}")),
            Error::Unavailable(m) => Error::Unavailable(format!("{what}: {m}")),
            Error::Corrupt(m) => Error::Corrupt(format!("{what}: {m}")),
            Error::Cancelled => Error::Cancelled,
            Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
            Error::Other(m) => Error::Other(format!("{what}: {m}")),
        }
    }

    fn into_wit(self) -> wit::types::Error {
        use wit::types::Error as W;
        match self {
            Error::InvalidConfig(m) => W::InvalidConfig(m),
            Error::AccessDenied(m) => W::AccessDenied(m),
            Error::Unavailable(m) => W::Unavailable(m),
            Error::Corrupt(m) => W::Corrupt(m),
            Error::Cancelled => W::Cancelled,
            Error::Unsupported(m) => W::Unsupported(m),
            Error::Other(m) => W::Other(m),
        }
    }

    fn from_wit(e: wit::types::Error) -> Self {
        use wit::types::Error as W;
        match e {
            W::InvalidConfig(m) => Error::InvalidConfig(m),
            W::AccessDenied(m) => Error::AccessDenied(m),
            W::Unavailable(m) => Error::Unavailable(m),
            W::Corrupt(m) => Error::Corrupt(m),
            W::Cancelled => Error::Cancelled,
            W::Unsupported(m) => Error::Unsupported(m),
            W::Other(m) => Error::Other(m),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::AccessDenied(m) => write!(f, "access denied: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Corrupt(m) => write!(f, "corrupt: {m}"),
            Error::Cancelled => f.write_str("cancelled"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // Errors that crossed the host boundary inside an io::Error keep
        // their kind.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return *e.into_inner().expect("checked").downcast::<Error>().expect("checked");
        }
        let text = describe_io(&e);
        match e.kind() {
            io::ErrorKind::PermissionDenied => Error::AccessDenied(text),
            io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
            | io::ErrorKind::BrokenPipe => Error::Unavailable(text),
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Error::Corrupt(text),
            _ => Error::Other(text),
        }
    }
}

/// An I/O error's text without std's " (os error N)": inside the sandbox N
/// is a WASI error number, which an operator would read as the host's
/// (WASI's 2 is "permission denied", Linux's 2 is "no such file").
fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(n) => text.strip_suffix(&format!(" (os error {n})")).map_or(text.clone(), str::to_string),
        None => text,
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}

// ---------------------------------------------------------------------------
// Config

/// A config field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, as the operator typed it (`path`, `url`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::InvalidConfig(format!("{}: {}", e.field, e.reason))
    }
}

/// A plugin's config: deserialized from the JSON the host passes, then
/// validated. Use `#[serde(deny_unknown_fields)]` so a misspelled key is an
/// error naming it.
pub trait Config: DeserializeOwned {
    /// Checks values that deserialization cannot (ranges, absolute paths).
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Parses and validates a config; errors name the field.
pub fn parse_config<C: Config>(json: &str) -> Result<C, Error> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let config: C = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json appends " at line L column C", which means nothing to an
        // operator who typed `--set`.
        let inner = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        if path == "." { Error::InvalidConfig(inner) } else { Error::InvalidConfig(format!("{path}: {inner}")) }
    })?;
    config.validate()?;
    Ok(config)
}

// ---------------------------------------------------------------------------
// Host services

pub mod http;
pub mod net;

/// Host services: logging, progress, cancellation, restore permissions.
pub mod host {
    use super::{Error, wit};

    /// Logs at debug level.
    pub fn debug(msg: impl AsRef<str>) {
        wit::host::log(wit::types::LogLevel::Debug, msg.as_ref());
    }

    /// Logs at info level.
    pub fn info(msg: impl AsRef<str>) {
        wit::host::log(wit::types::LogLevel::Info, msg.as_ref());
    }

    /// Logs a warning: something was skipped and the job goes on.
    pub fn warn(msg: impl AsRef<str>) {
        wit::host::log(wit::types::LogLevel::Warn, msg.as_ref());
    }

    /// Logs an error.
    pub fn error(msg: impl AsRef<str>) {
        wit::host::log(wit::types::LogLevel::Error, msg.as_ref());
    }

    /// Reports progress: `done` of `total` bytes.
    pub fn progress(done: u64, total: Option<u64>) {
        wit::host::progress(done, total);
    }

    /// True once the operator cancelled the job.
    pub fn cancelled() -> bool {
        wit::host::cancelled()
    }

    /// Returns [`Error::Cancelled`] once the job was cancelled; call it
    /// between entries.
    pub fn check_cancelled() -> Result<(), Error> {
        if cancelled() { Err(Error::Cancelled) } else { Ok(()) }
    }

    /// Permission bits of a host path inside a grant (a final symlink is
    /// not followed), which WASI does not expose.
    pub fn file_mode(path: &str) -> Result<u32, Error> {
        wit::host::file_mode(path).map_err(|e| Error::from_wit(e).context(path))
    }

    /// The strongest lock another process holds on a file inside a grant
    /// (`fcntl`, open file description and `flock` locks), looked up
    /// without taking one: whether a database's server has it open.
    pub fn file_lock(path: &str) -> Result<super::LockHeld, Error> {
        super::wit2::locks::file_lock(path).map_err(|e| Error::from_wit(e).context(path))
    }

    /// What a directory inside a grant holds, with each item's kind,
    /// permission bits, size and modification time (a final symlink is not
    /// followed), sorted by name: one host call per directory, where a walk
    /// through WASI would make a `stat` and a [`file_mode`] call per item.
    pub fn list_dir(path: &str) -> Result<super::DirListing, Error> {
        let l = wit::host::list_dir(path).map_err(|e| Error::from_wit(e).context(path))?;
        Ok(super::DirListing {
            items: l
                .items
                .into_iter()
                .map(|i| super::DirItem {
                    name: i.name,
                    kind: i.kind,
                    mode: i.mode,
                    size: i.size,
                    mtime: super::Timestamp::from_wit(i.mtime),
                })
                .collect(),
            special: l.special,
            not_utf8: l.not_utf8,
        })
    }

    /// The target of a symlink inside a grant, absolute or not (WASI
    /// refuses absolute ones).
    pub fn read_link(path: &str) -> Result<String, Error> {
        wit::host::read_link(path).map_err(|e| Error::from_wit(e).context(path))
    }

    /// Creates a symlink at `path` (relative to the restore target) pointing
    /// at `target`, which may be absolute.
    pub fn symlink(path: &str, target: &str) -> Result<(), Error> {
        wit::host::symlink(path, target).map_err(|e| Error::from_wit(e).context(path))
    }

    /// Sets permission bits and modification time of `path` (relative to
    /// the restore target; `.` is the target itself), which WASI itself
    /// cannot do.
    pub fn set_metadata(path: &str, mode: u32, mtime: super::Timestamp) -> Result<(), Error> {
        wit::host::set_metadata(path, mode, mtime.to_wit()).map_err(|e| Error::from_wit(e).context(path))
    }
}

// ---------------------------------------------------------------------------
// Metadata

/// A point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanoseconds: u32,
}

impl Timestamp {
    fn from_wit(t: wit::types::Timestamp) -> Self {
        Timestamp { seconds: t.seconds, nanoseconds: t.nanoseconds }
    }

    fn to_wit(self) -> wit::types::Timestamp {
        wit::types::Timestamp { seconds: self.seconds, nanoseconds: self.nanoseconds }
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { seconds: d.as_secs() as i64, nanoseconds: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp { seconds: -(d.as_secs() as i64), nanoseconds: 0 }
                } else {
                    Timestamp { seconds: -(d.as_secs() as i64) - 1, nanoseconds: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

/// One item of a directory, from [`host::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    /// The item's name (one path component).
    pub name: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits, setuid, setgid and sticky included.
    pub mode: u32,
    /// Content length (0 for directories and symlinks).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
}

/// What a directory holds, from [`host::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirListing {
    /// Files, directories and symlinks, sorted by name.
    pub items: Vec<DirItem>,
    /// Names of sockets, FIFOs and devices (a snapshot cannot hold them).
    pub special: Vec<String>,
    /// Names that are not UTF-8, shown with U+FFFD (a snapshot cannot name
    /// them).
    pub not_utf8: Vec<String>,
}

/// Metadata of a new entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Relative `/`-separated path.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Expected size, for progress.
    pub size_hint: Option<u64>,
    /// Symlink target.
    pub link_target: Option<String>,
}

impl EntryMeta {
    /// A file entry.
    pub fn file(path: impl Into<String>, mode: u32) -> Self {
        EntryMeta {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            mtime: Timestamp::default(),
            size_hint: None,
            link_target: None,
        }
    }

    /// A directory entry.
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        EntryMeta { kind: EntryKind::Dir, ..EntryMeta::file(path, mode) }
    }

    /// A symlink entry.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        EntryMeta { kind: EntryKind::Symlink, link_target: Some(target.into()), ..EntryMeta::file(path, 0o777) }
    }

    /// Sets the modification time.
    pub fn mtime(mut self, mtime: impl Into<Timestamp>) -> Self {
        self.mtime = mtime.into();
        self
    }

    /// Sets the size hint.
    pub fn size_hint(mut self, size: u64) -> Self {
        self.size_hint = Some(size);
        self
    }

    fn to_wit(&self) -> wit::types::EntryMeta {
        wit::types::EntryMeta {
            path: self.path.clone(),
            kind: self.kind,
            mode: self.mode,
            mtime: self.mtime.to_wit(),
            size_hint: self.size_hint,
            link_target: self.link_target.clone(),
        }
    }
}

/// An entry of a stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Relative `/`-separated path.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Content length.
    pub size: u64,
    /// Symlink target.
    pub link_target: Option<String>,
    /// Hex BLAKE3 of the content (files).
    pub blake3: Option<String>,
}

impl EntryInfo {
    fn from_wit(e: wit::types::EntryInfo) -> Self {
        EntryInfo {
            path: e.path,
            kind: e.kind,
            mode: e.mode,
            mtime: Timestamp::from_wit(e.mtime),
            size: e.size,
            link_target: e.link_target,
            blake3: e.blake3,
        }
    }
}

/// Size and BLAKE3 of a finished entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Bytes of content.
    pub size: u64,
    /// Hex BLAKE3.
    pub blake3: String,
}

/// A regular file for [`Sink::add_files`]: its path in the snapshot and
/// where it is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    /// The entry's path in the snapshot.
    pub path: String,
    /// The file's host path, inside a granted directory.
    pub source: String,
}

/// What became of a file handed to [`Sink::add_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Added, with its size and BLAKE3.
    Added(Digest),
    /// Not added: removed, or no longer a regular file, since it was listed.
    Gone,
    /// Not added: it could not be opened or read to its end; why
    /// (`permission denied`, or an I/O error partway).
    Unreadable(String),
}

// ---------------------------------------------------------------------------
// Sink

/// Where a snapshot's entries go.
pub struct Sink<'a> {
    inner: &'a wit::sink::SnapshotSink,
}

/// How much an [`EntryWriter`] gathers before handing it to the host: each
/// host call copies its bytes once, so fewer, bigger calls are cheaper.
const WRITE_BUFFER: usize = 1 << 20;

impl Sink<'_> {
    /// Adds an entry and returns its content writer. For directories and
    /// symlinks, call [`EntryWriter::finish`] right away (or drop it:
    /// they have no content).
    pub fn add_entry(&self, meta: EntryMeta) -> Result<EntryWriter, Error> {
        let kind = meta.kind;
        let inner = self.inner.add_entry(&meta.to_wit()).map_err(|e| Error::from_wit(e).context(&meta.path))?;
        Ok(EntryWriter { inner: Some(inner), buf: Vec::new(), is_file: kind == EntryKind::File })
    }

    /// Keeps `path` unchanged from the parent snapshot, without reading it.
    pub fn reuse_entry(&self, path: &str) -> Result<Digest, Error> {
        let d = self.inner.reuse_entry(path).map_err(|e| Error::from_wit(e).context(path))?;
        Ok(Digest { size: d.size, blake3: d.blake3 })
    }

    /// Keeps the parent's file at `path` when the parent holds a file
    /// there with this size, modification time and permission bits: the
    /// change check and [`Sink::reuse_entry`] in one host call. False when
    /// there is no parent, it changed, or its data is gone; then add the
    /// file and write its content.
    pub fn reuse_unchanged(&self, path: &str, size: u64, mtime: Timestamp, mode: u32) -> bool {
        self.inner.reuse_unchanged(path, size, mtime.to_wit(), mode)
    }

    /// Adds regular files whose content the host reads itself, several at
    /// once, and returns what became of each, in order. Each entry records
    /// the file's permission bits and modification time as opened. The
    /// content never passes through the plugin, which makes this the fast
    /// way to back up files stored as they are; use [`Self::add_entry`]
    /// where the plugin produces or transforms the bytes. Sources must be
    /// inside the granted directories; at most 10,000 files a call.
    pub fn add_files(&self, files: &[FileSource]) -> Result<Vec<FileOutcome>, Error> {
        let files: Vec<wit::sink::FileSource> =
            files.iter().map(|f| wit::sink::FileSource { path: f.path.clone(), source: f.source.clone() }).collect();
        let outcomes = self.inner.add_files(&files).map_err(Error::from_wit)?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                wit::sink::FileOutcome::Added(d) => FileOutcome::Added(Digest { size: d.size, blake3: d.blake3 }),
                wit::sink::FileOutcome::Gone => FileOutcome::Gone,
                wit::sink::FileOutcome::Unreadable(why) => FileOutcome::Unreadable(why),
            })
            .collect())
    }

    /// The generated binding (for test fixtures that misuse it on purpose).
    #[doc(hidden)]
    pub fn raw(&self) -> &wit::sink::SnapshotSink {
        self.inner
    }

    /// Records a source fact (`pg.start-lsn`, `redis.rdb-version`).
    pub fn set_attribute(&self, key: &str, value: &str) -> Result<(), Error> {
        self.inner.set_attribute(key, value).map_err(Error::from_wit)
    }

    /// Declares that restoring this snapshot to a later point in time needs
    /// the items of this plugin's `stream` from `from_position` on, so that
    /// retention keeps them while the snapshot exists.
    pub fn need_stream(&self, stream: &str, from_position: u64) -> Result<(), Error> {
        wit2::streams::need_stream(self.inner, stream, from_position).map_err(|e| Error::from_wit(e).context(stream))
    }
}

/// Writes one entry's content; a [`std::io::Write`].
pub struct EntryWriter {
    inner: Option<wit::sink::EntryWriter>,
    buf: Vec<u8>,
    is_file: bool,
}

impl EntryWriter {
    fn flush_buf(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let w = self.inner.as_ref().ok_or_else(|| Error::other("entry already finished"))?;
        w.write(&self.buf).map_err(Error::from_wit)?;
        self.buf.clear();
        Ok(())
    }

    /// Ends the entry; returns its size and BLAKE3.
    pub fn finish(mut self) -> Result<Digest, Error> {
        self.flush_buf()?;
        let w = self.inner.take().ok_or_else(|| Error::other("entry already finished"))?;
        let d = wit::sink::EntryWriter::finish(w).map_err(Error::from_wit)?;
        Ok(Digest { size: d.size, blake3: d.blake3 })
    }
}

impl io::Write for EntryWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.is_file {
            return Err(io::Error::other(Error::other("directories and symlinks have no content")));
        }
        if self.buf.is_empty() && data.len() >= WRITE_BUFFER {
            let w = self.inner.as_ref().ok_or_else(|| io::Error::other(Error::other("entry already finished")))?;
            w.write(data).map_err(|e| io::Error::other(Error::from_wit(e)))?;
            return Ok(data.len());
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(WRITE_BUFFER);
        }
        let n = data.len().min(WRITE_BUFFER - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == WRITE_BUFFER {
            self.flush_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.flush_buf()?)
    }
}

// ---------------------------------------------------------------------------
// Reader

/// A stored snapshot: the parent during a snapshot, the subject of a
/// restore or verify.
pub struct SnapshotReader<'a> {
    inner: &'a wit::reader::SnapshotReader,
}

/// Entries fetched per host call while iterating.
const ENTRY_PAGE: u32 = 4096;

impl SnapshotReader<'_> {
    /// Snapshot id (hex).
    pub fn id(&self) -> String {
        self.inner.id()
    }

    /// When it was taken.
    pub fn time(&self) -> Timestamp {
        Timestamp::from_wit(self.inner.time())
    }

    /// Attributes set by the source.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.inner.attributes()
    }

    /// One attribute.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.attributes().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Every entry in path order, fetched page by page.
    pub fn entries(&self) -> impl Iterator<Item = EntryInfo> + '_ {
        let mut page: std::vec::IntoIter<wit::types::EntryInfo> = Vec::new().into_iter();
        let mut last: Option<String> = None;
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(e) = page.next() {
                    last = Some(e.path.clone());
                    return Some(EntryInfo::from_wit(e));
                }
                if done {
                    return None;
                }
                let next = self.inner.entries(last.as_deref(), ENTRY_PAGE);
                done = (next.len() as u32) < ENTRY_PAGE;
                page = next.into_iter();
            }
        })
    }

    /// The entry at `path`.
    pub fn entry(&self, path: &str) -> Option<EntryInfo> {
        self.inner.entry(path).map(EntryInfo::from_wit)
    }

    /// Opens a file entry; the reader is a [`std::io::Read`].
    pub fn open(&self, path: &str) -> Result<EntryReader, Error> {
        let inner = self.inner.open(path).map_err(|e| Error::from_wit(e).context(path))?;
        Ok(EntryReader { inner, buf: Vec::new(), pos: 0, eof: false })
    }

    /// The whole content of a file entry, for entries small enough to hold
    /// in memory (a manifest, a key, one table at a time).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut self.open(path)?, &mut out).map_err(|e| Error::from(e).context(path))?;
        Ok(out)
    }

    /// During a restore into a directory: has the host write these file
    /// entries (content, permission bits, modification time) to the same
    /// paths under the target, several at once, and returns the bytes
    /// written. The content never passes through the plugin, which makes
    /// this the fast way to restore files; use [`Self::open`] where the
    /// plugin must transform the bytes. Parent directories must exist;
    /// at most 10,000 paths a call.
    pub fn restore_files(&self, paths: &[String]) -> Result<u64, Error> {
        self.inner.restore_files(paths).map_err(Error::from_wit)
    }

    /// The streams of the plugin that wrote this snapshot.
    pub fn streams(&self) -> StreamReader {
        StreamReader { inner: wit2::streams::open_streams(self.inner) }
    }

    /// The streams this snapshot declared it needs, with the positions.
    pub fn needed_streams(&self) -> Vec<(String, u64)> {
        wit2::streams::needed_streams(self.inner)
    }
}

// ---------------------------------------------------------------------------
// Streams

/// One item of a stream, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem {
    /// The item's name in its stream.
    pub key: String,
    /// Its position; `None` for an item archived before streams had
    /// positions, whose position the plugin works out from the key.
    pub position: Option<u64>,
    /// Retention never removes a pinned item.
    pub pinned: bool,
}

impl StreamItem {
    fn from_wit(i: wit2::stream_types::Item) -> Self {
        StreamItem { key: i.key, position: i.position, pinned: i.pinned }
    }

    fn to_wit(&self) -> wit2::stream_types::Item {
        wit2::stream_types::Item { key: self.key.clone(), position: self.position, pinned: self.pinned }
    }
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemInfo {
    /// The item's name in its stream.
    pub key: String,
    /// Its position (`None` as in [`StreamItem`]).
    pub position: Option<u64>,
    /// Retention never removes a pinned item.
    pub pinned: bool,
    /// Bytes of content.
    pub size: u64,
    /// Hex BLAKE3 of the content.
    pub blake3: String,
    /// When it was stored.
    pub pushed: Timestamp,
}

/// The resume point a `follow` saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// What the plugin saved.
    pub state: String,
    /// How far the source was, in the stream's positions, if known.
    pub source_position: Option<u64>,
    /// When it was saved.
    pub time: Timestamp,
}

/// Items fetched per host call while iterating a stream.
const ITEM_PAGE: u32 = 4096;

/// Read access to one plugin's streams.
pub struct StreamReader {
    inner: wit2::streams::StreamReader,
}

impl StreamReader {
    /// The names of the streams, sorted.
    pub fn streams(&self) -> Result<Vec<String>, Error> {
        self.inner.streams().map_err(Error::from_wit)
    }

    /// The items of `stream` at or above `from` (every item, those without
    /// a position first, when `None`), ordered by position, fetched page
    /// by page.
    pub fn items(&self, stream: &str, from: Option<u64>) -> impl Iterator<Item = Result<StreamItem, Error>> + '_ {
        let stream = stream.to_string();
        let mut page: std::vec::IntoIter<wit2::stream_types::Item> = Vec::new().into_iter();
        let mut last: Option<StreamItem> = None;
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(i) = page.next() {
                    let item = StreamItem::from_wit(i);
                    last = Some(item.clone());
                    return Some(Ok(item));
                }
                if done {
                    return None;
                }
                let after = last.as_ref().map(StreamItem::to_wit);
                match self.inner.items(&stream, from, after.as_ref(), ITEM_PAGE) {
                    Ok(next) => {
                        done = (next.len() as u32) < ITEM_PAGE;
                        page = next.into_iter();
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(Error::from_wit(e).context(&stream)));
                    }
                }
            }
        })
    }

    /// The item `key` of `stream`, if there is one.
    pub fn stat(&self, stream: &str, key: &str) -> Result<Option<ItemInfo>, Error> {
        let i = self.inner.stat(stream, key).map_err(|e| Error::from_wit(e).context(format!("{stream}/{key}")))?;
        Ok(i.map(|i| ItemInfo {
            key: i.key,
            position: i.position,
            pinned: i.pinned,
            size: i.size,
            blake3: i.blake3,
            pushed: Timestamp::from_wit(i.pushed),
        }))
    }

    /// Opens an item; the reader is a [`std::io::Read`]. The host checks
    /// size and BLAKE3 as it is read.
    pub fn open(&self, stream: &str, key: &str) -> Result<EntryReader, Error> {
        let inner = self.inner.open(stream, key).map_err(|e| Error::from_wit(e).context(format!("{stream}/{key}")))?;
        Ok(EntryReader { inner, buf: Vec::new(), pos: 0, eof: false })
    }

    /// The last checkpoint saved for `stream`.
    pub fn last_checkpoint(&self, stream: &str) -> Result<Option<Checkpoint>, Error> {
        let c = self.inner.last_checkpoint(stream).map_err(|e| Error::from_wit(e).context(stream))?;
        Ok(c.map(|c| Checkpoint {
            state: c.state,
            source_position: c.source_position,
            time: Timestamp::from_wit(c.time),
        }))
    }
}

/// Where a plugin appends to its own streams (in `stream_push` and
/// `follow`).
pub struct StreamSink<'a> {
    inner: &'a wit2::streams::StreamSink,
}

impl StreamSink<'_> {
    /// Begins item `key` at `position` in `stream`; write the content to
    /// the returned writer and [`EntryWriter::finish`] it to store the
    /// item. Appending a key the stream holds with the same content stores
    /// nothing and succeeds; with other content, it fails.
    pub fn append(&self, stream: &str, key: &str, position: u64, pinned: bool) -> Result<EntryWriter, Error> {
        let inner = self
            .inner
            .append(stream, key, position, pinned)
            .map_err(|e| Error::from_wit(e).context(format!("{stream}/{key}")))?;
        Ok(EntryWriter { inner: Some(inner), buf: Vec::new(), is_file: true })
    }

    /// Saves the resume point of `stream` (at most 64 KiB of `state`),
    /// after the items it covers are finished.
    pub fn checkpoint(&self, stream: &str, state: &str, source_position: Option<u64>) -> Result<(), Error> {
        self.inner.checkpoint(stream, state, source_position).map_err(|e| Error::from_wit(e).context(stream))
    }

    /// Reads this plugin's own streams.
    pub fn reader(&self) -> StreamReader {
        StreamReader { inner: self.inner.reader() }
    }
}

/// Bytes asked of the host per read call.
const READ_PIECE: u32 = 1 << 20;

/// Reads one entry's content; a [`std::io::Read`].
pub struct EntryReader {
    inner: wit::reader::EntryReader,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl io::Read for EntryReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.eof || out.is_empty() {
                return Ok(0);
            }
            self.buf = self.inner.read(READ_PIECE).map_err(|e| io::Error::other(Error::from_wit(e)))?;
            self.pos = 0;
            if self.buf.is_empty() {
                self.eof = true;
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// Plugin

/// A capability a config needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Read a directory tree.
    ReadDir(String),
    /// Read and write a directory tree.
    WriteDir(String),
    /// Connect to `host:port`.
    Connect(String),
}

/// Who a plugin is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short lowercase name.
    pub name: String,
    /// Version.
    pub version: String,
    /// One sentence.
    pub description: String,
    /// JSON Schema of the config.
    pub config_schema: String,
    /// Restore into a directory is supported.
    pub restore_directory: bool,
    /// Restore into a live server is supported.
    pub restore_live: bool,
}

impl PluginInfo {
    /// Name, version and description; restores into a directory only.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            config_schema: r#"{"type":"object"}"#.into(),
            restore_directory: true,
            restore_live: false,
        }
    }

    /// Sets the config's JSON Schema.
    pub fn schema(mut self, schema: &str) -> Self {
        self.config_schema = schema.into();
        self
    }

    /// Sets which restore modes are supported.
    pub fn restore_modes(mut self, directory: bool, live: bool) -> Self {
        self.restore_directory = directory;
        self.restore_live = live;
        self
    }
}

/// Where and how to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The target directory (host path, granted read-write), or `None` for
    /// a live restore into the server the config names.
    pub directory: Option<String>,
    /// Overwrite a non-empty target.
    pub force: bool,
    /// Only these paths (and what is below them); empty means all.
    pub include: Vec<String>,
    /// The host's command that fetches one item of this plugin's streams,
    /// for commands the restored system runs later (PostgreSQL's
    /// `restore_command`); `None` when the host cannot offer one.
    pub fetch: Option<FetchCommand>,
}

/// The host's own command for fetching one stream item. It holds no
/// password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchCommand {
    /// Program (an absolute path) and its first arguments; append the
    /// stream, the key and the file to write. It exits 0 when it wrote the
    /// file and 1 when the stream holds no such item.
    pub argv: Vec<String>,
    /// What the operator must know for it to work, if anything.
    pub note: Option<String>,
}

impl FetchCommand {
    /// The command as one line for a POSIX shell, each argument quoted,
    /// followed by `tail` as it is (for example `"STREAM %f %p"` with the
    /// stream quoted by the caller, where the system substitutes `%f`).
    pub fn shell_line(&self, tail: &str) -> String {
        let mut line: Vec<String> = self.argv.iter().map(|a| shell_quote(a)).collect();
        if !tail.is_empty() {
            line.push(tail.to_string());
        }
        line.join(" ")
    }
}

/// `s` quoted for a POSIX shell: as it is when it holds only safe
/// characters, otherwise in single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b));
    if safe { s.to_string() } else { format!("'{}'", s.replace('\'', "'\\''")) }
}

impl RestoreOptions {
    /// The target directory, or an error for a live restore.
    pub fn directory(&self) -> Result<&str, Error> {
        self.directory
            .as_deref()
            .ok_or_else(|| Error::Unsupported("this plugin restores into a directory only: give --target DIR".into()))
    }

    /// True if `path` is selected by [`RestoreOptions::include`]: it is an
    /// included path, below one, or a directory above one (so the tree
    /// leading to a selected file is restored too).
    pub fn includes(&self, path: &str) -> bool {
        self.include.is_empty()
            || self.include.iter().any(|p| {
                let p = p.trim_matches('/');
                p.is_empty()
                    || path == p
                    || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
                    || p.strip_prefix(path).is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Items checked.
    pub checked: u64,
    /// Bytes read back.
    pub bytes: u64,
    /// `(path, reason)` of each problem.
    pub problems: Vec<(String, String)>,
    /// Informational lines.
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Counts checked items and bytes.
    pub fn checked(&mut self, items: u64, bytes: u64) {
        self.checked += items;
        self.bytes += bytes;
    }

    /// Records a problem.
    pub fn problem(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.problems.push((path.into(), reason.into()));
    }

    /// Records a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

/// A data-source plugin. Name the implementing type in [`export!`].
pub trait Plugin {
    /// The config, parsed with [`parse_config`].
    type Config: Config;

    /// Name, version, description and config schema.
    fn info() -> PluginInfo;

    /// A stable name for what `config` backs up.
    fn source(config: &Self::Config) -> String;

    /// What `config` needs granted for a snapshot.
    fn capabilities(config: &Self::Config) -> Vec<Capability>;

    /// Writes a snapshot into `sink`, reusing unchanged entries of `parent`.
    fn snapshot(config: Self::Config, parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error>;

    /// Restores `snapshot`.
    fn restore(config: Self::Config, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error>;

    /// Checks `snapshot`.
    fn verify(config: Self::Config, snapshot: &SnapshotReader) -> Result<VerifyReport, Error>;

    /// Archives the file at host path `file`, which the operator handed
    /// over (an `archive_command`), into one of the plugin's streams. A
    /// plugin without streams keeps this default, which says so.
    fn stream_push(config: Self::Config, file: &str, sink: &StreamSink) -> Result<(), Error> {
        let _ = (config, file, sink);
        Err(Error::Unsupported("this plugin keeps no streams: it has nothing to push".into()))
    }

    /// Follows the source, appending items to the plugin's streams as they
    /// appear and saving a checkpoint after each, until
    /// [`host::cancelled`] (then return [`Error::Cancelled`]). A plugin
    /// without streams keeps this default, which says so.
    fn follow(config: Self::Config, sink: &StreamSink) -> Result<(), Error> {
        let _ = (config, sink);
        Err(Error::Unsupported("this plugin keeps no streams: it has nothing to follow".into()))
    }
}

#[doc(hidden)]
pub mod glue {
    //! What [`export!`](crate::export) expands to call; not for plugin authors.
    use super::*;
    use wit::types as t;

    pub fn info<P: Plugin>(config: Option<String>) -> Result<t::PluginInfo, t::Error> {
        let i = P::info();
        let (source, caps) = match config {
            Some(c) => {
                let c: P::Config = parse_config(&c).map_err(Error::into_wit)?;
                (P::source(&c), P::capabilities(&c))
            }
            None => (String::new(), Vec::new()),
        };
        let mut modes = t::RestoreModes::empty();
        if i.restore_directory {
            modes.insert(t::RestoreModes::DIRECTORY);
        }
        if i.restore_live {
            modes.insert(t::RestoreModes::LIVE);
        }
        Ok(t::PluginInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            config_schema: i.config_schema,
            source,
            capabilities: caps
                .into_iter()
                .map(|c| match c {
                    Capability::ReadDir(d) => t::Capability::ReadDir(d),
                    Capability::WriteDir(d) => t::Capability::WriteDir(d),
                    Capability::Connect(a) => t::Capability::Connect(a),
                })
                .collect(),
            restore_modes: modes,
        })
    }

    pub fn snapshot<P: Plugin>(
        config: String,
        parent: Option<&wit::reader::SnapshotReader>,
        sink: &wit::sink::SnapshotSink,
    ) -> Result<(), t::Error> {
        let c: P::Config = parse_config(&config).map_err(Error::into_wit)?;
        let parent = parent.map(|inner| SnapshotReader { inner });
        P::snapshot(c, parent.as_ref(), &Sink { inner: sink }).map_err(Error::into_wit)
    }

    pub fn restore<P: Plugin>(
        config: String,
        snapshot: &wit::reader::SnapshotReader,
        options: wit2::stream_types::RestoreOptions,
    ) -> Result<(), t::Error> {
        let c: P::Config = parse_config(&config).map_err(Error::into_wit)?;
        let options = RestoreOptions {
            directory: match options.target {
                t::RestoreTarget::Directory(d) => Some(d),
                t::RestoreTarget::Live => None,
            },
            force: options.force,
            include: options.paths,
            fetch: options.fetch.map(|f| FetchCommand { argv: f.argv, note: f.note }),
        };
        P::restore(c, &SnapshotReader { inner: snapshot }, options).map_err(Error::into_wit)
    }

    pub fn verify<P: Plugin>(
        config: String,
        snapshot: &wit::reader::SnapshotReader,
    ) -> Result<t::VerifyReport, t::Error> {
        let c: P::Config = parse_config(&config).map_err(Error::into_wit)?;
        let r = P::verify(c, &SnapshotReader { inner: snapshot }).map_err(Error::into_wit)?;
        Ok(t::VerifyReport {
            checked: r.checked,
            bytes: r.bytes,
            problems: r.problems.into_iter().map(|(path, reason)| t::Problem { path, reason }).collect(),
            notes: r.notes,
        })
    }

    pub fn stream_push<P: Plugin>(
        config: String,
        file: String,
        sink: &wit2::streams::StreamSink,
    ) -> Result<(), t::Error> {
        let c: P::Config = parse_config(&config).map_err(Error::into_wit)?;
        P::stream_push(c, &file, &StreamSink { inner: sink }).map_err(Error::into_wit)
    }

    pub fn follow<P: Plugin>(config: String, sink: &wit2::streams::StreamSink) -> Result<(), t::Error> {
        let c: P::Config = parse_config(&config).map_err(Error::into_wit)?;
        P::follow(c, &StreamSink { inner: sink }).map_err(Error::into_wit)
    }
}

/// Exports a [`Plugin`] implementation as the component's `source`
/// interface. Use it once, at the crate root.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code)]
        mod __coffer_export {
        #[allow(unused_imports)]
        use super::*;

        pub struct __CofferExport;

        impl $crate::bindings::exports::coffer::plugin0_2_0::source::Guest for __CofferExport {
            fn info(
                config: Option<String>,
            ) -> Result<
                $crate::bindings::coffer::plugin0_1_0::types::PluginInfo,
                $crate::bindings::coffer::plugin0_1_0::types::Error,
            > {
                $crate::glue::info::<$plugin>(config)
            }

            fn snapshot(
                config: String,
                parent: Option<&$crate::bindings::coffer::plugin0_1_0::reader::SnapshotReader>,
                sink: &$crate::bindings::coffer::plugin0_1_0::sink::SnapshotSink,
            ) -> Result<(), $crate::bindings::coffer::plugin0_1_0::types::Error> {
                $crate::glue::snapshot::<$plugin>(config, parent, sink)
            }

            fn restore(
                config: String,
                snapshot: &$crate::bindings::coffer::plugin0_1_0::reader::SnapshotReader,
                options: $crate::bindings::coffer::plugin0_2_0::stream_types::RestoreOptions,
            ) -> Result<(), $crate::bindings::coffer::plugin0_1_0::types::Error> {
                $crate::glue::restore::<$plugin>(config, snapshot, options)
            }

            fn verify(
                config: String,
                snapshot: &$crate::bindings::coffer::plugin0_1_0::reader::SnapshotReader,
            ) -> Result<
                $crate::bindings::coffer::plugin0_1_0::types::VerifyReport,
                $crate::bindings::coffer::plugin0_1_0::types::Error,
            > {
                $crate::glue::verify::<$plugin>(config, snapshot)
            }

            fn stream_push(
                config: String,
                file: String,
                sink: &$crate::bindings::coffer::plugin0_2_0::streams::StreamSink,
            ) -> Result<(), $crate::bindings::coffer::plugin0_1_0::types::Error> {
                $crate::glue::stream_push::<$plugin>(config, file, sink)
            }

            fn follow(
                config: String,
                sink: &$crate::bindings::coffer::plugin0_2_0::streams::StreamSink,
            ) -> Result<(), $crate::bindings::coffer::plugin0_1_0::types::Error> {
                $crate::glue::follow::<$plugin>(config, sink)
            }
        }

        $crate::bindings::__export_plugin_world!(__CofferExport with_types_in $crate::bindings);
        }
    };
}
