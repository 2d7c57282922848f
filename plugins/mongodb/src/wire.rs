//! MongoDB's wire protocol, the client's side: `OP_MSG` commands over a
//! connection the host granted (plain TCP or the host's TLS), with
//! `OP_COMPRESSED` snappy when the server offers it, the `hello`
//! handshake, and SCRAM or X.509 authentication.
//!
//! Replies are kept as raw BSON: a cursor's batch is handed on document by
//! document as the server sent the bytes, never decoded into values, so a
//! backup stores exactly what the server holds.

use std::io::{Read, Write};
use std::time::Duration;

use bson::{Bson, Document, RawDocument, RawDocumentBuf, doc};
use coffer_sdk::{Error, host, net};

use crate::scram::{Mechanism, Scram};
use crate::uri::{AuthMechanism, Credentials};

/// `OP_REPLY`: the legacy reply, which no server should send to `OP_MSG`.
const OP_REPLY: i32 = 1;
/// `OP_COMPRESSED`.
const OP_COMPRESSED: i32 = 2012;
/// `OP_MSG`.
const OP_MSG: i32 = 2013;
/// `OP_MSG` flag: a CRC-32C follows the sections.
const CHECKSUM_PRESENT: u32 = 1;
/// `OP_MSG` flag: another message follows without a request.
const MORE_TO_COME: u32 = 1 << 1;
/// Compressor id of snappy in `OP_COMPRESSED`.
const SNAPPY: u8 = 1;
/// Compressor id of "none" (the noop compressor).
const NOOP: u8 = 0;
/// The largest reply taken before the server says its own limit (what
/// MongoDB servers have said since 3.6).
const DEFAULT_MAX_MESSAGE: usize = 48_000_000;
/// The oldest wire version spoken: MongoDB 3.6, the first with `OP_MSG`.
const MIN_WIRE_VERSION: i32 = 6;
/// How long a command waits for its reply before the connection counts
/// as lost (a tailing `getMore` passes its own shorter wait to the server).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// A server's error reply: `{ok: 0, code, codeName, errmsg}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    /// `code`.
    pub code: i32,
    /// `codeName`.
    pub code_name: String,
    /// `errmsg`.
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code_name.is_empty() {
            write!(f, "{} (code {})", self.message, self.code)
        } else {
            write!(f, "{} ({} {})", self.message, self.code_name, self.code)
        }
    }
}

/// Codes a caller acts on.
pub mod code {
    /// `Unauthorized`.
    pub const UNAUTHORIZED: i32 = 13;
    /// `AuthenticationFailed`.
    pub const AUTHENTICATION_FAILED: i32 = 18;
    /// `NamespaceNotFound`.
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    /// `CursorNotFound`.
    pub const CURSOR_NOT_FOUND: i32 = 43;
    /// `CommandNotFound`.
    pub const COMMAND_NOT_FOUND: i32 = 59;
    /// `QueryPlanKilled`.
    pub const QUERY_PLAN_KILLED: i32 = 175;
    /// `BadValue` (among others, a hint naming no index).
    pub const BAD_VALUE: i32 = 2;
    /// `CappedPositionLost`: a tailing cursor's position fell off.
    pub const CAPPED_POSITION_LOST: i32 = 136;
    /// `OperationFailed`, which also names a hint without its index.
    pub const OPERATION_FAILED: i32 = 96;
}

/// What a command failed with.
#[derive(Debug)]
pub enum CommandError {
    /// The server answered `ok: 0`.
    Server(ServerError),
    /// Anything else: the connection, a malformed reply, cancellation.
    Other(Error),
}

impl From<Error> for CommandError {
    fn from(e: Error) -> Self {
        CommandError::Other(e)
    }
}

impl CommandError {
    /// The server's code, when the server answered.
    pub fn code(&self) -> Option<i32> {
        match self {
            CommandError::Server(e) => Some(e.code),
            CommandError::Other(_) => None,
        }
    }

