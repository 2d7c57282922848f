//! The host side of the contract: the store's data ([`PluginState`]), the
//! resources a plugin holds (sink, entry writers, snapshot readers, entry
//! readers) and the host functions. Everything a plugin passes in is
//! checked here; a contract violation or an exceeded limit is a [`Fault`]
//! that ends the instance.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_repo::{
    EntryKind as RepoKind, EntryMeta as RepoMeta, EntryReader, EntryWriter, Repository, Snapshot, SnapshotWriter,
};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::types::{
    Digest, DirItem, DirListing, EntryInfo, EntryKind, EntryMeta, Error as WitError, LogLevel, Timestamp,
};
use crate::bindings::{host, reader, sink, types};
use crate::grants::GrantSet;
use crate::job::{CancelToken, JobObserver};
use crate::limits::Limits;

/// Longest log line kept; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;
/// Log lines kept per job (a count, not a rate); later ones are counted,
/// not printed, and the count is reported when the call returns.
pub(crate) const MAX_LOG_LINES: u64 = 100_000;
/// Longest attribute key and value.
const MAX_ATTR_KEY: usize = 256;
const MAX_ATTR_VALUE: usize = 64 << 10;
/// Attributes per snapshot.
const MAX_ATTRS: usize = 1024;
/// Largest piece an entry reader returns.
const MAX_READ: u32 = 4 << 20;
/// Most entries returned by one `entries` call.
const MAX_PAGE: u32 = 10_000;
/// Longest entry path and symlink target.
const MAX_PATH: usize = 4096;
/// Entries per snapshot (each costs host memory until commit).
const MAX_ENTRIES: u64 = 100_000_000;

/// A host-side reason to stop a plugin: it ends the instance (a trap) and
/// fails the job, whatever the plugin would have returned.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The snapshot wrote more content than allowed.
    #[error("exceeded its output limit of {limit} bytes")]
    OutputLimit {
        /// The limit.
        limit: u64,
    },
    /// Linear memory would grow past the cap.
    #[error("exceeded its memory limit of {limit} bytes (it asked for {requested})")]
    MemoryLimit {
        /// The limit.
        limit: u64,
        /// What it asked for.
        requested: u64,
    },
    /// The job ran past its time budget.
    #[error("ran past its time limit of {0:?}")]
    TimeLimit(Duration),
    /// The plugin did not answer `info` in time.
    #[error(
        "hung in `info`: no answer within its limit of {0:?}; a plugin describes itself at once, so this one is stuck (raise --info-time-limit only if it is known to be slow)"
    )]
    InfoTimeLimit(Duration),
    /// The operator cancelled the job.
    #[error("was cancelled")]
    Cancelled,
    /// Too many writers or readers open at once.
    #[error("opened more than {0} entry writers and readers at once")]
    TooManyHandles(u32),
    /// The plugin broke the contract (an invalid path, a symlink without a
    /// target, an entry left unfinished, an attribute too large).
    #[error("broke the plugin contract: {0}")]
    Contract(String),
    /// The repository failed underneath the plugin (storage error).
    #[error("repository error: {0}")]
    Repository(String),
}

/// The sink of the snapshot being written (the writer itself lives in the
/// job state).
pub struct SinkSlot;

/// An entry (or, in a stream job, a stream item) being written.
pub struct EntryWriterSlot {
    pub(crate) writer: Option<ContentWriter>,
    /// The entry's path, or `<stream>/<key>` for an item.
    pub(crate) path: String,
}

/// Where an [`EntryWriterSlot`]'s content goes.
pub(crate) enum ContentWriter {
    /// An entry of the snapshot being written.
    Entry(EntryWriter),
    /// An item of one of the plugin's streams.
    Item(coffer_repo::ItemWriter),
}

/// A stored snapshot opened for a plugin.
pub struct ReaderSlot {
    pub(crate) snapshot: Arc<Snapshot>,
}

impl ReaderSlot {
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> Self {
        ReaderSlot { snapshot }
    }
}

/// An entry (or a stream item) being read.
pub struct EntryReaderSlot {
    pub(crate) reader: ContentReader,
}

