//! The level arena: one tree of topic levels that a shard's subscription trie (`trie.rs`)
//! and its replica of the retained store (`retained.rs`) both hang their data on.
//!
//! Owns the nodes, the literal-child maps (a level's bytes are stored once per parent,
//! whichever side added it: a retained topic `a/b/c` and a filter `a/b/c` or `a/b/+` share
//! the nodes of `a` and `a/b`), the node and map free lists, and the pruning of nodes.
//!
//! Layout: an arena of 32-byte nodes addressed by `u32`. A node has
//! - literal children: an index into `maps` (a slab of `LevelMap`s; `None` until the first
//!   child, so leaves stay small);
//! - the `+` and `#` edges, only where filters need them (topic names never take them);
//! - the entries of the filters that end at the node (`Entries`);
//! - a retained slot: an index into `slots`, set while a retained message is at or below the
//!   node (the slot counts them), so that a wildcard lookup of retained messages walks only
//!   the branches that hold some and never the subscription-only ones below them.
//!
//! Each side keeps its own operations and counts; a node is freed only when neither uses it
//! (`is_unused`: no entries, no retained slot, no child of any kind).
//!
//! Must never: recurse over levels (topics and filters may have tens of thousands of levels,
//! bad input #38), keep a node that neither side reaches (bad input #58/#59), or free one
//! that the other side still uses.

use std::num::NonZeroU32;

use super::LevelMap;
use super::retained::RetainedMessage;

/// Index of a non-root node. The root is node 0 and is never a child, so child links use
/// `NonZeroU32` and `Option<NodeId>` costs four bytes.
pub(super) type NodeId = NonZeroU32;

pub(super) const ROOT: usize = 0;

#[derive(Debug)]
pub(super) struct Node<K, V> {
    /// Literal children: index into `LevelArena::maps` (slot 0 is never used); `None`
    /// until the first child. Four bytes where a `Box` of the map took eight: they pay for
    /// the retained slot.
    pub(super) children: Option<NonZeroU32>,
    /// The `+` child.
    pub(super) plus: Option<NodeId>,
    /// The `#` child: the node of the filters that end here with a further `/#` (or of `#`
    /// alone, at the root). It has entries and nothing else [MQTT-4.7.1-2].
    pub(super) hash: Option<NodeId>,
    /// Index into `LevelArena::slots` while a retained message is at or below this node.
    pub(super) retained: Option<NonZeroU32>,
    /// Entries of the filters that end exactly at this node.
    pub(super) entries: Entries<(K, V)>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: None,
            plus: None,
            hash: None,
            retained: None,
            entries: Entries::Empty,
        }
    }

    /// Neither side uses the node: no entry, no retained message at or below, no child.
    /// (An empty child map is freed at once, so `children` is `None` when there is none.)
    fn is_unused(&self) -> bool {
        self.entries.is_empty()
            && self.retained.is_none()
            && self.hash.is_none()
            && self.plus.is_none()
            && self.children.is_none()
    }
}

/// The retained side of a node on the path to a retained message.
#[derive(Debug, Default)]
pub(super) struct RetainedSlot {
    /// Retained messages at or below the node (its own included); the slot is freed at 0.
    pub(super) below: u32,
    /// The node's own message. Boxed: the nodes above a message carry a slot too, and a
    /// message is about 250 bytes.
    pub(super) message: Option<Box<RetainedMessage>>,
}

/// One entry list of a node: most filters have a single entry (a device's own topic, or one
/// shard's bit in a replica of the interest index), so one is kept inline and only a second
/// allocates. Against a `Vec` (which allocates room for four at the first push) this saves
/// the allocation and, for small entries, half of the node (`benches/subscriptions.rs`).
#[derive(Debug, Default)]
pub(super) enum Entries<T> {
    #[default]
    Empty,
    One(T),
    /// Two or more; boxed so that the inline case decides the size (8 bytes, not a `Vec`'s 24).
    #[allow(clippy::box_collection)]
    Many(Box<Vec<T>>),
}

