//! The glue between a shard's connections and the sessions homed on it: attaching a
//! connection to its client's session (takeover, clean start), executing what a session
//! asks for (`apply_actions`), acknowledging a client's publish once it is routed (and, for
//! a stored message, durable), the end of a connection and of a session, and the
//! shutdown steps that concern sessions.
//!
//! Owns: the order in which a session's actions take effect, and the bookkeeping of which
//! clients count in the durable routing index (`Client::durable`).
//!
//! Must never: call a session without executing the actions it returned, let a client's
//! subscriptions count in the durable index when its session is not stored, or
//! acknowledge a publish that storage refused.

use std::sync::Arc;

use super::auth::Identity;
use super::close::{CloseReason, SessionCall};
use super::core::{Client, Conn, Core, LINGER_MS, MAX_LINGERING, Phase};
use super::event_loop::Lifecycle;
use super::ids::{ClientSlot, ConnId, ConnKey, SessionKey};
use super::route::Publisher;
use crate::codec::{Connect, PacketId, QoS, ReasonCode};
use crate::log;
use crate::session::{Action, Attach, ClientId, Message, Session};
use crate::transport::CloseReason as Farewell;

impl Core {
    /// Attaches connection `id` (CONNECT decoded, home shard reached) to the session of
    /// `client_id`, taking over an existing connection of that client.
    pub(crate) fn attach(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        client_id: ClientId,
        assigned: bool,
        identity: Identity,
    ) {
        let now = self.now_ms;
        let mut existing = self.registry.get(&self.clients, &client_id);
        if let Some(slot) = existing {
            self.take_over(slot);
            // Clean start (or a session the takeover ended) begins afresh.
            let live = self
                .clients
                .get(slot)
                .is_some_and(|c| !c.session.is_ended());
            if !live || connect.clean_start {
                if live {
                    // `discard` publishes a pending delayed will (its session ends) and
                    // emits `Ended`; `end_client` then has nothing left to do.
                    let mut actions = std::mem::take(&mut self.actions);
                    if let Some(client) = self.clients.get_mut(slot) {
                        client.session.discard(now, &mut actions);
                    }
                    self.apply_actions(slot, &mut actions, None);
                    self.actions = actions;
                    self.end_client(slot);
                }
                existing = None;
            }
        }
        let session_present = existing.is_some();
        if existing.is_none()
            && let Err(code) = self.admit_session()
        {
            self.refuse_attach(id, &connect, code);
            return;
        }
        let slot = match existing {
            Some(slot) => slot,
            None => self.new_client(client_id.clone()),
        };
        self.set_identity(slot, &identity);
        // Whatever waits in a resumed session goes to this client only if it may read it
        // now (another user's client id, rules reloaded, a session restored from the store).
        let unreadable = if session_present {
            self.drop_unreadable(slot)
        } else {
            (0, None)
        };
        let version = connect.protocol;
        let Some(conn) = self.conns.get_mut(id) else {
            // The caller is handling this connection's CONNECT (read from it, or its
            // hand-off just made it), and nothing above closes it.
            super::core::broken_invariant(
                self.log_id,
                format_args!("connection {id} gone while attaching client slot {slot}"),
            );
            return;
        };
        conn.phase = Phase::Open;
        conn.version = Some(version);
        conn.client = Some(slot);
        conn.since = 0;
        let peer = conn.peer;
        let hold_from = conn.out.len();
        let mut actions = std::mem::take(&mut self.actions);
        let how = Attach {
            session_present,
            assigned_client_id: assigned,
            auth: identity.enhanced.as_deref(),
        };
        if let Some(client) = self.clients.get_mut(slot) {
            client.conn = Some(id);
            self.stats.connects += 1;
            self.stats.connected += 1;
            client
                .session
                .connect_with_auth(*connect, how, now, &mut conn.out, &mut actions);
        } else {
            // Made above, or resumed (live and not ended, checked above).
            super::core::broken_invariant(
                self.log_id,
                format_args!("client slot {slot} gone while attaching connection {id}"),
            );
        }
        log!(
            INFO,
            self.log_id,
            "client {} connected from {peer} ({version:?}, session present: {session_present})",
            client_id.as_str()
        );
        self.log_unreadable_dropped(slot, unreadable);
        self.mark_dirty(id);
        self.marked_conn = Some(id);
        self.apply_actions(slot, &mut actions, Some(hold_from));
        if session_present {
            // Resumed, maybe by another user or under other rules than it was made with.
            self.recheck_subscriptions(slot);
        }
        self.marked_conn = None;
        self.actions = actions;
        self.sync_durability(slot);
        self.note_share_load(slot);
        self.reschedule_client(slot);
    }

