//! LevelDB directories (Fabric's block index, state, history, private-data,
//! ledger-provider, bookkeeping and config-history stores, written by
//! goleveldb): which files make up the database, read from `CURRENT` and
//! its manifest ([`LevelDb`] is the flavor [`crate::copy`] copies).
//!
//! What a LevelDB directory holds (LevelDB's `doc/impl.md`, goleveldb's
//! `storage/file_storage.go`):
//! - `CURRENT`: the name of the live manifest, `MANIFEST-NNNNNN\n`.
//! - `MANIFEST-NNNNNN`: a log-format file of version edits; replayed in
//!   order they give the live tables, the log number and the sequence.
//! - `NNNNNN.ldb` (`.sst` in older LevelDB): sorted tables, immutable once
//!   written; the manifest lists them only after they are complete.
//! - `NNNNNN.log`: the write-ahead logs holding writes not yet in a table;
//!   those numbered at least the manifest's log number (and its previous
//!   log number) are replayed on open.
//! - Not part of the database state: `LOCK`, the info logs `LOG` and
//!   `LOG.old`, `CURRENT.bak` and goleveldb's pending `CURRENT.NNN`,
//!   `.tmp`/`.dbtmp` files, older manifests, and tables and logs that a
//!   compaction or flush made obsolete but that are still on disk.

use std::collections::BTreeMap;

use crate::copy::{Flavor, LeftOut, LiveSet, LiveTable, TableMeta};
use crate::log::read_log;
use crate::{LsmError, length_prefixed, parse_current, varint};

/// LevelDB, as a flavor of [`crate::copy`].
#[derive(Debug, Clone, Copy)]
pub struct LevelDb;

impl Flavor for LevelDb {
    type Manifest = Manifest;
    const NAME: &'static str = "LevelDB";

    fn live_set(current: &[u8], manifest: &[u8], names: &[&str]) -> Result<LiveSet<Manifest>, LsmError> {
        live_set(current, manifest, names.iter().copied())
    }
}

// ---------------------------------------------------------------------------
// Version edits (LevelDB's db/version_edit.cc, goleveldb's session_record.go)

/// Field tags of a version edit; each is a varint, followed by its value.
mod tag {
    /// Length-prefixed name of the key comparator.
    pub const COMPARATOR: u64 = 1;
    /// Varint: the oldest log still needed.
    pub const LOG_NUMBER: u64 = 2;
    /// Varint: the next file number to hand out.
    pub const NEXT_FILE_NUMBER: u64 = 3;
    /// Varint: the last sequence number written to a table.
    pub const LAST_SEQUENCE: u64 = 4;
    /// Varint level, length-prefixed internal key.
    pub const COMPACT_POINTER: u64 = 5;
    /// Varint level, varint file number: a table leaves the version.
    pub const DELETED_FILE: u64 = 6;
    /// Varint level, number and size; length-prefixed smallest and
    /// largest internal keys: a table joins the version.
    pub const NEW_FILE: u64 = 7;
    // 8 was used for large value references, long gone.
    /// Varint: the log before `LOG_NUMBER`, still needed (older LevelDB).
    pub const PREV_LOG_NUMBER: u64 = 9;
}

/// The database state a manifest describes: its version edits replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The comparator's name (`leveldb.BytewiseComparator` for Fabric).
    pub comparator: Option<String>,
    /// Logs numbered at least this are still needed.
    pub log_number: u64,
    /// A log still needed besides those (0: none).
    pub prev_log_number: u64,
    /// The next file number LevelDB will hand out.
    pub next_file_number: u64,
    /// The last sequence number in the tables.
    pub last_sequence: u64,
    /// The live tables, by file number.
    pub tables: BTreeMap<u64, TableMeta>,
    /// How many version edits the manifest holds.
    pub edits: usize,
    /// Bytes up to the end of the last complete record.
    pub complete_len: usize,
    /// Bytes after it: an edit being appended when the manifest was read.
    pub partial_tail: usize,
}

