//! What a plugin may touch: a [`GrantSet`] of read-only directories,
//! read-write directories and TCP addresses. Deny by default: an empty set
//! allows nothing, and every check goes through [`GrantSet::allows`].
//!
//! Grants come from the config the operator typed. Which fields grant what
//! is declared by the plugin's config schema ([`GrantRules::from_schema`]:
//! the `x-coffer-grant` annotation, contract 0.2.0); for a 0.1.0 component
//! it is inferred from key names as it always was ([`GrantRules::Inferred`]:
//! a `path` becomes a read-only directory, a `url` an address). Either way
//! the host grants exactly what the operator typed, nothing the plugin
//! chooses. Directories are preopened at their own (canonical) host path, so
//! a path in the config means the same inside and outside the sandbox.
//!
//! A `<scheme>+srv://host` URL (MongoDB's seed list) is granted through DNS:
//! the host looks up its SRV and TXT records when it grants it
//! ([`crate::dns`]), grants each SRV target as if it had been typed, and
//! keeps both answers for the plugin's `coffer:plugin/dns` questions.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::dns::{NameServers, SrvTarget};
use crate::tls::{TlsGrants, Verify};

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// One permission a plugin can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// Read a directory tree.
    ReadDir(PathBuf),
    /// Read and write a directory tree.
    WriteDir(PathBuf),
    /// Open TCP connections to an address (`host:port` as typed, and the
    /// socket addresses it resolved to when granted).
    Connect(String, Vec<SocketAddr>),
    /// Send HTTP requests to an authority (`https://host:port`), at the
    /// addresses its host resolved to when granted.
    Http(String, Vec<SocketAddr>),
}

impl Permission {
    /// A human description (`read-only access to /srv/www`).
    pub fn display_name(&self) -> String {
        match self {
            Permission::ReadDir(p) => format!("read-only access to {}", p.display()),
            Permission::WriteDir(p) => format!("read-write access to {}", p.display()),
            Permission::Connect(a, _) => format!("TCP connections to {a}"),
            Permission::Http(a, _) => format!("HTTP requests to {a}"),
        }
    }
}

/// A grant that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// A granted directory does not exist or is not a directory.
    #[error("cannot grant `{key}` = {path}: {reason}")]
    Directory {
        /// Config key.
        key: String,
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// A granted file (a CA, a client certificate or key, a secret) cannot
    /// be used.
    #[error("cannot grant `{key}` = {path}: {reason}")]
    File {
        /// Config key.
        key: String,
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// A granted address does not parse or resolve.
    #[error("cannot grant `{key}` = {value}: {reason}")]
    Address {
        /// Config key.
        key: String,
        /// The value as given.
        value: String,
        /// Why.
        reason: String,
    },
}

/// What a config field grants, as a plugin's schema declares it with
/// `"x-coffer-grant": "<kind>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// `read-dir`: a directory (or a list of them) read-only; not granted
    /// to restores.
    ReadDir,
    /// `read-file`: one file read-only (an archive to back up): WASI grants
    /// directories, so the host grants the file's directory read-only, for
    /// backups and verify only, and passes the file's canonical path on.
    ReadFile,
    /// `write-dir`: a directory read-write.
    WriteDir,
    /// `connect`: TCP to a URL's or `host:port`'s addresses (a URL may list
    /// several hosts, `mongodb://a:27017,b:27017/`), lookups of its host
    /// names, and TLS to them; for a `<scheme>+srv://host` URL, the same to
    /// the servers its SRV record lists, and that record and the host's TXT
    /// records ([`GrantSet::connect_with`]).
    Connect,
    /// `http`: HTTP requests to a URL's authority (scheme, host, port).
    Http,
    /// `secret-file`: a file only the host reads; its content is sent as
    /// the bearer token of the job's HTTP requests.
    SecretFile,
    /// `tls-ca`: a PEM file of CA certificates trusted besides the system's.
    TlsCa,
    /// `tls-client-cert`: the PEM certificate chain presented to servers.
    TlsClientCert,
    /// `tls-client-key`: its PEM private key, read by the host only.
    TlsClientKey,
    /// `tls-verify`: how strictly servers are checked (see [`Verify::parse`]).
    TlsVerify,
}

impl GrantKind {
    /// Every kind, in the order documented.
    pub const ALL: [GrantKind; 10] = [
        GrantKind::ReadDir,
        GrantKind::ReadFile,
        GrantKind::WriteDir,
        GrantKind::Connect,
        GrantKind::Http,
        GrantKind::SecretFile,
        GrantKind::TlsCa,
        GrantKind::TlsClientCert,
        GrantKind::TlsClientKey,
        GrantKind::TlsVerify,
    ];

