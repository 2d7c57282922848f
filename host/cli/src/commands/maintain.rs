//! `coffer check`, `coffer forget` (with WAL retention), `coffer prune`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use coffer_repo::{KeepPolicy, PruneOptions, ReadData};

use super::UsageError;
use crate::output::{print_json, size};
use crate::{EXIT_DAMAGE, Global};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read back and decrypt every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read back a random share of the packs (`10%`).
    #[arg(long, value_name = "PERCENT")]
    pub read_data_subset: Option<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Keep the newest N snapshots.
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Keep one per hour for the last N hours that have one.
    #[arg(long)]
    pub keep_hourly: Option<usize>,
    /// Keep one per day for N days.
    #[arg(long)]
    pub keep_daily: Option<usize>,
    /// Keep one per week for N weeks.
    #[arg(long)]
    pub keep_weekly: Option<usize>,
    /// Keep one per month for N months.
    #[arg(long)]
    pub keep_monthly: Option<usize>,
    /// Keep one per year for N years.
    #[arg(long)]
    pub keep_yearly: Option<usize>,
    /// Keep everything younger than this (`7d`, `36h`).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Only say what would be removed.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    pub prune: bool,
    /// Forget these snapshots (ids or prefixes) instead of applying a policy.
    pub snapshots: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only say what would be removed.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Wait this long after marking before deleting packs (lets backups that
    /// started before the mark finish first; `0s` in a single-host setup).
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub grace: String,
    /// Repack packs with more than this share unused (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    pub max_unused: f64,
    /// Also rewrite every pack sealed under an older key epoch (see `key
    /// rotate`), then delete the keys of epochs nothing is sealed under.
    #[arg(long)]
    pub reencrypt: bool,
}

pub async fn check(g: &Global, args: CheckArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let read = match (&args.read_data, &args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(p)) => {
            let v: f64 = p
                .trim_end_matches('%')
                .parse()
                .map_err(|_| anyhow!(UsageError(format!("--read-data-subset {p}: give a percentage such as 10%"))))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(anyhow!(UsageError(format!("--read-data-subset {p}: must be above 0% and at most 100%"))));
            }
            ReadData::Subset(v)
        }
        (false, None) => ReadData::None,
    };
    let report = repo.check(read).await?;
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), serde_json::Value::Bool(report.is_ok()));
        }
        print_json(&v)?;
    } else {
        for w in &report.warnings {
            println!("warning: {w}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        for d in &report.damaged_paths {
            println!("damaged: snapshot {} path {}", d.snapshot.short(), d.path);
        }
        println!(
            "checked {} snapshots{}{}: {}",
            report.snapshots,
            if report.wal_files > 0 { format!(" and {} archived WAL files", report.wal_files) } else { String::new() },
            if report.packs_read > 0 {
                format!(", read back {} packs / {} blobs", report.packs_read, report.blobs_read)
            } else {
                String::new()
            },
            if report.is_ok() { "no errors".to_string() } else { format!("{} errors", report.errors.len()) }
        );
    }
    Ok(if report.is_ok() { 0 } else { EXIT_DAMAGE })
}

pub async fn forget(g: &Global, args: ForgetArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let mut forgotten: HashSet<coffer_repo::Id> = HashSet::new();
    if !args.snapshots.is_empty() {
        let mut ids = Vec::new();
        for s in &args.snapshots {
            ids.push(repo.resolve_snapshot(s).await?);
        }
        forgotten.extend(ids.iter().copied());
        for id in &ids {
            if !args.dry_run {
                repo.forget_snapshot(id).await?;
            }
            if !g.json {
                println!("{} {}", if args.dry_run { "would forget" } else { "forgot" }, id.short());
            }
        }
        if g.json {
            print_json(&ids.iter().map(|i| i.to_hex()).collect::<Vec<_>>())?;
        }
    } else {
        let policy = KeepPolicy {
            last: args.keep_last,
            hourly: args.keep_hourly,
            daily: args.keep_daily,
            weekly: args.keep_weekly,
            monthly: args.keep_monthly,
            yearly: args.keep_yearly,
            within: match &args.keep_within {
                Some(s) => Some(
                    chrono::Duration::from_std(
                        coffer_runtime::limits::parse_duration(s).map_err(|e| anyhow!(UsageError(e)))?,
                    )
                    .map_err(|e| anyhow!("--keep-within {s}: {e}"))?,
                ),
                None => None,
            },
        };
        if policy.is_empty() {
            return Err(anyhow!(UsageError(
                "no keep rule given: forget would remove every snapshot (give at least one --keep-* option, or snapshot ids)".into()
            )));
        }
        let plans = repo.forget(&policy, args.dry_run).await?;
        forgotten.extend(plans.iter().flat_map(|p| p.snapshots.iter()).filter(|d| !d.keep).map(|d| d.id));
        if g.json {
            print_json(&plans)?;
        } else {
            for p in &plans {
                println!("{} / {}:", coffer_runtime::printable(&p.tenant), coffer_runtime::printable(&p.source));
                for d in &p.snapshots {
                    println!(
                        "  {} {} {} ({})",
                        if d.keep {
                            "keep  "
                        } else if args.dry_run {
                            "would remove"
                        } else {
                            "remove"
                        },
                        d.id.short(),
                        d.time.format("%Y-%m-%d %H:%M:%S"),
                        d.reasons.join("; ")
                    );
                }
            }
        }
    }
    // WAL retention follows the base backups that remain.
    let retention = super::wal::apply_retention(&repo, &forgotten, args.dry_run).await?;
    super::wal::print_retention(&retention, args.dry_run, g.json);
    if args.prune && !args.dry_run {
        return prune(g, PruneArgs { dry_run: false, grace: "0s".into(), max_unused: 0.2, reencrypt: false }).await;
    }
    Ok(0)
}

pub async fn prune(g: &Global, args: PruneArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let grace: Duration = coffer_runtime::limits::parse_duration(&args.grace).map_err(|e| anyhow!(UsageError(e)))?;
    if !(0.0..=1.0).contains(&args.max_unused) {
        return Err(anyhow!(UsageError("--max-unused must be between 0 and 1".into())));
    }
    let opts = PruneOptions {
        grace,
        max_unused: args.max_unused,
        dry_run: args.dry_run,
        reencrypt: args.reencrypt,
        ..PruneOptions::default()
    };
    let r = repo.prune(&opts).await?;
    if g.json {
        print_json(&r)?;
    } else {
        print_prune(&r, args.dry_run);
    }
    Ok(0)
}

/// The human summary of a prune.
pub fn print_prune(r: &coffer_repo::PruneReport, dry_run: bool) {
    println!(
        "{}marked {} packs, repacked {} blobs, deleted {} packs ({}), {} marks waiting (grace period or running backups)",
        if dry_run { "dry run: " } else { "" },
        r.marked_packs,
        r.repacked_blobs,
        r.deleted_packs,
        size(r.deleted_bytes),
        r.waiting_markers
    );
    if r.reencrypted_packs > 0 {
        println!("re-encrypted {} packs under the current key epoch", r.reencrypted_packs);
    }
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    if !r.retired_epochs.is_empty() {
        println!("retired key epochs {}: their keys are deleted", list(&r.retired_epochs));
    }
    if !r.kept_epochs.is_empty() {
        println!(
            "kept key epochs {}: packs sealed under them are still indexed (marked packs wait out the grace \
             period or a running backup before they are deleted), or a backup that began before the rotation is \
             still running; run `coffer prune --reencrypt` again later to retire them",
            list(&r.kept_epochs)
        );
    }
}
