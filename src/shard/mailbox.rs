//! Cross-shard messaging: one bounded channel per (source -> destination) pair, a per-shard
//! notifier, and the per-destination outboxes a shard fills during a loop turn.
//!
//! The channels are crossbeam list channels bounded by us (`Limits::cross_shard_queue`, checked
//! by the only sender of each channel, the source shard): a list channel holds memory only for the
//! envelopes in it, where an array channel allocates and touches every slot up front
//! (measured: 4.7 MB per channel at 64k slots, 18.9 MB of a 2-shard broker's 32.5 MB empty
//! RSS, and `shards^2` channels).
//!
//! Owns: the `Envelope` vocabulary shards speak, the channel mesh, and the wake protocol:
//! a sender pushes, then wakes the destination only if its loop is parked (the `parked`
//! flag); monoio's `sync` feature turns that wake into an eventfd write only when the
//! destination's ring sleeps. Channels are FIFO, so per-(publisher, topic) order holds.
//!
//! Back-pressure: when a channel is full the outbox keeps the rest for the next turn; once an
//! outbox itself holds a channel's worth (`Outboxes::backlogged`), the shard stops reading the
//! connections whose last read published there (`Conn::feeds`) until the destination catches
//! up, and keeps reading the others; at `FAR_BEHIND` channels' worth it reads no client. What
//! waits for one shard stays bounded (at most `FAR_BEHIND` + 1 times `cross_shard_queue`
//! envelopes) and publishers meet TCP back-pressure, while new clients and everyone else's
//! PINGREQs are still answered.
//!
//! Must never: block a shard on a full channel, or send one envelope per subscriber (one per
//! destination shard per publish).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::hold::HoldKey;
use super::ids::SessionKey;
use crate::codec::Connect;
use crate::router::delivery::Subscription;
use crate::router::interest::{InterestOp, ShardId};
use crate::router::shared::ShareOp;
use crate::router::topic::TopicFilter;
use crate::session::{ClientId, Message};

/// A publisher's acknowledgement waits for the receiving shard: it answers `origin` for
/// `hold` (`FenceDone`) once what it stored for the publish is durable (at once when it
/// stored nothing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AckRequest {
    pub(crate) origin: ShardId,
    pub(crate) hold: HoldKey,
    /// The origin recorded this shard's part of the fan-out of a QoS 2 message
    /// (`Core::fanout_part`): remove the record with this shard's copies.
    pub(crate) fanout: bool,
}

/// A change of one of the replicated routing indexes: `durable` picks the index of shards
/// with a persistent QoS 1/2 subscriber, otherwise the index of shards with any.
#[derive(Clone, Debug)]
pub(crate) struct InterestChange {
    pub(crate) durable: bool,
    pub(crate) op: InterestOp,
}

