//! The hostile-plugin suite: each mode of the fixture plugin misbehaves in
//! one way; each must fail its own job with a message naming the plugin
//! and the reason, leave the repository without a snapshot or a pack, and
//! leave the host able to run the next job. Plus 50 plugin instances
//! backing up at once.

use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coffer_repo::{FileKind, InitOptions, KdfParams, Repository};
use coffer_runtime::{
    CancelToken, Fault, GrantSet, JobError, JobOptions, Limits, LoadedPlugin, Purpose, RestoreRequest, Runtime,
    RuntimeOptions, SnapshotRequest,
};
use serde_json::json;

use crate::support;

/// Modes with a test below; must equal the fixture's list.
const TESTED: &[&str] = &[
    "ok",
    "read-dotdot",
    "read-absolute",
    "read-symlink",
    "list-dotdot",
    "list-absolute",
    "list-symlink",
    "write-readonly",
    "connect-ungranted",
    "connect-granted",
    "loop",
    "alloc",
    "output",
    "panic",
    "use-after-drop",
    "path-dotdot",
    "path-absolute",
    "path-empty",
    "path-nul",
    "long-source",
    "unfinished",
    "stream",
    "restore-onto-symlink",
    "restore-through-symlink",
    "restore-files-in-verify",
    "add-files",
];

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let cache = std::env::temp_dir().join(format!("coffer-test-cache-{}", std::process::id()));
        Runtime::new(RuntimeOptions { max_instances: 200, cache_dir: Some(cache) }).expect("runtime")
    })
}

fn hostile() -> LoadedPlugin {
    static P: OnceLock<LoadedPlugin> = OnceLock::new();
    P.get_or_init(|| {
        let bytes = std::fs::read(support::hostile_wasm()).expect("fixture built by build.rs");
        runtime().load("hostile.wasm", &bytes).expect("fixture loads")
    })
    .clone()
}

fn files() -> LoadedPlugin {
    static P: OnceLock<LoadedPlugin> = OnceLock::new();
    P.get_or_init(|| {
        let bytes = std::fs::read(support::files_wasm()).expect("files plugin built by build.rs");
        runtime().load("files", &bytes).expect("files plugin loads")
    })
    .clone()
}

struct Scene {
    dir: tempfile::TempDir,
    repo: Repository,
}

impl Scene {
    async fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("repo").to_str().unwrap().to_string();
        let backend = coffer_repo::backend_for(&url, &[]).unwrap();
        let repo = Repository::init(
            backend,
            support::PASSWORD.as_bytes(),
            InitOptions { kdf: KdfParams::insecure_fast(), ..Default::default() },
        )
        .await
        .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/file"), b"granted data").unwrap();
        std::fs::write(dir.path().join("secret"), b"TOP SECRET outside the grant").unwrap();
        Scene { dir, repo }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").canonicalize().unwrap().to_str().unwrap().to_string()
    }

    async fn run(&self, mut config: serde_json::Value, limits: Limits, cancel: CancelToken) -> Result<(), JobError> {
        let grants = GrantSet::from_config(&mut config, Purpose::Read).expect("grants");
        let opts = JobOptions { grants, limits, cancel, ..JobOptions::default() };
        let req = SnapshotRequest { config, ..Default::default() };
        hostile().snapshot(&self.repo, req, &opts).await.map(|_| ())
    }

    /// Runs a mode that must fail; checks that nothing was stored and that
    /// the host still serves a well-behaved job afterwards.
    async fn must_fail(&self, config: serde_json::Value, limits: Limits) -> JobError {
        let e = self.run(config, limits, CancelToken::new()).await.expect_err("the hostile mode must fail");
        self.assert_clean().await;
        self.assert_still_serving().await;
        e
    }

    async fn assert_clean(&self) {
        let snaps = self.repo.backend().list(FileKind::Snapshot).await.unwrap();
        assert!(snaps.is_empty(), "a failed job left a snapshot");
        let packs = self.repo.backend().list(FileKind::Pack).await.unwrap();
        assert!(packs.is_empty(), "a failed job left {} packs", packs.len());
    }

    async fn assert_still_serving(&self) {
        let tmp = Scene::new().await;
        tmp.run(json!({"mode": "ok"}), Limits::default(), CancelToken::new()).await.expect("the next job runs");
    }
}

