//! `cargo xtask bench redis`: the redis plugin against Redis's own tools on
//! one data set of 1,000,000 keys of mixed types (`--keys N` for another
//! size), in one run:
//!
//! - backup: `coffer backup redis` (RDB over the replication protocol into
//!   a fresh local repository) against `redis-cli --rdb FILE`;
//! - the same backup over TLS (`rediss://`, a certificate made here with
//!   `openssl`, checked by coffer's host against the CA given as
//!   `ca_file`): what TLS costs;
//! - an unchanged re-backup (what deduplication stores);
//! - live restore: `coffer restore --set url=...` into the emptied server
//!   (keys/s) against restarting redis-server on the RDB file.
//!
//! The server runs with `repl-diskless-sync-delay 0`: with the default of
//! 5 s, both tools wait that long before the first byte.
//! Each timing is the median of three runs. Needs Debian's redis-server
//! and redis-tools (installed if missing).

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{dir_size, median};
use coffer_test_support::free_port;

const PASSWORD: &str = "coffer bench password";

struct Server {
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a CA and a server certificate for `localhost` signed by it in
/// `dir` (`ca.pem`, `server.pem`, `server.key`), with openssl.
fn certificates(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").current_dir(dir).args(args).output().context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    // A P-256 key, unencrypted, for each certificate.
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"];
    let ca = ["ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=coffer bench CA"];
    run(&[&["req", "-x509"][..], &key, &ca].concat())?;
    let server = ["server.key", "-out", "server.csr", "-subj", "/CN=localhost"];
    run(&[&["req"][..], &key, &server].concat())?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])
}

