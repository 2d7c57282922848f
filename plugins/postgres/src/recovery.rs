//! What a restore writes so that the restored cluster recovers to the point
//! the operator chose: `recovery.signal` and settings appended to
//! `postgresql.auto.conf` (`restore_command`, the recovery target, what to
//! do on reaching it).

use coffer_pgwal::{Lsn, parse_time};
use coffer_sdk::Error;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// At the end of the WAL in the backup: no recovery settings at all;
    /// the server replays the backup's own WAL and starts.
    BackupEnd,
    /// At the end of the archived WAL.
    ArchiveEnd,
    /// At a time, normalized to UTC (`2026-12-02 18:00:00.25+00`).
    Time(String),
    /// At an LSN.
    Lsn(Lsn),
    /// At a transaction id.
    Xid(u64),
}

/// What the server does on reaching the target (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// End recovery and accept writes (a new timeline).
    #[default]
    Promote,
    /// Pause, for the operator to inspect before `pg_wal_replay_resume()`.
    Pause,
    /// Shut down.
    Shutdown,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

/// Whether the restored cluster archives WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveMode {
    /// As the backed-up cluster was configured (it goes on archiving into
    /// the same stream, on its new timeline).
    #[default]
    Preserve,
    /// `archive_mode = off`: a test or inspection copy that must not write
    /// into the production archive.
    Off,
}

/// The recovery a restore sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where to stop.
    pub stop: Stop,
    /// Stop after (true) or just before (false) the target.
    pub inclusive: bool,
    /// What to do there.
    pub action: Action,
    /// Archiving after the restore.
    pub archive: ArchiveMode,
    /// `restore_command`, when recovery reads the archive.
    pub restore_command: Option<String>,
}

impl Plan {
    /// The plan for the config's targets; at most one may be given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        to_time: Option<&str>,
        to_lsn: Option<&str>,
        to_xid: Option<&str>,
        to_end: bool,
        inclusive: bool,
        action: Action,
        archive: ArchiveMode,
        restore_command: Option<&str>,
    ) -> Result<Plan, Error> {
        let given: Vec<&str> =
            [("to_time", to_time.is_some()), ("to_lsn", to_lsn.is_some()), ("to_xid", to_xid.is_some())]
                .into_iter()
                .chain([("to_end", to_end)])
                .filter(|(_, g)| *g)
                .map(|(k, _)| k)
                .collect();
        if given.len() > 1 {
            return Err(Error::InvalidConfig(format!("{}: give one recovery target, not several", given.join(", "))));
        }
        let stop = if let Some(t) = to_time {
            let t = parse_time(t).map_err(|e| Error::InvalidConfig(format!("to_time: {e}")))?;
            Stop::Time(t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string())
        } else if let Some(l) = to_lsn {
            Stop::Lsn(Lsn::parse(l).map_err(|e| Error::InvalidConfig(format!("to_lsn: {e}")))?)
        } else if let Some(x) = to_xid {
            let x = x.trim();
            let n = x.parse::<u64>().ok().filter(|n| *n >= 3).ok_or_else(|| {
                Error::InvalidConfig(format!("to_xid: {x:?} is not a transaction id (a number such as 7412)"))
            })?;
            Stop::Xid(n)
        } else if to_end {
            Stop::ArchiveEnd
        } else {
            Stop::BackupEnd
        };
        let restore_command = restore_command.map(str::trim).filter(|c| !c.is_empty()).map(str::to_string);
        if stop != Stop::BackupEnd && restore_command.is_none() {
            return Err(Error::InvalidConfig(
                "restore_command: recovery past the backup's end reads the WAL archive, and coffer offered no command \
                 to fetch from it; give the command PostgreSQL runs to fetch a file, e.g. --set \
                 restore_command='coffer --repo R --password-file F wal fetch %f %p'"
                    .into(),
            ));
        }
        if let Some(c) = &restore_command
            && !(c.contains("%f") && c.contains("%p"))
        {
            return Err(Error::InvalidConfig(format!(
                "restore_command: {c:?} must contain %f (the file PostgreSQL asks for) and %p (where to write it)"
            )));
        }
        Ok(Plan { stop, inclusive, action, archive, restore_command })
    }

    /// True when the restored cluster must start in targeted recovery.
    pub fn needs_signal(&self) -> bool {
        self.stop != Stop::BackupEnd
    }

    /// The lines appended to `postgresql.auto.conf` (empty when nothing is
    /// to be set). `snapshot` names the snapshot in the comment.
    pub fn settings(&self, snapshot: &str) -> String {
        let mut lines = Vec::new();
        if self.needs_signal() {
            if let Some(c) = &self.restore_command {
                lines.push(format!("restore_command = {}", conf_quote(c)));
            }
            match &self.stop {
                Stop::Time(t) => lines.push(format!("recovery_target_time = {}", conf_quote(t))),
                Stop::Lsn(l) => lines.push(format!("recovery_target_lsn = '{l}'")),
                Stop::Xid(x) => lines.push(format!("recovery_target_xid = '{x}'")),
                Stop::ArchiveEnd | Stop::BackupEnd => {}
            }
            if !matches!(self.stop, Stop::ArchiveEnd) {
                lines.push(format!("recovery_target_inclusive = {}", if self.inclusive { "on" } else { "off" }));
                lines.push(format!("recovery_target_action = '{}'", self.action.as_str()));
            }
        }
        if self.archive == ArchiveMode::Off {
            lines.push("archive_mode = 'off'".into());
        }
        if lines.is_empty() {
            return String::new();
        }
        format!("\n# Recovery settings written by `coffer restore` of snapshot {snapshot}\n{}\n", lines.join("\n"))
    }
}

