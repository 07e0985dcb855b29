//! Routing as the runtime runs it: publishes out to shards, envelopes in from shards,
//! subscriptions into the local trie and the replicated indexes.
//!
//! Owns: the message flow of DESIGN.md "Routing". A publish matches this shard's replica of
//! the interest index and goes, as ONE envelope per interested shard (this one handled in
//! place, without the channel), to the shards that match their local tries and deliver once
//! per session. A retained publish is delivered the same way, and its store update goes to
//! the topic's owner shard, which applies it and passes it on to every other shard: each
//! replica applies one topic's updates in the owner's order. Shared groups: this shard picks the member (local first, else round robin) and
//! sends the message to that member's shard only. Interest and membership changes are
//! broadcast to every shard.
//!
//! Must never: send one envelope per subscriber, reorder envelopes to one shard, or deliver
//! to a client slot without checking it is the same client (generation) that subscribed.

use std::sync::Arc;

use super::core::{Core, Phase};
use super::mailbox::{Envelope, Handoff};
use super::routes::{self, SessionKey};
use crate::codec::RetainHandling;
use crate::router::delivery::Subscription as RouteSub;
use crate::router::interest::{InterestOp, ShardId};
use crate::router::shared::{ShareMember, ShareOp};
use crate::router::topic::TopicFilter;
use crate::session::{Delivery, Message, Subscription};

impl Core {
    fn other_shards(&self) -> impl Iterator<Item = ShardId> + use<> {
        let me = self.id;
        (0..self.shared.shards)
            .filter_map(|i| ShardId::new(i as u8))
            .filter(move |s| *s != me)
    }

    /// Routes a publish from a session of this shard (`publisher`) or from storage.
    pub(crate) fn route_publish(&mut self, message: Arc<Message>, publisher: Option<u32>) {
        let routes = &mut self.routes;
        let mask =
            routes
                .interest_cache
                .shards_for(&routes.interest, &message.topic, &mut routes.stack);
        let me = self.id;
        for shard in mask.iter().filter(|s| *s != me) {
            let envelope = Envelope::Publish {
                message: Arc::clone(&message),
                deliver: true,
                retain: false,
            };
            self.send_to(shard, envelope);
        }
        if message.retain {
            // The PUBACK/PUBREC waits until every shard's replica holds the message, so a
            // subscriber told "it is published" finds it wherever it subscribes.
            let fence = publisher.and_then(|slot| self.hold_for_fences(slot));
            let owner = self.retain_owner(&message);
            if owner == me {
                self.replicate_retained(&message, me, fence);
            } else {
                let envelope = Envelope::Retain {
                    message: Arc::clone(&message),
                    origin: me,
                    fence,
                };
                self.send_to(owner, envelope);
            }
        }
        if mask.contains(me) {
            self.deliver_local(&message, publisher);
        }
        self.route_shared(&message);
    }

    /// The shard that orders the retained updates of `message`'s topic.
    fn retain_owner(&self, message: &Message) -> ShardId {
        let index = super::home_shard(message.topic.as_bytes(), self.shared.shards);
        ShardId::new(index as u8).unwrap_or(self.id)
    }

    /// As the topic's owner: applies a retained update, passes it to every other shard, and
    /// fences the publisher's connection (of shard `origin`) behind it on every replica.
    fn replicate_retained(
        &mut self,
        message: &Arc<Message>,
        origin: ShardId,
        fence: Option<(u32, u32)>,
    ) {
        self.routes.retained.set(routes::retained_entry(message));
        for shard in self.other_shards() {
            let envelope = Envelope::Publish {
                message: Arc::clone(message),
                deliver: false,
                retain: true,
            };
            self.send_to(shard, envelope);
        }
        if let Some((conn, generation)) = fence {
            // Behind the update on each channel: every other shard answers `origin` once it
            // has applied it; this shard answers for itself.
            self.send_fences(origin, conn, generation, Some(self.id));
            if origin != self.id {
                self.send_to(origin, Envelope::FenceDone { conn, generation });
            }
        }
    }

    /// One member of every matching share group gets the message.
    fn route_shared(&mut self, message: &Arc<Message>) {
        let routes = &mut self.routes;
        let mut picks = std::mem::take(&mut routes.picks);
        routes
            .shared
            .pick(&message.topic, &mut routes.stack, &mut picks);
        for pick in picks.drain(..) {
            let member = pick.member;
            if member.shard == self.id {
                self.deliver_shared(member.subscriber, member.subscription, message);
            } else {
                let envelope = Envelope::SharedDeliver {
                    message: Arc::clone(message),
                    subscriber: member.subscriber,
                    subscription: member.subscription,
                };
                self.send_to(member.shard, envelope);
            }
        }
        self.routes.picks = picks;
    }

