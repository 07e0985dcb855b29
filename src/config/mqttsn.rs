//! The `[mqttsn]` table: settings of the MQTT-SN 1.2 gateway the shards run for an
//! `mqttsn://` listener (`crate::mqttsn` is the gateway, `crate::shard` its UDP sockets).
//!
//! Must never: read a file, or depend on the runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};

use super::ConfigError;
use crate::codec::topic::TopicName;

/// MQTT-SN 1.2 gateway settings (`[mqttsn]`): plain data the sans-IO gateway
/// (`crate::mqttsn`) and the shards' UDP sockets (`crate::shard`) read. Where the gateway
/// listens is a listener like any other (`mqttsn://HOST:PORT`); `enabled` and `listen` are
/// a shorthand for one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSnConfig {
    /// Shorthand for an MQTT-SN listener, read when the file is loaded: `true` adds
    /// `mqttsn://{listen}` to the file's listeners, as a `[[listeners]]` table with that url
    /// would (so `--listen` on the command line replaces it with the file's other
    /// listeners). Without it, a listener `mqttsn://HOST:PORT` runs the gateway.
    pub enabled: bool,
    /// UDP address of that listener; 1884 is MQTT-SN's conventional port.
    pub listen: SocketAddr,
    /// Every shard binds the UDP port (SO_REUSEPORT) and reads its share of the datagrams;
    /// `false`: shard 0 alone reads them (the others send from a copy of its socket). Either
    /// way a datagram is served on its client's home shard. The README's MQTT-SN figures
    /// compare the two.
    pub socket_per_shard: bool,
    /// GwId in ADVERTISE and GWINFO (MQTT-SN 5.3.6).
    pub gateway_id: u8,
    /// Seconds between ADVERTISE broadcasts (MQTT-SN 6.1, T_ADV, "greater than 15 minutes"
    /// in 7.2); 0 disables them. Also the Duration field of ADVERTISE, hence `u16`.
    pub advertise_interval_secs: u16,
    /// Where ADVERTISE goes (a broadcast or multicast address); none: no ADVERTISE.
    pub advertise_to: Option<SocketAddr>,
    /// T_retry (MQTT-SN 6.13, 7.2: 10 to 15 s): seconds before an unacknowledged REGISTER,
    /// QoS 1/2 PUBLISH or PUBREL to a client is sent again.
    pub retry_interval_secs: u16,
    /// N_retry (MQTT-SN 6.13, 7.2: 3 to 5): retransmissions before the client counts as lost.
    pub retry_count: u8,
    /// Messages held per client while it sleeps (MQTT-SN 6.14), while a registration is
    /// pending, or until it proves its address (`crate::mqttsn::gateway`); past it the oldest
    /// QoS 0 message is dropped. QoS 1/2 messages beyond one in
    /// flight stay in the MQTT session's own queue (`[limits] max_queued_messages`).
    pub sleep_buffer_messages: usize,
    /// Payload bytes held per client under the same rule.
    pub sleep_buffer_bytes: usize,
    /// Normal topic ids per client (REGISTER from either side, SUBSCRIBE to a plain name).
    pub max_topics_per_client: usize,
    /// Largest datagram accepted or sent (bytes). 65507, the largest UDP payload over IPv4,
    /// refuses nothing UDP can carry; constrained links set their MTU.
    pub max_message_size: u16,
    /// Pre-defined topic ids (MQTT-SN 6.7), shared by every client: a table of
    /// `id = "topic/name"`, ids 1..=65534, names without wildcards, each name once.
    #[serde(deserialize_with = "predefined_topics")]
    pub predefined_topics: BTreeMap<u16, TopicName>,
}

impl Default for MqttSnConfig {
    fn default() -> Self {
        MqttSnConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 1884)),
            socket_per_shard: true,
            gateway_id: 1,
            advertise_interval_secs: 900,
            advertise_to: None,
            retry_interval_secs: 10,
            retry_count: 3,
            sleep_buffer_messages: 100,
            sleep_buffer_bytes: 256 * 1024,
            max_topics_per_client: 1024,
            max_message_size: 65507,
            predefined_topics: BTreeMap::new(),
        }
    }
}

