//! `SnClient`: one MQTT-SN client's state at the gateway, from its CONNECT to its end.
//!
//! Owns: the client's lifecycle (will prompting 6.2, active, asleep/awake 6.14, lost), its
//! MQTT-SN keep alive and sleep timers (6.11, 6.14), its topic registry (6.5), the messages
//! waiting to go to it, the one REGISTER and the one QoS 1/2 exchange it has outstanding
//! with their retransmission (6.13), its address validation (`validation`: what may be sent
//! before the client proved its address), and the translation of its datagrams into
//! packets for its MQTT session and back (`inbound`, `outbound`).
//!
//! Knows nothing of addresses: every datagram it emits goes to its own client (`Effect::Send`),
//! so it cannot be made to send anywhere else. The `Gateway` decides which address that is.
//! Until the client proves that it receives what goes there, every datagram passes its
//! budget (`validation`): `send` for answers, `pump` and `retransmit` for the rest.
//!
//! Must never: touch a socket or the clock, implement an MQTT rule the session already
//! implements (QoS flows, queueing, retained messages, wills), or panic on input.

mod inbound;
mod outbound;
pub(super) mod validation;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::topic::TopicName;
use crate::codec::{Packet, PacketId, QoS};
use crate::session::ClientId;

use super::GatewaySettings;
use super::codec::{MsgId, SnMessage, TopicId};
use super::topics::Registry;
use super::translate::{self, Ending, WillData};
use outbound::Outbound;
use validation::Validation;

/// What a client call asks of the gateway, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
// Drained in the same call that fills it; boxing would allocate per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Effect {
    /// A datagram to this client.
    Send(SnMessage),
    /// A packet for this client's MQTT session (`Packet::Connect`: connect it).
    Session(Packet),
}

/// Why a connection is being set up with the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A new connection: the CONNACK becomes an MQTT-SN CONNACK.
    Connect,
    /// A will update (6.4): the CONNACK becomes WILLTOPICRESP.
    WillTopicUpdate,
    /// The CONNACK becomes WILLMSGRESP.
    WillMsgUpdate,
}

/// The client's lifecycle (figure 4 of the spec, plus the will prompting of 6.2).
#[derive(Clone, Debug)]
enum State {
    /// CONNECT with the Will flag: WILLTOPICREQ sent.
    AwaitWillTopic {
        started_ms: u64,
    },
    /// WILLTOPIC received, WILLMSGREQ sent.
    AwaitWillMsg {
        started_ms: u64,
        topic: TopicName,
        qos: QoS,
        retain: bool,
    },
    /// An MQTT CONNECT was handed to the session; its CONNACK has not come back. Session
    /// output before it belongs to the previous connection (e.g. the session's DISCONNECT
    /// 0x8E when it is taken over) and is ignored.
    Connecting {
        started_ms: u64,
        purpose: Purpose,
    },
    Active,
    /// DISCONNECT with a duration (6.14): messages for it wait in the queue.
    Asleep {
        timeout_ms: u64,
    },
    /// PINGREQ from the sleeping client: the queue is flushed, then PINGRESP.
    Awake {
        timeout_ms: u64,
    },
    /// Over: the gateway forgets the client after this call.
    Gone,
}

/// Counters the gateway sums up for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// QoS 0 messages dropped because the buffer was full.
    pub dropped_qos0: u64,
    /// Messages that could not be named to the client (registry full, REGISTER refused)
    /// or did not fit a datagram; QoS 1/2 ones were acknowledged to the session as failed.
    pub undeliverable: u64,
    /// REGISTER, PUBLISH and PUBREL retransmissions (6.13).
    pub retransmissions: u64,
    /// Datagrams that made no sense in the client's state (ignored).
    pub ignored: u64,
    /// Sends held back because the client had not proved its address yet (`validation`):
    /// answers beyond its budget, and QoS 0 messages dropped from the queue while they
    /// waited for the proof.
    pub unvalidated_dropped: u64,
}

/// Remembered msg ids of requests handed to the session whose answer must name a topic id
/// (PUBACK, SUBACK). The session answers in the same turn, so a handful suffices.
const REMEMBERED_REQUESTS: usize = 8;

