//! coffer's `fabric` plugin: Hyperledger Fabric peer and orderer ledgers.
//!
//! - **Backup** (`--set ledger_dir=DIR`, read-only): every file under the
//!   ledger directory. Block files (`blockfile_NNNNNN`) are cut at the
//!   channel's last complete block, whose height is recorded as
//!   `fabric.height.<channel>`; a partly written last block is left out
//!   with a warning. The LevelDB stores (block index, state, history,
//!   private data, ledger provider) are copied whole, before the block
//!   files, so that an index is never ahead of the blocks. Unchanged files
//!   are kept from the parent snapshot without being read.
//! - **Verify** checks every channel with Fabric's rules ([`verify`]).
//! - **Restore** writes the ledger directory into an empty target, for a
//!   stopped peer.

pub mod blockfile;
pub mod ledger_snapshot;
pub mod leveldb;
pub mod proto;
pub mod verify;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};

use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, EntryMeta, Error, FileOutcome, FileSource, Plugin, PluginInfo,
    RestoreOptions, Sink, SnapshotReader, Timestamp, VerifyReport, host,
};
use serde::Deserialize;

/// The plugin.
pub struct Fabric;

/// `coffer backup fabric --set ledger_dir=/var/hyperledger/production/ledgersData`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricConfig {
    /// A peer's `ledgersData/` or an orderer's ledger directory.
    ledger_dir: String,
}

impl Config for FabricConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ledger_dir.is_empty() {
            return Err(ConfigError::field("ledger_dir", "must not be empty"));
        }
        if !self.ledger_dir.starts_with('/') {
            return Err(ConfigError::field("ledger_dir", "must be an absolute path"));
        }
        Ok(())
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["ledger_dir"],
  "additionalProperties": false,
  "properties": {
    "ledger_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "The peer's ledgersData/ directory (or an orderer's ledger directory); granted read-only."}
  }
}"#;

/// Attribute prefix of a channel's height (complete blocks backed up).
const HEIGHT_ATTR: &str = "fabric.height.";

/// Files handed to the host per `add-files` call.
const ADD_FILES: usize = 500;

fn root(config: &FabricConfig) -> String {
    let r = config.ledger_dir.trim_end_matches('/');
    if r.is_empty() { "/".into() } else { r.to_string() }
}

fn join(root: &str, rel: &str) -> String {
    if rel.is_empty() { root.to_string() } else { format!("{}/{rel}", root.trim_end_matches('/')) }
}

