//! Unit tests of the share-group replica and of every `ShareStrategy`.

use super::*;
use crate::codec::model::QoS;

fn shard(i: u8) -> ShardId {
    ShardId::new(i).expect("valid shard")
}
fn member(s: u8, k: u32) -> ShareMember<u32> {
    ShareMember {
        shard: shard(s),
        subscriber: k,
        subscription: Subscription::default(),
        durable: false,
    }
}
fn join(f: &'static str, s: u8, k: u32) -> ShareOp<u32> {
    ShareOp::Join {
        filter: TopicFilter::from_static(f),
        member: member(s, k),
    }
}
fn leave(f: &'static str, s: u8, k: u32) -> ShareOp<u32> {
    ShareOp::Leave {
        filter: TopicFilter::from_static(f),
        shard: shard(s),
        subscriber: k,
    }
}
fn load(s: u8, k: u32, full: bool) -> ShareOp<u32> {
    ShareOp::Load {
        shard: shard(s),
        subscriber: k,
        full,
    }
}
/// The replica of shard `this` with `ops` applied.
fn replica(this: u8, strategy: ShareStrategy, ops: &[ShareOp<u32>]) -> SharedGroups<u32> {
    let mut g = SharedGroups::new(shard(this), strategy, 42);
    for op in ops {
        g.apply(op);
    }
    g
}
/// Members 1 on shard 0, 10 on shard 1, 20 on shard 2 in group `$share/g/a/+`.
fn three() -> Vec<ShareOp<u32>> {
    vec![
        join("$share/g/a/+", 1, 10),
        join("$share/g/a/+", 0, 1),
        join("$share/g/a/+", 2, 20),
    ]
}
/// `n` picks for `topic` published by `publisher`: (shard, subscriber) of each matching
/// group, sorted.
fn picks_from(
    g: &mut SharedGroups<u32>,
    topic: &str,
    publisher: Option<&str>,
    n: usize,
) -> Vec<Vec<(usize, u32)>> {
    let mut stack = MatchStack::default();
    let mut out = Vec::new();
    let topic = TopicName::new(Bytes::copy_from_slice(topic.as_bytes())).expect("topic");
    (0..n)
        .map(|_| {
            g.pick(&topic, publisher.map(str::as_bytes), &mut stack, &mut out);
            let mut v: Vec<_> = out
                .iter()
                .map(|p| (p.member.shard.index(), p.member.subscriber))
                .collect();
            v.sort_unstable();
            v
        })
        .collect()
}
fn picks(g: &mut SharedGroups<u32>, topic: &str, n: usize) -> Vec<Vec<(usize, u32)>> {
    picks_from(g, topic, None, n)
}
/// The one member picked per publish, for groups matched once.
fn singles(p: Vec<Vec<(usize, u32)>>) -> Vec<u32> {
    p.into_iter()
        .map(|v| match v.as_slice() {
            [(_, k)] => *k,
            other => panic!("expected one pick, got {other:?}"),
        })
        .collect()
}
fn counts(picked: &[u32]) -> std::collections::BTreeMap<u32, usize> {
    let mut c = std::collections::BTreeMap::new();
    picked.iter().for_each(|k| *c.entry(*k).or_default() += 1);
    c
}

#[test]
fn round_robin_is_the_default_and_reaches_every_member_from_every_shard() {
    assert_eq!(ShareStrategy::default(), ShareStrategy::RoundRobin);
    for this in 0..4 {
        // Shard 0 has a local member; it gets no preference.
        let mut g = replica(this, ShareStrategy::RoundRobin, &three());
        let picked = singles(picks(&mut g, "a/x", 60));
        assert_eq!(
            counts(&picked),
            [(1, 20), (10, 20), (20, 20)].into(),
            "replica of shard {this}"
        );
        // In turn, not in runs.
        assert!(picked.windows(2).all(|w| w[0] != w[1]), "{picked:?}");
    }
    // Replicas start at different members.
    let firsts: Vec<u32> = (0..3)
        .map(|this| {
            singles(picks(
                &mut replica(this, ShareStrategy::RoundRobin, &three()),
                "a/x",
                1,
            ))[0]
        })
        .collect();
    assert_eq!(firsts, [1, 10, 20]);
}

#[test]
fn replicas_list_members_in_the_same_order_whatever_the_op_order() {
    let mut ops = three();
    let a = replica(0, ShareStrategy::RoundRobin, &ops);
    ops.reverse();
    let b = replica(3, ShareStrategy::RoundRobin, &ops);
    let f = TopicFilter::from_static("$share/g/a/+");
    assert_eq!(a.members(&f), b.members(&f));
    assert_eq!(
        a.members(&f)
            .iter()
            .map(|m| m.subscriber)
            .collect::<Vec<_>>(),
        [1, 10, 20]
    );
}

