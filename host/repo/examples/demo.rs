//! The main job on the embedded default: a local `file://` repository.
//!
//! Initializes a fresh repository, backs up a real directory (default
//! `/usr/share/doc`), backs it up again incrementally, checks every byte,
//! restores the snapshot and verifies the restored tree against the snapshot's
//! per-file BLAKE3 digests, then prints a summary. Run it with
//! `cargo xtask demo [--source DIR] [--repo DIR]`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use coffer_repo::{BackupKind, EntryKind, InitOptions, ReadData, Repository, SnapshotOptions, backend_for};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let source = PathBuf::from(arg(&args, "--source").unwrap_or_else(|| "/usr/share/doc".into()));
    let base = PathBuf::from(arg(&args, "--repo").unwrap_or_else(|| "target/demo".into()));
    let repo_dir = std::path::absolute(base.join("repo"))?;
    let restore_dir = std::path::absolute(base.join("restore"))?;
    for d in [&repo_dir, &restore_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
    }
    let password = std::env::var("COFFER_PASSWORD").unwrap_or_else(|_| "coffer-demo".into());
    let url = format!("file://{}", repo_dir.display());
    println!("coffer demo: {} -> {url}", source.display());

    let backend = backend_for(&url, &[])?;
    let t = Instant::now();
    let repo = Repository::init(backend, password.as_bytes(), InitOptions::default()).await?;
    println!(
        "  init          {:>8.2} s  (Argon2id key file, repository {})",
        t.elapsed().as_secs_f64(),
        repo.config().id.short()
    );

    let t = Instant::now();
    let first = repo.backup_dir(&source, SnapshotOptions { source: "demo".into(), ..Default::default() }).await?;
    let secs = t.elapsed().as_secs_f64();
    let m = repo.read_manifest(&first).await?;
    let s = &m.summary;
    println!(
        "  full backup   {secs:>8.2} s  {} files, {:.1} MB read, {:.1} MB new, {:.1} MB stored, {:.0} MB/s  snapshot {}",
        s.files,
        mb(s.bytes_read),
        mb(s.new_bytes),
        mb(s.stored_bytes),
        mb(s.bytes_read) / secs,
        first.short()
    );

    let t = Instant::now();
    let second = repo
        .backup_dir(
            &source,
            SnapshotOptions {
                source: "demo".into(),
                parent: Some(first),
                kind: BackupKind::Incremental,
                ..Default::default()
            },
        )
        .await?;
    let m2 = repo.read_manifest(&second).await?;
    println!(
        "  incremental   {:>8.2} s  {} of {} files unchanged and reused, {:.1} MB new  snapshot {}",
        t.elapsed().as_secs_f64(),
        m2.summary.reused_entries,
        m2.summary.files,
        mb(m2.summary.new_bytes),
        second.short()
    );

    let t = Instant::now();
    let report = repo.check(ReadData::All).await?;
    if !report.is_ok() {
        bail!("check found damage: {:?}", report.errors);
    }
    println!(
        "  check         {:>8.2} s  {} packs, {} blobs read back and verified",
        t.elapsed().as_secs_f64(),
        report.packs_read,
        report.blobs_read
    );

    let t = Instant::now();
    let written = repo.restore_dir(&second, &restore_dir).await?;
    let secs = t.elapsed().as_secs_f64();
    println!("  restore       {secs:>8.2} s  {:.1} MB into {}", mb(written), restore_dir.display());

    // Verify the restored tree against the snapshot's own digests.
    let snap = repo.open_snapshot(&second).await?;
    let mut verified = 0;
    for e in snap.entries.iter().filter(|e| e.kind == EntryKind::File) {
        let path = restore_dir.join(&e.path);
        let data = std::fs::read(&path).with_context(|| format!("reading back {}", path.display()))?;
        if Some(blake3::hash(&data).as_bytes()) != e.blake3.as_ref().map(|b| &b.0) {
            bail!("{} differs from the snapshot", path.display());
        }
        verified += 1;
    }
    let repo_size: u64 = walk_size(&repo_dir);
    println!("  verified      {verified} restored files match their BLAKE3 digests");
    println!(
        "summary: {} snapshots, {:.1} MB of files stored in {:.1} MB ({:.2}x), all checks passed",
        repo.snapshots().await?.len(),
        mb(m.summary.bytes),
        mb(repo_size),
        m.summary.bytes as f64 / repo_size.max(1) as f64
    );
    Ok(())
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if md.is_dir() { walk_size(&e.path()) } else { md.len() };
        }
    }
    total
}
