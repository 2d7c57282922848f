//! The on-disk formats, one module per kind of file. `docs/format.md`
//! describes every field.

pub mod config;
pub mod epoch;
pub mod index;
pub mod keycache;
pub mod keyfile;
pub mod pack;
pub mod snapshot;
pub mod stream;
pub mod tree;
pub mod wal;

/// Associated data binding a sealed file to its kind, so one kind of file
/// cannot be substituted for another.
pub mod aad {
    /// Index files.
    pub const INDEX: &[u8] = b"coffer index v1";
    /// Snapshot manifests.
    pub const SNAPSHOT: &[u8] = b"coffer snapshot v1";
    /// Pack headers.
    pub const PACK_HEADER: &[u8] = b"coffer pack header v1";
    /// Prune markers.
    pub const PRUNE_MARKER: &[u8] = b"coffer prune marker v1";
    /// Backup session markers.
    pub const SESSION: &[u8] = b"coffer session v1";
    /// Exclusive maintenance leases.
    pub const LEASE: &[u8] = b"coffer lease v1";
    /// WAL archive objects.
    pub const WAL: &[u8] = b"coffer wal v1";
    /// Stream items.
    pub const STREAM_ITEM: &[u8] = b"coffer stream item v1";
    /// Stream checkpoints.
    pub const STREAM_CHECKPOINT: &[u8] = b"coffer stream checkpoint v1";
}
