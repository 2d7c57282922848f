//! `cargo xtask bench compare`: coffer (through the `files` plugin, as a
//! user runs it) against restic and borg, and rustic when it is installed,
//! on one data set of real files, in one run.
//!
//! - The data set: all of `/usr/share` and sorted subdirectories of
//!   `/usr/lib`, about 2.5 GB and over 50,000 files (`--quick`: about
//!   300 MB). Built once into `target/bench-compare/data`.
//! - For each tool, each run: init a new repository (encryption on, the
//!   tool's default compression), initial backup, unchanged re-backup, a
//!   change applied to the data set in place (about 5% of files appended
//!   to or overwritten, some removed, some added), changed backup, full
//!   restore of the changed backup followed by `sync`, and the full
//!   read-back check (`check --read-data`, `borg check --verify-data`);
//!   then the change is undone. Restore and check start with the page
//!   cache dropped, so every tool reads its repository from disk. Every restore is compared with the data
//!   set byte for byte, with modes and symlinks (`diff -r`).
//! - Wall time, CPU time (user + system) and peak RSS of each command
//!   come from GNU `time`; repository sizes from the directory.
//! - Medians over the runs (`--runs N`, default 3; 1 with `--quick`),
//!   and coffer's ratio to each peer.
//! - The ceiling on the same bytes: BLAKE3, XChaCha20-Poly1305, zstd at
//!   coffer's level and FastCDC on one core (the `bench_repo` example),
//!   and the disk's sequential write rate.
//!
//! restic, borgbackup and GNU time come from Debian and are installed if
//! missing; `--rustic` also runs `cargo install rustic-rs --locked` (about
//! 8 minutes) when `rustic` is not on the PATH.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::{dir_size, median};

const PASSWORD: &str = "coffer bench compare password";

/// The phases measured, in the order they run.
const PHASES: [&str; 5] =
    ["initial backup", "unchanged re-backup", "changed backup", "restore + sync", "check read-data"];

/// One command's measured cost.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

/// A backup tool, as the commands a user types.
struct Tool {
    name: &'static str,
    repo: PathBuf,
    env: Vec<(String, String)>,
    /// Archives made so far (borg names each one).
    archives: usize,
}

impl Tool {
    fn new(name: &'static str, work: &Path) -> Tool {
        let repo = work.join(format!("repo-{name}"));
        let env: Vec<(String, String)> = match name {
            "coffer" => vec![
                ("COFFER_REPO".into(), repo.display().to_string()),
                ("COFFER_PASSWORD".into(), PASSWORD.into()),
                ("COFFER_CACHE_DIR".into(), work.join("cache-coffer").display().to_string()),
            ],
            "restic" => vec![
                ("RESTIC_REPOSITORY".into(), repo.display().to_string()),
                ("RESTIC_PASSWORD".into(), PASSWORD.into()),
                ("RESTIC_CACHE_DIR".into(), work.join("cache-restic").display().to_string()),
            ],
            "rustic" => vec![
                ("RUSTIC_REPOSITORY".into(), repo.display().to_string()),
                ("RUSTIC_PASSWORD".into(), PASSWORD.into()),
                ("RUSTIC_CACHE_DIR".into(), work.join("cache-rustic").display().to_string()),
            ],
            _ => vec![
                ("BORG_REPO".into(), repo.display().to_string()),
                ("BORG_PASSPHRASE".into(), PASSWORD.into()),
                ("BORG_BASE_DIR".into(), work.join("base-borg").display().to_string()),
                ("BORG_RELOCATED_REPO_ACCESS_IS_OK".into(), "yes".into()),
            ],
        };
        Tool { name, repo, env, archives: 0 }
    }

    fn program(&self) -> String {
        match self.name {
            "coffer" => crate::target_dir().map(|d| d.join("release/coffer").display().to_string()).unwrap_or_default(),
            other => other.to_string(),
        }
    }

    fn init(&mut self) -> Result<()> {
        if self.repo.exists() {
            std::fs::remove_dir_all(&self.repo)?;
        }
        // The repository's caches go with it; coffer's cache holds only
        // compiled plugins, which belong to the binary and are kept.
        for (k, v) in &self.env {
            if (k.ends_with("CACHE_DIR") && k != "COFFER_CACHE_DIR") || k == "BORG_BASE_DIR" {
                let _ = std::fs::remove_dir_all(v);
            }
        }
        self.archives = 0;
        let args: Vec<String> = match self.name {
            "coffer" => vec!["init".into()],
            "restic" | "rustic" => vec!["init".into()],
            _ => vec!["init".into(), "--encryption=repokey-blake2".into()],
        };
        self.measure(&args, None).map(|_| ())
    }

