//! Plugin jobs: `info`, `snapshot`, `restore`, `verify`. Each job runs in a
//! fresh instance with its own store, grants and limits; when it ends, the
//! instance is thrown away whatever happened. A failed or cancelled
//! snapshot is aborted, which leaves the repository as it was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coffer_repo::{BackupKind, Id, PluginIdentity, Repository, SnapshotOptions, StreamOwner};
use tokio::sync::Notify;
use wasmtime::Store;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings::stream_types as st;
use crate::bindings::types::{self as t, LogLevel};
use crate::grants::{GrantError, GrantSet, Permission};
use crate::host::{
    Fault, JobState, MemoryLimiter, PluginState, ReaderSlot, RestoreRoot, SinkSlot, on_epoch, printable,
};
use crate::limits::Limits;
use crate::settle::Settler;
use crate::streams::{PushedItem, StreamJob, StreamSinkSlot};
use crate::{Contract, LoadedPlugin, bindings};

/// Bytes of a plugin's stderr kept (for panic messages).
const STDERR_KEPT: usize = 64 << 10;

/// Cancels a job: the plugin sees `cancelled() == true`, and wasm code is
/// stopped at its next epoch tick.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Cancels every job holding this token.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Receives a job's log lines and progress.
pub trait JobObserver: Send + Sync {
    /// A log line from the plugin.
    fn log(&self, plugin: &str, level: LogLevel, message: &str);
    /// Progress reported by the plugin.
    fn progress(&self, done: u64, total: Option<u64>);
}

/// Sends plugin log lines to `tracing` and ignores progress.
#[derive(Debug, Default)]
pub struct TracingObserver;

impl JobObserver for TracingObserver {
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn progress(&self, _done: u64, _total: Option<u64>) {}
}

/// How a job runs.
#[derive(Clone)]
pub struct JobOptions {
    /// What the plugin may touch.
    pub grants: GrantSet,
    /// Its limits.
    pub limits: Limits,
    /// Cancels it.
    pub cancel: CancelToken,
    /// Receives logs and progress.
    pub observer: Arc<dyn JobObserver>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            grants: GrantSet::none(),
            limits: Limits::default(),
            cancel: CancelToken::new(),
            observer: Arc::new(TracingObserver),
        }
    }
}

/// An error a plugin reported on purpose (the contract's `error` variant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The config is wrong.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Access was refused.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The source is unreachable.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// Damaged data.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Not supported.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Other.
    #[error("{0}")]
    Other(String),
}

/// Plugin text shown to operators: control characters escaped (no
/// terminal escape sequences) and cut at 4 KiB.
fn shown(m: String) -> String {
    let mut p = printable(&m.chars().take(4096).collect::<String>());
    if m.len() > 4096 {
        p.push_str(" [cut]");
    }
    p
}

impl From<t::Error> for PluginError {
    fn from(e: t::Error) -> Self {
        match e {
            t::Error::InvalidConfig(m) => PluginError::InvalidConfig(shown(m)),
            t::Error::AccessDenied(m) => PluginError::AccessDenied(shown(m)),
            t::Error::Unavailable(m) => PluginError::Unavailable(shown(m)),
            t::Error::Corrupt(m) => PluginError::Corrupt(shown(m)),
            t::Error::Cancelled => PluginError::Cancelled,
            t::Error::Unsupported(m) => PluginError::Unsupported(shown(m)),
            t::Error::Other(m) => PluginError::Other(shown(m)),
        }
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The plugin reported an error.
    #[error("plugin {plugin}: {error}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// What it reported.
        error: PluginError,
    },
    /// The host stopped the plugin (a limit, a cancel, a contract violation).
    #[error("plugin {plugin} {fault}")]
    Fault {
        /// Plugin name.
        plugin: String,
        /// Why.
        fault: Fault,
    },
    /// The plugin trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("plugin {plugin} crashed: {reason}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap, and the panic message when there was one.
        reason: String,
    },
    /// The plugin needs a capability that was not granted.
    #[error("plugin {plugin} needs {needed}, which was not granted; {hint}")]
    NotGranted {
        /// Plugin name.
        plugin: String,
        /// The capability.
        needed: String,
        /// How to grant it.
        hint: String,
    },
    /// A grant could not be made.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The plugin returned something the contract does not allow.
    #[error("plugin {plugin} returned garbage: {reason}")]
    Garbage {
        /// Plugin name.
        plugin: String,
        /// What was wrong.
        reason: String,
    },
    /// The plugin cannot restore this way.
    #[error("plugin {plugin} cannot restore {mode}")]
    RestoreMode {
        /// Plugin name.
        plugin: String,
        /// The mode asked for.
        mode: &'static str,
    },
    /// The restored files could not be written to disk (found by the
    /// file-system sync that ends a restore into a directory).
    #[error("{reason}; the restore is not complete on disk: check the disk (free space, I/O errors) and restore again")]
    WriteBack {
        /// The target and the error.
        reason: String,
    },
    /// A restore into a directory left symlinks there that the snapshot
    /// does not hold (a plugin can plant them through WASI or `symlink`).
    #[error(
        "plugin {plugin} left symlinks in {target} that are not in the snapshot: {links}; remove them before using the restored files, and do not trust this plugin"
    )]
    StraySymlinks {
        /// Plugin name.
        plugin: String,
        /// The restore target.
        target: String,
        /// The links, `path -> target`, escaped.
        links: String,
    },
    /// A stream job asked of a component built against contract 0.1.0,
    /// which has no streams.
    #[error(
        "plugin {plugin} was built against contract coffer:plugin@0.1.0, which has no streams; rebuild it against 0.2.0 to push or follow"
    )]
    NoStreams {
        /// Plugin name.
        plugin: String,
    },
    /// The repository failed.
    #[error(transparent)]
    Repository(#[from] coffer_repo::Error),
    /// The runtime itself failed (instantiation, linking).
    #[error("plugin {plugin}: runtime error: {reason}")]
    Runtime {
        /// Plugin name.
        plugin: String,
        /// What failed.
        reason: String,
    },
}

