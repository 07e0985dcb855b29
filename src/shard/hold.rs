//! Output held back until what it announces is true: a connection's output may contain an
//! acknowledgement (SUBACK, PUBACK, PUBREC, PUBCOMP, CONNACK, PUBREL) that must not reach the
//! client before other shards have applied a broadcast (a `Fence`), or before the storage
//! commit that makes it durable. A hold marks a position in the connection's output; bytes
//! from there on wait until every hold at or before them is released.
//!
//! Owns: the holds of one connection (`Holds`, allocated only while a hold exists), the
//! names other shards and the commit pipeline use for a hold (`HoldKey`), and the rule of
//! what may be written (`Holds::writable`).
//!
//! Must never: let bytes after a waiting hold be written, or reorder output (a hold only
//! delays everything from its position on: acknowledgements stay in order per connection).

use super::ids::ConnKey;
use std::collections::VecDeque;

/// One hold, as other shards and the commit pipeline name it: the connection on its shard
/// (slot and generation), and the hold's id on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HoldKey {
    pub(crate) conn: ConnKey,
    pub(crate) id: u32,
}

/// What one hold still waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    id: u32,
    /// Position in the connection's unwritten output (`Conn::out`) where held bytes begin.
    offset: usize,
    /// Answers still awaited from other shards (`Envelope::FenceDone`).
    remote: u32,
    /// The storage ticket whose commit is awaited; 0: none.
    ticket: u64,
    /// QoS 1 PUBACKs that begin at this position (the client counts them against our
    /// Receive Maximum until it reads them).
    acks: u32,
}

impl Hold {
    fn released(&self) -> bool {
        self.remote == 0 && self.ticket == 0
    }
}

/// The holds of one connection, in output order.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    list: VecDeque<Hold>,
    next_id: u32,
}

impl Holds {
    /// The id of the hold at `offset`: the existing one at that position (one hold per
    /// call's output), else a new one, kept in output order (a call nested in another, e.g.
    /// a client's delivery to its own subscription, may hold a later position first).
    pub(crate) fn at(&mut self, offset: usize) -> u32 {
        let pos = self.list.partition_point(|h| h.offset < offset);
        if let Some(h) = self.list.get(pos).filter(|h| h.offset == offset) {
            return h.id;
        }
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let hold = Hold {
            id,
            offset,
            remote: 0,
            ticket: 0,
            acks: 0,
        };
        self.list.insert(pos, hold);
        id
    }

