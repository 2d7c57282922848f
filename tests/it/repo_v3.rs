//! The golden repository `tests/fixtures/repo-v3`, written by coffer at
//! 7a853d6 (format 3, contract 0.1.0, WAL archived under `wal/`), read by
//! this build on a copy: `check --read-data`, the files snapshot restored
//! exactly as `expect.json` records it, the archived WAL fetched back, and
//! point-in-time restores of its PostgreSQL base backup (time, xid, LSN, end
//! of the archive) with today's built-in postgres plugin, whose
//! `restore_command` fetches the legacy objects as stream items. What
//! `verify.sh` checks with a shell, in Rust.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::postgres::{Cluster, Repo, chown_postgres, postgres_tempdir, run_ok, target};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/repo-v3")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn sha256(p: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(p), "sha256sum");
    out.split_whitespace().next().unwrap().to_string()
}

/// The copy of the fixture, used as the `postgres` user.
fn open_copy(root: &Path) -> Repo {
    let repo = root.join("repo");
    copy_dir(&fixture().join("repo"), &repo);
    let pw = root.join("repo.pw");
    std::fs::copy(fixture().join("password"), &pw).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown_postgres(root);
    Repo::existing(root, &repo, &pw)
}

fn expect() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture().join("expect.json")).unwrap()).unwrap()
}

#[test]
fn a_format_3_repository_checks_restores_and_recovers_to_its_targets() {
    let tmp = postgres_tempdir();
    let root = tmp.path();
    let want = expect();
    let repo = open_copy(root);
    let check = repo.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["snapshots"], 3, "{check}");
    assert!(check["errors"].as_array().unwrap().is_empty(), "{check}");
    assert_eq!(check["wal_files"], want["wal"]["files"].as_array().unwrap().len(), "{check}");

    // The files snapshot, exactly as recorded.
    let files = target(root, "files");
    repo.ok(&["restore", want["files"]["snapshot"].as_str().unwrap(), "--target", files.to_str().unwrap()]);
    let entries = want["files"]["entries"].as_array().unwrap();
    let mut found: Vec<String> = Vec::new();
    let mut stack = vec![files.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            found.push(p.strip_prefix(&files).unwrap().to_str().unwrap().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    found.sort();
    let mut paths: Vec<String> = entries.iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    paths.sort();
    assert_eq!(found, paths);
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let p = files.join(path);
        let md = std::fs::symlink_metadata(&p).unwrap();
        match e["kind"].as_str().unwrap() {
            "file" => {
                assert!(md.is_file(), "{path}");
                assert_eq!(md.len(), e["size"].as_u64().unwrap(), "{path}");
                assert_eq!(sha256(&p), e["sha256"].as_str().unwrap(), "{path}");
                let content = std::fs::read(&p).unwrap();
                assert_eq!(blake3::hash(&content).to_hex().as_str(), e["blake3"].as_str().unwrap(), "{path}");
            }
            "dir" => assert!(md.is_dir(), "{path}"),
            "symlink" => {
                assert!(md.is_symlink(), "{path}");
                assert_eq!(std::fs::read_link(&p).unwrap().to_str().unwrap(), e["target"].as_str().unwrap());
            }
            k => panic!("unknown kind {k}"),
        }
        if e["kind"] != "symlink" {
            assert_eq!(u64::from(md.mode() & 0o7777), e["mode"].as_u64().unwrap(), "{path}: mode");
            assert_eq!(md.mtime(), e["mtime"].as_i64().unwrap(), "{path}: mtime");
            assert_eq!(md.mtime_nsec(), e["mtime_nsec"].as_i64().unwrap(), "{path}: mtime nanoseconds");
        }
    }

    // The archived WAL: every file fetched back, by the alias old
    // restore_commands run and by coffer stream fetch.
    let stream = want["wal"]["stream"].as_str().unwrap();
    let fetched = target(root, "fetched");
    for (i, f) in want["wal"]["files"].as_array().unwrap().iter().enumerate() {
        let name = f["name"].as_str().unwrap();
        let dest = fetched.join(name);
        let d = dest.to_str().unwrap();
        if i % 2 == 0 {
            repo.ok(&["--quiet", "wal", "fetch", "--stream", stream, name, d]);
        } else {
            repo.ok(&["--quiet", "stream", "fetch", "--plugin", "postgres", stream, name, d]);
        }
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), f["size"].as_u64().unwrap(), "{name}");
        assert_eq!(sha256(&dest), f["sha256"].as_str().unwrap(), "{name}");
    }
    let listed = repo.json(&["wal", "list", "--stream", stream]);
    assert_eq!(listed.as_array().unwrap().len(), want["wal"]["files"].as_array().unwrap().len(), "{listed}");

    // The base backup verifies, the archive covering it without a gap.
    let base_1 = want["postgres"]["at_base_1"]["snapshot"].as_str().unwrap();
    let out = repo.ok(&["verify", base_1]);
    assert!(out.contains("no problems") && out.contains("reaches segment 00000001000000000000000E"), "{out}");

    // PostgreSQL: each point-in-time target, recovered from the legacy
    // archive by the restore_command the plugin writes.
    let query = want["postgres"]["check_query"].as_str().unwrap();
    for (i, p) in want["postgres"]["pitr"].as_array().unwrap().iter().enumerate() {
        let dir = target(root, &format!("pitr-{i}"));
        let set = p["set"].as_str().unwrap();
        let snap = p["from_snapshot"].as_str().unwrap();
        repo.ok(&["restore", snap, "--target", dir.to_str().unwrap(), "--set", set, "--set", "archive_mode=off"]);
        let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.contains(&format!(
                "stream fetch --plugin postgres {stream} %f %p --or-latest-prefix %f.partial. --pad-to"
            )),
            "{auto}"
        );
        let c = Cluster::over(root, &dir);
        c.start();
        c.wait_promoted();
        assert_eq!(c.psql(query), p["result"].as_str().unwrap(), "restore of {snap} with {set}");
        c.stop();
    }
}
