//! The shard's side of storage: turning persistent sessions' `Change`s (and retained
//! updates) into storage operations, sending them to the writer thread once per turn as
//! one numbered batch (a ticket), and releasing what waited for a commit when the writer
//! answers.
//!
//! Owns: the current batch, the ticket numbers, what waits for each ticket (`Waiter`: a
//! held acknowledgement on one of this shard's connections, or an answer another shard
//! waits for), message ids, and the conversion of broker values to storage records
//! (broker-clock times to wall-clock times, v5 properties to the codec's property blocks).
//!
//! Ordering: a batch is sent before the shard's outboxes are flushed in the same turn, and
//! the writer takes batches from every shard in one FIFO: whatever another shard stores
//! because of an envelope from this one is committed in the same transaction as this
//! shard's batch or a later one.
//!
//! Must never: let an acknowledgement out before the commit it waits for (`durability =
//! "sync"`), store anything for traffic that needs no storage (QoS 0, sessions without
//! expiry), or block: a writer that falls behind makes the shard stop reading its clients
//! (`Persist::backlogged`), never wait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use crossbeam_channel::Receiver;
use ringmq_storage as storage;

use super::close::CloseReason;
use super::core::Core;
use super::hold::HoldKey;
use super::ids::ClientSlot;
use super::mailbox::Envelope;
use crate::codec::{self, ReasonCode};
use crate::log;
use crate::metrics::Histogram;
use crate::router::interest::ShardId;
use crate::session::{Change, Header, Message};

/// Storage operations a shard may have sent and not seen committed before it stops reading
/// its clients: about a tenth of a second of writes at the rates measured here (a commit of
/// 1024 records takes ~1.2 ms), far below what would make acknowledgements late.
const MAX_UNCOMMITTED_OPS: usize = 200_000;

/// Bits of a message id that number messages within a shard; the top bits are the shard.
const MSG_COUNTER_BITS: u32 = 58;

/// The highest per-shard number among message ids `ids` (the ids a store holds). Every
/// shard numbers its new messages above it: the highest id alone would not do, as it
/// belongs to the highest shard, and a lower shard may have numbered further (and may
/// still hold messages under those numbers).
pub(crate) fn highest_msg_counter(ids: impl IntoIterator<Item = u64>) -> u64 {
    ids.into_iter()
        .map(|id| id & ((1 << MSG_COUNTER_BITS) - 1))
        .max()
        .unwrap_or(0)
}

/// What happens when a ticket commits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Waiter {
    /// Output held on one of this shard's connections.
    Hold(HoldKey),
    /// Another shard holds an acknowledgement until this shard's part is durable.
    Reply { to: ShardId, hold: HoldKey },
}

/// How acknowledgements relate to commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Nothing is stored (`--in-memory`).
    Off,
    /// An acknowledgement waits for the commit that makes its message durable.
    Sync,
    /// Acknowledgements leave at once; the writer commits on an interval (a crash loses at
    /// most that interval).
    Relaxed,
}

/// One shard's storage pipeline.
#[derive(Debug)]
pub(crate) struct Persist {
    mode: Mode,
    writer: Option<storage::BatchSender>,
    completions: Option<Receiver<storage::Completion>>,
    /// Operations of this turn, sent at its end under `ticket`.
    batch: Vec<storage::Op>,
    /// The ticket the current batch will be sent under (tickets start at 1).
    ticket: u64,
    /// Operations produced so far (never decreases): callers compare it before and after a
    /// step to learn whether the step stored anything.
    produced: u64,
    /// Tickets sent and not answered yet, with their sizes and when they were sent.
    in_flight: VecDeque<(u64, usize, Instant)>,
    /// From sending a ticket to its answer (committed or failed).
    commit_latency: Histogram,
    /// Tickets whose commit failed.
    failed_batches: u64,
    uncommitted_ops: usize,
    /// What waits for each ticket, in ticket order.
    waiters: VecDeque<(u64, Waiter)>,
    /// The next message id this shard hands out.
    next_msg_id: u64,
    /// The message id written by the last `PutMessage` (a message delivered to many
    /// sessions of this shard is put once per turn).
    last_put: u64,
    /// Wall-clock milliseconds at broker-clock 0.
    wall_epoch_ms: u64,
}

