//! `coffer:plugin/locks`: whether another process holds a lock on a file
//! in the plugin's grants.
//!
//! The answer comes from the kernel's list of every lock held on the
//! system (`/proc/locks`): POSIX record locks (what RocksDB and LevelDB
//! take on `LOCK`), open file description locks and `flock(2)` locks (what
//! ParityDB takes), each with the device and inode of its file. Reading
//! the list takes no lock, so asking never makes the database's own open
//! fail, as trying a lock and letting it go would in that instant. Waiters
//! (`->` lines) hold nothing and are skipped.
//!
//! The kernel lists only the locks of processes in the PID namespace of
//! the host's `/proc`: a node in another container (its own PID
//! namespace) holds locks the host does not see. README says so; run the
//! host in the node's PID namespace (the same container, or a pod with
//! `shareProcessNamespace`) for the answer to hold.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::bindings::locks::{self, LockHeld};
use crate::bindings::types::Error as WitError;
use crate::host::{PluginState, printable};

/// Where Linux lists the locks held.
const PROC_LOCKS: &str = "/proc/locks";

/// One lock `/proc/locks` lists: whether it is exclusive, and its file's
/// device (major, minor) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    exclusive: bool,
    major: u32,
    minor: u32,
    inode: u64,
}

/// Parses one line of `/proc/locks`
/// (`1: POSIX  ADVISORY  WRITE 4875 fe:00:6127672 0 EOF`); `None` for a
/// waiter's line (`1: -> FLOCK ...`) and anything it does not understand.
fn parse_line(line: &str) -> Option<Held> {
    let mut words = line.split_whitespace();
    words.next()?; // "1:"
    let kind = words.next()?;
    // A waiter (`->`) holds nothing; a lease or a delegation is no lock
    // on the data.
    if !matches!(kind, "POSIX" | "FLOCK" | "OFDLCK") {
        return None;
    }
    let _mode = words.next()?; // ADVISORY or MANDATORY
    let access = words.next()?;
    let _pid = words.next()?;
    let mut dev = words.next()?.split(':');
    let major = u32::from_str_radix(dev.next()?, 16).ok()?;
    let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
    let inode = dev.next()?.parse().ok()?;
    let exclusive = match access {
        "WRITE" | "RW" => true,
        "READ" => false,
        _ => return None,
    };
    Some(Held { exclusive, major, minor, inode })
}

/// The strongest lock `list` (the text of `/proc/locks`) shows on the file
/// with this device and inode. A file on an anonymous device (major 0:
/// btrfs subvolumes, overlayfs, FUSE) may be listed under its file system's
/// own device, which `stat` does not give: its inode alone is matched
/// then. A lock on another file with that inode number makes the answer
/// too careful (a plugin refuses), never too lax.
fn strongest(list: &str, major: u32, minor: u32, inode: u64) -> LockHeld {
    let mut held = LockHeld::None;
    for h in list.lines().filter_map(parse_line) {
        let same_device = (h.major, h.minor) == (major, minor) || major == 0;
        if !same_device || h.inode != inode {
            continue;
        }
        if h.exclusive {
            return LockHeld::Exclusive;
        }
        held = LockHeld::Shared;
    }
    held
}

/// Answers for the host path `real` (`asked` is the plugin's path, for
/// messages).
fn file_lock(real: &Path, asked: &str) -> Result<LockHeld, WitError> {
    // Not followed: a symlink the plugin planted must not make the host
    // look at (or wait on) a file outside the grants.
    let md =
        std::fs::symlink_metadata(real).map_err(|e| WitError::Unavailable(format!("{}: {e}", printable(asked))))?;
    if !md.file_type().is_file() {
        return Err(WitError::Other(format!("{} is not a regular file", printable(asked))));
    }
    let list = std::fs::read_to_string(PROC_LOCKS).map_err(|e| {
        WitError::Unavailable(format!(
            "cannot tell whether a process holds a lock on {}: {PROC_LOCKS} cannot be read ({e}); the host lists \
             locks only on Linux with /proc mounted",
            printable(asked)
        ))
    })?;
    let dev = md.dev();
    Ok(strongest(&list, rustix::fs::major(dev), rustix::fs::minor(dev), md.ino()))
}

