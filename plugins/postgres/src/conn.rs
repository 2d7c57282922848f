//! A blocking PostgreSQL client for the replication protocol over the
//! address the host granted, in plain TCP or TLS (`SSLRequest`, then the
//! host's TLS): startup in physical-replication mode,
//! authentication (trust, password, MD5, SCRAM-SHA-256 through
//! `postgres-protocol`), simple queries, and the COPY stream of a
//! `BASE_BACKUP`.

use std::io::{Read, Write};

use bytes::BytesMut;
use coffer_sdk::Error;
use coffer_sdk::net;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;

/// Where a server is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written in the URL.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, never shown.
    pub password: Option<String>,
    /// Whether the connection asks for TLS before it logs in.
    pub tls: Tls,
}

/// Whether a connection asks the server for TLS (`SSLRequest`) before it
/// logs in (from `sslmode`). How strictly the server's certificate is
/// checked is the host's business: it reads `sslmode` itself (a
/// `tls-verify` grant), checks chain and name unless the operator typed a
/// looser mode, and presents the client certificate the operator
/// configured, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tls {
    /// Plain TCP.
    #[default]
    Off,
    /// TLS when the server offers it, plain TCP when it answers that it
    /// has none (`ssl = off`) or the handshake fails (libpq's `prefer`).
    Preferred,
    /// TLS, or no connection.
    Required,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.addr())?;
        match self.tls {
            Tls::Off => Ok(()),
            Tls::Preferred => f.write_str(" (TLS if offered)"),
            Tls::Required => f.write_str(" (TLS)"),
        }
    }
}

