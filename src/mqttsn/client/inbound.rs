//! Datagrams from the client: the will prompting (6.2), REGISTER (6.5), PUBLISH and its
//! acknowledgements (6.6), SUBSCRIBE/UNSUBSCRIBE (6.9), PINGREQ (6.11, 6.14), DISCONNECT
//! (6.12, 6.14) and the will updates (6.4), translated into packets for the session or
//! answered here when MQTT-SN alone decides (REGACK, PINGRESP, an unknown topic id).

use crate::codec::topic::TopicName;
use crate::codec::{
    Ack, AckProperties, Packet, PacketId, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscribeProperties, SubscriptionOptions, Unsubscribe,
};

use super::super::codec::{
    MsgId, ReturnCode, SnMessage, SnPublish, SnSubscribe, SubTopic, TopicId, TopicRef, WillTopic,
};
use super::super::topics;
use super::super::translate::{Ending, WillData};
use super::{Effect, Purpose, SnClient, State};

impl SnClient {
    /// One datagram from the client (CONNECT is the gateway's, see `Gateway`).
    pub(crate) fn on_message(&mut self, msg: SnMessage, now_ms: u64, fx: &mut Vec<Effect>) {
        self.last_heard_ms = now_ms;
        match &self.state {
            State::AwaitWillTopic { .. } | State::AwaitWillMsg { .. } => {
                return self.on_will_prompting(msg, now_ms, fx);
            }
            State::Connecting { .. } => {
                // Retransmissions of the will answers while the session sets up: its
                // CONNACK answers them.
                self.stats.ignored += 1;
                return;
            }
            State::Gone => return,
            State::Active | State::Asleep { .. } | State::Awake { .. } => {}
        }
        if !matches!(msg, SnMessage::WillMsg { .. }) {
            self.quiet_since_connack = false;
        }
        let fed_session = fx
            .iter()
            .filter(|e| matches!(e, Effect::Session(_)))
            .count();
        self.on_connected_message(msg, now_ms, fx);
        // The session's answer settles an awake client (`on_session_output`); without one
        // it is settled now.
        if fx
            .iter()
            .filter(|e| matches!(e, Effect::Session(_)))
            .count()
            == fed_session
        {
            self.settle_awake(fx);
        }
    }

    fn on_connected_message(&mut self, msg: SnMessage, now_ms: u64, fx: &mut Vec<Effect>) {
        match msg {
            SnMessage::Register {
                msg_id, topic_name, ..
            } => self.on_register(msg_id, topic_name, fx),
            SnMessage::RegAck {
                topic_id,
                msg_id,
                code,
            } => self.on_regack(topic_id, msg_id, code, now_ms, fx),
            SnMessage::Publish(p) => self.on_publish(p, now_ms, fx),
            SnMessage::PubAck { msg_id, code, .. } => self.on_puback(msg_id, code, now_ms, fx),
            SnMessage::PubRec { msg_id } => self.on_pubrec(msg_id, now_ms, fx),
            SnMessage::PubComp { msg_id } => self.on_pubcomp(msg_id, now_ms, fx),
            SnMessage::PubRel { msg_id } => match PacketId::new(msg_id.0) {
                Some(id) => self.feed_session(Packet::PubRel(Ack::new(id)), now_ms, fx),
                None => self.stats.ignored += 1,
            },
            SnMessage::Subscribe(s) => self.on_subscribe(s, now_ms, fx),
            SnMessage::Unsubscribe { msg_id, topic } => {
                self.on_unsubscribe(msg_id, topic, now_ms, fx)
            }
            SnMessage::PingReq { .. } => self.on_pingreq(now_ms, fx),
            SnMessage::Disconnect { duration } => self.on_disconnect(duration, now_ms, fx),
            SnMessage::WillTopicUpd(w) => self.on_will_topic_update(w, now_ms, fx),
            SnMessage::WillMsgUpd { msg } => self.on_will_msg_update(msg, now_ms, fx),
            SnMessage::WillMsg { .. } if self.quiet_since_connack => {
                // Its CONNACK was lost: the client retransmits the last will answer (6.13).
                let code = ReturnCode::Accepted;
                self.send(SnMessage::ConnAck { code }, fx);
            }
            // Messages a client never sends to a gateway, CONNECT (the gateway's), and will
            // prompting answers outside the prompting.
            SnMessage::Advertise { .. }
            | SnMessage::SearchGw { .. }
            | SnMessage::GwInfo { .. }
            | SnMessage::Connect(_)
            | SnMessage::ConnAck { .. }
            | SnMessage::WillTopicReq
            | SnMessage::WillTopic(_)
            | SnMessage::WillMsgReq
            | SnMessage::WillMsg { .. }
            | SnMessage::SubAck { .. }
            | SnMessage::UnsubAck { .. }
            | SnMessage::PingResp
            | SnMessage::WillTopicResp { .. }
            | SnMessage::WillMsgResp { .. } => self.stats.ignored += 1,
        }
    }