fn message(e: &JobError) -> String {
    let m = e.to_string();
    assert!(m.contains("hostile"), "the message must name the plugin: {m}");
    assert!(!m.contains("TOP SECRET"), "the message leaks the secret: {m}");
    m
}

#[tokio::test]
async fn every_fixture_mode_has_a_test() {
    let d = hostile().info(None, &JobOptions::default()).await.unwrap();
    let schema: serde_json::Value = serde_json::from_str(&d.config_schema).unwrap();
    let mut modes: Vec<String> = schema["properties"]["mode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    modes.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(modes, tested, "every hostile mode needs a test, and every test a mode");
}

#[tokio::test]
async fn well_behaved_mode_commits() {
    let s = Scene::new().await;
    s.run(json!({"mode": "ok"}), Limits::default(), CancelToken::new()).await.unwrap();
    let snaps = s.repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let snap = s.repo.open_snapshot(&snaps[0].0).await.unwrap();
    assert_eq!(snap.entries.len(), 1);
    assert_eq!(snap.entries[0].path, "hello.txt");
}

#[tokio::test]
async fn streaming_through_the_sink_stores_every_byte() {
    let s = Scene::new().await;
    let size = 3 * (1 << 20) + 12_345;
    s.run(json!({"mode": "stream", "size": size}), Limits::default(), CancelToken::new()).await.unwrap();
    let snaps = s.repo.snapshots().await.unwrap();
    let snap = s.repo.open_snapshot(&snaps[0].0).await.unwrap();
    assert_eq!(snap.entries[0].size, size);
    assert_eq!(snaps[0].1.summary.bytes_read, size);
}

#[tokio::test]
async fn add_files_reads_a_granted_file_and_nothing_outside_the_grant() {
    let s = Scene::new().await;
    let data = s.data();
    std::fs::create_dir(s.dir.path().join("outside")).unwrap();
    std::fs::write(s.dir.path().join("outside/secret"), b"TOP SECRET behind a symlink").unwrap();
    std::os::unix::fs::symlink(s.dir.path().join("outside"), s.dir.path().join("data/escape")).unwrap();
    std::os::unix::fs::symlink("../outside", s.dir.path().join("data/escape-relative")).unwrap();
    std::os::unix::fs::symlink("../secret", s.dir.path().join("data/link")).unwrap();
    let refused = [
        (format!("{data}/../secret"), "not a file inside a granted directory"),
        ("/etc/hostname".to_string(), "not a file inside a granted directory"),
        (data.clone(), "not a file inside a granted directory"),
        (format!("{data}/escape/secret"), "not inside a granted directory"),
        (format!("{data}/escape-relative/secret"), "not inside a granted directory"),
        // A symlink at the source itself is not followed: the file is gone.
        (format!("{data}/link"), "the host did not read"),
    ];
    for (source, why) in refused {
        let e = s.must_fail(json!({"mode": "add-files", "path": data, "victim": source}), Limits::default()).await;
        let m = message(&e);
        assert!(m.contains(why), "{source}: {m}");
    }
    // The granted file itself is read, with its mode and mtime as opened.
    std::fs::set_permissions(s.dir.path().join("data/file"), std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .unwrap();
    let source = format!("{data}/file");
    s.run(json!({"mode": "add-files", "path": data, "victim": source}), Limits::default(), CancelToken::new())
        .await
        .unwrap();
    let snaps = s.repo.snapshots().await.unwrap();
    let snap = s.repo.open_snapshot(&snaps[0].0).await.unwrap();
    let e = snap.entry("stolen").expect("the entry was added");
    assert_eq!(e.mode, 0o640);
    let md = std::fs::metadata(&source).unwrap();
    assert_eq!(e.mtime, std::os::unix::fs::MetadataExt::mtime(&md));
    let mut content = Vec::new();
    let mut reader = s.repo.entry_reader_owned(e);
    while let Some(piece) = reader.next_chunk().await.unwrap() {
        content.extend_from_slice(&piece);
    }
    assert_eq!(content, b"granted data");
}

#[tokio::test]
async fn add_files_past_the_output_quota_fails_the_job() {
    let s = Scene::new().await;
    std::fs::write(s.dir.path().join("data/big"), vec![7u8; 12 << 20]).unwrap();
    let limits = Limits { output_bytes: 8 << 20, ..Limits::default() };
    let source = format!("{}/big", s.data());
    let e = s.must_fail(json!({"mode": "add-files", "path": s.data(), "victim": source}), limits).await;
    assert!(matches!(e, JobError::Fault { fault: Fault::OutputLimit { .. }, .. }), "{e}");
}

#[tokio::test]
async fn reading_through_dotdot_is_denied() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "read-dotdot", "path": s.data()}), Limits::default()).await;
    message(&e);
}

