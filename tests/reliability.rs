//! Reliability under unlucky and hostile clients: the broker as a process (`ringmq`
//! binary), driven over real sockets, must stay responsive, give resources back and stop
//! when told.

mod common;

/// Tests that hold thousands of sockets, or read system-wide TCP counters, run one at a
/// time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[path = "reliability/close.rs"]
mod close;

#[path = "reliability/mass_disconnect.rs"]
mod mass_disconnect;

#[path = "reliability/watchdog.rs"]
mod watchdog;

#[path = "reliability/subscribe_flood.rs"]
mod subscribe_flood;

#[path = "reliability/limits.rs"]
mod limits;

#[path = "reliability/memory.rs"]
mod memory;

#[path = "reliability/partial.rs"]
mod partial;