impl Persist {
    /// The pipeline of a broker that stores nothing.
    pub(crate) fn off(wall_epoch_ms: u64) -> Persist {
        Persist::new(Mode::Off, None, None, 0, 0, wall_epoch_ms)
    }

    pub(crate) fn new(
        mode: Mode,
        writer: Option<storage::BatchSender>,
        completions: Option<Receiver<storage::Completion>>,
        shard: usize,
        msg_counter: u64,
        wall_epoch_ms: u64,
    ) -> Persist {
        let counter = msg_counter + 1;
        Persist {
            mode,
            writer,
            completions,
            batch: Vec::new(),
            ticket: 1,
            produced: 0,
            in_flight: VecDeque::new(),
            commit_latency: Histogram::default(),
            failed_batches: 0,
            uncommitted_ops: 0,
            waiters: VecDeque::new(),
            next_msg_id: (shard as u64) << MSG_COUNTER_BITS | counter,
            last_put: 0,
            wall_epoch_ms,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Whether acknowledgements wait for commits.
    pub(crate) fn waits(&self) -> bool {
        self.mode == Mode::Sync
    }

    /// Whether the store can take durable work now (false while the writer fails commits:
    /// durable publishes are refused then, so what waits to be retried stays bounded).
    pub(crate) fn healthy(&self) -> bool {
        self.writer.as_ref().is_none_or(|w| w.healthy())
    }

    pub(crate) fn produced(&self) -> u64 {
        self.produced
    }

    fn push(&mut self, op: storage::Op) {
        if self.enabled() {
            self.batch.push(op);
            self.produced += 1;
        }
    }

    /// A fresh id for a message this shard stores first.
    pub(crate) fn new_msg_id(&mut self) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        id
    }

    /// Registers `waiter` on the current ticket. Returns false when there is nothing to
    /// wait for (storage off or relaxed): the caller proceeds at once.
    pub(crate) fn wait(&mut self, waiter: Waiter) -> bool {
        if !self.waits() {
            return false;
        }
        self.waiters.push_back((self.ticket, waiter));
        true
    }

    /// The ticket the current batch goes under.
    pub(crate) fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Sends this turn's batch (if any) to the writer.
    pub(crate) fn end_turn(&mut self, shard: ShardId) {
        if self.batch.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.batch);
        self.last_put = 0;
        let n = ops.len();
        let batch = storage::Batch {
            source: shard.index(),
            ticket: self.ticket,
            ops,
        };
        if let Some(writer) = &self.writer
            && writer.send(batch).is_err()
        {
            log!(
                ERROR,
                Some(shard.index() as u16),
                "the storage writer is gone"
            );
        }
        self.in_flight.push_back((self.ticket, n, Instant::now()));
        self.uncommitted_ops += n;
        self.ticket += 1;
    }

    /// Too much sent and not committed: stop reading clients until the writer catches up.
    pub(crate) fn backlogged(&self) -> bool {
        self.uncommitted_ops > MAX_UNCOMMITTED_OPS
    }

