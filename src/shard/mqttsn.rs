//! The runtime of the MQTT-SN 1.2 gateway (`crate::mqttsn` is its sans-IO core): a UDP
//! socket per shard, the datagram routes between shards, and the connections that stand for
//! gateway clients.
//!
//! Sockets: every shard binds the `mqttsn://` address with SO_REUSEPORT. The kernel picks
//! the socket of a datagram by a hash of its source address, so one client's datagrams are
//! always read by the same shard (the *reading* shard); every shard sends from the same
//! port, so a client sees one gateway whichever shard answers. `[mqttsn] socket_per_shard
//! = false` makes shard 0 the only reader (the others send from copies of its socket).
//! Measured on 2 shards (README, MQTT-SN figures): one socket per shard delivered 170k QoS 1
//! publishes/s against 128k, and 190k unpaced QoS 0 against 133k, at the same CPU per
//! delivery: reading is spread over the shards like the TCP listeners', and a shard that is
//! not a client's home forwards only that client's datagrams. It is the default.
//!
//! Homes: a client's session lives on its client id's home shard like any other
//! (`super::home_shard`), and so does its gateway state. The reading shard sends a CONNECT for
//! a client homed elsewhere to that shard (`Envelope::SnDatagram`) and keeps a route
//! (address -> home) for the address's later datagrams; a CONNECT homed on the reading shard
//! removes the route and tells the old home (`Envelope::SnDropAddress`). When the home's
//! gateway forgets the client (`Output::Gone`) it tells the reading shard
//! (`Envelope::SnRouteGone`); a route carries the epoch of the CONNECT that made it, so a
//! late notice never removes the route of a newer CONNECT.
//!
//! Connections: a gateway client's session is attached to a `Conn` without a socket
//! (`fd: None`, `peer`: the client's address), so that takeover, wills, limits, the ACL,
//! storage holds and shutdown treat it like any other connection. The session writes MQTT
//! bytes into the connection's output as usual; at the end of the turn `sn_flush_conn` gives
//! them (up to the first hold) to the gateway instead of a socket.
//!
//! Must never: trust a source address beyond its datagram (the gateway decides every reply),
//! block on a full socket (a datagram that does not fit is dropped and counted: UDP may lose
//! it anyway, and QoS 1/2 are retransmitted), panic on a datagram, or give the output of a
//! connection that is no longer the client at its address to the gateway.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::core::{Core, Phase};
use super::ids::{ClientSlot, ConnId, ConnKey, SessionKey};
use super::io::Step;
use super::mailbox::Envelope;
use crate::codec::Packet;
use crate::log;
use crate::mqttsn::codec::{self as sn_codec, SnMessage};
use crate::mqttsn::{Gateway, GatewaySettings, Output, anonymous_client_id, translate};
use crate::router::interest::ShardId;

/// Datagrams read per turn before the shard serves its other work: a flood on the UDP port
/// (from one address or many) delays the shard's TCP clients by at most one batch.
const DATAGRAMS_PER_TURN: usize = 256;

/// The poller token index of the shard's UDP socket (see `listen::listener_token`): no TCP
/// listener has it.
pub(crate) const SN_SOCKET_INDEX: usize = u32::MAX as usize - 1;

/// A datagram the reading shard passes to the client's home shard.
#[derive(Debug)]
pub(crate) struct SnForward {
    pub(crate) from: SocketAddr,
    /// The reading shard, which keeps the route.
    pub(crate) origin: ShardId,
    /// The route's epoch (see the module documentation).
    pub(crate) epoch: u32,
    pub(crate) datagram: Bytes,
}

/// Counters of the runtime part, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SnIoStats {
    pub(crate) received: u64,
    pub(crate) forwarded: u64,
    /// Datagrams the socket would not take at once (or refused), dropped.
    pub(crate) send_dropped: u64,
    /// CONNECTs from new addresses refused because the route table was full.
    pub(crate) routes_full: u64,
}