/// Where an [`EntryReaderSlot`]'s content comes from.
pub(crate) enum ContentReader {
    /// An entry of a stored snapshot.
    Entry(EntryReader<'static>),
    /// A stream item (its size and BLAKE3 checked at the end).
    Item(Box<coffer_repo::StreamItemReader>),
}

impl ContentReader {
    async fn read(&mut self, buf: &mut [u8]) -> coffer_repo::Result<usize> {
        match self {
            ContentReader::Entry(r) => r.read(buf).await,
            ContentReader::Item(r) => r.read(buf).await,
        }
    }
}

/// Enforces the memory cap and remembers when it said no.
pub(crate) struct MemoryLimiter {
    pub(crate) limit: u64,
    /// Bytes of every memory of the instance together.
    pub(crate) used: u64,
    pub(crate) denied: Option<u64>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // The cap is on all of the instance's memories together.
        let total = self.used.saturating_sub(current as u64).saturating_add(desired as u64);
        if total > self.limit {
            self.denied = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Where a restore writes, and the snapshot it restores (for the mode bits
/// `set-metadata` may grant).
pub(crate) struct RestoreRoot {
    pub(crate) root: PathBuf,
    pub(crate) snapshot: Arc<Snapshot>,
}

/// Per-job state the host functions use.
pub(crate) struct JobState {
    pub(crate) plugin: String,
    pub(crate) grants: Arc<GrantSet>,
    pub(crate) limits: Limits,
    pub(crate) cancel: CancelToken,
    pub(crate) deadline: Instant,
    /// While `info` runs: when it must have answered.
    pub(crate) info_deadline: Option<Instant>,
    pub(crate) observer: Arc<dyn JobObserver>,
    pub(crate) repo: Option<Repository>,
    pub(crate) writer: Option<SnapshotWriter>,
    pub(crate) restore: Option<RestoreRoot>,
    /// The last parent directory `resolve_in_grants` resolved under
    /// read-only grants: (as asked, as resolved).
    pub(crate) last_parent: Option<(PathBuf, PathBuf)>,
    /// Syncs and releases the files of a restore into a directory.
    pub(crate) settler: Option<crate::settle::Settler>,
    pub(crate) output_used: u64,
    pub(crate) open_writers: u32,
    pub(crate) open_readers: u32,
    pub(crate) attributes: usize,
    pub(crate) entries: u64,
    /// An entry writer dropped unfinished (the snapshot cannot commit).
    pub(crate) abandoned: Option<String>,
    pub(crate) log_lines: u64,
    /// Lines dropped past [`MAX_LOG_LINES`] and not yet reported.
    pub(crate) log_dropped: u64,
    pub(crate) fault: Option<Fault>,
    /// The owner of this plugin's streams: its identity, decided by the
    /// host (`None` when it cannot own streams).
    pub(crate) owner: Option<coffer_repo::StreamOwner>,
    /// In a stream job (`stream-push`, `follow`): where items go.
    pub(crate) streams: Option<crate::streams::StreamJob>,
    /// The streams the snapshot being written declared it needs.
    pub(crate) needs: std::collections::HashSet<String>,
    /// Network refusals, counted for the log.
    pub(crate) refusals: Arc<Refusals>,
}

/// Refusals a job's plugin provoked (a name, an address, a certificate,
/// an authority it was not granted). Each is logged for the operator, up
/// to [`LOGGED_REFUSALS`] per job: a plugin that loops on refusals must not
/// flood the host's log.
#[derive(Debug, Default)]
pub(crate) struct Refusals(std::sync::atomic::AtomicU64);

/// Refusals logged per job; the rest are counted.
pub(crate) const LOGGED_REFUSALS: u64 = 20;

impl Refusals {
    /// Logs `message` about `plugin` at warn, unless this job already
    /// logged [`LOGGED_REFUSALS`].
    pub(crate) fn warn(&self, plugin: &str, message: &str) {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < LOGGED_REFUSALS {
            tracing::warn!("plugin {}: {message}", printable(plugin));
        } else if n == LOGGED_REFUSALS {
            tracing::warn!("plugin {}: more refusals; this job logs no further ones", printable(plugin));
        }
    }
}

/// The data of one plugin instance's store.
pub struct PluginState {
    pub(crate) wasi: WasiCtx,
    pub(crate) tls: wasmtime_wasi_tls::WasiTlsCtx,
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) http_hooks: crate::http::CofferHttp,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) job: JobState,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime_wasi_tls::WasiTlsView for PluginState {
    fn tls(&mut self) -> wasmtime_wasi_tls::WasiTlsCtxView<'_> {
        wasmtime_wasi_tls::WasiTlsCtxView { ctx: &mut self.tls, table: &mut self.table }
    }
}

impl wasmtime_wasi_http::WasiHttpView for PluginState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

/// Called on every epoch tick while wasm runs: stops a plugin that was
/// cancelled or is past its deadline, and otherwise yields to the async
/// executor so other jobs and timers make progress.
pub(crate) fn on_epoch(ctx: StoreContextMut<'_, PluginState>) -> wasmtime::Result<UpdateDeadline> {
    let job = &ctx.data().job;
    if job.cancel.is_cancelled() {
        return Err(wasmtime::Error::new(Fault::Cancelled));
    }
    let now = Instant::now();
    if now >= job.deadline {
        return Err(wasmtime::Error::new(Fault::TimeLimit(job.limits.wall_time)));
    }
    if job.info_deadline.is_some_and(|d| now >= d) {
        return Err(wasmtime::Error::new(Fault::InfoTimeLimit(job.limits.info_time)));
    }
    Ok(UpdateDeadline::Yield(1))
}

impl PluginState {
    /// Records a fault and returns it as a trap.
    pub(crate) fn fault(&mut self, f: Fault) -> wasmtime::Error {
        if self.job.fault.is_none() {
            self.job.fault = Some(f.clone());
        }
        wasmtime::Error::new(f)
    }

    pub(crate) fn open_handle(&mut self) -> wasmtime::Result<()> {
        let open = self.job.open_writers + self.job.open_readers;
        if open >= self.job.limits.open_handles {
            let limit = self.job.limits.open_handles;
            return Err(self.fault(Fault::TooManyHandles(limit)));
        }
        Ok(())
    }

    /// A host path inside a grant, with its parent resolved the way the OS
    /// would and checked to still be inside a grant (a symlink in the middle
    /// must not lead out). The final component is not resolved.
    ///
    /// The last parent resolved under a read-only grant is remembered: a
    /// backup asks about every file of a directory in turn, and resolving
    /// the parent anew each time (a `readlink` per path component) was a
    /// tenth of a backup's system time. The plugin cannot change a tree it
    /// may only read; under a writable grant nothing is remembered.
    pub(crate) fn resolve_in_grants(&mut self, path: &str) -> Result<PathBuf, WitError> {
        let p = Path::new(path);
        let denied = || WitError::AccessDenied(format!("{} is not inside a granted directory", printable(path)));
        let Some((_, writable)) = self.job.grants.dir_covering(p) else {
            return Err(denied());
        };
        let (parent, name) = match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => return Err(denied()),
        };
        if !writable
            && let Some((asked, real)) = &self.job.last_parent
            && asked == parent
        {
            return Ok(real.join(name));
        }
        let (real, real_writable) = real_path_in_grants(&self.job.grants, p).map_err(|e| {
            e.unwrap_or_else(|| WitError::Unavailable(format!("{}: its directory does not exist", printable(path))))
        })?;
        if let Some(real_parent) = real.parent() {
            self.job.last_parent =
                (!writable && !real_writable).then(|| (parent.to_path_buf(), real_parent.to_path_buf()));
        }
        Ok(real)
    }

