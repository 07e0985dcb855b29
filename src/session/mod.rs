//! Sans-IO per-client session state machine: every MQTT 3.1/3.1.1/5.0 rule that concerns one
//! client after its CONNECT has been decoded.
//!
//! Owns: QoS 0/1/2 flows in both directions, packet-id allocation, the outbound inflight
//! window and message queue, our Receive Maximum, inbound topic aliases, keep alive, the will
//! and its delay, session expiry, and the CONNECT-level decisions taken before a session
//! exists (`validate_connect`, `refuse_connect`, `assign_client_id`).
//!
//! Must never: touch a socket or the clock (time comes in as `now_ms`, milliseconds on the
//! broker's monotonic clock), use `unsafe`, or depend on anything but its inputs: the same
//! calls give the same bytes and actions.
//!
//! # Call order (for the shard)
//!
//! 1. Decode CONNECT; `validate_connect` -> on `Err(code)` `refuse_connect` and close.
//!    Authentication happens here, before any session: a password check, or an exchange
//!    of AUTH packets (`Authenticating`, see `auth`) whose outcome goes to
//!    `connect_with_auth` in step 3.
//! 2. Find the client's session on its home shard. If it is connected, call `taken_over`
//!    with the OLD connection's output buffer, flush and close that connection.
//!    If no session exists (or it emitted `Action::Ended`), create one with `Session::new`.
//!    For a clean start either call `connect` on the existing session (it discards its
//!    state, publishes a pending delayed will and emits `Unsubscribe`s) or `discard` it
//!    and create a new one.
//! 3. `connect`: writes CONNACK, resends and drains into `out`.
//! 4. For each decoded packet `handle_packet` (or `handle_packet_with` under an ACL; AUTH
//!    packets of a connection that authenticated with a method go to its `Enhanced`
//!    instead); for each routed message `deliver`; whenever
//!    `now_ms >= next_deadline()` `handle_timeout`. After every call: execute `actions` in
//!    order, then flush `out`.
//! 5. When the socket fails or closes without DISCONNECT: `connection_lost`.
//!
//! Everything that must survive a restart is in `SessionData` (`Session::data`), separate
//! from the connection-bound state in `Connection`.
#![forbid(unsafe_code)]

mod alias;
mod auth;
mod connect;
mod data;
mod inbound;
mod lifecycle;
mod outbound;
mod persist;
mod subscriptions;
mod types;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::BytesMut;

use crate::codec::{self, Connect, Packet, PacketId, ProtocolVersion, QoS, ReasonCode};
use crate::config::Limits;
use crate::router::topic::TopicFilter;

pub use alias::TopicAliasPolicy;
pub use auth::{AccessPolicy, AllowAll, AuthError, Authenticated, Authenticating, Enhanced};
pub use connect::{ConnectDecision, refuse_connect, validate_connect};
pub use data::{Outbound, QueuedMessage, SessionData};
pub use persist::{Change, Header};
pub use subscriptions::Subscriptions;
pub use types::{
    ASSIGNED_ID_PREFIX, ClientId, ClientIdError, DETACH_READS_ABOVE, Delivery, Message,
    SessionStats, Subscription, UNKNOWN_READ, assign_client_id,
};

