//! The WAL archive as this plugin's stream: `stream_push` (PostgreSQL's
//! `archive_command`) checks one WAL file and appends it; [`coverage`] is
//! what the archive holds from a base backup's start (gaps, timelines
//! followed through history files), which `verify` reports and a
//! point-in-time restore checks its target against.
//!
//! A cluster's files go to the stream `pg-<system identifier>` unless the
//! config names one. An item's key is the WAL file name; its position the
//! LSN where the file starts (a segment's or partial segment's first page,
//! a backup history file's start, the point a history file's timeline
//! begins); history files are pinned. Files archived by coffer before
//! streams (legacy `wal/<stream>/<name>` objects) have no position, so
//! everything here works from the keys.

use std::collections::HashSet;
use std::io::{Read, Write};

use coffer_pgwal::{
    DEFAULT_SEGMENT_SIZE, Lsn, WalFile, control_system_identifier, parse_backup_start, parse_history,
    parse_long_header, parse_time, segment_name, valid_segment_size,
};
use coffer_sdk::{Error, SnapshotReader, StreamReader, StreamSink, Timestamp, VerifyReport, host};

use crate::attr;

/// The stream of a cluster: `pg-<system identifier>`.
pub fn stream_for_system(system_identifier: u64) -> String {
    format!("pg-{system_identifier}")
}

/// Where a pushed file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The stream.
    pub stream: String,
    /// Its position: the LSN where it starts.
    pub position: u64,
    /// History files are pinned: recovery needs every one of them.
    pub pinned: bool,
}

/// What to tell an operator whose file names no cluster.
fn unknown_cluster(name: &str, why: String) -> Error {
    Error::InvalidConfig(format!(
        "cannot tell which cluster {name} belongs to: {why}; pass --stream NAME (pg-<system identifier>) or \
         --pgdata DIR (the cluster's data directory) to `coffer wal push` (`--set stream=NAME` or \
         `--set pgdata_dir=DIR` to `coffer stream push`)"
    ))
}

/// Classifies and checks the WAL file `name` holding `data`: a segment or
/// partial segment by its first page's long header (magic, segment size,
/// system identifier, position), a history file by its text, a backup
/// history file by its start line. `stream` is the configured stream;
/// `control` reads the cluster's system identifier from `pg_control`, for
/// the files that carry none.
pub fn place(
    name: &str,
    data: &[u8],
    stream: Option<&str>,
    control: impl FnOnce() -> Result<u64, String>,
) -> Result<Placement, Error> {
    let file = WalFile::parse_checked(name).map_err(Error::InvalidConfig)?;
    let stream_or = |sysid: Result<u64, String>| -> Result<String, Error> {
        match stream {
            Some(s) => Ok(s.to_string()),
            None => sysid.map(stream_for_system).map_err(|why| unknown_cluster(name, why)),
        }
    };
    match file {
        WalFile::Segment { .. } | WalFile::Partial { .. } => {
            let h = parse_long_header(data)
                .map_err(|why| Error::Corrupt(format!("{name} is not a WAL segment: {why}; it was not archived")))?;
            if h.magic & 0xF000 != 0xD000 {
                return Err(Error::Corrupt(format!(
                    "{name} is not a WAL segment: its first page has magic {:#06x}; it was not archived",
                    h.magic
                )));
            }
            let seg_size = u64::from(h.segment_size);
            if file.is_segment() && data.len() as u64 != seg_size {
                return Err(Error::Corrupt(format!(
                    "{name} has {} bytes, but its first page says segments are {seg_size} bytes: it is not a \
                     complete WAL segment; it was not archived",
                    data.len()
                )));
            }
            let expected = file.segno(seg_size).map(|s| s * seg_size);
            if expected != Some(h.pageaddr) {
                return Err(Error::Corrupt(format!(
                    "{name} is not the WAL segment its name says: its first page is at LSN {}, the name means {}; \
                     it was not archived",
                    Lsn(h.pageaddr),
                    expected.map_or_else(|| "an impossible position".to_string(), |p| Lsn(p).to_string())
                )));
            }
            Ok(Placement { stream: stream_or(Ok(h.system_identifier))?, position: h.pageaddr, pinned: false })
        }
        WalFile::History { .. } => {
            let text = std::str::from_utf8(data)
                .map_err(|_| Error::Corrupt(format!("{name} is not a timeline history file: it is not text")))?;
            let entries = parse_history(text)
                .map_err(|why| Error::Corrupt(format!("{name} is not a timeline history file: {why}")))?;
            let begins = entries.last().map_or(0, |e| e.switch.0);
            Ok(Placement { stream: stream_or(control())?, position: begins, pinned: true })
        }
        WalFile::BackupHistory { .. } => {
            let bad = |why: String| Error::Corrupt(format!("{name} is not a backup history file: {why}"));
            let text = std::str::from_utf8(data).map_err(|_| bad("it is not text".into()))?;
            let (start, segment) = parse_backup_start(text).map_err(bad)?;
            if !name.starts_with(&segment) {
                return Err(bad(format!("it says the backup started in {segment}")));
            }
            Ok(Placement { stream: stream_or(control())?, position: start.0, pinned: false })
        }
    }
}