    /// Refuses connection `id`'s CONNECT with `code` after all (a limit of the home shard).
    fn refuse_attach(&mut self, id: ConnId, connect: &Connect, code: ReasonCode) {
        let who = connect.client_id.as_str();
        self.refuse_connect_at(id, connect.protocol, code, who, "max_sessions");
    }

    pub(crate) fn new_client(&mut self, client_id: ClientId) -> ClientSlot {
        // Not a view of the CONNECT's read: that would pin the read (with whatever else the
        // client sent in it) for the session's life.
        let client_id = client_id.detached();
        let session = Session::new(client_id, Arc::clone(&self.session_limits));
        self.insert_client(session)
    }

    /// Adds a session (new or restored) to this shard's clients and registry.
    pub(crate) fn insert_client(&mut self, session: Session) -> ClientSlot {
        let generation = self.next_generation();
        let slot = self.clients.insert(Client {
            session,
            conn: None,
            generation,
            timer_tick: 0,
            durable: false,
            share_load: super::share::ShareLoad::NotMember,
        });
        self.registry.insert(&self.clients, slot);
        slot
    }

    /// Makes client `slot`'s subscriptions count in the durable routing index exactly while
    /// its session is stored (persistent, with storage on): a QoS 1/2 publish then waits
    /// for this shard's commit before it is acknowledged.
    pub(crate) fn sync_durability(&mut self, slot: ClientSlot) {
        let Some(client) = self.clients.get(slot) else {
            return;
        };
        let durable = client.session.is_persistent() && self.persist.enabled();
        if durable == client.durable {
            return;
        }
        let subs: Vec<_> = client.session.subscriptions().collect();
        if let Some(c) = self.clients.get_mut(slot) {
            c.durable = durable;
        }
        for (filter, sub) in subs {
            if filter.is_shared() {
                // Members carry the flag: join again with the new one.
                self.subscribe(slot, filter, sub, true, None);
                continue;
            }
            if sub.options.qos == QoS::AtMostOnce {
                continue;
            }
            if durable {
                self.durable_sub_added(&filter);
            } else {
                self.durable_sub_removed(&filter);
            }
        }
    }

    /// A new connection claims client `slot`: the old connection (if any) is told and
    /// closed [MQTT-3.1.4-3].
    fn take_over(&mut self, slot: ClientSlot) {
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        let Some(old) = client.conn.take() else {
            return;
        };
        self.stats.connected -= 1;
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(conn) = self.conns.get_mut(old) {
            client
                .session
                .taken_over(self.now_ms, &mut conn.out, &mut actions);
        }
        self.mark_dirty(old);
        // Before the connection lets go of its client: the close line names it.
        self.close_for(old, CloseReason::Takeover);
        if let Some(conn) = self.conns.get_mut(old) {
            conn.client = None;
        }
        self.apply_actions(slot, &mut actions, None);
        self.actions = actions;
    }

