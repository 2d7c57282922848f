//! coffer's `redis` plugin.
//!
//! - **RDB mode** (`--set url=redis://host:port/`): takes an RDB snapshot
//!   through the replication handshake, as `redis-cli --rdb` does, and
//!   streams it into the `dump.rdb` entry while parsing it (keys per
//!   database, the CRC-64 trailer), never holding it in memory.
//! - **AOF mode** (`--set mode=aof --set data_dir=DIR`): copies the
//!   multi-part AOF directory of Redis 7 consistently: the files the
//!   manifest names, up to their last complete command, and the manifest
//!   last.
//! - **Restore** into a directory (the files, for a stopped server to load)
//!   or into a live server (`--set url=...`): one `RESTORE` per key,
//!   pipelined, with payloads cut from the RDB.
//! - **Verify** parses the RDB completely (every type and encoding, the
//!   CRC-64) and checks the AOF manifest and the RESP framing of every file.
//! - **Follow** ([`follow`]): as a replica, stores the replication stream
//!   as items of `redis-<replid>` ([`repl`]); a restore with `to_offset`
//!   replays it after an RDB ([`replay`]).

pub mod aof;
pub mod client;
pub mod compact;
pub mod follow;
pub mod lzf;
pub mod rdb;
pub mod repl;
pub mod replay;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::{Read, Write};

use client::{Conn, Target};
use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, EntryMeta, EntryWriter, Error, Plugin, PluginInfo, RestoreOptions,
    Sink, SnapshotReader, StreamSink, Timestamp, VerifyReport, host,
};
use rdb::{Checksum, Depth, Item, Parser, RdbError};
use serde::Deserialize;

/// The plugin.
pub struct Redis;

/// What to back up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An RDB snapshot over the replication protocol.
    #[default]
    Rdb,
    /// The multi-part AOF directory, read from disk.
    Aof,
}

/// `coffer backup redis --set url=redis://127.0.0.1:6379/` or
/// `coffer backup redis --set mode=aof --set data_dir=/var/lib/redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server (RDB backups, live restores).
    #[serde(default)]
    url: Option<String>,
    /// ACL user; the URL's user when absent.
    #[serde(default)]
    user: Option<String>,
    /// Password. The host fills it from `password_file` or `password_env`
    /// and never stores it.
    #[serde(default)]
    password: Option<String>,
    /// Read by the host into `password`.
    #[serde(default)]
    #[allow(dead_code)]
    password_file: Option<String>,
    /// Read by the host into `password`.
    #[serde(default)]
    #[allow(dead_code)]
    password_env: Option<String>,
    /// `rdb` (default) or `aof`.
    #[serde(default)]
    mode: Mode,
    /// The server's data directory (`dir` in redis.conf), for AOF mode.
    #[serde(default)]
    data_dir: Option<String>,
    /// The AOF directory's name inside `data_dir` (Redis's `appenddirname`).
    #[serde(default = "default_appenddirname")]
    appenddirname: String,
    /// Ask for a diskless transfer (the server streams the RDB from a fork
    /// without writing it to its disk). Default true.
    #[serde(default = "yes")]
    diskless: bool,
    /// Live restore: empty the server (`FLUSHALL`, `FUNCTION FLUSH`) first.
    #[serde(default)]
    flush: bool,
    /// Restore: replay the followed replication stream up to this
    /// replication offset (a number, or `latest`) after the RDB.
    #[serde(default)]
    to_offset: Option<String>,
    /// Follow: an item is finished once it holds this many bytes.
    #[serde(default = "default_item_max_bytes")]
    item_max_bytes: u64,
    /// Follow: ... or once it is this many seconds old and holds a write.
    #[serde(default = "default_item_max_seconds")]
    item_max_seconds: u64,
    /// Follow: ... or once it is this many seconds old (keepalives only).
    #[serde(default = "default_idle_item_seconds")]
    idle_item_seconds: u64,
    /// Follow: stop retrying an unreachable server after this many seconds
    /// (0: never).
    #[serde(default = "default_give_up_after_seconds")]
    give_up_after_seconds: u64,
    /// TLS (`rediss://`): a CA certificate file trusted besides the
    /// system's; read by the host only.
    #[serde(default)]
    #[allow(dead_code)]
    ca_file: Option<String>,
    /// The client certificate the host presents; read by the host only.
    #[serde(default)]
    #[allow(dead_code)]
    cert_file: Option<String>,
    /// Its key; read by the host only, never by this plugin.
    #[serde(default)]
    #[allow(dead_code)]
    key_file: Option<String>,
    /// How strictly the host checks the server (read by the host).
    #[serde(default)]
    #[allow(dead_code)]
    tls_verify: Option<serde_json::Value>,
}

/// What `to_offset` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToOffset {
    /// Every command stored.
    Latest,
    /// The commands that end at or before this offset.
    At(u64),
}

fn default_item_max_bytes() -> u64 {
    8 << 20
}

fn default_item_max_seconds() -> u64 {
    10
}

fn default_idle_item_seconds() -> u64 {
    600
}

fn default_give_up_after_seconds() -> u64 {
    600
}

/// Largest item a follower cuts (before the command that crosses it).
const ITEM_MAX_BYTES_LIMIT: u64 = 256 << 20;

fn default_appenddirname() -> String {
    "appendonlydir".into()
}

fn yes() -> bool {
    true
}

impl Config for RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.url
            && let Err(e) = Target::parse(u, None, None)
        {
            return Err(ConfigError::field("url", e.to_string().trim_start_matches("invalid config: url: ")));
        }
        if let Some(d) = &self.data_dir
            && !d.starts_with('/')
        {
            return Err(ConfigError::field("data_dir", "must be an absolute path"));
        }
        let name = &self.appenddirname;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(ConfigError::field("appenddirname", "must be a plain directory name"));
        }
        if let Err(e) = self.to_offset() {
            return Err(ConfigError::field("to_offset", e));
        }
        if self.item_max_bytes == 0 || self.item_max_bytes > ITEM_MAX_BYTES_LIMIT {
            return Err(ConfigError::field("item_max_bytes", "must be 1 to 268435456 (256 MiB)"));
        }
        if self.item_max_seconds == 0 || self.idle_item_seconds == 0 {
            return Err(ConfigError::field(
                "item_max_seconds",
                "item_max_seconds and idle_item_seconds must be at least 1",
            ));
        }
        Ok(())
    }
}

