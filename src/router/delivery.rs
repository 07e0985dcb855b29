//! Subscriptions as stored in a shard's trie, and the fan-out of one publish to them.
//!
//! Owns the rule for overlapping subscriptions of one session [MQTT-3.3.4-2..5], chosen by
//! `OverlapMode`: by default one delivery per matching subscription, each with that
//! subscription's granted QoS (capped by the message QoS [MQTT-3.8.4-8]), Retain As
//! Published and Subscription Identifier (what mosquitto, HiveMQ and EMQX do, and what
//! clients written against them expect); or, with `OverlapMode::Single`, one delivery per
//! subscriber at the highest granted QoS among its matching subscriptions, carrying every
//! matching Subscription Identifier [MQTT-3.3.4-3..5]. Also applies No Local per
//! subscription [MQTT-3.8.3-3].
//!
//! Must never: allocate per publish once its buffers have grown (`Fanout` is reused), or,
//! in `Single` mode, deliver twice to one subscriber for one publish.

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

/// What a client receives for a message that matches several of its subscriptions
/// (the spec allows both [MQTT-3.3.4-2]). Setting `limits.overlapping_subscriptions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapMode {
    /// One PUBLISH per matching subscription, each with its own granted QoS, Retain As
    /// Published and Subscription Identifier [MQTT-3.3.4-5] (mosquitto, HiveMQ, EMQX).
    #[default]
    PerSubscription,
    /// One PUBLISH per client, at the highest granted QoS of the matching subscriptions and
    /// with all their Subscription Identifiers [MQTT-3.3.4-3], [MQTT-3.3.4-4].
    Single,
}

/// One delivery of a publish to one subscriber (for one subscription, or for all its
/// matching subscriptions in `OverlapMode::Single`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<K> {
    pub subscriber: K,
    /// min(message QoS, granted QoS of the subscription; in `Single` mode the highest of
    /// the matching subscriptions).
    pub qos: QoS,
    /// The subscription (in `Single` mode: any matching one) has Retain As Published: keep
    /// the RETAIN flag as published [MQTT-3.3.1-12]; otherwise it is cleared [MQTT-3.3.1-13].
    pub retain_as_published: bool,
    /// Range into `Fanout::subscription_ids`.
    ids: Range<u32>,
}

/// Reusable buffers that turn trie matches into deliveries, per `OverlapMode`.
///
/// Call order: `collect` (or `clear`, then `push` per match, then `finish`), then read
/// `deliveries()` and `subscription_ids()`; the next `collect` reuses the capacity.
#[derive(Debug)]
pub struct Fanout<K> {
    mode: OverlapMode,
    /// Matches not filtered out by No Local, before grouping.
    raw: Vec<(K, Subscription)>,
    deliveries: Vec<Delivery<K>>,
    ids: Vec<u32>,
}

impl<K> Default for Fanout<K> {
    fn default() -> Self {
        Fanout::new(OverlapMode::default())
    }
}

impl<K> Fanout<K> {
    pub fn new(mode: OverlapMode) -> Self {
        Fanout {
            mode,
            raw: Vec::new(),
            deliveries: Vec::new(),
            ids: Vec::new(),
        }
    }

    pub fn mode(&self) -> OverlapMode {
        self.mode
    }
}

impl<K: Copy + Ord> Fanout<K> {
    /// Matches `topic` in `trie` and turns the matches into deliveries. `publisher` is the
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

    /// Turns the recorded matches into deliveries: one per match, or one per subscriber in
    /// `Single` mode.
    pub fn finish(&mut self, message_qos: QoS) {
        match self.mode {
            OverlapMode::PerSubscription => self.finish_per_subscription(message_qos),
            OverlapMode::Single => self.finish_single(message_qos),
        }
    }

