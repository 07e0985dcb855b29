//! docs/bad-inputs.md rows 10 to 27: CONNECT and its properties.

use bytes::Bytes;

use super::*;
use DecodeError as E;
use ReasonCode as R;

/// A v5 CONNECT with clean start, keep alive 10, client id "a", and `props` (hex) as its
/// property block (without the length).
fn v5_connect(props: &str) -> String {
    let p = hex(props);
    let rl = 10 + 1 + p.len() + 3;
    format!(
        "10 {rl:02X} 0004'MQTT' 05 02 000A {:02X} {props} 0001'a'",
        p.len()
    )
}

/// A v5 CONNECT with a will (topic "w", payload "m") whose will properties are `props`.
fn v5_connect_will(props: &str) -> String {
    let p = hex(props);
    let rl = 10 + 1 + 3 + 1 + p.len() + 3 + 3;
    format!(
        "10 {rl:02X} 0004'MQTT' 05 06 000A 00 0001'a' {:02X} {props} 0001'w' 0001'm'",
        p.len()
    )
}

#[test]
fn bad_input_10_wrong_protocol_name_or_level() {
    let v3_refused = connack(V311, R::UnsupportedProtocolVersion);
    let v5_refused = connack(V5, R::UnsupportedProtocolVersion);
    expect_err(
        "10 0F 0006'MQIsdp' 04 02 003C 0001'a'",
        None,
        false,
        E::InvalidProtocolName { level: 4 },
        v3_refused,
    );
    expect_err(
        "10 0D 0004'MQTU' 04 02 003C 0001'a'",
        None,
        false,
        E::InvalidProtocolName { level: 4 },
        v3_refused,
    );
    expect_err(
        "10 0D 0004'MQTU' 05 02 003C 0001'a'",
        None,
        false,
        E::InvalidProtocolName { level: 5 },
        v5_refused,
    );
    expect_err(
        "10 0D 0004'MQTT' 02 02 003C 0001'a'",
        None,
        false,
        E::UnsupportedProtocolVersion { level: 2 },
        v3_refused,
    );
    expect_err(
        "10 0D 0004'MQTT' 06 02 003C 0001'a'",
        None,
        false,
        E::UnsupportedProtocolVersion { level: 6 },
        v3_refused,
    );
    expect_err(
        "10 0D 0004'MQTT' 03 02 003C 0001'a'",
        None,
        false,
        E::InvalidProtocolName { level: 3 },
        v3_refused,
    );
    // The answers on the wire.
    let refuse = |reason| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Default::default(),
        })
    };
    assert_eq!(
        enc(&refuse(R::UnsupportedProtocolVersion), V311),
        hex("20 02 00 01")
    );
    assert_eq!(
        enc(&refuse(R::UnsupportedProtocolVersion), V5),
        hex("20 03 00 84 00")
    );
}

#[test]
fn bad_input_11_reserved_connect_flag() {
    expect_err(
        "10 0D 0004'MQTT' 04 03 003C 0001'a'",
        None,
        false,
        E::ReservedConnectFlag { version: V311 },
        CLOSE,
    );
    expect_err(
        "10 0E 0004'MQTT' 05 01 003C 00 0001'a'",
        None,
        false,
        E::ReservedConnectFlag { version: V5 },
        connack(V5, R::MalformedPacket),
    );
}

#[test]
fn bad_input_12_will_flag_without_will_fields() {
    let eof = E::MalformedConnect {
        version: V311,
        cause: Malformation::UnexpectedEof,
    };
    expect_err(
        "10 0D 0004'MQTT' 04 06 000A 0001 70",
        None,
        false,
        eof,
        CLOSE,
    );
    let eof5 = E::MalformedConnect {
        version: V5,
        cause: Malformation::UnexpectedEof,
    };
    expect_err(
        "10 0E 0004'MQTT' 05 06 000A 00 0001 70",
        None,
        false,
        eof5,
        connack(V5, R::MalformedPacket),
    );
}

#[test]
fn bad_input_13_will_qos_or_retain_without_will_and_will_qos_3() {
    for flags in ["0A", "12", "22"] {
        let bytes = format!("10 0D 0004'MQTT' 04 {flags} 000A 0001'a'");
        expect_err(
            &bytes,
            None,
            false,
            E::WillFlagsWithoutWill { version: V311 },
            CLOSE,
        );
    }
    expect_err(
        "10 0D 0004'MQTT' 04 1E 000A 0001'a'",
        None,
        false,
        E::InvalidWillQoS { version: V311 },
        CLOSE,
    );
    expect_err(
        "10 0E 0004'MQTT' 05 1E 000A 00 0001'a'",
        None,
        false,
        E::InvalidWillQoS { version: V5 },
        connack(V5, R::MalformedPacket),
    );
}

