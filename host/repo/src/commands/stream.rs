//! Plugin-owned streams: items pushed, listed, read and fetched, the
//! per-stream checkpoint and lease, and the legacy WAL archive read as the
//! built-in postgres plugin's streams.
//!
//! An item's content is chunked and stored like backup data (deduplicated
//! against everything in the repository, in packs under the current key
//! epoch), then described by one `streams/<owner>/<stream>/<key>@<position>-<u|p>`
//! object. The write order is a backup's: session marker, packs, index file,
//! then the object (the commit point, written create-only). A key is stored
//! once: an identical re-push succeeds without writing, anything else under
//! a stored key is refused. The host never interprets content, positions or
//! checkpoint state: they are the plugin's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::backend::{BackendError, FileKind, Listed, PutMode};
use crate::blob::BlobKind;
use crate::chunker::StreamChunker;
use crate::commands::check::CheckReport;
use crate::commands::lease::{Lease, LeaseScope};
use crate::commands::read::{EntryReader, READ_AHEAD};
use crate::commands::session::{PURPOSE_STREAM, Session};
use crate::crypto::DataKey;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::packer::BlobSaver;
use crate::repofile::aad;
use crate::repofile::config::STREAM_FORMAT_VERSION;
use crate::repofile::index::{ChunkPlace, IndexFile, IndexedPack};
use crate::repofile::snapshot::PluginIdentity;
use crate::repofile::stream::{
    MAX_CHECKPOINT_STATE, StreamCheckpoint, StreamItemObject, StreamObjectName, StreamOwner, checkpoint_object_name,
    item_object_name, key_prefix, parse_object_name, stream_prefix, valid_key, valid_stream,
};
use crate::repofile::wal::WalObject;
use crate::repository::Repository;

/// A stream writer starts a new session (and reloads the index) before an
/// item once its session is this old, so that its session never holds a
/// prune's sweep back for long: a follower runs for days, and prune deletes
/// a marked pack only once every session that began before the marker
/// (plus 10 minutes) has ended.
pub const SESSION_ROLL: Duration = Duration::from_secs(10 * 60);

/// An item's content is hashed and chunked this much at a time.
const WRITE_PIECE: usize = 1 << 20;

/// One item as listed (from its object's name, without reading it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamItemListing {
    /// The item's key.
    pub key: String,
    /// Its position; `None` for a legacy WAL archive file, whose position
    /// only its plugin can compute (from the key).
    pub position: Option<u64>,
    /// Pinned items are never removed by retention.
    pub pinned: bool,
    /// Bytes of the stored object (the description, not the content).
    pub stored_size: u64,
    /// When the store last wrote the object.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// One item as read from its object: a stream item, or a legacy WAL
/// archive file read as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamItem {
    /// The stream's owner.
    pub owner: StreamOwner,
    /// The stream.
    pub stream: String,
    /// The key.
    pub key: String,
    /// The position (`None` for a legacy WAL archive file).
    pub position: Option<u64>,
    /// Never removed by retention.
    pub pinned: bool,
    /// Bytes of content.
    pub size: u64,
    /// Plain BLAKE3 of the content, hex.
    pub blake3: String,
    /// Data blob ids of the content's chunks, in order.
    #[serde(skip)]
    pub chunks: Vec<Id>,
    /// Where each chunk was stored at push time (a hint).
    #[serde(skip)]
    pub places: Vec<Option<ChunkPlace>>,
    /// When it was pushed.
    pub pushed: chrono::DateTime<chrono::Utc>,
    /// Host that pushed it.
    pub host: String,
    /// The plugin that pushed it (`None` for a legacy WAL archive file).
    pub writer: Option<PluginIdentity>,
    /// True for a legacy `wal/<stream>/<key>` object.
    pub legacy: bool,
}

impl StreamItem {
    /// The object the item is stored in, for messages.
    pub fn object_path(&self) -> String {
        match self.position {
            Some(p) if !self.legacy => {
                FileKind::Stream.path(&item_object_name(&self.owner, &self.stream, &self.key, p, self.pinned))
            }
            _ => FileKind::Wal.path(&format!("{}/{}", self.stream, self.key)),
        }
    }

    fn from_object(o: StreamItemObject) -> StreamItem {
        StreamItem {
            owner: o.owner,
            stream: o.stream,
            key: o.key,
            position: Some(o.position),
            pinned: o.pinned,
            size: o.size,
            blake3: o.blake3,
            chunks: o.chunks,
            places: o.places,
            pushed: o.pushed,
            host: o.host,
            writer: Some(o.writer),
            legacy: false,
        }
    }

    fn from_legacy(o: WalObject) -> StreamItem {
        StreamItem {
            owner: StreamOwner::legacy_wal(),
            stream: o.stream,
            key: o.name,
            position: None,
            pinned: false,
            size: o.size,
            blake3: o.blake3,
            chunks: o.chunks,
            places: o.places,
            pushed: o.pushed,
            host: o.host,
            writer: None,
            legacy: true,
        }
    }
}

