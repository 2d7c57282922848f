//! `epochs/<number>`: one file per key epoch, holding that epoch's random
//! data key wrapped under a key derived from the master secret.
//!
//! The name is the epoch number as 8 decimal digits. The body is JSON:
//! `{version, epoch, created, wrapped}` where `wrapped` is base64 of the
//! 32-byte data key sealed with XChaCha20-Poly1305 under the epoch wrapping
//! key, AAD `"coffer epoch key v1" || repository id (32) || epoch (u32 LE)`,
//! so a file can be neither forged nor renumbered. Files are created with
//! create-only puts (two concurrent rotations cannot both take a number) and
//! deleted once no pack is sealed under them (`prune --reencrypt`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{DataKey, Keys, open_with, random_bytes, seal_with};
use crate::id::Id;

/// An epoch file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochFile {
    /// Format version (1).
    pub version: u32,
    /// The epoch number; equals the file name.
    pub epoch: u32,
    /// When the epoch began.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Base64 of nonce (24) || sealed data key (32) || tag (16).
    pub wrapped: String,
}

/// The file name of an epoch.
pub fn name(epoch: u32) -> String {
    format!("{epoch:08}")
}

fn aad(repo_id: &Id, epoch: u32) -> Vec<u8> {
    let mut a = b"coffer epoch key v1".to_vec();
    a.extend_from_slice(&repo_id.0);
    a.extend_from_slice(&epoch.to_le_bytes());
    a
}

impl EpochFile {
    /// A new epoch with a fresh random data key.
    pub fn create(keys: &Keys, repo_id: &Id, epoch: u32) -> (EpochFile, DataKey) {
        let key = Zeroizing::new(random_bytes::<32>());
        let sealed = seal_with(&keys.epoch_wrapper(), &key[..], &aad(repo_id, epoch));
        let file = EpochFile { version: 1, epoch, created: chrono::Utc::now(), wrapped: B64.encode(sealed) };
        (file, DataKey::new(epoch, &key))
    }

    /// Unwraps the data key. `name` is the file's name, which must match.
    pub fn open(&self, keys: &Keys, repo_id: &Id, name: &str) -> Result<DataKey, String> {
        if self.version != 1 {
            return Err(format!("unknown epoch file version {}", self.version));
        }
        if self::name(self.epoch) != name || self.epoch == 0 {
            return Err(format!("it claims epoch {} but is named {name}", self.epoch));
        }
        let sealed = B64.decode(&self.wrapped).map_err(|e| format!("wrapped key: {e}"))?;
        let plain = Zeroizing::new(
            open_with(&keys.epoch_wrapper(), &sealed, &aad(repo_id, self.epoch))
                .map_err(|_| "it fails authentication with the repository key".to_string())?,
        );
        let key: Zeroizing<[u8; 32]> =
            Zeroizing::new(plain[..].try_into().map_err(|_| "the wrapped key is not 32 bytes".to_string())?);
        Ok(DataKey::new(self.epoch, &key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterSecret;

    #[test]
    fn round_trip_and_binding() {
        let keys = Keys::derive(&MasterSecret::generate());
        let repo = Id(random_bytes());
        let (f, k) = EpochFile::create(&keys, &repo, 3);
        let opened = f.open(&keys, &repo, "00000003").unwrap();
        let sealed = k.seal(b"x", b"a");
        assert_eq!(opened.open(&sealed, b"a").unwrap(), b"x");
        // Renamed, renumbered, another repository, another master secret.
        assert!(f.open(&keys, &repo, "00000004").is_err());
        let mut g = f.clone();
        g.epoch = 4;
        assert!(g.open(&keys, &repo, "00000004").is_err());
        assert!(f.open(&keys, &Id(random_bytes()), "00000003").is_err());
        assert!(f.open(&Keys::derive(&MasterSecret::generate()), &repo, "00000003").is_err());
    }
}
