//! What publishers and subscribers do with packets: the handshake replies, the two load models
//! (closed loop: at most `window` undelivered messages per publisher; open loop: sends at fixed
//! scheduled times), QoS 1/2 acknowledgement flows on both sides, and per-message accounting
//! (sequence tracking, latency) on delivery.
//!
//! Closed-loop choice: a message counts as delivered when every receiving slot has seen it or a
//! later message from the same publisher (the minimum of the edges' heads). A lost QoS 0
//! message therefore does not shrink the window forever, and in fan-out the slowest subscriber
//! sets the pace, as it would for a real application that needs every copy.

use std::sync::atomic::Ordering;

use crate::accounting::out_of_order;
use crate::payload::PayloadHeader;
use crate::plan::{Role, Shared, Timing};
use crate::report::ErrorKind;
use crate::wire::{self, Frame, PublishTemplate, WireError};
use crate::worker::{ConnState, Worker};

/// Queued output beyond which a publisher stops queueing (the broker is not reading).
const OUT_CAP: usize = 1 << 20;
/// Open loop: most messages one publisher queues per turn, so that a late turn catching up
/// cannot starve the other connections' reads.
const OPEN_LOOP_BATCH: u64 = 4096;
/// Packet ids cycle through 1..=65535 [MQTT-2.3.1-1: non-zero].
const PACKET_IDS: u64 = 65535;

#[derive(Debug)]
pub struct PubState {
    /// Global publisher id (in every payload header).
    pub id: u32,
    pub conn: usize,
    template: PublishTemplate,
    /// Next sequence number = messages queued so far.
    pub seq: u64,
    /// Cached lower bound of delivered messages (closed loop).
    delivered: u64,
    /// QoS 1/2 messages not yet completed, and the broker's Receive Maximum.
    inflight: u32,
    pub receive_maximum: u32,
    /// Packet ids in use, one bit each.
    ids: Vec<u64>,
    /// When each QoS 1/2 publish was queued, by packet id modulo `ACK_RING` (with the id, so
    /// that an entry overwritten by a later id is not mistaken for it): the acknowledgement
    /// latency (PUBACK, or PUBREC for QoS 2).
    queued_at: Vec<(u16, u64)>,
    /// Open loop: first scheduled send and the interval between sends, in ns.
    first_due: f64,
    interval: f64,
    /// Could not send last turn for a reason other than the load model (ids, full output):
    /// a socket event, not a timer or a delivery, will unblock it.
    blocked: bool,
}

/// Acknowledgement times kept per publisher (16 KiB): enough for any closed-loop window
/// and open-loop rates with up to this many publishes awaiting their acknowledgement.
const ACK_RING: usize = 1024;

impl PubState {
    pub fn new(sh: &Shared, id: u32, conn: usize) -> PubState {
        let cfg = &sh.cfg;
        let topic = &sh.plan.pubs[id as usize].topic;
        PubState {
            id,
            conn,
            template: PublishTemplate::new(cfg.protocol, topic, cfg.qos, cfg.payload),
            seq: 0,
            delivered: 0,
            inflight: 0,
            receive_maximum: u32::from(u16::MAX),
            ids: if cfg.qos > 0 {
                vec![0; 1024]
            } else {
                Vec::new()
            },
            queued_at: if cfg.qos > 0 {
                vec![(0, 0); ACK_RING]
            } else {
                Vec::new()
            },
            first_due: 0.0,
            interval: 0.0,
            blocked: false,
        }
    }

    /// Scheduled send time of message `seq` (open loop).
    fn due(&self, seq: u64) -> u64 {
        (self.first_due + seq as f64 * self.interval) as u64
    }

    fn take_id(&mut self) -> Option<u16> {
        if self.inflight >= self.receive_maximum {
            return None;
        }
        let id = (self.seq % PACKET_IDS + 1) as usize;
        let (w, m) = (id / 64, 1u64 << (id % 64));
        if self.ids[w] & m != 0 {
            return None; // acknowledgements came out of order; wait for this id
        }
        self.ids[w] |= m;
        self.inflight += 1;
        Some(id as u16)
    }