impl RedisConfig {
    fn target(&self) -> Result<Target, Error> {
        let url = self.url.as_deref().ok_or_else(|| {
            Error::InvalidConfig(
                "url: is required (redis://[user@]host:port/) for RDB backups and live restores".into(),
            )
        })?;
        Target::parse(url, self.user.as_deref(), self.password.as_deref())
    }

    /// `to_offset`, parsed.
    fn to_offset(&self) -> Result<Option<ToOffset>, String> {
        match self.to_offset.as_deref().map(str::trim) {
            None => Ok(None),
            Some("latest") => Ok(Some(ToOffset::Latest)),
            Some(n) => n
                .parse::<u64>()
                .map(|n| Some(ToOffset::At(n)))
                .map_err(|_| format!("`{n}` is neither a replication offset nor `latest`")),
        }
    }

    /// When a follower cuts items.
    fn cutting(&self) -> Result<follow::Cutting, Error> {
        Ok(follow::Cutting {
            max_bytes: usize::try_from(self.item_max_bytes)
                .map_err(|_| Error::InvalidConfig("item_max_bytes: too large".into()))?,
            max_age: std::time::Duration::from_secs(self.item_max_seconds),
            idle_age: std::time::Duration::from_secs(self.idle_item_seconds),
        })
    }

    fn aof_dir(&self) -> Result<String, Error> {
        let d = self.data_dir.as_deref().ok_or_else(|| {
            Error::InvalidConfig("data_dir: is required in AOF mode (the server's `dir`, granted read-only)".into())
        })?;
        Ok(format!("{}/{}", d.trim_end_matches('/'), self.appenddirname))
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "url": {"type": "string", "x-coffer-grant": "connect", "description": "redis://[user@]host:port/ of the server (RDB backups, live restores), or rediss:// for TLS; granted as an address."},
    "user": {"type": "string", "description": "ACL user name (default: the URL's, or the default user)."},
    "password": {"type": "string", "description": "Password; prefer password_file or password_env. Never stored."},
    "password_file": {"type": "string", "description": "File holding the password, read by the host."},
    "password_env": {"type": "string", "description": "Environment variable holding the password, read by the host."},
    "mode": {"type": "string", "enum": ["rdb", "aof"], "description": "rdb: a snapshot over the replication protocol (default); aof: the AOF directory from disk."},
    "data_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "The server's data directory, granted read-only (AOF mode)."},
    "appenddirname": {"type": "string", "description": "The AOF directory inside data_dir (default appendonlydir)."},
    "diskless": {"type": "boolean", "description": "Ask the server to stream the RDB without writing it to its disk (default true)."},
    "flush": {"type": "boolean", "description": "Live restore: FLUSHALL and FUNCTION FLUSH the target first."},
    "to_offset": {"type": "string", "description": "Restore: after the snapshot's RDB, replay the followed replication stream up to this replication offset (the commands ending at or before it), or `latest`."},
    "item_max_bytes": {"type": "integer", "description": "Follow: finish a stream item once it holds this many bytes (default 8 MiB)."},
    "item_max_seconds": {"type": "integer", "description": "Follow: finish a stream item holding writes once it is this old (default 10)."},
    "idle_item_seconds": {"type": "integer", "description": "Follow: finish a stream item of keepalives only once it is this old (default 600)."},
    "give_up_after_seconds": {"type": "integer", "description": "Follow: stop retrying an unreachable server after this long (default 600; 0: never)."},
    "ca_file": {"type": "string", "x-coffer-grant": "tls-ca", "description": "rediss://: PEM file of the CA that signed the server's certificate (tls-ca-cert-file), trusted besides the system's; read by the host."},
    "cert_file": {"type": "string", "x-coffer-grant": "tls-client-cert", "description": "rediss://: PEM client certificate the host presents (for tls-auth-clients)."},
    "key_file": {"type": "string", "x-coffer-grant": "tls-client-key", "description": "rediss://: its PEM private key; read by the host only, never by the plugin."},
    "tls_verify": {"type": ["string", "boolean"], "x-coffer-grant": "tls-verify", "description": "rediss://: full (the default: chain and host name checked), chain (name not checked) or off (not checked, as redis-cli --insecure)."}
  }
}"#;

/// The entry an RDB snapshot is stored in.
const RDB_ENTRY: &str = "dump.rdb";
/// Copy buffer.
const BUF: usize = 1 << 20;

/// What a parse of an RDB found.
#[derive(Debug, Default)]
struct RdbStats {
    version: u16,
    keys: BTreeMap<u64, u64>,
    expires: BTreeMap<u64, u64>,
    types: BTreeMap<&'static str, u64>,
    functions: u64,
    modules: BTreeSet<String>,
    module_keys: u64,
    aux: BTreeMap<String, String>,
    checksum: Option<Checksum>,
    bytes: u64,
}

impl RdbStats {
    fn total_keys(&self) -> u64 {
        self.keys.values().sum()
    }

    fn note(&mut self, item: &Item) {
        match item {
            Item::Key(k) => {
                *self.keys.entry(k.db).or_default() += 1;
                if k.expire_ms.is_some() {
                    *self.expires.entry(k.db).or_default() += 1;
                }
                *self.types.entry(rdb::type_name(k.kind)).or_default() += 1;
                if let Some(m) = &k.module {
                    self.module_keys += 1;
                    self.modules.insert(m.clone());
                }
            }
            Item::Aux { key, value } => {
                self.aux.insert(String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned());
            }
            Item::Function { .. } => self.functions += 1,
            Item::ModuleAux { module } => {
                self.modules.insert(module.clone());
            }
            Item::End(c) => self.checksum = Some(*c),
            _ => {}
        }
    }

    fn summary(&self) -> String {
        let dbs: Vec<String> = self.keys.iter().map(|(db, n)| format!("db{db}: {n}")).collect();
        let types: Vec<String> = self.types.iter().map(|(t, n)| format!("{t} {n}")).collect();
        format!(
            "RDB version {}, {} keys ({}; {}), {} functions, checksum {}",
            self.version,
            self.total_keys(),
            if dbs.is_empty() { "no databases".into() } else { dbs.join(", ") },
            if types.is_empty() { "no values".into() } else { types.join(", ") },
            self.functions,
            match self.checksum {
                Some(Checksum::Valid) => "valid",
                Some(Checksum::Disabled) => "disabled on the server (rdbchecksum no)",
                Some(Checksum::Absent) => "absent (RDB version below 5)",
                None => "not reached",
            }
        )
    }

