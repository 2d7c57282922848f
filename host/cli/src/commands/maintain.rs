//! `coffer check`, `coffer forget` (with stream retention), `coffer prune`,
//! `coffer repair index|snapshots`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use coffer_repo::{KeepPolicy, PruneOptions, ReadData, Repository, StreamRetention};

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
    /// How long this prune's lease on the repository outlives a crash of
    /// this process, for prunes on other machines (a crash on this machine
    /// is noticed at once). Every prune refreshes its lease while it runs.
    #[arg(long, default_value = "15m", value_name = "DURATION")]
    pub lease_expiry: String,
}

/// `coffer repair`.
#[derive(Subcommand, Debug)]
pub enum RepairCmd {
    /// Rebuild the index from the packs' own headers (after an index file
    /// was lost or damaged); replaces every index file.
    Index,
    /// Move snapshot files that cannot be read to `quarantine/snapshots/`,
    /// naming each, so that prune can run again; snapshots whose tree is
    /// damaged are named but left in place.
    Snapshots {
        /// Only name what would be moved.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
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

/// Prints what stream retention did: to stdout, or to stderr when stdout
/// carries JSON.
async fn print_retention(repo: &Repository, out: &[StreamRetention], dry_run: bool, json: bool) -> Result<()> {
    for r in out {
        let name = format!("stream {}/{}", r.owner, coffer_runtime::printable(&r.stream));
        let line = if let Some(n) = &r.note {
            format!("{name}: nothing removed: {n}")
        } else {
            // The first item kept: the lowest position a remaining snapshot needs.
            let kept = repo.stream_list(&r.owner, &r.stream, Some(r.cut), None).await?;
            let from = match kept.iter().find(|i| i.position.is_some()) {
                Some(i) => coffer_runtime::printable(&i.key),
                None => format!("position {}", r.cut),
            };
            match (r.removed.first(), r.removed.last()) {
                (Some(a), Some(b)) => format!(
                    "{name}: kept from {from}; {} {} older items ({}..{}), below position {}",
                    if dry_run { "would remove" } else { "removed" },
                    r.removed_count,
                    coffer_runtime::printable(a),
                    coffer_runtime::printable(b),
                    r.cut
                ),
                _ => format!("{name}: kept from {from}; nothing older to remove"),
            }
        };
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

pub async fn forget(g: &Global, args: ForgetArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let mut forgotten: HashSet<coffer_repo::Id> = HashSet::new();
    let mut retention: Option<Vec<StreamRetention>> = None;
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
        let report = repo.forget_with_streams(&policy, args.dry_run).await?;
        retention = Some(report.streams);
        let plans = report.groups;
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
    // Stream retention follows the needs of the snapshots that remain.
    let retention = match retention {
        Some(r) => r,
        None => repo.stream_retention(&forgotten, args.dry_run).await?,
    };
    print_retention(&repo, &retention, args.dry_run, g.json).await?;
    if args.prune && !args.dry_run {
        return prune(
            g,
            PruneArgs {
                dry_run: false,
                grace: "0s".into(),
                max_unused: 0.2,
                reencrypt: false,
                lease_expiry: "15m".into(),
            },
        )
        .await;
    }
    Ok(0)
}

pub async fn prune(g: &Global, args: PruneArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let grace: Duration = coffer_runtime::limits::parse_duration(&args.grace).map_err(|e| anyhow!(UsageError(e)))?;
    if !(0.0..=1.0).contains(&args.max_unused) {
        return Err(anyhow!(UsageError("--max-unused must be between 0 and 1".into())));
    }
    let lease_expiry =
        coffer_runtime::limits::parse_duration(&args.lease_expiry).map_err(|e| anyhow!(UsageError(e)))?;
    let opts = PruneOptions {
        grace,
        max_unused: args.max_unused,
        dry_run: args.dry_run,
        reencrypt: args.reencrypt,
        lease_expiry,
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

pub async fn repair(g: &Global, cmd: RepairCmd) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    match cmd {
        RepairCmd::Index => {
            let r = repo.repair_index().await?;
            if g.json {
                print_json(&r)?;
            } else {
                for u in &r.unreadable_packs {
                    println!("warning: unreadable pack header, kept as the old index knew it: {u}");
                }
                println!(
                    "indexed {} packs ({} blobs) from their headers; replaced {} index files",
                    r.packs_indexed, r.blobs_indexed, r.replaced_index_files
                );
                if !r.unreadable_packs.is_empty() {
                    println!("run `coffer check --read-data` to see what the unreadable packs affect");
                }
            }
            Ok(if r.unreadable_packs.is_empty() { 0 } else { EXIT_DAMAGE })
        }
        RepairCmd::Snapshots { dry_run } => {
            let r = repo.repair_snapshots(dry_run).await?;
            if g.json {
                print_json(&r)?;
            } else {
                for (path, why) in &r.quarantined {
                    println!(
                        "{} {path}: {why}",
                        if dry_run {
                            "would move to quarantine/snapshots/:"
                        } else {
                            "moved to quarantine/snapshots/:"
                        }
                    );
                }
                for (id, why) in &r.broken_trees {
                    println!("damaged tree, left in place: snapshot {id}: {why}");
                }
                println!(
                    "{} snapshots readable, {} {}, {} with a damaged tree",
                    r.readable,
                    r.quarantined.len(),
                    if dry_run { "would be set aside" } else { "set aside" },
                    r.broken_trees.len()
                );
                if !r.broken_trees.is_empty() {
                    println!(
                        "a damaged tree may come back with `coffer repair index` (a lost index file) or a copy of \
                         the lost pack; `coffer forget ID` removes such a snapshot for good"
                    );
                }
            }
            Ok(if r.broken_trees.is_empty() { 0 } else { EXIT_DAMAGE })
        }
    }
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
    if r.reindexed_packs > 0 {
        println!(
            "{} {} packs that no index listed but a snapshot needs",
            if dry_run { "would index again" } else { "indexed again" },
            r.reindexed_packs
        );
    }
    if r.rescued_packs > 0 {
        println!(
            "copied the needed blobs out of {} packs in no index whose name does not match their content",
            r.rescued_packs
        );
    }
    for u in &r.unreadable_packs {
        println!("warning: kept a pack in no index whose header cannot be read: {u}");
    }
    for m in &r.dropped_missing_packs {
        println!("warning: {m} is indexed but missing from storage: its entries left the index (run `coffer check`)");
    }
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
