//! `streams/<owner>/<stream>/<item>`: plugin-owned streams (the log behind
//! point-in-time recovery: PostgreSQL WAL, a MongoDB oplog, ledger blocks),
//! one object per item, and the grammar of the names involved.
//!
//! An item is named `<key>@<position as 16 lowercase hex>-<u|p>`, so that
//! listing a stream gives every item's key, position and pinned flag
//! without reading an object, and finding a key is a listing of the prefix
//! `<key>@`. The object is JSON sealed with AAD "coffer stream item v1"
//! ([`StreamItemObject`]); `.checkpoint` (a name no item can have) holds the
//! writer's resume state ([`StreamCheckpoint`]). Names are checked strictly
//! before they reach storage.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::repofile::index::ChunkPlace;
use crate::repofile::snapshot::PluginIdentity;

/// Longest stream name and item key, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Longest built-in plugin name in an owner (`builtin-<name>`), in bytes.
pub const MAX_BUILTIN_NAME_LEN: usize = 64;

/// Largest checkpoint state, in bytes: it is resume information (a
/// position, a resume token), not data.
pub const MAX_CHECKPOINT_STATE: usize = 64 * 1024;

/// The name of a stream's checkpoint object within the stream.
pub const CHECKPOINT_NAME: &str = ".checkpoint";

/// The owner of legacy (format 3) `wal/` objects: the built-in postgres plugin.
pub const LEGACY_WAL_OWNER: &str = "builtin-postgres";

/// Checks a stream name or item key: 1 to [`MAX_NAME_LEN`] ASCII letters,
/// digits, `.`, `_` or `-`, not starting with `.` or `-` (so never `@`,
/// `/`, `.checkpoint`, `.` or `..`). `what` names it in the message.
pub fn valid_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid {what}: use 1 to {MAX_NAME_LEN} ASCII letters, digits, '.', '_' or '-', not \
             starting with '.' or '-'"
        ))
    }
}

/// Checks a stream name (see [`valid_name`]).
pub fn valid_stream(stream: &str) -> Result<(), String> {
    valid_name("stream name", stream)
}

/// Checks an item key (see [`valid_name`]).
pub fn valid_key(key: &str) -> Result<(), String> {
    valid_name("stream item key", key)
}

/// Who a stream belongs to: the identity of the plugin that writes it.
/// `builtin-<name>` for a plugin embedded in the coffer binary, otherwise
/// the BLAKE3 of the plugin's component bytes (64 lowercase hex). A plugin
/// only ever writes, reads and declares needs on its own owner's streams.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamOwner(String);

impl StreamOwner {
    /// Checks and wraps an owner name.
    pub fn parse(owner: &str) -> Result<StreamOwner, String> {
        let digest = owner.len() == 64 && owner.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let builtin = owner.strip_prefix("builtin-").is_some_and(valid_builtin_name);
        if digest || builtin {
            Ok(StreamOwner(owner.to_string()))
        } else {
            Err(format!(
                "{owner:?} is not a stream owner: an owner is `builtin-<plugin name>` (lowercase letters, digits, \
                 '_' or '-') or a plugin's BLAKE3 digest (64 lowercase hex digits)"
            ))
        }
    }

    /// The owner of a built-in plugin's streams: `builtin-<name>`.
    pub fn builtin(name: &str) -> Result<StreamOwner, String> {
        StreamOwner::parse(&format!("builtin-{name}"))
    }

    /// The owner of the streams the plugin `identity` writes: `builtin-<name>`
    /// for a built-in plugin, its digest otherwise (so also for manifests
    /// written before `builtin` was recorded, which read as not built-in).
    pub fn of(identity: &PluginIdentity) -> Result<StreamOwner, String> {
        if identity.builtin { StreamOwner::builtin(&identity.name) } else { StreamOwner::parse(&identity.digest) }
    }

    /// The owner of legacy `wal/` objects ([`LEGACY_WAL_OWNER`]).
    pub fn legacy_wal() -> StreamOwner {
        StreamOwner(LEGACY_WAL_OWNER.to_string())
    }

    /// The owner's name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A built-in plugin name as an owner takes it: 1 to
/// [`MAX_BUILTIN_NAME_LEN`] lowercase ASCII letters, digits, `_` or `-`,
/// starting with a letter or digit (no `.`: lease names use it as a
/// separator).
fn valid_builtin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_BUILTIN_NAME_LEN
        && !name.starts_with(['-', '_'])
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

impl TryFrom<String> for StreamOwner {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        StreamOwner::parse(&s)
    }
}