    fn set_attributes(&self, sink: &Sink, prefix: &str) -> Result<(), Error> {
        sink.set_attribute(&format!("{prefix}rdb-version"), &self.version.to_string())?;
        sink.set_attribute(&format!("{prefix}keys"), &self.total_keys().to_string())?;
        sink.set_attribute(&format!("{prefix}expires"), &self.expires.values().sum::<u64>().to_string())?;
        for (db, n) in &self.keys {
            sink.set_attribute(&format!("{prefix}keys.db{db}"), &n.to_string())?;
        }
        sink.set_attribute(&format!("{prefix}functions"), &self.functions.to_string())?;
        if !self.modules.is_empty() {
            sink.set_attribute(
                &format!("{prefix}modules"),
                &self.modules.iter().cloned().collect::<Vec<_>>().join(","),
            )?;
        }
        Ok(())
    }
}

/// Parses a whole RDB from `r`, noting what it holds.
fn parse_rdb(r: impl Read, depth: Depth) -> Result<RdbStats, RdbError> {
    let mut p = Parser::new(r, depth)?;
    let mut stats = RdbStats { version: p.version(), ..Default::default() };
    let mut n = 0u64;
    while let Some(item) = p.next_item()? {
        stats.note(&item);
        n += 1;
        if n.is_multiple_of(4096) && host::cancelled() {
            return Err(RdbError { offset: p.offset(), reason: "cancelled".into(), io: true });
        }
    }
    stats.bytes = p.offset();
    if p.trailing_buffered() > 0 {
        return Err(RdbError {
            offset: p.offset(),
            reason: format!("{} bytes follow the end of the RDB", p.trailing_buffered()),
            io: false,
        });
    }
    let mut rest = p.into_inner();
    let mut probe = [0u8; 64];
    match rest.read(&mut probe) {
        Ok(0) => Ok(stats),
        Ok(k) => {
            Err(RdbError { offset: stats.bytes, reason: format!("{k}+ bytes follow the end of the RDB"), io: false })
        }
        Err(e) => Err(RdbError { offset: stats.bytes, reason: e.to_string(), io: true }),
    }
}

/// Maps a parse failure of data coming from `what` to the plugin's error.
fn rdb_failure(what: &str, e: RdbError) -> Error {
    if e.io {
        if e.reason == "cancelled" {
            return Error::Cancelled;
        }
        return Error::Unavailable(format!("{what} {e}"));
    }
    Error::Corrupt(format!("{what} {e}"))
}

/// How the server frames the RDB of a `SYNC`.
pub(crate) enum Framing {
    /// `$<len>`: exactly that many bytes follow.
    Length(u64),
    /// `$EOF:<mark>`: bytes until the 40-byte mark (diskless transfer).
    Mark([u8; 40]),
}

/// The RDB bytes of a `SYNC` transfer, copied into the entry as they are read.
pub(crate) struct SyncStream<'a> {
    conn: &'a mut Conn,
    framing: Framing,
    remaining: u64,
    /// Mark framing: bytes read but not given out yet (the last 40 may be
    /// the mark).
    hold: Vec<u8>,
    hold_at: usize,
    marked: bool,
    entry: &'a mut dyn Write,
    received: u64,
    reported: u64,
}

impl<'a> SyncStream<'a> {
    /// Reads the RDB `framing` announces from `conn`, copying it to `out`.
    pub(crate) fn new(conn: &'a mut Conn, framing: Framing, out: &'a mut dyn Write) -> SyncStream<'a> {
        let remaining = match framing {
            Framing::Length(n) => n,
            Framing::Mark(_) => 0,
        };
        SyncStream {
            conn,
            framing,
            remaining,
            hold: Vec::new(),
            hold_at: 0,
            marked: false,
            entry: out,
            received: 0,
            reported: 0,
        }
    }

    fn closed(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("Redis at {} closed the connection after {} bytes of the RDB", self.conn.addr(), self.received),
        )
    }

    fn next_bytes(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match self.framing {
            Framing::Length(_) => {
                if self.remaining == 0 {
                    return Ok(0);
                }
                let want = out.len().min(self.remaining.min(usize::MAX as u64) as usize);
                let n = self.conn.read_raw(&mut out[..want])?;
                if n == 0 {
                    return Err(self.closed());
                }
                self.remaining -= n as u64;
                Ok(n)
            }
            Framing::Mark(mark) => loop {
                let avail = self.hold.len() - self.hold_at;
                let give = if self.marked { avail } else { avail.saturating_sub(40) };
                if give > 0 {
                    let n = give.min(out.len());
                    out[..n].copy_from_slice(&self.hold[self.hold_at..self.hold_at + n]);
                    self.hold_at += n;
                    return Ok(n);
                }
                if self.marked {
                    return Ok(0);
                }
                self.hold.drain(..self.hold_at);
                self.hold_at = 0;
                let old = self.hold.len();
                self.hold.resize(old + BUF, 0);
                let n = self.conn.read_raw(&mut self.hold[old..])?;
                self.hold.truncate(old + n);
                if n == 0 {
                    return Err(self.closed());
                }
                if self.hold.len() >= 40 && self.hold[self.hold.len() - 40..] == mark {
                    let l = self.hold.len() - 40;
                    self.hold.truncate(l);
                    self.marked = true;
                }
            },
        }
    }
}

impl Read for SyncStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.next_bytes(out)?;
        self.entry.write_all(&out[..n])?;
        self.received += n as u64;
        if self.received - self.reported >= 16 << 20 {
            self.reported = self.received;
            let total = match self.framing {
                Framing::Length(l) => Some(l),
                Framing::Mark(_) => None,
            };
            host::progress(self.received, total);
        }
        Ok(n)
    }
}

fn now() -> Timestamp {
    Timestamp::from(std::time::SystemTime::now())
}

/// How a resync began.
pub(crate) enum SyncStart {
    /// An RDB follows (`+FULLRESYNC <replid> <offset>`; an old server
    /// answering `SYNC` names neither).
    Full { replid: Option<String>, offset: Option<u64>, framing: Framing },
    /// `+CONTINUE [<replid>]`: the stream goes on where asked.
    Continue(Option<String>),
}