/// The channel of a block file at snapshot path `rel`: its directory's
/// name, when the file is named `blockfile_<digits>`.
pub fn block_file_channel(rel: &str) -> Option<&str> {
    let (dir, name) = rel.rsplit_once('/')?;
    let digits = name.strip_prefix("blockfile_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(dir.rsplit('/').next().unwrap_or(dir))
}

/// A file found by the walk.
struct Found {
    rel: String,
    mode: u32,
    size: u64,
    mtime: Timestamp,
}

/// Walks the tree: directories are added as entries at once, files are
/// collected.
fn walk(root: &str, rel: &str, sink: &Sink, files: &mut Vec<Found>) -> Result<(), Error> {
    host::check_cancelled()?;
    let listing = host::list_dir(&join(root, rel))?;
    for name in &listing.special {
        host::warn(format!("skipping {}: sockets, FIFOs and devices are not backed up", join(root, rel) + "/" + name));
    }
    for item in listing.items {
        let child = if rel.is_empty() { item.name.clone() } else { format!("{rel}/{}", item.name) };
        match item.kind {
            EntryKind::Dir => {
                sink.add_entry(EntryMeta::dir(&child, item.mode).mtime(item.mtime))?.finish()?;
                walk(root, &child, sink, files)?;
            }
            EntryKind::Symlink => {
                let target = host::read_link(&join(root, &child))?;
                sink.add_entry(EntryMeta::symlink(&child, &target).mtime(item.mtime))?.finish()?;
            }
            EntryKind::File => files.push(Found { rel: child, mode: item.mode, size: item.size, mtime: item.mtime }),
        }
    }
    Ok(())
}

/// Hands `batch` to the host to read.
fn add_batch(sink: &Sink, root: &str, batch: &mut Vec<FileSource>) -> Result<(), Error> {
    if batch.is_empty() {
        return Ok(());
    }
    for (file, outcome) in batch.iter().zip(sink.add_files(batch)?) {
        match outcome {
            FileOutcome::Added(_) => {}
            FileOutcome::Gone => host::warn(format!("{} vanished during the backup; skipped", file.source)),
            FileOutcome::Unreadable(why) => {
                return Err(Error::Other(format!("{} cannot be read ({why}); under {root}", file.source)));
            }
        }
    }
    batch.clear();
    Ok(())
}

fn read_entry(snapshot: &SnapshotReader, path: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    snapshot.open(path)?.read_to_end(&mut out).map_err(|e| Error::from(e).context(path))?;
    Ok(out)
}

fn restore_dir_empty(dir: &str) -> Result<bool, Error> {
    let mut it = fs::read_dir(dir).map_err(|e| Error::from(e).context(dir))?;
    Ok(it.next().is_none())
}

impl Plugin for Fabric {
    type Config = FabricConfig;

    fn info() -> PluginInfo {
        PluginInfo::new(
            "fabric",
            env!("CARGO_PKG_VERSION"),
            "Hyperledger Fabric peer and orderer ledgers: block files cut at a complete block, hash chain and \
             orderer signatures verified",
        )
        .schema(SCHEMA)
        .restore_modes(true, false)
    }

    fn source(config: &FabricConfig) -> String {
        format!("fabric:{}", root(config))
    }

    fn capabilities(config: &FabricConfig) -> Vec<Capability> {
        vec![Capability::ReadDir(root(config))]
    }

    fn snapshot(config: FabricConfig, parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        let root = root(&config);
        let md = fs::metadata(&root).map_err(|e| Error::from(e).context(&root))?;
        if !md.is_dir() {
            return Err(Error::InvalidConfig(format!("ledger_dir: {root} is not a directory")));
        }
        let mut files = Vec::new();
        walk(&root, "", sink, &mut files)?;

        // Block files per channel, in file order; everything else first.
        let mut channels: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        let mut batch = Vec::new();
        let mut reused = 0u64;
        for f in files {
            if let Some(ch) = block_file_channel(&f.rel) {
                channels.entry(ch.to_string()).or_default().push(f);
                continue;
            }
            if parent.is_some() && sink.reuse_unchanged(&f.rel, f.size, f.mtime, f.mode) {
                reused += 1;
                continue;
            }
            batch.push(FileSource { source: join(&root, &f.rel), path: f.rel });
            if batch.len() >= ADD_FILES {
                add_batch(sink, &root, &mut batch)?;
            }
        }
        add_batch(sink, &root, &mut batch)?;

        // Block files last: their blocks are at least what the index knows.
        for (channel, mut list) in channels {
            host::check_cancelled()?;
            list.sort_by(|a, b| a.rel.cmp(&b.rel));
            // The files that must be read: the last, and the ones before it
            // back to one that holds a complete block (for the height).
            let mut height: Option<u64> = None;
            let mut undecodable = false;
            let mut contents: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
            for i in (0..list.len()).rev() {
                let path = join(&root, &list[i].rel);
                let bytes = fs::read(&path).map_err(|e| Error::from(e).context(&path))?;
                let scan = blockfile::scan(&bytes);
                if let Some(last) = scan.records.last() {
                    match blockfile::decode_block(last.bytes) {
                        Ok(b) => height = Some(b.number + 1),
                        Err(e) => {
                            // Stored as it is; `coffer verify` reports it.
                            host::warn(format!(
                                "{path}: the block at byte {} does not decode ({e}); channel {channel} is backed up \
                                 without a recorded height; run `coffer verify` on the snapshot for the whole report",
                                last.offset
                            ));
                            undecodable = true;
                        }
                    }
                }
                contents.insert(i, bytes);
                if height.is_some() || undecodable {
                    break;
                }
            }
            let height = height.unwrap_or(0);
            let last = list.len() - 1;
            for (i, f) in list.iter().enumerate() {
                if let Some(bytes) = contents.get(&i) {
                    let scan = blockfile::scan(bytes);
                    let keep = scan.complete_len as usize;
                    if scan.partial_tail > 0 {
                        if i == last {
                            host::warn(format!(
                                "{}: left out a partly written block ({} bytes at byte {keep}); channel {channel} is \
                                 backed up to height {height}",
                                join(&root, &f.rel),
                                scan.partial_tail
                            ));
                        } else {
                            host::warn(format!(
                                "{}: {} bytes at its end do not form a block; kept as they are",
                                join(&root, &f.rel),
                                scan.partial_tail
                            ));
                        }
                    }
                    let keep = if i == last { keep } else { bytes.len() };
                    if parent.is_some() && sink.reuse_unchanged(&f.rel, keep as u64, f.mtime, f.mode) {
                        reused += 1;
                        continue;
                    }
                    let mut w =
                        sink.add_entry(EntryMeta::file(&f.rel, f.mode).mtime(f.mtime).size_hint(keep as u64))?;
                    w.write_all(&bytes[..keep]).map_err(|e| Error::from(e).context(&f.rel))?;
                    w.finish()?;
                } else {
                    // An earlier file: complete, and immutable once the
                    // peer moved to the next one.
                    if parent.is_some() && sink.reuse_unchanged(&f.rel, f.size, f.mtime, f.mode) {
                        reused += 1;
                        continue;
                    }
                    batch.push(FileSource { source: join(&root, &f.rel), path: f.rel.clone() });
                    add_batch(sink, &root, &mut batch)?;
                }
            }
            if !undecodable {
                sink.set_attribute(&format!("{HEIGHT_ATTR}{channel}"), &height.to_string())?;
                host::info(format!("channel {channel}: height {height}"));
            }
        }
        host::info(format!("kept {reused} unchanged files from the parent snapshot"));
        Ok(())
    }

    fn restore(_config: FabricConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        let target = options.directory()?.trim_end_matches('/').to_string();
        if !restore_dir_empty(&target)? {
            return Err(Error::Other(format!(
                "restore target {target} is not empty; restore a ledger into an empty directory"
            )));
        }
        host::warn(
            "the peer (or orderer) that will use this ledger directory must be stopped while it is restored; \
             once started, a peer restored behind its network catches up through Fabric's own block delivery",
        );
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for e in snapshot.entries() {
            if !options.includes(&e.path) {
                continue;
            }
            match e.kind {
                EntryKind::Dir => {
                    let dest = join(&target, &e.path);
                    fs::create_dir(&dest).map_err(|err| Error::from(err).context(&dest))?;
                    dirs.push(e);
                }
                EntryKind::File => files.push(e.path),
                EntryKind::Symlink => {
                    host::symlink(&e.path, e.link_target.as_deref().unwrap_or_default())?;
                }
            }
        }
        for chunk in files.chunks(ADD_FILES) {
            host::check_cancelled()?;
            snapshot.restore_files(chunk)?;
        }
        for d in dirs.iter().rev() {
            host::set_metadata(&d.path, d.mode, d.mtime)?;
        }
        for (k, v) in snapshot.attributes() {
            if let Some(ch) = k.strip_prefix(HEIGHT_ATTR) {
                host::info(format!("channel {ch}: restored to height {v}"));
            }
        }
        Ok(())
    }

    fn verify(_config: FabricConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let mut channels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in snapshot.entries() {
            if e.kind == EntryKind::File
                && let Some(ch) = block_file_channel(&e.path)
            {
                channels.entry(ch.to_string()).or_default().push(e.path.clone());
            }
        }
        if channels.is_empty() {
            report.problem("", "the snapshot holds no block files (blockfile_NNNNNN)");
        }
        for (channel, mut paths) in channels {
            host::check_cancelled()?;
            paths.sort();
            // One block file in memory at a time.
            let mut checker = verify::ChannelChecker::new(&channel);
            for (i, p) in paths.iter().enumerate() {
                host::check_cancelled()?;
                let bytes = read_entry(snapshot, p)?;
                report.checked(1, bytes.len() as u64);
                checker.add_file(&verify::ChannelFile { name: p.clone(), bytes: &bytes }, i + 1 == paths.len());
            }
            let r = checker.finish();
            for p in &r.problems {
                report.problem(&p.file, format!("channel {channel}: {p}"));
            }
            if let Some((file, n)) = &r.partial {
                report.note(format!(
                    "channel {channel}: {file} ends with a partly written block ({n} bytes), not counted in the height"
                ));
            }
            if let Some(recorded) = snapshot.attribute(&format!("{HEIGHT_ATTR}{channel}"))
                && recorded != r.height.to_string()
            {
                report.problem(
                    paths.last().map(String::as_str).unwrap_or_default(),
                    format!(
                        "channel {channel}: the backup recorded height {recorded}; the block files hold {}",
                        r.height
                    ),
                );
            }
            if let Some((block, named)) = &r.foreign_example {
                report.note(format!(
                    "channel {channel}: {} transactions name another channel (the first in block {block}: {named:?}); \
                     Fabric's committer marks such transactions invalid, their blocks stay in the ledger",
                    r.foreign_transactions
                ));
            }
            if r.signed_blocks == 0 && r.height > 1 {
                report.note(format!(
                    "channel {channel}: no block carries an orderer signature (ledgers written by Fabric's test \
                     tools carry none); only the hash chain and data hashes were checked"
                ));
            }
            let orgs = if r.orderer_orgs.is_empty() { "none".to_string() } else { r.orderer_orgs.join(", ") };
            let last_config = r.last_config.map_or("none".to_string(), |n| n.to_string());
            let first_bad = r.problems.first().map_or("none".to_string(), |p| p.number.to_string());
            report.note(format!(
                "channel {channel}: height {}, last config block {last_config}, orderer organisations {orgs}, {} \
                 signed blocks, first bad block {first_bad}",
                r.height, r.signed_blocks
            ));
        }
        Ok(report)
    }
}

coffer_sdk::export!(Fabric);
