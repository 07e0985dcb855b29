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
//! Independent of the non-shared trie: `$share/g/a` and `a` from one session are two
//! subscriptions, and removing one never touches the other (BAD_INPUTS #58).
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

/// How the publishing shard chooses the member of a share group that receives a message.
/// Setting `limits.shared_subscription_strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareStrategy {
    /// Each shard cycles through all members in turn.
    #[default]
    RoundRobin,
    /// A member chosen at random (per-shard generator) for each message.
    Random,
    /// A member on the publishing shard if there is one (round robin among those: no
    /// cross-shard hop), else round robin over all. Starves remote members while a local one
    /// exists: a deliberate choice, not a default.
    LocalFirst,
    /// One member (the first in (shard, subscriber) order) until it leaves the group.
    Sticky,
    /// The member is a hash of the publisher's client id: one publisher's messages all go to
    /// one member while membership does not change. Broker-made messages: round robin.
    HashClientId,
    /// The member is a hash of the topic: one topic's messages all go to one member while
    /// membership does not change, whichever shard publishes.
    HashTopic,
    /// Round robin, skipping members whose outbound window is full while another member has
    /// room (one slow worker does not hold the group's messages).
    LeastLoaded,
}

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

/// What a pick may look at besides the group: computed once per publish.
struct PickCtx<'a, K> {
    strategy: ShareStrategy,
    this_shard: ShardId,
    rng: &'a mut u64,
    full: &'a HashSet<(ShardId, K), foldhash::fast::RandomState>,
    /// `HashClientId`: the publisher's id hashed; `HashTopic`: the topic hashed.
    hash: Option<u64>,
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

/// The hash a hashing strategy picks by; `None` for the others (and for `HashClientId`
/// without a publisher, which then falls back to round robin).
fn pick_hash(strategy: ShareStrategy, topic: &TopicName, publisher: Option<&[u8]>) -> Option<u64> {
    match strategy {
        ShareStrategy::HashClientId => publisher.map(stable_hash),
        ShareStrategy::HashTopic => Some(stable_hash(topic.as_bytes())),
        ShareStrategy::RoundRobin
        | ShareStrategy::Random
        | ShareStrategy::LocalFirst
        | ShareStrategy::Sticky
        | ShareStrategy::LeastLoaded => None,
    }
}

/// A hash that is the same on every shard (and every run): FNV-1a with a final avalanche
/// (SplitMix64's mixer), so that `hash % members` uses every bit. Not keyed: a client that
/// aims its id or topics at one member only loads that member, which the strategy allows
/// anyway.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `hash` reduced to an index below `n` (`n > 0`).
fn index_of(hash: u64, n: usize) -> usize {
    // `n` is a member count: it fits in u64, and the remainder fits back in usize.
    (hash % n as u64) as usize
}

