//! Routing as the runtime runs it: publishes out to shards, envelopes in from shards,
//! subscriptions into the local trie and the replicated indexes.
//!
//! Owns: the message flow of the README's "Architecture". A publish matches this shard's
//! replica of the interest index and goes, as ONE envelope per interested shard (this one
//! handled in place, without the channel), to the shards that match their local tries and
//! deliver once per matching subscription (or per session, `OverlapMode::Single`). A retained publish is delivered the same way, and its store
//! update goes to the topic's owner shard, which applies and stores it and passes it on to
//! every other shard: each replica applies one topic's updates in the owner's order. Shared
//! groups: this shard picks the member and sends the message to that member's shard only.
//! Interest and membership changes are broadcast to every shard.
//!
//! Durability: a QoS 1/2 publish from a client is acknowledged only once every shard that
//! stored something for it (a persistent subscriber's copy, the retained store) has
//! committed. This shard's part waits for its own ticket; another shard's part is an
//! `AckRequest` it answers after its commit. Only shards in the durable interest index
//! (a persistent QoS 1/2 subscriber matches) are asked, so traffic that needs no storage
//! never waits.
//!
//! Must never: send one envelope per subscriber, reorder envelopes to one shard, or deliver
//! to a client slot without checking it is the same client (generation) that subscribed.

use std::sync::Arc;

use super::core::{Core, Phase};
use super::hold::HoldKey;
use super::ids::{ClientSlot, ConnKey, SessionKey};
use super::mailbox::{AckRequest, Envelope, Handoff, InterestChange};
use super::routes;
use crate::codec::{QoS, RetainHandling};
use crate::router::interest::{ShardId, ShardMask};
use crate::router::shared::{ShareMember, ShareOp};
use crate::router::topic::TopicFilter;
use crate::session::{Delivery, Message, Subscription};

/// The client whose publish is being routed and where its output for this publish
/// begins: holds for the acknowledgement start there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Publisher {
    pub(crate) slot: ClientSlot,
    pub(crate) hold_from: Option<usize>,
    /// The publish awaits an acknowledgement (QoS 1/2 from the client).
    pub(crate) acked: bool,
    /// The publisher's session is stored: a QoS 2 publish that other shards store records
    /// its fan-out (see `Core::fanout_part`).
    pub(crate) persistent: bool,
}

impl Core {
    fn other_shards(&self) -> impl Iterator<Item = ShardId> + use<> {
        let me = self.id;
        ShardId::all(self.shared.shards).filter(move |s| *s != me)
    }

    /// The shards where some subscription matches `message`. A broker of one shard keeps no
    /// interest index (its trie answers the same question when it delivers), so a
    /// subscription there costs no replica: the mask is this shard.
    pub(crate) fn interested_shards(&mut self, message: &Message) -> ShardMask {
        if self.shared.shards == 1 {
            let mut mask = ShardMask::EMPTY;
            mask.insert(self.id);
            return mask;
        }
        // The replica holds the other shards' bits; this shard's comes from its local trie
        // (cached with them: a change to it bumps the replica's generation).
        let me = self.id;
        let routes = &mut self.routes;
        let local = &routes.levels;
        routes.interest_cache.shards_for_with(
            &routes.interest,
            &message.topic,
            &mut routes.stack,
            |topic, stack| {
                let mut mask = ShardMask::EMPTY;
                local.match_topic(topic, stack, |_, _| mask.insert(me));
                mask
            },
        )
    }

    /// The shards where a persistent session subscribed at QoS 1/2 matches `message`
    /// (empty when nothing is stored or the message is QoS 0).
    fn durable_shards(&mut self, message: &Message) -> ShardMask {
        if !self.persist.enabled() || message.qos == QoS::AtMostOnce {
            return ShardMask::EMPTY;
        }
        let routes = &mut self.routes;
        routes
            .durable_cache
            .shards_for(&routes.durable, &message.topic, &mut routes.stack)
    }

    /// Whether a client's publish must be refused rather than routed: it needs storage
    /// (a persistent subscriber or the retained store) and the store is failing.
    pub(crate) fn needs_unavailable_store(&mut self, message: &Message) -> bool {
        self.persist.enabled()
            && !self.persist.healthy()
            && (message.retain || !self.durable_shards(message).is_empty())
    }

