//! Shared-subscription groups `$share/{group}/{filter}` [MQTT-4.8.2].
//!
//! Owns one replica of the group membership; every shard holds one and applies the same
//! `ShareOp`s in the order its control channel delivers them. The publishing shard chooses
//! exactly one member per matching group and sends the message to that member's shard only:
//! a member on the publishing shard is preferred (no hop), round-robin among the local
//! members, else round-robin among all members. The round-robin cursors are this replica's
//! own state, so selection is deterministic per shard but not coordinated between shards.
//!
//! Independent of the non-shared trie: `$share/g/a` and `a` from one session are two
//! subscriptions, and removing one never touches the other (BAD_INPUTS #58).
//!
//! Must never: deliver one message to two members of one group, or keep an empty group.

use std::collections::HashMap;

use bytes::Bytes;

use super::delivery::Subscription;
use super::interest::ShardId;
use super::topic::{TopicFilter, TopicName};
use super::trie::{MatchStack, Trie};

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

/// A membership change, applied identically on every shard. `filter` is the whole
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
}

/// The member chosen for one matching group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharePick<K> {
    pub member: ShareMember<K>,
}

/// Dense index of a group in `SharedGroups::groups`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupIdx(u32);

#[derive(Debug)]
struct Group<K> {
    /// Members on this replica's shard, in join order.
    local: Vec<ShareMember<K>>,
    /// Members on other shards, in join order.
    remote: Vec<ShareMember<K>>,
    /// Next index to try in `local` / `remote`; taken modulo the length.
    local_cursor: usize,
    remote_cursor: usize,
}

/// The share groups of the whole broker, as seen by one shard.
#[derive(Debug)]
pub struct SharedGroups<K> {
    /// The shard that owns this replica: its members are "local".
    this_shard: ShardId,
    /// Slab of groups; `None` slots are free and listed in `free`.
    groups: Vec<Option<Group<K>>>,
    free: Vec<u32>,
    /// Whole filter bytes `$share/{group}/{filter}` -> group: one group per (name, filter).
    by_filter: HashMap<Bytes, GroupIdx>,
    /// Filter part -> groups, for matching publishes. Key `GroupIdx`, no value.
    trie: Trie<u32, ()>,
    /// Scratch for `pick`: matching group slots, reused so picking does not allocate.
    matched: Vec<u32>,
}

impl<K: Copy + Eq> SharedGroups<K> {
    pub fn new(this_shard: ShardId) -> Self {
        SharedGroups {
            this_shard,
            groups: Vec::new(),
            free: Vec::new(),
            by_filter: HashMap::new(),
            trie: Trie::new(),
            matched: Vec::new(),
        }
    }

    /// Number of groups with at least one member.
    pub fn group_count(&self) -> usize {
        self.by_filter.len()
    }

    /// Applies one op; returns whether membership changed (a rejoin with new options counts).
    pub fn apply(&mut self, op: &ShareOp<K>) -> bool {
        match op {
            ShareOp::Join { filter, member } if filter.is_shared() => self.join(filter, *member),
            ShareOp::Leave {
                filter,
                shard,
                subscriber,
            } if filter.is_shared() => self.leave(filter, *shard, *subscriber),
            ShareOp::Join { .. } | ShareOp::Leave { .. } => false,
        }
    }

    fn join(&mut self, filter: &TopicFilter, member: ShareMember<K>) -> bool {
        let idx = match self.by_filter.get(filter.as_bytes()) {
            Some(&idx) => idx,
            None => self.new_group(filter),
        };
        let this_shard = self.this_shard;
        let Some(group) = self.group_mut(idx) else {
            return false;
        };
        let list = if member.shard == this_shard {
            &mut group.local
        } else {
            &mut group.remote
        };
        let same =
            |m: &ShareMember<K>| m.shard == member.shard && m.subscriber == member.subscriber;
        match list.iter_mut().find(|m| same(m)) {
            Some(existing) if *existing == member => false,
            Some(existing) => {
                *existing = member;
                true
            }
            None => {
                list.push(member);
                true
            }
        }
    }

