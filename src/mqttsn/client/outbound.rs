//! Packets from the session to the client: CONNACK, the acknowledgements of the client's
//! requests, and deliveries. A delivery waits in a bounded queue while the client sleeps
//! (6.14) or while its topic is being registered (6.10: REGISTER, REGACK, then PUBLISH);
//! the one outstanding REGISTER and the one outstanding QoS 1/2 exchange (PUBLISH or PUBREL)
//! are retransmitted every T_retry, N_retry times, before the client counts as lost (6.13).
//!
//! The queue never holds more than one QoS 1/2 message in practice: the session's window
//! towards the client is one (`translate::WINDOW`), so the rest wait in the session's own
//! bounded queue, where MQTT's rules for them already live.
//!
//! Until the client is validated (`super::validation`) a delivery that does not fit its
//! budget waits in the queue as for a sleeping client, and a REGISTER challenges the client
//! to prove its address (`challenge`). The gateway's MsgIds (REGISTER, and PUBLISH/PUBREL,
//! which carry the session's packet id shifted by a per-client offset) start where the
//! client's seed says, so that they cannot be guessed from elsewhere.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::codec::topic::TopicName;
use crate::codec::{
    Ack, AckProperties, ConnAck, Packet, PacketId, Publish, QoS, ReasonCode, SubAck,
};

use super::super::codec::{MsgId, ReturnCode, SnMessage, SnPublish, SnQoS, TopicId, TopicRef};
use super::super::topics::{self, RegistryFull};
use super::super::translate::{Ending, return_code};
use super::{Effect, Purpose, SnClient, State};

/// Largest msg id of our REGISTERs: some clients write REGACK's fields as signed 16-bit
/// numbers (`mqtt-sn-12` 1.0.9 fails on larger ones), so the REGISTER ids keep 15 bits.
const MAX_REGISTER_MSG_ID: u16 = 0x7FFF;

/// A delivery or PUBREL waiting to go out.
#[derive(Clone, Debug)]
enum Pending {
    Publish(OutPublish),
    PubRel(PacketId),
}

#[derive(Clone, Debug)]
struct OutPublish {
    topic: TopicName,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    dup: bool,
    /// The session's packet id, used 1:1 as the MQTT-SN msg id; `None` for QoS 0.
    packet_id: Option<PacketId>,
}

/// When a message was last sent and how often it was sent again.
#[derive(Clone, Copy, Debug)]
struct Retry {
    sent_ms: u64,
    resent: u8,
}

impl Retry {
    fn new(now_ms: u64) -> Retry {
        Retry {
            sent_ms: now_ms,
            resent: 0,
        }
    }
}

/// Our REGISTER awaiting REGACK (one at a time, 6.5).
#[derive(Clone, Debug)]
struct RegisterSlot {
    msg: SnMessage,
    msg_id: MsgId,
    topic_id: TopicId,
    topic: TopicName,
    retry: Retry,
}

/// Our QoS 1/2 exchange awaiting its acknowledgement (one at a time, 6.6).
#[derive(Clone, Debug)]
struct FlowSlot {
    packet_id: PacketId,
    /// `packet_id` on the wire (`Outbound::wire`).
    msg_id: MsgId,
    stage: Stage,
    retry: Retry,
}

#[derive(Clone, Debug)]
enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published {
        publish: SnPublish,
        qos: QoS,
        topic: TopicName,
    },
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// Everything on its way to the client.
#[derive(Clone, Debug, Default)]
pub(super) struct Outbound {
    queue: VecDeque<Pending>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    register: Option<RegisterSlot>,
    flow: Option<FlowSlot>,
    /// Last msg id of our REGISTERs.
    last_msg_id: u16,
    /// PUBLISH and PUBREL carry the session's packet id shifted by this (`wire`).
    offset: u16,
}

