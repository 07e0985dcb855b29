//! What a shard counts, and how the counts leave it: once a second a snapshot goes to the
//! shared `StatsBoard` (read by the Prometheus endpoint), and shard 0 publishes the `$SYS`
//! tree every `sys_interval_secs` from every shard's latest snapshot.
//!
//! Owns: `ShardStats` (plain integers, this shard's thread only: counting is one addition
//! at the place where the thing happens), the collection of the sessions' own counters
//! (`SessionStats`: drops and refusals, taken as deltas whenever the shard handles a
//! session's actions), and the delivery-latency probes: every `PROBE_INTERVAL_MS` the next
//! client publish is stamped when routed, every shard it is sent to gets an
//! `Envelope::Probe` behind it (channels are FIFO, so the publish was handled first), and
//! each of those shards, and this one if it delivered locally, observes the time from the
//! stamp to the end of its next write pass.
//!
//! Must never: make a shard wait (the board skips a busy slot), read the clock per message,
//! or store `$SYS` messages (they are made again after a restart).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::core::Core;
use super::event_loop::Lifecycle;
use super::ids::ClientSlot;
use super::mailbox::Envelope;
use super::route::Publisher;
use crate::codec::{Packet, PublishProperties, QoS};
use crate::metrics::sys::SysTree;
use crate::metrics::{
    CloseKind, Histogram, ProcessMemory, ShardSnapshot, add_session, session_delta,
};
use crate::router::interest::ShardId;
use crate::router::topic::TopicName;
use crate::session::{Message, SessionStats};

/// Milliseconds between two delivery-latency probes of one shard: 100 samples a second per
/// shard are plenty for a p99 over a minute, and cost (shards - 1) small envelopes each.
const PROBE_INTERVAL_MS: u64 = 10;

/// Counters of what the runtime did (and two gauges), for the snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShardStats {
    pub(crate) accepted: u64,
    pub(crate) handed_off: u64,
    pub(crate) slow_consumers_closed: u64,
    /// Publishes that asked to be retained beyond the retained limits.
    pub(crate) retained_refused: u64,
    /// CONNECTs that attached a session here.
    pub(crate) connects: u64,
    /// Gauge: connections attached to a session (attach +1, every detach -1).
    pub(crate) connected: u64,
    pub(crate) closes: [u64; CloseKind::COUNT],
    pub(crate) packets_received: u64,
    pub(crate) publish_received: u64,
    /// Payload bytes of the PUBLISH packets decoded from clients (mosquitto's
    /// `publish/bytes/received`).
    pub(crate) publish_bytes_received: u64,
    /// Payload bytes of the messages handed to a session for delivery (mosquitto's
    /// `publish/bytes/sent`, counted where `deliveries` is).
    pub(crate) publish_bytes_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    /// Messages handed to a session for delivery.
    pub(crate) deliveries: u64,
    /// The sessions' own counters, summed as they change.
    pub(crate) session: SessionStats,
    /// Shared-subscription messages lost with their member: QoS 0 whose chosen member had
    /// left when it arrived, QoS 1/2 that no member was left to take.
    pub(crate) dropped_member_gone: u64,
    pub(crate) delivery_latency: Histogram,
}

impl ShardStats {
    /// One packet decoded from a client.
    #[inline]
    pub(crate) fn packet(&mut self, packet: &Packet) {
        self.packets_received += 1;
        if let Packet::Publish(p) = packet {
            self.publish_received += 1;
            self.publish_bytes_received += p.payload.len() as u64;
        }
    }
}

