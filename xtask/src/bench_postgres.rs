//! `cargo xtask bench postgres`: the postgres plugin against PostgreSQL's
//! own `pg_basebackup` and against pgBackRest, on one pgbench database
//! (scale 50, about 750 MB; `--scale N` for another size), in one run:
//!
//! - full backup: `coffer backup postgres` (replication protocol into a
//!   fresh local repository: chunked, deduplicated, zstd, encrypted),
//!   `pg_basebackup -Ft -c fast` (tar files on local disk, no compression
//!   and no encryption) and `pgbackrest backup --type=full` (zstd level 3,
//!   the same algorithm and level as coffer, AES-256-CBC, `process-max=2`
//!   for this machine's two cores);
//! - restore of each into an empty directory, synced to disk
//!   (`coffer restore`, `tar -xf` of both tars, `pgbackrest restore`);
//!   every restored directory is then started with the stock `postgres`
//!   and its `pgbench_accounts` counted;
//! - what coffer stores for an unchanged and a slightly changed cluster.
//!
//! Each timing is the median of three runs (`--runs N`). Everything that
//! touches the cluster runs as the `postgres` user, as PostgreSQL requires.
//! Needs Debian's `postgresql` and `pgbackrest` (installed if missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench::{dir_size, median};
use coffer_test_support::free_port;

pub(crate) const BIN: &str = "/usr/lib/postgresql/15/bin";
const PASSWORD: &str = "coffer bench password";
const PGBACKREST_CIPHER: &str = "pgbackrest bench cipher pass";

/// `program` run as the `postgres` user.
pub(crate) fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", program]);
    c
}

pub(crate) fn output_ok(c: &mut Command, what: &str) -> Result<Output> {
    let out = c.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `c`, failing with its output, and returns the seconds it took.
fn timed(c: &mut Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    output_ok(c, what)?;
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn chown_postgres(p: &Path) -> Result<()> {
    crate::run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(p))
}

/// A directory the `postgres` user owns, emptied first.
pub(crate) fn fresh_dir(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).with_context(|| format!("clearing {}", p.display()))?;
    }
    std::fs::create_dir_all(p)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    chown_postgres(p)
}

/// Removes `p` if it exists (the `postgres` user creates it again).
fn remove(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).with_context(|| format!("clearing {}", p.display()))?;
    }
    Ok(())
}

fn sync() -> Result<()> {
    crate::run(&mut Command::new("sync"))
}

/// A cluster in `data`, listening on loopback and on a socket in `sock`.
pub(crate) struct Cluster {
    pub(crate) data: PathBuf,
    pub(crate) sock: PathBuf,
    pub(crate) port: u16,
    /// Settings given on the command line (`-c name=value`).
    pub(crate) settings: &'static str,
}

impl Cluster {
    pub(crate) fn start(&self) -> Result<()> {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 {}", self.port, self.sock.display(), self.settings);
        let log = self.data.with_extension("log");
        output_ok(
            as_postgres(&format!("{BIN}/pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "600", "-o", &opts, "start"]),
            &format!("pg_ctl start (log {})", log.display()),
        )?;
        Ok(())
    }

    pub(crate) fn stop(&self) {
        let _ =
            as_postgres(&format!("{BIN}/pg_ctl")).arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]).output();
    }

    pub(crate) fn psql(&self, sql: &str) -> Result<String> {
        let out = output_ok(
            as_postgres(&format!("{BIN}/psql"))
                .arg("-h")
                .arg(&self.sock)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-q"])
                .args(["-v", "ON_ERROR_STOP=1", "-c", sql]),
            &format!("psql {sql:?}"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub(crate) fn pgbench(&self, args: &[&str]) -> Result<()> {
        output_ok(
            as_postgres(&format!("{BIN}/pgbench"))
                .arg("-h")
                .arg(&self.sock)
                .args(["-p", &self.port.to_string(), "-U", "postgres"])
                // Quiet progress while loading (-q is for -i only).
                .args(if args.contains(&"-i") { &["-q"][..] } else { &[] })
                .args(args)
                .arg("postgres"),
            &format!("pgbench {args:?}"),
        )?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            self.stop();
        }
    }
}

/// Starts a restored data directory with the stock server and checks that
/// it holds the whole `pgbench_accounts` table.
fn check_restored(data: &Path, sock: &Path, accounts: &str, what: &str) -> Result<()> {
    // A restored copy must not archive into the primary's archive.
    let c = Cluster {
        data: data.to_path_buf(),
        sock: sock.to_path_buf(),
        port: free_port()?,
        settings: "-c archive_mode=off",
    };
    c.start().with_context(|| format!("starting the cluster {what} restored"))?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while c.psql("select pg_is_in_recovery()")? != "f" {
        if Instant::now() > deadline {
            bail!("the cluster {what} restored did not finish recovery");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let n = c.psql("select count(*) from pgbench_accounts")?;
    if n != accounts {
        bail!("the cluster {what} restored holds {n} accounts, {accounts} expected");
    }
    c.stop();
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let flag = |name: &str, default: u32| -> Result<u32> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).with_context(|| format!("{name} needs a number"))?.parse()?),
            None => Ok(default),
        }
    };
    let scale = flag("--scale", 50)?;
    let runs = flag("--runs", 3)?.max(1);
    crate::deps::ensure_debian_packages(&["postgresql", "pgbackrest"])?;
    let coffer_bin = crate::build_coffer()?;

