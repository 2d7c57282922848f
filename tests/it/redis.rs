//! The redis plugin against real Redis 7 servers (Debian's `redis-server`,
//! started on free loopback ports in temp dirs): RDB backups over the
//! replication protocol, live and file restores compared with `DEBUG
//! DIGEST`, AOF backups, verify, and bad input.
//!
//! A few failures no real server produces on demand (an RDB cut off or
//! damaged on the wire, an unknown RDB version, an old target version) are
//! played by [`FakeRedis`], which speaks real RESP and sends real RDB bytes
//! taken from a real server and then damaged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestRepo, stderr};

// ---------------------------------------------------------------------------
// A RESP client for the tests

/// A decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Ok(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    pub fn text(&self) -> String {
        match self {
            Value::Ok(s) | Value::Err(s) => s.clone(),
            Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Int(i) => i.to_string(),
            Value::Nil => String::new(),
            Value::Array(a) => a.iter().map(Value::text).collect::<Vec<_>>().join(","),
        }
    }
}

pub struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn read_value(r: &mut impl BufRead) -> std::io::Result<Value> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    Ok(match line[0] {
        b'+' => Value::Ok(body),
        b'-' => Value::Err(body),
        b':' => Value::Int(body.parse().unwrap()),
        b'$' => {
            let n: i64 = body.parse().unwrap();
            if n < 0 {
                Value::Nil
            } else {
                let mut b = vec![0; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Value::Bulk(b)
            }
        }
        b'*' => {
            let n: i64 = body.parse().unwrap();
            if n < 0 {
                Value::Nil
            } else {
                (0..n).map(|_| read_value(r)).collect::<std::io::Result<Vec<_>>>().map(Value::Array)?
            }
        }
        other => panic!("unexpected reply byte {other}"),
    })
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let w = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        let r = BufReader::new(w.try_clone().unwrap());
        Client { w, r }
    }

    pub fn cmd(&mut self, args: &[&[u8]]) -> Value {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.w.write_all(&out).unwrap();
        read_value(&mut self.r).unwrap()
    }

    /// Sends `args`, panicking on an error reply.
    pub fn ok(&mut self, args: &[&str]) -> Value {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        let v = self.cmd(&a);
        assert!(!matches!(v, Value::Err(_)), "{args:?}: {v:?}");
        v
    }

    /// Pipelines many commands; panics on any error reply.
    pub fn pipe(&mut self, cmds: &[Vec<Vec<u8>>]) {
        for chunk in cmds.chunks(1000) {
            let mut out = Vec::new();
            for c in chunk {
                let a: Vec<&[u8]> = c.iter().map(|x| x.as_slice()).collect();
                encode(&mut out, &a);
            }
            self.w.write_all(&out).unwrap();
            for c in chunk {
                let v = read_value(&mut self.r).unwrap();
                assert!(!matches!(v, Value::Err(_)), "{:?}: {v:?}", String::from_utf8_lossy(&c[0]));
            }
        }
    }

    /// `DEBUG DIGEST` of the whole dataset (every database, values, TTLs).
    pub fn digest(&mut self) -> String {
        self.ok(&["DEBUG", "DIGEST"]).text()
    }

    pub fn dbsize(&mut self, db: u32) -> i64 {
        self.ok(&["SELECT", &db.to_string()]);
        let n = match self.ok(&["DBSIZE"]) {
            Value::Int(n) => n,
            v => panic!("{v:?}"),
        };
        self.ok(&["SELECT", "0"]);
        n
    }
}

// ---------------------------------------------------------------------------
// Real servers

fn free_port() -> u16 {
    coffer_test_support::free_port().expect("a free port on 127.0.0.1")
}

fn redis_server_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/redis-server");
    assert!(p.exists(), "redis-server is missing: `cargo xtask deps` installs Debian's redis-server");
    p
}