    fn backup(&mut self, data: &Path) -> Result<Cost> {
        let d = data.display().to_string();
        self.archives += 1;
        let args: Vec<String> = match self.name {
            "coffer" => vec!["--quiet".into(), "backup".into(), "files".into(), "--set".into(), format!("path={d}")],
            "restic" => vec!["--quiet".into(), "backup".into(), d],
            "rustic" => vec!["backup".into(), d],
            _ => vec!["create".into(), format!("::a{}", self.archives), d],
        };
        self.measure(&args, None)
    }

    /// Restores the newest backup into `target`; returns where the data
    /// set's root is inside it.
    fn restore(&self, data: &Path, target: &Path) -> Result<(Cost, PathBuf)> {
        let t = target.display().to_string();
        let (args, cwd): (Vec<String>, Option<&Path>) = match self.name {
            "coffer" => (vec!["--quiet".into(), "restore".into(), "latest".into(), "--target".into(), t], None),
            "restic" => (vec!["--quiet".into(), "restore".into(), "latest".into(), "--target".into(), t], None),
            "rustic" => (vec!["restore".into(), "latest".into(), t], None),
            _ => (vec!["extract".into(), format!("::a{}", self.archives)], Some(target)),
        };
        let cost = self.measure(&args, cwd)?;
        let nested = target.join(data.strip_prefix("/").unwrap_or(data));
        let root = if self.name != "coffer" && nested.exists() { nested } else { target.to_path_buf() };
        Ok((cost, root))
    }

    fn check(&self) -> Result<Cost> {
        let args: Vec<String> = match self.name {
            "coffer" => vec!["--quiet".into(), "check".into(), "--read-data".into()],
            "restic" | "rustic" => vec!["check".into(), "--read-data".into()],
            _ => vec!["check".into(), "--verify-data".into()],
        };
        self.measure(&args, None)
    }

    /// Runs the tool under GNU time.
    fn measure(&self, args: &[String], cwd: Option<&Path>) -> Result<Cost> {
        let cost = self.measure_quietly(args, cwd)?;
        eprintln!("  {} {}: {:.2} s", self.name, args.join(" "), cost.wall);
        Ok(cost)
    }

    fn measure_quietly(&self, args: &[String], cwd: Option<&Path>) -> Result<Cost> {
        let stats = std::env::temp_dir().join(format!("coffer-bench-time-{}", std::process::id()));
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%e %U %S %M", "-o"]).arg(&stats).arg(self.program()).args(args);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        let out = c.output().with_context(|| format!("starting {} {args:?}", self.name))?;
        if !out.status.success() {
            bail!(
                "{} {args:?} failed ({}):\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = std::fs::read_to_string(&stats).context("reading GNU time's output")?;
        let v: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let [wall, user, sys, rss_kib] = v[..] else { bail!("GNU time printed {text:?}") };
        Ok(Cost { wall, cpu: user + sys, rss_mib: rss_kib / 1024.0 })
    }
}

/// Every regular file under `dir`, sorted.
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

/// Copies `/usr/share` and then sorted subdirectories of `/usr/lib` into
/// `dest` until about `target` bytes.
fn build_dataset(dest: &Path, target: u64) -> Result<()> {
    let marker = dest.join(".complete");
    if std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<u64>().ok()) == Some(target) {
        return Ok(());
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::create_dir_all(dest)?;
    let mut sources = Vec::new();
    for top in ["/usr/share", "/usr/lib"] {
        let mut subdirs: Vec<PathBuf> = std::fs::read_dir(top)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false))
            .collect();
        subdirs.sort();
        sources.extend(subdirs);
    }
    let mut total = 0;
    for d in sources {
        if total >= target {
            break;
        }
        let size = dir_size(&d);
        if size == 0 || total + size > target * 11 / 10 {
            continue;
        }
        let parent = dest.join(d.parent().and_then(Path::file_name).context("a top directory")?);
        std::fs::create_dir_all(&parent)?;
        crate::run(Command::new("cp").arg("-a").arg(&d).arg(&parent))?;
        total += size;
    }
    let mut files = Vec::new();
    files_under(dest, &mut files);
    eprintln!("data set: {:.2} GB, {} files in {}", total as f64 / 1e9, files.len(), dest.display());
    std::fs::write(&marker, target.to_string())?;
    Ok(())
}

/// A small deterministic generator for the bytes the change writes.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
    }
}

