//! One phase of `cargo xtask bench repo`, run in its own process so that its
//! peak RSS is its own. Prints one Markdown table row.
//!
//! `bench_repo PHASE DATASET REPO RESTORE` with PHASE one of init, backup,
//! rebackup, restore, check, primitives.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use coffer_repo::{BackupKind, InitOptions, ReadData, Repository, SnapshotOptions, backend_for};

const PASSWORD: &[u8] = b"coffer bench password";

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn row(phase: &str, secs: f64, bytes: u64, notes: &str) {
    let rate = if bytes > 0 { format!("{:.0}", bytes as f64 / 1e6 / secs) } else { "".into() };
    println!("| {phase} | {secs:.2} | {rate} | {:.0} | {notes} |", peak_rss_mib());
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match p.symlink_metadata() {
                Ok(m) if m.is_dir() => files_under(&p, out),
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
    }
}

fn size_of(dir: &Path) -> u64 {
    let mut v = Vec::new();
    files_under(dir, &mut v);
    v.iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum()
}

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 4 {
        bail!("usage: bench_repo PHASE DATASET REPO RESTORE");
    }
    let (phase, dataset, repo_dir, restore) =
        (a[0].as_str(), PathBuf::from(&a[1]), std::path::absolute(&a[2])?, PathBuf::from(&a[3]));
    let url = format!("file://{}", repo_dir.display());
    if phase == "init" {
        let t = Instant::now();
        Repository::init(backend_for(&url, &[])?, PASSWORD, InitOptions::default()).await?;
        row("init (Argon2id 64 MiB, t=3)", t.elapsed().as_secs_f64(), 0, "");
        return Ok(());
    }
    if phase == "primitives" {
        return primitives(&dataset);
    }
    let repo = Repository::open(backend_for(&url, &[])?, PASSWORD).await.context("opening the bench repository")?;
    match phase {
        "backup" => {
            let t = Instant::now();
            let id =
                repo.backup_dir(&dataset, SnapshotOptions { source: "bench".into(), ..Default::default() }).await?;
            let secs = t.elapsed().as_secs_f64();
            let m = repo.read_manifest(&id).await?;
            let stored = size_of(&repo_dir);
            row(
                "backup (full)",
                secs,
                m.summary.bytes_read,
                &format!(
                    "{} files, {:.2} GB read, repository {:.2} GB ({:.2}x)",
                    m.summary.files,
                    m.summary.bytes_read as f64 / 1e9,
                    stored as f64 / 1e9,
                    m.summary.bytes_read as f64 / stored as f64
                ),
            );
        }
        "rebackup" => {
            let parent = repo.resolve_snapshot("latest").await?;
            let t = Instant::now();
            let id = repo
                .backup_dir(
                    &dataset,
                    SnapshotOptions {
                        source: "bench".into(),
                        parent: Some(parent),
                        kind: BackupKind::Incremental,
                        ..Default::default()
                    },
                )
                .await?;
            let m = repo.read_manifest(&id).await?;
            row(
                "backup (unchanged, incremental)",
                t.elapsed().as_secs_f64(),
                0,
                &format!("{} of {} files reused", m.summary.reused_entries, m.summary.files),
            );
        }
        "restore" => {
            let id = repo.resolve_snapshot("latest").await?;
            let t = Instant::now();
            let n = repo.restore_dir(&id, &restore).await?;
            let status = std::process::Command::new("sync").status()?;
            if !status.success() {
                bail!("sync failed");
            }
            row("restore (incl. sync)", t.elapsed().as_secs_f64(), n, "");
        }
        "reencrypt" => {
            // `coffer key rotate --reencrypt`: every pack is rewritten under
            // the new epoch and the old key retired.
            let bytes = size_of(&repo_dir.join("data"));
            let t = Instant::now();
            repo.rotate_key().await?;
            let r = repo.prune(&coffer_repo::PruneOptions { reencrypt: true, ..Default::default() }).await?;
            if r.retired_epochs.is_empty() {
                bail!("re-encryption retired nothing: {r:?}");
            }
            row(
                "rotate + prune --reencrypt",
                t.elapsed().as_secs_f64(),
                bytes,
                &format!("{} packs rewritten, epochs {:?} retired", r.reencrypted_packs, r.retired_epochs),
            );
        }
        "check" => {
            let t = Instant::now();
            let r = repo.check(ReadData::All).await?;
            if !r.is_ok() {
                bail!("check failed: {:?}", r.errors);
            }
            let bytes = size_of(&repo_dir.join("data"));
            row(
                "check --read-data",
                t.elapsed().as_secs_f64(),
                bytes,
                &format!("{} packs, {} blobs", r.packs_read, r.blobs_read),
            );
        }
        other => bail!("unknown phase {other}"),
    }
    Ok(())
}

/// Throughput of each primitive alone, one core, over the data set's bytes
/// (up to 1 GiB of it, read into memory first).
fn primitives(dataset: &Path) -> Result<()> {
    let mut files = Vec::new();
    files_under(dataset, &mut files);
    files.sort();
    let mut data = Vec::new();
    for f in files {
        if data.len() >= 1 << 30 {
            break;
        }
        data.extend_from_slice(&std::fs::read(&f)?);
    }
    let n = data.len() as u64;
    let bufs: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let t = Instant::now();
    for b in &bufs {
        std::hint::black_box(blake3::hash(b));
    }
    row("BLAKE3 alone (1 core)", t.elapsed().as_secs_f64(), n, "ceiling for chunk ids");
    let key = [7u8; 32];
    let cipher = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
    let nonce = [1u8; 24];
    let mut scratch = Vec::with_capacity(1 << 21);
    let t = Instant::now();
    for b in &bufs {
        scratch.clear();
        scratch.extend_from_slice(b);
        cipher.encrypt_in_place((&nonce).into(), b"", &mut scratch).expect("encrypt");
        std::hint::black_box(&scratch);
    }
    row("XChaCha20-Poly1305 alone (1 core)", t.elapsed().as_secs_f64(), n, "ceiling for encryption");
    let t = Instant::now();
    let mut out = 0usize;
    let level = coffer_repo::blob::Compression::default().zstd_level;
    for b in &bufs {
        out += zstd::bulk::compress(b, level).expect("zstd").len();
    }
    row(
        &format!("zstd level {level} alone (1 core)"),
        t.elapsed().as_secs_f64(),
        n,
        &format!("ratio {:.2}", n as f64 / out as f64),
    );
    let chunker = coffer_repo::chunker::Chunker::new(Default::default(), 42);
    let t = Instant::now();
    let mut rest: &[u8] = &data;
    let mut chunks = 0;
    while !rest.is_empty() {
        let c = chunker.cut(rest);
        rest = &rest[c..];
        chunks += 1;
    }
    row("FastCDC alone (1 core)", t.elapsed().as_secs_f64(), n, &format!("{chunks} chunks"));
    Ok(())
}
