//! Incomplete packets: what a shard holds of packets whose last bytes have not arrived.
//!
//! A decoded packet needs all its bytes, so a connection's incomplete trailing packet is kept
//! between reads (`Conn::keep_input`; behind a transport, these are the MQTT bytes it let
//! through). Without bounds a client (or thousands) can send a packet of up to
//! `max_packet_size` short of its last bytes and keep it held for ever (3.x keep alive 0).
//! Two limits apply:
//! - a budget for all incomplete packets of the broker, `max_partial_input_bytes`, shared
//!   equally by the shards: a connection whose incomplete packet would take its shard past
//!   its share is closed (v5: DISCONNECT 0x97 Quota exceeded), the others keep theirs;
//! - a time limit from a packet's first byte to its last, `incomplete_packet_timeout_secs`:
//!   a connection still short of the rest after it is closed (v5: DISCONNECT 0x8D).
//!
//! Owns: the table of connections holding an incomplete packet (only those: nothing per idle
//! connection), with when each packet began and what it is charged, and the shard's total.
//!
//! Must never: charge a connection twice, or keep an entry after its connection closed.

use std::collections::HashMap;

use bytes::BytesMut;

use super::close::CloseReason;
use super::core::{Core, Phase, Stamp, stamp, stamp_ms};
use super::ids::{ConnId, ConnKey};
use super::io::Step;
use crate::codec::{self, Packet, ReasonCode};

/// A shard's share of `max_partial_input_bytes` (0: no limit).
pub(crate) fn shard_budget(total: usize, shards: usize) -> usize {
    if total == 0 {
        return usize::MAX;
    }
    (total / shards.max(1)).max(1)
}

/// One connection's incomplete packet.
#[derive(Clone, Copy, Debug)]
struct Entry {
    generation: u32,
    /// When its first byte was read.
    since: Stamp,
    /// Bytes charged (the buffer's capacity).
    charged: usize,
}

/// The shard's incomplete packets.
#[derive(Debug)]
pub(crate) struct PartialInput {
    entries: HashMap<ConnId, Entry>,
    total: usize,
    budget: usize,
}

impl PartialInput {
    /// `budget`: this shard's share of `max_partial_input_bytes`.
    pub(crate) fn new(budget: usize) -> PartialInput {
        PartialInput {
            entries: HashMap::new(),
            total: 0,
            budget,
        }
    }

    /// Connection `key` takes its incomplete packet back to add bytes to it: its charge is
    /// released (whatever connection of its slot it was charged to); returns when the packet
    /// began, if it had one charged.
    pub(crate) fn take(&mut self, key: ConnKey) -> Option<Stamp> {
        let e = self.entries.remove(&key.id)?;
        self.total -= e.charged;
        (e.generation == key.generation).then_some(e.since)
    }

    /// Connection `id` keeps an incomplete packet of `charged` bytes that began at `since`.
    /// `false` (nothing recorded): that would take the shard past its budget.
    pub(crate) fn keep(&mut self, key: ConnKey, since: Stamp, charged: usize) -> bool {
        let replaced = self.entries.get(&key.id).map_or(0, |e| e.charged);
        if (self.total - replaced).saturating_add(charged) > self.budget {
            return false;
        }
        self.total = self.total - replaced + charged;
        self.entries.insert(
            key.id,
            Entry {
                generation: key.generation,
                since,
                charged,
            },
        );
        true
    }

    /// When connection `id`'s incomplete packet began, if it holds one.
    pub(crate) fn since(&self, key: ConnKey) -> Option<Stamp> {
        self.entries
            .get(&key.id)
            .filter(|e| e.generation == key.generation)
            .map(|e| e.since)
    }

    /// Bytes held in incomplete packets on this shard.
    pub(crate) fn total(&self) -> usize {
        self.total
    }
}

