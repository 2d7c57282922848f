//! `coffer`: the command-line interface. Thin by design: it parses
//! arguments, reads passwords and configs, and wires the commands to
//! coffer-repo (the repository) and coffer-runtime (the plugins).
//!
//! Exit codes: 0 ok, 1 failure, 2 usage, 3 damage found (by check or
//! verify, or a damaged object that stopped a command), 4 a backup saved its
//! snapshot but left files out, 130 cancelled (Ctrl-C, SIGTERM).

mod commands;
mod config;
mod output;
mod password;
mod plugins;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit code when check or verify finds damage, or a command stops at a
/// damaged object.
pub const EXIT_DAMAGE: u8 = 3;
/// Exit code of a backup that saved its snapshot but left out files or
/// directories it could not read (a name that is not UTF-8, permission
/// denied).
pub const EXIT_INCOMPLETE: u8 = 4;
/// Exit code for a usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C.
pub const EXIT_CANCELLED: u8 = 130;

/// jemalloc, configured in `.cargo/config.toml` to hand freed pages back
/// to the system within a fraction of a second. glibc's malloc kept 30 to
/// 50 MiB more resident during a backup: the file readers, blob workers and
/// upload tasks each allocate from an arena of their own, and freed chunk
/// buffers stayed in whichever arena last held them.
#[cfg(unix)]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Backups of databases, ledgers and files through sandboxed WebAssembly plugins.
#[derive(Parser, Debug)]
#[command(name = "coffer", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository URL or path (file://, s3://, gs://, az://, memory://).
    #[arg(long, short = 'r', env = "COFFER_REPO", global = true)]
    pub repo: Option<String>,
    /// File holding the repository password (first line).
    #[arg(long, env = "COFFER_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Open the repository with Shamir shares of its key (from `coffer key
    /// split`) instead of a password: a file with one share per line, or `-`
    /// for stdin.
    #[arg(long, env = "COFFER_SHARES_FROM", global = true, value_name = "FILE")]
    pub shares_from: Option<PathBuf>,
    /// Open the repository with a key cache file (from `coffer key cache`)
    /// instead of a password: no Argon2id, for commands run very often
    /// (`archive_command`). Mode 0600; whoever reads it has the key.
    #[arg(long, env = "COFFER_KEY_FILE", global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print less (no progress bars, only errors and results).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Storage option for the repository backend (`key=value`, e.g.
    /// `endpoint=http://127.0.0.1:8333`, `region=us-east-1`); repeatable.
    #[arg(long = "repo-option", short = 'o', global = true, value_name = "KEY=VALUE")]
    pub repo_options: Vec<String>,
}

/// Limits for a plugin job.
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Memory cap for the plugin (e.g. 512MiB, 2GiB).
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Time budget for the plugin (e.g. 90s, 30m, 12h).
    #[arg(long, value_name = "DURATION")]
    pub time_limit: Option<String>,
    /// Time the plugin has to describe itself (`info`) before it is taken
    /// for stuck (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub info_time_limit: Option<String>,
    /// Most content bytes a snapshot may write (e.g. 100GiB).
    #[arg(long, value_name = "SIZE")]
    pub output_limit: Option<String>,
}

/// Plugin configuration from the command line.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Plugin config value `key=value` (repeatable); typed by the plugin's schema.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Plugin config from a TOML file (a `[limits]` table sets limits).
    #[arg(long = "config", short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a repository.
    Init(commands::InitArgs),
    /// Back up a source with a plugin (a built-in name or a .wasm file).
    Backup(commands::backup::BackupArgs),
    /// List snapshots.
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// List the entries of a snapshot.
    Ls(commands::snapshots::LsArgs),
    /// Compare two snapshots.
    Diff(commands::snapshots::DiffArgs),
    /// Restore a snapshot into a directory (--target) or a live server (--set url=...).
    Restore(commands::restore::RestoreArgs),
    /// Read a snapshot back through its plugin and check every entry.
    Verify(commands::restore::VerifyArgs),
    /// Check the repository's structure and, optionally, its data.
    Check(commands::maintain::CheckArgs),
    /// Remove snapshots by retention policy.
    Forget(commands::maintain::ForgetArgs),
    /// Remove data no snapshot uses.
    Prune(commands::maintain::PruneArgs),
    /// Rebuild the index from the packs, or set damaged snapshot files aside.
    #[command(subcommand)]
    Repair(commands::maintain::RepairCmd),
    /// Manage keys: passwords, Shamir shares, key epochs and rotation.
    #[command(subcommand)]
    Key(commands::key::KeyCmd),
    /// List and inspect plugins.
    #[command(subcommand)]
    Plugin(commands::plugin::PluginCmd),
    /// PostgreSQL WAL archive: push (archive_command), fetch (restore_command), list.
    #[command(subcommand)]
    Wal(commands::wal::WalCmd),
    /// Plugin-owned streams (WAL, replication streams): push, fetch, list, follow.
    #[command(subcommand)]
    Stream(commands::stream::StreamCmd),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    output::init_logging(cli.global.quiet);
    // Eight blocking-pool threads, not tokio's 512: blobs are decoded and
    // local files read there, and glibc gives each thread that allocates
    // its own arena, which keeps what it freed. A restore's peak RSS went
    // from about 200 to 150 MiB; nothing coffer runs there waits on
    // another blocking task.
    let runtime = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(8).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coffer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(commands::run(cli));
    tracing::debug!("command finished");
    // Background uploads and plugin threads must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    tracing::debug!("async runtime shut down");
    code
}
