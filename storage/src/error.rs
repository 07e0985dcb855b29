//! Errors, one enum per operation (open, send, stop, stats), and the one place where redb's
//! errors are sorted into them.
//!
//! Owns: what each failure means to the broker and how it reads to an operator (every open
//! error names the file and the problem in plain words). Must never: retry, log or decide
//! policy; callers do.

use std::io;
use std::path::PathBuf;

use crate::types::{Batch, FailureKind};

/// Why [`crate::Store::open`] failed. The broker cannot start on this store; the message says
/// what an operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or file cannot be created, read or written (permissions, read-only or full
    /// file system, missing device).
    #[error("cannot use storage file {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Another process (or another `Store` in this one) has the file open.
    #[error(
        "storage file {} is in use by another RingMQ process (or another store in this one)",
        .path.display()
    )]
    Locked { path: PathBuf },
    /// The file is damaged, truncated, or not a RingMQ store.
    #[error("storage file {} is damaged or not a RingMQ store: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The file was written with another RingMQ store format.
    #[error(
        "storage file {} has store format version {found}, this build reads version {supported}",
        .path.display()
    )]
    Version {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The file uses an older redb file format that redb must upgrade first.
    #[error(
        "storage file {} uses redb file format {found}, older than this build reads; \
         upgrade it with redb's upgrade procedure first",
        .path.display()
    )]
    EngineUpgrade { path: PathBuf, found: u8 },
}

/// Why [`crate::WriterHandle::send`] refused a batch; the batch comes back unsent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("batch source {} is not below the writer's {sources} sources", .batch.source)]
    BadSource { batch: Batch, sources: usize },
    /// The writer thread has ended (stopped, or it panicked).
    #[error("the storage writer has stopped")]
    Stopped { batch: Batch },
}

/// Why [`crate::WriterHandle::stop`] could not leave everything sent durable.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The last commit failed: `ops` ops answered `Failed` are not on disk.
    #[error("storage stopped with {ops} ops not durable: {kind:?}")]
    NotDurable { ops: usize, kind: FailureKind },
    /// The writer thread panicked; nothing after its last `Committed` is known to be durable.
    #[error("the storage writer thread panicked")]
    Panicked,
}

/// Why [`crate::Store::counts`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot read the storage file: {0}")]
    Read(#[from] redb::Error),
}

/// How the open path sorts a redb error. `Corrupted`, `InvalidData` and `UnexpectedEof` (a
/// short read of a truncated file) mean the bytes are bad; the lock errors mean someone else
/// holds the file; everything else is the system's I/O failing.
pub(crate) fn open_error(path: &std::path::Path, err: impl Into<redb::Error>) -> OpenError {
    let path = path.to_path_buf();
    let err: redb::Error = err.into();
    match err {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            OpenError::Locked { path }
        }
        redb::Error::UpgradeRequired(found) => OpenError::EngineUpgrade { path, found },
        redb::Error::Corrupted(detail) => OpenError::Corrupt { path, detail },
        redb::Error::Io(source)
            if matches!(
                source.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenError::Corrupt {
                path,
                detail: source.to_string(),
            }
        }
        redb::Error::Io(source) => OpenError::Io { path, source },
        redb::Error::TableTypeMismatch(_)
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged(_) => OpenError::Corrupt {
            path,
            detail: format!("unexpected table layout: {err}"),
        },
        // redb's error enum is non_exhaustive; the rest (repair aborted, a previous I/O error,
        // backend errors) are the file's I/O failing, and say so in their own words.
        other => OpenError::Io {
            path,
            source: io::Error::other(other.to_string()),
        },
    }
}

/// How the writer sorts a failed transaction for the broker.
pub(crate) fn failure_kind(err: &redb::Error) -> FailureKind {
    match err {
        redb::Error::Io(e) if is_disk_full(e) => FailureKind::DiskFull,
        _ => FailureKind::Io,
    }
}

pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// A panic payload as text, for `Corrupt` details and writer failures.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    }
}
