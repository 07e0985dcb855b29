//! The shard-interest index: which shards have at least one local subscriber to a filter.
//!
//! Owns one replica of the index; every shard holds one and applies the same `InterestOp`s,
//! broadcast by the shard whose local trie saw a filter's first subscriber arrive or its last
//! one leave (`trie::Inserted::New { first_for_filter: true }` / `Removed::last_for_filter`).
//! The reference count lives in the owner's local trie; here a shard is just a bit.
//!
//! A replica keeps no filter bytes for the common case: filters are grouped by shape (level
//! count, which levels are `+`, trailing `#`), and per shape a table maps a keyed 64-bit hash
//! of the literal levels (its high 48 bits) to the shard bits, 8 bytes a slot. A lookup
//! hashes the topic once per shape that can match it. Shapes beyond `MAX_HASHED_SHAPES` go
//! to an exact trie. The hash seed is the same on every shard (picked at broker start and
//! passed in: this module has no randomness of its own). A shard's replica does not hold its
//! own bits (its local trie answers for itself, cached by `InterestCache::shards_for_with`),
//! only its own filters' keys, to detect two of its filters sharing one key.
//! `cache.rs` holds `InterestCache`, a per-shard topic -> mask cache invalidated by a
//! generation.
//!
//! Must never: hold shared-subscription filters (groups are replicated by `shared.rs`; the
//! publishing shard picks one member and needs no interest bit), or lose a shard that has a
//! matching subscriber. A hash collision may leave extra bits (a wasted hop to a shard whose
//! exact local trie then delivers nothing), never fewer: the owner of a bit does not clear it
//! while another of its filters has the same key (`InterestOp::Remove::key_shared`). Two of
//! one shard's filters of different shapes whose 48-bit keys collide leave such a stale
//! extra bit until the broker restarts (odds about n^2 / 2^49 for n filters on one shard).

use std::hash::{BuildHasher, Hasher};

use super::topic::{TopicFilter, TopicName};
use super::trie::{MatchStack, Trie};

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

    /// Shard `hash % shards` of a broker of `shards` shards (taken as 1 when 0, as
    /// `MAX_SHARDS` above it): where what `hash` keys lives.
    pub const fn of_hash(hash: u64, shards: usize) -> ShardId {
        let n = if shards == 0 {
            1
        } else if shards > MAX_SHARDS {
            MAX_SHARDS
        } else {
            shards
        };
        ShardId((hash % n as u64) as u8)
    }

    /// The shards of a broker of `shards` shards (at most `MAX_SHARDS`), in order.
    pub fn all(shards: usize) -> impl Iterator<Item = ShardId> {
        (0..shards.min(MAX_SHARDS) as u8).map(ShardId)
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
    /// `shard` no longer has any local subscriber to `filter`. `key_shared`: another filter
    /// of `shard` still has the same hashed key (see `InterestIndex::remove_local`), so
    /// replicas that hold `filter` by its key keep the bit; those that hold it exactly (the
    /// overflow trie) drop it.
    Remove {
        filter: TopicFilter,
        shard: ShardId,
        key_shared: bool,
    },
}

/// Most filter shapes one replica indexes by hash; filters of further shapes go to an exact
/// trie. A lookup hashes the topic once per shape present, so this bounds what a client
/// with many odd-shaped filters can make every publish cost.
pub const MAX_HASHED_SHAPES: usize = 32;

/// Shard bits held by one table entry (the low bits of the `u64`); the other 48 bits are
/// the key. A broker of more shards keeps one entry per 16-shard chunk.
const CHUNK_BITS: u32 = 16;
const CHUNK_MASK: u64 = (1 << CHUNK_BITS) - 1;

/// A filter's shape: its level count, which levels are `+`, and whether it ends in `#`.
/// Filters of one shape match a topic exactly when the topic's levels at the literal
/// positions are the filter's literals, so a shape turns matching into one hash lookup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shape {
    /// Levels before a trailing `#` (every level when there is none).
    levels: u32,
    /// Ends in `#`: matches topics of `levels` levels or more (`a/#` matches `a`).
    multi: bool,
    /// Positions of the `+` levels, ascending.
    plus: Box<[u32]>,
}

/// One of this shard's own filters, located: its shard, shape, key and key tag.
struct OwnFilter {
    me: ShardId,
    shape: Shape,
    key: u64,
    tag: u64,
}

