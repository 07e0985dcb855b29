//! RingMQ persistence: the records the broker stores and their byte encoding. (The store, its
//! writer thread and recovery follow.)

#![forbid(unsafe_code)]

pub mod record;
pub mod types;

pub use record::DecodeError;
pub use types::{
    AwaitRelRecord, Batch, Completion, EntryRecord, EntryState, FailureKind, MessageRecord, MsgId,
    Notify, Op, SessionRecord, SubRecord, WillRecord,
};
