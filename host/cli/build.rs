//! Builds the built-in plugins for wasm32-wasip2 and embeds them: a user
//! with the `coffer` binary alone can back up every built-in source.
//!
//! The plugins are built by a nested cargo into `<target dir>/plugins` (its
//! own target directory, so it never waits on the outer build's lock), the
//! same place `cargo xtask build-plugins` uses.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Built-in plugins: (name, package).
const BUILTIN: &[(&str, &str)] = &[
    ("files", "coffer-plugin-files"),
    ("postgres", "coffer-plugin-postgres"),
    ("redis", "coffer-plugin-redis"),
    ("mongodb", "coffer-plugin-mongodb"),
    ("fabric", "coffer-plugin-fabric"),
    ("substrate", "coffer-plugin-substrate"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().and_then(Path::parent).expect("host/cli is two levels down").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = plugin_target_dir(&out);
    for dir in ["wit", "sdk/src", "sdk/Cargo.toml", "lsm", "pgwal", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let mut generated = String::from(
        "/// Built-in plugins embedded at build time: (name, component bytes).\npub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for (name, package) in BUILTIN {
        println!("cargo:rerun-if-changed={}", root.join("plugins").join(name).display());
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "-p", package, "--target-dir"])
            .arg(&target_dir)
            // The outer build's settings are for the host, not for wasm.
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
                "building the built-in plugin {package} for wasm32-wasip2 failed; \
                 is the target installed? (`rustup target add wasm32-wasip2`)"
            );
        }
        let artifact = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
        let dest = out.join(format!("{name}.wasm"));
        std::fs::copy(&artifact, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", artifact.display()));
        generated.push_str(&format!("    ({name:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.wasm\"))),\n"));
    }
    generated.push_str("];\n");
    std::fs::write(out.join("builtin.rs"), generated).expect("writes OUT_DIR");
}

include!("plugin_target_dir.rs");
