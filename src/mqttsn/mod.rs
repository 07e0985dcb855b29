//! Sans-IO MQTT-SN 1.2 gateway: MQTT-SN clients over UDP become ordinary MQTT sessions of
//! the broker, sharing topics, retained messages and wills with MQTT clients.
//!
//! Owns: the MQTT-SN wire format (`codec`).
//!
//! Must never: touch a socket or the clock, use `unsafe`, or panic on input.
#![forbid(unsafe_code)]

pub mod codec;