impl Shape {
    fn of(filter: &TopicFilter) -> Shape {
        let mut levels = 0u32;
        let mut multi = false;
        let mut plus = Vec::new();
        for level in filter.levels() {
            match level {
                b"#" => multi = true,
                b"+" => {
                    plus.push(levels);
                    levels += 1;
                }
                _ => levels += 1,
            }
        }
        Shape {
            levels,
            multi,
            plus: plus.into_boxed_slice(),
        }
    }

    /// Whether a topic of `count` levels can match (before the `$` rule).
    fn fits(&self, count: usize) -> bool {
        let levels = self.levels as usize;
        if self.multi {
            levels <= count
        } else {
            levels == count
        }
    }

    /// A wildcard at the first level: such filters never match `$` topics [MQTT-4.7.2-1].
    fn wild_first(&self) -> bool {
        self.plus.first() == Some(&0) || (self.multi && self.levels == 0)
    }
}

/// The keyed hash of (shape, literal levels), the same on every shard (one seed, picked at
/// broker start). `key_mask` is all ones; tests narrow it to force collisions.
#[derive(Clone, Debug)]
struct KeyHasher {
    state: foldhash::quality::FixedState,
    key_mask: u64,
}

impl KeyHasher {
    fn new(seed: u64) -> KeyHasher {
        KeyHasher {
            state: foldhash::quality::FixedState::with_seed(seed),
            key_mask: u64::MAX,
        }
    }

    fn shape_hash(&self, shape: &Shape) -> u64 {
        self.state.hash_one(shape)
    }

    /// The key of the levels `levels` (all of the shape's non-`#` levels, in order) under
    /// a shape whose hash is `shape_hash`; `+` positions are skipped.
    fn key<'a>(
        &self,
        shape_hash: u64,
        plus: &[u32],
        levels: impl Iterator<Item = &'a [u8]>,
    ) -> u64 {
        let mut h = self.state.build_hasher();
        h.write_u64(shape_hash);
        let mut next_plus = plus.iter().copied().peekable();
        for (i, level) in (0u32..).zip(levels) {
            if next_plus.peek() == Some(&i) {
                next_plus.next();
                continue;
            }
            h.write_usize(level.len());
            h.write(level);
        }
        h.finish() & self.key_mask
    }

    fn filter_key(&self, shape: &Shape, filter: &TopicFilter) -> u64 {
        let levels = filter.levels().take(shape.levels as usize);
        self.key(self.shape_hash(shape), &shape.plus, levels)
    }
}

