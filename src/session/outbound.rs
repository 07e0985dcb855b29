//! Messages to the client: delivery parameters, the bounded queue, the inflight window,
//! packet-id allocation, outbound topic aliases, the Maximum Packet Size check, and the
//! acknowledgements the client sends for our QoS 1/2 flows (PUBACK, PUBREC, PUBCOMP).

use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::{self, Ack, AckProperties, Packet, PacketId, PublishOut, QoS, ReasonCode};
use crate::router::topic::TopicName;

use super::alias::{AliasUse, OutboundAliases};
use super::data::{Enqueued, Outbound, QueuedMessage};
use super::persist::{Change, enqueued};
use super::types::{Delivery, Message};
use super::{Action, Session, State};

impl Session {
    /// Body of `Session::deliver`.
    pub(super) fn route_in(
        &mut self,
        message: &Arc<Message>,
        delivery: &Delivery,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        if message.is_expired(now_ms) {
            self.count(|s| &mut s.dropped_expired, 1);
            return;
        }
        let entry = QueuedMessage {
            seq: self.data.take_seq(),
            message: Arc::clone(message),
            qos: message.qos.min(delivery.qos),
            // [MQTT-3.3.1-9]: retained-store deliveries keep RETAIN; live ones keep it only
            // with Retain As Published [MQTT-3.3.1-12..13] (always 0 for 3.x).
            retain: message.retain
                && (delivery.from_retained_store || delivery.retain_as_published),
            subscription_ids: delivery.subscription_ids.to_vec(),
            share_group: delivery
                .share_group
                .filter(|_| message.qos.min(delivery.qos) != QoS::AtMostOnce)
                .cloned(),
        };
        match &self.state {
            State::Connected(c) => {
                if entry.qos == QoS::AtMostOnce && !self.data.queue.is_empty() {
                    // Behind queued QoS 1/2 messages waiting for window space: a QoS 0
                    // message must not overtake them, so that one publisher's messages on a
                    // topic arrive in the order sent whatever their QoS ([MQTT-4.6.0-6]
                    // requires it per QoS; users expect it across QoS).
                    self.enqueue(entry, actions);
                } else if entry.qos == QoS::AtMostOnce {
                    if out.len() >= self.limits.max_output_buffer {
                        // Slow consumer: QoS 0 is the first thing to give up.
                        self.count(|s| &mut s.dropped_qos0, 1);
                    } else {
                        self.write_publish(&entry, None, false, now_ms, out);
                    }
                } else if self.data.queue.is_empty()
                    && self.data.inflight.len() < usize::from(c.send_window)
                    && out.len() < self.limits.max_output_buffer
                {
                    self.start_flow(entry, false, now_ms, out, actions);
                } else {
                    // Window full, or output over `max_output_buffer` (a client that does
                    // not read): wait in the bounded queue, not in unbounded output.
                    self.enqueue(entry, actions);
                }
            }
            State::Offline(_) => {
                if entry.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline {
                    self.count(|s| &mut s.dropped_qos0, 1);
                } else {
                    self.enqueue(entry, actions);
                }
            }
            State::Detached | State::Ended => {}
        }
    }

    /// Queues within the limits, counting what is dropped; a stored QoS 1/2 message is
    /// persisted (QoS 0 never is, and only QoS 0 is ever evicted).
    fn enqueue(&mut self, entry: QueuedMessage, actions: &mut Vec<Action>) {
        let qos = entry.qos;
        let change = (qos != QoS::AtMostOnce && self.persisted).then(|| enqueued(&entry, None));
        let l = &self.limits;
        // A shared QoS 1/2 message reaches a member with a full queue only after it was
        // handed on `MAX_SHARE_HANDOVERS` times (every member it met was full): its
        // publisher was acknowledged, so it may use up to twice the limits rather than be
        // lost; beyond that it is dropped and counted like any message over a full queue.
        let (max_messages, max_bytes) = if qos != QoS::AtMostOnce && entry.share_group.is_some() {
            (
                l.max_queued_messages.saturating_mul(2),
                l.max_queued_bytes.saturating_mul(2),
            )
        } else {
            (l.max_queued_messages, l.max_queued_bytes)
        };
        match self.data.enqueue(entry, max_messages, max_bytes) {
            Enqueued::Stored { evicted_qos0 } => {
                self.count(|s| &mut s.dropped_qos0, evicted_qos0);
                if let Some(change) = change {
                    self.persist(change, actions);
                }
            }
            Enqueued::Rejected if qos == QoS::AtMostOnce => self.count(|s| &mut s.dropped_qos0, 1),
            Enqueued::Rejected => self.count(|s| &mut s.dropped_queue_full, 1),
        }
    }

    /// Whether messages wait for the client (queued, or in flight).
    pub fn holds_messages(&self) -> bool {
        !self.data.queue.is_empty() || !self.data.inflight.is_empty()
    }

