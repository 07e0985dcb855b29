//! Subscriptions as stored in a shard's trie, and the fan-out of one publish to them.
//!
//! Owns the rule for overlapping subscriptions of one session [MQTT-3.3.4-2..5]: we deliver
//! once per subscriber (the spec allows either), with QoS = the highest granted QoS among the
//! matching subscriptions capped by the message QoS [MQTT-3.8.4-8], and every matching
//! Subscription Identifier [MQTT-3.3.4-4]. Also applies No Local [MQTT-3.8.3-3].
//!
//! Must never: allocate per publish once its buffers have grown (`Fanout` is reused), or
//! deliver twice to one subscriber for one publish.

use std::ops::Range;

use super::topic::TopicName;
use super::trie::{MatchStack, Trie};
use crate::codec::model::{QoS, SubscriptionOptions};

/// One subscription of one session, as stored in the trie under its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// v5 Subscription Identifier, 1..=268_435_455 [MQTT-3.8.2.1.2].
    pub id: Option<u32>,
}

/// A shard's local subscriptions: non-shared filters -> (session key, subscription).
pub type SubscriptionTrie<K> = Trie<K, Subscription>;

/// One delivery of a publish to one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<K> {
    pub subscriber: K,
    /// min(message QoS, max granted QoS of the matching subscriptions).
    pub qos: QoS,
    /// Any matching subscription has Retain As Published: keep the RETAIN flag as published
    /// [MQTT-3.3.1-12]; otherwise it is cleared [MQTT-3.3.1-13].
    pub retain_as_published: bool,
    /// Range into `Fanout::subscription_ids`.
    ids: Range<u32>,
}

/// Reusable buffers that turn trie matches into one `Delivery` per subscriber.
///
/// Call order: `collect` (or `clear`, then `push` per match, then `finish`), then read
/// `deliveries()` and `subscription_ids()`; the next `collect` reuses the capacity.
#[derive(Debug)]
pub struct Fanout<K> {
    /// Matches not filtered out by No Local, before grouping.
    raw: Vec<(K, Subscription)>,
    deliveries: Vec<Delivery<K>>,
    ids: Vec<u32>,
}

impl<K> Default for Fanout<K> {
    fn default() -> Self {
        Fanout {
            raw: Vec::new(),
            deliveries: Vec::new(),
            ids: Vec::new(),
        }
    }
}

impl<K: Copy + Ord> Fanout<K> {
    /// Matches `topic` in `trie` and groups the result per subscriber. `publisher` is the
    /// publishing session when it lives on this shard (for No Local), else `None`.
    pub fn collect(
        &mut self,
        trie: &SubscriptionTrie<K>,
        topic: &TopicName,
        publisher: Option<K>,
        message_qos: QoS,
        stack: &mut MatchStack,
    ) {
        self.clear();
        trie.match_topic(topic, stack, |k, s| self.push(k, s, publisher));
        self.finish(message_qos);
    }

    pub fn clear(&mut self) {
        self.raw.clear();
        self.deliveries.clear();
        self.ids.clear();
    }

    /// Records one matching subscription, unless No Local excludes it: a subscription with
    /// No Local never receives its own session's publishes [MQTT-3.8.3-3].
    pub fn push(&mut self, subscriber: K, sub: &Subscription, publisher: Option<K>) {
        if sub.options.no_local && publisher == Some(subscriber) {
            return;
        }
        self.raw.push((subscriber, *sub));
    }

    /// Groups the recorded matches into one delivery per subscriber.
    pub fn finish(&mut self, message_qos: QoS) {
        // Sorting brings a subscriber's overlapping matches together without a hash map;
        // unstable is fine because order within a subscriber does not matter.
        self.raw.sort_unstable_by_key(|(k, _)| *k);
        let mut i = 0;
        while i < self.raw.len() {
            let key = self.raw[i].0;
            let ids_start = self.ids.len() as u32;
            let mut qos = QoS::AtMostOnce;
            let mut rap = false;
            while let Some((k, sub)) = self.raw.get(i).filter(|(k, _)| *k == key) {
                debug_assert!(*k == key);
                qos = qos.max(sub.options.qos);
                rap |= sub.options.retain_as_published;
                if let Some(id) = sub.id {
                    self.ids.push(id);
                }
                i += 1;
            }
            self.deliveries.push(Delivery {
                subscriber: key,
                qos: qos.min(message_qos),
                retain_as_published: rap,
                ids: ids_start..self.ids.len() as u32,
            });
        }
    }

    /// One entry per subscriber, in ascending key order.
    pub fn deliveries(&self) -> &[Delivery<K>] {
        &self.deliveries
    }

    /// The Subscription Identifiers to send with `delivery` (empty for 3.x subscriptions).
    pub fn subscription_ids(&self, delivery: &Delivery<K>) -> &[u32] {
        self.ids
            .get(delivery.ids.start as usize..delivery.ids.end as usize)
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic::TopicFilter;

    fn sub(qos: QoS, id: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id,
        }
    }

