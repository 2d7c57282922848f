//! Trees as operators really have them, through the `coffer` binary: names
//! that are not UTF-8 and files the backup may not read (saved, but exit
//! status 4), a directory removed and a file written to while the backup
//! runs (warnings and counts, not a failed backup), sparse files (restored
//! with their holes), and the messages of a restore stopped by SIGTERM, a
//! restore without the rights to overwrite, and a damaged `config`.

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestRepo, coffer_bin, stderr};

use coffer_test_support::random_bytes;

/// Hands the repository, the cache and everything under the test's temp
/// dir to the user `nobody`, except what `keep_root` names (tests run as
/// root, which may read and write anything).
fn hand_to_nobody(t: &TestRepo, keep_root: &[&Path]) {
    fs::create_dir_all(t.dir.path().join("cache")).unwrap();
    fs::set_permissions(t.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("chown").args(["-R", "65534:65534"]).arg(&t.url).arg(t.dir.path().join("cache")).status();
    assert!(st.unwrap().success());
    for p in keep_root {
        let st = Command::new("chown").args(["-R", "0:0"]).arg(p).status();
        assert!(st.unwrap().success());
    }
}

/// `coffer ARGS` as the user `nobody`, with the test repository's
/// environment.
fn coffer_as_nobody(t: &TestRepo, args: &[&str]) -> Output {
    let env = t.cmd();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(coffer_bin()).args(args);
    for (k, v) in env.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Names that are not UTF-8, a file and a directory the backup may not
/// read: the snapshot is saved with the rest, and the backup says how many
/// were left out and ends with exit status 4, never 0.
#[test]
fn files_left_out_make_the_backup_exit_4_with_the_count() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(src.join("closed")).unwrap();
    fs::write(src.join("kept.txt"), b"kept").unwrap();
    fs::write(src.join(OsStr::from_bytes(b"caf\xe9.txt")), b"a Latin-1 name").unwrap();
    fs::write(src.join("secret"), b"root only").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(src.join("closed/inside"), b"x").unwrap();
    fs::set_permissions(src.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    hand_to_nobody(&t, &[&src]);
    let path = format!("path={}", src.display());
    let out = coffer_as_nobody(&t, &["backup", "files", "--set", &path]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("3 files or directories") && err.contains("left out"), "{err}");
    assert!(err.contains("secret") && err.contains("closed") && err.contains("UTF-8"), "{err}");
    // The snapshot holds the rest, and its summary the count.
    let snaps = t.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["summary"]["left_out"], 3, "{snaps}");
    let ls = t.ok(&["ls", "latest"]);
    assert!(ls.contains("kept.txt"), "{ls}");
    // JSON output carries the count, with the same exit status.
    let out = coffer_as_nobody(&t, &["--json", "backup", "files", "--set", &path]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(json_of(&out)["summary"]["left_out"], 3, "{}", stderr(&out));
}

/// The pid's open files, as paths.
fn open_files(pid: u32) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    rd.flatten().filter_map(|e| fs::read_link(e.path()).ok()).collect()
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// A directory removed and a file appended to while the backup runs: both
/// are warnings, counted in the summary (text and JSON), and the snapshot
/// is saved with exit status 0. The backup is paused (SIGSTOP) while it
/// reads the big file, so the changes land exactly then.
#[test]
fn a_tree_that_changes_during_the_backup_is_saved_with_warnings_and_counts() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(src.join("b_dir/deeper")).unwrap();
    fs::write(src.join("b_dir/one"), b"one").unwrap();
    fs::write(src.join("b_dir/deeper/two"), b"two").unwrap();
    fs::write(src.join("c_after"), b"after").unwrap();
    // Read first (names sort), and alone in its batch (over 64 MiB).
    let block = random_bytes(1 << 20, 7);
    let mut big = fs::File::create(src.join("a_big")).unwrap();
    for _ in 0..66 {
        big.write_all(&block).unwrap();
    }
    drop(big);
    let mut child = t
        .cmd()
        .args(["backup", "files", "--set", &format!("path={}", src.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    loop {
        if open_files(pid).iter().any(|p| p.ends_with("src/a_big")) {
            signal(pid, "-STOP");
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the backup ended before it read a_big");
        assert!(started.elapsed() < Duration::from_secs(60), "the backup never opened a_big");
        std::thread::sleep(Duration::from_micros(200));
    }
    fs::remove_dir_all(src.join("b_dir")).unwrap();
    fs::OpenOptions::new().append(true).open(src.join("a_big")).unwrap().write_all(b"appended").unwrap();
    signal(pid, "-CONT");
    let out = child.wait_with_output().unwrap();
    let (text, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("b_dir") && err.contains("vanished"), "{err}");
    assert!(err.contains("a_big") && err.contains("changed while it was read"), "{err}");
    assert!(
        text.contains("1 file or directory vanished during the backup, 1 file changed while they were read"),
        "{text}"
    );
    // The snapshot's summary (and so `--json`) counts both.
    let snaps = t.json(&["snapshots"]);
    let summary = &snaps[0]["summary"];
    assert_eq!(summary["vanished"], 1, "{snaps}");
    assert_eq!(summary["changed_while_read"], 1, "{snaps}");
    assert_eq!(summary["left_out"], 0, "{snaps}");
    let ls = t.ok(&["ls", "latest"]);
    assert!(ls.contains("a_big") && ls.contains("c_after") && !ls.contains("b_dir"), "{ls}");
    // A quiet tree: no such line, and 0 in `--json`.
    let v = t.json(&["backup", "files", "--set", &format!("path={}", src.display())]);
    assert_eq!(v["summary"]["vanished"], 0);
    assert_eq!(v["summary"]["changed_while_read"], 0);
}

/// A 64 MiB file holding 1 MiB of data comes back with the same bytes and
/// about 1 MiB allocated, not 64.
#[test]
fn sparse_files_are_restored_with_their_holes() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(1 << 20, 11);
    let mut f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.seek(SeekFrom::Start(32 << 20)).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    assert!(allocated(&src.join("sparse")) < 4 << 20, "this file system makes no holes");
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    let (a, b) = (fs::read(src.join("sparse")).unwrap(), fs::read(dst.join("sparse")).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the restored bytes differ");
    let got = allocated(&dst.join("sparse"));
    assert!(got < 3 << 20, "the restored file takes {got} bytes on disk, not about 1 MiB");
}

/// A restore stopped by SIGTERM says that the target holds a partial tree,
/// and where, and exits 130.
#[test]
fn a_restore_stopped_by_sigterm_says_the_target_holds_a_partial_tree() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        fs::write(src.join(format!("f{i:02}")), random_bytes(8 << 20, 100 + i)).unwrap();
    }
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let dst = t.dir.path().join("dst");
    let mut child = t
        .cmd()
        .args(["restore", "latest", "--target", dst.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while fs::read_dir(&dst).map_or(true, |mut d| d.next().is_none()) {
        assert!(child.try_wait().unwrap().is_none(), "the restore ended before it wrote anything");
        assert!(started.elapsed() < Duration::from_secs(60), "the restore never wrote anything");
        std::thread::sleep(Duration::from_micros(200));
    }
    signal(child.id(), "-TERM");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains(dst.to_str().unwrap()) && err.contains("partial"), "{err}");
}

/// `restore --force` over files the user may not remove names the real
/// reason, without a WASI error number that reads as another error
/// ("os error 2" is "no such file" on Linux).
#[test]
fn restore_force_without_rights_says_permission_denied_without_a_wrong_errno() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"from the snapshot").unwrap();
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let dst = t.dir.path().join("dst");
    fs::create_dir_all(&dst).unwrap();
    fs::write(dst.join("f"), b"root's file").unwrap();
    hand_to_nobody(&t, &[&dst]);
    let out = coffer_as_nobody(&t, &["restore", "latest", "--target", dst.to_str().unwrap(), "--force"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!err.contains("os error"), "a WASI error number is not the host's: {err}");
    assert_eq!(fs::read(dst.join("f")).unwrap(), b"root's file");
}

/// A damaged `config` is damage (exit 3), and the advice is one that
/// works: `check` cannot open the repository either, so it must not be
/// what the message suggests.
#[test]
fn a_damaged_config_exits_3_with_advice_that_works() {
    let t = TestRepo::new();
    fs::write(Path::new(&t.url).join("config"), b"\x00garbage{{ not json").unwrap();
    for args in [&["snapshots"][..], &["check", "--read-data"][..]] {
        let out = t.coffer(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("config") && err.contains("copy of the repository"), "{args:?}: {err}");
        assert!(!err.contains("check --read-data"), "{args:?}: advice that fails the same way: {err}");
    }
}
