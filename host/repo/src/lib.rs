//! coffer-repo: the repository behind coffer.
//!
//! A repository is a set of immutable, content-addressed files on local disk
//! or an object store: packs of deduplicated, compressed and encrypted blobs,
//! index files that locate blobs in packs, snapshot manifests, key files and
//! one config. See `docs/format.md` for every byte. This crate has no
//! WebAssembly in it: the plugin runtime drives it through [`SnapshotWriter`],
//! [`StreamWriter`] (plugin-owned streams) and the read API of [`Repository`].

pub mod backend;
pub mod blob;
pub mod chunker;
pub mod commands;
pub mod crypto;
pub mod error;
pub mod id;
pub mod index;
pub mod packer;
pub mod repofile;
pub mod repository;
pub mod shares;

pub use backend::{Backend, BackendOptions, DynBackend, FileKind, ObjectBackend};
pub use commands::check::{CheckReport, ReadData};
pub use commands::diff::{SnapshotDiff, diff};
pub use commands::epoch::EpochInfo;
pub use commands::forget::{Decision, ForgetReport, GroupPlan, KeepPolicy, StreamRetention};
pub use commands::prune::{PruneOptions, PruneReport};
pub use commands::read::{EntryReader, Snapshot};
pub use commands::repair::{RepairReport, SnapshotRepairReport};
pub use commands::snapshot::{
    EntryAdder, EntryDigest, EntryMeta, EntryWriter, SnapshotOptions, SnapshotWriter, SourceIssue,
};
pub use commands::stream::{ItemOutcome, ItemWriter, StreamItem, StreamItemListing, StreamItemReader, StreamWriter};
pub use commands::wal::WalListing;
pub use crypto::MasterSecret;
pub use error::{Error, Result};
pub use id::Id;
pub use repofile::keycache::KeyCache;
pub use repofile::keyfile::KdfParams;
pub use repofile::snapshot::{BackupKind, PluginIdentity, SnapshotManifest, SnapshotSummary, holds_secret};
pub use repofile::stream::{StreamCheckpoint, StreamNeed, StreamOwner};
pub use repofile::tree::{Entry, EntryKind};
pub use repofile::wal::WalObject;
pub use repository::{InitOptions, Repository, backend_for};
