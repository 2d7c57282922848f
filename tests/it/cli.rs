//! The `coffer` binary as operators run it: a real directory round-trips
//! byte-identically (content, modes, mtimes, symlinks), incremental and
//! differential parents, JSON output, exit codes, damage found by verify
//! and check, keys, retention, third-party plugins and Ctrl-C.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{self, TestRepo, stderr};

/// What the round-trip compares for each path.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { mode: u32, mtime: (i64, i64), blake3: String },
    Dir { mode: u32, mtime: (i64, i64) },
    Symlink { target: PathBuf },
}

fn scan(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mtime = (md.mtime(), md.mtime_nsec());
            if md.file_type().is_symlink() {
                out.insert(rel, Node::Symlink { target: std::fs::read_link(&p).unwrap() });
            } else if md.is_dir() {
                out.insert(rel, Node::Dir { mode: md.permissions().mode() & 0o7777, mtime });
                walk(root, &p, out);
            } else if md.is_file() {
                let data = std::fs::read(&p).unwrap();
                out.insert(
                    rel,
                    Node::File {
                        mode: md.permissions().mode() & 0o7777,
                        mtime,
                        blake3: blake3::hash(&data).to_hex().to_string(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A small tree with the cases that matter.
fn make_tree(root: &Path) {
    use std::fs;
    fs::create_dir_all(root.join("docs/deep/deeper")).unwrap();
    fs::create_dir_all(root.join("private")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("docs/readme.txt"), b"coffer round-trip\n".repeat(1000)).unwrap();
    let mut big = vec![0u8; 5 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(root.join("docs/deep/random.bin"), &big).unwrap();
    fs::write(root.join("docs/deep/deeper/name with spaces ü.txt"), b"unicode").unwrap();
    fs::write(root.join("private/key"), b"not really a key").unwrap();
    fs::set_permissions(root.join("private/key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    // A FIFO is skipped with a warning.
    let st = std::process::Command::new("mkfifo").arg(root.join("pipe")).status().unwrap();
    assert!(st.success());
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("docs/readme.txt"), t).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    filetime::set_file_mtime(root.join("docs/deep"), filetime::FileTime::from_unix_time(1_500_000_000, 5)).unwrap();
}

#[test]
fn a_real_directory_round_trips_byte_identically() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    make_tree(&src);
    let out = t.coffer(&["backup", "files", "--set", &format!("path={}", src.display())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pipe") && stderr(&out).contains("FIFO"),
        "the FIFO is skipped with a warning: {}",
        stderr(&out)
    );
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    let mut want = scan(&src);
    want.remove("pipe");
    let got = scan(&dst);
    assert_eq!(got, want);
    // Verify reads every entry back.
    let v = t.json(&["verify", "latest"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    assert!(v["bytes"].as_u64().unwrap() >= 5 << 20);
}

#[test]
fn incremental_reuses_unchanged_files_and_differential_starts_from_the_last_full() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    make_tree(&src);
    std::fs::remove_file(src.join("pipe")).unwrap();
    let path = format!("path={}", src.display());
    let first = t.json(&["backup", "files", "--set", &path]);
    assert_eq!(first["kind"], "full");
    std::fs::write(src.join("docs/new.txt"), b"added later").unwrap();
    let second = t.json(&["backup", "files", "--set", &path]);
    assert_eq!(second["kind"], "incremental");
    assert_eq!(second["parent"], first["id"]);
    let s = &second["summary"];
    assert_eq!(s["reused_entries"].as_u64().unwrap(), first["summary"]["files"].as_u64().unwrap());
    assert_eq!(s["bytes_read"].as_u64().unwrap(), 11, "only the new file is read");
    let third = t.json(&["backup", "files", "--differential", "--set", &path]);
    assert_eq!(third["kind"], "differential");
    assert_eq!(third["parent"], first["id"]);
    let full = t.json(&["backup", "files", "--full", "--set", &path]);
    assert_eq!(full["kind"], "full");
    assert!(full["parent"].is_null());
    assert_eq!(full["summary"]["new_blobs"].as_u64().unwrap(), 0, "a full re-read of unchanged data adds nothing");

    let list = t.json(&["snapshots"]);
    let arr = list.as_array().expect("snapshots --json prints an array");
    assert_eq!(arr.len(), 4);
    assert!(
        arr.iter()
            .all(|s| s["id"].is_string() && s["source"] == format!("files:{}", src.canonicalize().unwrap().display()))
    );

    // ls, diff, id prefixes.
    let first_id = first["id"].as_str().unwrap();
    let ls = t.ok(&["ls", &first_id[..8]]);
    assert!(ls.lines().any(|l| l == "docs/deep/random.bin"));
    let diff = t.ok(&["diff", &first_id[..10], "latest"]);
    assert!(diff.contains("+ docs/new.txt"), "{diff}");

    // A changed mode or mtime is a change, even with the same size.
    std::fs::set_permissions(src.join("private/key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let t0 = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_790);
    filetime::set_file_mtime(src.join("docs/readme.txt"), t0).unwrap();
    let fifth = t.json(&["backup", "files", "--set", &path]);
    assert_eq!(fifth["kind"], "incremental");
    let read = fifth["summary"]["bytes_read"].as_u64().unwrap();
    assert_eq!(read, 16 + 18_000, "only the re-moded key and the touched readme are read");
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    assert_eq!(scan(&dst), scan(&src));
}

#[test]
fn restore_refuses_a_non_empty_target_unless_forced() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"snapshot content").unwrap();
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let dst = t.dir.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(dst.join("a"), b"local content").unwrap();
    let out = t.coffer(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read(dst.join("a")).unwrap(), b"local content");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap(), "--force"]);
    assert_eq!(std::fs::read(dst.join("a")).unwrap(), b"snapshot content");
}

fn corrupt_a_pack(repo: &Path) {
    let mut packs = Vec::new();
    for e in walkdir(repo.join("data")) {
        packs.push(e);
    }
    assert!(!packs.is_empty());
    for p in packs {
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 3;
        bytes[mid] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
    }
}

fn walkdir(dir: PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walkdir(p)) } else { out.push(p) }
        }
    }
    out
}

/// A backup that cannot write its packs fails, names the file and the
/// reason, and leaves the repository as it was. The write fails on a file
/// size limit (`ulimit -f`, with SIGXFSZ ignored so that the write returns
/// an error instead of killing the process), where a full disk would fail it.
#[test]
fn a_backup_that_cannot_write_its_packs_leaves_the_repository_as_it_was() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small"), b"first").unwrap();
    let path = format!("path={}", src.display());
    t.ok(&["backup", "files", "--set", &path]);
    // 12 MiB that zstd cannot shrink, more than the 4 MiB limit below.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..12 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(src.join("big"), big).unwrap();
    let coffer = t.cmd();
    let mut limited = std::process::Command::new("bash");
    limited
        .args(["-c", "trap '' XFSZ; ulimit -f 4096; exec \"$@\"", "bash"])
        .arg(coffer.get_program())
        .args(["backup", "files", "--set", &path]);
    for (k, v) in coffer.get_envs() {
        match v {
            Some(v) => limited.env(k, v),
            None => limited.env_remove(k),
        };
    }
    let out = limited.output().unwrap();
    assert!(!out.status.success(), "the backup cannot have succeeded: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("File too large") && err.contains("data/"), "the error names the file and why: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(t.json(&["snapshots"]).as_array().unwrap().len(), 1);
    let left: Vec<_> =
        walkdir(PathBuf::from(&t.url)).into_iter().filter(|p| p.to_string_lossy().contains('#')).collect();
    assert!(left.is_empty(), "no half-written file may stay: {left:?}");
    t.ok(&["check", "--read-data"]);
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    assert_eq!(fs::read(dst.join("small")).unwrap(), b"first");
    assert!(!dst.join("big").exists());
}

#[test]
fn verify_and_check_exit_3_on_damage() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(src.join("big.bin"), &data).unwrap();
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    assert_eq!(t.coffer(&["check", "--read-data"]).status.code(), Some(0));
    corrupt_a_pack(Path::new(&t.url));
    let out = t.coffer(&["verify", "latest"]);
    assert_eq!(out.status.code(), Some(3), "verify: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("big.bin"));
    let out = t.coffer(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(3), "check: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_input_gets_a_clear_error_and_the_right_exit_code() {
    let t = TestRepo::new();
    // Wrong password.
    let out = t.cmd().env("COFFER_PASSWORD", "wrong").args(["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).to_lowercase().contains("password"), "{}", stderr(&out));
    // No repository given.
    let out = t.cmd().env_remove("COFFER_REPO").args(["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("COFFER_REPO"), "{}", stderr(&out));
    // Missing config field, named.
    let out = t.coffer(&["backup", "files"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("path"), "{}", stderr(&out));
    // A directory that does not exist.
    let out = t.coffer(&["backup", "files", "--set", "path=/nonexistent/coffer-src"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/coffer-src"), "{}", stderr(&out));
    // An unknown plugin, a file that is not a component.
    let out = t.coffer(&["backup", "nosuch"]);
    assert!(stderr(&out).contains("no built-in plugin `nosuch`"), "{}", stderr(&out));
    let junk = t.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let out = t.coffer(&["backup", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a WebAssembly file"), "{}", stderr(&out));
    // Unknown snapshot.
    let out = t.coffer(&["ls", "deadbeef"]);
    assert_eq!(out.status.code(), Some(1));
    // Nothing was written by any of it.
    assert_eq!(t.json(&["snapshots"]).as_array().unwrap().len(), 0);
}

#[test]
fn third_party_plugins_load_from_a_file_and_fail_alone() {
    let t = TestRepo::new();
    let wasm = support::hostile_wasm();
    let inspect = t.json(&["plugin", "inspect", wasm]);
    assert_eq!(inspect["name"], "hostile");
    let list = t.json(&["plugin", "list"]);
    assert!(list.as_array().unwrap().iter().any(|p| p["name"] == "files"));
    t.ok(&["backup", wasm, "--set", "mode=ok"]);
    let out = t.coffer(&["backup", wasm, "--set", "mode=panic"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("plugin hostile crashed"), "{}", stderr(&out));
    let out = t.coffer(&["backup", wasm, "--set", "mode=loop", "--time-limit", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("time limit"), "{}", stderr(&out));
    assert_eq!(t.json(&["snapshots"]).as_array().unwrap().len(), 1);
    t.ok(&["check"]);
}

#[test]
fn ctrl_c_stops_the_plugin_and_leaves_the_repository_clean() {
    let t = TestRepo::new();
    let child = t
        .cmd()
        .args(["backup", support::hostile_wasm(), "--set", "mode=loop"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let st = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    assert_eq!(t.json(&["snapshots"]).as_array().unwrap().len(), 0);
    assert!(walkdir(Path::new(&t.url).join("data")).is_empty(), "no pack may be left behind");
    t.ok(&["check"]);
}

#[test]
fn keys_retention_and_prune_through_the_cli() {
    let t = TestRepo::new();
    let keys = t.json(&["key", "list"]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    assert_eq!(keys["epochs"][0]["epoch"], 1, "a new repository starts at key epoch 1: {keys}");
    let added = t.cmd().env("COFFER_NEW_PASSWORD", "second password").args(["--json", "key", "add"]).output().unwrap();
    assert!(added.status.success(), "{}", stderr(&added));
    let out = t.cmd().env("COFFER_PASSWORD", "second password").args(["snapshots"]).output().unwrap();
    assert!(out.status.success(), "the new key opens the repository: {}", stderr(&out));
    // passwd replaces the key in use.
    let out = t.cmd().env("COFFER_NEW_PASSWORD", "third password").args(["key", "passwd"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.coffer(&["snapshots"]);
    assert!(!out.status.success(), "the old password no longer opens it");
    let third = |args: &[&str]| t.cmd().env("COFFER_PASSWORD", "third password").args(args).output().unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&third(&["--json", "key", "list"]).stdout).unwrap();
    let keys = &keys["keys"];
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // The key in use cannot be removed.
    let current =
        keys.as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    let out = third(&["key", "remove", &current[..8]]);
    assert_eq!(out.status.code(), Some(1));

    // Retention: three snapshots, keep the last one, prune.
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join("f"), format!("version {i}").repeat(50_000)).unwrap();
        let out = third(&["backup", "files", "--set", &format!("path={}", src.display())]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = third(&["forget", "--keep-last", "1", "--prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps: serde_json::Value = serde_json::from_slice(&third(&["--json", "snapshots"]).stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let out = third(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let dst = t.dir.path().join("dst");
    assert!(third(&["restore", "latest", "--target", dst.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read(dst.join("f")).unwrap(), "version 2".repeat(50_000).as_bytes());
}

#[test]
fn partial_restore_creates_the_directories_above_the_selected_path() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    make_tree(&src);
    std::fs::remove_file(src.join("pipe")).unwrap();
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap(), "--path", "docs/deep/random.bin"]);
    assert_eq!(
        std::fs::read(dst.join("docs/deep/random.bin")).unwrap(),
        std::fs::read(src.join("docs/deep/random.bin")).unwrap()
    );
    assert!(!dst.join("run.sh").exists() && !dst.join("docs/readme.txt").exists());
}

#[test]
fn setuid_bits_never_come_back_on_root_owned_files() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    let md = std::fs::metadata(dst.join("tool")).unwrap();
    let expected = if md.uid() == 0 { 0o755 } else { 0o4755 };
    assert_eq!(md.permissions().mode() & 0o7777, expected);
}

#[test]
fn a_plugin_never_gets_another_plugins_snapshot_as_parent() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret"), b"files data").unwrap();
    let first = t.json(&["backup", "files", "--set", &format!("path={}", src.display())]);
    let source = first["source"].as_str().unwrap().to_string();
    // A third-party plugin claiming the same source name starts from scratch.
    let other = t.json(&["backup", support::hostile_wasm(), "--set", "mode=ok", "--source", &source]);
    assert_eq!(other["kind"], "full");
    assert!(other["parent"].is_null());
}

#[test]
fn init_sets_the_compression_level_and_refuses_one_out_of_range() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let text: Vec<u8> = (0..2_000_000u32).map(|i| b"coffer compresses text "[(i % 23) as usize]).collect();
    fs::write(src.join("text"), &text).unwrap();
    let path = format!("path={}", src.display());
    let compressed = t.json(&["backup", "files", "--set", &path]);
    let stored = compressed["summary"]["stored_bytes"].as_u64().unwrap();
    assert!(stored < 200_000, "the default level compresses: {stored} bytes stored");

    let plain = t.dir.path().join("plain");
    let out = t.cmd().env("COFFER_REPO", &plain).args(["init", "--compression", "20"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--compression must be between 0 (none) and 19"), "{}", stderr(&out));
    assert!(!plain.exists(), "a refused init created {}", plain.display());
    let out = t.cmd().env("COFFER_REPO", &plain).args(["init", "--compression", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.cmd().env("COFFER_REPO", &plain).args(["--json", "backup", "files", "--set", &path]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = v["summary"]["stored_bytes"].as_u64().unwrap();
    assert!(stored >= text.len() as u64, "level 0 stores blobs as they are: {stored} bytes stored");
}
