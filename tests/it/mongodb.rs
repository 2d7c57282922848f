//! The mongodb plugin on real mongodump output: the dump directories and
//! BSON files MongoDB's own tools test with (`../shared/data/mongodb`,
//! from mongo-tools). Every good dump directory is backed up with
//! `dump_dir`, verified, restored into a directory and compared byte for
//! byte; the damaged BSON files are stored as they are, with a warning, and
//! `verify` names each with its document and byte offset. No `mongod` runs
//! here: the wire protocol is tested against the stand-in
//! server in `mongodb_live.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::{TestRepo, stderr};

/// `tests/fixtures/mongodb`, a copy of `../shared/data/mongodb`.
fn data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mongodb");
    assert!(p.is_dir(), "{} is missing: the MongoDB test data lives beside the repository", p.display());
    p
}

/// The dump directories of mongorestore's test data that hold only valid
/// files. `testdirs`, the gzip dump and the two oplogs out of timestamp
/// order (`commit_indexes_build`, `create_indexes`) have tests of their own.
const GOOD_DUMPS: &[&str] = &[
    "aws_test_db",
    "collMod_ttl_index",
    "coll_with_geohaystack_index",
    "coll_with_index",
    "coll_with_ttl_index",
    "coll_without_index",
    "dump_local_oplog",
    "dump_oplog_conflict",
    "dump_with_noop_in_oplog",
    "duplicate_index_key",
    "duplicate_index_key_with_oplog",
    "foodump",
    "indexmetadata",
    "indextestdump",
    "local",
    "longcollectionname",
    "longindextestdump",
    "oplog_ignore_index",
    "oplog_partial_skips",
    "oplogdump",
    "oplogdumpmaxsize",
    "oplogs/bson",
    "prelude_test/prelude_top_level",
    "prelude_test/server_version_unknown",
    "specialcharacter",
    "timeseries_tests/ts_dump",
    "timeseries_tests/ts_dump_invalid_buckets",
    "timeseries_tests/ts_dump_with_oplog",
    "timeseries_tests/ts_single_buckets_file",
    "tools-2002",
    "usersdump",
];

/// True for the names mongodump gives files (at the top of a dump when
/// `top`, else inside a database directory).
fn is_dump_file(name: &str, top: bool) -> bool {
    let ends = |s: &str| name.len() > s.len() && name.ends_with(s);
    ends(".bson")
        || ends(".metadata.json")
        || ends(".bson.gz")
        || ends(".metadata.json.gz")
        || (top && (name == "prelude.json" || name == "prelude.json.gz"))
}

/// The dump's files (relative path, bytes): mongodump's names at the top
/// and one directory down.
fn dump_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        if ft.is_file() && is_dump_file(&name, true) {
            out.insert(name, std::fs::read(e.path()).unwrap());
        } else if ft.is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                let sub = f.file_name().to_string_lossy().into_owned();
                if f.file_type().unwrap().is_file() && is_dump_file(&sub, false) {
                    out.insert(format!("{name}/{sub}"), std::fs::read(f.path()).unwrap());
                }
            }
        }
    }
    out
}

/// Every file under `dir`, relative path and bytes.
fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Documents in a `.bson` file, counted by their length prefixes alone.
fn count_documents(bytes: &[u8]) -> u64 {
    let (mut at, mut n) = (0usize, 0u64);
    while at + 4 <= bytes.len() {
        at += i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        n += 1;
    }
    assert_eq!(at, bytes.len(), "a good file");
    n
}