    /// Whether operations wait to be sent at the end of a turn.
    pub(crate) fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Whether the writer has answered something not handled yet.
    pub(crate) fn has_completions(&self) -> bool {
        self.completions.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Tickets sent and not answered.
    pub(crate) fn pending(&self) -> usize {
        self.in_flight.len()
    }

    pub(crate) fn commit_latency(&self) -> &Histogram {
        &self.commit_latency
    }

    pub(crate) fn failed_batches(&self) -> u64 {
        self.failed_batches
    }

    /// Answers from the writer, in order; the ticket each settles and whether it failed.
    fn next_completion(&mut self) -> Option<(u64, Option<storage::FailureKind>)> {
        let c = self.completions.as_ref()?.try_recv().ok()?;
        let (ticket, failure) = match c {
            storage::Completion::Committed { ticket } => (ticket, None),
            storage::Completion::Failed { ticket, kind } => (ticket, Some(kind)),
        };
        let now = Instant::now();
        while self.in_flight.front().is_some_and(|(t, ..)| *t <= ticket) {
            if let Some((_, n, sent)) = self.in_flight.pop_front() {
                self.uncommitted_ops -= n;
                self.commit_latency
                    .observe(now.saturating_duration_since(sent));
                self.failed_batches += u64::from(failure.is_some());
            }
        }
        Some((ticket, failure))
    }

    /// The waiters settled by `ticket`, oldest first.
    fn settled(&mut self, ticket: u64) -> Vec<Waiter> {
        let mut out = Vec::new();
        while self.waiters.front().is_some_and(|(t, _)| *t <= ticket) {
            if let Some((_, w)) = self.waiters.pop_front() {
                out.push(w);
            }
        }
        out
    }

    fn wall(&self, broker_ms: u64) -> u64 {
        broker_ms.saturating_add(self.wall_epoch_ms)
    }

    /// A message as storage keeps it.
    pub(crate) fn message_record(&self, m: &Message) -> storage::MessageRecord {
        let mut properties = BytesMut::new();
        codec::encode_publish_properties(&m.properties, &mut properties);
        storage::MessageRecord {
            topic: m.topic.as_shared().clone(),
            payload: m.payload.clone(),
            qos: m.qos as u8,
            retain: m.retain,
            expires_at_ms: m.expires_at_ms.map(|t| self.wall(t)),
            properties: properties.freeze(),
        }
    }

    /// A session header as storage keeps it.
    fn session_record(&self, h: &Header<'_>) -> storage::SessionRecord {
        let will = h.will.map(|w| {
            let mut properties = BytesMut::new();
            codec::encode_will_properties(&w.properties, &mut properties);
            storage::WillRecord {
                topic: w.topic.as_shared().clone(),
                payload: w.payload.clone(),
                qos: w.qos as u8,
                retain: w.retain,
                delay_secs: h.will_delay_secs,
                properties: properties.freeze(),
            }
        });
        storage::SessionRecord {
            protocol: h.protocol.map_or(4, |p| p.level()),
            expiry_secs: h.expiry_secs,
            connected: h.connected,
            expires_at_ms: h.expires_at_ms.map(|t| self.wall(t)),
            will,
            will_due_ms: h.will_due_ms.map(|t| self.wall(t)),
        }
    }
}

/// Whether the output a change comes with must wait for its commit: acknowledgements of
/// durable state do (CONNACK of a stored session, SUBACK, UNSUBACK, PUBREC, PUBCOMP,
/// PUBREL, and a QoS 2 PUBLISH whose packet id the client may keep); a QoS 1 delivery need
/// not: sent at once, a crash that loses it also loses the publisher's acknowledgement (the
/// publisher sends it again); sent from the stored queue, a crash that loses only its packet
/// id leaves it queued, and it goes out again under a new one, a duplicate QoS 1 allows
/// [MQTT-4.3.2]. Waiting there would gate every refill of the client's window on a commit.
fn output_waits(change: &Change) -> bool {
    match change {
        Change::Header
        | Change::Removed
        | Change::Subscribed { .. }
        | Change::Unsubscribed { .. }
        | Change::Released { .. }
        | Change::AwaitingRel { .. }
        | Change::RelReceived { .. } => true,
        Change::Enqueued { qos, packet_id, .. } => {
            packet_id.is_some() && *qos == codec::QoS::ExactlyOnce
        }
        Change::Sent { qos, packet_id, .. } => {
            packet_id.is_some() && *qos == codec::QoS::ExactlyOnce
        }
        Change::Completed { .. } => false,
    }
}

impl Core {
    /// Stores one change of client `slot`'s session. `hold_from`: where in the client's
    /// connection output the call that made the change began writing; output from there on
    /// waits for the commit when the change requires it.
    pub(crate) fn persist_change(
        &mut self,
        slot: ClientSlot,
        change: Change,
        hold_from: Option<usize>,
    ) {
        if !self.persist.enabled() {
            return;
        }
        let Some(client) = self.clients.get(slot) else {
            return;
        };
        let key = client
            .session
            .client_id()
            .as_mqtt_str()
            .as_bytes_shared()
            .clone();
        let waits = output_waits(&change);
        let op = match change {
            Change::Header => {
                let header = client.session.header();
                storage::Op::PutSession {
                    client: key,
                    record: self.persist.session_record(&header),
                }
            }
            Change::Removed => storage::Op::RemoveSession { client: key },
            Change::Subscribed { filter, sub } => storage::Op::PutSub {
                client: key,
                filter: filter.as_shared().clone(),
                record: storage::SubRecord {
                    options: sub.options.to_byte(),
                    id: sub.id,
                },
            },
            Change::Unsubscribed { filter } => storage::Op::RemoveSub {
                client: key,
                filter: filter.as_shared().clone(),
            },
            Change::Enqueued {
                seq,
                message,
                qos,
                retain,
                subscription_ids,
                packet_id,
            } => {
                let msg = self.put_message(&message);
                let state = match packet_id {
                    Some(id) => storage::EntryState::Sent {
                        packet_id: id.0.get(),
                    },
                    None => storage::EntryState::Queued,
                };
                storage::Op::PutEntry {
                    client: key,
                    seq,
                    record: storage::EntryRecord {
                        msg: storage::MsgId(msg),
                        qos: qos as u8,
                        retain,
                        sub_ids: subscription_ids,
                        state,
                    },
                }
            }
            Change::Sent { seq, packet_id, .. } => storage::Op::SetEntryState {
                client: key,
                seq,
                state: match packet_id {
                    Some(id) => storage::EntryState::Sent {
                        packet_id: id.0.get(),
                    },
                    None => storage::EntryState::Queued,
                },
            },
            Change::Released { seq, packet_id } => storage::Op::SetEntryState {
                client: key,
                seq,
                state: storage::EntryState::Released {
                    packet_id: packet_id.0.get(),
                },
            },
            Change::Completed { seq } => storage::Op::RemoveEntry { client: key, seq },
            Change::AwaitingRel { packet_id } => storage::Op::PutAwaitRel {
                client: key,
                packet_id: packet_id.0.get(),
                record: storage::AwaitRelRecord { msg: None },
            },
            Change::RelReceived { packet_id } => storage::Op::RemoveAwaitRel {
                client: key,
                packet_id: packet_id.0.get(),
            },
        };
        self.persist.push(op);
        if waits && let Some(offset) = hold_from {
            self.hold_client_for_commit(slot, offset);
        }
    }