#[test]
fn bad_input_14_password_without_username() {
    expect_err(
        "10 10 0004'MQTT' 04 42 000A 0001'a' 0001'p'",
        None,
        false,
        E::PasswordWithoutUsername { version: V311 },
        CLOSE,
    );
    expect_err(
        "10 12 0006'MQIsdp' 03 42 000A 0001'a' 0001'p'",
        None,
        false,
        E::PasswordWithoutUsername { version: V31 },
        CLOSE,
    );
    // 5.0 allows a password without a user name (3.1.2.9).
    let Ok(Packet::Connect(c)) = dec("10 11 0004'MQTT' 05 42 000A 00 0001'a' 0001'p'", None) else {
        panic!("v5 password-only CONNECT refused")
    };
    assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"p"[..])));
}

#[test]
fn bad_input_15_flags_promise_fields_the_payload_lacks() {
    // Remaining length 7 ends the packet right after the protocol level.
    let eof = E::MalformedConnect {
        version: V311,
        cause: Malformation::UnexpectedEof,
    };
    expect_err(
        "10 07 0004'MQTT' 04 C2 003C 000B'test-python'",
        None,
        false,
        eof,
        CLOSE,
    );
    // The flags promise user name and password; only the client id is there.
    expect_err(
        "10 17 0004'MQTT' 04 C2 003C 000B'test-python'",
        None,
        false,
        eof,
        CLOSE,
    );
}

#[test]
fn bad_input_16_second_connect() {
    let connect = "10 0D 0004'MQTT' 04 02 003C 0001'a'";
    assert!(dec(connect, None).is_ok());
    expect_err(connect, Some(V311), true, E::SecondConnect, CLOSE);
    expect_err(
        connect,
        Some(V5),
        true,
        E::SecondConnect,
        disconnect(R::ProtocolError),
    );
}

#[test]
fn bad_input_17_empty_client_id_without_clean_session() {
    let rejected = connack(V311, R::ClientIdentifierNotValid);
    expect_err(
        "10 0C 0004'MQTT' 04 00 000A 0000",
        None,
        false,
        E::ClientIdRejected { version: V311 },
        rejected,
    );
    // 3.1 requires a client id whatever the clean session flag says.
    expect_err(
        "10 0E 0006'MQIsdp' 03 02 000A 0000",
        None,
        false,
        E::ClientIdRejected { version: V31 },
        connack(V31, R::ClientIdentifierNotValid),
    );
    // Allowed: 3.1.1 with clean session, and 5.0 in any case (the server assigns one).
    assert!(dec("10 0C 0004'MQTT' 04 02 000A 0000", None).is_ok());
    assert!(dec("10 0D 0004'MQTT' 05 00 000A 00 0000", None).is_ok());
    // On the wire: 20 02 00 02.
    let p = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: R::ClientIdentifierNotValid,
        properties: Default::default(),
    });
    assert_eq!(enc(&p, V311), hex("20 02 00 02"));
}

