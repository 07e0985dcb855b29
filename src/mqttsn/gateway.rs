//! `Gateway`: the gateway-wide part. Owns the address -> client table, the datagrams that
//! arrive before or without a connection (SEARCHGW 6.1, CONNECT 6.2, QoS -1 PUBLISH 6.8),
//! ADVERTISE (6.1), the timers of every client in one deadline index, and the translation
//! of client effects into `Output`s addressed to the right place.
//!
//! Anti-amplification rules: a UDP source address is not trusted beyond its datagram, so a
//! reply is never larger than what its datagrams justify, and a sender that spoofs another
//! address cannot make the gateway stream to it. Enforced here:
//! - an address is a client's only after its CONNECT; to any other address the gateway
//!   answers at most one datagram no longer than the one received (`reply_unconnected`);
//! - datagrams only ever go to the address a datagram came from, or to a connected client
//!   (its own address); a CONNECT that replaces a client elsewhere ends that client without
//!   a word to its address;
//! - buffered messages, REGISTERs and retransmissions go only to connected clients;
//! - a connected client is not validated until it echoes a MsgId the gateway sent to its
//!   address (REGACK, PUBACK, PUBREC, PUBCOMP); until then the gateway sends it at most
//!   three times the bytes it received from it, QoS 1/2 deliveries that do not fit (and QoS
//!   0 ones, within the sleep buffer) wait, and one small REGISTER asks for the proof, sent
//!   at most four times, T_retry apart (`client::validation`). The MsgIds it could echo are
//!   unguessable elsewhere: they start at a value derived from a secret of this gateway, the
//!   client id and the address (`msg_id_seed`), so a client reconnecting from its address
//!   keeps them (a resumed QoS 2 flow keeps its MsgId) and nobody else can name them.
//!
//! Must never: touch a socket or the clock, or panic on input. Generic over the address type
//! `A` so that it needs no socket type (the shard uses `SocketAddr`, tests use integers).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::random::{OsRandom, RandomSource};
use crate::codec::{MqttStr, Publish, PublishProperties, QoS};
use crate::session::ClientId;

use super::client::{ClientStats, Effect, SnClient};
use super::codec::{self, ReturnCode, SnConnect, SnMessage, SnPublish, SnQoS, TopicRef};
use super::topics;
use super::translate::Ending;
use super::{GatewaySettings, Output};

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Datagrams larger than `max_message_size`, dropped unread.
    pub oversized: u64,
    /// Datagrams that are not MQTT-SN messages (`codec::SnDecodeError`), dropped.
    pub malformed: u64,
    /// CONNECTs refused by the gateway itself (protocol id, client id, no random secret).
    pub refused_connects: u64,
    /// QoS -1 publishes handed on, and those dropped (normal topic id, unknown or invalid
    /// topic).
    pub anonymous_publishes: u64,
    pub anonymous_dropped: u64,
    /// Messages from addresses without a client, other than SEARCHGW/CONNECT/QoS -1.
    pub unconnected: u64,
    /// Clients lost (keep alive, sleep, retransmissions, failed address proofs) or
    /// replaced.
    pub lost: u64,
    /// Per-client counters of clients already gone, summed.
    pub clients: ClientStats,
}

/// The key the gateway derives each client's MsgIds from (`msg_id_seed`), drawn from the
/// operating system at the first CONNECT.
struct Secret {
    key: Option<[u8; 32]>,
    source: Box<dyn RandomSource + Send>,
}

impl Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("drawn", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// Feeds what `Hash` writes of an address into the MAC (`A` is opaque here).
struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl Hasher for MacWriter<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0 // Unused: the MAC is the result.
    }
}

/// A client and the deadline it is filed under in the index.
#[derive(Debug)]
struct Entry {
    client: SnClient,
    armed: Option<u64>,
}

/// The MQTT-SN gateway of one shard. See the module documentation of `crate::mqttsn` for the
/// call order.
#[derive(Debug)]
pub struct Gateway<A> {
    settings: Arc<GatewaySettings>,
    clients: HashMap<A, Entry>,
    /// Where each connected client id is (one address per id).
    by_id: HashMap<ClientId, A>,
    /// Every client's next deadline.
    deadlines: BTreeSet<(u64, A)>,
    /// Next ADVERTISE; `None` when advertising is off.
    advertise_due_ms: Option<u64>,
    stats: GatewayStats,
    secret: Secret,
    /// Scratch for client effects, reused across calls.
    fx: Vec<Effect>,
}

