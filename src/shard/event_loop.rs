//! The shard's one loop: everything a shard does happens in `Core::turn`, called from the
//! single task of its runtime; between turns the task parks until something can be done.
//!
//! One turn, in this order:
//! 1. drain the other shards' channels (always, whatever else is congested: two shards that
//!    both wait for room in each other's channel must still empty their own, or neither ever
//!    gets room), the storage writer's answers (commits release held acknowledgements), a
//!    reloaded authentication snapshot and the password verifiers' verdicts (`auth.rs`);
//! 2. accept and read the sockets the poller reports (a connection whose last read published
//!    to a shard whose outbox is backlogged waits; all of them wait while an outbox is far
//!    behind: reading makes envelopes for shards that are already behind);
//! 3. fire due timers (one wheel tick per second);
//! 4. close the connections marked for closing;
//! 5. send this turn's storage batch, then flush the outboxes to the channels and every
//!    dirty connection to its socket;
//! 6. move the shutdown on by one step (`Lifecycle`).
//!
//! Waiting: when a turn leaves nothing to do, the task parks on the poller's fd (an io_uring
//! poll, or the legacy driver's epoll), the next timer tick, and the shard's `Notifier`
//! (other shards' envelopes, room in a full channel, the stop). The runtime acts on a wake
//! from another thread only when its thread parks, so the loop never waits for another shard
//! while it still has work: it checks the channels itself at every turn, and yields (it
//! never sleeps) while work is left.
//!
//! Must never: block, sleep while its channels hold envelopes, or depend on another shard
//! making progress before it drains its own inbox.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use super::core::Core;
use super::mailbox::any_pending;
use super::sys::{NO_EVENT, PollEvent};
use super::timer::TICK_MS;
use crate::log;

/// Envelopes drained per turn. Large enough to amortise a wake (~22 us) over hundreds of
/// messages (75-974 per wake were measured under load), small enough that a flood from
/// other shards cannot keep this shard from its own sockets for more than a few
/// milliseconds. Routing updates count one per operation (see `Envelope::weight`).
pub(crate) const DRAIN_BUDGET: usize = 4096;

/// Events taken from the poller per turn: enough to amortise the `epoll_wait` over a busy
/// turn, few enough that the channels and timers are served between batches.
pub(crate) const EVENTS_PER_TURN: usize = 512;

/// How long a stopping shard waits for its connections' last writes.
pub(crate) const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Pause before waiting again after the poller's readiness wait failed, so that a
/// persistent error does not spin.
const WAIT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Where a shard is in its life. Shutdown walks these in order, one step per turn at most;
/// every step keeps draining the channels, so a shard that is behind never holds the others
/// up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    /// Serving clients.
    Running,
    /// The stop was seen and every due will routed (`Core::route_shutdown_wills`); the
    /// envelopes they made are still leaving the outboxes.
    RoutingWills,
    /// This shard's wills are all in the channels and it is counted in
    /// `Shared::wills_routed`; waiting until every shard is.
    WillsRouted,
    /// Every shard's wills were in the channels and are delivered; clients were told
    /// (v5 DISCONNECT 0x8B) and connections close. Ends when none is left or at the
    /// deadline.
    Closing { deadline_ms: u64 },
    /// The loop ends.
    Done,
}