    /// As a coffer error, `what` saying what was being done.
    pub fn into_error(self, what: &str) -> Error {
        match self {
            CommandError::Other(e) => e.context(what),
            CommandError::Server(e) if e.code == code::UNAUTHORIZED => Error::AccessDenied(format!(
                "{what}: the server refused: {e}; give the backup user the `backup` role (or `read` on this \
                 database), or leave the database out with exclude="
            )),
            CommandError::Server(e) => Error::Other(format!("{what}: the server said: {e}")),
        }
    }
}

/// What `hello` said about the server.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// `isWritablePrimary` (or the legacy `ismaster`).
    pub writable_primary: bool,
    /// `secondary`.
    pub secondary: bool,
    /// `setName`, on a replica-set member.
    pub set_name: Option<String>,
    /// `hosts` (and `passives`) of the set, as the set's config names them.
    pub hosts: Vec<String>,
    /// `primary`: the member that is primary now, as the set names it.
    pub primary: Option<String>,
    /// `arbiterOnly`.
    pub arbiter: bool,
    /// `msg: "isdbgrid"`: a mongos router.
    pub mongos: bool,
    /// `maxWireVersion`.
    pub max_wire_version: i32,
    /// `maxMessageSizeBytes`.
    pub max_message: usize,
    /// `maxWriteBatchSize`.
    pub max_write_batch: usize,
    /// `saslSupportedMechs`, when asked.
    pub sasl_mechs: Option<Vec<String>>,
    /// `compression`: what the server agreed to.
    pub compression: Vec<String>,
}

impl Hello {
    fn from_reply(d: &Document) -> Hello {
        let int = |k: &str, default: i64| match d.get(k) {
            Some(Bson::Int32(i)) => i64::from(*i),
            Some(Bson::Int64(i)) => *i,
            Some(Bson::Double(f)) => *f as i64,
            _ => default,
        };
        let flag = |k: &str| d.get_bool(k).unwrap_or(false);
        let strings = |k: &str| -> Vec<String> {
            d.get_array(k)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let mut hosts = strings("hosts");
        hosts.extend(strings("passives"));
        Hello {
            writable_primary: flag("isWritablePrimary") || flag("ismaster"),
            secondary: flag("secondary"),
            set_name: d.get_str("setName").ok().map(str::to_string),
            hosts,
            primary: d.get_str("primary").ok().map(str::to_string),
            arbiter: flag("arbiterOnly"),
            mongos: d.get_str("msg").is_ok_and(|m| m == "isdbgrid"),
            max_wire_version: int("maxWireVersion", 0) as i32,
            max_message: int("maxMessageSizeBytes", DEFAULT_MAX_MESSAGE as i64).clamp(1 << 20, 256 << 20) as usize,
            max_write_batch: int("maxWriteBatchSize", 100_000).clamp(1, 1_000_000) as usize,
            sasl_mechs: d.contains_key("saslSupportedMechs").then(|| strings("saslSupportedMechs")),
            compression: strings("compression"),
        }
    }
}

/// One connection to one server.
pub struct Conn {
    stream: net::Conn,
    /// `host:port`, for messages.
    addr: String,
    next_id: i32,
    snappy: bool,
    /// What the server said in the handshake.
    pub hello: Hello,
    /// Reads go to a secondary: commands carry a read preference that
    /// allows it.
    secondary_ok: bool,
    /// Whether the server's replies so far were well formed (a reply that
    /// is not is blamed on "not a MongoDB server" before the handshake).
    handshaken: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoDB at {}", self.addr)
    }
}

/// What the plugin calls itself in `hello`.
fn client_metadata() -> Document {
    doc! {
        "driver": {"name": "coffer-mongodb", "version": env!("CARGO_PKG_VERSION")},
        "os": {"type": "wasi"},
        "platform": "coffer plugin (wasm32-wasip2)",
        "application": {"name": "coffer"},
    }
}

