//! coffer's `fabric` plugin: Hyperledger Fabric peer and orderer ledgers.
//!
//! - **Backup** (`--set ledger_dir=DIR`, read-only): the LevelDB stores
//!   (block index, state, history, private data, ledger provider) first,
//!   each as its live set read from `CURRENT` and its manifest, copied
//!   consistently while the peer writes (`coffer_lsm`); then the other files
//!   and Fabric 2.x ledger snapshots (`.../completed/<channel>/<block>/`,
//!   checked against their metadata's hashes, [`ledger_snapshot`]; those
//!   still being written are left out); block files (`blockfile_NNNNNN`)
//!   last, each channel's cut at its last complete block, whose height is
//!   recorded as `fabric.height.<channel>`, so that an index is never ahead
//!   of the blocks. Unchanged files are kept from the parent snapshot
//!   without being read. Each backup declares that rolling it forward needs
//!   the channels' block streams from their heights.
//! - **Follow** (`coffer stream follow`): each channel's new blocks as the
//!   stream `blocks-<channel>` ([`follow`]).
//! - **Verify** checks every channel with Fabric's rules ([`verify`], with
//!   the orderer's `BlockValidation` policy, [`policy`]), each LevelDB
//!   store's manifest against its tables, and each ledger snapshot.
//! - **Restore** writes the ledger directory into an empty target, for a
//!   stopped peer, and with `to_height` rolls channels forward from their
//!   streams; `export=channel-config` writes each channel's newest config
//!   block and its decoded config instead ([`configtx`]).

pub mod blockfile;
pub mod configtx;
pub mod follow;
pub mod ledger_snapshot;
pub mod policy;
pub mod proto;
pub mod verify;

/// The real ledgers in `tests/fixtures/fabric`, for the modules' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    /// The 2.x `sample_prod` ledger's block file (channel `mychannel`).
    pub const SAMPLE: &str = "v2/sample_prod/ledgersData/chains/chains/mychannel/blockfile_000000";

    /// A file of `tests/fixtures/fabric`.
    pub fn fixture(rel: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fabric").join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use coffer_lsm::leveldb::{self, LevelDb};
use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, EntryMeta, Error, FileOutcome, FileSource, Plugin, PluginInfo,
    RestoreOptions, Sink, SnapshotReader, StreamSink, Timestamp, VerifyReport, host,
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
    /// restore: roll channels forward from their block streams, to this
    /// height (a number of blocks) or `latest`.
    #[serde(default)]
    to_height: Option<serde_json::Value>,
    /// restore with `to_height`: the one channel to roll forward (needed
    /// with a number when the ledger has several channels); with `export`,
    /// the one channel to export.
    #[serde(default)]
    channel: Option<String>,
    /// restore: `channel-config` writes each channel's newest config block
    /// and its decoded config instead of the ledger.
    #[serde(default)]
    export: Option<String>,
    /// stream follow: a first follow starts at block 0 (`oldest`, the
    /// default) or at each channel's height (`newest`).
    #[serde(default)]
    start: Option<String>,
    /// stream follow: cut an item at this many bytes.
    #[serde(default = "default_item_max_bytes")]
    item_max_bytes: usize,
    /// stream follow: cut an item this many seconds after its first block.
    #[serde(default = "default_item_max_seconds")]
    item_max_seconds: u64,
    /// stream follow: look at the block files this often.
    #[serde(default = "default_poll_ms")]
    poll_ms: u64,
}

fn default_item_max_bytes() -> usize {
    16 << 20
}

fn default_item_max_seconds() -> u64 {
    10
}

fn default_poll_ms() -> u64 {
    1000
}

/// How far `to_height` asks to roll forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The newest block the stream holds.
    Latest,
    /// This height (blocks 0 to height - 1).
    Height(u64),
}

impl FabricConfig {
    fn until(&self) -> Result<Option<Until>, ConfigError> {
        let bad = || ConfigError::field("to_height", "must be a number of blocks or `latest`");
        match &self.to_height {
            None => Ok(None),
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|h| Some(Until::Height(h))).ok_or_else(bad),
            Some(serde_json::Value::String(s)) if s == "latest" => Ok(Some(Until::Latest)),
            Some(serde_json::Value::String(s)) => s.parse().map(|h| Some(Until::Height(h))).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }
}

