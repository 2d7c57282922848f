//! `locks/exclusive.<generation>`: the lease that keeps maintenance runs
//! (`prune`, `repair index`, `repair snapshots`) apart, on one machine or on
//! several sharing a bucket; and `locks/stream.<owner>.<stream>.<generation>`,
//! the same kind of lease for one stream, which keeps two followers of it
//! apart ([`LeaseScope`]). Each scope has its own generations.
//!
//! A lease is taken by creating the object for the next generation with a
//! create-only write (`object_store`'s `PutMode::Create`, which local disk,
//! S3, GCS and Azure enforce): of two runs that race for one generation,
//! exactly one succeeds. A live lease blocks every other run; the holder
//! refreshes its object every fifth of its expiry. A lease is dead when it
//! went unrefreshed for longer than the expiry its holder wrote into it, or
//! at once when its holder ran on this machine (same host name, boot and
//! process namespace) and that process is gone. Taking over a dead lease
//! never deletes it first: the taker creates the next generation, so two
//! takers cannot both win. Before each destructive step the holder checks
//! that it still holds the lease (its refreshes kept up, its object is
//! still its own, and no later generation exists); otherwise it stops.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, FileKind, PutMode};
use crate::error::{Error, Result};
use crate::repofile::aad;
use crate::repofile::stream::{StreamOwner, valid_stream};
use crate::repository::Repository;

/// How long a lease outlives a crash of its holder on another machine
/// (unless the holder chose another expiry).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// The shortest expiry a holder may choose: refreshes every fifth of it
/// must stay well above a store's round trip.
pub const MIN_EXPIRY: Duration = Duration::from_secs(5);

/// The prefix of the exclusive lease's object names.
const EXCLUSIVE_PREFIX: &str = "exclusive.";

/// The prefix of stream leases' object names.
const STREAM_PREFIX: &str = "stream.";

/// What a lease keeps to one run at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseScope {
    /// The repository's maintenance (`locks/exclusive.<generation>`).
    Exclusive,
    /// One stream's follower (`locks/stream.<owner>.<stream>.<generation>`).
    Stream {
        /// The stream's owner.
        owner: StreamOwner,
        /// The stream.
        stream: String,
    },
}

impl LeaseScope {
    /// The prefix of this scope's object names, up to the generation.
    fn prefix(&self) -> String {
        match self {
            LeaseScope::Exclusive => EXCLUSIVE_PREFIX.to_string(),
            LeaseScope::Stream { owner, stream } => format!("{STREAM_PREFIX}{owner}.{stream}."),
        }
    }
}

/// A lease object's content (sealed with the repository's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// What holds it: `prune`, `repair index`, `repair snapshots`.
    pub operation: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When the holder took the lease.
    pub started: chrono::DateTime<chrono::Utc>,
    /// Seconds without a refresh after which the lease is dead.
    pub expiry_secs: u64,
    /// Random, so the holder recognises its own object.
    pub token: String,
    /// What makes "same machine" certain: boot id and process namespace
    /// (empty where the system does not tell).
    #[serde(default)]
    pub machine: String,
    /// The holder's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22), so a reused process id is not taken for the holder.
    #[serde(default)]
    pub proc_start: u64,
}

/// A held lease; refreshes itself until released or dropped.
pub struct Lease {
    scope: LeaseScope,
    name: String,
    generation: u64,
    token: String,
    expiry: Duration,
    repo: Repository,
    heartbeat: tokio::task::JoinHandle<()>,
    last_refresh: Arc<Mutex<Instant>>,
}

/// The object name of a generation of the scope whose prefix is `prefix`.
fn object_name(prefix: &str, generation: u64) -> String {
    format!("{prefix}{generation:010}")
}

