//! Terminal output: logging, progress bars (only on a terminal, never with
//! `--json` or `--quiet`), sizes and times.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use coffer_runtime::JobObserver;
use coffer_runtime::bindings::types::LogLevel;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Sets up `tracing` on stderr: warnings by default, `COFFER_LOG` to change.
/// With `COFFER_LOG` set, each line starts with the seconds since the
/// process set up logging, so `COFFER_LOG=debug` shows where a command's
/// time goes (repository open, plugin load, index load, upload, commit).
pub fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let (filter, timed) = match tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG") {
        Ok(f) => (f, true),
        Err(_) => (tracing_subscriber::EnvFilter::new(default), false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if timed {
        builder.with_timer(tracing_subscriber::fmt::time::uptime()).try_init()
    } else {
        builder.without_time().try_init()
    };
}

/// Bytes as `12.3 MiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Seconds as `1.2 s` or `3m 04s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1} s") } else { format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60) }
}

/// Shows plugin logs and progress: a bar with bytes, rate and ETA on a
/// terminal, log lines on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    warnings: Mutex<u64>,
}

impl Progress {
    /// A progress display; silent unless stderr is a terminal and neither
    /// `--json` nor `--quiet` was given.
    pub fn new(json: bool, quiet: bool, what: &str) -> Progress {
        let show = !json && !quiet && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} [{wide_bar}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress { bar, quiet: quiet || json, warnings: Mutex::new(0) }
    }

    /// Sets the expected total before the plugin reports one (a backup
    /// uses its parent's size, so the bar has an ETA from the start).
    pub fn estimate(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// Warnings the plugin logged.
    pub fn warnings(&self) -> u64 {
        *self.warnings.lock().expect("warnings lock")
    }
}

impl JobObserver for Progress {
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        if matches!(level, LogLevel::Warn | LogLevel::Error) {
            *self.warnings.lock().expect("warnings lock") += 1;
        }
        let show = match level {
            LogLevel::Trace | LogLevel::Debug => std::env::var_os("COFFER_LOG").is_some(),
            LogLevel::Info => !self.quiet && std::env::var_os("COFFER_LOG").is_some(),
            LogLevel::Warn => !self.quiet,
            LogLevel::Error => true,
        };
        if !show {
            return;
        }
        let tag = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warning",
            LogLevel::Error => "error",
        };
        let line = format!("{plugin}: {tag}: {message}");
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn progress(&self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                b.set_length(t);
            }
            b.set_position(done);
        }
    }
}

/// Prints a JSON value on stdout.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