    /// The annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::ReadDir => "read-dir",
            GrantKind::ReadFile => "read-file",
            GrantKind::WriteDir => "write-dir",
            GrantKind::Connect => "connect",
            GrantKind::Http => "http",
            GrantKind::SecretFile => "secret-file",
            GrantKind::TlsCa => "tls-ca",
            GrantKind::TlsClientCert => "tls-client-cert",
            GrantKind::TlsClientKey => "tls-client-key",
            GrantKind::TlsVerify => "tls-verify",
        }
    }

    /// What a value typed into such a field grants, for `plugin inspect`.
    pub fn meaning(self) -> &'static str {
        match self {
            GrantKind::ReadDir => "read-only access to the directory (backups and verify only)",
            GrantKind::ReadFile => {
                "read-only access to the file and the directory holding it (backups and verify only)"
            }
            GrantKind::WriteDir => "read-write access to the directory",
            GrantKind::Connect => {
                "TCP and TLS to the address; lookups of its host name (a `+srv` URL: the servers its SRV record \
                 lists, and its SRV and TXT records)"
            }
            GrantKind::Http => "HTTP requests to the URL's scheme, host and port",
            GrantKind::SecretFile => "a file only coffer reads, sent as the HTTP bearer token",
            GrantKind::TlsCa => "CA certificates trusted besides the system's",
            GrantKind::TlsClientCert => "the client certificate coffer presents",
            GrantKind::TlsClientKey => "the client key; read by coffer only, never by the plugin",
            GrantKind::TlsVerify => "how strictly coffer checks servers' certificates",
        }
    }

    fn parse(s: &str) -> Option<GrantKind> {
        GrantKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which config fields grant what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRules {
    /// A 0.1.0 component: inferred from key names (`path`, `paths`, `*_dir`,
    /// `*_path` read-only directories; `url`, `addr`, `address`, `*_url`,
    /// `*_addr` addresses).
    Inferred,
    /// Declared by the plugin's schema: (field, kind), in schema order.
    Declared(Vec<(String, GrantKind)>),
}

/// Most fields a schema may declare as grants.
const MAX_GRANT_FIELDS: usize = 64;

impl GrantRules {
    /// Reads the `x-coffer-grant` annotations of a config schema's top-level
    /// `properties`. A schema that is not JSON, or names a kind coffer does
    /// not know, is refused: the message says what to fix.
    pub fn from_schema(schema: &str) -> Result<GrantRules, String> {
        let v: serde_json::Value =
            serde_json::from_str(schema).map_err(|e| format!("its config schema is not JSON ({e})"))?;
        let mut out = Vec::new();
        let Some(props) = v.get("properties").and_then(|p| p.as_object()) else {
            return Ok(GrantRules::Declared(out));
        };
        for (field, def) in props {
            let Some(kind) = def.get("x-coffer-grant") else { continue };
            // The host fills some of these with secrets (`password` from
            // `password_file`); a grant's value is shown in messages.
            if coffer_repo::holds_secret(field) {
                return Err(format!(
                    "config field `{}` holds a secret by its name and cannot be a grant",
                    crate::host::printable(field)
                ));
            }
            let name =
                kind.as_str().ok_or_else(|| format!("config field `{field}`: `x-coffer-grant` must be a string"))?;
            let kind = GrantKind::parse(name).ok_or_else(|| {
                let known: Vec<&str> = GrantKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "config field `{field}` declares the unknown grant `{}` (known: {})",
                    crate::host::printable(name),
                    known.join(", ")
                )
            })?;
            out.push((field.clone(), kind));
            if out.len() > MAX_GRANT_FIELDS {
                return Err(format!("its schema declares more than {MAX_GRANT_FIELDS} grant fields"));
            }
        }
        Ok(GrantRules::Declared(out))
    }
}

/// Why a grant set is being built: which config keys grant what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `snapshot` and `verify`: directories are read-only.
    Read,
    /// `restore`: only the target directory is granted, read-write.
    Restore,
}

/// The SRV and TXT records of a granted `+srv` URL, as the host found them
/// when it granted the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvGrant {
    /// The URL's host (`cluster0.example.net`), lowercase: the name whose
    /// TXT records `txt` holds.
    pub host: String,
    /// The SRV record's name (`_mongodb._tcp.cluster0.example.net`).
    pub name: String,
    /// Its targets, in the record's order; each `target:port` is also a
    /// [`Permission::Connect`].
    pub targets: Vec<SrvTarget>,
    /// The host's TXT records (connection options), each one's strings
    /// joined.
    pub txt: Vec<String>,
}

/// The grants of one plugin job.
#[derive(Debug, Clone, Default)]
pub struct GrantSet {
    permissions: Vec<Permission>,
    /// The SRV and TXT answers of `+srv` grants.
    srv: Vec<SrvGrant>,
    tls: TlsGrants,
    /// The bearer token of HTTP requests (a `secret-file`'s content).
    bearer: Option<Arc<Zeroizing<String>>>,
}

/// Config keys whose string values are directories to read.
fn is_dir_key(key: &str) -> bool {
    key == "path" || key == "paths" || key.ends_with("_dir") || key.ends_with("_path")
}

/// Config keys whose string values are addresses to connect to.
fn is_addr_key(key: &str) -> bool {
    key == "url" || key == "addr" || key == "address" || key.ends_with("_url") || key.ends_with("_addr")
}

/// Default ports of URL schemes plugins use.
fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "postgres" | "postgresql" => 5432,
        "redis" | "rediss" => 6379,
        "mongodb" => 27017,
        "http" => 80,
        "https" => 443,
        "grpc" | "grpcs" => 7051,
        "ws" => 80,
        "wss" => 443,
        _ => return None,
    })
}

/// A URL with any password replaced, for messages.
fn without_password(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("<redacted>"));
            u.to_string()
        }
        Ok(_) => value.to_string(),
        Err(_) if value.contains('@') => "<unparsable address>".to_string(),
        Err(_) => value.to_string(),
    }
}

/// Lexically absolute and `..`-free version of `p` (relative to the current
/// directory), then canonicalized so symlinks in the granted path itself
/// are resolved once, by the operator's choice.
fn canonical_dir(key: &str, raw: &str) -> Result<PathBuf, GrantError> {
    let err = |reason: String| GrantError::Directory { key: key.into(), path: raw.into(), reason };
    if raw.trim().is_empty() {
        return Err(err("empty; give a directory".into()));
    }
    let p = Path::new(raw);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| err(format!("no current directory ({e})")))?.join(p)
    };
    let canon = abs.canonicalize().map_err(|e| err(format!("{e}")))?;
    if !canon.is_dir() {
        return Err(err("not a directory".into()));
    }
    if canon.to_str().is_none() {
        return Err(err("the path is not UTF-8".into()));
    }
    Ok(canon)
}

/// `raw` as an absolute canonical path of a regular file.
fn canonical_file(raw: &str) -> Result<PathBuf, String> {
    if raw.trim().is_empty() {
        return Err("empty; give a file".into());
    }
    let p = Path::new(raw);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("no current directory ({e})"))?.join(p)
    };
    let canon = abs.canonicalize().map_err(|e| e.to_string())?;
    if !canon.is_file() {
        return Err("not a regular file".into());
    }
    if canon.to_str().is_none() {
        return Err("the path is not UTF-8".into());
    }
    Ok(canon)
}

