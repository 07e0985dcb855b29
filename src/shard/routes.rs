//! One shard's routing state, assembled from the sans-IO router: its level arena (the local
//! subscription trie and its replica of the retained store, on the same nodes), its replicas
//! of the shard-interest index and of the shared-subscription groups, plus the reusable match
//! buffers.
//!
//! Owns: the keys the runtime hangs on router entries. Local (non-shared) subscriptions are
//! keyed by the client's slab slot on this shard (entries are removed before a slot is
//! freed); shared-group members are keyed by `SessionKey` (slot + generation) because
//! other shards hold them and a stale key must never reach a newer client in a reused slot.
//!
//! Must never: touch a socket or the clock, or hold a retained payload that pins a shard's
//! read buffer (`retained_entry` copies the payload).

use super::ids::{ClientSlot, SessionKey};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::Limits;
use crate::router::delivery::{Fanout, SubscriptionTrie};
use crate::router::interest::{InterestCache, InterestIndex, ShardId};
use crate::router::retained::{RetainedMessage, RetainedStack};
use crate::router::shared::{SharePick, SharedGroups};
use crate::router::topic::{TopicFilter, TopicName};
use crate::router::trie::MatchStack;
use crate::session::Message;

/// The routing tables of one shard.
#[derive(Debug)]
pub(crate) struct Routes {
    /// One tree of topic levels for two uses: the non-shared subscriptions of this shard's
    /// sessions, keyed by client slot (the trie's own methods), and the replica of the
    /// retained store (`retained()` / `retained_mut()`). A level that both a filter and a
    /// retained topic have is stored once.
    pub(crate) levels: SubscriptionTrie<ClientSlot>,
    /// Replica: filter -> the other shards with a local subscriber (this shard's own answer
    /// is its local trie's). Empty on a broker of one shard (`Core::interested_shards`).
    pub(crate) interest: InterestIndex,
    pub(crate) interest_cache: InterestCache,
    /// Replica: filter -> shards with a local persistent session subscribed at QoS 1/2
    /// (this shard's bit included).
    /// A QoS 1/2 publish waits (before its acknowledgement) only for these shards.
    pub(crate) durable: InterestIndex,
    pub(crate) durable_cache: InterestCache,
    /// This shard's persistent QoS 1/2 subscriptions per filter (the `durable` bit is set
    /// while the count is above 0).
    pub(crate) durable_local: hashbrown::HashMap<TopicFilter, u32, foldhash::fast::RandomState>,
    /// Replica: every share group of the broker.
    pub(crate) shared: SharedGroups<SessionKey>,
    pub(crate) stack: MatchStack,
    pub(crate) retained_stack: RetainedStack,
    pub(crate) fanout: Fanout<ClientSlot>,
    pub(crate) picks: Vec<SharePick<SessionKey>>,
}

impl Routes {
    /// `interest_seed`: the key of the interest replicas' hashes, the same on every shard.
    pub(crate) fn new(me: ShardId, interest_seed: u64, limits: &Limits) -> Routes {
        Routes {
            levels: SubscriptionTrie::new(),
            interest: InterestIndex::for_shard(me, interest_seed, false),
            interest_cache: InterestCache::new(),
            durable: InterestIndex::for_shard(me, interest_seed, true),
            durable_cache: InterestCache::new(),
            durable_local: hashbrown::HashMap::default(),
            shared: SharedGroups::new(me, limits.shared_subscription_strategy, random_seed(me)),
            stack: MatchStack::default(),
            retained_stack: RetainedStack::default(),
            fanout: Fanout::new(limits.overlapping_subscriptions),
            picks: Vec::new(),
        }
    }
}

/// A seed for the `random` share strategy, different per shard and per process (the
/// router takes its randomness as an argument).
fn random_seed(me: ShardId) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(me.index())
}

/// The retained-store entry for a retained publish. Topic and payload are copied so that a
/// long-lived retained message never pins the 64 KiB read buffer it was decoded from.
pub(crate) fn retained_entry(message: &Message) -> RetainedMessage {
    RetainedMessage {
        topic: TopicName::new(Bytes::copy_from_slice(message.topic.as_bytes()))
            .unwrap_or_else(|_| message.topic.clone()),
        payload: Bytes::copy_from_slice(&message.payload),
        qos: message.qos,
        properties: message.properties.clone(),
        expires_at: message.expires_at_ms,
    }
}

/// A retained entry as a routable message (sent because of a new subscription).
pub(crate) fn retained_message(entry: &RetainedMessage) -> Arc<Message> {
    Arc::new(Message {
        topic: entry.topic.clone(),
        payload: entry.payload.clone(),
        qos: entry.qos,
        retain: true,
        properties: entry.properties.clone(),
        expires_at_ms: entry.expires_at,
        origin: None,
        store_id: 0,
        pinned_read: 0,
    })
}
