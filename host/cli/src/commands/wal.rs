//! `coffer wal push|fetch|list`: PostgreSQL's `archive_command` and
//! `restore_command` as coffer wrote them before streams, kept working as
//! thin aliases of `coffer stream push|fetch|list` with the built-in
//! `postgres` plugin, which knows what a WAL file is.
//!
//! ```text
//! archive_command = 'coffer --repo R --password-file F wal push %p'
//! restore_command = 'coffer --repo R --password-file F wal fetch --stream S %f %p'
//! ```
//! PostgreSQL runs both in the data directory.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use coffer_repo::{Repository, StreamOwner};

use super::stream::{self, PluginArg};
use crate::output::{print_json, size};
use crate::{ConfigArgs, Global, LimitArgs};

/// The built-in plugin whose streams these commands work on.
const PLUGIN: &str = "postgres";

#[derive(Subcommand, Debug)]
pub enum WalCmd {
    /// Archive one WAL file (PostgreSQL's archive_command: `coffer wal push %p`);
    /// `coffer stream push --plugin postgres %p`.
    Push(PushArgs),
    /// Write an archived WAL file to DEST (restore_command: `coffer wal fetch
    /// --stream S %f %p`); exits 1 with one line when the archive does not
    /// hold it. `coffer stream fetch --plugin postgres S %f %p`.
    Fetch(FetchArgs),
    /// List the archive's streams (`coffer stream list --plugin postgres`);
    /// `coffer verify` of a base backup reports gaps and timelines.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The WAL file (`%p`: a segment, .partial, .history or .backup file).
    pub path: PathBuf,
    /// The stream (default: `pg-<system identifier>` of the cluster).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// The cluster's data directory, for its system identifier in
    /// global/pg_control, which history files need (default: the working
    /// directory, where PostgreSQL runs archive_command).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The WAL file name (`%f`).
    pub name: String,
    /// Where to write it (`%p`); written to a temporary file and renamed.
    pub dest: PathBuf,
    /// The stream (default: the one stream of the postgres plugin that
    /// holds the file).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// Ignored: accepted so that restore commands written for earlier
    /// versions keep working (the stream is found by the file's name).
    #[arg(long, value_name = "DIR", hide = true)]
    pub pgdata: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this stream, with every item.
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
}

pub async fn run(g: &Global, cmd: WalCmd) -> Result<u8> {
    match cmd {
        WalCmd::Push(a) => push(g, a).await,
        WalCmd::Fetch(a) => fetch(g, a).await,
        WalCmd::List(a) => stream::list(g, stream::ListArgs { plugin: Some(PLUGIN.into()), stream: a.stream }).await,
    }
}

async fn push(g: &Global, args: PushArgs) -> Result<u8> {
    let mut set = Vec::new();
    if let Some(s) = &args.stream {
        coffer_repo::repofile::stream::valid_stream(s)
            .map_err(|e| anyhow!(super::UsageError(format!("--stream: {e}"))))?;
        set.push(format!("stream={s}"));
    }
    let pgdata = match &args.pgdata {
        Some(d) => std::path::absolute(d)?,
        None => std::env::current_dir()?,
    };
    let pgdata = pgdata.to_str().ok_or_else(|| anyhow!("--pgdata must be a UTF-8 path"))?;
    set.push(format!("pgdata_dir={pgdata}"));
    let push = stream::PushArgs {
        plugin: PluginArg { plugin: PLUGIN.into() },
        cfg: ConfigArgs { set, config: None },
        limits: args.limits,
        file: args.path,
    };
    let (_, report) = stream::push_file(g, &push).await?;
    if g.json {
        print_json(&report)?;
        return Ok(0);
    }
    for i in &report.items {
        if !i.stored {
            println!("{} is already archived with the same content (stream {})", i.key, i.stream);
        } else if !g.quiet {
            println!("archived {} (stream {}): {}", i.key, i.stream, size(i.size));
        }
    }
    if report.finished == 0 {
        bail!("the postgres plugin archived nothing");
    }
    Ok(0)
}

/// As `coffer stream fetch`: exit 1 for a file the archive does not hold,
/// [`stream::EXIT_FETCH_FAILED`] for any other failure, so that a storage
/// error stops PostgreSQL's recovery instead of ending it early.
async fn fetch(g: &Global, args: FetchArgs) -> Result<u8> {
    match fetch_or_fail(g, args).await {
        Ok(code) => Ok(code),
        // A mistake in the command itself stays a usage error (2).
        Err(e) if e.downcast_ref::<super::UsageError>().is_some() => Err(e),
        Err(e) => {
            eprintln!("coffer: {e:#}");
            Ok(stream::EXIT_FETCH_FAILED)
        }
    }
}

async fn fetch_or_fail(g: &Global, args: FetchArgs) -> Result<u8> {
    stream::check_names(args.stream.as_deref(), &args.name)?;
    let owner = StreamOwner::builtin(PLUGIN).map_err(|e| anyhow!(e))?;
    let repo: Repository = super::open_repo(g).await?;
    let stream = match args.stream {
        Some(s) => s,
        None => {
            let mut holding = stream::streams_holding(&repo, &owner, &args.name).await?;
            match holding.len() {
                0 => {
                    eprintln!("coffer: WAL file {} is not in the archive (no stream holds it)", args.name);
                    return Ok(1);
                }
                1 => holding.remove(0),
                _ => bail!(
                    "WAL file {} is archived in {} streams ({}): pass --stream NAME to say which cluster's",
                    args.name,
                    holding.len(),
                    holding.join(", ")
                ),
            }
        }
    };
    match stream::fetch_item(g, &repo, &owner, &stream, &args.name, &args.dest, None).await? {
        Some(_) => Ok(0),
        None => {
            // A normal answer during recovery: one line, exit 1.
            eprintln!("coffer: WAL file {} is not in the archive (stream {stream})", args.name);
            Ok(1)
        }
    }
}
