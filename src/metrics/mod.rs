//! Broker statistics away from the shards' hot paths: what one shard's counters look like
//! when it publishes them (`ShardSnapshot`), the board where every shard leaves its latest
//! snapshot (`StatsBoard`), and what reads them: the `$SYS` tree (`sys`, published by
//! shard 0) and the Prometheus endpoint (`prom`, `http`, on a thread of its own).
//!
//! A shard counts in plain integers on its own thread and copies them to its slot of the
//! board once a second (`try_lock`: a slot a reader holds is skipped, the shard never
//! waits). Readers copy the slots out under the lock and work on the copies. So counting
//! costs the hot path an addition, and a scrape costs each shard nothing.
//!
//! Must never: make a shard wait for a reader, or hold a slot's lock longer than a copy.

pub mod histogram;
pub mod http;
pub mod memory;
pub mod prom;
pub mod sys;

use std::sync::Mutex;

use crate::session::SessionStats;

pub use self::histogram::Histogram;
pub use self::memory::ProcessMemory;

/// Why connections closed, as counted and labelled (the detail of each close is in its
/// log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The peer closed the socket without DISCONNECT.
    PeerClosed,
    /// The socket failed (reset, timeout, ...).
    SocketError,
    /// Bytes that are not a valid packet.
    ProtocolError,
    /// A valid packet the session refused (v5 DISCONNECT with its reason code).
    Violation,
    /// Closed by the broker where no reason is named (input after a refused CONNECT).
    Other,
    /// CONNECT refused (CONNACK with a failure code).
    ConnectRefused,
    /// No CONNECT within `connect_timeout_secs`.
    ConnectTimeout,
    /// Nothing from the client within 1.5 times its keep alive.
    KeepAlive,
    /// Another connection took the client id over.
    Takeover,
    /// Output over `max_output_buffer` (or acknowledgements missing) for too long.
    SlowConsumer,
    /// The broker is stopping.
    Shutdown,
    /// A storage commit this connection's acknowledgements waited for failed.
    StorageFailure,
    /// The session ended while its connection was attached.
    SessionEnded,
    /// An incomplete packet held too long, or past the shard's share of
    /// `max_partial_input_bytes`.
    IncompletePacket,
    /// The transport (TLS, WebSocket, PROXY header) failed or refused the bytes.
    Transport,
}

impl CloseKind {
    pub const COUNT: usize = 16;
    pub const ALL: [CloseKind; CloseKind::COUNT] = [
        CloseKind::ClientDisconnect,
        CloseKind::PeerClosed,
        CloseKind::SocketError,
        CloseKind::ProtocolError,
        CloseKind::Violation,
        CloseKind::Other,
        CloseKind::ConnectRefused,
        CloseKind::ConnectTimeout,
        CloseKind::KeepAlive,
        CloseKind::Takeover,
        CloseKind::SlowConsumer,
        CloseKind::Shutdown,
        CloseKind::StorageFailure,
        CloseKind::SessionEnded,
        CloseKind::IncompletePacket,
        CloseKind::Transport,
    ];

