//! [`Repository`]: an opened repository. Its methods are thin; the work is in
//! `commands/`, one module per verb.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::backend::{BackendOptions, DynBackend, FileKind, ObjectBackend, PutMode};
use crate::blob::{self, BlobKind, Compression};
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{DataKey, Keyring, Keys, MasterSecret};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repofile::aad;
use crate::repofile::config::{
    ConfigHead, DEFAULT_PACK_SIZE, FORMAT_NAME, FORMAT_VERSION, HIGHEST_READ_VERSION, MAX_PACK_SIZE, MIN_PACK_SIZE,
    RepoConfig,
};
use crate::repofile::index::IndexFile;
use crate::repofile::keycache::KeyCache;
use crate::repofile::keyfile::{KdfParams, KeyFile, KeyFileError};
use crate::repofile::snapshot::SnapshotManifest;

/// Blobs up to this size are decoded on the calling thread.
const INLINE_DECODE: usize = 256 << 10;

/// Settings for a new repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Argon2id cost for the first key file.
    pub kdf: KdfParams,
    /// Chunk sizes.
    pub chunker: ChunkerParams,
    /// Compression.
    pub compression: Compression,
    /// Target pack size.
    pub pack_size: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::default(),
            chunker: ChunkerParams::default(),
            compression: Compression::default(),
            pack_size: DEFAULT_PACK_SIZE,
        }
    }
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    pub(crate) backend: DynBackend,
    pub(crate) config: RepoConfig,
    pub(crate) keys: Keys,
    pub(crate) secret: MasterSecret,
    pub(crate) key_id: Option<Id>,
    pub(crate) keyring: Arc<RwLock<Arc<Keyring>>>,
    /// Held while reloading the index and keyring after a failed read.
    reload: Arc<tokio::sync::Mutex<()>>,
    pub(crate) chunker: Chunker,
    pub(crate) index: Arc<RwLock<Arc<MasterIndex>>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("location", &self.backend.location()).field("id", &self.config.id).finish()
    }
}

/// Opens a backend from a URL with default limits.
pub fn backend_for(url: &str, options: &[(String, String)]) -> Result<DynBackend> {
    Ok(Arc::new(ObjectBackend::from_url(url, options, BackendOptions::default())?))
}

async fn read_config(backend: &DynBackend) -> Result<RepoConfig> {
    let location = backend.location();
    let raw = match backend.get(FileKind::Config, "config").await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(Error::NotARepository { location }),
        Err(e) => return Err(e.into()),
    };
    let damaged = |reason: String| Error::DamagedConfig { location: backend.location(), reason };
    let head: ConfigHead = serde_json::from_slice(&raw).map_err(|e| damaged(format!("not valid JSON ({e})")))?;
    if head.format.as_deref() != Some(FORMAT_NAME) {
        return Err(damaged("not a coffer repository config".into()));
    }
    let version = head.version.unwrap_or(0);
    if version > HIGHEST_READ_VERSION || version == 0 {
        return Err(Error::UnsupportedVersion { location, found: version, supported: HIGHEST_READ_VERSION });
    }
    let config: RepoConfig = serde_json::from_slice(&raw).map_err(|e| damaged(format!("unreadable ({e})")))?;
    config.chunker.validate().map_err(damaged)?;
    if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&config.pack_size) {
        return Err(damaged(format!("pack size {} is out of range", config.pack_size)));
    }
    Ok(config)
}