/// Reads `[mqttsn.predefined_topics]`: TOML keys are strings, so ids are parsed here, and
/// each name becomes a `TopicName` at the edge.
fn predefined_topics<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<u16, TopicName>, D::Error> {
    use serde::de::Error;
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (id, name) in raw {
        let n: u16 = id
            .parse()
            .map_err(|_| D::Error::custom(format!("topic id {id:?} is not 1..=65534")))?;
        let topic = TopicName::new(Bytes::from(name.clone().into_bytes()))
            .map_err(|e| D::Error::custom(format!("pre-defined topic {name:?}: {e}")))?;
        out.insert(n, topic);
    }
    Ok(out)
}

impl MqttSnConfig {
    /// Rejects values the gateway cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &'static str, v: &dyn std::fmt::Display| {
            Err(ConfigError::Value {
                what,
                value: v.to_string(),
            })
        };
        if self.retry_interval_secs == 0 {
            return bad("mqttsn.retry_interval_secs (> 0)", &0);
        }
        if self.max_message_size < 64 {
            return bad(
                "mqttsn.max_message_size (64..=65535)",
                &self.max_message_size,
            );
        }
        if self.max_topics_per_client > usize::from(u16::MAX - 1) {
            return bad(
                "mqttsn.max_topics_per_client (..=65534)",
                &self.max_topics_per_client,
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (&id, name) in &self.predefined_topics {
            // 0x0000 and 0xFFFF are reserved topic ids (MQTT-SN 5.3.11).
            if id == 0 || id == u16::MAX {
                return bad("mqttsn.predefined_topics id (1..=65534)", &id);
            }
            if !names.insert(name) {
                return bad("mqttsn.predefined_topics (a name listed twice)", name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ListenerKind};
    use super::*;

    #[test]
    fn mqttsn_table_parses_and_rejects_unknown_keys() {
        let p = std::path::Path::new("t.toml");
        let text = "[mqttsn]\ngateway_id = 7\nretry_count = 5\n\
                    [mqttsn.predefined_topics]\n1 = \"sensors/temp\"\n65534 = \"ab\"\n";
        let c = Config::from_toml(text, p).expect("toml");
        assert_eq!(c.mqttsn.gateway_id, 7);
        assert_eq!(c.mqttsn.retry_count, 5);
        assert_eq!(c.mqttsn.retry_interval_secs, 10, "unset keys keep defaults");
        assert_eq!(
            c.mqttsn.predefined_topics.get(&1).map(TopicName::as_str),
            Some("sensors/temp")
        );
        c.validate().expect("valid");
        for bad in [
            "[mqttsn]\nretry_cont = 5\n",
            "[mqttsn.predefined_topics]\nx = \"a\"\n",
            "[mqttsn.predefined_topics]\n70000 = \"a\"\n",
            "[mqttsn.predefined_topics]\n1 = \"a/#\"\n",
            "[mqttsn.predefined_topics]\n1 = \"\"\n",
        ] {
            assert!(Config::from_toml(bad, p).is_err(), "{bad} accepted");
        }
        for bad in [
            "[mqttsn]\nretry_interval_secs = 0\n",
            "[mqttsn.predefined_topics]\n0 = \"a\"\n",
            "[mqttsn.predefined_topics]\n1 = \"a\"\n2 = \"a\"\n",
        ] {
            let c = Config::from_toml(bad, p).expect("parses");
            assert!(c.validate().is_err(), "{bad} validated");
        }
    }

    #[test]
    fn enabled_adds_a_listener_to_the_files() {
        let p = std::path::Path::new("t.toml");
        let c = Config::from_toml("[mqttsn]\nenabled = true\nlisten = \"0.0.0.0:1885\"\n", p)
            .expect("toml");
        c.validate().expect("valid");
        assert_eq!(c.listeners.len(), 2, "the default TCP listener stays");
        assert_eq!(
            c.mqttsn_listener(),
            Some("0.0.0.0:1885".parse().expect("addr"))
        );
        let text =
            "listen = [\"127.0.0.1:1883\"]\n[[listeners]]\nurl = \"mqttsn://127.0.0.1:1884\"\n";
        let c = Config::from_toml(text, p).expect("toml");
        c.validate().expect("valid");
        assert_eq!(c.listeners[1].url.kind, ListenerKind::MqttSn);
        let both = format!("{text}[mqttsn]\nenabled = true\n");
        let c = Config::from_toml(&both, p).expect("toml");
        assert!(c.validate().is_err(), "two MQTT-SN listeners");
    }
}
