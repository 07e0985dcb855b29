//! Router benchmarks: topic matching against 10k and 1M subscriptions, fan-out of one
//! publish to 1/100/10k subscribers, the interest index with and without its cache, and
//! retained-message lookups.
//!
//! Run: `cargo bench --bench router` (a filter such as `-- match/1M` runs one part).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringmq::codec::model::{PublishProperties, QoS, SubscriptionOptions};
use ringmq::router::{
    Fanout, InterestCache, InterestIndex, InterestOp, MatchStack, OverlapMode, RetainedMessage,
    RetainedStack, RetainedStore, ShardId, Subscription, SubscriptionTrie, TopicFilter, TopicName,
};

/// Deterministic pseudo-random numbers (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn filter(s: String) -> TopicFilter {
    TopicFilter::new(Bytes::from(s)).expect("valid bench filter")
}

fn topic(s: String) -> TopicName {
    TopicName::new(Bytes::from(s)).expect("valid bench topic")
}

fn sub(qos: QoS, id: Option<u32>) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
        id,
    }
}

#[derive(Clone, Copy)]
enum Shape {
    /// `dev/{i/1000}/{i%1000}`, topics hit one filter.
    Exact,
    /// `dev/{i/1000}/+/{i%1000}`.
    Plus,
    /// `dev/{i/1000}/{i%1000}/#`.
    Hash,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Exact => "exact",
            Shape::Plus => "plus",
            Shape::Hash => "hash",
        }
    }
    fn filter(self, i: u64) -> String {
        let (a, b) = (i / 1000, i % 1000);
        match self {
            Shape::Exact => format!("dev/{a}/{b}"),
            Shape::Plus => format!("dev/{a}/+/{b}"),
            Shape::Hash => format!("dev/{a}/{b}/#"),
        }
    }
    fn topic(self, i: u64) -> String {
        let (a, b) = (i / 1000, i % 1000);
        match self {
            Shape::Exact => format!("dev/{a}/{b}"),
            Shape::Plus => format!("dev/{a}/sensor/{b}"),
            Shape::Hash => format!("dev/{a}/{b}/temp/celsius"),
        }
    }
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("10k", 10_000u64), ("1M", 1_000_000)] {
        for shape in [Shape::Exact, Shape::Plus, Shape::Hash] {
            let mut trie = SubscriptionTrie::new();
            for i in 0..n {
                trie.insert(
                    &filter(shape.filter(i)),
                    i as u32,
                    sub(QoS::AtMostOnce, None),
                );
            }
            let mut rng = Rng(42);
            let topics: Vec<TopicName> = (0..4096)
                .map(|_| topic(shape.topic(rng.below(n))))
                .collect();
            let mut stack = MatchStack::default();
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new(shape.name(), label), |b| {
                b.iter(|| {
                    i = (i + 1) & 4095;
                    let mut hits = 0u32;
                    trie.match_topic(&topics[i], &mut stack, |_, _| hits += 1);
                    black_box(hits)
                })
            });
        }
    }
    group.finish();
}

/// One publish to `k` subscribers among 10k unrelated subscriptions: every subscriber has
/// `route/t`, every other one also `route/#`, delivered per subscription (the default:
/// 1.5 k deliveries) or merged per subscriber (`single`: k deliveries).
fn bench_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    for k in [1u32, 100, 10_000] {
        let mut trie = SubscriptionTrie::new();
        for i in 0..10_000u64 {
            trie.insert(
                &filter(Shape::Exact.filter(i)),
                1_000_000 + i as u32,
                sub(QoS::AtMostOnce, None),
            );
        }
        let exact = TopicFilter::from_static("route/t");
        let hash = TopicFilter::from_static("route/#");
        for s in 0..k {
            trie.insert(&exact, s, sub(QoS::AtMostOnce, Some(1)));
            if s % 2 == 1 {
                trie.insert(&hash, s, sub(QoS::AtLeastOnce, Some(2)));
            }
        }
        let t = TopicName::from_static("route/t");
        let mut stack = MatchStack::default();
        for (name, mode, deliveries) in [
            ("per_subscription", OverlapMode::PerSubscription, k + k / 2),
            ("single", OverlapMode::Single, k),
        ] {
            let mut fan = Fanout::new(mode);
            fan.collect(&trie, &t, Some(0), QoS::AtLeastOnce, &mut stack);
            assert_eq!(fan.deliveries().len(), deliveries as usize);
            group.throughput(Throughput::Elements(u64::from(k)));
            group.bench_function(BenchmarkId::new(name, k), |b| {
                b.iter(|| {
                    fan.collect(&trie, &t, Some(0), QoS::AtLeastOnce, &mut stack);
                    black_box(fan.deliveries().len())
                })
            });
        }
    }
    group.finish();
}

