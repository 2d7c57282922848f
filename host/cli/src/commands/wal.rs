//! `coffer wal push|fetch|list`: the repository as PostgreSQL's WAL archive,
//! and the archive checks that `forget`, `verify` and `restore` make for
//! snapshots of the `postgres` plugin.
//!
//! ```text
//! archive_command = 'coffer --repo R --password-file F wal push %p'
//! restore_command = 'coffer --repo R --password-file F wal fetch %f %p'
//! ```
//! PostgreSQL runs both in the data directory. A file belongs to a stream,
//! `pg-<system identifier>`, read from the segment's first page or, for
//! history files, from `global/pg_control`; `--stream` overrides it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use coffer_repo::repofile::wal::{
    DEFAULT_SEGMENT_SIZE, parse_long_header, parse_time, stream_for_system, valid_segment_size, valid_stream,
};
use coffer_repo::{Id, Lsn, Repository, SnapshotManifest, WalCoverage, WalFile};
use serde::Serialize;

use crate::Global;
use crate::output::{print_json, size};

/// Snapshot attributes the `postgres` plugin sets, read here.
pub mod attr {
    /// The cluster's system identifier (decimal).
    pub const SYSTEM_IDENTIFIER: &str = "pg.system-identifier";
    /// Segment name where the base backup started.
    pub const START_WAL: &str = "pg.start-wal";
    /// Segment name of the last WAL the base backup needs.
    pub const STOP_WAL: &str = "pg.stop-wal";
    /// LSN where the base backup ended.
    pub const STOP_LSN: &str = "pg.stop-lsn";
    /// Time the base backup ended.
    pub const STOP_TIME: &str = "pg.stop-time";
    /// WAL segment size in bytes.
    pub const SEGMENT_SIZE: &str = "pg.wal-segment-size";
    /// The WAL stream, when it is not `pg-<system identifier>`.
    pub const WAL_STREAM: &str = "pg.wal-stream";
}

/// The plugin whose snapshots are PostgreSQL base backups.
pub const POSTGRES_PLUGIN: &str = "postgres";

#[derive(Subcommand, Debug)]
pub enum WalCmd {
    /// Archive one WAL file (PostgreSQL's archive_command: `coffer wal push %p`).
    Push(PushArgs),
    /// Write an archived WAL file to DEST (restore_command: `coffer wal fetch %f %p`);
    /// exits 1 with one line when the archive does not hold it.
    Fetch(FetchArgs),
    /// List the archive's streams: file counts, first and last segment, gaps.
    List(ListArgs),
}

/// Which stream a file belongs to.
#[derive(Args, Debug, Clone)]
pub struct StreamArgs {
    /// The stream (default: `pg-<system identifier>` of the cluster).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// The cluster's data directory, for its system identifier in
    /// global/pg_control (default: the working directory, where PostgreSQL
    /// runs archive and restore commands).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The WAL file (`%p`: a segment, .partial, .history or .backup file).
    pub path: PathBuf,
    #[command(flatten)]
    pub stream: StreamArgs,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The WAL file name (`%f`).
    pub name: String,
    /// Where to write it (`%p`); written to a temporary file and renamed.
    pub dest: PathBuf,
    #[command(flatten)]
    pub stream: StreamArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this stream, with every file name.
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
}

pub async fn run(g: &Global, cmd: WalCmd) -> Result<u8> {
    match cmd {
        WalCmd::Push(a) => push(g, a).await,
        WalCmd::Fetch(a) => fetch(g, a).await,
        WalCmd::List(a) => list(g, a).await,
    }
}

/// The system identifier from `<pgdata>/global/pg_control` (its first 8 bytes).
pub fn pg_control_system_identifier(pgdata: &Path) -> Result<u64, String> {
    let path = pgdata.join("global").join("pg_control");
    let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 8 {
        return Err(format!("{}: {} bytes, too short for a control file", path.display(), data.len()));
    }
    let id = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    if id == 0 {
        return Err(format!("{}: no system identifier in it", path.display()));
    }
    Ok(id)
}

fn pgdata_dir(args: &StreamArgs) -> PathBuf {
    args.pgdata.clone().unwrap_or_else(|| PathBuf::from("."))
}

fn explicit_stream(args: &StreamArgs) -> Result<Option<String>> {
    match &args.stream {
        Some(s) => {
            valid_stream(s).map_err(|e| anyhow!(super::UsageError(format!("--stream: {e}"))))?;
            Ok(Some(s.clone()))
        }
        None => Ok(None),
    }
}

/// The stream of a file being pushed: `--stream`, else the system
/// identifier of the segment's first page, else (history and backup history
/// files) the one in pg_control.
pub fn stream_for_push(args: &StreamArgs, name: &str, file: &WalFile, data: &[u8]) -> Result<String> {
    if let Some(s) = explicit_stream(args)? {
        return Ok(s);
    }
    let unknown = |why: String| {
        anyhow!(
            "cannot tell which cluster {name} belongs to: {why}; pass --stream NAME (pg-<system identifier>) \
             or --pgdata DIR (the cluster's data directory)"
        )
    };
    match file {
        WalFile::Segment { .. } | WalFile::Partial { .. } => {
            let h = parse_long_header(data).map_err(unknown)?;
            let seg_size = u64::from(h.segment_size);
            if matches!(file, WalFile::Segment { .. }) && data.len() as u64 != seg_size {
                bail!(
                    "{name} has {} bytes, but its first page says segments are {seg_size} bytes: it is not a \
                     complete WAL segment; it was not archived",
                    data.len()
                );
            }
            let expected = file.segno(seg_size).map(|s| s * seg_size);
            if expected != Some(h.pageaddr) {
                bail!(
                    "{name} is not the WAL segment its name says: its first page is at LSN {}, the name means {}; \
                     it was not archived",
                    Lsn(h.pageaddr),
                    expected.map_or_else(|| "an impossible position".to_string(), |p| Lsn(p).to_string())
                );
            }
            Ok(stream_for_system(h.system_identifier))
        }
        WalFile::History { .. } | WalFile::BackupHistory { .. } => {
            let id = pg_control_system_identifier(&pgdata_dir(args)).map_err(unknown)?;
            Ok(stream_for_system(id))
        }
    }
}