/// Sends `PSYNC <replid> <offset>` (`PSYNC ? -1` for `None`) and reads the
/// answer up to the RDB's framing. With `sync_fallback`, a server without
/// `PSYNC` (before 2.8) is asked for `SYNC`.
pub(crate) fn start_sync(conn: &mut Conn, from: Option<(&str, u64)>, sync_fallback: bool) -> Result<SyncStart, Error> {
    let (id, off) = match from {
        Some((id, off)) => (id.to_string(), off.to_string()),
        None => ("?".to_string(), "-1".to_string()),
    };
    conn.push(&[b"PSYNC", id.as_bytes(), off.as_bytes()]);
    conn.flush()?;
    let mut asked = "PSYNC";
    let (mut replid, mut offset) = (None, None);
    loop {
        let line = conn.line()?;
        match line.first() {
            // The server sends newlines while it forks and starts the dump.
            None => continue,
            Some(b'-') => {
                let said = String::from_utf8_lossy(&line[1..]).into_owned();
                if sync_fallback && asked == "PSYNC" && said.contains("unknown command") {
                    asked = "SYNC";
                    conn.push(&[b"SYNC"]);
                    conn.flush()?;
                    continue;
                }
                if ["LOADING", "MASTERDOWN", "NOMASTERLINK"].iter().any(|w| said.starts_with(w)) {
                    return Err(Error::Unavailable(format!("Redis at {} cannot sync now ({said})", conn.addr())));
                }
                return Err(sync_refused(conn.addr(), asked, &said));
            }
            Some(b'+') if line.starts_with(b"+FULLRESYNC") => {
                let text = String::from_utf8_lossy(&line).into_owned();
                let mut w = text.split_ascii_whitespace().skip(1);
                replid = w.next().map(str::to_string);
                offset = w.next().and_then(|o| o.parse::<u64>().ok());
            }
            Some(b'+') if line.starts_with(b"+CONTINUE") => {
                let text = String::from_utf8_lossy(&line).into_owned();
                return Ok(SyncStart::Continue(text.split_ascii_whitespace().nth(1).map(str::to_string)));
            }
            Some(b'$') if line.starts_with(b"$EOF:") && line.len() == 45 => {
                let framing = Framing::Mark(line[5..45].try_into().expect("40 bytes"));
                return Ok(SyncStart::Full { replid, offset, framing });
            }
            Some(b'$') => {
                let n = std::str::from_utf8(&line[1..]).ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                    Error::Corrupt(format!("Redis at {} began the RDB with an unreadable length", conn.addr()))
                })?;
                return Ok(SyncStart::Full { replid, offset, framing: Framing::Length(n) });
            }
            Some(_) => {
                return Err(Error::Corrupt(format!(
                    "Redis at {} answered {asked} with `{}`, not an RDB",
                    conn.addr(),
                    String::from_utf8_lossy(&line[..line.len().min(80)])
                )));
            }
        }
    }
}

/// Why a `SYNC` was refused, and the way out.
fn sync_refused(addr: &str, asked: &str, said: &str) -> Error {
    Error::Unsupported(format!(
        "Redis at {addr} refused {asked} ({said}). Managed services (ElastiCache, MemoryDB, Memorystore, Azure Cache) \
         and ACL users without the +sync permission do not allow replication; back up the AOF directory instead \
         with --set mode=aof --set data_dir=DIR on the server's host"
    ))
}