/// A value quoted for `postgresql.conf`.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(time: Option<&str>, lsn: Option<&str>, xid: Option<&str>, cmd: Option<&str>) -> Result<Plan, Error> {
        Plan::new(time, lsn, xid, false, true, Action::Promote, ArchiveMode::Preserve, cmd)
    }

    const CMD: &str = "coffer --repo /r wal fetch %f %p";

    #[test]
    fn a_full_restore_sets_nothing() {
        let p = plan(None, None, None, None).unwrap();
        assert!(!p.needs_signal());
        assert_eq!(p.settings("abc"), "");
        let off = Plan::new(None, None, None, false, true, Action::Promote, ArchiveMode::Off, None).unwrap();
        assert_eq!(off.settings("abc").trim_end().lines().last(), Some("archive_mode = 'off'"));
    }

    #[test]
    fn targets_become_settings() {
        let p = plan(Some("2026-05-01T12:00:00.5+02:00"), None, None, Some(CMD)).unwrap();
        let s = p.settings("abc");
        assert!(s.contains("recovery_target_time = '2026-05-01 10:00:00.500+00'"), "{s}");
        assert!(s.contains("restore_command = 'coffer --repo /r wal fetch %f %p'"));
        assert!(s.contains("recovery_target_action = 'promote'") && s.contains("recovery_target_inclusive = on"));
        let s = plan(None, Some("0/3000148"), None, Some(CMD)).unwrap().settings("abc");
        assert!(s.contains("recovery_target_lsn = '0/3000148'"), "{s}");
        let s = plan(None, None, Some("7412"), Some(CMD)).unwrap().settings("abc");
        assert!(s.contains("recovery_target_xid = '7412'"), "{s}");
        let end = Plan::new(None, None, None, true, true, Action::Promote, ArchiveMode::Preserve, Some(CMD)).unwrap();
        let s = end.settings("abc");
        assert!(end.needs_signal() && s.contains("restore_command") && !s.contains("recovery_target"), "{s}");
    }

    #[test]
    fn bad_targets_name_the_field() {
        let e = |r: Result<Plan, Error>| r.unwrap_err().to_string();
        assert!(e(plan(Some("yesterday"), None, None, Some(CMD))).contains("to_time"));
        assert!(e(plan(None, Some("12"), None, Some(CMD))).contains("to_lsn"));
        assert!(e(plan(None, None, Some("-4"), Some(CMD))).contains("to_xid"));
        assert!(e(plan(Some("2026-05-01 10:00:00"), Some("0/1"), None, Some(CMD))).contains("one recovery target"));
        assert!(e(plan(None, Some("0/1"), None, None)).contains("restore_command"));
        assert!(e(plan(None, Some("0/1"), None, Some("cp /x %p"))).contains("%f"));
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote(r"it's a\b"), r"'it''s a\\b'");
    }
}
