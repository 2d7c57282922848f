//! Following a PostgreSQL server's WAL over the replication protocol, as
//! `pg_receivewal` does: `START_REPLICATION` (on a physical replication
//! slot when one is configured, so the server keeps every segment until
//! coffer has stored it), each completed segment appended to the stream as
//! an item named like the archived file, and the slot told a segment is
//! flushed only once the repository holds it.
//!
//! Between segments, the segment in progress is stored every
//! `partial_interval` as a `.partial.<length>` item, so that the recovery
//! point trails the server by seconds rather than a segment: a restore
//! command asks for the segment, and the host's fetch falls back to the
//! longest partial copy (see `FetchCommand` in the contract).
//!
//! The resume point is the checkpoint `"<timeline> <lsn>"`: the start of
//! the next segment to store. A follow that stops (Ctrl-C, a kill -9, a
//! server restart) resumes there, so no segment is missing, and a segment
//! stored twice is the same item (written once).

use std::time::{Duration, Instant};

use bytes::BufMut;
use coffer_pgwal::{Lsn, segment_name};
use coffer_sdk::{Error, StreamSink, host};
use postgres_protocol::message::backend::Message;

use crate::conn::{Conn, Got, Target};

/// How a follow runs (from the plugin's config).
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The physical replication slot to stream from (`None`: no slot; the
    /// server may then recycle WAL coffer has not stored yet).
    pub slot: Option<String>,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// The stream (default `pg-<system identifier>`).
    pub stream: Option<String>,
    /// How often the segment in progress is stored as a partial item
    /// (`None`: never; only whole segments).
    pub partial_interval: Option<Duration>,
}

/// Status updates to the server at least this often (the server drops a
/// replica silent for `wal_sender_timeout`, 60 s by default).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Socket read timeout: how often a quiet link checks for a stop.
const POLL: Duration = Duration::from_millis(200);
/// Reconnect delays after a lost connection, doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Collects streamed WAL into whole segments.
#[derive(Debug)]
pub struct Assembler {
    segment_size: u64,
    /// Start of the segment being filled.
    start: u64,
    buf: Vec<u8>,
}

/// A completed segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its segment number.
    pub segno: u64,
    /// Its bytes (exactly one segment).
    pub data: Vec<u8>,
}

impl Assembler {
    /// Starts at `start`, which must be a segment boundary.
    pub fn new(start: u64, segment_size: u64) -> Assembler {
        debug_assert_eq!(start % segment_size, 0);
        Assembler { segment_size, start, buf: Vec::new() }
    }

    /// The position the next byte must have.
    pub fn next(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// The segment in progress: its start and what has arrived of it.
    pub fn pending(&self) -> (u64, &[u8]) {
        (self.start, &self.buf)
    }

    /// Takes `data` that the server sent as starting at `wal_start`, and
    /// returns the segments it completed. WAL must arrive in order without
    /// gaps; anything else is an error naming both positions.
    pub fn push(&mut self, wal_start: u64, mut data: &[u8]) -> Result<Vec<Segment>, String> {
        if wal_start != self.next() {
            return Err(format!(
                "the server sent WAL from {} where {} was expected next",
                Lsn(wal_start),
                Lsn(self.next())
            ));
        }
        let mut done = Vec::new();
        while !data.is_empty() {
            let room = (self.segment_size - self.buf.len() as u64) as usize;
            let n = room.min(data.len());
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.segment_size as usize);
            }
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() as u64 == self.segment_size {
                let segno = self.start / self.segment_size;
                done.push(Segment { segno, data: std::mem::take(&mut self.buf) });
                self.start += self.segment_size;
            }
        }
        Ok(done)
    }
}

/// The checkpoint a follow saves: the next segment to store, on a timeline.
pub fn checkpoint_state(timeline: u32, next: u64) -> String {
    format!("{timeline} {}", Lsn(next))
}

/// Parses [`checkpoint_state`].
pub fn parse_checkpoint(state: &str) -> Option<(u32, u64)> {
    let (tli, lsn) = state.split_once(' ')?;
    Some((tli.parse().ok()?, Lsn::parse(lsn).ok()?.0))
}

