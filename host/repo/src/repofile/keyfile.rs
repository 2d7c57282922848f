//! `keys/<id>`: a key file wraps the master secret under a password, or
//! under the random key of a key cache file (`coffer key cache`).
//!
//! A password's wrapping key is Argon2id(password, salt) with the parameters
//! stored in the file; a key cache's is derived from the 32 random bytes the
//! operator's cache file holds, with no Argon2id (see
//! [`crate::repofile::keycache`]). The secret is sealed with
//! XChaCha20-Poly1305 and the repository id as associated data. Any one key
//! file opens the repository.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{MasterSecret, cipher_from, open_with, random_bytes, seal_with};
use crate::id::Id;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.2 s on one core of the reference machine.
    fn default() -> Self {
        KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only.
    pub fn insecure_fast() -> Self {
        KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 }
    }
}

/// The KDF section of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version (19 = 0x13).
    pub version: u32,
    /// Cost parameters.
    #[serde(flatten)]
    pub params: KdfParams,
    /// Base64 of the 32-byte random salt.
    pub salt: String,
}

/// A key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Key file format version (1).
    pub version: u32,
    /// When it was made.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Host name of the machine that made it (informational).
    pub host: String,
    /// User name that made it (informational).
    pub user: String,
    /// A label given by the operator (informational).
    #[serde(default)]
    pub label: String,
    /// How the wrapping key is derived.
    pub kdf: Kdf,
    /// Base64 of nonce(24) || sealed master secret (32) || tag(16).
    pub wrapped: String,
}

/// `kdf.algorithm` of a key file opened by a key cache file instead of a
/// password.
pub const FILE_KEY_ALGORITHM: &str = "file-key";
/// `kdf.version` of a key cache's key file.
const FILE_KEY_VERSION: u32 = 1;
/// BLAKE3 `derive_key` context: the wrapping key from a key cache file's
/// random key.
const CTX_FILE_KEY_WRAP: &str = "coffer 2026-12 key cache wrapping key";

/// Why a key file did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyFileError {
    /// The password is not the one this file was made with (or, for a key
    /// cache's key file, the cache file's key is not its key).
    WrongPassword,
    /// A key cache's key file: it opens with its cache file, never with a
    /// password.
    NotAPasswordKey,
    /// The file cannot be parsed or uses unknown parameters.
    Malformed(String),
    /// Anything else.
    Other(String),
}

fn aad(repo_id: &Id) -> Vec<u8> {
    let mut a = b"coffer key file v1".to_vec();
    a.extend_from_slice(&repo_id.0);
    a
}

/// Associated data of a key cache's key file: not a password key file's, so
/// that neither can pass for the other.
fn file_key_aad(repo_id: &Id) -> Vec<u8> {
    let mut a = b"coffer key cache v1".to_vec();
    a.extend_from_slice(&repo_id.0);
    a
}

/// The wrapping key of a key cache's key file.
fn file_key_kek(file_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(CTX_FILE_KEY_WRAP, file_key))
}

/// The 32-byte master secret out of an opened seal.
fn secret_of(plain: &[u8]) -> Result<MasterSecret, KeyFileError> {
    if plain.len() != 32 {
        return Err(KeyFileError::Malformed("wrapped secret is not 32 bytes".into()));
    }
    let mut secret = MasterSecret::from_bytes([0u8; 32]);
    secret.0.copy_from_slice(plain);
    Ok(secret)
}

/// Largest Argon2 memory a key file may ask for (4 GiB).
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
/// Most Argon2 passes or lanes a key file may ask for.
const MAX_T_OR_P: u32 = 64;

fn derive(password: &[u8], salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    // A damaged or hostile key file must not make opening allocate terabytes
    // or hash forever.
    if p.m_cost_kib > MAX_M_COST_KIB || p.t_cost > MAX_T_OR_P || p.p_cost > MAX_T_OR_P {
        return Err(KeyFileError::Malformed(format!(
            "argon2 parameters m={} KiB t={} p={} exceed the limits ({MAX_M_COST_KIB} KiB, {MAX_T_OR_P}, {MAX_T_OR_P})",
            p.m_cost_kib, p.t_cost, p.p_cost
        )));
    }
    let params = Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| KeyFileError::Malformed(format!("argon2 parameters: {e}")))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(password, salt, &mut *out).map_err(|e| KeyFileError::Malformed(format!("argon2: {e}")))?;
    Ok(out)
}

