//! `data/<xx>/<id>`: pack files.
//!
//! ```text
//! pack    := blob* header trailer
//! blob    := sealed blob bytes (see blob.rs), back to back from offset 0
//! header  := sealed(version u8 = 1, count u32 LE, entry*)   (AAD "coffer pack header v1")
//! entry   := kind u8, id [32], length u32 LE, raw_len u32 LE      (41 bytes)
//! trailer := epoch u32 LE, header_len u32 LE, magic "CFPACK02"
//! ```
//! Blobs and header are sealed under the data key of `epoch`. Packs written
//! before key epochs existed end in `header_len u32 LE, "CFPACK01"` and are
//! sealed under epoch 0's key.
//! Blob offsets follow from the lengths in order. The pack id is the plain
//! BLAKE3 of the whole file, so a pack's integrity can be checked without the
//! key, and the index can be rebuilt from packs alone.

use crate::blob::BlobKind;
use crate::crypto::{DataKey, Keyring};
use crate::id::Id;
use crate::repofile::aad;

/// Magic at the very end of every pack.
pub const MAGIC: &[u8; 8] = b"CFPACK02";
/// Magic of packs written before key epochs (epoch 0, shorter trailer).
pub const MAGIC_V1: &[u8; 8] = b"CFPACK01";
/// Bytes to read from the end of a pack to parse its trailer (the longest
/// trailer; a version 1 trailer is its last 12 bytes).
pub const TRAILER_LEN: usize = 4 + 4 + 8;

/// What a pack's trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Length of the sealed header right before the trailer.
    pub header_len: usize,
    /// Key epoch the pack is sealed under.
    pub epoch: u32,
    /// Length of the trailer itself (16, or 12 for version 1 packs).
    pub len: usize,
}
/// Bytes per header entry.
pub const ENTRY_LEN: usize = 1 + 32 + 4 + 4;
/// Upper bound on a sealed header we will read: 1 million blobs.
pub const MAX_HEADER_LEN: usize = 1 + 4 + ENTRY_LEN * 1_000_000 + crate::crypto::SEAL_OVERHEAD;

/// One blob as listed in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Data or tree.
    pub kind: BlobKind,
    /// Blob id.
    pub id: Id,
    /// Byte offset in the pack (derived).
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext content length.
    pub raw_len: u32,
}

/// Accumulates sealed blobs into one pack in memory.
#[derive(Debug, Default)]
pub struct PackBuilder {
    data: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        PackBuilder { data: Vec::with_capacity(capacity), entries: Vec::new() }
    }

    /// An empty pack that fills `buf`, a finished pack's buffer taken back.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        PackBuilder { data: buf, entries: Vec::new() }
    }

    /// Appends a sealed blob.
    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_len: u32) {
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(sealed);
        self.entries.push(PackEntry { kind, id, offset, length: sealed.len() as u32, raw_len });
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True if no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the sealed header and trailer; returns the pack bytes, its id
    /// and its entries.
    pub fn finish(mut self, key: &DataKey) -> (Vec<u8>, Id, Vec<PackEntry>) {
        let mut plain = Vec::with_capacity(5 + self.entries.len() * ENTRY_LEN);
        plain.push(1u8);
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            plain.push(e.kind as u8);
            plain.extend_from_slice(&e.id.0);
            plain.extend_from_slice(&e.length.to_le_bytes());
            plain.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let header = key.seal(&plain, aad::PACK_HEADER);
        self.data.extend_from_slice(&header);
        self.data.extend_from_slice(&key.epoch().to_le_bytes());
        self.data.extend_from_slice(&(header.len() as u32).to_le_bytes());
        self.data.extend_from_slice(MAGIC);
        let id = Id::of_bytes(&self.data);
        (self.data, id, self.entries)
    }
}