    /// Opens the directory at `path` with one `openat2(RESOLVE_BENEATH)`
    /// from the root of the grant covering it, so no symlink on the way can
    /// lead out of that grant, and a final symlink is not followed. `None`
    /// when that fails for any reason (a kernel without `openat2`, a symlink
    /// into another grant, a missing directory): the caller then resolves
    /// the path with [`Self::resolve_dir_in_grants`], which also makes the
    /// error message. This spares a `realpath` (a `readlink` per component)
    /// for each directory a walk lists.
    fn open_dir_beneath(&self, path: &str) -> Option<rustix::fd::OwnedFd> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let p = Path::new(path);
        let (root, _) = self.job.grants.dir_covering(p)?;
        let rel = p.strip_prefix(root).ok()?;
        let root_fd = rustix::fs::openat(
            rustix::fs::CWD,
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        open_dir_nofollow(&root_fd, rel, Some(ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS)).ok()
    }

    /// A directory inside a grant, for `list-dir`: a granted directory
    /// itself, or a path resolved as [`Self::resolve_in_grants`] does.
    fn resolve_dir_in_grants(&mut self, path: &str) -> Result<PathBuf, WitError> {
        let p = Path::new(path);
        if let Some((root, _)) = self.job.grants.dir_covering(p)
            && root == p
        {
            return Ok(root.to_path_buf());
        }
        self.resolve_in_grants(path)
    }

    /// `rel` (a snapshot path) inside the restore target, with every
    /// component but the last checked to be a real directory: a symlink the
    /// plugin planted must not redirect a host-side change. With `create`,
    /// the last component must not exist yet.
    fn resolve_in_target(&self, rel: &str, create: bool) -> Result<PathBuf, WitError> {
        let Some(restore) = &self.job.restore else {
            return Err(WitError::AccessDenied("this works only during a restore into a directory".into()));
        };
        coffer_repo::repofile::tree::validate_path(rel)
            .map_err(|reason| WitError::AccessDenied(format!("{}: {reason}", printable(rel))))?;
        let mut cur = restore.root.clone();
        let parts: Vec<Component> = Path::new(rel).components().collect();
        for (i, part) in parts.iter().enumerate() {
            cur.push(part);
            if i + 1 == parts.len() {
                break;
            }
            match std::fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(WitError::AccessDenied(format!(
                        "{}: {} is not a directory (symlinks are not followed)",
                        printable(rel),
                        part.as_os_str().to_string_lossy()
                    )));
                }
                Err(e) => return Err(WitError::Unavailable(format!("{}: {e}", printable(rel)))),
            }
        }
        if create && std::fs::symlink_metadata(&cur).is_ok() {
            return Err(WitError::Other(format!("{}: already exists", printable(rel))));
        }
        Ok(cur)
    }

    /// Counts a source issue in the snapshot being written; outside a
    /// snapshot (a verify listing the live tree) nothing is counted.
    fn count_issue(&self, issue: coffer_repo::SourceIssue) {
        if let Some(w) = &self.job.writer {
            w.count_issue(issue);
        }
    }

    pub(crate) fn writer(&mut self) -> wasmtime::Result<&SnapshotWriter> {
        if self.job.writer.is_none() {
            return Err(self.fault(Fault::Contract("the sink was used outside a snapshot".into())));
        }
        Ok(self.job.writer.as_ref().expect("checked"))
    }

    /// Maps a repository error from a sink call: the plugin's mistakes are
    /// contract faults, storage failures are repository faults, both end
    /// the job.
    pub(crate) fn repo_fault(&mut self, e: coffer_repo::Error) -> wasmtime::Error {
        let f = match e {
            coffer_repo::Error::InvalidEntry { path, reason } => {
                Fault::Contract(format!("entry `{}`: {reason}", printable(&path)))
            }
            other => Fault::Repository(other.to_string()),
        };
        self.fault(f)
    }
}

/// `path` with its parent resolved the way the OS would (symlinks
/// followed), and whether the grant covering that resolved parent is
/// writable; the final component is not resolved. Fails with
/// `access-denied` when `path` or its resolved parent is outside the
/// grants, and with `None` when the parent does not exist.
pub(crate) fn real_path_in_grants(grants: &GrantSet, path: &Path) -> Result<(PathBuf, bool), Option<WitError>> {
    let denied = || {
        Some(WitError::AccessDenied(format!(
            "{} is not inside a granted directory",
            printable(&path.to_string_lossy())
        )))
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(denied());
    };
    grants.dir_covering(path).ok_or_else(denied)?;
    let real_parent = match parent.canonicalize() {
        Ok(p) => p,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(None);
        }
        Err(e) => return Err(Some(WitError::Unavailable(format!("{}: {e}", printable(&path.to_string_lossy()))))),
    };
    let (_, writable) = grants.dir_covering(&real_parent).ok_or_else(denied)?;
    Ok((real_parent.join(name), writable))
}

/// The file entry at `path`, or the error a plugin gets for a path the
/// snapshot does not hold or one that is not a file (`open`,
/// `restore-files`).
fn file_entry<'a>(snapshot: &'a Snapshot, path: &str) -> Result<&'a coffer_repo::Entry, WitError> {
    match snapshot.entry(path) {
        None => Err(WitError::Other(format!("snapshot {} has no entry {}", snapshot.id.short(), printable(path)))),
        Some(e) if e.kind != RepoKind::File => {
            Err(WitError::Other(format!("{}: only files have content to read or restore", printable(path))))
        }
        Some(e) => Ok(e),
    }
}

