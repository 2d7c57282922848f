//! `snapshots/<id>`: snapshot manifests, JSON sealed with AAD
//! "coffer snapshot v1". The id is the BLAKE3 of the stored bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::repofile::stream::StreamNeed;

/// The manifest version this build writes when a snapshot declares stream
/// needs or the repository is at format 4 or later, and the highest it
/// reads. Version 2 added [`SnapshotManifest::streams`]; a version 1
/// manifest predates stream needs, so stream retention cannot tell what it
/// needs and keeps everything of its plugin's streams.
pub const MANIFEST_VERSION: u32 = 2;

/// The manifest version of snapshots that predate stream needs.
pub const MANIFEST_VERSION_BEFORE_STREAMS: u32 = 1;

/// The plugin that produced a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginIdentity {
    /// Plugin name (`files`, `postgres`, ...).
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// BLAKE3 hex of the plugin's component bytes (empty for host-side
    /// sources): the plugin's identity, which its name is not.
    pub digest: String,
    /// True when the component was one embedded in the coffer binary that
    /// wrote the snapshot (a built-in plugin), false for one loaded from a
    /// file. Recorded by the host, never by the plugin; absent (false) in
    /// manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub builtin: bool,
}

/// Full, incremental or differential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// No parent: every entry's data was read.
    #[default]
    Full,
    /// Parent is the previous snapshot of the source.
    Incremental,
    /// Parent is the last full snapshot of the source.
    Differential,
}

/// Totals recorded at commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// Entries of every kind.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Entries kept from the parent without reading their data.
    pub reused_entries: u64,
    /// Bytes written by the source (read and chunked).
    pub bytes_read: u64,
    /// Blobs this snapshot added to the repository.
    pub new_blobs: u64,
    /// Plaintext bytes of those blobs.
    pub new_bytes: u64,
    /// Stored (compressed, sealed) bytes of those blobs.
    pub stored_bytes: u64,
    /// Packs uploaded.
    pub new_packs: u64,
    /// Files and directories the source could not take and left out (a
    /// name that is not UTF-8, permission denied, an I/O error): the
    /// snapshot is incomplete when this is not 0. Absent (0) in manifests
    /// written before it was counted.
    #[serde(default)]
    pub left_out: u64,
    /// Files and directories that vanished while the backup ran (left out,
    /// as they no longer existed).
    #[serde(default)]
    pub vanished: u64,
    /// Files whose size or modification time changed while they were read:
    /// the snapshot holds what was read, which may mix old and new content.
    #[serde(default)]
    pub changed_while_read: u64,
    /// When the backup started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// When it was committed.
    pub finished: chrono::DateTime<chrono::Utc>,
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Manifest format version: 1, or 2 ([`MANIFEST_VERSION`]) once stream
    /// needs are recorded.
    pub version: u32,
    /// Snapshot time (the backup's start).
    pub time: chrono::DateTime<chrono::Utc>,
    /// Tenant the snapshot belongs to (`default` when there is one tenant).
    pub tenant: String,
    /// Source name (what was backed up; retention groups by tenant + source).
    pub source: String,
    /// Host that ran the backup.
    pub hostname: String,
    /// The plugin that produced it.
    pub plugin: PluginIdentity,
    /// The plugin config with secrets redacted.
    pub config: serde_json::Value,
    /// Full, incremental or differential.
    pub kind: BackupKind,
    /// Parent snapshot, if any.
    pub parent: Option<Id>,
    /// Operator tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Source facts set by the plugin (LSNs, RDB version, block height, ...).
    pub attributes: BTreeMap<String, String>,
    /// Tree blobs holding the serialized entry list, in order.
    pub tree: Vec<Id>,
    /// Totals.
    pub summary: SnapshotSummary,
    /// The parts of its plugin's streams the snapshot needs (to recover to
    /// a point after it): one per stream, the lowest position. Stream
    /// retention keeps every item from there on while the snapshot remains.
    /// Absent (empty) in version 1 manifests and when nothing is needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamNeed>,
}

/// Key names whose values are replaced by `"<redacted>"` in stored configs.
const SECRET_WORDS: [&str; 8] = ["password", "passwd", "secret", "token", "credential", "private", "apikey", "api_key"];

/// Redacts secrets in a plugin config: values under keys that look secret,
/// and passwords embedded in URLs (`scheme://user:pass@host`).
///
/// A key holds a secret when its name says so ([`holds_secret`]).
pub fn redact_config(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if holds_secret(k) && !v.is_null() {
                        Value::String("<redacted>".into())
                    } else {
                        redact_config(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_config).collect()),
        Value::String(s) => Value::String(redact_url(s)),
        other => other.clone(),
    }
}

/// True when a config key's value is a secret by its name (`password`,
/// `api_token`, `key`, `tls_key`, ...); keys ending in `_file` or `_env`
/// name where a secret is, not the secret.
pub fn holds_secret(key: &str) -> bool {
    let lk = key.to_ascii_lowercase().replace('-', "_");
    let secret = SECRET_WORDS.iter().any(|w| lk.contains(w)) || lk == "key" || lk.ends_with("_key");
    secret && !lk.ends_with("_file") && !lk.ends_with("_env")
}

fn redact_url(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{}://{}:<redacted>{}", &s[..scheme_end], &rest[..colon], &rest[at..]);
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_keys_and_url_passwords() {
        let c = serde_json::json!({
            "url": "postgres://app:hunter2@db:5432/x",
            "password": "hunter2",
            "password_file": "/run/secrets/pg",
            "password_env": "PGPASSWORD",
            "nested": {"api_token": "t", "path": "/data"},
        });
        let r = redact_config(&c).to_string();
        assert!(!r.contains("hunter2"), "{r}");
        assert!(!r.contains("\"t\""), "{r}");
        assert!(
            r.contains("/run/secrets/pg")
                && r.contains("PGPASSWORD")
                && r.contains("/data")
                && r.contains("app:<redacted>@db"),
            "{r}"
        );
    }
}