/// What one shard asks of another.
#[derive(Debug)]
pub(crate) enum Envelope {
    /// A publish. `deliver`: match the local trie and deliver to local subscribers.
    /// `retain`: update this shard's replica of the retained store first (retained publishes
    /// go to every shard, in order, on the same channels as deliveries). `ack`: the
    /// publisher waits for what this shard stores for it.
    Publish {
        message: Arc<Message>,
        deliver: bool,
        retain: bool,
        ack: Option<AckRequest>,
    },
    /// A retained update for a topic the receiving shard owns (`Core::retain_owner`), from
    /// the shard whose client published it (`origin`). The owner applies and stores it and
    /// passes it to every other shard, so every replica applies one topic's updates in the
    /// owner's order (publishers on two shards otherwise leave each replica with the
    /// other's message). `fence`: the publisher's output waits until every replica has it
    /// (and the owner has stored it); the owner answers for itself and fences the others on
    /// `origin`'s behalf.
    Retain {
        message: Arc<Message>,
        origin: ShardId,
        fence: Option<HoldKey>,
    },
    /// A publish for the one member of a share group the publishing shard chose. `group`:
    /// the whole `$share/{group}/{filter}`, to hand the message back to the group when the
    /// member is gone.
    SharedDeliver {
        message: Arc<Message>,
        subscriber: SessionKey,
        subscription: Subscription,
        group: Arc<TopicFilter>,
        /// Times the message was already handed on by members that could not take it
        /// (see `share::MAX_SHARE_HANDOVERS`).
        hops: u8,
        ack: Option<AckRequest>,
    },
    /// The source shard gained its first or lost its last subscriber of these filters, in
    /// order. Batched (`INTEREST_BATCH` at most): a mass disconnect of clients with hundreds
    /// of subscriptions each makes one envelope per few hundred changes, not one per change.
    Interest(Vec<InterestChange>),
    /// A session joined or left a share group.
    Share(ShareOp<SessionKey>),
    /// A connection whose CONNECT was read on the source shard, moving to its home shard.
    Handoff(Box<Handoff>),
    /// Sent after a broadcast (interest, share membership, retained update): the receiver
    /// answers `FenceDone`. Channels are FIFO, so the answer proves the broadcast was
    /// applied there; the origin holds the connection's output (its SUBACK / PUBACK) until
    /// every other shard has answered.
    Fence { origin: ShardId, hold: HoldKey },
    /// The answer to `Fence` or to an `AckRequest`.
    FenceDone { hold: HoldKey },
    /// The answer to an `AckRequest` whose storage commit failed: the acknowledgement must
    /// never be sent.
    CommitFailed { hold: HoldKey, disk_full: bool },
    /// Behind a sampled publish: when the source shard routed it. The receiver observes
    /// the delivery latency at the end of its write pass (see `stats.rs`).
    Probe { received_at: std::time::Instant },
    /// MQTT-SN (`mqttsn.rs`): a datagram this shard read for a gateway client homed on the
    /// receiving shard.
    SnDatagram(Box<super::mqttsn::SnForward>),
    /// MQTT-SN: the address's datagrams now go to another shard's client (a CONNECT with
    /// another client id): the receiving shard's client at `addr` is over.
    SnDropAddress { addr: SocketAddr },
    /// MQTT-SN: the receiving shard's client at `addr`, whose datagrams the sending shard
    /// reads, is gone: the route of `epoch` (the CONNECT that made it) may go.
    SnRouteGone { addr: SocketAddr, epoch: u32 },
}

/// How many channels' worth an outbox may hold before no client of the shard is read at
/// all. Below it only the connections that fed a backlogged destination wait: the others
/// (new CONNECTs, PINGREQs, publishers to other shards) are read, and what they publish
/// there is bounded by this.
pub(crate) const FAR_BEHIND: usize = 4;

/// Routing changes one `Envelope::Interest` carries at most: enough to make a mass
/// disconnect (400,000 removals were measured) a few thousand envelopes, small enough that
/// applying one stays well under a millisecond.
pub(crate) const INTEREST_BATCH: usize = 256;

impl Envelope {
    /// Whether this envelope carries a publish (the traffic a client makes for another
    /// shard by publishing), as opposed to routing updates, fences and answers.
    pub(crate) fn feeds_deliveries(&self) -> bool {
        matches!(
            self,
            Envelope::Publish { .. } | Envelope::SharedDeliver { .. } | Envelope::Retain { .. }
        )
    }

    /// What handling this envelope costs against a drain budget: one per routing change for
    /// a batch, one otherwise.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Envelope::Interest(ops) => ops.len().max(1),
            Envelope::Publish { .. }
            | Envelope::Retain { .. }
            | Envelope::SharedDeliver { .. }
            | Envelope::Share(_)
            | Envelope::Handoff(_)
            | Envelope::Fence { .. }
            | Envelope::FenceDone { .. }
            | Envelope::CommitFailed { .. }
            | Envelope::Probe { .. }
            | Envelope::SnDatagram(_)
            | Envelope::SnDropAddress { .. }
            | Envelope::SnRouteGone { .. } => 1,
        }
    }
}

/// Everything a home shard needs to continue a connection accepted elsewhere.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// The socket; closed if the envelope is dropped.
    pub(crate) fd: OwnedFd,
    pub(crate) peer: SocketAddr,
    /// The connection's transport (TLS session, WebSocket state) with the wire bytes it
    /// made that were not sent yet; `None` for plain TCP.
    pub(crate) extra: Option<Box<super::layered::ConnExtra>>,
    pub(crate) connect: Box<Connect>,
    pub(crate) client_id: ClientId,
    /// The id was assigned by the accepting shard (v5 CONNACK must carry it).
    pub(crate) assigned: bool,
    /// Bytes read after the CONNECT packet (the client may pipeline).
    pub(crate) leftover: BytesMut,
    /// Who the client authenticated as on the accepting shard.
    pub(crate) identity: super::auth::Identity,
}

