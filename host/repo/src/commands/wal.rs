//! The WAL archive: PostgreSQL's `archive_command` and `restore_command`
//! served by the repository.
//!
//! A pushed file is chunked and stored like backup data (deduplicated
//! against everything in the repository, in packs under the current key
//! epoch), then described by one `wal/<stream>/<name>` object. The write
//! order is a backup's: session marker, packs, index file, then the object
//! (the commit point, written create-only so two pushes of one name cannot
//! both win). A name is archived once: an identical re-push succeeds without
//! writing anything, a different file under an archived name is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Serialize;

use crate::backend::{BackendError, FileKind, PutMode};
use crate::blob::BlobKind;
use crate::commands::session::Session;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::packer::BlobSaver;
use crate::repofile::aad;
use crate::repofile::index::IndexFile;
use crate::repofile::wal::{
    ChunkPlace, WalFile, WalObject, object_name, parse_history, segment_name, split_object_name, valid_segment_size,
    valid_stream,
};
use crate::repository::Repository;

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct WalPushReport {
    /// The stream.
    pub stream: String,
    /// The WAL file name.
    pub name: String,
    /// Bytes in the file.
    pub size: u64,
    /// Plain BLAKE3 of the file, hex.
    pub blake3: String,
    /// True if the archive already held this exact file: nothing was written.
    pub already_archived: bool,
    /// Chunks the file was cut into.
    pub chunks: usize,
    /// Chunks that were new to the repository.
    pub new_chunks: u64,
    /// Plaintext bytes of the new chunks.
    pub new_bytes: u64,
    /// Stored (compressed, sealed) bytes of the new chunks.
    pub stored_bytes: u64,
}

/// One archived file as listed (read from the listing, not the object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalListing {
    /// The WAL file name.
    pub name: String,
    /// What it is.
    #[serde(skip)]
    pub file: WalFile,
    /// When the store last wrote the object.
    pub stored: chrono::DateTime<chrono::Utc>,
}

/// A run of segments missing from the archive, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalGap {
    /// The first missing segment.
    pub first: String,
    /// The last missing segment.
    pub last: String,
    /// How many segments are missing.
    pub segments: u64,
}

/// What the archive holds of one stream from a starting segment on,
/// following the timeline that PostgreSQL's recovery would follow (the
/// newest archived timeline whose history descends from the start's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalCoverage {
    /// The stream.
    pub stream: String,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// The starting segment.
    pub from: String,
    /// The timelines followed, oldest first.
    pub timelines: Vec<u32>,
    /// The segment number each of `timelines` begins at (0 for the first).
    pub timeline_begins: Vec<u64>,
    /// The last segment of the unbroken run that starts at `from`; `None`
    /// when `from` itself is missing.
    pub contiguous_to: Option<String>,
    /// When `contiguous_to` was pushed.
    pub contiguous_pushed: Option<chrono::DateTime<chrono::Utc>>,
    /// The newest archived segment on the timelines followed.
    pub newest: Option<String>,
    /// When `newest` was pushed.
    pub newest_pushed: Option<chrono::DateTime<chrono::Utc>>,
    /// Missing runs between `from` and `newest`.
    pub gaps: Vec<WalGap>,
}

impl WalCoverage {
    /// (timeline, segment number) of the end of the unbroken run.
    pub fn contiguous_end(&self) -> Option<(u32, u64)> {
        let name = self.contiguous_to.as_deref()?;
        let f = WalFile::parse(name)?;
        Some((f.timeline(), f.segno(self.segment_size)?))
    }

    /// The timeline recovery reads segment number `segno` from: the newest
    /// of `timelines` that had begun by then.
    pub fn timeline_at(&self, segno: u64) -> u32 {
        let first = self.timelines.first().copied().unwrap_or(1);
        self.timelines.iter().zip(&self.timeline_begins).rev().find(|(_, b)| **b <= segno).map_or(first, |(t, _)| *t)
    }

    /// The name of segment number `segno` on the timeline recovery reads it from.
    pub fn segment_name(&self, segno: u64) -> String {
        segment_name(self.timeline_at(segno), segno, self.segment_size)
    }

    /// True if every segment from `from` up to segment number `segno` is archived.
    pub fn covers(&self, segno: u64) -> bool {
        self.contiguous_end().is_some_and(|(_, end)| segno <= end)
    }
}