/// A redis-server child in its own temp dir, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
    _tmp: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server with `extra` arguments (`--requirepass x`, ...).
    pub fn start(extra: &[&str]) -> RedisServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data directory.
    pub fn start_in(dir: &Path, extra: &[&str]) -> RedisServer {
        Self::start_at(dir, free_port(), extra)
    }

    /// Starts a server on an existing data directory and a given port (a
    /// restart).
    pub fn start_at(dir: &Path, port: u16, extra: &[&str]) -> RedisServer {
        let child = Command::new(redis_server_bin())
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir", dir.to_str().unwrap()])
            .args(["--save", "", "--daemonize", "no", "--enable-debug-command", "yes", "--logfile", "redis.log"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let s = RedisServer { port, dir: dir.to_path_buf(), child, _tmp: None };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                // Ready once it answers (LOADING while it reads its files).
                let _ = c.write_all(b"PING\r\n");
                let mut buf = [0u8; 64];
                if let Ok(n) = c.read(&mut buf)
                    && (buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
                {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not start; see {}/redis.log",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Data

fn b(s: impl AsRef<[u8]>) -> Vec<u8> {
    s.as_ref().to_vec()
}

fn c(args: &[&dyn AsRef<[u8]>]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_ref().to_vec()).collect()
}

/// Fills a server with every type and encoding Redis 7.0 writes: about
/// 100,000 keys over three databases, binary keys and values, TTLs,
/// compact and full encodings, plain quicklist nodes, LZF-compressible
/// strings, streams with consumer groups and pending entries, and a
/// function library.
pub fn populate(cl: &mut Client, scale: usize) {
    // Elements above 1000 bytes become plain quicklist nodes.
    cl.ok(&["DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000"]);
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let n = scale;
    for i in 0..n * 50 {
        // Integers (int encoding), short strings (embstr), longer ones (raw).
        let v = match i % 3 {
            0 => i.to_string(),
            1 => format!("value-{i}"),
            _ => format!("{:0>120}", i),
        };
        cmds.push(c(&[&"SET", &format!("str:{i}"), &v]));
    }
    for i in 0..n * 15 {
        cmds.push(c(&[&"SET", &format!("ttl:{i}"), &"soon", &"PXAT", &(4_000_000_000_000u64 + i as u64).to_string()]));
    }
    for i in 0..n {
        let key = [b"bin\x00key\xff".as_slice(), &(i as u32).to_le_bytes()].concat();
        let val: Vec<u8> = (0..64u32).map(|k| (k * 7 + i as u32) as u8).collect();
        cmds.push(vec![b("SET"), key, val]);
    }
    // LZF-compressible long strings and big random-ish ones.
    for i in 0..20 {
        cmds.push(c(&[&"SET", &format!("big:{i}"), &"abcdefgh".repeat(20_000 + i)]));
    }
    for i in 0..n * 2 {
        cmds.push(c(&[&"RPUSH", &format!("list:{i}"), &"a", &"b", &i.to_string()]));
        cmds.push(c(&[&"SADD", &format!("intset:{i}"), &"1", &"2", &(i + 3).to_string()]));
        cmds.push(c(&[&"SADD", &format!("set:{i}"), &"x", &"y", &format!("m{i}")]));
        cmds.push(c(&[&"ZADD", &format!("zset:{i}"), &"1.5", &"a", &"-2", &"b"]));
        cmds.push(c(&[&"HSET", &format!("hash:{i}"), &"f1", &"v1", &"f2", &i.to_string()]));
    }
    for i in 0..10 {
        let big_list = format!("biglist:{i}");
        for chunk in 0..10 {
            let mut cmd = c(&[&"RPUSH", &big_list]);
            cmd.extend((0..1000).map(|k| format!("item-{chunk}-{k}").into_bytes()));
            cmds.push(cmd);
        }
        // A plain node: one element above the packed threshold.
        cmds.push(c(&[&"RPUSH", &big_list, &"P".repeat(5000)]));
        let mut s = c(&[&"SADD", &format!("bigset:{i}")]);
        s.extend((0..1000).map(|k| format!("member-{k}").into_bytes()));
        cmds.push(s);
        let mut z = c(&[&"ZADD", &format!("bigzset:{i}")]);
        for k in 0..500 {
            z.push(format!("{}.25", k).into_bytes());
            z.push(format!("zm-{k}").into_bytes());
        }
        cmds.push(z);
        let mut h = c(&[&"HSET", &format!("bighash:{i}")]);
        for k in 0..1000 {
            h.push(format!("field-{k}").into_bytes());
            h.push(format!("value-{k}").into_bytes());
        }
        cmds.push(h);
        let mut is = c(&[&"SADD", &format!("bigintset:{i}")]);
        is.extend((0..2000).map(|k| (k * 1_000_003i64).to_string().into_bytes()));
        cmds.push(is);
    }
    for i in 0..50 {
        let key = format!("stream:{i}");
        for k in 0..100 {
            cmds.push(c(&[
                &"XADD",
                &key,
                &format!("{}-{}", 1_700_000_000_000u64 + k, i + 1),
                &"temp",
                &k.to_string(),
                &"site",
                &"a",
            ]));
        }
    }
    cl.pipe(&cmds);
    for i in 0..10 {
        let key = format!("stream:{i}");
        cl.ok(&["XGROUP", "CREATE", &key, "readers", "0"]);
        cl.ok(&["XGROUP", "CREATE", &key, "late", "$"]);
        cl.ok(&["XREADGROUP", "GROUP", "readers", "alice", "COUNT", "10", "STREAMS", &key, ">"]);
        cl.ok(&["XREADGROUP", "GROUP", "readers", "bob", "COUNT", "5", "STREAMS", &key, ">"]);
        cl.ok(&["XACK", &key, "readers", &format!("{}-{}", 1_700_000_000_000u64, i + 1)]);
        cl.ok(&["XDEL", &key, &format!("{}-{}", 1_700_000_000_050u64, i + 1)]);
    }
    // Other databases.
    cl.ok(&["SELECT", "1"]);
    let db1: Vec<Vec<Vec<u8>>> = (0..n * 20).map(|i| c(&[&"SET", &format!("db1:{i}"), &i.to_string()])).collect();
    cl.pipe(&db1);
    cl.ok(&["SELECT", "5"]);
    let db5: Vec<Vec<Vec<u8>>> = (0..n).map(|i| c(&[&"HSET", &format!("db5:{i}"), &"a", &"1", &"b", &"2"])).collect();
    cl.pipe(&db5);
    cl.ok(&["SELECT", "0"]);
    cl.ok(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=coffertest\nredis.register_function('echo1', function(keys, args) return args[1] end)",
    ]);
    // LRU idle times and LFU are recorded only under those policies; the
    // default (noeviction) records neither, so nothing to set here.
}

fn total_keys(cl: &mut Client) -> i64 {
    [0, 1, 5].iter().map(|db| cl.dbsize(*db)).sum()
}

/// `coffer backup redis` with `args`, expecting success; returns the JSON.
fn backup(t: &TestRepo, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["backup", "redis"];
    a.extend_from_slice(args);
    t.json(&a)
}

fn snapshot_count(t: &TestRepo) -> usize {
    t.json(&["snapshots"]).as_array().unwrap().len()
}

/// Fails unless `out` failed, mentioning `needle`, and the repository is
/// as it was (`before` snapshots, check clean).
fn assert_failed_clean(t: &TestRepo, out: &std::process::Output, needle: &str, before: usize) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected a failure mentioning {needle:?}, it succeeded");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot_count(t), before, "a failed backup left a snapshot");
    t.ok(&["check"]);
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn rdb_backup_then_live_and_file_restores_equal_the_original() {
    let src = RedisServer::start(&[]);
    let mut cl = src.client();
    populate(&mut cl, 1000);
    let keys = total_keys(&mut cl);
    assert!(keys >= 90_000, "populated {keys} keys");
    let digest = cl.digest();
    let functions = cl.ok(&["FUNCTION", "DUMP"]);

    let t = TestRepo::new();
    let b1 = backup(&t, &["--set", &format!("url={}", src.url())]);
    let id = b1["id"].as_str().unwrap().to_string();
    let snaps = t.json(&["snapshots"]);
    let attrs = &snaps[0]["attributes"];
    assert_eq!(attrs["redis.keys"], keys.to_string(), "{attrs}");
    assert_eq!(attrs["redis.rdb-version"], "10");
    assert_eq!(attrs["redis.keys.db5"], "1000");
    assert_eq!(attrs["redis.functions"], "1");
    assert!(attrs["redis.version"].as_str().unwrap().starts_with("7."), "{attrs}");
    assert_eq!(snaps[0]["source"], format!("redis:127.0.0.1:{}", src.port));

    // Verify parses every value deeply.
    let v = t.json(&["verify", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["notes"].to_string().contains("checksum valid"), "{v}");

    // A second backup is a snapshot of its own, as large as the first.
    let b2 = backup(&t, &["--set", &format!("url={}", src.url())]);
    assert_eq!(b2["summary"]["bytes"], b1["summary"]["bytes"]);
    assert_ne!(b2["id"], b1["id"]);

    // Live restore into the emptied server.
    cl.ok(&["FLUSHALL"]);
    cl.ok(&["FUNCTION", "FLUSH"]);
    t.ok(&["restore", &id, "--set", &format!("url={}", src.url())]);
    assert_eq!(cl.digest(), digest, "live restore differs");
    assert_eq!(total_keys(&mut cl), keys);
    assert_eq!(cl.ok(&["FUNCTION", "DUMP"]), functions);
    assert_eq!(cl.ok(&["FCALL", "echo1", "0", "hi"]).text(), "hi");

    // A server with data is not overwritten unless asked.
    let out = t.coffer(&["restore", &id, "--set", &format!("url={}", src.url())]);
    assert!(!out.status.success() && stderr(&out).contains("flush=true"), "{}", stderr(&out));
    cl.ok(&["SET", "extra", "1"]);
    cl.ok(&["DEL", "str:1"]);
    t.ok(&["restore", &id, "--set", &format!("url={}", src.url()), "--set", "flush=true"]);
    assert_eq!(cl.digest(), digest, "restore after flush differs");

    // File restore, loaded by a fresh server.
    let out_dir = t.dir.path().join("restored");
    t.ok(&["restore", &id, "--target", out_dir.to_str().unwrap()]);
    let rdb = out_dir.join("dump.rdb");
    let check = Command::new("redis-check-rdb").arg(&rdb).output().unwrap();
    assert!(check.status.success(), "redis-check-rdb: {}", String::from_utf8_lossy(&check.stdout));
    let loaded = RedisServer::start_in(&out_dir, &[]);
    let mut lc = loaded.client();
    assert_eq!(lc.digest(), digest, "file restore differs");
    assert_eq!(lc.ok(&["FUNCTION", "DUMP"]), functions);
}

#[test]
fn passwords_and_acl_users_from_files_and_the_environment() {
    let src = RedisServer::start(&["--requirepass", "s3cret-pw"]);
    let mut cl = src.client();
    cl.ok(&["AUTH", "s3cret-pw"]);
    cl.ok(&["SET", "k", "v"]);
    cl.ok(&["ACL", "SETUSER", "backup", "on", ">backup-pw", "+@all", "~*"]);
    cl.ok(&["ACL", "SETUSER", "nosync", "on", ">nosync-pw", "+@all", "-sync", "-psync", "~*"]);
    let t = TestRepo::new();
    let url = format!("url={}", src.url());
    let pw = t.dir.path().join("pw");

    // No password: named as the problem.
    let out = t.coffer(&["backup", "redis", "--set", &url]);
    assert_failed_clean(&t, &out, "requires a password", 0);
    // A wrong one.
    std::fs::write(&pw, "wrong\n").unwrap();
    let out = t.coffer(&["backup", "redis", "--set", &url, "--set", &format!("password_file={}", pw.display())]);
    assert_failed_clean(&t, &out, "wrong password", 0);
    // The right one from a file, then from the environment.
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    backup(&t, &["--set", &url, "--set", &format!("password_file={}", pw.display())]);
    let out = t
        .cmd()
        .env("COFFER_TEST_REDIS_PW", "s3cret-pw")
        .args(["backup", "redis", "--set", &url, "--set", "password_env=COFFER_TEST_REDIS_PW"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // An ACL user.
    std::fs::write(&pw, "backup-pw").unwrap();
    backup(&t, &["--set", &url, "--set", "user=backup", "--set", &format!("password_file={}", pw.display())]);
    // An ACL user who may not SYNC: the way out is named.
    std::fs::write(&pw, "nosync-pw").unwrap();
    let out = t.coffer(&[
        "backup",
        "redis",
        "--set",
        &url,
        "--set",
        "user=nosync",
        "--set",
        &format!("password_file={}", pw.display()),
    ]);
    assert_failed_clean(&t, &out, "mode=aof", 3);

    // The password is in neither the manifests nor the output.
    let snaps = t.ok(&["snapshots", "--json"]);
    assert!(!snaps.contains("s3cret-pw") && !snaps.contains("backup-pw"), "{snaps}");
    for entry in walk(Path::new(&t.url)) {
        let data = std::fs::read(&entry).unwrap();
        assert!(!data.windows(9).any(|w| w == b"s3cret-pw"), "{} holds the password", entry.display());
    }
    // Restore re-reads the password file named in the stored config.
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    cl.ok(&["FLUSHALL"]);
    let first = t.json(&["snapshots"])[0]["id"].as_str().unwrap().to_string();
    t.ok(&["restore", &first, "--set", &url]);
    assert_eq!(cl.ok(&["GET", "k"]).text(), "v");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn aof_directory_backup_and_restore() {
    let src = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut cl = src.client();
    populate(&mut cl, 100);
    // A rewrite makes an RDB base; the writes after it go to an incr file.
    cl.ok(&["BGREWRITEAOF"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cl.ok(&["INFO", "persistence"]).text().contains("aof_rewrite_in_progress:1") {
        assert!(Instant::now() < deadline, "rewrite did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..500 {
        cl.ok(&["SET", &format!("after-rewrite:{i}"), &i.to_string()]);
    }
    cl.ok(&["DEL", "str:7"]);
    let digest = cl.digest();

    let t = TestRepo::new();
    let data_dir = src.dir.to_str().unwrap().to_string();
    backup(&t, &["--set", "mode=aof", "--set", &format!("data_dir={data_dir}")]);
    let snaps = t.json(&["snapshots"]);
    let attrs = &snaps[0]["attributes"];
    assert_eq!(attrs["redis.mode"], "aof");
    assert!(attrs["redis.aof.commands"].as_str().unwrap().parse::<u64>().unwrap() >= 501, "{attrs}");
    let ls = t.ok(&["ls", "latest"]);
    assert!(ls.contains("appendonlydir/appendonly.aof.manifest") && ls.contains(".base.rdb"), "{ls}");
    let v = t.json(&["verify", "latest"]);
    assert_eq!(v["ok"], true, "{v}");

    let out_dir = t.dir.path().join("aof-restore");
    t.ok(&["restore", "latest", "--target", out_dir.to_str().unwrap()]);
    let loaded = RedisServer::start_in(&out_dir, &["--appendonly", "yes"]);
    assert_eq!(loaded.client().digest(), digest, "AOF restore differs");

    // Live restore of an AOF snapshot is refused with the way to do it.
    let out = t.coffer(&["restore", "latest", "--set", &format!("url={}", src.url())]);
    assert!(!out.status.success() && stderr(&out).contains("--target"), "{}", stderr(&out));
    // A data dir without AOF is named.
    let empty = tempfile::tempdir().unwrap();
    let out =
        t.coffer(&["backup", "redis", "--set", "mode=aof", "--set", &format!("data_dir={}", empty.path().display())]);
    assert_failed_clean(&t, &out, "appendonly", 1);
}

/// A Redis stand-in for failures a real server will not produce on
/// demand: it answers the handshake like Redis 7 and then does `sync`.
struct FakeRedis {
    port: u16,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
enum SyncReply {
    /// `$len` and these bytes.
    Payload(Vec<u8>),
    /// `$len` announced, then only the first `n` bytes, then close.
    CutAfter(Vec<u8>, usize),
}

impl FakeRedis {
    fn start(version: &'static str, sync: SyncReply) -> FakeRedis {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            l.set_nonblocking(false).unwrap();
            let Ok((s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            while let Ok(Value::Array(args)) = read_value(&mut r) {
                let name = args[0].text().to_uppercase();
                let reply: Vec<u8> = match name.as_str() {
                    "PING" => b"+PONG\r\n".to_vec(),
                    "INFO" => {
                        let body = if args.get(1).is_some_and(|a| a.text() == "keyspace") {
                            "# Keyspace\r\n".to_string()
                        } else {
                            format!("# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n")
                        };
                        format!("${}\r\n{body}\r\n", body.len()).into_bytes()
                    }
                    "SYNC" | "PSYNC" => {
                        let (data, n) = match &sync {
                            SyncReply::Payload(d) => (d.clone(), d.len()),
                            SyncReply::CutAfter(d, n) => (d.clone(), *n),
                        };
                        if name == "PSYNC" {
                            let _ = w.write_all(b"+FULLRESYNC 0123456789abcdef0123456789abcdef01234567 0\r\n");
                        }
                        let _ = w.write_all(format!("\n\n${}\r\n", data.len()).as_bytes());
                        let _ = w.write_all(&data[..n]);
                        return;
                    }
                    _ => b"+OK\r\n".to_vec(),
                };
                if w.write_all(&reply).is_err() {
                    return;
                }
            }
        });
        FakeRedis { port, handle: Some(handle) }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        // Unblock an accept that never came.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A real RDB from a real server: a small listpack hash and a few strings,
/// saved with `rdbchecksum` as given.
fn real_rdb(checksum: bool) -> Vec<u8> {
    let s = RedisServer::start(&["--rdbchecksum", if checksum { "yes" } else { "no" }, "--rdbcompression", "no"]);
    let mut cl = s.client();
    cl.ok(&["HSET", "h", "fieldmarker", "valuemarker"]);
    for i in 0..50 {
        cl.ok(&["SET", &format!("k{i}"), &"v".repeat(i)]);
    }
    cl.ok(&["SAVE"]);
    std::fs::read(s.dir.join("dump.rdb")).unwrap()
}

#[test]
fn damaged_and_cut_transfers_are_refused_and_damage_in_the_repository_is_found() {
    let t = TestRepo::new();
    let good = real_rdb(true);

    // Cut off mid-transfer: the server went away.
    let fake = FakeRedis::start("7.0.15", SyncReply::CutAfter(good.clone(), good.len() / 2));
    let out = t.coffer(&["backup", "redis", "--set", &format!("url={}", fake.url())]);
    assert_failed_clean(&t, &out, "closed the connection", 0);
    drop(fake);

    // A flipped byte on the wire fails the CRC-64. It is flipped inside a
    // value's bytes: the server orders keys by a per-start hash seed, so a
    // fixed offset sometimes lands on a length, which the parser refuses
    // (as truncated) before the checksum is reached.
    let mut flipped = good.clone();
    let at = flipped.windows(11).position(|w| w == b"valuemarker").unwrap() + 5;
    flipped[at] ^= 0x01;
    let fake = FakeRedis::start("7.0.15", SyncReply::Payload(flipped));
    let out = t.coffer(&["backup", "redis", "--set", &format!("url={}", fake.url())]);
    assert_failed_clean(&t, &out, "CRC-64 mismatch", 0);
    drop(fake);

    // An RDB version from the future.
    let mut future = good.clone();
    future[5..9].copy_from_slice(b"0099");
    let fake = FakeRedis::start("9.9.9", SyncReply::Payload(future));
    let out = t.coffer(&["backup", "redis", "--set", &format!("url={}", fake.url())]);
    assert_failed_clean(&t, &out, "RDB version 99 is not supported", 0);
    drop(fake);

    // Damage the CRC cannot catch (checksums off on the server) inside a
    // listpack: the backup stores it; verify finds it, with its offset.
    let mut lp_damaged = real_rdb(false);
    let at = lp_damaged.windows(11).position(|w| w == b"valuemarker").unwrap() + 11 + 1;
    assert_eq!(lp_damaged[at], 0xff, "the listpack terminator");
    lp_damaged[at] = 0xfe;
    let fake = FakeRedis::start("7.0.15", SyncReply::Payload(lp_damaged));
    let made = backup(&t, &["--set", &format!("url={}", fake.url())]);
    drop(fake);
    let id = made["id"].as_str().unwrap();
    let out = t.coffer(&["verify", id]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("dump.rdb") && said.contains("at byte") && said.contains("hash listpack"), "{said}");

    // A target older than the snapshot's RDB version is refused.
    let fake = FakeRedis::start("6.2.14", SyncReply::Payload(Vec::new()));
    let out = t.coffer(&["restore", id, "--set", &format!("url={}", fake.url())]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("RDB version 10") && err.contains("6.2.14"), "{err}");
}

#[test]
fn unreachable_servers_ungranted_addresses_and_refused_sync() {
    let t = TestRepo::new();
    let closed = free_port();
    let out = t.coffer(&["backup", "redis", "--set", &format!("url=redis://127.0.0.1:{closed}/")]);
    assert_failed_clean(&t, &out, "cannot connect to Redis at 127.0.0.1", 0);

    let out = t.coffer(&["backup", "redis", "--set", "url=redis://cache.invalid:6379/"]);
    assert_failed_clean(&t, &out, "cache.invalid", 0);

    let out = t.coffer(&["backup", "redis"]);
    assert_failed_clean(&t, &out, "url", 0);

    let src = RedisServer::start(&["--rename-command", "SYNC", "", "--rename-command", "PSYNC", ""]);
    let out = t.coffer(&["backup", "redis", "--set", &format!("url={}", src.url())]);
    assert_failed_clean(&t, &out, "refused SYNC", 0);
    assert!(stderr(&out).contains("mode=aof"), "{}", stderr(&out));
}

/// `redis-server` arguments for a TLS port that requires client
/// certificates signed by the test CA.
fn tls_args(pki: &crate::pki::Pki, port: u16) -> Vec<String> {
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        pki.path_str("server.pem"),
        "--tls-key-file".into(),
        pki.path_str("server.key"),
        "--tls-ca-cert-file".into(),
        pki.path_str("ca.pem"),
        "--tls-auth-clients".into(),
        "yes".into(),
    ]
}

#[test]
fn rdb_backup_and_live_restore_over_tls_with_a_client_certificate() {
    let pki = crate::pki::Pki::new();
    let (src_tls, dst_tls) = (free_port(), free_port());
    let args: Vec<String> = tls_args(&pki, src_tls);
    let src = RedisServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut cl = src.client();
    populate(&mut cl, 100);
    let digest = cl.digest();
    let keys = total_keys(&mut cl);

    let t = TestRepo::new();
    let ca = format!("ca_file={}", pki.path_str("ca.pem"));
    let cert = format!("cert_file={}", pki.path_str("client.pem"));
    let key = format!("key_file={}", pki.path_str("client.key"));
    // The TLS port speaks nothing but TLS: a backup through it is one over
    // TLS, verified by name (the certificate names localhost).
    let url = format!("url=rediss://localhost:{src_tls}/");
    let b = backup(&t, &["--set", &url, "--set", &ca, "--set", &cert, "--set", &key]);
    let id = b["id"].as_str().unwrap().to_string();
    let snaps = t.json(&["snapshots"]);
    assert_eq!(snaps[0]["attributes"]["redis.keys"], keys.to_string());
    // The snapshot keeps the paths the operator typed, never a key.
    let manifest = snaps[0]["config"].to_string();
    assert!(manifest.contains("client.key") && !manifest.contains("PRIVATE KEY"), "{manifest}");

    // Without a client certificate the server refuses; without the CA the
    // server is unknown; both say what to give.
    let out = t.coffer(&["backup", "redis", "--set", &url, "--set", &ca]);
    assert_failed_clean(&t, &out, "client certificate", 1);
    let out = t.coffer(&["backup", "redis", "--set", &url, "--set", &cert, "--set", &key]);
    assert_failed_clean(&t, &out, "not signed by a trusted CA", 1);

    // A live restore into another TLS server.
    let args: Vec<String> = tls_args(&pki, dst_tls);
    let dst = RedisServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let to = format!("url=rediss://localhost:{dst_tls}/");
    t.ok(&["restore", &id, "--set", &to, "--set", &ca, "--set", &cert, "--set", &key]);
    assert_eq!(dst.client().digest(), digest, "the restore over TLS differs");
}
