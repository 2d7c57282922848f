//! The legacy WAL archive (`wal/<stream>/<name>`, written by coffer format
//! 3): read and fetched as items of `builtin-postgres`, kept by prune, its
//! damage named by check. This build never writes one; the objects here are
//! written as format 3 did (`legacy_wal_push`, test support).

use bytes::Bytes;
use coffer_repo::{FileKind, PruneOptions, ReadData, StreamOwner};

use crate::support::*;

const SEG: u64 = 1 << 20;
const STREAM: &str = "pg-7283947561234567890";

fn segment(seed: u64) -> Vec<u8> {
    random_bytes(SEG as usize, seed)
}

fn seg_name(segno: u64) -> String {
    format!("{:08X}{:08X}{:08X}", 1, segno / 256, segno % 256)
}

async fn push(t: &TempRepo, name: &str, data: &[u8]) {
    t.repo.legacy_wal_push(STREAM, name, Bytes::copy_from_slice(data)).await.unwrap();
}

async fn fetch(repo: &coffer_repo::Repository, name: &str) -> coffer_repo::Result<Vec<u8>> {
    let mut out = Vec::new();
    repo.stream_fetch_into(&StreamOwner::legacy_wal(), STREAM, name, &mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_file_is_fetched_as_an_item_and_a_missing_one_is_its_own_error() {
    let t = TempRepo::new(test_init_options()).await;
    let data = segment(1);
    push(&t, &seg_name(3), &data).await;
    assert!(fetch(&t.repo, &seg_name(3)).await.unwrap() == data);
    let obj = t.repo.read_wal(STREAM, &seg_name(3)).await.unwrap();
    assert_eq!((obj.stream.as_str(), obj.size), (STREAM, SEG));
    // A fresh process (no index loaded) reads it through the stored chunk places.
    let fresh = coffer_repo::Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fetch(&fresh, &seg_name(3)).await.unwrap() == data);
    let err = fetch(&t.repo, &seg_name(9)).await.unwrap_err();
    assert!(matches!(err, coffer_repo::Error::StreamItemNotFound { .. }), "{err:?}");
    // Names that are not keys never reach storage.
    assert!(t.repo.read_wal(STREAM, "../../config").await.is_err());
    assert!(t.repo.read_wal("a/b", &seg_name(3)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_legacy_wal_after_every_snapshot_is_forgotten() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 1 << 20, 60);
    let wal = segment(6);
    std::fs::write(src.join("segment"), &wal).unwrap();
    let snap = t.repo.backup_dir(&src, opts("pg")).await.unwrap();
    push(&t, &seg_name(1), &wal).await;
    push(&t, &seg_name(2), &segment(7)).await;
    t.repo.forget_snapshot(&snap).await.unwrap();
    let report = t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    assert!(report.deleted_packs > 0, "{report:?}");
    let check = t.repo.check(ReadData::All).await.unwrap();
    assert!(check.is_ok(), "{:?}", check.errors);
    assert_eq!(check.wal_files, 2);
    // The blobs moved (repacked): a fresh process finds them through the index.
    let fresh = coffer_repo::Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fetch(&fresh, &seg_name(1)).await.unwrap() == wal);
    assert!(fetch(&fresh, &seg_name(2)).await.unwrap() == segment(7));
    // Once the legacy objects are deleted too, prune frees their data.
    for s in [1, 2] {
        t.repo.delete_legacy_wal(STREAM, &seg_name(s)).await.unwrap();
    }
    assert!(t.backend.list(FileKind::Wal).await.unwrap().is_empty());
    t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    assert!(pack_bytes(&t) < 1 << 20, "{} bytes of packs left", pack_bytes(&t));
    assert!(t.repo.check(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_legacy_wal_files_that_lost_data() {
    let t = TempRepo::new(test_init_options()).await;
    push(&t, &seg_name(1), &segment(8)).await;
    for p in t.packs() {
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 0xFF;
        std::fs::write(&p, b).unwrap();
    }
    let r = t.repo.check(ReadData::All).await.unwrap();
    assert!(!r.is_ok());
    assert!(r.damaged_wal.contains(&format!("{STREAM}/{}", seg_name(1))), "{:?}", r.errors);
    let fresh = coffer_repo::Repository::open(t.backend.clone(), PASSWORD).await.unwrap();
    assert!(fetch(&fresh, &seg_name(1)).await.is_err(), "damaged data must not be served");
}
