//! `forget`: retention policies over snapshots, grouped per tenant + source.
//!
//! A snapshot is kept if any rule keeps it; the rest are forgotten (their
//! manifests deleted; their data goes with the next prune). Each kept
//! snapshot records the rules that kept it, each forgotten one says why.
//!
//! Stream retention follows ([`Repository::stream_retention`]): the items
//! of a stream that the remaining snapshots no longer need are deleted.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::backend::FileKind;
use crate::commands::session::{PURPOSE_BACKUP, live_sessions};
use crate::error::Result;
use crate::id::Id;
use crate::repofile::snapshot::{MANIFEST_VERSION, PluginIdentity, SnapshotManifest};
use crate::repofile::stream::{StreamObjectName, StreamOwner, parse_object_name, stream_prefix};
use crate::repository::Repository;

/// Retention rules. `None` means the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Keep the newest N.
    pub last: Option<usize>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    pub hourly: Option<usize>,
    /// ... days.
    pub daily: Option<usize>,
    /// ... ISO weeks.
    pub weekly: Option<usize>,
    /// ... months.
    pub monthly: Option<usize>,
    /// ... years.
    pub yearly: Option<usize>,
    /// Keep every snapshot younger than this, counted back from the group's newest.
    pub within: Option<chrono::Duration>,
}

impl KeepPolicy {
    /// True if no rule is set (forget would remove everything).
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: Id,
    /// Its time.
    pub time: DateTime<Utc>,
    /// True if kept.
    pub keep: bool,
    /// The rules that keep it, or why it goes.
    pub reasons: Vec<String>,
}

/// The decisions for one tenant + source.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// Tenant.
    pub tenant: String,
    /// Source.
    pub source: String,
    /// Newest first.
    pub snapshots: Vec<Decision>,
}

type BucketFn = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);

fn hour(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), t.hour())
}
fn day(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), 0)
}
fn week(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    let w = t.iso_week();
    (w.year(), w.week(), 0, 0)
}
fn month(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), 0, 0)
}
fn year(t: &DateTime<Utc>) -> (i32, u32, u32, u32) {
    (t.year(), 0, 0, 0)
}

/// Applies `policy` to the snapshots of one group (any order).
pub fn plan_group(snaps: &[(Id, &SnapshotManifest)], policy: &KeepPolicy) -> Vec<Decision> {
    let mut sorted: Vec<_> = snaps.to_vec();
    sorted.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
    let mut decisions: Vec<Decision> =
        sorted.iter().map(|(id, m)| Decision { id: *id, time: m.time, keep: false, reasons: Vec::new() }).collect();
    if let Some(n) = policy.last {
        for d in decisions.iter_mut().take(n) {
            d.keep = true;
            d.reasons.push("last".into());
        }
    }
    let rules: [(Option<usize>, BucketFn, &str); 5] = [
        (policy.hourly, hour, "hourly"),
        (policy.daily, day, "daily"),
        (policy.weekly, week, "weekly"),
        (policy.monthly, month, "monthly"),
        (policy.yearly, year, "yearly"),
    ];
    for (count, bucket, name) in rules {
        let Some(n) = count else { continue };
        let mut seen = 0;
        let mut last_bucket = None;
        for d in decisions.iter_mut() {
            if seen >= n {
                break;
            }
            let b = bucket(&d.time);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                seen += 1;
                d.keep = true;
                d.reasons.push(name.into());
            }
        }
    }
    if let (Some(within), Some(newest)) = (policy.within, decisions.first().map(|d| d.time)) {
        for d in decisions.iter_mut() {
            if newest - d.time <= within {
                d.keep = true;
                d.reasons.push("within".into());
            }
        }
    }
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        d.reasons.push("matched no keep rule".into());
    }
    decisions
}

/// What stream retention did (or, in a dry run, would do) to one stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRetention {
    /// The stream's owner.
    pub owner: StreamOwner,
    /// The stream.
    pub stream: String,
    /// Unpinned items below this position go: the lowest position any
    /// remaining snapshot needs of the stream.
    pub cut: u64,
    /// Keys of the items removed (or that would be), in position order.
    pub removed: Vec<String>,
    /// How many were removed (or would be).
    pub removed_count: usize,
    /// Items kept.
    pub kept: usize,
    /// Why nothing was removed, when retention left the stream alone.
    pub note: Option<String>,
}

/// What `forget` did: the snapshot decisions, then stream retention.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// The decisions per tenant + source.
    pub groups: Vec<GroupPlan>,
    /// Stream retention, per stream a remaining snapshot needs.
    pub streams: Vec<StreamRetention>,
}

/// The owners whose streams a manifest that predates stream needs (a
/// version 1 manifest) may rely on: its plugin's, and, when the manifest does not say the
/// plugin was built in (which a manifest written before `builtin` was
/// recorded cannot), both the digest's and `builtin-<name>`.
fn owners_of_old(plugin: &PluginIdentity) -> Vec<StreamOwner> {
    let mut out: Vec<StreamOwner> = StreamOwner::builtin(&plugin.name).into_iter().collect();
    if !plugin.builtin {
        out.extend(StreamOwner::parse(&plugin.digest));
    }
    out
}

impl Repository {
    /// Plans retention for every group; deletes the forgotten manifests
    /// unless `dry_run`; then runs stream retention (its report is in
    /// [`Repository::forget_with_streams`]).
    pub async fn forget(&self, policy: &KeepPolicy, dry_run: bool) -> Result<Vec<GroupPlan>> {
        Ok(self.forget_with_streams(policy, dry_run).await?.groups)
    }