impl KeyFile {
    /// Wraps `secret` under `password`.
    pub fn create(
        secret: &MasterSecret,
        password: &[u8],
        params: KdfParams,
        repo_id: &Id,
        label: &str,
    ) -> Result<Self, String> {
        let salt: [u8; 32] = random_bytes();
        let kek = derive(password, &salt, params).map_err(|e| match e {
            KeyFileError::Malformed(m) | KeyFileError::Other(m) => m,
            KeyFileError::WrongPassword | KeyFileError::NotAPasswordKey => "key derivation failed".into(),
        })?;
        let sealed = seal_with(&cipher_from(&kek), secret.expose(), &aad(repo_id));
        Ok(KeyFile {
            version: 1,
            created: chrono::Utc::now(),
            host: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
            user: std::env::var("USER").unwrap_or_default(),
            label: label.to_string(),
            kdf: Kdf { algorithm: "argon2id".into(), version: 0x13, params, salt: B64.encode(salt) },
            wrapped: B64.encode(sealed),
        })
    }

    /// Wraps `secret` under a fresh random key for a key cache file: no
    /// Argon2id, so opening costs one AEAD open. Returns the key file (for
    /// `keys/`) and the random key (for the operator's cache file only).
    pub fn create_file_key(secret: &MasterSecret, repo_id: &Id, label: &str) -> (Self, Zeroizing<[u8; 32]>) {
        let file_key = Zeroizing::new(random_bytes::<32>());
        let sealed = seal_with(&cipher_from(&file_key_kek(&file_key)), secret.expose(), &file_key_aad(repo_id));
        let kf = KeyFile {
            version: 1,
            created: chrono::Utc::now(),
            host: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
            user: std::env::var("USER").unwrap_or_default(),
            label: label.to_string(),
            // No KDF: the key is 256 random bits already. Zero costs and no
            // salt keep the fields older readers expect.
            kdf: Kdf {
                algorithm: FILE_KEY_ALGORITHM.into(),
                version: FILE_KEY_VERSION,
                params: KdfParams { m_cost_kib: 0, t_cost: 0, p_cost: 0 },
                salt: String::new(),
            },
            wrapped: B64.encode(sealed),
        };
        (kf, file_key)
    }

    /// True for a key cache's key file (opened by its cache file, never by
    /// a password).
    pub fn is_file_key(&self) -> bool {
        self.kdf.algorithm == FILE_KEY_ALGORITHM
    }

    /// Unwraps the master secret with a key cache file's random key.
    pub fn open_file_key(&self, file_key: &[u8; 32], repo_id: &Id) -> Result<MasterSecret, KeyFileError> {
        if self.version != 1 || !self.is_file_key() || self.kdf.version != FILE_KEY_VERSION {
            return Err(KeyFileError::Malformed(format!(
                "not a key cache's key file (version {}, kdf {} v{})",
                self.version, self.kdf.algorithm, self.kdf.version
            )));
        }
        let sealed = B64.decode(&self.wrapped).map_err(|e| KeyFileError::Malformed(format!("wrapped key: {e}")))?;
        let plain = Zeroizing::new(
            open_with(&cipher_from(&file_key_kek(file_key)), &sealed, &file_key_aad(repo_id))
                .map_err(|_| KeyFileError::WrongPassword)?,
        );
        secret_of(&plain)
    }

    /// Unwraps the master secret with `password`.
    pub fn open(&self, password: &[u8], repo_id: &Id) -> Result<MasterSecret, KeyFileError> {
        if self.version == 1 && self.is_file_key() {
            return Err(KeyFileError::NotAPasswordKey);
        }
        if self.version != 1 || self.kdf.algorithm != "argon2id" || self.kdf.version != 0x13 {
            return Err(KeyFileError::Malformed(format!(
                "unsupported key file (version {}, kdf {} v{})",
                self.version, self.kdf.algorithm, self.kdf.version
            )));
        }
        let salt = B64.decode(&self.kdf.salt).map_err(|e| KeyFileError::Malformed(format!("salt: {e}")))?;
        let sealed = B64.decode(&self.wrapped).map_err(|e| KeyFileError::Malformed(format!("wrapped key: {e}")))?;
        let kek = derive(password, &salt, self.kdf.params)?;
        let plain = Zeroizing::new(
            open_with(&cipher_from(&kek), &sealed, &aad(repo_id)).map_err(|_| KeyFileError::WrongPassword)?,
        );
        secret_of(&plain)
    }
}