/// Wakes a shard's loop from other threads, only when it is parked.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    parked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Notifier {
    /// Called by senders after pushing: wakes the receiver if (and only if) it parked.
    pub(crate) fn notify(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Called by the receiver before it re-checks its inputs and returns `Pending`.
    pub(crate) fn park(&self, cx: &Context<'_>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Called by the receiver when the re-check found work after `park`.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// The channel mesh: `senders[src][dst]` and `receivers[dst][src]`.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub(crate) senders: Vec<Vec<Sender<Envelope>>>,
    /// In `Arc`s so that threads outside the mesh (the password verifiers) can hold one
    /// without holding the broker.
    pub(crate) notifiers: Vec<Arc<Notifier>>,
    /// `room_wanted[src * shards + dst]`: `src` has envelopes for `dst` that did not fit in
    /// the channel. `dst` clears it and wakes `src` once it has drained the channel to half
    /// (`Mesh::offer_room`), so a waiting sender parks instead of retrying every turn.
    room_wanted: Vec<AtomicBool>,
    shards: usize,
}

impl Mesh {
    /// Builds the mesh for `shards` shards and returns the receivers, indexed
    /// `[dst][src]`, to be moved into their shards.
    pub(crate) fn new(shards: usize) -> (Mesh, Vec<Vec<Receiver<Envelope>>>) {
        let mut senders: Vec<Vec<Sender<Envelope>>> = (0..shards).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<Receiver<Envelope>>> = (0..shards).map(|_| Vec::new()).collect();
        for src_senders in senders.iter_mut() {
            for dst_receivers in receivers.iter_mut() {
                // Unbounded list channel; `Outboxes::flush` (the only sender) applies the bound.
                let (tx, rx) = crossbeam_channel::unbounded();
                src_senders.push(tx);
                dst_receivers.push(rx);
            }
        }
        let notifiers = (0..shards).map(|_| Arc::default()).collect();
        let room_wanted = (0..shards * shards)
            .map(|_| AtomicBool::new(false))
            .collect();
        let mesh = Mesh {
            senders,
            notifiers,
            room_wanted,
            shards,
        };
        (mesh, receivers)
    }

    fn room_flag(&self, src: usize, dst: usize) -> &AtomicBool {
        &self.room_wanted[src * self.shards + dst]
    }

    /// Called by `dst` after draining: wakes every sender that waits for room in its channel
    /// to `dst` once that channel is at most half full.
    pub(crate) fn offer_room(&self, dst: usize, receivers: &[Receiver<Envelope>], capacity: usize) {
        for (src, rx) in receivers.iter().enumerate() {
            let flag = self.room_flag(src, dst);
            if flag.load(Ordering::SeqCst)
                && rx.len() <= capacity / 2
                && flag.swap(false, Ordering::SeqCst)
            {
                self.notifiers[src].notify();
            }
        }
    }
}

/// An emptied outbox queue whose capacity grew above this (and above the channel's) gives it
/// back: a burst must not keep its peak for the shard's lifetime.
const SHRINK_ABOVE: usize = 4096;

/// Envelopes a shard produced this turn, per destination; flushed once per turn.
#[derive(Debug)]
pub(crate) struct Outboxes {
    queues: Vec<VecDeque<Envelope>>,
    /// Whether any queue holds something (so an idle flush is a single branch).
    pending: bool,
    /// Envelopes a channel may hold (`Limits::cross_shard_queue`); also the outbox size at
    /// which the shard stops reading its clients.
    capacity: usize,
}

impl Outboxes {
    pub(crate) fn new(shards: usize, capacity: usize) -> Outboxes {
        Outboxes {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            pending: false,
            capacity: capacity.max(1),
        }
    }

    /// Whether some destination is a full channel plus a channel's worth behind: the
    /// connections whose publishes go there are not read until it catches up (see
    /// `backlogged_mask`).
    pub(crate) fn backlogged(&self) -> bool {
        self.pending && self.queues.iter().any(|q| q.len() >= self.capacity)
    }

    /// The destinations that are `backlogged`, as `bit`s.
    pub(crate) fn backlogged_mask(&self) -> u8 {
        if !self.backlogged() {
            return 0;
        }
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.len() >= self.capacity)
            .fold(0, |m, (dst, _)| m | 1 << (dst % 8))
    }

    /// Whether some destination is `FAR_BEHIND` channels' worth behind: a connection that did
    /// not publish there before may still do so, so past this bound no client is read.
    pub(crate) fn far_backlogged(&self) -> bool {
        self.pending
            && self
                .queues
                .iter()
                .any(|q| q.len() >= self.capacity.saturating_mul(FAR_BEHIND))
    }

    /// Destination `dst`'s bit in a connection's `feeds` (shard numbers modulo 8: with more
    /// shards a connection may be held for a shard that shares its bit, never missed).
    pub(crate) fn bit(dst: ShardId) -> u8 {
        1 << (dst.index() % 8)
    }

    pub(crate) fn push(&mut self, dst: ShardId, envelope: Envelope) {
        if let Some(q) = self.queues.get_mut(dst.index()) {
            q.push_back(envelope);
            self.pending = true;
        }
    }

    /// Queues a routing change, joining the batch at the tail of the queue when there is one
    /// with room (the tail only, so the order with every other envelope holds).
    pub(crate) fn push_interest(&mut self, dst: ShardId, op: InterestChange) {
        let Some(q) = self.queues.get_mut(dst.index()) else {
            return;
        };
        if let Some(Envelope::Interest(batch)) = q.back_mut()
            && batch.len() < INTEREST_BATCH
        {
            batch.push(op);
            return;
        }
        // Grown as changes join (capacity 1 now): in a subscription storm each subscription's
        // fence ends the batch, so most batches hold one change, and 16 slots each (about
        // 1 KB per subscription per destination) more than doubled the storm's peak RSS.
        q.push_back(Envelope::Interest(vec![op]));
        self.pending = true;
    }

    /// Whether some destination with envelopes waiting has room in its channel now.
    pub(crate) fn has_room(&self, me: ShardId, mesh: &Mesh) -> bool {
        self.queues
            .iter()
            .enumerate()
            .any(|(dst, q)| !q.is_empty() && mesh.senders[me.index()][dst].len() < self.capacity)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.pending
    }

    /// Moves every queued envelope into the channels, whatever their bound: only at start-up,
    /// before any shard serves clients, when each shard sends the routing updates of its
    /// restored sessions and waits for the others' (a bounded flush could wait for a shard
    /// that is itself waiting).
    pub(crate) fn flush_unbounded(&mut self, me: ShardId, mesh: &Mesh) {
        for (dst, queue) in self.queues.iter_mut().enumerate() {
            let tx = &mesh.senders[me.index()][dst];
            for envelope in queue.drain(..) {
                let _ = tx.send(envelope);
            }
        }
        self.pending = false;
    }

    /// Moves queued envelopes into the channels and wakes each destination that received
    /// something. Returns false when a channel was full and envelopes remain (flush again
    /// on a later turn; the destination is draining).
    pub(crate) fn flush(&mut self, me: ShardId, mesh: &Mesh) -> bool {
        if !self.pending {
            return true;
        }
        let mut all_sent = true;
        for (dst, queue) in self.queues.iter_mut().enumerate() {
            if queue.is_empty() {
                continue;
            }
            let tx = &mesh.senders[me.index()][dst];
            // This shard is the channel's only sender: `len` can only shrink until we push, so
            // the bound holds without a per-envelope check.
            let room = self.capacity.saturating_sub(tx.len());
            let mut sent = false;
            for _ in 0..room {
                let Some(envelope) = queue.pop_front() else {
                    break;
                };
                match tx.try_send(envelope) {
                    Ok(()) => sent = true,
                    // The destination is gone (shutdown): nothing left to deliver to.
                    Err(TrySendError::Disconnected(_)) => queue.clear(),
                    // Unbounded channels are never full; kept for the next flush if one were.
                    Err(TrySendError::Full(envelope)) => {
                        queue.push_front(envelope);
                        break;
                    }
                }
            }
            if queue.is_empty() {
                // A burst's queue (a subscription storm's interest changes) is not kept.
                if queue.capacity() > self.capacity.max(SHRINK_ABOVE) {
                    *queue = VecDeque::new();
                }
            } else {
                all_sent = false;
                // Ask `dst` to wake us when it has drained; then look once more, in case it
                // drained between our `len` and the flag (its check would have missed it).
                mesh.room_flag(me.index(), dst)
                    .store(true, Ordering::SeqCst);
            }
            if sent {
                mesh.notifiers[dst].notify();
            }
        }
        self.pending = !all_sent;
        all_sent
    }
}