/// The scope prefix (up to and including the last `.`) and generation of a
/// lease object's name, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<(&str, u64)> {
    let dot = name.rfind('.')?;
    let (prefix, digits) = (&name[..=dot], &name[dot + 1..]);
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scoped = prefix == EXCLUSIVE_PREFIX
        || prefix.strip_prefix(STREAM_PREFIX).and_then(|r| r.strip_suffix('.')).is_some_and(|r| {
            // The owner has no `.`; the stream may.
            r.split_once('.').is_some_and(|(o, s)| StreamOwner::parse(o).is_ok() && valid_stream(s).is_ok())
        });
    scoped.then(|| Some((prefix, digits.parse().ok()?)))?
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Boot id plus process namespace: two processes with equal values see the
/// same process table. Empty when unknown, which never counts as "same".
fn machine_identity() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string());
    let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string());
    match (boot, ns) {
        (Ok(b), Ok(n)) if !b.is_empty() => format!("{b} {n}"),
        _ => String::new(),
    }
}

/// A process's state letter and start time from `/proc/PID/stat`, or
/// `None` when no such process exists.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=22 follow; field 22 is the 19th after the state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// True when the holder certainly ran on this machine and is gone.
fn holder_is_gone(info: &LeaseInfo, here: &str) -> bool {
    if here.is_empty() || info.machine != here || info.host != host_name() {
        return false;
    }
    match proc_stat(info.pid) {
        None => true,
        // A zombie has exited; a different start time is another process.
        Some((state, start)) => state == 'Z' || (info.proc_start != 0 && start != info.proc_start),
    }
}

impl Lease {
    /// Takes the repository's exclusive lease for `operation`, or fails with
    /// [`Error::LeaseHeld`] naming the live holder.
    pub async fn acquire(repo: &Repository, operation: &str, expiry: Duration) -> Result<Lease> {
        Lease::acquire_scoped(repo, LeaseScope::Exclusive, operation, expiry).await
    }

