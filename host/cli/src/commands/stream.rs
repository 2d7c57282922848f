//! `coffer stream push|fetch|list|follow`: the logs that make point-in-time
//! recovery possible (PostgreSQL's WAL, Redis's replication stream, ...),
//! kept as plugin-owned streams. The plugin knows the format: `push` hands
//! it a file, `follow` lets it follow the source. The host stores, lists
//! and fetches items without knowing what they are: `fetch` runs no plugin
//! at all, so a system's restore command stays fast.
//!
//! A stream belongs to the plugin that writes it, by identity: a built-in
//! plugin by its name, any other by the BLAKE3 of its component.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use coffer_repo::{Repository, StreamItem, StreamOwner};
use coffer_runtime::{GrantSet, JobOptions, Purpose, StreamReport, printable};
use serde::Serialize;

use crate::output::{duration, print_json, size};
use crate::{ConfigArgs, Global, LimitArgs};

#[derive(Subcommand, Debug)]
pub enum StreamCmd {
    /// Hand one file to the plugin to archive in its stream (an
    /// `archive_command`): `coffer stream push --plugin postgres %p`.
    Push(PushArgs),
    /// Write one stream item to DEST (a `restore_command`); exits 1 with
    /// one line when the stream does not hold it. Runs no plugin.
    Fetch(FetchArgs),
    /// List streams (owner, items, newest, lag), or one stream's items.
    List(ListArgs),
    /// Follow the source (e.g. PostgreSQL's WAL over a replication slot),
    /// storing items as they appear, until stopped with Ctrl-C or SIGTERM.
    Follow(FollowArgs),
}

/// Whose streams: a plugin, by built-in name or `.wasm` path.
#[derive(Args, Debug, Clone)]
pub struct PluginArg {
    /// A built-in plugin (`postgres`) or a path to a plugin `.wasm` file.
    #[arg(long, short = 'p', value_name = "PLUGIN")]
    pub plugin: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub plugin: PluginArg,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The file to archive (relative paths are taken from the working
    /// directory); the plugin may read it and nothing else beside it.
    pub file: PathBuf,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("whose").required(true).args(["plugin", "owner"])))]
pub struct FetchArgs {
    /// The plugin whose stream it is: a built-in name or a `.wasm` path.
    #[arg(long, short = 'p', value_name = "PLUGIN")]
    pub plugin: Option<String>,
    /// The stream's owner as stored: `builtin-<name>` or a component's
    /// BLAKE3 digest (what `coffer stream list` shows); what restore
    /// commands name, so they keep working when the plugin file changes.
    #[arg(long, value_name = "OWNER")]
    pub owner: Option<String>,
    /// The stream.
    pub stream: String,
    /// The item's key.
    pub key: String,
    /// Where to write it; written to a temporary file beside it, checked,
    /// then renamed.
    pub dest: PathBuf,
    /// When the stream holds no item KEY: fetch the item with the highest
    /// position among those whose key starts with PREFIX (e.g. the longest
    /// stored copy of a WAL segment still being written).
    #[arg(long, value_name = "PREFIX")]
    pub or_latest_prefix: Option<String>,
    /// Extend a shorter item with zero bytes to this many bytes (a
    /// partial WAL segment must have the segment's size).
    #[arg(long, value_name = "BYTES")]
    pub pad_to: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this plugin's streams.
    #[arg(long, short = 'p', value_name = "PLUGIN")]
    pub plugin: Option<String>,
    /// One stream: list its items (needs --plugin).
    pub stream: Option<String>,
}

#[derive(Args, Debug)]
pub struct FollowArgs {
    #[command(flatten)]
    pub plugin: PluginArg,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// How long another follower of the same stream must wait after this
    /// one dies on another machine (on this machine, a dead follower is
    /// noticed at once).
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    pub lease_expiry: String,
}

pub async fn run(g: &Global, cmd: StreamCmd) -> Result<u8> {
    match cmd {
        StreamCmd::Push(a) => push(g, a).await,
        StreamCmd::Fetch(a) => fetch(g, a).await,
        StreamCmd::List(a) => list(g, a).await,
        StreamCmd::Follow(a) => follow(g, a).await,
    }
}

/// The owner of `spec`'s streams, without running it: `builtin-<name>` for
/// a built-in, the BLAKE3 of the file for a component.
pub fn owner_of(spec: &str) -> Result<StreamOwner> {
    let owner = if crate::plugins::builtin(spec).is_some() {
        StreamOwner::builtin(spec)
    } else {
        let bytes = std::fs::read(spec).with_context(|| format!("reading plugin {spec}"))?;
        StreamOwner::parse(&blake3::hash(&bytes).to_hex())
    };
    owner.map_err(|e| anyhow!(e))
}