/// `stream_push`: archives the WAL file at host path `file`. `pgdata` is
/// the cluster's data directory, for `global/pg_control`; without it the
/// directory above `pg_wal/` is tried.
pub fn push(stream: Option<&str>, pgdata: Option<&str>, file: &str, sink: &StreamSink) -> Result<(), Error> {
    let name = file.rsplit('/').next().unwrap_or(file);
    let data = std::fs::read(file).map_err(|e| Error::from(e).context(file))?;
    let control = || {
        let dir = match pgdata {
            Some(d) => d.trim_end_matches('/').to_string(),
            None => match file.rsplit_once('/') {
                Some((dir, _)) if dir == "pg_wal" || dir.ends_with("/pg_wal") => {
                    format!("{}.", dir.strip_suffix("pg_wal").unwrap_or(dir))
                }
                _ => return Err("no data directory was given".to_string()),
            },
        };
        let path = format!("{dir}/global/pg_control");
        let data = std::fs::read(&path).map_err(|e| format!("{path}: {}", Error::from(e)))?;
        control_system_identifier(&data).map_err(|e| format!("{path}: {e}"))
    };
    let p = place(name, &data, stream, control)?;
    let refused = |e: Error| match e {
        Error::Other(m) if m.contains("never replaced") => Error::Other(format!(
            "WAL file {name}: the archive already holds a different file under that name in stream {} ({m}); an \
             archived WAL file is never overwritten. If two clusters share this stream, give each its own \
             (--stream); if this cluster was restored and diverged, it must be on a new timeline",
            p.stream
        )),
        e => e,
    };
    let mut w = sink.append(&p.stream, name, p.position, p.pinned).map_err(refused)?;
    w.write_all(&data).map_err(|e| Error::from(e).context(name))?;
    w.finish().map_err(refused)?;
    host::debug(format!("archived {name} in stream {} at {}", p.stream, Lsn(p.position)));
    Ok(())
}

// ---------------------------------------------------------------------------
// A base backup's WAL

/// A segment's name with its (timeline, segment number).
pub type NamedSegment = (String, (u32, u64));

/// The WAL facts of a base backup, from its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackup {
    /// The WAL stream.
    pub stream: String,
    /// Segment size.
    pub segment_size: u64,
    /// Start segment name.
    pub start: String,
    /// (timeline, segment number) of the start.
    pub start_at: (u32, u64),
    /// Stop segment name and (timeline, segment number), when known.
    pub stop: Option<NamedSegment>,
}

