//! `coffer stream follow --plugin redis`: follows a server as a replica
//! and stores its replication stream (see [`crate::repl`] for the items).
//!
//! One session: `INFO replication` names the master's replication ID `R`;
//! the stream `redis-R` tells where to resume (the end of its last item).
//! `PSYNC R <next>` continues there when the master's backlog still holds
//! it (`+CONTINUE`); otherwise, and the first time (`PSYNC ? -1`), the
//! master answers `+FULLRESYNC <id> <offset>` and sends an RDB, stored as
//! the item `rdb-<offset>`. Then commands are cut into items at command
//! boundaries, every `item_max_bytes` or `item_max_seconds` (only
//! keepalives: `idle_item_seconds`), each followed by a checkpoint. The
//! follower acknowledges (`REPLCONF ACK`) the offset it has *stored*, once
//! a second and whenever the master asks, so `WAIT` and the master's
//! `INFO replication` show what is safe in the repository.
//!
//! A lost link or a restarting server is retried with a doubling delay
//! (0.2 s to 30 s) for `give_up_after_seconds`; a new replication ID (a
//! master restarted, a failover) starts a new stream with a full resync.

use std::io::Write;
use std::time::{Duration, Instant};

use coffer_sdk::{Error, StreamSink, host};

use crate::client::{Conn, Target};
use crate::repl::{self, Command};
use crate::{Framing, RedisConfig, SyncStart, SyncStream};

/// How often a read stops waiting to look at `host::cancelled`.
const POLL: Duration = Duration::from_millis(100);
/// How often the follower acknowledges, as a replica must (the master
/// drops a replica silent for `repl-timeout`, 60 s by default).
const ACK_EVERY: Duration = Duration::from_secs(1);
/// Reconnect delays.
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// When items are cut.
#[derive(Debug, Clone, Copy)]
pub struct Cutting {
    /// An item is finished once it holds this many bytes.
    pub max_bytes: usize,
    /// ... or is this old and holds a write.
    pub max_age: Duration,
    /// ... or is this old (keepalives only).
    pub idle_age: Duration,
}

