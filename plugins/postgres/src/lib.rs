//! coffer's `postgres` plugin: physical base backups of a PostgreSQL 15+
//! cluster over the replication protocol, its WAL archived in the plugin's
//! stream, restores into a directory (to the backup's end or to a point in
//! time), and verification against the backup manifest and the archive.
//!
//! - **Backup** (`--set url=postgres://backup@10.0.0.5:5432/`): one
//!   replication connection runs `BASE_BACKUP` with a fast checkpoint, the
//!   WAL the backup needs and a manifest with CRC-32C checksums. The tar
//!   stream is cut into one entry per file as it arrives; the manifest is
//!   stored as `backup_manifest`, as `pg_basebackup` writes it.
//! - **Restore** (`--target DIR`): the files with their modes, into an
//!   empty directory. With `to_time`, `to_lsn`, `to_xid` or `to_end` it
//!   also writes `recovery.signal` and the recovery settings, so the stock
//!   `postgres` fetches WAL with the host's fetch command and stops at the
//!   target, after checking the target against the archive.
//! - **Archive** (`coffer wal push %p`, that is `coffer stream push --plugin
//!   postgres`): each WAL file PostgreSQL hands over is checked and appended
//!   to the stream `pg-<system identifier>`; a base backup declares that it
//!   needs the stream from its start segment on, so `coffer forget` keeps
//!   what remaining backups need.
//! - **Verify**: every stored file against the manifest's sizes and
//!   checksums (missing, extra and damaged files by path), the WAL the
//!   snapshot carries page by page, the archive's coverage from the
//!   backup's start (gaps, timelines), and with `data_dir` a restored
//!   directory the same way `pg_verifybackup` does.
//!
//! [`backup`] reads the `BASE_BACKUP` stream, [`conn`] is the
//! replication-mode client and its authentication, [`tar`] the member
//! headers, [`manifest`] the manifest and its checksums, [`recovery`] the
//! settings a point-in-time restore writes, [`verify`] the checks,
//! [`archive`] the WAL stream.

pub mod archive;
pub mod backup;
pub mod conn;
pub mod manifest;
pub mod receive;
pub mod recovery;
pub mod tar;
pub mod verify;
pub mod wal;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::time::Duration;

use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, EntryMeta, Error, Plugin, PluginInfo, RestoreOptions, Sink,
    SnapshotReader, StreamSink, Timestamp, VerifyReport, host, shell_quote,
};
use conn::{Conn, Target, Tls};
use serde::Deserialize;
use wal::{Lsn, segment_name};

/// The plugin.
pub struct Postgres;

/// `coffer backup postgres --set url=postgres://backup@127.0.0.1:5432/
/// --set password_file=/etc/coffer/pg.pw`; restore and verify options too.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The server, `postgres://user@host:port/`.
    #[serde(default)]
    url: Option<String>,
    /// Role to log in as; the URL's when absent.
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
    /// The backup label (`backup_label`, `pg_stat_progress_basebackup`).
    #[serde(default)]
    label: Option<String>,
    /// Checkpoint at once (default) rather than spread.
    #[serde(default = "yes")]
    fast_checkpoint: bool,
    /// Restore: recover to this time.
    #[serde(default)]
    to_time: Option<String>,
    /// Restore: recover to this LSN.
    #[serde(default)]
    to_lsn: Option<String>,
    /// Restore: recover to this transaction id.
    #[serde(default)]
    to_xid: Option<String>,
    /// Restore: recover to the end of the archived WAL.
    #[serde(default)]
    to_end: bool,
    /// Restore: stop after the target (default) or just before it.
    #[serde(default = "yes")]
    to_inclusive: bool,
    /// Restore: what the server does at the target.
    #[serde(default)]
    target_action: recovery::Action,
    /// Restore: whether the restored cluster archives WAL.
    #[serde(default)]
    archive_mode: recovery::ArchiveMode,
    /// Restore: the command PostgreSQL runs to fetch archived WAL (default:
    /// the host's fetch command).
    #[serde(default)]
    restore_command: Option<String>,
    /// Backup and archive: the WAL stream (default `pg-<system identifier>`).
    #[serde(default)]
    stream: Option<String>,
    /// Archive: the cluster's data directory, for the system identifier in
    /// `global/pg_control` (history and backup history files carry none).
    #[serde(default)]
    pgdata_dir: Option<String>,
    /// Verify: a restored data directory to check against the manifest.
    #[serde(default)]
    data_dir: Option<String>,
    /// Follow: the physical replication slot to stream WAL from.
    #[serde(default)]
    slot: Option<String>,
    /// Follow: create the slot when it does not exist.
    #[serde(default)]
    create_slot: bool,
    /// Follow: seconds between stored copies of the segment in progress
    /// (0: whole segments only).
    #[serde(default = "default_partial_interval")]
    partial_interval: u64,
    /// libpq's `sslmode`: whether to ask for TLS; the host reads it too, for
    /// how strictly it checks the server.
    #[serde(default)]
    sslmode: Option<String>,
    /// A CA certificate file the host trusts besides the system's (read by
    /// the host only).
    #[serde(default)]
    #[allow(dead_code)]
    ca_file: Option<String>,
    /// The client certificate the host presents (read by the host only).
    #[serde(default)]
    #[allow(dead_code)]
    cert_file: Option<String>,
    /// Its key (read by the host only; this plugin never sees it).
    #[serde(default)]
    #[allow(dead_code)]
    key_file: Option<String>,
}