/// The key of a partial copy of a segment: the segment's file name,
/// `.partial.`, and the bytes it holds as 8 hex digits (so a longer copy
/// sorts after a shorter one).
pub fn partial_key(segment: &str, len: usize) -> String {
    format!("{segment}.partial.{len:08X}")
}

/// A standby status update: written, flushed and applied up to these
/// positions, now.
fn status_update(written: u64, flushed: u64) -> Vec<u8> {
    let since_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let now_us = since_unix.as_micros() as i64 - PG_EPOCH_OFFSET_US;
    let mut b = Vec::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(written);
    b.put_u64(flushed);
    b.put_u64(flushed);
    b.put_i64(now_us);
    b.put_u8(0);
    b
}

/// What the server said in one CopyData of the replication stream.
enum Frame<'a> {
    /// WAL from `start`.
    Wal { start: u64, end: u64, data: &'a [u8] },
    /// A keepalive: how far the server is, and whether it wants a reply now.
    Keepalive { end: u64, reply: bool },
}

fn frame(body: &[u8]) -> Result<Frame<'_>, String> {
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    match body.first() {
        Some(b'w') if body.len() >= 25 => {
            Ok(Frame::Wal { start: be(&body[1..9]), end: be(&body[9..17]), data: &body[25..] })
        }
        Some(b'k') if body.len() >= 18 => Ok(Frame::Keepalive { end: be(&body[1..9]), reply: body[17] != 0 }),
        Some(c) => Err(format!("an unknown replication message {:?} of {} bytes", *c as char, body.len())),
        None => Err("an empty replication message".into()),
    }
}

/// One simple query's single row, or an error naming the command.
fn one_row(conn: &mut Conn, q: &str) -> Result<Option<Vec<Option<String>>>, Error> {
    match conn.query(q)? {
        Ok(rows) => Ok(rows.into_iter().next()),
        Err(e) => Err(Error::Other(format!("PostgreSQL at {}: {q}: {e}", conn.addr()))),
    }
}

fn col(row: &[Option<String>], i: usize, what: &str, addr: &str) -> Result<String, Error> {
    row.get(i).cloned().flatten().ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr} sent no {what}")))
}

/// What the server and the slot say when a follow (re)connects.
struct Start {
    stream: String,
    segment_size: u64,
    timeline: u32,
    /// Segment-aligned position to stream from.
    from: u64,
}

fn prepare(conn: &mut Conn, opts: &ReceiveOptions, sink: &StreamSink) -> Result<Start, Error> {
    let addr = conn.addr().to_string();
    let row = one_row(conn, "IDENTIFY_SYSTEM")?.ok_or_else(|| Error::Corrupt(format!("{addr}: IDENTIFY_SYSTEM")))?;
    let sysid = col(&row, 0, "system identifier", &addr)?;
    let server_tli: u32 = col(&row, 1, "timeline", &addr)?
        .parse()
        .map_err(|_| Error::Corrupt(format!("PostgreSQL at {addr} sent a bad timeline")))?;
    let xlogpos = Lsn::parse(&col(&row, 2, "WAL position", &addr)?).map_err(Error::Corrupt)?;
    let seg = conn.show("wal_segment_size")?;
    let segment_size = crate::wal::parse_size_setting(&seg)
        .filter(|s| coffer_pgwal::valid_segment_size(*s))
        .ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr}: wal_segment_size {seg:?}")))?;
    let stream = opts.stream.clone().unwrap_or_else(|| format!("pg-{sysid}"));

    let mut slot_start: Option<(u32, u64)> = None;
    if let Some(slot) = &opts.slot {
        let row = one_row(conn, &format!("READ_REPLICATION_SLOT {}", quote_ident(slot)))?;
        let exists = row.as_ref().is_some_and(|r| r.first().cloned().flatten().is_some());
        if !exists {
            if !opts.create_slot {
                return Err(Error::InvalidConfig(format!(
                    "slot: PostgreSQL at {addr} has no replication slot {slot:?}; create it (set create_slot=true, \
                     or SELECT pg_create_physical_replication_slot('{slot}', true)) or leave slot out"
                )));
            }
            match conn.query(&format!("CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL", quote_ident(slot)))? {
                Ok(_) => host::info(format!("created physical replication slot {slot} on {addr}")),
                Err(e) if e.code == "42710" => {} // created meanwhile
                Err(e) => return Err(Error::Other(format!("PostgreSQL at {addr}: creating slot {slot}: {e}"))),
            }
            let row = one_row(conn, &format!("READ_REPLICATION_SLOT {}", quote_ident(slot)))?;
            slot_start = row.as_deref().and_then(slot_position);
        } else {
            slot_start = row.as_deref().and_then(slot_position);
        }
    }

    let checkpoint = sink.reader().last_checkpoint(&stream)?;
    let (timeline, from) = match checkpoint.as_ref().and_then(|c| parse_checkpoint(&c.state)) {
        Some(p) => p,
        None => match slot_start {
            Some(p) => p,
            None => (server_tli, xlogpos.0),
        },
    };
    let from = from - from % segment_size;
    if let (Some(c), Some((_, slot_lsn))) = (&checkpoint, slot_start)
        && slot_lsn > from + segment_size
    {
        host::warn(format!(
            "the slot is at {} but the stream's checkpoint ({}) is behind it: WAL between them is not in the \
             repository unless archive_command stored it",
            Lsn(slot_lsn),
            c.state
        ));
    }
    Ok(Start { stream, segment_size, timeline, from })
}

