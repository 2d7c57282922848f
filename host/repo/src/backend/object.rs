//! [`ObjectBackend`]: the repository's files on any `object_store` store.
//!
//! Locations are URLs: `file:///abs/path` (or a plain path), `memory://`,
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
//! Cloud credentials and settings come from the usual environment variables
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and from explicit option pairs using
//! `object_store`'s configuration key names (for example `aws_endpoint`,
//! `allow_http`, `google_service_account_key`, `azure_storage_use_emulator`).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig};

use super::{Backend, BackendError, BackendResult, FileKind, Listed, PutMode};

/// Limits for every storage call.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// The longest one call (put, get, list, delete) may take, retries included.
    pub op_timeout: Duration,
    /// Per-request timeout for cloud stores.
    pub request_timeout: Duration,
    /// Retries of a failed cloud request (with exponential backoff).
    pub max_retries: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            op_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(60),
            max_retries: 5,
        }
    }
}

/// A repository stored in an `object_store` store under a prefix.
#[derive(Debug)]
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    options: BackendOptions,
    /// For `file://`: the directory, to sweep staging leftovers.
    local_root: Option<std::path::PathBuf>,
    /// For the cloud stores: the same store, listing by a raw key prefix
    /// (which need not end at a `/`), for [`Backend::list_prefix`].
    paged: Option<PagedLister>,
}

/// A cloud store's raw-prefix listing ([`PaginatedListStore`]).
#[derive(Clone)]
struct PagedLister(Arc<dyn PaginatedListStore>);

impl std::fmt::Debug for PagedLister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PagedLister")
    }
}

/// Errors choosing or configuring a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// The URL cannot be parsed or has an unknown scheme.
    #[error("repository location {url:?}: {reason}")]
    Invalid {
        /// The location given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ObjectBackend {
    /// Opens the store named by `url`, configured by `options` (key, value)
    /// pairs in `object_store`'s configuration key names.
    pub fn from_url(url: &str, options: &[(String, String)], limits: BackendOptions) -> Result<Self, LocationError> {
        let invalid = |reason: String| LocationError::Invalid { url: url.to_string(), reason };
        let parsed = if url.contains("://") {
            url::Url::parse(url).map_err(|e| invalid(e.to_string()))?
        } else {
            let abs = std::path::absolute(url).map_err(|e| invalid(e.to_string()))?;
            url::Url::from_file_path(&abs).map_err(|_| invalid("not an absolute path".into()))?
        };
        let client =
            ClientOptions::new().with_timeout(limits.request_timeout).with_connect_timeout(Duration::from_secs(10));
        let retry =
            RetryConfig { max_retries: limits.max_retries, retry_timeout: limits.op_timeout, ..Default::default() };
        let strip = |p: &str| p.trim_matches('/').to_string();
        // The three cloud builders share method names but no trait.
        let mut paged = None;
        macro_rules! cloud {
            ($builder:ty, $paged:ident) => {{
                let mut b = <$builder>::from_env().with_url(url).with_client_options(client).with_retry(retry);
                for (k, v) in options {
                    let key = k.parse().map_err(|e: object_store::Error| invalid(format!("option {k}: {e}")))?;
                    b = b.with_config(key, v);
                }
                let built = Arc::new(b.build().map_err(|e| invalid(e.to_string()))?);
                $paged = Some(PagedLister(Arc::clone(&built) as Arc<dyn PaginatedListStore>));
                let store: Arc<dyn ObjectStore> = built;
                (store, strip(parsed.path()))
            }};
        }
        let mut local_root = None;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| invalid("a file:// URL needs an absolute path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| invalid(format!("cannot create directory {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                local_root = Some(dir);
                (Arc::new(fs), String::new())
            }
            "memory" => (Arc::new(object_store::memory::InMemory::new()), String::new()),
            "s3" | "s3a" => cloud!(object_store::aws::AmazonS3Builder, paged),
            "gs" => cloud!(object_store::gcp::GoogleCloudStorageBuilder, paged),
            "az" | "azure" | "abfs" => cloud!(object_store::azure::MicrosoftAzureBuilder, paged),
            other => {
                return Err(invalid(format!(
                    "unknown scheme {other:?}; use file://, memory://, s3://, gs:// or az://"
                )));
            }
        };
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        shown.set_query(None);
        Ok(ObjectBackend {
            store,
            prefix: Path::from(prefix),
            location: shown.to_string(),
            options: limits,
            local_root,
            paged,
        })
    }

    /// Wraps an existing store (for tests and embedders).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, location: &str) -> Self {
        ObjectBackend {
            store,
            prefix: Path::from(prefix),
            location: location.to_string(),
            options: BackendOptions::default(),
            local_root: None,
            paged: None,
        }
    }

    fn full(&self, rel: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{}", self.prefix.as_ref(), rel))
        }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        path: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> BackendResult<T> {
        match tokio::time::timeout(self.options.op_timeout, fut).await {
            Err(_) => {
                Err(BackendError::Timeout { op, path: path.to_string(), secs: self.options.op_timeout.as_secs() })
            }
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(op, path, e)),
        }
    }
}

