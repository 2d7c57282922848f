//! Writing a snapshot: [`SnapshotWriter`] and [`EntryWriter`].
//!
//! Commit order makes a crash at any point safe: packs, then the index file
//! naming them, then the manifest. Until the manifest is written no snapshot
//! is visible; packs and index entries left by a failed backup are
//! unreferenced data that the next prune removes.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::backend::FileKind;
use crate::blob::BlobKind;
use crate::chunker::StreamChunker;
use crate::commands::entry_list::EntryList;
use crate::commands::read::Snapshot;
use crate::commands::session::Session;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::packer::BlobSaver;
use crate::repofile::aad;
use crate::repofile::config::STREAM_FORMAT_VERSION;
use crate::repofile::index::IndexFile;
use crate::repofile::snapshot::{
    BackupKind, MANIFEST_VERSION, MANIFEST_VERSION_BEFORE_STREAMS, PluginIdentity, SnapshotManifest, SnapshotSummary,
    redact_config,
};
use crate::repofile::stream::{StreamNeed, StreamOwner, valid_stream};
use crate::repofile::tree::{Entry, EntryKind, validate_path};
use crate::repository::Repository;

/// Write an index file after this many packs, so a long backup that dies
/// leaves most of its data indexed (and deduplicable by the next run).
const INDEX_EVERY_PACKS: usize = 64;

/// What a snapshot is about.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Tenant (`default` if empty).
    pub tenant: String,
    /// Source name.
    pub source: String,
    /// The producing plugin.
    pub plugin: PluginIdentity,
    /// Plugin config; secrets are redacted before it is stored.
    pub config: serde_json::Value,
    /// Parent snapshot whose entries may be reused.
    pub parent: Option<Id>,
    /// Full, incremental or differential.
    pub kind: BackupKind,
    /// Tags.
    pub tags: Vec<String>,
}

/// Metadata of a new entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Relative `/`-separated path.
    pub path: String,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Symlink target.
    pub target: Option<String>,
}

/// What finishing a directory or symlink gives: it has no content.
const NO_CONTENT: EntryDigest = EntryDigest { size: 0, blake3: Id([0; 32]) };

/// Size and BLAKE3 of a finished entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryDigest {
    /// Bytes written.
    pub size: u64,
    /// Plain BLAKE3 of the content.
    pub blake3: Id,
}

/// Something the source could not take as it was, counted in the
/// snapshot's summary ([`SnapshotSummary::left_out`] and the two after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceIssue {
    /// A file or directory left out: a name that is not UTF-8, permission
    /// denied, an I/O error.
    LeftOut,
    /// A file or directory that vanished while the backup ran.
    Vanished,
    /// A file whose size or modification time changed while it was read.
    ChangedWhileRead,
}

/// How many of each [`SourceIssue`] a snapshot met.
#[derive(Debug, Clone, Copy, Default)]
struct IssueCounts {
    left_out: u64,
    vanished: u64,
    changed_while_read: u64,
}

struct WriterState {
    entries: EntryList,
    /// Every path added so far, as [`path_key`]s.
    paths: HashSet<[u8; 16]>,
    attributes: BTreeMap<String, String>,
    reused: u64,
    bytes_read: u64,
    /// [`SourceIssue`]s counted so far.
    issues: IssueCounts,
    /// Stream needs declared so far: the lowest position per stream.
    needs: BTreeMap<(StreamOwner, String), u64>,
    failed: Option<String>,
}

pub(crate) struct WriterShared {
    repo: Repository,
    index: Arc<MasterIndex>,
    pending: Mutex<HashSet<Id>>,
    saver: BlobSaver,
    state: Mutex<WriterState>,
    open_writers: AtomicUsize,
    pending_packs: Mutex<Vec<crate::repofile::index::IndexedPack>>,
}

impl WriterShared {
    /// Stores a chunk unless it is already in the repository or this session.
    async fn store(&self, kind: BlobKind, data: Bytes) -> Result<Id> {
        let (id, new) = self.claim(&data);
        if new {
            self.saver.save(kind, id, data).await?;
        }
        Ok(id)
    }

