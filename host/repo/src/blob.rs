//! Blobs: the unit of storage inside packs.
//!
//! A blob is one chunk of file data or one piece of a snapshot's entry list.
//! Its plaintext is a one-byte encoding tag followed by the payload (raw or
//! zstd-compressed); the whole is sealed with XChaCha20-Poly1305, with the
//! blob's kind and id as associated data so a blob cannot be passed off as
//! another.

use std::cell::RefCell;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::{AuthError, DataKey, Keys, NONCE_LEN, TAG_LEN};
use crate::id::Id;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum BlobKind {
    /// A chunk of entry contents.
    Data = 0,
    /// A piece of a snapshot's serialized entry list.
    Tree = 1,
}

impl BlobKind {
    /// Decodes the on-disk byte.
    pub fn from_u8(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }

    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        }
    }
}

/// Plaintext tag: payload stored as is.
const ENC_RAW: u8 = 0;
/// Plaintext tag: payload is a zstd frame.
const ENC_ZSTD: u8 = 1;

/// Compression setting, stored in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// zstd level; 0 turns compression off.
    pub zstd_level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression { zstd_level: 2 }
    }
}

/// The largest buffer a length hint may size: the largest chunk the
/// chunker cuts (FastCDC's bound on `max_size`, 16 MiB).
const MAX_HINTED_LEN: usize = fastcdc::v2020::MAXIMUM_MAX;

/// The longest content a blob may decompress to: index entries record a
/// blob's length in 32 bits.
const MAX_CONTENT_LEN: u64 = u32::MAX as u64;

/// Why a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The AEAD tag did not verify: wrong key, or the bytes were changed.
    #[error("authentication failed (damaged or not written with this key)")]
    Auth,
    /// The plaintext has an unknown encoding tag.
    #[error("unknown blob encoding {0}")]
    UnknownEncoding(u8),
    /// zstd could not decompress the payload.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The content does not hash to the blob's id.
    #[error("content hashes to {actual}, not to its id")]
    HashMismatch {
        /// What the content hashed to.
        actual: Id,
    },
}

impl From<AuthError> for BlobError {
    fn from(_: AuthError) -> Self {
        BlobError::Auth
    }
}

fn aad(kind: BlobKind, id: &Id) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[0] = kind as u8;
    a[1..].copy_from_slice(&id.0);
    a
}

/// Bytes to probe before compressing a large chunk: if the first 64 KiB do not
/// shrink by at least 1/32, the chunk is stored raw without spending the time.
const PROBE_LEN: usize = 64 * 1024;

/// Compressed output up to this bound goes through a per-thread scratch
/// buffer (reused, so no page faults), larger output straight into the blob.
const SCRATCH_MAX: usize = 2 << 20;

thread_local! {
    /// Per-thread zstd contexts, reused across blobs: creating one costs
    /// more than compressing a small file.
    static ZSTD: RefCell<Option<ZstdContexts>> = const { RefCell::new(None) };
    static UNZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

struct ZstdContexts {
    level: i32,
    main: zstd::bulk::Compressor<'static>,
    probe: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

fn with_zstd<R>(level: i32, f: impl FnOnce(&mut ZstdContexts) -> R) -> R {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|z| z.level != level) {
            *slot = Some(ZstdContexts {
                level,
                main: zstd::bulk::Compressor::new(level).expect("zstd context"),
                probe: zstd::bulk::Compressor::new(1).expect("zstd context"),
                scratch: Vec::new(),
            });
        }
        f(slot.as_mut().expect("just set"))
    })
}

