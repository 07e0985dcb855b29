//! A reason code must reach the client: after a DISCONNECT (v5) or an error CONNACK the
//! broker half-closes, keeps writing what it owes, and reads and discards what the client
//! still sends until the client closes (or about 2 s pass). Closing a socket with unread input
//! makes the kernel send a reset, which destroys the reason code in flight and fails a client
//! that is still writing (EPIPE); the kernel counts such closes as `TCPAbortOnClose`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use ringmq::codec::{self, Packet, ProtocolVersion, ReasonCode};

use crate::common::{Broker, connect_packet};

/// `TCPAbortOnClose` of this network namespace (closes with unread data that sent a reset).
fn aborts_on_close() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if let Some(i) = names.iter().position(|n| *n == "TCPAbortOnClose") {
            return values[i].parse().expect("counter");
        }
    }
    panic!("no TCPAbortOnClose in /proc/net/netstat");
}

/// Sends CONNECT, a malformed packet and 0.5 MB more in one go, then reads: the DISCONNECT
/// with its reason code arrives, the broker closes without a reset.
fn bad_packet_then_half_a_megabyte(v: ProtocolVersion) -> Vec<Packet> {
    let broker = Broker::start(1);
    let mut s = TcpStream::connect(broker.addr).expect("connect");
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(connect_packet(v, "bad-then-more", true))),
        v,
        &mut out,
    );
    // PUBLISH with QoS 3: malformed [MQTT-3.3.1-4].
    out.extend_from_slice(&[0x36, 0x07, 0x00, 0x01, b't', 0x00, 0x01, b'x', b'y']);
    out.extend_from_slice(&vec![0x30; 512 * 1024]);
    // Written from another thread: the broker stops reading what it no longer acts on, and
    // this test must read while those bytes are still going out.
    let mut writer = s.try_clone().expect("clone");
    let sent = std::thread::spawn(move || writer.write_all(&out));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = BytesMut::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{v:?}: reading the broker's answer failed: {e}"),
        }
    }
    assert!(
        sent.join().expect("writer").is_ok(),
        "{v:?}: the client could write everything (no EPIPE)"
    );
    let limits = codec::DecodeLimits {
        role: codec::Role::Client,
        ..codec::DecodeLimits::default()
    };
    let mut packets = Vec::new();
    while let Ok(Some(p)) = codec::decode(&mut got, Some(v), &limits) {
        packets.push(p);
    }
    broker.stop();
    packets
}

#[test]
fn a_reason_code_reaches_a_client_that_keeps_writing() {
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // The counter is system-wide: another process closing a socket with unread input in
    // the same moment counts too. A broker that resets counts every time, so a clean
    // attempt out of three is required.
    let mut grew = Vec::new();
    for _ in 0..3 {
        let before = aborts_on_close();
        let packets = bad_packet_then_half_a_megabyte(ProtocolVersion::V5);
        assert!(
            matches!(packets.first(), Some(Packet::ConnAck(_))),
            "{packets:?}"
        );
        assert!(
            matches!(packets.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::MalformedPacket),
            "v5: DISCONNECT 0x81 arrives, got {packets:?}"
        );
        let packets = bad_packet_then_half_a_megabyte(ProtocolVersion::V311);
        assert!(
            matches!(packets.as_slice(), [Packet::ConnAck(_)]),
            "{packets:?}"
        );
        let after = aborts_on_close();
        if after == before {
            return;
        }
        grew.push(after - before);
    }
    panic!("the broker closed with unread input: TCPAbortOnClose grew by {grew:?}");
}
