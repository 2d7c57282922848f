//! `wal/<stream>/<name>`: the legacy WAL archive's objects, one per
//! PostgreSQL WAL file that coffer archived before streams (format 3). This
//! build reads them (as the built-in postgres plugin's stream items) and
//! never writes them.
//!
//! An object is JSON sealed with AAD "coffer wal v1" ([`WalObject`]), named
//! by what it holds. Names are checked before they reach storage: the
//! stream by [`valid_stream`], the file name as a stream item key (every
//! WAL file name is one); what a WAL file name means is the plugin's.

use serde::{Deserialize, Serialize};

use crate::id::Id;
pub use crate::repofile::index::ChunkPlace;

/// Longest stream name, in bytes.
pub const MAX_STREAM_LEN: usize = 100;

/// Checks a stream name: 1 to [`MAX_STREAM_LEN`] ASCII letters, digits,
/// `.`, `_` or `-`, not starting with `.` or `-`.
pub fn valid_stream(stream: &str) -> Result<(), String> {
    let ok = !stream.is_empty()
        && stream.len() <= MAX_STREAM_LEN
        && !stream.starts_with(['.', '-'])
        && stream.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{stream:?} is not a WAL stream name: use 1 to {MAX_STREAM_LEN} letters, digits, '.', '_' or '-' \
             (such as pg-7283947561234567890)"
        ))
    }
}

/// The content of `wal/<stream>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalObject {
    /// Object format version (1).
    pub version: u32,
    /// The stream (one PostgreSQL cluster: `pg-<system identifier>`).
    pub stream: String,
    /// The WAL file name.
    pub name: String,
    /// Bytes in the file.
    pub size: u64,
    /// Plain BLAKE3 of the file, hex.
    pub blake3: String,
    /// Data blob ids of its chunks, in order.
    pub chunks: Vec<Id>,
    /// Where each chunk was stored at push time (same order as `chunks`).
    #[serde(default)]
    pub places: Vec<Option<ChunkPlace>>,
    /// When it was archived.
    pub pushed: chrono::DateTime<chrono::Utc>,
    /// Host that archived it.
    #[serde(default)]
    pub host: String,
}

/// The object name of a WAL file within [`crate::FileKind::Wal`]: `<stream>/<name>`.
pub fn object_name(stream: &str, name: &str) -> String {
    format!("{stream}/{name}")
}

/// Splits and checks an object name found by listing.
pub fn split_object_name(object: &str) -> Option<(&str, &str)> {
    let (stream, name) = object.split_once('/')?;
    (valid_stream(stream).is_ok() && crate::repofile::stream::valid_key(name).is_ok()).then_some((stream, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_checked() {
        assert!(valid_stream("pg-7283947561234567890").is_ok());
        assert!(valid_stream("main_db.eu-1").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", "ä", &"x".repeat(101)] {
            assert!(valid_stream(bad).is_err(), "{bad}");
        }
        assert_eq!(split_object_name("pg-1/00000002.history"), Some(("pg-1", "00000002.history")));
        assert_eq!(split_object_name("pg-1/00000002.history#3"), None);
        assert_eq!(split_object_name("pg-1/a/b"), None);
        assert_eq!(split_object_name("pg-1"), None);
    }
}