fn snapshot_rdb(config: &RedisConfig, sink: &Sink) -> Result<(), Error> {
    let target = config.target()?;
    let mut conn = Conn::open(&target)?;
    let info = conn.info("server")?;
    let server_version = info.get("redis_version").cloned().unwrap_or_default();
    if info.get("redis_mode").is_some_and(|m| m == "cluster") {
        host::warn(format!(
            "Redis at {} is a cluster node: the snapshot holds only the slots this node serves; back up every primary",
            conn.addr()
        ));
    }
    // An RDB-only replica (7.0+): the server sends the RDB and no command
    // stream after it. Older servers answer an error, which is harmless.
    let _ = conn.call(&[b"REPLCONF", b"rdb-only", b"1"]);
    if config.diskless {
        let _ = conn.call(&[b"REPLCONF", b"capa", b"eof"]);
    }
    let (replid, offset, framing) = match start_sync(&mut conn, None, true)? {
        SyncStart::Full { replid, offset, framing } => (replid, offset, framing),
        SyncStart::Continue(_) => {
            return Err(Error::Corrupt(format!("Redis at {} answered PSYNC ? -1 with CONTINUE", conn.addr())));
        }
    };
    let size_hint = match framing {
        Framing::Length(n) => Some(n),
        Framing::Mark(_) => None,
    };
    let mut meta = EntryMeta::file(RDB_ENTRY, 0o644).mtime(now());
    if let Some(n) = size_hint {
        meta = meta.size_hint(n);
    }
    let mut entry = sink.add_entry(meta)?;
    let addr = conn.addr().to_string();
    let stream = SyncStream::new(&mut conn, framing, &mut entry);
    let stats = parse_rdb(stream, Depth::Shallow).map_err(|e| rdb_failure(&format!("the RDB from {addr}"), e))?;
    let digest = entry.finish()?;
    sink.set_attribute("redis.mode", "rdb")?;
    sink.set_attribute("redis.version", &server_version)?;
    if let (Some(replid), Some(offset)) = (&replid, offset)
        && repl::is_replid(replid)
    {
        // The dataset at this replication offset: a follower's stream of
        // this ID can carry a restore past it, and retention keeps the
        // stream's items after it while this snapshot exists.
        sink.set_attribute("redis.replid", replid)?;
        sink.set_attribute("redis.repl-offset", &offset.to_string())?;
        sink.need_stream(&repl::stream_name(replid), offset + 1)?;
    }
    stats.set_attributes(sink, "redis.")?;
    host::info(format!(
        "{RDB_ENTRY} from Redis {server_version} at {addr}: {} bytes, {}",
        digest.size,
        stats.summary()
    ));
    if stats.module_keys > 0 {
        host::warn(format!(
            "{} keys hold module values ({}); they are stored, and restore needs the same modules loaded",
            stats.module_keys,
            stats.modules.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The manifest file inside an AOF directory.
fn find_manifest(dir: &str) -> Result<String, Error> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| {
        Error::from(e).context(format!("{dir} (is `appendonly yes` set, and is this Redis 7 or later?)"))
    })? {
        let e = e.map_err(|e| Error::from(e).context(dir))?;
        if let Ok(n) = e.file_name().into_string()
            && n.ends_with(".manifest")
        {
            found.push(n);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Unavailable(format!("no AOF manifest in {dir}: is `appendonly yes` set on Redis 7 or later?"))),
        _ => Err(Error::Corrupt(format!(
            "{dir} holds {} manifests ({}); Redis writes one",
            found.len(),
            found.join(", ")
        ))),
    }
}

/// A consistent set of AOF files: the manifest's bytes, and each file it
/// names opened (an open file stays readable if a rewrite deletes it).
struct AofSet {
    manifest_name: String,
    manifest: Vec<u8>,
    files: Vec<(aof::AofFile, fs::File, u64)>,
}

fn open_aof_set(dir: &str) -> Result<AofSet, Error> {
    let mut last_err = None;
    for attempt in 0..8 {
        if attempt > 0 {
            // A rewrite is switching files: give it a moment.
            std::thread::sleep(std::time::Duration::from_millis(50 << attempt.min(4)));
        }
        let name = find_manifest(dir)?;
        let path = format!("{dir}/{name}");
        let manifest = fs::read(&path).map_err(|e| Error::from(e).context(&path))?;
        let text = String::from_utf8(manifest.clone()).map_err(|_| Error::Corrupt(format!("{path} is not text")))?;
        let named = aof::load_order(&aof::parse_manifest(&text).map_err(|e| Error::Corrupt(format!("{path}: {e}")))?);
        let mut files = Vec::new();
        let mut missing = None;
        for f in named {
            let p = format!("{dir}/{}", f.name);
            match fs::File::open(&p) {
                Ok(fd) => {
                    let size = fd.metadata().map_err(|e| Error::from(e).context(&p))?.len();
                    files.push((f, fd, size));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing = Some(p);
                    break;
                }
                Err(e) => return Err(Error::from(e).context(&p)),
            }
        }
        let again = fs::read(&path).ok();
        match missing {
            None if again.as_deref() == Some(&manifest[..]) => {
                return Ok(AofSet { manifest_name: name, manifest, files });
            }
            None => last_err = Some(format!("{path} changed while the files were opened (an AOF rewrite)")),
            Some(p) => last_err = Some(format!("{p}, named by {path}, does not exist")),
        }
    }
    Err(Error::Unavailable(format!(
        "could not read a consistent AOF set: {}; try again when no rewrite is running",
        last_err.unwrap_or_default()
    )))
}

/// Copies a RESP command file into `entry`, up to `size` bytes and cut at
/// the last complete command. Returns (commands, bytes kept, bytes cut).
fn copy_commands(fd: &mut fs::File, size: u64, entry: &mut EntryWriter, what: &str) -> Result<(u64, u64, u64), Error> {
    let mut walker = aof::RespWalker::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut left = size;
    let mut kept = 0u64;
    while left > 0 {
        let want = (left.min(BUF as u64)) as usize;
        let n = fd.read(&mut buf[..want]).map_err(|e| Error::from(e).context(what))?;
        if n == 0 {
            break;
        }
        left -= n as u64;
        pending.extend_from_slice(&buf[..n]);
        let done = walker.feed(&buf[..n]).map_err(|e| Error::Corrupt(format!("{what}: {e}")))? as usize;
        entry.write_all(&pending[..done])?;
        pending.drain(..done);
        kept += done as u64;
    }
    Ok((walker.commands, kept, pending.len() as u64))
}

/// Copies what is read from `r` into `w`.
pub(crate) struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(out)?;
        self.w.write_all(&out[..n])?;
        Ok(n)
    }
}

/// Reads exactly `size` bytes of a file and copies them into an entry.
struct FileTee<'a> {
    fd: std::io::Take<&'a mut fs::File>,
    entry: &'a mut EntryWriter,
}

impl Read for FileTee<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fd.read(out)?;
        self.entry.write_all(&out[..n])?;
        Ok(n)
    }
}

fn snapshot_aof(config: &RedisConfig, sink: &Sink) -> Result<(), Error> {
    let dir = config.aof_dir()?;
    let set = open_aof_set(&dir)?;
    let prefix = &config.appenddirname;
    let mode = host::file_mode(&dir).unwrap_or(0o755) & 0o7777;
    sink.add_entry(EntryMeta::dir(prefix.as_str(), mode).mtime(now()))?.finish()?;
    let last = set.files.len().saturating_sub(1);
    let (mut commands, mut bytes) = (0u64, 0u64);
    for (k, (f, mut fd, size)) in set.files.into_iter().enumerate() {
        host::check_cancelled()?;
        let path = format!("{dir}/{}", f.name);
        let fmode = host::file_mode(&path).unwrap_or(0o644) & 0o7777;
        let mtime = fd.metadata().and_then(|m| m.modified()).map(Timestamp::from).unwrap_or_default();
        let mut entry =
            sink.add_entry(EntryMeta::file(format!("{prefix}/{}", f.name), fmode).mtime(mtime).size_hint(size))?;
        if f.name.ends_with(".rdb") {
            let tee = FileTee { fd: (&mut fd).take(size), entry: &mut entry };
            let stats = parse_rdb(tee, Depth::Shallow).map_err(|e| rdb_failure(&path, e))?;
            stats.set_attributes(sink, "redis.base.")?;
            bytes += stats.bytes;
        } else {
            let (n, kept, cut) = copy_commands(&mut fd, size, &mut entry, &path)?;
            if cut > 0 {
                if k == last {
                    host::info(format!("{path}: left out {cut} bytes of a command still being written"));
                } else {
                    host::warn(format!("{path}: its last {cut} bytes are not a complete command; left out"));
                }
            }
            commands += n;
            bytes += kept;
        }
        entry.finish()?;
        host::progress(bytes, None);
    }
    // The manifest last: a restore that finds it finds every file it names.
    let mpath = format!("{dir}/{}", set.manifest_name);
    let mmode = host::file_mode(&mpath).unwrap_or(0o644) & 0o7777;
    let mut entry = sink.add_entry(EntryMeta::file(format!("{prefix}/{}", set.manifest_name), mmode).mtime(now()))?;
    entry.write_all(&set.manifest)?;
    entry.finish()?;
    sink.set_attribute("redis.mode", "aof")?;
    sink.set_attribute("redis.aof.manifest", &format!("{prefix}/{}", set.manifest_name))?;
    sink.set_attribute("redis.aof.commands", &commands.to_string())?;
    host::info(format!("AOF of {dir}: {commands} commands after the base, {bytes} bytes"));
    Ok(())
}

