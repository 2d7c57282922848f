//! `cargo xtask`: the one entry point for building, testing, demonstrating
//! and benchmarking coffer.
//!
//! ```text
//! cargo xtask demo [--source DIR]   back up a real directory to a local repository, check, restore
//! cargo xtask test                  install test servers, run every test
//! cargo xtask ci                    fmt check + clippy + test (what .ci/run runs)
//! cargo xtask bench repo|primitives end-to-end repository benchmark | criterion micro-benchmarks
//! cargo xtask build-plugins         build every plugin for wasm32-wasip2
//! ```

mod bench;
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
                "usage: cargo xtask <demo [--source DIR] | test [FILTER] | ci | bench repo|primitives | build-plugins>"
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

fn demo(args: &[String]) -> Result<()> {
    run(cargo_cmd().args(["run", "--release", "--quiet", "-p", "coffer-repo", "--example", "demo", "--"]).args(args))
}

fn test(args: &[String]) -> Result<()> {
    deps::ensure_test_deps()?;
    deps::ensure_wasm_target()?;
    build_plugins()?;
    let mut cmd = cargo_cmd();
    cmd.args(["test", "--workspace", "--all-targets", "--"]).args(args);
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
    run(cargo_cmd().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    test(&[])
}

/// Builds every crate under `plugins/` for wasm32-wasip2.
fn build_plugins() -> Result<()> {
    let mut names = Vec::new();
    if let Ok(rd) = std::fs::read_dir("plugins") {
        for e in rd.flatten() {
            if e.path().join("Cargo.toml").exists() {
                names.push(format!("coffer-plugin-{}", e.file_name().to_string_lossy()));
            }
        }
    }
    names.sort();
    if names.is_empty() {
        return Ok(());
    }
    deps::ensure_wasm_target()?;
    let mut cmd = cargo_cmd();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
    for n in &names {
        cmd.args(["-p", n]);
    }
    run(&mut cmd)
}
