//! Soak test (ignored by default; minutes long):
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! SOAK_CLIENTS=1000 SOAK_SECS=300 SOAK_RATE=10 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! Runs the `ringmq` binary as a child process on loopback and connects `SOAK_CLIENTS`
//! third-party (`rumqttc`) clients. Client `i` subscribes at QoS 2 to `soak/{i}` and publishes
//! `SOAK_RATE` messages per second to `soak/{i+1}` at QoS `i % 3`, so each subscriber receives
//! one publisher's stream at that publisher's QoS. Every payload carries the publisher and a
//! sequence number. At the end (after a drain), for every QoS 1 and QoS 2 stream, every sequence
//! number sent must have arrived (QoS 2: exactly once); QoS 0 gaps are counted and reported.
//! The broker's RSS is sampled every 5 s; after the warm-up third of the run it must stay flat.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct BrokerProcess(Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn qos_of(i: u64) -> QoS {
    match i % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// What one subscriber saw of its publisher's stream.
#[derive(Default)]
struct Stream {
    received: BTreeSet<u64>,
    duplicates: u64,
}

#[test]
#[ignore = "minutes long; run explicitly (see module docs)"]
fn soak_mixed_qos_no_loss_flat_rss() {
    let clients = env_or("SOAK_CLIENTS", 1000);
    let secs = env_or("SOAK_SECS", 300);
    let rate = env_or("SOAK_RATE", 10);
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--no-pin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringmq");
    let broker = BrokerProcess(child);
    let pid = broker.0.id();
    std::thread::sleep(Duration::from_millis(500));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let streams: Arc<Vec<Mutex<Stream>>> = Arc::new(
        (0..clients)
            .map(|_| Mutex::new(Stream::default()))
            .collect(),
    );
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let publishing = Arc::new(AtomicBool::new(true));

    let mut samples = Vec::new();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let streams = streams.clone();
            let sent = sent.clone();
            let publishing = publishing.clone();
            tasks.push(tokio::spawn(async move {
                let mut opts = MqttOptions::new(format!("soak-{i}"), "127.0.0.1", port);
                opts.set_keep_alive(Duration::from_secs(30));
                opts.set_inflight(64);
                let (client, mut events) = AsyncClient::new(opts, 256);
                client
                    .subscribe(format!("soak/{i}"), QoS::ExactlyOnce)
                    .await
                    .expect("subscribe");
                let publisher_of_mine = (i + clients - 1) % clients;
                let pub_client = client.clone();
                tokio::spawn(async move {
                    // Start publishing after everyone had time to subscribe.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
                    let mut seq = 0u64;
                    while publishing.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let payload = format!("{i}:{seq}");
                        let topic = format!("soak/{}", (i + 1) % clients);
                        if pub_client
                            .publish(topic, qos_of(i), false, payload)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        seq += 1;
                        sent[i as usize].store(seq, Ordering::Relaxed);
                    }
                });
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let text = String::from_utf8_lossy(&p.payload).into_owned();
                            let mut parts = text.split(':');
                            let from: u64 = parts
                                .next()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(u64::MAX);
                            let seq: u64 = parts
                                .next()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(u64::MAX);
                            assert_eq!(
                                from, publisher_of_mine,
                                "message routed to the wrong client"
                            );
                            let mut s = streams[i as usize].lock().await;
                            if !s.received.insert(seq) {
                                s.duplicates += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => panic!("client {i} lost its connection: {e}"),
                    }
                }
            }));
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let rss = rss_kib(pid);
            let total: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
            eprintln!(
                "[{:>4}s] broker RSS {rss} KiB, sent {total}",
                start.elapsed().as_secs()
            );
            samples.push(rss);
        }
        publishing.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await; // drain
        for t in &tasks {
            assert!(
                !t.is_finished(),
                "a client task ended early (connection lost)"
            );
        }
        for t in tasks {
            t.abort();
        }
    });

    let mut lost_qos0 = 0u64;
    let mut checked = 0u64;
    rt.block_on(async {
        for i in 0..clients {
            let publisher = (i + clients - 1) % clients;
            let n = sent[publisher as usize].load(Ordering::Relaxed);
            let s = streams[i as usize].lock().await;
            // The last few sends may still be in rumqttc's queue when publishing stopped; the
            // stream is complete up to the highest sequence number that arrived.
            let top = s.received.iter().next_back().copied().map_or(0, |m| m + 1);
            assert!(
                top + 64 >= n,
                "stream {publisher}->{i}: sent {n}, highest received {top}"
            );
            let missing = top - s.received.len() as u64;
            match qos_of(publisher) {
                QoS::AtMostOnce => lost_qos0 += missing,
                QoS::AtLeastOnce => {
                    assert_eq!(missing, 0, "QoS 1 stream {publisher}->{i} lost messages")
                }
                QoS::ExactlyOnce => {
                    assert_eq!(missing, 0, "QoS 2 stream {publisher}->{i} lost messages");
                    assert_eq!(s.duplicates, 0, "QoS 2 stream {publisher}->{i} duplicated");
                }
            }
            checked += s.received.len() as u64;
        }
    });
    eprintln!(
        "checked {checked} deliveries; QoS 0 lost {lost_qos0}; RSS samples (KiB) {samples:?}"
    );
    let warm = samples.len() / 3;
    let after_warmup = &samples[warm.max(1)..];
    let first = after_warmup.first().copied().unwrap_or(0);
    let peak = after_warmup.iter().copied().max().unwrap_or(0);
    // Flat: within 10% + 8 MiB of the post-warm-up level (allocator and queue jitter).
    assert!(
        peak <= first + first / 10 + 8192,
        "RSS grew after warm-up: {first} -> {peak} KiB"
    );
    drop(broker);
}