impl<T> Entries<T> {
    pub(super) fn as_slice(&self) -> &[T] {
        match self {
            Entries::Empty => &[],
            Entries::One(t) => std::slice::from_ref(t),
            Entries::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Entries::Empty => &mut [],
            Entries::One(t) => std::slice::from_mut(t),
            Entries::Many(v) => v,
        }
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.as_mut_slice().iter_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Entries::Empty)
    }

    pub(super) fn push(&mut self, t: T) {
        *self = match std::mem::take(self) {
            Entries::Empty => Entries::One(t),
            Entries::One(first) => Entries::Many(Box::new(vec![first, t])),
            Entries::Many(mut v) => {
                v.push(t);
                Entries::Many(v)
            }
        };
    }

    /// Removes entry `i` (the last takes its place); `None` when there is none.
    pub(super) fn swap_remove(&mut self, i: usize) -> Option<T> {
        let (taken, rest) = match std::mem::take(self) {
            Entries::Empty => (None, Entries::Empty),
            Entries::One(t) if i == 0 => (Some(t), Entries::Empty),
            one @ Entries::One(_) => (None, one),
            Entries::Many(mut v) if i < v.len() => {
                let t = v.swap_remove(i);
                let rest = match v.len() {
                    0 => Entries::Empty,
                    1 => v.pop().map_or(Entries::Empty, Entries::One),
                    _ => {
                        // Give back what a crowd of subscribers left behind.
                        if v.capacity() > 2 * v.len() {
                            v.shrink_to_fit();
                        }
                        Entries::Many(v)
                    }
                };
                (Some(t), rest)
            }
            many @ Entries::Many(_) => (None, many),
        };
        *self = rest;
        taken
    }
}

/// One step of the path from the root to a node: the edge taken from the parent.
pub(super) enum Edge<'a> {
    Literal(&'a [u8]),
    Plus,
    Hash,
}

/// Counts of the retained side (the limits and `$SYS` read them).
#[derive(Debug, Default)]
pub(super) struct RetainedCounts {
    pub(super) len: usize,
    /// Topic and payload bytes of the messages held.
    pub(super) bytes: usize,
    /// Of `len` and `bytes`, those of `$` topics: the broker's own (`$SYS`), which clients
    /// cannot publish to and the retained limits do not bound.
    pub(super) dollar_len: usize,
    pub(super) dollar_bytes: usize,
}

/// One tree of topic levels with filter entries `(K, V)` and retained messages on its nodes.
/// `Trie<K, V>` is this type: its own methods are the subscription side (`trie.rs`);
/// `retained()` / `retained_mut()` are the retained side (`retained.rs`).
#[derive(Debug)]
pub struct LevelArena<K, V> {
    pub(super) nodes: Vec<Node<K, V>>,
    /// Freed node slots, reused before the arena grows.
    pub(super) free: Vec<u32>,
    /// Literal-child maps; slot 0 is a placeholder so that indices are non-zero.
    maps: Vec<LevelMap<NodeId>>,
    free_maps: Vec<u32>,
    /// Retained slots; slot 0 is a placeholder so that indices are non-zero.
    pub(super) slots: Vec<RetainedSlot>,
    free_slots: Vec<u32>,
    /// Number of filter entries over all filters.
    pub(super) len: usize,
    pub(super) retained: RetainedCounts,
    /// Work space of `retained_mut().set`: the nodes of the topic's path.
    pub(super) path: Vec<u32>,
}

impl<K, V> Default for LevelArena<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> LevelArena<K, V> {
    pub fn new() -> Self {
        LevelArena {
            nodes: vec![Node::new()],
            free: Vec::new(),
            maps: vec![LevelMap::default()],
            free_maps: Vec::new(),
            slots: vec![RetainedSlot::default()],
            free_slots: Vec::new(),
            len: 0,
            retained: RetainedCounts::default(),
            path: Vec::new(),
        }
    }

    /// Live nodes, root included: 1 when empty. For leak tests and memory figures.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// The literal child `level` of `node`.
    #[inline]
    pub(super) fn child(&self, node: usize, level: &[u8]) -> Option<NodeId> {
        self.child_in(self.nodes[node].children, level)
    }

