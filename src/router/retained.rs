//! The retained-message store: at most one message per topic name [MQTT-3.3.1-5].
//!
//! Owns the retained side of a `LevelArena` (`levels.rs`): the messages, their counts, and
//! set / get / remove / lookup by filter / expiry. It has no tree of its own: a shard's
//! replica lives on the same level nodes as its local subscriptions (`Retained` and
//! `RetainedMut` are views of that arena), so a topic level that a filter already has costs
//! nothing more. Topic names use only the literal edges; every node on the path to a message
//! carries a retained slot counting the messages at or below it, so that a new
//! subscription's filter finds its retained messages by walking only the matching branches
//! that hold some, never into the subscription-only ones (a wildcard step still reads each
//! literal child of a node it visits to see its slot, subscription-only children included).
//! Entries are plain data (`RetainedMessage`) for the storage layer to persist.
//!
//! Must never: recurse over levels (bad input #38), return a `$` topic to a filter whose
//! first level is a wildcard [MQTT-4.7.2-1], keep a retained slot with no message below it,
//! free a node that a filter still uses, or read a clock (expiry deadlines are compared with
//! the caller's `now`).

use bytes::Bytes;

use super::levels::{Edge, LevelArena, ROOT};
use super::topic::{TopicFilter, TopicName};
use crate::codec::model::{PublishProperties, QoS};

/// A retained message as stored and persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    /// The PUBLISH properties to forward. `set` strips Topic Alias and Subscription
    /// Identifiers, which belong to one connection / one subscription [MQTT-3.3.2-... 3.3.4].
    pub properties: PublishProperties,
    /// When the message expires, on the caller's clock (from Message Expiry Interval
    /// [MQTT-3.3.2-5]); `None` never expires. The caller computes the remaining interval
    /// to send [MQTT-3.3.2-6].
    pub expires_at: Option<u64>,
}

impl RetainedMessage {
    fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Reusable work space for `for_each_matching`.
#[derive(Debug, Default)]
pub struct RetainedStack {
    /// (node, byte offset of the next filter level, or `WHOLE_SUBTREE`).
    frames: Vec<(u32, u32)>,
}

/// Frame marker: visit the node's message and everything below it (a `#` was reached).
const WHOLE_SUBTREE: u32 = u32::MAX;

/// Read access to the retained messages of a level arena (`LevelArena::retained`).
#[derive(Debug)]
pub struct Retained<'a, K, V> {
    arena: &'a LevelArena<K, V>,
}

impl<K, V> Clone for Retained<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Retained<'_, K, V> {}

/// Write access to the retained messages of a level arena (`LevelArena::retained_mut`).
#[derive(Debug)]
pub struct RetainedMut<'a, K, V> {
    arena: &'a mut LevelArena<K, V>,
}

impl<K, V> LevelArena<K, V> {
    /// The retained side: topic name -> retained message.
    pub fn retained(&self) -> Retained<'_, K, V> {
        Retained { arena: self }
    }

    /// The retained side, to change.
    pub fn retained_mut(&mut self) -> RetainedMut<'_, K, V> {
        RetainedMut { arena: self }
    }

    /// The message of `node`, if it holds one.
    fn message(&self, node: usize) -> Option<&RetainedMessage> {
        let slot = self.nodes[node].retained?;
        self.slots[slot.get() as usize].message.as_deref()
    }
}