impl JobError {
    /// True for a cancelled job.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            JobError::Fault { fault: Fault::Cancelled, .. } | JobError::Plugin { error: PluginError::Cancelled, .. }
        )
    }
}

/// A plugin's self-description for one config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginDescription {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// One sentence.
    pub description: String,
    /// JSON Schema of the config.
    pub config_schema: String,
    /// Source name for the config (empty without one).
    pub source: String,
    /// Capabilities the config needs.
    pub capabilities: Vec<String>,
    /// Restores into a directory.
    pub restore_directory: bool,
    /// Restores into a live server.
    pub restore_live: bool,
    /// BLAKE3 of the component bytes.
    pub digest: String,
    /// The contract version it was built against (`0.1.0`, `0.2.0`).
    pub contract: String,
}

/// What to snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest {
    /// Plugin config (grants already derived from it).
    pub config: serde_json::Value,
    /// Parent snapshot.
    pub parent: Option<Id>,
    /// Full, incremental, differential.
    pub kind: BackupKind,
    /// Tenant.
    pub tenant: String,
    /// Source name; the plugin's own when `None`.
    pub source: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
}

/// Where to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// Plugin config.
    pub config: serde_json::Value,
    /// Target directory (granted read-write by the caller), or `None` for a
    /// live restore.
    pub target: Option<std::path::PathBuf>,
    /// Overwrite a non-empty target.
    pub force: bool,
    /// Only these paths.
    pub paths: Vec<String>,
    /// The host's command that fetches a stream item, offered to the
    /// plugin (0.2.0) for commands the restored system runs later.
    pub fetch: Option<FetchCommand>,
}

/// The host's own command for fetching one stream item: `argv` followed by
/// the stream, the key and the destination file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchCommand {
    /// Program (absolute path) and its first arguments; never a password.
    pub argv: Vec<String>,
    /// What the operator must know for it to work, if anything.
    pub note: Option<String>,
}

/// A verify's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Items checked.
    pub checked: u64,
    /// Bytes read back.
    pub bytes: u64,
    /// `(path, reason)` per problem.
    pub problems: Vec<(String, String)>,
    /// Notes.
    pub notes: Vec<String>,
}

fn describe_capability(c: &t::Capability) -> String {
    match c {
        t::Capability::ReadDir(d) => format!("read-dir {d}"),
        t::Capability::WriteDir(d) => format!("write-dir {d}"),
        t::Capability::Connect(a) => format!("connect {a}"),
    }
}

/// One live instance plus its store.
struct Instance {
    store: Store<PluginState>,
    bindings: Bound,
    plugin: String,
}

/// An instance's exports, by contract version.
enum Bound {
    V1(bindings::v1::Plugin),
    V2(bindings::v2::Plugin),
}

impl Bound {
    async fn call_info(
        &self,
        store: &mut Store<PluginState>,
        config: Option<&str>,
    ) -> wasmtime::Result<Result<t::PluginInfo, t::Error>> {
        match self {
            Bound::V1(b) => b.coffer_plugin0_1_0_source().call_info(store, config).await,
            Bound::V2(b) => b.coffer_plugin0_2_0_source().call_info(store, config).await,
        }
    }

    async fn call_snapshot(
        &self,
        store: &mut Store<PluginState>,
        config: &str,
        parent: Option<Resource<ReaderSlot>>,
        sink: Resource<SinkSlot>,
    ) -> wasmtime::Result<Result<(), t::Error>> {
        match self {
            Bound::V1(b) => b.coffer_plugin0_1_0_source().call_snapshot(store, config, parent, sink).await,
            Bound::V2(b) => b.coffer_plugin0_2_0_source().call_snapshot(store, config, parent, sink).await,
        }
    }

