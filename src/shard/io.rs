//! The byte paths of a connection: reading into the shard's scratch buffer and decoding,
//! and writing a connection's output with one `send` per turn.
//!
//! Owns: the readiness discipline (the shard's edge-triggered `Poller` reports connections;
//! a connection is read until `EAGAIN`, a short read, or its read budget, and in the last
//! case queued to be read again, because no new edge will come for input already waiting),
//! the read discipline (non-blocking `recv` into ONE per-shard buffer; every complete packet is decoded in place; only an incomplete trailing
//! packet is copied into the connection, and that copy is freed once consumed) and the write
//! discipline (one `send` of everything queued per connection per loop turn; a short write
//! makes the connection wait for writability; output over `max_output_buffer` starts the
//! slow-consumer clock).
//!
//! Must never: allocate a read buffer per connection while it is idle, decode a packet
//! without the limits of its phase, or write to a connection whose previous write is still
//! incomplete (bytes would be reordered).

use std::io;
use std::os::fd::AsFd;

use bytes::{Buf, BytesMut};

use super::close::{CloseReason, SessionCall};
use super::core::{Conn, Core, Phase};
use super::ids::{ConnId, ConnKey};
use super::mailbox::{Envelope, Handoff};
use super::sys::{self, IoOutcome, PollEvent};
use crate::codec::{self, DecodeError, ErrorResponse, Packet, QoS};
use crate::router::interest::ShardId;
use crate::transport::CloseReason as Farewell;

/// Size of the shard's read buffer: one `recv` takes up to this much. 64 KiB holds hundreds
/// of small packets (one syscall for all of them) and a typical kernel socket buffer's worth.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;

/// Output a connection may accumulate within one turn before it is written at once
/// instead of at the end of the turn: a burst of deliveries (one drain of 4096 envelopes)
/// reaches the socket in 64 KiB writes instead of piling up to `max_output_buffer` and
/// having QoS 0 messages dropped while the kernel buffer sits empty.
pub(crate) const EARLY_FLUSH_BYTES: usize = 64 * 1024;

/// `recv` calls per readiness event before the connection yields to others: a client that
/// streams faster than we decode cannot monopolise the shard (4 x 64 KiB per turn).
const READS_PER_WAKE: usize = 4;

/// What the loop does with a connection after a read.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// Keep going. `drained`: the last `recv` found the socket empty (or short), so the
    /// poller reports the connection again when more arrives; otherwise input is left and
    /// the connection must be queued to be read again.
    Continue { drained: bool },
    /// Close the connection (its phase is `Closing`).
    Close,
    /// CONNECT decoded for a client homed on another shard: release the fd to it.
    Handoff(Box<HandoffParts>),
}

/// What travels with a handed-off fd.
#[derive(Debug)]
pub(crate) struct HandoffParts {
    pub(crate) home: ShardId,
    pub(crate) connect: Box<codec::Connect>,
    pub(crate) client_id: crate::session::ClientId,
    pub(crate) assigned: bool,
    pub(crate) leftover: BytesMut,
    pub(crate) identity: super::auth::Identity,
}

/// What one decoded packet led to.
pub(crate) enum Step {
    Continue,
    Close,
    Handoff(Box<HandoffParts>),
}

