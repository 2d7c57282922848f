//! The worker threads of one batch call (`add-files`, `restore-files`).
//!
//! A batch's files are read or written on threads of the call's own, not
//! on the async runtime's: file I/O may block on a slow disk or a hung
//! network mount, which must not stall other jobs, and handing each read
//! or write to the runtime's blocking pool (`block_in_place`,
//! `spawn_blocking`) cost more CPU than the I/O itself. Each thread takes
//! the next job of the batch until none is left; the caller is woken once
//! per thread, not once per file (a wake-up costs about 10 µs on this kind
//! of machine, more than a small file's I/O).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::job::CancelToken;

/// Tells a job to stop early: another failed, the job was cancelled, or
/// the call ended.
pub(crate) struct Stop {
    flag: AtomicBool,
    cancel: CancelToken,
}

impl Stop {
    /// True once the job should stop.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || self.cancel.is_cancelled()
    }
}

/// Sets the stop flag when the call ends, however it ends (a cancelled or
/// timed-out call is dropped mid-way).
struct StopOnDrop(Arc<Stop>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.flag.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` for every job on up to `threads` threads named `name-N`,
/// and returns each job's result in order (`failed` makes the error for a
/// thread that cannot be started). `work` gets a scratch buffer
/// kept per thread, the job and the stop flag, which it should check
/// between long steps. The first failure stops the other threads (they
/// finish or abandon the job at hand) and is returned; once `stop` is set
/// by a cancellation no further job starts and `cancelled()` is returned.
pub(crate) async fn run<J, R, E, F>(
    name: &str,
    threads: usize,
    jobs: Vec<J>,
    cancel: CancelToken,
    cancelled: fn() -> E,
    failed: fn(String) -> E,
    work: F,
) -> Result<Vec<R>, E>
where
    J: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
    F: Fn(&mut Vec<u8>, J, &Stop) -> Result<R, E> + Send + Sync + 'static,
{
    let count = jobs.len();
    let stop = Arc::new(Stop { flag: AtomicBool::new(false), cancel });
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate()));
    let first_failure: Arc<Mutex<Option<E>>> = Arc::new(Mutex::new(None));
    let work = Arc::new(work);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(usize, R)>>();
    for n in 0..threads.min(count) {
        let (stop, queue, first_failure, work, tx) =
            (Arc::clone(&stop), Arc::clone(&queue), Arc::clone(&first_failure), Arc::clone(&work), tx.clone());
        let body = move || {
            let mut scratch = Vec::new();
            let mut done = Vec::new();
            while !stop.is_set() {
                let next = queue.lock().map(|mut q| q.next());
                let Ok(Some((i, job))) = next else { break };
                match work(&mut scratch, job, &stop) {
                    Ok(r) => done.push((i, r)),
                    Err(e) => {
                        // Recorded before the flag is set, so a thread
                        // that stops because of the flag never goes first.
                        if let Ok(mut f) = first_failure.lock() {
                            f.get_or_insert(e);
                        }
                        stop.flag.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let _ = tx.send(done);
        };
        if let Err(e) = std::thread::Builder::new().name(format!("{name}-{n}")).spawn(body) {
            // The threads already started stop at their next job.
            return Err(failed(format!("cannot start a {name} thread: {e}")));
        }
    }
    drop(tx);
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(count).collect();
    while let Some(done) = rx.recv().await {
        for (i, r) in done {
            results[i] = Some(r);
        }
    }
    if let Some(e) = first_failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    // Every job ran unless the job was cancelled meanwhile.
    results.into_iter().map(|r| r.ok_or_else(cancelled)).collect()
}
