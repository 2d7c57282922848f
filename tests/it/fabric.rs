//! The fabric plugin on ledgers written by real Fabric peers and orderers
//! (`tests/fixtures/fabric`, a copy of `../shared/data/fabric`: Fabric's
//! own test data): backup, verify and byte-identical restore of the v1.3
//! sample ledger and the 2.x `sample_prod` ledger (signed by its orderer);
//! the damaged `glued_together` ledger reported where Fabric's own
//! `ledgerutil verify` reports it; flipped bytes, a cut last block and a
//! forged block signed outside the orderer MSP. No Fabric peer runs here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::support::{TestRepo, stderr};

/// `tests/fixtures/fabric`.
fn data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fabric");
    assert!(p.is_dir(), "{} is missing", p.display());
    p
}

const CHANNEL_FILE: &str = "chains/chains/mychannel/blockfile_000000";

/// A copy of a 2.x fixture ledger (`sample_prod`, `glued_together`) in a
/// temp dir, so that tests can damage it.
fn v2_ledger(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&data().join("v2").join(name).join("ledgersData"), &tmp.path().join("ledgersData"));
    tmp
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
            let mut perm = std::fs::metadata(&dest).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&dest, perm).unwrap();
        }
    }
}

/// The v1.3 sample ledger, unzipped in a temp dir.
fn v13_ledger() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::open(data().join("v1.3-sample-ledger.zip")).unwrap();
    zip::ZipArchive::new(file).unwrap().extract(tmp.path()).unwrap();
    tmp
}

/// Every file under `dir`: relative path → bytes.
fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Backs up `ledger`; returns the snapshot id and what the backup said
/// (its summary and warnings).
fn backup_ok(t: &TestRepo, ledger: &Path) -> (String, String) {
    let set = format!("ledger_dir={}", ledger.display());
    let out = t.cmd().env("COFFER_LOG", "info").args(["backup", "fabric", "--set", &set]).output().unwrap();
    assert!(out.status.success(), "backup of {} failed ({}): {}", ledger.display(), out.status, stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let id = said
        .split_whitespace()
        .skip_while(|w| *w != "snapshot")
        .nth(1)
        .unwrap_or_else(|| panic!("no snapshot id in: {said}"))
        .to_string();
    (id, format!("{said}{}", stderr(&out)))
}

fn attributes(t: &TestRepo, id: &str) -> serde_json::Value {
    let snaps = t.json(&["snapshots"]);
    let snap = snaps.as_array().unwrap().iter().find(|s| s["id"].as_str().unwrap().starts_with(id)).unwrap().clone();
    snap["attributes"].clone()
}

/// `coffer verify`: (exit code, stdout + stderr).
fn verify(t: &TestRepo, id: &str) -> (Option<i32>, String) {
    let out = t.coffer(&["verify", id]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out))
}

/// Files of a LevelDB directory that are not part of its state.
const LEVELDB_NOT_STATE: &[&str] = &["LOCK", "LOG", "LOG.old", "CURRENT.bak"];

/// Backs up, verifies clean, restores and compares every file.
fn round_trip(t: &TestRepo, ledger: &Path, heights: &[(&str, &str)], orgs: &str) -> String {
    let (id, said) = backup_ok(t, ledger);
    assert!(!said.contains("partly written"), "{said}");
    let attrs = attributes(t, &id);
    for (channel, height) in heights {
        assert_eq!(attrs[format!("fabric.height.{channel}")], *height, "{attrs}");
    }
    let (code, report) = verify(t, &id);
    assert_eq!(code, Some(0), "{report}");
    for (channel, height) in heights {
        let needle = format!("channel {channel}: height {height}, last config block 0, orderer organisations {orgs}");
        assert!(report.contains(&needle), "{needle:?} missing from:\n{report}");
    }
    let target = t.dir.path().join(format!("restore-{id}"));
    std::fs::create_dir(&target).unwrap();
    let out = t.coffer(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert!(stderr(&out).contains("must be stopped"), "{}", stderr(&out));
    // LevelDB stores come back as their live sets: the lock file, the
    // info logs and CURRENT's backup are not part of a database's state.
    let mut want = all_files(ledger);
    want.retain(|path, _| !LEVELDB_NOT_STATE.iter().any(|n| path.ends_with(&format!("/{n}"))));
    let got = all_files(&target);
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (path, bytes) in &want {
        assert!(got[path] == *bytes, "{path} differs after the restore");
    }
    id
}

#[test]
fn the_v13_sample_ledger_backs_up_verifies_and_restores_byte_for_byte() {
    let t = TestRepo::new();
    let tmp = v13_ledger();
    let ledger = tmp.path().join("ledgersData");
    round_trip(&t, &ledger, &[("ledger1", "9"), ("ledger2", "9")], "SampleOrg");
    // Written by Fabric's test tools: no orderer signs, and the
    // transactions name a dummy channel.
    let (id, said) = backup_ok(&t, &ledger);
    // The block files are kept unread; the LevelDB logs, manifests and
    // CURRENT files are read again (they change in place) and add nothing.
    assert!(said.contains("kept 2 unchanged entries from the parent"), "{said}");
    assert!(said.contains("added 0 B new data"), "{said}");
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("channel ledger1: no block carries an orderer signature"), "{report}");
    assert!(report.contains("name another channel (the first in block 1: \"dummyChannel\")"), "{report}");
}

