//! `cargo xtask bench archive`: what PostgreSQL's `archive_command` costs,
//! one `coffer --repo R --password-file F wal push %p` process (an alias of
//! `coffer stream push --plugin postgres`) per 16 MiB WAL segment, into a
//! repository that already holds about 10 GB.
//!
//! - The repository is built once in `target/bench-archive/repo` (random
//!   data in a few 1 GiB files, backed up with the `files` plugin, 2 GiB at
//!   a time; default Argon2id key) and reused by later runs
//!   (`--repo-gb N` for another size, `--dir DIR` for another place; free
//!   disk is checked first).
//! - Each run starts a fresh PostgreSQL 15 cluster whose own
//!   `archive_command` copies its segments to a spool, loads pgbench data
//!   until it has written enough segments, and stops it: real segments, of
//!   a new system identifier, so every push stores new data.
//! - `coffer repair index` first leaves one index file (earlier runs'
//!   pushes each added one), so every run starts from the same index.
//! - One push compiles the plugin into the component cache (reported
//!   alone), then `--runs N` (default 21) pushes with the password file and
//!   N with a key cache file (`coffer key cache`), each a new process as the
//!   `postgres` user with its own `HOME`, in the directory holding the
//!   segments and with a relative `%p` (as the server runs it), timed
//!   from spawn to exit. Every push runs with `COFFER_LOG=debug`, whose
//!   timestamps give the median of each phase.
//!
//! Needs Debian's `postgresql` (installed if missing) and root (to run as
//! `postgres`).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::{dir_size, median};
use crate::bench_postgres::{BIN, Cluster, as_postgres, chown_postgres, fresh_dir, output_ok};
use coffer_test_support::free_port;

const PASSWORD: &str = "coffer archive bench password";
/// Bytes of each source file the repository is built from.
const SOURCE_FILE: u64 = 1 << 30;
/// Source files backed up per round (so the scratch space stays at 2 GiB).
const FILES_PER_ROUND: u32 = 2;

/// uid and gid of the `postgres` user.
fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = output_ok(Command::new("id").args([flag, "postgres"]), "id postgres")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// Bytes free on the file system holding `p`.
fn free_bytes(p: &Path) -> Result<u64> {
    let out = output_ok(Command::new("df").args(["-B1", "--output=avail"]).arg(p), "df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).context("df printed no size")?.trim().parse().context("df's output")
}

/// Writes `len` bytes of xorshift output (incompressible, different for
/// every seed) to `path`.
fn random_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..len / block.len() as u64 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

/// The bench's `coffer` processes: run as `postgres`, with its home and
/// nothing else from this environment, as the server runs `archive_command`.
struct Coffer {
    bin: PathBuf,
    repo: PathBuf,
    ids: (u32, u32),
}

impl Coffer {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/var/lib/postgresql")
            .env("USER", "postgres")
            .uid(self.ids.0)
            .gid(self.ids.1)
            .arg("--repo")
            .arg(&self.repo);
        c
    }
}

/// Builds the repository once: `gb` GB of random data in 1 GiB files.
fn build_repo(coffer: &Coffer, work: &Path, gb: u64) -> Result<()> {
    let done = work.join("repo.complete");
    if done.exists() && coffer.repo.join("config").exists() {
        return Ok(());
    }
    let target = gb * 1_000_000_000;
    let need = target + FILES_PER_ROUND as u64 * SOURCE_FILE + (2 << 30);
    let free = free_bytes(work)?;
    if free < need {
        bail!(
            "building the {gb} GB repository needs about {:.1} GB free in {}; {:.1} GB are",
            need as f64 / 1e9,
            work.display(),
            free as f64 / 1e9
        );
    }
    if coffer.repo.exists() {
        std::fs::remove_dir_all(&coffer.repo)?;
    }
    let pw = work.join("password");
    output_ok(coffer.cmd().arg("--password-file").arg(&pw).arg("init"), "coffer init")?;
    let src = work.join("source");
    let mut round = 0u64;
    let t = Instant::now();
    while dir_size(&coffer.repo) < target {
        fresh_dir(&src)?;
        for f in 0..FILES_PER_ROUND {
            random_file(&src.join(format!("big{f}")), SOURCE_FILE, 0x9E37_79B9_7F4A_7C15 ^ (round << 8 | f as u64))?;
        }
        chown_postgres(&src)?;
        output_ok(
            coffer
                .cmd()
                .arg("--password-file")
                .arg(&pw)
                .args(["-q", "backup", "files", "--set"])
                .arg(format!("path={}", src.display())),
            "coffer backup files",
        )?;
        round += 1;
        eprintln!("repository: {:.1} GB after {round} backups", dir_size(&coffer.repo) as f64 / 1e9);
    }
    std::fs::remove_dir_all(&src)?;
    std::fs::write(&done, format!("{} bytes, built in {:.0} s\n", dir_size(&coffer.repo), t.elapsed().as_secs_f64()))?;
    Ok(())
}

