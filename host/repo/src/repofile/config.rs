//! `config`: the one unencrypted object that says what the repository is.
//!
//! It is JSON so that any version of coffer can read `version` before it
//! knows anything else, and refuse a format it does not understand. The
//! body is authenticated with a MAC under a key derived from the master
//! secret, checked once the repository is opened.

use serde::{Deserialize, Serialize};

use crate::blob::Compression;
use crate::chunker::ChunkerParams;
use crate::crypto::Keys;
use crate::id::Id;

/// The format version this build writes when it creates or opens a repository.
///
/// Version 2 added key epochs (`epochs/`, pack trailer and index files that
/// name the epoch). This build reads version 1 repositories too and raises
/// their config to version 2 when it opens them with a key, because what it
/// writes there is version 2 data that older builds would misread.
pub const FORMAT_VERSION: u32 = 2;

/// The version a repository is raised to when it first archives WAL.
///
/// Version 3 added the WAL archive (`wal/`). Builds that do not know it
/// would not count archived WAL as a user of blobs, and their prune would
/// delete it; so they must refuse such a repository.
pub const WAL_FORMAT_VERSION: u32 = 3;

/// The version a repository is raised to by its first stream write (an
/// item, a checkpoint, or a snapshot that declares stream needs).
///
/// Version 4 added plugin-owned streams (`streams/`) and manifests that
/// declare stream needs (manifest version 2). Builds that do not know them
/// would not count stream items as users of blobs, and their prune would
/// delete them; so they must refuse such a repository.
pub const STREAM_FORMAT_VERSION: u32 = 4;

/// The highest format version this build reads.
pub const HIGHEST_READ_VERSION: u32 = STREAM_FORMAT_VERSION;
/// The constant in `format`, to recognise a coffer repository.
pub const FORMAT_NAME: &str = "coffer-repository";

/// Default target size of a pack: packs are closed once they reach this, so
/// they end up between 16 MiB and 16 MiB + one blob (at most 8 MiB + 41 bytes).
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;

/// Smallest pack size a config may set (64 KiB).
pub const MIN_PACK_SIZE: u32 = 64 * 1024;
/// Largest pack size a config may set (1 GiB): offsets inside a pack are 32-bit.
pub const MAX_PACK_SIZE: u32 = 1 << 30;

/// The repository config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always `coffer-repository`.
    pub format: String,
    /// The format version; see [`FORMAT_VERSION`].
    pub version: u32,
    /// Random repository id; bound into key files.
    pub id: Id,
    /// When the repository was created (RFC 3339).
    pub created: chrono::DateTime<chrono::Utc>,
    /// FastCDC sizes.
    pub chunker: ChunkerParams,
    /// Compression of blobs.
    pub compression: Compression,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Hex MAC over the JSON of every other field (see [`RepoConfig::body`]).
    #[serde(default)]
    pub mac: String,
}

/// Enough of the config to check the version before parsing the rest.
#[derive(Debug, Deserialize)]
pub struct ConfigHead {
    /// `coffer-repository`.
    pub format: Option<String>,
    /// The version.
    pub version: Option<u32>,
}

impl RepoConfig {
    /// A fresh config with a random id.
    pub fn new(chunker: ChunkerParams, compression: Compression, pack_size: u32) -> Self {
        RepoConfig {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            id: Id(crate::crypto::random_bytes()),
            created: chrono::Utc::now(),
            chunker,
            compression,
            pack_size,
            mac: String::new(),
        }
    }

    /// The bytes the MAC covers: the config serialized with an empty `mac`.
    pub fn body(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.mac.clear();
        serde_json::to_vec(&c).expect("config serializes")
    }

    /// Sets the MAC.
    pub fn sign(&mut self, keys: &Keys) {
        self.mac = hex::encode(keys.mac(&self.body()));
    }

    /// Checks the MAC in constant time.
    pub fn verify(&self, keys: &Keys) -> bool {
        match hex::decode(&self.mac) {
            Ok(mac) => keys.verify_mac(&self.body(), &mac),
            Err(_) => false,
        }
    }
}
