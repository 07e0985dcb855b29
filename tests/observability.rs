//! What an operator sees: the `$SYS` tree (mosquitto's names, retained, summed over shards,
//! per-shard figures), the Prometheus endpoint (scraped over HTTP and parsed by a
//! third-party parser), and dropped messages counted where both show them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Broker, Client, VERSIONS, connect_packet};
use ringmq::codec::{Packet, ProtocolVersion, QoS};

/// Long enough for a snapshot (1 s) and a `$SYS` interval of 1 s, with slack for a slow
/// machine.
const SETTLE: Duration = Duration::from_secs(10);

fn broker(shards: usize) -> Broker {
    Broker::start_with(shards, |c| {
        c.ops.sys_interval_secs = 1;
        c.ops.metrics = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
}

/// The `$SYS` values a subscriber has seen so far, latest per topic.
#[derive(Default)]
struct SysView(std::collections::HashMap<String, String>);

impl SysView {
    fn get(&self, topic: &str) -> Option<&str> {
        self.0.get(topic).map(String::as_str)
    }

    /// Reads PUBLISH packets until `topic`'s latest payload satisfies `ok`; returns it.
    fn wait(&mut self, c: &mut Client, topic: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait_until(c, topic, |v| v.get(topic).is_some_and(&ok));
        self.0[topic].clone()
    }

    /// Reads PUBLISH packets until `ok` holds for what was seen (`what` names it).
    fn wait_until(&mut self, c: &mut Client, what: &str, ok: impl Fn(&SysView) -> bool) {
        let until = Instant::now() + SETTLE;
        while !ok(self) {
            assert!(
                Instant::now() < until,
                "{what} never held; last values {:?}",
                self.0
            );
            match c.recv_within(Duration::from_millis(500)) {
                Ok(Some(Packet::Publish(p))) => {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    self.0.insert(p.topic.as_str().to_owned(), text);
                }
                Ok(_) => {}
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }
}

/// Reads PUBLISH packets until `topic` carries a payload that `ok` accepts.
fn wait_for_sys(c: &mut Client, topic: &str, ok: impl Fn(&str) -> bool) -> String {
    SysView::default().wait(c, topic, ok)
}

/// mosquitto's `$SYS/broker/...` names that dashboards read (mosquitto 2.0's list).
const MOSQUITTO_NAMES: [&str; 34] = [
    "version",
    "uptime",
    "clients/connected",
    "clients/active",
    "clients/disconnected",
    "clients/inactive",
    "clients/maximum",
    "clients/total",
    "clients/expired",
    "messages/received",
    "messages/sent",
    "messages/dropped",
    "messages/stored",
    "store/messages/count",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "publish/bytes/received",
    "publish/bytes/sent",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
    "retained messages/count",
    "load/messages/received/1min",
    "load/messages/received/5min",
    "load/messages/received/15min",
    "load/messages/sent/1min",
    "load/publish/received/5min",
    "load/publish/sent/15min",
    "load/publish/dropped/1min",
    "load/bytes/received/1min",
    "load/bytes/sent/1min",
    "load/connections/1min",
    "load/sockets/1min",
];

/// RingMQ's per-shard figures under `$SYS/broker/shards/N/`.
const SHARD_NAMES: [&str; 10] = [
    "clients/connected",
    "clients/total",
    "messages/received",
    "messages/sent",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
];

fn sys_tree(version: ProtocolVersion, shards: usize) {
    let b = broker(shards);
    let mut clients = Vec::new();
    for i in 0..shards {
        let id = b.client_id_on("sys-client", i);
        clients.push(Client::connect(b.addr, version, &id, true).0);
    }
    let (mut watcher, _) = Client::connect(b.addr, version, "sys-watcher", true);
    // `#` never matches `$` topics [MQTT-4.7.2-1].
    let (mut everything, _) = Client::connect(b.addr, version, "hash-watcher", true);
    everything.subscribe("#", QoS::AtMostOnce);
    watcher.subscribe("$SYS/#", QoS::AtMostOnce);
    for c in &mut clients {
        c.publish("sys/test", b"x", QoS::AtLeastOnce, false);
    }
    let mut sys = SysView::default();
    let connected = (shards + 2).to_string();
    sys.wait(&mut watcher, "$SYS/broker/clients/connected", |p| {
        p == connected
    });
    sys.wait(&mut watcher, "$SYS/broker/publish/messages/received", |p| {
        p.parse::<usize>().is_ok_and(|n| n >= shards)
    });
    sys.wait(&mut watcher, "$SYS/broker/uptime", |p| {
        p.ends_with(" seconds")
    });
    sys.wait(&mut watcher, "$SYS/broker/subscriptions/count", |p| {
        p == "2"
    });
    // Loads count from the first publication on: publish again after it.
    for c in &mut clients {
        c.publish("sys/test", b"y", QoS::AtLeastOnce, false);
    }
    sys.wait(
        &mut watcher,
        "$SYS/broker/load/publish/received/1min",
        |p| p.parse::<f64>().is_ok_and(|l| l > 0.0),
    );
    sys.wait_until(&mut watcher, "the shards' figures add up", |v| {
        let per_shard: Option<usize> = (0..shards)
            .map(|i| {
                v.get(&format!("$SYS/broker/shards/{i}/clients/connected"))?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        per_shard == Some(shards + 2)
    });
    // PUBLISH payload bytes (as mosquitto counts them): one byte per publish, two per client;
    // sent: the `#` subscriber's copies and the watcher's `$SYS` messages.
    let received = (2 * shards).to_string();
    sys.wait(&mut watcher, "$SYS/broker/publish/bytes/received", |p| {
        p == received
    });
    sys.wait(&mut watcher, "$SYS/broker/publish/bytes/sent", |p| {
        p.parse::<usize>().is_ok_and(|n| n > 2 * shards)
    });
    // `messages/sent` counts every packet type, as mosquitto does: at least the CONNACKs,
    // the two SUBACKs and the PUBACKs on top of the PUBLISH packets.
    let others = (shards + 2) + 2 + 2 * shards;
    sys.wait_until(&mut watcher, "messages/sent counts every packet", |v| {
        let n = |t: &str| v.get(t).and_then(|p| p.parse::<usize>().ok());
        match (
            n("$SYS/broker/messages/sent"),
            n("$SYS/broker/publish/messages/sent"),
        ) {
            (Some(all), Some(publishes)) => all >= publishes + others,
            _ => false,
        }
    });
    // A session with an expiry of 1 s whose client goes away is gone a second later.
    let mut short = connect_packet(ProtocolVersion::V5, "sys-short", true);
    short.properties.session_expiry_interval = Some(1);
    drop(Client::connect_with(b.addr, short));
    sys.wait(&mut watcher, "$SYS/broker/clients/expired", |p| p == "1");
    // The process's resident memory, under mosquitto's heap names.
    let current = sys.wait(&mut watcher, "$SYS/broker/heap/current", |p| {
        p.parse::<u64>().is_ok_and(|n| n > 1 << 20)
    });
    let current: u64 = current.parse().expect("a number");
    sys.wait(&mut watcher, "$SYS/broker/heap/maximum", |p| {
        p.parse::<u64>().is_ok_and(|m| m >= current)
    });
    // By now `$SYS` was published several times; `#` got only the clients' messages.
    loop {
        match everything.recv_within(Duration::from_millis(300)) {
            Ok(Some(Packet::Publish(p))) => assert_eq!(p.topic.as_str(), "sys/test"),
            Ok(None) => break,
            other => panic!("{other:?}"),
        }
    }

    // Retained: a later subscriber gets the current values at once, RETAIN set.
    let (mut late, _) = Client::connect(b.addr, version, "sys-late", true);
    late.subscribe("$SYS/broker/version", QoS::AtMostOnce);
    let p = late.recv_publish();
    assert!(p.retain);
    assert_eq!(
        String::from_utf8_lossy(&p.payload),
        format!("ringmq version {}", env!("CARGO_PKG_VERSION"))
    );

    // Every mosquitto name that dashboards read, and each shard's figures, reach a
    // late `$SYS/#` subscriber.
    let (mut all, _) = Client::connect(b.addr, version, "sys-all", true);
    all.subscribe("$SYS/#", QoS::AtMostOnce);
    let mut names: Vec<String> = MOSQUITTO_NAMES
        .iter()
        .map(|n| format!("$SYS/broker/{n}"))
        .collect();
    for i in 0..shards {
        names.extend(
            SHARD_NAMES
                .iter()
                .map(|n| format!("$SYS/broker/shards/{i}/{n}")),
        );
    }
    SysView::default().wait_until(&mut all, "every name published", |v| {
        names.iter().all(|n| v.get(n).is_some())
    });

    // A client cannot publish into `$SYS`: its message reaches nobody.
    clients[0].publish("$SYS/broker/version", b"forged", QoS::AtMostOnce, false);
    late.expect_nothing();
    b.stop();
}

matrix!(sys_tree);

/// `GET /metrics` over plain HTTP/1.1; the body.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The sum over every sample of `metric` whose labels include `labels`.
fn sum(p: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    p.samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            // The +Inf bucket: the observation count.
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Scrapes until `check` passes on the parsed metrics (snapshots are a second old at most).
fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&prometheus_parse::Scrape) -> bool) {
    let until = Instant::now() + SETTLE;
    loop {
        let body = scrape(addr);
        let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("the exposition parses");
        if check(&parsed) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what} never held; last scrape:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_endpoint_serves_every_shard() {
    let b = broker(2);
    let addr = b.metrics_addr().expect("metrics endpoint");
    // A persistent QoS 1 subscriber: publishes to it are stored (commit latency) and
    // delivered (delivery-latency probes).
    let sub_id = b.client_id_on("prom-sub", 1);
    let (mut sub, _) = Client::connect(b.addr, ProtocolVersion::V311, &sub_id, false);
    sub.subscribe("prom/#", QoS::AtLeastOnce);
    let pub_id = b.client_id_on("prom-pub", 0);
    let (mut publisher, _) = Client::connect(b.addr, ProtocolVersion::V311, &pub_id, true);
    for i in 0..50u32 {
        publisher.publish("prom/x", &i.to_be_bytes(), QoS::AtLeastOnce, false);
        sub.recv_publish();
        std::thread::sleep(Duration::from_millis(15));
    }
    scrape_until(addr, "counters, gauges and histograms", |p| {
        sum(p, "ringmq_publish_received_total", &[]) >= 50.0
            && sum(p, "ringmq_deliveries_total", &[("shard", "1")]) >= 50.0
            && sum(p, "ringmq_clients_connected", &[]) == 2.0
            && sum(p, "ringmq_subscriptions", &[("shard", "1")]) == 1.0
            && sum(p, "ringmq_connects_total", &[]) == 2.0
            && sum(p, "ringmq_delivery_latency_seconds", &[]) >= 1.0
            && sum(p, "ringmq_storage_commit_latency_seconds", &[]) >= 1.0
            && sum(p, "ringmq_bytes_received_total", &[]) > 0.0
            && sum(p, "ringmq_uptime_seconds", &[]) >= 1.0
    });
    sub.disconnect();
    publisher.drop_connection();
    scrape_until(addr, "both closes counted, nobody connected", |p| {
        sum(p, "ringmq_clients_connected", &[]) == 0.0
            && sum(
                p,
                "ringmq_connections_closed_total",
                &[("reason", "disconnect")],
            ) == 1.0
            && sum(
                p,
                "ringmq_connections_closed_total",
                &[("reason", "peer_closed")],
            ) == 1.0
            && sum(p, "ringmq_sessions", &[]) == 1.0
    });
    let body = scrape(addr);
    assert!(body.contains("# TYPE ringmq_delivery_latency_seconds histogram"));
    assert!(body.contains("ringmq_build_info{version="));
    b.stop();
}

/// Publishes asked to be retained beyond `max_retained_messages` are counted whichever way
/// they are refused: v5 QoS 1 answered 0x97, QoS 0 and 3.x delivered without being kept.
#[test]
fn retained_refusals_are_counted_and_sys_takes_no_place() {
    use ringmq::codec::ReasonCode::{QuotaExceeded, Success};
    // The `$SYS` tree is dozens of retained topics and over a kilobyte: the limits bound
    // what clients retain, so it neither takes their places nor is refused.
    let b = Broker::start_with(1, |c| {
        c.limits.max_retained_messages = 2;
        c.limits.max_retained_bytes = 16;
        c.ops.sys_interval_secs = 1;
        c.ops.metrics = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    let addr = b.metrics_addr().expect("metrics endpoint");
    let (mut watcher, _) = Client::connect(b.addr, ProtocolVersion::V311, "sys-first", true);
    watcher.subscribe("$SYS/broker/version", QoS::AtMostOnce);
    wait_for_sys(&mut watcher, "$SYS/broker/version", |_| true);
    let (mut p5, _) = Client::connect(b.addr, ProtocolVersion::V5, "retain-v5", true);
    let mut id = 0;
    let mut retain_v5 = |topic: &str, payload: &[u8]| {
        id += 1;
        let mut p = common::publish(topic, payload, QoS::AtLeastOnce, Some(id));
        p.retain = true;
        p5.send(&Packet::Publish(p));
        match p5.recv() {
            Packet::PubAck(a) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    // Topic and payload: 7 bytes, then 16 (over the 16 bytes with the first), then 7.
    assert_eq!(retain_v5("kept/0", b"v"), Success);
    assert_eq!(retain_v5("kept/1", b"0123456789"), QuotaExceeded);
    assert_eq!(retain_v5("kept/2", b"v"), Success);
    // Two messages kept: a third is refused (QoS 0 and 3.x: delivered, not retained).
    assert_eq!(retain_v5("kept/3", b"v"), QuotaExceeded);
    p5.publish("kept/4", b"v", QoS::AtMostOnce, true);
    let (mut p3, _) = Client::connect(b.addr, ProtocolVersion::V311, "retain-v3", true);
    p3.publish("kept/5", b"v", QoS::AtLeastOnce, true);
    scrape_until(addr, "four refusals counted", |p| {
        sum(p, "ringmq_retained_refused_total", &[]) == 4.0
            && sum(p, "ringmq_retained_messages", &[]) > 2.0
    });
    let (mut reader, _) = Client::connect(b.addr, ProtocolVersion::V311, "reader", true);
    reader.subscribe("kept/#", QoS::AtMostOnce);
    let mut kept =
        [reader.recv_publish(), reader.recv_publish()].map(|p| p.topic.as_str().to_owned());
    kept.sort();
    assert_eq!(kept, ["kept/0", "kept/2"]);
    reader.expect_nothing();
    b.stop();
}

/// A message too large for the subscriber's Maximum Packet Size is dropped [MQTT-3.1.2-25]
/// and the drop shows in `$SYS/broker/messages/dropped` and in Prometheus.
#[test]
fn drops_reach_sys_and_metrics() {
    let b = broker(2);
    let addr = b.metrics_addr().expect("metrics endpoint");
    let mut connect = connect_packet(ProtocolVersion::V5, &b.client_id_on("small", 1), true);
    connect.properties.maximum_packet_size = Some(64);
    let (mut small, _) = Client::connect_with(b.addr, connect);
    small.subscribe("big/#", QoS::AtMostOnce);
    let (mut watcher, _) = Client::connect(b.addr, VERSIONS[0], "drop-watcher", true);
    watcher.subscribe("$SYS/broker/messages/dropped", QoS::AtMostOnce);
    let (mut publisher, _) = Client::connect(b.addr, ProtocolVersion::V5, "drop-pub", true);
    publisher.publish("big/x", &[7u8; 200], QoS::AtMostOnce, false);
    small.expect_nothing();
    wait_for_sys(&mut watcher, "$SYS/broker/messages/dropped", |p| p == "1");
    scrape_until(addr, "the drop counted by reason", |p| {
        sum(
            p,
            "ringmq_messages_dropped_total",
            &[("reason", "too_large")],
        ) == 1.0
    });
    b.stop();
}

/// Each way a message is dropped for an offline persistent subscriber is counted under its
/// reason, the `$SYS` total is their sum, and a publish that matches no subscription is not
/// a drop: QoS 0 while offline (`qos0`), QoS 1 beyond `max_queued_messages` (`queue_full`),
/// QoS 1 whose Message Expiry Interval passed in the queue (`expired`, counted when the
/// client comes back) [MQTT-3.3.2-5].
#[test]
fn drops_are_counted_by_reason_and_no_subscriber_is_not_one() {
    let b = Broker::start_with(2, |c| {
        c.limits.max_queued_messages = 2;
        c.ops.sys_interval_secs = 1;
        c.ops.metrics = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    let addr = b.metrics_addr().expect("metrics endpoint");
    let v5 = ProtocolVersion::V5;
    let persistent = || {
        let mut connect = connect_packet(v5, &b.client_id_on("away", 1), false);
        connect.properties.session_expiry_interval = Some(60);
        connect
    };
    let (mut sub, _) = Client::connect_with(b.addr, persistent());
    sub.subscribe("d/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut watcher, _) = Client::connect(b.addr, v5, "drop-watcher", true);
    watcher.subscribe("$SYS/broker/messages/dropped", QoS::AtMostOnce);
    let (mut publisher, _) = Client::connect(b.addr, v5, &b.client_id_on("drop-pub", 0), true);
    for _ in 0..5 {
        publisher.publish("nobody/listens", b"x", QoS::AtLeastOnce, false);
    }
    publisher.publish("d/qos0", b"x", QoS::AtMostOnce, false);
    let mut expiring = common::publish("d/expiring", b"x", QoS::AtLeastOnce, Some(1000));
    expiring.properties.message_expiry_interval = Some(1);
    publisher.send(&Packet::Publish(expiring));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    publisher.publish("d/kept", b"x", QoS::AtLeastOnce, false);
    publisher.publish("d/over", b"x", QoS::AtLeastOnce, false);
    std::thread::sleep(Duration::from_millis(2_100));
    let (mut sub, ack) = Client::connect_with(b.addr, persistent());
    assert!(ack.session_present);
    assert_eq!(sub.recv_publish().topic.as_str(), "d/kept");
    sub.expect_nothing();
    scrape_until(addr, "each drop under its reason", |p| {
        let dropped = |reason| sum(p, "ringmq_messages_dropped_total", &[("reason", reason)]);
        dropped("qos0") == 1.0
            && dropped("queue_full") == 1.0
            && dropped("expired") == 1.0
            && sum(p, "ringmq_messages_dropped_total", &[]) == 3.0
            && sum(p, "ringmq_publish_received_total", &[]) == 9.0
    });
    wait_for_sys(&mut watcher, "$SYS/broker/messages/dropped", |p| p == "3");
    b.stop();
}

#[test]
fn sys_interval_zero_publishes_nothing() {
    let b = Broker::start_with(1, |c| c.ops.sys_interval_secs = 0);
    let (mut watcher, _) = Client::connect(b.addr, VERSIONS[1], "quiet", true);
    watcher.subscribe("$SYS/#", QoS::AtMostOnce);
    watcher.expect_nothing_for(Duration::from_millis(2_500));
    assert!(b.metrics_addr().is_none());
    b.stop();
}

/// With an ACL, `$SYS` reaches a client only where a rule lets it read: a `$SYS/#`
/// subscription is refused without one (v5 0x87, 3.x 0x80), granted whole with
/// `topic read $SYS/#`, and granted in part with a narrower rule, whose deliveries are then
/// checked one topic at a time; `#` never matches `$SYS` [MQTT-4.7.2-1].
fn sys_topics_follow_the_acl(v: ProtocolVersion, shards: usize) {
    use common::authfiles::AuthFiles;
    use common::connect_credentials;
    use ringmq::codec::ReasonCode;

    let files = AuthFiles::new("sys-acl");
    files.write_acl(
        "topic read public/#\n\
         user admin\n\
         topic read $SYS/#\n\
         user ops\n\
         topic read $SYS/broker/clients/#\n",
    );
    let acl = files.acl();
    let b = Broker::start_with(shards, move |c| {
        c.auth.acl_file = Some(acl);
        c.ops.sys_interval_secs = 1;
    });
    let connect = |id: &str, user: Option<&str>| {
        let (c, ack) = Client::connect_with(b.addr, connect_credentials(v, id, user, None));
        assert_eq!(ack.reason, ReasonCode::Success, "{id}");
        c
    };
    let refused = if v.is_v5() {
        ReasonCode::NotAuthorized
    } else {
        ReasonCode::UnspecifiedError
    };
    let granted = ReasonCode::GrantedQoS0;

    let mut anon = connect("sys-anon", None);
    assert_eq!(anon.subscribe("$SYS/#", QoS::AtMostOnce).reasons, [refused]);
    assert_eq!(anon.subscribe("#", QoS::AtMostOnce).reasons, [granted]);
    let mut admin = connect("sys-admin", Some("admin"));
    assert_eq!(
        admin.subscribe("$SYS/#", QoS::AtMostOnce).reasons,
        [granted]
    );
    let mut ops = connect("sys-ops", Some("ops"));
    assert_eq!(ops.subscribe("$SYS/#", QoS::AtMostOnce).reasons, [granted]);

    // The whole tree for the admin, over at least two publications (uptime changes).
    let mut seen = SysView::default();
    seen.wait(&mut admin, "$SYS/broker/uptime", |_| true);
    seen.wait(&mut admin, "$SYS/broker/version", |_| true);
    let first = seen.get("$SYS/broker/uptime").map(str::to_owned);
    seen.wait_until(&mut admin, "a second publication", |v| {
        v.get("$SYS/broker/uptime") != first.as_deref()
    });
    // Only `clients/...` for ops, though other topics changed meanwhile.
    let mut ops_seen = SysView::default();
    ops_seen.wait(&mut ops, "$SYS/broker/clients/connected", |p| p == "3");
    while let Ok(Some(p)) = ops.recv_within(Duration::from_millis(1_500)) {
        let Packet::Publish(p) = p else {
            panic!("unexpected {p:?}");
        };
        let topic = p.topic.as_str();
        assert!(topic.starts_with("$SYS/broker/clients/"), "ops got {topic}");
    }
    assert!(
        ops_seen
            .0
            .keys()
            .all(|t| t.starts_with("$SYS/broker/clients/")),
        "ops got {:?}",
        ops_seen.0.keys()
    );
    // Nothing at all for the anonymous client.
    anon.expect_nothing();
    b.stop();
}

matrix!(sys_topics_follow_the_acl);
