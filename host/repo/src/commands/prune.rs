//! `prune`: removes data no snapshot references, in two phases, without
//! stopping backups.
//!
//! Phase 1 finds packs whose blobs no snapshot, archived WAL file or
//! stream item needs (and repacks the used
//! blobs of mostly-unused packs), then writes a marker `prune/<id>` naming
//! them. From then on new backups do not deduplicate against those packs.
//! Phase 2 deletes a marker's packs once (a) the marker is older than the
//! grace period and (b) no live backup session began before the marker (with
//! a margin for clock skew); it first recomputes what snapshots reference,
//! so a pack that a concurrent backup came to rely on is kept. The new index
//! is written before old index files and packs are deleted, so a crash at
//! any point leaves every snapshot readable.
//!
//! Only one prune runs at a time: it holds the repository's exclusive lease
//! ([`crate::commands::lease`]) from start to end and checks it still holds
//! it before each step that deletes. A pack that no index lists is read
//! before it is marked: if a snapshot needs a blob that only it holds (an
//! index file was lost, or the pack sits under another name), the pack is
//! indexed again, or its needed blobs are copied out when its name does not
//! match its content, instead of being deleted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::FileKind;
use crate::blob::{self, BlobKind};
use crate::commands::lease::Lease;
use crate::commands::session::live_sessions;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::packer::BlobSaver;
use crate::repofile::aad;
use crate::repofile::index::{IndexFile, IndexedPack};
use crate::repofile::pack::PackEntry;
use crate::repository::Repository;

/// Sessions that began up to this long after a marker still hold it back
/// (clock skew between hosts).
const SKEW_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// A pending-deletion marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneMarker {
    /// When phase 1 wrote it.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Packs to delete.
    pub packs: Vec<Id>,
}

/// Prune settings.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Minimum age of a marker before its packs are deleted.
    pub grace: Duration,
    /// Repack a pack when more than this share of its bytes is unused.
    pub max_unused: f64,
    /// Report only.
    pub dry_run: bool,
    /// Minimum age of a staging file left by a killed local write (or a pack
    /// file a killed backup was filling) before it is removed, while no
    /// backup is in progress (a live upload's staging file is younger than
    /// any timeout).
    pub staging_grace: Duration,
    /// Also rewrite every pack sealed under an older key epoch, then retire
    /// the epochs nothing is sealed under any more.
    pub reencrypt: bool,
    /// How long this prune's lease outlives a crash of this process before
    /// a prune on another machine may take it over.
    pub lease_expiry: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: Duration::ZERO,
            max_unused: 0.2,
            dry_run: false,
            staging_grace: Duration::from_secs(3600),
            reencrypt: false,
            lease_expiry: crate::commands::lease::DEFAULT_EXPIRY,
        }
    }
}

/// What prune did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Packs marked in phase 1.
    pub marked_packs: usize,
    /// Blobs copied out of partly used packs.
    pub repacked_blobs: usize,
    /// Packs deleted in phase 2.
    pub deleted_packs: usize,
    /// Bytes freed.
    pub deleted_bytes: u64,
    /// Packs kept after all because a snapshot came to use them.
    pub resurrected_packs: usize,
    /// Markers left for a later prune (too young, or backups still running).
    pub waiting_markers: usize,
    /// Index files replaced by one consolidated index.
    pub replaced_index_files: usize,
    /// Dead backup session markers removed.
    pub removed_sessions: usize,
    /// Staging files of killed local writes removed.
    pub removed_staging_files: usize,
    /// Packs under an older key epoch whose blobs were copied into packs
    /// under the current one (`reencrypt`).
    pub reencrypted_packs: usize,
    /// Key epochs whose key file was deleted (`reencrypt`).
    pub retired_epochs: Vec<u32>,
    /// Older key epochs kept: packs are still sealed under them (waiting for
    /// a marker), or a running backup may still write under them.
    pub kept_epochs: Vec<u32>,
    /// Packs in no index that hold blobs a snapshot needs, indexed again.
    pub reindexed_packs: usize,
    /// Packs in no index, under a name that does not match their content,
    /// whose needed blobs were copied into new packs.
    pub rescued_packs: usize,
    /// Packs in no index whose header cannot be read: left in place, named.
    pub unreadable_packs: Vec<String>,
    /// Indexed packs missing from storage, whose entries the consolidated
    /// index leaves out (`check` names what they took with them).
    pub dropped_missing_packs: Vec<String>,
}

