//! Opening the store at start and putting what it holds back into the shards before any
//! client is served: sessions (on their home shard, whatever the shard count was before),
//! their subscriptions (into every shard's routing replicas), queued and in-flight QoS 1/2
//! messages, inbound QoS 2 ids, retained messages (on every shard), and the fan-outs a
//! crash cut short.
//!
//! Owns: the conversion of stored records back to broker values (wall-clock times to the
//! new broker clock; the codec checks every stored property block again), the decision
//! of what a restart means for each session (a session that was connected when the broker
//! died lost its connection at the last moment the broker was known alive: its will and
//! expiry count from then), and the start-up barrier that makes every shard's routing
//! complete before any shard accepts.
//!
//! Must never: panic on what the store holds (a record the broker cannot use is skipped
//! with a log line naming it), or let a client in before every restored subscription is
//! routable from every shard.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use ringmq_storage as storage;

use super::core::Core;
use super::ids::ClientSlot;
use super::persist::{Mode, Persist};
use super::{BrokerError, Shared};
use crate::codec::{self, MqttStr, PacketId, ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::config::{Config, Durability};
use crate::log;
use crate::router::topic::{TopicFilter, TopicName};
use crate::session::{
    ClientId, Message, Outbound, QueuedMessage, Session, SessionData, Subscription,
};

/// What one shard gets back from the store.
#[derive(Debug, Default)]
pub(crate) struct ShardRecovery {
    /// Sessions homed on this shard.
    sessions: Vec<storage::RecoveredSession>,
    /// Messages some stored entry refers to, by id (shared by every shard).
    messages: Arc<HashMap<u64, Arc<Message>>>,
    /// Every retained message (each shard holds a replica).
    retained: Arc<Vec<Arc<Message>>>,
    /// QoS 2 messages whose fan-out to this shard a crash cut short.
    fanout: Vec<u64>,
    /// Wall-clock ms of the last moment the previous run was known alive.
    last_alive_ms: Option<u64>,
}

/// The store and what it gave back, ready to be handed to the shards.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) writer: Option<storage::WriterHandle>,
    /// The shards' way to the writer (one clone each).
    pub(crate) sender: Option<storage::BatchSender>,
    pub(crate) completions: Vec<Option<Receiver<storage::Completion>>>,
    pub(crate) recoveries: Vec<ShardRecovery>,
    /// The highest per-shard message number in the store (`persist::highest_msg_counter`).
    pub(crate) msg_counter: u64,
    pub(crate) mode: Mode,
}

/// Wakes a shard when the writer has answered it.
struct WakeShard(Arc<Shared>);

impl storage::Notify for WakeShard {
    fn notify(&self, source: usize) {
        if let Some(n) = self.0.mesh.notifiers.get(source) {
            n.notify();
        }
    }
}

/// Opens the store of `config` (unless storage is off), reads it back and starts the
/// writer. Errors name the file and the problem.
pub(crate) fn open(config: &Config, shared: &Arc<Shared>) -> Result<Opened, BrokerError> {
    let shards = shared.shards;
    let s = &config.storage;
    let mode = match s.durability {
        Durability::None => {
            return Ok(Opened {
                writer: None,
                sender: None,
                completions: (0..shards).map(|_| None).collect(),
                recoveries: (0..shards).map(|_| ShardRecovery::default()).collect(),
                msg_counter: 0,
                mode: Mode::Off,
            });
        }
        Durability::Sync => Mode::Sync,
        Durability::Relaxed => Mode::Relaxed,
    };
    let options = storage::StoreOptions {
        cache_bytes: s.cache_mb.saturating_mul(1024 * 1024),
        ..storage::StoreOptions::default()
    };
    let started = std::time::Instant::now();
    // redb panics on some damaged files (an `unreachable!` deep in its B-tree code); the store
    // turns such a panic into `OpenError::Corrupt`, and the default hook would print a panic
    // message before that clear error. Only the starting thread runs here.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = storage::Store::open(&s.data_dir, &options);
    std::panic::set_hook(hook);
    let (store, recovered) = opened.map_err(BrokerError::Storage)?;
    let msg_counter = super::persist::highest_msg_counter(
        recovered
            .messages
            .keys()
            .copied()
            .chain(std::iter::once(recovered.max_msg_id)),
    );
    let sessions = recovered.sessions.len();
    let recoveries = distribute(recovered, shards, shared.wall_epoch_ms);
    log!(
        INFO,
        None,
        "store {} opened in {} ms: {sessions} session(s)",
        s.data_dir.display(),
        started.elapsed().as_millis()
    );
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| crossbeam_channel::unbounded()).unzip();
    let durability = match mode {
        Mode::Relaxed => storage::Durability::Relaxed {
            interval_ms: s.commit_interval_ms,
        },
        Mode::Sync | Mode::Off => storage::Durability::Sync,
    };
    let writer = store.start_writer(
        shards,
        senders,
        Arc::new(WakeShard(Arc::clone(shared))),
        storage::WriterOptions {
            durability,
            ..storage::WriterOptions::default()
        },
    );
    Ok(Opened {
        sender: Some(writer.sender()),
        writer: Some(writer),
        completions: receivers.into_iter().map(Some).collect(),
        recoveries,
        msg_counter,
        mode,
    })
}

