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
    "lock-probe",
    "declare-name",
    "info-loop",
    "open-fifo",
    "log-flood",
    "deep-stack",
    "verify-flood",
    "stray-symlink",
    "terminal-escapes",
    "impostor",
    // The stream modes, tested through the CLI in `streams.rs`.
    "push",
    "pin-flood",
    "follow",
    "need-stream",
    // The network modes, tested in `network.rs`.
    "tls",
    "tls-name",
    "lookup",
    "read-key",
    "http",
    "http-ungranted",
    "http-redirect",
    "http-trace",
    // The `+srv` modes, tested in `dns.rs`.
    "srv",
    "srv-ungranted",
    "txt-ungranted",
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
async fn lock_probes_answer_only_inside_the_grants() {
    let s = Scene::new().await;
    let data = s.data();
    std::fs::create_dir(s.dir.path().join("outside")).unwrap();
    std::fs::write(s.dir.path().join("outside/secret"), b"TOP SECRET behind a symlink").unwrap();
    std::os::unix::fs::symlink(s.dir.path().join("outside"), s.dir.path().join("data/escape")).unwrap();
    // Whether a file is locked is asked only inside the grants.
    for victim in [format!("{data}/../secret"), "/etc/hostname".to_string(), format!("{data}/escape/secret")] {
        let e = s.must_fail(json!({"mode": "lock-probe", "path": data, "victim": victim}), Limits::default()).await;
        assert!(message(&e).contains("not inside a granted directory"), "{victim}: {}", message(&e));
    }
    s.run(
        json!({"mode": "lock-probe", "path": data, "victim": format!("{data}/file")}),
        Limits::default(),
        CancelToken::new(),
    )
    .await
    .unwrap();
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
            fetch: None,
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

#[tokio::test]
async fn a_name_the_plugin_declares_is_never_looked_up() {
    // The plugin reads a secret in `info` and declares
    // `connect("<hex of it>.exfil.invalid:443")`: refused, and (see the
    // runtime's unit test) without a lookup that would send the name out.
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "declare-name", "path": s.data()}), Limits::default()).await;
    assert!(matches!(e, JobError::NotGranted { .. }), "{e}");
    let m = message(&e);
    assert!(m.contains(".exfil.invalid:443") && m.contains("never looks up"), "{m}");
    // A name that the resolver would turn into the granted address is
    // refused too: the host compares the text the operator typed, and a
    // lookup of `127.1` (which the system resolver reads as 127.0.0.1) would
    // have let it through.
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = granted.local_addr().unwrap().port();
    let mut grants = GrantSet::none();
    grants.connect("url", &format!("127.0.0.1:{port}")).unwrap();
    let opts = JobOptions { grants, ..JobOptions::default() };
    let config = json!({"mode": "declare-name", "victim": format!("127.1:{port}")});
    let e = hostile()
        .snapshot(&s.repo, SnapshotRequest { config, ..Default::default() }, &opts)
        .await
        .expect_err("a name the operator never typed must not be granted");
    assert!(matches!(e, JobError::NotGranted { .. }), "{e}");
    s.assert_clean().await;
}

