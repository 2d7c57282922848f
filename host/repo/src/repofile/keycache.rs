//! A key cache file: the operator's local file (never stored in the
//! repository) that opens a repository without a password and without
//! Argon2id, for commands run very often, such as PostgreSQL's
//! `archive_command`.
//!
//! It holds 32 random bytes and names the key file (`keys/<id>`, of kdf
//! algorithm `file-key`) that wraps the master secret under a key derived
//! from them. Reading the file is as good as knowing the repository's
//! password; removing its key file from the repository (`coffer key remove`)
//! revokes it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::id::Id;

/// `format` of a key cache file.
pub const KEY_CACHE_FORMAT: &str = "coffer-key-cache";
/// Largest key cache file read (a real one is about 250 bytes).
pub const MAX_KEY_CACHE_LEN: u64 = 4096;

/// The JSON of a key cache file.
#[derive(Serialize, Deserialize)]
struct KeyCacheJson {
    /// Always [`KEY_CACHE_FORMAT`].
    format: String,
    /// `1`.
    version: u32,
    /// The repository id, hex.
    repository: String,
    /// The id of the key file in `keys/` it opens, hex.
    key: String,
    /// Base64 of the 32 random bytes the key file's wrapping key derives from.
    file_key: String,
}

/// A parsed key cache file. The random key is zeroized on drop.
pub struct KeyCache {
    /// The repository it opens.
    pub repository: Id,
    /// The key file (`keys/<id>`) it opens.
    pub key: Id,
    /// The random key.
    pub(crate) file_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("repository", &self.repository).field("key", &self.key).finish()
    }
}

impl KeyCache {
    /// A key cache for key file `key` of `repository`.
    pub fn new(repository: Id, key: Id, file_key: Zeroizing<[u8; 32]>) -> KeyCache {
        KeyCache { repository, key, file_key }
    }

    /// The file's bytes (JSON and a newline), in a buffer zeroized on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let json = ZeroizeFileKey(KeyCacheJson {
            format: KEY_CACHE_FORMAT.into(),
            version: 1,
            repository: self.repository.to_hex(),
            key: self.key.to_hex(),
            file_key: B64.encode(*self.file_key),
        });
        // Reserved up front so that growing never leaves copies behind.
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        serde_json::to_writer_pretty(&mut *out, &json.0).expect("serializes");
        out.push(b'\n');
        out
    }

    /// Parses a key cache file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<KeyCache, String> {
        let json: KeyCacheJson = serde_json::from_slice(bytes).map_err(|_| {
            "it is not a key cache file (`coffer key cache --out FILE` writes one; a password goes in \
             --password-file)"
                .to_string()
        })?;
        let json = ZeroizeFileKey(json);
        if json.0.format != KEY_CACHE_FORMAT {
            return Err(format!("it is not a key cache file (format {:?})", json.0.format));
        }
        if json.0.version != 1 {
            return Err(format!(
                "key cache file version {} is not known to this coffer: upgrade coffer",
                json.0.version
            ));
        }
        let repository = Id::from_hex(&json.0.repository).ok_or("its repository id is not 64 hex digits")?;
        let key = Id::from_hex(&json.0.key).ok_or("its key id is not 64 hex digits")?;
        let raw = Zeroizing::new(B64.decode(json.0.file_key.as_bytes()).map_err(|_| "its key is not base64")?);
        if raw.len() != 32 {
            return Err("its key is not 32 bytes".into());
        }
        let mut file_key = Zeroizing::new([0u8; 32]);
        file_key.copy_from_slice(&raw);
        Ok(KeyCache { repository, key, file_key })
    }
}

/// Holds parsed JSON and zeroizes its key text when dropped.
struct ZeroizeFileKey(KeyCacheJson);

impl Drop for ZeroizeFileKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0.file_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let c = KeyCache::new(Id([1; 32]), Id([2; 32]), Zeroizing::new([7; 32]));
        let bytes = c.encode();
        let back = KeyCache::parse(&bytes).unwrap();
        assert_eq!((back.repository, back.key, *back.file_key), (Id([1; 32]), Id([2; 32]), [7; 32]));
        assert!(KeyCache::parse(b"my password\n").unwrap_err().contains("not a key cache file"));
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let other = text.replace("coffer-key-cache", "something-else");
        assert!(KeyCache::parse(other.as_bytes()).unwrap_err().contains("format"));
        let short = text.replace(&B64.encode([7u8; 32]), &B64.encode([7u8; 16]));
        assert!(KeyCache::parse(short.as_bytes()).unwrap_err().contains("32 bytes"));
    }
}
