//! Targets for the repository's own files (`coffer-repo`, legacy WAL
//! archive objects included) and the postgres plugin's WAL names and
//! headers (`coffer-pgwal`).
//!
//! Sealed formats are fuzzed behind the seal: the target seals the input
//! under a fixed key, so the parser after authentication sees every byte
//! the fuzzer chooses (a fuzzer cannot forge a tag, but a bug in a writer
//! or a holder of the key can write anything).

use std::sync::OnceLock;

use coffer_pgwal as walfile;
use coffer_repo::Id;
use coffer_repo::blob::{self, BlobKind, Compression};
use coffer_repo::crypto::{Keyring, Keys, MasterSecret};
use coffer_repo::repofile::config::{ConfigHead, RepoConfig};
use coffer_repo::repofile::epoch::{self, EpochFile};
use coffer_repo::repofile::index::IndexFile;
use coffer_repo::repofile::keyfile::KeyFile;
use coffer_repo::repofile::snapshot::{SnapshotManifest, redact_config};
use coffer_repo::repofile::tree::{self, Entry, EntryDecoder};
use coffer_repo::repofile::wal::{self as wal_object, WalObject};
use coffer_repo::repofile::{aad, pack};
use coffer_repo::shares::{self, Share};

use crate::control;

/// The keys every target seals and opens with.
pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::derive(&MasterSecret::from_bytes([7; 32])))
}

/// The repository id key files and epoch files are bound to.
pub(crate) const REPO_ID: Id = Id([1; 32]);

/// A pack as stored, then a header behind the seal: the first 8 bytes are
/// the blob area's length (LE), the rest the header's plaintext. When the
/// area is small the target also builds the whole pack around the header
/// and checks that parsing the pack finds what parsing the header did.
pub(crate) fn pack(data: &[u8]) {
    let keys = keys();
    let ring = Keyring::new(keys);
    let _ = pack::parse_trailer(&data[data.len().saturating_sub(pack::TRAILER_LEN)..]);
    let _ = pack::parse_pack(&ring, data);

    let Some((area, plain)) = data.split_first_chunk::<8>() else { return };
    let area = u64::from_le_bytes(*area);
    let key = keys.epoch_zero();
    let sealed = key.seal(plain, aad::PACK_HEADER);
    let header = pack::parse_header(&key, &sealed, area);
    if let Ok(entries) = &header {
        let mut at = 0u64;
        for e in entries {
            assert_eq!(u64::from(e.offset), at, "an entry's offset is not the sum of the lengths before it");
            at += u64::from(e.length);
        }
        assert_eq!(at, area);
    }
    if area <= 1 << 16 {
        let mut whole = vec![0u8; area as usize];
        whole.extend_from_slice(&sealed);
        whole.extend_from_slice(&0u32.to_le_bytes());
        whole.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        whole.extend_from_slice(pack::MAGIC);
        let parsed = pack::parse_pack(&ring, &whole);
        if sealed.len() <= pack::MAX_HEADER_LEN {
            assert_eq!(parsed.map(|(_, e)| e).ok(), header.ok(), "the pack and its header parse differently");
        }
    }
}

/// A sealed blob: byte 0 picks the kind (low bit) and the compression
/// level of the round trip, bytes 1..5 are the length hint the index gives
/// (LE), the rest the plaintext (encoding tag, payload). Then the rest is
/// encoded as a blob's content and must decode to itself.
pub(crate) fn blob(data: &[u8]) {
    let Some((c, rest)) = control(data) else { return };
    let Some((hint, plain)) = rest.split_first_chunk::<4>() else { return };
    let kind = if c & 1 == 0 { BlobKind::Data } else { BlobKind::Tree };
    let keys = keys();
    let key = keys.epoch_zero();
    let id = Id([c; 32]);
    let mut blob_aad = vec![kind as u8];
    blob_aad.extend_from_slice(&id.0);
    let sealed = key.seal(plain, &blob_aad);
    if let Ok(content) = blob::decode(keys, &key, kind, &id, &sealed, u32::from_le_bytes(*hint) as usize) {
        assert_eq!(keys.chunk_id(&content), id);
    }

    let id = keys.chunk_id(plain);
    let level = i32::from(c >> 1) % 8;
    let sealed = blob::encode(&key, kind, &id, plain, Compression { zstd_level: level });
    let back = blob::decode(keys, &key, kind, &id, &sealed, plain.len()).expect("a blob just encoded decodes");
    assert_eq!(&back[..], plain);
}

