//! The shard-interest index: which shards have at least one local subscriber to a filter.
//!
//! Owns one replica of the index; every shard holds one and applies the same `InterestOp`s,
//! broadcast by the shard whose local trie saw a filter's first subscriber arrive or its last
//! one leave (`trie::Inserted::New { first_for_filter: true }` / `Removed::last_for_filter`).
//! The reference count lives in the owner's local trie; here a shard is just a bit.
//! Also owns `InterestCache`, a per-shard topic -> mask cache invalidated by a generation
//! (measured in `benches/router.rs`: see the `interest/*` group).
//!
//! Must never: hold shared-subscription filters (groups are replicated by `shared.rs`; the
//! publishing shard picks one member and needs no interest bit), or hold a bit for a shard
//! with no local subscriber once that shard's `Remove` has been applied.

use std::hash::BuildHasher;

use super::topic::{TopicFilter, TopicName};
use super::trie::{Inserted, MatchStack, Trie};

/// Most shards a broker may run: one bit each in a `ShardMask`.
pub const MAX_SHARDS: usize = 64;

/// Index of a shard, `0..MAX_SHARDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(u8);

impl ShardId {
    pub const fn new(index: u8) -> Option<ShardId> {
        if (index as usize) < MAX_SHARDS {
            Some(ShardId(index))
        } else {
            None
        }
    }

    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A set of shards, one bit per `ShardId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ShardMask(pub u64);

impl ShardMask {
    pub const EMPTY: ShardMask = ShardMask(0);

    pub const fn contains(self, shard: ShardId) -> bool {
        self.0 & (1 << shard.0) != 0
    }

    pub fn insert(&mut self, shard: ShardId) {
        self.0 |= 1 << shard.0;
    }

    pub fn remove(&mut self, shard: ShardId) {
        self.0 &= !(1 << shard.0);
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// The shards in ascending order.
    pub fn iter(self) -> impl Iterator<Item = ShardId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros();
            bits &= bits - 1;
            // `i < 64 == MAX_SHARDS`.
            Some(ShardId(i as u8))
        })
    }
}

/// A change to the index, applied identically on every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterestOp {
    /// `shard` now has at least one local subscriber to `filter`.
    Add { filter: TopicFilter, shard: ShardId },
    /// `shard` no longer has any local subscriber to `filter`.
    Remove { filter: TopicFilter, shard: ShardId },
}

/// filter -> mask of shards with at least one subscriber.
#[derive(Debug, Default)]
pub struct InterestIndex {
    /// One entry per filter (key `()`), value the mask; empty masks are removed.
    trie: Trie<(), ShardMask>,
    /// Bumped on every change that alters a mask; caches compare it.
    generation: u64,
}

impl InterestIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one op; returns whether the index changed. Idempotent: a repeated `Add` or a
    /// `Remove` of an absent bit changes nothing. Shared filters are ignored (see module doc).
    pub fn apply(&mut self, op: &InterestOp) -> bool {
        let changed = match op {
            InterestOp::Add { filter, .. } | InterestOp::Remove { filter, .. }
                if filter.is_shared() =>
            {
                false
            }
            InterestOp::Add { filter, shard } => match self.trie.get_mut(filter, ()) {
                Some(mask) if mask.contains(*shard) => false,
                Some(mask) => {
                    mask.insert(*shard);
                    true
                }
                None => {
                    let mut mask = ShardMask::EMPTY;
                    mask.insert(*shard);
                    matches!(self.trie.insert(filter, (), mask), Inserted::New { .. })
                }
            },
            InterestOp::Remove { filter, shard } => self.remove_bit(filter, *shard),
        };
        if changed {
            self.generation += 1;
        }
        changed
    }

    fn remove_bit(&mut self, filter: &TopicFilter, shard: ShardId) -> bool {
        let Some(mask) = self.trie.get_mut(filter, ()) else {
            return false;
        };
        if !mask.contains(shard) {
            return false;
        }
        mask.remove(shard);
        if mask.is_empty() {
            self.trie.remove(filter, ());
        }
        true
    }

    /// The shards that must receive a publish to `topic`: the union over matching filters.
    pub fn shards_for(&self, topic: &TopicName, stack: &mut MatchStack) -> ShardMask {
        let mut mask = ShardMask::EMPTY;
        self.trie.match_topic(topic, stack, |(), m| mask.0 |= m.0);
        mask
    }

    /// The mask recorded for exactly `filter`.
    pub fn mask_of(&self, filter: &TopicFilter) -> ShardMask {
        self.trie.get(filter, ()).copied().unwrap_or_default()
    }

    /// Number of filters with at least one interested shard.
    pub fn filter_count(&self) -> usize {
        self.trie.len()
    }

    /// Changes whenever any mask changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Slots of an `InterestCache` (a power of two). 16k slots of ~40 bytes plus the topic
/// bytes: well under 1 MiB per shard, enough for the hot topics of a shard.
pub const INTEREST_CACHE_CAPACITY: usize = 16 * 1024;

/// Topics longer than this are not cached: copying them would cost more than the walk saves
/// and lets one publisher pin large buffers.
const MAX_CACHED_TOPIC_LEN: usize = 256;

#[derive(Debug, Default)]
struct CacheSlot {
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
    slots: Vec<CacheSlot>,
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
        let t = topic.as_bytes();
        if t.len() > MAX_CACHED_TOPIC_LEN {
            return index.shards_for(topic, stack);
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
        let mask = index.shards_for(topic, stack);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn shard(i: u8) -> ShardId {
        ShardId::new(i).expect("valid shard")
    }
    fn add(f: &'static str, s: u8) -> InterestOp {
        InterestOp::Add {
            filter: TopicFilter::from_static(f),
            shard: shard(s),
        }
    }
    fn remove(f: &'static str, s: u8) -> InterestOp {
        InterestOp::Remove {
            filter: TopicFilter::from_static(f),
            shard: shard(s),
        }
    }
    fn shards(index: &InterestIndex, topic: &'static str) -> Vec<usize> {
        let mut stack = MatchStack::default();
        index
            .shards_for(&TopicName::from_static(topic), &mut stack)
            .iter()
            .map(|s| s.index())
            .collect()
    }

    #[test]
    fn shard_ids_and_masks() {
        assert_eq!(ShardId::new(63).map(ShardId::index), Some(63));
        assert_eq!(ShardId::new(64), None);
        let mut m = ShardMask::EMPTY;
        m.insert(shard(63));
        m.insert(shard(0));
        m.insert(shard(5));
        assert_eq!(m.iter().map(ShardId::index).collect::<Vec<_>>(), [0, 5, 63]);
        assert_eq!(m.len(), 3);
        m.remove(shard(5));
        assert!(!m.contains(shard(5)) && m.contains(shard(63)));
    }

    #[test]
    fn union_of_matching_filters() {
        let mut idx = InterestIndex::new();
        assert!(idx.apply(&add("a/b", 0)));
        assert!(idx.apply(&add("a/+", 1)));
        assert!(idx.apply(&add("#", 2)));
        assert!(idx.apply(&add("$SYS/#", 3)));
        assert!(idx.apply(&add("a/b", 4)));
        assert_eq!(shards(&idx, "a/b"), [0, 1, 2, 4]);
        assert_eq!(shards(&idx, "a/c"), [1, 2]);
        assert_eq!(shards(&idx, "z"), [2]);
        assert_eq!(shards(&idx, "$SYS/load"), [3]); // `#` skips `$` topics [MQTT-4.7.2-1]
        assert_eq!(idx.filter_count(), 4);
    }

    #[test]
    fn ops_are_idempotent_and_remove_frees_filters() {
        let mut idx = InterestIndex::new();
        assert!(idx.apply(&add("a/#", 1)));
        let g = idx.generation();
        assert!(!idx.apply(&add("a/#", 1)));
        assert_eq!(idx.generation(), g);
        assert!(idx.apply(&add("a/#", 2)));
        assert!(idx.apply(&remove("a/#", 1)));
        assert!(!idx.apply(&remove("a/#", 1)));
        assert!(!idx.apply(&remove("b", 1)));
        assert_eq!(shards(&idx, "a"), [2]);
        assert!(idx.apply(&remove("a/#", 2)));
        assert_eq!(shards(&idx, "a"), Vec::<usize>::new());
        assert_eq!(idx.filter_count(), 0);
        assert_eq!(
            idx.mask_of(&TopicFilter::from_static("a/#")),
            ShardMask::EMPTY
        );
    }

    #[test]
    fn shared_filters_are_not_indexed() {
        let mut idx = InterestIndex::new();
        assert!(!idx.apply(&add("$share/g/a", 1)));
        assert_eq!(shards(&idx, "a"), Vec::<usize>::new());
    }

    #[test]
    fn same_ops_give_same_replicas() {
        let ops = [
            add("a/+", 0),
            add("#", 1),
            remove("a/+", 0),
            add("a/b", 3),
            add("a/+", 2),
        ];
        let (mut r1, mut r2) = (InterestIndex::new(), InterestIndex::new());
        ops.iter().for_each(|op| {
            r1.apply(op);
            r2.apply(op);
        });
        for t in ["a/b", "a/x", "q", "$x"] {
            assert_eq!(shards(&r1, t), shards(&r2, t), "{t}");
        }
        assert_eq!(shards(&r1, "a/b"), [1, 2, 3]);
    }

    #[test]
    fn cache_follows_the_generation() {
        let mut idx = InterestIndex::new();
        let mut cache = InterestCache::new();
        let mut stack = MatchStack::default();
        let t = TopicName::from_static("a/b");
        idx.apply(&add("a/b", 1));
        assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b10));
        assert_eq!(cache.len(&idx), 1);
        assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b10));
        idx.apply(&add("+/b", 0));
        assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b11));
        idx.apply(&remove("a/b", 1));
        assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b01));
    }

    #[test]
    fn cache_is_bounded() {
        let idx = InterestIndex::new();
        let mut cache = InterestCache::new();
        let mut stack = MatchStack::default();
        for i in 0..INTEREST_CACHE_CAPACITY + 10 {
            let t = TopicName::new(Bytes::from(format!("t/{i}"))).expect("valid");
            cache.shards_for(&idx, &t, &mut stack);
        }
        assert!(cache.len(&idx) <= INTEREST_CACHE_CAPACITY);
        assert_eq!(cache.slots.len(), INTEREST_CACHE_CAPACITY);
        // A long topic bypasses the cache but still gets the right answer.
        let long = TopicName::new(Bytes::from("x/".repeat(200))).expect("valid");
        assert_eq!(cache.shards_for(&idx, &long, &mut stack), ShardMask::EMPTY);
    }
}