/// The MQTT-SN part of one shard.
#[derive(Debug)]
pub(crate) struct SnRuntime {
    socket: UdpSocket,
    /// This shard reads the socket (`[mqttsn] socket_per_shard`, or shard 0); otherwise it
    /// only sends from it.
    reads: bool,
    gateway: Gateway<SocketAddr>,
    /// ADVERTISE destination (`[mqttsn] advertise_to`).
    advertise_to: Option<SocketAddr>,
    /// The connection of each client of this shard's gateway.
    conns: HashMap<SocketAddr, ConnKey>,
    /// Addresses this shard reads for a client homed elsewhere: (home, epoch).
    routes: HashMap<SocketAddr, (ShardId, u32)>,
    /// Clients of this gateway read by another shard: (reading shard, epoch).
    origins: HashMap<SocketAddr, (ShardId, u32)>,
    next_epoch: u32,
    /// At most this many routes (`Limits::max_connections` in force): each stands for a
    /// connection on another shard.
    max_routes: usize,
    /// The session QoS -1 publishes come from; made when first needed.
    anonymous: Option<SessionKey>,
    /// The read budget ran out with datagrams left (the edge-triggered poller will not
    /// report them again).
    again: bool,
    /// Closed at shutdown: nothing is read any more.
    closed: bool,
    pub(crate) stats: SnIoStats,
}

impl SnRuntime {
    /// The runtime of shard `shard` on `socket` (bound, non-blocking). Only shard 0
    /// advertises, so that the network hears one gateway once per interval.
    pub(crate) fn new(
        socket: UdpSocket,
        reads: bool,
        shared: &super::Shared,
        shard: ShardId,
        limits: Arc<crate::config::Limits>,
    ) -> SnRuntime {
        let config = &shared.config.mqttsn;
        let mut settings = GatewaySettings::new(config, limits);
        if shard.index() != 0 {
            settings.advertise = None;
        }
        SnRuntime {
            socket,
            reads,
            gateway: Gateway::new(Arc::new(settings)),
            advertise_to: config.advertise_to,
            conns: HashMap::new(),
            routes: HashMap::new(),
            origins: HashMap::new(),
            next_epoch: 0,
            max_routes: shared.max_connections,
            anonymous: None,
            again: false,
            closed: false,
            stats: SnIoStats::default(),
        }
    }

    /// Registers the socket with the shard's poller, if this shard reads it.
    pub(crate) fn register(&self, poller: &super::sys::Poller) -> std::io::Result<()> {
        if !self.reads {
            return Ok(());
        }
        poller.add_listener(
            self.socket.as_fd(),
            super::listen::listener_token(SN_SOCKET_INDEX),
        )
    }

    /// The gateway's counters (for the shard's snapshot).
    pub(crate) fn gateway_stats(&self) -> crate::mqttsn::GatewayStats {
        self.gateway.stats()
    }

    pub(crate) fn has_again(&self) -> bool {
        self.again && !self.closed
    }

    /// Sends one datagram; a full socket or an error drops it (counted).
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.socket.send_to(datagram, to).is_err() {
            self.stats.send_dropped += 1;
        }
    }

    /// The home of a CONNECT's client id, if the datagram is a CONNECT.
    fn connect_home(datagram: &Bytes, shards: usize) -> Option<ShardId> {
        match sn_codec::decode(datagram) {
            Ok(SnMessage::Connect(c)) => Some(super::home_shard(&c.client_id, shards)),
            Ok(_) | Err(_) => None,
        }
    }
}

/// Where a datagram read by this shard is served.
enum Serve {
    Here,
    /// On the home shard, under the route of this epoch.
    Forward(ShardId, u32),
    Drop,
}

