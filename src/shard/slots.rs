//! `Slots<K, T>`: the slab of a shard's connections and clients, in fixed-size chunks.
//!
//! Owns: stable keys for values, of the slab's own id type `K` (`ids::SlotKey`: `ConnId`,
//! `ClientSlot`; a freed key is reused, newest first), storage that grows one chunk at a
//! time and never moves what it holds.
//!
//! Why not one growing vector: doubling a vector of 100k+ connections copies all of them in
//! one step (a pause of the shard that grows with the connection count) and leaves the old
//! buffer to the allocator, which returns it to the system only at a later allocation: idle
//! RSS then jumps at every power of two (measured, 1 shard: 9,000 idle connections 11.5 MB,
//! 15,000 11.2 MB). Chunks grow RSS by what is used, nothing more.
//!
//! Must never: hand out a key that is in use, or move a value once inserted.

/// Values per chunk: 1,024 connections (about 112 KB) or clients (about 300 KB) per step.
const CHUNK: usize = 1024;

use std::marker::PhantomData;

use super::ids::SlotKey;

/// No free key.
const NONE: u32 = u32::MAX;

#[derive(Debug)]
enum Entry<T> {
    /// Free; `next` is the next free key (`NONE`: the last).
    Vacant {
        next: u32,
    },
    Occupied(T),
}

/// A slab in chunks of `CHUNK` entries, keyed by `K`.
#[derive(Debug)]
pub(crate) struct Slots<K, T> {
    /// Every chunk but the last holds exactly `CHUNK` entries; each was allocated with
    /// room for `CHUNK`, so pushing never reallocates.
    chunks: Vec<Vec<Entry<T>>>,
    /// Head of the free list.
    free: u32,
    len: usize,
    key: PhantomData<fn() -> K>,
}

impl<K, T> Default for Slots<K, T> {
    fn default() -> Self {
        Slots {
            chunks: Vec::new(),
            free: NONE,
            len: 0,
            key: PhantomData,
        }
    }
}

impl<K: SlotKey, T> Slots<K, T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key the next `insert` returns.
    pub(crate) fn next_key(&self) -> K {
        if self.free != NONE {
            return K::from_index(self.free as usize);
        }
        K::from_index(match self.chunks.last() {
            Some(last) => (self.chunks.len() - 1) * CHUNK + last.len(),
            None => 0,
        })
    }

    /// Stores `value`; returns its key (the one `next_key` named).
    pub(crate) fn insert(&mut self, value: T) -> K {
        self.len += 1;
        if self.free != NONE {
            let key = self.free as usize;
            let chunks = &mut self.chunks;
            if let Some(entry) = chunks
                .get_mut(key / CHUNK)
                .and_then(|c| c.get_mut(key % CHUNK))
                && let Entry::Vacant { next } = *entry
            {
                self.free = next;
                *entry = Entry::Occupied(value);
                return K::from_index(key);
            }
            // Unreachable: the free list names only vacant entries. Forget the list rather
            // than overwrite a value (values stay where they are: nothing is lost, the
            // slab only grows instead of reusing).
            super::core::broken_invariant(
                None,
                format_args!("the slab's free list names key {key}, which is occupied"),
            );
            self.free = NONE;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk_index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[chunk_index];
        chunk.push(Entry::Occupied(value));
        K::from_index(chunk_index * CHUNK + chunk.len() - 1)
    }

    fn entry(&self, key: K) -> Option<&Entry<T>> {
        let index = key.index();
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    fn entry_mut(&mut self, key: K) -> Option<&mut Entry<T>> {
        let index = key.index();
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    pub(crate) fn get(&self, key: K) -> Option<&T> {
        match self.entry(key)? {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: K) -> Option<&mut T> {
        match self.entry_mut(key)? {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }

    /// Removes and returns the value of `key`, if there is one; the key becomes free.
    pub(crate) fn try_remove(&mut self, key: K) -> Option<T> {
        let free = self.free;
        let entry = self.entry_mut(key)?;
        if matches!(entry, Entry::Vacant { .. }) {
            return None;
        }
        let Entry::Occupied(value) = std::mem::replace(entry, Entry::Vacant { next: free }) else {
            return None;
        };
        // Below `u32::MAX` (`SlotKey::from_index`).
        self.free = key.index() as u32;
        self.len -= 1;
        Some(value)
    }

    /// Every value with its key, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter_map(move |(i, entry)| match entry {
                    Entry::Occupied(value) => Some((K::from_index(c * CHUNK + i), value)),
                    Entry::Vacant { .. } => None,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain indexes as keys, for the tests.
    impl SlotKey for usize {
        fn from_index(index: usize) -> usize {
            index
        }

        fn index(self) -> usize {
            self
        }
    }

    /// Against a model (a map of key -> value), through several chunks: inserts return the
    /// announced keys, never a key in use; removals free keys for reuse; lookups of free
    /// and never-used keys find nothing; iteration lists exactly the live values.
    #[test]
    fn behaves_like_a_map_of_unique_keys() {
        use std::collections::BTreeMap;
        let mut slots = Slots::<usize, _>::new();
        let mut model = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng.is_multiple_of(3) && !model.is_empty() {
                let nth = (rng / 3) as usize % model.len();
                let key = *model.keys().nth(nth).expect("key");
                assert_eq!(slots.try_remove(key), model.remove(&key));
                assert_eq!(slots.try_remove(key), None, "removed twice");
            } else {
                let announced = slots.next_key();
                let key = slots.insert(step);
                assert_eq!(key, announced);
                assert!(model.insert(key, step).is_none(), "key {key} was in use");
            }
            assert_eq!(slots.len(), model.len());
        }
        assert!(model.len() > CHUNK, "the test spans several chunks");
        for key in 0..slots.chunks.len() * CHUNK + 10 {
            assert_eq!(slots.get(key), model.get(&key));
        }
        let listed: Vec<(usize, u64)> = slots.iter().map(|(k, v)| (k, *v)).collect();
        let expected: Vec<(usize, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(listed, expected);
        if let Some((&key, _)) = model.iter().next() {
            *slots.get_mut(key).expect("live") = 7;
            assert_eq!(slots.get(key), Some(&7));
        }
    }

    /// Values never move: a chunk is allocated with room for all its entries.
    #[test]
    fn values_stay_in_place_as_the_slab_grows() {
        let mut slots = Slots::<usize, _>::new();
        let first = slots.insert(1u64);
        let at: *const u64 = slots.get(first).expect("live");
        for i in 0..(3 * CHUNK as u64) {
            slots.insert(i);
        }
        assert!(std::ptr::eq(at, slots.get(first).expect("live")));
        assert!(slots.chunks.iter().all(|c| c.capacity() == CHUNK));
    }

    #[test]
    fn empty_and_out_of_range() {
        let mut slots: Slots<usize, u8> = Slots::new();
        assert!(slots.is_empty());
        assert_eq!(slots.get(0), None);
        assert_eq!(slots.try_remove(5), None);
        assert_eq!(slots.next_key(), 0);
        assert_eq!(slots.iter().count(), 0);
    }
}
