//! SUBSCRIBE and UNSUBSCRIBE.

use super::*;
use crate::codec::{RetainHandling, SubAck, Subscribe, SubscribeProperties, UnsubAck, Unsubscribe};

fn subscribe(id: u16, filters: &[(&'static str, QoS)], sub_id: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|(f, q)| (filter(f), sub_opts(*q)))
            .collect(),
        properties: SubscribeProperties {
            subscription_identifier: sub_id,
            user_properties: vec![],
        },
    })
}

fn suback(id: u16, reasons: &[ReasonCode]) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: pid(id),
        reasons: reasons.to_vec(),
        properties: AckProperties::default(),
    })
}

fn unsubscribe(id: u16, filters: &[&'static str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(id),
        filters: filters.iter().map(|f| filter(f)).collect(),
        user_properties: vec![],
    })
}

#[test]
fn subscribe_grants_and_emits_router_actions() {
    let limits = Limits {
        max_qos: 1,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.packet(subscribe(
        5,
        &[("a/+", QoS::ExactlyOnce), ("$share/g/b", QoS::AtMostOnce)],
        Some(42),
    ));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![suback(
            5,
            &[ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS0]
        )]
    );
    let granted = Subscription {
        options: sub_opts(QoS::AtLeastOnce),
        id: Some(42),
    };
    assert_eq!(
        actions,
        vec![
            Action::Subscribe {
                filter: filter("a/+"),
                sub: granted,
                existed: false
            },
            Action::Subscribe {
                filter: filter("$share/g/b"),
                sub: Subscription {
                    options: sub_opts(QoS::AtMostOnce),
                    id: Some(42)
                },
                existed: false
            },
        ]
    );
    assert_eq!(
        h.s.subscriptions().next(),
        Some((
            filter("$share/g/b"),
            Subscription {
                options: sub_opts(QoS::AtMostOnce),
                id: Some(42)
            }
        ))
    );
}

#[test]
fn resubscribing_replaces_the_subscription() {
    let mut h = Harness::v311();
    h.packet(subscribe(1, &[("a", QoS::AtMostOnce)], None));
    h.take();
    h.packet(subscribe(2, &[("a", QoS::ExactlyOnce)], None));
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![suback(2, &[ReasonCode::GrantedQoS2])]);
    assert_eq!(
        actions,
        vec![Action::Subscribe {
            filter: filter("a"),
            sub: Subscription {
                options: sub_opts(QoS::ExactlyOnce),
                id: None
            },
            existed: true
        }]
    );
    assert_eq!(h.s.subscriptions().count(), 1);
}

#[test]
fn subscription_quota_is_0x97() {
    // bad input #61; replacing an existing filter is still allowed at the quota.
    let limits = Limits {
        max_subscriptions: 2,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.packet(subscribe(
        1,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce),
            ("a", QoS::AtLeastOnce),
        ],
        None,
    ));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![suback(
            1,
            &[
                ReasonCode::GrantedQoS0,
                ReasonCode::GrantedQoS0,
                ReasonCode::QuotaExceeded,
                ReasonCode::GrantedQoS1
            ]
        )]
    );
    // The router hears of `a` once (its last occurrence) and of `b`.
    assert_eq!(actions.len(), 2);
    assert_eq!(h.s.subscriptions().count(), 2);
}

#[test]
fn unavailable_features_and_limits_are_refused_per_filter() {
    let limits = Limits {
        shared_subscriptions: false,
        wildcard_subscriptions: false,
        max_topic_levels: 2,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.packet(subscribe(
        1,
        &[
            ("$share/g/a", QoS::AtMostOnce),
            ("a/#", QoS::AtMostOnce),
            ("a/b/c", QoS::AtMostOnce),
            ("a/b", QoS::AtMostOnce),
        ],
        None,
    ));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![suback(
            1,
            &[
                ReasonCode::SharedSubscriptionsNotSupported,
                ReasonCode::WildcardSubscriptionsNotSupported,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::GrantedQoS0,
            ]
        )]
    );
    assert_eq!(actions.len(), 1);

    let limits = Limits {
        subscription_identifiers: false,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.packet(subscribe(1, &[("a", QoS::AtMostOnce)], Some(1)));
    assert_eq!(
        h.take().0,
        vec![suback(
            1,
            &[ReasonCode::SubscriptionIdentifiersNotSupported]
        )]
    );
}

#[test]
fn shared_subscription_with_no_local_is_protocol_error() {
    // bad input #57 [MQTT-3.8.3-4].
    let mut h = Harness::v5();
    let mut opts = sub_opts(QoS::AtMostOnce);
    opts.no_local = true;
    h.packet(Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(filter("a"), opts), (filter("$share/g/a"), opts)],
        properties: SubscribeProperties::default(),
    }));
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![disconnect(ReasonCode::ProtocolError)]);
    assert_eq!(actions, [Action::Close { will: true }, Action::Ended]);
    assert_eq!(h.s.subscriptions().count(), 0);
}