#[tokio::test]
async fn reading_an_absolute_path_outside_the_grant_is_denied() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "read-absolute", "path": s.data()}), Limits::default()).await;
    message(&e);
}

#[tokio::test]
async fn a_symlink_out_of_the_preopen_is_not_followed() {
    let s = Scene::new().await;
    std::fs::create_dir(s.dir.path().join("outside")).unwrap();
    std::fs::write(s.dir.path().join("outside/secret"), b"TOP SECRET behind a symlink").unwrap();
    std::os::unix::fs::symlink(s.dir.path().join("outside"), s.dir.path().join("data/escape")).unwrap();
    let e = s.must_fail(json!({"mode": "read-symlink", "path": s.data()}), Limits::default()).await;
    message(&e);
    // The same read through a relative symlink is refused too.
    std::fs::remove_file(s.dir.path().join("data/escape")).unwrap();
    std::os::unix::fs::symlink("../outside", s.dir.path().join("data/escape")).unwrap();
    let e = s.must_fail(json!({"mode": "read-symlink", "path": s.data()}), Limits::default()).await;
    message(&e);
}

#[tokio::test]
async fn listing_outside_the_grant_is_denied() {
    let s = Scene::new().await;
    for mode in ["list-dotdot", "list-absolute"] {
        let e = s.must_fail(json!({"mode": mode, "path": s.data()}), Limits::default()).await;
        let m = message(&e);
        assert!(m.contains("not inside a granted directory"), "{mode}: {m}");
    }
}

#[tokio::test]
async fn listing_through_a_symlink_out_of_the_grant_is_refused() {
    let s = Scene::new().await;
    std::fs::create_dir(s.dir.path().join("outside")).unwrap();
    std::fs::write(s.dir.path().join("outside/TOP SECRET name"), b"x").unwrap();
    for target in [s.dir.path().join("outside"), "../outside".into()] {
        let _ = std::fs::remove_file(s.dir.path().join("data/escape"));
        std::os::unix::fs::symlink(&target, s.dir.path().join("data/escape")).unwrap();
        let e = s.must_fail(json!({"mode": "list-symlink", "path": s.data()}), Limits::default()).await;
        message(&e);
    }
}

#[tokio::test]
async fn writing_into_a_read_only_grant_is_denied() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "write-readonly", "path": s.data()}), Limits::default()).await;
    message(&e);
    assert!(!s.dir.path().join("data/planted").exists(), "the plugin wrote into a read-only grant");
}

#[tokio::test]
async fn connecting_to_an_address_not_granted_is_denied() {
    let s = Scene::new().await;
    let victim = TcpListener::bind("127.0.0.1:0").unwrap();
    victim.set_nonblocking(true).unwrap();
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    // Network is on (another address is granted), the victim is not.
    let cfg = json!({
        "mode": "connect-ungranted",
        "url": format!("tcp://{}", granted.local_addr().unwrap()),
        "victim": victim.local_addr().unwrap().to_string(),
    });
    let mut config = cfg.clone();
    // `tcp` has no default port, so the URL carries one; grant it directly.
    let e = {
        let mut grants = GrantSet::none();
        grants.connect("url", &granted.local_addr().unwrap().to_string()).unwrap();
        let opts = JobOptions { grants, ..JobOptions::default() };
        hostile()
            .snapshot(&s.repo, SnapshotRequest { config: std::mem::take(&mut config), ..Default::default() }, &opts)
            .await
            .expect_err("connect must be refused")
    };
    message(&e);
    s.assert_clean().await;
    std::thread::sleep(Duration::from_millis(100));
    assert!(victim.accept().is_err(), "the plugin reached an address that was not granted");
    // And with no network grant at all.
    let e = s
        .must_fail(
            json!({"mode": "connect-ungranted", "victim": victim.local_addr().unwrap().to_string()}),
            Limits::default(),
        )
        .await;
    message(&e);
    assert!(victim.accept().is_err());
}