impl Repository {
    /// Creates a repository at `backend`, with a first key file for `password`.
    pub async fn init(backend: DynBackend, password: &[u8], opts: InitOptions) -> Result<Repository> {
        let location = backend.location();
        match backend.get(FileKind::Config, "config").await {
            Ok(_) => return Err(Error::AlreadyInitialized { location }),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        if !backend.list(FileKind::Key).await?.is_empty() {
            return Err(Error::AlreadyInitialized { location });
        }
        opts.chunker.validate().map_err(Error::Invalid)?;
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&opts.pack_size) {
            return Err(Error::Invalid(format!(
                "pack size {} must be between {MIN_PACK_SIZE} and {MAX_PACK_SIZE} bytes",
                opts.pack_size
            )));
        }
        if password.is_empty() {
            return Err(Error::Invalid("an empty password is not allowed".into()));
        }
        let secret = MasterSecret::generate();
        let keys = Keys::derive(&secret);
        let mut config = RepoConfig::new(opts.chunker, opts.compression, opts.pack_size);
        config.sign(&keys);
        // The key file goes first: a config without a key would be a
        // repository nobody can open.
        let key = KeyFile::create(&secret, password, opts.kdf, &config.id, "initial").map_err(Error::Invalid)?;
        let key_id = put_json(&backend, FileKind::Key, &key).await?;
        // Data is sealed under epoch 1's random key from the start; epoch 0
        // (the derived metadata key) never seals packs in a new repository.
        let (epoch, _) = crate::repofile::epoch::EpochFile::create(&keys, &config.id, 1);
        let body = serde_json::to_vec_pretty(&epoch).expect("epoch serializes");
        match backend
            .put(FileKind::Epoch, &crate::repofile::epoch::name(1), Bytes::from(body), PutMode::CreateNew)
            .await
        {
            // Another init got here first.
            Err(crate::backend::BackendError::AlreadyExists { .. }) => {
                let _ = backend.delete(FileKind::Key, &key_id.to_hex()).await;
                return Err(Error::AlreadyInitialized { location });
            }
            other => other?,
        }
        let body = serde_json::to_vec_pretty(&config).expect("config serializes");
        // Create-only: of two racing inits exactly one wins; the loser fails
        // instead of leaving a key file bound to a config that was replaced.
        match backend.put(FileKind::Config, "config", Bytes::from(body), PutMode::CreateNew).await {
            Err(crate::backend::BackendError::AlreadyExists { .. }) => {
                let _ = backend.delete(FileKind::Key, &key_id.to_hex()).await;
                return Err(Error::AlreadyInitialized { location });
            }
            other => other?,
        }
        let repo = Self::assemble(backend, config, secret, Some(key_id));
        repo.load_keyring().await?;
        Ok(repo)
    }

    /// Opens the repository at `backend` with any key file that `password` unlocks.
    pub async fn open(backend: DynBackend, password: &[u8]) -> Result<Repository> {
        let config = read_config(&backend).await?;
        let location = backend.location();
        let keys = backend.list(FileKind::Key).await?;
        if keys.is_empty() {
            return Err(Error::NoKeys { location });
        }
        let mut tried = 0;
        let mut malformed: Option<(String, String)> = None;
        for listed in &keys {
            let raw = backend.get(FileKind::Key, &listed.name).await?;
            let Ok(kf) = serde_json::from_slice::<KeyFile>(&raw) else {
                tracing::warn!(key = %listed.name, "skipping unreadable key file");
                continue;
            };
            // A key cache's key file opens with its cache file only.
            if kf.is_file_key() {
                continue;
            }
            tried += 1;
            match kf.open(password, &config.id) {
                Ok(secret) => {
                    tracing::debug!(key = %listed.name, "key file opened with the password (Argon2id)");
                    let keys = Keys::derive(&secret);
                    if !config.verify(&keys) {
                        return Err(Error::DamagedConfig {
                            location,
                            reason: "its authentication code does not match the repository key (it was altered)".into(),
                        });
                    }
                    let key_id = Id::from_hex(&listed.name);
                    let config = upgrade_config(&backend, config, &keys).await;
                    let repo = Self::assemble(backend, config, secret, key_id);
                    repo.load_keyring().await?;
                    return Ok(repo);
                }
                Err(KeyFileError::WrongPassword | KeyFileError::NotAPasswordKey) => {}
                Err(KeyFileError::Malformed(m) | KeyFileError::Other(m)) => {
                    tracing::warn!(key = %listed.name, "skipping key file: {m}");
                    tried -= 1;
                    malformed = Some((FileKind::Key.path(&listed.name), m));
                }
            }
        }
        match (tried, malformed) {
            (0, Some((object, reason))) => Err(Error::Corrupt { object, reason, hint: String::new() }),
            _ => Err(Error::WrongPassword { location, tried }),
        }
    }