/// Takes envelopes from `receivers` until their weight (`Envelope::weight`) reaches
/// `budget` (round robin, one source at a time so that one flooding shard cannot starve the
/// others) and hands each to `handle`. Returns the weight taken.
pub(crate) fn drain(
    receivers: &[Receiver<Envelope>],
    budget: usize,
    mut handle: impl FnMut(Envelope),
) -> usize {
    let mut taken = 0;
    loop {
        let mut progressed = false;
        for rx in receivers {
            if taken >= budget {
                return taken;
            }
            match rx.try_recv() {
                Ok(envelope) => {
                    taken += envelope.weight();
                    handle(envelope);
                    progressed = true;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
            }
        }
        if !progressed {
            return taken;
        }
    }
}

/// Whether any receiver holds an envelope.
pub(crate) fn any_pending(receivers: &[Receiver<Envelope>]) -> bool {
    receivers.iter().any(|rx| !rx.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::ids::{ConnId, ConnKey};
    use super::*;

    fn fence_done(n: u32) -> Envelope {
        Envelope::FenceDone {
            hold: HoldKey {
                conn: ConnKey::new(ConnId::from_raw(n), 0),
                id: 0,
            },
        }
    }

    /// A two-shard mesh, its receivers and the two shard ids.
    fn two_shards() -> (Mesh, Vec<Vec<Receiver<Envelope>>>, ShardId, ShardId) {
        let (mesh, receivers) = Mesh::new(2);
        let (a, b) = (
            ShardId::new(0).expect("shard"),
            ShardId::new(1).expect("shard"),
        );
        (mesh, receivers, a, b)
    }

    #[test]
    fn channels_are_bounded_and_the_outbox_keeps_the_rest() {
        let (mesh, receivers, a, b) = two_shards();
        const CAPACITY: usize = 1000;
        let mut out = Outboxes::new(2, CAPACITY);
        for n in 0..CAPACITY + 5 {
            out.push(b, fence_done(n as u32));
        }
        assert!(
            !out.flush(a, &mesh),
            "the channel is full: 5 envelopes wait"
        );
        assert!(out.is_pending());
        assert_eq!(receivers[1][0].len(), CAPACITY);
        assert_eq!(drain(&receivers[1], 10, |_| {}), 10);
        assert!(out.flush(a, &mesh));
        assert!(!out.is_pending());
        assert_eq!(receivers[1][0].len(), CAPACITY - 5);
        // FIFO across the outbox and the channel.
        let mut next = 10;
        drain(&receivers[1], usize::MAX, |e| match e {
            Envelope::FenceDone { hold } => {
                assert_eq!(hold.conn, ConnKey::new(ConnId::from_raw(next), 0));
                next += 1;
            }
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(next as usize, CAPACITY + 5);
    }

    /// An outbox counts as backlogged once it holds a channel's worth beyond a full channel,
    /// and stops counting once a flush moves it below that.
    #[test]
    fn backlogged_once_a_channel_worth_waits() {
        let (mesh, receivers, a, b) = two_shards();
        let mut out = Outboxes::new(2, 4);
        for n in 0..7 {
            out.push(b, fence_done(n));
        }
        assert!(out.backlogged(), "7 queued, 4 allowed: not yet flushed");
        assert!(!out.flush(a, &mesh));
        assert!(!out.backlogged(), "4 in the channel, 3 wait");
        for n in 7..8 {
            out.push(b, fence_done(n));
        }
        assert!(out.backlogged(), "4 in the channel, 4 wait");
        assert_eq!(drain(&receivers[1], 4, |_| {}), 4);
        assert!(out.flush(a, &mesh));
        assert!(!out.backlogged());
        assert!(!out.is_pending());
    }
}