/// What a plugin is told when an entry's content could not be read (or,
/// for `restore-files`, written): damage is `corrupt`, a local write is
/// `other`, anything else (storage unreachable, a missing blob) is
/// `unavailable`.
pub(crate) fn content_error(e: coffer_repo::Error) -> WitError {
    match e {
        coffer_repo::Error::Corrupt { .. } => WitError::Corrupt(e.to_string()),
        coffer_repo::Error::Io { .. } => WitError::Other(e.to_string()),
        other => WitError::Unavailable(other.to_string()),
    }
}

/// The permission bits a restore may set on a file or directory: the
/// requested `mode`'s rwx bits, plus the special bits the snapshot
/// recorded for it (`recorded`); setuid and setgid never on an item owned
/// by root, because snapshots do not record owners and a user's setuid
/// program must not come back as a root one.
pub(crate) fn granted_mode(mode: u32, recorded: u32, owner: u32) -> u32 {
    let mut special = recorded & 0o7000;
    if owner == 0 {
        special &= 0o1000;
    }
    mode & (0o777 | special)
}

/// Text from a plugin as it can be shown on a terminal or in a text
/// report (`ls -q` style): control characters (NUL, newline, escape, the
/// C1 set) are escaped as `\n`, `\u{1b}`, so a plugin cannot forge lines,
/// move the cursor or set a window title. Every plugin-supplied string the
/// host prints goes through here; JSON output needs no escaping.
pub fn printable(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

fn to_repo_kind(k: EntryKind) -> RepoKind {
    match k {
        EntryKind::File => RepoKind::File,
        EntryKind::Dir => RepoKind::Dir,
        EntryKind::Symlink => RepoKind::Symlink,
    }
}

fn to_wit_kind(k: RepoKind) -> EntryKind {
    match k {
        RepoKind::File => EntryKind::File,
        RepoKind::Dir => EntryKind::Dir,
        RepoKind::Symlink => EntryKind::Symlink,
    }
}

fn entry_info(e: &coffer_repo::Entry) -> EntryInfo {
    EntryInfo {
        path: e.path.clone(),
        kind: to_wit_kind(e.kind),
        mode: e.mode,
        mtime: Timestamp { seconds: e.mtime, nanoseconds: e.mtime_nsec },
        size: e.size,
        link_target: e.target.clone(),
        blake3: e.blake3.map(|b| b.to_hex()),
    }
}

/// Why a directory could not be listed.
enum ListError {
    /// Opening or reading the directory, or the `statx` of the named item.
    Io(Option<String>, std::io::Error),
    /// The listing grew past what the plugin's memory could take.
    TooBig(usize),
}

/// Opens the directory `path` relative to `at` for reading, not following
/// a final symlink; with `beneath`, through `openat2` with those flags.
fn open_dir_nofollow(
    at: impl rustix::fd::AsFd,
    path: &Path,
    beneath: Option<rustix::fs::ResolveFlags>,
) -> rustix::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match beneath {
        Some(resolve) => rustix::fs::openat2(at, path, flags, Mode::empty(), resolve),
        None => rustix::fs::openat(at, path, flags, Mode::empty()),
    }
}