    /// Executes a session's actions in order. `slot` is the client that produced them;
    /// `hold_from`: where in its connection's output the call that produced them began
    /// writing (acknowledgements from there on may be held), `None` when nothing of it may
    /// be held (no connection, or a server-side end).
    pub(crate) fn apply_actions(
        &mut self,
        slot: ClientSlot,
        actions: &mut Vec<Action>,
        hold_from: Option<usize>,
    ) {
        self.collect_session_stats(slot);
        for action in actions.drain(..) {
            match action {
                Action::Publish { message, ack } => {
                    self.publish_from(slot, message, ack, hold_from)
                }
                Action::Subscribe {
                    filter,
                    sub,
                    existed,
                } => {
                    self.note_subscription(slot, &filter);
                    self.subscribe(slot, filter, sub, existed, hold_from)
                }
                Action::Unsubscribe { filter } => {
                    self.note_unsubscription(slot, &filter);
                    self.unsubscribe(slot, &filter)
                }
                Action::Close { .. } => self.detach_and_close(slot),
                Action::Ended => self.end_client(slot),
                Action::Persist(change) => self.persist_change(slot, change, hold_from),
                Action::ReturnToGroup { group, message } => {
                    self.return_to_group(&group, &message, 0)
                }
            }
        }
    }

    /// Acknowledges a message of client `slot`'s session when the client waits for that
    /// (`ack`), then routes it: the acknowledgement goes first in the client's output (as a
    /// client publishing to its own subscription expects) and is held for whatever the
    /// routing must make durable. When the message needs storage and the store is failing,
    /// the answer is 0x97 (v5; 3.x is disconnected) and the message is not routed.
    fn publish_from(
        &mut self,
        slot: ClientSlot,
        mut message: Arc<Message>,
        ack: Option<PacketId>,
        hold_from: Option<usize>,
    ) {
        let qos = message.qos;
        if message.pinned_read == crate::session::UNKNOWN_READ
            && let Some(read) = self.read_len
        {
            // The only reference yet: no copy is made.
            Arc::make_mut(&mut message).pinned_read = read;
        }
        if qos != QoS::AtMostOnce && self.persist.enabled() {
            // The only reference yet: no copy is made. Every shard that stores the message
            // stores it under this id (one copy per message, however many sessions).
            Arc::make_mut(&mut message).store_id = self.persist.new_msg_id();
        }
        let publisher = Publisher {
            slot,
            hold_from,
            acked: ack.is_some(),
            persistent: self.clients.get(slot).is_some_and(|c| c.durable),
        };
        let denied = !self.may_publish_from(slot, &message.topic);
        let over_retained = !denied && self.retained_over_limit(&message);
        let v5 = self
            .clients
            .get(slot)
            .and_then(|c| c.session.protocol())
            .is_some_and(|p| p.is_v5());
        if over_retained {
            self.stats.retained_refused += 1;
            if !v5 || ack.is_none() {
                // No acknowledgement to refuse in (QoS 0), or one without a code (3.x): the
                // message goes out, not retained. A v5 QoS 1/2 one is refused below (0x97).
                Arc::make_mut(&mut message).retain = false;
            }
        }
        let Some(packet_id) = ack else {
            if denied {
                self.log_denied_publish(slot, &message);
            } else {
                self.route_client_publish(message, publisher);
            }
            return;
        };
        let refused = !denied
            && (self.needs_unavailable_store(&message) || (message.retain && over_retained));
        let code = if denied {
            self.refused_publish_code(slot)
        } else if refused {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::Success
        };
        let mut more = Vec::new();
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        let conn = client.conn;
        let out = match conn.and_then(|c| self.conns.get_mut(c)) {
            Some(c) => &mut c.out,
            None => &mut self.sink,
        };
        if refused {
            self.session_call = SessionCall::StoreRefused;
        }
        client
            .session
            .acknowledge(qos, packet_id, code, self.now_ms, out, &mut more);
        self.sink.clear();
        self.apply_actions(slot, &mut more, hold_from);
        if let Some(c) = conn {
            self.mark_dirty(c);
        }
        if denied {
            self.log_denied_publish(slot, &message);
        } else if refused {
            log!(
                WARN,
                self.log_id,
                "client {}: publish to {} refused ({})",
                self.client_name(Some(slot)),
                message.topic.as_str(),
                if over_retained {
                    "retained limits"
                } else {
                    "the store is failing"
                }
            );
        } else {
            self.route_client_publish(message, publisher);
        }
    }