/// What the shard must do after a session call, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Route this message to its subscribers; when `message.retain` also update the retained
    /// store (an empty payload deletes the retained message [MQTT-3.3.1-6]). `ack`: a QoS 1/2
    /// PUBLISH from the client with this packet id, not acknowledged yet: once routed, the
    /// shard calls `acknowledge` with the reason code (success, or why it was refused).
    Publish {
        message: Arc<Message>,
        ack: Option<PacketId>,
    },
    /// Insert (or replace, when `existed`) this session's subscription in the router, then,
    /// per `sub.options.retain_handling` and `existed`, look up retained messages and call
    /// `deliver` with `from_retained_store: true` [MQTT-3.3.1-9..11]. Never for a shared
    /// subscription's retained messages [MQTT-3.8.4-... retained messages are not sent for
    /// shared subscriptions].
    Subscribe {
        filter: TopicFilter,
        sub: Subscription,
        existed: bool,
    },
    /// Remove this session's subscription from the router.
    Unsubscribe { filter: TopicFilter },
    /// Flush `out`, then close the socket. `will` tells whether the will was (or is being)
    /// handled: the session has already emitted `Publish` for an immediate will or scheduled
    /// a delayed one; the shard has nothing more to do for it.
    Close { will: bool },
    /// The session is over (clean session, expiry 0, or expired): remove it from the
    /// registry and its subscriptions (`Session::subscriptions`) from the router.
    Ended,
    /// A persistent session's stored state changed (see `persist`): the output written by
    /// the same call must not reach the client before the change is durable.
    Persist(Change),
    /// After `Ended`: a QoS 1/2 message this session was picked for as a member of share
    /// group `group` and that the client never fully received (queued, or sent and not
    /// acknowledged). The shard hands it to another member of the group [MQTT-4.8.2-... "If
    /// the Client's Session terminates before the Client reconnects, the Server SHOULD send
    /// the Application Message to another Client that is subscribed to the same Shared
    /// Subscription"]. Emitted after the session left its groups (after `Ended`, or after
    /// the `Unsubscribe`s of a clean start), so the shard cannot pick it again.
    ReturnToGroup {
        group: Arc<TopicFilter>,
        message: Arc<Message>,
    },
}

/// See `Session::outbound_load`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundLoad {
    /// The window is full or messages are queued (or the client is not connected).
    Full,
    /// At most half the window in use, nothing queued.
    Spare,
    /// In between: whatever was last concluded still holds.
    Between,
}

/// How `Session::connect_with_auth` attaches a connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attach<'a> {
    /// The shard resumes an existing session and the client did not ask for a clean start
    /// [MQTT-3.2.2-2..3].
    pub session_present: bool,
    /// The id was assigned by the server; v5 CONNACK carries it [MQTT-3.2.2-16].
    pub assigned_client_id: bool,
    /// The outcome of enhanced authentication, for the v5 CONNACK.
    pub auth: Option<&'a Authenticated>,
}

/// Connection-bound state: valid only while a network connection is attached, never
/// persisted.
#[derive(Clone, Debug)]
struct Connection {
    protocol: ProtocolVersion,
    /// 1.5 × the effective keep alive in ms [MQTT-3.1.2-24]; `None` when keep alive is off.
    /// (At most 1.5 × 65,535 s: fits 32 bits, and the state of a connected session exists
    /// once per idle connection.)
    keep_alive_timeout_ms: Option<u32>,
    /// When the last packet arrived (or the connection was attached).
    last_packet_ms: u64,
    /// Topic aliases (v5) in both directions, allocated at the first one: inbound up to our
    /// Topic Alias Maximum, outbound up to `out_alias_cap`. Per connection, never persisted
    /// [MQTT-3.3.2-... aliases end with the connection], bad input #39.
    aliases: Option<Box<alias::TopicAliases>>,
    /// Outbound aliases we may assign: min(the client's Topic Alias Maximum, our cap); 0
    /// when the client takes none, for 3.x, or when `outbound_topic_aliases` is off.
    out_alias_cap: u16,
    /// Outbound QoS 1/2 window: `min(max_inflight, client Receive Maximum)` [MQTT-3.3.4-7..9].
    send_window: u16,
    /// Largest packet the client accepts (v5 Maximum Packet Size) [MQTT-3.1.2-24..25].
    client_max_packet: u32,
    /// Session Expiry Interval requested in CONNECT was 0: a DISCONNECT may then not set a
    /// non-zero one [MQTT-3.14.2-2] (bad input #65).
    connect_expiry_was_zero: bool,
    /// QoS 1 PUBACKs already answered but not yet written, because the shard holds them
    /// until a commit (or another shard) makes the message safe: the client still counts
    /// them against our Receive Maximum. Told by the shard before each PUBLISH
    /// (`Session::note_held_acks`).
    held_acks: u16,
}

/// When an offline session's timers fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offline {
    /// Broker-clock ms at which the session ends; `None` never.
    expires_at_ms: Option<u64>,
    /// When the delayed will (in `SessionData::will`) is published [MQTT-3.1.3-9]; `None`
    /// when there is no pending will.
    will_due_ms: Option<u64>,
}

