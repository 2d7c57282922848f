//! Builds the fixture plugins (and the built-in files plugin the runtime
//! tests load directly) for wasm32-wasip2 into `<target dir>/plugins`, and passes
//! their paths to the tests as `COFFER_FIXTURE_<NAME>` constants; and the
//! example plugin of `docs/writing-a-plugin.md`, as `COFFER_EXAMPLE_NOTES`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (env name, package).
const FIXTURES: &[(&str, &str)] =
    &[("COFFER_FIXTURE_HOSTILE", "coffer-fixture-hostile"), ("COFFER_PLUGIN_FILES", "coffer-plugin-files")];

/// The guide's example (env name, package, component): named after its
/// `[lib] name`, as the guide says.
const EXAMPLE: (&str, &str, &str) = ("COFFER_EXAMPLE_NOTES", "coffer-plugin-notes", "notes.wasm");

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().expect("tests/ is one level down").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = plugin_target_dir(&out);
    for dir in ["wit", "sdk/src", "tests/fixtures", "plugins/files", "examples", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for (env, package) in FIXTURES {
        build(&root, &target_dir, package);
        let artifact = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
        println!("cargo:rustc-env={env}={}", artifact.display());
    }
    let (env, package, component) = EXAMPLE;
    build(&root, &target_dir, package);
    let artifact = target_dir.join("wasm32-wasip2/release").join(component);
    assert!(artifact.is_file(), "building {package} left no {}", artifact.display());
    println!("cargo:rustc-env={env}={}", artifact.display());
}

fn build(root: &Path, target_dir: &Path, package: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", package, "--target-dir"])
        .arg(target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .status()
        .expect("cargo runs");
    if !status.success() {
        panic!(
            "building fixture {package} for wasm32-wasip2 failed; is the target installed? (`rustup target add wasm32-wasip2`)"
        );
    }
}

include!("../host/cli/plugin_target_dir.rs");