/// One MQTT-SN client. See the module documentation; the call order is `Gateway`'s.
#[derive(Debug)]
pub(crate) struct SnClient {
    id: ClientId,
    settings: Arc<GatewaySettings>,
    state: State,
    /// CleanSession of the CONNECT that started the connection.
    clean_session: bool,
    /// Keep alive Duration of that CONNECT (6.11), seconds; 0: not supervised.
    duration_s: u16,
    /// Last datagram from the client (keep alive and sleep supervision).
    last_heard_ms: u64,
    /// Nothing was heard since CONNACK: an identical CONNECT is its retransmission.
    quiet_since_connack: bool,
    /// The will the session holds, kept to rebuild its CONNECT for WILLTOPICUPD/WILLMSGUPD.
    will: Option<WillData>,
    topics: Registry,
    out: Outbound,
    /// Client QoS 1/2 PUBLISH msg id -> the TopicId field to echo in PUBACK.
    puback_topics: VecDeque<(MsgId, TopicId)>,
    /// SUBSCRIBE msg id -> the topic id SUBACK carries.
    suback_topics: VecDeque<(MsgId, TopicId)>,
    /// Server Keep Alive the session imposed (ms); the gateway pings it before it passes.
    session_keep_alive_ms: Option<u64>,
    last_to_session_ms: u64,
    /// Ended as `Ending::Lost`.
    lost: bool,
    /// Whether the client proved its address, and its budget until it does.
    validation: Validation,
    stats: ClientStats,
}

impl SnClient {
    /// A client whose CONNECT (already checked by the gateway, `connect_len` bytes) just
    /// arrived. `msg_id_seed`: where the gateway's MsgIds for this client start, unguessable
    /// from elsewhere (see `Gateway`).
    pub(crate) fn new(
        id: ClientId,
        settings: Arc<GatewaySettings>,
        clean_session: bool,
        duration_s: u16,
        connect_len: usize,
        msg_id_seed: u32,
        now_ms: u64,
    ) -> SnClient {
        let mut validation = Validation::default();
        validation.received(connect_len);
        let topics = Registry::new(settings.max_topics);
        SnClient {
            id,
            settings,
            state: State::Active,
            clean_session,
            duration_s,
            last_heard_ms: now_ms,
            quiet_since_connack: false,
            will: None,
            topics,
            out: Outbound::new(msg_id_seed),
            puback_topics: VecDeque::new(),
            suback_topics: VecDeque::new(),
            session_keep_alive_ms: None,
            last_to_session_ms: now_ms,
            lost: false,
            validation,
            stats: ClientStats::default(),
        }
    }

    /// Another datagram of `len` bytes from the client's address (counted before it is
    /// handled, so that its answer fits the budget it brings).
    pub(crate) fn received(&mut self, len: usize) {
        self.validation.received(len);
    }

    /// Sends an answer or notice to the client, within its budget until it is validated;
    /// one that does not fit is dropped (counted): MQTT-SN clients retransmit their requests.
    fn send(&mut self, msg: SnMessage, fx: &mut Vec<Effect>) {
        if self.validation.admit(msg.encoded_len()) {
            fx.push(Effect::Send(msg));
        } else {
            self.stats.unvalidated_dropped += 1;
        }
    }

    pub(crate) fn client_id(&self) -> &ClientId {
        &self.id
    }

    pub(crate) fn is_gone(&self) -> bool {
        matches!(self.state, State::Gone)
    }

    /// Gone because it was lost or replaced (not a DISCONNECT or the session's close).
    pub(crate) fn is_lost(&self) -> bool {
        self.is_gone() && self.lost
    }