fn default_partial_interval() -> u64 {
    10
}

fn yes() -> bool {
    true
}

impl Config for PostgresConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.url
            && let Err(e) = Target::parse(u, self.user.as_deref(), None)
        {
            return Err(ConfigError::field("url", e.to_string().trim_start_matches("invalid config: url: ")));
        }
        if let Err(e) = Tls::from_sslmode(self.sslmode.as_deref()) {
            return Err(ConfigError::field("sslmode", e.to_string().trim_start_matches("invalid config: sslmode: ")));
        }
        if let Some(d) = &self.data_dir
            && !d.starts_with('/')
        {
            return Err(ConfigError::field("data_dir", "must be an absolute path"));
        }
        if let Some(l) = &self.label
            && (l.len() > 1000 || l.contains('\n'))
        {
            return Err(ConfigError::field("label", "must be one line of at most 1000 bytes"));
        }
        if let Some(s) = &self.stream {
            let ok = !s.is_empty()
                && s.len() <= 200
                && !s.starts_with(['.', '-'])
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(ConfigError::field(
                    "stream",
                    format!(
                        "{s:?} is not a stream name: use 1 to 200 letters, digits, '.', '_' or '-' (such as \
                         pg-7283947561234567890)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl PostgresConfig {
    fn target(&self) -> Result<Target, Error> {
        let url = self.url.as_deref().ok_or_else(|| {
            Error::InvalidConfig("url: is required (postgres://user@host:port/ of the server to back up)".into())
        })?;
        let mut t = Target::parse(url, self.user.as_deref(), self.password.as_deref())?;
        t.tls = Tls::from_sslmode(self.sslmode.as_deref())?;
        Ok(t)
    }

    fn text(v: &Option<String>) -> Option<String> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
    }

    /// True when the restore recovers past the backup's end.
    fn targeted(&self) -> bool {
        [&self.to_time, &self.to_lsn, &self.to_xid].iter().any(|v| Self::text(v).is_some()) || self.to_end
    }

    fn plan(&self) -> Result<recovery::Plan, Error> {
        let text = Self::text;
        let (time, lsn, xid) = (text(&self.to_time), text(&self.to_lsn), text(&self.to_xid));
        recovery::Plan::new(
            time.as_deref(),
            lsn.as_deref(),
            xid.as_deref(),
            self.to_end,
            self.to_inclusive,
            self.target_action,
            self.archive_mode,
            self.restore_command.as_deref(),
        )
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "url": {"type": "string", "x-coffer-grant": "connect", "description": "postgres://user@host:port/ of the server; granted as an address. The role needs REPLICATION (or superuser) and a pg_hba.conf `replication` line."},
    "user": {"type": "string", "description": "Role to log in as (default: the URL's)."},
    "password": {"type": "string", "description": "Password; prefer password_file or password_env. Never stored."},
    "password_file": {"type": "string", "description": "File holding the password, read by the host."},
    "password_env": {"type": "string", "description": "Environment variable holding the password, read by the host."},
    "label": {"type": "string", "description": "Backup label (default: coffer)."},
    "fast_checkpoint": {"type": "boolean", "description": "Checkpoint at once (default true) rather than spread over checkpoint_completion_target."},
    "to_time": {"type": "string", "description": "Restore: recover to this time (RFC 3339, or YYYY-MM-DD HH:MM:SS with an offset; UTC when none)."},
    "to_lsn": {"type": "string", "description": "Restore: recover to this WAL position (0/3000148)."},
    "to_xid": {"type": "string", "description": "Restore: recover to this transaction id."},
    "to_end": {"type": "boolean", "description": "Restore: recover to the end of the archived WAL."},
    "to_inclusive": {"type": "boolean", "description": "Restore: stop just after the target (default true) or just before it."},
    "target_action": {"type": "string", "enum": ["promote", "pause", "shutdown"], "description": "Restore: what the server does at the target (default promote)."},
    "archive_mode": {"type": "string", "enum": ["preserve", "off"], "description": "Restore: keep the cluster's archiving (default) or turn it off in the restored copy."},
    "restore_command": {"type": "string", "description": "Restore: the command PostgreSQL runs to fetch WAL (default: coffer's own fetch command for this repository and stream)."},
    "stream": {"type": "string", "description": "Backup, archive and follow: the WAL stream (default pg-<system identifier>)."},
    "pgdata_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "Archive: the cluster's data directory, granted read-only, for the system identifier in global/pg_control (history files carry none; default: the directory above pg_wal/)."},
    "data_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "Verify: a restored data directory (before it is started), granted read-only, checked against the backup manifest."},
    "slot": {"type": "string", "description": "Follow: the physical replication slot to stream WAL from, so the server keeps WAL until coffer stored it."},
    "create_slot": {"type": "boolean", "description": "Follow: create the slot when it does not exist (default false)."},
    "partial_interval": {"type": "integer", "minimum": 0, "description": "Follow: seconds between stored copies of the WAL segment in progress, which bound how far a restore may trail the server (default 10; 0: whole segments only)."},
    "sslmode": {"type": "string", "enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"], "x-coffer-grant": "tls-verify", "description": "TLS as libpq means it: prefer (the default: TLS when offered, checked by chain and name, or plain TCP when the server has none or its certificate is refused), require (TLS, the certificate not checked; with ca_file its chain is), verify-ca (chain checked), verify-full (chain and host name checked), disable. allow is taken as prefer."},
    "ca_file": {"type": "string", "x-coffer-grant": "tls-ca", "description": "PEM file of the CA that signed the server's certificate, trusted besides the system's; read by the host."},
    "cert_file": {"type": "string", "x-coffer-grant": "tls-client-cert", "description": "PEM client certificate the host presents (for `cert` authentication)."},
    "key_file": {"type": "string", "x-coffer-grant": "tls-client-key", "description": "Its PEM private key; read by the host only, never by the plugin."}
  }
}"#;

/// The entry holding the backup manifest.
const MANIFEST_ENTRY: &str = "backup_manifest";
/// Copy buffer.
const BUF: usize = 1 << 20;
/// Oldest server this plugin backs up (`server_version_num`).
const MIN_SERVER_VERSION: u32 = 150000;

/// Attributes this plugin sets.
mod attr {
    pub const SYSTEM_IDENTIFIER: &str = "pg.system-identifier";
    pub const TIMELINE: &str = "pg.timeline";
    pub const START_LSN: &str = "pg.start-lsn";
    pub const STOP_LSN: &str = "pg.stop-lsn";
    pub const STOP_TIMELINE: &str = "pg.stop-timeline";
    pub const START_WAL: &str = "pg.start-wal";
    pub const STOP_WAL: &str = "pg.stop-wal";
    pub const SEGMENT_SIZE: &str = "pg.wal-segment-size";
    pub const SERVER_VERSION: &str = "pg.server-version";
    pub const SERVER_VERSION_NUM: &str = "pg.server-version-num";
    pub const START_TIME: &str = "pg.start-time";
    pub const STOP_TIME: &str = "pg.stop-time";
    pub const LABEL: &str = "pg.label";
    pub const FILES: &str = "pg.files";
    /// Set only when the config names the stream.
    pub const WAL_STREAM: &str = "pg.wal-stream";
}

/// The first column of the first row of a query on `conn`.
fn first_value(conn: &mut Conn, q: &str, what: &str) -> Result<Vec<Option<String>>, Error> {
    match conn.query(q)? {
        Ok(rows) => rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {} answered {what} with no row", conn.addr()))),
        Err(e) => Err(Error::other(format!("PostgreSQL at {}: {what}: {e}", conn.addr()))),
    }
}

/// RFC 3339 UTC text of a time.
fn rfc3339(t: std::time::SystemTime) -> String {
    let ts = Timestamp::from(t);
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanoseconds)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// What the server is, read before the backup.
struct Server {
    version: String,
    version_num: u32,
    system_identifier: u64,
    segment_size: u64,
}

fn inspect(conn: &mut Conn) -> Result<Server, Error> {
    let addr = conn.addr().to_string();
    let num = conn.show("server_version_num")?;
    let version_num: u32 =
        num.trim().parse().map_err(|_| Error::Corrupt(format!("PostgreSQL at {addr}: server_version_num {num:?}")))?;
    let version = conn.server_version.clone();
    if version_num < MIN_SERVER_VERSION {
        return Err(Error::Unsupported(format!(
            "PostgreSQL at {addr} is version {version}; coffer's postgres plugin backs up PostgreSQL 15 and later"
        )));
    }
    let row = first_value(conn, "IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM")?;
    let sysid = row.first().cloned().flatten().unwrap_or_default();
    let system_identifier: u64 = sysid
        .parse()
        .map_err(|_| Error::Corrupt(format!("PostgreSQL at {addr} sent the system identifier {sysid:?}")))?;
    let seg = conn.show("wal_segment_size")?;
    let segment_size = wal::parse_size_setting(&seg)
        .filter(|s| coffer_pgwal::valid_segment_size(*s))
        .ok_or_else(|| Error::Corrupt(format!("PostgreSQL at {addr}: wal_segment_size {seg:?}")))?;
    Ok(Server { version, version_num, system_identifier, segment_size })
}

impl Plugin for Postgres {
    type Config = PostgresConfig;

    fn info() -> PluginInfo {
        PluginInfo::new(
            "postgres",
            env!("CARGO_PKG_VERSION"),
            "PostgreSQL 15+ physical base backups over the replication protocol, point-in-time restore, manifest \
             verification",
        )
        .schema(SCHEMA)
        .restore_modes(true, false)
    }

    fn source(config: &PostgresConfig) -> String {
        match config.target() {
            Ok(t) => format!("postgres:{}", t.addr()),
            Err(_) => String::new(),
        }
    }

    fn capabilities(config: &PostgresConfig) -> Vec<Capability> {
        let mut caps = Vec::new();
        if let Ok(t) = config.target() {
            caps.push(Capability::Connect(t.addr()));
        }
        caps
    }

    fn snapshot(config: PostgresConfig, _parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        let target = config.target()?;
        let mut conn = Conn::open(&target)?;
        let server = inspect(&mut conn)?;
        host::info(format!(
            "PostgreSQL {} at {}, system identifier {}, WAL segments of {} MiB",
            server.version,
            conn.addr(),
            server.system_identifier,
            server.segment_size >> 20
        ));
        let label = config.label.clone().unwrap_or_else(|| "coffer".into());
        let req = backup::Request { label: label.clone(), fast_checkpoint: config.fast_checkpoint };
        let mut buf = vec![0u8; BUF];
        let mut backup_label = Vec::new();
        let mut seen: BTreeMap<String, ()> = BTreeMap::new();
        let finished = backup::run(
            &mut conn,
            &req,
            |h, content| {
                host::check_cancelled()?;
                if h.path == MANIFEST_ENTRY || seen.insert(h.path.clone(), ()).is_some() {
                    return Err(Error::Corrupt(format!("the base backup holds {} twice", h.path)));
                }
                let mtime = Timestamp { seconds: h.mtime, nanoseconds: 0 };
                let meta = match &h.kind {
                    tar::Kind::File => EntryMeta::file(h.path.as_str(), h.mode).size_hint(h.size),
                    tar::Kind::Dir => EntryMeta::dir(h.path.as_str(), h.mode),
                    tar::Kind::Symlink(to) => EntryMeta::symlink(h.path.as_str(), to.as_str()),
                }
                .mtime(mtime);
                let mut entry = sink.add_entry(meta)?;
                let keep_label = h.path == "backup_label" && h.size < 64 << 10;
                loop {
                    let n = content.read(&mut buf).map_err(Error::from)?;
                    if n == 0 {
                        break;
                    }
                    if keep_label {
                        backup_label.extend_from_slice(&buf[..n]);
                    }
                    entry.write_all(&buf[..n]).map_err(Error::from)?;
                }
                entry.finish()?;
                Ok(())
            },
            |done| host::progress(done, None),
        )?;
        let stopped = std::time::SystemTime::now();
        let manifest = manifest::Manifest::parse(&finished.manifest).map_err(|e| {
            Error::Corrupt(format!("the backup manifest PostgreSQL at {} sent does not check: {e}", conn.addr()))
        })?;
        let mut entry = sink.add_entry(EntryMeta::file(MANIFEST_ENTRY, 0o600).mtime(stopped))?;
        entry.write_all(&finished.manifest).map_err(Error::from)?;
        entry.finish()?;

        let seg = server.segment_size;
        let start_wal = segment_name(finished.start_timeline, finished.start_lsn.segno(seg), seg);
        let stop_wal = segment_name(finished.stop_timeline, finished.stop_lsn.prev_segno(seg), seg);
        let label_fields = manifest::parse_label(&String::from_utf8_lossy(&backup_label));
        let attrs = [
            (attr::SYSTEM_IDENTIFIER, server.system_identifier.to_string()),
            (attr::TIMELINE, finished.start_timeline.to_string()),
            (attr::START_LSN, finished.start_lsn.to_string()),
            (attr::STOP_LSN, finished.stop_lsn.to_string()),
            (attr::STOP_TIMELINE, finished.stop_timeline.to_string()),
            (attr::START_WAL, start_wal.clone()),
            (attr::STOP_WAL, stop_wal.clone()),
            (attr::SEGMENT_SIZE, seg.to_string()),
            (attr::SERVER_VERSION, server.version.clone()),
            (attr::SERVER_VERSION_NUM, server.version_num.to_string()),
            (attr::START_TIME, label_fields.get("START TIME").cloned().unwrap_or_default()),
            (attr::STOP_TIME, rfc3339(stopped)),
            (attr::LABEL, label),
            (attr::FILES, manifest.files.len().to_string()),
            (attr::WAL_STREAM, config.stream.clone().unwrap_or_default()),
        ];
        for (k, v) in attrs {
            if !v.is_empty() {
                sink.set_attribute(k, &v)?;
            }
        }
        // Recovery from this backup needs the archived WAL from its start
        // segment on: retention keeps it while the snapshot exists.
        let stream = config.stream.clone().unwrap_or_else(|| archive::stream_for_system(server.system_identifier));
        sink.need_stream(&stream, finished.start_lsn.segno(seg) * seg)?;
        host::info(format!(
            "base backup from {} ({start_wal}) to {} ({stop_wal}) on timeline {}: {} members, {} bytes; it needs \
             stream {stream} from {start_wal} on",
            finished.start_lsn, finished.stop_lsn, finished.stop_timeline, finished.members, finished.bytes
        ));
        Ok(())
    }

    fn restore(mut config: PostgresConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        let dir = options.directory()?.trim_end_matches('/').to_string();
        // Recovery past the backup's end reads the archive: the host's
        // fetch command becomes restore_command unless one was given.
        let base = archive::BaseBackup::of(snapshot);
        if config.targeted() && PostgresConfig::text(&config.restore_command).is_none() {
            let b = base.as_ref().map_err(|why| {
                Error::InvalidConfig(format!(
                    "snapshot {} cannot be restored to a point in time: {why} (was it made by the postgres plugin?)",
                    snapshot.id()
                ))
            })?;
            if let Some(fetch) = &options.fetch {
                // A segment the follower was still receiving is served from
                // its longest stored copy, zero-padded to a whole segment.
                config.restore_command = Some(fetch.shell_line(&format!(
                    "{} %f %p --or-latest-prefix %f.partial. --pad-to {}",
                    shell_quote(&b.stream),
                    b.segment_size
                )));
                if let Some(note) = &fetch.note {
                    host::warn(format!("restore_command for the restored cluster: {note}"));
                }
            }
        }
        let plan = config.plan()?;
        let partial = !options.include.is_empty();
        if partial && plan.needs_signal() {
            return Err(Error::InvalidConfig(
                "--path: a point-in-time restore restores the whole cluster; drop --path or the recovery target".into(),
            ));
        }
        // A target is checked against the archive before anything is written.
        let (to_lsn, to_time) = (PostgresConfig::text(&config.to_lsn), PostgresConfig::text(&config.to_time));
        if to_lsn.is_some() || to_time.is_some() {
            let b = base.as_ref().map_err(|why| {
                Error::InvalidConfig(format!(
                    "snapshot {} cannot be restored to a point in time: {why} (was it made by the postgres plugin?)",
                    snapshot.id()
                ))
            })?;
            archive::check_target(snapshot, b, to_lsn.as_deref(), to_time.as_deref())?;
        }
        prepare_target(&dir, options.force)?;
        // PostgreSQL refuses a data directory others can read; private
        // before the first file lands in it.
        host::set_metadata(".", 0o700, Timestamp::from(std::time::SystemTime::now()))?;
        let total: u64 = snapshot.entries().map(|e| e.size).sum();
        let mut buf = vec![0u8; BUF];
        let mut dirs = Vec::new();
        let mut done = 0u64;
        for e in snapshot.entries() {
            host::check_cancelled()?;
            if !options.includes(&e.path) {
                continue;
            }
            let dest = format!("{dir}/{}", e.path);
            match e.kind {
                EntryKind::Dir => {
                    fs::create_dir(&dest).map_err(|err| Error::from(err).context(&dest))?;
                    dirs.push(e);
                }
                EntryKind::File => {
                    let mut out = fs::File::create(&dest).map_err(|err| Error::from(err).context(&dest))?;
                    let mut r = snapshot.open(&e.path)?;
                    let mut written = 0u64;
                    loop {
                        let n = r.read(&mut buf).map_err(|err| Error::from(err).context(&e.path))?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buf[..n]).map_err(|err| Error::from(err).context(&dest))?;
                        written += n as u64;
                        done += n as u64;
                        host::progress(done, Some(total));
                    }
                    if written != e.size {
                        return Err(Error::Corrupt(format!(
                            "{}: read {written} bytes, the snapshot records {}",
                            e.path, e.size
                        )));
                    }
                    out.sync_all().map_err(|err| Error::from(err).context(&dest))?;
                    drop(out);
                    host::set_metadata(&e.path, e.mode, e.mtime)?;
                }
                EntryKind::Symlink => {
                    host::symlink(&e.path, e.link_target.as_deref().unwrap_or_default())?;
                }
            }
        }
        if !partial {
            write_recovery(&dir, snapshot, &plan)?;
        }
        for d in dirs.iter().rev() {
            host::set_metadata(&d.path, d.mode, d.mtime)?;
        }
        Ok(())
    }

    /// Streams WAL over a replication connection, segment by segment
    /// (see [`receive`]).
    fn follow(config: PostgresConfig, sink: &StreamSink) -> Result<(), Error> {
        let target = config.target()?;
        let opts = receive::ReceiveOptions {
            slot: config.slot.clone(),
            create_slot: config.create_slot,
            stream: config.stream.clone(),
            partial_interval: (config.partial_interval > 0).then(|| Duration::from_secs(config.partial_interval)),
        };
        receive::follow(&target, &opts, sink)
    }

    fn verify(config: PostgresConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let m = match read_manifest(snapshot) {
            Ok(m) => m,
            Err(why) => {
                report.problem(MANIFEST_ENTRY, why);
                archive::verify(snapshot, &mut report)?;
                return Ok(report);
            }
        };
        report.checked(1, 0);
        // The stored files.
        let stored: BTreeMap<String, u64> =
            snapshot.entries().filter(|e| e.kind == EntryKind::File).map(|e| (e.path, e.size)).collect();
        let total: u64 = m.files.iter().map(|f| f.size).sum();
        verify::check_files(
            &m,
            &stored,
            |p| Ok(Box::new(snapshot.open(p)?) as Box<dyn Read>),
            verify::Compared::Snapshot,
            "",
            &mut report,
            |d| {
                host::progress(d, Some(total));
                host::check_cancelled()
            },
        )?;
        check_snapshot_wal(snapshot, &stored, &mut report)?;
        // A restored directory, when given.
        if let Some(d) = &config.data_dir {
            let d = d.trim_end_matches('/');
            let mut files = BTreeMap::new();
            match list_files(d, "", &mut files) {
                Ok(()) => {
                    if files.contains_key("postmaster.pid") {
                        report.note(format!(
                            "{d} holds postmaster.pid: a server has run in it, so its files may differ from the \
                             backup; verify a restored directory before starting it"
                        ));
                    }
                    let prefix = format!("{d}/");
                    verify::check_files(
                        &m,
                        &files,
                        |p| Ok(Box::new(fs::File::open(format!("{d}/{p}")).map_err(Error::from)?) as Box<dyn Read>),
                        verify::Compared::DataDir,
                        &prefix,
                        &mut report,
                        |_| host::check_cancelled(),
                    )?;
                    report.note(format!("{d}: {} files compared with the backup manifest", files.len()));
                }
                Err(e) => report.problem(d, format!("cannot be read: {e}")),
            }
        }
        // The archive: what restoring the backup needs, how far
        // point-in-time recovery from it reaches.
        archive::verify(snapshot, &mut report)?;
        Ok(report)
    }

    fn stream_push(config: PostgresConfig, file: &str, sink: &StreamSink) -> Result<(), Error> {
        archive::push(config.stream.as_deref(), config.pgdata_dir.as_deref(), file, sink)
    }
}

