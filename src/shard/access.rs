//! Authorization as the runtime runs it: the ACL in force applied to this shard's clients,
//! and re-authentication on their live connections.
//!
//! Owns: what the rules need per client (`ClientAuth`, in a side table: only a client with a
//! user name, an enhanced authentication, a subscription the ACL covers in part, or an
//! identity the store did not keep has an entry; an anonymous idle client costs nothing),
//! the SUBSCRIBE policy, the publish check, the read check of deliveries and its cache, the
//! read check of what waits in a session (queued, or sent and not acknowledged) before it
//! goes to the client that resumes it, and applying a reloaded snapshot to every client of
//! the shard.
//!
//! Costs: without an ACL nothing here runs per message. With one, a PUBLISH (or a will)
//! costs one `may_publish`, a SUBSCRIBE one `subscribe_access` per filter. A delivery costs
//! nothing unless its client holds a subscription the ACL covers only in part (e.g. `#`
//! for a user who may read `sensors/#` but not `sensors/secret/#`); then the decision
//! `may_read(client, topic)` is taken from a per-shard cache keyed by the client's identity
//! and the topic, and made only on a miss: per topic, not per message. A subscription the
//! ACL covers whole needs no check at delivery, and one it covers not at all is refused.
//!
//! What waits in a session was checked for whoever held it when it was routed (or not at
//! all: a session restored from the store is attributed to nobody until its client comes
//! back). So when a client resumes a session (`drop_unreadable`, before `connect` sends
//! anything), every waiting message is checked against that client's rules, one `may_read`
//! per distinct topic; those it may not read are dropped from the session and the store.
//! This costs nothing without an ACL or with nothing waiting.
//!
//! A reload (`apply_new_rules`) checks every subscription of every client again: those no
//! longer allowed are removed (as by UNSUBSCRIBE, without a packet: MQTT has none), a
//! connected client's queue loses what it may no longer read, and the cache is emptied.
//! Publishes are checked against the rules in force when they arrive.
//!
//! Must never: deliver a topic through a subscription the rules cover only in part without
//! `may_read`, let a resumed session send a waiting message its new client may not read,
//! route a publish the rules refuse, or apply one client's rules to another client in the
//! same slot (entries carry the client's generation).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::auth::Identity;
use super::close::SessionCall;
use super::core::Core;
use super::ids::{ClientSlot, ConnId};
use crate::auth::Authenticator;
use crate::auth::acl::{AclSubject, SubscribeAccess};
use crate::auth::random::OsRandom;
use crate::codec::{Auth, Packet, PacketType, ReasonCode};
use crate::log;
use crate::router::topic::{TopicFilter, TopicName};
use crate::session::{AccessPolicy, ClientId, Enhanced};

/// Entries of the per-shard read cache: 1024 of about 48 bytes keep a shard's hot (client,
/// topic) pairs in 48 KiB, allocated at the first delivery that needs a check.
const READ_CACHE_ENTRIES: usize = 1024;

/// What the rules need to know about one client beyond its session.
#[derive(Debug)]
struct ClientAuth {
    /// The client's generation: an entry never applies to a later client in its slot.
    generation: u32,
    username: Option<Box<str>>,
    /// False for a session restored from the store, which keeps no user name: its rules
    /// are applied when its client connects again (its will was checked at its CONNECT).
    known: bool,
    /// Subscriptions the ACL covers only in part: deliveries to this client are checked.
    partial: Vec<TopicFilter>,
    /// This identity's key in the read cache (a fresh one at every attach).
    cache_id: u64,
    /// The client authenticated with an Authentication Method (re-authentication).
    enhanced: Option<Enhanced>,
}

impl ClientAuth {
    fn new(generation: u32) -> ClientAuth {
        ClientAuth {
            generation,
            username: None,
            known: true,
            partial: Vec::new(),
            cache_id: 0,
            enhanced: None,
        }
    }

    /// Whether the entry says nothing an absent one would not.
    fn is_default(&self) -> bool {
        self.username.is_none() && self.known && self.partial.is_empty() && self.enhanced.is_none()
    }
}