    /// The `reason` label of `ringmq_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseKind::ClientDisconnect => "disconnect",
            CloseKind::PeerClosed => "peer_closed",
            CloseKind::SocketError => "socket_error",
            CloseKind::ProtocolError => "protocol_error",
            CloseKind::Violation => "violation",
            CloseKind::Other => "other",
            CloseKind::ConnectRefused => "connect_refused",
            CloseKind::ConnectTimeout => "connect_timeout",
            CloseKind::KeepAlive => "keep_alive",
            CloseKind::Takeover => "takeover",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::Shutdown => "shutdown",
            CloseKind::StorageFailure => "storage_failure",
            CloseKind::SessionEnded => "session_ended",
            CloseKind::IncompletePacket => "incomplete_packet",
            CloseKind::Transport => "transport",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One shard's counters and gauges at one moment. Counters only grow; gauges are the
/// value at `at_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Broker-clock milliseconds when taken (0: the shard has not published yet).
    pub at_ms: u64,
    /// Sockets accepted by this shard's listeners.
    pub sockets_accepted: u64,
    /// CONNECTs accepted (sessions attached to a connection here).
    pub connects: u64,
    /// Connections passed to their client's home shard after CONNECT.
    pub handoffs: u64,
    /// Connections closed, by `CloseKind::index`.
    pub closes: [u64; CloseKind::COUNT],
    /// MQTT packets decoded from clients (every type).
    pub packets_received: u64,
    /// MQTT packets written for clients (every type, PUBLISH included).
    pub packets_sent: u64,
    /// PUBLISH packets decoded from clients.
    pub publish_received: u64,
    /// Payload bytes of those PUBLISH packets.
    pub publish_bytes_received: u64,
    /// Payload bytes of the messages handed to a subscriber's session (`deliveries`).
    pub publish_bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Messages handed to a subscriber's session (written, queued, or dropped there).
    pub deliveries: u64,
    /// The per-session counters of this shard's sessions, summed (drops, refusals).
    pub session: SessionStats,
    /// Shared-subscription messages lost with their member: QoS 0 whose chosen member had
    /// left when it reached the member's shard, QoS 1/2 that no member was left to take.
    pub dropped_member_gone: u64,
    /// Publishes asked to be retained beyond the retained limits (not retained, or refused).
    pub retained_refused: u64,
    /// MQTT-SN datagrams and QoS 0 messages not sent to gateway clients that had not proved
    /// their address (`crate::mqttsn`'s anti-amplification budget).
    pub mqttsn_unvalidated_dropped: u64,
    /// MQTT-SN datagrams dropped unread: not MQTT-SN messages (truncated, lying lengths,
    /// reserved types) or larger than `max_message_size`.
    pub mqttsn_malformed: u64,
    /// Gauge: connections attached to a session.
    pub clients_connected: u64,
    /// Gauge: sessions homed here (connected or not).
    pub sessions: u64,
    /// Gauge: non-shared subscriptions of this shard's sessions.
    pub subscriptions: u64,
    /// Gauge: messages in this shard's replica of the retained store.
    pub retained: u64,
    /// Gauge: share groups (a replica: every shard knows every group).
    pub shared_groups: u64,
    /// Gauge: connections (any phase) open on this shard.
    pub sockets: u64,
    /// Storage operations this shard sent to the writer.
    pub storage_ops: u64,
    /// Storage batches (tickets) whose commit failed.
    pub storage_failed_batches: u64,
    /// Gauge: batches sent and not yet committed.
    pub storage_pending_batches: u64,
    /// Sampled: from the decode of a client's PUBLISH to the `send` of the turn that
    /// wrote it to its subscribers, per shard the message reached.
    pub delivery_latency: Histogram,
    /// From sending a batch to the storage writer to its commit's answer.
    pub commit_latency: Histogram,
}

impl ShardSnapshot {
    /// Messages dropped for subscribers: QoS 0 (offline, slow consumer, evicted), queue
    /// full, too large for the client's Maximum Packet Size, expired, waiting for a client
    /// that may not read them, or a shared group's chosen member gone.
    pub fn dropped(&self) -> u64 {
        let s = &self.session;
        s.dropped_qos0
            + s.dropped_queue_full
            + s.dropped_too_large
            + s.dropped_expired
            + s.dropped_not_authorized
            + self.dropped_member_gone
    }

    /// Deliveries not dropped: messages written to subscribers or queued for them.
    pub fn publish_sent(&self) -> u64 {
        self.deliveries.saturating_sub(self.dropped())
    }

    /// Adds `other` (totals over shards). Replicated gauges (retained messages, share
    /// groups) are the same on every shard: the largest is kept, not the sum.
    pub fn add(&mut self, o: &ShardSnapshot) {
        self.at_ms = self.at_ms.max(o.at_ms);
        self.sockets_accepted += o.sockets_accepted;
        self.connects += o.connects;
        self.handoffs += o.handoffs;
        for (a, b) in self.closes.iter_mut().zip(o.closes) {
            *a += b;
        }
        self.packets_received += o.packets_received;
        self.packets_sent += o.packets_sent;
        self.publish_received += o.publish_received;
        self.publish_bytes_received += o.publish_bytes_received;
        self.publish_bytes_sent += o.publish_bytes_sent;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.deliveries += o.deliveries;
        add_session(&mut self.session, &o.session);
        self.dropped_member_gone += o.dropped_member_gone;
        self.retained_refused += o.retained_refused;
        self.mqttsn_unvalidated_dropped += o.mqttsn_unvalidated_dropped;
        self.mqttsn_malformed += o.mqttsn_malformed;
        self.clients_connected += o.clients_connected;
        self.sessions += o.sessions;
        self.subscriptions += o.subscriptions;
        self.retained = self.retained.max(o.retained);
        self.shared_groups = self.shared_groups.max(o.shared_groups);
        self.sockets += o.sockets;
        self.storage_ops += o.storage_ops;
        self.storage_failed_batches += o.storage_failed_batches;
        self.storage_pending_batches += o.storage_pending_batches;
        self.delivery_latency.add(&o.delivery_latency);
        self.commit_latency.add(&o.commit_latency);
    }

    /// The sum of `shards`.
    pub fn total(shards: &[ShardSnapshot]) -> ShardSnapshot {
        let mut t = ShardSnapshot::default();
        for s in shards {
            t.add(s);
        }
        t
    }
}