    async fn call_restore(
        &self,
        store: &mut Store<PluginState>,
        config: &str,
        snapshot: Resource<ReaderSlot>,
        options: st::RestoreOptions,
    ) -> wasmtime::Result<Result<(), t::Error>> {
        match self {
            Bound::V1(b) => {
                let options = t::RestoreOptions { target: options.target, force: options.force, paths: options.paths };
                b.coffer_plugin0_1_0_source().call_restore(store, config, snapshot, &options).await
            }
            Bound::V2(b) => b.coffer_plugin0_2_0_source().call_restore(store, config, snapshot, &options).await,
        }
    }

    async fn call_verify(
        &self,
        store: &mut Store<PluginState>,
        config: &str,
        snapshot: Resource<ReaderSlot>,
    ) -> wasmtime::Result<Result<t::VerifyReport, t::Error>> {
        match self {
            Bound::V1(b) => b.coffer_plugin0_1_0_source().call_verify(store, config, snapshot).await,
            Bound::V2(b) => b.coffer_plugin0_2_0_source().call_verify(store, config, snapshot).await,
        }
    }

    /// The 0.2.0 exports, or why there are none.
    fn v2(&self, plugin: &str) -> Result<&bindings::v2::Plugin, JobError> {
        match self {
            Bound::V2(b) => Ok(b),
            Bound::V1(_) => Err(JobError::NoStreams { plugin: plugin.to_string() }),
        }
    }
}

/// Most resources (handles) one plugin instance may hold at once.
const MAX_RESOURCES: usize = 65_536;

impl LoadedPlugin {
    fn new_store(&self, opts: &JobOptions) -> Result<Store<PluginState>, JobError> {
        let mut b = WasiCtxBuilder::new();
        // WASI file calls are handed to tokio's blocking pool (wasmtime-wasi's
        // default), not run on the thread polling the plugin: a plugin can
        // open a FIFO or a device in its grant, and a call that blocks on
        // this thread would also block the job's deadline and Ctrl-C. From
        // the pool, `guarded` abandons the call when either fires. Bulk
        // reads and writes do not go through WASI (`add-files`,
        // `restore-files`), so the hand-off costs little.
        opts.grants.apply(&mut b)?;
        let stderr = MemoryOutputPipe::new(STDERR_KEPT);
        b.stderr(stderr.clone());
        b.stdout(MemoryOutputPipe::new(STDERR_KEPT));
        let grants = Arc::new(opts.grants.clone());
        let refusals = Arc::new(crate::host::Refusals::default());
        let job = JobState {
            plugin: self.label.clone(),
            grants: Arc::clone(&grants),
            limits: opts.limits,
            cancel: opts.cancel.clone(),
            deadline: Instant::now() + opts.limits.wall_time,
            info_deadline: None,
            observer: Arc::clone(&opts.observer),
            repo: None,
            writer: None,
            restore: None,
            settler: None,
            last_parent: None,
            output_used: 0,
            open_writers: 0,
            open_readers: 0,
            attributes: 0,
            entries: 0,
            abandoned: None,
            log_lines: 0,
            log_dropped: 0,
            fault: None,
            owner: self.stream_owner(),
            streams: None,
            needs: Default::default(),
            refusals: Arc::clone(&refusals),
        };
        let tls = wasmtime_wasi_tls::WasiTlsCtxBuilder::new()
            .provider(Box::new(crate::tls::CofferTls::new(&self.label, Arc::clone(&grants), Arc::clone(&refusals))))
            .build();
        let http_hooks = crate::http::CofferHttp::new(&self.label, Arc::clone(&grants), job.deadline, refusals);
        let state = PluginState {
            wasi: b.build(),
            tls,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks,
            table: {
                // Every handle a plugin holds (files, sockets, streams,
                // pollables, lookups) is host memory the memory cap does
                // not count; wasmtime's default allows a million.
                let mut t = ResourceTable::new();
                t.set_max_capacity(MAX_RESOURCES);
                t
            },
            limiter: MemoryLimiter { limit: opts.limits.memory, used: 0, denied: None },
            stderr,
            job,
        };
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(on_epoch);
        Ok(store)
    }

    async fn instantiate(&self, opts: &JobOptions) -> Result<Instance, JobError> {
        let mut store = self.new_store(opts)?;
        let bindings = match &self.pre {
            Contract::V1(pre) => pre.instantiate_async(&mut store).await.map(Bound::V1),
            Contract::V2(pre) => pre.instantiate_async(&mut store).await.map(Bound::V2),
        };
        let bindings = match bindings {
            Ok(b) => b,
            Err(e) => return Err(classify(&self.label, &mut store, e)),
        };
        tracing::debug!(plugin = %self.label, "plugin instantiated");
        Ok(Instance { store, bindings, plugin: self.label.clone() })
    }