/// The shard's authorization state (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Access {
    clients: HashMap<ClientSlot, ClientAuth>,
    /// Entries whose `partial` is not empty: while 0, no delivery is checked.
    partial_clients: usize,
    cache: ReadCache,
    next_cache_id: u64,
}

impl Access {
    fn get(&self, slot: ClientSlot, generation: u32) -> Option<&ClientAuth> {
        self.clients
            .get(&slot)
            .filter(|e| e.generation == generation)
    }

    /// Runs `f` on client `slot`'s entry (made if missing or stale), then keeps the count of
    /// partial clients and drops an entry that became default.
    fn update<R>(
        &mut self,
        slot: ClientSlot,
        generation: u32,
        f: impl FnOnce(&mut ClientAuth) -> R,
    ) -> R {
        self.remove_stale(slot, generation);
        let e = self
            .clients
            .entry(slot)
            .or_insert_with(|| ClientAuth::new(generation));
        let had = !e.partial.is_empty();
        let r = f(e);
        let has = !e.partial.is_empty();
        let default = e.is_default();
        match (had, has) {
            (false, true) => self.partial_clients += 1,
            (true, false) => self.partial_clients -= 1,
            (false, false) | (true, true) => {}
        }
        if default {
            self.clients.remove(&slot);
        }
        r
    }

    fn remove_stale(&mut self, slot: ClientSlot, generation: u32) {
        if self
            .clients
            .get(&slot)
            .is_some_and(|e| e.generation != generation)
        {
            self.remove(slot);
        }
    }

    fn remove(&mut self, slot: ClientSlot) {
        if let Some(e) = self.clients.remove(&slot)
            && !e.partial.is_empty()
        {
            self.partial_clients -= 1;
        }
    }
}

/// `may_read` decisions by (identity, topic), direct-mapped: a collision replaces the entry.
#[derive(Debug, Default)]
struct ReadCache {
    /// Empty until the first delivery that needs a check, then `READ_CACHE_ENTRIES`.
    entries: Vec<Option<Cached>>,
    hasher: foldhash::fast::RandomState,
}

#[derive(Debug)]
struct Cached {
    who: u64,
    topic: Box<[u8]>,
    allowed: bool,
}

impl ReadCache {
    fn get_or(&mut self, who: u64, topic: &[u8], decide: impl FnOnce() -> bool) -> bool {
        if self.entries.is_empty() {
            self.entries.resize_with(READ_CACHE_ENTRIES, || None);
        }
        let i = (self.hasher.hash_one((who, topic)) as usize) % READ_CACHE_ENTRIES;
        if let Some(c) = &self.entries[i]
            && c.who == who
            && *c.topic == *topic
        {
            return c.allowed;
        }
        let allowed = decide();
        self.entries[i] = Some(Cached {
            who,
            topic: topic.into(),
            allowed,
        });
        allowed
    }

    fn clear(&mut self) {
        self.entries = Vec::new();
    }
}

/// The SUBSCRIBE policy of one client under one snapshot.
#[derive(Debug)]
pub(crate) struct AclPolicy {
    snapshot: Arc<Authenticator>,
    client_id: ClientId,
    username: Option<Box<str>>,
}

impl AccessPolicy for AclPolicy {
    fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        let who = AclSubject::new(self.client_id.as_str(), self.username.as_deref());
        self.snapshot.subscribe_access(&who, filter) != SubscribeAccess::Denied
    }
}

impl Core {
    /// The client in `slot` authenticated as `identity` (attach).
    pub(crate) fn set_identity(&mut self, slot: ClientSlot, identity: &Identity) {
        let Some(generation) = self.clients.get(slot).map(|c| c.generation) else {
            return;
        };
        let access = &mut self.auth.access;
        access.next_cache_id += 1;
        let cache_id = access.next_cache_id;
        access.update(slot, generation, |e| {
            e.username = identity.username.clone();
            e.known = true;
            e.partial.clear();
            e.cache_id = cache_id;
            e.enhanced = identity.enhanced.as_deref().map(Enhanced::new);
        });
    }

