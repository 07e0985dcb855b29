//! The `$SYS` tree: mosquitto 2.0's topic names and payload formats (so that existing
//! dashboards work), computed from the shards' snapshots, plus RingMQ's per-shard figures
//! under `$SYS/broker/shards/N/`.
//!
//! Owns: the topic list, the load averages (mosquitto's: per-minute rates smoothed over 1,
//! 5 and 15 minutes, updated at every publication), the highest number of connected clients
//! seen, and which topics changed since they were last published (only those are
//! published again, as mosquitto does).
//!
//! Must never: read the clock (time is an argument) or touch the runtime: the shard that
//! publishes the tree routes what `SysTree::update` returns, and reads the process's memory
//! for it.

use std::collections::HashMap;

use super::{ProcessMemory, ShardSnapshot};

/// The load averages mosquitto publishes: `$SYS/broker/load/<name>/{1min,5min,15min}`.
const LOADS: [&str; 9] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
    "sockets",
];

/// Smoothing windows of the load averages, in minutes.
const LOAD_MINUTES: [u32; 3] = [1, 5, 15];

/// The counter behind each entry of `LOADS`, from the totals.
fn load_source(t: &ShardSnapshot, i: usize) -> u64 {
    match i {
        0 => t.packets_received,
        1 => t.packets_sent,
        2 => t.publish_received,
        3 => t.publish_sent(),
        4 => t.dropped(),
        5 => t.bytes_received,
        6 => t.bytes_sent,
        7 => t.connects,
        _ => t.sockets_accepted,
    }
}

/// State kept between two publications of the tree.
#[derive(Debug)]
pub struct SysTree {
    version: String,
    /// What each topic carried when last published.
    published: HashMap<String, String>,
    max_connected: u64,
    /// Load averages, `[LOADS][LOAD_MINUTES]`, in events per minute.
    loads: [[f64; 3]; LOADS.len()],
    /// The counters behind the loads at the last update, and when it was (broker ms).
    last: Option<(u64, [u64; LOADS.len()])>,
}

impl SysTree {
    /// `version` is what `$SYS/broker/version` says (e.g. `ringmq version 0.1.0`).
    pub fn new(version: String) -> SysTree {
        SysTree {
            version,
            published: HashMap::new(),
            max_connected: 0,
            loads: [[0.0; 3]; LOADS.len()],
            last: None,
        }
    }

    /// The tree at broker-clock `now_ms` (milliseconds since the broker started) from every
    /// shard's latest snapshot and the process's memory (`heap/*`, left out when unknown):
    /// the `(topic, payload)` pairs whose payload changed since their last publication (all
    /// of them the first time).
    pub fn update(
        &mut self,
        now_ms: u64,
        shards: &[ShardSnapshot],
        memory: Option<ProcessMemory>,
    ) -> Vec<(String, String)> {
        let t = ShardSnapshot::total(shards);
        self.max_connected = self.max_connected.max(t.clients_connected);
        self.update_loads(now_ms, &t);
        let mut tree = self.broker_topics(now_ms, &t);
        if let Some(m) = memory {
            // Resident memory, not allocations: see `super::memory`.
            tree.push((
                "$SYS/broker/heap/current".to_owned(),
                m.resident.to_string(),
            ));
            tree.push((
                "$SYS/broker/heap/maximum".to_owned(),
                m.peak_resident.to_string(),
            ));
        }
        for (i, s) in shards.iter().enumerate() {
            shard_topics(i, s, &mut tree);
        }
        tree.into_iter()
            .filter(|(topic, payload)| {
                let changed = self.published.get(topic) != Some(payload);
                if changed {
                    self.published.insert(topic.clone(), payload.clone());
                }
                changed
            })
            .collect()
    }