#[test]
fn the_v2_sample_ledger_verifies_against_its_orderer_and_restores_byte_for_byte() {
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let id = round_trip(&t, &tmp.path().join("ledgersData"), &[("mychannel", "8")], "SampleOrg");
    let report = verify(&t, &id).1;
    assert!(report.contains("7 signed blocks, first bad block none"), "{report}");
}

/// Record offsets and the layout of each block of a block file.
struct Block {
    offset: usize,
    data_hash: usize,
    envelopes: Vec<(usize, usize)>,
    metadata: Vec<(usize, usize)>,
    end: usize,
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for i in 0.. {
        let x = b[*at];
        *at += 1;
        v |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            break;
        }
    }
    v
}

fn blocks(b: &[u8]) -> Vec<Block> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let offset = at;
        let len = varint(b, &mut at) as usize;
        let end = at + len;
        varint(b, &mut at);
        let dh_len = varint(b, &mut at) as usize;
        let data_hash = at;
        at += dh_len;
        let ph_len = varint(b, &mut at) as usize;
        at += ph_len;
        let list = |at: &mut usize| {
            let n = varint(b, at);
            (0..n)
                .map(|_| {
                    let l = varint(b, at) as usize;
                    let s = *at;
                    *at += l;
                    (s, l)
                })
                .collect::<Vec<_>>()
        };
        let envelopes = list(&mut at);
        let metadata = list(&mut at);
        assert_eq!(at, end);
        out.push(Block { offset, data_hash, envelopes, metadata, end });
    }
    out
}

/// Flips one byte of the sample ledger's block file at a position chosen
/// from its layout; returns verify's report.
fn verify_damaged(pick: impl Fn(&[u8], &[Block]) -> usize) -> (String, Vec<Block>) {
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let file = tmp.path().join("ledgersData").join(CHANNEL_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let layout = blocks(&bytes);
    let at = pick(&bytes, &layout);
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let (id, _) = backup_ok(&t, &tmp.path().join("ledgersData"));
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(3), "{report}");
    (report, layout)
}

#[test]
fn the_glued_together_ledger_is_reported_at_block_8_as_fabric_reports_it() {
    let t = TestRepo::new();
    let tmp = v2_ledger("glued_together");
    let ledger = tmp.path().join("ledgersData");
    let layout = blocks(&std::fs::read(ledger.join(CHANNEL_FILE)).unwrap());
    let (id, _) = backup_ok(&t, &ledger);
    assert_eq!(attributes(&t, &id)["fabric.height.mychannel"], "9");
    // v2/expected/glued_together.json: block 8, "transaction 0 has 3183
    // trailing bytes", "DataHash mismatch".
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data().join("v2/expected/glued_together.json")).unwrap()).unwrap();
    let errors: Vec<&str> = expected[0]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(expected[0]["blockNum"], 8);
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(3), "{report}");
    let needle =
        format!("channel mychannel: block 8 ({CHANNEL_FILE} at byte {}): {}", layout[8].offset, errors.join("; "));
    assert!(report.contains(&needle), "{needle:?} missing from:\n{report}");
    assert!(report.contains("first bad block 8"), "{report}");
}

#[test]
fn a_flipped_byte_in_a_transaction_is_reported_at_its_block() {
    let (report, layout) = verify_damaged(|_, l| l[5].envelopes[0].0 + 50);
    let needle = format!("block 5 ({CHANNEL_FILE} at byte {})", layout[5].offset);
    assert!(report.contains(&needle), "{report}");
    assert!(report.contains("DataHash mismatch"), "{report}");
    assert!(report.contains("first bad block 5"), "{report}");
}

#[test]
fn a_flipped_byte_in_a_header_is_reported_at_its_block_and_breaks_the_chain_after_it() {
    let (report, _) = verify_damaged(|_, l| l[3].data_hash + 7);
    assert!(report.contains("first bad block 3"), "{report}");
    assert!(report.contains("block 4 ("), "{report}");
    assert!(report.contains("PreviousHash mismatch"), "{report}");
}

