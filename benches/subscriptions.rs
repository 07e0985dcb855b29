//! What routing state costs per subscription, and what a publish costs at that size:
//! 1,000,000 distinct filters over 10,000 clients (100 each), the clients spread over 1, 2
//! and 4 shards by `shard::home_shard` as the broker spreads them.
//!
//! Each shard holds what `shard::Routes` holds for them: its local `SubscriptionTrie` and its
//! replica of the `InterestIndex` (none on a broker of one shard), fed with the `InterestOp`s
//! every shard broadcasts (the home shard records its own filters with `add_local`); each
//! client holds its session's own record of its filters (`session::Subscriptions`). Memory
//! is counted by the allocator (mimalloc's usable size of every live block, so size classes
//! count as the broker pays them) and printed once per shard count; the benchmarks then time
//! the routing of one publish from shard 0 to a random subscribed topic (every one a cache
//! miss): the interest lookup, and the destination shard's local match and fan-out.
//!
//! Filters: `site<c/100>/dev<c>/sensor<k>/+` (client `c`, filter `k`), as
//! `ringmq-bench subscriptions` subscribes them; `exact/*` runs the same without the `/+`.
//!
//! Run: `cargo bench --bench subscriptions` (about a minute per shard count; the memory
//! figures are printed before the timings).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringmq::codec::model::{QoS, SubscriptionOptions};
use ringmq::router::{
    Fanout, Inserted, InterestIndex, MatchStack, OverlapMode, ShardId, ShardMask, Subscription,
    SubscriptionTrie, TopicFilter, TopicName,
};
use ringmq::session::Subscriptions;
use ringmq::shard::home_shard;

/// mimalloc, as the broker runs, counting the usable size of every live block.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn usable(ptr: *mut u8) -> isize {
    // SAFETY: `ptr` is a live block from mimalloc (called right after allocating it or
    // right before freeing it).
    unsafe { libmimalloc_sys::mi_usable_size(ptr.cast()) as isize }
}

// SAFETY: every call is forwarded to mimalloc unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(usable(p), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(usable(ptr), Ordering::Relaxed);
        // SAFETY: forwarded; `ptr` came from `alloc` with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(usable(p), Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = usable(ptr);
        // SAFETY: forwarded; `ptr` came from `alloc` with `layout`.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(usable(p) - before, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CLIENTS: u32 = 10_000;
const FILTERS_PER_CLIENT: u32 = 100;
const SUBSCRIPTIONS: u32 = CLIENTS * FILTERS_PER_CLIENT;

fn filter(c: u32, k: u32, exact: bool) -> TopicFilter {
    let tail = if exact { "" } else { "/+" };
    let s = format!("site{}/dev{c}/sensor{k}{tail}", c / 100);
    TopicFilter::new(Bytes::from(s)).expect("valid bench filter")
}

fn topic(c: u32, k: u32, exact: bool) -> TopicName {
    let tail = if exact { "" } else { "/v" };
    let s = format!("site{}/dev{c}/sensor{k}{tail}", c / 100);
    TopicName::new(Bytes::from(s)).expect("valid bench topic")
}

/// One shard's routing state for these subscriptions.
struct Shard {
    local: SubscriptionTrie<u32>,
    interest: InterestIndex,
}

/// What `build` counted, in bytes.
struct Counted {
    local: isize,
    replicas: isize,
    /// The sessions' own records of their subscriptions.
    records: isize,
}