impl ObjectBackend {
    /// Lets the kernel drop a local pack's bytes from the page cache once
    /// they are durable (after the fsync of a write) or have been read.
    /// Packs are written once and read rarely, so keeping them cached only
    /// evicts the data of the programs the backup runs beside; and on
    /// machines where fresh page-cache pages are expensive (virtual machines
    /// that hand free memory back to their host), recycling the same pages
    /// makes writing a repository several times cheaper. Advisory: errors are
    /// ignored.
    async fn release_cached(&self, rel: &str, range: Range<u64>) {
        let Some(file) = self.local_file(rel) else { return };
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(f) = std::fs::File::open(&file) else { return };
            let len = std::num::NonZeroU64::new(range.end.saturating_sub(range.start));
            let _ = rustix::fs::fadvise(&f, range.start, len, rustix::fs::Advice::DontNeed);
        })
        .await;
    }

    /// The objects of `kind` among `metas` whose name (relative to the kind)
    /// starts with `prefix`, sorted by name. Only names this repository
    /// writes: 64 hex characters (or "config", an 8-digit epoch number, a
    /// lease name, `<stream>/<WAL file name>` or a stream object's name).
    /// Staging files and strangers are ignored.
    fn listed(&self, kind: FileKind, metas: Vec<object_store::ObjectMeta>, prefix: &str) -> Vec<Listed> {
        let dir = kind.dir();
        let kind_prefix = format!("{}/", self.full(if dir.is_empty() { "config" } else { dir }).as_ref());
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let Some(name) = m.location.filename() else { continue };
            let rel = || m.location.as_ref().strip_prefix(&kind_prefix);
            let name = match kind {
                FileKind::Config => (name == "config").then_some(name),
                FileKind::Epoch => (name.len() == 8 && name.bytes().all(|b| b.is_ascii_digit())).then_some(name),
                FileKind::Lease => crate::commands::lease::parse_name(name).map(|_| name),
                FileKind::Wal => rel().filter(|rel| crate::repofile::wal::split_object_name(rel).is_some()),
                FileKind::Stream => rel().filter(|rel| crate::repofile::stream::parse_object_name(rel).is_some()),
                _ => (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name),
            };
            if let Some(name) = name.filter(|n| n.starts_with(prefix)) {
                out.push(Listed { name: name.to_string(), size: m.size, modified: m.last_modified });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The file behind `rel` in a `file://` repository.
    fn local_file(&self, rel: &str) -> Option<std::path::PathBuf> {
        let mut file = self.local_root.clone()?;
        if !self.prefix.as_ref().is_empty() {
            file.push(self.prefix.as_ref());
        }
        file.push(rel);
        Some(file)
    }
}

/// Reads of a local file up to this size are done on the calling thread:
/// a blob is usually a few KiB, and handing each read to a blocking-pool
/// thread and back (two wake-ups) cost more than the read itself.
const INLINE_READ: u64 = 256 << 10;

/// Reads `range` of a local file (all of it with `None`) in place, and (for
/// packs) lets the page cache drop what was read, as
/// [`ObjectBackend::release_cached`] does.
fn read_local(file: &std::path::Path, rel: &str, range: Option<Range<u64>>, release: bool) -> BackendResult<Bytes> {
    use std::os::unix::fs::FileExt;
    let failed = |message: String| BackendError::Other { op: "read", path: rel.to_string(), message };
    let mut f = std::fs::File::open(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BackendError::NotFound { path: rel.to_string() },
        _ => failed(e.to_string()),
    })?;
    let (start, buf) = match range {
        Some(range) => {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact_at(&mut buf, range.start).map_err(|e| {
                failed(match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        format!("asked for bytes {range:?}, past the end of the object (object truncated?)")
                    }
                    _ => e.to_string(),
                })
            })?;
            (range.start, buf)
        }
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut buf).map_err(|e| failed(e.to_string()))?;
            (0, buf)
        }
    };
    if release {
        let len = std::num::NonZeroU64::new(buf.len() as u64);
        let _ = rustix::fs::fadvise(&f, start, len, rustix::fs::Advice::DontNeed);
    }
    Ok(Bytes::from(buf))
}

