//! The broker's log as an operator reads it (the `ringmq` process's stderr): one line per
//! closed connection naming the client and the reason, on every close path; a flood of bad
//! clients cut to the per-kind rate limit while the broker keeps serving; `--log-format
//! json` and `--log-level`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::BrokerProcess;
use common::{Client, connect_packet};
use ringmq::codec::{Packet, ProtocolVersion, QoS};

/// Waits until the broker's log has a close line for `client` and returns it; fails if it
/// has more than one.
fn close_line(broker: &BrokerProcess, client: &str) -> String {
    let needle = format!("client {client} at ");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = broker.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("connection closed"))
            .collect();
        assert!(lines.len() <= 1, "more than one close line:\n{log}");
        if let Some(line) = lines.first() {
            return (*line).to_owned();
        }
        assert!(Instant::now() < until, "no close line for {client}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(text: &str) -> (tempfile::NamedTempFile, String) {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write config");
    let path = f.path().to_str().expect("utf-8").to_owned();
    (f, path)
}

#[test]
fn every_close_path_logs_one_line_with_its_reason() {
    let (_file, path) = config(
        "[limits]\nconnect_timeout_secs = 1\nslow_consumer_timeout_secs = 1\n\
         max_output_buffer = 65536\n",
    );
    let mut broker = BrokerProcess::start(&["--shards", "2", "--config", &path]);
    let addr = broker.addr;
    let v5 = ProtocolVersion::V5;

    let (_stay, _) = Client::connect(addr, v5, "c-stay", true);
    Client::connect(addr, v5, "c-disconnect", true)
        .0
        .disconnect();
    Client::connect(addr, v5, "c-dropped", true)
        .0
        .drop_connection();
    let (mut c, _) = Client::connect(addr, v5, "c-protocol", true);
    c.send_bytes(&[0x00, 0x00]); // Packet type 0 is reserved: malformed.
    let (_keep_alive, _) = Client::connect_keep_alive(addr, v5, "c-keepalive", true, 1);
    let (_old, _) = Client::connect(addr, v5, "c-takeover", true);
    let (_new, _) = Client::connect(addr, v5, "c-takeover", true);
    let (mut refused, _) = Client::connect_with(addr, {
        let mut p = connect_packet(v5, "c-refused", true);
        p.keep_alive = 0;
        p.client_id = common::s(&"x".repeat(300)); // Over max_client_id_len.
        p
    });
    let _ = refused.expect_closed();
    let _silent = TcpStream::connect(addr).expect("connect");
    let mut reset_client = Client::tcp(addr, v5);
    reset_client.send(&Packet::Connect(Box::new(connect_packet(
        v5, "c-reset", true,
    ))));
    let _ = reset_client.recv();
    abort(reset_client);
    let _slow = slow_consumer(addr);

    let expect = [
        (
            "c-disconnect",
            "INFO",
            "DISCONNECT from the client (Normal disconnection)",
        ),
        ("c-dropped", "INFO", "closed by the peer without DISCONNECT"),
        ("c-protocol", "WARN", "protocol error"),
        ("c-keepalive", "INFO", "keep alive timeout"),
        ("c-takeover", "INFO", "taken over by a new connection"),
        ("c-reset", "INFO", "socket error"),
        ("c-slow", "WARN", "slow consumer"),
    ];
    for (client, level, reason) in expect {
        let line = close_line(&broker, client);
        assert!(
            line.contains(level) && line.contains(reason),
            "{client}: {line}"
        );
    }
    let log = broker.log();
    assert!(
        log.lines().any(|l| l.contains("client - at ")
            && l.contains("CONNECT of client id \"xxxx")
            && l.contains("refused (Client Identifier not valid)")),
        "{log}"
    );
    let timeout = Instant::now() + Duration::from_secs(10);
    while !broker
        .log()
        .contains("connection closed: no CONNECT in time")
    {
        assert!(Instant::now() < timeout, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let line = close_line(&broker, "c-stay");
    assert!(line.contains("the broker is stopping"), "{line}");
}

/// Closes with RST (SO_LINGER 0): the broker's next read fails with ECONNRESET.
fn abort(c: Client) {
    let stream = c.writer();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(stream);
    drop(c);
}

/// A subscriber that never reads while a publisher floods it with QoS 0: its output stays
/// over `max_output_buffer` (64 KiB here) and it is disconnected after 1 s.
fn slow_consumer(addr: SocketAddr) -> Client {
    let v = ProtocolVersion::V311;
    let (mut slow, _) = Client::connect(addr, v, "c-slow", true);
    slow.subscribe("flood/#", QoS::AtMostOnce);
    let (mut publisher, _) = Client::connect(addr, v, "c-flooder", true);
    let payload = vec![0u8; 16 * 1024];
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for _ in 0..64 {
            publisher.publish("flood/x", &payload, QoS::AtMostOnce, false);
        }
        publisher.ping();
    }
    slow
}

/// Bad CONNECTs from many connections at once: the log stays within the rate limit (20
/// lines per second for the kind, plus one summary line per second) and the broker
/// answers a well-behaved client meanwhile.
#[test]
fn a_flood_of_bad_connects_is_rate_limited_and_the_broker_keeps_serving() {
    let broker = BrokerProcess::start(&["--shards", "2"]);
    let addr = broker.addr;
    let started = Instant::now();
    let mut flooded = 0;
    let (mut probe, _) = Client::connect(addr, ProtocolVersion::V311, "flood-probe", true);
    while started.elapsed() < Duration::from_secs(3) {
        for _ in 0..100 {
            // CONNECT with protocol level 9: refused as a protocol error on every connection.
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(&[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 0]);
                flooded += 1;
            }
        }
        probe.ping();
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(2_500)); // Closes and the summary lines.
    probe.ping();
    let (mut after, _) = Client::connect(addr, ProtocolVersion::V5, "after-flood", true);
    after.ping();
    let log = broker.log();
    let closes = log
        .lines()
        .filter(|l| l.contains("connection closed: protocol error"))
        .count();
    let seconds = elapsed.as_secs() + 4; // Seconds the flood's closes may span, generously.
    assert!(flooded > 1_000, "only {flooded} connections");
    assert!(
        closes as u64 <= 20 * seconds,
        "{closes} close lines in {elapsed:?} for {flooded} connections"
    );
    assert!(closes >= 20, "the first lines are written: {closes}");
    assert!(
        log.contains("suppressed (limit 20 per second)"),
        "a summary line says how many were suppressed:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(log.lines().count() < 400, "{} lines", log.lines().count());
    eprintln!("{flooded} bad CONNECTs in {elapsed:?}: {closes} close lines");
}

#[test]
fn json_lines() {
    let broker = BrokerProcess::start(&["--log-format", "json"]);
    let (c, _) = Client::connect(broker.addr, ProtocolVersion::V5, "json-client", true);
    c.disconnect();
    let (mut bad, _) = Client::connect(broker.addr, ProtocolVersion::V5, "json-bad", true);
    bad.send_bytes(&[0x00, 0x00]);
    let _ = bad.expect_closed();
    let line = close_line(&broker, "json-bad");
    assert!(
        line.starts_with("{\"ts\":\"") && line.ends_with('}'),
        "one JSON object: {line}"
    );
    assert!(
        line.contains("\"level\":\"warn\"") && line.contains("\"shard\":"),
        "{line}"
    );
    close_line(&broker, "json-client");
    for l in broker.log().lines() {
        assert!(l.starts_with('{') && l.ends_with('}'), "not JSON: {l}");
    }
}

/// `--log-level warn` keeps WARN and ERROR lines only (so the "listening on" line the
/// harness waits for is not there: this test finds its own port).
#[test]
fn the_level_filter() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--in-memory", "--no-pin", "--log-level", "warn", "--listen"])
        .arg(addr.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ringmq starts");
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (c, _) = Client::connect(addr, ProtocolVersion::V5, "quiet-client", true);
    c.disconnect();
    let (mut bad, _) = Client::connect(addr, ProtocolVersion::V5, "loud-client", true);
    bad.send_bytes(&[0x00, 0x00]);
    let _ = bad.expect_closed();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain syscall with integer arguments on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    assert!(
        log.contains("WARN  shard") && log.contains("loud-client"),
        "{log}"
    );
    assert!(!log.contains("INFO"), "{log}");
}
