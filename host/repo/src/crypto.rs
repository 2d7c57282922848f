//! Keys and authenticated encryption.
//!
//! The repository has one random 32-byte master secret. The keys that must
//! never change (chunk ids, the chunker seed, the config MAC, the metadata
//! key) are derived from it with BLAKE3's key derivation and a fixed context
//! string, so the master secret itself never touches data. Pack contents are
//! sealed under a *data key* of a numbered epoch: a random key stored in
//! `epochs/`, wrapped under a key derived from the master secret, which
//! `coffer key rotate` replaces (see [`Keyring`]). Every stored object and
//! blob is sealed with XChaCha20-Poly1305 under a fresh random 24-byte nonce.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::id::Id;

/// Bytes added by sealing: the 24-byte nonce in front, the 16-byte tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// Context strings for BLAKE3 `derive_key`. Changing one changes the format.
const CTX_DATA: &str = "coffer 2026-11 repository data encryption key";
const CTX_CHUNK_ID: &str = "coffer 2026-11 chunk id key";
const CTX_CHUNKER: &str = "coffer 2026-11 chunker gear seed";
const CTX_CONFIG_MAC: &str = "coffer 2026-11 config authentication key";
const CTX_EPOCH_WRAP: &str = "coffer 2026-11 epoch key wrapping key";

/// Decryption failed: the data was not sealed with this key, or was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

/// The repository master secret (32 random bytes), zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterSecret(pub(crate) [u8; 32]);

impl MasterSecret {
    /// A fresh secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut s = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut s);
        MasterSecret(s)
    }

    /// The raw secret bytes (for wrapping in key files or splitting).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a secret from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterSecret(bytes)
    }
}

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

/// The keys derived from the master secret, ready to use. The cipher here is
/// the *metadata key*: it seals index files, manifests and markers, and is
/// also epoch 0's data key (packs written before any rotation).
#[derive(Clone)]
pub struct Keys {
    cipher: XChaCha20Poly1305,
    id_key: Zeroizing<[u8; 32]>,
    mac_key: Zeroizing<[u8; 32]>,
    wrap_key: Zeroizing<[u8; 32]>,
    chunker_seed: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Derives every working key from the master secret.
    pub fn derive(master: &MasterSecret) -> Self {
        let data = Zeroizing::new(blake3::derive_key(CTX_DATA, &master.0));
        let id_key = Zeroizing::new(blake3::derive_key(CTX_CHUNK_ID, &master.0));
        let mac_key = Zeroizing::new(blake3::derive_key(CTX_CONFIG_MAC, &master.0));
        let wrap_key = Zeroizing::new(blake3::derive_key(CTX_EPOCH_WRAP, &master.0));
        let seed = Zeroizing::new(blake3::derive_key(CTX_CHUNKER, &master.0));
        let chunker_seed = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
        Keys { cipher: XChaCha20Poly1305::new((&*data).into()), id_key, mac_key, wrap_key, chunker_seed }
    }

    /// Epoch 0's data key: the metadata key, for packs written before the
    /// first rotation.
    pub fn epoch_zero(&self) -> DataKey {
        DataKey { epoch: 0, cipher: self.cipher.clone() }
    }

    /// The cipher that wraps epoch data keys in `epochs/` files.
    pub(crate) fn epoch_wrapper(&self) -> XChaCha20Poly1305 {
        cipher_from(&self.wrap_key)
    }

    /// The chunk id of `plaintext`: BLAKE3 keyed with the repository's id key,
    /// so ids reveal nothing across repositories.
    pub fn chunk_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// A keyed hasher for computing a chunk id over several pieces.
    pub fn chunk_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.id_key)
    }

    /// The secret seed for FastCDC's gear table: chunk boundaries depend on the
    /// key, so chunk sizes cannot be used to fingerprint known files.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// A MAC over `data` with the config authentication key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac_key, data).as_bytes()
    }

    /// Constant-time check of a MAC made by [`Keys::mac`].
    pub fn verify_mac(&self, data: &[u8], mac: &[u8]) -> bool {
        let expected = self.mac(data);
        expected.as_slice().ct_eq(mac).into()
    }

    /// Seals `plaintext`: `nonce || ciphertext || tag`, authenticated with `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, plaintext, aad)
    }

    /// Seals in place: `buf[..NONCE_LEN]` is overwritten with a fresh nonce,
    /// the rest is encrypted where it is, and the tag is appended. Saves the
    /// copy that [`Keys::seal`] makes, on the hot path.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>, aad: &[u8]) {
        seal_in_place_with(&self.cipher, buf, aad)
    }

    /// Opens what [`Keys::seal`] produced.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
        open_with(&self.cipher, sealed, aad)
    }
}

/// The data key of one epoch: it seals blobs and pack headers.
#[derive(Clone)]
pub struct DataKey {
    epoch: u32,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(epoch {}, <redacted>)", self.epoch)
    }
}