    /// Matches the local trie and delivers once per local session.
    fn deliver_local(&mut self, message: &Arc<Message>, publisher: Option<u32>) {
        let mut fanout = std::mem::take(&mut self.routes.fanout);
        fanout.collect(
            &self.routes.local,
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
            };
            self.deliver_to(d.subscriber, message, &delivery);
        }
        fanout.clear();
        self.routes.fanout = fanout;
    }

    fn deliver_shared(&mut self, key: SessionKey, sub: RouteSub, message: &Arc<Message>) {
        if self
            .clients
            .get(key.slot as usize)
            .is_none_or(|c| c.generation != key.generation)
        {
            return; // The member left after the publishing shard picked it.
        }
        let ids: &[u32] = match &sub.id {
            Some(id) => std::slice::from_ref(id),
            None => &[],
        };
        let delivery = Delivery {
            qos: sub.options.qos.min(message.qos),
            retain_as_published: sub.options.retain_as_published,
            subscription_ids: ids,
            from_retained_store: false,
        };
        self.deliver_to(key.slot, message, &delivery);
    }

    /// Hands one message to the session in client `slot`.
    pub(crate) fn deliver_to(&mut self, slot: u32, message: &Arc<Message>, delivery: &Delivery) {
        let Some(client) = self.clients.get_mut(slot as usize) else {
            return;
        };
        let conn = client.conn;
        let mut early_flush = false;
        match conn.and_then(|c| self.conns.get_mut(c as usize)) {
            Some(c) if c.phase == Phase::Open => {
                client
                    .session
                    .deliver(message, delivery, self.now_ms, &mut c.out);
                early_flush = c.out.len() >= super::io::EARLY_FLUSH_BYTES && !c.write_blocked;
            }
            _ => {
                client
                    .session
                    .deliver(message, delivery, self.now_ms, &mut self.sink);
                self.sink.clear();
            }
        }
        if let Some(c) = conn {
            if early_flush {
                self.flush_conn(c);
            } else {
                self.mark_dirty(c);
            }
        }
        self.reschedule_client(slot);
    }

    /// `Action::Subscribe`: into the trie (or the share group), interest broadcast, then
    /// retained messages per Retain Handling [MQTT-3.3.1-9..11].
    pub(crate) fn subscribe(
        &mut self,
        slot: u32,
        filter: TopicFilter,
        sub: Subscription,
        existed: bool,
    ) {
        let Some(generation) = self.clients.get(slot as usize).map(|c| c.generation) else {
            return;
        };
        let route_sub = routes::route_sub(&sub);
        if filter.is_shared() {
            let member = ShareMember {
                shard: self.id,
                subscriber: SessionKey { slot, generation },
                subscription: route_sub,
            };
            self.broadcast_share(ShareOp::Join { filter, member });
            // SUBACK only once every shard can pick this member.
            self.fence_client(slot);
            return; // No retained messages for shared subscriptions [MQTT-4.8.2].
        }
        let inserted = self.routes.local.insert(&filter, slot, route_sub);
        if matches!(
            inserted,
            crate::router::trie::Inserted::New {
                first_for_filter: true
            }
        ) {
            let op = InterestOp::Add {
                filter: filter.clone(),
                shard: self.id,
            };
            self.broadcast_interest(op);
        }
        // SUBACK only once every shard routes this filter here: a publish that follows it
        // (from any client, on any shard) must reach the new subscriber. Fenced for every
        // subscribe, not only the first of its filter on this shard, because an earlier
        // subscriber's broadcast may still be in flight.
        self.fence_client(slot);
        let send_retained = match sub.options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendAtSubscribeIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        if send_retained {
            self.send_retained(slot, &filter, &sub);
        }
    }

    fn send_retained(&mut self, slot: u32, filter: &TopicFilter, sub: &Subscription) {
        let mut found = Vec::new();
        let routes = &mut self.routes;
        routes.retained.for_each_matching(
            filter,
            self.now_ms,
            &mut routes.retained_stack,
            |entry| found.push(routes::retained_message(entry)),
        );
        let ids: &[u32] = match &sub.id {
            Some(id) => std::slice::from_ref(id),
            None => &[],
        };
        for message in &found {
            let delivery = Delivery {
                qos: sub.options.qos,
                retain_as_published: sub.options.retain_as_published,
                subscription_ids: ids,
                from_retained_store: true,
            };
            self.deliver_to(slot, message, &delivery);
        }
    }

    /// `Action::Unsubscribe`.
    pub(crate) fn unsubscribe(&mut self, slot: u32, filter: &TopicFilter) {
        let Some(generation) = self.clients.get(slot as usize).map(|c| c.generation) else {
            return;
        };
        self.remove_subscription(slot, SessionKey { slot, generation }, filter);
    }

    pub(crate) fn remove_subscription(&mut self, slot: u32, key: SessionKey, filter: &TopicFilter) {
        if filter.is_shared() {
            self.broadcast_share(ShareOp::Leave {
                filter: filter.clone(),
                shard: self.id,
                subscriber: key,
            });
            return;
        }
        if let Some(removed) = self.routes.local.remove(filter, slot) {
            if removed.last_for_filter {
                let op = InterestOp::Remove {
                    filter: filter.clone(),
                    shard: self.id,
                };
                self.broadcast_interest(op);
            }
        }
    }

    fn broadcast_interest(&mut self, op: InterestOp) {
        self.routes.interest.apply(&op);
        for shard in self.other_shards() {
            self.outboxes.push_interest(shard, op.clone());
        }
    }

    fn broadcast_share(&mut self, op: ShareOp<SessionKey>) {
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
            } => {
                if retain {
                    self.routes.retained.set(routes::retained_entry(&message));
                }
                if deliver {
                    self.deliver_local(&message, None);
                }
            }
            Envelope::SharedDeliver {
                message,
                subscriber,
                subscription,
            } => self.deliver_shared(subscriber, subscription, &message),
            Envelope::Interest(ops) => {
                for op in &ops {
                    self.routes.interest.apply(op);
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
            Envelope::Fence {
                origin,
                conn,
                generation,
            } => self.send_to(origin, Envelope::FenceDone { conn, generation }),
            Envelope::FenceDone { conn, generation } => self.fence_done(conn, generation),
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
            connect,
            client_id,
            assigned,
            leftover,
        } = handoff;
        let Some(id) = self.new_conn(fd, peer, Phase::Open) else {
            return;
        };
        self.attach(id, connect, client_id, assigned);
        if !leftover.is_empty() {
            if let Some(conn) = self.conns.get_mut(id as usize) {
                conn.input = Some(Box::new(leftover));
            }
            // Packets pipelined behind CONNECT.
            let _ = self.process_input(id, &[]);
        }
    }
}