    /// Puts `message` in this turn's batch (once per turn per message) and returns its id.
    pub(crate) fn put_message(&mut self, message: &Message) -> u64 {
        let id = match message.store_id {
            0 => self.persist.new_msg_id(),
            id => id,
        };
        if self.persist.last_put != id {
            let record = Arc::new(self.persist.message_record(message));
            self.persist.push(storage::Op::PutMessage {
                id: storage::MsgId(id),
                record,
            });
            self.persist.last_put = id;
        }
        id
    }

    /// Stores (or, for an empty payload, removes) a retained message: the owner shard of its
    /// topic does this, once per update.
    pub(crate) fn persist_retained(&mut self, message: &Message) {
        if message.topic.as_bytes().starts_with(b"$SYS/") {
            return; // The broker's own figures: made again after a restart, never stored.
        }
        let topic = message.topic.as_shared().clone();
        let op = if message.payload.is_empty() {
            storage::Op::RemoveRetained { topic }
        } else {
            storage::Op::PutRetained {
                topic,
                record: self.persist.message_record(message),
            }
        };
        self.persist.push(op);
    }

    /// Adds (`put`) or removes the record that `shard` has yet to store its part of message
    /// `msg` (see `Core::fanout_part`).
    pub(crate) fn persist_fanout(&mut self, msg: u64, shard: ShardId, put: bool) {
        let (msg, shard) = (storage::MsgId(msg), shard.index() as u8);
        let op = if put {
            storage::Op::PutFanout { msg, shard }
        } else {
            storage::Op::RemoveFanout { msg, shard }
        };
        self.persist.push(op);
    }

