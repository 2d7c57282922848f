//! The write path: new blobs are compressed and sealed on worker threads,
//! gathered into packs, and packs are uploaded while more data arrives.
//!
//! ```text
//! producer (chunk + id + dedup) --jobs--> workers (zstd + seal) --> PackBuilder
//!                                                     full pack --> upload task
//! ```
//! Memory is bounded: at most `JOB_QUEUE` chunks wait for a worker, one pack
//! is being filled, and at most `UPLOAD_SLOTS` finished packs are in flight.

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
use crate::repofile::pack::PackBuilder;

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
    current: Mutex<PackBuilder>,
    uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    slots: Arc<Semaphore>,
    uploaded: Mutex<Vec<IndexedPack>>,
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

    /// Seals the current pack if it is non-empty (or `force`d full) and starts its upload.
    fn ship(self: &Arc<Self>, pack: PackBuilder) {
        if pack.is_empty() {
            return;
        }
        let (bytes, id, blobs) = pack.finish(&self.key);
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
            let size = bytes.len() as u64;
            let name = id.to_hex();
            match me.backend.put(FileKind::Pack, &name, Bytes::from(bytes), PutMode::Overwrite).await {
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

    fn process(self: &Arc<Self>, job: Job) {
        let sealed = blob::encode(&self.key, job.kind, &job.id, &job.data, self.compression);
        self.stats.blobs.fetch_add(1, Ordering::Relaxed);
        self.stats.raw_bytes.fetch_add(job.data.len() as u64, Ordering::Relaxed);
        self.stats.stored_bytes.fetch_add(sealed.len() as u64, Ordering::Relaxed);
        let full = {
            let mut cur = self.current.lock().expect("pack lock");
            cur.add(job.kind, job.id, &sealed, job.data.len() as u32);
            if cur.len() >= self.pack_target {
                Some(std::mem::replace(&mut *cur, PackBuilder::with_capacity(pack_capacity(self.pack_target))))
            } else {
                None
            }
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
        let shared = Arc::new(Shared {
            key,
            compression,
            backend,
            pack_target,
            rt: tokio::runtime::Handle::current(),
            current: Mutex::new(PackBuilder::with_capacity(pack_capacity(pack_target))),
            uploads: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            uploaded: Mutex::new(Vec::new()),
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
                                Some(job) => shared.process(job),
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

    /// Queues a new blob. Waits when the workers are busy.
    pub async fn save(&self, kind: BlobKind, id: Id, data: Bytes) -> Result<()> {
        if let Some(e) = self.error() {
            return Err(Error::Aborted(e));
        }
        let tx = self
            .jobs
            .lock()
            .expect("jobs lock")
            .clone()
            .ok_or_else(|| Error::Aborted("the blob saver was closed".into()))?;
        tx.send(Job { kind, id, data }).await.map_err(|_| Error::Aborted("blob workers stopped".into()))
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
            let last = std::mem::take(&mut *shared.current.lock().expect("pack lock"));
            shared.ship(last);
        })
        .await
        .map_err(|e| Error::Aborted(format!("blob workers: {e}")))?;
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
            return Err(Error::Aborted(e));
        }
        Ok(self.take_uploaded())
    }

    /// Stops everything after a failure; finished uploads are left alone.
    pub async fn abort(&self) -> Vec<IndexedPack> {
        self.jobs.lock().expect("jobs lock").take();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
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
