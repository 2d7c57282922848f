//! `data/<xx>/<id>`: pack files.
//!
//! ```text
//! pack    := blob* header trailer
//! blob    := sealed blob bytes (see blob.rs), back to back from offset 0
//! header  := sealed(version u8 = 1, count u32 LE, entry*)   (AAD "coffer pack header v1")
//! entry   := kind u8, id [32], length u32 LE, raw_len u32 LE      (41 bytes)
//! trailer := header_len u32 LE, magic "CFPACK01"
//! ```
//! Blob offsets follow from the lengths in order. The pack id is the plain
//! BLAKE3 of the whole file, so a pack's integrity can be checked without the
//! key, and the index can be rebuilt from packs alone.

use crate::blob::BlobKind;
use crate::crypto::Keys;
use crate::id::Id;
use crate::repofile::aad;

/// Magic at the very end of every pack.
pub const MAGIC: &[u8; 8] = b"CFPACK01";
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 4 + 8;
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
    pub fn finish(mut self, keys: &Keys) -> (Vec<u8>, Id, Vec<PackEntry>) {
        let mut plain = Vec::with_capacity(5 + self.entries.len() * ENTRY_LEN);
        plain.push(1u8);
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            plain.push(e.kind as u8);
            plain.extend_from_slice(&e.id.0);
            plain.extend_from_slice(&e.length.to_le_bytes());
            plain.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let header = keys.seal(&plain, aad::PACK_HEADER);
        self.data.extend_from_slice(&header);
        self.data.extend_from_slice(&(header.len() as u32).to_le_bytes());
        self.data.extend_from_slice(MAGIC);
        let id = Id::of_bytes(&self.data);
        (self.data, id, self.entries)
    }
}

/// Reads the sealed header length from the last [`TRAILER_LEN`] bytes.
pub fn parse_trailer(trailer: &[u8]) -> Result<usize, String> {
    if trailer.len() != TRAILER_LEN || &trailer[4..] != MAGIC {
        return Err("no pack trailer (truncated, or not a pack)".into());
    }
    let len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER_LEN {
        return Err(format!("header length {len} is implausible"));
    }
    Ok(len)
}

/// Opens and parses a sealed header. `blob_area` is the number of bytes
/// before the header, which the lengths must add up to.
pub fn parse_header(keys: &Keys, sealed: &[u8], blob_area: u64) -> Result<Vec<PackEntry>, String> {
    let plain = keys.open(sealed, aad::PACK_HEADER).map_err(|_| "pack header fails authentication".to_string())?;
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

/// Splits a whole pack into (blob area length, entries).
pub fn parse_pack(keys: &Keys, pack: &[u8]) -> Result<Vec<PackEntry>, String> {
    if pack.len() < TRAILER_LEN {
        return Err("shorter than a pack trailer".into());
    }
    let hlen = parse_trailer(&pack[pack.len() - TRAILER_LEN..])?;
    let end = pack.len() - TRAILER_LEN;
    if hlen > end {
        return Err("header length exceeds the pack".into());
    }
    parse_header(keys, &pack[end - hlen..end], (end - hlen) as u64)
}
