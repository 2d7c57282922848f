//! Valid inputs to start each target's corpus from, made with coffer's own
//! writers where it has them, so that the fuzzer begins inside each format
//! instead of at its magic number. `cargo xtask fuzz` writes them into
//! `fuzz/corpus/<target>/` (`fuzz-seeds DIR`).

use coffer_fuzz_formats::{archive, rdb};
use coffer_repo::Id;
use coffer_repo::blob::{BlobKind, Compression};
use coffer_repo::chunker::ChunkerParams;
use coffer_repo::crypto::MasterSecret;
use coffer_repo::repofile::config::{DEFAULT_PACK_SIZE, RepoConfig};
use coffer_repo::repofile::epoch::EpochFile;
use coffer_repo::repofile::index::{IndexFile, IndexedPack};
use coffer_repo::repofile::keyfile::{KdfParams, KeyFile};
use coffer_repo::repofile::pack::{PackBuilder, PackBytes, PackEntry};
use coffer_repo::repofile::tree::{Entry, EntryKind, encode_entries};
use coffer_repo::shares;

use crate::repo::{REPO_ID, keys};

/// Every seed: (target, bytes).
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, data: Vec<u8>| out.push((name, data));
    let keys = keys();
    let key = keys.epoch_zero();

    // pack: a whole pack, and a header's plaintext behind an area length.
    let mut b = PackBuilder::with_capacity(256);
    b.add(BlobKind::Data, Id([2; 32]), &[9; 40], 12).expect("in memory");
    b.add(BlobKind::Tree, Id([3; 32]), &[8; 30], 7).expect("in memory");
    let finished = b.finish(&key).expect("in memory");
    let PackBytes::Memory(bytes) = finished.bytes else { unreachable!("built in memory") };
    add("pack", bytes);
    let mut header = 70u64.to_le_bytes().to_vec();
    header.push(1);
    header.extend_from_slice(&2u32.to_le_bytes());
    for (kind, id, len, raw) in [(0u8, 2u8, 40u32, 12u32), (1, 3, 30, 7)] {
        header.push(kind);
        header.extend_from_slice(&[id; 32]);
        header.extend_from_slice(&len.to_le_bytes());
        header.extend_from_slice(&raw.to_le_bytes());
    }
    add("pack", header);

    // blob: raw and zstd plaintexts.
    let text = b"coffer coffer coffer coffer coffer coffer coffer coffer".repeat(4);
    let mut raw = vec![0, 0, 1, 0, 0, 0];
    raw.extend_from_slice(&text);
    add("blob", raw);
    let mut z = vec![3, 0, 1, 0, 0, 1];
    z.extend_from_slice(&zstd::bulk::compress(&text, 3).expect("zstd"));
    add("blob", z);
    let _ = Compression::default();

    // index: version 2 with a superseded file and two packs.
    let entry = PackEntry { kind: BlobKind::Data, id: Id([7; 32]), offset: 0, length: 50, raw_len: 9 };
    let file = IndexFile {
        supersedes: vec![Id([1; 32])],
        packs: vec![
            IndexedPack { id: Id([2; 32]), size: 99, epoch: 0, blobs: vec![entry] },
            IndexedPack { id: Id([3; 32]), size: 120, epoch: 2, blobs: vec![entry, entry] },
        ],
    };
    add("index", file.encode());

    // snapshot: a manifest and a WAL object.
    add("snapshot", SNAPSHOT.as_bytes().to_vec());
    add("snapshot", WAL_OBJECT.as_bytes().to_vec());

    // tree: a few entries of each kind.
    let entries = vec![
        Entry {
            path: "a".into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            size: 0,
            target: None,
            content: vec![],
            blake3: None,
        },
        Entry {
            path: "a/b.txt".into(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime: -3,
            mtime_nsec: 0,
            size: 12,
            target: None,
            content: vec![Id([4; 32]), Id([5; 32])],
            blake3: Some(Id([6; 32])),
        },
        Entry {
            path: "a/link".into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            mtime: 0,
            mtime_nsec: 999_999_999,
            size: 0,
            target: Some("b.txt".into()),
            content: vec![],
            blake3: None,
        },
    ];
    add("tree", encode_entries(&entries));

    // keyfile: a key file, an epoch file, a config.
    let secret = MasterSecret::from_bytes([7; 32]);
    let kf = KeyFile::create(&secret, b"fuzz", KdfParams::insecure_fast(), &REPO_ID, "seed").expect("key file");
    add("keyfile", serde_json::to_vec(&kf).expect("serializes"));
    let (ef, _) = EpochFile::create(keys, &REPO_ID, 1);
    add("keyfile", serde_json::to_vec(&ef).expect("serializes"));
    let mut config = RepoConfig::new(ChunkerParams::default(), Compression::default(), DEFAULT_PACK_SIZE);
    config.sign(keys);
    add("keyfile", serde_json::to_vec(&config).expect("serializes"));

    // share: the payloads of a 2-of-3 split, and one share's line.
    let split = shares::split(&secret, &REPO_ID, 2, 3).expect("split");
    let mut payloads = Vec::new();
    for s in &split {
        let code: String = s.code().chars().filter(|c| *c != '-').collect();
        let raw = crate::repo::share_code_decode(&code);
        payloads.extend_from_slice(&raw[..48]);
    }
    add("share", payloads);
    add("share", split[0].line().as_bytes().to_vec());

    // wal_page: the first page of a 16 MiB segment.
    let mut page = vec![0u8; 64];
    page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    page[2..4].copy_from_slice(&2u16.to_le_bytes());
    page[4..8].copy_from_slice(&1u32.to_le_bytes());
    page[8..16].copy_from_slice(&0x300_0000u64.to_le_bytes());
    page[24..32].copy_from_slice(&7_283_947_561_234_567_890u64.to_le_bytes());
    page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
    page[36..40].copy_from_slice(&8192u32.to_le_bytes());
    add("wal_page", page);

    // wal_text: names, an LSN, a history file, a time, an object name.
    for t in [
        "000000010000000000000003",
        "000000010000000000000003.partial",
        "000000010000000000000003.00000028.backup",
        "00000002.history",
        "16/B374D848",
        "1\t0/3000158\tno recovery target specified\n2\t0/5000000\tat restore point\n",
        "2026-05-01 10:00:00.25+02:00",
        "pg-7283947561234567890/000000010000000000000003",
    ] {
        add("wal_text", t.as_bytes().to_vec());
    }

    // rdb: header, aux fields, a database with a string, an LZF string, a
    // listpack hash and an intset, an expiry, EOF and CRC.
    let mut f = b"REDIS0011".to_vec();
    f.extend_from_slice(&[0xfa, 9]);
    f.extend_from_slice(b"redis-ver");
    f.extend_from_slice(&[5]);
    f.extend_from_slice(b"7.2.4");
    f.extend_from_slice(&[0xfe, 0, 0xfb, 4, 1]);
    f.extend_from_slice(&[0, 1, b'k', 1, b'v']);
    f.extend_from_slice(&[0xfc]);
    f.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
    f.extend_from_slice(&[0, 1, b'z', 0xc3, 4, 8, 0, b'a', 0xa0, 0]);
    f.extend_from_slice(&[16, 1, b'h', 13, 13, 0, 0, 0, 2, 0, 0x81, b'f', 2, 0x81, b'v', 2, 0xff]);
    f.extend_from_slice(&[11, 1, b's', 12, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 2, 0]);
    f.push(0xff);
    let crc = rdb::CRC64.checksum(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    let mut shallow = vec![0x07];
    shallow.extend_from_slice(&f);
    add("rdb", shallow);
    let mut captured = vec![0xbf];
    captured.extend_from_slice(&f);
    add("rdb", captured);

    // lzf: "aaaaaaaa" as a literal and a back reference.
    add("lzf", vec![8, 0, 0, 0, 0, b'a', 0xa0, 0]);

    // compact: a listpack, a ziplist, an intset, a zipmap.
    add("compact", vec![0, 13, 0, 0, 0, 2, 0, 0x81, b'f', 2, 0x81, b'v', 2, 0xff]);
    add("compact", vec![1, 19, 0, 0, 0, 13, 0, 0, 0, 2, 0, 0, 1, b'f', 3, 0xfe, 7, 0xff]);
    add("compact", vec![2, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 2, 0]);
    add("compact", vec![3, 2, 1, b'k', 1, 0, b'v', 0xff]);

    // aof: a manifest, and commands with an annotation.
    add(
        "aof",
        b"file appendonly.aof.1.base.rdb seq 1 type b\nfile \"appendonly.aof.1.incr.aof\" seq 1 type i\n".to_vec(),
    );
    add("aof", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n#TS:1700000000\r\n*1\r\n$4\r\nPING\r\n".to_vec());

    // pg_tar: a file and a directory header, checksums made by the target.
    let mut blocks = vec![1u8];
    for (path, kind, size) in [("base/1/1234", b'0', "00000001000"), ("base/1", b'5', "00000000000")] {
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[124..135].copy_from_slice(size.as_bytes());
        h[136..147].copy_from_slice(b"14707101234");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        crate::postgres::set_checksum(&mut h);
        blocks.extend_from_slice(&h);
    }
    add("pg_tar", blocks);

    // pg_manifest: a manifest body (the target adds the checksum line) and a label.
    add("pg_manifest", MANIFEST.as_bytes().to_vec());
    add("pg_manifest", LABEL.as_bytes().to_vec());

    // mongo_archive: one written by the plugin's writer (a collection, an
    // empty one, a time-series collection's buckets, the oplog), read in
    // 8-byte and whole pieces, and one mongodump 3.4 wrote.
    let doc = |v: &str| {
        let mut d = vec![0u8; 4];
        d.extend_from_slice(&[0x02, b'v', 0]);
        d.extend_from_slice(&(v.len() as i32 + 1).to_le_bytes());
        d.extend_from_slice(v.as_bytes());
        d.extend_from_slice(&[0, 0]);
        let len = d.len() as i32;
        d[..4].copy_from_slice(&len.to_le_bytes());
        d
    };
    let header = archive::ArchiveHeader::new("7.0.4", "coffer");
    let collections = [
        (archive::CollectionMetadata::new("app", "users", r#"{"indexes":[],"type":"collection"}"#), Some(doc("a"))),
        (archive::CollectionMetadata::new("app", "empty", "{}"), None),
        (archive::CollectionMetadata::new("app", "ts", r#"{"options":{},"type":"timeseries"}"#), Some(doc("b"))),
    ];
    let readers = collections.iter().map(|(c, d)| (c.clone(), d.as_deref()));
    let oplog = doc("op");
    let (written, _) =
        archive::write_archive(Vec::new(), "seed", &header, readers, Some(&oplog[..])).expect("in memory");
    add("mongo_archive", [&[0x07][..], &written].concat());
    add("mongo_archive", [&[0x3f][..], &written].concat());
    let real = include_bytes!("../../../tests/fixtures/mongodb/mongorestore-testdata/test.bar.archive");
    add("mongo_archive", [&[0x00][..], &real[..]].concat());
    out
}

const SNAPSHOT: &str = r#"{"version":1,"time":"2026-12-07T08:00:00Z","tenant":"default","source":"db","hostname":"h",
"plugin":{"name":"postgres","version":"0.1.0","digest":""},"config":{"url":"postgres://u:p@h/db","n":1.5,
"password":"x"},"kind":"incremental","parent":"0707070707070707070707070707070707070707070707070707070707070707",
"tags":["t"],"attributes":{"start_lsn":"0/3000028"},"tree":["0505050505050505050505050505050505050505050505050505050505050505"],
"summary":{"entries":3,"files":1,"dirs":1,"symlinks":1,"bytes":12,"reused_entries":0,"bytes_read":12,"new_blobs":2,
"new_bytes":12,"stored_bytes":90,"new_packs":1,"started":"2026-12-07T08:00:00Z","finished":"2026-12-07T08:00:01.5Z"}}"#;

const WAL_OBJECT: &str = r#"{"version":1,"stream":"pg-42","name":"000000010000000000000003","size":16777216,
"blake3":"ab","chunks":["0505050505050505050505050505050505050505050505050505050505050505"],
"places":[{"pack":"0606060606060606060606060606060606060606060606060606060606060606","offset":0,"length":90,
"raw_len":12,"epoch":0}],"pushed":"2026-12-07T08:00:00Z","host":"h"}"#;

const MANIFEST: &str = r#"{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 7283947561234567890,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2026-12-02 15:11:28 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "2403c2b7" },
{ "Encoded-Path": "676c6f62616c2f31323631", "Size": 8192, "Last-Modified": "2026-12-02 15:11:28 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "00" },
{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-12-02 15:11:27 GMT" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/3000028", "End-LSN": "0/3000138" }
],"#;

const LABEL: &str = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nCHECKPOINT LOCATION: \
                     0/3000080\nBACKUP METHOD: streamed\nSTART TIMELINE: 1\n";
