//! docs/bad-inputs.md rows 32 to 63: PUBLISH, acknowledgements, SUBSCRIBE, server-only packets.

use super::*;
use crate::codec::topic::TopicError;
use DecodeError as E;
use ReasonCode as R;

#[test]
fn bad_input_32_zero_length_topic_without_alias() {
    expect_err(
        "30 09 0000 'payload'",
        Some(V311),
        true,
        E::EmptyTopicWithoutAlias,
        CLOSE,
    );
    expect_err(
        "30 0A 0000 00 'payload'",
        Some(V5),
        true,
        E::EmptyTopicWithoutAlias,
        disconnect(R::ProtocolError),
    );
    // With a Topic Alias the empty topic is valid and stored as the default (empty) name.
    let Ok(Packet::Publish(p)) = dec("30 0D 0000 03 23 0005 'payload'", Some(V5)) else {
        panic!("aliased publish refused")
    };
    assert_eq!(
        (p.topic, p.properties.topic_alias),
        (TopicName::default(), Some(5))
    );
}

#[test]
fn bad_input_33_wildcards_in_publish_topic() {
    for bytes in [
        "30 0E 0005 2B6F706963 'payload'",
        "30 0E 0005 'to#ic' 'payload'",
    ] {
        let mut buf = hex(bytes);
        let err = decode(&mut buf, Some(V311), &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                E::InvalidTopicName(TopicError::Wildcard | TopicError::BadWildcardPlacement)
            ),
            "{err:?}"
        );
        assert_eq!(err.response(Some(V311), true), CLOSE);
        assert_eq!(err.response(Some(V5), true), disconnect(R::MalformedPacket));
    }
}

#[test]
fn bad_input_34_publish_qos_3() {
    expect_err(
        "36 0E 0005'topic' 'payload'",
        Some(V311),
        true,
        E::InvalidQoS,
        CLOSE,
    );
    expect_err(
        "36 0E 0005'topic' 'payload'",
        Some(V5),
        true,
        E::InvalidQoS,
        disconnect(R::MalformedPacket),
    );
    // Refused at the first byte.
    expect_err(
        "36",
        Some(V5),
        true,
        E::InvalidQoS,
        disconnect(R::MalformedPacket),
    );
}

#[test]
fn bad_input_35_publish_packet_id_zero() {
    expect_err(
        "32 10 0005'topic' 0000 'payload'",
        Some(V311),
        true,
        E::PacketIdZero,
        CLOSE,
    );
    expect_err(
        "32 11 0005'topic' 0000 00 'payload'",
        Some(V5),
        true,
        E::PacketIdZero,
        disconnect(R::ProtocolError),
    );
    // The same for acknowledgements and SUBSCRIBE/UNSUBSCRIBE.
    expect_err(
        "40 02 0000",
        Some(V5),
        true,
        E::PacketIdZero,
        disconnect(R::ProtocolError),
    );
    expect_err(
        "82 06 0000 0001'a' 00",
        Some(V311),
        true,
        E::PacketIdZero,
        CLOSE,
    );
    expect_err(
        "A2 05 0000 0001'a'",
        Some(V311),
        true,
        E::PacketIdZero,
        CLOSE,
    );
}

#[test]
fn bad_input_36_dup_on_qos0() {
    expect_err("38 07 0005'topic'", Some(V311), true, E::DupOnQoS0, CLOSE);
    expect_err(
        "38 08 0005'topic' 00",
        Some(V5),
        true,
        E::DupOnQoS0,
        disconnect(R::MalformedPacket),
    );
    // DUP on QoS 1 is fine.
    assert!(dec("3A 09 0005'topic' 0001", Some(V311)).is_ok());
}

#[test]
fn bad_input_39_topic_alias_zero() {
    expect_err(
        "30 08 0001'a' 03 23 0000 'x'",
        Some(V5),
        true,
        E::TopicAliasZero,
        disconnect(R::TopicAliasInvalid),
    );
    expect_err(
        "30 08 0001'a' 03 23 0000 'x'",
        Some(V5),
        false,
        E::TopicAliasZero,
        connack(V5, R::TopicAliasInvalid),
    );
}