/// Yields once to the runtime (which then submits and reaps the ring) and comes back.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// The shard's life: turns until `Lifecycle::Done`, parking whenever a turn leaves nothing
/// to do. `ready` is a second fd of the shard's poller that the runtime watches.
pub(crate) async fn run(mut core: Core, ready: monoio::net::UnixStream) {
    let mut events: Vec<PollEvent> = vec![NO_EVENT; EVENTS_PER_TURN];
    // The readiness wait outlives a park that ended for another reason, so that a completion
    // is never thrown away and no poll is cancelled and submitted again per turn.
    let mut readiness: Option<Pin<Box<dyn Future<Output = io::Result<()>> + '_>>> = None;
    let mut tick = Box::pin(monoio::time::sleep(Duration::from_millis(TICK_MS)));
    loop {
        let busy = core.turn(&mut events);
        if core.lifecycle == Lifecycle::Done {
            break;
        }
        if busy {
            yield_now().await;
            continue;
        }
        let waited = poll_fn(|cx| {
            let notifier = &core.shared.mesh.notifiers[core.id.index()];
            notifier.park(cx);
            if core.has_work() {
                notifier.unpark();
                return Poll::Ready(Ok(()));
            }
            let wait = readiness.get_or_insert_with(|| Box::pin(ready.readable(false)));
            if let Poll::Ready(result) = wait.as_mut().poll(cx) {
                readiness = None;
                notifier.unpark();
                return Poll::Ready(result);
            }
            if tick.as_mut().poll(cx).is_ready() {
                let next = monoio::time::Instant::now() + Duration::from_millis(TICK_MS);
                tick.as_mut().reset(next);
                notifier.unpark();
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
        .await;
        if let Err(e) = waited {
            log!(WARN, core.log_id, "waiting for socket events failed: {e}");
            monoio::time::sleep(WAIT_ERROR_BACKOFF).await;
        }
    }
    core.finish();
}

impl Core {
    /// One turn of the loop (see the module documentation). Returns true when work is left
    /// that needs no wake-up: the channels or the poller had more than one turn takes, a
    /// connection has input left to read, or the shutdown can move on.
    pub(crate) fn turn(&mut self, events: &mut [PollEvent]) -> bool {
        self.tick_clock();
        let mut busy = self.drain_inbox(DRAIN_BUDGET) >= DRAIN_BUDGET;
        self.on_store_completions();
        self.auth_turn();
        busy |= self.io_pass(events);
        if self.has_retained_jobs() {
            busy |= self.run_retained_jobs();
        }
        if self.now_ms >= self.next_tick_ms {
            self.on_tick();
            self.next_tick_ms = (self.now_ms / TICK_MS + 1) * TICK_MS;
        }
        self.sn_timers();
        self.finish_closing();
        self.flush_all();
        self.publish_load();
        self.observe_probes();
        busy |= self.advance_lifecycle();
        self.ring_submit();
        // Writing a connection can make more output or storage work (a client that read its
        // socket gets the messages that waited for room): the next turn sends it.
        busy | self.has_local_work()
    }

    /// Work this shard made for itself that no wake-up will announce.
    fn has_local_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.closing.is_empty()
            || self.persist.has_batch()
            || (self.has_retained_jobs() && self.retained_ready())
    }

    /// Whether something other than the poller or the clock calls for a turn: envelopes in
    /// the channels, room in a channel an outbox waits for, or a shutdown step. Checked after
    /// the notifier is armed, so a wake between the check and the park is never lost.
    fn has_work(&self) -> bool {
        if any_pending(&self.inbox)
            || self.has_local_work()
            || self.persist.has_completions()
            || self.auth_has_work()
        {
            return true;
        }
        if self.outboxes.is_pending() && self.outboxes.has_room(self.id, &self.shared.mesh) {
            return true;
        }
        let stop = self.shared.stop.load(Ordering::SeqCst);
        match self.lifecycle {
            Lifecycle::Running => stop,
            Lifecycle::RoutingWills => !self.outboxes.is_pending(),
            Lifecycle::WillsRouted => self.all_wills_routed() && self.persist.pending() == 0,
            Lifecycle::Closing { .. } | Lifecycle::Done => true,
        }
    }

    /// How long a stopping shard waits for outstanding commits before it closes its
    /// connections anyway (their held acknowledgements are then never sent).
    fn commit_wait_until(&mut self) -> u64 {
        *self
            .stop_commit_deadline
            .get_or_insert(self.now_ms + SHUTDOWN_GRACE_MS)
    }

    fn all_wills_routed(&self) -> bool {
        self.shared.wills_routed.load(Ordering::SeqCst) >= self.shared.shards
    }

    /// Moves the shutdown on by one step where it can; returns true when the next step can
    /// follow at once.
    fn advance_lifecycle(&mut self) -> bool {
        match self.lifecycle {
            Lifecycle::Running => {
                if !self.shared.stop.load(Ordering::SeqCst) {
                    return false;
                }
                self.route_shutdown_wills();
                self.lifecycle = Lifecycle::RoutingWills;
                true
            }
            Lifecycle::RoutingWills => {
                if self.outboxes.is_pending() {
                    return false; // Still leaving: room comes as the others drain.
                }
                self.lifecycle = Lifecycle::WillsRouted;
                let routed = self.shared.wills_routed.fetch_add(1, Ordering::SeqCst) + 1;
                if routed == self.shared.shards {
                    self.shared.mesh.notifiers.iter().for_each(|n| n.notify());
                }
                true
            }
            Lifecycle::WillsRouted => {
                if !self.all_wills_routed() {
                    return false;
                }
                // Acknowledgements held for commits go out before the connections close
                // (bounded: the writer answers within milliseconds, or fails them).
                if self.persist.pending() > 0 && self.now_ms < self.commit_wait_until() {
                    return false;
                }
                // Every shard's wills are in our channels: deliver them before the
                // connections close. Bounded: no shard routes new publishes any more.
                while self.drain_inbox(DRAIN_BUDGET) > 0 {}
                self.begin_shutdown();
                self.lifecycle = Lifecycle::Closing {
                    deadline_ms: self.now_ms + SHUTDOWN_GRACE_MS,
                };
                true
            }
            Lifecycle::Closing { deadline_ms } => {
                if self.conns.is_empty() || self.now_ms >= deadline_ms {
                    self.lifecycle = Lifecycle::Done;
                    return true;
                }
                false
            }
            Lifecycle::Done => false,
        }
    }

    /// After the last turn: whatever output the sockets take now, then every fd closes.
    fn finish(&mut self) {
        self.flush_all();
        self.sn_log_stats();
        let left: Vec<_> = self.conns.iter().map(|(id, _)| id).collect();
        for id in left {
            self.close_now(id);
        }
        self.ring_submit();
        self.ring_drain();
    }
}