impl Config for FabricConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ledger_dir.is_empty() {
            return Err(ConfigError::field("ledger_dir", "must not be empty"));
        }
        if !self.ledger_dir.starts_with('/') {
            return Err(ConfigError::field("ledger_dir", "must be an absolute path"));
        }
        self.until()?;
        if let Some(e) = &self.export {
            if e != "channel-config" {
                return Err(ConfigError::field("export", "the one export is `channel-config`"));
            }
            if self.to_height.is_some() {
                return Err(ConfigError::field(
                    "export",
                    "exports the snapshot's own config blocks; leave out to_height",
                ));
            }
        }
        if let Some(s) = &self.start
            && s != "oldest"
            && s != "newest"
        {
            return Err(ConfigError::field("start", "must be `oldest` or `newest`"));
        }
        if self.item_max_bytes < 4096 || self.item_max_bytes > 1 << 30 {
            return Err(ConfigError::field("item_max_bytes", "must be between 4096 and 1073741824"));
        }
        if self.item_max_seconds == 0 {
            return Err(ConfigError::field("item_max_seconds", "must be at least 1"));
        }
        if self.poll_ms == 0 || self.poll_ms > 3_600_000 {
            return Err(ConfigError::field("poll_ms", "must be between 1 and 3600000"));
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
    "ledger_dir": {"type": "string", "x-coffer-grant": "read-dir", "description": "The peer's ledgersData/ directory (or an orderer's ledger directory); granted read-only."},
    "to_height": {"type": ["integer", "string"], "description": "restore: roll the ledger forward from its block streams to this height (blocks), or `latest`."},
    "channel": {"type": "string", "description": "restore with to_height: the channel to roll forward (needed with a number when the ledger has several); with export: the channel to export."},
    "export": {"type": "string", "enum": ["channel-config"], "description": "restore: write each channel's newest config block as <channel>.block (what `peer channel fetch config` writes) and its config as <channel>.json (what `configtxlator proto_decode --type common.Config` prints) instead of the ledger."},
    "start": {"type": "string", "enum": ["oldest", "newest"], "description": "stream follow: a first follow starts at block 0 (oldest, the default) or at each channel's height (newest)."},
    "item_max_bytes": {"type": "integer", "description": "stream follow: cut an item at this many bytes (default 16 MiB)."},
    "item_max_seconds": {"type": "integer", "description": "stream follow: cut an item this many seconds after its first block (default 10)."},
    "poll_ms": {"type": "integer", "description": "stream follow: look at the block files this often (default 1000 ms)."}
  }
}"#;

/// Attribute prefix of a channel's height (complete blocks backed up).
const HEIGHT_ATTR: &str = "fabric.height.";

/// Attribute prefix of a channel's ledger snapshots backed up (their last
/// block numbers, comma-separated).
const SNAPSHOTS_ATTR: &str = "fabric.snapshots.";

/// Streams one snapshot may declare it needs (the host's limit).
const MAX_STREAM_NEEDS: usize = 64;

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

/// What the walk found.
#[derive(Default)]
struct Walk {
    /// Plain files (block files, ledger snapshot files and the rest).
    files: Vec<Found>,
    /// LevelDB directories (snapshot paths), copied by their live set.
    leveldbs: Vec<String>,
    /// Ledger snapshots Fabric is still writing, left out.
    unfinished: Vec<String>,
}

/// Walks the tree: directories are added as entries at once, files are
/// collected; a LevelDB directory is noted, not descended into.
fn walk(root: &str, rel: &str, sink: &Sink, found: &mut Walk) -> Result<(), Error> {
    host::check_cancelled()?;
    let listing = host::list_dir(&join(root, rel))?;
    for name in &listing.special {
        host::warn(format!("skipping {}: sockets, FIFOs and devices are not backed up", join(root, rel) + "/" + name));
    }
    let names = listing.items.iter().filter(|i| i.kind == EntryKind::File).map(|i| i.name.as_str());
    if !rel.is_empty() && leveldb::looks_like_leveldb(names) {
        found.leveldbs.push(rel.to_string());
        return Ok(());
    }
    for item in listing.items {
        let child = if rel.is_empty() { item.name.clone() } else { format!("{rel}/{}", item.name) };
        match item.kind {
            EntryKind::Dir if ledger_snapshot::in_unfinished_snapshot(&format!("{child}/")) => {
                found.unfinished.push(child);
            }
            EntryKind::Dir => {
                sink.add_entry(EntryMeta::dir(&child, item.mode).mtime(item.mtime))?.finish()?;
                walk(root, &child, sink, found)?;
            }
            EntryKind::Symlink => {
                let target = host::read_link(&join(root, &child))?;
                sink.add_entry(EntryMeta::symlink(&child, &target).mtime(item.mtime))?.finish()?;
            }
            EntryKind::File => {
                found.files.push(Found { rel: child, mode: item.mode, size: item.size, mtime: item.mtime })
            }
        }
    }
    Ok(())
}

