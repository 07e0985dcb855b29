//! Sans-IO routing: topic names and filters, the subscription trie, shared-subscription
//! groups, the shard-interest index and the retained-message store.
//!
//! Must never: touch a socket or the clock, or use `unsafe`.
#![forbid(unsafe_code)]

pub mod delivery;
pub mod interest;
pub mod retained;
pub mod shared;
pub mod topic;
pub mod trie;
