//! RingMQ persistence: one redb file per broker, one writer thread with group commit, and
//! recovery at open.
//!
//! ```text
//! shards --Batch{source, ticket, ops}--> WriterHandle (unbounded queue, never blocks)
//!                                             |
//!                          writer thread: fold queued ops by key (Pending), one redb write
//!                          transaction, commit with Durability::Immediate
//!                                             |
//! shards <--Completion::Committed{ticket}-- per-source channels, then Notify::notify(source)
//! ```
//!
//! Start: [`Store::open`] creates or opens `dir/ringmq.redb`, repairs it after a crash, checks
//! the format version, and returns everything stored as [`Recovered`]. Then
//! [`Store::start_writer`] hands the database to the writer thread. The broker acknowledges a
//! QoS 1/2 message only after the `Committed` that covers the batch carrying it.
//!
//! This crate knows nothing of MQTT encoding: records are plain data, property blocks opaque
//! bytes. The on-disk format is described in `storage/DESIGN.md`.
//!
//! Modules: [`types`] (records, ops, completions), [`record`] (their byte encoding), `schema`
//! (tables), `open` and `recover` (start), `pending` and `flush` (what a transaction writes),
//! `writer` (the thread), [`fault`] (test support: a backend that fails on command).

#![forbid(unsafe_code)]

pub mod fault;
pub mod record;
pub mod types;

mod error;
mod flush;
mod open;
mod pending;
mod recover;
mod schema;
mod writer;

pub use error::{OpenError, SendError, StatsError, StopError};
pub use open::{BackendFactory, DEFAULT_CACHE_BYTES, Store, StoreOptions, TableCounts};
pub use record::DecodeError;
pub use recover::{Recovered, RecoveredSession, Repairs};
pub use schema::{FILE_NAME, FORMAT_VERSION};
pub use types::{
    AwaitRelRecord, Batch, Completion, EntryRecord, EntryState, FailureKind, MessageRecord, MsgId,
    Notify, Op, SessionRecord, SubRecord, WillRecord,
};
pub use writer::{
    BatchSender, DEFAULT_MAX_TXN_OPS, Durability, HEARTBEAT, RETRY_INTERVAL, WriterHandle,
    WriterOptions, WriterStats,
};