/// Subscribes every client on its home shard, broadcasting interest as the shards do, and
/// returns the shards with the bytes their local tries, their replicas and the sessions'
/// records hold.
fn build(shards: usize, exact: bool) -> (Vec<Shard>, Counted) {
    let sub = Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtMostOnce,
            ..Default::default()
        },
        id: None,
    };
    let mut all: Vec<Shard> = (0..shards)
        .map(|i| Shard {
            local: SubscriptionTrie::new(),
            interest: InterestIndex::for_shard(
                ShardId::new(i as u8).expect("fewer than 64 shards"),
                0x5eed,
                false,
            ),
        })
        .collect();
    let (mut local_bytes, mut replica_bytes, mut record_bytes) = (0, 0, 0);
    let mut records: Vec<Subscriptions> = Vec::with_capacity(CLIENTS as usize);
    let session_sub = ringmq::session::Subscription {
        options: sub.options,
        id: sub.id,
    };
    for c in 0..CLIENTS {
        let mut record = Subscriptions::new();
        let shard = home_shard(format!("client-{c}").as_bytes(), shards);
        let home = shard.index();
        for k in 0..FILTERS_PER_CLIENT {
            let f = filter(c, k, exact);
            let before = LIVE.load(Ordering::Relaxed);
            let inserted = all[home].local.insert(&f, c, sub);
            let after_local = LIVE.load(Ordering::Relaxed);
            local_bytes += after_local - before;
            record.insert(&f, session_sub);
            let after_record = LIVE.load(Ordering::Relaxed);
            record_bytes += after_record - after_local;
            let first = inserted
                == Inserted::New {
                    first_for_filter: true,
                };
            // One shard keeps no index (`Core::interested_shards`).
            if first
                && shards > 1
                && let Some(op) = all[home].interest.add_local(&f)
            {
                for (i, s) in all.iter_mut().enumerate() {
                    if i != shard.index() {
                        s.interest.apply(&op);
                    }
                }
            }
            replica_bytes += LIVE.load(Ordering::Relaxed) - after_record;
        }
        records.push(record);
    }
    drop(records);
    (
        all,
        Counted {
            local: local_bytes,
            replicas: replica_bytes,
            records: record_bytes,
        },
    )
}

fn bench_size(c: &mut Criterion, exact: bool) {
    let kind = if exact { "exact" } else { "wildcard" };
    let mut group = c.benchmark_group(format!("subscriptions_1M/{kind}"));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for shards in [1usize, 2, 4] {
        let (all, counted) = build(shards, exact);
        let Counted {
            local,
            replicas,
            records,
        } = counted;
        let per = |b: isize| b as f64 / f64::from(SUBSCRIPTIONS);
        println!(
            "{kind}, {shards} shard(s): {:.1} B per subscription = local tries {:.1} + \
             interest replicas {:.1} ({:.1} per replica) + session records {:.1}",
            per(local + replicas + records),
            per(local),
            per(replicas),
            per(replicas) / shards as f64,
            per(records),
        );
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let topics: Vec<TopicName> = (0..100_000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let (cl, k) = ((rng >> 20) as u32 % CLIENTS, (rng >> 4) as u32 % 100);
                topic(cl, k, exact)
            })
            .collect();
        let mut stack = MatchStack::default();
        let mut fanout = Fanout::<u32>::new(OverlapMode::PerSubscription);
        let mut i = 0usize;
        // As `Core::interested_shards`: the replica's other shards, plus shard 0 itself when
        // its local trie matches.
        let mask_for = |t: &TopicName, stack: &mut MatchStack| {
            if shards == 1 {
                return ShardMask(1);
            }
            let mut mask = all[0].interest.shards_for(t, stack);
            all[0].local.match_topic(t, stack, |_, _| mask.0 |= 1);
            mask
        };
        group.bench_function(BenchmarkId::new("interest", shards), |b| {
            b.iter(|| {
                i = (i + 1) % topics.len();
                black_box(mask_for(&topics[i], &mut stack))
            })
        });
        group.bench_function(BenchmarkId::new("route", shards), |b| {
            b.iter(|| {
                i = (i + 1) % topics.len();
                let t = &topics[i];
                let mask = mask_for(t, &mut stack);
                let mut delivered = 0;
                for s in mask.iter() {
                    let local = &all[s.index()].local;
                    fanout.collect(local, t, None, QoS::AtMostOnce, &mut stack);
                    delivered += fanout.deliveries().len();
                }
                assert_eq!(delivered, 1);
                delivered
            })
        });
        drop(all);
    }
    group.finish();
}

fn bench_wildcard(c: &mut Criterion) {
    bench_size(c, false);
}

fn bench_exact(c: &mut Criterion) {
    bench_size(c, true);
}

criterion_group!(benches, bench_wildcard, bench_exact);
criterion_main!(benches);
