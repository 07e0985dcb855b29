//! Slowing down repeated authentication failures from one source address.
//!
//! Owns: a fixed-capacity table of recent failures per source and the delay it implies. A
//! source is an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64, so counting
//! single IPv6 addresses would let it rotate freely); IPv4-mapped IPv6 counts as IPv4. The
//! first `free_failures` failures cost nothing; after that the next attempt waits
//! `base_delay_ms`, doubling with each further failure up to `max_delay_ms`, counted from the
//! last failure. A source with no failure for `forget_after_ms` starts again from zero.
//!
//! The table is set-associative (`WAYS` entries per set, the set chosen by a hash with a
//! per-process random seed): memory is fixed (`capacity` x 32 bytes, allocated at the first
//! failure), every operation is O(`WAYS`), and a full set evicts its stalest entry. So an
//! attacker with very many addresses can push entries out (and get their own count back to
//! zero); it cannot make the table grow. A success clears the source's entry, so a user who
//! mistyped is not slowed afterwards; someone holding valid credentials can therefore reset
//! their own source, and the throttle slows only sources that have none.
//!
//! How the broker uses it: before verifying a CONNECT's credentials, `delay_ms(source, now)`;
//! if non-zero, hold the CONNECT that long (or refuse it); after the verdict,
//! `record_failure` or `record_success`.
//!
//! Must never: read the clock (time is `now_ms`, milliseconds on a monotonic clock), grow
//! beyond `capacity`, or panic on any address or time (times going backwards included).

use std::hash::BuildHasher;
use std::net::IpAddr;

/// Entries per set: a full set evicts among this many. 8 keeps a lookup to one or two cache
/// lines of 32-byte slots while making a targeted eviction need 8 colliding sources.
const WAYS: usize = 8;

/// Tuning of the delay; `Default` is what the broker uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures per source before any delay (typos happen).
    pub free_failures: u32,
    /// Delay after the first failure beyond the free ones.
    pub base_delay_ms: u64,
    /// Most a source is ever made to wait.
    pub max_delay_ms: u64,
    /// A source with no failure for this long is forgotten.
    pub forget_after_ms: u64,
    /// Sources tracked at once (rounded up to a multiple of `WAYS`).
    pub capacity: usize,
}

impl Default for ThrottleConfig {
    /// 3 free failures, then 0.5 s doubling to 30 s (the 11th failure and on): a guesser gets
    /// about 2 attempts a minute; forgotten after 10 minutes without a failure. 4096 sources
    /// (128 KiB) covers the distinct failing sources a broker sees within those 10 minutes
    /// short of an attack from thousands of addresses, which eviction then bounds.
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 3,
            base_delay_ms: 500,
            max_delay_ms: 30_000,
            forget_after_ms: 10 * 60 * 1000,
            capacity: 4096,
        }
    }
}

/// A source as counted: IPv4 address or IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(prefix)
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// `None`: free.
    key: Option<SourceKey>,
    failures: u32,
    last_failure_ms: u64,
}

const FREE: Slot = Slot {
    key: None,
    failures: 0,
    last_failure_ms: 0,
};

/// Failure counts per source (module doc).
#[derive(Debug)]
pub struct FailureThrottle {
    config: ThrottleConfig,
    /// Empty until the first failure, then `sets * WAYS` slots, never more.
    slots: Vec<Slot>,
    sets: usize,
    hasher: foldhash::fast::RandomState,
}

