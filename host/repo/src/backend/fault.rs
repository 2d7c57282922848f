//! A fault-injecting backend decorator, for tests.
//!
//! [`FaultyBackend`] forwards to an inner backend and fails calls chosen by
//! rules: the Nth write, every write of a kind, reads of one object, writes
//! that hang until a timeout, and silent truncation. Tests use it to prove that
//! a failing store never leaves a half snapshot and always yields a clear
//! error. It also counts the calls it forwards ([`FaultyBackend::calls`]),
//! so a test can tell how a command used the store.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{Backend, BackendError, BackendResult, DynBackend, FileKind, Listed, PutMode};

/// Which calls a [`Fault`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `put`.
    Put,
    /// `get` and `get_range`.
    Get,
    /// `list` and `list_prefix`.
    List,
    /// `delete`.
    Delete,
}

/// What happens to a matching call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Fail with an error.
    Error,
    /// Wait this long and then fail with a timeout error.
    Hang(Duration),
    /// For `put`: store only the first half of the object and report success
    /// (a store that lies); for `get`: return only the first half.
    Truncate,
}

/// One injection rule.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The operation.
    pub op: Op,
    /// Restrict to one kind of file.
    pub kind: Option<FileKind>,
    /// Skip this many matching calls before the fault fires.
    pub after: u64,
    /// Fire this many times (`u64::MAX`: always).
    pub times: u64,
    /// What to do.
    pub effect: Effect,
}

impl Fault {
    /// Fail every matching call of `op` on `kind` from the start.
    pub fn always(op: Op, kind: Option<FileKind>) -> Self {
        Fault { op, kind, after: 0, times: u64::MAX, effect: Effect::Error }
    }

    /// Fail once, after `after` successful matching calls.
    pub fn nth(op: Op, kind: Option<FileKind>, after: u64) -> Self {
        Fault { op, kind, after, times: 1, effect: Effect::Error }
    }
}

#[derive(Debug)]
struct Rule {
    fault: Fault,
    seen: AtomicU64,
}

/// A backend decorator that injects faults.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: DynBackend,
    rules: Mutex<Vec<Rule>>,
    injected: AtomicU64,
    /// Calls made, by method name (`put`, `get`, `get_range`, `list`,
    /// `list_prefix`, `delete`) and kind.
    calls: Mutex<HashMap<(&'static str, FileKind), u64>>,
}