async fn push(g: &Global, args: PushArgs) -> Result<u8> {
    let name = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!(super::UsageError(format!("{}: not a file name", args.path.display()))))?
        .to_string();
    let file = WalFile::parse_checked(&name).map_err(|e| anyhow!(super::UsageError(e)))?;
    let data = std::fs::read(&args.path).with_context(|| format!("reading {}", args.path.display()))?;
    let stream = stream_for_push(&args.stream, &name, &file, &data)?;
    let repo = super::open_repo(g).await?;
    let r = repo
        .wal_push(&stream, &name, Bytes::from(data))
        .await
        .with_context(|| format!("archiving {name} (stream {stream})"))?;
    if g.json {
        print_json(&r)?;
    } else if r.already_archived {
        println!("{name} is already archived with the same content (stream {stream})");
    } else if !g.quiet {
        println!("archived {name} (stream {stream}): {}, {} of it new", size(r.size), size(r.new_bytes));
    }
    Ok(0)
}

/// The stream of a file being fetched: `--stream`, else `pg-<system
/// identifier>` from pg_control in the data directory.
fn stream_for_fetch(args: &StreamArgs, name: &str) -> Result<String> {
    if let Some(s) = explicit_stream(args)? {
        return Ok(s);
    }
    let id = pg_control_system_identifier(&pgdata_dir(args)).map_err(|why| {
        anyhow!(
            "cannot tell which cluster's WAL {name} to fetch: {why}; pass --stream NAME (pg-<system identifier>) \
             or --pgdata DIR (the data directory being recovered)"
        )
    })?;
    Ok(stream_for_system(id))
}

async fn fetch(g: &Global, args: FetchArgs) -> Result<u8> {
    WalFile::parse_checked(&args.name).map_err(|e| anyhow!(super::UsageError(e)))?;
    let stream = stream_for_fetch(&args.stream, &args.name)?;
    let repo = super::open_repo(g).await?;
    let dest = &args.dest;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
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
        let obj = repo.wal_fetch_into(&stream, &args.name, &mut out).await?;
        let f = out.into_inner().map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
        f.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok::<_, anyhow::Error>(obj)
    }
    .await;
    let obj = match written {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            if let Some(coffer_repo::Error::WalNotFound { .. }) = e.downcast_ref::<coffer_repo::Error>() {
                // A normal answer during recovery: one line, exit 1.
                eprintln!("coffer: {e}");
                return Ok(1);
            }
            return Err(e.context(format!("fetching {} (stream {stream})", args.name)));
        }
    };
    if g.json {
        print_json(&serde_json::json!({
            "stream": stream, "name": obj.name, "size": obj.size, "blake3": obj.blake3,
            "dest": dest.display().to_string(),
        }))?;
    }
    Ok(0)
}