#[test]
fn bad_input_18_forbidden_code_points_in_every_string() {
    let forbidden = |version| E::MalformedConnect {
        version,
        cause: Malformation::ForbiddenCodePoint,
    };
    let bad_utf8 = |version| E::MalformedConnect {
        version,
        cause: Malformation::InvalidUtf8,
    };
    // Client id with U+0000.
    expect_err(
        "10 11 0004'MQTT' 04 02 000A 0005 746F00 6F 6F",
        None,
        false,
        forbidden(V311),
        CLOSE,
    );
    expect_err(
        "10 12 0004'MQTT' 05 02 000A 00 0005 746F00 6F 6F",
        None,
        false,
        forbidden(V5),
        connack(V5, R::MalformedPacket),
    );
    // User name with U+0001, U+007F, U+0085 (C2 85), U+FFFF (EF BF BF).
    for cp in ["01", "7F", "C285", "EFBFBF"] {
        let n = hex(cp).len() + 1;
        let bytes = format!(
            "10 {:02X} 0004'MQTT' 04 82 000A 0001'a' {n:04X} 'u' {cp}",
            15 + n
        );
        expect_err(&bytes, None, false, forbidden(V311), CLOSE);
    }
    // Encoded surrogate U+D800 and overlong '/' in the client id.
    expect_err(
        "10 0F 0004'MQTT' 04 02 000A 0003 EDA080",
        None,
        false,
        bad_utf8(V311),
        CLOSE,
    );
    expect_err(
        "10 0E 0004'MQTT' 04 02 000A 0002 C0AF",
        None,
        false,
        bad_utf8(V311),
        CLOSE,
    );
    // Will topic with U+001F.
    expect_err(
        "10 14 0004'MQTT' 04 06 000A 0001'a' 0002 'w'1F 0001'm'",
        None,
        false,
        forbidden(V311),
        CLOSE,
    );
    // PUBLISH topic with U+0000 (after CONNACK) and a user property value with U+FFFF.
    expect_err(
        "30 05 0003 'a' 00 'b'",
        Some(V311),
        true,
        E::ForbiddenCodePoint,
        CLOSE,
    );
    expect_err(
        "30 07 0003 'a' 00 'b' 00 'x'",
        Some(V5),
        true,
        E::ForbiddenCodePoint,
        disconnect(R::MalformedPacket),
    );
    expect_err(
        "30 0E 0001'a' 09 26 0001'k' 0003 EFBFBF 'x'",
        Some(V5),
        true,
        E::ForbiddenCodePoint,
        disconnect(R::MalformedPacket),
    );
}

#[test]
fn bad_input_20_duplicate_single_instance_properties() {
    let dup = |id| (E::DuplicateProperty(id), connack(V5, R::ProtocolError));
    for (props, id) in [
        ("11 00000001 11 00000001", 0x11),
        ("21 0001 21 0002", 0x21),
        ("27 00000100 27 00000100", 0x27),
        ("22 0001 22 0001", 0x22),
        ("15 0001'a' 15 0001'a'", 0x15),
        ("17 01 17 01", 0x17),
    ] {
        let (err, resp) = dup(id);
        expect_err(&v5_connect(props), None, false, err, resp);
    }
    // User properties may repeat.
    assert!(dec(&v5_connect("26 0001'k' 0001'v' 26 0001'k' 0001'v'"), None).is_ok());
}

#[test]
fn bad_input_21_forbidden_property_values() {
    for (props, id) in [
        ("21 0000", 0x21),
        ("27 00000000", 0x27),
        ("17 02", 0x17),
        ("19 02", 0x19),
    ] {
        expect_err(
            &v5_connect(props),
            None,
            false,
            E::InvalidPropertyValue(id),
            connack(V5, R::ProtocolError),
        );
    }
}

#[test]
fn bad_input_22_property_not_allowed_in_connect() {
    for (props, id) in [
        ("24 01", 0x24),
        ("25 01", 0x25),
        ("01 01", 0x01),
        ("23 0001", 0x23),
        ("0B 01", 0x0B),
        ("12 0001'a'", 0x12),
    ] {
        expect_err(
            &v5_connect(props),
            None,
            false,
            E::PropertyNotAllowed(id),
            connack(V5, R::ProtocolError),
        );
    }
    // An unknown identifier is malformed, not a protocol error.
    expect_err(
        &v5_connect("30 01"),
        None,
        false,
        E::UnknownProperty(0x30),
        connack(V5, R::MalformedPacket),
    );
}

#[test]
fn bad_input_23_auth_data_without_method() {
    expect_err(
        &v5_connect("16 0000"),
        None,
        false,
        E::AuthDataWithoutMethod,
        connack(V5, R::ProtocolError),
    );
    // With a method it decodes; whether "SCRAM-X" is supported (0x8C) is the session's call.
    assert!(dec(&v5_connect("15 0007'SCRAM-X' 16 0000"), None).is_ok());
}

#[test]
fn bad_input_24_will_properties_of_the_wrong_kind() {
    for (props, id) in [
        ("24 01", 0x24),
        ("11 00000001", 0x11),
        ("0B 01", 0x0B),
        ("23 0001", 0x23),
    ] {
        expect_err(
            &v5_connect_will(props),
            None,
            false,
            E::PropertyNotAllowed(id),
            connack(V5, R::ProtocolError),
        );
    }
    expect_err(
        &v5_connect_will("01 02"),
        None,
        false,
        E::InvalidPropertyValue(0x01),
        connack(V5, R::ProtocolError),
    );
    expect_err(
        &v5_connect_will("18 00000001 18 00000001"),
        None,
        false,
        E::DuplicateProperty(0x18),
        connack(V5, R::ProtocolError),
    );
    expect_err(
        &v5_connect_will("08 0000"),
        None,
        false,
        E::InvalidResponseTopic(crate::codec::topic::TopicError::Empty),
        connack(V5, R::ProtocolError),
    );
    let Ok(Packet::Connect(c)) = dec(&v5_connect_will("18 0000000A 02 00000005"), None) else {
        panic!("valid will refused")
    };
    let w = c.will.expect("will");
    assert_eq!(
        (
            w.properties.will_delay_interval,
            w.properties.message_expiry_interval
        ),
        (Some(10), Some(5))
    );
}