impl Conn {
    /// Connects to `host:port` (TLS from the first byte when `tls`: the
    /// host checks the certificate), runs `hello`, and authenticates.
    pub fn open(host: &str, port: u16, tls: bool, creds: Option<&Credentials>, compress: bool) -> Result<Conn, Error> {
        let addr = net::host_port(host, port);
        let mut stream = net::connect("MongoDB", host, port)?;
        if tls {
            stream = stream.start_tls(host).map_err(|e| e.context("MongoDB"))?;
        }
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(|e| Error::from(e).context(&addr))?;
        let mut c = Conn {
            stream,
            addr,
            next_id: 1,
            snappy: false,
            hello: Hello::default(),
            secondary_ok: false,
            handshaken: false,
        };
        c.handshake(creds, compress)?;
        if let Some(creds) = creds {
            c.authenticate(creds)?;
        }
        Ok(c)
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Lets reads run on a secondary (commands carry `$readPreference`
    /// `primaryPreferred`, which a secondary serves).
    pub fn allow_secondary(&mut self) {
        self.secondary_ok = true;
    }

    fn handshake(&mut self, creds: Option<&Credentials>, compress: bool) -> Result<(), Error> {
        let mut cmd = doc! { "hello": 1i32, "client": client_metadata() };
        if compress {
            cmd.insert("compression", vec![Bson::from("snappy")]);
        }
        if let Some(c) = creds
            && matches!(c.mechanism, None | Some(AuthMechanism::Scram(_)))
            && let Some(user) = &c.user
        {
            cmd.insert("saslSupportedMechs", format!("{}.{user}", c.source));
        }
        let reply = match self.run("admin", cmd.clone()) {
            Err(CommandError::Server(e)) if e.code == code::COMMAND_NOT_FOUND => {
                // Before 4.4.2 the handshake is `isMaster`.
                cmd.remove("hello");
                let mut legacy = doc! { "isMaster": 1i32 };
                legacy.extend(cmd);
                self.run("admin", legacy)
            }
            other => other,
        };
        let reply = reply.map_err(|e| match e {
            CommandError::Server(e) => Error::Other(format!("MongoDB at {}: the handshake failed: {e}", self.addr)),
            CommandError::Other(e) => e,
        })?;
        self.handshaken = true;
        self.hello = Hello::from_reply(&reply);
        if self.hello.max_wire_version < MIN_WIRE_VERSION {
            return Err(Error::Unsupported(format!(
                "MongoDB at {} speaks wire version {}; coffer needs MongoDB 3.6 or later (wire version 6, OP_MSG)",
                self.addr, self.hello.max_wire_version
            )));
        }
        self.snappy = self.hello.compression.iter().any(|c| c == "snappy");
        Ok(())
    }

    fn authenticate(&mut self, creds: &Credentials) -> Result<(), Error> {
        match creds.mechanism {
            Some(AuthMechanism::X509) => {
                let mut cmd = doc! { "authenticate": 1i32, "mechanism": "MONGODB-X509" };
                if let Some(u) = &creds.user {
                    cmd.insert("user", u.clone());
                }
                self.run("$external", cmd).map_err(|e| self.auth_error(e, creds, "MONGODB-X509"))?;
                Ok(())
            }
            Some(AuthMechanism::Scram(m)) => self.scram(creds, m),
            None => {
                // What the server lists for this user; SCRAM-SHA-256 when it
                // may, as the drivers do.
                let mech = match &self.hello.sasl_mechs {
                    Some(list) if list.iter().any(|m| m == "SCRAM-SHA-256") => Mechanism::Sha256,
                    Some(list) if list.iter().any(|m| m == "SCRAM-SHA-1") => Mechanism::Sha1,
                    Some(_) | None if self.hello.max_wire_version >= 7 => Mechanism::Sha256,
                    _ => Mechanism::Sha1,
                };
                self.scram(creds, mech)
            }
        }
    }

    fn auth_error(&self, e: CommandError, creds: &Credentials, mech: &str) -> Error {
        match e {
            CommandError::Server(s) if s.code == code::AUTHENTICATION_FAILED || s.code == code::UNAUTHORIZED => {
                Error::AccessDenied(format!(
                    "MongoDB at {}: authentication of {} on database {} with {mech} failed: wrong user name or \
                     password, or the user is defined on another database (set authSource=)",
                    self.addr,
                    creds.user.as_deref().unwrap_or("(the certificate's subject)"),
                    creds.source
                ))
            }
            CommandError::Server(s) => {
                Error::AccessDenied(format!("MongoDB at {}: authentication with {mech} failed: {s}", self.addr))
            }
            CommandError::Other(e) => e.context(format!("authenticating to MongoDB at {}", self.addr)),
        }
    }

    fn scram(&mut self, creds: &Credentials, mech: Mechanism) -> Result<(), Error> {
        let user = creds.user.as_deref().ok_or_else(|| {
            Error::InvalidConfig("url: a password is set but no user; write mongodb://USER@host/ or set user=".into())
        })?;
        let password = creds.password.as_deref().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "no password for MongoDB user {user}: set password_file= or password_env= (never the URL)"
            ))
        })?;
        let mut scram = Scram::new(mech, user, password).map_err(Error::InvalidConfig)?;
        let addr = self.addr.clone();
        let fail = |e: String| {
            Error::AccessDenied(format!("MongoDB at {addr}: {} authentication of {user}: {e}", mech.name()))
        };
        let start = doc! {
            "saslStart": 1i32,
            "mechanism": mech.name(),
            "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: scram.client_first() },
            "autoAuthorize": 1i32,
            "options": {"skipEmptyExchange": true},
        };
        let source = creds.source.clone();
        let reply = self.run(&source, start).map_err(|e| self.auth_error(e, creds, mech.name()))?;
        let conversation = reply.get("conversationId").cloned().unwrap_or(Bson::Int32(1));
        let payload = payload_of(&reply).map_err(fail)?;
        let proof = scram.client_final(&payload).map_err(fail)?;
        let cont = doc! {
            "saslContinue": 1i32,
            "conversationId": conversation.clone(),
            "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: proof },
        };
        let reply = self.run(&source, cont).map_err(|e| self.auth_error(e, creds, mech.name()))?;
        scram.check_server_final(&payload_of(&reply).map_err(fail)?).map_err(fail)?;
        let mut done = reply.get_bool("done").unwrap_or(false);
        // A server that does not skip the empty exchange wants one more.
        let mut rounds = 0;
        while !done {
            rounds += 1;
            if rounds > 2 {
                return Err(fail("the server does not end the conversation".into()));
            }
            let cont = doc! {
                "saslContinue": 1i32,
                "conversationId": conversation.clone(),
                "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: Vec::new() },
            };
            let reply = self.run(&source, cont).map_err(|e| self.auth_error(e, creds, mech.name()))?;
            done = reply.get_bool("done").unwrap_or(false);
        }
        host::debug(format!("authenticated to MongoDB at {} as {user} ({})", self.addr, mech.name()));
        Ok(())
    }

    /// Runs `cmd` on `db` and returns the reply document; `ok: 0` is
    /// [`CommandError::Server`].
    pub fn run(&mut self, db: &str, cmd: Document) -> Result<Document, CommandError> {
        let raw = self.run_raw(db, cmd, None)?;
        Document::from_reader(raw.as_bytes()).map_err(|e| {
            CommandError::Other(Error::Other(format!("MongoDB at {}: a reply is not BSON: {e}", self.addr)))
        })
    }

    /// Runs `cmd` on `db`, with an optional document sequence (`OP_MSG`
    /// section of kind 1: `insert`'s `documents`, say), and returns the
    /// reply's bytes undecoded.
    pub fn run_raw(
        &mut self,
        db: &str,
        mut cmd: Document,
        sequence: Option<(&str, &[&[u8]])>,
    ) -> Result<RawDocumentBuf, CommandError> {
        cmd.insert("$db", db);
        if self.secondary_ok && !cmd.contains_key("$readPreference") {
            cmd.insert("$readPreference", doc! {"mode": "primaryPreferred"});
        }
        let body = cmd.to_vec().map_err(|e| Error::Other(format!("encoding a command: {e}")))?;
        let mut msg = Vec::with_capacity(body.len() + 64);
        msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
        msg.push(0);
        msg.extend_from_slice(&body);
        if let Some((name, docs)) = sequence {
            let size: usize = 4 + name.len() + 1 + docs.iter().map(|d| d.len()).sum::<usize>();
            msg.push(1);
            msg.extend_from_slice(&(size as i32).to_le_bytes());
            msg.extend_from_slice(name.as_bytes());
            msg.push(0);
            for d in docs {
                msg.extend_from_slice(d);
            }
        }
        let id = self.send(OP_MSG, &msg)?;
        let reply = self.receive(id)?;
        let ok = match reply.get("ok") {
            Ok(Some(bson::RawBsonRef::Double(f))) => f == 1.0,
            Ok(Some(bson::RawBsonRef::Int32(i))) => i == 1,
            Ok(Some(bson::RawBsonRef::Int64(i))) => i == 1,
            Ok(Some(bson::RawBsonRef::Boolean(b))) => b,
            _ => false,
        };
        if !ok {
            let text = |k: &str| reply.get_str(k).map(str::to_string).unwrap_or_default();
            let code = match reply.get("code") {
                Ok(Some(bson::RawBsonRef::Int32(i))) => i,
                Ok(Some(bson::RawBsonRef::Int64(i))) => i as i32,
                Ok(Some(bson::RawBsonRef::Double(f))) => f as i32,
                _ => 0,
            };
            return Err(CommandError::Server(ServerError {
                code,
                code_name: text("codeName"),
                message: if text("errmsg").is_empty() { "the command failed".into() } else { text("errmsg") },
            }));
        }
        Ok(reply)
    }

    /// Writes one message with a fresh request id.
    fn send(&mut self, op: i32, payload: &[u8]) -> Result<i32, Error> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut out = Vec::with_capacity(payload.len() + 32);
        // Handshake and authentication go uncompressed, as the protocol
        // requires.
        if self.snappy && self.handshaken && payload.len() > 512 {
            let packed = snap::raw::Encoder::new()
                .compress_vec(payload)
                .map_err(|e| Error::Other(format!("snappy compression failed: {e}")))?;
            let len = 16 + 9 + packed.len();
            out.extend_from_slice(&(len as i32).to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&0i32.to_le_bytes());
            out.extend_from_slice(&OP_COMPRESSED.to_le_bytes());
            out.extend_from_slice(&op.to_le_bytes());
            out.extend_from_slice(&(payload.len() as i32).to_le_bytes());
            out.push(SNAPPY);
            out.extend_from_slice(&packed);
        } else {
            let len = 16 + payload.len();
            out.extend_from_slice(&(len as i32).to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&0i32.to_le_bytes());
            out.extend_from_slice(&op.to_le_bytes());
            out.extend_from_slice(payload);
        }
        if out.len() > self.max_message() {
            return Err(Error::Other(format!(
                "a message of {} bytes is more than MongoDB at {} takes ({} bytes)",
                out.len(),
                self.addr,
                self.max_message()
            )));
        }
        self.stream.write_all(&out).and_then(|()| self.stream.flush()).map_err(|e| self.io_error(e))?;
        Ok(id)
    }

    fn max_message(&self) -> usize {
        if self.hello.max_message == 0 { DEFAULT_MAX_MESSAGE } else { self.hello.max_message }
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock {
            return Error::Unavailable(format!(
                "MongoDB at {} did not answer within {} s",
                self.addr,
                self.stream.read_timeout().unwrap_or(REPLY_TIMEOUT).as_secs()
            ));
        }
        if !self.handshaken && e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Error::Unavailable(format!(
                "{} closed the connection at the handshake: is it a MongoDB server (and does it want TLS: tls=true)?",
                self.addr
            ));
        }
        Error::Unavailable(format!("MongoDB at {}: the connection failed: {e}", self.addr))
    }

    /// Reads the reply to request `id`: its body section, uncompressed.
    fn receive(&mut self, id: i32) -> Result<RawDocumentBuf, Error> {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).map_err(|e| self.io_error(e))?;
        let len = i32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let response_to = i32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let op = i32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        let not_mongo = |why: String| {
            if self.handshaken {
                Error::Other(format!("MongoDB at {}: a malformed reply: {why}", self.addr))
            } else {
                let shown: String =
                    header.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
                Error::Unavailable(format!(
                    "{} does not answer as a MongoDB server ({why}; its first bytes: {shown:?}): check the url's \
                     host and port, and tls=",
                    self.addr
                ))
            }
        };
        if len < 16 + 5 || len as usize > self.max_message() {
            return Err(not_mongo(format!("a message length of {len}")));
        }
        if !matches!(op, OP_MSG | OP_COMPRESSED | OP_REPLY) {
            return Err(not_mongo(format!("opcode {op}")));
        }
        if response_to != id {
            return Err(not_mongo(format!("a reply to request {response_to}, not {id}")));
        }
        let mut body = vec![0u8; len as usize - 16];
        self.stream.read_exact(&mut body).map_err(|e| self.io_error(e))?;
        let (op, body) = if op == OP_COMPRESSED {
            if body.len() < 9 {
                return Err(not_mongo("a compressed message too short to hold its header".into()));
            }
            let original = i32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
            let size = i32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
            if size < 0 || size as usize > self.max_message() {
                return Err(not_mongo(format!("an uncompressed size of {size}")));
            }
            let data = match body[8] {
                NOOP => body[9..].to_vec(),
                SNAPPY => snap::raw::Decoder::new()
                    .decompress_vec(&body[9..])
                    .map_err(|e| not_mongo(format!("snappy data that does not decompress: {e}")))?,
                other => return Err(not_mongo(format!("compressor {other}, which coffer did not offer"))),
            };
            if data.len() != size as usize {
                return Err(not_mongo(format!("{} bytes uncompressed where {size} were announced", data.len())));
            }
            (original, data)
        } else {
            (op, body)
        };
        match op {
            OP_MSG => self.msg_body(&body).map_err(not_mongo),
            OP_REPLY => {
                // flags 4, cursor 8, starting 4, number 4, then documents.
                let doc = body.get(20..).ok_or_else(|| not_mongo("a short OP_REPLY".into()))?;
                RawDocumentBuf::from_bytes(first_document(doc).map_err(not_mongo)?.to_vec())
                    .map_err(|e| not_mongo(e.to_string()))
            }
            other => Err(not_mongo(format!("compressed opcode {other}"))),
        }
    }

    /// The body section of an `OP_MSG`.
    fn msg_body(&self, body: &[u8]) -> Result<RawDocumentBuf, String> {
        let flags = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
        if flags & MORE_TO_COME != 0 {
            return Err("a streamed reply (moreToCome), which coffer did not ask for".into());
        }
        let mut sections = &body[4..];
        if flags & CHECKSUM_PRESENT != 0 {
            sections = sections.get(..sections.len().saturating_sub(4)).unwrap_or_default();
        }
        let mut found = None;
        while !sections.is_empty() {
            match sections[0] {
                0 => {
                    let d = first_document(&sections[1..])?;
                    sections = &sections[1 + d.len()..];
                    found = Some(d);
                }
                1 => {
                    // Replies carry no document sequences coffer asked for;
                    // skip one if a server sends it.
                    let size = sections
                        .get(1..5)
                        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .ok_or("a short document sequence")?;
                    if size < 4 || size as usize + 1 > sections.len() {
                        return Err(format!("a document sequence of {size} bytes"));
                    }
                    sections = &sections[1 + size as usize..];
                }
                k => return Err(format!("an OP_MSG section of kind {k}")),
            }
        }
        let d = found.ok_or("an OP_MSG without a body")?;
        RawDocumentBuf::from_bytes(d.to_vec()).map_err(|e| e.to_string())
    }

    /// The stream, for a tailing cursor's shorter waits.
    pub fn set_read_timeout(&mut self, t: Duration) -> Result<(), Error> {
        self.stream.set_read_timeout(Some(t)).map_err(|e| Error::from(e).context(&self.addr))
    }
}