fn map_err(op: &'static str, path: &str, e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => BackendError::NotFound { path: path.to_string() },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            BackendError::AlreadyExists { path: path.to_string() }
        }
        other => BackendError::Other { op, path: path.to_string(), message: other.to_string() },
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes, mode: PutMode) -> BoxFuture<'_, BackendResult<()>> {
        let rel = kind.path(name);
        Box::pin(async move {
            let opts = PutOptions {
                mode: match mode {
                    PutMode::Overwrite => object_store::PutMode::Overwrite,
                    PutMode::CreateNew => object_store::PutMode::Create,
                },
                ..Default::default()
            };
            let path = self.full(&rel);
            let len = data.len() as u64;
            self.timed("write", &rel, self.store.put_opts(&path, PutPayload::from_bytes(data), opts)).await?;
            if kind == FileKind::Pack {
                self.release_cached(&rel, 0..len).await;
            }
            Ok(())
        })
    }

    fn get(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<Bytes>> {
        let rel = kind.path(name);
        Box::pin(async move {
            let path = self.full(&rel);
            let got = self.timed("read", &rel, async { self.store.get(&path).await?.bytes().await }).await?;
            if kind == FileKind::Pack {
                self.release_cached(&rel, 0..got.len() as u64).await;
            }
            Ok(got)
        })
    }

    fn get_range(&self, kind: FileKind, name: &str, range: Range<u64>) -> BoxFuture<'_, BackendResult<Bytes>> {
        let rel = kind.path(name);
        Box::pin(async move {
            let want = range.end - range.start;
            if want <= INLINE_READ
                && let Some(file) = self.local_file(&rel)
            {
                return read_local(&file, &rel, Some(range), kind == FileKind::Pack);
            }
            let path = self.full(&rel);
            let got = self.timed("read", &rel, self.store.get_range(&path, range.clone())).await?;
            if kind == FileKind::Pack {
                self.release_cached(&rel, range.clone()).await;
            }
            if got.len() as u64 != want {
                return Err(BackendError::Other {
                    op: "read",
                    path: rel,
                    message: format!("asked for bytes {range:?} and got {} bytes (object truncated?)", got.len()),
                });
            }
            Ok(got)
        })
    }

    fn get_here(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<Bytes>> {
        let rel = kind.path(name);
        match self.local_file(&rel) {
            Some(file) => Box::pin(async move { read_local(&file, &rel, None, kind == FileKind::Pack) }),
            None => self.get(kind, name),
        }
    }

    fn get_range_here(&self, kind: FileKind, name: &str, range: Range<u64>) -> BoxFuture<'_, BackendResult<Bytes>> {
        let rel = kind.path(name);
        match self.local_file(&rel) {
            Some(file) => Box::pin(async move { read_local(&file, &rel, Some(range), kind == FileKind::Pack) }),
            None => self.get_range(kind, name, range),
        }
    }

    fn list(&self, kind: FileKind) -> BoxFuture<'_, BackendResult<Vec<Listed>>> {
        Box::pin(async move {
            let dir = kind.dir();
            let prefix = self.full(if dir.is_empty() { "config" } else { dir });
            let metas: Vec<object_store::ObjectMeta> =
                self.timed("list", dir, self.store.list(Some(&prefix)).try_collect()).await?;
            Ok(self.listed(kind, metas, ""))
        })
    }

    fn list_prefix(&self, kind: FileKind, prefix: &str) -> BoxFuture<'_, BackendResult<Vec<Listed>>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let dir = kind.dir();
            // `config` is one object, and pack names are fanned out under
            // `xx/`: those are listed whole and filtered.
            if matches!(kind, FileKind::Config | FileKind::Pack) {
                let mut all = self.list(kind).await?;
                all.retain(|l| l.name.starts_with(&prefix));
                return Ok(all);
            }
            let metas: Vec<object_store::ObjectMeta> = match &self.paged {
                // A cloud store lists by the raw key prefix: only the
                // objects asked for, however many others the kind holds.
                Some(PagedLister(paged)) => {
                    let raw = format!("{}/{prefix}", self.full(dir).as_ref());
                    let mut out = Vec::new();
                    let mut token = None;
                    loop {
                        let opts = PaginatedListOptions { page_token: token.take(), ..Default::default() };
                        let page = self.timed("list", dir, paged.list_paginated(Some(&raw), opts)).await?;
                        out.extend(page.result.objects);
                        match page.page_token {
                            Some(t) => token = Some(t),
                            None => break,
                        }
                    }
                    out
                }
                // Local disk and memory list by whole path segments: the
                // deepest directory the prefix names, then filter.
                None => {
                    let sub = match prefix.rfind('/') {
                        Some(i) => format!("{dir}/{}", &prefix[..i]),
                        None => dir.to_string(),
                    };
                    self.timed("list", dir, self.store.list(Some(&self.full(&sub))).try_collect()).await?
                }
            };
            Ok(self.listed(kind, metas, &prefix))
        })
    }

    fn spool_dir(&self, kind: FileKind) -> Option<std::path::PathBuf> {
        self.local_file(kind.dir())
    }

    fn put_spooled(&self, kind: FileKind, name: &str, file: std::path::PathBuf) -> BoxFuture<'_, BackendResult<()>> {
        let rel = kind.path(name);
        let Some(dest) = self.local_file(&rel) else {
            let name = name.to_string();
            return Box::pin(async move { super::put_contents(self, kind, &name, &file).await });
        };
        Box::pin(async move {
            let moved = tokio::task::spawn_blocking(move || move_into_place(&file, &dest, kind == FileKind::Pack));
            let secs = self.options.op_timeout.as_secs();
            let Ok(joined) = tokio::time::timeout(self.options.op_timeout, moved).await else {
                return Err(BackendError::Timeout { op: "write", path: rel, secs });
            };
            let failed = |message: String| BackendError::Other { op: "write", path: rel.clone(), message };
            joined.map_err(|e| failed(e.to_string()))?.map_err(|e| failed(e.to_string()))
        })
    }

    fn remove_stale_staging(&self, older_than: Duration) -> BoxFuture<'_, BackendResult<usize>> {
        let root = self.local_root.clone();
        Box::pin(async move {
            let Some(root) = root else { return Ok(0) };
            tokio::task::spawn_blocking(move || remove_staging_under(&root, older_than))
                .await
                .map_err(|e| BackendError::Other { op: "clean", path: String::new(), message: e.to_string() })?
        })
    }

    fn delete(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<()>> {
        let rel = kind.path(name);
        Box::pin(async move {
            let path = self.full(&rel);
            match self.timed("delete", &rel, self.store.delete(&path)).await {
                Err(BackendError::NotFound { .. }) => Ok(()),
                other => other,
            }
        })
    }
}

