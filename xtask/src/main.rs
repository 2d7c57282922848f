//! `cargo xtask`: the one entry point for building, testing, demonstrating
//! and benchmarking coffer.
//!
//! ```text
//! cargo xtask demo [--source DIR]   coffer CLI: init a local repository, back up a real directory, verify, restore
//! cargo xtask deps                  install what the tests and CI gates need (test servers, wasm target, cargo-deny)
//! cargo xtask test [FILTER]         run every test and doctest
//! cargo xtask ci                    fmt, clippy (host and wasm32-wasip2), cargo deny, then test (what .ci/run runs)
//! cargo xtask deny                  cargo deny check: licences, bans, sources; advisories where the database can be fetched
//! cargo xtask bench repo|runtime|redis|mongodb|postgres|archive|compare|primitives   end-to-end and criterion benchmarks
//! cargo xtask build-plugins         build every plugin, the guide's example and every fixture for wasm32-wasip2
//! ```

mod bench;
mod bench_archive;
mod bench_compare;
mod bench_fabric;
mod bench_mongodb;
mod bench_postgres;
mod bench_redis;
mod deps;
mod fuzz;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("deps") => deps::ensure_all(),
        Some("test") => test(&args[1..]),
        Some("ci") => ci(),
        Some("deny") => deny(),
        Some("bench") => bench::run(&args[1..]),
        Some("build-plugins") => build_plugins(),
        Some("fuzz") => fuzz::run_fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo [--source DIR] | deps | test [FILTER] | ci | deny | bench repo|runtime|redis|mongodb|postgres|archive|compare|primitives | build-plugins>"
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

