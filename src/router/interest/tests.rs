use super::*;
use crate::router::topic::topic_matches;
use bytes::Bytes;

fn shard(i: u8) -> ShardId {
    ShardId::new(i).expect("valid shard")
}
fn add(f: &'static str, s: u8) -> InterestOp {
    InterestOp::Add {
        filter: TopicFilter::from_static(f),
        shard: shard(s),
    }
}
fn remove(f: &'static str, s: u8) -> InterestOp {
    InterestOp::Remove {
        filter: TopicFilter::from_static(f),
        shard: shard(s),
        key_shared: false,
    }
}
fn filter_of(f: &str) -> TopicFilter {
    TopicFilter::new(Bytes::from(f.to_owned())).expect("valid filter")
}
fn topic_of(t: &str) -> TopicName {
    TopicName::new(Bytes::from(t.to_owned())).expect("valid topic")
}
fn shards(index: &InterestIndex, topic: &'static str) -> Vec<usize> {
    let mut stack = MatchStack::default();
    index
        .shards_for(&TopicName::from_static(topic), &mut stack)
        .iter()
        .map(|s| s.index())
        .collect()
}

#[test]
fn shard_ids_and_masks() {
    assert_eq!(ShardId::new(63).map(ShardId::index), Some(63));
    assert_eq!(ShardId::new(64), None);
    let mut m = ShardMask::EMPTY;
    m.insert(shard(63));
    m.insert(shard(0));
    m.insert(shard(5));
    assert_eq!(m.iter().map(ShardId::index).collect::<Vec<_>>(), [0, 5, 63]);
    assert_eq!(m.len(), 3);
    m.remove(shard(5));
    assert!(!m.contains(shard(5)) && m.contains(shard(63)));
}

#[test]
fn union_of_matching_filters() {
    let mut idx = InterestIndex::new();
    assert!(idx.apply(&add("a/b", 0)));
    assert!(idx.apply(&add("a/+", 1)));
    assert!(idx.apply(&add("#", 2)));
    assert!(idx.apply(&add("$SYS/#", 3)));
    assert!(idx.apply(&add("a/b", 4)));
    assert_eq!(shards(&idx, "a/b"), [0, 1, 2, 4]);
    assert_eq!(shards(&idx, "a/c"), [1, 2]);
    assert_eq!(shards(&idx, "z"), [2]);
    assert_eq!(shards(&idx, "$SYS/load"), [3]); // `#` skips `$` topics [MQTT-4.7.2-1]
    assert_eq!(idx.filter_count(), 4);
    // Shards past 16 sit in further words of the same key.
    assert!(idx.apply(&add("a/b", 63)));
    assert!(idx.apply(&add("a/+", 17)));
    assert_eq!(shards(&idx, "a/b"), [0, 1, 2, 4, 17, 63]);
    assert_eq!(shards(&idx, "a/c"), [1, 2, 17]);
    assert!(idx.apply(&remove("a/b", 63)));
    assert_eq!(shards(&idx, "a/b"), [0, 1, 2, 4, 17]);
}

#[test]
fn ops_are_idempotent_and_remove_frees_filters() {
    let mut idx = InterestIndex::new();
    assert!(idx.apply(&add("a/#", 1)));
    let g = idx.generation();
    assert!(!idx.apply(&add("a/#", 1)));
    assert_eq!(idx.generation(), g);
    assert!(idx.apply(&add("a/#", 2)));
    assert!(idx.apply(&remove("a/#", 1)));
    assert!(!idx.apply(&remove("a/#", 1)));
    assert!(!idx.apply(&remove("b", 1)));
    assert_eq!(shards(&idx, "a"), [2]);
    assert!(idx.apply(&remove("a/#", 2)));
    assert_eq!(shards(&idx, "a"), Vec::<usize>::new());
    assert_eq!(idx.filter_count(), 0);
    assert_eq!(
        idx.mask_of(&TopicFilter::from_static("a/#")),
        ShardMask::EMPTY
    );
}

#[test]
fn shared_filters_are_not_indexed() {
    let mut idx = InterestIndex::new();
    assert!(!idx.apply(&add("$share/g/a", 1)));
    assert_eq!(shards(&idx, "a"), Vec::<usize>::new());
}