#[test]
fn bad_input_40_subscription_identifier_from_client_and_five_byte_vbi() {
    let bytes = "30 07 0001'a' 02 0B 05 'x'";
    expect_err(
        bytes,
        Some(V5),
        true,
        E::SubscriptionIdentifierFromClient,
        disconnect(R::ProtocolError),
    );
    // A client decoding what the server sends accepts it (and several of them).
    let Ok(Packet::Publish(p)) = dec_with(
        "30 09 0001'a' 04 0B 05 0B 07 'x'",
        Some(V5),
        &client_limits(),
    ) else {
        panic!("server publish refused by a client")
    };
    assert_eq!(p.properties.subscription_identifiers, vec![5, 7]);
    // Identifier 0 is refused in both directions.
    expect_err(
        "30 07 0001'a' 02 0B 00 'x'",
        Some(V5),
        true,
        E::InvalidPropertyValue(0x0B),
        disconnect(R::ProtocolError),
    );
    expect_err_with(
        "30 07 0001'a' 02 0B 00 'x'",
        Some(V5),
        true,
        &client_limits(),
        E::InvalidPropertyValue(0x0B),
        disconnect(R::ProtocolError),
    );
    // A five-byte variable byte integer is malformed.
    expect_err(
        "30 0B 0001'a' 06 0B 8080808001 'x'",
        Some(V5),
        true,
        E::VariableByteIntegerTooLong,
        disconnect(R::MalformedPacket),
    );
}

#[test]
fn bad_input_41_server_only_properties_in_publish() {
    for (prop, id) in [
        ("1C 0001'h'", 0x1C),
        ("11 00000001", 0x11),
        ("15 0001'm'", 0x15),
        ("21 0001", 0x21),
        ("1F 0001'r'", 0x1F),
    ] {
        let p = hex(prop);
        let bytes = format!(
            "30 {:02X} 0001'a' {:02X} {prop} 'x'",
            3 + 1 + p.len() + 1,
            p.len()
        );
        expect_err(
            &bytes,
            Some(V5),
            true,
            E::PropertyNotAllowed(id),
            disconnect(R::ProtocolError),
        );
    }
}

#[test]
fn bad_input_42_payload_format_indicator_2() {
    expect_err(
        "30 07 0001'a' 02 01 02 'x'",
        Some(V5),
        true,
        E::InvalidPropertyValue(0x01),
        disconnect(R::ProtocolError),
    );
    // PFI 1 with a payload that is not UTF-8 decodes: the optional 0x99 check is the session's.
    assert!(dec("30 07 0001'a' 02 01 01 FF", Some(V5)).is_ok());
}

#[test]
fn bad_input_43_empty_response_topic() {
    expect_err(
        "30 08 0001'a' 03 08 0000 'x'",
        Some(V5),
        true,
        E::InvalidResponseTopic(TopicError::Empty),
        disconnect(R::ProtocolError),
    );
}

#[test]
fn bad_input_43_response_topic_with_wildcards() {
    let mut buf = hex("30 0B 0001'a' 06 08 0003'a/#' 'x'");
    let err = decode(&mut buf, Some(V5), &limits()).unwrap_err();
    assert!(matches!(err, E::InvalidResponseTopic(_)), "{err:?}");
    assert_eq!(err.response(Some(V5), true), disconnect(R::ProtocolError));
}

#[test]
fn bad_input_44_payload_larger_than_max_packet_size() {
    let small = DecodeLimits {
        max_packet_size: 64,
        ..limits()
    };
    // A 300-byte PUBLISH, of which only the header arrived.
    expect_err_with(
        "30 AA 02",
        Some(V5),
        true,
        &small,
        E::PacketTooLarge,
        disconnect(R::PacketTooLarge),
    );
    expect_err_with(
        "30 AA 02",
        Some(V311),
        true,
        &small,
        E::PacketTooLarge,
        CLOSE,
    );
}

