//! `docs/writing-a-plugin.md` followed as written. Its code blocks must be
//! the files of `examples/plugin-notes`, and its shell blocks, run in order
//! in an empty home directory with the example's `notes.wasm` where
//! `cargo build` leaves it, must back up, verify and restore notes with
//! their content, permission bits and modification times.
//!
//! The guide marks its blocks with an HTML comment on the line before:
//! `<!-- part of PATH -->` (the blocks so marked, joined by a blank line,
//! are the file), `<!-- run by tests/it/guide.rs -->` (run; must succeed)
//! and `<!-- run by tests/it/guide.rs, fails with "TEXT" -->` (run; must
//! fail, saying TEXT).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use filetime::FileTime;

use crate::support::coffer_bin;

const GUIDE: &str = include_str!("../../docs/writing-a-plugin.md");

/// The example plugin, built by `build.rs`.
const NOTES_WASM: &str = env!("COFFER_EXAMPLE_NOTES");

/// Each fenced block of the guide with the marker comment before it.
fn marked_blocks() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut lines = GUIDE.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let Some(marker) = line.trim().strip_prefix("<!-- ").and_then(|m| m.strip_suffix(" -->")) else { continue };
        let (n, fence) = lines.next().unwrap_or((0, ""));
        assert!(
            fence.starts_with("```"),
            "docs/writing-a-plugin.md:{}: `{line}` must be followed by a fenced block",
            n + 1
        );
        let mut block = String::new();
        loop {
            let Some((_, l)) = lines.next() else {
                panic!("docs/writing-a-plugin.md: the block after `{line}` is not closed")
            };
            if l.trim_end() == "```" {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        out.push((marker, block));
    }
    out
}

#[test]
fn guide_shows_the_example_crate_as_it_is() {
    let files = [
        ("examples/plugin-notes/Cargo.toml", include_str!("../../examples/plugin-notes/Cargo.toml")),
        ("examples/plugin-notes/src/lib.rs", include_str!("../../examples/plugin-notes/src/lib.rs")),
    ];
    let blocks = marked_blocks();
    for (path, file) in files {
        let marker = format!("part of {path}");
        let shown: Vec<&str> = blocks.iter().filter(|(m, _)| *m == marker).map(|(_, b)| b.as_str()).collect();
        let shown = shown.join("\n");
        if shown == file {
            continue;
        }
        let (line, guide, crate_) = shown
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(file.lines().map(Some).chain(std::iter::repeat(None)))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i + 1, a, b))
            .expect("the texts differ somewhere");
        panic!(
            "docs/writing-a-plugin.md does not show {path} as it is: the blocks marked `<!-- {marker} -->`, joined \
             by a blank line, must be the file. First difference, line {line}:\n  guide: {guide:?}\n  file:  {crate_:?}"
        );
    }
}

