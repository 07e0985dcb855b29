//! The state one shard owns and the glue between its sessions, connections and routes.
//!
//! Owns: the connection slab (`Conn`: fd, buffers, flags; no socket object, no task), the
//! shard's `Poller` (every connection's readiness), the client
//! registry of the client ids homed on this shard (ClientId -> `Client` with its `Session`),
//! the timer wheel, the outboxes, and the execution of `session::Action`s. Everything here
//! runs on the shard's thread, inside `RefCell` borrows that never cross an `.await`.
//!
//! Lifecycle of a connection: accepted -> `AwaitingConnect` (CONNECT timeout on the wheel)
//! -> CONNECT decoded: refused and closed, or authenticated (`Verifying` while a password is
//! checked off the shard, `Authenticating` during an AUTH exchange) and then handed to its
//! home shard, or attached to a client here (`Open`) -> `Closing` (requested by the session, takeover, shutdown, an I/O
//! error or a timer; queued in `closing`) -> the end of the turn calls `finish_conn`:
//! a last flush, the fd closes, and the session hears `connection_lost` if it was still
//! attached.
//!
//! Must never: block, call a session without executing the actions it returned, or let a
//! slab slot be reused while a timer or another shard may still name it without a
//! generation check.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::ids::{ClientSlot, ConnId, ConnKey, SessionKey};
use super::slots::Slots;
use bytes::BytesMut;
use crossbeam_channel::Receiver;

use super::Shared;
use super::close::{CloseReason, SessionCall};
use super::event_loop::Lifecycle;
use super::hold::{HoldKey, Holds};
use super::layered::{ConnExtra, HandshakeBudget};
use super::listen::Listeners;
use super::mailbox::{Envelope, Outboxes};
use super::persist::Persist;
use super::registry::Registry;
use super::routes::Routes;
use super::stats::{ShardStats, Telemetry};
use super::sys;
use super::sys::Poller;
use super::timer::{TimerKey, TimerWheel};
use crate::codec::{DecodeLimits, ProtocolVersion};
use crate::config::Limits;
use crate::log;
use crate::router::interest::ShardId;
use crate::session::{Action, ClientId, Session};

/// Where a connection is in its life. A close is never abrupt: the reason code (CONNACK,
/// DISCONNECT) and any held acknowledgement must reach the client, and the client's unread
/// bytes must not make the kernel answer with a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted; only CONNECT is accepted, within `connect_timeout_secs`.
    AwaitingConnect,
    /// CONNECT decoded, its password being checked on a verifier thread (`auth.rs`): not
    /// read until the verdict; the CONNECT timeout still runs.
    Verifying,
    /// A v5 CONNECT with an Authentication Method: AUTH packets until CONNACK (`auth.rs`);
    /// the CONNECT timeout still runs.
    Authenticating,
    /// Attached to a session (or refused, with the CONNACK pending a flush).
    Open,
    /// A close was requested; it begins at the end of the turn (`Core::finish_conn`).
    Closing,
    /// The session let go; what may still be written is written (held acknowledgements once
    /// their commit is done), input is read and thrown away. Bounded by `LINGER_MS`.
    Lingering,
    /// Everything was written and the write side shut (FIN sent); input is read and thrown
    /// away until the client closes too or `LINGER_MS` passes.
    Draining,
}

impl Phase {
    /// The connection is closing: no more input is acted on.
    pub(crate) fn is_closing(self) -> bool {
        matches!(self, Phase::Closing | Phase::Lingering | Phase::Draining)
    }
}

/// How long a closing connection may take to write its last output and see the client close
/// (the reason code reaches a client that is still writing; about what mosquitto and the
/// Linux stack give a closing socket).
pub(crate) const LINGER_MS: u64 = 2_000;

/// Connections a shard lets linger at once; beyond that a closing connection closes at once
/// (a flood of bad connections cannot hold memory for `LINGER_MS` each without bound).
pub(crate) const MAX_LINGERING: usize = 4_096;

