//! `cargo xtask bench mongodb`: the mongodb plugin's backup and restore
//! throughput over the wire protocol, in MB/s of BSON, against coffer's
//! MongoDB stand-in server (`tests/mongo-standin`; no `mongod` installs
//! here), in one run:
//!
//! - a plain reader and writer: this process reading every document with
//!   `find` and `getMore`, and inserting them into an empty stand-in in
//!   unordered batches, natively, storing nothing: what the stand-in
//!   itself serves and takes, the bound of any client here;
//! - backup: `coffer backup mongodb` (a replica set, so the oplog written
//!   during the dump is captured too) into a fresh local repository, plain
//!   and with snappy `OP_COMPRESSED`;
//! - an unchanged re-backup: what deduplication stores;
//! - restore: `coffer restore --set url=...` into an empty stand-in.
//!
//! The data set: `--docs N` documents (default 400,000, about 250 MB of
//! BSON) in four collections of two databases, each document with nested
//! fields, an array, dates and a 120-byte string. Each timing is the
//! median of `--runs` runs (default 3).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bson::{Document, doc};
use coffer_mongo_standin::{Options, Standin};

use crate::bench::{dir_size, median};

const PASSWORD: &str = "coffer bench password";

fn coffer(repo: &Path, args: &[&str]) -> Result<String> {
    crate::bench::run_coffer("bench-mongodb", PASSWORD, repo, args)
}

/// [`coffer`] under GNU time: its output, its CPU seconds (user and
/// system) and its peak RSS in MiB.
fn coffer_timed(repo: &Path, args: &[&str]) -> Result<(String, f64, f64)> {
    let t = crate::bench::run_coffer_timed("bench-mongodb", PASSWORD, repo, args)?;
    Ok((t.stdout, t.cpu, t.rss_mib))
}

fn server(snappy: bool) -> Result<Standin> {
    Ok(Standin::start(Options {
        replset: Some("rs0".into()),
        // The oplog of the load itself is not what is measured.
        oplog_max_entries: Some(10_000),
        compressors: if snappy { vec!["snappy".into()] } else { Vec::new() },
        ..Options::default()
    })?)
}

const NAMESPACES: [(&str, &str); 4] = [("shop", "orders"), ("shop", "customers"), ("crm", "events"), ("crm", "notes")];