/// (timeline, restart position) from a `READ_REPLICATION_SLOT` row:
/// slot_type, restart_lsn, restart_tli.
fn slot_position(row: &[Option<String>]) -> Option<(u32, u64)> {
    let lsn = Lsn::parse(row.get(1)?.as_deref()?).ok()?;
    let tli = row.get(2)?.as_deref()?.parse().ok()?;
    Some((tli, lsn.0))
}

/// A replication-protocol identifier, double-quoted.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Stores one item: `key` at `position`.
fn store(sink: &StreamSink, stream: &str, key: &str, position: u64, pinned: bool, data: &[u8]) -> Result<(), Error> {
    let mut w = sink.append(stream, key, position, pinned)?;
    std::io::Write::write_all(&mut w, data)?;
    w.finish()?;
    Ok(())
}

/// Follows the server at `target` until the host says stop (then
/// [`Error::Cancelled`]) or a failure that reconnecting cannot cure.
pub fn follow(target: &Target, opts: &ReceiveOptions, sink: &StreamSink) -> Result<(), Error> {
    let mut backoff = Duration::from_secs(1);
    loop {
        if host::cancelled() {
            return Err(Error::Cancelled);
        }
        let stored_before = Instant::now();
        match follow_once(target, opts, sink) {
            Err(Error::Unavailable(why)) => {
                host::warn(format!("{why}; reconnecting in {} s", backoff.as_secs()));
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if host::cancelled() {
                        return Err(Error::Cancelled);
                    }
                    std::thread::sleep(POLL);
                }
                // A link that held for a while resets the delay.
                backoff = if stored_before.elapsed() > MAX_BACKOFF {
                    Duration::from_secs(1)
                } else {
                    (backoff * 2).min(MAX_BACKOFF)
                };
            }
            other => return other,
        }
    }
}

