//! Plugins the CLI can run: the built-in ones embedded in the binary, and
//! third-party components loaded from a `.wasm` path.

use std::path::Path;

use anyhow::{Context, Result, bail};
use coffer_runtime::{LoadedPlugin, Runtime, RuntimeOptions};

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
        return Ok(rt.load(spec, bytes)?);
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
/// the built-in of that name. Warns when the component differs from the
/// one that made the snapshot.
pub fn for_snapshot(
    rt: &Runtime,
    manifest: &coffer_repo::SnapshotManifest,
    override_spec: Option<&str>,
) -> Result<LoadedPlugin> {
    let spec = override_spec.unwrap_or(&manifest.plugin.name);
    let p = load(rt, spec).with_context(|| {
        format!(
            "snapshot was made by plugin {} {}; pass --plugin FILE.wasm to use a third-party plugin",
            manifest.plugin.name, manifest.plugin.version
        )
    })?;
    if !manifest.plugin.digest.is_empty() && p.digest() != manifest.plugin.digest {
        tracing::info!(
            "plugin {} differs from the build that made the snapshot ({} there)",
            manifest.plugin.name,
            manifest.plugin.version
        );
    }
    Ok(p)
}