    /// Sessions restored from the store: who they belong to is unknown until their client
    /// connects again.
    pub(crate) fn mark_restored(&mut self, slots: &[ClientSlot]) {
        for &slot in slots {
            if let Some(generation) = self.clients.get(slot).map(|c| c.generation) {
                self.auth
                    .access
                    .update(slot, generation, |e| e.known = false);
            }
        }
    }

    /// Client `slot`'s session ended.
    pub(crate) fn access_client_ended(&mut self, slot: ClientSlot) {
        self.auth.access.remove(slot);
    }

    /// Client id, user name and whether they are known, for client `slot`.
    fn subject_of(&self, slot: ClientSlot) -> Option<(&str, Option<&str>, bool)> {
        let client = self.clients.get(slot)?;
        let entry = self.auth.access.get(slot, client.generation);
        Some((
            client.session.client_id().as_str(),
            entry.and_then(|e| e.username.as_deref()),
            entry.is_none_or(|e| e.known),
        ))
    }

    /// The rules a SUBSCRIBE of client `slot` is checked against; `None` for any other
    /// packet, or without an ACL.
    pub(crate) fn subscribe_policy(&self, slot: ClientSlot, packet: &Packet) -> Option<AclPolicy> {
        if !matches!(packet, Packet::Subscribe(_)) || self.auth.snapshot.acl().is_none() {
            return None;
        }
        let (_, username, _) = self.subject_of(slot)?;
        let client = self.clients.get(slot)?;
        Some(AclPolicy {
            snapshot: Arc::clone(&self.auth.snapshot),
            client_id: client.session.client_id().clone(),
            username: username.map(Into::into),
        })
    }

    /// Whether client `slot` may publish on `topic` (its PUBLISH, or its will). A restored
    /// session's will was checked at its CONNECT, under the rules then in force.
    pub(crate) fn may_publish_from(&self, slot: ClientSlot, topic: &TopicName) -> bool {
        if self.auth.snapshot.acl().is_none() {
            return true;
        }
        match self.subject_of(slot) {
            Some((_, _, false)) => true,
            Some((client_id, username, true)) => {
                let who = AclSubject::new(client_id, username);
                self.auth.snapshot.may_publish(&who, topic)
            }
            None => false,
        }
    }

