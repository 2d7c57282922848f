//! The substrate plugin on a node's files written by the databases' own
//! code (no Substrate node runs here): a RocksDB chain database written by
//! RocksDB's `ldb` (Debian's rocksdb-tools), with column families,
//! compactions and a live write-ahead log, also while `ldb` holds it open
//! and writes; a ParityDB database written by the `parity-db` crate a node
//! links (`tests/paritydb-tool`); keystores in the format a node writes,
//! for the well-known development accounts, whose public keys are the
//! published ones. Restores are read back by `ldb scan` per column family
//! and by parity-db itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::support::{TestRepo, stderr};

/// The development phrase every Substrate chain's dev accounts derive
/// from.
const DEV_PHRASE: &str = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";
/// Published public keys of `//Alice` and `//Bob` (Substrate's dev chain
/// specs, `subkey inspect`).
const ALICE_SR25519: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";
const ALICE_ED25519: &str = "88dc3417d5058ec4b4503e0c12ea1a0a89be200fe98922423d4334014fa6b0ee";
const BOB_SR25519: &str = "8eaf04151687736326c9fea17e25fc5287613693c912909cb226aa4794f26a48";
const BOB_ED25519: &str = "d17c2d7823ebf260fd138f2d7e27d114c0145d968b5ff5006125f2414fadae69";
/// The peer id of the node key 00..01 (libp2p's published example).
const PEER_ID_OF_KEY_1: &str = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp";

const CHAIN: &str = "local_testnet";

/// Small memtables and files so that a few thousand keys make several
/// tables on more than one level. (Debian's build asserts below 512 KiB of
/// write buffer.)
const SMALL: [&str; 3] = ["--write_buffer_size=524288", "--file_size=65536", "--compression_type=no"];

fn ldb_cmd(db: &Path) -> Command {
    let mut c = Command::new("ldb");
    c.arg(format!("--db={}", db.display()));
    c
}

/// Runs `ldb --db=DB ARGS` (with `stdin`), expects success, returns stdout.
fn ldb(db: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = ldb_cmd(db)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ldb (apt-get install rocksdb-tools; `cargo xtask deps` does it)");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ldb {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn value(tag: &str, i: usize) -> String {
    format!("{tag}{i}-{}", "v".repeat(100 + i % 50))
}

fn lines(from: usize, to: usize, tag: &str) -> String {
    (from..to).map(|i| format!("k{i:06} ==> {}\n", value(tag, i))).collect()
}

fn load(db: &Path, cf: &str, text: &str) {
    let cf = format!("--column_family={cf}");
    let mut args: Vec<&str> = SMALL.to_vec();
    args.extend([cf.as_str(), "load"]);
    ldb(db, &args, Some(text));
}

/// Column families of the chain database, as a node's (fewer of them).
const FAMILIES: [&str; 3] = ["default", "col1", "col2"];

/// A RocksDB chain database at `db`: three column families, compacted
/// into tables on more than one level, then writes left in the log.
fn write_rocksdb(db: &Path) {
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    ldb(db, &["--create_if_missing", "put", "seed", "1"], None);
    for cf in &FAMILIES[1..] {
        ldb(db, &["create_column_family", cf], None);
    }
    load(db, "default", &lines(0, 4000, "d"));
    load(db, "col1", &lines(0, 6000, "one"));
    load(db, "col2", &lines(2000, 5000, "two"));
    for cf in ["default", "col1"] {
        let cf = format!("--column_family={cf}");
        let mut args: Vec<&str> = SMALL.to_vec();
        args.extend([cf.as_str(), "compact"]);
        ldb(db, &args, None);
    }
    // The last writes stay in the write-ahead log.
    load(db, "col1", &lines(100, 300, "in the log"));
}

/// `ldb scan` of every column family.
fn scans(db: &Path) -> BTreeMap<String, String> {
    FAMILIES.iter().map(|cf| (cf.to_string(), ldb(db, &[&format!("--column_family={cf}"), "scan"], None))).collect()
}