    /// Opens the repository with a key cache file (`coffer key cache`): one
    /// read of the key file it names and one AEAD open, no Argon2id. A key
    /// file removed from the repository revokes the cache
    /// ([`Error::KeyCacheRevoked`]); a cache of another repository, or one
    /// whose key does not open its key file, is refused
    /// ([`Error::KeyCacheRefused`]).
    pub async fn open_with_key_cache(backend: DynBackend, cache: &KeyCache) -> Result<Repository> {
        let config = read_config(&backend).await?;
        let location = backend.location();
        let refused = |reason: String| Error::KeyCacheRefused { location: backend.location(), reason };
        if cache.repository != config.id {
            return Err(refused(format!(
                "it is a key cache of repository {}, and this one is {}",
                cache.repository.short(),
                config.id.short()
            )));
        }
        let name = cache.key.to_hex();
        let raw = match backend.get(FileKind::Key, &name).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                return Err(Error::KeyCacheRevoked { location, key: cache.key.short() });
            }
            Err(e) => return Err(e.into()),
        };
        let kf: KeyFile = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt(FileKind::Key.path(&name), format!("unreadable key file ({e})")))?;
        let secret = match kf.open_file_key(&cache.file_key, &config.id) {
            Ok(s) => s,
            Err(KeyFileError::WrongPassword) => {
                return Err(refused(format!(
                    "its key does not open key {} (the file is damaged, or was not written for that key)",
                    cache.key.short()
                )));
            }
            Err(KeyFileError::Malformed(m) | KeyFileError::Other(m)) => {
                return Err(refused(format!("key {} is {m}", cache.key.short())));
            }
            Err(KeyFileError::NotAPasswordKey) => unreachable!("only a password open says so"),
        };
        tracing::debug!(key = %name, "key file opened with a key cache file (no Argon2id)");
        let keys = Keys::derive(&secret);
        if !config.verify(&keys) {
            return Err(Error::DamagedConfig {
                location,
                reason: "its authentication code does not match the repository key (it was altered)".into(),
            });
        }
        let config = upgrade_config(&backend, config, &keys).await;
        let repo = Self::assemble(backend, config, secret, Some(cache.key));
        repo.load_keyring().await?;
        Ok(repo)
    }

    /// Opens the repository with its master secret (recovered from shares)
    /// instead of a password. The secret is checked against the config's
    /// authentication code, so a wrong secret is refused, never used.
    pub async fn open_with_secret(backend: DynBackend, secret: MasterSecret) -> Result<Repository> {
        let config = read_config(&backend).await?;
        let keys = Keys::derive(&secret);
        if !config.verify(&keys) {
            return Err(Error::Invalid(
                "the recovered master secret does not belong to this repository (its config does not authenticate \
                 with it): the shares are from another repository or another split, or one is wrong"
                    .into(),
            ));
        }
        let config = upgrade_config(&backend, config, &keys).await;
        let repo = Self::assemble(backend, config, secret, None);
        repo.load_keyring().await?;
        Ok(repo)
    }

    /// Reads the config (unauthenticated: for checks before a key is known).
    pub async fn read_config(backend: &DynBackend) -> Result<RepoConfig> {
        read_config(backend).await
    }

    /// Opens the repository at a URL.
    pub async fn open_url(url: &str, options: &[(String, String)], password: &[u8]) -> Result<Repository> {
        Self::open(backend_for(url, options)?, password).await
    }

    fn assemble(backend: DynBackend, config: RepoConfig, secret: MasterSecret, key_id: Option<Id>) -> Repository {
        let keys = Keys::derive(&secret);
        let chunker = Chunker::new(config.chunker, keys.chunker_seed());
        let keyring = Arc::new(RwLock::new(Arc::new(Keyring::new(&keys))));
        Repository {
            backend,
            config,
            keys,
            secret,
            key_id,
            keyring,
            reload: Arc::new(tokio::sync::Mutex::new(())),
            chunker,
            index: Arc::new(RwLock::new(Arc::new(MasterIndex::default()))),
        }
    }

    /// The storage backend.
    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The derived keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// The id of the key file this repository was opened with (`None` when
    /// it was opened with a master secret recovered from shares).
    pub fn key_id(&self) -> Option<Id> {
        self.key_id
    }

    /// The data keys as last loaded.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().expect("keyring lock"))
    }

    /// The data key of `epoch`, reloading the keyring once if it is not
    /// known (another process may have rotated since this one opened).
    pub async fn data_key(&self, epoch: u32) -> Result<DataKey> {
        if let Some(k) = self.keyring().get(epoch) {
            return Ok(k.clone());
        }
        let ring = self.load_keyring().await?;
        if let Some(k) = ring.get(epoch) {
            return Ok(k.clone());
        }
        match ring.unreadable_reason(epoch) {
            Some(reason) => Err(Error::Corrupt {
                object: FileKind::Epoch.path(&crate::repofile::epoch::name(epoch)),
                reason: reason.to_string(),
                hint: format!(
                    "; data sealed under key epoch {epoch} cannot be read until the file is restored from a copy \
                     of the repository"
                ),
            }),
            None => Err(Error::MissingEpoch(epoch)),
        }
    }

    /// The master secret (for key management).
    pub fn master_secret(&self) -> &MasterSecret {
        &self.secret
    }

    /// Writes a sealed file named by the BLAKE3 of its stored bytes.
    pub(crate) async fn write_sealed(&self, kind: FileKind, aad: &[u8], plain: &[u8]) -> Result<Id> {
        let sealed = self.keys.seal(plain, aad);
        let id = Id::of_bytes(&sealed);
        self.backend.put(kind, &id.to_hex(), Bytes::from(sealed), PutMode::Overwrite).await?;
        Ok(id)
    }

    /// Reads a sealed, content-addressed file, checking its hash first so that
    /// damage is told apart from a wrong key.
    pub(crate) async fn read_sealed(&self, kind: FileKind, name: &str, aad: &[u8]) -> Result<Vec<u8>> {
        let raw = self.backend.get(kind, name).await?;
        let path = kind.path(name);
        if Id::of_bytes(&raw).to_hex() != name {
            return Err(Error::corrupt(path, "its content does not match its name (truncated or altered)"));
        }
        self.keys.open(&raw, aad).map_err(|_| Error::corrupt(path, "it fails authentication with the repository key"))
    }

    /// Reads a sealed JSON object named by what it describes (not by its
    /// hash: stream items, checkpoints, legacy WAL objects): `None` when it
    /// does not exist, damage when it fails authentication or does not
    /// parse. The caller checks its version and that it describes `name`.
    pub(crate) async fn read_named_json<T: serde::de::DeserializeOwned>(
        &self,
        kind: FileKind,
        name: &str,
        aad: &[u8],
    ) -> Result<Option<T>> {
        let raw = match self.backend.get(kind, name).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let path = kind.path(name);
        let plain = self
            .keys
            .open(&raw, aad)
            .map_err(|_| Error::corrupt(&path, "it fails authentication with the repository key"))?;
        serde_json::from_slice(&plain).map(Some).map_err(|e| Error::corrupt(&path, format!("unreadable ({e})")))
    }

    /// Reads every index file and rebuilds the in-memory index. Packs that
    /// prune has marked for deletion stay readable but are not used for
    /// deduplication.
    pub async fn load_index(&self) -> Result<Arc<MasterIndex>> {
        // Markers first: prune deletes a marker only after its packs are gone
        // from every index file, so reading them in this order never pairs an
        // index that lists a doomed pack with a marker set that lacks it.
        let marked = self.marked_packs().await?;
        let files = self.read_index_files().await?;
        let mut idx = MasterIndex::build(&files, &marked);
        let ring = self.keyring();
        idx.exclude_epochs(|e| ring.is_retired(e));
        tracing::debug!(index_files = files.len(), blobs = idx.len(), "index loaded");
        let idx = Arc::new(idx);
        *self.index.write().expect("index lock") = Arc::clone(&idx);
        Ok(idx)
    }

    /// The index as last loaded.
    pub fn index(&self) -> Arc<MasterIndex> {
        Arc::clone(&self.index.read().expect("index lock"))
    }

    /// Decodes every index file.
    pub(crate) async fn read_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let listed = self.backend.list(FileKind::Index).await?;
            let ids: Vec<Id> = listed.iter().filter_map(|l| l.id()).collect();
            let result: Result<Vec<(Id, IndexFile)>> = futures::stream::iter(ids)
                .map(|id| async move { Ok::<_, Error>((id, self.read_index_file(&id).await?)) })
                .buffer_unordered(8)
                .try_collect()
                .await;
            match result {
                // A prune replaced an index file between our list and read:
                // its replacement is already written, so list again.
                Err(Error::Backend(e)) if e.is_not_found() && attempt < 5 => continue,
                other => return other,
            }
        }
    }

    pub(crate) async fn read_index_file(&self, id: &Id) -> Result<IndexFile> {
        let sealed = self.read_sealed(FileKind::Index, &id.to_hex(), aad::INDEX).await?;
        let plain = zstd::stream::decode_all(&sealed[..])
            .map_err(|e| Error::corrupt(FileKind::Index.path(&id.to_hex()), format!("decompression: {e}")))?;
        IndexFile::decode(&plain).map_err(|e| Error::Corrupt {
            object: FileKind::Index.path(&id.to_hex()),
            hint: if e.starts_with("unknown index file version") {
                "; it was written by a newer coffer: upgrade coffer (`repair index` would not help)".into()
            } else {
                "; `coffer repair index` rebuilds the index from the packs".into()
            },
            reason: e,
        })
    }

    pub(crate) async fn write_index_file(&self, file: &IndexFile) -> Result<Id> {
        let plain = zstd::bulk::compress(&file.encode(), 3).map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
        self.write_sealed(FileKind::Index, aad::INDEX, &plain).await
    }

    /// Packs listed in prune markers (pending deletion).
    pub(crate) async fn marked_packs(&self) -> Result<HashSet<Id>> {
        let markers = crate::commands::prune::read_markers(self).await?;
        Ok(markers.into_iter().flat_map(|(_, _, m)| m.packs).collect())
    }

    /// Loads and decodes one blob.
    ///
    /// A prune (`--reencrypt` or not) may move the blob to a new pack and
    /// delete the old one, or retire the old pack's key epoch, while a
    /// restore runs: when the pack or its epoch key is gone, the index and
    /// keyring are reloaded once (by one caller at a time) and the read is
    /// tried again at the blob's new place.
    pub async fn load_blob(&self, kind: BlobKind, id: &Id) -> Result<Bytes> {
        self.load_blob_decoding(kind, id, false).await
    }

    /// As [`Self::load_blob`], but reads (from a local repository) and
    /// decodes a blob of any size on the thread that polls the future: for
    /// callers on a thread of their own, where a hand-off to the blocking
    /// pool would only add wake-ups.
    pub async fn load_blob_here(&self, kind: BlobKind, id: &Id) -> Result<Bytes> {
        self.load_blob_decoding(kind, id, true).await
    }

    async fn load_blob_decoding(&self, kind: BlobKind, id: &Id, here: bool) -> Result<Bytes> {
        let before = self.index();
        match self.load_blob_from(&before, kind, id, here).await {
            Err(Error::MissingEpoch(_)) => {}
            Err(Error::Backend(e)) if e.is_not_found() => {}
            other => return other,
        }
        {
            let _one = self.reload.lock().await;
            if Arc::ptr_eq(&before, &self.index()) {
                self.load_keyring().await?;
                self.load_index().await?;
            }
        }
        self.load_blob_from(&self.index(), kind, id, here).await
    }

    async fn load_blob_from(&self, idx: &MasterIndex, kind: BlobKind, id: &Id, here: bool) -> Result<Bytes> {
        let loc = idx.lookup(id).ok_or(Error::MissingBlob { kind: kind.name(), id: *id })?;
        let range = loc.offset as u64..loc.offset as u64 + loc.length as u64;
        let pack = loc.pack.to_hex();
        let key = self.data_key(loc.epoch).await?;
        let sealed = if here {
            self.backend.get_range_here(FileKind::Pack, &pack, range).await?
        } else {
            self.backend.get_range(FileKind::Pack, &pack, range).await?
        };
        let keys = self.keys.clone();
        let id = *id;
        let kind = loc.kind;
        let raw_len = loc.raw_len as usize;
        // A small blob decodes in less time than a hand-off to the blocking
        // pool and back takes.
        let decoded = if here || raw_len <= INLINE_DECODE {
            blob::decode(&keys, &key, kind, &id, &sealed, raw_len)
        } else {
            tokio::task::spawn_blocking(move || blob::decode(&keys, &key, kind, &id, &sealed, raw_len))
                .await
                .map_err(|e| Error::Aborted(e.to_string()))?
        };
        decoded.map_err(|e| Error::Corrupt {
            object: FileKind::Pack.path(&pack),
            reason: format!("{} blob {id} at offset {}: {e}", kind.name(), loc.offset),
            hint: String::new(),
        })
    }

    /// Lists every readable snapshot, oldest first. A damaged manifest is
    /// left out with a warning naming it (`check` reports it as an error and
    /// `repair snapshots` sets it aside), so one damaged file does not stop
    /// backups, listings and restores of every other snapshot.
    pub async fn snapshots(&self) -> Result<Vec<(Id, SnapshotManifest)>> {
        let (good, damaged) = self.snapshots_and_damaged().await?;
        for (id, e) in &damaged {
            tracing::warn!("snapshot {} is left out: {e}", id.short());
        }
        Ok(good)
    }

    /// Every readable snapshot, oldest first, and the damaged ones with what
    /// is wrong with them. A snapshot forgotten while listing is in neither.
    pub async fn snapshots_and_damaged(&self) -> Result<(Vec<(Id, SnapshotManifest)>, Vec<(Id, Error)>)> {
        let listed = self.backend.list(FileKind::Snapshot).await?;
        let ids: Vec<Id> = listed.iter().filter_map(|l| l.id()).collect();
        let read: Vec<(Id, Result<SnapshotManifest>)> = futures::stream::iter(ids)
            .map(|id| async move { (id, self.read_manifest(&id).await) })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut good = Vec::new();
        let mut damaged = Vec::new();
        for (id, r) in read {
            match r {
                Ok(m) => good.push((id, m)),
                Err(Error::SnapshotNotFound(_)) => {}
                Err(e @ Error::Corrupt { .. }) => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        good.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        damaged.sort_by_key(|(id, _)| *id);
        Ok((good, damaged))
    }

    /// Reads one manifest.
    pub async fn read_manifest(&self, id: &Id) -> Result<SnapshotManifest> {
        let name = id.to_hex();
        let damaged = |reason: String| Error::Corrupt {
            object: FileKind::Snapshot.path(&name),
            reason,
            hint: "; `coffer repair snapshots` sets damaged snapshot files aside".into(),
        };
        let plain = match self.read_sealed(FileKind::Snapshot, &name, aad::SNAPSHOT).await {
            Err(Error::Backend(e)) if e.is_not_found() => return Err(Error::SnapshotNotFound(name)),
            Err(Error::Corrupt { reason, .. }) => return Err(damaged(reason)),
            other => other?,
        };
        let m: SnapshotManifest =
            serde_json::from_slice(&plain).map_err(|e| damaged(format!("unreadable manifest ({e})")))?;
        if !(1..=crate::repofile::snapshot::MANIFEST_VERSION).contains(&m.version) {
            return Err(damaged(format!("unknown manifest version {}", m.version)));
        }
        Ok(m)
    }

    /// Finds a snapshot by unique id prefix, `latest`, or `latest:SOURCE`.
    pub async fn resolve_snapshot(&self, spec: &str) -> Result<Id> {
        if let Some(rest) = spec.strip_prefix("latest") {
            let source = rest.strip_prefix(':');
            if !rest.is_empty() && source.is_none() {
                return Err(Error::SnapshotNotFound(spec.to_string()));
            }
            let snaps = self.snapshots().await?;
            return snaps
                .iter()
                .rev()
                .find(|(_, m)| source.is_none_or(|s| m.source == s || m.plugin.name == s))
                .map(|(id, _)| *id)
                .ok_or_else(|| Error::SnapshotNotFound(spec.to_string()));
        }
        let spec_l = spec.to_ascii_lowercase();
        if spec_l.is_empty() || !spec_l.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound(spec.to_string()));
        }
        let listed = self.backend.list(FileKind::Snapshot).await?;
        let matches: Vec<_> = listed.iter().filter(|l| l.name.starts_with(&spec_l)).collect();
        match matches.len() {
            0 => Err(Error::SnapshotNotFound(spec.to_string())),
            1 => matches[0].id().ok_or_else(|| Error::SnapshotNotFound(spec.to_string())),
            _ => Err(Error::AmbiguousSnapshot(spec.to_string())),
        }
    }
}