    /// WILLTOPIC and WILLMSG after WILLTOPICREQ (6.2). A refused will topic is answered with
    /// CONNACK "not supported" and ends the attempt.
    fn on_will_prompting(&mut self, msg: SnMessage, now_ms: u64, fx: &mut Vec<Effect>) {
        let started_ms = match &self.state {
            State::AwaitWillTopic { started_ms } | State::AwaitWillMsg { started_ms, .. } => {
                *started_ms
            }
            _ => return,
        };
        match (msg, &self.state) {
            (SnMessage::WillTopic(None), State::AwaitWillTopic { .. }) => {
                // The empty WILLTOPIC: no will after all.
                self.will = None;
                self.connect_session(Purpose::Connect, now_ms, fx);
            }
            (
                SnMessage::WillTopic(Some(w)),
                State::AwaitWillTopic { .. } | State::AwaitWillMsg { .. },
            ) => match topics::topic_name(w.topic, &self.settings.limits) {
                Some(topic) => {
                    self.state = State::AwaitWillMsg {
                        started_ms,
                        topic,
                        qos: w.qos,
                        retain: w.retain,
                    };
                    self.send(SnMessage::WillMsgReq, fx);
                }
                None => {
                    let code = ReturnCode::NotSupported;
                    self.send(SnMessage::ConnAck { code }, fx);
                    self.state = State::Gone;
                }
            },
            (
                SnMessage::WillMsg { msg },
                State::AwaitWillMsg {
                    topic, qos, retain, ..
                },
            ) => {
                self.will = Some(WillData {
                    topic: topic.clone(),
                    qos: *qos,
                    retain: *retain,
                    message: msg,
                });
                self.connect_session(Purpose::Connect, now_ms, fx);
            }
            _ => self.stats.ignored += 1,
        }
    }

    /// REGISTER from the client (6.5): the gateway assigns the id and answers REGACK itself.
    fn on_register(&mut self, msg_id: MsgId, name: bytes::Bytes, fx: &mut Vec<Effect>) {
        let (topic_id, code) = match topics::topic_name(name, &self.settings.limits) {
            None => (TopicId::NONE, ReturnCode::NotSupported),
            Some(topic) => match self.topics.assign(&topic, true) {
                Ok(id) => (id, ReturnCode::Accepted),
                Err(topics::RegistryFull) => (TopicId::NONE, ReturnCode::NotSupported),
            },
        };
        let regack = SnMessage::RegAck {
            topic_id,
            msg_id,
            code,
        };
        self.send(regack, fx);
    }

