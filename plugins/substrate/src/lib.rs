//! coffer's `substrate` plugin: Substrate / Polkadot-SDK nodes.
//!
//! - **Backup** (`--set base_path=DIR --set chain=ID`, read-only): beneath
//!   the node's `--base-path`, the chain's directory `chains/<chain>/`:
//!   - the chain database: RocksDB (`db/full`, and any RocksDB database
//!     nested in it, such as a validator's `parachains/db`) as its live
//!     set read from `CURRENT` and its manifest, copied consistently
//!     (`coffer_lsm`); or ParityDB (`paritydb/full`, and a validator's
//!     `paritydb/parachains`, [`paritydb`]), whole.
//!     A database a running node holds open (its lock file locked, asked
//!     of the host) is refused: RocksDB's unless `allow_live=true`, which
//!     copies it consistently while the node writes; ParityDB's always,
//!     since ParityDB rewrites its tables in place;
//!   - the keystore (`keystore/`, one file per key) and the libp2p node
//!     key (`network/secret_ed25519`), each key checked as it is read
//!     ([`keystore`]): a file whose secret does not derive the public key
//!     its name gives is reported by name, never with its secret.
//!
//!   `keystore_dir=DIR` alone backs up just a keystore directory.
//!   Unchanged files (RocksDB's tables above all) are kept from the parent
//!   snapshot without being read.
//! - **Verify**: every RocksDB database's structure (`CURRENT` names a
//!   manifest that is there, every live table it lists is there with its
//!   size, every table's footer and block checksums), every ParityDB
//!   database's structure, and every key: derived from its secret by
//!   Substrate's rules and compared with its file name; the node key's
//!   peer id.
//! - **Restore** into an empty directory, for a stopped node. A snapshot
//!   with a keystore restores only with `i_stopped_the_old_validator=true`
//!   (two nodes signing with the same session keys are slashed for
//!   equivocation); `database_only=true` restores the chain database alone
//!   (no fence), `keystore_only=true` the keys alone.

pub mod keystore;
pub mod paritydb;

use std::collections::BTreeMap;
use std::fs;

use coffer_lsm::copy::{CopyReport, backup as copy_database};
use coffer_lsm::rocksdb::{self, RocksDb};
use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, EntryMeta, Error, LockHeld, Plugin, PluginInfo, RestoreOptions, Sink,
    SnapshotReader, VerifyReport, host,
};
use serde::Deserialize;

/// The plugin.
pub struct Substrate;

/// `coffer backup substrate --set base_path=/var/lib/polkadot --set chain=polkadot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubstrateConfig {
    /// The node's `--base-path` (holding `chains/<chain>/`).
    #[serde(default)]
    base_path: Option<String>,
    /// The chain's directory name under `chains/` (the chain spec's `id`);
    /// needed when there are several.
    #[serde(default)]
    chain: Option<String>,
    /// The node's chain spec (its `--chain` file): its `id` names the
    /// chain directory when `chain` is not given, and it is stored with
    /// the backup as `chain-spec.json`.
    #[serde(default)]
    chain_spec: Option<String>,
    /// A keystore directory alone, instead of `base_path`.
    #[serde(default)]
    keystore_dir: Option<String>,
    /// backup: copy a RocksDB database that a running node holds open,
    /// consistently, instead of refusing it.
    #[serde(default)]
    allow_live: bool,
    /// The keystore's password (the node's `--password`), filled by the
    /// host from `keystore_password_file` or `keystore_password_env`;
    /// needed to check keys stored as phrases when the node uses one.
    #[serde(default)]
    keystore_password: Option<String>,
    /// Read by the host into `keystore_password`.
    #[serde(default)]
    #[allow(dead_code)]
    keystore_password_file: Option<String>,
    /// Read by the host into `keystore_password`.
    #[serde(default)]
    #[allow(dead_code)]
    keystore_password_env: Option<String>,
    /// restore: the operator says the node these keys came from is stopped
    /// for good.
    #[serde(default)]
    i_stopped_the_old_validator: bool,
    /// restore: the keys alone.
    #[serde(default)]
    keystore_only: bool,
    /// restore: the chain database alone (no keys, no fence).
    #[serde(default)]
    database_only: bool,
}

