//! The write path: new blobs are compressed and sealed on worker threads,
//! gathered into packs, and packs are uploaded while more data arrives.
//!
//! ```text
//! producer (chunk + id + dedup) --jobs--> workers (zstd + seal) --> PackBuilder
//!                                                     full pack --> upload task
//! ```
//! Threads that read files themselves (several at once, see
//! [`BlobSaver::save_here`]) compress and seal their new chunks on the spot,
//! straight from the chunker's window. Memory is bounded: at most
//! `JOB_QUEUE` chunks wait for a worker, one pack is being filled, and at
//! most `UPLOAD_SLOTS` finished packs are in flight.
//! In a local repository a pack is written to a file of its own as it fills
//! (a spool file beside the packs) and renamed into place when finished, so
//! the packs cost no memory but a write buffer; for an object store each
//! pack is built in memory and uploaded whole.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use crate::backend::{DynBackend, FileKind, PutMode};
use crate::blob::{self, BlobKind, Compression};
use crate::crypto::DataKey;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repofile::index::IndexedPack;
use crate::repofile::pack::{FinishedPack, PackBuilder, PackBytes};

/// Chunks queued for the workers.
const JOB_QUEUE: usize = 4;
/// Packs being uploaded at once.
const UPLOAD_SLOTS: usize = 2;

/// Room for a whole pack: the target, one more blob of the largest chunk
/// size, and its header, so a pack never reallocates (a doubling would
/// briefly hold twice the pack). Untouched capacity costs no memory.
fn pack_capacity(pack_target: usize) -> usize {
    pack_target + fastcdc::v2020::MAXIMUM_MAX + (1 << 20)
}

struct Job {
    kind: BlobKind,
    id: Id,
    data: Bytes,
}

/// Counters of what the saver stored.
#[derive(Debug, Default)]
pub struct SaverStats {
    /// Blobs stored.
    pub blobs: AtomicU64,
    /// Their plaintext bytes.
    pub raw_bytes: AtomicU64,
    /// Their sealed bytes.
    pub stored_bytes: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
}

