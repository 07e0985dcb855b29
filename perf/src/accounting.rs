//! Loss, duplicate and reordering accounting for one (receiver, publisher) stream.
//!
//! Definitions (what the report's numbers mean):
//! - distinct: sequence numbers received at least once;
//! - duplicate: a sequence number received again (detected within the last `WINDOW` numbers);
//! - late: a number older than `WINDOW` behind the newest one; it cannot be told apart from a
//!   duplicate, so it is counted on its own and neither as distinct nor as lost;
//! - out of order: a first arrival of a number lower than one this connection already received
//!   from the same publisher (checked per connection, since shared-subscription members each
//!   see an ordered subsequence while the group as a whole does not);
//! - lost: sent - distinct - late, computed at the end after the drain period.

/// How far back duplicates are detected: 64 Ki sequence numbers, 8 KiB per stream. Far above
/// any closed-loop window, so only a broker redelivering very old messages produces "late".
pub const WINDOW: u64 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Newest so far (possibly after a gap).
    Newest,
    /// First arrival of a number below the newest (fills a gap).
    Filled,
    Duplicate,
    Late,
}

/// Received-set of one stream as a ring bitmap over the last `WINDOW` sequence numbers.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// One past the highest sequence number seen.
    head: u64,
    bits: Box<[u64]>,
    pub distinct: u64,
    pub duplicates: u64,
    pub late: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker {
            head: 0,
            bits: vec![0u64; (WINDOW / 64) as usize].into_boxed_slice(),
            distinct: 0,
            duplicates: 0,
            late: 0,
        }
    }
}

impl SeqTracker {
    /// One past the highest sequence number seen: the closed-loop progress of this stream.
    pub fn head(&self) -> u64 {
        self.head
    }

    fn bit(seq: u64) -> (usize, u64) {
        let pos = seq % WINDOW;
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= self.head {
            // Positions between the old head and `seq` now stand for new numbers: clear them.
            let from = self.head.max((seq + 1).saturating_sub(WINDOW));
            if seq - from >= WINDOW {
                self.bits.fill(0);
            } else {
                for s in from..seq {
                    let (w, m) = Self::bit(s);
                    self.bits[w] &= !m;
                }
            }
            let (w, m) = Self::bit(seq);
            self.bits[w] |= m;
            self.head = seq + 1;
            self.distinct += 1;
            return Arrival::Newest;
        }
        if self.head - seq > WINDOW {
            self.late += 1;
            return Arrival::Late;
        }
        let (w, m) = Self::bit(seq);
        if self.bits[w] & m != 0 {
            self.duplicates += 1;
            Arrival::Duplicate
        } else {
            self.bits[w] |= m;
            self.distinct += 1;
            Arrival::Filled
        }
    }

    /// Messages of `sent` never seen (clamped at zero).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.distinct + self.late)
    }
}

/// Per-connection ordering check: true when a first arrival comes below the highest number this
/// connection already had from that publisher. `last` holds one past that highest number.
pub fn out_of_order(last: &mut u64, seq: u64, arrival: Arrival) -> bool {
    if arrival == Arrival::Duplicate || arrival == Arrival::Late {
        return false;
    }
    if seq < *last {
        true
    } else {
        *last = seq + 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (SeqTracker, u64) {
        let mut t = SeqTracker::default();
        let mut last = 0;
        let mut ooo = 0;
        for &s in seqs {
            let a = t.record(s);
            if out_of_order(&mut last, s, a) {
                ooo += 1;
            }
        }
        (t, ooo)
    }

    #[test]
    fn in_order_stream_is_clean() {
        let (t, ooo) = run(&[0, 1, 2, 3]);
        assert_eq!(
            (t.distinct, t.duplicates, t.late, ooo, t.lost(4)),
            (4, 0, 0, 0, 0)
        );
        assert_eq!(t.head(), 4);
    }

    #[test]
    fn gap_then_fill_is_reordering_not_loss() {
        let (t, ooo) = run(&[0, 2, 1, 3]);
        assert_eq!((t.distinct, t.duplicates, ooo, t.lost(4)), (4, 0, 1, 0));
    }

    #[test]
    fn duplicates_are_counted_once_each() {
        let (t, ooo) = run(&[0, 1, 1, 2, 0]);
        assert_eq!((t.distinct, t.duplicates, ooo, t.lost(3)), (3, 2, 0, 0));
    }

    #[test]
    fn loss_is_what_never_arrived() {
        let (t, ooo) = run(&[0, 1, 3]);
        assert_eq!((t.distinct, ooo, t.lost(5)), (3, 0, 2));
    }

    #[test]
    fn far_behind_is_late_and_window_reuse_clears_bits() {
        let mut t = SeqTracker::default();
        t.record(5);
        assert_eq!(t.record(WINDOW + 10), Arrival::Newest);
        assert_eq!(t.record(5), Arrival::Late);
        // Position of 7 was reused after the jump: 7 + WINDOW was never seen.
        assert_eq!(t.record(WINDOW + 7), Arrival::Filled);
        assert_eq!(t.record(WINDOW + 7), Arrival::Duplicate);
        assert_eq!((t.distinct, t.duplicates, t.late), (3, 1, 1));
        // A jump of more than a window clears everything.
        assert_eq!(t.record(10 * WINDOW), Arrival::Newest);
        assert_eq!(t.record(9 * WINDOW + 10), Arrival::Filled);
    }
}