    /// Routes a publish from a session of this shard (`publisher`) or from the broker. The
    /// publisher's acknowledgement, already written when it waits for one, is held for
    /// whatever must be durable first.
    pub(crate) fn route_publish(
        &mut self,
        mut message: Arc<Message>,
        publisher: Option<Publisher>,
    ) {
        let persisting = self.persist.enabled() && message.qos != QoS::AtMostOnce;
        let mask = self.interested_shards(&message);
        let dmask = self.durable_shards(&message);
        let acked = publisher.filter(|p| p.acked);
        if persisting && message.store_id == 0 {
            Arc::make_mut(&mut message).store_id = self.persist.new_msg_id();
        }
        let me = self.id;
        let before = self.persist.produced();
        // The publisher's acknowledgement waits for every other shard that stores a copy.
        let remote_durable = dmask.iter().filter(|s| *s != me).count() as u32;
        let ack_hold = match acked {
            Some(p) if remote_durable > 0 && self.persist.waits() => {
                self.hold_for_answers(p, remote_durable)
            }
            Some(_) | None => None,
        };
        let fanout = acked.is_some_and(|p| p.persistent) && message.qos == QoS::ExactlyOnce;
        for shard in mask.iter().filter(|s| *s != me) {
            let ack = match ack_hold {
                Some(hold) if dmask.contains(shard) => Some(AckRequest {
                    origin: me,
                    hold,
                    fanout: fanout && self.fanout_part(&message, shard),
                }),
                Some(_) | None => None,
            };
            let envelope = Envelope::Publish {
                message: Arc::clone(&message),
                deliver: true,
                retain: false,
                ack,
            };
            self.send_to(shard, envelope);
        }
        if message.retain {
            self.route_retained(&message, publisher);
        }
        if mask.contains(me) {
            self.deliver_local(&message, publisher.map(|p| p.slot));
        }
        self.route_shared(&message, acked);
        let stored_here = self.persist.produced() > before;
        if let Some(p) = acked
            && stored_here
            && let Some(offset) = p.hold_from
        {
            self.hold_client_for_commit(p.slot, offset);
        }
    }

    /// Records, in this shard's batch, that `shard` has yet to store its part of QoS 2
    /// `message` (returns true). The publisher's inbound id commits with this record, and
    /// `shard` removes it in the same batch as its own copies: if a crash falls between the
    /// two commits, recovery finishes the fan-out from the record, so the message is neither
    /// lost (the publisher's resend is a duplicate by then) nor stored twice.
    fn fanout_part(&mut self, message: &Message, shard: ShardId) -> bool {
        let id = self.put_message(message);
        self.persist_fanout(id, shard, true);
        true
    }

    /// Holds publisher `p`'s output for `n` answers from other shards.
    fn hold_for_answers(&mut self, p: Publisher, n: u32) -> Option<HoldKey> {
        let offset = p.hold_from?;
        let conn = self.clients.get(p.slot).and_then(|c| c.conn)?;
        let key = self.hold_at(conn, offset)?;
        self.add_remote(key, n);
        Some(key)
    }

    /// A retained publish: its store update goes to the topic's owner. The publisher's
    /// output waits until every replica holds it (and the owner stored it), so a subscriber
    /// told "it is published" finds it wherever it subscribes, even after a crash.
    fn route_retained(&mut self, message: &Arc<Message>, publisher: Option<Publisher>) {
        let me = self.id;
        let fence = publisher.and_then(|p| {
            let offset = p.hold_from?;
            self.hold_client_for_remote(p.slot, offset)
        });
        let owner = self.retain_owner(message);
        if owner == me {
            let before = self.persist.produced();
            self.replicate_retained(message, me, fence);
            if self.persist.produced() > before
                && let Some(p) = publisher
                && let Some(offset) = p.hold_from
            {
                self.hold_client_for_commit(p.slot, offset);
            }
        } else {
            // This shard's replica holds it at once (a subscriber here right after a
            // delivery finds it); the owner's update, in the owner's order, follows and
            // settles concurrent updates from other shards the same way on every replica.
            self.routes
                .levels
                .retained_mut()
                .set(routes::retained_entry(message));
            let envelope = Envelope::Retain {
                message: Arc::clone(message),
                origin: me,
                fence,
            };
            self.send_to(owner, envelope);
        }
    }

    /// The shard that orders (and stores) the retained updates of `message`'s topic.
    fn retain_owner(&self, message: &Message) -> ShardId {
        super::home_shard(message.topic.as_bytes(), self.shared.shards)
    }