impl Config for SubstrateConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.base_path, &self.keystore_dir) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::field("keystore_dir", "give base_path or keystore_dir, not both"));
            }
            (None, None) => {
                return Err(ConfigError::field(
                    "base_path",
                    "give the node's --base-path (or keystore_dir= to back up a keystore alone)",
                ));
            }
            _ => {}
        }
        for (field, v) in [("base_path", &self.base_path), ("keystore_dir", &self.keystore_dir)] {
            if let Some(p) = v
                && !p.starts_with('/')
            {
                return Err(ConfigError::field(field, "must be an absolute path"));
            }
        }
        if self.chain_spec.is_some() && self.keystore_dir.is_some() {
            return Err(ConfigError::field("chain_spec", "is for base_path; keystore_dir backs up keys alone"));
        }
        if let Some(c) = &self.chain {
            if self.keystore_dir.is_some() {
                return Err(ConfigError::field("chain", "is for base_path; keystore_dir names the keystore itself"));
            }
            if c.is_empty() || c.starts_with('.') || c.contains('/') {
                return Err(ConfigError::field(
                    "chain",
                    "must be a directory name under chains/ (the chain spec's id)",
                ));
            }
        }
        if self.keystore_only && self.database_only {
            return Err(ConfigError::field("database_only", "keystore_only and database_only exclude each other"));
        }
        Ok(())
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "base_path": {"type": "string", "x-coffer-grant": "read-dir", "description": "The node's --base-path (holding chains/<chain>/); granted read-only."},
    "chain": {"type": "string", "description": "The chain's directory under chains/ (its chain spec's id); needed when there are several."},
    "chain_spec": {"type": "string", "x-coffer-grant": "read-file", "description": "The node's chain spec file (--chain); its id picks the chain directory when chain is not given; stored as chain-spec.json."},
    "keystore_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "A keystore directory alone, instead of base_path; granted read-only."},
    "allow_live": {"type": "boolean", "description": "backup: copy a RocksDB database a running node holds open, consistently (its live set, re-read until whole), instead of refusing it."},
    "keystore_password": {"type": "string", "description": "The node's keystore password (--password); prefer keystore_password_file or keystore_password_env. Never stored."},
    "keystore_password_file": {"type": "string", "description": "File holding the keystore password, read by the host."},
    "keystore_password_env": {"type": "string", "description": "Environment variable holding the keystore password, read by the host."},
    "i_stopped_the_old_validator": {"type": "boolean", "description": "restore: required to restore a keystore. Two nodes signing with the same session keys equivocate and are slashed: stop the old node for good first."},
    "keystore_only": {"type": "boolean", "description": "restore: the keys alone (keystore/ and network/secret_ed25519)."},
    "database_only": {"type": "boolean", "description": "restore: the chain database alone; needs no fence."}
  }
}"#;

/// Files handed to the host per `add-files` call.
const ADD_FILES: usize = 500;

/// Attribute: what the snapshot holds, [`LAYOUT_BASE_PATH`] or
/// [`LAYOUT_KEYSTORE`].
const LAYOUT_ATTR: &str = "substrate.layout";
/// The node's files beneath its base path (`chains/<chain>/...`).
const LAYOUT_BASE_PATH: &str = "base-path";
/// A keystore directory's files alone.
const LAYOUT_KEYSTORE: &str = "keystore";
/// Attribute: the `id` of the chain spec given with `chain_spec`.
const SPEC_ID_ATTR: &str = "substrate.chain-spec-id";
/// Where the chain spec is stored in the snapshot.
const SPEC_ENTRY: &str = "chain-spec.json";
/// Attribute: the chain's id (its directory under `chains/`).
const CHAIN_ATTR: &str = "substrate.chain";
/// Attribute: `rocksdb` or `paritydb`.
const DB_KIND_ATTR: &str = "substrate.database";
/// Attribute: RocksDB's column families, comma-separated.
const COLUMN_FAMILIES_ATTR: &str = "substrate.column-families";
/// Attribute: the number of live RocksDB tables.
const LIVE_TABLES_ATTR: &str = "substrate.live-tables";
/// Attribute: the keys, `type:0xpublic` comma-separated (public keys only).
const KEYS_ATTR: &str = "substrate.keys";
/// Attribute: the libp2p peer id of the node key.
const PEER_ID_ATTR: &str = "substrate.peer-id";

fn trimmed(p: &str) -> String {
    let r = p.trim_end_matches('/');
    if r.is_empty() { "/".into() } else { r.to_string() }
}