impl Outbound {
    /// `seed`: the client's (see `SnClient::new`); its high half shifts packet ids, its low
    /// half says where REGISTER msg ids start.
    pub(super) fn new(seed: u32) -> Outbound {
        Outbound {
            offset: (seed >> 16) as u16,
            last_msg_id: seed as u16,
            ..Outbound::default()
        }
    }

    /// The MsgId of the session's packet id `id` towards this client: a bijection of
    /// 1..=65535 (0 stays unused: it means "no msg id").
    fn wire(&self, id: PacketId) -> MsgId {
        let shifted = (u32::from(id.get()) - 1 + u32::from(self.offset)) % 65_535 + 1;
        MsgId(shifted as u16)
    }

    /// Nothing waits and nothing is unacknowledged.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.register.is_none() && self.flow.is_none()
    }

    /// When the earliest outstanding message is due for retransmission.
    pub(super) fn next_retry(&self, retry_ms: u64) -> Option<u64> {
        let reg = self.register.as_ref().map(|r| r.retry.sent_ms);
        let flow = self.flow.as_ref().map(|f| f.retry.sent_ms);
        [reg, flow]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_add(retry_ms))
    }

    /// Ends our PUBLISH `msg_id` (PUBACK, or a refusal by PUBACK): its packet id, QoS and
    /// topic.
    pub(super) fn take_published(&mut self, msg_id: MsgId) -> Option<(PacketId, QoS, TopicName)> {
        match &self.flow {
            Some(FlowSlot {
                msg_id: m,
                stage: Stage::Published { .. },
                ..
            }) if *m == msg_id => {}
            _ => return None,
        }
        let slot = self.flow.take()?;
        match slot.stage {
            Stage::Published { qos, topic, .. } => Some((slot.packet_id, qos, topic)),
            Stage::Released => None,
        }
    }

    /// PUBREC for our QoS 2 PUBLISH (or again, after PUBREL): the packet id to hand the
    /// session, whose PUBREL moves the flow on.
    pub(super) fn pubrec(&self, msg_id: MsgId) -> Option<PacketId> {
        let f = self.flow.as_ref()?;
        let qos2 = match &f.stage {
            Stage::Published { qos, .. } => *qos == QoS::ExactlyOnce,
            Stage::Released => true,
        };
        (f.msg_id == msg_id && qos2).then_some(f.packet_id)
    }

    /// PUBCOMP ends our PUBREL `msg_id`.
    pub(super) fn take_released(&mut self, msg_id: MsgId) -> Option<PacketId> {
        match &self.flow {
            Some(f) if f.msg_id == msg_id && matches!(f.stage, Stage::Released) => {
                self.flow.take().map(|f| f.packet_id)
            }
            _ => None,
        }
    }

    /// The next msg id for a REGISTER: in 1..=`MAX_REGISTER_MSG_ID`, never the msg id of
    /// the flow in progress.
    fn next_msg_id(&mut self) -> MsgId {
        let busy = self.flow.as_ref().map(|f| f.msg_id.0);
        loop {
            self.last_msg_id = self.last_msg_id % MAX_REGISTER_MSG_ID + 1;
            if Some(self.last_msg_id) != busy {
                return MsgId(self.last_msg_id);
            }
        }
    }

    fn holds(&self, id: PacketId) -> bool {
        self.flow.as_ref().is_some_and(|f| f.packet_id == id)
            || self.queue.iter().any(|p| match p {
                Pending::Publish(p) => p.packet_id == Some(id),
                Pending::PubRel(r) => *r == id,
            })
    }

    fn pop(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        if let Pending::Publish(p) = &p {
            self.queued_bytes -= p.payload.len();
        }
        Some(p)
    }
}

/// What the head of the queue allows.
enum Step {
    Stop,
    PubRel(PacketId),
    Publish(TopicRef),
    Register(TopicName),
}