    /// Calls `info`; the plugin names itself from here on.
    async fn call_info(
        inst: &mut Instance,
        config: Option<&str>,
        opts: &JobOptions,
    ) -> Result<t::PluginInfo, JobError> {
        let Instance { store, bindings, plugin } = inst;
        let limit = opts.limits.info_time.min(opts.limits.wall_time);
        store.data_mut().job.info_deadline = Some(Instant::now() + limit);
        let r = guarded_for(
            opts,
            limit,
            Fault::InfoTimeLimit(opts.limits.info_time),
            bindings.call_info(&mut *store, config),
        )
        .await;
        store.data_mut().job.info_deadline = None;
        let info = finish_call(plugin, store, r)?;
        tracing::debug!(plugin = %plugin, "plugin described itself (info)");
        if info.name.is_empty()
            || info.name.len() > 64
            || !info.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(JobError::Garbage {
                plugin: plugin.clone(),
                reason: "its name must be 1 to 64 lowercase letters, digits, `-` or `_`".into(),
            });
        }
        if info.source.len() > 1024 || info.version.len() > 64 {
            return Err(JobError::Garbage {
                plugin: plugin.clone(),
                reason: "its source or version is too long".into(),
            });
        }
        *plugin = info.name.clone();
        store.data_mut().job.plugin = info.name.clone();
        Ok(info)
    }

    /// Describes the plugin; with a config, also its source and needs.
    pub async fn info(
        &self,
        config: Option<&serde_json::Value>,
        opts: &JobOptions,
    ) -> Result<PluginDescription, JobError> {
        let mut inst = self.instantiate(opts).await?;
        let text = config.map(|c| c.to_string());
        let i = Self::call_info(&mut inst, text.as_deref(), opts).await?;
        Ok(PluginDescription {
            name: i.name,
            version: shown(i.version),
            description: shown(i.description),
            config_schema: i.config_schema,
            source: i.source,
            capabilities: i.capabilities.iter().map(|c| shown(describe_capability(c))).collect(),
            restore_directory: i.restore_modes.contains(t::RestoreModes::DIRECTORY),
            restore_live: i.restore_modes.contains(t::RestoreModes::LIVE),
            digest: self.digest.clone(),
            contract: self.contract().to_string(),
        })
    }

    /// Refuses a job whose declared needs were not granted.
    fn check_needs(plugin: &str, info: &t::PluginInfo, grants: &GrantSet) -> Result<(), JobError> {
        if info.capabilities.len() > 256 {
            return Err(JobError::Garbage {
                plugin: plugin.into(),
                reason: "it declared more than 256 capabilities".into(),
            });
        }
        for c in &info.capabilities {
            let (perm, hint) = match c {
                t::Capability::ReadDir(d) => (
                    Permission::ReadDir(d.into()),
                    "name the directory in the config field the plugin declares for it (`coffer plugin inspect` \
                     lists them; `--set path=DIR` for most)"
                        .to_string(),
                ),
                t::Capability::WriteDir(d) => {
                    (Permission::WriteDir(d.into()), "restore with `--target DIR`".to_string())
                }
                t::Capability::Connect(a) => {
                    // Compared as text with what the operator typed, or as a
                    // literal address; never looked up (the query would
                    // carry whatever the plugin put in the name).
                    if !grants.allows_connect_spec(a) {
                        return Err(JobError::NotGranted {
                            plugin: plugin.into(),
                            needed: shown(Permission::Connect(a.clone(), Vec::new()).display_name()),
                            hint: "give that address in the config field the plugin declares for it (`coffer \
                                   plugin inspect` lists them; `--set url=...` for most), spelled as the plugin \
                                   declares it; coffer never looks up a name a plugin chose"
                                .into(),
                        });
                    }
                    continue;
                }
            };
            if !grants.allows(&perm) {
                return Err(JobError::NotGranted { plugin: plugin.into(), needed: shown(perm.display_name()), hint });
            }
        }
        Ok(())
    }

    /// Runs a snapshot and commits it. On any failure the snapshot is
    /// aborted and the repository is left as it was.
    pub async fn snapshot(
        &self,
        repo: &Repository,
        req: SnapshotRequest,
        opts: &JobOptions,
    ) -> Result<(Id, coffer_repo::SnapshotManifest), JobError> {
        let mut inst = self.instantiate(opts).await?;
        let config_text = req.config.to_string();
        let info = Self::call_info(&mut inst, Some(&config_text), opts).await?;
        Self::check_needs(&inst.plugin, &info, &opts.grants)?;
        let source = req
            .source
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| if info.source.is_empty() { info.name.clone() } else { info.source.clone() });
        let writer = repo
            .start_snapshot(SnapshotOptions {
                tenant: req.tenant.clone(),
                source,
                plugin: PluginIdentity {
                    name: info.name.clone(),
                    version: info.version.clone(),
                    digest: self.digest.clone(),
                    builtin: self.builtin,
                },
                config: req.config.clone(),
                parent: req.parent,
                kind: req.kind,
                tags: req.tags.clone(),
            })
            .await?;
        // The writer loaded the parent; the plugin reads the same copy.
        let parent_snapshot = writer.parent().cloned();
        let Instance { mut store, bindings, plugin } = inst;
        {
            let job = &mut store.data_mut().job;
            job.repo = Some(repo.clone());
            job.writer = Some(writer);
        }
        let outcome = async {
            let table = &mut store.data_mut().table;
            let sink: Resource<SinkSlot> = table.push(SinkSlot).map_err(|e| runtime_err(&plugin, e))?;
            let parent: Option<Resource<ReaderSlot>> = match &parent_snapshot {
                Some(s) => Some(table.push(ReaderSlot::new(Arc::clone(s))).map_err(|e| runtime_err(&plugin, e))?),
                None => None,
            };
            let parent_borrow = parent.as_ref().map(|p| Resource::<ReaderSlot>::new_borrow(p.rep()));
            let sink_borrow = Resource::<SinkSlot>::new_borrow(sink.rep());
            let r = guarded(opts, bindings.call_snapshot(&mut store, &config_text, parent_borrow, sink_borrow)).await;
            finish_call(&plugin, &mut store, r)?;
            if let Some(path) = store.data().job.abandoned.clone() {
                return Err(JobError::Fault {
                    plugin: plugin.clone(),
                    fault: Fault::Contract(format!("entry `{path}` was dropped before it was finished")),
                });
            }
            if store.data().job.open_writers > 0 {
                let n = store.data().job.open_writers;
                return Err(JobError::Fault {
                    plugin: plugin.clone(),
                    fault: Fault::Contract(format!("returned with {n} entries not finished")),
                });
            }
            Ok(())
        }
        .await;
        let writer = store.data_mut().job.writer.take().expect("writer set above");
        // The instance is done either way: drop it (and any handle the
        // plugin still held) before committing or aborting, and the parent
        // snapshot with it, which the commit then frees.
        drop(store);
        drop(parent_snapshot);
        match outcome {
            Ok(()) => {
                let id = writer.commit().await?;
                let manifest = repo.read_manifest(&id).await?;
                Ok((id, manifest))
            }
            Err(e) => {
                writer.abort().await;
                Err(e)
            }
        }
    }

    /// Restores a snapshot into `req.target` (granted read-write in `opts`)
    /// or, without a target, into the live server the config names.
    pub async fn restore(
        &self,
        repo: &Repository,
        snapshot: &Id,
        req: RestoreRequest,
        opts: &JobOptions,
    ) -> Result<(), JobError> {
        let snap = Arc::new(repo.open_snapshot(snapshot).await?);
        let mut inst = self.instantiate(opts).await?;
        let config_text = req.config.to_string();
        let info = Self::call_info(&mut inst, Some(&config_text), opts).await?;
        let (target, mode) = match &req.target {
            Some(d) => (t::RestoreTarget::Directory(d.to_string_lossy().into_owned()), t::RestoreModes::DIRECTORY),
            None => (t::RestoreTarget::Live, t::RestoreModes::LIVE),
        };
        if !info.restore_modes.contains(mode) {
            return Err(JobError::RestoreMode {
                plugin: inst.plugin.clone(),
                mode: if req.target.is_some() { "into a directory" } else { "into a live server" },
            });
        }
        let Instance { mut store, bindings, plugin } = inst;
        {
            let job = &mut store.data_mut().job;
            job.repo = Some(repo.clone());
            if let Some(root) = &req.target {
                job.restore = Some(RestoreRoot { root: root.clone(), snapshot: Arc::clone(&snap) });
                job.settler = Some(Settler::new(root.clone()));
            }
        }
        // Symlinks already in a target restored over with `--force` are the
        // operator's; only new ones are checked against the snapshot.
        let before: std::collections::HashSet<_> = match &req.target {
            Some(root) if req.force => symlinks_under(root).into_iter().collect(),
            _ => Default::default(),
        };
        let reader =
            store.data_mut().table.push(ReaderSlot::new(Arc::clone(&snap))).map_err(|e| runtime_err(&plugin, e))?;
        let options = st::RestoreOptions {
            target,
            force: req.force,
            paths: req.paths.clone(),
            fetch: req.fetch.clone().map(|f| st::FetchCommand { argv: f.argv, note: f.note }),
        };
        let borrow = Resource::<ReaderSlot>::new_borrow(reader.rep());
        let r = guarded(opts, bindings.call_restore(&mut store, &config_text, borrow, options)).await;
        let settler = store.data_mut().job.settler.take();
        finish_call(&plugin, &mut store, r)?;
        if let Some(settler) = settler {
            tokio::task::spawn_blocking(move || settler.finish())
                .await
                .map_err(|e| runtime_err(&plugin, e))?
                .map_err(|reason| JobError::WriteBack { reason })?;
        }
        if let Some(root) = req.target.clone() {
            let stray = tokio::task::spawn_blocking(move || {
                let mut stray: Vec<String> = symlinks_under(&root)
                    .into_iter()
                    .filter(|link| !before.contains(link))
                    .filter(|(path, target)| {
                        !snap.entry(path).is_some_and(|e| {
                            e.kind == coffer_repo::EntryKind::Symlink
                                && e.target.as_deref().map(std::path::Path::new) == Some(target.as_path())
                        })
                    })
                    .map(|(path, target)| format!("{} -> {}", printable(&path), printable(&target.to_string_lossy())))
                    .collect();
                stray.sort();
                stray
            })
            .await
            .map_err(|e| runtime_err(&plugin, e))?;
            if !stray.is_empty() {
                let n = stray.len();
                let mut links = stray.into_iter().take(10).collect::<Vec<_>>().join(", ");
                if n > 10 {
                    links.push_str(&format!(" and {} more", n - 10));
                }
                return Err(JobError::StraySymlinks {
                    plugin,
                    target: printable(&req.target.as_deref().unwrap_or(std::path::Path::new("")).to_string_lossy()),
                    links,
                });
            }
        }
        Ok(())
    }

    /// Runs the plugin's verify of a snapshot.
    pub async fn verify(
        &self,
        repo: &Repository,
        snapshot: &Id,
        config: &serde_json::Value,
        opts: &JobOptions,
    ) -> Result<VerifyReport, JobError> {
        let snap = Arc::new(repo.open_snapshot(snapshot).await?);
        let mut inst = self.instantiate(opts).await?;
        let config_text = config.to_string();
        Self::call_info(&mut inst, Some(&config_text), opts).await?;
        let Instance { mut store, bindings, plugin } = inst;
        store.data_mut().job.repo = Some(repo.clone());
        let reader = store.data_mut().table.push(ReaderSlot::new(snap)).map_err(|e| runtime_err(&plugin, e))?;
        let borrow = Resource::<ReaderSlot>::new_borrow(reader.rep());
        let r = guarded(opts, bindings.call_verify(&mut store, &config_text, borrow)).await;
        let report = finish_call(&plugin, &mut store, r)?;
        if report.problems.len() > MAX_PROBLEMS {
            return Err(JobError::Garbage {
                plugin,
                reason: format!(
                    "its verify report lists {} problems, more than the {MAX_PROBLEMS} the host takes; report the rest as a count in a note",
                    report.problems.len()
                ),
            });
        }
        Ok(VerifyReport {
            checked: report.checked,
            bytes: report.bytes,
            problems: report.problems.into_iter().map(|p| (shown(p.path), shown(p.reason))).collect(),
            notes: report.notes.into_iter().map(shown).collect(),
        })
    }
}

