//! Round trips of real files, deduplication and incremental behaviour.

use std::path::Path;

use coffer_repo::{BackupKind, InitOptions, ReadData, SnapshotOptions, diff};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr_share_doc_round_trips_byte_identical_with_modes_and_mtimes() {
    let t = TempRepo::new(test_init_options()).await;
    let src = Path::new("/usr/share/doc");
    let id = t.repo.backup_dir(src, opts("doc")).await.unwrap();
    let out = t.dir.path().join("restore");
    t.repo.restore_dir(&id, &out).await.unwrap();
    assert_same_tree(src, &out);
    let snap = t.repo.open_snapshot(&id).await.unwrap();
    assert!(snap.manifest.summary.files > 100, "expected a real tree, got {:?}", snap.manifest.summary);
    let report = t.repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backing_up_the_same_data_twice_adds_no_packs() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 12, 3 << 20, 1);
    t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let before = t.packs();
    // No parent: every file is read and chunked again, and every chunk dedups.
    let id2 = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let after = t.packs();
    assert_eq!(before, after, "a second identical backup wrote packs");
    let m = t.repo.read_manifest(&id2).await.unwrap();
    assert_eq!(m.summary.new_blobs, 0);
    assert_eq!(m.summary.bytes_read, m.summary.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_percent_change_adds_about_five_percent() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    let (files, size) = (40usize, 4usize << 20);
    make_random_tree(&src, files, size, 7);
    let first = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let total = (files * size) as f64;
    // Rewrite 2 of 40 files (5% of the bytes) and insert 100 bytes into the
    // middle of a third: content-defined chunking keeps the rest.
    std::fs::write(src.join("f1"), random_bytes(size, 999)).unwrap();
    std::fs::write(src.join("f2"), random_bytes(size, 998)).unwrap();
    let mut f4 = std::fs::read(src.join("f4")).unwrap();
    f4.splice(size / 2..size / 2, std::iter::repeat_n(b'x', 100));
    std::fs::write(src.join("f4"), &f4).unwrap();
    let before = pack_bytes(&t);
    let second = t
        .repo
        .backup_dir(&src, SnapshotOptions { parent: Some(first), kind: BackupKind::Incremental, ..opts("s") })
        .await
        .unwrap();
    let added = (pack_bytes(&t) - before) as f64;
    let m = t.repo.read_manifest(&second).await.unwrap();
    let share = m.summary.new_bytes as f64 / total;
    assert!((0.05..=0.085).contains(&share), "new data is {:.1}% of the tree", share * 100.0);
    assert!(added / total <= 0.09, "packs grew by {:.1}%", added / total * 100.0);
    // Unchanged files were reused without being read.
    assert!(m.summary.reused_entries >= (files - 3) as u64, "{:?}", m.summary);
    assert!(m.summary.bytes_read <= 3 * size as u64 + 200_000, "{:?}", m.summary);
    // diff names exactly the changed files.
    let a = t.repo.open_snapshot(&first).await.unwrap();
    let b = t.repo.open_snapshot(&second).await.unwrap();
    let d = diff(&a, &b);
    let changed: Vec<&str> = d.changed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(changed, vec!["f1", "f2", "f4"]);
    assert!(d.added.is_empty() && d.removed.is_empty());
    let out = t.dir.path().join("out");
    t.repo.restore_dir(&second, &out).await.unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backups_both_succeed_and_dedup_against_committed_data() {
    let t = TempRepo::new(test_init_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 10, 2 << 20, 3);
    let (r1, r2) = (t.repo.clone(), t.repo.clone());
    let (s1, s2) = (src.clone(), src.clone());
    let a = tokio::spawn(async move { r1.backup_dir(&s1, opts("a")).await });
    let b = tokio::spawn(async move { r2.backup_dir(&s2, opts("b")).await });
    let (ia, ib) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_ne!(ia, ib);
    let packs = t.packs();
    let third = t.repo.backup_dir(&src, opts("c")).await.unwrap();
    assert_eq!(packs, t.packs(), "a backup after both committed should dedup completely");
    assert_eq!(t.repo.read_manifest(&third).await.unwrap().summary.new_blobs, 0);
    let report = t.repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
    for id in [ia, ib] {
        let out = t.dir.path().join(format!("out-{}", id.short()));
        t.repo.restore_dir(&id, &out).await.unwrap();
        assert_same_tree(&src, &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_api_attributes_reuse_and_streaming() {
    use coffer_repo::{EntryKind, EntryMeta, PluginIdentity};
    let t = TempRepo::new(test_init_options()).await;
    let pg_opts = || SnapshotOptions {
        tenant: "acme".into(),
        source: "pg-main".into(),
        plugin: PluginIdentity {
            name: "postgres".into(),
            version: "0.1.0".into(),
            digest: "ab".into(),
            builtin: false,
        },
        config: serde_json::json!({"url": "postgres://u:secret-pw@db/", "password": "secret-pw"}),
        ..Default::default()
    };
    let meta = |path: &str| EntryMeta {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o600,
        mtime: 1_700_000_000,
        mtime_nsec: 5,
        target: None,
    };
    let w = t.repo.start_snapshot(pg_opts()).await.unwrap();
    let mut e = w.add_entry(meta("base/1")).unwrap();
    let data = random_bytes(5_000_000, 11);
    for piece in data.chunks(7777) {
        e.write(piece).await.unwrap();
    }
    let digest = e.finish().await.unwrap();
    assert_eq!(digest.size, data.len() as u64);
    assert_eq!(digest.blake3.0, *blake3::hash(&data).as_bytes());
    assert!(w.add_entry(meta("base/1")).is_err(), "duplicate paths are refused");
    assert!(w.add_entry(meta("../escape")).is_err(), "`..` is refused");
    w.set_attribute("start_lsn", "0/2000028");
    let open = w.add_entry(meta("unfinished")).unwrap();
    drop(open);
    // An entry dropped half-written fails the whole snapshot.
    let err = w.commit().await.unwrap_err().to_string();
    assert!(err.contains("unfinished") && err.contains("dropped"), "{err}");

    let w = t.repo.start_snapshot(pg_opts()).await.unwrap();
    let mut e = w.add_entry(meta("base/1")).unwrap();
    e.write(&data).await.unwrap();
    e.finish().await.unwrap();
    // Committing while an entry is still being written is refused.
    let _still_open = w.add_entry(meta("still-open")).unwrap();
    w.set_attribute("start_lsn", "0/2000028");
    let err = w.commit().await.unwrap_err().to_string();
    assert!(err.contains("still open"), "{err}");

    let w = t.repo.start_snapshot(pg_opts()).await.unwrap();
    let mut e = w.add_entry(meta("base/1")).unwrap();
    e.write(&data).await.unwrap();
    e.finish().await.unwrap();
    w.set_attribute("start_lsn", "0/2000028");
    let first = w.commit().await.unwrap();

    let snap = t.repo.open_snapshot(&first).await.unwrap();
    assert_eq!(snap.attribute("start_lsn"), Some("0/2000028"));
    assert_eq!(snap.manifest.tenant, "acme");
    let stored = serde_json::to_string(&snap.manifest).unwrap();
    assert!(!stored.contains("secret-pw"), "secrets must not reach the manifest: {stored}");
    let mut r = t.repo.entry_reader(snap.entry("base/1").unwrap());
    let mut back = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        back.extend_from_slice(&buf[..n]);
    }
    assert!(back == data);

    let w = t
        .repo
        .start_snapshot(SnapshotOptions { source: "pg-main".into(), parent: Some(first), ..Default::default() })
        .await
        .unwrap();
    let d = w.reuse_entry("base/1").unwrap();
    assert_eq!(d.size, data.len() as u64);
    assert!(w.reuse_entry("nope").is_err());
    let second = w.commit().await.unwrap();
    let m = t.repo.read_manifest(&second).await.unwrap();
    assert_eq!((m.summary.reused_entries, m.summary.bytes_read, m.summary.new_blobs), (1, 0, 0));
    assert_eq!(t.repo.resolve_snapshot("latest").await.unwrap(), second);
    assert_eq!(t.repo.resolve_snapshot(&second.to_hex()[..10]).await.unwrap(), second);

    // The change check and the keeping in one step: only an exact match of
    // size, mtime and permission bits keeps the parent's file.
    let w = t
        .repo
        .start_snapshot(SnapshotOptions { source: "pg-main".into(), parent: Some(second), ..Default::default() })
        .await
        .unwrap();
    let size = data.len() as u64;
    let mtime = (1_700_000_000, 5);
    assert!(!w.reuse_unchanged("base/1", size + 1, mtime, 0o600).unwrap(), "size differs");
    assert!(!w.reuse_unchanged("base/1", size, (1_700_000_000, 6), 0o600).unwrap(), "mtime differs");
    assert!(!w.reuse_unchanged("base/1", size, mtime, 0o644).unwrap(), "mode differs");
    assert!(!w.reuse_unchanged("base/2", size, mtime, 0o600).unwrap(), "not in the parent");
    assert!(w.reuse_unchanged("base/1", size, mtime, 0o600).unwrap());
    let err = w.reuse_unchanged("base/1", size, mtime, 0o600).unwrap_err().to_string();
    assert!(err.contains("added twice"), "{err}");
    let third = w.commit().await.unwrap();
    let m = t.repo.read_manifest(&third).await.unwrap();
    assert_eq!((m.summary.reused_entries, m.summary.bytes_read), (1, 0));
    let snap = t.repo.open_snapshot(&third).await.unwrap();
    assert_eq!(snap.entry("base/1").unwrap().blake3.unwrap().0, *blake3::hash(&data).as_bytes());
}

/// Files written from plain threads (`write_here`), as the host's file
/// readers do: with four writers the blob workers are often all busy, so
/// chunks are also compressed and sealed on the writing threads, and small
/// packs recycle their buffers. Everything must restore byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_from_plain_threads_round_trip() {
    use std::os::unix::fs::MetadataExt;

    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut names = Vec::new();
    for i in 0..12u64 {
        let data = if i % 4 == 3 { b"coffer ".repeat(300_000) } else { random_bytes(3 << 20, 100 + i) };
        let name = format!("f{i}");
        std::fs::write(src.join(&name), data).unwrap();
        names.push(name);
    }
    let writer = t.repo.start_snapshot(opts("threads")).await.unwrap();
    let adder = writer.adder();
    let names = std::sync::Arc::new(std::sync::Mutex::new(names));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (adder, names, src) = (adder.clone(), names.clone(), src.clone());
            std::thread::spawn(move || {
                let mut bytes = 0u64;
                while let Some(name) = names.lock().unwrap().pop() {
                    let path = src.join(&name);
                    let md = std::fs::metadata(&path).unwrap();
                    let meta = coffer_repo::EntryMeta {
                        path: name,
                        kind: coffer_repo::EntryKind::File,
                        mode: md.mode() & 0o7777,
                        mtime: md.mtime(),
                        mtime_nsec: md.mtime_nsec() as u32,
                        target: None,
                    };
                    let mut entry = adder.add_entry(meta).unwrap();
                    let data = std::fs::read(&path).unwrap();
                    for piece in data.chunks(100_000) {
                        entry.write_here(piece).unwrap();
                    }
                    let digest = entry.finish_here().unwrap();
                    assert_eq!(digest.size, data.len() as u64);
                    assert_eq!(digest.blake3.0, *blake3::hash(&data).as_bytes());
                    bytes += digest.size;
                }
                bytes
            })
        })
        .collect();
    let written: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let id = writer.commit().await.unwrap();
    let m = t.repo.read_manifest(&id).await.unwrap();
    assert_eq!((m.summary.files, m.summary.bytes), (12, written));
    // The random files are all new; the text ones repeat themselves.
    assert!((9 * (3 << 20)..=written).contains(&m.summary.new_bytes), "{:?}", m.summary);
    assert!(m.summary.new_packs > 10, "{:?}", m.summary);
    let out = t.dir.path().join("out");
    t.repo.restore_dir(&id, &out).await.unwrap();
    assert_same_tree(&src, &out);
    let report = t.repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
}

