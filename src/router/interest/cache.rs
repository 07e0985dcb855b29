//! `InterestCache`: a shard's topic -> shard-mask cache in front of its `InterestIndex`
//! replica, each slot valid for one generation of the index (measured in
//! `benches/router.rs`: see the `interest/*` group).
//!
//! Must never: answer from a slot filled under another generation of the index, or pin a
//! decoded packet's buffer (topics are copied).

use std::hash::BuildHasher;

use super::super::topic::TopicName;
use super::super::trie::MatchStack;
use super::{InterestIndex, ShardMask};

/// Slots of an `InterestCache` (a power of two). 16k slots of ~40 bytes plus the topic
/// bytes: well under 1 MiB per shard, enough for the hot topics of a shard.
pub const INTEREST_CACHE_CAPACITY: usize = 16 * 1024;

/// Topics longer than this are not cached: copying them would cost more than the walk saves
/// and lets one publisher pin large buffers.
const MAX_CACHED_TOPIC_LEN: usize = 256;

#[derive(Debug, Default)]
pub(super) struct CacheSlot {
    /// `index generation + 1` when filled; 0 means empty. A slot is valid only while this
    /// equals the index's current generation + 1, so invalidation costs nothing up front.
    generation: u64,
    /// A copy of the topic (its capacity is reused when the slot is overwritten): a `Bytes`
    /// clone of a decoded topic would keep the whole read buffer alive.
    topic: Vec<u8>,
    mask: ShardMask,
}

/// Per-shard cache of `shards_for` results: direct-mapped by a keyed hash of the topic, each
/// slot valid for one generation of the index. A miss overwrites its slot without allocating
/// once the slot's buffer is large enough; colliding topics evict each other.
#[derive(Debug, Default)]
pub struct InterestCache {
    /// Empty until first use, then `INTEREST_CACHE_CAPACITY` slots.
    pub(super) slots: Vec<CacheSlot>,
    /// Keyed (foldhash, random seed per process) so clients cannot aim topics at one slot.
    hasher: foldhash::fast::RandomState,
}

impl InterestCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// `index.shards_for(topic)`, from the cache when the index has not changed since.
    pub fn shards_for(
        &mut self,
        index: &InterestIndex,
        topic: &TopicName,
        stack: &mut MatchStack,
    ) -> ShardMask {
        self.shards_for_with(index, topic, stack, |_, _| ShardMask::EMPTY)
    }

    /// `index.shards_for(topic)` with the shards `local` adds (the replica's own shard,
    /// answered by its local trie), from the cache when the index has not changed since:
    /// the owner's `add_local`/`remove_local` bump the generation whenever the local
    /// trie's answer may change.
    pub fn shards_for_with(
        &mut self,
        index: &InterestIndex,
        topic: &TopicName,
        stack: &mut MatchStack,
        local: impl FnOnce(&TopicName, &mut MatchStack) -> ShardMask,
    ) -> ShardMask {
        let t = topic.as_bytes();
        if t.len() > MAX_CACHED_TOPIC_LEN {
            let mask = index.shards_for(topic, stack);
            return ShardMask(mask.0 | local(topic, stack).0);
        }
        if self.slots.is_empty() {
            self.slots
                .resize_with(INTEREST_CACHE_CAPACITY, CacheSlot::default);
        }
        let want = index.generation() + 1;
        // Truncation is the point: the low bits pick the slot.
        let i = self.hasher.hash_one(t) as usize & (INTEREST_CACHE_CAPACITY - 1);
        let slot = &mut self.slots[i];
        if slot.generation == want && slot.topic == t {
            return slot.mask;
        }
        let mask = ShardMask(index.shards_for(topic, stack).0 | local(topic, stack).0);
        slot.generation = want;
        slot.topic.clear();
        slot.topic.extend_from_slice(t);
        slot.mask = mask;
        mask
    }

    /// Number of slots valid for `index`'s current generation.
    pub fn len(&self, index: &InterestIndex) -> usize {
        let want = index.generation() + 1;
        self.slots.iter().filter(|s| s.generation == want).count()
    }
}