    /// As [`Self::store`], from a thread outside the async runtime, which
    /// compresses and seals the chunk itself ([`BlobSaver::save_here`]).
    fn store_here(&self, kind: BlobKind, data: &[u8]) -> Result<Id> {
        let (id, new) = self.claim(data);
        if new {
            self.saver.save_here(kind, id, data)?;
        }
        Ok(id)
    }

    /// The chunk's id, and whether it is new: in neither the repository
    /// nor this session (it is then this session's from now on).
    fn claim(&self, data: &[u8]) -> (Id, bool) {
        let id = self.repo.keys.chunk_id(data);
        let new = !self.index.contains_usable(&id) && self.pending.lock().expect("pending lock").insert(id);
        (id, new)
    }

    fn check_failed(&self) -> Result<()> {
        match &self.state.lock().expect("state lock").failed {
            Some(e) => Err(Error::Aborted(e.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, e: &Error) {
        let mut s = self.state.lock().expect("state lock");
        if s.failed.is_none() {
            s.failed = Some(e.to_string());
        }
    }

    /// Writes an index file once [`INDEX_EVERY_PACKS`] uploaded packs are
    /// waiting for one.
    async fn checkpoint(&self) -> Result<()> {
        let packs = {
            let mut pending = self.pending_packs.lock().expect("packs lock");
            pending.extend(self.saver.take_uploaded());
            if pending.len() < INDEX_EVERY_PACKS {
                return Ok(());
            }
            std::mem::take(&mut *pending)
        };
        // Never index packs under an epoch that was retired meanwhile (only
        // possible if this session's marker went stale): nobody could read them.
        let written = match self.repo.check_epoch_held(self.saver.epoch()).await {
            Ok(()) => self.repo.write_index_file(&IndexFile { supersedes: vec![], packs: packs.clone() }).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Keep them for the final index (or for cleanup on abort).
            self.pending_packs.lock().expect("packs lock").extend(packs);
            self.fail(&e);
            return Err(e);
        }
        Ok(())
    }

    /// After a failure: stops the saver and deletes the packs that no index
    /// file names (nobody else can have seen them).
    async fn discard_unindexed(&self) {
        let mut orphans = self.saver.abort().await;
        orphans.extend(std::mem::take(&mut *self.pending_packs.lock().expect("packs lock")));
        for p in orphans {
            let _ = self.repo.backend.delete(FileKind::Pack, &p.id.to_hex()).await;
        }
    }
}

/// Builds one snapshot. Nothing is visible until [`SnapshotWriter::commit`].
pub struct SnapshotWriter {
    shared: Arc<WriterShared>,
    opts: SnapshotOptions,
    /// The parent snapshot, shared with whoever else reads it (the plugin's
    /// parent reader), and where the last lookup in it found its entry.
    parent: Option<Arc<Snapshot>>,
    parent_hint: AtomicUsize,
    session: Option<Session>,
    started: chrono::DateTime<chrono::Utc>,
    epoch: u32,
}

impl Repository {
    /// Starts a snapshot.
    pub async fn start_snapshot(&self, opts: SnapshotOptions) -> Result<SnapshotWriter> {
        if opts.source.is_empty() {
            return Err(Error::Invalid("a snapshot needs a source name".into()));
        }
        let started = chrono::Utc::now();
        // The session marker goes first so that a prune running now sees us
        // before we load the index (see session.rs). It names the plugin's
        // stream owner: stream retention leaves those streams alone while
        // this backup may still declare needs on them.
        let owner = StreamOwner::of(&opts.plugin).map(|o| o.to_string()).unwrap_or_default();
        let session = Session::start_for(self, crate::commands::session::PURPOSE_BACKUP, &owner).await?;
        let loaded = async {
            // The keyring is read after the session marker is written: an
            // epoch retired later is never one this backup writes under
            // (see `Repository::retire_epochs`).
            let keyring = self.load_keyring().await?;
            let data_key = crate::commands::epoch::writable_key(&keyring)?;
            let index = self.load_index().await?;
            let parent = match opts.parent {
                Some(pid) => Some(Arc::new(self.open_snapshot(&pid).await?)),
                None => None,
            };
            Ok::<_, Error>((data_key, index, parent))
        }
        .await;
        let (data_key, index, parent) = match loaded {
            Ok(v) => v,
            Err(e) => {
                session.end().await;
                return Err(e);
            }
        };
        let epoch = data_key.epoch();
        let saver = BlobSaver::new(
            data_key,
            self.config.compression,
            Arc::clone(&self.backend),
            self.config.pack_size as usize,
        );
        Ok(SnapshotWriter {
            shared: Arc::new(WriterShared {
                repo: self.clone(),
                index,
                pending: Mutex::new(HashSet::new()),
                saver,
                state: Mutex::new(WriterState {
                    entries: EntryList::default(),
                    paths: HashSet::new(),
                    attributes: BTreeMap::new(),
                    reused: 0,
                    bytes_read: 0,
                    issues: IssueCounts::default(),
                    needs: BTreeMap::new(),
                    failed: None,
                }),
                open_writers: AtomicUsize::new(0),
                pending_packs: Mutex::new(Vec::new()),
            }),
            opts,
            parent,
            parent_hint: AtomicUsize::new(0),
            session: Some(session),
            started,
            epoch,
        })
    }
}

impl WriterShared {
    fn claim_path(&self, path: &str) -> Result<()> {
        validate_path(path).map_err(|reason| Error::InvalidEntry { path: path.to_string(), reason })?;
        let mut s = self.state.lock().expect("state lock");
        if !s.paths.insert(path_key(path)) {
            return Err(Error::InvalidEntry { path: path.to_string(), reason: "added twice".into() });
        }
        Ok(())
    }

    fn add_entry(self: &Arc<Self>, meta: EntryMeta) -> Result<EntryWriter> {
        self.check_failed()?;
        if meta.kind == EntryKind::Symlink && meta.target.as_deref().is_none_or(str::is_empty) {
            return Err(Error::InvalidEntry { path: meta.path, reason: "a symlink needs a target".into() });
        }
        self.claim_path(&meta.path)?;
        let entry = Entry {
            path: meta.path,
            kind: meta.kind,
            mode: meta.mode,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            size: 0,
            target: if meta.kind == EntryKind::Symlink { meta.target } else { None },
            content: Vec::new(),
            blake3: None,
        };
        if entry.kind == EntryKind::File {
            self.open_writers.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.lock().expect("state lock").entries.push(&entry);
        }
        Ok(EntryWriter {
            shared: Arc::clone(self),
            chunker: StreamChunker::new(self.repo.chunker.clone()),
            hasher: blake3::Hasher::new(),
            entry,
            done: false,
        })
    }
}

/// Adds entries to a snapshot from other threads: a cheap handle on the
/// [`SnapshotWriter`] that can be cloned and sent, for hosts that read
/// several files at once. Committing stays with the writer.
#[derive(Clone)]
pub struct EntryAdder {
    shared: Arc<WriterShared>,
}

impl EntryAdder {
    /// As [`SnapshotWriter::add_entry`].
    pub fn add_entry(&self, meta: EntryMeta) -> Result<EntryWriter> {
        self.shared.add_entry(meta)
    }
}

impl SnapshotWriter {
    /// Adds an entry. For a file, write its content through the returned
    /// writer and call [`EntryWriter::finish`]; directories and symlinks are
    /// complete at once (their writer accepts no data).
    pub fn add_entry(&self, meta: EntryMeta) -> Result<EntryWriter> {
        self.shared.add_entry(meta)
    }

    /// A handle that adds entries from other threads.
    pub fn adder(&self) -> EntryAdder {
        EntryAdder { shared: Arc::clone(&self.shared) }
    }

    /// Keeps `path` exactly as it is in the parent snapshot, without reading
    /// its data. Fails if there is no parent, the parent has no such entry, or
    /// its data is no longer available (the caller then reads it afresh).
    pub fn reuse_entry(&self, path: &str) -> Result<EntryDigest> {
        if self.parent.is_none() {
            return Err(Error::CannotReuse { path: path.into(), reason: "the snapshot has no parent".into() });
        }
        let Some(entry) = self.parent_entry(path) else {
            return Err(Error::CannotReuse { path: path.into(), reason: "the parent has no such entry".into() });
        };
        self.keep(path, entry)
    }

    /// Adds the parent's `entry` at `path` to this snapshot, if its data is
    /// all still available.
    fn keep(&self, path: &str, entry: &Entry) -> Result<EntryDigest> {
        self.shared.check_failed()?;
        if let Some(missing) = entry.content.iter().find(|id| !self.shared.index.contains_usable(id)) {
            return Err(Error::CannotReuse {
                path: path.into(),
                reason: format!("data blob {} is no longer available", missing.short()),
            });
        }
        self.shared.claim_path(path)?;
        let mut s = self.shared.state.lock().expect("state lock");
        s.entries.push(entry);
        s.reused += 1;
        Ok(EntryDigest { size: entry.size, blake3: entry.blake3.unwrap_or_default() })
    }

    /// Keeps the parent's file at `path` when it is a file there with this
    /// size, modification time and permission bits, as [`Self::reuse_entry`]
    /// does. `Ok(false)` when there is no parent, no such file, it changed,
    /// or its data is no longer available: the caller then reads it afresh.
    pub fn reuse_unchanged(&self, path: &str, size: u64, mtime: (i64, u32), mode: u32) -> Result<bool> {
        let Some(entry) = self.parent_entry(path).filter(|p| {
            p.kind == EntryKind::File
                && p.size == size
                && (p.mtime, p.mtime_nsec) == mtime
                && p.mode & 0o7777 == mode & 0o7777
        }) else {
            return Ok(false);
        };
        match self.keep(path, entry) {
            Ok(_) => Ok(true),
            Err(Error::CannotReuse { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The parent's entry at `path`, if any (for size+mtime change detection).
    ///
    /// A tree walk asks in nearly path order, so the entries just after the
    /// last one found are tried before a binary search.
    pub fn parent_entry(&self, path: &str) -> Option<&Entry> {
        let entries = &self.parent.as_ref()?.entries;
        let hint = self.parent_hint.load(Ordering::Relaxed);
        let i = match (hint..entries.len().min(hint + 3)).find(|i| entries[*i].path == path) {
            Some(i) => i,
            None => entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok()?,
        };
        self.parent_hint.store(i + 1, Ordering::Relaxed);
        Some(&entries[i])
    }

    /// The parent snapshot, as loaded when the snapshot started.
    pub fn parent(&self) -> Option<&Arc<Snapshot>> {
        self.parent.as_ref()
    }

    /// Counts a file or directory the source could not take as it was;
    /// the counts go into the summary at commit.
    pub fn count_issue(&self, issue: SourceIssue) {
        let counts = &mut self.shared.state.lock().expect("state lock").issues;
        *match issue {
            SourceIssue::LeftOut => &mut counts.left_out,
            SourceIssue::Vanished => &mut counts.vanished,
            SourceIssue::ChangedWhileRead => &mut counts.changed_while_read,
        } += 1;
    }

    /// Records that the snapshot needs the items of `owner`'s `stream` from
    /// position `from` on (to recover to a point after the snapshot). The
    /// runtime passes the writing plugin's own owner
    /// ([`StreamOwner::of`] its identity), never one the plugin names. Of
    /// several needs on one stream the lowest `from` is kept. The manifest
    /// records them ([`SnapshotManifest::streams`]); while the snapshot
    /// remains, stream retention keeps every item from there on.
    pub fn need_stream(&self, owner: StreamOwner, stream: &str, from: u64) -> Result<()> {
        valid_stream(stream).map_err(Error::Invalid)?;
        let mut s = self.shared.state.lock().expect("state lock");
        let slot = s.needs.entry((owner, stream.to_string())).or_insert(from);
        *slot = (*slot).min(from);
        Ok(())
    }

    /// Sets a source attribute (replacing an earlier value).
    pub fn set_attribute(&self, key: &str, value: &str) {
        self.shared.state.lock().expect("state lock").attributes.insert(key.to_string(), value.to_string());
    }

    /// Writes the tree, the index and the manifest. Returns the snapshot id.
    pub async fn commit(mut self) -> Result<Id> {
        match self.commit_inner().await {
            Ok(id) => {
                if let Some(s) = self.session.take() {
                    s.end().await;
                }
                Ok(id)
            }
            Err(e) => {
                self.shared.fail(&e);
                self.shared.discard_unindexed().await;
                if let Some(s) = self.session.take() {
                    s.end().await;
                }
                Err(e)
            }
        }
    }

    async fn commit_inner(&mut self) -> Result<Id> {
        self.shared.check_failed()?;
        let open = self.shared.open_writers.load(Ordering::SeqCst);
        if open > 0 {
            return Err(Error::Invalid(format!(
                "{open} entry writers are still open: finish every entry before committing"
            )));
        }
        // The parent's entries are not needed past here: freed before the
        // new ones are unpacked (if no one else holds them).
        self.parent = None;
        let (entries, attributes, reused, bytes_read, issues, needs) = {
            let mut s = self.shared.state.lock().expect("state lock");
            // No entry comes after this: the set of paths can go.
            s.paths = HashSet::new();
            let needs = std::mem::take(&mut s.needs);
            (std::mem::take(&mut s.entries), s.attributes.clone(), s.reused, s.bytes_read, s.issues, needs)
        };
        let streams: Vec<StreamNeed> =
            needs.into_iter().map(|((owner, stream), from)| StreamNeed { owner, stream, from }).collect();
        let counts = entries.counts();
        let mut summary = SnapshotSummary {
            entries: counts.entries,
            files: counts.files,
            dirs: counts.dirs,
            symlinks: counts.symlinks,
            bytes: counts.bytes,
            reused_entries: reused,
            bytes_read,
            left_out: issues.left_out,
            vanished: issues.vanished,
            changed_while_read: issues.changed_while_read,
            started: self.started,
            ..Default::default()
        };
        let (encoded, order) = entries.into_sorted().map_err(Error::Aborted)?;
        let tree = self.store_tree(encoded, order).await?;
        let shared = Arc::clone(&self.shared);
        let saver = &shared.saver;
        let last = saver.finish().await?;
        let mut packs = std::mem::take(&mut *shared.pending_packs.lock().expect("packs lock"));
        packs.extend(last);
        if !packs.is_empty() {
            shared.repo.check_epoch_held(self.epoch).await?;
            shared.repo.write_index_file(&IndexFile { supersedes: vec![], packs }).await?;
        }
        summary.new_blobs = saver.stats().blobs.load(Ordering::Relaxed);
        summary.new_bytes = saver.stats().raw_bytes.load(Ordering::Relaxed);
        summary.stored_bytes = saver.stats().stored_bytes.load(Ordering::Relaxed);
        summary.new_packs = saver.stats().packs.load(Ordering::Relaxed);
        summary.finished = chrono::Utc::now();
        // A manifest that declares needs is version 2, which builds that do
        // not know streams must refuse: the repository is raised to format
        // 4 first. In a repository at 4 every manifest is version 2 (an
        // empty list then means "needs nothing"); below it, a manifest that
        // needs nothing stays readable by older builds.
        if !streams.is_empty() {
            shared.repo.require_version(STREAM_FORMAT_VERSION).await?;
        }
        let stored = if !streams.is_empty() || shared.repo.config.version >= STREAM_FORMAT_VERSION {
            STREAM_FORMAT_VERSION
        } else {
            // Another writer (or this process) may have raised it since it was opened.
            crate::repository::Repository::read_config(&shared.repo.backend).await?.version
        };
        let version = if stored >= STREAM_FORMAT_VERSION { MANIFEST_VERSION } else { MANIFEST_VERSION_BEFORE_STREAMS };
        let manifest = SnapshotManifest {
            version,
            time: self.started,
            tenant: if self.opts.tenant.is_empty() { "default".into() } else { self.opts.tenant.clone() },
            source: self.opts.source.clone(),
            hostname: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
            plugin: self.opts.plugin.clone(),
            config: redact_config(&self.opts.config),
            kind: self.opts.kind,
            parent: self.opts.parent,
            tags: self.opts.tags.clone(),
            attributes,
            tree,
            summary,
            streams,
        };
        let body = serde_json::to_vec(&manifest).expect("manifest serializes");
        if let Some(session) = &self.session {
            session.check_alive()?;
        }
        shared.repo.check_epoch_held(self.epoch).await?;
        shared.repo.write_sealed(FileKind::Snapshot, aad::SNAPSHOT, &body).await
    }

    /// Stores the entries as tree blobs and returns their ids in order: the
    /// encoded entries at `order` (ranges of `encoded`, in path order) are
    /// the tree stream, cut as it goes. On a thread of its own, which
    /// compresses and seals the tree chunks itself, straight from the
    /// chunker's window, as the threads reading files do.
    async fn store_tree(&self, encoded: Vec<u8>, order: Vec<Range<usize>>) -> Result<Vec<Id>> {
        const PIECE: usize = 64 * 1024;
        let shared = Arc::clone(&self.shared);
        let stored = tokio::task::spawn_blocking(move || {
            let mut chunker = StreamChunker::new(shared.repo.chunker.clone());
            let mut piece = Vec::with_capacity(PIECE + 4096);
            let mut tree = Vec::new();
            let mut store = |chunk: &[u8]| -> Result<()> {
                tree.push(shared.store_here(BlobKind::Tree, chunk)?);
                Ok(())
            };
            for range in order {
                piece.extend_from_slice(&encoded[range]);
                if piece.len() >= PIECE {
                    chunker.append(&piece);
                    piece.clear();
                    chunker.take_final(&mut store)?;
                }
            }
            chunker.append(&piece);
            chunker.take_final(&mut store)?;
            chunker.take_rest(&mut store)?;
            Ok(tree)
        })
        .await;
        stored.map_err(|e| Error::Aborted(format!("storing the tree: {e}")))?
    }

    /// Abandons the snapshot. Packs already uploaded but not yet named in an
    /// index file are deleted; nothing becomes visible.
    pub async fn abort(mut self) {
        self.shared.fail(&Error::Aborted("aborted by the caller".into()));
        self.shared.discard_unindexed().await;
        if let Some(s) = self.session.take() {
            s.end().await;
        }
    }
}

/// Streams one entry's content into the repository.
pub struct EntryWriter {
    shared: Arc<WriterShared>,
    chunker: StreamChunker,
    hasher: blake3::Hasher,
    entry: Entry,
    done: bool,
}

impl EntryWriter {
    /// The entry's path.
    pub fn path(&self) -> &str {
        &self.entry.path
    }

    /// Content bytes written so far.
    pub fn size(&self) -> u64 {
        self.entry.size
    }

    /// Appends content.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in self.push(data)? {
            let stored = self.shared.store(BlobKind::Data, chunk).await;
            self.stored(stored)?;
        }
        Ok(())
    }

    /// As [`Self::write`], from a thread outside the async runtime (one of
    /// several threads reading files): new chunks are compressed and sealed
    /// on this thread, straight from the chunker's window.
    pub fn write_here(&mut self, data: &[u8]) -> Result<()> {
        self.admit(data)?;
        self.chunker.append(data);
        self.store_here(false)
    }

    /// Stores the chunks the window holds that are final (or, at the end
    /// of the content, all of them) on this thread, straight from the
    /// window; a failure fails the snapshot.
    fn store_here(&mut self, at_end: bool) -> Result<()> {
        let (shared, content) = (&self.shared, &mut self.entry.content);
        let store = |chunk: &[u8]| {
            content.push(shared.store_here(BlobKind::Data, chunk)?);
            Ok(())
        };
        let taken = if at_end { self.chunker.take_rest(store) } else { self.chunker.take_final(store) };
        if let Err(e) = &taken {
            self.shared.fail(e);
        }
        taken
    }

    /// Hashes and counts `data` and returns the chunks it completes.
    fn push(&mut self, data: &[u8]) -> Result<Vec<Bytes>> {
        self.admit(data)?;
        Ok(self.chunker.push(data))
    }

    /// Checks that `data` may be written, then hashes and counts it.
    fn admit(&mut self, data: &[u8]) -> Result<()> {
        if self.entry.kind != EntryKind::File {
            return Err(Error::InvalidEntry {
                path: self.entry.path.clone(),
                reason: "only files have content".into(),
            });
        }
        self.shared.check_failed()?;
        self.hasher.update(data);
        self.entry.size += data.len() as u64;
        Ok(())
    }

    /// Records a stored chunk, or fails the snapshot.
    fn stored(&mut self, stored: Result<Id>) -> Result<()> {
        match stored {
            Ok(id) => {
                self.entry.content.push(id);
                Ok(())
            }
            Err(e) => {
                self.shared.fail(&e);
                Err(e)
            }
        }
    }

    /// Completes the entry.
    pub async fn finish(mut self) -> Result<EntryDigest> {
        let Some(last) = self.last_chunks() else { return Ok(NO_CONTENT) };
        for chunk in last {
            let stored = self.shared.store(BlobKind::Data, chunk).await;
            self.stored(stored)?;
        }
        let digest = self.complete();
        self.shared.checkpoint().await?;
        Ok(digest)
    }

    /// As [`Self::finish`], from a thread outside the async runtime (see
    /// [`Self::write_here`]).
    pub fn finish_here(mut self) -> Result<EntryDigest> {
        if self.entry.kind != EntryKind::File {
            self.done = true;
            return Ok(NO_CONTENT);
        }
        self.store_here(true)?;
        let digest = self.complete();
        let shared = Arc::clone(&self.shared);
        shared.saver.runtime().block_on(shared.checkpoint())?;
        Ok(digest)
    }

    /// Leaves the entry out of the snapshot, which goes on without it: for a
    /// file whose content could not be read to its end (an I/O error
    /// halfway). Chunks already stored stay in their packs, unreferenced
    /// unless another file holds the same bytes, until a prune. Dropping an
    /// unfinished writer instead fails the whole snapshot.
    pub fn discard(mut self) {
        self.done = true;
        // Directories and symlinks are in the snapshot from the start.
        if self.entry.kind == EntryKind::File {
            self.shared.open_writers.fetch_sub(1, Ordering::SeqCst);
            self.shared.state.lock().expect("state lock").paths.remove(&path_key(&self.entry.path));
        }
    }

    /// A file's last chunks, or `None` for a directory or symlink, which is
    /// complete from the start (its writer is then done).
    fn last_chunks(&mut self) -> Option<Vec<Bytes>> {
        if self.entry.kind != EntryKind::File {
            self.done = true;
            return None;
        }
        Some(self.chunker.finish())
    }

    /// Adds the finished file's entry to the snapshot.
    fn complete(&mut self) -> EntryDigest {
        self.done = true;
        let digest = EntryDigest { size: self.entry.size, blake3: Id(*self.hasher.finalize().as_bytes()) };
        self.entry.blake3 = Some(digest.blake3);
        {
            let mut s = self.shared.state.lock().expect("state lock");
            s.bytes_read += self.entry.size;
            s.entries.push(&self.entry);
        }
        self.shared.open_writers.fetch_sub(1, Ordering::SeqCst);
        digest
    }
}

/// A path's key in the set of paths added: 128 bits of its BLAKE3 hash
/// instead of a second copy of the string (a snapshot of 100,000 files held
/// about 8 MiB of copies). Two paths share a key with a probability far
/// below that of two chunks sharing an id.
fn path_key(path: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    key.copy_from_slice(&blake3::hash(path.as_bytes()).as_bytes()[..16]);
    key
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if !self.done && self.entry.kind == EntryKind::File {
            self.shared.open_writers.fetch_sub(1, Ordering::SeqCst);
            // An entry dropped half-written makes the snapshot incomplete.
            self.shared.fail(&Error::InvalidEntry {
                path: self.entry.path.clone(),
                reason: "its writer was dropped before finish()".into(),
            });
        }
    }
}
