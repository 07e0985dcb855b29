//! The records RingMQ persists and the operations the broker sends to the writer.
//!
//! Owns: the plain-data shapes of everything stored (sessions, subscriptions, queued entries,
//! messages, QoS 2 packet ids awaiting PUBREL, retained messages), the [`Op`] and [`Batch`] a
//! shard sends, and the [`Completion`] it gets back. Must never: know the MQTT codec (property
//! blocks are opaque bytes the broker encodes), or carry anything that is not plain data.

use std::sync::Arc;

use bytes::Bytes;

/// A message id chosen by the broker, unique over the life of the store (the broker starts
/// numbering above [`crate::Recovered::max_msg_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub u64);

/// A persistent session: what must survive a restart besides its subscriptions and queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Protocol level of the last CONNECT (3, 4 or 5); stored as given.
    pub protocol: u8,
    /// Session Expiry Interval in seconds (MQTT v5 3.1.2.11.2; `u32::MAX` never expires).
    pub expiry_secs: u32,
    /// Whether a connection held the session at the last write. After a crash this says the
    /// client was connected when the broker died: its expiry starts at the restart.
    pub connected: bool,
    /// Wall clock (ms since the UNIX epoch) at which an offline session ends.
    pub expires_at_ms: Option<u64>,
    /// The Will Message still to publish, if any.
    pub will: Option<WillRecord>,
    /// Wall clock (ms since the UNIX epoch) at which the will is due (Will Delay Interval).
    pub will_due_ms: Option<u64>,
}

/// A Will Message (MQTT v5 3.1.3.2) as stored with its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WillRecord {
    /// UTF-8 topic name bytes.
    pub topic: Bytes,
    pub payload: Bytes,
    /// 0, 1 or 2; the decoder rejects anything else.
    pub qos: u8,
    pub retain: bool,
    pub delay_secs: u32,
    /// Opaque MQTT v5 property block, encoded and decoded by the broker.
    pub properties: Bytes,
}

/// One subscription of a session (the filter is the row's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubRecord {
    /// MQTT v5 subscription options byte (QoS, No Local, Retain As Published, Retain Handling).
    pub options: u8,
    /// Subscription Identifier (MQTT v5 3.8.2.1.2), if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// A message body, stored once however many queues reference it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    /// UTF-8 topic name bytes.
    pub topic: Bytes,
    pub payload: Bytes,
    /// 0, 1 or 2; the decoder rejects anything else.
    pub qos: u8,
    pub retain: bool,
    /// Wall clock (ms since the UNIX epoch) at which the message expires (Message Expiry Interval).
    pub expires_at_ms: Option<u64>,
    /// Opaque MQTT v5 property block, encoded and decoded by the broker.
    pub properties: Bytes,
}

/// Where a queued outgoing message stands in its QoS flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Not sent yet (offline queue, or inflight window full).
    Queued,
    /// PUBLISH sent with this packet id; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent { packet_id: u16 },
    /// QoS 2: PUBREC received, PUBREL sent with this packet id; waiting for PUBCOMP.
    Released { packet_id: u16 },
}

/// One outgoing message in a session's queue, keyed by the session's sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    /// The message body (a row of `msgs`); holds one reference on it.
    pub msg: MsgId,
    /// Delivery QoS for this subscriber (0, 1 or 2).
    pub qos: u8,
    /// Retain flag as it is to be delivered (Retain As Published).
    pub retain: bool,
    /// Subscription Identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    pub state: EntryState,
}

/// An incoming QoS 2 packet id for which PUBREC was sent and PUBREL is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwaitRelRecord {
    /// The message held until PUBREL, when the broker delays delivery until then; holds one
    /// reference on it.
    pub msg: Option<MsgId>,
}

/// One change to the store. `client` is the client id, `filter` and `topic` UTF-8 bytes.
///
/// Within one [`Batch`] and across batches of one source, ops apply in order. Ops on different
/// keys commute, so the writer folds all ops of a transaction by key before writing (see
/// `storage/DESIGN.md`, "Folding").
#[derive(Clone, Debug)]
pub enum Op {
    PutSession {
        client: Bytes,
        record: SessionRecord,
    },
    /// The session row and ALL its subs, entries and await-rel rows, releasing their message
    /// references.
    RemoveSession {
        client: Bytes,
    },
    PutSub {
        client: Bytes,
        filter: Bytes,
        record: SubRecord,
    },
    RemoveSub {
        client: Bytes,
        filter: Bytes,
    },
    /// Makes the body of `id` available to the references of this transaction. Idempotent:
    /// writes nothing when the message is already stored, and nothing at all when no reference
    /// to it exists at the end of the transaction. Send it in every batch that adds a reference
    /// (it costs one `Arc` clone): a batch is never split, but two batches may land in different
    /// transactions.
    PutMessage {
        id: MsgId,
        record: Arc<MessageRecord>,
    },
    /// Adds one reference on `record.msg` (and drops the one of a row it replaces).
    PutEntry {
        client: Bytes,
        seq: u64,
        record: EntryRecord,
    },
    /// Changes the state of an existing entry; no effect when the entry does not exist.
    SetEntryState {
        client: Bytes,
        seq: u64,
        state: EntryState,
    },
    /// Drops the entry's reference on its message.
    RemoveEntry {
        client: Bytes,
        seq: u64,
    },
    /// Adds one reference when `record.msg` is set.
    PutAwaitRel {
        client: Bytes,
        packet_id: u16,
        record: AwaitRelRecord,
    },
    /// Drops the reference the row held, if any.
    RemoveAwaitRel {
        client: Bytes,
        packet_id: u16,
    },
    PutRetained {
        topic: Bytes,
        record: MessageRecord,
    },
    RemoveRetained {
        topic: Bytes,
    },
    /// Shard `shard` has yet to store its part of the fan-out of message `msg` (one
    /// reference on it): written with the publisher's inbound QoS 2 id, removed by that
    /// shard in the same batch as its own copies. A row found at open names a fan-out a
    /// crash cut short, for the broker to finish.
    PutFanout {
        msg: MsgId,
        shard: u8,
    },
    RemoveFanout {
        msg: MsgId,
        shard: u8,
    },
}

/// The ops one shard (`source`) wants durable together. A batch is never split over two
/// transactions: all its ops commit, or none do.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Shard index, `< sources` given to [`crate::Store::start_writer`].
    pub source: usize,
    /// Increasing per source; [`Completion::Committed`] answers with the highest durable one.
    pub ticket: u64,
    pub ops: Vec<Op>,
}

/// The writer's answer to a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Every batch of this source with a ticket `<=` this one is durable, including batches
    /// earlier answered [`Completion::Failed`] (the writer retried them).
    Committed { ticket: u64 },
    /// The batch with this ticket is not durable: its transaction failed. The writer keeps its
    /// ops and retries them; a later `Committed` with a ticket `>=` this one means they landed.
    Failed { ticket: u64, kind: FailureKind },
}

/// Why a commit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The file system is full (ENOSPC, EDQUOT).
    DiskFull,
    /// Any other I/O error, or damage found while writing.
    Io,
}

/// Wakes a shard after completions were sent to it. Called from the writer thread, once per
/// source per transaction, after that source's completion is in its channel.
pub trait Notify: Send + Sync + 'static {
    fn notify(&self, source: usize);
}

impl<F: Fn(usize) + Send + Sync + 'static> Notify for F {
    fn notify(&self, source: usize) {
        self(source);
    }
}