impl LoadedPlugin {
    /// The owner of this plugin's streams: `builtin-<name>` for a plugin
    /// embedded in the binary, its digest otherwise.
    pub fn stream_owner(&self) -> Option<StreamOwner> {
        let owner = if self.builtin { StreamOwner::builtin(&self.label) } else { StreamOwner::parse(&self.digest) };
        owner.ok()
    }

    /// Hands `file` (a host path the caller granted read-only in `opts`)
    /// to the plugin's `stream-push`, which archives it in one of its
    /// streams.
    pub async fn stream_push(
        &self,
        repo: &Repository,
        file: &std::path::Path,
        config: &serde_json::Value,
        opts: &JobOptions,
    ) -> Result<StreamReport, JobError> {
        self.stream_job(repo, config, opts, StreamCall::Push(file.to_string_lossy().into_owned())).await
    }

    /// Runs the plugin's `follow` until it is cancelled (through
    /// `opts.cancel`) or fails. Each stream it writes is leased for
    /// `lease_expiry` while it runs, so a second follower of the same
    /// stream is refused. A follow that ends because it was cancelled
    /// succeeds: every finished item is stored, none is half stored.
    pub async fn follow(
        &self,
        repo: &Repository,
        config: &serde_json::Value,
        opts: &JobOptions,
        lease_expiry: Duration,
    ) -> Result<StreamReport, JobError> {
        self.stream_job(repo, config, opts, StreamCall::Follow(lease_expiry)).await
    }

