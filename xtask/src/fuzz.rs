//! `cargo xtask fuzz [--secs N] [TARGET...]`: runs each libFuzzer target
//! of `fuzz/` (every one, or those named) for N seconds (default 60), one
//! after another on one core, and ends with a table of executions per
//! target. See `docs/fuzzing.md`.
//!
//! It works on a stable toolchain: cargo-fuzz's nightly flags are allowed
//! with `RUSTC_BOOTSTRAP=1`, and the targets are built without a sanitizer
//! (`-s none`; coffer has no `unsafe`, and the allocation guard in
//! `fuzz/targets` catches huge allocations without one). cargo-fuzz and a
//! C++ compiler (libFuzzer is built from source) are installed if missing.
//! A crash leaves its input in `fuzz/artifacts/<target>/`; the run goes on
//! with the next target and fails at the end.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo_cmd, deps, run};

/// One target's outcome.
struct Outcome {
    target: String,
    /// libFuzzer's final `stat::number_of_executed_units` and
    /// `stat::average_exec_per_sec` (`-print_final_stats=1`).
    executions: Option<String>,
    rate: Option<String>,
    crashed: bool,
}

pub fn run_fuzz(args: &[String]) -> Result<()> {
    let mut secs: u64 = 60;
    let mut wanted = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                let v = it.next().context("--secs needs a number of seconds")?;
                secs = v.parse().with_context(|| format!("--secs {v}: not a number of seconds"))?;
            }
            other if other.starts_with('-') => bail!("unknown fuzz option {other} (use --secs N and target names)"),
            other => wanted.push(other.to_string()),
        }
    }
    let all = targets()?;
    for w in &wanted {
        if !all.contains(w) {
            bail!("there is no fuzz target {w}; the targets are: {}", all.join(", "));
        }
    }
    let chosen = if wanted.is_empty() { all } else { wanted };
    ensure_tools()?;

    // Seed every corpus with valid files made by coffer's own writers.
    run(cargo_cmd().args(["run", "--quiet", "-p", "coffer-fuzz-targets", "--bin", "fuzz-seeds", "--", "fuzz/corpus"]))?;

    let mut outcomes = Vec::new();
    for target in &chosen {
        println!("== fuzz {target} for {secs} s");
        outcomes.push(fuzz_one(target, secs)?);
    }
    println!("\n{:<12} {:>12} {:>9}  result", "target", "executions", "exec/s");
    for o in &outcomes {
        let result = if o.crashed { "CRASH (see fuzz/artifacts/)" } else { "ok" };
        println!(
            "{:<12} {:>12} {:>9}  {result}",
            o.target,
            o.executions.as_deref().unwrap_or("-"),
            o.rate.as_deref().unwrap_or("-")
        );
    }
    let crashed: Vec<&str> = outcomes.iter().filter(|o| o.crashed).map(|o| o.target.as_str()).collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets found crashes: {} (inputs in fuzz/artifacts/; fix the parser, then keep the input in \
             fuzz/regressions/<target>/ under a name saying what it guards)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// The targets: `fuzz/fuzz_targets/*.rs`, sorted.
fn targets() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("fuzz/fuzz_targets")
        .context("reading fuzz/fuzz_targets")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// cargo-fuzz (from crates.io) and a C++ compiler for libFuzzer.
fn ensure_tools() -> Result<()> {
    let has_cargo_fuzz = cargo_cmd()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_fuzz {
        println!("installing cargo-fuzz");
        run(cargo_cmd().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let has_cxx = ["c++", "g++", "clang++"]
        .iter()
        .any(|c| Command::new(c).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    if !has_cxx {
        deps::ensure_debian_packages(&["g++"])?;
    }
    Ok(())
}

/// Builds and runs one target for `secs` seconds on one core; its new
/// inputs go to `fuzz/corpus/<target>`, and the regression inputs are read
/// as corpus too.
fn fuzz_one(target: &str, secs: u64) -> Result<Outcome> {
    let mut cmd = cargo_cmd();
    // Its own target directory even when CARGO_TARGET_DIR names the main
    // workspace's: instrumented builds would only replace those there.
    cmd.env("RUSTC_BOOTSTRAP", "1").args(["fuzz", "run", "--sanitizer", "none", "--target-dir", "fuzz/target", target]);
    let corpus = format!("fuzz/corpus/{target}");
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {corpus}"))?;
    cmd.arg(&corpus);
    let regressions = format!("fuzz/regressions/{target}");
    if std::path::Path::new(&regressions).is_dir() {
        cmd.arg(&regressions);
    }
    cmd.args(["--", "-timeout=20", "-rss_limit_mb=3072", "-print_final_stats=1"])
        .arg(format!("-max_total_time={secs}"))
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    let (mut executions, mut rate) = (None, None);
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = Some(n.trim().to_string());
        } else if let Some(r) = line.strip_prefix("stat::average_exec_per_sec:") {
            rate = Some(r.trim().to_string());
        }
    }
    let status = child.wait()?;
    Ok(Outcome { target: target.to_string(), executions, rate, crashed: !status.success() })
}