/// Lists the open directory `fd` with the `lstat` metadata of each item:
/// the names first, then one `statx` per name relative to the directory's
/// own descriptor, so no path is looked up again. An item that vanishes in
/// between is left out. Stops once the listing needs more than `cap` bytes,
/// which the plugin could not receive.
fn list_dir_fd(fd: rustix::fd::OwnedFd, cap: u64) -> Result<DirListing, ListError> {
    use rustix::fs::{AtFlags, FileType, StatxFlags};
    let io = |name: Option<&str>, e: rustix::io::Errno| ListError::Io(name.map(str::to_string), e.into());
    let mut dir = rustix::fs::Dir::new(fd).map_err(|e| io(None, e))?;
    let mut names: Vec<std::ffi::CString> = Vec::new();
    let mut bytes = 0u64;
    while let Some(item) = dir.read() {
        let item = item.map_err(|e| io(None, e))?;
        let name = item.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        // A name, an item record and the list slot for it in the plugin.
        bytes += name.to_bytes().len() as u64 + 64;
        if bytes > cap {
            return Err(ListError::TooBig(names.len()));
        }
        names.push(name.to_owned());
    }
    let fd = dir.fd().map_err(|e| io(None, e))?;
    let mut listing = DirListing { items: Vec::with_capacity(names.len()), special: Vec::new(), not_utf8: Vec::new() };
    for raw in names {
        let name = match raw.into_string() {
            Ok(n) => n,
            Err(e) => {
                listing.not_utf8.push(String::from_utf8_lossy(e.into_cstring().as_bytes()).into_owned());
                continue;
            }
        };
        let want = StatxFlags::TYPE | StatxFlags::MODE | StatxFlags::SIZE | StatxFlags::MTIME;
        let st = match rustix::fs::statx(fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW, want) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(io(Some(&name), e)),
        };
        let mode = u32::from(st.stx_mode);
        let kind = match FileType::from_raw_mode(mode) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            _ => {
                listing.special.push(name);
                continue;
            }
        };
        listing.items.push(DirItem {
            name,
            kind,
            mode: mode & 0o7777,
            size: if kind == EntryKind::File { st.stx_size } else { 0 },
            mtime: Timestamp { seconds: st.stx_mtime.tv_sec, nanoseconds: st.stx_mtime.tv_nsec },
        });
    }
    listing.items.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    listing.special.sort_unstable();
    listing.not_utf8.sort_unstable();
    Ok(listing)
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        self.job.log_lines += 1;
        if self.job.log_lines > MAX_LOG_LINES {
            if self.job.log_lines == MAX_LOG_LINES + 1 {
                self.job.observer.log(
                    &self.job.plugin,
                    LogLevel::Warn,
                    &format!("logged {MAX_LOG_LINES} lines; later lines are dropped and counted"),
                );
            }
            self.job.log_dropped += 1;
            return Ok(());
        }
        // Cut before escaping, so a huge message costs no more than a
        // short one.
        let long = message.len() > MAX_LOG_LINE;
        let mut cut = message.len().min(MAX_LOG_LINE);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut m = printable(&message[..cut]);
        if long {
            m.push_str(" [cut]");
        }
        self.job.observer.log(&self.job.plugin, level, &m);
        Ok(())
    }

    async fn progress(&mut self, done: u64, total: Option<u64>) -> wasmtime::Result<()> {
        self.job.observer.progress(done, total);
        Ok(())
    }

    async fn cancelled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.job.cancel.is_cancelled())
    }

    async fn file_mode(&mut self, path: String) -> wasmtime::Result<Result<u32, WitError>> {
        use std::os::unix::fs::PermissionsExt;
        let real = match self.resolve_in_grants(&path) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        match std::fs::symlink_metadata(real) {
            Ok(md) => Ok(Ok(md.permissions().mode() & 0o7777)),
            Err(e) => Ok(Err(WitError::Unavailable(format!("{}: {e}", printable(&path))))),
        }
    }

    async fn list_dir(&mut self, path: String) -> wasmtime::Result<Result<DirListing, WitError>> {
        let fd = match self.open_dir_beneath(&path) {
            Some(fd) => Ok(fd),
            None => match self.resolve_dir_in_grants(&path) {
                Ok(real) => open_dir_nofollow(rustix::fs::CWD, &real, None).map_err(|e| ListError::Io(None, e.into())),
                Err(e) => {
                    if matches!(e, WitError::Unavailable(_)) {
                        self.count_issue(coffer_repo::SourceIssue::Vanished);
                    }
                    return Ok(Err(e));
                }
            },
        };
        let listed = fd.and_then(|fd| list_dir_fd(fd, self.job.limits.memory));
        // During a snapshot: names that cannot be given to the plugin, and a
        // directory that could not be listed, are left out of it; one that
        // is gone vanished.
        match &listed {
            Ok(listing) => {
                for _ in &listing.not_utf8 {
                    self.count_issue(coffer_repo::SourceIssue::LeftOut);
                }
            }
            Err(ListError::Io(None, e))
                if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) =>
            {
                self.count_issue(coffer_repo::SourceIssue::Vanished)
            }
            Err(ListError::Io(..)) => self.count_issue(coffer_repo::SourceIssue::LeftOut),
            Err(ListError::TooBig(_)) => {}
        }
        Ok(listed.map_err(|e| match e {
            ListError::Io(None, e) => WitError::Unavailable(format!("{}: {e}", printable(&path))),
            ListError::Io(Some(name), e) => {
                WitError::Unavailable(format!("{}/{}: {e}", printable(&path), printable(&name)))
            }
            ListError::TooBig(n) => WitError::Other(format!(
                "{}: {n} items and more do not fit in the plugin's memory cap; raise --memory",
                printable(&path)
            )),
        }))
    }

    async fn read_link(&mut self, path: String) -> wasmtime::Result<Result<String, WitError>> {
        let real = match self.resolve_in_grants(&path) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        match std::fs::read_link(real) {
            Ok(t) => match t.into_os_string().into_string() {
                Ok(s) => Ok(Ok(s)),
                Err(_) => {
                    self.count_issue(coffer_repo::SourceIssue::LeftOut);
                    Ok(Err(WitError::Other(format!("{}: the link target is not UTF-8", printable(&path)))))
                }
            },
            Err(e) => {
                self.count_issue(if e.kind() == std::io::ErrorKind::NotFound {
                    coffer_repo::SourceIssue::Vanished
                } else {
                    coffer_repo::SourceIssue::LeftOut
                });
                Ok(Err(WitError::Unavailable(format!("{}: {e}", printable(&path)))))
            }
        }
    }

    async fn symlink(&mut self, path: String, target: String) -> wasmtime::Result<Result<(), WitError>> {
        if target.is_empty() || target.contains('\0') {
            return Ok(Err(WitError::Other(format!(
                "{}: a symlink target must be non-empty text without NUL",
                printable(&path)
            ))));
        }
        let parent = match self.resolve_in_target(&path, true) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        match std::os::unix::fs::symlink(&target, &parent) {
            Ok(()) => Ok(Ok(())),
            Err(e) => Ok(Err(WitError::Other(format!("{}: {e}", printable(&path))))),
        }
    }

    async fn set_metadata(
        &mut self,
        path: String,
        mode: u32,
        mtime: Timestamp,
    ) -> wasmtime::Result<Result<(), WitError>> {
        use std::os::unix::fs::PermissionsExt;
        // `.` is the target directory itself (a database's data directory
        // must be private, for instance).
        let resolved = match (&self.job.restore, path.as_str()) {
            (Some(r), ".") => Ok(r.root.clone()),
            _ => self.resolve_in_target(&path, false),
        };
        let cur = match resolved {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let md = match std::fs::symlink_metadata(&cur) {
            Ok(md) => md,
            Err(e) => return Ok(Err(WitError::Unavailable(format!("{}: {e}", printable(&path))))),
        };
        let ft = filetime::FileTime::from_unix_time(mtime.seconds, mtime.nanoseconds.min(999_999_999));
        if md.file_type().is_symlink() {
            if let Err(e) = filetime::set_symlink_file_times(&cur, ft, ft) {
                return Ok(Err(WitError::Other(format!("{}: {e}", printable(&path)))));
            }
            return Ok(Ok(()));
        }
        // Special bits only where the snapshot recorded them for an entry
        // of the same kind.
        use std::os::unix::fs::MetadataExt;
        let recorded = self
            .job
            .restore
            .as_ref()
            .and_then(|r| r.snapshot.entry(&path))
            .filter(|e| (e.kind == RepoKind::Dir) == md.is_dir())
            .map(|e| e.mode)
            .unwrap_or(0);
        let granted = granted_mode(mode, recorded, md.uid());
        if let Err(e) = std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(granted)) {
            return Ok(Err(WitError::Other(format!("{}: {e}", printable(&path)))));
        }
        if let Err(e) = filetime::set_file_mtime(&cur, ft) {
            return Ok(Err(WitError::Other(format!("{}: {e}", printable(&path)))));
        }
        if md.is_file()
            && let Some(settler) = &mut self.job.settler
        {
            settler.finished(cur, md.len());
        }
        Ok(Ok(()))
    }
}

