//! `validate_connect`, CONNACK contents, clean start and session present.

use super::*;
use crate::codec::{ConnAck, ConnAckProperties};

pub(super) fn connack(h: &mut Harness) -> ConnAck {
    match h.take().0.first() {
        Some(Packet::ConnAck(c)) => c.clone(),
        other => panic!("CONNACK expected, got {other:?}"),
    }
}

#[test]
fn client_id_rules() {
    let l = Limits::default();
    use ProtocolVersion::*;
    // bad input #17: empty id with clean session = 0 (3.1.1) -> 0x02.
    let cases = [
        (V311, "", false, Err(ReasonCode::ClientIdentifierNotValid)),
        (V311, "", true, Ok(ConnectDecision::AssignId)),
        (V5, "", false, Ok(ConnectDecision::AssignId)),
        (V31, "", true, Err(ReasonCode::ClientIdentifierNotValid)),
        (
            V311,
            "dev-1",
            false,
            Ok(ConnectDecision::UseId(client("dev-1"))),
        ),
    ];
    for (v, id, clean, want) in cases {
        assert_eq!(
            validate_connect(&connect_packet(v, id, clean), &l),
            want,
            "{v:?} {id:?} {clean}"
        );
    }
    let long = "x".repeat(257);
    assert_eq!(
        validate_connect(&connect_packet(V5, &long, true), &l),
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    assert!(validate_connect(&connect_packet(V5, &long[..256], true), &l).is_ok());
}

#[test]
fn keep_alive_cap() {
    // bad input #28: 3.x above the cap -> return code 2; v5 -> Server Keep Alive.
    let l = Limits::default();
    let mut c = connect_packet(ProtocolVersion::V311, "c1", true);
    c.keep_alive = 65535;
    assert_eq!(
        validate_connect(&c, &l),
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    assert_eq!(
        ReasonCode::ClientIdentifierNotValid.v3_connack_return_code(),
        2
    );
    c.keep_alive = 3600;
    assert!(validate_connect(&c, &l).is_ok());
    let no_cap = Limits {
        max_keep_alive: 0,
        ..Limits::default()
    };
    c.keep_alive = 65535;
    assert!(validate_connect(&c, &no_cap).is_ok());

    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.keep_alive = 65535;
    assert!(validate_connect(&c, &l).is_ok());
    let mut h = Harness::new(l);
    h.connect(c, false);
    let ack = connack(&mut h);
    assert_eq!(ack.properties.server_keep_alive, Some(3600));
    assert_eq!(h.s.next_deadline(), Some(h.now + 3600 * 1500));
}

#[test]
fn the_authentication_method_is_left_to_the_shard() {
    // bad input #23: which methods exist depends on the settings in force; the shard
    // answers 0x8C for the others (session::auth tests, tests/auth.rs).
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.properties.authentication_method = Some(mstr("SCRAM-X"));
    assert!(validate_connect(&c, &Limits::default()).is_ok());
}

#[test]
fn will_checks() {
    let no_retain = Limits {
        retain_available: false,
        ..Limits::default()
    };
    let qos0 = Limits {
        max_qos: 0,
        ..Limits::default()
    };
    let mut retained = will("a", QoS::AtMostOnce, None);
    retained.retain = true;
    let cases = [
        (no_retain, retained, ReasonCode::RetainNotSupported),
        (
            qos0,
            will("a", QoS::AtLeastOnce, None),
            ReasonCode::QoSNotSupported,
        ),
        // bad input #37.
        (
            Limits::default(),
            will("$CONTROL/x", QoS::AtMostOnce, None),
            ReasonCode::NotAuthorized,
        ),
        (
            Limits {
                max_topic_levels: 1,
                ..Limits::default()
            },
            will("a/b", QoS::AtMostOnce, None),
            ReasonCode::TopicNameInvalid,
        ),
    ];
    for (limits, w, code) in cases {
        let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
        c.will = Some(w);
        assert_eq!(validate_connect(&c, &limits), Err(code));
    }
}

#[test]
fn connack_v5_properties_follow_the_limits() {
    let limits = Limits {
        max_qos: 1,
        retain_available: false,
        wildcard_subscriptions: false,
        subscription_identifiers: false,
        shared_subscriptions: false,
        ..Limits::default()
    };
    let mut h = Harness::new(limits);
    h.s.connect(
        connect_packet(ProtocolVersion::V5, "c1", true),
        false,
        true,
        h.now,
        &mut h.out,
        &mut h.actions,
    );
    let ack = connack(&mut h);
    assert_eq!(
        ack,
        ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: ConnAckProperties {
                receive_maximum: Some(32),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(1024 * 1024),
                assigned_client_identifier: Some(mstr("c1")),
                topic_alias_maximum: Some(10),
                wildcard_subscription_available: Some(false),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(false),
                ..ConnAckProperties::default()
            },
        }
    );
}

#[test]
fn connack_3x_has_no_properties() {
    let mut h = Harness::new(Limits::default());
    h.connect(connect_packet(ProtocolVersion::V311, "c1", true), false);
    assert_eq!(
        connack(&mut h),
        ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        }
    );
}