/// Compresses (when it pays) and seals a blob. Returns the sealed bytes.
pub fn encode(key: &DataKey, kind: BlobKind, id: &Id, data: &[u8], compression: Compression) -> Vec<u8> {
    let level = compression.zstd_level;
    let mut out: Vec<u8> = Vec::new();
    if level != 0 && data.len() >= 64 {
        with_zstd(level, |z| {
            if data.len() > 2 * PROBE_LEN {
                let probe = &data[..PROBE_LEN];
                z.scratch.clear();
                z.scratch.reserve(zstd::zstd_safe::compress_bound(PROBE_LEN));
                match z.probe.compress_to_buffer(probe, &mut z.scratch) {
                    Ok(n) if n < PROBE_LEN - PROBE_LEN / 32 => {}
                    _ => return,
                }
            }
            let bound = zstd::zstd_safe::compress_bound(data.len());
            let worth = |n: usize| n < data.len() - data.len() / 32;
            if bound <= SCRATCH_MAX {
                z.scratch.clear();
                z.scratch.reserve(bound);
                if let Ok(n) = z.main.compress_to_buffer(data, &mut z.scratch)
                    && worth(n)
                {
                    out.reserve_exact(NONCE_LEN + 1 + n + TAG_LEN);
                    out.resize(NONCE_LEN, 0);
                    out.push(ENC_ZSTD);
                    out.extend_from_slice(&z.scratch[..n]);
                }
            } else {
                // Straight into the blob, then moved up past the nonce and
                // the tag byte: a scratch buffer this big would stay
                // resident on every thread that ever compressed one.
                out.reserve_exact(NONCE_LEN + 1 + bound + TAG_LEN);
                match z.main.compress_to_buffer(data, &mut out) {
                    Ok(n) if worth(n) => {
                        out.resize(NONCE_LEN + 1 + n, 0);
                        out.copy_within(..n, NONCE_LEN + 1);
                        out[..NONCE_LEN].fill(0);
                        out[NONCE_LEN] = ENC_ZSTD;
                    }
                    _ => out.clear(),
                }
            }
        });
    }
    if out.is_empty() {
        out.reserve_exact(NONCE_LEN + 1 + data.len() + TAG_LEN);
        out.resize(NONCE_LEN, 0);
        out.push(ENC_RAW);
        out.extend_from_slice(data);
    }
    key.seal_in_place(&mut out, &aad(kind, id));
    out
}

/// Opens a sealed blob and returns its plaintext content, checking that it
/// hashes to `id`.
pub fn decode(
    keys: &Keys,
    key: &DataKey,
    kind: BlobKind,
    id: &Id,
    sealed: &[u8],
    raw_len_hint: usize,
) -> Result<Bytes, BlobError> {
    let plain = key.open(sealed, &aad(kind, id))?;
    let content = match plain.first() {
        Some(&ENC_RAW) => Bytes::from(plain).slice(1..),
        Some(&ENC_ZSTD) => {
            // The hint sizes the buffer only up to the largest chunk: a
            // wrong length in an index must not make one huge allocation.
            let mut out = Vec::with_capacity(raw_len_hint.min(MAX_HINTED_LEN));
            let payload = &plain[1..];
            let fits = UNZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                let d = slot.get_or_insert_with(|| zstd::bulk::Decompressor::new().expect("zstd context"));
                d.decompress_to_buffer(payload, &mut out).is_ok()
            });
            if !fits {
                // The hint was wrong (or absent): fall back to streaming,
                // up to the longest content an index can record.
                out.clear();
                let decoder =
                    zstd::stream::read::Decoder::new(payload).map_err(|e| BlobError::Decompress(e.to_string()))?;
                std::io::Read::read_to_end(&mut std::io::Read::take(decoder, MAX_CONTENT_LEN + 1), &mut out)
                    .map_err(|e| BlobError::Decompress(e.to_string()))?;
                if out.len() as u64 > MAX_CONTENT_LEN {
                    return Err(BlobError::Decompress(format!("it decompresses to more than {MAX_CONTENT_LEN} bytes")));
                }
            }
            Bytes::from(out)
        }
        Some(&other) => return Err(BlobError::UnknownEncoding(other)),
        None => return Err(BlobError::UnknownEncoding(255)),
    };
    let actual = keys.chunk_id(&content);
    if actual != *id {
        return Err(BlobError::HashMismatch { actual });
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterSecret;

    #[test]
    fn round_trip_compressible_and_random() {
        let keys = Keys::derive(&MasterSecret::generate());
        let dk = crate::crypto::DataKey::new(1, &[9; 32]);
        let other = keys.epoch_zero();
        let text = b"coffer ".repeat(10_000);
        let random: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        // Output bounds above SCRATCH_MAX compress straight into the blob.
        let big_text = b"coffer ".repeat(3 * SCRATCH_MAX / 7);
        for data in [&text[..], &random[..], &big_text[..], b"", b"x"] {
            let id = keys.chunk_id(data);
            let sealed = encode(&dk, BlobKind::Data, &id, data, Compression::default());
            assert_eq!(&decode(&keys, &dk, BlobKind::Data, &id, &sealed, data.len()).unwrap()[..], data);
            assert_eq!(decode(&keys, &dk, BlobKind::Tree, &id, &sealed, 0), Err(BlobError::Auth));
            assert_eq!(decode(&keys, &other, BlobKind::Data, &id, &sealed, 0), Err(BlobError::Auth));
        }
        for text in [&text, &big_text] {
            let id = keys.chunk_id(text);
            assert!(encode(&dk, BlobKind::Data, &id, text, Compression::default()).len() < text.len() / 10);
        }
    }
}
