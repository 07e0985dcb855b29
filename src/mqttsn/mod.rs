//! Sans-IO MQTT-SN 1.2 gateway: MQTT-SN clients over UDP become ordinary MQTT sessions of
//! the broker, sharing topics, retained messages and wills with MQTT clients.
//!
//! Owns: the MQTT-SN wire format (`codec`), topic ids (`topics`), each client's MQTT-SN
//! state (`client`: will prompting, registration, sleeping, keep alive, retransmission,
//! the proof of its address),
//! the gateway-wide part (`gateway`: addresses, SEARCHGW/GWINFO, ADVERTISE, QoS -1), and
//! the fixed MQTT <-> MQTT-SN correspondences (`translate`).
//!
//! How: a gateway client's session is a plain `session::Session` on the client id's home
//! shard. The gateway turns the client's datagrams into MQTT packets for that session and
//! decodes what the session writes, as an MQTT client would (`codec::Role::Client`), into
//! datagrams. Every MQTT rule (QoS flows, queueing, retained messages, wills, takeover,
//! limits) stays in the session and the router; the gateway adds only MQTT-SN's own.
//!
//! Must never: touch a socket or the clock (time is `now_ms`, the broker's monotonic
//! milliseconds; addresses are an opaque type `A`), use `unsafe`, or panic on input.
//!
//! # Call order (for the shard)
//!
//! Once per shard: `Gateway::new(Arc::new(GatewaySettings::new(&config.mqttsn, limits)))`,
//! and a session for QoS -1 publishes: `Session::new(anonymous id, ..)` connected with
//! `translate::anonymous_connect()` (its CONNACK is discarded; connect it again whenever it
//! emits `Action::Close`).
//!
//! 1. Each datagram: `handle_datagram(from, bytes, now_ms, &mut outputs)`.
//! 2. Execute `outputs` in order (a fresh list for the calls made while executing, run
//!    after it, until nothing is left):
//!    - `Output::Send { to, datagram }`: send it from the gateway's UDP socket to `to`.
//!    - `Output::Broadcast { datagram }`: send it to `[mqttsn] advertise_to`.
//!    - `Output::Session { at, client, packet: Packet::Connect(c) }`: what a TCP CONNECT
//!      gets (`validate_connect`; on `Err(code)` `refuse_connect(V5, code, out)`; otherwise
//!      find or create the session on the client id's home shard, `taken_over` if it is
//!      connected elsewhere, `connect`), on a new connection: the client at `at`.
//!    - `Output::Session { at, client, packet }`, any other packet: `Session::handle_packet`
//!      through the connection of the client at `at`; dropped when the session's
//!      connection is no longer that one (a TCP client took the id over meanwhile).
//!    - `Output::Anonymous(p)`: `handle_packet(Packet::Publish(p))` on the anonymous session.
//!    - `Output::Gone(at)`: the client at `at` is forgotten; so is what the shard keeps for
//!      it (its connection stops being the client at `at`).
//!
//!    After each session call on the connection of the client at `at`: first
//!    `handle_session_output(at, &mut out, ..)` with what it wrote (even when it wrote
//!    nothing), then its `Action`s as for any client, except that `Action::Close` means
//!    `session_closed(at, ..)`. The same holds for `deliver`, `handle_timeout`,
//!    `taken_over` and `shutdown` on a session whose connection is a gateway client. The
//!    bytes may wait (e.g. an acknowledgement held for a storage commit) as long as they
//!    come in the order written and before `session_closed`.
//! 3. After every call, re-arm the one gateway timer at `next_deadline()`; when it fires,
//!    `handle_timeout(now_ms, ..)` and execute its outputs.
//!
//! A connection is the client at `at` from its `Packet::Connect` until `session_closed(at)`,
//! `Output::Gone(at)`, or a `Connect` for a new connection at `at`; output of a connection
//! that is no longer the client at its address is discarded, never given to the gateway.
#![forbid(unsafe_code)]

mod client;
pub mod codec;
pub mod gateway;
pub mod topics;
pub mod translate;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{Packet, Publish};
use crate::config::{Limits, MqttSnConfig};
use crate::session::ClientId;

pub use client::ClientStats;
pub use gateway::{Gateway, GatewayStats};
pub use topics::PredefinedTopics;

/// What the shard must do after a gateway call, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
// Drained in the same turn that fills it; boxing would allocate per message.
#[allow(clippy::large_enum_variant)]
pub enum Output<A> {
    /// One datagram to `to`.
    Send { to: A, datagram: Bytes },
    /// ADVERTISE, to `[mqttsn] advertise_to`.
    Broadcast { datagram: Bytes },
    /// A packet for the session of `client`, from the client at `at`: `Packet::Connect`
    /// connects it as a TCP CONNECT would (the connection is the client at `at` from then
    /// on), any other goes to `Session::handle_packet` through that connection.
    Session {
        at: A,
        client: ClientId,
        packet: Packet,
    },
    /// A QoS -1 publish (6.8) as a QoS 0 PUBLISH for the anonymous session.
    Anonymous(Publish),
    /// The gateway forgot the client at this address (after the outputs that gave its
    /// session its last packet): nothing is sent to it or for it any more, and whatever the
    /// runtime keeps for the address (its connection, a route) may go.
    Gone(A),
}

/// ADVERTISE timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertise {
    pub interval_ms: u64,
    /// The Duration field (seconds to the next ADVERTISE, 5.4.1).
    pub duration_s: u16,
}

/// Gateway-wide settings, from `[mqttsn]` and the broker's `[limits]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySettings {
    pub gateway_id: u8,
    /// `None`: no ADVERTISE (interval 0 or no `advertise_to`).
    pub advertise: Option<Advertise>,
    /// T_retry in ms.
    pub retry_ms: u64,
    /// N_retry.
    pub retry_count: u8,
    pub buffer_messages: usize,
    pub buffer_bytes: usize,
    pub max_topics: usize,
    /// Largest datagram received or sent.
    pub max_message_size: usize,
    pub predefined: PredefinedTopics,
    /// The broker's limits (client id length, topic length and depth).
    pub limits: Arc<Limits>,
}

impl GatewaySettings {
    /// From a validated `[mqttsn]` table (`MqttSnConfig::validate`).
    pub fn new(config: &MqttSnConfig, limits: Arc<Limits>) -> GatewaySettings {
        let advertise = (config.advertise_interval_secs != 0 && config.advertise_to.is_some())
            .then(|| Advertise {
                interval_ms: u64::from(config.advertise_interval_secs) * 1000,
                duration_s: config.advertise_interval_secs,
            });
        GatewaySettings {
            gateway_id: config.gateway_id,
            advertise,
            retry_ms: u64::from(config.retry_interval_secs.max(1)) * 1000,
            retry_count: config.retry_count,
            buffer_messages: config.sleep_buffer_messages,
            buffer_bytes: config.sleep_buffer_bytes,
            max_topics: config.max_topics_per_client,
            max_message_size: usize::from(config.max_message_size),
            predefined: PredefinedTopics::new(&config.predefined_topics),
            limits,
        }
    }
}

/// The anonymous session's client id as a `ClientId`.
pub fn anonymous_client_id(limits: &Limits) -> Option<ClientId> {
    let s = crate::codec::MqttStr::try_from_str(translate::ANONYMOUS_CLIENT_ID)?;
    ClientId::new(s, limits).ok()
}
