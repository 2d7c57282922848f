//! Host-side directory backup and restore over the snapshot API: used by the
//! demo, the benchmarks and restore tests. (Sandboxed sources use plugins.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};

use crate::commands::snapshot::{EntryMeta, SnapshotOptions};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repofile::tree::{Entry, EntryKind, validate_path};
use crate::repository::Repository;

/// Read buffer for files.
const READ_BUF: usize = 1 << 20;
/// Files restored concurrently (each also reads a few blobs ahead).
const RESTORE_FILES_AT_ONCE: usize = 8;

fn walk(root: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let p = ent.path();
            let md = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.push((rel, p, md));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Runs blocking file I/O on a runtime worker without starving other tasks
/// (falls back to a plain call on a current-thread runtime).
fn block_in_place<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Fills `buf` as far as the file allows; returns the bytes read (short only at the end).
pub fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Repository {
    /// Backs up a directory tree. With a parent, files whose size, mtime
    /// and permission bits are unchanged are reused without being read.
    pub async fn backup_dir(&self, root: &Path, mut opts: SnapshotOptions) -> Result<Id> {
        if opts.source.is_empty() {
            opts.source = root.display().to_string();
        }
        let w = self.start_snapshot(opts).await?;
        let result = async {
            let mut buf = vec![0u8; READ_BUF];
            for (rel, path, md) in walk(root)? {
                let ft = md.file_type();
                let kind = if ft.is_dir() {
                    EntryKind::Dir
                } else if ft.is_symlink() {
                    EntryKind::Symlink
                } else if ft.is_file() {
                    EntryKind::File
                } else {
                    tracing::warn!(path = %path.display(), "skipping special file");
                    continue;
                };
                let mode = md.permissions().mode() & 0o7777;
                if kind == EntryKind::File
                    && w.reuse_unchanged(&rel, md.len(), (md.mtime(), md.mtime_nsec() as u32), mode)?
                {
                    continue;
                }
                let target = if kind == EntryKind::Symlink {
                    Some(std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?.to_string_lossy().into_owned())
                } else {
                    None
                };
                let meta =
                    EntryMeta { path: rel, kind, mode, mtime: md.mtime(), mtime_nsec: md.mtime_nsec() as u32, target };
                let mut ew = w.add_entry(meta)?;
                if kind == EntryKind::File {
                    // Plain blocking reads on this worker thread: a thread
                    // hop per read (tokio::fs) costs more than a small file.
                    let mut f = block_in_place(|| std::fs::File::open(&path)).map_err(|e| Error::io(&path, e))?;
                    loop {
                        let n = block_in_place(|| read_full(&mut f, &mut buf)).map_err(|e| Error::io(&path, e))?;
                        if n == 0 {
                            break;
                        }
                        ew.write(&buf[..n]).await?;
                        if n < buf.len() {
                            break;
                        }
                    }
                }
                ew.finish().await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        match result {
            Ok(()) => w.commit().await,
            Err(e) => {
                w.abort().await;
                Err(e)
            }
        }
    }

    /// Restores a snapshot into `target` (which must be empty or missing),
    /// with modes and mtimes. Returns the number of bytes written.
    pub async fn restore_dir(&self, snapshot: &Id, target: &Path) -> Result<u64> {
        if target.exists() && std::fs::read_dir(target).map_err(|e| Error::io(target, e))?.next().is_some() {
            return Err(Error::Invalid(format!("restore target {} is not empty", target.display())));
        }
        std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
        let snap = self.open_snapshot(snapshot).await?;
        for e in &snap.entries {
            validate_path(&e.path).map_err(|reason| Error::InvalidEntry { path: e.path.clone(), reason })?;
        }
        // Directories first, then files (several at once), then symlinks:
        // creating links last means no file is ever written through one.
        for e in snap.entries.iter().filter(|e| e.kind == EntryKind::Dir) {
            let dest = target.join(&e.path);
            std::fs::create_dir_all(&dest).map_err(|err| Error::io(&dest, err))?;
        }
        let files = snap.entries.iter().filter(|e| e.kind == EntryKind::File);
        let sizes: Vec<u64> = futures::stream::iter(files)
            .map(|e| self.restore_file(e, target.join(&e.path)))
            .buffer_unordered(RESTORE_FILES_AT_ONCE)
            .try_collect()
            .await?;
        let written = sizes.iter().sum();
        for e in snap.entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
            let dest = target.join(&e.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
            }
            std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), &dest)
                .map_err(|err| Error::io(&dest, err))?;
        }
        // Modes and mtimes last, deepest first, so writing children does not
        // disturb a directory's mtime.
        for e in snap.entries.iter().rev() {
            let dest = target.join(&e.path);
            let mtime = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
            if e.kind == EntryKind::Symlink {
                filetime::set_symlink_file_times(&dest, mtime, mtime).map_err(|err| Error::io(&dest, err))?;
                continue;
            }
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(|err| Error::io(&dest, err))?;
            filetime::set_file_times(&dest, mtime, mtime).map_err(|err| Error::io(&dest, err))?;
        }
        Ok(written)
    }

    async fn restore_file(&self, e: &Entry, dest: PathBuf) -> Result<u64> {
        if let Some(parent) = dest.parent() {
            block_in_place(|| std::fs::create_dir_all(parent)).map_err(|err| Error::io(parent, err))?;
        }
        let mut f = block_in_place(|| std::fs::File::create(&dest)).map_err(|err| Error::io(&dest, err))?;
        self.write_entry(e, &mut f, &dest).await
    }

    /// As [`Self::write_entry`], for a thread of the caller's own (not a
    /// thread of the runtime `rt`): blobs are fetched a few ahead through
    /// `rt`, then decoded and written on this thread, so no blob costs a
    /// hand-off between threads beyond the fetch. Stops with
    /// [`Error::Aborted`] once `stop()` is true (checked between blobs).
    /// Blocks of zeros are left as holes, as in [`Self::write_entry`].
    pub fn write_entry_blocking(
        &self,
        rt: &tokio::runtime::Handle,
        entry: &Entry,
        file: &mut std::fs::File,
        dest: &Path,
        stop: impl Fn() -> bool,
    ) -> Result<u64> {
        let mut blobs = futures::stream::iter(entry.content.iter())
            .map(|id| self.load_blob_here(crate::blob::BlobKind::Data, id))
            .buffered(crate::commands::read::READ_AHEAD);
        let mut out = HoleWriter::new(file).map_err(|err| Error::io(dest, err))?;
        let mut written = 0;
        while let Some(chunk) = rt.block_on(blobs.next()) {
            if stop() {
                return Err(Error::Aborted(format!("writing {} was stopped", dest.display())));
            }
            let chunk = chunk?;
            out.put(&chunk).map_err(|err| Error::io(dest, err))?;
            written += chunk.len() as u64;
        }
        out.finish().map_err(|err| Error::io(dest, err))?;
        check_written(entry, written)
    }

    /// Writes a file entry's content to `file` from its current position,
    /// reading a few blobs ahead, and returns the bytes written (`dest`
    /// names the file in errors). Content whose length differs from the
    /// size the tree records is an error: the snapshot is damaged.
    ///
    /// `file` must be a regular file with nothing at or after its position
    /// (a new or truncated one): blocks of zeros are not written but left
    /// as holes, so a sparse file comes back sparse (and a run of zeros in
    /// any file takes no disk blocks).
    pub async fn write_entry(&self, entry: &Entry, file: &mut std::fs::File, dest: &Path) -> Result<u64> {
        let mut r = self.entry_reader(entry);
        let mut out = block_in_place(|| HoleWriter::new(file)).map_err(|err| Error::io(dest, err))?;
        let mut written = 0;
        while let Some(chunk) = r.next_chunk().await? {
            block_in_place(|| out.put(&chunk)).map_err(|err| Error::io(dest, err))?;
            written += chunk.len() as u64;
        }
        block_in_place(|| out.finish()).map_err(|err| Error::io(dest, err))?;
        check_written(entry, written)
    }
}

