//! coffer-mongo-standin: a MongoDB wire-protocol stand-in server written for
//! coffer's tests. No real `mongod` can be installed where coffer is built,
//! so this server answers the subset of MongoDB 7.0's commands that coffer
//! backs up from and restores into, with the reply shapes, error codes and
//! oplog entries a 7.0 replica-set member produces. Its behaviour is checked
//! against the official Python driver (`check_with_pymongo.py`).
//!
//! Everything lives in memory; see README.md for what it does not do.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

mod auth;
mod dump;
mod query;
mod server;
mod wire;

pub use wire::{MAX_BSON_SIZE, MAX_MESSAGE_SIZE};

/// A database user: authentication is required as soon as one exists.
#[derive(Clone, Debug)]
pub struct User {
    /// The authentication database (`admin` for most).
    pub db: String,
    /// The user name.
    pub name: String,
    /// The password (SCRAM credentials are derived from it at start).
    pub password: String,
    /// Built-in roles as `(role, db)`: `read`, `readWrite`,
    /// `readAnyDatabase`, `readWriteAnyDatabase`, `backup`, `restore`,
    /// `root`, `clusterMonitor`.
    pub roles: Vec<(String, String)>,
}

impl User {
    /// A user with the given roles.
    pub fn new(db: &str, name: &str, password: &str, roles: &[(&str, &str)]) -> User {
        User {
            db: db.into(),
            name: name.into(),
            password: password.into(),
            roles: roles.iter().map(|(r, d)| (r.to_string(), d.to_string())).collect(),
        }
    }

    /// Parses `db:name:password:role@db,role@db` (the binary's `--user`).
    pub fn parse(spec: &str) -> Result<User, String> {
        let mut parts = spec.splitn(4, ':');
        let (Some(db), Some(name), Some(password), Some(roles)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("--user {spec:?}: expected db:name:password:role@db[,role@db...]"));
        };
        let roles = roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(|r| match r.split_once('@') {
                Some((role, rdb)) => Ok((role.to_string(), rdb.to_string())),
                None => Ok((r.to_string(), db.to_string())),
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(User { db: db.into(), name: name.into(), password: password.into(), roles })
    }
}

/// How to start the stand-in.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Act as the primary of a one-member replica set with this name (and
    /// keep `local.oplog.rs`); `None` is a standalone server.
    pub replset: Option<String>,
    /// Users; authentication is required when there are any.
    pub users: Vec<User>,
    /// TLS: paths of a PEM certificate chain and its PEM private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Cap on the oplog's entries: the oldest fall off beyond it.
    pub oplog_max_entries: Option<usize>,
    /// Seed from a mongodump directory (`<db>/<coll>.bson` and
    /// `<coll>.metadata.json`).
    pub load_dump: Option<PathBuf>,
    /// Compressors the server agrees to (`snappy`, `noop`).
    pub compressors: Vec<String>,
    /// With `replset`: answer as a secondary of the set, whose primary is
    /// this `host:port` (another stand-in, say). Writes are refused with
    /// NotWritablePrimary (10107) and reads without a read preference that
    /// allows a secondary with NotPrimaryNoSecondaryOk (13435), as on
    /// MongoDB; [`Standin::insert`] still seeds it.
    pub secondary_of: Option<String>,
    /// With `replset`: the set's members as `hello` lists them (`hosts`);
    /// this server alone when empty.
    pub members: Vec<String>,
}

/// Faults the tests can switch on while the server runs.
#[derive(Default, Debug)]
pub(crate) struct FaultState {
    /// Close the connection instead of answering the nth getMore from now.
    pub close_on_getmore: Option<usize>,
    /// Drop this namespace just before answering a getMore on it.
    pub drop_on_getmore: Option<String>,
    /// Fail the named command with (code, codeName, message) this many times.
    pub fail_command: Vec<(String, i32, String, usize)>,
}

/// The handle for injecting faults: see [`Standin::faults`].
#[derive(Clone)]
pub struct Faults(Arc<Mutex<FaultState>>);