/// The session's lifecycle.
#[derive(Clone, Debug)]
enum State {
    /// Created by `new`, `connect` not called yet.
    Detached,
    /// A network connection is attached and CONNACK was sent.
    Connected(Connection),
    /// No connection; the session persists until `expires_at_ms`.
    Offline(Offline),
    /// The session is over; `Action::Ended` was emitted. Every input is ignored.
    Ended,
}

/// One client's session. See the module documentation for the call order.
#[derive(Debug)]
pub struct Session {
    client_id: ClientId,
    /// Shared by every session of a shard (one copy per shard, not per session: a session
    /// exists once per idle connection).
    limits: Arc<Limits>,
    state: State,
    /// Persistent state, saved and loaded by storage.
    data: SessionData,
    /// Protocol level of the last connection (kept while offline, for `protocol()`).
    protocol: Option<ProtocolVersion>,
    /// Allocated at the first count: most sessions never drop or refuse anything, and a
    /// session exists once per idle connection.
    stats: Option<Box<SessionStats>>,
    /// The session's state is stored (it was persistent when last synchronised): changes
    /// are emitted as `Action::Persist`.
    persisted: bool,
}

impl Session {
    /// New session for a decoded CONNECT whose client id is already settled (assigned if
    /// empty and allowed).
    pub fn new(client_id: ClientId, limits: Arc<Limits>) -> Session {
        Session {
            client_id,
            limits,
            state: State::Detached,
            data: SessionData::default(),
            protocol: None,
            stats: None,
            persisted: false,
        }
    }

    /// A session restored from storage: offline, with its persistent data (already
    /// stored: `persisted` is set). `expires_at_ms` is when it ends and `will_due_ms` when
    /// `data.will` is published, both on the broker clock (`None`: never / only when the
    /// session ends). The caller restores `inflight` entries as flows to resend.
    pub fn restore(
        client_id: ClientId,
        limits: Arc<Limits>,
        data: SessionData,
        protocol: Option<ProtocolVersion>,
        expires_at_ms: Option<u64>,
        will_due_ms: Option<u64>,
    ) -> Session {
        Session {
            client_id,
            limits,
            state: State::Offline(Offline {
                expires_at_ms,
                will_due_ms,
            }),
            data,
            protocol,
            stats: None,
            persisted: true,
        }
    }

    /// Attach a connection (new, or resuming this session after `taken_over` or while
    /// offline). Applies clean start / session expiry; writes CONNACK into `out` with
    /// `session_present` (true only when the shard resumes an existing session and the
    /// client did not ask for a clean start [MQTT-3.2.2-2..3]) and the v5 properties; then
    /// resends unacknowledged QoS 1/2 PUBLISH with DUP and PUBREL for flows past PUBREC
    /// [MQTT-4.4.0-1], then drains the queue.
    ///
    /// `assigned_client_id`: the id was assigned by the server; v5 CONNACK carries it
    /// [MQTT-3.2.2-16].
    pub fn connect(
        &mut self,
        connect: Connect,
        session_present: bool,
        assigned_client_id: bool,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let how = Attach {
            session_present,
            assigned_client_id,
            auth: None,
        };
        self.attach(connect, how, now_ms, out, actions);
    }

    /// `connect` with `how` spelled out: also for a client that authenticated with an
    /// Authentication Method (see `auth`), whose v5 CONNACK carries the method and the final
    /// Authentication Data [MQTT-4.12.0-... the Server sends CONNACK with the method].
    pub fn connect_with_auth(
        &mut self,
        connect: Connect,
        how: Attach<'_>,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.attach(connect, how, now_ms, out, actions);
    }

    /// One decoded packet from the client. Ignored unless connected.
    pub fn handle_packet(
        &mut self,
        packet: Packet,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.dispatch(packet, &AllowAll, now_ms, out, actions);
    }

    /// `handle_packet` under authorization rules: a SUBSCRIBE filter `policy` refuses gets
    /// SUBACK 0x87 (3.x 0x80) [MQTT-3.9.3-... Not authorized]. (Publishes are checked by the
    /// shard when it routes them: see `Action::Publish` and `acknowledge`.)
    pub fn handle_packet_with(
        &mut self,
        packet: Packet,
        policy: &dyn AccessPolicy,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.dispatch(packet, policy, now_ms, out, actions);
    }