impl BaseBackup {
    /// Reads a base backup's WAL attributes; `Err` says what is missing.
    /// `get` gives an attribute's value.
    pub fn from_attributes(get: impl Fn(&str) -> Option<String>) -> Result<BaseBackup, String> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let segment_size = match get(attr::SEGMENT_SIZE) {
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|s| valid_segment_size(*s))
                .ok_or_else(|| format!("attribute {} = {v:?} is not a WAL segment size", attr::SEGMENT_SIZE))?,
            None => DEFAULT_SEGMENT_SIZE,
        };
        let stream = match (get(attr::WAL_STREAM), get(attr::SYSTEM_IDENTIFIER)) {
            (Some(s), _) => s,
            (None, Some(id)) => stream_for_system(
                id.parse::<u64>()
                    .map_err(|_| format!("attribute {} = {id:?} is not a number", attr::SYSTEM_IDENTIFIER))?,
            ),
            (None, None) => return Err(format!("it has no {} attribute", attr::SYSTEM_IDENTIFIER)),
        };
        let seg = |k: &str| -> Result<Option<NamedSegment>, String> {
            let Some(v) = get(k) else { return Ok(None) };
            let f = WalFile::parse(&v).filter(WalFile::is_segment);
            let at = f.and_then(|f| Some((f.timeline(), f.segno(segment_size)?)));
            at.map(|at| Some((v.clone(), at))).ok_or_else(|| format!("attribute {k} = {v:?} is not a segment name"))
        };
        let (start, start_at) =
            seg(attr::START_WAL)?.ok_or_else(|| format!("it has no {} attribute", attr::START_WAL))?;
        let stop = seg(attr::STOP_WAL)?;
        Ok(BaseBackup { stream, segment_size, start, start_at, stop })
    }

    /// A snapshot's base backup facts.
    pub fn of(snapshot: &SnapshotReader) -> Result<BaseBackup, String> {
        let attrs = snapshot.attributes();
        BaseBackup::from_attributes(|k| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()))
    }

    fn stop_segno(&self) -> Option<u64> {
        self.stop.as_ref().map(|(_, (_, s))| *s)
    }
}

// ---------------------------------------------------------------------------
// Coverage

/// What the archive holds of one stream from a starting segment on,
/// following the timeline PostgreSQL's recovery would follow (the newest
/// archived timeline whose history descends from the start's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The stream.
    pub stream: String,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// The timelines followed, oldest first.
    pub timelines: Vec<u32>,
    /// The segment number each of `timelines` begins at (0 for the first).
    pub timeline_begins: Vec<u64>,
    /// The last segment number of the unbroken run from the start; `None`
    /// when the start itself is missing.
    pub contiguous_to: Option<u64>,
    /// When the segment at `contiguous_to` was archived.
    pub contiguous_pushed: Option<Timestamp>,
    /// The newest archived segment number on the timelines followed.
    pub newest: Option<u64>,
    /// Missing runs of segment numbers between the start and `newest`.
    pub gaps: Vec<(u64, u64)>,
}

impl Coverage {
    /// The timeline recovery reads segment number `segno` from.
    pub fn timeline_at(&self, segno: u64) -> u32 {
        let first = self.timelines.first().copied().unwrap_or(1);
        self.timelines.iter().zip(&self.timeline_begins).rev().find(|(_, b)| **b <= segno).map_or(first, |(t, _)| *t)
    }

    /// The name of segment number `segno` on the timeline recovery reads it from.
    pub fn segment_name(&self, segno: u64) -> String {
        segment_name(self.timeline_at(segno), segno, self.segment_size)
    }
}

