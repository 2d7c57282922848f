//! Checks of a base backup: every file against the backup manifest's sizes
//! and checksums (what `pg_verifybackup` does), and the WAL segments the
//! backup carries, page by page up to its stop position.

use std::collections::BTreeMap;
use std::io::Read;

use coffer_pgwal::{LongPageHeader, Lsn, parse_long_header};
use coffer_sdk::{Error, VerifyReport};

use crate::manifest::{Manifest, Summer};

/// Copy buffer for checksums.
pub const BUF: usize = 1 << 20;

/// What [`check_files`] compares with the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// The files a snapshot stores: exactly what the server sent, so every
    /// listed file is checked; the manifest and the WAL may be there unlisted.
    Snapshot,
    /// A restored data directory: like `pg_verifybackup`, the manifest, the
    /// WAL directory (checked on its own) and the files a restore or a
    /// standby set-up adds or changes are left out altogether.
    DataDir,
}

impl Compared {
    /// Whether `path` may be present without the manifest listing it.
    fn may_be_unlisted(self, path: &str) -> bool {
        manifest_or_wal(path) || self.left_out(path)
    }

    /// Whether a listed `path` is left out of the comparison.
    fn left_out(self, path: &str) -> bool {
        self == Compared::DataDir
            && (manifest_or_wal(path) || matches!(path, "postgresql.auto.conf" | "recovery.signal" | "standby.signal"))
    }
}

/// The manifest itself and the WAL directory, which the manifest does not
/// describe file by file.
fn manifest_or_wal(path: &str) -> bool {
    path == "backup_manifest" || path == "pg_wal" || path.starts_with("pg_wal/")
}

/// Compares `files` (path → size of every regular file present) with the
/// manifest: missing, extra and wrong-sized files, then the checksum of
/// each file the manifest lists, read through `open`. Problem paths are
/// prefixed with `prefix`. `what` says which files may be unlisted and
/// which are left out. `progress` gets the bytes read so far before each
/// file; its error (a cancel) ends the check.
pub fn check_files(
    m: &Manifest,
    files: &BTreeMap<String, u64>,
    mut open: impl FnMut(&str) -> Result<Box<dyn Read + '_>, Error>,
    what: Compared,
    prefix: &str,
    report: &mut VerifyReport,
    mut progress: impl FnMut(u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; BUF];
    let listed: BTreeMap<&str, &crate::manifest::ManifestFile> = m.files.iter().map(|f| (f.path.as_str(), f)).collect();
    for (path, size) in files {
        if !listed.contains_key(path.as_str()) && !what.may_be_unlisted(path) {
            report.problem(format!("{prefix}{path}"), format!("present ({size} bytes) but not in the backup manifest"));
        }
    }
    let mut done = 0u64;
    for f in m.files.iter().filter(|f| !what.left_out(&f.path)) {
        progress(done)?;
        let Some(&size) = files.get(&f.path) else {
            report.problem(format!("{prefix}{}", f.path), format!("missing (the manifest lists {} bytes)", f.size));
            continue;
        };
        if size != f.size {
            report.problem(format!("{prefix}{}", f.path), format!("{size} bytes, the backup manifest says {}", f.size));
            continue;
        }
        let Some(mut sum) = Summer::new(&f.algorithm) else {
            report.note(format!(
                "{}: checksum algorithm {} is unknown here, only its size was checked",
                f.path, f.algorithm
            ));
            report.checked(1, 0);
            continue;
        };
        let mut r = match open(&f.path) {
            Ok(r) => r,
            Err(e) => {
                report.problem(format!("{prefix}{}", f.path), format!("unreadable: {e}"));
                continue;
            }
        };
        let mut read = 0u64;
        let failed = loop {
            match r.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    sum.update(&buf[..n]);
                    read += n as u64;
                }
                Err(e) => break Some(e),
            }
        };
        done += read;
        if let Some(e) = failed {
            let e = Error::from(e);
            if e == Error::Cancelled {
                return Err(e);
            }
            report.problem(format!("{prefix}{}", f.path), format!("unreadable after {read} bytes: {e}"));
            continue;
        }
        report.checked(1, read);
        if read != f.size {
            report.problem(
                format!("{prefix}{}", f.path),
                format!("read {read} bytes, the backup manifest says {}", f.size),
            );
            continue;
        }
        let got = sum.finish();
        if !same_hex(&got, &f.checksum) {
            report.problem(
                format!("{prefix}{}", f.path),
                format!("{} checksum {got} does not match the backup manifest's {}", f.algorithm, f.checksum),
            );
        }
    }
    Ok(())
}