impl<'a, K, V> Retained<'a, K, V> {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.arena.retained.len
    }

    /// Topic and payload bytes of the retained messages.
    pub fn bytes(&self) -> usize {
        self.arena.retained.bytes
    }

    /// Retained messages of topics clients can publish to (not `$`): what
    /// `max_retained_messages` bounds.
    pub fn client_len(&self) -> usize {
        self.arena.retained.len - self.arena.retained.dollar_len
    }

    /// Their topic and payload bytes: what `max_retained_bytes` bounds.
    pub fn client_bytes(&self) -> usize {
        self.arena.retained.bytes - self.arena.retained.dollar_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.arena.retained.len == 0
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&'a RetainedMessage> {
        let a = self.arena;
        let mut node = ROOT;
        for level in topic.levels() {
            node = a.child(node, level)?.get() as usize;
        }
        a.message(node)
    }

    /// Calls `visit` for every unexpired retained message whose topic `filter` matches
    /// (its matched part: `$share/{group}/` is ignored). Order is unspecified.
    pub fn for_each_matching(
        &self,
        filter: &TopicFilter,
        now: u64,
        stack: &mut RetainedStack,
        mut visit: impl FnMut(&'a RetainedMessage),
    ) {
        let a = self.arena;
        let f = filter.filter_bytes();
        // Filters are at most 65535 bytes, so offsets fit in u32 below `WHOLE_SUBTREE`.
        let end = f.len() as u32 + 1;
        let mut emit = |node: usize| {
            if let Some(m) = a.message(node).filter(|m| !m.is_expired(now)) {
                visit(m);
            }
        };
        stack.frames.clear();
        if a.retained.len == 0 {
            return;
        }
        stack.frames.push((ROOT as u32, 0));
        while let Some((node, pos)) = stack.frames.pop() {
            let node = node as usize;
            if pos == WHOLE_SUBTREE {
                emit(node);
                self.push_children(node, false, WHOLE_SUBTREE, stack);
                continue;
            }
            if pos == end {
                emit(node);
                continue;
            }
            let start = pos as usize;
            let level_end = f[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(f.len(), |i| start + i);
            let next = level_end as u32 + 1;
            let at_root = node == ROOT;
            match &f[start..level_end] {
                b"#" => {
                    // `x/#` matches `x` itself [MQTT-4.7.1-2]; the root holds no message.
                    emit(node);
                    self.push_children(node, at_root, WHOLE_SUBTREE, stack);
                }
                b"+" => self.push_children(node, at_root, next, stack),
                level => {
                    if let Some(c) = a.child(node, level)
                        && a.nodes[c.get() as usize].retained.is_some()
                    {
                        stack.frames.push((c.get(), next));
                    }
                }
            }
        }
    }

    /// Pushes every literal child of `node` with a retained message at or below it (the
    /// subscription-only branches are skipped), except `$` topics when a wildcard is at the
    /// first level [MQTT-4.7.2-1].
    fn push_children(&self, node: usize, at_root: bool, pos: u32, stack: &mut RetainedStack) {
        let a = self.arena;
        for (level, c) in a.children(node) {
            if at_root && level.first() == Some(&b'$') {
                continue;
            }
            if a.nodes[c.get() as usize].retained.is_some() {
                stack.frames.push((c.get(), pos));
            }
        }
    }
}

impl<K, V> RetainedMut<'_, K, V> {
    /// Read access, for the counts and lookups.
    pub fn read(&self) -> Retained<'_, K, V> {
        self.arena.retained()
    }

    /// Stores `msg` for its topic, replacing the previous one [MQTT-3.3.1-5]; an empty
    /// payload removes the topic's message instead and is not stored [MQTT-3.3.1-6],
    /// [MQTT-3.3.1-7]. Returns the message that was there. The empty placeholder topic is
    /// never stored.
    pub fn set(&mut self, mut msg: RetainedMessage) -> Option<RetainedMessage> {
        if msg.payload.is_empty() || msg.topic.is_empty() {
            return self.remove(&msg.topic);
        }
        msg.properties.topic_alias = None;
        msg.properties.subscription_identifiers = Vec::new();
        let a = &mut *self.arena;
        let mut path = std::mem::take(&mut a.path);
        path.clear();
        let mut node = ROOT;
        for level in msg.topic.levels() {
            node = a.literal_child_or_insert(node, level);
            // Node ids fit in u32 (`LevelArena::alloc`).
            path.push(node as u32);
        }
        let dollar = msg.topic.is_dollar();
        let size = msg.topic.len() + msg.payload.len();
        let old = match a.nodes[node].retained {
            Some(slot) if a.slots[slot.get() as usize].message.is_some() => {
                a.slots[slot.get() as usize].message.replace(Box::new(msg))
            }
            _ => {
                // A new message: every node of its path counts it (the root does not).
                for &n in &path {
                    let slot = match a.nodes[n as usize].retained {
                        Some(s) => s,
                        None => {
                            let s = a.alloc_slot();
                            a.nodes[n as usize].retained = Some(s);
                            s
                        }
                    };
                    a.slots[slot.get() as usize].below += 1;
                }
                // The topic is not empty, so `node` is on the path and has its slot now.
                if let Some(slot) = a.nodes[node].retained {
                    a.slots[slot.get() as usize].message = Some(Box::new(msg));
                }
                None
            }
        };
        let (added, old_size) = match &old {
            Some(o) => (0, o.topic.len() + o.payload.len()),
            None => (1, 0),
        };
        a.path = path;
        let counts = &mut a.retained;
        counts.len += added;
        counts.bytes = counts.bytes + size - old_size;
        if dollar {
            counts.dollar_len += added;
            counts.dollar_bytes = counts.dollar_bytes + size - old_size;
        }
        old.map(|m| *m)
    }

    /// Removes the message of `topic` and frees the nodes left unused by both sides.
    pub fn remove(&mut self, topic: &TopicName) -> Option<RetainedMessage> {
        let a = &mut *self.arena;
        let mut path: Vec<(usize, Edge<'_>)> = Vec::new();
        let mut node = ROOT;
        for level in topic.levels() {
            let next = a.child(node, level)?.get() as usize;
            path.push((node, Edge::Literal(level)));
            node = next;
        }
        let slot = a.nodes[node].retained?;
        let old = a.slots[slot.get() as usize].message.take()?;
        // The message's path stops counting it: the node itself and its ancestors, not the
        // root (`path[0]` is the root's step).
        for n in path.iter().skip(1).map(|&(p, _)| p).chain([node]) {
            if let Some(s) = a.nodes[n].retained {
                let below = &mut a.slots[s.get() as usize].below;
                *below -= 1;
                if *below == 0 {
                    a.free_slot(s);
                    a.nodes[n].retained = None;
                }
            }
        }
        let size = old.topic.len() + old.payload.len();
        let counts = &mut a.retained;
        counts.len -= 1;
        counts.bytes -= size;
        if old.topic.is_dollar() {
            counts.dollar_len -= 1;
            counts.dollar_bytes -= size;
        }
        a.prune(node, path);
        Some(*old)
    }

    /// Removes every message expired at `now`; returns how many. A full scan of the
    /// retained slots, meant for a periodic sweep, not per publish.
    pub fn remove_expired(&mut self, now: u64) -> usize {
        let expired: Vec<TopicName> = self
            .arena
            .slots
            .iter()
            .filter_map(|s| s.message.as_ref().filter(|m| m.is_expired(now)))
            .map(|m| m.topic.clone())
            .collect();
        expired.iter().filter(|t| self.remove(t).is_some()).count()
    }
}

