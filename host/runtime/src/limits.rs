//! Per-plugin limits: memory, wall time, time to answer `info`, snapshot
//! output, open handles. Defaults suit a large backup; operators override
//! them with `--memory-limit`, `--time-limit`, `--info-time-limit` and
//! `--output-limit` or a `[limits]` table in `--config FILE.toml`.

use std::time::Duration;

/// What one plugin job may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, bytes, over all of the instance's memories.
    pub memory: u64,
    /// Wall-clock time for the whole job.
    pub wall_time: Duration,
    /// Wall-clock time for each `info` call (within `wall_time`): a plugin
    /// describes itself at once, so one that takes longer is stuck or
    /// hostile, and `coffer plugin inspect` must not wait on it.
    pub info_time: Duration,
    /// Content bytes a snapshot may write through its entry writers.
    pub output_bytes: u64,
    /// Entry writers and readers open at the same time.
    pub open_handles: u32,
}

/// Default memory cap: 512 MiB.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default time budget: 24 hours.
pub const DEFAULT_WALL_TIME: Duration = Duration::from_secs(24 * 3600);
/// Default time to answer `info`: 10 seconds.
pub const DEFAULT_INFO_TIME: Duration = Duration::from_secs(10);
/// Default output quota: 16 TiB.
pub const DEFAULT_OUTPUT: u64 = 16 << 40;
/// Default cap on open handles.
pub const DEFAULT_HANDLES: u32 = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: DEFAULT_MEMORY,
            wall_time: DEFAULT_WALL_TIME,
            info_time: DEFAULT_INFO_TIME,
            output_bytes: DEFAULT_OUTPUT,
            open_handles: DEFAULT_HANDLES,
        }
    }
}

/// Parses a size: `512MiB`, `2G`, `1024` (bytes), `64k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (try 512MiB, 2GiB, 100M)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("`{other}` in `{s}` is not a size unit (use KiB, MiB, GiB, TiB)")),
    };
    let v = n * mult as f64;
    if !(0.0..1.8e19).contains(&v) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(v as u64)
}

/// Parses a duration: `90s`, `30m`, `2h`, `1d`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (try 90s, 30m, 2h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("`{other}` in `{s}` is not a time unit (use ms, s, m, h, d)")),
    };
    if !(0.0..1e12).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }
}