#[tokio::test]
async fn info_has_a_deadline_of_its_own() {
    let s = Scene::new().await;
    let limits = Limits { info_time: Duration::from_secs(1), ..Limits::default() };
    let started = std::time::Instant::now();
    let opts = JobOptions { limits, ..JobOptions::default() };
    let e = tokio::time::timeout(Duration::from_secs(60), hostile().info(Some(&json!({"mode": "info-loop"})), &opts))
        .await
        .expect("`info` must not run past its own limit")
        .expect_err("a plugin stuck in `info` fails");
    assert!(matches!(e, JobError::Fault { fault: Fault::InfoTimeLimit(_), .. }), "{e}");
    assert!(message(&e).contains("hung in `info`"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // A backup asks `info` first: the same limit, not the 24 h job limit.
    let e = s.must_fail(json!({"mode": "info-loop"}), limits).await;
    assert!(matches!(e, JobError::Fault { fault: Fault::InfoTimeLimit(_), .. }), "{e}");
}

/// Opens the FIFO for writing, which releases a reader blocked opening it
/// (a thread of the host's blocking pool); blocks until there is one, so
/// it runs on a thread of its own.
fn release_fifo(fifo: std::path::PathBuf) {
    std::thread::spawn(move || {
        let _ = std::fs::OpenOptions::new().write(true).open(fifo);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_grant_does_not_outlive_the_deadline() {
    let s = Arc::new(Scene::new().await);
    let fifo = s.dir.path().join("data/fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let data = s.data();
    // The time limit.
    let scene = Arc::clone(&s);
    let config = json!({"mode": "open-fifo", "path": data});
    let limits = Limits { wall_time: Duration::from_secs(2), ..Limits::default() };
    let job = tokio::spawn(async move { scene.run(config, limits, CancelToken::new()).await });
    let outcome = tokio::time::timeout(Duration::from_secs(30), job).await;
    release_fifo(fifo.clone());
    let e = outcome.expect("a plugin blocked opening a FIFO outlived its 2 s time limit").unwrap().unwrap_err();
    assert!(matches!(e, JobError::Fault { fault: Fault::TimeLimit(_), .. }), "{e}");
    s.assert_clean().await;
    // Ctrl-C.
    let scene = Arc::clone(&s);
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let config = json!({"mode": "open-fifo", "path": data});
    let job = tokio::spawn(async move { scene.run(config, Limits::default(), c).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), job).await;
    release_fifo(fifo);
    let e = outcome.expect("a plugin blocked opening a FIFO ignored the cancel").unwrap().unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    s.assert_clean().await;
    s.assert_still_serving().await;
}

/// Keeps a job's log lines.
#[derive(Default)]
struct KeptLines(std::sync::Mutex<Vec<String>>);

impl coffer_runtime::JobObserver for KeptLines {
    fn log(&self, _plugin: &str, _level: coffer_runtime::bindings::types::LogLevel, message: &str) {
        self.0.lock().unwrap().push(message.to_string());
    }

    fn progress(&self, _done: u64, _total: Option<u64>) {}
}

#[tokio::test]
async fn a_log_flood_is_capped_and_the_dropped_lines_counted() {
    let s = Scene::new().await;
    let kept = Arc::new(KeptLines::default());
    let opts = JobOptions { observer: kept.clone(), ..JobOptions::default() };
    let config = json!({"mode": "log-flood", "size": 100_010});
    hostile().snapshot(&s.repo, SnapshotRequest { config, ..Default::default() }, &opts).await.unwrap();
    let lines = kept.0.lock().unwrap();
    assert!(lines.len() < 100_010, "{} lines kept", lines.len());
    let last = lines.last().unwrap();
    assert!(last.contains("10 more log lines were dropped"), "{last}");
}

#[tokio::test]
async fn a_stack_overflow_is_named() {
    let s = Scene::new().await;
    let e = s.must_fail(json!({"mode": "deep-stack"}), Limits::default()).await;
    assert!(matches!(e, JobError::Trap { .. }), "{e}");
    assert!(message(&e).contains("stack overflow"), "{e}");
}

#[tokio::test]
async fn a_flood_of_verify_problems_meets_the_host_limit() {
    let s = Scene::new().await;
    s.run(json!({"mode": "verify-flood"}), Limits::default(), CancelToken::new()).await.unwrap();
    let id = s.repo.snapshots().await.unwrap().pop().unwrap().0;
    let e = hostile()
        .verify(&s.repo, &id, &json!({"mode": "verify-flood"}), &JobOptions::default())
        .await
        .expect_err("3 million problems are more than the host takes");
    let m = message(&e);
    assert!(m.contains("at most 1000000 problems") && !m.contains("fuel"), "{m}");
}

#[tokio::test]
async fn symlinks_a_restore_leaves_outside_the_snapshot_are_reported() {
    let s = Scene::new().await;
    let victim = s.dir.path().join("secret");
    let e = s.restore_with("stray-symlink", &victim).await.expect_err("a planted link must be reported");
    assert!(matches!(e, JobError::StraySymlinks { .. }), "{e}");
    let m = message(&e);
    assert!(m.contains("planted ->") && m.contains("not in the snapshot"), "{m}");
}

#[test]
fn plugin_text_is_printed_escaped() {
    let t = support::TestRepo::new();
    let wasm = support::hostile_wasm();
    let backup = t.ok(&["backup", wasm, "--set", "mode=terminal-escapes"]);
    t.ok(&["backup", wasm, "--set", "mode=ok"]);
    let snaps = t.json(&["snapshots"]);
    let id_of = |mode: &str| {
        snaps.as_array().unwrap().iter().find(|s| s["config"]["mode"] == mode).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (evil, ok) = (id_of("terminal-escapes"), id_of("ok"));
    // JSON carries the text as the plugin gave it.
    let raw = snaps.as_array().unwrap().iter().find(|s| s["id"] == evil.as_str()).unwrap()["source"].clone();
    assert!(raw.as_str().unwrap().contains("\x1b[2J\x1b]0;pwned\x07\nsnapshot 00000000"), "{raw}");
    let listed = t.ok(&["snapshots"]);
    assert!(listed.contains(r"\u{1b}[2J"), "{listed}");
    let outputs = [
        ("backup", backup),
        ("snapshots", listed),
        ("ls", t.ok(&["ls", &evil])),
        ("ls -l", t.ok(&["ls", "-l", &evil])),
        ("diff", t.ok(&["diff", &ok, &evil])),
        ("plugin inspect", t.ok(&["plugin", "inspect", wasm, "--set", "mode=terminal-escapes"])),
    ];
    for (what, out) in outputs {
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{what} printed a raw escape: {out:?}");
        assert!(
            !out.lines().any(|l| l.starts_with("snapshot 00000000") || l.starts_with("forged entry")),
            "{what} printed a forged line: {out}"
        );
    }
}

#[test]
fn an_impostor_of_a_builtin_is_never_its_parent_nor_latest() {
    let t = support::TestRepo::new();
    let www = t.dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), b"the real page\n").unwrap();
    let www = www.canonicalize().unwrap().to_str().unwrap().to_string();
    let path = format!("path={www}");
    let real = t.json(&["backup", "files", "--set", &path]);
    // A plugin file that calls itself `files`, claims `files:<www>` and
    // stores the same sizes, modes and times with other bytes.
    let fake = t.json(&["backup", support::hostile_wasm(), "--set", "mode=impostor", "--set", &path]);
    assert_eq!(fake["plugin"]["name"], "files");
    assert_eq!(fake["source"], real["source"]);
    assert_ne!(fake["plugin"]["digest"], real["plugin"]["digest"]);
    assert_eq!(real["plugin"]["builtin"], true);
    assert!(!fake["plugin"]["builtin"].as_bool().unwrap_or(false), "{fake}");
    // `latest:files:<www>` is the built-in's snapshot, not the newer fake.
    let latest = format!("latest:{}", real["source"].as_str().unwrap());
    let target = t.dir.path().join("restored");
    t.ok(&["restore", &latest, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("index.html")).unwrap(), b"the real page\n");
    // The built-in's next backup takes its own snapshot as parent and
    // reads the file again, rather than keeping the fake as "unchanged".
    let next = t.json(&["backup", "files", "--set", &path]);
    assert_eq!(next["parent"], real["id"], "the impostor became the parent: {next}");
    let target = t.dir.path().join("restored-next");
    t.ok(&["restore", &latest, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("index.html")).unwrap(), b"the real page\n");
    // `snapshots` tells them apart.
    let listed = t.ok(&["snapshots"]);
    let short = |v: &serde_json::Value| v["plugin"]["digest"].as_str().unwrap()[..8].to_string();
    assert!(listed.contains(&format!("files@{} ", short(&real))), "{listed}");
    assert!(listed.contains(&format!("files@{}*", short(&fake))), "{listed}");
    // Naming the fake by id reaches it, with a warning naming its writer
    // (the built-in then refuses the fake's config).
    let target = t.dir.path().join("restored-fake");
    let out = t.coffer(&["restore", fake["id"].as_str().unwrap(), "--target", target.to_str().unwrap()]);
    assert!(support::stderr(&out).contains("plugin file calling itself files"), "{}", support::stderr(&out));
}
