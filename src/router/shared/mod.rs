//! Shared-subscription groups `$share/{group}/{filter}` [MQTT-4.8.2] and the choice of the
//! member that receives a message (`ShareStrategy`).
//!
//! Owns one replica of the group membership; every shard holds one and applies the same
//! `ShareOp`s in the order its control channels deliver them. The publishing shard chooses
//! exactly one member per matching group and sends the message to that member's shard only.
//!
//! Members are kept sorted by (shard, subscriber): replicas that applied the same joins and
//! leaves list them in the same order whatever order the ops arrived in, so `hash_client_id`,
//! `hash_topic` and `sticky` choose the same member whichever shard picks. The round-robin
//! cursor is per replica (no coordination on the publish path) and starts at the replica's
//! shard index, so publishers on different shards do not all begin with the same member;
//! each shard still cycles through every member, so the group's load is spread over all of
//! them, on every shard. (The earlier default preferred a member on the publishing shard:
//! with 3 members on 3 shards and one publisher, 60 messages went 60/0/0.)
//!
//! `least_loaded` needs the state of each member's outbound window, which lives with its
//! session on its home shard, while the pick happens on the publisher's shard. The member's
//! shard replicates transitions as `ShareOp::Load`, on the same channels as joins and
//! leaves, with hysteresis (see `Session::outbound_load`): "full" once its inflight window
//! is full or messages wait in its queue (or it is offline), "room" again only once the
//! window is at most half full with nothing queued. A member at its limit thus costs at most
//! two broadcasts per half window of acknowledgements, not one per message, and the publish
//! path pays one set lookup per candidate only while some member is full. The flag is a
//! hint: a pick made before a "full" arrives is queued by the member's session like any
//! delivery. The alternative, having the member's shard pass a message on when its member
//! is full, was rejected: it adds a hop to every message of a busy group, can bounce a
//! message between shards whose members are all busy, and reorders a publisher's messages.
//!
//! The strategies themselves are `strategy.rs`. `pick_in` chooses within one named group,
//! for a QoS 1/2 message handed back to its group because the member it went to is gone
//! (its session ended with the message queued or unacknowledged: `shard/share.rs`); the
//! departed member's `Leave` is applied before, so it is never chosen again.
//!
//! Independent of the non-shared trie: `$share/g/a` and `a` from one session are two
//! subscriptions, and removing one never touches the other (bad input #58).
//!
//! Must never: deliver one message to two members of one group, keep an empty group, or
//! pick a member this replica has seen leave.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use bytes::Bytes;

use super::delivery::Subscription;
use super::interest::ShardId;
use super::topic::{TopicFilter, TopicName};
use super::trie::{MatchStack, Trie};

mod strategy;

pub use strategy::ShareStrategy;
use strategy::{PickCtx, pick_hash};

/// One member of a share group: a session on a shard, with its subscription options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareMember<K> {
    pub shard: ShardId,
    pub subscriber: K,
    pub subscription: Subscription,
    /// The member's session is stored (persistent): a QoS 1/2 message it is picked for must
    /// be durable on its shard before the publisher is acknowledged.
    pub durable: bool,
}

impl<K: Copy> ShareMember<K> {
    fn key(&self) -> (ShardId, K) {
        (self.shard, self.subscriber)
    }
}

/// A membership or load change, applied identically on every shard. `filter` is the whole
/// `$share/{group}/{filter}`; a non-shared filter is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareOp<K> {
    /// Adds the member, or replaces its subscription if `(shard, subscriber)` is a member.
    Join {
        filter: TopicFilter,
        member: ShareMember<K>,
    },
    Leave {
        filter: TopicFilter,
        shard: ShardId,
        subscriber: K,
    },
    /// The session's outbound window filled up (`full`) or has room again, for
    /// `ShareStrategy::LeastLoaded`; applies to every group the session is a member of.
    Load {
        shard: ShardId,
        subscriber: K,
        full: bool,
    },
}

/// The member chosen for one matching group, and the group (its whole
/// `$share/{group}/{filter}`), so that the member's shard can hand the message back to the
/// group if the member is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharePick<K> {
    pub member: ShareMember<K>,
    pub group: Arc<TopicFilter>,
}

/// Dense index of a group in `SharedGroups::groups`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupIdx(u32);

