//! Key files: list, add, remove. Every key file wraps the same master
//! secret, so adding or removing one never rewrites data.

use serde::Serialize;

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repofile::keycache::KeyCache;
use crate::repofile::keyfile::{KdfParams, KeyFile};
use crate::repository::{Repository, put_json};

/// A key file as listed.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Key file id.
    pub id: Id,
    /// True for the key this repository was opened with.
    pub current: bool,
    /// Creation time.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Host that made it.
    pub host: String,
    /// User that made it.
    pub user: String,
    /// Operator label.
    pub label: String,
    /// `password`, or `cache` for a key cache's key file (opened by the
    /// operator's cache file, without a password).
    pub kind: &'static str,
}

impl Repository {
    /// Lists key files.
    pub async fn keys_list(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for l in self.backend.list(FileKind::Key).await? {
            let raw = self.backend.get(FileKind::Key, &l.name).await?;
            let kf: KeyFile =
                serde_json::from_slice(&raw).map_err(|e| Error::corrupt(FileKind::Key.path(&l.name), e.to_string()))?;
            let Some(id) = l.id() else { continue };
            let kind = if kf.is_file_key() { "cache" } else { "password" };
            out.push(KeyInfo {
                id,
                kind,
                current: Some(id) == self.key_id,
                created: kf.created,
                host: kf.host,
                user: kf.user,
                label: kf.label,
            });
        }
        out.sort_by_key(|k| k.created);
        Ok(out)
    }

    /// Adds a key file for `password`; returns its id.
    pub async fn add_key(&self, password: &[u8], kdf: KdfParams, label: &str) -> Result<Id> {
        if password.is_empty() {
            return Err(Error::Invalid("an empty password is not allowed".into()));
        }
        let kf = KeyFile::create(&self.secret, password, kdf, &self.config.id, label).map_err(Error::Invalid)?;
        put_json(&self.backend, FileKind::Key, &kf).await
    }

    /// Adds the key file of a new key cache (no Argon2id: see
    /// [`KeyCache`]); returns its id and the cache, which the caller writes
    /// to the operator's file. Whoever reads that file can open the
    /// repository; removing the key file ([`Self::remove_key`]) revokes it.
    pub async fn add_key_cache(&self, label: &str) -> Result<(Id, KeyCache)> {
        let (kf, file_key) = KeyFile::create_file_key(&self.secret, &self.config.id, label);
        let id = put_json(&self.backend, FileKind::Key, &kf).await?;
        Ok((id, KeyCache::new(self.config.id, id, file_key)))
    }

    /// Removes a key file. The key in use and the last key cannot be removed.
    pub async fn remove_key(&self, id: &Id) -> Result<()> {
        let keys = self.keys_list().await?;
        if !keys.iter().any(|k| k.id == *id) {
            return Err(Error::Invalid(format!("no key file {id} (see `coffer key list`)")));
        }
        if Some(*id) == self.key_id {
            return Err(Error::Invalid(
                "refusing to remove the key this session was opened with; open with another key to remove it".into(),
            ));
        }
        // A key cache opens the repository too, but is no way back in once
        // its file is lost: the last password key stays.
        let removing_password = keys.iter().any(|k| k.id == *id && k.kind == "password");
        if removing_password && keys.iter().filter(|k| k.kind == "password").count() <= 1 {
            return Err(Error::Invalid(
                "refusing to remove the last password key: the repository would be readable only with key cache \
                 files or shares (add another password with `coffer key add` first)"
                    .into(),
            ));
        }
        if keys.len() <= 1 {
            return Err(Error::Invalid("refusing to remove the last key: the repository would be unreadable".into()));
        }
        Ok(self.backend.delete(FileKind::Key, &id.to_hex()).await?)
    }
}
