//! Contract versions: a component built against 0.1.0 (kept as a fixture,
//! `tests/fixtures/contract-0.1.0/files.wasm`) keeps loading, backing up,
//! restoring and verifying beside the 0.2.0 plugins built today.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::{TestRepo, stderr};

/// The files plugin as it was built against contract 0.1.0.
fn old_files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/contract-0.1.0/files.wasm")
}

#[test]
fn a_component_built_against_0_1_0_backs_up_restores_and_verifies() {
    let t = TestRepo::new();
    let src = t.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/notes.txt"), b"written for 0.1.0\n").unwrap();
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/notes.txt", src.join("link")).unwrap();
    let old = old_files();
    let old = old.to_str().unwrap();

    let inspect = t.ok(&["plugin", "inspect", old]);
    assert!(inspect.contains("contract:    coffer:plugin@0.1.0 (no streams)"), "{inspect}");
    assert!(inspect.contains("grants:      inferred from key names"), "{inspect}");
    let builtin = t.ok(&["plugin", "inspect", "files"]);
    assert!(builtin.contains("contract:    coffer:plugin@0.2.0"), "{builtin}");

    t.ok(&["backup", old, "--set", &format!("path={}", src.display())]);
    let snaps = t.json(&["snapshots"]);
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    let dst = t.dir.path().join("dst");
    t.ok(&["restore", &id, "--target", dst.to_str().unwrap(), "--plugin", old]);
    assert_eq!(std::fs::read(dst.join("sub/notes.txt")).unwrap(), b"written for 0.1.0\n");
    let md = std::fs::metadata(dst.join("run.sh")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o750);
    assert_eq!(md.mtime(), std::fs::metadata(src.join("run.sh")).unwrap().mtime());
    assert_eq!(std::fs::read_link(dst.join("link")).unwrap(), Path::new("sub/notes.txt"));
    let v = t.json(&["verify", &id, "--plugin", old]);
    assert_eq!(v["ok"], true, "{v}");

    // The built-in files plugin (0.2.0) restores what the 0.1.0 component
    // wrote: the snapshot format did not change with the contract.
    let dst2 = t.dir.path().join("dst2");
    let out = t.coffer(&["restore", &id, "--target", dst2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dst2.join("sub/notes.txt")).unwrap(), b"written for 0.1.0\n");
}

#[test]
fn plugin_inspect_lists_the_declared_grants_and_what_a_config_is_granted() {
    let t = TestRepo::new();
    let text = t.ok(&["plugin", "inspect", "postgres"]);
    for line in [
        "grants (what a value typed into each field lets the plugin use):",
        "  url         connect          TCP and TLS to the address",
        "  pgdata_dir  read-dir         read-only access to the directory",
        "  sslmode     tls-verify       how strictly coffer checks servers' certificates",
        "  key_file    tls-client-key   the client key; read by coffer only, never by the plugin",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    let text = t.ok(&[
        "plugin",
        "inspect",
        "postgres",
        "--set",
        "url=postgres://u@127.0.0.1:5999/",
        "--set",
        "sslmode=require",
    ]);
    assert!(text.contains("granted by this config:\n  TCP connections to 127.0.0.1:5999\n"), "{text}");
    assert!(text.contains("NOT checked"), "{text}");
    let v = t.json(&["plugin", "inspect", "redis", "--set", "url=rediss://127.0.0.1:6380/"]);
    assert_eq!(v["grants_inferred"], false);
    let fields: Vec<&str> =
        v["grant_fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["ca_file", "cert_file", "data_dir", "key_file", "tls_verify", "url"]);
    assert_eq!(v["granted"][0], "TCP connections to 127.0.0.1:6380");
    assert!(v["granted"][1].as_str().unwrap().contains("chain and name"), "{v}");
}