impl Tls {
    /// From libpq's `sslmode` (`prefer` when none is given, as libpq).
    /// `allow` is taken as `prefer`: TLS when offered.
    pub fn from_sslmode(mode: Option<&str>) -> Result<Tls, Error> {
        Ok(match mode.unwrap_or("prefer") {
            "disable" => Tls::Off,
            "allow" | "prefer" => Tls::Preferred,
            "require" | "verify-ca" | "verify-full" => Tls::Required,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "sslmode: `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

impl Target {
    /// Parses `postgres://user[:password]@host[:port][/db]` (or
    /// `postgresql://`); `user` and `password` from the config win over
    /// the URL's.
    pub fn parse(url: &str, user: Option<&str>, password: Option<&str>) -> Result<Target, Error> {
        let bad = |why: &str| Error::InvalidConfig(format!("url: {why} (expected postgres://user@host:port/)"));
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if u.scheme() != "postgres" && u.scheme() != "postgresql" {
            return Err(bad(&format!("the scheme is `{}`", u.scheme())));
        }
        let host = u.host_str().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_string();
        let port = u.port().unwrap_or(5432);
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let url_user = (!u.username().is_empty()).then(|| decode(u.username()));
        let user = user.map(str::to_string).or(url_user).ok_or_else(|| bad("no user"))?;
        let url_password = u.password().map(decode).filter(|p| p != "<redacted>");
        Ok(Target { host, port, user, password: password.map(str::to_string).or(url_password), tls: Tls::Off })
    }

    /// `host:port`, for messages and grants.
    pub fn addr(&self) -> String {
        coffer_sdk::net::host_port(&self.host, self.port)
    }
}

/// A server error: SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// The five-character SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The detail or hint, if any.
    pub detail: String,
}

impl ServerError {
    fn from_body(body: &ErrorResponseBody) -> ServerError {
        let mut e = ServerError { code: String::new(), message: String::new(), detail: String::new() };
        let mut fields = body.fields();
        while let Ok(Some(f)) = fields.next() {
            let v = String::from_utf8_lossy(f.value_bytes());
            match f.type_() {
                b'C' => e.code = v.into_owned(),
                b'M' => e.message = v.into_owned(),
                b'D' | b'H' => {
                    if !e.detail.is_empty() {
                        e.detail.push(' ');
                    }
                    e.detail.push_str(&v);
                }
                _ => {}
            }
        }
        e
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        if !self.code.is_empty() {
            write!(f, " [SQLSTATE {}]", self.code)?;
        }
        Ok(())
    }
}

/// What a message read returned: a message, or the server's error.
pub enum Got {
    /// A message other than an error.
    Msg(Message),
    /// An `ErrorResponse`.
    Failed(ServerError),
}

/// Rows of a result, each column as text (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// One replication connection.
pub struct Conn {
    stream: net::Conn,
    rbuf: BytesMut,
    wbuf: BytesMut,
    addr: String,
    /// `server_version` as the server reported it.
    pub server_version: String,
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 << 10;

impl Conn {
    /// Connects, asks for TLS as [`Target::tls`] says, and logs in in
    /// physical-replication mode.
    pub fn open(t: &Target) -> Result<Conn, Error> {
        let addr = t.addr();
        let mut stream = net::connect("PostgreSQL", &t.host, t.port)?;
        if t.tls != Tls::Off {
            stream = match request_tls(stream, t, &addr)? {
                Ok(s) => s,
                // libpq's `prefer`: a TLS connection that fails is retried
                // without TLS.
                Err(e) if t.tls == Tls::Preferred => {
                    coffer_sdk::host::warn(format!(
                        "{e}; going on WITHOUT TLS, as sslmode=prefer (the default) allows: set sslmode=verify-full \
                         with ca_file to require a checked server, or sslmode=require to encrypt without checking"
                    ));
                    net::connect("PostgreSQL", &t.host, t.port)?
                }
                Err(e) => return Err(e),
            };
        }
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK * 2),
            wbuf: BytesMut::new(),
            addr,
            server_version: String::new(),
        };
        frontend::startup_message(
            [("user", t.user.as_str()), ("replication", "true"), ("application_name", "coffer")],
            &mut c.wbuf,
        )
        .map_err(|e| Error::other(format!("building the startup message: {e}")))?;
        c.flush()?;
        c.authenticate(t)?;
        // Parameter reports, the key data, then ReadyForQuery.
        loop {
            match c.next_message()? {
                Got::Msg(Message::ReadyForQuery(_)) => break,
                Got::Msg(Message::ParameterStatus(p)) => {
                    if p.name().ok() == Some("server_version") {
                        c.server_version = p.value().unwrap_or_default().to_string();
                    }
                }
                Got::Msg(_) => {}
                Got::Failed(e) => return Err(c.login_failure(t, e)),
            }
        }
        Ok(c)
    }

    fn authenticate(&mut self, t: &Target) -> Result<(), Error> {
        let addr = self.addr.clone();
        let need_password = |what: &str| {
            Error::AccessDenied(format!(
                "PostgreSQL at {addr} asks {} for a password ({what}); give password_file or password_env",
                t.user
            ))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message()? {
                Got::Msg(Message::AuthenticationOk) => return Ok(()),
                Got::Msg(Message::AuthenticationCleartextPassword) => {
                    let p = t.password.as_deref().ok_or_else(|| need_password("password"))?;
                    frontend::password_message(p.as_bytes(), &mut self.wbuf).map_err(Error::other)?;
                    self.flush()?;
                }
                Got::Msg(Message::AuthenticationMd5Password(body)) => {
                    let p = t.password.as_deref().ok_or_else(|| need_password("md5"))?;
                    let hash = md5_hash(t.user.as_bytes(), p.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(Error::other)?;
                    self.flush()?;
                }
                Got::Msg(Message::AuthenticationSasl(body)) => {
                    let p = t.password.as_deref().ok_or_else(|| need_password("SCRAM-SHA-256"))?;
                    let mut offered = Vec::new();
                    let mut mechs = body.mechanisms();
                    while let Ok(Some(m)) = mechs.next() {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(Error::Unsupported(format!(
                            "PostgreSQL at {} offers SASL mechanisms {} and coffer speaks SCRAM-SHA-256 only \
                             (SCRAM-SHA-256-PLUS binds to the server's certificate, which the host keeps to itself)",
                            self.addr,
                            offered.join(", ")
                        )));
                    }
                    let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(Error::other)?;
                    self.flush()?;
                    scram = Some(s);
                }
                Got::Msg(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("a SASL continue before SASL began"))?;
                    s.update(body.data()).map_err(|e| {
                        Error::Corrupt(format!("PostgreSQL at {} sent a bad SCRAM message: {e}", self.addr))
                    })?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(Error::other)?;
                    self.flush()?;
                }
                Got::Msg(Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().ok_or_else(|| self.protocol("a SASL final before SASL began"))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::AccessDenied(format!(
                            "PostgreSQL at {} did not prove it knows the password (SCRAM server signature: {e})",
                            self.addr
                        ))
                    })?;
                }
                Got::Msg(
                    Message::AuthenticationGss
                    | Message::AuthenticationKerberosV5
                    | Message::AuthenticationSspi
                    | Message::AuthenticationScmCredential
                    | Message::AuthenticationGssContinue(_),
                ) => {
                    return Err(Error::Unsupported(format!(
                        "PostgreSQL at {} asks for GSSAPI/Kerberos/SSPI authentication; coffer supports trust, \
                         password, md5 and scram-sha-256",
                        self.addr
                    )));
                }
                Got::Msg(_) => return Err(self.protocol("an unexpected message during authentication")),
                Got::Failed(e) => return Err(self.login_failure(t, e)),
            }
        }
    }

