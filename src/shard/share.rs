//! Shared subscriptions as the runtime runs them, on the member's side:
//! - delivering a message the publishing shard picked a member of this shard for (the pick
//!   itself is `route.rs::route_shared`, over this shard's replica of the groups,
//!   `router::shared`, whose module doc explains the strategies);
//! - handing a QoS 1/2 message back to its group when the member it was picked for is gone
//!   (its session ended with the message queued or unacknowledged, or between the pick and
//!   the delivery) or cannot queue it (`MAX_SHARE_HANDOVERS`);
//! - telling the other shards when a member's outbound window fills up or has room again
//!   (`least_loaded`).
//!
//! Handing back needs to know which of a session's messages came through which group: each
//! shared delivery carries its group (`Delivery::share_group`, an `Arc` shared with the
//! replica's group, so no copy), the session keeps it with the queued or inflight QoS 1/2
//! message (`QueuedMessage::share_group`), and when the session ends it emits
//! `Action::ReturnToGroup` for each, after `Ended` (which takes it out of its groups).
//!
//! Why a member with a full queue hands messages on: a publisher is acknowledged once its
//! message is routed, and a delivery to a member on another shard (half of them with round
//! robin on 2 shards) does not slow the publishing shard down the way an in-place delivery
//! does, so under overload members' windows and queues fill and further picks for them were
//! dropped (`dropped_queue_full`). `ringmq-bench shared --publishers 8 --subscribers 4
//! --qos 1`, 2 shards, 3 s: 120k-1.35M messages lost per run without handing on; with it 0,
//! 0 and 578 on a quiet machine, still 2.6k-270k while other jobs kept the 2 cores busy
//! (`local_first` delivers in place and lost none; `least_loaded` lost 10k-45k).
//!
//! Owns: `Client::share_load`, what this shard last announced about each member's window.
//! Announcements are `ShareOp::Load` broadcasts, made only with `least_loaded` and only on
//! a change of the session's `outbound_load` past its hysteresis band, so a member pays at
//! most two per half window of acknowledgements.
//!
//! Must never: announce anything for a session that is no share member, or leave a member
//! marked full in the replicas after its session ended.

use std::sync::Arc;

use super::core::Core;
use super::event_loop::Lifecycle;
use super::ids::{ClientSlot, SessionKey};
use super::mailbox::Envelope;
use crate::codec::QoS;
use crate::router::delivery::Subscription;
use crate::router::shared::{ShareOp, ShareStrategy};
use crate::router::topic::TopicFilter;
use crate::session::{Delivery, Message, OutboundLoad};

/// What this shard last announced about a client's outbound window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShareLoad {
    /// The client never joined a share group: nothing to announce.
    NotMember,
    /// A member with room (also the state every replica assumes for a new member).
    Room,
    /// A member announced full.
    Full,
}

/// How many times a shared QoS 1/2 message is handed on when the member it reaches cannot
/// queue it (its window is full and its queue at `max_queued_messages`/`max_queued_bytes`),
/// before the member it then reaches queues it over its limits (up to twice them, see
/// `Session::enqueue`; the publisher was acknowledged). Three: enough to get past one
/// or two members that are behind in a group (the strategy picks another one each time);
/// few enough that a group whose members are all full does not pass a message around
/// (each pass is an envelope to another shard).
pub(crate) const MAX_SHARE_HANDOVERS: u8 = 3;