    fn update_loads(&mut self, now_ms: u64, t: &ShardSnapshot) {
        let current: [u64; LOADS.len()] = std::array::from_fn(|i| load_source(t, i));
        if let Some((then_ms, before)) = self.last
            && now_ms > then_ms
        {
            let secs = (now_ms - then_ms) as f64 / 1000.0;
            for (i, load) in self.loads.iter_mut().enumerate() {
                let per_minute = current[i].saturating_sub(before[i]) as f64 * 60.0 / secs;
                for (l, minutes) in load.iter_mut().zip(LOAD_MINUTES) {
                    let decay = (-secs / (60.0 * f64::from(minutes))).exp();
                    *l = *l * decay + per_minute * (1.0 - decay);
                }
            }
        }
        self.last = Some((now_ms, current));
    }

    fn broker_topics(&self, now_ms: u64, t: &ShardSnapshot) -> Vec<(String, String)> {
        let disconnected = t.sessions.saturating_sub(t.clients_connected);
        let counters: [(&str, u64); 23] = [
            ("clients/connected", t.clients_connected),
            ("clients/active", t.clients_connected),
            ("clients/disconnected", disconnected),
            ("clients/inactive", disconnected),
            ("clients/total", t.sessions),
            ("clients/maximum", self.max_connected),
            ("clients/expired", t.session.expired),
            ("messages/received", t.packets_received),
            ("messages/sent", t.packets_sent),
            ("messages/dropped", t.dropped()),
            ("messages/stored", t.retained),
            ("store/messages/count", t.retained),
            ("publish/messages/received", t.publish_received),
            ("publish/messages/sent", t.publish_sent()),
            ("publish/messages/dropped", t.dropped()),
            ("publish/bytes/received", t.publish_bytes_received),
            ("publish/bytes/sent", t.publish_bytes_sent),
            ("bytes/received", t.bytes_received),
            ("bytes/sent", t.bytes_sent),
            ("subscriptions/count", t.subscriptions),
            ("shared_subscriptions/groups", t.shared_groups),
            ("retained messages/count", t.retained),
            ("connections/total", t.connects),
        ];
        let mut tree = vec![
            ("$SYS/broker/version".to_owned(), self.version.clone()),
            (
                "$SYS/broker/uptime".to_owned(),
                format!("{} seconds", now_ms / 1000),
            ),
        ];
        tree.extend(
            counters
                .iter()
                .map(|(name, v)| (format!("$SYS/broker/{name}"), v.to_string())),
        );
        for (name, load) in LOADS.iter().zip(&self.loads) {
            for (l, minutes) in load.iter().zip(LOAD_MINUTES) {
                tree.push((
                    format!("$SYS/broker/load/{name}/{minutes}min"),
                    format!("{l:.2}"),
                ));
            }
        }
        tree
    }
}