impl Core {
    /// Connection `id` keeps `work`, an incomplete packet that began at `began` (`None`:
    /// with this read), unless that takes the shard past its budget: then it is closed.
    pub(crate) fn keep_partial(
        &mut self,
        key: ConnKey,
        work: BytesMut,
        began: Option<Stamp>,
    ) -> Step {
        let id = key.id;
        let since = began.unwrap_or_else(|| stamp(self.now_ms));
        if !self.partial.keep(key, since, work.capacity()) {
            let held = self.partial.total();
            self.close_for_input(
                id,
                ReasonCode::QuotaExceeded,
                format!(
                    "an incomplete packet of {} bytes would pass the shard's share of \
                     max_partial_input_bytes ({held} bytes held)",
                    work.len()
                ),
            );
            return Step::Close;
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.keep_input(work);
        }
        let timeout_ms = self.incomplete_packet_timeout_ms();
        if began.is_none() && timeout_ms > 0 {
            self.schedule_conn(id, stamp_ms(since) + timeout_ms + 100);
        }
        Step::Continue
    }

    /// Connection `id`'s timer fired: `true` when it was closed because its incomplete
    /// packet is older than `incomplete_packet_timeout_secs`; otherwise its timer is set for
    /// that moment if it holds one.
    pub(crate) fn incomplete_packet_expired(&mut self, key: ConnKey) -> bool {
        let id = key.id;
        let timeout_ms = self.incomplete_packet_timeout_ms();
        let Some(since) = self.partial.since(key) else {
            return false;
        };
        if timeout_ms == 0 {
            return false;
        }
        let deadline = stamp_ms(since) + timeout_ms;
        if self.now_ms < deadline {
            self.schedule_conn(id, deadline + 100);
            return false;
        }
        let secs = timeout_ms / 1000;
        self.close_for_input(
            id,
            ReasonCode::KeepAliveTimeout,
            format!("a packet begun {secs}s ago is still incomplete"),
        );
        true
    }

    /// `incomplete_packet_timeout_secs` in milliseconds (0: no limit).
    fn incomplete_packet_timeout_ms(&self) -> u64 {
        u64::from(self.shared.config.limits.incomplete_packet_timeout_secs) * 1000
    }

    /// Connection `id` ends for what it sent: its incomplete packet is released, a v5 client
    /// past CONNACK gets DISCONNECT with `code`, and it closes with `why` in its close line.
    fn close_for_input(&mut self, id: ConnId, code: ReasonCode, why: String) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let key = ConnKey::new(id, conn.generation);
        drop(conn.take_input());
        let mut sent = None;
        if conn.phase == Phase::Open
            && let Some(v) = conn.version
            && v.is_v5()
        {
            let packet = Packet::Disconnect(codec::Disconnect::new(code));
            codec::encode(&packet, v, &mut conn.out);
            sent = Some(code);
        }
        self.partial.take(key);
        self.close_for(id, CloseReason::IncompletePacket { code: sent, why });
    }

    /// Connection `id` closes or stops reading: its incomplete packet's charge is released.
    pub(crate) fn release_partial(&mut self, id: ConnId) {
        if let Some(generation) = self.conns.get(id).map(|c| c.generation) {
            self.partial.take(ConnKey::new(id, generation));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32, generation: u32) -> ConnKey {
        ConnKey::new(ConnId::from_raw(id), generation)
    }

    #[test]
    fn the_budget_bounds_the_total_and_a_take_releases_its_charge() {
        let mut p = PartialInput::new(100);
        assert!(p.keep(key(1, 7), 5, 60));
        assert!(!p.keep(key(2, 7), 5, 41), "61+ would pass 100");
        assert!(p.keep(key(2, 7), 5, 40));
        assert_eq!(p.total(), 100);
        assert_eq!(p.take(key(1, 7)), Some(5));
        assert_eq!(p.total(), 40);
        assert_eq!(p.take(key(1, 7)), None, "charged once");
        assert!(
            p.keep(key(2, 7), 5, 90),
            "a new charge replaces the old one"
        );
        assert_eq!(p.total(), 90);
    }

    #[test]
    fn a_reused_slot_does_not_inherit_the_start() {
        let mut p = PartialInput::new(100);
        assert!(p.keep(key(1, 7), 5, 10));
        assert_eq!(p.since(key(1, 8)), None);
        assert_eq!(p.take(key(1, 8)), None);
        assert_eq!(p.total(), 0, "the old charge is released all the same");
    }
}
