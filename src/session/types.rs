//! Plain value types the session exchanges with the shard and the router: client ids,
//! routed messages, subscriptions, delivery parameters and counters.
//!
//! Must never: hold connection-bound state (that lives in `Connection`), touch a socket or
//! the clock.

use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{MqttStr, PublishProperties, QoS, Will};
use crate::config::Limits;
use crate::router::topic::{TopicFilter, TopicName};

/// A validated client identifier: a well-formed MQTT string of at most
/// `Limits::max_client_id_len` bytes. Empty only never: an empty id from the client is
/// either refused or replaced by an assigned one (`assign_client_id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(MqttStr);

/// Why a string is not an acceptable client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdError {
    /// Zero-length (only acceptable when the server assigns one).
    Empty,
    /// Longer than `Limits::max_client_id_len`.
    TooLong,
}

impl ClientId {
    /// Accepts `id` when it is non-empty and within `limits.max_client_id_len`
    /// ([MQTT-3.1.3-5] lets the server accept longer ids than 23 bytes and any characters).
    pub fn new(id: MqttStr, limits: &Limits) -> Result<ClientId, ClientIdError> {
        if id.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if id.len() > limits.max_client_id_len {
            return Err(ClientIdError::TooLong);
        }
        Ok(ClientId(id))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// The same id owning exactly its bytes (see `MqttStr::detached`): for the copy a
    /// session and the registry keep for as long as the session lives.
    pub fn detached(&self) -> ClientId {
        ClientId(self.0.detached())
    }
}

/// Prefix of server-assigned client ids; `-` and hex digits only follow, so an assigned id
/// never holds `/`, `+` or `#` (bad input #19).
pub const ASSIGNED_ID_PREFIX: &str = "ringmq-";

/// A server-assigned client id [MQTT-3.1.3-6], [MQTT-3.2.2-16]: `ringmq-` followed by `seed`
/// as 16 hex digits. Deterministic: the caller (the shard) owns uniqueness and passes a seed
/// that is never reused while the broker runs, e.g. `shard_id << 48 | counter` mixed with the
/// start time.
pub fn assign_client_id(seed: u64) -> ClientId {
    let s = format!("{ASSIGNED_ID_PREFIX}{seed:016x}");
    ClientId(
        MqttStr::try_from_str(&s)
            .expect("an assigned id is ASCII letters, digits and '-': a valid MQTT string"),
    )
}

/// An application message as routed between sessions and shards. Immutable once built and
/// shared as `Arc<Message>` (one allocation per publish, whatever the number of subscribers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// QoS as published; each delivery uses `min(qos, granted)`.
    pub qos: QoS,
    /// RETAIN as published; the shard updates the retained store when set.
    pub retain: bool,
    /// v5 properties as published. `topic_alias` is always `None` and
    /// `subscription_identifiers` always empty: both are per-delivery.
    /// `message_expiry_interval` holds the value as published; deliveries rewrite it from
    /// `expires_at_ms` [MQTT-3.3.2-6].
    pub properties: PublishProperties,
    /// Broker-clock instant (ms) after which the message must not be delivered
    /// [MQTT-3.3.2-5]; `None` means it never expires.
    pub expires_at_ms: Option<u64>,
    /// The publishing client, for No Local [MQTT-3.8.3-3]. `None` for messages the broker
    /// itself creates (`$SYS`).
    pub origin: Option<ClientId>,
    /// The message's id in storage, the same on every shard (0: none assigned; the shard
    /// assigns one when it routes a QoS 1/2 message, before any session stores it).
    pub store_id: u64,
    /// 0 when topic, payload and properties are buffers of their own; otherwise the size of
    /// the read they are views into (`UNKNOWN_READ` when the reader did not say). A view
    /// keeps that whole read alive: a 1-byte message decoded with 1 MB of other traffic would
    /// pin the megabyte for as long as it is queued, so a queue copies out what pins a read
    /// larger than `DETACH_READS_ABOVE` (`SessionData::enqueue`).
    pub pinned_read: u32,
}

