//! A fixed-bucket latency histogram of plain counters: observed on one thread (a shard),
//! copied whole into a snapshot, summed over shards, encoded as a Prometheus histogram.
//!
//! Must never: allocate, or use atomics (an observation is one comparison chain and two
//! additions on the owning thread).

use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implicit):
/// from 50 us (a delivery within one loop turn) to 10 s (a commit on a failing disk).
pub const BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Observations per bucket (not cumulative), their count and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `buckets[i]`: observations in `(BOUNDS_US[i-1], BOUNDS_US[i]]`; the last one:
    /// above every bound.
    pub buckets: [u64; BOUNDS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds `other`'s observations (totals over shards).
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// `(upper bound in seconds, observations in that bucket)`, the last bound `+Inf`: what
    /// `prometheus_client`'s histogram encoder takes (it makes the counts cumulative).
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets)
            .collect()
    }

    /// The upper bound (us) of the bucket that holds quantile `q` (0..=1); `None` when
    /// empty or when it lies above the last bound.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut total = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            total += n;
            if total >= rank {
                return BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds_inclusive() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[BOUNDS_US.len()], 1);
        assert_eq!(h.count, 3);
        assert_eq!(h.sum_us, 60_000_101);
        let b = h.buckets_seconds();
        assert_eq!(b[0], (0.00005, 1));
        assert_eq!(b[1], (0.0001, 1));
        assert_eq!(b[2], (0.00025, 0));
        assert_eq!(b.last().copied(), Some((f64::INFINITY, 1)));
        assert_eq!(h.quantile_bound_us(0.5), Some(100));
        assert_eq!(h.quantile_bound_us(1.0), None);
    }

    #[test]
    fn sums_over_shards() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.observe(Duration::from_millis(1));
        b.observe(Duration::from_millis(1));
        b.observe(Duration::from_millis(3));
        a.add(&b);
        assert_eq!((a.count, a.sum_us), (3, 5_000));
        assert_eq!(a.quantile_bound_us(0.99), Some(5_000));
    }
}
