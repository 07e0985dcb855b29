//! `SessionData`: everything of a session that outlives its network connection and that the
//! storage layer saves and loads: subscriptions, outbound QoS 1/2 messages in flight with
//! their state, the message queue, inbound QoS 2 ids awaiting PUBREL, the will and the
//! session expiry interval.
//!
//! Plain data with public fields so that storage can (de)serialize it; the methods here keep
//! the bounds and invariants documented on each field.
//!
//! Must never: hold connection-bound state (protocol level, topic aliases, keep alive,
//! receive-maximum counters), touch a socket or the clock.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::codec::{PacketId, QoS, Will};
use crate::router::topic::TopicFilter;

use super::subscriptions::Subscriptions;
use super::types::Message;

/// One message waiting for delivery to this session, with the per-delivery parameters fixed
/// when it was routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    /// This session's number for the message: unique and increasing within the session
    /// (storage keys the message by it; QoS 0 entries get one too, unused).
    pub seq: u64,
    pub message: Arc<Message>,
    /// Delivery QoS: `min(message.qos, granted)`.
    pub qos: QoS,
    /// RETAIN flag of the outgoing PUBLISH [MQTT-3.3.1-9], [MQTT-3.3.1-12], [MQTT-3.3.1-13].
    pub retain: bool,
    /// v5 Subscription Identifiers [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// QoS 1/2 deliveries picked for a share group: the group, where the message goes back
    /// if the session ends before the client has it. Not stored: after a restart the
    /// message stays with the session (and is lost with it if it expires).
    pub share_group: Option<Arc<TopicFilter>>,
}

impl QueuedMessage {
    /// Bytes this entry counts against `Limits::max_queued_bytes`: everything the message
    /// holds (payload, topic, properties).
    pub fn cost(&self) -> usize {
        self.message.stored_size()
    }
}

/// An outbound QoS 1/2 message in flight, in the state of its flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2). Resent with DUP on
    /// reconnect [MQTT-4.4.0-1].
    Published {
        packet_id: PacketId,
        delivery: QueuedMessage,
    },
    /// QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP. The message itself is
    /// no longer needed [MQTT-4.3.3-... the sender discards it once PUBREC arrives].
    Released { packet_id: PacketId, seq: u64 },
}

impl Outbound {
    pub fn packet_id(&self) -> PacketId {
        match self {
            Outbound::Published { packet_id, .. } | Outbound::Released { packet_id, .. } => {
                *packet_id
            }
        }
    }

    /// The session's number of the message this flow carries.
    pub fn seq(&self) -> u64 {
        match self {
            Outbound::Published { delivery, .. } => delivery.seq,
            Outbound::Released { seq, .. } => *seq,
        }
    }
}

/// The persistent part of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionData {
    /// Filter -> subscription. Ordered, so iteration (and thus behaviour) is deterministic.
    pub subscriptions: Subscriptions,
    /// Outbound QoS 1/2 messages in flight, in the order they were first sent (resent in that
    /// order [MQTT-4.6.0-1]). Packet ids are unique within it.
    pub inflight: VecDeque<Outbound>,
    /// Messages waiting for a free inflight slot or for the client to come back, oldest first.
    pub queue: VecDeque<QueuedMessage>,
    /// Sum of `QueuedMessage::cost` over `queue`.
    pub queued_bytes: usize,
    /// QoS 0 messages in `queue` (the only ones eviction looks for).
    pub queued_qos0: u32,
    /// Inbound QoS 2 packet ids whose PUBREC was sent and whose PUBREL has not arrived: a
    /// PUBLISH reusing one is a duplicate and is not routed again [MQTT-4.3.3-... method B],
    /// bad input #53. Bounded by `Limits::max_awaiting_rel`.
    pub awaiting_rel: BTreeSet<PacketId>,
    /// Last packet id handed out for an outbound flow; allocation continues after it.
    pub last_packet_id: u16,
    /// The `seq` of the next outbound message (see `QueuedMessage::seq`).
    pub next_seq: u64,
    /// The will of the current connection, or of the last one while its Will Delay Interval
    /// runs (the due time is in the offline state). `None` once published or discarded.
    /// Boxed: most sessions have none, and a `Will` is 216 bytes.
    pub will: Option<Box<Will>>,
    /// Will Delay Interval of `will` in seconds (v5; 0 for 3.x).
    pub will_delay_secs: u32,
    /// Session Expiry Interval in seconds as granted (capped by `max_session_expiry`);
    /// 0 ends the session with its connection, `u32::MAX` never expires [MQTT-3.1.2-11].
    pub session_expiry_secs: u32,
}

/// Outcome of offering a message to the bounded queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Stored; `evicted_qos0` older QoS 0 messages were dropped to make room.
    Stored { evicted_qos0: u64 },
    /// Not stored: the queue is full of QoS 1/2 messages (or the message alone is larger
    /// than the byte bound).
    Rejected,
}