/// `shards_for` on 100k filters over 16 shards (plus 100 wildcard filters), hot set of 1000
/// topics: uncached walk versus `InterestCache`.
fn bench_interest(c: &mut Criterion) {
    let mut group = c.benchmark_group("interest");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    let mut rng = Rng(7);
    let mut index = InterestIndex::new();
    let shard = |r: &mut Rng| ShardId::new(r.below(16) as u8).expect("shard < 64");
    for i in 0..100_000u64 {
        let op = InterestOp::Add {
            filter: filter(Shape::Exact.filter(i)),
            shard: shard(&mut rng),
        };
        index.apply(&op);
    }
    for i in 0..100u64 {
        let op = InterestOp::Add {
            filter: filter(format!("dev/{i}/+")),
            shard: shard(&mut rng),
        };
        index.apply(&op);
    }
    index.apply(&InterestOp::Add {
        filter: TopicFilter::from_static("dev/#"),
        shard: shard(&mut rng),
    });
    let topics: Vec<TopicName> = (0..1000)
        .map(|_| topic(Shape::Exact.topic(rng.below(100_000))))
        .collect();
    let mut stack = MatchStack::default();
    let mut i = 0usize;
    group.bench_function("uncached", |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            black_box(index.shards_for(&topics[i], &mut stack))
        })
    });
    let mut cache = InterestCache::new();
    group.bench_function("cached", |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            black_box(cache.shards_for(&index, &topics[i], &mut stack))
        })
    });
    // Worst case for the cache: 100k distinct topics in a row, every lookup a miss that also
    // inserts (and the cache starts over every `INTEREST_CACHE_CAPACITY` topics).
    let cold: Vec<TopicName> = (0..100_000).map(|j| topic(Shape::Exact.topic(j))).collect();
    group.bench_function("uncached_cold", |b| {
        b.iter(|| {
            i = (i + 1) % cold.len();
            black_box(index.shards_for(&cold[i], &mut stack))
        })
    });
    let mut cold_cache = InterestCache::new();
    group.bench_function("cached_all_miss", |b| {
        b.iter(|| {
            i = (i + 1) % cold.len();
            black_box(cold_cache.shards_for(&index, &cold[i], &mut stack))
        })
    });
    group.finish();
}

/// A new subscription's retained lookup in a store of 100k topics `dev/{a}/{b}`.
fn bench_retained(c: &mut Criterion) {
    let mut group = c.benchmark_group("retained");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(20);
    let mut store = RetainedStore::new();
    for i in 0..100_000u64 {
        store.retained_mut().set(RetainedMessage {
            topic: topic(Shape::Exact.topic(i)),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::AtMostOnce,
            properties: PublishProperties::default(),
            expires_at: None,
        });
    }
    let mut stack = RetainedStack::default();
    for (name, f, hits) in [
        ("exact", "dev/17/42", 1u64),
        ("plus_1000", "dev/17/+", 1000),
        ("hash_100k", "#", 100_000),
    ] {
        let f = TopicFilter::from_static(f);
        group.throughput(Throughput::Elements(hits));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0u64;
                store
                    .retained()
                    .for_each_matching(&f, 0, &mut stack, |_| n += 1);
                assert_eq!(n, hits);
                n
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_match,
    bench_fanout,
    bench_interest,
    bench_retained
);
criterion_main!(benches);
