//! `repair index`: rebuilds the index from the pack headers alone.
//! `repair snapshots`: sets aside snapshot files that cannot be read.
//! Both hold the repository's exclusive lease, so neither runs beside a
//! prune.

use serde::Serialize;

use crate::backend::{FileKind, PutMode};
use crate::commands::lease::{DEFAULT_EXPIRY, Lease};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repofile::index::{IndexFile, IndexedPack};
use crate::repofile::pack;
use crate::repository::Repository;

/// What `repair index` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Packs whose headers were read and indexed.
    pub packs_indexed: usize,
    /// Blobs indexed.
    pub blobs_indexed: usize,
    /// Packs whose header could not be read (left alone, named here).
    pub unreadable_packs: Vec<String>,
    /// Old index files replaced.
    pub replaced_index_files: usize,
    /// Unreadable packs whose entries were kept from the old index.
    pub carried_over: usize,
}

/// What `repair snapshots` did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotRepairReport {
    /// Snapshots whose manifest and tree read back.
    pub readable: usize,
    /// Damaged snapshot files moved to `quarantine/snapshots/` (or that
    /// would be, on a dry run): (path, what is wrong).
    pub quarantined: Vec<(String, String)>,
    /// Snapshots whose manifest reads but whose tree does not (a blob is
    /// missing or damaged): left in place, since `repair index` or a copy of
    /// the lost pack may bring them back. (snapshot id, what is wrong).
    pub broken_trees: Vec<(String, String)>,
}

impl Repository {
    /// Reads every pack's header and writes one new index; then deletes the
    /// old index files. Holds the exclusive lease.
    pub async fn repair_index(&self) -> Result<RepairReport> {
        let lease = Lease::acquire(self, "repair index", DEFAULT_EXPIRY).await?;
        let result = self.repair_index_leased(&lease).await;
        lease.release_after(&result).await;
        result
    }

    /// Moves every snapshot file that cannot be read (fails authentication,
    /// does not match its name, does not parse) to `quarantine/snapshots/`,
    /// naming each; `dry_run` only names them. Holds the exclusive lease.
    pub async fn repair_snapshots(&self, dry_run: bool) -> Result<SnapshotRepairReport> {
        if dry_run {
            return self.repair_snapshots_leased(None).await;
        }
        let lease = Lease::acquire(self, "repair snapshots", DEFAULT_EXPIRY).await?;
        let result = self.repair_snapshots_leased(Some(&lease)).await;
        lease.release_after(&result).await;
        result
    }

    /// `repair snapshots`, moving files only when it holds `lease`.
    async fn repair_snapshots_leased(&self, lease: Option<&Lease>) -> Result<SnapshotRepairReport> {
        let mut report = SnapshotRepairReport::default();
        let (good, damaged) = self.snapshots_and_damaged().await?;
        for (id, _) in &good {
            match self.open_snapshot(id).await {
                Ok(_) => report.readable += 1,
                Err(e @ (Error::Corrupt { .. } | Error::MissingBlob { .. })) => {
                    report.broken_trees.push((id.to_hex(), e.to_string()))
                }
                Err(Error::SnapshotNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for (id, e) in damaged {
            let name = id.to_hex();
            let reason = match &e {
                Error::Corrupt { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            report.quarantined.push((FileKind::Snapshot.path(&name), reason));
            if let Some(l) = lease {
                l.check().await?;
                // Copied whole before the original goes: nothing is lost.
                let raw = self.backend.get(FileKind::Snapshot, &name).await?;
                self.backend.put(FileKind::QuarantinedSnapshot, &name, raw, PutMode::Overwrite).await?;
                self.backend.delete(FileKind::Snapshot, &name).await?;
            }
        }
        Ok(report)
    }

    async fn repair_index_leased(&self, lease: &Lease) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        let old: Vec<Id> =
            self.backend.list(FileKind::Index).await?.iter().filter_map(|l| Id::from_hex(&l.name)).collect();
        let mut packs = Vec::new();
        for l in self.backend.list(FileKind::Pack).await? {
            let Some(id) = l.id() else { continue };
            match self.read_pack_header(&id, l.size).await {
                Ok((epoch, blobs)) => {
                    report.blobs_indexed += blobs.len();
                    packs.push(IndexedPack { id, size: l.size, epoch, blobs });
                }
                Err(e) => report.unreadable_packs.push(format!("{}: {e}", FileKind::Pack.path(&l.name))),
            }
        }
        report.packs_indexed = packs.len();
        // A pack whose header is damaged keeps what the old index knew of it:
        // its intact blobs stay reachable instead of being orphaned.
        if !report.unreadable_packs.is_empty() {
            let unreadable: std::collections::HashSet<Id> = self
                .backend
                .list(FileKind::Pack)
                .await?
                .iter()
                .filter_map(|l| l.id())
                .filter(|id| !packs.iter().any(|p| p.id == *id))
                .collect();
            let mut kept = std::collections::HashSet::new();
            for id in &old {
                if let Ok(f) = self.read_index_file(id).await {
                    for p in f.packs {
                        if unreadable.contains(&p.id) && kept.insert(p.id) {
                            packs.push(p);
                        }
                    }
                }
            }
            report.carried_over = kept.len();
        }
        lease.check().await?;
        self.write_index_file(&IndexFile { supersedes: old.clone(), packs }).await?;
        for id in &old {
            self.backend.delete(FileKind::Index, &id.to_hex()).await?;
        }
        report.replaced_index_files = old.len();
        self.load_index().await?;
        Ok(report)
    }

    /// Reads a pack's key epoch and header with two ranged reads.
    pub async fn read_pack_header(&self, id: &Id, size: u64) -> Result<(u32, Vec<pack::PackEntry>)> {
        let name = id.to_hex();
        let corrupt = |reason: String| Error::corrupt(FileKind::Pack.path(&name), reason);
        if size < 12 {
            return Err(corrupt("shorter than a pack trailer".into()));
        }
        let tail_len = (pack::TRAILER_LEN as u64).min(size);
        let tail = self.backend.get_range(FileKind::Pack, &name, size - tail_len..size).await?;
        let t = pack::parse_trailer(&tail).map_err(corrupt)?;
        let end = size - t.len as u64;
        let hlen = t.header_len as u64;
        if hlen > end {
            return Err(corrupt("header length exceeds the pack".into()));
        }
        let key = self.data_key(t.epoch).await.map_err(|e| corrupt(e.to_string()))?;
        let sealed = self.backend.get_range(FileKind::Pack, &name, end - hlen..end).await?;
        Ok((t.epoch, pack::parse_header(&key, &sealed, end - hlen).map_err(corrupt)?))
    }
}