/// Splits what the store gave back by home shard; messages and retained messages are
/// converted once and shared.
fn distribute(r: storage::Recovered, shards: usize, wall_epoch_ms: u64) -> Vec<ShardRecovery> {
    let messages: HashMap<u64, Arc<Message>> = r
        .messages
        .iter()
        .filter_map(|(id, record)| {
            let m = message_from_record(record, *id, wall_epoch_ms);
            if m.is_none() {
                log!(
                    WARN,
                    None,
                    "stored message {id} is not a valid message; skipped"
                );
            }
            m.map(|m| (*id, Arc::new(m)))
        })
        .collect();
    let messages = Arc::new(messages);
    let retained: Vec<Arc<Message>> = r
        .retained
        .iter()
        .filter_map(|(topic, record)| {
            let m = message_from_record(record, 0, wall_epoch_ms);
            if m.is_none() {
                log!(
                    WARN,
                    None,
                    "stored retained message of {topic:?} is not valid; skipped"
                );
            }
            m.map(Arc::new)
        })
        .collect();
    let retained = Arc::new(retained);
    let mut out: Vec<ShardRecovery> = (0..shards)
        .map(|_| ShardRecovery {
            messages: Arc::clone(&messages),
            retained: Arc::clone(&retained),
            last_alive_ms: r.last_alive_ms,
            ..ShardRecovery::default()
        })
        .collect();
    for session in r.sessions {
        let home = super::home_shard(&session.client, shards);
        out[home.index()].sessions.push(session);
    }
    for (msg, shard) in r.fanout {
        // The shard count may have changed: the part goes to a shard that exists; it
        // delivers to the sessions homed there now.
        let shard = usize::from(shard) % shards;
        out[shard].fanout.push(msg.0);
    }
    out
}

fn wall_to_broker(wall_ms: u64, wall_epoch_ms: u64) -> u64 {
    wall_ms.saturating_sub(wall_epoch_ms)
}

/// A stored message back as a routable message; `None` when a field is not valid.
fn message_from_record(r: &storage::MessageRecord, id: u64, wall_epoch_ms: u64) -> Option<Message> {
    let topic = TopicName::new(r.topic.clone()).ok()?;
    let properties = codec::decode_publish_properties(r.properties.clone()).ok()?;
    Some(Message {
        topic,
        payload: r.payload.clone(),
        qos: QoS::from_bits(r.qos)?,
        retain: r.retain,
        properties,
        expires_at_ms: r.expires_at_ms.map(|t| wall_to_broker(t, wall_epoch_ms)),
        origin: None,
        store_id: id,
        pinned_read: 0,
    })
}

fn will_from_record(r: &storage::WillRecord) -> Option<Will> {
    Some(Will {
        topic: TopicName::new(r.topic.clone()).ok()?,
        payload: r.payload.clone(),
        qos: QoS::from_bits(r.qos)?,
        retain: r.retain,
        properties: codec::decode_will_properties(r.properties.clone()).ok()?,
    })
}