/// Checksums are not secrets: a plain comparison, case-insensitive as hex.
fn same_hex(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// What a WAL segment's pages must say.
#[derive(Debug, Clone, Copy)]
pub struct SegmentCheck {
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The segment size.
    pub segment_size: u64,
    /// The segment's number.
    pub segno: u64,
    /// Pages starting at or after this position are not checked (WAL past
    /// the backup's stop may be a recycled segment's old bytes).
    pub check_below: Lsn,
}

/// Checks a WAL segment read from `r`: its length, the long header of its
/// first page (system identifier, segment size, position), and the header
/// of every page below `check_below` (magic and position). Returns the
/// bytes read, or the first problem.
pub fn check_segment(r: &mut dyn Read, c: &SegmentCheck) -> Result<u64, String> {
    let mut head = [0u8; 40];
    read_full(r, &mut head).map_err(|e| format!("unreadable: {e}"))?;
    let h: LongPageHeader = parse_long_header(&head)?;
    if h.system_identifier != c.system_identifier {
        return Err(format!(
            "belongs to the cluster with system identifier {}, not {}",
            h.system_identifier, c.system_identifier
        ));
    }
    if u64::from(h.segment_size) != c.segment_size {
        return Err(format!(
            "its header gives a segment size of {}, the backup's is {}",
            h.segment_size, c.segment_size
        ));
    }
    let base = c.segno * c.segment_size;
    if h.pageaddr != base {
        return Err(format!("its first page is at {}, not at {} where its name puts it", Lsn(h.pageaddr), Lsn(base)));
    }
    let block = u64::from(h.block_size);
    let mut page = vec![0u8; h.block_size as usize];
    // The rest of the first page, then page by page.
    read_full(r, &mut page[head.len()..]).map_err(|e| format!("unreadable in its first page: {e}"))?;
    let mut offset = block;
    while offset < c.segment_size {
        read_full(r, &mut page).map_err(|e| format!("unreadable at byte {offset}: {e}"))?;
        let addr = base + offset;
        if addr < c.check_below.0 {
            let magic = u16::from_le_bytes([page[0], page[1]]);
            let pageaddr = u64::from_le_bytes(page[8..16].try_into().expect("8 bytes"));
            if magic != h.magic {
                return Err(format!(
                    "the page at {} has magic {magic:#06x}, the segment's is {:#06x}",
                    Lsn(addr),
                    h.magic
                ));
            }
            if pageaddr != addr {
                return Err(format!("the page at {} says it is at {}", Lsn(addr), Lsn(pageaddr)));
            }
        }
        offset += block;
    }
    let mut probe = [0u8; 1];
    match r.read(&mut probe) {
        Ok(0) => Ok(c.segment_size),
        Ok(_) => Err(format!("longer than the segment size {}", c.segment_size)),
        Err(e) => Err(format!("unreadable at its end: {e}")),
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("cut short: ended after {got} of {} bytes", buf.len()),
                ));
            }
            n => got += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    fn segment(sysid: u64, segno: u64) -> Vec<u8> {
        let mut s = vec![0u8; SEG as usize];
        for (i, page) in s.chunks_mut(8192).enumerate() {
            page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            page[4..8].copy_from_slice(&1u32.to_le_bytes());
            page[8..16].copy_from_slice(&(segno * SEG + i as u64 * 8192).to_le_bytes());
            if i == 0 {
                page[2..4].copy_from_slice(&coffer_pgwal::XLP_LONG_HEADER.to_le_bytes());
                page[24..32].copy_from_slice(&sysid.to_le_bytes());
                page[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                page[36..40].copy_from_slice(&8192u32.to_le_bytes());
            }
        }
        s
    }

    fn check(data: &[u8], below: u64) -> Result<u64, String> {
        let c = SegmentCheck { system_identifier: 7, segment_size: SEG, segno: 3, check_below: Lsn(below) };
        check_segment(&mut &data[..], &c)
    }

    #[test]
    fn a_good_segment_passes_and_damage_is_named() {
        let good = segment(7, 3);
        assert_eq!(check(&good, u64::MAX).unwrap(), SEG);
        assert!(check(&segment(8, 3), u64::MAX).unwrap_err().contains("system identifier 8"));
        assert!(check(&segment(7, 4), u64::MAX).unwrap_err().contains("where its name puts it"));
        let mut bad = good.clone();
        bad[5 * 8192 + 9] ^= 1;
        assert!(check(&bad, u64::MAX).unwrap_err().contains("says it is at"));
        // Past the stop position, old bytes are not looked at.
        assert!(check(&bad, 3 * SEG + 5 * 8192).is_ok());
        assert!(check(&good[..SEG as usize - 100], u64::MAX).unwrap_err().contains("cut short"));
        let mut long = good.clone();
        long.push(0);
        assert!(check(&long, u64::MAX).unwrap_err().contains("longer"));
    }

    #[test]
    fn files_are_compared_with_the_manifest() {
        let m = Manifest::parse(
            &std::fs::read(format!("{}/testdata/backup_manifest", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .unwrap();
        let version = std::fs::read(format!("{}/testdata/PG_VERSION", env!("CARGO_MANIFEST_DIR"))).unwrap();
        // Only PG_VERSION present and right; one extra file; one with a flipped byte.
        let mut files: BTreeMap<String, u64> = BTreeMap::new();
        files.insert("PG_VERSION".into(), version.len() as u64);
        files.insert("stray".into(), 3);
        files.insert("pg_wal/000000010000000000000002".into(), 16);
        let control = std::fs::read(format!("{}/testdata/pg_control", env!("CARGO_MANIFEST_DIR"))).unwrap();
        files.insert("global/pg_control".into(), control.len() as u64);
        let mut flipped = control.clone();
        flipped[100] ^= 1;
        let mut report = VerifyReport::default();
        check_files(
            &m,
            &files,
            |p| match p {
                "PG_VERSION" => Ok(Box::new(std::io::Cursor::new(version.clone()))),
                _ => Ok(Box::new(std::io::Cursor::new(flipped.clone()))),
            },
            Compared::Snapshot,
            "",
            &mut report,
            |_| Ok(()),
        )
        .unwrap();
        let by_path: BTreeMap<&str, &str> = report.problems.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
        assert!(by_path["stray"].contains("not in the backup manifest"));
        assert!(by_path["global/pg_control"].contains("does not match"), "{by_path:?}");
        assert!(!by_path.contains_key("PG_VERSION"));
        assert!(!by_path.contains_key("pg_wal/000000010000000000000002"));
        assert!(by_path["backup_label"].starts_with("missing"));
        assert_eq!(report.problems.len(), 2 + m.files.len() - 2, "every other listed file is missing");
    }

    #[test]
    fn a_restored_directory_may_change_what_a_restore_writes() {
        let m = Manifest::parse(
            &std::fs::read(format!("{}/testdata/backup_manifest", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .unwrap();
        // Every listed file present with a wrong size, plus the files a
        // restore adds: only the listed files outside the left-out set count.
        let mut files: BTreeMap<String, u64> = m.files.iter().map(|f| (f.path.clone(), f.size + 1)).collect();
        files.insert("recovery.signal".into(), 0);
        files.insert("pg_wal/000000010000000000000009".into(), 16 << 20);
        let mut report = VerifyReport::default();
        check_files(&m, &files, |_| Ok(Box::new(std::io::empty())), Compared::DataDir, "/d/", &mut report, |_| Ok(()))
            .unwrap();
        let paths: Vec<&str> = report.problems.iter().map(|(p, _)| p.as_str()).collect();
        assert!(!paths.contains(&"/d/postgresql.auto.conf"), "{paths:?}");
        assert!(!paths.iter().any(|p| p.starts_with("/d/pg_wal/")), "{paths:?}");
        assert!(!paths.contains(&"/d/recovery.signal"));
        assert!(paths.contains(&"/d/PG_VERSION"));
        let left_out =
            m.files.iter().filter(|f| f.path == "postgresql.auto.conf" || f.path.starts_with("pg_wal/")).count();
        assert_eq!(left_out, 2, "the test manifest lists both");
        assert_eq!(paths.len(), m.files.len() - left_out);
    }
}