/// One connection's worth of following; `Unavailable` when the link is
/// lost (the caller reconnects).
fn follow_once(target: &Target, opts: &ReceiveOptions, sink: &StreamSink) -> Result<(), Error> {
    let mut conn = Conn::open(target)?;
    let Start { stream, segment_size, mut timeline, mut from } = prepare(&mut conn, opts, sink)?;
    let addr = conn.addr().to_string();
    conn.set_read_timeout(Some(POLL))?;
    host::info(format!(
        "following {addr} from {} on timeline {timeline} into stream {stream}{}",
        Lsn(from),
        opts.slot.as_ref().map(|s| format!(" (slot {s})")).unwrap_or_default()
    ));
    loop {
        let slot = opts.slot.as_ref().map(|s| format!("SLOT {} ", quote_ident(s))).unwrap_or_default();
        conn.send_query(&format!("START_REPLICATION {slot}PHYSICAL {} TIMELINE {timeline}", Lsn(from)))?;
        match conn.start_copy_both(host::cancelled)? {
            Some(Ok(())) => {}
            // The slot is still held by a connection the server has not
            // yet seen die (a follower killed a moment ago): retry.
            Some(Err(e)) if e.code == "55006" => {
                return Err(Error::Unavailable(format!("PostgreSQL at {addr}: {e}")));
            }
            Some(Err(e)) => {
                return Err(Error::Other(format!(
                    "PostgreSQL at {addr} refused to stream WAL from {} on timeline {timeline}: {e}",
                    Lsn(from)
                )));
            }
            None => return Err(Error::Cancelled),
        }
        match stream_timeline(&mut conn, sink, &stream, timeline, from, segment_size, opts)? {
            // The server ended the timeline: store its history file and go on
            // on the next one.
            Some((next_tli, next_from)) => {
                let row = one_row(&mut conn, &format!("TIMELINE_HISTORY {next_tli}"))?
                    .ok_or_else(|| Error::Corrupt(format!("{addr}: TIMELINE_HISTORY {next_tli}")))?;
                let name = col(&row, 0, "history file name", &addr)?;
                let content = col(&row, 1, "history file", &addr)?;
                store(sink, &stream, &name, next_from, true, content.as_bytes())?;
                host::info(format!("timeline {timeline} ended at {}; following timeline {next_tli}", Lsn(next_from)));
                timeline = next_tli;
                from = next_from - next_from % segment_size;
                sink.checkpoint(&stream, &checkpoint_state(timeline, from), None)?;
            }
            None => return Err(Error::Cancelled),
        }
    }
}