/// Parses a manifest's bytes (`file` names it in errors): checks every
/// record's CRC and replays the version edits. An edit cut short at the
/// end (being appended) is left out and counted in `partial_tail`.
pub fn parse_manifest(file: &str, bytes: &[u8]) -> Result<Manifest, LsmError> {
    let err = |offset: usize, reason: String| LsmError { file: file.to_string(), offset: Some(offset as u64), reason };
    let scan = read_log(bytes, true).map_err(|e| err(e.offset, e.reason))?;
    let mut comparator = None;
    let mut log_number = None;
    let mut prev_log_number = 0;
    let mut next_file_number = None;
    let mut last_sequence = None;
    let mut tables: BTreeMap<u64, TableMeta> = BTreeMap::new();
    for (i, (offset, rec)) in scan.records.iter().enumerate() {
        let bad = |what: &str| err(*offset, format!("version edit {} (of {}): {what}", i + 1, scan.records.len()));
        let mut pos = 0;
        let mut deleted = Vec::new();
        let mut added = Vec::new();
        while pos < rec.len() {
            let t = varint(rec, &mut pos).ok_or_else(|| bad("a field tag is cut short"))?;
            let num = |pos: &mut usize, what: &str| varint(rec, pos).ok_or_else(|| bad(&format!("bad {what}")));
            match t {
                tag::COMPARATOR => {
                    let name = length_prefixed(rec, &mut pos).ok_or_else(|| bad("bad comparator name"))?;
                    comparator = Some(String::from_utf8_lossy(name).into_owned());
                }
                tag::LOG_NUMBER => log_number = Some(num(&mut pos, "log number")?),
                tag::PREV_LOG_NUMBER => prev_log_number = num(&mut pos, "previous log number")?,
                tag::NEXT_FILE_NUMBER => next_file_number = Some(num(&mut pos, "next file number")?),
                tag::LAST_SEQUENCE => last_sequence = Some(num(&mut pos, "last sequence number")?),
                tag::COMPACT_POINTER => {
                    num(&mut pos, "compaction pointer level")?;
                    length_prefixed(rec, &mut pos).ok_or_else(|| bad("bad compaction pointer key"))?;
                }
                tag::DELETED_FILE => {
                    let level = num(&mut pos, "deleted file's level")?;
                    let number = num(&mut pos, "deleted file's number")?;
                    deleted.push((level, number));
                }
                tag::NEW_FILE => {
                    let level = num(&mut pos, "new file's level")?;
                    let number = num(&mut pos, "new file's number")?;
                    let size = num(&mut pos, "new file's size")?;
                    length_prefixed(rec, &mut pos).ok_or_else(|| bad("bad new file's smallest key"))?;
                    length_prefixed(rec, &mut pos).ok_or_else(|| bad("bad new file's largest key"))?;
                    let level = u32::try_from(level).map_err(|_| bad(&format!("new file's level {level}")))?;
                    added.push(TableMeta { number, level, size, column_family: 0 });
                }
                other => return Err(bad(&format!("unknown field tag {other}"))),
            }
        }
        // Within an edit, deletions apply before additions (a table moved
        // to the next level is deleted at one and added at the other).
        for (level, number) in deleted {
            if tables.get(&number).is_some_and(|t| u64::from(t.level) == level) {
                tables.remove(&number);
            }
        }
        for t in added {
            tables.insert(t.number, t);
        }
    }
    let missing = |what: &str| LsmError {
        file: file.to_string(),
        offset: None,
        reason: format!("no version edit sets the {what}; LevelDB refuses to open such a manifest"),
    };
    Ok(Manifest {
        comparator,
        log_number: log_number.ok_or_else(|| missing("log number"))?,
        prev_log_number,
        next_file_number: next_file_number.ok_or_else(|| missing("next file number"))?,
        last_sequence: last_sequence.ok_or_else(|| missing("last sequence number"))?,
        tables,
        edits: scan.records.len(),
        complete_len: scan.complete_len,
        partial_tail: scan.partial_tail,
    })
}

// ---------------------------------------------------------------------------
// File names (LevelDB's db/filename.cc, goleveldb's fsParseName)

/// What a file in a LevelDB directory is, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `NNNNNN.ldb` or `NNNNNN.sst`: a table.
    Table(u64),
    /// `NNNNNN.log`: a write-ahead log.
    Log(u64),
    /// `MANIFEST-NNNNNN`.
    Manifest(u64),
    /// `CURRENT`.
    Current,
    /// `CURRENT.bak` (goleveldb's copy of the previous `CURRENT`) or
    /// `CURRENT.NNN` (goleveldb's `CURRENT` being replaced).
    CurrentCopy,
    /// `NNNNNN.tmp` (goleveldb) or `NNNNNN.dbtmp` (LevelDB): a file being
    /// written.
    Temp,
    /// `LOCK`.
    Lock,
    /// `LOG` or `LOG.old`: the human-readable info log.
    InfoLog,
    /// Anything else.
    Other,
}

/// Classifies a file of a LevelDB directory by its name.
pub fn file_kind(name: &str) -> FileKind {
    match name {
        "CURRENT" => return FileKind::Current,
        "LOCK" => return FileKind::Lock,
        "LOG" | "LOG.old" => return FileKind::InfoLog,
        "CURRENT.bak" => return FileKind::CurrentCopy,
        _ => {}
    }
    if let Some(n) = name.strip_prefix("MANIFEST-").and_then(crate::number) {
        return FileKind::Manifest(n);
    }
    if name.strip_prefix("CURRENT.").and_then(crate::number).is_some() {
        return FileKind::CurrentCopy;
    }
    if let Some((stem, ext)) = name.split_once('.')
        && let Some(n) = crate::number(stem)
    {
        return match ext {
            "ldb" | "sst" => FileKind::Table(n),
            "log" => FileKind::Log(n),
            "tmp" | "dbtmp" => FileKind::Temp,
            _ => FileKind::Other,
        };
    }
    FileKind::Other
}

/// True when a directory with these file names is a LevelDB database (it
/// has `CURRENT` and a manifest).
pub fn looks_like_leveldb<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut current, mut manifest) = (false, false);
    for n in names {
        match file_kind(n) {
            FileKind::Current => current = true,
            FileKind::Manifest(_) => manifest = true,
            _ => {}
        }
    }
    current && manifest
}

// ---------------------------------------------------------------------------
// The live set

