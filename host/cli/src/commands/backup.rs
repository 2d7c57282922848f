//! `coffer backup PLUGIN --set k=v ...`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use coffer_repo::{BackupKind, Id, Repository, SnapshotManifest};
use coffer_runtime::{GrantSet, JobOptions, LoadedPlugin, Purpose, SnapshotRequest, printable};

use crate::output::{Progress, duration, print_json, size};
use crate::{ConfigArgs, EXIT_INCOMPLETE, Global, LimitArgs};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// A built-in plugin (`files`) or a path to a plugin `.wasm` file.
    pub plugin: String,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Read everything; no parent snapshot.
    #[arg(long, group = "kind")]
    pub full: bool,
    /// Parent = the last snapshot of this source (the default when one exists).
    #[arg(long, group = "kind")]
    pub incremental: bool,
    /// Parent = the last full snapshot of this source.
    #[arg(long, group = "kind")]
    pub differential: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Tenant the snapshot belongs to.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Source name (default: what the plugin calls this config, e.g. `files:/srv/www`).
    #[arg(long)]
    pub source: Option<String>,
}

/// Picks the parent for the requested kind among the source's snapshots.
/// Only snapshots of the same tenant, source and plugin qualify, and the
/// plugin is the component, not the name it gives itself: a snapshot
/// qualifies only when written by the same component (BLAKE3 of the wasm)
/// or, for a built-in, by a built-in of the same name in some coffer
/// binary ([`crate::plugins::is_writer`]). A plugin file that calls itself
/// `files` never becomes the parent of the built-in `files` (its entries
/// would be kept as "unchanged"), nor is it handed the built-in's snapshot.
fn choose_parent(
    snaps: &[(Id, SnapshotManifest)],
    tenant: &str,
    source: &str,
    plugin: (&str, &LoadedPlugin),
    args: &BackupArgs,
) -> (BackupKind, Option<Id>) {
    let (name, component) = plugin;
    let mine = || {
        snaps.iter().rev().filter(|(_, m)| {
            m.tenant == tenant
                && m.source == source
                && m.plugin.name == name
                && crate::plugins::is_writer(component, &m.plugin)
        })
    };
    if args.full {
        return (BackupKind::Full, None);
    }
    if args.differential {
        return match mine().find(|(_, m)| m.kind == BackupKind::Full) {
            Some((id, _)) => (BackupKind::Differential, Some(*id)),
            None => (BackupKind::Full, None),
        };
    }
    match mine().next() {
        Some((id, _)) => (BackupKind::Incremental, Some(*id)),
        None => (BackupKind::Full, None),
    }
}

pub async fn run(g: &Global, args: BackupArgs) -> Result<u8> {
    // First, so that Ctrl-C at any point takes the clean path.
    let cancel = super::cancel_on_signal();
    let repo: Repository = super::open_repo(g).await?;
    let rt = crate::plugins::runtime()?;
    let plugin = crate::plugins::load(&rt, &args.plugin)?;
    let mut job = crate::config::for_plugin(&plugin, &cancel, &args.cfg, &args.limits, None).await?;
    let grants = GrantSet::for_job(&mut job.config, &job.rules, Purpose::Read)?;
    let opts =
        JobOptions { grants: grants.clone(), limits: job.limits, cancel: cancel.clone(), ..JobOptions::default() };
    let described = plugin.info(Some(&job.config), &opts).await?;
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| if described.source.is_empty() { described.name.clone() } else { described.source.clone() });
    let snaps = repo.snapshots().await.context("listing snapshots")?;
    let (kind, parent) = choose_parent(&snaps, &args.tenant, &source, (&described.name, &plugin), &args);

    let progress = Arc::new(Progress::new(g.json, g.quiet, &format!("backing up {}", printable(&source))));
    // Bytes the plugin will read: the parent's size is the best guess (an
    // incremental backup reads less, and finishes early).
    if let Some(p) = parent.and_then(|p| snaps.iter().find(|(id, _)| *id == p)) {
        progress.estimate(p.1.summary.bytes);
    }
    let opts = JobOptions { observer: progress.clone(), ..opts };
    let started = Instant::now();
    let result = plugin
        .snapshot(
            &repo,
            SnapshotRequest {
                config: job.config,
                parent,
                kind,
                tenant: args.tenant.clone(),
                source: Some(source.clone()),
                tags: args.tags.clone(),
            },
            &opts,
        )
        .await;
    progress.finish();
    let (id, m) = result.with_context(|| format!("backup of {} failed; nothing was saved", printable(&source)))?;
    let took = started.elapsed();
    let s = &m.summary;
    if g.json {
        print_json(&serde_json::json!({
            "id": id.to_hex(),
            "source": m.source,
            "tenant": m.tenant,
            "plugin": m.plugin,
            "kind": m.kind,
            "parent": m.parent.map(|p| p.to_hex()),
            "summary": s,
            "seconds": took.as_secs_f64(),
            "warnings": progress.warnings(),
        }))?;
    } else {
        let kind = match m.kind {
            BackupKind::Full => "full".to_string(),
            BackupKind::Incremental => format!("incremental on {}", m.parent.map(|p| p.short()).unwrap_or_default()),
            BackupKind::Differential => format!("differential on {}", m.parent.map(|p| p.short()).unwrap_or_default()),
        };
        println!("snapshot {} saved ({kind}) for {}", id.short(), printable(&m.source));
        println!("  {} files, {} dirs, {} symlinks, {} in the snapshot", s.files, s.dirs, s.symlinks, size(s.bytes));
        println!("  read {}, kept {} unchanged entries from the parent", size(s.bytes_read), s.reused_entries);
        println!(
            "  added {} new data ({} stored after compression and encryption) in {} blobs, {} packs",
            size(s.new_bytes),
            size(s.stored_bytes),
            s.new_blobs,
            s.new_packs
        );
        let rate = if took.as_secs_f64() > 0.0 { s.bytes_read as f64 / took.as_secs_f64() } else { 0.0 };
        println!("  took {} ({}/s)", duration(took), size(rate as u64));
        if s.vanished > 0 || s.changed_while_read > 0 {
            println!(
                "  {} vanished during the backup, {} changed while they were read (see the warnings)",
                count(s.vanished, "file or directory", "files or directories"),
                count(s.changed_while_read, "file", "files")
            );
        }
        match progress.warnings() {
            0 => {}
            1 => println!("  1 warning (see above)"),
            n => println!("  {n} warnings (see above)"),
        }
    }
    // Saved, but not everything that should be in it is.
    if s.left_out > 0 {
        eprintln!(
            "coffer: snapshot {} was saved, but {} could not be read and {} left out of it (see the warnings); \
             exit status {EXIT_INCOMPLETE}",
            id.short(),
            count(s.left_out, "file or directory", "files or directories"),
            if s.left_out == 1 { "is" } else { "are" }
        );
        return Ok(EXIT_INCOMPLETE);
    }
    Ok(0)
}

/// `n` with the singular or plural noun.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
