// Shared by the build scripts of `coffer` and `coffer-tests` (`include!`d).

/// `<target dir>/plugins`, where `cargo xtask build-plugins` builds too.
/// The outer build's target directory is found from `OUT_DIR`
/// (`<target dir>[/<triple>]/<profile>/build/<package>-<hash>/out`), so
/// `CARGO_TARGET_DIR`, `build.target-dir` and `--target-dir` are honoured;
/// `COFFER_PLUGIN_TARGET_DIR` overrides it.
fn plugin_target_dir(out: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=COFFER_PLUGIN_TARGET_DIR");
    if let Some(dir) = std::env::var_os("COFFER_PLUGIN_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let mut dir = out.ancestors().nth(4).expect("OUT_DIR lies four levels below the target directory");
    if dir.file_name() == std::env::var_os("TARGET").as_deref() {
        dir = dir.parent().expect("a target triple's directory lies in the target directory");
    }
    dir.join("plugins")
}
