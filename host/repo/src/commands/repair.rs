//! `repair index`: rebuilds the index from the pack headers alone.

use serde::Serialize;

use crate::backend::FileKind;
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

impl Repository {
    /// Reads every pack's header and writes one new index; then deletes the
    /// old index files.
    pub async fn repair_index(&self) -> Result<RepairReport> {
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
