//! Maintenance that runs beside other maintenance or finds a damaged
//! repository: two prunes at once, a crashed prune's lease, packs that no
//! index lists, damaged snapshot files.

use std::sync::Arc;
use std::time::Duration;

use coffer_repo::blob::BlobKind;
use coffer_repo::commands::lease::{DEFAULT_EXPIRY, Lease};
use coffer_repo::{Error, FileKind, KeepPolicy, PruneOptions, ReadData, Repository};

use crate::support::*;

async fn reopen(t: &TempRepo) -> Repository {
    Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_prune_is_refused_while_the_lease_is_held_and_names_the_holder() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 200_000, 1);
    t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let lease = Lease::acquire(&t.repo, "prune", DEFAULT_EXPIRY).await.unwrap();
    let other = reopen(&t).await;
    let err = other.prune(&PruneOptions::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::LeaseHeld { .. }), "{text}");
    assert!(text.contains(&format!("pid {}", std::process::id())), "names the holder: {text}");
    assert!(text.contains("locks/exclusive."), "names the lease object: {text}");
    assert!(matches!(other.repair_index().await, Err(Error::LeaseHeld { .. })));
    // A dry run changes nothing and needs no lease.
    other.prune(&PruneOptions { dry_run: true, ..Default::default() }).await.unwrap();
    lease.release().await;
    other.prune(&PruneOptions::default()).await.unwrap();
    assert!(t.backend.list(FileKind::Lease).await.unwrap().is_empty(), "a finished prune frees the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_prunes_never_lose_a_kept_snapshot() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    for round in 0..4u64 {
        let _ = std::fs::remove_dir_all(&src);
        make_random_tree(&src, 4, 300_000, 10 * round);
        t.repo.backup_dir(&src, opts("s")).await.unwrap();
        let a = reopen(&t).await;
        let b = reopen(&t).await;
        // B forgets all but the newest snapshot, then both prune at once, B
        // repacking everything it can.
        b.forget(&KeepPolicy { last: Some(1), ..Default::default() }, false).await.unwrap();
        let delay = Duration::from_millis(15 * round);
        let (plain, repack_all) = (PruneOptions::default(), PruneOptions { max_unused: 0.0, ..Default::default() });
        let (ra, rb) = tokio::join!(a.prune(&plain), async {
            tokio::time::sleep(delay).await;
            b.prune(&repack_all).await
        });
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert!(matches!(e, Error::LeaseHeld { .. }), "only the lease may stop a prune: {e}");
            }
        }
        assert!(ra.is_ok() || rb.is_ok(), "one of the two prunes ran");
        let fresh = reopen(&t).await;
        let report = fresh.check(ReadData::All).await.unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.errors);
        let snaps = fresh.snapshots().await.unwrap();
        let out = t.dir.path().join(format!("out{round}"));
        fresh.restore_dir(&snaps.last().unwrap().0, &out).await.unwrap();
        assert_same_tree(&src, &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_its_old_holder_stops_before_deleting() {
    let t = TempRepo::new(test_init_options()).await;
    let old = Lease::acquire(&t.repo, "prune", Duration::from_secs(5)).await.unwrap();
    old.check().await.unwrap();
    // A holder on this machine whose process lives is not taken for dead.
    assert!(matches!(Lease::acquire(&t.repo, "prune", DEFAULT_EXPIRY).await, Err(Error::LeaseHeld { .. })));
    // Paused, or cut off from storage, past its expiry.
    old.stop_refreshing();
    tokio::time::sleep(Duration::from_millis(5_600)).await;
    let new = Lease::acquire(&t.repo, "prune", DEFAULT_EXPIRY).await.unwrap();
    let err = old.check().await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    new.check().await.unwrap();
    new.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_indexes_again_a_pack_whose_index_file_was_lost() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 400_000, 7);
    let first = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let first_index: Vec<_> = t.backend.list(FileKind::Index).await.unwrap();
    std::fs::write(src.join("new"), random_bytes(300_000, 99)).unwrap();
    let second = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    // The first backup's index file is lost: the second snapshot's
    // unchanged files live in packs that no index lists any more.
    for l in &first_index {
        t.backend.delete(FileKind::Index, &l.name).await.unwrap();
    }
    let fresh = reopen(&t).await;
    fresh.forget_snapshot(&first).await.unwrap();
    let report = fresh.prune(&PruneOptions::default()).await.unwrap();
    assert!(report.reindexed_packs > 0, "{report:?}");
    let fresh = reopen(&t).await;
    let check = fresh.check(ReadData::All).await.unwrap();
    assert!(check.is_ok(), "{:?}", check.errors);
    let out = t.dir.path().join("out");
    fresh.restore_dir(&second, &out).await.unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_copies_out_the_blobs_of_a_pack_stored_under_another_name() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 5, 1 << 20, 21);
    let id = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    // A pack holding file data only (no tree), moved to another valid name.
    let mut moved = None;
    for l in t.backend.list(FileKind::Pack).await.unwrap() {
        let (_, entries) = t.repo.read_pack_header(&l.id().unwrap(), l.size).await.unwrap();
        if entries.iter().all(|e| e.kind == BlobKind::Data) {
            moved = Some(l);
            break;
        }
    }
    let l = moved.expect("a data-only pack");
    let other: String = l.name.chars().rev().collect();
    let from = t.root().join(FileKind::Pack.path(&l.name));
    let to = t.root().join(FileKind::Pack.path(&other));
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::rename(&from, &to).unwrap();
    let fresh = reopen(&t).await;
    let report = fresh.prune(&PruneOptions::default()).await.unwrap();
    assert_eq!(report.rescued_packs, 1, "{report:?}");
    assert_eq!(report.dropped_missing_packs.len(), 1, "{report:?}");
    let fresh = reopen(&t).await;
    let check = fresh.check(ReadData::All).await.unwrap();
    assert!(check.is_ok(), "{:?}", check.errors);
    let out = t.dir.path().join("out");
    fresh.restore_dir(&id, &out).await.unwrap();
    assert_same_tree(&src, &out);
    // Its blobs are safe elsewhere now: the next prune removes it.
    fresh.prune(&PruneOptions::default()).await.unwrap();
    assert!(!to.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_skipped_reported_and_set_aside() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 50_000, 3);
    let bad = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let good = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let path = t.root().join(FileKind::Snapshot.path(&bad.to_hex()));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let fresh = reopen(&t).await;
    // Listing, `latest` and new backups go on without it.
    let snaps = fresh.snapshots().await.unwrap();
    assert_eq!(snaps.iter().map(|s| s.0).collect::<Vec<_>>(), vec![good]);
    assert_eq!(fresh.resolve_snapshot("latest").await.unwrap(), good);
    let third = fresh.backup_dir(&src, opts("s")).await.unwrap();
    assert_eq!(fresh.resolve_snapshot("latest").await.unwrap(), third);
    // check reports it; prune refuses, since it cannot know what it uses.
    let report = fresh.check(ReadData::None).await.unwrap();
    assert!(report.errors.iter().any(|e| e.contains(&bad.short())), "{:?}", report.errors);
    let err = fresh.prune(&PruneOptions::default()).await.unwrap_err().to_string();
    assert!(err.contains("repair snapshots"), "{err}");
    // repair snapshots names it and moves it aside, whole.
    let dry = fresh.repair_snapshots(true).await.unwrap();
    assert_eq!(dry.quarantined.len(), 1);
    assert!(path.exists(), "a dry run moves nothing");
    let done = fresh.repair_snapshots(false).await.unwrap();
    assert_eq!(done.quarantined[0].0, FileKind::Snapshot.path(&bad.to_hex()));
    assert!(!path.exists());
    assert!(t.root().join(FileKind::QuarantinedSnapshot.path(&bad.to_hex())).exists());
    fresh.prune(&PruneOptions::default()).await.unwrap();
    assert!(fresh.check(ReadData::All).await.unwrap().is_ok());
}