#[test]
fn same_ops_give_same_replicas() {
    let ops = [
        add("a/+", 0),
        add("#", 1),
        remove("a/+", 0),
        add("a/b", 3),
        add("a/+", 2),
    ];
    let (mut r1, mut r2) = (InterestIndex::new(), InterestIndex::new());
    ops.iter().for_each(|op| {
        r1.apply(op);
        r2.apply(op);
    });
    for t in ["a/b", "a/x", "q", "$x"] {
        assert_eq!(shards(&r1, t), shards(&r2, t), "{t}");
    }
    assert_eq!(shards(&r1, "a/b"), [1, 2, 3]);
}

#[test]
fn cache_follows_the_generation() {
    let mut idx = InterestIndex::new();
    let mut cache = InterestCache::new();
    let mut stack = MatchStack::default();
    let t = TopicName::from_static("a/b");
    idx.apply(&add("a/b", 1));
    assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b10));
    assert_eq!(cache.len(&idx), 1);
    assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b10));
    idx.apply(&add("+/b", 0));
    assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b11));
    idx.apply(&remove("a/b", 1));
    assert_eq!(cache.shards_for(&idx, &t, &mut stack), ShardMask(0b01));
}

#[test]
fn multi_level_wildcards_match_their_parent_and_skip_dollar_topics() {
    let mut idx = InterestIndex::new();
    idx.apply(&add("a/#", 0));
    idx.apply(&add("a/b/#", 1));
    idx.apply(&add("+/#", 2));
    idx.apply(&add("+/x", 3));
    idx.apply(&add("$SYS/+", 4));
    idx.apply(&add("a/+/c", 5));
    assert_eq!(shards(&idx, "a"), [0, 2]);
    assert_eq!(shards(&idx, "a/b"), [0, 1, 2]);
    assert_eq!(shards(&idx, "a/b/c"), [0, 1, 2, 5]);
    assert_eq!(shards(&idx, "a/x"), [0, 2, 3]);
    assert_eq!(shards(&idx, "b"), [2]);
    assert_eq!(shards(&idx, "$SYS/x"), [4]); // not `+/#` nor `+/x` [MQTT-4.7.2-1]
    assert_eq!(shards(&idx, "$SYS/x/y"), Vec::<usize>::new());
    assert_eq!(shards(&idx, "a//c"), [0, 2, 5]); // an empty level is a level
    assert_eq!(shards(&idx, "/x"), [2, 3]);
}

/// Filters of more shapes than `MAX_HASHED_SHAPES` go to the exact trie, and come out
/// of it as they are removed.
#[test]
fn shapes_beyond_the_cap_fall_back_to_the_trie() {
    let mut idx = InterestIndex::new();
    let n = MAX_HASHED_SHAPES + 8;
    // Shape k: k literal levels then `#`.
    let filters: Vec<TopicFilter> = (1..=n)
        .map(|k| filter_of(&format!("{}#", "q/".repeat(k))))
        .collect();
    for (i, f) in filters.iter().enumerate() {
        let op = InterestOp::Add {
            filter: f.clone(),
            shard: shard((i % 8) as u8),
        };
        assert!(idx.apply(&op));
    }
    assert_eq!(idx.hashed_shapes(), MAX_HASHED_SHAPES);
    assert_eq!(idx.filter_count(), n);
    let mut stack = MatchStack::default();
    // `q/.../q` (n levels) matches every filter; `q` alone none.
    let deep = topic_of(&vec!["q"; n].join("/"));
    assert_eq!(idx.shards_for(&deep, &mut stack), ShardMask(0xff));
    let mid = topic_of(&vec!["q"; MAX_HASHED_SHAPES + 3].join("/"));
    let want = (0..MAX_HASHED_SHAPES + 3).fold(0u64, |m, i| m | 1 << (i % 8));
    assert_eq!(idx.shards_for(&mid, &mut stack), ShardMask(want));
    // Another filter of an overflowed shape joins the trie, not a new table.
    let late = filter_of(&format!("{}#", "q/".repeat(n - 1).replacen('q', "r", 1)));
    idx.apply(&InterestOp::Add {
        filter: late.clone(),
        shard: shard(9),
    });
    assert_eq!(idx.hashed_shapes(), MAX_HASHED_SHAPES);
    assert_eq!(idx.mask_of(&late), ShardMask(1 << 9));
    for (i, f) in filters.iter().enumerate() {
        let op = InterestOp::Remove {
            filter: f.clone(),
            shard: shard((i % 8) as u8),
            key_shared: false,
        };
        assert!(idx.apply(&op));
    }
    assert_eq!(idx.filter_count(), 1);
    assert_eq!(idx.shards_for(&deep, &mut stack), ShardMask::EMPTY);
    assert!(idx.overflow_shapes.len() == 1 && idx.shapes.is_empty());
}