impl Faults {
    /// Close the connection instead of replying to the `n`th getMore from
    /// now (1 is the next one): a server or network failure mid-cursor.
    pub fn close_after_batches(&self, n: usize) {
        lock(&self.0).close_on_getmore = Some(n.max(1));
    }
    /// Drop the collection `ns` (`db.coll`) just before the next getMore on
    /// it, as another client dropping it mid-backup would; the getMore then
    /// fails like MongoDB's (QueryPlanKilled).
    pub fn drop_collection_on_getmore(&self, ns: &str) {
        lock(&self.0).drop_on_getmore = Some(ns.to_string());
    }
    /// Answer the next `times` runs of `command` with error `code` (codeName
    /// from MongoDB's table where known) and `message`, like the
    /// `failCommand` fail point.
    pub fn fail_command(&self, command: &str, code: i32, message: &str, times: usize) {
        lock(&self.0).fail_command.push((command.to_string(), code, message.to_string(), times));
    }
    /// Switches every fault off.
    pub fn clear(&self) {
        *lock(&self.0) = FaultState::default();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running stand-in server; dropping it stops the server and closes its
/// connections.
pub struct Standin {
    port: u16,
    shared: Arc<server::Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Standin {
    /// Binds 127.0.0.1 (`options.port`, or a free port) and serves in
    /// background threads.
    pub fn start(options: Options) -> io::Result<Standin> {
        let listener = TcpListener::bind(("127.0.0.1", options.port))?;
        let port = listener.local_addr()?.port();
        let tls = match &options.tls {
            Some((cert, key)) => Some(Arc::new(tls_config(cert, key)?)),
            None => None,
        };
        let shared = Arc::new(server::Shared::new(options, port)?);
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new().name("mongo-standin-accept".into()).spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let conn_id = accept_shared.next_conn.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    lock(&accept_shared.sockets).insert(conn_id, clone);
                }
                let conn_shared = accept_shared.clone();
                let tls = tls.clone();
                let _ = std::thread::Builder::new().name("mongo-standin-conn".into()).spawn(move || {
                    match tls {
                        Some(config) => {
                            if let Ok(conn) = rustls::ServerConnection::new(config) {
                                serve(&conn_shared, conn_id, rustls::StreamOwned::new(conn, stream))
                            }
                        }
                        None => serve(&conn_shared, conn_id, stream),
                    }
                    // Closing means closing: the clone kept for Drop goes too.
                    if let Some(s) = lock(&conn_shared.sockets).remove(&conn_id) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                });
            }
        })?;
        Ok(Standin { port, shared, accept: Some(accept) })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mongodb://127.0.0.1:PORT/` (with `?replicaSet=NAME` for a replica
    /// set and `&tls=true` with TLS).
    pub fn url(&self) -> String {
        let mut params = Vec::new();
        if let Some(rs) = &self.shared.options.replset {
            params.push(format!("replicaSet={rs}"));
        }
        if self.shared.options.tls.is_some() {
            params.push("tls=true".to_string());
        }
        let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
        format!("mongodb://127.0.0.1:{}/{query}", self.port)
    }

    /// The fault switches.
    pub fn faults(&self) -> Faults {
        Faults(self.shared.faults.clone())
    }

    /// A copy of every document of `db.coll` in natural order (for tests
    /// that check what a restore wrote).
    pub fn documents(&self, db: &str, coll: &str) -> Vec<bson::Document> {
        self.shared.documents(db, coll)
    }

    /// Inserts documents directly, writing oplog entries as a client's
    /// insert would (for seeding tests fast).
    pub fn insert(&self, db: &str, coll: &str, docs: Vec<bson::Document>) -> Result<(), String> {
        self.shared.insert_direct(db, coll, docs)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, s) in lock(&self.shared.sockets).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> io::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad =
        |what: &str, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&cert.display().to_string(), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS certificate", &e))
}

/// Serves one connection until it closes or the server stops.
fn serve(shared: &server::Shared, conn_id: i64, mut stream: impl Read + Write) {
    let mut conn = server::Connection::new(conn_id);
    let next_response_id = AtomicI64::new(1);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let req = match wire::read_request(&mut stream) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let response_id = next_response_id.fetch_add(1, Ordering::SeqCst) as i32;
        let result = match req.body {
            wire::RequestBody::Msg { flags, body, sequences } => {
                let more_to_come = flags & wire::MORE_TO_COME != 0;
                // An awaitable hello (a driver's monitor) waits maxAwaitTimeMS
                // for a topology change, which never comes here; with
                // exhaustAllowed the server then streams one reply per wait.
                if let Some(wait) = shared.awaitable_hello(&body) {
                    if !sleep_unless_stopping(shared, wait) {
                        return;
                    }
                    if flags & wire::EXHAUST_ALLOWED != 0 {
                        let mut response_to = req.request_id;
                        let mut id = response_id;
                        loop {
                            let server::Outcome::Reply(reply) = shared.handle_msg(&mut conn, body.clone(), Vec::new())
                            else {
                                return;
                            };
                            if wire::write_msg(&mut stream, id, response_to, wire::MORE_TO_COME, &reply, None).is_err()
                                || !sleep_unless_stopping(shared, wait)
                            {
                                return;
                            }
                            response_to = id;
                            id = next_response_id.fetch_add(1, Ordering::SeqCst) as i32;
                        }
                    }
                }
                match shared.handle_msg(&mut conn, body, sequences) {
                    server::Outcome::Close => return,
                    server::Outcome::Reply(reply) => {
                        if more_to_come {
                            continue;
                        }
                        let compressor = req.compressor.filter(|_| !conn.last_uncompressible);
                        wire::write_msg(&mut stream, response_id, req.request_id, 0, &reply, compressor)
                    }
                }
            }
            wire::RequestBody::Query { collection, query } => {
                match shared.handle_legacy_query(&mut conn, &collection, query) {
                    server::Outcome::Close => return,
                    server::Outcome::Reply(reply) => {
                        wire::write_reply(&mut stream, response_id, req.request_id, &reply, None)
                    }
                }
            }
            wire::RequestBody::Invalid { code, code_name, message } => {
                let reply = server::error_doc(code, code_name, &message);
                wire::write_msg(&mut stream, response_id, req.request_id, 0, &reply, req.compressor)
            }
            wire::RequestBody::Unsupported => return,
        };
        if result.is_err() {
            return;
        }
    }
}

/// Sleeps `wait` in short steps; `false` when the server is stopping.
fn sleep_unless_stopping(shared: &server::Shared, wait: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + wait;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(std::time::Duration::from_millis(50)));
    }
}

/// The stand-in's databases by name.
pub(crate) type Databases = BTreeMap<String, server::Database>;