#[test]
fn bad_input_49_pubrel_with_unknown_reason_code() {
    expect_err(
        "62 04 0001 FF 00",
        Some(V5),
        true,
        E::InvalidReasonCode(0xFF),
        disconnect(R::ProtocolError),
    );
    // A code PUBREL may not carry although PUBACK may (0x10 No matching subscribers).
    expect_err(
        "62 03 0001 10",
        Some(V5),
        true,
        E::InvalidReasonCode(0x10),
        disconnect(R::ProtocolError),
    );
    assert!(dec("62 03 0001 92", Some(V5)).is_ok());
}

#[test]
fn bad_input_55_subscribe_without_filters_or_with_empty_filter() {
    expect_err("82 02 1234", Some(V311), true, E::NoFilters, CLOSE);
    expect_err(
        "82 03 1234 00",
        Some(V5),
        true,
        E::NoFilters,
        disconnect(R::ProtocolError),
    );
    expect_err("A2 02 1234", Some(V311), true, E::NoFilters, CLOSE);
    expect_err(
        "A2 03 1234 00",
        Some(V5),
        true,
        E::NoFilters,
        disconnect(R::ProtocolError),
    );
    let empty = E::InvalidTopicFilter(TopicError::Empty);
    expect_err("82 05 1234 0000 00", Some(V311), true, empty, CLOSE);
    expect_err(
        "82 06 1234 00 0000 00",
        Some(V5),
        true,
        empty,
        disconnect(R::MalformedPacket),
    );
    expect_err("A2 04 1234 0000", Some(V311), true, empty, CLOSE);
}

#[test]
fn bad_input_56_subscription_option_bits() {
    // Reserved bits: Malformed Packet [MQTT-3.8.3-5].
    for opt in ["40", "80", "C0"] {
        let bytes = format!("82 07 1234 00 0001'a' {opt}");
        expect_err(
            &bytes,
            Some(V5),
            true,
            E::SubscriptionOptionsReservedBits,
            disconnect(R::MalformedPacket),
        );
    }
    // 3.1.1 reserves bits 2-7.
    expect_err(
        "82 06 1234 0001'a' 04",
        Some(V311),
        true,
        E::SubscriptionOptionsReservedBits,
        CLOSE,
    );
    // QoS 3 and Retain Handling 3: the spec calls both a Protocol Error (3.8.3.1).
    expect_err(
        "82 07 1234 00 0001'a' 03",
        Some(V5),
        true,
        E::InvalidSubscriptionQoS,
        disconnect(R::ProtocolError),
    );
    expect_err(
        "82 07 1234 00 0001'a' 30",
        Some(V5),
        true,
        E::InvalidRetainHandling,
        disconnect(R::ProtocolError),
    );
    expect_err(
        "82 06 1234 0001'a' 03",
        Some(V311),
        true,
        E::InvalidSubscriptionQoS,
        CLOSE,
    );
}

#[test]
fn bad_input_57_no_local_on_shared_subscription() {
    expect_err(
        "82 10 1234 00 000A'$share/g/t' 04",
        Some(V5),
        true,
        E::NoLocalOnSharedSubscription,
        disconnect(R::ProtocolError),
    );
    // No Local on a normal subscription is fine.
    assert!(dec("82 07 1234 00 0001't' 04", Some(V5)).is_ok());
}

#[test]
fn bad_input_57_shared_subscription_without_group_or_filter() {
    for bytes in [
        "82 0F 1234 00 0009'$share/p/' 00",
        "82 0F 1234 00 0009'$share//t' 00",
    ] {
        let mut buf = hex(bytes);
        let err = decode(&mut buf, Some(V5), &limits()).unwrap_err();
        assert!(matches!(err, E::InvalidTopicFilter(_)), "{err:?}");
        assert_eq!(
            err.response(Some(V5), true),
            disconnect(R::ProtocolError),
            "{err:?}"
        );
    }
}