/// The document at the start of `bytes`, by its length prefix.
fn first_document(bytes: &[u8]) -> Result<&[u8], String> {
    let len = bytes.get(..4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes"))).ok_or("a short document")?;
    if len < 5 || len as usize > bytes.len() {
        return Err(format!("a document of {len} bytes in {} bytes", bytes.len()));
    }
    Ok(&bytes[..len as usize])
}

/// The `payload` of a SASL reply.
fn payload_of(reply: &Document) -> Result<Vec<u8>, String> {
    match reply.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.clone().into_bytes()),
        _ => Err("the server's SASL reply has no payload".into()),
    }
}

/// A cursor's batch: the raw documents of `cursor.firstBatch` or
/// `cursor.nextBatch`, and the id to continue with (0: done).
pub struct Batch {
    /// The reply, which the documents point into.
    reply: RawDocumentBuf,
    /// The cursor id; 0 when the server closed the cursor.
    pub id: i64,
    /// `cursor.ns`.
    pub ns: String,
}

impl Batch {
    /// Reads a cursor reply.
    pub fn from_reply(reply: RawDocumentBuf) -> Result<Batch, String> {
        let cursor = reply.get_document("cursor").map_err(|_| "a cursor reply without `cursor`")?;
        let id = match cursor.get("id") {
            Ok(Some(bson::RawBsonRef::Int64(i))) => i,
            Ok(Some(bson::RawBsonRef::Int32(i))) => i64::from(i),
            _ => return Err("a cursor reply without its id".into()),
        };
        let ns = cursor.get_str("ns").unwrap_or_default().to_string();
        if cursor.get_array("firstBatch").is_err() && cursor.get_array("nextBatch").is_err() {
            return Err("a cursor reply without a batch".into());
        }
        Ok(Batch { reply, id, ns })
    }