impl Core {
    /// Puts this shard's share of the store back: sessions into the registry, their
    /// subscriptions into the routes (broadcast to the other shards), retained messages
    /// into the replica. Returns the restored slots (their timers are looked at once every
    /// shard's routes are complete).
    pub(crate) fn restore(&mut self, r: &mut ShardRecovery) -> Vec<ClientSlot> {
        for message in r.retained.iter() {
            self.routes
                .levels
                .retained_mut()
                .set(super::routes::retained_entry(message));
        }
        let mut slots = Vec::with_capacity(r.sessions.len());
        for stored in std::mem::take(&mut r.sessions) {
            match self.restore_session(stored, r) {
                Ok(slot) => slots.push(slot),
                Err((client, why)) => {
                    log!(
                        WARN,
                        self.log_id,
                        "stored session {client:?} skipped: {why}"
                    );
                }
            }
        }
        slots
    }

    fn restore_session(
        &mut self,
        stored: storage::RecoveredSession,
        r: &ShardRecovery,
    ) -> Result<ClientSlot, (Bytes, &'static str)> {
        let fail = |why| (stored.client.clone(), why);
        let id = MqttStr::try_from_bytes(stored.client.clone()).ok_or(fail("client id"))?;
        let client_id =
            ClientId::new(id, &self.session_limits).map_err(|_| fail("client id length"))?;
        let record = &stored.record;
        let will = match &record.will {
            Some(w) => Some(Box::new(will_from_record(w).ok_or(fail("will"))?)),
            None => None,
        };
        let mut data = SessionData {
            will,
            will_delay_secs: record.will.as_ref().map_or(0, |w| w.delay_secs),
            session_expiry_secs: record.expiry_secs,
            ..SessionData::default()
        };
        for (filter, sub) in &stored.subs {
            let filter = TopicFilter::new(filter.clone()).map_err(|_| fail("filter"))?;
            let options = SubscriptionOptions::from_byte(sub.options).ok_or(fail("options"))?;
            let sub = Subscription {
                options,
                id: sub.id,
            };
            data.subscriptions.insert(&filter, sub);
        }
        let collisions = restore_outbound(&mut data, &stored.entries, &r.messages);
        if collisions > 0 {
            log!(
                WARN,
                self.log_id,
                "stored session {}: {collisions} in-flight message(s) share a packet id with an \
                 earlier one; sent again under new ids",
                String::from_utf8_lossy(&stored.client)
            );
        }
        data.awaiting_rel = stored
            .await_rel
            .iter()
            .filter_map(|(id, _)| PacketId::new(*id))
            .collect::<BTreeSet<_>>();
        let (expires_at, will_due) = self.restored_deadlines(record, r.last_alive_ms, &data);
        let subs: Vec<_> = data.subscriptions.filters().collect();
        let session = Session::restore(
            client_id,
            Arc::clone(&self.session_limits),
            data,
            ProtocolVersion::from_level(record.protocol),
            expires_at,
            will_due,
        );
        let persistent = self.persist.enabled() && session.is_persistent();
        let slot = self.insert_client(session);
        match self.clients.get_mut(slot) {
            // Set before the subscriptions are routed, which count it.
            Some(c) => c.durable = persistent,
            None => super::core::broken_invariant(
                self.log_id,
                format_args!("restored client slot {slot} not in the slab"),
            ),
        }
        for (filter, sub) in subs {
            self.route_subscription(slot, filter, sub);
        }
        Ok(slot)
    }

