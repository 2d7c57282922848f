//! Plugin-owned streams: push and fetch, refusals under a stored key,
//! prefix listings, the legacy WAL archive read as items, retention by the
//! needs of remaining snapshots, prune and check, leases, format version 4.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_repo::backend::fault::FaultyBackend;
use coffer_repo::commands::lease::{DEFAULT_EXPIRY, Lease};
use coffer_repo::repofile::config::STREAM_FORMAT_VERSION;
use coffer_repo::repofile::stream::{StreamItemObject, item_object_name};
use coffer_repo::{
    DynBackend, Error, FileKind, ItemOutcome, KeepPolicy, PluginIdentity, PruneOptions, ReadData, Repository,
    SnapshotOptions, StreamOwner, StreamWriter,
};

use crate::servers::TestServer;
use crate::support::*;

const DIGEST_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn plugin(name: &str, digest: &str, builtin: bool) -> PluginIdentity {
    PluginIdentity { name: name.into(), version: "1.0.0".into(), digest: digest.into(), builtin }
}

fn plugin_a() -> PluginIdentity {
    plugin("oplog", DIGEST_A, false)
}

fn owner_of(p: &PluginIdentity) -> StreamOwner {
    StreamOwner::of(p).unwrap()
}

async fn writer_for(repo: &Repository, p: &PluginIdentity) -> StreamWriter {
    repo.stream_writer(owner_of(p), p.clone()).await.unwrap()
}

/// Pushes `data` in 64 KiB pieces, as a plugin hands it over.
async fn push(w: &StreamWriter, stream: &str, key: &str, position: u64, pinned: bool, data: &[u8]) -> ItemOutcome {
    try_push(w, stream, key, position, pinned, data).await.unwrap()
}

async fn try_push(
    w: &StreamWriter,
    stream: &str,
    key: &str,
    position: u64,
    pinned: bool,
    data: &[u8],
) -> coffer_repo::Result<ItemOutcome> {
    let mut item = w.item(stream, key, position, pinned).await?;
    for piece in data.chunks(64 << 10) {
        item.write(piece).await?;
    }
    item.finish().await
}

async fn fetch(repo: &Repository, owner: &StreamOwner, stream: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    repo.stream_fetch_into(owner, stream, key, &mut out).await.unwrap();
    out
}

async fn keys_of(repo: &Repository, owner: &StreamOwner, stream: &str) -> Vec<String> {
    repo.stream_list(owner, stream, None, None).await.unwrap().into_iter().map(|l| l.key).collect()
}