/// Reads and checks the stored manifest; `Err` says why it is unusable.
fn read_manifest(snapshot: &SnapshotReader) -> Result<manifest::Manifest, String> {
    let e = snapshot.entry(MANIFEST_ENTRY).ok_or("missing: the snapshot holds no backup manifest")?;
    if e.size > 1 << 30 {
        return Err(format!("{} bytes, too large for a backup manifest", e.size));
    }
    let mut bytes = Vec::with_capacity(e.size as usize);
    snapshot.open(MANIFEST_ENTRY).map_err(|e| e.to_string())?.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    manifest::Manifest::parse(&bytes).map_err(|e| format!("the backup manifest does not check: {e}"))
}

/// Checks the WAL segments a snapshot carries from its start to its stop.
fn check_snapshot_wal(
    snapshot: &SnapshotReader,
    stored: &BTreeMap<String, u64>,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let get = |k: &str| snapshot.attribute(k).filter(|v| !v.is_empty());
    let (Some(sysid), Some(start), Some(stop), Some(seg), Some(tli)) = (
        get(attr::SYSTEM_IDENTIFIER).and_then(|v| v.parse::<u64>().ok()),
        get(attr::START_LSN).and_then(|v| Lsn::parse(&v).ok()),
        get(attr::STOP_LSN).and_then(|v| Lsn::parse(&v).ok()),
        get(attr::SEGMENT_SIZE).and_then(|v| v.parse::<u64>().ok()).filter(|s| coffer_pgwal::valid_segment_size(*s)),
        get(attr::STOP_TIMELINE).and_then(|v| v.parse::<u32>().ok()),
    ) else {
        report.note("the snapshot's WAL was not checked: its pg.* attributes are missing or unreadable");
        return Ok(());
    };
    let start_tli = get(attr::TIMELINE).and_then(|v| v.parse::<u32>().ok()).unwrap_or(tli);
    let mut missing = Vec::new();
    for segno in start.segno(seg)..=stop.prev_segno(seg) {
        host::check_cancelled()?;
        // A backup that spans a timeline switch (taken on a standby that
        // was promoted) holds segments of either timeline.
        let names: Vec<String> = [tli, start_tli].iter().map(|t| segment_name(*t, segno, seg)).collect();
        let Some(name) = names.iter().find(|n| stored.contains_key(&format!("pg_wal/{n}"))) else {
            missing.push(names[0].clone());
            continue;
        };
        let path = format!("pg_wal/{name}");
        let c = verify::SegmentCheck { system_identifier: sysid, segment_size: seg, segno, check_below: stop };
        let mut r = snapshot.open(&path)?;
        match verify::check_segment(&mut r, &c) {
            Ok(n) => report.checked(1, n),
            Err(why) => report.problem(&path, why),
        }
    }
    if !missing.is_empty() {
        report.note(format!(
            "{} WAL segments of the backup are not in the snapshot ({}..{}); the archive must hold them",
            missing.len(),
            missing[0],
            missing[missing.len() - 1]
        ));
    }
    Ok(())
}

