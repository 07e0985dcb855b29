//! The filter trie: topic filters -> entries `(K, V)`, matched against topic names.
//!
//! Owns the subscription side of a `LevelArena` (`levels.rs`): the entries hung on its nodes,
//! the `+` and `#` edges, insert / remove / match. One instance per use: a shard's local
//! subscriptions (`Trie<u32, Subscription>`, whose arena also carries the shard's replica of
//! the retained store, `retained.rs`), the shared-subscription groups and the shard-interest
//! index are all tries with different entry types.
//!
//! Layout: each node has its literal children, one `+` child, one `#` child and one entry
//! list (the filters that end at this node). A `#` node never has children [MQTT-4.7.1-2]: it
//! only holds the entries of the filters that end with that `#`. Keeping the `#` filters in a
//! node of their own rather than in a second list on every node keeps a node at 32 bytes for
//! `Trie<u32, Subscription>` (48 with two lists), retained slot included; a shard's local trie
//! holds one or two nodes per distinct filter, so that is 16-32 B per subscription
//! (`levels.rs`, `node_is_32_bytes`), and the levels a retained topic already has cost nothing.
//!
//! Must never: recurse (filters and topics may have tens of thousands of levels, bad input
//! #38), allocate while matching once the caller's `MatchStack` has grown, or keep a node that
//! neither a filter nor a retained message reaches (bad input #58/#59: removal frees unused
//! nodes).

use super::levels::{Edge, LevelArena, ROOT};
use super::topic::{TopicFilter, TopicName};

/// What `insert` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted<V> {
    /// A new entry. `first_for_filter`: the filter had no entry before (a shard announces
    /// its interest in the filter now).
    New { first_for_filter: bool },
    /// The key already had an entry for this filter; it was replaced [MQTT-3.8.4-3].
    Replaced(V),
}

/// What `remove` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed<V> {
    pub value: V,
    /// The filter has no entry left (a shard withdraws its interest in the filter now).
    pub last_for_filter: bool,
}

/// Reusable work space for matching: the explicit stack that replaces recursion. Keep one per
/// shard and pass it to every match; it only grows.
#[derive(Debug, Default)]
pub struct MatchStack {
    /// (node, byte offset of the next topic level; `topic.len() + 1` once all are consumed).
    frames: Vec<(u32, u32)>,
    /// (start, end) byte offsets of a topic's levels, for `InterestIndex::shards_for`.
    pub(super) levels: Vec<(u32, u32)>,
}

/// Topic filters mapped to entries `(K, V)`; at most one entry per (filter, key). The
/// subscription side of a level arena: the arena's own methods below.
pub type Trie<K, V> = LevelArena<K, V>;

impl<K: Copy + Eq, V> LevelArena<K, V> {
    /// Number of entries (filter, key) over all filters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the entry of `key` under the matched part of `filter`
    /// (`filter_bytes()`: the caller keeps `$share` groups apart, see `shared.rs`).
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Inserted<V> {
        let mut node = ROOT;
        for level in filter.levels() {
            node = match level {
                // Valid filters have `#` only as the last level.
                b"#" => self.hash_child_or_insert(node),
                b"+" => self.plus_child_or_insert(node),
                _ => self.literal_child_or_insert(node, level),
            };
        }
        let list = &mut self.nodes[node].entries;
        if let Some(slot) = list.iter_mut().find(|(k, _)| *k == key) {
            return Inserted::Replaced(std::mem::replace(&mut slot.1, value));
        }
        let first_for_filter = list.is_empty();
        list.push((key, value));
        self.len += 1;
        Inserted::New { first_for_filter }
    }