/// Works out the live set: `current` is `CURRENT`'s bytes, `manifest` the
/// bytes of the manifest it names, `names` the directory's file names. A
/// log is live when its number is at least the manifest's log number, or
/// is its previous log number (what LevelDB and goleveldb replay on open).
pub fn live_set<'a>(
    current: &[u8],
    manifest: &[u8],
    names: impl IntoIterator<Item = &'a str>,
) -> Result<LiveSet<Manifest>, LsmError> {
    let (manifest_name, _) = parse_current(current)?;
    let m = parse_manifest(&manifest_name, manifest)?;
    let mut left_out = LeftOut::default();
    let mut tables: BTreeMap<u64, String> = BTreeMap::new();
    let mut logs: BTreeMap<u64, String> = BTreeMap::new();
    for name in names {
        match file_kind(name) {
            FileKind::Table(n) if m.tables.contains_key(&n) => {
                // goleveldb opens `.ldb` first, then the old `.sst` name.
                match tables.get(&n) {
                    Some(prev) if prev.ends_with(".ldb") => left_out.other.push(name.to_string()),
                    Some(prev) => {
                        left_out.other.push(prev.clone());
                        tables.insert(n, name.to_string());
                    }
                    None => {
                        tables.insert(n, name.to_string());
                    }
                }
            }
            FileKind::Table(_) => left_out.obsolete_tables.push(name.to_string()),
            FileKind::Log(n) if n >= m.log_number || n == m.prev_log_number => {
                logs.insert(n, name.to_string());
            }
            FileKind::Log(_) => left_out.old_logs.push(name.to_string()),
            FileKind::Manifest(_) if name == manifest_name => {}
            FileKind::Manifest(_) => left_out.old_manifests.push(name.to_string()),
            FileKind::Current => {}
            _ => left_out.other.push(name.to_string()),
        }
    }
    let missing_tables = m.tables.keys().filter(|n| !tables.contains_key(n)).copied().collect();
    let tables = tables.into_iter().map(|(n, name)| LiveTable { name, meta: m.tables[&n] }).collect();
    Ok(LiveSet {
        manifest_name,
        log_number: m.log_number,
        manifest_complete_len: m.complete_len,
        manifest_partial_tail: m.partial_tail,
        manifest: m,
        tables,
        missing_tables,
        logs: logs.into_values().collect(),
        extra: Vec::new(),
        left_out,
    })
}