impl Core {
    /// The UDP socket is readable: read datagrams (up to the budget) and serve each on its
    /// client's home shard.
    pub(crate) fn sn_readable(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if super::mailbox::any_pending(&self.inbox) {
            // As for TCP input: what other shards sent before these datagrams comes first.
            self.drain_inbox(super::event_loop::DRAIN_BUDGET);
        }
        let mut read = 0;
        while let Some(sn) = self.sn.as_mut() {
            if sn.closed {
                break;
            }
            if read == DATAGRAMS_PER_TURN {
                sn.again = true;
                break;
            }
            sn.again = false;
            match sn.socket.recv_from(&mut scratch) {
                Ok((n, from)) => {
                    read += 1;
                    sn.stats.received += 1;
                    let datagram = Bytes::copy_from_slice(scratch.get(..n).unwrap_or(&[]));
                    self.tick_clock();
                    self.sn_dispatch(from, datagram);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors of earlier sends (ECONNREFUSED) and the like: the next
                // datagram may be fine.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {}
            }
        }
        self.scratch = scratch;
    }

    /// Serves a datagram read by this shard here or on its client's home shard.
    fn sn_dispatch(&mut self, from: SocketAddr, datagram: Bytes) {
        if self.lifecycle != super::event_loop::Lifecycle::Running {
            return;
        }
        let me = self.id;
        let shards = self.shared.shards;
        let Some(sn) = self.sn.as_mut() else { return };
        let home = SnRuntime::connect_home(&datagram, shards);
        let old = sn.routes.get(&from).copied();
        // The shard whose client at the address is over (it had a route here).
        let mut tell_old = None;
        let serve = match (home, old) {
            (Some(h), _) if h == me => {
                if let Some((old, _)) = sn.routes.remove(&from) {
                    tell_old = Some(old);
                }
                Serve::Here
            }
            (Some(_), None) if sn.routes.len() >= sn.max_routes => {
                sn.stats.routes_full += 1;
                Serve::Drop
            }
            (Some(h), old) => {
                sn.next_epoch = sn.next_epoch.wrapping_add(1);
                let epoch = sn.next_epoch;
                sn.routes.insert(from, (h, epoch));
                tell_old = old.map(|(o, _)| o).filter(|&o| o != h);
                Serve::Forward(h, epoch)
            }
            (None, Some((h, epoch))) => Serve::Forward(h, epoch),
            (None, None) => Serve::Here,
        };
        if let Some(old) = tell_old {
            self.send_to(old, Envelope::SnDropAddress { addr: from });
        }
        if home.is_some_and(|h| h != me) {
            // A client of this shard at the address is over.
            self.sn_drop_address(from);
        }
        match serve {
            Serve::Here => self.sn_handle(from, datagram),
            Serve::Forward(home, epoch) => {
                if let Some(sn) = self.sn.as_mut() {
                    sn.stats.forwarded += 1;
                }
                let forward = SnForward {
                    from,
                    origin: me,
                    epoch,
                    datagram,
                };
                self.send_to(home, Envelope::SnDatagram(Box::new(forward)));
            }
            Serve::Drop => {}
        }
    }

    /// A datagram for this shard's gateway.
    fn sn_handle(&mut self, from: SocketAddr, datagram: Bytes) {
        let now = self.now_ms;
        let mut outputs = Vec::new();
        if let Some(sn) = self.sn.as_mut() {
            sn.gateway
                .handle_datagram(from, datagram, now, &mut outputs);
        }
        self.sn_execute(outputs);
    }

    /// `Envelope::SnDatagram`: another shard read a datagram of a client homed here.
    pub(crate) fn sn_forwarded(&mut self, forward: SnForward) {
        if self.lifecycle != super::event_loop::Lifecycle::Running {
            return;
        }
        let SnForward {
            from,
            origin,
            epoch,
            datagram,
        } = forward;
        self.tick_clock();
        // A CONNECT from an address with a client here ends that client first (its
        // `Output::Gone` answers the route it came by); the origin recorded after that is
        // the new route's.
        self.sn_handle(from, datagram);
        if let Some(sn) = self.sn.as_mut()
            && sn.gateway.knows(&from)
        {
            sn.origins.insert(from, (origin, epoch));
        }
    }

    /// The client at `addr` (if this shard's gateway has one) is over, without a word to
    /// the address: its datagrams belong to another shard's client now.
    pub(crate) fn sn_drop_address(&mut self, addr: SocketAddr) {
        let now = self.now_ms;
        let mut outputs = Vec::new();
        let Some(sn) = self.sn.as_mut() else { return };
        sn.origins.remove(&addr);
        sn.gateway.drop_address(addr, now, &mut outputs);
        self.sn_execute(outputs);
    }

    /// `Envelope::SnRouteGone`.
    pub(crate) fn sn_route_gone(&mut self, addr: SocketAddr, epoch: u32) {
        if let Some(sn) = self.sn.as_mut()
            && sn.routes.get(&addr).is_some_and(|&(_, e)| e == epoch)
        {
            sn.routes.remove(&addr);
        }
    }

    /// Executes gateway outputs in order (see the call order in `crate::mqttsn`); those
    /// that session calls make meanwhile come after.
    fn sn_execute(&mut self, outputs: Vec<Output<SocketAddr>>) {
        for output in outputs {
            match output {
                Output::Send { to, datagram } => {
                    if let Some(sn) = self.sn.as_mut() {
                        sn.send(to, &datagram);
                    }
                }
                Output::Broadcast { datagram } => {
                    if let Some(sn) = self.sn.as_mut()
                        && let Some(to) = sn.advertise_to
                    {
                        sn.send(to, &datagram);
                    }
                }
                Output::Session {
                    at,
                    client: _,
                    packet: Packet::Connect(connect),
                } => self.sn_connect(at, Packet::Connect(connect)),
                Output::Session {
                    at,
                    client: _,
                    packet,
                } => {
                    if let Some(id) = self.sn_conn(at) {
                        self.sn_packet(id, packet);
                    }
                }
                Output::Anonymous(publish) => self.sn_anonymous(publish),
                Output::Gone(at) => self.sn_gone(at),
            }
        }
    }

    /// The live connection of the client at `at`.
    fn sn_conn(&self, at: SocketAddr) -> Option<ConnId> {
        let sn = self.sn.as_ref()?;
        let &key = sn.conns.get(&at)?;
        self.conns.live(key).map(|_| key.id)
    }

    /// A gateway CONNECT: a new connection for the client at `at` (the one it had ends),
    /// then what a TCP CONNECT gets (validation, authentication, attach or refusal).
    fn sn_connect(&mut self, at: SocketAddr, connect: Packet) {
        if let Some(old) = self.sn_conn(at) {
            if let Some(sn) = self.sn.as_mut() {
                sn.conns.remove(&at);
            }
            self.request_close(old);
        }
        let Some(key) = self.new_conn(None, at, Phase::AwaitingConnect, None) else {
            return;
        };
        if let Some(sn) = self.sn.as_mut() {
            sn.conns.insert(at, key);
        }
        self.sn_packet(key.id, connect);
    }

    /// A packet from the client of connection `id`, as if decoded from its socket; what the
    /// session wrote goes to the gateway at once, even nothing (a waking client's PINGRESP
    /// waits for the session's answer: see `crate::mqttsn`).
    fn sn_packet(&mut self, id: ConnId, packet: Packet) {
        let mut rest = BytesMut::new();
        match self.on_packet(id, packet, &mut rest) {
            Step::Continue => self.sn_flush_conn(id),
            Step::Close | Step::Handoff(_) => self.request_close(id),
        }
    }

    /// `Output::Gone`: the gateway forgot the client at `at`; its connection closes (the
    /// session, if still attached, lost it: its will is due) and the reading shard's route
    /// may go.
    fn sn_gone(&mut self, at: SocketAddr) {
        let conn = self.sn_conn(at);
        let Some(sn) = self.sn.as_mut() else { return };
        sn.conns.remove(&at);
        if let Some((origin, epoch)) = sn.origins.remove(&at) {
            self.send_to(origin, Envelope::SnRouteGone { addr: at, epoch });
        }
        if let Some(id) = conn {
            self.request_close(id);
        }
    }

    /// A QoS -1 publish (MQTT-SN 6.8) from the shard's anonymous session, routed like any
    /// other client's (the ACL applies to it as to a client without a user name).
    fn sn_anonymous(&mut self, publish: crate::codec::Publish) {
        let Some(slot) = self.sn_anonymous_slot() else {
            return;
        };
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(client) = self.clients.get_mut(slot) {
            client.session.handle_packet(
                Packet::Publish(publish),
                self.now_ms,
                &mut self.sink,
                &mut actions,
            );
        }
        self.sink.clear();
        self.apply_actions(slot, &mut actions, None);
        self.actions = actions;
    }

    /// The anonymous session's slot, connected (made again when it ended).
    fn sn_anonymous_slot(&mut self) -> Option<ClientSlot> {
        let sn = self.sn.as_ref()?;
        if let Some(key) = sn.anonymous
            && self
                .clients
                .live(key)
                .is_some_and(|c| !c.session.is_ended())
        {
            return Some(key.slot);
        }
        let id = anonymous_client_id(&self.session_limits)?;
        let slot = self.new_client(id);
        let Some(generation) = self.clients.get(slot).map(|c| c.generation) else {
            super::core::broken_invariant(
                self.log_id,
                format_args!("new anonymous client slot {slot} not in the slab"),
            );
            return None;
        };
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(client) = self.clients.get_mut(slot) {
            client.session.connect(
                translate::anonymous_connect(),
                false,
                false,
                self.now_ms,
                &mut self.sink,
                &mut actions,
            );
        }
        self.sink.clear();
        self.apply_actions(slot, &mut actions, None);
        self.actions = actions;
        if let Some(sn) = self.sn.as_mut() {
            sn.anonymous = Some(SessionKey::new(slot, generation));
        }
        Some(slot)
    }

    /// `flush_conn` for a gateway client: its output up to the first hold goes to the
    /// gateway (discarded when the connection is no longer the client at its address); a
    /// lingering connection with nothing left closes.
    pub(crate) fn sn_flush_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.dirty = false;
        let ready = conn
            .holds
            .as_ref()
            .map_or(conn.out.len(), |h| h.writable(conn.out.len()));
        let mut bytes = conn.out.split_to(ready);
        if let Some(h) = conn.holds.as_mut() {
            h.advance(ready);
            if h.is_empty() {
                conn.holds = None;
            }
        }
        if conn.out.is_empty() {
            conn.out = BytesMut::new();
        }
        let (peer, generation, phase) = (conn.peer, conn.generation, conn.phase);
        let done = conn.out.is_empty() && conn.holds.is_none();
        let current = self
            .sn
            .as_ref()
            .is_some_and(|sn| sn.conns.get(&peer) == Some(&ConnKey::new(id, generation)));
        if current {
            let now = self.now_ms;
            let mut outputs = Vec::new();
            if let Some(sn) = self.sn.as_mut() {
                sn.gateway
                    .handle_session_output(peer, &mut bytes, now, &mut outputs);
            }
            self.sn_execute(outputs);
        }
        if phase == Phase::Lingering && done {
            self.close_now(id);
        }
    }

