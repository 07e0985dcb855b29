//! Authentication and authorization, built as self-contained parts; the broker does not call
//! them yet.
//!
//! Owns: the parts below, each sans-IO where it can be (time and randomness are arguments).
//! - `acl`: mosquitto's ACL format and the read / publish / subscribe decisions;
//! - `password`: the password file (argon2id, mosquitto `$6$`/`$7$`, SCRAM material);
//! - `scram`: the SCRAM-SHA-256 server state machine for MQTT 5 enhanced authentication;
//! - `throttle`: exponential delay of repeated failures per source address;
//! - `verifier`: the threads that run password hashing off the shards;
//! - `random`: the randomness seam.
//!
//! Must never: put a password or key material in a log or error, or read the clock.

pub mod acl;
pub mod password;
pub mod random;
pub mod scram;
pub mod throttle;
pub mod verifier;