    fn new_group(&mut self, filter: &TopicFilter) -> GroupIdx {
        let group = Group {
            local: Vec::new(),
            remote: Vec::new(),
            local_cursor: 0,
            remote_cursor: 0,
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
        let this_shard = self.this_shard;
        let Some(group) = self.group_mut(idx) else {
            return false;
        };
        let list = if shard == this_shard {
            &mut group.local
        } else {
            &mut group.remote
        };
        let Some(pos) = list
            .iter()
            .position(|m| m.shard == shard && m.subscriber == subscriber)
        else {
            return false;
        };
        // `remove`, not `swap_remove`: keeps join order, so round-robin stays fair.
        list.remove(pos);
        if group.local.is_empty() && group.remote.is_empty() {
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

    /// Members of the group `filter` (`$share/{group}/{filter}`): local ones first.
    pub fn members(&self, filter: &TopicFilter) -> Vec<ShareMember<K>> {
        let group = self
            .by_filter
            .get(filter.as_bytes())
            .and_then(|idx| self.groups.get(idx.0 as usize))
            .and_then(Option::as_ref);
        group
            .map(|g| g.local.iter().chain(&g.remote).copied().collect())
            .unwrap_or_default()
    }

    /// Chooses one member of every group whose filter matches `topic` and appends the picks
    /// to `out` (cleared first). Advances the chosen group's round-robin cursor.
    pub fn pick(&mut self, topic: &TopicName, stack: &mut MatchStack, out: &mut Vec<SharePick<K>>) {
        out.clear();
        // Matching borrows the trie while picking mutates cursors: collect the matching
        // groups first, into a buffer kept between calls.
        let SharedGroups {
            trie,
            groups,
            matched,
            ..
        } = self;
        matched.clear();
        trie.match_topic(topic, stack, |idx, ()| matched.push(idx));
        for &idx in matched.iter() {
            let Some(group) = groups.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
            if let Some(member) = group.next_member() {
                out.push(SharePick { member });
            }
        }
    }
}

impl<K: Copy> Group<K> {
    /// Round-robin over local members if any, else over remote members.
    fn next_member(&mut self) -> Option<ShareMember<K>> {
        let (list, cursor) = if self.local.is_empty() {
            (&self.remote, &mut self.remote_cursor)
        } else {
            (&self.local, &mut self.local_cursor)
        };
        let member = *list.get(*cursor % list.len().max(1))?;
        *cursor = (*cursor % list.len()) + 1;
        Some(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::model::QoS;

    fn shard(i: u8) -> ShardId {
        ShardId::new(i).expect("valid shard")
    }
    fn member(s: u8, k: u32) -> ShareMember<u32> {
        ShareMember {
            shard: shard(s),
            subscriber: k,
            subscription: Subscription::default(),
            durable: false,
        }
    }
    fn join(f: &'static str, s: u8, k: u32) -> ShareOp<u32> {
        ShareOp::Join {
            filter: TopicFilter::from_static(f),
            member: member(s, k),
        }
    }
    fn leave(f: &'static str, s: u8, k: u32) -> ShareOp<u32> {
        ShareOp::Leave {
            filter: TopicFilter::from_static(f),
            shard: shard(s),
            subscriber: k,
        }
    }
    fn picks(g: &mut SharedGroups<u32>, topic: &'static str, n: usize) -> Vec<Vec<(usize, u32)>> {
        let mut stack = MatchStack::default();
        let mut out = Vec::new();
        (0..n)
            .map(|_| {
                g.pick(&TopicName::from_static(topic), &mut stack, &mut out);
                let mut v: Vec<_> = out
                    .iter()
                    .map(|p| (p.member.shard.index(), p.member.subscriber))
                    .collect();
                v.sort_unstable();
                v
            })
            .collect()
    }

    #[test]
    fn prefers_local_members_round_robin() {
        let mut g = SharedGroups::new(shard(0));
        for op in [
            join("$share/g/a/+", 1, 10),
            join("$share/g/a/+", 0, 1),
            join("$share/g/a/+", 0, 2),
        ] {
            assert!(g.apply(&op));
        }
        assert_eq!(picks(&mut g, "a/x", 3), [[(0, 1)], [(0, 2)], [(0, 1)]]);
        // Another shard's replica has no local member: round-robin over all remote ones.
        let mut other = SharedGroups::new(shard(2));
        for op in [
            join("$share/g/a/+", 1, 10),
            join("$share/g/a/+", 0, 1),
            join("$share/g/a/+", 0, 2),
        ] {
            other.apply(&op);
        }
        assert_eq!(
            picks(&mut other, "a/x", 4),
            [[(1, 10)], [(0, 1)], [(0, 2)], [(1, 10)]]
        );
    }

    #[test]
    fn one_pick_per_matching_group() {
        let mut g = SharedGroups::new(shard(0));
        g.apply(&join("$share/g1/a/#", 1, 1));
        g.apply(&join("$share/g2/a/#", 1, 2));
        g.apply(&join("$share/g1/a/b", 1, 3)); // same name, other filter: another group
        g.apply(&join("$share/g1/#", 1, 4));
        assert_eq!(picks(&mut g, "a/b", 1), [[(1, 1), (1, 2), (1, 3), (1, 4)]]);
        assert_eq!(picks(&mut g, "$SYS/x", 1), [Vec::<(usize, u32)>::new()]);
        assert_eq!(g.group_count(), 4);
    }

    #[test]
    fn leave_and_rejoin() {
        let mut g = SharedGroups::new(shard(0));
        assert!(g.apply(&join("$share/g/t", 1, 1)));
        assert!(!g.apply(&join("$share/g/t", 1, 1)));
        let mut updated = member(1, 1);
        updated.subscription.options.qos = QoS::AtLeastOnce;
        let rejoin = ShareOp::Join {
            filter: TopicFilter::from_static("$share/g/t"),
            member: updated,
        };
        assert!(g.apply(&rejoin));
        assert_eq!(
            g.members(&TopicFilter::from_static("$share/g/t")),
            [updated]
        );
        assert!(g.apply(&join("$share/g/t", 0, 2)));
        assert!(g.apply(&leave("$share/g/t", 0, 2)));
        assert!(!g.apply(&leave("$share/g/t", 0, 2)));
        assert_eq!(picks(&mut g, "t", 2), [[(1, 1)], [(1, 1)]]);
        assert!(g.apply(&leave("$share/g/t", 1, 1)));
        assert_eq!(g.group_count(), 0);
        assert_eq!(g.trie.node_count(), 1);
        assert_eq!(picks(&mut g, "t", 1), [Vec::<(usize, u32)>::new()]);
    }

    #[test]
    fn shared_and_plain_subscriptions_are_independent() {
        // BAD_INPUTS #58: `$share/sharename/test` + `test`, then UNSUB `test`.
        use crate::router::delivery::SubscriptionTrie;
        let mut plain: SubscriptionTrie<u32> = SubscriptionTrie::new();
        let mut g = SharedGroups::new(shard(0));
        plain.insert(
            &TopicFilter::from_static("test"),
            1,
            Subscription::default(),
        );
        g.apply(&join("$share/sharename/test", 0, 1));
        assert!(plain.remove(&TopicFilter::from_static("test"), 1).is_some());
        assert_eq!(plain.node_count(), 1);
        assert_eq!(picks(&mut g, "test", 1), [[(0, 1)]]);
        // A plain filter in a ShareOp is ignored, not mistaken for a group.
        assert!(!g.apply(&join("test", 0, 1)));
        assert!(g.apply(&leave("$share/sharename/test", 0, 1)));
        assert_eq!(g.group_count(), 0);
    }

    #[test]
    fn cursor_survives_members_leaving() {
        let mut g = SharedGroups::new(shard(0));
        for k in 1..=3 {
            g.apply(&join("$share/g/t", 1, k));
        }
        assert_eq!(picks(&mut g, "t", 3), [[(1, 1)], [(1, 2)], [(1, 3)]]);
        g.apply(&leave("$share/g/t", 1, 3));
        g.apply(&leave("$share/g/t", 1, 2));
        assert_eq!(picks(&mut g, "t", 2), [[(1, 1)], [(1, 1)]]);
    }
}