impl SnClient {
    /// One packet the session wrote for this client.
    pub(super) fn on_session_packet(&mut self, packet: Packet, now_ms: u64, fx: &mut Vec<Effect>) {
        match (&self.state, packet) {
            (State::Connecting { purpose, .. }, Packet::ConnAck(c)) => {
                let purpose = *purpose;
                self.on_connack(purpose, c, now_ms, fx);
            }
            // Output of the connection being replaced (e.g. DISCONNECT 0x8E on takeover).
            (State::Connecting { .. } | State::Gone, _) => {}
            (State::AwaitWillTopic { .. } | State::AwaitWillMsg { .. }, _) => {}
            (_, Packet::Publish(p)) => self.on_delivery(p, now_ms, fx),
            (_, Packet::PubRel(a)) => self.on_session_pubrel(a.packet_id, now_ms, fx),
            (_, Packet::PubAck(a)) => {
                let topic_id = Self::recall(&mut self.puback_topics, a.packet_id);
                self.send(puback(topic_id, a.packet_id, a.reason), fx);
            }
            (_, Packet::PubRec(a)) => {
                let topic_id = Self::recall(&mut self.puback_topics, a.packet_id);
                // MQTT-SN's PUBREC has no return code: a refusal is a PUBACK (5.4.13).
                let msg = if a.reason.is_error() {
                    puback(topic_id, a.packet_id, a.reason)
                } else {
                    SnMessage::PubRec {
                        msg_id: MsgId(a.packet_id.get()),
                    }
                };
                self.send(msg, fx);
            }
            (_, Packet::PubComp(a)) => {
                let msg_id = MsgId(a.packet_id.get());
                self.send(SnMessage::PubComp { msg_id }, fx);
            }
            (_, Packet::SubAck(s)) => {
                let msg = self.suback(s);
                self.send(msg, fx);
            }
            (_, Packet::UnsubAck(u)) => {
                let msg_id = MsgId(u.packet_id.get());
                self.send(SnMessage::UnsubAck { msg_id }, fx);
            }
            // The answer to the gateway's own keep-alive ping.
            (_, Packet::PingResp) => {}
            (_, Packet::Disconnect(_)) => {
                self.send(SnMessage::Disconnect { duration: None }, fx);
                self.state = State::Gone;
            }
            (
                _,
                Packet::Connect(_)
                | Packet::ConnAck(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PingReq
                | Packet::Auth(_),
            ) => self.stats.ignored += 1,
        }
    }

    /// The session's CONNACK for a CONNECT the gateway formed.
    fn on_connack(&mut self, purpose: Purpose, c: ConnAck, now_ms: u64, fx: &mut Vec<Effect>) {
        if c.reason.is_error() {
            let code = return_code(c.reason);
            let msg = match purpose {
                Purpose::Connect => SnMessage::ConnAck { code },
                Purpose::WillTopicUpdate => SnMessage::WillTopicResp { code },
                Purpose::WillMsgUpdate => SnMessage::WillMsgResp { code },
            };
            self.send(msg, fx);
            if purpose != Purpose::Connect {
                self.send(SnMessage::Disconnect { duration: None }, fx);
            }
            self.state = State::Gone;
            return;
        }
        self.session_keep_alive_ms = c
            .properties
            .server_keep_alive
            .filter(|&k| k != 0)
            .map(|k| u64::from(k) * 1000);
        self.state = State::Active;
        let code = ReturnCode::Accepted;
        let msg = match purpose {
            Purpose::Connect => {
                self.quiet_since_connack = true;
                SnMessage::ConnAck { code }
            }
            Purpose::WillTopicUpdate => SnMessage::WillTopicResp { code },
            Purpose::WillMsgUpdate => SnMessage::WillMsgResp { code },
        };
        self.send(msg, fx);
        self.pump(now_ms, fx);
    }

    /// SUBACK: the granted QoS and, when accepted, the topic id remembered for the request.
    fn suback(&mut self, s: SubAck) -> SnMessage {
        let topic_id = Self::recall(&mut self.suback_topics, s.packet_id);
        let reason = s
            .reasons
            .first()
            .copied()
            .unwrap_or(ReasonCode::UnspecifiedError);
        let qos = match reason {
            ReasonCode::GrantedQoS1 => QoS::AtLeastOnce,
            ReasonCode::GrantedQoS2 => QoS::ExactlyOnce,
            _ => QoS::AtMostOnce,
        };
        let code = return_code(reason);
        SnMessage::SubAck {
            qos,
            topic_id: if code == ReturnCode::Accepted {
                topic_id
            } else {
                TopicId::NONE
            },
            msg_id: MsgId(s.packet_id.get()),
            code,
        }
    }

    /// A PUBLISH the session delivers. A resend of the flow the gateway already carries (the
    /// session resumed after a will update) is left to the gateway's own retransmission.
    fn on_delivery(&mut self, p: Publish, now_ms: u64, fx: &mut Vec<Effect>) {
        if let Some(id) = p.packet_id
            && self.out.holds(id)
        {
            return;
        }
        self.enqueue(Pending::Publish(OutPublish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            packet_id: p.packet_id,
        }));
        self.pump(now_ms, fx);
    }

