//! `cargo xtask`: the one entry point for building, testing, demonstrating
//! and benchmarking coffer.
//!
//! ```text
//! cargo xtask demo [--source DIR]   coffer CLI: init a local repository, back up a real directory, verify, restore
//! cargo xtask test                  install test servers, run every test
//! cargo xtask ci                    fmt check + clippy + test (what .ci/run runs)
//! cargo xtask bench repo|runtime|redis|postgres|compare|primitives   end-to-end and criterion benchmarks
//! cargo xtask build-plugins         build every plugin and fixture for wasm32-wasip2
//! ```

mod bench;
mod bench_compare;
mod bench_postgres;
mod bench_redis;
mod deps;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        Some("build-plugins") => build_plugins(),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo [--source DIR] | test [FILTER] | ci | bench repo|runtime|redis|postgres|compare|primitives | build-plugins>"
            );
            std::process::exit(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command, failing with its name if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub(crate) fn cargo_cmd() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The main job on the embedded default: builds the `coffer` binary (with
/// its built-in plugins), inits a local repository, backs up a real
/// directory through the `files` plugin, backs it up again incrementally,
/// verifies, restores, compares the restore with the source, and prints a
/// summary. `--source DIR` picks the directory (default `/usr/share/doc`).
fn demo(args: &[String]) -> Result<()> {
    deps::ensure_wasm_target()?;
    let mut source = PathBuf::from("/usr/share/doc");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--source" => source = PathBuf::from(it.next().context("--source needs a directory")?),
            other => bail!("unknown demo option {other} (use --source DIR)"),
        }
    }
    let source = source.canonicalize().with_context(|| format!("demo source {}", source.display()))?;
    run(cargo_cmd().args(["build", "--release", "--quiet", "-p", "coffer"]))?;
    let bin = std::env::current_dir()?.join("target/release/coffer");
    let work = std::env::current_dir()?.join("target/demo");
    let repo = work.join("repo");
    let restore = work.join("restore");
    for d in [&repo, &restore] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(&work)?;
    let coffer = |args: &[&str]| -> Result<()> {
        println!("$ coffer {}", args.join(" "));
        let mut c = Command::new(&bin);
        // A demo password; real use reads COFFER_PASSWORD_FILE or prompts.
        c.env("COFFER_REPO", &repo).env("COFFER_PASSWORD", "coffer demo password").args(args);
        run(&mut c)
    };
    let src = format!("path={}", source.display());
    let started = std::time::Instant::now();
    coffer(&["init"])?;
    coffer(&["backup", "files", "--set", &src])?;
    coffer(&["backup", "files", "--set", &src])?;
    coffer(&["snapshots"])?;
    coffer(&["verify", "latest"])?;
    coffer(&["check", "--read-data"])?;
    coffer(&["restore", "latest", "--target", restore.to_str().context("UTF-8 path")?])?;
    println!("$ diff -r --no-dereference {} {}", source.display(), restore.display());
    let same = Command::new("diff")
        .args(["-r", "--no-dereference", "-q"])
        .arg(&source)
        .arg(&restore)
        .status()
        .context("running diff")?
        .success();
    if !same {
        bail!("the restore differs from {}", source.display());
    }
    println!(
        "\ndemo done in {:.1} s: {} backed up twice, verified, checked and restored into {} byte-identically.\n\
         repository: {} (password: `coffer demo password`)",
        started.elapsed().as_secs_f64(),
        source.display(),
        restore.display(),
        repo.display()
    );
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    deps::ensure_test_deps()?;
    deps::ensure_wasm_target()?;
    build_plugins()?;
    // The end-to-end tests run the `coffer` binary itself; `cargo test`
    // builds only its unit-test harness.
    run(cargo_cmd().args(["build", "-p", "coffer"]))?;
    let mut cmd = cargo_cmd();
    // Default members, plus the unit tests of plugins whose format code is
    // plain Rust (the redis plugin's RDB, listpack and AOF parsers). The
    // plugins themselves are wasm32-wasip2 components, built by
    // build-plugins and run by the end-to-end tests.
    cmd.args(["test", "--workspace", "--exclude", "coffer-sdk", "--exclude", "coffer-plugin-files"]);
    for p in guest_packages().iter().filter(|p| p.starts_with("coffer-fixture-")) {
        cmd.args(["--exclude", p]);
    }
    cmd.args(["--lib", "--bins", "--tests", "--examples", "--benches", "--"]).args(args);
    run_tests(&mut cmd)
}

/// Runs `cargo test`, echoing its output, and ends with one line that adds
/// up every test binary's result: `tests: N passed, N failed, N skipped`.
fn run_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
                let n: u64 = n.parse().unwrap_or(0);
                match kind {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn ci() -> Result<()> {
    run(cargo_cmd().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo_cmd().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    deps::ensure_wasm_target()?;
    let mut cmd = cargo_cmd();
    cmd.args(["clippy", "--release", "--target", "wasm32-wasip2", "--target-dir", "target/plugins"]);
    for p in guest_packages() {
        cmd.args(["-p", &p]);
    }
    run(cmd.args(["--", "-D", "warnings"]))?;
    test(&[])
}

/// Every wasm32-wasip2 crate: the SDK, `plugins/*` and `tests/fixtures/*`.
fn guest_packages() -> Vec<String> {
    let mut names = vec!["coffer-sdk".to_string()];
    for (dir, prefix) in [("plugins", "coffer-plugin-"), ("tests/fixtures", "coffer-fixture-")] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.path().join("Cargo.toml").exists() {
                    names.push(format!("{prefix}{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    names.sort();
    names
}

/// Builds every plugin and fixture for wasm32-wasip2 into `target/plugins`
/// (where the `coffer` build and the tests pick them up), stripped.
pub(crate) fn build_plugins() -> Result<()> {
    deps::ensure_wasm_target()?;
    let mut cmd = cargo_cmd();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir", "target/plugins"])
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    for n in guest_packages().iter().filter(|n| *n != "coffer-sdk") {
        cmd.args(["-p", n]);
    }
    run(&mut cmd)?;
    for e in std::fs::read_dir("target/plugins/wasm32-wasip2/release")?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "wasm") {
            println!("built {} ({} KiB)", p.display(), e.metadata()?.len() / 1024);
        }
    }
    Ok(())
}