/// `Message::pinned_read` of a view into a read of unknown size.
pub const UNKNOWN_READ: u32 = u32::MAX;

/// A queued message that views a read larger than this is copied into buffers of its own.
/// Below it, the read is kept: it is small, and the messages decoded from one read usually
/// travel together (a client's pipelined publishes, queued for the same subscriber), where a
/// copy per message cost a fifth of the QoS 1 fan-in throughput for nothing.
pub const DETACH_READS_ABOVE: u32 = 16 * 1024;

impl Message {
    /// The same message in buffers of its own (see `owned`): topic and payload share one
    /// new allocation of exactly their size.
    pub fn detached(&self) -> Message {
        let topic_len = self.topic.len();
        let mut both = bytes::BytesMut::with_capacity(topic_len + self.payload.len());
        both.extend_from_slice(self.topic.as_bytes());
        both.extend_from_slice(&self.payload);
        let mut both = both.freeze();
        let payload = both.split_off(topic_len);
        let topic = TopicName::new(both).unwrap_or_else(|_| self.topic.clone());
        Message {
            topic,
            payload,
            properties: detached_properties(&self.properties),
            origin: self.origin.as_ref().map(ClientId::detached),
            pinned_read: 0,
            ..self.clone()
        }
    }

    /// Bytes the message holds: what a queue charges against its byte limit (topic and
    /// properties too, not only the payload).
    pub fn stored_size(&self) -> usize {
        let p = &self.properties;
        let users: usize = p
            .user_properties
            .iter()
            .map(|u| u.name.len() + u.value.len())
            .sum();
        self.topic.len()
            + self.payload.len()
            + users
            + p.response_topic.as_ref().map_or(0, TopicName::len)
            + p.correlation_data.as_ref().map_or(0, Bytes::len)
            + p.content_type.as_ref().map_or(0, MqttStr::len)
    }

    /// Whether the message must be dropped instead of delivered at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| now_ms >= t)
    }

    /// Remaining Message Expiry Interval in whole seconds, rounded up so that a message that
    /// has not expired never goes out with 0 [MQTT-3.3.2-6].
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|t| {
            let ms = t.saturating_sub(now_ms);
            u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    /// The Will Message of `client` as published at `now_ms` [MQTT-3.1.2-8..9]: topic, payload,
    /// QoS, retain and the will properties that are publish properties [MQTT-3.1.3-10].
    pub fn from_will(will: &Will, client: &ClientId, now_ms: u64) -> Message {
        let p = &will.properties;
        Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: Vec::new(),
                content_type: p.content_type.clone(),
            },
            expires_at_ms: p
                .message_expiry_interval
                .map(|s| now_ms.saturating_add(u64::from(s) * 1000)),
            origin: Some(client.clone()),
            store_id: 0,
            // The session keeps its will detached (see `Will::detached`).
            pinned_read: 0,
        }
    }
}

/// Properties whose strings and binaries are buffers of their own.
fn detached_properties(p: &PublishProperties) -> PublishProperties {
    PublishProperties {
        response_topic: p.response_topic.as_ref().map(|t| {
            TopicName::new(Bytes::copy_from_slice(t.as_bytes())).unwrap_or_else(|_| t.clone())
        }),
        correlation_data: p
            .correlation_data
            .as_ref()
            .map(|b| Bytes::copy_from_slice(b)),
        user_properties: p
            .user_properties
            .iter()
            .map(|u| crate::codec::UserProperty {
                name: u.name.detached(),
                value: u.value.detached(),
            })
            .collect(),
        content_type: p.content_type.as_ref().map(MqttStr::detached),
        ..p.clone()
    }
}

/// One subscription of this session: the options as granted (`options.qos` is the granted
/// QoS, already capped by `Limits::max_qos`) and the v5 Subscription Identifier. The same
/// type the router stores in its trie under the filter: one description of a subscription.
pub use crate::router::delivery::Subscription;

