//! `snapshot-sink.add-files`: during a snapshot, the host reads regular
//! files from the granted directories itself, several at once, so their
//! content never crosses into the plugin's memory and back out through
//! `entry-writer.write`.
//!
//! The plugin still decides what is backed up (it walks the tree and hands
//! over batches of files); the host only reads files inside the grants,
//! opened beneath the grant's root so no symlink on the way leads out of
//! it, and never through a symlink at the file itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use coffer_repo::{EntryAdder, EntryDigest, EntryKind, EntryMeta};
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::bindings::types::Error as WitError;
use crate::grants::GrantSet;
use crate::host::real_path_in_grants;
use crate::job::CancelToken;
use crate::pool::Stop;

/// Files per call, at most.
pub(crate) const MAX_FILES: usize = 10_000;
/// Read buffer of each reader.
const READ_BUF: usize = 1 << 20;

/// Files read at once: one per core, at least 2 (one reads while the other
/// opens), at most 8. Each reads, chunks and hashes, and hands new chunks
/// to the blob saver's threads, or compresses and seals them itself while
/// those are all busy.
fn files_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// One file of a batch.
pub(crate) struct Job {
    /// The entry's path in the snapshot.
    pub(crate) path: String,
    /// The file's host path, as the plugin named it.
    pub(crate) source: PathBuf,
    /// The root of the grant covering `source`.
    pub(crate) grant: PathBuf,
}

/// Why a batch stopped.
pub(crate) enum Failure {
    /// The plugin's business: a source it may not read, one that cannot
    /// be read, a cancellation.
    Plugin(WitError),
    /// The snapshot failed underneath (storage), or the plugin broke the
    /// contract (an invalid or repeated entry path).
    Repo(coffer_repo::Error),
    /// The bytes read would pass the job's output limit.
    OutputLimit,
}

/// What became of one file.
pub(crate) enum Outcome {
    /// Added, with its size and BLAKE3.
    Added(EntryDigest),
    /// Added, but its size or modification time changed while it was read:
    /// the snapshot holds what was read.
    ChangedWhileRead(EntryDigest),
    /// Gone, or no longer a regular file.
    Gone,
    /// It could not be opened, and why.
    Unreadable(String),
}

/// What a finished batch gives back: each file's outcome in order, and the
/// bytes read.
pub(crate) struct Added {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) bytes: u64,
}

/// Reads every file of `jobs` into the snapshot, a few at a time, on
/// threads of this call ([`crate::pool`]): each takes the next file, opens
/// it, adds its entry and reads it. At most `budget` bytes are read; the
/// first failure stops the rest (files being read are abandoned, which
/// fails the snapshot) and is returned, and so is a cancellation.
pub(crate) async fn run(
    adder: EntryAdder,
    grants: Arc<GrantSet>,
    jobs: Vec<Job>,
    cancel: CancelToken,
    budget: u64,
) -> Result<Added, Failure> {
    let mut roots = HashMap::new();
    for job in &jobs {
        roots.entry(job.grant.clone()).or_insert_with(|| open_root(&job.grant));
    }
    let ctx = Reader { adder, grants, roots, budget: AtomicU64::new(budget) };
    let outcomes = crate::pool::run(
        "coffer-read",
        files_at_once(),
        jobs,
        cancel,
        || Failure::Plugin(WitError::Cancelled),
        |why| Failure::Plugin(WitError::Other(why)),
        move |buf, job, stop| ctx.add(buf, job, stop),
    )
    .await?;
    let bytes = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Added(d) | Outcome::ChangedWhileRead(d) => d.size,
            _ => 0,
        })
        .sum();
    Ok(Added { outcomes, bytes })
}

/// What the reader threads of one call share.
struct Reader {
    adder: EntryAdder,
    grants: Arc<GrantSet>,
    /// Each grant root of the batch, opened once.
    roots: HashMap<PathBuf, Option<OwnedFd>>,
    /// Bytes that may still be read.
    budget: AtomicU64,
}