/// The shard's side of statistics that is not a counter.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    /// When the next client publish becomes a latency probe (broker ms).
    next_probe_ms: u64,
    /// Probes to observe at the end of this turn's write pass: when their publish was read.
    probes: Vec<Instant>,
    /// Shard 0 only (and only with `sys_interval_secs > 0`): the `$SYS` tree.
    sys: Option<Box<SysPublisher>>,
    /// Per client slot (with its generation): the session's counters when last added to
    /// the shard's (`Core::collect_session_stats`). Only sessions that counted something
    /// have an entry (a `Client` exists once per idle connection: it holds nothing for
    /// this); removed when the client ends.
    seen: hashbrown::HashMap<ClientSlot, (u32, SessionStats), foldhash::fast::RandomState>,
}

/// What shard 0 keeps to publish `$SYS`.
#[derive(Debug)]
struct SysPublisher {
    tree: SysTree,
    /// When the tree is next published (broker ms).
    next_ms: u64,
    /// Each shard's latest snapshot as last read (a slot busy at the moment of a read keeps
    /// its previous copy).
    latest: Vec<ShardSnapshot>,
}

impl Telemetry {
    pub(crate) fn new(shard: ShardId, shards: usize, sys_interval_secs: u32) -> Telemetry {
        let sys = (shard.index() == 0 && sys_interval_secs > 0).then(|| {
            Box::new(SysPublisher {
                tree: SysTree::new(format!("ringmq version {}", env!("CARGO_PKG_VERSION"))),
                next_ms: 0,
                latest: vec![ShardSnapshot::default(); shards],
            })
        });
        Telemetry {
            next_probe_ms: 0,
            probes: Vec::new(),
            sys,
            seen: hashbrown::HashMap::default(),
        }
    }
}

impl Core {
    /// Once a second (the wheel's tick): the snapshot to the board; on shard 0, `$SYS`
    /// when due.
    pub(crate) fn publish_stats(&mut self) {
        let snapshot = self.snapshot();
        let board = &self.shared.stats;
        board.publish(self.id.index(), &snapshot);
        self.publish_sys(snapshot);
    }

    fn snapshot(&self) -> ShardSnapshot {
        let s = &self.stats;
        let sn = self
            .sn
            .as_ref()
            .map(|sn| sn.gateway_stats())
            .unwrap_or_default();
        ShardSnapshot {
            at_ms: self.now_ms.max(1),
            sockets_accepted: s.accepted,
            connects: s.connects,
            handoffs: s.handed_off,
            closes: s.closes,
            packets_received: s.packets_received,
            // This thread is the shard: every packet it encoded was for its connections.
            packets_sent: crate::codec::encode::sent::packets(),
            publish_received: s.publish_received,
            publish_bytes_received: s.publish_bytes_received,
            publish_bytes_sent: s.publish_bytes_sent,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            deliveries: s.deliveries,
            session: s.session,
            dropped_member_gone: s.dropped_member_gone,
            retained_refused: s.retained_refused,
            mqttsn_unvalidated_dropped: sn.clients.unvalidated_dropped,
            mqttsn_malformed: sn.malformed + sn.oversized,
            clients_connected: s.connected,
            sessions: self.clients.len() as u64,
            subscriptions: self.routes.levels.len() as u64,
            retained: self.routes.levels.retained().len() as u64,
            shared_groups: self.routes.shared.group_count() as u64,
            sockets: self.conns.len() as u64,
            storage_ops: self.persist.produced(),
            storage_failed_batches: self.persist.failed_batches(),
            storage_pending_batches: self.persist.pending() as u64,
            delivery_latency: s.delivery_latency,
            commit_latency: *self.persist.commit_latency(),
        }
    }

