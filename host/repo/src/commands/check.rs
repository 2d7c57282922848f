//! `check`: structure, and optionally a full or sampled read-back of data.
//!
//! Structure: every index file decrypts, every indexed pack exists with the
//! size the index says, every snapshot's manifest and tree are readable and
//! every blob they reference is indexed, and so is every chunk of every
//! archived WAL file. `read_data`: each selected pack is
//! downloaded, its BLAKE3 checked against its name, its header opened and
//! compared with the index, and every blob decrypted, decompressed and
//! re-hashed. Damaged packs are named together with the snapshots and paths
//! that lose data, and the archived WAL files and stream items that do.
//! Stream items are also checked against their names, and a key stored
//! twice is reported.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;

use crate::backend::FileKind;
use crate::blob;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repofile::pack;
use crate::repository::Repository;

/// How much data to read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// A random share of the packs, in percent (0 < p <= 100).
    Subset(f64),
}

/// A snapshot path that lost data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DamagedPath {
    /// Snapshot id.
    pub snapshot: Id,
    /// Entry path (or `<tree>` when the entry list itself is damaged).
    pub path: String,
}

/// The findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Problems that lose or risk data.
    pub errors: Vec<String>,
    /// Things to tidy up that lose nothing (unindexed packs, markers).
    pub warnings: Vec<String>,
    /// Packs found damaged or missing.
    pub damaged_packs: BTreeSet<Id>,
    /// Snapshot paths that depend on damaged or missing data.
    pub damaged_paths: BTreeSet<DamagedPath>,
    /// Archived WAL files (`<stream>/<name>`) that depend on damaged or missing data.
    pub damaged_wal: BTreeSet<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Archived WAL files checked.
    pub wal_files: usize,
    /// Stream items (`<owner>/<stream>/<key>`) that are unreadable, moved,
    /// or depend on damaged or missing data.
    pub damaged_stream_items: BTreeSet<String>,
    /// Stream items checked (legacy WAL archive files are in `wal_files`).
    pub stream_items: usize,
    /// Stream checkpoints checked.
    pub stream_checkpoints: usize,
    /// Packs read back.
    pub packs_read: usize,
    /// Blobs verified by read-back.
    pub blobs_read: usize,
}

