//! `notes`: a coffer plugin that backs up the `.txt` files of one directory,
//! restores them with their permission bits and modification times, and
//! verifies them. `docs/writing-a-plugin.md` walks through it.

use coffer_sdk::{
    Capability, Config, ConfigError, EntryKind, Error, FileOutcome, FileSource, Plugin, PluginInfo, RestoreOptions,
    Sink, SnapshotReader, VerifyReport, host,
};
use serde::Deserialize;

/// The plugin.
pub struct Notes;

/// `--set path=DIR [--set extension=md]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotesConfig {
    /// The directory. The host grants it read-only and hands it over as an
    /// absolute path without symlinks (it resolves a relative one).
    path: String,
    /// Notes are the files whose names end in `.` and this.
    #[serde(default = "default_extension")]
    extension: String,
}

fn default_extension() -> String {
    "txt".into()
}

impl Config for NotesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.extension.is_empty() || self.extension.contains(['.', '/']) {
            return Err(ConfigError::field("extension", "must be an extension without its dot, such as `md`"));
        }
        Ok(())
    }
}

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["path"],
  "additionalProperties": false,
  "properties": {
    "path": {"type": "string", "x-coffer-grant": "read-dir", "description": "The directory of notes; granted read-only."},
    "extension": {"type": "string", "default": "txt", "description": "Which files are notes."}
  }
}"#;

/// Paths per `add_files` and `restore_files` call, at most.
const BATCH: usize = 10_000;

impl Plugin for Notes {
    type Config = NotesConfig;

    fn info() -> PluginInfo {
        PluginInfo::new("notes", env!("CARGO_PKG_VERSION"), "The notes of one directory: its .txt files").schema(SCHEMA)
    }

    fn source(config: &NotesConfig) -> String {
        format!("notes:{}", config.path)
    }

    fn capabilities(config: &NotesConfig) -> Vec<Capability> {
        vec![Capability::ReadDir(config.path.clone())]
    }

    fn snapshot(config: NotesConfig, _parent: Option<&SnapshotReader>, sink: &Sink) -> Result<(), Error> {
        let suffix = format!(".{}", config.extension);
        let mut changed = Vec::new();
        // One host call lists the directory, with each file's size, mtime and mode.
        for item in host::list_dir(&config.path)?.items {
            if item.kind != EntryKind::File || !item.name.ends_with(&suffix) {
                continue;
            }
            // Unchanged since the parent snapshot: kept without being read
            // (always false when there is no parent).
            if sink.reuse_unchanged(&item.name, item.size, item.mtime, item.mode) {
                continue;
            }
            let source = format!("{}/{}", config.path.trim_end_matches('/'), item.name);
            changed.push(FileSource { path: item.name, source });
        }
        // The host reads these files itself and records their mode and mtime.
        for batch in changed.chunks(BATCH) {
            host::check_cancelled()?;
            for (file, outcome) in batch.iter().zip(sink.add_files(batch)?) {
                match outcome {
                    FileOutcome::Added(_) => {}
                    FileOutcome::Gone => host::warn(format!("{} vanished during the backup; skipped", file.source)),
                    FileOutcome::Unreadable(why) => host::warn(format!("left out {}: {why}", file.source)),
                }
            }
        }
        Ok(())
    }

    fn restore(_config: NotesConfig, snapshot: &SnapshotReader, options: RestoreOptions) -> Result<(), Error> {
        let target = options.directory()?;
        if !options.force && std::fs::read_dir(target)?.next().is_some() {
            return Err(Error::Other(format!(
                "restore target {target} is not empty; restore into an empty directory or pass --force to overwrite"
            )));
        }
        // `coffer restore --path NAME` (repeatable) picks notes; none means all.
        let paths: Vec<String> = snapshot.entries().map(|e| e.path).filter(|p| options.includes(p)).collect();
        if paths.is_empty() && !options.include.is_empty() {
            return Err(Error::Other(format!("the snapshot holds no note named {}", options.include.join(", "))));
        }
        // The host writes each file (replacing one already there), then its
        // mode and mtime.
        for batch in paths.chunks(BATCH) {
            host::check_cancelled()?;
            snapshot.restore_files(batch)?;
        }
        Ok(())
    }

    fn verify(_config: NotesConfig, snapshot: &SnapshotReader) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        for e in snapshot.entries() {
            host::check_cancelled()?;
            let mut hasher = blake3::Hasher::new();
            let read = snapshot.open(&e.path).and_then(|mut r| Ok(std::io::copy(&mut r, &mut hasher)?));
            match read {
                Err(err) => report.problem(&e.path, format!("unreadable: {err}")),
                Ok(size) => {
                    if size != e.size {
                        report.problem(&e.path, format!("read {size} bytes, the snapshot records {}", e.size));
                    } else if e.blake3.as_deref() != Some(hasher.finalize().to_hex().as_str()) {
                        report.problem(&e.path, "the content does not match its recorded BLAKE3");
                    }
                    report.checked(1, size);
                }
            }
        }
        Ok(report)
    }
}

coffer_sdk::export!(Notes);