    /// As [`Repository::forget`], with what stream retention did.
    pub async fn forget_with_streams(&self, policy: &KeepPolicy, dry_run: bool) -> Result<ForgetReport> {
        let groups = self.forget_snapshots(policy, dry_run).await?;
        let forgotten: HashSet<Id> =
            groups.iter().flat_map(|g| g.snapshots.iter()).filter(|d| !d.keep).map(|d| d.id).collect();
        let streams = self.stream_retention(&forgotten, dry_run).await?;
        Ok(ForgetReport { groups, streams })
    }

    /// Stream retention: for each stream that at least one remaining
    /// snapshot needs (`forgotten` are snapshots forgotten, or in a dry run
    /// to be forgotten, that may still be listed), deletes (unless
    /// `dry_run`) the unpinned items below the lowest position a remaining
    /// snapshot needs. Streams no remaining snapshot needs are left alone,
    /// and so are legacy WAL archive files (they have no position). An
    /// owner's streams also lose nothing while a remaining snapshot of its
    /// plugin predates stream needs (manifest version 1), while a backup
    /// of its plugin runs (it may still declare a need), or while any
    /// snapshot cannot be read.
    ///
    /// Takes no lease, as `forget` takes none: deleting an item only ever
    /// shrinks what prune keeps, and prune re-reads the items before it
    /// deletes anything; an item pushed meanwhile is not in the listing and
    /// stays. A backup that starts after the listing of sessions declares
    /// needs from its own start, past every remaining snapshot's.
    pub async fn stream_retention(&self, forgotten: &HashSet<Id>, dry_run: bool) -> Result<Vec<StreamRetention>> {
        let (snaps, damaged) = self.snapshots_and_damaged().await?;
        let mut needs: BTreeMap<(StreamOwner, String), u64> = BTreeMap::new();
        let mut held: BTreeMap<StreamOwner, String> = BTreeMap::new();
        for (id, m) in snaps.iter().filter(|(id, _)| !forgotten.contains(id)) {
            if m.version < MANIFEST_VERSION {
                for owner in owners_of_old(&m.plugin) {
                    held.entry(owner).or_insert_with(|| {
                        format!("snapshot {} predates stream needs: all its plugin's stream items are kept", id.short())
                    });
                }
            }
            for n in &m.streams {
                let slot = needs.entry((n.owner.clone(), n.stream.clone())).or_insert(n.from);
                *slot = (*slot).min(n.from);
            }
        }
        if needs.is_empty() {
            return Ok(Vec::new());
        }
        let mut everything_held = damaged
            .iter()
            .find(|(id, _)| !forgotten.contains(id))
            .map(|(id, _)| format!("snapshot {} cannot be read: all stream items are kept", id.short()));
        let (live, _) = live_sessions(self).await?;
        for s in &live {
            if s.purpose.is_empty() {
                everything_held.get_or_insert_with(|| {
                    format!("a backup on host {} (pid {}) is running: all stream items are kept", s.host, s.pid)
                });
            } else if s.purpose == PURPOSE_BACKUP
                && let Ok(owner) = StreamOwner::parse(&s.owner)
            {
                held.entry(owner).or_insert_with(|| {
                    format!("a backup of this plugin is running on host {} (pid {}): its items are kept", s.host, s.pid)
                });
            }
        }
        let mut out = Vec::new();
        for ((owner, stream), cut) in needs {
            let mut report = StreamRetention {
                owner: owner.clone(),
                stream: stream.clone(),
                cut,
                removed: Vec::new(),
                removed_count: 0,
                kept: 0,
                note: everything_held.clone().or_else(|| held.get(&owner).cloned()),
            };
            let mut items: Vec<(u64, String, String)> = Vec::new();
            for l in self.backend.list_prefix(FileKind::Stream, &stream_prefix(&owner, &stream)).await? {
                let Some(StreamObjectName::Item { key, position, pinned, .. }) = parse_object_name(&l.name) else {
                    continue;
                };
                if report.note.is_some() || pinned || position >= cut {
                    report.kept += 1;
                } else {
                    items.push((position, key.to_string(), l.name.clone()));
                }
            }
            items.sort();
            for (_, key, name) in items {
                if !dry_run {
                    self.backend.delete(FileKind::Stream, &name).await?;
                }
                report.removed.push(key);
            }
            report.removed_count = report.removed.len();
            out.push(report);
        }
        Ok(out)
    }

    /// Plans retention for every group and deletes the forgotten manifests
    /// unless `dry_run`.
    async fn forget_snapshots(&self, policy: &KeepPolicy, dry_run: bool) -> Result<Vec<GroupPlan>> {
        if policy.is_empty() {
            return Err(crate::Error::Invalid(
                "no keep rule given: forget would remove every snapshot (give at least one --keep-* option)".into(),
            ));
        }
        let snaps = self.snapshots().await?;
        let mut groups: BTreeMap<(String, String), Vec<(Id, &SnapshotManifest)>> = BTreeMap::new();
        for (id, m) in &snaps {
            groups.entry((m.tenant.clone(), m.source.clone())).or_default().push((*id, m));
        }
        let mut plans = Vec::new();
        for ((tenant, source), members) in groups {
            let decisions = plan_group(&members, policy);
            if !dry_run {
                for d in decisions.iter().filter(|d| !d.keep) {
                    self.backend.delete(FileKind::Snapshot, &d.id.to_hex()).await?;
                }
            }
            plans.push(GroupPlan { tenant, source, snapshots: decisions });
        }
        Ok(plans)
    }

    /// Deletes one snapshot manifest.
    pub async fn forget_snapshot(&self, id: &Id) -> Result<()> {
        self.read_manifest(id).await?;
        Ok(self.backend.delete(FileKind::Snapshot, &id.to_hex()).await?)
    }
}