impl From<StreamOwner> for String {
    fn from(o: StreamOwner) -> String {
        o.0
    }
}

impl fmt::Display for StreamOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An item's name within its stream: `<key>@<position, 16 lowercase hex>-<u|p>`.
pub fn item_name(key: &str, position: u64, pinned: bool) -> String {
    format!("{key}@{position:016x}-{}", if pinned { 'p' } else { 'u' })
}

/// Parses an item name into (key, position, pinned); `None` if it is not one.
pub fn parse_item_name(name: &str) -> Option<(&str, u64, bool)> {
    let (key, rest) = name.rsplit_once('@')?;
    let (hex, flag) = rest.split_once('-')?;
    let pinned = match flag {
        "u" => false,
        "p" => true,
        _ => return None,
    };
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    valid_key(key).ok()?;
    Some((key, u64::from_str_radix(hex, 16).ok()?, pinned))
}

/// The prefix of every object of one stream within [`crate::FileKind::Stream`]:
/// `<owner>/<stream>/`.
pub fn stream_prefix(owner: &StreamOwner, stream: &str) -> String {
    format!("{owner}/{stream}/")
}

/// The prefix of the objects of one key: `<owner>/<stream>/<key>@`.
pub fn key_prefix(owner: &StreamOwner, stream: &str, key: &str) -> String {
    format!("{owner}/{stream}/{key}@")
}

/// An item's object name within [`crate::FileKind::Stream`].
pub fn item_object_name(owner: &StreamOwner, stream: &str, key: &str, position: u64, pinned: bool) -> String {
    format!("{owner}/{stream}/{}", item_name(key, position, pinned))
}

/// A stream's checkpoint object name within [`crate::FileKind::Stream`].
pub fn checkpoint_object_name(owner: &StreamOwner, stream: &str) -> String {
    format!("{owner}/{stream}/{CHECKPOINT_NAME}")
}

/// What an object name found by listing [`crate::FileKind::Stream`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamObjectName<'a> {
    /// An item.
    Item {
        /// Owner, as listed.
        owner: &'a str,
        /// Stream.
        stream: &'a str,
        /// Key.
        key: &'a str,
        /// Position.
        position: u64,
        /// Pinned (never removed by retention).
        pinned: bool,
    },
    /// A stream's checkpoint.
    Checkpoint {
        /// Owner, as listed.
        owner: &'a str,
        /// Stream.
        stream: &'a str,
    },
}

/// Splits and checks an object name found by listing; `None` for anything
/// this repository does not write (staging files, strangers).
pub fn parse_object_name(object: &str) -> Option<StreamObjectName<'_>> {
    let mut parts = object.splitn(3, '/');
    let (owner, stream, last) = (parts.next()?, parts.next()?, parts.next()?);
    StreamOwner::parse(owner).ok()?;
    valid_stream(stream).ok()?;
    if last == CHECKPOINT_NAME {
        return Some(StreamObjectName::Checkpoint { owner, stream });
    }
    let (key, position, pinned) = parse_item_name(last)?;
    Some(StreamObjectName::Item { owner, stream, key, position, pinned })
}

/// True for the last part of a stream object's name (an item or
/// `.checkpoint`): what a local staging file `NAME#N` of one is named after.
pub fn is_object_leaf(name: &str) -> bool {
    name == CHECKPOINT_NAME || parse_item_name(name).is_some()
}

/// The content of `streams/<owner>/<stream>/<key>@<position>-<u|p>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamItemObject {
    /// Object format version (1).
    pub version: u32,
    /// The owner; a reader checks it, and the next four, against the name.
    pub owner: StreamOwner,
    /// The stream.
    pub stream: String,
    /// The item's key (assigned by the plugin, unique in the stream).
    pub key: String,
    /// The item's position (assigned by the plugin; retention cuts by it).
    pub position: u64,
    /// Pinned items are never removed by retention.
    pub pinned: bool,
    /// Bytes of content.
    pub size: u64,
    /// Plain BLAKE3 of the content, hex; checked after every fetch.
    pub blake3: String,
    /// Data blob ids of its chunks, in order.
    pub chunks: Vec<Id>,
    /// Where each chunk was stored at push time (same order as `chunks`):
    /// a hint that lets a fetch skip loading the index.
    #[serde(default)]
    pub places: Vec<Option<ChunkPlace>>,
    /// When it was pushed.
    pub pushed: chrono::DateTime<chrono::Utc>,
    /// Host that pushed it.
    #[serde(default)]
    pub host: String,
    /// The plugin that pushed it.
    pub writer: PluginIdentity,
}