/// A file whose read fails partway is discarded: the snapshot commits
/// without it, its path can be added again, and nothing of it is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_file_is_left_out_and_the_snapshot_commits() {
    let t = TempRepo::new(test_init_options()).await;
    let meta = |path: &str| coffer_repo::EntryMeta {
        path: path.into(),
        kind: coffer_repo::EntryKind::File,
        mode: 0o644,
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        target: None,
    };
    let writer = t.repo.start_snapshot(opts("discard")).await.unwrap();
    let mut a = writer.add_entry(meta("a")).unwrap();
    a.write(b"kept").await.unwrap();
    a.finish().await.unwrap();
    let mut b = writer.add_entry(meta("b")).unwrap();
    b.write(&random_bytes(3 << 20, 5)).await.unwrap();
    assert_eq!(b.size(), 3 << 20);
    b.discard();
    let mut c = writer.add_entry(meta("c")).unwrap();
    c.write(&random_bytes(1 << 20, 6)).await.unwrap();
    c.discard();
    // The discarded path is free again, for a retry.
    let mut c = writer.add_entry(meta("c")).unwrap();
    c.write(b"second try").await.unwrap();
    c.finish().await.unwrap();
    let id = writer.commit().await.unwrap();
    let snap = t.repo.open_snapshot(&id).await.unwrap();
    let paths: Vec<(&str, u64)> = snap.entries.iter().map(|e| (e.path.as_str(), e.size)).collect();
    assert_eq!(paths, vec![("a", 4), ("c", 10)]);
    let out = t.dir.path().join("out");
    t.repo.restore_dir(&id, &out).await.unwrap();
    assert_eq!(std::fs::read(out.join("c")).unwrap(), b"second try");
    assert!(!out.join("b").exists());
    let report = t.repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
}