/// What finishing an item did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemOutcome {
    /// Bytes of content.
    pub size: u64,
    /// Plain BLAKE3 of the content, hex.
    pub blake3: String,
    /// False when the stream already held this exact item (a retried push):
    /// nothing was written.
    pub stored: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn check_names(stream: &str, key: &str) -> Result<()> {
    valid_stream(stream).map_err(Error::Invalid)?;
    valid_key(key).map_err(Error::Invalid)
}

fn describe_place(position: u64, pinned: bool) -> String {
    format!("position {position} ({})", if pinned { "pinned" } else { "unpinned" })
}

fn describe_content(size: u64, blake3: &str) -> String {
    format!("{size} bytes with BLAKE3 {blake3}")
}

/// A key stored more than once: in two objects of one stream, or (for the
/// built-in postgres plugin) in the stream and the legacy WAL archive.
fn duplicate_key(owner: &StreamOwner, stream: &str, key: &str, places: &[String]) -> Error {
    Error::Corrupt {
        object: FileKind::Stream.path(&stream_prefix(owner, stream)),
        reason: format!("item {key} is stored more than once ({})", places.join(", ")),
        hint: "; two pushes of different content under one key raced (or a legacy WAL file was pushed again at a \
               position): delete the wrong copy"
            .into(),
    }
}

impl Repository {
    /// Reads and checks one stream item object, by its name within
    /// [`FileKind::Stream`]. A missing object is [`Error::StreamItemNotFound`].
    pub(crate) async fn read_stream_object(&self, object: &str) -> Result<StreamItemObject> {
        let path = FileKind::Stream.path(object);
        let Some(StreamObjectName::Item { owner, stream, key, position, pinned }) = parse_object_name(object) else {
            return Err(Error::Invalid(format!("{path} is not a stream item's name")));
        };
        let Some(obj) = self.read_named_json::<StreamItemObject>(FileKind::Stream, object, aad::STREAM_ITEM).await?
        else {
            return Err(Error::StreamItemNotFound {
                owner: owner.to_string(),
                stream: stream.to_string(),
                key: key.to_string(),
            });
        };
        if obj.version != 1 {
            return Err(Error::corrupt(&path, format!("unknown stream item version {}", obj.version)));
        }
        if obj.owner.as_str() != owner
            || obj.stream != stream
            || obj.key != key
            || obj.position != position
            || obj.pinned != pinned
        {
            return Err(Error::corrupt(
                &path,
                format!(
                    "it describes item {} of stream {}/{} at {} (the object was moved or replaced)",
                    obj.key,
                    obj.owner,
                    obj.stream,
                    describe_place(obj.position, obj.pinned)
                ),
            ));
        }
        if !obj.places.is_empty() && obj.places.len() != obj.chunks.len() {
            return Err(Error::corrupt(&path, "its chunk places do not match its chunks"));
        }
        Ok(obj)
    }

