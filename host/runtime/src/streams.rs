//! The host side of contract 0.2.0's `streams` interface: a plugin's own
//! streams, written through a stream sink (`stream-push`, `follow`) and
//! read through stream readers (`restore`, `verify`, and the sink's own
//! reader). The owner of every stream a plugin touches is the host's
//! decision (the plugin's identity, or the identity that wrote the
//! snapshot being read), never the plugin's.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_repo::commands::lease::Lease;
use coffer_repo::{StreamOwner, StreamWriter};
use wasmtime::component::Resource;

use crate::bindings::stream_types::{Checkpoint, Item, ItemInfo};
use crate::bindings::streams;
use crate::bindings::types::{Digest, Error as WitError, Timestamp};
use crate::host::{
    ContentReader, ContentWriter, EntryReaderSlot, EntryWriterSlot, Fault, PluginState, ReaderSlot, SinkSlot, printable,
};

/// Most items one `items` call returns.
const MAX_ITEM_PAGE: u32 = 10_000;
/// Most streams one snapshot may declare it needs.
const MAX_NEEDS: usize = 64;
/// Most stream items a job writes at once (each has its own packer).
const MAX_OPEN_ITEMS: u32 = 16;

/// Where a plugin appends to its own streams (the writer itself lives in
/// the job state).
pub struct StreamSinkSlot;

/// Read access to one owner's streams.
pub struct StreamReaderSlot {
    owner: StreamOwner,
}

/// One item a stream job stored (or found already stored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushedItem {
    /// The stream.
    pub stream: String,
    /// The item's key.
    pub key: String,
    /// Its position.
    pub position: u64,
    /// Pinned (never removed by retention).
    pub pinned: bool,
    /// Bytes of content.
    pub size: u64,
    /// False when the stream already held this exact item.
    pub stored: bool,
}

/// The state of a stream job (`stream-push`, `follow`).
pub(crate) struct StreamJob {
    pub(crate) writer: StreamWriter,
    /// A follow holds the lease of each stream it writes, taken when it
    /// first touches the stream; a push takes none.
    pub(crate) lease_expiry: Option<Duration>,
    pub(crate) leases: BTreeMap<String, Lease>,
    /// Items of the appends in progress, by writer slot: (stream, key,
    /// position, pinned).
    pub(crate) pending: BTreeMap<u32, (String, String, u64, bool)>,
    pub(crate) items: Vec<PushedItem>,
    /// Items finished, kept in `items` up to [`MAX_REPORTED`]; the rest
    /// only counted.
    pub(crate) finished: u64,
}

/// Items a stream job reports one by one; a follow stores many more.
pub(crate) const MAX_REPORTED: usize = 1000;

impl StreamJob {
    pub(crate) fn new(writer: StreamWriter, lease_expiry: Option<Duration>) -> Self {
        StreamJob {
            writer,
            lease_expiry,
            leases: BTreeMap::new(),
            pending: BTreeMap::new(),
            items: Vec::new(),
            finished: 0,
        }
    }

    /// Ends the job: releases every lease, then finishes or aborts the
    /// writer's session.
    pub(crate) async fn end(self, ok: bool) -> coffer_repo::Result<()> {
        for (_, lease) in self.leases {
            lease.release().await;
        }
        if ok {
            self.writer.finish().await
        } else {
            self.writer.abort().await;
            Ok(())
        }
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanoseconds: t.timestamp_subsec_nanos() }
}

/// Checks a stream name or key the plugin passed; a bad one breaks the
/// contract.
fn checked_names(state: &mut PluginState, stream: &str, key: Option<&str>) -> wasmtime::Result<()> {
    let bad = coffer_repo::repofile::stream::valid_stream(stream)
        .err()
        .or_else(|| key.and_then(|k| coffer_repo::repofile::stream::valid_key(k).err()));
    match bad {
        Some(reason) => Err(state.fault(Fault::Contract(printable(&reason)))),
        None => Ok(()),
    }
}