impl Reader {
    /// Opens one file, adds its entry and reads it.
    fn add(&self, buf: &mut Vec<u8>, job: Job, stop: &Stop) -> Result<Outcome, Failure> {
        let root = self.roots.get(&job.grant).and_then(Option::as_ref);
        let (mut file, st) = match open_source(&self.grants, root, &job).map_err(Failure::Plugin)? {
            Opened::File(file, st) => (file, st),
            Opened::Not(outcome) => return Ok(outcome),
        };
        buf.resize(READ_BUF, 0);
        let meta = EntryMeta {
            path: job.path,
            kind: EntryKind::File,
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
            target: None,
        };
        let mut entry = self.adder.add_entry(meta).map_err(Failure::Repo)?;
        loop {
            if stop.is_set() {
                return Err(Failure::Plugin(WitError::Cancelled));
            }
            let n = match coffer_repo::commands::dir::read_full(&mut file, buf) {
                Ok(n) => n,
                Err(e) => {
                    // An I/O error halfway (a bad sector, a network file
                    // system gone): the file is left out, as one that
                    // cannot be opened is, and the snapshot goes on.
                    let read = entry.size();
                    entry.discard();
                    return Ok(Outcome::Unreadable(format!("read failed after {read} bytes: {e}")));
                }
            };
            if n == 0 {
                break;
            }
            let left = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n as u64));
            if left.is_err() {
                return Err(Failure::OutputLimit);
            }
            entry.write_here(&buf[..n]).map_err(Failure::Repo)?;
            if n < buf.len() {
                break;
            }
        }
        let digest = entry.finish_here().map_err(Failure::Repo)?;
        // Size and mtime again: a file written to while it was read holds
        // neither its old nor its new content in the snapshot, which the
        // operator is told. (A file that cannot be stat'ed now is taken as
        // changed.)
        let unchanged = rustix::fs::fstat(&file).is_ok_and(|now| {
            now.st_size == st.st_size
                && now.st_mtime == st.st_mtime
                && now.st_mtime_nsec == st.st_mtime_nsec
                && u64::try_from(st.st_size).ok() == Some(digest.size)
        });
        Ok(if unchanged { Outcome::Added(digest) } else { Outcome::ChangedWhileRead(digest) })
    }
}

/// The grant's root opened for `openat2` lookups beneath it; `None` if it
/// cannot be opened (every file under it then takes the checked path).
fn open_root(root: &Path) -> Option<OwnedFd> {
    rustix::fs::openat(
        rustix::fs::CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// A source opened, or why not.
enum Opened {
    File(std::fs::File, rustix::fs::Stat),
    Not(Outcome),
}

/// Opens a source for reading, with its `fstat`. Fails only where the
/// source is outside the grants.
///
/// First with one `openat2(RESOLVE_BENEATH)` from the grant's root, so no
/// symlink on the way can lead out of that grant. Where that is refused
/// (a symlink into another grant, a kernel without `openat2`) the parent is
/// resolved as the OS would and checked to be inside a grant, as for every
/// other path a plugin names. The file itself is opened with `O_NOFOLLOW`
/// (a symlink there is not followed) and `O_NONBLOCK` (a FIFO that replaced
/// the file does not hang the open).
fn open_source(grants: &GrantSet, root: Option<&OwnedFd>, job: &Job) -> Result<Opened, WitError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let beneath = root.zip(job.source.strip_prefix(&job.grant).ok()).and_then(|(fd, rel)| {
        match rustix::fs::openat2(fd, rel, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS) {
            // Leaves the grant through a symlink, or no openat2 here.
            Err(Errno::XDEV | Errno::NOSYS | Errno::PERM | Errno::INVAL | Errno::AGAIN) => None,
            other => Some(other),
        }
    });
    let opened = match beneath {
        Some(r) => r,
        None => match real_path_in_grants(grants, &job.source) {
            Ok((real, _)) => rustix::fs::openat(rustix::fs::CWD, &real, flags, Mode::empty()),
            Err(None) => return Ok(Opened::Not(Outcome::Gone)),
            Err(Some(e)) => return Err(e),
        },
    };
    let why = |e: Errno| Opened::Not(Outcome::Unreadable(std::io::Error::from(e).to_string()));
    let fd = match opened {
        Ok(fd) => fd,
        // Removed, or replaced by a symlink (not followed) or a device.
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::NXIO) => return Ok(Opened::Not(Outcome::Gone)),
        Err(e) => return Ok(why(e)),
    };
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return Ok(why(e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(Opened::Not(Outcome::Gone));
    }
    Ok(Opened::File(std::fs::File::from(fd), st))
}
