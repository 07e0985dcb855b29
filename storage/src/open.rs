//! Opening a store: the file, redb's settings, locking, and containing redb's panics.
//!
//! Owns: [`Store`] (an open, recovered database not yet handed to a writer), [`StoreOptions`],
//! and the single function that opens redb, used at start and by the writer when it reopens
//! after a failed commit. Must never: let a panic from redb escape (a debug build of redb panics
//! on some damaged files; that is `OpenError::Corrupt` here), or write records (recovery and
//! the writer do).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, ReadableDatabase, ReadableTableMetadata};
use redb::{StorageBackend, TableDefinition};

use crate::error::{OpenError, StatsError, open_error, panic_text};
use crate::recover::{Recovered, recover};
use crate::schema::{self, FILE_NAME};

/// Makes the redb backend for the store's file. The default is redb's `FileBackend` on the
/// file opened read-write (created if missing); tests put a [`crate::fault::FaultyBackend`]
/// here. Called again each time the writer reopens the database.
pub type BackendFactory =
    Arc<dyn Fn(&Path) -> io::Result<Box<dyn StorageBackend>> + Send + Sync + 'static>;

/// Default redb page cache. redb's own default is 1 GiB; the broker's memory belongs to
/// sessions. Recovery reads every table once, in key order, so it gains little from a cache
/// larger than the tree's branch pages.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// How to open a store.
#[derive(Clone)]
pub struct StoreOptions {
    /// redb's page cache, in bytes. Default [`DEFAULT_CACHE_BYTES`].
    pub cache_bytes: usize,
    /// Verify the checksum of every page at open (redb's integrity check), so that damage done
    /// to a file after it was written is `OpenError::Corrupt` at start rather than a failure
    /// when the damaged page is read. A crash leaves a file redb repairs at open whatever this
    /// says. Default `true`: it added 0.05-0.25 s to the 0.5 s recovery of a 136 MiB store
    /// (`storage/DESIGN.md`). The writer's reopen after a failed commit never verifies.
    pub verify_on_open: bool,
    /// Backend factory; `None` for redb's `FileBackend` on the file.
    pub backend: Option<BackendFactory>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            verify_on_open: false,
            backend: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("cache_bytes", &self.cache_bytes)
            .field("verify_on_open", &self.verify_on_open)
            .field("backend", &self.backend.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// References per message id. Rebuilt at open from every entry and await-rel row (a million
/// increments for a million entries), hence a fast hasher; the keys are the broker's own ids.
pub(crate) type RefCounts = foldhash::HashMap<u64, u32>;

/// An open, recovered store. Hand it to [`Store::start_writer`]; until then it can be read
/// ([`Store::counts`]) and dropped (which closes the file).
pub struct Store {
    pub(crate) db: Db,
    pub(crate) path: PathBuf,
    pub(crate) options: StoreOptions,
    /// References per message id (entries + await-rel rows), as of the last commit.
    pub(crate) refs: RefCounts,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("referenced_messages", &self.refs.len())
            .finish_non_exhaustive()
    }
}

/// Rows per table, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    pub sessions: u64,
    pub subs: u64,
    pub entries: u64,
    pub await_rel: u64,
    pub msgs: u64,
    pub retained: u64,
}

impl Store {
    /// Opens (creating if missing) the store in `dir`, repairs it if the last run crashed,
    /// checks its format version, reads everything into [`Recovered`] and garbage-collects
    /// messages nobody references. The file is `dir/ringmq.redb`, locked for this `Store` (and
    /// the writer it becomes) until dropped.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<(Store, Recovered), OpenError> {
        fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let opened = contain_panics(&path, || {
            let db = Db(Some(open_database(&path, options)?));
            let (recovered, refs) = recover(&db, &path)?;
            Ok((db, recovered, refs))
        })?;
        let (db, recovered, refs) = opened;
        Ok((
            Store {
                db,
                path,
                options: options.clone(),
                refs,
            },
            recovered,
        ))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts the rows of every table.
    pub fn counts(&self) -> Result<TableCounts, StatsError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        fn len<K: redb::Key + 'static>(
            txn: &redb::ReadTransaction,
            def: TableDefinition<K, &[u8]>,
        ) -> Result<u64, StatsError> {
            let table = txn.open_table(def).map_err(redb::Error::from)?;
            Ok(table.len()?)
        }
        Ok(TableCounts {
            sessions: len(&txn, schema::SESSIONS)?,
            subs: len(&txn, schema::SUBS)?,
            entries: len(&txn, schema::ENTRIES)?,
            await_rel: len(&txn, schema::AWAIT_REL)?,
            msgs: len(&txn, schema::MSGS)?,
            retained: len(&txn, schema::RETAINED)?,
        })
    }
}

impl From<redb::StorageError> for StatsError {
    fn from(e: redb::StorageError) -> Self {
        StatsError::Read(e.into())
    }
}

/// redb's database, closed inside `catch_unwind`: redb finishes its last transaction when
/// the database is dropped, and on a damaged file that it opened without noticing the damage
/// (`verify_on_open` off), that transaction can stop on an internal check. A store must never
/// turn that into a panic at shutdown (or an abort, when the drop runs while a contained
/// panic unwinds). The file's lock goes with the rest of the database either way.
pub(crate) struct Db(pub(crate) Option<Database>);

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        // `None` only inside `drop`.
        self.0
            .as_ref()
            .expect("the database is present until the store is dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            // The panic hook has printed the panic; nothing else is left to do with the file.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
        }
    }
}

/// Runs `f`, turning a panic inside it (redb's debug checks on damaged files) into
/// `OpenError::Corrupt`. The panic hook still prints the panic; the caller gets an error.
pub(crate) fn contain_panics<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, OpenError>,
) -> Result<T, OpenError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "the storage engine stopped on damaged data: {}",
                panic_text(&*payload)
            ),
        })
    })
}

/// Opens redb on `path` with the store's settings; redb repairs a crashed file here.
pub(crate) fn open_database(path: &Path, options: &StoreOptions) -> Result<Database, OpenError> {
    let backend: Box<dyn StorageBackend> = match &options.backend {
        Some(factory) => factory(path),
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(|file| Box::new(FileBackend::new(file)) as Box<dyn StorageBackend>),
    }
    .map_err(|source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut builder = Builder::new();
    builder.set_cache_size(options.cache_bytes);
    builder.set_check_integrity_on_open(options.verify_on_open);
    builder
        .create_with_backend(DynBackend(backend))
        .map_err(|e| open_error(path, e))
}

/// A boxed backend as a backend (redb takes `impl StorageBackend`). Every method delegates,
/// the lock methods included, so the inner backend's locking applies.
#[derive(Debug)]
struct DynBackend(Box<dyn StorageBackend>);

impl StorageBackend for DynBackend {
    fn len(&self) -> Result<u64, BackendError> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), BackendError> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), BackendError> {
        self.0.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