/// An index file's plaintext; what decodes must encode to the same file
/// (version 2) and decode again to itself.
pub(crate) fn index(data: &[u8]) {
    let Ok(file) = IndexFile::decode(data) else { return };
    let encoded = file.encode();
    if data[0] == 2 {
        assert_eq!(encoded, data, "an index file does not encode back to its bytes");
    }
    assert_eq!(IndexFile::decode(&encoded).as_ref(), Ok(&file));
}

/// A snapshot manifest's or a WAL archive object's plaintext (JSON).
/// What parses must serialize and parse back to itself (the free-form
/// plugin config aside: JSON floats need not survive a round trip).
pub(crate) fn snapshot(data: &[u8]) {
    if let Ok(mut m) = serde_json::from_slice::<SnapshotManifest>(data) {
        let redacted = redact_config(&m.config);
        let _ = redact_config(&redacted);
        let text = serde_json::to_vec(&m).expect("a manifest serializes");
        let mut back: SnapshotManifest = serde_json::from_slice(&text).expect("a manifest written parses");
        m.config = serde_json::Value::Null;
        back.config = serde_json::Value::Null;
        assert_eq!(back, m);
    }
    if let Ok(w) = serde_json::from_slice::<WalObject>(data) {
        let text = serde_json::to_vec(&w).expect("a WAL object serializes");
        assert_eq!(serde_json::from_slice::<WalObject>(&text).expect("a WAL object written parses"), w);
    }
}

/// A snapshot's tree stream. Byte 0 is also the size of the pieces the
/// stream is fed to [`EntryDecoder`] in; the whole input is the stream.
/// The decoder's fast path, the piecewise decoder and serde alone must
/// agree, and what decodes must encode and decode to itself.
pub(crate) fn tree(data: &[u8]) {
    let Some((c, _)) = control(data) else { return };
    let _ = tree::encoded_path(data);
    let whole = tree::decode_entries(data);

    let mut decoder = EntryDecoder::default();
    for piece in data.chunks(usize::from(c).max(1)) {
        decoder.push(piece);
    }
    let pieces = decoder.finish();
    assert_eq!(pieces.as_ref().ok(), whole.as_ref().ok(), "decoded in pieces, the stream gives other entries");
    assert_eq!(pieces.is_ok(), whole.is_ok());

    // The general decoder alone, entry by entry, as before the fast path.
    let mut serde_entries = Vec::new();
    let mut cursor = std::io::Cursor::new(data);
    let serde_ok = loop {
        if cursor.position() as usize >= data.len() {
            break true;
        }
        match ciborium::de::from_reader::<Entry, _>(&mut cursor) {
            Ok(e) => serde_entries.push(e),
            Err(_) => break false,
        }
    };
    match &whole {
        Ok(entries) => {
            assert!(serde_ok, "the fast path accepts a stream serde refuses");
            assert_eq!(entries, &serde_entries, "the fast path and serde read different entries");
            let again = tree::encode_entries(entries);
            assert_eq!(tree::decode_entries(&again).as_ref(), Ok(entries));
        }
        Err(_) => assert!(!serde_ok, "the fast path refuses a stream serde reads"),
    }
}

