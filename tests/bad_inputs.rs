//! Black-box tests for every row of `docs/bad-inputs.md`: the literal bytes of each input that has
//! crashed, leaked or fooled a real MQTT broker go over a real socket to an in-process broker,
//! and the test checks the exact answer the table (or, where the table leaves it open, the
//! specification) requires, and that a bystander connected before the bad input is unaffected.
//!
//! "Close" (the table's header): 3.x, the connection is closed with no packet; 5.0, DISCONNECT
//! with the reason code then close, or CONNACK with the code when CONNACK has not been sent.
//!
//! Tests are named `row_NN_...`; rows whose answer differs by protocol level run at 3.1.1 and
//! 5.0 (`both_versions!`), rows about 5.0-only features run at 5.0. The sections live in
//! `tests/bad_inputs/` (one file per table section; `auth.rs` holds row 19, row 23 with a
//! password file, ways around authentication and password files the broker must refuse).
//! Rows not tested here: 54 (commit before ack: `tests/persistence/`), 60 (SUBSCRIBE
//! fuzzing: the fuzz targets own it).

mod common;

/// Expands to a module per test body `fn(ProtocolVersion)` with one `#[test]` per level.
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use ringmq::codec::ProtocolVersion;
                #[test]
                fn v311() { super::$name(ProtocolVersion::V311) }
                #[test]
                fn v5() { super::$name(ProtocolVersion::V5) }
            }
        )*
    };
}

#[path = "bad_inputs/auth.rs"]
mod auth;
#[path = "bad_inputs/connect.rs"]
mod connect;
#[path = "bad_inputs/connect_props.rs"]
mod connect_props;
#[path = "bad_inputs/framing.rs"]
mod framing;
#[path = "bad_inputs/publish.rs"]
mod publish;
#[path = "bad_inputs/qos.rs"]
mod qos;
#[path = "bad_inputs/server_only.rs"]
mod server_only;
#[path = "bad_inputs/subscribe.rs"]
mod subscribe;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use common::{Broker, Client, WAIT, frame, vbi};
use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use ringmq::config::Config;

/// Shard count for every broker here: two, so that the bystander and the client sending the
/// bad input usually live on different shards (and cross-shard delivery is exercised).
const SHARDS: usize = 2;

// ---------------------------------------------------------------------------------------------
// Memory measurements
// ---------------------------------------------------------------------------------------------

/// The broker runs in this process, so the memory tests (rows 2 and 25) read this process's
/// RSS. They hold the write side so that no other test of this binary allocates meanwhile;
/// every other test holds the read side for its whole run.
static RSS_LOCK: RwLock<()> = RwLock::new(());

fn shared_rss_guard() -> RwLockReadGuard<'static, ()> {
    RSS_LOCK.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive_rss_guard() -> RwLockWriteGuard<'static, ()> {
    RSS_LOCK.write().unwrap_or_else(PoisonError::into_inner)
}

/// This process's resident set size in KiB (`VmRSS` in /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

// ---------------------------------------------------------------------------------------------
// The bystander
// ---------------------------------------------------------------------------------------------

/// Starts a broker (limits adjusted by `adjust`), connects a bystander at level `v` that
/// subscribes to `bystander/t`, runs `body`, then checks the bystander still answers PINGREQ
/// and still receives a publish from a client connected after the bad input.
fn with_bystander_config(
    v: ProtocolVersion,
    adjust: impl FnOnce(&mut Config),
    body: impl FnOnce(&Broker),
) {
    let _guard = shared_rss_guard();
    let broker = Broker::start_with(SHARDS, adjust);
    let mut bystander = connect_bystander(&broker, v);
    body(&broker);
    check_bystander(&broker, &mut bystander, v);
}

fn with_bystander(v: ProtocolVersion, body: impl FnOnce(&Broker)) {
    with_bystander_config(v, |_| {}, body);
}

fn connect_bystander(broker: &Broker, v: ProtocolVersion) -> Client {
    let id = broker.client_id_on("bystander", 1);
    let (mut bystander, _) = Client::connect(broker.addr, v, &id, true);
    bystander.subscribe("bystander/t", QoS::AtLeastOnce);
    bystander
}

fn check_bystander(broker: &Broker, bystander: &mut Client, v: ProtocolVersion) {
    bystander.ping();
    let id = broker.client_id_on("after-bad-input", 0);
    let (mut publisher, _) = Client::connect(broker.addr, v, &id, true);
    publisher.publish("bystander/t", b"still here", QoS::AtLeastOnce, false);
    let got = bystander.recv_publish();
    assert_eq!(
        &got.payload[..],
        b"still here",
        "bystander still receives publishes"
    );
    bystander.ping();
}

// ---------------------------------------------------------------------------------------------
// Literal packets
// ---------------------------------------------------------------------------------------------

