//! The mongodb plugin over the wire protocol, against coffer's MongoDB
//! stand-in server (`tests/mongo-standin`, whose behaviour
//! `mongo_standin.rs` checks with pymongo): live backups with the oplog
//! written during the dump, verify, restores into a directory and into a
//! server, the oplog stream and restores to a point in time; and the bad
//! cases: a wrong password, a user who may not read a database, a server
//! that closes mid-cursor, a collection dropped during the dump, an oplog
//! that rolled past the follower, a 16 MiB document, and a server on the
//! port that is not MongoDB.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use coffer_mongo_standin::{Options, Standin, User};

use crate::support::{TestRepo, stderr};

const PASSWORD: &str = "b4ckup-pw";

/// A replica set of one member with a `backup` user (root) and a `reader`
/// who may read only the `shop` database.
fn replset(name: &str) -> Standin {
    Standin::start(Options {
        replset: Some(name.into()),
        users: vec![
            User::new("admin", "backup", PASSWORD, &[("root", "admin")]),
            User::new("admin", "reader", PASSWORD, &[("read", "shop"), ("clusterMonitor", "admin")]),
        ],
        compressors: vec!["snappy".into()],
        ..Options::default()
    })
    .expect("the stand-in starts")
}

fn url(s: &Standin, user: &str) -> String {
    format!("mongodb://{user}@127.0.0.1:{}/?replicaSet=rs0", s.port())
}

/// Writes the password file and returns `--set` arguments for `user`.
fn args(t: &TestRepo, s: &Standin, user: &str) -> Vec<String> {
    let pw = t.dir.path().join("mongo-password");
    std::fs::write(&pw, PASSWORD).unwrap();
    vec!["--set".into(), format!("url={}", url(s, user)), "--set".into(), format!("password_file={}", pw.display())]
}

fn coffer(t: &TestRepo, head: &[&str], rest: &[String]) -> std::process::Output {
    let mut a: Vec<&str> = head.to_vec();
    a.extend(rest.iter().map(String::as_str));
    t.coffer(&a)
}

