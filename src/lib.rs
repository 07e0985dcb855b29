//! RingMQ: a thread-per-core, persistent MQTT broker.
//!
//! `unsafe` is denied everywhere but in the three shard modules that make system calls
//! (`shard::sys`, `shard::uring`, `shard::limits`); each block there has a `// SAFETY:` note.
#![deny(unsafe_code)]

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