/// A two-byte length prefix and the bytes (a UTF-8 string or binary data field).
fn lp(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("field under 64 KiB");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A property block: its length and the properties, 5.0 only; 3.x has none (must be empty).
fn props(v: ProtocolVersion, properties: &[u8]) -> Vec<u8> {
    if v.is_v5() {
        cat(&[&vbi(properties.len()), properties])
    } else {
        assert!(properties.is_empty(), "3.x packets carry no properties");
        Vec::new()
    }
}

/// A CONNECT with protocol name `MQTT`, the level of `v`, keep alive 60, the given flags,
/// 5.0 properties and payload (client id first, then will, username, password as flagged).
fn connect_raw(v: ProtocolVersion, flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let body = cat(&[
        &lp(b"MQTT"),
        &[v.level(), flags, 0x00, 0x3C],
        &props(v, properties),
        payload,
    ]);
    frame(0x10, &body)
}

/// A PUBLISH with the given first byte (QoS, DUP and RETAIN bits), topic, packet id (written
/// only when given) and 5.0 properties.
fn publish_raw(
    v: ProtocolVersion,
    first: u8,
    topic: &[u8],
    id: Option<u16>,
    properties: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let id = id.map(|i| i.to_be_bytes().to_vec()).unwrap_or_default();
    frame(
        first,
        &cat(&[&lp(topic), &id, &props(v, properties), payload]),
    )
}

/// A SUBSCRIBE (first byte 0x82) with packet id 0x1234, 5.0 properties and (filter, options).
fn subscribe_raw(v: ProtocolVersion, properties: &[u8], entries: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = cat(&[&[0x12, 0x34], &props(v, properties)]);
    for (filter, options) in entries {
        body.extend(lp(filter));
        body.push(*options);
    }
    frame(0x82, &body)
}

/// A client id no other connection of this test binary uses (so connections never take each
/// other over by accident).
fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A connected client with a fresh id and a clean session.
fn connected(addr: SocketAddr, v: ProtocolVersion) -> Client {
    Client::connect(addr, v, &unique_id("victim"), true).0
}

// ---------------------------------------------------------------------------------------------
// Expected answers
// ---------------------------------------------------------------------------------------------

fn codes_text(codes: &[ReasonCode]) -> String {
    let names: Vec<String> = codes
        .iter()
        .map(|c| format!("{:#04x} {}", c.code(), c.name()))
        .collect();
    names.join(" or ")
}

/// "Close" after CONNACK: 5.0 gets one DISCONNECT with one of `codes`, then the connection
/// closes; 3.x is closed with no packet.
fn expect_close(c: &mut Client, codes: &[ReasonCode], case: &str) {
    let got = c.expect_closed();
    if c.version.is_v5() {
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if codes.iter().any(|r| r.code() == d.reason.code())),
            "{case}: expected DISCONNECT {} then close, got {got:?}",
            codes_text(codes)
        );
    } else {
        assert!(
            got.is_empty(),
            "{case}: 3.x is closed without a packet, got {got:?}"
        );
    }
}

/// "Close" before CONNACK: 5.0 gets CONNACK with one of `codes`, then the connection closes;
/// 3.x is closed with no packet.
fn expect_refused(c: &mut Client, codes: &[ReasonCode], case: &str) {
    let got = c.expect_closed();
    if c.version.is_v5() {
        assert!(
            matches!(got.as_slice(), [Packet::ConnAck(a)] if codes.iter().any(|r| r.code() == a.reason.code())),
            "{case}: expected CONNACK {} then close, got {got:?}",
            codes_text(codes)
        );
    } else {
        assert!(
            got.is_empty(),
            "{case}: 3.x is closed without a packet, got {got:?}"
        );
    }
}

/// A CONNECT refused for its declared size (over `max_connect_size` or `max_packet_size`):
/// the broker may decide on the remaining length alone, before the protocol level is read
/// and without reading the body, so a plain close is as right as 5.0 CONNACK 0x95 (3.1.4:
/// the CONNACK before closing is optional). 3.x: close without a packet.
fn expect_refused_for_size(c: &mut Client, case: &str) {
    let got = c.expect_closed();
    let too_large =
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason == ReasonCode::PacketTooLarge);
    assert!(
        got.is_empty() || (c.version.is_v5() && too_large),
        "{case}: close (5.0: optionally after CONNACK 0x95), got {got:?}"
    );
}

/// Sends `bytes` on a fresh connected client and expects "Close" with one of `codes`.
fn closes_after_connect(
    addr: SocketAddr,
    v: ProtocolVersion,
    bytes: &[u8],
    codes: &[ReasonCode],
    case: &str,
) {
    let mut c = connected(addr, v);
    c.send_bytes(bytes);
    expect_close(&mut c, codes, case);
}

/// Sends `bytes` (a CONNECT) on a fresh TCP connection and expects the refusal "Close" with
/// one of `codes` before CONNACK.
fn refused_at_connect(
    addr: SocketAddr,
    v: ProtocolVersion,
    bytes: &[u8],
    codes: &[ReasonCode],
    case: &str,
) {
    let mut c = Client::tcp(addr, v);
    c.send_bytes(bytes);
    expect_refused(&mut c, codes, case);
}

/// Reads a raw socket until the broker closes it; returns what arrived, or `None` when it
/// stayed open for `WAIT`.
fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        stream
            .set_read_timeout(Some(deadline - now))
            .expect("read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Some(got);
            }
            Err(e) => panic!("read error: {e}"),
        }
    }
}
