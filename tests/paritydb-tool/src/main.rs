//! `coffer-paritydb-tool`: writes and dumps real ParityDB databases (the
//! chain database of a Substrate / Polkadot-SDK node started with
//! `--database paritydb`) for the substrate plugin's tests, with the
//! `parity-db` crate a node links.
//!
//! ```text
//! coffer-paritydb-tool write DIR --columns N --keys K [--seed S] [--btree-column I]
//!     [--update] [--hold SECONDS | --no-close]
//! coffer-paritydb-tool dump DIR [--keys K --seed S]
//! ```
//!
//! `write` creates (or, with `--update`, opens) the database and commits
//! deterministic key/values, the same for the same arguments. The column
//! options follow sc-client-db's (`substrate/client/db/src/parity_db.rs`):
//! column 1 is the state column, `ref_counted` + `preimage` + `uniform`
//! with LZ4 compression, its keys 32 pseudo-random bytes (as the hashes
//! Substrate uses); the others are plain hash-indexed columns, but for
//! `--btree-column I`, which is `btree_index` (as Polkadot's parachains
//! database has some).
//!
//! `dump` prints every column in a canonical order, in hex, so that a
//! restored copy can be compared byte for byte with the original's dump
//! (see `dump` below for what it can list of hash-indexed columns). It never
//! prints the salt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use parity_db::{ColumnOptions, CompressionType, Db, Operation, Options};

const USAGE: &str = "usage:
  coffer-paritydb-tool write DIR --columns N --keys K [--seed S] [--btree-column I] [--update]
      [--hold SECONDS | --no-close]
  coffer-paritydb-tool dump DIR [--keys K --seed S]";

