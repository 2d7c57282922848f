//! Key epochs: loading the keyring, `key rotate`, what each epoch still
//! protects, and retiring epochs no pack is sealed under any more.
//!
//! Rotation adds `epochs/<n+1>` with a fresh random data key; from then on
//! new packs are sealed under it, and packs of older epochs stay readable.
//! `prune --reencrypt` copies the blobs of older-epoch packs into new packs
//! (chunk ids do not depend on the epoch, so deduplication is unaffected)
//! and then retires every older epoch that no indexed pack uses and no
//! running backup may still write under, deleting its key file.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::backend::{BackendError, FileKind, PutMode};
use crate::commands::session::live_sessions;
use crate::crypto::{DataKey, Keyring};
use crate::error::{Error, Result};
use crate::repofile::epoch::{self, EpochFile};
use crate::repository::Repository;

/// A backup session that began up to this long after an epoch was created
/// may still have read the keyring before it (clock skew between hosts).
const SKEW_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// The key new data is sealed under (the current epoch's). Refused while
/// the newest epoch's file is damaged: falling back to an older key would
/// seal new data under a key the operator rotated away from.
pub(crate) fn writable_key(keyring: &Keyring) -> Result<DataKey> {
    let newest = keyring.highest_number();
    if let Some(reason) = keyring.unreadable_reason(newest) {
        return Err(Error::Corrupt {
            object: FileKind::Epoch.path(&epoch::name(newest)),
            reason: format!("the current key epoch's file is damaged: {reason}"),
            hint: "; restore it from a copy of the repository, or run `coffer key rotate` to start a new epoch for \
                   new data"
                .into(),
        });
    }
    Ok(keyring.current().clone())
}

/// One key epoch as listed by `coffer key list`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochInfo {
    /// The epoch number.
    pub epoch: u32,
    /// True for the epoch new data is sealed under.
    pub current: bool,
    /// When it began (`None` for epoch 0, the derived metadata key).
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    /// Indexed packs sealed under it.
    pub packs: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// False if packs use it but its key file is gone or damaged.
    pub held: bool,
    /// Why its key file could not be read, if it is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

impl EpochInfo {
    /// An epoch that packs name (or whose file is damaged) but whose key
    /// is not held.
    fn unheld(epoch: u32) -> Self {
        EpochInfo { epoch, current: false, created: None, packs: 0, bytes: 0, held: false, damaged: None }
    }
}