    /// The topic a client PUBLISH names, or the return code refusing it (6.6: an unknown id
    /// is "invalid topic id").
    fn inbound_topic(&self, topic: TopicRef) -> Result<TopicName, ReturnCode> {
        match topic {
            TopicRef::Normal(id) => self
                .topics
                .name(id)
                .cloned()
                .ok_or(ReturnCode::InvalidTopicId),
            TopicRef::Predefined(id) => self
                .settings
                .predefined
                .name(id)
                .cloned()
                .ok_or(ReturnCode::InvalidTopicId),
            TopicRef::Short(s) => {
                topics::topic_name(bytes::Bytes::copy_from_slice(&s), &self.settings.limits)
                    .ok_or(ReturnCode::NotSupported)
            }
        }
    }

    /// PUBLISH from the client (6.6; QoS -1 from a connected client is QoS 0, 6.8).
    fn on_publish(&mut self, p: SnPublish, now_ms: u64, fx: &mut Vec<Effect>) {
        let qos = p.qos.mqtt().unwrap_or(QoS::AtMostOnce);
        let packet_id = PacketId::new(p.msg_id.0);
        if qos != QoS::AtMostOnce && packet_id.is_none() {
            // A QoS 1/2 exchange needs a msg id; there is nothing to acknowledge.
            self.stats.ignored += 1;
            return;
        }
        let field = TopicId(u16::from_be_bytes(topic_field(p.topic)));
        let topic = match self.inbound_topic(p.topic) {
            Ok(t) => t,
            Err(code) => {
                let puback = SnMessage::PubAck {
                    topic_id: field,
                    msg_id: p.msg_id,
                    code,
                };
                return self.send(puback, fx);
            }
        };
        if qos != QoS::AtMostOnce {
            Self::remember(&mut self.puback_topics, p.msg_id, field);
        }
        let publish = Publish {
            dup: p.dup && qos != QoS::AtMostOnce,
            qos,
            retain: p.retain,
            topic,
            packet_id: if qos == QoS::AtMostOnce {
                None
            } else {
                packet_id
            },
            properties: PublishProperties::default(),
            payload: p.data,
        };
        self.feed_session(Packet::Publish(publish), now_ms, fx);
    }

    /// SUBSCRIBE (6.9): a plain name without wildcards is given an id that SUBACK carries;
    /// a pre-defined id must be configured (else SUBACK "invalid topic id").
    fn on_subscribe(&mut self, s: SnSubscribe, now_ms: u64, fx: &mut Vec<Effect>) {
        let Some(packet_id) = PacketId::new(s.msg_id.0) else {
            self.stats.ignored += 1;
            return;
        };
        let (filter, topic_id) = match self.sub_filter(&s.topic) {
            Ok(f) => f,
            Err(code) => {
                let refuse = SnMessage::SubAck {
                    qos: QoS::AtMostOnce,
                    topic_id: TopicId::NONE,
                    msg_id: s.msg_id,
                    code,
                };
                return self.send(refuse, fx);
            }
        };
        Self::remember(&mut self.suback_topics, s.msg_id, topic_id);
        let options = SubscriptionOptions {
            qos: s.qos,
            ..SubscriptionOptions::default()
        };
        let subscribe = Subscribe {
            packet_id,
            filters: vec![(filter, options)],
            properties: SubscribeProperties::default(),
        };
        self.feed_session(Packet::Subscribe(subscribe), now_ms, fx);
    }

    /// The filter a SUBSCRIBE/UNSUBSCRIBE names and the topic id SUBACK reports for it.
    fn sub_filter(
        &mut self,
        topic: &SubTopic,
    ) -> Result<(crate::codec::topic::TopicFilter, TopicId), ReturnCode> {
        match topic {
            SubTopic::Name(name) => {
                let filter = topics::topic_filter(name.clone()).ok_or(ReturnCode::NotSupported)?;
                if filter.has_wildcards() || filter.is_shared() {
                    return Ok((filter, TopicId::NONE));
                }
                let topic = topics::topic_name(name.clone(), &self.settings.limits)
                    .ok_or(ReturnCode::NotSupported)?;
                let id = self
                    .topics
                    .assign(&topic, true)
                    .map_err(|topics::RegistryFull| ReturnCode::NotSupported)?;
                Ok((filter, id))
            }
            SubTopic::Predefined(id) => {
                let name = self
                    .settings
                    .predefined
                    .name(*id)
                    .ok_or(ReturnCode::InvalidTopicId)?;
                let filter = topics::topic_filter(name.as_shared().clone())
                    .ok_or(ReturnCode::InvalidTopicId)?;
                Ok((filter, *id))
            }
            SubTopic::Short(s) => {
                let filter = topics::topic_filter(bytes::Bytes::copy_from_slice(s))
                    .ok_or(ReturnCode::NotSupported)?;
                Ok((filter, TopicId::NONE))
            }
        }
    }

