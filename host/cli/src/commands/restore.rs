//! `coffer restore` and `coffer verify`: both run the plugin that made the
//! snapshot, with the config it stored (secrets redacted) under `--set`.
//! A restore offers the plugin coffer's own command for fetching stream
//! items later (PostgreSQL's `restore_command`): this binary, this
//! repository and its password file, never a password.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use coffer_runtime::{FetchCommand, GrantSet, JobOptions, Purpose, RestoreRequest};

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
    // The streams are the snapshot writer's, whichever plugin restores it.
    let fetch = match coffer_repo::StreamOwner::of(&manifest.plugin) {
        Ok(owner) => Some(fetch_command(g, &owner)?),
        Err(_) => None,
    };
    let mut grants = GrantSet::for_job(&mut job.config, &job.rules, Purpose::Restore)?;
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
                fetch,
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
    let Stored { repo, id, manifest: _, plugin, mut job } = open_stored(
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
    let grants = match GrantSet::for_job(&mut probe, &job.rules, Purpose::Read) {
        Ok(g) => {
            job.config = probe;
            g
        }
        Err(e) => {
            tracing::info!("no drift report: {e}");
            GrantSet::for_job(&mut job.config, &job.rules, Purpose::Restore)?
        }
    };
    let progress = Arc::new(Progress::new(g.json, g.quiet, "verifying"));
    let opts = JobOptions { grants, limits: job.limits, cancel, observer: progress.clone() };
    let started = Instant::now();
    let r = plugin.verify(&repo, &id, &job.config, &opts).await;
    progress.finish();
    let report = r.with_context(|| format!("verify of snapshot {} failed", id.short()))?;
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

/// A word quoted for `/bin/sh` (how a note shows a command).
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Repository option keys whose values are credentials, which must not be
/// written into a restored system's configuration.
fn secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "key", "token", "password", "credential", "sas"].iter().any(|w| k.contains(w))
}

/// coffer's own command for fetching one item of the streams of plugin
/// `spec` (a built-in name or an absolute `.wasm` path): this binary, the
/// repository (made absolute when it is a local path: the restored system
/// runs the command elsewhere), the key file, shares file or password file
/// the operator used, the storage options that are not secrets, then `stream
/// fetch --plugin SPEC`; the plugin appends the stream, the key and the
/// destination. It never holds a password; `note` says what must come from
/// the restored system's environment instead.
pub fn fetch_command(g: &Global, owner: &coffer_repo::StreamOwner) -> Result<FetchCommand> {
    let exe = std::env::current_exe().context("finding the coffer binary for the fetch command")?;
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    let mut missing = Vec::new();
    match &g.repo {
        Some(r) => {
            let r = if r.contains("://") {
                r.clone()
            } else {
                std::path::absolute(r).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| r.clone())
            };
            argv.extend(["--repo".into(), r]);
        }
        None => missing.push("COFFER_REPO"),
    }
    // How the repository was opened: a key file, shares, or a password file
    // (in the order `open_repo` looks at them).
    let abs =
        |f: &std::path::PathBuf| std::path::absolute(f).unwrap_or_else(|_| f.clone()).to_string_lossy().into_owned();
    match (&g.key_file, &g.shares_from, &g.password_file) {
        (Some(f), _, _) => argv.extend(["--key-file".into(), abs(f)]),
        (None, Some(f), _) if f.as_os_str() != "-" => argv.extend(["--shares-from".into(), abs(f)]),
        (None, None, Some(f)) => argv.extend(["--password-file".into(), abs(f)]),
        _ => missing.push("COFFER_PASSWORD_FILE (or COFFER_PASSWORD)"),
    }
    let mut secret_opts = false;
    for kv in &g.repo_options {
        match kv.split_once('=') {
            Some((k, _)) if secret_option(k) => secret_opts = true,
            _ => argv.extend(["--repo-option".into(), kv.clone()]),
        }
    }
    // A built-in's streams by its name (as readable as the rest); any other
    // by the owner itself, so the command keeps working when the plugin
    // file is replaced or restored with another build.
    let whose = match owner.as_str().strip_prefix("builtin-") {
        Some(name) => ["--plugin".to_string(), name.to_string()],
        None => ["--owner".to_string(), owner.to_string()],
    };
    argv.extend(["--quiet".into(), "stream".into(), "fetch".into()]);
    argv.extend(whose);
    let mut warn = Vec::new();
    if !missing.is_empty() {
        warn.push(format!("set {} in the restored system's environment", missing.join(" and ")));
    }
    if secret_opts {
        warn.push(
            "give the storage credentials to the restored system's environment (they are not written into its \
             configuration)"
                .to_string(),
        );
    }
    let note = (!warn.is_empty()).then(|| {
        format!(
            "{} for `{} ...` to work, or give the plugin a command of your own",
            warn.join("; "),
            argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ")
        )
    });
    Ok(FetchCommand { argv, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(repo: &str, password_file: Option<&str>, options: &[&str]) -> Global {
        Global {
            repo: Some(repo.into()),
            password_file: password_file.map(std::path::PathBuf::from),
            shares_from: None,
            key_file: None,
            json: false,
            quiet: false,
            repo_options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn the_fetch_command_names_the_repository_and_password_file_never_a_secret() {
        let g = global("repo", Some("pw"), &["region=eu", "secret_access_key=XYZ"]);
        let pg = coffer_repo::StreamOwner::builtin("postgres").unwrap();
        let f = fetch_command(&g, &pg).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert!(f.argv[0].starts_with('/'));
        assert_eq!(f.argv[1..3], ["--repo".to_string(), cwd.join("repo").display().to_string()]);
        assert_eq!(f.argv[3..5], ["--password-file".to_string(), cwd.join("pw").display().to_string()]);
        assert_eq!(f.argv[5..7], ["--repo-option".to_string(), "region=eu".to_string()]);
        assert_eq!(f.argv[7..], ["--quiet", "stream", "fetch", "--plugin", "postgres"].map(String::from));
        assert!(!f.argv.iter().any(|a| a.contains("XYZ")));
        assert!(f.note.as_deref().unwrap().contains("storage credentials"), "{:?}", f.note);
        let g = global("s3://bucket/r", None, &[]);
        let digest = coffer_repo::StreamOwner::parse(&"ab".repeat(32)).unwrap();
        let f = fetch_command(&g, &digest).unwrap();
        assert_eq!(f.argv[1..3], ["--repo".to_string(), "s3://bucket/r".to_string()]);
        assert!(f.note.as_deref().unwrap().contains("COFFER_PASSWORD_FILE"), "{:?}", f.note);
        assert_eq!(f.argv[f.argv.len() - 2..], ["--owner".to_string(), "ab".repeat(32)]);
        // A key file wins over the password file, as when opening.
        let mut g = global("/r", Some("/pw"), &[]);
        g.key_file = Some("/k".into());
        let f = fetch_command(&g, &pg).unwrap();
        assert_eq!(f.argv[3..5], ["--key-file".to_string(), "/k".to_string()]);
        assert!(f.note.is_none() && !f.argv.contains(&"--password-file".to_string()));
    }
}