/// Raises an authenticated config of an older format version to
/// [`FORMAT_VERSION`], so that builds that do not know what this one writes
/// refuse the repository instead of misreading it. Storage that refuses the
/// write (read-only credentials) leaves it as it was: reading needs no
/// upgrade.
async fn upgrade_config(backend: &DynBackend, mut config: RepoConfig, keys: &Keys) -> RepoConfig {
    if config.version >= FORMAT_VERSION {
        return config;
    }
    let old = config.version;
    if let Err(e) = raise_config(backend, &mut config, keys, FORMAT_VERSION).await {
        tracing::warn!("could not raise the repository format version from {old} to {FORMAT_VERSION}: {e}");
        config.version = old;
        config.sign(keys);
    }
    config
}

/// Stores `config` raised to format `version`, signed.
async fn raise_config(
    backend: &DynBackend,
    config: &mut RepoConfig,
    keys: &Keys,
    version: u32,
) -> std::result::Result<(), crate::backend::BackendError> {
    let old = config.version;
    config.version = version;
    config.sign(keys);
    let body = serde_json::to_vec_pretty(config).expect("config serializes");
    backend.put(FileKind::Config, "config", Bytes::from(body), PutMode::Overwrite).await?;
    tracing::info!(from = old, to = version, "repository format version raised");
    Ok(())
}

