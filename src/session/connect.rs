//! CONNECT-level decisions: what the shard checks before a session exists
//! (`validate_connect`, `refuse_connect`) and attaching a connection to a session
//! (`Session::connect`: clean start, expiry, CONNACK, resend, drain).

use bytes::BytesMut;

use crate::codec::{
    self, ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, QoS, ReasonCode,
};
use crate::config::Limits;

use super::alias::TopicAliasPolicy;
use super::data::Outbound;
use super::types::{ClientId, ClientIdError};
use super::{Action, Connection, Session, State, max_qos};

/// What `validate_connect` settled about the client id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Use the client's own id.
    UseId(ClientId),
    /// The client sent an empty id and may have one assigned [MQTT-3.1.3-6]: the shard calls
    /// `assign_client_id` with a seed it never reuses, then `connect(.., assigned_client_id:
    /// true, ..)` so that a v5 CONNACK carries it [MQTT-3.2.2-16].
    AssignId,
}

/// Checks a decoded CONNECT against the protocol rules that need no session and against
/// `limits`. `Err(code)` is the CONNACK refusal (write it with `refuse_connect`, then close).
///
/// - v5 Authentication Method: not decided here; which methods are supported depends on
///   the authentication settings in force (the shard answers 0x8C [MQTT-4.12.0-1] for any
///   other, bad input #23).
/// - Empty client id: 3.1 -> refused (the 3.1 spec requires 1..23 characters); 3.1.1 ->
///   refused unless clean session [MQTT-3.1.3-8] (bad input #17); v5 -> assigned.
///   Longer than `max_client_id_len` -> 0x85 (3.x return code 2) [MQTT-3.1.3-5].
/// - Keep alive (bad input #28): 3.x above `max_keep_alive` -> refused with return code 2
///   (as mosquitto: 3.x has no way to tell the client another value); 0 stays "no keep
///   alive" for 3.x. v5 is never refused: CONNACK carries Server Keep Alive. A
///   `max_keep_alive` of 0 means no cap.
/// - Will: Will Retain with `retain_available` false -> 0x9A [MQTT-3.2.2-... retain not
///   supported]; Will QoS above `max_qos` -> 0x9B [MQTT-3.2.2-12]; a will topic starting with
///   `$` -> 0x87 (clients never publish into `$` topics, bad input #37); a will topic over
///   the topic limits -> 0x90.
pub fn validate_connect(connect: &Connect, limits: &Limits) -> Result<ConnectDecision, ReasonCode> {
    let v = connect.protocol;
    if !v.is_v5() && limits.max_keep_alive != 0 && connect.keep_alive > limits.max_keep_alive {
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    if let Some(will) = &connect.will {
        if will.retain && !limits.retain_available {
            return Err(ReasonCode::RetainNotSupported);
        }
        if will.qos > max_qos(limits) {
            return Err(ReasonCode::QoSNotSupported);
        }
        if will.topic.is_dollar() {
            return Err(ReasonCode::NotAuthorized);
        }
        if will.topic.len() > limits.max_topic_len
            || will.topic.level_count() > limits.max_topic_levels
        {
            return Err(ReasonCode::TopicNameInvalid);
        }
    }
    match ClientId::new(connect.client_id.clone(), limits) {
        Ok(id) => Ok(ConnectDecision::UseId(id)),
        Err(ClientIdError::TooLong) => Err(ReasonCode::ClientIdentifierNotValid),
        Err(ClientIdError::Empty) => match v {
            ProtocolVersion::V31 => Err(ReasonCode::ClientIdentifierNotValid),
            ProtocolVersion::V311 if !connect.clean_start => {
                Err(ReasonCode::ClientIdentifierNotValid)
            }
            ProtocolVersion::V311 | ProtocolVersion::V5 => Ok(ConnectDecision::AssignId),
        },
    }
}

/// Writes the CONNACK that refuses a connection with `code` (3.x: mapped to its return code
/// by the encoder) [MQTT-3.2.2-6: session present is 0 with a non-zero code].
pub fn refuse_connect(version: ProtocolVersion, code: ReasonCode, out: &mut BytesMut) {
    let connack = ConnAck {
        session_present: false,
        reason: code,
        properties: ConnAckProperties::default(),
    };
    codec::encode(&Packet::ConnAck(connack), version, out);
}

/// The session expiry granted for a CONNECT, in seconds. 3.x: clean session -> 0, else
/// `session_expiry_3x` (3.x has no expiry of its own [MQTT-3.1.2-4..5]); v5: the requested
/// value, absent = 0 [MQTT-3.1.2-11]. Both capped by `max_session_expiry`.
fn granted_session_expiry(connect: &Connect, limits: &Limits) -> u32 {
    let requested = if connect.protocol.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        limits.session_expiry_3x
    };
    requested.min(limits.max_session_expiry)
}