fn join(root: &str, rel: &str) -> String {
    if rel.is_empty() { root.to_string() } else { format!("{}/{rel}", root.trim_end_matches('/')) }
}

/// The host directory the config grants.
fn root(config: &SubstrateConfig) -> String {
    trimmed(config.base_path.as_deref().or(config.keystore_dir.as_deref()).unwrap_or("/"))
}

/// Whether snapshot path `rel` (of a base-path snapshot) is part of the
/// keys: `chains/<chain>/keystore` and `chains/<chain>/network`, and what
/// they hold.
pub fn is_key_path(rel: &str) -> bool {
    let mut parts = rel.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some("chains"), Some(_), Some("keystore" | "network")))
}

/// The chain spec's `id` and its bytes.
fn read_chain_spec(path: &str) -> Result<(String, Vec<u8>), Error> {
    let bytes = fs::read(path).map_err(|e| Error::from(e).context(path))?;
    #[derive(Deserialize)]
    struct Spec {
        id: String,
    }
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidConfig(format!(
            "chain_spec: {path} is not a chain spec (a JSON object with an \"id\"): {}",
            // Line and column only: the message may quote the file.
            format_args!("line {}, column {}", e.line(), e.column())
        ))
    })?;
    Ok((spec.id, bytes))
}

/// The chain directory under `base/chains/`: the one `chain` names (else
/// the chain spec's id), or the only one there is.
fn chain_dir(config: &SubstrateConfig, base: &str, spec_id: Option<&str>) -> Result<String, Error> {
    let chains = join(base, "chains");
    let listing = host::list_dir(&chains).map_err(|e| {
        Error::InvalidConfig(format!(
            "base_path: {chains} cannot be listed ({e}); is {base} the node's --base-path (it holds chains/<chain>/)?"
        ))
    })?;
    let wanted = config.chain.as_deref().or(spec_id).map(str::to_string);
    if let Some(c) = &wanted {
        refuse_symlink(&listing, &chains, c)?;
    }
    let names: Vec<String> = listing.items.into_iter().filter(|i| i.kind == EntryKind::Dir).map(|i| i.name).collect();
    match wanted {
        Some(c) if names.contains(&c) => Ok(c),
        Some(c) => Err(Error::InvalidConfig(format!(
            "chain: {chains}/{c} does not exist; the chains there are: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))),
        None => match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::InvalidConfig(format!("base_path: {chains} holds no chain directory"))),
            _ => Err(Error::InvalidConfig(format!(
                "base_path: {chains} holds several chains ({}); name one with chain=",
                names.join(", ")
            ))),
        },
    }
}

/// Refuses `name` in the listing of `dir` when it is a symlink: a node's
/// directory moved to another disk and linked back would otherwise be
/// left out of the backup without a word (the sandbox does not follow a
/// symlink out of the grant).
fn refuse_symlink(listing: &coffer_sdk::DirListing, dir: &str, name: &str) -> Result<(), Error> {
    if listing.items.iter().any(|i| i.name == name && i.kind == EntryKind::Symlink) {
        let link = join(dir, name);
        let target = host::read_link(&link).unwrap_or_else(|_| "?".into());
        return Err(Error::InvalidConfig(format!(
            "{link} is a symlink (to {target}), which coffer does not follow out of the granted base_path; bind-mount \
             the directory there instead, or back up a base path that holds it"
        )));
    }
    Ok(())
}

/// The ParityDB databases under `paritydb/` (snapshot path `rel`): `full`
/// and, on a validator, `parachains`; any directory there holding a
/// ParityDB `metadata` file.
fn paritydb_dirs(root: &str, rel: &str) -> Result<Vec<String>, Error> {
    let listing = host::list_dir(&join(root, rel))?;
    let mut out = Vec::new();
    for d in listing.items.iter().filter(|i| i.kind == EntryKind::Dir) {
        let sub = join_rel(rel, &d.name);
        let inner = host::list_dir(&join(root, &sub))?;
        if paritydb::looks_like_paritydb(inner.items.iter().map(|i| i.name.as_str())) {
            out.push(sub);
        }
    }
    for i in listing.items.iter().filter(|i| i.kind == EntryKind::Symlink) {
        refuse_symlink(&listing, &join(root, rel), &i.name)?;
    }
    Ok(out)
}

/// Adds the directory entries of every component of `rel` not added yet.
fn add_dirs(sink: &Sink, root: &str, rel: &str, added: &mut std::collections::BTreeSet<String>) -> Result<(), Error> {
    let mut path = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        if added.insert(path.clone()) {
            let mode = host::file_mode(&join(root, &path)).unwrap_or(0o755);
            sink.add_entry(EntryMeta::dir(&path, mode))?.finish()?;
        }
    }
    Ok(())
}

