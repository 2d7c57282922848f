//! One suite, every backend: file, memory, S3 (SeaweedFS), Azure (Azurite)
//! and GCS (fake-gcs-server), the servers started by the harness.

use std::sync::Arc;

use coffer_repo::{DynBackend, KeepPolicy, PruneOptions, ReadData, Repository, backend_for};

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