    /// Turns a refusal at login into an error that says what to change.
    fn login_failure(&self, t: &Target, e: ServerError) -> Error {
        let a = &self.addr;
        let u = &t.user;
        match e.code.as_str() {
            "28P01" => Error::AccessDenied(format!("PostgreSQL at {a} refused the password of role {u}: {e}")),
            "28000" if e.message.contains("pg_hba") => Error::AccessDenied(format!(
                "PostgreSQL at {a} has no pg_hba.conf line that lets {u} open a replication connection (add \
                 `host replication {u} <client address>/32 scram-sha-256`): {e}"
            )),
            "28000" | "42501" => Error::AccessDenied(format!(
                "role {u} may not open a replication connection to PostgreSQL at {a}; it needs the REPLICATION \
                 attribute (ALTER ROLE {u} REPLICATION): {e}"
            )),
            "53300" if e.message.contains("max_wal_senders") => Error::Unavailable(format!(
                "PostgreSQL at {a} allows no more replication connections: {e}. With wal_level = minimal \
                 max_wal_senders is 0: set wal_level = replica and max_wal_senders >= 2, then restart"
            )),
            "57P03" => Error::Unavailable(format!("PostgreSQL at {a} is starting up or shutting down: {e}")),
            _ => Error::AccessDenied(format!("PostgreSQL at {a} refused the connection of {u}: {e}")),
        }
    }