/// How one message reaches this session: the result of merging every subscription of the
/// session that matches the topic (see `Delivery::merge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// Highest granted QoS over the matching subscriptions; the message goes out at
    /// `min(message.qos, qos)` [MQTT-3.8.4-8].
    pub qos: QoS,
    /// Retain As Published of any matching subscription [MQTT-3.3.1-12], [MQTT-3.3.1-13].
    pub retain_as_published: bool,
    /// Subscription identifiers of the matching subscriptions [MQTT-3.3.4-3]; ignored for 3.x.
    pub subscription_ids: &'a [u32],
    /// The message comes from the retained store because of a new subscription: RETAIN
    /// stays set [MQTT-3.3.1-9] whatever Retain As Published says.
    pub from_retained_store: bool,
    /// The share group (`$share/{group}/{filter}`) this delivery was picked for: if the
    /// session ends before the client has the message (QoS 1/2), it goes back to the group
    /// (`Action::ReturnToGroup`) [MQTT-4.8.2-... SHOULD send it to another subscriber].
    pub share_group: Option<&'a Arc<TopicFilter>>,
}

impl<'a> Delivery<'a> {
    /// Merges the subscriptions of one session that match `message` into one delivery
    /// (overlapping subscriptions deliver once, with the highest QoS and every identifier
    /// [MQTT-3.3.4-2], [MQTT-3.3.4-3]), skipping No Local subscriptions when `subscriber` is
    /// the publisher [MQTT-3.8.3-3]. `ids` is a caller-owned scratch buffer (cleared here).
    /// `None` when no subscription remains.
    pub fn merge<'s, I>(
        subs: I,
        message: &Message,
        subscriber: &ClientId,
        ids: &'a mut Vec<u32>,
    ) -> Option<Delivery<'a>>
    where
        I: IntoIterator<Item = &'s Subscription>,
    {
        ids.clear();
        let own = message.origin.as_ref() == Some(subscriber);
        let mut merged: Option<(QoS, bool)> = None;
        for sub in subs {
            if own && sub.options.no_local {
                continue;
            }
            if let Some(id) = sub.id {
                ids.push(id);
            }
            let (qos, rap) = merged.unwrap_or((QoS::AtMostOnce, false));
            merged = Some((
                qos.max(sub.options.qos),
                rap || sub.options.retain_as_published,
            ));
        }
        let (qos, retain_as_published) = merged?;
        Some(Delivery {
            qos,
            retain_as_published,
            subscription_ids: ids,
            from_retained_store: false,
            share_group: None,
        })
    }
}

/// Counters of what the session dropped or tolerated, for metrics. Never reset by the
/// session; they survive reconnects of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// QoS 0 messages dropped: offline without `queue_qos0_offline`, evicted from a full
    /// queue, or the output buffer over `max_output_buffer`.
    pub dropped_qos0: u64,
    /// QoS 1/2 messages dropped because the queue was full (messages or bytes).
    pub dropped_queue_full: u64,
    /// Messages dropped because the packet would exceed the client's Maximum Packet Size
    /// [MQTT-3.1.2-25] (bad input #29).
    pub dropped_too_large: u64,
    /// Messages dropped because their Message Expiry Interval passed [MQTT-3.3.2-5].
    pub dropped_expired: u64,
    /// Messages dropped before they were sent because the client they were waiting for may
    /// not read their topic (the ACL, checked when a client resumes the session or the
    /// rules are reloaded).
    pub dropped_not_authorized: u64,
    /// Inbound publishes refused without routing ($-topics, invalid UTF-8 payloads).
    pub refused_publishes: u64,
    /// Times the client exceeded our Receive Maximum while `receive_maximum_log_only` held
    /// (bad input #52).
    pub receive_maximum_exceeded: u64,
    /// Acknowledgements for packet ids we do not have in flight (tolerated).
    pub unknown_acks: u64,
    /// 1 once the session ended because its expiry interval passed while it was offline.
    pub expired: u64,
}
