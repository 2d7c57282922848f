//! What a plugin may touch: a [`GrantSet`] of read-only directories,
//! read-write directories and TCP addresses. Deny by default: an empty set
//! allows nothing, and every check goes through [`GrantSet::allows`].
//!
//! Grants come from the config the operator typed ([`GrantSet::from_config`]):
//! a `path` becomes a read-only directory, a restore `target` a read-write
//! one, a `url` an address. Directories are preopened at their own
//! (canonical) host path, so a path in the config means the same inside and
//! outside the sandbox.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

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
}

impl Permission {
    /// A human description (`read-only access to /srv/www`).
    pub fn display_name(&self) -> String {
        match self {
            Permission::ReadDir(p) => format!("read-only access to {}", p.display()),
            Permission::WriteDir(p) => format!("read-write access to {}", p.display()),
            Permission::Connect(a, _) => format!("TCP connections to {a}"),
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

/// Why a grant set is being built: which config keys grant what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `snapshot` and `verify`: directories are read-only.
    Read,
    /// `restore`: only the target directory is granted, read-write.
    Restore,
}

/// The grants of one plugin job.
#[derive(Debug, Clone, Default)]
pub struct GrantSet {
    permissions: Vec<Permission>,
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

    /// Grants TCP connections to `host:port` or to the host and port of a URL
    /// (`postgres://user@db:5432/`). Names are resolved here, by the host.
    pub fn connect(&mut self, key: &str, value: &str) -> Result<(), GrantError> {
        let shown = without_password(value);
        let err = |reason: String| GrantError::Address { key: key.into(), value: shown.clone(), reason };
        let host_port = if value.contains("://") {
            let u = url::Url::parse(value).map_err(|e| err(format!("not a URL ({e})")))?;
            let host = u.host_str().ok_or_else(|| err("the URL has no host".into()))?.to_string();
            let port = u
                .port()
                .or_else(|| default_port(u.scheme()))
                .ok_or_else(|| err(format!("the URL has no port and `{}` has no default", u.scheme())))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
        } else {
            value.to_string()
        };
        let addrs = resolve(&host_port).map_err(|e| err(format!("cannot resolve {host_port} ({e})")))?;
        if addrs.is_empty() {
            return Err(err(format!("{host_port} resolved to no address")));
        }
        self.permissions.push(Permission::Connect(host_port, addrs));
        Ok(())
    }

    /// Builds the grants a config implies, and rewrites directory values in
    /// the config to their canonical absolute paths (what the plugin will see).
    ///
    /// For [`Purpose::Read`]: `path`, `paths` and keys ending in `_dir` or
    /// `_path` grant read-only directories. For [`Purpose::Restore`]:
    /// directories are not granted (the restore target is granted by the
    /// caller with [`GrantSet::write_dir`]). For both: `url`, `addr`,
    /// `address` and keys ending in `_url` or `_addr` grant TCP addresses.
    /// Nothing else grants anything.
    pub fn from_config(config: &mut serde_json::Value, purpose: Purpose) -> Result<GrantSet, GrantError> {
        let mut g = GrantSet::none();
        let Some(map) = config.as_object_mut() else { return Ok(g) };
        for (key, value) in map.iter_mut() {
            let k = key.to_ascii_lowercase().replace('-', "_");
            if is_dir_key(&k) {
                if purpose == Purpose::Restore {
                    continue;
                }
                match value {
                    serde_json::Value::String(s) => {
                        let p = g.read_dir(key, s)?;
                        *s = p.to_str().expect("checked UTF-8").to_string();
                    }
                    serde_json::Value::Array(items) => {
                        for item in items {
                            if let serde_json::Value::String(s) = item {
                                let p = g.read_dir(key, s)?;
                                *s = p.to_str().expect("checked UTF-8").to_string();
                            }
                        }
                    }
                    _ => {}
                }
            } else if is_addr_key(&k)
                && let serde_json::Value::String(s) = value
            {
                g.connect(key, s)?;
            }
        }
        Ok(g)
    }

    /// True if `perm` is covered: a directory inside a granted one (write
    /// needs a write grant), or an address that was granted.
    pub fn allows(&self, perm: &Permission) -> bool {
        match perm {
            Permission::ReadDir(p) => self.dir_covering(p).is_some(),
            Permission::WriteDir(p) => matches!(self.dir_covering(p), Some((_, true))),
            Permission::Connect(_, addrs) => !addrs.is_empty() && addrs.iter().all(|a| self.allows_addr(*a)),
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
                Permission::Connect(..) => continue,
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

    fn has_network(&self) -> bool {
        self.permissions.iter().any(|g| matches!(g, Permission::Connect(..)))
    }

    /// Applies the grants to a WASI context: preopens and the socket check.
    pub(crate) fn apply(&self, b: &mut WasiCtxBuilder) -> Result<(), GrantError> {
        for g in &self.permissions {
            let (root, perms) = match g {
                Permission::ReadDir(r) => (r, FsPerms::ReadOnly),
                Permission::WriteDir(r) => (r, FsPerms::ReadWrite),
                Permission::Connect(..) => continue,
            };
            let guest = root.to_str().expect("granted paths are UTF-8");
            b.preopened_dir(root, guest, perms).map_err(|e| GrantError::Directory {
                key: "preopen".into(),
                path: guest.into(),
                reason: e.to_string(),
            })?;
        }
        if self.has_network() {
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
    fn missing_directory_is_a_clear_error() {
        let mut cfg = serde_json::json!({"path": "/nonexistent/coffer-grant"});
        let e = GrantSet::from_config(&mut cfg, Purpose::Read).unwrap_err().to_string();
        assert!(e.contains("`path`") && e.contains("/nonexistent/coffer-grant"), "{e}");
    }
}