#[tokio::test]
async fn connecting_to_a_granted_address_works() {
    // The control for the test above: the sandbox, not the fixture, is what
    // refuses.
    let s = Scene::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 22];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    let mut grants = GrantSet::none();
    grants.connect("url", &addr.to_string()).unwrap();
    let opts = JobOptions { grants, ..JobOptions::default() };
    let config = json!({"mode": "connect-granted", "url": format!("tcp://{addr}")});
    hostile().snapshot(&s.repo, SnapshotRequest { config, ..Default::default() }, &opts).await.unwrap();
    assert_eq!(&accept.join().unwrap(), b"hello from the sandbox");
}

#[tokio::test]
async fn an_infinite_loop_hits_the_time_limit() {
    let s = Scene::new().await;
    let limits = Limits { wall_time: Duration::from_secs(2), ..Limits::default() };
    let started = std::time::Instant::now();
    let e = s.must_fail(json!({"mode": "loop"}), limits).await;
    assert!(matches!(e, JobError::Fault { fault: Fault::TimeLimit(_), .. }), "{e}");
    assert!(message(&e).contains("time limit"));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn an_infinite_loop_stops_when_cancelled() {
    let s = Scene::new().await;
    let cancel = CancelToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let e = s.run(json!({"mode": "loop"}), Limits::default(), cancel).await.expect_err("cancelled");
    assert!(e.is_cancelled(), "{e}");
    s.assert_clean().await;
    s.assert_still_serving().await;
}

#[tokio::test]
async fn allocating_past_the_memory_cap_fails_the_job() {
    let s = Scene::new().await;
    let limits = Limits { memory: 64 << 20, ..Limits::default() };
    let e = s.must_fail(json!({"mode": "alloc"}), limits).await;
    assert!(matches!(e, JobError::Fault { fault: Fault::MemoryLimit { .. }, .. }), "{e}");
    assert!(message(&e).contains("memory limit"));
}

#[tokio::test]
async fn writing_past_the_output_quota_fails_the_job() {
    let s = Scene::new().await;
    let limits = Limits { output_bytes: 8 << 20, ..Limits::default() };
    let e = s.must_fail(json!({"mode": "output"}), limits).await;
    assert!(matches!(e, JobError::Fault { fault: Fault::OutputLimit { .. }, .. }), "{e}");
    assert!(message(&e).contains("output limit"));
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "panic"}), Limits::default()).await;
    assert!(matches!(e, JobError::Trap { .. }), "{e}");
    assert!(message(&e).contains("hostile plugin panics on purpose"), "{e}");
}

#[tokio::test]
async fn using_a_dropped_handle_traps() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "use-after-drop"}), Limits::default()).await;
    assert!(matches!(e, JobError::Trap { .. } | JobError::Fault { .. }), "{e}");
    message(&e);
}

#[tokio::test]
async fn invalid_entry_paths_are_refused() {
    for (mode, shown) in
        [("path-dotdot", "../x"), ("path-absolute", "/etc/passwd"), ("path-empty", "``"), ("path-nul", "\\u{0}")]
    {
        let s = Scene::new().await;
        let e = s.must_fail(json!({"mode": mode}), Limits::default()).await;
        assert!(matches!(e, JobError::Fault { fault: Fault::Contract(_), .. }), "{mode}: {e}");
        let m = message(&e);
        assert!(m.contains(shown) || mode == "path-empty", "{mode}: {m}");
    }
}

