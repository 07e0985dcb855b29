//! bad-input rows 63-65: packets only the server may send, and DISCONNECT misuse.

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Packet, ProtocolVersion, QoS};

use super::common::{Client, connect_packet, will};
use super::{closes_after_connect, connected, expect_close, unique_id, with_bystander};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Row 63: a client sending CONNACK, SUBACK, UNSUBACK or PINGRESP: close (5.0 0x82 by the
/// table). The row's literal (a 5.0 CONNECT, then a CONNACK with reserved flags `29 02 0001`,
/// then DISCONNECT) also breaks the flag rule [MQTT-2.1.3-1], so 0x81 or 0x82 there.
fn row_63_server_only_packets_from_client(v: ProtocolVersion) {
    with_bystander(v, |broker| {
        let cases: [(&str, &[u8]); 4] = if v.is_v5() {
            [
                ("CONNACK", &[0x20, 0x03, 0x00, 0x00, 0x00]),
                ("SUBACK", &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00]),
                ("UNSUBACK", &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x00]),
                ("PINGRESP", &[0xD0, 0x00]),
            ]
        } else {
            [
                ("CONNACK", &[0x20, 0x02, 0x00, 0x00]),
                ("SUBACK", &[0x90, 0x03, 0x00, 0x01, 0x00]),
                ("UNSUBACK", &[0xB0, 0x02, 0x00, 0x01]),
                ("PINGRESP", &[0xD0, 0x00]),
            ]
        };
        for (case, bytes) in cases {
            closes_after_connect(broker.addr, v, bytes, &[R::ProtocolError], case);
        }
        if v.is_v5() {
            let literal = hex("101000044d5154540502003c03210014000029020001e000");
            let mut c = Client::tcp(broker.addr, v);
            c.send_bytes(&literal);
            let got = c.expect_closed();
            assert!(
                matches!(got.as_slice(), [Packet::ConnAck(a), Packet::Disconnect(d)]
                    if a.reason == R::Success && [0x81, 0x82].contains(&d.reason.code())),
                "row 63 literal: CONNACK 0x00, then DISCONNECT 0x81/0x82, got {got:?}"
            );
        }
    });
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Row 64 (5.0): DISCONNECT with a reason code a client may not send (3.14.2.1 marks 0x87,
/// 0x89, 0x8B and 0x8E "Server" only; 0x01 and 0x05 are no DISCONNECT code at all): 0x82 by
/// the table. It is not a normal disconnection, so the will is published [MQTT-3.1.2-8].
#[test]
fn row_64_disconnect_with_server_only_reason_code() {
    with_bystander(V5, |broker| {
        for code in [0x01, 0x05, 0x87, 0x89, 0x8B, 0x8E] {
            closes_after_connect(
                broker.addr,
                V5,
                &[0xE0, 0x01, code],
                &[R::ProtocolError],
                &format!("{code:#04x}"),
            );
        }
        let mut watcher = connected(broker.addr, V5);
        watcher.subscribe("last/words", QoS::AtMostOnce);
        let mut connect = connect_packet(V5, &unique_id("willing"), true);
        connect.will = Some(will("last/words", b"bye", QoS::AtMostOnce, false));
        let (mut c, _) = Client::connect_with(broker.addr, connect);
        c.send_bytes(&[0xE0, 0x01, 0x8E]);
        expect_close(&mut c, &[R::ProtocolError], "0x8E with a will");
        assert_eq!(
            &watcher.recv_publish().payload[..],
            b"bye",
            "the will is published"
        );
    });
}

/// Row 65 (5.0): a DISCONNECT that sets Session Expiry Interval when CONNECT had 0 (absent) is
/// a Protocol Error [MQTT-3.14.2-2] (`E0 07 00 05 11 00000001`): DISCONNECT 0x82, and the
/// session still ends with the connection (a later CONNECT finds no session).
#[test]
fn row_65_disconnect_raises_session_expiry() {
    with_bystander(V5, |broker| {
        let id = unique_id("expiry");
        let (mut c, _) = Client::connect(broker.addr, V5, &id, false);
        c.subscribe("expiry/t", QoS::AtLeastOnce);
        c.send_bytes(&[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01]);
        expect_close(&mut c, &[R::ProtocolError], "session expiry 0 -> 1");
        let mut resume = connect_packet(V5, &id, false);
        resume.properties.session_expiry_interval = Some(60);
        let (mut c, ack) = Client::connect_with(broker.addr, resume);
        assert_eq!(ack.reason, R::Success);
        assert!(!ack.session_present, "the session ended at the first close");
        c.ping();
    });
}

both_versions!(row_63_server_only_packets_from_client);