/// One TCP connection on this shard. Kept small: it exists once per idle connection, and it
/// is all user space holds for one (readiness comes from the shard's `Poller`).
#[derive(Debug)]
pub(crate) struct Conn {
    /// The socket; closed when the connection's slot is freed. `None`: the connection is an
    /// MQTT-SN client of the shard's gateway at `peer` (`mqttsn.rs`): it has no socket of its
    /// own, its output goes to the gateway at the end of the turn.
    pub(crate) fd: Option<OwnedFd>,
    pub(crate) generation: u32,
    /// The wheel tick of this connection's live timer entry; 0: none.
    pub(crate) timer_tick: u32,
    pub(crate) phase: Phase,
    /// Queued in `Core::dirty`.
    pub(crate) dirty: bool,
    /// A write hit EAGAIN: nothing more is written until the poller reports output space.
    pub(crate) write_blocked: bool,
    /// Input is waiting that was not read: the connection is paused (see
    /// `Core::reads_paused`) and is read once its output drains.
    pub(crate) read_pending: bool,
    /// The poller reported the peer's FIN, a hang-up or an error: a short read no longer
    /// means "drained", reads continue until `recv` returns 0 or an error.
    pub(crate) peer_closed: bool,
    /// Where its input comes from: the poller, or the shard's receive ring (`uring.rs`).
    pub(crate) ring: super::uring::RingRecv,
    /// The shards its last read sent publishes to (bit `shard % 8`, `Outboxes::bit`): while
    /// one of them is behind, this connection is not read (`Core::read_held`), the others
    /// are.
    pub(crate) feeds: u8,
    /// Output held back until other shards answer or a storage commit completes (see
    /// `hold.rs`); `None` while nothing is held (8 B in an idle connection).
    pub(crate) holds: Option<Box<Holds>>,
    pub(crate) version: Option<ProtocolVersion>,
    /// The attached client's slot; `None` before CONNECT and once the session let go.
    pub(crate) client: Option<ClientSlot>,
    /// `AwaitingConnect`: when accepted. `Open`: since when `out` is over
    /// `max_output_buffer` (0: it is not). A `Stamp` (4 B instead of 8: a connection exists
    /// once per idle client).
    pub(crate) since: Stamp,
    /// The client's address: the socket's peer, or the address a PROXY header gave.
    pub(crate) peer: SocketAddr,
    /// What most connections lack, boxed together (see `ConnExtra`): `None` for a plain TCP
    /// connection between packets (8 B in every idle connection).
    pub(crate) extra: Option<Box<ConnExtra>>,
    /// Encoded output not yet written (MQTT bytes: a transport wraps them at flush time);
    /// freed once fully written.
    pub(crate) out: BytesMut,
}

/// A lookup that the shard's own bookkeeping guarantees came back empty: a bug of the
/// broker, never something a client can cause (a stale id after a close is not this: it is
/// checked, and ignored, where it can occur). Debug builds and debug tests stop here; a
/// release build logs it and the caller takes its way out, since a panic would stop the
/// shard and every client on it.
#[cold]
#[track_caller]
pub(crate) fn broken_invariant(shard: Option<u16>, what: std::fmt::Arguments<'_>) {
    if cfg!(debug_assertions) {
        panic!("broken invariant: {what}");
    }
    log!(
        ERROR,
        shard,
        "internal error (a bug): {what} at {}",
        std::panic::Location::caller()
    );
}

/// A broker-clock instant in tenths of a second, 0 meaning "none": enough for timeouts
/// counted in seconds, in 4 bytes (it wraps after 13 years of uptime).
pub(crate) type Stamp = u32;

/// The stamp of `now_ms` (never 0).
pub(crate) fn stamp(now_ms: u64) -> Stamp {
    (now_ms / 100) as u32 + 1
}