    /// A packet the shard answered itself (AUTH of a re-authentication, see `Enhanced`)
    /// still counts as activity for keep alive [MQTT-3.1.2-22].
    pub fn packet_seen(&mut self, now_ms: u64) {
        if let State::Connected(c) = &mut self.state {
            c.last_packet_ms = now_ms;
        }
    }

    /// The rules changed and the client may no longer hold its subscription to `filter`:
    /// it is removed as by an UNSUBSCRIBE (`Persist`, `Unsubscribe`), without a packet to
    /// the client (MQTT has none for this). Returns whether it existed.
    pub fn revoke_subscription(&mut self, filter: &TopicFilter, actions: &mut Vec<Action>) -> bool {
        if self.data.subscriptions.remove(filter).is_none() {
            return false;
        }
        let change = persist::Change::Unsubscribed {
            filter: filter.clone(),
        };
        self.persist(change, actions);
        actions.push(Action::Unsubscribe {
            filter: filter.clone(),
        });
        true
    }

    /// The server ends the connection with `code` (v5: DISCONNECT with it; 3.x: closed), as
    /// for a protocol violation: the will is due. E.g. a failed re-authentication (0x87).
    pub fn end_connection(
        &mut self,
        code: ReasonCode,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.server_disconnect(code, now_ms, out, actions);
    }

    /// A routed message for this client (live, or from the retained store). Delivery QoS is
    /// `min(message.qos, delivery.qos)`; RETAIN per [MQTT-3.3.1-9], [MQTT-3.3.1-12..13].
    /// Queued when offline (persistent session; QoS 0 only with `queue_qos0_offline`) or when
    /// the inflight window is full, within `max_queued_messages` / `max_queued_bytes` (QoS 0
    /// evicted first, drops counted). A packet larger than the client's Maximum Packet Size
    /// is dropped and counted [MQTT-3.1.2-25]; expired messages are dropped [MQTT-3.3.2-5].
    pub fn deliver(
        &mut self,
        message: &Arc<Message>,
        delivery: &Delivery,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.route_in(message, delivery, now_ms, out, actions);
    }

    /// Refuses `message` at once when `deliver` could only drop it: the session's queue,
    /// where the message would have to wait, is full and holds no QoS 0 message a QoS 1/2
    /// one could evict. Counts the drop as `deliver` would and returns true; the caller
    /// then has nothing to do. A client that stopped reading meets this for every message
    /// until the slow-consumer timeout ends it, so the refusal costs one check rather than a
    /// queue entry built and thrown away (and no touch of the message's shared count).
    /// Share-group deliveries are not refused here: a full member hands them on.
    pub fn refuses(&mut self, message: &Message, delivery: &Delivery, now_ms: u64) -> bool {
        let full = !self.data.queue.is_empty()
            && self.data.queue.len() >= self.limits.max_queued_messages
            && self.data.queued_qos0 == 0;
        if !full
            || delivery.share_group.is_some()
            || !matches!(self.state, State::Connected(_) | State::Offline(_))
            || message.is_expired(now_ms)
        {
            return false;
        }
        if message.qos.min(delivery.qos) == QoS::AtMostOnce {
            self.count(|s| &mut s.dropped_qos0, 1);
        } else {
            self.count(|s| &mut s.dropped_queue_full, 1);
        }
        true
    }

    /// Answers the client's QoS 1/2 PUBLISH `packet_id` (announced by `Action::Publish`
    /// with `ack`) after the shard routed it: PUBACK (QoS 1) or PUBREC (QoS 2) with `code`.
    /// Success on QoS 2 records the id as awaiting PUBREL. An error code on a 3.x
    /// connection, whose acknowledgements carry none, closes the connection instead.
    pub fn acknowledge(
        &mut self,
        qos: QoS,
        packet_id: PacketId,
        code: ReasonCode,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.answer_publish(qos, packet_id, code, now_ms, out, actions);
    }

    /// How many of this connection's QoS 1 PUBACKs the shard still holds unwritten (see
    /// `Connection::held_acks`); they count against our Receive Maximum for a 5.0 client.
    pub fn note_held_acks(&mut self, n: u32) {
        if let State::Connected(c) = &mut self.state {
            c.held_acks = u16::try_from(n).unwrap_or(u16::MAX);
        }
    }