    async fn stream_job(
        &self,
        repo: &Repository,
        config: &serde_json::Value,
        opts: &JobOptions,
        call: StreamCall,
    ) -> Result<StreamReport, JobError> {
        let mut inst = self.instantiate(opts).await?;
        let config_text = config.to_string();
        let info = Self::call_info(&mut inst, Some(&config_text), opts).await?;
        Self::check_needs(&inst.plugin, &info, &opts.grants)?;
        let Instance { mut store, bindings, plugin } = inst;
        let b = bindings.v2(&plugin)?;
        let Some(owner) = self.stream_owner() else {
            return Err(JobError::Garbage { plugin, reason: "it has no identity that can own streams".into() });
        };
        let identity = PluginIdentity {
            name: info.name.clone(),
            version: info.version.clone(),
            digest: self.digest.clone(),
            builtin: self.builtin,
        };
        let writer = repo.stream_writer(owner, identity).await?;
        tracing::debug!("stream writer ready (session marker written, keyring and index loaded)");
        let lease_expiry = match call {
            StreamCall::Follow(e) => Some(e),
            StreamCall::Push(_) => None,
        };
        {
            let job = &mut store.data_mut().job;
            job.repo = Some(repo.clone());
            job.streams = Some(StreamJob::new(writer, lease_expiry));
        }
        let outcome = async {
            let sink: Resource<StreamSinkSlot> =
                store.data_mut().table.push(StreamSinkSlot).map_err(|e| runtime_err(&plugin, e))?;
            let borrow = Resource::<StreamSinkSlot>::new_borrow(sink.rep());
            let src = b.coffer_plugin0_2_0_source();
            let r = match &call {
                StreamCall::Push(file) => {
                    guarded(opts, src.call_stream_push(&mut store, &config_text, file, borrow)).await
                }
                StreamCall::Follow(_) => guarded(opts, src.call_follow(&mut store, &config_text, borrow)).await,
            };
            match finish_call(&plugin, &mut store, r) {
                Ok(()) => {}
                // A follow runs until the operator stops it: that stop is
                // its normal end, whether the plugin noticed it or the host
                // did. A plugin that gives up on its own has failed.
                Err(e) if e.is_cancelled() && opts.cancel.is_cancelled() && matches!(call, StreamCall::Follow(_)) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            // Items still open when the plugin returned are not stored:
            // for an archive command that would be a file reported safe
            // and then lost.
            let open = store.data().job.open_writers;
            if open > 0 {
                return Err(JobError::Fault {
                    plugin: plugin.clone(),
                    fault: Fault::Contract(format!("returned with {open} stream items not finished")),
                });
            }
            Ok(())
        }
        .await;
        let job = store.data_mut().job.streams.take().expect("stream job set above");
        drop(store);
        let report = StreamReport { items: job.items.clone(), finished: job.finished };
        let ended = job.end(outcome.is_ok()).await;
        outcome?;
        ended?;
        Ok(report)
    }
}

/// Which stream export a stream job calls.
enum StreamCall {
    /// `stream-push` of this host path.
    Push(String),
    /// `follow`, leasing each stream for this long.
    Follow(Duration),
}

/// What a stream job stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    /// The items finished (the first 1,000 of them), stored or found
    /// already stored.
    pub items: Vec<PushedItem>,
    /// How many items were finished in all.
    pub finished: u64,
}

