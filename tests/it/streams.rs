//! Plugin-owned streams through the CLI (`coffer stream push|fetch|list|
//! follow`), with the hostile fixture's stream modes: a well-behaved
//! pusher and follower, and the attacks (another plugin's stream, pinning
//! past the output limit).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestRepo, hostile_wasm, stderr};

/// `stream push` of `file` by the hostile fixture in mode `push`.
fn push(t: &TestRepo, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["stream", "push", "--plugin", hostile_wasm(), "--set", "mode=push"];
    args.extend_from_slice(extra);
    let file = file.to_str().unwrap().to_string();
    args.push(&file);
    t.coffer(&args)
}

/// The items of the hostile fixture's stream `s`: (key, position, pinned).
fn items(t: &TestRepo, stream: &str) -> Vec<(String, Option<u64>, bool)> {
    let v = t.json(&["stream", "list", "--plugin", hostile_wasm(), stream]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| (i["key"].as_str().unwrap().to_string(), i["position"].as_u64(), i["pinned"].as_bool().unwrap()))
        .collect()
}

#[test]
fn a_pushed_item_is_listed_fetched_and_written_once() {
    let t = TestRepo::new();
    let dir = t.dir.path().join("wal");
    std::fs::create_dir(&dir).unwrap();
    let seg = dir.join("seg-0005");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&seg, &content).unwrap();

    let out = push(&t, &seg, &["--set", "position=5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("archived s/seg-0005"), "{}", stderr(&out));
    assert_eq!(items(&t, "s"), vec![("seg-0005".to_string(), Some(5), false)]);

    // A retried archive command: the same content succeeds, writes nothing.
    let again = push(&t, &seg, &["--set", "position=5"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("already archived"), "{}", stderr(&again));
    // Other content under the same key is refused, naming the item.
    std::fs::write(&seg, b"something else").unwrap();
    let other = push(&t, &seg, &["--set", "position=5"]);
    assert!(!other.status.success());
    assert!(stderr(&other).contains("seg-0005"), "{}", stderr(&other));
    // So is the same key at another position.
    std::fs::write(&seg, &content).unwrap();
    let moved = push(&t, &seg, &["--set", "position=6"]);
    assert!(!moved.status.success());
    assert!(stderr(&moved).contains("seg-0005"), "{}", stderr(&moved));
    assert_eq!(items(&t, "s").len(), 1);

    // Fetch writes the content; a missing key is exit 1 with one line.
    let dest = t.dir.path().join("fetched");
    t.ok(&["stream", "fetch", "--plugin", hostile_wasm(), "s", "seg-0005", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    let missing = t.coffer(&["stream", "fetch", "--plugin", hostile_wasm(), "s", "seg-0006", dest.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert_eq!(stderr(&missing).lines().count(), 1, "{}", stderr(&missing));
    assert!(stderr(&missing).contains("seg-0006"));

    // The stream is the hostile component's own: the built-in plugins'
    // streams do not hold it.
    let list = t.json(&["stream", "list"]);
    let owners: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].len(), 64, "a component owns its streams by digest: {owners:?}");
    let check = t.coffer(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn a_plugin_cannot_write_into_another_plugins_stream() {
    let t = TestRepo::new();
    let dir = t.dir.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("000000010000000000000001");
    std::fs::write(&f, b"forged WAL").unwrap();
    // It names the built-in postgres plugin's stream; it lands in its own.
    let out = push(&t, &f, &["--set", "stream=pg-7283947561234567890", "--set", "position=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dest = t.dir.path().join("out");
    let got = t.coffer(&[
        "stream",
        "fetch",
        "--plugin",
        "postgres",
        "pg-7283947561234567890",
        "000000010000000000000001",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(got.status.code(), Some(1), "the built-in's stream must not hold it: {}", stderr(&got));
    assert!(!dest.exists());
    let pg = t.json(&["stream", "list", "--plugin", "postgres"]);
    assert_eq!(pg.as_array().unwrap().len(), 0, "{pg}");
}

#[test]
fn pinning_stops_at_the_output_limit() {
    let t = TestRepo::new();
    let dir = t.dir.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    let f = dir.join("x");
    std::fs::write(&f, b"x").unwrap();
    let out = t.coffer(&[
        "stream",
        "push",
        "--plugin",
        hostile_wasm(),
        "--set",
        "mode=pin-flood",
        "--output-limit",
        "5MiB",
        f.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("output limit"), "{}", stderr(&out));
    let pinned = items(&t, "s");
    assert!(pinned.len() <= 5, "{} items pinned past a 5 MiB limit", pinned.len());
    let check = t.coffer(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn a_component_built_against_0_1_0_has_no_streams() {
    let t = TestRepo::new();
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/contract-0.1.0/files.wasm");
    let f = t.dir.path().join("x");
    std::fs::write(&f, b"x").unwrap();
    let out = t.coffer(&[
        "stream",
        "push",
        "--plugin",
        old.to_str().unwrap(),
        "--set",
        &format!("path={}", t.dir.path().display()),
        f.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("0.1.0, which has no streams"), "{}", stderr(&out));
    // A 0.2.0 plugin without streams says so too.
    let files = t.coffer(&[
        "stream",
        "push",
        "--plugin",
        "files",
        "--set",
        &format!("path={}", t.dir.path().display()),
        f.to_str().unwrap(),
    ]);
    assert!(!files.status.success());
    assert!(stderr(&files).contains("keeps no streams"), "{}", stderr(&files));
}

fn follow(t: &TestRepo) -> Child {
    let mut c: Command = t.cmd();
    c.args(["stream", "follow", "--plugin", hostile_wasm(), "--set", "mode=follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("coffer runs")
}

/// Waits until the stream holds at least `n` items.
fn wait_items(t: &TestRepo, n: usize) {
    let start = Instant::now();
    while items(t, "s").len() < n {
        assert!(start.elapsed() < Duration::from_secs(60), "the follower stored fewer than {n} items in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

/// The item numbers stored, checked to run from 0 without a gap.
fn contiguous(t: &TestRepo) -> u64 {
    let got = items(t, "s");
    for (i, (key, pos, pinned)) in got.iter().enumerate() {
        assert_eq!(key, &format!("item{i:08}"), "a gap or a stray item at {i}: {got:?}");
        assert_eq!(*pos, Some(i as u64));
        assert!(!pinned);
    }
    got.len() as u64
}

#[test]
fn follow_stops_cleanly_excludes_a_second_follower_and_resumes_without_a_gap() {
    let t = TestRepo::new();
    let first = follow(&t);
    wait_items(&t, 5);
    // A second follower of the same stream is refused, naming the holder.
    let second = t.coffer(&["stream", "follow", "--plugin", hostile_wasm(), "--set", "mode=follow"]);
    assert!(!second.status.success());
    assert!(stderr(&second).contains("holds its lease"), "{}", stderr(&second));
    // Ctrl-C: a clean stop, exit 0, whole items only.
    signal(&first, "-INT");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n1 = contiguous(&t);

    // Resumes from the checkpoint.
    let again = follow(&t);
    wait_items(&t, n1 as usize + 5);
    // kill -9: the next follower takes over at once (same machine) and
    // goes on without a gap.
    signal(&again, "-KILL");
    let _ = again.wait_with_output();
    let n2 = contiguous(&t);
    let third = follow(&t);
    wait_items(&t, n2 as usize + 3);
    signal(&third, "-TERM");
    let out = third.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    contiguous(&t);
    let list = t.json(&["stream", "list", "--plugin", hostile_wasm()]);
    // The fixture checkpoints each item with the source 3 positions ahead;
    // a stop that lands between an item and its checkpoint leaves the
    // checkpoint one item behind (the lag is then counted from it).
    assert!(matches!(list[0]["lag_positions"].as_u64(), Some(2 | 3)), "{list}");
    let check = t.coffer(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

/// An `archive_command` run by a service account whose home cannot be
/// written still compiles its plugin once, not once per push: the
/// component cache falls back to a private `<tmp>/coffer-<uid>-components`.
#[test]
fn a_push_without_a_writable_home_caches_its_plugin_under_tmp() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = TestRepo::new();
    let tmp = t.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let seg = t.dir.path().join("seg-0001");
    std::fs::write(&seg, b"some WAL").unwrap();
    let uid = std::fs::metadata(&seg).unwrap().uid();
    // A home under a regular file: not even root can create it.
    let home = seg.join("home");
    let mut c = t.cmd();
    c.env_remove("COFFER_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .args(["stream", "push", "--plugin", hostile_wasm(), "--set", "mode=push", "--set", "position=1"])
        .arg(&seg);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("compiled in memory"), "{}", stderr(&out));
    let cache = tmp.join(format!("coffer-{uid}-components"));
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let compiled: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
}

/// A hostile snapshot of its own, with `need-stream` from `position`.
fn needing_snapshot(t: &TestRepo, position: u64, tag: &str) {
    let out = t.coffer(&[
        "backup",
        hostile_wasm(),
        "--set",
        "mode=need-stream",
        "--set",
        &format!("position={position}"),
        "--tag",
        tag,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn retention_keeps_what_any_remaining_snapshot_needs_and_a_plugin_cannot_lower_it() {
    let t = TestRepo::new();
    let dir = t.dir.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    for p in 1..=6u64 {
        let f = dir.join(format!("item-{p}"));
        std::fs::write(&f, format!("item {p}")).unwrap();
        let out = push(&t, &f, &["--set", &format!("position={p}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Item 1 pinned: retention never removes it.
    let pinned = dir.join("history");
    std::fs::write(&pinned, b"history").unwrap();
    assert!(push(&t, &pinned, &["--set", "position=1", "--set", "pinned=true"]).status.success());
    // One snapshot needs the stream from 3; a later one (the plugin says
    // whatever it likes) from 1000.
    needing_snapshot(&t, 3, "low");
    needing_snapshot(&t, 1000, "high");
    // Both remain: the lowest need counts, so only items below 3 go.
    t.ok(&["forget", "--keep-last", "2"]);
    let keys: Vec<String> = items(&t, "s").into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, ["history", "item-3", "item-4", "item-5", "item-6"], "{keys:?}");
    // Forgetting the low one lets the high need cut; pinned stays.
    t.ok(&["forget", "--keep-last", "1"]);
    let keys: Vec<String> = items(&t, "s").into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, ["history"], "{keys:?}");
    // The freed chunks go with a prune, and the repository stays whole.
    t.ok(&["prune"]);
    let check = t.coffer(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}