    /// PUBREL from the session: the next step of the flow in progress, or a flow the session
    /// resumed from an earlier connection.
    fn on_session_pubrel(&mut self, id: PacketId, now_ms: u64, fx: &mut Vec<Effect>) {
        if let Some(f) = self.out.flow.as_mut().filter(|f| f.packet_id == id) {
            f.stage = Stage::Released;
            f.retry = Retry::new(now_ms);
            let rel = SnMessage::PubRel { msg_id: f.msg_id };
            self.transmit(rel, fx);
        } else if !self.out.holds(id) {
            self.enqueue(Pending::PubRel(id));
            self.pump(now_ms, fx);
        }
    }

    /// Sends an outstanding message when the client can hear it (not asleep) and it fits
    /// the budget; one not sent now goes out when the client wakes (`resend_outstanding`) or
    /// with the next retransmission.
    fn transmit(&mut self, msg: SnMessage, fx: &mut Vec<Effect>) {
        if matches!(self.state, State::Active | State::Awake { .. })
            && self.validation.admit(msg.encoded_len())
        {
            fx.push(Effect::Send(msg));
        }
    }

    /// Adds to the queue within `sleep_buffer_*`: past the bound the oldest QoS 0 message is
    /// dropped (QoS 1/2 messages are never dropped here: there is at most one, see the
    /// module documentation).
    fn enqueue(&mut self, p: Pending) {
        if let Pending::Publish(x) = &p {
            self.out.queued_bytes += x.payload.len();
        }
        self.out.queue.push_back(p);
        let s = &self.settings;
        while self.out.queue.len() > s.buffer_messages || self.out.queued_bytes > s.buffer_bytes {
            let oldest_qos0 = self
                .out
                .queue
                .iter()
                .position(|p| matches!(p, Pending::Publish(x) if x.qos == QoS::AtMostOnce));
            let Some(pos) = oldest_qos0 else { break };
            if let Some(Pending::Publish(x)) = self.out.queue.remove(pos) {
                self.out.queued_bytes -= x.payload.len();
            }
            // Held for the proof of an address (an awake client), or for a sleeper.
            if !self.validation.is_validated()
                && matches!(self.state, State::Active | State::Awake { .. })
            {
                self.stats.unvalidated_dropped += 1;
            } else {
                self.stats.dropped_qos0 += 1;
            }
        }
    }

