//! `cargo xtask bench`: benchmarks.
//!
//! `repo`: builds (once) a data set of about 2 GiB of real files copied from
//! `/usr/lib`, then runs each phase (backup, unchanged re-backup, restore,
//! check --read-data, primitives) in its own process of the release
//! `bench_repo` example so each phase's peak RSS is its own (then a key
//! rotation with re-encryption of every pack), and prints a
//! table. `fabric`: the fabric plugin's backup, verify, follow and
//! rolled-forward restore on a generated ledger (see `bench_fabric`). `redis`: the redis plugin against `redis-cli --rdb` and a
//! restart on the RDB (see `bench_redis`). `postgres`: the postgres plugin
//! against `pg_basebackup` and pgBackRest (see `bench_postgres`). `archive`:
//! one `archive_command` push of a WAL segment into a 10 GB repository,
//! with a password and with a key cache (see `bench_archive`). `compare`:
//! coffer against restic, borg and rustic (see `bench_compare`). `primitives`: the criterion
//! micro-benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Target size of the data set.
const DATASET_BYTES: u64 = 2 << 30;

pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("repo") => repo(&args[1..]),
        Some("runtime") => runtime(),
        Some("redis") => crate::bench_redis::run(&args[1..]),
        Some("mongodb") => crate::bench_mongodb::run(&args[1..]),
        Some("fabric") => crate::bench_fabric::run(&args[1..]),
        Some("postgres") => crate::bench_postgres::run(&args[1..]),
        Some("archive") => crate::bench_archive::run(&args[1..]),
        Some("compare") => crate::bench_compare::run(&args[1..]),
        Some("primitives") => {
            crate::run(crate::cargo_cmd().args(["bench", "-p", "coffer-repo", "--bench", "primitives"]))
        }
        _ => bail!(
            "usage: cargo xtask bench repo [--dataset DIR] | runtime | redis [--keys N] | mongodb [--docs N] [--runs N] | fabric [--mb N] | postgres [--scale N] \
             [--runs N] | archive [--runs N] [--repo-gb N] [--dir DIR] | compare [--quick] [--runs N] [--rustic] | primitives"
        ),
    }
}

/// Runs the release `coffer` on `repo` with `password`, its cache under
/// `target/<bench>/cache`; returns stdout, or fails with stderr.
pub(crate) fn run_coffer(bench: &str, password: &str, repo: &Path, args: &[&str]) -> Result<String> {
    let target = crate::target_dir()?;
    let out = std::process::Command::new(target.join("release/coffer"))
        .env("COFFER_REPO", repo)
        .env("COFFER_PASSWORD", password)
        .env("COFFER_CACHE_DIR", target.join(bench).join("cache"))
        .args(args)
        .output()
        .with_context(|| format!("running {}", target.join("release/coffer").display()))?;
    if !out.status.success() {
        bail!("coffer {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What [`run_coffer_timed`] measured.
pub(crate) struct Timed {
    /// The command's stdout.
    pub stdout: String,
    /// Wall-clock seconds.
    pub wall: f64,
    /// CPU seconds, user and system.
    pub cpu: f64,
    /// Peak RSS in MiB.
    pub rss_mib: f64,
}

/// [`run_coffer`] under GNU time (`/usr/bin/time`, Debian's `time`).
pub(crate) fn run_coffer_timed(bench: &str, password: &str, repo: &Path, args: &[&str]) -> Result<Timed> {
    let target = crate::target_dir()?;
    let stats = target.join(bench).join("time.txt");
    let start = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M", "-o"])
        .arg(&stats)
        .arg(target.join("release/coffer"))
        .env("COFFER_REPO", repo)
        .env("COFFER_PASSWORD", password)
        .env("COFFER_CACHE_DIR", target.join(bench).join("cache"))
        .args(args)
        .output()
        .context("running coffer under /usr/bin/time")?;
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("coffer {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&stats)?;
    let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [user, sys, rss_kib] = v[..] else { bail!("GNU time printed {text:?}") };
    Ok(Timed {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        wall,
        cpu: user + sys,
        rss_mib: rss_kib / 1024.0,
    })
}

/// Bytes of the regular files under `p`.
pub(crate) fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(md) = e.path().symlink_metadata() {
                total += if md.is_dir() {
                    dir_size(&e.path())
                } else if md.is_file() {
                    md.len()
                } else {
                    0
                };
            }
        }
    }
    total
}

/// The median of `v` (NaN when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Copies subdirectories of /usr/lib (sorted, so the set is stable on one
/// machine) until about [`DATASET_BYTES`].
fn build_dataset(dest: &Path) -> Result<()> {
    if dest.join(".complete").exists() {
        return Ok(());
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::create_dir_all(dest)?;
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false))
        .collect();
    subdirs.sort();
    let mut total = 0;
    for d in subdirs {
        if total >= DATASET_BYTES {
            break;
        }
        let size = dir_size(&d);
        if size == 0 || total + size > DATASET_BYTES * 5 / 4 {
            continue;
        }
        crate::run(Command::new("cp").arg("-a").arg(&d).arg(dest))?;
        total += size;
    }
    eprintln!("data set: {:.2} GB in {}", total as f64 / 1e9, dest.display());
    std::fs::write(dest.join(".complete"), total.to_string())?;
    Ok(())
}

fn repo(args: &[String]) -> Result<()> {
    let work = crate::target_dir()?.join("bench");
    let dataset = match args.iter().position(|a| a == "--dataset") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--dataset needs a directory")?),
        None => {
            let d = work.join("data");
            build_dataset(&d)?;
            d
        }
    };
    crate::build_release("the repository benchmark", &["-p", "coffer-repo", "--example", "bench_repo"])?;
    let exe = crate::target_dir()?.join("release/examples/bench_repo");
    let repo_dir = work.join("repo");
    let restore_dir = work.join("restore");
    let _ = std::fs::remove_dir_all(&repo_dir);
    println!("| phase | time (s) | MB/s | peak RSS (MiB) | notes |");
    println!("|---|---:|---:|---:|---|");
    for phase in ["init", "backup", "rebackup", "restore", "check", "reencrypt", "primitives"] {
        if phase == "restore" {
            let _ = std::fs::remove_dir_all(&restore_dir);
        }
        let out = Command::new(&exe)
            .arg(phase)
            .arg(&dataset)
            .arg(&repo_dir)
            .arg(&restore_dir)
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!("bench phase {phase} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// The plugin runtime: instantiation, sink throughput, and the files
/// plugin against the native directory backup on the `repo` data set.
fn runtime() -> Result<()> {
    let work = crate::target_dir()?.join("bench");
    let dataset = work.join("dataset");
    build_dataset(&dataset)?;
    crate::build_plugins()?;
    let plugins = crate::plugin_target_dir()?.join("wasm32-wasip2/release");
    crate::build_release("the plugin runtime benchmark", &["-p", "coffer-runtime", "--example", "bench_runtime"])?;
    crate::run(
        Command::new(crate::target_dir()?.join("release/examples/bench_runtime"))
            .arg(plugins.join("coffer_plugin_files.wasm"))
            .arg(plugins.join("coffer_fixture_hostile.wasm"))
            .arg(&dataset)
            .arg(work.join("runtime")),
    )
}
