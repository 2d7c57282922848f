//! coffer's `files` plugin: backs up a directory tree (files, directories,
//! symlinks, permission bits, modification times), restores it into an
//! empty directory, and verifies it (every entry read back and re-hashed,
//! plus a drift report against the live tree when it is granted).
//!
//! The plugin walks the tree; the host reads the regular files it hands
//! over in batches (`add-files`), so file content never passes through the
//! plugin. Sockets, FIFOs and devices are skipped with a warning. A file or
//! directory that vanishes during the backup is skipped with a warning; one
//! that cannot be read (permission denied, a name that is not UTF-8) is left
//! out with a warning, and the host counts it so the backup ends with exit
//! status 4 ("saved, but incomplete"). With a parent snapshot, a file whose
//! size, mtime and mode are unchanged is kept from the parent without being
//! read.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;

use coffer_sdk::{
    Capability, Config, ConfigError, DirListing, EntryInfo, EntryKind, EntryMeta, Error, FileOutcome, FileSource,
    Plugin, PluginInfo, RestoreOptions, Sink, SnapshotReader, Timestamp, VerifyReport, host,
};
use serde::Deserialize;

/// The plugin.
pub struct Files;

/// `coffer backup files --set path=DIR [--set exclude=a,b]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// The directory to back up (absolute; the host rewrites a relative one).
    path: String,
    /// Names or relative paths to leave out (`node_modules`, `cache/tmp`).
    #[serde(default)]
    exclude: Vec<String>,
}

impl Config for FilesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.path.is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::field("path", "must be an absolute path"));
        }
        for e in &self.exclude {
            if e.is_empty() || e.starts_with('/') || e.split('/').any(|p| p == "..") {
                return Err(ConfigError::field("exclude", format!("`{e}` must be a name or a relative path")));
            }
        }
        Ok(())
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["path"],
  "additionalProperties": false,
  "properties": {
    "path": {"type": "string", "x-coffer-grant": "read-dir", "description": "Directory to back up; granted read-only."},
    "exclude": {"type": "array", "items": {"type": "string"}, "description": "Names or relative paths to leave out."}
  }
}"#;

/// Read buffer for file content (verify).
const READ_BUF: usize = 1 << 20;

/// Files handed to the host per `add-files` call: the host reads a batch
/// several files at once and returns when the batch's last file is read,
/// so a batch is also the step of the progress figure.
const ADD_FILES: usize = 1_000;
const ADD_BYTES: u64 = 64 << 20;

/// A walk asks whether the job was cancelled at each directory and after
/// this many items of a big one.
const CANCEL_EVERY: usize = 256;

fn root(config: &FilesConfig) -> String {
    let r = config.path.trim_end_matches('/');
    if r.is_empty() { "/".into() } else { r.to_string() }
}

