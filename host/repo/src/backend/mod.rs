//! Storage backends.
//!
//! The repository sees storage as a few flat namespaces of immutable files
//! ([`FileKind`]). [`Backend`] is the small trait it needs; [`ObjectBackend`]
//! implements it over any `object_store` store chosen by URL, and decorators
//! (such as the fault injector in test support) wrap another backend.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

pub(crate) mod object;
pub use object::{BackendOptions, LocationError, ObjectBackend};

#[cfg(any(test, feature = "test-support"))]
pub mod fault;

/// The namespaces of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// The single `config` object.
    Config,
    /// `keys/<id>`: key files wrapping the master secret.
    Key,
    /// `data/<2 hex>/<id>`: pack files.
    Pack,
    /// `index/<id>`: index files.
    Index,
    /// `snapshots/<id>`: snapshot manifests.
    Snapshot,
    /// `prune/<id>`: pending-deletion markers written by prune's first phase.
    PruneMarker,
    /// `sessions/<id>`: markers of backups in progress (never exclusive).
    Session,
    /// `epochs/<number>`: wrapped data keys, one per key epoch.
    Epoch,
    /// `wal/<stream>/<name>`: the WAL archive, one object per archived
    /// PostgreSQL WAL file; the name within this kind is `<stream>/<name>`.
    Wal,
    /// `locks/exclusive.<generation>`: the lease that keeps two prunes (or
    /// repairs) apart, and `locks/stream.<owner>.<stream>.<generation>`: the
    /// lease of one stream's follower; taken with a create-only write.
    Lease,
    /// `quarantine/snapshots/<id>`: snapshot files `repair snapshots` set
    /// aside because they cannot be read; kept for inspection, never read.
    QuarantinedSnapshot,
    /// `streams/<owner>/<stream>/<key>@<position>-<u|p>`: plugin-owned
    /// stream items, and `streams/<owner>/<stream>/.checkpoint`; the name
    /// within this kind is everything after `streams/`.
    Stream,
}

impl FileKind {
    /// Every kind, in listing order.
    pub const ALL: [FileKind; 12] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::PruneMarker,
        FileKind::Session,
        FileKind::Epoch,
        FileKind::Wal,
        FileKind::Lease,
        FileKind::QuarantinedSnapshot,
        FileKind::Stream,
    ];

    /// The directory (prefix) of this kind, without a trailing slash.
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::PruneMarker => "prune",
            FileKind::Session => "sessions",
            FileKind::Epoch => "epochs",
            FileKind::Wal => "wal",
            FileKind::Lease => "locks",
            FileKind::QuarantinedSnapshot => "quarantine/snapshots",
            FileKind::Stream => "streams",
        }
    }

    /// The path of a file of this kind relative to the repository root.
    pub fn path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            FileKind::Pack => format!("data/{}/{}", name.get(..2).unwrap_or("00"), name),
            k => format!("{}/{}", k.dir(), name),
        }
    }
}

/// How [`Backend::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any existing object.
    Overwrite,
    /// Fail with [`BackendError::AlreadyExists`] if the object exists.
    CreateNew,
}

/// One file found by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The file's name within its kind (for packs, without the `xx/` fan-out).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time reported by the store.
    pub modified: chrono::DateTime<chrono::Utc>,
}

impl Listed {
    /// The name as an id (every name but `config`, epoch numbers and WAL
    /// objects is 64 hex characters).
    pub fn id(&self) -> Option<crate::id::Id> {
        crate::id::Id::from_hex(&self.name)
    }
}

/// A storage failure, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The object does not exist.
    #[error("{path}: not found in the repository")]
    NotFound {
        /// Object path relative to the repository root.
        path: String,
    },
    /// A create-only put found the object already there.
    #[error("{path}: already exists")]
    AlreadyExists {
        /// Object path relative to the repository root.
        path: String,
    },
    /// The operation did not finish in time.
    #[error("{op} {path}: timed out after {secs} s (is the storage reachable?)")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Object path relative to the repository root.
        path: String,
        /// The limit that was hit.
        secs: u64,
    },
    /// Any other storage error.
    #[error("{op} {path}: {message}")]
    Other {
        /// The operation.
        op: &'static str,
        /// Object path relative to the repository root.
        path: String,
        /// What the store said.
        message: String,
    },
}