/// Every symlink below `root` as (path relative to `root`, target), found
/// without following any; directories that cannot be read are skipped.
fn symlinks_under(root: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let Ok(items) = std::fs::read_dir(root.join(&rel)) else { continue };
        for item in items.flatten() {
            let Ok(kind) = item.file_type() else { continue };
            let path = rel.join(item.file_name());
            if kind.is_symlink() {
                if let Ok(target) = std::fs::read_link(item.path()) {
                    out.push((path.to_string_lossy().into_owned(), target));
                }
            } else if kind.is_dir() {
                dirs.push(path);
            }
        }
    }
    out
}

fn runtime_err(plugin: &str, e: impl std::fmt::Display) -> JobError {
    JobError::Runtime { plugin: plugin.into(), reason: e.to_string() }
}

/// Runs a call under the job's deadline and cancel token. The epoch
/// callback stops wasm code; this also stops a plugin waiting in a host
/// call (a socket read, a slow store, a WASI call on the blocking pool).
async fn guarded<T>(
    opts: &JobOptions,
    call: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    guarded_for(opts, opts.limits.wall_time, Fault::TimeLimit(opts.limits.wall_time), call).await
}

/// [`guarded`] with a limit of its own and the fault to report past it.
async fn guarded_for<T>(
    opts: &JobOptions,
    limit: std::time::Duration,
    fault: Fault,
    call: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    tokio::select! {
        r = call => r,
        _ = opts.cancel.cancelled() => Err(wasmtime::Error::new(Fault::Cancelled)),
        _ = tokio::time::sleep(limit) => Err(wasmtime::Error::new(fault)),
    }
}

/// Turns a call's outcome into the plugin's value or a [`JobError`].
fn finish_call<T>(
    plugin: &str,
    store: &mut Store<PluginState>,
    r: wasmtime::Result<Result<T, t::Error>>,
) -> Result<T, JobError> {
    report_dropped_logs(store);
    match r {
        Ok(Ok(v)) => match store.data().job.fault.clone() {
            // A fault the plugin caught and ignored still fails the job.
            Some(fault) => Err(JobError::Fault { plugin: plugin.into(), fault }),
            None => Ok(v),
        },
        Ok(Err(e)) => match store.data().job.fault.clone() {
            Some(fault) => Err(JobError::Fault { plugin: plugin.into(), fault }),
            None => Err(JobError::Plugin { plugin: plugin.into(), error: e.into() }),
        },
        Err(e) => Err(classify(plugin, store, e)),
    }
}

/// Tells the observer how many log lines the call's plugin logged past the
/// cap (the lines themselves are gone).
fn report_dropped_logs(store: &mut Store<PluginState>) {
    let job = &mut store.data_mut().job;
    if job.log_dropped > 0 {
        let n = std::mem::take(&mut job.log_dropped);
        let line = format!(
            "{n} more log line{} dropped: a job keeps its first {} lines",
            if n == 1 { " was" } else { "s were" },
            crate::host::MAX_LOG_LINES
        );
        job.observer.log(&job.plugin, LogLevel::Warn, &line);
    }
}

/// The most problems a verify report may list. wasmtime copies at most
/// 128 MiB from a plugin per call (its "hostcall fuel"), about 2.5 million
/// short problems; this cap is well below, so a flood meets this message.
pub const MAX_PROBLEMS: usize = 1_000_000;