    /// One delivery per match, in match order: no sort, no grouping.
    fn finish_per_subscription(&mut self, message_qos: QoS) {
        for (key, sub) in &self.raw {
            let ids_start = self.ids.len() as u32;
            if let Some(id) = sub.id {
                self.ids.push(id);
            }
            self.deliveries.push(Delivery {
                subscriber: *key,
                qos: sub.options.qos.min(message_qos),
                retain_as_published: sub.options.retain_as_published,
                ids: ids_start..self.ids.len() as u32,
            });
        }
    }

    /// One delivery per subscriber, overlapping matches merged.
    fn finish_single(&mut self, message_qos: QoS) {
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

    /// `PerSubscription`: one entry per matching subscription, in trie match order (a
    /// subscriber's entries need not be adjacent). `Single`: one entry per subscriber, in
    /// ascending key order.
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

    use OverlapMode::{PerSubscription, Single};

    fn sub(qos: QoS, id: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id,
        }
    }

    fn insert(t: &mut SubscriptionTrie<u32>, f: &'static str, k: u32, s: Subscription) {
        t.insert(&TopicFilter::from_static(f), k, s);
    }

    /// The deliveries of one publish as (subscriber, QoS, RAP, ids), sorted (per-subscription
    /// deliveries come in match order, which the tests do not pin down).
    fn run(
        trie: &SubscriptionTrie<u32>,
        mode: OverlapMode,
        topic: &'static str,
        publisher: Option<u32>,
        qos: QoS,
    ) -> Vec<(u32, QoS, bool, Vec<u32>)> {
        let mut fan = Fanout::new(mode);
        let mut stack = MatchStack::default();
        fan.collect(
            trie,
            &TopicName::from_static(topic),
            publisher,
            qos,
            &mut stack,
        );
        let mut out: Vec<_> = fan
            .deliveries()
            .iter()
            .map(|d| {
                let mut ids = fan.subscription_ids(d).to_vec();
                ids.sort_unstable();
                (d.subscriber, d.qos, d.retain_as_published, ids)
            })
            .collect();
        out.sort();
        out
    }

    /// Client 1: `a/+` (QoS 0, id 10), `a/#` (QoS 1, id 11), `a/b` (QoS 0, no id);
    /// client 2: `a/b` (QoS 2, id 5).
    fn overlapping() -> SubscriptionTrie<u32> {
        let mut t = SubscriptionTrie::new();
        insert(&mut t, "a/+", 1, sub(QoS::AtMostOnce, Some(10)));
        insert(&mut t, "a/#", 1, sub(QoS::AtLeastOnce, Some(11)));
        insert(&mut t, "a/b", 1, sub(QoS::AtMostOnce, None));
        insert(&mut t, "a/b", 2, sub(QoS::ExactlyOnce, Some(5)));
        t
    }

    #[test]
    fn per_subscription_is_the_default() {
        assert_eq!(OverlapMode::default(), PerSubscription);
        assert_eq!(Fanout::<u32>::default().mode(), PerSubscription);
    }

    #[test]
    fn per_subscription_delivers_once_per_matching_subscription() {
        let t = overlapping();
        // [MQTT-3.3.4-5]: each copy with its own subscription's QoS and identifier.
        assert_eq!(
            run(&t, PerSubscription, "a/b", None, QoS::ExactlyOnce),
            [
                (1, QoS::AtMostOnce, false, vec![]),
                (1, QoS::AtMostOnce, false, vec![10]),
                (1, QoS::AtLeastOnce, false, vec![11]),
                (2, QoS::ExactlyOnce, false, vec![5]),
            ]
        );
        // The message QoS caps each granted QoS [MQTT-3.8.4-8].
        assert_eq!(
            run(&t, PerSubscription, "a/b", None, QoS::AtMostOnce),
            [
                (1, QoS::AtMostOnce, false, vec![]),
                (1, QoS::AtMostOnce, false, vec![10]),
                (1, QoS::AtMostOnce, false, vec![11]),
                (2, QoS::AtMostOnce, false, vec![5]),
            ]
        );
        assert_eq!(
            run(&t, PerSubscription, "a", None, QoS::AtLeastOnce),
            [(1, QoS::AtLeastOnce, false, vec![11])]
        );
        assert_eq!(run(&t, PerSubscription, "b", None, QoS::AtLeastOnce), []);
    }

