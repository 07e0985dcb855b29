//! RingMQ: a thread-per-core, persistent MQTT broker.

pub mod auth;
pub mod codec;
pub mod config;
pub mod log;
pub mod metrics;
pub mod mqttsn;
pub mod router;
pub mod session;
pub mod shard;
pub mod transport;