#[test]
fn shared_subscriptions_are_accepted_from_3_1_1() {
    let mut h = Harness::v311();
    h.packet(subscribe(1, &[("$share/g/a", QoS::AtLeastOnce)], None));
    assert_eq!(h.take().0, vec![suback(1, &[ReasonCode::GrantedQoS1])]);
}

#[test]
fn options_are_kept_as_granted() {
    let mut h = Harness::v5();
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
    };
    h.packet(Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(filter("a"), opts)],
        properties: SubscribeProperties::default(),
    }));
    h.take();
    assert_eq!(
        h.s.subscriptions().next().map(|(_, s)| s.options),
        Some(opts)
    );
}

#[test]
fn unsubscribe_reports_per_filter_in_v5() {
    let mut h = Harness::v5();
    h.packet(subscribe(1, &[("a", QoS::AtMostOnce)], None));
    h.take();
    h.packet(unsubscribe(2, &["a", "b"]));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![Packet::UnsubAck(UnsubAck {
            packet_id: pid(2),
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: AckProperties::default(),
        })]
    );
    assert_eq!(
        actions,
        vec![Action::Unsubscribe {
            filter: filter("a")
        }]
    );
    let mut h = Harness::v311();
    h.packet(unsubscribe(3, &["a"]));
    assert_eq!(
        h.packets(),
        vec![Packet::UnsubAck(UnsubAck {
            packet_id: pid(3),
            reasons: vec![],
            properties: AckProperties::default(),
        })]
    );
}

#[test]
fn shared_and_plain_subscription_to_the_same_filter_are_distinct() {
    // bad input #58.
    let mut h = Harness::v5();
    h.packet(subscribe(
        1,
        &[
            ("$share/s/test", QoS::AtMostOnce),
            ("test", QoS::AtMostOnce),
        ],
        None,
    ));
    h.take();
    h.packet(unsubscribe(2, &["test"]));
    h.take();
    let left: Vec<String> = h.s.subscriptions().map(|(f, _)| f.to_string()).collect();
    assert_eq!(left, ["$share/s/test"]);
}

/// One SUBSCRIBE carries at most `max_subscribe_filters` filters (the rest get 0x97), and a
/// filter named twice is subscribed once with its last options.
#[test]
fn filters_per_packet_are_capped_and_repeats_subscribed_once() {
    let limits = Limits {
        max_subscribe_filters: 3,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    h.packet(subscribe(
        1,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("a", QoS::AtLeastOnce),
            ("c", QoS::AtMostOnce),
        ],
        None,
    ));
    let (packets, actions) = h.take();
    assert_eq!(
        packets,
        vec![suback(
            1,
            &[
                ReasonCode::GrantedQoS0,
                ReasonCode::GrantedQoS0,
                ReasonCode::GrantedQoS1,
                ReasonCode::QuotaExceeded
            ]
        )]
    );
    let subscribed: Vec<(&str, QoS)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Subscribe { filter, sub, .. } => Some((filter.as_str(), sub.options.qos)),
            _ => None,
        })
        .collect();
    assert_eq!(
        subscribed,
        [("b", QoS::AtMostOnce), ("a", QoS::AtLeastOnce)]
    );
    assert_eq!(h.s.subscriptions().count(), 2);
    let a = h.s.subscriptions().find(|(f, _)| f.as_str() == "a");
    assert_eq!(a.map(|(_, s)| s.options.qos), Some(QoS::AtLeastOnce));
}