impl<A> Gateway<A>
where
    A: Copy + Eq + Hash + Ord + Debug,
{
    pub fn new(settings: Arc<GatewaySettings>) -> Gateway<A> {
        Gateway::with_random(settings, Box::new(OsRandom))
    }

    /// `new` with another source for the secret: tests and the fuzz target replay fixed
    /// bytes, so that a run is reproducible.
    pub fn with_random(
        settings: Arc<GatewaySettings>,
        source: Box<dyn RandomSource + Send>,
    ) -> Gateway<A> {
        // Advertising starts with the first `handle_timeout` (deadline 0: at once).
        let advertise_due_ms = settings.advertise.map(|_| 0);
        Gateway {
            settings,
            clients: HashMap::new(),
            by_id: HashMap::new(),
            deadlines: BTreeSet::new(),
            advertise_due_ms,
            stats: GatewayStats::default(),
            secret: Secret { key: None, source },
            fx: Vec::new(),
        }
    }

    /// One datagram from `from`.
    pub fn handle_datagram(
        &mut self,
        from: A,
        datagram: Bytes,
        now_ms: u64,
        out: &mut Vec<Output<A>>,
    ) {
        if datagram.len() > self.settings.max_message_size {
            self.stats.oversized += 1;
            return;
        }
        let msg = match codec::decode(&datagram) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if let SnMessage::Connect(c) = msg {
            return self.on_connect(from, c, datagram.len(), now_ms, out);
        }
        if let Some(e) = self.clients.get_mut(&from) {
            e.client.received(datagram.len());
            e.client.on_message(msg, now_ms, &mut self.fx);
            return self.finish(from, out);
        }
        self.unconnected(from, msg, datagram.len(), out);
    }

    /// What the session of the client at `at` wrote (`Session::connect`, `handle_packet`,
    /// `deliver`, `handle_timeout`, `taken_over`, `shutdown`, or `refuse_connect`) while its
    /// connection was the one the gateway gave it (see the module documentation of
    /// `crate::mqttsn`). `written` is consumed; bytes for an address without a client are
    /// discarded.
    pub fn handle_session_output(
        &mut self,
        at: A,
        written: &mut BytesMut,
        now_ms: u64,
        out: &mut Vec<Output<A>>,
    ) {
        let Some(e) = self.clients.get_mut(&at) else {
            written.clear();
            return;
        };
        e.client.on_session_output(written, now_ms, &mut self.fx);
        self.finish(at, out);
    }

    /// The session of the client at `at` emitted `Action::Close` (after its bytes went
    /// through `handle_session_output`).
    pub fn session_closed(&mut self, at: A, out: &mut Vec<Output<A>>) {
        let Some(e) = self.clients.get_mut(&at) else {
            return;
        };
        e.client.on_session_closed(&mut self.fx);
        self.finish(at, out);
    }

    /// Ends the client at `at` as lost (its will is due), without a word to its address:
    /// the runtime learned that the address now belongs to a client served elsewhere (its
    /// CONNECT named a client id of another shard).
    pub fn drop_address(&mut self, at: A, now_ms: u64, out: &mut Vec<Output<A>>) {
        let Some(e) = self.clients.get_mut(&at) else {
            return;
        };
        e.client.end(Ending::Lost, false, now_ms, &mut self.fx);
        self.finish(at, out);
    }

    /// When `handle_timeout` must next run (`None`: nothing scheduled).
    pub fn next_deadline(&self) -> Option<u64> {
        let client = self.deadlines.first().map(|&(t, _)| t);
        [client, self.advertise_due_ms].into_iter().flatten().min()
    }

    /// Fires what is due at `now_ms` (early calls are harmless).
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Vec<Output<A>>) {
        if let (Some(due), Some(adv)) = (self.advertise_due_ms, self.settings.advertise)
            && now_ms >= due
        {
            let msg = SnMessage::Advertise {
                gw_id: self.settings.gateway_id,
                duration: adv.duration_s,
            };
            if let Ok(datagram) = codec::encode_to_bytes(&msg) {
                out.push(Output::Broadcast { datagram });
            }
            self.advertise_due_ms = Some(now_ms.saturating_add(adv.interval_ms));
        }
        while let Some(&(t, addr)) = self.deadlines.first() {
            if t > now_ms {
                break;
            }
            self.deadlines.pop_first();
            if let Some(e) = self.clients.get_mut(&addr) {
                e.armed = None;
                e.client.on_timeout(now_ms, &mut self.fx);
            }
            self.finish(addr, out);
        }
    }

    /// Connected (or connecting) clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether `addr` is a client's (connected or connecting): the shard's test for
    /// "this datagram belongs to a client on this shard".
    pub fn knows(&self, addr: &A) -> bool {
        self.clients.contains_key(addr)
    }

    /// The address a client id is connected from.
    pub fn address_of(&self, client: &ClientId) -> Option<A> {
        self.by_id.get(client).copied()
    }

    pub fn stats(&self) -> GatewayStats {
        let mut s = self.stats;
        for e in self.clients.values() {
            add(&mut s.clients, e.client.stats());
        }
        s
    }

    /// CONNECT (6.2). A retransmitted CONNECT, or one that wakes a sleeping client (6.14),
    /// keeps the connection; any other starts a new one, ending what was at this address
    /// and this client id's connection elsewhere (as lost: its will is published, as when
    /// an MQTT connection is taken over [MQTT-3.1.4-3]).
    fn on_connect(
        &mut self,
        from: A,
        c: SnConnect,
        len: usize,
        now_ms: u64,
        out: &mut Vec<Output<A>>,
    ) {
        let Some(id) = self.client_id(&c) else {
            self.stats.refused_connects += 1;
            let connack = SnMessage::ConnAck {
                code: ReturnCode::NotSupported,
            };
            return self.reply_unconnected(from, &connack, len, out);
        };
        if let Some(e) = self.clients.get_mut(&from)
            && e.client.client_id() == &id
        {
            e.client.received(len);
            let c2 = &e.client;
            if c2.is_connecting() {
                return; // its CONNACK is on the way
            }
            if c2.is_connect_retransmission(c.will, c.clean_session, c.duration)
                || c2.is_wake_connect(c.will, c.clean_session)
            {
                e.client.reconfirm(c.duration, now_ms, &mut self.fx);
                return self.finish(from, out);
            }
        }
        let Some(seed) = self.msg_id_seed(&id, &from) else {
            // No secret to make its MsgIds unguessable: refused (and tried again next time).
            self.stats.refused_connects += 1;
            let connack = SnMessage::ConnAck {
                code: ReturnCode::Congestion,
            };
            return self.reply_unconnected(from, &connack, len, out);
        };
        if let Some(e) = self.clients.get_mut(&from) {
            e.client.end(Ending::Lost, false, now_ms, &mut self.fx);
            self.finish(from, out);
        }
        if let Some(&elsewhere) = self.by_id.get(&id) {
            if let Some(e) = self.clients.get_mut(&elsewhere) {
                e.client.end(Ending::Lost, false, now_ms, &mut self.fx);
            }
            self.finish(elsewhere, out);
        }
        let settings = Arc::clone(&self.settings);
        let mut client = SnClient::new(
            id.clone(),
            settings,
            c.clean_session,
            c.duration,
            len,
            seed,
            now_ms,
        );
        client.start(c.will, now_ms, &mut self.fx);
        self.by_id.insert(id, from);
        self.clients.insert(
            from,
            Entry {
                client,
                armed: None,
            },
        );
        self.finish(from, out);
    }

    /// Where the gateway's MsgIds for client `id` at `addr` start: a MAC of both under the
    /// gateway's secret, so that only datagrams sent to `addr` reveal them, and the same for
    /// a client reconnecting from its address. `None` when the operating system could not
    /// give the secret (never replaced by a weaker one).
    fn msg_id_seed(&mut self, id: &ClientId, addr: &A) -> Option<u32> {
        if self.secret.key.is_none() {
            let mut key = [0u8; 32];
            self.secret.source.fill(&mut key).ok()?;
            self.secret.key = Some(key);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.key.as_ref()?).ok()?;
        mac.update(id.as_str().as_bytes());
        mac.update(&[0]);
        addr.hash(&mut MacWriter(&mut mac));
        let tag = mac.finalize().into_bytes();
        let mut seed = [0u8; 4];
        seed.copy_from_slice(tag.get(..4)?);
        Some(u32::from_be_bytes(seed))
    }

    /// The client id of a CONNECT: ProtocolId 0x01 (5.3.8), 1..=`max_client_id_len` bytes
    /// of a valid MQTT string (5.3.1 says 1..23 characters; like MQTT 3.1.1 [MQTT-3.1.3-5]
    /// the gateway accepts longer ones within the broker's limit).
    fn client_id(&self, c: &SnConnect) -> Option<ClientId> {
        if c.protocol_id != 0x01 {
            return None;
        }
        let s = std::str::from_utf8(&c.client_id).ok()?;
        let id = MqttStr::try_from_str(s)?;
        ClientId::new(id, &self.settings.limits).ok()
    }

    /// A message from an address without a client.
    fn unconnected(&mut self, from: A, msg: SnMessage, len: usize, out: &mut Vec<Output<A>>) {
        match msg {
            SnMessage::SearchGw { .. } => {
                // 6.1: answered by the gateway itself, to the searcher only (a broadcast
                // reply would reach addresses that asked nothing).
                let gwinfo = SnMessage::GwInfo {
                    gw_id: self.settings.gateway_id,
                    gw_addr: Bytes::new(),
                };
                self.reply_unconnected(from, &gwinfo, len, out);
            }
            SnMessage::Publish(p) if p.qos == SnQoS::MinusOne => self.anonymous(p, out),
            // A client that the gateway does not (or no longer) know: DISCONNECT tells it
            // to connect again.
            SnMessage::Register { .. }
            | SnMessage::RegAck { .. }
            | SnMessage::Publish(_)
            | SnMessage::PubAck { .. }
            | SnMessage::PubComp { .. }
            | SnMessage::PubRec { .. }
            | SnMessage::PubRel { .. }
            | SnMessage::Subscribe(_)
            | SnMessage::Unsubscribe { .. }
            | SnMessage::PingReq { .. }
            | SnMessage::WillTopic(_)
            | SnMessage::WillMsg { .. }
            | SnMessage::WillTopicUpd(_)
            | SnMessage::WillMsgUpd { .. } => {
                self.stats.unconnected += 1;
                let disconnect = SnMessage::Disconnect { duration: None };
                self.reply_unconnected(from, &disconnect, len, out);
            }
            // Other gateways' and clients' broadcasts, messages only a gateway sends, and
            // DISCONNECT (never answered, so that two gateways cannot ping-pong).
            SnMessage::Advertise { .. }
            | SnMessage::GwInfo { .. }
            | SnMessage::Connect(_)
            | SnMessage::ConnAck { .. }
            | SnMessage::WillTopicReq
            | SnMessage::WillMsgReq
            | SnMessage::SubAck { .. }
            | SnMessage::UnsubAck { .. }
            | SnMessage::PingResp
            | SnMessage::Disconnect { .. }
            | SnMessage::WillTopicResp { .. }
            | SnMessage::WillMsgResp { .. } => self.stats.unconnected += 1,
        }
    }

    /// The one way to answer an address without a client: to that address only, one
    /// datagram, never longer than the `received` one.
    fn reply_unconnected(
        &mut self,
        to: A,
        msg: &SnMessage,
        received: usize,
        out: &mut Vec<Output<A>>,
    ) {
        if msg.encoded_len() > received {
            return;
        }
        if let Ok(datagram) = codec::encode_to_bytes(msg) {
            out.push(Output::Send { to, datagram });
        }
    }

    /// QoS -1 PUBLISH (6.8, 7.1): a pre-defined id or a short name only; never answered.
    fn anonymous(&mut self, p: SnPublish, out: &mut Vec<Output<A>>) {
        let topic = match p.topic {
            TopicRef::Predefined(id) => self.settings.predefined.name(id).cloned(),
            TopicRef::Short(s) => {
                topics::topic_name(Bytes::copy_from_slice(&s), &self.settings.limits)
            }
            TopicRef::Normal(_) => None,
        };
        let Some(topic) = topic else {
            self.stats.anonymous_dropped += 1;
            return;
        };
        self.stats.anonymous_publishes += 1;
        out.push(Output::Anonymous(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: p.retain,
            topic,
            packet_id: None,
            properties: PublishProperties::default(),
            payload: p.data,
        }));
    }

    /// Turns the effects of the client at `addr` into outputs, then files its next deadline
    /// or, when it is gone, forgets it.
    fn finish(&mut self, addr: A, out: &mut Vec<Output<A>>) {
        let Some(e) = self.clients.get_mut(&addr) else {
            self.fx.clear();
            return;
        };
        for effect in self.fx.drain(..) {
            match effect {
                Effect::Send(msg) => {
                    if let Ok(datagram) = codec::encode_to_bytes(&msg) {
                        out.push(Output::Send { to: addr, datagram });
                    }
                }
                Effect::Session(packet) => out.push(Output::Session {
                    at: addr,
                    client: e.client.client_id().clone(),
                    packet,
                }),
            }
        }
        if let Some(t) = e.armed.take() {
            self.deadlines.remove(&(t, addr));
        }
        if e.client.is_gone() {
            if e.client.is_lost() {
                self.stats.lost += 1;
            }
            add(&mut self.stats.clients, e.client.stats());
            let id = e.client.client_id().clone();
            self.clients.remove(&addr);
            if self.by_id.get(&id) == Some(&addr) {
                self.by_id.remove(&id);
            }
            out.push(Output::Gone(addr));
            return;
        }
        if let Some(t) = e.client.next_deadline() {
            e.armed = Some(t);
            self.deadlines.insert((t, addr));
        }
    }
}

fn add(sum: &mut ClientStats, s: ClientStats) {
    sum.dropped_qos0 += s.dropped_qos0;
    sum.undeliverable += s.undeliverable;
    sum.retransmissions += s.retransmissions;
    sum.ignored += s.ignored;
    sum.unvalidated_dropped += s.unvalidated_dropped;
}