/// Every key collides: the owner withholds the bit's removal while another of its
/// filters shares the key, so no replica loses a shard; an overflowed replica, which
/// holds filters exactly, drops the removed filter all the same.
#[test]
fn a_shared_key_keeps_its_bit_until_its_last_filter_leaves() {
    let weak = |mut idx: InterestIndex| {
        idx.hasher.key_mask = 0;
        idx
    };
    let mut owner = weak(InterestIndex::for_shard(shard(0), 1, false));
    let mut hashed = weak(InterestIndex::for_shard(shard(1), 1, false));
    let mut exact = weak(InterestIndex::for_shard(shard(2), 1, false));
    // Fill `exact`'s shape tables (ops of shard 1), so `a/...` filters overflow there;
    // none of these shapes fits a topic of two levels.
    for k in 3..3 + MAX_HASHED_SHAPES {
        let op = InterestOp::Add {
            filter: filter_of(&format!("{}#", "q/".repeat(k))),
            shard: shard(1),
        };
        exact.apply(&op);
    }
    let mut stack = MatchStack::default();
    let (f, g) = (filter_of("a/1"), filter_of("a/2"));
    for filter in [&f, &g] {
        let op = owner.add_local(filter).expect("an op");
        hashed.apply(&op);
        exact.apply(&op);
    }
    assert_eq!(owner.own_collisions.len(), 1);
    let op = owner.remove_local(&f).expect("an op");
    assert!(matches!(
        op,
        InterestOp::Remove {
            key_shared: true,
            ..
        }
    ));
    hashed.apply(&op);
    exact.apply(&op);
    let t2 = topic_of("a/2");
    assert_eq!(hashed.shards_for(&t2, &mut stack), ShardMask(1));
    assert_eq!(exact.shards_for(&t2, &mut stack), ShardMask(1));
    // The exact replica dropped `a/1`; the hashed one cannot tell it from `a/2`.
    assert_eq!(exact.shards_for(&topic_of("a/1"), &mut stack), ShardMask(0));
    let op = owner.remove_local(&g).expect("an op");
    assert!(matches!(
        op,
        InterestOp::Remove {
            key_shared: false,
            ..
        }
    ));
    hashed.apply(&op);
    exact.apply(&op);
    assert_eq!(hashed.shards_for(&t2, &mut stack), ShardMask::EMPTY);
    assert_eq!(exact.shards_for(&t2, &mut stack), ShardMask::EMPTY);
    assert!(owner.own.is_empty() && owner.own_collisions.is_empty());
}

