//! `coffer stream follow mongodb`: tails a replica set's oplog
//! (`local.oplog.rs`) with a tailable, awaiting cursor and stores it as
//! the stream `oplog-<set name>`.
//!
//! Each item holds a run of whole oplog entries, one BSON document after
//! another (the layout of `oplog.bson`); its key is
//! `<first ts>-<last ts>` (`seconds.increment`) and its position the last
//! entry's `ts` ([`position`]), so retention keeps every item that reaches
//! past the point a snapshot needs. An item is cut every `item_max_bytes`
//! or `item_max_seconds`, then a checkpoint records the last `ts` stored;
//! a restarted follower resumes after it. When the oplog no longer holds
//! that entry (the oplog is capped and rolled past it), the entries between
//! are lost: the follower stops and says a new base backup is needed.

use std::io::Write;
use std::time::{Duration, Instant};

use bson::{RawBsonRef, doc};
use coffer_sdk::{Error, StreamSink, host};

use crate::bsonfile::Ts;
use crate::uri::Uri;
use crate::wire::{CommandError, Conn, code};
use crate::{client, wire};

/// How long a tailing `getMore` waits for new entries before returning an
/// empty batch (so cancellation and item cutting are looked at).
const AWAIT: Duration = Duration::from_millis(500);
/// Reconnect delays.
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// A stream position for an oplog `ts`: seconds in the high half, the
/// increment in the low half, so positions sort as the oplog does.
pub fn position(ts: Ts) -> u64 {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

/// The `ts` of a position.
pub fn ts_of(position: u64) -> Ts {
    Ts { time: (position >> 32) as u32, increment: position as u32 }
}

/// The stream of replica set `set`.
pub fn stream_name(set: &str) -> String {
    let clean: String =
        set.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("oplog-{clean}")
}

/// An item's key: `<first>-<last>` as `seconds.increment`.
pub fn item_key(first: Ts, last: Ts) -> String {
    format!("{}.{}-{}.{}", first.time, first.increment, last.time, last.increment)
}

/// The first and last `ts` an item key names.
pub fn parse_key(key: &str) -> Option<(Ts, Ts)> {
    let (a, b) = key.split_once('-')?;
    let ts = |s: &str| {
        let (t, i) = s.split_once('.')?;
        Some(Ts { time: t.parse().ok()?, increment: i.parse().ok()? })
    };
    Some((ts(a)?, ts(b)?))
}

/// When items are cut, and where a first follow starts.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// An item is finished once it holds this many bytes.
    pub max_bytes: usize,
    /// ... or once its first entry waited this long.
    pub max_age: Duration,
    /// A first follow starts at the oplog's oldest entry (`true`), or at
    /// its newest.
    pub from_oldest: bool,
    /// Give up after failing this long (zero: never).
    pub give_up: Duration,
}

