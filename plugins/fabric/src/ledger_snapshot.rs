//! Fabric 2.x ledger snapshots: the directories a peer writes for `peer
//! snapshot submitrequest`, `<snapshot root>/completed/<channel>/<last
//! block number>/`, recognised by path and checked against their
//! metadata, as Fabric checks them before joining a channel from one.
//!
//! Facts from Fabric's source (`core/ledger/kvledger/snapshot.go`,
//! `ledger_filepath.go`, `kv_ledger.go`):
//! - The directory is named after the snapshot's last block number (its
//!   height minus one), under `completed/<channel>/`; a snapshot being
//!   written lives in `<snapshot root>/temp/<channel>-<block>-<random>/`
//!   until it is renamed into place. The snapshot root is the peer's
//!   `ledger.snapshots.rootDir` (`/var/hyperledger/production/snapshots`
//!   by default, beside `ledgersData/`).
//! - `_snapshot_signable_metadata.json`: `channel_name`,
//!   `last_block_number`, `last_block_hash`, `previous_block_hash` (hex),
//!   `snapshot_files_raw_hashes` (file name -> hex hash of the file's
//!   bytes) and `state_db_type` (`CouchDB` or `SimpleKeyValueDB`), written
//!   by Go's `json.MarshalIndent` with four spaces and no final newline.
//! - `_snapshot_additional_metadata.json`: `snapshot_hash`, the hash of
//!   the signable metadata file's bytes, and `last_block_commit_hash`.
//! - The hash is SHA-256 (`snapshotHashOpts = &bccsp.SHA256Opts{}`), in
//!   lowercase hex; Fabric compares the hex strings as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The signable metadata file's name.
pub const SIGNABLE_METADATA: &str = "_snapshot_signable_metadata.json";
/// The additional metadata file's name.
pub const ADDITIONAL_METADATA: &str = "_snapshot_additional_metadata.json";
/// The largest metadata file read (a snapshot lists a handful of files;
/// this only bounds what a damaged one makes us hold).
const MAX_METADATA: u64 = 16 << 20;

/// `_snapshot_signable_metadata.json` (Fabric's `SnapshotSignableMetadata`).
/// Go's decoder leaves absent fields empty; so does this one, and the
/// check reports the ones it needs.
#[derive(Debug, Deserialize)]
struct SignableMetadata {
    channel_name: Option<String>,
    last_block_number: Option<u64>,
    last_block_hash: Option<String>,
    previous_block_hash: Option<String>,
    snapshot_files_raw_hashes: Option<BTreeMap<String, String>>,
    state_db_type: Option<String>,
}

/// `_snapshot_additional_metadata.json` (Fabric's
/// `snapshotAdditionalMetadata`).
#[derive(Debug, Deserialize)]
struct AdditionalMetadata {
    snapshot_hash: Option<String>,
    last_block_commit_hash: Option<String>,
}

/// What a snapshot that checks out holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The channel.
    pub channel: String,
    /// The last block in the snapshot.
    pub last_block_number: u64,
    /// The channel's height at the snapshot (`last_block_number + 1`).
    pub height: u64,
    /// Hex hash of the last block's header.
    pub last_block_hash: String,
    /// Hex hash of the block before it.
    pub previous_block_hash: String,
    /// `CouchDB` or `SimpleKeyValueDB` (LevelDB).
    pub state_db_type: String,
    /// Hex SHA-256 of the signable metadata file.
    pub snapshot_hash: String,
    /// Hex commit hash of the last block (empty when the peer keeps none).
    pub last_block_commit_hash: String,
    /// The data files listed, with their checked hashes.
    pub files: BTreeMap<String, String>,
    /// Files in the directory that the metadata does not list (Fabric
    /// ignores them).
    pub unlisted: Vec<String>,
}

