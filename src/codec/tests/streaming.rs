//! Streaming: `Ok(None)` until the last byte, nothing consumed meanwhile, several packets
//! in one buffer, and the size limit decided from the header alone.

use super::*;

const CONNECT_V5: &str = "10 15 0004'MQTT' 05 02 003C 05 11 0000000A 0003'abc' ";
const PUBLISH_V5: &str = "32 0F 0003'a/b' 0001 05 02 0000003C 'hi'";

fn feed_byte_by_byte(bytes: &str, v: Option<ProtocolVersion>) -> Packet {
    let all = hex(bytes);
    let mut buf = BytesMut::new();
    for (i, b) in all.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = decode(&mut buf, v, &limits());
        if i + 1 < all.len() {
            assert_eq!(
                got,
                Ok(None),
                "complete after {} of {} bytes",
                i + 1,
                all.len()
            );
            assert_eq!(
                buf.len(),
                i + 1,
                "bytes consumed before the packet was complete"
            );
        } else {
            assert!(buf.is_empty());
            return got.unwrap().expect("packet at the last byte");
        }
    }
    unreachable!("empty input")
}

#[test]
fn one_byte_at_a_time_yields_none_until_the_last_byte() {
    let c = feed_byte_by_byte(CONNECT_V5, None);
    assert_eq!(c, dec(CONNECT_V5, None).unwrap());
    let p = feed_byte_by_byte(PUBLISH_V5, Some(V5));
    let Packet::Publish(p) = p else {
        panic!("not a publish")
    };
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(p.properties.message_expiry_interval, Some(60));
}

#[test]
fn two_packets_in_one_buffer_decode_in_sequence() {
    let mut buf = hex(&format!("{CONNECT_V5} {PUBLISH_V5} C0 00"));
    let first = decode(&mut buf, None, &limits()).unwrap().unwrap();
    assert!(matches!(first, Packet::Connect(_)));
    let second = decode(&mut buf, Some(V5), &limits()).unwrap().unwrap();
    assert!(matches!(second, Packet::Publish(_)));
    assert_eq!(
        decode(&mut buf, Some(V5), &limits()),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(decode(&mut buf, Some(V5), &limits()), Ok(None));
}

#[test]
fn an_empty_buffer_needs_more_bytes() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf, None, &limits()), Ok(None));
    assert_eq!(decode(&mut buf, Some(V311), &limits()), Ok(None));
}

#[test]
fn packet_size_limit_counts_the_fixed_header() {
    // PINGREQ is 2 bytes; a 12-byte PUBLISH is refused at a limit of 11 and accepted at 12.
    let tight = DecodeLimits {
        max_packet_size: 11,
        ..limits()
    };
    let exact = DecodeLimits {
        max_packet_size: 12,
        ..limits()
    };
    let bytes = "30 0A 0003'a/b' 00 'abcd'";
    expect_err_with(
        bytes,
        Some(V5),
        true,
        &tight,
        DecodeError::PacketTooLarge,
        disconnect(ReasonCode::PacketTooLarge),
    );
    assert!(dec_with(bytes, Some(V5), &exact).is_ok());
}

#[test]
fn too_large_is_decided_from_the_header_without_the_body() {
    let small = DecodeLimits {
        max_packet_size: 100,
        ..limits()
    };
    // Only the fixed header of a 1000-byte PUBLISH has arrived.
    let mut buf = hex("30 E8 07");
    assert_eq!(
        decode(&mut buf, Some(V311), &small),
        Err(DecodeError::PacketTooLarge)
    );
    // A partial header still waits.
    let mut buf = hex("30 E8");
    assert_eq!(decode(&mut buf, Some(V311), &small), Ok(None));
}

#[test]
fn qos0_publish_without_properties_does_not_copy_the_payload() {
    let mut buf = hex("30 09 0003'a/b' 00 'hey' C0 00");
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, Some(V5), &limits()).unwrap() else {
        panic!("no publish")
    };
    assert_eq!(p.payload.as_ptr() as usize, base + 8);
    assert!(p.properties.user_properties.capacity() == 0);
    assert!(p.properties.subscription_identifiers.capacity() == 0);
    assert_eq!(
        decode(&mut buf, Some(V5), &limits()),
        Ok(Some(Packet::PingReq))
    );
}