/// Parses the trailer from the last [`TRAILER_LEN`] bytes of a pack (or the
/// whole pack, if it is shorter).
pub fn parse_trailer(tail: &[u8]) -> Result<Trailer, String> {
    let n = tail.len();
    if n < 12 {
        return Err("no pack trailer (truncated, or not a pack)".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(tail[at..at + 4].try_into().expect("4 bytes"));
    let magic = &tail[n - 8..];
    let t = if magic == MAGIC && n >= TRAILER_LEN {
        Trailer { header_len: u32_at(n - 12) as usize, epoch: u32_at(n - 16), len: 16 }
    } else if magic == MAGIC_V1 {
        Trailer { header_len: u32_at(n - 12) as usize, epoch: 0, len: 12 }
    } else {
        return Err("no pack trailer (truncated, or not a pack)".into());
    };
    if t.header_len > MAX_HEADER_LEN {
        return Err(format!("header length {} is implausible", t.header_len));
    }
    Ok(t)
}

/// The data key of `epoch`, or an error naming the missing epoch.
pub fn key_for(keyring: &Keyring, epoch: u32) -> Result<&DataKey, String> {
    keyring.get(epoch).ok_or_else(|| {
        format!(
            "it is sealed under key epoch {epoch}, which this repository no longer holds (epochs/{epoch:08} is missing)"
        )
    })
}

/// Opens and parses a sealed header. `blob_area` is the number of bytes
/// before the header, which the lengths must add up to.
pub fn parse_header(key: &DataKey, sealed: &[u8], blob_area: u64) -> Result<Vec<PackEntry>, String> {
    let plain = key.open(sealed, aad::PACK_HEADER).map_err(|_| "pack header fails authentication".to_string())?;
    if plain.len() < 5 || plain[0] != 1 {
        return Err("unknown pack header version".into());
    }
    let count = u32::from_le_bytes(plain[1..5].try_into().expect("4 bytes")) as usize;
    if plain.len() != 5 + count * ENTRY_LEN {
        return Err("pack header length does not match its blob count".into());
    }
    let mut out = Vec::with_capacity(count);
    let mut offset: u64 = 0;
    for e in plain[5..].chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_u8(e[0]).ok_or_else(|| format!("unknown blob kind {}", e[0]))?;
        let id = Id::from_slice(&e[1..33]).expect("32 bytes");
        let length = u32::from_le_bytes(e[33..37].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(e[37..41].try_into().expect("4 bytes"));
        out.push(PackEntry { kind, id, offset: offset as u32, length, raw_len });
        offset += length as u64;
    }
    if offset != blob_area {
        return Err(format!("header lists {offset} bytes of blobs but the pack holds {blob_area}"));
    }
    Ok(out)
}

/// Parses a whole pack: its epoch and its entries.
pub fn parse_pack(keyring: &Keyring, pack: &[u8]) -> Result<(u32, Vec<PackEntry>), String> {
    let t = parse_trailer(&pack[pack.len().saturating_sub(TRAILER_LEN)..])?;
    let end = pack.len() - t.len;
    if t.header_len > end {
        return Err("header length exceeds the pack".into());
    }
    let key = key_for(keyring, t.epoch)?;
    Ok((t.epoch, parse_header(key, &pack[end - t.header_len..end], (end - t.header_len) as u64)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Keys, MasterSecret};

    fn keyring_with(keys: &Keys, epoch: u32) -> (Keyring, DataKey) {
        let mut ring = Keyring::new(keys);
        let key = DataKey::new(epoch, &[epoch as u8; 32]);
        ring.insert(key.clone(), chrono::Utc::now());
        (ring, key)
    }

    #[test]
    fn the_trailer_names_the_epoch_and_the_key_must_be_held() {
        let keys = Keys::derive(&MasterSecret::generate());
        let (ring, key) = keyring_with(&keys, 7);
        let mut b = PackBuilder::with_capacity(64);
        b.add(BlobKind::Data, Id([1; 32]), b"sealed-bytes", 3);
        let (bytes, _, entries) = b.finish(&key);
        let (epoch, parsed) = parse_pack(&ring, &bytes).unwrap();
        assert_eq!((epoch, parsed), (7, entries));
        let t = parse_trailer(&bytes[bytes.len() - TRAILER_LEN..]).unwrap();
        assert_eq!((t.epoch, t.len), (7, 16));
        let (other, _) = keyring_with(&keys, 8);
        assert!(parse_pack(&other, &bytes).unwrap_err().contains("key epoch 7"));
        // Short or foreign input is an error, never a panic.
        for n in 0..20 {
            assert!(parse_pack(&ring, &bytes[bytes.len() - n.min(bytes.len())..]).is_err());
        }
        assert!(parse_pack(&ring, b"0123456789abcdefCFPACK02").is_err());
    }

    #[test]
    fn version_1_packs_read_as_epoch_0() {
        let keys = Keys::derive(&MasterSecret::generate());
        let ring = Keyring::new(&keys);
        let mut b = PackBuilder::with_capacity(64);
        b.add(BlobKind::Tree, Id([2; 32]), b"abc", 3);
        let (v2, _, entries) = b.finish(&keys.epoch_zero());
        // A version 1 pack: the same header, without the epoch field.
        let hlen_at = v2.len() - 12;
        let mut v1 = v2[..hlen_at - 4].to_vec();
        v1.extend_from_slice(&v2[hlen_at..hlen_at + 4]);
        v1.extend_from_slice(MAGIC_V1);
        assert_eq!(parse_pack(&ring, &v1).unwrap(), (0, entries));
        assert_eq!(parse_trailer(&v1[v1.len() - TRAILER_LEN..]).unwrap().len, 12);
    }
}
