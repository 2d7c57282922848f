//! kill -9 at random moments during backup, during prune and during key
//! rotation with re-encryption; after each kill, `check` passes and every
//! committed snapshot is intact.
//!
//! The test binary re-runs itself as the child (`child_worker`, which only
//! does something when `COFFER_CRASH_CHILD` is set).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer_repo::{FileKind, KeepPolicy, PruneOptions, ReadData, Repository, backend_for};

use crate::support::*;

/// The child: loops backups (and, in prune mode, forget + prune) until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the kill -9 tests as a child process"]
async fn child_worker() {
    let Ok(url) = std::env::var("COFFER_CRASH_CHILD") else { return };
    let mode = std::env::var("COFFER_CRASH_MODE").unwrap();
    let src = std::path::PathBuf::from(std::env::var("COFFER_CRASH_SRC").unwrap());
    let repo = Repository::open(backend_for(&url, &[]).unwrap(), PASSWORD).await.unwrap();
    // Earlier children were killed: their session markers would hold prune's
    // sweep back for 15 minutes. Remove them (as their expiry would) so that
    // kills also land inside the sweep.
    for l in repo.backend().list(FileKind::Session).await.unwrap() {
        repo.backend().delete(FileKind::Session, &l.name).await.unwrap();
    }
    let mut round: u64 = std::process::id() as u64 * 1000;
    loop {
        round += 1;
        std::fs::write(src.join("f1"), random_bytes(1 << 20, round)).unwrap();
        repo.backup_dir(&src, opts("crash")).await.unwrap();
        if mode == "prune" {
            repo.forget(&KeepPolicy { last: Some(2), ..Default::default() }, false).await.unwrap();
            let r = repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
            eprintln!("pruned: {r:?}");
        }
        if mode == "reencrypt" {
            repo.forget(&KeepPolicy { last: Some(3), ..Default::default() }, false).await.unwrap();
            let epoch = repo.rotate_key().await.unwrap();
            let r = repo.prune(&PruneOptions { reencrypt: true, ..Default::default() }).await.unwrap();
            eprintln!("reencrypted to epoch {epoch}: {r:?}");
        }
    }
}

fn kill_loop(mode: &str, iterations: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t = rt.block_on(TempRepo::new(small_pack_options()));
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 1 << 20, 60);
    let exe = std::env::current_exe().unwrap();
    let mut seed: u64 = 0x9E37_79B9 ^ iterations as u64;
    let mut committed_total = 0;
    let log = t.dir.path().join("children.log");
    for i in 0..iterations {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash::child_worker", "--ignored", "--nocapture", "--test-threads=1"])
            .env("COFFER_CRASH_CHILD", &t.url)
            .env("COFFER_CRASH_MODE", mode)
            .env("COFFER_CRASH_SRC", &src)
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + seed % 900));
        // SIGKILL: no destructor, no flush, no cleanup.
        child.kill().unwrap();
        child.wait().unwrap();
        let report = rt.block_on(async {
            let repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
            let read = if i % 10 == 9 { ReadData::All } else { ReadData::None };
            let r = repo.check(read).await.unwrap();
            (r.is_ok(), r.errors, r.snapshots)
        });
        assert!(report.0, "{mode} kill #{i}: check failed: {:?}", report.1);
        committed_total = report.2;
    }
    // The loop must actually have committed work between kills, and in
    // prune mode completed sweeps that deleted packs.
    assert!(committed_total > 0, "{mode}: no snapshot was ever committed");
    if mode == "prune" {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let sweeps = text.lines().filter(|l| l.contains("pruned:") && !l.contains("deleted_packs: 0,")).count();
        assert!(sweeps > 0, "no prune sweep completed between kills:\n{text}");
    }
    if mode == "reencrypt" {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let done =
            text.lines().filter(|l| l.contains("reencrypted to epoch") && !l.contains("retired_epochs: []")).count();
        assert!(done > 0, "no re-encryption retired an epoch between kills:\n{text}");
    }
    // And the last state restores, and one more prune cleans up everything
    // the kills left behind.
    rt.block_on(async {
        let repo = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
        if mode == "reencrypt" {
            for l in repo.backend().list(FileKind::Session).await.unwrap() {
                repo.backend().delete(FileKind::Session, &l.name).await.unwrap();
            }
            let opts = PruneOptions { reencrypt: true, staging_grace: Duration::ZERO, ..Default::default() };
            let r = repo.prune(&opts).await.unwrap();
            assert!(r.kept_epochs.is_empty(), "epochs kept after a quiet re-encryption: {r:?}");
            let epochs = repo.epochs().await.unwrap();
            assert_eq!(epochs.len(), 1, "only the current epoch is left: {epochs:?}");
            assert!(epochs[0].current && epochs[0].packs > 0);
            assert_eq!(repo.backend().list(FileKind::Epoch).await.unwrap().len(), 1);
            let c = repo.check(ReadData::All).await.unwrap();
            assert!(c.is_ok(), "{:?}", c.errors);
        }
        if mode == "prune" {
            for l in repo.backend().list(FileKind::Session).await.unwrap() {
                repo.backend().delete(FileKind::Session, &l.name).await.unwrap();
            }
            // Every child is dead: their half-written staging files may go at once.
            let opts = PruneOptions { max_unused: 0.0, staging_grace: Duration::ZERO, ..Default::default() };
            repo.prune(&opts).await.unwrap();
            let left = pack_bytes(&t);
            // Two snapshots of 3 x 1 MiB with one file differing: about 4 MiB.
            assert!(left < 8 << 20, "prune left {left} bytes of packs after the kills");
            assert!(repo.check(ReadData::All).await.unwrap().is_ok());
        }
        let snaps = repo.snapshots().await.unwrap();
        let (id, _) = snaps.last().unwrap();
        let out = t.dir.path().join("final");
        repo.restore_dir(id, &out).await.unwrap();
        assert!(Path::new(&out).join("f2").exists());
    });
}

#[test]
fn kill_9_during_backup_fifty_times() {
    kill_loop("backup", 50);
}

#[test]
fn kill_9_during_prune_fifty_times() {
    kill_loop("prune", 50);
}

#[test]
fn kill_9_during_key_rotation_and_reencryption_forty_times() {
    kill_loop("reencrypt", 40);
}

/// A pack file that a killed backup was filling is swept by prune once it
/// is older than the grace, but only while no backup runs: a running
/// backup's pack file fills as fast as its source delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_sweeps_a_killed_backups_pack_file_only_while_no_backup_runs() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 2, 1 << 20, 5);
    t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let left = t.root().join("data").join(format!("{}#4242", "ab".repeat(32)));
    std::fs::write(&left, b"the first blobs of a pack").unwrap();
    let sweep = PruneOptions { staging_grace: Duration::ZERO, ..Default::default() };
    let running = t.repo.start_snapshot(opts("other")).await.unwrap();
    let r = t.repo.prune(&sweep).await.unwrap();
    assert_eq!(r.removed_staging_files, 0, "{r:?}");
    assert!(left.exists(), "a file a running backup may own was removed");
    running.abort().await;
    let r = t.repo.prune(&sweep).await.unwrap();
    assert_eq!(r.removed_staging_files, 1, "{r:?}");
    assert_eq!(t.staging_files(), Vec::<std::path::PathBuf>::new());
    assert!(t.repo.check(ReadData::All).await.unwrap().is_ok());
}