/// One stream as `wal list` shows it.
#[derive(Debug, Serialize)]
pub struct StreamSummary {
    /// The stream.
    pub stream: String,
    /// Archived files of every kind.
    pub files: usize,
    /// Complete segments.
    pub segments: usize,
    /// Timeline history files.
    pub history_files: usize,
    /// Backup history files.
    pub backup_files: usize,
    /// Partial segments.
    pub partial_files: usize,
    /// Segment size in bytes (from the newest segment).
    pub segment_size: Option<u64>,
    /// The oldest segment.
    pub first: Option<String>,
    /// The newest segment on the timelines recovery would follow.
    pub last: Option<String>,
    /// Timelines followed from `first`.
    pub timelines: Vec<u32>,
    /// Missing runs between `first` and `last`.
    pub gaps: Vec<coffer_repo::WalGap>,
    /// When `last` was archived.
    pub last_pushed: Option<chrono::DateTime<chrono::Utc>>,
    /// Every file name, in WAL order (with `--stream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// Summarizes one stream.
pub async fn summarize(repo: &Repository, stream: &str, with_names: bool) -> Result<StreamSummary> {
    let files = repo.wal_list(stream).await?;
    let count = |f: fn(&WalFile) -> bool| files.iter().filter(|l| f(&l.file)).count();
    let mut s = StreamSummary {
        stream: stream.to_string(),
        files: files.len(),
        segments: count(|f| matches!(f, WalFile::Segment { .. })),
        history_files: count(|f| matches!(f, WalFile::History { .. })),
        backup_files: count(|f| matches!(f, WalFile::BackupHistory { .. })),
        partial_files: count(|f| matches!(f, WalFile::Partial { .. })),
        segment_size: None,
        first: None,
        last: None,
        timelines: Vec::new(),
        gaps: Vec::new(),
        last_pushed: None,
        names: with_names.then(|| files.iter().map(|l| l.name.clone()).collect()),
    };
    let first = files.iter().find(|l| l.file.is_segment());
    if let (Some(first), Some(seg_size)) = (first, repo.wal_segment_size(stream).await?) {
        let c = repo.wal_coverage(stream, seg_size, &first.name).await?;
        s.segment_size = Some(seg_size);
        s.first = Some(first.name.clone());
        s.last = c.newest;
        s.timelines = c.timelines;
        s.gaps = c.gaps;
        s.last_pushed = c.newest_pushed;
    }
    Ok(s)
}

async fn list(g: &Global, args: ListArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let streams = match &args.stream {
        Some(s) => {
            valid_stream(s).map_err(|e| anyhow!(super::UsageError(format!("--stream: {e}"))))?;
            vec![s.clone()]
        }
        None => repo.wal_streams().await?,
    };
    let mut out = Vec::new();
    for s in &streams {
        out.push(summarize(&repo, s, args.stream.is_some()).await?);
    }
    if g.json {
        print_json(&out)?;
        return Ok(0);
    }
    if out.is_empty() || out.iter().all(|s| s.files == 0) {
        println!("no archived WAL");
        return Ok(0);
    }
    for s in &out {
        println!(
            "stream {}: {} files ({} segments, {} history, {} backup history, {} partial){}",
            s.stream,
            s.files,
            s.segments,
            s.history_files,
            s.backup_files,
            s.partial_files,
            s.segment_size.map(|z| format!(", {} segments", size(z))).unwrap_or_default()
        );
        if let (Some(first), Some(last)) = (&s.first, &s.last) {
            let tl: Vec<String> = s.timelines.iter().map(u32::to_string).collect();
            println!("  first {first}, last {last} (timelines {})", tl.join(", "));
        }
        if let Some(t) = s.last_pushed {
            println!("  last archived {}", t.format("%Y-%m-%d %H:%M:%S UTC"));
        }
        if s.gaps.is_empty() {
            if s.first.is_some() {
                println!("  no gaps");
            }
        } else {
            for gap in &s.gaps {
                let n = gap.segments;
                println!("  gap: {} ({n} segment{} missing)", gap_text(gap), if n == 1 { "" } else { "s" });
            }
        }
        for n in s.names.iter().flatten() {
            println!("  {n}");
        }
    }
    Ok(0)
}

fn gap_text(gap: &coffer_repo::WalGap) -> String {
    if gap.first == gap.last { gap.first.clone() } else { format!("{}..{}", gap.first, gap.last) }
}

/// A segment name with its (timeline, segment number).
pub type NamedSegment = (String, (u32, u64));

/// The WAL facts of a `postgres` snapshot.
#[derive(Debug, Clone)]
pub struct BaseBackup {
    /// The WAL stream.
    pub stream: String,
    /// Segment size.
    pub segment_size: u64,
    /// Start segment name.
    pub start: String,
    /// (timeline, segment number) of the start.
    pub start_at: (u32, u64),
    /// Stop segment name and position, when known.
    pub stop: Option<NamedSegment>,
}

/// Reads a base backup's WAL attributes. `Err` says what is missing.
pub fn base_backup(m: &SnapshotManifest) -> Result<BaseBackup, String> {
    let a = &m.attributes;
    let get = |k: &str| a.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let segment_size = match get(attr::SEGMENT_SIZE) {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| valid_segment_size(*s))
            .ok_or_else(|| format!("attribute {} = {v:?} is not a WAL segment size", attr::SEGMENT_SIZE))?,
        None => DEFAULT_SEGMENT_SIZE,
    };
    let stream = match (get(attr::WAL_STREAM), get(attr::SYSTEM_IDENTIFIER)) {
        (Some(s), _) => s.to_string(),
        (None, Some(id)) => stream_for_system(
            id.parse::<u64>().map_err(|_| format!("attribute {} = {id:?} is not a number", attr::SYSTEM_IDENTIFIER))?,
        ),
        (None, None) => return Err(format!("it has no {} attribute", attr::SYSTEM_IDENTIFIER)),
    };
    valid_stream(&stream).map_err(|e| format!("attribute {}: {e}", attr::WAL_STREAM))?;
    let seg = |k: &str| -> Result<Option<NamedSegment>, String> {
        let Some(v) = get(k) else { return Ok(None) };
        let f = WalFile::parse(v).filter(WalFile::is_segment);
        let at = f.and_then(|f| Some((f.timeline(), f.segno(segment_size)?)));
        at.map(|at| Some((v.to_string(), at))).ok_or_else(|| format!("attribute {k} = {v:?} is not a segment name"))
    };
    let (start, start_at) = seg(attr::START_WAL)?.ok_or_else(|| format!("it has no {} attribute", attr::START_WAL))?;
    let stop = seg(attr::STOP_WAL)?;
    Ok(BaseBackup { stream, segment_size, start, start_at, stop })
}

/// What the archive and the snapshot together hold of a base backup's WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupWal {
    /// Segment numbers from start to stop in neither the archive nor the snapshot.
    pub missing_for_consistency: Vec<(u64, u64)>,
    /// Segments from start to stop found only in the snapshot's `pg_wal/`.
    pub only_in_snapshot: u64,
    /// Missing runs after the stop segment (or after start, with no stop).
    pub pitr_gaps: Vec<(u64, u64)>,
    /// The last segment recovery can reach without a gap.
    pub reachable: Option<u64>,
}

