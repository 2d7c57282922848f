//! Plugins the CLI can run: the built-in ones embedded in the binary, and
//! third-party components loaded from a `.wasm` path.

use std::path::Path;

use anyhow::{Context, Result, bail};
use coffer_runtime::{LoadedPlugin, Runtime, RuntimeOptions, printable};

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The plugin runtime for this process.
pub fn runtime() -> Result<Runtime> {
    Ok(Runtime::new(RuntimeOptions::default())?)
}

/// Bytes of a built-in plugin.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Loads `spec`: a built-in name, or a path to a `.wasm` component.
pub fn load(rt: &Runtime, spec: &str) -> Result<LoadedPlugin> {
    if let Some(bytes) = builtin(spec) {
        return Ok(rt.load_builtin(spec, bytes)?);
    }
    let looks_like_path = spec.contains('/') || spec.ends_with(".wasm");
    if !looks_like_path {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        bail!(
            "no built-in plugin `{spec}` (built-in: {}); give a path to a .wasm file for another plugin",
            names.join(", ")
        );
    }
    let path = Path::new(spec);
    let bytes = std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
    Ok(rt.load(&path.display().to_string(), &bytes)?)
}

/// Loads the plugin that wrote a snapshot: `override_spec` if given, else
/// the built-in of that name. Warns when the component is not the one that
/// made the snapshot: a plugin file that merely calls itself by a
/// built-in's name is not that built-in.
pub fn for_snapshot(
    rt: &Runtime,
    manifest: &coffer_repo::SnapshotManifest,
    override_spec: Option<&str>,
) -> Result<LoadedPlugin> {
    let spec = override_spec.unwrap_or(&manifest.plugin.name);
    let p = load(rt, spec).with_context(|| {
        format!(
            "snapshot was made by plugin {} {} ({}); pass --plugin FILE.wasm to use a third-party plugin",
            manifest.plugin.name,
            printable(&manifest.plugin.version),
            writer(&manifest.plugin)
        )
    })?;
    if !manifest.plugin.digest.is_empty() && !is_writer(&p, &manifest.plugin) {
        eprintln!(
            "warning: the snapshot was written by {}, not by the {} used now ({}); check that you trust what it wrote",
            writer(&manifest.plugin),
            if p.is_builtin() { "built-in plugin" } else { "plugin file" },
            short_digest(p.digest())
        );
    }
    Ok(p)
}

/// The first 8 hex digits of a component digest, as `coffer snapshots`
/// shows them.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..8).unwrap_or(digest)
}

/// Who wrote a snapshot, for people: `built-in files 1a2b3c4d` or
/// `plugin file calling itself files 9f8e7d6c`.
pub fn writer(p: &coffer_repo::PluginIdentity) -> String {
    if p.builtin {
        format!("built-in {} {}", p.name, short_digest(&p.digest))
    } else if p.digest.is_empty() {
        format!("coffer itself ({})", p.name)
    } else {
        format!("plugin file calling itself {} {}", p.name, short_digest(&p.digest))
    }
}

/// True when `p` is the component that wrote a snapshot of `identity`, or
/// trusted as it: the same digest, or both built into a coffer binary under
/// the same name (a newer build of a built-in continues an older one's
/// snapshots; the binary vouches for its built-ins, and only the host
/// records `builtin`).
pub fn is_writer(p: &LoadedPlugin, identity: &coffer_repo::PluginIdentity) -> bool {
    identity.digest == p.digest()
        || (p.is_builtin() && identity.builtin && identity.name == p.label() && builtin(&identity.name).is_some())
}

/// Whose snapshots `latest` and `latest:SOURCE` choose among.
#[derive(Clone, Copy)]
pub enum Writer<'a> {
    /// Snapshots written by built-in plugins (or by coffer itself); when
    /// none match, those of the one component that wrote them all.
    Trusted,
    /// Snapshots this component wrote or is trusted to continue
    /// ([`is_writer`]): the plugin a restore or verify will run.
    Component(&'a LoadedPlugin),
    /// Snapshots written by the component whose digest starts with this.
    Digest(&'a str),
}

/// Resolves a snapshot spec: an id prefix as given, and `latest` or
/// `latest:SOURCE` (a source or plugin name) among the snapshots `by`
/// allows. A plugin name is only what a plugin calls itself: without this,
/// a plugin file naming itself `files` and claiming `files:/srv/www` would
/// be `latest:files:/srv/www` after its first run.
pub async fn resolve_snapshot(repo: &coffer_repo::Repository, spec: &str, by: Writer<'_>) -> Result<coffer_repo::Id> {
    let Some(rest) = spec.strip_prefix("latest") else { return Ok(repo.resolve_snapshot(spec).await?) };
    let wanted = rest.strip_prefix(':');
    if !rest.is_empty() && wanted.is_none() {
        return Ok(repo.resolve_snapshot(spec).await?);
    }
    let snaps = repo.snapshots().await.context("listing snapshots")?;
    let candidates: Vec<_> =
        snaps.iter().rev().filter(|(_, m)| wanted.is_none_or(|w| m.source == w || m.plugin.name == w)).collect();
    let shown = printable(spec);
    if candidates.is_empty() {
        bail!("no snapshot matches {shown}; `coffer snapshots` lists them");
    }
    let chosen = match by {
        Writer::Component(p) => candidates.iter().find(|(_, m)| is_writer(p, &m.plugin)).ok_or_else(|| {
            anyhow::anyhow!(
                "no snapshot of {shown} was written by the plugin given ({}); name a snapshot by id to use it anyway",
                short_digest(p.digest())
            )
        })?,
        Writer::Digest(prefix) => {
            let prefix = prefix.to_ascii_lowercase();
            candidates.iter().find(|(_, m)| !prefix.is_empty() && m.plugin.digest.starts_with(&prefix)).ok_or_else(
                || anyhow::anyhow!("no snapshot of {shown} was written by a plugin with digest {}", printable(&prefix)),
            )?
        }
        Writer::Trusted => match candidates.iter().find(|(_, m)| m.plugin.builtin || m.plugin.digest.is_empty()) {
            Some(c) => c,
            None => {
                let mut digests: Vec<&str> = candidates.iter().map(|(_, m)| m.plugin.digest.as_str()).collect();
                digests.sort_unstable();
                digests.dedup();
                if digests.len() > 1 {
                    let list: Vec<&str> = digests.iter().map(|d| short_digest(d)).collect();
                    bail!(
                        "{shown} is ambiguous: its snapshots were written by {} different plugin files ({}), none built in; \
                         choose one with --plugin FILE.wasm or --plugin-digest DIGEST, or name a snapshot by id",
                        digests.len(),
                        list.join(", ")
                    );
                }
                &candidates[0]
            }
        },
    };
    Ok(chosen.0)
}