impl<K: Copy + Ord + Hash> Group<K> {
    /// One member by `ctx.strategy`; `None` only when the group is empty.
    fn choose(&mut self, ctx: &mut PickCtx<'_, K>) -> Option<ShareMember<K>> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let i = match ctx.strategy {
            ShareStrategy::RoundRobin => self.next_round_robin(),
            ShareStrategy::Random => {
                *ctx.rng = ctx.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
                index_of(mix64(*ctx.rng), n)
            }
            ShareStrategy::LocalFirst => {
                let this = ctx.this_shard;
                self.next_where(|m| m.shard == this)
                    .unwrap_or_else(|| self.next_round_robin())
            }
            ShareStrategy::Sticky => self.sticky_index(),
            ShareStrategy::HashClientId | ShareStrategy::HashTopic => match ctx.hash {
                Some(hash) => index_of(hash, n),
                None => self.next_round_robin(),
            },
            ShareStrategy::LeastLoaded if ctx.full.is_empty() => self.next_round_robin(),
            ShareStrategy::LeastLoaded => {
                let full = ctx.full;
                self.next_where(|m| !full.contains(&m.key()))
                    .unwrap_or_else(|| self.next_round_robin())
            }
        };
        self.members.get(i).copied()
    }

    fn next_round_robin(&mut self) -> usize {
        let i = self.cursor % self.members.len();
        self.cursor = i + 1;
        i
    }

    /// The first member from the cursor on (wrapping) that satisfies `ok`; moves the cursor
    /// past it.
    fn next_where(&mut self, ok: impl Fn(&ShareMember<K>) -> bool) -> Option<usize> {
        let n = self.members.len();
        let start = self.cursor % n;
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| ok(&self.members[i]))?;
        self.cursor = i + 1;
        Some(i)
    }

    /// The sticky member's index, choosing the first member when there is none (the same
    /// one on every replica with the same members).
    fn sticky_index(&mut self) -> usize {
        if let Some(key) = self.sticky {
            if let Ok(i) = self.members.binary_search_by_key(&key, ShareMember::key) {
                return i;
            }
        }
        self.sticky = self.members.first().map(ShareMember::key);
        0
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
    fn load(s: u8, k: u32, full: bool) -> ShareOp<u32> {
        ShareOp::Load {
            shard: shard(s),
            subscriber: k,
            full,
        }
    }
    /// The replica of shard `this` with `ops` applied.
    fn replica(this: u8, strategy: ShareStrategy, ops: &[ShareOp<u32>]) -> SharedGroups<u32> {
        let mut g = SharedGroups::new(shard(this), strategy, 42);
        for op in ops {
            g.apply(op);
        }
        g
    }
    /// Members 1 on shard 0, 10 on shard 1, 20 on shard 2 in group `$share/g/a/+`.
    fn three() -> Vec<ShareOp<u32>> {
        vec![
            join("$share/g/a/+", 1, 10),
            join("$share/g/a/+", 0, 1),
            join("$share/g/a/+", 2, 20),
        ]
    }
    /// `n` picks for `topic` published by `publisher`: (shard, subscriber) of each matching
    /// group, sorted.
    fn picks_from(
        g: &mut SharedGroups<u32>,
        topic: &str,
        publisher: Option<&str>,
        n: usize,
    ) -> Vec<Vec<(usize, u32)>> {
        let mut stack = MatchStack::default();
        let mut out = Vec::new();
        let topic = TopicName::new(Bytes::copy_from_slice(topic.as_bytes())).expect("topic");
        (0..n)
            .map(|_| {
                g.pick(&topic, publisher.map(str::as_bytes), &mut stack, &mut out);
                let mut v: Vec<_> = out
                    .iter()
                    .map(|p| (p.member.shard.index(), p.member.subscriber))
                    .collect();
                v.sort_unstable();
                v
            })
            .collect()
    }
    fn picks(g: &mut SharedGroups<u32>, topic: &str, n: usize) -> Vec<Vec<(usize, u32)>> {
        picks_from(g, topic, None, n)
    }
    /// The one member picked per publish, for groups matched once.
    fn singles(p: Vec<Vec<(usize, u32)>>) -> Vec<u32> {
        p.into_iter()
            .map(|v| match v.as_slice() {
                [(_, k)] => *k,
                other => panic!("expected one pick, got {other:?}"),
            })
            .collect()
    }
    fn counts(picked: &[u32]) -> std::collections::BTreeMap<u32, usize> {
        let mut c = std::collections::BTreeMap::new();
        picked.iter().for_each(|k| *c.entry(*k).or_default() += 1);
        c
    }

    #[test]
    fn round_robin_is_the_default_and_reaches_every_member_from_every_shard() {
        assert_eq!(ShareStrategy::default(), ShareStrategy::RoundRobin);
        for this in 0..4 {
            // Shard 0 has a local member; it gets no preference.
            let mut g = replica(this, ShareStrategy::RoundRobin, &three());
            let picked = singles(picks(&mut g, "a/x", 60));
            assert_eq!(
                counts(&picked),
                [(1, 20), (10, 20), (20, 20)].into(),
                "replica of shard {this}"
            );
            // In turn, not in runs.
            assert!(picked.windows(2).all(|w| w[0] != w[1]), "{picked:?}");
        }
        // Replicas start at different members.
        let firsts: Vec<u32> = (0..3)
            .map(|this| {
                singles(picks(
                    &mut replica(this, ShareStrategy::RoundRobin, &three()),
                    "a/x",
                    1,
                ))[0]
            })
            .collect();
        assert_eq!(firsts, [1, 10, 20]);
    }

    #[test]
    fn replicas_list_members_in_the_same_order_whatever_the_op_order() {
        let mut ops = three();
        let a = replica(0, ShareStrategy::RoundRobin, &ops);
        ops.reverse();
        let b = replica(3, ShareStrategy::RoundRobin, &ops);
        let f = TopicFilter::from_static("$share/g/a/+");
        assert_eq!(a.members(&f), b.members(&f));
        assert_eq!(
            a.members(&f)
                .iter()
                .map(|m| m.subscriber)
                .collect::<Vec<_>>(),
            [1, 10, 20]
        );
    }

    #[test]
    fn random_reaches_every_member() {
        let mut g = replica(0, ShareStrategy::Random, &three());
        let c = counts(&singles(picks(&mut g, "a/x", 3000)));
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|&n| n > 800), "{c:?}");
    }

    #[test]
    fn local_first_prefers_local_members_round_robin() {
        let mut ops = three();
        ops.push(join("$share/g/a/+", 0, 2));
        let mut g = replica(0, ShareStrategy::LocalFirst, &ops);
        assert_eq!(
            counts(&singles(picks(&mut g, "a/x", 4))),
            [(1, 2), (2, 2)].into()
        );
        // A replica without a local member: round robin over all.
        let mut other = replica(3, ShareStrategy::LocalFirst, &ops);
        let c = counts(&singles(picks(&mut other, "a/x", 40)));
        assert_eq!(c, [(1, 10), (2, 10), (10, 10), (20, 10)].into());
    }

    #[test]
    fn sticky_keeps_one_member_until_it_leaves_and_replicas_agree() {
        let mut a = replica(0, ShareStrategy::Sticky, &three());
        let mut b = replica(2, ShareStrategy::Sticky, &three());
        assert_eq!(singles(picks(&mut a, "a/x", 5)), [1; 5]);
        assert_eq!(singles(picks(&mut b, "a/y", 5)), [1; 5]);
        // A new member does not take over.
        let joined = join("$share/g/a/+", 0, 0);
        a.apply(&joined);
        assert_eq!(singles(picks(&mut a, "a/x", 3)), [1; 3]);
        // Once it leaves, one other member takes over, for good.
        a.apply(&leave("$share/g/a/+", 0, 1));
        assert_eq!(singles(picks(&mut a, "a/x", 3)), [0; 3]);
        a.apply(&join("$share/g/a/+", 0, 1));
        assert_eq!(singles(picks(&mut a, "a/x", 3)), [0; 3]);
    }

    #[test]
    fn hash_client_id_keeps_a_publisher_on_one_member_on_every_shard() {
        let mut a = replica(0, ShareStrategy::HashClientId, &three());
        let mut b = replica(3, ShareStrategy::HashClientId, &three());
        let mut used = std::collections::BTreeSet::new();
        for i in 0..30 {
            let id = format!("publisher-{i}");
            let picked = singles(picks_from(&mut a, "a/x", Some(&id), 4));
            assert!(picked.iter().all(|k| *k == picked[0]), "{id}: {picked:?}");
            let elsewhere = singles(picks_from(&mut b, "a/y", Some(&id), 1));
            assert_eq!(elsewhere[0], picked[0], "{id}: shards agree");
            used.insert(picked[0]);
        }
        assert_eq!(used.len(), 3, "publishers spread over the members");
        // A message without a publisher (made by the broker): round robin.
        assert_eq!(counts(&singles(picks(&mut a, "a/x", 3))).len(), 3);
    }

    #[test]
    fn hash_topic_keeps_a_topic_on_one_member_on_every_shard() {
        let mut a = replica(0, ShareStrategy::HashTopic, &three());
        let mut b = replica(2, ShareStrategy::HashTopic, &three());
        let mut used = std::collections::BTreeSet::new();
        for i in 0..30 {
            let topic = format!("a/{i}");
            let picked = singles(picks_from(&mut a, &topic, Some("p1"), 3));
            assert!(
                picked.iter().all(|k| *k == picked[0]),
                "{topic}: {picked:?}"
            );
            assert_eq!(
                singles(picks_from(&mut b, &topic, Some("p2"), 1))[0],
                picked[0]
            );
            used.insert(picked[0]);
        }
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn least_loaded_skips_full_members_while_another_has_room() {
        let mut g = replica(0, ShareStrategy::LeastLoaded, &three());
        assert!(g.apply(&load(1, 10, true)));
        assert!(!g.apply(&load(1, 10, true)), "idempotent");
        assert!(g.is_full(shard(1), 10));
        assert_eq!(
            counts(&singles(picks(&mut g, "a/x", 40))),
            [(1, 20), (20, 20)].into()
        );
        // Every member full: round robin over all (someone has to queue it).
        g.apply(&load(0, 1, true));
        g.apply(&load(2, 20, true));
        assert_eq!(counts(&singles(picks(&mut g, "a/x", 30))).len(), 3);
        g.apply(&load(0, 1, false));
        g.apply(&load(2, 20, false));
        assert_eq!(
            singles(picks(&mut g, "a/x", 10))
                .iter()
                .filter(|k| **k == 10)
                .count(),
            0
        );
        // Room again: back in the rotation.
        assert!(g.apply(&load(1, 10, false)));
        assert_eq!(counts(&singles(picks(&mut g, "a/x", 30))).len(), 3);
        // The flag is per session: it applies in every group the session is in.
        g.apply(&join("$share/h/a/+", 1, 10));
        g.apply(&join("$share/h/a/+", 2, 20));
        g.apply(&load(1, 10, true));
        let both = picks(&mut g, "a/x", 10);
        assert!(both.iter().flatten().all(|(_, k)| *k != 10), "{both:?}");
    }

    #[test]
    fn pick_in_chooses_within_the_named_group() {
        let mut ops = three();
        ops.push(join("$share/other/a/+", 3, 30));
        let mut g = replica(0, ShareStrategy::RoundRobin, &ops);
        let f = TopicFilter::from_static("$share/g/a/+");
        let t = TopicName::from_static("a/x");
        let got: Vec<u32> = (0..3)
            .map(|_| g.pick_in(&f, &t, None).expect("member").member.subscriber)
            .collect();
        assert_eq!(counts(&got), [(1, 1), (10, 1), (20, 1)].into());
        let pick = g.pick_in(&f, &t, None).expect("member");
        assert_eq!(pick.group.as_str(), "$share/g/a/+");
        assert!(
            g.pick_in(&TopicFilter::from_static("$share/none/a/+"), &t, None)
                .is_none()
        );
    }

    #[test]
    fn one_pick_per_matching_group() {
        let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
        g.apply(&join("$share/g1/a/#", 1, 1));
        g.apply(&join("$share/g2/a/#", 1, 2));
        g.apply(&join("$share/g1/a/b", 1, 3)); // same name, other filter: another group
        g.apply(&join("$share/g1/#", 1, 4));
        assert_eq!(picks(&mut g, "a/b", 1), [[(1, 1), (1, 2), (1, 3), (1, 4)]]);
        assert_eq!(picks(&mut g, "$SYS/x", 1), [Vec::<(usize, u32)>::new()]);
        assert_eq!(g.group_count(), 4);
        let mut stack = MatchStack::default();
        let mut out = Vec::new();
        g.pick(&TopicName::from_static("a/b"), None, &mut stack, &mut out);
        let mut groups: Vec<&str> = out.iter().map(|p| p.group.as_str()).collect();
        groups.sort_unstable();
        assert_eq!(
            groups,
            [
                "$share/g1/#",
                "$share/g1/a/#",
                "$share/g1/a/b",
                "$share/g2/a/#"
            ]
        );
    }

    #[test]
    fn leave_and_rejoin() {
        let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
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
        let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
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
        let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
        for k in 1..=3 {
            g.apply(&join("$share/g/t", 1, k));
        }
        assert_eq!(picks(&mut g, "t", 3), [[(1, 1)], [(1, 2)], [(1, 3)]]);
        g.apply(&leave("$share/g/t", 1, 3));
        g.apply(&leave("$share/g/t", 1, 2));
        assert_eq!(picks(&mut g, "t", 2), [[(1, 1)], [(1, 1)]]);
    }
}