struct Shared {
    key: DataKey,
    compression: Compression,
    backend: DynBackend,
    pack_target: usize,
    rt: tokio::runtime::Handle,
    /// The pack being filled, made when the first blob for it comes.
    current: Mutex<Option<PackBuilder>>,
    /// Where packs are written as they fill, for a local repository.
    spool: Option<std::path::PathBuf>,
    uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    slots: Arc<Semaphore>,
    uploaded: Mutex<Vec<IndexedPack>>,
    /// Buffers of uploaded packs, for the next packs.
    spare: Mutex<Vec<Vec<u8>>>,
    error: Mutex<Option<String>>,
    stats: SaverStats,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut e = self.error.lock().expect("error lock");
        if e.is_none() {
            *e = Some(msg);
        }
    }

    /// An empty pack: a spool file in a local repository; otherwise in
    /// memory, in the buffer of one already uploaded where there is one: a
    /// new 16 MiB buffer costs a page fault and a zeroed page per 4 KiB, and
    /// freeing it raises glibc's mmap threshold so that later chunk-sized
    /// buffers come from (and fragment) the heap.
    fn new_pack(&self) -> std::result::Result<PackBuilder, String> {
        if let Some(dir) = &self.spool {
            return PackBuilder::spooled(dir);
        }
        Ok(match self.spare.lock().expect("spare lock").pop() {
            Some(buf) => PackBuilder::with_buffer(buf),
            None => PackBuilder::with_capacity(pack_capacity(self.pack_target)),
        })
    }

    /// Keeps an uploaded pack's buffer for [`Self::new_pack`], if the
    /// backend let go of it and no other is kept: uploads mostly finish
    /// before the next pack is full, and every buffer kept idle is 16 MiB
    /// of resident memory.
    fn recycle(&self, pack: Bytes) {
        let Ok(buf) = pack.try_into_mut() else { return };
        let buf = Vec::from(buf);
        let mut spare = self.spare.lock().expect("spare lock");
        if buf.capacity() >= pack_capacity(self.pack_target) && spare.is_empty() {
            spare.push(buf);
        }
    }

    /// Seals a non-empty pack and starts storing it.
    fn ship(self: &Arc<Self>, pack: PackBuilder) {
        if pack.is_empty() {
            return;
        }
        let FinishedPack { id, size, entries: blobs, bytes } = match pack.finish(&self.key) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        let epoch = self.key.epoch();
        let permit = match self.rt.block_on(self.slots.clone().acquire_owned()) {
            Ok(p) => p,
            Err(_) => {
                self.fail(format!("pack {} could not be uploaded: the saver was shut down", id.short()));
                return;
            }
        };
        let me = Arc::clone(self);
        let handle = self.rt.spawn(async move {
            let name = id.to_hex();
            let stored = match bytes {
                PackBytes::Memory(bytes) => {
                    let bytes = Bytes::from(bytes);
                    let put = me.backend.put(FileKind::Pack, &name, bytes.clone(), PutMode::Overwrite).await;
                    me.recycle(bytes);
                    put
                }
                PackBytes::Spooled(file) => {
                    let put = me.backend.put_spooled(FileKind::Pack, &name, file.path().to_path_buf()).await;
                    if put.is_ok() {
                        file.keep();
                    }
                    put
                }
            };
            match stored {
                Ok(()) => {
                    me.stats.packs.fetch_add(1, Ordering::Relaxed);
                    me.uploaded.lock().expect("uploaded lock").push(IndexedPack { id, size, epoch, blobs });
                }
                Err(e) => me.fail(e.to_string()),
            }
            drop(permit);
        });
        self.uploads.lock().expect("uploads lock").push(handle);
    }

    fn process(self: &Arc<Self>, kind: BlobKind, id: Id, data: &[u8]) {
        if self.error.lock().expect("error lock").is_some() {
            // The snapshot fails anyway: store nothing more.
            return;
        }
        let sealed = blob::encode(&self.key, kind, &id, data, self.compression);
        self.stats.blobs.fetch_add(1, Ordering::Relaxed);
        self.stats.raw_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.stats.stored_bytes.fetch_add(sealed.len() as u64, Ordering::Relaxed);
        let full = {
            let mut cur = self.current.lock().expect("pack lock");
            let pack = match &mut *cur {
                Some(pack) => pack,
                None => match self.new_pack() {
                    Ok(pack) => cur.insert(pack),
                    Err(e) => return self.fail(e),
                },
            };
            if let Err(e) = pack.add(kind, id, &sealed, data.len() as u32) {
                // Dropping the pack removes its spool file.
                *cur = None;
                return self.fail(e);
            }
            if pack.len() >= self.pack_target { cur.take() } else { None }
        };
        if let Some(pack) = full {
            self.ship(pack);
        }
    }
}