/// The broker-clock milliseconds of a non-zero stamp (rounded down to its tenth).
pub(crate) fn stamp_ms(stamp: Stamp) -> u64 {
    u64::from(stamp.saturating_sub(1)) * 100
}

/// A client id homed on this shard: its session and the attached connection, if any.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) session: Session,
    pub(crate) conn: Option<ConnId>,
    pub(crate) generation: u32,
    /// The wheel tick of this client's live timer entry; 0: none.
    pub(crate) timer_tick: u32,
    /// The session is stored: its QoS 1/2 subscriptions count in the durable routing index
    /// (see `Core::sync_durability`).
    pub(crate) durable: bool,
    /// Shared-subscription member: what this shard last told the others about its
    /// outbound window (`least_loaded`, see `share.rs`).
    pub(crate) share_load: super::share::ShareLoad,
}

/// The shard's connection slab.
pub(crate) type Conns = Slots<ConnId, Conn>;

/// The slab of the clients homed on the shard.
pub(crate) type Clients = Slots<ClientSlot, Client>;

impl Conns {
    /// The connection `key` names, unless it closed (its slot may hold a newer one).
    pub(crate) fn live(&self, key: ConnKey) -> Option<&Conn> {
        self.get(key.id).filter(|c| c.generation == key.generation)
    }

    /// `live`, for a change.
    pub(crate) fn live_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.get_mut(key.id)
            .filter(|c| c.generation == key.generation)
    }
}

impl Clients {
    /// The client `key` names, unless it ended (its slot may hold a newer one).
    pub(crate) fn live(&self, key: SessionKey) -> Option<&Client> {
        self.get(key.slot)
            .filter(|c| c.generation == key.generation)
    }

    /// `live`, for a change.
    pub(crate) fn live_mut(&mut self, key: SessionKey) -> Option<&mut Client> {
        self.get_mut(key.slot)
            .filter(|c| c.generation == key.generation)
    }
}

