//! `coffer snapshots`, `coffer ls`, `coffer diff`. Sources and entry
//! paths come from plugins and are printed escaped (`ls -q` style, with
//! [`printable`]); `--json` prints them as they are.

use anyhow::{Context, Result};
use clap::Args;
use coffer_repo::EntryKind;
use coffer_runtime::printable;

use crate::Global;
use crate::output::{print_json, size};

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots of this source (or plugin).
    #[arg(long)]
    pub source: Option<String>,
    /// Only snapshots of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id prefix, `latest` or `latest:SOURCE`.
    pub snapshot: String,
    /// Only entries at or below this path.
    pub path: Option<String>,
    /// Show mode, size and time.
    #[arg(long, short = 'l')]
    pub long: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot.
    pub a: String,
    /// The newer snapshot.
    pub b: String,
}

pub async fn list(g: &Global, args: SnapshotsArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let snaps = repo.snapshots().await.context("listing snapshots")?;
    let shown: Vec<_> = snaps
        .iter()
        .filter(|(_, m)| args.source.as_deref().is_none_or(|s| m.source == s || m.plugin.name == s))
        .filter(|(_, m)| args.tenant.as_deref().is_none_or(|t| m.tenant == t))
        .collect();
    if g.json {
        let arr: Vec<serde_json::Value> = shown
            .iter()
            .map(|(id, m)| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), serde_json::Value::String(id.to_hex()));
                    o.insert("short_id".into(), serde_json::Value::String(id.short()));
                    o.remove("tree");
                }
                v
            })
            .collect();
        print_json(&arr)?;
        return Ok(0);
    }
    if shown.is_empty() {
        println!("no snapshots");
        return Ok(0);
    }
    // `plugin`: its name and the first digits of its component digest,
    // with `*` when it was not built into coffer (a plugin file).
    println!("{:<10} {:<20} {:<8} {:<12} {:>10}  {:<20} source", "id", "time", "tenant", "kind", "size", "plugin");
    for (id, m) in &shown {
        let plugin = format!(
            "{}@{}{}",
            m.plugin.name,
            crate::plugins::short_digest(&m.plugin.digest),
            if m.plugin.builtin || m.plugin.digest.is_empty() { "" } else { "*" }
        );
        println!(
            "{:<10} {:<20} {:<8} {:<12} {:>10}  {:<20} {}",
            id.short(),
            m.time.format("%Y-%m-%d %H:%M:%S"),
            printable(&m.tenant),
            format!("{:?}", m.kind).to_lowercase(),
            size(m.summary.bytes),
            plugin,
            printable(&m.source)
        );
    }
    println!("{} snapshots", shown.len());
    Ok(0)
}

fn kind_char(k: EntryKind) -> char {
    match k {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
    }
}

fn mode_string(kind: EntryKind, mode: u32) -> String {
    let mut s = String::new();
    s.push(kind_char(kind));
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub async fn ls(g: &Global, args: LsArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let id = crate::plugins::resolve_snapshot(&repo, &args.snapshot, crate::plugins::Writer::Trusted).await?;
    let snap = repo.open_snapshot(&id).await?;
    let prefix = args.path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
    let selected = snap.entries.iter().filter(|e| match prefix {
        None => true,
        Some(p) => e.path == p || e.path.strip_prefix(p).is_some_and(|r| r.starts_with('/')),
    });
    if g.json {
        let arr: Vec<_> = selected.collect();
        print_json(&arr)?;
        return Ok(0);
    }
    for e in selected {
        if args.long {
            let t = chrono::DateTime::from_timestamp(e.mtime, e.mtime_nsec).unwrap_or_default();
            let link = e.target.as_deref().map(|t| format!(" -> {}", printable(t))).unwrap_or_default();
            println!(
                "{} {:>12} {} {}{link}",
                mode_string(e.kind, e.mode),
                e.size,
                t.format("%Y-%m-%d %H:%M:%S"),
                printable(&e.path)
            );
        } else {
            println!("{}", printable(&e.path));
        }
    }
    Ok(0)
}

pub async fn diff(g: &Global, args: DiffArgs) -> Result<u8> {
    let repo = super::open_repo(g).await?;
    let a = crate::plugins::resolve_snapshot(&repo, &args.a, crate::plugins::Writer::Trusted).await?;
    let b = crate::plugins::resolve_snapshot(&repo, &args.b, crate::plugins::Writer::Trusted).await?;
    let sa = repo.open_snapshot(&a).await?;
    let sb = repo.open_snapshot(&b).await?;
    let d = coffer_repo::diff(&sa, &sb);
    if g.json {
        print_json(&d)?;
        return Ok(0);
    }
    for p in &d.added {
        println!("+ {}", printable(p));
    }
    for p in &d.removed {
        println!("- {}", printable(p));
    }
    for (p, what) in &d.changed {
        println!("M {} ({})", printable(p), what.join(", "));
    }
    println!("{} added, {} removed, {} changed", d.added.len(), d.removed.len(), d.changed.len());
    Ok(0)
}