    /// When a restored session ends and its will is published, on the new broker clock. A
    /// session that was connected when the previous run ended lost its connection at the
    /// last moment that run was known alive.
    fn restored_deadlines(
        &self,
        record: &storage::SessionRecord,
        last_alive_ms: Option<u64>,
        data: &SessionData,
    ) -> (Option<u64>, Option<u64>) {
        let epoch = self.shared.wall_epoch_ms;
        if !record.connected {
            return (
                record.expires_at_ms.map(|t| wall_to_broker(t, epoch)),
                record.will_due_ms.map(|t| wall_to_broker(t, epoch)),
            );
        }
        let lost_at = wall_to_broker(last_alive_ms.unwrap_or(0), epoch);
        let expiry = record.expiry_secs;
        let expires_at =
            (expiry != u32::MAX).then(|| lost_at.saturating_add(u64::from(expiry) * 1000));
        let will_due = data.will.as_ref().map(|_| {
            let due = lost_at.saturating_add(u64::from(data.will_delay_secs) * 1000);
            expires_at.map_or(due, |e| due.min(e))
        });
        (expires_at, will_due)
    }

    /// After every shard's routes are complete: restored sessions whose expiry or will fell
    /// due while the broker was down act now, and fan-outs a crash cut short are finished.
    pub(crate) fn after_restore(&mut self, slots: &[ClientSlot], r: &ShardRecovery) {
        self.tick_clock();
        for &slot in slots {
            self.fire_client_deadline(slot);
            self.reschedule_client(slot);
        }
        for id in &r.fanout {
            if let Some(message) = r.messages.get(id) {
                self.finish_fanout(message);
            }
            self.persist_fanout(*id, self.id, false);
        }
    }
}

/// Restores the outbound messages of a session: entries with a packet id were in flight
/// (resent with DUP on reconnect), the others wait in the queue, in `seq` order.
fn restore_outbound(
    data: &mut SessionData,
    entries: &[(u64, storage::EntryRecord)],
    messages: &HashMap<u64, Arc<Message>>,
) -> usize {
    let mut collisions = 0;
    let mut inflight = VecDeque::new();
    let mut queue = VecDeque::new();
    let mut next_seq = 0;
    for (seq, e) in entries {
        next_seq = next_seq.max(seq + 1);
        let Some(qos) = QoS::from_bits(e.qos) else {
            continue;
        };
        if let storage::EntryState::Released { packet_id } = e.state {
            if let Some(packet_id) = PacketId::new(packet_id) {
                inflight.push_back(Outbound::Released {
                    packet_id,
                    seq: *seq,
                });
            }
            continue;
        }
        let Some(message) = messages.get(&e.msg.0) else {
            continue; // Logged when the message was skipped.
        };
        let q = QueuedMessage {
            seq: *seq,
            message: Arc::clone(message),
            qos,
            retain: e.retain,
            subscription_ids: e.sub_ids.clone(),
            share_group: None,
        };
        match e.state {
            storage::EntryState::Sent { packet_id } => match PacketId::new(packet_id) {
                Some(packet_id)
                    if !inflight
                        .iter()
                        .any(|o: &Outbound| o.packet_id() == packet_id) =>
                {
                    inflight.push_back(Outbound::Published {
                        packet_id,
                        delivery: q,
                    })
                }
                Some(_) => {
                    collisions += 1;
                    queue.push_back(q)
                }
                None => queue.push_back(q),
            },
            storage::EntryState::Queued | storage::EntryState::Released { .. } => {
                queue.push_back(q)
            }
        }
    }
    data.queued_bytes = queue.iter().map(QueuedMessage::cost).sum();
    data.inflight = inflight;
    data.queue = queue;
    data.next_seq = next_seq;
    collisions
}

/// Start-up barrier: every shard has restored its sessions and put the routing updates
/// they make into the channels; `count` shards have.
pub(crate) fn restored_barrier(shared: &Shared) {
    shared.restored.fetch_add(1, Ordering::SeqCst);
    while shared.restored.load(Ordering::SeqCst) < shared.shards {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Builds the pipeline of one shard from what `open` returned.
pub(crate) fn persist_for(opened: &mut Opened, shard: usize, wall_epoch_ms: u64) -> Persist {
    match opened.mode {
        Mode::Off => Persist::off(wall_epoch_ms),
        mode => Persist::new(
            mode,
            opened.sender.clone(),
            opened.completions.get_mut(shard).and_then(Option::take),
            shard,
            opened.msg_counter,
            wall_epoch_ms,
        ),
    }
}