    /// The literal child `level` in a node's `children`.
    #[inline]
    pub(super) fn child_in(&self, children: Option<NonZeroU32>, level: &[u8]) -> Option<NodeId> {
        let map = children?;
        self.maps[map.get() as usize].get(level).copied()
    }

    /// The literal children of `node`, with their level bytes.
    pub(super) fn children(&self, node: usize) -> impl Iterator<Item = (&[u8], NodeId)> {
        self.nodes[node]
            .children
            .into_iter()
            .flat_map(|m| self.maps[m.get() as usize].iter())
            .map(|(level, &c)| (&**level, c))
    }

    pub(super) fn literal_child_or_insert(&mut self, node: usize, level: &[u8]) -> usize {
        if let Some(c) = self.child(node, level) {
            return c.get() as usize;
        }
        let id = self.alloc();
        let map = match self.nodes[node].children {
            Some(m) => m,
            None => {
                let m = match self.free_maps.pop() {
                    Some(i) => i,
                    None => {
                        self.maps.push(LevelMap::default());
                        u32::try_from(self.maps.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                // Slot 0 is the placeholder and is never handed out, so `m >= 1`.
                let m = NonZeroU32::new(m).unwrap_or(NonZeroU32::MIN);
                self.nodes[node].children = Some(m);
                m
            }
        };
        self.maps[map.get() as usize].insert(level.into(), id);
        id.get() as usize
    }

    pub(super) fn hash_child_or_insert(&mut self, node: usize) -> usize {
        if let Some(h) = self.nodes[node].hash {
            return h.get() as usize;
        }
        let id = self.alloc();
        self.nodes[node].hash = Some(id);
        id.get() as usize
    }

    pub(super) fn plus_child_or_insert(&mut self, node: usize) -> usize {
        if let Some(p) = self.nodes[node].plus {
            return p.get() as usize;
        }
        let id = self.alloc();
        self.nodes[node].plus = Some(id);
        id.get() as usize
    }

    fn alloc(&mut self) -> NodeId {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node::new());
                // More than 4e9 nodes cannot fit in memory long before this overflows.
                u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
            }
        };
        // Slot 0 is the root and is never freed, so `idx >= 1`.
        NodeId::new(idx).unwrap_or(NodeId::MIN)
    }

    /// A free retained slot, counting no message yet.
    pub(super) fn alloc_slot(&mut self) -> NonZeroU32 {
        let idx = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(RetainedSlot::default());
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        NonZeroU32::new(idx).unwrap_or(NonZeroU32::MIN)
    }

    pub(super) fn free_slot(&mut self, slot: NonZeroU32) {
        self.slots[slot.get() as usize] = RetainedSlot::default();
        self.free_slots.push(slot.get());
    }