/// Everything one shard owns.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) id: ShardId,
    /// The shard number as log lines show it.
    pub(crate) log_id: Option<u16>,
    pub(crate) shared: Arc<Shared>,
    /// The shard's clock, read once per wake of a task (see `tick_clock`).
    pub(crate) now_ms: u64,
    /// Every connection's fd (and the listeners'), for readiness.
    pub(crate) poller: Poller,
    /// The receive ring of the io_uring driver (`uring.rs`); `None` on the epoll driver.
    pub(crate) recv_ring: Option<Box<super::uring::RecvRing>>,
    /// Reused for every batch of the ring's completions.
    pub(crate) completions: Vec<super::uring::Completion>,
    /// This shard's listening sockets (closed at the shutdown's closing step).
    pub(crate) listeners: Listeners,
    /// Where the shard is in its life (serving, or which shutdown step).
    pub(crate) lifecycle: Lifecycle,
    /// When the timer wheel next advances (the next tick boundary).
    pub(crate) next_tick_ms: u64,
    /// Connections to close at the next turn, why, and the client id it served (for the
    /// close line; the connection may have let go of its client).
    pub(crate) closing: Vec<(ConnKey, CloseReason, Option<ClientId>)>,
    /// Connections that stopped reading with input left (their read budget ran out): the
    /// edge-triggered poller will not report them again, so the next turn reads them.
    pub(crate) again: Vec<ConnKey>,
    pub(crate) conns: Conns,
    pub(crate) clients: Clients,
    pub(crate) registry: Registry,
    pub(crate) routes: Routes,
    pub(crate) wheel: TimerWheel,
    pub(crate) outboxes: Outboxes,
    /// Inbound channels, one per source shard.
    pub(crate) inbox: Vec<Receiver<Envelope>>,
    /// Connections with output to write this turn.
    pub(crate) dirty: Vec<ConnKey>,
    /// Reused for every session call.
    pub(crate) actions: Vec<Action>,
    /// The one read buffer of the shard (`SCRATCH_SIZE` bytes, allocated once).
    pub(crate) scratch: Box<[u8]>,
    /// The MQTT bytes a transport took out of one read of `scratch` (decrypted, unframed);
    /// the second read buffer of the shard, emptied after each read.
    pub(crate) app: BytesMut,
    /// The time this turn spent on TLS handshakes and the connections waiting for the next (see
    /// `layered::HandshakeBudget`).
    pub(crate) handshakes: HandshakeBudget,
    /// Output of calls on sessions with no connection; always discarded.
    pub(crate) sink: BytesMut,
    pub(crate) connect_limits: DecodeLimits,
    pub(crate) packet_limits: DecodeLimits,
    /// `shared.config.limits`, shared by every session of this shard.
    pub(crate) session_limits: Arc<Limits>,
    next_gen: u32,
    assigned_ids: u64,
    pub(crate) stats: ShardStats,
    /// Latency probes and, on shard 0, the `$SYS` tree.
    pub(crate) telemetry: Telemetry,
    /// What the shard last asked of a session (why the session closes, if it does).
    pub(crate) session_call: SessionCall,
    /// The storage pipeline (batches, tickets, what waits for commits).
    pub(crate) persist: Persist,
    /// The connection whose client's call is being handled: it is not written early in the
    /// middle of that call (its hold positions would move).
    pub(crate) marked_conn: Option<ConnId>,
    /// The size of the read whose packets are being handled (their views pin it), for
    /// `Message::pinned_read`; `None` outside of a read.
    pub(crate) read_len: Option<u32>,
    /// Shutdown: until when outstanding commits are waited for (set at the first look).
    pub(crate) stop_commit_deadline: Option<u64>,
    /// Connections in `Phase::Lingering` or `Phase::Draining`.
    pub(crate) lingering: usize,
    /// New subscriptions whose retained messages are still to be sent (`retained.rs`).
    pub(crate) retained_jobs: std::collections::VecDeque<super::retained::RetainedJob>,
    /// Authentication and authorization: the snapshot in force, parked CONNECTs, what the
    /// ACL needs per client (`auth.rs`, `access.rs`).
    pub(crate) auth: super::auth::ShardAuth,
    /// The MQTT-SN gateway's socket and state (`mqttsn.rs`); `None` without an `mqttsn://`
    /// listener.
    pub(crate) sn: Option<Box<super::mqttsn::SnRuntime>>,
    /// Incomplete packets held, against the shard's budget (`partial.rs`).
    pub(crate) partial: super::partial::PartialInput,
}

impl Core {
    pub(crate) fn new(
        id: ShardId,
        shared: Arc<Shared>,
        inbox: Vec<Receiver<Envelope>>,
        poller: Poller,
        listeners: Listeners,
        persist: Persist,
    ) -> Core {
        let limits = &shared.config.limits;
        let connect_limits = DecodeLimits {
            max_packet_size: limits.max_connect_size.min(limits.max_packet_size),
            max_user_properties: limits.max_user_properties,
            role: crate::codec::Role::Server,
        };
        let packet_limits = DecodeLimits {
            max_packet_size: limits.max_packet_size,
            max_user_properties: limits.max_user_properties,
            role: crate::codec::Role::Server,
        };
        let now_ms = shared.clock.now_ms();
        let shards = shared.shards;
        Core {
            id,
            log_id: Some(id.index() as u16),
            now_ms,
            poller,
            recv_ring: None,
            completions: Vec::new(),
            listeners,
            lifecycle: Lifecycle::Running,
            next_tick_ms: (now_ms / super::timer::TICK_MS + 1) * super::timer::TICK_MS,
            closing: Vec::new(),
            again: Vec::new(),
            conns: Slots::new(),
            clients: Slots::new(),
            registry: Registry::default(),
            routes: Routes::new(id, shared.interest_seed, limits),
            wheel: TimerWheel::new(now_ms),
            outboxes: Outboxes::new(shards, limits.cross_shard_queue),
            inbox,
            dirty: Vec::new(),
            actions: Vec::new(),
            scratch: vec![0; super::io::SCRATCH_SIZE].into_boxed_slice(),
            app: BytesMut::new(),
            handshakes: HandshakeBudget::default(),
            sink: BytesMut::new(),
            connect_limits,
            packet_limits,
            session_limits: Arc::new(limits.clone()),
            next_gen: 0,
            assigned_ids: 0,
            stats: ShardStats::default(),
            telemetry: Telemetry::new(id, shards, shared.config.ops.sys_interval_secs),
            session_call: SessionCall::Other,
            persist,
            marked_conn: None,
            read_len: None,
            stop_commit_deadline: None,
            lingering: 0,
            retained_jobs: std::collections::VecDeque::new(),
            partial: super::partial::PartialInput::new(super::partial::shard_budget(
                limits.max_partial_input_bytes,
                shards,
            )),
            auth: super::auth::ShardAuth::new(
                &shared.auth,
                Arc::clone(&shared.mesh.notifiers[id.index()]),
            ),
            sn: None,
            shared,
        }
    }

