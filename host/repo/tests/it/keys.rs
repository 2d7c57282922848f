//! Key epochs and rotation, re-encryption beside a running backup, and
//! opening with a master secret recovered from Shamir shares.

use std::sync::Arc;

use coffer_repo::repofile::pack;
use coffer_repo::{EntryKind, EntryMeta, FileKind, PruneOptions, ReadData, Repository, shares};

use crate::support::*;

/// The key epoch in each pack's trailer.
fn pack_epochs(t: &TempRepo) -> Vec<u32> {
    t.packs()
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            pack::parse_trailer(&bytes[bytes.len() - pack::TRAILER_LEN..]).unwrap().epoch
        })
        .collect()
}

fn reencrypt() -> PruneOptions {
    PruneOptions { reencrypt: true, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_data_readable_and_reencryption_retires_the_old_key() {
    let t = TempRepo::new(small_pack_options()).await;
    let (a, b) = (t.dir.path().join("a"), t.dir.path().join("b"));
    make_random_tree(&a, 4, 1 << 20, 1);
    make_random_tree(&b, 4, 1 << 20, 2);
    let snap_a = t.repo.backup_dir(&a, opts("a")).await.unwrap();
    assert!(pack_epochs(&t).iter().all(|e| *e == 1), "a new repository seals under epoch 1");

    assert_eq!(t.repo.rotate_key().await.unwrap(), 2);
    let snap_b = t.repo.backup_dir(&b, opts("b")).await.unwrap();
    let epochs = pack_epochs(&t);
    assert!(epochs.contains(&1) && epochs.contains(&2), "{epochs:?}");
    // Chunk ids do not depend on the epoch: the same data dedups across it.
    let again = t.repo.backup_dir(&a, opts("a")).await.unwrap();
    assert_eq!(t.repo.read_manifest(&again).await.unwrap().summary.new_blobs, 0);

    let listed = t.repo.epochs().await.unwrap();
    assert_eq!(listed.iter().map(|e| (e.epoch, e.current)).collect::<Vec<_>>(), vec![(1, false), (2, true)]);
    assert!(listed.iter().all(|e| e.packs > 0 && e.bytes > 0 && e.held));

    // Another process opening now reads both epochs.
    let other = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    for (snap, src) in [(snap_a, &a), (snap_b, &b)] {
        let out = t.dir.path().join(format!("out-{}", snap.short()));
        other.restore_dir(&snap, &out).await.unwrap();
        assert_same_tree(src, &out);
    }

    let r = t.repo.prune(&reencrypt()).await.unwrap();
    assert!(r.reencrypted_packs > 0 && r.deleted_packs >= r.reencrypted_packs, "{r:?}");
    assert_eq!(r.retired_epochs, vec![1]);
    assert!(pack_epochs(&t).iter().all(|e| *e == 2), "every pack is under epoch 2 now");
    assert_eq!(t.repo.backend().list(FileKind::Epoch).await.unwrap().len(), 1, "epoch 1's key file is deleted");
    let listed = t.repo.epochs().await.unwrap();
    assert_eq!(listed.len(), 1);
    let c = t.repo.check(ReadData::All).await.unwrap();
    assert!(c.is_ok(), "{:?}", c.errors);
    for (snap, src) in [(snap_a, &a), (snap_b, &b)] {
        let out = t.dir.path().join(format!("after-{}", snap.short()));
        let fresh = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
        fresh.restore_dir(&snap, &out).await.unwrap();
        assert_same_tree(src, &out);
    }
    // Nothing left to do: a second run changes nothing.
    let r = t.repo.prune(&reencrypt()).await.unwrap();
    assert_eq!((r.reencrypted_packs, r.deleted_packs, r.retired_epochs.len()), (0, 0, 0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencryption_waits_for_a_backup_that_began_before_the_rotation() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 1 << 20, 3);
    t.repo.backup_dir(&src, opts("s")).await.unwrap();
    // A backup starts under epoch 1 and is still running...
    let w = t.repo.start_snapshot(opts("late")).await.unwrap();
    // ...while the key is rotated and a re-encryption runs.
    let other = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    other.rotate_key().await.unwrap();
    let r = other.prune(&reencrypt()).await.unwrap();
    assert!(r.retired_epochs.is_empty() && r.kept_epochs == vec![1], "{r:?}");
    assert!(r.waiting_markers > 0 && r.deleted_packs == 0, "old packs wait for the backup: {r:?}");
    // The backup writes new data under epoch 1 and commits.
    let data = random_bytes(3 << 20, 99);
    let mut e = w
        .add_entry(EntryMeta {
            path: "late".into(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            target: None,
        })
        .unwrap();
    e.write(&data).await.unwrap();
    e.finish().await.unwrap();
    let late = w.commit().await.unwrap();
    assert!(pack_epochs(&t).contains(&1));
    // Now nothing holds epoch 1 back: its packs (old and new) are rewritten
    // and its key retired.
    let r = other.prune(&reencrypt()).await.unwrap();
    assert_eq!(r.retired_epochs, vec![1], "{r:?}");
    assert!(pack_epochs(&t).iter().all(|e| *e == 2));
    let c = other.check(ReadData::All).await.unwrap();
    assert!(c.is_ok(), "{:?}", c.errors);
    let snap = other.open_snapshot(&late).await.unwrap();
    let entry = snap.entries.iter().find(|e| e.path == "late").unwrap();
    let mut got = Vec::new();
    let mut reader = other.entry_reader(entry);
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == data, "the late backup's data reads back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_does_not_commit_under_an_epoch_removed_while_it_ran() {
    let t = TempRepo::new(test_init_options()).await;
    let w = t.repo.start_snapshot(opts("s")).await.unwrap();
    t.repo.rotate_key().await.unwrap();
    // What a careless operator (or a storage fault) could do: delete the key
    // file of the epoch the running backup writes under.
    t.repo.backend().delete(FileKind::Epoch, "00000001").await.unwrap();
    let mut e = w
        .add_entry(EntryMeta {
            path: "x".into(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            target: None,
        })
        .unwrap();
    e.write(b"hello").await.unwrap();
    e.finish().await.unwrap();
    let err = w.commit().await.unwrap_err().to_string();
    assert!(err.contains("key epoch 1") && err.contains("retired"), "{err}");
    assert!(t.repo.snapshots().await.unwrap().is_empty(), "nothing was committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_epoch_key_is_named_by_check_and_restore() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 100_000, 4);
    let snap = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    t.repo.rotate_key().await.unwrap();
    std::fs::remove_file(t.root().join("epochs/00000001")).unwrap();
    let repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    let c = repo.check(ReadData::None).await.unwrap();
    assert!(c.errors.iter().any(|e| e.contains("key epoch 1 is missing")), "{:?}", c.errors);
    assert!(!c.damaged_paths.is_empty());
    let err = repo.restore_dir(&snap, &t.dir.path().join("out")).await.unwrap_err().to_string();
    assert!(err.contains("key epoch 1 is missing"), "{err}");
    // A damaged epoch file does not stop the repository from opening; check
    // names it, and backups refuse to write until a new epoch is started.
    std::fs::write(t.root().join("epochs/00000002"), b"{}").unwrap();
    let repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    let c = repo.check(ReadData::None).await.unwrap();
    assert!(c.errors.iter().any(|e| e.contains("epochs/00000002")), "{:?}", c.errors);
    let err = repo.backup_dir(&src, opts("s")).await.unwrap_err().to_string();
    assert!(err.contains("epochs/00000002") && err.contains("key rotate"), "{err}");
    assert_eq!(repo.rotate_key().await.unwrap(), 3, "the damaged number is not reused");
    let again = repo.backup_dir(&src, opts("s")).await.unwrap();
    let out = t.dir.path().join("out3");
    repo.restore_dir(&again, &out).await.unwrap();
    assert_same_tree(&src, &out);
    let listed = repo.epochs().await.unwrap();
    assert!(listed.iter().any(|e| e.epoch == 2 && e.damaged.is_some()), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_under_a_retired_epoch_are_not_used_for_deduplication() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 200_000, 6);
    t.repo.backup_dir(&src, opts("s")).await.unwrap();
    t.repo.rotate_key().await.unwrap();
    // Epoch 1's key is gone while its packs are still indexed (a backup
    // whose marker went stale indexed them after its epoch was retired).
    std::fs::remove_file(t.root().join("epochs/00000001")).unwrap();
    let repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    let again = repo.backup_dir(&src, opts("s")).await.unwrap();
    let out = t.dir.path().join("out");
    repo.restore_dir(&again, &out).await.unwrap();
    assert_same_tree(&src, &out);
    assert!(pack_epochs(&t).contains(&2), "the data was stored again under epoch 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_config_is_raised_to_version_2_on_open() {
    let t = TempRepo::new(test_init_options()).await;
    let cfg_path = t.root().join("config");
    let mut cfg = t.repo.config().clone();
    assert_eq!(cfg.version, 2);
    cfg.version = 1;
    cfg.sign(t.repo.keys());
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    assert_eq!(repo.config().version, 2);
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(stored["version"], 2);
    // The raised config still authenticates.
    Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_open_the_repository_and_a_wrong_secret_does_not() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 100_000, 5);
    let snap = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let id = t.repo.config().id;
    let parts = shares::split(t.repo.master_secret(), &id, 2, 3).unwrap();
    let given: Vec<(String, shares::Share)> =
        [&parts[2], &parts[0]].iter().map(|s| (format!("share {}", s.index), (*s).clone())).collect();
    let secret = shares::combine(&given, &id).unwrap();
    let repo = Repository::open_with_secret(Arc::clone(&t.backend), secret).await.unwrap();
    assert_eq!(repo.key_id(), None);
    let out = t.dir.path().join("out");
    repo.restore_dir(&snap, &out).await.unwrap();
    assert_same_tree(&src, &out);
    // A new password key made from the recovered secret opens it too.
    repo.add_key(b"recovered", coffer_repo::KdfParams::insecure_fast(), "recovered").await.unwrap();
    Repository::open(Arc::clone(&t.backend), b"recovered").await.unwrap();
    let err = Repository::open_with_secret(Arc::clone(&t.backend), coffer_repo::MasterSecret::generate())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not belong to this repository"), "{err}");
}

/// A prune killed after writing its consolidated index, before deleting the
/// index files it replaces, leaves every pack listed twice. Re-encrypting
/// from there must copy each blob once, and `check --read-data` must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencryption_after_an_interrupted_index_consolidation_copies_each_blob_once() {
    use coffer_repo::backend::fault::{Fault, FaultyBackend, Op};
    let t = TempRepo::new(small_pack_options()).await;
    let faulty = Arc::new(FaultyBackend::new(Arc::clone(&t.backend)));
    let repo = Repository::open(faulty.clone(), PASSWORD).await.unwrap();
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 1 << 20, 9);
    repo.backup_dir(&src, opts("s")).await.unwrap();
    std::fs::write(src.join("f1"), random_bytes(1 << 20, 10)).unwrap();
    let snap = repo.backup_dir(&src, opts("s")).await.unwrap();
    let before = t.backend.list(FileKind::Index).await.unwrap().len();
    assert!(before >= 2);
    // Make prune's phase 2 run (something to delete), and stop it at its
    // first index deletion.
    repo.forget(&coffer_repo::KeepPolicy { last: Some(1), ..Default::default() }, false).await.unwrap();
    faulty.inject(Fault::always(Op::Delete, Some(FileKind::Index)));
    let opts0 = PruneOptions { max_unused: 0.0, ..Default::default() };
    repo.prune(&opts0).await.expect_err("index deletion fails");
    faulty.clear();
    assert!(t.backend.list(FileKind::Index).await.unwrap().len() > before, "the consolidated index is beside the old");

    assert_eq!(repo.rotate_key().await.unwrap(), 2);
    let r = repo.prune(&reencrypt()).await.unwrap();
    assert!(r.reencrypted_packs > 0, "{r:?}");
    let c = repo.check(ReadData::All).await.unwrap();
    assert!(c.is_ok(), "{:?}", c.errors);
    // No pack holds a blob twice.
    let ring_repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    for p in t.packs() {
        let bytes = std::fs::read(&p).unwrap();
        let trailer = pack::parse_trailer(&bytes[bytes.len() - pack::TRAILER_LEN..]).unwrap();
        if trailer.epoch != 2 {
            continue;
        }
        let (_, entries) = pack::parse_pack(&ring_repo.load_keyring().await.unwrap(), &bytes).unwrap();
        let mut ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "pack {} holds a blob twice", p.display());
    }
    let out = t.dir.path().join("out");
    repo.restore_dir(&snap, &out).await.unwrap();
    assert_same_tree(&src, &out);
}

/// A key cache opens the repository without a password (and is left out
/// of password opens); a cache of another repository, a damaged one and a
/// revoked one are refused with errors that say so; the last password key
/// cannot be removed while only caches would remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cache_opens_without_a_password_until_its_key_is_removed() {
    use coffer_repo::{Error, KeyCache};
    let t = TempRepo::new(test_init_options()).await;
    let (id, cache) = t.repo.add_key_cache("archive").await.unwrap();
    let keys = t.repo.keys_list().await.unwrap();
    let kinds: Vec<(&str, bool)> = keys.iter().map(|k| (k.kind, k.id == id)).collect();
    assert_eq!(kinds, vec![("password", false), ("cache", true)]);

    // The file's bytes open the repository, as the key cache's key.
    let parsed = KeyCache::parse(&cache.encode()).unwrap();
    let opened = Repository::open_with_key_cache(Arc::clone(&t.backend), &parsed).await.unwrap();
    assert_eq!(opened.key_id(), Some(id));
    assert_eq!(opened.master_secret().expose(), t.repo.master_secret().expose());
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 100_000, 7);
    let snap = opened.backup_dir(&src, opts("src")).await.unwrap();
    let out = t.dir.path().join("out");
    t.repo.restore_dir(&snap, &out).await.unwrap();
    assert_same_tree(&src, &out);

    // A password never opens the cache's key file, and it is not counted.
    match Repository::open(Arc::clone(&t.backend), b"not the password").await {
        Err(Error::WrongPassword { tried: 1, .. }) => {}
        other => panic!("{other:?}"),
    }

    // Another repository's cache, and a cache whose key was altered.
    let other = TempRepo::new(test_init_options()).await;
    let (_, foreign) = other.repo.add_key_cache("other").await.unwrap();
    let e = Repository::open_with_key_cache(Arc::clone(&t.backend), &foreign).await.unwrap_err();
    assert!(matches!(e, Error::KeyCacheRefused { .. }) && e.to_string().contains("a key cache of repository"), "{e}");
    let text = String::from_utf8(cache.encode().to_vec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let forged = text.replace(v["file_key"].as_str().unwrap(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let forged = KeyCache::parse(forged.as_bytes()).unwrap();
    let e = Repository::open_with_key_cache(Arc::clone(&t.backend), &forged).await.unwrap_err();
    assert!(matches!(e, Error::KeyCacheRefused { .. }) && e.to_string().contains("does not open key"), "{e}");

    // The last password key stays while a cache exists.
    let password_key = keys.iter().find(|k| k.kind == "password").unwrap().id;
    let e = opened.remove_key(&password_key).await.unwrap_err();
    assert!(e.to_string().contains("last password key"), "{e}");

    // Removing the cache's key revokes the file.
    t.repo.remove_key(&id).await.unwrap();
    let e = Repository::open_with_key_cache(Arc::clone(&t.backend), &parsed).await.unwrap_err();
    assert!(matches!(e, Error::KeyCacheRevoked { .. }) && e.to_string().contains("revoked"), "{e}");
}
