//! A mass disconnect of clients with many subscriptions: every close removes its filters
//! from every shard's routing index at once. This once filled the channels between two
//! shards in both directions and left both spinning for good, deaf to SIGTERM. After it the
//! broker must be idle within seconds, hold no socket of the gone clients, and stop on
//! SIGTERM within a few seconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::frame;
use crate::common::process::BrokerProcess;

/// An MQTT string: two length bytes, then the bytes.
fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT (3.1.1, clean session) and one SUBSCRIBE with `filters` distinct filters of the
/// shape device fleets use (`site/N/devM/sensorK/+`).
fn connect_and_subscribe(client: usize, filters: usize) -> Vec<u8> {
    let mut connect = Vec::new();
    mqtt_str(&mut connect, b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    mqtt_str(&mut connect, format!("mass-{client}").as_bytes());
    let mut subscribe = vec![0, 1];
    for k in 0..filters {
        let f = format!("site/{}/dev{client}/sensor{k}/+", client % 50);
        mqtt_str(&mut subscribe, f.as_bytes());
        subscribe.push(0);
    }
    let mut bytes = frame(0x10, &connect);
    bytes.extend(frame(0x82, &subscribe));
    bytes
}

/// Reads until `n` bytes arrived (CONNACK + SUBACK), bounded.
fn read_exactly(broker: &BrokerProcess, stream: &mut TcpStream, n: usize) {
    let mut got = 0;
    let mut buf = vec![0u8; n];
    while got < n {
        match stream.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "broker closed a connection during setup; its warnings:\n{}",
                warnings(broker)
            ),
            Ok(k) => got += k,
            Err(e) => panic!("reading CONNACK/SUBACK: {e}"),
        }
    }
}

/// The last lines of the broker's log other than connections, for a failure message.
fn warnings(broker: &BrokerProcess) -> String {
    let log = broker.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" connected from "))
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn mass_disconnect(shards: usize, clients: usize, filters: usize) {
    // One at a time: each holds up to 10,000 sockets and the process may open 20,000.
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let shards_arg = shards.to_string();
    let broker = BrokerProcess::start(&["--shards", &shards_arg]);
    let idle_fds = broker.open_fds();
    let mut streams = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut s = TcpStream::connect(broker.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(&connect_and_subscribe(c, filters))
            .expect("send CONNECT and SUBSCRIBE");
        streams.push(s);
    }
    // CONNACK (4 bytes) and SUBACK (2 + 2 + one code per filter).
    for s in &mut streams {
        read_exactly(&broker, s, 4 + 4 + filters);
    }
    // All at once: every close on every shard broadcasts its filters' removal.
    drop(streams);

    let deadline = Instant::now() + Duration::from_secs(15);
    while broker.open_fds() > idle_fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        broker.open_fds(),
        idle_fds,
        "{shards} shards, {clients} x {filters}: sockets of gone clients still open after 15 s"
    );
    // Idle within seconds: nothing left to do once every removal is applied (up to 1.2M
    // interest removals on 4 shards: about 5 s of a debug build's time on a busy 2-core
    // machine, well under 1 s released and quiet; a livelock never ends).
    let mut cpu = f64::MAX;
    for _ in 0..12 {
        cpu = broker.cpu_percent_over(Duration::from_secs(1));
        if cpu < 10.0 {
            break;
        }
    }
    assert!(
        cpu < 10.0,
        "{shards} shards, {clients} x {filters}: broker still busy ({cpu:.0}% of a core)"
    );
    let status = broker.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn two_thousand_clients_with_200_filters_on_2_shards() {
    mass_disconnect(2, 2_000, 200);
}

#[test]
fn two_thousand_clients_with_200_filters_on_4_shards() {
    mass_disconnect(4, 2_000, 200);
}

#[test]
fn ten_thousand_clients_with_40_filters_on_2_shards() {
    mass_disconnect(2, 10_000, 40);
}

#[test]
fn ten_thousand_clients_with_40_filters_on_4_shards() {
    mass_disconnect(4, 10_000, 40);
}
