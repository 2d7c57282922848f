//! The in-memory master index: where every blob lives.
//!
//! All index files are merged into one sorted vector of fixed-size
//! [`IndexEntry`] records (52 bytes each, no per-entry heap allocation) and a
//! table of pack ids. Blob ids are hashes, so their leading bits are
//! uniform: a table of bucket starts by the leading bits (one `u32` per one
//! to two blobs) narrows a lookup to a couple of neighbouring records, where
//! a binary search over the whole vector touched a cold cache line at each
//! of its ~17 steps (unchanged files of a re-backup are each looked up).
//! Memory bound: 52 bytes per blob, plus at most 4 for the buckets, plus 44
//! bytes per pack in steady state, at most twice that while loading. With
//! the default 1 MiB average chunk that is about 56 MB of RAM per TiB of
//! unique data.

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
    /// `buckets[b]` is the first entry whose id's leading `bucket_bits`
    /// bits are `b` or more; one more at the end holds `entries.len()`.
    /// Empty until built.
    buckets: Vec<u32>,
    bucket_bits: u32,
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
        idx.build_buckets();
        idx
    }

    /// Fills [`Self::buckets`]: about one bucket per two blobs, at most 2^24.
    fn build_buckets(&mut self) {
        let n = self.entries.len();
        self.bucket_bits = if n < 64 { 0 } else { (usize::BITS - (n / 2).leading_zeros()).min(24) };
        let count = 1usize << self.bucket_bits;
        self.buckets = Vec::with_capacity(count + 1);
        let mut i = 0;
        for b in 0..count {
            while i < n && bucket_of(&self.entries[i].id, self.bucket_bits) < b {
                i += 1;
            }
            self.buckets.push(i as u32);
        }
        self.buckets.push(n as u32);
    }

    /// Stops deduplicating against packs whose key epoch `retired` says is
    /// gone (a backup whose epoch was retired under it may have indexed some).
    pub fn exclude_epochs(&mut self, retired: impl Fn(u32) -> bool) {
        self.unusable = (0..self.packs.len() as u32).filter(|p| retired(self.pack_epochs[*p as usize])).collect();
    }

    fn find(&self, id: &Id) -> Option<&IndexEntry> {
        let range = match self.buckets.as_slice() {
            [] => &self.entries[..],
            starts => {
                let b = bucket_of(id, self.bucket_bits);
                &self.entries[starts[b] as usize..starts[b + 1] as usize]
            }
        };
        range.binary_search_by(|e| e.id.cmp(id)).ok().map(|i| &range[i])
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
        self.entries.capacity() * std::mem::size_of::<IndexEntry>()
            + self.buckets.capacity() * 4
            + self.packs.capacity() * 44
    }
}

/// The bucket of an id: its leading `bits` bits.
fn bucket_of(id: &Id, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    let lead = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
    (lead >> (64 - bits)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Id {
        fn with_last(mut self, b: u8) -> Id {
            self.0[31] = b;
            self
        }
    }

    #[test]
    fn entry_size_is_the_documented_bound() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 52);
    }

    fn file_with(ids: &[Id]) -> IndexFile {
        use crate::repofile::index::IndexedPack;
        use crate::repofile::pack::PackEntry;
        IndexFile {
            packs: vec![IndexedPack {
                id: Id([0xEE; 32]),
                size: 1,
                epoch: 0,
                blobs: ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| PackEntry { id: *id, kind: BlobKind::Data, offset: i as u32, length: 1, raw_len: 1 })
                    .collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn bucketed_lookups_find_every_blob_and_nothing_else() {
        // Random ids, plus ids crowded at both ends of the range and into
        // one bucket, which a bucket table must not get wrong.
        let mut ids: Vec<Id> = (0u32..5000).map(|i| Id(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
        for i in 0u8..40 {
            ids.push(Id([0; 32]).with_last(i));
            ids.push(Id([0xFF; 32]).with_last(i));
            ids.push(Id([0x80; 32]).with_last(i));
        }
        let idx = MasterIndex::build(&[(Id([1; 32]), file_with(&ids))], &HashSet::new());
        assert!(idx.bucket_bits > 8);
        assert_eq!(idx.len(), ids.len());
        for id in &ids {
            assert!(idx.contains(id), "{id:?} is indexed");
        }
        for i in 5000u32..10_000 {
            assert!(!idx.contains(&Id(*blake3::hash(&i.to_le_bytes()).as_bytes())));
        }
        assert!(!idx.contains(&Id([0x80; 32]).with_last(200)));
        // A small index has one bucket.
        let small = MasterIndex::build(&[(Id([1; 32]), file_with(&ids[..10]))], &HashSet::new());
        assert_eq!(small.bucket_bits, 0);
        assert!(ids[..10].iter().all(|id| small.contains(id)) && !small.contains(&ids[11]));
        assert!(!MasterIndex::default().contains(&ids[0]));
    }
}