/// A keystore file as a node writes it: named hex(key type) + hex(public
/// key), holding the secret URI as a JSON string.
fn key_file(keystore: &Path, key_type: &str, public: &str, suri: &str) -> String {
    let name = format!("{}{public}", hex::encode(key_type));
    std::fs::write(keystore.join(&name), serde_json::to_string(suri).unwrap()).unwrap();
    std::fs::set_permissions(keystore.join(&name), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    name
}

/// A validator node's base path: `chains/local_testnet/` with a RocksDB
/// chain database, Alice's and Bob's BABE (sr25519) and GRANDPA (ed25519)
/// keys, and the node key 00..01.
fn validator(base: &Path) -> PathBuf {
    let chain = base.join("chains").join(CHAIN);
    write_rocksdb(&chain.join("db/full"));
    let keystore = chain.join("keystore");
    std::fs::create_dir_all(&keystore).unwrap();
    key_file(&keystore, "babe", ALICE_SR25519, &format!("{DEV_PHRASE}//Alice"));
    key_file(&keystore, "gran", ALICE_ED25519, &format!("{DEV_PHRASE}//Alice"));
    key_file(&keystore, "babe", BOB_SR25519, &format!("{DEV_PHRASE}//Bob"));
    key_file(&keystore, "gran", BOB_ED25519, &format!("{DEV_PHRASE}//Bob"));
    std::fs::create_dir_all(chain.join("network")).unwrap();
    let mut node_key = [0u8; 32];
    node_key[31] = 1;
    std::fs::write(chain.join("network/secret_ed25519"), node_key).unwrap();
    chain
}

/// Backs up with `sets`; returns the snapshot id and what the backup said.
fn backup(t: &TestRepo, sets: &[String]) -> Result<(String, String), String> {
    let mut args = vec!["backup".to_string(), "substrate".to_string()];
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let out = t.cmd().env("COFFER_LOG", "info").args(&args).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    if !out.status.success() {
        return Err(said);
    }
    let id = said
        .split_whitespace()
        .skip_while(|w| *w != "snapshot")
        .nth(1)
        .unwrap_or_else(|| panic!("no snapshot id in: {said}"))
        .to_string();
    Ok((id, said))
}

fn attributes(t: &TestRepo, id: &str) -> serde_json::Value {
    let snaps = t.json(&["snapshots"]);
    let snap = snaps.as_array().unwrap().iter().find(|s| s["id"].as_str().unwrap().starts_with(id)).unwrap().clone();
    snap["attributes"].clone()
}

/// `coffer verify`: (exit code, stdout + stderr).
fn verify(t: &TestRepo, id: &str) -> (Option<i32>, String) {
    let out = t.coffer(&["verify", id]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out))
}

