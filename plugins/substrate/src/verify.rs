//! `coffer verify` of a substrate snapshot: each RocksDB and ParityDB
//! database's structure, each keystore key and the node key, read back
//! from the snapshot.

use std::collections::BTreeMap;
use std::io::Read;

use coffer_lsm::copy::Flavor;
use coffer_lsm::rocksdb::RocksDb;
use coffer_sdk::{Error, SnapshotReader, VerifyReport, host};

use crate::{keystore, paritydb};

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

/// A RocksDB database at snapshot directory `dir` (`files`: name → size):
/// `CURRENT` names a manifest that is there and parses; every live table
/// it lists is there with its size; every table's footer and block
/// checksums hold.
pub fn rocksdb(
    snapshot: &SnapshotReader,
    dir: &str,
    files: &BTreeMap<String, u64>,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let label = format!("RocksDB {dir}");
    let Some(_) = files.get("CURRENT") else {
        report.problem(dir, format!("{label}: no CURRENT file"));
        return Ok(());
    };
    let current = snapshot.read(&join(dir, "CURRENT"))?;
    let name = match coffer_lsm::parse_current(&current) {
        Ok((name, _)) => name,
        Err(e) => {
            report.problem(join(dir, "CURRENT"), format!("{label}: {e}"));
            return Ok(());
        }
    };
    if !files.contains_key(&name) {
        report.problem(join(dir, "CURRENT"), format!("{label}: CURRENT names {name}, which is missing"));
        return Ok(());
    }
    let manifest = snapshot.read(&join(dir, &name))?;
    report.checked(2, (current.len() + manifest.len()) as u64);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let live = match RocksDb::live_set(&current, &manifest, &names) {
        Ok(l) => l,
        Err(e) => {
            report.problem(join(dir, &name), format!("{label}: {e}"));
            return Ok(());
        }
    };
    for n in &live.missing_tables {
        report.problem(dir, format!("{label}: live table {n:06}.sst that {name} lists is missing"));
    }
    let mut blocks = 0u64;
    for t in &live.tables {
        host::check_cancelled()?;
        let path = join(dir, &t.name);
        let have = files.get(&t.name).copied().unwrap_or_default();
        if have != t.meta.size {
            report
                .problem(&path, format!("{label}: table {} holds {have} bytes; {name} lists {}", t.name, t.meta.size));
            continue;
        }
        // One table in memory at a time.
        let bytes = snapshot.read(&path)?;
        report.checked(1, bytes.len() as u64);
        if !t.name.ends_with(".sst") && !t.name.ends_with(".ldb") {
            continue;
        }
        match coffer_lsm::table::check_table(&t.name, &bytes) {
            Ok(r) => blocks += r.data_blocks,
            Err(e) => report.problem(&path, format!("{label}: {e}")),
        }
    }
    report.note(format!(
        "{label}: {name}, {} live tables ({blocks} data blocks checked), {} logs{}",
        live.tables.len(),
        live.logs.len(),
        if live.missing_tables.is_empty() { "" } else { ", tables missing" }
    ));
    Ok(())
}

/// A ParityDB database at snapshot directory `dir`: its metadata, which
/// files belong to which column, their sizes and headers.
pub fn paritydb(
    snapshot: &SnapshotReader,
    dir: &str,
    files: &BTreeMap<String, (u64, u32)>,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let label = format!("ParityDB {dir}");
    let listed: Vec<paritydb::ListedFile> = files
        .iter()
        .map(|(name, &(size, mode))| paritydb::ListedFile {
            name: name.clone(),
            size,
            mtime: Default::default(),
            mode,
            is_file: true,
        })
        .collect();
    let check = paritydb::check_files(&listed, |name, head| {
        let path = join(dir, name);
        if !files.contains_key(name) {
            return Ok(None);
        }
        let Some(len) = head else { return snapshot.read(&path).map(Some) };
        let mut out = Vec::with_capacity(len);
        snapshot.open(&path)?.take(len as u64).read_to_end(&mut out).map_err(|e| Error::from(e).context(&path))?;
        Ok(Some(out))
    })?;
    report.checked(listed.len() as u64, files.values().map(|(s, _)| s).sum());
    for p in &check.problems {
        report.problem(join(dir, &p.file), format!("{label}: {}", p.reason));
    }
    report.note(format!(
        "{label}: {}, {} files",
        check.metadata.as_ref().map(paritydb::Metadata::summary).unwrap_or_else(|| "metadata unreadable".into()),
        check.files.files().len()
    ));
    Ok(())
}

/// The keys of a keystore at snapshot directory `dir`: each one's secret
/// derives the public key its file name gives.
pub fn keystore(
    snapshot: &SnapshotReader,
    dir: &str,
    files: &BTreeMap<String, (u64, u32)>,
    password: Option<&str>,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let mut good = 0;
    for name in files.keys() {
        host::check_cancelled()?;
        let path = join(dir, name);
        let bytes = snapshot.read(&path)?;
        report.checked(1, bytes.len() as u64);
        match keystore::check_key_file(name, &bytes, password) {
            Ok(_) => good += 1,
            Err(e) => report.problem(&path, format!("keystore: {e}")),
        }
    }
    report.note(format!(
        "keystore {}: {good} of {} keys derive the public keys their file names give",
        if dir.is_empty() { "." } else { dir },
        files.len()
    ));
    Ok(())
}

/// The libp2p node key at `path`: its peer id.
pub fn node_key(snapshot: &SnapshotReader, path: &str, report: &mut VerifyReport) -> Result<(), Error> {
    let bytes = snapshot.read(path)?;
    report.checked(1, bytes.len() as u64);
    match keystore::check_node_key("secret_ed25519", &bytes).map(|k| k.peer_id) {
        Ok(id) => report.note(format!("node key {path}: peer id {id}")),
        Err(e) => report.problem(path, format!("node key: {}", e.problem)),
    }
    Ok(())
}
