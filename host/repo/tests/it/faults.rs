//! A store that fails mid-backup: clear errors and no half snapshot.

use std::sync::Arc;
use std::time::Duration;

use coffer_repo::backend::fault::{Effect, Fault, FaultyBackend, Op};
use coffer_repo::{FileKind, ReadData, Repository};

use crate::support::*;

async fn faulty_repo() -> (TempRepo, Arc<FaultyBackend>, Repository) {
    let t = TempRepo::new(small_pack_options()).await;
    let faulty = Arc::new(FaultyBackend::new(Arc::clone(&t.backend)));
    let repo = Repository::open(faulty.clone(), PASSWORD).await.unwrap();
    (t, faulty, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_at_every_write_stage_leave_no_snapshot() {
    let cases = [
        ("pack", Fault::nth(Op::Put, Some(FileKind::Pack), 0)),
        ("index", Fault::always(Op::Put, Some(FileKind::Index))),
        ("snapshot", Fault::always(Op::Put, Some(FileKind::Snapshot))),
        ("session", Fault::always(Op::Put, Some(FileKind::Session))),
        (
            "hanging pack",
            Fault {
                op: Op::Put,
                kind: Some(FileKind::Pack),
                after: 0,
                times: 1,
                effect: Effect::Hang(Duration::from_millis(300)),
            },
        ),
        ("index read", Fault::always(Op::Get, Some(FileKind::Index))),
    ];
    for (what, fault) in cases {
        let (t, faulty, repo) = faulty_repo().await;
        let src = t.dir.path().join("src");
        make_random_tree(&src, 4, 1 << 20, 2);
        // A first good backup, so a failing one has something to leave alone.
        let good = repo.backup_dir(&src, opts("s")).await.unwrap();
        std::fs::write(src.join("f1"), random_bytes(3 << 20, 77)).unwrap();
        faulty.inject(fault);
        let err = repo.backup_dir(&src, opts("s")).await.expect_err(what).to_string();
        assert!(faulty.injected() > 0, "{what}: fault never fired");
        assert!(
            err.contains("injected fault") || err.contains("timed out"),
            "{what}: error should carry the storage failure: {err}"
        );
        assert!(err.contains('/') || err.contains("index"), "{what}: error should name the object: {err}");
        faulty.clear();
        let snaps = repo.snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1, "{what}: a failed backup left a snapshot");
        assert_eq!(snaps[0].0, good);
        let report = repo.check(ReadData::All).await.unwrap();
        assert!(report.is_ok(), "{what}: {:?}", report.errors);
        // No session marker survives a failed backup, nor a pack file
        // that never got its name.
        assert!(t.backend.list(FileKind::Session).await.unwrap().is_empty(), "{what}");
        assert_eq!(t.staging_files(), Vec::<std::path::PathBuf>::new(), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_returning_short_reads_gives_a_clear_error() {
    let (t, faulty, repo) = faulty_repo().await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 1 << 20, 4);
    let id = repo.backup_dir(&src, opts("s")).await.unwrap();
    faulty.inject(Fault {
        op: Op::Get,
        kind: Some(FileKind::Pack),
        after: 0,
        times: u64::MAX,
        effect: Effect::Truncate,
    });
    let err = repo.restore_dir(&id, &t.dir.path().join("out")).await.unwrap_err().to_string();
    assert!(err.contains("data/") && err.contains("damaged"), "{err}");
}

/// A prune whose repack cannot write its new pack (a full disk) says so in
/// its own words: no snapshot is involved, so none may be named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_that_cannot_write_its_packs_says_what_failed_without_naming_a_snapshot() {
    let (t, faulty, repo) = faulty_repo().await;
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(src.join(name), random_bytes(400 << 10, 900 + i as u64)).unwrap();
    }
    let first = repo.backup_dir(&src, opts("s")).await.unwrap();
    std::fs::remove_file(src.join("b")).unwrap();
    repo.backup_dir(&src, opts("s")).await.unwrap();
    repo.forget_snapshot(&first).await.unwrap();
    // The pack holding a, b and c is now partly unused: prune repacks it.
    faulty.inject(Fault::always(Op::Put, Some(FileKind::Pack)));
    let err = repo
        .prune(&coffer_repo::PruneOptions { max_unused: 0.0, ..Default::default() })
        .await
        .expect_err("the repack cannot write its pack")
        .to_string();
    assert!(faulty.injected() > 0, "the fault never fired: {err}");
    assert!(err.contains("prune could not store the blobs it repacks") && err.contains("injected fault"), "{err}");
    assert!(!err.contains("snapshot"), "prune involves no snapshot: {err}");
    faulty.clear();
    let report = repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
}