    /// As the topic's owner: applies and stores a retained update, passes it to every other
    /// shard, and fences the publisher's output (of shard `origin`) behind it on every
    /// replica; the owner's own answer waits for its commit.
    fn replicate_retained(
        &mut self,
        message: &Arc<Message>,
        origin: ShardId,
        fence: Option<HoldKey>,
    ) {
        self.routes
            .levels
            .retained_mut()
            .set(routes::retained_entry(message));
        let before = self.persist.produced();
        if self.persist.enabled() {
            self.persist_retained(message);
        }
        for shard in self.other_shards() {
            let envelope = Envelope::Publish {
                message: Arc::clone(message),
                deliver: false,
                retain: true,
                ack: None,
            };
            self.send_to(shard, envelope);
        }
        if let Some(hold) = fence {
            // Behind the update on each channel: every other shard answers `origin` once it
            // has applied it; this shard answers for itself.
            self.send_fences(origin, hold, Some(self.id));
            if origin != self.id {
                self.answer_after_commit(origin, hold, before);
            }
        }
    }

    /// One member of every matching share group gets the message; a member on another shard
    /// that stores it answers before the publisher is acknowledged.
    fn route_shared(&mut self, message: &Arc<Message>, acked: Option<Publisher>) {
        let routes = &mut self.routes;
        let mut picks = std::mem::take(&mut routes.picks);
        let publisher = message.origin.as_ref().map(|c| c.as_str().as_bytes());
        routes
            .shared
            .pick(&message.topic, publisher, &mut routes.stack, &mut picks);
        for pick in picks.drain(..) {
            let member = pick.member;
            if member.shard == self.id {
                self.deliver_shared(
                    member.subscriber,
                    member.subscription,
                    &pick.group,
                    message,
                    0,
                );
                continue;
            }
            let durable = member.durable
                && message.qos != QoS::AtMostOnce
                && member.subscription.options.qos != QoS::AtMostOnce
                && self.persist.waits();
            let ack = match acked {
                Some(p) if durable => self.hold_for_answers(p, 1).map(|hold| AckRequest {
                    origin: self.id,
                    hold,
                    fanout: p.persistent
                        && message.qos == QoS::ExactlyOnce
                        && self.fanout_part(message, member.shard),
                }),
                Some(_) | None => None,
            };
            let envelope = Envelope::SharedDeliver {
                message: Arc::clone(message),
                subscriber: member.subscriber,
                subscription: member.subscription,
                group: pick.group,
                hops: 0,
                ack,
            };
            self.send_to(member.shard, envelope);
        }
        self.routes.picks = picks;
    }

    /// Matches the local trie and delivers once per matching subscription (or once per local
    /// session with `overlapping_subscriptions = "single"`).
    fn deliver_local(&mut self, message: &Arc<Message>, publisher: Option<ClientSlot>) {
        let mut fanout = std::mem::take(&mut self.routes.fanout);
        fanout.collect(
            &self.routes.levels,
            &message.topic,
            publisher,
            message.qos,
            &mut self.routes.stack,
        );
        for d in fanout.deliveries() {
            let delivery = Delivery {
                qos: d.qos,
                retain_as_published: d.retain_as_published,
                subscription_ids: fanout.subscription_ids(d),
                from_retained_store: false,
                share_group: None,
            };
            self.deliver_to(d.subscriber, message, &delivery);
        }
        fanout.clear();
        self.routes.fanout = fanout;
    }

    /// Hands one message to the session in client `slot`.
    pub(crate) fn deliver_to(
        &mut self,
        slot: ClientSlot,
        message: &Arc<Message>,
        delivery: &Delivery,
    ) {
        if !self.may_deliver(slot, &message.topic) {
            return; // A subscription the ACL covers in part (`access.rs`).
        }
        self.stats.deliveries += 1;
        self.stats.publish_bytes_sent += message.payload.len() as u64;
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        if client.session.refuses(message, delivery, self.now_ms) {
            return; // Counted; the session and its connection are as they were.
        }
        let conn = client.conn;
        let mut actions = std::mem::take(&mut self.actions);
        let mut early_flush = false;
        let mut hold_from = None;
        match conn.and_then(|c| self.conns.get_mut(c)) {
            Some(c) if c.phase == Phase::Open => {
                hold_from = Some(c.out.len());
                client
                    .session
                    .deliver(message, delivery, self.now_ms, &mut c.out, &mut actions);
                early_flush = c.out.len() >= super::io::EARLY_FLUSH_BYTES && !c.write_blocked;
            }
            _ => {
                client.session.deliver(
                    message,
                    delivery,
                    self.now_ms,
                    &mut self.sink,
                    &mut actions,
                );
                self.sink.clear();
            }
        }
        self.apply_actions(slot, &mut actions, hold_from);
        self.actions = actions;
        if let Some(c) = conn {
            if early_flush && self.marked_conn != Some(c) {
                self.flush_conn(c);
            } else {
                self.mark_dirty(c);
            }
        }
        self.note_share_load(slot);
        self.reschedule_client(slot);
    }

