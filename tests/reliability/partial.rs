//! Incomplete packets: the broker holds at most `max_partial_input_bytes` of packets whose
//! last bytes have not arrived, and no packet may take longer than
//! `incomplete_packet_timeout_secs` from its first byte to its last (before these limits,
//! 100 connections each sending a 1 MB PUBLISH short of 10 bytes held 101 MB for ever with
//! 3.x keep alive 0).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringmq::codec::{self, Packet, ProtocolVersion};

use crate::common::process::{BrokerProcess, DataDir};
use crate::common::{Client, partial_publish};

fn broker_with(dir: &DataDir, settings: &str) -> BrokerProcess {
    let config = format!("{}/ringmq.toml", dir.path());
    std::fs::write(&config, format!("[limits]\n{settings}\n")).expect("config");
    BrokerProcess::start_in(dir, &["--shards", "1", "--config", &config])
}

/// Whether the broker closed `stream` (EOF or reset) within `limit`; the bytes it sent
/// before.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(got),
        }
    }
    None
}

fn connected(broker: &BrokerProcess, v: ProtocolVersion, id: &str) -> TcpStream {
    let (client, _) = Client::connect_keep_alive(broker.addr, v, id, true, 0);
    client.writer()
}

/// 30 connections each send 900 KB of a 1 MB PUBLISH with an 8 MB budget: about 8 of them
/// are held, the others are closed (v5: DISCONNECT 0x97 first), and the broker's memory
/// stays near the budget instead of 27 MB; a client with complete packets is unaffected.
#[test]
fn incomplete_packets_are_held_within_the_budget() {
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = DataDir::new("partial-budget");
    let broker = broker_with(&dir, "max_partial_input_bytes = 8000000");
    let before = broker.rss_kib();
    let packet = partial_publish(1_000_000);
    let mut conns: Vec<TcpStream> = (0..30)
        .map(|i| {
            let mut s = connected(&broker, ProtocolVersion::V5, &format!("part-{i}"));
            let _ = s.write_all(&packet[..900_000]);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let grown_kib = broker.rss_kib().saturating_sub(before);
    let mut closed = 0;
    for s in &mut conns {
        if let Some(bytes) = closed_within(s, Duration::from_millis(50)) {
            closed += 1;
            // DISCONNECT 0x97: e0 02 97 00 (reason code, empty properties) or e0 01 97.
            assert!(
                bytes.starts_with(&[0xe0, 0x02, 0x97]) || bytes.starts_with(&[0xe0, 0x01, 0x97]),
                "a v5 client is told Quota exceeded: {bytes:02x?}"
            );
        }
    }
    assert!(
        (16..=26).contains(&closed),
        "about 8 of 30 fit in 8 MB (charged by buffer capacity): {closed} closed"
    );
    assert!(
        grown_kib < 20 * 1024,
        "held at most about the budget: RSS grew {grown_kib} KiB"
    );
    // Everyone else is served.
    let (mut other, _) = Client::connect(broker.addr, ProtocolVersion::V311, "other", true);
    other.ping();
    assert!(
        broker.log().contains("max_partial_input_bytes"),
        "the refusal is logged"
    );
}

/// A packet that stays incomplete for `incomplete_packet_timeout_secs` ends its connection
/// (v5: DISCONNECT 0x8D), even with keep alive 0; a slow packet that completes in time is
/// accepted.
#[test]
fn an_incomplete_packet_times_out() {
    let dir = DataDir::new("partial-timeout");
    let broker = broker_with(&dir, "incomplete_packet_timeout_secs = 2");
    let packet = partial_publish(1000);
    let mut v5 = connected(&broker, ProtocolVersion::V5, "stalled-5");
    let mut v311 = connected(&broker, ProtocolVersion::V311, "stalled-3");
    v5.write_all(&packet[..500]).expect("write");
    v311.write_all(&packet[..500]).expect("write");
    // A slow but complete packet: half now, the rest after a second.
    let mut slow = connected(&broker, ProtocolVersion::V311, "slow");
    let ping = {
        let mut out = bytes::BytesMut::new();
        codec::encode(&Packet::PingReq, ProtocolVersion::V311, &mut out);
        out.to_vec()
    };
    let whole = [partial_publish(20).as_slice(), &[b'y'; 10], &ping].concat();
    slow.write_all(&whole[..10]).expect("write");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    slow.write_all(&whole[10..]).expect("write");
    let bytes = closed_within(&mut v5, Duration::from_secs(5)).expect("v5 closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "closed after about 2 s: {took:?}"
    );
    assert!(
        bytes.starts_with(&[0xe0, 0x02, 0x8d]) || bytes.starts_with(&[0xe0, 0x01, 0x8d]),
        "v5 DISCONNECT 0x8D: {bytes:02x?}"
    );
    assert_eq!(
        closed_within(&mut v311, Duration::from_secs(2)),
        Some(Vec::new()),
        "3.x: closed without a packet"
    );
    // The slow client completed its packet in time and got its PINGRESP; it stays.
    let mut resp = [0u8; 2];
    slow.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    slow.read_exact(&mut resp).expect("PINGRESP");
    assert_eq!(resp, [0xd0, 0x00]);
    assert_eq!(closed_within(&mut slow, Duration::from_millis(1500)), None);
}
