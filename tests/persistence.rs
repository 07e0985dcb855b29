//! Persistence: the broker as a process on a real store (redb file in a temp directory),
//! stopped (SIGTERM) or killed (SIGKILL) and started again on the same directory. What a
//! client was told (session present, PUBACK, PUBREC, SUBACK, a retained message set) must
//! hold after the restart.

mod common;

#[path = "persistence/restart.rs"]
mod restart;

#[path = "persistence/crash.rs"]
mod crash;

#[path = "persistence/faults.rs"]
mod faults;

#[path = "persistence/access.rs"]
mod access;

#[path = "persistence/flow.rs"]
mod flow;
