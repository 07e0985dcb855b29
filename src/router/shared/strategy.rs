//! How the publishing shard chooses the member of a share group (`ShareStrategy`): one
//! `Group::choose` per matching group, over the group's members in their replica-wide
//! order (see the parent module). Deterministic given its inputs: `random` draws from a
//! generator the owner seeds, the hashes are the same on every shard and every run.
//!
//! Must never: return a member outside the group, or fail to return one from a non-empty
//! group.

use std::collections::HashSet;
use std::hash::Hash;

use super::{Group, ShareMember};
use crate::router::interest::ShardId;
use crate::router::topic::TopicName;

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

/// What a pick may look at besides the group: computed once per publish.
pub(super) struct PickCtx<'a, K> {
    pub(super) strategy: ShareStrategy,
    pub(super) this_shard: ShardId,
    pub(super) rng: &'a mut u64,
    pub(super) full: &'a HashSet<(ShardId, K), foldhash::fast::RandomState>,
    /// `HashClientId`: the publisher's id hashed; `HashTopic`: the topic hashed.
    pub(super) hash: Option<u64>,
}

/// The hash a hashing strategy picks by; `None` for the others (and for `HashClientId`
/// without a publisher, which then falls back to round robin).
pub(super) fn pick_hash(
    strategy: ShareStrategy,
    topic: &TopicName,
    publisher: Option<&[u8]>,
) -> Option<u64> {
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
    pub(super) fn choose(&mut self, ctx: &mut PickCtx<'_, K>) -> Option<ShareMember<K>> {
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
        if let Some(key) = self.sticky
            && let Ok(i) = self.members.binary_search_by_key(&key, ShareMember::key)
        {
            return i;
        }
        self.sticky = self.members.first().map(ShareMember::key);
        0
    }
}