/// Cargo's target directory for this workspace, as `cargo metadata` reports
/// it (so `CARGO_TARGET_DIR` and `build.target-dir` are honoured); asked once.
pub(crate) fn target_dir() -> Result<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir);
    }
    let out = cargo_cmd()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata --format-version 1 --no-deps` failed with {}", out.status);
    }
    let json = String::from_utf8(out.stdout).context("`cargo metadata` printed something other than UTF-8")?;
    let dir = json_string(&json, "target_directory").context("`cargo metadata` reported no target_directory")?;
    Ok(DIR.get_or_init(|| PathBuf::from(dir)))
}

/// Where the wasm32-wasip2 crates are built: `<target dir>/plugins`, its own
/// target directory so that the nested builds in `host/cli/build.rs` and
/// `tests/build.rs` never wait on the outer build's lock (they compute the
/// same directory from their `OUT_DIR`).
pub(crate) fn plugin_target_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("plugins"))
}

/// The string value of the first `"key": "..."` in JSON text, unescaped
/// (xtask has no JSON parser).
fn json_string(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
}

/// Builds with `cargo build --release ARGS`, saying first what is built and
/// why, and showing cargo's own progress (a cold build of `coffer` takes
/// minutes: it compiles wasmtime and the built-in plugins).
pub(crate) fn build_release(what: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: building {what} (cargo build --release {})", args.join(" "));
    run(cargo_cmd().args(["build", "--release"]).args(args))
}

/// Builds the release `coffer` binary, built-in plugins included, and
/// returns its path.
pub(crate) fn build_coffer() -> Result<PathBuf> {
    // The built-in plugins first, in the directory the `coffer` build script
    // uses, so their progress shows too (cargo hides a build script's output).
    build_builtin_plugins()?;
    build_release(
        "the coffer binary (a cold build compiles wasmtime and takes several minutes on 2 cores)",
        &["-p", "coffer"],
    )?;
    Ok(target_dir()?.join("release/coffer"))
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
    let bin = build_coffer()?;
    let work = target_dir()?.join("demo");
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

/// Runs every test: unit, integration, end-to-end, examples, benches (as
/// tests) and doctests. The servers the tests start must be installed
/// (`cargo xtask deps`).
fn test(args: &[String]) -> Result<()> {
    deps::ensure_wasm_target()?;
    build_plugins()?;
    // The end-to-end tests run the `coffer` binary itself (and the MongoDB
    // stand-in's); `cargo test` builds only their unit-test harnesses.
    run(cargo_cmd().args(["build", "-p", "coffer", "-p", "coffer-mongo-standin", "-p", "coffer-paritydb-tool"]))?;
    let mut cmd = cargo_cmd();
    // Default members, plus the unit tests of plugins whose format code is
    // plain Rust (the redis plugin's RDB, listpack and AOF parsers). The
    // plugins themselves are wasm32-wasip2 components, built by
    // build-plugins and run by the end-to-end tests.
    cmd.args(["test", "--workspace", "--exclude", "coffer-sdk"]).args(host_excludes());
    cmd.args(["--lib", "--bins", "--tests", "--examples", "--benches", "--"]).args(args);
    let mut counts = TestCounts::default();
    let unit = run_tests(&mut cmd, &mut counts);
    // Doctests (cargo runs them apart from the other targets). The plugins
    // are left out: a doctest links the crate's cdylib for the host, whose
    // export names (`cabi_post_coffer:plugin/...`) the host linker's version
    // script cannot hold. The guide's example plugin (`examples/`) is built
    // and run by `tests/it/guide.rs` instead.
    let mut doc = cargo_cmd();
    doc.args(["test", "--doc", "--workspace"]);
    for p in guest_packages().iter().filter(|p| p.starts_with("coffer-fixture-") || p.starts_with("coffer-plugin-")) {
        doc.args(["--exclude", p]);
    }
    let doc = run_tests(doc.arg("--").args(args), &mut counts);
    println!("tests: {} passed, {} failed, {} skipped", counts.passed, counts.failed, counts.ignored);
    unit.and(doc)
}

/// What the `test result:` lines of cargo's test binaries add up to.
#[derive(Default)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and adds every test binary's
/// result to `counts` (printed by the caller as one closing line:
/// `tests: N passed, N failed, N skipped`).
fn run_tests(cmd: &mut Command, counts: &mut TestCounts) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
    let TestCounts { passed, failed, ignored } = counts;
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
                    "passed" => *passed += n,
                    "failed" => *failed += n,
                    "ignored" => *ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// What `.ci/run` runs after `cargo xtask deps`: the quick gates first
/// (formatting, lints on the host and on wasm32-wasip2, dependency policy),
/// then every test.
fn ci() -> Result<()> {
    gate("formatting", cargo_cmd().args(["fmt", "--all", "--check"]))?;
    gate(
        "clippy (host crates)",
        cargo_cmd()
            .args(["clippy", "--workspace", "--all-targets"])
            .args(host_excludes())
            .args(["--", "-D", "warnings"]),
    )?;
    deps::ensure_wasm_target()?;
    let mut cmd = cargo_cmd();
    cmd.args(["clippy", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(plugin_target_dir()?);
    for p in guest_packages() {
        cmd.args(["-p", &p]);
    }
    gate("clippy (wasm32-wasip2 crates)", cmd.args(["--", "-D", "warnings"]))?;
    deny()?;
    test(&[])
}

/// `--exclude` for every crate that only builds for wasm32-wasip2 (the
/// files plugin, the guide's example and the fixtures; the SDK and the other
/// plugins also build for the host, where their parsers are unit-tested).
fn host_excludes() -> Vec<String> {
    let mut args = vec!["--exclude".to_string(), "coffer-plugin-files".to_string()];
    for p in guest_packages().into_iter().filter(|p| p.starts_with("coffer-fixture-") || p == EXAMPLE_PLUGIN) {
        args.extend(["--exclude".to_string(), p]);
    }
    args
}

/// Runs one CI gate, saying which before it starts and which failed.
fn gate(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: ci: {name}");
    run(cmd).with_context(|| format!("the {name} gate failed"))
}

/// `cargo deny check` against `deny.toml`: licences, bans (duplicate
/// versions, wildcards) and sources always; advisories only where the
/// RustSec database can be fetched (it comes from the network, which CI's
/// machines do not reach), and says so when it cannot.
fn deny() -> Result<()> {
    gate(
        "cargo deny (licences, bans, sources)",
        cargo_cmd().args(["deny", "--log-level", "warn", "check", "licenses", "bans", "sources"]),
    )?;
    let fetched = cargo_cmd()
        .args(["deny", "--log-level", "error", "fetch", "db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !fetched {
        eprintln!(
            "xtask: advisories not checked: the RustSec advisory database could not be fetched \
             (no network?); run `cargo xtask deny` where it can be"
        );
        return Ok(());
    }
    gate(
        "cargo deny (advisories)",
        cargo_cmd().args(["deny", "--log-level", "warn", "--offline", "check", "advisories"]),
    )
}

/// The plugin `docs/writing-a-plugin.md` walks through (`examples/plugin-notes`).
const EXAMPLE_PLUGIN: &str = "coffer-plugin-notes";

/// Every wasm32-wasip2 crate: the SDK, `plugins/*`, the guide's example
/// and `tests/fixtures/*`.
fn guest_packages() -> Vec<String> {
    let mut names = vec!["coffer-sdk".to_string(), EXAMPLE_PLUGIN.to_string()];
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

/// The plugins embedded in the `coffer` binary: the packages of `BUILTIN`
/// in `host/cli/build.rs`.
const BUILTIN_PLUGINS: &[&str] = &[
    "coffer-plugin-files",
    "coffer-plugin-postgres",
    "coffer-plugin-redis",
    "coffer-plugin-mongodb",
    "coffer-plugin-fabric",
    "coffer-plugin-substrate",
];

/// `cargo build --release --target wasm32-wasip2` into the plugin target
/// directory, with the settings `host/cli/build.rs` and `tests/build.rs`
/// use (no debug info, no host flags), so that their nested builds find
/// what this one built up to date.
fn plugin_build() -> Result<Command> {
    let mut cmd = cargo_cmd();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(plugin_target_dir()?)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    Ok(cmd)
}

/// Builds `packages` for wasm32-wasip2 one package at a time, as the build
/// scripts do: one invocation per package, so that dependencies' features
/// unify the same way and the build scripts' nested builds find everything
/// up to date (building them together would unify features across them and
/// leave the build scripts to build each again).
fn build_guests<S: AsRef<str>>(packages: &[S]) -> Result<()> {
    deps::ensure_wasm_target()?;
    for package in packages {
        let package = package.as_ref();
        eprintln!("xtask: building {package} for wasm32-wasip2");
        run(plugin_build()?.args(["-p", package]))?;
    }
    Ok(())
}

/// Builds the plugins that the `coffer` binary embeds.
fn build_builtin_plugins() -> Result<()> {
    build_guests(BUILTIN_PLUGINS)
}

/// Builds every plugin and fixture for wasm32-wasip2 into
/// `<target dir>/plugins` (where the `coffer` build and the tests pick them
/// up), stripped.
pub(crate) fn build_plugins() -> Result<()> {
    let packages: Vec<String> = guest_packages().into_iter().filter(|n| n != "coffer-sdk").collect();
    build_guests(&packages)?;
    let out = plugin_target_dir()?.join("wasm32-wasip2/release");
    for e in std::fs::read_dir(&out).with_context(|| format!("listing {}", out.display()))?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "wasm") {
            println!("built {} ({} KiB)", p.display(), e.metadata()?.len() / 1024);
        }
    }
    Ok(())
}