    /// UNSUBSCRIBE (6.9). A topic that names nothing is answered UNSUBACK at once (there is
    /// nothing to remove, and UNSUBACK carries no return code).
    fn on_unsubscribe(
        &mut self,
        msg_id: MsgId,
        topic: SubTopic,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let Some(packet_id) = PacketId::new(msg_id.0) else {
            self.stats.ignored += 1;
            return;
        };
        let filter = match &topic {
            SubTopic::Name(n) => topics::topic_filter(n.clone()),
            SubTopic::Predefined(id) => self
                .settings
                .predefined
                .name(*id)
                .and_then(|n| topics::topic_filter(n.as_shared().clone())),
            SubTopic::Short(s) => topics::topic_filter(bytes::Bytes::copy_from_slice(s)),
        };
        match filter {
            Some(f) => {
                let u = Unsubscribe {
                    packet_id,
                    filters: vec![f],
                    user_properties: Vec::new(),
                };
                self.feed_session(Packet::Unsubscribe(u), now_ms, fx);
            }
            None => self.send(SnMessage::UnsubAck { msg_id }, fx),
        }
    }

    /// PUBACK for our QoS 1 PUBLISH, or a refusal of any of our PUBLISHes (5.4.13). "Invalid
    /// topic id" makes the gateway forget the id, so the next PUBLISH registers it again.
    fn on_puback(&mut self, msg_id: MsgId, code: ReturnCode, now_ms: u64, fx: &mut Vec<Effect>) {
        let Some((id, qos, topic)) = self.out.take_published(msg_id) else {
            return self.wrong_proof(now_ms, fx);
        };
        // It echoed the msg id of our PUBLISH: the address is the client's.
        self.validation.proved();
        if code == ReturnCode::InvalidTopicId
            && let Some(t) = self.topics.known_id(&topic)
        {
            self.topics.remove(t);
        }
        let reason = match code {
            ReturnCode::Accepted => ReasonCode::Success,
            ReturnCode::Congestion => ReasonCode::QuotaExceeded,
            ReturnCode::InvalidTopicId => ReasonCode::TopicNameInvalid,
            ReturnCode::NotSupported => ReasonCode::ImplementationSpecificError,
        };
        let ack = Ack {
            packet_id: id,
            reason,
            properties: AckProperties::default(),
        };
        // A QoS 2 flow refused with PUBACK ends with a failed PUBREC [MQTT-4.3.3].
        let packet = match qos {
            QoS::ExactlyOnce => Packet::PubRec(ack),
            QoS::AtMostOnce | QoS::AtLeastOnce => Packet::PubAck(ack),
        };
        self.feed_session(packet, now_ms, fx);
        self.pump(now_ms, fx);
    }

    /// PUBREC for our QoS 2 PUBLISH: the session answers PUBREL, which continues the flow.
    /// Like PUBACK, it proves the address.
    fn on_pubrec(&mut self, msg_id: MsgId, now_ms: u64, fx: &mut Vec<Effect>) {
        match self.out.pubrec(msg_id) {
            Some(id) => {
                self.validation.proved();
                self.feed_session(Packet::PubRec(Ack::new(id)), now_ms, fx);
                self.pump(now_ms, fx);
            }
            None => self.wrong_proof(now_ms, fx),
        }
    }

