//! Shared helpers: the `coffer` binary, temp repositories, fixture paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Password used by every test repository.
pub const PASSWORD: &str = "correct horse battery staple";

/// The `coffer` binary built beside this test binary.
pub fn coffer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/coffer
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("coffer");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p coffer` (`cargo xtask test` does it first)",
        bin.display()
    );
    bin
}

/// A temp dir with a repository in it.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestRepo {
    /// Creates a repository with [`PASSWORD`].
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().join("repo").to_str().expect("utf-8").to_string();
        let t = TestRepo { dir, url };
        let out = t.coffer(&["init"]);
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    /// A `coffer` command against this repository, with a private cache.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(coffer_bin());
        c.env("COFFER_REPO", &self.url)
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("COFFER_PASSWORD_FILE")
            .env_remove("COFFER_NEW_PASSWORD")
            .env_remove("COFFER_LOG");
        c
    }

    /// Runs `coffer ARGS`.
    pub fn coffer(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("coffer runs")
    }

    /// Runs `coffer ARGS`, expects success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.coffer(args);
        assert!(
            out.status.success(),
            "coffer {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs `coffer --json ARGS` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("coffer {args:?} printed invalid JSON ({e}):\n{s}"))
    }
}

/// Path of the hostile fixture plugin.
pub fn hostile_wasm() -> &'static str {
    env!("COFFER_FIXTURE_HOSTILE")
}

/// Path of the files plugin.
pub fn files_wasm() -> &'static str {
    env!("COFFER_PLUGIN_FILES")
}

/// Stderr of an output, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
