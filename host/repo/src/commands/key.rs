//! Key files: list, add, remove. Every key file wraps the same master
//! secret, so adding or removing one never rewrites data.

use serde::Serialize;

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::id::Id;
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
            out.push(KeyInfo {
                id,
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
        if keys.len() <= 1 {
            return Err(Error::Invalid("refusing to remove the last key: the repository would be unreadable".into()));
        }
        Ok(self.backend.delete(FileKind::Key, &id.to_hex()).await?)
    }
}
