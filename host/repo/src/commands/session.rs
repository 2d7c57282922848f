//! `sessions/<id>`: markers of backups in progress.
//!
//! A backup writes a session marker before it loads the index and refreshes
//! it every [`HEARTBEAT`]; it deletes it after its snapshot is committed.
//! Markers are not locks: any number of backups run side by side. Prune's
//! second phase waits for every live session that began before its first
//! phase, so a backup that deduplicated against a pack prune wants to delete
//! is always seen. A marker not refreshed for [`STALE_AFTER`] belongs to a
//! dead process and is ignored (and removed by prune).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::backend::FileKind;
use crate::error::Result;
use crate::id::Id;
use crate::repofile::aad;
use crate::repository::Repository;

/// How often a running backup refreshes its marker.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// After this long without a refresh a marker is considered dead.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// The marker's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// When the backup started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// Host running it.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// What writes: `backup`, `stream` (a stream writer), `wal push`; empty
    /// in markers written before it was recorded (taken as a backup of any
    /// plugin by stream retention).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// For a backup: the stream owner of its plugin (empty when it has
    /// none), so that stream retention leaves that owner's streams alone
    /// while the backup may still declare needs on them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// [`SessionInfo::purpose`] of a backup.
pub const PURPOSE_BACKUP: &str = "backup";
/// [`SessionInfo::purpose`] of a stream writer.
pub const PURPOSE_STREAM: &str = "stream";

/// A live session marker; refreshes itself until dropped or ended.
pub struct Session {
    name: String,
    heartbeat: tokio::task::JoinHandle<()>,
    repo: Repository,
    health: Arc<Mutex<Health>>,
}

/// When the marker was last refreshed, and whether it ever went unrefreshed
/// long enough for a prune to take this backup for dead.
struct Health {
    last_refresh: SystemTime,
    lapsed: bool,
}

/// A gap between refreshes longer than this (the process was paused, or the
/// store unreachable) means a prune may have swept packs this backup relies
/// on: such a backup refuses to commit.
const MAX_GAP: Duration = Duration::from_secs(STALE_AFTER.as_secs() / 2);

fn gap_since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or(Duration::ZERO)
}

impl Session {
    /// Writes a marker and starts its heartbeat.
    pub async fn start(repo: &Repository) -> Result<Session> {
        Session::start_for(repo, "", "").await
    }

    /// As [`Session::start`], recording what writes ([`SessionInfo::purpose`])
    /// and for which stream owner ([`SessionInfo::owner`]).
    pub async fn start_for(repo: &Repository, purpose: &str, owner: &str) -> Result<Session> {
        let info = SessionInfo {
            started: chrono::Utc::now(),
            host: std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
            pid: std::process::id(),
            purpose: purpose.to_string(),
            owner: owner.to_string(),
        };
        let plain = serde_json::to_vec(&info).expect("serializes");
        // A random name: refreshing rewrites the same object in place.
        let name = Id(crate::crypto::random_bytes()).to_hex();
        let sealed = bytes::Bytes::from(repo.keys.seal(&plain, aad::SESSION));
        repo.backend.put(FileKind::Session, &name, sealed.clone(), crate::backend::PutMode::Overwrite).await?;
        let r = repo.clone();
        let n = name.clone();
        let health = Arc::new(Mutex::new(Health { last_refresh: SystemTime::now(), lapsed: false }));
        let h = Arc::clone(&health);
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let ok = r
                    .backend
                    .put(FileKind::Session, &n, sealed.clone(), crate::backend::PutMode::Overwrite)
                    .await
                    .is_ok();
                let mut h = h.lock().expect("health lock");
                if gap_since(h.last_refresh) > MAX_GAP {
                    h.lapsed = true;
                }
                if ok {
                    h.last_refresh = SystemTime::now();
                }
            }
        });
        Ok(Session { name, heartbeat, repo: repo.clone(), health })
    }

    /// Fails if the marker may have looked dead to a prune at some point.
    pub fn check_alive(&self) -> Result<()> {
        let h = self.health.lock().expect("health lock");
        if h.lapsed || gap_since(h.last_refresh) > MAX_GAP {
            return Err(crate::Error::Aborted(format!(
                "this backup's session marker went unrefreshed for over {} s (process paused or storage unreachable); \
                 a prune may have removed data it deduplicated against, so it was not committed: run it again",
                MAX_GAP.as_secs()
            )));
        }
        Ok(())
    }

    /// Stops the heartbeat and removes the marker.
    pub async fn end(self) {
        self.heartbeat.abort();
        let _ = self.repo.backend.delete(FileKind::Session, &self.name).await;
        tracing::debug!("session marker removed");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Sessions whose marker was refreshed within [`STALE_AFTER`] (plus `extra`
/// slack), with their start times; and the names of dead ones.
pub async fn live_sessions(repo: &Repository) -> Result<(Vec<SessionInfo>, Vec<String>)> {
    let now = chrono::Utc::now();
    let stale = chrono::Duration::from_std(STALE_AFTER).expect("fits");
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for l in repo.backend.list(FileKind::Session).await? {
        if now - l.modified > stale {
            dead.push(l.name);
            continue;
        }
        match repo.read_session(&l.name).await {
            Ok(info) => live.push(info),
            // Finished since we listed it.
            Err(crate::Error::Backend(e)) if e.is_not_found() => continue,
            // Unreadable: assume the worst, a live backup older than any marker.
            Err(_) => live.push(SessionInfo {
                started: chrono::DateTime::<chrono::Utc>::MIN_UTC,
                host: String::new(),
                pid: 0,
                purpose: String::new(),
                owner: String::new(),
            }),
        }
    }
    Ok((live, dead))
}

impl Repository {
    async fn read_session(&self, name: &str) -> Result<SessionInfo> {
        let raw = self.backend.get(FileKind::Session, name).await?;
        let plain = self
            .keys
            .open(&raw, aad::SESSION)
            .map_err(|_| crate::Error::corrupt(FileKind::Session.path(name), "fails authentication"))?;
        serde_json::from_slice(&plain).map_err(|e| crate::Error::corrupt(FileKind::Session.path(name), e.to_string()))
    }
}
