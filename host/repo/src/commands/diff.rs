//! Differences between two snapshots.

use serde::Serialize;

use crate::commands::read::Snapshot;
use crate::repofile::tree::Entry;

/// How two snapshots differ, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotDiff {
    /// Paths only in the second snapshot.
    pub added: Vec<String>,
    /// Paths only in the first.
    pub removed: Vec<String>,
    /// Paths in both whose kind, content, mode, mtime or link target differ,
    /// with what changed.
    pub changed: Vec<(String, Vec<&'static str>)>,
}

fn changes(a: &Entry, b: &Entry) -> Vec<&'static str> {
    let mut c = Vec::new();
    if a.kind != b.kind {
        c.push("kind");
    }
    if a.size != b.size || a.content != b.content {
        c.push("content");
    }
    if a.mode != b.mode {
        c.push("mode");
    }
    if (a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec) {
        c.push("mtime");
    }
    if a.target != b.target {
        c.push("target");
    }
    c
}

/// Compares two opened snapshots (both entry lists are sorted by path).
pub fn diff(a: &Snapshot, b: &Snapshot) -> SnapshotDiff {
    let mut d = SnapshotDiff::default();
    let (mut i, mut j) = (0, 0);
    let (x, y) = (&a.entries, &b.entries);
    while i < x.len() || j < y.len() {
        match (x.get(i), y.get(j)) {
            (Some(ea), Some(eb)) if ea.path == eb.path => {
                let c = changes(ea, eb);
                if !c.is_empty() {
                    d.changed.push((ea.path.clone(), c));
                }
                i += 1;
                j += 1;
            }
            (Some(ea), Some(eb)) if ea.path < eb.path => {
                d.removed.push(ea.path.clone());
                i += 1;
            }
            (Some(_), Some(eb)) => {
                d.added.push(eb.path.clone());
                j += 1;
            }
            (Some(ea), None) => {
                d.removed.push(ea.path.clone());
                i += 1;
            }
            (None, Some(eb)) => {
                d.added.push(eb.path.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    d
}
