//! Sans-IO routing: topic names and filters, the subscription trie, shared-subscription
//! groups, the shard-interest index and the retained-message store. A shard's local trie and
//! its replica of the retained store are two sides of one `LevelArena` (`levels.rs`): a
//! topic level that both a filter and a retained topic have is one node.
//!
//! Flow of one publish on shard S (README "Architecture" gives the whole path):
//! 1. `InterestIndex::shards_for(topic)` (or `InterestCache`, which adds S itself when S's
//!    local trie matches) gives the shards with a non-shared subscriber; S sends one
//!    envelope to each other one.
//! 2. `SharedGroups::pick(topic)` chooses one member per matching share group (by the
//!    configured `ShareStrategy`); S sends the message to that member's shard, addressed to
//!    the member.
//! 3. Each destination shard runs `Fanout::collect` over its local `SubscriptionTrie`: one
//!    `Delivery` per matching subscription, or per local session with overlapping
//!    subscriptions merged (`OverlapMode`).
//!
//! Replication: `InterestOp` and `ShareOp` are plain data; every shard applies the same ops
//! to its own replica. A shard emits `InterestOp::Add`/`Remove` when its local trie reports
//! `first_for_filter`/`last_for_filter` (`InterestIndex::add_local`/`remove_local` make them).
//!
//! Must never: touch a socket or the clock, or use `unsafe`; recurse over topic levels.
#![forbid(unsafe_code)]

pub mod delivery;
pub mod interest;
pub mod levels;
pub mod retained;
pub mod shared;
pub mod trie;

/// The topic types live in the codec (a leaf module both layers use).
pub use crate::codec::topic;

pub use delivery::{Delivery, Fanout, OverlapMode, Subscription, SubscriptionTrie};
pub use interest::{InterestCache, InterestIndex, InterestOp, MAX_SHARDS, ShardId, ShardMask};
pub use levels::LevelArena;
pub use retained::{Retained, RetainedMessage, RetainedMut, RetainedStack, RetainedStore};
pub use shared::{ShareMember, ShareOp, SharePick, ShareStrategy, SharedGroups};
pub use topic::{TopicError, TopicFilter, TopicName, topic_matches};
pub use trie::{Inserted, MatchStack, Removed, Trie};

/// Children of a topic-level node, keyed by the level's bytes. Hashed with foldhash, seeded
/// at random per process: level bytes come from clients, so the hash must be keyed (fixed
/// seeds invite collision floods), and std's SipHash cost about 6% of a shard's time at
/// 2.4M publishes/s (perf profile, 4 pairs QoS 0).
pub(crate) type LevelMap<V> = std::collections::HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// A subscriber key for the tries: a slot index chosen by the owning shard (e.g. its session
/// slab index). Any small `Copy + Ord` key works; this one is offered so shards and tests
/// need not invent their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u32);
