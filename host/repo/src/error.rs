//! The crate's error type. Every message names the object or snapshot it
//! concerns and, where there is one, what the operator can do about it.

use crate::backend::{BackendError, object::LocationError};
use crate::id::Id;

/// What can go wrong in a repository operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage call failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The location is not usable.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// No repository at the location.
    #[error("no coffer repository at {location}: the config object is missing (run `coffer init` to create one)")]
    NotARepository {
        /// Where we looked.
        location: String,
    },
    /// `init` on a location that already holds a repository.
    #[error("{location} already holds a coffer repository; refusing to overwrite it")]
    AlreadyInitialized {
        /// Where.
        location: String,
    },
    /// The config declares a format this build does not know.
    #[error(
        "repository {location} uses format version {found}; this coffer reads versions up to {supported}: upgrade coffer"
    )]
    UnsupportedVersion {
        /// Where.
        location: String,
        /// Version found in the config.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// No key file opens with the password.
    #[error("wrong password: none of the {tried} key files in {location}/keys opens with it")]
    WrongPassword {
        /// Where.
        location: String,
        /// How many key files were tried.
        tried: usize,
    },
    /// A key cache file's key file is gone from the repository: it was
    /// removed, which revokes the cache file.
    #[error(
        "it is revoked: its key {key} is no longer in {location}/keys (`coffer key remove` revokes a key \
         cache); make a new one with `coffer key cache --out FILE`, or open with the password"
    )]
    KeyCacheRevoked {
        /// Where.
        location: String,
        /// The short id of the key it names.
        key: String,
    },
    /// A key cache file that does not open this repository.
    #[error("it does not open repository {location}: {reason}")]
    KeyCacheRefused {
        /// Where.
        location: String,
        /// Why.
        reason: String,
    },
    /// The repository has no key files.
    #[error("repository {location} has no key files; it cannot be opened (restore keys/ from a copy)")]
    NoKeys {
        /// Where.
        location: String,
    },
    /// A stored object is damaged or not what it claims to be.
    #[error("{object} is damaged: {reason}. Run `coffer check --read-data` to see what it affects{hint}")]
    Corrupt {
        /// The object's path in the repository.
        object: String,
        /// What is wrong.
        reason: String,
        /// Extra advice (starts with "; ").
        hint: String,
    },
    /// A blob the snapshot needs is in no index.
    #[error("{kind} blob {id} is not in any index (run `coffer repair index`, then `coffer check`)")]
    MissingBlob {
        /// Blob kind name.
        kind: &'static str,
        /// The blob.
        id: Id,
    },
    /// A pack's key epoch has no `epochs/` file.
    #[error(
        "key epoch {0} is missing (no file epochs/{0:08}, even after reloading the index): data sealed under it cannot be read; restore that file from a copy of the repository"
    )]
    MissingEpoch(u32),
    /// No snapshot matches.
    #[error("no snapshot matches {0:?} (list them with `coffer snapshots`)")]
    SnapshotNotFound(String),
    /// Several snapshots match a prefix.
    #[error("snapshot id prefix {0:?} is ambiguous: give more characters")]
    AmbiguousSnapshot(String),
    /// The WAL archive holds no file of that name in that stream (a normal
    /// answer while PostgreSQL recovers: it asks for files beyond the end).
    #[error("WAL file {name} is not in the archive (stream {stream})")]
    WalNotFound {
        /// The stream.
        stream: String,
        /// The WAL file name.
        name: String,
    },
    /// The stream holds no item under that key (a normal answer while a
    /// recovery asks for items beyond the end).
    #[error("stream {owner}/{stream} holds no item {key}")]
    StreamItemNotFound {
        /// The stream's owner.
        owner: String,
        /// The stream.
        stream: String,
        /// The key asked for.
        key: String,
    },
    /// A push under a key the stream already holds, with other content or at
    /// another position or pinned flag: a stored item is never replaced.
    #[error(
        "stream {owner}/{stream}: item {key} is already stored with {stored}, and the push has {pushed}; a stored \
         item is never replaced (give new content a new key)"
    )]
    StreamItemConflict {
        /// The stream's owner.
        owner: String,
        /// The stream.
        stream: String,
        /// The key.
        key: String,
        /// What the stored item has that differs (`position 12`, `1000 bytes
        /// with BLAKE3 ...`).
        stored: String,
        /// What the push has instead.
        pushed: String,
    },
    /// Another follower holds a stream's lease.
    #[error(
        "stream {stream} cannot be followed: {holder} holds its lease ({object}). Only one follower writes a \
         stream at a time; if that run crashed on another machine, its lease expires at {expires} (a crashed run \
         on this machine is noticed at once)"
    )]
    StreamLeaseHeld {
        /// The stream, as `<owner>/<stream>`.
        stream: String,
        /// The lease object's path.
        object: String,
        /// Who holds it, when it started, where.
        holder: String,
        /// When it expires unless refreshed.
        expires: String,
    },
    /// A follower found it no longer certainly holds its stream's lease.
    #[error(
        "this run no longer certainly holds the stream lease {object} ({reason}): another follower may have \
         taken the stream over, so this one must stop writing it; start it again if none is running"
    )]
    StreamLeaseLost {
        /// The lease object's path.
        object: String,
        /// Why.
        reason: String,
    },
    /// The caller passed something invalid.
    #[error("{0}")]
    Invalid(String),
    /// An entry was rejected.
    #[error("entry {path:?}: {reason}")]
    InvalidEntry {
        /// The entry's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A snapshot entry to reuse is not in the parent snapshot or its data is gone.
    #[error("cannot reuse {path:?} from the parent snapshot: {reason}")]
    CannotReuse {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Another maintenance run holds the repository's exclusive lease.
    #[error(
        "{operation} cannot start: {holder} holds the repository's exclusive lease ({object}). Wait for it to \
         finish; if that run crashed on another machine, its lease expires at {expires} and {operation} can \
         run then (a crashed run on this machine is noticed at once)"
    )]
    LeaseHeld {
        /// What was refused.
        operation: String,
        /// The lease object's path.
        object: String,
        /// Who holds it, when it started, where.
        holder: String,
        /// When it expires unless refreshed.
        expires: String,
    },
    /// A maintenance run found it no longer certainly holds its lease, and
    /// stopped before deleting anything more.
    #[error(
        "stopped before deleting anything more: this run no longer certainly holds the repository's exclusive lease \
         {object} ({reason}). What was already done is consistent; run the command again"
    )]
    LeaseLost {
        /// The lease object's path.
        object: String,
        /// Why.
        reason: String,
    },
    /// The snapshot writer failed earlier and can no longer be used.
    #[error("the snapshot was aborted after an earlier error: {0}")]
    Aborted(String),
    /// Writing new packs failed (a full disk, a store that refused a write);
    /// whatever was saving blobs (a backup, a prune's repack, a WAL push)
    /// stopped, and nothing it wrote was indexed.
    #[error("writing new packs failed: {0}")]
    PackWrite(String),
    /// The repository's `config` object is unreadable or was altered:
    /// nothing in the repository can be opened without it, so `check`
    /// cannot look further either.
    #[error(
        "the repository config {location}/config is damaged: {reason}. Nothing in the repository can be read without \
         it, and `coffer check` stops at the same place: put `config` back from a copy of the repository (a \
         file-level copy of its directory or bucket). It changes only when `coffer init` writes it and when a newer \
         coffer raises the format version, so any recent copy holds the right one"
    )]
    DamagedConfig {
        /// The repository's location.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// Local file system error (restore targets, backup sources).
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// A [`Error::Corrupt`] with no hint.
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt { object: object.into(), reason: reason.into(), hint: String::new() }
    }

    /// Wraps a local I/O error with its path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