/// Reads every prune marker: (name, last modified, marker).
pub async fn read_markers(repo: &Repository) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>, PruneMarker)>> {
    let mut out = Vec::new();
    for l in repo.backend.list(FileKind::PruneMarker).await? {
        let plain = match repo.read_sealed(FileKind::PruneMarker, &l.name, aad::PRUNE_MARKER).await {
            Ok(p) => p,
            Err(Error::Backend(e)) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let m: PruneMarker = serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt(FileKind::PruneMarker.path(&l.name), e.to_string()))?;
        out.push((l.name, l.modified, m));
    }
    Ok(out)
}

/// What prune has read of the objects that reference blobs, so that its
/// second phase reads only what appeared since the first.
#[derive(Default)]
struct UsedCache {
    /// Snapshot id -> its tree and data blobs.
    snapshots: HashMap<Id, Vec<Id>>,
    /// WAL object name -> its chunks.
    wal: HashMap<String, Vec<Id>>,
    /// Stream item object name -> its chunks.
    streams: HashMap<String, Vec<Id>>,
}

impl Repository {
    /// Every blob referenced by a snapshot (tree and data), an archived
    /// WAL file or a stream item, reading each object not already in `cache`.
    async fn used_blobs(&self, cache: &mut UsedCache) -> Result<HashSet<Id>> {
        let mut used = self.snapshot_blobs(&mut cache.snapshots).await?;
        used.extend(self.wal_chunks(&mut cache.wal).await?);
        used.extend(self.stream_chunks(&mut cache.streams).await?);
        Ok(used)
    }

    async fn snapshot_blobs(&self, cache: &mut HashMap<Id, Vec<Id>>) -> Result<HashSet<Id>> {
        let listed = self.backend.list(FileKind::Snapshot).await?;
        let mut used = HashSet::new();
        for l in listed {
            let Some(id) = l.id() else { continue };
            if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(id) {
                let snap = match self.open_snapshot(&id).await {
                    Ok(s) => s,
                    // Forgotten while we were reading.
                    Err(Error::SnapshotNotFound(_)) => continue,
                    // Not knowing what a snapshot references, prune cannot
                    // know what is unused.
                    Err(e @ (Error::Corrupt { .. } | Error::MissingBlob { .. })) => {
                        return Err(Error::Corrupt {
                            object: FileKind::Snapshot.path(&l.name),
                            reason: format!("prune cannot tell what this snapshot references ({e})"),
                            hint: "; prune stopped without deleting anything. If blobs are missing from the index, \
                                   run `coffer repair index`; to set an unreadable snapshot aside, run `coffer repair \
                                   snapshots`; then prune again"
                                .into(),
                        });
                    }
                    Err(e) => return Err(e),
                };
                let mut ids = snap.manifest.tree.clone();
                for e in &snap.entries {
                    ids.extend_from_slice(&e.content);
                }
                slot.insert(ids);
            }
            used.extend(cache[&id].iter().copied());
        }
        Ok(used)
    }

