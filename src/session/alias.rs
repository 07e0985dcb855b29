//! Topic aliases of one network connection, both directions [MQTT-3.3.2-... 3.3.2.3.4]: the
//! client's (inbound, resolved in `inbound.rs`) and the ones the broker assigns to its
//! deliveries (outbound, `OutboundAliases`, used by `outbound.rs::write_publish`).
//!
//! Outbound: the first PUBLISH of a topic that gets an alias carries the topic and the
//! alias; later ones an empty topic and the alias. Aliases run from 1 to the smaller of the
//! client's Topic Alias Maximum (absent or 0: none at all [MQTT-3.3.2-... the Server MUST
//! NOT send a Topic Alias greater than the client's maximum]) and our own cap
//! (`limits.outbound_topic_alias_maximum`), so memory per connection is bounded: at most
//! that many copies of topic names. When every alias is taken, `TopicAliasPolicy` decides
//! which topic keeps one: `recent` re-maps the least recently used alias to the new topic
//! (sending it with the topic, which re-defines the alias on the client); `hot` keeps the
//! most frequent topics and lets a new topic replace the least used one only once it has
//! been seen more often (counted in a small fixed table, halved periodically so that
//! yesterday's hot topics fade).
//!
//! Per connection, never persisted: a new connection starts with no alias in either
//! direction.
//!
//! Must never: assign an alias above the cap, send an empty topic with an alias the client
//! was not told (a PUBLISH that defined an alias and was then not sent is undone with
//! `forget`), or keep a view into a read buffer (topics are copied).

use std::hash::BuildHasher;

use crate::router::topic::TopicName;

/// Which topics keep an outbound alias once all are taken. Setting
/// `limits.outbound_topic_aliases`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicAliasPolicy {
    /// The broker assigns no topic aliases.
    #[default]
    Off,
    /// The most recently used topics keep their aliases (least recently used replaced).
    Recent,
    /// The most frequently used topics keep their aliases.
    Hot,
}

/// Both directions' aliases of one connection; boxed in `Connection` and allocated at the
/// first alias in either direction (most connections never use one).
#[derive(Clone, Debug, Default)]
pub(super) struct TopicAliases {
    /// Inbound, index `alias - 1`; grows on demand up to our Topic Alias Maximum.
    pub(super) inbound: Vec<Option<TopicName>>,
    /// Outbound; created at the first delivery to a client that accepts aliases.
    pub(super) outbound: Option<OutboundAliases>,
}

/// What to put in one outgoing PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AliasUse {
    /// The topic, no alias.
    Plain,
    /// The topic and this alias, which now means the topic.
    Define(u16),
    /// An empty topic and this alias, which the client already maps to the topic.
    Use(u16),
}

/// Counters of `hot`'s admission table: topics without an alias, by hash. 64 two-byte
/// counters (128 bytes per aliased connection): enough to tell a recurring topic from a
/// one-off among the few a connection sees between two agings. Two bytes, not one: a
/// counter must be able to pass the busiest alias's count, which aging keeps below
/// 2 x `AGING_PERIOD`.
const SKETCH_SLOTS: usize = 64;

/// `hot`: lookups between two halvings of every count, so that counts reflect recent
/// traffic (a topic hot an hour ago does not keep its alias forever).
const AGING_PERIOD: u32 = 1024;

/// Seed of the topic hash: fixed (no per-connection state), not secret: a client that
/// makes topics collide only slows its own lookups, over at most the cap's entries.
const HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5eed_a11a5);

#[derive(Clone, Debug)]
struct Entry {
    hash: u64,
    /// `recent`: the lookup count at the last use; `hot`: the use count (halved by aging).
    weight: u64,
    /// A copy of the topic; empty: a vacant alias (its PUBLISH was not sent).
    topic: Box<[u8]>,
}

/// The aliases the broker assigned on one connection.
#[derive(Clone, Debug)]
pub(super) struct OutboundAliases {
    policy: TopicAliasPolicy,
    /// Highest alias we may use (> 0).
    cap: u16,
    /// Index `alias - 1`; at most `cap` entries.
    entries: Vec<Entry>,
    /// Lookups so far (`recent`'s clock).
    lookups: u64,
    /// `hot`: how often topics without an alias were seen, by hash.
    sketch: [u16; SKETCH_SLOTS],
    /// `hot`: lookups since the last aging.
    since_aging: u32,
}

impl OutboundAliases {
    /// Aliases 1..=`cap` under `policy` (`Recent` or `Hot`; the caller creates none for
    /// `Off` or a cap of 0).
    pub(super) fn new(policy: TopicAliasPolicy, cap: u16) -> OutboundAliases {
        OutboundAliases {
            policy,
            cap,
            entries: Vec::new(),
            lookups: 0,
            sketch: [0; SKETCH_SLOTS],
            since_aging: 0,
        }
    }

    /// Decides how the next PUBLISH on `topic` goes out, and records it as sent.
    pub(super) fn lookup(&mut self, topic: &[u8]) -> AliasUse {
        self.lookups += 1;
        let hash = HASH.hash_one(topic);
        let hit = self
            .entries
            .iter()
            .position(|e| e.hash == hash && *e.topic == *topic);
        let result = match hit {
            Some(i) => {
                let e = &mut self.entries[i];
                e.weight = match self.policy {
                    TopicAliasPolicy::Hot => e.weight.saturating_add(1),
                    TopicAliasPolicy::Off | TopicAliasPolicy::Recent => self.lookups,
                };
                AliasUse::Use(alias_of(i))
            }
            None => self.miss(topic, hash),
        };
        if self.policy == TopicAliasPolicy::Hot {
            self.age();
        }
        result
    }