    /// Drops the messages waiting for the client whose topic `may_read` refuses (the shard
    /// asks the ACL whether the client about to receive them may read it): queued ones, and
    /// while no connection is attached, PUBLISH flows not acknowledged yet, which a resume
    /// would send again. On a live connection those were already sent to this client; the
    /// next resume checks them. A QoS 2 flow whose PUBREL went out carries no message and
    /// stays. A stored message goes from the store as a completed flow does, so it is not
    /// offered again at every resume; a message picked for a share group does not go back
    /// to it. Returns how many were dropped (counted in `dropped_not_authorized`).
    pub fn drop_unreadable(
        &mut self,
        may_read: &mut dyn FnMut(&TopicName) -> bool,
        actions: &mut Vec<Action>,
    ) -> usize {
        let mut completed = Vec::new();
        let mut dropped = 0;
        if !matches!(self.state, State::Connected(_)) {
            self.data.inflight.retain(|flow| match flow {
                Outbound::Published { delivery, .. } if !may_read(&delivery.message.topic) => {
                    completed.push(delivery.seq);
                    dropped += 1;
                    false
                }
                Outbound::Published { .. } | Outbound::Released { .. } => true,
            });
        }
        self.data.retain_queued(
            |q| may_read(&q.message.topic),
            |q| {
                dropped += 1;
                if q.qos != QoS::AtMostOnce {
                    completed.push(q.seq);
                }
            },
        );
        for seq in completed {
            self.persist(Change::Completed { seq }, actions);
        }
        self.count(|s| &mut s.dropped_not_authorized, dropped as u64);
        dropped
    }

    /// Sends a QoS 1/2 message under a new packet id and records the flow. `stored`: the
    /// message was persisted before (it comes from the queue), so the change is its new
    /// packet id, or its end when it cannot be sent.
    fn start_flow(
        &mut self,
        entry: QueuedMessage,
        stored: bool,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let Some(packet_id) = self.data.allocate_packet_id() else {
            // Unreachable while the window is below 65535; keep the message.
            if stored {
                self.data.requeue_front(vec![entry]);
            } else {
                self.enqueue(entry, actions);
            }
            return;
        };
        let seq = entry.seq;
        if self.write_publish(&entry, Some(packet_id), false, now_ms, out) {
            let change = if stored {
                Change::Sent {
                    seq,
                    qos: entry.qos,
                    packet_id: Some(packet_id),
                }
            } else {
                enqueued(&entry, Some(packet_id))
            };
            self.data.inflight.push_back(Outbound::Published {
                packet_id,
                delivery: entry,
            });
            self.persist(change, actions);
        } else if stored {
            self.persist(Change::Completed { seq }, actions);
        }
    }

    /// Encodes the PUBLISH into `out` unless it exceeds the client's Maximum Packet Size
    /// [MQTT-3.1.2-25] (bad input #29): then nothing is written, the drop is counted and
    /// `false` returned. With outbound topic aliases, the topic goes out with a new alias
    /// or is replaced by an alias the client knows (see `alias.rs`).
    pub(super) fn write_publish(
        &mut self,
        entry: &QueuedMessage,
        packet_id: Option<PacketId>,
        dup: bool,
        now_ms: u64,
        out: &mut BytesMut,
    ) -> bool {
        let policy = self.limits.outbound_topic_aliases;
        let State::Connected(c) = &mut self.state else {
            return false;
        };
        let (protocol, limit) = (c.protocol, c.client_max_packet as usize);
        let m = &entry.message;
        let alias = match c.out_alias_cap {
            0 => AliasUse::Plain,
            cap => c
                .aliases
                .get_or_insert_with(Box::default)
                .outbound
                .get_or_insert_with(|| OutboundAliases::new(policy, cap))
                .lookup(m.topic.as_bytes()),
        };
        let no_topic = TopicName::default();
        let (topic, topic_alias) = match alias {
            AliasUse::Plain => (&m.topic, None),
            AliasUse::Define(a) => (&m.topic, Some(a)),
            AliasUse::Use(a) => (&no_topic, Some(a)),
        };
        // Written from borrowed parts, no clone of the message: Message Expiry Interval
        // rewritten to what remains [MQTT-3.3.2-6], this delivery's subscription
        // identifiers, the topic alias of this connection.
        let publish = PublishOut {
            dup,
            qos: entry.qos,
            retain: entry.retain,
            topic,
            packet_id,
            properties: &m.properties,
            message_expiry_interval: m.remaining_expiry_secs(now_ms),
            topic_alias,
            subscription_identifiers: &entry.subscription_ids,
            payload: &m.payload,
        };
        let start = out.len();
        codec::encode_publish(&publish, protocol, out);
        if out.len() - start <= limit {
            return true;
        }
        out.truncate(start);
        codec::encode::sent::discard();
        if let (AliasUse::Define(a), Some(aliases)) = (alias, c.aliases.as_deref_mut()) {
            // The client never learns this alias's new topic.
            if let Some(outbound) = aliases.outbound.as_mut() {
                outbound.forget(a);
            }
        }
        self.count(|s| &mut s.dropped_too_large, 1);
        false
    }

