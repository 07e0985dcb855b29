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

/// A PINGRESP slower than this means the shard stopped serving others (a debug build on a
/// busy 2-core machine answers within tens of milliseconds; before the per-turn budget the
/// bystander waited for the whole retained scan).
const FROZEN: Duration = Duration::from_millis(250);

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
    let mut out = vec![0x82];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// Returns the slowest PINGRESP another client of the shard saw while `filters` were
/// subscribed in one packet, and how many retained messages the subscriber got.
fn flood(filters: Vec<String>) -> (Duration, usize) {
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
    victim.ping();
    attack
        .write_all(&subscribe_packet(&filters))
        .expect("send SUBSCRIBE");
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        victim.ping();
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    let got = reader.join().expect("reader");
    broker.stop();
    (worst, got)
}

/// 20,000 times `#` in one packet (80 KB): one subscription, one scan, every retained
/// message once.
#[test]
fn twenty_thousand_times_the_same_filter() {
    let (worst, got) = flood(vec!["#".to_owned(); 20_000]);
    eprintln!("20,000 x #: slowest PINGRESP {worst:?}, {got} retained messages");
    assert!(worst < FROZEN, "PINGRESP took {worst:?}");
    assert_eq!(got, RETAINED, "each retained message once");
}

/// 20,000 distinct filters: the first `max_subscribe_filters` (256) are subscribed, the
/// others refused (0x80), and the retained messages of those subscribed go out.
#[test]
fn twenty_thousand_distinct_filters() {
    let (worst, got) = flood((0..20_000).map(|i| format!("+/{i}")).collect());
    eprintln!("20,000 distinct filters: slowest PINGRESP {worst:?}, {got} retained messages");
    assert!(worst < FROZEN, "PINGRESP took {worst:?}");
    assert_eq!(
        got, 256,
        "one retained message for each filter the packet may carry"
    );
}