impl Core {
    /// The socket part of a turn: handle every event the poller has queued (up to
    /// `events.len()`: accept on listeners, read connections), then accept again on
    /// listeners and read again the connections whose budget ran out last turn. Returns true
    /// when work is left for another turn (the event buffer came back full, or a listener
    /// or connection has input left now).
    ///
    /// While an outbox is far behind (or the store is) no event is taken (the kernel keeps
    /// them queued) and no input is read: reading makes envelopes for shards that are
    /// already behind. While one is merely backlogged only the connections that fed it wait
    /// (`read_held`).
    pub(crate) fn io_pass(&mut self, events: &mut [PollEvent]) -> bool {
        self.handshake_turn();
        let n = if self.reads_held() {
            0
        } else {
            self.poller.poll(events)
        };
        for event in &events[..n] {
            let (token, flags) = (event.u64, event.events);
            match super::listen::listener_of(token) {
                Some(super::mqttsn::SN_SOCKET_INDEX) => self.sn_readable(),
                // Completions: taken below, every turn.
                Some(super::uring::RING_INDEX) => {}
                Some(index) => self.accept_ready(index),
                None => self.on_event(ConnKey::from_token(token), flags),
            }
        }
        let ring_more = self.ring_pass();
        self.accept_again();
        if self.sn.as_ref().is_some_and(|sn| sn.has_again()) && !self.reads_held() {
            self.sn_readable();
        }
        let again = std::mem::take(&mut self.again);
        for &key in &again {
            if !self.is_live(key) {
                continue;
            }
            if self.read_held(key.id) {
                self.again.push(key);
            } else {
                self.service_read(key.id);
            }
        }
        n == events.len()
            || ring_more
            || self.handshakes.has_waiting()
            || self.listeners.has_again()
            || self.sn.as_ref().is_some_and(|sn| sn.has_again())
            || self.again.iter().any(|key| !self.read_held(key.id))
    }

    /// Reading any client is held back while the storage writer, or an outbox to another
    /// shard, is far behind (`FAR_BEHIND`): reading makes more work for them.
    pub(crate) fn reads_held(&self) -> bool {
        self.outboxes.far_backlogged() || self.persist.backlogged()
    }

    /// Whether connection `id` must not be read now: all reads are held, or its last read
    /// published to a shard whose outbox is backlogged (the others are read: a new client's
    /// CONNECT or another's PINGREQ does not wait for a congested shard).
    pub(crate) fn read_held(&self, id: ConnId) -> bool {
        if self.reads_held() {
            return true;
        }
        let mask = self.outboxes.backlogged_mask();
        mask != 0 && self.conns.get(id).is_some_and(|c| c.feeds & mask != 0)
    }

    fn is_live(&self, key: ConnKey) -> bool {
        self.conns.live(key).is_some()
    }

    /// The poller reported connection `id`: output space, input, a peer close or an error.
    fn on_event(&mut self, key: ConnKey, flags: u32) {
        let id = key.id;
        let hangup = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        let writable = libc::EPOLLOUT as u32 | hangup;
        let readable = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | hangup;
        let Some(conn) = self.conns.live_mut(key) else {
            return; // Closed (or handed off) earlier in this pass, the slot maybe reused.
        };
        if conn.ring != super::uring::RingRecv::Off {
            // Its input comes from the ring; the poller reports output space (and errors,
            // which the ring reports too).
            if flags & writable != 0 && conn.write_blocked {
                self.on_writable(id);
            }
            if self.conns.get(id).is_some_and(|c| c.read_pending) {
                if self.read_held(id) {
                    self.again.push(key);
                } else {
                    self.service_read(id);
                }
            }
            return;
        }
        if flags & (libc::EPOLLRDHUP as u32 | hangup) != 0 {
            // The peer's FIN (or an error) may sit behind data that one short read leaves:
            // no further edge would report it, so reads go on until `recv` says so.
            conn.peer_closed = true;
        }
        let closing = matches!(conn.phase, Phase::Lingering | Phase::Draining);
        if flags & writable != 0 && conn.write_blocked {
            self.on_writable(id);
        }
        if closing {
            if flags & readable != 0 {
                self.discard_input(id);
            }
            return;
        }
        // Input that waited while the connection was paused is read once output drained.
        let pending = self.conns.get(id).is_some_and(|c| c.read_pending);
        if flags & readable != 0 || pending {
            if self.read_held(id) {
                // Taken from the poller, so no edge will come again: read it once the
                // other shards catch up.
                self.again.push(key);
            } else {
                self.service_read(id);
            }
        }
    }

