//! A snapshot's entry list.
//!
//! Entries, sorted by path, are serialized one after another as CBOR maps
//! into one byte stream, and that stream is cut by the content-defined
//! chunker into tree blobs. Runs of unchanged entries therefore produce the
//! same tree blobs from one snapshot to the next and are stored once.

use serde::{Deserialize, Serialize};

use crate::id::Id;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file with content.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative `/`-separated path, no `.`/`..`/empty parts.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Unix permission bits (and file type bits if the source gives them).
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch.
    pub mtime: i64,
    /// Modification time: nanoseconds within the second.
    pub mtime_nsec: u32,
    /// Content length in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Data blob ids, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Plain BLAKE3 of the whole content (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Id>,
}

/// Serializes sorted entries into the tree byte stream.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 128);
    for e in entries {
        ciborium::into_writer(e, &mut out).expect("entries serialize to a Vec");
    }
    out
}

/// Parses the tree byte stream.
pub fn decode_entries(data: &[u8]) -> Result<Vec<Entry>, String> {
    let mut cursor = std::io::Cursor::new(data);
    let mut out = Vec::new();
    // One scratch buffer for every entry (`from_reader` would clear a fresh
    // 4 KiB one for each).
    let mut scratch = vec![0u8; 4096];
    while (cursor.position() as usize) < data.len() {
        let e: Entry = ciborium::de::from_reader_with_buffer(&mut cursor, &mut scratch)
            .map_err(|e| format!("entry {}: {e}", out.len()))?;
        out.push(e);
    }
    Ok(out)
}

/// Checks that a path is relative, `/`-separated and free of `.`/`..`/empty
/// parts and NUL bytes.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if path.contains('\0') {
        return Err("NUL byte in path".into());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("paths may not contain empty, `.` or `..` parts".into());
        }
    }
    Ok(())
}