// ---------------------------------------------------------------------------
// Restore

fn restore_files(snapshot: &SnapshotReader, dir: &str, options: &RestoreOptions) -> Result<(), Error> {
    let empty = fs::read_dir(dir).map_err(|e| Error::from(e).context(dir))?.next().is_none();
    if !empty && !options.force {
        return Err(Error::Other(format!(
            "{dir} is not empty; restore into an empty directory, or pass --force to overwrite the files of the snapshot"
        )));
    }
    let mut buf = vec![0u8; BUF];
    let mut done = 0u64;
    let mut dirs = Vec::new();
    for e in snapshot.entries() {
        if !options.includes(&e.path) {
            continue;
        }
        host::check_cancelled()?;
        let dest = format!("{}/{}", dir.trim_end_matches('/'), e.path);
        match e.kind {
            EntryKind::Dir => {
                fs::create_dir_all(&dest).map_err(|err| Error::from(err).context(&dest))?;
                dirs.push(e);
                continue;
            }
            EntryKind::File => {
                if let Some(parent) = dest.rsplit_once('/').map(|(p, _)| p) {
                    fs::create_dir_all(parent).map_err(|err| Error::from(err).context(parent))?;
                }
                let mut r = snapshot.open(&e.path)?;
                let mut out = fs::File::create(&dest).map_err(|err| Error::from(err).context(&dest))?;
                let mut n_total = 0u64;
                loop {
                    let n = r.read(&mut buf).map_err(|err| Error::from(err).context(&e.path))?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n]).map_err(|err| Error::from(err).context(&dest))?;
                    n_total += n as u64;
                    done += n as u64;
                    host::progress(done, None);
                }
                out.sync_all().map_err(|err| Error::from(err).context(&dest))?;
                if n_total != e.size {
                    return Err(Error::Corrupt(format!(
                        "{}: read {n_total} bytes, the snapshot says {}",
                        e.path, e.size
                    )));
                }
            }
            EntryKind::Symlink => continue,
        }
        host::set_metadata(&e.path, e.mode, e.mtime)?;
    }
    // Directory times last: writing files into them changed them.
    for d in dirs.iter().rev() {
        host::set_metadata(&d.path, d.mode, d.mtime)?;
    }
    Ok(())
}

/// What a pipelined command was, for its reply.
enum Sent {
    Select(u64),
    Key { db: u64, key: Vec<u8> },
    Function,
}

/// Live restore state.
struct LiveRestore {
    conn: Conn,
    replace: bool,
    version: u16,
    db: Option<u64>,
    batch: Vec<Sent>,
    in_flight: VecDeque<Vec<Sent>>,
    restored: u64,
    functions: u64,
    skipped_modules: u64,
}

/// Commands per pipelined batch, and bytes.
const BATCH: usize = 512;
const BATCH_BYTES: usize = 4 << 20;

impl LiveRestore {
    fn send(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.conn.flush()?;
        self.in_flight.push_back(std::mem::take(&mut self.batch));
        // Two batches in flight: the server works on one while this side
        // parses and sends the next.
        while self.in_flight.len() > 1 {
            self.receive_one()?;
        }
        Ok(())
    }

    fn receive_one(&mut self) -> Result<(), Error> {
        let Some(batch) = self.in_flight.pop_front() else { return Ok(()) };
        let mut first_err: Option<Error> = None;
        for sent in batch {
            let reply = self.conn.reply()?;
            if let client::Reply::Error(e) = reply {
                if first_err.is_none() {
                    first_err = Some(match sent {
                        Sent::Select(db) => Error::Other(format!(
                            "Redis at {} cannot select database {db} ({e}); raise `databases` in its config",
                            self.conn.addr()
                        )),
                        Sent::Key { db, key } => Error::Other(format!(
                            "restoring key `{}` in db{db} into Redis at {} failed: {e}",
                            String::from_utf8_lossy(&key),
                            self.conn.addr()
                        )),
                        Sent::Function => {
                            Error::Other(format!("restoring functions into Redis at {} failed: {e}", self.conn.addr()))
                        }
                    });
                }
            } else if let Sent::Key { .. } = sent {
                self.restored += 1;
            } else if let Sent::Function = sent {
                self.functions += 1;
            }
        }
        match first_err {
            Some(e) => Err(e.context(format!("{} keys were restored before it", self.restored))),
            None => Ok(()),
        }
    }

    fn item(&mut self, item: Item) -> Result<(), Error> {
        match item {
            Item::Key(k) => {
                if let Some(m) = &k.module {
                    self.skipped_modules += 1;
                    if self.skipped_modules == 1 {
                        host::warn(format!(
                            "skipping keys with values of module {m}: load the module and restore the files instead"
                        ));
                    }
                    return Ok(());
                }
                if self.db != Some(k.db) {
                    self.conn.push(&[b"SELECT", k.db.to_string().as_bytes()]);
                    self.batch.push(Sent::Select(k.db));
                    self.db = Some(k.db);
                }
                let payload = rdb::dump_payload(k.raw, self.version);
                let ttl = k.expire_ms.unwrap_or(0).max(0).to_string();
                let idle = k.idle.map(|i| i.to_string());
                let freq = k.freq.map(|f| f.to_string());
                let mut args: Vec<&[u8]> = vec![b"RESTORE", &k.key, ttl.as_bytes(), &payload];
                if self.replace {
                    args.push(b"REPLACE");
                }
                if k.expire_ms.is_some() {
                    args.push(b"ABSTTL");
                }
                if let Some(i) = &idle {
                    args.push(b"IDLETIME");
                    args.push(i.as_bytes());
                } else if let Some(f) = &freq {
                    args.push(b"FREQ");
                    args.push(f.as_bytes());
                }
                self.conn.push(&args);
                self.batch.push(Sent::Key { db: k.db, key: k.key });
            }
            Item::Function { raw, .. } => {
                let payload = rdb::dump_payload(raw, self.version);
                let policy: &[u8] = if self.replace { b"REPLACE" } else { b"APPEND" };
                self.conn.push(&[b"FUNCTION", b"RESTORE", &payload, policy]);
                self.batch.push(Sent::Function);
            }
            _ => {}
        }
        if self.batch.len() >= BATCH || self.conn.pending() >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }
}