#[test]
fn a_flipped_byte_in_an_orderer_signature_is_reported_at_its_block() {
    // The signatures entry ends with the signature's last byte.
    let (report, _) = verify_damaged(|_, l| {
        let (s, n) = l[6].metadata[0];
        s + n - 1
    });
    assert!(report.contains("first bad block 6"), "{report}");
    assert!(report.contains("block 6 (") && !report.contains("block 7 ("), "{report}");
    assert!(report.contains("signature"), "{report}");
}

#[test]
fn a_flipped_byte_in_the_config_blocks_certificate_is_reported_at_block_0() {
    let (report, _) = verify_damaged(|b, l| {
        let (s, n) = l[0].envelopes[0];
        let env = &b[s..s + n];
        let marker = b"-----BEGIN CERTIFICATE-----\n";
        s + env.windows(marker.len()).position(|w| w == marker).unwrap() + marker.len() + 60
    });
    assert!(report.contains("first bad block 0"), "{report}");
}

#[test]
fn a_cut_last_block_is_left_out_as_partial_and_not_counted_in_the_height() {
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let ledger = tmp.path().join("ledgersData");
    let file = ledger.join(CHANNEL_FILE);
    let bytes = std::fs::read(&file).unwrap();
    let layout = blocks(&bytes);
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let (id, said) = backup_ok(&t, &ledger);
    assert!(said.contains("left out a partly written block"), "{said}");
    assert_eq!(attributes(&t, &id)["fabric.height.mychannel"], "7");
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("channel mychannel: height 7"), "{report}");
    let target = t.dir.path().join("restore");
    std::fs::create_dir(&target).unwrap();
    t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert!(std::fs::read(target.join(CHANNEL_FILE)).unwrap() == bytes[..layout[7].offset]);
}

/// A protobuf length-delimited field.
fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(tag << 3) | 2];
    let mut n = bytes.len();
    loop {
        if n < 0x80 {
            out.push(n as u8);
            break;
        }
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.extend_from_slice(bytes);
    out
}

fn raw(bytes: &[u8]) -> Vec<u8> {
    let mut out = field(0, bytes);
    out.remove(0);
    out
}

/// DER of a header, as Fabric hashes it (numbers below 128).
fn header_der(number: u8, previous: &[u8], data: &[u8]) -> Vec<u8> {
    let body =
        [vec![2, 1, number, 4, previous.len() as u8], previous.to_vec(), vec![4, data.len() as u8], data.to_vec()]
            .concat();
    [vec![0x30, body.len() as u8], body].concat()
}

/// Whether a DER ECDSA P-256 signature's S is at most half the group
/// order (the form Fabric requires).
fn low_s(der: &[u8]) -> bool {
    const HALF_ORDER: [u8; 32] = [
        0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73,
        0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
    ];
    let r_len = der[3] as usize;
    let s_at = 4 + r_len;
    let s = &der[s_at + 2..s_at + 2 + der[s_at + 1] as usize];
    // DER puts a zero byte before an integer whose top bit is set.
    let s = match s {
        [0, rest @ ..] => rest,
        _ => s,
    };
    s.len() < 32 || (s.len() == 32 && s <= &HALF_ORDER[..])
}

#[test]
fn a_forged_block_signed_outside_the_orderer_msp_is_reported() {
    use rcgen::SigningKey;
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let ledger = tmp.path().join("ledgersData");
    let file = ledger.join(CHANNEL_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let layout = blocks(&bytes);
    let last = &layout[7];
    // Block 7's header: number 7, previous hash, data hash.
    let mut at = last.offset;
    varint(&bytes, &mut at);
    assert_eq!(varint(&bytes, &mut at), 7);
    let dh = bytes[last.data_hash..last.data_hash + 32].to_vec();
    let ph_at = last.data_hash + 33;
    let ph = bytes[ph_at..ph_at + 32].to_vec();
    let previous: Vec<u8> = Sha256::digest(header_der(7, &ph, &dh)).to_vec();

    // Block 8: block 7's transaction again, chained correctly.
    let (es, en) = last.envelopes[0];
    let envelope = bytes[es..es + en].to_vec();
    let data_hash: Vec<u8> = Sha256::digest(&envelope).to_vec();
    let header = header_der(8, &previous, &data_hash);

    // Signed by a key of the right MSP id but a certificate no orderer CA
    // issued.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["orderer.forger.example".into()]).unwrap().self_signed(&key).unwrap();
    let identity = [field(1, b"SampleOrg"), field(2, cert.pem().as_bytes())].concat();
    let sig_header = [field(1, &identity), field(2, b"nonce-nonce-nonce")].concat();
    // Block 7's signatures entry starts with its value (field 1).
    let (ms, _) = last.metadata[0];
    assert_eq!(bytes[ms], 0x0a);
    let mut p = ms + 1;
    let vlen = varint(&bytes, &mut p) as usize;
    let value = bytes[p..p + vlen].to_vec();
    // Fabric accepts only low-S signatures: sign until S is low, so that
    // only the certificate is wrong.
    let signed = [value.clone(), sig_header.clone(), header.clone()].concat();
    let signature = (0..256).map(|_| key.sign(&signed).unwrap()).find(|s| low_s(s)).expect("a low-S signature");
    let md0 = [field(1, &value), field(2, &[field(1, &sig_header), field(2, &signature)].concat())].concat();

    let mut record = vec![8u8];
    record.extend(raw(&data_hash));
    record.extend(raw(&previous));
    record.push(1);
    record.extend(raw(&envelope));
    record.push(last.metadata.len() as u8);
    record.extend(raw(&md0));
    for &(s, n) in &last.metadata[1..] {
        record.extend(raw(&bytes[s..s + n]));
    }
    assert_eq!(last.end, bytes.len());
    let forged_at = bytes.len();
    bytes.extend(raw(&record));
    std::fs::write(&file, &bytes).unwrap();

    let (id, _) = backup_ok(&t, &ledger);
    assert_eq!(attributes(&t, &id)["fabric.height.mychannel"], "9");
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(3), "{report}");
    let needle = format!("block 8 ({CHANNEL_FILE} at byte {forged_at})");
    assert!(report.contains(&needle), "{needle:?} missing from:\n{report}");
    assert!(report.contains("BlockValidation policy (ImplicitMeta ANY Writers) is not satisfied"), "{report}");
    assert!(report.contains("is not 'SampleOrg.member': it was not issued by a CA of MSP SampleOrg"), "{report}");
    assert!(!report.contains("PreviousHash") && !report.contains("DataHash"), "{report}");
    assert!(report.contains("first bad block 8"), "{report}");
}