impl Repository {
    /// Reads every `epochs/` file and replaces the keyring.
    pub async fn load_keyring(&self) -> Result<Arc<Keyring>> {
        let mut ring = Keyring::new(&self.keys);
        for l in self.backend.list(FileKind::Epoch).await? {
            let raw = match self.backend.get(FileKind::Epoch, &l.name).await {
                Ok(r) => r,
                // Retired between list and read.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let opened = serde_json::from_slice::<EpochFile>(&raw)
                .map_err(|e| format!("unreadable JSON ({e})"))
                .and_then(|f| Ok((f.open(&self.keys, &self.config.id, &l.name)?, f.created)));
            match opened {
                Ok((key, created)) => ring.insert(key, created),
                Err(reason) => {
                    // Listing only yields 8-digit names, so this parses.
                    let number: u32 = l.name.parse().unwrap_or(u32::MAX);
                    tracing::warn!(file = %FileKind::Epoch.path(&l.name), "skipping damaged key epoch file: {reason}");
                    ring.insert_unreadable(number, reason);
                }
            }
        }
        let ring = Arc::new(ring);
        *self.keyring.write().expect("keyring lock") = Arc::clone(&ring);
        Ok(ring)
    }

    /// Starts a new key epoch; returns its number. New packs are sealed
    /// under it from the next backup on; existing data stays readable.
    pub async fn rotate_key(&self) -> Result<u32> {
        let ring = self.load_keyring().await?;
        let next =
            ring.highest_number().checked_add(1).ok_or_else(|| Error::Invalid("no epoch numbers left".into()))?;
        let (file, _) = EpochFile::create(&self.keys, &self.config.id, next);
        let body = serde_json::to_vec_pretty(&file).expect("epoch serializes");
        match self.backend.put(FileKind::Epoch, &epoch::name(next), Bytes::from(body), PutMode::CreateNew).await {
            Ok(()) => {}
            Err(BackendError::AlreadyExists { .. }) => {
                return Err(Error::Invalid(format!(
                    "another `coffer key rotate` created epoch {next} at the same time; nothing was changed by this one"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.load_keyring().await?;
        Ok(next)
    }

    /// Every epoch the keyring holds or an indexed pack uses, with the packs
    /// and bytes it still protects.
    pub async fn epochs(&self) -> Result<Vec<EpochInfo>> {
        let ring = self.load_keyring().await?;
        let idx = self.load_index().await?;
        let current = ring.current().epoch();
        let mut out: BTreeMap<u32, EpochInfo> = ring
            .epochs()
            .map(|e| {
                let info = EpochInfo {
                    epoch: e,
                    current: e == current,
                    created: ring.created(e),
                    packs: 0,
                    bytes: 0,
                    held: true,
                    damaged: None,
                };
                (e, info)
            })
            .collect();
        for (_, size, e) in idx.packs_with_epochs() {
            let slot = out.entry(e).or_insert_with(|| EpochInfo::unheld(e));
            slot.packs += 1;
            slot.bytes += size;
        }
        for (e, reason) in ring.unreadable() {
            let slot = out.entry(e).or_insert_with(|| EpochInfo::unheld(e));
            slot.damaged = Some(reason.to_string());
        }
        // Epoch 0 is only worth listing when data is sealed under it.
        Ok(out.into_values().filter(|i| i.epoch != 0 || i.packs > 0).collect())
    }

    /// Deletes the key file of every epoch older than the current one that
    /// no indexed pack is sealed under, unless a live backup session began
    /// before the next epoch existed (it may still write packs under it).
    /// Returns the retired epochs and the ones still in use.
    pub async fn retire_epochs(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        // Sessions before index files: a backup that commits between the two
        // reads is either still live in the first or indexed in the second.
        let (live, _) = live_sessions(self).await?;
        let ring = self.load_keyring().await?;
        let files = self.read_index_files().await?;
        let used: std::collections::HashSet<u32> =
            files.iter().flat_map(|(_, f)| f.packs.iter().map(|p| p.epoch)).collect();
        let current = ring.current().epoch();
        let epochs: Vec<u32> = ring.epochs().collect();
        let mut retired = Vec::new();
        let mut kept = Vec::new();
        for (i, &e) in epochs.iter().enumerate() {
            // Epoch 0 is the derived metadata key: there is no file to delete.
            if e == 0 || e == current {
                continue;
            }
            let successor = epochs.get(i + 1).and_then(|n| ring.created(*n));
            let may_write = successor.is_none_or(|c| {
                let until = c.checked_add_signed(SKEW_MARGIN).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
                live.iter().any(|s| s.started < until)
            });
            if used.contains(&e) || may_write {
                kept.push(e);
                continue;
            }
            match self.backend.delete(FileKind::Epoch, &epoch::name(e)).await {
                Ok(()) => retired.push(e),
                Err(err) if err.is_not_found() => retired.push(e),
                Err(err) => return Err(err.into()),
            }
        }
        self.load_keyring().await?;
        Ok((retired, kept))
    }

    /// Fails if epoch `epoch`'s key file is gone (a backup about to commit
    /// packs sealed under it must not).
    pub(crate) async fn check_epoch_held(&self, epoch: u32) -> Result<()> {
        if epoch == 0 {
            return Ok(());
        }
        match self.backend.get(FileKind::Epoch, &epoch::name(epoch)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Err(Error::Aborted(format!(
                "key epoch {epoch}, which this backup sealed its data under, was retired while it ran; \
                 nothing was committed: run the backup again"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