    /// A publish (or will) the ACL refused: not routed; logged.
    fn log_denied_publish(&self, slot: ClientSlot, message: &Message) {
        log!(
            INFO,
            self.log_id,
            "client {}: publish to {} denied by the ACL; dropped",
            self.client_name(Some(slot)),
            message.topic.as_str()
        );
    }

    /// The session let go of its connection: flush what it wrote, then close.
    fn detach_and_close(&mut self, slot: ClientSlot) {
        let Some(conn) = self.clients.get_mut(slot).and_then(|c| c.conn.take()) else {
            return;
        };
        self.stats.connected -= 1;
        let out = self.conns.get(conn).map_or(&[][..], |c| &c.out[..]);
        let reason = self.session_call.close_reason(out);
        self.mark_dirty(conn);
        // Before the connection lets go of its client: the close line names it.
        self.close_for(conn, reason);
        if let Some(c) = self.conns.get_mut(conn) {
            c.client = None;
        }
    }

    /// The session is over: its subscriptions leave the router, the slot is freed.
    pub(crate) fn end_client(&mut self, slot: ClientSlot) {
        let Some(client) = self.clients.try_remove(slot) else {
            return;
        };
        self.forget_session_stats(slot);
        let key = SessionKey {
            slot,
            generation: client.generation,
        };
        for (filter, _) in client.session.subscriptions() {
            self.remove_subscription(slot, key, &filter, client.durable);
        }
        self.share_member_ended(key, client.share_load);
        self.registry.remove(client.session.client_id(), slot);
        self.access_client_ended(slot);
        if let Some(conn) = client.conn {
            self.stats.connected -= 1;
            if let Some(c) = self.conns.get_mut(conn) {
                c.client = None;
            }
            self.close_for(conn, CloseReason::SessionEnded);
        }
    }