    /// Sends from the head of the queue as far as the client's state, the outstanding
    /// REGISTER, the outstanding QoS 1/2 exchange and, until the client is validated, its
    /// budget allow, registering topics the client has no id for on the way (6.10). A head
    /// that does not fit the budget waits, and the client is challenged.
    pub(super) fn pump(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        while matches!(self.state, State::Active | State::Awake { .. }) {
            let step = match self.out.queue.front() {
                None => Step::Stop,
                Some(Pending::PubRel(id)) if self.out.flow.is_none() => Step::PubRel(*id),
                Some(Pending::PubRel(_)) => Step::Stop,
                Some(Pending::Publish(p)) => {
                    let busy = p.qos != QoS::AtMostOnce && self.out.flow.is_some();
                    match topics::outbound_ref(&p.topic, &self.settings.predefined, &self.topics) {
                        _ if busy => Step::Stop,
                        Some(r) => Step::Publish(r),
                        None if self.out.register.is_some() => Step::Stop,
                        None => Step::Register(p.topic.clone()),
                    }
                }
            };
            match step {
                Step::Stop => return,
                Step::PubRel(id) => {
                    let msg_id = self.out.wire(id);
                    let msg = SnMessage::PubRel { msg_id };
                    if !self.validation.admit(msg.encoded_len()) {
                        self.challenge(now_ms, fx);
                        return;
                    }
                    self.out.pop();
                    self.out.flow = Some(FlowSlot {
                        packet_id: id,
                        msg_id,
                        stage: Stage::Released,
                        retry: Retry::new(now_ms),
                    });
                    fx.push(Effect::Send(msg));
                }
                Step::Publish(r) => {
                    let Some(Pending::Publish(p)) = self.out.queue.front() else {
                        return;
                    };
                    let publish = SnPublish {
                        dup: p.dup,
                        qos: SnQoS::from(p.qos),
                        retain: p.retain,
                        topic: r,
                        msg_id: p.packet_id.map_or(MsgId(0), |id| self.out.wire(id)),
                        data: p.payload.clone(),
                    };
                    let msg = SnMessage::Publish(publish);
                    let len = msg.encoded_len();
                    // One too large for any datagram is undeliverable, not a budget matter.
                    if len <= self.settings.max_message_size && !self.validation.admit(len) {
                        self.challenge(now_ms, fx);
                        return;
                    }
                    if let Some(Pending::Publish(p)) = self.out.pop() {
                        self.send_publish(p, msg, len, now_ms, fx);
                    }
                }
                // Until the client is validated its REGISTER is the challenge, unless a
                // shorter one can be sent.
                Step::Register(topic) => {
                    if self.validation.is_validated() || !self.challenge(now_ms, fx) {
                        self.register(topic, now_ms, fx);
                    }
                }
            }
        }
    }

    /// Sends REGISTER for the topic at the head of the queue; a full registry makes that
    /// message undeliverable.
    fn register(&mut self, topic: TopicName, now_ms: u64, fx: &mut Vec<Effect>) {
        match self.topics.assign(&topic, false) {
            Ok(topic_id) => self.send_register(topic_id, topic, now_ms, fx),
            Err(RegistryFull) => {
                if let Some(Pending::Publish(p)) = self.out.pop() {
                    self.undeliverable(&p, ReasonCode::QuotaExceeded, now_ms, fx);
                }
            }
        }
    }

    /// Asks a client that is not validated for the proof of its address
    /// (`super::validation`): a REGISTER, whose REGACK a conforming client sends (6.10),
    /// naming the shortest of the head's topic (or the outstanding PUBLISH's) and the names
    /// the client already has an id for (re-announced with that id). One at a time, retransmitted like any REGISTER
    /// (6.13), so an address that never answers is lost after N_retry. False when none could
    /// be formed (no topic id left for it).
    fn challenge(&mut self, now_ms: u64, fx: &mut Vec<Effect>) -> bool {
        if self.validation.is_validated() || self.out.register.is_some() {
            return false;
        }
        let flow_topic = self.out.flow.as_ref().and_then(|f| match &f.stage {
            Stage::Published { topic, .. } => Some(topic),
            Stage::Released => None,
        });
        let head = match self.out.queue.front() {
            Some(Pending::Publish(p)) => Some(p.topic.clone()),
            Some(Pending::PubRel(_)) | None => flow_topic.cloned(),
        };
        let known = self
            .topics
            .shortest_known()
            .map(|(id, name)| (id, name.clone()));
        let (topic_id, topic) = match (head, known) {
            (Some(h), Some(k)) if k.1.len() < h.len() => k,
            (None, Some(k)) => k,
            (Some(h), known) => match self.topics.assign(&h, false) {
                Ok(id) => (id, h),
                Err(RegistryFull) => match known {
                    Some(k) => k,
                    None => return false,
                },
            },
            (None, None) => return false,
        };
        self.send_register(topic_id, topic, now_ms, fx);
        true
    }