/// The `host:port`s a URL (one host, or a list as MongoDB's URLs allow)
/// or a bare `host:port` names.
fn host_ports(value: &str) -> Result<Vec<String>, String> {
    let Some((scheme, rest)) = value.split_once("://") else {
        return Ok(vec![value.to_string()]);
    };
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    if hosts.is_empty() {
        return Err("the URL has no host".into());
    }
    let mut out = Vec::new();
    for h in hosts.split(',') {
        // Let the URL parser check each host (IPv6 brackets, ports).
        let u = url::Url::parse(&format!("{scheme}://{h}/")).map_err(|e| format!("`{h}`: not a host ({e})"))?;
        let host = u.host_str().ok_or_else(|| format!("`{h}`: no host"))?;
        let port = u
            .port()
            .or_else(|| default_port(&scheme))
            .ok_or_else(|| format!("the URL has no port and `{scheme}` has no default"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        out.push(join_host_port(host, port));
    }
    Ok(out)
}

/// The service and host of a `<service>+srv://[user@]host[/...]` URL
/// (`mongodb`, `cluster0.example.net`); `None` for any other value. One
/// host name, no port: the SRV record gives the servers and their ports.
fn srv_url(value: &str) -> Result<Option<(String, String)>, String> {
    let Some((scheme, rest)) = value.split_once("://") else { return Ok(None) };
    let scheme = scheme.to_ascii_lowercase();
    let Some(service) = scheme.strip_suffix("+srv") else { return Ok(None) };
    if service.is_empty() || !service.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("`{scheme}` is not a `<service>+srv` scheme"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    if host.contains(',') {
        return Err(format!(
            "a `{scheme}://` URL names one host, whose SRV record lists the servers; give one host, or list the              servers in a `{service}://` URL"
        ));
    }
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return Err(format!("a `{scheme}://` URL names a DNS name, not an IP address"));
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        return Err(format!(
            "a `{scheme}://` URL has no port (`:{port}`): the SRV record gives the servers' ports; remove it"
        ));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a DNS name (letters, digits and `-` between dots)"));
    }
    if !host.contains('.') {
        return Err(format!("`{host}` has no domain; give the full DNS name the SRV record is under"));
    }
    Ok(Some((service.to_string(), host)))
}

/// `host:port` as grants write it (an IPv6 address in brackets).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The host part of a `host:port` (without IPv6 brackets).
fn host_of(host_port: &str) -> &str {
    let h = match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    h.trim_start_matches('[').trim_end_matches(']')
}

/// `scheme://host:port` of an HTTP(S) URL, the unit HTTP grants are made in.
pub(crate) fn http_authority(u: &url::Url) -> Result<String, String> {
    let scheme = u.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{scheme}` is not http or https"));
    }
    let host = u.host_str().ok_or("the URL has no host")?.to_ascii_lowercase();
    let port = u.port_or_known_default().ok_or("the URL has no port")?;
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
thread_local! {
    /// Lookups [`resolve`] made on this thread (tests count them).
    static LOOKUPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Name lookups made on this thread so far (for tests that prove a check
/// made none).
#[cfg(test)]
pub(crate) fn lookups() -> u64 {
    LOOKUPS.with(|n| n.get())
}

/// Resolves a `host:port` the operator typed. The one place the host looks
/// a name up: a name a plugin supplies never reaches it, since the lookup
/// itself would carry the name out (a DNS query is a message).
fn resolve(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    LOOKUPS.with(|n| n.set(n.get() + 1));
    Ok(host_port.to_socket_addrs()?.collect())
}

impl GrantSet {
    /// Nothing granted.
    pub fn none() -> Self {
        GrantSet::default()
    }

    /// The permissions, in the order granted.
    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    /// Grants read-only access to a directory tree; returns its canonical path.
    pub fn read_dir(&mut self, key: &str, path: &str) -> Result<PathBuf, GrantError> {
        let p = canonical_dir(key, path)?;
        if !self.permissions.iter().any(|g| matches!(g, Permission::ReadDir(q) | Permission::WriteDir(q) if *q == p)) {
            self.permissions.push(Permission::ReadDir(p.clone()));
        }
        Ok(p)
    }

    /// Grants read-write access to a directory tree; returns its canonical path.
    pub fn write_dir(&mut self, key: &str, path: &str) -> Result<PathBuf, GrantError> {
        let p = canonical_dir(key, path)?;
        self.permissions.retain(|g| !matches!(g, Permission::ReadDir(q) if *q == p));
        if !self.permissions.iter().any(|g| matches!(g, Permission::WriteDir(q) if *q == p)) {
            self.permissions.push(Permission::WriteDir(p.clone()));
        }
        Ok(p)
    }

    /// Grants TCP connections to `host:port` or to the hosts and ports of a
    /// URL (`postgres://user@db:5432/`, `mongodb://a:27017,b:27017/`). Names
    /// are resolved here, by the host; the plugin may then look up exactly
    /// those names and gets the addresses resolved here. A `+srv` URL is
    /// looked up with the name servers of [`NameServers::from_env`] (see
    /// [`GrantSet::connect_with`]).
    pub fn connect(&mut self, key: &str, value: &str) -> Result<(), GrantError> {
        self.connect_with(key, value, &NameServers::from_env())
    }

    /// [`GrantSet::connect`], asking `name_servers` for a `+srv` URL
    /// (`mongodb+srv://user@cluster0.example.net/db`: one host, no port).
    /// The host looks up the SRV record `_<scheme>._tcp.<host>` and the TXT
    /// record of `<host>`, refuses the grant when the SRV record has no
    /// target or names one outside the host's parent domain (the host minus
    /// its first label), grants each `target:port` with the addresses it
    /// resolved to as if it had been typed, and keeps both answers for the
    /// plugin ([`GrantSet::srv_targets`], [`GrantSet::txt_records`]).
    pub fn connect_with(&mut self, key: &str, value: &str, name_servers: &NameServers) -> Result<(), GrantError> {
        let shown = without_password(value);
        let err = |reason: String| GrantError::Address { key: key.into(), value: shown.clone(), reason };
        if let Some((service, host)) = srv_url(value).map_err(err)? {
            let found = crate::dns::lookup_service(name_servers, &service, &host).map_err(err)?;
            let mut targets = Vec::with_capacity(found.targets.len());
            for (t, addrs) in found.targets {
                self.permissions.push(Permission::Connect(join_host_port(&t.target, t.port), addrs));
                targets.push(t);
            }
            if !self.srv.iter().any(|g| g.name == found.srv_name) {
                self.srv.push(SrvGrant { host, name: found.srv_name, targets, txt: found.txt });
            }
            return Ok(());
        }
        for host_port in host_ports(value).map_err(err)? {
            let addrs = resolve(&host_port).map_err(|e| err(format!("cannot resolve {host_port} ({e})")))?;
            if addrs.is_empty() {
                return Err(err(format!("{host_port} resolved to no address")));
            }
            self.permissions.push(Permission::Connect(host_port, addrs));
        }
        Ok(())
    }

    /// Grants HTTP requests to a URL's authority (`https://api:6443/...`
    /// grants `https://api:6443`).
    pub fn http(&mut self, key: &str, value: &str) -> Result<(), GrantError> {
        let err = |reason: String| GrantError::Address { key: key.into(), value: without_password(value), reason };
        let u = url::Url::parse(value).map_err(|e| err(format!("not a URL ({e})")))?;
        let authority = http_authority(&u).map_err(err)?;
        if self.permissions.iter().any(|p| matches!(p, Permission::Http(a, _) if *a == authority)) {
            return Ok(());
        }
        // Resolved now, by the host, like a `connect` grant: requests go to
        // these addresses, whatever the name resolves to later.
        let host_port = authority.split_once("://").map(|(_, hp)| hp.to_string()).unwrap_or_default();
        let addrs = resolve(&host_port).map_err(|e| err(format!("cannot resolve {host_port} ({e})")))?;
        if addrs.is_empty() {
            return Err(err(format!("{host_port} resolved to no address")));
        }
        self.permissions.push(Permission::Http(authority, addrs));
        Ok(())
    }

    /// The TLS settings granted.
    pub fn tls(&self) -> &TlsGrants {
        &self.tls
    }

    /// The bearer token HTTP requests carry, if one was granted.
    pub(crate) fn bearer(&self) -> Option<Arc<Zeroizing<String>>> {
        self.bearer.clone()
    }

    /// Lines describing the TLS and secret grants, for `plugin inspect`.
    pub fn describe_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.tls.extra_roots.is_empty() {
            out.push(format!("{} extra trusted CA certificate(s)", self.tls.extra_roots.len()));
        }
        if self.tls.client_chain.is_some() {
            out.push("a client certificate (its key read by coffer only)".into());
        }
        if self.has_network() {
            out.push(self.tls.verify.describe().into());
        }
        if self.bearer.is_some() {
            out.push("a bearer token for HTTP requests (read by coffer only)".into());
        }
        for g in &self.srv {
            out.push(format!("the SRV record {} and the TXT records of {}, as coffer found them", g.name, g.host));
        }
        out
    }

    /// The SRV and TXT answers of the `+srv` URLs granted.
    pub fn srv_grants(&self) -> &[SrvGrant] {
        &self.srv
    }

    /// The targets of the SRV record `name` of a granted `+srv` URL
    /// (compared without case or a trailing dot), as found when it was
    /// granted; `None` for any other name. No query is made.
    pub fn srv_targets(&self, name: &str) -> Option<&[SrvTarget]> {
        let name = name.trim_end_matches('.');
        self.srv.iter().find(|g| g.name.eq_ignore_ascii_case(name)).map(|g| g.targets.as_slice())
    }

    /// The TXT records of the host of a granted `+srv` URL, as found when it
    /// was granted; `None` for any other name. No query is made.
    pub fn txt_records(&self, name: &str) -> Option<&[String]> {
        let name = name.trim_end_matches('.');
        self.srv.iter().find(|g| g.host.eq_ignore_ascii_case(name)).map(|g| g.txt.as_slice())
    }

    /// The addresses a granted host name resolved to, for the plugin's own
    /// lookups; `None` for a name that was not granted. An IP literal
    /// "resolves" to itself (no query is made).
    pub fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        let mut out: Vec<IpAddr> = Vec::new();
        let mut found = false;
        for g in &self.permissions {
            if let Permission::Connect(hp, addrs) = g
                && host_of(hp).eq_ignore_ascii_case(name)
            {
                found = true;
                for a in addrs {
                    if !out.contains(&a.ip()) {
                        out.push(a.ip());
                    }
                }
            }
        }
        found.then_some(out)
    }

    /// True if a plugin may verify a server by this name: a host name or
    /// address the operator granted.
    pub fn allows_server_name(&self, name: &str) -> bool {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self
                .permissions
                .iter()
                .any(|g| matches!(g, Permission::Connect(_, a) if a.iter().any(|s| s.ip() == ip)));
        }
        self.permissions.iter().any(|g| match g {
            Permission::Connect(hp, _) => host_of(hp).eq_ignore_ascii_case(name),
            Permission::Http(a, _) => a.split_once("://").is_some_and(|(_, hp)| host_of(hp).eq_ignore_ascii_case(name)),
            _ => false,
        })
    }

    /// True if HTTP requests to `authority` (`https://host:port`) were granted.
    pub fn allows_http(&self, authority: &str) -> bool {
        self.http_addrs(authority).is_some()
    }

    /// The addresses a granted HTTP authority resolved to when granted.
    pub(crate) fn http_addrs(&self, authority: &str) -> Option<&[SocketAddr]> {
        self.permissions.iter().find_map(|g| match g {
            Permission::Http(a, addrs) if a.eq_ignore_ascii_case(authority) => Some(addrs.as_slice()),
            _ => None,
        })
    }

    /// Builds the grants a config implies, and rewrites directory values in
    /// the config to their canonical absolute paths (what the plugin will
    /// see), with a 0.1.0 component's key-name rules ([`GrantRules::Inferred`]).
    pub fn from_config(config: &mut serde_json::Value, purpose: Purpose) -> Result<GrantSet, GrantError> {
        GrantSet::for_job(config, &GrantRules::Inferred, purpose)
    }

    /// Builds the grants a config implies under `rules`, and rewrites
    /// directory values in the config to their canonical absolute paths.
    ///
    /// For [`Purpose::Restore`] read-only directories are not granted (the
    /// restore target is granted by the caller with [`GrantSet::write_dir`]).
    /// Nothing but the fields the rules name grants anything. `+srv` URLs
    /// are looked up with the name servers of [`NameServers::from_env`].
    pub fn for_job(
        config: &mut serde_json::Value,
        rules: &GrantRules,
        purpose: Purpose,
    ) -> Result<GrantSet, GrantError> {
        GrantSet::for_job_with(config, rules, purpose, &NameServers::from_env())
    }

    /// [`GrantSet::for_job`], asking `name_servers` for `+srv` URLs.
    pub fn for_job_with(
        config: &mut serde_json::Value,
        rules: &GrantRules,
        purpose: Purpose,
        name_servers: &NameServers,
    ) -> Result<GrantSet, GrantError> {
        let mut g = GrantSet::none();
        let Some(map) = config.as_object_mut() else { return Ok(g) };
        let declared = match rules {
            GrantRules::Declared(d) => d,
            GrantRules::Inferred => {
                for (key, value) in map.iter_mut() {
                    let k = key.to_ascii_lowercase().replace('-', "_");
                    if is_dir_key(&k) {
                        if purpose == Purpose::Read {
                            g.grant_dirs(key, value, false)?;
                        }
                    } else if is_addr_key(&k)
                        && let serde_json::Value::String(s) = value
                    {
                        g.connect_with(key, s, name_servers)?;
                    }
                }
                return Ok(g);
            }
        };
        let mut verify: Option<(Verify, String)> = None;
        let mut bearer_field = String::new();
        let mut client_fields = (String::from("cert_file"), String::from("key_file"));
        for (key, kind) in declared {
            let Some(value) = map.get_mut(key) else { continue };
            if value.is_null() {
                continue;
            }
            let text = |v: &serde_json::Value| -> Result<String, GrantError> {
                v.as_str().map(str::to_string).ok_or_else(|| GrantError::Directory {
                    key: key.clone(),
                    path: v.to_string(),
                    reason: "must be a string".into(),
                })
            };
            let file_err =
                |path: &str, reason: String| GrantError::File { key: key.clone(), path: path.into(), reason };
            match kind {
                GrantKind::ReadDir => {
                    if purpose == Purpose::Read {
                        g.grant_dirs(key, value, false)?;
                    }
                }
                GrantKind::ReadFile => {
                    if purpose == Purpose::Read {
                        let path = text(value)?;
                        let file = canonical_file(&path).map_err(|e| file_err(&path, e))?;
                        let dir = file
                            .parent()
                            .and_then(Path::to_str)
                            .ok_or_else(|| file_err(&path, "no directory".into()))?;
                        g.read_dir(key, dir)?;
                        *value = serde_json::Value::String(file.to_str().expect("checked UTF-8").to_string());
                    }
                }
                // Only a restore writes; a backup or verify that could
                // write would change what it reads.
                GrantKind::WriteDir => {
                    if purpose == Purpose::Restore {
                        g.grant_dirs(key, value, true)?;
                    }
                }
                GrantKind::Connect | GrantKind::Http => {
                    let items: Vec<String> = match value {
                        serde_json::Value::Array(a) => a.iter().map(text).collect::<Result<_, _>>()?,
                        v => vec![text(v)?],
                    };
                    for item in items {
                        if *kind == GrantKind::Connect {
                            g.connect_with(key, &item, name_servers)?
                        } else {
                            g.http(key, &item)?
                        }
                    }
                }
                GrantKind::SecretFile => {
                    let path = text(value)?;
                    if g.bearer.is_some() {
                        return Err(file_err(&path, "a second secret file; a job has one bearer token".into()));
                    }
                    let raw = Zeroizing::new(std::fs::read(&path).map_err(|e| file_err(&path, e.to_string()))?);
                    let token = std::str::from_utf8(&raw)
                        .map_err(|_| file_err(&path, "not UTF-8 text".into()))?
                        .trim_end_matches(['\n', '\r']);
                    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(file_err(
                            &path,
                            "must hold one line: the token, in printable ASCII without spaces".into(),
                        ));
                    }
                    g.bearer = Some(Arc::new(Zeroizing::new(token.to_string())));
                    bearer_field = key.clone();
                }
                GrantKind::TlsCa => {
                    let path = text(value)?;
                    let certs = crate::tls::read_certificates(&path).map_err(|e| file_err(&path, e))?;
                    g.tls.extra_roots.extend(certs);
                    g.tls.ca_fields.push(key.clone());
                }
                GrantKind::TlsClientCert => {
                    let path = text(value)?;
                    g.tls.client_chain = Some(crate::tls::read_certificates(&path).map_err(|e| file_err(&path, e))?);
                    client_fields.0 = key.clone();
                }
                GrantKind::TlsClientKey => {
                    let path = text(value)?;
                    g.tls.client_key = Some(Arc::new(crate::tls::read_key(&path).map_err(|e| file_err(&path, e))?));
                    client_fields.1 = key.clone();
                }
                GrantKind::TlsVerify => {
                    let v = Verify::parse(value).ok_or_else(|| GrantError::File {
                        key: key.clone(),
                        path: value.to_string(),
                        reason: "not a verification mode: give full (verify-full), chain (verify-ca) or off \
                                 (require)"
                            .into(),
                    })?;
                    let raw = value.as_str().unwrap_or_default().to_ascii_lowercase();
                    verify = Some((v, raw));
                }
            }
        }
        if g.tls.client_chain.is_some() != g.tls.client_key.is_some() {
            let (cert, key) = &client_fields;
            let (given, missing) = if g.tls.client_chain.is_some() { (cert, key) } else { (key, cert) };
            return Err(GrantError::File {
                key: given.clone(),
                path: String::new(),
                reason: format!("a client certificate needs both its certificate and its key: give `{missing}` too"),
            });
        }
        if let Some((mut v, raw)) = verify {
            // libpq: `require` with a CA to check against checks the chain.
            if raw == "require" && !g.tls.extra_roots.is_empty() {
                v = Verify::Chain;
            }
            // `disable` asks for no TLS at all: nothing to warn about.
            if v != Verify::Full && raw != "disable" && g.has_network() {
                tracing::warn!("as the config says: {}", v.describe());
            }
            g.tls.verify = v;
        }
        if g.bearer.is_some() {
            // The token goes to one server, over TLS whose certificate is
            // checked: never in clear text, never to a second authority a
            // plugin's schema could name.
            let http: Vec<&str> = g
                .permissions
                .iter()
                .filter_map(|p| match p {
                    Permission::Http(a, _) => Some(a.as_str()),
                    _ => None,
                })
                .collect();
            let why = match http.as_slice() {
                [] => Some("no `http` field was given, so the token has nowhere to go".to_string()),
                [one] if !one.starts_with("https://") => {
                    Some(format!("{one} is not HTTPS; a bearer token is never sent in clear text"))
                }
                [_] if g.tls.verify != Verify::Full => Some(
                    "servers' certificates are not fully checked; a bearer token goes only to a checked server".into(),
                ),
                [_] => None,
                _ => Some(format!("{} HTTP authorities were granted; a bearer token goes to one", http.len())),
            };
            if let Some(reason) = why {
                return Err(GrantError::File { key: bearer_field, path: String::new(), reason });
            }
        }
        Ok(g)
    }

    /// Grants the directory (or list of directories) a config value names,
    /// rewriting each to its canonical path.
    fn grant_dirs(&mut self, key: &str, value: &mut serde_json::Value, write: bool) -> Result<(), GrantError> {
        let mut one = |s: &mut String| -> Result<(), GrantError> {
            let p = if write { self.write_dir(key, s)? } else { self.read_dir(key, s)? };
            *s = p.to_str().expect("checked UTF-8").to_string();
            Ok(())
        };
        match value {
            serde_json::Value::String(s) => one(s)?,
            serde_json::Value::Array(items) => {
                for item in items {
                    if let serde_json::Value::String(s) = item {
                        one(s)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// True if `perm` is covered: a directory inside a granted one (write
    /// needs a write grant), or an address that was granted.
    pub fn allows(&self, perm: &Permission) -> bool {
        match perm {
            Permission::ReadDir(p) => self.dir_covering(p).is_some(),
            Permission::WriteDir(p) => matches!(self.dir_covering(p), Some((_, true))),
            Permission::Connect(_, addrs) => !addrs.is_empty() && addrs.iter().all(|a| self.allows_addr(*a)),
            Permission::Http(a, _) => self.allows_http(a),
        }
    }

    /// The granted directory containing `p` (lexically; `p` must be
    /// absolute and free of `..`), and whether it is writable.
    pub fn dir_covering(&self, p: &Path) -> Option<(&Path, bool)> {
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return None;
        }
        let mut best: Option<(&Path, bool)> = None;
        for g in &self.permissions {
            let (root, w) = match g {
                Permission::ReadDir(r) => (r.as_path(), false),
                Permission::WriteDir(r) => (r.as_path(), true),
                Permission::Connect(..) | Permission::Http(..) => continue,
            };
            if p.starts_with(root) && best.is_none_or(|(b, _)| root.as_os_str().len() > b.as_os_str().len()) {
                best = Some((root, w));
            }
        }
        best
    }

    /// True if a `host:port` a plugin declared was granted, compared as
    /// text with the granted names or as a literal socket address. Names a
    /// plugin supplies are never resolved: a lookup would itself send the
    /// name out.
    pub fn allows_connect_spec(&self, spec: &str) -> bool {
        if let Ok(addr) = spec.parse::<SocketAddr>() {
            return self.allows_addr(addr);
        }
        self.permissions.iter().any(|g| matches!(g, Permission::Connect(name, _) if name.eq_ignore_ascii_case(spec)))
    }

    /// True if a TCP connection to `addr` was granted.
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        self.permissions.iter().any(|g| matches!(g, Permission::Connect(_, addrs) if addrs.contains(&addr)))
    }

    /// True if any network use was granted.
    pub(crate) fn has_network(&self) -> bool {
        self.permissions.iter().any(|g| matches!(g, Permission::Connect(..) | Permission::Http(..)))
    }

    /// Applies the grants to a WASI context: preopens and the socket check.
    pub(crate) fn apply(&self, b: &mut WasiCtxBuilder) -> Result<(), GrantError> {
        for g in &self.permissions {
            let (root, perms) = match g {
                Permission::ReadDir(r) => (r, FsPerms::ReadOnly),
                Permission::WriteDir(r) => (r, FsPerms::ReadWrite),
                Permission::Connect(..) | Permission::Http(..) => continue,
            };
            let guest = root.to_str().expect("granted paths are UTF-8");
            b.preopened_dir(root, guest, perms).map_err(|e| GrantError::Directory {
                key: "preopen".into(),
                path: guest.into(),
                reason: e.to_string(),
            })?;
        }
        if self.permissions.iter().any(|g| matches!(g, Permission::Connect(..))) {
            let allowed: Vec<SocketAddr> = self
                .permissions
                .iter()
                .filter_map(|g| match g {
                    Permission::Connect(_, a) => Some(a.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            b.allow_tcp(true);
            b.socket_addr_check(move |addr, usage| {
                let ok = match usage {
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // The implicit bind `connect` performs is to the wildcard
                    // address with port 0; nothing else may be bound.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_set_allows_nothing() {
        let g = GrantSet::none();
        assert!(!g.allows(&Permission::ReadDir("/".into())));
        assert!(!g.allows_addr("127.0.0.1:5432".parse().unwrap()));
    }

    #[test]
    fn config_grants_paths_and_urls_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = serde_json::json!({
            "path": dir.path().to_str().unwrap(),
            "url": "postgres://u@127.0.0.1:5433/",
            "comment": "/etc",
        });
        let g = GrantSet::from_config(&mut cfg, Purpose::Read).unwrap();
        let canon = dir.path().canonicalize().unwrap();
        assert!(g.allows(&Permission::ReadDir(canon.join("sub"))));
        assert!(!g.allows(&Permission::WriteDir(canon.clone())));
        assert!(!g.allows(&Permission::ReadDir("/etc".into())));
        assert!(g.allows_addr("127.0.0.1:5433".parse().unwrap()));
        assert!(!g.allows_addr("127.0.0.1:5432".parse().unwrap()));
        assert!(!g.allows(&Permission::ReadDir(canon.join("../x"))));
        // Restores grant no source directory.
        let g = GrantSet::from_config(&mut cfg, Purpose::Restore).unwrap();
        assert!(!g.allows(&Permission::ReadDir(canon)));
    }

    #[test]
    fn declared_addresses_are_compared_not_resolved() {
        let mut g = GrantSet::none();
        g.connect("url", "postgres://u:hunter2@127.0.0.1:5433/").unwrap();
        assert!(g.allows_connect_spec("127.0.0.1:5433"));
        assert!(!g.allows_connect_spec("leak.example.invalid:1"));
        let e = GrantSet::none().connect("url", "postgres://u:hunter2@no-such-host.invalid:5432/").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_srv_url_names_one_host_without_a_port() {
        assert_eq!(
            srv_url("mongodb+srv://u:pw@Cluster0.Example.NET./db?tls=true").unwrap(),
            Some(("mongodb".into(), "cluster0.example.net".into()))
        );
        assert_eq!(srv_url("mongodb://a:27017,b:27017/").unwrap(), None);
        assert_eq!(srv_url("db:5432").unwrap(), None);
        let port = srv_url("mongodb+srv://cluster0.example.net:27017/").unwrap_err();
        assert!(port.contains("no port") && port.contains(":27017"), "{port}");
        let many = srv_url("mongodb+srv://a.example.net,b.example.net/").unwrap_err();
        assert!(many.contains("one host"), "{many}");
        assert!(srv_url("mongodb+srv://127.0.0.1/").unwrap_err().contains("IP address"));
        assert!(srv_url("mongodb+srv://[::1]/").unwrap_err().contains("IP address"));
        assert!(srv_url("mongodb+srv://localhost/").unwrap_err().contains("no domain"));
        assert!(srv_url("mongodb+srv://a..example.net/").unwrap_err().contains("not a DNS name"));
        assert!(srv_url("+srv://a.example.net/").unwrap_err().contains("<service>+srv"));
        // The refusal names the field and hides the password.
        let e = GrantSet::none().connect("url", "mongodb+srv://u:hunter2@a.example.net:1/").unwrap_err().to_string();
        assert!(e.contains("`url`") && e.contains("no port") && !e.contains("hunter2"), "{e}");
        // Nothing granted, nothing answered.
        let g = GrantSet::none();
        assert!(g.srv_targets("_mongodb._tcp.a.example.net").is_none());
        assert!(g.txt_records("a.example.net").is_none());
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let mut cfg = serde_json::json!({"path": "/nonexistent/coffer-grant"});
        let e = GrantSet::from_config(&mut cfg, Purpose::Read).unwrap_err().to_string();
        assert!(e.contains("`path`") && e.contains("/nonexistent/coffer-grant"), "{e}");
    }

    #[test]
    fn a_read_file_grant_is_the_files_directory_read_only_and_never_for_restores() {
        let schema = r#"{"type":"object","properties":{"archive": {"type":"string","x-coffer-grant":"read-file"}}}"#;
        let rules = GrantRules::from_schema(schema).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.archive");
        std::fs::write(&file, b"x").unwrap();
        let mut cfg = serde_json::json!({ "archive": file.to_str().unwrap() });
        let g = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap();
        let canon = dir.path().canonicalize().unwrap();
        assert!(g.allows(&Permission::ReadDir(canon.clone())));
        assert!(!g.allows(&Permission::WriteDir(canon.clone())));
        assert_eq!(cfg["archive"], canon.join("all.archive").to_str().unwrap());
        let mut cfg = serde_json::json!({ "archive": file.to_str().unwrap() });
        let g = GrantSet::for_job(&mut cfg, &rules, Purpose::Restore).unwrap();
        assert!(!g.allows(&Permission::ReadDir(canon.clone())));
        // A directory or a missing file is not a file.
        for bad in [dir.path().to_str().unwrap().to_string(), format!("{}/missing", dir.path().display())] {
            let mut cfg = serde_json::json!({ "archive": bad });
            let e = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap_err().to_string();
            assert!(e.contains("archive"), "{e}");
        }
    }

    #[test]
    fn a_schema_declares_which_fields_grant_what() {
        let schema = r#"{"type":"object","properties":{
            "data": {"type":"string","x-coffer-grant":"read-dir"},
            "url": {"type":"string","x-coffer-grant":"connect"},
            "api": {"type":"string","x-coffer-grant":"http"},
            "path": {"type":"string"},
            "ca_file": {"type":"string","x-coffer-grant":"tls-ca"}}}"#;
        let rules = GrantRules::from_schema(schema).unwrap();
        let GrantRules::Declared(d) = &rules else { panic!() };
        assert_eq!(d.len(), 4);
        let dir = tempfile::tempdir().unwrap();
        // `path` grants nothing here: only declared fields do.
        let mut cfg = serde_json::json!({
            "data": dir.path().to_str().unwrap(),
            "path": "/etc",
            "url": "mongodb://u:pw@127.0.0.1:27017,127.0.0.2:27018/admin",
            "api": "https://localhost:6443/api/v1",
        });
        let g = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap();
        assert!(g.allows(&Permission::ReadDir(dir.path().canonicalize().unwrap())));
        assert!(!g.allows(&Permission::ReadDir("/etc".into())));
        assert!(g.allows_addr("127.0.0.1:27017".parse().unwrap()));
        assert!(g.allows_addr("127.0.0.2:27018".parse().unwrap()));
        assert!(g.allows_http("https://localhost:6443"));
        assert!(!g.allows_http("http://localhost:6443"));
        assert!(!g.allows_http("https://localhost:443"));
        // Names: only the granted ones, answered from the grant.
        assert_eq!(g.lookup("127.0.0.2"), Some(vec!["127.0.0.2".parse().unwrap()]));
        assert!(g.lookup("leak.example.invalid").is_none());
        assert!(g.allows_server_name("localhost"));
        assert!(g.allows_server_name("127.0.0.1"));
        assert!(!g.allows_server_name("127.0.0.9"));
        assert!(!g.allows_server_name("example.org"));

        let e = GrantRules::from_schema(r#"{"properties":{"x":{"x-coffer-grant":"root"}}}"#).unwrap_err();
        assert!(e.contains("`x`") && e.contains("root") && e.contains("read-dir"), "{e}");
        assert!(GrantRules::from_schema("not json").is_err());
    }

    #[test]
    fn a_granted_name_resolves_once_and_looks_up_to_its_addresses() {
        let mut g = GrantSet::none();
        let before = lookups();
        g.connect("url", "redis://localhost:6390/").unwrap();
        assert_eq!(lookups(), before + 1);
        let ips = g.lookup("LOCALHOST").unwrap();
        assert!(!ips.is_empty() && ips.iter().all(|ip| ip.is_loopback()), "{ips:?}");
        assert_eq!(lookups(), before + 1, "the plugin's lookup made no query");
    }

    #[test]
    fn secret_and_tls_files_are_read_by_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc.def\n").unwrap();
        let rules = GrantRules::Declared(vec![
            ("api".into(), GrantKind::Http),
            ("token_file".into(), GrantKind::SecretFile),
            ("ca_file".into(), GrantKind::TlsCa),
            ("key_file".into(), GrantKind::TlsClientKey),
            ("sslmode".into(), GrantKind::TlsVerify),
        ]);
        let token_path = token.to_str().unwrap();
        let mut cfg = serde_json::json!({"api": "https://localhost:6443/", "token_file": token_path});
        let g = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap();
        assert_eq!(g.bearer().unwrap().as_str(), "abc.def");
        // The token file is not a directory grant: the plugin cannot open it.
        assert!(!g.allows(&Permission::ReadDir(dir.path().to_path_buf())));
        // A token goes only to one HTTPS server whose certificate is checked.
        for (cfg, why) in [
            (serde_json::json!({"token_file": token_path}), "nowhere to go"),
            (serde_json::json!({"api": "http://localhost:8080/", "token_file": token_path}), "clear text"),
            (
                serde_json::json!({"api": "https://localhost:6443/", "token_file": token_path, "sslmode": "require"}),
                "not fully checked",
            ),
            (
                serde_json::json!({"api": ["https://localhost:1/", "https://localhost:2/"], "token_file": token_path}),
                "goes to one",
            ),
        ] {
            let e = GrantSet::for_job(&mut cfg.clone(), &rules, Purpose::Read).unwrap_err().to_string();
            assert!(e.contains("`token_file`") && e.contains(why) && !e.contains("abc.def"), "{e}");
        }

        let mut cfg = serde_json::json!({"ca_file": token_path});
        let e = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap_err().to_string();
        assert!(e.contains("`ca_file`") && e.contains("no PEM certificate"), "{e}");
        let mut cfg = serde_json::json!({"key_file": token_path});
        let e = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap_err().to_string();
        assert!(e.contains("`key_file`") && e.contains("private key") && !e.contains("abc.def"), "{e}");
        let mut cfg = serde_json::json!({"sslmode": "sometimes"});
        let e = GrantSet::for_job(&mut cfg, &rules, Purpose::Read).unwrap_err().to_string();
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn verification_follows_libpq_where_it_can() {
        let rules = GrantRules::Declared(vec![("sslmode".into(), GrantKind::TlsVerify)]);
        for (mode, want) in [
            ("prefer", Verify::Full),
            ("allow", Verify::Full),
            ("require", Verify::Off),
            ("verify-ca", Verify::Chain),
            ("verify-full", Verify::Full),
        ] {
            let g = GrantSet::for_job(&mut serde_json::json!({"sslmode": mode}), &rules, Purpose::Read).unwrap();
            assert_eq!(g.tls().verify, want, "{mode}");
        }
    }

    #[test]
    fn secret_fields_cannot_be_grants_and_write_dirs_are_for_restores() {
        let e = GrantRules::from_schema(r#"{"properties":{"password":{"x-coffer-grant":"tls-ca"}}}"#).unwrap_err();
        assert!(e.contains("`password`") && e.contains("secret"), "{e}");
        assert!(GrantRules::from_schema(r#"{"properties":{"token_file":{"x-coffer-grant":"secret-file"}}}"#).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let rules = GrantRules::Declared(vec![("spool".into(), GrantKind::WriteDir)]);
        let mut cfg = serde_json::json!({"spool": dir.path().to_str().unwrap()});
        let g = GrantSet::for_job(&mut cfg.clone(), &rules, Purpose::Read).unwrap();
        assert!(g.permissions().is_empty(), "a backup writes nowhere");
        let g = GrantSet::for_job(&mut cfg, &rules, Purpose::Restore).unwrap();
        assert!(g.allows(&Permission::WriteDir(dir.path().canonicalize().unwrap())));
    }
}
