//! The plugin runtime benchmark behind `cargo xtask bench runtime`:
//!
//! 1. instantiate: a precompiled, pooled plugin instance plus one `info`
//!    call, repeated; median and 99th percentile;
//! 2. sink: bytes/s of incompressible data written by a plugin through the
//!    sink, against the same bytes written natively through `EntryWriter`;
//! 3. files: the `files` plugin's backup of a data set against the host's
//!    native directory backup of the same data (the WASM overhead).
//!
//! Usage: `bench_runtime FILES_WASM HOSTILE_WASM DATASET WORKDIR`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use coffer_repo::{EntryKind, EntryMeta, InitOptions, Repository, SnapshotOptions, backend_for};
use coffer_runtime::{GrantSet, JobOptions, Purpose, Runtime, RuntimeOptions, SnapshotRequest};

const STREAM_BYTES: u64 = 1 << 30;
const INSTANTIATIONS: usize = 200;

async fn fresh_repo(dir: &Path) -> Result<Repository> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let backend = backend_for(dir.to_str().context("utf-8")?, &[])?;
    Ok(Repository::init(backend, b"bench", InitOptions::default()).await?)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [files_wasm, hostile_wasm, dataset, work] = args.as_slice() else {
        anyhow::bail!("usage: bench_runtime FILES_WASM HOSTILE_WASM DATASET WORKDIR");
    };
    let work = PathBuf::from(work);
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let rt = Runtime::new(RuntimeOptions { max_instances: 100, cache_dir: Some(cache) })?;
    let files_bytes = std::fs::read(files_wasm)?;
    let hostile_bytes = std::fs::read(hostile_wasm)?;

    // Compile (cold, into the cache), then load from the cache.
    let t = Instant::now();
    rt.load("files", &files_bytes)?;
    let cold = t.elapsed();
    let t = Instant::now();
    let files = rt.load("files", &files_bytes)?;
    let cached = t.elapsed();
    let hostile = rt.load("hostile", &hostile_bytes)?;

    // 1. Instantiate + info, pooled.
    let opts = JobOptions::default();
    for _ in 0..10 {
        files.info(None, &opts).await?;
    }
    let mut times = Vec::with_capacity(INSTANTIATIONS);
    for _ in 0..INSTANTIATIONS {
        let t = Instant::now();
        files.info(None, &opts).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    println!(
        "compile {:.0} ms (cold), load from cache {:.1} ms; instantiate+info median {:.0} us, p99 {:.0} us ({} KiB component)",
        cold.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        files_bytes.len() / 1024
    );

    // 2. Sink throughput: wasm vs native.
    let repo = fresh_repo(&work.join("sink-wasm")).await?;
    let config = serde_json::json!({"mode": "stream", "size": STREAM_BYTES});
    let t = Instant::now();
    hostile.snapshot(&repo, SnapshotRequest { config, ..Default::default() }, &JobOptions::default()).await?;
    let wasm_sink = t.elapsed();
    let repo = fresh_repo(&work.join("sink-native")).await?;
    let t = Instant::now();
    let w = repo.start_snapshot(SnapshotOptions { source: "native".into(), ..Default::default() }).await?;
    let mut e = w.add_entry(EntryMeta {
        path: "stream.bin".into(),
        kind: EntryKind::File,
        mode: 0o644,
        mtime: 0,
        mtime_nsec: 0,
        target: None,
    })?;
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut left = STREAM_BYTES;
    while left > 0 {
        for b in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        e.write(&block[..n]).await?;
        left -= n as u64;
    }
    e.finish().await?;
    w.commit().await?;
    let native_sink = t.elapsed();
    println!(
        "sink: {:.0} MB/s from a plugin, {:.0} MB/s native ({} MiB incompressible; overhead {:+.1}%)",
        mbps(STREAM_BYTES, wasm_sink),
        mbps(STREAM_BYTES, native_sink),
        STREAM_BYTES >> 20,
        (wasm_sink.as_secs_f64() / native_sink.as_secs_f64() - 1.0) * 100.0
    );

    // 3. The files plugin against the native directory backup.
    let dataset = Path::new(dataset).canonicalize()?;
    let repo = fresh_repo(&work.join("files-native")).await?;
    let t = Instant::now();
    let id = repo.backup_dir(&dataset, SnapshotOptions { source: "native".into(), ..Default::default() }).await?;
    let native = t.elapsed();
    let bytes = repo.read_manifest(&id).await?.summary.bytes;
    let files_n = repo.read_manifest(&id).await?.summary.files;
    let repo = fresh_repo(&work.join("files-wasm")).await?;
    let mut config = serde_json::json!({"path": dataset.to_str().context("utf-8")?});
    let grants = GrantSet::from_config(&mut config, Purpose::Read)?;
    let opts = JobOptions { grants, ..JobOptions::default() };
    let t = Instant::now();
    let (_, m) = files.snapshot(&repo, SnapshotRequest { config: config.clone(), ..Default::default() }, &opts).await?;
    let wasm = t.elapsed();
    anyhow::ensure!(m.summary.bytes == bytes, "the plugin and the native walk saw different data");
    let t = Instant::now();
    files.snapshot(&repo, SnapshotRequest { config, parent: None, ..Default::default() }, &opts).await?;
    let wasm_again = t.elapsed();
    println!(
        "files backup of {:.2} GB / {files_n} files: plugin {:.1} s ({:.0} MB/s), native {:.1} s ({:.0} MB/s), WASM overhead {:+.1}%; \
         plugin re-read of the same data (all chunks known) {:.1} s",
        bytes as f64 / 1e9,
        wasm.as_secs_f64(),
        mbps(bytes, wasm),
        native.as_secs_f64(),
        mbps(bytes, native),
        (wasm.as_secs_f64() / native.as_secs_f64() - 1.0) * 100.0,
        wasm_again.as_secs_f64()
    );
    Ok(())
}