    /// Connection `id` of a gateway client closes now (`close_now`): its last output goes
    /// to the gateway, which then hears that the session let the client go.
    pub(crate) fn sn_conn_closing(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        // Held output (an acknowledgement whose commit never came) is never sent early.
        let ready = conn
            .holds
            .as_ref()
            .map_or(conn.out.len(), |h| h.writable(conn.out.len()));
        let mut bytes = conn.out.split_to(ready);
        conn.out = BytesMut::new();
        conn.holds = None;
        let (peer, generation) = (conn.peer, conn.generation);
        let Some(sn) = self.sn.as_mut() else { return };
        if sn.conns.get(&peer) != Some(&ConnKey::new(id, generation)) {
            return;
        }
        sn.conns.remove(&peer);
        let now = self.now_ms;
        let mut outputs = Vec::new();
        sn.gateway
            .handle_session_output(peer, &mut bytes, now, &mut outputs);
        sn.gateway.session_closed(peer, &mut outputs);
        self.sn_execute(outputs);
    }

    /// Fires the gateway's timers when due (retransmissions, keep alive, sleep, ADVERTISE).
    pub(crate) fn sn_timers(&mut self) {
        let now = self.now_ms;
        let Some(sn) = self.sn.as_mut() else { return };
        if sn.closed || sn.gateway.next_deadline().is_none_or(|t| t > now) {
            return;
        }
        let mut outputs = Vec::new();
        sn.gateway.handle_timeout(now, &mut outputs);
        self.sn_execute(outputs);
    }

    /// Shutdown: no more datagrams are read (the clients' connections close with the
    /// others, each client told by a DISCONNECT).
    pub(crate) fn sn_close(&mut self) {
        if let Some(sn) = self.sn.as_mut() {
            if sn.reads {
                self.poller.delete(sn.socket.as_fd());
            }
            sn.closed = true;
            sn.again = false;
        }
    }

    /// Logs the gateway's counters (at shutdown).
    pub(crate) fn sn_log_stats(&self) {
        if let Some(sn) = self.sn.as_ref() {
            let g = sn.gateway.stats();
            log!(
                INFO,
                self.log_id,
                "mqttsn: {} datagrams read, {} forwarded, {} sends dropped, {} malformed, \
                 {} oversized, {} QoS -1 publishes ({} dropped), {} clients lost",
                sn.stats.received,
                sn.stats.forwarded,
                sn.stats.send_dropped,
                g.malformed,
                g.oversized,
                g.anonymous_publishes,
                g.anonymous_dropped,
                g.lost
            );
        }
    }
}