/// The coverage of the archived `files` from segment `start` = (timeline,
/// segment number) on; `history` reads a timeline's history file.
pub fn coverage_of(
    stream: &str,
    files: &[WalFile],
    segment_size: u64,
    start: (u32, u64),
    mut history: impl FnMut(u32) -> Result<String, Error>,
) -> Result<Coverage, Error> {
    let (tli0, start_segno) = start;
    // The timeline chain: (timeline, first segment number on it).
    let mut chain: Vec<(u32, u64)> = vec![(tli0, 0)];
    let mut histories: Vec<u32> = files
        .iter()
        .filter_map(|f| match *f {
            WalFile::History { timeline } if timeline > tli0 => Some(timeline),
            _ => None,
        })
        .collect();
    histories.sort_unstable_by(|a, b| b.cmp(a));
    histories.dedup();
    for t in histories {
        let text = history(t)?;
        let entries = parse_history(&text).map_err(|e| Error::Corrupt(format!("{t:08X}.history in {stream}: {e}")))?;
        // It must leave the start's timeline at or after the start: a
        // timeline that forked off earlier never held it.
        if !entries.iter().any(|e| e.parent == tli0 && e.switch.segno(segment_size) >= start_segno) {
            continue;
        }
        chain.clear();
        let mut begin = 0;
        for e in entries.iter().filter(|e| e.parent >= tli0) {
            chain.push((e.parent, begin));
            begin = e.switch.segno(segment_size);
        }
        chain.push((t, begin));
        break;
    }
    let expected_tli = |segno: u64| chain.iter().rev().find(|(_, b)| *b <= segno).map_or(tli0, |(t, _)| *t);
    let mut present: Vec<u64> = files
        .iter()
        .filter(|f| f.is_segment())
        .filter_map(|f| Some((f.timeline(), f.segno(segment_size)?)))
        .filter(|&(t, s)| s >= start_segno && expected_tli(s) == t)
        .map(|(_, s)| s)
        .collect();
    present.sort_unstable();
    present.dedup();
    let mut gaps = Vec::new();
    let mut prev: Option<u64> = None;
    for &s in &present {
        let expected = prev.map_or(start_segno, |p| p + 1);
        if s > expected {
            gaps.push((expected, s - 1));
        }
        prev = Some(s);
    }
    let contiguous_to = (present.first() == Some(&start_segno)).then(|| {
        let mut end = start_segno;
        for &s in &present[1..] {
            if s != end + 1 {
                break;
            }
            end = s;
        }
        end
    });
    Ok(Coverage {
        stream: stream.to_string(),
        segment_size,
        timelines: chain.iter().map(|(t, _)| *t).collect(),
        timeline_begins: chain.iter().map(|(_, b)| *b).collect(),
        contiguous_to,
        contiguous_pushed: None,
        newest: present.last().copied(),
        gaps,
    })
}

/// Reads a whole item (a history file) of `stream`.
fn read_item(reader: &StreamReader, stream: &str, key: &str) -> Result<String, Error> {
    let mut text = String::new();
    reader.open(stream, key)?.read_to_string(&mut text).map_err(|e| Error::from(e).context(key))?;
    Ok(text)
}

/// The coverage of a base backup's stream from its start, read through
/// `reader`, with the time the end of the unbroken run was archived.
pub fn coverage(reader: &StreamReader, b: &BaseBackup) -> Result<Coverage, Error> {
    let mut files = Vec::new();
    for item in reader.items(&b.stream, None) {
        if let Some(f) = WalFile::parse(&item?.key) {
            files.push(f);
        }
    }
    let mut c = coverage_of(&b.stream, &files, b.segment_size, b.start_at, |t| {
        read_item(reader, &b.stream, &format!("{t:08X}.history"))
    })?;
    if let Some(end) = c.contiguous_to {
        c.contiguous_pushed = reader.stat(&b.stream, &c.segment_name(end))?.map(|i| i.pushed);
    }
    Ok(c)
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
pub fn backup_wal(cov: &Coverage, start: u64, stop: Option<u64>, in_snapshot: &HashSet<u64>) -> BackupWal {
    let stop_or_start = stop.unwrap_or(start);
    let held = |s: u64| s <= stop_or_start && s >= start && in_snapshot.contains(&s);
    let mut gaps = cov.gaps.clone();
    // Segments from start to stop that no archive gap reports because
    // nothing at all was archived at or after them.
    let archive_end = cov.newest.map_or(start.checked_sub(1), Some);
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
    let top = cov.newest.map_or(stop_or_start, |n| n.max(stop_or_start));
    r.reachable = match first_hole {
        Some(h) if h <= start => None,
        Some(h) => Some(h - 1),
        None => Some(top),
    };
    r
}

/// The segment numbers of the `pg_wal/<segment>` entries of a snapshot.
pub fn snapshot_segments(snapshot: &SnapshotReader, segment_size: u64) -> HashSet<u64> {
    snapshot
        .entries()
        .filter(|e| e.kind == coffer_sdk::EntryKind::File)
        .filter_map(|e| {
            let name = e.path.strip_prefix("pg_wal/")?;
            WalFile::parse(name).filter(WalFile::is_segment)?.segno(segment_size)
        })
        .collect()
}

fn utc(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanoseconds).unwrap_or_default()
}

