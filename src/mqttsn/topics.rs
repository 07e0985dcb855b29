//! Topic ids: the gateway-wide pre-defined table (MQTT-SN 6.7), each client's registry of
//! normal ids (6.5, 6.10), two-character short names (6.7), and the conversion of wire bytes
//! into validated `TopicName`s and `TopicFilter`s.
//!
//! Owns: which id means which name for one client, and id allocation (0x0000 and 0xFFFF are
//! never handed out, 5.3.11). Bounded: a registry never holds more than its configured size.
//!
//! Must never: touch a socket or the clock, or hold an id for a name that is not a valid
//! topic name.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::codec::MqttStr;
use crate::codec::string::validate_str;
use crate::codec::topic::{TopicFilter, TopicName};
use crate::config::Limits;

use super::codec::{TopicId, TopicRef};

/// Pre-defined topic ids (6.7): one table for every client, from `[mqttsn.predefined_topics]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PredefinedTopics {
    by_id: BTreeMap<TopicId, TopicName>,
    by_name: BTreeMap<TopicName, TopicId>,
}

impl PredefinedTopics {
    /// The table from validated configuration (`MqttSnConfig::validate` refused ids 0 and
    /// 0xFFFF and names listed twice; a repeated name here keeps its lowest id).
    pub fn new(map: &BTreeMap<u16, TopicName>) -> PredefinedTopics {
        let mut t = PredefinedTopics::default();
        for (&id, name) in map {
            let id = TopicId(id);
            t.by_id.insert(id, name.clone());
            t.by_name.entry(name.clone()).or_insert(id);
        }
        t
    }

    pub fn name(&self, id: TopicId) -> Option<&TopicName> {
        self.by_id.get(&id)
    }

    pub fn id(&self, name: &TopicName) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }
}

/// Why a registry cannot give an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistryFull;

/// One client's normal topic ids. An id is usable by the gateway in PUBLISH once the client
/// knows it: it registered the name itself, got it in SUBACK, or acknowledged our REGISTER.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    by_id: BTreeMap<TopicId, Entry>,
    by_name: BTreeMap<TopicName, TopicId>,
    /// Last id handed out; allocation continues after it.
    last: u16,
    /// Most ids held (at most 65534).
    max: usize,
}

#[derive(Clone, Debug)]
struct Entry {
    name: TopicName,
    /// The client knows this id (see the type's doc).
    known: bool,
}

impl Registry {
    pub fn new(max: usize) -> Registry {
        Registry {
            max: max.min(usize::from(u16::MAX - 1)),
            ..Registry::default()
        }
    }

    /// The id of `name`, allocating one when it has none. `known`: the client learns the id
    /// from this exchange (its REGISTER, our SUBACK); otherwise it is known once `confirm`ed.
    pub fn assign(&mut self, name: &TopicName, known: bool) -> Result<TopicId, RegistryFull> {
        if let Some(&id) = self.by_name.get(name) {
            if known {
                self.confirm(id);
            }
            return Ok(id);
        }
        if self.by_id.len() >= self.max {
            return Err(RegistryFull);
        }
        let id = self.next_free().ok_or(RegistryFull)?;
        self.by_id.insert(
            id,
            Entry {
                name: name.clone(),
                known,
            },
        );
        self.by_name.insert(name.clone(), id);
        Ok(id)
    }

    /// The next id not in use after `last`, skipping 0x0000 and 0xFFFF.
    fn next_free(&mut self) -> Option<TopicId> {
        let mut candidate = self.last;
        for _ in 0..u16::MAX {
            candidate = candidate.wrapping_add(1);
            if candidate == 0 || candidate == u16::MAX {
                continue;
            }
            if !self.by_id.contains_key(&TopicId(candidate)) {
                self.last = candidate;
                return Some(TopicId(candidate));
            }
        }
        None
    }

    /// The client acknowledged our REGISTER for `id`.
    pub fn confirm(&mut self, id: TopicId) {
        if let Some(e) = self.by_id.get_mut(&id) {
            e.known = true;
        }
    }

    /// Forgets `id` (REGACK refused it, or the client answered "invalid topic id").
    pub fn remove(&mut self, id: TopicId) {
        if let Some(e) = self.by_id.remove(&id) {
            self.by_name.remove(&e.name);
        }
    }

    /// The name of a normal id the client may use (any id we hold: the client may publish
    /// on an id from our REGISTER before its REGACK reaches us).
    pub fn name(&self, id: TopicId) -> Option<&TopicName> {
        self.by_id.get(&id).map(|e| &e.name)
    }