fn backup(t: &TestRepo, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["backup".to_string(), "mongodb".into()];
    args.extend(["--set".into(), format!("dump_dir={}", dir.display())]);
    for e in extra {
        args.extend(["--set".into(), e.to_string()]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    t.coffer(&a)
}

/// Backs up `dir`; returns the snapshot's id (a prefix, as `coffer
/// backup` prints it) and what the backup said on stderr (its warnings).
fn backup_ok(t: &TestRepo, dir: &Path, extra: &[&str]) -> (String, String) {
    let out = backup(t, dir, extra);
    assert!(out.status.success(), "backup of {} failed ({}): {}", dir.display(), out.status, stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let id = said
        .split_whitespace()
        .skip_while(|w| *w != "snapshot")
        .nth(1)
        .unwrap_or_else(|| panic!("no snapshot id in: {said}"))
        .to_string();
    (id, stderr(&out))
}

fn attributes(t: &TestRepo, id: &str) -> serde_json::Value {
    let snaps = t.json(&["snapshots"]);
    let snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str().unwrap().starts_with(id))
        .unwrap_or_else(|| panic!("{id}: {snaps}"));
    snap["attributes"].clone()
}

#[test]
fn every_good_dump_directory_backs_up_verifies_and_restores_byte_for_byte() {
    let t = TestRepo::new();
    let root = data().join("mongorestore-testdata");
    let mut bson_bytes = 0usize;
    let started = std::time::Instant::now();
    for (k, name) in GOOD_DUMPS.iter().enumerate() {
        let dir = root.join(name);
        let files = dump_files(&dir);
        assert!(!files.is_empty(), "{name} holds dump files");
        let (id, said) = backup_ok(&t, &dir, &[]);
        assert!(!said.contains("damaged") && !said.contains("skipped"), "{name}: {said}");

        // The attributes: collections and per-collection counts, the oplog.
        let attrs = attributes(&t, &id);
        assert_eq!(attrs["mongodb.damaged-files"], "0", "{name}: {attrs}");
        let colls: Vec<(&String, &Vec<u8>)> =
            files.iter().filter(|(p, _)| p.ends_with(".bson") && p.as_str() != "oplog.bson").collect();
        assert_eq!(attrs["mongodb.collections"], colls.len().to_string(), "{name}: {attrs}");
        let mut total = 0;
        for (path, bytes) in &colls {
            let n = count_documents(bytes);
            total += n;
            let key = format!("mongodb.docs.{}", path.strip_suffix(".bson").unwrap());
            if key.len() <= 256 {
                assert_eq!(attrs[&key], n.to_string(), "{name}: {key} in {attrs}");
            }
            bson_bytes += bytes.len();
        }
        assert_eq!(attrs["mongodb.documents"], total.to_string(), "{name}: {attrs}");
        if let Some(oplog) = files.get("oplog.bson") {
            assert_eq!(attrs["mongodb.oplog-entries"], count_documents(oplog).to_string(), "{name}: {attrs}");
            if !oplog.is_empty() {
                assert!(attrs["mongodb.oplog-first"].as_str().unwrap().contains(':'), "{name}: {attrs}");
            }
        }

        let v = t.json(&["verify", &id]);
        assert_eq!(v["ok"], true, "{name}: {v}");

        let target = t.dir.path().join(format!("restore-{k}"));
        t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
        let restored = all_files(&target);
        assert_eq!(
            restored.keys().collect::<Vec<_>>(),
            files.keys().collect::<Vec<_>>(),
            "{name}: the restore holds the dump's files and nothing else"
        );
        for (path, bytes) in &files {
            assert!(restored[path] == *bytes, "{name}: {path} differs after the restore");
        }
    }
    eprintln!(
        "mongodb: {} dumps ({bson_bytes} bytes of collection BSON) backed up, verified and restored in {:.1?}",
        GOOD_DUMPS.len(),
        started.elapsed()
    );
    // The legacy index options of indextestdump are notes, not problems.
    let id = backup_ok(&t, &root.join("indextestdump"), &[]).0;
    let v = t.json(&["verify", &id]);
    assert!(v["notes"].to_string().contains("convertLegacyIndexes"), "{v}");
}

#[test]
fn damaged_bson_files_are_stored_with_a_warning_and_verify_names_them() {
    let t = TestRepo::new();
    let src = data().join("bsondump-testdata");
    let dump = tempfile::tempdir().unwrap();
    std::fs::create_dir(dump.path().join("bad")).unwrap();
    std::fs::create_dir(dump.path().join("good")).unwrap();
    for f in ["bad_cstring", "bad_type", "invalid_field_name", "partial_file", "random_bytes"] {
        std::fs::copy(src.join(format!("{f}.bson")), dump.path().join(format!("bad/{f}.bson"))).unwrap();
    }
    for f in ["sample", "all_types", "all_in_one_doc"] {
        std::fs::copy(src.join(format!("{f}.bson")), dump.path().join(format!("good/{f}.bson"))).unwrap();
    }
    let (id, said) = backup_ok(&t, dump.path(), &[]);
    for needle in [
        "bad/partial_file.bson: document 3 at byte 164",
        "bad/invalid_field_name.bson: document 5 at byte 283",
        "bad/bad_type.bson: document 1 at byte 0: invalid tag: 170",
        "bad/random_bytes.bson: document 1 at byte 0",
        "bad/bad_cstring.bson: document 1 at byte 0",
    ] {
        assert!(said.contains(needle), "{needle:?} missing from the backup's warnings:\n{said}");
    }
    assert!(!said.contains("good/"), "{said}");
    let attrs = attributes(&t, &id);
    assert_eq!(attrs["mongodb.damaged-files"], "5", "{attrs}");
    assert_eq!(attrs["mongodb.docs.good/sample"], "4", "{attrs}");
    assert_eq!(attrs["mongodb.docs.bad/partial_file"], "2", "{attrs}");

    let out = t.coffer(&["verify", &id]);
    assert_eq!(out.status.code(), Some(3), "verify: {}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    for needle in [
        "bad/partial_file.bson",
        "document 3 at byte 164: declares a length of 48 bytes; the file ends 13 bytes into it",
        "bad/invalid_field_name.bson",
        "document 5 at byte 283",
        "bad/random_bytes.bson",
        "bad/bad_type.bson",
        "bad/bad_cstring.bson",
    ] {
        assert!(report.contains(needle), "{needle:?} missing from verify's report:\n{report}");
    }
    assert!(!report.contains("good/sample.bson"), "{report}");

    // The damaged files come back as the dump held them.
    let target = t.dir.path().join("restored");
    t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(all_files(&target), all_files(dump.path()));
}

#[test]
fn an_oplog_out_of_timestamp_order_is_named() {
    // mongo-tools' `commit_indexes_build` and `create_indexes` oplogs end
    // with two entries repeated from earlier in the file: entry 16 goes
    // back in time. mongodump never writes that; verify says where.
    let t = TestRepo::new();
    let root = data().join("mongorestore-testdata");
    for (name, at) in [
        (
            "commit_indexes_build",
            "entry 16 at byte 1976 has ts 1588114182:1, not after the entry before it (1588114270:1)",
        ),
        ("create_indexes", "entry 16 at byte 1888 has ts 1589174740:3"),
    ] {
        let dir = root.join(name);
        let (id, said) = backup_ok(&t, &dir, &[]);
        assert!(said.contains(&format!("oplog.bson: {at}")), "{name}: {said}");
        let out = t.coffer(&["verify", &id]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        let report = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
        assert!(report.contains("oplog.bson") && report.contains(at), "{name}: {report}");
        // Stored and restored as the dump holds it.
        let target = t.dir.path().join(name);
        t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
        assert_eq!(all_files(&target), dump_files(&dir), "{name}");
    }
}

#[test]
fn files_mongodump_does_not_write_are_skipped_with_a_warning() {
    // mongorestore's `testdirs`: empty collection and metadata files, an
    // empty oplog, and files and a directory that are not a dump's.
    let t = TestRepo::new();
    let dir = data().join("mongorestore-testdata/testdirs");
    let (id, said) = backup_ok(&t, &dir, &[]);
    for skipped in ["badfile.txt", "db1/baddir", "db2/c1.bin", "db2/c2.txt"] {
        assert!(said.contains(skipped), "{skipped} not named in:\n{said}");
    }
    let attrs = attributes(&t, &id);
    assert_eq!(attrs["mongodb.collections"], "4", "{attrs}");
    assert_eq!(attrs["mongodb.docs.db1/c2"], "0", "{attrs}");
    assert_eq!(attrs["mongodb.oplog-entries"], "0", "{attrs}");
    let v = t.json(&["verify", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["notes"].to_string().contains("db1/c3.metadata.json: empty"), "{v}");
    let target = t.dir.path().join("restored");
    t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(all_files(&target), dump_files(&dir));
    assert!(!target.join("db2").exists(), "a directory without dump files is not made");

    // gzip-compressed dumps are stored as they are, with a warning.
    let gz = data().join("mongorestore-testdata/prelude_test/prelude_gzip");
    let (id, said) = backup_ok(&t, &gz, &[]);
    assert!(said.contains("gzip"), "{said}");
    assert_eq!(t.json(&["verify", &id])["ok"], true);
    let target = t.dir.path().join("restored-gz");
    t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(all_files(&target), all_files(&gz));
}

#[test]
fn filters_take_databases_and_collections_and_exclude_them() {
    let t = TestRepo::new();
    let dir = data().join("mongorestore-testdata/collMod_ttl_index");
    let ls = |id: &str| t.ok(&["ls", id]);

    let (id, _) = backup_ok(&t, &dir, &["databases=admin"]);
    let l = ls(&id);
    assert!(l.contains("admin/system.version.bson") && !l.contains("mongodump_test_db"), "{l}");
    assert!(l.contains("oplog.bson"), "the oplog is kept: {l}");

    let (id, _) = backup_ok(&t, &dir, &["collections=mongodump_test_db.coll1"]);
    let l = ls(&id);
    assert!(l.contains("mongodump_test_db/coll1.metadata.json") && !l.contains("admin/"), "{l}");

    let (id, _) = backup_ok(&t, &dir, &["exclude=admin"]);
    let l = ls(&id);
    assert!(!l.contains("admin/") && l.contains("mongodump_test_db/coll1.bson"), "{l}");

    // A filter that takes nothing is an error that says so.
    let out = backup(&t, &dir, &["databases=nosuchdb"]);
    assert!(!out.status.success() && stderr(&out).contains("that the filters take"), "{}", stderr(&out));
    let out = backup(&t, &dir, &["collections=nodot"]);
    assert!(!out.status.success() && stderr(&out).contains("collections"), "{}", stderr(&out));
}

#[test]
fn mongodump_archives_back_up_in_the_dump_layout_and_restore_as_archives_and_directories() {
    let t = TestRepo::new();
    let root = data().join("mongorestore-testdata");
    let run = |args: &[&str]| {
        let out = t.coffer(args);
        assert!(out.status.success(), "coffer {args:?}: {}", stderr(&out));
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr(&out))
    };
    let id_of = |said: &str| said.split_whitespace().skip_while(|w| *w != "snapshot").nth(1).unwrap().to_string();
    for (name, collections) in [("test.bar.archive", 1), ("timeseries_tests/dump.archive", 3)] {
        let file = root.join(name);
        let (said, _) = run(&["backup", "mongodb", "--set", &format!("archive_file={}", file.display())]);
        let id = id_of(&said);
        let attrs = attributes(&t, &id);
        assert_eq!(attrs["mongodb.mode"], "archive", "{name}: {attrs}");
        assert_eq!(attrs["mongodb.damaged-files"], "0", "{name}: {attrs}");
        assert!(attrs["mongodb.collections"].as_str().unwrap().parse::<u32>().unwrap() >= collections, "{attrs}");
        run(&["verify", &id]);

        // Into a directory (the dump layout), and as one archive file.
        let dir = t.dir.path().join(format!("dir-{}", name.replace('/', "-")));
        run(&["restore", &id, "--target", dir.to_str().unwrap()]);
        let from_archive = dump_files(&dir);
        assert!(from_archive.keys().any(|k| k.ends_with(".metadata.json")), "{name}: {:?}", from_archive.keys());
        let docs: u64 =
            from_archive.iter().filter(|(k, _)| k.ends_with(".bson")).map(|(_, b)| count_documents(b)).sum();
        assert_eq!(attrs["mongodb.documents"], docs.to_string(), "{name}");
        let adir = t.dir.path().join(format!("arch-{}", name.replace('/', "-")));
        std::fs::create_dir_all(&adir).unwrap();
        run(&["restore", &id, "--target", adir.to_str().unwrap(), "--set", "format=archive"]);
        let written = adir.join("dump.archive");
        let head = std::fs::read(&written).unwrap();
        assert_eq!(&head[..4], &0x8199e26du32.to_le_bytes(), "{name}: the magic number");

        // The written archive backs up to the same collection files.
        let (said, _) = run(&["backup", "mongodb", "--set", &format!("archive_file={}", written.display())]);
        let id2 = id_of(&said);
        let dir2 = t.dir.path().join(format!("dir2-{}", name.replace('/', "-")));
        run(&["restore", &id2, "--target", dir2.to_str().unwrap()]);
        let again = dump_files(&dir2);
        let bson = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
            m.iter().filter(|(k, _)| k.ends_with(".bson")).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        assert_eq!(bson(&again), bson(&from_archive), "{name}: documents differ after a round trip");
        let out = t.coffer(&["restore", &id, "--target", adir.to_str().unwrap(), "--set", "format=archive"]);
        assert!(!out.status.success() && stderr(&out).contains("--force"), "{}", stderr(&out));
    }

    // A damaged archive (metadata JSON that does not parse): warned about.
    let (_, said) =
        run(&["backup", "mongodb", "--set", &format!("archive_file={}", root.join("bad-format.archive").display())]);
    assert!(said.contains("not JSON"), "{said}");
    // Not an archive at all.
    let out = t.coffer(&[
        "backup",
        "mongodb",
        "--set",
        &format!("archive_file={}", root.join("test_auto_idx.bson").display()),
    ]);
    assert!(!out.status.success() && !stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_backup_without_a_source_or_with_two_says_what_to_give() {
    let t = TestRepo::new();
    let out = t.coffer(&["backup", "mongodb"]);
    assert!(!out.status.success() && stderr(&out).contains("dump_dir"), "{}", stderr(&out));
    let d = data().join("mongorestore-testdata/foodump");
    let out = t.coffer(&[
        "backup",
        "mongodb",
        "--set",
        &format!("dump_dir={}", d.display()),
        "--set",
        "url=mongodb://127.0.0.1:1/",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("give one of url"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