/// The change made to the data set between the unchanged and the changed
/// backup, and how to undo it: of every 20 files (by sorted path), one is
/// changed, in turn appended to (16 KiB), overwritten in its first half,
/// or removed; one new file of 64 KiB is added for every 100 files.
struct Change {
    saved: PathBuf,
    touched: Vec<PathBuf>,
    added: Vec<PathBuf>,
}

impl Change {
    fn apply(data: &Path, saved: &Path) -> Result<Change> {
        if saved.exists() {
            std::fs::remove_dir_all(saved)?;
        }
        std::fs::create_dir_all(saved)?;
        let mut files = Vec::new();
        files_under(data, &mut files);
        files.retain(|f| !f.ends_with(".complete"));
        files.sort();
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut touched = Vec::new();
        for (i, f) in files.iter().enumerate().filter(|(i, _)| i % 20 == 7) {
            copy_with_mtime(f, &saved.join(touched.len().to_string()))?;
            touched.push(f.clone());
            match (i / 20) % 3 {
                0 => {
                    let mut extra = vec![0u8; 16 << 10];
                    noise.fill(&mut extra);
                    std::fs::OpenOptions::new().append(true).open(f)?.write_all(&extra)?;
                }
                1 => {
                    let len = std::fs::metadata(f)?.len() as usize;
                    let mut head = vec![0u8; len / 2 + 1];
                    noise.fill(&mut head);
                    let mut bytes = std::fs::read(f)?;
                    let n = head.len().min(bytes.len());
                    bytes[..n].copy_from_slice(&head[..n]);
                    std::fs::write(f, bytes)?;
                }
                _ => std::fs::remove_file(f)?,
            }
        }
        let mut added = Vec::new();
        for (k, f) in files.iter().step_by(100).enumerate() {
            let new = f.with_file_name(format!("coffer-bench-added-{k}"));
            let mut bytes = vec![0u8; 64 << 10];
            noise.fill(&mut bytes);
            std::fs::write(&new, bytes)?;
            added.push(new);
        }
        Ok(Change { saved: saved.to_path_buf(), touched, added })
    }

    fn undo(self) -> Result<()> {
        for f in &self.added {
            std::fs::remove_file(f)?;
        }
        for (k, f) in self.touched.iter().enumerate() {
            let _ = std::fs::remove_file(f);
            copy_with_mtime(&self.saved.join(k.to_string()), f)?;
        }
        std::fs::remove_dir_all(&self.saved)?;
        Ok(())
    }
}

/// Copies a file with its permission bits and modification time.
fn copy_with_mtime(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    let mtime = std::fs::metadata(from)?.modified()?;
    std::fs::File::options().write(true).open(to)?.set_modified(mtime)?;
    Ok(())
}

/// Checks a restored tree against the source: contents and symlinks must
/// be equal; returns the files whose permission bits differ (coffer does
/// not yet record owners, so it drops setuid and setgid bits).
fn same_tree(source: &Path, restored: &Path, who: &str) -> Result<Vec<String>> {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", "-q", "--exclude=.complete"])
        .arg(source)
        .arg(restored)
        .output()
        .context("running diff")?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let first: Vec<&str> = text.lines().take(5).collect();
        bail!("{who}'s restore differs from the data set:\n{}", first.join("\n"));
    }
    // Modes: diff compares contents only.
    let modes = |root: &Path| -> Result<BTreeMap<PathBuf, u32>> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = Vec::new();
        files_under(root, &mut files);
        files
            .into_iter()
            .map(|f| {
                let m = std::fs::symlink_metadata(&f)?.permissions().mode() & 0o7777;
                Ok((f.strip_prefix(root)?.to_path_buf(), m))
            })
            .collect()
    };
    let (a, b) = (modes(source)?, modes(restored)?);
    Ok(a.iter()
        .filter(|(p, m)| b.get(*p) != Some(m) && !p.ends_with(".complete"))
        .map(|(p, m)| {
            let got = b.get(p).map_or("no file".to_string(), |g| format!("{g:o}"));
            format!("{}: {m:o} restored as {got}", p.display())
        })
        .collect())
}

/// Reads every file of the data set, so each tool's initial backup starts
/// with the same warm page cache.
fn warm_cache(data: &Path) -> Result<()> {
    let mut files = Vec::new();
    files_under(data, &mut files);
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut r = std::fs::File::open(&f)?;
        while std::io::Read::read(&mut r, &mut buf)? > 0 {}
    }
    Ok(())
}

