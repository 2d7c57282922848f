//! A small blocking Redis client over the address the host granted (TCP,
//! or TLS from the first byte as `rediss://` means): connect, authenticate,
//! send pipelined commands, decode RESP2 replies (with `redis-protocol`),
//! and read the raw bytes of a `SYNC` transfer.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use coffer_sdk::Error;
use coffer_sdk::net;
use redis_protocol::resp2::types::OwnedFrame;

/// Where a Redis server is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written in the URL.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user (`AUTH user password`); `None` for the default user.
    pub user: Option<String>,
    /// Password, never shown.
    pub password: Option<String>,
    /// TLS right after TCP connects (`rediss://`): the host checks the
    /// server's certificate against `host` and presents the client
    /// certificate the operator configured, if any.
    pub tls: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.addr(), if self.tls { " (TLS)" } else { "" })
    }
}

impl Target {
    /// Parses `redis://[user[:password]@]host[:port][/db]`; `password`
    /// (from the config, read by the host from a file or the environment)
    /// wins over one in the URL.
    pub fn parse(url: &str, user: Option<&str>, password: Option<&str>) -> Result<Target, Error> {
        let bad = |why: &str| Error::InvalidConfig(format!("url: {why} (expected redis://[user@]host:port/)"));
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match u.scheme() {
            "redis" => false,
            "rediss" => true,
            other => return Err(bad(&format!("the scheme is `{other}`"))),
        };
        let host = u.host_str().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_string();
        let port = u.port().unwrap_or(6379);
        let url_user = (!u.username().is_empty()).then(|| u.username().to_string());
        let url_password = u.password().map(percent_decode).filter(|p| p != "<redacted>");
        let user = user.map(str::to_string).or(url_user).filter(|u| u != "default" || password.is_some());
        Ok(Target { host, port, user, password: password.map(str::to_string).or(url_password), tls })
    }

    /// `host:port`, for messages and grants.
    pub fn addr(&self) -> String {
        coffer_sdk::net::host_port(&self.host, self.port)
    }
}

/// Decodes `%XX` escapes of a URL part.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A reply, decoded.
pub type Reply = OwnedFrame;

/// The text of a simple or bulk string reply.
pub fn text(r: &Reply) -> String {
    match r {
        OwnedFrame::SimpleString(b) | OwnedFrame::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        OwnedFrame::Integer(i) => i.to_string(),
        OwnedFrame::Error(e) => e.clone(),
        OwnedFrame::Null => String::new(),
        OwnedFrame::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" "),
    }
}

/// One connection.
pub struct Conn {
    stream: net::Conn,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    addr: String,
    /// Reads wait at most this long before checking `host::cancelled`
    /// (set with [`Conn::poll_every`]); `None` blocks.
    poll: Option<std::time::Duration>,
}

/// Read piece.
const READ_PIECE: usize = 1 << 20;

impl Conn {
    /// Connects (TLS first when [`Target::tls`] says so) and authenticates;
    /// a failed TLS handshake, a wrong password, a missing one, an
    /// unreachable server and an address that was not granted each get
    /// their own message.
    pub fn open(t: &Target) -> Result<Conn, Error> {
        Self::open_with(t, None)
    }

    /// [`Conn::open`], with every read polling `host::cancelled` each
    /// `every` (see [`Conn::poll_every`]).
    pub fn open_polling(t: &Target, every: std::time::Duration) -> Result<Conn, Error> {
        Self::open_with(t, Some(every))
    }