impl BackendError {
    /// True for [`BackendError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// What the repository needs from storage. Every write is of a whole object:
/// a reader sees either nothing or the complete object.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A printable location (URL without credentials).
    fn location(&self) -> String;
    /// Stores a complete object.
    fn put(&self, kind: FileKind, name: &str, data: Bytes, mode: PutMode) -> BoxFuture<'_, BackendResult<()>>;
    /// Reads a whole object.
    fn get(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<Bytes>>;
    /// As [`Backend::get`], for a caller on a thread of its own, which may
    /// block: a local file is read on the thread that polls the future
    /// instead of on the runtime's blocking pool. Other stores read as
    /// `get` does.
    fn get_here(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<Bytes>> {
        self.get(kind, name)
    }
    /// Reads a byte range of an object.
    fn get_range(&self, kind: FileKind, name: &str, range: Range<u64>) -> BoxFuture<'_, BackendResult<Bytes>>;
    /// As [`Backend::get_range`], for a caller on a thread of its own,
    /// which may block: a local file is read on the thread that polls the
    /// future, whatever the range's size, instead of on the runtime's
    /// blocking pool. Other stores read as `get_range` does.
    fn get_range_here(&self, kind: FileKind, name: &str, range: Range<u64>) -> BoxFuture<'_, BackendResult<Bytes>> {
        self.get_range(kind, name, range)
    }
    /// Lists the objects of a kind.
    fn list(&self, kind: FileKind) -> BoxFuture<'_, BackendResult<Vec<Listed>>>;
    /// Lists the objects of a kind whose name (as [`Backend::list`] gives
    /// it, relative to the kind) starts with `prefix`, which need not end at
    /// a `/`: `<owner>/<stream>/<key>@` finds one stream item. A store that
    /// can list by a raw key prefix asks it for just those; the default
    /// lists the whole kind and filters (correct, but as slow as the kind
    /// is large: implementations override it).
    fn list_prefix(&self, kind: FileKind, prefix: &str) -> BoxFuture<'_, BackendResult<Vec<Listed>>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let mut all = self.list(kind).await?;
            all.retain(|l| l.name.starts_with(&prefix));
            Ok(all)
        })
    }
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<()>>;
    /// For a repository on local disk: a directory on the same file system
    /// as the objects of `kind`, where a new object can be written as it is
    /// made and then moved into place with [`Backend::put_spooled`], instead
    /// of being held in memory whole. `None` (the default) for object
    /// stores.
    fn spool_dir(&self, kind: FileKind) -> Option<std::path::PathBuf> {
        let _ = kind;
        None
    }
    /// Stores the complete file `file` (written in [`Backend::spool_dir`])
    /// as the object `name` of `kind`, replacing any object of that name;
    /// durable on return. A local repository moves the file; the default
    /// reads it and stores it with [`Backend::put`]. The caller removes
    /// `file` if this fails.
    fn put_spooled(&self, kind: FileKind, name: &str, file: std::path::PathBuf) -> BoxFuture<'_, BackendResult<()>> {
        let name = name.to_string();
        Box::pin(async move { put_contents(self, kind, &name, &file).await })
    }
    /// Removes half-written staging files older than `older_than` that a
    /// killed writer left behind (local disk only: object stores write
    /// objects whole). Returns how many were removed.
    fn remove_stale_staging(&self, older_than: std::time::Duration) -> BoxFuture<'_, BackendResult<usize>> {
        let _ = older_than;
        Box::pin(async { Ok(0) })
    }
}

/// [`Backend::put_spooled`] by reading the file and storing its bytes with
/// [`Backend::put`], for stores that cannot take a file in.
pub(crate) async fn put_contents<B: Backend + ?Sized>(
    backend: &B,
    kind: FileKind,
    name: &str,
    file: &std::path::Path,
) -> BackendResult<()> {
    let data = tokio::fs::read(file).await.map_err(|e| BackendError::Other {
        op: "read",
        path: file.display().to_string(),
        message: e.to_string(),
    })?;
    backend.put(kind, name, Bytes::from(data), PutMode::Overwrite).await?;
    let _ = tokio::fs::remove_file(file).await;
    Ok(())
}

/// A shared backend.
pub type DynBackend = Arc<dyn Backend>;