    /// Reads the clock; called once at the start of every task wake.
    pub(crate) fn tick_clock(&mut self) {
        self.now_ms = self.shared.clock.now_ms();
    }

    pub(crate) fn next_generation(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    /// Registers an accepted (or handed-off) socket with the poller; returns the new
    /// connection, or `None` (the socket is closed) when the poller refuses it.
    pub(crate) fn new_conn(
        &mut self,
        fd: Option<OwnedFd>,
        peer: SocketAddr,
        phase: Phase,
        extra: Option<Box<ConnExtra>>,
    ) -> Option<ConnKey> {
        let generation = self.next_generation();
        let id = self.conns.next_key();
        if let Some(fd) = &fd
            && let Err(e) = self
                .poller
                .add(fd.as_fd(), ConnKey::new(id, generation).token())
        {
            log!(
                WARN,
                self.log_id,
                "cannot watch the connection from {peer}: {e}; closing it"
            );
            return None;
        }
        let conn = Conn {
            fd,
            generation,
            timer_tick: 0,
            phase,
            dirty: false,
            write_blocked: false,
            read_pending: false,
            peer_closed: false,
            ring: super::uring::RingRecv::Off,
            feeds: 0,
            holds: None,
            version: None,
            client: None,
            since: stamp(self.now_ms),
            peer,
            extra,
            out: BytesMut::new(),
        };
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, id, "the slab's next key");
        if phase == Phase::AwaitingConnect {
            let deadline =
                self.now_ms + u64::from(self.shared.config.limits.connect_timeout_secs) * 1000;
            self.schedule_conn(id, deadline);
        }
        Some(ConnKey::new(id, generation))
    }

    /// A fresh server-assigned client id; unique across shards and restarts of the counter
    /// (shard index in the top bits, start-time entropy mixed into the rest).
    pub(crate) fn assign_id(&mut self) -> ClientId {
        self.assigned_ids += 1;
        let seed = (self.id.index() as u64) << 56
            | (self.shared.id_entropy.wrapping_add(self.assigned_ids) & ((1 << 56) - 1));
        crate::session::assign_client_id(seed)
    }

    /// Marks connection `id` for a last flush and close at the end of the turn (never at
    /// once: the caller may be in the middle of that connection's input), for no reason
    /// more precise than "the broker closed it" (`close_for` names one).
    pub(crate) fn request_close(&mut self, id: ConnId) {
        self.close_for(id, CloseReason::Other);
    }