fn sha256_hex(mut r: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a snapshot directory as Fabric does before using it: `names`
/// are the files in the directory, `open` opens one by name. Every file
/// the signable metadata lists must be there with the SHA-256 it lists,
/// and the additional metadata's `snapshot_hash` must be the SHA-256 of
/// the signable metadata file. Returns what the snapshot holds, or every
/// problem found (each a sentence naming the file).
pub fn check_snapshot<'a, R: Read>(
    names: impl IntoIterator<Item = &'a str>,
    mut open: impl FnMut(&str) -> io::Result<R>,
) -> Result<SnapshotInfo, Vec<String>> {
    let present: BTreeSet<&str> = names.into_iter().collect();
    let mut problems = Vec::new();
    let mut read_meta = |name: &str, problems: &mut Vec<String>| -> Option<Vec<u8>> {
        if !present.contains(name) {
            problems.push(format!("{name} is missing: without it the snapshot cannot be checked or used"));
            return None;
        }
        let mut bytes = Vec::new();
        match open(name).and_then(|r| r.take(MAX_METADATA + 1).read_to_end(&mut bytes)) {
            Ok(_) if bytes.len() as u64 > MAX_METADATA => {
                problems.push(format!("{name} is larger than {MAX_METADATA} bytes; not a snapshot's metadata"));
                None
            }
            Ok(_) => Some(bytes),
            Err(e) => {
                problems.push(format!("{name} cannot be read: {e}"));
                None
            }
        }
    };
    let signable_bytes = read_meta(SIGNABLE_METADATA, &mut problems);
    let additional_bytes = read_meta(ADDITIONAL_METADATA, &mut problems);

    let signable = signable_bytes.as_deref().and_then(|b| match serde_json::from_slice::<SignableMetadata>(b) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(format!("{SIGNABLE_METADATA} is not the JSON Fabric writes: {e}"));
            None
        }
    });
    let additional = additional_bytes.as_deref().and_then(|b| match serde_json::from_slice::<AdditionalMetadata>(b) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(format!("{ADDITIONAL_METADATA} is not the JSON Fabric writes: {e}"));
            None
        }
    });

    // The signable metadata's own hash.
    let mut snapshot_hash = String::new();
    if let (Some(bytes), Some(add)) = (&signable_bytes, &additional) {
        let actual = sha256_hex(&bytes[..]).unwrap_or_default();
        match &add.snapshot_hash {
            None => problems.push(format!("{ADDITIONAL_METADATA} has no snapshot_hash")),
            Some(h) if *h != actual => problems.push(format!(
                "{SIGNABLE_METADATA} does not match the snapshot_hash in {ADDITIONAL_METADATA}: it records {h}, the \
                 file's SHA-256 is {actual} (the metadata was edited or damaged)"
            )),
            Some(h) => snapshot_hash = h.clone(),
        }
    }

    let mut files = BTreeMap::new();
    let mut info = None;
    if let Some(m) = signable {
        if m.channel_name.as_deref().unwrap_or_default().is_empty() {
            problems.push(format!("{SIGNABLE_METADATA} names no channel (channel_name)"));
        }
        if m.last_block_number.is_none() {
            problems.push(format!("{SIGNABLE_METADATA} has no last_block_number"));
        }
        let listed = m.snapshot_files_raw_hashes.clone().unwrap_or_default();
        if listed.is_empty() {
            problems.push(format!("{SIGNABLE_METADATA} lists no files (snapshot_files_raw_hashes)"));
        }
        for (name, want) in &listed {
            if !present.contains(name.as_str()) {
                problems.push(format!("{name} is listed in {SIGNABLE_METADATA} but missing from the snapshot"));
                continue;
            }
            match open(name).and_then(sha256_hex) {
                Ok(actual) if actual == *want => {
                    files.insert(name.clone(), actual);
                }
                Ok(actual) => problems.push(format!(
                    "{name}: SHA-256 is {actual}; {SIGNABLE_METADATA} records {want} (the file is damaged or was \
                     changed)"
                )),
                Err(e) => problems.push(format!("{name} cannot be read: {e}")),
            }
        }
        let unlisted = present
            .iter()
            .filter(|n| **n != SIGNABLE_METADATA && **n != ADDITIONAL_METADATA && !listed.contains_key(**n))
            .map(|n| n.to_string())
            .collect();
        let last = m.last_block_number.unwrap_or_default();
        info = Some(SnapshotInfo {
            channel: m.channel_name.unwrap_or_default(),
            last_block_number: last,
            height: last.saturating_add(1),
            last_block_hash: m.last_block_hash.unwrap_or_default(),
            previous_block_hash: m.previous_block_hash.unwrap_or_default(),
            state_db_type: m.state_db_type.unwrap_or_default(),
            snapshot_hash,
            last_block_commit_hash: additional.and_then(|a| a.last_block_commit_hash).unwrap_or_default(),
            files,
            unlisted,
        });
    }
    match info {
        Some(info) if problems.is_empty() => Ok(info),
        _ => Err(problems),
    }
}