/// Full segments a fresh cluster archived into `spool`: at least `count`.
fn make_segments(work: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let data = work.join("pg");
    let sock = work.join("sock");
    let spool = work.join("spool");
    if data.join("postmaster.pid").exists() {
        let _ = as_postgres(&format!("{BIN}/pg_ctl")).arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
    }
    for d in [&data, &sock, &spool] {
        fresh_dir(d)?;
    }
    output_ok(
        as_postgres(&format!("{BIN}/initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]),
        "initdb",
    )?;
    let conf = format!("\narchive_mode = on\narchive_command = 'cp %p {}/%f'\nmax_wal_size = 4GB\n", spool.display());
    std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?.write_all(conf.as_bytes())?;
    let pg = Cluster { data, sock, port: free_port()?, settings: "" };
    pg.start()?;
    // pgbench -i writes about 0.8 segments per unit of scale.
    let scale = (count * 5 / 4 + 4).to_string();
    eprintln!("pgbench -i -s {scale} (WAL segments for the pushes) ...");
    pg.pgbench(&["-i", "-s", &scale])?;
    pg.psql("select pg_switch_wal()")?;
    pg.psql("checkpoint")?;
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let segments = loop {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(&spool)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.len() == 24
                    && name.bytes().all(|b| b.is_ascii_hexdigit())
                    && p.metadata().map(|m| m.len() == 16 << 20).unwrap_or(false)
            })
            .collect();
        segs.sort();
        if segs.len() >= count {
            break segs;
        }
        if Instant::now() > deadline {
            bail!("the cluster archived {} full segments, {count} needed", segs.len());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    pg.stop();
    Ok(segments)
}

/// The phases a push's `COFFER_LOG=debug` lines mark, in order: (event
/// text that ends the phase, phase name).
const PHASES: &[(&str, &str)] = &[
    ("key file opened", "config, key file, unwrap (Argon2id or key cache)"),
    ("plugin engine ready", "keyring, wasm engine"),
    ("plugin component loaded", "plugin load (component cache hit)"),
    ("plugin described itself", "instantiate + info (twice: config schema, job)"),
    ("stream session marker written", "session marker"),
    ("index loaded", "index load"),
    ("item content chunked", "plugin reads + checks 16 MiB; chunk, compress, encrypt"),
    ("item packs written", "last pack written and synced"),
    ("item committed", "index file + item object (commit)"),
    ("command finished", "session marker removed, report"),
    ("async runtime shut down", "runtime shutdown"),
];

/// One push: wall seconds, and seconds per phase (the last entry: process
/// start before logging plus exit after it).
fn push(coffer: &Coffer, auth: &[&std::ffi::OsStr], segment: &Path) -> Result<(f64, Vec<f64>, usize)> {
    let mut c = coffer.cmd();
    let (dir, name) = (segment.parent().context("a segment's directory")?, segment.file_name().context("a name")?);
    c.current_dir(dir).env("COFFER_LOG", "debug").args(auth).args(["--quiet", "wal", "push"]).arg(name);
    let t = Instant::now();
    let out = c.output().context("starting coffer")?;
    let wall = t.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("coffer wal push {} failed ({}):\n{log}", segment.display(), out.status);
    }
    // Lines are `   0.123456789s DEBUG message...`: the last line with
    // each phase's event ends it.
    let mut ends = vec![f64::NAN; PHASES.len()];
    let mut index_files = 0;
    for line in log.lines() {
        let Some((stamp, rest)) = line.trim_start().split_once("s ") else { continue };
        let Ok(at) = stamp.parse::<f64>() else { continue };
        if let Some(i) = PHASES.iter().position(|(event, _)| rest.contains(event)) {
            ends[i] = at;
        }
        if let Some(n) = rest.split("index_files=").nth(1) {
            index_files = n.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
        }
    }
    let mut phases = Vec::with_capacity(PHASES.len() + 1);
    let mut last = 0.0;
    for end in ends {
        phases.push(if end.is_nan() { f64::NAN } else { end - last });
        if !end.is_nan() {
            last = end;
        }
    }
    phases.push(wall - last);
    Ok((wall, phases, index_files))
}

pub fn run(args: &[String]) -> Result<()> {
    let flag = |name: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).with_context(|| format!("{name} needs a number"))?.parse()?),
            None => Ok(default),
        }
    };
    let runs = flag("--runs", 21)?.max(1) as usize;
    let gb = flag("--repo-gb", 10)?;
    crate::deps::ensure_debian_packages(&["postgresql"])?;
    let bin = crate::build_coffer()?;
    let work = match args.iter().position(|a| a == "--dir") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--dir needs a directory")?),
        None => crate::target_dir()?.join("bench-archive"),
    };
    if !work.exists() {
        fresh_dir(&work)?;
    }
    let ids = postgres_ids()?;
    let pw = work.join("password");
    if !pw.exists() {
        std::fs::write(&pw, format!("{PASSWORD}\n"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
        chown_postgres(&pw)?;
    }
    let coffer = Coffer { bin, repo: work.join("repo"), ids };
    build_repo(&coffer, &work, gb)?;
    let key = work.join("key-cache");
    if !key.exists() {
        output_ok(
            coffer.cmd().arg("--password-file").arg(&pw).args(["key", "cache", "--out"]).arg(&key),
            "coffer key cache",
        )?;
    }
    // Each push adds an index file, and earlier runs' are still there: one
    // consolidated index file (what a prune that rewrites the index leaves)
    // gives every run the same start.
    output_ok(coffer.cmd().arg("--key-file").arg(&key).args(["-q", "repair", "index"]), "coffer repair index")?;
    let segments = make_segments(&work, 2 * runs + 1)?;
    let with_password = [std::ffi::OsStr::new("--password-file"), pw.as_os_str()];
    let with_key = [std::ffi::OsStr::new("--key-file"), key.as_os_str()];

    // The first push may compile the plugin into postgres's cache.
    let (first, _, _) = push(&coffer, &with_password, &segments[0])?;
    let mut results = Vec::new();
    for (label, auth, segs) in [
        ("password file (Argon2id)", &with_password, &segments[1..1 + runs]),
        ("key cache file", &with_key, &segments[1 + runs..1 + 2 * runs]),
    ] {
        let mut walls = Vec::new();
        let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len() + 1];
        let mut index_files = 0;
        for s in segs {
            let (wall, p, n) = push(&coffer, auth, s)?;
            walls.push(wall);
            for (i, v) in p.into_iter().enumerate() {
                if !v.is_nan() {
                    phases[i].push(v);
                }
            }
            index_files = n;
        }
        results.push((label, walls, phases, index_files));
    }

    let repo_bytes = dir_size(&coffer.repo);
    println!(
        "archive bench: {runs} pushes of distinct 16 MiB PostgreSQL 15 segments per mode, `coffer --repo R \
         (--password-file F | --key-file K) --quiet wal push SEGMENT` as the postgres user \
         (HOME=/var/lib/postgresql), repository {:.1} GB on local disk\n",
        repo_bytes as f64 / 1e9
    );
    println!("first push (component cache filled if empty): {:.0} ms\n", first * 1e3);
    println!("| opened with | min (ms) | median (ms) | p90 (ms) | index files at the end |");
    println!("|---|---:|---:|---:|---:|");
    for (label, walls, _, n) in &results {
        let mut w = walls.clone();
        w.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let p90 = w[((w.len() * 9).div_ceil(10)).saturating_sub(1)];
        println!("| {label} | {:.0} | {:.0} | {:.0} | {n} |", w[0] * 1e3, median(w.clone()) * 1e3, p90 * 1e3);
    }
    println!("\n| phase (median ms) | {} | {} |", results[0].0, results[1].0);
    println!("|---|---:|---:|");
    let names = PHASES.iter().map(|(_, n)| *n).chain(["process start and exit (outside the log)"]);
    for (i, name) in names.enumerate() {
        println!(
            "| {name} | {:.1} | {:.1} |",
            median(results[0].2[i].clone()) * 1e3,
            median(results[1].2[i].clone()) * 1e3
        );
    }
    Ok(())
}
