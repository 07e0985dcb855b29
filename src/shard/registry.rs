//! The client ids homed on a shard: client id -> slot in the shard's client slab.
//!
//! Owns: only the slots. The id itself lives once, in the client's `Session`; the table
//! hashes it from there. A `HashMap<ClientId, ClientSlot>` kept a second handle on every id (and
//! cloning the id's `Bytes` made it allocate a shared header): about 80 B per client where
//! this table takes about 5-10 B, and a client exists once per idle connection.
//!
//! Must never: hold a slot that is not live in the slab it is given (the table rehashes
//! through the slab when it grows). Ids are hashed with a per-process random key, because
//! clients choose them.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::core::Clients;
use super::ids::ClientSlot;
use crate::session::ClientId;

/// Slots of the clients homed on this shard, found by client id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    table: HashTable<ClientSlot>,
    hasher: RandomState,
}

impl Registry {
    fn hash(hasher: &RandomState, id: &ClientId) -> u64 {
        hasher.hash_one(id.as_str().as_bytes())
    }

    /// The slot of the client with id `id`.
    pub(crate) fn get(&self, clients: &Clients, id: &ClientId) -> Option<ClientSlot> {
        let hash = Self::hash(&self.hasher, id);
        self.table
            .find(hash, |&slot| {
                clients
                    .get(slot)
                    .is_some_and(|c| c.session.client_id() == id)
            })
            .copied()
    }

    /// Registers the client in `slot` (already in `clients`) under its session's id, which
    /// no other registered client has.
    pub(crate) fn insert(&mut self, clients: &Clients, slot: ClientSlot) {
        let Some(client) = clients.get(slot) else {
            super::core::broken_invariant(
                None,
                format_args!("client slot {slot} registered but not in the slab"),
            );
            return;
        };
        let hasher = &self.hasher;
        let hash = Self::hash(hasher, client.session.client_id());
        self.table.insert_unique(hash, slot, |&other| {
            clients
                .get(other)
                .map_or(0, |c| Self::hash(hasher, c.session.client_id()))
        });
    }

    /// Forgets `slot` if it is registered under `id` (the client's id; the client may
    /// already be out of the slab).
    pub(crate) fn remove(&mut self, id: &ClientId, slot: ClientSlot) {
        let hash = Self::hash(&self.hasher, id);
        if let Ok(entry) = self.table.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec::MqttStr;
    use crate::config::Limits;
    use crate::session::Session;
    use crate::shard::core::Client;

    fn client(id: &str) -> Client {
        Client {
            session: Session::new(self::id(id), Arc::new(Limits::default())),
            conn: None,
            generation: 0,
            timer_tick: 0,
            durable: false,
            share_load: crate::shard::share::ShareLoad::NotMember,
        }
    }

    fn id(s: &str) -> ClientId {
        ClientId::new(MqttStr::try_from_str(s).expect("id"), &Limits::default()).expect("valid id")
    }

    /// Thousands of ids (so the table grows and rehashes through the slab), then removals:
    /// every lookup names the right slot, or none once removed.
    #[test]
    fn finds_each_id_through_growth_and_removal() {
        let mut clients = Clients::new();
        let mut registry = Registry::default();
        for i in 0..5000 {
            let slot = clients.insert(client(&format!("c{i}")));
            registry.insert(&clients, slot);
        }
        assert_eq!(registry.len(), 5000);
        for i in (0..5000).step_by(2) {
            let slot = registry
                .get(&clients, &id(&format!("c{i}")))
                .expect("found");
            let removed = clients.try_remove(slot).expect("live");
            registry.remove(removed.session.client_id(), slot);
        }
        assert_eq!(registry.len(), 2500);
        for i in 0..5000 {
            let found = registry.get(&clients, &id(&format!("c{i}")));
            if i % 2 == 0 {
                assert_eq!(found, None, "c{i} was removed");
            } else {
                let slot = found.expect("still registered");
                assert_eq!(
                    clients.get(slot).expect("live").session.client_id(),
                    &id(&format!("c{i}"))
                );
            }
        }
        assert_eq!(registry.get(&clients, &id("nobody")), None);
    }

    /// Removal names the slot: removing the id with a slot it is not registered under (a
    /// stale one) leaves the registration alone.
    #[test]
    fn removal_of_another_slot_keeps_the_registration() {
        let mut clients = Clients::new();
        let mut registry = Registry::default();
        let old = clients.insert(client("same"));
        registry.insert(&clients, old);
        let gone = clients.try_remove(old).expect("live");
        registry.remove(gone.session.client_id(), old);
        let new = clients.insert(client("same"));
        registry.insert(&clients, new);
        registry.remove(
            gone.session.client_id(),
            ClientSlot::from_raw(old.raw() + 1000),
        );
        assert_eq!(registry.get(&clients, &id("same")), Some(new));
    }
}