    /// The documents, in the server's order.
    pub fn documents(&self) -> impl Iterator<Item = Result<&RawDocument, String>> {
        let cursor = self.reply.get_document("cursor").expect("checked in from_reply");
        let batch = cursor.get_array("firstBatch").or_else(|_| cursor.get_array("nextBatch")).expect("checked");
        batch.into_iter().map(|v| match v {
            Ok(bson::RawBsonRef::Document(d)) => Ok(d),
            Ok(other) => Err(format!("a batch holds a {:?}, not a document", other.element_type())),
            Err(e) => Err(format!("a batch that does not parse: {e}")),
        })
    }
}

impl Conn {
    /// Runs a command that returns a cursor and reads its first batch.
    pub fn cursor(&mut self, db: &str, cmd: Document) -> Result<Batch, CommandError> {
        let reply = self.run_raw(db, cmd, None)?;
        Batch::from_reply(reply)
            .map_err(|e| CommandError::Other(Error::Other(format!("MongoDB at {}: {e}", self.addr))))
    }

    /// The next batch of cursor `id` on `coll` of `db`.
    pub fn get_more(
        &mut self,
        db: &str,
        coll: &str,
        id: i64,
        batch_size: Option<i32>,
        max_time: Option<Duration>,
    ) -> Result<Batch, CommandError> {
        let mut cmd = doc! { "getMore": id, "collection": coll };
        if let Some(n) = batch_size {
            cmd.insert("batchSize", n);
        }
        if let Some(t) = max_time {
            cmd.insert("maxTimeMS", t.as_millis() as i64);
        }
        self.cursor(db, cmd)
    }

