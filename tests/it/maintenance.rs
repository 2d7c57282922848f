//! Maintenance from the CLI as operators run it: prunes that overlap,
//! `repair index` after a lost index file, `repair snapshots` after a
//! damaged snapshot file.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use coffer_test_support::random_bytes;

use crate::support::{TestRepo, stderr};

fn write_data(dir: &Path, round: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for f in 0..4u64 {
        // Two files change every round, two stay.
        let seed = if f < 2 { 1000 * round + f } else { f };
        std::fs::write(dir.join(format!("f{f}")), random_bytes(400_000, seed)).unwrap();
    }
}

fn spawn(t: &TestRepo, args: &[&str]) -> Child {
    t.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn overlapping_prunes_in_separate_processes_never_lose_the_kept_snapshot() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    for round in 0..6u64 {
        write_data(&src, round);
        t.ok(&["backup", "files", "--set", &format!("path={}", src.display())]);
        let a = spawn(&t, &["prune"]);
        std::thread::sleep(Duration::from_millis(20 * round));
        let b = spawn(&t, &["forget", "--keep-last", "1", "--prune"]);
        let c = spawn(&t, &["prune", "--max-unused", "0"]);
        let mut ran = 0;
        for (name, child) in [("prune", a), ("forget --prune", b), ("prune --max-unused 0", c)] {
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                ran += 1;
                continue;
            }
            assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("holds the repository's exclusive lease"),
                "{name} may only fail on the lease: {}",
                stderr(&out)
            );
        }
        assert!(ran >= 1, "round {round}: no prune ran");
        let check = t.coffer(&["check", "--read-data"]);
        assert!(check.status.success(), "round {round}: {}", String::from_utf8_lossy(&check.stdout));
        let dst = t.dir.path().join(format!("dst{round}"));
        t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
        for f in 0..4 {
            let name = format!("f{f}");
            assert!(std::fs::read(src.join(&name)).unwrap() == std::fs::read(dst.join(&name)).unwrap(), "{name}");
        }
    }
}

#[test]
fn repair_index_and_repair_snapshots_bring_a_damaged_repository_back() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    write_data(&src, 1);
    let path = format!("path={}", src.display());
    t.ok(&["backup", "files", "--set", &path]);
    write_data(&src, 2);
    t.ok(&["backup", "files", "--set", &path]);
    let repo = Path::new(&t.url);

    // A lost index: restore names the repair, and the repair works.
    std::fs::remove_dir_all(repo.join("index")).unwrap();
    std::fs::create_dir(repo.join("index")).unwrap();
    let dst = t.dir.path().join("dst");
    let out = t.coffer(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("coffer repair index"), "{}", stderr(&out));
    t.ok(&["repair", "index"]);
    let _ = std::fs::remove_dir_all(&dst);
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    assert!(std::fs::read(src.join("f0")).unwrap() == std::fs::read(dst.join("f0")).unwrap());
    assert!(t.coffer(&["check", "--read-data"]).status.success());

    // A damaged snapshot file: everything else goes on, check names it.
    let snaps = t.json(&["snapshots"]);
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    let file = repo.join("snapshots").join(&first);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let out = t.coffer(&["snapshots"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&first[..8]), "the listing warns about it: {}", stderr(&out));
    t.ok(&["backup", "files", "--set", &path]);
    let check = t.coffer(&["check"]);
    assert_eq!(check.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&check.stdout).contains(&first[..8]));
    let out = t.coffer(&["prune"]);
    assert_eq!(out.status.code(), Some(3), "damage is exit 3: {}", stderr(&out));
    assert!(stderr(&out).contains("repair snapshots"), "{}", stderr(&out));
    let fixed = t.ok(&["repair", "snapshots"]);
    assert!(fixed.contains(&first), "{fixed}");
    assert!(repo.join("quarantine/snapshots").join(&first).exists());
    t.ok(&["prune"]);
    assert!(t.coffer(&["check", "--read-data"]).status.success());
}