fn utc_text(t: Timestamp) -> String {
    utc(t).format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `verify`'s archive findings: what the snapshot's base backup needs of
/// the archive to be restored (its start to its stop) and how far
/// point-in-time recovery from it reaches (gaps after the stop, timelines).
pub fn verify(snapshot: &SnapshotReader, report: &mut VerifyReport) -> Result<(), Error> {
    let b = match BaseBackup::of(snapshot) {
        Ok(b) => b,
        Err(why) => {
            report.note(format!("the WAL archive was not checked: {why}"));
            return Ok(());
        }
    };
    let cov = coverage(&snapshot.streams(), &b)?;
    let held = snapshot_segments(snapshot, b.segment_size);
    let w = backup_wal(&cov, b.start_at.1, b.stop_segno(), &held);
    let name = |s: u64| cov.segment_name(s);
    let range = |(x, y): (u64, u64)| if x == y { name(x) } else { format!("{}..{}", name(x), name(y)) };
    for r in &w.missing_for_consistency {
        report.problem(
            format!("wal:{}", name(r.0)),
            format!(
                "WAL {} is needed to make this base backup consistent ({}..{}) and is neither in the archive \
                 (stream {}) nor in the snapshot's pg_wal/: the backup cannot be restored",
                range(*r),
                b.start,
                b.stop.as_ref().map_or(b.start.as_str(), |(n, _)| n.as_str()),
                b.stream
            ),
        );
    }
    for &(x, y) in &w.pitr_gaps {
        report.problem(
            format!("wal:{}", name(x)),
            format!(
                "WAL {} is missing from the archive (stream {}): point-in-time recovery from this backup \
                 cannot go past {}; the backup itself still restores",
                range((x, y)),
                b.stream,
                x.checked_sub(1).map_or_else(|| "its start".to_string(), name)
            ),
        );
    }
    if w.only_in_snapshot > 0 {
        report.note(format!(
            "{} WAL segments of the backup's own range are only in the snapshot's pg_wal/, not in the archive",
            w.only_in_snapshot
        ));
    }
    match w.reachable {
        Some(r) => report.note(format!(
            "point-in-time recovery from this backup reaches segment {}{}{} (timelines {})",
            name(r),
            match (cov.contiguous_to, cov.contiguous_pushed) {
                (Some(c), Some(t)) if c == r => format!(" (archived {})", utc_text(t)),
                _ => String::new(),
            },
            match cov.newest {
                Some(n) if n != r => format!("; the newest archived segment is {}", name(n)),
                _ => String::new(),
            },
            cov.timelines.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        )),
        None => report.note(format!("the archive holds no WAL of this backup (stream {})", b.stream)),
    }
    Ok(())
}

/// The longest stored copy of the segment after `reachable` (a follower
/// stores the segment it is receiving as `<segment>.partial.<length>`
/// items): the WAL position it ends at and when it was stored. A restore
/// command falls back to it for that segment, so recovery reaches its end.
pub fn partial_after(
    reader: &StreamReader,
    b: &BaseBackup,
    cov: &Coverage,
    reachable: u64,
) -> Result<Option<(u64, chrono::DateTime<chrono::Utc>)>, Error> {
    let next = reachable + 1;
    let prefix = format!("{}.partial.", cov.segment_name(next));
    let mut best: Option<(u64, String)> = None;
    for item in reader.items(&b.stream, Some(next * b.segment_size)) {
        let item = item?;
        let Some(len) = item.key.strip_prefix(&prefix).and_then(|l| u64::from_str_radix(l, 16).ok()) else {
            if item.position.is_some_and(|p| p > (next + 1) * b.segment_size) {
                break;
            }
            continue;
        };
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, item.key));
        }
    }
    let Some((len, key)) = best else { return Ok(None) };
    let pushed = reader.stat(&b.stream, &key)?.map(|i| utc(i.pushed));
    Ok(pushed.map(|p| (next * b.segment_size + len, p)))
}