/// ext4 without a journal (this machine's root file system) will not hand
/// out an inode freed less than a minute ago (five when its table block is
/// still dirty) and scans past every such inode for each new file: a
/// restore that starts right after the previous tool's 90,000 restored
/// files were deleted runs several times slower, through no fault of its
/// own. Every restore therefore starts at least 65 s after the last
/// deletion of a restored tree, which was followed by a `sync`.
fn wait_for_inode_reuse(cleared: Option<std::time::Instant>) {
    const QUIET: std::time::Duration = std::time::Duration::from_secs(65);
    if let Some(left) = cleared.and_then(|t| QUIET.checked_sub(t.elapsed())) {
        eprintln!("  waiting {:.0} s for freed inodes to become reusable", left.as_secs_f64());
        std::thread::sleep(left);
    }
}

/// Writes back and then drops the page cache, so restore and check read
/// each tool's repository from disk, as they would after a reboot or on
/// a busy host. Without it the comparison is skewed: coffer drops its packs
/// from the cache as it writes them, the other tools' repositories stay
/// cached from the backup a minute earlier. Needs root; without it the
/// bench says so and goes on warm.
fn drop_caches() -> Result<()> {
    sync()?;
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("xtask: cannot drop the page cache ({e}); restore and check run warm");
    }
    Ok(())
}

