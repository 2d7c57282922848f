//! The postgres plugin against real PostgreSQL 15 clusters (Debian's
//! `postgresql`, initialized with `initdb` in temp dirs and started on free
//! loopback ports): base backups over SCRAM-authenticated replication
//! connections of a pgbench database, `coffer wal push` (the postgres
//! plugin's `stream_push`) as the cluster's
//! `archive_command`, full and point-in-time restores started with the stock
//! `postgres` and compared table by table, manifest verification, and bad
//! input.
//!
//! PostgreSQL refuses to run as root, so the clusters, their repository and
//! every `coffer` command here run as the `postgres` user (`runuser`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{PASSWORD, coffer_bin, stderr};

pub(crate) const BIN: &str = "/usr/lib/postgresql/15/bin";
/// Password of the `backup` role (SCRAM-SHA-256).
const BACKUP_PW: &str = "s3cret-backup-pw";

pub(crate) fn free_port() -> u16 {
    coffer_test_support::free_port().expect("a free port on 127.0.0.1")
}

pub(crate) fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", program]);
    c
}

pub(crate) fn run_ok(c: &mut Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn chown_postgres(p: &Path) {
    run_ok(Command::new("chown").args(["-R", "postgres:postgres"]).arg(p), "chown");
}

/// A temp dir the `postgres` user owns.
pub(crate) fn postgres_tempdir() -> tempfile::TempDir {
    assert!(
        Path::new(BIN).join("postgres").exists(),
        "PostgreSQL 15 is missing: `cargo xtask deps` installs Debian's postgresql"
    );
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_postgres(t.path());
    t
}

/// A repository in `root`, used as the `postgres` user.
pub(crate) struct Repo {
    pub(crate) url: String,
    pub(crate) password_file: PathBuf,
    pub(crate) cache: PathBuf,
}

impl Repo {
    fn new(root: &Path) -> Repo {
        let password_file = root.join("repo.pw");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        chown_postgres(&password_file);
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let r = Repo { url: root.join("repo").display().to_string(), password_file, cache: root.join("cache") };
        r.ok(&["init"]);
        r
    }

    /// A repository that exists at `url` (owned by the `postgres` user).
    pub(crate) fn existing(root: &Path, url: &Path, password_file: &Path) -> Repo {
        Repo { url: url.display().to_string(), password_file: password_file.to_path_buf(), cache: root.join("cache") }
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = as_postgres(coffer_bin().to_str().unwrap());
        c.env("COFFER_REPO", &self.url)
            .env("COFFER_PASSWORD_FILE", &self.password_file)
            .env("COFFER_CACHE_DIR", &self.cache)
            .env_remove("COFFER_PASSWORD")
            .env_remove("COFFER_LOG");
        c
    }

    pub(crate) fn coffer(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd().args(args), &format!("coffer {args:?}"))
    }

    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn snapshot_count(&self) -> usize {
        self.json(&["snapshots"]).as_array().map_or(0, Vec::len)
    }

    /// `archive_command` for a cluster.
    fn archive_command(&self) -> String {
        format!(
            "{} --repo {} --password-file {} --quiet wal push %p",
            coffer_bin().display(),
            self.url,
            self.password_file.display()
        )
    }
}

/// A PostgreSQL cluster in a temp dir, stopped on drop.
pub(crate) struct Cluster {
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    cache: PathBuf,
}

impl Cluster {
    /// `initdb` with SCRAM for TCP connections (local socket: trust), then
    /// `conf` appended to postgresql.conf, then started.
    fn new(root: &Path, name: &str, conf: &[(&str, String)]) -> Cluster {
        let data = root.join(name);
        let sock = root.join(format!("{name}.sock"));
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(&sock);
        let pwfile = root.join(format!("{name}.superuser.pw"));
        std::fs::write(&pwfile, "superuser-pw\n").unwrap();
        chown_postgres(&pwfile);
        run_ok(
            as_postgres(&format!("{BIN}/initdb"))
                .args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth-local=trust"])
                .args(["--auth-host=scram-sha-256", "--pwfile", pwfile.to_str().unwrap(), "--no-sync"]),
            "initdb",
        );
        let port = free_port();
        let mut text = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\ntimezone = 'UTC'\n\
             fsync = off\nmax_wal_senders = 5\n",
            sock.display()
        );
        for (k, v) in conf {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        let c = Cluster { data, sock, port, cache: root.join("cache") };
        c.start();
        c
    }