/// Random subscribe/unsubscribe on 3 shards, with keys of 1 to 5 bits (collisions
/// everywhere) and with the real one: each replica's answer plus its own shard's local answer must
/// cover every shard with a matching filter (and equal it when nothing collides), and
/// every replica must agree.
#[test]
fn replicas_never_lose_a_shard() {
    let levels = ["a", "b", "+"];
    let mut pool: Vec<String> = Vec::new();
    for x in levels {
        pool.push(x.to_owned());
        pool.push(format!("{x}/#"));
        for y in levels {
            pool.push(format!("{x}/{y}"));
            pool.push(format!("{x}/{y}/#"));
        }
    }
    pool.push("#".to_owned());
    let topics = ["a", "b", "a/a", "a/b", "b/a", "a/b/a", "$S/a", "$S", "x/y"];
    let weak = |bits: u32| !(u64::MAX >> bits);
    for key_mask in [weak(1), weak(2), weak(3), weak(5), u64::MAX] {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut replicas: Vec<InterestIndex> = (0..3)
            .map(|i| {
                let mut r = InterestIndex::for_shard(shard(i), 9, false);
                r.hasher.key_mask = key_mask;
                r
            })
            .collect();
        // Local subscriber counts per (shard, filter).
        let mut local = vec![vec![0u32; pool.len()]; 3];
        let mut stack = MatchStack::default();
        for _ in 0..20_000 {
            let s = (next() % 3) as usize;
            let fi = (next() % pool.len() as u64) as usize;
            let filter = filter_of(&pool[fi]);
            // Few filters active at a time, so that a lost bit shows.
            let subscribe = if local[s][fi] == 0 {
                next() % 8 == 0
            } else {
                next() % 3 == 0
            };
            if local[s][fi] == 0 && !subscribe {
                continue;
            }
            let op = if subscribe {
                local[s][fi] += 1;
                (local[s][fi] == 1).then(|| replicas[s].add_local(&filter))
            } else {
                local[s][fi] -= 1;
                (local[s][fi] == 0).then(|| replicas[s].remove_local(&filter))
            };
            if let Some(op) = op.flatten() {
                for (r, replica) in replicas.iter_mut().enumerate() {
                    if r != s {
                        replica.apply(&op);
                    }
                }
            }
            for t in topics {
                let topic = topic_of(t);
                let mut want = ShardMask::EMPTY;
                for (sh, counts) in local.iter().enumerate() {
                    let hit = counts
                        .iter()
                        .zip(&pool)
                        .any(|(&n, f)| n > 0 && topic_matches(f.as_bytes(), t.as_bytes()));
                    if hit {
                        want.insert(shard(sh as u8));
                    }
                }
                for (r, replica) in replicas.iter().enumerate() {
                    let mut got = replica.shards_for(&topic, &mut stack);
                    assert!(!got.contains(shard(r as u8)), "own bit stored");
                    if want.contains(shard(r as u8)) {
                        got.insert(shard(r as u8));
                    }
                    assert_eq!(got.0 & want.0, want.0, "{t}: lost a shard");
                    let exact = key_mask == u64::MAX;
                    assert!(!exact || got == want, "{t}: {got:?} != {want:?}");
                }
            }
        }
    }
}

#[test]
fn keys_of_a_filter_and_a_matching_topic_agree() {
    let h = KeyHasher::new(42);
    for (f, t) in [
        ("a/+/c", "a/b/c"),
        ("+/+", "x/y"),
        ("a/#", "a"),
        ("a/#", "a/b/c"),
        ("a//b", "a//b"),
    ] {
        let filter = filter_of(f);
        let shape = Shape::of(&filter);
        let topic = topic_of(t);
        let levels = topic.levels().take(shape.levels as usize);
        assert_eq!(
            h.filter_key(&shape, &filter),
            h.key(h.shape_hash(&shape), &shape.plus, levels),
            "{f} {t}"
        );
    }
    // A level boundary moved is another key.
    let (a, b) = (filter_of("ab/c"), filter_of("a/bc"));
    let shape = Shape::of(&a);
    assert_ne!(h.filter_key(&shape, &a), h.filter_key(&shape, &b));
}

#[test]
fn key_table_grows_shrinks_and_deletes_without_losing_entries() {
    let mut t = KeyTable::default();
    let tagged = |i: u64| tag(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63, 0);
    for i in 0..5000u64 {
        assert!(t.set(tagged(i), 1 << (i % 16)));
    }
    assert_eq!(t.len, 5000);
    assert!(t.slots.len() * 4 >= 5000 * 5);
    for i in (0..5000u64).step_by(2) {
        assert!(t.clear(tagged(i), 1 << (i % 16)));
    }
    for i in 0..5000u64 {
        let want = if i % 2 == 0 { 0 } else { 1 << (i % 16) };
        assert_eq!(t.bits(tagged(i)), want, "{i}");
    }
    for i in (1..5000u64).step_by(2) {
        assert!(t.clear(tagged(i), 1 << (i % 16)));
    }
    assert!(t.is_empty() && t.slots.len() <= 16);
}

#[test]
fn cache_is_bounded() {
    let idx = InterestIndex::new();
    let mut cache = InterestCache::new();
    let mut stack = MatchStack::default();
    for i in 0..INTEREST_CACHE_CAPACITY + 10 {
        let t = TopicName::new(Bytes::from(format!("t/{i}"))).expect("valid");
        cache.shards_for(&idx, &t, &mut stack);
    }
    assert!(cache.len(&idx) <= INTEREST_CACHE_CAPACITY);
    assert_eq!(cache.slots.len(), INTEREST_CACHE_CAPACITY);
    // A long topic bypasses the cache but still gets the right answer.
    let long = TopicName::new(Bytes::from("x/".repeat(200))).expect("valid");
    assert_eq!(cache.shards_for(&idx, &long, &mut stack), ShardMask::EMPTY);
}