/// What a WAL retention pass removed (or would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalForgetReport {
    /// The stream.
    pub stream: String,
    /// Files before this segment went.
    pub before: String,
    /// The files removed (or, in a dry run, that would be).
    pub removed: Vec<String>,
    /// Files kept.
    pub kept: usize,
}

fn check_names(stream: &str, name: &str) -> Result<WalFile> {
    valid_stream(stream).map_err(Error::Invalid)?;
    WalFile::parse_checked(name).map_err(Error::Invalid)
}

fn wal_path(stream: &str, name: &str) -> String {
    FileKind::Wal.path(&object_name(stream, name))
}

impl Repository {
    /// Reads the object describing an archived WAL file.
    pub async fn read_wal(&self, stream: &str, name: &str) -> Result<WalObject> {
        check_names(stream, name)?;
        let object = object_name(stream, name);
        let path = wal_path(stream, name);
        let raw = match self.backend.get(FileKind::Wal, &object).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                return Err(Error::WalNotFound { stream: stream.to_string(), name: name.to_string() });
            }
            Err(e) => return Err(e.into()),
        };
        let plain = self
            .keys
            .open(&raw, aad::WAL)
            .map_err(|_| Error::corrupt(&path, "it fails authentication with the repository key"))?;
        let obj: WalObject =
            serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&path, format!("unreadable ({e})")))?;
        if obj.version != 1 {
            return Err(Error::corrupt(&path, format!("unknown WAL object version {}", obj.version)));
        }
        if obj.stream != stream || obj.name != name {
            return Err(Error::corrupt(
                &path,
                format!("it describes {}/{} (the object was moved or replaced)", obj.stream, obj.name),
            ));
        }
        if !obj.places.is_empty() && obj.places.len() != obj.chunks.len() {
            return Err(Error::corrupt(&path, "its chunk places do not match its chunks"));
        }
        Ok(obj)
    }

    /// Archives one WAL file. Idempotent for identical content; refuses
    /// ([`Error::WalConflict`]) a different file under an archived name.
    pub async fn wal_push(&self, stream: &str, name: &str, data: Bytes) -> Result<WalPushReport> {
        check_names(stream, name)?;
        let size = data.len() as u64;
        let digest = blake3::hash(&data).to_hex().to_string();
        let mut report = WalPushReport {
            stream: stream.to_string(),
            name: name.to_string(),
            size,
            blake3: digest.clone(),
            already_archived: false,
            chunks: 0,
            new_chunks: 0,
            new_bytes: 0,
            stored_bytes: 0,
        };
        let same_as = |existing: &WalObject, report: &mut WalPushReport| {
            if existing.size == size && existing.blake3 == digest {
                report.already_archived = true;
                report.chunks = existing.chunks.len();
                Ok(())
            } else {
                Err(Error::WalConflict {
                    stream: stream.to_string(),
                    name: name.to_string(),
                    archived_size: existing.size,
                    archived_blake3: existing.blake3.clone(),
                    size,
                    blake3: digest.clone(),
                })
            }
        };
        match self.read_wal(stream, name).await {
            Ok(existing) => {
                same_as(&existing, &mut report)?;
                return Ok(report);
            }
            Err(Error::WalNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // Builds that do not know the WAL archive must refuse this repository
        // from now on: their prune would delete archived WAL.
        self.require_version(crate::repofile::config::WAL_FORMAT_VERSION).await?;
        // The session marker goes first so that a prune running now sees
        // this push before it loads the index (see session.rs).
        let session = Session::start_for(self, crate::commands::session::PURPOSE_WAL_PUSH, "").await?;
        let stored = self.wal_store(&session, stream, name, data, &digest, &mut report).await;
        session.end().await;
        match stored {
            Ok(()) => Ok(report),
            // Another push of this name committed first.
            Err(Error::Backend(BackendError::AlreadyExists { .. })) => {
                let existing = self.read_wal(stream, name).await?;
                same_as(&existing, &mut report)?;
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    async fn wal_store(
        &self,
        session: &Session,
        stream: &str,
        name: &str,
        data: Bytes,
        digest: &str,
        report: &mut WalPushReport,
    ) -> Result<()> {
        let key = crate::commands::epoch::writable_key(&*self.load_keyring().await?)?;
        let epoch = key.epoch();
        let index = self.load_index().await?;
        let saver =
            BlobSaver::new(key, self.config.compression, Arc::clone(&self.backend), self.config.pack_size as usize);
        let mut chunks = Vec::new();
        let mut places: Vec<Option<ChunkPlace>> = Vec::new();
        let mut pending: HashSet<Id> = HashSet::new();
        let saved: Result<Vec<crate::repofile::index::IndexedPack>> = async {
            for piece in self.chunker.split_all(data) {
                let id = self.keys.chunk_id(&piece);
                chunks.push(id);
                if index.contains_usable(&id) {
                    places.push(index.lookup(&id).map(|l| ChunkPlace {
                        pack: l.pack,
                        offset: l.offset,
                        length: l.length,
                        raw_len: l.raw_len,
                        epoch: l.epoch,
                    }));
                    continue;
                }
                places.push(None);
                if pending.insert(id) {
                    saver.save(BlobKind::Data, id, piece).await?;
                }
            }
            saver.finish().await
        }
        .await;
        let packs = match saved {
            Ok(p) => p,
            Err(e) => {
                for p in saver.abort().await {
                    let _ = self.backend.delete(FileKind::Pack, &p.id.to_hex()).await;
                }
                return Err(e);
            }
        };
        // Where the new chunks went.
        let mut new_places: BTreeMap<Id, ChunkPlace> = BTreeMap::new();
        for p in &packs {
            for b in &p.blobs {
                new_places.insert(
                    b.id,
                    ChunkPlace { pack: p.id, offset: b.offset, length: b.length, raw_len: b.raw_len, epoch: p.epoch },
                );
            }
        }
        for (id, place) in chunks.iter().zip(places.iter_mut()) {
            if place.is_none() {
                *place = new_places.get(id).copied();
            }
        }
        if !packs.is_empty() {
            let indexed = match self.check_epoch_held(epoch).await {
                Ok(()) => self.write_index_file(&IndexFile { supersedes: vec![], packs: packs.clone() }).await,
                Err(e) => Err(e),
            };
            if let Err(e) = indexed {
                for p in &packs {
                    let _ = self.backend.delete(FileKind::Pack, &p.id.to_hex()).await;
                }
                return Err(e);
            }
        }
        report.chunks = chunks.len();
        report.new_chunks = saver.stats().blobs.load(Ordering::Relaxed);
        report.new_bytes = saver.stats().raw_bytes.load(Ordering::Relaxed);
        report.stored_bytes = saver.stats().stored_bytes.load(Ordering::Relaxed);
        let obj = WalObject {
            version: 1,
            stream: stream.to_string(),
            name: name.to_string(),
            size: report.size,
            blake3: digest.to_string(),
            chunks,
            places,
            pushed: chrono::Utc::now(),
            host: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
        };
        let body = serde_json::to_vec(&obj).expect("WAL object serializes");
        session.check_alive()?;
        self.check_epoch_held(epoch).await?;
        let sealed = Bytes::from(self.keys.seal(&body, aad::WAL));
        self.backend.put(FileKind::Wal, &object_name(stream, name), sealed, PutMode::CreateNew).await?;
        Ok(())
    }

    /// Reads an archived WAL file into `out`, chunk by chunk, and checks its
    /// size and BLAKE3 at the end. On an error `out` holds partial or wrong
    /// data and must be discarded. A name the archive does not hold is
    /// [`Error::WalNotFound`].
    pub async fn wal_fetch_into(&self, stream: &str, name: &str, out: &mut impl std::io::Write) -> Result<WalObject> {
        let obj = self.read_wal(stream, name).await?;
        let path = wal_path(stream, name);
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        for (i, id) in obj.chunks.iter().enumerate() {
            let place = obj.places.get(i).copied().flatten();
            let data = self.load_chunk_hinted(id, place).await?;
            hasher.update(&data);
            size += data.len() as u64;
            out.write_all(&data).map_err(|e| Error::io(format!("writing {name}"), e))?;
        }
        let actual = hasher.finalize().to_hex().to_string();
        if size != obj.size || actual != obj.blake3 {
            return Err(Error::corrupt(
                path,
                format!(
                    "its chunks give {size} bytes with BLAKE3 {actual}, but {} bytes with BLAKE3 {} were archived",
                    obj.size, obj.blake3
                ),
            ));
        }
        Ok(obj)
    }

    /// Reads a whole archived WAL file, checked as [`Repository::wal_fetch_into`] does.
    pub async fn wal_fetch(&self, stream: &str, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.wal_fetch_into(stream, name, &mut out).await?;
        Ok(out)
    }

    /// Every archived file: (stream, listing), streams and files in WAL order.
    pub(crate) async fn wal_listings(&self) -> Result<Vec<(String, WalListing)>> {
        let mut out: Vec<(String, WalListing)> = Vec::new();
        for l in self.backend.list(FileKind::Wal).await? {
            let Some((stream, name)) = split_object_name(&l.name) else { continue };
            let Some(file) = WalFile::parse(name) else { continue };
            out.push((stream.to_string(), WalListing { name: name.to_string(), file, stored: l.modified }));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.file.order_key().cmp(&b.1.file.order_key())));
        Ok(out)
    }

    /// The streams the archive holds files of, sorted.
    pub async fn wal_streams(&self) -> Result<Vec<String>> {
        let set: BTreeSet<String> = self.wal_listings().await?.into_iter().map(|(s, _)| s).collect();
        Ok(set.into_iter().collect())
    }

    /// The files of one stream, in WAL order.
    pub async fn wal_list(&self, stream: &str) -> Result<Vec<WalListing>> {
        valid_stream(stream).map_err(Error::Invalid)?;
        Ok(self.wal_listings().await?.into_iter().filter(|(s, _)| s == stream).map(|(_, l)| l).collect())
    }

    /// The segment size of a stream, from the size of its newest archived
    /// segment (`None` if it has none).
    pub async fn wal_segment_size(&self, stream: &str) -> Result<Option<u64>> {
        let files = self.wal_list(stream).await?;
        let Some(newest) = files.iter().filter(|l| l.file.is_segment()).max_by_key(|l| l.file.position()) else {
            return Ok(None);
        };
        let obj = self.read_wal(stream, &newest.name).await?;
        if !valid_segment_size(obj.size) {
            return Err(Error::corrupt(
                wal_path(stream, &newest.name),
                format!("a segment of {} bytes is not a size PostgreSQL uses", obj.size),
            ));
        }
        Ok(Some(obj.size))
    }

    /// What is archived contiguously from segment `from` on. Timelines are
    /// followed as recovery follows them: to the newest archived timeline
    /// whose history file descends from `from`'s, each segment taken from the
    /// newest timeline that had begun by then.
    pub async fn wal_coverage(&self, stream: &str, segment_size: u64, from: &str) -> Result<WalCoverage> {
        valid_stream(stream).map_err(Error::Invalid)?;
        if !valid_segment_size(segment_size) {
            return Err(Error::Invalid(format!(
                "{segment_size} bytes is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
            )));
        }
        let start = WalFile::parse(from).filter(WalFile::is_segment).and_then(|f| Some((f, f.segno(segment_size)?)));
        let Some((start, start_segno)) = start else {
            return Err(Error::Invalid(format!("{from:?} is not a WAL segment name for {segment_size}-byte segments")));
        };
        let files = self.wal_list(stream).await?;
        // The timeline chain: (timeline, first segment number on it).
        let tli0 = start.timeline();
        let mut chain: Vec<(u32, u64)> = vec![(tli0, 0)];
        let mut histories: Vec<u32> = files
            .iter()
            .filter_map(|l| match l.file {
                WalFile::History { timeline } if timeline > tli0 => Some(timeline),
                _ => None,
            })
            .collect();
        histories.sort_unstable_by(|a, b| b.cmp(a));
        for t in histories {
            let name = format!("{t:08X}.history");
            let text = self.wal_fetch(stream, &name).await?;
            let entries = parse_history(&String::from_utf8_lossy(&text))
                .map_err(|e| Error::corrupt(wal_path(stream, &name), e))?;
            // It must leave `from`'s timeline at or after `from`: a timeline
            // that forked off earlier never held this segment.
            if !entries.iter().any(|e| e.parent == tli0 && e.switch.segno(segment_size) >= start_segno) {
                continue;
            }
            chain.clear();
            let mut begin = 0;
            for e in entries.iter().filter(|e| e.parent >= tli0) {
                chain.push((e.parent, begin));
                begin = e.switch.segno(segment_size);
            }
            chain.push((t, begin));
            break;
        }
        let expected_tli = |segno: u64| chain.iter().rev().find(|(_, b)| *b <= segno).map_or(tli0, |(t, _)| *t);
        let mut present: Vec<u64> = files
            .iter()
            .filter(|l| l.file.is_segment())
            .filter_map(|l| Some((l.file.timeline(), l.file.segno(segment_size)?)))
            .filter(|&(t, s)| s >= start_segno && expected_tli(s) == t)
            .map(|(_, s)| s)
            .collect();
        present.sort_unstable();
        present.dedup();
        let name_of = |s: u64| segment_name(expected_tli(s), s, segment_size);
        let mut gaps = Vec::new();
        let mut prev: Option<u64> = None;
        for &s in &present {
            let expected = prev.map_or(start_segno, |p| p + 1);
            if s > expected {
                gaps.push(WalGap { first: name_of(expected), last: name_of(s - 1), segments: s - expected });
            }
            prev = Some(s);
        }
        let contiguous = if present.first() == Some(&start_segno) {
            let mut end = start_segno;
            for &s in &present[1..] {
                if s != end + 1 {
                    break;
                }
                end = s;
            }
            Some(name_of(end))
        } else {
            None
        };
        let newest = present.last().map(|&s| name_of(s));
        let contiguous_pushed = self.wal_pushed_time(stream, contiguous.as_deref()).await?;
        let newest_pushed = if newest == contiguous {
            contiguous_pushed
        } else {
            self.wal_pushed_time(stream, newest.as_deref()).await?
        };
        Ok(WalCoverage {
            stream: stream.to_string(),
            segment_size,
            from: from.to_string(),
            timelines: chain.iter().map(|(t, _)| *t).collect(),
            timeline_begins: chain.iter().map(|(_, b)| *b).collect(),
            contiguous_to: contiguous,
            contiguous_pushed,
            newest,
            newest_pushed,
            gaps,
        })
    }

    async fn wal_pushed_time(&self, stream: &str, name: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        match name {
            Some(n) => Ok(Some(self.read_wal(stream, n).await?.pushed)),
            None => Ok(None),
        }
    }

    /// WAL retention: removes the segments, partial segments and backup
    /// history files of `stream` that lie before segment `before` on its
    /// timeline or an older one. History files are always kept.
    pub async fn forget_wal(&self, stream: &str, before: &str, dry_run: bool) -> Result<WalForgetReport> {
        let limit = check_names(stream, before)?;
        if !limit.is_segment() {
            return Err(Error::Invalid(format!("{before:?}: WAL retention needs a segment name to keep from")));
        }
        let (limit_pos, limit_tli) = (limit.position(), limit.timeline());
        let mut report =
            WalForgetReport { stream: stream.to_string(), before: before.to_string(), ..Default::default() };
        for l in self.wal_list(stream).await? {
            let old = l.file.position().is_some_and(|p| Some(p) < limit_pos) && l.file.timeline() <= limit_tli;
            if !old {
                report.kept += 1;
                continue;
            }
            if !dry_run {
                self.backend.delete(FileKind::Wal, &object_name(stream, &l.name)).await?;
            }
            report.removed.push(l.name);
        }
        Ok(report)
    }

    /// The chunk ids of every WAL object now listed, reading each object
    /// not already in `cache` (object name -> chunks). Objects deleted while
    /// listing are skipped; unreadable ones are errors.
    pub(crate) async fn wal_chunks(&self, cache: &mut HashMap<String, Vec<Id>>) -> Result<HashSet<Id>> {
        let mut used = HashSet::new();
        for (stream, l) in self.wal_listings().await? {
            let object = object_name(&stream, &l.name);
            if !cache.contains_key(&object) {
                match self.read_wal(&stream, &l.name).await {
                    Ok(obj) => {
                        cache.insert(object.clone(), obj.chunks);
                    }
                    Err(Error::WalNotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            used.extend(cache[&object].iter().copied());
        }
        Ok(used)
    }
}