/// Streams one timeline until the server ends it (the next timeline and
/// where it starts) or the host says stop (`None`).
fn stream_timeline(
    conn: &mut Conn,
    sink: &StreamSink,
    stream: &str,
    timeline: u32,
    from: u64,
    segment_size: u64,
    opts: &ReceiveOptions,
) -> Result<Option<(u32, u64)>, Error> {
    let addr = conn.addr().to_string();
    let mut asm = Assembler::new(from, segment_size);
    let mut flushed = from;
    let mut server_end = from;
    let mut last_status = Instant::now();
    let mut last_partial = Instant::now();
    let mut partial_len = 0usize;
    loop {
        // Returns after at most the read timeout, so the timers below run
        // on a quiet link too.
        let msg = match conn.next_message_polled(|| true)? {
            Some(m) => Some(m),
            None if host::cancelled() => return Ok(None),
            None => None,
        };
        match msg {
            None => {}
            Some(msg) => match msg {
                Got::Msg(Message::CopyData(body)) => {
                    match frame(body.data()).map_err(|e| Error::Corrupt(format!("PostgreSQL at {addr} sent {e}")))? {
                        Frame::Wal { start, end, data } => {
                            server_end = server_end.max(end);
                            let done = asm
                                .push(start, data)
                                .map_err(|e| Error::Corrupt(format!("PostgreSQL at {addr}: {e}")))?;
                            for seg in done {
                                let name = segment_name(timeline, seg.segno, segment_size);
                                let position = seg.segno * segment_size;
                                store(sink, stream, &name, position, false, &seg.data)?;
                                flushed = position + segment_size;
                                sink.checkpoint(stream, &checkpoint_state(timeline, flushed), Some(server_end))?;
                                partial_len = 0;
                                conn.send_copy_data(&status_update(asm.next(), flushed))?;
                                last_status = Instant::now();
                            }
                        }
                        Frame::Keepalive { end, reply } => {
                            server_end = server_end.max(end);
                            if reply {
                                conn.send_copy_data(&status_update(asm.next(), flushed))?;
                                last_status = Instant::now();
                            }
                        }
                    }
                }
                // End of the timeline: the server switched to a new one.
                Got::Msg(Message::CopyDone) => {
                    conn.send_copy_done()?;
                    let (start, pending) = asm.pending();
                    if !pending.is_empty() {
                        // The old timeline's last, unfinished segment, kept
                        // as a partial copy (not as `<segment>.partial`: that
                        // is the name PostgreSQL's own archiver gives its
                        // full-size copy, which must be able to arrive too).
                        let name = segment_name(timeline, start / segment_size, segment_size);
                        let key = partial_key(&name, pending.len());
                        store(sink, stream, &key, start + pending.len() as u64, false, pending)?;
                    }
                    let mut next = None;
                    loop {
                        match conn.next_message_polled(|| false)? {
                            Some(Got::Msg(Message::DataRow(r))) => {
                                let row = crate::conn::row_text(&r)?;
                                let tli: u32 = col(&row, 0, "next timeline", &addr)?
                                    .parse()
                                    .map_err(|_| Error::Corrupt(format!("{addr}: next timeline")))?;
                                let pos = Lsn::parse(&col(&row, 1, "next timeline's start", &addr)?)
                                    .map_err(Error::Corrupt)?;
                                next = Some((tli, pos.0));
                            }
                            Some(Got::Msg(Message::ReadyForQuery(_))) => break,
                            Some(Got::Msg(_)) => {}
                            Some(Got::Failed(e)) => return Err(Error::Other(format!("PostgreSQL at {addr}: {e}"))),
                            None => return Ok(None),
                        }
                    }
                    return match next {
                        Some(n) => Ok(Some(n)),
                        None => Err(Error::Unavailable(format!("PostgreSQL at {addr} ended the WAL stream"))),
                    };
                }
                Got::Msg(_) => {}
                Got::Failed(e) => return Err(Error::Unavailable(format!("PostgreSQL at {addr}: {e}"))),
            },
        }
        if let Some(every) = opts.partial_interval {
            let (start, pending) = asm.pending();
            if pending.len() > partial_len && last_partial.elapsed() >= every {
                let name = segment_name(timeline, start / segment_size, segment_size);
                store(sink, stream, &partial_key(&name, pending.len()), start + pending.len() as u64, false, pending)?;
                partial_len = pending.len();
                last_partial = Instant::now();
            }
        }
        if last_status.elapsed() >= STATUS_INTERVAL {
            conn.send_copy_data(&status_update(asm.next(), flushed))?;
            last_status = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_come_out_whole_and_in_order() {
        let mut a = Assembler::new(3 * 16, 16);
        assert!(a.push(48, &[1; 10]).unwrap().is_empty());
        assert_eq!(a.pending(), (48, &[1u8; 10][..]));
        let done = a.push(58, &[2; 30]).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].segno, 3);
        assert_eq!(done[0].data, [[1u8; 10].as_slice(), &[2; 6]].concat());
        assert_eq!(done[1].segno, 4);
        assert_eq!(done[1].data, vec![2; 16]);
        assert_eq!(a.pending(), (80, &[2u8; 8][..]));
        assert_eq!(a.next(), 88);
        let gap = a.push(100, &[0]).unwrap_err();
        assert!(gap.contains("0/64") && gap.contains("0/58"), "{gap}");
    }

    #[test]
    fn checkpoints_and_partial_keys() {
        assert_eq!(checkpoint_state(2, 0x1_0000_0000), "2 1/0");
        assert_eq!(parse_checkpoint("2 1/0"), Some((2, 0x1_0000_0000)));
        assert_eq!(parse_checkpoint("x 1/0"), None);
        let k = partial_key("000000010000000000000005", 0x123000);
        assert_eq!(k, "000000010000000000000005.partial.00123000");
        assert!(partial_key("000000010000000000000005", 0x9000) < k);
    }

    #[test]
    fn replication_frames() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x10u64.to_be_bytes());
        w.extend_from_slice(&0x20u64.to_be_bytes());
        w.extend_from_slice(&0u64.to_be_bytes());
        w.extend_from_slice(b"abc");
        match frame(&w).unwrap() {
            Frame::Wal { start, end, data } => assert_eq!((start, end, data), (0x10, 0x20, &b"abc"[..])),
            Frame::Keepalive { .. } => panic!("not a keepalive"),
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x30u64.to_be_bytes());
        k.extend_from_slice(&0u64.to_be_bytes());
        k.push(1);
        assert!(matches!(frame(&k).unwrap(), Frame::Keepalive { end: 0x30, reply: true }));
        assert!(frame(b"w").is_err());
        assert!(frame(b"").is_err());
        let s = status_update(5, 4);
        assert_eq!(s.len(), 34);
        assert_eq!(s[0], b'r');
    }
}