/// Follows `config`'s server until stopped; returns [`Error::Cancelled`]
/// then.
pub fn follow(config: &RedisConfig, sink: &StreamSink) -> Result<(), Error> {
    let target = config.target()?;
    let cutting = config.cutting()?;
    let give_up = Duration::from_secs(config.give_up_after_seconds);
    let mut delay = FIRST_DELAY;
    let mut failing_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        let r = session(&target, cutting, sink, &mut progressed);
        if progressed {
            delay = FIRST_DELAY;
            failing_since = None;
        }
        match r {
            Ok(()) => continue,
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(Error::Unavailable(why)) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !give_up.is_zero() && since.elapsed() >= give_up {
                    return Err(Error::Unavailable(format!(
                        "{why}; gave up after {} s of retrying (give_up_after_seconds)",
                        give_up.as_secs()
                    )));
                }
                host::warn(format!("{why}; retrying in {} ms", delay.as_millis()));
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    host::check_cancelled()?;
                    std::thread::sleep(POLL);
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the checkpoint's state, `<replid> <next offset>`.
fn parse_state(state: &str) -> Option<(&str, u64)> {
    let (id, next) = state.split_once(' ')?;
    Some((id, next.parse().ok()?))
}

/// Where stream `stream` ends: the offset after its last item, from the
/// checkpoint and any item stored after it (a follower killed between an
/// item and its checkpoint); `None` when it holds nothing.
pub fn resume_offset(sink: &StreamSink, stream: &str) -> Result<Option<u64>, Error> {
    let reader = sink.reader();
    let from =
        reader.last_checkpoint(stream)?.and_then(|c| parse_state(&c.state).map(|(_, next)| next.saturating_sub(1)));
    let mut end: Option<u64> = None;
    for item in reader.items(stream, from) {
        let item = item?;
        if let (Some(p), Some(_)) = (item.position, repl::parse_key(&item.key)) {
            end = Some(end.map_or(p, |e| e.max(p)));
        }
    }
    Ok(end.map(|e| e + 1))
}

/// One connection: handshake, resync, then the stream until the link
/// breaks (an error) or the replication ID changes (`Ok`).
fn session(target: &Target, cutting: Cutting, sink: &StreamSink, progressed: &mut bool) -> Result<(), Error> {
    let mut conn = Conn::open_polling(target, POLL).map_err(loading_is_unavailable)?;
    let info = conn.info("replication").map_err(loading_is_unavailable)?;
    let master_replid = info.get("master_replid").cloned().unwrap_or_default();
    let resume = if repl::is_replid(&master_replid) {
        resume_offset(sink, &repl::stream_name(&master_replid))?.map(|next| (master_replid.clone(), next))
    } else {
        None
    };
    // Acknowledging is optional for the master: an old server that does
    // not know a capability answers an error that changes nothing.
    let _ = conn.call(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"]);
    let start = crate::start_sync(&mut conn, resume.as_ref().map(|(id, next)| (id.as_str(), *next)), false)?;
    let (replid, stored) = match start {
        SyncStart::Continue(id) => {
            let Some((old, next)) = resume else {
                return Err(Error::Corrupt(format!("Redis at {} answered PSYNC ? -1 with CONTINUE", conn.addr())));
            };
            if let Some(id) = id
                && id != old
            {
                host::info(format!(
                    "Redis at {} changed its replication ID from {old} to {id}: starting a new stream with a full \
                     resync",
                    conn.addr()
                ));
                return Ok(());
            }
            host::info(format!("following Redis at {}: partial resync from offset {next} of {old}", conn.addr()));
            (old, next - 1)
        }
        SyncStart::Full { replid, offset, framing } => {
            let (Some(replid), Some(offset)) = (replid, offset) else {
                return Err(Error::Corrupt(format!(
                    "Redis at {} answered PSYNC without a replication ID and offset",
                    conn.addr()
                )));
            };
            if !repl::is_replid(&replid) {
                return Err(Error::Corrupt(format!("Redis at {} sent replication ID `{replid}`", conn.addr())));
            }
            let stream = repl::stream_name(&replid);
            if let Some(end) = resume_offset(sink, &stream)?
                && end > offset + 1
            {
                return Err(Error::Corrupt(format!(
                    "Redis at {} offers a full resync at offset {offset} of {replid}, before the end of the stored \
                     stream ({}); the server's history went backwards",
                    conn.addr(),
                    end - 1
                )));
            }
            receive_rdb(&mut conn, sink, &stream, &replid, offset, framing)?;
            *progressed = true;
            (replid, offset)
        }
    };
    let mut f = Follower {
        stream: repl::stream_name(&replid),
        replid,
        conn,
        sink,
        cutting,
        stored,
        received: stored,
        item: Vec::new(),
        item_started: Instant::now(),
        item_has_writes: false,
        last_ack: None,
    };
    f.ack()?;
    f.run(progressed)
}

/// `-LOADING` (a restarted server reading its files) is a reason to retry.
fn loading_is_unavailable(e: Error) -> Error {
    match e {
        Error::Other(m) if m.contains("LOADING") || m.contains("MASTERDOWN") => Error::Unavailable(m),
        e => e,
    }
}

/// Stores the RDB of a full resync as `rdb-<offset>` (parsed as it goes
/// by, so a damaged transfer stores nothing), then checkpoints.
fn receive_rdb(
    conn: &mut Conn,
    sink: &StreamSink,
    stream: &str,
    replid: &str,
    offset: u64,
    framing: Framing,
) -> Result<(), Error> {
    let key = repl::rdb_key(offset);
    let addr = conn.addr().to_string();
    // The same offset again (killed before the checkpoint): an RDB of the
    // same dataset is stored already; this one's bytes may differ.
    let exists = sink.reader().stat(stream, &key)?.is_some();
    let mut entry = if exists { None } else { Some(sink.append(stream, &key, offset, false)?) };
    let mut discard = std::io::sink();
    let out: &mut dyn Write = match entry.as_mut() {
        Some(e) => e,
        None => &mut discard,
    };
    let rdb = SyncStream::new(conn, framing, out);
    let stats = crate::parse_rdb(rdb, crate::rdb::Depth::Shallow)
        .map_err(|e| crate::rdb_failure(&format!("the RDB of a full resync from {addr}"), e))?;
    if let Some(e) = entry {
        e.finish()?;
    }
    sink.checkpoint(stream, &format!("{replid} {}", offset + 1), Some(offset))?;
    host::info(format!(
        "following Redis at {addr}: full resync, {} at offset {offset} of {replid}: {} bytes, {} keys",
        if exists { "an RDB already stored" } else { "RDB stored" },
        stats.bytes,
        stats.total_keys()
    ));
    Ok(())
}

/// The stream part of a session.
struct Follower<'a> {
    replid: String,
    stream: String,
    conn: Conn,
    sink: &'a StreamSink<'a>,
    cutting: Cutting,
    /// The offset of the last byte stored.
    stored: u64,
    /// The offset of the last byte of a complete command received.
    received: u64,
    /// Complete commands after `stored`.
    item: Vec<u8>,
    item_started: Instant,
    item_has_writes: bool,
    last_ack: Option<Instant>,
}

impl Follower<'_> {
    fn ack(&mut self) -> Result<(), Error> {
        let off = self.stored.to_string();
        self.conn.push(&[b"REPLCONF", b"ACK", off.as_bytes()]);
        self.conn.flush()?;
        self.last_ack = Some(Instant::now());
        Ok(())
    }

    /// Stores the complete commands received as one item and checkpoints.
    fn cut(&mut self) -> Result<(), Error> {
        if self.item.is_empty() {
            return Ok(());
        }
        let start = self.stored + 1;
        let mut w = self.sink.append(&self.stream, &repl::cmd_key(start), self.received, false)?;
        w.write_all(&self.item)?;
        w.finish()?;
        let seen = self.received + self.conn.buffered().len() as u64;
        self.sink.checkpoint(&self.stream, &format!("{} {}", self.replid, self.received + 1), Some(seen))?;
        self.stored = self.received;
        self.item.clear();
        self.item_has_writes = false;
        Ok(())
    }

    fn due(&self) -> bool {
        if self.item.is_empty() {
            return false;
        }
        let age = self.item_started.elapsed();
        self.item.len() >= self.cutting.max_bytes
            || (self.item_has_writes && age >= self.cutting.max_age)
            || age >= self.cutting.idle_age
    }

    /// The next complete command buffered: its length and kind.
    fn next_command(&self) -> Result<Option<(usize, Command)>, Error> {
        repl::next_command(self.conn.buffered()).map_err(|e| {
            Error::Corrupt(format!(
                "Redis at {} sent a replication stream that is not RESP commands at offset {}: {e}",
                self.conn.addr(),
                self.received + 1
            ))
        })
    }

    fn run(&mut self, progressed: &mut bool) -> Result<(), Error> {
        loop {
            let mut ack_now = false;
            while let Some((n, cmd)) = self.next_command()? {
                if self.item.is_empty() {
                    self.item_started = Instant::now();
                }
                self.item.extend_from_slice(&self.conn.buffered()[..n]);
                self.conn.consume(n);
                self.received += n as u64;
                match cmd {
                    Command::GetAck => ack_now = true,
                    c if !c.is_link_traffic() && c != Command::Select => self.item_has_writes = true,
                    _ => {}
                }
                if self.item.len() >= self.cutting.max_bytes {
                    self.cut()?;
                    *progressed = true;
                }
            }
            if self.due() {
                self.cut()?;
                *progressed = true;
            }
            if host::cancelled() {
                // The commands not yet stored are dropped: the next follow
                // asks the master for them again from the checkpoint.
                return Err(Error::Cancelled);
            }
            let link =
                if ack_now || self.last_ack.is_none_or(|t| t.elapsed() >= ACK_EVERY) { self.ack() } else { Ok(()) };
            if let Err(e) = link.and_then(|()| self.conn.read_some().map(drop)) {
                // Keep what arrived whole; the next session resumes after it.
                if !self.item.is_empty() {
                    self.cut()?;
                    *progressed = true;
                }
                return Err(e);
            }
        }
    }
}