/// A key file, an epoch file or a repository config (JSON). Key files
/// are opened when their Argon2 cost is small, or above the limits (which
/// must be refused before any hashing).
pub(crate) fn keyfile(data: &[u8]) {
    if let Ok(k) = serde_json::from_slice::<KeyFile>(data) {
        let p = k.kdf.params;
        let cheap = p.m_cost_kib <= 1024 && p.t_cost <= 2 && p.p_cost <= 4;
        let refused = p.m_cost_kib > 4 * 1024 * 1024 || p.t_cost > 64 || p.p_cost > 64;
        if cheap || refused {
            let _ = k.open(b"fuzz", &REPO_ID);
        }
    }
    if let Ok(e) = serde_json::from_slice::<EpochFile>(data) {
        let _ = e.open(keys(), &REPO_ID, &epoch::name(e.epoch));
        let _ = e.open(keys(), &REPO_ID, "00000001");
    }
    if let Ok(c) = serde_json::from_slice::<RepoConfig>(data) {
        let _ = c.verify(keys());
        let _ = c.body();
    }
    let _ = serde_json::from_slice::<ConfigHead>(data);
}

fn share_encoding() -> &'static data_encoding::Encoding {
    static ENC: OnceLock<data_encoding::Encoding> = OnceLock::new();
    // The alphabet of `coffer_repo::shares` (Crockford base32).
    ENC.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
        spec.encoding().expect("a valid base32 specification")
    })
}

/// The code of a share payload (48 bytes) with its checksum.
pub(crate) fn share_code(payload: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"coffer share v1");
    h.update(payload);
    let mut raw = payload.to_vec();
    raw.extend_from_slice(&h.finalize().as_bytes()[..4]);
    share_encoding().encode(&raw)
}

/// The bytes of a share code (no dashes).
pub(crate) fn share_code_decode(code: &str) -> Vec<u8> {
    share_encoding().decode(code.as_bytes()).expect("a share code")
}

/// Share text as typed, then the input cut into 48-byte share payloads
/// given their checksums (which a fuzzer would not find), parsed and
/// combined. A parsed share's code must parse back to the same share.
pub(crate) fn share(data: &[u8]) {
    let _ = Share::parse(&String::from_utf8_lossy(data));
    let mut parsed = Vec::new();
    for (i, payload) in data.chunks_exact(48).take(8).enumerate() {
        if let Ok(s) = Share::parse(&share_code(payload)) {
            let back = Share::parse(&s.line()).expect("a share's line parses");
            assert_eq!(*back.code(), *s.code());
            parsed.push((format!("share {i}"), s));
        }
    }
    if let Some((_, first)) = parsed.first() {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&first.repo_prefix);
        let _ = shares::combine(&parsed, &Id(id));
    }
}

/// The first page of a WAL segment. What parses must name its segment so
/// that the name parses back to the same segment.
pub(crate) fn wal_page(data: &[u8]) {
    let Ok(h) = walfile::parse_long_header(data) else { return };
    let size = u64::from(h.segment_size);
    assert!(walfile::valid_segment_size(size));
    let segno = walfile::Lsn(h.pageaddr).segno(size);
    let name = walfile::segment_name(h.timeline, segno, size);
    assert_eq!(walfile::parse_segment_name(&name, size), Some((h.timeline, segno)), "{name}");
}

/// Text the WAL archive reads: file names, LSNs, timeline history files,
/// recovery target times, stream and object names.
pub(crate) fn wal_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(f) = walfile::WalFile::parse(&text) {
        let _ = f.order_key();
        for size in [1 << 20, walfile::DEFAULT_SEGMENT_SIZE, 1 << 30] {
            let _ = f.segno(size);
            if let Some((tli, segno)) = walfile::parse_segment_name(&text, size) {
                assert_eq!(walfile::segment_name(tli, segno, size), text);
            }
        }
    }
    if let Ok(lsn) = walfile::Lsn::parse(&text) {
        assert_eq!(walfile::Lsn::parse(&lsn.to_string()), Ok(lsn));
        let _ = (lsn.segno(walfile::DEFAULT_SEGMENT_SIZE), lsn.prev_segno(walfile::DEFAULT_SEGMENT_SIZE));
    }
    let _ = walfile::parse_history(&text);
    let _ = walfile::parse_time(&text);
    let _ = walfile::parse_backup_start(&text);
    let _ = walfile::control_system_identifier(data);
    let _ = wal_object::valid_stream(&text);
    let _ = wal_object::split_object_name(&text);
}