    /// `Action::Subscribe`: into the trie (or the share group), interest broadcast, then
    /// retained messages per Retain Handling [MQTT-3.3.1-9..11]. `hold_from`: where the
    /// SUBACK's call began writing (it waits for the other shards to apply the change).
    pub(crate) fn subscribe(
        &mut self,
        slot: ClientSlot,
        filter: TopicFilter,
        sub: Subscription,
        existed: bool,
        hold_from: Option<usize>,
    ) {
        if self.clients.get(slot).is_none() {
            return;
        }
        let shared = filter.is_shared();
        self.route_subscription(slot, filter.clone(), sub);
        // SUBACK only once every shard routes this filter here (or can pick this member of
        // a share group): a publish that follows it (from any client, on any shard) must
        // reach the new subscriber. Fenced for every subscribe, not only the first of its
        // filter on this shard, because an earlier subscriber's broadcast may still be in
        // flight.
        if let Some(offset) = hold_from {
            self.fence_client(slot, offset);
        }
        if shared {
            return; // No retained messages for shared subscriptions [MQTT-4.8.2].
        }
        let send_retained = match sub.options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendAtSubscribeIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        if send_retained {
            self.queue_retained(slot, filter, sub);
        }
    }

    /// Puts one subscription of client `slot` into the routes: the local trie and the
    /// interest indexes (broadcast), or the share group (broadcast).
    pub(crate) fn route_subscription(
        &mut self,
        slot: ClientSlot,
        filter: TopicFilter,
        sub: Subscription,
    ) {
        let Some((generation, durable)) = self.clients.get(slot).map(|c| (c.generation, c.durable))
        else {
            return;
        };
        if filter.is_shared() {
            self.share_member_joined(slot);
            let member = ShareMember {
                shard: self.id,
                subscriber: SessionKey { slot, generation },
                subscription: sub,
                durable,
            };
            self.broadcast_share(ShareOp::Join { filter, member });
            return;
        }
        let old = self.routes.levels.get(&filter, slot).copied();
        let inserted = self.routes.levels.insert(&filter, slot, sub);
        if matches!(
            inserted,
            crate::router::trie::Inserted::New {
                first_for_filter: true
            }
        ) {
            self.broadcast_interest(false, &filter, true);
        }
        if durable {
            if old.is_some_and(|o| o.options.qos != QoS::AtMostOnce) {
                self.durable_sub_removed(&filter);
            }
            if sub.options.qos != QoS::AtMostOnce {
                self.durable_sub_added(&filter);
            }
        }
    }

    /// Recovery: a QoS 2 message whose fan-out to this shard a crash cut short goes to the
    /// sessions of this shard that match it now.
    pub(crate) fn finish_fanout(&mut self, message: &Arc<Message>) {
        self.deliver_local(message, None);
    }

    /// `Action::Unsubscribe`.
    pub(crate) fn unsubscribe(&mut self, slot: ClientSlot, filter: &TopicFilter) {
        let Some((generation, durable)) = self.clients.get(slot).map(|c| (c.generation, c.durable))
        else {
            return;
        };
        self.remove_subscription(slot, SessionKey { slot, generation }, filter, durable);
    }

    /// Takes one subscription of client `slot` out of the router; `durable`: the client's
    /// subscriptions count in the durable index.
    pub(crate) fn remove_subscription(
        &mut self,
        slot: ClientSlot,
        key: SessionKey,
        filter: &TopicFilter,
        durable: bool,
    ) {
        if filter.is_shared() {
            self.broadcast_share(ShareOp::Leave {
                filter: filter.clone(),
                shard: self.id,
                subscriber: key,
            });
            return;
        }
        if let Some(removed) = self.routes.levels.remove(filter, slot) {
            if durable && removed.value.options.qos != QoS::AtMostOnce {
                self.durable_sub_removed(filter);
            }
            if removed.last_for_filter {
                self.broadcast_interest(false, filter, false);
            }
        }
    }

    /// A persistent session subscribed to `filter` at QoS 1/2.
    pub(crate) fn durable_sub_added(&mut self, filter: &TopicFilter) {
        let count = self.routes.durable_local.entry(filter.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.broadcast_interest(true, filter, true);
        }
    }

