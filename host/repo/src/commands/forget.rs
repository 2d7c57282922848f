//! `forget`: retention policies over snapshots, grouped per tenant + source.
//!
//! A snapshot is kept if any rule keeps it; the rest are forgotten (their
//! manifests deleted; their data goes with the next prune). Each kept
//! snapshot records the rules that kept it, each forgotten one says why.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::backend::FileKind;
use crate::error::Result;
use crate::id::Id;
use crate::repofile::snapshot::SnapshotManifest;
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

impl Repository {
    /// Plans retention for every group; deletes the forgotten manifests
    /// unless `dry_run`.
    pub async fn forget(&self, policy: &KeepPolicy, dry_run: bool) -> Result<Vec<GroupPlan>> {
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