/// Combines the archive's coverage from the backup's start with the
/// segments the snapshot itself holds (only those from start to stop count:
/// a base backup carries the WAL that makes it consistent).
pub fn backup_wal(cov: &WalCoverage, start: u64, stop: Option<u64>, in_snapshot: &HashSet<u64>) -> BackupWal {
    let seg_size = cov.segment_size;
    let segno = |n: &str| WalFile::parse(n).and_then(|f| f.segno(seg_size));
    let stop_or_start = stop.unwrap_or(start);
    let held = |s: u64| s <= stop_or_start && s >= start && in_snapshot.contains(&s);
    let mut gaps: Vec<(u64, u64)> = cov.gaps.iter().filter_map(|g| Some((segno(&g.first)?, segno(&g.last)?))).collect();
    let newest = cov.newest.as_deref().and_then(segno);
    // Segments from start to stop that no archive gap reports because
    // nothing at all was archived at or after them.
    let archive_end = newest.map_or(start.checked_sub(1), Some);
    if archive_end.is_none_or(|e| e < stop_or_start) {
        let from = archive_end.map_or(start, |e| e + 1);
        gaps.push((from, stop_or_start));
    }
    let mut r = BackupWal { missing_for_consistency: vec![], only_in_snapshot: 0, pitr_gaps: vec![], reachable: None };
    let mut first_hole: Option<u64> = None;
    for (a, b) in gaps {
        // Split each gap into runs not held by the snapshot.
        let mut run: Option<(u64, u64)> = None;
        let flush = |run: &mut Option<(u64, u64)>, r: &mut BackupWal, first_hole: &mut Option<u64>| {
            if let Some((x, y)) = run.take() {
                *first_hole = Some(first_hole.map_or(x, |h| h.min(x)));
                if x <= stop_or_start && stop.is_some() {
                    r.missing_for_consistency.push((x, y.min(stop_or_start)));
                    if y > stop_or_start {
                        r.pitr_gaps.push((stop_or_start + 1, y));
                    }
                } else {
                    r.pitr_gaps.push((x, y));
                }
            }
        };
        for s in a..=b {
            if held(s) {
                r.only_in_snapshot += 1;
                flush(&mut run, &mut r, &mut first_hole);
            } else {
                run = Some(run.map_or((s, s), |(x, _)| (x, s)));
            }
        }
        flush(&mut run, &mut r, &mut first_hole);
    }
    let top = newest.map_or(stop_or_start, |n| n.max(stop_or_start));
    r.reachable = match first_hole {
        Some(h) if h <= start => None,
        Some(h) => Some(h - 1),
        None => Some(top),
    };
    r
}

/// The segment numbers of `pg_wal/<segment>` entries in a snapshot.
pub async fn snapshot_wal_segments(repo: &Repository, id: &Id, seg_size: u64) -> Result<HashSet<u64>> {
    let snap = repo.open_snapshot(id).await?;
    Ok(snap
        .entries
        .iter()
        .filter(|e| e.kind == coffer_repo::EntryKind::File)
        .filter_map(|e| e.path.strip_prefix("pg_wal/"))
        .filter_map(|n| WalFile::parse(n).filter(WalFile::is_segment)?.segno(seg_size))
        .collect())
}

/// Archive findings for `coffer verify` of a `postgres` snapshot: problems
/// as (path, reason), and notes.
pub async fn verify_archive(
    repo: &Repository,
    id: &Id,
    m: &SnapshotManifest,
) -> Result<(Vec<(String, String)>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let b = match base_backup(m) {
        Ok(b) => b,
        Err(why) => {
            notes.push(format!("the WAL archive was not checked: {why}"));
            return Ok((problems, notes));
        }
    };
    let cov = repo.wal_coverage(&b.stream, b.segment_size, &b.start).await?;
    let held = snapshot_wal_segments(repo, id, b.segment_size).await?;
    let stop = b.stop.as_ref().map(|(_, (_, s))| *s);
    let w = backup_wal(&cov, b.start_at.1, stop, &held);
    let name = |s: u64| cov.segment_name(s);
    let range = |(x, y): (u64, u64)| if x == y { name(x) } else { format!("{}..{}", name(x), name(y)) };
    for r in &w.missing_for_consistency {
        problems.push((
            format!("wal:{}", name(r.0)),
            format!(
                "WAL {} is needed to make this base backup consistent ({}..{}) and is neither in the archive \
                 (stream {}) nor in the snapshot's pg_wal/: the backup cannot be restored",
                range(*r),
                b.start,
                b.stop.as_ref().map_or(b.start.as_str(), |(n, _)| n.as_str()),
                b.stream
            ),
        ));
    }
    for &(x, y) in &w.pitr_gaps {
        problems.push((
            format!("wal:{}", name(x)),
            format!(
                "WAL {} is missing from the archive (stream {}): point-in-time recovery from this backup \
                 cannot go past {}; the backup itself still restores",
                range((x, y)),
                b.stream,
                x.checked_sub(1).map_or_else(|| "its start".to_string(), name)
            ),
        ));
    }
    if w.only_in_snapshot > 0 {
        notes.push(format!(
            "{} WAL segments of the backup's own range are only in the snapshot's pg_wal/, not in the archive",
            w.only_in_snapshot
        ));
    }
    match w.reachable {
        Some(r) => notes.push(format!(
            "point-in-time recovery from this backup reaches segment {}{}{}",
            name(r),
            match (&cov.contiguous_to, cov.contiguous_pushed) {
                (Some(c), Some(t)) if *c == name(r) => format!(" (archived {})", t.format("%Y-%m-%d %H:%M:%S UTC")),
                _ => String::new(),
            },
            match &cov.newest {
                Some(n) if *n != name(r) => format!("; the newest archived segment is {n}"),
                _ => String::new(),
            }
        )),
        None => notes.push(format!("the archive holds no WAL of this backup (stream {})", b.stream)),
    }
    Ok((problems, notes))
}