    /// Where hold `id` begins, while it exists.
    pub(crate) fn offset_of(&self, id: u32) -> Option<usize> {
        self.list.iter().find(|h| h.id == id).map(|h| h.offset)
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Hold> {
        self.list.iter_mut().find(|h| h.id == id)
    }

    /// Hold `id` also waits for `n` more answers from other shards.
    pub(crate) fn add_remote(&mut self, id: u32, n: u32) {
        if let Some(h) = self.get_mut(id) {
            h.remote += n;
        }
    }

    /// Hold `id` also waits for the commit of `ticket`. Returns false when it already did
    /// (the caller registers one waiter per hold and ticket).
    pub(crate) fn add_ticket(&mut self, id: u32, ticket: u64) -> bool {
        match self.get_mut(id) {
            Some(h) if h.ticket != ticket => {
                h.ticket = h.ticket.max(ticket);
                true
            }
            Some(_) | None => false,
        }
    }

    /// One awaited answer from another shard arrived.
    pub(crate) fn remote_done(&mut self, id: u32) {
        if let Some(h) = self.get_mut(id) {
            h.remote = h.remote.saturating_sub(1);
        }
        self.drop_released();
    }

    /// Every ticket up to `ticket` is committed.
    pub(crate) fn committed(&mut self, ticket: u64) {
        for h in self.list.iter_mut() {
            if h.ticket != 0 && h.ticket <= ticket {
                h.ticket = 0;
            }
        }
        self.drop_released();
    }

    /// Where held output begins if any hold still waits for `ticket` or an earlier one (the
    /// bytes from there on must never be sent: their commit failed).
    pub(crate) fn failed_from(&self, ticket: u64) -> Option<usize> {
        self.list
            .iter()
            .find(|h| h.ticket != 0 && h.ticket <= ticket)
            .map(|h| h.offset)
    }

    /// Released holds at the front no longer matter.
    fn drop_released(&mut self) {
        while self.list.front().is_some_and(Hold::released) {
            self.list.pop_front();
        }
    }

    /// How many of the first `len` output bytes may be written now.
    pub(crate) fn writable(&self, len: usize) -> usize {
        self.list
            .iter()
            .find(|h| !h.released())
            .map_or(len, |h| h.offset.min(len))
    }

    /// `n` bytes from the front of the output were written.
    pub(crate) fn advance(&mut self, n: usize) {
        for h in self.list.iter_mut() {
            h.offset = h.offset.saturating_sub(n);
        }
        self.drop_released();
    }

    /// A QoS 1 PUBACK was written at `offset`: when a hold begins there, the PUBACK waits
    /// with it (otherwise it is either writable or queued behind another publish's hold, and
    /// is not counted: the count never exceeds what the client sees outstanding).
    pub(crate) fn count_ack(&mut self, offset: usize) {
        if let Some(h) = self.list.iter_mut().find(|h| h.offset == offset) {
            h.acks += 1;
        }
    }

    /// PUBACKs counted by `count_ack` that are still unwritten because a hold at or before
    /// them waits.
    pub(crate) fn held_acks(&self) -> u32 {
        self.list
            .iter()
            .skip_while(|h| h.released())
            .map(|h| h.acks)
            .sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_waits_from_the_first_waiting_hold() {
        let mut h = Holds::default();
        let a = h.at(10);
        h.add_remote(a, 2);
        let b = h.at(20);
        assert!(h.add_ticket(b, 7));
        assert!(!h.add_ticket(b, 7), "one waiter per hold and ticket");
        assert_eq!(h.writable(30), 10);
        h.remote_done(a);
        assert_eq!(h.writable(30), 10, "one answer still awaited");
        h.remote_done(a);
        assert_eq!(h.writable(30), 20, "the next hold waits for its commit");
        h.committed(6);
        assert_eq!(h.writable(30), 20, "an earlier ticket does not release it");
        h.committed(7);
        assert_eq!(h.writable(30), 30);
        assert!(h.is_empty());
    }

    #[test]
    fn writes_move_the_holds() {
        let mut h = Holds::default();
        let a = h.at(10);
        h.add_remote(a, 1);
        h.advance(4);
        assert_eq!(h.writable(26), 6);
        assert_eq!(h.at(6), a, "the same position is the same hold");
    }

    #[test]
    fn held_acks_count_until_their_hold_is_released() {
        let mut h = Holds::default();
        let a = h.at(0);
        h.add_ticket(a, 1);
        h.count_ack(0);
        let b = h.at(4);
        h.add_ticket(b, 2);
        h.count_ack(4);
        h.count_ack(9); // no hold begins there: not counted
        assert_eq!(h.held_acks(), 2);
        h.committed(2);
        assert_eq!(h.held_acks(), 0);
        // A released hold behind a waiting one is still unwritten.
        let c = h.at(0);
        h.add_remote(c, 1);
        h.count_ack(0);
        let d = h.at(4);
        h.add_ticket(d, 3);
        h.count_ack(4);
        h.committed(3);
        assert_eq!(h.held_acks(), 2, "d waits behind c");
        h.remote_done(c);
        assert_eq!(h.held_acks(), 0);
    }

    #[test]
    fn a_failed_ticket_names_where_held_bytes_begin() {
        let mut h = Holds::default();
        let a = h.at(3);
        h.add_ticket(a, 5);
        assert_eq!(h.failed_from(4), None);
        assert_eq!(h.failed_from(5), Some(3));
    }
}
