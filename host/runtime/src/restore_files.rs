//! `snapshot-reader.restore-files`: during a restore into a directory, the
//! host writes file entries itself, several at once, so their content never
//! crosses into the plugin's memory and back out through WASI writes.
//!
//! The plugin still decides what is restored and in what order (it creates
//! the directories and hands over batches of files); the host only writes
//! entries of the snapshot being restored, beneath the restore target, with
//! the same refusals as `set-metadata`: no path out of the target, no
//! symlink on the way or at the end.

use std::path::PathBuf;
use std::sync::Arc;

use coffer_repo::Repository;
use coffer_repo::repofile::tree::Entry;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::bindings::types::Error as WitError;
use crate::host::{content_error, granted_mode, printable};
use crate::job::CancelToken;
use crate::pool::Stop;

/// Paths per call, at most.
pub(crate) const MAX_PATHS: usize = 10_000;
/// Files written at once: two per core, at least 4, at most 16 (each also
/// fetches a few blobs ahead). More did not help on two cores.
fn files_at_once() -> usize {
    std::thread::available_parallelism().map_or(4, |n| 2 * n.get()).clamp(4, 16)
}

/// Where one file goes.
pub(crate) enum Dest {
    /// `rel` opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
    /// from the restore target's descriptor.
    Beneath(Arc<OwnedFd>, String),
    /// A path whose parents were checked one by one (kernels without
    /// `openat2`); the file itself is opened with `O_NOFOLLOW`.
    Checked(PathBuf),
}

/// One file of a batch.
pub(crate) struct Job {
    pub(crate) entry: Entry,
    pub(crate) dest: Dest,
    /// The file's host path (for errors and the settler).
    pub(crate) path: PathBuf,
}

/// The restore target opened for `openat2` lookups beneath it, or `None`
/// where the kernel has no `openat2` (before 5.6, or filtered out).
pub(crate) fn open_target(root: &std::path::Path) -> Option<Arc<OwnedFd>> {
    let fd =
        rustix::fs::openat(rustix::fs::CWD, root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .ok()?;
    rustix::fs::openat2(&fd, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), beneath()).ok()?;
    Some(Arc::new(fd))
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Writes every file of `jobs`, a few at a time on threads of this call
/// ([`crate::pool`]), and returns each file's path and length. The first
/// failure stops the rest and is returned; so is a cancellation.
pub(crate) async fn run(
    repo: Repository,
    jobs: Vec<Job>,
    cancel: CancelToken,
) -> Result<Vec<(PathBuf, u64)>, WitError> {
    let rt = tokio::runtime::Handle::current();
    crate::pool::run(
        "coffer-write",
        files_at_once(),
        jobs,
        cancel,
        || WitError::Cancelled,
        WitError::Other,
        move |_, job, stop| write_one(&rt, &repo, job, stop),
    )
    .await
}

fn write_one(
    rt: &tokio::runtime::Handle,
    repo: &Repository,
    job: Job,
    stop: &Stop,
) -> Result<(PathBuf, u64), WitError> {
    let shown = || printable(&job.path.to_string_lossy());
    let io = |e: std::io::Error| WitError::Other(format!("{}: {e}", shown()));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    let fd = match &job.dest {
        Dest::Beneath(root, rel) => rustix::fs::openat2(&**root, rel.as_str(), flags, mode, beneath()),
        Dest::Checked(path) => rustix::fs::openat(rustix::fs::CWD, path, flags, mode),
    }
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => WitError::AccessDenied(format!(
            "{}: the path passes through or ends in a symlink, or leaves the restore target",
            shown()
        )),
        other => io(other.into()),
    })?;
    let mut file = std::fs::File::from(fd);
    let len = repo
        .write_entry_blocking(rt, &job.entry, &mut file, &job.path, || stop.is_set())
        .map_err(|e| if stop.is_set() { WitError::Cancelled } else { content_error(e) })?;
    // The mode as `set-metadata` grants it.
    let owner = rustix::fs::fstat(&file).map_err(|e| io(e.into()))?.st_uid;
    let mode = granted_mode(job.entry.mode, job.entry.mode, owner);
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| io(e.into()))?;
    let mtime = filetime::FileTime::from_unix_time(job.entry.mtime, job.entry.mtime_nsec.min(999_999_999));
    filetime::set_file_handle_times(&file, None, Some(mtime)).map_err(io)?;
    Ok((job.path, len))
}