    /// Shard 0: publishes the `$SYS` topics that changed, as retained QoS 0 messages from
    /// the broker (no publisher), routed like any retained publish.
    fn publish_sys(&mut self, own: ShardSnapshot) {
        let Some(sys) = self.telemetry.sys.as_mut() else {
            return;
        };
        // Once the shutdown began no shard routes new publishes (see `Lifecycle`).
        if self.now_ms < sys.next_ms || self.lifecycle != Lifecycle::Running {
            return;
        }
        let interval_ms = u64::from(self.shared.config.ops.sys_interval_secs) * 1000;
        sys.next_ms = self.now_ms + interval_ms;
        for (i, latest) in sys.latest.iter_mut().enumerate() {
            if i == self.id.index() {
                *latest = own;
            } else if let Some(s) = self.shared.stats.try_read(i) {
                *latest = s;
            }
        }
        // A read of /proc once per publication (`ProcessMemory`), not per message.
        let memory = ProcessMemory::read();
        let changed = sys.tree.update(self.now_ms, &sys.latest, memory);
        for (topic, payload) in changed {
            let Ok(topic) = TopicName::new(Bytes::from(topic.into_bytes())) else {
                continue; // Every name above is a valid topic; a bad one is skipped.
            };
            let message = Message {
                topic,
                payload: Bytes::from(payload.into_bytes()),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                expires_at_ms: None,
                origin: None,
                store_id: 0,
                pinned_read: 0,
            };
            self.route_publish(Arc::new(message), None);
        }
    }

    /// Adds what client `slot`'s session counted since the last look (drops, refusals) to
    /// the shard's counters. Called before its actions are handled, after every call on a
    /// session.
    #[inline]
    pub(crate) fn collect_session_stats(&mut self, slot: ClientSlot) {
        let Some(client) = self.clients.get(slot) else {
            return;
        };
        let Some(&now) = client.session.counted() else {
            return; // Nothing counted yet (most sessions): no copy, no lookup.
        };
        let generation = client.generation;
        self.add_session_stats(slot, generation, now);
    }

    /// The part of `collect_session_stats` for a session that counted something.
    #[cold]
    fn add_session_stats(&mut self, slot: ClientSlot, generation: u32, now: SessionStats) {
        let entry = self
            .telemetry
            .seen
            .entry(slot)
            .or_insert((generation, SessionStats::default()));
        if entry.0 != generation {
            *entry = (generation, SessionStats::default()); // A new client in a reused slot.
        }
        if entry.1 != now {
            add_session(&mut self.stats.session, &session_delta(&now, &entry.1));
            entry.1 = now;
        }
    }

    /// Client `slot` ended: its counters were collected with its last actions.
    pub(crate) fn forget_session_stats(&mut self, slot: ClientSlot) {
        self.telemetry.seen.remove(&slot);
    }

    /// Routes a client's publish; every `PROBE_INTERVAL_MS` the publish is also a latency
    /// probe (see the module documentation).
    #[inline]
    pub(crate) fn route_client_publish(&mut self, message: Arc<Message>, publisher: Publisher) {
        if self.now_ms < self.telemetry.next_probe_ms {
            self.route_publish(message, Some(publisher));
        } else {
            self.route_probe(message, publisher);
        }
    }

    /// `route_client_publish` for the publish that is this interval's probe.
    #[cold]
    fn route_probe(&mut self, message: Arc<Message>, publisher: Publisher) {
        self.telemetry.next_probe_ms = self.now_ms + PROBE_INTERVAL_MS;
        let received_at = Instant::now();
        let mask = self.interested_shards(&message);
        self.route_publish(message, Some(publisher));
        for shard in mask.iter() {
            if shard == self.id {
                self.telemetry.probes.push(received_at);
            } else {
                self.send_to(shard, Envelope::Probe { received_at });
            }
        }
    }

    /// Another shard's probe: its publish was handled just before (same channel); observed
    /// at the end of this turn's write pass.
    pub(crate) fn on_probe(&mut self, received_at: Instant) {
        self.telemetry.probes.push(received_at);
    }

    /// After the turn's write pass: the probes handled in it are observed.
    pub(crate) fn observe_probes(&mut self) {
        if self.telemetry.probes.is_empty() {
            return;
        }
        let now = Instant::now();
        for at in self.telemetry.probes.drain(..) {
            self.stats
                .delivery_latency
                .observe(now.saturating_duration_since(at));
        }
    }
}