/// The content of `streams/<owner>/<stream>/.checkpoint`: where a follower
/// of the stream resumes. Overwritten by each checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCheckpoint {
    /// Object format version (1).
    pub version: u32,
    /// The owner; a reader checks it and `stream` against the name (a
    /// checkpoint copied to another stream is damage).
    pub owner: StreamOwner,
    /// The stream.
    pub stream: String,
    /// The writer's resume state, opaque to the host (at most
    /// [`MAX_CHECKPOINT_STATE`] bytes).
    pub state: String,
    /// How far the source itself is (for lag), if the plugin knows.
    #[serde(default)]
    pub source_position: Option<u64>,
    /// When it was written.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Host that wrote it.
    #[serde(default)]
    pub host: String,
}

/// A snapshot's need for part of one of its plugin's streams: every item
/// from position `from` on (see [`crate::SnapshotManifest::streams`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamNeed {
    /// The stream's owner (the plugin that wrote the snapshot).
    pub owner: StreamOwner,
    /// The stream.
    pub stream: String,
    /// The lowest position the snapshot needs.
    pub from: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_are_checked() {
        for good in ["a", "pg-7283947561234567890", "000000010000000000000003.partial", "x_y.z-1", &"k".repeat(200)] {
            assert!(valid_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".checkpoint", ".", "..", "-x", "a/b", "a@b", "a b", "ä", &"k".repeat(201)] {
            assert!(valid_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners_are_checked_and_derived() {
        assert!(StreamOwner::parse(DIGEST).is_ok());
        assert!(StreamOwner::parse("builtin-postgres").is_ok());
        for bad in ["", "builtin-", "builtin-Pg", "builtin-a.b", "builtin-a/b", &DIGEST.to_uppercase(), &DIGEST[1..]] {
            assert!(StreamOwner::parse(bad).is_err(), "{bad}");
        }
        let mut id = PluginIdentity { name: "postgres".into(), digest: DIGEST.into(), ..Default::default() };
        assert_eq!(StreamOwner::of(&id).unwrap().as_str(), DIGEST);
        id.builtin = true;
        assert_eq!(StreamOwner::of(&id).unwrap(), StreamOwner::legacy_wal());
        // A host-side source has no digest: it owns no stream.
        assert!(StreamOwner::of(&PluginIdentity::default()).is_err());
        let json = serde_json::to_string(&StreamOwner::legacy_wal()).unwrap();
        assert_eq!(json, "\"builtin-postgres\"");
        assert!(serde_json::from_str::<StreamOwner>("\"builtin-X\"").is_err());
    }

    #[test]
    fn object_names_round_trip() {
        let owner = StreamOwner::parse(DIGEST).unwrap();
        let name = item_object_name(&owner, "oplog", "ts-1.2", 0x1234, true);
        assert_eq!(name, format!("{DIGEST}/oplog/ts-1.2@0000000000001234-p"));
        assert_eq!(
            parse_object_name(&name),
            Some(StreamObjectName::Item {
                owner: DIGEST,
                stream: "oplog",
                key: "ts-1.2",
                position: 0x1234,
                pinned: true
            })
        );
        assert!(name.starts_with(&key_prefix(&owner, "oplog", "ts-1.2")));
        assert!(!name.starts_with(&key_prefix(&owner, "oplog", "ts-1")));
        assert_eq!(
            parse_object_name(&checkpoint_object_name(&owner, "oplog")),
            Some(StreamObjectName::Checkpoint { owner: DIGEST, stream: "oplog" })
        );
        assert_eq!(parse_item_name(&item_name("k", u64::MAX, false)), Some(("k", u64::MAX, false)));
        for bad in [
            "k@0000000000001234-x",
            "k@000000000001234-u",
            "k@000000000000123G-u",
            "k@00000000000012340-u",
            "@0000000000001234-u",
            "k@0000000000001234-u#3",
            ".k@0000000000001234-u",
        ] {
            assert_eq!(parse_item_name(bad), None, "{bad}");
        }
        assert_eq!(parse_object_name("builtin-x/s"), None);
        assert_eq!(parse_object_name("builtin-X/s/k@0000000000000001-u"), None);
        assert_eq!(parse_object_name("builtin-x/s/.checkpoint#2"), None);
        assert_eq!(parse_object_name("builtin-x/s/sub/k@0000000000000001-u"), None);
    }
}