    /// The server's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn protocol(&self, what: &str) -> Error {
        Error::Corrupt(format!("PostgreSQL at {} sent {what}", self.addr))
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) -> Result<(), Error> {
        let r = self.stream.write_all(&self.wbuf).and_then(|_| self.stream.flush());
        self.wbuf.clear();
        r.map_err(|e| Error::Unavailable(format!("PostgreSQL at {}: sending failed: {e}", self.addr)))
    }

    /// The next message (notices are skipped).
    pub fn next_message(&mut self) -> Result<Got, Error> {
        match self.next_message_polled(|| false)? {
            Some(m) => Ok(m),
            None => Err(Error::Cancelled),
        }
    }

    /// The next message, or `None` once `stop()` says so: with a read
    /// timeout set ([`Conn::set_read_timeout`]), `stop` is asked each time
    /// the link is quiet for that long.
    pub fn next_message_polled(&mut self, stop: impl Fn() -> bool) -> Result<Option<Got>, Error> {
        loop {
            match Message::parse(&mut self.rbuf) {
                Ok(Some(Message::ErrorResponse(body))) => return Ok(Some(Got::Failed(ServerError::from_body(&body)))),
                Ok(Some(Message::NoticeResponse(_))) => continue,
                Ok(Some(m)) => return Ok(Some(Got::Msg(m))),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(&format!("an unreadable message ({e})"))),
            }
            let have = self.rbuf.len();
            self.rbuf.resize(have + READ_CHUNK, 0);
            let n = match self.stream.read(&mut self.rbuf[have..]) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    self.rbuf.truncate(have);
                    if stop() {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => {
                    self.rbuf.truncate(have);
                    return Err(Error::Unavailable(format!("PostgreSQL at {}: reading failed: {e}", self.addr)));
                }
            };
            self.rbuf.truncate(have + n);
            if n == 0 {
                return Err(Error::Unavailable(format!(
                    "PostgreSQL at {} closed the connection (the server stopped or was restarted)",
                    self.addr
                )));
            }
        }
    }

    /// After `START_REPLICATION`: waits for the server's
    /// `CopyBothResponse` (which the message parser does not know), or its
    /// refusal. `None` once `stop()` says so.
    pub fn start_copy_both(&mut self, stop: impl Fn() -> bool) -> Result<Option<Result<(), ServerError>>, Error> {
        loop {
            if self.rbuf.first() == Some(&b'W') && self.rbuf.len() >= 5 {
                let len = u32::from_be_bytes(self.rbuf[1..5].try_into().expect("4 bytes")) as usize;
                if self.rbuf.len() > len {
                    let _ = self.rbuf.split_to(1 + len);
                    return Ok(Some(Ok(())));
                }
            }
            // A notice may come first; skip it here, where a `W` after it
            // is understood.
            if self.rbuf.first() == Some(&b'N') && self.rbuf.len() >= 5 {
                let len = u32::from_be_bytes(self.rbuf[1..5].try_into().expect("4 bytes")) as usize;
                if self.rbuf.len() > len {
                    let _ = self.rbuf.split_to(1 + len);
                    continue;
                }
            }
            if self.rbuf.first().is_some_and(|b| *b != b'W' && *b != b'N') {
                match self.next_message_polled(&stop)? {
                    Some(Got::Failed(e)) => return Ok(Some(Err(e))),
                    Some(Got::Msg(_)) => continue,
                    None => return Ok(None),
                }
            }
            let have = self.rbuf.len();
            self.rbuf.resize(have + READ_CHUNK, 0);
            match self.stream.read(&mut self.rbuf[have..]) {
                Ok(0) => {
                    self.rbuf.truncate(have);
                    return Err(Error::Unavailable(format!("PostgreSQL at {} closed the connection", self.addr)));
                }
                Ok(n) => self.rbuf.truncate(have + n),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    self.rbuf.truncate(have);
                    if stop() {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    self.rbuf.truncate(have);
                    return Err(Error::Unavailable(format!("PostgreSQL at {}: reading failed: {e}", self.addr)));
                }
            }
        }
    }

    /// How long a read waits before [`Conn::next_message_polled`] asks
    /// whether to stop (`None`: forever).
    pub fn set_read_timeout(&mut self, t: Option<std::time::Duration>) -> Result<(), Error> {
        self.stream
            .set_read_timeout(t)
            .map_err(|e| Error::Other(format!("PostgreSQL at {}: setting a read timeout: {e}", self.addr)))
    }

    /// Sends one CopyData message (in a COPY BOTH exchange).
    pub fn send_copy_data(&mut self, data: &[u8]) -> Result<(), Error> {
        frontend::CopyData::new(data).map_err(Error::other)?.write(&mut self.wbuf);
        self.flush()
    }

    /// Ends our side of a COPY exchange.
    pub fn send_copy_done(&mut self) -> Result<(), Error> {
        frontend::copy_done(&mut self.wbuf);
        self.flush()
    }

    /// Sends a simple query.
    pub fn send_query(&mut self, q: &str) -> Result<(), Error> {
        frontend::query(q, &mut self.wbuf).map_err(Error::other)?;
        self.flush()
    }

    /// Runs a simple query and returns its rows as text (NULL as `None`),
    /// or the server's error.
    pub fn query(&mut self, q: &str) -> Result<Result<Rows, ServerError>, Error> {
        self.send_query(q)?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            match self.next_message()? {
                Got::Msg(Message::DataRow(r)) => rows.push(row_text(&r)?),
                Got::Msg(Message::ReadyForQuery(_)) => break,
                Got::Msg(_) => {}
                Got::Failed(e) => failed = Some(e),
            }
        }
        Ok(match failed {
            Some(e) => Err(e),
            None => Ok(rows),
        })
    }

    /// `SHOW name`, as text.
    pub fn show(&mut self, name: &str) -> Result<String, Error> {
        match self.query(&format!("SHOW {name}"))? {
            Ok(rows) => Ok(rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()).unwrap_or_default()),
            Err(e) => Err(Error::other(format!("PostgreSQL at {}: SHOW {name}: {e}", self.addr))),
        }
    }
}

