//! The retained-message store: at most one message per topic name [MQTT-3.3.1-5].
//!
//! Owns a tree of topic levels (arena, like `trie.rs`, but keyed by names, not filters) so
//! that a new subscription's filter finds its retained messages by walking only the matching
//! branches. Entries are plain data (`RetainedMessage`) for the storage layer to persist.
//!
//! Must never: recurse over levels (BAD_INPUTS #38), return a `$` topic to a filter whose
//! first level is a wildcard [MQTT-4.7.2-1], keep nodes with no message below them, or read
//! a clock (expiry deadlines are compared with the caller's `now`).

use std::num::NonZeroU32;

use bytes::Bytes;

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

type NodeId = NonZeroU32;

#[derive(Debug, Default)]
struct Node {
    /// Boxed: 8 bytes per leaf instead of the map's 48, and most nodes are leaves.
    children: Option<Box<super::LevelMap<NodeId>>>,
    message: Option<RetainedMessage>,
}

impl Node {
    fn is_unused(&self) -> bool {
        self.message.is_none() && self.children.as_ref().is_none_or(|c| c.is_empty())
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

/// Topic name -> retained message.
#[derive(Debug)]
pub struct RetainedStore {
    /// Node 0 is the root (the level above the first); it never holds a message.
    nodes: Vec<Node>,
    free: Vec<u32>,
    len: usize,
    /// Topic and payload bytes of the messages held.
    bytes: usize,
    /// Of `len` and `bytes`, those of `$` topics: the broker's own (`$SYS`), which clients
    /// cannot publish to and the retained limits do not bound (`client_len`).
    dollar_len: usize,
    dollar_bytes: usize,
}

impl Default for RetainedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RetainedStore {
    pub fn new() -> Self {
        RetainedStore {
            nodes: vec![Node::default()],
            free: Vec::new(),
            len: 0,
            bytes: 0,
            dollar_len: 0,
            dollar_bytes: 0,
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Topic and payload bytes of the retained messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Retained messages of topics clients can publish to (not `$`): what
    /// `max_retained_messages` bounds.
    pub fn client_len(&self) -> usize {
        self.len - self.dollar_len
    }

    /// Their topic and payload bytes: what `max_retained_bytes` bounds.
    pub fn client_bytes(&self) -> usize {
        self.bytes - self.dollar_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live nodes, root included; 1 when empty.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
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
        let mut node = 0usize;
        for level in msg.topic.levels() {
            node = self.child_or_insert(node, level);
        }
        let dollar = msg.topic.is_dollar();
        let size = msg.topic.len() + msg.payload.len();
        let old = self.nodes[node].message.replace(msg);
        let (added, old_size) = match &old {
            None => (1, 0),
            Some(o) => (0, o.topic.len() + o.payload.len()),
        };
        self.len += added;
        self.bytes = self.bytes + size - old_size;
        if dollar {
            self.dollar_len += added;
            self.dollar_bytes = self.dollar_bytes + size - old_size;
        }
        old
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&RetainedMessage> {
        let mut node = 0usize;
        for level in topic.levels() {
            node = self.nodes[node].children.as_ref()?.get(level)?.get() as usize;
        }
        self.nodes[node].message.as_ref()
    }

    /// Removes the message of `topic` and frees the nodes left unused.
    pub fn remove(&mut self, topic: &TopicName) -> Option<RetainedMessage> {
        let mut path: Vec<(usize, &[u8])> = Vec::new();
        let mut node = 0usize;
        for level in topic.levels() {
            let next = self.nodes[node].children.as_ref()?.get(level)?.get() as usize;
            path.push((node, level));
            node = next;
        }
        let old = self.nodes[node].message.take()?;
        let size = old.topic.len() + old.payload.len();
        self.len -= 1;
        self.bytes -= size;
        if old.topic.is_dollar() {
            self.dollar_len -= 1;
            self.dollar_bytes -= size;
        }
        while node != 0 && self.nodes[node].is_unused() {
            let Some((parent, level)) = path.pop() else {
                break;
            };
            let p = &mut self.nodes[parent];
            if let Some(children) = p.children.as_mut() {
                children.remove(level);
                if children.is_empty() {
                    p.children = None;
                }
            }
            self.nodes[node] = Node::default();
            self.free.push(node as u32);
            node = parent;
        }
        Some(old)
    }

    /// Calls `visit` for every unexpired retained message whose topic `filter` matches
    /// (its matched part: `$share/{group}/` is ignored). Order is unspecified.
    pub fn for_each_matching(
        &self,
        filter: &TopicFilter,
        now: u64,
        stack: &mut RetainedStack,
        mut visit: impl FnMut(&RetainedMessage),
    ) {
        let f = filter.filter_bytes();
        // Filters are at most 65535 bytes, so offsets fit in u32 below `WHOLE_SUBTREE`.
        let end = f.len() as u32 + 1;
        let mut emit = |node: &Node| {
            if let Some(m) = node.message.as_ref().filter(|m| !m.is_expired(now)) {
                visit(m);
            }
        };
        stack.frames.clear();
        stack.frames.push((0, 0));
        while let Some((node, pos)) = stack.frames.pop() {
            let n = &self.nodes[node as usize];
            if pos == WHOLE_SUBTREE {
                emit(n);
                for &c in n.children.iter().flat_map(|c| c.values()) {
                    stack.frames.push((c.get(), WHOLE_SUBTREE));
                }
                continue;
            }
            if pos == end {
                emit(n);
                continue;
            }
            let start = pos as usize;
            let level_end = f[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(f.len(), |i| start + i);
            let next = level_end as u32 + 1;
            let at_root = node == 0;
            match &f[start..level_end] {
                b"#" => {
                    // `x/#` matches `x` itself [MQTT-4.7.1-2]; the root holds no message.
                    emit(n);
                    self.push_children(n, at_root, WHOLE_SUBTREE, stack);
                }
                b"+" => self.push_children(n, at_root, next, stack),
                level => {
                    if let Some(c) = n.children.as_ref().and_then(|c| c.get(level)) {
                        stack.frames.push((c.get(), next));
                    }
                }
            }
        }
    }

    /// Pushes every child of `n`, except `$` topics when a wildcard is at the first level
    /// [MQTT-4.7.2-1].
    fn push_children(&self, n: &Node, at_root: bool, pos: u32, stack: &mut RetainedStack) {
        for (level, &c) in n.children.iter().flat_map(|c| c.iter()) {
            if at_root && level.first() == Some(&b'$') {
                continue;
            }
            stack.frames.push((c.get(), pos));
        }
    }

    /// Removes every message expired at `now`; returns how many. A full scan, meant for a
    /// periodic sweep, not per publish.
    pub fn remove_expired(&mut self, now: u64) -> usize {
        let expired: Vec<TopicName> = self
            .nodes
            .iter()
            .filter_map(|n| n.message.as_ref().filter(|m| m.is_expired(now)))
            .map(|m| m.topic.clone())
            .collect();
        expired.iter().filter(|t| self.remove(t).is_some()).count()
    }

    fn child_or_insert(&mut self, node: usize, level: &[u8]) -> usize {
        if let Some(c) = self.nodes[node]
            .children
            .as_ref()
            .and_then(|c| c.get(level))
        {
            return c.get() as usize;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node::default());
                u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
            }
        };
        // Slot 0 is the root and is never freed, so `idx >= 1`.
        let id = NodeId::new(idx).unwrap_or(NodeId::MIN);
        self.nodes[node]
            .children
            .get_or_insert_with(Default::default)
            .insert(level.into(), id);
        id.get() as usize
    }
}

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
        store.for_each_matching(&TopicFilter::from_static(filter), now, &mut stack, |m| {
            out.push(m.topic.as_str().to_owned())
        });
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
            assert_eq!(s.set(msg(t, "v")), None);
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
        assert_eq!(s.set(msg("a/b", "1")), None);
        assert_eq!(
            s.set(msg("a/b", "2")).map(|m| m.payload),
            Some(Bytes::from_static(b"1"))
        );
        assert_eq!(
            s.get(&TopicName::from_static("a/b"))
                .map(|m| &m.payload[..]),
            Some(&b"2"[..])
        );
        assert_eq!(s.len(), 1);
        // An empty payload clears and is not stored [MQTT-3.3.1-6/7].
        assert_eq!(
            s.set(msg("a/b", "")).map(|m| m.payload),
            Some(Bytes::from_static(b"2"))
        );
        assert_eq!(s.set(msg("a/b", "")), None);
        assert_eq!((s.len(), s.node_count()), (0, 1));
        assert_eq!(found(&s, "#", 0), Vec::<String>::new());
    }

    #[test]
    fn dollar_topics_are_counted_apart_from_the_clients() {
        let mut s = RetainedStore::new();
        s.set(msg("a/b", "12"));
        s.set(msg("$SYS/broker/uptime", "5 seconds"));
        s.set(msg("$SYS/broker/version", "v"));
        assert_eq!((s.len(), s.bytes()), (3, 5 + 27 + 20));
        assert_eq!((s.client_len(), s.client_bytes()), (1, 5));
        // Replaced with another size, then removed: the counts follow.
        s.set(msg("$SYS/broker/uptime", "15 seconds"));
        assert_eq!((s.len(), s.bytes()), (3, 5 + 28 + 20));
        s.set(msg("$SYS/broker/version", ""));
        s.set(msg("a/b", "1"));
        assert_eq!((s.len(), s.bytes()), (2, 4 + 28));
        assert_eq!((s.client_len(), s.client_bytes()), (1, 4));
        assert!(s.remove(&TopicName::from_static("a/b")).is_some());
        assert_eq!((s.client_len(), s.client_bytes()), (0, 0));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn removal_prunes_only_unused_nodes() {
        let mut s = RetainedStore::new();
        s.set(msg("a", "1"));
        s.set(msg("a/b/c", "1"));
        assert_eq!(s.node_count(), 4);
        assert!(s.remove(&TopicName::from_static("a/b/c")).is_some());
        assert_eq!(s.node_count(), 2); // root + "a", which still holds a message
        assert!(s.remove(&TopicName::from_static("a/b")).is_none());
        assert!(s.remove(&TopicName::from_static("a")).is_some());
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
        s.set(m);
        let stored = s.get(&TopicName::from_static("t")).expect("stored");
        assert_eq!(stored.properties.topic_alias, None);
        assert!(stored.properties.subscription_identifiers.is_empty());
        assert_eq!(stored.properties.message_expiry_interval, Some(10));
    }

    #[test]
    fn expired_messages_are_hidden_then_swept() {
        let mut s = RetainedStore::new();
        let mut m = msg("t/1", "x");
        m.expires_at = Some(100);
        s.set(m);
        s.set(msg("t/2", "y"));
        assert_eq!(found(&s, "t/+", 99), ["t/1", "t/2"]);
        assert_eq!(found(&s, "t/+", 100), ["t/2"]);
        assert_eq!(s.remove_expired(100), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.node_count(), 3);
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let mut s = RetainedStore::new();
        let deep: &'static str = Box::leak(("d/".repeat(20_000) + "x").into_boxed_str());
        s.set(msg(deep, "v"));
        assert_eq!(found(&s, "#", 0).len(), 1);
        assert_eq!(found(&s, "d/#", 0).len(), 1);
        assert!(s.remove(&TopicName::from_static(deep)).is_some());
        assert_eq!(s.node_count(), 1);
    }
}
