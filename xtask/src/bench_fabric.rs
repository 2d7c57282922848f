//! `cargo xtask bench fabric`: the fabric plugin's throughput on a ledger
//! of `--mb N` MB of blocks (default 512), in one run:
//!
//! - a plain read of the block files (`cat` into `/dev/null` with a cold
//!   page cache where it can be dropped, else warm): the bound;
//! - backup: `coffer backup fabric` into a fresh local repository;
//! - an unchanged re-backup (nothing read), and one after the ledger grew
//!   by 5% (the last block file is read again);
//! - verify: the hash chain, data hashes and envelope checks of every
//!   block, through `coffer verify`;
//! - follow: `coffer stream follow` from block 0 until the stream holds
//!   the last block;
//! - restore of the first backup rolled forward to the newest block.
//!
//! The ledger: the real 2.x `sample_prod` ledger's genesis (config) block,
//! then blocks of 100 transactions of about 2.6 KB each (a channel header
//! naming the channel, a unique transaction id, half random and half
//! repetitive payload bytes, a 72-byte signature), chained as Fabric
//! chains them (previous hash = SHA-256 of the header's DER, data hash =
//! SHA-256 of the envelopes), in block files of at most 64 MiB as a peer
//! writes them. The blocks carry no orderer signatures (as ledgers written
//! by Fabric's test tools).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const PASSWORD: &str = "coffer bench password";
const CHANNEL: &str = "mychannel";
/// Fabric's default maximum block file size.
const MAX_FILE: u64 = 64 << 20;
const TX_PER_BLOCK: usize = 100;

fn coffer(repo: &Path, args: &[&str]) -> Result<String> {
    crate::bench::run_coffer("bench-fabric", PASSWORD, repo, args)
}

