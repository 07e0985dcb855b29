//! `Subscriptions`: a session's own record of its subscriptions, filter -> `Subscription`,
//! ordered by filter bytes.
//!
//! Every subscription of every session is held here as well as in the shard's trie, so its
//! size is part of what each subscription costs the broker. Layout, per subscription: an
//! owned copy of the filter bytes (exactly their size: a view into the SUBSCRIBE packet would
//! keep the whole read it came in alive) and the subscription packed in 8 bytes (`Packed`),
//! 24 bytes with the box, in a vector sorted by filter while the session has at most
//! `SMALL_MAX` of them, in a B-tree beyond (an insert into the sorted vector moves the
//! entries after it: fine for hundreds, not for a `max_subscriptions` raised to 100,000).
//! This replaces a `BTreeMap<TopicFilter, Subscription>` of views: its leaves have room for
//! 11 entries of 52 bytes (a session with one subscription paid for 11), about 100 B per
//! subscription at 100 filters per session plus the read each view pinned, where this takes
//! about 31 B (the vector's spare capacity included) plus the copied bytes (counted in a
//! model with these entry sizes and mimalloc-like size classes; `cargo bench --bench
//! subscriptions` counts this type's share, and `ringmq-bench subscriptions` measured 300 ->
//! 190 B per subscription at 1 shard, the trie's smaller nodes included).
//!
//! Must never: hold two entries for one filter, or let iteration order depend on history
//! (it is the filters' byte order, whatever the representation).

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use bytes::Bytes;

use crate::codec::SubscriptionOptions;
use crate::router::topic::TopicFilter;

use super::types::Subscription;

/// Above this many subscriptions a session's map is a B-tree; it goes back to the vector
/// when it falls to half of it.
const SMALL_MAX: usize = 512;

/// A session's subscriptions, ordered by filter (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct Subscriptions {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    /// Sorted by filter bytes, no filter twice.
    Small(Vec<(Box<[u8]>, Packed)>),
    Large(BTreeMap<Box<[u8]>, Packed>),
}

/// A `Subscription` in 8 bytes instead of 12: a Subscription Identifier is 1..=268,435,455
/// [MQTT-3.8.2.1.2] (the decoder refuses 0), so it fits a `NonZeroU32` with no tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    options: SubscriptionOptions,
    id: Option<NonZeroU32>,
}

impl From<Subscription> for Packed {
    fn from(s: Subscription) -> Self {
        Packed {
            options: s.options,
            // An identifier of 0 cannot be granted; it would read back as none.
            id: s.id.and_then(NonZeroU32::new),
        }
    }
}

impl From<Packed> for Subscription {
    fn from(p: Packed) -> Self {
        Subscription {
            options: p.options,
            id: p.id.map(NonZeroU32::get),
        }
    }
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Small(Vec::new())
    }
}

impl PartialEq for Subscriptions {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Subscriptions {}

impl Subscriptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Small(v) => v.len(),
            Repr::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subscription to `filter` (its whole bytes, `$share/{group}/` included), if any.
    pub fn get(&self, filter: &[u8]) -> Option<Subscription> {
        let packed = match &self.repr {
            Repr::Small(v) => v
                .binary_search_by(|(k, _)| (**k).cmp(filter))
                .ok()
                .map(|i| v[i].1),
            Repr::Large(m) => m.get(filter).copied(),
        };
        packed.map(Subscription::from)
    }

    pub fn contains(&self, filter: &TopicFilter) -> bool {
        self.get(filter.as_bytes()).is_some()
    }