impl CheckReport {
    /// True if nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Where a pack's header puts each blob: (offset, length) of every copy.
type BlobPlaces = HashMap<Id, Vec<(u32, u32)>>;

impl Repository {
    /// Checks the repository.
    pub async fn check(&self, read: ReadData) -> Result<CheckReport> {
        let mut r = CheckReport::default();
        // Snapshots are listed before the index is read, so a backup that
        // commits meanwhile (its index file lands first) is not taken for
        // damage.
        let snapshot_list = self.backend.list(FileKind::Snapshot).await?;
        let wal_list = self.wal_listings().await?;
        let stream_list = self.backend.list(FileKind::Stream).await?;
        let marked = self.marked_packs().await?;
        // The keyring before the index: `prune --reencrypt` retires an epoch
        // only after no index file names a pack under it, so in this order a
        // concurrent re-encryption is never taken for a lost key.
        let keyring = self.load_keyring().await?;
        // Index files.
        let mut files = Vec::new();
        for l in self.backend.list(FileKind::Index).await? {
            let Some(id) = l.id() else { continue };
            match self.read_index_file(&id).await {
                Ok(f) => files.push((id, f)),
                Err(e) => r.errors.push(e.to_string()),
            }
        }
        let idx = std::sync::Arc::new(MasterIndex::build(&files, &marked));
        *self.index.write().expect("index lock") = std::sync::Arc::clone(&idx);
        // Packs present vs indexed.
        let listed: HashMap<Id, u64> =
            self.backend.list(FileKind::Pack).await?.into_iter().filter_map(|l| Some((l.id()?, l.size))).collect();
        let mut bad_packs: HashSet<Id> = HashSet::new();
        let mut lost_epochs: BTreeSet<u32> = BTreeSet::new();
        for (p, _, epoch) in idx.packs_with_epochs() {
            if keyring.get(epoch).is_none() {
                lost_epochs.insert(epoch);
                bad_packs.insert(p);
            }
        }
        for e in lost_epochs {
            if keyring.unreadable_reason(e).is_none() {
                r.errors.push(Error::MissingEpoch(e).to_string());
            }
        }
        for (e, reason) in keyring.unreadable() {
            r.errors.push(
                Error::Corrupt {
                    object: FileKind::Epoch.path(&crate::repofile::epoch::name(e)),
                    reason: reason.to_string(),
                    hint: format!(
                        "; data sealed under key epoch {e} cannot be read until the file is restored from a copy of \
                         the repository"
                    ),
                }
                .to_string(),
            );
        }
        for (p, size) in idx.packs() {
            match listed.get(&p) {
                None => {
                    r.errors
                        .push(format!("pack {} is indexed but missing from storage", FileKind::Pack.path(&p.to_hex())));
                    bad_packs.insert(p);
                }
                Some(&actual) if actual != size => {
                    r.errors.push(format!(
                        "pack {} has {actual} bytes, the index says {size} (truncated or replaced)",
                        FileKind::Pack.path(&p.to_hex())
                    ));
                    bad_packs.insert(p);
                }
                Some(_) => {}
            }
        }
        let indexed: HashSet<Id> = idx.packs().map(|(p, _)| p).collect();
        let unindexed = listed.keys().filter(|p| !indexed.contains(p) && !marked.contains(p)).count();
        if unindexed > 0 {
            r.warnings.push(format!(
                "{unindexed} packs are in no index (left by an interrupted backup or prune, or by a lost index file); \
                 `coffer prune` indexes again those holding data a snapshot needs and removes the rest, and \
                 `coffer repair index` indexes every pack"
            ));
        }
        // Read back data.
        let mut bad_blobs: HashSet<Id> = HashSet::new();
        if read != ReadData::None {
            let mut packs: Vec<(Id, u64)> = idx.packs().filter(|(p, _)| listed.contains_key(p)).collect();
            packs.sort();
            if let ReadData::Subset(pct) = read {
                let want = ((packs.len() as f64 * pct / 100.0).ceil() as usize).clamp(1, packs.len().max(1));
                use rand::seq::SliceRandom;
                packs.shuffle(&mut rand::thread_rng());
                packs.truncate(want);
            }
            let mut expected: HashMap<Id, Vec<(Id, crate::index::BlobLocation)>> = HashMap::new();
            for (id, loc) in idx.entries() {
                expected.entry(loc.pack).or_default().push((id, loc));
            }
            let results: Vec<(Id, Vec<String>, Vec<Id>, usize)> = futures::stream::iter(packs)
                .map(|(p, _)| {
                    let exp = expected.remove(&p).unwrap_or_default();
                    let keyring = std::sync::Arc::clone(&keyring);
                    async move { self.read_back_pack(p, exp, keyring).await }
                })
                .buffer_unordered(2)
                .collect()
                .await;
            for (p, errs, blobs, n) in results {
                r.packs_read += 1;
                r.blobs_read += n;
                if !errs.is_empty() {
                    bad_packs.insert(p);
                    r.errors.extend(errs);
                    bad_blobs.extend(blobs);
                }
            }
        }
        for p in &bad_packs {
            r.damaged_packs.insert(*p);
        }
        // Blobs lost with a missing or truncated pack.
        for (id, loc) in idx.entries() {
            if bad_packs.contains(&loc.pack) {
                bad_blobs.insert(id);
            }
        }
        // Snapshots.
        for l in snapshot_list {
            let Some(sid) = l.id() else { continue };
            r.snapshots += 1;
            let manifest = match self.read_manifest(&sid).await {
                Ok(m) => m,
                // Forgotten while we were checking.
                Err(Error::SnapshotNotFound(_)) => {
                    r.snapshots -= 1;
                    continue;
                }
                Err(e) => {
                    r.errors.push(format!("snapshot {}: {e}", sid.short()));
                    continue;
                }
            };
            if let Some(t) = manifest.tree.iter().find(|t| !idx.contains(t) || bad_blobs.contains(t)) {
                r.errors.push(format!("snapshot {}: tree blob {} is missing or damaged", sid.short(), t.short()));
                r.damaged_paths.insert(DamagedPath { snapshot: sid, path: "<tree>".into() });
                continue;
            }
            let snap = match self.open_snapshot(&sid).await {
                Ok(s) => s,
                Err(e) => {
                    r.errors.push(format!("snapshot {}: {e}", sid.short()));
                    r.damaged_paths.insert(DamagedPath { snapshot: sid, path: "<tree>".into() });
                    continue;
                }
            };
            for e in &snap.entries {
                for c in &e.content {
                    if !idx.contains(c) {
                        r.errors.push(format!(
                            "snapshot {} {}: data blob {} is in no index",
                            sid.short(),
                            e.path,
                            c.short()
                        ));
                        r.damaged_paths.insert(DamagedPath { snapshot: sid, path: e.path.clone() });
                        break;
                    }
                    if bad_blobs.contains(c) {
                        r.damaged_paths.insert(DamagedPath { snapshot: sid, path: e.path.clone() });
                        break;
                    }
                }
            }
        }
        // Archived WAL files.
        let wal_names: Vec<(String, String)> = wal_list.iter().map(|(s, l)| (s.clone(), l.name.clone())).collect();
        for (stream, l) in wal_list {
            let obj = match self.read_wal(&stream, &l.name).await {
                Ok(o) => o,
                // Removed by WAL retention while we were checking.
                Err(Error::WalNotFound { .. }) => continue,
                Err(e) => {
                    r.wal_files += 1;
                    r.errors.push(format!("WAL file {stream}/{}: {e}", l.name));
                    r.damaged_wal.insert(format!("{stream}/{}", l.name));
                    continue;
                }
            };
            r.wal_files += 1;
            if let Some(c) = obj.chunks.iter().find(|c| !idx.contains(c)) {
                r.errors.push(format!("WAL file {stream}/{}: data blob {} is in no index", l.name, c.short()));
                r.damaged_wal.insert(format!("{stream}/{}", l.name));
            } else if obj.chunks.iter().any(|c| bad_blobs.contains(c)) {
                r.damaged_wal.insert(format!("{stream}/{}", l.name));
            }
        }
        // Stream items.
        let legacy: Vec<(String, String)> = wal_names;
        self.check_streams(stream_list, &legacy, &idx, &bad_blobs, &mut r).await;
        for d in &r.damaged_paths {
            r.errors.push(format!("snapshot {} loses data at {}", d.snapshot.short(), d.path));
        }
        for w in &r.damaged_wal {
            r.errors.push(format!("archived WAL file {w} loses data"));
        }
        for s in &r.damaged_stream_items {
            r.errors.push(format!("stream item {s} loses data"));
        }
        Ok(r)
    }