/// The 48-bit tag under which `key` is stored for shards `chunk * 16 ..`: the key's high
/// bits for chunk 0, a fixed remix for the others (only brokers of more than 16 shards).
fn tag(key: u64, chunk: usize) -> u64 {
    let k = if chunk == 0 {
        key
    } else {
        // splitmix64's finaliser: a bijection, so distinct keys keep distinct tags per chunk.
        let mut z = key ^ (chunk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    k & !CHUNK_MASK
}

/// Open-addressing set of `tag | bits` words (linear probing, backward-shift deletion, no
/// tombstones): 8 bytes a slot, at most 80% full, grown by half, so about 12 bytes an
/// entry. A word is never 0 (its bits are not), so 0 marks a free slot.
#[derive(Debug, Default)]
struct KeyTable {
    slots: Vec<u64>,
    len: usize,
}

impl KeyTable {
    fn home(&self, tag: u64) -> usize {
        // Multiply-shift onto `0..len`: the tag's high bits are the (keyed, uniform) key.
        ((u128::from(tag) * self.slots.len() as u128) >> 64) as usize
    }

    fn find(&self, tag: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(tag);
        loop {
            let w = self.slots[i];
            if w == 0 {
                return None;
            }
            if w & !CHUNK_MASK == tag {
                return Some(i);
            }
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
    }

    fn bits(&self, tag: u64) -> u64 {
        self.find(tag).map_or(0, |i| self.slots[i] & CHUNK_MASK)
    }

    /// Sets `bits` (non-zero) under `tag`; returns whether the word changed.
    fn set(&mut self, tag: u64, bits: u64) -> bool {
        if let Some(i) = self.find(tag) {
            let old = self.slots[i];
            self.slots[i] |= bits;
            return self.slots[i] != old;
        }
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.resize((self.len + 1) * 15 / 8 + 8);
        }
        self.place(tag | bits);
        self.len += 1;
        true
    }

    /// Clears `bits` under `tag`, freeing the slot when none are left; returns whether the
    /// word changed.
    fn clear(&mut self, tag: u64, bits: u64) -> bool {
        let Some(i) = self.find(tag) else {
            return false;
        };
        let old = self.slots[i];
        if old & bits == 0 {
            return false;
        }
        if old & CHUNK_MASK & !bits != 0 {
            self.slots[i] = old & !bits;
            return true;
        }
        self.delete(i);
        self.len -= 1;
        if self.len * 5 < self.slots.len() && self.slots.len() > 16 {
            self.resize(self.len * 15 / 8 + 8);
        }
        true
    }

    fn place(&mut self, word: u64) {
        let mut i = self.home(word & !CHUNK_MASK);
        while self.slots[i] != 0 {
            i += 1;
            if i == self.slots.len() {
                i = 0;
            }
        }
        self.slots[i] = word;
    }

    /// Backward-shift deletion: later words of the run move up unless that would put them
    /// before their home slot.
    fn delete(&mut self, mut hole: usize) {
        let n = self.slots.len();
        self.slots[hole] = 0;
        let mut j = hole;
        loop {
            j = if j + 1 == n { 0 } else { j + 1 };
            let w = self.slots[j];
            if w == 0 {
                return;
            }
            let home = self.home(w & !CHUNK_MASK);
            // The word may stay when its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = w;
                self.slots[j] = 0;
                hole = j;
            }
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; slots.max(8)]);
        for w in old.into_iter().filter(|&w| w != 0) {
            self.place(w);
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The filters of one shape, by key.
#[derive(Debug)]
struct ShapeTable {
    shape: Shape,
    shape_hash: u64,
    wild_first: bool,
    table: KeyTable,
}

/// filter -> mask of shards with at least one subscriber, stored as keyed hashes: per
/// filter shape present, a table of 48-bit keys of the literal levels (8-byte words, the
/// shard bits in the low 16), and an exact trie for the filters of shapes beyond
/// `MAX_HASHED_SHAPES`. No filter bytes are kept for hashed shapes.
///
/// A hash collision can only add shards (a wasted hop: the destination's local trie is
/// exact); it never loses one, because the shard that owns a bit withholds the bit's
/// removal while another of its filters shares the key (`add_local`/`remove_local`).
///
/// A replica built with `for_shard` does not store its own shard's bit for lookups (the
/// shard's local trie answers for it, see `InterestCache::shards_for_with`) unless asked to
/// (`store_own`); it keeps only the tags of its own filters, to detect those collisions.
#[derive(Debug)]
pub struct InterestIndex {
    /// The shard this replica serves, or `None` for a replica that applies every op.
    me: Option<ShardId>,
    /// Own bits are looked up here too (else only other shards' bits are).
    store_own: bool,
    hasher: KeyHasher,
    /// 16-shard chunks a lookup probes: one more than the highest chunk of a shard whose op
    /// this replica applied (1 for brokers of up to 16 shards).
    chunks: usize,
    shapes: Vec<ShapeTable>,
    /// Filters of shapes that did not fit `MAX_HASHED_SHAPES`, exactly.
    overflow: Trie<(), ShardMask>,
    /// Shapes held in `overflow`, with their number of filters there.
    overflow_shapes: hashbrown::HashMap<Shape, u32, foldhash::fast::FixedState>,
    /// This shard's own filters, by tag (bit 0 set in every word).
    own: KeyTable,
    /// Own tags shared by more than one own filter: the number of extra filters.
    own_collisions: hashbrown::HashMap<u64, u32, foldhash::fast::FixedState>,
    /// Entries over all tables and the overflow trie.
    entries: usize,
    /// Bumped on every change that alters an answer; caches compare it.
    generation: u64,
}

impl Default for InterestIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl InterestIndex {
    /// A replica that applies every op (tools and tests), with a fixed seed.
    pub fn new() -> Self {
        Self::build(None, true, 0)
    }

    /// The replica of shard `me`; `seed` must be the same on every shard. `store_own`: also
    /// answer for `me` in lookups.
    pub fn for_shard(me: ShardId, seed: u64, store_own: bool) -> Self {
        Self::build(Some(me), store_own, seed)
    }

    fn build(me: Option<ShardId>, store_own: bool, seed: u64) -> Self {
        InterestIndex {
            me,
            store_own,
            hasher: KeyHasher::new(seed),
            chunks: 1,
            shapes: Vec::new(),
            overflow: Trie::new(),
            overflow_shapes: hashbrown::HashMap::default(),
            own: KeyTable::default(),
            own_collisions: hashbrown::HashMap::default(),
            entries: 0,
            generation: 0,
        }
    }

    /// Where one of this shard's own filters lives in the tables: `None` for a shared filter
    /// or a replica without `me` (`add_local` and `remove_local` then send nothing).
    fn own_filter(&self, filter: &TopicFilter) -> Option<OwnFilter> {
        let me = self.me?;
        if filter.is_shared() {
            return None;
        }
        let shape = Shape::of(filter);
        let key = self.hasher.filter_key(&shape, filter);
        let tag = tag(key, me.index() / CHUNK_BITS as usize);
        Some(OwnFilter {
            me,
            shape,
            key,
            tag,
        })
    }

    /// This shard (`for_shard`'s `me`) got its first local subscriber to `filter`: records
    /// the filter's key and returns the op to send to the other shards (`None` for a shared
    /// filter or a replica without `me`). If another own filter already has the key, the
    /// collision is counted, so that its `remove_local` does not clear the shared bit.
    pub fn add_local(&mut self, filter: &TopicFilter) -> Option<InterestOp> {
        let OwnFilter {
            me,
            shape,
            key,
            tag: t,
        } = self.own_filter(filter)?;
        if self.own.find(t).is_some() {
            *self.own_collisions.entry(t).or_insert(0) += 1;
        } else {
            self.own.set(t, 1);
        }
        let op = InterestOp::Add {
            filter: filter.clone(),
            shard: me,
        };
        if self.store_own {
            self.insert(shape, key, filter, me);
        }
        // The local trie's answer changed even when no table did.
        self.generation += 1;
        Some(op)
    }

    /// This shard's last local subscriber to `filter` left: returns the op to send to the
    /// other shards, with `key_shared` set while another own filter still has the key.
    pub fn remove_local(&mut self, filter: &TopicFilter) -> Option<InterestOp> {
        let OwnFilter {
            me,
            shape,
            key,
            tag: t,
        } = self.own_filter(filter)?;
        let key_shared = match self.own_collisions.get_mut(&t) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.own_collisions.remove(&t);
                }
                true
            }
            None => {
                self.own.clear(t, 1);
                false
            }
        };
        if self.store_own {
            self.delete(shape, key, filter, me, key_shared);
        }
        self.generation += 1;
        Some(InterestOp::Remove {
            filter: filter.clone(),
            shard: me,
            key_shared,
        })
    }

    /// Applies one op from another shard; returns whether the index changed. Idempotent: a
    /// repeated `Add` or a `Remove` of an absent bit changes nothing. Shared filters are
    /// ignored (see module doc), and so are ops of this replica's own shard (`add_local`
    /// and `remove_local` handle those).
    pub fn apply(&mut self, op: &InterestOp) -> bool {
        let changed = match op {
            InterestOp::Add { filter, .. } | InterestOp::Remove { filter, .. }
                if filter.is_shared() =>
            {
                false
            }
            InterestOp::Add { shard, .. } | InterestOp::Remove { shard, .. }
                if Some(*shard) == self.me =>
            {
                false
            }
            InterestOp::Add { filter, shard } => {
                let shape = Shape::of(filter);
                let key = self.hasher.filter_key(&shape, filter);
                self.insert(shape, key, filter, *shard)
            }
            InterestOp::Remove {
                filter,
                shard,
                key_shared,
            } => {
                let shape = Shape::of(filter);
                let key = self.hasher.filter_key(&shape, filter);
                self.delete(shape, key, filter, *shard, *key_shared)
            }
        };
        if changed {
            self.generation += 1;
        }
        changed
    }

    fn insert(&mut self, shape: Shape, key: u64, filter: &TopicFilter, shard: ShardId) -> bool {
        let (t, bit) = self.tag_bit(key, shard);
        self.chunks = self.chunks.max(shard.index() / CHUNK_BITS as usize + 1);
        if let Some(s) = self.shapes.iter_mut().find(|s| s.shape == shape) {
            let was = s.table.len;
            let changed = s.table.set(t, bit);
            self.entries += s.table.len - was;
            return changed;
        }
        if !self.overflow_shapes.contains_key(&shape) && self.shapes.len() < MAX_HASHED_SHAPES {
            let mut table = KeyTable::default();
            table.set(t, bit);
            self.shapes.push(ShapeTable {
                shape_hash: self.hasher.shape_hash(&shape),
                wild_first: shape.wild_first(),
                shape,
                table,
            });
            self.entries += 1;
            return true;
        }
        match self.overflow.get_mut(filter, ()) {
            Some(mask) if mask.contains(shard) => false,
            Some(mask) => {
                mask.insert(shard);
                true
            }
            None => {
                let mut mask = ShardMask::EMPTY;
                mask.insert(shard);
                self.overflow.insert(filter, (), mask);
                *self.overflow_shapes.entry(shape).or_insert(0) += 1;
                self.entries += 1;
                true
            }
        }
    }

    fn delete(
        &mut self,
        shape: Shape,
        key: u64,
        filter: &TopicFilter,
        shard: ShardId,
        key_shared: bool,
    ) -> bool {
        let (t, bit) = self.tag_bit(key, shard);
        if let Some(i) = self.shapes.iter().position(|s| s.shape == shape) {
            if key_shared {
                return false; // Another filter of `shard` has this key.
            }
            let table = &mut self.shapes[i].table;
            let was = table.len;
            let changed = table.clear(t, bit);
            self.entries -= was - table.len;
            if table.is_empty() {
                self.shapes.swap_remove(i);
            }
            return changed;
        }
        let Some(mask) = self.overflow.get_mut(filter, ()) else {
            return false;
        };
        if !mask.contains(shard) {
            return false;
        }
        mask.remove(shard);
        if mask.is_empty() {
            self.overflow.remove(filter, ());
            self.entries -= 1;
            if let Some(n) = self.overflow_shapes.get_mut(&shape) {
                *n -= 1;
                if *n == 0 {
                    self.overflow_shapes.remove(&shape);
                }
            }
        }
        true
    }

    /// The tag and the word bit of `shard` for `key`.
    fn tag_bit(&self, key: u64, shard: ShardId) -> (u64, u64) {
        let i = shard.index();
        let chunk = i / CHUNK_BITS as usize;
        (tag(key, chunk), 1 << (i % CHUNK_BITS as usize))
    }

    /// The shards that must receive a publish to `topic`: the union over matching filters
    /// (and hash collisions: a superset, never a subset). Without `store_own`, this
    /// replica's own shard is not included.
    pub fn shards_for(&self, topic: &TopicName, stack: &mut MatchStack) -> ShardMask {
        let mut mask = ShardMask::EMPTY;
        if !self.shapes.is_empty() {
            let t = topic.as_bytes();
            let levels = &mut stack.levels;
            levels.clear();
            let mut start = 0usize;
            for (i, &b) in t.iter().enumerate() {
                if b == b'/' {
                    levels.push((start as u32, i as u32));
                    start = i + 1;
                }
            }
            levels.push((start as u32, t.len() as u32));
            let dollar = topic.is_dollar();
            for s in &self.shapes {
                if !s.shape.fits(levels.len()) || (dollar && s.wild_first) {
                    continue;
                }
                let lv = levels[..s.shape.levels as usize]
                    .iter()
                    .map(|&(a, b)| &t[a as usize..b as usize]);
                let key = self.hasher.key(s.shape_hash, &s.shape.plus, lv);
                for chunk in 0..self.chunks {
                    let bits = s.table.bits(tag(key, chunk));
                    mask.0 |= bits << (chunk * CHUNK_BITS as usize);
                }
            }
        }
        if !self.overflow.is_empty() {
            self.overflow
                .match_topic(topic, stack, |(), m| mask.0 |= m.0);
        }
        mask
    }

    /// The mask recorded for `filter`'s key (a superset when keys collide); without
    /// `store_own`, this replica's own shard is not included.
    pub fn mask_of(&self, filter: &TopicFilter) -> ShardMask {
        if filter.is_shared() {
            return ShardMask::EMPTY;
        }
        let shape = Shape::of(filter);
        if let Some(s) = self.shapes.iter().find(|s| s.shape == shape) {
            let key = self.hasher.filter_key(&shape, filter);
            let mut mask = 0;
            for chunk in 0..self.chunks {
                mask |= s.table.bits(tag(key, chunk)) << (chunk * CHUNK_BITS as usize);
            }
            return ShardMask(mask);
        }
        self.overflow.get(filter, ()).copied().unwrap_or_default()
    }

    /// Number of entries (distinct keys, and filters in the overflow trie) with at least one
    /// interested shard: the number of filters, less the rare keys they share.
    pub fn filter_count(&self) -> usize {
        self.entries
    }

    /// Number of filter shapes indexed by hash.
    pub fn hashed_shapes(&self) -> usize {
        self.shapes.len()
    }

    /// Changes whenever any answer changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

mod cache;

pub use cache::{INTEREST_CACHE_CAPACITY, InterestCache};

#[cfg(test)]
mod tests;