/// A repository error while reading streams: damage is the plugin's to
/// report (`corrupt`), anything else ends the job.
fn read_error(state: &mut PluginState, e: coffer_repo::Error) -> wasmtime::Result<WitError> {
    match e {
        coffer_repo::Error::Corrupt { .. } => Ok(WitError::Corrupt(e.to_string())),
        coffer_repo::Error::StreamItemNotFound { .. } => Ok(WitError::Unavailable(e.to_string())),
        other => Err(state.repo_fault(other)),
    }
}

impl PluginState {
    fn stream_job(&mut self) -> wasmtime::Result<&mut StreamJob> {
        if self.job.streams.is_none() {
            return Err(self.fault(Fault::Contract("used a stream sink outside a stream job".into())));
        }
        Ok(self.job.streams.as_mut().expect("checked above"))
    }

    /// In a follow: takes the lease of `stream` the first time the job
    /// touches it, and checks it is still held afterwards.
    async fn hold_stream(&mut self, stream: &str) -> wasmtime::Result<()> {
        let job = self.stream_job()?;
        let Some(expiry) = job.lease_expiry else { return Ok(()) };
        let r = match job.leases.get(stream) {
            Some(lease) => lease.check().await,
            None => {
                let owner = job.writer.owner().clone();
                let repo = self.job.repo.clone().expect("a stream job has a repository");
                match repo.take_stream_lease(&owner, stream, expiry).await {
                    Ok(lease) => {
                        self.stream_job()?.leases.insert(stream.to_string(), lease);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        r.map_err(|e| self.fault(Fault::Repository(e.to_string())))
    }

    /// Finishes a stream item: stores it (the commit point) and records it.
    pub(crate) async fn finish_item(
        &mut self,
        w: coffer_repo::ItemWriter,
        slot: u32,
    ) -> wasmtime::Result<Result<Digest, WitError>> {
        let pending = self.stream_job()?.pending.remove(&slot);
        match w.finish().await {
            Ok(outcome) => {
                let job = self.stream_job()?;
                job.finished += 1;
                if let Some((stream, key, position, pinned)) = pending
                    && job.items.len() < MAX_REPORTED
                {
                    job.items.push(PushedItem {
                        stream,
                        key,
                        position,
                        pinned,
                        size: outcome.size,
                        stored: outcome.stored,
                    });
                }
                Ok(Ok(Digest { size: outcome.size, blake3: outcome.blake3 }))
            }
            // The stream holds the key with other content: the plugin's
            // business (it names the file it was given, for instance).
            Err(e @ coffer_repo::Error::StreamItemConflict { .. }) => Ok(Err(WitError::Other(e.to_string()))),
            Err(e) => Err(self.repo_fault(e)),
        }
    }

    fn stream_reader_owner(&self, this: &Resource<StreamReaderSlot>) -> wasmtime::Result<StreamOwner> {
        Ok(self.table.get(this)?.owner.clone())
    }

    fn stream_repo(&mut self) -> wasmtime::Result<coffer_repo::Repository> {
        match &self.job.repo {
            Some(r) => Ok(r.clone()),
            None => Err(self.fault(Fault::Contract("read streams outside a job that has a repository".into()))),
        }
    }
}

impl streams::Host for PluginState {
    async fn need_stream(
        &mut self,
        _sink: Resource<SinkSlot>,
        stream: String,
        from: u64,
    ) -> wasmtime::Result<Result<(), WitError>> {
        checked_names(self, &stream, None)?;
        let Some(owner) = self.job.owner.clone() else {
            return Ok(Err(WitError::Unsupported("this plugin cannot own streams".into())));
        };
        if !self.job.needs.contains(&stream) {
            if self.job.needs.len() >= MAX_NEEDS {
                return Err(self.fault(Fault::Contract(format!("declared needs on more than {MAX_NEEDS} streams"))));
            }
            self.job.needs.insert(stream.clone());
        }
        let r = self.writer()?.need_stream(owner, &stream, from);
        match r {
            Ok(()) => Ok(Ok(())),
            Err(coffer_repo::Error::Invalid(m)) => Err(self.fault(Fault::Contract(printable(&m)))),
            Err(e) => Err(self.repo_fault(e)),
        }
    }

    async fn open_streams(&mut self, snapshot: Resource<ReaderSlot>) -> wasmtime::Result<Resource<StreamReaderSlot>> {
        let manifest = &self.table.get(&snapshot)?.snapshot.manifest;
        let owner = match StreamOwner::of(&manifest.plugin) {
            Ok(o) => o,
            // A manifest names its plugin by a digest that is not one: no
            // streams can be its.
            Err(m) => return Err(self.fault(Fault::Repository(printable(&m)))),
        };
        Ok(self.table.push(StreamReaderSlot { owner })?)
    }

    async fn needed_streams(&mut self, snapshot: Resource<ReaderSlot>) -> wasmtime::Result<Vec<(String, u64)>> {
        let manifest = &self.table.get(&snapshot)?.snapshot.manifest;
        let owner = StreamOwner::of(&manifest.plugin).ok();
        Ok(manifest
            .streams
            .iter()
            .filter(|n| Some(&n.owner) == owner.as_ref())
            .take(MAX_NEEDS)
            .map(|n| (n.stream.clone(), n.from))
            .collect())
    }
}

impl streams::HostStreamReader for PluginState {
    async fn streams(&mut self, this: Resource<StreamReaderSlot>) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        let owner = self.stream_reader_owner(&this)?;
        let repo = self.stream_repo()?;
        match repo.streams().await {
            Ok(all) => Ok(Ok(all.into_iter().filter(|(o, _)| *o == owner).map(|(_, s)| s).collect())),
            Err(e) => Ok(Err(read_error(self, e)?)),
        }
    }

    async fn items(
        &mut self,
        this: Resource<StreamReaderSlot>,
        stream: String,
        from: Option<u64>,
        after: Option<Item>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<Item>, WitError>> {
        checked_names(self, &stream, None)?;
        let owner = self.stream_reader_owner(&this)?;
        let repo = self.stream_repo()?;
        let listed = match repo.stream_list(&owner, &stream, from, None).await {
            Ok(l) => l,
            Err(e) => return Ok(Err(read_error(self, e)?)),
        };
        let after = after.map(|a| (a.position, a.key));
        let limit = limit.clamp(1, MAX_ITEM_PAGE) as usize;
        let items = listed
            .into_iter()
            // With a lower bound, only items that have a position.
            .filter(|l| from.is_none() || l.position.is_some())
            .filter(|l| after.as_ref().is_none_or(|(p, k)| (l.position, &l.key) > (*p, k)))
            .take(limit)
            .map(|l| Item { key: l.key, position: l.position, pinned: l.pinned })
            .collect();
        Ok(Ok(items))
    }

    async fn stat(
        &mut self,
        this: Resource<StreamReaderSlot>,
        stream: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<ItemInfo>, WitError>> {
        checked_names(self, &stream, Some(&key))?;
        let owner = self.stream_reader_owner(&this)?;
        let repo = self.stream_repo()?;
        match repo.stream_item(&owner, &stream, &key).await {
            Ok(item) => Ok(Ok(item.map(|i| ItemInfo {
                key: i.key,
                position: i.position,
                pinned: i.pinned,
                size: i.size,
                blake3: i.blake3,
                pushed: timestamp(i.pushed),
            }))),
            Err(e) => Ok(Err(read_error(self, e)?)),
        }
    }

    async fn open(
        &mut self,
        this: Resource<StreamReaderSlot>,
        stream: String,
        key: String,
    ) -> wasmtime::Result<Result<Resource<EntryReaderSlot>, WitError>> {
        checked_names(self, &stream, Some(&key))?;
        let owner = self.stream_reader_owner(&this)?;
        let repo = self.stream_repo()?;
        let item = match repo.stream_item(&owner, &stream, &key).await {
            Ok(Some(i)) => i,
            Ok(None) => {
                return Ok(Err(WitError::Unavailable(format!(
                    "stream {} holds no item {}",
                    printable(&stream),
                    printable(&key)
                ))));
            }
            Err(e) => return Ok(Err(read_error(self, e)?)),
        };
        self.open_handle()?;
        let reader = repo.stream_reader(&item);
        self.job.open_readers += 1;
        Ok(Ok(self.table.push(EntryReaderSlot { reader: ContentReader::Item(Box::new(reader)) })?))
    }

    async fn last_checkpoint(
        &mut self,
        this: Resource<StreamReaderSlot>,
        stream: String,
    ) -> wasmtime::Result<Result<Option<Checkpoint>, WitError>> {
        checked_names(self, &stream, None)?;
        let owner = self.stream_reader_owner(&this)?;
        let repo = self.stream_repo()?;
        match repo.stream_checkpoint(&owner, &stream).await {
            Ok(c) => Ok(Ok(c.map(|c| Checkpoint {
                state: c.state,
                source_position: c.source_position,
                time: timestamp(c.time),
            }))),
            Err(e) => Ok(Err(read_error(self, e)?)),
        }
    }

    async fn drop(&mut self, rep: Resource<StreamReaderSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl streams::HostStreamSink for PluginState {
    async fn append(
        &mut self,
        _this: Resource<StreamSinkSlot>,
        stream: String,
        key: String,
        position: u64,
        pinned: bool,
    ) -> wasmtime::Result<Result<Resource<EntryWriterSlot>, WitError>> {
        checked_names(self, &stream, Some(&key))?;
        if self.stream_job()?.pending.len() as u32 >= MAX_OPEN_ITEMS {
            return Err(self.fault(Fault::Contract(format!("opened more than {MAX_OPEN_ITEMS} stream items at once"))));
        }
        self.hold_stream(&stream).await?;
        self.open_handle()?;
        let r = self.stream_job()?.writer.item(&stream, &key, position, pinned).await;
        let w = match r {
            Ok(w) => w,
            Err(e @ coffer_repo::Error::StreamItemConflict { .. }) => return Ok(Err(WitError::Other(e.to_string()))),
            Err(e) => return Err(self.repo_fault(e)),
        };
        self.job.open_writers += 1;
        let path = format!("{stream}/{key}");
        let slot = self.table.push(EntryWriterSlot { writer: Some(ContentWriter::Item(w)), path })?;
        self.stream_job()?.pending.insert(slot.rep(), (stream, key, position, pinned));
        Ok(Ok(slot))
    }

    async fn checkpoint(
        &mut self,
        _this: Resource<StreamSinkSlot>,
        stream: String,
        state: String,
        source_position: Option<u64>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        checked_names(self, &stream, None)?;
        if state.len() > coffer_repo::repofile::stream::MAX_CHECKPOINT_STATE {
            return Err(self.fault(Fault::Contract(format!(
                "a checkpoint's state is at most {} bytes",
                coffer_repo::repofile::stream::MAX_CHECKPOINT_STATE
            ))));
        }
        self.hold_stream(&stream).await?;
        let r = self.stream_job()?.writer.checkpoint(&stream, &state, source_position).await;
        match r {
            Ok(()) => Ok(Ok(())),
            Err(e) => Err(self.repo_fault(e)),
        }
    }

    async fn reader(&mut self, _this: Resource<StreamSinkSlot>) -> wasmtime::Result<Resource<StreamReaderSlot>> {
        let owner = self.stream_job()?.writer.owner().clone();
        Ok(self.table.push(StreamReaderSlot { owner })?)
    }

    async fn drop(&mut self, rep: Resource<StreamSinkSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl crate::bindings::stream_types::Host for PluginState {}