    /// A cluster over an existing (restored) data directory, on a new port.
    pub(crate) fn over(root: &Path, data: &Path) -> Cluster {
        let sock = root.join(format!("{}.sock", data.file_name().unwrap().to_str().unwrap()));
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(&sock);
        Cluster { data: data.to_path_buf(), sock, port: free_port(), cache: root.join("cache") }
    }

    pub(crate) fn start(&self) {
        let opts = format!("-p {} -k {}", self.port, self.sock.display());
        let log = self.data.with_extension("log");
        run_ok(
            as_postgres(&format!("{BIN}/pg_ctl"))
                .env("COFFER_CACHE_DIR", &self.cache)
                .args(["-D", self.data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "120", "-o", &opts])
                .arg("start"),
            &format!("pg_ctl start ({})", log.display()),
        );
    }

    pub(crate) fn stop(&self) {
        let _ = as_postgres(&format!("{BIN}/pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "fast", "-w", "stop"])
            .output();
    }

    pub(crate) fn psql(&self, sql: &str) -> String {
        run_ok(
            as_postgres(&format!("{BIN}/psql"))
                .args(["-h", self.sock.to_str().unwrap(), "-p", &self.port.to_string(), "-U", "postgres"])
                .args(["-d", "postgres", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]),
            &format!("psql {sql:?}"),
        )
        .trim()
        .to_string()
    }

    fn pgbench(&self, args: &[&str]) {
        run_ok(
            as_postgres(&format!("{BIN}/pgbench"))
                .args(["-h", self.sock.to_str().unwrap(), "-p", &self.port.to_string(), "-U", "postgres"])
                // Quiet progress while loading (-q is for -i only).
                .args(if args.contains(&"-i") { &["-q"][..] } else { &[] })
                .args(args)
                .arg("postgres"),
            &format!("pgbench {args:?}"),
        );
    }

    fn url(&self, user: &str) -> String {
        format!("url=postgres://{user}@127.0.0.1:{}/", self.port)
    }

    /// Every pgbench table, as one digest.
    fn tables(&self) -> String {
        self.psql(
            "select (select md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts) || '/' \
             || (select md5(string_agg(bid || ':' || bbalance, ',' order by bid)) from pgbench_branches) || '/' || \
             (select md5(string_agg(tid || ':' || tbalance, ',' order by tid)) from pgbench_tellers) || '/' || \
             (select count(*) || ':' || coalesce(sum(delta), 0) from pgbench_history)",
        )
    }

    /// Switches to a new WAL segment and waits until the old one is archived.
    fn archive_current_wal(&self) {
        let name = self.psql("select pg_walfile_name(pg_current_wal_lsn())");
        self.psql("select pg_switch_wal()");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            if last.as_str() >= name.as_str() && last.len() == 24 {
                return;
            }
            let failed = self.psql("select failed_count || ' ' || coalesce(last_failed_wal, '') from pg_stat_archiver");
            assert!(Instant::now() < deadline, "WAL {name} was not archived (last {last:?}, failed {failed})");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn wait_promoted(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.psql("select pg_is_in_recovery()") != "f" {
            assert!(Instant::now() < deadline, "the restored cluster did not finish recovery");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = as_postgres(&format!("{BIN}/pg_ctl"))
                .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A primary that archives into `repo`, with the `backup` role.
fn primary(root: &Path, repo: &Repo) -> Cluster {
    let c = Cluster::new(
        root,
        "primary",
        &[("archive_mode", "on".into()), ("archive_command", format!("'{}'", repo.archive_command()))],
    );
    c.psql(&format!("create role backup with login replication password '{BACKUP_PW}'"));
    c
}

fn backup_pw_file(root: &Path) -> String {
    let f = root.join("backup.pw");
    std::fs::write(&f, format!("{BACKUP_PW}\n")).unwrap();
    chown_postgres(&f);
    format!("password_file={}", f.display())
}

/// A new restore target the postgres user owns.
pub(crate) fn target(root: &Path, name: &str) -> PathBuf {
    let t = root.join(name);
    std::fs::create_dir(&t).unwrap();
    chown_postgres(&t);
    t
}

#[test]
fn pgbench_backup_then_full_and_point_in_time_restores_match_the_tables() {
    let tmp = postgres_tempdir();
    let root = tmp.path();
    let repo = Repo::new(root);
    let pg = primary(root, &repo);
    pg.pgbench(&["-i", "-s", "3"]);
    // A table nothing writes to after the first backup.
    pg.psql("create table cold as select g, md5(g::text) as h from generate_series(1, 200000) g");
    let cold: u64 = pg.psql("select pg_relation_size('cold')").parse().unwrap();
    pg.psql("checkpoint");
    let at_backup = pg.tables();
    let pw = backup_pw_file(root);

    // A base backup over SCRAM: attributes, the manifest entry, the WAL.
    let first = repo.json(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw]);
    let id = first["id"].as_str().unwrap().to_string();
    // The same cluster again, unchanged: little more than the new WAL.
    let again = repo.json(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw]);
    let (bytes, new) = (again["summary"]["bytes"].as_u64().unwrap(), again["summary"]["new_bytes"].as_u64().unwrap());
    assert!(new * 4 < bytes, "the unchanged re-backup added {new} of {bytes} bytes");
    let snaps = repo.json(&["snapshots"]);
    let m = snaps.as_array().unwrap().iter().find(|s| s["id"] == id.as_str()).expect("the first snapshot is listed");
    let attrs = &m["attributes"];
    let sysid = pg.psql("select system_identifier from pg_control_system()");
    assert_eq!(attrs["pg.system-identifier"], sysid.as_str(), "{m}");
    // It declares the WAL it needs: its stream from its start segment on.
    let need = &m["streams"][0];
    assert_eq!(
        (need["owner"].as_str(), need["stream"].as_str()),
        (Some("builtin-postgres"), Some(&*format!("pg-{sysid}")))
    );
    let (hi, lo) = attrs["pg.start-lsn"].as_str().unwrap().split_once('/').unwrap();
    let start = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let seg: u64 = attrs["pg.wal-segment-size"].as_str().unwrap().parse().unwrap();
    assert_eq!(need["from"], start / seg * seg, "{m}");
    assert_eq!(attrs["pg.timeline"], "1");
    assert_eq!(attrs["pg.server-version-num"].as_str().unwrap().len(), 6);
    assert!(attrs["pg.start-lsn"].as_str().unwrap().contains('/'));
    assert!(attrs["pg.start-time"].as_str().unwrap().ends_with("UTC"), "{attrs}");
    let text = serde_json::to_string(m).unwrap();
    assert!(!text.contains(BACKUP_PW), "the password is not in the snapshot: {text}");
    let ls = repo.ok(&["ls", &id]);
    for path in ["backup_manifest", "backup_label", "global/pg_control", "PG_VERSION", "pg_wal/000000"] {
        assert!(ls.contains(path), "{path} in the snapshot:\n{ls}");
    }
    repo.ok(&["verify", &id]);

    // Writes; the time T and the tables at T; more writes; WAL archived.
    pg.pgbench(&["-t", "300", "-c", "2"]);
    let at_t = pg.tables();
    let t = pg.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    pg.pgbench(&["-t", "300", "-c", "2"]);
    // A transaction id, then a WAL position, each with the tables there.
    let xid = pg.psql(
        "begin; update pgbench_branches set bbalance = bbalance + 1 where bid = 1; select pg_current_xact_id(); commit;",
    );
    let at_xid = pg.tables();
    pg.pgbench(&["-t", "100"]);
    let lsn = pg.psql("select pg_current_wal_lsn()");
    let at_lsn = pg.tables();
    pg.pgbench(&["-t", "300", "-c", "2"]);
    let at_end = pg.tables();
    for (a, b) in [(&at_backup, &at_t), (&at_t, &at_xid), (&at_xid, &at_lsn), (&at_lsn, &at_end)] {
        assert_ne!(a, b, "each point differs from the next");
    }
    pg.archive_current_wal();

    // A backup of the changed cluster stores the files pgbench did not
    // touch (other databases, catalogs, the cold table) only once. pgbench
    // updates rows all over its tables, so most of their chunks change.
    let second = repo.json(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw]);
    let (bytes, new) = (second["summary"]["bytes"].as_u64().unwrap(), second["summary"]["new_bytes"].as_u64().unwrap());
    assert!(new + cold < bytes, "the changed backup added {new} of {bytes} bytes, cold data {cold}");
    // The summary says how much was new.
    let out = repo.ok(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw]);
    assert!(out.contains("added") && out.contains("new data"), "{out}");

    // Full restore of the first backup: consistent at its end.
    let full = target(root, "full");
    repo.ok(&["restore", &id, "--target", full.to_str().unwrap(), "--set", "archive_mode=off"]);
    assert_eq!(std::fs::metadata(&full).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!full.join("recovery.signal").exists());
    // The untouched restored directory matches the manifest.
    let out = repo.ok(&["verify", &id, "--set", &format!("data_dir={}", full.display())]);
    assert!(out.contains("no problems"), "{out}");
    let c = Cluster::over(root, &full);
    c.start();
    assert_eq!(c.tables(), at_backup, "a full restore holds the tables as they were at the backup");
    c.stop();

    // Point in time: T.
    let pitr = target(root, "pitr");
    let out = repo.ok(&[
        "restore",
        &id,
        "--target",
        pitr.to_str().unwrap(),
        "--set",
        &format!("to_time={t}"),
        "--set",
        "archive_mode=off",
    ]);
    assert!(out.contains("restored snapshot"), "{out}");
    assert!(pitr.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(pitr.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("recovery_target_time"), "{auto}");
    // restore_command is coffer's fetch command for the snapshot's stream.
    assert!(
        auto.contains(&format!(
            "stream fetch --plugin postgres pg-{sysid} %f %p --or-latest-prefix %f.partial. --pad-to"
        )),
        "{auto}"
    );
    assert!(!auto.contains(PASSWORD), "the repository password is not written into the data directory");
    let c = Cluster::over(root, &pitr);
    c.start();
    c.wait_promoted();
    assert_eq!(c.tables(), at_t, "a restore to T holds the tables as they were at T");
    c.stop();

    // To the transaction id (inclusive: its update is in), and to the LSN.
    for (name, set, want) in [("xid", format!("to_xid={xid}"), &at_xid), ("lsn", format!("to_lsn={lsn}"), &at_lsn)] {
        let dir = target(root, &format!("pitr-{name}"));
        repo.ok(&["restore", &id, "--target", dir.to_str().unwrap(), "--set", &set, "--set", "archive_mode=off"]);
        let c = Cluster::over(root, &dir);
        c.start();
        c.wait_promoted();
        assert_eq!(&c.tables(), want, "a restore with {set} holds the tables as they were there");
        c.stop();
    }

    // A flipped byte, a removed file and a stray one in a restored directory
    // are each found by path.
    let damaged = target(root, "damaged");
    repo.ok(&["restore", &id, "--target", damaged.to_str().unwrap()]);
    let biggest = walk(&damaged.join("base")).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    bytes[4097] ^= 0x01;
    std::fs::write(&biggest, bytes).unwrap();
    std::fs::remove_file(damaged.join("PG_VERSION")).unwrap();
    std::fs::write(damaged.join("global/stray"), b"x").unwrap();
    let out = repo.coffer(&["verify", &id, "--set", &format!("data_dir={}", damaged.display())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}\n{}", stderr(&out));
    let rel = biggest.strip_prefix(&damaged).unwrap().display().to_string();
    assert!(text.contains(&format!("{}: CRC32C checksum", biggest.display())), "{rel}:\n{text}");
    assert!(text.contains(&format!("{}/PG_VERSION: missing", damaged.display())), "{text}");
    assert!(text.contains("global/stray: present"), "{text}");
    assert!(text.contains("3 problems"), "{text}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_nothing_is_written() {
    let tmp = postgres_tempdir();
    let root = tmp.path();
    let repo = Repo::new(root);
    let pg = primary(root, &repo);
    pg.psql("create role plain with login password 'plain-pw'");
    let pw = backup_pw_file(root);
    let fails = |args: &[&str], want: &[&str]| {
        let before = repo.snapshot_count();
        let out = repo.coffer(args);
        let e = stderr(&out);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?} must fail: {e}");
        for w in want {
            assert!(e.contains(w), "{args:?}: expected {w:?} in:\n{e}");
        }
        assert!(!e.contains(BACKUP_PW) && !e.contains("plain-pw"), "no password in messages: {e}");
        assert_eq!(repo.snapshot_count(), before, "{args:?} saved nothing");
    };
    // Nobody listening.
    let nobody = format!("url=postgres://backup@127.0.0.1:{}/", free_port());
    fails(
        &["backup", "postgres", "--set", &nobody, "--set", &pw],
        &["cannot connect to PostgreSQL", "nothing was saved"],
    );
    // A wrong password.
    let wrong = root.join("wrong.pw");
    std::fs::write(&wrong, "not-it\n").unwrap();
    chown_postgres(&wrong);
    let wrong = format!("password_file={}", wrong.display());
    fails(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &wrong], &["password"]);
    // No password at all, where the server asks for one.
    fails(&["backup", "postgres", "--set", &pg.url("backup")], &["password"]);
    // A role without REPLICATION.
    let plain = root.join("plain.pw");
    std::fs::write(&plain, "plain-pw\n").unwrap();
    chown_postgres(&plain);
    let plain = format!("password_file={}", plain.display());
    fails(&["backup", "postgres", "--set", &pg.url("plain"), "--set", &plain], &["REPLICATION", "ALTER ROLE"]);
    // A URL that is not PostgreSQL's.
    fails(&["backup", "postgres", "--set", "url=mysql://u@127.0.0.1:3306/"], &["url"]);

    // wal_level = minimal.
    let minimal = Cluster::new(
        root,
        "minimal",
        &[("wal_level", "minimal".into()), ("max_wal_senders", "0".into()), ("archive_mode", "off".into())],
    );
    minimal.psql(&format!("create role backup with login replication password '{BACKUP_PW}'"));
    fails(&["backup", "postgres", "--set", &minimal.url("backup"), "--set", &pw], &["wal_level"]);
    drop(minimal);

    // A tablespace outside the data directory is refused, naming where it is.
    let ts = root.join("tablespace");
    std::fs::create_dir(&ts).unwrap();
    chown_postgres(&ts);
    pg.psql(&format!("create tablespace elsewhere location '{}'", ts.display()));
    fails(
        &["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw],
        &["tablespaces outside its data directory", ts.to_str().unwrap()],
    );
    pg.psql("drop tablespace elsewhere");

    // A backup to restore from, and WAL after it.
    pg.pgbench(&["-i", "-s", "1"]);
    let snap = repo.json(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw]);
    let id = snap["id"].as_str().unwrap().to_string();
    pg.pgbench(&["-t", "50"]);
    pg.archive_current_wal();

    // A target that is not empty is left as it was.
    let busy = target(root, "busy");
    std::fs::write(busy.join("keep.txt"), b"mine").unwrap();
    fails(&["restore", &id, "--target", busy.to_str().unwrap()], &["not empty"]);
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    assert_eq!(std::fs::read(busy.join("keep.txt")).unwrap(), b"mine");

    // Targets before the backup's end, or past the archive.
    let empty = target(root, "empty");
    let t = empty.to_str().unwrap();
    fails(&["restore", &id, "--target", t, "--set", "to_time=2001-01-01 00:00:00"], &["before the end of base backup"]);
    fails(&["restore", &id, "--target", t, "--set", "to_lsn=0/100"], &["before the end of base backup"]);
    fails(&["restore", &id, "--target", t, "--set", "to_lsn=7F/0"], &["beyond the archived WAL"]);
    fails(&["restore", &id, "--target", t, "--set", "to_time=2999-01-01 00:00:00"], &["after the archived WAL"]);
    fails(&["restore", &id, "--target", t, "--set", "to_time=tomorrow"], &["to_time"]);
    fails(&["restore", &id, "--target", t, "--set", "to_xid=1000", "--set", "to_end=true"], &["one recovery target"]);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "nothing was restored");
}

/// `coffer stream follow` on a replication slot, started as the `postgres`
/// user like the other commands.
fn follow(repo: &Repo, pg: &Cluster, pw: &str) -> std::process::Child {
    repo.cmd()
        .args(["stream", "follow", "--plugin", "postgres", "--set", &pg.url("backup"), "--set", pw])
        .args(["--set", "slot=coffer", "--set", "create_slot=true", "--set", "partial_interval=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("coffer runs")
}

/// Sends `sig` to the coffer a [`follow`] child runs (under `runuser`,
/// which does not pass signals on).
fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("pkill").args([sig, "-P", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "pkill {sig} -P {}", child.id());
}

/// The highest WAL position the stream holds (a whole segment's end, or a
/// partial copy's), as the listing gives it.
fn stored_end(repo: &Repo, stream: &str, segment_size: u64) -> u64 {
    let items = repo.json(&["stream", "list", "--plugin", "postgres", stream]);
    items
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| {
            let key = i["key"].as_str()?;
            let pos = i["position"].as_u64()?;
            // A whole segment's position is its start; a partial copy's is
            // where it ends.
            if key.len() == 24 { Some(pos + segment_size) } else { key.contains(".partial.").then_some(pos) }
        })
        .max()
        .unwrap_or(0)
}

fn lsn_of(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn follow_streams_wal_under_load_survives_kill_9_and_recovers_to_the_last_commit() {
    let tmp = postgres_tempdir();
    let root = tmp.path();
    let repo = Repo::new(root);
    // No archive_command: the follower alone keeps the WAL.
    let pg = Cluster::new(root, "primary", &[("max_replication_slots", "4".into())]);
    pg.psql(&format!("create role backup with login replication password '{BACKUP_PW}'"));
    let pw = backup_pw_file(root);
    let sysid = pg.psql("select system_identifier from pg_control_system()");
    let stream = format!("pg-{sysid}");
    let seg: u64 = pg.psql("select setting from pg_settings where name = 'wal_segment_size'").parse().unwrap();

    let mut f = follow(&repo, &pg, &pw);
    pg.pgbench(&["-i", "-s", "2"]);
    let base = repo.json(&["backup", "postgres", "--set", &pg.url("backup"), "--set", &pw]);
    let id = base["id"].as_str().unwrap().to_string();
    // The slot exists and is the follower's.
    assert_eq!(pg.psql("select count(*) from pg_replication_slots where slot_name = 'coffer'"), "1");

    // Load, a kill -9 of the follower in the middle, a new follower.
    pg.pgbench(&["-T", "3", "-c", "2"]);
    signal(&f, "-KILL");
    let _ = f.wait();
    pg.pgbench(&["-T", "2", "-c", "2"]);
    f = follow(&repo, &pg, &pw);
    pg.pgbench(&["-T", "3", "-c", "2"]);
    // The last committed transaction, its position and the tables then.
    pg.psql("create table last_commit as select 42 as answer");
    let committed = lsn_of(&pg.psql("select pg_current_wal_flush_lsn()"));
    let at_end = pg.tables();
    let t0 = Instant::now();
    while stored_end(&repo, &stream, seg) < committed {
        assert!(t0.elapsed() < Duration::from_secs(60), "the follower did not store WAL up to the last commit");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rpo = t0.elapsed();
    eprintln!("follow: WAL up to the last commit stored {} ms after it committed", rpo.as_millis());
    // The primary is lost.
    drop(pg);
    signal(&f, "-INT");
    let out = f.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // The stream has no gap from the base backup on (verify reads it), and
    // a restore to the end of the stream recovers the last commit.
    let v = repo.coffer(&["verify", &id]);
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "{text}\n{}", stderr(&v));
    assert!(!text.contains("gap"), "{text}");
    let dir = target(root, "recovered");
    repo.ok(&["restore", &id, "--target", dir.to_str().unwrap(), "--set", "to_end=true", "--set", "archive_mode=off"]);
    let c = Cluster::over(root, &dir);
    c.start();
    c.wait_promoted();
    assert_eq!(c.psql("select answer from last_commit"), "42", "the last committed transaction is recovered");
    assert_eq!(c.tables(), at_end);
    c.stop();
    let check = repo.coffer(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn base_backup_and_wal_follow_over_verify_full_tls_with_certificate_login() {
    let tmp = postgres_tempdir();
    let root = tmp.path();
    let pki = crate::pki::Pki::new();
    // The `backup` role logs in with a client certificate (CN=backup).
    pki.client("backup");
    chown_postgres(pki.dir.path());
    std::fs::set_permissions(pki.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(pki.path("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let repo = Repo::new(root);
    let pg = Cluster::new(
        root,
        "primary",
        &[
            ("max_replication_slots", "4".into()),
            ("ssl", "on".into()),
            ("ssl_cert_file", format!("'{}'", pki.path_str("server.pem"))),
            ("ssl_key_file", format!("'{}'", pki.path_str("server.key"))),
            ("ssl_ca_file", format!("'{}'", pki.path_str("ca.pem"))),
        ],
    );
    pg.psql("create role backup with login replication");
    // TCP without TLS is refused outright, and `backup` logs in only with
    // its certificate.
    let hba = pg.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostnossl all all 0.0.0.0/0 reject\nhostnossl replication all 0.0.0.0/0 reject\nhostssl replication backup 127.0.0.1/32 cert\nhostssl all \
             backup 127.0.0.1/32 cert\n{old}"
        ),
    )
    .unwrap();
    pg.psql("select pg_reload_conf()");

    let url = format!("url=postgres://backup@localhost:{}/", pg.port);
    let tls: Vec<String> = vec![
        "--set".into(),
        "sslmode=verify-full".into(),
        "--set".into(),
        format!("ca_file={}", pki.path_str("ca.pem")),
        "--set".into(),
        format!("cert_file={}", pki.path_str("backup.pem")),
        "--set".into(),
        format!("key_file={}", pki.path_str("backup.key")),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let sysid = pg.psql("select system_identifier from pg_control_system()");
    let stream = format!("pg-{sysid}");
    let seg: u64 = pg.psql("select setting from pg_settings where name = 'wal_segment_size'").parse().unwrap();

    let f = repo
        .cmd()
        .args(["stream", "follow", "--plugin", "postgres", "--set", &url])
        .args(&tls)
        .args(["--set", "slot=coffer", "--set", "create_slot=true", "--set", "partial_interval=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("coffer runs");
    pg.pgbench(&["-i", "-s", "1"]);
    let mut args = vec!["backup", "postgres", "--set", &url];
    args.extend_from_slice(&tls);
    let base = repo.json(&args);
    let id = base["id"].as_str().unwrap().to_string();
    // Both the base backup's and the follower's connections were TLS.
    pg.psql("create table after_backup as select 7 as answer");
    let committed = lsn_of(&pg.psql("select pg_current_wal_flush_lsn()"));
    let t0 = Instant::now();
    while stored_end(&repo, &stream, seg) < committed {
        assert!(t0.elapsed() < Duration::from_secs(60), "the follower did not store WAL over TLS");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(pg.psql("select count(*) from pg_stat_ssl s join pg_stat_replication r using (pid) where s.ssl"), "1");
    signal(&f, "-INT");
    let out = f.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // verify-full checks the name: the certificate names localhost and
    // 127.0.0.1, not 127.0.0.2; and without the CA the server is unknown.
    let mut no_ca: Vec<&str> = vec!["backup", "postgres", "--set", &url, "--set", "sslmode=verify-full"];
    no_ca.extend_from_slice(&tls[4..]);
    let out = repo.coffer(&no_ca);
    assert!(!out.status.success() && stderr(&out).contains("not signed by a trusted CA"), "{}", stderr(&out));
    // With no sslmode (libpq's `prefer`) a refused certificate means a
    // second try without TLS, said in a warning; this server refuses that.
    let out = repo.coffer(&["backup", "postgres", "--set", &url]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("WITHOUT TLS") && err.contains("pg_hba.conf"), "{err}");

    let dir = target(root, "recovered");
    repo.ok(&["restore", &id, "--target", dir.to_str().unwrap(), "--set", "to_end=true", "--set", "archive_mode=off"]);
    drop(pg);
    let c = Cluster::over(root, &dir);
    c.start();
    c.wait_promoted();
    assert_eq!(c.psql("select answer from after_backup"), "7", "WAL streamed over TLS is recovered");
    c.stop();
}
