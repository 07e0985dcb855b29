//! RingMQ: a thread-per-core, persistent MQTT broker.

pub mod codec;
pub mod config;
pub mod router;
pub mod session;
pub mod shard;
pub mod transport;