impl DataKey {
    /// A data key for `epoch` from its 32 raw bytes.
    pub(crate) fn new(epoch: u32, key: &[u8; 32]) -> Self {
        DataKey { epoch, cipher: cipher_from(key) }
    }

    /// The epoch number.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Seals `plaintext` with `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, plaintext, aad)
    }

    /// Seals in place, like [`Keys::seal_in_place`].
    pub fn seal_in_place(&self, buf: &mut Vec<u8>, aad: &[u8]) {
        seal_in_place_with(&self.cipher, buf, aad)
    }

    /// Opens what [`DataKey::seal`] produced.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
        open_with(&self.cipher, sealed, aad)
    }
}

/// Every data key the repository still holds, by epoch, and the one new data
/// is written under (the highest).
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: std::collections::BTreeMap<u32, (DataKey, Option<chrono::DateTime<chrono::Utc>>)>,
    /// Epoch files that exist but could not be read, with the reason: one
    /// damaged file only fails the work that needs its key.
    unreadable: std::collections::BTreeMap<u32, String>,
}

impl Keyring {
    /// A keyring with epoch 0 only (the metadata key).
    pub fn new(keys: &Keys) -> Self {
        let mut map = std::collections::BTreeMap::new();
        map.insert(0, (keys.epoch_zero(), None));
        Keyring { keys: map, unreadable: Default::default() }
    }

    /// Records an epoch file that exists but cannot be read.
    pub(crate) fn insert_unreadable(&mut self, epoch: u32, reason: String) {
        self.unreadable.insert(epoch, reason);
    }

    /// Epoch files that exist but could not be read, with the reason.
    pub fn unreadable(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.unreadable.iter().map(|(e, r)| (*e, r.as_str()))
    }

    /// Why `epoch`'s file could not be read, if it exists but is damaged.
    pub fn unreadable_reason(&self, epoch: u32) -> Option<&str> {
        self.unreadable.get(&epoch).map(String::as_str)
    }

    /// The highest epoch number with a file, readable or not: the next
    /// rotation takes the number after it.
    pub fn highest_number(&self) -> u32 {
        let held = self.current().epoch;
        self.unreadable.keys().next_back().map_or(held, |u| held.max(*u))
    }

    /// True if `epoch` is older than the current one and has no key: its
    /// file was retired (or lost), so its packs cannot be read.
    pub fn is_retired(&self, epoch: u32) -> bool {
        epoch < self.current().epoch && !self.keys.contains_key(&epoch) && !self.unreadable.contains_key(&epoch)
    }

    /// Adds an epoch's key and its creation time.
    pub(crate) fn insert(&mut self, key: DataKey, created: chrono::DateTime<chrono::Utc>) {
        self.keys.insert(key.epoch, (key, Some(created)));
    }

    /// The key new packs are sealed under: the highest epoch.
    pub fn current(&self) -> &DataKey {
        &self.keys.values().next_back().expect("epoch 0 is always present").0
    }

    /// The key of `epoch`, if the repository still holds it.
    pub fn get(&self, epoch: u32) -> Option<&DataKey> {
        self.keys.get(&epoch).map(|(k, _)| k)
    }

    /// When `epoch` was created (`None` for epoch 0, which has no file).
    pub fn created(&self, epoch: u32) -> Option<chrono::DateTime<chrono::Utc>> {
        self.keys.get(&epoch).and_then(|(_, c)| *c)
    }

    /// Every epoch held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }
}

fn seal_in_place_with(cipher: &XChaCha20Poly1305, buf: &mut Vec<u8>, aad: &[u8]) {
    use chacha20poly1305::aead::AeadInPlace;
    let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
    buf[..NONCE_LEN].copy_from_slice(&nonce);
    let tag = cipher
        .encrypt_in_place_detached(&nonce, aad, &mut buf[NONCE_LEN..])
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    buf.extend_from_slice(&tag);
}

/// Seals `plaintext` under `cipher` with a fresh random nonce.
pub(crate) fn seal_with(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens `nonce || ciphertext || tag`.
pub(crate) fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AuthError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(AuthError);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| AuthError)
}

/// A cipher from a raw 32-byte key (used for key-file wrapping keys).
pub(crate) fn cipher_from(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// Fills a buffer with random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let keys = Keys::derive(&MasterSecret::generate());
        let sealed = keys.seal(b"hello", b"aad");
        assert_eq!(keys.open(&sealed, b"aad").unwrap(), b"hello");
        assert!(keys.open(&sealed, b"other").is_err());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(keys.open(&bad, b"aad").is_err());
        assert!(keys.open(&sealed[..10], b"aad").is_err());
    }

    #[test]
    fn ids_depend_on_the_key() {
        let a = Keys::derive(&MasterSecret::generate());
        let b = Keys::derive(&MasterSecret::generate());
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
    }
}