// ---------------------------------------------------------------------------
// Backup

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::testing::{DiskDir, names_of};
    use crate::copy::*;
    use crate::log::*;
    use coffer_sdk::{Error, Timestamp};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Writes logical records in the log format, as LevelDB's writer does.
    fn write_log(records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for rec in records {
            let mut left = &rec[..];
            let mut first = true;
            loop {
                let block_left = BLOCK_SIZE - out.len() % BLOCK_SIZE;
                if block_left < HEADER_SIZE {
                    out.resize(out.len() + block_left, 0);
                    continue;
                }
                let n = left.len().min(block_left - HEADER_SIZE);
                let last = n == left.len();
                let kind = match (first, last) {
                    (true, true) => FULL_TYPE,
                    (true, false) => FIRST_TYPE,
                    (false, true) => LAST_TYPE,
                    (false, false) => MIDDLE_TYPE,
                };
                out.extend_from_slice(&masked_crc(kind, &left[..n]).to_le_bytes());
                out.extend_from_slice(&(n as u16).to_le_bytes());
                out.push(kind);
                out.extend_from_slice(&left[..n]);
                left = &left[n..];
                first = false;
                if last {
                    break;
                }
            }
        }
        out
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A version edit: `fields` of (tag, value) for the numeric ones,
    /// then deleted (level, number) and new (level, number, size).
    fn edit(fields: &[(u64, u64)], deleted: &[(u64, u64)], added: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut e = Vec::new();
        for &(t, v) in fields {
            put_varint(&mut e, t);
            if t == tag::COMPARATOR {
                put_bytes(&mut e, b"leveldb.BytewiseComparator");
            } else {
                put_varint(&mut e, v);
            }
        }
        for &(level, n) in deleted {
            put_varint(&mut e, tag::DELETED_FILE);
            put_varint(&mut e, level);
            put_varint(&mut e, n);
        }
        for &(level, n, size) in added {
            put_varint(&mut e, tag::NEW_FILE);
            put_varint(&mut e, level);
            put_varint(&mut e, n);
            put_varint(&mut e, size);
            put_bytes(&mut e, b"a\x01\x00\x00\x00\x00\x00\x00\x00");
            put_bytes(&mut e, b"z\x01\x00\x00\x00\x00\x00\x00\x00");
        }
        e
    }

    fn base_edit() -> Vec<u8> {
        edit(
            &[(tag::COMPARATOR, 0), (tag::LOG_NUMBER, 3), (tag::NEXT_FILE_NUMBER, 9), (tag::LAST_SEQUENCE, 100)],
            &[],
            &[(0, 4, 1000), (1, 5, 2000)],
        )
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fabric")
    }

    fn live_of(dir: &Path) -> LiveSet<Manifest> {
        let current = std::fs::read(dir.join("CURRENT")).unwrap();
        let (name, _) = parse_current(&current).unwrap();
        let manifest = std::fs::read(dir.join(&name)).unwrap();
        let names = names_of(dir);
        live_set(&current, &manifest, names.iter().map(String::as_str)).unwrap()
    }

    #[test]
    fn fabric_v2_block_index_live_set() {
        let dir = fixtures().join("v2/glued_together/ledgersData/chains/index");
        let live = live_of(&dir);
        assert_eq!(live.manifest_name, "MANIFEST-000004");
        assert_eq!(live.manifest.comparator.as_deref(), Some("leveldb.BytewiseComparator"));
        assert_eq!(live.manifest.log_number, 3);
        assert_eq!(live.manifest.next_file_number, 5);
        assert_eq!(live.manifest.last_sequence, 43);
        assert_eq!(live.manifest.partial_tail, 0);
        assert_eq!(
            live.tables,
            vec![LiveTable {
                name: "000002.ldb".into(),
                meta: TableMeta { number: 2, level: 0, size: 1507, column_family: 0 }
            }]
        );
        assert_eq!(std::fs::metadata(dir.join("000002.ldb")).unwrap().len(), 1507);
        assert!(live.missing_tables.is_empty());
        // The fixture has no 000003.log (empty logs were not kept).
        assert!(live.logs.is_empty());
        assert_eq!(live.left_out.other, vec!["CURRENT.bak", "LOCK", "LOG"]);
        assert_eq!(live.files(), vec!["000002.ldb", "MANIFEST-000004", "CURRENT"]);
    }

    #[test]
    fn fabric_v13_sample_ledger_live_sets() {
        let tmp = tempfile::tempdir().unwrap();
        let zip = std::fs::File::open(fixtures().join("v1.3-sample-ledger.zip")).unwrap();
        zip::ZipArchive::new(zip).unwrap().extract(tmp.path()).unwrap();
        let root = tmp.path().join("ledgersData");
        let mut seen = 0;
        for store in ["bookkeeper", "chains/index", "configHistory", "historyLeveldb", "ledgerProvider", "pvtdataStore"]
        {
            let dir = root.join(store);
            assert!(looks_like_leveldb(names_of(&dir).iter().map(String::as_str)), "{store}");
            let live = live_of(&dir);
            assert_eq!(live.manifest_name, "MANIFEST-000000", "{store}");
            // goleveldb's first manifest: two edits, the second moving to log 1.
            assert_eq!(live.manifest.edits, 2, "{store}");
            assert_eq!(live.manifest.log_number, 1, "{store}");
            assert_eq!(live.manifest.next_file_number, 2, "{store}");
            assert!(live.tables.is_empty(), "{store}");
            assert_eq!(live.logs, vec!["000001.log"], "{store}");
            assert_eq!(live.left_out.other, vec!["LOCK", "LOG"], "{store}");
            // The log itself reads cleanly.
            let log = std::fs::read(dir.join("000001.log")).unwrap();
            let scan = read_log(&log, true).unwrap();
            assert_eq!(scan.complete_len, log.len(), "{store}");
            seen += 1;
        }
        assert_eq!(seen, 6);
        assert!(!looks_like_leveldb(names_of(&root.join("chains/chains/ledger1")).iter().map(String::as_str)));
    }

    #[test]
    fn edits_replay_deletions_moves_and_prev_log() {
        let m = write_log(&[
            base_edit(),
            // A compaction: 4 and 5 out, 6 in at level 1.
            edit(&[(tag::LAST_SEQUENCE, 200)], &[(0, 4), (1, 5)], &[(1, 6, 3000)]),
            // A trivial move: 6 from level 1 to level 2.
            edit(&[], &[(1, 6)], &[(2, 6, 3000)]),
            // A deletion naming the wrong level changes nothing.
            edit(&[], &[(0, 6)], &[]),
            // A flush: log 7 needed, 3 still needed as the previous one.
            edit(&[(tag::LOG_NUMBER, 7), (tag::PREV_LOG_NUMBER, 3), (tag::NEXT_FILE_NUMBER, 10)], &[], &[(0, 8, 50)]),
        ]);
        let parsed = parse_manifest("MANIFEST-000002", &m).unwrap();
        assert_eq!(parsed.edits, 5);
        assert_eq!(
            parsed.tables.values().copied().collect::<Vec<_>>(),
            vec![
                TableMeta { number: 6, level: 2, size: 3000, column_family: 0 },
                TableMeta { number: 8, level: 0, size: 50, column_family: 0 }
            ]
        );
        let names = [
            "000003.log",
            "000004.ldb",
            "000005.sst",
            "000006.ldb",
            "000008.sst",
            "000001.log",
            "000007.log",
            "000009.log",
            "MANIFEST-000001",
            "MANIFEST-000002",
            "CURRENT",
            "CURRENT.bak",
            "CURRENT.12",
            "000010.tmp",
            "LOG.old",
        ];
        let live = live_set(b"MANIFEST-000002\n", &m, names).unwrap();
        assert_eq!(live.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["000006.ldb", "000008.sst"]);
        assert_eq!(live.logs, ["000003.log", "000007.log", "000009.log"]);
        assert_eq!(live.left_out.obsolete_tables, ["000004.ldb", "000005.sst"]);
        assert_eq!(live.left_out.old_logs, ["000001.log"]);
        assert_eq!(live.left_out.old_manifests, ["MANIFEST-000001"]);
        assert_eq!(live.left_out.other, ["CURRENT.bak", "CURRENT.12", "000010.tmp", "LOG.old"]);
        assert_eq!(live.left_out.len(), 8);
    }

    #[test]
    fn records_spanning_blocks_and_block_padding() {
        // A big edit spanning three blocks, then edits placed so that one
        // header falls in the last 6 bytes of a block.
        let mut big = base_edit();
        for n in 10..4000u64 {
            big.extend(edit(&[], &[], &[(3, n, n)]));
        }
        assert!(big.len() > 2 * BLOCK_SIZE);
        let mut records = vec![big];
        for n in 4000..6000u64 {
            records.push(edit(&[], &[(3, n - 3990)], &[(3, n, 1)]));
        }
        let m = write_log(&records);
        let scan = read_log(&m, true).unwrap();
        assert_eq!(scan.records.len(), records.len());
        assert_eq!(scan.complete_len, m.len());
        for ((_, got), want) in scan.records.iter().zip(&records) {
            assert_eq!(got, want);
        }
        let parsed = parse_manifest("M", &m).unwrap();
        assert_eq!(parsed.tables.len(), 2 + 3990);
    }

    #[test]
    fn partial_tail_is_left_out() {
        let full = write_log(&[base_edit(), edit(&[], &[(0, 4)], &[(1, 9, 7)])]);
        let first_len = write_log(&[base_edit()]).len();
        for cut in [first_len + 3, first_len + 7, full.len() - 1] {
            let m = parse_manifest("MANIFEST-000002", &full[..cut]).unwrap();
            assert_eq!(m.edits, 1);
            assert_eq!(m.complete_len, first_len);
            assert_eq!(m.partial_tail, cut - first_len);
            assert!(m.tables.contains_key(&4));
            assert_eq!(log_complete_len(&full[..cut]), first_len);
        }
        // A fragmented record whose last fragment is not written yet.
        let mut big = base_edit();
        big.resize(BLOCK_SIZE + 100, 0);
        let two = write_log(&[base_edit(), big]);
        let m = read_log(&two[..BLOCK_SIZE + 10], true).unwrap();
        assert_eq!(m.records.len(), 1);
        assert_eq!(m.complete_len, first_len);
    }

    #[test]
    fn damaged_manifests_are_named_errors() {
        let good = write_log(&[base_edit(), edit(&[], &[(0, 4)], &[])]);
        let second = write_log(&[base_edit()]).len();
        let check = |bytes: &[u8], want: &str| {
            let e = parse_manifest("MANIFEST-000002", bytes).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("MANIFEST-000002"), "{text}");
            assert!(text.contains(want), "{text} should say {want}");
        };
        // A flipped payload byte.
        let mut b = good.clone();
        b[second + HEADER_SIZE] ^= 0x40;
        check(&b, &format!("at byte {second}: record checksum mismatch"));
        // A flipped CRC byte.
        let mut b = good.clone();
        b[0] ^= 1;
        check(&b, "at byte 0: record checksum mismatch");
        // An unknown record type.
        let mut b = good.clone();
        b[second + 6] = 9;
        let crc = masked_crc(9, &b[second + HEADER_SIZE..]);
        b[second..second + 4].copy_from_slice(&crc.to_le_bytes());
        check(&b, &format!("at byte {second}: unknown record type 9"));
        // A length running past the block.
        let mut b = good.clone();
        b[4..6].copy_from_slice(&40000u16.to_le_bytes());
        check(&b, "runs past the end of its 32 KiB block");
        // A LAST fragment with no FIRST.
        let mut b = good.clone();
        b[6] = LAST_TYPE;
        let crc = masked_crc(LAST_TYPE, &b[HEADER_SIZE..second]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        check(&b, "without the fragment that starts it");
        // Unknown tag, cut-short field, missing required fields.
        check(&write_log(&[vec![8, 1]]), "version edit 1 (of 1): unknown field tag 8");
        check(
            &write_log(&[base_edit(), vec![tag::NEW_FILE as u8, 0, 5]]),
            "version edit 2 (of 2): bad new file's size",
        );
        check(&write_log(&[vec![tag::LOG_NUMBER as u8, 0x80]]), "bad log number");
        check(&write_log(&[edit(&[(tag::LOG_NUMBER, 1), (tag::LAST_SEQUENCE, 1)], &[], &[])]), "next file number");
        // CURRENT.
        assert!(parse_current(b"MANIFEST-000002").unwrap_err().to_string().contains("newline"));
        assert!(parse_current(b"000002.log\n").unwrap_err().to_string().contains("does not name a manifest"));
        assert_eq!(parse_current(b"MANIFEST-000002\n").unwrap(), ("MANIFEST-000002".to_string(), 2));
    }

    #[test]
    fn file_kinds() {
        assert_eq!(file_kind("000012.ldb"), FileKind::Table(12));
        assert_eq!(file_kind("000012.sst"), FileKind::Table(12));
        assert_eq!(file_kind("000012.log"), FileKind::Log(12));
        assert_eq!(file_kind("MANIFEST-000012"), FileKind::Manifest(12));
        assert_eq!(file_kind("MANIFEST-"), FileKind::Other);
        assert_eq!(file_kind("CURRENT.000012"), FileKind::CurrentCopy);
        assert_eq!(file_kind("000012.dbtmp"), FileKind::Temp);
        assert_eq!(file_kind("x12.ldb"), FileKind::Other);
        assert_eq!(file_kind("000012.ldb.bak"), FileKind::Other);
        assert_eq!(file_kind("LOG.old"), FileKind::InfoLog);
    }

    // -----------------------------------------------------------------
    // A database written by the real LevelDB library (Debian's
    // python3-plyvel), with compactions.

    /// The Python with Debian's plyvel: /usr/bin/python3 (a python3 found
    /// first on PATH, from pyenv or a venv, may lack it).
    fn plyvel_python() -> &'static str {
        for py in ["/usr/bin/python3", "python3"] {
            if Command::new(py).args(["-c", "import plyvel"]).output().is_ok_and(|o| o.status.success()) {
                return py;
            }
        }
        panic!(
            "this test needs Python's plyvel (LevelDB's own library) to write a real LevelDB database: install the \
             Debian package python3-plyvel (apt-get install python3-plyvel)"
        );
    }

    fn python(py: &str, script: &str, args: &[&Path]) {
        let out = Command::new(py).arg("-c").arg(script).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes keys with small write buffers so that LevelDB flushes and
    /// compacts, deletes some, reopens (a new manifest), leaves writes in
    /// the log; then puts back a table and a manifest LevelDB had deleted
    /// (what a crash between a compaction and its cleanup leaves). The
    /// expected contents go to `expect` as JSON (hex pairs).
    const WRITE_DB: &str = r#"
import json, os, shutil, sys, plyvel
d, expect, keep = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(keep)
def opendb():
    return plyvel.DB(d, create_if_missing=True, write_buffer_size=16 * 1024, max_file_size=16 * 1024,
                     compression=None)
db = opendb()
for i in range(6000):
    db.put(b'k%06d' % i, (b'v%d-' % i) * 10)
db.close()
old_manifest = open(os.path.join(d, 'CURRENT')).read().strip()
shutil.copy(os.path.join(d, old_manifest), os.path.join(keep, old_manifest))
db = opendb()
for n in os.listdir(d):
    if n.endswith('.ldb'):
        shutil.copy(os.path.join(d, n), os.path.join(keep, n))
for i in range(6000):
    db.put(b'k%06d' % i, (b'w%d-' % i) * 10)
for i in range(0, 6000, 3):
    db.delete(b'k%06d' % i)
db.compact_range()
for i in range(6000, 6050):
    db.put(b'k%06d' % i, b'in the log')
db.delete(b'k000001')
json.dump([[k.hex(), v.hex()] for k, v in db], open(expect, 'w'))
db.close()
for n in os.listdir(keep):
    if not os.path.exists(os.path.join(d, n)):
        shutil.copy(os.path.join(keep, n), os.path.join(d, n))
# Whether the compactions above deleted a table in time depends on
# LevelDB's background thread: one stray table is always there.
shutil.copy(os.path.join(keep, sorted(n for n in os.listdir(keep) if n.endswith('.ldb'))[0]),
            os.path.join(d, '999990.ldb'))
"#;

    /// Opens the database with LevelDB (paranoid checks on) and compares
    /// every key and value with `expect`.
    const CHECK_DB: &str = r#"
import json, sys, plyvel
d, expect = sys.argv[1], sys.argv[2]
db = plyvel.DB(d, paranoid_checks=True)
got = [[k.hex(), v.hex()] for k, v in db]
want = json.load(open(expect))
db.close()
if got != want:
    sys.exit('LevelDB reads %d pairs, %d expected' % (len(got), len(want)))
"#;

    #[test]
    fn real_leveldb_with_compactions() {
        let py = plyvel_python();
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        let expect = tmp.path().join("expect.json");
        let keep = tmp.path().join("keep");
        python(py, WRITE_DB, &[&db, &expect, &keep]);
        let live = live_of(&db);
        // Several tables at more than one level, a live log, and what was
        // put back is left out.
        assert!(live.tables.len() >= 3, "{live:?}");
        // The manifest records compactions: more edits than its opening
        // snapshot of the state.
        assert!(live.manifest.edits > 3, "{live:?}");
        assert!(live.tables.iter().any(|t| t.meta.level > 0), "{live:?}");
        assert!(live.missing_tables.is_empty());
        assert_eq!(live.logs.len(), 1, "{live:?}");
        // Every file put back that LevelDB had deleted is left out.
        let kept = names_of(&keep);
        let live_names = live.files();
        for n in kept.iter().filter(|n| !live_names.contains(n)) {
            let left_out = live.left_out.obsolete_tables.contains(n) || live.left_out.old_manifests.contains(n);
            assert!(left_out, "{n} {live:?}");
        }
        assert!(live.left_out.obsolete_tables.contains(&"999990.ldb".to_string()), "{live:?}");
        assert!(kept.iter().any(|n| live.left_out.old_manifests.contains(n)), "{kept:?} {live:?}");
        assert!(live.left_out.other.contains(&"LOCK".to_string()));
        for t in &live.tables {
            assert_eq!(std::fs::metadata(db.join(&t.name)).unwrap().len(), t.meta.size, "{}", t.name);
            // LevelDB's tables pass the table check, every block walked.
            let r = crate::table::check_table(&t.name, &std::fs::read(db.join(&t.name)).unwrap()).unwrap();
            assert_eq!((r.format_version, r.checksum), (0, crate::table::ChecksumType::Crc32c), "{}", t.name);
            assert!(r.data_blocks_walked && r.data_blocks > 0 && r.meta_blocks >= 2, "{} {r:?}", t.name);
        }
        // What LevelDB itself needs: delete everything else, then LevelDB
        // must open the database and read every key back.
        let files = live.files();
        for name in names_of(&db) {
            if !files.contains(&name) {
                std::fs::remove_file(db.join(&name)).unwrap();
            }
        }
        // The check has teeth: without one live table, or without the live
        // log, LevelDB does not give the same contents back. (Copies made
        // first: opening the database makes LevelDB flush and rewrite.)
        let mut without = Vec::new();
        for drop in [live.tables[0].name.clone(), live.logs[0].clone()] {
            let copy = tmp.path().join(format!("without-{drop}"));
            std::fs::create_dir(&copy).unwrap();
            for name in live.files() {
                if name != drop {
                    std::fs::copy(db.join(&name), copy.join(&name)).unwrap();
                }
            }
            without.push((drop, copy));
        }
        // The backup's own copy, restored into an empty directory.
        let restored = tmp.path().join("restored");
        std::fs::create_dir(&restored).unwrap();
        let r = copy_live_set::<LevelDb>(&mut DiskDir { dir: db.clone(), out: restored.clone() }, "db").unwrap();
        assert_eq!((r.tables, r.logs, r.rounds), (live.tables.len(), 1, 1));
        let mut want = live.files();
        want.sort();
        assert_eq!(names_of(&restored), want);
        python(py, CHECK_DB, &[&restored, &expect]);
        python(py, CHECK_DB, &[&db, &expect]);
        for (drop, copy) in without {
            let out = Command::new(py).arg("-c").arg(CHECK_DB).arg(&copy).arg(&expect).output().unwrap();
            assert!(!out.status.success(), "LevelDB read the same contents without {drop}");
        }
    }

    // -----------------------------------------------------------------
    // The consistent copy, against a directory that changes under it.

    /// A directory in memory; `on_add_files` runs once, when tables are
    /// first copied (a compaction happening during the copy).
    struct FakeDir {
        files: BTreeMap<String, Vec<u8>>,
        parent: BTreeMap<String, u64>,
        stored: BTreeMap<String, Vec<u8>>,
        adds: Vec<String>,
        on_add_files: Vec<Change>,
        /// Changes made right after a log is read (a flush or compaction
        /// between reading the logs and copying the tables).
        on_read_log: Vec<Change>,
    }

    /// A change to the fake directory's files.
    type Change = Box<dyn FnOnce(&mut BTreeMap<String, Vec<u8>>)>;

    impl FakeDir {
        fn new(files: &[(&str, Vec<u8>)]) -> Self {
            FakeDir {
                files: files.iter().map(|(n, b)| (n.to_string(), b.clone())).collect(),
                parent: BTreeMap::new(),
                stored: BTreeMap::new(),
                adds: Vec::new(),
                on_add_files: Vec::new(),
                on_read_log: Vec::new(),
            }
        }

        fn store(&mut self, name: &str, bytes: Vec<u8>) {
            assert!(!self.adds.contains(&name.to_string()), "{name} stored twice");
            self.adds.push(name.to_string());
            self.stored.insert(name.to_string(), bytes);
        }
    }

    impl LsmDir for FakeDir {
        fn list(&mut self) -> Result<Vec<ListedFile>, Error> {
            Ok(self
                .files
                .iter()
                .map(|(n, b)| ListedFile {
                    name: n.clone(),
                    size: b.len() as u64,
                    mtime: Timestamp { seconds: 1, nanoseconds: 0 },
                    mode: 0o644,
                    is_file: true,
                })
                .collect())
        }

        fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
            let got = self.files.get(name).cloned();
            if name.ends_with(".log") && !self.on_read_log.is_empty() {
                let f = self.on_read_log.remove(0);
                f(&mut self.files);
            }
            Ok(got)
        }

        fn reuse_unchanged(&mut self, file: &ListedFile) -> bool {
            if self.parent.get(&file.name) == Some(&file.size) {
                self.store(&file.name.clone(), b"(from the parent)".to_vec());
                return true;
            }
            false
        }

        fn add_files(&mut self, names: &[String]) -> Result<Vec<bool>, Error> {
            let mut out = Vec::new();
            for n in names {
                match self.files.get(n).cloned() {
                    Some(b) => {
                        self.store(n, b);
                        out.push(true);
                    }
                    None => out.push(false),
                }
            }
            if !self.on_add_files.is_empty() {
                let f = self.on_add_files.remove(0);
                f(&mut self.files);
            }
            Ok(out)
        }

        fn add_bytes(&mut self, file: &ListedFile, bytes: &[u8]) -> Result<(), Error> {
            self.store(&file.name, bytes.to_vec());
            Ok(())
        }
    }

    fn table(n: usize) -> Vec<u8> {
        vec![n as u8; n]
    }

    #[test]
    fn copy_of_a_quiet_database() {
        let manifest = write_log(&[base_edit()]);
        let log = write_log(&[b"batch one".to_vec(), b"batch two".to_vec()]);
        let mut partial_log = log.clone();
        partial_log.extend_from_slice(&[1, 2, 3]);
        let mut dir = FakeDir::new(&[
            ("CURRENT", b"MANIFEST-000002\n".to_vec()),
            ("MANIFEST-000002", manifest.clone()),
            ("MANIFEST-000001", b"old".to_vec()),
            ("000004.ldb", table(1000)),
            ("000005.ldb", table(2000)),
            ("000001.ldb", table(5)),
            ("000003.log", partial_log),
            ("LOCK", vec![]),
            ("LOG", b"info".to_vec()),
        ]);
        dir.parent.insert("000005.ldb".into(), 2000);
        let r = copy_live_set::<LevelDb>(&mut dir, "/l/stateLeveldb").unwrap();
        // The unchanged table is kept from the parent first, then the
        // others copied, then the log, the manifest and CURRENT.
        assert_eq!(dir.adds, ["000005.ldb", "000004.ldb", "000003.log", "MANIFEST-000002", "CURRENT"]);
        assert_eq!(dir.stored["000003.log"], log);
        assert_eq!(dir.stored["MANIFEST-000002"], manifest);
        assert_eq!((r.tables, r.tables_reused, r.logs, r.rounds, r.partial_bytes), (2, 1, 1, 1, 3));
        assert_eq!(r.left_out.to_string(), "1 obsolete tables, 0 old logs, 1 old manifests, 2 other files (LOCK, LOG)");
    }

    /// The manifest after tables 4 and 5 were compacted into 10 (4 and 5
    /// deleted from disk) and log 3 flushed into 11 (log 12 started).
    fn moved_on(files: &mut BTreeMap<String, Vec<u8>>, m2: Vec<u8>) {
        files.remove("000004.ldb");
        files.remove("000005.ldb");
        files.insert("000010.ldb".into(), table(700));
        files.insert("000011.ldb".into(), table(30));
        files.remove("000003.log");
        files.insert("000012.log".into(), write_log(&[b"new writes".to_vec()]));
        files.insert("MANIFEST-000002".into(), m2);
    }

    fn compaction_fixture() -> (FakeDir, Vec<u8>, Vec<u8>) {
        let m1 = write_log(&[base_edit()]);
        let m2 = write_log(&[
            base_edit(),
            edit(&[], &[(0, 4), (1, 5)], &[(1, 10, 700)]),
            edit(&[(tag::LOG_NUMBER, 12), (tag::NEXT_FILE_NUMBER, 13)], &[], &[(0, 11, 30)]),
        ]);
        let dir = FakeDir::new(&[
            ("CURRENT", b"MANIFEST-000002\n".to_vec()),
            ("MANIFEST-000002", m1.clone()),
            ("000004.ldb", table(1000)),
            ("000005.ldb", table(2000)),
            ("000003.log", write_log(&[b"old writes".to_vec()])),
        ]);
        (dir, m1, m2)
    }

    #[test]
    fn a_state_whose_files_were_all_read_is_kept_though_the_database_moved_on() {
        // The compaction and flush come after the log and the tables were
        // read: what was read is the first state, whole.
        let (mut dir, m1, m2) = compaction_fixture();
        dir.on_add_files.push(Box::new(move |f| moved_on(f, m2)));
        let r = copy_live_set::<LevelDb>(&mut dir, "db").unwrap();
        assert_eq!(r.rounds, 1);
        assert_eq!(dir.adds, ["000004.ldb", "000005.ldb", "000003.log", "MANIFEST-000002", "CURRENT"]);
        assert_eq!(dir.stored["MANIFEST-000002"], m1);
        assert_eq!(dir.stored["000003.log"], write_log(&[b"old writes".to_vec()]));
        assert_eq!((r.tables, r.tables_extra, r.logs), (2, 0, 1));
    }

    #[test]
    fn copy_follows_a_compaction_and_a_flush() {
        // The compaction and flush come after the log was read, before the
        // tables were copied: they are gone, so the new state is copied.
        let (mut dir, _, m2) = compaction_fixture();
        let m2c = m2.clone();
        dir.on_read_log.push(Box::new(move |f| moved_on(f, m2c)));
        let r = copy_live_set::<LevelDb>(&mut dir, "db").unwrap();
        assert_eq!(r.rounds, 2);
        assert_eq!(dir.adds, ["000010.ldb", "000011.ldb", "000012.log", "MANIFEST-000002", "CURRENT"]);
        assert_eq!(dir.stored["MANIFEST-000002"], m2);
        assert_eq!((r.tables, r.tables_extra, r.logs), (2, 0, 1));
    }

    #[test]
    fn copy_refuses_a_missing_table_and_a_wrong_size() {
        let manifest = write_log(&[base_edit()]);
        let mut dir = FakeDir::new(&[
            ("CURRENT", b"MANIFEST-000002\n".to_vec()),
            ("MANIFEST-000002", manifest.clone()),
            ("000004.ldb", table(1000)),
        ]);
        let e = copy_live_set::<LevelDb>(&mut dir, "db").unwrap_err().to_string();
        assert!(e.contains("db: table 000005 is not in the directory, yet MANIFEST-000002 lists it"), "{e}");
        let mut dir = FakeDir::new(&[
            ("CURRENT", b"MANIFEST-000002\n".to_vec()),
            ("MANIFEST-000002", manifest),
            ("000004.ldb", table(1000)),
            ("000005.ldb", table(10)),
        ]);
        let e = copy_live_set::<LevelDb>(&mut dir, "db").unwrap_err().to_string();
        assert!(e.contains("db/000005.ldb: the table is 10 bytes; the manifest MANIFEST-000002 says 2000"), "{e}");
        let mut dir = FakeDir::new(&[("CURRENT", b"MANIFEST-000002\n".to_vec())]);
        let e = copy_live_set::<LevelDb>(&mut dir, "db").unwrap_err().to_string();
        assert!(e.contains("db/CURRENT names MANIFEST-000002, which is not in the directory"), "{e}");
        let mut dir = FakeDir::new(&[("LOG", vec![])]);
        let e = copy_live_set::<LevelDb>(&mut dir, "db").unwrap_err().to_string();
        assert!(e.contains("db: no CURRENT file"), "{e}");
    }
}