fn ok_json(t: &TestRepo, head: &[&str], rest: &[String]) -> serde_json::Value {
    let mut a: Vec<&str> = vec!["--json"];
    a.extend_from_slice(head);
    a.extend(rest.iter().map(String::as_str));
    let out = t.coffer(&a);
    assert!(out.status.success(), "coffer {a:?} failed:\n{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Seeds `shop` and `crm` with documents of many BSON types over several
/// cursor batches, an index, a capped collection and a view.
fn seed(s: &Standin, client: &mut Mongo) {
    client.command("shop", doc! { "create": "log", "capped": true, "size": 1_048_576i64 });
    let orders: Vec<Document> = (0..2500)
        .map(|i| {
            doc! {
                "_id": i,
                "customer": format!("c{}", i % 97),
                "total": f64::from(i) * 1.25,
                "when": bson::DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
                "items": [{"sku": format!("s{}", i % 13), "qty": i % 5}],
                "big": i64::from(i) << 33,
                "flag": i % 2 == 0,
                "note": if i % 10 == 0 { Bson::Null } else { Bson::String("ok".into()) },
            }
        })
        .collect();
    s.insert("shop", "orders", orders).unwrap();
    client.command(
        "shop",
        doc! { "createIndexes": "orders", "indexes": [{"key": {"customer": 1}, "name": "customer_1"}] },
    );
    client.command("shop", doc! { "create": "recent", "viewOn": "orders", "pipeline": [{"$match": {"flag": true}}] });
    s.insert("shop", "log", (0..10).map(|i| doc! {"_id": i, "line": format!("started {i}")}).collect()).unwrap();
    s.insert("crm", "people", (0..300).map(|i| doc! {"_id": format!("p{i:04}"), "n": i}).collect()).unwrap();
}

/// A minimal OP_MSG client for the test's own commands (seeding, checks).
struct Mongo {
    s: std::net::TcpStream,
    id: i32,
}

impl Mongo {
    fn connect(port: u16, user: Option<&str>) -> Mongo {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut m = Mongo { s, id: 1 };
        if let Some(u) = user {
            m.login(u);
        }
        m
    }

    /// SCRAM-SHA-256 (RFC 7677), written out: the test's own client, apart
    /// from the plugin's. The stand-in's side is checked with pymongo.
    fn login(&mut self, user: &str) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let bin = |bytes: Vec<u8>| bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes };
        let first_bare = format!("n={user},r=coffertestnonce0123456789");
        let r = self.command(
            "admin",
            doc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bin(format!("n,,{first_bare}").into_bytes()), "options": {"skipEmptyExchange": true} },
        );
        let conv = r.get("conversationId").unwrap().clone();
        let server_first = String::from_utf8(r.get_binary_generic("payload").unwrap().clone()).unwrap();
        let part = |k: &str| {
            server_first
                .split(',')
                .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap()
                .to_string()
        };
        let salt = b64.decode(part("s")).unwrap();
        let salted = pbkdf2_sha256(PASSWORD.as_bytes(), &salt, part("i").parse().unwrap());
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored = {
            use sha2::Digest;
            sha2::Sha256::digest(&client_key).to_vec()
        };
        let without = format!("c=biws,r={}", part("r"));
        let auth = format!("{first_bare},{server_first},{without}");
        let sig = hmac_sha256(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let fin = format!("{without},p={}", b64.encode(proof));
        self.command("admin", doc! { "saslContinue": 1, "conversationId": conv, "payload": bin(fin.into_bytes()) });
    }

    fn try_command(&mut self, db: &str, mut cmd: Document) -> Document {
        cmd.insert("$db", db);
        let body = cmd.to_vec().unwrap();
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + 5 + body.len()) as i32).to_le_bytes());
        msg.extend_from_slice(&self.id.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&2013i32.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        msg.extend_from_slice(&body);
        self.id += 1;
        self.s.write_all(&msg).unwrap();
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        let len = i32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len - 16];
        self.s.read_exact(&mut rest).unwrap();
        assert_eq!(i32::from_le_bytes(h[12..16].try_into().unwrap()), 2013);
        Document::from_reader(&rest[5..]).unwrap()
    }

    fn command(&mut self, db: &str, cmd: Document) -> Document {
        let shown = format!("{cmd}");
        let r = self.try_command(db, cmd);
        assert!(r.get_f64("ok").map(|o| o == 1.0).unwrap_or(false) || r.get_i32("ok").ok() == Some(1), "{shown}: {r}");
        r
    }

    /// The newest oplog entry's ts.
    fn oplog_head(&mut self) -> bson::Timestamp {
        let r = self.command("local", doc! { "find": "oplog.rs", "sort": {"$natural": -1}, "limit": 1 });
        let batch = r.get_document("cursor").unwrap().get_array("firstBatch").unwrap();
        batch[0].as_document().unwrap().get_timestamp("ts").unwrap()
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn pbkdf2_sha256(pw: &[u8], salt: &[u8], iters: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(pw, &first);
    let mut out = u.clone();
    for _ in 1..iters {
        u = hmac_sha256(pw, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// The documents of every `.bson` file under `dir`, by relative path.
fn bson_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<Document>> {
    let mut out = std::collections::BTreeMap::new();
    for db in std::fs::read_dir(dir).unwrap().flatten() {
        if !db.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(db.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".bson") {
                let bytes = std::fs::read(f.path()).unwrap();
                let mut docs = Vec::new();
                let mut at = 0;
                while at < bytes.len() {
                    let len = i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                    docs.push(Document::from_reader(&bytes[at..at + len]).unwrap());
                    at += len;
                }
                out.insert(format!("{}/{stem}", db.file_name().to_string_lossy()), docs);
            }
        }
    }
    out
}

#[test]
fn live_backup_verify_and_restores_into_a_directory_and_a_server() {
    let src = replset("rs0");
    let mut m = Mongo::connect(src.port(), Some("backup"));
    seed(&src, &mut m);
    let t = TestRepo::new();
    let a = args(&t, &src, "backup");
    let b1 = ok_json(&t, &["backup", "mongodb"], &a);
    let id = b1["id"].as_str().unwrap().to_string();
    let snaps = t.json(&["snapshots"]);
    let attrs = &snaps[0]["attributes"];
    assert_eq!(snaps[0]["source"], format!("mongodb:rs0/127.0.0.1:{}", src.port()), "{}", snaps[0]);
    assert_eq!(attrs["mongodb.mode"], "live", "{attrs}");
    assert_eq!(attrs["mongodb.replica-set"], "rs0");
    assert_eq!(attrs["mongodb.consistent"], "true");
    assert_eq!(attrs["mongodb.docs.shop/orders"], "2500", "{attrs}");
    assert_eq!(attrs["mongodb.docs.shop/log"], "10");
    assert_eq!(attrs["mongodb.docs.crm/people"], "300");
    assert_eq!(attrs["mongodb.views"], "1");
    assert!(attrs["mongodb.server-version"].as_str().unwrap().starts_with('7'), "{attrs}");
    assert!(attrs.get("mongodb.oplog-first").is_some(), "{attrs}");

    let v = t.json(&["verify", &id]);
    assert_eq!(v["ok"], true, "{v}");
    // The stored config names the server: verify notes its counts beside
    // the backup's.
    assert!(v["notes"].to_string().contains("collections' document counts with 127.0.0.1"), "{v}");
    assert!(v["notes"].to_string().contains("all equal"), "{v}");

    // An unchanged server stores (nearly) nothing new.
    let b2 = ok_json(&t, &["backup", "mongodb"], &a);
    let added = b2["summary"]["added_bytes"].as_u64().or(b2["summary"]["new_bytes"].as_u64());
    if let Some(added) = added {
        assert!(added < 64 * 1024, "an unchanged re-backup added {added} bytes: {b2}");
    }

    // Into a directory: mongodump's layout, documents in _id order, equal
    // to the server's.
    let dir = t.dir.path().join("dump");
    t.ok(&["restore", &id, "--target", dir.to_str().unwrap()]);
    let files = bson_files(&dir);
    let mut want = src.documents("shop", "orders");
    want.sort_by_key(|d| d.get_i32("_id").unwrap());
    assert_eq!(files["shop/orders"], want);
    assert_eq!(files["crm/people"].len(), 300);
    assert!(dir.join("oplog.bson").is_file());
    // Users and roles come with the admin database.
    assert_eq!(files["admin/system.users"].len(), 2, "{:?}", files.keys());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shop/orders.metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["collectionName"], "orders");
    assert!(meta["indexes"].to_string().contains("customer_1"), "{meta}");
    let view: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shop/recent.metadata.json")).unwrap()).unwrap();
    assert_eq!(view["type"], "view");
    assert!(!dir.join("shop/recent.bson").exists());
    let capped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shop/log.metadata.json")).unwrap()).unwrap();
    assert_eq!(capped["options"]["capped"], true, "{capped}");

    // Into another server, renaming crm to crm_copy.
    let dst = replset("rs0");
    let mut d = dst_args(&t, &dst);
    d.extend(["--set".into(), "ns_from=crm.*".into(), "--set".into(), "ns_to=crm_copy.*".into()]);
    let out = coffer(&t, &["restore", &id], &d);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut got = dst.documents("shop", "orders");
    got.sort_by_key(|d| d.get_i32("_id").unwrap());
    assert_eq!(got, want);
    assert_eq!(dst.documents("crm_copy", "people").len(), 300);
    assert!(dst.documents("crm", "people").is_empty());
    let mut dm = Mongo::connect(dst.port(), Some("backup"));
    let idx = dm.command("shop", doc! { "listIndexes": "orders" });
    assert!(idx.to_string().contains("customer_1"), "{idx}");
    let colls = dm.command("shop", doc! { "listCollections": 1 });
    assert!(colls.to_string().contains("recent") && colls.to_string().contains("view"), "{colls}");

    // Through pymongo's own decoder: the source, the dump file and the
    // restored server hold the same bytes.
    let python = coffer_test_support::python_with_module("pymongo")
        .expect("no python3 can import pymongo: `cargo xtask deps` installs it (PyPI pymongo)");
    let cred = |s: &Standin| format!("mongodb://backup:{PASSWORD}@127.0.0.1:{}/", s.port());
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("it/pymongo_compare.py"))
        .args([cred(&src), cred(&dst), dir.to_str().unwrap().into(), "shop.orders".into(), "shop.log".into()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("2510 documents in 2 namespaces equal through pymongo"), "{said}");

    // Again without drop: every _id is there already and nothing changes;
    // with drop=true the collections are replaced.
    let out = coffer(&t, &["restore", &id], &dst_args(&t, &dst));
    assert!(out.status.success() && stderr(&out).contains("already there"), "{}", stderr(&out));
    dst.insert("shop", "orders", vec![doc! {"_id": 99_999, "stray": true}]).unwrap();
    let mut d = dst_args(&t, &dst);
    d.extend(["--set".into(), "drop=true".into()]);
    let out = coffer(&t, &["restore", &id], &d);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dst.documents("shop", "orders").len(), 2500);
}

fn dst_args(t: &TestRepo, dst: &Standin) -> Vec<String> {
    args(t, dst, "backup")
}

#[test]
fn bad_passwords_refused_databases_and_foreign_servers_are_clear_errors_and_leave_no_snapshot() {
    let src = replset("rs0");
    let mut m = Mongo::connect(src.port(), Some("backup"));
    seed(&src, &mut m);
    let t = TestRepo::new();
    let before = t.json(&["snapshots"]).as_array().unwrap().len();

    let bad = t.dir.path().join("bad-password");
    std::fs::write(&bad, "nope").unwrap();
    let out = t.coffer(&[
        "backup",
        "mongodb",
        "--set",
        &format!("url={}", url(&src, "backup")),
        "--set",
        &format!("password_file={}", bad.display()),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("authentication of backup"), "{err}");
    assert!(!err.contains("nope"), "the password was printed: {err}");

    // `reader` may read shop only. The oplog first: it says how to go on.
    let out = coffer(&t, &["backup", "mongodb"], &args(&t, &src, "reader"));
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("oplog=false"), "{err}");
    // A database it may not read is named.
    let mut a = args(&t, &src, "reader");
    a.extend(["--set".into(), "databases=shop,crm".into(), "--set".into(), "oplog=false".into()]);
    let out = coffer(&t, &["backup", "mongodb"], &a);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("of crm") && err.contains("exclude="), "{err}");
    // ... and with it left out the backup is taken.
    let mut a = args(&t, &src, "reader");
    a.extend(["--set".into(), "databases=shop".into(), "--set".into(), "oplog=false".into()]);
    let out = coffer(&t, &["backup", "mongodb"], &a);
    assert!(out.status.success(), "{}", stderr(&out));

    // A server that is not MongoDB: an HTTP server.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let http = std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let out = t.coffer(&["backup", "mongodb", "--set", &format!("url=mongodb://127.0.0.1:{port}/")]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("does not answer as a MongoDB server"), "{err}");
    http.join().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(t.json(&["snapshots"]).as_array().unwrap().len(), before + 1);
    t.ok(&["check"]);
}

