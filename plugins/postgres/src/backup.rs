//! `BASE_BACKUP` over a replication connection (PostgreSQL 15 and later):
//! the start position and tablespace list, one COPY stream that carries the
//! tar archive of the data directory (with the WAL the backup needs) and
//! then the backup manifest, and the stop position.
//!
//! Members are handed to the caller one at a time with a reader of exactly
//! their content, so nothing is held in memory but the message being read.

use std::io::Read;

use bytes::Bytes;
use coffer_sdk::Error;
use postgres_protocol::message::backend::Message;

use crate::conn::{Conn, Got, ServerError, quote, row_text};
use crate::tar::{self, BLOCK, Header};
use crate::wal::Lsn;

/// What `BASE_BACKUP` is asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The label recorded in `backup_label`.
    pub label: String,
    /// Checkpoint at once rather than spread over `checkpoint_completion_target`.
    pub fast_checkpoint: bool,
}

impl Request {
    /// The replication command.
    pub fn command(&self) -> String {
        format!(
            "BASE_BACKUP (LABEL {}, CHECKPOINT {}, WAL true, WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS \
             'CRC32C')",
            quote(&self.label),
            if self.fast_checkpoint { "'fast'" } else { "'spread'" }
        )
    }
}

/// What a finished base backup reported.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Where the WAL needed by the backup starts.
    pub start_lsn: Lsn,
    /// The timeline at the start.
    pub start_timeline: u32,
    /// Where the backup is consistent.
    pub stop_lsn: Lsn,
    /// The timeline at the stop.
    pub stop_timeline: u32,
    /// The backup manifest's bytes.
    pub manifest: Vec<u8>,
    /// Members handed over.
    pub members: u64,
    /// Content bytes handed over.
    pub bytes: u64,
}

/// Maps an error the server sent during a backup to one that says what to do.
fn backup_refused(addr: &str, e: ServerError) -> Error {
    match e.code.as_str() {
        "55000" if e.message.contains("WAL level") => Error::Unavailable(format!(
            "PostgreSQL at {addr} cannot take an online backup: {e}. Set wal_level = replica (or logical) and restart"
        )),
        "42501" => Error::AccessDenied(format!("PostgreSQL at {addr} refused the base backup: {e}")),
        "57P01" | "57P02" | "57P03" => {
            Error::Unavailable(format!("PostgreSQL at {addr} stopped during the base backup: {e}"))
        }
        _ => Error::other(format!("PostgreSQL at {addr} failed the base backup: {e}")),
    }
}

fn lsn_of(addr: &str, s: Option<&Option<String>>, what: &str) -> Result<Lsn, Error> {
    s.and_then(|v| v.as_deref())
        .and_then(|t| Lsn::parse(t).ok())
        .ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr} sent an unreadable {what} position")))
}

fn timeline_of(addr: &str, s: Option<&Option<String>>) -> Result<u32, Error> {
    s.and_then(|v| v.as_deref())
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr} sent an unreadable timeline")))
}

/// Where the COPY stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Inside the tar archive of the data directory.
    Archive,
    /// Inside the manifest.
    Manifest,
    /// After CopyDone.
    Done,
}

/// The COPY stream of a base backup.
struct CopyStream<'a> {
    conn: &'a mut Conn,
    cur: Bytes,
    phase: Phase,
    archives: u32,
    progress: Box<dyn FnMut(u64) + 'a>,
}

impl CopyStream<'_> {
    /// Makes `cur` non-empty with data of the current phase; false when the
    /// phase ended.
    fn fill(&mut self) -> Result<bool, Error> {
        while self.cur.is_empty() {
            if self.phase == Phase::Done {
                return Ok(false);
            }
            match self.conn.next_message()? {
                Got::Msg(Message::CopyData(body)) => {
                    let b = body.into_bytes();
                    match b.first() {
                        Some(b'n') => {
                            self.archives += 1;
                            if self.archives > 1 {
                                return Err(Error::Unsupported(format!(
                                    "PostgreSQL at {} sent a second archive (a tablespace): tablespaces are not \
                                     supported",
                                    self.conn.addr()
                                )));
                            }
                        }
                        Some(b'd') => self.cur = b.slice(1..),
                        Some(b'p') if b.len() >= 9 => {
                            let done = u64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
                            (self.progress)(done);
                        }
                        Some(b'm') => {
                            let was = self.phase;
                            self.phase = Phase::Manifest;
                            if was == Phase::Archive {
                                return Ok(false);
                            }
                        }
                        _ => {
                            return Err(Error::Corrupt(format!(
                                "PostgreSQL at {} sent a COPY message of an unknown kind in the base backup",
                                self.conn.addr()
                            )));
                        }
                    }
                }
                Got::Msg(Message::CopyDone) => {
                    self.phase = Phase::Done;
                    return Ok(false);
                }
                Got::Msg(_) => {
                    return Err(Error::Corrupt(format!(
                        "PostgreSQL at {} sent an unexpected message inside the base backup stream",
                        self.conn.addr()
                    )));
                }
                Got::Failed(e) => return Err(backup_refused(self.conn.addr(), e)),
            }
        }
        Ok(true)
    }

    /// Reads a tar header block; `None` at the end of the archive (its end,
    /// or a zero block).
    fn header(&mut self) -> Result<Option<Header>, Error> {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            if !self.fill()? {
                if got == 0 {
                    return Ok(None);
                }
                return Err(self.cut("inside a tar header"));
            }
            let n = (BLOCK - got).min(self.cur.len());
            block[got..got + n].copy_from_slice(&self.cur[..n]);
            let _ = self.cur.split_to(n);
            got += n;
        }
        tar::parse(&block)
            .map_err(|e| Error::Corrupt(format!("the base backup from PostgreSQL at {}: {e}", self.conn.addr())))
    }

    /// Skips `n` bytes of the archive.
    fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        while n > 0 {
            if !self.fill()? {
                return Err(self.cut("inside tar padding"));
            }
            let k = (self.cur.len() as u64).min(n) as usize;
            let _ = self.cur.split_to(k);
            n -= k as u64;
        }
        Ok(())
    }

    fn cut(&self, where_: &str) -> Error {
        Error::Corrupt(format!("the base backup from PostgreSQL at {} ended {where_}", self.conn.addr()))
    }
}