/// A retained store on its own, with no subscriptions on its levels: tests and benches.
pub type RetainedStore = LevelArena<(), ()>;

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &'static str, payload: &'static str) -> RetainedMessage {
        RetainedMessage {
            topic: TopicName::from_static(topic),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            properties: PublishProperties::default(),
            expires_at: None,
        }
    }

    fn found(store: &RetainedStore, filter: &'static str, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = RetainedStack::default();
        store.retained().for_each_matching(
            &TopicFilter::from_static(filter),
            now,
            &mut stack,
            |m| out.push(m.topic.as_str().to_owned()),
        );
        out.sort_unstable();
        out
    }

    fn sample() -> RetainedStore {
        let mut s = RetainedStore::new();
        for t in [
            "a",
            "a/b",
            "a/b/c",
            "a/",
            "a//b",
            "/x",
            "b",
            "$SYS/load",
            "$SYS",
            "$other/x",
        ] {
            assert_eq!(s.retained_mut().set(msg(t, "v")), None);
        }
        s
    }

    #[test]
    fn wildcard_lookups() {
        let s = sample();
        let cases: &[(&'static str, &[&str])] = &[
            ("#", &["/x", "a", "a/", "a//b", "a/b", "a/b/c", "b"]),
            ("a/#", &["a", "a/", "a//b", "a/b", "a/b/c"]),
            ("a/+", &["a/", "a/b"]),
            ("+", &["a", "b"]),
            ("+/+", &["/x", "a/", "a/b"]),
            ("a/+/b", &["a//b"]),
            ("a/b", &["a/b"]),
            ("/#", &["/x"]),
            ("$SYS/#", &["$SYS", "$SYS/load"]),
            ("+/load", &[]),
            ("$share/g/a/+", &["a/", "a/b"]),
            ("nothing/#", &[]),
        ];
        for (filter, want) in cases {
            assert_eq!(found(&s, filter, 0), *want, "filter {filter}");
        }
    }

    #[test]
    fn set_replaces_and_empty_payload_clears() {
        let mut s = RetainedStore::new();
        assert_eq!(s.retained_mut().set(msg("a/b", "1")), None);
        assert_eq!(
            s.retained_mut().set(msg("a/b", "2")).map(|m| m.payload),
            Some(Bytes::from_static(b"1"))
        );
        assert_eq!(
            s.retained()
                .get(&TopicName::from_static("a/b"))
                .map(|m| &m.payload[..]),
            Some(&b"2"[..])
        );
        assert_eq!(s.retained().len(), 1);
        // An empty payload clears and is not stored [MQTT-3.3.1-6/7].
        assert_eq!(
            s.retained_mut().set(msg("a/b", "")).map(|m| m.payload),
            Some(Bytes::from_static(b"2"))
        );
        assert_eq!(s.retained_mut().set(msg("a/b", "")), None);
        assert_eq!((s.retained().len(), s.node_count()), (0, 1));
        assert_eq!(found(&s, "#", 0), Vec::<String>::new());
    }

    #[test]
    fn dollar_topics_are_counted_apart_from_the_clients() {
        let mut s = RetainedStore::new();
        s.retained_mut().set(msg("a/b", "12"));
        s.retained_mut().set(msg("$SYS/broker/uptime", "5 seconds"));
        s.retained_mut().set(msg("$SYS/broker/version", "v"));
        assert_eq!((s.retained().len(), s.retained().bytes()), (3, 5 + 27 + 20));
        assert_eq!(
            (s.retained().client_len(), s.retained().client_bytes()),
            (1, 5)
        );
        // Replaced with another size, then removed: the counts follow.
        s.retained_mut()
            .set(msg("$SYS/broker/uptime", "15 seconds"));
        assert_eq!((s.retained().len(), s.retained().bytes()), (3, 5 + 28 + 20));
        s.retained_mut().set(msg("$SYS/broker/version", ""));
        s.retained_mut().set(msg("a/b", "1"));
        assert_eq!((s.retained().len(), s.retained().bytes()), (2, 4 + 28));
        assert_eq!(
            (s.retained().client_len(), s.retained().client_bytes()),
            (1, 4)
        );
        assert!(
            s.retained_mut()
                .remove(&TopicName::from_static("a/b"))
                .is_some()
        );
        assert_eq!(
            (s.retained().client_len(), s.retained().client_bytes()),
            (0, 0)
        );
        assert_eq!(s.retained().len(), 1);
    }

    #[test]
    fn removal_prunes_only_unused_nodes() {
        let mut s = RetainedStore::new();
        s.retained_mut().set(msg("a", "1"));
        s.retained_mut().set(msg("a/b/c", "1"));
        assert_eq!(s.node_count(), 4);
        assert!(
            s.retained_mut()
                .remove(&TopicName::from_static("a/b/c"))
                .is_some()
        );
        assert_eq!(s.node_count(), 2); // root + "a", which still holds a message
        assert!(
            s.retained_mut()
                .remove(&TopicName::from_static("a/b"))
                .is_none()
        );
        assert!(
            s.retained_mut()
                .remove(&TopicName::from_static("a"))
                .is_some()
        );
        assert_eq!(s.node_count(), 1);
    }

    #[test]
    fn set_strips_connection_scoped_properties() {
        let mut s = RetainedStore::new();
        let mut m = msg("t", "x");
        m.properties.topic_alias = Some(3);
        m.properties.subscription_identifiers = vec![7];
        m.properties.content_type = None;
        m.properties.message_expiry_interval = Some(10);
        s.retained_mut().set(m);
        let stored = s
            .retained()
            .get(&TopicName::from_static("t"))
            .expect("stored");
        assert_eq!(stored.properties.topic_alias, None);
        assert!(stored.properties.subscription_identifiers.is_empty());
        assert_eq!(stored.properties.message_expiry_interval, Some(10));
    }

    #[test]
    fn expired_messages_are_hidden_then_swept() {
        let mut s = RetainedStore::new();
        let mut m = msg("t/1", "x");
        m.expires_at = Some(100);
        s.retained_mut().set(m);
        s.retained_mut().set(msg("t/2", "y"));
        assert_eq!(found(&s, "t/+", 99), ["t/1", "t/2"]);
        assert_eq!(found(&s, "t/+", 100), ["t/2"]);
        assert_eq!(s.retained_mut().remove_expired(100), 1);
        assert_eq!(s.retained().len(), 1);
        assert_eq!(s.node_count(), 3);
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let mut s = RetainedStore::new();
        let deep: &'static str = Box::leak(("d/".repeat(20_000) + "x").into_boxed_str());
        s.retained_mut().set(msg(deep, "v"));
        assert_eq!(found(&s, "#", 0).len(), 1);
        assert_eq!(found(&s, "d/#", 0).len(), 1);
        assert!(
            s.retained_mut()
                .remove(&TopicName::from_static(deep))
                .is_some()
        );
        assert_eq!(s.node_count(), 1);
    }
}