    /// The connection's output went back below `max_output_buffer` (the client read): queued
    /// messages that waited for room go out.
    pub fn resume_output(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        self.drain_queue(now_ms, out, actions);
    }

    /// Whether the client is behind: connected, with messages waiting that the inflight
    /// window has no room for, or a full queue. The shard starts its slow-consumer clock
    /// then, and restarts it at every acknowledgement while the client stays behind.
    pub fn is_behind(&self) -> bool {
        let State::Connected(c) = &self.state else {
            return false;
        };
        let l = &self.limits;
        (!self.data.queue.is_empty() && self.data.inflight.len() >= usize::from(c.send_window))
            || self.data.queue.len() >= l.max_queued_messages
    }

    /// The connection closed without DISCONNECT (network error, or the shard closed it):
    /// will handling and session expiry start; a session with expiry 0 emits `Ended`.
    /// No-op when no connection is attached (e.g. after a DISCONNECT or a violation, which
    /// already detached it).
    pub fn connection_lost(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if matches!(self.state, State::Connected(_)) {
            self.detach(lifecycle::Detach::WithWill, now_ms, actions);
        }
    }

    /// Takeover by a new connection for this client id [MQTT-3.1.4-3]: v5 -> DISCONNECT 0x8E
    /// into `out` (the OLD connection's buffer), then `Close { will: true }`; the will is
    /// handled as for any abnormal end (delayed wills are cancelled if the new connection
    /// resumes this session in time [MQTT-3.1.3-9]). With session expiry 0 the session ends
    /// (`Ended`) and the new connection gets a fresh one.
    pub fn taken_over(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        self.server_disconnect(ReasonCode::SessionTakenOver, now_ms, out, actions);
    }

    /// Server shutdown, first step (the shard runs it for every session, on every shard,
    /// before any connection is closed). A session that ends with the broker (not
    /// persistent, or `kept` is false: nothing is stored) has its will due now, whatever its
    /// delay [MQTT-3.1.3-9] (the delay ends with the session): `Publish(will)` for a
    /// connected client with a will and for an offline session whose delayed will is
    /// pending. A persistent session the store keeps publishes nothing: it outlives the
    /// restart, and its will with it (see `shutdown`).
    pub fn publish_will_at_shutdown(&mut self, now_ms: u64, kept: bool, actions: &mut Vec<Action>) {
        if kept && self.is_persistent() {
            return;
        }
        match self.state {
            State::Connected(_) | State::Offline(_) => self.publish_will(now_ms, actions),
            State::Detached | State::Ended => {}
        }
    }

    /// Server shutdown, second step: v5 -> DISCONNECT 0x8B into `out`, then
    /// `Close { will: false }` (the will was handled by `publish_will_at_shutdown`). A
    /// session with expiry 0 ends (`Ended`); a persistent one goes offline with its expiry
    /// running from `now_ms`, keeping its will to be published only if the session ends
    /// before the client comes back (`Persist(Header)`).
    pub fn shutdown(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        self.shut_down(now_ms, out, actions);
    }

    /// Ends the session now (the shard creates a new one for a clean start, or an
    /// administrator removes it): a connection still attached is closed as by the server
    /// (v5: no DISCONNECT is written; use `taken_over` first for that), a pending delayed
    /// will is published because its session ends [MQTT-3.1.3-9], then `Ended`. No-op once
    /// ended.
    pub fn discard(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        match self.state {
            State::Connected(_) => {
                actions.push(Action::Close { will: true });
                self.detach(lifecycle::Detach::WithWill, now_ms, actions);
            }
            State::Detached | State::Offline(_) => {}
            State::Ended => return,
        }
        if !matches!(self.state, State::Ended) {
            self.publish_will(now_ms, actions);
            self.end_session(actions);
        }
    }

