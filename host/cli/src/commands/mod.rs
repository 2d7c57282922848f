//! One module per group of verbs. Each command returns the process exit
//! code or an error; [`run`] turns errors into a message and a code.

pub mod backup;
pub mod key;
pub mod maintain;
pub mod plugin;
pub mod restore;
pub mod snapshots;
pub mod stream;
pub mod wal;

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use coffer_repo::Repository;
use coffer_runtime::{CancelToken, JobError};

use crate::{Cli, Cmd, EXIT_CANCELLED, EXIT_DAMAGE, EXIT_USAGE, Global};

/// A usage mistake (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs a command and maps its outcome to an exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let g = cli.global.clone();
    let r = match cli.command {
        Cmd::Init(a) => init(&g, a).await,
        Cmd::Backup(a) => backup::run(&g, a).await,
        Cmd::Snapshots(a) => snapshots::list(&g, a).await,
        Cmd::Ls(a) => snapshots::ls(&g, a).await,
        Cmd::Diff(a) => snapshots::diff(&g, a).await,
        Cmd::Restore(a) => restore::restore(&g, a).await,
        Cmd::Verify(a) => restore::verify(&g, a).await,
        Cmd::Check(a) => maintain::check(&g, a).await,
        Cmd::Forget(a) => maintain::forget(&g, a).await,
        Cmd::Prune(a) => maintain::prune(&g, a).await,
        Cmd::Repair(a) => maintain::repair(&g, a).await,
        Cmd::Key(k) => key::run(&g, k).await,
        Cmd::Plugin(p) => plugin::run(&g, p).await,
        Cmd::Wal(w) => wal::run(&g, w).await,
        Cmd::Stream(s) => stream::run(&g, s).await,
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if e.downcast_ref::<JobError>().is_some_and(JobError::is_cancelled) {
                eprintln!("coffer: cancelled; the repository was left as it was");
                return ExitCode::from(EXIT_CANCELLED);
            }
            eprintln!("coffer: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else if is_damage(&e) {
                ExitCode::from(EXIT_DAMAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// True when a command stopped at a damaged object of the repository (its
/// config, a pack, an index, a snapshot): exit status 3, as when `check`
/// finds damage, not the 1 of an ordinary failure.
fn is_damage(e: &anyhow::Error) -> bool {
    let damaged = |r: &coffer_repo::Error| {
        matches!(r, coffer_repo::Error::Corrupt { .. } | coffer_repo::Error::DamagedConfig { .. })
    };
    e.chain().any(|c| {
        c.downcast_ref::<coffer_repo::Error>().is_some_and(damaged)
            || matches!(c.downcast_ref::<JobError>(), Some(JobError::Repository(r)) if damaged(r))
    })
}

/// The repository URL, or a usage error naming how to give one.
pub fn repo_url(g: &Global) -> Result<String> {
    g.repo.clone().ok_or_else(|| anyhow!(UsageError("no repository: pass --repo URL or set COFFER_REPO".into())))
}

/// `--repo-option k=v` pairs.
pub fn repo_options(g: &Global) -> Result<Vec<(String, String)>> {
    g.repo_options
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!(UsageError(format!("--repo-option {kv}: expected KEY=VALUE"))))
        })
        .collect()
}

/// Opens the repository with the password from the environment or a
/// prompt, with Shamir shares (`--shares-from`), or with a key cache file
/// (`--key-file`).
pub async fn open_repo(g: &Global) -> Result<Repository> {
    let url = repo_url(g)?;
    let opts = repo_options(g)?;
    if let Some(file) = &g.key_file {
        let backend = coffer_repo::backend_for(&url, &opts).with_context(|| format!("repository {url}"))?;
        return key::open_with_key_cache(backend, file).await.with_context(|| format!("opening repository {url}"));
    }
    if let Some(from) = &g.shares_from {
        let backend = coffer_repo::backend_for(&url, &opts).with_context(|| format!("repository {url}"))?;
        let shares = key::read_shares(std::slice::from_ref(from))?;
        return key::open_with_shares(backend, &shares).await.with_context(|| format!("opening repository {url}"));
    }
    let password = crate::password::repository_password(g.password_file.as_deref())?;
    Repository::open_url(&url, &opts, &password).await.with_context(|| format!("opening repository {url}"))
}

/// `coffer init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    kdf: key::KdfArgs,
    /// zstd level of the repository's blobs, 1 to 19, or 0 for none. The
    /// default, 2, stores about what restic's default does and compresses
    /// 1.6 times as fast as level 3 (which stores 2.5% less).
    #[arg(long, default_value_t = 2, value_name = "LEVEL")]
    compression: i32,
}

async fn init(g: &Global, args: InitArgs) -> Result<u8> {
    let url = repo_url(g)?;
    let opts = repo_options(g)?;
    let kdf = args.kdf.params()?;
    if !(0..=19).contains(&args.compression) {
        bail!(UsageError(format!("--compression must be between 0 (none) and 19, not {}", args.compression)));
    }
    let compression = coffer_repo::blob::Compression { zstd_level: args.compression };
    let password = crate::password::new_password(g.password_file.as_deref(), true)?;
    let backend = coffer_repo::backend_for(&url, &opts).with_context(|| format!("repository {url}"))?;
    let init = coffer_repo::InitOptions { kdf, compression, ..Default::default() };
    let repo =
        Repository::init(backend, &password, init).await.with_context(|| format!("creating repository {url}"))?;
    if g.json {
        crate::output::print_json(&serde_json::json!({"repository": url, "id": repo.config().id.to_hex()}))?;
    } else {
        println!("created repository {} at {url}", repo.config().id.short());
        println!("keep the password safe: without it the data cannot be read");
    }
    Ok(0)
}

/// A cancel token tripped by Ctrl-C (SIGINT) or SIGTERM.
pub fn cancel_on_signal() -> CancelToken {
    let token = CancelToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        eprintln!("coffer: stopping (press Ctrl-C again to quit at once)...");
        t.cancel();
        // Outside a plugin call there may be nothing to notice the token;
        // a second signal ends the process.
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("coffer: interrupted");
        std::process::exit(crate::EXIT_CANCELLED as i32);
    });
    token
}