/// [`coffer`] under GNU time: (stdout, wall seconds, CPU seconds, peak
/// RSS in MiB).
fn timed(repo: &Path, args: &[&str]) -> Result<(String, f64, f64, f64)> {
    let t = crate::bench::run_coffer_timed("bench-fabric", PASSWORD, repo, args)?;
    Ok((t.stdout, t.wall, t.cpu, t.rss_mib))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn field(out: &mut Vec<u8>, tag: u64, bytes: &[u8]) {
    varint(out, tag << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `varint length, bytes` as block files store byte strings.
fn raw(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The DER of a block header: SEQUENCE { INTEGER number, OCTET STRING
/// previous hash, OCTET STRING data hash }.
fn header_der(number: u64, previous: &[u8], data: &[u8]) -> Vec<u8> {
    let mut int = number.to_be_bytes().to_vec();
    while int.len() > 1 && int[0] == 0 && int[1] & 0x80 == 0 {
        int.remove(0);
    }
    if int[0] & 0x80 != 0 {
        int.insert(0, 0);
    }
    let mut body = vec![0x02, int.len() as u8];
    body.extend(int);
    for h in [previous, data] {
        body.extend([0x04, h.len() as u8]);
        body.extend_from_slice(h);
    }
    let mut out = vec![0x30];
    if body.len() < 128 {
        out.push(body.len() as u8);
    } else {
        out.extend([0x81, body.len() as u8]);
    }
    out.extend(body);
    out
}

/// A xorshift generator: payload bytes that do not compress.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        for _ in 0..n.div_ceil(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            out.extend_from_slice(&self.0.to_le_bytes());
        }
        out.truncate(out.len() - (n.div_ceil(8) * 8 - n));
    }
}

/// One endorser transaction envelope naming the channel.
fn envelope(noise: &mut Noise, block: u64, i: usize) -> Vec<u8> {
    let mut ch = Vec::new();
    varint(&mut ch, 1 << 3);
    varint(&mut ch, 3); // type ENDORSER_TRANSACTION
    field(&mut ch, 4, CHANNEL.as_bytes());
    field(&mut ch, 5, format!("{block:016x}{i:048x}").as_bytes());
    let mut header = Vec::new();
    field(&mut header, 1, &ch);
    let mut creator = Vec::new();
    noise.fill(&mut creator, 24);
    field(&mut header, 2, &creator);
    let mut data = b"{\"chaincode\":\"basic\",\"fn\":\"TransferAsset\",\"args\":[".repeat(16);
    noise.fill(&mut data, 1600);
    let mut payload = Vec::new();
    field(&mut payload, 1, &header);
    field(&mut payload, 2, &data);
    let mut sig = vec![0x30, 0x44];
    noise.fill(&mut sig, 70);
    let mut env = Vec::new();
    field(&mut env, 1, &payload);
    field(&mut env, 2, &sig);
    env
}

/// The ledger being written: its block files and the chain's tip.
struct Ledger {
    dir: PathBuf,
    file: u64,
    size: u64,
    next: u64,
    previous: Vec<u8>,
    noise: Noise,
}

impl Ledger {
    /// A ledger holding the sample's genesis block.
    fn new(dir: &Path, genesis: &[u8]) -> Result<Ledger> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("blockfile_000000"), genesis)?;
        // The genesis record: its number, data hash and previous hash.
        let mut at = 0usize;
        let read_varint = |at: &mut usize| {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let b = genesis[*at];
                *at += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        };
        let len = read_varint(&mut at) as usize;
        if at + len != genesis.len() {
            bail!("the genesis file holds more than one block");
        }
        let number = read_varint(&mut at);
        let dh_len = read_varint(&mut at) as usize;
        let data_hash = genesis[at..at + dh_len].to_vec();
        at += dh_len;
        let ph_len = read_varint(&mut at) as usize;
        let previous = genesis[at..at + ph_len].to_vec();
        let header = header_der(number, &previous, &data_hash);
        Ok(Ledger {
            dir: dir.to_path_buf(),
            file: 0,
            size: genesis.len() as u64,
            next: number + 1,
            previous: Sha256::digest(&header).to_vec(),
            noise: Noise(0x9e37_79b9_7f4a_7c15),
        })
    }

    /// Appends blocks until `bytes` more are written.
    fn grow(&mut self, bytes: u64) -> Result<()> {
        let mut written = 0u64;
        while written < bytes {
            let envs: Vec<Vec<u8>> = (0..TX_PER_BLOCK).map(|i| envelope(&mut self.noise, self.next, i)).collect();
            let mut h = Sha256::new();
            for e in &envs {
                h.update(e);
            }
            let data_hash = h.finalize().to_vec();
            let mut rec = Vec::new();
            varint(&mut rec, self.next);
            raw(&mut rec, &data_hash);
            raw(&mut rec, &self.previous);
            varint(&mut rec, envs.len() as u64);
            for e in &envs {
                raw(&mut rec, e);
            }
            varint(&mut rec, 5);
            for _ in 0..5 {
                raw(&mut rec, &[]);
            }
            let mut record = Vec::new();
            raw(&mut record, &rec);
            if self.size + record.len() as u64 > MAX_FILE {
                self.file += 1;
                self.size = 0;
            }
            let path = self.dir.join(format!("blockfile_{:06}", self.file));
            std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(&record)?;
            self.size += record.len() as u64;
            written += record.len() as u64;
            self.previous = Sha256::digest(header_der(self.next, &self.previous, &data_hash)).to_vec();
            self.next += 1;
        }
        Ok(())
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// Drops the page cache when allowed (root), so reads come from disk.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

pub fn run(args: &[String]) -> Result<()> {
    let mb: u64 = match args.iter().position(|a| a == "--mb") {
        Some(i) => args.get(i + 1).context("--mb needs a number")?.parse().context("--mb")?,
        None => 512,
    };
    crate::deps::ensure_debian_packages(&["time"])?;
    crate::build_coffer()?;
    let target = crate::target_dir()?;
    let work = target.join("bench-fabric");
    let _ = std::fs::remove_dir_all(&work);
    let root = crate::workspace_root();
    let genesis_file =
        root.join("tests/fixtures/fabric/v2/sample_prod/ledgersData/chains/chains/mychannel/blockfile_000000");
    let sample = std::fs::read(&genesis_file).with_context(|| genesis_file.display().to_string())?;
    // The sample's first record: block 0, the channel's config block.
    let first_len = {
        let (mut v, mut shift, mut at) = (0usize, 0, 0usize);
        loop {
            let b = sample[at];
            at += 1;
            v |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break at + v;
            }
            shift += 7;
        }
    };
    let ledger_dir = work.join("ledgersData");
    let channel_dir = ledger_dir.join("chains/chains").join(CHANNEL);
    let mut ledger = Ledger::new(&channel_dir, &sample[..first_len])?;
    eprintln!("bench fabric: writing a {mb} MB ledger");
    ledger.grow(mb * 1_000_000)?;
    let bytes = crate::bench::dir_size(&ledger_dir);
    let blocks = ledger.next;
    let repo = work.join("repo");
    coffer(&repo, &["init"])?;
    let set = format!("ledger_dir={}", ledger_dir.display());

    let cold = drop_caches();
    let start = Instant::now();
    let status =
        Command::new("sh").arg("-c").arg(format!("cat {}/blockfile_* > /dev/null", channel_dir.display())).status()?;
    if !status.success() {
        bail!("cat failed");
    }
    let cat = start.elapsed().as_secs_f64();

    drop_caches();
    let (said, backup, backup_cpu, backup_rss) = timed(&repo, &["backup", "fabric", "--set", &set])?;
    let first = said
        .split_whitespace()
        .skip_while(|w| *w != "snapshot")
        .nth(1)
        .with_context(|| format!("no snapshot id in {said:?}"))?
        .to_string();
    let stored_full = crate::bench::dir_size(&repo);
    let (_, again, _, _) = timed(&repo, &["backup", "fabric", "--set", &set])?;
    let stored_again = crate::bench::dir_size(&repo) - stored_full;
    ledger.grow(bytes / 20)?;
    let grown = crate::bench::dir_size(&ledger_dir) - bytes;
    let before = crate::bench::dir_size(&repo);
    let (_, grow, _, _) = timed(&repo, &["backup", "fabric", "--set", &set])?;
    let stored_grow = crate::bench::dir_size(&repo) - before;

    let (_, verify, verify_cpu, verify_rss) = timed(&repo, &["verify", "latest"])?;

    // Follow from block 0 until the follower says it stored the newest
    // block (its own log: a `coffer stream list` per poll would derive the
    // key with Argon2id each time, on the cores being measured).
    let last = ledger.next - 1;
    let follow_log = work.join("follow.log");
    let start = Instant::now();
    let mut follower = Command::new(target.join("release/coffer"))
        .env("COFFER_REPO", &repo)
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", work.join("cache"))
        .env("COFFER_LOG", "debug")
        .args([
            "stream",
            "follow",
            "--plugin",
            "fabric",
            "--set",
            &set,
            "--set",
            "poll_ms=200",
            "--set",
            "item_max_seconds=1",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&follow_log)?)
        .spawn()?;
    let needle = format!("-{last} (");
    loop {
        let said = std::fs::read_to_string(&follow_log).unwrap_or_default();
        if said.lines().any(|l| l.contains("stored blocks-mychannel/") && l.contains(&needle)) {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            let _ = follower.kill();
            bail!("the follower did not reach block {last} in 30 minutes:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let follow = start.elapsed().as_secs_f64();
    let _ = Command::new("kill").args(["-INT", &follower.id().to_string()]).status();
    let _ = follower.wait();

    let target_dir = work.join("restored");
    std::fs::create_dir_all(&target_dir)?;
    let (_, restore, restore_cpu, restore_rss) = timed(
        &repo,
        &["restore", &first, "--target", target_dir.to_str().context("path")?, "--set", "to_height=latest"],
    )?;
    let restored = crate::bench::dir_size(&target_dir);
    let all = crate::bench::dir_size(&ledger_dir);
    if restored != all {
        bail!("the restore rolled forward holds {restored} bytes; the ledger {all}");
    }

    let mb_all = all as f64 / 1e6;
    println!();
    println!(
        "fabric bench: {blocks} blocks, {:.1} MB of block files ({TX_PER_BLOCK} transactions a block), then {} more \
         blocks ({:.1} MB)",
        bytes as f64 / 1e6,
        ledger.next - blocks,
        grown as f64 / 1e6
    );
    println!("| step | time | throughput | notes |");
    println!("|---|---:|---:|---|");
    println!(
        "| plain read (`cat` to /dev/null{}) | {cat:.2} s | {:.0} MB/s | the bound |",
        if cold { ", cold cache" } else { ", warm cache" },
        mbps(bytes, cat)
    );
    println!(
        "| backup | {backup:.2} s | {:.0} MB/s | {backup_cpu:.2} CPU s, {backup_rss:.0} MiB peak RSS, {:.1} MB stored |",
        mbps(bytes, backup),
        stored_full as f64 / 1e6
    );
    println!("| unchanged re-backup | {again:.2} s | | {:.2} MB stored |", stored_again as f64 / 1e6);
    println!(
        "| re-backup after {:.1} MB of new blocks | {grow:.2} s | | {:.1} MB stored |",
        grown as f64 / 1e6,
        stored_grow as f64 / 1e6
    );
    println!(
        "| verify (every block's chain, data hash, envelopes) | {verify:.2} s | {:.0} MB/s | {verify_cpu:.2} CPU s, \
         {verify_rss:.0} MiB peak RSS |",
        mbps(all, verify)
    );
    println!(
        "| stream follow from block 0 to the newest | {follow:.2} s | {:.0} MB/s | polls every 200 ms; the last item is cut after `item_max_seconds=1` |",
        mb_all / follow
    );
    println!(
        "| restore of the first backup rolled forward to the newest block | {restore:.2} s | {:.0} MB/s | \
         {restore_cpu:.2} CPU s, {restore_rss:.0} MiB peak RSS |",
        mbps(all, restore)
    );
    Ok(())
}