impl sink::Host for PluginState {}

impl sink::HostSnapshotSink for PluginState {
    async fn add_entry(
        &mut self,
        _sink: Resource<SinkSlot>,
        meta: EntryMeta,
    ) -> wasmtime::Result<Result<Resource<EntryWriterSlot>, WitError>> {
        if meta.mtime.nanoseconds >= 1_000_000_000 {
            return Err(self.fault(Fault::Contract(format!(
                "entry `{}`: mtime nanoseconds {} is not below one second",
                printable(&meta.path),
                meta.mtime.nanoseconds
            ))));
        }
        if meta.path.len() > MAX_PATH || meta.link_target.as_ref().is_some_and(|t| t.len() > MAX_PATH) {
            return Err(
                self.fault(Fault::Contract(format!("entry paths and link targets are at most {MAX_PATH} bytes")))
            );
        }
        self.job.entries += 1;
        if self.job.entries > MAX_ENTRIES {
            return Err(self.fault(Fault::Contract(format!("more than {MAX_ENTRIES} entries"))));
        }
        if meta.kind != EntryKind::Symlink && meta.link_target.is_some() {
            return Err(self.fault(Fault::Contract(format!(
                "entry `{}`: only symlinks have a link target",
                printable(&meta.path)
            ))));
        }
        let is_file = meta.kind == EntryKind::File;
        if is_file {
            self.open_handle()?;
        }
        let path = meta.path.clone();
        let repo_meta = RepoMeta {
            path: meta.path,
            kind: to_repo_kind(meta.kind),
            mode: meta.mode,
            mtime: meta.mtime.seconds,
            mtime_nsec: meta.mtime.nanoseconds,
            target: meta.link_target,
        };
        let writer = match self.writer()?.add_entry(repo_meta) {
            Ok(w) => w,
            Err(e) => return Err(self.repo_fault(e)),
        };
        let slot = if is_file {
            self.job.open_writers += 1;
            EntryWriterSlot { writer: Some(ContentWriter::Entry(writer)), path }
        } else {
            // Directories and symlinks are complete at once.
            if let Err(e) = writer.finish().await {
                return Err(self.repo_fault(e));
            }
            EntryWriterSlot { writer: None, path }
        };
        Ok(Ok(self.table.push(slot)?))
    }

    async fn reuse_entry(
        &mut self,
        _sink: Resource<SinkSlot>,
        path: String,
    ) -> wasmtime::Result<Result<Digest, WitError>> {
        match self.writer()?.reuse_entry(&path) {
            Ok(d) => Ok(Ok(Digest { size: d.size, blake3: d.blake3.to_hex() })),
            Err(coffer_repo::Error::CannotReuse { path, reason }) => {
                Ok(Err(WitError::Other(format!("cannot reuse {}: {reason}", printable(&path)))))
            }
            Err(e) => Err(self.repo_fault(e)),
        }
    }

    async fn reuse_unchanged(
        &mut self,
        _sink: Resource<SinkSlot>,
        path: String,
        size: u64,
        mtime: Timestamp,
        mode: u32,
    ) -> wasmtime::Result<bool> {
        match self.writer()?.reuse_unchanged(&path, size, (mtime.seconds, mtime.nanoseconds), mode) {
            Ok(kept) => Ok(kept),
            Err(e) => Err(self.repo_fault(e)),
        }
    }

