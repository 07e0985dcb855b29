//! One SUBSCRIBE cannot freeze a shard: a packet may carry many filters, each of which may
//! match thousands of retained messages. Another client of the same shard keeps getting its
//! PINGRESP quickly while the retained messages go out, and the subscriber still receives
//! every one of them.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringmq::codec::{Packet, ProtocolVersion, QoS};

use crate::common::{Broker, Client};

const RETAINED: usize = 2_000;

/// What a flood may add to the bystander's slowest PINGRESP.
const ADDED: Duration = Duration::from_millis(50);

fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A SUBSCRIBE (3.1.1, packet id 1) with the given filters at QoS 0.
fn subscribe_packet(filters: &[String]) -> Vec<u8> {
    let mut body = vec![0, 1];
    for f in filters {
        mqtt_str(&mut body, f.as_bytes());
        body.push(0);
    }
    crate::common::frame(0x82, &body)
}

/// The slowest PINGRESP over 2 s, one every 5 ms.
fn slowest_ping(victim: &mut Client) -> Duration {
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        victim.ping();
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    worst
}

/// What the flood did: another client's slowest PINGRESP with no flood and while
/// `filters` were subscribed in one packet, and how many retained messages the subscriber
/// got.
struct Flood {
    quiet: Duration,
    flooded: Duration,
    retained: usize,
}

impl Flood {
    /// The flood added at most `ADDED` to the slowest PINGRESP (the quiet figure absorbs
    /// what a machine shared with other work adds to both).
    fn check(&self, what: &str) {
        eprintln!(
            "{what}: slowest PINGRESP {:?} (without the flood {:?}), {} retained messages",
            self.flooded, self.quiet, self.retained
        );
        assert!(
            self.flooded < self.quiet + ADDED,
            "{what}: PINGRESP took {:?}, {:?} without the flood",
            self.flooded,
            self.quiet
        );
    }
}

fn flood(filters: Vec<String>) -> Flood {
    // Alone: latency is what is measured, and the other tests here load both cores.
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let broker = Broker::start(1);
    let v = ProtocolVersion::V311;
    let (mut p, _) = Client::connect(broker.addr, v, "setter", true);
    for i in 0..RETAINED {
        p.publish(&format!("r/{i}"), b"retained", QoS::AtMostOnce, true);
    }
    p.ping(); // Every retained message is in place.
    let (mut attacker, _) = Client::connect(broker.addr, v, "many-filters", true);
    let (mut victim, _) = Client::connect(broker.addr, v, "bystander", true);
    let mut attack = attacker.writer();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut got = 0usize;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(Some(Packet::Publish(_))) =
                    attacker.recv_within(Duration::from_millis(50))
                {
                    got += 1;
                }
            }
            got
        })
    };
    let quiet = slowest_ping(&mut victim);
    attack
        .write_all(&subscribe_packet(&filters))
        .expect("send SUBSCRIBE");
    let flooded = slowest_ping(&mut victim);
    stop.store(true, Ordering::SeqCst);
    let retained = reader.join().expect("reader");
    broker.stop();
    Flood {
        quiet,
        flooded,
        retained,
    }
}

/// 20,000 times `#` in one packet (80 KB): one subscription, one scan, every retained
/// message once.
#[test]
fn twenty_thousand_times_the_same_filter() {
    let f = flood(vec!["#".to_owned(); 20_000]);
    f.check("20,000 x #");
    assert_eq!(f.retained, RETAINED, "each retained message once");
}

/// 20,000 distinct filters: the first `max_subscribe_filters` (256) are subscribed, the
/// others refused (0x80), and the retained messages of those subscribed go out.
#[test]
fn twenty_thousand_distinct_filters() {
    let f = flood((0..20_000).map(|i| format!("+/{i}")).collect());
    f.check("20,000 distinct filters");
    assert_eq!(
        f.retained, 256,
        "one retained message for each filter the packet may carry"
    );
}

/// A subscription storm (100 clients x 1,000 device filters, none matching the retained
/// store) queues a retained lookup per filter; working through them costs each turn its
/// budget, not the length of the queue: a subscription made right behind the storm gets its
/// retained message within seconds. (Rebuilding the queue every turn, as before, took
/// minutes of a busy shard here.)
#[test]
fn a_subscription_storm_keeps_retained_lookups_linear() {
    let _serial = super::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let broker = Broker::start(1);
    let v = ProtocolVersion::V311;
    let (mut p, _) = Client::connect(broker.addr, v, "storm-setter", true);
    p.publish("storm/last", b"retained", QoS::AtMostOnce, true);
    p.ping();
    let mut clients = Vec::new();
    for c in 0..100 {
        let (client, _) = Client::connect(broker.addr, v, &format!("storm-{c}"), true);
        let mut w = client.writer();
        for chunk in 0..4 {
            let filters: Vec<String> = (0..250)
                .map(|k| format!("storm/{c}/dev{}/+", chunk * 250 + k))
                .collect();
            w.write_all(&subscribe_packet(&filters)).expect("SUBSCRIBE");
        }
        clients.push(client);
    }
    // Every storm SUBSCRIBE was read (and its lookups queued) before the probe's.
    for client in &mut clients {
        client.send(&Packet::PingReq);
        let mut subacks = 0;
        loop {
            match client.recv() {
                Packet::SubAck(_) => subacks += 1,
                Packet::PingResp => break,
                other => panic!("expected SUBACK or PINGRESP, got {other:?}"),
            }
        }
        assert_eq!(subacks, 4);
    }
    let (mut probe, _) = Client::connect(broker.addr, v, "storm-probe", true);
    let started = Instant::now();
    probe.subscribe("storm/last", QoS::AtMostOnce);
    let got = loop {
        match probe.recv_within(Duration::from_secs(30)) {
            Ok(Some(Packet::Publish(p))) => break Some(p),
            Ok(Some(_)) => continue,
            _ => break None,
        }
    };
    let took = started.elapsed();
    eprintln!("retained message behind 100,000 queued lookups after {took:?}");
    let got = got.expect("the retained message");
    assert_eq!(got.topic.as_str(), "storm/last");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(clients);
    broker.stop();
}