    /// Adds the subscription to `filter`, or replaces it and returns the one it had.
    pub fn insert(&mut self, filter: &TopicFilter, sub: Subscription) -> Option<Subscription> {
        let bytes = filter.as_bytes();
        let sub = Packed::from(sub);
        let old = match &mut self.repr {
            Repr::Small(v) => match v.binary_search_by(|(k, _)| (**k).cmp(bytes)) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, sub)),
                Err(i) if v.len() < SMALL_MAX => {
                    v.insert(i, (bytes.into(), sub));
                    None
                }
                Err(_) => {
                    let mut m: BTreeMap<_, _> = std::mem::take(v).into_iter().collect();
                    m.insert(bytes.into(), sub);
                    self.repr = Repr::Large(m);
                    None
                }
            },
            Repr::Large(m) => match m.get_mut(bytes) {
                Some(old) => Some(std::mem::replace(old, sub)),
                None => {
                    m.insert(bytes.into(), sub);
                    None
                }
            },
        };
        old.map(Subscription::from)
    }

    /// Removes the subscription to `filter` and returns it, if there was one.
    pub fn remove(&mut self, filter: &TopicFilter) -> Option<Subscription> {
        let bytes = filter.as_bytes();
        match &mut self.repr {
            Repr::Small(v) => {
                let i = v.binary_search_by(|(k, _)| (**k).cmp(bytes)).ok()?;
                let (_, sub) = v.remove(i);
                // Give back what a burst of subscriptions left behind.
                if v.capacity() > 4 * v.len().max(4) {
                    v.shrink_to(2 * v.len());
                }
                Some(sub.into())
            }
            Repr::Large(m) => {
                let sub = m.remove(bytes)?;
                if m.len() <= SMALL_MAX / 2 {
                    let v: Vec<_> = std::mem::take(m).into_iter().collect();
                    self.repr = Repr::Small(v);
                }
                Some(sub.into())
            }
        }
    }

    /// Every subscription as (filter bytes, subscription), in filter byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Subscription)> {
        let (small, large) = match &self.repr {
            Repr::Small(v) => (Some(v.iter().map(|(k, s)| (&**k, (*s).into()))), None),
            Repr::Large(m) => (None, Some(m.iter().map(|(k, s)| (&**k, (*s).into())))),
        };
        small
            .into_iter()
            .flatten()
            .chain(large.into_iter().flatten())
    }

    /// Every subscription with its filter as a `TopicFilter` of its own (one allocation
    /// each: for the router, when a session ends, is restored or is checked again), in filter
    /// byte order.
    pub fn filters(&self) -> impl Iterator<Item = (TopicFilter, Subscription)> + '_ {
        self.iter().filter_map(|(bytes, sub)| {
            // The bytes were a valid filter when inserted, so this never skips one.
            let filter = TopicFilter::new(Bytes::copy_from_slice(bytes)).ok()?;
            Some((filter, sub))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{QoS, SubscriptionOptions};

    fn sub(qos: QoS, id: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id,
        }
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(Bytes::copy_from_slice(s.as_bytes())).expect("valid test filter")
    }

    fn names(s: &Subscriptions) -> Vec<String> {
        s.filters().map(|(f, _)| f.as_str().to_owned()).collect()
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut s = Subscriptions::new();
        assert_eq!(s.insert(&filter("b/+"), sub(QoS::AtLeastOnce, None)), None);
        assert_eq!(
            s.insert(&filter("a/#"), sub(QoS::AtMostOnce, Some(7))),
            None
        );
        assert_eq!(
            s.insert(&filter("$share/g/a/#"), sub(QoS::ExactlyOnce, None)),
            None
        );
        assert_eq!(
            s.insert(&filter("b/+"), sub(QoS::ExactlyOnce, Some(3))),
            Some(sub(QoS::AtLeastOnce, None))
        );
        assert_eq!(s.len(), 3);
        assert_eq!(names(&s), ["$share/g/a/#", "a/#", "b/+"]);
        assert_eq!(s.get(b"b/+"), Some(sub(QoS::ExactlyOnce, Some(3))));
        assert!(s.contains(&filter("a/#")));
        assert!(!s.contains(&filter("a")));
        let (shared, _) = s.filters().next().expect("three filters");
        assert!(shared.is_shared());
        assert_eq!(
            s.remove(&filter("a/#")),
            Some(sub(QoS::AtMostOnce, Some(7)))
        );
        assert_eq!(s.remove(&filter("a/#")), None);
        assert_eq!(names(&s), ["$share/g/a/#", "b/+"]);
    }

    #[test]
    fn many_go_to_a_btree_and_back_in_the_same_order() {
        let mut small = Subscriptions::new();
        let mut model = BTreeMap::new();
        // Inserted out of byte order (`k/10` sorts before `k/2`).
        let n = 3 * SMALL_MAX as u32;
        for k in 0..n {
            let f = format!("k/{k}/+");
            small.insert(&filter(&f), sub(QoS::AtMostOnce, Some(k + 1)));
            model.insert(f, k + 1);
        }
        assert!(matches!(small.repr, Repr::Large(_)));
        assert_eq!(small.len(), model.len());
        let ids: Vec<(String, u32)> = small
            .filters()
            .map(|(f, s)| (f.as_str().to_owned(), s.id.unwrap_or(0)))
            .collect();
        assert_eq!(ids, model.clone().into_iter().collect::<Vec<_>>());
        // Replacing in the B-tree.
        assert_eq!(
            small.insert(&filter("k/5/+"), sub(QoS::AtLeastOnce, None)),
            Some(sub(QoS::AtMostOnce, Some(6)))
        );
        model.insert("k/5/+".into(), 0);
        // Down to half of `SMALL_MAX`: a vector again, same contents and order.
        for k in 0..n - SMALL_MAX as u32 / 2 {
            let f = format!("k/{k}/+");
            assert!(small.remove(&filter(&f)).is_some(), "{f}");
            model.remove(&f);
        }
        assert!(matches!(small.repr, Repr::Small(_)));
        let ids: Vec<(String, u32)> = small
            .filters()
            .map(|(f, s)| (f.as_str().to_owned(), s.id.unwrap_or(0)))
            .collect();
        assert_eq!(ids, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn equality_ignores_the_representation() {
        let mut a = Subscriptions::new();
        let mut b = Subscriptions::new();
        for k in 0..SMALL_MAX as u32 + 1 {
            a.insert(&filter(&format!("x/{k}")), sub(QoS::AtMostOnce, None));
        }
        // `a` went to a B-tree and stays one above half of `SMALL_MAX`.
        for k in 0..SMALL_MAX as u32 / 4 {
            a.remove(&filter(&format!("x/{k}")));
        }
        for k in SMALL_MAX as u32 / 4..SMALL_MAX as u32 + 1 {
            b.insert(&filter(&format!("x/{k}")), sub(QoS::AtMostOnce, None));
        }
        assert!(matches!(a.repr, Repr::Large(_)));
        assert!(matches!(b.repr, Repr::Small(_)));
        assert_eq!(a, b);
        b.insert(&filter("x/0"), sub(QoS::AtMostOnce, None));
        assert_ne!(a, b);
    }

    #[test]
    fn an_entry_is_24_bytes_and_keeps_every_option() {
        assert_eq!(std::mem::size_of::<(Box<[u8]>, Packed)>(), 24);
        let mut s = Subscriptions::new();
        let all = [
            Subscription {
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: crate::codec::RetainHandling::DoNotSend,
                },
                id: Some(268_435_455),
            },
            sub(QoS::AtLeastOnce, Some(1)),
            sub(QoS::AtMostOnce, None),
        ];
        for (i, one) in all.iter().enumerate() {
            s.insert(&filter(&format!("f/{i}")), *one);
        }
        let back: Vec<Subscription> = s.iter().map(|(_, sub)| sub).collect();
        assert_eq!(back, all);
    }

    #[test]
    fn keeps_no_view_of_the_packet() {
        // The filter's bytes are copied: the buffer it was decoded from is not kept alive.
        let packet = Bytes::from(b"a/b/+ and the rest of a large read".to_vec());
        let f = TopicFilter::new(packet.slice(..5)).expect("valid");
        let mut s = Subscriptions::new();
        s.insert(&f, sub(QoS::AtMostOnce, None));
        assert!(!packet.is_unique());
        drop(f);
        assert!(packet.is_unique());
        assert_eq!(names(&s), ["a/b/+"]);
    }
}