/// `coffer restore ID --target DIR` with `sets`, into a new directory.
fn restore(t: &TestRepo, id: &str, name: &str, sets: &[&str]) -> (PathBuf, Result<String, String>) {
    let target = t.dir.path().join(name);
    std::fs::create_dir(&target).unwrap();
    let mut args = vec!["restore", id, "--target", target.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = t.coffer(&args);
    let said = stderr(&out);
    (target, if out.status.success() { Ok(said) } else { Err(said) })
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_validator_backs_up_verifies_and_restores_behind_the_equivocation_fence() {
    let t = TestRepo::new();
    let base = t.dir.path().join("node");
    let chain = validator(&base);
    let db = chain.join("db/full");
    let before = scans(&db);
    // A second chain: the chain spec's id picks this node's.
    std::fs::create_dir_all(base.join("chains/dev")).unwrap();
    let spec = t.dir.path().join("local-spec.json");
    std::fs::write(&spec, format!(r#"{{"name": "Local Testnet", "id": "{CHAIN}", "chainType": "Local"}}"#)).unwrap();
    let sets = [format!("base_path={}", base.display()), format!("chain_spec={}", spec.display())];
    let e = backup(&t, &sets[..1]).unwrap_err();
    assert!(e.contains("several chains (dev, local_testnet); name one with chain="), "{e}");
    let (id, said) = backup(&t, &sets).unwrap();
    assert!(said.contains("4 keys whose secrets derive"), "{said}");
    let attrs = attributes(&t, &id);
    assert_eq!(attrs["substrate.chain"], CHAIN, "{attrs}");
    assert_eq!(attrs["substrate.chain-spec-id"], CHAIN, "{attrs}");
    assert_eq!(attrs["substrate.database"], "rocksdb", "{attrs}");
    assert_eq!(attrs["substrate.column-families"], "default,col1,col2", "{attrs}");
    let tables: usize = attrs["substrate.live-tables"].as_str().unwrap().parse().unwrap();
    assert!(tables >= 4, "{attrs}");
    let keys = attrs["substrate.keys"].as_str().unwrap();
    for (ty, public) in [("babe", ALICE_SR25519), ("gran", ALICE_ED25519), ("babe", BOB_SR25519), ("gran", BOB_ED25519)]
    {
        assert!(keys.contains(&format!("{ty}:0x{public}")), "{keys}");
    }
    assert_eq!(attrs["substrate.peer-id"], PEER_ID_OF_KEY_1, "{attrs}");
    // No secret in anything the backup said or stored in the clear.
    assert!(!said.contains("bottom drive"), "{said}");
    assert!(!attrs.to_string().contains("bottom drive"), "{attrs}");

    // Incremental: every table is kept from the parent unread.
    let (_, again) = backup(&t, &sets).unwrap();
    assert!(again.contains(&format!("{tables} live tables ({tables} kept from the parent snapshot)")), "{again}");

    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("4 of 4 keys derive the public keys their file names give"), "{report}");
    assert!(report.contains(&format!("peer id {PEER_ID_OF_KEY_1}")), "{report}");
    assert!(report.contains("data blocks checked"), "{report}");
    assert!(!report.contains("bottom drive"), "{report}");

    // The fence: no keys restored without the operator's word, and nothing
    // written at all.
    let (target, r) = restore(&t, &id, "fenced", &[]);
    let e = r.unwrap_err();
    assert!(e.contains("equivocation") && e.contains("i_stopped_the_old_validator=true"), "{e}");
    assert!(files_under(&target).is_empty());
    // The chain database alone needs no fence.
    let (target, r) = restore(&t, &id, "database-only", &["database_only=true"]);
    r.unwrap();
    let got = files_under(&target);
    assert!(
        got.iter().all(|f| f.starts_with(&format!("chains/{CHAIN}/db/full/")) || f == "chain-spec.json"),
        "{got:?}"
    );
    assert_eq!(std::fs::read(target.join("chain-spec.json")).unwrap(), std::fs::read(&spec).unwrap());
    assert_eq!(scans(&target.join(format!("chains/{CHAIN}/db/full"))), before);
    // The keys alone, with the operator's word.
    let (target, r) = restore(&t, &id, "keys-only", &["keystore_only=true", "i_stopped_the_old_validator=true"]);
    r.unwrap();
    let got = files_under(&target);
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.iter().all(|f| f.contains("/keystore/") || f.ends_with("network/secret_ed25519")), "{got:?}");
    // Everything: the keys byte for byte with their modes, the database
    // as RocksDB reads it.
    let (target, r) = restore(&t, &id, "all", &["i_stopped_the_old_validator=true"]);
    r.unwrap();
    for f in files_under(&chain.join("keystore")) {
        let (a, b) = (chain.join("keystore").join(&f), target.join(format!("chains/{CHAIN}/keystore/{f}")));
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{f}");
        let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode(&b) & 0o777, 0o600, "{f}");
    }
    assert_eq!(scans(&target.join(format!("chains/{CHAIN}/db/full"))), before);
    // LOCK and the info logs are not part of the database.
    assert!(!target.join(format!("chains/{CHAIN}/db/full/LOCK")).exists());
}

/// Kills the writer when the test ends, however it ends.
struct Writer {
    child: Child,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// `ldb load` into column family `col1`, fed `k<N> ==> live<N>...` in
    /// key order from `from` on, until stopped.
    fn start(db: &Path, from: usize) -> Writer {
        let mut args: Vec<&str> = SMALL.to_vec();
        args.extend(["--column_family=col1", "load"]);
        let mut child = ldb_cmd(db).args(&args).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(from));
        let (s, w) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let mut i = from;
            while !s.load(Ordering::SeqCst) && i < 999_999 {
                let chunk = lines(i, i + 200, "live");
                if input.write_all(chunk.as_bytes()).and_then(|_| input.flush()).is_err() {
                    break;
                }
                i += 200;
                w.store(i, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        Writer { child, stop, written, thread: Some(thread) }
    }

    /// Stops feeding and lets `ldb` finish and close the database.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        assert!(self.child.wait().unwrap().success());
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys and values of an `ldb scan`.
fn pairs(scan: &str) -> Vec<(String, String)> {
    scan.lines().filter_map(|l| l.split_once(" : ")).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_running_node_is_refused_unless_allow_live_which_copies_a_consistent_state() {
    let t = TestRepo::new();
    let base = t.dir.path().join("node");
    let chain = base.join("chains").join(CHAIN);
    let db = chain.join("db/full");
    write_rocksdb(&db);
    let stable = [scans(&db).remove("default").unwrap(), scans(&db).remove("col2").unwrap()];
    // col1 starts over with keys written in order while the backups run:
    // a consistent copy holds exactly a prefix of them.
    ldb(&db, &["--column_family=col1", "deleterange", "k", "l"], None);
    let writer = Writer::start(&db, 0);
    while writer.written.load(Ordering::SeqCst) < 4000 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let set = format!("base_path={}", base.display());
    let e = backup(&t, std::slice::from_ref(&set)).unwrap_err();
    assert!(e.contains("LOCK is locked by another process") && e.contains("allow_live=true"), "{e}");
    let (id, said) = backup(&t, &[set.clone(), "allow_live=true".into()]).unwrap();
    assert!(said.contains("allow_live=true: copying"), "{said}");
    let written = writer.finish();
    assert!(written > 4000);
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(0), "{report}");
    let (target, r) = restore(&t, &id, "live", &["database_only=true"]);
    r.unwrap();
    let restored = target.join(format!("chains/{CHAIN}/db/full"));
    let got = scans(&restored);
    assert_eq!([got["default"].clone(), got["col2"].clone()], stable);
    let col1 = pairs(&got["col1"]);
    assert!(col1.len() >= 1000, "only {} keys of col1 restored", col1.len());
    for (i, (k, v)) in col1.iter().enumerate() {
        assert_eq!((k.as_str(), v.as_str()), (format!("k{i:06}").as_str(), value("live", i).as_str()), "key {i}");
    }
    // The database itself, closed, has every key written.
    assert_eq!(pairs(&scans(&db)["col1"]).len(), written);
}

#[test]
fn a_missing_table_and_a_flipped_byte_are_reported_by_file() {
    let t = TestRepo::new();
    let base = t.dir.path().join("node");
    let chain = base.join("chains").join(CHAIN);
    let db = chain.join("db/full");
    write_rocksdb(&db);
    let mut tables: Vec<String> = files_under(&db).into_iter().filter(|f| f.ends_with(".sst")).collect();
    tables.sort_by_key(|f| std::fs::metadata(db.join(f)).unwrap().len());
    let set = format!("base_path={}", base.display());
    // A byte flipped in the middle of the largest table (a data block):
    // the backup stores it as it is, verify names the file.
    let victim = tables.last().unwrap().clone();
    let mut bytes = std::fs::read(db.join(&victim)).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(db.join(&victim), &bytes).unwrap();
    let (id, _) = backup(&t, std::slice::from_ref(&set)).unwrap();
    let (code, report) = verify(&t, &id);
    assert_ne!(code, Some(0), "{report}");
    assert!(report.contains(&format!("db/full/{victim}")) && report.contains("checksum"), "{report}");
    // A live table gone: the backup refuses, naming it.
    let gone = tables[0].clone();
    std::fs::remove_file(db.join(&gone)).unwrap();
    let e = backup(&t, &[set]).unwrap_err();
    let number = gone.trim_end_matches(".sst");
    assert!(e.contains(&format!("table {number} is not in the directory")), "{e}");
}

#[test]
fn a_renamed_key_file_is_reported_and_no_secret_is_printed() {
    let t = TestRepo::new();
    let keystore = t.dir.path().join("keystore");
    std::fs::create_dir(&keystore).unwrap();
    key_file(&keystore, "babe", ALICE_SR25519, &format!("{DEV_PHRASE}//Alice"));
    key_file(&keystore, "gran", BOB_ED25519, &format!("{DEV_PHRASE}//Bob"));
    // Alice's secret under Bob's public key.
    let renamed = key_file(&keystore, "babe", BOB_SR25519, &format!("{DEV_PHRASE}//Alice"));
    let (id, said) = backup(&t, &[format!("keystore_dir={}", keystore.display())]).unwrap();
    assert!(said.contains(&renamed), "{said}");
    let (code, report) = verify(&t, &id);
    assert_ne!(code, Some(0), "{report}");
    assert!(report.contains(&renamed) && report.contains(&format!("0x{ALICE_SR25519}")), "{report}");
    assert!(report.contains("2 of 3 keys"), "{report}");
    for text in [&said, &report] {
        assert!(!text.contains("bottom") && !text.contains("Alice"), "{text}");
    }
    // A keystore backed up alone restores behind the fence too.
    let (_, r) = restore(&t, &id, "fenced", &[]);
    assert!(r.unwrap_err().contains("equivocation"));
    let (target, r) = restore(&t, &id, "keys", &["i_stopped_the_old_validator=true"]);
    r.unwrap();
    assert_eq!(files_under(&target), files_under(&keystore));
}

/// `tests/paritydb-tool`, built beside the test binary.
fn paritydb_tool() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("coffer-paritydb-tool");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p coffer-paritydb-tool` (`cargo xtask test` does it first)",
        bin.display()
    );
    bin
}

fn tool(args: &[&str]) -> String {
    let out = Command::new(paritydb_tool()).args(args).output().unwrap();
    assert!(out.status.success(), "paritydb tool {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// parity-db's own dump of a copy of `dir` (opening a database replays
/// and removes its logs, so the original is left alone).
fn dump(dir: &Path, keys: &str) -> String {
    let copy = tempfile::tempdir().unwrap();
    for f in files_under(dir) {
        std::fs::copy(dir.join(&f), copy.path().join(&f)).unwrap();
    }
    tool(&["dump", copy.path().to_str().unwrap(), "--keys", keys, "--seed", "7"])
}

#[test]
fn a_paritydb_node_backs_up_and_restores_as_parity_db_reads_it_and_an_open_one_is_refused() {
    let t = TestRepo::new();
    let base = t.dir.path().join("node");
    let db = base.join("chains").join(CHAIN).join("paritydb/full");
    std::fs::create_dir_all(&db).unwrap();
    let d = db.to_str().unwrap();
    tool(&["write", d, "--columns", "4", "--keys", "3000", "--seed", "7", "--btree-column", "2"]);
    tool(&["write", d, "--columns", "4", "--keys", "3000", "--seed", "7", "--btree-column", "2", "--update"]);
    let want = dump(&db, "3000");
    assert!(want.lines().count() > 3000, "{}", want.lines().count());
    // A validator's parachains database beside it.
    let para = base.join("chains").join(CHAIN).join("paritydb/parachains");
    std::fs::create_dir_all(&para).unwrap();
    tool(&["write", para.to_str().unwrap(), "--columns", "2", "--keys", "500", "--seed", "7"]);
    let want_para = dump(&para, "500");
    let set = format!("base_path={}", base.display());
    let (id, said) = backup(&t, std::slice::from_ref(&set)).unwrap();
    assert!(said.contains("ParityDB"), "{said}");
    assert_eq!(attributes(&t, &id)["substrate.database"], "paritydb");
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(0), "{report}");
    let (target, r) = restore(&t, &id, "restored", &[]);
    r.unwrap();
    assert_eq!(dump(&target.join(format!("chains/{CHAIN}/paritydb/full")), "3000"), want);
    assert_eq!(dump(&target.join(format!("chains/{CHAIN}/paritydb/parachains")), "500"), want_para);

    // Held open by a writer: refused, allow_live or not.
    let mut holder = Command::new(paritydb_tool())
        .args(["write", d, "--columns", "4", "--keys", "10", "--seed", "9", "--btree-column", "2", "--update"])
        .args(["--hold", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for extra in [None, Some("allow_live=true")] {
        let mut sets = vec![set.clone()];
        sets.extend(extra.map(String::from));
        let e = backup(&t, &sets).unwrap_err();
        assert!(e.contains("locked by another process") && e.contains("stop the node"), "{e}");
    }
    let _ = holder.kill();
    let _ = holder.wait();

    // A keystore moved to another disk and linked back: refused, named,
    // rather than left out.
    let elsewhere = t.dir.path().join("elsewhere-keystore");
    std::fs::create_dir(&elsewhere).unwrap();
    key_file(&elsewhere, "babe", ALICE_SR25519, &format!("{DEV_PHRASE}//Alice"));
    std::os::unix::fs::symlink(&elsewhere, base.join("chains").join(CHAIN).join("keystore")).unwrap();
    let e = backup(&t, &[set]).unwrap_err();
    assert!(e.contains(&format!("chains/{CHAIN}/keystore is a symlink")) && e.contains("bind-mount"), "{e}");
}