/// True when wasmtime refused to copy a plugin's return value because it
/// was larger than a call may pass (its hostcall fuel ran out). The error
/// type is private to wasmtime, so its message is matched.
fn too_much_returned(e: &wasmtime::Error) -> bool {
    e.chain().any(|c| c.to_string().contains("fuel allocated for hostcalls has been exhausted"))
}

/// True when an out-of-bounds memory access happened deep in a recursion:
/// the plugin's shadow stack (in its own linear memory) ran off its start,
/// which wasm reports only as an out-of-bounds access.
fn stack_overflow(e: &wasmtime::Error) -> bool {
    if !matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::MemoryOutOfBounds)) {
        return false;
    }
    let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() else { return false };
    let mut seen: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    bt.frames().iter().any(|f| {
        let n = seen.entry(f.func_index()).or_default();
        *n += 1;
        *n >= 16
    })
}

/// Names the reason a call trapped.
fn classify(plugin: &str, store: &mut Store<PluginState>, e: wasmtime::Error) -> JobError {
    if let Some(f) = e.downcast_ref::<Fault>() {
        return JobError::Fault { plugin: plugin.into(), fault: f.clone() };
    }
    let data = store.data();
    if let Some(f) = &data.job.fault {
        return JobError::Fault { plugin: plugin.into(), fault: f.clone() };
    }
    if let Some(requested) = data.limiter.denied {
        return JobError::Fault {
            plugin: plugin.into(),
            fault: Fault::MemoryLimit { limit: data.limiter.limit, requested },
        };
    }
    let stderr = String::from_utf8_lossy(&data.stderr.contents()).into_owned();
    let panic = stderr.lines().find(|l| l.contains("panicked at")).map(|l| {
        // The message follows on the next line in Rust's panic output.
        let rest: Vec<&str> = stderr.lines().skip_while(|x| *x != l).skip(1).take(1).collect();
        match rest.first() {
            Some(m) if !m.trim().is_empty() => format!("{}: {}", l.trim(), m.trim()),
            _ => l.trim().to_string(),
        }
    });
    if let Some(stderr_alloc) = stderr.lines().find(|l| l.contains("memory allocation of")) {
        return JobError::Fault {
            plugin: plugin.into(),
            fault: Fault::MemoryLimit { limit: data.limiter.limit, requested: parse_alloc(stderr_alloc) },
        };
    }
    if too_much_returned(&e) {
        return JobError::Garbage {
            plugin: plugin.into(),
            reason: format!(
                "it returned more than one call may pass to the host (128 MiB); a verify report lists at most {MAX_PROBLEMS} problems, so report the rest as a count in a note"
            ),
        };
    }
    let trap = match e.downcast_ref::<wasmtime::Trap>() {
        Some(_) if stack_overflow(&e) => {
            "stack overflow: it recursed until its stack ran out of its memory (wasm reports an out of bounds memory access)".to_string()
        }
        Some(t) => t.to_string(),
        None => format!("{}", e.root_cause()),
    };
    let reason = match panic {
        Some(p) => format!("{trap} ({p})"),
        None => trap,
    };
    JobError::Trap { plugin: plugin.into(), reason }
}

fn parse_alloc(line: &str) -> u64 {
    line.split_whitespace().find_map(|w| w.parse::<u64>().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declaring(caps: Vec<t::Capability>) -> t::PluginInfo {
        t::PluginInfo {
            name: "p".into(),
            version: "1".into(),
            description: String::new(),
            config_schema: "{}".into(),
            source: String::new(),
            capabilities: caps,
            restore_modes: t::RestoreModes::empty(),
        }
    }

    #[test]
    fn declared_names_are_compared_never_looked_up() {
        let mut grants = GrantSet::none();
        grants.connect("url", "postgres://u@127.0.0.1:5433/").unwrap();
        grants.connect("url", "localhost:6379").unwrap();
        let before = crate::grants::lookups();
        // A secret carried in a name the plugin chose: refused, no lookup.
        let exfil = declaring(vec![t::Capability::Connect("544f5020534543524554.exfil.invalid:443".into())]);
        let e = LoadedPlugin::check_needs("p", &exfil, &grants).unwrap_err();
        assert!(matches!(e, JobError::NotGranted { .. }), "{e}");
        assert!(e.to_string().contains("never looks up"), "{e}");
        // `127.1` resolves to 127.0.0.1, which is granted; still refused,
        // since only the text the operator typed counts.
        let alias = declaring(vec![t::Capability::Connect("127.1:5433".into())]);
        assert!(LoadedPlugin::check_needs("p", &alias, &grants).is_err());
        // What the operator typed, as a name or a literal address, passes.
        for ok in ["127.0.0.1:5433", "LOCALHOST:6379"] {
            let info = declaring(vec![t::Capability::Connect(ok.into())]);
            LoadedPlugin::check_needs("p", &info, &grants).unwrap();
        }
        assert_eq!(crate::grants::lookups(), before, "checking a plugin's needs looked a name up");
    }
}