#[test]
fn guide_commands_back_up_verify_and_restore_notes() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let home = work.join("home");
    let notes = home.join("notes");
    // Beside the guide's own notes: one with its own mode and an old mtime,
    // a file that is not a note, and a note in a subdirectory (not one of
    // the directory's own).
    fs::create_dir_all(notes.join("drafts")).unwrap();
    fs::write(notes.join("2001.txt"), "an odyssey\n").unwrap();
    fs::set_permissions(notes.join("2001.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    filetime::set_file_mtime(notes.join("2001.txt"), FileTime::from_unix_time(1_000_000_000, 500_000_000)).unwrap();
    fs::write(notes.join("photo.jpg"), "not a note").unwrap();
    fs::write(notes.join("drafts/later.txt"), "not this one either").unwrap();
    // The guide's commands run in the crate's directory, `coffer` on PATH.
    let release = work.join("target/wasm32-wasip2/release");
    fs::create_dir_all(&release).unwrap();
    fs::copy(NOTES_WASM, release.join("notes.wasm")).unwrap_or_else(|e| panic!("copying {NOTES_WASM}: {e}"));
    fs::create_dir(work.join("bin")).unwrap();
    std::os::unix::fs::symlink(coffer_bin(), work.join("bin/coffer")).unwrap();

    // One script: the blocks in order, each expected failure checked in place.
    let mut script = String::new();
    let mut runs = 0;
    for (i, (marker, block)) in marked_blocks().into_iter().enumerate() {
        let Some(rest) = marker.strip_prefix("run by tests/it/guide.rs") else { continue };
        runs += 1;
        match rest.strip_prefix(", fails with ") {
            None if rest.is_empty() => script.push_str(&block),
            None => panic!("docs/writing-a-plugin.md: unknown marker `<!-- {marker} -->`"),
            Some(text) => {
                let text = text.trim_matches('"');
                script.push_str(&format!(
                    "if (\n{block}) 2>failed-{i}.txt; then echo 'this block should have failed:'; exit 99; fi\n\
                     cat failed-{i}.txt >&2\n\
                     grep -qF -- '{text}' failed-{i}.txt || {{ echo 'it failed without saying: {text}'; exit 99; }}\n"
                ));
            }
        }
    }
    assert!(runs >= 5, "docs/writing-a-plugin.md has only {runs} blocks marked `<!-- run by tests/it/guide.rs -->`");
    fs::write(work.join("guide.sh"), &script).unwrap();
    let path = format!("{}:{}", work.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .args(["-ex", "guide.sh"])
        .current_dir(work)
        .env("HOME", &home)
        .env("PATH", path)
        .env("COFFER_CACHE_DIR", work.join("cache"))
        .env_remove("COFFER_REPO")
        .env_remove("COFFER_PASSWORD")
        .env_remove("COFFER_PASSWORD_FILE")
        .env_remove("COFFER_NEW_PASSWORD")
        .env_remove("COFFER_NEW_PASSWORD_FILE")
        .env_remove("COFFER_SHARES_FROM")
        .env_remove("COFFER_LOG")
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the commands of docs/writing-a-plugin.md failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The second backup kept the unchanged notes from the first.
    let kept: Vec<u64> =
        stdout.lines().filter_map(|l| l.split("kept ").nth(1)?.split(' ').next()?.parse().ok()).collect();
    assert!(kept.len() == 2 && kept[0] == 0 && kept[1] >= 1, "kept from the parent: {kept:?}\n{stdout}");

    // The restore holds the directory's notes and nothing else, as they
    // were: content, permission bits, modification time.
    let read = |dir: &Path| -> BTreeMap<String, (Vec<u8>, u32, FileTime)> {
        fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                let md = e.metadata().unwrap();
                let name = e.file_name().into_string().unwrap();
                (
                    name,
                    (
                        fs::read(e.path()).unwrap(),
                        md.permissions().mode() & 0o7777,
                        FileTime::from_last_modification_time(&md),
                    ),
                )
            })
            .collect()
    };
    let mut want = read(&notes);
    want.retain(|name, _| name.ends_with(".txt"));
    assert!(want.len() >= 3, "{want:?}");
    let restored = home.join("notes-restored");
    assert_eq!(read(&restored), want, "{} differs from the notes", restored.display());
    assert!(!restored.join("drafts").exists(), "a subdirectory was restored");
    let just_todo = read(&home.join("just-todo"));
    assert_eq!(just_todo.keys().collect::<Vec<_>>(), ["todo.txt"], "restore --path todo.txt");
    assert_eq!(just_todo["todo.txt"], want["todo.txt"]);
}

#[test]
fn notes_config_errors_name_the_key() {
    let t = crate::support::TestRepo::new();
    let dir = t.dir.path().join("notes");
    fs::create_dir(&dir).unwrap();
    let path = format!("path={}", dir.display());
    for (set, says) in [
        ("extension=.md", "invalid config: extension: must be an extension without its dot, such as `md`"),
        ("colour=red", "invalid config: colour: unknown field `colour`"),
    ] {
        let out = t.coffer(&["backup", NOTES_WASM, "--set", &path, "--set", set]);
        assert!(!out.status.success(), "--set {set} was accepted");
        let err = crate::support::stderr(&out);
        assert!(err.contains(says), "--set {set}: {err}");
    }
}
