//! The net effect of the ops not yet committed, folded by key.
//!
//! Owns: [`Pending`], what the next transaction will write. Ops fold into it in order; a later
//! op on a key replaces or amends the earlier one, so an entry put and removed before the
//! commit never reaches redb, and a put followed by a state change is written once. After a
//! failed commit the writer keeps folding into the same `Pending`: the retry list is bounded by
//! the keys touched, not by the ops sent. Must never: read or write redb (see `flush`), or
//! change the outcome of the ops: folding is exact because ops on different keys commute and
//! `RemoveSession` is kept as a wipe that runs before the client's later ops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::types::{
    AwaitRelRecord, EntryRecord, EntryState, MessageRecord, Op, SessionRecord, SubRecord,
};

/// What the next transaction does to one entry row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryAction {
    Put(EntryRecord),
    /// Change the state of the row on disk, if there is one.
    SetState(EntryState),
    Remove,
}

/// The folded ops. `None` values are removals.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Clients whose rows on disk are all removed first (`RemoveSession`); the maps below only
    /// hold ops that came after the wipe.
    pub wiped: BTreeSet<Bytes>,
    pub sessions: BTreeMap<Bytes, Option<SessionRecord>>,
    pub subs: BTreeMap<(Bytes, Bytes), Option<SubRecord>>,
    pub entries: BTreeMap<(Bytes, u64), EntryAction>,
    pub await_rel: BTreeMap<(Bytes, u16), Option<AwaitRelRecord>>,
    pub retained: BTreeMap<Bytes, Option<MessageRecord>>,
    /// Fan-out records: `true` put, `false` removed.
    pub fanout: BTreeMap<(u64, u8), bool>,
    /// Bodies offered by `PutMessage`; written only if referenced at the end of the transaction
    /// and not already stored.
    pub messages: HashMap<u64, Arc<MessageRecord>>,
    /// Ops folded in since the last successful commit.
    pub ops: usize,
    /// Ops whose effect a later op replaced before it reached disk.
    pub absorbed: u64,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    pub fn clear(&mut self) {
        *self = Pending::default();
    }

    pub fn apply(&mut self, op: Op) {
        self.ops += 1;
        let replaced = match op {
            Op::PutSession { client, record } => {
                self.sessions.insert(client, Some(record)).is_some()
            }
            Op::RemoveSession { client } => {
                self.wipe(&client);
                self.wiped.insert(client);
                false
            }
            Op::PutSub {
                client,
                filter,
                record,
            } => self.subs.insert((client, filter), Some(record)).is_some(),
            Op::RemoveSub { client, filter } => self.subs.insert((client, filter), None).is_some(),
            Op::PutMessage { id, record } => {
                // Repeating the body of a message is the contract (one per referencing batch),
                // not a superseded write.
                self.messages.insert(id.0, record);
                false
            }
            Op::PutEntry {
                client,
                seq,
                record,
            } => self
                .entries
                .insert((client, seq), EntryAction::Put(record))
                .is_some(),
            Op::SetEntryState { client, seq, state } => self.set_state(client, seq, state),
            Op::RemoveEntry { client, seq } => self
                .entries
                .insert((client, seq), EntryAction::Remove)
                .is_some(),
            Op::PutAwaitRel {
                client,
                packet_id,
                record,
            } => self
                .await_rel
                .insert((client, packet_id), Some(record))
                .is_some(),
            Op::RemoveAwaitRel { client, packet_id } => {
                self.await_rel.insert((client, packet_id), None).is_some()
            }
            Op::PutRetained { topic, record } => {
                self.retained.insert(topic, Some(record)).is_some()
            }
            Op::RemoveRetained { topic } => self.retained.insert(topic, None).is_some(),
            Op::PutFanout { msg, shard } => self.fanout.insert((msg.0, shard), true).is_some(),
            Op::RemoveFanout { msg, shard } => self.fanout.insert((msg.0, shard), false).is_some(),
        };
        if replaced {
            self.absorbed += 1;
        }
    }

    /// A state change amends a put still pending; on a pending removal it does nothing, as it
    /// would on a missing row.
    fn set_state(&mut self, client: Bytes, seq: u64, state: EntryState) -> bool {
        match self.entries.get_mut(&(client.clone(), seq)) {
            Some(EntryAction::Put(record)) => {
                record.state = state;
                true
            }
            Some(EntryAction::SetState(s)) => {
                *s = state;
                true
            }
            Some(EntryAction::Remove) => true,
            None => {
                self.entries
                    .insert((client, seq), EntryAction::SetState(state));
                false
            }
        }
    }

    /// Drops every pending op on `client`'s rows: the wipe makes them moot.
    fn wipe(&mut self, client: &Bytes) {
        let mut gone = usize::from(self.sessions.remove(client).is_some());
        let subs: Vec<_> = self
            .subs
            .range((client.clone(), Bytes::new())..)
            .take_while(|((c, _), _)| c == client)
            .map(|(k, _)| k.clone())
            .collect();
        let entries: Vec<_> = self
            .entries
            .range((client.clone(), 0)..=(client.clone(), u64::MAX))
            .map(|(k, _)| k.clone())
            .collect();
        let await_rel: Vec<_> = self
            .await_rel
            .range((client.clone(), 0)..=(client.clone(), u16::MAX))
            .map(|(k, _)| k.clone())
            .collect();
        gone += subs.len() + entries.len() + await_rel.len();
        for k in subs {
            self.subs.remove(&k);
        }
        for k in entries {
            self.entries.remove(&k);
        }
        for k in await_rel {
            self.await_rel.remove(&k);
        }
        self.absorbed += gone as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MsgId;

    fn c(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn entry(msg: u64) -> EntryRecord {
        EntryRecord {
            msg: MsgId(msg),
            qos: 1,
            retain: false,
            sub_ids: vec![],
            state: EntryState::Queued,
        }
    }

    #[test]
    fn put_then_remove_leaves_only_the_remove() {
        let mut p = Pending::default();
        p.apply(Op::PutEntry {
            client: c("a"),
            seq: 1,
            record: entry(7),
        });
        p.apply(Op::SetEntryState {
            client: c("a"),
            seq: 1,
            state: EntryState::Sent { packet_id: 3 },
        });
        p.apply(Op::RemoveEntry {
            client: c("a"),
            seq: 1,
        });
        assert_eq!(p.entries.get(&(c("a"), 1)), Some(&EntryAction::Remove));
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.absorbed, 2);
    }

    #[test]
    fn state_change_amends_a_pending_put() {
        let mut p = Pending::default();
        p.apply(Op::PutEntry {
            client: c("a"),
            seq: 1,
            record: entry(7),
        });
        p.apply(Op::SetEntryState {
            client: c("a"),
            seq: 1,
            state: EntryState::Released { packet_id: 9 },
        });
        let Some(EntryAction::Put(r)) = p.entries.get(&(c("a"), 1)) else {
            panic!("not a put")
        };
        assert_eq!(r.state, EntryState::Released { packet_id: 9 });
    }

    #[test]
    fn remove_session_drops_earlier_ops_of_that_client_only() {
        let mut p = Pending::default();
        p.apply(Op::PutEntry {
            client: c("a"),
            seq: 1,
            record: entry(7),
        });
        p.apply(Op::PutSub {
            client: c("a"),
            filter: c("x/#"),
            record: SubRecord {
                options: 1,
                id: None,
            },
        });
        p.apply(Op::PutEntry {
            client: c("ab"),
            seq: 1,
            record: entry(7),
        });
        p.apply(Op::RemoveSession { client: c("a") });
        p.apply(Op::PutEntry {
            client: c("a"),
            seq: 2,
            record: entry(8),
        });
        assert!(p.wiped.contains(&c("a")));
        assert!(p.subs.is_empty());
        let keys: Vec<_> = p.entries.keys().cloned().collect();
        assert_eq!(keys, vec![(c("a"), 2), (c("ab"), 1)]);
    }
}