/// Writes content to a new file, leaving zeros as holes: every whole
/// 4 KiB block of zeros (at a 4 KiB offset in the file, the unit file
/// systems allocate) is skipped with a seek instead of written, and the file
/// is extended to its full length at the end when it ends in a hole. Cheap on
/// ordinary data: a block is looked at only when its first byte is 0, and
/// only up to its first byte that is not; the blocks between two holes go
/// out in one write.
struct HoleWriter<'a> {
    file: &'a mut std::fs::File,
    /// The file offset the next byte of content goes to.
    pos: u64,
    /// Zero bytes skipped and not yet seeked over.
    hole: u64,
}

/// The block a hole is made of, and the alignment holes keep.
const ZERO_BLOCK: usize = 4096;

/// True when `block` is all zeros.
fn all_zeros(block: &[u8]) -> bool {
    block.first() == Some(&0) && block.iter().fold(0u8, |acc, &x| acc | x) == 0
}

impl<'a> HoleWriter<'a> {
    fn new(file: &'a mut std::fs::File) -> std::io::Result<Self> {
        use std::io::Seek;
        let pos = file.stream_position()?;
        Ok(HoleWriter { file, pos, hole: 0 })
    }

    fn put(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        // `data` is where the run of bytes to write began.
        let (mut data, mut i) = (0, 0);
        while i < chunk.len() {
            let off = self.pos + i as u64;
            let n = (ZERO_BLOCK - (off % ZERO_BLOCK as u64) as usize).min(chunk.len() - i);
            if n == ZERO_BLOCK && all_zeros(&chunk[i..i + n]) {
                self.write(&chunk[data..i])?;
                self.hole += n as u64;
                data = i + n;
            }
            i += n;
        }
        self.write(&chunk[data..])?;
        self.pos += chunk.len() as u64;
        Ok(())
    }

    /// Writes `run` after the hole skipped so far.
    fn write(&mut self, run: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        if run.is_empty() {
            return Ok(());
        }
        if self.hole > 0 {
            self.file.seek(SeekFrom::Current(hole_offset(self.hole)?))?;
            self.hole = 0;
        }
        self.file.write_all(run)
    }

    fn finish(self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        if self.hole > 0 {
            let end = self.file.seek(SeekFrom::Current(hole_offset(self.hole)?))?;
            self.file.set_len(end)?;
        }
        Ok(())
    }
}

fn hole_offset(hole: u64) -> std::io::Result<i64> {
    i64::try_from(hole).map_err(|_| std::io::Error::other("a run of zeros longer than 2^63 bytes"))
}

/// `written`, if it is the size the tree records for `entry`; otherwise
/// the snapshot is damaged.
fn check_written(entry: &Entry, written: u64) -> Result<u64> {
    if written != entry.size {
        return Err(Error::corrupt(
            format!("the snapshot tree entry {}", entry.path),
            format!("its blobs hold {written} bytes, the tree records {}", entry.size),
        ));
    }
    Ok(written)
}