impl Core {
    /// A message the publishing shard picked the session `key` for, as a member of `group`
    /// with subscription `sub`; `hops`: how often it was handed on already. A member that
    /// is gone by now (its session ended after the pick) hands a QoS 1/2 message back to
    /// the group, and so does a member whose queue is full, up to `MAX_SHARE_HANDOVERS`
    /// times, rather than drop it.
    pub(crate) fn deliver_shared(
        &mut self,
        key: SessionKey,
        sub: Subscription,
        group: &Arc<TopicFilter>,
        message: &Arc<Message>,
        hops: u8,
    ) {
        let qos = sub.options.qos.min(message.qos);
        let member = self.clients.live(key);
        let Some(member) = member else {
            if qos != QoS::AtMostOnce {
                self.return_to_group(group, message, hops);
            } else {
                self.stats.dropped_member_gone += 1; // The group misses this one.
            }
            return;
        };
        if hops < MAX_SHARE_HANDOVERS && member.session.queue_would_refuse(qos, message) {
            self.return_to_group(group, message, hops + 1);
            return;
        }
        let ids: &[u32] = match &sub.id {
            Some(id) => std::slice::from_ref(id),
            None => &[],
        };
        let delivery = Delivery {
            qos,
            retain_as_published: sub.options.retain_as_published,
            subscription_ids: ids,
            from_retained_store: false,
            share_group: Some(group),
        };
        self.deliver_to(key.slot, message, &delivery);
    }

    /// A QoS 1/2 message of share group `group` that its member cannot take goes to another
    /// member, chosen by the group's strategy on this shard's replica: the member is gone
    /// (its session ended, see `Action::ReturnToGroup`; the replica no longer lists it,
    /// its `Leave` was applied here first), or its queue is full (`hops` > 0; the strategy
    /// moves on to another member). Dropped when no member is left, and while the broker
    /// stops (every member is going).
    pub(crate) fn return_to_group(
        &mut self,
        group: &Arc<TopicFilter>,
        message: &Arc<Message>,
        hops: u8,
    ) {
        if self.lifecycle != Lifecycle::Running {
            return;
        }
        let publisher = message.origin.as_ref().map(|c| c.as_str().as_bytes());
        let Some(pick) = self.routes.shared.pick_in(group, &message.topic, publisher) else {
            self.stats.dropped_member_gone += 1; // No member left to take it.
            return;
        };
        let member = pick.member;
        if member.shard == self.id {
            let (key, sub) = (member.subscriber, member.subscription);
            self.deliver_shared(key, sub, &pick.group, message, hops);
            return;
        }
        // No acknowledgement waits for it: its publisher was answered when it was routed.
        let envelope = Envelope::SharedDeliver {
            message: Arc::clone(message),
            subscriber: member.subscriber,
            subscription: member.subscription,
            group: pick.group,
            hops,
            ack: None,
        };
        self.send_to(member.shard, envelope);
    }

    /// Client `slot` subscribed to a share group: from now on its window state counts.
    pub(crate) fn share_member_joined(&mut self, slot: ClientSlot) {
        if let Some(client) = self.clients.get_mut(slot)
            && client.share_load == ShareLoad::NotMember
        {
            client.share_load = ShareLoad::Room;
        }
    }

    /// After a call on client `slot`'s session (a delivery, a packet from the client, a
    /// connect or a lost connection): with `least_loaded`, tells every shard when the
    /// member's window crossed into full or back to room.
    pub(crate) fn note_share_load(&mut self, slot: ClientSlot) {
        if self.routes.shared.strategy() != ShareStrategy::LeastLoaded {
            return;
        }
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        let next = match (client.share_load, client.session.outbound_load()) {
            (ShareLoad::NotMember, _) => return,
            (_, OutboundLoad::Full) => ShareLoad::Full,
            (_, OutboundLoad::Spare) => ShareLoad::Room,
            (last, OutboundLoad::Between) => last,
        };
        if next == client.share_load {
            return;
        }
        client.share_load = next;
        let op = ShareOp::Load {
            shard: self.id,
            subscriber: SessionKey {
                slot,
                generation: client.generation,
            },
            full: next == ShareLoad::Full,
        };
        self.broadcast_share(op);
    }

    /// The session `key` ended (its share groups were left): a member announced full is
    /// cleared from every replica's set of full members.
    pub(crate) fn share_member_ended(&mut self, key: SessionKey, load: ShareLoad) {
        if load == ShareLoad::Full {
            self.broadcast_share(ShareOp::Load {
                shard: self.id,
                subscriber: key,
                full: false,
            });
        }
    }
}