    /// Downloads one pack and verifies everything in it. Returns the pack,
    /// problems, damaged blob ids and the number of blobs verified.
    async fn read_back_pack(
        &self,
        p: Id,
        expected: Vec<(Id, crate::index::BlobLocation)>,
        keyring: std::sync::Arc<crate::crypto::Keyring>,
    ) -> (Id, Vec<String>, Vec<Id>, usize) {
        let path = FileKind::Pack.path(&p.to_hex());
        let keys = self.keys.clone();
        let backend = self.backend.clone();
        let rt = tokio::runtime::Handle::current();
        // Read and checked on one blocking-pool thread: a local pack is read
        // in place, and the thread that allocates the pack's buffer frees it
        // (handing it between threads kept a glibc arena per thread full).
        let res = tokio::task::spawn_blocking(move || {
            let data = match rt.block_on(backend.get_here(FileKind::Pack, &p.to_hex())) {
                Ok(d) => d,
                Err(e) => return (vec![e.to_string()], expected.iter().map(|(id, _)| *id).collect(), 0),
            };
            let mut errs = Vec::new();
            let mut bad = Vec::new();
            if Id::of_bytes(&data) != p {
                errs.push(format!("pack {path}: content does not match its name (bytes changed or truncated)"));
            }
            // A blob may sit in a pack more than once; any copy will do.
            let (epoch, header): (Option<u32>, BlobPlaces) = match pack::parse_pack(&keyring, &data) {
                Ok((epoch, h)) => {
                    let mut m = BlobPlaces::new();
                    for e in h {
                        m.entry(e.id).or_default().push((e.offset, e.length));
                    }
                    (Some(epoch), m)
                }
                Err(e) => {
                    errs.push(format!("pack {path}: header: {e}"));
                    (None, HashMap::new())
                }
            };
            let mut n = 0;
            if let (Some(e), Some((_, loc))) = (epoch, expected.iter().find(|(_, l)| Some(l.epoch) != epoch)) {
                errs.push(format!("pack {path}: the index says key epoch {}, the pack says {e}", loc.epoch));
            }
            for (id, loc) in &expected {
                if !header.is_empty() {
                    match header.get(id) {
                        Some(h) if h.contains(&(loc.offset, loc.length)) => {}
                        _ => errs.push(format!("pack {path}: blob {} is not where the index says", id.short())),
                    }
                }
                let (start, end) = (loc.offset as usize, loc.offset as usize + loc.length as usize);
                if end > data.len() {
                    errs.push(format!("pack {path}: blob {} lies beyond the end of the pack", id.short()));
                    bad.push(*id);
                    continue;
                }
                let Some(key) = keyring.get(loc.epoch) else {
                    bad.push(*id);
                    continue;
                };
                n += 1;
                if let Err(e) = blob::decode(&keys, key, loc.kind, id, &data[start..end], loc.raw_len as usize) {
                    errs.push(format!("pack {path}: {} blob {} at offset {start}: {e}", loc.kind.name(), id.short()));
                    bad.push(*id);
                }
            }
            (errs, bad, n)
        })
        .await;
        match res {
            Ok((errs, bad, n)) => (p, errs, bad, n),
            Err(e) => (p, vec![format!("checking pack {}: {e}", p.short())], Vec::new(), 0),
        }
    }
}
