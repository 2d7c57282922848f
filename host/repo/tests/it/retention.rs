//! forget and prune, including prune beside a running backup.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use coffer_repo::commands::forget::plan_group;
use coffer_repo::{FileKind, Id, KeepPolicy, PruneOptions, ReadData, SnapshotManifest};

use crate::support::*;

fn manifest_at(t: chrono::DateTime<Utc>) -> SnapshotManifest {
    SnapshotManifest {
        version: 1,
        time: t,
        tenant: "default".into(),
        source: "s".into(),
        hostname: String::new(),
        plugin: Default::default(),
        config: serde_json::Value::Null,
        kind: Default::default(),
        parent: None,
        tags: vec![],
        attributes: BTreeMap::new(),
        tree: vec![],
        summary: Default::default(),
        streams: vec![],
    }
}

#[test]
fn keep_rules_pick_the_newest_per_bucket_and_explain_themselves() {
    // One snapshot every 6 hours for 60 days.
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let ms: Vec<(Id, SnapshotManifest)> =
        (0..240u32).map(|i| (Id([i as u8; 32]), manifest_at(start + chrono::Duration::hours(6 * i as i64)))).collect();
    let refs: Vec<(Id, &SnapshotManifest)> = ms.iter().map(|(i, m)| (*i, m)).collect();
    let policy = KeepPolicy { last: Some(2), daily: Some(7), weekly: Some(4), monthly: Some(3), ..Default::default() };
    let d = plan_group(&refs, &policy);
    let kept: Vec<_> = d.iter().filter(|d| d.keep).collect();
    // 2 last (same day as the newest daily) + 7 daily + up to 4 weekly + 3 monthly, overlapping.
    assert!(kept.len() >= 9 && kept.len() <= 14, "kept {}", kept.len());
    assert!(d[0].keep && d[0].reasons.contains(&"last".to_string()) && d[0].reasons.contains(&"daily".to_string()));
    let days: std::collections::BTreeSet<_> =
        kept.iter().filter(|k| k.reasons.contains(&"daily".into())).map(|k| k.time.date_naive()).collect();
    assert_eq!(days.len(), 7);
    assert!(d.iter().filter(|d| !d.keep).all(|d| d.reasons == vec!["matched no keep rule".to_string()]));
    // January, February and the newest month.
    let months = kept.iter().filter(|k| k.reasons.contains(&"monthly".into())).count();
    assert_eq!(months, 3);
    let within = plan_group(&refs, &KeepPolicy { within: Some(chrono::Duration::days(2)), ..Default::default() });
    assert_eq!(within.iter().filter(|d| d.keep).count(), 9);
    let hourly = plan_group(&refs, &KeepPolicy { hourly: Some(5), yearly: Some(1), ..Default::default() });
    assert_eq!(hourly.iter().filter(|d| d.keep).count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_groups_per_source_dry_run_changes_nothing_and_prune_frees_space() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 1 << 20, 40);
    let mut ids = Vec::new();
    for round in 0..4u64 {
        std::fs::write(src.join("f1"), random_bytes(2 << 20, 100 + round)).unwrap();
        ids.push(t.repo.backup_dir(&src, opts("a")).await.unwrap());
    }
    let other = t.repo.backup_dir(&src, opts("b")).await.unwrap();
    let policy = KeepPolicy { last: Some(1), ..Default::default() };
    let plans = t.repo.forget(&policy, true).await.unwrap();
    assert_eq!(plans.len(), 2, "two groups: a and b");
    assert_eq!(t.repo.snapshots().await.unwrap().len(), 5, "dry run deleted something");
    let plans = t.repo.forget(&policy, false).await.unwrap();
    let gone: usize = plans.iter().map(|p| p.snapshots.iter().filter(|d| !d.keep).count()).sum();
    assert_eq!(gone, 3);
    let left: Vec<Id> = t.repo.snapshots().await.unwrap().into_iter().map(|(i, _)| i).collect();
    assert!(left.contains(&ids[3]) && left.contains(&other));
    let before = pack_bytes(&t);
    let dry = t.repo.prune(&PruneOptions { dry_run: true, ..Default::default() }).await.unwrap();
    assert!(dry.marked_packs > 0);
    assert_eq!(pack_bytes(&t), before);
    let report = t.repo.prune(&PruneOptions { max_unused: 0.0, ..Default::default() }).await.unwrap();
    assert!(report.deleted_packs > 0, "{report:?}");
    let after = pack_bytes(&t);
    // Three old versions of f1 (2 MiB each, incompressible) are gone.
    assert!(after <= before - (6 << 20), "prune freed too little: {before} -> {after}");
    assert!(t.repo.check(ReadData::All).await.unwrap().is_ok());
    for id in [ids[3], other] {
        let out = t.dir.path().join(format!("out-{}", id.short()));
        t.repo.restore_dir(&id, &out).await.unwrap();
        assert_same_tree(&src, &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_beside_a_running_backup_keeps_what_it_relies_on() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 1 << 20, 50);
    let first = t.repo.backup_dir(&src, opts("a")).await.unwrap();
    // A backup starts and loads the index while `first` still exists...
    let w = t.repo.start_snapshot(opts("b")).await.unwrap();
    // ...then `first` is forgotten and pruned: its packs are now unreferenced.
    t.repo.forget_snapshot(&first).await.unwrap();
    let r = t.repo.prune(&PruneOptions::default()).await.unwrap();
    assert!(r.marked_packs > 0 && r.deleted_packs == 0 && r.waiting_markers > 0, "{r:?}");
    // The running backup writes the same data: it dedups against the marked
    // packs' blobs (it loaded the index before the marker) and commits.
    let data = std::fs::read(src.join("f1")).unwrap();
    let mut e = w
        .add_entry(coffer_repo::EntryMeta {
            path: "f1".into(),
            kind: coffer_repo::EntryKind::File,
            mode: 0o644,
            mtime: 0,
            mtime_nsec: 0,
            target: None,
        })
        .unwrap();
    e.write(&data).await.unwrap();
    e.finish().await.unwrap();
    let second = w.commit().await.unwrap();
    // Now the session is over: prune's second phase sees the new snapshot and
    // keeps the packs it needs.
    let r = t.repo.prune(&PruneOptions::default()).await.unwrap();
    assert!(r.resurrected_packs > 0 || r.deleted_packs > 0, "{r:?}");
    let report = t.repo.check(ReadData::All).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
    let snap = t.repo.open_snapshot(&second).await.unwrap();
    let mut back = Vec::new();
    let mut rd = t.repo.entry_reader(snap.entry("f1").unwrap());
    while let Some(c) = rd.next_chunk().await.unwrap() {
        back.extend_from_slice(&c);
    }
    assert!(back == data);
    // Backups started after a marker do not dedup against marked packs.
    assert!(t.backend.list(FileKind::PruneMarker).await.unwrap().is_empty());
    let _ = Duration::ZERO;
}