    /// Removes the entry of `key` under `filter`, then frees the nodes left unused.
    pub fn remove(&mut self, filter: &TopicFilter, key: K) -> Option<Removed<V>> {
        let mut path: Vec<(usize, Edge<'_>)> = Vec::new();
        let mut node = ROOT;
        for level in filter.levels() {
            let next = match level {
                b"#" => {
                    let next = self.nodes[node].hash?;
                    path.push((node, Edge::Hash));
                    next
                }
                b"+" => {
                    let next = self.nodes[node].plus?;
                    path.push((node, Edge::Plus));
                    next
                }
                _ => {
                    let next = self.child(node, level)?;
                    path.push((node, Edge::Literal(level)));
                    next
                }
            };
            node = next.get() as usize;
        }
        let list = &mut self.nodes[node].entries;
        let pos = list.iter().position(|(k, _)| *k == key)?;
        let (_, value) = list.swap_remove(pos)?;
        let last_for_filter = list.is_empty();
        self.len -= 1;
        self.prune(node, path);
        Some(Removed {
            value,
            last_for_filter,
        })
    }

    /// The entry of `key` under `filter`, if any.
    pub fn get(&self, filter: &TopicFilter, key: K) -> Option<&V> {
        let node = self.find(filter)?;
        self.nodes[node]
            .entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Mutable access to the entry of `key` under `filter`, if any.
    pub fn get_mut(&mut self, filter: &TopicFilter, key: K) -> Option<&mut V> {
        let node = self.find(filter)?;
        self.nodes[node]
            .entries
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Number of entries under `filter`.
    pub fn filter_len(&self, filter: &TopicFilter) -> usize {
        self.find(filter)
            .map_or(0, |node| self.nodes[node].entries.len())
    }

    /// The node of `filter`.
    fn find(&self, filter: &TopicFilter) -> Option<usize> {
        let mut node = ROOT;
        for level in filter.levels() {
            let next = match level {
                b"#" => self.nodes[node].hash?,
                b"+" => self.nodes[node].plus?,
                _ => self.child(node, level)?,
            };
            node = next.get() as usize;
        }
        Some(node)
    }

    /// The entries of the `#` child of `n`, if it has one.
    fn hash_entries(&self, n: &super::levels::Node<K, V>) -> &[(K, V)] {
        n.hash
            .map_or(&[], |h| self.nodes[h.get() as usize].entries.as_slice())
    }

    /// Calls `visit` once for every entry whose filter matches `topic` [MQTT-4.7]; wildcards
    /// at the first level skip `$` topics [MQTT-4.7.2-1]. Order is unspecified.
    pub fn match_topic(
        &self,
        topic: &TopicName,
        stack: &mut MatchStack,
        mut visit: impl FnMut(K, &V),
    ) {
        let t = topic.as_bytes();
        // Topic names are at most 65535 bytes, so offsets fit in u32.
        let end = t.len() as u32 + 1;
        let dollar = topic.is_dollar();
        stack.frames.clear();
        stack.frames.push((ROOT as u32, 0));
        while let Some((node, pos)) = stack.frames.pop() {
            let n = &self.nodes[node as usize];
            if pos == end {
                // All levels consumed: filters ending here, and `x/#` matching its parent `x`.
                n.entries
                    .iter()
                    .chain(self.hash_entries(n))
                    .for_each(|(k, v)| visit(*k, v));
                continue;
            }
            let wildcards_ok = !(dollar && pos == 0);
            if wildcards_ok {
                self.hash_entries(n).iter().for_each(|(k, v)| visit(*k, v));
            }
            let start = pos as usize;
            let level_end = t[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(t.len(), |i| start + i);
            let next = level_end as u32 + 1;
            if let (true, Some(plus)) = (wildcards_ok, n.plus) {
                stack.frames.push((plus.get(), next));
            }
            if let Some(child) = self.child_in(n.children, &t[start..level_end]) {
                stack.frames.push((child.get(), next));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> TopicFilter {
        TopicFilter::from_static(s)
    }

    fn matches(trie: &Trie<u32, u8>, topic: &'static str) -> Vec<(u32, u8)> {
        let mut out = Vec::new();
        let mut stack = MatchStack::default();
        trie.match_topic(&TopicName::from_static(topic), &mut stack, |k, v| {
            out.push((k, *v))
        });
        out.sort_unstable();
        out
    }

    /// The filters `sample()` holds, at their index as key.
    const SAMPLE_FILTERS: [&str; 14] = [
        "#",
        "+",
        "+/+",
        "/#",
        "a",
        "a/#",
        "a/+",
        "a/b",
        "a//b",
        "a/+/c",
        "$SYS/#",
        "+/monitor/Clients",
        "$SYS/monitor/+",
        "sport/tennis/player1/#",
    ];

    fn sample() -> Trie<u32, u8> {
        let mut t = Trie::new();
        let filters = SAMPLE_FILTERS;
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(
                t.insert(&f(filter), i as u32, 0),
                Inserted::New {
                    first_for_filter: true
                }
            );
        }
        t
    }

    fn keys(v: Vec<(u32, u8)>) -> Vec<u32> {
        v.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn match_agrees_with_spec_cases() {
        let t = sample();
        // Indices into `sample()`'s filter list.
        assert_eq!(keys(matches(&t, "a")), [0, 1, 4, 5]);
        assert_eq!(keys(matches(&t, "a/b")), [0, 2, 5, 6, 7]);
        assert_eq!(keys(matches(&t, "a/")), [0, 2, 5, 6]);
        assert_eq!(keys(matches(&t, "a//b")), [0, 5, 8]);
        assert_eq!(keys(matches(&t, "a/x/c")), [0, 5, 9]);
        assert_eq!(keys(matches(&t, "/x")), [0, 2, 3]);
        assert_eq!(keys(matches(&t, "/")), [0, 2, 3]);
        assert_eq!(keys(matches(&t, "$SYS/monitor/Clients")), [10, 12]);
        assert_eq!(keys(matches(&t, "$SYS")), [10]);
        assert_eq!(keys(matches(&t, "$other")), Vec::<u32>::new());
        assert_eq!(keys(matches(&t, "x/monitor/Clients")), [0, 11]);
        assert_eq!(keys(matches(&t, "sport/tennis/player1")), [0, 13]);
        assert_eq!(
            keys(matches(&t, "sport/tennis/player1/score/wimbledon")),
            [0, 13]
        );
    }

    #[test]
    fn match_agrees_with_topic_matches() {
        let t = sample();
        let filters = SAMPLE_FILTERS;
        let topics = [
            "a",
            "a/b",
            "a/",
            "/",
            "//",
            "a/b/c",
            "$SYS/x",
            "b",
            "a/x/c/d",
            "x/monitor/Clients",
        ];
        for topic in topics {
            let want: Vec<u32> = (0..filters.len() as u32)
                .filter(|&i| {
                    super::super::topic::topic_matches(
                        filters[i as usize].as_bytes(),
                        topic.as_bytes(),
                    )
                })
                .collect();
            assert_eq!(keys(matches(&t, topic)), want, "topic {topic:?}");
        }
    }

    #[test]
    fn insert_replaces_per_key_and_reports_first_and_last() {
        let mut t: Trie<u32, u8> = Trie::new();
        assert_eq!(
            t.insert(&f("a/+"), 1, 10),
            Inserted::New {
                first_for_filter: true
            }
        );
        assert_eq!(
            t.insert(&f("a/+"), 2, 20),
            Inserted::New {
                first_for_filter: false
            }
        );
        assert_eq!(t.insert(&f("a/+"), 1, 11), Inserted::Replaced(10));
        assert_eq!(t.len(), 2);
        assert_eq!(t.filter_len(&f("a/+")), 2);
        assert_eq!(t.get(&f("a/+"), 1), Some(&11));
        if let Some(v) = t.get_mut(&f("a/+"), 2) {
            *v = 21;
        }
        assert_eq!(matches(&t, "a/x"), [(1, 11), (2, 21)]);
        assert_eq!(
            t.remove(&f("a/+"), 1),
            Some(Removed {
                value: 11,
                last_for_filter: false
            })
        );
        assert_eq!(t.remove(&f("a/+"), 1), None);
        assert_eq!(
            t.remove(&f("a/+"), 2),
            Some(Removed {
                value: 21,
                last_for_filter: true
            })
        );
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn exact_and_hash_under_same_node_are_distinct_filters() {
        let mut t: Trie<u32, u8> = Trie::new();
        t.insert(&f("a"), 1, 0);
        t.insert(&f("a/#"), 1, 1);
        assert_eq!(matches(&t, "a"), [(1, 0), (1, 1)]);
        assert_eq!(
            t.remove(&f("a/#"), 1).map(|r| r.last_for_filter),
            Some(true)
        );
        assert_eq!(matches(&t, "a"), [(1, 0)]);
        assert_eq!(t.remove(&f("a"), 1).map(|r| r.value), Some(0));
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn remove_of_unknown_filter_changes_nothing() {
        let mut t: Trie<u32, u8> = Trie::new();
        t.insert(&f("a/b"), 1, 0);
        assert_eq!(t.remove(&f("a/c"), 1), None);
        assert_eq!(t.remove(&f("a/+"), 1), None);
        assert_eq!(t.remove(&f("a/#"), 1), None);
        assert_eq!(t.remove(&f("a/b"), 2), None);
        assert_eq!(t.node_count(), 3);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn subscribe_unsubscribe_sequence_frees_nodes() {
        // bad input #59: SUB three filters, UNSUB the first, SUB the third again.
        let mut t: Trie<u32, u8> = Trie::new();
        for filter in ["drash/1/#", "erash/2/#", "crash/3/#"] {
            t.insert(&f(filter), 7, 0);
        }
        assert!(t.remove(&f("drash/1/#"), 7).is_some());
        assert_eq!(t.insert(&f("crash/3/#"), 7, 1), Inserted::Replaced(0));
        assert_eq!(keys(matches(&t, "crash/3")), [7]);
        assert_eq!(keys(matches(&t, "drash/1/x")), Vec::<u32>::new());
        for filter in ["erash/2/#", "crash/3/#"] {
            assert!(t.remove(&f(filter), 7).is_some());
        }
        assert_eq!((t.len(), t.node_count()), (0, 1));
        // Freed slots are reused rather than growing the arena.
        let before = t.nodes.len();
        t.insert(&f("x/y/z"), 1, 0);
        assert_eq!(t.nodes.len(), before);
    }

    #[test]
    fn hash_filters_free_their_node() {
        let mut t: Trie<u32, u8> = Trie::new();
        t.insert(&f("#"), 1, 0);
        t.insert(&f("a/#"), 2, 0);
        t.insert(&f("a/+/#"), 3, 0);
        // root, its `#`, a, a's `#`, a's `+`, that one's `#`.
        assert_eq!(t.node_count(), 6);
        assert_eq!(t.filter_len(&f("a/#")), 1);
        assert_eq!(t.get(&f("a/+/#"), 3), Some(&0));
        assert_eq!(t.get(&f("a/+"), 3), None);
        assert_eq!(keys(matches(&t, "a/b")), [1, 2, 3]);
        assert_eq!(keys(matches(&t, "$a/b")), Vec::<u32>::new());
        assert!(t.remove(&f("a/+/#"), 3).is_some());
        assert_eq!(t.node_count(), 4);
        assert!(t.remove(&f("#"), 1).is_some());
        assert_eq!(keys(matches(&t, "a")), [2]);
        assert!(t.remove(&f("a/#"), 2).is_some());
        assert_eq!((t.len(), t.node_count()), (0, 1));
    }

    #[test]
    fn dollar_topics_skip_first_level_wildcards_only() {
        // [MQTT-4.7.2-1]: `#` and `+` at the first level do not match `$` topics; a literal
        // `$` level followed by wildcards does.
        let mut t: Trie<u32, u8> = Trie::new();
        for (i, filter) in ["#", "+/x", "+/+", "$SYS/#", "$SYS/+", "$SYS"]
            .iter()
            .enumerate()
        {
            t.insert(&f(filter), i as u32, 0);
        }
        assert_eq!(keys(matches(&t, "$SYS/x")), [3, 4]);
        assert_eq!(keys(matches(&t, "$SYS")), [3, 5]);
        assert_eq!(keys(matches(&t, "SYS/x")), [0, 1, 2]);
    }

    /// Filters from a small alphabet of levels, so that they share prefixes and wildcards
    /// sit at every depth: `i` in base 5 over `a`, `b`, `+`, `#` (last only) and `$x`.
    fn generated_filter(mut i: usize) -> String {
        const LEVELS: [&str; 5] = ["a", "b", "+", "#", "$x"];
        let mut levels = Vec::new();
        loop {
            levels.push(LEVELS[i % 5]);
            i /= 5;
            if i == 0 {
                break;
            }
            i -= 1;
        }
        // `#` only as the last level.
        let last = levels.len() - 1;
        levels
            .iter()
            .enumerate()
            .map(|(j, l)| if *l == "#" && j != last { "a" } else { l })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn many_filters_match_as_topic_matches_says_and_free_everything() {
        let filters: Vec<&'static str> = (0..3000)
            .map(|i| &*Box::leak(generated_filter(i).into_boxed_str()))
            .collect();
        let topics = [
            "a",
            "b",
            "a/b",
            "a/a/a",
            "b/a/b/a",
            "$x",
            "$x/a",
            "$x/$x/b",
            "a/$x",
            "a/b/a/b/a",
            "x",
            "a//b",
        ];
        let mut t: Trie<u32, u8> = Trie::new();
        // The model: (filter, key) pairs held. Two keys per filter; the second is shared
        // by every seventh filter, and some filters repeat (`Replaced`).
        let mut model = std::collections::BTreeSet::new();
        for (i, filter) in filters.iter().enumerate() {
            for key in [i as u32, 100_000 + (i % 7) as u32] {
                t.insert(&f(filter), key, 0);
                model.insert((*filter, key));
            }
        }
        assert_eq!(t.len(), model.len());
        let check = |t: &Trie<u32, u8>, model: &std::collections::BTreeSet<(&str, u32)>| {
            for topic in topics {
                // One match per (filter, key): sorted, with repeats.
                let mut want: Vec<u32> = model
                    .iter()
                    .filter(|(filter, _)| {
                        super::super::topic::topic_matches(filter.as_bytes(), topic.as_bytes())
                    })
                    .map(|&(_, key)| key)
                    .collect();
                want.sort_unstable();
                assert_eq!(keys(matches(t, topic)), want, "topic {topic:?}");
            }
        };
        check(&t, &model);
        // Remove every other filter's own key, then check again.
        for (i, filter) in filters.iter().enumerate().step_by(2) {
            let removed = t.remove(&f(filter), i as u32).is_some();
            assert_eq!(removed, model.remove(&(*filter, i as u32)), "{filter}");
        }
        assert_eq!(t.len(), model.len());
        check(&t, &model);
        let arena = t.nodes.len();
        for (i, filter) in filters.iter().enumerate() {
            t.remove(&f(filter), i as u32);
            t.remove(&f(filter), 100_000 + (i % 7) as u32);
        }
        assert_eq!((t.len(), t.node_count()), (0, 1));
        // The slots are reused: inserting everything again does not grow the arena.
        for (i, filter) in filters.iter().enumerate() {
            t.insert(&f(filter), i as u32, 0);
        }
        assert_eq!(t.nodes.len(), arena);
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        // bad input #38.
        let mut t: Trie<u32, u8> = Trie::new();
        let deep: &'static str = Box::leak(("x/".repeat(20_000) + "#").into_boxed_str());
        let plus: &'static str = Box::leak(("+/".repeat(20_000) + "x").into_boxed_str());
        t.insert(&f(deep), 1, 0);
        t.insert(&f(plus), 2, 0);
        let topic: &'static str = Box::leak(("x/".repeat(20_000) + "x").into_boxed_str());
        assert_eq!(keys(matches(&t, topic)), [1, 2]);
        assert!(t.remove(&f(deep), 1).is_some());
        assert!(t.remove(&f(plus), 2).is_some());
        assert_eq!(t.node_count(), 1);
        drop(t);
    }
}