/// What `push` printed as JSON.
#[derive(Serialize)]
struct PushOutput<'a> {
    file: String,
    #[serde(flatten)]
    report: &'a StreamReport,
}

/// Hands `args.file` to the plugin to archive; returns its absolute path
/// and what the plugin stored.
pub async fn push_file(g: &Global, args: &PushArgs) -> Result<(PathBuf, StreamReport)> {
    let cancel = super::cancel_on_signal();
    let file = std::path::absolute(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let meta = std::fs::metadata(&file).with_context(|| format!("{}: cannot read it", file.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", file.display());
    }
    let dir = file.parent().ok_or_else(|| anyhow!("{}: no directory", file.display()))?;
    let repo: Repository = super::open_repo(g).await?;
    let rt = crate::plugins::runtime()?;
    let plugin = crate::plugins::load(&rt, &args.plugin.plugin)?;
    let mut job = crate::config::for_plugin(&plugin, &cancel, &args.cfg, &args.limits, None).await?;
    let mut grants = GrantSet::for_job(&mut job.config, &job.rules, Purpose::Read)?;
    grants.read_dir("FILE", &dir.to_string_lossy())?;
    let opts = JobOptions { grants, limits: job.limits, cancel, ..JobOptions::default() };
    let report = plugin.stream_push(&repo, &file, &job.config, &opts).await?;
    // An archive command that exits 0 tells the system the file is safe:
    // a plugin that stored nothing must not let it think so.
    if report.finished == 0 {
        bail!("plugin {} stored nothing for {}; the file is not archived", args.plugin.plugin, file.display());
    }
    Ok((file, report))
}

pub async fn push(g: &Global, args: PushArgs) -> Result<u8> {
    let (file, report) = push_file(g, &args).await?;
    if g.json {
        print_json(&PushOutput { file: file.display().to_string(), report: &report })?;
    } else if !g.quiet {
        for i in &report.items {
            let what = if i.stored { "archived" } else { "already archived, nothing written:" };
            eprintln!("{what} {}/{} ({})", printable(&i.stream), printable(&i.key), size(i.size));
        }
    }
    Ok(0)
}

/// Checks a stream name and an item key typed on the command line.
pub fn check_names(stream: Option<&str>, key: &str) -> Result<()> {
    if let Some(s) = stream {
        coffer_repo::repofile::stream::valid_stream(s).map_err(|e| anyhow!(super::UsageError(e)))?;
    }
    coffer_repo::repofile::stream::valid_key(key).map_err(|e| anyhow!(super::UsageError(e)))
}

/// Exit status of `stream fetch` for every failure but a missing item:
/// above 125, which PostgreSQL's recovery (and shells) take for a failed
/// command rather than for "not archived", so a storage error stops a
/// recovery instead of ending it early at the last item fetched.
pub const EXIT_FETCH_FAILED: u8 = 126;

pub async fn fetch(g: &Global, args: FetchArgs) -> Result<u8> {
    match fetch_or_fail(g, &args).await {
        Ok(code) => Ok(code),
        // A mistake in the command itself stays a usage error (2).
        Err(e) if e.downcast_ref::<super::UsageError>().is_some() => Err(e),
        Err(e) => {
            eprintln!("coffer: {e:#}");
            Ok(EXIT_FETCH_FAILED)
        }
    }
}

async fn fetch_or_fail(g: &Global, args: &FetchArgs) -> Result<u8> {
    check_names(Some(&args.stream), &args.key)?;
    let owner = match (&args.owner, &args.plugin) {
        (Some(o), _) => StreamOwner::parse(o).map_err(|e| anyhow!(super::UsageError(e)))?,
        (None, Some(p)) => owner_of(p)?,
        (None, None) => unreachable!("clap requires --plugin or --owner"),
    };
    let repo: Repository = super::open_repo(g).await?;
    let mut key = args.key.clone();
    if let Some(prefix) = &args.or_latest_prefix
        && repo.stream_item(&owner, &args.stream, &key).await?.is_none()
    {
        coffer_repo::repofile::stream::valid_key(prefix.trim_end_matches('.'))
            .map_err(|e| anyhow!(super::UsageError(format!("--or-latest-prefix: {e}"))))?;
        let listed = repo.stream_list(&owner, &args.stream, None, None).await?;
        if let Some(latest) =
            listed.into_iter().filter(|i| i.key.starts_with(prefix.as_str())).max_by_key(|i| (i.position, i.modified))
        {
            if !g.quiet {
                eprintln!("coffer: {} is not stored; fetching {} instead", args.key, latest.key);
            }
            key = latest.key;
        }
    }
    // Only a fallback copy is padded: an item stored whole is written as
    // it is.
    let pad_to = if key != args.key { args.pad_to } else { None };
    match fetch_item(g, &repo, &owner, &args.stream, &key, &args.dest, pad_to).await? {
        Some(_) => Ok(0),
        None => {
            // A restore command is asked for items that were never archived
            // (the next segment, a history file): one line, exit 1.
            if !g.quiet {
                eprintln!("coffer: stream {owner}/{} holds no item {}", args.stream, args.key);
            }
            Ok(1)
        }
    }
}

/// The streams of `owner` that hold an item `key` (one prefix listing per
/// stream of the owner).
pub async fn streams_holding(repo: &Repository, owner: &StreamOwner, key: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (o, stream) in repo.streams().await? {
        if o == *owner && repo.stream_item(owner, &stream, key).await?.is_some() {
            out.push(stream);
        }
    }
    Ok(out)
}

/// Writes one item to `dest` (through a temporary file beside it, renamed
/// once size and BLAKE3 are checked), extended with zero bytes to `pad_to`
/// bytes when it is shorter; `None`, writing nothing, when there is no
/// such item.
pub async fn fetch_item(
    g: &Global,
    repo: &Repository,
    owner: &StreamOwner,
    stream: &str,
    key: &str,
    dest: &Path,
    pad_to: Option<u64>,
) -> Result<Option<StreamItem>> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!(super::UsageError(format!("{}: not a file name", dest.display()))))?;
    let tmp = dir.join(format!(".{base}.coffer-{}.tmp", std::process::id()));
    let written = async {
        let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(f);
        let item = repo.stream_fetch_into(owner, stream, key, &mut out).await?;
        if let Some(n) = pad_to
            && n > item.size
        {
            std::io::copy(&mut std::io::repeat(0).take(n - item.size), &mut out)
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        let f = out.into_inner().map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
        f.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok::<_, anyhow::Error>(item)
    }
    .await;
    match written {
        Ok(item) => {
            if g.json {
                print_json(&serde_json::json!({
                    "owner": owner.to_string(), "stream": stream, "key": key, "size": item.size,
                    "blake3": item.blake3, "dest": dest.display().to_string(),
                }))?;
            }
            Ok(Some(item))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            if let Some(coffer_repo::Error::StreamItemNotFound { .. }) = e.downcast_ref::<coffer_repo::Error>() {
                return Ok(None);
            }
            Err(e.context(format!("fetching {stream}/{key}")))
        }
    }
}

/// One stream as `list` shows it.
#[derive(Serialize)]
struct StreamRow {
    owner: String,
    stream: String,
    items: usize,
    pinned: usize,
    first_position: Option<u64>,
    last_position: Option<u64>,
    /// The key of the first item (by position; items without one first).
    first_key: Option<String>,
    /// The key of the item with the highest position (or, with none, the
    /// newest).
    newest_key: Option<String>,
    newest_pushed: Option<chrono::DateTime<chrono::Utc>>,
    checkpoint_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Positions between the newest item and where the source was at the
    /// last checkpoint.
    lag_positions: Option<u64>,
}

pub async fn list(g: &Global, args: ListArgs) -> Result<u8> {
    if let Some(s) = &args.stream {
        coffer_repo::repofile::stream::valid_stream(s).map_err(|e| anyhow!(super::UsageError(e)))?;
    }
    let only = args.plugin.as_deref().map(owner_of).transpose()?;
    let repo: Repository = super::open_repo(g).await?;
    if let Some(stream) = &args.stream {
        let owner = only.ok_or_else(|| anyhow!("name the plugin whose stream {stream} to list (--plugin P)"))?;
        let items = repo.stream_list(&owner, stream, None, None).await?;
        if g.json {
            print_json(&items)?;
        } else {
            println!("{:<20} {:<6} {:<25} key", "position", "pinned", "stored");
            for i in &items {
                let pos = i.position.map_or("-".to_string(), |p| p.to_string());
                let pinned = if i.pinned { "yes" } else { "" };
                println!("{pos:<20} {pinned:<6} {:<25} {}", i.modified.format("%Y-%m-%d %H:%M:%S"), i.key);
            }
            println!("{} items", items.len());
        }
        return Ok(0);
    }
    let mut rows = Vec::new();
    for (owner, stream) in repo.streams().await? {
        if only.as_ref().is_some_and(|o| *o != owner) {
            continue;
        }
        let items = repo.stream_list(&owner, &stream, None, None).await?;
        let newest = items.iter().max_by_key(|i| (i.position, i.modified));
        let checkpoint = repo.stream_checkpoint(&owner, &stream).await?;
        let last_position = items.iter().filter_map(|i| i.position).max();
        rows.push(StreamRow {
            owner: owner.to_string(),
            stream: stream.clone(),
            items: items.len(),
            pinned: items.iter().filter(|i| i.pinned).count(),
            first_position: items.iter().filter_map(|i| i.position).min(),
            last_position,
            first_key: items.first().map(|i| i.key.clone()),
            newest_key: newest.map(|i| i.key.clone()),
            newest_pushed: newest.map(|i| i.modified),
            checkpoint_time: checkpoint.as_ref().map(|c| c.time),
            lag_positions: checkpoint
                .as_ref()
                .and_then(|c| c.source_position)
                .map(|s| s.saturating_sub(last_position.unwrap_or(0))),
        });
    }
    if g.json {
        print_json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no streams");
        return Ok(0);
    }
    let now = chrono::Utc::now();
    for r in &rows {
        let age = r
            .newest_pushed
            .map(|t| format!(", newest {} ago", duration((now - t).to_std().unwrap_or_default())))
            .unwrap_or_default();
        let lag = r.lag_positions.map(|l| format!(", lag {l} positions at the last checkpoint")).unwrap_or_default();
        println!(
            "{} {}: {} items ({} pinned), positions {}..{}{age}{lag}",
            short_owner(&r.owner),
            r.stream,
            r.items,
            r.pinned,
            r.first_position.map_or("-".into(), |p| p.to_string()),
            r.last_position.map_or("-".into(), |p| p.to_string()),
        );
        if let (Some(first), Some(newest)) = (&r.first_key, &r.newest_key) {
            println!("  first {}, newest {}", coffer_runtime::printable(first), coffer_runtime::printable(newest));
        }
    }
    Ok(0)
}

/// An owner as a table shows it: built-ins whole, digests cut to 8 digits.
fn short_owner(owner: &str) -> String {
    if owner.starts_with("builtin-") { owner.to_string() } else { crate::plugins::short_digest(owner).to_string() }
}

pub async fn follow(g: &Global, args: FollowArgs) -> Result<u8> {
    let cancel = super::cancel_on_signal();
    let lease_expiry = coffer_runtime::limits::parse_duration(&args.lease_expiry)
        .map_err(|e| anyhow!(super::UsageError(format!("--lease-expiry: {e}"))))?;
    if lease_expiry < Duration::from_secs(10) {
        bail!("--lease-expiry {}: at least 10s", args.lease_expiry);
    }
    let repo: Repository = super::open_repo(g).await?;
    let rt = crate::plugins::runtime()?;
    let plugin = crate::plugins::load(&rt, &args.plugin.plugin)?;
    let mut job = crate::config::for_plugin(&plugin, &cancel, &args.cfg, &args.limits, None).await?;
    // A follow runs until it is stopped: no time limit, and no limit on
    // what it stores over its life, unless the operator sets them.
    if args.limits.time_limit.is_none() {
        job.limits.wall_time = Duration::from_secs(100 * 365 * 24 * 3600);
    }
    if args.limits.output_limit.is_none() {
        job.limits.output_bytes = u64::MAX;
    }
    let grants = GrantSet::for_job(&mut job.config, &job.rules, Purpose::Read)?;
    let opts = JobOptions { grants, limits: job.limits, cancel, ..JobOptions::default() };
    if !g.quiet && !g.json {
        eprintln!("following with plugin {}; stop with Ctrl-C (finished items are kept)", args.plugin.plugin);
    }
    let started = Instant::now();
    let report = plugin.follow(&repo, &job.config, &opts, lease_expiry).await?;
    if g.json {
        print_json(&report)?;
    } else if !g.quiet {
        let stored = report.items.iter().filter(|i| i.stored).count();
        eprintln!(
            "stopped after {}: {} items finished ({stored} of the first {} new)",
            duration(started.elapsed()),
            report.finished,
            report.items.len()
        );
    }
    Ok(0)
}