#[test]
fn random_reaches_every_member() {
    let mut g = replica(0, ShareStrategy::Random, &three());
    let c = counts(&singles(picks(&mut g, "a/x", 3000)));
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|&n| n > 800), "{c:?}");
}

#[test]
fn local_first_prefers_local_members_round_robin() {
    let mut ops = three();
    ops.push(join("$share/g/a/+", 0, 2));
    let mut g = replica(0, ShareStrategy::LocalFirst, &ops);
    assert_eq!(
        counts(&singles(picks(&mut g, "a/x", 4))),
        [(1, 2), (2, 2)].into()
    );
    // A replica without a local member: round robin over all.
    let mut other = replica(3, ShareStrategy::LocalFirst, &ops);
    let c = counts(&singles(picks(&mut other, "a/x", 40)));
    assert_eq!(c, [(1, 10), (2, 10), (10, 10), (20, 10)].into());
}

#[test]
fn sticky_keeps_one_member_until_it_leaves_and_replicas_agree() {
    let mut a = replica(0, ShareStrategy::Sticky, &three());
    let mut b = replica(2, ShareStrategy::Sticky, &three());
    assert_eq!(singles(picks(&mut a, "a/x", 5)), [1; 5]);
    assert_eq!(singles(picks(&mut b, "a/y", 5)), [1; 5]);
    // A new member does not take over.
    let joined = join("$share/g/a/+", 0, 0);
    a.apply(&joined);
    assert_eq!(singles(picks(&mut a, "a/x", 3)), [1; 3]);
    // Once it leaves, one other member takes over, for good.
    a.apply(&leave("$share/g/a/+", 0, 1));
    assert_eq!(singles(picks(&mut a, "a/x", 3)), [0; 3]);
    a.apply(&join("$share/g/a/+", 0, 1));
    assert_eq!(singles(picks(&mut a, "a/x", 3)), [0; 3]);
}

#[test]
fn hash_client_id_keeps_a_publisher_on_one_member_on_every_shard() {
    let mut a = replica(0, ShareStrategy::HashClientId, &three());
    let mut b = replica(3, ShareStrategy::HashClientId, &three());
    let mut used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let id = format!("publisher-{i}");
        let picked = singles(picks_from(&mut a, "a/x", Some(&id), 4));
        assert!(picked.iter().all(|k| *k == picked[0]), "{id}: {picked:?}");
        let elsewhere = singles(picks_from(&mut b, "a/y", Some(&id), 1));
        assert_eq!(elsewhere[0], picked[0], "{id}: shards agree");
        used.insert(picked[0]);
    }
    assert_eq!(used.len(), 3, "publishers spread over the members");
    // A message without a publisher (made by the broker): round robin.
    assert_eq!(counts(&singles(picks(&mut a, "a/x", 3))).len(), 3);
}

#[test]
fn hash_topic_keeps_a_topic_on_one_member_on_every_shard() {
    let mut a = replica(0, ShareStrategy::HashTopic, &three());
    let mut b = replica(2, ShareStrategy::HashTopic, &three());
    let mut used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let topic = format!("a/{i}");
        let picked = singles(picks_from(&mut a, &topic, Some("p1"), 3));
        assert!(
            picked.iter().all(|k| *k == picked[0]),
            "{topic}: {picked:?}"
        );
        assert_eq!(
            singles(picks_from(&mut b, &topic, Some("p2"), 1))[0],
            picked[0]
        );
        used.insert(picked[0]);
    }
    assert_eq!(used.len(), 3);
}

#[test]
fn least_loaded_skips_full_members_while_another_has_room() {
    let mut g = replica(0, ShareStrategy::LeastLoaded, &three());
    assert!(g.apply(&load(1, 10, true)));
    assert!(!g.apply(&load(1, 10, true)), "idempotent");
    assert!(g.is_full(shard(1), 10));
    assert_eq!(
        counts(&singles(picks(&mut g, "a/x", 40))),
        [(1, 20), (20, 20)].into()
    );
    // Every member full: round robin over all (someone has to queue it).
    g.apply(&load(0, 1, true));
    g.apply(&load(2, 20, true));
    assert_eq!(counts(&singles(picks(&mut g, "a/x", 30))).len(), 3);
    g.apply(&load(0, 1, false));
    g.apply(&load(2, 20, false));
    assert_eq!(
        singles(picks(&mut g, "a/x", 10))
            .iter()
            .filter(|k| **k == 10)
            .count(),
        0
    );
    // Room again: back in the rotation.
    assert!(g.apply(&load(1, 10, false)));
    assert_eq!(counts(&singles(picks(&mut g, "a/x", 30))).len(), 3);
    // The flag is per session: it applies in every group the session is in.
    g.apply(&join("$share/h/a/+", 1, 10));
    g.apply(&join("$share/h/a/+", 2, 20));
    g.apply(&load(1, 10, true));
    let both = picks(&mut g, "a/x", 10);
    assert!(both.iter().flatten().all(|(_, k)| *k != 10), "{both:?}");
}

