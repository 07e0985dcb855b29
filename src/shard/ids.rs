//! The typed ids of a shard's runtime tables: which connection, which client, and which of
//! the connections or clients that used a slot.
//!
//! Owns: `ConnId` (a connection's key in the shard's connection slab), `ClientSlot` (a
//! client's key in its client slab), `ConnKey` and `SessionKey` (an id with the generation
//! that tells the connection or client apart from a later one in the same slot), the poller
//! token that encodes a `ConnKey`, and `SlotKey`, the one conversion between a typed id and
//! a slab index. Every id is a `u32` in a newtype: zero cost, but a connection id cannot be
//! passed where a client slot is meant, nor index the wrong slab.
//!
//! Must never: let an id of one slab index another, or name a connection or client by its
//! bare id where the reference may be stale (a timer, a verdict, a queued job, another
//! shard): that takes a `ConnKey` or a `SessionKey`.

use std::fmt;

/// A key of a `Slots` slab: converts to and from the slab's index.
pub(crate) trait SlotKey: Copy {
    /// The key of slab index `index` (always below `u32::MAX`: a slab never holds that many).
    fn from_index(index: usize) -> Self;
    /// The slab index of this key.
    fn index(self) -> usize;
}

/// A slab key over `u32`: the one place its index is converted, and its number for logs.
macro_rules! slab_key {
    ($ty:ident, $what:literal) => {
        impl SlotKey for $ty {
            fn from_index(index: usize) -> $ty {
                debug_assert!(
                    u32::try_from(index).is_ok_and(|i| i < u32::MAX),
                    "{} slab index {index}",
                    $what
                );
                $ty(index as u32)
            }

            fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

/// A connection of this shard: its key in the connection slab (`Core::conns`). A slot is
/// reused once its connection is gone; where a reference may outlive the connection, it is a
/// `ConnKey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub(crate) struct ConnId(u32);

impl ConnId {
    /// The id of number `raw` (tests name connections by number).
    #[cfg(test)]
    pub(crate) const fn from_raw(raw: u32) -> ConnId {
        ConnId(raw)
    }
}

slab_key!(ConnId, "connection");

/// A client (session) homed on this shard: its key in the client slab (`Core::clients`).
/// Where a reference may outlive the client (another shard's, a queued job), the client's
/// generation goes with it (`SessionKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub(crate) struct ClientSlot(u32);

impl ClientSlot {
    /// The slot's number (tests name clients by number).
    #[cfg(test)]
    pub(crate) const fn raw(self) -> u32 {
        self.0
    }

    /// The slot of number `raw`.
    #[cfg(test)]
    pub(crate) const fn from_raw(raw: u32) -> ClientSlot {
        ClientSlot(raw)
    }
}

slab_key!(ClientSlot, "client");

/// One connection of this shard, told apart from a later one in the same slot: what a timer,
/// a queue of the turn, a verdict or another shard keeps to name a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub(crate) id: ConnId,
    pub(crate) generation: u32,
}

impl ConnKey {
    pub(crate) const fn new(id: ConnId, generation: u32) -> ConnKey {
        ConnKey { id, generation }
    }

    /// The poller (and receive ring) token of the connection: generation in the high half,
    /// slot in the low half. Slot `u32::MAX` is never a connection's (`listen::listener_of`).
    pub(crate) const fn token(self) -> u64 {
        (self.generation as u64) << 32 | self.id.0 as u64
    }

    /// The connection a token names (`token`).
    pub(crate) const fn from_token(token: u64) -> ConnKey {
        ConnKey {
            id: ConnId(token as u32),
            generation: (token >> 32) as u32,
        }
    }
}

/// A session on its home shard, told apart from a later one in the same slot: what other
/// shards (shared-subscription members), a timer or a queued job keep to name a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionKey {
    pub(crate) slot: ClientSlot,
    pub(crate) generation: u32,
}

impl SessionKey {
    pub(crate) const fn new(slot: ClientSlot, generation: u32) -> SessionKey {
        SessionKey { slot, generation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let key = ConnKey::new(ConnId::from_raw(0x1234_5678), 0x9abc_def0);
        assert_eq!(key.token(), 0x9abc_def0_1234_5678);
        assert_eq!(ConnKey::from_token(key.token()), key);
    }

    #[test]
    fn ids_are_as_small_as_their_number() {
        assert_eq!(std::mem::size_of::<SessionKey>(), 8);
        assert_eq!(std::mem::size_of::<ConnId>(), 4);
        assert_eq!(std::mem::size_of::<Option<ConnId>>(), 8);
        assert_eq!(std::mem::size_of::<ClientSlot>(), 4);
        assert_eq!(std::mem::size_of::<ConnKey>(), 8);
    }
}