/// Follows until cancelled.
pub fn follow(uri: &Uri, settings: Settings, sink: &StreamSink) -> Result<(), Error> {
    let mut delay = FIRST_DELAY;
    let mut failing_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        let r = session(uri, settings, sink, &mut progressed);
        if progressed {
            delay = FIRST_DELAY;
            failing_since = None;
        }
        match r {
            Ok(()) => continue,
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(Error::Unavailable(why)) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !settings.give_up.is_zero() && since.elapsed() >= settings.give_up {
                    return Err(Error::Unavailable(format!(
                        "{why}; gave up after {} s of retrying (give_up_after_seconds)",
                        settings.give_up.as_secs()
                    )));
                }
                host::warn(format!("{why}; retrying in {} ms", delay.as_millis()));
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    host::check_cancelled()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The oldest and newest `ts` the oplog holds.
fn oplog_bounds(conn: &mut Conn) -> Result<(Ts, Ts), Error> {
    let mut one = |dir: i32| -> Result<Option<Ts>, Error> {
        let b = conn
            .cursor(
                "local",
                doc! { "find": "oplog.rs", "filter": {}, "sort": {"$natural": dir}, "limit": 1i32,
                "singleBatch": true, "projection": {"ts": 1i32} },
            )
            .map_err(|e| e.into_error("reading the oplog's bounds"))?;
        for d in b.documents() {
            let d = d.map_err(Error::Other)?;
            if let Ok(Some(RawBsonRef::Timestamp(t))) = d.get("ts") {
                return Ok(Some(Ts { time: t.time, increment: t.increment }));
            }
        }
        Ok(None)
    };
    let oldest = one(1)?.ok_or_else(|| Error::Other("the oplog is empty: is the replica set initiated?".into()))?;
    let newest = one(-1)?.unwrap_or(oldest);
    Ok((oldest, newest))
}

/// Where the last session stopped: the checkpoint's `ts`.
fn resume_point(sink: &StreamSink, stream: &str) -> Result<Option<Ts>, Error> {
    let Some(c) = sink.reader().last_checkpoint(stream)? else { return Ok(None) };
    let ts = c
        .state
        .strip_prefix("ts=")
        .and_then(|s| s.split_once(':'))
        .and_then(|(a, b)| Some(Ts { time: a.parse().ok()?, increment: b.parse().ok()? }));
    match ts {
        Some(t) => Ok(Some(t)),
        None => Err(Error::Other(format!(
            "stream {stream}: its last checkpoint ({:?}) is not one this plugin wrote",
            c.state
        ))),
    }
}

/// An item being filled.
struct Open {
    bytes: Vec<u8>,
    first: Ts,
    last: Ts,
    since: Instant,
}

fn store(sink: &StreamSink, stream: &str, item: Open) -> Result<(), Error> {
    let key = item_key(item.first, item.last);
    let mut w = sink.append(stream, &key, position(item.last), false)?;
    w.write_all(&item.bytes)?;
    w.finish()?;
    sink.checkpoint(stream, &format!("ts={}:{}", item.last.time, item.last.increment), Some(position(item.last)))?;
    host::debug(format!("stored {stream}/{key} ({} bytes)", item.bytes.len()));
    Ok(())
}

fn session(uri: &Uri, s: Settings, sink: &StreamSink, progressed: &mut bool) -> Result<(), Error> {
    let mut conn = client::connect(uri)?;
    let Some(set) = conn.hello.set_name.clone() else {
        return Err(Error::InvalidConfig(format!(
            "{} is not a replica-set member ({}): only a replica set has an oplog to follow",
            conn.addr(),
            client::role(&conn)
        )));
    };
    let stream = stream_name(&set);
    let (oldest, newest) = oplog_bounds(&mut conn)?;
    let resume = resume_point(sink, &stream)?;
    let start = match resume {
        Some(r) if r < oldest => {
            return Err(Error::Other(format!(
                "stream {stream}: the oplog no longer holds the entry at {r} where the stream stopped (its oldest \
                 entry is {oldest}); the writes between were lost to the stream: take a new base backup (coffer \
                 backup mongodb), which starts a point-in-time range again, and make the oplog larger \
                 (replSetResizeOplog) or keep the follower running"
            )));
        }
        Some(r) => r,
        None if s.from_oldest => oldest,
        None => newest,
    };
    host::info(format!(
        "following the oplog of replica set {set} at {} from {start}{}",
        conn.addr(),
        if resume.is_some() { " (resumed)" } else { "" }
    ));
    let ts = bson::Timestamp { time: start.time, increment: start.increment };
    let mut batch = conn
        .cursor(
            "local",
            doc! { "find": "oplog.rs", "filter": {"ts": {"$gte": ts}}, "sort": {"$natural": 1i32},
            "tailable": true, "awaitData": true },
        )
        .map_err(|e| e.into_error("tailing the oplog"))?;
    conn.set_read_timeout(AWAIT + wire::REPLY_TIMEOUT)?;
    let mut open: Option<Open> = None;
    let mut skip_until = resume;
    let mut checked_start = false;
    loop {
        host::check_cancelled()?;
        for d in batch.documents() {
            let d = d.map_err(Error::Other)?;
            let t = match d.get("ts") {
                Ok(Some(RawBsonRef::Timestamp(t))) => Ts { time: t.time, increment: t.increment },
                _ => return Err(Error::Other("an oplog entry without a ts".into())),
            };
            if !checked_start {
                checked_start = true;
                if t > start && resume.is_some() {
                    return Err(Error::Other(format!(
                        "stream {stream}: the oplog's entry at {start} is gone (it starts at {t} now); take a new \
                         base backup"
                    )));
                }
            }
            if skip_until.is_some_and(|u| t <= u) {
                continue;
            }
            skip_until = None;
            let item = open.get_or_insert_with(|| Open { bytes: Vec::new(), first: t, last: t, since: Instant::now() });
            item.bytes.extend_from_slice(d.as_bytes());
            item.last = t;
        }
        if let Some(item) = &open
            && (item.bytes.len() >= s.max_bytes || item.since.elapsed() >= s.max_age)
        {
            store(sink, &stream, open.take().expect("checked"))?;
            *progressed = true;
        }
        if batch.id == 0 {
            if let Some(item) = open.take() {
                store(sink, &stream, item)?;
            }
            return Err(Error::Unavailable(format!("the server closed the oplog cursor of {}", conn.addr())));
        }
        let next = conn.get_more("local", "oplog.rs", batch.id, None, Some(AWAIT));
        batch = match next {
            Ok(b) => b,
            Err(e) => {
                // What was read is whole entries: keep it.
                if let Some(item) = open.take() {
                    store(sink, &stream, item)?;
                }
                return Err(match e {
                    CommandError::Server(s) if s.code == code::CAPPED_POSITION_LOST => Error::Other(format!(
                        "stream {stream}: the oplog rolled past the follower ({s}); take a new base backup and \
                         make the oplog larger"
                    )),
                    CommandError::Server(s) if s.code == code::CURSOR_NOT_FOUND => {
                        Error::Unavailable(format!("the oplog cursor was closed by the server: {s}"))
                    }
                    e => e.into_error("tailing the oplog"),
                });
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_sort_as_the_oplog_and_keys_round_trip() {
        let a = Ts { time: 100, increment: 7 };
        let b = Ts { time: 101, increment: 1 };
        assert!(position(a) < position(b));
        assert_eq!(ts_of(position(a)), a);
        assert_eq!(parse_key(&item_key(a, b)), Some((a, b)));
        assert_eq!(stream_name("rs0"), "oplog-rs0");
        assert_eq!(stream_name("a/b"), "oplog-a_b");
    }
}
