//! The MongoDB stand-in (`tests/mongo-standin`) checked with the official
//! Python driver: `check_with_pymongo.py` starts the stand-in binary with
//! several configurations (standalone, replica set, users, a capped oplog)
//! and drives it with pymongo. pymongo comes from `cargo xtask deps`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The stand-in binary built beside this test binary (`cargo xtask test`
/// builds it first, as it does `coffer`).
fn standin_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("coffer-mongo-standin");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p coffer-mongo-standin` (`cargo xtask test` does it first)",
        bin.display()
    );
    bin
}

#[test]
fn pymongo_finds_the_standin_behaving_like_mongodb_7_0() {
    let bin = standin_bin();
    let python = coffer_test_support::python_with_module("pymongo")
        .expect("no python3 can import pymongo: `cargo xtask deps` installs it (PyPI pymongo)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mongo-standin/check_with_pymongo.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&bin)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", python.display(), script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pymongo's checks of the stand-in failed ({}):\n{stdout}\n{stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains("checks passed") && !stdout.contains("FAIL"), "{stdout}");
}