    fn open_with(t: &Target, poll: Option<std::time::Duration>) -> Result<Conn, Error> {
        let addr = t.addr();
        let mut stream = net::connect("Redis", &t.host, t.port)?;
        if t.tls {
            stream = stream.start_tls(&t.host).map_err(|e| e.context("Redis"))?;
        }
        let mut c = Conn { stream, rbuf: Vec::new(), rpos: 0, wbuf: Vec::new(), addr, poll: None };
        if let Some(every) = poll {
            c.poll_every(every)?;
        }
        if let Some(pw) = &t.password {
            let r = match &t.user {
                Some(u) => c.call(&[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => c.call(&[b"AUTH", pw.as_bytes()]),
            };
            match r {
                Ok(_) => {}
                Err(Error::Other(m)) if m.contains("WRONGPASS") || m.contains("invalid password") => {
                    return Err(Error::AccessDenied(format!(
                        "Redis at {}: wrong {} (the server said: {})",
                        c.addr,
                        if t.user.is_some() { "user name or password" } else { "password" },
                        m.rsplit(": ").next().unwrap_or(&m)
                    )));
                }
                Err(Error::Other(m)) if m.contains("without any password configured") => {
                    coffer_sdk::host::warn(format!(
                        "Redis at {} has no password set; the one given is not needed",
                        c.addr
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        // The first real command tells whether a password was needed.
        match c.call(&[b"PING"]) {
            Ok(_) => Ok(c),
            Err(Error::Other(m)) if m.contains("NOAUTH") => Err(Error::AccessDenied(format!(
                "Redis at {} requires a password: give --set password_file=FILE or --set password_env=VAR",
                c.addr
            ))),
            Err(e) => Err(e),
        }
    }

    /// The server's address (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Appends a command to the write buffer.
    pub fn push(&mut self, args: &[&[u8]]) {
        // Writing into a Vec cannot fail.
        let _ = write!(self.wbuf, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.wbuf, "${}\r\n", a.len());
            self.wbuf.extend_from_slice(a);
            self.wbuf.extend_from_slice(b"\r\n");
        }
    }

    /// Appends bytes that already are RESP commands to the write buffer.
    pub fn push_raw(&mut self, cmds: &[u8]) {
        self.wbuf.extend_from_slice(cmds);
    }

    /// Bytes waiting in the write buffer.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    fn lost(&self, e: std::io::Error) -> Error {
        Error::Unavailable(format!("the connection to Redis at {} failed: {e}", self.addr))
    }

    /// Sends the write buffer.
    pub fn flush(&mut self) -> Result<(), Error> {
        let r = self.stream.write_all(&self.wbuf);
        self.wbuf.clear();
        r.map_err(|e| self.lost(e))
    }

    /// Drops consumed bytes when that is worth it and appends room for one
    /// read; returns where the room starts.
    fn make_room(&mut self) -> usize {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_PIECE {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let old = self.rbuf.len();
        self.rbuf.resize(old + READ_PIECE, 0);
        old
    }

    fn read_more(&mut self) -> Result<(), Error> {
        let old = self.make_room();
        let n = loop {
            match self.stream.read(&mut self.rbuf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) && self.poll.is_some() => {
                    if coffer_sdk::host::cancelled() {
                        self.rbuf.truncate(old);
                        return Err(Error::Cancelled);
                    }
                }
                Err(e) => {
                    self.rbuf.truncate(old);
                    return Err(self.lost(e));
                }
            }
        };
        self.rbuf.truncate(old + n);
        if n == 0 {
            return Err(Error::Unavailable(format!("Redis at {} closed the connection", self.addr)));
        }
        Ok(())
    }

    /// Reads one reply; an error reply is returned as a frame, not an Err.
    pub fn reply(&mut self) -> Result<Reply, Error> {
        loop {
            match redis_protocol::resp2::decode::decode(&self.rbuf[self.rpos..]) {
                Ok(Some((frame, used))) => {
                    self.rpos += used;
                    return Ok(frame);
                }
                Ok(None) => self.read_more()?,
                Err(e) => {
                    return Err(Error::Corrupt(format!("Redis at {} sent a malformed reply: {e:?}", self.addr)));
                }
            }
        }
    }

    /// Sends one command and waits for its reply; an error reply becomes
    /// [`Error::Other`] with the command's name and the server's words.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, Error> {
        self.push(args);
        self.flush()?;
        match self.reply()? {
            OwnedFrame::Error(e) => Err(Error::Other(format!(
                "Redis at {}: {} failed: {e}",
                self.addr,
                String::from_utf8_lossy(args[0]).to_uppercase()
            ))),
            r => Ok(r),
        }
    }

    /// `INFO section`, as field → value.
    pub fn info(&mut self, section: &str) -> Result<BTreeMap<String, String>, Error> {
        let r = self.call(&[b"INFO", section.as_bytes()])?;
        Ok(text(&r)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// Reads one `\n`-terminated line of raw bytes (without the line end).
    pub fn line(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(i) = self.rbuf[self.rpos..].iter().position(|b| *b == b'\n') {
                let mut l = self.rbuf[self.rpos..self.rpos + i].to_vec();
                self.rpos += i + 1;
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                return Ok(l);
            }
            if self.rbuf.len() - self.rpos > 4096 {
                return Err(Error::Corrupt(format!("Redis at {} sent a line of more than 4 KiB", self.addr)));
            }
            self.read_more()?;
        }
    }

    /// Raw bytes: what is buffered first, then the socket (`Ok(0)` when the
    /// server closed the connection). While polling, a stop is an error
    /// whose text is exactly `cancelled`.
    pub fn read_raw(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.rpos < self.rbuf.len() {
            let n = out.len().min(self.rbuf.len() - self.rpos);
            out[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
            self.rpos += n;
            return Ok(n);
        }
        loop {
            match self.stream.read(out) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && self.poll.is_some() => {
                    if coffer_sdk::host::cancelled() {
                        return Err(std::io::Error::other("cancelled"));
                    }
                }
                r => return r,
            }
        }
    }

    /// Makes every read wait at most `every` before it checks
    /// `host::cancelled` (and [`Conn::read_some`] return).
    pub fn poll_every(&mut self, every: std::time::Duration) -> Result<(), Error> {
        self.stream.set_read_timeout(Some(every)).map_err(|e| self.lost(e))?;
        self.poll = Some(every);
        Ok(())
    }

    /// Bytes buffered and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Marks `n` buffered bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
    }

    /// Reads what the socket has, waiting at most the poll interval:
    /// `Ok(false)` when nothing came in that time.
    pub fn read_some(&mut self) -> Result<bool, Error> {
        let before = self.rbuf.len() - self.rpos;
        match self.poll {
            Some(_) => {
                // read_more retries timeouts itself; one bounded read here.
                let old = self.make_room();
                let r = self.stream.read(&mut self.rbuf[old..]);
                let n = match r {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted || is_timeout(&e) => {
                        self.rbuf.truncate(old);
                        return Ok(false);
                    }
                    Err(e) => {
                        self.rbuf.truncate(old);
                        return Err(self.lost(e));
                    }
                };
                self.rbuf.truncate(old + n);
                if n == 0 {
                    return Err(Error::Unavailable(format!("Redis at {} closed the connection", self.addr)));
                }
                Ok(true)
            }
            None => {
                self.read_more()?;
                Ok(self.rbuf.len() - self.rpos > before)
            }
        }
    }
}

/// A read that ran into its timeout (`WouldBlock` on Unix, `TimedOut`
/// elsewhere).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// The RDB version the server at the other end loads, from `INFO server`.
pub fn server_rdb_version(info: &BTreeMap<String, String>) -> Option<u16> {
    crate::rdb::rdb_version_of(info.get("redis_version")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("redis://127.0.0.1:6380/", None, None).unwrap();
        assert_eq!((t.addr(), t.user, t.password), ("127.0.0.1:6380".into(), None, None));
        let t = Target::parse("redis://alice:s%40cret@10.0.0.1", None, None).unwrap();
        assert_eq!((t.port, t.user.as_deref(), t.password.as_deref()), (6379, Some("alice"), Some("s@cret")));
        let t = Target::parse("redis://:<redacted>@127.0.0.1", None, Some("pw")).unwrap();
        assert_eq!(t.password.as_deref(), Some("pw"));
        assert!(Target::parse("http://x", None, None).is_err());
        let t = Target::parse("rediss://cache.internal:6380/", None, None).unwrap();
        assert_eq!((t.addr(), t.tls), ("cache.internal:6380".into(), true));
        assert!(format!("{t:?}").find("pw").is_none(), "Debug never shows the password");
        let named = Target::parse("redis://cache.internal:6379", None, None).unwrap();
        assert_eq!((named.addr(), named.tls), ("cache.internal:6379".into(), false));
        assert_eq!(coffer_sdk::net::ip_literal(&named.host), None, "a host name is looked up when connecting");
    }
}