impl Repository {
    /// Raises the stored config to format `version` unless it is there
    /// already, before this build writes something older builds would
    /// mishandle. Fails (writing nothing else) if the config cannot be
    /// rewritten.
    pub(crate) async fn require_version(&self, version: u32) -> Result<()> {
        if self.config.version >= version {
            return Ok(());
        }
        let mut current = read_config(&self.backend).await?;
        if current.version >= version {
            return Ok(());
        }
        if !current.verify(&self.keys) {
            return Err(Error::corrupt(
                "config",
                "its authentication code does not match the repository key (the config was altered)",
            ));
        }
        let old = current.version;
        raise_config(&self.backend, &mut current, &self.keys, version).await.map_err(|e| {
            Error::Invalid(format!(
                "the repository's format version must be raised from {old} to {version} first, and the config \
                 could not be rewritten ({e}); nothing was written"
            ))
        })
    }
}

/// Writes a JSON file named by the BLAKE3 of its bytes (key files).
pub(crate) async fn put_json<T: serde::Serialize>(backend: &DynBackend, kind: FileKind, v: &T) -> Result<Id> {
    let body = serde_json::to_vec_pretty(v).expect("serializes");
    let id = Id::of_bytes(&body);
    backend.put(kind, &id.to_hex(), Bytes::from(body), PutMode::Overwrite).await?;
    Ok(id)
}