/// Checks a point-in-time restore target of a `postgres` snapshot against
/// the archive before anything is written. `to_time` / `to_lsn` come from
/// the job config; `to_xid` cannot be checked and is not looked at.
pub async fn check_restore_target(
    repo: &Repository,
    id: &Id,
    m: &SnapshotManifest,
    config: &serde_json::Value,
) -> Result<()> {
    let text = |k: &str| match config.get(k) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    };
    let (to_lsn, to_time) = (text("to_lsn"), text("to_time"));
    if to_lsn.is_none() && to_time.is_none() {
        return Ok(());
    }
    let snap = id.short();
    let b = base_backup(m).map_err(|why| {
        anyhow!("snapshot {snap} cannot be restored to a point in time: {why} (was it made by the postgres plugin?)")
    })?;
    let cov = repo.wal_coverage(&b.stream, b.segment_size, &b.start).await?;
    let held = snapshot_wal_segments(repo, id, b.segment_size).await?;
    let w = backup_wal(&cov, b.start_at.1, b.stop.as_ref().map(|(_, (_, s))| *s), &held);
    let reach_name = |r: u64| cov.segment_name(r);
    let reach_text = match w.reachable {
        Some(r) => {
            format!("the archive (stream {}) holds WAL without a gap from {} to {}", b.stream, b.start, reach_name(r))
        }
        None => format!("the archive (stream {}) holds no WAL from the backup's start {}", b.stream, b.start),
    };
    if let Some(l) = to_lsn {
        let target = Lsn::parse(&l).map_err(|e| anyhow!(super::UsageError(format!("--set to_lsn: {e}"))))?;
        if let Some(stop) = m.attributes.get(attr::STOP_LSN) {
            let stop = Lsn::parse(stop).map_err(|e| anyhow!("snapshot {snap}: attribute {}: {e}", attr::STOP_LSN))?;
            if target < stop {
                bail!(
                    "recovery target LSN {target} is before the end of base backup {snap} (LSN {stop}): a restore \
                     cannot stop before the backup is consistent; choose an older base backup (`coffer snapshots \
                     --source {}`)",
                    m.source
                );
            }
        }
        let seg = target.segno(b.segment_size);
        if w.reachable.is_none_or(|r| seg > r) {
            bail!(
                "recovery target LSN {target} lies in segment {}, beyond the archived WAL: {reach_text}; nothing was \
                 restored",
                cov.segment_name(seg)
            );
        }
    }
    if let Some(t) = to_time {
        let target = parse_time(&t).map_err(|e| anyhow!(super::UsageError(format!("--set to_time: {e}"))))?;
        if let Some(stop) = m.attributes.get(attr::STOP_TIME) {
            let stop = parse_time(stop).map_err(|e| anyhow!("snapshot {snap}: attribute {}: {e}", attr::STOP_TIME))?;
            if target < stop {
                bail!(
                    "recovery target time {} is before the end of base backup {snap} ({}): a restore cannot stop \
                     before the backup is consistent; choose an older base backup (`coffer snapshots --source {}`)",
                    target.to_rfc3339(),
                    stop.to_rfc3339(),
                    m.source
                );
            }
        }
        // The push time of the last segment reachable without a gap: WAL
        // written up to then is in the archive.
        let reach_pushed = match w.reachable {
            Some(r) => match repo.read_wal(&b.stream, &reach_name(r)).await {
                Ok(o) => Some(o.pushed),
                // Only in the snapshot: the backup's end.
                Err(coffer_repo::Error::WalNotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        match reach_pushed {
            Some(p) if target <= p => {}
            Some(p) => bail!(
                "recovery target time {} is after the archived WAL: {reach_text}, archived at {}; nothing was \
                 restored",
                target.to_rfc3339(),
                p.to_rfc3339()
            ),
            None => bail!(
                "recovery target time {} cannot be reached: {reach_text}, and no archived segment after the \
                 backup's end; nothing was restored",
                target.to_rfc3339()
            ),
        }
    }
    Ok(())
}

/// A word quoted for `/bin/sh`, which PostgreSQL runs `restore_command` with.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Repository option keys whose values are credentials, which must not be
/// written into a data directory's configuration.
fn secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "key", "token", "password", "credential", "sas"].iter().any(|w| k.contains(w))
}

/// The `restore_command` a point-in-time restore of snapshot `m` writes
/// when the operator gave none: this `coffer` binary fetching from this
/// repository and stream, with the same password file. Returns the command
/// and, when something has to come from the server's environment instead,
/// a warning saying what.
pub fn default_restore_command(g: &Global, m: &SnapshotManifest) -> Result<(String, Option<String>)> {
    let exe = std::env::current_exe().context("finding the coffer binary for restore_command")?;
    let mut words = vec![sh_quote(&exe.to_string_lossy())];
    let mut missing = Vec::new();
    match &g.repo {
        Some(r) => {
            // PostgreSQL runs the command in the data directory: a relative
            // repository path must be made absolute.
            let r = if r.contains("://") {
                r.clone()
            } else {
                std::path::absolute(r).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| r.clone())
            };
            words.push("--repo".into());
            words.push(sh_quote(&r));
        }
        None => missing.push("COFFER_REPO"),
    }
    match &g.password_file {
        Some(f) => {
            let f = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            words.push("--password-file".into());
            words.push(sh_quote(&f.to_string_lossy()));
        }
        None => missing.push("COFFER_PASSWORD_FILE"),
    }
    let mut secret_opts = false;
    for kv in &g.repo_options {
        match kv.split_once('=') {
            Some((k, _)) if secret_option(k) => secret_opts = true,
            _ => {
                words.push("--repo-option".into());
                words.push(sh_quote(kv));
            }
        }
    }
    if let Ok(b) = base_backup(m) {
        words.push("--quiet".into());
        words.extend(["wal".into(), "fetch".into(), "--stream".into(), sh_quote(&b.stream)]);
    } else {
        words.extend(["--quiet".into(), "wal".into(), "fetch".into()]);
    }
    words.extend(["%f".into(), "%p".into()]);
    let mut warn = Vec::new();
    if !missing.is_empty() {
        warn.push(format!("set {} in the PostgreSQL server's environment", missing.join(" and ")));
    }
    if secret_opts {
        warn.push(
            "give the storage credentials to the server's environment (they are not written into the data directory)"
                .to_string(),
        );
    }
    let warning = (!warn.is_empty()).then(|| {
        format!(
            "restore_command for the restored cluster: {}, or pass --set restore_command=... yourself",
            warn.join("; ")
        )
    });
    Ok((words.join(" "), warning))
}

/// Makes a PostgreSQL restore target private (0700), as the server requires
/// of a data directory, creating it if needed.
pub fn private_target(t: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !t.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(t)
            .with_context(|| format!("creating restore target {}", t.display()))?;
    }
    let md = std::fs::metadata(t).with_context(|| format!("restore target {}", t.display()))?;
    if md.is_dir() && md.permissions().mode() & 0o027 != 0 {
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making restore target {} private (0700), as PostgreSQL requires", t.display()))?;
        tracing::info!("made {} private (0700): PostgreSQL refuses a data directory others can read", t.display());
    }
    Ok(())
}

