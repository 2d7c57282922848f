//! `coffer restore` and `coffer verify`: both run the plugin that made the
//! snapshot, with the config it stored (secrets redacted) under `--set`.
//! For PostgreSQL base backups both also consult the WAL archive.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use coffer_runtime::{GrantSet, JobOptions, Purpose, RestoreRequest};

use super::UsageError;
use crate::output::{Progress, duration, print_json, size};
use crate::{ConfigArgs, EXIT_DAMAGE, Global, LimitArgs};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id prefix, `latest` or `latest:SOURCE`.
    pub snapshot: String,
    /// Restore into this directory (granted read-write; must be empty unless --force).
    #[arg(long, short = 't')]
    pub target: Option<std::path::PathBuf>,
    /// Overwrite a non-empty target.
    #[arg(long)]
    pub force: bool,
    /// Only restore this path and what is below it (repeatable).
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Use this plugin file instead of the built-in that made the snapshot
    /// (`latest` then means the newest snapshot this file wrote).
    #[arg(long)]
    pub plugin: Option<String>,
    /// With `latest`: the newest snapshot written by the plugin component
    /// whose digest starts with this (as `coffer snapshots` shows it).
    #[arg(long, value_name = "DIGEST")]
    pub plugin_digest: Option<String>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot id prefix, `latest` or `latest:SOURCE`.
    pub snapshot: String,
    /// Use this plugin file instead of the built-in that made the snapshot
    /// (`latest` then means the newest snapshot this file wrote).
    #[arg(long)]
    pub plugin: Option<String>,
    /// With `latest`: the newest snapshot written by the plugin component
    /// whose digest starts with this (as `coffer snapshots` shows it).
    #[arg(long, value_name = "DIGEST")]
    pub plugin_digest: Option<String>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// A stored snapshot, the plugin that made it, and the job config: its
/// stored config (secrets redacted) under the command line's.
struct Stored {
    repo: coffer_repo::Repository,
    id: coffer_repo::Id,
    manifest: coffer_repo::SnapshotManifest,
    plugin: coffer_runtime::LoadedPlugin,
    job: crate::config::JobConfig,
}

/// Which snapshot `latest` is: with `--plugin FILE`, the newest that file
/// wrote; with `--plugin-digest`, the newest that component wrote;
/// otherwise the newest a built-in wrote ([`crate::plugins::Writer`]).
async fn open_stored(
    g: &Global,
    snapshot: &str,
    (plugin_override, digest): (Option<&str>, Option<&str>),
    cancel: &coffer_runtime::CancelToken,
    cfg: &ConfigArgs,
    limits: &LimitArgs,
) -> Result<Stored> {
    use crate::plugins::Writer;
    let repo = super::open_repo(g).await?;
    let rt = crate::plugins::runtime()?;
    let given = plugin_override.map(|spec| crate::plugins::load(&rt, spec)).transpose()?;
    let by = match (&given, digest) {
        (_, Some(d)) => Writer::Digest(d),
        (Some(p), None) => Writer::Component(p),
        (None, None) => Writer::Trusted,
    };
    let id = crate::plugins::resolve_snapshot(&repo, snapshot, by).await?;
    let manifest = repo.read_manifest(&id).await?;
    let plugin = crate::plugins::for_snapshot(&rt, &manifest, plugin_override)?;
    let job = crate::config::for_plugin(&plugin, cancel, cfg, limits, Some(manifest.config.clone())).await?;
    Ok(Stored { repo, id, manifest, plugin, job })
}