    /// Frees `node` and its ancestors while neither side uses them, bottom-up along `path`
    /// (the parent of each step and the edge taken).
    pub(super) fn prune(&mut self, mut node: usize, mut path: Vec<(usize, Edge<'_>)>) {
        while node != ROOT && self.nodes[node].is_unused() {
            let Some((parent, edge)) = path.pop() else {
                return;
            };
            let p = &mut self.nodes[parent];
            match edge {
                Edge::Plus => p.plus = None,
                Edge::Hash => p.hash = None,
                Edge::Literal(level) => {
                    if let Some(m) = p.children {
                        let map = &mut self.maps[m.get() as usize];
                        map.remove(level);
                        if map.is_empty() {
                            // A fresh map: the emptied one's table goes back to the allocator.
                            *map = LevelMap::default();
                            self.free_maps.push(m.get());
                            p.children = None;
                        }
                    }
                }
            }
            self.nodes[node] = Node::new();
            // Node ids fit in u32: `alloc` never hands out more.
            self.free.push(node as u32);
            node = parent;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::model::{PublishProperties, QoS};
    use crate::router::delivery::Subscription;
    use crate::router::retained::RetainedStack;
    use crate::router::topic::{TopicFilter, TopicName};
    use crate::router::trie::MatchStack;

    #[test]
    fn node_is_32_bytes() {
        // What a shard's local trie pays per node (one or two per distinct filter), with the
        // retained slot in it.
        assert_eq!(std::mem::size_of::<Node<u32, Subscription>>(), 32);
        assert_eq!(std::mem::size_of::<Node<u32, ()>>(), 32);
        assert_eq!(std::mem::size_of::<RetainedSlot>(), 16);
    }

    fn msg(topic: &'static str) -> RetainedMessage {
        RetainedMessage {
            topic: TopicName::from_static(topic),
            payload: Bytes::from_static(b"v"),
            qos: QoS::AtMostOnce,
            properties: PublishProperties::default(),
            expires_at: None,
        }
    }

    fn f(s: &'static str) -> TopicFilter {
        TopicFilter::from_static(s)
    }

    fn subs(a: &LevelArena<u32, u8>, topic: &'static str) -> Vec<u32> {
        let mut out = Vec::new();
        a.match_topic(
            &TopicName::from_static(topic),
            &mut MatchStack::default(),
            |k, _| out.push(k),
        );
        out.sort_unstable();
        out
    }

    fn retained(a: &LevelArena<u32, u8>, filter: &'static str) -> Vec<String> {
        let mut out = Vec::new();
        a.retained()
            .for_each_matching(&f(filter), 0, &mut RetainedStack::default(), |m| {
                out.push(m.topic.as_str().to_owned())
            });
        out.sort_unstable();
        out
    }

    #[test]
    fn a_retained_topic_and_a_filter_share_their_levels() {
        let mut a: LevelArena<u32, u8> = LevelArena::new();
        a.insert(&f("a/b/c"), 1, 0);
        assert_eq!(a.node_count(), 4);
        a.retained_mut().set(msg("a/b/c"));
        // Same levels, same nodes: nothing added.
        assert_eq!(a.node_count(), 4);
        // `a/b/+` adds only its `+` node; `a/b/d` only `d`.
        a.insert(&f("a/b/+"), 2, 0);
        a.retained_mut().set(msg("a/b/d"));
        assert_eq!(a.node_count(), 6);
        assert_eq!(subs(&a, "a/b/c"), [1, 2]);
        assert_eq!(subs(&a, "a/b/d"), [2]);
        assert_eq!(retained(&a, "a/b/+"), ["a/b/c", "a/b/d"]);
        assert_eq!(retained(&a, "#"), ["a/b/c", "a/b/d"]);
        assert_eq!((a.len(), a.retained().len()), (2, 2));
    }

    #[test]
    fn removing_one_side_keeps_the_other() {
        let mut a: LevelArena<u32, u8> = LevelArena::new();
        a.insert(&f("a/b/c"), 1, 0);
        a.retained_mut().set(msg("a/b/c"));
        // The subscription goes: the message and its nodes stay.
        assert!(a.remove(&f("a/b/c"), 1).is_some());
        assert_eq!(a.node_count(), 4);
        assert_eq!(subs(&a, "a/b/c"), Vec::<u32>::new());
        assert_eq!(retained(&a, "a/b/c"), ["a/b/c"]);
        // Back again, then the message goes: the subscription and its nodes stay.
        a.insert(&f("a/b/c"), 1, 0);
        assert!(
            a.retained_mut()
                .remove(&TopicName::from_static("a/b/c"))
                .is_some()
        );
        assert_eq!(a.node_count(), 4);
        assert_eq!(subs(&a, "a/b/c"), [1]);
        assert_eq!(retained(&a, "#"), Vec::<String>::new());
        assert!(a.retained().get(&TopicName::from_static("a/b/c")).is_none());
    }

    #[test]
    fn nodes_go_only_when_both_sides_are_gone() {
        let mut a: LevelArena<u32, u8> = LevelArena::new();
        a.insert(&f("a/b/#"), 1, 0);
        a.insert(&f("a/+"), 2, 0);
        a.retained_mut().set(msg("a/b/c"));
        a.retained_mut().set(msg("a"));
        // root, a, a/b, a/b/#, a/+, a/b/c.
        assert_eq!(a.node_count(), 6);
        assert!(a.remove(&f("a/b/#"), 1).is_some());
        // `#` goes; `a/b` stays for the message below it.
        assert_eq!(a.node_count(), 5);
        a.retained_mut().remove(&TopicName::from_static("a/b/c"));
        // `a/b/c` and `a/b` go; `a` holds a message and the `+` edge.
        assert_eq!(a.node_count(), 3);
        a.retained_mut().remove(&TopicName::from_static("a"));
        assert_eq!(a.node_count(), 3);
        assert!(a.remove(&f("a/+"), 2).is_some());
        assert_eq!(a.node_count(), 1);
        assert_eq!((a.len(), a.retained().len()), (0, 0));
        // Maps and slots are reused, not grown.
        let (maps, slots) = (a.maps.len(), a.slots.len());
        a.retained_mut().set(msg("x/y/z"));
        a.insert(&f("x/y/+"), 1, 0);
        assert_eq!((a.maps.len(), a.slots.len()), (maps, slots));
    }

    #[test]
    fn retained_lookups_skip_branches_with_subscriptions_only() {
        let mut a: LevelArena<u32, u8> = LevelArena::new();
        for i in 0..100 {
            let filter: &'static str = Box::leak(format!("a/s{i}/x").into_boxed_str());
            a.insert(&f(filter), i, 0);
        }
        a.retained_mut().set(msg("a/r/x"));
        // Only the retained path carries slots: root's child `a`, `a/r`, `a/r/x`.
        assert_eq!(a.nodes.iter().filter(|n| n.retained.is_some()).count(), 3);
        assert_eq!(retained(&a, "#"), ["a/r/x"]);
        assert_eq!(retained(&a, "a/+/x"), ["a/r/x"]);
        assert_eq!(retained(&a, "a/s1/x"), Vec::<String>::new());
    }

    #[test]
    fn dollar_topics_stay_hidden_from_first_level_wildcards() {
        // [MQTT-4.7.2-1] for retained-on-subscribe, with filters on the same levels.
        let mut a: LevelArena<u32, u8> = LevelArena::new();
        a.insert(&f("$SYS/broker/+"), 1, 0);
        a.insert(&f("+/broker/load"), 2, 0);
        a.retained_mut().set(msg("$SYS/broker/load"));
        a.retained_mut().set(msg("x/broker/load"));
        assert_eq!(retained(&a, "#"), ["x/broker/load"]);
        assert_eq!(retained(&a, "+/broker/load"), ["x/broker/load"]);
        assert_eq!(retained(&a, "+/#"), ["x/broker/load"]);
        assert_eq!(retained(&a, "$SYS/#"), ["$SYS/broker/load"]);
        assert_eq!(retained(&a, "$SYS/broker/+"), ["$SYS/broker/load"]);
        assert_eq!(subs(&a, "$SYS/broker/load"), [1]);
        assert_eq!(subs(&a, "x/broker/load"), [2]);
    }

    #[test]
    fn deep_shared_levels_do_not_recurse() {
        let mut a: LevelArena<u32, u8> = LevelArena::new();
        let topic: &'static str = Box::leak(("d/".repeat(20_000) + "x").into_boxed_str());
        let filter: &'static str = Box::leak(("d/".repeat(20_000) + "+").into_boxed_str());
        a.insert(&f(filter), 1, 0);
        a.retained_mut().set(msg(topic));
        assert_eq!(subs(&a, topic), [1]);
        assert_eq!(retained(&a, "#").len(), 1);
        assert_eq!(retained(&a, filter).len(), 1);
        assert!(a.remove(&f(filter), 1).is_some());
        assert!(
            a.retained_mut()
                .remove(&TopicName::from_static(topic))
                .is_some()
        );
        assert_eq!(a.node_count(), 1);
        drop(a);
    }
}