    async fn add_files(
        &mut self,
        _sink: Resource<SinkSlot>,
        files: Vec<sink::FileSource>,
    ) -> wasmtime::Result<Result<Vec<sink::FileOutcome>, WitError>> {
        use crate::add_files::{Failure, Job, MAX_FILES, Outcome, run};
        if files.len() > MAX_FILES {
            return Ok(Err(WitError::Other(format!(
                "add-files takes at most {MAX_FILES} files a call, not {}",
                files.len()
            ))));
        }
        let mut jobs = Vec::with_capacity(files.len());
        for f in files {
            if f.path.len() > MAX_PATH || f.source.len() > MAX_PATH {
                return Err(
                    self.fault(Fault::Contract(format!("entry paths and sources are at most {MAX_PATH} bytes")))
                );
            }
            if let Err(reason) = coffer_repo::repofile::tree::validate_path(&f.path) {
                return Err(self.fault(Fault::Contract(format!("entry `{}`: {reason}", printable(&f.path)))));
            }
            self.job.entries += 1;
            if self.job.entries > MAX_ENTRIES {
                return Err(self.fault(Fault::Contract(format!("more than {MAX_ENTRIES} entries"))));
            }
            let source = PathBuf::from(&f.source);
            let grant = match self.job.grants.dir_covering(&source) {
                Some((root, _)) if root != source => root.to_path_buf(),
                _ => {
                    return Ok(Err(WitError::AccessDenied(format!(
                        "{} is not a file inside a granted directory",
                        printable(&f.source)
                    ))));
                }
            };
            jobs.push(Job { path: f.path, source, grant });
        }
        let budget = self.job.limits.output_bytes.saturating_sub(self.job.output_used);
        let sources: Vec<PathBuf> = jobs.iter().map(|j| j.source.clone()).collect();
        let adder = self.writer()?.adder();
        let outcome = run(adder, Arc::clone(&self.job.grants), jobs, self.job.cancel.clone(), budget).await;
        match outcome {
            Ok(added) => {
                self.job.output_used += added.bytes;
                let mut outcomes = Vec::with_capacity(added.outcomes.len());
                for (o, source) in added.outcomes.into_iter().zip(sources) {
                    outcomes.push(match o {
                        Outcome::Added(d) => {
                            sink::FileOutcome::Added(Digest { size: d.size, blake3: d.blake3.to_hex() })
                        }
                        Outcome::ChangedWhileRead(d) => {
                            self.count_issue(coffer_repo::SourceIssue::ChangedWhileRead);
                            self.job.observer.log(
                                &self.job.plugin,
                                LogLevel::Warn,
                                &format!(
                                    "{} changed while it was read (its size or modification time moved); the \
                                     snapshot holds what was read, which may mix old and new content",
                                    printable(&source.to_string_lossy())
                                ),
                            );
                            sink::FileOutcome::Added(Digest { size: d.size, blake3: d.blake3.to_hex() })
                        }
                        Outcome::Gone => {
                            self.count_issue(coffer_repo::SourceIssue::Vanished);
                            sink::FileOutcome::Gone
                        }
                        Outcome::Unreadable(why) => {
                            self.count_issue(coffer_repo::SourceIssue::LeftOut);
                            sink::FileOutcome::Unreadable(why)
                        }
                    });
                }
                Ok(Ok(outcomes))
            }
            Err(Failure::Plugin(e)) => Ok(Err(e)),
            Err(Failure::Repo(e)) => Err(self.repo_fault(e)),
            Err(Failure::OutputLimit) => {
                let limit = self.job.limits.output_bytes;
                Err(self.fault(Fault::OutputLimit { limit }))
            }
        }
    }

    async fn set_attribute(
        &mut self,
        _sink: Resource<SinkSlot>,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        if key.is_empty() || key.len() > MAX_ATTR_KEY || value.len() > MAX_ATTR_VALUE {
            return Err(self.fault(Fault::Contract(format!(
                "attribute `{}`: keys are 1 to {MAX_ATTR_KEY} bytes and values at most {MAX_ATTR_VALUE} bytes",
                printable(&key.chars().take(64).collect::<String>())
            ))));
        }
        self.job.attributes += 1;
        if self.job.attributes > MAX_ATTRS {
            return Err(self.fault(Fault::Contract(format!("more than {MAX_ATTRS} attribute writes"))));
        }
        self.writer()?.set_attribute(&key, &value);
        Ok(Ok(()))
    }