#[derive(Debug)]
struct Group<K> {
    /// The whole `$share/{group}/{filter}`; shared with every pick (a refcount, no copy).
    filter: Arc<TopicFilter>,
    /// Sorted by `(shard, subscriber)`: the same order on every replica.
    members: Vec<ShareMember<K>>,
    /// Next index to try, taken modulo the length (round robin and the strategies that fall
    /// back to it).
    cursor: usize,
    /// `Sticky`: the member this replica sends to until it leaves.
    sticky: Option<(ShardId, K)>,
}

/// The share groups of the whole broker, as seen by one shard.
#[derive(Debug)]
pub struct SharedGroups<K> {
    /// The shard that owns this replica: its members are "local" (`LocalFirst`).
    this_shard: ShardId,
    strategy: ShareStrategy,
    /// `Random`: SplitMix64 state, seeded by the owner.
    rng: u64,
    /// Slab of groups; `None` slots are free and listed in `free`.
    groups: Vec<Option<Group<K>>>,
    free: Vec<u32>,
    /// Whole filter bytes `$share/{group}/{filter}` -> group: one group per (name, filter).
    by_filter: HashMap<Bytes, GroupIdx>,
    /// Filter part -> groups, for matching publishes. Key `GroupIdx`, no value.
    trie: Trie<u32, ()>,
    /// Scratch for `pick`: matching group slots, reused so picking does not allocate.
    matched: Vec<u32>,
    /// Members whose shard announced a full outbound window (`ShareOp::Load`). Small: only
    /// members that are behind, and only with `LeastLoaded` (other strategies never
    /// produce the op).
    full: HashSet<(ShardId, K), foldhash::fast::RandomState>,
}

impl<K: Copy + Ord + Hash> SharedGroups<K> {
    /// The replica of shard `this_shard`, choosing members by `strategy`; `seed` seeds the
    /// `Random` strategy (the router never reads a clock or an entropy source itself).
    pub fn new(this_shard: ShardId, strategy: ShareStrategy, seed: u64) -> Self {
        SharedGroups {
            this_shard,
            strategy,
            rng: seed,
            groups: Vec::new(),
            free: Vec::new(),
            by_filter: HashMap::new(),
            trie: Trie::new(),
            matched: Vec::new(),
            full: HashSet::default(),
        }
    }

    pub fn strategy(&self) -> ShareStrategy {
        self.strategy
    }

    /// Number of groups with at least one member.
    pub fn group_count(&self) -> usize {
        self.by_filter.len()
    }

    /// Whether `(shard, subscriber)` announced a full window.
    pub fn is_full(&self, shard: ShardId, subscriber: K) -> bool {
        self.full.contains(&(shard, subscriber))
    }

    /// Applies one op; returns whether anything changed (a rejoin with new options counts).
    pub fn apply(&mut self, op: &ShareOp<K>) -> bool {
        match op {
            ShareOp::Join { filter, member } if filter.is_shared() => self.join(filter, *member),
            ShareOp::Leave {
                filter,
                shard,
                subscriber,
            } if filter.is_shared() => self.leave(filter, *shard, *subscriber),
            ShareOp::Join { .. } | ShareOp::Leave { .. } => false,
            ShareOp::Load {
                shard,
                subscriber,
                full: true,
            } => self.full.insert((*shard, *subscriber)),
            ShareOp::Load {
                shard,
                subscriber,
                full: false,
            } => self.full.remove(&(*shard, *subscriber)),
        }
    }

    fn join(&mut self, filter: &TopicFilter, member: ShareMember<K>) -> bool {
        let idx = match self.by_filter.get(filter.as_bytes()) {
            Some(&idx) => idx,
            None => self.new_group(filter),
        };
        let Some(group) = self.group_mut(idx) else {
            return false;
        };
        match group
            .members
            .binary_search_by_key(&member.key(), ShareMember::key)
        {
            Ok(pos) if group.members[pos] == member => false,
            Ok(pos) => {
                group.members[pos] = member;
                true
            }
            Err(pos) => {
                group.members.insert(pos, member);
                true
            }
        }
    }