impl FaultyBackend {
    /// Wraps `inner` with no faults.
    pub fn new(inner: DynBackend) -> Self {
        FaultyBackend {
            inner,
            rules: Mutex::new(Vec::new()),
            injected: AtomicU64::new(0),
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// How many times `method` (`put`, `get`, `get_range`, `list`,
    /// `list_prefix`, `delete`) was called on `kind` so far.
    pub fn calls(&self, method: &str, kind: FileKind) -> u64 {
        let calls = self.calls.lock().expect("calls lock");
        calls.iter().filter(|((m, k), _)| *m == method && *k == kind).map(|(_, n)| *n).sum()
    }

    /// Forgets the calls counted so far.
    pub fn reset_calls(&self) {
        self.calls.lock().expect("calls lock").clear();
    }

    fn count(&self, method: &'static str, kind: FileKind) {
        *self.calls.lock().expect("calls lock").entry((method, kind)).or_default() += 1;
    }

    /// Adds a rule.
    pub fn inject(&self, fault: Fault) {
        self.rules.lock().expect("rules lock").push(Rule { fault, seen: AtomicU64::new(0) });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().expect("rules lock").clear();
    }

    /// How many faults fired so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self, op: Op, kind: FileKind) -> Option<Effect> {
        let rules = self.rules.lock().expect("rules lock");
        for r in rules.iter() {
            if r.fault.op != op || r.fault.kind.is_some_and(|k| k != kind) {
                continue;
            }
            let n = r.seen.fetch_add(1, Ordering::SeqCst);
            if n >= r.fault.after && n - r.fault.after < r.fault.times {
                self.injected.fetch_add(1, Ordering::SeqCst);
                return Some(r.fault.effect.clone());
            }
        }
        None
    }
}

fn injected(op: &'static str, path: String) -> BackendError {
    BackendError::Other { op, path, message: "injected fault: storage unavailable".into() }
}

impl Backend for FaultyBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes, mode: PutMode) -> BoxFuture<'_, BackendResult<()>> {
        self.count("put", kind);
        let effect = self.check(Op::Put, kind);
        let name = name.to_string();
        Box::pin(async move {
            match effect {
                None => self.inner.put(kind, &name, data, mode).await,
                Some(Effect::Error) => Err(injected("write", kind.path(&name))),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "write", path: kind.path(&name), secs: d.as_secs() })
                }
                Some(Effect::Truncate) => {
                    let half = data.slice(..data.len() / 2);
                    self.inner.put(kind, &name, half, mode).await
                }
            }
        })
    }

    fn get(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<Bytes>> {
        self.count("get", kind);
        let effect = self.check(Op::Get, kind);
        let name = name.to_string();
        Box::pin(async move {
            match effect {
                None => self.inner.get(kind, &name).await,
                Some(Effect::Error) => Err(injected("read", kind.path(&name))),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "read", path: kind.path(&name), secs: d.as_secs() })
                }
                Some(Effect::Truncate) => {
                    let b = self.inner.get(kind, &name).await?;
                    Ok(b.slice(..b.len() / 2))
                }
            }
        })
    }

    fn get_range(&self, kind: FileKind, name: &str, range: Range<u64>) -> BoxFuture<'_, BackendResult<Bytes>> {
        self.count("get_range", kind);
        let effect = self.check(Op::Get, kind);
        let name = name.to_string();
        Box::pin(async move {
            match effect {
                None => self.inner.get_range(kind, &name, range).await,
                Some(Effect::Error) => Err(injected("read", kind.path(&name))),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "read", path: kind.path(&name), secs: d.as_secs() })
                }
                Some(Effect::Truncate) => {
                    let b = self.inner.get_range(kind, &name, range).await?;
                    Ok(b.slice(..b.len() / 2))
                }
            }
        })
    }

    fn list(&self, kind: FileKind) -> BoxFuture<'_, BackendResult<Vec<Listed>>> {
        self.count("list", kind);
        let effect = self.check(Op::List, kind);
        Box::pin(async move {
            match effect {
                None | Some(Effect::Truncate) => self.inner.list(kind).await,
                Some(Effect::Error) => Err(injected("list", kind.dir().to_string())),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "list", path: kind.dir().to_string(), secs: d.as_secs() })
                }
            }
        })
    }

    fn list_prefix(&self, kind: FileKind, prefix: &str) -> BoxFuture<'_, BackendResult<Vec<Listed>>> {
        self.count("list_prefix", kind);
        let effect = self.check(Op::List, kind);
        let prefix = prefix.to_string();
        Box::pin(async move {
            match effect {
                None | Some(Effect::Truncate) => self.inner.list_prefix(kind, &prefix).await,
                Some(Effect::Error) => Err(injected("list", kind.path(&prefix))),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "list", path: kind.path(&prefix), secs: d.as_secs() })
                }
            }
        })
    }

    fn spool_dir(&self, kind: FileKind) -> Option<std::path::PathBuf> {
        self.inner.spool_dir(kind)
    }

    fn put_spooled(&self, kind: FileKind, name: &str, file: std::path::PathBuf) -> BoxFuture<'_, BackendResult<()>> {
        let effect = self.check(Op::Put, kind);
        let name = name.to_string();
        Box::pin(async move {
            match effect {
                None => self.inner.put_spooled(kind, &name, file).await,
                Some(Effect::Error) => Err(injected("write", kind.path(&name))),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "write", path: kind.path(&name), secs: d.as_secs() })
                }
                Some(Effect::Truncate) => {
                    let cut = std::fs::metadata(&file)
                        .and_then(|m| std::fs::OpenOptions::new().write(true).open(&file)?.set_len(m.len() / 2));
                    if let Err(e) = cut {
                        return Err(BackendError::Other {
                            op: "write",
                            path: kind.path(&name),
                            message: e.to_string(),
                        });
                    }
                    self.inner.put_spooled(kind, &name, file).await
                }
            }
        })
    }

    fn remove_stale_staging(&self, older_than: Duration) -> BoxFuture<'_, BackendResult<usize>> {
        self.inner.remove_stale_staging(older_than)
    }

    fn delete(&self, kind: FileKind, name: &str) -> BoxFuture<'_, BackendResult<()>> {
        self.count("delete", kind);
        let effect = self.check(Op::Delete, kind);
        let name = name.to_string();
        Box::pin(async move {
            match effect {
                None | Some(Effect::Truncate) => self.inner.delete(kind, &name).await,
                Some(Effect::Error) => Err(injected("delete", kind.path(&name))),
                Some(Effect::Hang(d)) => {
                    tokio::time::sleep(d).await;
                    Err(BackendError::Timeout { op: "delete", path: kind.path(&name), secs: d.as_secs() })
                }
            }
        })
    }
}
