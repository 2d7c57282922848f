//! The compiled-component cache: `<dir>/<key>.cwasm`, where the key is the
//! BLAKE3 of the `.wasm` bytes and the engine's compatibility hash (wasmtime
//! version, target, compiler settings). Only files this host wrote are ever
//! loaded: the directory is created owner-only, and a directory that others
//! can write is not used.

use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Feeds `Hash` output into BLAKE3, so the key is stable across processes.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Cache key of `wasm` compiled by `engine`.
pub fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut h = Blake3Hasher(blake3::Hasher::new());
    h.0.update(b"coffer component cache v1\0");
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    h.0.update(&(wasm.len() as u64).to_le_bytes());
    h.0.update(wasm);
    h.0.finalize().to_hex().to_string()
}

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    /// The default location: `$COFFER_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/coffer/components`, else `~/.cache/coffer/components`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("COFFER_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("coffer").join("components"))
    }

    /// Where the cache goes when [`Self::default_dir`] cannot be used (no
    /// `HOME`, or a home this user cannot write, as for a service account):
    /// `<temp dir>/coffer-<uid>-components`. In a sticky `/tmp` no other
    /// user can move or replace it, and [`Self::open`] uses it only as a
    /// private directory this user owns.
    pub fn fallback_dir() -> Option<PathBuf> {
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        Some(std::env::temp_dir().join(format!("coffer-{uid}-components")))
    }

    /// The cache directory a runtime uses by default: [`Self::default_dir`]
    /// when it can be used, else [`Self::fallback_dir`]; `None` (plugins
    /// compiled in memory, which costs seconds per process) with a warning
    /// when neither can. Built-in plugins are then compiled once per user,
    /// not once per process, even for `archive_command` run by a service
    /// account without a writable home.
    pub fn usable_dir() -> Option<PathBuf> {
        let preferred = Self::default_dir();
        let why = match &preferred {
            Some(d) => match Self::check(d) {
                Ok(()) => return preferred,
                Err(e) => e,
            },
            None => "no COFFER_CACHE_DIR, XDG_CACHE_HOME or HOME".to_string(),
        };
        let fallback = Self::fallback_dir();
        match fallback.as_deref().map(Self::check) {
            Some(Ok(())) => {
                tracing::debug!(
                    "component cache: {why}; using {}",
                    fallback.as_deref().unwrap_or(Path::new("")).display()
                );
                fallback
            }
            Some(Err(e)) => {
                tracing::warn!(
                    "no usable component cache ({why}; {e}): plugins are compiled in memory, every run (set \
                     COFFER_CACHE_DIR to a private directory)"
                );
                None
            }
            None => {
                tracing::warn!("no usable component cache ({why}): plugins are compiled in memory, every run");
                None
            }
        }
    }

    /// Creates `dir` (owner-only) if needed and checks that it is a private
    /// directory this user owns.
    fn check(dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{} cannot be created ({e})", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let owner_ok = md.uid() == current_uid(dir).unwrap_or(u32::MAX);
        if !md.is_dir() || md.mode() & 0o022 != 0 || !owner_ok {
            return Err(format!("{} is not a private directory owned by this user", dir.display()));
        }
        Ok(())
    }

    /// Opens (creating, owner-only) a cache directory. Returns `None`, with a
    /// warning, when the directory cannot be trusted or created.
    pub fn open(dir: &Path) -> Option<ComponentCache> {
        match Self::check(dir) {
            Ok(()) => Some(ComponentCache { dir: dir.to_path_buf() }),
            Err(e) => {
                tracing::warn!("component cache unusable: {e}; compiling plugins in memory");
                None
            }
        }
    }

    /// Loads `wasm` compiled for `engine`, from the cache or by compiling
    /// and storing it.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        let path = self.dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
        if path.is_file() {
            match load_precompiled(engine, &path) {
                Ok(c) => {
                    tracing::debug!("compiled component from the cache {}", path.display());
                    return Ok(c);
                }
                Err(e) => tracing::warn!("cached component {} unusable ({e}); recompiling", path.display()),
            }
        }
        let bytes = engine.precompile_component(wasm)?;
        tracing::debug!("component compiled; storing it in the cache {}", self.dir.display());
        // A name no other writer in this or another process uses.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.{seq}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("cannot store compiled component in {} ({e})", self.dir.display());
            return Component::new(engine, wasm);
        }
        load_precompiled(engine, &path)
    }
}

/// The uid this process creates files as, read off a probe file.
fn current_uid(dir: &Path) -> Option<u32> {
    let probe = dir.join(format!(".uid-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").ok()?;
    let uid = std::fs::metadata(&probe).ok().map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid
}

/// Loads a precompiled component file.
///
/// This is the one `unsafe` in coffer: wasmtime trusts precompiled code
/// completely, so it must only ever see files produced by
/// `Engine::precompile_component` of a compatible engine. The callers
/// guarantee that: [`ComponentCache::load`] only reads files it wrote
/// itself, into a directory only this user can write, named by a key that
/// includes the engine's compatibility hash. wasmtime additionally checks
/// the file's header against the engine and refuses a mismatch.
#[allow(unsafe_code)]
fn load_precompiled(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see the function documentation: the file was written by this
    // host from `precompile_component` output, in a private directory.
    unsafe { Component::deserialize_file(engine, path) }
}
