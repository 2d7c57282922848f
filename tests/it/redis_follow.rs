//! The redis plugin's stream: `coffer stream follow --plugin redis` on a
//! real Redis 7 under a write load, stopped with SIGINT and SIGKILL, across
//! a server restart; restores to chosen replication offsets compared with
//! `DEBUG DIGEST` and a counter recorded at those offsets.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{Client, RedisServer, Value};
use crate::support::{TestRepo, stderr};

/// Servers hand out their RDB at once (no diskless delay).
const NO_DELAY: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// `coffer stream follow --plugin redis` on `url`, small items cut every
/// second, logging plugin messages into `log`.
fn follow(t: &TestRepo, url: &str, log: &Path) -> Child {
    let mut c: Command = t.cmd();
    c.env("COFFER_LOG", "info")
        .args(["stream", "follow", "--plugin", "redis", "--set", &format!("url={url}")])
        .args(["--set", "item_max_seconds=1", "--set", "item_max_bytes=65536"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c.spawn().expect("coffer runs")
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

/// Stops a follower with `sig` and expects a clean exit.
fn stop(mut child: Child, sig: &str, log: &Path) {
    signal(&child, sig);
    let status = child.wait().unwrap();
    assert!(status.success(), "follow exited {status}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// The redis plugin's streams: (name, items).
fn streams(t: &TestRepo) -> Vec<(String, u64)> {
    let v = t.json(&["stream", "list", "--plugin", "redis"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["stream"].as_str().unwrap().to_string(), r["items"].as_u64().unwrap()))
        .collect()
}

/// The items of a stream: (key, position).
fn items(t: &TestRepo, stream: &str) -> Vec<(String, u64)> {
    let v = t.json(&["stream", "list", "--plugin", "redis", stream]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| (i["key"].as_str().unwrap().to_string(), i["position"].as_u64().unwrap()))
        .collect()
}

/// Checks that a stream's command items follow each other without a gap
/// from its first RDB item on; returns (RDB items, command items, end).
fn contiguous(t: &TestRepo, stream: &str) -> (usize, usize, u64) {
    let got = items(t, stream);
    let (mut rdbs, mut cmds) = (0, 0);
    let mut end: Option<u64> = None;
    for (key, pos) in &got {
        let (kind, digits) = key.split_once('-').unwrap();
        let o: u64 = digits.parse().unwrap();
        match kind {
            "rdb" => {
                assert_eq!(o, *pos, "{key}");
                assert!(end.is_none_or(|e| o >= e), "an RDB before the end of the commands: {got:?}");
                rdbs += 1;
                end = Some(o);
            }
            "cmd" => {
                let e = end.expect("commands after an RDB");
                assert_eq!(o, e + 1, "a gap or an overlap before {key}: {got:?}");
                cmds += 1;
                end = Some(*pos);
            }
            _ => panic!("stray item {key}"),
        }
    }
    (rdbs, cmds, end.unwrap_or(0))
}

fn stream_of(replid: &str) -> String {
    format!("redis-{replid}")
}

fn info_field(cl: &mut Client, section: &str, field: &str) -> String {
    let text = cl.ok(&["INFO", section]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
        .trim()
        .to_string()
}

fn master_offset(cl: &mut Client) -> u64 {
    info_field(cl, "replication", "master_repl_offset").parse().unwrap()
}

/// Waits until the follower acknowledged storing everything this client
/// wrote (it acknowledges the offset it stored); returns how long it took.
fn wait_stored(cl: &mut Client) -> Duration {
    let start = Instant::now();
    let v = cl.ok(&["WAIT", "1", "20000"]);
    assert_eq!(v, Value::Int(1), "the follower did not acknowledge within 20 s");
    start.elapsed()
}

/// Waits until `stream` exists and holds at least `n` items.
fn wait_items(t: &TestRepo, stream: &str, n: usize, log: &Path) {
    let start = Instant::now();
    while items(t, stream).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{stream} holds fewer than {n} items after 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `SHUTDOWN SAVE`, waiting until the server closed the connection (it
/// saved and exited).
fn shutdown_save(port: u16) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"SHUTDOWN SAVE\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "SHUTDOWN SAVE answered {:?}", String::from_utf8_lossy(&rest));
}

/// Waits for the follower's first full resync; returns the master's
/// replication ID then and its stream. (A master without replicas takes a
/// new replication ID when the first one attaches.)
fn attached(t: &TestRepo, cl: &mut Client, log: &Path) -> (String, String) {
    let start = Instant::now();
    loop {
        let replid = info_field(cl, "replication", "master_replid");
        let stream = stream_of(&replid);
        if streams(t).iter().any(|(s, n)| *s == stream && *n > 0) {
            return (replid, stream);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no stream after 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One step of the write load: a counter whose value tells how far the
/// load got, strings, lists, hashes, another database, a transaction,
/// deletes and far-future TTLs. Pipelined, 40 commands.
fn load_step(cl: &mut Client, i: u64) {
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>();
    for k in 0..8 {
        let n = i * 8 + k;
        cmds.push(s(&["INCR", "counter"]));
        cmds.push(s(&["SET", &format!("k:{}", n % 997), &format!("v{n}")]));
        cmds.push(s(&["LPUSH", &format!("list:{}", n % 7), &n.to_string()]));
        cmds.push(s(&["HINCRBY", &format!("h:{}", n % 13), &format!("f{}", n % 5), "1"]));
        if n.is_multiple_of(5) {
            cmds.push(s(&["SET", &format!("ttl:{}", n % 101), "x", "PXAT", "4000000000000"]));
        } else {
            cmds.push(s(&["DEL", &format!("k:{}", (n * 7) % 997)]));
        }
    }
    cl.pipe(&cmds);
    if i.is_multiple_of(10) {
        cl.ok(&["SELECT", "1"]);
        cl.ok(&["SET", &format!("db1:{i}"), &i.to_string()]);
        cl.ok(&["SELECT", "0"]);
    }
    if i.is_multiple_of(7) {
        cl.ok(&["MULTI"]);
        cl.ok(&["INCRBY", "tx", "2"]);
        cl.ok(&["RPUSH", "txlist", &i.to_string()]);
        cl.ok(&["EXEC"]);
    }
}

/// The dataset at a recorded offset.
#[derive(Debug, Clone)]
struct Mark {
    offset: u64,
    digest: String,
    counter: String,
}

fn mark(cl: &mut Client) -> Mark {
    Mark { offset: master_offset(cl), digest: cl.digest(), counter: cl.ok(&["GET", "counter"]).text() }
}

/// Restores snapshot `id` to `to_offset` into a fresh directory and loads
/// it with a fresh server; returns (digest, counter).
fn restore_dir(t: &TestRepo, id: &str, to_offset: &str, name: &str) -> (String, String) {
    let dir = t.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let out = t.coffer(&["restore", id, "--target", dir.to_str().unwrap(), "--set", &format!("to_offset={to_offset}")]);
    assert!(out.status.success(), "restore to {to_offset}: {}", stderr(&out));
    let loaded = RedisServer::start_in(&dir, &["--appendonly", "yes"]);
    let mut cl = loaded.client();
    (cl.digest(), cl.ok(&["GET", "counter"]).text())
}

#[test]
fn a_followed_stream_restores_to_chosen_offsets_in_a_directory_and_live() {
    let src = RedisServer::start(&NO_DELAY);
    let mut cl = src.client();
    for i in 0..200 {
        cl.ok(&["SET", &format!("seed:{i}"), &"s".repeat(i)]);
    }
    let t = TestRepo::new();
    let log = t.dir.path().join("follow.log");
    let started = Instant::now();
    let f = follow(&t, &src.url(), &log);
    let (replid, stream) = attached(&t, &mut cl, &log);

    // Before the backup: only the follower's own RDB can carry a restore here.
    load_step(&mut cl, 0);
    let early = mark(&mut cl);
    let b = t.json(&["backup", "redis", "--set", &format!("url={}", src.url())]);
    let id = b["id"].as_str().unwrap().to_string();
    let snaps = t.json(&["snapshots"]);
    let snap_offset: u64 = snaps[0]["attributes"]["redis.repl-offset"].as_str().unwrap().parse().unwrap();
    assert_eq!(snaps[0]["attributes"]["redis.replid"], replid.as_str());
    assert!(snap_offset >= early.offset, "{snap_offset} < {}", early.offset);

    // The load, with the dataset recorded at a few offsets.
    let load_start = Instant::now();
    let mut marks = Vec::new();
    let mut i = 1;
    while load_start.elapsed() < Duration::from_secs(4) {
        load_step(&mut cl, i);
        if i.is_multiple_of(150) {
            marks.push(mark(&mut cl));
        }
        i += 1;
    }
    let load_time = load_start.elapsed();
    let last = mark(&mut cl);
    let lag = wait_stored(&mut cl);
    stop(f, "-INT", &log);
    let followed = started.elapsed();
    let (rdbs, cmds, end) = contiguous(&t, &stream);
    assert_eq!(rdbs, 1, "one full resync");
    assert!(end >= last.offset, "stored up to {end}, the master was at {}", last.offset);
    let bytes = end - snap_offset;
    eprintln!(
        "follow: {i} load steps in {load_time:.1?}, {} KiB of stream in {cmds} items ({:.1} items/s over {followed:.1?}, \
         {:.0} KiB/s of load); stored {lag:.2?} after the last write",
        bytes / 1024,
        cmds as f64 / followed.as_secs_f64(),
        bytes as f64 / 1024.0 / load_time.as_secs_f64()
    );
    assert!(marks.len() >= 3, "only {} marks", marks.len());

    // Each chosen offset gives exactly what the server had there.
    let chosen = [marks[0].clone(), marks[marks.len() / 2].clone(), last.clone()];
    for (k, m) in chosen.iter().enumerate() {
        let (digest, counter) = restore_dir(&t, &id, &m.offset.to_string(), &format!("at{k}"));
        assert_eq!((digest, counter), (m.digest.clone(), m.counter.clone()), "restore to offset {}", m.offset);
    }
    // An offset before the snapshot restores from the follower's RDB.
    let (digest, counter) = restore_dir(&t, &id, &early.offset.to_string(), "early");
    assert_eq!((digest, counter), (early.digest.clone(), early.counter.clone()), "restore to {}", early.offset);

    // Live: the RDB key by key, then the commands, into an empty server.
    let fresh = RedisServer::start(&[]);
    t.ok(&["restore", &id, "--set", &format!("url={}", fresh.url()), "--set", "to_offset=latest"]);
    let mut fc = fresh.client();
    assert_eq!((fc.digest(), fc.ok(&["GET", "counter"]).text()), (last.digest.clone(), last.counter.clone()));

    // Past the stream's end: refused, naming how far it goes.
    let out = t.coffer(&["restore", &id, "--target", "/nonexistent", "--set", &format!("to_offset={}", end + 1000)]);
    assert!(!out.status.success() && stderr(&out).contains(&format!("up to offset {end}")), "{}", stderr(&out));
    // Nonsense is named.
    let out = t.coffer(&["restore", &id, "--target", "/tmp", "--set", "to_offset=yesterday"]);
    assert!(!out.status.success() && stderr(&out).contains("to_offset"), "{}", stderr(&out));

    // Verify reads the stream the snapshot needs; check reads every item.
    let v = t.json(&["verify", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["notes"].to_string().contains(&format!("stream {stream}: {cmds} command items")), "{v}");
    let check = t.coffer(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn a_killed_follower_resumes_without_a_gap_and_a_restarted_server_is_followed_again() {
    let data = tempfile::tempdir().unwrap();
    let src = RedisServer::start_in(data.path(), &NO_DELAY);
    let port = src.port;
    let mut cl = src.client();
    let t = TestRepo::new();
    let log = t.dir.path().join("follow.log");

    let f = follow(&t, &src.url(), &log);
    let (replid, stream) = attached(&t, &mut cl, &log);
    for i in 0..100 {
        load_step(&mut cl, i);
    }
    wait_stored(&mut cl);
    // kill -9 mid-load: what was not stored is asked for again.
    for i in 100..150 {
        load_step(&mut cl, i);
    }
    signal(&f, "-KILL");
    let _ = { f }.wait();
    for i in 150..250 {
        load_step(&mut cl, i);
    }
    let log2 = t.dir.path().join("follow2.log");
    let f = follow(&t, &src.url(), &log2);
    wait_stored(&mut cl);
    let said = std::fs::read_to_string(&log2).unwrap();
    assert!(said.contains("partial resync"), "{said}");
    let (rdbs, _, end) = contiguous(&t, &stream);
    assert_eq!(rdbs, 1, "the resumed follower needed no full resync");
    assert!(end >= master_offset(&mut cl));

    // The server restarts (saving its data): a new replication ID, so a
    // new stream with a full resync; the follower rides it out.
    let before = cl.digest();
    shutdown_save(port);
    drop(src);
    let src = RedisServer::start_at(data.path(), port, &NO_DELAY);
    let mut cl = src.client();
    assert_eq!(cl.digest(), before);
    let replid2 = info_field(&mut cl, "replication", "master_replid");
    assert_ne!(replid2, replid);
    let stream2 = stream_of(&replid2);
    wait_items(&t, &stream2, 1, &log2);
    for i in 250..300 {
        load_step(&mut cl, i);
    }
    wait_stored(&mut cl);
    let final_state = mark(&mut cl);
    stop(f, "-TERM", &log2);
    let said = std::fs::read_to_string(&log2).unwrap();
    assert!(said.contains("retrying"), "{said}");
    let (rdbs, cmds, end) = contiguous(&t, &stream2);
    assert_eq!(rdbs, 1);
    assert!(cmds >= 1 && end >= final_state.offset, "{cmds} items up to {end}");
    let names: Vec<String> = streams(&t).into_iter().map(|(s, _)| s).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Stopped for longer than the master's backlog holds: a full resync
    // into the same stream, whose RDB bridges the commands it missed.
    for i in 300..1800 {
        load_step(&mut cl, i);
    }
    let f = follow(&t, &src.url(), &log2);
    wait_stored(&mut cl);
    stop(f, "-INT", &log2);
    let (rdbs, _, _) = contiguous(&t, &stream2);
    assert_eq!(rdbs, 2, "{}", std::fs::read_to_string(&log2).unwrap());

    // A backup after the restart restores to the newest offset.
    let b = t.json(&["backup", "redis", "--set", &format!("url={}", src.url())]);
    let id = b["id"].as_str().unwrap().to_string();
    let snap_offset: u64 =
        t.json(&["snapshots"])[0]["attributes"]["redis.repl-offset"].as_str().unwrap().parse().unwrap();
    for i in 1800..1820 {
        load_step(&mut cl, i);
    }
    let after = mark(&mut cl);
    let f = follow(&t, &src.url(), &log2);
    wait_stored(&mut cl);
    stop(f, "-INT", &log2);
    assert!(after.offset > snap_offset);
    let (digest, counter) = restore_dir(&t, &id, &after.offset.to_string(), "after-restart");
    assert_eq!((digest, counter), (after.digest, after.counter));
    let check = t.coffer(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", stderr(&check));
}