#[test]
fn a_server_that_closes_mid_cursor_fails_the_backup_and_a_dropped_collection_is_noted() {
    let src = replset("rs0");
    let mut m = Mongo::connect(src.port(), Some("backup"));
    seed(&src, &mut m);
    let t = TestRepo::new();
    let a = args(&t, &src, "backup");

    src.faults().close_after_batches(1);
    let out = coffer(&t, &["backup", "mongodb"], &a);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("closed the connection") || err.contains("connection failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(t.json(&["snapshots"]).as_array().unwrap().is_empty());
    t.ok(&["check"]);
    src.faults().clear();

    // Dropped while read: the documents read before are kept, the drop is
    // in the oplog captured with the dump.
    src.faults().drop_collection_on_getmore("shop.orders");
    let out = coffer(&t, &["backup", "mongodb"], &a);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("shop.orders was dropped or renamed while it was read"), "{err}");
    let snaps = t.json(&["snapshots"]);
    assert_eq!(snaps[0]["attributes"]["mongodb.dropped-during-backup"], "shop.orders", "{snaps}");
}

#[test]
fn documents_of_16_mib_are_backed_up_and_restored() {
    let src = replset("rs0");
    let big = "x".repeat(16 * 1024 * 1024 - 64);
    src.insert("blob", "files", vec![doc! {"_id": 1, "data": big.clone()}, doc! {"_id": 2, "data": "small"}]).unwrap();
    let t = TestRepo::new();
    let b = ok_json(&t, &["backup", "mongodb"], &args(&t, &src, "backup"));
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(t.json(&["verify", &id])["ok"], true);
    let dst = replset("rs0");
    let out = coffer(&t, &["restore", &id], &args(&t, &dst, "backup"));
    assert!(out.status.success(), "{}", stderr(&out));
    let got = dst.documents("blob", "files");
    assert_eq!(got.len(), 2);
    assert!(got.iter().any(|d| d.get_str("data").is_ok_and(|s| s.len() == big.len())));
}

