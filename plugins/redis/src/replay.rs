//! Point-in-time restore and stream verification: an RDB (the snapshot's
//! own `dump.rdb`, or a follower's `rdb-<o>` item if one is nearer the
//! target) plus the followed commands after it, up to a chosen offset.
//!
//! `coffer restore SNAP --set to_offset=N --target DIR` writes a Redis 7
//! multi-part AOF directory (`appendonlydir/`: the RDB as base, the
//! commands as one incremental file, the manifest) that `redis-server
//! --appendonly yes --dir DIR` loads; with `--set url=...` instead, the RDB
//! is restored key by key and the commands are sent after it. Either way
//! the commands replayed are those that end at or before offset `N`, a
//! transaction (`MULTI` ... `EXEC`) whole or not at all, and without the
//! link's own traffic (`PING`, `REPLCONF`).

use std::io::{Read, Write};

use coffer_sdk::{Error, SnapshotReader, StreamReader, VerifyReport, host};

use crate::ToOffset;
use crate::repl::{self, Command, ItemKind};

/// A stored command item.
#[derive(Debug, Clone)]
pub struct CmdItem {
    /// Its key.
    pub key: String,
    /// Offset of its first byte.
    pub start: u64,
    /// Offset of its last byte (its position).
    pub end: u64,
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The snapshot's `dump.rdb`.
    Snapshot,
    /// The stream's RDB item of this key.
    Item(String),
}

/// What a replay will read.
#[derive(Debug)]
pub struct Plan {
    /// The stream.
    pub stream: String,
    /// The RDB to start from, and its offset.
    pub base: Base,
    /// The base's offset.
    pub base_offset: u64,
    /// The items holding the commands after the base, in order.
    pub items: Vec<CmdItem>,
    /// Replay the commands that end at or before this offset.
    pub to: u64,
}

/// The snapshot's replication ID and offset, recorded by an RDB backup.
pub fn snapshot_position(snapshot: &SnapshotReader) -> Option<(String, u64)> {
    let id = snapshot.attribute("redis.replid").filter(|id| repl::is_replid(id))?;
    let off = snapshot.attribute("redis.repl-offset")?.parse().ok()?;
    Some((id, off))
}

/// A stream's RDB items (offset, key) and command items.
type StreamItems = (Vec<(u64, String)>, Vec<CmdItem>);

/// The RDB and command items of `stream`, each sorted by offset.
fn stream_items(reader: &StreamReader, stream: &str) -> Result<StreamItems, Error> {
    let (mut rdbs, mut cmds) = (Vec::new(), Vec::new());
    for item in reader.items(stream, None) {
        let item = item?;
        match (repl::parse_key(&item.key), item.position) {
            (Some(ItemKind::Rdb(o)), Some(p)) if p == o => rdbs.push((o, item.key)),
            (Some(ItemKind::Cmd(s)), Some(e)) if e >= s => cmds.push(CmdItem { key: item.key, start: s, end: e }),
            _ => {
                return Err(Error::Corrupt(format!(
                    "stream {stream}: item {} at position {:?} is not one the redis plugin writes",
                    item.key, item.position
                )));
            }
        }
    }
    rdbs.sort();
    cmds.sort_by_key(|c| c.start);
    Ok((rdbs, cmds))
}