fn join(root: &str, rel: &str) -> String {
    if rel.is_empty() {
        root.to_string()
    } else if root.ends_with('/') {
        format!("{root}{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

/// The snapshot path of `name` inside the directory at snapshot path `rel`.
fn child_of(rel: &str, name: &str) -> String {
    if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") }
}

struct Walker<'a> {
    root: String,
    exclude: &'a [String],
    /// Unchanged files can be kept from a parent snapshot.
    has_parent: bool,
    sink: &'a Sink<'a>,
    /// Files waiting for the next `add-files` call, and their listed bytes.
    pending: Vec<FileSource>,
    pending_bytes: u64,
    read_bytes: u64,
    /// Bytes read plus bytes kept from the parent: the progress figure.
    covered: u64,
    reused: u64,
    /// Sockets, FIFOs, devices.
    special: u64,
    /// Files and directories that vanished during the walk.
    vanished: u64,
    /// Files and directories that could not be read.
    left_out: u64,
}

impl Walker<'_> {
    fn excluded(&self, rel: &str, name: &str) -> bool {
        self.exclude.iter().any(|e| e == name || e == rel)
    }

    /// Lists the directory at snapshot path `rel` (not the root): `None`
    /// when it vanished or cannot be read, which is warned about and
    /// counted, not an error.
    fn list_child(&mut self, rel: &str) -> Result<Option<DirListing>, Error> {
        let dir = join(&self.root, rel);
        match host::list_dir(&dir) {
            Ok(listing) => Ok(Some(listing)),
            Err(e @ Error::Cancelled) => Err(e),
            Err(e) => {
                self.skip_unreadable(&dir, &e);
                Ok(None)
            }
        }
    }

    /// Warns about an item that could not be read: vanished (it no longer
    /// exists) or left out.
    fn skip_unreadable(&mut self, full: &str, e: &Error) {
        if matches!(fs::symlink_metadata(full), Err(err) if err.kind() == std::io::ErrorKind::NotFound) {
            host::warn(format!("{full} vanished during the backup; skipped"));
            self.vanished += 1;
        } else {
            host::warn(format!("left out {full}: it cannot be read ({e})"));
            self.left_out += 1;
        }
    }

    fn walk(&mut self, rel: &str, listing: DirListing) -> Result<(), Error> {
        host::check_cancelled()?;
        let dir = join(&self.root, rel);
        for name in &listing.not_utf8 {
            host::warn(format!(
                "left out {dir}/{name}: the name is not UTF-8, which coffer cannot store yet (bytes that are \
                 not UTF-8 are shown as U+FFFD)"
            ));
            self.left_out += 1;
        }
        for name in &listing.special {
            let child = child_of(rel, name);
            if !self.excluded(&child, name) {
                host::warn(format!(
                    "skipping {}: sockets, FIFOs and devices are not backed up",
                    join(&self.root, &child)
                ));
                self.special += 1;
            }
        }
        for (i, item) in listing.items.into_iter().enumerate() {
            if i % CANCEL_EVERY == CANCEL_EVERY - 1 {
                host::check_cancelled()?;
            }
            let child = child_of(rel, &item.name);
            if self.excluded(&child, &item.name) {
                continue;
            }
            match item.kind {
                EntryKind::Dir => {
                    // Listed first: a directory that vanished or cannot be
                    // read is left out, entry and all.
                    let Some(listing) = self.list_child(&child)? else { continue };
                    self.sink.add_entry(EntryMeta::dir(&child, item.mode).mtime(item.mtime))?.finish()?;
                    self.walk(&child, listing)?;
                }
                EntryKind::Symlink => {
                    let full = join(&self.root, &child);
                    let target = match host::read_link(&full) {
                        Ok(t) => t,
                        Err(e @ Error::Cancelled) => return Err(e),
                        Err(e) => {
                            self.skip_unreadable(&full, &e);
                            continue;
                        }
                    };
                    self.sink.add_entry(EntryMeta::symlink(&child, &target).mtime(item.mtime))?.finish()?;
                }
                EntryKind::File => {
                    if self.has_parent && self.sink.reuse_unchanged(&child, item.size, item.mtime, item.mode) {
                        self.reused += 1;
                        self.covered += item.size;
                        continue;
                    }
                    let source = join(&self.root, &child);
                    self.pending.push(FileSource { path: child, source });
                    self.pending_bytes += item.size;
                    if self.pending.len() >= ADD_FILES || self.pending_bytes >= ADD_BYTES {
                        self.add_pending()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands the pending files to the host, which reads them.
    fn add_pending(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let outcomes = self.sink.add_files(&self.pending)?;
        for (file, outcome) in self.pending.iter().zip(outcomes) {
            match outcome {
                FileOutcome::Added(d) => {
                    self.read_bytes += d.size;
                    self.covered += d.size;
                }
                FileOutcome::Gone => {
                    host::warn(format!("{} vanished during the backup; skipped", file.source));
                    self.vanished += 1;
                }
                FileOutcome::Unreadable(why) => {
                    host::warn(format!("left out {}: it cannot be read ({why})", file.source));
                    self.left_out += 1;
                }
            }
        }
        self.pending.clear();
        self.pending_bytes = 0;
        host::progress(self.covered, None);
        Ok(())
    }
}

fn restore_dir_empty(dir: &str) -> Result<bool, Error> {
    let mut it = fs::read_dir(dir).map_err(|e| Error::from(e).context(dir))?;
    Ok(it.next().is_none())
}

/// Removes what is at `path` unless it is a directory (for `--force`).
fn clear_for(path: &str, want_dir: bool) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() && !md.file_type().is_symlink() => {
            if !want_dir {
                fs::remove_dir_all(path).map_err(|e| Error::from(e).context(path))?;
            }
        }
        Ok(_) => fs::remove_file(path).map_err(|e| Error::from(e).context(path))?,
        Err(_) => {}
    }
    Ok(())
}

/// Files handed to the host per `restore-files` call: the host writes a
/// batch several files at once, and waits for the batch's last file.
const BATCH_FILES: usize = 2_000;
const BATCH_BYTES: u64 = 256 << 20;

/// Files waiting to be restored by the host.
#[derive(Default)]
struct Batch {
    paths: Vec<String>,
    bytes: u64,
}

impl Batch {
    fn add(&mut self, snapshot: &SnapshotReader, e: &EntryInfo, done: &mut u64, total: u64) -> Result<(), Error> {
        self.paths.push(e.path.clone());
        self.bytes += e.size;
        if self.paths.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES {
            self.flush(snapshot, done, total)?;
        }
        Ok(())
    }

    fn flush(&mut self, snapshot: &SnapshotReader, done: &mut u64, total: u64) -> Result<(), Error> {
        if self.paths.is_empty() {
            return Ok(());
        }
        *done += snapshot.restore_files(&self.paths)?;
        self.paths.clear();
        self.bytes = 0;
        host::progress(*done, Some(total));
        Ok(())
    }
}

fn hash_entry(snapshot: &SnapshotReader, path: &str, buf: &mut [u8]) -> Result<(u64, String), Error> {
    let mut reader = snapshot.open(path)?;
    let mut h = blake3::Hasher::new();
    let mut n_total = 0u64;
    loop {
        let n = reader.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((n_total, h.finalize().to_hex().to_string()))
}

fn hash_file(path: &str, buf: &mut [u8]) -> std::io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Lists the live tree below `root` as path → (kind, size, mtime).
fn live_tree(
    root: &str,
    rel: &str,
    exclude: &[String],
    out: &mut BTreeMap<String, (EntryKind, u64, Timestamp)>,
) -> Result<(), Error> {
    for item in host::list_dir(&join(root, rel))?.items {
        let child = child_of(rel, &item.name);
        if exclude.iter().any(|e| *e == item.name || *e == child) {
            continue;
        }
        out.insert(child.clone(), (item.kind, item.size, item.mtime));
        if item.kind == EntryKind::Dir {
            live_tree(root, &child, exclude, out)?;
        }
    }
    Ok(())
}

impl Plugin for Files {
    type Config = FilesConfig;

    fn info() -> PluginInfo {
        PluginInfo::new(
            "files",
            env!("CARGO_PKG_VERSION"),
            "Directory trees: files, directories, symlinks, permission bits and modification times",
        )
        .schema(SCHEMA)
        .restore_modes(true, false)
    }

    fn source(config: &FilesConfig) -> String {
        format!("files:{}", root(config))
    }

    fn capabilities(config: &FilesConfig) -> Vec<Capability> {
        vec![Capability::ReadDir(root(config))]
    }

    fn snapshot(config: FilesConfig, parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        let root = root(&config);
        let md = fs::metadata(&root).map_err(|e| Error::from(e).context(&root))?;
        if !md.is_dir() {
            return Err(Error::InvalidConfig(format!("path: {root} is not a directory")));
        }
        let mut w = Walker {
            root,
            exclude: &config.exclude,
            has_parent: parent.is_some(),
            sink,
            pending: Vec::new(),
            pending_bytes: 0,
            read_bytes: 0,
            covered: 0,
            reused: 0,
            special: 0,
            vanished: 0,
            left_out: 0,
        };
        let listing = host::list_dir(&w.root)?;
        w.walk("", listing)?;
        w.add_pending()?;
        host::info(format!(
            "read {} bytes, kept {} unchanged files from the parent; skipped {} sockets, FIFOs and devices and {} \
             items that vanished; left out {} that could not be read",
            w.read_bytes, w.reused, w.special, w.vanished, w.left_out
        ));
        Ok(())
    }

    fn restore(_config: FilesConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        let target = options.directory()?.trim_end_matches('/').to_string();
        let target = if target.is_empty() { "/".to_string() } else { target };
        if !options.force && !restore_dir_empty(&target)? {
            return Err(Error::Other(format!(
                "restore target {target} is not empty; restore into an empty directory or pass --force to overwrite"
            )));
        }
        let mut dirs: Vec<EntryInfo> = Vec::new();
        let total: u64 = snapshot.entries().map(|e| e.size).sum();
        let mut done = 0u64;
        let mut batch = Batch::default();
        for e in snapshot.entries() {
            host::check_cancelled()?;
            if !options.includes(&e.path) {
                continue;
            }
            let dest = join(&target, &e.path);
            match e.kind {
                EntryKind::Dir => {
                    if options.force {
                        clear_for(&dest, true)?;
                    }
                    match fs::create_dir(&dest) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && options.force => {}
                        Err(err) => return Err(Error::from(err).context(&dest)),
                    }
                    dirs.push(e);
                }
                EntryKind::File => {
                    if options.force {
                        clear_for(&dest, false)?;
                    }
                    batch.add(snapshot, &e, &mut done, total)?;
                }
                EntryKind::Symlink => {
                    if options.force {
                        clear_for(&dest, false)?;
                    }
                    let link = e.link_target.as_deref().unwrap_or_default();
                    host::symlink(&e.path, link)?;
                    host::set_metadata(&e.path, e.mode, e.mtime)?;
                }
            }
        }
        batch.flush(snapshot, &mut done, total)?;
        // Directories last and deepest first, so writing their children
        // neither changes their mtime nor needs write permission they lack.
        for d in dirs.iter().rev() {
            host::set_metadata(&d.path, d.mode, d.mtime)?;
        }
        Ok(())
    }

    fn verify(config: FilesConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let mut buf = vec![0u8; READ_BUF];
        let mut done = 0u64;
        let total: u64 = snapshot.entries().map(|e| e.size).sum();
        for e in snapshot.entries() {
            host::check_cancelled()?;
            if e.kind != EntryKind::File {
                report.checked(1, 0);
                continue;
            }
            match hash_entry(snapshot, &e.path, &mut buf) {
                Ok((size, hash)) => {
                    if size != e.size {
                        report.problem(&e.path, format!("read {size} bytes, the snapshot records {}", e.size));
                    } else if e.blake3.as_deref() != Some(hash.as_str()) {
                        report.problem(&e.path, "content does not match its recorded BLAKE3");
                    }
                    report.checked(1, size);
                    done += size;
                    host::progress(done, Some(total));
                }
                Err(err) => report.problem(&e.path, format!("unreadable: {err}")),
            }
        }
        // Drift against the live tree, where it is granted.
        let root = root(&config);
        let mut live = BTreeMap::new();
        match live_tree(&root, "", &config.exclude, &mut live) {
            Err(err) => report.note(format!("no drift report: {root} is not readable here ({err})")),
            Ok(()) => {
                let mut changed = 0;
                let mut missing = 0;
                let mut added = 0;
                for e in snapshot.entries() {
                    match live.remove(&e.path) {
                        None => {
                            missing += 1;
                            report.note(format!("drift: {} is in the snapshot but no longer in {root}", e.path));
                        }
                        Some((kind, size, mtime)) => {
                            if kind != e.kind {
                                changed += 1;
                                report.note(format!("drift: {} changed kind", e.path));
                            } else if kind == EntryKind::File && (size != e.size || mtime != e.mtime) {
                                // Same size and time: compare content only
                                // when the metadata moved.
                                let same = size == e.size
                                    && hash_file(&join(&root, &e.path), &mut buf).ok().as_deref()
                                        == e.blake3.as_deref();
                                if !same {
                                    changed += 1;
                                    report.note(format!("drift: {} changed since the snapshot", e.path));
                                }
                            }
                        }
                    }
                }
                for path in live.keys() {
                    added += 1;
                    report.note(format!("drift: {path} is new in {root}"));
                }
                report.note(format!(
                    "drift against {root}: {changed} changed, {missing} removed, {added} added since the snapshot"
                ));
            }
        }
        Ok(report)
    }
}

coffer_sdk::export!(Files);