    /// Sends queued messages while the window has room (QoS 0 entries need none); expired
    /// ones are dropped [MQTT-3.3.2-5].
    pub(super) fn drain_queue(
        &mut self,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let window = match &self.state {
            State::Connected(c) => usize::from(c.send_window),
            State::Detached | State::Offline(_) | State::Ended => return,
        };
        while let Some(front) = self.data.queue.front() {
            let needs_slot = front.qos != QoS::AtMostOnce;
            if needs_slot && self.data.inflight.len() >= window {
                break;
            }
            if out.len() >= self.limits.max_output_buffer {
                break; // The rest waits until the client reads (`Session::resume_output`).
            }
            let Some(entry) = self.data.dequeue() else {
                break;
            };
            if entry.message.is_expired(now_ms) {
                self.count(|s| &mut s.dropped_expired, 1);
                if needs_slot {
                    self.persist(Change::Completed { seq: entry.seq }, actions);
                }
            } else if needs_slot {
                self.start_flow(entry, true, now_ms, out, actions);
            } else {
                self.write_publish(&entry, None, false, now_ms, out);
            }
        }
    }

    /// PUBACK for our QoS 1 flow [MQTT-4.3.2]. A PUBACK for a QoS 2 flow is the wrong ack
    /// (bad input #50); an unknown id is tolerated and counted.
    pub(super) fn on_puback(
        &mut self,
        ack: Ack,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.end_flow(ack, Awaiting::Ack, now_ms, out, actions);
    }

    /// PUBREC for our QoS 2 flow [MQTT-4.3.3]: success -> PUBREL (resent for a duplicate
    /// PUBREC, bad input #51); a failure code ends the flow [MQTT-4.3.3-... reason >= 0x80];
    /// an unknown id gets PUBREL (v5 0x92); PUBREC for a QoS 1 flow is the wrong ack (#50).
    pub(super) fn on_pubrec(
        &mut self,
        ack: Ack,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let id = ack.packet_id;
        match self.flow(id) {
            Some((pos, Awaiting::Rec)) => {
                let seq = self.data.inflight[pos].seq();
                if ack.reason.is_error() {
                    self.data.inflight.remove(pos);
                    self.persist(Change::Completed { seq }, actions);
                    self.drain_queue(now_ms, out, actions);
                } else {
                    self.data.inflight[pos] = Outbound::Released { packet_id: id, seq };
                    self.persist(Change::Released { seq, packet_id: id }, actions);
                    self.send(&Packet::PubRel(Ack::new(id)), out);
                }
            }
            Some((_, Awaiting::Comp)) => self.send(&Packet::PubRel(Ack::new(id)), out),
            Some((_, Awaiting::Ack)) => {
                self.violation(ReasonCode::ProtocolError, now_ms, out, actions);
            }
            None => {
                self.count(|s| &mut s.unknown_acks, 1);
                let rel = Ack {
                    packet_id: id,
                    reason: ReasonCode::PacketIdentifierNotFound,
                    properties: AckProperties::default(),
                };
                self.send(&Packet::PubRel(rel), out);
            }
        }
    }

    /// PUBCOMP ends our QoS 2 flow [MQTT-4.3.3]. Before PUBREC, or for a QoS 1 flow, it is
    /// the wrong ack (bad input #50); an unknown id is tolerated.
    pub(super) fn on_pubcomp(
        &mut self,
        ack: Ack,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.end_flow(ack, Awaiting::Comp, now_ms, out, actions);
    }

    /// The last acknowledgement of a flow (PUBACK for QoS 1, PUBCOMP for QoS 2): the flow
    /// ends and the window takes the next queued message. The other ack for that id is the
    /// wrong one for the flow (bad input #50); an unknown id is tolerated and counted.
    fn end_flow(
        &mut self,
        ack: Ack,
        last: Awaiting,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        match self.flow(ack.packet_id) {
            Some((pos, awaiting)) if awaiting == last => {
                if let Some(flow) = self.data.inflight.remove(pos) {
                    self.persist(Change::Completed { seq: flow.seq() }, actions);
                }
                self.drain_queue(now_ms, out, actions);
            }
            Some(_) => self.violation(ReasonCode::ProtocolError, now_ms, out, actions),
            None => self.count(|s| &mut s.unknown_acks, 1),
        }
    }

    /// Where the outbound flow for `id` stands.
    fn flow(&self, id: PacketId) -> Option<(usize, Awaiting)> {
        let pos = self.data.inflight_position(id)?;
        let flow = match &self.data.inflight[pos] {
            Outbound::Published { delivery, .. } if delivery.qos == QoS::ExactlyOnce => {
                Awaiting::Rec
            }
            Outbound::Published { .. } => Awaiting::Ack,
            Outbound::Released { .. } => Awaiting::Comp,
        };
        Some((pos, flow))
    }
}

/// The acknowledgement an outbound flow waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    /// PUBACK (QoS 1 published).
    Ack,
    /// PUBREC (QoS 2 published).
    Rec,
    /// PUBCOMP (QoS 2 released).
    Comp,
}
