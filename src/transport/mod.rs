//! Transports: the byte transforms between a socket and the MQTT codec for listeners that
//! do not speak plain MQTT over TCP. Sans-IO: bytes in, bytes out.
//!
//! Owns: the parsers of what precedes MQTT on such a connection.
//!
//! Must never: touch a socket or the clock, allocate by an unchecked length, or panic on
//! input.

pub mod proxy;

pub use proxy::{ProxyAddr, ProxyError};