impl locks::Host for PluginState {
    async fn file_lock(&mut self, path: String) -> wasmtime::Result<Result<LockHeld, WitError>> {
        let real = match self.resolve_in_grants(&path) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(file_lock(&real, &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    const SAMPLE: &str = "1: POSIX  ADVISORY  WRITE 4875 fe:00:6127672 0 EOF\n\
                          2: FLOCK  ADVISORY  READ 4875 fe:00:10133506 0 EOF\n\
                          2: -> FLOCK  ADVISORY  WRITE 4876 fe:00:10133506 0 EOF\n\
                          3: OFDLCK ADVISORY  READ -1 08:01:77 0 EOF\n\
                          4: LEASE  ACTIVE    READ 12 08:01:78 0 EOF\n";

    #[test]
    fn the_kernels_list_is_read_per_file() {
        assert_eq!(strongest(SAMPLE, 0xfe, 0, 6127672), LockHeld::Exclusive);
        // A waiter for an exclusive lock holds nothing.
        assert_eq!(strongest(SAMPLE, 0xfe, 0, 10133506), LockHeld::Shared);
        assert_eq!(strongest(SAMPLE, 8, 1, 77), LockHeld::Shared);
        // A lease is not a lock; another device's inode is another file.
        assert_eq!(strongest(SAMPLE, 8, 1, 78), LockHeld::None);
        assert_eq!(strongest(SAMPLE, 8, 2, 77), LockHeld::None);
        // On an anonymous device (btrfs, overlayfs) the inode decides.
        assert_eq!(strongest(SAMPLE, 0, 45, 6127672), LockHeld::Exclusive);
        assert_eq!(parse_line("garbage"), None);
    }

    /// Kills the child when the test ends, however it ends.
    struct Holder(Child);

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A lock on `file` held by Python until killed: `fcntl.lockf` takes a
    /// POSIX record lock (`fcntl(F_SETLK)`, as RocksDB does), `fcntl.flock`
    /// a `flock(2)` lock (as ParityDB does); `op` is `LOCK_EX` or `LOCK_SH`.
    fn hold(call: &str, op: &str, file: &Path) -> Holder {
        let mode = if op == "LOCK_EX" { "r+" } else { "r" };
        let script = format!(
            "import fcntl, sys, time\nf = open(sys.argv[1], '{mode}')\nfcntl.{call}(f, fcntl.{op})\n\
             print('held', flush=True)\ntime.sleep(60)\n"
        );
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(file);
        started(cmd)
    }

    /// Starts `cmd` and waits until it says it holds its lock.
    fn started(mut cmd: Command) -> Holder {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("the lock holder starts");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "held");
        Holder(child)
    }

    #[test]
    fn locks_other_processes_hold_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("LOCK");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(file_lock(&file, "LOCK").unwrap(), LockHeld::None);
        {
            let _h = hold("flock", "LOCK_EX", &file);
            assert_eq!(file_lock(&file, "LOCK").unwrap(), LockHeld::Exclusive);
        }
        {
            let _h = hold("flock", "LOCK_SH", &file);
            assert_eq!(file_lock(&file, "LOCK").unwrap(), LockHeld::Shared);
        }
        {
            let _h = hold("lockf", "LOCK_EX", &file);
            assert_eq!(file_lock(&file, "LOCK").unwrap(), LockHeld::Exclusive);
        }
        {
            let _h = hold("lockf", "LOCK_SH", &file);
            assert_eq!(file_lock(&file, "LOCK").unwrap(), LockHeld::Shared);
        }
        assert_eq!(file_lock(&file, "LOCK").unwrap(), LockHeld::None);
        let e = file_lock(&dir.path().join("missing"), "db/missing").unwrap_err();
        assert!(matches!(&e, WitError::Unavailable(m) if m.contains("db/missing")), "{e:?}");
        // A symlink is not followed, whatever it points at.
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let e = file_lock(&dir.path().join("link"), "db/link").unwrap_err();
        assert!(matches!(&e, WitError::Other(m) if m.contains("not a regular file")), "{e:?}");
    }
}