/// Backs up the completed ledger snapshots among `files` (those under
/// `.../completed/<channel>/<block>/`), taking them out of `files`: a
/// snapshot whose files are all unchanged from the parent snapshot is kept
/// unread; any other is checked against its metadata's hashes first (and
/// stored with a warning when it does not match: `coffer verify` reports
/// it). Returns channel → last block numbers of the snapshots stored.
fn back_up_ledger_snapshots(
    root: &str,
    files: &mut Vec<Found>,
    has_parent: bool,
    sink: &Sink,
) -> Result<BTreeMap<String, Vec<u64>>, Error> {
    let mut dirs: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    let mut rest = Vec::with_capacity(files.len());
    for f in files.drain(..) {
        match ledger_snapshot::snapshot_file(&f.rel) {
            Some((dir, _)) => dirs.entry(dir.path).or_default().push(f),
            None => rest.push(f),
        }
    }
    *files = rest;
    let mut stored: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (dir, list) in dirs {
        host::check_cancelled()?;
        let place = ledger_snapshot::snapshot_dir(&dir).expect("grouped by it");
        // Files kept from the parent; the snapshot is checked when any is
        // new or changed.
        let kept: Vec<bool> =
            list.iter().map(|f| has_parent && sink.reuse_unchanged(&f.rel, f.size, f.mtime, f.mode)).collect();
        if !kept.iter().all(|k| *k) {
            let names: Vec<&str> = list.iter().filter_map(|f| f.rel.rsplit_once('/').map(|(_, n)| n)).collect();
            let checked = ledger_snapshot::check_snapshot(names.iter().copied(), |n| {
                fs::File::open(join(root, &format!("{dir}/{n}")))
            });
            match checked {
                Ok(info) => {
                    let misplaced = place.check_place(&info);
                    for p in &misplaced {
                        host::warn(format!("ledger snapshot {p}"));
                    }
                    host::info(format!(
                        "ledger snapshot {dir}: channel {} at block {}, {} files match their metadata hashes",
                        info.channel,
                        info.last_block_number,
                        info.files.len()
                    ));
                }
                Err(problems) => {
                    for p in problems {
                        host::warn(format!("ledger snapshot {dir}: {p}; stored as it is, `coffer verify` reports it"));
                    }
                }
            }
            let mut batch = Vec::new();
            for (f, _) in list.iter().zip(&kept).filter(|(_, k)| !**k) {
                batch.push(FileSource { source: join(root, &f.rel), path: f.rel.clone() });
                if batch.len() >= ADD_FILES {
                    add_batch(sink, root, &mut batch)?;
                }
            }
            add_batch(sink, root, &mut batch)?;
        }
        stored.entry(place.channel).or_default().push(place.last_block_number);
    }
    Ok(stored)
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

fn restore_dir_empty(dir: &str) -> Result<bool, Error> {
    let mut it = fs::read_dir(dir).map_err(|e| Error::from(e).context(dir))?;
    Ok(it.next().is_none())
}

/// What `to_height` rolls forward: the channels, each with its block files
/// (snapshot paths, in order) and the snapshot's height; checked before
/// anything is restored.
type RollPlan = (Until, Vec<(String, Vec<String>, u64)>);

fn roll_plan(config: &FabricConfig, snapshot: &SnapshotReader) -> Result<Option<RollPlan>, Error> {
    let Some(until) =
        config.until().map_err(|_| Error::InvalidConfig("to_height: must be a number of blocks or `latest`".into()))?
    else {
        if config.channel.is_some() && config.export.is_none() {
            return Err(Error::InvalidConfig("channel is for restores with to_height or export; give one".into()));
        }
        return Ok(None);
    };
    let mut last: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in snapshot.entries() {
        if e.kind == EntryKind::File
            && let Some(ch) = block_file_channel(&e.path)
        {
            last.entry(ch.to_string()).or_default().push(e.path.clone());
        }
    }
    for files in last.values_mut() {
        files.sort();
    }
    let names = || last.keys().cloned().collect::<Vec<_>>().join(", ");
    let chosen: Vec<String> = match &config.channel {
        Some(c) if last.contains_key(c) => vec![c.clone()],
        Some(c) => {
            return Err(Error::InvalidConfig(format!(
                "channel {c} is not in this snapshot; its channels: {}",
                names()
            )));
        }
        None if matches!(until, Until::Height(_)) && last.len() > 1 => {
            return Err(Error::InvalidConfig(format!(
                "to_height with a number needs channel=... when the ledger has several channels ({})",
                names()
            )));
        }
        None => last.keys().cloned().collect(),
    };
    let mut out = Vec::new();
    for ch in chosen {
        let height =
            snapshot.attribute(&format!("{HEIGHT_ATTR}{ch}")).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                Error::Other(format!(
                    "channel {ch}: this snapshot recorded no height (its last block did not decode), so it cannot \
                     be rolled forward; run `coffer verify` on it"
                ))
            })?;
        let file = last.remove(&ch).expect("chosen from the map");
        out.push((ch, file, height));
    }
    Ok(Some((until, out)))
}

