//! `coffer wal push|fetch|list` as PostgreSQL runs them (archive_command and
//! restore_command, in the data directory), on synthetic WAL files with
//! real page headers: the aliases of `coffer stream push|fetch|list` with
//! the postgres plugin, which classifies and checks each file; gaps named
//! by `coffer verify`; WAL retention through `coffer forget` by the needs
//! base backups declare.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::*;

const SEG: usize = 16 * 1024 * 1024;
const SYSID: u64 = 7_283_947_561_234_567_890;

/// A data directory with `global/pg_control` and `pg_wal/`.
fn pgdata(root: &Path) -> PathBuf {
    let d = root.join("pgdata");
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::create_dir_all(d.join("pg_wal")).unwrap();
    let mut control = SYSID.to_le_bytes().to_vec();
    control.resize(8192, 0);
    std::fs::write(d.join("global/pg_control"), control).unwrap();
    d
}

/// A 16 MiB segment whose first page has a long header: segment `segno` on
/// timeline 1 of system SYSID, then deterministic filler.
fn segment(segno: u64, seed: u8) -> Vec<u8> {
    let mut s = vec![0u8; SEG];
    s[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    s[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    s[4..8].copy_from_slice(&1u32.to_le_bytes());
    s[8..16].copy_from_slice(&(segno * SEG as u64).to_le_bytes());
    s[24..32].copy_from_slice(&SYSID.to_le_bytes());
    s[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
    s[36..40].copy_from_slice(&8192u32.to_le_bytes());
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(segno + 1);
    for chunk in s[8192..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    s
}

fn name(segno: u64) -> String {
    format!("{:08X}{:08X}{:08X}", 1, segno / 256, segno % 256)
}

fn in_dir(t: &TestRepo, dir: &Path, args: &[&str]) -> Output {
    t.cmd().current_dir(dir).args(args).output().expect("coffer runs")
}

#[test]
fn archive_and_restore_commands_work_as_postgres_runs_them() {
    let t = TestRepo::new();
    let pg = pgdata(t.dir.path());
    let seg3 = segment(3, 1);
    std::fs::write(pg.join("pg_wal").join(name(3)), &seg3).unwrap();
    let p = format!("pg_wal/{}", name(3));
    let out = in_dir(&t, &pg, &["wal", "push", &p]);
    assert!(out.status.success(), "push failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&name(3)) && text.contains(&format!("pg-{SYSID}")), "{text}");
    // PostgreSQL retries: the same file again succeeds.
    let out = in_dir(&t, &pg, &["wal", "push", &p]);
    assert!(out.status.success(), "re-push failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already archived"));
    // A different file under the same name is refused, loudly.
    let mut other = seg3.clone();
    other[SEG / 2] ^= 1;
    std::fs::write(pg.join("pg_wal").join(name(3)), &other).unwrap();
    let out = in_dir(&t, &pg, &["wal", "push", &p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&name(3)) && err.contains("already holds a different file under that name"), "{err}");
    // History files take the stream from pg_control.
    std::fs::write(pg.join("pg_wal/00000002.history"), "1\t0/5000000\tno recovery target specified\n").unwrap();
    let out = in_dir(&t, &pg, &["wal", "push", "pg_wal/00000002.history"]);
    assert!(out.status.success(), "history push failed: {}", stderr(&out));

    // restore_command: into a fresh data directory with the same pg_control.
    let restored = pgdata(&t.dir.path().join("restored"));
    let out = in_dir(&t, &restored, &["wal", "fetch", &name(3), "pg_wal/RECOVERYXLOG"]);
    assert!(out.status.success(), "fetch failed: {}", stderr(&out));
    assert!(std::fs::read(restored.join("pg_wal/RECOVERYXLOG")).unwrap() == seg3);
    let left: Vec<_> = std::fs::read_dir(restored.join("pg_wal")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    let out = in_dir(&t, &restored, &["wal", "fetch", "00000002.history", "pg_wal/RECOVERYHISTORY"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Asking for what is not archived is normal during recovery: exit 1,
    // one line, nothing written.
    let out = in_dir(&t, &restored, &["wal", "fetch", &name(4), "pg_wal/RECOVERYXLOG.next"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not in the archive") && err.contains(&name(4)), "{err}");
    assert!(!restored.join("pg_wal/RECOVERYXLOG.next").exists());
    // Without pg_control or --stream, fetch finds the one stream holding
    // the file.
    let out = in_dir(&t, t.dir.path(), &["wal", "fetch", &name(3), "x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(t.dir.path().join("x")).unwrap() == seg3);
    let out = in_dir(&t, t.dir.path(), &["wal", "fetch", "--stream", &format!("pg-{SYSID}"), &name(3), "y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A history file without pg_control: the stream must be named.
    std::fs::write(t.dir.path().join("00000003.history"), "1\t0/5000000\tx\n2\t0/6000000\ty\n").unwrap();
    let out = in_dir(&t, t.dir.path(), &["wal", "push", "00000003.history"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--stream") && stderr(&out).contains("--pgdata"), "{}", stderr(&out));
    // The same name in two streams: fetch without --stream says which hold
    // it, and fails with 126, which stops a recovery (1 would end it).
    std::fs::write(pg.join("pg_wal").join(name(3)), &seg3).unwrap();
    let out = in_dir(&t, &pg, &["wal", "push", "--stream", "other", &p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = in_dir(&t, t.dir.path(), &["wal", "fetch", &name(3), "z"]);
    assert_eq!(out.status.code(), Some(126));
    let err = stderr(&out);
    assert!(err.contains("other") && err.contains(&format!("pg-{SYSID}")) && err.contains("--stream"), "{err}");
    assert!(!t.dir.path().join("z").exists());
    // Names that are not WAL files are usage errors.
    let out = in_dir(&t, &pg, &["wal", "fetch", "../config", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn wal_list_shows_streams_counts_and_gaps() {
    let t = TestRepo::new();
    let pg = pgdata(t.dir.path());
    for s in [1u64, 2, 3, 6] {
        let p = pg.join("pg_wal").join(name(s));
        std::fs::write(&p, segment(s, 2)).unwrap();
        let out = in_dir(&t, &pg, &["wal", "push", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::remove_file(&p).unwrap();
    }
    let text = t.ok(&["wal", "list"]);
    assert!(text.contains(&format!("builtin-postgres pg-{SYSID}: 4 items")), "{text}");
    assert!(text.contains(&format!("first {}, newest {}", name(1), name(6))), "{text}");
    let v = t.json(&["wal", "list", "--stream", &format!("pg-{SYSID}")]);
    let keys: Vec<&str> = v.as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, [1, 2, 3, 6].map(name));
    assert_eq!(v[1]["position"], 2 * SEG as u64, "a segment's position is where it starts");
    // The host cannot tell WAL gaps; verify of a base backup does.
    let id = base_backup(&t, 1);
    let out = t.coffer(&["verify", &id]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(3), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("WAL {}..{} is missing from the archive", name(4), name(5))), "{text}");
    assert!(text.contains(&format!("reaches segment {}", name(3))), "{text}");
    // A segment whose header does not match its name is refused.
    let p = pg.join("pg_wal").join(name(9));
    std::fs::write(&p, segment(8, 2)).unwrap();
    let out = in_dir(&t, &pg, &["wal", "push", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not the WAL segment its name says"), "{}", stderr(&out));
}

/// Writes a snapshot shaped like the postgres plugin's (contract 0.2.0)
/// through the library: its attributes, and the need of its stream from
/// its start segment on.
fn base_backup(t: &TestRepo, start: u64) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let repo = coffer_repo::Repository::open_url(&t.url, &[], PASSWORD.as_bytes()).await.unwrap();
        let w = repo
            .start_snapshot(coffer_repo::SnapshotOptions {
                source: "postgres:db".into(),
                plugin: coffer_repo::PluginIdentity { name: "postgres".into(), builtin: true, ..Default::default() },
                ..Default::default()
            })
            .await
            .unwrap();
        let owner = coffer_repo::StreamOwner::builtin("postgres").unwrap();
        w.need_stream(owner, &format!("pg-{SYSID}"), start * SEG as u64).unwrap();
        w.set_attribute("pg.system-identifier", &SYSID.to_string());
        w.set_attribute("pg.start-wal", &name(start));
        w.set_attribute("pg.stop-wal", &name(start));
        w.set_attribute("pg.wal-segment-size", &SEG.to_string());
        w.commit().await.unwrap().to_hex()
    })
}

#[test]
fn forget_removes_wal_older_than_the_oldest_remaining_base_backup() {
    let t = TestRepo::new();
    let pg = pgdata(t.dir.path());
    let old = base_backup(&t, 2);
    let _new = base_backup(&t, 4);
    for s in 1u64..=5 {
        let p = pg.join("pg_wal").join(name(s));
        std::fs::write(&p, segment(s, 3)).unwrap();
        assert!(in_dir(&t, &pg, &["wal", "push", p.to_str().unwrap()]).status.success());
    }
    // A history file whose timeline began before the cut: pinned, kept.
    std::fs::write(pg.join("pg_wal/00000002.history"), "1\t0/2000000\tno recovery target specified\n").unwrap();
    assert!(in_dir(&t, &pg, &["wal", "push", "pg_wal/00000002.history"]).status.success());
    let stream = format!("pg-{SYSID}");
    let keys = |t: &TestRepo| -> Vec<String> {
        let v = t.json(&["wal", "list", "--stream", &stream]);
        v.as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_string()).collect()
    };
    let dry = t.ok(&["forget", "--dry-run", &old[..12]]);
    assert!(dry.contains(&format!("kept from {}; would remove 3 older items", name(4))), "{dry}");
    assert_eq!(keys(&t).len(), 6, "a dry run removed WAL");
    let done = t.ok(&["forget", &old[..12]]);
    assert!(done.contains("removed 3 older items"), "{done}");
    let left = keys(&t);
    assert_eq!(left, vec!["00000002.history".to_string(), name(4), name(5)], "history files stay");
    // With --json the retention report goes to stderr; stdout stays one document.
    let out = t.coffer(&["--json", "forget", "--keep-last", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout is JSON");
    assert!(stderr(&out).contains(&format!("stream builtin-postgres/{stream}: kept from")), "{}", stderr(&out));
    // Prune keeps the archived WAL and check reads it all back.
    t.ok(&["prune"]);
    let out = t.ok(&["check", "--read-data"]);
    assert!(out.contains("no errors"), "{out}");
    let restored = pgdata(&t.dir.path().join("r"));
    let out = in_dir(&t, &restored, &["wal", "fetch", &name(5), "pg_wal/RECOVERYXLOG"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(restored.join("pg_wal/RECOVERYXLOG")).unwrap() == segment(5, 3));
}
