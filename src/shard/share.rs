//! Shared subscriptions as the runtime runs them, on the member's side: delivering a message
//! the publishing shard picked a member of this shard for, handing QoS 1/2 messages back to
//! their group when the member they were picked for is gone (its session ended with them
//! queued or unacknowledged, or ended between the pick and the delivery), and telling the
//! other shards when a member's outbound window fills up or has room again
//! (`least_loaded`).
//!
//! Handing back needs to know which of a session's messages came through which group:
//! each shared delivery carries its group (`Delivery::share_group`, an `Arc` shared with
//! the replica's group, so no copy), the session keeps it with the queued or inflight
//! QoS 1/2 message (`QueuedMessage::share_group`), and when the session ends it emits
//! `Action::ReturnToGroup` for each, after `Ended` (which takes it out of its groups). The pick itself
//! is `route.rs` (`route_shared`) over this shard's replica of the groups
//! (`router::shared`, whose module doc explains the strategies and why the window state is
//! replicated rather than checked by the member's shard).
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
use super::mailbox::Envelope;
use super::routes::SessionKey;
use crate::codec::QoS;
use crate::router::delivery::Subscription as RouteSub;
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

impl Core {
    /// A message the publishing shard picked the session `key` for, as a member of `group`
    /// with subscription `sub`. A member that is gone by now (its session ended after the
    /// pick) hands the message back to the group.
    pub(crate) fn deliver_shared(
        &mut self,
        key: SessionKey,
        sub: RouteSub,
        group: &Arc<TopicFilter>,
        message: &Arc<Message>,
    ) {
        if self
            .clients
            .get(key.slot as usize)
            .is_none_or(|c| c.generation != key.generation)
        {
            if sub.options.qos.min(message.qos) != QoS::AtMostOnce {
                self.return_to_group(group, message);
            }
            return;
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
            share_group: Some(group),
        };
        self.deliver_to(key.slot, message, &delivery);
    }

    /// A QoS 1/2 message of share group `group` whose member is gone (its session ended, see
    /// `Action::ReturnToGroup`) goes to another member, chosen by the group's strategy on
    /// this shard's replica, which no longer lists the departed member (its `Leave` is
    /// applied here first). Dropped when no member is left, and while the broker stops
    /// (every member is going).
    pub(crate) fn return_to_group(&mut self, group: &Arc<TopicFilter>, message: &Arc<Message>) {
        if self.lifecycle != Lifecycle::Running {
            return;
        }
        let publisher = message.origin.as_ref().map(|c| c.as_str().as_bytes());
        let Some(pick) = self.routes.shared.pick_in(group, &message.topic, publisher) else {
            return;
        };
        let member = pick.member;
        if member.shard == self.id {
            self.deliver_shared(member.subscriber, member.subscription, &pick.group, message);
            return;
        }
        // No acknowledgement waits for it: its publisher was answered when it was routed.
        let envelope = Envelope::SharedDeliver {
            message: Arc::clone(message),
            subscriber: member.subscriber,
            subscription: member.subscription,
            group: pick.group,
            ack: None,
        };
        self.send_to(member.shard, envelope);
    }

    /// Client `slot` subscribed to a share group: from now on its window state counts.
    pub(crate) fn share_member_joined(&mut self, slot: u32) {
        if let Some(client) = self.clients.get_mut(slot as usize) {
            if client.share_load == ShareLoad::NotMember {
                client.share_load = ShareLoad::Room;
            }
        }
    }

    /// After a call on client `slot`'s session (a delivery, a packet from the client, a
    /// connect or a lost connection): with `least_loaded`, tells every shard when the
    /// member's window crossed into full or back to room.
    pub(crate) fn note_share_load(&mut self, slot: u32) {
        if self.routes.shared.strategy() != ShareStrategy::LeastLoaded {
            return;
        }
        let Some(client) = self.clients.get_mut(slot as usize) else {
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