fn keyspace_keys(info: &BTreeMap<String, String>) -> u64 {
    info.iter()
        .filter(|(k, _)| k.starts_with("db"))
        .filter_map(|(_, v)| v.split(',').find_map(|p| p.strip_prefix("keys=")).and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

fn restore_live(config: &RedisConfig, snapshot: &SnapshotReader, options: &RestoreOptions) -> Result<(), Error> {
    if snapshot.attribute("redis.mode").as_deref() == Some("aof") {
        return Err(Error::Unsupported(
            "an AOF snapshot restores into a directory: give --target DIR and start redis-server on it (with \
             appendonly yes)"
                .into(),
        ));
    }
    let entry = snapshot
        .entry(RDB_ENTRY)
        .ok_or_else(|| Error::Corrupt(format!("snapshot {} has no {RDB_ENTRY} entry", snapshot.id())))?;
    let what = format!("{RDB_ENTRY} of snapshot {}", snapshot.id());
    restore_live_rdb(config, snapshot, options, snapshot.open(RDB_ENTRY)?, entry.size, &what)?;
    Ok(())
}

/// Restores one RDB (`what`, `size` bytes) into the live server, key by
/// key; returns the connection for what follows.
fn restore_live_rdb(
    config: &RedisConfig,
    snapshot: &SnapshotReader,
    options: &RestoreOptions,
    rdb: impl Read,
    size: u64,
    what: &str,
) -> Result<Conn, Error> {
    let target = config.target()?;
    let mut conn = Conn::open(&target)?;
    let info = conn.info("server")?;
    let server = info.get("redis_version").cloned().unwrap_or_else(|| "(unknown version)".into());
    let parser = Parser::new(rdb, Depth::Shallow).map_err(|e| rdb_failure(what, e))?.capture(true);
    let version = parser.version();
    let loads = client::server_rdb_version(&info);
    if loads.is_none_or(|v| v < version) {
        return Err(Error::Unsupported(format!(
            "the snapshot is RDB version {version} (from Redis {}); Redis {server} at {} loads up to version {}: \
             restore into a Redis at least as new as the one backed up",
            snapshot.attribute("redis.version").unwrap_or_else(|| "?".into()),
            conn.addr(),
            loads.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
        )));
    }
    let existing = keyspace_keys(&conn.info("keyspace")?);
    if existing > 0 && !config.flush && !options.force {
        return Err(Error::Other(format!(
            "Redis at {} already holds {existing} keys; add --set flush=true to empty it first, or --force to merge \
             (keys of the same name are replaced)",
            conn.addr()
        )));
    }
    if config.flush {
        conn.call(&[b"FLUSHALL"])?;
        // Functions exist from 7.0; an older server has none to flush.
        if let Err(e) = conn.call(&[b"FUNCTION", b"FLUSH"]) {
            host::debug(format!("FUNCTION FLUSH: {e}"));
        }
    }
    let addr = conn.addr().to_string();
    let mut live = LiveRestore {
        conn,
        replace: config.flush || options.force,
        version,
        db: None,
        batch: Vec::new(),
        in_flight: VecDeque::new(),
        restored: 0,
        functions: 0,
        skipped_modules: 0,
    };
    let mut parser = parser;
    let mut n = 0u64;
    while let Some(item) = parser.next_item().map_err(|e| rdb_failure(what, e))? {
        live.item(item)?;
        n += 1;
        if n.is_multiple_of(8192) {
            host::check_cancelled()?;
            host::progress(parser.offset(), Some(size));
        }
    }
    live.send()?;
    while !live.in_flight.is_empty() {
        live.receive_one()?;
    }
    host::progress(size, Some(size));
    host::info(format!(
        "restored {} keys and {} function libraries into Redis {server} at {addr}{}",
        live.restored,
        live.functions,
        if live.skipped_modules > 0 {
            format!("; skipped {} module values", live.skipped_modules)
        } else {
            String::new()
        }
    ));
    Ok(live.conn)
}

/// `to_offset` into a live server: the base RDB key by key, then the
/// commands, pipelined, every reply checked.
fn restore_live_to(
    config: &RedisConfig,
    snapshot: &SnapshotReader,
    options: &RestoreOptions,
    plan: &replay::Plan,
) -> Result<replay::Replayed, Error> {
    let what = replay::base_name(snapshot, plan);
    let size = match &plan.base {
        replay::Base::Snapshot => snapshot.entry(RDB_ENTRY).map(|e| e.size),
        replay::Base::Item(key) => snapshot.streams().stat(&plan.stream, key)?.map(|i| i.size),
    }
    .unwrap_or(0);
    let mut conn = restore_live_rdb(config, snapshot, options, replay::open_base(snapshot, plan)?, size, &what)?;
    let mut waiting = 0usize;
    let mut sent = 0u64;
    let drain = |conn: &mut Conn, waiting: &mut usize, sent: u64| -> Result<(), Error> {
        conn.flush()?;
        for _ in 0..*waiting {
            if let client::Reply::Error(e) = conn.reply()? {
                return Err(Error::Other(format!(
                    "replaying {} into Redis at {}: a command failed: {e} ({sent} commands were sent)",
                    plan.stream,
                    conn.addr()
                )));
            }
        }
        *waiting = 0;
        Ok(())
    };
    let reader = snapshot.streams();
    let done = replay::replay(&reader, plan, |cmd| {
        let n = repl::commands(cmd).map_err(Error::Corrupt)?.len();
        conn.push_raw(cmd);
        waiting += n;
        sent += n as u64;
        if waiting >= BATCH || conn.pending() >= BATCH_BYTES {
            drain(&mut conn, &mut waiting, sent)?;
        }
        Ok(())
    })?;
    drain(&mut conn, &mut waiting, sent)?;
    host::info(format!(
        "replayed {} commands of {} after {what} (offset {}) up to offset {} into Redis at {}",
        done.commands,
        plan.stream,
        plan.base_offset,
        done.reached,
        conn.addr()
    ));
    Ok(done)
}

// ---------------------------------------------------------------------------
// Verify

fn verify_rdb(snapshot: &SnapshotReader, report: &mut VerifyReport) -> Result<(), Error> {
    let Some(entry) = snapshot.entry(RDB_ENTRY) else {
        report.problem(RDB_ENTRY, "the snapshot has no dump.rdb entry");
        return Ok(());
    };
    match parse_rdb(snapshot.open(RDB_ENTRY)?, Depth::Deep) {
        Ok(stats) => {
            report.checked(stats.total_keys() + 1, stats.bytes);
            report.note(format!("{RDB_ENTRY}: {}", stats.summary()));
            if stats.module_keys > 0 {
                report.note(format!(
                    "{} module values ({}) were read past, not checked: only their module can judge them",
                    stats.module_keys,
                    stats.modules.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if let Some(recorded) = snapshot.attribute("redis.keys")
                && recorded != stats.total_keys().to_string()
            {
                report.problem(RDB_ENTRY, format!("holds {} keys, the backup recorded {recorded}", stats.total_keys()));
            }
            if stats.bytes != entry.size {
                report.problem(RDB_ENTRY, format!("parsed {} bytes of {}", stats.bytes, entry.size));
            }
        }
        Err(e) if e.io => return Err(rdb_failure(RDB_ENTRY, e)),
        Err(e) => report.problem(RDB_ENTRY, e.to_string()),
    }
    Ok(())
}

fn verify_aof(snapshot: &SnapshotReader, report: &mut VerifyReport) -> Result<(), Error> {
    let mpath = snapshot.attribute("redis.aof.manifest").unwrap_or_default();
    let Some(prefix) = mpath.rsplit_once('/').map(|(p, _)| p.to_string()) else {
        report.problem("(manifest)", "the snapshot does not name its AOF manifest");
        return Ok(());
    };
    let mut text = String::new();
    if snapshot.entry(&mpath).is_none() {
        report.problem(&mpath, "the manifest entry is missing");
        return Ok(());
    }
    snapshot.open(&mpath)?.read_to_string(&mut text).map_err(|e| Error::from(e).context(&mpath))?;
    let files = match aof::parse_manifest(&text) {
        Ok(f) => aof::load_order(&f),
        Err(e) => {
            report.problem(&mpath, e);
            return Ok(());
        }
    };
    report.checked(1, text.len() as u64);
    let mut named: BTreeSet<String> = BTreeSet::from([mpath.clone()]);
    for f in &files {
        host::check_cancelled()?;
        let path = format!("{prefix}/{}", f.name);
        named.insert(path.clone());
        if snapshot.entry(&path).is_none() {
            report.problem(&path, "named by the manifest but missing from the snapshot");
            continue;
        }
        let r = snapshot.open(&path)?;
        if f.name.ends_with(".rdb") {
            match parse_rdb(r, Depth::Deep) {
                Ok(stats) => {
                    report.checked(stats.total_keys() + 1, stats.bytes);
                    report.note(format!("{path}: {}", stats.summary()));
                }
                Err(e) if e.io => return Err(rdb_failure(&path, e)),
                Err(e) => report.problem(&path, e.to_string()),
            }
        } else {
            match aof::check_commands(r) {
                Ok((commands, bytes)) => {
                    report.checked(commands, bytes);
                    report.note(format!("{path}: {commands} commands"));
                }
                Err(e) => report.problem(&path, e),
            }
        }
    }
    for e in snapshot.entries() {
        if e.kind == EntryKind::File && !named.contains(&e.path) {
            report.problem(&e.path, "a file the manifest does not name");
        }
    }
    Ok(())
}

impl Plugin for Redis {
    type Config = RedisConfig;

    fn info() -> PluginInfo {
        PluginInfo::new(
            "redis",
            env!("CARGO_PKG_VERSION"),
            "Redis: RDB snapshots over the replication protocol or the AOF directory; live or file restore; follows the replication stream for restores to an offset",
        )
        .schema(SCHEMA)
        .restore_modes(true, true)
    }

    fn source(config: &RedisConfig) -> String {
        match config.mode {
            Mode::Rdb => match config.target() {
                Ok(t) => format!("redis:{}", t.addr()),
                Err(_) => String::new(),
            },
            Mode::Aof => config.aof_dir().map(|d| format!("redis-aof:{d}")).unwrap_or_default(),
        }
    }

    fn capabilities(config: &RedisConfig) -> Vec<Capability> {
        match config.mode {
            Mode::Rdb => config.target().map(|t| vec![Capability::Connect(t.addr())]).unwrap_or_default(),
            Mode::Aof => config.data_dir.iter().map(|d| Capability::ReadDir(d.clone())).collect(),
        }
    }

    fn snapshot(config: RedisConfig, _parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        match config.mode {
            Mode::Rdb => snapshot_rdb(&config, sink),
            Mode::Aof => snapshot_aof(&config, sink),
        }
    }

    fn restore(config: RedisConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        if let Some(to) = config.to_offset().map_err(|e| Error::InvalidConfig(format!("to_offset: {e}")))? {
            let plan = replay::plan(snapshot, to)?;
            let done = match options.directory.as_deref() {
                Some(dir) => replay::restore_aof_dir(snapshot, &plan, dir, options.force)?,
                None => restore_live_to(&config, snapshot, &options, &plan)?,
            };
            if let ToOffset::At(n) = to
                && done.reached < n
            {
                host::info(format!(
                    "offset {n} falls inside a command or a transaction of {}: replayed up to offset {}",
                    plan.stream, done.reached
                ));
            }
            return Ok(());
        }
        match options.directory.clone() {
            Some(dir) => restore_files(snapshot, &dir, &options),
            None => restore_live(&config, snapshot, &options),
        }
    }

    fn verify(_config: RedisConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        match snapshot.attribute("redis.mode").as_deref() {
            Some("aof") => verify_aof(snapshot, &mut report)?,
            _ => {
                verify_rdb(snapshot, &mut report)?;
                replay::verify_stream(snapshot, &mut report)?;
            }
        }
        Ok(report)
    }

    fn follow(config: RedisConfig, sink: &StreamSink) -> Result<(), Error> {
        follow::follow(&config, sink)
    }
}

coffer_sdk::export!(Redis);