    async fn drop(&mut self, rep: Resource<SinkSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl sink::HostEntryWriter for PluginState {
    async fn write(
        &mut self,
        this: Resource<EntryWriterSlot>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.job.output_used += data.len() as u64;
        if self.job.output_used > self.job.limits.output_bytes {
            let limit = self.job.limits.output_bytes;
            return Err(self.fault(Fault::OutputLimit { limit }));
        }
        let slot = self.table.get_mut(&this)?;
        let r = match slot.writer.as_mut() {
            None => {
                let path = slot.path.clone();
                return Ok(Err(WitError::Other(format!(
                    "{}: directories and symlinks have no content",
                    printable(&path)
                ))));
            }
            Some(ContentWriter::Entry(w)) => w.write(&data).await,
            Some(ContentWriter::Item(w)) => w.write(&data).await,
        };
        match r {
            Ok(()) => Ok(Ok(())),
            Err(e) => Err(self.repo_fault(e)),
        }
    }

    async fn finish(&mut self, this: Resource<EntryWriterSlot>) -> wasmtime::Result<Result<Digest, WitError>> {
        let rep = this.rep();
        let slot = self.table.delete(this)?;
        match slot.writer {
            None => Ok(Ok(Digest { size: 0, blake3: coffer_repo::Id::default().to_hex() })),
            Some(ContentWriter::Entry(w)) => {
                self.job.open_writers -= 1;
                match w.finish().await {
                    Ok(d) => Ok(Ok(Digest { size: d.size, blake3: d.blake3.to_hex() })),
                    Err(e) => Err(self.repo_fault(e)),
                }
            }
            Some(ContentWriter::Item(w)) => {
                self.job.open_writers -= 1;
                self.finish_item(w, rep).await
            }
        }
    }

    async fn drop(&mut self, this: Resource<EntryWriterSlot>) -> wasmtime::Result<()> {
        let rep = this.rep();
        let slot = self.table.delete(this)?;
        match slot.writer {
            None => {}
            Some(ContentWriter::Entry(_)) => {
                self.job.open_writers -= 1;
                // Dropping the writer marks the snapshot failed in
                // coffer-repo. No trap: a plugin abandons an entry when
                // reading its source failed, and the error it then returns
                // is the one to show.
                if self.job.abandoned.is_none() {
                    self.job.abandoned = Some(printable(&slot.path));
                }
            }
            Some(ContentWriter::Item(_)) => {
                // An abandoned item is simply not stored (its chunks are
                // garbage for prune); the stream job goes on.
                self.job.open_writers -= 1;
                if let Some(job) = self.job.streams.as_mut() {
                    job.pending.remove(&rep);
                }
            }
        }
        Ok(())
    }
}

impl reader::Host for PluginState {}

impl reader::HostSnapshotReader for PluginState {
    async fn id(&mut self, this: Resource<ReaderSlot>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.snapshot.id.to_hex())
    }

    async fn time(&mut self, this: Resource<ReaderSlot>) -> wasmtime::Result<Timestamp> {
        let t = self.table.get(&this)?.snapshot.manifest.time;
        Ok(Timestamp { seconds: t.timestamp(), nanoseconds: t.timestamp_subsec_nanos().min(999_999_999) })
    }

    async fn attributes(&mut self, this: Resource<ReaderSlot>) -> wasmtime::Result<Vec<(String, String)>> {
        let s = &self.table.get(&this)?.snapshot;
        Ok(s.manifest.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn entry_count(&mut self, this: Resource<ReaderSlot>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.snapshot.entries.len() as u64)
    }

    async fn entries(
        &mut self,
        this: Resource<ReaderSlot>,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<EntryInfo>> {
        let s = &self.table.get(&this)?.snapshot;
        let start = match after {
            None => 0,
            Some(a) => s.entries.partition_point(|e| e.path.as_str() <= a.as_str()),
        };
        let n = limit.min(MAX_PAGE) as usize;
        Ok(s.entries[start..].iter().take(n).map(entry_info).collect())
    }

    async fn entry(&mut self, this: Resource<ReaderSlot>, path: String) -> wasmtime::Result<Option<EntryInfo>> {
        Ok(self.table.get(&this)?.snapshot.entry(&path).map(entry_info))
    }

    async fn open(
        &mut self,
        this: Resource<ReaderSlot>,
        path: String,
    ) -> wasmtime::Result<Result<Resource<EntryReaderSlot>, WitError>> {
        let snapshot = Arc::clone(&self.table.get(&this)?.snapshot);
        let entry = match file_entry(&snapshot, &path) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        self.open_handle()?;
        let Some(repo) = &self.job.repo else {
            return Err(self.fault(Fault::Contract("no repository for this reader".into())));
        };
        let reader = repo.entry_reader_owned(entry);
        self.job.open_readers += 1;
        Ok(Ok(self.table.push(EntryReaderSlot { reader: ContentReader::Entry(reader) })?))
    }

    async fn restore_files(
        &mut self,
        this: Resource<ReaderSlot>,
        paths: Vec<String>,
    ) -> wasmtime::Result<Result<u64, WitError>> {
        use crate::restore_files::{Dest, Job, MAX_PATHS, open_target, run};
        if paths.len() > MAX_PATHS {
            return Ok(Err(WitError::Other(format!(
                "restore-files takes at most {MAX_PATHS} paths a call, not {}",
                paths.len()
            ))));
        }
        let snapshot = Arc::clone(&self.table.get(&this)?.snapshot);
        let root = match &self.job.restore {
            Some(r) if Arc::ptr_eq(&r.snapshot, &snapshot) => r.root.clone(),
            Some(_) => {
                return Ok(Err(WitError::AccessDenied(
                    "restore-files writes only entries of the snapshot being restored".into(),
                )));
            }
            None => {
                return Ok(Err(WitError::AccessDenied("this works only during a restore into a directory".into())));
            }
        };
        let Some(repo) = self.job.repo.clone() else {
            return Err(self.fault(Fault::Contract("no repository for this reader".into())));
        };
        let target = open_target(&root);
        let mut jobs = Vec::with_capacity(paths.len());
        for p in paths {
            let entry = match file_entry(&snapshot, &p) {
                Ok(e) => e,
                Err(e) => return Ok(Err(e)),
            };
            let (dest, path) = match &target {
                Some(fd) => {
                    if let Err(reason) = coffer_repo::repofile::tree::validate_path(&p) {
                        return Ok(Err(WitError::AccessDenied(format!("{}: {reason}", printable(&p)))));
                    }
                    (Dest::Beneath(Arc::clone(fd), p.clone()), root.join(&p))
                }
                None => match self.resolve_in_target(&p, false) {
                    Ok(path) => (Dest::Checked(path.clone()), path),
                    Err(e) => return Ok(Err(e)),
                },
            };
            jobs.push(Job { entry: entry.clone(), dest, path });
        }
        match run(repo, jobs, self.job.cancel.clone()).await {
            Ok(files) => {
                let bytes = files.iter().map(|(_, len)| len).sum();
                if let Some(settler) = &mut self.job.settler {
                    for (path, len) in files {
                        settler.finished(path, len);
                    }
                }
                Ok(Ok(bytes))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    async fn drop(&mut self, rep: Resource<ReaderSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl reader::HostEntryReader for PluginState {
    async fn read(&mut self, this: Resource<EntryReaderSlot>, max: u32) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let n = max.min(MAX_READ) as usize;
        let slot = self.table.get_mut(&this)?;
        let mut buf = vec![0u8; n];
        let mut filled = 0;
        // Fill the buffer across chunk boundaries: fewer, bigger calls.
        while filled < n {
            match slot.reader.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) => {
                    return Ok(Err(content_error(e)));
                }
            }
        }
        buf.truncate(filled);
        Ok(Ok(buf))
    }

    async fn drop(&mut self, rep: Resource<EntryReaderSlot>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.job.open_readers = self.job.open_readers.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::granted_mode;

    #[test]
    fn special_bits_only_where_recorded_and_never_setuid_for_root() {
        // Plain bits pass; special bits need the snapshot's record.
        assert_eq!(granted_mode(0o4755, 0o0755, 1000), 0o755);
        assert_eq!(granted_mode(0o4755, 0o4755, 1000), 0o4755);
        assert_eq!(granted_mode(0o2750, 0o6750, 1000), 0o2750);
        // Owned by root: setuid and setgid dropped, sticky kept.
        assert_eq!(granted_mode(0o6755, 0o6755, 0), 0o755);
        assert_eq!(granted_mode(0o1777, 0o1777, 0), 0o1777);
        // File-type bits never pass.
        assert_eq!(granted_mode(0o100644, 0o100644, 1000), 0o644);
    }
}