/// RingMQ's own figures of shard `i`.
fn shard_topics(i: usize, s: &ShardSnapshot, tree: &mut Vec<(String, String)>) {
    let counters: [(&str, u64); 10] = [
        ("clients/connected", s.clients_connected),
        ("clients/total", s.sessions),
        ("messages/received", s.packets_received),
        ("messages/sent", s.packets_sent),
        ("publish/messages/received", s.publish_received),
        ("publish/messages/sent", s.publish_sent()),
        ("publish/messages/dropped", s.dropped()),
        ("bytes/received", s.bytes_received),
        ("bytes/sent", s.bytes_sent),
        ("subscriptions/count", s.subscriptions),
    ];
    tree.extend(
        counters
            .iter()
            .map(|(name, v)| (format!("$SYS/broker/shards/{i}/{name}"), v.to_string())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(tree: &'a [(String, String)], topic: &str) -> Option<&'a str> {
        tree.iter()
            .find(|(t, _)| t == topic)
            .map(|(_, p)| p.as_str())
    }

    #[test]
    fn mosquitto_names_and_formats() {
        let mut sys = SysTree::new("ringmq version 0.1.0".to_owned());
        let mut a = ShardSnapshot {
            clients_connected: 2,
            sessions: 3,
            packets_received: 10,
            packets_sent: 15,
            publish_received: 4,
            publish_bytes_received: 400,
            deliveries: 9,
            publish_bytes_sent: 900,
            ..ShardSnapshot::default()
        };
        a.session.dropped_qos0 = 1;
        a.session.expired = 2;
        let mut b = ShardSnapshot {
            clients_connected: 1,
            sessions: 1,
            retained: 5,
            publish_bytes_received: 20,
            ..ShardSnapshot::default()
        };
        b.session.expired = 1;
        let memory = ProcessMemory {
            resident: 4 << 20,
            peak_resident: 5 << 20,
        };
        let tree = sys.update(12_345, &[a, b], Some(memory));
        assert_eq!(
            get(&tree, "$SYS/broker/version"),
            Some("ringmq version 0.1.0")
        );
        assert_eq!(get(&tree, "$SYS/broker/uptime"), Some("12 seconds"));
        assert_eq!(get(&tree, "$SYS/broker/clients/connected"), Some("3"));
        assert_eq!(get(&tree, "$SYS/broker/clients/disconnected"), Some("1"));
        assert_eq!(get(&tree, "$SYS/broker/clients/total"), Some("4"));
        assert_eq!(get(&tree, "$SYS/broker/clients/maximum"), Some("3"));
        assert_eq!(get(&tree, "$SYS/broker/messages/received"), Some("10"));
        assert_eq!(get(&tree, "$SYS/broker/messages/sent"), Some("15"));
        assert_eq!(get(&tree, "$SYS/broker/publish/messages/sent"), Some("8"));
        assert_eq!(get(&tree, "$SYS/broker/messages/dropped"), Some("1"));
        assert_eq!(get(&tree, "$SYS/broker/retained messages/count"), Some("5"));
        assert_eq!(get(&tree, "$SYS/broker/clients/expired"), Some("3"));
        assert_eq!(
            get(&tree, "$SYS/broker/publish/bytes/received"),
            Some("420")
        );
        assert_eq!(get(&tree, "$SYS/broker/publish/bytes/sent"), Some("900"));
        assert_eq!(get(&tree, "$SYS/broker/heap/current"), Some("4194304"));
        assert_eq!(get(&tree, "$SYS/broker/heap/maximum"), Some("5242880"));
        // 54 broker topics and 10 per shard.
        assert_eq!(tree.len(), 54 + 2 * 10);
        assert_eq!(
            get(&tree, "$SYS/broker/load/messages/received/1min"),
            Some("0.00")
        );
        assert_eq!(
            get(&tree, "$SYS/broker/shards/1/clients/connected"),
            Some("1")
        );
        assert!(tree.iter().all(|(t, _)| t.starts_with("$SYS/broker/")));

        // Only what changed is published again; the maximum stays.
        let a2 = ShardSnapshot {
            packets_received: 70,
            ..a
        };
        let b2 = ShardSnapshot {
            clients_connected: 0,
            ..b
        };
        let memory = ProcessMemory {
            resident: 3 << 20,
            ..memory
        };
        let tree = sys.update(72_345, &[a2, b2], Some(memory));
        assert_eq!(get(&tree, "$SYS/broker/version"), None, "unchanged");
        assert_eq!(get(&tree, "$SYS/broker/clients/connected"), Some("2"));
        assert_eq!(get(&tree, "$SYS/broker/clients/maximum"), None, "still 3");
        assert_eq!(get(&tree, "$SYS/broker/heap/current"), Some("3145728"));
        assert_eq!(get(&tree, "$SYS/broker/heap/maximum"), None, "unchanged");
        // 60 packets in 60 s: 60 per minute, smoothed: 60 * (1 - e^-1) over one minute.
        assert_eq!(
            get(&tree, "$SYS/broker/load/messages/received/1min"),
            Some("37.93")
        );
        assert_eq!(
            get(&tree, "$SYS/broker/load/messages/received/15min"),
            Some("3.87")
        );
        // Without /proc the heap topics are left out, the rest goes on.
        let tree = sys.update(80_000, &[a2, b2], None);
        assert_eq!(get(&tree, "$SYS/broker/heap/current"), None);
        assert_eq!(get(&tree, "$SYS/broker/uptime"), Some("80 seconds"));
    }
}