    /// Holds client `slot`'s connection output from `offset` until the current ticket
    /// commits.
    pub(crate) fn hold_client_for_commit(&mut self, slot: ClientSlot, offset: usize) {
        if !self.persist.waits() {
            return;
        }
        let Some(conn_id) = self.clients.get(slot).and_then(|c| c.conn) else {
            return;
        };
        let ticket = self.persist.ticket();
        if let Some(key) = self.hold_at(conn_id, offset) {
            let new = self
                .conns
                .get_mut(conn_id)
                .and_then(|c| c.holds.as_mut())
                .is_some_and(|h| h.add_ticket(key.id, ticket));
            if new {
                self.persist.wait(Waiter::Hold(key));
            }
        }
    }

    /// Answers `to` for `hold` once what this shard stored since `before` (a value of
    /// `Persist::produced`) is durable; at once when it stored nothing.
    pub(crate) fn answer_after_commit(&mut self, to: ShardId, hold: HoldKey, before: u64) {
        let stored = self.persist.produced() > before;
        if stored && self.persist.wait(Waiter::Reply { to, hold }) {
            return;
        }
        self.send_to(to, Envelope::FenceDone { hold });
    }

    /// Handles the writer's answers: commits release what waited; a failed commit closes
    /// the connections whose acknowledgements it would have made true.
    pub(crate) fn on_store_completions(&mut self) {
        while let Some((ticket, failure)) = self.persist.next_completion() {
            for waiter in self.persist.settled(ticket) {
                match (waiter, failure) {
                    (Waiter::Hold(key), None) => self.hold_committed(key, ticket),
                    (Waiter::Reply { to, hold }, None) => {
                        self.send_to(to, Envelope::FenceDone { hold })
                    }
                    (Waiter::Hold(key), Some(kind)) => self.commit_failed(key, ticket, kind),
                    (Waiter::Reply { to, hold }, Some(kind)) => self.send_to(
                        to,
                        Envelope::CommitFailed {
                            hold,
                            disk_full: kind == storage::FailureKind::DiskFull,
                        },
                    ),
                }
            }
        }
    }

    /// The commit that held `key`'s output failed: what it held is never sent; the client
    /// is told (v5: DISCONNECT 0x97 for a full disk, 0x80 otherwise; 3.x: closed) and
    /// disconnected. Its state stays in memory and the writer keeps retrying the write.
    pub(crate) fn commit_failed(&mut self, key: HoldKey, ticket: u64, kind: storage::FailureKind) {
        let code = match kind {
            storage::FailureKind::DiskFull => ReasonCode::QuotaExceeded,
            storage::FailureKind::Io => ReasonCode::UnspecifiedError,
        };
        self.fail_hold(key, ticket, code);
    }

    /// Applies a storage completion that another shard reported for one of our holds.
    pub(crate) fn remote_commit_failed(&mut self, hold: HoldKey, disk_full: bool) {
        let code = if disk_full {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::UnspecifiedError
        };
        self.fail_hold(hold, u64::MAX, code);
    }

    fn fail_hold(&mut self, key: HoldKey, ticket: u64, code: ReasonCode) {
        let Some(conn) = self.conns.live_mut(key.conn) else {
            return;
        };
        let from = conn.holds.as_ref().and_then(|h| {
            if ticket == u64::MAX {
                h.offset_of(key.id)
            } else {
                h.failed_from(ticket)
            }
        });
        if let Some(from) = from {
            conn.out.truncate(from);
        }
        conn.holds = None;
        if conn.version.is_some_and(|v| v.is_v5()) {
            let packet = codec::Packet::Disconnect(codec::Disconnect::new(code));
            codec::encode(&packet, codec::ProtocolVersion::V5, &mut conn.out);
        }
        // The close tells the session its connection was lost (`finish_conn`).
        self.mark_dirty(key.conn.id);
        self.close_for(key.conn.id, CloseReason::StorageFailure(code));
    }
}

/// The wall-clock milliseconds at broker-clock 0, from one reading of both clocks.
pub(crate) fn wall_epoch_ms(broker_now_ms: u64) -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    wall.saturating_sub(broker_now_ms)
}
