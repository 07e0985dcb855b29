//! What a persistent session tells the shard to store: `Change`s, emitted as
//! `Action::Persist` in the order the session made them, and the `Header` view the shard
//! writes for `Change::Header`.
//!
//! A session is persistent while its Session Expiry Interval is above 0 (3.x: clean session
//! 0). Only then does it emit changes, and only for what must survive a restart: its header
//! (expiry, will, whether a connection is attached), its subscriptions, its outbound QoS 1/2
//! messages (queued, sent with a packet id, released) and its inbound QoS 2 packet ids
//! awaiting PUBREL. QoS 0 messages and connection-bound state are never stored.
//!
//! Each outbound QoS 1/2 message has a sequence number (`QueuedMessage::seq`), unique within
//! the session and increasing; storage keys the message by it.
//!
//! Must never: emit a change for a session that is not persistent (the shard stores
//! nothing for it), or touch the clock (times are broker-clock milliseconds the shard
//! converts to wall-clock time).

use std::sync::Arc;

use crate::codec::{PacketId, ProtocolVersion, QoS, Will};
use crate::router::topic::TopicFilter;

use super::Session;
use super::State;
use super::types::{Message, Subscription};

/// One change of a persistent session's stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The header changed (connection attached or detached, will, expiry): store
    /// `Session::header()`.
    Header,
    /// Everything stored for this session goes: it ended, started clean, or is no longer
    /// persistent.
    Removed,
    /// A subscription was added or replaced.
    Subscribed {
        filter: TopicFilter,
        sub: Subscription,
    },
    Unsubscribed {
        filter: TopicFilter,
    },
    /// An outbound QoS 1/2 message was accepted for this session; `packet_id` when it went
    /// out at once (a flow started), `None` when it waits in the queue.
    Enqueued {
        seq: u64,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        packet_id: Option<PacketId>,
    },
    /// A stored message got a packet id (sent from the queue), or lost it (`None`: put back
    /// in the queue by a resumed connection with a smaller window). `qos`: its delivery QoS.
    Sent {
        seq: u64,
        qos: QoS,
        packet_id: Option<PacketId>,
    },
    /// QoS 2: PUBREC arrived, PUBREL goes out; the message itself is no longer needed.
    Released {
        seq: u64,
        packet_id: PacketId,
    },
    /// The flow ended (PUBACK, PUBCOMP, a failure code, an expired or undeliverable
    /// message): the stored message goes.
    Completed {
        seq: u64,
    },
    /// Inbound QoS 2: PUBREC sent for this packet id; a PUBLISH reusing it is a duplicate
    /// until PUBREL.
    AwaitingRel {
        packet_id: PacketId,
    },
    /// Inbound QoS 2: PUBREL arrived; the packet id is free again.
    RelReceived {
        packet_id: PacketId,
    },
}

/// The stored header of a persistent session, as `Change::Header` asks the shard to write
/// it. Times are on the broker clock.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub protocol: Option<ProtocolVersion>,
    pub expiry_secs: u32,
    /// A connection is attached (a restart after a crash treats it as lost then).
    pub connected: bool,
    /// When an offline session ends (`None`: connected, or never).
    pub expires_at_ms: Option<u64>,
    pub will: Option<&'a Will>,
    pub will_delay_secs: u32,
    /// When the pending will of an offline session is published.
    pub will_due_ms: Option<u64>,
}

impl Session {
    /// Whether the session's state must survive a restart (Session Expiry Interval > 0).
    pub fn is_persistent(&self) -> bool {
        self.data.session_expiry_secs > 0 && !matches!(self.state, State::Ended)
    }

    /// The header to store for `Change::Header`.
    pub fn header(&self) -> Header<'_> {
        let (connected, expires_at_ms, will_due_ms) = match &self.state {
            State::Connected(_) => (true, None, None),
            State::Offline(o) => (false, o.expires_at_ms, o.will_due_ms),
            State::Detached | State::Ended => (false, None, None),
        };
        Header {
            protocol: self.protocol,
            expiry_secs: self.data.session_expiry_secs,
            connected,
            expires_at_ms,
            will: self.data.will.as_deref(),
            will_delay_secs: self.data.will_delay_secs,
            will_due_ms,
        }
    }

    /// Emits `change` when the session is persistent.
    pub(super) fn persist(&mut self, change: Change, actions: &mut Vec<super::Action>) {
        if self.persisted {
            actions.push(super::Action::Persist(change));
        }
    }

    /// Brings the stored state in line with whether the session is persistent now: a
    /// session that became persistent stores its header (and whatever it already holds); one
    /// that stopped being persistent removes what was stored. Otherwise stores the header.
    pub(super) fn sync_persistence(&mut self, actions: &mut Vec<super::Action>) {
        let persistent = self.is_persistent();
        match (self.persisted, persistent) {
            (false, false) => {}
            (true, false) => {
                actions.push(super::Action::Persist(Change::Removed));
                self.persisted = false;
            }
            (false, true) => {
                self.persisted = true;
                actions.push(super::Action::Persist(Change::Header));
                self.persist_contents(actions);
            }
            (true, true) => actions.push(super::Action::Persist(Change::Header)),
        }
    }

    /// Everything the session holds, as changes (for a session that just became
    /// persistent with state already in memory).
    fn persist_contents(&mut self, actions: &mut Vec<super::Action>) {
        for (filter, sub) in self.data.subscriptions.filters() {
            actions.push(super::Action::Persist(Change::Subscribed { filter, sub }));
        }
        let inflight = self.data.inflight.iter().filter_map(|o| match o {
            super::Outbound::Published {
                packet_id,
                delivery,
            } => Some((delivery, Some(*packet_id))),
            super::Outbound::Released { .. } => None,
        });
        let queued = self.data.queue.iter().map(|q| (q, None));
        for (q, packet_id) in inflight.chain(queued) {
            if q.qos != QoS::AtMostOnce {
                actions.push(super::Action::Persist(enqueued(q, packet_id)));
            }
        }
        for id in &self.data.awaiting_rel {
            actions.push(super::Action::Persist(Change::AwaitingRel {
                packet_id: *id,
            }));
        }
    }
}

/// The `Enqueued` change for a queue entry.
pub(super) fn enqueued(q: &super::QueuedMessage, packet_id: Option<PacketId>) -> Change {
    Change::Enqueued {
        seq: q.seq,
        message: Arc::clone(&q.message),
        qos: q.qos,
        retain: q.retain,
        subscription_ids: q.subscription_ids.clone(),
        packet_id,
    }
}