#[test]
fn pick_in_chooses_within_the_named_group() {
    let mut ops = three();
    ops.push(join("$share/other/a/+", 3, 30));
    let mut g = replica(0, ShareStrategy::RoundRobin, &ops);
    let f = TopicFilter::from_static("$share/g/a/+");
    let t = TopicName::from_static("a/x");
    let got: Vec<u32> = (0..3)
        .map(|_| g.pick_in(&f, &t, None).expect("member").member.subscriber)
        .collect();
    assert_eq!(counts(&got), [(1, 1), (10, 1), (20, 1)].into());
    let pick = g.pick_in(&f, &t, None).expect("member");
    assert_eq!(pick.group.as_str(), "$share/g/a/+");
    assert!(
        g.pick_in(&TopicFilter::from_static("$share/none/a/+"), &t, None)
            .is_none()
    );
}

#[test]
fn one_pick_per_matching_group() {
    let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
    g.apply(&join("$share/g1/a/#", 1, 1));
    g.apply(&join("$share/g2/a/#", 1, 2));
    g.apply(&join("$share/g1/a/b", 1, 3)); // same name, other filter: another group
    g.apply(&join("$share/g1/#", 1, 4));
    assert_eq!(picks(&mut g, "a/b", 1), [[(1, 1), (1, 2), (1, 3), (1, 4)]]);
    assert_eq!(picks(&mut g, "$SYS/x", 1), [Vec::<(usize, u32)>::new()]);
    assert_eq!(g.group_count(), 4);
    let mut stack = MatchStack::default();
    let mut out = Vec::new();
    g.pick(&TopicName::from_static("a/b"), None, &mut stack, &mut out);
    let mut groups: Vec<&str> = out.iter().map(|p| p.group.as_str()).collect();
    groups.sort_unstable();
    assert_eq!(
        groups,
        [
            "$share/g1/#",
            "$share/g1/a/#",
            "$share/g1/a/b",
            "$share/g2/a/#"
        ]
    );
}

#[test]
fn leave_and_rejoin() {
    let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
    assert!(g.apply(&join("$share/g/t", 1, 1)));
    assert!(!g.apply(&join("$share/g/t", 1, 1)));
    let mut updated = member(1, 1);
    updated.subscription.options.qos = QoS::AtLeastOnce;
    let rejoin = ShareOp::Join {
        filter: TopicFilter::from_static("$share/g/t"),
        member: updated,
    };
    assert!(g.apply(&rejoin));
    assert_eq!(
        g.members(&TopicFilter::from_static("$share/g/t")),
        [updated]
    );
    assert!(g.apply(&join("$share/g/t", 0, 2)));
    assert!(g.apply(&leave("$share/g/t", 0, 2)));
    assert!(!g.apply(&leave("$share/g/t", 0, 2)));
    assert_eq!(picks(&mut g, "t", 2), [[(1, 1)], [(1, 1)]]);
    assert!(g.apply(&leave("$share/g/t", 1, 1)));
    assert_eq!(g.group_count(), 0);
    assert_eq!(g.trie.node_count(), 1);
    assert_eq!(picks(&mut g, "t", 1), [Vec::<(usize, u32)>::new()]);
}

#[test]
fn shared_and_plain_subscriptions_are_independent() {
    // bad input #58: `$share/sharename/test` + `test`, then UNSUB `test`.
    use crate::router::delivery::SubscriptionTrie;
    let mut plain: SubscriptionTrie<u32> = SubscriptionTrie::new();
    let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
    plain.insert(
        &TopicFilter::from_static("test"),
        1,
        Subscription::default(),
    );
    g.apply(&join("$share/sharename/test", 0, 1));
    assert!(plain.remove(&TopicFilter::from_static("test"), 1).is_some());
    assert_eq!(plain.node_count(), 1);
    assert_eq!(picks(&mut g, "test", 1), [[(0, 1)]]);
    // A plain filter in a ShareOp is ignored, not mistaken for a group.
    assert!(!g.apply(&join("test", 0, 1)));
    assert!(g.apply(&leave("$share/sharename/test", 0, 1)));
    assert_eq!(g.group_count(), 0);
}

#[test]
fn cursor_survives_members_leaving() {
    let mut g = SharedGroups::new(shard(0), ShareStrategy::RoundRobin, 1);
    for k in 1..=3 {
        g.apply(&join("$share/g/t", 1, k));
    }
    assert_eq!(picks(&mut g, "t", 3), [[(1, 1)], [(1, 2)], [(1, 3)]]);
    g.apply(&leave("$share/g/t", 1, 3));
    g.apply(&leave("$share/g/t", 1, 2));
    assert_eq!(picks(&mut g, "t", 2), [[(1, 1)], [(1, 1)]]);
}