/// The keep alive in force, and the Server Keep Alive to announce (v5) [MQTT-3.2.2-21]:
/// `server_keep_alive` when set, for every v5 client; otherwise a v5 keep alive of 0 or
/// above `max_keep_alive` becomes that cap (and is announced). 3.x: the client's own.
fn effective_keep_alive(connect: &Connect, limits: &Limits) -> (u16, Option<u16>) {
    let asked = connect.keep_alive;
    let cap = limits.max_keep_alive;
    if !connect.protocol.is_v5() {
        return (asked, None);
    }
    match limits.server_keep_alive {
        Some(fixed) => (fixed, Some(fixed)),
        None if cap != 0 && (asked == 0 || asked > cap) => (cap, Some(cap)),
        None => (asked, None),
    }
}

/// How many topic aliases the broker may use towards this client: none for 3.x, when the
/// client's Topic Alias Maximum is absent or 0 [MQTT-3.2.2-... the Server MUST NOT send a
/// Topic Alias], or with `outbound_topic_aliases = "off"`; else the smaller of the client's
/// maximum and ours [MQTT-3.3.2-... not greater than the client's Topic Alias Maximum].
fn outbound_alias_cap(connect: &Connect, limits: &Limits) -> u16 {
    let theirs = connect.properties.topic_alias_maximum.unwrap_or(0);
    match limits.outbound_topic_aliases {
        _ if !connect.protocol.is_v5() => 0,
        TopicAliasPolicy::Off => 0,
        TopicAliasPolicy::Recent | TopicAliasPolicy::Hot => {
            theirs.min(limits.outbound_topic_alias_maximum)
        }
    }
}

impl Session {
    /// Body of `Session::connect`.
    pub(super) fn attach(
        &mut self,
        connect: Connect,
        how: super::Attach<'_>,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let super::Attach {
            session_present,
            assigned_client_id,
            auth,
        } = how;
        if let State::Connected(_) = self.state {
            // The shard must call `taken_over` first; if it did not, the old connection ends
            // here as if lost, so that its will and flows stay consistent.
            self.connection_lost(now_ms, actions);
        }
        let resumable = matches!(self.state, State::Offline(_)) && session_present;
        let resume = resumable && !connect.clean_start;
        if !resume {
            self.discard_for_clean_start(now_ms, actions);
        }
        // [MQTT-3.1.3-9]: a connection to this session before the will delay ends cancels
        // the pending will (on resume; a clean start published it above as the session end).
        // Detached: a view would keep the whole read of the CONNECT alive for the session's
        // life.
        self.data.will = connect.will.as_ref().map(|w| Box::new(w.detached()));
        self.data.will_delay_secs = if connect.protocol.is_v5() {
            connect
                .will
                .as_ref()
                .and_then(|w| w.properties.will_delay_interval)
                .unwrap_or(0)
        } else {
            0
        };
        let expiry = granted_session_expiry(&connect, &self.limits);
        self.data.session_expiry_secs = expiry;
        let (keep_alive, server_keep_alive) = effective_keep_alive(&connect, &self.limits);
        let props = &connect.properties;
        let send_window = self
            .limits
            .max_inflight
            .max(1)
            .min(props.receive_maximum.map_or(u16::MAX, |r| r.max(1)));
        let connection = Connection {
            protocol: connect.protocol,
            keep_alive_timeout_ms: (keep_alive != 0).then(|| u32::from(keep_alive) * 1500),
            last_packet_ms: now_ms,
            aliases: None,
            out_alias_cap: outbound_alias_cap(&connect, &self.limits),
            send_window,
            client_max_packet: props.maximum_packet_size.unwrap_or(u32::MAX),
            connect_expiry_was_zero: props.session_expiry_interval.unwrap_or(0) == 0,
            held_acks: 0,
        };
        self.protocol = Some(connect.protocol);
        self.state = State::Connected(connection);