/// Commits an empty snapshot of plugin `p` that needs each `(stream, from)`.
async fn snapshot_needing(repo: &Repository, p: &PluginIdentity, needs: &[(&str, u64)]) -> coffer_repo::Id {
    let w = repo
        .start_snapshot(SnapshotOptions { source: p.name.clone(), plugin: p.clone(), ..Default::default() })
        .await
        .unwrap();
    for (stream, from) in needs {
        w.need_stream(owner_of(p), stream, *from).unwrap();
    }
    w.commit().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_item_round_trips_and_an_identical_push_writes_nothing() {
    let t = TempRepo::new(test_init_options()).await;
    assert!(t.repo.config().version < STREAM_FORMAT_VERSION);
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    let data = random_bytes(24 << 20, 1);
    let out = push(&w, "oplog", "batch-1", 7, false, &data).await;
    assert!(out.stored && out.size == data.len() as u64, "{out:?}");
    assert_eq!(out.blake3, blake3::hash(&data).to_hex().to_string());
    // The first stream write raised the repository to format 4.
    let config = Repository::read_config(&t.backend).await.unwrap();
    assert_eq!(config.version, STREAM_FORMAT_VERSION);
    assert!(fetch(&t.repo, &owner, "oplog", "batch-1").await == data, "fetched bytes differ");
    // The streaming reader, in 4 MiB pieces as the runtime hands them on.
    let item = t.repo.stream_item(&owner, "oplog", "batch-1").await.unwrap().unwrap();
    assert_eq!((item.position, item.pinned, item.size), (Some(7), false, data.len() as u64));
    assert_eq!(item.writer.as_ref(), Some(&a));
    assert!(item.chunks.len() > 4, "{} chunks", item.chunks.len());
    let mut reader = t.repo.stream_reader(&item);
    let mut back = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        back.extend_from_slice(&buf[..n]);
    }
    assert!(back == data);
    // A retried push of the same item writes nothing.
    let packs = t.packs().len();
    let index_files = t.backend.list(FileKind::Index).await.unwrap().len();
    let again = push(&w, "oplog", "batch-1", 7, false, &data).await;
    assert!(!again.stored && again.blake3 == out.blake3, "{again:?}");
    assert_eq!(t.packs().len(), packs);
    assert_eq!(t.backend.list(FileKind::Index).await.unwrap().len(), index_files);
    w.finish().await.unwrap();
    assert!(t.backend.list(FileKind::Session).await.unwrap().is_empty(), "the writer's session marker is gone");
    // A fresh process reads it through the stored chunk places, without the index.
    let fresh = Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fetch(&fresh, &owner, "oplog", "batch-1").await == data);
    assert!(fresh.index().is_empty(), "a fetch with valid chunk places needs no index");
    // A key that is not there is its own error.
    let err = fresh.stream_fetch_into(&owner, "oplog", "batch-2", &mut Vec::new()).await.unwrap_err();
    assert!(matches!(err, Error::StreamItemNotFound { .. }), "{err:?}");
    assert!(fresh.stream_item(&owner, "oplog", "batch-2").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_content_or_another_position_under_a_stored_key_is_refused() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    let data = random_bytes(300_000, 2);
    push(&w, "oplog", "k1", 10, false, &data).await;
    let mut other = data.clone();
    other[1000] ^= 1;
    let err = try_push(&w, "oplog", "k1", 10, false, &other).await.unwrap_err();
    assert!(matches!(err, Error::StreamItemConflict { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("oplog") && msg.contains("k1") && msg.contains("bytes with BLAKE3"), "{msg}");
    // Another position or pinned flag is refused before any content is read.
    let msg = w.item("oplog", "k1", 11, false).await.err().unwrap().to_string();
    assert!(msg.contains("k1") && msg.contains("position 10") && msg.contains("position 11"), "{msg}");
    let msg = w.item("oplog", "k1", 10, true).await.err().unwrap().to_string();
    assert!(msg.contains("unpinned") && msg.contains("pinned"), "{msg}");
    assert!(fetch(&t.repo, &owner, "oplog", "k1").await == data, "the stored item is untouched");
    assert_eq!(keys_of(&t.repo, &owner, "oplog").await, vec!["k1".to_string()]);
    // An item dropped before finish() is abandoned: nothing becomes visible.
    let mut abandoned = w.item("oplog", "gone", 99, false).await.unwrap();
    abandoned.write(&random_bytes(3 << 20, 9)).await.unwrap();
    drop(abandoned);
    assert!(t.repo.stream_item(&owner, "oplog", "gone").await.unwrap().is_none());
    // Names that could escape the stream never reach storage.
    for (stream, key) in [("oplog", "../x"), ("oplog", "a@b"), ("oplog", ".checkpoint"), ("a/b", "k"), ("", "k")] {
        let e = w.item(stream, key, 1, false).await.err().unwrap();
        assert!(matches!(e, Error::Invalid(_)), "{stream} {key}: {e}");
    }
    w.finish().await.unwrap();
    // Its packs are garbage for prune; what was finished stays.
    t.repo.prune(&PruneOptions::default()).await.unwrap();
    let r = t.repo.check(ReadData::All).await.unwrap();
    assert!(r.is_ok() && r.warnings.is_empty(), "{:?} {:?}", r.errors, r.warnings);
    assert!(fetch(&t.repo, &owner, "oplog", "k1").await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_and_fetching_list_one_key_not_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let inner = coffer_repo::backend_for(&format!("file://{}", dir.path().display()), &[]).unwrap();
    let faulty = Arc::new(FaultyBackend::new(inner));
    let backend: DynBackend = faulty.clone();
    let repo = Repository::init(Arc::clone(&backend), PASSWORD, test_init_options()).await.unwrap();
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&repo, &a).await;
    for i in 0..20u64 {
        push(&w, "oplog", &format!("k{i:03}"), i, false, format!("item {i}").as_bytes()).await;
    }
    faulty.reset_calls();
    push(&w, "oplog", "k100", 100, false, b"one more").await;
    push(&w, "oplog", "k005", 5, false, b"item 5").await;
    assert_eq!(fetch(&repo, &owner, "oplog", "k007").await, b"item 7");
    assert!(repo.stream_item(&owner, "oplog", "k019").await.unwrap().is_some());
    for kind in [FileKind::Stream, FileKind::Wal] {
        assert_eq!(faulty.calls("list", kind), 0, "{kind:?} was listed whole");
    }
    assert!(faulty.calls("list_prefix", FileKind::Stream) >= 4);
    w.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_gives_positions_pinned_flags_and_checkpoints() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    push(&w, "blocks", "b-30", 30, false, b"thirty").await;
    push(&w, "blocks", "b-10", 10, true, b"ten").await;
    push(&w, "blocks", "b-20", 20, false, b"twenty").await;
    push(&w, "blocks", "a-20", 20, false, b"twenty too").await;
    push(&w, "blocks.v2", "b-1", 1, false, b"another stream").await;
    let all = t.repo.stream_list(&owner, "blocks", None, None).await.unwrap();
    let got: Vec<(&str, Option<u64>, bool)> = all.iter().map(|l| (l.key.as_str(), l.position, l.pinned)).collect();
    assert_eq!(
        got,
        vec![("b-10", Some(10), true), ("a-20", Some(20), false), ("b-20", Some(20), false), ("b-30", Some(30), false)]
    );
    let mid: Vec<String> =
        t.repo.stream_list(&owner, "blocks", Some(11), Some(20)).await.unwrap().into_iter().map(|l| l.key).collect();
    assert_eq!(mid, vec!["a-20".to_string(), "b-20".to_string()]);
    assert_eq!(t.repo.stream_list(&owner, "blocks.v2", None, None).await.unwrap().len(), 1);
    // Another owner's stream of the same name is another stream.
    assert!(t.repo.stream_list(&StreamOwner::parse(DIGEST_B).unwrap(), "blocks", None, None).await.unwrap().is_empty());
    // Checkpoints: absent, written, overwritten, and never listed as items.
    assert!(t.repo.stream_checkpoint(&owner, "blocks").await.unwrap().is_none());
    w.checkpoint("blocks", "resume after b-20", Some(25)).await.unwrap();
    w.checkpoint("blocks", "resume after b-30", Some(31)).await.unwrap();
    let cp = t.repo.stream_checkpoint(&owner, "blocks").await.unwrap().unwrap();
    assert_eq!((cp.state.as_str(), cp.source_position), ("resume after b-30", Some(31)));
    assert_eq!(t.repo.stream_list(&owner, "blocks", None, None).await.unwrap().len(), 4);
    let e = w.checkpoint("blocks", &"x".repeat(64 * 1024 + 1), None).await.unwrap_err();
    assert!(e.to_string().contains("at most 65536 bytes"), "{e}");
    let streams = t.repo.streams().await.unwrap();
    assert_eq!(streams, vec![(owner.clone(), "blocks".to_string()), (owner.clone(), "blocks.v2".to_string())]);
    w.finish().await.unwrap();
    // A finished writer writes nothing more.
    assert!(t.backend.list(FileKind::Session).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_wal_is_read_as_items_of_builtin_postgres() {
    let t = TempRepo::new(test_init_options()).await;
    const STREAM: &str = "pg-7283947561234567890";
    let seg = |n: u64| format!("{:08X}{:08X}{:08X}", 1, 0, n);
    let first = random_bytes(1 << 20, 3);
    t.repo.legacy_wal_push(STREAM, &seg(1), Bytes::from(first.clone())).await.unwrap();
    t.repo.legacy_wal_push(STREAM, &seg(2), Bytes::from(random_bytes(1 << 20, 4))).await.unwrap();
    let pg = plugin("postgres", DIGEST_B, true);
    let owner = owner_of(&pg);
    assert_eq!(owner, StreamOwner::legacy_wal());
    let listed = t.repo.stream_list(&owner, STREAM, None, None).await.unwrap();
    assert_eq!(
        listed.iter().map(|l| (l.key.clone(), l.position)).collect::<Vec<_>>(),
        vec![(seg(1), None), (seg(2), None)]
    );
    assert!(fetch(&t.repo, &owner, STREAM, &seg(1)).await == first);
    let item = t.repo.stream_item(&owner, STREAM, &seg(1)).await.unwrap().unwrap();
    assert!(item.legacy && item.position.is_none() && item.writer.is_none());
    // New items of the plugin merge into the same stream; bounds leave the
    // legacy items (whose position only the plugin knows) in.
    let w = writer_for(&t.repo, &pg).await;
    let third = random_bytes(1 << 20, 5);
    push(&w, STREAM, &seg(3), 3 << 24, false, &third).await;
    let keys: Vec<String> =
        t.repo.stream_list(&owner, STREAM, Some(1 << 24), None).await.unwrap().into_iter().map(|l| l.key).collect();
    assert_eq!(keys, vec![seg(1), seg(2), seg(3)]);
    assert!(fetch(&t.repo, &owner, STREAM, &seg(3)).await == third);
    // A retried archive of a legacy file is a no-op; other content is refused.
    let again = push(&w, STREAM, &seg(1), 1 << 24, false, &first).await;
    assert!(!again.stored, "{again:?}");
    let err = try_push(&w, STREAM, &seg(2), 2 << 24, false, b"not it").await.unwrap_err();
    assert!(matches!(err, Error::StreamItemConflict { .. }), "{err}");
    assert!(t.backend.list(FileKind::Wal).await.unwrap().len() == 2, "a push never writes wal/");
    assert_eq!(t.repo.streams().await.unwrap(), vec![(owner.clone(), STREAM.to_string())]);
    // Another owner does not see them.
    let other = owner_of(&plugin("postgres", DIGEST_B, false));
    assert!(t.repo.stream_list(&other, STREAM, None, None).await.unwrap().is_empty());
    // A later migration deletes the legacy object.
    t.repo.delete_legacy_wal(STREAM, &seg(1)).await.unwrap();
    assert_eq!(keys_of(&t.repo, &owner, STREAM).await, vec![seg(2), seg(3)]);
    assert!(t.repo.delete_legacy_wal("a/b", &seg(1)).await.is_err());
    // Prune keeps both kinds; check counts both.
    t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    let r = t.repo.check(ReadData::All).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!((r.wal_files, r.stream_items), (1, 1));
    assert!(fetch(&t.repo, &owner, STREAM, &seg(3)).await == third);
    w.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_from_the_lowest_need_and_pinned_items() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    for p in [10u64, 20, 30, 40, 50, 60] {
        push(&w, "oplog", &format!("at-{p}"), p, p == 20, format!("item {p}").as_bytes()).await;
        push(&w, "unneeded", &format!("at-{p}"), p, false, format!("other {p}").as_bytes()).await;
    }
    w.finish().await.unwrap();
    let older = snapshot_needing(&t.repo, &a, &[("oplog", 30)]).await;
    let newer = snapshot_needing(&t.repo, &a, &[("oplog", 60), ("oplog", 50)]).await;
    let manifest = t.repo.read_manifest(&newer).await.unwrap();
    assert_eq!(manifest.version, coffer_repo::repofile::snapshot::MANIFEST_VERSION);
    assert_eq!(manifest.streams.len(), 1, "one need per stream, the lowest");
    assert_eq!(manifest.streams[0].from, 50);
    // Keeping the last snapshot only, its lowest need (50) is the cut.
    let policy = KeepPolicy { last: Some(1), ..Default::default() };
    let dry = t.repo.forget_with_streams(&policy, true).await.unwrap();
    assert_eq!(dry.streams.len(), 1, "{:?}", dry.streams);
    let s = &dry.streams[0];
    assert_eq!((s.stream.as_str(), s.cut, s.removed_count), ("oplog", 50, 3));
    assert_eq!(s.removed, vec!["at-10", "at-30", "at-40"]);
    assert_eq!(keys_of(&t.repo, &owner, "oplog").await.len(), 6, "a dry run removed something");
    assert!(t.repo.read_manifest(&older).await.is_ok());
    let done = t.repo.forget_with_streams(&policy, false).await.unwrap();
    assert_eq!(done.streams[0].removed, s.removed);
    assert_eq!(keys_of(&t.repo, &owner, "oplog").await, vec!["at-20", "at-50", "at-60"]);
    // A stream no snapshot needs is left alone.
    assert_eq!(keys_of(&t.repo, &owner, "unneeded").await.len(), 6);
    let r = t.repo.check(ReadData::None).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_manifests_running_backups_and_other_owners_hold_nothing_they_should_not() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let a_builtin = plugin("oplog", DIGEST_B, true);
    let b = plugin("ledger", DIGEST_B, false);
    // A snapshot of plugin `a` written before stream needs existed (a
    // version 1 manifest: the repository is not at format 4 yet).
    let old = snapshot_needing(&t.repo, &a, &[]).await;
    assert_eq!(t.repo.read_manifest(&old).await.unwrap().version, 1);
    let wa = writer_for(&t.repo, &a).await;
    let wab = writer_for(&t.repo, &a_builtin).await;
    let wb = writer_for(&t.repo, &b).await;
    for p in [10u64, 20, 30] {
        push(&wa, "s", &format!("a{p}"), p, false, format!("a {p}").as_bytes()).await;
        push(&wab, "s", &format!("ab{p}"), p, false, format!("ab {p}").as_bytes()).await;
        push(&wb, "s", &format!("b{p}"), p, false, format!("b {p}").as_bytes()).await;
    }
    snapshot_needing(&t.repo, &a, &[("s", 30)]).await;
    snapshot_needing(&t.repo, &a_builtin, &[("s", 30)]).await;
    snapshot_needing(&t.repo, &b, &[("s", 20)]).await;
    let none = HashSet::new();
    let r = t.repo.stream_retention(&none, false).await.unwrap();
    let by_owner = |o: &StreamOwner| r.iter().find(|s| s.owner == *o).unwrap().clone();
    // The old manifest does not say `builtin`: it holds both the digest's
    // and builtin-oplog's streams.
    for o in [owner_of(&a), owner_of(&a_builtin)] {
        let s = by_owner(&o);
        assert!(s.removed.is_empty() && s.note.as_deref().unwrap_or_default().contains("predates"), "{s:?}");
    }
    // Another owner's stream goes by its own needs only.
    assert_eq!(by_owner(&owner_of(&b)).removed, vec!["b10"]);
    assert_eq!(keys_of(&t.repo, &owner_of(&a), "s").await.len(), 3);
    // Once the old snapshot is gone, the needs decide.
    t.repo.forget_snapshot(&old).await.unwrap();
    // ... except while a backup of the plugin runs: it may still declare a need.
    let running = t
        .repo
        .start_snapshot(SnapshotOptions { source: "oplog".into(), plugin: a.clone(), ..Default::default() })
        .await
        .unwrap();
    let r = t.repo.stream_retention(&none, false).await.unwrap();
    let s = r.iter().find(|s| s.owner == owner_of(&a)).unwrap();
    assert!(s.removed.is_empty() && s.note.as_deref().unwrap_or_default().contains("running"), "{s:?}");
    let s = r.iter().find(|s| s.owner == owner_of(&a_builtin)).unwrap();
    assert_eq!(s.removed, vec!["ab10", "ab20"], "a backup of another owner holds nothing");
    running.abort().await;
    let r = t.repo.stream_retention(&none, false).await.unwrap();
    assert_eq!(r.iter().find(|s| s.owner == owner_of(&a)).unwrap().removed, vec!["a10", "a20"]);
    assert_eq!(keys_of(&t.repo, &owner_of(&a), "s").await, vec!["a30"]);
    assert_eq!(keys_of(&t.repo, &owner_of(&b), "s").await, vec!["b20", "b30"]);
    for w in [wa, wab, wb] {
        w.finish().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_after_forget_frees_exactly_the_dropped_items() {
    let t = TempRepo::new(small_pack_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    let (one, two, three) = (random_bytes(3 << 20, 11), random_bytes(3 << 20, 12), random_bytes(3 << 20, 13));
    push(&w, "s", "k1", 1, false, &one).await;
    push(&w, "s", "k2", 2, false, &two).await;
    push(&w, "s", "k3", 3, false, &three).await;
    // Same content as k1 under a later key: its chunks are k1's (stored
    // by this writer, after it loaded the index), stored once.
    let packs = t.packs().len();
    push(&w, "s", "k4", 4, false, &one).await;
    assert_eq!(t.packs().len(), packs, "k4 deduplicates against k1");
    w.finish().await.unwrap();
    snapshot_needing(&t.repo, &a, &[("s", 3)]).await;
    let chunks = |key: &str| {
        let repo = t.repo.clone();
        let owner = owner.clone();
        let key = key.to_string();
        async move { repo.stream_item(&owner, "s", &key).await.unwrap().unwrap().chunks }
    };
    let (c1, c2) = (chunks("k1").await, chunks("k2").await);
    let before = pack_bytes(&t);
    let f = t.repo.forget_with_streams(&KeepPolicy { last: Some(1), ..Default::default() }, false).await.unwrap();
    assert_eq!(f.streams[0].removed, vec!["k1", "k2"]);
    t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    let freed = before - pack_bytes(&t);
    assert!(freed > (5 << 20) / 2 && freed < (7 << 20) / 2, "freed {freed} bytes");
    let fresh = Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    let idx = fresh.load_index().await.unwrap();
    assert!(c2.iter().all(|c| !idx.contains(c)), "k2's own chunks are gone");
    assert!(c1.iter().all(|c| idx.contains(c)), "k1's chunks stay for k4");
    assert!(fetch(&fresh, &owner, "s", "k3").await == three);
    assert!(fetch(&fresh, &owner, "s", "k4").await == one);
    let r = fresh.check(ReadData::All).await.unwrap();
    assert!(r.is_ok() && r.stream_items == 2, "{:?}", r.errors);
}

/// Writes a sealed item object by hand, as a race or a hand copy would.
async fn put_item_object(repo: &Repository, name: &str, obj: &StreamItemObject) {
    let body = serde_json::to_vec(obj).unwrap();
    let sealed = repo.keys().seal(&body, coffer_repo::repofile::aad::STREAM_ITEM);
    repo.backend()
        .put(FileKind::Stream, name, Bytes::from(sealed), coffer_repo::backend::PutMode::CreateNew)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_damaged_moved_missing_and_duplicate_items() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    for (i, key) in ["damaged", "moved", "dup", "fine"].iter().enumerate() {
        push(&w, "s", key, i as u64, false, &random_bytes(200_000, 20 + i as u64)).await;
    }
    w.finish().await.unwrap();
    assert!(t.repo.check(ReadData::All).await.unwrap().is_ok());
    let file = |key: &str, p: u64| t.root().join("streams").join(item_object_name(&owner, "s", key, p, false));
    // Damaged: a flipped byte.
    let mut b = std::fs::read(file("damaged", 0)).unwrap();
    b[40] ^= 1;
    std::fs::write(file("damaged", 0), b).unwrap();
    // Moved: renamed to another position.
    std::fs::rename(file("moved", 1), file("moved", 9)).unwrap();
    // Duplicate: the same key at a second position (two racing pushes).
    let item = t.repo.stream_item(&owner, "s", "dup").await.unwrap().unwrap();
    let dup = StreamItemObject {
        version: 1,
        owner: owner.clone(),
        stream: "s".into(),
        key: "dup".into(),
        position: 5,
        pinned: false,
        size: item.size,
        blake3: item.blake3.clone(),
        chunks: item.chunks.clone(),
        places: vec![],
        pushed: item.pushed,
        host: String::new(),
        writer: a.clone(),
    };
    put_item_object(&t.repo, &item_object_name(&owner, "s", "dup", 5, false), &dup).await;
    // Missing: an item whose chunk is in no index.
    let missing =
        StreamItemObject { key: "missing".into(), position: 6, chunks: vec![coffer_repo::Id([7; 32])], ..dup.clone() };
    put_item_object(&t.repo, &item_object_name(&owner, "s", "missing", 6, false), &missing).await;
    let r = t.repo.check(ReadData::All).await.unwrap();
    let text = r.errors.join("\n");
    let label = |k: &str| format!("{owner}/s/{k}");
    for k in ["damaged", "moved", "missing"] {
        assert!(r.damaged_stream_items.contains(&label(k)), "{k}: {text}");
    }
    assert!(!r.damaged_stream_items.contains(&label("fine")), "{text}");
    assert!(text.contains("fails authentication"), "{text}");
    assert!(text.contains("moved or replaced"), "{text}");
    assert!(text.contains("is in no index"), "{text}");
    assert!(text.contains("item dup is stored 2 times"), "{text}");
    assert_eq!(r.stream_items, 6);
    // A fetch of the duplicated key names both copies.
    let e = t.repo.stream_fetch_into(&owner, "s", "dup", &mut Vec::new()).await.unwrap_err().to_string();
    assert!(e.contains("stored more than once") && e.contains("0000000000000005-u"), "{e}");
    // Damaged data in a pack is traced to the item.
    let t2 = TempRepo::new(test_init_options()).await;
    let w = writer_for(&t2.repo, &a).await;
    push(&w, "s", "k", 1, false, &random_bytes(500_000, 30)).await;
    w.finish().await.unwrap();
    for p in t2.packs() {
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 0xFF;
        std::fs::write(&p, b).unwrap();
    }
    let r = t2.repo.check(ReadData::All).await.unwrap();
    assert!(r.damaged_stream_items.contains(&label("k")), "{:?}", r.errors);
    let fresh = Repository::open(t2.backend.clone(), PASSWORD).await.unwrap();
    assert!(fresh.stream_fetch_into(&owner, "s", "k", &mut Vec::new()).await.is_err(), "damage is never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pushes_of_one_item_agree_or_one_is_refused() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let (w1, w2) = (writer_for(&t.repo, &a).await, writer_for(&t.repo, &a).await);
    let data = random_bytes(2 << 20, 40);
    let (x, y) = tokio::join!(push(&w1, "s", "k", 1, false, &data), push(&w2, "s", "k", 1, false, &data));
    assert!(x.stored != y.stored, "exactly one stores it: {x:?} {y:?}");
    let other = random_bytes(2 << 20, 41);
    let (x, y) = tokio::join!(try_push(&w1, "s", "k2", 2, false, &data), try_push(&w2, "s", "k2", 2, false, &other));
    assert!(x.is_ok() != y.is_ok(), "exactly one must win: {x:?} {y:?}");
    let loser = x.err().or(y.err()).unwrap();
    assert!(matches!(loser, Error::StreamItemConflict { .. }), "{loser:?}");
    let kept = fetch(&t.repo, &owner, "s", "k2").await;
    assert!(kept == data || kept == other);
    w1.finish().await.unwrap();
    w2.finish().await.unwrap();
    assert!(t.repo.check(ReadData::None).await.unwrap().is_ok());
}

async fn lease_is_exclusive_per_stream(repo: &Repository) {
    let owner = owner_of(&plugin_a());
    let first = repo.take_stream_lease(&owner, "oplog", DEFAULT_EXPIRY).await.unwrap();
    let err = repo.take_stream_lease(&owner, "oplog", DEFAULT_EXPIRY).await.err().unwrap();
    assert!(matches!(err, Error::StreamLeaseHeld { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {}", std::process::id())) && msg.contains("follow"), "{msg}");
    assert!(msg.contains(&format!("{owner}/oplog")), "{msg}");
    // Other streams, other owners and the exclusive lease are apart.
    let other = repo.take_stream_lease(&owner, "oplog.2", DEFAULT_EXPIRY).await.unwrap();
    let b = repo.take_stream_lease(&StreamOwner::parse(DIGEST_B).unwrap(), "oplog", DEFAULT_EXPIRY).await.unwrap();
    let exclusive = Lease::acquire(repo, "prune", DEFAULT_EXPIRY).await.unwrap();
    first.check().await.unwrap();
    exclusive.check().await.unwrap();
    for l in [other, b, exclusive] {
        l.release().await;
    }
    first.release().await;
    let again = repo.take_stream_lease(&owner, "oplog", Duration::from_secs(60)).await.unwrap();
    again.check().await.unwrap();
    again.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_follower_of_a_stream_is_refused_naming_the_holder() {
    let t = TempRepo::new(test_init_options()).await;
    lease_is_exclusive_per_stream(&t.repo).await;
    assert!(t.backend.list(FileKind::Lease).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_push_raises_the_format_to_4_and_a_newer_one_is_refused() {
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let w = writer_for(&t.repo, &a).await;
    // Opening a writer writes nothing that needs format 4.
    assert!(Repository::read_config(&t.backend).await.unwrap().version < STREAM_FORMAT_VERSION);
    push(&w, "s", "k", 1, false, b"x").await;
    w.finish().await.unwrap();
    assert_eq!(Repository::read_config(&t.backend).await.unwrap().version, STREAM_FORMAT_VERSION);
    let reopened = Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert_eq!(reopened.config().version, STREAM_FORMAT_VERSION);
    // In a format 4 repository every manifest records its needs (version 2).
    let id = snapshot_needing(&reopened, &a, &[]).await;
    assert_eq!(reopened.read_manifest(&id).await.unwrap().version, 2);
    let cfg_path = t.root().join("config");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["version"] = (STREAM_FORMAT_VERSION + 1).into();
    std::fs::write(&cfg_path, serde_json::to_string(&v).unwrap()).unwrap();
    let err = Repository::open(t.backend.clone(), PASSWORD).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 5, supported: 4, .. }), "{err}");
    // A snapshot that declares needs raises the format too.
    let t = TempRepo::new(test_init_options()).await;
    snapshot_needing(&t.repo, &a, &[("s", 1)]).await;
    assert_eq!(Repository::read_config(&t.backend).await.unwrap().version, STREAM_FORMAT_VERSION);
}

/// Push, fetch, listing by prefix and leases on a real S3 store, whose
/// listing takes a raw key prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_seaweedfs() {
    let server = tokio::task::spawn_blocking(TestServer::seaweedfs).await.unwrap().unwrap();
    let (url, options) = server.location("streams");
    let backend = coffer_repo::backend_for(&url, &options).unwrap();
    let repo = Repository::init(Arc::clone(&backend), PASSWORD, small_pack_options()).await.unwrap();
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&repo, &a).await;
    let data = random_bytes(5 << 20, 50);
    assert!(push(&w, "oplog", "k1", 1, false, &data).await.stored);
    push(&w, "oplog", "k10", 10, true, b"ten").await;
    push(&w, "oplog", "k1.x", 2, false, b"one dot x").await;
    assert!(!push(&w, "oplog", "k1", 1, false, &data).await.stored);
    assert!(try_push(&w, "oplog", "k1", 3, false, &data).await.is_err());
    w.checkpoint("oplog", "state", Some(11)).await.unwrap();
    w.finish().await.unwrap();
    assert!(fetch(&repo, &owner, "oplog", "k1").await == data);
    assert_eq!(keys_of(&repo, &owner, "oplog").await, vec!["k1", "k1.x", "k10"]);
    assert_eq!(repo.stream_checkpoint(&owner, "oplog").await.unwrap().unwrap().source_position, Some(11));
    lease_is_exclusive_per_stream(&repo).await;
    let r = repo.check(ReadData::All).await.unwrap();
    assert!(r.is_ok() && r.stream_items == 3 && r.stream_checkpoints == 1, "{:?}", r.errors);
}

/// The runtime keeps writers and readers in plugin resources and awaits
/// them from async host functions on a multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_readers_and_their_futures_can_move_between_threads() {
    fn send<T: Send + 'static>(_: &T) {}
    fn send_future<T: Send>(_: &T) {}
    let t = TempRepo::new(test_init_options()).await;
    let a = plugin_a();
    let owner = owner_of(&a);
    let w = writer_for(&t.repo, &a).await;
    send(&w);
    send_future(&w.item("s", "k", 1, false));
    let mut item = w.item("s", "k", 1, false).await.unwrap();
    send(&item);
    send_future(&item.write(b"x"));
    item.write(b"x").await.unwrap();
    let finish = item.finish();
    send_future(&finish);
    finish.await.unwrap();
    send_future(&w.checkpoint("s", "", None));
    let found = t.repo.stream_item(&owner, "s", "k").await.unwrap().unwrap();
    let mut reader = t.repo.stream_reader(&found);
    send(&reader);
    send_future(&reader.next_chunk());
    let mut out = Vec::new();
    send_future(&t.repo.stream_fetch_into(&owner, "s", "k", &mut out));
    send_future(&t.repo.take_stream_lease(&owner, "s", DEFAULT_EXPIRY));
    drop(reader);
    w.finish().await.unwrap();
}