/// What WAL retention did to one stream.
#[derive(Debug, Serialize)]
pub struct RetentionOutcome {
    /// The stream.
    pub stream: String,
    /// WAL from this segment on is kept (`None`: everything is kept).
    pub kept_from: Option<String>,
    /// Files removed (or, in a dry run, that would be).
    pub removed: Vec<String>,
    /// Why nothing was removed, if so.
    pub note: Option<String>,
}

/// WAL retention after `forget`: for each stream, WAL older than the oldest
/// remaining base backup's start segment goes. `forgotten` are snapshots
/// forgotten (or, in a dry run, to be forgotten) that still exist.
pub async fn apply_retention(
    repo: &Repository,
    forgotten: &HashSet<Id>,
    dry_run: bool,
) -> Result<Vec<RetentionOutcome>> {
    let streams = repo.wal_streams().await?;
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let snaps = repo.snapshots().await?;
    // Per stream: the start segments of remaining base backups, and whether
    // one of them could not be read.
    let mut starts: BTreeMap<String, (Vec<WalFile>, Vec<String>)> = BTreeMap::new();
    for (id, m) in snaps.iter().filter(|(id, m)| !forgotten.contains(id) && m.plugin.name == POSTGRES_PLUGIN) {
        let stream = m.attributes.get(attr::WAL_STREAM).cloned().or_else(|| {
            m.attributes.get(attr::SYSTEM_IDENTIFIER).and_then(|s| s.parse::<u64>().ok()).map(stream_for_system)
        });
        let Some(stream) = stream else { continue };
        let slot = starts.entry(stream).or_default();
        match m.attributes.get(attr::START_WAL).and_then(|s| WalFile::parse(s)).filter(WalFile::is_segment) {
            Some(f) => slot.0.push(f),
            None => slot.1.push(id.short()),
        }
    }
    let mut out = Vec::new();
    for stream in streams {
        let mut o = RetentionOutcome { stream: stream.clone(), kept_from: None, removed: vec![], note: None };
        match starts.get(&stream) {
            None => {
                o.note = Some(format!("no base backup of stream {stream} remains: all its WAL is kept"));
            }
            Some((_, unreadable)) if !unreadable.is_empty() => {
                o.note = Some(format!(
                    "base backups {} of stream {stream} name no start segment ({}): all its WAL is kept",
                    unreadable.join(", "),
                    attr::START_WAL
                ));
            }
            Some((files, _)) => {
                let oldest = files.iter().min_by_key(|f| (f.position(), f.timeline())).copied();
                if let Some(f) = oldest {
                    let (log, seg) = f.position().unwrap_or_default();
                    let name = format!("{:08X}{log:08X}{seg:08X}", f.timeline());
                    let r = repo.forget_wal(&stream, &name, dry_run).await?;
                    o.kept_from = Some(name);
                    o.removed = r.removed;
                }
            }
        }
        out.push(o);
    }
    Ok(out)
}

