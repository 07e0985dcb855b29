//! Address validation: a UDP source address is not trusted beyond its datagram, so a client
//! starts unvalidated, and until it proves that it receives what the gateway sends to its
//! address, the gateway sends it at most `AMPLIFICATION` times what it received from it
//! (whole datagrams, from its CONNECT on). Otherwise a spoofed CONNECT and SUBSCRIBE to a busy
//! topic would make the gateway stream messages to a third party (the model is QUIC's,
//! RFC 9000 section 8).
//!
//! The proof is an acknowledgement (REGACK, PUBACK, PUBREC, PUBCOMP) that echoes an
//! outstanding MsgId the gateway chose: its MsgIds for a client are derived from a secret
//! (see `Gateway`), so only a client that received the datagram knows them. MsgIds are
//! short (16 bits, 15 for REGISTER: see `outbound`), so wrong proofs are bounded: past
//! `MAX_FAILED_PROOFS` the client is lost, which keeps a blind guess below 1 in 6000 per
//! connection.
//!
//! When the budget is spent with something to deliver, the gateway asks for a proof: a
//! REGISTER (the challenge, see `SnClient::challenge`) whose REGACK a conforming client must
//! send. The challenge may go beyond the budget `FREE_CHALLENGES` times, T_retry apart
//! (its retransmissions), if it is no longer than `CHALLENGE_MAX_LEN`: a spoofed client costs
//! its victim three times what the attacker sent plus a few small datagrams.
//!
//! Must never: let a datagram other than a small challenge exceed the budget, or count a
//! proof that does not name what is outstanding.

/// Bytes the gateway may send per byte received, until validated (QUIC's factor).
pub(crate) const AMPLIFICATION: u64 = 3;

/// Sends of a challenge beyond the budget (the first and three retransmissions).
pub(crate) const FREE_CHALLENGES: u8 = 4;

/// Longest challenge that may go beyond the budget (a REGISTER with a name of 58 bytes).
pub(crate) const CHALLENGE_MAX_LEN: usize = 64;

/// Wrong proofs tolerated; the next one ends the client as lost.
pub(crate) const MAX_FAILED_PROOFS: u8 = 4;

/// Where a client stands (`None` in `Validation::budget`: validated).
#[derive(Clone, Copy, Debug, Default)]
struct Budget {
    received: u64,
    sent: u64,
    free_challenges: u8,
    failed_proofs: u8,
}

/// One client's validation state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Validation {
    budget: Option<Budget>,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            budget: Some(Budget::default()),
        }
    }
}

impl Validation {
    pub(crate) fn is_validated(&self) -> bool {
        self.budget.is_none()
    }

    /// A datagram of `len` bytes came from the client.
    pub(crate) fn received(&mut self, len: usize) {
        if let Some(b) = self.budget.as_mut() {
            b.received = b.received.saturating_add(len as u64);
        }
    }

    /// Whether a datagram of `len` bytes may go now; if so it is counted as sent.
    pub(crate) fn admit(&mut self, len: usize) -> bool {
        let Some(b) = self.budget.as_mut() else {
            return true;
        };
        let sent = b.sent.saturating_add(len as u64);
        if sent > b.received.saturating_mul(AMPLIFICATION) {
            return false;
        }
        b.sent = sent;
        true
    }

    /// `admit` for a challenge: within the budget, or as one of the few small ones allowed
    /// beyond it.
    pub(crate) fn admit_challenge(&mut self, len: usize) -> bool {
        if self.admit(len) {
            return true;
        }
        let Some(b) = self.budget.as_mut() else {
            return true;
        };
        if len > CHALLENGE_MAX_LEN || b.free_challenges >= FREE_CHALLENGES {
            return false;
        }
        b.free_challenges += 1;
        b.sent = b.sent.saturating_add(len as u64);
        true
    }

    /// The client echoed an outstanding MsgId.
    pub(crate) fn proved(&mut self) {
        self.budget = None;
    }

    /// The client acknowledged a MsgId that is not outstanding: true when, unvalidated, it
    /// has now failed too often.
    pub(crate) fn failed(&mut self) -> bool {
        let Some(b) = self.budget.as_mut() else {
            return false;
        };
        b.failed_proofs = b.failed_proofs.saturating_add(1);
        b.failed_proofs > MAX_FAILED_PROOFS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_three_times_what_was_received() {
        let mut v = Validation::default();
        assert!(!v.admit(1), "nothing received, nothing sent");
        v.received(10);
        assert!(v.admit(20));
        assert!(v.admit(10));
        assert!(!v.admit(1));
        v.received(1);
        assert!(v.admit(3));
        assert!(!v.admit(1));
        v.proved();
        assert!(v.is_validated());
        assert!(v.admit(100_000));
    }

    #[test]
    fn small_challenges_go_beyond_the_budget_a_few_times() {
        let mut v = Validation::default();
        assert!(!v.admit_challenge(CHALLENGE_MAX_LEN + 1));
        for _ in 0..FREE_CHALLENGES {
            assert!(v.admit_challenge(CHALLENGE_MAX_LEN));
        }
        assert!(!v.admit_challenge(8));
        // What they cost is owed: the next bytes received pay for them first.
        v.received(CHALLENGE_MAX_LEN * usize::from(FREE_CHALLENGES) / 3);
        assert!(!v.admit(1));
    }

    #[test]
    fn wrong_proofs_are_bounded() {
        let mut v = Validation::default();
        for _ in 0..MAX_FAILED_PROOFS {
            assert!(!v.failed());
        }
        assert!(v.failed());
        let mut ok = Validation::default();
        ok.proved();
        for _ in 0..100 {
            assert!(
                !ok.failed(),
                "a validated client's stray acks are only ignored"
            );
        }
    }
}