/// A snapshot whose entry list spans many tree blobs: the list is encoded
/// and cut while it is stored, and the result must not depend on the order
/// the entries arrived in. A second snapshot of the same entries, added in
/// the opposite order, names the same tree blobs and stores none.
#[tokio::test]
async fn a_long_entry_list_is_cut_into_the_same_tree_blobs_in_any_order() {
    let chunker = coffer_repo::chunker::ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384 };
    let t = TempRepo::new(InitOptions { chunker, ..test_init_options() }).await;
    let meta = |i: usize| coffer_repo::EntryMeta {
        path: format!("dir-{:03}/file-{i:05}.txt", i % 97),
        kind: coffer_repo::EntryKind::File,
        mode: 0o644,
        mtime: 1_700_000_000 + i as i64,
        mtime_nsec: 0,
        target: None,
    };
    let snapshot = |order: Vec<usize>| {
        let repo = t.repo.clone();
        async move {
            let writer = repo.start_snapshot(opts("long-list")).await.unwrap();
            for i in order {
                let mut w = writer.add_entry(meta(i)).unwrap();
                w.write(format!("content {i}").as_bytes()).await.unwrap();
                w.finish().await.unwrap();
            }
            writer.commit().await.unwrap()
        }
    };
    let n = 5000;
    let first = snapshot((0..n).collect()).await;
    let second = snapshot((0..n).rev().collect()).await;
    let a = t.repo.open_snapshot(&first).await.unwrap();
    let b = t.repo.open_snapshot(&second).await.unwrap();
    assert!(a.manifest.tree.len() > 20, "only {} tree blobs", a.manifest.tree.len());
    assert_eq!(a.manifest.tree, b.manifest.tree);
    assert_eq!(b.manifest.summary.new_blobs, 0, "{:?}", b.manifest.summary);
    assert_eq!(a.entries.len(), n);
    let mut want: Vec<String> = (0..n).map(|i| meta(i).path).collect();
    want.sort();
    let got: Vec<&str> = a.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(got, want);
    let e = a.entry("dir-005/file-00102.txt").expect("entry");
    assert_eq!(e.size, "content 102".len() as u64);
    let report = t.repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
}