/// Checks a LevelDB store in the snapshot: `CURRENT` names a manifest
/// that parses, and every live table it lists is there with its size.
fn verify_leveldb(
    snapshot: &SnapshotReader,
    dir: &str,
    files: &BTreeMap<String, u64>,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let current = snapshot.read(&format!("{dir}/CURRENT"))?;
    let name = match coffer_lsm::parse_current(&current) {
        Ok((name, _)) => name,
        Err(e) => {
            report.problem(format!("{dir}/CURRENT"), format!("LevelDB {dir}: {e}"));
            return Ok(());
        }
    };
    if !files.contains_key(&name) {
        report.problem(format!("{dir}/CURRENT"), format!("LevelDB {dir}: CURRENT names {name}, which is missing"));
        return Ok(());
    }
    let manifest = snapshot.read(&format!("{dir}/{name}"))?;
    report.checked(2, (current.len() + manifest.len()) as u64);
    let live = match leveldb::live_set(&current, &manifest, files.keys().map(String::as_str)) {
        Ok(l) => l,
        Err(e) => {
            report.problem(format!("{dir}/{name}"), format!("LevelDB {dir}: {e}"));
            return Ok(());
        }
    };
    for n in &live.missing_tables {
        report.problem(dir, format!("LevelDB {dir}: live table {n:06} that {name} lists is missing"));
    }
    for t in &live.tables {
        let have = files.get(&t.name).copied().unwrap_or_default();
        if have != t.meta.size {
            report.problem(
                format!("{dir}/{}", t.name),
                format!("LevelDB {dir}: table {} holds {have} bytes; {name} lists {}", t.name, t.meta.size),
            );
        }
    }
    report.note(format!(
        "LevelDB {dir}: {name}, {} live tables, {} logs{}",
        live.tables.len(),
        live.logs.len(),
        if live.missing_tables.is_empty() { "" } else { ", tables missing" }
    ));
    Ok(())
}

/// Checks a ledger snapshot in the snapshot against its metadata's hashes.
fn verify_ledger_snapshot(
    snapshot: &SnapshotReader,
    dir: &str,
    files: &BTreeMap<String, u64>,
    report: &mut VerifyReport,
) {
    let place = ledger_snapshot::snapshot_dir(dir).expect("checked by the caller");
    let checked = ledger_snapshot::check_snapshot(files.keys().map(String::as_str), |n| {
        snapshot.open(&format!("{dir}/{n}")).map_err(std::io::Error::from)
    });
    report.checked(files.len() as u64, files.values().sum());
    match checked {
        Ok(info) => {
            let misplaced = place.check_place(&info);
            for p in &misplaced {
                report.problem(dir, format!("ledger snapshot {p}"));
            }
            report.note(format!(
                "ledger snapshot {dir}: channel {} at block {} (height {}), {} files match \
                 _snapshot_signable_metadata.json, snapshot hash {}",
                info.channel,
                info.last_block_number,
                info.height,
                info.files.len(),
                info.snapshot_hash
            ));
        }
        Err(problems) => {
            for p in problems {
                report.problem(dir, format!("ledger snapshot {dir}: {p}"));
            }
        }
    }
}

