//! Test support: a redb storage backend that fails on command.
//!
//! Owns: [`FaultyBackend`], a wrapper around redb's `FileBackend` that passes every call through
//! except those its shared [`FaultPlan`] says to fail, and [`FaultPlan::factory`] to put it
//! under a [`crate::Store`] through [`crate::StoreOptions::backend`]. Must never: be used by the
//! broker outside tests; it exists so tests can make commits fail at a chosen point (the n-th
//! `write` or `sync_data`, or every one from now on) and then heal, the way a full disk or a
//! failing device would.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::open::BackendFactory;

/// Which backend calls a plan counts and fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOn {
    /// `write` calls (page writes, including the commit's header write).
    Write,
    /// `sync_data` calls (one or two per durable commit).
    Sync,
    /// `write`, `sync_data` and `set_len` (growing the file).
    AnyWrite,
}

/// The backend call being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Write,
    Sync,
    SetLen,
}

#[derive(Clone, Copy, Debug)]
enum Rule {
    Pass,
    /// Fail the call that brings the count of matching calls (since the rule was set) to `n`.
    Nth {
        on: FaultOn,
        n: u64,
        seen: u64,
    },
    /// Fail every matching call.
    Always {
        on: FaultOn,
    },
}

#[derive(Debug)]
struct PlanState {
    rule: Rule,
    kind: io::ErrorKind,
    injected: u64,
}

/// A shared, changeable plan of which calls fail. Clone it to keep a handle in the test while
/// the store owns the backend.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultPlan {
    /// A plan that fails nothing.
    pub fn new() -> Self {
        FaultPlan {
            state: Arc::new(Mutex::new(PlanState {
                rule: Rule::Pass,
                kind: io::ErrorKind::Other,
                injected: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        // A test that panicked while holding the lock poisons it; the plan is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fail the `n`-th matching call from now on (1 = the next one), once, with `kind`
    /// (`StorageFull` for a full disk, anything else for an I/O error).
    pub fn fail_nth(&self, on: FaultOn, n: u64, kind: io::ErrorKind) {
        let mut s = self.lock();
        s.rule = Rule::Nth { on, n, seen: 0 };
        s.kind = kind;
    }

    /// Fail every matching call from now on with `kind`.
    pub fn fail_always(&self, on: FaultOn, kind: io::ErrorKind) {
        let mut s = self.lock();
        s.rule = Rule::Always { on };
        s.kind = kind;
    }

    /// Let every call succeed again.
    pub fn heal(&self) {
        self.lock().rule = Rule::Pass;
    }

    /// How many calls this plan has failed so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// A backend factory for [`crate::StoreOptions::backend`]: opens (creating) the file and
    /// wraps redb's `FileBackend` in a [`FaultyBackend`] that follows this plan.
    pub fn factory(&self) -> BackendFactory {
        let plan = self.clone();
        Arc::new(move |path: &Path| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            Ok(
                Box::new(FaultyBackend::new(FileBackend::new(file), plan.clone()))
                    as Box<dyn StorageBackend>,
            )
        })
    }

    /// Decides one call: `Err` when the plan fails it.
    fn check(&self, call: Call) -> Result<(), BackendError> {
        let mut s = self.lock();
        let matches = |on: FaultOn| match on {
            FaultOn::Write => call == Call::Write,
            FaultOn::Sync => call == Call::Sync,
            FaultOn::AnyWrite => true,
        };
        let fail = match &mut s.rule {
            Rule::Pass => false,
            Rule::Always { on } => matches(*on),
            Rule::Nth { on, n, seen } => {
                if matches(*on) {
                    *seen += 1;
                    *seen == *n
                } else {
                    false
                }
            }
        };
        if !fail {
            return Ok(());
        }
        s.injected += 1;
        let kind = s.kind;
        Err(BackendError::Io(io::Error::new(
            kind,
            format!("injected {call:?} fault ({kind})"),
        )))
    }
}

/// redb's `FileBackend` with failures injected by a [`FaultPlan`]. Reads, length queries and
/// the lock methods always pass through, so locking behaves as with the plain file.
pub struct FaultyBackend {
    inner: FileBackend,
    plan: FaultPlan,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    pub fn new(inner: FileBackend, plan: FaultPlan) -> Self {
        FaultyBackend { inner, plan }
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, BackendError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        // Shrinking never fails on a full disk; only growth is a write.
        if len > self.inner.len()? {
            self.plan.check(Call::SetLen)?;
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.plan.check(Call::Sync)?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.plan.check(Call::Write)?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendError> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