    /// Sends our REGISTER of `topic` as `topic_id` and waits for its REGACK. Until the client
    /// is validated the REGISTER is its challenge: beyond the budget only if it is small
    /// (`Validation::admit_challenge`); otherwise it waits for a retransmission that fits.
    fn send_register(
        &mut self,
        topic_id: TopicId,
        topic: TopicName,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let msg_id = self.out.next_msg_id();
        let msg = SnMessage::Register {
            topic_id,
            msg_id,
            topic_name: topic.as_shared().clone(),
        };
        if self.validation.admit_challenge(msg.encoded_len()) {
            fx.push(Effect::Send(msg.clone()));
        }
        self.out.register = Some(RegisterSlot {
            msg,
            msg_id,
            topic_id,
            topic,
            retry: Retry::new(now_ms),
        });
    }

    /// REGACK for our REGISTER: the client is validated (it echoed our msg id); accepted,
    /// the id is usable; refused, the message waiting for it cannot be named to this client.
    pub(super) fn on_regack(
        &mut self,
        topic_id: TopicId,
        msg_id: MsgId,
        code: ReturnCode,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let Some(slot) = self.out.register.take_if(|r| r.msg_id == msg_id) else {
            return self.wrong_proof(now_ms, fx);
        };
        self.validation.proved();
        if code == ReturnCode::Accepted {
            self.topics.confirm(slot.topic_id);
        } else {
            self.topics.remove(slot.topic_id);
            let waiting = matches!(self.out.queue.front(), Some(Pending::Publish(p)) if p.topic == slot.topic);
            if waiting && let Some(Pending::Publish(p)) = self.out.pop() {
                self.undeliverable(&p, ReasonCode::TopicNameInvalid, now_ms, fx);
            }
        }
        // The client echoes our id; a different one is its mistake, not a reason to stop.
        let _ = topic_id;
        self.pump(now_ms, fx);
    }

    /// An acknowledgement naming nothing the gateway has outstanding: ignored, and for a
    /// client not yet validated a failed proof; past `validation::MAX_FAILED_PROOFS` it is
    /// lost (a guess at the MsgIds has odds of 1 in 65535 each).
    pub(super) fn wrong_proof(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        self.stats.ignored += 1;
        if self.validation.failed() {
            self.end(Ending::Lost, true, now_ms, fx);
        }
    }

    /// Sends `msg` (`len` bytes, already within the budget), the PUBLISH of `p` popped from
    /// the queue, and at QoS 1/2 waits for its acknowledgement.
    fn send_publish(
        &mut self,
        p: OutPublish,
        msg: SnMessage,
        len: usize,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        if len > self.settings.max_message_size {
            // Unreachable while the session honours the Maximum Packet Size it was given.
            return self.undeliverable(&p, ReasonCode::PacketTooLarge, now_ms, fx);
        }
        if let (Some(packet_id), SnMessage::Publish(publish)) = (p.packet_id, &msg) {
            self.out.flow = Some(FlowSlot {
                packet_id,
                msg_id: publish.msg_id,
                stage: Stage::Published {
                    publish: publish.clone(),
                    qos: p.qos,
                    topic: p.topic,
                },
                retry: Retry::new(now_ms),
            });
        }
        fx.push(Effect::Send(msg));
    }