/// [`check_snapshot`] over files held in memory (name -> bytes).
pub fn check_snapshot_files(files: &BTreeMap<String, Vec<u8>>) -> Result<SnapshotInfo, Vec<String>> {
    check_snapshot(files.keys().map(String::as_str), |name| {
        files.get(name).map(|b| &b[..]).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    })
}

// ---------------------------------------------------------------------------
// Recognising snapshot directories

/// Where a completed snapshot is: `.../completed/<channel>/<block>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    /// The directory's path, as given.
    pub path: String,
    /// The channel, from the path.
    pub channel: String,
    /// The last block number, from the path.
    pub last_block_number: u64,
}

impl SnapshotDir {
    /// Problems with a checked snapshot's place: Fabric names the
    /// directory after the metadata's channel and last block number.
    pub fn check_place(&self, info: &SnapshotInfo) -> Vec<String> {
        let mut p = Vec::new();
        if info.channel != self.channel {
            p.push(format!("{}: the snapshot is of channel {}, not {}", self.path, info.channel, self.channel));
        }
        if info.last_block_number != self.last_block_number {
            p.push(format!(
                "{}: the snapshot ends at block {}, not {}",
                self.path, info.last_block_number, self.last_block_number
            ));
        }
        p
    }
}

/// A Fabric channel name: lowercase letters, digits, dots and dashes,
/// starting with a letter, under 250 characters
/// (`common/configtx/validator.go`).
fn is_channel_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() < 250
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
}

