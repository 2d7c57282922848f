//! Reading snapshots: entry lists and entry content.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::backend::FileKind;
use crate::blob::{self, BlobKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repofile::index::ChunkPlace;
use crate::repofile::snapshot::SnapshotManifest;
use crate::repofile::tree::{Entry, EntryDecoder};
use crate::repository::Repository;

/// Blobs fetched ahead while streaming an entry.
pub(crate) const READ_AHEAD: usize = 4;

/// An opened snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its id.
    pub id: Id,
    /// Its manifest.
    pub manifest: SnapshotManifest,
    /// Its entries, sorted by path.
    pub entries: Vec<Entry>,
}

impl Snapshot {
    /// The entry at `path`.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// An attribute set by the source.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.manifest.attributes.get(key).map(String::as_str)
    }
}

impl Repository {
    /// Opens a snapshot: reads its manifest and entry list.
    pub async fn open_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let manifest = self.read_manifest(id).await?;
        if self.index().is_empty() {
            self.load_index().await?;
        }
        // Room for the entries the summary counts (within reason: the
        // summary is only a hint), so the list is not grown by doubling.
        let mut decoder = EntryDecoder::with_capacity(manifest.summary.entries.min(1 << 22) as usize);
        for t in &manifest.tree {
            let piece = match self.load_blob(BlobKind::Tree, t).await {
                Err(Error::MissingBlob { .. }) => {
                    // The index may predate this snapshot: reload once.
                    self.load_index().await?;
                    self.load_blob(BlobKind::Tree, t).await?
                }
                other => other?,
            };
            decoder.push(&piece);
        }
        let entries = decoder
            .finish()
            .map_err(|e| Error::corrupt(format!("snapshot {}", id.short()), format!("entry list: {e}")))?;
        Ok(Snapshot { id: *id, manifest, entries })
    }

    /// Streams an entry's content, fetching a few blobs ahead.
    pub fn entry_stream<'a>(&'a self, entry: &Entry) -> BoxStream<'a, Result<Bytes>> {
        let ids = entry.content.clone();
        futures::stream::iter(ids)
            .map(move |id| async move { self.load_blob(BlobKind::Data, &id).await })
            .buffered(READ_AHEAD)
            .boxed()
    }

    /// A reader over an entry's content that owns a handle to the
    /// repository, for callers that outlive a borrow (plugin resources).
    pub fn entry_reader_owned(&self, entry: &Entry) -> EntryReader<'static> {
        let repo = self.clone();
        let stream = futures::stream::iter(entry.content.clone())
            .map(move |id| {
                let repo = repo.clone();
                async move { repo.load_blob(BlobKind::Data, &id).await }
            })
            .buffered(READ_AHEAD)
            .boxed();
        EntryReader { stream, current: Bytes::new(), queue: VecDeque::new() }
    }

    /// One data chunk of a WAL file or stream item, from where it was stored
    /// at push time when it is still there, else through the index (loading
    /// it if needed).
    pub(crate) async fn load_chunk_hinted(&self, id: &Id, place: Option<ChunkPlace>) -> Result<Bytes> {
        if let Some(p) = place
            && let Ok(b) = self.load_blob_at(id, &p).await
        {
            return Ok(b);
        }
        if self.index().is_empty() {
            self.load_index().await?;
        }
        match self.load_blob(BlobKind::Data, id).await {
            Err(Error::MissingBlob { .. }) => {
                // The index may predate the push: reload once.
                self.load_index().await?;
                self.load_blob(BlobKind::Data, id).await
            }
            other => other,
        }
    }

    async fn load_blob_at(&self, id: &Id, p: &ChunkPlace) -> Result<Bytes> {
        let key = self.keyring().get(p.epoch).cloned().ok_or(Error::MissingEpoch(p.epoch))?;
        let range = u64::from(p.offset)..u64::from(p.offset) + u64::from(p.length);
        let sealed = self.backend.get_range(FileKind::Pack, &p.pack.to_hex(), range).await?;
        let keys = self.keys.clone();
        let (id, raw_len) = (*id, p.raw_len as usize);
        tokio::task::spawn_blocking(move || blob::decode(&keys, &key, BlobKind::Data, &id, &sealed, raw_len))
            .await
            .map_err(|e| Error::Aborted(e.to_string()))?
            .map_err(|e| Error::corrupt(FileKind::Pack.path(&p.pack.to_hex()), e.to_string()))
    }

    /// A reader over an entry's content.
    pub fn entry_reader<'a>(&'a self, entry: &Entry) -> EntryReader<'a> {
        EntryReader { stream: self.entry_stream(entry), current: Bytes::new(), queue: VecDeque::new() }
    }
}

/// Reads an entry's content in pieces of any size.
pub struct EntryReader<'a> {
    stream: BoxStream<'a, Result<Bytes>>,
    current: Bytes,
    queue: VecDeque<Bytes>,
}

impl<'a> EntryReader<'a> {
    /// A reader over a stream of chunks, in order (a stream item's).
    pub(crate) fn from_chunks(stream: BoxStream<'a, Result<Bytes>>) -> EntryReader<'a> {
        EntryReader { stream, current: Bytes::new(), queue: VecDeque::new() }
    }
}

impl EntryReader<'_> {
    /// Reads up to `buf.len()` bytes; 0 means the end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        while self.current.is_empty() {
            if let Some(b) = self.queue.pop_front() {
                self.current = b;
                continue;
            }
            match self.stream.next().await {
                Some(b) => self.current = b?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }

    /// The next whole chunk (zero-copy); `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if !self.current.is_empty() {
            return Ok(Some(std::mem::take(&mut self.current)));
        }
        match self.stream.next().await {
            Some(b) => Ok(Some(b?)),
            None => Ok(None),
        }
    }
}