/// Checks a point-in-time restore target (`to_lsn`, `to_time`; `to_xid`
/// cannot be checked) against the archive before anything is written.
pub fn check_target(
    snapshot: &SnapshotReader,
    b: &BaseBackup,
    to_lsn: Option<&str>,
    to_time: Option<&str>,
) -> Result<(), Error> {
    if to_lsn.is_none() && to_time.is_none() {
        return Ok(());
    }
    let snap: String = snapshot.id().chars().take(12).collect();
    let reader = snapshot.streams();
    let cov = coverage(&reader, b)?;
    let held = snapshot_segments(snapshot, b.segment_size);
    let w = backup_wal(&cov, b.start_at.1, b.stop_segno(), &held);
    let reach_text = match w.reachable {
        Some(r) => format!(
            "the archive (stream {}) holds WAL without a gap from {} to {}",
            b.stream,
            b.start,
            cov.segment_name(r)
        ),
        None => format!("the archive (stream {}) holds no WAL from the backup's start {}", b.stream, b.start),
    };
    let older = "choose an older base backup (`coffer snapshots`)";
    if let Some(l) = to_lsn {
        let target = Lsn::parse(l).map_err(|e| Error::InvalidConfig(format!("to_lsn: {e}")))?;
        if let Some(stop) = snapshot.attribute(attr::STOP_LSN) {
            let stop = Lsn::parse(&stop)
                .map_err(|e| Error::Corrupt(format!("snapshot {snap}: attribute {}: {e}", attr::STOP_LSN)))?;
            if target < stop {
                return Err(Error::InvalidConfig(format!(
                    "recovery target LSN {target} is before the end of base backup {snap} (LSN {stop}): a restore \
                     cannot stop before the backup is consistent; {older}"
                )));
            }
        }
        let seg = target.segno(b.segment_size);
        let in_partial = match w.reachable {
            Some(r) if seg == r + 1 => partial_after(&reader, b, &cov, r)?.is_some_and(|(end, _)| target.0 <= end),
            _ => false,
        };
        if !in_partial && w.reachable.is_none_or(|r| seg > r) {
            return Err(Error::InvalidConfig(format!(
                "recovery target LSN {target} lies in segment {}, beyond the archived WAL: {reach_text}; nothing was \
                 restored",
                cov.segment_name(seg)
            )));
        }
    }
    if let Some(t) = to_time {
        let target = parse_time(t).map_err(|e| Error::InvalidConfig(format!("to_time: {e}")))?;
        if let Some(stop) = snapshot.attribute(attr::STOP_TIME) {
            let stop = parse_time(&stop)
                .map_err(|e| Error::Corrupt(format!("snapshot {snap}: attribute {}: {e}", attr::STOP_TIME)))?;
            if target < stop {
                return Err(Error::InvalidConfig(format!(
                    "recovery target time {} is before the end of base backup {snap} ({}): a restore cannot stop \
                     before the backup is consistent; {older}",
                    target.to_rfc3339(),
                    stop.to_rfc3339()
                )));
            }
        }
        // When the last segment reachable without a gap was archived: WAL
        // written up to then is in the archive. One held only by the
        // snapshot has no archive time.
        let reach_pushed = match w.reachable {
            Some(r) => {
                let whole = reader.stat(&b.stream, &cov.segment_name(r))?.map(|i| utc(i.pushed));
                let partial = partial_after(&reader, b, &cov, r)?.map(|(_, t)| t);
                whole.max(partial)
            }
            None => None,
        };
        match reach_pushed {
            Some(p) if target <= p => {}
            Some(p) => {
                return Err(Error::InvalidConfig(format!(
                    "recovery target time {} is after the archived WAL: {reach_text}, archived at {}; nothing was \
                     restored",
                    target.to_rfc3339(),
                    p.to_rfc3339()
                )));
            }
            None => {
                return Err(Error::InvalidConfig(format!(
                    "recovery target time {} cannot be reached: {reach_text}, and no archived segment after the \
                     backup's end; nothing was restored",
                    target.to_rfc3339()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    fn header(sysid: u64, pageaddr: u64, seg_size: u32) -> Vec<u8> {
        let mut h = vec![0u8; 8192];
        h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        h[2..4].copy_from_slice(&coffer_pgwal::XLP_LONG_HEADER.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&pageaddr.to_le_bytes());
        h[24..32].copy_from_slice(&sysid.to_le_bytes());
        h[32..36].copy_from_slice(&seg_size.to_le_bytes());
        h[36..40].copy_from_slice(&8192u32.to_le_bytes());
        h
    }

    fn no_control() -> Result<u64, String> {
        Err("no pg_control here".into())
    }

    #[test]
    fn files_are_placed_by_their_header_or_pg_control() {
        let name = "000000010000000000000003";
        let mut seg = header(42, 3 * SEG, SEG as u32);
        seg.resize(SEG as usize, 0);
        let p = place(name, &seg, None, no_control).unwrap();
        assert_eq!(p, Placement { stream: "pg-42".into(), position: 3 * SEG, pinned: false });
        // A segment whose first page is elsewhere is refused.
        let e = place("000000010000000000000004", &seg, None, no_control).unwrap_err().to_string();
        assert!(e.contains("is not the WAL segment its name says"), "{e}");
        // A cut segment is refused; so is one without a header.
        let e = place(name, &seg[..8192], None, no_control).unwrap_err().to_string();
        assert!(e.contains("not a complete WAL segment"), "{e}");
        let e = place(name, &seg[..20], Some("main"), no_control).unwrap_err().to_string();
        assert!(e.contains("is not a WAL segment"), "{e}");
        // A partial segment: its header, any length.
        let p = place("000000010000000000000003.partial", &seg[..9000], None, no_control).unwrap();
        assert_eq!(p.position, 3 * SEG);
        // History files: pg_control, pinned at the timeline's start.
        let hist = b"1\t0/3000000\tno recovery target specified\n";
        let e = place("00000002.history", hist, None, no_control).unwrap_err().to_string();
        assert!(e.contains("pg_control") && e.contains("--stream") && e.contains("--pgdata"), "{e}");
        let p = place("00000002.history", hist, None, || Ok(99)).unwrap();
        assert_eq!(p, Placement { stream: "pg-99".into(), position: 0x300_0000, pinned: true });
        assert!(place("00000002.history", b"nonsense", None, || Ok(99)).is_err());
        assert_eq!(place("00000002.history", hist, Some("main"), no_control).unwrap().stream, "main");
        // Backup history files: at their start.
        let text = b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n";
        let p = place("000000010000000000000003.00000028.backup", text, None, || Ok(7)).unwrap();
        assert_eq!(p, Placement { stream: "pg-7".into(), position: 0x300_0028, pinned: false });
        assert!(place("000000010000000000000004.00000028.backup", text, None, || Ok(7)).is_err());
        // Names that are not WAL files.
        assert!(place("RECOVERYXLOG", &seg, None, no_control).is_err());
    }

    fn seg_file(s: u64) -> WalFile {
        WalFile::parse(&segment_name(1, s, SEG)).unwrap()
    }

    fn cov(files: &[u64], from: u64) -> Coverage {
        let files: Vec<WalFile> = files.iter().map(|s| seg_file(*s)).collect();
        coverage_of("pg-1", &files, SEG, (1, from), |_| unreachable!()).unwrap()
    }

    #[test]
    fn coverage_names_gaps_and_follows_timelines() {
        let c = cov(&[2, 3, 4, 6, 7, 9], 2);
        assert_eq!((c.contiguous_to, c.newest), (Some(4), Some(9)));
        assert_eq!(c.gaps, vec![(5, 5), (8, 8)]);
        let c = cov(&[3, 4], 2);
        assert_eq!((c.contiguous_to, c.gaps.clone()), (None, vec![(2, 2)]));
        // Timeline 2 forks at segment 5: recovery reads 5.. from timeline 2.
        let mut files: Vec<WalFile> = [2, 3, 4, 5, 6].iter().map(|s| seg_file(*s)).collect();
        files.push(WalFile::parse("00000002.history").unwrap());
        files.push(WalFile::parse(&segment_name(2, 5, SEG)).unwrap());
        files.push(WalFile::parse(&segment_name(2, 6, SEG)).unwrap());
        files.push(WalFile::parse(&segment_name(2, 8, SEG)).unwrap());
        let c = coverage_of("pg-1", &files, SEG, (1, 2), |t| {
            assert_eq!(t, 2);
            Ok(format!("1\t{}\tx\n", Lsn(5 * SEG + 100)))
        })
        .unwrap();
        assert_eq!(c.timelines, vec![1, 2]);
        assert_eq!(c.timeline_begins, vec![0, 5]);
        assert_eq!((c.contiguous_to, c.newest, c.gaps.clone()), (Some(6), Some(8), vec![(7, 7)]));
        assert_eq!(c.segment_name(7), segment_name(2, 7, SEG));
        assert_eq!(c.segment_name(3), segment_name(1, 3, SEG));
        // A timeline that forked before the start is not followed.
        let c = coverage_of("pg-1", &files, SEG, (1, 6), |_| Ok(format!("1\t{}\tx\n", Lsn(5 * SEG)))).unwrap();
        assert_eq!(c.timelines, vec![1]);
    }

    fn gapped(gaps: &[(u64, u64)], newest: Option<u64>) -> Coverage {
        Coverage {
            stream: "pg-1".into(),
            segment_size: SEG,
            timelines: vec![1],
            timeline_begins: vec![0],
            contiguous_to: None,
            contiguous_pushed: None,
            newest,
            gaps: gaps.to_vec(),
        }
    }

    #[test]
    fn the_snapshot_s_own_wal_fills_the_backup_range_only() {
        let held: HashSet<u64> = [3, 4, 5, 9].into_iter().collect();
        let w = backup_wal(&gapped(&[(4, 5), (9, 10)], Some(20)), 3, Some(5), &held);
        assert_eq!(w.missing_for_consistency, vec![]);
        assert_eq!(w.only_in_snapshot, 2);
        assert_eq!(w.pitr_gaps, vec![(9, 10)]);
        assert_eq!(w.reachable, Some(8));
        let w = backup_wal(&gapped(&[], None), 3, Some(5), &held);
        assert_eq!((w.missing_for_consistency.clone(), w.reachable), (vec![], Some(5)));
        let w = backup_wal(&gapped(&[], None), 3, Some(5), &HashSet::new());
        assert_eq!(w.missing_for_consistency, vec![(3, 5)]);
        assert_eq!(w.reachable, None);
        let w = backup_wal(&gapped(&[(5, 7)], Some(12)), 3, Some(5), &HashSet::new());
        assert_eq!(w.missing_for_consistency, vec![(5, 5)]);
        assert_eq!(w.pitr_gaps, vec![(6, 7)]);
        assert_eq!(w.reachable, Some(4));
        let w = backup_wal(&gapped(&[], Some(12)), 3, Some(5), &HashSet::new());
        assert_eq!((w.pitr_gaps.len(), w.reachable), (0, Some(12)));
    }

    #[test]
    fn base_backup_facts_come_from_the_attributes() {
        let attrs = [
            (attr::SYSTEM_IDENTIFIER, "42"),
            (attr::START_WAL, "000000010000000000000007"),
            (attr::STOP_WAL, "000000010000000000000008"),
            (attr::SEGMENT_SIZE, "1048576"),
        ];
        let get = |k: &str| attrs.iter().find(|(a, _)| *a == k).map(|(_, v)| v.to_string());
        let b = BaseBackup::from_attributes(get).unwrap();
        assert_eq!(
            (b.stream.as_str(), b.segment_size, b.start_at, b.stop_segno()),
            ("pg-42", 1 << 20, (1, 7), Some(8))
        );
        let e = BaseBackup::from_attributes(|_| None).unwrap_err();
        assert!(e.contains(attr::SYSTEM_IDENTIFIER), "{e}");
    }
}
