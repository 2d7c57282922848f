//! Key management as an operator runs it: Shamir shares (split, combine,
//! `--shares-from`), key rotation, `prune --reencrypt`, and kill -9 during
//! re-encryption.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Incompressible, reproducible bytes.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn tree(dir: &Path, files: usize, size: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(format!("f{i}")), noise(size, seed * 1000 + i as u64)).unwrap();
    }
}

fn same_files(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(!names.is_empty());
    for n in names {
        assert!(std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(), "{n:?} differs");
    }
}

fn backup(t: &TestRepo, src: &Path) -> String {
    let out = t.json(&["backup", "files", "--set", &format!("path={}", src.display())]);
    out["id"].as_str().unwrap_or_else(|| panic!("backup printed no id: {out}")).to_string()
}

fn restore_and_compare(t: &TestRepo, cmd: &mut Command, snap: &str, src: &Path) {
    let dst = t.dir.path().join(format!("restore-{}-{}", &snap[..8], rand_suffix()));
    let out = cmd.args(["restore", snap, "--target", dst.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "restore {snap}: {}", stderr(&out));
    same_files(src, &dst);
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn share_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// A `coffer` command with no password at all.
fn no_password(t: &TestRepo) -> Command {
    let mut c = t.cmd();
    c.env_remove("COFFER_PASSWORD");
    c
}

fn concat(t: &TestRepo, files: &[&PathBuf], name: &str) -> PathBuf {
    let p = t.dir.path().join(name);
    let mut text = String::new();
    for f in files {
        text.push_str(&std::fs::read_to_string(f).unwrap());
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn shamir_split_and_combine_through_the_cli() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    tree(&src, 3, 200_000, 1);
    let snap = backup(&t, &src);
    let dir = t.dir.path().join("custodians");
    t.ok(&["key", "split", "--shares", "5", "--threshold", "3", "--out-dir", dir.to_str().unwrap()]);
    let files = share_files(&dir);
    assert_eq!(files.len(), 5);
    for f in &files {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
        assert_eq!(std::fs::read_to_string(f).unwrap().lines().count(), 1, "one share per file, one line");
    }
    // A second split into the same directory never overwrites a share.
    let again = t.coffer(&["key", "split", "--shares", "5", "--threshold", "3", "--out-dir", dir.to_str().unwrap()]);
    assert!(!again.status.success() && stderr(&again).contains("never overwritten"), "{}", stderr(&again));
    assert_eq!(share_files(&dir), files, "the failed split left nothing behind");
    // `--json` prints the shares of a fresh split as JSON; any 3 of them work.
    let printed = t.json(&["key", "split", "--shares", "4", "--threshold", "3"]);
    assert_eq!(printed["threshold"], 3);
    let codes: Vec<&str> = printed["shares"].as_array().unwrap().iter().map(|s| s["share"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), 4);
    let from_json = t.dir.path().join("from-json");
    std::fs::write(&from_json, format!("{}\n{}\n{}\n", codes[3], codes[1], codes[0])).unwrap();
    let out = no_password(&t).args(["--shares-from", from_json.to_str().unwrap(), "snapshots"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Every 3 of the 5 open the repository, without a password.
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                let f = concat(&t, &[&files[a], &files[b], &files[c]], &format!("set-{a}{b}{c}"));
                let out = no_password(&t).args(["--json", "--shares-from", f.to_str().unwrap(), "snapshots"]).output();
                let out = out.unwrap();
                assert!(out.status.success(), "shares {a},{b},{c}: {}", stderr(&out));
                let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(list[0]["id"].as_str().unwrap(), snap);
            }
        }
    }
    // Two are not enough.
    let two = concat(&t, &[&files[0], &files[3]], "two");
    let out = no_password(&t).args(["--shares-from", two.to_str().unwrap(), "snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("2 distinct shares were given, but 3 of 5 are needed"), "{}", stderr(&out));
    // The same share twice counts once.
    let dup = concat(&t, &[&files[0], &files[0], &files[1]], "dup");
    let out = no_password(&t).args(["--shares-from", dup.to_str().unwrap(), "snapshots"]).output().unwrap();
    assert!(stderr(&out).contains("counts once"), "{}", stderr(&out));

    // One changed character is caught by the checksum, naming the share.
    let line = std::fs::read_to_string(&files[1]).unwrap();
    let (head, code) = line.rsplit_once(": ").unwrap();
    let mut chars: Vec<char> = code.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let typo = t.dir.path().join("typo.txt");
    std::fs::write(&typo, format!("{head}: {}", chars.into_iter().collect::<String>())).unwrap();
    let out = no_password(&t)
        .args(["key", "combine", files[0].to_str().unwrap(), typo.to_str().unwrap(), files[2].to_str().unwrap()])
        .env("COFFER_NEW_PASSWORD", "never used")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("typo.txt line 1") && err.contains("checksum"), "{err}");

    // Shares of this repository are refused by another one.
    let other = TestRepo::new();
    let f = concat(&t, &[&files[0], &files[1], &files[2]], "for-other");
    let out = no_password(&other).args(["--shares-from", f.to_str().unwrap(), "snapshots"]).output().unwrap();
    assert!(stderr(&out).contains("not of this one"), "{}", stderr(&out));

    // `key combine` from stdin adds a key for a new password; the shares and
    // the new password never reach the logs.
    let mut child = no_password(&t)
        .args(["key", "combine"])
        .env("COFFER_NEW_PASSWORD", "recovered password")
        .env("COFFER_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for f in [&files[4], &files[2], &files[0]] {
        stdin.write_all(std::fs::read(f).unwrap().as_slice()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let code0 = std::fs::read_to_string(&files[0]).unwrap();
    let code0 = code0.trim().rsplit_once(": ").unwrap().1;
    assert!(!all.contains(code0) && !all.contains("recovered password"), "a secret was printed:\n{all}");
    let mut with_new = t.cmd();
    with_new.env("COFFER_PASSWORD", "recovered password");
    restore_and_compare(&t, &mut with_new, &snap, &src);
    // Listing keys shows no share material.
    let keys = t.ok(&["--json", "key", "list"]);
    assert!(!keys.contains(code0));
}

#[test]
fn key_rotation_and_reencryption_through_the_cli() {
    let t = TestRepo::new();
    let (a, b) = (t.dir.path().join("a"), t.dir.path().join("b"));
    tree(&a, 3, 400_000, 2);
    tree(&b, 3, 400_000, 3);
    let snap_a = backup(&t, &a);
    let rotated = t.json(&["key", "rotate"]);
    assert_eq!(rotated["epoch"], 2, "{rotated}");
    assert!(rotated["older_epochs"][0]["packs"].as_u64().unwrap() > 0, "{rotated}");
    let snap_b = backup(&t, &b);
    let epochs = t.json(&["key", "list"])["epochs"].clone();
    let e: Vec<(u64, bool, u64)> = epochs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["epoch"].as_u64().unwrap(), e["current"].as_bool().unwrap(), e["packs"].as_u64().unwrap()))
        .collect();
    assert_eq!(e.len(), 2, "{epochs}");
    assert!(e[0].0 == 1 && !e[0].1 && e[0].2 > 0 && e[1].0 == 2 && e[1].1 && e[1].2 > 0, "{epochs}");
    // Data from both epochs restores.
    restore_and_compare(&t, &mut t.cmd(), &snap_a, &a);
    restore_and_compare(&t, &mut t.cmd(), &snap_b, &b);

    let report = t.json(&["prune", "--reencrypt"]);
    assert!(report["reencrypted_packs"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["retired_epochs"], serde_json::json!([1]), "{report}");
    let epochs = t.json(&["key", "list"])["epochs"].clone();
    assert_eq!(epochs.as_array().unwrap().len(), 1, "{epochs}");
    assert!(!Path::new(&t.url).join("epochs/00000001").exists(), "epoch 1's key is gone");
    let out = t.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors"), "{out}");
    restore_and_compare(&t, &mut t.cmd(), &snap_a, &a);
    restore_and_compare(&t, &mut t.cmd(), &snap_b, &b);
    // `key rotate --reencrypt` does both in one go.
    let r = t.json(&["key", "rotate", "--reencrypt"]);
    assert_eq!(r["reencrypt"]["retired_epochs"], serde_json::json!([2]), "{r}");
    assert_eq!(r["older_epochs"], serde_json::json!([]), "{r}");
    // Argon2 parameters are checked.
    let out = t.cmd().env("COFFER_NEW_PASSWORD", "x").args(["key", "add", "--kdf-memory-mib", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn kill_9_during_reencryption_leaves_a_repository_that_checks() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    // About 40 MiB: several 16 MiB packs, so a re-encryption takes a while.
    tree(&src, 10, 4 << 20, 4);
    let snap = backup(&t, &src);
    let mut seed: u64 = 0x2545_F491;
    let mut killed_mid_way = 0;
    for round in 0..6 {
        t.ok(&["key", "rotate"]);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child =
            t.cmd().args(["prune", "--reencrypt"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100 + seed % 1200));
        if child.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let out = t.coffer(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "round {round}: check after kill -9 failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
    assert!(killed_mid_way > 0, "no kill landed while re-encryption ran");
    // A finished run retires every old epoch and leaves one key.
    let r = t.json(&["prune", "--reencrypt"]);
    assert_eq!(r["kept_epochs"], serde_json::json!([]), "{r}");
    assert_eq!(t.json(&["key", "list"])["epochs"].as_array().unwrap().len(), 1);
    assert!(t.ok(&["check", "--read-data"]).contains("no errors"));
    restore_and_compare(&t, &mut t.cmd(), &snap, &src);
}

/// `coffer key cache` writes a 0600 file that `--key-file` opens without a
/// password (a stream push, as an `archive_command` runs it); the file is
/// never overwritten, a copy others can read is refused, a password file
/// passed as a key cache is named as such, and `key remove` revokes it.
#[test]
fn a_key_cache_file_pushes_without_a_password_until_revoked() {
    let t = TestRepo::new();
    let key = t.dir.path().join("archive.key");
    let key_s = key.to_str().unwrap();
    t.ok(&["key", "cache", "--out", key_s]);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = t.coffer(&["key", "cache", "--out", key_s]);
    assert!(!again.status.success() && stderr(&again).contains("never overwritten"), "{}", stderr(&again));
    let listed = t.json(&["key", "list"]);
    let caches: Vec<&serde_json::Value> =
        listed["keys"].as_array().unwrap().iter().filter(|k| k["kind"] == "cache").collect();
    assert_eq!(caches.len(), 1, "{listed}");
    let id = caches[0]["id"].as_str().unwrap().to_string();

    let seg = t.dir.path().join("wal").join("seg-0001");
    std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
    std::fs::write(&seg, noise(300_000, 5)).unwrap();
    let push = |extra: &[&str]| {
        let mut c = no_password(&t);
        c.args(extra)
            .args(["stream", "push", "--plugin", crate::support::hostile_wasm(), "--set", "mode=push"])
            .args(["--set", "position=1"])
            .arg(&seg);
        c.output().unwrap()
    };
    let out = push(&["--key-file", key_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("archived s/seg-0001"), "{}", stderr(&out));

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let open = push(&["--key-file", key_s]);
    assert!(!open.status.success() && stderr(&open).contains("chmod 600"), "{}", stderr(&open));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, "a password\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = push(&["--key-file", pw.to_str().unwrap()]);
    assert!(!wrong.status.success() && stderr(&wrong).contains("not a key cache file"), "{}", stderr(&wrong));

    t.ok(&["key", "remove", &id[..8]]);
    let revoked = push(&["--key-file", key_s]);
    assert!(!revoked.status.success(), "{}", stderr(&revoked));
    assert!(stderr(&revoked).contains("revoked"), "{}", stderr(&revoked));
}