    #[test]
    fn single_delivers_once_with_max_qos_and_all_ids() {
        let t = overlapping();
        assert_eq!(
            run(&t, Single, "a/b", None, QoS::ExactlyOnce),
            [
                (1, QoS::AtLeastOnce, false, vec![10, 11]),
                (2, QoS::ExactlyOnce, false, vec![5]),
            ]
        );
        // The message QoS caps the granted QoS [MQTT-3.8.4-8].
        assert_eq!(
            run(&t, Single, "a/b", None, QoS::AtLeastOnce),
            [
                (1, QoS::AtLeastOnce, false, vec![10, 11]),
                (2, QoS::AtLeastOnce, false, vec![5])
            ]
        );
        assert_eq!(
            run(&t, Single, "a", None, QoS::AtLeastOnce),
            [(1, QoS::AtLeastOnce, false, vec![11])]
        );
        assert_eq!(run(&t, Single, "b", None, QoS::AtLeastOnce), []);
    }

    #[test]
    fn no_local_skips_only_the_publisher_and_only_that_subscription() {
        let mut t = SubscriptionTrie::new();
        let mut nl = sub(QoS::AtLeastOnce, Some(1));
        nl.options.no_local = true;
        insert(&mut t, "chat/#", 1, nl);
        insert(&mut t, "chat/#", 2, nl);
        insert(&mut t, "chat/room", 1, sub(QoS::AtMostOnce, Some(2)));
        // Publisher 1: its No Local subscription is skipped, its other one still delivers,
        // in either mode.
        for mode in [PerSubscription, Single] {
            assert_eq!(
                run(&t, mode, "chat/room", Some(1), QoS::AtLeastOnce),
                [
                    (1, QoS::AtMostOnce, false, vec![2]),
                    (2, QoS::AtLeastOnce, false, vec![1])
                ],
                "{mode:?}"
            );
            assert_eq!(
                run(&t, mode, "chat/x", Some(1), QoS::AtLeastOnce),
                [(2, QoS::AtLeastOnce, false, vec![1])]
            );
            // A publisher on another shard (`None`) is never local.
            assert_eq!(run(&t, mode, "chat/x", None, QoS::AtMostOnce).len(), 2);
        }
    }

    #[test]
    fn retain_as_published_per_subscription_or_any_of_the_matches() {
        let mut t = SubscriptionTrie::new();
        let mut rap = sub(QoS::AtMostOnce, None);
        rap.options.retain_as_published = true;
        insert(&mut t, "x", 3, sub(QoS::AtMostOnce, None));
        insert(&mut t, "+", 3, rap);
        assert_eq!(
            run(&t, PerSubscription, "x", None, QoS::AtMostOnce),
            [
                (3, QoS::AtMostOnce, false, vec![]),
                (3, QoS::AtMostOnce, true, vec![])
            ]
        );
        assert_eq!(
            run(&t, Single, "x", None, QoS::AtMostOnce),
            [(3, QoS::AtMostOnce, true, vec![])]
        );
    }

    #[test]
    fn fanout_reuse_starts_clean() {
        let mut t = SubscriptionTrie::new();
        insert(&mut t, "a", 1, sub(QoS::AtMostOnce, Some(1)));
        insert(&mut t, "b", 2, sub(QoS::AtMostOnce, Some(2)));
        for mode in [PerSubscription, Single] {
            let mut fan = Fanout::new(mode);
            let mut stack = MatchStack::default();
            for topic in ["a", "b"] {
                let topic = TopicName::from_static(topic);
                fan.collect(&t, &topic, None, QoS::AtMostOnce, &mut stack);
            }
            let d = fan.deliveries();
            assert_eq!(d.len(), 1);
            assert_eq!(
                (d[0].subscriber, fan.subscription_ids(&d[0])),
                (2, &[2][..])
            );
        }
    }
}