    /// A delivery that cannot reach the client: counted; a QoS 1/2 flow is ended at the
    /// session with a failure code so that its window moves on.
    fn undeliverable(
        &mut self,
        p: &OutPublish,
        reason: ReasonCode,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        self.stats.undeliverable += 1;
        let Some(id) = p.packet_id else { return };
        let ack = Ack {
            packet_id: id,
            reason,
            properties: AckProperties::default(),
        };
        let packet = match p.qos {
            QoS::ExactlyOnce => Packet::PubRec(ack),
            QoS::AtMostOnce | QoS::AtLeastOnce => Packet::PubAck(ack),
        };
        self.feed_session(packet, now_ms, fx);
    }

    /// Retransmits what waited T_retry for its acknowledgement; after N_retry
    /// retransmissions the client is lost (6.13). Until the client is validated a
    /// retransmission is sent only within its budget (a small REGISTER challenge a few
    /// times beyond it), but counts as one either way.
    pub(super) fn retransmit(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let (retry_ms, max) = (self.settings.retry_ms, self.settings.retry_count);
        let due = |r: &Retry| now_ms >= r.sent_ms.saturating_add(retry_ms);
        let register = self.out.register.as_ref().filter(|s| due(&s.retry));
        let flow = self.out.flow.as_ref().filter(|s| due(&s.retry));
        if [register.map(|s| s.retry), flow.map(|s| s.retry)]
            .iter()
            .flatten()
            .any(|r| r.resent >= max)
        {
            // Nothing is sent again: the client is told DISCONNECT instead.
            return self.end(Ending::Lost, true, now_ms, fx);
        }
        let start = fx.len();
        if let Some(slot) = self.out.register.as_mut().filter(|s| due(&s.retry)) {
            slot.retry.resent += 1;
            slot.retry.sent_ms = now_ms;
            if self.validation.admit_challenge(slot.msg.encoded_len()) {
                fx.push(Effect::Send(slot.msg.clone()));
            }
        }
        let mut held = false;
        if let Some(slot) = self.out.flow.as_mut().filter(|s| due(&s.retry)) {
            slot.retry.resent += 1;
            slot.retry.sent_ms = now_ms;
            let msg = flow_message(slot);
            if self.validation.admit(msg.encoded_len()) {
                fx.push(Effect::Send(msg));
            } else {
                held = true;
            }
        }
        self.stats.retransmissions += (fx.len() - start) as u64;
        if held {
            // Its PUBLISH (or the acknowledgement) was lost and the budget is spent: a
            // client that answers the challenge gets the next retransmission.
            self.challenge(now_ms, fx);
        }
    }

    /// A client that wakes up gets what was outstanding when it fell asleep, at once (within
    /// its budget until validated: waking is no reason to send beyond it).
    pub(super) fn resend_outstanding(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        if let Some(slot) = self.out.register.as_mut()
            && self.validation.admit(slot.msg.encoded_len())
        {
            slot.retry.sent_ms = now_ms;
            fx.push(Effect::Send(slot.msg.clone()));
        }
        if let Some(slot) = self.out.flow.as_mut() {
            let msg = flow_message(slot);
            if self.validation.admit(msg.encoded_len()) {
                slot.retry.sent_ms = now_ms;
                fx.push(Effect::Send(msg));
            }
        }
    }
}

/// The message of an outstanding flow, as retransmitted: PUBLISH with DUP set (5.3.4), or
/// PUBREL.
fn flow_message(slot: &FlowSlot) -> SnMessage {
    match &slot.stage {
        Stage::Published { publish, .. } => SnMessage::Publish(SnPublish {
            dup: true,
            ..publish.clone()
        }),
        Stage::Released => SnMessage::PubRel {
            msg_id: slot.msg_id,
        },
    }
}

fn puback(topic_id: TopicId, id: PacketId, reason: ReasonCode) -> SnMessage {
    SnMessage::PubAck {
        topic_id,
        msg_id: MsgId(id.get()),
        code: return_code(reason),
    }
}