    /// PUBCOMP ends our QoS 2 flow (and proves the address).
    fn on_pubcomp(&mut self, msg_id: MsgId, now_ms: u64, fx: &mut Vec<Effect>) {
        match self.out.take_released(msg_id) {
            Some(id) => {
                self.validation.proved();
                self.feed_session(Packet::PubComp(Ack::new(id)), now_ms, fx);
                self.pump(now_ms, fx);
            }
            None => self.wrong_proof(now_ms, fx),
        }
    }

    /// PINGREQ (6.11): an active client is answered at once; a sleeping one wakes up, gets
    /// its buffered messages, then PINGRESP (6.14). The session is not involved: its keep
    /// alive is the gateway's business (see `translate::mqtt_connect`).
    fn on_pingreq(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        match self.state {
            State::Asleep { timeout_ms } | State::Awake { timeout_ms } => {
                self.state = State::Awake { timeout_ms };
                self.resend_outstanding(now_ms, fx);
                self.pump(now_ms, fx);
            }
            _ => self.send(SnMessage::PingResp, fx),
        }
    }

    /// DISCONNECT (6.12): without a duration (or 0) the connection ends and the will is
    /// discarded; with one the client sleeps for it (6.14). Both are acknowledged.
    fn on_disconnect(&mut self, duration: Option<u16>, now_ms: u64, fx: &mut Vec<Effect>) {
        match duration.and_then(Self::grace_ms) {
            Some(timeout_ms) => {
                self.state = State::Asleep { timeout_ms };
                self.send(SnMessage::Disconnect { duration: None }, fx);
            }
            None => self.end(Ending::Normal, true, now_ms, fx),
        }
    }

    /// WILLTOPICUPD (6.4): the empty form deletes the will; otherwise the topic (and its QoS
    /// and retain) change and the message stays.
    fn on_will_topic_update(&mut self, w: Option<WillTopic>, now_ms: u64, fx: &mut Vec<Effect>) {
        let will = match w {
            None => None,
            Some(w) => match topics::topic_name(w.topic, &self.settings.limits) {
                Some(topic) => Some(WillData {
                    topic,
                    qos: w.qos,
                    retain: w.retain,
                    message: self
                        .will
                        .as_ref()
                        .map(|d| d.message.clone())
                        .unwrap_or_default(),
                }),
                None => {
                    let code = ReturnCode::NotSupported;
                    return self.send(SnMessage::WillTopicResp { code }, fx);
                }
            },
        };
        self.swap_will(will, Purpose::WillTopicUpdate, now_ms, fx);
    }

    /// WILLMSGUPD (6.4): needs a will topic to attach the message to.
    fn on_will_msg_update(&mut self, msg: bytes::Bytes, now_ms: u64, fx: &mut Vec<Effect>) {
        let Some(mut will) = self.will.clone() else {
            let code = ReturnCode::NotSupported;
            return self.send(SnMessage::WillMsgResp { code }, fx);
        };
        will.message = msg;
        self.swap_will(Some(will), Purpose::WillMsgUpdate, now_ms, fx);
    }

    /// Gives the session the new will: DISCONNECT (normal: the old will is discarded, the
    /// session stays) then CONNECT resuming it with the new will; its CONNACK is answered
    /// WILLTOPICRESP/WILLMSGRESP. See `translate::WILL_SWAP_EXPIRY_SECS`.
    fn swap_will(
        &mut self,
        will: Option<WillData>,
        purpose: Purpose,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let d = super::translate::mqtt_disconnect(Ending::WillSwap, self.clean_session);
        self.feed_session(Packet::Disconnect(d), now_ms, fx);
        self.will = will;
        self.connect_session(purpose, now_ms, fx);
    }
}

/// The two TopicId octets of a PUBLISH, as PUBACK echoes them.
fn topic_field(t: TopicRef) -> [u8; 2] {
    match t {
        TopicRef::Normal(id) | TopicRef::Predefined(id) => id.0.to_be_bytes(),
        TopicRef::Short(s) => s,
    }
}