    /// Runs both phases of prune, holding the repository's exclusive lease
    /// (a dry run takes none: it changes nothing).
    pub async fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        if opts.dry_run {
            return self.prune_leased(opts, None).await;
        }
        let operation = if opts.reencrypt { "prune --reencrypt" } else { "prune" };
        let lease = Lease::acquire(self, operation, opts.lease_expiry).await?;
        let result = self.prune_leased(opts, Some(&lease)).await;
        lease.release_after(&result).await;
        result
    }

    async fn prune_leased(&self, opts: &PruneOptions, lease: Option<&Lease>) -> Result<PruneReport> {
        // Called before each step that deletes or replaces something.
        let still_held = || async {
            match lease {
                Some(l) => l.check().await,
                None => Ok(()),
            }
        };
        let mut report = PruneReport::default();
        let keyring = self.load_keyring().await?;
        let current = keyring.current().clone();
        let files = self.read_index_files().await?;
        let pack_epoch: HashMap<Id, u32> =
            files.iter().flat_map(|(_, f)| f.packs.iter().map(|p| (p.id, p.epoch))).collect();
        let markers = read_markers(self).await?;
        let already_marked: HashSet<Id> = markers.iter().flat_map(|(_, _, m)| m.packs.iter().copied()).collect();
        let full = std::sync::Arc::new(MasterIndex::build(&files, &already_marked));
        *self.index.write().expect("index lock") = std::sync::Arc::clone(&full);
        let mut snap_cache = UsedCache::default();
        let used = self.used_blobs(&mut snap_cache).await?;

        // Phase 1: classify packs not yet marked.
        let mut pack_used: HashMap<Id, (u64, u64)> = HashMap::new(); // (used bytes, total blob bytes)
        let mut keep_blobs: HashMap<Id, Vec<(Id, BlobKind, u32, u32)>> = HashMap::new();
        // A pack can be listed by more than one index file (a prune that was
        // killed after writing its consolidated index and before deleting the
        // files it replaces): count and copy each pack's blobs once, or a
        // repack would store every blob of it twice.
        let mut classified: HashSet<Id> = HashSet::new();
        for (_, file) in &files {
            for p in file.packs.iter().filter(|p| classified.insert(p.id)) {
                for b in &p.blobs {
                    let slot = pack_used.entry(p.id).or_default();
                    slot.1 += b.length as u64;
                    // A blob counts as used in the one pack the index resolves it to.
                    let canonical = full.lookup(&b.id).is_some_and(|loc| loc.pack == p.id);
                    if used.contains(&b.id) && canonical {
                        slot.0 += b.length as u64;
                        keep_blobs.entry(p.id).or_default().push((b.id, b.kind, b.offset, b.length));
                    }
                }
            }
        }
        let listed_packs = self.backend.list(FileKind::Pack).await?;
        let mut to_mark: Vec<Id> = Vec::new();
        let mut to_repack: Vec<Id> = Vec::new();
        // Packs in no index (left by a failed or running backup, or by a
        // lost index file, or stored under another name): what does a
        // snapshot need of them?
        let mut reindexed: Vec<IndexedPack> = Vec::new();
        let mut rescue: Vec<(Id, u32, Vec<PackEntry>, bytes::Bytes)> = Vec::new();
        let mut unreadable: HashSet<Id> = HashSet::new();
        let mut recovered: HashSet<Id> = HashSet::new();
        let listed_ids: HashSet<Id> = listed_packs.iter().filter_map(|l| l.id()).collect();
        // A blob the index puts in a pack gone from storage is not available.
        let available = |id: &Id| full.lookup(id).is_some_and(|loc| listed_ids.contains(&loc.pack));
        for l in &listed_packs {
            let Some(id) = l.id() else { continue };
            if pack_used.contains_key(&id) {
                continue;
            }
            let (epoch, entries) = match self.read_pack_header(&id, l.size).await {
                Ok(h) => h,
                Err(Error::Backend(e)) if e.is_not_found() => continue,
                Err(e) => {
                    report.unreadable_packs.push(format!("{}: {e}", FileKind::Pack.path(&l.name)));
                    unreadable.insert(id);
                    continue;
                }
            };
            let needed: Vec<PackEntry> = entries
                .iter()
                .filter(|e| used.contains(&e.id) && !available(&e.id) && !recovered.contains(&e.id))
                .cloned()
                .collect();
            if needed.is_empty() {
                if !already_marked.contains(&id) {
                    to_mark.push(id);
                }
                continue;
            }
            if opts.dry_run {
                report.reindexed_packs += 1;
                continue;
            }
            recovered.extend(needed.iter().map(|e| e.id));
            // Indexed as it is when its name is its content's hash (what
            // `check --read-data` verifies); otherwise its needed blobs are
            // copied out and the pack goes the way of any unused one.
            let data = self.backend.get(FileKind::Pack, &l.name).await?;
            if Id::of_bytes(&data) == id {
                report.reindexed_packs += 1;
                reindexed.push(IndexedPack { id, size: data.len() as u64, epoch, blobs: entries });
            } else {
                report.rescued_packs += 1;
                rescue.push((id, epoch, needed, data));
                if !already_marked.contains(&id) {
                    to_mark.push(id);
                }
            }
        }
        for l in &listed_packs {
            let Some(id) = l.id() else { continue };
            if already_marked.contains(&id) {
                continue;
            }
            match pack_used.get(&id) {
                // In no index: decided above.
                None => {}
                Some(&(0, _)) => to_mark.push(id),
                Some(_)
                    if opts.reencrypt
                        && pack_epoch
                            .get(&id)
                            // Packs under an epoch whose key is gone cannot be read;
                            // `check` reports them.
                            .is_some_and(|e| *e < current.epoch() && keyring.get(*e).is_some()) =>
                {
                    report.reencrypted_packs += 1;
                    to_repack.push(id)
                }
                Some(&(u, total)) if total > 0 && (total - u) as f64 / total as f64 > opts.max_unused => {
                    to_repack.push(id)
                }
                Some(_) => {}
            }
        }
        report.marked_packs = to_mark.len() + to_repack.len();
        report.repacked_blobs = to_repack.iter().map(|p| keep_blobs.get(p).map_or(0, Vec::len)).sum();
        if opts.dry_run {
            report.waiting_markers = markers.len();
            return Ok(report);
        }
        if !reindexed.is_empty() {
            self.write_index_file(&IndexFile { supersedes: vec![], packs: reindexed }).await?;
        }
        if !to_repack.is_empty() || !rescue.is_empty() {
            let saver = BlobSaver::new(
                current.clone(),
                self.config.compression,
                std::sync::Arc::clone(&self.backend),
                self.config.pack_size as usize,
            );
            for pack in &to_repack {
                let epoch = pack_epoch.get(pack).copied().unwrap_or_default();
                let key = self.data_key(epoch).await.map_err(|e| Error::Corrupt {
                    object: FileKind::Pack.path(&pack.to_hex()),
                    reason: e.to_string(),
                    hint: "; prune stopped without deleting anything".into(),
                })?;
                let data = self.backend.get(FileKind::Pack, &pack.to_hex()).await?;
                for (id, kind, offset, length) in keep_blobs.get(pack).into_iter().flatten() {
                    let (start, end) = (*offset as usize, *offset as usize + *length as usize);
                    let sealed = data.get(start..end).ok_or_else(|| Error::Corrupt {
                        object: FileKind::Pack.path(&pack.to_hex()),
                        reason: format!("blob {id} lies beyond the end of the pack"),
                        hint: "; prune stopped without deleting anything".into(),
                    })?;
                    let plain = blob::decode(&self.keys, &key, *kind, id, sealed, 0).map_err(|e| Error::Corrupt {
                        object: FileKind::Pack.path(&pack.to_hex()),
                        reason: format!("blob {id}: {e}"),
                        hint: "; prune stopped without deleting anything".into(),
                    })?;
                    saver.save(*kind, *id, plain).await.map_err(repack_failed)?;
                }
            }
            for (pack, epoch, needed, data) in &rescue {
                let key = self.data_key(*epoch).await?;
                for e in needed {
                    let (start, end) = (e.offset as usize, e.offset as usize + e.length as usize);
                    let copied = data
                        .get(start..end)
                        .ok_or_else(|| format!("blob {} lies beyond the end of the pack", e.id))
                        .and_then(|sealed| {
                            blob::decode(&self.keys, &key, e.kind, &e.id, sealed, e.raw_len as usize)
                                .map_err(|err| format!("blob {}: {err}", e.id))
                        });
                    match copied {
                        Ok(plain) => saver.save(e.kind, e.id, plain).await?,
                        // The pack is kept: what could not be copied stays where it is.
                        Err(reason) => {
                            report.unreadable_packs.push(format!("{}: {reason}", FileKind::Pack.path(&pack.to_hex())));
                            unreadable.insert(*pack);
                        }
                    }
                }
            }
            let packs = saver.finish().await.map_err(repack_failed)?;
            if !packs.is_empty() {
                self.write_index_file(&IndexFile { supersedes: vec![], packs }).await?;
            }
        }
        let mut all_markers = markers;
        to_mark.retain(|p| !unreadable.contains(p));
        if !to_mark.is_empty() || !to_repack.is_empty() {
            let marker =
                PruneMarker { created: chrono::Utc::now(), packs: to_mark.iter().chain(&to_repack).copied().collect() };
            let body = serde_json::to_vec(&marker).expect("serializes");
            let id = self.write_sealed(FileKind::PruneMarker, aad::PRUNE_MARKER, &body).await?;
            all_markers.push((id.to_hex(), marker.created, marker));
        }

        // Phase 2.
        let (live, dead) = live_sessions(self).await?;
        let now = chrono::Utc::now();
        let grace = chrono::Duration::from_std(opts.grace).unwrap_or(chrono::Duration::MAX);
        let ripe: Vec<_> = all_markers
            .into_iter()
            .filter(|(_, _, m)| {
                let ok = now - m.created >= grace
                    && !live.iter().any(|s| {
                        s.started
                            < m.created
                                .checked_add_signed(SKEW_MARGIN)
                                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
                    });
                if !ok {
                    report.waiting_markers += 1;
                }
                ok
            })
            .collect();
        if !ripe.is_empty() {
            // Re-read the index and what snapshots use now: backups that
            // committed since phase 1 may rely on marked packs.
            let files = self.read_index_files().await?;
            let no_marks = HashSet::new();
            *self.index.write().expect("index lock") = std::sync::Arc::new(MasterIndex::build(&files, &no_marks));
            let used = self.used_blobs(&mut snap_cache).await?;
            // Listed after the index files were read: a backup stores its
            // packs before the index file naming them, so an indexed pack
            // missing here is gone from storage, not yet to come.
            let present: HashSet<Id> = self.backend.list(FileKind::Pack).await?.iter().filter_map(|l| l.id()).collect();
            let mut doomed: HashSet<Id> = HashSet::new();
            for (_, _, m) in &ripe {
                doomed.extend(m.packs.iter().copied().filter(|p| !unreadable.contains(p)));
            }
            // A blob still used must survive in some pack that is not doomed.
            let mut survivors: HashSet<Id> = HashSet::new();
            for (_, f) in &files {
                for p in f.packs.iter().filter(|p| !doomed.contains(&p.id) && present.contains(&p.id)) {
                    survivors.extend(p.blobs.iter().map(|b| b.id));
                }
            }
            let needed: Vec<Id> = files
                .iter()
                .flat_map(|(_, f)| f.packs.iter())
                .filter(|p| doomed.contains(&p.id))
                .filter(|p| p.blobs.iter().any(|b| used.contains(&b.id) && !survivors.contains(&b.id)))
                .map(|p| p.id)
                .collect();
            for p in needed {
                if doomed.remove(&p) {
                    report.resurrected_packs += 1;
                }
            }
            // One consolidated index without the doomed packs.
            let read_ids: Vec<Id> = files.iter().map(|(id, _)| *id).collect();
            let mut packs = Vec::new();
            let mut seen = HashSet::new();
            for (_, f) in files {
                for p in f.packs {
                    if !present.contains(&p.id) {
                        // Entries of a pack gone from storage hide the copies
                        // of its blobs that other packs hold.
                        if seen.insert(p.id) {
                            report.dropped_missing_packs.push(FileKind::Pack.path(&p.id.to_hex()));
                        }
                        continue;
                    }
                    if !doomed.contains(&p.id) && seen.insert(p.id) {
                        packs.push(p);
                    }
                }
            }
            still_held().await?;
            self.write_index_file(&IndexFile { supersedes: read_ids.clone(), packs }).await?;
            for id in &read_ids {
                self.backend.delete(FileKind::Index, &id.to_hex()).await?;
            }
            report.replaced_index_files = read_ids.len();
            let sizes: HashMap<String, u64> = listed_packs.iter().map(|l| (l.name.clone(), l.size)).collect();
            still_held().await?;
            for p in &doomed {
                self.backend.delete(FileKind::Pack, &p.to_hex()).await?;
                report.deleted_packs += 1;
                report.deleted_bytes += sizes.get(&p.to_hex()).copied().unwrap_or(0);
            }
            for (name, _, _) in &ripe {
                self.backend.delete(FileKind::PruneMarker, name).await?;
            }
        }
        for name in dead {
            self.backend.delete(FileKind::Session, &name).await?;
            report.removed_sessions += 1;
        }
        // A backup fills its pack file as its source delivers, and a source
        // may pause for longer than the grace: sweep only while none runs.
        if live.is_empty() {
            report.removed_staging_files = self.backend.remove_stale_staging(opts.staging_grace).await?;
        }
        if opts.reencrypt {
            still_held().await?;
            (report.retired_epochs, report.kept_epochs) = self.retire_epochs().await?;
        }
        self.load_index().await?;
        Ok(report)
    }
}

/// A repack that could not write its new packs (a full disk, a store
/// refusing writes), in prune's own words: no snapshot is involved, and
/// the packs being repacked are still in place.
fn repack_failed(e: Error) -> Error {
    match e {
        Error::PackWrite(why) => Error::PackWrite(format!(
            "prune could not store the blobs it repacks ({why}); the packs being repacked were left in place: \
             free some space or fix the store, then run prune again"
        )),
        other => other,
    }
}