/// Prints retention outcomes: to stdout, or to stderr when stdout carries JSON.
pub fn print_retention(outcomes: &[RetentionOutcome], dry_run: bool, json: bool) {
    for o in outcomes {
        let line = match (&o.note, &o.kept_from) {
            (Some(n), _) => format!("WAL: note: {n}"),
            (None, Some(from)) if o.removed.is_empty() => {
                format!("WAL stream {}: kept from {from}; nothing older to remove", o.stream)
            }
            (None, Some(from)) => format!(
                "WAL stream {}: kept from {from}; {} {} older files ({}..{})",
                o.stream,
                if dry_run { "would remove" } else { "removed" },
                o.removed.len(),
                o.removed.first().map(String::as_str).unwrap_or_default(),
                o.removed.last().map(String::as_str).unwrap_or_default()
            ),
            (None, None) => continue,
        };
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_repo::repofile::wal::{XLP_LONG_HEADER, segment_name};

    const SEG: u64 = 16 * 1024 * 1024;

    fn header(sysid: u64, pageaddr: u64, seg_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; 8192];
        h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        h[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        h[24..32].copy_from_slice(&sysid.to_le_bytes());
        h[32..36].copy_from_slice(&seg_size.to_le_bytes());
        h[36..40].copy_from_slice(&8192u32.to_le_bytes());
        h
    }

    #[test]
    fn push_streams_come_from_the_header_or_pg_control() {
        let none = StreamArgs { stream: None, pgdata: None };
        let name = "000000010000000000000003";
        let file = WalFile::parse(name).unwrap();
        let mut seg = header(42, 3 * SEG, SEG as u32);
        seg.resize(SEG as usize, 0);
        assert_eq!(stream_for_push(&none, name, &file, &seg).unwrap(), "pg-42");
        // A segment whose first page is elsewhere is refused.
        let wrong = WalFile::parse("000000010000000000000004").unwrap();
        let e = stream_for_push(&none, "000000010000000000000004", &wrong, &seg).unwrap_err().to_string();
        assert!(e.contains("is not the WAL segment its name says"), "{e}");
        // A cut segment is refused; a file without a header names what to pass.
        let e = stream_for_push(&none, name, &file, &seg[..8192]).unwrap_err().to_string();
        assert!(e.contains("not a complete WAL segment"), "{e}");
        let e = stream_for_push(&none, name, &file, &seg[..20]).unwrap_err().to_string();
        assert!(e.contains("--stream") && e.contains("--pgdata"), "{e}");
        // History files: pg_control in --pgdata.
        let dir = tempfile::tempdir().unwrap();
        let hist = WalFile::parse("00000002.history").unwrap();
        let args = StreamArgs { stream: None, pgdata: Some(dir.path().to_path_buf()) };
        let e = stream_for_push(&args, "00000002.history", &hist, b"1\t0/3000000\tx\n").unwrap_err().to_string();
        assert!(e.contains("pg_control") && e.contains("--stream"), "{e}");
        std::fs::create_dir_all(dir.path().join("global")).unwrap();
        let mut control = 99u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(dir.path().join("global/pg_control"), control).unwrap();
        assert_eq!(stream_for_push(&args, "00000002.history", &hist, b"").unwrap(), "pg-99");
        let explicit = StreamArgs { stream: Some("main".into()), pgdata: None };
        assert_eq!(stream_for_push(&explicit, "00000002.history", &hist, b"").unwrap(), "main");
        let bad = StreamArgs { stream: Some("a/b".into()), pgdata: None };
        assert!(stream_for_push(&bad, name, &file, &seg).is_err());
    }

    fn cov(gaps: &[(u64, u64)], newest: Option<u64>, from: u64) -> WalCoverage {
        let n = |s: u64| segment_name(1, s, SEG);
        let first_gap = gaps.first().map(|g| g.0);
        WalCoverage {
            stream: "pg-1".into(),
            segment_size: SEG,
            from: n(from),
            timelines: vec![1],
            timeline_begins: vec![0],
            contiguous_to: match (newest, first_gap) {
                (None, _) => None,
                (Some(_), Some(g)) if g == from => None,
                (Some(_), Some(g)) => Some(n(g - 1)),
                (Some(x), None) => Some(n(x)),
            },
            contiguous_pushed: None,
            newest: newest.map(n),
            newest_pushed: None,
            gaps: gaps
                .iter()
                .map(|&(a, b)| coffer_repo::WalGap { first: n(a), last: n(b), segments: b - a + 1 })
                .collect(),
        }
    }

    #[test]
    fn the_snapshot_s_own_wal_fills_the_backup_range_only() {
        let held: HashSet<u64> = [3, 4, 5, 9].into_iter().collect();
        // Archive: 3..=20 except 4..=5 and 9..=10. The snapshot holds 4 and 5
        // (start 3, stop 5): no consistency problem; 9 is after stop, so the
        // snapshot's copy does not count and 9..=10 is a PITR gap.
        let w = backup_wal(&cov(&[(4, 5), (9, 10)], Some(20), 3), 3, Some(5), &held);
        assert_eq!(w.missing_for_consistency, vec![]);
        assert_eq!(w.only_in_snapshot, 2);
        assert_eq!(w.pitr_gaps, vec![(9, 10)]);
        assert_eq!(w.reachable, Some(8));
        // Nothing archived at all: the backup range is covered by the
        // snapshot, PITR reaches its stop.
        let w = backup_wal(&cov(&[], None, 3), 3, Some(5), &held);
        assert_eq!((w.missing_for_consistency.clone(), w.reachable), (vec![], Some(5)));
        // Without the snapshot's copies, the range is a consistency problem.
        let w = backup_wal(&cov(&[], None, 3), 3, Some(5), &HashSet::new());
        assert_eq!(w.missing_for_consistency, vec![(3, 5)]);
        assert_eq!(w.reachable, None);
        // A gap straddling the stop splits in two.
        let w = backup_wal(&cov(&[(5, 7)], Some(12), 3), 3, Some(5), &HashSet::new());
        assert_eq!(w.missing_for_consistency, vec![(5, 5)]);
        assert_eq!(w.pitr_gaps, vec![(6, 7)]);
        assert_eq!(w.reachable, Some(4));
        // All archived.
        let w = backup_wal(&cov(&[], Some(12), 3), 3, Some(5), &HashSet::new());
        assert_eq!((w.pitr_gaps.len(), w.reachable), (0, Some(12)));
    }

    const MIB: u64 = 1 << 20;

    async fn temp_repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let backend = coffer_repo::backend_for(&url, &[]).unwrap();
        let opts = coffer_repo::InitOptions { kdf: coffer_repo::KdfParams::insecure_fast(), ..Default::default() };
        let repo = Repository::init(backend, b"pw", opts).await.unwrap();
        (dir, repo)
    }

    fn name(s: u64) -> String {
        segment_name(1, s, MIB)
    }

    /// A snapshot shaped like the postgres plugin's: attributes and pg_wal/ entries.
    async fn base(repo: &Repository, start: u64, stop: u64, held: &[u64], extra: &[(&str, &str)]) -> Id {
        let w = repo
            .start_snapshot(coffer_repo::SnapshotOptions {
                source: "postgres:db".into(),
                plugin: coffer_repo::PluginIdentity { name: POSTGRES_PLUGIN.into(), ..Default::default() },
                ..Default::default()
            })
            .await
            .unwrap();
        for s in held {
            let meta = coffer_repo::EntryMeta {
                path: format!("pg_wal/{}", name(*s)),
                kind: coffer_repo::EntryKind::File,
                mode: 0o600,
                mtime: 0,
                mtime_nsec: 0,
                target: None,
            };
            let mut e = w.add_entry(meta).unwrap();
            e.write(name(*s).as_bytes()).await.unwrap();
            e.finish().await.unwrap();
        }
        let stop_lsn = Lsn(stop * MIB + 0x100).to_string();
        let mut attrs = vec![
            (attr::SYSTEM_IDENTIFIER, "42".to_string()),
            (attr::START_WAL, name(start)),
            (attr::STOP_WAL, name(stop)),
            (attr::STOP_LSN, stop_lsn),
            (attr::SEGMENT_SIZE, MIB.to_string()),
            ("pg.timeline", "1".to_string()),
        ];
        attrs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        for (k, v) in attrs {
            w.set_attribute(k, &v);
        }
        w.commit().await.unwrap()
    }

    async fn archive(repo: &Repository, segs: &[u64]) {
        for s in segs {
            repo.wal_push("pg-42", &name(*s), Bytes::from(name(*s))).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_names_wal_gaps_and_what_the_snapshot_holds() {
        let (_d, repo) = temp_repo().await;
        // Backup 3..=4, its WAL in pg_wal/; the archive has 3..=6 and 8..=9.
        let id = base(&repo, 3, 4, &[3, 4], &[]).await;
        archive(&repo, &[3, 4, 5, 6, 8, 9]).await;
        let m = repo.read_manifest(&id).await.unwrap();
        let (problems, notes) = verify_archive(&repo, &id, &m).await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, format!("wal:{}", name(7)));
        assert!(problems[0].1.contains("point-in-time recovery") && problems[0].1.contains(&name(6)), "{problems:?}");
        assert!(notes.iter().any(|n| n.contains(&format!("reaches segment {}", name(6)))), "{notes:?}");
        // Segment 4 missing from the archive but in the snapshot: no problem.
        let (_d, repo) = temp_repo().await;
        let id = base(&repo, 3, 5, &[3, 4], &[]).await;
        archive(&repo, &[3, 6]).await;
        let m = repo.read_manifest(&id).await.unwrap();
        let (problems, _) = verify_archive(&repo, &id, &m).await.unwrap();
        // 5 is in neither: the backup cannot be made consistent.
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains(&name(5)) && problems[0].1.contains("consistent"), "{problems:?}");
        // A snapshot without the attributes gets a note, not a failure.
        let w = repo.start_snapshot(coffer_repo::SnapshotOptions { source: "x".into(), ..Default::default() });
        let bare = w.await.unwrap().commit().await.unwrap();
        let m = repo.read_manifest(&bare).await.unwrap();
        let (problems, notes) = verify_archive(&repo, &bare, &m).await.unwrap();
        assert!(problems.is_empty() && notes[0].contains("not checked"), "{notes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_targets_are_checked_against_the_archive() {
        let (_d, repo) = temp_repo().await;
        let stop_time = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let id = base(&repo, 3, 4, &[3, 4], &[(attr::STOP_TIME, &stop_time)]).await;
        archive(&repo, &[3, 4, 5, 6, 8]).await;
        let m = repo.read_manifest(&id).await.unwrap();
        let check = |cfg: serde_json::Value| {
            let repo = repo.clone();
            let m = m.clone();
            async move { check_restore_target(&repo, &id, &m, &cfg).await }
        };
        check(serde_json::json!({})).await.unwrap();
        check(serde_json::json!({"to_xid": "1234"})).await.unwrap();
        check(serde_json::json!({"to_lsn": Lsn(6 * MIB + 5).to_string()})).await.unwrap();
        let e = check(serde_json::json!({"to_lsn": Lsn(3 * MIB).to_string()})).await.unwrap_err().to_string();
        assert!(e.contains("before the end of base backup") && e.contains(&Lsn(4 * MIB + 0x100).to_string()), "{e}");
        assert!(e.contains("older base backup"), "{e}");
        let e = check(serde_json::json!({"to_lsn": Lsn(8 * MIB).to_string()})).await.unwrap_err().to_string();
        assert!(e.contains("beyond the archived WAL") && e.contains(&name(6)), "{e}");
        let e = check(serde_json::json!({"to_lsn": "nonsense"})).await.unwrap_err().to_string();
        assert!(e.contains("not an LSN"), "{e}");
        let now = chrono::Utc::now();
        // Between the backup's end and the push of the last reachable segment.
        check(serde_json::json!({"to_time": (now - chrono::Duration::minutes(30)).to_rfc3339()})).await.unwrap();
        let e = check(serde_json::json!({"to_time": (now - chrono::Duration::hours(2)).to_rfc3339()}))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("before the end of base backup"), "{e}");
        let e = check(serde_json::json!({"to_time": (now + chrono::Duration::hours(1)).to_rfc3339()}))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("after the archived WAL") && e.contains(&name(6)), "{e}");
        let pushed = repo.read_wal("pg-42", &name(6)).await.unwrap().pushed;
        check(serde_json::json!({"to_time": pushed.to_rfc3339()})).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_keeps_wal_from_the_oldest_remaining_base_backup() {
        let (_d, repo) = temp_repo().await;
        let old = base(&repo, 3, 3, &[], &[]).await;
        let _new = base(&repo, 6, 6, &[], &[]).await;
        archive(&repo, &[2, 3, 4, 5, 6, 7]).await;
        repo.wal_push("pg-42", "00000002.history", Bytes::from_static(b"1\t0/8000000\tx\n")).await.unwrap();
        let out = apply_retention(&repo, &HashSet::new(), false).await.unwrap();
        assert_eq!(out[0].removed, vec![name(2)]);
        // As if the older backup were forgotten (dry run): from 6 on.
        let out = apply_retention(&repo, &[old].into_iter().collect(), true).await.unwrap();
        assert_eq!(out[0].kept_from.as_deref(), Some(name(6).as_str()));
        assert_eq!(out[0].removed, vec![name(3), name(4), name(5)]);
        assert_eq!(repo.wal_list("pg-42").await.unwrap().len(), 6, "a dry run removed something");
        // No base backup left: everything stays, with a note.
        let all: HashSet<Id> = repo.snapshots().await.unwrap().into_iter().map(|(i, _)| i).collect();
        let out = apply_retention(&repo, &all, false).await.unwrap();
        assert!(out[0].removed.is_empty() && out[0].note.as_deref().unwrap_or("").contains("all its WAL is kept"));
        // Streams of other clusters are never touched by this one's backups.
        repo.wal_push("pg-7", &name(1), Bytes::from_static(b"x")).await.unwrap();
        let out = apply_retention(&repo, &HashSet::new(), false).await.unwrap();
        let other = out.iter().find(|o| o.stream == "pg-7").unwrap();
        assert!(other.removed.is_empty() && other.note.is_some());
    }
}
