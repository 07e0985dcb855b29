//! Packets from the client: dispatch, inbound PUBLISH (topic aliases, checks, QoS 1/2 flows,
//! our Receive Maximum), PUBREL, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, and the packets
//! a client must never send.

use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::{
    Ack, AckProperties, Disconnect, Packet, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};

use super::auth::AccessPolicy;
use super::lifecycle::Detach;
use super::persist::Change;
use super::types::{Message, Subscription};
use super::{Action, Connection, Session, State};

/// What happens to an inbound PUBLISH that passed the protocol checks.
enum Verdict {
    /// Route it.
    Accept,
    /// Acknowledge (v5: with this code) without routing; QoS 0 is dropped silently.
    Refuse(ReasonCode),
}

impl Session {
    /// Body of `Session::handle_packet`.
    pub(super) fn dispatch(
        &mut self,
        packet: Packet,
        policy: &dyn AccessPolicy,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let State::Connected(c) = &mut self.state else {
            return;
        };
        // Any control packet resets the keep-alive timer [MQTT-3.1.2-22].
        c.last_packet_ms = now_ms;
        match packet {
            Packet::Publish(p) => self.inbound_publish(p, now_ms, out, actions),
            Packet::PubAck(a) => self.on_puback(a, now_ms, out, actions),
            Packet::PubRec(a) => self.on_pubrec(a, now_ms, out, actions),
            Packet::PubRel(a) => self.on_pubrel(a, out, actions),
            Packet::PubComp(a) => self.on_pubcomp(a, now_ms, out, actions),
            Packet::Subscribe(s) => self.on_subscribe(s, policy, now_ms, out, actions),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, out, actions),
            Packet::PingReq => self.send(&Packet::PingResp, out),
            Packet::Disconnect(d) => self.on_disconnect(d, now_ms, out, actions),
            // Server-to-client packets and a second CONNECT [MQTT-3.1.0-2] (bad input #16,
            // #63); AUTH while no enhanced authentication method is in use [MQTT-4.12.0-1]
            // (the shard gives AUTH of a connection that uses one to its `Enhanced`).
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Auth(_) => self.violation(ReasonCode::ProtocolError, now_ms, out, actions),
        }
    }

    fn connection(&self) -> Option<&Connection> {
        match &self.state {
            State::Connected(c) => Some(c),
            State::Detached | State::Offline(_) | State::Ended => None,
        }
    }

    /// Inbound PUBLISH [MQTT-3.3.4], [MQTT-4.3].
    fn inbound_publish(
        &mut self,
        mut publish: Publish,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        if let Err(code) = self.resolve_topic_alias(&mut publish) {
            return self.violation(code, now_ms, out, actions);
        }
        let verdict = match self.check_publish(&publish) {
            Ok(v) => v,
            Err(code) => return self.violation(code, now_ms, out, actions),
        };
        let Some(packet_id) = publish.packet_id else {
            // QoS 0: route or drop; nothing to acknowledge.
            match verdict {
                Verdict::Accept => actions.push(Action::Publish {
                    message: self.message(publish, now_ms),
                    ack: None,
                }),
                Verdict::Refuse(_) => self.count(|s| &mut s.refused_publishes, 1),
            }
            return;
        };
        if publish.qos == QoS::ExactlyOnce && self.data.awaiting_rel.contains(&packet_id) {
            // Same id while its PUBREL is pending: a duplicate, never routed again
            // [MQTT-4.3.3-... method B] (bad input #46, #53). Answer PUBREC again.
            let ack = Packet::PubRec(Ack::new(packet_id));
            return self.send(&ack, out);
        }
        if let Verdict::Refuse(code) = verdict {
            self.count(|s| &mut s.refused_publishes, 1);
            return self.ack_publish(publish.qos, packet_id, code, out);
        }
        if self.inbound_quota_exhausted() {
            // bad input #52: more unacknowledged QoS>0 than our Receive Maximum
            // [MQTT-3.3.4-9]. `max_awaiting_rel` is a hard memory bound, never log-only.
            let hard = self.data.awaiting_rel.len() >= self.limits.max_awaiting_rel;
            if hard || !self.limits.receive_maximum_log_only {
                let code = ReasonCode::ReceiveMaximumExceeded;
                return self.violation(code, now_ms, out, actions);
            }
            self.count(|s| &mut s.receive_maximum_exceeded, 1);
        }
        // The shard routes the message, then answers with `acknowledge` (the reason code
        // is its to choose: storage may refuse, an ACL may deny).
        actions.push(Action::Publish {
            message: self.message(publish, now_ms),
            ack: Some(packet_id),
        });
    }

    /// Body of `Session::acknowledge`.
    pub(super) fn answer_publish(
        &mut self,
        qos: QoS,
        packet_id: crate::codec::PacketId,
        code: ReasonCode,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let v5 = self.connection().is_some_and(|c| c.protocol.is_v5());
        if code.is_error() && !v5 {
            // 3.x acknowledgements carry no reason code: refusing one is closing.
            return self.violation(code, now_ms, out, actions);
        }
        if qos == QoS::ExactlyOnce && !code.is_error() {
            self.data.awaiting_rel.insert(packet_id);
            self.persist(Change::AwaitingRel { packet_id }, actions);
        }
        self.ack_publish(qos, packet_id, code, out);
    }

    /// Inbound QoS 1/2 publishes the client has outstanding towards our Receive Maximum
    /// [MQTT-3.3.4-9]: QoS 2 ids awaiting PUBREL (their PUBREC held or not), and for a 5.0
    /// client the QoS 1 PUBACKs the shard still holds for a commit (`held_acks`; 3.x has no
    /// Receive Maximum, and a 3.x client that pipelines QoS 1 is within its rights).
    fn inbound_quota_exhausted(&self) -> bool {
        let rel = self.data.awaiting_rel.len();
        let held = self
            .connection()
            .filter(|c| c.protocol.is_v5())
            .map_or(0, |c| usize::from(c.held_acks));
        rel + held >= usize::from(self.limits.receive_maximum.max(1))
            || rel >= self.limits.max_awaiting_rel
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) for `packet_id` with `code` (3.x: no code on the
    /// wire).
    fn ack_publish(
        &self,
        qos: QoS,
        packet_id: crate::codec::PacketId,
        code: ReasonCode,
        out: &mut BytesMut,
    ) {
        let ack = Ack {
            packet_id,
            reason: code,
            properties: AckProperties::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack), out),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(ack), out),
        }
    }

    /// Resolves and records v5 topic aliases [MQTT-3.3.2-... 3.3.2.3.4]: alias 0 or above
    /// our maximum -> 0x94 [MQTT-3.3.2-9..10]; an empty topic needs a known alias, else 0x82
    /// [MQTT-3.3.4-... protocol error]; a non-empty topic (re)defines the alias.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), ReasonCode> {
        let max = usize::from(self.limits.topic_alias_maximum);
        let State::Connected(c) = &mut self.state else {
            return Ok(());
        };
        let Some(alias) = publish.properties.topic_alias.take() else {
            return if publish.topic.is_empty() {
                Err(ReasonCode::ProtocolError)
            } else {
                Ok(())
            };
        };
        let alias = usize::from(alias);
        if alias == 0 || alias > max || !c.protocol.is_v5() {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if publish.topic.is_empty() {
            let known = c.aliases.as_ref().and_then(|a| a.inbound.get(alias - 1));
            match known.and_then(Option::as_ref) {
                Some(topic) => publish.topic = topic.clone(),
                None => return Err(ReasonCode::ProtocolError),
            }
        } else {
            let inbound = &mut c.aliases.get_or_insert_with(Box::default).inbound;
            if inbound.len() < alias {
                inbound.resize(alias, None);
            }
            inbound[alias - 1] = Some(publish.topic.clone());
        }
        Ok(())
    }

    /// Checks an inbound PUBLISH (topic already resolved). `Err` is a protocol violation to
    /// disconnect with; `Refuse` acknowledges without routing.
    fn check_publish(&self, p: &Publish) -> Result<Verdict, ReasonCode> {
        let l = &self.limits;
        if !p.properties.subscription_identifiers.is_empty() {
            // Server-to-client only [MQTT-3.3.4-6] (bad input #40).
            return Err(ReasonCode::ProtocolError);
        }
        if p.topic.len() > l.max_topic_len || p.topic.level_count() > l.max_topic_levels {
            // Valid per spec but over our limits (bad input #38).
            return Err(ReasonCode::TopicNameInvalid);
        }
        if p.qos > self.max_qos() {
            return Err(ReasonCode::QoSNotSupported); // [MQTT-3.2.2-11]
        }
        if p.retain && !l.retain_available {
            return Err(ReasonCode::RetainNotSupported); // [MQTT-3.2.2-14] (bad input #45)
        }
        let v5 = self.connection().is_some_and(|c| c.protocol.is_v5());
        if p.topic.is_dollar() {
            // Clients never publish into `$` topics (bad input #37): v5 -> 0x87 in the ack;
            // 3.x -> acknowledged as success and not routed (as mosquitto).
            let code = if v5 {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::Success
            };
            return Ok(Verdict::Refuse(code));
        }
        if v5
            && p.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // [MQTT-3.3.2-4] optional check (bad input #42).
            return Ok(Verdict::Refuse(ReasonCode::PayloadFormatInvalid));
        }
        Ok(Verdict::Accept)
    }

    /// The routed form of an accepted inbound PUBLISH.
    fn message(&self, p: Publish, now_ms: u64) -> Arc<Message> {
        let mut properties = p.properties;
        properties.topic_alias = None;
        let expires_at_ms = properties
            .message_expiry_interval
            .map(|s| now_ms.saturating_add(u64::from(s) * 1000));
        Arc::new(Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at_ms,
            origin: Some(self.client_id.clone()),
            store_id: 0,
            pinned_read: super::types::UNKNOWN_READ,
        })
    }

    /// PUBREL -> PUBCOMP [MQTT-4.3.3-... receiver]; an unknown id still gets PUBCOMP (v5 with
    /// 0x92) and the connection stays up (bad input #48).
    fn on_pubrel(&mut self, ack: Ack, out: &mut BytesMut, actions: &mut Vec<Action>) {
        let reason = if self.data.awaiting_rel.remove(&ack.packet_id) {
            // Stored before PUBCOMP may leave: a PUBCOMP whose removal a crash undid would
            // make the client's next message with this id look like a duplicate.
            let packet_id = ack.packet_id;
            self.persist(Change::RelReceived { packet_id }, actions);
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        let comp = Ack {
            packet_id: ack.packet_id,
            reason,
            properties: AckProperties::default(),
        };
        self.send(&Packet::PubComp(comp), out);
    }

    /// SUBSCRIBE -> router actions and SUBACK with one code per filter [MQTT-3.8.4].
    fn on_subscribe(
        &mut self,
        s: Subscribe,
        policy: &dyn AccessPolicy,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4] (#57).
        if s.filters.iter().any(|(f, o)| f.is_shared() && o.no_local) {
            return self.violation(ReasonCode::ProtocolError, now_ms, out, actions);
        }
        let id = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.filters.len());
        // Filters beyond `max_subscribe_filters` are refused unread. A filter named twice
        // replaces its earlier subscription [MQTT-3.8.4-3] as usual, but only its last
        // occurrence reaches the router: 20,000 x `#` is one routing change and one scan of
        // the retained store, not 20,000.
        let cap = self.limits.max_subscribe_filters;
        let taken = s.filters.len().min(cap);
        let last: std::collections::BTreeMap<&crate::router::topic::TopicFilter, usize> = s.filters
            [..taken]
            .iter()
            .enumerate()
            .map(|(i, (f, _))| (f, i))
            .collect();
        let repeated: Vec<bool> = (0..taken)
            .map(|i| last.get(&s.filters[i].0) != Some(&i))
            .collect();
        drop(last);
        // Whether a repeated filter existed before this packet (Retain Handling 1).
        let mut existed_before = std::collections::BTreeMap::new();
        for (i, (filter, options)) in s.filters.into_iter().enumerate() {
            let code = if i >= cap {
                // More filters than one SUBSCRIBE may carry (a setting).
                ReasonCode::QuotaExceeded
            } else {
                self.subscribe_one(&filter, options, id, policy)
            };
            if !code.is_error() {
                let existed = *existed_before
                    .entry(filter.clone())
                    .or_insert_with(|| self.data.subscriptions.contains(&filter));
                let mut options = options;
                options.qos = options.qos.min(self.max_qos());
                let sub = Subscription { options, id };
                self.data.subscriptions.insert(&filter, sub);
                let change = Change::Subscribed {
                    filter: filter.clone(),
                    sub,
                };
                self.persist(change, actions);
                if !repeated[i] {
                    actions.push(Action::Subscribe {
                        filter,
                        sub,
                        existed,
                    });
                }
            }
            reasons.push(code);
        }
        let suback = SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: AckProperties::default(),
        };
        self.send(&Packet::SubAck(suback), out);
    }

    /// The SUBACK code for one filter: granted QoS or why it is refused.
    fn subscribe_one(
        &self,
        filter: &crate::router::topic::TopicFilter,
        options: crate::codec::SubscriptionOptions,
        id: Option<u32>,
        policy: &dyn AccessPolicy,
    ) -> ReasonCode {
        let l = &self.limits;
        if filter.len() > l.max_topic_len || filter.level_count() > l.max_topic_levels {
            return ReasonCode::TopicFilterInvalid; // bad input #38
        }
        if filter.is_shared() && !l.shared_subscriptions {
            return ReasonCode::SharedSubscriptionsNotSupported;
        }
        if filter.has_wildcards() && !l.wildcard_subscriptions {
            return ReasonCode::WildcardSubscriptionsNotSupported;
        }
        if id.is_some() && !l.subscription_identifiers {
            return ReasonCode::SubscriptionIdentifiersNotSupported;
        }
        let existed = self.data.subscriptions.contains(filter);
        if !existed && self.data.subscriptions.len() >= l.max_subscriptions {
            return ReasonCode::QuotaExceeded; // bad input #61
        }
        if !policy.may_subscribe(filter) {
            return ReasonCode::NotAuthorized;
        }
        ReasonCode::granted(options.qos.min(self.max_qos()))
    }

    /// UNSUBSCRIBE -> router actions and UNSUBACK (v5: 0x00 or 0x11 per filter)
    /// [MQTT-3.10.4].
    fn on_unsubscribe(&mut self, u: Unsubscribe, out: &mut BytesMut, actions: &mut Vec<Action>) {
        let v5 = self.connection().is_some_and(|c| c.protocol.is_v5());
        let mut reasons = Vec::new();
        for filter in u.filters {
            let code = if self.data.subscriptions.remove(&filter).is_some() {
                let change = Change::Unsubscribed {
                    filter: filter.clone(),
                };
                self.persist(change, actions);
                actions.push(Action::Unsubscribe { filter });
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            };
            if v5 {
                reasons.push(code);
            }
        }
        let unsuback = UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: AckProperties::default(),
        };
        self.send(&Packet::UnsubAck(unsuback), out);
    }

    /// DISCONNECT from the client [MQTT-3.14.4]: the server sends nothing back and closes.
    fn on_disconnect(
        &mut self,
        d: Disconnect,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        if !d.reason.client_may_disconnect_with() {
            // bad input #64.
            return self.violation(ReasonCode::ProtocolError, now_ms, out, actions);
        }
        if let Some(expiry) = d.properties.session_expiry_interval {
            let was_zero = self.connection().is_some_and(|c| c.connect_expiry_was_zero);
            if was_zero && expiry != 0 {
                // [MQTT-3.14.2-2] (bad input #65).
                return self.violation(ReasonCode::ProtocolError, now_ms, out, actions);
            }
            self.data.session_expiry_secs = expiry.min(self.limits.max_session_expiry);
        }
        let how = if d.reason == ReasonCode::DisconnectWithWillMessage {
            Detach::WithWill
        } else {
            Detach::Normal
        };
        actions.push(Action::Close {
            will: how == Detach::WithWill,
        });
        self.detach(how, now_ms, actions);
    }
}