fn block_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The completed snapshot at directory path `dir` (`/`-separated, relative
/// or absolute), when it is `.../completed/<channel>/<block number>`.
pub fn snapshot_dir(dir: &str) -> Option<SnapshotDir> {
    let dir = dir.trim_end_matches('/');
    let mut parts = dir.rsplit('/');
    let block = block_number(parts.next()?)?;
    let channel = parts.next()?;
    if parts.next()? != "completed" || !is_channel_name(channel) {
        return None;
    }
    Some(SnapshotDir { path: dir.to_string(), channel: channel.to_string(), last_block_number: block })
}

/// The completed snapshot a file at path `file` belongs to, and the
/// file's name in it.
pub fn snapshot_file(file: &str) -> Option<(SnapshotDir, &str)> {
    let (dir, name) = file.rsplit_once('/')?;
    Some((snapshot_dir(dir)?, name))
}

/// True for a path inside a snapshot Fabric is still writing (or
/// importing): `.../temp/<channel>-<block>-<random digits>/...`. Fabric
/// renames it into `completed/` when done and removes it otherwise; a
/// backup leaves it out.
pub fn in_unfinished_snapshot(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.windows(2).any(|w| w[0] == "temp" && is_temp_dir_name(w[1]))
}

/// `<channel>-<block>-<random digits>` (Go's `ioutil.TempDir` with the
/// prefix `<channel>-<block>-`).
fn is_temp_dir_name(s: &str) -> bool {
    let mut it = s.rsplitn(3, '-');
    match (it.next(), it.next(), it.next()) {
        (Some(random), Some(block), Some(channel)) => {
            block_number(random).is_some() && block_number(block).is_some() && is_channel_name(channel)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// `_snapshot_signable_metadata.json` and the additional metadata of
    /// a snapshot of channel `mychannel` at block 20, taken by a Fabric
    /// 2.x peer of Fabric's test network (CouchDB state), as printed in a
    /// public write-up on ledger snapshots. 919 bytes: Go's
    /// `json.MarshalIndent` with four spaces, no final newline; its
    /// SHA-256 is the `snapshot_hash` recorded beside it.
    const REAL_SIGNABLE: &str = r#"{
    "channel_name": "mychannel",
    "last_block_number": 20,
    "last_block_hash": "9a9f82a6f30a071245887fa0149573cf1384c55246be5e111dc3dc4e37089599",
    "previous_block_hash": "b4d892f60ff74f46592334eda45b305b11ab12666b1b01d995a8b9d68e11b29e",
    "snapshot_files_raw_hashes": {
        "private_state_hashes.data": "aa6913c9302b0454f7ef9f22fed6904527d80e1d6d179653d3333a55b86ec167",
        "private_state_hashes.metadata": "9cd6329c16f0bb27dd69a0335dc8b4bd99b41f87f705deed63137b6edc025868",
        "public_state.data": "f53473ae57a2c43c2758b7b673bc1429384316c0ad7272403409d03f8d96958a",
        "public_state.metadata": "cd3a0a22d62785f598eaa2f0f40ec0c5e1f1945d406cc26dc55c955502e7dab7",
        "txids.data": "a6311af6e0d9a6a8409d35623b56496b148dbd3a0b67f64cf348b789edd56027",
        "txids.metadata": "764c8a3561c7cf261771b4e1969b84c210836f3c034baebac5e49a394a6ee0a9"
    },
    "state_db_type": "CouchDB"
}"#;
    const REAL_ADDITIONAL: &str = r#"{
    "snapshot_hash": "97dfdcd2795ea713731616a5cf5a92025c4f16fecaf8da62bdd3f671fcf0bf19",
    "last_block_commit_hash": "4123596d9f555997f27a7b07f98680b90346ded5d98ef68e8468c3701fe04b9e"
}"#;

    #[test]
    fn real_metadata_hash_is_sha256_of_the_file() {
        assert_eq!(REAL_SIGNABLE.len(), 919);
        assert_eq!(
            sha256_hex(REAL_SIGNABLE.as_bytes()).unwrap(),
            "97dfdcd2795ea713731616a5cf5a92025c4f16fecaf8da62bdd3f671fcf0bf19"
        );
        // Without its data files, the check reports each of them missing
        // and nothing about the metadata itself.
        let files: BTreeMap<String, Vec<u8>> = [
            (SIGNABLE_METADATA.to_string(), REAL_SIGNABLE.as_bytes().to_vec()),
            (ADDITIONAL_METADATA.to_string(), REAL_ADDITIONAL.as_bytes().to_vec()),
        ]
        .into();
        let problems = check_snapshot_files(&files).unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("is listed in _snapshot_signable_metadata.json but missing")));
    }

    /// Writes metadata the way Fabric does (`json.MarshalIndent` with four
    /// spaces: fields in declaration order, map keys sorted, no final
    /// newline; SHA-256 in lowercase hex).
    fn write_snapshot(dir: &Path, channel: &str, last_block: u64, data: &[(&str, &[u8])]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut hashes = BTreeMap::new();
        for (name, bytes) in data {
            std::fs::write(dir.join(name), bytes).unwrap();
            hashes.insert(name.to_string(), sha256_hex(*bytes).unwrap());
        }
        let signable = serde_json::json!({
            "channel_name": channel,
            "last_block_number": last_block,
            "last_block_hash": "9a9f82a6f30a071245887fa0149573cf1384c55246be5e111dc3dc4e37089599",
            "previous_block_hash": "b4d892f60ff74f46592334eda45b305b11ab12666b1b01d995a8b9d68e11b29e",
            "snapshot_files_raw_hashes": hashes,
            "state_db_type": "SimpleKeyValueDB",
        });
        let signable = go_indent(&signable);
        std::fs::write(dir.join(SIGNABLE_METADATA), &signable).unwrap();
        let additional = serde_json::json!({
            "snapshot_hash": sha256_hex(&signable[..]).unwrap(),
            "last_block_commit_hash": "4123596d9f555997f27a7b07f98680b90346ded5d98ef68e8468c3701fe04b9e",
        });
        std::fs::write(dir.join(ADDITIONAL_METADATA), go_indent(&additional)).unwrap();
    }

    /// serde_json's `json!` keeps insertion order (preserve_order is
    /// off: keys sorted), so the fields are written in Go's order by hand.
    fn go_indent(v: &serde_json::Value) -> Vec<u8> {
        use serde::Serialize;
        let order = [
            "channel_name",
            "last_block_number",
            "last_block_hash",
            "previous_block_hash",
            "snapshot_files_raw_hashes",
            "state_db_type",
            "snapshot_hash",
            "last_block_commit_hash",
        ];
        let obj = v.as_object().unwrap();
        let mut out = b"{\n".to_vec();
        let keys: Vec<&str> = order.iter().copied().filter(|k| obj.contains_key(*k)).collect();
        for (i, k) in keys.iter().enumerate() {
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(
                &mut buf,
                serde_json::ser::PrettyFormatter::with_indent(b"    "),
            );
            obj[*k].serialize(&mut ser).unwrap();
            let text = String::from_utf8(buf).unwrap().replace('\n', "\n    ");
            out.extend_from_slice(format!("    \"{k}\": {text}").as_bytes());
            out.extend_from_slice(if i + 1 < keys.len() { b",\n" } else { b"\n" });
        }
        out.push(b'}');
        out
    }

    fn check_dir(dir: &Path) -> Result<SnapshotInfo, Vec<String>> {
        let names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        check_snapshot(names.iter().map(String::as_str), |name| std::fs::File::open(dir.join(name)))
    }

    const DATA: &[(&str, &[u8])] = &[
        ("txids.data", b"\x01some txids"),
        ("txids.metadata", b"\x01\x02"),
        ("public_state.data", b"\x01state state state"),
        ("public_state.metadata", b"\x01\x01\x05mycc\x03"),
        ("private_state_hashes.data", b"\x01hashes"),
        ("private_state_hashes.metadata", b"\x01\x00"),
        ("confighistory.data", b"\x01config"),
        ("confighistory.metadata", b"\x01\x00"),
    ];

    #[test]
    fn writer_matches_fabric_byte_for_byte() {
        // The test's writer produces exactly the real file from its values.
        let v: serde_json::Value = serde_json::from_str(REAL_SIGNABLE).unwrap();
        assert_eq!(String::from_utf8(go_indent(&v)).unwrap(), REAL_SIGNABLE);
        let v: serde_json::Value = serde_json::from_str(REAL_ADDITIONAL).unwrap();
        assert_eq!(String::from_utf8(go_indent(&v)).unwrap(), REAL_ADDITIONAL);
    }

    #[test]
    fn a_good_snapshot_checks_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snapshots/completed/mychannel/41");
        write_snapshot(&dir, "mychannel", 41, DATA);
        std::fs::write(dir.join("notes.txt"), b"operator's notes").unwrap();
        let info = check_dir(&dir).unwrap();
        assert_eq!((info.channel.as_str(), info.last_block_number, info.height), ("mychannel", 41, 42));
        assert_eq!(info.state_db_type, "SimpleKeyValueDB");
        assert_eq!(info.files.len(), 8);
        assert_eq!(info.files["txids.data"], sha256_hex(&b"\x01some txids"[..]).unwrap());
        assert_eq!(info.unlisted, ["notes.txt"]);
        assert_eq!(info.snapshot_hash, sha256_hex(&std::fs::read(dir.join(SIGNABLE_METADATA)).unwrap()[..]).unwrap());
        let place = snapshot_dir(dir.to_str().unwrap()).unwrap();
        assert!(place.check_place(&info).is_empty());
    }

    #[test]
    fn damaged_missing_and_edited_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        // A damaged data file.
        let dir = tmp.path().join("a/completed/mychannel/41");
        write_snapshot(&dir, "mychannel", 41, DATA);
        std::fs::write(dir.join("public_state.data"), b"\x01state state stat3").unwrap();
        let p = check_dir(&dir).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("public_state.data: SHA-256 is "), "{p:?}");
        assert!(p[0].contains("the file is damaged or was changed"), "{p:?}");
        // A dropped data file.
        let dir = tmp.path().join("b/completed/mychannel/41");
        write_snapshot(&dir, "mychannel", 41, DATA);
        std::fs::remove_file(dir.join("txids.metadata")).unwrap();
        let p = check_dir(&dir).unwrap_err();
        assert_eq!(p, [format!("txids.metadata is listed in {SIGNABLE_METADATA} but missing from the snapshot")]);
        // Edited metadata: a hash changed to match a changed file.
        let dir = tmp.path().join("c/completed/mychannel/41");
        write_snapshot(&dir, "mychannel", 41, DATA);
        std::fs::write(dir.join("txids.data"), b"forged").unwrap();
        let text = std::fs::read_to_string(dir.join(SIGNABLE_METADATA)).unwrap();
        let old = sha256_hex(&b"\x01some txids"[..]).unwrap();
        let text = text.replace(&old, &sha256_hex(&b"forged"[..]).unwrap());
        std::fs::write(dir.join(SIGNABLE_METADATA), text).unwrap();
        let p = check_dir(&dir).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with(&format!("{SIGNABLE_METADATA} does not match the snapshot_hash")), "{p:?}");
        // Edited channel: the metadata hash fails, and the place too.
        let dir = tmp.path().join("d/completed/mychannel/41");
        write_snapshot(&dir, "otherchannel", 40, DATA);
        let info = check_dir(&dir).unwrap();
        let place = snapshot_dir(dir.to_str().unwrap()).unwrap();
        assert_eq!(place.check_place(&info).len(), 2);
        // Missing or unreadable metadata.
        let dir = tmp.path().join("e/completed/mychannel/41");
        write_snapshot(&dir, "mychannel", 41, DATA);
        std::fs::remove_file(dir.join(ADDITIONAL_METADATA)).unwrap();
        std::fs::write(dir.join(SIGNABLE_METADATA), b"{\"channel_name\": 5}").unwrap();
        let p = check_dir(&dir).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with(&format!("{ADDITIONAL_METADATA} is missing")), "{p:?}");
        assert!(p[1].starts_with(&format!("{SIGNABLE_METADATA} is not the JSON Fabric writes")), "{p:?}");
    }

    #[test]
    fn snapshot_paths() {
        let d = snapshot_dir("snapshots/completed/mychannel/20").unwrap();
        assert_eq!((d.channel.as_str(), d.last_block_number), ("mychannel", 20));
        assert!(snapshot_dir("/var/hyperledger/production/snapshots/completed/my-ch.1/0/").is_some());
        // Relative to a backed-up snapshot root.
        assert!(snapshot_dir("completed/mychannel/20").is_some());
        assert!(snapshot_dir("mychannel/20").is_none());
        assert!(snapshot_dir("x/completed/MyChannel/20").is_none());
        assert!(snapshot_dir("x/completed/mychannel/20a").is_none());
        assert!(snapshot_dir("x/done/mychannel/20").is_none());
        let (d, name) = snapshot_file("ledgersData/snapshots/completed/mychannel/20/public_state.data").unwrap();
        assert_eq!((d.path.as_str(), name), ("ledgersData/snapshots/completed/mychannel/20", "public_state.data"));
        assert!(snapshot_file("ledgersData/chains/chains/mychannel/blockfile_000000").is_none());
        assert!(in_unfinished_snapshot("snapshots/temp/mychannel-20-3141592653/txids.data"));
        assert!(in_unfinished_snapshot("snapshots/temp/my-channel-20-3141592653"));
        assert!(!in_unfinished_snapshot("snapshots/temp/notes"));
        assert!(!in_unfinished_snapshot("snapshots/completed/mychannel/20/txids.data"));
    }
}
