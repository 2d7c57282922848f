//! The WAL archive: push, fetch, refusal of conflicting files, dedup,
//! coverage across gaps and timelines, retention, prune and check.

use bytes::Bytes;
use coffer_repo::{Error, FileKind, PruneOptions, ReadData};

use crate::support::*;

const SEG: u64 = 16 * 1024 * 1024;
const STREAM: &str = "pg-7283947561234567890";

fn segment(seed: u64) -> Vec<u8> {
    random_bytes(SEG as usize, seed)
}

fn seg_name(timeline: u32, segno: u64) -> String {
    coffer_repo::repofile::wal::segment_name(timeline, segno, SEG)
}

async fn push(t: &TempRepo, name: &str, data: &[u8]) -> coffer_repo::WalPushReport {
    t.repo.wal_push(STREAM, name, Bytes::copy_from_slice(data)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_round_trips_and_an_identical_push_is_a_no_op() {
    let t = TempRepo::new(test_init_options()).await;
    let data = segment(1);
    let name = seg_name(1, 3);
    let r = push(&t, &name, &data).await;
    assert!(!r.already_archived && r.size == SEG && r.chunks > 1 && r.new_bytes == SEG, "{r:?}");
    assert_eq!(r.blake3, blake3::hash(&data).to_hex().to_string());
    let back = t.repo.wal_fetch(STREAM, &name).await.unwrap();
    assert!(back == data, "fetched bytes differ");
    // The object records what was pushed.
    let obj = t.repo.read_wal(STREAM, &name).await.unwrap();
    assert_eq!((obj.stream.as_str(), obj.name.as_str(), obj.size), (STREAM, name.as_str(), SEG));
    assert_eq!(obj.chunks.len(), r.chunks);
    // PostgreSQL retries archive_command: the same file again succeeds and
    // writes nothing.
    let packs = t.packs().len();
    let index_files = t.backend.list(FileKind::Index).await.unwrap().len();
    let again = push(&t, &name, &data).await;
    assert!(again.already_archived && again.new_chunks == 0, "{again:?}");
    assert_eq!(t.packs().len(), packs);
    assert_eq!(t.backend.list(FileKind::Index).await.unwrap().len(), index_files);
    // A fresh process (no index loaded) reads it through the stored chunk places.
    let fresh = coffer_repo::Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fresh.wal_fetch(STREAM, &name).await.unwrap() == data);
    assert!(fresh.index().is_empty(), "a fetch with valid chunk places needs no index");
    // No session markers are left behind.
    assert!(t.backend.list(FileKind::Session).await.unwrap().is_empty());
    assert_eq!(t.repo.wal_streams().await.unwrap(), vec![STREAM.to_string()]);
    // Builds that do not know the WAL archive now refuse the repository.
    let config = coffer_repo::Repository::read_config(&t.backend).await.unwrap();
    assert_eq!(config.version, coffer_repo::repofile::config::WAL_FORMAT_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_file_under_an_archived_name_is_refused() {
    let t = TempRepo::new(test_init_options()).await;
    let name = seg_name(1, 5);
    push(&t, &name, &segment(2)).await;
    let mut other = segment(2);
    other[1000] ^= 1;
    let err = t.repo.wal_push(STREAM, &name, Bytes::from(other)).await.unwrap_err();
    assert!(matches!(err, Error::WalConflict { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&name) && msg.contains("already holds a different file under that name"), "{msg}");
    // The archived file is untouched.
    assert!(t.repo.wal_fetch(STREAM, &name).await.unwrap() == segment(2));
    // Bad names never reach storage.
    for bad in ["../../config", "000000010000000000000005x", "RECOVERYXLOG"] {
        let e = t.repo.wal_push(STREAM, bad, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(e.to_string().contains("is not a WAL file name"), "{e}");
    }
    let e = t.repo.wal_push("a/b", &name, Bytes::from_static(b"x")).await.unwrap_err();
    assert!(e.to_string().contains("is not a WAL stream name"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pushes_of_one_name_agree_or_one_is_refused() {
    let t = TempRepo::new(test_init_options()).await;
    let name = seg_name(1, 7);
    let data = Bytes::from(segment(3));
    let (a, b) =
        tokio::join!(t.repo.wal_push(STREAM, &name, data.clone()), t.repo.wal_push(STREAM, &name, data.clone()));
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    let name2 = seg_name(1, 8);
    let other = Bytes::from(segment(4));
    let (a, b) = tokio::join!(t.repo.wal_push(STREAM, &name2, data.clone()), t.repo.wal_push(STREAM, &name2, other));
    assert!(a.is_ok() != b.is_ok(), "exactly one must win: {a:?} {b:?}");
    let loser = a.err().or(b.err()).unwrap();
    assert!(matches!(loser, Error::WalConflict { .. }), "{loser:?}");
    let kept = t.repo.wal_fetch(STREAM, &name2).await.unwrap();
    assert!(kept == data || kept == segment(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_not_archived_is_its_own_error() {
    let t = TempRepo::new(test_init_options()).await;
    let err = t.repo.wal_fetch(STREAM, "000000010000000000000009").await.unwrap_err();
    assert!(matches!(err, Error::WalNotFound { .. }), "{err:?}");
    let err = t.repo.wal_fetch(STREAM, "00000002.history").await.unwrap_err();
    assert!(matches!(err, Error::WalNotFound { .. }), "{err:?}");
    assert!(t.repo.wal_list(STREAM).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_sharing_most_content_stores_little() {
    let t = TempRepo::new(test_init_options()).await;
    let first = segment(5);
    push(&t, &seg_name(1, 1), &first).await;
    let before = pack_bytes(&t);
    let mut second = first.clone();
    second[8_000_000..8_000_100].fill(7);
    let r = push(&t, &seg_name(1, 2), &second).await;
    assert!(r.new_bytes < 4 << 20, "{r:?}");
    assert!(pack_bytes(&t) - before < 4 << 20);
    assert!(t.repo.wal_fetch(STREAM, &seg_name(1, 2)).await.unwrap() == second);
    // Zero-filled segments (what archive_timeout produces on an idle
    // cluster) cost almost nothing after the first.
    let zeros = vec![0u8; SEG as usize];
    push(&t, &seg_name(1, 3), &zeros).await;
    let r = push(&t, &seg_name(1, 4), &zeros).await;
    assert_eq!(r.new_bytes, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_wal_data_after_every_snapshot_is_forgotten() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 1 << 20, 60);
    // The base backup holds a WAL segment, as a PostgreSQL base backup's
    // pg_wal/ does; the archived copy deduplicates against it.
    let wal = segment(6);
    std::fs::write(src.join("segment"), &wal).unwrap();
    let snap = t.repo.backup_dir(&src, opts("pg")).await.unwrap();
    let r = push(&t, &seg_name(1, 1), &wal).await;
    assert!(r.new_bytes < SEG / 4, "the segment should dedup against the backup: {r:?}");
    push(&t, &seg_name(1, 2), &segment(7)).await;
    t.repo.forget_snapshot(&snap).await.unwrap();
    let report = t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    assert!(report.deleted_packs > 0, "{report:?}");
    let check = t.repo.check(ReadData::All).await.unwrap();
    assert!(check.is_ok(), "{:?}", check.errors);
    assert_eq!(check.wal_files, 2);
    // The blobs moved (repacked): a fresh process finds them through the index.
    let fresh = coffer_repo::Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fresh.wal_fetch(STREAM, &seg_name(1, 1)).await.unwrap() == wal);
    assert!(fresh.wal_fetch(STREAM, &seg_name(1, 2)).await.unwrap() == segment(7));
    // Once the WAL is forgotten too, prune frees it.
    let f = t.repo.forget_wal(STREAM, &seg_name(1, 9), false).await.unwrap();
    assert_eq!(f.removed.len(), 2);
    t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    assert!(pack_bytes(&t) < 1 << 20, "{} bytes of packs left", pack_bytes(&t));
    assert!(t.repo.check(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_wal_files_that_lost_data() {
    let t = TempRepo::new(test_init_options()).await;
    push(&t, &seg_name(1, 1), &segment(8)).await;
    for p in t.packs() {
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 0xFF;
        std::fs::write(&p, b).unwrap();
    }
    let r = t.repo.check(ReadData::All).await.unwrap();
    assert!(!r.is_ok());
    assert!(r.damaged_wal.contains(&format!("{STREAM}/{}", seg_name(1, 1))), "{:?}", r.errors);
    let fresh = coffer_repo::Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fresh.wal_fetch(STREAM, &seg_name(1, 1)).await.is_err(), "damaged data must not be served");
}

/// Small pushes: coverage only looks at names and two objects.
async fn push_small(t: &TempRepo, name: &str, body: &[u8]) {
    t.repo.wal_push(STREAM, name, Bytes::copy_from_slice(body)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_names_gaps_and_follows_timelines() {
    let t = TempRepo::new(test_init_options()).await;
    // Timeline 1: segments 2..=4, then 6..=7 (5 missing). Coverage takes the
    // segment size from the caller, so small bodies do here.
    for s in [2u64, 3, 4, 6, 7] {
        push_small(&t, &seg_name(1, s), format!("tli 1 seg {s}").as_bytes()).await;
    }
    let c = t.repo.wal_coverage(STREAM, SEG, &seg_name(1, 2)).await.unwrap();
    assert_eq!(c.contiguous_to.as_deref(), Some(seg_name(1, 4).as_str()));
    assert_eq!(c.newest.as_deref(), Some(seg_name(1, 7).as_str()));
    assert_eq!(c.gaps, vec![coffer_repo::WalGap { first: seg_name(1, 5), last: seg_name(1, 5), segments: 1 }]);
    assert!(c.covers(4) && !c.covers(5));
    assert!(c.contiguous_pushed.is_some() && c.newest_pushed >= c.contiguous_pushed);
    // From a missing segment: nothing contiguous, the gap starts there.
    let c = t.repo.wal_coverage(STREAM, SEG, &seg_name(1, 1)).await.unwrap();
    assert_eq!(c.contiguous_to, None);
    assert_eq!(c.gaps[0].first, seg_name(1, 1));
    // A restore forked timeline 2 in segment 4; recovery to the latest
    // timeline reads 4 onwards from timeline 2, so timeline 1's 6 and 7 no
    // longer count and the gap at 5 is filled.
    push_small(&t, "00000002.history", b"1\t0/4000120\tno recovery target specified\n").await;
    for s in [4u64, 5, 6] {
        push_small(&t, &seg_name(2, s), format!("tli 2 seg {s}").as_bytes()).await;
    }
    push_small(&t, &format!("{}.partial", seg_name(1, 4)), b"partial").await;
    let c = t.repo.wal_coverage(STREAM, SEG, &seg_name(1, 2)).await.unwrap();
    assert_eq!(c.timelines, vec![1, 2]);
    assert_eq!(c.contiguous_to.as_deref(), Some(seg_name(2, 6).as_str()));
    assert!(c.gaps.is_empty(), "{:?}", c.gaps);
    // A backup that started after the fork point is not on timeline 2's path.
    let c = t.repo.wal_coverage(STREAM, SEG, &seg_name(1, 6)).await.unwrap();
    assert_eq!(c.timelines, vec![1]);
    assert_eq!(c.contiguous_to.as_deref(), Some(seg_name(1, 7).as_str()));
    // The listing is in WAL order.
    let names: Vec<String> = t.repo.wal_list(STREAM).await.unwrap().into_iter().map(|l| l.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 10);
    // Bad arguments are errors, not panics.
    assert!(t.repo.wal_coverage(STREAM, 3 << 20, &seg_name(1, 2)).await.is_err());
    assert!(t.repo.wal_coverage(STREAM, SEG, "00000002.history").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_retention_keeps_history_files_and_newer_timelines() {
    let t = TempRepo::new(test_init_options()).await;
    let names = [
        seg_name(1, 1),
        format!("{}.00000028.backup", seg_name(1, 1)),
        seg_name(1, 2),
        format!("{}.partial", seg_name(1, 3)),
        "00000002.history".to_string(),
        seg_name(2, 3),
        seg_name(2, 4),
        seg_name(3, 2),
    ];
    for n in &names {
        push_small(&t, n, n.as_bytes()).await;
    }
    let dry = t.repo.forget_wal(STREAM, &seg_name(2, 4), true).await.unwrap();
    assert_eq!(t.repo.wal_list(STREAM).await.unwrap().len(), names.len(), "a dry run removed something");
    let done = t.repo.forget_wal(STREAM, &seg_name(2, 4), false).await.unwrap();
    assert_eq!(dry.removed, done.removed);
    assert_eq!(done.removed, names[..4].iter().chain([&names[5]]).cloned().collect::<Vec<_>>());
    let left: Vec<String> = t.repo.wal_list(STREAM).await.unwrap().into_iter().map(|l| l.name).collect();
    // The history file, the segment kept from, and timeline 3 (newer than
    // the limit's timeline) stay.
    assert_eq!(left, vec!["00000002.history".to_string(), seg_name(2, 4), seg_name(3, 2)]);
    assert!(t.repo.forget_wal(STREAM, "00000002.history", false).await.is_err());
}