#[tokio::test]
async fn a_garbage_source_name_is_refused() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "long-source"}), Limits::default()).await;
    assert!(matches!(e, JobError::Garbage { .. }), "{e}");
    message(&e);
}

#[tokio::test]
async fn returning_with_an_unfinished_entry_fails() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "unfinished"}), Limits::default()).await;
    assert!(matches!(e, JobError::Fault { fault: Fault::Contract(_), .. }), "{e}");
    assert!(message(&e).contains("not finished"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_plugin_instances_back_up_at_once() {
    let s = Scene::new().await;
    let repo = Arc::new(s.repo.clone());
    let root = s.dir.path().join("sources");
    let mut jobs = Vec::new();
    for i in 0..50 {
        let dir = root.join(format!("src{i:02}"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), format!("source {i}\n").repeat(100)).unwrap();
        std::fs::write(dir.join("sub/b.bin"), vec![i as u8; 200_000]).unwrap();
        let repo = Arc::clone(&repo);
        jobs.push(tokio::spawn(async move {
            let mut config = json!({"path": dir.to_str().unwrap()});
            let grants = GrantSet::from_config(&mut config, Purpose::Read).unwrap();
            let opts = JobOptions { grants, ..JobOptions::default() };
            files().snapshot(&repo, SnapshotRequest { config, ..Default::default() }, &opts).await
        }));
    }
    let mut ids = Vec::new();
    for j in jobs {
        let (id, m) = j.await.unwrap().expect("every concurrent backup succeeds");
        assert_eq!(m.summary.files, 2);
        assert_eq!(m.summary.dirs, 1);
        ids.push(id);
    }
    assert_eq!(s.repo.snapshots().await.unwrap().len(), 50);
    let report = s.repo.check(coffer_repo::ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
}

impl Scene {
    /// Snapshots with a restore mode (two files and a directory), then
    /// restores that snapshot with the same mode into a new `target`.
    async fn restore_with(&self, mode: &str, victim: &std::path::Path) -> Result<(), JobError> {
        self.run(json!({"mode": mode}), Limits::default(), CancelToken::new()).await.unwrap();
        let id = self.repo.snapshots().await.unwrap().pop().unwrap().0;
        let target = self.dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let mut grants = GrantSet::none();
        let target = grants.write_dir("--target", target.to_str().unwrap()).unwrap();
        let opts = JobOptions { grants, ..JobOptions::default() };
        let req = RestoreRequest {
            config: json!({"mode": mode, "victim": victim.to_str().unwrap()}),
            target: Some(target),
            force: false,
            paths: Vec::new(),
        };
        hostile().restore(&self.repo, &id, req, &opts).await
    }
}

#[tokio::test]
async fn restore_files_onto_a_planted_symlink_is_refused() {
    let s = Scene::new().await;
    let victim = s.dir.path().join("secret");
    let e = s.restore_with("restore-onto-symlink", &victim).await.expect_err("writing through the link must fail");
    let m = message(&e);
    assert!(m.contains("symlink"), "{m}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"TOP SECRET outside the grant", "the host wrote through a symlink");
}

#[tokio::test]
async fn restore_files_through_a_planted_directory_symlink_is_refused() {
    let s = Scene::new().await;
    let outside = s.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let e = s.restore_with("restore-through-symlink", &outside).await.expect_err("writing through the link must fail");
    let m = message(&e);
    assert!(m.contains("symlink"), "{m}");
    assert!(!outside.join("inner.txt").exists(), "the host wrote outside the restore target");
}

#[tokio::test]
async fn restore_files_outside_a_restore_is_refused() {
    let s = Scene::new().await;
    let mode = "restore-files-in-verify";
    s.run(json!({"mode": mode}), Limits::default(), CancelToken::new()).await.unwrap();
    let id = s.repo.snapshots().await.unwrap().pop().unwrap().0;
    let e = hostile()
        .verify(&s.repo, &id, &json!({"mode": mode}), &JobOptions::default())
        .await
        .expect_err("a verify must not write files");
    let m = message(&e);
    assert!(m.contains("only during a restore into a directory"), "{m}");
}