/// Sends `SSLRequest` and, when the server agrees, makes the connection
/// TLS; when it declines, goes on in plain TCP if `t.tls` allows. The inner
/// error is a TLS handshake that failed (the server's certificate refused,
/// say), which `prefer` answers by connecting again without TLS.
fn request_tls(mut stream: net::Conn, t: &Target, addr: &str) -> Result<Result<net::Conn, Error>, Error> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    let lost = |e: std::io::Error| Error::Unavailable(format!("PostgreSQL at {addr}: asking for TLS failed: {e}"));
    stream.write_all(&buf).and_then(|_| stream.flush()).map_err(lost)?;
    // One byte, read alone: whatever follows an `S` belongs to TLS, and a
    // server that sent more in plain text is not trusted with it.
    let mut answer = [0u8; 1];
    loop {
        match stream.read(&mut answer) {
            Ok(0) => {
                return Err(Error::Unavailable(format!(
                    "PostgreSQL at {addr} closed the connection when asked for TLS"
                )));
            }
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(lost(e)),
        }
    }
    match (answer[0], t.tls) {
        (b'S', _) => Ok(stream.start_tls(&t.host).map_err(|e| e.context("PostgreSQL"))),
        (b'N', Tls::Preferred) => {
            coffer_sdk::host::debug(format!(
                "PostgreSQL at {addr} offers no TLS (ssl = off); going on without it, as TLS is only preferred"
            ));
            Ok(Ok(stream))
        }
        (b'N', _) => Err(Error::Unsupported(format!(
            "PostgreSQL at {addr} offers no TLS (ssl = off in postgresql.conf) and TLS is required: turn ssl on \
             with a certificate, or stop requiring TLS"
        ))),
        (b, _) => Err(Error::Corrupt(format!(
            "PostgreSQL at {addr} answered the TLS request with byte {b:#04x}, neither `S` nor `N`"
        ))),
    }
}

/// The columns of a data row as text.
pub fn row_text(r: &postgres_protocol::message::backend::DataRowBody) -> Result<Vec<Option<String>>, Error> {
    let buf = r.buffer();
    let mut out = Vec::new();
    let mut ranges = r.ranges();
    loop {
        match ranges.next() {
            Ok(Some(Some(range))) => out.push(Some(String::from_utf8_lossy(&buf[range]).into_owned())),
            Ok(Some(None)) => out.push(None),
            Ok(None) => break,
            Err(e) => return Err(Error::Corrupt(format!("an unreadable data row: {e}"))),
        }
    }
    Ok(out)
}

/// Quotes a string literal for a replication command.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("postgres://backup:s%40cret@127.0.0.1:5433/postgres", None, None).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.user.as_str()), ("127.0.0.1", 5433, "backup"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.tls, Tls::Off, "a URL alone asks for no TLS");
        assert!(!format!("{t:?}").contains("cret"));
        let t = Target::parse("postgresql://u:<redacted>@[::1]/", Some("v"), Some("pw")).unwrap();
        assert_eq!((t.addr().as_str(), t.user.as_str(), t.password.as_deref()), ("[::1]:5432", "v", Some("pw")));
        let t = Target::parse("postgres://u:%3Credacted%3E@127.0.0.1/", None, None).unwrap();
        assert_eq!(t.password, None, "a redacted password from a stored config is not a password");
        assert!(Target::parse("mysql://u@h/", None, None).is_err());
        assert!(Target::parse("postgres://127.0.0.1/", None, None).unwrap_err().to_string().contains("no user"));
        assert_eq!(quote("it's"), "'it''s'");
    }
}