/// Works out the base and the items for a replay of `snapshot`'s stream
/// to `to`.
pub fn plan(snapshot: &SnapshotReader, to: ToOffset) -> Result<Plan, Error> {
    let Some((replid, snap_offset)) = snapshot_position(snapshot) else {
        return Err(Error::Unsupported(format!(
            "snapshot {} records no replication offset (an AOF backup, a server without PSYNC, or a backup by an \
             older coffer): to_offset needs an RDB backup whose replication ID a follower's stream has",
            snapshot.id()
        )));
    };
    let stream = repl::stream_name(&replid);
    let reader = snapshot.streams();
    let (rdbs, cmds) = stream_items(&reader, &stream)?;
    if rdbs.is_empty() && cmds.is_empty() {
        return Err(Error::Other(format!(
            "the stream {stream} holds nothing: follow the server (`coffer stream follow --plugin redis --set url=...`) \
             to keep its commands"
        )));
    }
    let limit = match to {
        ToOffset::At(n) => n,
        ToOffset::Latest => u64::MAX,
    };
    // The nearest RDB at or before the target: the snapshot's, or one of
    // the follower's.
    let mut base = (snap_offset <= limit).then_some((snap_offset, Base::Snapshot));
    for (o, key) in &rdbs {
        if *o <= limit && base.as_ref().is_none_or(|(b, _)| o > b) {
            base = Some((*o, Base::Item(key.clone())));
        }
    }
    let Some((base_offset, base)) = base else {
        return Err(Error::Other(format!(
            "offset {limit} is before snapshot {} (offset {snap_offset} of {replid}) and before every RDB the \
             stream {stream} holds: restore an older snapshot",
            snapshot.id()
        )));
    };
    // The commands after the base, without a gap.
    let mut items = Vec::new();
    let mut covered = base_offset;
    for c in cmds.into_iter().filter(|c| c.end > base_offset) {
        if covered >= limit {
            break;
        }
        if c.start > covered + 1 {
            break;
        }
        if c.start <= covered && !items.is_empty() {
            return Err(Error::Corrupt(format!("stream {stream}: items overlap at {} (offset {})", c.key, c.start)));
        }
        covered = c.end;
        items.push(c);
    }
    let to = match to {
        ToOffset::Latest => covered,
        ToOffset::At(n) if n > covered => {
            return Err(Error::Other(format!(
                "the stream {stream} holds the commands after offset {base_offset} up to offset {covered} only; \
                 {n} is past them{}",
                if covered == base_offset { String::new() } else { format!(" (restore to at most {covered})") }
            )));
        }
        ToOffset::At(n) => n,
    };
    Ok(Plan { stream, base, base_offset, items, to })
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Replayed {
    /// Commands given to the output (link traffic left out).
    pub commands: u64,
    /// The offset after the last command given (a transaction cut off by
    /// the target is left out whole).
    pub reached: u64,
}

/// Reads `plan`'s items in order and hands every command to replay to
/// `out`, as raw RESP bytes.
pub fn replay(
    reader: &StreamReader,
    plan: &Plan,
    mut out: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<Replayed, Error> {
    let mut done = Replayed { commands: 0, reached: plan.base_offset };
    // A transaction is held back until its EXEC.
    let mut multi: Option<Vec<u8>> = None;
    let mut multi_commands = 0u64;
    let mut buf = Vec::new();
    'items: for item in &plan.items {
        host::check_cancelled()?;
        buf.clear();
        reader.open(&plan.stream, &item.key)?.read_to_end(&mut buf).map_err(|e| Error::from(e).context(&item.key))?;
        if item.start + buf.len() as u64 != item.end + 1 {
            return Err(Error::Corrupt(format!(
                "{}/{}: {} bytes, its position says {}",
                plan.stream,
                item.key,
                buf.len(),
                item.end + 1 - item.start
            )));
        }
        let cmds = repl::commands(&buf).map_err(|e| Error::Corrupt(format!("{}/{}: {e}", plan.stream, item.key)))?;
        // Where the base falls inside the first item: it must be a boundary.
        let skip = (plan.base_offset + 1).saturating_sub(item.start) as usize;
        if skip > 0 && !cmds.iter().any(|(at, _, _)| *at == skip) && skip != buf.len() {
            return Err(Error::Corrupt(format!(
                "{}/{}: offset {} (the base's) is not a command boundary",
                plan.stream, item.key, plan.base_offset
            )));
        }
        for (at, len, cmd) in cmds.into_iter().filter(|(at, _, _)| *at >= skip) {
            let end = item.start + (at + len) as u64 - 1;
            if end > plan.to {
                break 'items;
            }
            let bytes = &buf[at..at + len];
            if cmd.is_link_traffic() {
                if multi.is_none() {
                    done.reached = end;
                }
                continue;
            }
            match (&mut multi, cmd) {
                (None, Command::Multi) => {
                    multi = Some(bytes.to_vec());
                    multi_commands = 1;
                }
                (Some(t), Command::Exec) => {
                    t.extend_from_slice(bytes);
                    out(t)?;
                    done.commands += multi_commands + 1;
                    done.reached = end;
                    multi = None;
                }
                (Some(t), _) => {
                    t.extend_from_slice(bytes);
                    multi_commands += 1;
                }
                (None, _) => {
                    out(bytes)?;
                    done.commands += 1;
                    done.reached = end;
                }
            }
        }
    }
    Ok(done)
}

/// Opens the plan's base RDB.
pub fn open_base(snapshot: &SnapshotReader, plan: &Plan) -> Result<coffer_sdk::EntryReader, Error> {
    match &plan.base {
        Base::Snapshot => snapshot.open(crate::RDB_ENTRY),
        Base::Item(key) => snapshot.streams().open(&plan.stream, key),
    }
}

/// How the plan's base is named in messages.
pub fn base_name(snapshot: &SnapshotReader, plan: &Plan) -> String {
    match &plan.base {
        Base::Snapshot => format!("{} of snapshot {}", crate::RDB_ENTRY, snapshot.id()),
        Base::Item(key) => format!("{}/{key}", plan.stream),
    }
}

/// The AOF directory a replay writes, inside the target.
const AOF_DIR: &str = "appendonlydir";
const AOF_BASE: &str = "appendonly.aof.1.base.rdb";
const AOF_INCR: &str = "appendonly.aof.1.incr.aof";
const AOF_MANIFEST: &str = "appendonly.aof.manifest";

/// Writes the base and the commands up to the plan's target as a
/// multi-part AOF directory under `dir`.
pub fn restore_aof_dir(snapshot: &SnapshotReader, plan: &Plan, dir: &str, force: bool) -> Result<Replayed, Error> {
    let empty = std::fs::read_dir(dir).map_err(|e| Error::from(e).context(dir))?.next().is_none();
    if !empty && !force {
        return Err(Error::Other(format!(
            "{dir} is not empty; restore into an empty directory, or pass --force to overwrite {AOF_DIR}/"
        )));
    }
    let aof = format!("{}/{AOF_DIR}", dir.trim_end_matches('/'));
    std::fs::create_dir_all(&aof).map_err(|e| Error::from(e).context(&aof))?;
    let create = |name: &str| {
        let p = format!("{aof}/{name}");
        std::fs::File::create(&p).map(std::io::BufWriter::new).map_err(|e| Error::from(e).context(p))
    };
    // The base, parsed on the way (a damaged RDB stops the restore here).
    let mut base_file = create(AOF_BASE)?;
    let what = base_name(snapshot, plan);
    let tee = crate::Tee { r: open_base(snapshot, plan)?, w: &mut base_file };
    crate::parse_rdb(tee, crate::rdb::Depth::Shallow).map_err(|e| crate::rdb_failure(&what, e))?;
    finish_file(base_file, &format!("{aof}/{AOF_BASE}"))?;
    let mut incr = create(AOF_INCR)?;
    let reader = snapshot.streams();
    let done = replay(&reader, plan, |cmd| incr.write_all(cmd).map_err(|e| Error::from(e).context(AOF_INCR)))?;
    finish_file(incr, &format!("{aof}/{AOF_INCR}"))?;
    // The manifest last: a server that finds it finds both files.
    let mut m = create(AOF_MANIFEST)?;
    write!(m, "file {AOF_BASE} seq 1 type b\nfile {AOF_INCR} seq 1 type i\n")
        .map_err(|e| Error::from(e).context(AOF_MANIFEST))?;
    finish_file(m, &format!("{aof}/{AOF_MANIFEST}"))?;
    host::info(format!(
        "wrote {aof}: {what} (offset {}) and {} commands of {} up to offset {}; start redis-server with --dir {dir} \
         --appendonly yes",
        plan.base_offset, done.commands, plan.stream, done.reached
    ));
    Ok(done)
}

fn finish_file(w: std::io::BufWriter<std::fs::File>, path: &str) -> Result<(), Error> {
    let f = w.into_inner().map_err(|e| Error::from(e.into_error()).context(path))?;
    f.sync_all().map_err(|e| Error::from(e).context(path))
}

/// Checks the stream a snapshot needs: from the snapshot's offset on,
/// every item decodes as whole RESP commands (RDB items parse), and the
/// items follow each other without a gap (an RDB item restarts the
/// coverage: a full resync after the backlog was lost).
pub fn verify_stream(snapshot: &SnapshotReader, report: &mut VerifyReport) -> Result<(), Error> {
    let Some((replid, snap_offset)) = snapshot_position(snapshot) else { return Ok(()) };
    let stream = repl::stream_name(&replid);
    let Some(from) = snapshot.needed_streams().into_iter().find(|(s, _)| *s == stream).map(|(_, p)| p) else {
        return Ok(());
    };
    let reader = snapshot.streams();
    let (rdbs, cmds) = match stream_items(&reader, &stream) {
        Ok(x) => x,
        Err(Error::Corrupt(m)) => {
            report.problem(&stream, m);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let rdbs: Vec<(u64, String)> = rdbs.into_iter().filter(|(o, _)| *o >= from).collect();
    let cmds: Vec<CmdItem> = cmds.into_iter().filter(|c| c.end >= from).collect();
    if rdbs.is_empty() && cmds.is_empty() {
        report.note(format!("stream {stream}: no items after offset {snap_offset} (nothing followed yet)"));
        return Ok(());
    }
    let mut covered = snap_offset;
    let (mut n_cmds, mut bytes) = (0u64, 0u64);
    let mut r = rdbs.iter().peekable();
    let mut buf = Vec::new();
    for c in &cmds {
        host::check_cancelled()?;
        // RDB items at or before this item's start restart the coverage.
        while let Some((o, key)) = r.next_if(|(o, _)| *o < c.start) {
            match crate::parse_rdb(reader.open(&stream, key)?, crate::rdb::Depth::Deep) {
                Ok(stats) => report.checked(1, stats.bytes),
                Err(e) if e.io => return Err(crate::rdb_failure(&format!("{stream}/{key}"), e)),
                Err(e) => report.problem(format!("{stream}/{key}"), e.to_string()),
            }
            covered = covered.max(*o);
        }
        let name = format!("{stream}/{}", c.key);
        if c.start > covered + 1 {
            report.problem(&name, format!("offsets {}..{} are missing before it", covered + 1, c.start - 1));
        } else if c.start <= covered && c.start > snap_offset + 1 {
            report.problem(&name, format!("it begins at offset {}, inside the item before it", c.start));
        }
        buf.clear();
        reader.open(&stream, &c.key)?.read_to_end(&mut buf).map_err(|e| Error::from(e).context(&name))?;
        if c.start + buf.len() as u64 != c.end + 1 {
            report.problem(&name, format!("{} bytes, its position says {}", buf.len(), c.end + 1 - c.start));
        }
        match repl::commands(&buf) {
            Ok(list) => n_cmds += list.len() as u64,
            Err(e) => report.problem(&name, e),
        }
        bytes += buf.len() as u64;
        covered = covered.max(c.end);
    }
    for (_, key) in r {
        match crate::parse_rdb(reader.open(&stream, key)?, crate::rdb::Depth::Deep) {
            Ok(stats) => report.checked(1, stats.bytes),
            Err(e) if e.io => return Err(crate::rdb_failure(&format!("{stream}/{key}"), e)),
            Err(e) => report.problem(format!("{stream}/{key}"), e.to_string()),
        }
    }
    report.checked(cmds.len() as u64, bytes);
    report.note(format!(
        "stream {stream}: {} command items ({n_cmds} commands) and {} RDB items cover offsets {}..{covered}",
        cmds.len(),
        rdbs.len(),
        snap_offset + 1
    ));
    Ok(())
}