/// Every regular file under `root/rel`, by relative path.
fn list_files(root: &str, rel: &str, out: &mut BTreeMap<String, u64>) -> Result<(), Error> {
    let dir = if rel.is_empty() { root.to_string() } else { format!("{root}/{rel}") };
    for item in fs::read_dir(&dir).map_err(|e| Error::from(e).context(&dir))? {
        let item = item.map_err(|e| Error::from(e).context(&dir))?;
        let name =
            item.file_name().into_string().map_err(|_| Error::other(format!("{dir}: a name that is not UTF-8")))?;
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let ft = item.file_type().map_err(|e| Error::from(e).context(&path))?;
        if ft.is_dir() {
            list_files(root, &path, out)?;
        } else if ft.is_file() {
            let len = item.metadata().map_err(|e| Error::from(e).context(&path))?.len();
            out.insert(path, len);
        }
    }
    Ok(())
}

/// Checks the restore target: empty, or with `force` no running server in
/// it, in which case what it holds is removed first (a data directory must
/// not mix two clusters' files).
fn prepare_target(dir: &str, force: bool) -> Result<(), Error> {
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::from(e).context(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(Error::Other(format!(
            "restore target {dir} is not empty ({} entries, such as {}); restore a cluster into an empty directory, \
             or pass --force to empty it first",
            names.len(),
            names[0]
        )));
    }
    if names.iter().any(|n| n == "postmaster.pid") {
        return Err(Error::Other(format!(
            "restore target {dir} holds postmaster.pid: a server may be running there; stop it (and remove \
             postmaster.pid if it is stale) before restoring over it"
        )));
    }
    for n in names {
        let p = format!("{dir}/{n}");
        let md = fs::symlink_metadata(&p).map_err(|e| Error::from(e).context(&p))?;
        let r = if md.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        r.map_err(|e| Error::from(e).context(&p))?;
    }
    host::info(format!("emptied {dir} before restoring (--force)"));
    Ok(())
}

/// Writes `recovery.signal` and appends the recovery settings.
fn write_recovery(dir: &str, snapshot: &SnapshotReader, plan: &recovery::Plan) -> Result<(), Error> {
    let now = Timestamp::from(std::time::SystemTime::now());
    let settings = plan.settings(&snapshot.id());
    if !settings.is_empty() {
        let path = format!("{dir}/postgresql.auto.conf");
        let existed = fs::metadata(&path).is_ok();
        let mut f =
            fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::from(e).context(&path))?;
        f.write_all(settings.as_bytes()).map_err(|e| Error::from(e).context(&path))?;
        f.sync_all().map_err(|e| Error::from(e).context(&path))?;
        if !existed {
            host::set_metadata("postgresql.auto.conf", 0o600, now)?;
        }
    }
    if plan.needs_signal() {
        let path = format!("{dir}/recovery.signal");
        fs::File::create(&path).map_err(|e| Error::from(e).context(&path))?;
        host::set_metadata("recovery.signal", 0o600, now)?;
        host::info(format!("wrote recovery.signal and the recovery settings into {dir}/postgresql.auto.conf"));
    }
    Ok(())
}

coffer_sdk::export!(Postgres);
