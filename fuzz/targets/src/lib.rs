//! coffer's fuzz targets: one entry function per parser of bytes that come
//! from outside the process (repository files, and what the Redis,
//! PostgreSQL and MongoDB plugins read from servers, data directories and
//! dump files).
//!
//! `fuzz/fuzz_targets/*.rs` hand libFuzzer's inputs to [`run`]; this
//! crate's test hands it every file under `fuzz/regressions/<target>/`, the
//! inputs that once found a bug, so those bugs stay fixed in an ordinary
//! `cargo test`, without nightly or libFuzzer. An entry function must not
//! panic, loop or allocate without bound on any input; where a parser has
//! an inverse or a second implementation, it also checks that they agree.

mod alloc;
mod mongodb;
mod postgres;
mod redis;
mod repo;
pub mod seeds;

#[global_allocator]
static ALLOCATOR: alloc::AllocationWatch = alloc::AllocationWatch;

/// The largest single allocation one input may cause (256 MiB). Inputs are
/// at most a few KiB; the largest legitimate buffers are a 16 MiB blob and
/// the 1 MiB read buffer of an AOF check. More means a length field sized a
/// buffer before anything checked it.
pub const MAX_ALLOCATION: usize = 256 << 20;

/// One fuzz target.
#[derive(Debug)]
pub struct Target {
    /// Its name: the file under `fuzz/fuzz_targets/` and the directory
    /// under `fuzz/regressions/`.
    pub name: &'static str,
    /// What it feeds the input to.
    pub covers: &'static str,
    /// The entry function.
    pub entry: fn(&[u8]),
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "pack",
        covers: "pack trailers and headers: a raw pack, and a header sealed for the parser",
        entry: repo::pack,
    },
    Target { name: "blob", covers: "blob decoding (encoding tag, zstd), and the encode round trip", entry: repo::blob },
    Target { name: "index", covers: "index file plaintext (versions 1 and 2), and the round trip", entry: repo::index },
    Target { name: "snapshot", covers: "snapshot manifests and WAL archive objects (JSON)", entry: repo::snapshot },
    Target {
        name: "tree",
        covers: "snapshot trees: the fast CBOR path against serde, whole and in pieces",
        entry: repo::tree,
    },
    Target { name: "keyfile", covers: "key files, epoch files and the repository config", entry: repo::keyfile },
    Target { name: "share", covers: "Shamir share codes, and combining the shares parsed", entry: repo::share },
    Target { name: "wal_page", covers: "WAL segment long page headers", entry: repo::wal_page },
    Target {
        name: "wal_text",
        covers: "WAL file names, LSNs, timeline history files, recovery target times, WAL stream names",
        entry: repo::wal_text,
    },
    Target { name: "rdb", covers: "Redis RDB files, shallow and deep, read in pieces", entry: redis::rdb },
    Target { name: "lzf", covers: "LZF decompression of RDB strings", entry: redis::lzf },
    Target { name: "compact", covers: "listpacks, ziplists, intsets and zipmaps", entry: redis::compact },
    Target { name: "aof", covers: "AOF manifests, and RESP command framing whole and in pieces", entry: redis::aof },
    Target { name: "pg_tar", covers: "ustar headers of base backup tar streams", entry: postgres::tar },
    Target {
        name: "pg_manifest",
        covers: "PostgreSQL backup manifests and backup_label files",
        entry: postgres::manifest,
    },
    Target {
        name: "mongo_archive",
        covers: "mongodump archives: streamed in pieces, planned, copied per collection, written again",
        entry: mongodb::archive,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Runs the target called `name` on one input. Panics (which libFuzzer
/// reports as a crash, saving the input) if the parser panicked or made an
/// allocation larger than [`MAX_ALLOCATION`].
pub fn run(name: &str, data: &[u8]) {
    let t = target(name).unwrap_or_else(|| panic!("there is no fuzz target {name}"));
    alloc::take_largest();
    (t.entry)(data);
    let largest = alloc::take_largest();
    assert!(largest <= MAX_ALLOCATION, "{name}: a {}-byte input made one allocation of {largest} bytes", data.len());
}

/// The first byte (a choice the target makes: a mode, a piece size) and
/// the rest; `None` for an empty input.
fn control(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(c, rest)| (*c, rest))
}

/// A reader that hands out at most `piece` bytes a call, as a socket or a
/// pipe does.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.piece.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn regressions() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../regressions")
    }

    /// Longest an input may take before it counts as a hang.
    const HANG: Duration = Duration::from_secs(60);

    /// Every input that once found a bug still goes through its target
    /// without a panic, a hang or a huge allocation; every directory names
    /// a target.
    #[test]
    fn every_regression_input_is_handled() {
        let mut failures = Vec::new();
        let mut count = 0;
        for dir in std::fs::read_dir(regressions()).expect("fuzz/regressions exists").flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            if target(&name).is_none() {
                failures.push(format!("fuzz/regressions/{name}: no fuzz target of that name"));
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
            files.sort();
            for path in files {
                let data = std::fs::read(&path).unwrap();
                let shown = format!("fuzz/regressions/{name}/{}", path.file_name().unwrap().to_string_lossy());
                let (tx, rx) = mpsc::channel();
                let target_name = name.clone();
                // A thread per input: a panic is caught and reported with
                // the file, and a hang is reported instead of waited out.
                std::thread::spawn(move || {
                    let outcome = std::panic::catch_unwind(|| run(&target_name, &data));
                    let _ = tx.send(outcome.map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    }));
                });
                match rx.recv_timeout(HANG) {
                    Ok(Ok(())) => {}
                    Ok(Err(msg)) => failures.push(format!("{shown}: panicked: {msg}")),
                    Err(_) => failures.push(format!("{shown}: still running after {HANG:?}")),
                }
                count += 1;
            }
        }
        assert!(failures.is_empty(), "{} of {count} regression inputs fail:\n{}", failures.len(), failures.join("\n"));
    }

    /// The seeds `cargo xtask fuzz` starts a corpus with go through their
    /// targets too (they are valid files of each format).
    #[test]
    fn every_seed_is_handled() {
        for (name, data) in seeds::all() {
            run(name, &data);
        }
        for t in TARGETS {
            assert!(seeds::all().iter().any(|(n, _)| *n == t.name), "no seed for {}", t.name);
        }
    }
}