#[test]
fn bad_input_62_subscription_identifier_0_or_too_large() {
    expect_err(
        "82 09 1234 02 0B 00 0001'a' 00",
        Some(V5),
        true,
        E::InvalidPropertyValue(0x0B),
        disconnect(R::ProtocolError),
    );
    expect_err(
        "82 0D 1234 06 0B 8080808001 0001'a' 00",
        Some(V5),
        true,
        E::VariableByteIntegerTooLong,
        disconnect(R::MalformedPacket),
    );
    // Only one per SUBSCRIBE.
    expect_err(
        "82 0B 1234 04 0B 01 0B 02 0001'a' 00",
        Some(V5),
        true,
        E::DuplicateProperty(0x0B),
        disconnect(R::ProtocolError),
    );
    // The largest value, 268,435,455, is accepted.
    let Ok(Packet::Subscribe(s)) = dec("82 0C 1234 05 0B FFFFFF7F 0001'a' 00", Some(V5)) else {
        panic!("refused")
    };
    assert_eq!(s.properties.subscription_identifier, Some(268_435_455));
}

#[test]
fn bad_input_63_server_only_packets_from_a_client() {
    // CONNECT, then a CONNACK with bad flags, then DISCONNECT.
    let mut buf = hex("101000044d5154540502003c03210014000029020001e000");
    let Ok(Some(Packet::Connect(c))) = decode(&mut buf, None, &limits()) else {
        panic!("CONNECT refused")
    };
    assert_eq!(c.properties.receive_maximum, Some(20));
    // The bad flags decide at the decoder: 0x81.
    assert_eq!(
        decode(&mut buf, Some(V5), &limits()),
        Err(E::InvalidFixedHeaderFlags(0x29))
    );
    assert_eq!(
        E::InvalidFixedHeaderFlags(0x29).response(Some(V5), true),
        disconnect(R::MalformedPacket)
    );
    // Well-formed server-only packets decode (a client needs them); the session answers 0x82.
    assert!(matches!(
        dec("20 03 00 00 00", Some(V5)),
        Ok(Packet::ConnAck(_))
    ));
    assert!(matches!(dec("20 02 01 00", Some(V311)), Ok(Packet::ConnAck(c)) if c.session_present));
    assert!(matches!(
        dec("90 04 0001 00 80", Some(V5)),
        Ok(Packet::SubAck(_))
    ));
    assert!(matches!(
        dec("B0 02 0001", Some(V311)),
        Ok(Packet::UnsubAck(_))
    ));
    assert_eq!(dec("D0 00", Some(V5)), Ok(Packet::PingResp));
    // Malformed server packets are refused like any other.
    expect_err(
        "20 02 02 00",
        Some(V311),
        true,
        E::InvalidConnAckFlags,
        CLOSE,
    );
    expect_err(
        "20 02 00 06",
        Some(V311),
        true,
        E::InvalidReasonCode(0x06),
        CLOSE,
    );
    expect_err(
        "90 03 0001 03",
        Some(V311),
        true,
        E::InvalidReasonCode(0x03),
        CLOSE,
    );
}

#[test]
fn errors_before_connack_in_v5_answer_with_connack() {
    // During an AUTH exchange (after CONNECT, before CONNACK) a v5 client gets a CONNACK.
    expect_err(
        "F0 02 18 00",
        Some(V5),
        false,
        E::AuthMethodMissing,
        connack(V5, R::ProtocolError),
    );
    expect_err(
        "F0 01 18",
        Some(V5),
        false,
        E::UnexpectedEof,
        connack(V5, R::MalformedPacket),
    );
    // A 3.x error before CONNACK without a return code closes.
    expect_err("C0 01 00", Some(V311), false, E::TrailingBytes, CLOSE);
}