    fn new_group(&mut self, filter: &TopicFilter) -> GroupIdx {
        let group = Group {
            filter: Arc::new(filter.clone()),
            members: Vec::new(),
            // Replicas start at different members (see the module doc).
            cursor: self.this_shard.index(),
            sticky: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.groups[slot as usize] = Some(group);
                slot
            }
            None => {
                self.groups.push(Some(group));
                // Groups are bounded by subscriptions, far below u32::MAX.
                u32::try_from(self.groups.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_filter
            .insert(filter.as_shared().clone(), GroupIdx(slot));
        self.trie.insert(filter, slot, ());
        GroupIdx(slot)
    }

    fn leave(&mut self, filter: &TopicFilter, shard: ShardId, subscriber: K) -> bool {
        let Some(&idx) = self.by_filter.get(filter.as_bytes()) else {
            return false;
        };
        let Some(group) = self.group_mut(idx) else {
            return false;
        };
        let key = (shard, subscriber);
        let Ok(pos) = group.members.binary_search_by_key(&key, ShareMember::key) else {
            return false;
        };
        group.members.remove(pos);
        if group.sticky == Some(key) {
            group.sticky = None;
        }
        if group.members.is_empty() {
            self.groups[idx.0 as usize] = None;
            self.free.push(idx.0);
            self.by_filter.remove(filter.as_bytes());
            self.trie.remove(filter, idx.0);
        }
        true
    }

    fn group_mut(&mut self, idx: GroupIdx) -> Option<&mut Group<K>> {
        self.groups.get_mut(idx.0 as usize).and_then(Option::as_mut)
    }

    /// Members of the group `filter` (`$share/{group}/{filter}`), in (shard, subscriber)
    /// order.
    pub fn members(&self, filter: &TopicFilter) -> Vec<ShareMember<K>> {
        self.by_filter
            .get(filter.as_bytes())
            .and_then(|idx| self.groups.get(idx.0 as usize))
            .and_then(Option::as_ref)
            .map(|g| g.members.clone())
            .unwrap_or_default()
    }

    /// Chooses one member of every group whose filter matches `topic` and appends the picks
    /// to `out` (cleared first). `publisher`: the publishing client's id, for
    /// `HashClientId`. Does not allocate once `out` and the scratch buffers have grown.
    pub fn pick(
        &mut self,
        topic: &TopicName,
        publisher: Option<&[u8]>,
        stack: &mut MatchStack,
        out: &mut Vec<SharePick<K>>,
    ) {
        out.clear();
        // Matching borrows the trie while picking mutates cursors: collect the matching
        // groups first, into a buffer kept between calls.
        let SharedGroups {
            this_shard,
            strategy,
            rng,
            trie,
            groups,
            matched,
            full,
            ..
        } = self;
        matched.clear();
        trie.match_topic(topic, stack, |idx, ()| matched.push(idx));
        if matched.is_empty() {
            return;
        }
        let mut ctx = PickCtx {
            strategy: *strategy,
            this_shard: *this_shard,
            rng,
            full,
            hash: pick_hash(*strategy, topic, publisher),
        };
        for &idx in matched.iter() {
            let Some(group) = groups.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
            if let Some(member) = group.choose(&mut ctx) {
                let group = Arc::clone(&group.filter);
                out.push(SharePick { member, group });
            }
        }
    }

    /// Chooses a member of the one group `filter` (`$share/{group}/{filter}`) for a message
    /// on `topic`, by the same strategy: for a message handed back to its group because the
    /// member it was sent to is gone. `None` when the group has no member left.
    pub fn pick_in(
        &mut self,
        filter: &TopicFilter,
        topic: &TopicName,
        publisher: Option<&[u8]>,
    ) -> Option<SharePick<K>> {
        let idx = *self.by_filter.get(filter.as_bytes())?;
        let SharedGroups {
            this_shard,
            strategy,
            rng,
            groups,
            full,
            ..
        } = self;
        let group = groups.get_mut(idx.0 as usize).and_then(Option::as_mut)?;
        let mut ctx = PickCtx {
            strategy: *strategy,
            this_shard: *this_shard,
            rng,
            full,
            hash: pick_hash(*strategy, topic, publisher),
        };
        let member = group.choose(&mut ctx)?;
        Some(SharePick {
            member,
            group: Arc::clone(&group.filter),
        })
    }
}

#[cfg(test)]
mod tests;