/// Moves a complete local file to `dest` durably: the file's bytes are
/// synced before the rename, and the directory after it (and the directory
/// above, when `dest`'s directory had to be made). Then, for packs, the page
/// cache may drop the file, as [`ObjectBackend::release_cached`] explains.
fn move_into_place(file: &std::path::Path, dest: &std::path::Path, release: bool) -> std::io::Result<()> {
    let sync_dir = |dir: &std::path::Path| std::fs::File::open(dir).and_then(|d| d.sync_all());
    let f = std::fs::File::open(file)?;
    f.sync_all()?;
    let parent = dest.parent().ok_or_else(|| std::io::Error::other("an object path has a directory"))?;
    if !parent.is_dir() {
        std::fs::create_dir_all(parent)?;
        if let Some(above) = parent.parent() {
            sync_dir(above)?;
        }
    }
    std::fs::rename(file, dest)?;
    sync_dir(parent)?;
    if release {
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
    Ok(())
}

/// Local writes go to `NAME#N` and are renamed into place; a writer killed
/// in between leaves the staging file. Removes those older than `older_than`.
fn remove_staging_under(root: &std::path::Path, older_than: Duration) -> BackendResult<usize> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let staging = name.split_once('#').is_some_and(|(base, n)| {
                // Content-addressed names, epoch files (8 digits), stream
                // items and checkpoints (this build writes no WAL archive
                // objects).
                let named = base.len() == 64
                    || (base.len() == 8 && base.bytes().all(|b| b.is_ascii_digit()))
                    || crate::repofile::stream::is_object_leaf(base);
                named && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            });
            let old = md.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= older_than);
            if staging && old && std::fs::remove_file(&p).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}
