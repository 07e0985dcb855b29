//! Retained messages sent because of a new subscription [MQTT-3.3.1-9..11], within a budget
//! per turn: one SUBSCRIBE may carry hundreds of filters that each match thousands of
//! retained messages, and none of that may hold the shard's other clients up (measured
//! before: 20,000 x `#` over 2,000 retained messages held a shard for 4.9 s).
//!
//! Owns: the queue of subscriptions whose retained messages are still to be sent; each is
//! looked up in the retained store when its turn comes and then delivered a slice at a time,
//! and only while the client's output is under `max_output_buffer` (the client reads them as
//! fast as it can; QoS 0 ones are not dropped for a full buffer).
//!
//! Must never: send a retained message to a different client (a slot reused since: checked by
//! generation), or spend more than `RETAINED_PER_TURN` deliveries and about
//! `LOOKUP_WORK_PER_TURN` of lookups in one turn, or work in proportion to the queue's length.

use std::collections::VecDeque;
use std::sync::Arc;

use super::core::{Core, Phase};
use super::ids::{ClientSlot, SessionKey};
use super::routes;
use crate::router::topic::TopicFilter;
use crate::session::{Delivery, Message, Subscription};

/// Retained deliveries per turn, all subscriptions together: a few milliseconds of work.
const RETAINED_PER_TURN: usize = 512;

/// Retained-store lookup work per turn: a lookup costs 1 plus the messages it found (it
/// visits about that much of the store). 4096: eight `#` lookups over 512 retained messages,
/// or thousands of lookups that find nothing (a subscription storm of device filters).
const LOOKUP_WORK_PER_TURN: usize = 4096;

/// One subscription whose retained messages are still to be sent.
#[derive(Debug)]
pub(crate) struct RetainedJob {
    client: SessionKey,
    filter: TopicFilter,
    sub: Subscription,
    /// The messages found, once looked up; `None` until then.
    found: Option<VecDeque<Arc<Message>>>,
}

impl Core {
    /// Queues the retained messages matching `filter` for client `slot`'s new subscription.
    pub(crate) fn queue_retained(
        &mut self,
        slot: ClientSlot,
        filter: TopicFilter,
        sub: Subscription,
    ) {
        let Some(generation) = self.clients.get(slot).map(|c| c.generation) else {
            return;
        };
        // A filter that does not start with `$` matches no `$` topic [MQTT-4.7.2-1]: with only
        // the broker's `$SYS` topics retained (the usual case), a subscription storm queues
        // no lookups at all.
        let store = self.routes.levels.retained();
        let may_match = if filter.as_bytes().first() == Some(&b'$') {
            !store.is_empty()
        } else {
            store.client_len() > 0
        };
        if !may_match {
            return;
        }
        self.retained_jobs.push_back(RetainedJob {
            client: SessionKey::new(slot, generation),
            filter,
            sub,
            found: None,
        });
    }

    /// Whether retained messages wait to be sent.
    pub(crate) fn has_retained_jobs(&self) -> bool {
        !self.retained_jobs.is_empty()
    }

    /// Whether a queued job can progress now (its client's output has room, or the client
    /// left): the loop must turn again for it.
    pub(crate) fn retained_ready(&self) -> bool {
        let max_out = self.shared.config.limits.max_output_buffer;
        self.retained_jobs.iter().any(|job| {
            let conn = self.clients.live(job.client).map(|c| c.conn);
            match conn {
                None | Some(None) => true,
                Some(Some(c)) => self.conns.get(c).is_none_or(|c| c.out.len() < max_out),
            }
        })
    }

    /// Sends retained messages within this turn's budget; returns true when jobs that could
    /// progress are left for the next turn. Works on the queue in place and looks at each job
    /// at most once per turn, so a turn costs its budget, not the length of the queue (a
    /// subscription storm queues a job per filter: rebuilding the queue every turn made it
    /// quadratic).
    pub(crate) fn run_retained_jobs(&mut self) -> bool {
        let max_out = self.shared.config.limits.max_output_buffer;
        let (mut sent, mut work) = (0, 0);
        let mut progress_left = false;
        // Jobs put back (their client reads slowly) go behind the others, in their order.
        for _ in 0..self.retained_jobs.len() {
            if sent >= RETAINED_PER_TURN || work >= LOOKUP_WORK_PER_TURN {
                progress_left = true;
                break;
            }
            let Some(mut job) = self.retained_jobs.pop_front() else {
                break;
            };
            let Some(client) = self.clients.live(job.client) else {
                continue; // The client left; its subscription with it.
            };
            let conn = client.conn;
            let room = conn
                .and_then(|c| self.conns.get(c))
                .is_some_and(|c| c.phase == Phase::Open && c.out.len() < max_out);
            if conn.is_some() && !room {
                // The client reads slowly: its job waits (its flush resumes the loop).
                self.retained_jobs.push_back(job);
                continue;
            }
            let found = match job.found.as_mut() {
                Some(found) => found,
                None => {
                    let found = self.find_retained(&job.filter);
                    work += 1 + found.len();
                    job.found.insert(found)
                }
            };
            let mut batch = Vec::new();
            while sent + batch.len() < RETAINED_PER_TURN {
                let Some(m) = found.pop_front() else { break };
                batch.push(m);
            }
            let done = found.is_empty();
            sent += batch.len();
            self.deliver_retained(job.client.slot, &job.sub, &batch);
            if !done {
                // Out of budget: it goes on first next turn, before this client's later jobs.
                progress_left = true;
                self.retained_jobs.push_front(job);
                break;
            }
        }
        if self.retained_jobs.is_empty() && self.retained_jobs.capacity() > RETAINED_PER_TURN {
            // A storm's queue is not kept for the next one.
            self.retained_jobs = VecDeque::new();
        }
        progress_left
    }

    fn find_retained(&mut self, filter: &TopicFilter) -> VecDeque<Arc<Message>> {
        let mut found = VecDeque::new();
        let routes = &mut self.routes;
        routes.levels.retained().for_each_matching(
            filter,
            self.now_ms,
            &mut routes.retained_stack,
            |entry| found.push_back(routes::retained_message(entry)),
        );
        found
    }

    fn deliver_retained(
        &mut self,
        slot: ClientSlot,
        sub: &Subscription,
        messages: &[Arc<Message>],
    ) {
        let ids: &[u32] = match &sub.id {
            Some(id) => std::slice::from_ref(id),
            None => &[],
        };
        for message in messages {
            let delivery = Delivery {
                qos: sub.options.qos,
                retain_as_published: sub.options.retain_as_published,
                subscription_ids: ids,
                from_retained_store: true,
                share_group: None,
            };
            self.deliver_to(slot, message, &delivery);
        }
    }
}