    let work = crate::target_dir()?.join("bench-postgres");
    if work.exists() {
        // A cluster left by an interrupted run.
        let _ = as_postgres(&format!("{BIN}/pg_ctl"))
            .arg("-D")
            .arg(work.join("primary"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
    fresh_dir(&work)?;
    let sock = work.join("sock");
    fresh_dir(&sock)?;

    // The primary: archiving on, to pgBackRest once the data is loaded.
    let data = work.join("primary");
    output_ok(
        as_postgres(&format!("{BIN}/initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]),
        "initdb",
    )?;
    let conf = "\nmax_wal_senders = 10\narchive_mode = on\narchive_command = '/bin/true'\nmax_wal_size = 4GB\n";
    let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
    std::io::Write::write_all(&mut f, conf.as_bytes())?;
    drop(f);
    let pg = Cluster { data: data.clone(), sock: sock.clone(), port: free_port()?, settings: "" };
    pg.start()?;
    eprintln!("pgbench -i -s {scale} ...");
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    pg.psql("checkpoint")?;
    let accounts = pg.psql("select count(*) from pgbench_accounts")?;
    let db_bytes: u64 = pg.psql("select sum(pg_database_size(oid)) from pg_database")?.parse()?;
    let url = format!("url=postgres://postgres@127.0.0.1:{}/", pg.port);

    // pgBackRest: a stanza with zstd and encryption.
    let pgbr_conf = work.join("pgbackrest.conf");
    std::fs::write(
        &pgbr_conf,
        format!(
            "[global]\nrepo1-path={repo}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={PGBACKREST_CIPHER}\n\
             compress-type=zst\nprocess-max=2\nstart-fast=y\nlog-level-console=warn\nlog-level-file=off\n\
             lock-path={lock}\nspool-path={lock}\nrepo1-retention-full=100\n\n\
             [bench]\npg1-path={data}\npg1-socket-path={sock}\npg1-port={port}\npg1-user=postgres\n",
            repo = work.join("pgbackrest-repo").display(),
            lock = work.join("pgbackrest-lock").display(),
            data = data.display(),
            sock = sock.display(),
            port = pg.port,
        ),
    )?;
    chown_postgres(&pgbr_conf)?;
    let pgbackrest = |args: &[&str]| {
        let mut c = as_postgres("pgbackrest");
        c.arg(format!("--config={}", pgbr_conf.display())).arg("--stanza=bench").args(args);
        c
    };
    fresh_dir(&work.join("pgbackrest-repo"))?;
    fresh_dir(&work.join("pgbackrest-lock"))?;
    pg.psql(&format!(
        "alter system set archive_command = 'pgbackrest --config={} --stanza=bench archive-push %p'",
        pgbr_conf.display()
    ))?;
    pg.psql("select pg_reload_conf()")?;
    output_ok(&mut pgbackrest(&["stanza-create"]), "pgbackrest stanza-create")?;
    output_ok(&mut pgbackrest(&["check"]), "pgbackrest check")?;

    let coffer = |repo: &Path, args: &[&str]| {
        let mut c = as_postgres(coffer_bin.to_str().expect("UTF-8 path"));
        c.env("COFFER_REPO", repo)
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_CACHE_DIR", work.join("cache"))
            .env_remove("COFFER_PASSWORD_FILE")
            .args(args);
        c
    };

    let (mut t_coffer, mut t_basebackup, mut t_pgbackrest) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r_coffer, mut r_basebackup, mut r_pgbackrest) = (Vec::new(), Vec::new(), Vec::new());
    let (mut s_coffer, mut s_basebackup, mut s_pgbackrest) = (0, 0, 0);
    let restore = work.join("restore");
    for run in 0..runs {
        eprintln!("run {} of {runs} ...", run + 1);
        // coffer, into a fresh repository each run.
        let repo = work.join(format!("coffer-repo{run}"));
        remove(&repo)?;
        output_ok(&mut coffer(&repo, &["init", "--kdf-memory-mib", "8"]), "coffer init")?;
        t_coffer.push(timed(&mut coffer(&repo, &["backup", "postgres", "--set", &url]), "coffer backup")?);
        s_coffer = dir_size(&repo);
        fresh_dir(&restore)?;
        let t = Instant::now();
        output_ok(
            &mut coffer(&repo, &["restore", "latest", "--target", restore.to_str().expect("UTF-8")]),
            "coffer restore",
        )?;
        sync()?;
        r_coffer.push(t.elapsed().as_secs_f64());
        if run == 0 {
            check_restored(&restore, &sock, &accounts, "coffer")?;
        }

        // pg_basebackup -Ft: base.tar and pg_wal.tar.
        let tars = work.join(format!("basebackup{run}"));
        remove(&tars)?;
        t_basebackup.push(timed(
            as_postgres(&format!("{BIN}/pg_basebackup"))
                .arg("-h")
                .arg(&sock)
                .args(["-p", &pg.port.to_string(), "-U", "postgres", "-Ft", "-c", "fast", "-D"])
                .arg(&tars),
            "pg_basebackup",
        )?);
        s_basebackup = dir_size(&tars);
        fresh_dir(&restore)?;
        let t = Instant::now();
        output_ok(as_postgres("tar").arg("-xf").arg(tars.join("base.tar")).arg("-C").arg(&restore), "tar -xf")?;
        output_ok(
            as_postgres("tar").arg("-xf").arg(tars.join("pg_wal.tar")).arg("-C").arg(restore.join("pg_wal")),
            "tar -xf pg_wal.tar",
        )?;
        sync()?;
        r_basebackup.push(t.elapsed().as_secs_f64());
        if run == 0 {
            check_restored(&restore, &sock, &accounts, "pg_basebackup")?;
        }

        // pgBackRest full backup, then a restore of it.
        let before = dir_size(&work.join("pgbackrest-repo"));
        t_pgbackrest.push(timed(&mut pgbackrest(&["--type=full", "backup"]), "pgbackrest backup")?);
        s_pgbackrest = dir_size(&work.join("pgbackrest-repo")) - before;
        fresh_dir(&restore)?;
        let t = Instant::now();
        output_ok(
            &mut pgbackrest(&[&format!("--pg1-path={}", restore.display()), "--archive-mode=off", "restore"]),
            "pgbackrest restore",
        )?;
        sync()?;
        r_pgbackrest.push(t.elapsed().as_secs_f64());
        if run == 0 {
            check_restored(&restore, &sock, &accounts, "pgBackRest")?;
        }
        fresh_dir(&restore)?;
    }

    // What coffer stores for an unchanged and a slightly changed cluster.
    let repo = work.join("coffer-repo0");
    let new_bytes = |out: &Output| -> Result<u64> {
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find("\"new_bytes\"").context("no new_bytes in the backup's JSON")? + 11;
        let rest = text[at..].trim_start().trim_start_matches(':').trim_start();
        Ok(rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse()?)
    };
    let unchanged =
        new_bytes(&output_ok(&mut coffer(&repo, &["--json", "backup", "postgres", "--set", &url]), "coffer backup")?)?;
    pg.pgbench(&["-t", "2000", "-c", "2"])?;
    let changed =
        new_bytes(&output_ok(&mut coffer(&repo, &["--json", "backup", "postgres", "--set", &url]), "coffer backup")?)?;
    pg.stop();

    let (c, b, p) = (median(t_coffer), median(t_basebackup), median(t_pgbackrest));
    let (rc, rb, rp) = (median(r_coffer), median(r_basebackup), median(r_pgbackrest));
    let mb = db_bytes as f64 / 1e6;
    println!("postgres bench: pgbench scale {scale}, databases {mb:.0} MB, medians of {runs}\n");
    println!("| measure | coffer | pg_basebackup -Ft | pgBackRest (zst, aes-256-cbc, process-max 2) |");
    println!("|---|---:|---:|---:|");
    println!("| full backup (s) | {c:.2} | {b:.2} | {p:.2} |");
    println!("| full backup (MB/s of databases) | {:.0} | {:.0} | {:.0} |", mb / c, mb / b, mb / p);
    println!("| coffer / peer (backup) | | {:.2}x | {:.2}x |", c / b, c / p);
    println!("| restore incl. sync (s) | {rc:.2} | {rb:.2} (tar -xf) | {rp:.2} |");
    println!("| coffer / peer (restore) | | {:.2}x | {:.2}x |", rc / rb, rc / rp);
    println!(
        "| stored after one full backup (MB) | {:.0} | {:.0} | {:.0} |",
        s_coffer as f64 / 1e6,
        s_basebackup as f64 / 1e6,
        s_pgbackrest as f64 / 1e6
    );
    println!("| coffer re-backup, unchanged: new data (MB) | {:.1} | | |", unchanged as f64 / 1e6);
    println!("| coffer re-backup after 4,000 pgbench transactions: new data (MB) | {:.1} | | |", changed as f64 / 1e6);
    Ok(())
}