        let mut properties = ConnAckProperties::default();
        if connect.protocol.is_v5() {
            self.fill_connack_properties(&mut properties, &connect, assigned_client_id);
            properties.server_keep_alive = server_keep_alive;
            if let Some(a) = auth {
                properties.authentication_method = Some(a.method.clone());
                properties.authentication_data = Some(a.server_final.clone());
            }
        }
        let connack = ConnAck {
            session_present: resume,
            reason: ReasonCode::Success,
            properties,
        };
        self.send(&Packet::ConnAck(connack), out);
        // Stored before the CONNACK may leave (the shard holds this call's output until the
        // commit): a client told "session present" finds it after a crash.
        self.sync_persistence(actions);
        if resume {
            self.resend_inflight(now_ms, out, actions);
        }
        self.drain_queue(now_ms, out, actions);
    }

    /// Clean start (or no session to resume): a pending will of the previous connection is
    /// published now because the session it belonged to ends [MQTT-3.1.3-9]; the router
    /// forgets the old subscriptions; the persistent state is cleared [MQTT-3.1.2-4].
    fn discard_for_clean_start(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if matches!(self.state, State::Offline(o) if o.will_due_ms.is_some()) {
            self.publish_will(now_ms, actions);
        }
        if self.persisted {
            actions.push(Action::Persist(super::persist::Change::Removed));
            self.persisted = false;
        }
        // After `Ended` the shard already removed the subscriptions from the router.
        if !matches!(self.state, State::Ended) {
            for (filter, _) in self.data.subscriptions.filters() {
                actions.push(Action::Unsubscribe { filter });
            }
        }
        super::lifecycle::return_to_groups(self.data.take(), actions);
    }

    /// v5 CONNACK properties: everything that differs from the spec's defaults.
    fn fill_connack_properties(
        &self,
        p: &mut ConnAckProperties,
        connect: &Connect,
        assigned_client_id: bool,
    ) {
        let l = &self.limits;
        let requested = connect.properties.session_expiry_interval.unwrap_or(0);
        if self.data.session_expiry_secs != requested {
            p.session_expiry_interval = Some(self.data.session_expiry_secs);
        }
        let rm = l.receive_maximum.max(1);
        if rm != u16::MAX {
            p.receive_maximum = Some(rm);
        }
        let mq = max_qos(l);
        if mq != QoS::ExactlyOnce {
            p.maximum_qos = Some(mq);
        }
        if !l.retain_available {
            p.retain_available = Some(false);
        }
        p.maximum_packet_size = Some(l.max_packet_size);
        if assigned_client_id {
            p.assigned_client_identifier = Some(self.client_id.as_mqtt_str().clone());
        }
        if l.topic_alias_maximum != 0 {
            p.topic_alias_maximum = Some(l.topic_alias_maximum);
        }
        if !l.wildcard_subscriptions {
            p.wildcard_subscription_available = Some(false);
        }
        if !l.subscription_identifiers {
            p.subscription_identifiers_available = Some(false);
        }
        if !l.shared_subscriptions {
            p.shared_subscription_available = Some(false);
        }
        if connect.properties.request_response_information == Some(true) {
            // Validated as an MQTT string with the configuration.
            p.response_information = l
                .response_information
                .as_deref()
                .and_then(crate::codec::MqttStr::try_from_str);
        }
    }

    /// On resume: resend every unacknowledged PUBLISH with DUP and every PUBREL, in their
    /// original order [MQTT-4.4.0-1], [MQTT-4.6.0-1]. PUBLISH flows beyond the new window
    /// (a smaller client Receive Maximum) go back to the front of the queue with their
    /// packet ids released, so the client's Receive Maximum holds [MQTT-4.9.0-... send quota].
    fn resend_inflight(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        let window = match &self.state {
            State::Connected(c) => usize::from(c.send_window),
            State::Detached | State::Offline(_) | State::Ended => return,
        };
        let mut kept = std::collections::VecDeque::new();
        let mut back_to_queue = Vec::new();
        for entry in std::mem::take(&mut self.data.inflight) {
            match entry {
                Outbound::Published { delivery, .. } if kept.len() >= window => {
                    back_to_queue.push(delivery);
                }
                other => kept.push_back(other),
            }
        }
        for q in &back_to_queue {
            let change = super::persist::Change::Sent {
                seq: q.seq,
                qos: q.qos,
                packet_id: None,
            };
            self.persist(change, actions);
        }
        self.data.requeue_front(back_to_queue);
        let mut resent = std::collections::VecDeque::with_capacity(kept.len());
        for entry in kept {
            match &entry {
                Outbound::Published {
                    packet_id,
                    delivery,
                } => {
                    // A flow whose PUBLISH no longer fits the client's Maximum Packet Size is
                    // abandoned (dropped and counted by `write_publish`).
                    if !self.write_publish(delivery, Some(*packet_id), true, now_ms, out) {
                        let seq = delivery.seq;
                        self.persist(super::persist::Change::Completed { seq }, actions);
                        continue;
                    }
                }
                Outbound::Released { packet_id, .. } => {
                    self.send(&Packet::PubRel(codec::Ack::new(*packet_id)), out);
                }
            }
            resent.push_back(entry);
        }
        self.data.inflight = resent;
    }
}