#[test]
fn backups_taken_while_a_writer_appends_blocks_are_consistent_at_their_heights() {
    let t = TestRepo::new();
    let sample = std::fs::read(data().join("v2/sample_prod/ledgersData").join(CHANNEL_FILE)).unwrap();
    let layout = blocks(&sample);
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("ledgersData");
    let file = ledger.join(CHANNEL_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    // Block 0 and half of block 1 are there before the first backup: it
    // stops at height 1 whatever the timing below.
    let half = (layout[1].offset + layout[1].end) / 2;
    std::fs::write(&file, &sample[..half]).unwrap();
    let (first, said) = backup_ok(&t, &ledger);
    assert!(said.contains("left out a partly written block"), "{said}");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (file, sample, done) = (file.clone(), sample.clone(), done.clone());
        let mut cuts: Vec<(usize, usize)> = vec![(half, layout[1].end)];
        cuts.extend(layout[2..].iter().map(|b| (b.offset, b.end)));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
            // Each block in two writes, as a peer's write may land.
            for (start, end) in cuts {
                let mid = (start + end) / 2;
                f.write_all(&sample[start..mid]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(250));
                f.write_all(&sample[mid..end]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut snapshots = vec![first];
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        snapshots.push(backup_ok(&t, &ledger).0);
    }
    writer.join().unwrap();
    snapshots.push(backup_ok(&t, &ledger).0);
    let mut heights = std::collections::BTreeSet::new();
    for (k, id) in snapshots.iter().enumerate() {
        let height: usize = attributes(&t, id)["fabric.height.mychannel"].as_str().unwrap().parse().unwrap();
        heights.insert(height);
        let (code, report) = verify(&t, id);
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains(&format!("channel mychannel: height {height},")), "{report}");
        let target = t.dir.path().join(format!("during-{k}"));
        std::fs::create_dir(&target).unwrap();
        t.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        let end = layout[height - 1].end;
        assert!(std::fs::read(target.join(CHANNEL_FILE)).unwrap() == sample[..end], "snapshot {k} at height {height}");
    }
    assert_eq!(heights.first(), Some(&1));
    assert_eq!(heights.last(), Some(&8));
    eprintln!("fabric: {} backups during the writes saw heights {heights:?}", snapshots.len());
}

/// A copy of the `sample_prod` ledger's blocks 0 to `upto` in a temp dir,
/// for tests that append the rest.
struct Growing {
    sample: Vec<u8>,
    layout: Vec<Block>,
    tmp: tempfile::TempDir,
}

impl Growing {
    fn new(upto: usize) -> Growing {
        let sample = std::fs::read(data().join("v2/sample_prod/ledgersData").join(CHANNEL_FILE)).unwrap();
        let layout = blocks(&sample);
        let g = Growing { tmp: tempfile::tempdir().unwrap(), sample, layout };
        std::fs::create_dir_all(g.file().parent().unwrap()).unwrap();
        std::fs::write(g.file(), &g.sample[..g.layout[upto].end]).unwrap();
        g
    }

    fn ledger(&self) -> PathBuf {
        self.tmp.path().join("ledgersData")
    }

    fn file(&self) -> PathBuf {
        self.ledger().join(CHANNEL_FILE)
    }
}

/// `coffer stream follow fabric` with fast polls and items cut each second.
fn follow(t: &TestRepo, ledger: &Path, log: &Path, extra: &[&str]) -> std::process::Child {
    let mut c = t.cmd();
    c.env("COFFER_LOG", "info")
        .args(["stream", "follow", "--plugin", "fabric", "--set"])
        .arg(format!("ledger_dir={}", ledger.display()))
        .args(["--set", "poll_ms=100", "--set", "item_max_seconds=1"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c.spawn().expect("coffer runs")
}

fn stop(mut child: std::process::Child, log: &Path) {
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "follow exited {status}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// The stream's items: (key, position).
fn stream_items(t: &TestRepo, stream: &str) -> Vec<(String, u64)> {
    let v = t.json(&["stream", "list", "--plugin", "fabric", stream]);
    v.as_array()
        .map(|a| a.iter().map(|i| (i["key"].as_str().unwrap().to_string(), i["position"].as_u64().unwrap())).collect())
        .unwrap_or_default()
}

/// Waits until the stream holds block `last`.
fn wait_for_block(t: &TestRepo, last: u64, log: &Path) {
    let start = std::time::Instant::now();
    while stream_items(t, "blocks-mychannel").iter().map(|i| i.1).max().is_none_or(|p| p < last) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the follower did not store block {last}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn append(file: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(file).unwrap().write_all(bytes).unwrap();
}

fn restore_to(t: &TestRepo, id: &str, name: &str, to: &str) -> (PathBuf, std::process::Output) {
    let target = t.dir.path().join(name);
    std::fs::create_dir(&target).unwrap();
    let set = format!("to_height={to}");
    let out = t
        .cmd()
        .env("COFFER_LOG", "info")
        .args(["restore", id, "--target", target.to_str().unwrap(), "--set", &set])
        .output()
        .unwrap();
    (target, out)
}

#[test]
fn followed_blocks_roll_a_restored_ledger_forward_to_any_height() {
    let t = TestRepo::new();
    let g = Growing::new(3);
    let (sample, layout, ledger, file) = (&g.sample, &g.layout, g.ledger(), g.file());
    let (base, _) = backup_ok(&t, &ledger);
    assert_eq!(attributes(&t, &base)["fabric.height.mychannel"], "4");

    let log = t.dir.path().join("follow.log");
    let child = follow(&t, &ledger, &log, &[]);
    wait_for_block(&t, 3, &log);
    // Blocks 4 and 5 committed, block 6 half written: the stream stops at 5.
    append(&file, &sample[layout[4].offset..layout[5].end]);
    let mid = (layout[6].offset + layout[6].end) / 2;
    append(&file, &sample[layout[6].offset..mid]);
    wait_for_block(&t, 5, &log);
    stop(child, &log);
    assert!(stream_items(&t, "blocks-mychannel").iter().all(|i| i.1 <= 5));

    // A restarted follower resumes where the checkpoint says.
    append(&file, &sample[mid..layout[7].end]);
    let child = follow(&t, &ledger, &log, &[]);
    wait_for_block(&t, 7, &log);
    stop(child, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    // Resumed after block 5: from the checkpoint, or (when the stop came
    // between storing an item and saving its checkpoint) after the newest
    // item.
    assert!(
        said.contains("resuming stream blocks-mychannel at block 6")
            || said.contains("the stream holds blocks up to 5; going on after it"),
        "{said}"
    );
    let items = stream_items(&t, "blocks-mychannel");
    let mut covered = Vec::new();
    for (key, pos) in &items {
        let (a, b) = key.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(*pos, b, "{items:?}");
        covered.extend(a..=b);
    }
    assert_eq!(covered, (0..8).collect::<Vec<u64>>(), "each block once, in order: {items:?}");

    // The base backup rolled forward: to a height between, and to the newest.
    let (target, out) = restore_to(&t, &base, "at-6", "6");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(target.join(CHANNEL_FILE)).unwrap() == sample[..layout[5].end]);
    let said = stderr(&out);
    assert!(said.contains("rolled forward from height 4 to height 6"), "{said}");
    let (target, out) = restore_to(&t, &base, "latest", "latest");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(target.join(CHANNEL_FILE)).unwrap() == *sample, "rolled to the newest block");
    // The rolled-forward ledger verifies: back it up and check it.
    let (rolled, _) = backup_ok(&t, &target);
    let (code, report) = verify(&t, &rolled);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("channel mychannel: height 8,"), "{report}");

    // Beyond the stream, or below the snapshot: refused with the reason.
    let (_, out) = restore_to(&t, &base, "past", "9");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds blocks up to 7 only"), "{}", stderr(&out));
    let (_, out) = restore_to(&t, &base, "below", "2");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("above 2; restore an older snapshot"), "{}", stderr(&out));
}

#[test]
fn a_follower_stops_at_a_block_that_does_not_chain_to_the_stream() {
    let t = TestRepo::new();
    let g = Growing::new(6);
    let (sample, layout, ledger, file) = (&g.sample, &g.layout, g.ledger(), g.file());
    let log = t.dir.path().join("follow.log");
    let mut child = follow(&t, &ledger, &log, &["--set", "start=newest"]);
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("at its height, block 7") {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Block 7 of another chain: its previous_hash (after the 32-byte data
    // hash and its length byte) names another block 6.
    let mut other = sample[layout[7].offset..layout[7].end].to_vec();
    other[layout[7].data_hash - layout[7].offset + 33 + 5] ^= 0x01;
    append(&file, &other);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("block 7") && said.contains("does not chain to block 6"), "{said}");
    assert!(stream_items(&t, "blocks-mychannel").is_empty(), "nothing of the other chain is stored");
}

#[test]
fn channel_config_export_writes_the_config_block_and_configtxlators_json() {
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let (id, _) = backup_ok(&t, &tmp.path().join("ledgersData"));
    let out_dir = t.dir.path().join("export");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.to_str().unwrap();
    t.ok(&["restore", &id, "--target", target, "--set", "export=channel-config"]);
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["mychannel.block", "mychannel.json"], "only the export, no ledger");
    // The block: a common.Block protobuf (header, data, metadata) holding
    // block 0's config envelope byte for byte.
    let sample = std::fs::read(data().join("v2/sample_prod/ledgersData").join(CHANNEL_FILE)).unwrap();
    let b0 = &blocks(&sample)[0];
    let (start, len) = b0.envelopes[0];
    let block = std::fs::read(out_dir.join("mychannel.block")).unwrap();
    assert_eq!(block[0], 0x0a, "field 1 (header) first");
    assert!(block.windows(len).any(|w| w == &sample[start..start + len]), "the config envelope is in the block");
    // The JSON: the config as configtxlator decodes it.
    let text = std::fs::read_to_string(out_dir.join("mychannel.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["sequence"], "1", "{text}");
    let org = &json["channel_group"]["groups"]["Orderer"]["groups"]["SampleOrg"];
    assert_eq!(org["values"]["MSP"]["value"]["config"]["name"], "SampleOrg", "{text}");
    assert_eq!(json["channel_group"]["values"]["HashingAlgorithm"]["value"]["name"], "SHA256", "{text}");
    assert_eq!(json["channel_group"]["groups"]["Orderer"]["values"]["BatchTimeout"]["value"]["timeout"], "2s");
    assert!(text.starts_with("{\n\t\""), "tab-indented as configtxlator prints");
    // A second export into the same place is refused unless forced.
    let out = t.coffer(&["restore", &id, "--target", target, "--set", "export=channel-config"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mychannel.block exists; pass --force"), "{}", stderr(&out));
    t.ok(&["restore", &id, "--target", target, "--set", "export=channel-config", "--force"]);
}

#[test]
fn channel_config_export_of_one_channel_of_the_v13_ledger() {
    let t = TestRepo::new();
    let tmp = v13_ledger();
    let (id, _) = backup_ok(&t, &tmp.path().join("ledgersData"));
    let out_dir = t.dir.path().join("export");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.to_str().unwrap();
    t.ok(&["restore", &id, "--target", target, "--set", "export=channel-config", "--set", "channel=ledger2"]);
    assert!(out_dir.join("ledger2.block").is_file() && out_dir.join("ledger2.json").is_file());
    assert!(!out_dir.join("ledger1.block").exists());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("ledger2.json")).unwrap()).unwrap();
    assert!(json["channel_group"]["groups"].as_object().is_some_and(|g| !g.is_empty()), "{json}");
    let out =
        t.coffer(&["restore", &id, "--target", target, "--set", "export=channel-config", "--set", "channel=nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("channel nope is not in this snapshot; its channels: ledger1, ledger2"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_follower_moves_on_to_the_next_block_file_and_finds_its_block_in_a_rewritten_ledger() {
    let t = TestRepo::new();
    let g = Growing::new(3);
    let (sample, layout, ledger, file0) = (&g.sample, &g.layout, g.ledger(), g.file());
    let file1 = file0.with_file_name("blockfile_000001");
    let log = t.dir.path().join("follow.log");
    let child = follow(&t, &ledger, &log, &[]);
    wait_for_block(&t, 3, &log);
    // The peer rolls over to a new file, as it does at its size limit.
    std::fs::write(&file1, &sample[layout[4].offset..layout[5].end]).unwrap();
    wait_for_block(&t, 5, &log);
    stop(child, &log);

    // The ledger is written anew in another layout (one file, as a restore
    // rolled forward writes it): the checkpoint's file is gone, and the
    // follower finds block 6 by its number.
    std::fs::remove_file(&file1).unwrap();
    std::fs::write(&file0, sample).unwrap();
    let child = follow(&t, &ledger, &log, &[]);
    wait_for_block(&t, 7, &log);
    stop(child, &log);
    let said = std::fs::read_to_string(&log).unwrap();
    let at = format!("block 6 is at blockfile_000000 byte {}", layout[6].offset);
    assert!(said.contains(&at), "{at:?} missing:\n{said}");
    let mut covered = Vec::new();
    for (key, _) in stream_items(&t, "blocks-mychannel") {
        let (a, b) = key.split_once('-').unwrap();
        covered.extend(a.parse::<u64>().unwrap()..=b.parse().unwrap());
    }
    assert_eq!(covered, (0..8).collect::<Vec<u64>>());

    // Written anew once more, in two files: the checkpoint's offset is past
    // the end of the shorter first file; block 8 goes after block 7, at the
    // end of the second.
    std::fs::write(&file0, &sample[..layout[5].end]).unwrap();
    std::fs::write(&file1, &sample[layout[6].offset..]).unwrap();
    let child = follow(&t, &ledger, &log, &[]);
    let start = std::time::Instant::now();
    let at = format!("block 8 is at blockfile_000001 byte {}", sample.len() - layout[6].offset);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(&at) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{at:?} missing:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop(child, &log);
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's Python, which has plyvel (LevelDB's own library, through
/// python3-plyvel); the test command installs it.
fn plyvel_python() -> &'static str {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = std::process::Command::new(py).args(["-c", "import plyvel"]).output();
        if ok.is_ok_and(|o| o.status.success()) {
            return py;
        }
    }
    panic!("these tests write LevelDB databases with plyvel: install the Debian package python3-plyvel");
}

/// Writes a LevelDB database at `db` with small write buffers (so that
/// it flushes and compacts every second or so, where a peer's default 4 MiB
/// buffers flush far less often): 5,000 keys `k<n>`, then, once the file
/// `<db>.ready` exists, the keys `s<n>` one write at a time until `<db>.stop`
/// appears; `<db>.count` then says how many.
const LEVELDB_WRITER: &str = r#"
import os, sys, time, plyvel
d = sys.argv[1]
db = plyvel.DB(d, create_if_missing=True, write_buffer_size=128 * 1024, max_file_size=64 * 1024)
for i in range(5000):
    db.put(b"k%08d" % i, (b"value-%d-" % i) * 8)
db.compact_range()
open(d + ".ready", "w").close()
n = 0
while not os.path.exists(d + ".stop") or n < 2000:
    db.put(b"s%08d" % n, b"%d" % n * 40)
    n += 1
    if n % 20 == 0:
        time.sleep(0.002)
db.close()
open(d + ".count", "w").write(str(n))
"#;

/// Reads a LevelDB database back: prints `<keys k> <highest s + 1> <gaps>`
/// after checking every value.
const LEVELDB_READER: &str = r#"
import sys, plyvel
db = plyvel.DB(sys.argv[1], paranoid_checks=True)
k, s = 0, []
for key, value in db:
    if key.startswith(b"k"):
        i = int(key[1:])
        assert value == (b"value-%d-" % i) * 8, key
        k += 1
    else:
        i = int(key[1:])
        assert value == b"%d" % i * 40, key
        s.append(i)
db.close()
top = max(s) + 1 if s else 0
print(k, top, top - len(s))
"#;

#[test]
fn a_leveldb_store_written_during_the_backup_is_copied_as_one_consistent_state() {
    let py = plyvel_python();
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let ledger = tmp.path().join("ledgersData");
    let db = ledger.join("stateLeveldb");
    let scripts = tempfile::tempdir().unwrap();
    let (writer_py, reader_py) = (scripts.path().join("writer.py"), scripts.path().join("reader.py"));
    std::fs::write(&writer_py, LEVELDB_WRITER).unwrap();
    std::fs::write(&reader_py, LEVELDB_READER).unwrap();
    let mut writer = KillOnDrop(std::process::Command::new(py).arg(&writer_py).arg(&db).spawn().unwrap());
    let flag = |ext: &str| PathBuf::from(format!("{}.{ext}", db.display()));
    let start = std::time::Instant::now();
    while !flag("ready").exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the LevelDB writer did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Two backups while the database is written (flushes and compactions
    // run meanwhile); the second keeps unchanged tables unread.
    let (first, said) = backup_ok(&t, &ledger);
    assert!(said.contains("left out (not part of the database state)"), "{said}");
    let (second, _) = backup_ok(&t, &ledger);
    std::fs::write(flag("stop"), b"").unwrap();
    assert!(writer.0.wait().unwrap().success());
    let written: u64 = std::fs::read_to_string(flag("count")).unwrap().parse().unwrap();
    for id in [&first, &second] {
        let (code, report) = verify(&t, id);
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains("LevelDB stateLeveldb: MANIFEST-"), "{report}");
        let target = t.dir.path().join(format!("restore-{id}"));
        std::fs::create_dir(&target).unwrap();
        t.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        let restored = target.join("stateLeveldb");
        for name in std::fs::read_dir(&restored).unwrap().map(|e| e.unwrap().file_name()) {
            let name = name.to_string_lossy().into_owned();
            assert!(!LEVELDB_NOT_STATE.contains(&name.as_str()), "{name} restored");
        }
        let out = std::process::Command::new(py).arg(&reader_py).arg(&restored).output().unwrap();
        assert!(out.status.success(), "LevelDB cannot read the restored store: {}", stderr(&out));
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let nums: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
        assert_eq!(nums[0], 5000, "every key written before the backup is there: {line}");
        assert_eq!(nums[2], 0, "the writes copied are a prefix, without gaps: {line}");
        assert!(nums[1] <= written, "{line} of {written}");
        eprintln!("fabric: snapshot {id} holds {} of the {written} writes made during the backups", nums[1]);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Fabric's ledger snapshot files for channel `mychannel` at block 20:
/// data files and the two metadata files, hashed as Fabric hashes them.
fn write_ledger_snapshot(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut hashes = serde_json::Map::new();
    for (name, content) in [
        ("txids.data", b"\x0a\x04tx-1\x0a\x04tx-2".to_vec()),
        ("txids.metadata", b"\x02".to_vec()),
        ("public_state.data", vec![7u8; 4096]),
        ("public_state.metadata", b"\x01\x00".to_vec()),
    ] {
        std::fs::write(dir.join(name), &content).unwrap();
        hashes.insert(name.into(), sha256_hex(&content).into());
    }
    let signable = serde_json::json!({
        "channel_name": "mychannel",
        "last_block_number": 20,
        "last_block_hash": "6f2c0b2e".repeat(8),
        "previous_block_hash": "1a2b3c4d".repeat(8),
        "state_db_type": "SimpleKeyValueDB",
        "snapshot_files_raw_hashes": hashes,
    });
    let signable = serde_json::to_vec_pretty(&signable).unwrap();
    std::fs::write(dir.join("_snapshot_signable_metadata.json"), &signable).unwrap();
    let additional = serde_json::json!({
        "snapshot_hash": sha256_hex(&signable),
        "last_block_commit_hash": "",
    });
    std::fs::write(dir.join("_snapshot_additional_metadata.json"), serde_json::to_vec_pretty(&additional).unwrap())
        .unwrap();
}

#[test]
fn ledger_snapshots_are_checked_against_their_metadata_and_unfinished_ones_left_out() {
    let t = TestRepo::new();
    let tmp = v2_ledger("sample_prod");
    let ledger = tmp.path().join("ledgersData");
    let snap = ledger.join("snapshots/completed/mychannel/20");
    write_ledger_snapshot(&snap);
    let unfinished = ledger.join("snapshots/temp/mychannel-30-4242");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("txids.data"), b"half").unwrap();
    let (id, said) = backup_ok(&t, &ledger);
    assert!(said.contains("a ledger snapshot Fabric is still writing"), "{said}");
    assert_eq!(attributes(&t, &id)["fabric.snapshots.mychannel"], "20");
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(
            "ledger snapshot snapshots/completed/mychannel/20: channel mychannel at block 20 (height 21), 4 files match"
        ),
        "{report}"
    );
    let target = t.dir.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert!(target.join("snapshots/temp").is_dir() && !target.join("snapshots/temp/mychannel-30-4242").exists());
    for name in ["public_state.data", "_snapshot_signable_metadata.json"] {
        let (a, b) = (
            std::fs::read(snap.join(name)).unwrap(),
            std::fs::read(target.join("snapshots/completed/mychannel/20").join(name)).unwrap(),
        );
        assert!(a == b, "{name}");
    }

    // A data file changed after Fabric wrote the snapshot: the backup
    // warns and stores it; verify reports it at the snapshot.
    let mut data = std::fs::read(snap.join("public_state.data")).unwrap();
    data[100] ^= 1;
    std::fs::write(snap.join("public_state.data"), &data).unwrap();
    let (id, said) = backup_ok(&t, &ledger);
    assert!(said.contains("ledger snapshot snapshots/completed/mychannel/20: public_state.data"), "{said}");
    let (code, report) = verify(&t, &id);
    assert_eq!(code, Some(3), "{report}");
    assert!(report.contains("public_state.data"), "{report}");
}