    /// The id the gateway may publish `name` under without registering it first.
    pub fn known_id(&self, name: &TopicName) -> Option<TopicId> {
        let id = *self.by_name.get(name)?;
        self.by_id.get(&id).filter(|e| e.known).map(|_| id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The id the client knows with the shortest name (the smallest REGISTER that can
    /// re-announce one), if any.
    pub fn shortest_known(&self) -> Option<(TopicId, &TopicName)> {
        self.by_id
            .iter()
            .filter(|(_, e)| e.known)
            .min_by_key(|(_, e)| e.name.len())
            .map(|(&id, e)| (id, &e.name))
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// How the gateway names `topic` to a client without a REGISTER, in the order 6.7 and 6.10
/// suggest: a pre-defined id, a two-character short name, an id the client already knows.
/// `None`: the topic must be registered first.
pub fn outbound_ref(
    topic: &TopicName,
    predefined: &PredefinedTopics,
    registry: &Registry,
) -> Option<TopicRef> {
    if let Some(id) = predefined.id(topic) {
        return Some(TopicRef::Predefined(id));
    }
    if let &[a, b] = topic.as_bytes() {
        return Some(TopicRef::Short([a, b]));
    }
    registry.known_id(topic).map(TopicRef::Normal)
}

/// A topic name from wire bytes: MQTT string rules, no wildcards, and the broker's limits
/// (`max_topic_len`, `max_topic_levels`), so that nothing the session would refuse is ever
/// given an id.
pub fn topic_name(bytes: Bytes, limits: &Limits) -> Option<TopicName> {
    validate_str(&bytes).ok()?;
    let name = TopicName::from_mqtt_str(MqttStr::from_validated(bytes)).ok()?;
    (name.len() <= limits.max_topic_len && name.level_count() <= limits.max_topic_levels)
        .then_some(name)
}

/// A topic filter from wire bytes (SUBSCRIBE/UNSUBSCRIBE with a name or a short name).
/// The session applies the broker's filter limits and answers with a SUBACK code.
pub fn topic_filter(bytes: Bytes) -> Option<TopicFilter> {
    validate_str(&bytes).ok()?;
    TopicFilter::from_mqtt_str(MqttStr::from_validated(bytes)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &'static str) -> TopicName {
        TopicName::from_static(s)
    }

    #[test]
    fn registry_allocates_nonzero_ids_and_is_bounded() {
        let mut r = Registry::new(2);
        let a = r.assign(&name("a/b"), true).expect("room");
        assert_eq!(a, TopicId(1));
        assert_eq!(r.assign(&name("a/b"), true), Ok(a), "same name, same id");
        let c = r.assign(&name("c/d"), false).expect("room");
        assert_eq!(c, TopicId(2));
        assert_eq!(r.assign(&name("e/f"), true), Err(RegistryFull));
        assert_eq!(r.known_id(&name("c/d")), None, "not known before REGACK");
        r.confirm(c);
        assert_eq!(r.known_id(&name("c/d")), Some(c));
        r.remove(a);
        assert_eq!(r.name(a), None);
        assert_eq!(r.assign(&name("e/f"), true), Ok(TopicId(3)));
    }

    #[test]
    fn registry_wraps_past_reserved_ids() {
        let mut r = Registry::new(10);
        r.last = u16::MAX - 1;
        assert_eq!(
            r.assign(&name("x"), true),
            Ok(TopicId(1)),
            "skips 0xFFFF and 0"
        );
    }

    #[test]
    fn outbound_prefers_predefined_then_short_then_known() {
        let mut map = BTreeMap::new();
        map.insert(7, name("pre/def"));
        let pre = PredefinedTopics::new(&map);
        let mut reg = Registry::new(10);
        assert_eq!(
            outbound_ref(&name("pre/def"), &pre, &reg),
            Some(TopicRef::Predefined(TopicId(7)))
        );
        assert_eq!(
            outbound_ref(&name("ab"), &pre, &reg),
            Some(TopicRef::Short(*b"ab"))
        );
        assert_eq!(outbound_ref(&name("x/y"), &pre, &reg), None);
        let id = reg.assign(&name("x/y"), true).expect("room");
        assert_eq!(
            outbound_ref(&name("x/y"), &pre, &reg),
            Some(TopicRef::Normal(id))
        );
    }

    #[test]
    fn wire_topics_are_validated() {
        let l = Limits::default();
        assert!(topic_name(Bytes::from_static(b"a/b"), &l).is_some());
        assert!(topic_name(Bytes::from_static(b"a/#"), &l).is_none());
        assert!(topic_name(Bytes::from_static(b""), &l).is_none());
        assert!(topic_name(Bytes::from_static(b"a\x00"), &l).is_none());
        assert!(topic_name(Bytes::from_static(b"\xff"), &l).is_none());
        let long = Bytes::from(vec![b'a'; l.max_topic_len + 1]);
        assert!(topic_name(long, &l).is_none());
        assert!(topic_filter(Bytes::from_static(b"a/+")).is_some());
        assert!(topic_filter(Bytes::from_static(b"a#")).is_none());
    }
}