    /// Reads a legacy `wal/<stream>/<key>` object, if there is one.
    async fn read_legacy_item(&self, stream: &str, key: &str) -> Result<Option<StreamItem>> {
        match self.read_wal(stream, key).await {
            Ok(obj) => Ok(Some(StreamItem::from_legacy(obj))),
            Err(Error::WalNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The objects stored under one key: (position, pinned, object name).
    /// One prefix listing of `<owner>/<stream>/<key>@`.
    async fn key_objects(&self, owner: &StreamOwner, stream: &str, key: &str) -> Result<Vec<(u64, bool, String)>> {
        let listed = self.backend.list_prefix(FileKind::Stream, &key_prefix(owner, stream, key)).await?;
        Ok(listed
            .into_iter()
            .filter_map(|l| match parse_object_name(&l.name) {
                Some(StreamObjectName::Item { key: k, position, pinned, .. }) if k == key => {
                    Some((position, pinned, l.name.clone()))
                }
                _ => None,
            })
            .collect())
    }

    /// Every stream the repository holds items or a checkpoint of, legacy
    /// WAL archive streams (owner `builtin-postgres`) included, sorted.
    pub async fn streams(&self) -> Result<Vec<(StreamOwner, String)>> {
        let mut set: BTreeSet<(StreamOwner, String)> = BTreeSet::new();
        for l in self.backend.list(FileKind::Stream).await? {
            let (owner, stream) = match parse_object_name(&l.name) {
                Some(StreamObjectName::Item { owner, stream, .. } | StreamObjectName::Checkpoint { owner, stream }) => {
                    (owner, stream)
                }
                None => continue,
            };
            if let Ok(owner) = StreamOwner::parse(owner) {
                set.insert((owner, stream.to_string()));
            }
        }
        for l in self.backend.list(FileKind::Wal).await? {
            if let Some((stream, _)) = l.name.split_once('/') {
                set.insert((StreamOwner::legacy_wal(), stream.to_string()));
            }
        }
        Ok(set.into_iter().collect())
    }

    /// The items of one stream with a position from `from` to `to` (both
    /// included; `None`: unbounded), sorted by position then key, from the
    /// listing alone. For `builtin-postgres`, the legacy WAL archive files
    /// of the stream are listed too, with no position, whatever the bounds
    /// (they sort first; the plugin knows their positions from their keys).
    pub async fn stream_list(
        &self,
        owner: &StreamOwner,
        stream: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<Vec<StreamItemListing>> {
        valid_stream(stream).map_err(Error::Invalid)?;
        let mut out = Vec::new();
        for l in self.backend.list_prefix(FileKind::Stream, &stream_prefix(owner, stream)).await? {
            let Some(StreamObjectName::Item { key, position, pinned, .. }) = parse_object_name(&l.name) else {
                continue;
            };
            if from.is_some_and(|f| position < f) || to.is_some_and(|t| position > t) {
                continue;
            }
            let listing = StreamItemListing {
                key: key.to_string(),
                position: Some(position),
                pinned,
                stored_size: l.size,
                modified: l.modified,
            };
            out.push(listing);
        }
        if *owner == StreamOwner::legacy_wal() {
            out.extend(self.legacy_listing(stream).await?);
        }
        out.sort_by(|a, b| a.position.cmp(&b.position).then_with(|| a.key.cmp(&b.key)));
        Ok(out)
    }

    /// The legacy WAL archive files of one stream, as items with no position.
    async fn legacy_listing(&self, stream: &str) -> Result<Vec<StreamItemListing>> {
        let prefix = format!("{stream}/");
        let mut out = Vec::new();
        for l in self.backend.list_prefix(FileKind::Wal, &prefix).await? {
            let Some(key) = l.name.strip_prefix(&prefix).filter(|k| valid_key(k).is_ok()) else { continue };
            out.push(StreamItemListing {
                key: key.to_string(),
                position: None,
                pinned: false,
                stored_size: l.size,
                modified: l.modified,
            });
        }
        Ok(out)
    }

    /// Reads the item stored under `key` (`None` if there is none). For
    /// `builtin-postgres`, a legacy WAL archive file of that name is one. A
    /// key stored twice is an error naming both copies.
    pub async fn stream_item(&self, owner: &StreamOwner, stream: &str, key: &str) -> Result<Option<StreamItem>> {
        check_names(stream, key)?;
        let objects = self.key_objects(owner, stream, key).await?;
        let legacy = if *owner == StreamOwner::legacy_wal() { self.read_legacy_item(stream, key).await? } else { None };
        let mut places: Vec<String> =
            objects.iter().map(|(_, _, name)| FileKind::Stream.path(name)).collect::<Vec<_>>();
        if let Some(l) = &legacy {
            places.push(l.object_path());
        }
        if places.len() > 1 {
            return Err(duplicate_key(owner, stream, key, &places));
        }
        match objects.first() {
            Some((_, _, name)) => match self.read_stream_object(name).await {
                Ok(o) => Ok(Some(StreamItem::from_object(o))),
                // Removed by retention since the listing.
                Err(Error::StreamItemNotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(legacy),
        }
    }

    /// A reader over an item's content, chunk by chunk (a few chunks ahead),
    /// that checks size and BLAKE3 at the end: its last read is an error
    /// instead of the end when the content is not what was pushed. Owns a
    /// handle to the repository (for plugin resources).
    pub fn stream_reader(&self, item: &StreamItem) -> StreamItemReader {
        let repo = self.clone();
        let chunks: Vec<(Id, Option<ChunkPlace>)> =
            item.chunks.iter().enumerate().map(|(i, id)| (*id, item.places.get(i).copied().flatten())).collect();
        let stream = futures::stream::iter(chunks)
            .map(move |(id, place)| {
                let repo = repo.clone();
                async move { repo.load_chunk_hinted(&id, place).await }
            })
            .buffered(READ_AHEAD)
            .boxed();
        StreamItemReader {
            inner: EntryReader::from_chunks(stream),
            hasher: blake3::Hasher::new(),
            size: 0,
            expected_size: item.size,
            expected_blake3: item.blake3.clone(),
            path: item.object_path(),
            checked: false,
        }
    }

    /// Reads an item into `out` and checks its size and BLAKE3 at the end.
    /// On an error `out` holds partial or wrong data and must be discarded.
    /// A key the stream does not hold is [`Error::StreamItemNotFound`].
    pub async fn stream_fetch_into(
        &self,
        owner: &StreamOwner,
        stream: &str,
        key: &str,
        out: &mut impl std::io::Write,
    ) -> Result<StreamItem> {
        let Some(item) = self.stream_item(owner, stream, key).await? else {
            return Err(Error::StreamItemNotFound {
                owner: owner.to_string(),
                stream: stream.to_string(),
                key: key.to_string(),
            });
        };
        let mut reader = self.stream_reader(&item);
        while let Some(chunk) = reader.next_chunk().await? {
            out.write_all(&chunk).map_err(|e| Error::io(format!("writing item {key}"), e))?;
        }
        Ok(item)
    }

    /// The checkpoint of a stream, if one was written.
    pub async fn stream_checkpoint(&self, owner: &StreamOwner, stream: &str) -> Result<Option<StreamCheckpoint>> {
        valid_stream(stream).map_err(Error::Invalid)?;
        let name = checkpoint_object_name(owner, stream);
        let path = FileKind::Stream.path(&name);
        let Some(cp) =
            self.read_named_json::<StreamCheckpoint>(FileKind::Stream, &name, aad::STREAM_CHECKPOINT).await?
        else {
            return Ok(None);
        };
        if cp.version != 1 {
            return Err(Error::corrupt(&path, format!("unknown checkpoint version {}", cp.version)));
        }
        if cp.owner != *owner || cp.stream != stream {
            return Err(Error::corrupt(
                &path,
                format!("it is the checkpoint of stream {}/{} (the object was moved)", cp.owner, cp.stream),
            ));
        }
        Ok(Some(cp))
    }

    /// Takes the lease of one stream (`locks/stream.<owner>.<stream>.<generation>`)
    /// for a long-running follower, or fails with [`Error::StreamLeaseHeld`]
    /// naming the live holder. The lease refreshes itself until released;
    /// [`Lease::check`] tells whether it is still certainly held.
    pub async fn take_stream_lease(&self, owner: &StreamOwner, stream: &str, expiry: Duration) -> Result<Lease> {
        valid_stream(stream).map_err(Error::Invalid)?;
        let scope = LeaseScope::Stream { owner: owner.clone(), stream: stream.to_string() };
        Lease::acquire_scoped(self, scope, "follow", expiry).await
    }

    /// Deletes one legacy `wal/<stream>/<key>` object (for a migration that
    /// has pushed it again as a stream item). Deleting a missing object is
    /// not an error; its chunks go with the next prune.
    pub async fn delete_legacy_wal(&self, stream: &str, key: &str) -> Result<()> {
        check_names(stream, key)?;
        Ok(self.backend.delete(FileKind::Wal, &format!("{stream}/{key}")).await?)
    }

    /// Starts writing items of `owner`'s streams, on behalf of the plugin
    /// `writer`. The runtime passes the writing plugin's own owner
    /// ([`StreamOwner::of`] its identity), never one the plugin names, so a
    /// plugin only ever writes its own streams. The writer holds a session
    /// marker (as a backup does) until [`StreamWriter::finish`].
    pub async fn stream_writer(&self, owner: StreamOwner, writer: PluginIdentity) -> Result<StreamWriter> {
        let slot = WriterSlot::open(self, &owner).await?;
        Ok(StreamWriter {
            shared: Arc::new(StreamShared {
                repo: self.clone(),
                owner,
                writer,
                slot: tokio::sync::Mutex::new(Some(slot)),
                raised: AtomicBool::new(false),
                open_items: AtomicUsize::new(0),
            }),
        })
    }

    /// Every chunk of every stream item now listed, reading each item not
    /// already in `cache` (object name -> chunks; a few at a time). Items
    /// deleted while listing are skipped; an unreadable one is an error
    /// (what it references cannot be known).
    pub(crate) async fn stream_chunks(&self, cache: &mut HashMap<String, Vec<Id>>) -> Result<HashSet<Id>> {
        let listed = self.backend.list(FileKind::Stream).await?;
        let names: HashSet<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        // Items gone since the last pass (retention) no longer count.
        cache.retain(|name, _| names.contains(name.as_str()));
        let todo: Vec<String> = listed
            .iter()
            .filter(|l| matches!(parse_object_name(&l.name), Some(StreamObjectName::Item { .. })))
            .filter(|l| !cache.contains_key(&l.name))
            .map(|l| l.name.clone())
            .collect();
        let mut read = futures::stream::iter(todo)
            .map(|name| async move {
                let r = self.read_stream_object(&name).await;
                (name, r)
            })
            .buffer_unordered(16);
        while let Some((name, r)) = read.next().await {
            match r {
                Ok(obj) => {
                    cache.insert(name, obj.chunks);
                }
                Err(Error::StreamItemNotFound { .. }) => {}
                Err(e) => {
                    return Err(Error::Corrupt {
                        object: FileKind::Stream.path(&name),
                        reason: format!("prune cannot tell what this stream item references ({e})"),
                        hint: "; prune stopped without deleting anything: move the damaged item aside or delete \
                               it, then prune again"
                            .into(),
                    });
                }
            }
        }
        let mut used = HashSet::new();
        for chunks in cache.values() {
            used.extend(chunks.iter().copied());
        }
        Ok(used)
    }

    /// `check`'s part for streams: every item in `listed` (taken before the
    /// index was read) is readable, matches its name, and has every chunk
    /// indexed and undamaged; every checkpoint is readable; no key is stored
    /// twice (counting `legacy`, the `(stream, name)`s of the WAL archive,
    /// as `builtin-postgres` items).
    pub(crate) async fn check_streams(
        &self,
        listed: Vec<Listed>,
        legacy: &[(String, String)],
        idx: &MasterIndex,
        bad_blobs: &HashSet<Id>,
        r: &mut CheckReport,
    ) {
        let mut keys: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
        for (stream, name) in legacy {
            keys.entry((StreamOwner::legacy_wal().to_string(), stream.clone(), name.clone()))
                .or_default()
                .push(FileKind::Wal.path(&format!("{stream}/{name}")));
        }
        let mut items = Vec::new();
        let mut checkpoints = Vec::new();
        for l in &listed {
            match parse_object_name(&l.name) {
                Some(StreamObjectName::Item { owner, stream, key, .. }) => {
                    keys.entry((owner.to_string(), stream.to_string(), key.to_string()))
                        .or_default()
                        .push(FileKind::Stream.path(&l.name));
                    items.push(l.name.clone());
                }
                Some(StreamObjectName::Checkpoint { owner, stream }) => {
                    checkpoints.push((owner.to_string(), stream.to_string()));
                }
                None => {}
            }
        }
        let mut read = futures::stream::iter(items)
            .map(|name| async move {
                let r = self.read_stream_object(&name).await;
                (name, r)
            })
            .buffer_unordered(8);
        while let Some((name, res)) = read.next().await {
            let label = match parse_object_name(&name) {
                Some(StreamObjectName::Item { owner, stream, key, .. }) => format!("{owner}/{stream}/{key}"),
                _ => name.clone(),
            };
            let obj = match res {
                Ok(o) => o,
                // Removed by retention while we were checking.
                Err(Error::StreamItemNotFound { .. }) => continue,
                Err(e) => {
                    r.stream_items += 1;
                    r.errors.push(format!("stream item {label}: {e}"));
                    r.damaged_stream_items.insert(label);
                    continue;
                }
            };
            r.stream_items += 1;
            if let Some(c) = obj.chunks.iter().find(|c| !idx.contains(c)) {
                r.errors.push(format!("stream item {label}: data blob {} is in no index", c.short()));
                r.damaged_stream_items.insert(label);
            } else if obj.chunks.iter().any(|c| bad_blobs.contains(c)) {
                r.damaged_stream_items.insert(label);
            }
        }
        for (owner, stream) in checkpoints {
            let Ok(owner) = StreamOwner::parse(&owner) else { continue };
            r.stream_checkpoints += 1;
            if let Err(e) = self.stream_checkpoint(&owner, &stream).await {
                r.errors.push(format!("checkpoint of stream {owner}/{stream}: {e}"));
            }
        }
        for ((owner, stream, key), places) in keys {
            if places.len() > 1 {
                r.errors.push(format!(
                    "stream {owner}/{stream}: item {key} is stored {} times ({}); a fetch of it fails until the \
                     wrong copy is deleted",
                    places.len(),
                    places.join(", ")
                ));
            }
        }
    }
}

/// Reads a stream item's content in pieces of any size, checking its size
/// and BLAKE3 at the end (see [`Repository::stream_reader`]).
pub struct StreamItemReader {
    inner: EntryReader<'static>,
    hasher: blake3::Hasher,
    size: u64,
    expected_size: u64,
    expected_blake3: String,
    path: String,
    checked: bool,
}

impl StreamItemReader {
    /// Reads up to `buf.len()` bytes; 0 means the end (of checked content).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.inner.read(buf).await?;
        self.account(&buf[..n])?;
        Ok(n)
    }

    /// The next whole chunk (zero-copy); `None` at the end (of checked content).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let chunk = self.inner.next_chunk().await?;
        self.account(chunk.as_deref().unwrap_or_default())?;
        Ok(chunk)
    }

    /// Hashes what was read; at the end (nothing read), checks it all.
    fn account(&mut self, data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        if self.size > self.expected_size {
            return Err(self.mismatch());
        }
        self.hasher.update(data);
        if data.is_empty() && !self.checked {
            self.checked = true;
            if self.size != self.expected_size || self.hasher.finalize().to_hex().as_str() != self.expected_blake3 {
                return Err(self.mismatch());
            }
        }
        Ok(())
    }

    fn mismatch(&self) -> Error {
        Error::corrupt(
            &self.path,
            format!(
                "its chunks do not give the {} bytes with BLAKE3 {} that were pushed ({} bytes read)",
                self.expected_size, self.expected_blake3, self.size
            ),
        )
    }
}

/// The session a stream writer writes under, with what it loaded after
/// writing the marker.
#[derive(Clone)]
struct WriterSlot {
    session: Arc<Session>,
    index: Arc<MasterIndex>,
    /// Chunks the writer's items stored under this session, and where: the
    /// index above predates them, and later items deduplicate against them
    /// too (a stream repeats itself: zero-filled WAL segments, say).
    recent: Arc<std::sync::Mutex<HashMap<Id, ChunkPlace>>>,
    key: DataKey,
    begun: Instant,
}

impl WriterSlot {
    /// Writes a session marker, then loads the keyring and index (in that
    /// order, as a backup does: see session.rs).
    async fn open(repo: &Repository, owner: &StreamOwner) -> Result<WriterSlot> {
        let session = Session::start_for(repo, PURPOSE_STREAM, owner.as_str()).await?;
        tracing::debug!("stream session marker written");
        let loaded = async {
            let key = crate::commands::epoch::writable_key(&*repo.load_keyring().await?)?;
            let index = repo.load_index().await?;
            Ok::<_, Error>((key, index))
        }
        .await;
        match loaded {
            Ok((key, index)) => {
                Ok(WriterSlot { session: Arc::new(session), index, recent: Arc::default(), key, begun: Instant::now() })
            }
            Err(e) => {
                session.end().await;
                Err(e)
            }
        }
    }
}

/// Ends a shared session marker once its last holder lets go of it.
async fn release_session(session: Arc<Session>) {
    if let Ok(s) = Arc::try_unwrap(session) {
        s.end().await;
    }
}

/// As [`release_session`], from a `Drop` (on the runtime, if there is one;
/// otherwise the marker goes stale and prune removes it).
fn release_session_later(session: Arc<Session>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(release_session(session));
    }
}

struct StreamShared {
    repo: Repository,
    owner: StreamOwner,
    writer: PluginIdentity,
    /// `None` once the writer finished.
    slot: tokio::sync::Mutex<Option<WriterSlot>>,
    /// The config is known to be at format 4 or later.
    raised: AtomicBool,
    open_items: AtomicUsize,
}

impl StreamShared {
    /// Raises the repository to format 4 before the first stream write.
    async fn raise(&self) -> Result<()> {
        if !self.raised.load(Ordering::Acquire) {
            self.repo.require_version(STREAM_FORMAT_VERSION).await?;
            self.raised.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The session to write the next item under: a new one (with the index
    /// reloaded) when the current one is [`SESSION_ROLL`] old or may have
    /// looked dead to a prune.
    async fn current(&self) -> Result<WriterSlot> {
        let mut slot = self.slot.lock().await;
        let Some(current) = slot.as_ref() else {
            return Err(Error::Invalid("this stream writer has finished: start a new one".into()));
        };
        if current.begun.elapsed() < SESSION_ROLL && current.session.check_alive().is_ok() {
            return Ok(current.clone());
        }
        let fresh = WriterSlot::open(&self.repo, &self.owner).await?;
        if let Some(old) = slot.replace(fresh.clone()) {
            release_session(old.session).await;
        }
        Ok(fresh)
    }
}

/// Writes items of one owner's streams, for as long as a follow runs. A
/// cheap handle: items may be written one after another or side by side.
pub struct StreamWriter {
    shared: Arc<StreamShared>,
}

impl StreamWriter {
    /// The owner this writer writes for.
    pub fn owner(&self) -> &StreamOwner {
        &self.shared.owner
    }

    /// Starts an item of `stream` under `key` at `position`. One prefix
    /// listing finds any item already under `key`: one at another position
    /// or pinned flag is refused at once ([`Error::StreamItemConflict`]); one
    /// at this very name (or, for `builtin-postgres`, a legacy WAL archive
    /// file of this name) makes the writer only hash the content, and
    /// [`ItemWriter::finish`] then succeeds without writing when it is the
    /// same and refuses it otherwise.
    pub async fn item(&self, stream: &str, key: &str, position: u64, pinned: bool) -> Result<ItemWriter> {
        check_names(stream, key)?;
        tracing::debug!(stream, key, "item started");
        let shared = &self.shared;
        let repo = &shared.repo;
        let owner = &shared.owner;
        let conflict = |stored: String, pushed: String| Error::StreamItemConflict {
            owner: owner.to_string(),
            stream: stream.to_string(),
            key: key.to_string(),
            stored,
            pushed,
        };
        let objects = repo.key_objects(owner, stream, key).await?;
        if let Some((p, pin, _)) = objects.iter().find(|(p, pin, _)| (*p, *pin) != (position, pinned)) {
            return Err(conflict(describe_place(*p, *pin), describe_place(position, pinned)));
        }
        let existing = match objects.first() {
            Some((_, _, name)) => match repo.read_stream_object(name).await {
                Ok(o) => Some((o.size, o.blake3)),
                Err(Error::StreamItemNotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None if *owner == StreamOwner::legacy_wal() => {
                repo.read_legacy_item(stream, key).await?.map(|l| (l.size, l.blake3))
            }
            None => None,
        };
        let mode = match existing {
            Some((size, blake3)) => ItemMode::Compare { size, blake3 },
            None => {
                shared.raise().await?;
                let slot = shared.current().await?;
                let saver = BlobSaver::new(
                    slot.key.clone(),
                    repo.config.compression,
                    Arc::clone(&repo.backend),
                    repo.config.pack_size as usize,
                );
                ItemMode::Store(Box::new(ItemStore {
                    slot,
                    saver,
                    chunker: StreamChunker::new(repo.chunker.clone()),
                    chunks: Vec::new(),
                    places: Vec::new(),
                    pending: HashSet::new(),
                }))
            }
        };
        shared.open_items.fetch_add(1, Ordering::SeqCst);
        Ok(ItemWriter {
            shared: Arc::clone(shared),
            stream: stream.to_string(),
            key: key.to_string(),
            position,
            pinned,
            hasher: blake3::Hasher::new(),
            size: 0,
            mode: Some(mode),
        })
    }

    /// Overwrites the checkpoint of `stream`: `state` (opaque to the host,
    /// at most 64 KiB) is where a follower resumes; `source_position` is how
    /// far the source itself is, if known (for lag).
    pub async fn checkpoint(&self, stream: &str, state: &str, source_position: Option<u64>) -> Result<()> {
        valid_stream(stream).map_err(Error::Invalid)?;
        if state.len() > MAX_CHECKPOINT_STATE {
            return Err(Error::Invalid(format!(
                "a checkpoint's state is at most {MAX_CHECKPOINT_STATE} bytes; this one has {}",
                state.len()
            )));
        }
        let shared = &self.shared;
        if shared.slot.lock().await.is_none() {
            return Err(Error::Invalid("this stream writer has finished: start a new one".into()));
        }
        shared.raise().await?;
        let cp = StreamCheckpoint {
            version: 1,
            owner: shared.owner.clone(),
            stream: stream.to_string(),
            state: state.to_string(),
            source_position,
            time: chrono::Utc::now(),
            host: host_name(),
        };
        let body = serde_json::to_vec(&cp).expect("checkpoint serializes");
        let sealed = Bytes::from(shared.repo.keys.seal(&body, aad::STREAM_CHECKPOINT));
        let name = checkpoint_object_name(&shared.owner, stream);
        shared.repo.backend.put(FileKind::Stream, &name, sealed, PutMode::Overwrite).await?;
        Ok(())
    }

    /// Ends the writer: its session marker is removed (once the last open
    /// item is done with it). Fails, ending nothing, while items are open.
    pub async fn finish(self) -> Result<()> {
        let open = self.shared.open_items.load(Ordering::SeqCst);
        if open > 0 {
            return Err(Error::Invalid(format!(
                "{open} stream items are still open: finish or drop them before finishing the writer"
            )));
        }
        self.close().await;
        Ok(())
    }

    /// Ends the writer whatever is open: items still being written can no
    /// longer be finished once they need a new session.
    pub async fn abort(self) {
        self.close().await;
    }

    async fn close(&self) {
        let slot = self.shared.slot.lock().await.take();
        if let Some(slot) = slot {
            release_session(slot.session).await;
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.shared.slot.try_lock()
            && let Some(slot) = slot.take()
        {
            release_session_later(slot.session);
        }
    }
}

/// What an item writer does with the content.
enum ItemMode {
    /// The key is already stored: only hash, then compare.
    Compare {
        /// Size of the stored item.
        size: u64,
        /// BLAKE3 of the stored item.
        blake3: String,
    },
    /// Chunk and store.
    Store(Box<ItemStore>),
}

struct ItemStore {
    slot: WriterSlot,
    saver: BlobSaver,
    chunker: StreamChunker,
    chunks: Vec<Id>,
    places: Vec<Option<ChunkPlace>>,
    /// New chunks already queued for a pack.
    pending: HashSet<Id>,
}

impl ItemStore {
    async fn store(&mut self, repo: &Repository, chunk: Bytes) -> Result<()> {
        let id = repo.keys.chunk_id(&chunk);
        self.chunks.push(id);
        if self.slot.index.contains_usable(&id) {
            let place = self.slot.index.lookup(&id).map(|l| ChunkPlace {
                pack: l.pack,
                offset: l.offset,
                length: l.length,
                raw_len: l.raw_len,
                epoch: l.epoch,
            });
            self.places.push(place);
            return Ok(());
        }
        if let Some(place) = self.slot.recent.lock().expect("recent lock").get(&id) {
            self.places.push(Some(*place));
            return Ok(());
        }
        self.places.push(None);
        if self.pending.insert(id) {
            self.saver.save(BlobKind::Data, id, chunk).await?;
        }
        Ok(())
    }

    /// Deletes the packs of a failed item (no index file names them).
    async fn discard(&self, repo: &Repository, packs: &[IndexedPack]) {
        let mut orphans = self.saver.abort().await;
        orphans.extend_from_slice(packs);
        for p in orphans {
            let _ = repo.backend.delete(FileKind::Pack, &p.id.to_hex()).await;
        }
    }
}

/// Streams one item's content into the repository (see [`StreamWriter::item`]).
/// Memory is bounded whatever the item's size: the chunker's window and the
/// pack saver's buffers. Dropping it without [`ItemWriter::finish`] abandons
/// the item: nothing becomes visible, and its chunks are garbage for prune.
pub struct ItemWriter {
    shared: Arc<StreamShared>,
    stream: String,
    key: String,
    position: u64,
    pinned: bool,
    hasher: blake3::Hasher,
    size: u64,
    /// `None` once finished.
    mode: Option<ItemMode>,
}

impl ItemWriter {
    /// The item's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Content bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends content.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        // A piece at a time, however much a plugin hands over at once (a
        // whole 16 MiB WAL segment, say): each chunk goes to the pack
        // saver's workers as soon as it is cut, so compression overlaps
        // hashing and chunking, and the chunker's window stays small.
        for piece in data.chunks(WRITE_PIECE) {
            self.hasher.update(piece);
            self.size += piece.len() as u64;
            if let Some(ItemMode::Store(store)) = &mut self.mode {
                for chunk in store.chunker.push(piece) {
                    store.store(&self.shared.repo, chunk).await?;
                }
            }
        }
        Ok(())
    }

    fn conflict(&self, stored: String, pushed: String) -> Error {
        Error::StreamItemConflict {
            owner: self.shared.owner.to_string(),
            stream: self.stream.clone(),
            key: self.key.clone(),
            stored,
            pushed,
        }
    }

    /// Completes the item: the commit point. Packs holding its new chunks
    /// are flushed, then their index file, then the item object, written
    /// create-only. An item already stored with the same content is a
    /// success that wrote nothing (`stored: false`); different content is
    /// refused ([`Error::StreamItemConflict`]).
    pub async fn finish(mut self) -> Result<ItemOutcome> {
        tracing::debug!(size = self.size, "item content received");
        let mode = self.mode.take();
        self.shared.open_items.fetch_sub(1, Ordering::SeqCst);
        let blake3 = self.hasher.finalize().to_hex().to_string();
        let outcome = ItemOutcome { size: self.size, blake3: blake3.clone(), stored: false };
        match mode {
            None => Err(Error::Invalid("stream item finished twice".into())),
            Some(ItemMode::Compare { size, blake3: stored }) => {
                if size == self.size && stored == blake3 {
                    Ok(outcome)
                } else {
                    Err(self.conflict(describe_content(size, &stored), describe_content(self.size, &blake3)))
                }
            }
            Some(ItemMode::Store(mut store)) => {
                let result = self.commit(&mut store, &blake3).await;
                let ItemStore { slot, saver, .. } = *store;
                drop(saver);
                release_session(slot.session).await;
                match result {
                    Ok(()) => Ok(ItemOutcome { stored: true, ..outcome }),
                    // Another push of this key and position committed first.
                    Err(Error::Backend(BackendError::AlreadyExists { .. })) => {
                        let name = self.object_name();
                        let existing = self.shared.repo.read_stream_object(&name).await?;
                        if existing.size == self.size && existing.blake3 == blake3 {
                            Ok(outcome)
                        } else {
                            Err(self.conflict(
                                describe_content(existing.size, &existing.blake3),
                                describe_content(self.size, &blake3),
                            ))
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn object_name(&self) -> String {
        item_object_name(&self.shared.owner, &self.stream, &self.key, self.position, self.pinned)
    }

    async fn commit(&self, store: &mut ItemStore, blake3: &str) -> Result<()> {
        let repo = &self.shared.repo;
        let stored: Result<()> = async {
            for chunk in store.chunker.finish() {
                store.store(repo, chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = stored {
            store.discard(repo, &[]).await;
            return Err(e);
        }
        tracing::debug!(chunks = store.chunks.len(), "item content chunked");
        let packs = match store.saver.finish().await {
            Ok(p) => p,
            Err(e) => {
                store.discard(repo, &[]).await;
                return Err(e);
            }
        };
        tracing::debug!(packs = packs.len(), "item packs written");
        // Where the new chunks went.
        let mut new_places: HashMap<Id, ChunkPlace> = HashMap::new();
        for p in &packs {
            for b in &p.blobs {
                let place =
                    ChunkPlace { pack: p.id, offset: b.offset, length: b.length, raw_len: b.raw_len, epoch: p.epoch };
                new_places.insert(b.id, place);
            }
        }
        for (id, place) in store.chunks.iter().zip(store.places.iter_mut()) {
            if place.is_none() {
                *place = new_places.get(id).copied();
            }
        }
        let epoch = store.slot.key.epoch();
        if !packs.is_empty() {
            let indexed = match repo.check_epoch_held(epoch).await {
                Ok(()) => repo.write_index_file(&IndexFile { supersedes: vec![], packs: packs.clone() }).await,
                Err(e) => Err(e),
            };
            if let Err(e) = indexed {
                store.discard(repo, &packs).await;
                return Err(e);
            }
            tracing::debug!("item index file written");
        }
        let obj = StreamItemObject {
            version: 1,
            owner: self.shared.owner.clone(),
            stream: self.stream.clone(),
            key: self.key.clone(),
            position: self.position,
            pinned: self.pinned,
            size: self.size,
            blake3: blake3.to_string(),
            chunks: std::mem::take(&mut store.chunks),
            places: std::mem::take(&mut store.places),
            pushed: chrono::Utc::now(),
            host: host_name(),
            writer: self.shared.writer.clone(),
        };
        let body = serde_json::to_vec(&obj).expect("stream item serializes");
        store.slot.session.check_alive()?;
        repo.check_epoch_held(epoch).await?;
        let sealed = Bytes::from(repo.keys.seal(&body, aad::STREAM_ITEM));
        repo.backend.put(FileKind::Stream, &self.object_name(), sealed, PutMode::CreateNew).await?;
        tracing::debug!(item = %self.object_name(), "item committed");
        store.slot.recent.lock().expect("recent lock").extend(new_places);
        Ok(())
    }
}

impl Drop for ItemWriter {
    fn drop(&mut self) {
        if let Some(mode) = self.mode.take() {
            // Abandoned: packs already uploaded stay for prune; the saver's
            // workers stop once its queue closes.
            self.shared.open_items.fetch_sub(1, Ordering::SeqCst);
            if let ItemMode::Store(store) = mode {
                let ItemStore { slot, saver, .. } = *store;
                drop(saver);
                release_session_later(slot.session);
            }
        }
    }
}