/// Whether a process holds the lock file `path`; `None` when the host
/// cannot tell.
fn lock_held(path: &str) -> Result<Option<LockHeld>, Error> {
    match host::file_lock(path) {
        Ok(h) => Ok(Some(h)),
        Err(Error::Unavailable(why)) => match fs::symlink_metadata(path) {
            // No lock file: no node has the database open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(LockHeld::None)),
            _ => {
                host::warn(format!("cannot tell whether a node holds {path}: {why}"));
                Ok(None)
            }
        },
        Err(e) => Err(e),
    }
}

/// The RocksDB databases in the tree at `rel` (snapshot path) under
/// `root`: `rel` itself when it is one, and those nested in it (a
/// validator's `parachains/db`).
fn rocksdb_dirs(root: &str, rel: &str, out: &mut Vec<String>) -> Result<(), Error> {
    host::check_cancelled()?;
    let listing = host::list_dir(&join(root, rel))?;
    let names: Vec<&str> =
        listing.items.iter().filter(|i| i.kind == EntryKind::File).map(|i| i.name.as_str()).collect();
    if rocksdb::looks_like_rocksdb(names.iter().copied()) {
        out.push(rel.to_string());
    }
    for d in listing.items.iter().filter(|i| i.kind == EntryKind::Dir) {
        rocksdb_dirs(root, &join_rel(rel, &d.name), out)?;
    }
    Ok(())
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") }
}

/// Backs up the RocksDB databases under `rel`, refusing one a running
/// node holds unless `allow_live`.
fn backup_rocksdb(
    config: &SubstrateConfig,
    root: &str,
    rel: &str,
    has_parent: bool,
    sink: &Sink,
    added: &mut std::collections::BTreeSet<String>,
) -> Result<Vec<(String, CopyReport)>, Error> {
    let mut dbs = Vec::new();
    rocksdb_dirs(root, rel, &mut dbs)?;
    if dbs.is_empty() {
        return Err(Error::Corrupt(format!(
            "{}: no RocksDB database (no CURRENT and MANIFEST-NNNNNN) in it or beneath it",
            join(root, rel)
        )));
    }
    let mut reports = Vec::new();
    for db in dbs {
        let dir = join(root, &db);
        let lock = join(&dir, "LOCK");
        match lock_held(&lock)? {
            Some(LockHeld::None) => {}
            held if config.allow_live => {
                let how =
                    if held.is_some() { "is held by a running node" } else { "may be held (the host cannot tell)" };
                host::info(format!(
                    "{lock} {how}; allow_live=true: copying the database's live set consistently while it is written"
                ));
            }
            Some(_) => {
                return Err(Error::Unavailable(format!(
                    "{lock} is locked by another process: a node has the chain database open. Stop the node, or set \
                     allow_live=true to copy its live set consistently while it runs (tables first, then the \
                     manifest and logs re-read until they agree)"
                )));
            }
            None => {
                return Err(Error::Unavailable(format!(
                    "cannot tell whether a node holds {lock}; stop the node, or set allow_live=true to copy the \
                     database consistently whether or not it runs"
                )));
            }
        }
        add_dirs(sink, root, &db, added)?;
        let r = copy_database::<RocksDb>(&dir, &db, has_parent, sink)?;
        reports.push((db, r));
    }
    Ok(reports)
}