    /// Takes the lease of `scope` for `operation`, or fails with
    /// [`Error::LeaseHeld`] (the exclusive lease) or
    /// [`Error::StreamLeaseHeld`] (a stream's) naming the live holder.
    pub async fn acquire_scoped(
        repo: &Repository,
        scope: LeaseScope,
        operation: &str,
        expiry: Duration,
    ) -> Result<Lease> {
        let prefix = scope.prefix();
        let expiry = expiry.max(MIN_EXPIRY);
        let here = machine_identity();
        let info = LeaseInfo {
            operation: operation.to_string(),
            host: host_name(),
            pid: std::process::id(),
            started: chrono::Utc::now(),
            expiry_secs: expiry.as_secs(),
            token: crate::id::Id(crate::crypto::random_bytes()).to_hex(),
            machine: here.clone(),
            proc_start: proc_stat(std::process::id()).map_or(0, |(_, s)| s),
        };
        let plain = serde_json::to_vec(&info).expect("serializes");
        let sealed = bytes::Bytes::from(repo.keys.seal(&plain, aad::LEASE));
        // Each round either takes the next generation or finds the run that
        // took it first; a few rounds cover leases released meanwhile.
        for _ in 0..4 {
            let mut newest = 0u64;
            let mut dead = Vec::new();
            for l in repo.backend.list_prefix(FileKind::Lease, &prefix).await? {
                let Some(generation) = parse_name(&l.name).filter(|(p, _)| *p == prefix).map(|(_, g)| g) else {
                    continue;
                };
                newest = newest.max(generation);
                let holder = match repo.read_lease(&l.name).await {
                    Ok(h) => Some(h),
                    // Released since we listed it.
                    Err(Error::Backend(e)) if e.is_not_found() => {
                        dead.push(l.name);
                        continue;
                    }
                    // Unreadable: held for the default expiry since written.
                    Err(_) => None,
                };
                let limit = holder.as_ref().map_or(DEFAULT_EXPIRY, |h| Duration::from_secs(h.expiry_secs));
                let age = (chrono::Utc::now() - l.modified).to_std().unwrap_or(Duration::ZERO);
                let gone = holder.as_ref().is_some_and(|h| holder_is_gone(h, &here));
                if age <= limit && !gone {
                    return Err(held_error(&scope, operation, &l.name, holder, l.modified, limit));
                }
                dead.push(l.name);
            }
            let generation = newest + 1;
            let name = object_name(&prefix, generation);
            match repo.backend.put(FileKind::Lease, &name, sealed.clone(), PutMode::CreateNew).await {
                Ok(()) => {
                    // Dead leases of earlier generations are only clutter now.
                    for d in dead {
                        let _ = repo.backend.delete(FileKind::Lease, &d).await;
                    }
                    return Ok(Lease::start(repo, scope, name, generation, info.token, expiry, sealed));
                }
                // Another run took this generation first: look again.
                Err(BackendError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(format!(
            "could not take the lease {} for {operation}: other runs kept taking it; try again",
            FileKind::Lease.path(&format!("{prefix}*"))
        )))
    }

    fn start(
        repo: &Repository,
        scope: LeaseScope,
        name: String,
        generation: u64,
        token: String,
        expiry: Duration,
        sealed: bytes::Bytes,
    ) -> Lease {
        let last_refresh = Arc::new(Mutex::new(Instant::now()));
        let (r, n, lr) = (repo.clone(), name.clone(), Arc::clone(&last_refresh));
        let every = expiry / 5;
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // A holder that was paused (or cut off) for half the expiry
                // may have been taken over meanwhile: it never refreshes
                // again, so `check` reports the lease lost instead of a
                // late refresh making it look held.
                if lr.lock().expect("lease lock").elapsed() > expiry / 2 {
                    break;
                }
                let wrote = Instant::now();
                if r.backend.put(FileKind::Lease, &n, sealed.clone(), PutMode::Overwrite).await.is_ok() {
                    *lr.lock().expect("lease lock") = wrote;
                }
            }
        });
        Lease { scope, name, generation, token, expiry, repo: repo.clone(), heartbeat, last_refresh }
    }

    /// Stops refreshing, as a paused or cut-off holder would (tests).
    #[cfg(any(test, feature = "test-support"))]
    pub fn stop_refreshing(&self) {
        self.heartbeat.abort();
    }

    /// The lease object's path in the repository.
    pub fn path(&self) -> String {
        FileKind::Lease.path(&self.name)
    }

    /// Fails unless this run certainly still holds the lease: its refreshes
    /// kept up (a gap of half the expiry would let another run take it),
    /// its object is still its own, and no later generation exists. Call it
    /// before every step that deletes.
    pub async fn check(&self) -> Result<()> {
        let gap = self.last_refresh.lock().expect("lease lock").elapsed();
        if gap > self.expiry / 2 {
            return Err(self
                .lost(format!("it went unrefreshed for {} s (process paused or storage unreachable)", gap.as_secs())));
        }
        match self.repo.read_lease(&self.name).await {
            Ok(info) if info.token == self.token => {}
            Ok(_) => return Err(self.lost("its object now belongs to another run".into())),
            Err(Error::Backend(e)) if e.is_not_found() => {
                return Err(self.lost("its object was removed".into()));
            }
            Err(e) => return Err(e),
        }
        let prefix = self.scope.prefix();
        let later = self
            .repo
            .backend
            .list_prefix(FileKind::Lease, &prefix)
            .await?
            .iter()
            .filter_map(|l| parse_name(&l.name))
            .any(|(p, g)| p == prefix && g > self.generation);
        if later {
            return Err(self.lost("another run has taken a later generation of it".into()));
        }
        Ok(())
    }

    fn lost(&self, why: String) -> Error {
        match &self.scope {
            LeaseScope::Exclusive => Error::LeaseLost { object: self.path(), reason: why },
            LeaseScope::Stream { .. } => Error::StreamLeaseLost { object: self.path(), reason: why },
        }
    }

    /// Releases the lease after `result`, the run it guarded: unless the
    /// run found it had lost the lease (the object may be another run's
    /// now), the object is removed.
    pub async fn release_after<T>(self, result: &Result<T>) {
        if !matches!(result, Err(Error::LeaseLost { .. } | Error::StreamLeaseLost { .. })) {
            self.release().await;
        }
    }

    /// Stops refreshing and removes the lease object.
    pub async fn release(self) {
        self.heartbeat.abort();
        let _ = self.repo.backend.delete(FileKind::Lease, &self.name).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A lease dropped without `release` (an error path) stops refreshing
        // and expires; `release` is what frees it at once.
        self.heartbeat.abort();
    }
}