impl SessionData {
    /// Appends `entry` to the queue within `max_messages` / `max_bytes`. When full, the
    /// oldest queued QoS 0 messages are evicted first; a QoS 0 message never evicts
    /// anything; a QoS 1/2 message that still does not fit is rejected.
    ///
    /// O(1) when the queue holds no QoS 0 message (the common full queue: a subscriber that
    /// stopped acknowledging): nothing is scanned. A stored message is detached from the read
    /// it was decoded from (see `Message::owned`); a refused one is not copied.
    pub(crate) fn enqueue(
        &mut self,
        mut entry: QueuedMessage,
        max_messages: usize,
        max_bytes: usize,
    ) -> Enqueued {
        let cost = entry.cost();
        if cost > max_bytes || max_messages == 0 {
            return Enqueued::Rejected;
        }
        let fits = |d: &SessionData| {
            d.queue.len() < max_messages && d.queued_bytes.saturating_add(cost) <= max_bytes
        };
        let mut evicted_qos0 = 0;
        if entry.qos != QoS::AtMostOnce {
            while !fits(self) && self.queued_qos0 > 0 {
                let Some(pos) = self.queue.iter().position(|q| q.qos == QoS::AtMostOnce) else {
                    break;
                };
                if let Some(old) = self.queue.remove(pos) {
                    self.queued_bytes -= old.cost();
                    self.queued_qos0 -= 1;
                    evicted_qos0 += 1;
                }
            }
        }
        if !fits(self) {
            return Enqueued::Rejected;
        }
        if entry.message.pinned_read > super::types::DETACH_READS_ABOVE {
            // Queued for an unknown time: it must not keep a large read alive.
            entry.message = std::sync::Arc::new(entry.message.detached());
        }
        self.queued_bytes += cost;
        if entry.qos == QoS::AtMostOnce {
            self.queued_qos0 += 1;
        }
        self.queue.push_back(entry);
        Enqueued::Stored { evicted_qos0 }
    }

    /// Removes and returns the oldest queued message.
    pub(crate) fn dequeue(&mut self) -> Option<QueuedMessage> {
        let entry = self.queue.pop_front()?;
        self.queued_bytes -= entry.cost();
        if entry.qos == QoS::AtMostOnce {
            self.queued_qos0 -= 1;
        }
        Some(entry)
    }

    /// Puts messages back at the front of the queue, keeping their order (used when a
    /// resumed connection has a smaller inflight window than the one they were sent in).
    /// The bounds are not applied: these messages were already accepted, so the queue may
    /// exceed them by at most one inflight window until it drains.
    pub(crate) fn requeue_front(&mut self, entries: Vec<QueuedMessage>) {
        for entry in entries.into_iter().rev() {
            self.queued_bytes += entry.cost();
            if entry.qos == QoS::AtMostOnce {
                self.queued_qos0 += 1;
            }
            self.queue.push_front(entry);
        }
    }

    /// Keeps the queued messages `keep` accepts, in order, and calls `removed` with each of
    /// the others. Allocates nothing.
    pub(crate) fn retain_queued(
        &mut self,
        mut keep: impl FnMut(&QueuedMessage) -> bool,
        mut removed: impl FnMut(&QueuedMessage),
    ) {
        let (bytes, qos0) = (&mut self.queued_bytes, &mut self.queued_qos0);
        self.queue.retain(|entry| {
            if keep(entry) {
                return true;
            }
            *bytes -= entry.cost();
            if entry.qos == QoS::AtMostOnce {
                *qos0 -= 1;
            }
            removed(entry);
            false
        });
    }

    /// The next packet id not used by an outbound flow, after `last_packet_id`, wrapping and
    /// skipping 0 [MQTT-2.2.1-3] and ids in use [MQTT-2.2.1-4]. `None` only when all 65535
    /// ids are in flight (callers never let the window grow that far).
    pub(crate) fn allocate_packet_id(&mut self) -> Option<PacketId> {
        let mut candidate = self.last_packet_id;
        for _ in 0..u16::MAX {
            candidate = candidate.wrapping_add(1);
            let Some(id) = PacketId::new(candidate) else {
                continue;
            };
            if !self.inflight.iter().any(|o| o.packet_id() == id) {
                self.last_packet_id = candidate;
                return Some(id);
            }
        }
        None
    }

    /// Position of the outbound flow using `id`.
    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        self.inflight.iter().position(|o| o.packet_id() == id)
    }

    /// Clears everything: a clean start or the end of a session. Sequence numbers go on
    /// increasing: one never names two messages of the same client id, even across a clean
    /// start whose old stored entries are being removed.
    /// Returns what was there (its messages may go back to their share groups).
    pub(crate) fn take(&mut self) -> SessionData {
        let old = std::mem::take(self);
        self.next_seq = old.next_seq;
        old
    }

    /// A fresh `seq` for an outbound message.
    pub(crate) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}
