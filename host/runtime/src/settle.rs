//! Restored files are made durable and let go of by the page cache in
//! batches, on a thread of their own, while the plugin goes on writing.
//!
//! A restore writes a whole tree that nothing reads right away. Left alone,
//! it fills the page cache with dirty pages (evicting what the machine's
//! other programs use) and leaves durability to whoever calls `sync` next.
//! Instead, every [`BATCH_BYTES`] of finished files the settler syncs the
//! target's file system (one `syncfs`, not an fsync per file) and advises
//! the kernel to drop those files' now-clean pages, which the next batch
//! then reuses. A restore is reported done only once everything it wrote is
//! on disk. On virtual machines that return free memory to their host,
//! recycling pages this way also makes writing several times cheaper.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Bytes of finished files per batch.
const BATCH_BYTES: u64 = 256 << 20;

/// Collects finished files of a restore and settles them in batches.
pub(crate) struct Settler {
    root: PathBuf,
    pending: Vec<PathBuf>,
    pending_bytes: u64,
    tx: Option<mpsc::SyncSender<Vec<PathBuf>>>,
    worker: Option<JoinHandle<Result<(), String>>>,
}

impl Settler {
    /// A settler for a restore into `root`.
    pub(crate) fn new(root: PathBuf) -> Self {
        Settler { root, pending: Vec::new(), pending_bytes: 0, tx: None, worker: None }
    }

    /// Records a regular file whose content is complete. When a batch is
    /// full and the previous one is still being synced, this waits for it:
    /// the restore cannot run more than two batches ahead of the disk.
    pub(crate) fn finished(&mut self, path: PathBuf, len: u64) {
        self.pending.push(path);
        self.pending_bytes += len;
        if self.pending_bytes >= BATCH_BYTES {
            self.send();
        }
    }

    fn send(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        if self.tx.is_none() {
            // One batch queued while one is being settled: at most about
            // three batches of written data are in the page cache at once.
            let (tx, rx) = mpsc::sync_channel::<Vec<PathBuf>>(1);
            let root = self.root.clone();
            let worker = std::thread::Builder::new().name("coffer-settle".into()).spawn(move || settle_loop(&root, rx));
            match worker {
                Ok(w) => {
                    self.tx = Some(tx);
                    self.worker = Some(w);
                }
                // No thread: the final sync in `finish` still makes the
                // restore durable; only the early release is lost.
                Err(_) => return,
            }
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(batch);
        }
    }

    /// Settles what is left and waits: when it returns `Ok`, every file the
    /// restore wrote is on disk. The error names the target and the cause
    /// (an I/O error or a full disk found during write-back).
    pub(crate) fn finish(mut self) -> Result<(), String> {
        let rest = std::mem::take(&mut self.pending);
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            w.join().unwrap_or_else(|_| Err("the write-back thread panicked".into()))?;
        }
        sync_fs(&self.root)?;
        release(&rest);
        Ok(())
    }
}

fn settle_loop(root: &std::path::Path, rx: mpsc::Receiver<Vec<PathBuf>>) -> Result<(), String> {
    let mut first_error = None;
    while let Ok(batch) = rx.recv() {
        if first_error.is_some() {
            continue;
        }
        match sync_fs(root) {
            Ok(()) => release(&batch),
            Err(e) => first_error = Some(e),
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn sync_fs(root: &std::path::Path) -> Result<(), String> {
    let dir = std::fs::File::open(root).map_err(|e| format!("opening {}: {e}", root.display()))?;
    rustix::fs::syncfs(&dir).map_err(|e| format!("writing the restored files under {} to disk: {e}", root.display()))
}

/// Advises the kernel to drop the (clean) pages of `files`. Advisory:
/// a file that cannot be opened is skipped.
fn release(files: &[PathBuf]) {
    use std::os::unix::fs::OpenOptionsExt;
    for f in files {
        // The plugin may have replaced the file since: never follow a
        // symlink, never wait on a FIFO, only touch regular files.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
        let Ok(file) = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(f) else {
            continue;
        };
        if file.metadata().is_ok_and(|m| m.is_file()) {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_syncs_and_keeps_every_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settler::new(dir.path().to_path_buf());
        // Enough bytes to send a batch to the thread before `finish`.
        for i in 0..3u8 {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, vec![i; 1 << 20]).unwrap();
            s.finished(p, BATCH_BYTES / 2);
        }
        // A file replaced by a symlink after it was recorded is not followed.
        let p = dir.path().join("swapped");
        std::os::unix::fs::symlink("/etc/hostname", &p).unwrap();
        s.finished(p, 1);
        s.finish().unwrap();
        for i in 0..3u8 {
            assert_eq!(std::fs::read(dir.path().join(format!("f{i}"))).unwrap(), vec![i; 1 << 20]);
        }
    }

    #[test]
    fn a_target_that_went_away_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("target");
        std::fs::create_dir(&gone).unwrap();
        let s = Settler::new(gone.clone());
        std::fs::remove_dir(&gone).unwrap();
        let e = s.finish().unwrap_err();
        assert!(e.contains(&gone.display().to_string()), "{e}");
    }
}
