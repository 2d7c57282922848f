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

use std::path::{Path, PathBuf};

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

/// Bytes of a spooled pack gathered before they are hashed and written: a
/// few large writes instead of one per small blob, and large inputs let
/// BLAKE3 hash several chunks at once.
const SPOOL_BUFFER: usize = 1 << 20;

/// Where a pack's bytes go while it fills.
#[derive(Debug)]
enum Sink {
    /// All of the pack in memory, uploaded whole when it is finished.
    Memory(Vec<u8>),
    /// A file in the repository, written and hashed as the pack fills (the
    /// hasher's state is 2 KiB).
    File(Box<SpoolWriter>),
}

#[derive(Debug)]
struct SpoolWriter {
    file: std::fs::File,
    buf: Vec<u8>,
    hasher: blake3::Hasher,
    spooled: Spooled,
}

impl SpoolWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > SPOOL_BUFFER {
            self.flush()?;
        }
        if bytes.len() >= SPOOL_BUFFER {
            self.hasher.update(bytes);
            std::io::Write::write_all(&mut self.file, bytes)
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.hasher.update(&self.buf);
            std::io::Write::write_all(&mut self.file, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn failed(&self, e: std::io::Error) -> String {
        format!("writing pack file {}: {e}", self.spooled.path.display())
    }
}

/// A finished pack written to a file of its own, not yet under its name.
/// The file is removed when this is dropped, unless [`Spooled::keep`] says
/// it was moved into place.
#[derive(Debug)]
pub struct Spooled {
    path: PathBuf,
    kept: bool,
}

impl Spooled {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was moved into place: leave it.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A finished pack's bytes.
#[derive(Debug)]
pub enum PackBytes {
    /// In memory.
    Memory(Vec<u8>),
    /// In a spool file.
    Spooled(Spooled),
}

/// A sealed pack, ready to be stored.
#[derive(Debug)]
pub struct FinishedPack {
    /// The BLAKE3 of the whole pack, its name.
    pub id: Id,
    /// Its length in bytes.
    pub size: u64,
    /// The blobs it holds.
    pub entries: Vec<PackEntry>,
    /// The bytes.
    pub bytes: PackBytes,
}

/// Accumulates sealed blobs into one pack, in memory or in a file.
#[derive(Debug)]
pub struct PackBuilder {
    sink: Sink,
    len: usize,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack in memory with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        PackBuilder::with_buffer(Vec::with_capacity(capacity))
    }

    /// An empty pack in memory that fills `buf`, a finished pack's buffer
    /// taken back.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        PackBuilder { sink: Sink::Memory(buf), len: 0, entries: Vec::new() }
    }

    /// An empty pack written to a new file in `dir` as it fills. The file is
    /// named `<64 random hex digits>#<process id>`, the pattern of a
    /// staging file, so a listing of packs never shows it and a writer
    /// killed before it finished leaves a file that `prune` sweeps.
    pub fn spooled(dir: &Path) -> Result<Self, String> {
        let failed = |e: std::io::Error| format!("creating a pack file in {}: {e}", dir.display());
        let path = dir.join(format!("{}#{}", hex::encode(rand::random::<[u8; 32]>()), std::process::id()));
        let create = || std::fs::OpenOptions::new().write(true).create_new(true).open(&path);
        // The directory is made only for the repository's first pack.
        let file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(failed)?;
                create()
            }
            other => other,
        }
        .map_err(failed)?;
        let writer = Box::new(SpoolWriter {
            file,
            buf: Vec::with_capacity(SPOOL_BUFFER),
            hasher: blake3::Hasher::new(),
            spooled: Spooled { path, kept: false },
        });
        Ok(PackBuilder { sink: Sink::File(writer), len: 0, entries: Vec::new() })
    }

    /// Appends a sealed blob. Fails only when writing a spool file fails.
    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_len: u32) -> Result<(), String> {
        match &mut self.sink {
            Sink::Memory(data) => data.extend_from_slice(sealed),
            Sink::File(w) => w.write(sealed).map_err(|e| w.failed(e))?,
        }
        let offset = self.len as u32;
        self.len += sealed.len();
        self.entries.push(PackEntry { kind, id, offset, length: sealed.len() as u32, raw_len });
        Ok(())
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the sealed header and trailer and names the pack. A spool
    /// file is written out but not synced: storing it does that.
    pub fn finish(self, key: &DataKey) -> Result<FinishedPack, String> {
        let mut plain = Vec::with_capacity(5 + self.entries.len() * ENTRY_LEN);
        plain.push(1u8);
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            plain.push(e.kind as u8);
            plain.extend_from_slice(&e.id.0);
            plain.extend_from_slice(&e.length.to_le_bytes());
            plain.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let mut tail = key.seal(&plain, aad::PACK_HEADER);
        let header_len = tail.len() as u32;
        tail.extend_from_slice(&key.epoch().to_le_bytes());
        tail.extend_from_slice(&header_len.to_le_bytes());
        tail.extend_from_slice(MAGIC);
        let size = (self.len + tail.len()) as u64;
        let (id, bytes) = match self.sink {
            Sink::Memory(mut data) => {
                data.extend_from_slice(&tail);
                (Id::of_bytes(&data), PackBytes::Memory(data))
            }
            Sink::File(mut w) => {
                w.write(&tail).and_then(|()| w.flush()).map_err(|e| w.failed(e))?;
                (Id(*w.hasher.finalize().as_bytes()), PackBytes::Spooled(w.spooled))
            }
        };
        // The list is held until an index file names the pack: without the
        // room a vector keeps for growth.
        let mut entries = self.entries;
        entries.shrink_to_fit();
        Ok(FinishedPack { id, size, entries, bytes })
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

    fn in_memory(pack: FinishedPack) -> (Vec<u8>, Vec<PackEntry>) {
        match pack.bytes {
            PackBytes::Memory(bytes) => (bytes, pack.entries),
            PackBytes::Spooled(_) => panic!("a pack built in memory came back spooled"),
        }
    }

    /// A pack written to a file as it fills holds the blobs of the pack
    /// built in memory byte for byte, and is named by its hash; its file is
    /// gone when it is dropped without being kept, and stays when it is kept.
    #[test]
    fn a_spooled_pack_is_the_pack_built_in_memory() {
        let keys = Keys::derive(&MasterSecret::generate());
        let key = keys.epoch_zero();
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("data");
        let mut mem = PackBuilder::with_capacity(0);
        let mut file = PackBuilder::spooled(&spool).unwrap();
        // Small blobs gathered in the buffer, blobs that overflow it, and
        // blobs larger than it written straight through.
        let sizes = [10, 5000, SPOOL_BUFFER - 3, 7, SPOOL_BUFFER, 3 * SPOOL_BUFFER + 1, 1, 64 << 10];
        for (i, n) in sizes.into_iter().enumerate() {
            let blob: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
            mem.add(BlobKind::Data, Id([i as u8; 32]), &blob, n as u32).unwrap();
            file.add(BlobKind::Data, Id([i as u8; 32]), &blob, n as u32).unwrap();
        }
        assert_eq!(mem.len(), file.len());
        let (mem, file) = (mem.finish(&key).unwrap(), file.finish(&key).unwrap());
        let PackBytes::Spooled(spooled) = file.bytes else { panic!("not spooled") };
        let on_disk = std::fs::read(spooled.path()).unwrap();
        let name = spooled.path().file_name().unwrap().to_string_lossy().into_owned();
        let (base, pid) = name.split_once('#').unwrap();
        assert_eq!((base.len(), pid), (64, std::process::id().to_string().as_str()));
        // The header is sealed under a fresh nonce each time, so the blob
        // areas match and each pack is named by the hash of its own bytes.
        assert_eq!((file.size, &file.entries), (mem.size, &mem.entries));
        assert_eq!(on_disk.len() as u64, file.size);
        let area = mem.entries.iter().map(|e| e.length as usize).sum::<usize>();
        assert_eq!(file.id, Id::of_bytes(&on_disk));
        assert_eq!(on_disk[..area], in_memory(mem).0[..area]);
        let ring = Keyring::new(&keys);
        assert_eq!(parse_pack(&ring, &on_disk).unwrap(), (0, file.entries));
        let path = spooled.path().to_path_buf();
        drop(spooled);
        assert!(!path.exists(), "a dropped spool file is removed");
        // An abandoned pack leaves nothing either; a kept one stays.
        let mut abandoned = PackBuilder::spooled(&spool).unwrap();
        abandoned.add(BlobKind::Data, Id([9; 32]), b"x", 1).unwrap();
        drop(abandoned);
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
        let mut kept = PackBuilder::spooled(&spool).unwrap();
        kept.add(BlobKind::Data, Id([9; 32]), b"x", 1).unwrap();
        let PackBytes::Spooled(kept) = kept.finish(&key).unwrap().bytes else { panic!("not spooled") };
        let path = kept.path().to_path_buf();
        kept.keep();
        assert!(path.exists());
    }

    #[test]
    fn the_trailer_names_the_epoch_and_the_key_must_be_held() {
        let keys = Keys::derive(&MasterSecret::generate());
        let (ring, key) = keyring_with(&keys, 7);
        let mut b = PackBuilder::with_capacity(64);
        b.add(BlobKind::Data, Id([1; 32]), b"sealed-bytes", 3).unwrap();
        let (bytes, entries) = in_memory(b.finish(&key).unwrap());
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
        b.add(BlobKind::Tree, Id([2; 32]), b"abc", 3).unwrap();
        let (v2, entries) = in_memory(b.finish(&keys.epoch_zero()).unwrap());
        // A version 1 pack: the same header, without the epoch field.
        let hlen_at = v2.len() - 12;
        let mut v1 = v2[..hlen_at - 4].to_vec();
        v1.extend_from_slice(&v2[hlen_at..hlen_at + 4]);
        v1.extend_from_slice(MAGIC_V1);
        assert_eq!(parse_pack(&ring, &v1).unwrap(), (0, entries));
        assert_eq!(parse_trailer(&v1[v1.len() - TRAILER_LEN..]).unwrap().len, 12);
    }
}
