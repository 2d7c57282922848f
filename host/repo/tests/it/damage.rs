//! Damage is detected and named: flipped bytes, missing and truncated
//! objects, wrong passwords, unknown format versions.

use std::sync::Arc;

use coffer_repo::{Error, ReadData, Repository, backend_for};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_random_byte_flips_in_packs_are_all_detected() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 6, 1 << 20, 21);
    t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let packs = t.packs();
    assert!(packs.len() >= 5, "want several packs, got {}", packs.len());
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..100 {
        let pack = &packs[(next() % packs.len() as u64) as usize];
        let mut bytes = std::fs::read(pack).unwrap();
        let at = (next() % bytes.len() as u64) as usize;
        let mask = (next() % 255 + 1) as u8;
        bytes[at] ^= mask;
        std::fs::write(pack, &bytes).unwrap();
        let report = t.repo.check(ReadData::All).await.unwrap();
        let name = pack.file_name().unwrap().to_str().unwrap();
        assert!(!report.is_ok(), "round {round}: flip at {at} in {name} went unnoticed");
        assert!(
            report.damaged_packs.iter().any(|p| p.to_hex() == name),
            "round {round}: damaged pack not named: {:?}",
            report.errors
        );
        bytes[at] ^= mask;
        std::fs::write(pack, &bytes).unwrap();
    }
    assert!(t.repo.check(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_snapshots_and_paths_a_missing_pack_breaks() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 4, 3 << 20, 5);
    let id = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    assert!(t.repo.check(ReadData::None).await.unwrap().is_ok());
    // Remove the pack holding the first chunk of f1.
    let snap = t.repo.open_snapshot(&id).await.unwrap();
    let chunk = snap.entry("f1").unwrap().content[0];
    let pack = t.repo.index().lookup(&chunk).unwrap().pack;
    let path = t.root().join(format!("data/{}/{}", &pack.to_hex()[..2], pack.to_hex()));
    std::fs::remove_file(&path).unwrap();
    let report = t.repo.check(ReadData::None).await.unwrap();
    assert!(report.damaged_packs.contains(&pack));
    assert!(report.damaged_paths.iter().any(|d| d.snapshot == id && d.path == "f1"), "{:?}", report.damaged_paths);
    assert!(report.errors.iter().any(|e| e.contains(&pack.to_hex()) && e.contains("missing")), "{:?}", report.errors);
    // Restoring says which object is gone instead of panicking.
    let err = t.repo.restore_dir(&id, &t.dir.path().join("out")).await.unwrap_err().to_string();
    assert!(err.contains(&pack.to_hex()) && err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_pack_and_snapshot_are_reported() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 3, 1 << 20, 9);
    let id = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    let pack = t.packs()[0].clone();
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() / 2]).unwrap();
    let report = t.repo.check(ReadData::None).await.unwrap();
    assert!(report.errors.iter().any(|e| e.contains("truncated")), "{:?}", report.errors);
    std::fs::write(&pack, &bytes).unwrap();
    let snap_path = t.root().join("snapshots").join(id.to_hex());
    let s = std::fs::read(&snap_path).unwrap();
    std::fs::write(&snap_path, &s[..s.len() - 3]).unwrap();
    let err = t.repo.read_manifest(&id).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&format!("snapshots/{}", id.to_hex())), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_and_any_key_opens() {
    let t = TempRepo::new(test_init_options()).await;
    let err = Repository::open(Arc::clone(&t.backend), b"wrong").await.unwrap_err();
    assert!(matches!(err, Error::WrongPassword { tried: 1, .. }), "{err}");
    assert!(err.to_string().starts_with("wrong password"), "{err}");
    let second = t.repo.add_key(b"second password", coffer_repo::KdfParams::insecure_fast(), "ops").await.unwrap();
    let r2 = Repository::open(Arc::clone(&t.backend), b"second password").await.unwrap();
    assert_eq!(r2.key_id(), Some(second));
    assert_eq!(r2.config().id, t.repo.config().id);
    let r1 = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    assert!(r1.remove_key(&r1.key_id().unwrap()).await.is_err(), "the key in use cannot be removed");
    r1.remove_key(&second).await.unwrap();
    assert!(Repository::open(Arc::clone(&t.backend), b"second password").await.is_err());
    assert_eq!(r1.keys_list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_format_version_and_altered_config_are_refused() {
    let t = TempRepo::new(test_init_options()).await;
    let cfg_path = t.root().join("config");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["version"] = 99.into();
    std::fs::write(&cfg_path, serde_json::to_string(&v).unwrap()).unwrap();
    let err = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade coffer"), "{err}");
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["pack_size"] = (2 << 20).into();
    std::fs::write(&cfg_path, serde_json::to_string(&v).unwrap()).unwrap();
    let err = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap_err();
    assert!(matches!(err, Error::DamagedConfig { .. }) || err.to_string().contains("altered"), "{err}");
    assert!(err.to_string().contains("put `config` back from a copy"), "the advice works: {err}");
    std::fs::remove_file(&cfg_path).unwrap();
    let err = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap_err();
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
    // And init refuses to overwrite a repository that still has keys.
    let again = Repository::init(backend_for(&t.url, &[]).unwrap(), PASSWORD, test_init_options()).await;
    assert!(matches!(again, Err(Error::AlreadyInitialized { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_rebuilds_from_packs_alone() {
    let t = TempRepo::new(small_pack_options()).await;
    let src = t.dir.path().join("src");
    make_random_tree(&src, 5, 1 << 20, 33);
    let id = t.repo.backup_dir(&src, opts("s")).await.unwrap();
    std::fs::remove_dir_all(t.root().join("index")).unwrap();
    let fresh = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap();
    assert!(!fresh.check(ReadData::None).await.unwrap().is_ok(), "check must notice the lost index");
    let report = fresh.repair_index().await.unwrap();
    assert_eq!(report.packs_indexed, t.packs().len());
    assert!(report.unreadable_packs.is_empty());
    assert!(fresh.check(ReadData::All).await.unwrap().is_ok());
    let out = t.dir.path().join("out");
    fresh.restore_dir(&id, &out).await.unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_asking_for_absurd_argon2_costs_is_refused_without_trying() {
    let t = TempRepo::new(test_init_options()).await;
    let keys = t.root().join("keys");
    let path = std::fs::read_dir(&keys).unwrap().next().unwrap().unwrap().path();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["kdf"]["m_cost_kib"] = u32::MAX.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = Repository::open(Arc::clone(&t.backend), PASSWORD).await.unwrap_err().to_string();
    assert!(err.contains("keys/") && err.contains("exceed the limits"), "{err}");
}