/// Stores new blobs into packs. One per snapshot being written.
pub struct BlobSaver {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl BlobSaver {
    /// Starts the worker threads. Every pack is sealed under `key`.
    pub fn new(key: DataKey, compression: Compression, backend: DynBackend, pack_target: usize) -> Self {
        let spool = backend.spool_dir(FileKind::Pack);
        let shared = Arc::new(Shared {
            key,
            compression,
            backend,
            pack_target,
            rt: tokio::runtime::Handle::current(),
            current: Mutex::new(None),
            spool,
            uploads: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            uploaded: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            stats: SaverStats::default(),
        });
        let (tx, rx) = mpsc::channel::<Job>(JOB_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
        let workers = (0..n)
            .map(|i| {
                let rx = Arc::clone(&rx);
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("coffer-blob-{i}"))
                    .spawn(move || {
                        loop {
                            let job = rx.lock().expect("job queue lock").blocking_recv();
                            match job {
                                Some(job) => shared.process(job.kind, job.id, &job.data),
                                None => break,
                            }
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        BlobSaver { shared, jobs: Mutex::new(Some(tx)), workers: Mutex::new(workers) }
    }

    /// The key epoch every pack of this saver is sealed under.
    pub fn epoch(&self) -> u32 {
        self.shared.key.epoch()
    }

    /// The first error, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().expect("error lock").clone()
    }

    /// The workers' queue, unless the saver failed or was closed.
    fn queue(&self) -> Result<mpsc::Sender<Job>> {
        if let Some(e) = self.error() {
            return Err(Error::PackWrite(e));
        }
        self.jobs.lock().expect("jobs lock").clone().ok_or_else(|| Error::PackWrite("the blob saver was closed".into()))
    }

    /// Queues a new blob. Waits when the workers are busy.
    pub async fn save(&self, kind: BlobKind, id: Id, data: Bytes) -> Result<()> {
        let tx = self.queue()?;
        let permit = tx.reserve().await.map_err(|_| Error::PackWrite("blob workers stopped".into()))?;
        permit.send(Job { kind, id, data });
        Ok(())
    }

    /// Compresses and seals a new blob on the calling thread, a thread
    /// outside the async runtime (one of several reading files, or the one
    /// storing a snapshot's tree), and adds it to the pack being filled.
    /// The chunk need not be copied out of the chunker's window, and no
    /// chunk waits in a queue: with a queue to the workers as well, a
    /// backup held every reading thread's chunks and every worker's, a
    /// fifth of its peak memory, for no gain in speed (the reading threads
    /// keep the cores busy).
    pub fn save_here(&self, kind: BlobKind, id: Id, data: &[u8]) -> Result<()> {
        if self.jobs.lock().expect("jobs lock").is_none() {
            return Err(Error::PackWrite("the blob saver was closed".into()));
        }
        // Stores nothing once the saver failed; either way the first
        // error is the answer.
        self.shared.process(kind, id, data);
        match self.error() {
            Some(e) => Err(Error::PackWrite(e)),
            None => Ok(()),
        }
    }

    /// The runtime the uploads run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.rt
    }

    /// Packs uploaded so far and not yet taken.
    pub fn take_uploaded(&self) -> Vec<IndexedPack> {
        std::mem::take(&mut *self.shared.uploaded.lock().expect("uploaded lock"))
    }

    /// Counters.
    pub fn stats(&self) -> &SaverStats {
        &self.shared.stats
    }

    /// Stops the workers, uploads the last partial pack and waits for every
    /// upload. Returns the packs not yet taken.
    pub async fn finish(&self) -> Result<Vec<IndexedPack>> {
        self.jobs.lock().expect("jobs lock").take();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            for w in workers {
                if w.join().is_err() {
                    shared.fail("a blob worker panicked".into());
                }
            }
            let last = shared.current.lock().expect("pack lock").take();
            if let Some(last) = last {
                shared.ship(last);
            }
        })
        .await
        .map_err(|e| Error::PackWrite(format!("blob workers: {e}")))?;
        loop {
            let handles = std::mem::take(&mut *self.shared.uploads.lock().expect("uploads lock"));
            if handles.is_empty() {
                break;
            }
            for h in handles {
                if let Err(e) = h.await {
                    self.shared.fail(format!("pack upload task: {e}"));
                }
            }
        }
        if let Some(e) = self.error() {
            return Err(Error::PackWrite(e));
        }
        Ok(self.take_uploaded())
    }

    /// Stops everything after a failure; finished uploads are left alone.
    pub async fn abort(&self) -> Vec<IndexedPack> {
        self.jobs.lock().expect("jobs lock").take();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
            // Dropping the pack being filled removes its spool file.
            shared.current.lock().expect("pack lock").take();
        })
        .await;
        let handles = std::mem::take(&mut *self.shared.uploads.lock().expect("uploads lock"));
        for h in handles {
            let _ = h.await;
        }
        self.take_uploaded()
    }
}

impl Drop for BlobSaver {
    fn drop(&mut self) {
        // Closing the queue lets the workers exit on their own.
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer handed to the backend comes back whole once the backend
    /// lets go of it, and not while it still holds it.
    #[test]
    fn an_uploaded_pack_buffer_is_taken_back_whole() {
        let mut buf = Vec::with_capacity(pack_capacity(1 << 20));
        buf.extend_from_slice(&[7; 1000]);
        let cap = buf.capacity();
        let sent = Bytes::from(buf);
        let held = sent.clone();
        assert!(held.try_into_mut().is_err());
        let back = Vec::from(sent.try_into_mut().expect("unique"));
        assert_eq!((back.capacity(), back.len()), (cap, 1000));
    }
}