    /// The acknowledgement of a QoS 1/2 publish the ACL refused: v5 0x87; 3.x has no code
    /// for it (an error closes the connection), so it is acknowledged as a success and
    /// dropped, as mosquitto does.
    pub(crate) fn refused_publish_code(&self, slot: ClientSlot) -> ReasonCode {
        let v5 = self
            .clients
            .get(slot)
            .and_then(|c| c.session.protocol())
            .is_some_and(|v| v.is_v5());
        if v5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        }
    }

    /// `Action::Subscribe` of client `slot`: a filter the ACL covers in part makes its
    /// deliveries checked.
    pub(crate) fn note_subscription(&mut self, slot: ClientSlot, filter: &TopicFilter) {
        let partial = {
            let Some((client_id, username, known)) = self.subject_of(slot) else {
                return;
            };
            let who = AclSubject::new(client_id, username);
            known && self.auth.snapshot.subscribe_access(&who, filter) == SubscribeAccess::Partial
        };
        let Some(generation) = self.clients.get(slot).map(|c| c.generation) else {
            return;
        };
        let listed = self
            .auth
            .access
            .get(slot, generation)
            .is_some_and(|e| e.partial.contains(filter));
        if partial && !listed {
            let f = filter.clone();
            self.auth
                .access
                .update(slot, generation, |e| e.partial.push(f));
        } else if !partial && listed {
            self.note_unsubscription(slot, filter);
        }
    }

    /// `Action::Unsubscribe` of client `slot`.
    pub(crate) fn note_unsubscription(&mut self, slot: ClientSlot, filter: &TopicFilter) {
        let Some(generation) = self.clients.get(slot).map(|c| c.generation) else {
            return;
        };
        if self
            .auth
            .access
            .get(slot, generation)
            .is_some_and(|e| e.partial.contains(filter))
        {
            self.auth
                .access
                .update(slot, generation, |e| e.partial.retain(|f| f != filter));
        }
    }

    /// Whether a message on `topic` may go to client `slot` (module documentation).
    pub(crate) fn may_deliver(&mut self, slot: ClientSlot, topic: &TopicName) -> bool {
        if self.auth.access.partial_clients == 0 {
            return true;
        }
        let Some(client) = self.clients.get(slot) else {
            return true;
        };
        let access = &mut self.auth.access;
        let Some(entry) = access.clients.get(&slot) else {
            return true;
        };
        if entry.generation != client.generation || entry.partial.is_empty() {
            return true;
        }
        let snapshot = &self.auth.snapshot;
        let who = AclSubject::new(
            client.session.client_id().as_str(),
            entry.username.as_deref(),
        );
        access.cache.get_or(entry.cache_id, topic.as_bytes(), || {
            snapshot.may_read(&who, topic)
        })
    }

    /// The line for what `drop_unreadable` dropped when client `slot` resumed its session:
    /// one per resume, whatever the number of messages.
    pub(crate) fn log_unreadable_dropped(
        &self,
        slot: ClientSlot,
        (dropped, first): (usize, Option<TopicName>),
    ) {
        let Some(first) = first else {
            return;
        };
        let user = self
            .clients
            .get(slot)
            .and_then(|c| self.auth.access.get(slot, c.generation))
            .and_then(|e| e.username.as_deref())
            .map_or_else(|| "no user name".to_owned(), |u| format!("user {u}"));
        log!(
            INFO,
            self.log_id,
            "client {} ({user}): {dropped} waiting message(s) dropped, the rules do not let it read them (first topic: {})",
            self.client_name(Some(slot)),
            first.as_str()
        );
    }

    /// Drops the messages waiting in client `slot`'s session that its client, as identified
    /// now, may not read (`Session::drop_unreadable`), and executes the session's actions.
    /// One `may_read` per distinct topic; nothing without an ACL, without messages, or for a
    /// restored session whose client has not come back. Returns how many were dropped and
    /// the first one's topic.
    pub(crate) fn drop_unreadable(&mut self, slot: ClientSlot) -> (usize, Option<TopicName>) {
        let snapshot = &self.auth.snapshot;
        let Some(client) = self.clients.get_mut(slot) else {
            return (0, None);
        };
        if snapshot.acl().is_none() || !client.session.holds_messages() {
            return (0, None);
        }
        let entry = self.auth.access.get(slot, client.generation);
        if entry.is_some_and(|e| !e.known) {
            return (0, None);
        }
        let client_id = client.session.client_id().clone();
        let who = AclSubject::new(
            client_id.as_str(),
            entry.and_then(|e| e.username.as_deref()),
        );
        let mut decided: HashMap<Box<[u8]>, bool> = HashMap::new();
        let mut first = None;
        let mut may_read = |topic: &TopicName| {
            if let Some(&allowed) = decided.get(topic.as_bytes()) {
                return allowed;
            }
            let allowed = snapshot.may_read(&who, topic);
            if !allowed && first.is_none() {
                first = Some(topic.clone());
            }
            decided.insert(topic.as_bytes().into(), allowed);
            allowed
        };
        let mut actions = std::mem::take(&mut self.actions);
        let dropped = client.session.drop_unreadable(&mut may_read, &mut actions);
        self.apply_actions(slot, &mut actions, None);
        self.actions = actions;
        (dropped, first)
    }

    /// Whether client `slot` authenticated with a method: its AUTH packets are
    /// re-authentication (`on_reauth`), not protocol errors.
    pub(crate) fn uses_enhanced_auth(&self, slot: ClientSlot) -> bool {
        self.clients.get(slot).is_some_and(|c| {
            self.auth
                .access
                .get(slot, c.generation)
                .is_some_and(|e| e.enhanced.is_some())
        })
    }

    /// An AUTH packet of client `slot` on connection `id` [MQTT-4.12.1]: answered by its
    /// `Enhanced`; a failure ends the connection (DISCONNECT 0x87, or 0x82 out of sequence).
    pub(crate) fn on_reauth(&mut self, slot: ClientSlot, id: ConnId, auth: Auth) {
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        client.session.packet_seen(self.now_ms);
        let generation = client.generation;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let snapshot = &self.auth.snapshot;
        let Some(enhanced) = self
            .auth
            .access
            .clients
            .get_mut(&slot)
            .filter(|e| e.generation == generation)
            .and_then(|e| e.enhanced.as_mut())
        else {
            return;
        };
        let result = enhanced.on_auth(auth, &**snapshot, &mut OsRandom, &mut conn.out);
        self.mark_dirty(id);
        let Err(e) = result else {
            return;
        };
        let code = e.disconnect_code();
        log!(
            INFO,
            self.log_id,
            "client {}: re-authentication failed ({}); disconnecting",
            self.client_name(Some(slot)),
            code.name()
        );
        let mut actions = std::mem::take(&mut self.actions);
        if let (Some(client), Some(conn)) = (self.clients.get_mut(slot), self.conns.get_mut(id)) {
            client
                .session
                .end_connection(code, self.now_ms, &mut conn.out, &mut actions);
        }
        // The close line: an AUTH packet the session refused, with its DISCONNECT code.
        self.session_call = SessionCall::Packet {
            packet: PacketType::Auth,
            disconnect: None,
        };
        self.apply_actions(slot, &mut actions, None);
        self.session_call = SessionCall::Other;
        self.actions = actions;
    }

    /// Checks client `slot`'s subscriptions against the rules in force: those it may no
    /// longer hold are revoked, those covered in part are noted. Returns how many were
    /// revoked. A restored session whose client has not come back is left as it is.
    pub(crate) fn recheck_subscriptions(&mut self, slot: ClientSlot) -> usize {
        let Some(generation) = self.clients.get(slot).map(|c| c.generation) else {
            return 0;
        };
        let snapshot = Arc::clone(&self.auth.snapshot);
        let mut partial = Vec::new();
        let mut revoked = Vec::new();
        {
            let Some((client_id, username, known)) = self.subject_of(slot) else {
                return 0;
            };
            if !known {
                return 0;
            }
            let who = AclSubject::new(client_id, username);
            if snapshot.acl().is_some()
                && let Some(client) = self.clients.get(slot)
            {
                for (filter, _) in client.session.subscriptions() {
                    match snapshot.subscribe_access(&who, &filter) {
                        SubscribeAccess::Full => {}
                        SubscribeAccess::Partial => partial.push(filter),
                        SubscribeAccess::Denied => revoked.push(filter),
                    }
                }
            }
        }
        self.auth
            .access
            .update(slot, generation, |e| e.partial = partial);
        if revoked.is_empty() {
            return 0;
        }
        log!(
            INFO,
            self.log_id,
            "client {}: {} subscription(s) revoked, the rules no longer allow them (first: {})",
            self.client_name(Some(slot)),
            revoked.len(),
            revoked[0].as_str()
        );
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(client) = self.clients.get_mut(slot) {
            for filter in &revoked {
                client.session.revoke_subscription(filter, &mut actions);
            }
        }
        self.apply_actions(slot, &mut actions, None);
        self.actions = actions;
        if let Some(conn) = self.clients.get(slot).and_then(|c| c.conn) {
            self.mark_dirty(conn);
        }
        revoked.len()
    }

    /// A reloaded snapshot reached this shard: every client's subscriptions are checked
    /// against it, cached decisions are dropped, and a connected client's queue loses what
    /// the client may no longer read (an offline session's messages are checked when its
    /// client resumes it).
    pub(crate) fn apply_new_rules(&mut self) {
        self.auth.access.cache.clear();
        let slots: Vec<(ClientSlot, bool)> = self
            .clients
            .iter()
            .map(|(slot, c)| (slot, c.session.is_connected()))
            .collect();
        let (mut revoked, mut dropped) = (0, 0);
        for (slot, connected) in slots {
            revoked += self.recheck_subscriptions(slot);
            if connected {
                dropped += self.drop_unreadable(slot).0;
            }
        }
        log!(
            INFO,
            self.log_id,
            "authentication and ACL rules reloaded; {revoked} subscription(s) revoked, {dropped} queued message(s) dropped"
        );
    }
}
