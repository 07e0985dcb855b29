//! The Prometheus view of the broker: every shard's snapshot as metric families with a
//! `shard` label, plus process-wide figures (uptime, the storage writer, the logger),
//! encoded in the Prometheus text format (0.0.4) by `prometheus-client`.
//!
//! Owns: metric names, help texts and labels (README "Metrics" lists them).
//!
//! Must never: run on a shard thread (the endpoint's thread calls it on copies).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use ringmq_storage::WriterStats;

use super::{CloseKind, Histogram, ProcessMemory, ShardSnapshot};

/// `Content-Type` of what `encode` writes.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape encodes: copies, taken when the scrape began.
#[derive(Debug)]
pub struct Scrape {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub shards: Vec<ShardSnapshot>,
    /// The storage writer's counters (`None`: nothing is stored).
    pub writer: Option<WriterStats>,
    pub log_dropped: u64,
    pub log_suppressed: u64,
    /// The process's resident memory (`None`: unknown, left out).
    pub memory: Option<ProcessMemory>,
}

/// The scrape in the Prometheus text format.
pub fn encode(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register(
        "ringmq_build",
        "RingMQ build information",
        Info::new(vec![("version", scrape.version)]),
    );
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing into a `String` cannot fail; an encoder error would only cut the output short.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// A per-shard counter or gauge: its name (without `_total`), help and value.
type PerShard = (&'static str, &'static str, Figure);

const SHARD_COUNTERS: [PerShard; 21] = [
    ("ringmq_sockets_accepted", "TCP connections accepted", |s| {
        s.sockets_accepted
    }),
    (
        "ringmq_connects",
        "CONNECTs accepted (a session attached to the connection)",
        |s| s.connects,
    ),
    (
        "ringmq_handoffs",
        "Connections passed to their client id's home shard after CONNECT",
        |s| s.handoffs,
    ),
    (
        "ringmq_packets_received",
        "MQTT packets received from clients, every type",
        |s| s.packets_received,
    ),
    (
        "ringmq_packets_sent",
        "MQTT packets sent to clients, every type",
        |s| s.packets_sent,
    ),
    (
        "ringmq_publish_received",
        "PUBLISH packets received from clients",
        |s| s.publish_received,
    ),
    (
        "ringmq_publish_bytes_received",
        "Payload bytes of the PUBLISH packets received from clients",
        |s| s.publish_bytes_received,
    ),
    (
        "ringmq_deliveries",
        "Messages handed to a subscriber's session (written, queued or dropped there)",
        |s| s.deliveries,
    ),
    (
        "ringmq_publish_sent",
        "Deliveries not dropped: messages written to subscribers or queued for them",
        ShardSnapshot::publish_sent,
    ),
    (
        "ringmq_publish_bytes_sent",
        "Payload bytes of the messages handed to subscribers' sessions",
        |s| s.publish_bytes_sent,
    ),
    (
        "ringmq_sessions_expired",
        "Sessions removed because their expiry interval passed",
        |s| s.session.expired,
    ),
    (
        "ringmq_bytes_received",
        "Bytes read from client sockets",
        |s| s.bytes_received,
    ),
    (
        "ringmq_bytes_sent",
        "Bytes written to client sockets",
        |s| s.bytes_sent,
    ),
    (
        "ringmq_publishes_refused",
        "Inbound publishes refused without routing ($-topics, invalid UTF-8 payloads)",
        |s| s.session.refused_publishes,
    ),
    (
        "ringmq_receive_maximum_exceeded",
        "Times a client exceeded the Receive Maximum while receive_maximum_log_only held",
        |s| s.session.receive_maximum_exceeded,
    ),
    (
        "ringmq_unknown_acks",
        "Acknowledgements for packet ids not in flight (tolerated)",
        |s| s.session.unknown_acks,
    ),
    (
        "ringmq_retained_refused",
        "Publishes asked to be retained beyond max_retained_messages or max_retained_bytes",
        |s| s.retained_refused,
    ),
    (
        "ringmq_mqttsn_unvalidated_dropped",
        "MQTT-SN datagrams and QoS 0 messages not sent to clients that had not proved their address",
        |s| s.mqttsn_unvalidated_dropped,
    ),
    (
        "ringmq_mqttsn_malformed",
        "MQTT-SN datagrams dropped unread: malformed, or larger than max_message_size",
        |s| s.mqttsn_malformed,
    ),
    (
        "ringmq_storage_ops",
        "Storage operations sent to the writer",
        |s| s.storage_ops,
    ),
    (
        "ringmq_storage_failed_batches",
        "Storage batches whose commit failed",
        |s| s.storage_failed_batches,
    ),
];

const SHARD_GAUGES: [PerShard; 5] = [
    (
        "ringmq_clients_connected",
        "Connections attached to a session",
        |s| s.clients_connected,
    ),
    (
        "ringmq_sessions",
        "Sessions homed on the shard, connected or not",
        |s| s.sessions,
    ),
    (
        "ringmq_sockets",
        "Open client connections, any phase",
        |s| s.sockets,
    ),
    (
        "ringmq_subscriptions",
        "Non-shared subscriptions of the shard's sessions",
        |s| s.subscriptions,
    ),
    (
        "ringmq_storage_pending_batches",
        "Storage batches sent and not yet committed",
        |s| s.storage_pending_batches,
    ),
];

/// Reads one figure of a snapshot.
type Figure = fn(&ShardSnapshot) -> u64;

/// The `reason` label of `ringmq_messages_dropped_total` and its counter.
const DROPS: [(&str, Figure); 6] = [
    ("qos0", |s| s.session.dropped_qos0),
    ("queue_full", |s| s.session.dropped_queue_full),
    ("too_large", |s| s.session.dropped_too_large),
    ("expired", |s| s.session.dropped_expired),
    ("not_authorized", |s| s.session.dropped_not_authorized),
    ("member_gone", |s| s.dropped_member_gone),
];

type Labels = Vec<(&'static str, String)>;

fn shard_label(i: usize) -> Labels {
    vec![("shard", i.to_string())]
}

impl Scrape {
    fn per_shard(
        &self,
        enc: &mut DescriptorEncoder,
        (name, help, value): PerShard,
        kind: MetricType,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, kind)?;
        for (i, s) in self.shards.iter().enumerate() {
            let labels = shard_label(i);
            let fam = m.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value(s)).encode(fam)?,
                _ => ConstGauge::new(value(s) as i64).encode(fam)?,
            }
        }
        Ok(())
    }

    fn labelled_counters(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        series: impl Fn(&ShardSnapshot) -> Vec<(&'static str, u64)>,
        label: &'static str,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (i, s) in self.shards.iter().enumerate() {
            for (value_label, v) in series(s) {
                let mut labels = shard_label(i);
                labels.push((label, value_label.to_owned()));
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn histogram(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        pick: fn(&ShardSnapshot) -> &Histogram,
    ) -> Result<(), std::fmt::Error> {
        let mut m =
            enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (i, s) in self.shards.iter().enumerate() {
            let h = pick(s);
            let labels = shard_label(i);
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_us as f64 / 1e6,
                h.count,
                &h.buckets_seconds(),
                None,
            )?;
        }
        Ok(())
    }

    fn gauge(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        v: u64,
    ) -> Result<(), std::fmt::Error> {
        let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v as i64).encode(m)
    }

    fn counter(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        v: u64,
    ) -> Result<(), std::fmt::Error> {
        let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m)
    }

    fn process(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let total = ShardSnapshot::total(&self.shards);
        let m = enc.encode_descriptor(
            "ringmq_uptime",
            "Seconds since the broker started",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.uptime_secs as i64).encode(m)?;
        Self::gauge(
            enc,
            "ringmq_retained_messages",
            "Retained messages (every shard holds a replica)",
            total.retained,
        )?;
        Self::gauge(
            enc,
            "ringmq_shared_groups",
            "Shared subscription groups",
            total.shared_groups,
        )?;
        Self::counter(
            enc,
            "ringmq_log_lines_dropped",
            "Log lines dropped because the logger's queue was full",
            self.log_dropped,
        )?;
        Self::counter(
            enc,
            "ringmq_log_lines_suppressed",
            "Log lines suppressed by the per-kind rate limit",
            self.log_suppressed,
        )?;
        if let Some(m) = self.memory {
            Self::gauge(
                enc,
                "ringmq_resident_memory_bytes",
                "Resident memory of the process (VmRSS)",
                m.resident,
            )?;
            Self::gauge(
                enc,
                "ringmq_resident_memory_peak_bytes",
                "Highest resident memory of the process (VmHWM)",
                m.peak_resident,
            )?;
        }
        if let Some(w) = &self.writer {
            Self::counter(
                enc,
                "ringmq_storage_transactions",
                "Storage transactions committed (heartbeats included)",
                w.transactions,
            )?;
            Self::counter(
                enc,
                "ringmq_storage_failed_transactions",
                "Storage commit attempts that failed (first tries and retries)",
                w.failed_transactions,
            )?;
            Self::gauge(
                enc,
                "ringmq_storage_queued_ops",
                "Storage operations sent and not yet taken by the writer",
                w.queued_ops,
            )?;
            Self::gauge(
                enc,
                "ringmq_storage_uncommitted_ops",
                "Storage operations taken by the writer and not yet committed",
                w.pending_ops,
            )?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.process(&mut enc)?;
        for c in SHARD_COUNTERS {
            self.per_shard(&mut enc, c, MetricType::Counter)?;
        }
        for g in SHARD_GAUGES {
            self.per_shard(&mut enc, g, MetricType::Gauge)?;
        }
        self.labelled_counters(
            &mut enc,
            "ringmq_messages_dropped",
            "Messages dropped for subscribers, by reason",
            |s| DROPS.iter().map(|(r, f)| (*r, f(s))).collect(),
            "reason",
        )?;
        self.labelled_counters(
            &mut enc,
            "ringmq_connections_closed",
            "Connections closed, by reason",
            |s| {
                CloseKind::ALL
                    .iter()
                    .map(|k| (k.label(), s.closes[k.index()]))
                    .collect()
            },
            "reason",
        )?;
        self.histogram(
            &mut enc,
            "ringmq_delivery_latency",
            "Sampled: from reading a client's PUBLISH to writing it to subscribers, per shard reached",
            |s| &s.delivery_latency,
        )?;
        self.histogram(
            &mut enc,
            "ringmq_storage_commit_latency",
            "From sending a storage batch to the writer to its commit",
            |s| &s.commit_latency,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_parse::{Scrape as Parsed, Value};

    use super::*;

    fn parse(text: &str) -> Parsed {
        Parsed::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
    }

    fn value(p: &Parsed, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        p.samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
                Value::Summary(_) => f64::NAN,
            })
    }

    #[test]
    fn every_family_parses_with_shard_labels() {
        let mut a = ShardSnapshot {
            deliveries: 10,
            clients_connected: 2,
            retained: 3,
            ..ShardSnapshot::default()
        };
        a.session.dropped_too_large = 4;
        a.mqttsn_unvalidated_dropped = 8;
        a.mqttsn_malformed = 9;
        a.publish_bytes_received = 11;
        a.publish_bytes_sent = 12;
        a.session.expired = 13;
        a.closes[CloseKind::KeepAlive.index()] = 5;
        a.delivery_latency.observe(Duration::from_micros(300));
        a.delivery_latency.observe(Duration::from_millis(20));
        let b = ShardSnapshot {
            deliveries: 1,
            ..ShardSnapshot::default()
        };
        let text = encode(Scrape {
            version: "0.1.0",
            uptime_secs: 42,
            shards: vec![a, b],
            writer: Some(WriterStats::default()),
            log_dropped: 0,
            log_suppressed: 7,
            memory: Some(ProcessMemory {
                resident: 100,
                peak_resident: 200,
            }),
        });
        let p = parse(&text);
        let s0 = [("shard", "0")];
        let s1 = [("shard", "1")];
        assert_eq!(value(&p, "ringmq_deliveries_total", &s0), Some(10.0));
        assert_eq!(value(&p, "ringmq_deliveries_total", &s1), Some(1.0));
        assert_eq!(value(&p, "ringmq_publish_sent_total", &s0), Some(6.0));
        assert_eq!(value(&p, "ringmq_clients_connected", &s0), Some(2.0));
        assert_eq!(
            value(&p, "ringmq_mqttsn_unvalidated_dropped_total", &s0),
            Some(8.0)
        );
        assert_eq!(value(&p, "ringmq_mqttsn_malformed_total", &s0), Some(9.0));
        assert_eq!(
            value(&p, "ringmq_publish_bytes_received_total", &s0),
            Some(11.0)
        );
        assert_eq!(
            value(&p, "ringmq_publish_bytes_sent_total", &s0),
            Some(12.0)
        );
        assert_eq!(value(&p, "ringmq_sessions_expired_total", &s0), Some(13.0));
        assert_eq!(value(&p, "ringmq_resident_memory_bytes", &[]), Some(100.0));
        assert_eq!(
            value(&p, "ringmq_resident_memory_peak_bytes", &[]),
            Some(200.0)
        );
        assert_eq!(value(&p, "ringmq_retained_messages", &[]), Some(3.0));
        assert_eq!(value(&p, "ringmq_uptime_seconds", &[]), Some(42.0));
        assert_eq!(
            value(&p, "ringmq_log_lines_suppressed_total", &[]),
            Some(7.0)
        );
        assert_eq!(
            value(
                &p,
                "ringmq_messages_dropped_total",
                &[("shard", "0"), ("reason", "too_large")]
            ),
            Some(4.0)
        );
        assert_eq!(
            value(
                &p,
                "ringmq_connections_closed_total",
                &[("shard", "0"), ("reason", "keep_alive")]
            ),
            Some(5.0)
        );
        assert_eq!(value(&p, "ringmq_delivery_latency_seconds", &s0), Some(2.0));
        assert!(
            text.contains("ringmq_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmq_delivery_latency_seconds_count{shard=\"0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmq_build_info{version=\"0.1.0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringmq_storage_transactions_total 0\n"),
            "{text}"
        );
    }
}
