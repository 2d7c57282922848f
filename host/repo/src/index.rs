//! The in-memory master index: where every blob lives.
//!
//! All index files are merged into one sorted vector of fixed-size
//! [`IndexEntry`] records (52 bytes each, no per-entry heap allocation) and a
//! table of pack ids; lookups are binary searches. Memory bound: 52 bytes per
//! blob plus 44 bytes per pack in steady state, at most twice that while
//! loading. With the default 1 MiB average chunk that is about 52 MB of RAM
//! per TiB of unique data.

use std::collections::{HashMap, HashSet};

use crate::blob::BlobKind;
use crate::id::Id;
use crate::repofile::index::IndexFile;

/// One blob's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Blob id.
    pub id: Id,
    /// Position of the pack in [`MasterIndex::packs`].
    pub pack: u32,
    /// Offset in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
}

/// A blob's location with the pack id resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack id.
    pub pack: Id,
    /// Offset in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
    /// Key epoch of the pack.
    pub epoch: u32,
}

/// Every indexed blob.
#[derive(Debug, Default, Clone)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_sizes: Vec<u64>,
    pack_epochs: Vec<u32>,
    entries: Vec<IndexEntry>,
    marked: HashSet<u32>,
    /// Packs under a key epoch that was retired: unreadable, never used for
    /// deduplication.
    unusable: HashSet<u32>,
    /// The index files this was built from.
    pub files: Vec<Id>,
}

impl MasterIndex {
    /// Builds the index from decoded index files. When a blob is in several
    /// packs, one of them is kept, preferring packs not in `marked` (packs
    /// that prune has marked for deletion), then newer key epochs.
    pub fn build(files: &[(Id, IndexFile)], marked: &HashSet<Id>) -> MasterIndex {
        let mut pack_pos: HashMap<Id, u32> = HashMap::new();
        let mut idx = MasterIndex::default();
        for (file_id, file) in files {
            idx.files.push(*file_id);
            for p in &file.packs {
                let pos = *pack_pos.entry(p.id).or_insert_with(|| {
                    idx.packs.push(p.id);
                    idx.pack_sizes.push(p.size);
                    idx.pack_epochs.push(p.epoch);
                    (idx.packs.len() - 1) as u32
                });
                idx.entries.extend(p.blobs.iter().map(|b| IndexEntry {
                    id: b.id,
                    pack: pos,
                    offset: b.offset,
                    length: b.length,
                    raw_len: b.raw_len,
                    kind: b.kind,
                }));
            }
        }
        idx.marked = idx.packs.iter().enumerate().filter(|(_, p)| marked.contains(p)).map(|(i, _)| i as u32).collect();
        let m = &idx.marked;
        let epochs = &idx.pack_epochs;
        // Among copies of a blob, prefer an unmarked pack, then the newest
        // key epoch (the copy a re-encryption wrote).
        idx.entries.sort_unstable_by(|a, b| {
            a.id.cmp(&b.id)
                .then(m.contains(&a.pack).cmp(&m.contains(&b.pack)))
                .then(epochs[b.pack as usize].cmp(&epochs[a.pack as usize]))
                .then(a.pack.cmp(&b.pack))
        });
        idx.entries.dedup_by(|a, b| a.id == b.id && a.kind == b.kind);
        idx.entries.shrink_to_fit();
        idx
    }

    /// Stops deduplicating against packs whose key epoch `retired` says is
    /// gone (a backup whose epoch was retired under it may have indexed some).
    pub fn exclude_epochs(&mut self, retired: impl Fn(u32) -> bool) {
        self.unusable = (0..self.packs.len() as u32).filter(|p| retired(self.pack_epochs[*p as usize])).collect();
    }

    fn find(&self, id: &Id) -> Option<&IndexEntry> {
        self.entries.binary_search_by(|e| e.id.cmp(id)).ok().map(|i| &self.entries[i])
    }

    /// Where a blob is.
    pub fn lookup(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|e| BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: e.offset,
            length: e.length,
            raw_len: e.raw_len,
            kind: e.kind,
            epoch: self.pack_epochs[e.pack as usize],
        })
    }

    /// True if the blob is indexed.
    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every indexed pack with its size.
    pub fn packs(&self) -> impl Iterator<Item = (Id, u64)> + '_ {
        self.packs.iter().copied().zip(self.pack_sizes.iter().copied())
    }

    /// Every blob.
    pub fn entries(&self) -> impl Iterator<Item = (Id, BlobLocation)> + '_ {
        self.entries.iter().map(|e| {
            (
                e.id,
                BlobLocation {
                    pack: self.packs[e.pack as usize],
                    offset: e.offset,
                    length: e.length,
                    raw_len: e.raw_len,
                    kind: e.kind,
                    epoch: self.pack_epochs[e.pack as usize],
                },
            )
        })
    }

    /// Every indexed pack with its size and key epoch.
    pub fn packs_with_epochs(&self) -> impl Iterator<Item = (Id, u64, u32)> + '_ {
        self.packs.iter().zip(&self.pack_sizes).zip(&self.pack_epochs).map(|((p, s), e)| (*p, *s, *e))
    }

    /// True if the blob is indexed in a pack that is not marked for
    /// deletion: a backup may reference it without storing it again.
    pub fn contains_usable(&self, id: &Id) -> bool {
        self.find(id).is_some_and(|e| !self.marked.contains(&e.pack) && !self.unusable.contains(&e.pack))
    }

    /// True if the pack is indexed.
    pub fn has_pack(&self, id: &Id) -> bool {
        self.packs.contains(id)
    }

    /// Bytes of memory held by the entry table.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<IndexEntry>() + self.packs.capacity() * 44
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_size_is_the_documented_bound() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 52);
    }
}
