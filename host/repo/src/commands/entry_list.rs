//! The entries of a snapshot being written, held until commit.
//!
//! The tree is one stream of entries sorted by path, and a backup learns
//! its entries in whatever order its files finish, so every entry is held
//! until the snapshot is committed. [`EntryList`] holds each one as the
//! bytes the tree stream is made of ([`encode_entry`]), in blocks that are
//! compressed with zstd once full: the 108,000 entries of the benchmark's
//! data set took 7.2 MB there (66 bytes each; their chunk ids do not
//! compress) against about 27 MB as a vector of [`Entry`] with their paths
//! and chunk lists. At commit the blocks are unpacked (21 MB here) and the
//! entries ordered by path without decoding them.

use std::ops::Range;

use crate::repofile::tree::{Entry, EntryKind, encode_entry, encoded_path};

/// Encoded entries per block before it is compressed.
const BLOCK: usize = 256 << 10;
/// zstd level for the blocks: the fastest (the chunk ids in them do not
/// compress; the field names and paths do at any level).
const LEVEL: i32 = 1;

/// One full block.
struct Block {
    /// zstd frame, or the encoded entries themselves when compressing failed.
    bytes: Box<[u8]>,
    /// Length of the encoded entries.
    raw_len: usize,
    compressed: bool,
}

/// What the held entries add up to, for the snapshot's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Content bytes of the files.
    pub bytes: u64,
}

/// Entries held as compressed tree encoding (see the module comment).
#[derive(Default)]
pub(crate) struct EntryList {
    blocks: Vec<Block>,
    /// Encoded entries of the block being filled.
    open: Vec<u8>,
    /// Encoded length of every entry, in the order they were pushed.
    lens: Vec<u32>,
    counts: Counts,
}

impl EntryList {
    /// Adds an entry.
    pub(crate) fn push(&mut self, entry: &Entry) {
        let before = self.open.len();
        encode_entry(entry, &mut self.open);
        // An entry is a path, a few numbers and its chunk ids: 4 GiB of it
        // would be a file of 30 PiB in 256 KiB chunks.
        self.lens.push(u32::try_from(self.open.len() - before).unwrap_or(u32::MAX));
        let c = &mut self.counts;
        c.entries += 1;
        match entry.kind {
            EntryKind::File => {
                c.files += 1;
                c.bytes += entry.size;
            }
            EntryKind::Dir => c.dirs += 1,
            EntryKind::Symlink => c.symlinks += 1,
        }
        if self.open.len() >= BLOCK {
            self.close_block();
        }
    }

    /// Compresses the open block.
    fn close_block(&mut self) {
        let raw_len = self.open.len();
        let block = match zstd::bulk::compress(&self.open, LEVEL) {
            Ok(z) => Block { bytes: z.into_boxed_slice(), raw_len, compressed: true },
            Err(_) => Block { bytes: self.open.as_slice().into(), raw_len, compressed: false },
        };
        self.blocks.push(block);
        self.open.clear();
    }

    /// What the entries add up to.
    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    /// Unpacks the entries and orders them by path: every entry's encoding,
    /// one after another in the order they were pushed, and the range of
    /// each in path order. Fails only if a block does not decompress, which
    /// would be damage in this process's own memory.
    pub(crate) fn into_sorted(self) -> Result<(Vec<u8>, Vec<Range<usize>>), String> {
        let total = self.blocks.iter().map(|b| b.raw_len).sum::<usize>() + self.open.len();
        let mut raw = Vec::with_capacity(total);
        for b in self.blocks {
            if b.compressed {
                let start = raw.len();
                raw.resize(start + b.raw_len, 0);
                let n = zstd::bulk::decompress_to_buffer(&b.bytes, &mut raw[start..])
                    .map_err(|e| format!("a block of held entries does not decompress: {e}"))?;
                if n != b.raw_len {
                    return Err(format!("a block of held entries decompressed to {n} bytes, not {}", b.raw_len));
                }
            } else {
                raw.extend_from_slice(&b.bytes);
            }
        }
        raw.extend_from_slice(&self.open);
        drop(self.open);
        let mut order = Vec::with_capacity(self.lens.len());
        let mut at = 0usize;
        for len in self.lens {
            let end = at + len as usize;
            if end > raw.len() {
                return Err("the held entries are shorter than their lengths say".into());
            }
            order.push(at..end);
            at = end;
        }
        // Paths are unique, so an unstable sort is exact. A range that does
        // not start with a path cannot be one this list encoded; it sorts
        // first and fails when the tree is read.
        order.sort_unstable_by(|a, b| encoded_path(&raw[a.clone()]).cmp(&encoded_path(&raw[b.clone()])));
        Ok((raw, order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::repofile::tree::decode_entries;

    fn entry(path: &str, kind: EntryKind, n: u64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime: 1_700_000_000 + n as i64,
            mtime_nsec: n as u32,
            size: if kind == EntryKind::File { n * 7 } else { 0 },
            target: (kind == EntryKind::Symlink).then(|| format!("../t{n}")),
            content: if kind == EntryKind::File { vec![Id([n as u8; 32]); (n % 3) as usize] } else { vec![] },
            blake3: (kind == EntryKind::File).then_some(Id([(n >> 8) as u8; 32])),
        }
    }

    /// Entries pushed in any order come back whole, sorted by path, across
    /// many compressed blocks, with the counts of what was pushed.
    #[test]
    fn entries_come_back_sorted_and_whole() {
        let mut list = EntryList::default();
        let mut all = Vec::new();
        for n in 0..20_000u64 {
            let kind = match n % 10 {
                0 => EntryKind::Dir,
                1 => EntryKind::Symlink,
                _ => EntryKind::File,
            };
            // A path order unlike the push order, with `/` against `-`.
            let path = format!("d{}/{}-f{}", (n * 7919) % 97, if n % 2 == 0 { "a" } else { "a/b" }, n);
            let e = entry(&path, kind, n);
            list.push(&e);
            all.push(e);
        }
        assert!(list.blocks.len() > 3, "only {} blocks", list.blocks.len());
        let counts = list.counts();
        assert_eq!((counts.entries, counts.dirs, counts.symlinks, counts.files), (20_000, 2_000, 2_000, 16_000));
        assert_eq!(counts.bytes, all.iter().map(|e| e.size).sum::<u64>());
        let (raw, order) = list.into_sorted().expect("sorted");
        let mut stream = Vec::new();
        for r in order {
            stream.extend_from_slice(&raw[r]);
        }
        all.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(decode_entries(&stream).expect("decodes"), all);
    }

    #[test]
    fn an_empty_list_is_empty() {
        let (raw, order) = EntryList::default().into_sorted().expect("sorted");
        assert!(raw.is_empty() && order.is_empty());
    }
}
