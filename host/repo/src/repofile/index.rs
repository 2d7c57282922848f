//! `index/<id>`: index files, one or more per backup.
//!
//! Plaintext (then zstd-compressed, then sealed with AAD "coffer index v1"):
//! ```text
//! version u8 = 2
//! supersedes_count u32 LE, supersedes: [32]*   index files this one replaces
//! pack_count u32 LE, pack*
//! pack  := id [32], pack_size u64 LE, epoch u32 LE, blob_count u32 LE, blob*
//! blob  := kind u8, id [32], offset u32 LE, length u32 LE, raw_len u32 LE   (45 bytes)
//! ```
//! Version 1 files (written before key epochs) lack `epoch`: their packs are
//! epoch 0.

use serde::{Deserialize, Serialize};

use crate::blob::BlobKind;
use crate::id::Id;
use crate::repofile::pack::PackEntry;

/// One pack and its blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    /// Pack id.
    pub id: Id,
    /// Pack file size in bytes.
    pub size: u64,
    /// Key epoch the pack is sealed under.
    pub epoch: u32,
    /// Its blobs.
    pub blobs: Vec<PackEntry>,
}

/// A decoded index file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune and repair).
    pub supersedes: Vec<Id>,
    /// The packs it describes.
    pub packs: Vec<IndexedPack>,
}

const BLOB_LEN: usize = 1 + 32 + 4 + 4 + 4;

impl IndexFile {
    /// Serializes the plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out = Vec::with_capacity(9 + 32 * self.supersedes.len() + 44 * self.packs.len() + BLOB_LEN * blobs);
        out.push(2);
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for s in &self.supersedes {
            out.extend_from_slice(&s.0);
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                out.push(b.kind as u8);
                out.extend_from_slice(&b.id.0);
                out.extend_from_slice(&b.offset.to_le_bytes());
                out.extend_from_slice(&b.length.to_le_bytes());
                out.extend_from_slice(&b.raw_len.to_le_bytes());
            }
        }
        out
    }

    /// Parses the plaintext.
    pub fn decode(data: &[u8]) -> Result<IndexFile, String> {
        let mut r = Reader { data, pos: 0 };
        let version = r.u8()?;
        if version != 1 && version != 2 {
            return Err(format!("unknown index file version {version}"));
        }
        let n = r.u32()? as usize;
        let mut supersedes = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            supersedes.push(r.id()?);
        }
        let np = r.u32()? as usize;
        let mut packs = Vec::with_capacity(np.min(1 << 20));
        for _ in 0..np {
            let id = r.id()?;
            let size = r.u64()?;
            let epoch = if version >= 2 { r.u32()? } else { 0 };
            let nb = r.u32()? as usize;
            let mut blobs = Vec::with_capacity(nb.min(1 << 20));
            for _ in 0..nb {
                let k = r.u8()?;
                let kind = BlobKind::from_u8(k).ok_or_else(|| format!("unknown blob kind {k}"))?;
                blobs.push(PackEntry { kind, id: r.id()?, offset: r.u32()?, length: r.u32()?, raw_len: r.u32()? });
            }
            packs.push(IndexedPack { id, size, epoch, blobs });
        }
        if r.pos != data.len() {
            return Err("trailing bytes after the last pack".into());
        }
        Ok(IndexFile { supersedes, packs })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("index file is truncated")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn id(&mut self) -> Result<Id, String> {
        Ok(Id::from_slice(self.take(32)?).expect("32 bytes"))
    }
}

/// Where one chunk was stored when a WAL file or stream item was pushed:
/// lets a fetch read it without loading the index. Only a hint: prune may
/// have moved the chunk since, and then the index is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlace {
    /// Pack id.
    pub pack: Id,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Key epoch of the pack.
    pub epoch: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(epoch: u32) -> IndexFile {
        let blob = PackEntry { kind: BlobKind::Data, id: Id([7; 32]), offset: 0, length: 50, raw_len: 9 };
        IndexFile {
            supersedes: vec![Id([1; 32])],
            packs: vec![IndexedPack { id: Id([2; 32]), size: 99, epoch, blobs: vec![blob] }],
        }
    }

    #[test]
    fn round_trip_keeps_the_epoch() {
        let f = sample(5);
        assert_eq!(IndexFile::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn version_1_files_are_epoch_0() {
        // A version 1 encoding is the version 2 one without the epoch field.
        let mut v1 = sample(0).encode();
        v1[0] = 1;
        let epoch_at = 1 + 4 + 32 + 4 + 32 + 8;
        v1.drain(epoch_at..epoch_at + 4);
        assert_eq!(IndexFile::decode(&v1).unwrap(), sample(0));
        let mut bad = sample(0).encode();
        bad[0] = 3;
        assert!(IndexFile::decode(&bad).is_err());
    }
}