fn sync() -> Result<f64> {
    let t = Instant::now();
    crate::run(&mut Command::new("sync"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Sequential write rate of the disk under `dir`: 2 GiB written and
/// fdatasync'ed, in MB/s.
fn disk_write_rate(dir: &Path) -> Result<f64> {
    let path = dir.join("disk-write-test");
    let mut buf = vec![0u8; 8 << 20];
    Noise(42).fill(&mut buf);
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut written = 0u64;
    while written < 2 << 30 {
        f.write_all(&buf)?;
        written += buf.len() as u64;
    }
    f.sync_data()?;
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(written as f64 / 1e6 / secs)
}

fn ensure_rustic() -> Result<bool> {
    if Command::new("rustic").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(true);
    }
    eprintln!("xtask: installing rustic (cargo install rustic-rs --locked, about 8 minutes)");
    crate::run(crate::cargo_cmd().args(["install", "rustic-rs", "--locked"]))?;
    Ok(true)
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs needs a number")?.parse()?,
        None if quick => 1,
        None => 3,
    };
    let with_rustic = args.iter().any(|a| a == "--rustic")
        || Command::new("rustic").arg("--version").output().is_ok_and(|o| o.status.success());
    crate::deps::ensure_debian_packages(&["restic", "borgbackup", "time"])?;
    if with_rustic {
        ensure_rustic()?;
    }
    crate::build_coffer()?;
    crate::build_release("the repository benchmark", &["-p", "coffer-repo", "--example", "bench_repo"])?;

    let work = crate::target_dir()?.join("bench-compare");
    let size = if quick { 300 << 20 } else { 2_500_000_000 };
    let data = work.join(if quick { "data-quick" } else { "data" });
    build_dataset(&data, size)?;
    let restore = work.join("restore");
    let mut files = Vec::new();
    files_under(&data, &mut files);
    let (nfiles, bytes) = (files.len() - 1, dir_size(&data));

    // coffer compiles its plugin once per binary and caches it, as on a
    // user's machine after the first run.
    Tool::new("coffer", &work).measure(&["plugin".into(), "inspect".into(), "files".into()], None)?;
    let mut names = vec!["coffer", "restic", "borg"];
    if with_rustic {
        names.push("rustic");
    }
    // costs[tool][phase] over the runs; repository sizes after the initial
    // and the changed backup.
    let mut costs: BTreeMap<&str, BTreeMap<&str, Vec<Cost>>> = BTreeMap::new();
    let mut sizes: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut mode_diffs: BTreeMap<&str, usize> = BTreeMap::new();
    // When the last restored tree was deleted (see `wait_for_inode_reuse`).
    let mut cleared: Option<std::time::Instant> = None;
    for run in 0..runs {
        for &name in &names {
            eprintln!("run {} of {runs}: {name}", run + 1);
            let mut tool = Tool::new(name, &work);
            let c = costs.entry(name).or_default();
            let s = sizes.entry(name).or_default();
            tool.init()?;
            warm_cache(&data)?;
            sync()?;
            c.entry(PHASES[0]).or_default().push(tool.backup(&data)?);
            s.0.push(dir_size(&tool.repo) as f64);
            c.entry(PHASES[1]).or_default().push(tool.backup(&data)?);
            let change = Change::apply(&data, &work.join("change-saved"))?;
            let outcome = (|| -> Result<()> {
                c.entry(PHASES[2]).or_default().push(tool.backup(&data)?);
                s.1.push(dir_size(&tool.repo) as f64);
                if restore.exists() {
                    std::fs::remove_dir_all(&restore)?;
                    sync()?;
                    cleared = Some(std::time::Instant::now());
                }
                std::fs::create_dir_all(&restore)?;
                sync()?;
                wait_for_inode_reuse(cleared);
                drop_caches()?;
                let (mut cost, root) = tool.restore(&data, &restore)?;
                cost.wall += sync()?;
                c.entry(PHASES[3]).or_default().push(cost);
                let differ = same_tree(&data, &root, name)?;
                if !differ.is_empty() {
                    eprintln!(
                        "{name}: {} files restored with other permission bits, such as {}",
                        differ.len(),
                        differ[0]
                    );
                }
                mode_diffs.insert(name, differ.len());
                std::fs::remove_dir_all(&restore)?;
                sync()?;
                cleared = Some(std::time::Instant::now());
                drop_caches()?;
                c.entry(PHASES[4]).or_default().push(tool.check()?);
                Ok(())
            })();
            change.undo()?;
            outcome?;
            std::fs::remove_dir_all(&tool.repo)?;
        }
    }

    println!(
        "\nbench compare: {:.2} GB, {nfiles} files ({}), medians of {runs}, {}\n",
        bytes as f64 / 1e9,
        data.display(),
        machine()
    );
    let peers: Vec<&str> = names.iter().copied().filter(|n| *n != "coffer").collect();
    let mut header = String::from("| phase | measure |");
    for n in &names {
        header.push_str(&format!(" {n} |"));
    }
    for p in &peers {
        header.push_str(&format!(" coffer/{p} |"));
    }
    println!("{header}");
    println!("|---|---|{}", "---:|".repeat(names.len() + peers.len()));
    for phase in PHASES {
        for (measure, get) in [
            ("wall s", (|c: &Cost| c.wall) as fn(&Cost) -> f64),
            ("CPU s", |c: &Cost| c.cpu),
            ("peak RSS MiB", |c: &Cost| c.rss_mib),
        ] {
            let med: Vec<f64> = names
                .iter()
                .map(|n| median(costs[n].get(phase).map(|v| v.iter().map(get).collect()).unwrap_or_default()))
                .collect();
            let mut line = format!("| {phase} | {measure} |");
            for m in &med {
                line.push_str(&format!(
                    " {} |",
                    if measure == "peak RSS MiB" { format!("{m:.0}") } else { format!("{m:.2}") }
                ));
            }
            for i in 1..names.len() {
                line.push_str(&format!(" {:.2}x |", med[0] / med[i]));
            }
            println!("{line}");
        }
        if phase == PHASES[0] {
            let rate: Vec<String> = names
                .iter()
                .map(|n| {
                    format!("{:.0}", bytes as f64 / 1e6 / median(costs[n][phase].iter().map(|c| c.wall).collect()))
                })
                .collect();
            println!("| {phase} | MB/s | {} |{}", rate.join(" | "), " |".repeat(peers.len()));
        }
    }
    for (label, pick) in [
        (
            "repository after the initial backup (MB)",
            (|s: &(Vec<f64>, Vec<f64>)| s.0.clone()) as fn(&(Vec<f64>, Vec<f64>)) -> Vec<f64>,
        ),
        ("repository after the changed backup (MB)", |s| s.1.clone()),
    ] {
        let med: Vec<f64> = names.iter().map(|n| median(pick(&sizes[n])) / 1e6).collect();
        let mut line = format!("| size | {label} |");
        for m in &med {
            line.push_str(&format!(" {m:.0} |"));
        }
        for i in 1..names.len() {
            line.push_str(&format!(" {:.2}x |", med[0] / med[i]));
        }
        println!("{line}");
    }

    let mut line = String::from("| restore | files with other permission bits |");
    for n in &names {
        line.push_str(&format!(" {} |", mode_diffs.get(n).copied().unwrap_or(0)));
    }
    println!("{line}{}", " |".repeat(peers.len()));

    // The ceiling on the same bytes.
    println!("\nceiling on the same bytes (one core each):\n");
    println!("| primitive | time (s) | MB/s | peak RSS (MiB) | notes |");
    println!("|---|---:|---:|---:|---|");
    let out = Command::new(crate::target_dir()?.join("release/examples/bench_repo"))
        .arg("primitives")
        .arg(&data)
        .arg(work.join("unused-repo"))
        .arg(work.join("unused-restore"))
        .output()
        .context("running bench_repo primitives")?;
    if !out.status.success() {
        bail!("bench_repo primitives failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("| disk sequential write (2 GiB, fdatasync) | | {:.0} | | |", disk_write_rate(&work)?);
    Ok(())
}

/// Cores and CPU model, for the table's heading.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {model}")
}