/// `export=channel-config`: each channel's newest config block as
/// `<channel>.block` (the `common.Block` protobuf `peer channel fetch
/// config` writes) and its config as `<channel>.json` (configtxlator's
/// JSON), one block file in memory at a time.
fn export_channel_config(
    config: &FabricConfig,
    snapshot: &SnapshotReader,
    target: &str,
    overwrite: bool,
) -> Result<(), Error> {
    let mut channels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in snapshot.entries() {
        if e.kind == EntryKind::File
            && let Some(ch) = block_file_channel(&e.path)
        {
            channels.entry(ch.to_string()).or_default().push(e.path.clone());
        }
    }
    if let Some(c) = &config.channel {
        if !channels.contains_key(c) {
            let names = channels.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(Error::InvalidConfig(format!("channel {c} is not in this snapshot; its channels: {names}")));
        }
        channels.retain(|k, _| k == c);
    }
    if channels.is_empty() {
        return Err(Error::Other("the snapshot holds no block files: there is no channel config to export".into()));
    }
    let mut exported = 0usize;
    for (channel, mut paths) in channels {
        host::check_cancelled()?;
        if channel.starts_with('.') || channel.contains(['/', '\\']) {
            host::warn(format!("a channel directory named {channel:?} is not a channel name; not exported"));
            continue;
        }
        paths.sort();
        let mut latest = configtx::LatestConfig::new();
        for p in &paths {
            latest.add_file(&snapshot.read(p)?);
        }
        let Some(record) = latest.finish() else {
            host::warn(format!("channel {channel}: no config block in its block files; nothing exported"));
            continue;
        };
        let block = record.block().map_err(|e| Error::Corrupt(format!("channel {channel}: config block: {e}")))?;
        let json = configtx::config_json(&block)
            .map_err(|e| Error::Corrupt(format!("channel {channel}: config block {}: {e}", block.number)))?;
        for (name, bytes) in [
            (format!("{channel}.block"), configtx::block_protobuf(&block)),
            (format!("{channel}.json"), configtx::configtxlator_text(&json).into_bytes()),
        ] {
            let dest = join(target, &name);
            if !overwrite && fs::metadata(&dest).is_ok() {
                return Err(Error::Other(format!("{dest} exists; pass --force to overwrite it")));
            }
            fs::write(&dest, bytes).map_err(|e| Error::from(e).context(&dest))?;
        }
        exported += 1;
        host::info(format!(
            "channel {channel}: config block {} exported as {channel}.block and {channel}.json",
            block.number
        ));
    }
    if exported == 0 {
        return Err(Error::Other("no channel had a config block to export".into()));
    }
    Ok(())
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
        let mut found = Walk::default();
        walk(&root, "", sink, &mut found)?;
        for dir in &found.unfinished {
            host::info(format!("left out {}: a ledger snapshot Fabric is still writing", join(&root, dir)));
        }
        // The LevelDB stores first: their live sets, consistently.
        // (The walk added their directory entries.)
        for rel in &found.leveldbs {
            coffer_lsm::copy::backup::<LevelDb>(&join(&root, rel), rel, parent.is_some(), sink)?;
        }
        let mut files = found.files;
        for (channel, blocks) in back_up_ledger_snapshots(&root, &mut files, parent.is_some(), sink)? {
            let list = blocks.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            sink.set_attribute(&format!("{SNAPSHOTS_ATTR}{channel}"), &list)?;
        }

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
        let mut needs = 0usize;
        for (channel, mut list) in channels {
            host::check_cancelled()?;
            list.sort_by(|a, b| a.rel.cmp(&b.rel));
            let last = list.len() - 1;
            // A last file unchanged since the parent snapshot (which stored
            // it whole: no partly written block then) is kept unread, at the
            // parent's height.
            let parent_height = parent
                .and_then(|p| p.attribute(&format!("{HEIGHT_ATTR}{channel}")))
                .and_then(|v| v.parse::<u64>().ok());
            let last_kept = parent_height.is_some()
                && sink.reuse_unchanged(&list[last].rel, list[last].size, list[last].mtime, list[last].mode);
            if last_kept {
                reused += 1;
            }
            // Otherwise the files that must be read: the last, and the ones
            // before it back to one that holds a complete block (for the
            // height); each with where its whole records end.
            let mut height: Option<u64> = if last_kept { parent_height } else { None };
            let mut undecodable = false;
            let mut contents: BTreeMap<usize, (Vec<u8>, usize)> = BTreeMap::new();
            for i in (0..list.len()).rev().filter(|_| !last_kept) {
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
                let complete = scan.complete_len as usize;
                contents.insert(i, (bytes, complete));
                if height.is_some() || undecodable {
                    break;
                }
            }
            let height = height.unwrap_or(0);
            for (i, f) in list.iter().enumerate() {
                if i == last && last_kept {
                    continue;
                }
                if let Some((bytes, complete)) = contents.get(&i) {
                    let keep = *complete;
                    let partial_tail = bytes.len() - keep;
                    if partial_tail > 0 {
                        if i == last {
                            host::warn(format!(
                                "{}: left out a partly written block ({} bytes at byte {keep}); channel {channel} is \
                                 backed up to height {height}",
                                join(&root, &f.rel),
                                partial_tail
                            ));
                        } else {
                            host::warn(format!(
                                "{}: {} bytes at its end do not form a block; kept as they are",
                                join(&root, &f.rel),
                                partial_tail
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
                // Rolling this snapshot forward needs the channel's blocks
                // from its height on.
                if needs < MAX_STREAM_NEEDS {
                    sink.need_stream(&follow::stream_name(&channel), height)?;
                    needs += 1;
                } else if needs == MAX_STREAM_NEEDS {
                    host::warn(format!(
                        "more than {MAX_STREAM_NEEDS} channels: retention keeps block streams for the first \
                         {MAX_STREAM_NEEDS} only on behalf of this snapshot"
                    ));
                    needs += 1;
                }
            }
        }
        host::info(format!("kept {reused} unchanged files from the parent snapshot"));
        Ok(())
    }

    fn restore(config: FabricConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        let target = options.directory()?.trim_end_matches('/').to_string();
        if config.export.is_some() {
            return export_channel_config(&config, snapshot, &target, options.force);
        }
        let roll = roll_plan(&config, snapshot)?;
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
        if let Some((until, channels)) = roll {
            let reader = snapshot.streams();
            for (channel, files, height) in channels {
                host::check_cancelled()?;
                let dest: Vec<String> = files.iter().map(|f| join(&target, f)).collect();
                let reached = follow::roll_forward(&reader, &channel, &dest, height, until)?;
                host::info(format!(
                    "channel {channel}: rolled forward from height {height} to height {reached} with stream {}; the \
                     peer indexes the added blocks and brings its state and history databases up to them when it \
                     starts",
                    follow::stream_name(&channel)
                ));
            }
        }
        Ok(())
    }

    fn follow(config: FabricConfig, sink: &StreamSink) -> Result<(), Error> {
        let root = root(&config);
        let md = fs::metadata(&root).map_err(|e| Error::from(e).context(&root))?;
        if !md.is_dir() {
            return Err(Error::InvalidConfig(format!("ledger_dir: {root} is not a directory")));
        }
        let settings = follow::Settings {
            max_bytes: config.item_max_bytes,
            max_age: std::time::Duration::from_secs(config.item_max_seconds),
            poll: std::time::Duration::from_millis(config.poll_ms),
            from_oldest: config.start.as_deref() != Some("newest"),
        };
        follow::follow(&root, settings, sink)
    }

    fn verify(_config: FabricConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let mut channels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Files per directory (name → size), for the LevelDB stores and
        // the ledger snapshots.
        let mut dirs: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for e in snapshot.entries() {
            if e.kind != EntryKind::File {
                continue;
            }
            if let Some(ch) = block_file_channel(&e.path) {
                channels.entry(ch.to_string()).or_default().push(e.path.clone());
            } else if let Some((dir, name)) = e.path.rsplit_once('/') {
                dirs.entry(dir.to_string()).or_default().insert(name.to_string(), e.size);
            }
        }
        for (dir, files) in &dirs {
            host::check_cancelled()?;
            if leveldb::looks_like_leveldb(files.keys().map(String::as_str)) {
                verify_leveldb(snapshot, dir, files, &mut report)?;
            } else if ledger_snapshot::snapshot_dir(dir).is_some() {
                verify_ledger_snapshot(snapshot, dir, files, &mut report);
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
                let bytes = snapshot.read(p)?;
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
            if r.signed_blocks > 0 {
                report.note(format!("channel {channel}: {}", r.signature_rule()));
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