    /// Next broker-clock instant at which `handle_timeout` must be called: keep-alive expiry
    /// (1.5 × keep alive after the last packet [MQTT-3.1.2-24]), will delay or session
    /// expiry. `None`: no timer.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.state {
            State::Connected(c) => c
                .keep_alive_timeout_ms
                .map(|t| c.last_packet_ms.saturating_add(u64::from(t))),
            State::Offline(o) => match (o.will_due_ms, o.expires_at_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            State::Detached | State::Ended => None,
        }
    }

    /// Fires the timers due at `now_ms` (early calls are harmless).
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        self.timeout(now_ms, out, actions);
    }

    /// How far behind the outbound path to the client is, for shared subscriptions that
    /// pick the least loaded member. Hysteresis is built in: `Full` once the inflight window
    /// is full or anything waits in the queue (or no connection is attached), `Spare` only
    /// once the window is at most half full with nothing queued, `Between` in the band
    /// where the last announced state stands (so a member at its limit does not flip state
    /// with every message and acknowledgement).
    pub fn outbound_load(&self) -> OutboundLoad {
        let State::Connected(c) = &self.state else {
            return OutboundLoad::Full;
        };
        let inflight = self.data.inflight.len();
        let window = usize::from(c.send_window);
        if !self.data.queue.is_empty() || inflight >= window {
            OutboundLoad::Full
        } else if inflight <= window / 2 {
            OutboundLoad::Spare
        } else {
            OutboundLoad::Between
        }
    }

    /// Whether a delivery of `message` at `qos` would be dropped now because it would have
    /// to wait in the queue and the queue is full (`max_queued_messages` or
    /// `max_queued_bytes`; queued QoS 0 messages that could be evicted are not counted).
    /// QoS 0 never waits for a full queue's room: `false`. The shard then offers a shared
    /// subscription's message to another member of its group instead.
    pub fn queue_would_refuse(&self, qos: QoS, message: &Message) -> bool {
        if qos == QoS::AtMostOnce {
            return false;
        }
        match &self.state {
            State::Connected(c)
                if self.data.queue.is_empty()
                    && self.data.inflight.len() < usize::from(c.send_window) =>
            {
                false
            }
            State::Connected(_) | State::Offline(_) => {
                let l = &self.limits;
                self.data.queue.len() >= l.max_queued_messages
                    || self.data.queued_bytes.saturating_add(message.stored_size())
                        > l.max_queued_bytes
            }
            State::Detached | State::Ended => false,
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// The session ended (`Action::Ended` was emitted).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// Protocol level of the current or last connection.
    pub fn protocol(&self) -> Option<ProtocolVersion> {
        self.protocol
    }

    /// Subscriptions, ordered by filter (for router cleanup on `Ended`); each filter a
    /// `TopicFilter` of its own (see `Subscriptions::filters`).
    pub fn subscriptions(&self) -> impl Iterator<Item = (TopicFilter, Subscription)> + '_ {
        self.data.subscriptions.filters()
    }

    /// The persistent state, for storage.
    pub fn data(&self) -> &SessionData {
        &self.data
    }

    /// When an offline session ends (`None`: connected, or never expires).
    pub fn expires_at_ms(&self) -> Option<u64> {
        match &self.state {
            State::Offline(o) => o.expires_at_ms,
            State::Detached | State::Connected(_) | State::Ended => None,
        }
    }

    pub fn stats(&self) -> SessionStats {
        self.stats.as_deref().copied().unwrap_or_default()
    }

    /// The counters without a copy; `None` while nothing was ever counted (a pointer check:
    /// the shard looks after every call on a session).
    pub fn counted(&self) -> Option<&SessionStats> {
        self.stats.as_deref()
    }

    /// Adds `n` to the counter `field` picks.
    fn count(&mut self, field: fn(&mut SessionStats) -> &mut u64, n: u64) {
        if n > 0 {
            *field(self.stats.get_or_insert_with(Box::default)) += n;
        }
    }

    /// Highest QoS we accept and grant, from `Limits::max_qos`.
    fn max_qos(&self) -> QoS {
        max_qos(&self.limits)
    }

    /// Encodes one packet for the current connection (no-op when none is attached).
    fn send(&self, packet: &Packet, out: &mut BytesMut) {
        if let State::Connected(c) = &self.state {
            codec::encode(packet, c.protocol, out);
        }
    }
}

/// `Limits::max_qos` as a `QoS` (values above 2 mean 2).
fn max_qos(limits: &Limits) -> QoS {
    match limits.max_qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
