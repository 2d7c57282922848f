//! The backup manifest PostgreSQL sends with a base backup (what
//! `pg_verifybackup` checks), and the `backup_label` file.
//!
//! The manifest is JSON: a version, one object per file (path, size,
//! modification time, checksum algorithm and checksum), the WAL ranges the
//! backup needs, and a SHA-256 of the manifest itself up to the line that
//! holds it.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::Digest;

/// A parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `PostgreSQL-Backup-Manifest-Version`.
    pub version: u32,
    /// Every file of the backup.
    pub files: Vec<ManifestFile>,
    /// WAL the backup needs: (timeline, start LSN, end LSN) as text.
    pub wal_ranges: Vec<(u32, String, String)>,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The checksum algorithm (`CRC32C`, `SHA256`, ..., or `NONE`).
    pub algorithm: String,
    /// The checksum, lowercase hex (empty for `NONE`).
    pub checksum: String,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "Files", default)]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<RawRange>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm", default)]
    algorithm: Option<String>,
    #[serde(rename = "Checksum", default)]
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

/// The key of the manifest's own checksum, at the start of its line.
const CHECKSUM_KEY: &[u8] = b"\"Manifest-Checksum\"";

impl Manifest {
    /// Checks the manifest's own SHA-256 and parses it.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let at = bytes
            .windows(CHECKSUM_KEY.len() + 1)
            .rposition(|w| w[0] == b'\n' && &w[1..] == CHECKSUM_KEY)
            .ok_or("it has no Manifest-Checksum line")?;
        let covered = &bytes[..at + 1];
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("it is not valid JSON ({e})"))?;
        let stored = value.get("Manifest-Checksum").and_then(|v| v.as_str()).ok_or("Manifest-Checksum is not text")?;
        let actual = hex::encode(sha2::Sha256::digest(covered));
        if !stored.eq_ignore_ascii_case(&actual) {
            return Err(format!("its checksum says {stored}, its bytes hash to {actual} (the manifest was changed)"));
        }
        let raw: RawManifest = serde_json::from_value(value).map_err(|e| format!("unexpected layout ({e})"))?;
        if raw.version != 1 && raw.version != 2 {
            return Err(format!("manifest version {} is newer than coffer reads (1 and 2)", raw.version));
        }
        let mut files = Vec::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p,
                (None, Some(e)) => {
                    let b = hex::decode(&e).map_err(|_| format!("Encoded-Path `{e}` is not hex"))?;
                    String::from_utf8(b).map_err(|_| format!("Encoded-Path `{e}` is not UTF-8"))?
                }
                (None, None) => return Err("a file has neither Path nor Encoded-Path".into()),
            };
            let algorithm = f.algorithm.unwrap_or_else(|| "NONE".into()).to_ascii_uppercase();
            files.push(ManifestFile {
                path,
                size: f.size,
                algorithm,
                checksum: f.checksum.unwrap_or_default().to_ascii_lowercase(),
            });
        }
        Ok(Manifest {
            version: raw.version,
            files,
            wal_ranges: raw.wal_ranges.into_iter().map(|r| (r.timeline, r.start, r.end)).collect(),
        })
    }
}

/// A running checksum of one of a manifest's algorithms.
pub enum Summer {
    /// `NONE`.
    None,
    /// `CRC32C`.
    Crc32c(crc::Digest<'static, u32>),
    /// `SHA224`.
    Sha224(sha2::Sha224),
    /// `SHA256`.
    Sha256(sha2::Sha256),
    /// `SHA384`.
    Sha384(sha2::Sha384),
    /// `SHA512`.
    Sha512(sha2::Sha512),
}

static CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

impl Summer {
    /// A summer for `algorithm`, or `None` when it is unknown.
    pub fn new(algorithm: &str) -> Option<Summer> {
        Some(match algorithm {
            "NONE" => Summer::None,
            "CRC32C" => Summer::Crc32c(CRC32C.digest()),
            "SHA224" => Summer::Sha224(sha2::Sha224::new()),
            "SHA256" => Summer::Sha256(sha2::Sha256::new()),
            "SHA384" => Summer::Sha384(sha2::Sha384::new()),
            "SHA512" => Summer::Sha512(sha2::Sha512::new()),
            _ => return None,
        })
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Summer::None => {}
            Summer::Crc32c(d) => d.update(data),
            Summer::Sha224(d) => d.update(data),
            Summer::Sha256(d) => d.update(data),
            Summer::Sha384(d) => d.update(data),
            Summer::Sha512(d) => d.update(data),
        }
    }

    /// The checksum as the manifest writes it: lowercase hex; a CRC-32C is
    /// written as its four bytes in little-endian order.
    pub fn finish(self) -> String {
        match self {
            Summer::None => String::new(),
            Summer::Crc32c(d) => hex::encode(d.finalize().to_le_bytes()),
            Summer::Sha224(d) => hex::encode(d.finalize()),
            Summer::Sha256(d) => hex::encode(d.finalize()),
            Summer::Sha384(d) => hex::encode(d.finalize()),
            Summer::Sha512(d) => hex::encode(d.finalize()),
        }
    }
}

/// The `KEY: value` lines of a `backup_label` file.
pub fn parse_label(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn sum(algorithm: &str, bytes: &[u8]) -> String {
        let mut s = Summer::new(algorithm).unwrap();
        s.update(bytes);
        s.finish()
    }

    /// A manifest PostgreSQL 15 wrote (`pg_basebackup` of a new cluster),
    /// with files of that backup.
    #[test]
    fn a_real_manifest_checks_and_its_checksums_match_the_files() {
        let m = Manifest::parse(&data("backup_manifest")).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.files.len(), 965);
        assert_eq!(m.wal_ranges, vec![(1, "0/2000028".to_string(), "0/2000100".to_string())]);
        for name in ["PG_VERSION", "backup_label", "global/pg_control"] {
            let f = m.files.iter().find(|f| f.path == name).unwrap();
            let bytes = data(name.rsplit('/').next().unwrap());
            assert_eq!(f.size, bytes.len() as u64, "{name}");
            assert_eq!(f.algorithm, "CRC32C");
            assert_eq!(sum("CRC32C", &bytes), f.checksum, "{name}");
        }
        let label = parse_label(&String::from_utf8(data("backup_label")).unwrap());
        assert_eq!(label["START WAL LOCATION"], "0/2000028 (file 000000010000000000000002)");
        assert_eq!(label["START TIME"], "2026-12-02 15:11:28 UTC");
        assert_eq!(label["START TIMELINE"], "1");
    }

    #[test]
    fn a_changed_manifest_is_refused() {
        let good = data("backup_manifest");
        // A file's checksum changed by hand.
        let text = String::from_utf8(good.clone()).unwrap().replacen("\"8a744722\"", "\"8a744723\"", 1);
        let err = Manifest::parse(text.as_bytes()).unwrap_err();
        assert!(err.contains("the manifest was changed"), "{err}");
        // Cut short.
        assert!(Manifest::parse(&good[..good.len() / 2]).is_err());
        assert!(Manifest::parse(b"{}").unwrap_err().contains("no Manifest-Checksum"));
        // Every byte of the covered part is covered.
        for i in (0..good.len()).step_by(997) {
            let mut b = good.clone();
            b[i] ^= 0x20;
            assert!(Manifest::parse(&b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn summers() {
        // CRC-32C check value, written little-endian.
        assert_eq!(sum("CRC32C", b"123456789"), "839206e3");
        assert_eq!(sum("SHA256", b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sum("NONE", b"abc"), "");
        assert!(Summer::new("MD5").is_none());
    }
}