impl FailureThrottle {
    pub fn new(config: ThrottleConfig) -> FailureThrottle {
        FailureThrottle {
            config,
            slots: Vec::new(),
            sets: config.capacity.div_ceil(WAYS).max(1),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// How long the next attempt from `source` should wait, in ms (0: go ahead).
    pub fn delay_ms(&self, source: IpAddr, now_ms: u64) -> u64 {
        let key = SourceKey::of(source);
        let Some(i) = self.find(key) else {
            return 0;
        };
        let slot = &self.slots[i];
        if self.is_stale(slot, now_ms) {
            return 0;
        }
        let not_before = slot
            .last_failure_ms
            .saturating_add(self.backoff_ms(slot.failures));
        not_before.saturating_sub(now_ms)
    }

    /// Counts a failed authentication from `source` at `now_ms`.
    pub fn record_failure(&mut self, source: IpAddr, now_ms: u64) {
        if self.slots.is_empty() {
            self.slots = vec![FREE; self.sets * WAYS];
        }
        let key = SourceKey::of(source);
        let i = match self.find(key) {
            Some(i) => i,
            None => self.victim(key),
        };
        let stale = self.is_stale(&self.slots[i], now_ms);
        let slot = &mut self.slots[i];
        if slot.key != Some(key) || stale {
            *slot = Slot {
                key: Some(key),
                failures: 0,
                last_failure_ms: now_ms,
            };
        }
        slot.failures = slot.failures.saturating_add(1);
        slot.last_failure_ms = slot.last_failure_ms.max(now_ms);
    }

    /// Forgets `source`'s failures after it authenticated.
    pub fn record_success(&mut self, source: IpAddr) {
        if let Some(i) = self.find(SourceKey::of(source)) {
            self.slots[i] = FREE;
        }
    }

    /// Delay implied by `failures` failures (module doc).
    fn backoff_ms(&self, failures: u32) -> u64 {
        let c = &self.config;
        let Some(excess) = failures.checked_sub(c.free_failures.saturating_add(1)) else {
            return 0;
        };
        // Past 63 doublings any base is far over any cap.
        let factor = 1u64.checked_shl(excess.min(63)).unwrap_or(u64::MAX);
        c.base_delay_ms.saturating_mul(factor).min(c.max_delay_ms)
    }

    fn is_stale(&self, slot: &Slot, now_ms: u64) -> bool {
        now_ms.saturating_sub(slot.last_failure_ms) >= self.config.forget_after_ms
    }

    /// The set `key` belongs to, as a slot range.
    fn set(&self, key: SourceKey) -> std::ops::Range<usize> {
        // `sets` is at least 1; the modulo keeps the index in range whatever the hash.
        let set = (self.hasher.hash_one(key) % self.sets as u64) as usize;
        set * WAYS..(set + 1) * WAYS
    }

    fn find(&self, key: SourceKey) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        self.set(key).find(|&i| self.slots[i].key == Some(key))
    }

    /// The slot to reuse for a new key: a free one, else the one whose last failure is the
    /// oldest in its set (stale entries, if any, are among the oldest by definition).
    fn victim(&self, key: SourceKey) -> usize {
        let range = self.set(key);
        let start = range.start;
        range
            .min_by_key(|&i| {
                let s = &self.slots[i];
                (s.key.is_some(), s.last_failure_ms)
            })
            .unwrap_or(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect(s)
    }

    fn fail_n(t: &mut FailureThrottle, who: IpAddr, n: u32, now: u64) {
        for _ in 0..n {
            t.record_failure(who, now);
        }
    }

    #[test]
    fn free_failures_then_doubling_up_to_the_cap() {
        let mut t = FailureThrottle::new(ThrottleConfig::default());
        let a = ip("192.0.2.1");
        assert_eq!(t.delay_ms(a, 0), 0);
        assert!(t.slots.is_empty(), "no memory before the first failure");
        let mut delays = Vec::new();
        for n in 1..=12 {
            t.record_failure(a, 1000);
            delays.push(t.delay_ms(a, 1000));
            assert_eq!(
                t.delay_ms(a, 1000 + 40_000),
                0,
                "after {n}: waited long enough"
            );
        }
        assert_eq!(
            delays,
            [
                0, 0, 0, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        // The delay runs from the last failure.
        assert_eq!(t.delay_ms(a, 11_000), 20_000);
        fail_n(&mut t, a, 10_000, 2000);
        assert_eq!(t.delay_ms(a, 2000), 30_000, "no overflow on many failures");
    }

    #[test]
    fn sources_are_independent_and_ipv6_counts_per_64() {
        let mut t = FailureThrottle::new(ThrottleConfig::default());
        fail_n(&mut t, ip("192.0.2.1"), 5, 0);
        assert_eq!(t.delay_ms(ip("192.0.2.1"), 0), 1000);
        assert_eq!(t.delay_ms(ip("192.0.2.2"), 0), 0);
        assert_eq!(
            t.delay_ms(ip("::ffff:192.0.2.1"), 0),
            1000,
            "mapped IPv4 is IPv4"
        );

        fail_n(&mut t, ip("2001:db8:1:2::1"), 3, 0);
        fail_n(&mut t, ip("2001:db8:1:2:ffff::9"), 2, 0);
        assert_eq!(
            t.delay_ms(ip("2001:db8:1:2::77"), 0),
            1000,
            "one /64, one count"
        );
        assert_eq!(t.delay_ms(ip("2001:db8:1:3::1"), 0), 0);
    }

    #[test]
    fn forgotten_after_a_quiet_period_and_cleared_by_success() {
        let cfg = ThrottleConfig::default();
        let mut t = FailureThrottle::new(cfg);
        let a = ip("198.51.100.7");
        fail_n(&mut t, a, 6, 0);
        assert_eq!(t.delay_ms(a, 0), 2000);
        assert_eq!(t.delay_ms(a, cfg.forget_after_ms), 0);
        t.record_failure(a, cfg.forget_after_ms);
        assert_eq!(
            t.delay_ms(a, cfg.forget_after_ms),
            0,
            "counting restarted at 1"
        );
        fail_n(&mut t, a, 5, cfg.forget_after_ms);
        assert!(t.delay_ms(a, cfg.forget_after_ms) > 0);
        t.record_success(a);
        assert_eq!(t.delay_ms(a, cfg.forget_after_ms), 0);
    }

    #[test]
    fn time_going_backwards_does_not_panic_or_shorten_the_record() {
        let mut t = FailureThrottle::new(ThrottleConfig::default());
        let a = ip("203.0.113.9");
        fail_n(&mut t, a, 5, 10_000);
        t.record_failure(a, 5);
        assert_eq!(t.delay_ms(a, 10_000), 2000);
        assert_eq!(t.delay_ms(a, 0), 12_000);
        assert_eq!(t.delay_ms(a, u64::MAX), 0);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_sources() {
        let cfg = ThrottleConfig {
            capacity: 64,
            ..ThrottleConfig::default()
        };
        let mut t = FailureThrottle::new(cfg);
        let victim = ip("192.0.2.200");
        fail_n(&mut t, victim, 6, 0);
        for i in 0..100_000u32 {
            let b = i.to_be_bytes();
            t.record_failure(IpAddr::from([10, b[1], b[2], b[3]]), u64::from(i));
        }
        assert_eq!(t.slots.len(), 64, "never more than capacity");
        assert!(t.slots.iter().all(|s| s.key.is_some()));
        // The oldest entries went first: the victim's (time 0) is gone, recent ones stay.
        assert_eq!(t.delay_ms(victim, 0), 0);
        let recent = 99_999u32.to_be_bytes();
        assert!(
            t.find(SourceKey::V4([10, recent[1], recent[2], recent[3]]))
                .is_some()
        );
    }

    #[test]
    fn eviction_prefers_free_then_oldest() {
        let cfg = ThrottleConfig {
            capacity: WAYS, // one set: every key competes
            ..ThrottleConfig::default()
        };
        let mut t = FailureThrottle::new(cfg);
        let key = |i: u8| SourceKey::V4([10, 0, 0, i]);
        for i in 0..WAYS as u8 {
            t.record_failure(IpAddr::from([10, 0, 0, i]), 2000 + u64::from(i));
        }
        t.record_failure(IpAddr::from([10, 0, 0, 0]), 2500); // .0 is now the newest
        t.record_failure(ip("10.0.1.0"), 2600);
        assert!(t.find(key(0)).is_some(), "refreshed entry kept");
        assert!(t.find(key(1)).is_none(), "oldest evicted");
        t.record_success(ip("10.0.0.5"));
        t.record_failure(ip("10.0.2.0"), 2700);
        assert!(
            t.find(key(2)).is_some(),
            "the freed slot was used, not the oldest"
        );
        assert!(t.find(SourceKey::V4([10, 0, 2, 0])).is_some());
    }
}