    /// Frees a packet id; false if it was not in use.
    fn release_id(&mut self, id: u16) -> bool {
        let (w, m) = (id as usize / 64, 1u64 << (id % 64));
        match self.ids.get_mut(w) {
            Some(word) if *word & m != 0 => {
                *word &= !m;
                self.inflight -= 1;
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct SubState {
    /// Global subscriber id (its filter is in the plan).
    pub global: u32,
    pub slot: u32,
    /// Per expected publisher: one past the highest sequence number this connection saw.
    last: Vec<u64>,
}

impl SubState {
    pub fn new(sub: u32, sh: &Shared, edges: usize) -> SubState {
        SubState {
            global: sub,
            slot: sh.plan.subs[sub as usize].slot,
            last: vec![0; edges],
        }
    }
}

impl Worker {
    /// Fixes open-loop send times once the start is known. Publishers are offset evenly
    /// within one interval so the total rate is smooth rather than in bursts.
    pub fn schedule_open_loop(&mut self, start: u64) {
        let Some(rate) = self.sh.cfg.rate else { return };
        let n = self.sh.cfg.publishers as f64;
        let interval = 1e9 * n / rate;
        for p in &mut self.pubs {
            p.interval = interval;
            p.first_due = start as f64 + interval * f64::from(p.id) / n;
        }
    }

    /// Earliest scheduled send of an unblocked publisher (open loop), if any.
    pub fn next_due(&self) -> Option<u64> {
        let t = self.timing?;
        self.sh.cfg.rate?;
        self.pubs
            .iter()
            .filter(|p| !p.blocked && self.conns[p.conn].state == ConnState::Ready)
            .map(|p| p.due(p.seq))
            .filter(|&d| d < t.meas_end)
            .min()
    }

    /// Closed loop: whether some publisher held back only by its window could send now.
    pub fn any_publisher_unblocked(&self) -> bool {
        let Some(t) = self.timing else { return false };
        if self.sh.cfg.rate.is_some() || self.now >= t.meas_end || self.now < t.start {
            return false;
        }
        let window = self.sh.cfg.window as u64;
        self.pubs.iter().any(|p| {
            !p.blocked
                && self.conns[p.conn].state == ConnState::Ready
                && p.seq - self.sh.delivered(p.id as usize) < window
        })
    }

    /// Lets every publisher queue what its load model allows this turn.
    pub fn publish_turn(&mut self) {
        let Some(t) = self.timing else { return };
        if self.now < t.start {
            return;
        }
        for k in 0..self.pubs.len() {
            if self.conns[self.pubs[k].conn].state == ConnState::Ready {
                self.publish_some(k, t);
            }
        }
    }

    fn publish_some(&mut self, k: usize, t: Timing) {
        let open = self.sh.cfg.rate.is_some();
        let tag = self.sh.tag;
        let p = &mut self.pubs[k];
        let mut budget = if open {
            OPEN_LOOP_BATCH
        } else {
            if self.now >= t.meas_end {
                return;
            }
            let window = self.sh.cfg.window as u64;
            if p.seq - p.delivered >= window {
                p.delivered = self.sh.delivered(p.id as usize);
            }
            window.saturating_sub(p.seq - p.delivered)
        };
        let c = &mut self.conns[p.conn];
        let start_seq = p.seq;
        p.blocked = false;
        while budget > 0 {
            let ts = if open {
                let due = p.due(p.seq);
                if due > self.now || due >= t.meas_end {
                    break;
                }
                due
            } else {
                self.now
            };
            if c.queued() > OUT_CAP {
                p.blocked = true;
                break;
            }
            let packet_id = if p.ids.is_empty() {
                0
            } else if let Some(id) = p.take_id() {
                p.queued_at[usize::from(id) % ACK_RING] = (id, self.now);
                id
            } else {
                p.blocked = true;
                break;
            };
            let header = PayloadHeader {
                tag,
                publisher: p.id,
                seq: p.seq,
                sent_ns: ts,
            };
            p.template.write(&mut c.out, packet_id, &header);
            if t.measured(ts) {
                self.report.sent_window += 1;
                if open {
                    let lag_us = (self.now - ts) / 1000;
                    self.report.send_lag.saturating_record(lag_us);
                }
            }
            p.seq += 1;
            budget -= 1;
        }
        let sent = p.seq - start_seq;
        if sent > 0 {
            self.report.sent_total += sent;
            self.sh.pub_sent[p.id as usize]
                .0
                .store(p.seq, Ordering::SeqCst);
            let conn = p.conn;
            self.mark_dirty(conn);
        }
    }

    /// Handles one packet from the broker on connection `i`.
    pub fn on_frame(&mut self, i: usize, frame: Frame<'_>) -> Result<(), WireError> {
        let proto = self.sh.cfg.protocol;
        let state = self.conns[i].state;
        match (state, frame.kind()) {
            (ConnState::AwaitConnack, wire::CONNACK) => {
                let ack = wire::parse_connack(frame.body, proto)?;
                if ack.code != 0 {
                    self.fail(i, ErrorKind::ConnackRefused);
                    return Ok(());
                }
                match self.conns[i].role {
                    Role::Publisher(k) => {
                        self.pubs[k as usize].receive_maximum = u32::from(ack.receive_maximum)
                    }
                    Role::Subscriber(s) => {
                        let global = self.subs[s as usize].global as usize;
                        let filter = &self.sh.plan.subs[global].filter;
                        let c = &mut self.conns[i];
                        wire::encode_subscribe(&mut c.out, proto, 1, filter, self.sh.cfg.qos);
                        c.state = ConnState::AwaitSuback;
                        self.mark_dirty(i);
                        return Ok(());
                    }
                    Role::Idle | Role::Filters(_) => {}
                }
                self.became_ready(i);
            }
            (ConnState::Ready, wire::SUBACK) if matches!(self.conns[i].role, Role::Filters(_)) => {
                self.on_filters_suback(i, frame.body)?;
            }
            (ConnState::Ready, wire::PUBLISH) if matches!(self.conns[i].role, Role::Filters(_)) => {
                wire::parse_publish(frame, proto)?;
                self.report.received_total += 1;
            }
            (ConnState::AwaitSuback, wire::SUBACK) => {
                let (_, code) = wire::parse_suback(frame.body, proto)?;
                if code >= 0x80 {
                    self.fail(i, ErrorKind::SubackRefused);
                } else {
                    self.became_ready(i);
                }
            }
            (ConnState::AwaitSuback | ConnState::Ready, wire::PUBLISH) => {
                self.on_publish(i, frame)?;
            }
            (ConnState::Ready, wire::PUBACK | wire::PUBREC | wire::PUBCOMP | wire::PUBREL) => {
                self.on_ack(i, frame)?;
            }
            (_, wire::PINGRESP) => {}
            (_, wire::DISCONNECT) => self.fail(i, ErrorKind::Closed),
            _ => return Err(WireError::Malformed),
        }
        Ok(())
    }

    /// QoS 1/2 flows: PUBACK and PUBCOMP free an id, PUBREC is answered with PUBREL (the id
    /// stays in use), PUBREL (subscriber side of QoS 2) with PUBCOMP.
    fn on_ack(&mut self, i: usize, frame: Frame<'_>) -> Result<(), WireError> {
        let (id, code) = wire::parse_ack(frame.body)?;
        let kind = frame.kind();
        if code >= 0x80 {
            self.report.rejected += 1;
        }
        match (self.conns[i].role, kind) {
            (Role::Subscriber(_), wire::PUBREL) => {
                wire::encode_ack(&mut self.conns[i].out, wire::PUBCOMP, id);
                self.mark_dirty(i);
            }
            (Role::Publisher(_), wire::PUBREC) if self.sh.cfg.qos == 2 && code < 0x80 => {
                wire::encode_ack(&mut self.conns[i].out, wire::PUBREL, id);
                self.mark_dirty(i);
            }
            (Role::Publisher(k), wire::PUBACK | wire::PUBREC | wire::PUBCOMP) => {
                if kind != wire::PUBCOMP {
                    self.record_ack_latency(k as usize, id);
                }
                if !self.pubs[k as usize].release_id(id) {
                    return Err(WireError::Malformed); // an ack for an id we never used
                }
            }
            _ => return Err(WireError::Malformed),
        }
        Ok(())
    }

    /// Publisher `k`'s publish `id` was acknowledged (PUBACK, or PUBREC for QoS 2).
    fn record_ack_latency(&mut self, k: usize, id: u16) {
        let Some(t) = self.timing else { return };
        let Some(&(queued_id, at)) = self.pubs[k].queued_at.get(usize::from(id) % ACK_RING) else {
            return;
        };
        if queued_id == id && t.measured(at) {
            let us = self.now.saturating_sub(at) / 1000;
            self.report.ack_latency.saturating_record(us);
        }
    }

    /// A delivery: acknowledge per QoS, then account for it.
    fn on_publish(&mut self, i: usize, frame: Frame<'_>) -> Result<(), WireError> {
        let p = wire::parse_publish(frame, self.sh.cfg.protocol)?;
        let Role::Subscriber(s) = self.conns[i].role else {
            return Err(WireError::Malformed);
        };
        match p.qos {
            1 => wire::encode_ack(&mut self.conns[i].out, wire::PUBACK, p.packet_id),
            2 => wire::encode_ack(&mut self.conns[i].out, wire::PUBREC, p.packet_id),
            _ => {}
        }
        if p.qos > 0 {
            self.mark_dirty(i);
        }
        self.report.received_total += 1;
        let sh = &*self.sh;
        let slot = &sh.plan.slots[self.subs[s as usize].slot as usize];
        let header = PayloadHeader::decode(p.payload).filter(|h| h.tag == sh.tag);
        let Some((h, local)) =
            header.and_then(|h| slot.local(h.publisher, sh.plan.pubs.len()).map(|l| (h, l)))
        else {
            self.report.foreign += 1;
            return Ok(());
        };
        let edge = (slot.edge_base + local) as usize;
        let Some(tracker) = self.trackers[edge].as_mut() else {
            return Ok(()); // unreachable: trackers exist for every edge of our slots
        };
        let arrival = tracker.record(h.seq);
        if out_of_order(
            &mut self.subs[s as usize].last[local as usize],
            h.seq,
            arrival,
        ) {
            self.report.out_of_order += 1;
        }
        if !self.touched_flag[edge] {
            self.touched_flag[edge] = true;
            self.touched.push(edge as u32);
        }
        if let Some(t) = self.timing {
            if t.measured(self.now) {
                self.report.received_window += 1;
            }
            if t.measured(h.sent_ns) {
                let us = self.now.saturating_sub(h.sent_ns) / 1000;
                self.report.latency.saturating_record(us);
            }
        }
        Ok(())
    }

    /// After the run: loss per edge against what its publisher sent, and open-loop backlog.
    pub fn finish_accounting(&mut self) {
        for (e, t) in self.trackers.iter().enumerate() {
            let Some(t) = t else { continue };
            let p = self.sh.plan.edge_pub[e] as usize;
            let sent = self.sh.pub_sent[p].0.load(Ordering::SeqCst);
            self.report.lost += t.lost(sent);
            self.report.distinct += t.distinct;
            self.report.duplicates += t.duplicates;
            self.report.late += t.late;
        }
        self.report.unacked += self.pubs.iter().map(|p| u64::from(p.inflight)).sum::<u64>();
        if let (Some(t), Some(_)) = (self.timing, self.sh.cfg.rate) {
            for p in &self.pubs {
                let next = p.due(p.seq);
                if next < t.meas_end {
                    self.report.behind += ((t.meas_end - next) as f64 / p.interval).ceil() as u64;
                }
            }
        }
    }
}
