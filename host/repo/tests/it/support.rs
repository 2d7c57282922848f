//! Shared helpers: repositories in temp dirs, deterministic data, tree comparison.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_repo::{DynBackend, InitOptions, KdfParams, Repository, SnapshotOptions, backend_for};

pub const PASSWORD: &[u8] = b"correct horse battery staple";

/// Fast key derivation and small packs so tests make many packs quickly.
pub fn test_init_options() -> InitOptions {
    InitOptions { kdf: KdfParams::insecure_fast(), ..Default::default() }
}

pub fn small_pack_options() -> InitOptions {
    InitOptions { kdf: KdfParams::insecure_fast(), pack_size: 1 << 20, ..Default::default() }
}

pub struct TempRepo {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub backend: DynBackend,
    pub repo: Repository,
}

impl TempRepo {
    pub async fn new(opts: InitOptions) -> TempRepo {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let backend = backend_for(&url, &[]).unwrap();
        let repo = Repository::init(Arc::clone(&backend), PASSWORD, opts).await.unwrap();
        TempRepo { dir, url, backend, repo }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let data = self.root().join("data");
        if let Ok(rd) = std::fs::read_dir(&data) {
            for sub in rd.flatten().filter(|e| e.path().is_dir()) {
                for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }

    /// Files under the repository named like a staging file (`NAME#N`):
    /// writes, or packs being filled, that never got their name.
    pub fn staging_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if e.file_name().to_string_lossy().contains('#') {
                    out.push(p);
                }
            }
        }
        out
    }
}

pub fn opts(source: &str) -> SnapshotOptions {
    SnapshotOptions { source: source.into(), ..Default::default() }
}

pub use coffer_test_support::random_bytes;

/// Writes `files` files of `size` random bytes into `dir`.
pub fn make_random_tree(dir: &Path, files: usize, size: usize, seed: u64) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    for i in 0..files {
        let p = if i % 3 == 0 { dir.join(format!("sub/f{i}")) } else { dir.join(format!("f{i}")) };
        std::fs::write(&p, random_bytes(size, seed + i as u64)).unwrap();
    }
    std::fs::write(dir.join("sub/deeper/text.txt"), "coffer test\n".repeat(1000)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("sub/deeper/text.txt", dir.join("link")).unwrap();
    std::fs::set_permissions(dir.join("sub/deeper/text.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

/// Asserts two trees are identical: kinds, bytes, modes, mtimes, link targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut v: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                v.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "entry lists differ");
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (std::fs::symlink_metadata(&pa).unwrap(), std::fs::symlink_metadata(&pb).unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?} kind");
        if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&pa).unwrap(), std::fs::read_link(&pb).unwrap(), "{rel:?} target");
            continue;
        }
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{rel:?} mode");
        assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "{rel:?} mtime");
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{rel:?} size");
            assert!(std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(), "{rel:?} content differs");
        }
    }
}

/// Sum of pack file sizes.
pub fn pack_bytes(t: &TempRepo) -> u64 {
    t.packs().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}
