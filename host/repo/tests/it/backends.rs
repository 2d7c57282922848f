//! One suite, every backend: file, memory, S3 (SeaweedFS), Azure (Azurite)
//! and GCS (fake-gcs-server), the servers started by the harness.

use std::sync::Arc;

use coffer_repo::{DynBackend, KeepPolicy, PruneOptions, ReadData, Repository, backend_for};

use coffer_repo::commands::lease::{DEFAULT_EXPIRY, Lease};

use crate::servers::TestServer;
use crate::support::*;

async fn suite(name: &str, backend: DynBackend) {
    let repo = Repository::init(Arc::clone(&backend), PASSWORD, small_pack_options()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_random_tree(&src, 4, 1 << 20, 80);
    let first = repo.backup_dir(&src, opts("s")).await.unwrap();
    let packs = backend.list(coffer_repo::FileKind::Pack).await.unwrap();
    assert!(packs.len() >= 3, "{name}: {} packs", packs.len());
    // Reopen through the same store with the password.
    let repo = Repository::open(Arc::clone(&backend), PASSWORD).await.unwrap();
    assert!(Repository::open(Arc::clone(&backend), b"nope").await.is_err());
    let second = repo.backup_dir(&src, opts("s")).await.unwrap();
    assert_eq!(backend.list(coffer_repo::FileKind::Pack).await.unwrap(), packs, "{name}: dedup");
    let out = dir.path().join("out");
    repo.restore_dir(&second, &out).await.unwrap();
    assert_same_tree(&src, &out);
    std::fs::write(src.join("f1"), random_bytes(1 << 20, 81)).unwrap();
    repo.backup_dir(&src, opts("s")).await.unwrap();
    repo.forget_snapshot(&first).await.unwrap();
    repo.forget(&KeepPolicy { last: Some(1), ..Default::default() }, false).await.unwrap();
    // Repack every pack with any unused byte, so the old f1 chunks are
    // certainly removed whatever packs they share.
    let pr = repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    assert!(pr.deleted_packs > 0, "{name}: {pr:?}");
    let report = repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{name}: {:?}", report.errors);
    let fixed = repo.repair_index().await.unwrap();
    assert!(fixed.unreadable_packs.is_empty(), "{name}");
    assert!(repo.check(ReadData::Subset(50.0)).await.unwrap().is_ok(), "{name}");
    lease_race(name, &repo).await;
    stream_names(name, &repo).await;
}

/// Stream object names (the longest stream and key names, every allowed
/// character, `@` and `.checkpoint` in the object names) round-trip through
/// the store: pushed, listed by prefix, fetched.
async fn stream_names(name: &str, repo: &Repository) {
    use coffer_repo::{PluginIdentity, StreamOwner};
    let plugin = PluginIdentity { name: "stream-names".into(), digest: "c".repeat(64), ..Default::default() };
    let owner = StreamOwner::of(&plugin).unwrap();
    let w = repo.stream_writer(owner.clone(), plugin).await.unwrap();
    let stream = format!("Aa0._-{}", "s".repeat(194));
    let keys = ["k", "K.9_x-y", "k.", &"k".repeat(200)];
    for (i, key) in keys.iter().enumerate() {
        let mut item = w.item(&stream, key, u64::MAX - i as u64, i % 2 == 0).await.unwrap();
        item.write(key.as_bytes()).await.unwrap();
        assert!(item.finish().await.unwrap().stored, "{name}: {key}");
    }
    w.checkpoint(&stream, "resume", None).await.unwrap();
    w.finish().await.unwrap();
    let listed = repo.stream_list(&owner, &stream, None, None).await.unwrap();
    assert_eq!(listed.len(), keys.len(), "{name}: {listed:?}");
    for (i, key) in keys.iter().enumerate() {
        let l = listed.iter().find(|l| l.key == *key).unwrap_or_else(|| panic!("{name}: {key} not listed"));
        assert_eq!((l.position, l.pinned), (Some(u64::MAX - i as u64), i % 2 == 0), "{name}: {key}");
        let mut out = Vec::new();
        repo.stream_fetch_into(&owner, &stream, key, &mut out).await.unwrap();
        assert_eq!(out, key.as_bytes(), "{name}: {key}");
    }
    // `k` is a prefix of the other keys' names but finds only itself.
    assert_eq!(repo.stream_item(&owner, &stream, "k").await.unwrap().unwrap().size, 1, "{name}");
    assert_eq!(repo.stream_checkpoint(&owner, &stream).await.unwrap().unwrap().state, "resume", "{name}");
    assert!(repo.streams().await.unwrap().contains(&(owner, stream)), "{name}");
}

/// Runs that race for the exclusive lease: exactly one wins each round, on
/// every store (create-only writes are enforced by the store itself).
async fn lease_race(name: &str, repo: &Repository) {
    for round in 0..4 {
        let (a, b, c) = tokio::join!(
            Lease::acquire(repo, "prune", DEFAULT_EXPIRY),
            Lease::acquire(repo, "prune", DEFAULT_EXPIRY),
            Lease::acquire(repo, "repair index", DEFAULT_EXPIRY)
        );
        let mut won = Vec::new();
        for r in [a, b, c] {
            match r {
                Ok(l) => won.push(l),
                Err(coffer_repo::Error::LeaseHeld { .. }) => {}
                Err(e) => panic!("{name} round {round}: {e}"),
            }
        }
        assert_eq!(won.len(), 1, "{name} round {round}: {} runs took the lease", won.len());
        let l = won.pop().unwrap();
        l.check().await.unwrap();
        l.release().await;
    }
}

/// Set by [`a_prune_lease_of_a_killed_process_is_taken_over_at_once_on_s3`]
/// for the child it runs: where to take a lease and hold it until killed.
const HOLDER_ENV: &str = "COFFER_TEST_LEASE_HOLDER";

/// Not a test of its own: the process that holds a lease and gets killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_prune_lease_of_a_killed_process_is_taken_over_at_once_on_s3"]
async fn lease_holder_child() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else { return };
    let (url, options): (String, Vec<(String, String)>) = serde_json::from_str(&spec).unwrap();
    let repo = Repository::open(backend_for(&url, &options).unwrap(), PASSWORD).await.unwrap();
    let _lease = Lease::acquire(&repo, "prune", DEFAULT_EXPIRY).await.unwrap();
    println!("lease held");
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_lease_of_a_killed_process_is_taken_over_at_once_on_s3() {
    use std::io::BufRead;
    let server = tokio::task::spawn_blocking(TestServer::seaweedfs).await.unwrap().unwrap();
    let (url, options) = server.location("killed-holder");
    let backend = backend_for(&url, &options).unwrap();
    let repo = Repository::init(Arc::clone(&backend), PASSWORD, small_pack_options()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_random_tree(&src, 3, 300_000, 5);
    let id = repo.backup_dir(&src, opts("s")).await.unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "backends::lease_holder_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, serde_json::to_string(&(&url, &options)).unwrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("lease held")), "the child took the lease");
    // While the holder lives, prune is refused and names it.
    let err = repo.prune(&PruneOptions::default()).await.unwrap_err().to_string();
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    // kill -9: no release, no cleanup.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(backend.list(coffer_repo::FileKind::Lease).await.unwrap().len(), 1, "the dead lease is still there");
    repo.prune(&PruneOptions::default()).await.unwrap();
    assert!(backend.list(coffer_repo::FileKind::Lease).await.unwrap().is_empty());
    assert!(repo.check(ReadData::All).await.unwrap().is_ok());
    let out = dir.path().join("out");
    repo.restore_dir(&id, &out).await.unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend() {
    let dir = tempfile::tempdir().unwrap();
    suite("file", backend_for(&format!("file://{}", dir.path().display()), &[]).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_path_is_a_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    suite("path", backend_for(dir.path().join("r").to_str().unwrap(), &[]).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend() {
    suite("memory", backend_for("memory://", &[]).unwrap()).await;
}

async fn server_suite(name: &str, start: fn() -> anyhow::Result<TestServer>) {
    let server = tokio::task::spawn_blocking(start).await.unwrap().unwrap();
    let (url, options) = server.location("suite");
    suite(name, backend_for(&url, &options).unwrap()).await;
    // A wrong endpoint fails with an error naming the operation, not a panic.
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_on_seaweedfs() {
    server_suite("s3", TestServer::seaweedfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_backend_on_azurite() {
    server_suite("azure", TestServer::azurite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_backend_on_fake_gcs_server() {
    server_suite("gcs", TestServer::fake_gcs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_scheme_and_unreachable_store_are_clear_errors() {
    let err = backend_for("ftp://x/y", &[]).unwrap_err().to_string();
    assert!(err.contains("unknown scheme"), "{err}");
    let opts = vec![
        ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
        ("aws_allow_http".to_string(), "true".to_string()),
        ("aws_access_key_id".to_string(), "k".to_string()),
        ("aws_secret_access_key".to_string(), "s".to_string()),
        ("aws_region".to_string(), "us-east-1".to_string()),
    ];
    let limits = coffer_repo::BackendOptions {
        op_timeout: std::time::Duration::from_secs(5),
        request_timeout: std::time::Duration::from_secs(2),
        max_retries: 1,
    };
    let b: DynBackend = Arc::new(coffer_repo::ObjectBackend::from_url("s3://bucket/repo", &opts, limits).unwrap());
    let err = Repository::open(b, PASSWORD).await.unwrap_err().to_string();
    assert!(err.contains("config"), "{err}");
}