/// Stores every file of the directory `rel` (snapshot path) as it is, one
/// level deep: a keystore or the network directory.
fn backup_files(root: &str, rel: &str, has_parent: bool, sink: &Sink) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let dir = join(root, rel);
    let listing = host::list_dir(&dir)?;
    let mut read = Vec::new();
    for item in listing.items {
        host::check_cancelled()?;
        let path = join_rel(rel, &item.name);
        match item.kind {
            EntryKind::File => {
                let src = join(root, &path);
                // Keys are small: read, checked and stored from one read.
                let bytes = match fs::read(&src) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::from(e).context(&src)),
                };
                if !(has_parent && sink.reuse_unchanged(&path, bytes.len() as u64, item.mtime, item.mode)) {
                    let mut w = sink
                        .add_entry(EntryMeta::file(&path, item.mode).mtime(item.mtime).size_hint(bytes.len() as u64))?;
                    std::io::Write::write_all(&mut w, &bytes).map_err(|e| Error::from(e).context(&path))?;
                    w.finish()?;
                }
                read.push((path, bytes));
            }
            EntryKind::Dir => host::warn(format!("{}: a directory in {dir}; left out", item.name)),
            EntryKind::Symlink => host::warn(format!("{}: a symlink in {dir}; left out", item.name)),
        }
    }
    Ok(read)
}

/// Checks the keys read by the backup, warns about each one that does not
/// hold up, and records the public keys.
fn check_keys(config: &SubstrateConfig, files: &[(String, Vec<u8>)], sink: &Sink) -> Result<(), Error> {
    let mut public = Vec::new();
    for (path, bytes) in files {
        let name = path.rsplit('/').next().unwrap_or(path);
        if path.ends_with("network/secret_ed25519") {
            match keystore::check_node_key("secret_ed25519", bytes).map(|k| k.peer_id) {
                Ok(id) => {
                    sink.set_attribute(PEER_ID_ATTR, &id)?;
                    host::info(format!("node key {path}: peer id {id}"));
                }
                Err(e) => host::warn(format!("node key {path}: {}", e.problem)),
            }
            continue;
        }
        match keystore::check_key_file(name, bytes, config.keystore_password.as_deref()) {
            Ok(k) => public.push(format!("{}:{}", k.key_type, k.public_key_hex())),
            Err(e) => host::warn(format!(
                "keystore {path}: {}; run `coffer verify` on the snapshot for the report",
                e.problem
            )),
        }
    }
    if !public.is_empty() {
        sink.set_attribute(KEYS_ATTR, &public.join(","))?;
        host::info(format!("keystore: {} keys whose secrets derive the public keys their names give", public.len()));
    }
    Ok(())
}

/// Backs up a ParityDB database at `rel`, refusing one a node holds open.
fn backup_paritydb(root: &str, rel: &str, has_parent: bool, sink: &Sink) -> Result<(), Error> {
    let dir = join(root, rel);
    let lock = join(&dir, paritydb::LOCK);
    match lock_held(&lock)? {
        Some(LockHeld::None) => {}
        Some(_) => {
            return Err(Error::Unavailable(format!(
                "{lock} is locked by another process: a node has the ParityDB database open. ParityDB rewrites its \
                 index and value tables in place, so no copy of an open database is consistent (allow_live does \
                 not apply to it): stop the node, back up, start it again"
            )));
        }
        None => {
            return Err(Error::Unavailable(format!(
                "cannot tell whether a node holds {lock}; ParityDB cannot be copied while open: stop the node first"
            )));
        }
    }
    let locked = |path: &str| Ok(!matches!(lock_held(path)?, Some(LockHeld::None)));
    paritydb::backup(&dir, rel, has_parent, &locked, sink)?;
    Ok(())
}

impl Plugin for Substrate {
    type Config = SubstrateConfig;

    fn info() -> PluginInfo {
        PluginInfo::new(
            "substrate",
            env!("CARGO_PKG_VERSION"),
            "Substrate / Polkadot-SDK nodes: RocksDB or ParityDB chain database copied consistently, keystore and \
             node key checked by deriving their public keys, validator restores fenced against equivocation",
        )
        .schema(SCHEMA)
        .restore_modes(true, false)
    }

    fn source(config: &SubstrateConfig) -> String {
        match &config.chain {
            Some(c) => format!("substrate:{}#{c}", root(config)),
            None => format!("substrate:{}", root(config)),
        }
    }

    fn capabilities(config: &SubstrateConfig) -> Vec<Capability> {
        vec![Capability::ReadDir(root(config))]
    }