    /// `topic` has no alias: give it one if the policy allows.
    fn miss(&mut self, topic: &[u8], hash: u64) -> AliasUse {
        let seen = match self.policy {
            TopicAliasPolicy::Hot => {
                let slot = &mut self.sketch[sketch_slot(hash)];
                *slot = slot.saturating_add(1);
                u64::from(*slot)
            }
            TopicAliasPolicy::Off | TopicAliasPolicy::Recent => self.lookups,
        };
        let entry = Entry {
            hash,
            weight: seen,
            topic: topic.into(),
        };
        if let Some(i) = self.entries.iter().position(|e| e.topic.is_empty()) {
            self.entries[i] = entry;
            return AliasUse::Define(alias_of(i));
        }
        if self.entries.len() < usize::from(self.cap) {
            self.entries.push(entry);
            return AliasUse::Define(alias_of(self.entries.len() - 1));
        }
        // Full: the entry with the least weight (least recently or least often used).
        let Some((i, victim)) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.weight)
        else {
            return AliasUse::Plain; // cap 0: never created.
        };
        if self.policy == TopicAliasPolicy::Hot && seen <= victim.weight {
            return AliasUse::Plain;
        }
        self.entries[i] = entry;
        AliasUse::Define(alias_of(i))
    }

    /// The PUBLISH that defined `alias` was not sent: the client does not know the new
    /// meaning (it may still hold the alias's previous topic), so the alias is left vacant
    /// and is next used with its topic.
    pub(super) fn forget(&mut self, alias: u16) {
        if let Some(e) = self.entries.get_mut(usize::from(alias).wrapping_sub(1)) {
            e.topic = Box::default();
            e.weight = 0;
        }
    }

    /// `hot`: halves every count once per `AGING_PERIOD` lookups.
    fn age(&mut self) {
        self.since_aging += 1;
        if self.since_aging < AGING_PERIOD {
            return;
        }
        self.since_aging = 0;
        self.entries.iter_mut().for_each(|e| e.weight /= 2);
        self.sketch.iter_mut().for_each(|c| *c /= 2);
    }
}

/// Alias number of entry `i` (`i < cap <= u16::MAX`).
fn alias_of(i: usize) -> u16 {
    u16::try_from(i + 1).unwrap_or(u16::MAX)
}

fn sketch_slot(hash: u64) -> usize {
    // The top bits: foldhash mixes them best. 64 slots = 6 bits.
    (hash >> 58) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(a: &mut OutboundAliases, topics: &[&str]) -> Vec<AliasUse> {
        topics.iter().map(|t| a.lookup(t.as_bytes())).collect()
    }

    use AliasUse::{Define, Plain, Use};

    #[test]
    fn first_use_defines_then_the_alias_alone() {
        let mut a = OutboundAliases::new(TopicAliasPolicy::Recent, 3);
        assert_eq!(
            uses(&mut a, &["a", "b", "a", "a", "c", "b"]),
            [Define(1), Define(2), Use(1), Use(1), Define(3), Use(2)]
        );
    }

    #[test]
    fn recent_replaces_the_least_recently_used() {
        let mut a = OutboundAliases::new(TopicAliasPolicy::Recent, 2);
        assert_eq!(
            uses(&mut a, &["a", "b", "a", "c", "a", "b", "c"]),
            // Each new topic takes the least recently used alias: c takes b's, b takes c's,
            // then c takes a's.
            [
                Define(1),
                Define(2),
                Use(1),
                Define(2),
                Use(1),
                Define(2),
                Define(1)
            ]
        );
        assert!(a.entries.len() <= 2, "never above the cap");
    }

    #[test]
    fn hot_keeps_frequent_topics_and_admits_a_newcomer_once_it_is_frequent() {
        let mut a = OutboundAliases::new(TopicAliasPolicy::Hot, 2);
        let mut seq = vec!["a", "b"];
        seq.extend(["a"; 5]);
        seq.extend(["b"; 2]);
        let got = uses(&mut a, &seq);
        assert_eq!(got[..2], [Define(1), Define(2)]);
        assert!(got[2..].iter().all(|u| matches!(u, Use(_))));
        // A one-off topic does not evict a hot one: it goes out plain.
        assert_eq!(uses(&mut a, &["x"]), [Plain]);
        assert_eq!(uses(&mut a, &["a", "b"]), [Use(1), Use(2)]);
        // Seen more often than the least used alias (b: 4 uses), it takes that alias.
        let got = uses(&mut a, &["y"; 6]);
        assert_eq!(got[..4], [Plain; 4]);
        assert_eq!(got[4..], [Define(2), Use(2)]);
        assert_eq!(uses(&mut a, &["a"]), [Use(1)]);
    }

    #[test]
    fn hot_ages_its_counts() {
        let mut a = OutboundAliases::new(TopicAliasPolicy::Hot, 1);
        for _ in 0..2000 {
            a.lookup(b"old");
        }
        // Without aging "new" would need 2000 sightings; counts halve every 1024 lookups.
        let mut defined_after = None;
        for i in 1..=3000 {
            if let Define(1) = a.lookup(b"new") {
                defined_after = Some(i);
                break;
            }
        }
        let n = defined_after.expect("the new hot topic gets the alias");
        assert!(n < 2000, "after {n} lookups");
    }

    #[test]
    fn a_forgotten_definition_is_defined_again() {
        let mut a = OutboundAliases::new(TopicAliasPolicy::Recent, 2);
        assert_eq!(uses(&mut a, &["a", "b"]), [Define(1), Define(2)]);
        a.forget(1);
        // "a" has no alias now; the vacant alias 1 is reused, with the topic.
        assert_eq!(
            uses(&mut a, &["c", "a", "c"]),
            [Define(1), Define(2), Use(1)]
        );
        a.forget(0);
        a.forget(99);
    }
}