    fn run(
        trie: &SubscriptionTrie<u32>,
        topic: &'static str,
        publisher: Option<u32>,
        qos: QoS,
    ) -> Vec<(u32, QoS, bool, Vec<u32>)> {
        let mut fan = Fanout::default();
        let mut stack = MatchStack::default();
        fan.collect(
            trie,
            &TopicName::from_static(topic),
            publisher,
            qos,
            &mut stack,
        );
        fan.deliveries()
            .iter()
            .map(|d| {
                let mut ids = fan.subscription_ids(d).to_vec();
                ids.sort_unstable();
                (d.subscriber, d.qos, d.retain_as_published, ids)
            })
            .collect()
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_with_max_qos_and_all_ids() {
        let mut t = SubscriptionTrie::new();
        t.insert(
            &TopicFilter::from_static("a/+"),
            1,
            sub(QoS::AtMostOnce, Some(10)),
        );
        t.insert(
            &TopicFilter::from_static("a/#"),
            1,
            sub(QoS::AtLeastOnce, Some(11)),
        );
        t.insert(
            &TopicFilter::from_static("a/b"),
            1,
            sub(QoS::AtMostOnce, None),
        );
        t.insert(
            &TopicFilter::from_static("a/b"),
            2,
            sub(QoS::ExactlyOnce, Some(5)),
        );
        assert_eq!(
            run(&t, "a/b", None, QoS::ExactlyOnce),
            [
                (1, QoS::AtLeastOnce, false, vec![10, 11]),
                (2, QoS::ExactlyOnce, false, vec![5]),
            ]
        );
        // The message QoS caps the granted QoS [MQTT-3.8.4-8].
        assert_eq!(
            run(&t, "a/b", None, QoS::AtLeastOnce),
            [
                (1, QoS::AtLeastOnce, false, vec![10, 11]),
                (2, QoS::AtLeastOnce, false, vec![5])
            ]
        );
        assert_eq!(
            run(&t, "a", None, QoS::AtLeastOnce),
            [(1, QoS::AtLeastOnce, false, vec![11])]
        );
        assert_eq!(run(&t, "b", None, QoS::AtLeastOnce), []);
    }

    #[test]
    fn no_local_skips_only_the_publisher_and_only_that_subscription() {
        let mut t = SubscriptionTrie::new();
        let mut nl = sub(QoS::AtLeastOnce, Some(1));
        nl.options.no_local = true;
        t.insert(&TopicFilter::from_static("chat/#"), 1, nl);
        t.insert(&TopicFilter::from_static("chat/#"), 2, nl);
        t.insert(
            &TopicFilter::from_static("chat/room"),
            1,
            sub(QoS::AtMostOnce, Some(2)),
        );
        // Publisher 1: its No Local subscription is skipped, its other one still delivers.
        assert_eq!(
            run(&t, "chat/room", Some(1), QoS::AtLeastOnce),
            [
                (1, QoS::AtMostOnce, false, vec![2]),
                (2, QoS::AtLeastOnce, false, vec![1])
            ]
        );
        assert_eq!(
            run(&t, "chat/x", Some(1), QoS::AtLeastOnce),
            [(2, QoS::AtLeastOnce, false, vec![1])]
        );
        // A publisher on another shard (`None`) is never local.
        assert_eq!(run(&t, "chat/x", None, QoS::AtMostOnce).len(), 2);
    }

    #[test]
    fn retain_as_published_is_any_of_the_matches() {
        let mut t = SubscriptionTrie::new();
        let mut rap = sub(QoS::AtMostOnce, None);
        rap.options.retain_as_published = true;
        t.insert(
            &TopicFilter::from_static("x"),
            3,
            sub(QoS::AtMostOnce, None),
        );
        t.insert(&TopicFilter::from_static("+"), 3, rap);
        assert_eq!(
            run(&t, "x", None, QoS::AtMostOnce),
            [(3, QoS::AtMostOnce, true, vec![])]
        );
    }

    #[test]
    fn fanout_reuse_starts_clean() {
        let mut t = SubscriptionTrie::new();
        t.insert(
            &TopicFilter::from_static("a"),
            1,
            sub(QoS::AtMostOnce, Some(1)),
        );
        t.insert(
            &TopicFilter::from_static("b"),
            2,
            sub(QoS::AtMostOnce, Some(2)),
        );
        let mut fan = Fanout::default();
        let mut stack = MatchStack::default();
        fan.collect(
            &t,
            &TopicName::from_static("a"),
            None,
            QoS::AtMostOnce,
            &mut stack,
        );
        fan.collect(
            &t,
            &TopicName::from_static("b"),
            None,
            QoS::AtMostOnce,
            &mut stack,
        );
        let d = fan.deliveries();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].subscriber, fan.subscription_ids(&d[0])),
            (2, &[2][..])
        );
    }
}