/// Exactly one member's content.
struct Member<'s, 'a> {
    s: &'s mut CopyStream<'a>,
    left: u64,
}

impl Read for Member<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        if !self.s.fill().map_err(std::io::Error::from)? {
            return Err(std::io::Error::from(self.s.cut("inside a file")));
        }
        let n = (self.s.cur.len() as u64).min(self.left).min(out.len() as u64) as usize;
        out[..n].copy_from_slice(&self.s.cur[..n]);
        let _ = self.s.cur.split_to(n);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Runs a base backup. `member` is called for every tar member with a
/// reader of its content, which it must read to the end; `progress` with
/// the bytes the server has sent.
pub fn run(
    conn: &mut Conn,
    req: &Request,
    mut member: impl FnMut(&Header, &mut dyn Read) -> Result<(), Error>,
    progress: impl FnMut(u64),
) -> Result<Finished, Error> {
    let addr = conn.addr().to_string();
    conn.send_query(&req.command())?;
    // The start position, then the tablespaces, then the COPY.
    let mut start: Option<(Lsn, u32)> = None;
    let mut elsewhere = Vec::new();
    loop {
        match conn.next_message()? {
            Got::Msg(Message::DataRow(r)) => {
                let row = row_text(&r)?;
                if start.is_none() {
                    start = Some((lsn_of(&addr, row.first(), "start")?, timeline_of(&addr, row.get(1))?));
                } else if let Some(Some(location)) = row.get(1) {
                    let oid = row.first().cloned().flatten().unwrap_or_default();
                    elsewhere.push(format!("{location} (oid {oid})"));
                }
            }
            Got::Msg(Message::CopyOutResponse(_)) => break,
            Got::Msg(_) => {}
            Got::Failed(e) => return Err(backup_refused(&addr, e)),
        }
    }
    if !elsewhere.is_empty() {
        // Dropping the connection ends the backup on the server.
        return Err(Error::Unsupported(format!(
            "the cluster at {addr} has tablespaces outside its data directory: {}. coffer backs up clusters without \
             tablespaces for now",
            elsewhere.join(", ")
        )));
    }
    let (start_lsn, start_timeline) = start
        .ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr} began the backup without a start position")))?;
    let mut s = CopyStream {
        conn: &mut *conn,
        cur: Bytes::new(),
        phase: Phase::Archive,
        archives: 0,
        progress: Box::new(progress),
    };
    let (mut members, mut bytes) = (0u64, 0u64);
    while let Some(h) = s.header()? {
        let mut m = Member { s: &mut s, left: h.size };
        member(&h, &mut m)?;
        if m.left != 0 {
            return Err(Error::other(format!("{}: {} bytes of the member were not read", h.path, m.left)));
        }
        s.skip(h.padding())?;
        members += 1;
        bytes += h.size;
    }
    // The end-of-archive zero blocks, if the server sent them: nothing but
    // zeros may follow.
    while s.fill()? {
        if s.cur.iter().any(|b| *b != 0) {
            return Err(Error::Corrupt(format!("PostgreSQL at {addr} sent data after the end of the tar archive")));
        }
        s.cur.clear();
    }
    if s.phase != Phase::Manifest {
        return Err(Error::Corrupt(format!("PostgreSQL at {addr} sent no backup manifest")));
    }
    let mut manifest = Vec::new();
    while s.fill()? {
        manifest.extend_from_slice(&s.cur);
        s.cur.clear();
    }
    drop(s);
    // The stop position, then ReadyForQuery.
    let mut stop: Option<(Lsn, u32)> = None;
    loop {
        match conn.next_message()? {
            Got::Msg(Message::DataRow(r)) => {
                let row = row_text(&r)?;
                stop = Some((lsn_of(&addr, row.first(), "stop")?, timeline_of(&addr, row.get(1))?));
            }
            Got::Msg(Message::ReadyForQuery(_)) => break,
            Got::Msg(_) => {}
            Got::Failed(e) => return Err(backup_refused(&addr, e)),
        }
    }
    let (stop_lsn, stop_timeline) =
        stop.ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr} ended the backup without a stop position")))?;
    Ok(Finished { start_lsn, start_timeline, stop_lsn, stop_timeline, manifest, members, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command() {
        let r = Request { label: "coffer's nightly".into(), fast_checkpoint: true };
        assert_eq!(
            r.command(),
            "BASE_BACKUP (LABEL 'coffer''s nightly', CHECKPOINT 'fast', WAL true, WAIT false, MANIFEST 'yes', \
             MANIFEST_CHECKSUMS 'CRC32C')"
        );
    }
}
