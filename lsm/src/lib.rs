//! LSM-tree databases, LevelDB and RocksDB, as coffer's plugins back them
//! up: which files make up a database (read from `CURRENT` and the
//! manifest it names), their records and tables checked, and a copy of
//! exactly that set made consistently while the database may be written.
//!
//! - [`log`]: the log format of manifests and write-ahead logs.
//! - [`leveldb`]: LevelDB's version edits and file names (Fabric's stores,
//!   written by goleveldb).
//! - [`rocksdb`]: RocksDB's version edits and file names (the chain
//!   databases of Substrate and Polkadot-SDK nodes).
//! - [`table`] checks tables (LevelDB's and RocksDB's block-based SST
//!   files) block by block.
//! - [`copy`]: the live set of a database and its consistent copy,
//!   whatever the flavor.

use std::fmt;

use coffer_sdk::Error;

pub mod copy;
pub mod leveldb;
pub mod log;
pub mod rocksdb;
pub mod table;

/// A problem in a LevelDB or RocksDB file, with the file and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmError {
    /// The file concerned, as the caller named it (a path, or a name in
    /// the directory).
    pub file: String,
    /// The byte offset of the damaged record, when there is one.
    pub offset: Option<u64>,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for LsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{}: at byte {o}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl std::error::Error for LsmError {}

impl From<LsmError> for Error {
    fn from(e: LsmError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

/// Reads a little-endian base-128 varint at `*pos` (the encoding of
/// version edits and table handles); `None` when the input ends inside it
/// or it runs past 10 bytes.
pub fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let byte = *b.get(*pos + i)?;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Some(v);
        }
    }
    None
}

/// Reads a varint length and that many bytes.
pub fn length_prefixed<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(b, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let s = b.get(*pos..end)?;
    *pos = end;
    Some(s)
}

/// The number of a `MANIFEST-NNNNNN` file name.
pub fn manifest_number(name: &str) -> Option<u64> {
    number(name.strip_prefix("MANIFEST-")?)
}

/// A file number written in decimal digits only.
pub fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The manifest `CURRENT` names: its file name and number. `CURRENT`
/// holds `MANIFEST-NNNNNN` and a newline.
pub fn parse_current(bytes: &[u8]) -> Result<(String, u64), LsmError> {
    let bad = |reason: String| LsmError { file: "CURRENT".into(), offset: None, reason };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("is not text".into()))?;
    let Some(name) = text.strip_suffix('\n') else {
        return Err(bad(format!("{text:?} does not end with a newline (written partly?)")));
    };
    match manifest_number(name) {
        Some(n) => Ok((name.to_string(), n)),
        None => Err(bad(format!("{name:?} does not name a manifest (MANIFEST-NNNNNN)"))),
    }
}
