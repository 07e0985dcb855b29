//! Reliability under unlucky and hostile clients: the broker as a process (`ringmq`
//! binary), driven over real sockets, must stay responsive, give resources back and stop
//! when told.

mod common;

#[path = "reliability/mass_disconnect.rs"]
mod mass_disconnect;