    /// An MQTT CONNECT is with the session and its CONNACK has not come back.
    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting { .. })
    }

    pub(crate) fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Starts the connection: with `will` the client is prompted for its will first (6.2),
    /// otherwise the MQTT CONNECT goes to the session now.
    pub(crate) fn start(&mut self, will: bool, now_ms: u64, fx: &mut Vec<Effect>) {
        self.will = None;
        if will {
            self.state = State::AwaitWillTopic { started_ms: now_ms };
            self.send(SnMessage::WillTopicReq, fx);
        } else {
            self.connect_session(Purpose::Connect, now_ms, fx);
        }
    }

    /// Whether a CONNECT from the client's own address is a retransmission of the one that
    /// started this connection (its CONNACK was lost).
    pub(crate) fn is_connect_retransmission(&self, will: bool, clean: bool, duration: u16) -> bool {
        matches!(self.state, State::Active)
            && self.quiet_since_connack
            && !will
            && clean == self.clean_session
            && duration == self.duration_s
    }

    /// A CONNECT that only asks a sleeping client to become active (6.14, figure 4): no
    /// will prompting and no clean session, so nothing of the connection changes.
    pub(crate) fn is_wake_connect(&self, will: bool, clean: bool) -> bool {
        matches!(self.state, State::Asleep { .. } | State::Awake { .. }) && !will && !clean
    }

    /// The CONNACK for a retransmitted CONNECT, or the wake-up of a sleeping client.
    pub(crate) fn reconfirm(&mut self, duration: u16, now_ms: u64, fx: &mut Vec<Effect>) {
        self.last_heard_ms = now_ms;
        self.duration_s = duration;
        let was_sleeping = matches!(self.state, State::Asleep { .. } | State::Awake { .. });
        self.state = State::Active;
        let code = super::codec::ReturnCode::Accepted;
        self.send(SnMessage::ConnAck { code }, fx);
        if was_sleeping {
            self.resend_outstanding(now_ms, fx);
        }
        self.pump(now_ms, fx);
    }

    /// Hands the session an MQTT CONNECT built from the current will; a will update resumes
    /// the session whatever CleanSession said.
    fn connect_session(&mut self, purpose: Purpose, now_ms: u64, fx: &mut Vec<Effect>) {
        let connect = translate::mqtt_connect(
            &self.id,
            self.clean_session,
            purpose != Purpose::Connect,
            self.will.as_ref(),
            self.settings.max_message_size,
        );
        self.state = State::Connecting {
            started_ms: now_ms,
            purpose,
        };
        self.feed_session(Packet::Connect(Box::new(connect)), now_ms, fx);
    }

    fn feed_session(&mut self, packet: Packet, now_ms: u64, fx: &mut Vec<Effect>) {
        self.last_to_session_ms = now_ms;
        fx.push(Effect::Session(packet));
    }

    /// The connection ends: the session gets its DISCONNECT (unless none was ever sent to
    /// it), the client a DISCONNECT when `notify`, and the gateway forgets the client.
    pub(crate) fn end(&mut self, ending: Ending, notify: bool, now_ms: u64, fx: &mut Vec<Effect>) {
        let had_session = !matches!(
            self.state,
            State::AwaitWillTopic { .. } | State::AwaitWillMsg { .. } | State::Gone
        );
        if had_session {
            let d = translate::mqtt_disconnect(ending, self.clean_session);
            self.feed_session(Packet::Disconnect(d), now_ms, fx);
        }
        if notify {
            self.send(SnMessage::Disconnect { duration: None }, fx);
        }
        self.lost = ending == Ending::Lost;
        self.state = State::Gone;
    }

    /// The session closed this connection (takeover, protocol violation, shutdown): the
    /// client is told with DISCONNECT and forgotten. Ignored while a CONNECT is pending,
    /// where the close belongs to the connection it replaces.
    pub(crate) fn on_session_closed(&mut self, fx: &mut Vec<Effect>) {
        match self.state {
            State::Connecting { .. } | State::Gone => {}
            State::AwaitWillTopic { .. }
            | State::AwaitWillMsg { .. }
            | State::Active
            | State::Asleep { .. }
            | State::Awake { .. } => {
                self.send(SnMessage::Disconnect { duration: None }, fx);
                self.state = State::Gone;
            }
        }
    }

    /// 1.5 × `secs` in ms, as MQTT's keep alive [MQTT-3.1.2-24]: MQTT-SN 6.11 names no
    /// grace, and half a period absorbs a retransmitted PINGREQ. `None` for 0 (off).
    fn grace_ms(secs: u16) -> Option<u64> {
        (secs != 0).then(|| u64::from(secs) * 1500)
    }

    /// Time allowed for the will prompting and the session's CONNACK: as long as the client
    /// itself keeps retrying (6.13).
    fn setup_timeout_ms(&self) -> u64 {
        self.settings
            .retry_ms
            .saturating_mul(u64::from(self.settings.retry_count) + 1)
    }

    /// When `on_timeout` must next run.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let supervision = match &self.state {
            State::AwaitWillTopic { started_ms }
            | State::AwaitWillMsg { started_ms, .. }
            | State::Connecting { started_ms, .. } => {
                Some(started_ms.saturating_add(self.setup_timeout_ms()))
            }
            State::Active => Self::grace_ms(self.duration_s).map(|t| self.last_heard_ms + t),
            State::Asleep { timeout_ms } | State::Awake { timeout_ms } => {
                Some(self.last_heard_ms.saturating_add(*timeout_ms))
            }
            State::Gone => return None,
        };
        let retry = match self.state {
            State::Active | State::Awake { .. } => self.out.next_retry(self.settings.retry_ms),
            _ => None,
        };
        let ping = self
            .session_keep_alive_ms
            .map(|k| self.last_to_session_ms.saturating_add(k / 2));
        [supervision, retry, ping].into_iter().flatten().min()
    }

    /// Fires what is due at `now_ms`: setup or keep-alive expiry (the client is lost),
    /// retransmissions, the session ping.
    pub(crate) fn on_timeout(&mut self, now_ms: u64, fx: &mut Vec<Effect>) {
        let expired = match &self.state {
            State::AwaitWillTopic { started_ms } | State::AwaitWillMsg { started_ms, .. } => {
                if now_ms >= started_ms.saturating_add(self.setup_timeout_ms()) {
                    // No session was involved yet: forget the half-open connection quietly.
                    self.state = State::Gone;
                }
                return;
            }
            State::Connecting { started_ms, .. } => {
                now_ms >= started_ms.saturating_add(self.setup_timeout_ms())
            }
            State::Active => Self::grace_ms(self.duration_s)
                .is_some_and(|t| now_ms >= self.last_heard_ms.saturating_add(t)),
            State::Asleep { timeout_ms } | State::Awake { timeout_ms } => {
                now_ms >= self.last_heard_ms.saturating_add(*timeout_ms)
            }
            State::Gone => return,
        };
        if expired {
            return self.end(Ending::Lost, true, now_ms, fx);
        }
        if matches!(self.state, State::Active | State::Awake { .. }) {
            self.retransmit(now_ms, fx);
            if self.is_gone() {
                return;
            }
        }
        if let Some(k) = self.session_keep_alive_ms
            && now_ms >= self.last_to_session_ms.saturating_add(k / 2)
        {
            self.feed_session(Packet::PingReq, now_ms, fx);
        }
    }

    /// Session output for this client: the bytes the session wrote, as MQTT 5 packets
    /// decoded in the client role. The shard calls this after every session input it
    /// executed for the client, even when nothing was written (a waking client's PINGRESP
    /// waits for it).
    pub(crate) fn on_session_output(
        &mut self,
        bytes: &mut BytesMut,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let limits = crate::codec::DecodeLimits {
            // Trusted input (our own session), at the protocol's maxima.
            max_packet_size: 268_435_460,
            max_user_properties: usize::MAX,
            role: crate::codec::Role::Client,
        };
        loop {
            match crate::codec::decode(bytes, Some(crate::codec::ProtocolVersion::V5), &limits) {
                Ok(Some(packet)) => self.on_session_packet(packet, now_ms, fx),
                Ok(None) => break,
                Err(_) => {
                    // The session writes only valid packets; count and drop the rest.
                    self.stats.ignored += 1;
                    bytes.clear();
                    break;
                }
            }
        }
        self.settle_awake(fx);
    }

    /// An awake client whose messages are all delivered goes back to sleep with PINGRESP
    /// (6.14).
    fn settle_awake(&mut self, fx: &mut Vec<Effect>) {
        if let State::Awake { timeout_ms } = self.state
            && self.out.is_idle()
        {
            self.send(SnMessage::PingResp, fx);
            self.state = State::Asleep { timeout_ms };
        }
    }

    /// Remembers `(msg id, topic id)` for the answer to a request handed to the session.
    fn remember(list: &mut VecDeque<(MsgId, TopicId)>, msg_id: MsgId, topic: TopicId) {
        list.retain(|(m, _)| *m != msg_id);
        if list.len() >= REMEMBERED_REQUESTS {
            list.pop_front();
        }
        list.push_back((msg_id, topic));
    }

    fn recall(list: &mut VecDeque<(MsgId, TopicId)>, id: PacketId) -> TopicId {
        let msg_id = MsgId(id.get());
        match list.iter().position(|(m, _)| *m == msg_id) {
            Some(pos) => list.remove(pos).map_or(TopicId::NONE, |(_, t)| t),
            None => TopicId::NONE,
        }
    }
}