pub async fn restore(g: &Global, args: RestoreArgs) -> Result<u8> {
    // First, so that Ctrl-C at any point takes the clean path.
    let cancel = super::cancel_on_signal();
    let Stored { repo, id, manifest, plugin, mut job } = open_stored(
        g,
        &args.snapshot,
        (args.plugin.as_deref(), args.plugin_digest.as_deref()),
        &cancel,
        &args.cfg,
        &args.limits,
    )
    .await?;
    // A point-in-time target is checked against the WAL archive before
    // anything is written.
    if manifest.plugin.name == super::wal::POSTGRES_PLUGIN {
        super::wal::check_restore_target(&repo, &id, &manifest, &job.config).await?;
        if let Some(obj) = job.config.as_object_mut()
            && obj.get("restore_command").is_none_or(|v| v.as_str().is_none_or(|s| s.trim().is_empty()))
        {
            let (cmd, warning) = super::wal::default_restore_command(g, &manifest)?;
            let targeted = ["to_time", "to_lsn", "to_xid"].iter().any(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
                || obj.get("to_end").and_then(|v| v.as_bool()).unwrap_or(false);
            if let Some(w) = warning
                && targeted
            {
                eprintln!("warning: {w}");
            }
            obj.insert("restore_command".into(), serde_json::Value::String(cmd));
        }
        if let Some(t) = &args.target {
            super::wal::private_target(t)?;
        }
    }
    let mut grants = GrantSet::from_config(&mut job.config, Purpose::Restore)?;
    let target = match &args.target {
        Some(t) => {
            if !t.exists() {
                std::fs::create_dir_all(t).with_context(|| format!("creating restore target {}", t.display()))?;
            }
            Some(grants.write_dir("--target", t.to_str().ok_or_else(|| anyhow!("--target must be a UTF-8 path"))?)?)
        }
        None => {
            if !args.cfg.set.iter().any(|s| s.starts_with("url=")) {
                return Err(anyhow!(UsageError(
                    "give --target DIR to restore into a directory, or --set url=... to restore into a live server"
                        .into()
                )));
            }
            None
        }
    };
    let progress = Arc::new(Progress::new(g.json, g.quiet, "restoring"));
    let opts = JobOptions { grants, limits: job.limits, cancel, observer: progress.clone() };
    let started = Instant::now();
    let r = plugin
        .restore(
            &repo,
            &id,
            RestoreRequest {
                config: job.config,
                target: target.clone(),
                force: args.force,
                paths: args.paths.clone(),
                fetch: None,
            },
            &opts,
        )
        .await;
    progress.finish();
    // Stopped by a signal: what was written so far stays in the target.
    if let (Err(e), Some(t)) = (&r, &target)
        && e.is_cancelled()
    {
        eprintln!(
            "coffer: cancelled; the repository was left as it was, but {} holds a partial tree of snapshot {}: \
             remove what is in it, or restore again into it with --force",
            t.display(),
            id.short()
        );
        return Ok(crate::EXIT_CANCELLED);
    }
    r.with_context(|| format!("restore of snapshot {} failed", id.short()))?;
    let took = started.elapsed();
    if g.json {
        print_json(&serde_json::json!({
            "snapshot": id.to_hex(),
            "target": target.as_ref().map(|t| t.display().to_string()),
            "bytes": manifest.summary.bytes,
            "seconds": took.as_secs_f64(),
        }))?;
    } else {
        match &target {
            Some(t) => println!(
                "restored snapshot {} ({}, {} entries) into {} in {}",
                id.short(),
                size(manifest.summary.bytes),
                manifest.summary.entries,
                t.display(),
                duration(took)
            ),
            None => println!("restored snapshot {} into the live server in {}", id.short(), duration(took)),
        }
    }
    Ok(0)
}

pub async fn verify(g: &Global, args: VerifyArgs) -> Result<u8> {
    // First, so that Ctrl-C at any point takes the clean path.
    let cancel = super::cancel_on_signal();
    let Stored { repo, id, manifest, plugin, mut job } = open_stored(
        g,
        &args.snapshot,
        (args.plugin.as_deref(), args.plugin_digest.as_deref()),
        &cancel,
        &args.cfg,
        &args.limits,
    )
    .await?;
    // The source is granted read-only when it still exists here, for the
    // drift report; a source that is gone is left out, not an error.
    let mut probe = job.config.clone();
    let grants = match GrantSet::from_config(&mut probe, Purpose::Read) {
        Ok(g) => {
            job.config = probe;
            g
        }
        Err(e) => {
            tracing::info!("no drift report: {e}");
            GrantSet::from_config(&mut job.config, Purpose::Restore)?
        }
    };
    let progress = Arc::new(Progress::new(g.json, g.quiet, "verifying"));
    let opts = JobOptions { grants, limits: job.limits, cancel, observer: progress.clone() };
    let started = Instant::now();
    let r = plugin.verify(&repo, &id, &job.config, &opts).await;
    progress.finish();
    let mut report = r.with_context(|| format!("verify of snapshot {} failed", id.short()))?;
    // A PostgreSQL base backup also needs its WAL: the archive must hold what
    // the snapshot lacks from its start to its stop, and gaps after the stop
    // limit point-in-time recovery.
    if manifest.plugin.name == super::wal::POSTGRES_PLUGIN {
        let (problems, notes) = super::wal::verify_archive(&repo, &id, &manifest)
            .await
            .with_context(|| format!("checking the WAL archive for snapshot {}", id.short()))?;
        report.problems.extend(problems);
        report.notes.extend(notes);
    }
    let took = started.elapsed();
    if g.json {
        print_json(&serde_json::json!({
            "snapshot": id.to_hex(),
            "ok": report.problems.is_empty(),
            "checked": report.checked,
            "bytes": report.bytes,
            "problems": report.problems.iter().map(|(p, r)| serde_json::json!({"path": p, "reason": r})).collect::<Vec<_>>(),
            "notes": report.notes,
            "seconds": took.as_secs_f64(),
        }))?;
    } else {
        for n in &report.notes {
            if !g.quiet {
                println!("note: {n}");
            }
        }
        for (p, r) in &report.problems {
            println!("damaged: {p}: {r}");
        }
        println!(
            "verified snapshot {}: {} items, {} read back in {}; {}",
            id.short(),
            report.checked,
            size(report.bytes),
            duration(took),
            if report.problems.is_empty() {
                "no problems".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        );
    }
    Ok(if report.problems.is_empty() { 0 } else { EXIT_DAMAGE })
}