/// Loads `docs` documents; returns their BSON bytes.
fn load(s: &Standin, docs: usize) -> Result<u64> {
    let per = docs / NAMESPACES.len();
    let mut bytes = 0u64;
    let filler = "coffer bench document filler text, the same in every document so that compression has work. ";
    for (n, (db, coll)) in NAMESPACES.iter().enumerate() {
        let mut batch = Vec::with_capacity(10_000);
        for i in 0..per {
            let d = doc! {
                "_id": (i as i64) * 7 + n as i64,
                "customer": {"id": (i % 9973) as i64, "name": format!("customer {}", i % 9973), "tier": (i % 4) as i32},
                "when": bson::DateTime::from_millis(1_700_000_000_000 + i as i64 * 1000),
                "items": [{"sku": format!("sku-{}", i % 101), "qty": (i % 7) as i32, "price": (i % 1000) as f64 / 10.0}],
                "note": &filler[..120.min(filler.len())],
                "seq": i as i64,
            };
            bytes += d.to_vec()?.len() as u64;
            batch.push(d);
            if batch.len() == 10_000 {
                s.insert(db, coll, std::mem::take(&mut batch)).map_err(anyhow::Error::msg)?;
            }
        }
        if !batch.is_empty() {
            s.insert(db, coll, batch).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(bytes)
}

/// A plain OP_MSG connection, for the bounds coffer is measured against.
struct Plain {
    s: TcpStream,
    id: i32,
}

impl Plain {
    fn connect(port: u16) -> Result<Plain> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(Plain { s, id: 1 })
    }

    /// Runs `cmd`, with a document sequence `documents` when given;
    /// returns the reply body's bytes.
    fn run(&mut self, db: &str, mut cmd: Document, documents: &[&[u8]]) -> Result<Vec<u8>> {
        cmd.insert("$db", db);
        let body = cmd.to_vec()?;
        let seq: usize = documents.iter().map(|d| d.len()).sum();
        let extra = if documents.is_empty() { 0 } else { 1 + 4 + "documents".len() + 1 + seq };
        let mut msg = Vec::with_capacity(body.len() + 21 + extra);
        msg.extend_from_slice(&((16 + 5 + body.len() + extra) as i32).to_le_bytes());
        msg.extend_from_slice(&self.id.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&2013i32.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        msg.extend_from_slice(&body);
        if !documents.is_empty() {
            msg.push(1);
            msg.extend_from_slice(&((4 + "documents".len() + 1 + seq) as i32).to_le_bytes());
            msg.extend_from_slice(b"documents\0");
            for d in documents {
                msg.extend_from_slice(d);
            }
        }
        self.id += 1;
        self.s.write_all(&msg)?;
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        let len = i32::from_le_bytes(h[..4].try_into()?) as usize;
        let mut rest = vec![0u8; len - 16];
        self.s.read_exact(&mut rest)?;
        Ok(rest.split_off(5))
    }
}

/// A plain native reader: every document of every namespace through
/// `find`/`getMore` (batches of 1000), decoded only as far as the batch
/// array. Returns the documents' bytes per namespace.
fn plain_read(port: u16) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut c = Plain::connect(port)?;
    let mut out = Vec::new();
    for (db, coll) in NAMESPACES {
        let mut docs = Vec::new();
        let mut reply = c.run(db, doc! { "find": coll, "filter": {}, "hint": {"_id": 1}, "batchSize": 1000 }, &[])?;
        loop {
            let r = bson::RawDocument::from_bytes(&reply)?;
            let cursor = r.get_document("cursor")?;
            let batch = cursor.get_array("firstBatch").or_else(|_| cursor.get_array("nextBatch"))?;
            for d in batch {
                if let Some(d) = d?.as_document() {
                    docs.push(d.as_bytes().to_vec());
                }
            }
            let cid = cursor.get_i64("id")?;
            if cid == 0 {
                break;
            }
            reply = c.run(db, doc! { "getMore": cid, "collection": coll, "batchSize": 1000 }, &[])?;
        }
        out.push(docs);
    }
    Ok(out)
}

/// A plain native writer: `docs` inserted into `port` in unordered batches
/// of 1000 documents, as coffer's restore sends them.
fn plain_insert(port: u16, docs: &[Vec<Vec<u8>>]) -> Result<()> {
    let mut c = Plain::connect(port)?;
    for ((db, coll), docs) in NAMESPACES.iter().zip(docs) {
        for batch in docs.chunks(1000) {
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let reply = c.run(db, doc! { "insert": *coll, "ordered": false }, &refs)?;
            let r = bson::RawDocument::from_bytes(&reply)?;
            if r.get_array("writeErrors").is_ok() {
                bail!("the plain writer's insert into {db}.{coll} failed");
            }
        }
    }
    Ok(())
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

pub fn run(args: &[String]) -> Result<()> {
    let arg = |name: &str, default: usize| -> Result<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).with_context(|| format!("{name} needs a number"))?.parse()?),
            None => Ok(default),
        }
    };
    let docs = arg("--docs", 400_000)?;
    let runs = arg("--runs", 3)?.max(1);
    crate::build_coffer()?;
    let work = crate::target_dir()?.join("bench-mongodb");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    eprintln!("loading {docs} documents into the stand-in ...");
    let src = server(false)?;
    let bson_bytes = load(&src, docs)?;
    let snappy_src = server(true)?;
    load(&snappy_src, docs)?;
    eprintln!("{docs} documents, {:.1} MB of BSON", bson_bytes as f64 / 1e6);

    let mut plain = Vec::new();
    let mut plain_write = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let read = plain_read(src.port())?;
        plain.push(t.elapsed().as_secs_f64());
        let n: u64 = read.iter().flatten().map(|d| d.len() as u64).sum();
        if n != bson_bytes {
            bail!("the plain reader read {n} bytes, {bson_bytes} were loaded");
        }
        let dst = server(false)?;
        let t = Instant::now();
        plain_insert(dst.port(), &read)?;
        plain_write.push(t.elapsed().as_secs_f64());
    }

    let url = |s: &Standin| format!("url=mongodb://127.0.0.1:{}/?replicaSet=rs0", s.port());
    // A first run compiles the plugin into coffer's module cache: not
    // what is measured.
    let warm = work.join("repo-warm");
    coffer(&warm, &["init", "--kdf-memory-mib", "8"])?;
    coffer(&warm, &["backup", "mongodb", "--set", &url(&src), "--set", "databases=crm"])?;
    let _ = std::fs::remove_dir_all(&warm);
    let mut backup = Vec::new();
    let mut backup_snappy = Vec::new();
    let mut rebackup = Vec::new();
    let mut restore = Vec::new();
    let (mut backup_cpu, mut backup_rss, mut restore_cpu, mut restore_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut repo_size = 0;
    let mut added = 0;
    for k in 0..runs {
        let repo = work.join(format!("repo{k}"));
        coffer(&repo, &["init", "--kdf-memory-mib", "8"])?;
        let t = Instant::now();
        let (said, cpu, rss) = coffer_timed(&repo, &["--json", "backup", "mongodb", "--set", &url(&src)])?;
        backup.push(t.elapsed().as_secs_f64());
        backup_cpu.push(cpu);
        backup_rss.push(rss);
        repo_size = dir_size(&repo);
        let id = said
            .split("\"id\"")
            .nth(1)
            .and_then(|r| r.split('"').nth(1))
            .context("no snapshot id in coffer's output")?
            .to_string();
        let t = Instant::now();
        coffer(&repo, &["backup", "mongodb", "--set", &url(&src)])?;
        rebackup.push(t.elapsed().as_secs_f64());
        added = dir_size(&repo) - repo_size;

        let repo2 = work.join(format!("repo-snappy{k}"));
        coffer(&repo2, &["init", "--kdf-memory-mib", "8"])?;
        let t = Instant::now();
        coffer(&repo2, &["backup", "mongodb", "--set", &url(&snappy_src)])?;
        backup_snappy.push(t.elapsed().as_secs_f64());

        let dst = server(false)?;
        let t = Instant::now();
        let (_, cpu, rss) = coffer_timed(&repo, &["restore", &id, "--set", &url(&dst)])?;
        restore.push(t.elapsed().as_secs_f64());
        restore_cpu.push(cpu);
        restore_rss.push(rss);
        let restored: usize = NAMESPACES.iter().map(|(d, c)| dst.documents(d, c).len()).sum();
        if restored != docs / NAMESPACES.len() * NAMESPACES.len() {
            bail!("the restore wrote {restored} documents");
        }
        let _ = std::fs::remove_dir_all(&repo2);
    }
    let (p, b, bs, rb, r) = (median(plain), median(backup), median(backup_snappy), median(rebackup), median(restore));
    let pw = median(plain_write);
    println!();
    println!("mongodb: {docs} documents, {:.1} MB of BSON, median of {runs} runs", bson_bytes as f64 / 1e6);
    println!("| step | time | MB/s of BSON |");
    println!("|---|---:|---:|");
    println!("| plain native find/getMore reader (the stand-in's bound) | {p:.2} s | {:.0} |", mb_s(bson_bytes, p));
    println!("| `coffer backup mongodb` (with the oplog capture) | {b:.2} s | {:.0} |", mb_s(bson_bytes, b));
    println!("| the same, snappy OP_COMPRESSED | {bs:.2} s | {:.0} |", mb_s(bson_bytes, bs));
    println!("| unchanged re-backup | {rb:.2} s | {:.0} (stored {:.1} MB) |", mb_s(bson_bytes, rb), added as f64 / 1e6);
    println!(
        "| plain native insert, unordered batches of 1000 (the stand-in's bound) | {pw:.2} s | {:.0} |",
        mb_s(bson_bytes, pw)
    );
    println!("| `coffer restore --set url=...` into an empty server | {r:.2} s | {:.0} |", mb_s(bson_bytes, r));
    let (bc, br, rc, rr) = (median(backup_cpu), median(backup_rss), median(restore_cpu), median(restore_rss));
    println!(
        "coffer's own cost: backup {bc:.2} CPU s ({:.0} MB of BSON per CPU second), peak RSS {br:.0} MiB; \
         restore {rc:.2} CPU s ({:.0} MB/CPU s), peak RSS {rr:.0} MiB",
        mb_s(bson_bytes, bc),
        mb_s(bson_bytes, rc)
    );
    println!("repository after the first backup: {:.1} MB", repo_size as f64 / 1e6);
    Ok(())
}
