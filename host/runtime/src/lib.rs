//! coffer-runtime: runs data-source plugins (WebAssembly components of the
//! `coffer:plugin` contract) in a sandbox and bridges their I/O to
//! coffer-repo.
//!
//! A [`Runtime`] owns the wasmtime engine (pooling allocator, epoch
//! interruption), the linker (WASI p2 plus the contract) and the compiled
//! component cache. [`Runtime::load`] turns `.wasm` bytes into a
//! [`LoadedPlugin`]; each job on it (`info`, `snapshot`, `restore`,
//! `verify`) runs in a fresh instance with its own store, [`GrantSet`] and
//! [`Limits`]. A plugin that traps, loops, runs out of memory or breaks
//! the contract fails its job and nothing else.

mod add_files;
pub mod bindings;
pub mod cache;
pub mod dns;
pub mod grants;
pub mod host;
mod http;
pub mod job;
pub mod limits;
mod locks;
mod lookup;
mod pool;
mod restore_files;
mod settle;
pub mod streams;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

pub use cache::ComponentCache;
pub use dns::{NameServers, SrvTarget};
pub use grants::{GrantError, GrantKind, GrantRules, GrantSet, Permission, Purpose, SrvGrant};
pub use host::{Fault, PluginState, printable};
pub use job::{
    CancelToken, FetchCommand, JobError, JobObserver, JobOptions, PluginDescription, PluginError, RestoreRequest,
    SnapshotRequest, StreamReport, TracingObserver, VerifyReport,
};
pub use limits::Limits;
pub use streams::PushedItem;

/// How often the epoch advances: the granularity of deadlines,
/// cancellation and cooperative yielding of running wasm.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A runtime could not be set up or a component not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine could not be configured.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The bytes are not a usable component.
    #[error("cannot load plugin {name}: {reason}")]
    Load {
        /// What was being loaded (file name or built-in name).
        name: String,
        /// Why it failed.
        reason: String,
    },
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Plugin instances that may exist at the same time (pool size).
    pub max_instances: u32,
    /// Where compiled components are cached; `None` compiles in memory. The
    /// default is [`ComponentCache::usable_dir`].
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { max_instances: 100, cache_dir: ComponentCache::usable_dir() }
    }
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<PluginState>,
    cache: Option<ComponentCache>,
}

/// The plugin host: engine, linker and component cache. Cheap to clone;
/// share one per process.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl Runtime {
    /// Sets up the engine, starts the epoch ticker and links WASI p2 and
    /// the contract.
    pub fn new(opts: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let n = opts.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n);
        pool.total_core_instances(n * 16);
        pool.total_memories(n * 2);
        pool.total_tables(n * 16);
        pool.total_stacks(n);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(32);
        pool.max_core_instances_per_component(64);
        pool.max_memory_size(4 << 30);
        pool.max_unused_warm_slots(n.min(16));

        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(e.to_string()))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("coffer-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        // Name lookups answered from the grants only (replaces wasmtime-wasi's).
        lookup::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let mut tls = wasmtime_wasi_tls::p2::LinkOptions::default();
        tls.tls(true);
        wasmtime_wasi_tls::p2::add_to_linker(&mut linker, &tls).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        bindings::v2::Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;

        let cache = opts.cache_dir.as_deref().and_then(ComponentCache::open);
        tracing::debug!("plugin engine ready");
        Ok(Runtime { inner: Arc::new(RuntimeInner { engine, linker, cache }) })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles (or loads from the cache) a component and links it.
    /// `name` labels it in messages until the plugin names itself.
    pub fn load(&self, name: &str, wasm: &[u8]) -> Result<LoadedPlugin, RuntimeError> {
        self.load_as(name, wasm, false)
    }

    /// [`Runtime::load`] for a component embedded in the binary (a built-in
    /// plugin): its snapshots record that a built-in wrote them, which lets
    /// a later build of the same built-in take them as parents.
    pub fn load_builtin(&self, name: &str, wasm: &[u8]) -> Result<LoadedPlugin, RuntimeError> {
        self.load_as(name, wasm, true)
    }

    fn load_as(&self, name: &str, wasm: &[u8], builtin: bool) -> Result<LoadedPlugin, RuntimeError> {
        let err = |reason: String| RuntimeError::Load { name: name.into(), reason };
        if wasm.len() < 8 || &wasm[0..4] != b"\0asm" {
            return Err(err("not a WebAssembly file".into()));
        }
        // A core module has version 1; a component has layer 1 in bytes 6-7.
        if wasm[6..8] != [1, 0] {
            return Err(err(
                "a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2`".into(),
            ));
        }
        let component = match &self.inner.cache {
            Some(c) => c.load(&self.inner.engine, wasm),
            None => wasmtime::component::Component::new(&self.inner.engine, wasm),
        }
        .map_err(|e| err(format!("{e:#}")))?;
        tracing::debug!(plugin = name, "plugin component loaded");
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            err(format!(
                "it does not match the coffer:plugin contract (0.2.0 or 0.1.0) or imports something coffer does not provide ({e:#})"
            ))
        })?;
        // A component exports one version of `source`: 0.2.0's, or 0.1.0's.
        let pre = match bindings::v2::PluginPre::new(pre.clone()) {
            Ok(p) => Contract::V2(p),
            Err(e2) => match bindings::v1::PluginPre::new(pre) {
                Ok(p) => Contract::V1(p),
                Err(_) => return Err(err(format!("it does not export coffer:plugin/source@0.2.0 or @0.1.0 ({e2:#})"))),
            },
        };
        Ok(LoadedPlugin {
            runtime: self.clone(),
            label: name.to_string(),
            digest: blake3::hash(wasm).to_hex().to_string(),
            builtin,
            pre,
        })
    }
}

/// A compiled, linked plugin, ready to instantiate. Cheap to clone; jobs
/// on it may run concurrently, each in its own instance.
#[derive(Clone)]
pub struct LoadedPlugin {
    runtime: Runtime,
    label: String,
    digest: String,
    builtin: bool,
    pre: Contract,
}

/// The contract version a component was built against, with what it takes
/// to instantiate it.
#[derive(Clone)]
pub(crate) enum Contract {
    /// `coffer:plugin@0.1.0`: no streams.
    V1(bindings::v1::PluginPre<PluginState>),
    /// `coffer:plugin@0.2.0`.
    V2(bindings::v2::PluginPre<PluginState>),
}

impl LoadedPlugin {
    /// BLAKE3 (hex) of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// True for a component embedded in the binary ([`Runtime::load_builtin`]).
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The name it was loaded under.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The contract version the component was built against (`0.1.0`,
    /// `0.2.0`).
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Contract::V1(_) => "0.1.0",
            Contract::V2(_) => "0.2.0",
        }
    }

    /// Which config fields grant what: a 0.1.0 component's are inferred
    /// from key names, a 0.2.0 component's are what its `config_schema`
    /// (from `info`) declares with `x-coffer-grant`.
    pub fn grant_rules(&self, config_schema: &str) -> Result<GrantRules, JobError> {
        match self.pre {
            Contract::V1(_) => Ok(GrantRules::Inferred),
            Contract::V2(_) => GrantRules::from_schema(config_schema)
                .map_err(|reason| JobError::Garbage { plugin: self.label.clone(), reason }),
        }
    }
}