#[test]
fn session_present_only_when_resuming() {
    let persistent = connect_packet(ProtocolVersion::V311, "c1", false);
    // A new session is never present, whatever the shard says.
    let mut h = Harness::new(Limits::default());
    h.connect(persistent.clone(), true);
    assert!(!connack(&mut h).session_present);
    h.lost();
    h.connect(persistent.clone(), true);
    assert!(connack(&mut h).session_present);
    // The shard did not find it (e.g. created a new one): not present.
    h.lost();
    h.connect(persistent, false);
    assert!(!connack(&mut h).session_present);
}

#[test]
fn assigned_ids_are_deterministic_and_valid() {
    let id = assign_client_id(0xABCD);
    assert_eq!(id.as_str(), "ringmq-000000000000abcd");
    assert!(id.as_str().starts_with(ASSIGNED_ID_PREFIX));
    assert!(!id.as_str().contains(['/', '+', '#']));
    assert_eq!(id, assign_client_id(0xABCD));
    assert_ne!(id, assign_client_id(0xABCE));
}

#[test]
fn connect_on_a_connected_session_ends_the_old_connection_first() {
    let mut c = connect_packet(ProtocolVersion::V5, "c1", false);
    c.properties.session_expiry_interval = Some(60);
    c.will = Some(will("w", QoS::AtMostOnce, None));
    let mut h = Harness::connected(Limits::default(), c.clone());
    h.connect(c, true);
    let (packets, actions) = h.take();
    assert!(matches!(&packets[0], Packet::ConnAck(a) if a.session_present));
    assert!(matches!(&actions[..], [Action::Publish { message: m, .. }] if m.topic == topic("w")));
}

#[test]
fn server_keep_alive_is_announced_to_every_v5_client_and_enforced() {
    let limits = Limits {
        server_keep_alive: Some(20),
        ..Limits::default()
    };
    for asked in [0, 20, 60, 65535] {
        let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
        c.keep_alive = asked;
        let mut h = Harness::new(limits.clone());
        h.connect(c, false);
        let ack = connack(&mut h);
        assert_eq!(ack.properties.server_keep_alive, Some(20), "asked {asked}");
        assert_eq!(
            h.s.next_deadline(),
            Some(h.now + 20 * 1500),
            "asked {asked}"
        );
    }
    // 3.x cannot be told: its own keep alive stands.
    let mut c = connect_packet(ProtocolVersion::V311, "c1", true);
    c.keep_alive = 60;
    let mut h = Harness::new(limits);
    h.connect(c, false);
    assert_eq!(h.s.next_deadline(), Some(h.now + 60 * 1500));
    // Without the setting a v5 client within the cap is not told anything.
    let mut h = Harness::new(Limits::default());
    h.connect(connect_packet(ProtocolVersion::V5, "c1", true), false);
    assert_eq!(connack(&mut h).properties.server_keep_alive, None);
}

#[test]
fn response_information_only_when_requested() {
    let limits = Limits {
        response_information: Some("replies/".to_owned()),
        ..Limits::default()
    };
    for (requested, want) in [
        (Some(true), Some("replies/")),
        (Some(false), None),
        (None, None),
    ] {
        let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
        c.properties.request_response_information = requested;
        let mut h = Harness::new(limits.clone());
        h.connect(c, false);
        let info = connack(&mut h).properties.response_information;
        assert_eq!(info.as_ref().map(|s| s.as_str()), want, "{requested:?}");
    }
    // Requested, none configured: the server may leave it out [MQTT-3.1.2-28].
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.properties.request_response_information = Some(true);
    let mut h = Harness::new(Limits::default());
    h.connect(c, false);
    assert_eq!(connack(&mut h).properties.response_information, None);
}