/// `coffer stream follow mongodb`, items cut each second.
fn follow(t: &TestRepo, a: &[String], log: &Path) -> Child {
    let mut c: Command = t.cmd();
    c.env("COFFER_LOG", "info")
        .args(["stream", "follow", "--plugin", "mongodb"])
        .args(a)
        .args(["--set", "item_max_seconds=1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c.spawn().expect("coffer runs")
}

fn stop(mut child: Child, log: &Path) {
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "follow exited {status}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// The position of the stream's newest item.
fn stream_end(t: &TestRepo) -> Option<u64> {
    let v = t.json(&["stream", "list", "--plugin", "mongodb", "oplog-rs0"]);
    v.as_array()?.iter().filter_map(|i| i["position"].as_u64()).max()
}

fn wait_for_stream(t: &TestRepo, ts: bson::Timestamp, log: &Path) {
    let want = (u64::from(ts.time) << 32) | u64::from(ts.increment);
    let start = Instant::now();
    while stream_end(t).is_none_or(|e| e < want) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the follower did not store {ts:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_oplog_stream_restores_to_a_point_in_time_and_a_fallen_off_oplog_is_named() {
    let src = replset("rs0");
    let mut m = Mongo::connect(src.port(), Some("backup"));
    seed(&src, &mut m);
    let t = TestRepo::new();
    let a = args(&t, &src, "backup");
    let log = t.dir.path().join("follow.log");
    let f = follow(&t, &a, &log);

    let b = ok_json(&t, &["backup", "mongodb"], &a);
    let id = b["id"].as_str().unwrap().to_string();
    // After the backup: 100 inserts, a mark, 50 more and an update.
    m.command("shop", doc! { "insert": "orders", "documents": (10_000..10_100).map(|i| doc! {"_id": i, "late": true}).collect::<Vec<_>>() });
    let mark = m.oplog_head();
    m.command("shop", doc! { "insert": "orders", "documents": (20_000..20_050).map(|i| doc! {"_id": i, "later": true}).collect::<Vec<_>>() });
    m.command("shop", doc! { "update": "orders", "updates": [{"q": {"_id": 1}, "u": {"$set": {"total": -1.0}}}] });
    let end = m.oplog_head();
    wait_for_stream(&t, end, &log);

    // To the mark: the first 100 only.
    let dst = replset("rs0");
    let mut d = args(&t, &dst, "backup");
    d.extend(["--set".into(), format!("to_ts={}:{}", mark.time, mark.increment)]);
    let out = coffer(&t, &["restore", &id], &d);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = dst.documents("shop", "orders");
    assert_eq!(got.len(), 2600, "restored to the mark");
    assert!(got.iter().all(|d| !d.contains_key("later")));
    // To the end: all of it, the update too.
    let dst2 = replset("rs0");
    let mut d = args(&t, &dst2, "backup");
    d.extend(["--set".into(), format!("to_ts={}:{}", end.time, end.increment)]);
    let out = coffer(&t, &["restore", &id], &d);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = dst2.documents("shop", "orders");
    assert_eq!(got.len(), 2650);
    assert!(got.iter().any(|d| d.get_i32("_id").ok() == Some(1) && d.get_f64("total").ok() == Some(-1.0)));
    // Past the stream's end: an error naming where it ends.
    let dst3 = replset("rs0");
    let mut d = args(&t, &dst3, "backup");
    d.extend(["--set".into(), format!("to_ts={}:0", end.time + 3600)]);
    let out = coffer(&t, &["restore", &id], &d);
    assert!(!out.status.success() && stderr(&out).contains("ends at"), "{}", stderr(&out));
    stop(f, &log);
    // Writes while no follower runs; a new follower resumes where the
    // last checkpoint is, without a gap.
    m.command("shop", doc! { "delete": "orders", "deletes": [{"q": {"_id": 2}, "limit": 1}] });
    m.command("shop", doc! { "insert": "orders", "documents": [{"_id": 30_000}] });
    let end2 = m.oplog_head();
    let log = t.dir.path().join("follow2.log");
    let f = follow(&t, &a, &log);
    wait_for_stream(&t, end2, &log);
    stop(f, &log);
    assert!(std::fs::read_to_string(&log).unwrap().contains("(resumed)"));
    let dst4 = replset("rs0");
    let mut d = args(&t, &dst4, "backup");
    d.extend(["--set".into(), format!("to_ts={}:{}", end2.time, end2.increment)]);
    let out = coffer(&t, &["restore", &id], &d);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = dst4.documents("shop", "orders");
    assert_eq!(got.len(), 2650, "one deleted, one inserted");
    assert!(got.iter().any(|d| d.get_i32("_id").ok() == Some(30_000)));
    assert!(!got.iter().any(|d| d.get_i32("_id").ok() == Some(2)));

    // An oplog that rolled past where the follower stopped.
    let small =
        Standin::start(Options { replset: Some("rs0".into()), oplog_max_entries: Some(50), ..Options::default() })
            .unwrap();
    let t2 = TestRepo::new();
    let a2 = vec!["--set".to_string(), format!("url=mongodb://127.0.0.1:{}/?replicaSet=rs0", small.port())];
    small.insert("a", "b", vec![doc! {"_id": 0}]).unwrap();
    let log2 = t2.dir.path().join("follow.log");
    let f2 = follow(&t2, &a2, &log2);
    let mut sm = Mongo::connect(small.port(), None);
    wait_for_stream(&t2, sm.oplog_head(), &log2);
    stop(f2, &log2);
    small.insert("a", "b", (1..200).map(|i| doc! {"_id": i}).collect()).unwrap();
    let out = coffer(&t2, &["stream", "follow", "--plugin", "mongodb"], &a2);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("new base backup"), "{err}");
}

#[test]
fn mongodb_srv_over_tls_with_scram_sha_1() {
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, SRV, TXT};
    let pki = crate::pki::Pki::new();
    // The SRV target's certificate, signed by the test CA.
    let (cert, key) = pki.ca.leaf("db1.coffer.test", &["db1.coffer.test"], true, false);
    std::fs::write(pki.path("db1.pem"), cert).unwrap();
    std::fs::write(pki.path("db1.key"), key).unwrap();
    let src = Standin::start(Options {
        replset: Some("rs0".into()),
        users: vec![User::new("admin", "backup", PASSWORD, &[("root", "admin")])],
        tls: Some((pki.path("db1.pem"), pki.path("db1.key"))),
        ..Options::default()
    })
    .unwrap();
    src.insert("shop", "orders", (0..500).map(|i| doc! {"_id": i, "n": i}).collect()).unwrap();
    let dns = crate::dns::DnsServer::start(vec![
        (
            "_mongodb._tcp.cluster0.coffer.test",
            RData::SRV(SRV::new(0, 5, src.port(), crate::dns::name("db1.coffer.test."))),
        ),
        ("cluster0.coffer.test", RData::TXT(TXT::new(vec!["replicaSet=rs0&authSource=admin".into()]))),
        ("db1.coffer.test", RData::A(A(std::net::Ipv4Addr::LOCALHOST))),
    ]);
    let t = TestRepo::new();
    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let run = |extra: &[String]| {
        let mut c = t.cmd();
        c.env("COFFER_RESOLV_CONF", &dns.resolv_conf).args(["--json", "backup", "mongodb"]);
        c.args(["--set", "url=mongodb+srv://backup@cluster0.coffer.test/?authMechanism=SCRAM-SHA-1"]);
        c.args(["--set", &format!("password_file={}", pw.display())]);
        c.args(extra);
        c.output().unwrap()
    };
    // +srv means TLS: without the CA the server is not trusted.
    let out = run(&[]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("not signed by a trusted CA"), "{err}");
    let out = run(&["--set".into(), format!("ca_file={}", pki.path_str("ca.pem"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = t.json(&["snapshots"]);
    assert_eq!(snaps[0]["attributes"]["mongodb.docs.shop/orders"], "500", "{snaps}");
    assert_eq!(snaps[0]["attributes"]["mongodb.replica-set"], "rs0", "{snaps}");
    // A wrong SCRAM-SHA-1 password is refused like a SHA-256 one.
    std::fs::write(&pw, "wrong").unwrap();
    let out = run(&["--set".into(), format!("ca_file={}", pki.path_str("ca.pem"))]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("SCRAM-SHA-1") && err.contains("failed"), "{err}");
}

#[test]
fn read_preference_secondary_backs_up_from_the_secondary_the_url_names() {
    // Two members of rs0: a primary and a secondary that names it.
    let ports = coffer_test_support::free_ports(2).unwrap();
    let (pp, sp) = (ports[0], ports[1]);
    let members = vec![format!("127.0.0.1:{pp}"), format!("127.0.0.1:{sp}")];
    let member = |port: u16, secondary_of: Option<String>| {
        Standin::start(Options {
            port,
            replset: Some("rs0".into()),
            users: vec![User::new("admin", "backup", PASSWORD, &[("root", "admin")])],
            secondary_of,
            members: members.clone(),
            ..Options::default()
        })
        .unwrap()
    };
    let primary = member(pp, None);
    let secondary = member(sp, Some(format!("127.0.0.1:{pp}")));
    for s in [&primary, &secondary] {
        s.insert("shop", "orders", (0..300).map(|i| doc! {"_id": i}).collect()).unwrap();
    }
    // The secondary alone differs, so the counts say who was read.
    secondary.insert("shop", "late", vec![doc! {"_id": 1}]).unwrap();
    let t = TestRepo::new();
    let pw = t.dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let backup = |url: String| {
        t.coffer(&[
            "--json",
            "backup",
            "mongodb",
            "--set",
            &format!("url={url}"),
            "--set",
            &format!("password_file={}", pw.display()),
        ])
    };
    let out =
        backup(format!("mongodb://backup@127.0.0.1:{pp},127.0.0.1:{sp}/?replicaSet=rs0&readPreference=secondary"));
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = t.json(&["snapshots"]);
    let attrs = &snaps[0]["attributes"];
    assert_eq!(attrs["mongodb.role"], "secondary", "{attrs}");
    assert_eq!(attrs["mongodb.member"], format!("127.0.0.1:{sp}"), "{attrs}");
    assert_eq!(attrs["mongodb.docs.shop/late"], "1", "{attrs}");
    // The default (primary) reads the primary.
    let out = backup(format!("mongodb://backup@127.0.0.1:{pp},127.0.0.1:{sp}/?replicaSet=rs0"));
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = t.json(&["snapshots"]);
    let newest = snaps.as_array().unwrap().iter().find(|s| s["attributes"]["mongodb.role"] == "primary").unwrap();
    assert_eq!(newest["attributes"]["mongodb.member"], format!("127.0.0.1:{pp}"));
    // A URL naming only the secondary, asking for the primary: the primary
    // is named, with what to add.
    let out = backup(format!("mongodb://backup@127.0.0.1:{sp}/?replicaSet=rs0"));
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains(&format!("127.0.0.1:{pp}")) && err.contains("add it"), "{err}");
    // directConnection=true to the secondary reads it without a read
    // preference in the URL.
    let out = backup(format!("mongodb://backup@127.0.0.1:{sp}/?directConnection=true"));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn users_and_roles_are_restored_only_when_asked_and_time_series_round_trip() {
    let src = replset("rs0");
    let mut m = Mongo::connect(src.port(), Some("backup"));
    m.command("metrics", doc! { "create": "temps", "timeseries": {"timeField": "ts", "metaField": "sensor"} });
    let readings: Vec<Document> = (0..50)
        .map(|i| doc! {"ts": bson::DateTime::from_millis(1_700_000_000_000 + i * 60_000), "sensor": i % 3, "c": 20.5})
        .collect();
    m.command("metrics", doc! { "insert": "temps", "documents": readings });
    let t = TestRepo::new();
    let b = ok_json(&t, &["backup", "mongodb"], &args(&t, &src, "backup"));
    let id = b["id"].as_str().unwrap().to_string();
    let dir = t.dir.path().join("dump");
    t.ok(&["restore", &id, "--target", dir.to_str().unwrap()]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics/temps.metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["type"], "timeseries", "{meta}");
    assert!(dir.join("metrics/system.buckets.temps.bson").is_file());

    // A server without users (no authentication): restored without them,
    // then with restore_users=true.
    let open = Standin::start(Options { replset: Some("rs0".into()), ..Options::default() }).unwrap();
    let url = format!("url=mongodb://127.0.0.1:{}/?replicaSet=rs0", open.port());
    let out = t.coffer(&["restore", &id, "--set", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(open.documents("admin", "system.users").is_empty());
    assert_eq!(
        open.documents("metrics", "system.buckets.temps").len(),
        src.documents("metrics", "system.buckets.temps").len()
    );
    let out = t.coffer(&["restore", &id, "--set", &url, "--set", "restore_users=true", "--set", "drop=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let users = open.documents("admin", "system.users");
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(users.iter().any(|u| u.get_str("user").ok() == Some("backup")));
}