/// `n` user properties `26 0000 0000` in a v5 PUBLISH, as hex.
fn publish_with_users(n: usize) -> BytesMut {
    let props = n * 5;
    let mut body = hex("0001'a'");
    let mut len = BytesMut::new();
    crate::codec::encode::Sink::put_vbi(&mut len, props as u32);
    body.extend_from_slice(&len);
    for _ in 0..n {
        body.extend_from_slice(&hex("26 0000 0000"));
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0x30]);
    crate::codec::encode::Sink::put_vbi(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out
}

#[test]
fn bad_input_26_thousands_of_user_properties() {
    let mut at_limit = publish_with_users(64);
    assert!(matches!(
        decode(&mut at_limit, Some(V5), &limits()),
        Ok(Some(Packet::Publish(_)))
    ));
    let mut over = publish_with_users(65);
    assert_eq!(
        decode(&mut over, Some(V5), &limits()),
        Err(E::TooManyUserProperties)
    );
    assert_eq!(
        E::TooManyUserProperties.response(Some(V5), true),
        disconnect(R::QuotaExceeded)
    );
    // 10,000 are refused at the 65th, without reading the rest.
    let mut flood = publish_with_users(10_000);
    assert_eq!(
        decode(&mut flood, Some(V5), &limits()),
        Err(E::TooManyUserProperties)
    );
    // In a CONNECT: CONNACK 0x97.
    let props = "26 0000 0000 ".repeat(65);
    expect_err(
        &v5_connect_long(&props),
        None,
        false,
        E::TooManyUserProperties,
        connack(V5, R::QuotaExceeded),
    );
}

/// `v5_connect` for property blocks of 128 bytes or more (two-byte lengths).
fn v5_connect_long(props: &str) -> String {
    let p = hex(props);
    let mut plen = BytesMut::new();
    crate::codec::encode::Sink::put_vbi(&mut plen, p.len() as u32);
    let rl = 10 + plen.len() + p.len() + 3;
    let mut rl_bytes = BytesMut::new();
    crate::codec::encode::Sink::put_vbi(&mut rl_bytes, rl as u32);
    let h = |b: &BytesMut| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    format!(
        "10 {} 0004'MQTT' 05 02 000A {} {props} 0001'a'",
        h(&rl_bytes),
        h(&plen)
    )
}

#[test]
fn bad_input_27_user_property_pair_too_short() {
    // Value declares 3 bytes, 2 follow before the block ends.
    expect_err(
        "30 0C 0001'a' 06 26 0000 0003'ab' 'x'",
        Some(V5),
        true,
        E::UnexpectedEof,
        disconnect(R::MalformedPacket),
    );
    let eof = E::MalformedConnect {
        version: V5,
        cause: Malformation::UnexpectedEof,
    };
    expect_err(
        &v5_connect("26 0003'ab'"),
        None,
        false,
        eof,
        connack(V5, R::MalformedPacket),
    );
}

#[test]
fn bad_input_26_user_property_cap_counts_connect_and_will_together() {
    let users = |n| {
        vec![
            UserProperty {
                name: s("k"),
                value: s("v")
            };
            n
        ]
    };
    let connect = |in_connect, in_will| {
        Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 10,
            client_id: s("a"),
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"m"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: WillProperties {
                    user_properties: users(in_will),
                    ..Default::default()
                },
            }),
            username: None,
            password: None,
            properties: ConnectProperties {
                user_properties: users(in_connect),
                ..Default::default()
            },
        }))
    };
    let mut ok = enc(&connect(40, 24), V5);
    assert!(matches!(
        decode(&mut ok, None, &limits()),
        Ok(Some(Packet::Connect(_)))
    ));
    let mut over = enc(&connect(40, 25), V5);
    assert_eq!(
        decode(&mut over, None, &limits()),
        Err(E::TooManyUserProperties)
    );
}