    /// A closing connection's input is read and thrown away: a close with unread input makes
    /// the kernel send a reset, which can destroy the reason code still in flight to the
    /// client. The client's close (EOF) ends the linger at once. At most `READS_PER_WAKE`
    /// reads per turn, like any connection: a client that keeps streaming cannot hold the
    /// shard for the whole linger (the rest waits for the next turn).
    fn discard_input(&mut self, id: ConnId) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut reads = 0;
        while let Some(conn) = self.conns.get(id) {
            let Some(fd) = conn.fd.as_ref() else {
                break; // A gateway client: no socket of its own to drain.
            };
            if reads == READS_PER_WAKE {
                self.again.push(ConnKey::new(id, conn.generation));
                break;
            }
            reads += 1;
            match sys::recv(fd.as_fd(), &mut scratch) {
                Ok(IoOutcome::Done(0)) | Err(_) => {
                    self.close_now(id);
                    break;
                }
                Ok(IoOutcome::Done(_)) => {}
                Ok(IoOutcome::WouldBlock) => break,
            }
        }
        self.scratch = scratch;
    }

    /// A connection that holds more than `max_output_buffer` bytes for a client that does
    /// not read its socket is not read either: TCP back-pressure instead of unbounded
    /// output.
    pub(crate) fn reads_paused(&self, conn: &Conn) -> bool {
        conn.write_blocked && conn.output_len() > self.shared.config.limits.max_output_buffer
    }

    /// Reads connection `id` (unless it is paused or closing) and acts on what came of it.
    pub(crate) fn service_read(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.ring != super::uring::RingRecv::Off {
            return self.ring_resume(id);
        }
        if matches!(conn.phase, Phase::Lingering | Phase::Draining) {
            // Its input was left for a later turn (`discard_input`).
            self.discard_input(id);
            return;
        }
        if conn.phase.is_closing() || conn.phase == Phase::Verifying {
            // A parked CONNECT is read again once its verdict came (`auth::resume_input`).
            return;
        }
        let paused = self.reads_paused(conn);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.read_pending = paused;
        }
        if paused || self.defer_handshake(id) {
            return;
        }
        match self.on_readable(id) {
            ReadOutcome::Continue { drained: true } => self.ring_adopt(id),
            ReadOutcome::Continue { drained: false } => {
                if let Some(conn) = self.conns.get(id) {
                    self.again.push(ConnKey::new(id, conn.generation));
                }
                // What is left in the socket comes through the ring.
                self.ring_adopt(id);
            }
            ReadOutcome::Close => self.request_close(id),
            ReadOutcome::Handoff(parts) => self.hand_off(id, *parts),
        }
    }

    /// Closes every connection marked for closing (closing one may mark others).
    pub(crate) fn finish_closing(&mut self) {
        while !self.closing.is_empty() {
            for (key, reason, client) in std::mem::take(&mut self.closing) {
                if self.is_live(key) {
                    self.finish_conn(key.id, reason, client);
                }
            }
        }
    }

    /// Moves connection `id` to its home shard: out of this shard's poller and slab, its fd
    /// and what was read with the CONNECT into an envelope.
    pub(crate) fn hand_off(&mut self, id: ConnId, parts: HandoffParts) {
        if self.conns.get(id).is_some_and(|c| c.fd.is_none()) {
            // A gateway client is placed on its home shard before its CONNECT is decoded
            // (`mqttsn.rs`): there is nothing to move, and nowhere to move it.
            self.request_close(id);
            return;
        }
        let Some(conn) = self.conns.try_remove(id) else {
            return;
        };
        let Some(fd) = conn.fd else {
            // Checked above: a socketless (gateway) connection is never moved.
            super::core::broken_invariant(
                self.log_id,
                format_args!("connection {id} handed off without a socket"),
            );
            return;
        };
        self.poller.delete(fd.as_fd());
        let HandoffParts {
            home,
            connect,
            client_id,
            assigned,
            leftover,
            identity,
        } = parts;
        let handoff = Handoff {
            fd,
            peer: conn.peer,
            extra: conn.extra,
            connect,
            client_id,
            assigned,
            leftover,
            identity,
        };
        self.send_to(home, Envelope::Handoff(Box::new(handoff)));
    }

    /// The socket of connection `id` is readable: read, decode, act.
    pub(crate) fn on_readable(&mut self, id: ConnId) -> ReadOutcome {
        self.tick_clock();
        // Envelopes already queued for us were sent before these bytes arrived (a shard
        // flushes its outboxes before its sockets): apply them first, so that a publish read
        // now sees every subscription its client was told about (SUBACK) on another shard.
        if super::mailbox::any_pending(&self.inbox) {
            self.drain_inbox(super::event_loop::DRAIN_BUDGET);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let outcome = self.read_loop(id, &mut scratch);
        self.scratch = scratch;
        outcome
    }

    fn read_loop(&mut self, id: ConnId, scratch: &mut [u8]) -> ReadOutcome {
        let layered = self.conns.get(id).is_some_and(|c| c.transport().is_some());
        if let Some(conn) = self.conns.get_mut(id) {
            // What this read publishes decides which shards it feeds (`send_to`).
            conn.feeds = 0;
        }
        for read in 0..READS_PER_WAKE {
            if read > 0 && self.read_held(id) {
                // The last read made another shard's share of envelopes too large: leave
                // the rest in the socket until it drains (the caller queues this one).
                return ReadOutcome::Continue { drained: false };
            }
            let Some(conn) = self.conns.get(id) else {
                return ReadOutcome::Close;
            };
            match conn.phase {
                Phase::Closing | Phase::Lingering | Phase::Draining => return ReadOutcome::Close,
                // The CONNECT just read was parked: nothing more is read until its verdict.
                Phase::Verifying => return ReadOutcome::Continue { drained: true },
                Phase::AwaitingConnect | Phase::Authenticating | Phase::Open => {}
            }
            let peer_closed = conn.peer_closed;
            let Some(fd) = conn.fd.as_ref() else {
                // A gateway client's input comes as packets from the gateway, never read.
                return ReadOutcome::Continue { drained: true };
            };
            match sys::recv(fd.as_fd(), scratch) {
                Ok(IoOutcome::Done(0)) => {
                    self.close_lost(id, None);
                    return ReadOutcome::Close;
                }
                Ok(IoOutcome::Done(n)) => {
                    self.stats.bytes_received += n as u64;
                    let step = if layered {
                        self.read_through(id, &mut scratch[..n])
                    } else {
                        self.process_input(id, &scratch[..n])
                    };
                    match step {
                        Step::Continue => {}
                        Step::Close => return ReadOutcome::Close,
                        Step::Handoff(parts) => return ReadOutcome::Handoff(parts),
                    }
                    if n < scratch.len() && !peer_closed {
                        return ReadOutcome::Continue { drained: true };
                    }
                }
                Ok(IoOutcome::WouldBlock) => return ReadOutcome::Continue { drained: true },
                Err(e) => {
                    self.close_lost(id, Some(e));
                    return ReadOutcome::Close;
                }
            }
        }
        ReadOutcome::Continue { drained: false }
    }

    /// Decodes every complete packet of connection `id`: its saved partial packet followed
    /// by `bytes` (what one `recv` put in the scratch buffer), then keeps an incomplete
    /// tail in the connection.
    ///
    /// The bytes are first copied into an exact-size buffer (one copy per `recv`, not per
    /// packet): decoded packets are zero-copy views, and what a session keeps (its client
    /// id, subscription filters, queued payloads) must pin only the bytes of its own batch,
    /// never the shard's 64 KiB scratch buffer (measured: 70 KB per idle connection when
    /// every CONNECT pinned a scratch chunk).
    pub(crate) fn process_input(&mut self, id: ConnId, bytes: &[u8]) -> Step {
        let Some(conn) = self.conns.get_mut(id) else {
            return Step::Close;
        };
        let key = ConnKey::new(id, conn.generation);
        let mut work = match conn.take_input() {
            None => BytesMut::from(bytes),
            Some(mut input) => {
                input.extend_from_slice(bytes);
                input
            }
        };
        let began = self.partial.take(key);
        self.read_len = Some(u32::try_from(work.len()).unwrap_or(u32::MAX - 1));
        let step = self.decode_all(id, &mut work);
        self.read_len = None;
        if matches!(step, Step::Continue) && !work.is_empty() {
            return self.keep_partial(key, work, began);
        }
        step
    }

    fn decode_all(&mut self, id: ConnId, work: &mut BytesMut) -> Step {
        loop {
            let Some(conn) = self.conns.get(id) else {
                return Step::Close;
            };
            let limits = match conn.phase {
                Phase::Closing | Phase::Lingering | Phase::Draining => return Step::Close,
                Phase::Verifying => return Step::Continue,
                // Unauthenticated: the CONNECT limits until CONNACK.
                Phase::AwaitingConnect | Phase::Authenticating => self.connect_limits,
                Phase::Open => self.packet_limits,
            };
            let version = conn.version;
            match codec::decode(work, version, &limits) {
                Ok(Some(packet)) => {
                    self.stats.packet(&packet);
                    match self.on_packet(id, packet, work) {
                        Step::Continue => {}
                        other => return other,
                    }
                }
                Ok(None) => return Step::Continue,
                Err(e) => {
                    self.on_decode_error(id, e);
                    return Step::Close;
                }
            }
        }
    }

    pub(crate) fn on_packet(&mut self, id: ConnId, packet: Packet, rest: &mut BytesMut) -> Step {
        let Some(conn) = self.conns.get(id) else {
            return Step::Close;
        };
        let slot = match (conn.phase, conn.client, packet) {
            (Phase::AwaitingConnect, _, Packet::Connect(connect)) => {
                return self.on_connect(id, connect, rest);
            }
            (Phase::Authenticating, _, packet) => {
                return self.on_authenticating_packet(id, packet, rest);
            }
            (Phase::Open, Some(slot), packet) => (slot, packet),
            // A refused connection (no client) or a decoder that let a non-CONNECT through
            // before CONNECT: nothing may act on it.
            _ => return Step::Close,
        };
        let (slot, packet) = slot;
        if matches!(
            packet,
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
        ) {
            // Progress: the slow-consumer clock starts again (`track_output`).
            if let Some(conn) = self.conns.get_mut(id) {
                conn.since = 0;
            }
        }
        let packet = match packet {
            Packet::Auth(auth) if self.uses_enhanced_auth(slot) => {
                self.on_reauth(slot, id, auth);
                return Step::Continue;
            }
            other => other,
        };
        let policy = self.subscribe_policy(slot, &packet);
        let acked = match &packet {
            Packet::Publish(p) => p.qos,
            _ => QoS::AtMostOnce,
        };
        let mut actions = std::mem::take(&mut self.actions);
        let mut hold_from = None;
        if let (Some(client), Some(conn)) = (self.clients.get_mut(slot), self.conns.get_mut(id)) {
            hold_from = Some(conn.out.len());
            if acked != QoS::AtMostOnce {
                // PUBACKs still held for a commit count against our Receive Maximum.
                let held = conn.holds.as_ref().map_or(0, |h| h.held_acks());
                client.session.note_held_acks(held);
            }
            self.session_call = SessionCall::packet(&packet);
            let (now, out) = (self.now_ms, &mut conn.out);
            match &policy {
                Some(p) => client
                    .session
                    .handle_packet_with(packet, p, now, out, &mut actions),
                None => client.session.handle_packet(packet, now, out, &mut actions),
            }
        }
        self.mark_dirty(id);
        self.marked_conn = Some(id);
        self.apply_actions(slot, &mut actions, hold_from);
        if acked == QoS::AtLeastOnce
            && let Some(offset) = hold_from
            && let Some(holds) = self.conns.get_mut(id).and_then(|c| c.holds.as_mut())
        {
            // The PUBACK begins where this call's output began; a hold there delays it.
            holds.count_ack(offset);
        }
        self.session_call = SessionCall::Other;
        self.marked_conn = None;
        self.actions = actions;
        self.note_share_load(slot);
        self.reschedule_client(slot);
        Step::Continue
    }

    /// CONNECT decoded: refuse it, or authenticate it (`auth.rs`), which then hands the
    /// connection to its home or attaches it here. On a listener with
    /// `use_identity_as_username` the client certificate names the user first.
    fn on_connect(
        &mut self,
        id: ConnId,
        mut connect: Box<codec::Connect>,
        rest: &mut BytesMut,
    ) -> Step {
        use crate::session::{ConnectDecision, validate_connect};
        let certified = self.apply_identity(id, &mut connect);
        let decision = validate_connect(&connect, &self.shared.config.limits);
        let (client_id, assigned) = match decision {
            Ok(ConnectDecision::UseId(client_id)) => (client_id, false),
            Ok(ConnectDecision::AssignId) => (self.assign_id(), true),
            Err(code) => {
                let who = connect.client_id.as_str();
                return self.refuse_connect_at(id, connect.protocol, code, who, "");
            }
        };
        if let Err(code) = self.admit_connection() {
            let who = connect.client_id.as_str();
            return self.refuse_connect_at(id, connect.protocol, code, who, "max_connections");
        }
        self.authenticate(id, connect, client_id, assigned, certified, rest)
    }

    /// Refuses connection `id`'s CONNECT with `code` (CONNACK, then close); its close line
    /// names the client id and `code`, and `why` when not empty.
    pub(crate) fn refuse_connect_at(
        &mut self,
        id: ConnId,
        version: codec::ProtocolVersion,
        code: codec::ReasonCode,
        client_id: &str,
        why: &str,
    ) -> Step {
        let reason = CloseReason::ConnectRefused {
            code,
            client_id: CloseReason::shown_id(client_id),
            why: why.to_owned(),
        };
        self.write_refusal(id, version, code, reason)
    }

    /// The CONNACK that refuses connection `id` with `code`, then close for `reason`.
    pub(crate) fn write_refusal(
        &mut self,
        id: ConnId,
        version: codec::ProtocolVersion,
        code: codec::ReasonCode,
        reason: CloseReason,
    ) -> Step {
        if let Some(conn) = self.conns.get_mut(id) {
            crate::session::refuse_connect(version, code, &mut conn.out);
            conn.phase = Phase::Open;
        }
        self.mark_dirty(id);
        self.close_for(id, reason);
        Step::Close
    }

    /// An authenticated CONNECT: hand the connection to its client id's home shard, or
    /// attach it here.
    pub(crate) fn place(
        &mut self,
        id: ConnId,
        connect: Box<codec::Connect>,
        client_id: crate::session::ClientId,
        assigned: bool,
        identity: super::auth::Identity,
        rest: &mut BytesMut,
    ) -> Step {
        let home = super::home_shard(client_id.as_str().as_bytes(), self.shared.shards);
        if home != self.id {
            self.stats.handed_off += 1;
            return Step::Handoff(Box::new(HandoffParts {
                home,
                connect,
                client_id,
                assigned,
                leftover: rest.split(),
                identity,
            }));
        }
        self.attach(id, connect, client_id, assigned, identity);
        Step::Continue
    }

    /// The peer sent bytes that are not a valid packet: answer per the codec's one decision
    /// (CONNACK / DISCONNECT / plain close), log, and close; the session sees a lost
    /// connection (its will is due).
    fn on_decode_error(&mut self, id: ConnId, error: DecodeError) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        // An exchange before CONNACK has a version, but no CONNACK yet.
        let connack_sent = conn.version.is_some() && conn.phase != Phase::Authenticating;
        let version = conn.version;
        let response = error.response(version, connack_sent);
        match response {
            ErrorResponse::ConnAck { version, reason } => {
                crate::session::refuse_connect(version, reason, &mut conn.out);
            }
            ErrorResponse::Disconnect(code) => {
                let packet = Packet::Disconnect(codec::Disconnect::new(code));
                let v = version.unwrap_or(crate::codec::ProtocolVersion::V5);
                codec::encode(&packet, v, &mut conn.out);
            }
            ErrorResponse::Close => {}
        }
        self.mark_dirty(id);
        let answer = response;
        self.close_for(id, CloseReason::ProtocolError { error, answer });
    }

    /// The socket failed or the peer closed: close; `finish_conn` tells the session.
    pub(crate) fn close_lost(&mut self, id: ConnId, error: Option<io::Error>) {
        let reason = error.map_or(CloseReason::PeerClosed, CloseReason::SocketError);
        self.close_for(id, reason);
    }

    /// Writes every dirty connection's output and sends the outboxes: the end of a turn.
    /// Outboxes go first so that an envelope (e.g. an interest change) reaches the other
    /// shard before the packet that tells our client about it (e.g. SUBACK).
    /// Returns false when a channel was full and envelopes wait for the next turn.
    pub(crate) fn flush_all(&mut self) -> bool {
        // The storage batch before the envelopes: whatever another shard stores because of
        // an envelope of this turn reaches the writer after this shard's part.
        self.persist.end_turn(self.id);
        let sent_all = self.outboxes.flush(self.id, &self.shared.mesh);
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if self.is_live(key) {
                self.flush_conn(key.id);
            }
        }
        // Keep the allocation for the next turn.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        sent_all
    }

    /// One `send` of everything queued for connection `id` that no hold keeps back (held
    /// output goes when the hold is released: `Core::update_holds` marks it dirty again).
    pub(crate) fn flush_conn(&mut self, id: ConnId) {
        let max_out = self.shared.config.limits.max_output_buffer;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.fd.is_none() {
            return self.sn_flush_conn(id);
        }
        conn.dirty = false;
        let was_over = conn.output_len() >= max_out;
        let ready = conn
            .holds
            .as_ref()
            .map_or(conn.out.len(), |h| h.writable(conn.out.len()));
        if conn.transport().is_some() {
            match super::layered::flush_layered(conn) {
                Ok(n) => self.stats.bytes_sent += n as u64,
                Err(failure) => {
                    self.flush_failed(id, failure);
                    return;
                }
            }
        } else if !conn.write_blocked
            && ready > 0
            && let Some(fd) = conn.fd.as_ref()
        {
            match sys::send(fd.as_fd(), &conn.out[..ready]) {
                Ok(IoOutcome::Done(n)) if n == conn.out.len() => {
                    self.stats.bytes_sent += n as u64;
                    // Free the buffer: an idle connection holds no output memory.
                    conn.out = BytesMut::new();
                    if let Some(h) = conn.holds.as_mut() {
                        // A hold at the very end still waits for what comes after it.
                        h.advance(n);
                        if h.is_empty() {
                            conn.holds = None;
                        }
                    }
                }
                Ok(IoOutcome::Done(n)) => {
                    self.stats.bytes_sent += n as u64;
                    conn.out.advance(n);
                    if let Some(h) = conn.holds.as_mut() {
                        h.advance(n);
                    }
                    // Short of what was offered: the socket is full. Short of the buffer
                    // only because of a hold: not blocked.
                    conn.write_blocked = n < ready;
                }
                Ok(IoOutcome::WouldBlock) => conn.write_blocked = true,
                Err(e) => {
                    conn.out = BytesMut::new();
                    self.close_lost(id, Some(e));
                    return;
                }
            }
        }
        if conn.phase == Phase::Lingering && conn.out.is_empty() && conn.holds.is_none() {
            // Everything the client is owed is written or wrapped: the transport's farewell
            // (`layered::send_farewell`), then, once the socket took every byte, FIN, then
            // wait for the client's.
            match super::layered::send_farewell(conn) {
                Ok(n) => self.stats.bytes_sent += n as u64,
                Err(failure) => {
                    self.flush_failed(id, failure);
                    return;
                }
            }
            if !conn.has_output() {
                if let Some(fd) = conn.fd.as_ref() {
                    sys::shutdown_write(fd.as_fd());
                }
                conn.phase = Phase::Draining;
            }
        }
        let now_under = conn.output_len() < max_out;
        if was_over && now_under && self.marked_conn != Some(id) {
            self.resume_output(id);
        }
        self.track_output(id);
    }

    /// Connection `id`'s output went back under `max_output_buffer`: its session sends what
    /// it queued meanwhile (QoS 1/2 deliveries wait in the queue, not in the output).
    fn resume_output(&mut self, id: ConnId) {
        let Some(slot) = self.conns.get(id).and_then(|c| c.client) else {
            return;
        };
        let mut actions = std::mem::take(&mut self.actions);
        let mut hold_from = None;
        if let (Some(client), Some(conn)) = (self.clients.get_mut(slot), self.conns.get_mut(id)) {
            hold_from = Some(conn.out.len());
            client
                .session
                .resume_output(self.now_ms, &mut conn.out, &mut actions);
        }
        self.marked_conn = Some(id);
        self.apply_actions(slot, &mut actions, hold_from);
        self.marked_conn = None;
        self.actions = actions;
        self.mark_dirty(id);
    }

    /// Whether connection `id`'s client is a slow consumer right now: its output is over
    /// `max_output_buffer`, or its session is behind (messages wait with the inflight window
    /// full, or its queue is full).
    pub(crate) fn is_slow(&self, id: ConnId) -> bool {
        let max_out = self.shared.config.limits.max_output_buffer;
        let Some(conn) = self.conns.get(id) else {
            return false;
        };
        conn.output_len() >= max_out
            || conn
                .client
                .and_then(|s| self.clients.get(s))
                .is_some_and(|c| c.session.is_behind())
    }

    /// Starts or stops the slow-consumer clock of connection `id` (see `is_slow`): a client
    /// that stays slow for `slow_consumer_timeout_secs` is disconnected by its timer. Every
    /// acknowledgement from the client restarts the clock (`on_packet`), so a subscriber
    /// that keeps up, however full its window, is never taken for a stuck one.
    fn track_output(&mut self, id: ConnId) {
        let slow_ms = u64::from(self.shared.config.limits.slow_consumer_timeout_secs) * 1000;
        let now = self.now_ms;
        let slow = self.is_slow(id);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        // A gateway client's output is handed on every turn, and what it cannot take yet
        // (it sleeps, a message is in flight) the gateway buffers within its own limits.
        if conn.phase != Phase::Open || conn.fd.is_none() {
            return;
        }
        if !slow {
            conn.since = 0;
        } else if conn.since == 0 {
            conn.since = super::core::stamp(now);
            self.schedule_conn(id, now + slow_ms);
        }
    }

    /// The socket of a write-blocked connection has room again: write what waited.
    fn on_writable(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.write_blocked = false;
        }
        self.flush_conn(id);
    }
}

/// The last write before a connection's fd closes: whatever the socket takes now (the
/// final CONNACK / DISCONNECT) up to the first hold (held acknowledgements are never sent
/// early, not even at a close), then FIN. A connection with a transport also sends its
/// farewell for `reason` (`layered::last_flush_layered`).
pub(crate) fn last_flush(conn: &mut Conn, reason: Farewell) {
    if conn.transport().is_some() {
        super::layered::last_flush_layered(conn, reason);
        return;
    }
    let Some(fd) = conn.fd.as_ref() else {
        return; // A gateway client: `Core::close_now` gave its output to the gateway.
    };
    let ready = conn
        .holds
        .as_ref()
        .map_or(conn.out.len(), |h| h.writable(conn.out.len()));
    if ready > 0 && !conn.write_blocked {
        let _ = sys::send(fd.as_fd(), &conn.out[..ready]);
    }
    sys::shutdown_write(fd.as_fd());
}