/// `a += b`, field by field.
pub fn add_session(a: &mut SessionStats, b: &SessionStats) {
    a.dropped_qos0 += b.dropped_qos0;
    a.dropped_queue_full += b.dropped_queue_full;
    a.dropped_too_large += b.dropped_too_large;
    a.dropped_expired += b.dropped_expired;
    a.dropped_not_authorized += b.dropped_not_authorized;
    a.refused_publishes += b.refused_publishes;
    a.receive_maximum_exceeded += b.receive_maximum_exceeded;
    a.unknown_acks += b.unknown_acks;
    a.expired += b.expired;
}

/// `a - b`, field by field (what a session counted since `b` was taken from it).
pub fn session_delta(a: &SessionStats, b: &SessionStats) -> SessionStats {
    SessionStats {
        dropped_qos0: a.dropped_qos0 - b.dropped_qos0,
        dropped_queue_full: a.dropped_queue_full - b.dropped_queue_full,
        dropped_too_large: a.dropped_too_large - b.dropped_too_large,
        dropped_expired: a.dropped_expired - b.dropped_expired,
        dropped_not_authorized: a.dropped_not_authorized - b.dropped_not_authorized,
        refused_publishes: a.refused_publishes - b.refused_publishes,
        receive_maximum_exceeded: a.receive_maximum_exceeded - b.receive_maximum_exceeded,
        unknown_acks: a.unknown_acks - b.unknown_acks,
        expired: a.expired - b.expired,
    }
}

/// Where every shard leaves its latest snapshot.
#[derive(Debug)]
pub struct StatsBoard {
    slots: Box<[Mutex<ShardSnapshot>]>,
}

impl StatsBoard {
    pub fn new(shards: usize) -> StatsBoard {
        StatsBoard {
            slots: (0..shards)
                .map(|_| Mutex::new(ShardSnapshot::default()))
                .collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.slots.len()
    }

    /// Shard `shard` leaves `snapshot`; skipped (returns false) when a reader holds the slot
    /// at this instant: the next second's snapshot replaces it anyway.
    pub fn publish(&self, shard: usize, snapshot: &ShardSnapshot) -> bool {
        match self.slots.get(shard).map(Mutex::try_lock) {
            Some(Ok(mut slot)) => {
                *slot = *snapshot;
                true
            }
            Some(Err(std::sync::TryLockError::Poisoned(p))) => {
                *p.into_inner() = *snapshot;
                true
            }
            Some(Err(std::sync::TryLockError::WouldBlock)) | None => false,
        }
    }

    /// The latest snapshot of shard `shard`, unless its slot is busy at this instant.
    pub fn try_read(&self, shard: usize) -> Option<ShardSnapshot> {
        match self.slots.get(shard)?.try_lock() {
            Ok(s) => Some(*s),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(*p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Every shard's latest snapshot (waits for a slot only while its shard copies into
    /// it). For threads that are not shards.
    pub fn read_all(&self) -> Vec<ShardSnapshot> {
        self.slots
            .iter()
            .map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_and_keep_replicated_gauges() {
        let mut a = ShardSnapshot {
            deliveries: 10,
            retained: 4,
            shared_groups: 1,
            clients_connected: 2,
            ..ShardSnapshot::default()
        };
        a.session.dropped_qos0 = 3;
        a.closes[CloseKind::KeepAlive.index()] = 1;
        let b = ShardSnapshot {
            deliveries: 5,
            retained: 4,
            shared_groups: 1,
            clients_connected: 1,
            ..ShardSnapshot::default()
        };
        let t = ShardSnapshot::total(&[a, b]);
        assert_eq!(t.deliveries, 15);
        assert_eq!(t.dropped(), 3);
        assert_eq!(t.publish_sent(), 12);
        assert_eq!((t.retained, t.shared_groups), (4, 1));
        assert_eq!(t.clients_connected, 3);
        assert_eq!(t.closes[CloseKind::KeepAlive.index()], 1);
    }

    #[test]
    fn a_busy_slot_is_skipped_not_waited_for() {
        let board = StatsBoard::new(2);
        let snap = ShardSnapshot {
            at_ms: 7,
            ..ShardSnapshot::default()
        };
        assert!(board.publish(1, &snap));
        let guard = board.slots[1].lock().expect("lock");
        assert!(!board.publish(1, &snap), "held by a reader: skipped");
        assert_eq!(board.try_read(1), None);
        drop(guard);
        assert_eq!(board.try_read(1).map(|s| s.at_ms), Some(7));
        assert_eq!(board.read_all().len(), 2);
        assert!(!board.publish(5, &snap), "no such shard");
    }

    #[test]
    fn close_kinds_are_indexed_in_order() {
        for (i, k) in CloseKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