    fn snapshot(config: SubstrateConfig, parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        let root = root(&config);
        let has_parent = parent.is_some();
        if config.keystore_dir.is_some() {
            sink.set_attribute(LAYOUT_ATTR, LAYOUT_KEYSTORE)?;
            let keys = backup_files(&root, "", has_parent, sink)?;
            if keys.is_empty() {
                host::warn(format!("{root} holds no key files"));
            }
            return check_keys(&config, &keys, sink);
        }
        let spec = config.chain_spec.as_deref().map(read_chain_spec).transpose()?;
        let chain = chain_dir(&config, &root, spec.as_ref().map(|(id, _)| id.as_str()))?;
        sink.set_attribute(LAYOUT_ATTR, LAYOUT_BASE_PATH)?;
        sink.set_attribute(CHAIN_ATTR, &chain)?;
        if let Some((id, bytes)) = &spec {
            sink.set_attribute(SPEC_ID_ATTR, id)?;
            if *id != chain {
                host::warn(format!(
                    "the chain spec's id is {id}, but the chain directory backed up is chains/{chain}: is it this \
                     node's spec?"
                ));
            }
            let mut w = sink.add_entry(EntryMeta::file(SPEC_ENTRY, 0o644).size_hint(bytes.len() as u64))?;
            std::io::Write::write_all(&mut w, bytes).map_err(|e| Error::from(e).context(SPEC_ENTRY))?;
            w.finish()?;
        }
        let chain_rel = format!("chains/{chain}");
        let mut added = std::collections::BTreeSet::new();
        let listing = host::list_dir(&join(&root, &chain_rel))?;
        let chain_host = join(&root, &chain_rel);
        for name in ["db", "paritydb", "keystore", "network"] {
            refuse_symlink(&listing, &chain_host, name)?;
        }
        let has = |name: &str| listing.items.iter().any(|i| i.name == name && i.kind == EntryKind::Dir);
        let mut stored = Vec::new();
        // The chain database.
        let rocks = format!("{chain_rel}/db/full");
        let rocks_there = has("db") && {
            let db = host::list_dir(&join(&root, &format!("{chain_rel}/db")))?;
            refuse_symlink(&db, &join(&root, &format!("{chain_rel}/db")), "full")?;
            db.items.iter().any(|i| i.name == "full" && i.kind == EntryKind::Dir)
        };
        let paritydbs =
            if has("paritydb") { paritydb_dirs(&root, &format!("{chain_rel}/paritydb"))? } else { Vec::new() };
        let parity_there = !paritydbs.is_empty();
        if rocks_there {
            let reports = backup_rocksdb(&config, &root, &rocks, has_parent, sink, &mut added)?;
            let tables: usize = reports.iter().map(|(_, r)| r.tables).sum();
            sink.set_attribute(DB_KIND_ATTR, "rocksdb")?;
            sink.set_attribute(LIVE_TABLES_ATTR, &tables.to_string())?;
            let mut families = Vec::new();
            for (db, r) in &reports {
                for cf in &r.column_families {
                    families.push(if db == &rocks { cf.clone() } else { format!("{}:{cf}", &db[rocks.len() + 1..]) });
                }
            }
            sink.set_attribute(COLUMN_FAMILIES_ATTR, &families.join(","))?;
            stored.push(format!("RocksDB {rocks} ({} databases, {tables} live tables)", reports.len()));
        }
        for parity in &paritydbs {
            add_dirs(sink, &root, parity, &mut added)?;
            backup_paritydb(&root, parity, has_parent, sink)?;
            stored.push(format!("ParityDB {parity}"));
        }
        if parity_there && !rocks_there {
            sink.set_attribute(DB_KIND_ATTR, "paritydb")?;
        }
        if !rocks_there && !parity_there {
            host::warn(format!(
                "{}: neither db/full (RocksDB) nor a ParityDB database under paritydb/; no chain database backed up",
                join(&root, &chain_rel)
            ));
        }
        // The keys.
        let mut keys = Vec::new();
        for sub in ["keystore", "network"] {
            if has(sub) {
                let rel = format!("{chain_rel}/{sub}");
                add_dirs(sink, &root, &rel, &mut added)?;
                keys.extend(backup_files(&root, &rel, has_parent, sink)?);
                stored.push(rel);
            }
        }
        check_keys(&config, &keys, sink)?;
        let others: Vec<&str> = listing
            .items
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !["db", "paritydb", "keystore", "network"].contains(n))
            .collect();
        if !others.is_empty() {
            host::info(format!("{chain_rel}: left out (not chain state or keys): {}", others.join(", ")));
        }
        host::info(format!("chain {chain}: {}", stored.join("; ")));
        Ok(())
    }

    fn restore(config: SubstrateConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        let target = options.directory()?.trim_end_matches('/').to_string();
        let keystore_alone = snapshot.attribute(LAYOUT_ATTR).as_deref() == Some(LAYOUT_KEYSTORE);
        let is_key = |path: &str| keystore_alone || is_key_path(path);
        let wanted = |path: &str| {
            options.includes(path)
                && if config.keystore_only {
                    is_key(path) || path == "chains" || is_chain_dir(path)
                } else if config.database_only {
                    !is_key(path)
                } else {
                    true
                }
        };
        let entries: Vec<_> = snapshot.entries().filter(|e| wanted(&e.path)).collect();
        let keys: Vec<&str> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && is_key(&e.path) && !e.path.ends_with("secret_ed25519"))
            .map(|e| e.path.as_str())
            .collect();
        if !keys.is_empty() && !config.i_stopped_the_old_validator {
            return Err(Error::InvalidConfig(format!(
                "this restore would write {} keystore keys ({}...). If the node they came from still runs, both \
                 nodes sign with the same session keys: that is equivocation, and the validator's stake is slashed \
                 for it. Stop the old node for good (and make sure it cannot restart), then restore with --set \
                 i_stopped_the_old_validator=true; or restore the chain database alone with --set \
                 database_only=true",
                keys.len(),
                keys[0]
            )));
        }
        let mut it = fs::read_dir(&target).map_err(|e| Error::from(e).context(&target))?;
        if it.next().is_some() {
            return Err(Error::Other(format!(
                "restore target {target} is not empty; restore a node's files into an empty directory"
            )));
        }
        host::warn("the node that will use these files must be stopped while they are restored");
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for e in &entries {
            match e.kind {
                EntryKind::Dir => {
                    let dest = join(&target, &e.path);
                    fs::create_dir(&dest).map_err(|err| Error::from(err).context(&dest))?;
                    dirs.push(e);
                }
                EntryKind::File => files.push(e.path.clone()),
                EntryKind::Symlink => host::symlink(&e.path, e.link_target.as_deref().unwrap_or_default())?,
            }
        }
        for chunk in files.chunks(ADD_FILES) {
            host::check_cancelled()?;
            snapshot.restore_files(chunk)?;
        }
        for d in dirs.iter().rev() {
            host::set_metadata(&d.path, d.mode, d.mtime)?;
        }
        host::info(format!(
            "restored {} files{}",
            files.len(),
            if keys.is_empty() { String::new() } else { format!(", {} of them keystore keys", keys.len()) }
        ));
        Ok(())
    }

    fn verify(config: SubstrateConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let keystore_alone = snapshot.attribute(LAYOUT_ATTR).as_deref() == Some(LAYOUT_KEYSTORE);
        // Files per directory (name → size and mode).
        let mut dirs: BTreeMap<String, BTreeMap<String, (u64, u32)>> = BTreeMap::new();
        for e in snapshot.entries() {
            if e.kind != EntryKind::File {
                continue;
            }
            let (dir, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
            dirs.entry(dir.to_string()).or_default().insert(name.to_string(), (e.size, e.mode));
        }
        for (dir, files) in &dirs {
            host::check_cancelled()?;
            let names: Vec<&str> = files.keys().map(String::as_str).collect();
            if rocksdb::looks_like_rocksdb(names.iter().copied()) {
                let sizes = files.iter().map(|(n, (s, _))| (n.clone(), *s)).collect();
                verify::rocksdb(snapshot, dir, &sizes, &mut report)?;
            } else if paritydb::looks_like_paritydb(names.iter().copied()) {
                verify::paritydb(snapshot, dir, files, &mut report)?;
            } else if (keystore_alone && dir.is_empty()) || dir.ends_with("/keystore") {
                verify::keystore(snapshot, dir, files, config.keystore_password.as_deref(), &mut report)?;
            } else if dir.ends_with("/network") && files.contains_key("secret_ed25519") {
                verify::node_key(snapshot, &join_rel(dir, "secret_ed25519"), &mut report)?;
            }
        }
        Ok(report)
    }
}

/// Whether `path` is `chains/<id>` (kept with the keys alone).
fn is_chain_dir(path: &str) -> bool {
    path.strip_prefix("chains/").is_some_and(|rest| !rest.contains('/'))
}

pub mod verify;

coffer_sdk::export!(Substrate);