    /// A persistent session's QoS 1/2 subscription to `filter` ended (or stopped counting).
    pub(crate) fn durable_sub_removed(&mut self, filter: &TopicFilter) {
        let Some(count) = self.routes.durable_local.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.routes.durable_local.remove(filter);
            self.broadcast_interest(true, filter, false);
        }
    }

    /// This shard's first subscriber to `filter` arrived (`add`) or its last one left:
    /// records it in this shard's replica (which decides whether a removal keeps a key
    /// another local filter shares) and sends the op to every other shard.
    fn broadcast_interest(&mut self, durable: bool, filter: &TopicFilter, add: bool) {
        let index = if durable {
            &mut self.routes.durable
        } else if self.shared.shards > 1 {
            &mut self.routes.interest
        } else {
            return; // One shard: no interest index (see `interested_shards`).
        };
        let op = if add {
            index.add_local(filter)
        } else {
            index.remove_local(filter)
        };
        let Some(op) = op else {
            return;
        };
        for shard in self.other_shards() {
            let change = InterestChange {
                durable,
                op: op.clone(),
            };
            self.outboxes.push_interest(shard, change);
        }
    }

    pub(crate) fn broadcast_share(&mut self, op: ShareOp<SessionKey>) {
        self.routes.shared.apply(&op);
        for shard in self.other_shards() {
            self.send_to(shard, Envelope::Share(op.clone()));
        }
    }

    /// Takes envelopes from the other shards, up to `budget` in weight, and handles them;
    /// then wakes the shards that wait for room in a channel to this one.
    pub(crate) fn drain_inbox(&mut self, budget: usize) -> usize {
        let inbox = std::mem::take(&mut self.inbox);
        let n = super::mailbox::drain(&inbox, budget, |envelope| self.on_envelope(envelope));
        let mesh = &self.shared.mesh;
        mesh.offer_room(self.id.index(), &inbox, self.outboxes.capacity());
        self.inbox = inbox;
        n
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Publish {
                message,
                deliver,
                retain,
                ack,
            } => {
                let before = self.persist.produced();
                if retain {
                    self.routes
                        .levels
                        .retained_mut()
                        .set(routes::retained_entry(&message));
                }
                if deliver {
                    self.deliver_local(&message, None);
                }
                if let Some(req) = ack {
                    if req.fanout {
                        self.persist_fanout(message.store_id, self.id, false);
                    }
                    self.answer_after_commit(req.origin, req.hold, before);
                }
            }
            Envelope::SharedDeliver {
                message,
                subscriber,
                subscription,
                group,
                hops,
                ack,
            } => {
                let before = self.persist.produced();
                self.deliver_shared(subscriber, subscription, &group, &message, hops);
                if let Some(req) = ack {
                    if req.fanout {
                        self.persist_fanout(message.store_id, self.id, false);
                    }
                    self.answer_after_commit(req.origin, req.hold, before);
                }
            }
            Envelope::Interest(changes) => {
                for change in &changes {
                    if change.durable {
                        self.routes.durable.apply(&change.op);
                    } else {
                        self.routes.interest.apply(&change.op);
                    }
                }
            }
            Envelope::Share(op) => {
                self.routes.shared.apply(&op);
            }
            Envelope::Retain {
                message,
                origin,
                fence,
            } => self.replicate_retained(&message, origin, fence),
            Envelope::Handoff(handoff) => self.accept_handoff(*handoff),
            Envelope::Fence { origin, hold } => self.send_to(origin, Envelope::FenceDone { hold }),
            Envelope::FenceDone { hold } => self.fence_done(hold),
            Envelope::CommitFailed { hold, disk_full } => {
                self.remote_commit_failed(hold, disk_full)
            }
            Envelope::Probe { received_at } => self.on_probe(received_at),
            Envelope::SnDatagram(forward) => self.sn_forwarded(*forward),
            Envelope::SnDropAddress { addr } => self.sn_drop_address(addr),
            Envelope::SnRouteGone { addr, epoch } => self.sn_route_gone(addr, epoch),
        }
    }

    /// A connection whose CONNECT another shard read: adopt the fd (into the poller), attach.
    fn accept_handoff(&mut self, handoff: Handoff) {
        if self.lifecycle != super::event_loop::Lifecycle::Running {
            return; // Dropping the envelope closes the fd.
        }
        let Handoff {
            fd,
            peer,
            extra,
            connect,
            client_id,
            assigned,
            leftover,
            identity,
        } = handoff;
        let Some(ConnKey { id, .. }) = self.new_conn(Some(fd), peer, Phase::Open, extra) else {
            return;
        };
        self.attach(id, connect, client_id, assigned, identity);
        if !leftover.is_empty() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.keep_input(leftover);
            }
            // Packets pipelined behind CONNECT.
            let _ = self.process_input(id, &[]);
        }
        self.ring_adopt(id);
    }
}
