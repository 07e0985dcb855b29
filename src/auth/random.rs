//! Where random bytes come from: salts, SCRAM nonces, dummy hashes.
//!
//! Owns: the `RandomSource` seam, so that the sans-IO parts of `auth` (SCRAM, hashing) take
//! randomness as an argument and tests can replay fixed bytes (the RFC 7677 example nonce).
//!
//! Must never: fall back to a weak generator when the operating system's fails; the error
//! goes to the caller, who refuses the operation.

/// The operating system's generator failed (`getrandom(2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

/// A source of cryptographically secure random bytes.
pub trait RandomSource {
    /// Fills `buf` entirely, or fails without a partial result being used.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's generator (`getrandom(2)` on Linux).
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
        getrandom::getrandom(buf).map_err(|_| RandomError)
    }
}

/// Replays fixed bytes, then fails: for tests that need known salts and nonces.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct FixedRandom(pub std::collections::VecDeque<u8>);

#[cfg(test)]
impl FixedRandom {
    pub(crate) fn new(bytes: &[u8]) -> FixedRandom {
        FixedRandom(bytes.iter().copied().collect())
    }
}

#[cfg(test)]
impl RandomSource for FixedRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
        if self.0.len() < buf.len() {
            return Err(RandomError);
        }
        for b in buf.iter_mut() {
            *b = self.0.pop_front().ok_or(RandomError)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_random_fills_and_differs() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill(&mut a).expect("getrandom");
        OsRandom.fill(&mut b).expect("getrandom");
        assert_ne!(a, b);
    }

    #[test]
    fn fixed_random_replays_then_fails() {
        let mut r = FixedRandom::new(&[1, 2, 3]);
        let mut two = [0u8; 2];
        r.fill(&mut two).expect("two bytes");
        assert_eq!(two, [1, 2]);
        assert_eq!(r.fill(&mut two), Err(RandomError));
    }
}