    /// Closes cursor `id` (best effort: a failure is only logged).
    pub fn kill_cursor(&mut self, db: &str, coll: &str, id: i64) {
        if id == 0 {
            return;
        }
        if let Err(e) = self.run(db, doc! { "killCursors": coll, "cursors": [id] }) {
            host::debug(format!("closing a cursor on {db}.{coll}: {e:?}"));
        }
    }

    /// Every document of a cursor command, read batch by batch (for small
    /// listings: databases, collections, indexes).
    pub fn collect(&mut self, db: &str, cmd: Document) -> Result<Vec<Document>, CommandError> {
        let mut batch = self.cursor(db, cmd)?;
        let mut out = Vec::new();
        loop {
            for d in batch.documents() {
                let d = d.map_err(|e| CommandError::Other(Error::Other(format!("MongoDB at {}: {e}", self.addr))))?;
                out.push(Document::try_from(d).map_err(|e| {
                    CommandError::Other(Error::Other(format!("MongoDB at {}: a listing entry: {e}", self.addr)))
                })?);
            }
            if batch.id == 0 {
                return Ok(out);
            }
            let coll = batch.ns.split_once('.').map(|(_, c)| c.to_string()).unwrap_or_default();
            batch = self.get_more(db, &coll, batch.id, None, None)?;
        }
    }
}