/// Starts redis-server on `dir` and waits until it has loaded its data;
/// with `tls` (a directory from [`certificates`]), also on a TLS port.
fn start(dir: &Path, tls: Option<(&Path, u16)>) -> Result<(Server, Duration)> {
    let port = free_port()?;
    let t = Instant::now();
    let mut cmd = Command::new("redis-server");
    if let Some((certs, tls_port)) = tls {
        cmd.args(["--tls-port", &tls_port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(certs.join("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.join("ca.pem"));
    }
    let child = cmd
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
        // Diskless transfers start at once instead of waiting 5 s (the
        // default) for more replicas: both tools are timed on the transfer.
        .args(["--repl-diskless-sync-delay", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let s = Server { port, child };
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            c.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap_or(0);
            if buf[..n].starts_with(b"+PONG") {
                return Ok((s, t.elapsed()));
            }
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("redis-server on {} did not come up; see {}/redis.log", port, dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output()?;
    if !out.status.success() {
        bail!("redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn push(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
}

/// RESP commands for `keys` keys: 60% strings (integers, short text, 100
/// bytes), 10% hashes, 10% lists, 8% sets, 8% sorted sets, 4% strings with
/// a TTL, and a few large collections.
fn dataset(keys: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys * 80);
    let pad = "x".repeat(90);
    for i in 0..keys {
        let k = format!("key:{i:08}");
        match i % 50 {
            0..=9 => push(&mut out, &["SET", &k, &i.to_string()]),
            10..=19 => push(&mut out, &["SET", &k, &format!("value-{i}")]),
            20..=29 => push(&mut out, &["SET", &k, &format!("{pad}{i:010}")]),
            30..=34 => push(
                &mut out,
                &["HSET", &k, "name", &format!("user{i}"), "age", "42", "city", "Lyon", "n", &i.to_string()],
            ),
            35..=39 => push(&mut out, &["RPUSH", &k, "a", "b", "c", &i.to_string()]),
            40..=43 => push(&mut out, &["SADD", &k, "1", "2", "3", &i.to_string()]),
            44..=47 => push(&mut out, &["ZADD", &k, "1", "a", "2", "b", &i.to_string(), "c"]),
            _ => push(&mut out, &["SET", &k, "expiring", "EX", "86400"]),
        }
    }
    for j in 0..20 {
        let k = format!("big:{j}");
        for chunk in 0..20 {
            let mut args: Vec<String> = vec!["HSET".into(), k.clone()];
            for f in 0..500 {
                args.push(format!("f{chunk}-{f}"));
                args.push(format!("v{f}"));
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            push(&mut out, &a);
        }
    }
    out
}

fn coffer(repo: &Path, args: &[&str]) -> Result<String> {
    crate::bench::run_coffer("bench-redis", PASSWORD, repo, args)
}

/// The number after `"key":` in JSON text (xtask has no JSON parser).
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

fn dbsize(port: u16) -> Result<u64> {
    let info = cli(port, &["INFO", "keyspace"])?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(":keys=").and_then(|(_, r)| r.split(',').next()?.parse::<u64>().ok()))
        .sum())
}

pub fn run(args: &[String]) -> Result<()> {
    let keys: usize = match args.iter().position(|a| a == "--keys") {
        Some(i) => args.get(i + 1).context("--keys needs a number")?.parse()?,
        None => 1_000_000,
    };
    crate::deps::ensure_debian_packages(&["redis-server", "redis-tools"])?;
    crate::build_coffer()?;
    let work = crate::target_dir()?.join("bench-redis");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("server"))?;
    let certs = work.join("certs");
    std::fs::create_dir_all(&certs)?;
    certificates(&certs)?;
    let tls_port = free_port()?;
    let (server, _) = start(&work.join("server"), Some((&certs, tls_port)))?;
    let port = server.port;
    let url = format!("url=redis://127.0.0.1:{port}/");
    let tls_url = format!("url=rediss://localhost:{tls_port}/");
    let ca = format!("ca_file={}", certs.join("ca.pem").display());

    eprintln!("loading {keys} keys ...");
    let data = dataset(keys);
    let mut pipe = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    pipe.stdin.take().expect("piped").write_all(&data)?;
    let mut said = String::new();
    BufReader::new(pipe.stdout.take().expect("piped")).read_to_string(&mut said)?;
    if !pipe.wait()?.success() || !said.contains("errors: 0") {
        bail!("loading the data set failed: {said}");
    }
    let loaded = dbsize(port)?;

    // redis-cli --rdb to a file.
    let mut cli_times = Vec::new();
    let rdb = work.join("cli.rdb");
    for _ in 0..3 {
        let _ = std::fs::remove_file(&rdb);
        let t = Instant::now();
        cli(port, &["--rdb", rdb.to_str().expect("utf-8")])?;
        cli_times.push(t.elapsed().as_secs_f64());
    }
    let rdb_size = std::fs::metadata(&rdb)?.len();

    // coffer backup into a fresh repository each time.
    let mut coffer_times = Vec::new();
    let mut repo_size = 0;
    for k in 0..3 {
        let repo = work.join(format!("repo{k}"));
        coffer(&repo, &["init", "--kdf-memory-mib", "8"])?;
        let t = Instant::now();
        coffer(&repo, &["backup", "redis", "--set", &url])?;
        coffer_times.push(t.elapsed().as_secs_f64());
        repo_size = dir_size(&repo);
    }
    // The same over TLS.
    let mut tls_times = Vec::new();
    for k in 0..3 {
        let repo = work.join(format!("repo-tls{k}"));
        coffer(&repo, &["init", "--kdf-memory-mib", "8"])?;
        let t = Instant::now();
        coffer(&repo, &["backup", "redis", "--set", &tls_url, "--set", &ca])?;
        tls_times.push(t.elapsed().as_secs_f64());
    }
    let repo = work.join("repo0");
    let again = coffer(&repo, &["--json", "backup", "redis", "--set", &url])?;
    let new_bytes = json_u64(&again, "new_bytes").context("no new_bytes in the backup's JSON")?;

    // Live restore into the emptied server.
    let mut restore_times = Vec::new();
    for _ in 0..3 {
        cli(port, &["FLUSHALL"])?;
        let t = Instant::now();
        coffer(&repo, &["restore", "latest", "--set", &url])?;
        restore_times.push(t.elapsed().as_secs_f64());
        let n = dbsize(port)?;
        if n != loaded {
            bail!("live restore left {n} keys, {loaded} expected");
        }
    }
    drop(server);

    // Loading the RDB by restarting redis-server on it.
    let mut load_times = Vec::new();
    for k in 0..3 {
        let d = work.join(format!("load{k}"));
        std::fs::create_dir_all(&d)?;
        std::fs::copy(&rdb, d.join("dump.rdb"))?;
        let (s, took) = start(&d, None)?;
        if dbsize(s.port)? != loaded {
            bail!("redis-server loaded a different number of keys");
        }
        load_times.push(took.as_secs_f64());
    }

    let (c, b, r, l) = (median(coffer_times), median(cli_times), median(restore_times), median(load_times));
    let tl = median(tls_times);
    let mb = rdb_size as f64 / 1e6;
    println!("redis bench: {loaded} keys, RDB {mb:.1} MB (medians of 3)\n");
    println!("| measure | coffer | Redis tool | ratio |");
    println!("|---|---:|---:|---:|");
    println!("| backup (s) | {c:.2} | {b:.2} (`redis-cli --rdb`) | {:.2}x |", c / b);
    println!("| backup rate (MB/s of RDB) | {:.0} | {:.0} | |", mb / c, mb / b);
    println!("| backup over TLS (s) | {tl:.2} (`rediss://`, verified) | | {:.2}x plain |", tl / c);
    println!("| backup rate over TLS (MB/s of RDB) | {:.0} | | |", mb / tl);
    println!("| restore (s) | {r:.2} (live, RESTORE) | {l:.2} (restart on the RDB) | {:.2}x |", r / l);
    println!("| restore rate (keys/s) | {:.0} | {:.0} | |", loaded as f64 / r, loaded as f64 / l);
    println!("| repository after one backup (MB) | {:.1} | | |", repo_size as f64 / 1e6);
    println!("| unchanged re-backup: new data (MB) | {:.1} | | |", new_bytes as f64 / 1e6);
    Ok(())
}