/// sc-client-db's state column (`columns::STATE`).
const STATE_COLUMN: u8 = 1;
/// Commits `write` spreads its keys over (fewer when there are fewer keys).
const COMMITS: usize = 4;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-paritydb-tool: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The command line, parsed.
#[derive(Debug, Default)]
struct Args {
    command: String,
    dir: PathBuf,
    columns: Option<u8>,
    keys: Option<u64>,
    seed: u64,
    btree_column: Option<u8>,
    update: bool,
    hold: Option<u64>,
    no_close: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args { command: it.next().context(USAGE)?, ..Args::default() };
    a.dir = PathBuf::from(it.next().with_context(|| format!("no DIR\n{USAGE}"))?);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--columns" => a.columns = Some(value("--columns")?.parse().context("--columns")?),
            "--keys" => a.keys = Some(value("--keys")?.parse().context("--keys")?),
            "--seed" => a.seed = value("--seed")?.parse().context("--seed")?,
            "--btree-column" => a.btree_column = Some(value("--btree-column")?.parse().context("--btree-column")?),
            "--hold" => a.hold = Some(value("--hold")?.parse().context("--hold")?),
            "--update" => a.update = true,
            "--no-close" => a.no_close = true,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn run() -> Result<()> {
    let a = parse_args()?;
    match a.command.as_str() {
        "write" => write(&a),
        "dump" => {
            let out = std::io::stdout().lock();
            let mut out = std::io::BufWriter::new(out);
            dump(&a.dir, a.keys.map(|k| (k, a.seed)), &mut out)?;
            out.flush()?;
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}

// ---------------------------------------------------------------------------
// Deterministic data

/// SplitMix64: a small, well-mixed generator; the data depends only on
/// the seed, the column and the key number.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, col: u8, i: u64, salt: u64) -> Self {
        let mut s = SplitMix(seed ^ (u64::from(col) << 56) ^ salt.rotate_left(17));
        s.0 ^= s.next_u64().wrapping_add(i);
        SplitMix(s.next_u64())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// How a column is set up, by its number.
fn column_options(col: u8, btree_column: Option<u8>) -> ColumnOptions {
    if btree_column == Some(col) {
        return ColumnOptions { btree_index: true, ..ColumnOptions::default() };
    }
    if col == STATE_COLUMN {
        return ColumnOptions {
            ref_counted: true,
            preimage: true,
            uniform: true,
            compression: CompressionType::Lz4,
            ..ColumnOptions::default()
        };
    }
    ColumnOptions::default()
}

/// The key of item `i` of a column.
fn key(seed: u64, col: u8, i: u64, opts: &ColumnOptions) -> Vec<u8> {
    if opts.uniform {
        // 32 uniformly distributed bytes, as the hashes sc-client-db uses.
        SplitMix::new(seed, col, i, 1).bytes(32)
    } else if opts.btree_index {
        // Ordered keys: a prefix and the number, big-endian.
        let mut k = b"b".to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    } else {
        format!("key-{col}-{i:08}").into_bytes()
    }
}

/// The value of item `i` of a column, in generation `generation` (0 when
/// written, 1 after `--update`). Sizes cycle through small, medium,
/// compressible (above parity-db's 4 KiB compression threshold) and, now
/// and then, values larger than the biggest size tier (32,760 bytes), which
/// go to the multipart table `table_CC_ff`.
fn value(seed: u64, col: u8, i: u64, generation: u64) -> Vec<u8> {
    let mut r = SplitMix::new(seed, col, i, 2 + generation);
    let size = match i % 50 {
        7 => 40_000,
        n if n % 7 == 0 => 5_000,
        n if n % 5 == 0 => 600,
        n if n % 3 == 0 => 120,
        _ => 20,
    };
    if size == 5_000 {
        // Repetitive, so LZ4 shrinks it.
        let unit = r.bytes(16);
        unit.iter().copied().cycle().take(size).collect()
    } else {
        r.bytes(size)
    }
}

// ---------------------------------------------------------------------------
// write

/// Options for `dir` from its metadata, or `None` when there is none.
fn options_from_metadata(dir: &Path) -> Result<Option<Options>> {
    let Some(meta) = Options::load_metadata(dir).map_err(|e| anyhow::anyhow!("{e:?}"))? else {
        return Ok(None);
    };
    let mut opts = Options::with_columns(dir, meta.columns.len() as u8);
    opts.columns = meta.columns;
    Ok(Some(opts))
}

fn write(a: &Args) -> Result<()> {
    let n = a.columns.context("write needs --columns N")?;
    let k = a.keys.context("write needs --keys K")?;
    if n == 0 {
        bail!("--columns must be at least 1");
    }
    if a.btree_column.is_some_and(|b| b >= n) {
        bail!("--btree-column must be below --columns");
    }
    if a.hold.is_some() && a.no_close {
        bail!("--hold and --no-close do not go together");
    }
    let mut opts = if a.update {
        let o = options_from_metadata(&a.dir)?
            .with_context(|| format!("--update: {} has no ParityDB metadata", a.dir.display()))?;
        if o.columns.len() != usize::from(n) {
            bail!("--update: the database has {} columns, not {n}", o.columns.len());
        }
        o
    } else {
        let mut o = Options::with_columns(&a.dir, n);
        for (c, col) in o.columns.iter_mut().enumerate() {
            *col = column_options(c as u8, a.btree_column);
        }
        o
    };
    // A killed node: commits are written to the log files synchronously
    // (no background threads) so that what is on disk is the same each run.
    if a.no_close {
        opts.with_background_thread = false;
    }
    let db = if a.update { Db::open(&opts) } else { Db::open_or_create(&opts) }
        .map_err(|e| anyhow::anyhow!("opening {}: {e:?}", a.dir.display()))?;
    let columns = opts.columns.clone();

    let batches = commit_batches(a, &columns, k);
    let half = batches.len() / 2;
    for (n, batch) in batches.into_iter().enumerate() {
        db.commit_changes(batch).map_err(|e| anyhow::anyhow!("commit {n}: {e:?}"))?;
        if a.no_close {
            db.process_commits().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            db.flush_logs().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            // The first half reaches the tables; the rest stays in the logs.
            if n < half {
                db.enact_logs().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
        }
        if n == 0 && a.hold.is_some() {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready")?;
            out.flush()?;
        }
    }
    if let Some(secs) = a.hold {
        std::thread::sleep(Duration::from_secs(secs));
    }
    if a.no_close {
        // Exit without closing: the lock is released by the OS, the logs
        // are left for the next open to replay.
        std::io::stdout().flush()?;
        std::process::exit(0);
    }
    drop(db);
    Ok(())
}

/// One commit: operations on columns.
type Commit = Vec<(u8, Operation<Vec<u8>, Vec<u8>>)>;

/// The commits `write` makes: the keys spread over [`COMMITS`] commits,
/// each commit one operation per column and key. With `--update`: values
/// rewritten (every third key; in the state column, an extra reference
/// instead, as state is never rewritten under the same key), then keys
/// dereferenced (every fifth: deleted, or one reference dropped in the
/// state column).
fn commit_batches(a: &Args, columns: &[ColumnOptions], k: u64) -> Vec<Commit> {
    let per = k.div_ceil(COMMITS as u64).max(1);
    let mut batches = Vec::new();
    let mut start = 0;
    while start < k {
        let end = (start + per).min(k);
        let mut batch = Vec::new();
        for (c, opts) in columns.iter().enumerate() {
            let c = c as u8;
            for i in start..end {
                let key = key(a.seed, c, i, opts);
                if !a.update {
                    batch.push((c, Operation::Set(key, value(a.seed, c, i, 0))));
                } else if i % 3 == 0 {
                    if opts.ref_counted {
                        batch.push((c, Operation::Reference(key)));
                    } else {
                        batch.push((c, Operation::Set(key, value(a.seed, c, i, 1))));
                    }
                }
            }
        }
        batches.push(batch);
        start = end;
    }
    if a.update {
        let mut batch = Vec::new();
        for (c, opts) in columns.iter().enumerate() {
            let c = c as u8;
            for i in (0..k).filter(|i| i % 5 == 0) {
                batch.push((c, Operation::Dereference(key(a.seed, c, i, opts))));
            }
        }
        batches.push(batch);
    }
    batches
}

// ---------------------------------------------------------------------------
// dump

/// Prints the database in `dir` to `out`:
///
/// ```text
/// parity-db version 8 columns 3
/// column 0 hash preimage=false uniform=false refc=false compression=0
/// value 0 rc=1 HEX            (every value, sorted)
/// key 0 HEX HEX|-             (with --keys: the keys `write` wrote)
/// column 2 btree ...
/// entry 2 HEX HEX             (every key/value, in key order)
/// ```
///
/// Btree columns are iterated in key order (`Db::iter`). Hash-indexed
/// columns cannot be iterated by key (their index holds key hashes):
/// every value with its reference count is listed through
/// `iter_column_while`, sorted, and with `--keys K --seed S` each of the
/// keys `write` wrote for those arguments is looked up (`-` when absent).
///
/// Opening replays and removes any log files left by a process that did
/// not close the database (parity-db does that on every open, read-only
/// included), so dump a copy when the files themselves matter.
fn dump(dir: &Path, keys: Option<(u64, u64)>, out: &mut impl Write) -> Result<()> {
    let version = std::fs::read_to_string(dir.join("metadata"))
        .with_context(|| format!("{}/metadata", dir.display()))?
        .lines()
        .find_map(|l| l.strip_prefix("version=").map(str::to_string))
        .unwrap_or_default();
    let opts = options_from_metadata(dir)?.with_context(|| format!("{} has no ParityDB metadata", dir.display()))?;
    let db = Db::open_read_only(&opts).map_err(|e| anyhow::anyhow!("opening {}: {e:?}", dir.display()))?;
    writeln!(out, "parity-db version {version} columns {}", opts.columns.len())?;
    for (c, col) in opts.columns.iter().enumerate() {
        let c = c as u8;
        let kind = if col.btree_index { "btree" } else { "hash" };
        writeln!(
            out,
            "column {c} {kind} preimage={} uniform={} refc={} compression={}",
            col.preimage, col.uniform, col.ref_counted, col.compression as u8
        )?;
        if col.btree_index {
            let mut it = db.iter(c).map_err(|e| anyhow::anyhow!("column {c}: {e:?}"))?;
            it.seek_to_first().map_err(|e| anyhow::anyhow!("column {c}: {e:?}"))?;
            while let Some((k, v)) = it.next().map_err(|e| anyhow::anyhow!("column {c}: {e:?}"))? {
                writeln!(out, "entry {c} {} {}", hex(&k), hex(&v))?;
            }
            continue;
        }
        let mut values = Vec::new();
        db.iter_column_while(c, |s| {
            values.push(format!("value {c} rc={} {}", s.rc, hex(&s.value)));
            true
        })
        .map_err(|e| anyhow::anyhow!("column {c}: {e:?}"))?;
        values.sort();
        for v in values {
            writeln!(out, "{v}")?;
        }
        if let Some((k, seed)) = keys {
            for i in 0..k {
                let key = key(seed, c, i, col);
                let got = db.get(c, &key).map_err(|e| anyhow::anyhow!("column {c}: {e:?}"))?;
                writeln!(out, "key {c} {} {}", hex(&key), got.as_deref().map(hex).unwrap_or_else(|| "-".into()))?;
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}