fn held_error(
    scope: &LeaseScope,
    operation: &str,
    name: &str,
    holder: Option<LeaseInfo>,
    modified: chrono::DateTime<chrono::Utc>,
    limit: Duration,
) -> Error {
    let expires = modified + chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
    let holder = match holder {
        Some(h) => format!(
            "{} started {} on host {} (pid {})",
            h.operation,
            h.started.format("%Y-%m-%d %H:%M:%S UTC"),
            if h.host.is_empty() { "?" } else { &h.host },
            h.pid
        ),
        None => "a run whose lease object cannot be read".to_string(),
    };
    let (object, expires) = (FileKind::Lease.path(name), expires.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    match scope {
        LeaseScope::Exclusive => Error::LeaseHeld { operation: operation.to_string(), object, holder, expires },
        LeaseScope::Stream { owner, stream } => {
            Error::StreamLeaseHeld { stream: format!("{owner}/{stream}"), object, holder, expires }
        }
    }
}

impl Repository {
    async fn read_lease(&self, name: &str) -> Result<LeaseInfo> {
        // Rewritten in place by its holder, so not named by its content.
        let raw = self.backend.get(FileKind::Lease, name).await?;
        let plain = self
            .keys
            .open(&raw, aad::LEASE)
            .map_err(|_| Error::corrupt(FileKind::Lease.path(name), "fails authentication"))?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(FileKind::Lease.path(name), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&object_name(EXCLUSIVE_PREFIX, 7)), Some(("exclusive.", 7)));
        assert_eq!(parse_name("exclusive.12"), None);
        assert_eq!(parse_name("exclusive.00000000x1"), None);
        assert_eq!(parse_name("other.0000000001"), None);
        let scope = LeaseScope::Stream { owner: StreamOwner::legacy_wal(), stream: "pg.main".into() };
        let name = object_name(&scope.prefix(), 3);
        assert_eq!(name, "stream.builtin-postgres.pg.main.0000000003");
        assert_eq!(parse_name(&name), Some(("stream.builtin-postgres.pg.main.", 3)));
        assert_eq!(parse_name("stream.builtin-postgres.0000000003"), None);
        assert_eq!(parse_name("stream.builtin-Pg.main.0000000003"), None);
        assert_eq!(parse_name("stream.builtin-postgres..x.0000000003"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_missing_one_is_gone() {
        let here = machine_identity();
        if here.is_empty() {
            return; // no /proc: only expiry applies
        }
        let me = LeaseInfo {
            operation: "prune".into(),
            host: host_name(),
            pid: std::process::id(),
            started: chrono::Utc::now(),
            expiry_secs: 900,
            token: String::new(),
            machine: here.clone(),
            proc_start: proc_stat(std::process::id()).unwrap().1,
        };
        assert!(!holder_is_gone(&me, &here));
        // Same pid, other start time: a reused pid.
        assert!(holder_is_gone(&LeaseInfo { proc_start: me.proc_start + 1, ..me.clone() }, &here));
        // Another machine: never judged by pid.
        assert!(!holder_is_gone(&LeaseInfo { pid: u32::MAX, machine: "elsewhere".into(), ..me.clone() }, &here));
        assert!(holder_is_gone(&LeaseInfo { pid: u32::MAX - 1, ..me }, &here));
    }
}