    /// `request_close` with the reason the close line names and the transport's farewell
    /// follows (the first one given wins).
    pub(crate) fn close_for(&mut self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.phase.is_closing() {
            return;
        }
        let client = conn
            .client
            .and_then(|s| self.clients.get(s))
            .map(|c| c.session.client_id().clone());
        self.set_close_reason(id, reason.farewell());
        if let Some(conn) = self.conns.get_mut(id) {
            conn.phase = Phase::Closing;
            self.closing
                .push((ConnKey::new(id, conn.generation), reason, client));
        }
    }

    /// Queues connection `id` for the end-of-turn flush.
    pub(crate) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.dirty
            && conn.has_output()
        {
            conn.dirty = true;
            self.dirty.push(ConnKey::new(id, conn.generation));
        }
    }

    /// Start-up only: every queued envelope into the channels (see
    /// `Outboxes::flush_unbounded`).
    pub(crate) fn flush_outboxes_unbounded(&mut self) {
        self.outboxes.flush_unbounded(self.id, &self.shared.mesh);
    }

    /// Queues an envelope for another shard (sent at the end of the turn).
    pub(crate) fn send_to(&mut self, dst: ShardId, envelope: Envelope) {
        if let Some(id) = self.marked_conn
            && envelope.feeds_deliveries()
            && let Some(conn) = self.conns.get_mut(id)
        {
            conn.feeds |= Outboxes::bit(dst);
        }
        self.outboxes.push(dst, envelope);
    }

    /// The hold at `offset` in connection `conn_id`'s output (created if needed).
    pub(crate) fn hold_at(&mut self, conn_id: ConnId, offset: usize) -> Option<HoldKey> {
        let conn = self.conns.get_mut(conn_id)?;
        let holds = conn.holds.get_or_insert_with(Box::default);
        let id = holds.at(offset.min(conn.out.len()));
        Some(HoldKey {
            conn: ConnKey::new(conn_id, conn.generation),
            id,
        })
    }

    /// Holds client `slot`'s connection output from `offset` until every other shard has
    /// applied what this shard broadcast so far (see `Envelope::Fence`). A no-op with one
    /// shard.
    pub(crate) fn fence_client(&mut self, slot: ClientSlot, offset: usize) {
        if let Some(hold) = self.hold_client_for_remote(slot, offset) {
            self.send_fences(self.id, hold, None);
        }
    }

    /// Makes client `slot`'s connection output from `offset` wait for one answer from every
    /// other shard; returns the hold they will answer for (`None`: one shard, or no
    /// connection, nothing to wait for).
    pub(crate) fn hold_client_for_remote(
        &mut self,
        slot: ClientSlot,
        offset: usize,
    ) -> Option<HoldKey> {
        let others = self.shared.shards.saturating_sub(1) as u32;
        if others == 0 {
            return None;
        }
        let conn_id = self.clients.get(slot).and_then(|c| c.conn)?;
        let key = self.hold_at(conn_id, offset)?;
        self.add_remote(key, others);
        Some(key)
    }

    /// Hold `key` waits for `n` more answers from other shards.
    pub(crate) fn add_remote(&mut self, key: HoldKey, n: u32) {
        if let Some(holds) = self.conns.live_mut(key.conn).and_then(|c| c.holds.as_mut()) {
            holds.add_remote(key.id, n);
        }
    }

    /// Sends a `Fence` for `hold` (a connection of shard `origin`) to every shard but
    /// `origin` and `skip`: each answers `origin` once it has applied what this shard sent
    /// it before.
    pub(crate) fn send_fences(&mut self, origin: ShardId, hold: HoldKey, skip: Option<ShardId>) {
        for dst in ShardId::all(self.shared.shards) {
            if dst != origin && Some(dst) != skip {
                self.send_to(dst, Envelope::Fence { origin, hold });
            }
        }
    }

    /// Another shard answered for `key` (a `Fence`, or its part of a durable publish).
    pub(crate) fn fence_done(&mut self, key: HoldKey) {
        self.update_holds(key, |h| h.remote_done(key.id));
    }

    /// The commit `key` waited for is done (every ticket up to `ticket`).
    pub(crate) fn hold_committed(&mut self, key: HoldKey, ticket: u64) {
        self.update_holds(key, |h| h.committed(ticket));
    }

    /// Applies `f` to the holds of `key`'s connection (if it is still the same one) and
    /// schedules a flush for what they release.
    fn update_holds(&mut self, key: HoldKey, f: impl FnOnce(&mut Holds)) {
        let Some(conn) = self.conns.live_mut(key.conn) else {
            return; // The connection closed meanwhile (its slot may be reused).
        };
        if let Some(holds) = conn.holds.as_mut() {
            f(holds);
            if holds.is_empty() {
                conn.holds = None;
            }
        }
        self.mark_dirty(key.conn.id);
    }

    /// Arms the wheel for client `slot`'s next session deadline (only when earlier than
    /// the live entry: later deadlines are picked up when that entry fires).
    pub(crate) fn reschedule_client(&mut self, slot: ClientSlot) {
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        let Some(deadline) = client.session.next_deadline() else {
            return;
        };
        let tick = TimerWheel::tick_of(deadline);
        if client.timer_tick == 0 || tick < client.timer_tick {
            let key = TimerKey::Client(SessionKey::new(slot, client.generation));
            client.timer_tick = self.wheel.schedule(deadline, key);
        }
    }

    pub(crate) fn schedule_conn(&mut self, id: ConnId, deadline: u64) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let tick = TimerWheel::tick_of(deadline);
        if conn.timer_tick == 0 || tick < conn.timer_tick {
            let key = TimerKey::Conn(ConnKey::new(id, conn.generation));
            conn.timer_tick = self.wheel.schedule(deadline, key);
        }
    }

    /// One wheel tick: fires every due entry.
    pub(crate) fn on_tick(&mut self) {
        self.tick_clock();
        let mut fired = Vec::new();
        self.wheel.advance(self.now_ms, &mut fired);
        for (tick, key) in fired {
            match key {
                TimerKey::Client(key) => self.client_timer(key, tick),
                TimerKey::Conn(key) => self.conn_timer(key, tick),
            }
        }
        self.publish_stats();
    }

    fn client_timer(&mut self, key: SessionKey, tick: u32) {
        let slot = key.slot;
        let Some(client) = self.clients.live_mut(key) else {
            return; // Ended (its slot may hold a newer client).
        };
        if client.timer_tick != tick {
            return;
        }
        client.timer_tick = 0;
        self.fire_client_deadline(slot);
        self.reschedule_client(slot);
    }

    /// Calls client `slot`'s session timers if its next deadline has passed.
    pub(crate) fn fire_client_deadline(&mut self, slot: ClientSlot) {
        let ring_unread = self
            .clients
            .get(slot)
            .and_then(|c| c.conn)
            .is_some_and(|c| self.ring_unread(c));
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        if client
            .session
            .next_deadline()
            .is_some_and(|d| d <= self.now_ms)
        {
            if let Some(c) = client.conn
                && let Some(conn) = self.conns.get(c)
                && (conn
                    .fd
                    .as_ref()
                    .is_some_and(|fd| sys::has_unread_input(fd.as_fd()))
                    || ring_unread)
            {
                // Input this shard has not read yet (reads held while other shards catch
                // up) may be the packet that keeps the session alive: read it first, and
                // look again at the next tick.
                self.again.push(ConnKey::new(c, conn.generation));
                return;
            }
            let mut actions = std::mem::take(&mut self.actions);
            let mut hold_from = None;
            let out = match client.conn.and_then(|c| self.conns.get_mut(c)) {
                Some(conn) => {
                    hold_from = Some(conn.out.len());
                    &mut conn.out
                }
                None => &mut self.sink,
            };
            client
                .session
                .handle_timeout(self.now_ms, out, &mut actions);
            self.sink.clear();
            let conn = client.conn;
            if let Some(c) = conn {
                self.mark_dirty(c);
            }
            self.session_call = SessionCall::Timeout;
            self.marked_conn = conn;
            self.apply_actions(slot, &mut actions, hold_from);
            self.session_call = SessionCall::Other;
            self.marked_conn = None;
            self.actions = actions;
        }
    }

    fn conn_timer(&mut self, key: ConnKey, tick: u32) {
        let ConnKey { id, generation } = key;
        let limits = &self.shared.config.limits;
        let connect_ms = u64::from(limits.connect_timeout_secs) * 1000;
        let slow_ms = u64::from(limits.slow_consumer_timeout_secs) * 1000;
        let max_out = limits.max_output_buffer;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.generation != generation || conn.timer_tick != tick {
            return;
        }
        conn.timer_tick = 0;
        let (phase, since) = (conn.phase, conn.since);
        if matches!(phase, Phase::AwaitingConnect | Phase::Open)
            && self.incomplete_packet_expired(key)
        {
            return;
        }
        let over = self.is_slow(id);
        let since_ms = stamp_ms(since);
        match phase {
            Phase::AwaitingConnect | Phase::Authenticating
                if self.now_ms >= since_ms + connect_ms =>
            {
                let unread = self
                    .conns
                    .get(id)
                    .and_then(|c| c.fd.as_ref())
                    .is_some_and(|fd| sys::has_unread_input(fd.as_fd()));
                if unread {
                    // The client sent in time and this shard has not read it yet (reads
                    // held while other shards catch up): the delay is the broker's. Read
                    // it, and look again in a second.
                    self.again.push(ConnKey::new(id, generation));
                    self.schedule_conn(id, self.now_ms + 1000);
                } else {
                    self.close_for(id, CloseReason::ConnectTimeout);
                }
            }
            Phase::Verifying if self.now_ms >= since_ms + connect_ms => {
                self.close_for(id, CloseReason::VerifyTimeout);
            }
            Phase::Open if since != 0 && over && self.now_ms >= since_ms + slow_ms => {
                self.stats.slow_consumers_closed += 1;
                let secs = slow_ms / 1000;
                self.close_for(id, CloseReason::SlowConsumer { secs, max_out });
            }
            Phase::Open if since != 0 && over => self.schedule_conn(id, since_ms + slow_ms),
            Phase::Lingering | Phase::Draining if self.now_ms >= since_ms + LINGER_MS => {
                self.close_now(id);
            }
            Phase::Lingering | Phase::Draining => self.schedule_conn(id, since_ms + LINGER_MS),
            Phase::AwaitingConnect
            | Phase::Verifying
            | Phase::Authenticating
            | Phase::Open
            | Phase::Closing => {}
        }
    }

    /// The client id of a client slot, for log lines (`-` before CONNECT).
    pub(crate) fn client_name(&self, slot: Option<ClientSlot>) -> String {
        slot.and_then(|s| self.clients.get(s)).map_or_else(
            || "-".to_owned(),
            |c| c.session.client_id().as_str().to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    /// Per-connection memory is a first-class metric: these bounds catch a regression
    /// (e.g. a buffer or timer moved into the connection, `Limits` or a `Will` stored inline
    /// in every session) before a benchmark does. An idle connection is exactly one `Conn`
    /// and one `Client` (no task: see `event_loop`).
    #[test]
    fn per_connection_state_stays_small() {
        use std::mem::size_of;
        let conn = size_of::<super::Conn>();
        let client = size_of::<super::Client>();
        let session = size_of::<crate::session::Session>();
        eprintln!("Conn: {conn} B, Client: {client} B (Session: {session} B)");
        assert!(conn <= 112, "Conn grew to {conn} bytes");
        assert!(session <= 256, "Session grew to {session} bytes");
        assert!(client <= 280, "Client grew to {client} bytes");
    }
}