    /// Begins the close of connection `id` (requested earlier in the turn) and writes its
    /// close line (`reason`; `client`: the client id it served, if it was attached when the
    /// close was requested): if the session still counted on it, the connection was lost
    /// (will, expiry). Then the connection lingers (see `Phase::Lingering`) unless the
    /// client already closed its side or too many linger already: it closes at once then.
    pub(crate) fn finish_conn(
        &mut self,
        id: ConnId,
        reason: CloseReason,
        client: Option<ClientId>,
    ) {
        self.tick_clock();
        let farewell = self.farewell_reason(id);
        self.set_close_reason(id, farewell);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let (slot, peer, peer_closed) = (conn.client.take(), conn.peer, conn.peer_closed);
        let generation = conn.generation;
        self.stats.closes[reason.kind().index()] += 1;
        let name = client.as_ref().map_or("-", ClientId::as_str);
        crate::log::write_at(
            reason.limiter(),
            reason.level(),
            self.log_id,
            format_args!("client {name} at {peer}: connection closed: {reason}"),
        );
        self.auth_conn_closed(ConnKey::new(id, generation));
        if let Some(slot) = slot {
            self.connection_lost(slot, id);
        }
        if peer_closed || self.lingering >= MAX_LINGERING {
            self.close_now(id);
            return;
        }
        let stamp = super::core::stamp(self.now_ms);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.phase = Phase::Lingering;
            conn.since = stamp;
            drop(conn.take_input());
            self.lingering += 1;
        }
        self.release_partial(id);
        self.schedule_conn(id, self.now_ms + LINGER_MS);
        self.flush_conn(id);
        // On the ring: input is read (and thrown away) until the client closes.
        self.ring_arm(id);
    }

    /// Client `slot`'s connection `id` ended without the session letting go first.
    fn connection_lost(&mut self, slot: ClientSlot, id: ConnId) {
        let attached = self.clients.get(slot).is_some_and(|c| c.conn == Some(id));
        if !attached {
            return;
        }
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(client) = self.clients.get_mut(slot) {
            client.conn = None;
            self.stats.connected -= 1;
            client.session.connection_lost(self.now_ms, &mut actions);
        }
        self.apply_actions(slot, &mut actions, None);
        self.actions = actions;
        self.note_share_load(slot);
        self.reschedule_client(slot);
    }

    /// Closes connection `id` now: whatever the socket takes up to the first hold (and the
    /// transport's farewell), then the fd closes (a session still attached is told first).
    pub(crate) fn close_now(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if let Some(slot) = conn.client.take() {
            self.connection_lost(slot, id);
        }
        self.release_partial(id);
        if self.conns.get(id).is_some_and(|c| c.fd.is_none()) {
            self.sn_conn_closing(id);
        }
        let Some(mut conn) = self.conns.try_remove(id) else {
            return;
        };
        self.ring_release(&conn, id);
        if matches!(conn.phase, Phase::Lingering | Phase::Draining) {
            self.lingering -= 1;
        }
        let reason = self.farewell_reason_of(&conn);
        super::io::last_flush(&mut conn, reason);
    }

    /// The farewell a transport sends when connection `id` ends (see `farewell_reason_of`).
    fn farewell_reason(&self, id: ConnId) -> Farewell {
        self.conns
            .get(id)
            .map_or(Farewell::Normal, |c| self.farewell_reason_of(c))
    }

    /// The reason set for the connection (a protocol error, a timeout), or "going away"
    /// once the broker is closing its connections.
    fn farewell_reason_of(&self, conn: &Conn) -> Farewell {
        match self.lifecycle {
            Lifecycle::Running | Lifecycle::RoutingWills | Lifecycle::WillsRouted => {
                conn.close_reason()
            }
            Lifecycle::Closing { .. } | Lifecycle::Done => Farewell::GoingAway,
        }
    }

    /// Server shutdown, first step: the will of every session that ends with the broker is
    /// due (a stored session keeps its will across the restart) and is routed like any
    /// publish, to subscribers on every shard; the second step (`begin_shutdown`) waits
    /// until every shard has done this.
    pub(crate) fn route_shutdown_wills(&mut self) {
        self.tick_clock();
        let kept = self.persist.enabled();
        let slots: Vec<_> = self.clients.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            let mut actions = std::mem::take(&mut self.actions);
            if let Some(client) = self.clients.get_mut(slot) {
                client
                    .session
                    .publish_will_at_shutdown(self.now_ms, kept, &mut actions);
            }
            self.apply_actions(slot, &mut actions, None);
            self.actions = actions;
        }
    }

    /// Server shutdown, second step: every session is told (v5 clients get DISCONNECT
    /// 0x8B) and every connection closes; stored sessions record that they are offline.
    pub(crate) fn begin_shutdown(&mut self) {
        self.listeners.close(&self.poller);
        self.sn_close();
        self.tick_clock();
        let attached: Vec<(ClientSlot, ConnId)> = self
            .clients
            .iter()
            .filter_map(|(slot, c)| c.conn.map(|conn| (slot, conn)))
            .collect();
        for (slot, conn) in attached {
            let mut actions = std::mem::take(&mut self.actions);
            if let (Some(client), Some(c)) = (self.clients.get_mut(slot), self.conns.get_mut(conn))
            {
                self.session_call = SessionCall::Shutdown;
                client
                    .session
                    .shutdown(self.now_ms, &mut c.out, &mut actions);
            }
            self.mark_dirty(conn);
            self.apply_actions(slot, &mut actions, None);
            self.session_call = SessionCall::Other;
            self.actions = actions;
        }
        let all: Vec<_> = self.conns.iter().map(|(id, _)| id).collect();
        for id in all {
            self.close_for(id, CloseReason::Shutdown);
        }
    }
}
