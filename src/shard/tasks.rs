//! The async glue: the few monoio tasks of a shard. There is no task per connection.
//!
//! Tasks of a shard: one accept loop per listener, the I/O task (every connection's
//! readiness, from the shard's poller, and closes), the mailbox task (drains the other
//! shards' channels), the timer task (one 1 s tick drives the wheel), and the flusher
//! (writes dirty connections and sends the outboxes once per turn).
//!
//! Must never: hold a `RefCell` borrow of the core across an `.await`. Connections' fds are
//! never in a runtime operation (the runtime only watches the poller's fd), so a hand-off or
//! a close needs no cancellation.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use monoio::net::TcpListener;

use super::core::{Core, Phase};
use super::mailbox::any_pending;
use super::timer::TICK_MS;
use crate::log;

/// Envelopes drained per mailbox wake. Large enough to amortise a wake (~22 us) over
/// hundreds of messages (75-974 per wake were measured under load), small enough that a
/// flood from other shards cannot keep this shard from its own sockets for more than a few
/// milliseconds.
pub(crate) const DRAIN_BUDGET: usize = 4096;

/// Pause after a failed `accept` (EMFILE and friends) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a stopping shard waits for its connections' last writes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type Shard = Rc<RefCell<Core>>;

/// Yields once to the other ready tasks.
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

/// Events taken from the poller per pass: enough to amortise the `epoll_wait` over a busy
/// turn, few enough that the flusher and the mailbox run between passes.
const EVENTS_PER_PASS: usize = 512;

/// The shard's I/O task: the one task that serves every connection. It waits until the
/// poller has events (the runtime watches the poller's fd: an io_uring poll, or the legacy
/// driver's epoll), a connection was marked for closing, or one has input left, and then
/// runs `Core::io_pass`. An idle connection thus costs no task, future or registration with
/// the runtime: only its `Conn` and the kernel's record in the poller.
pub(crate) async fn io_task(shard: Shard, ready: monoio::net::UnixStream) {
    let mut events = vec![super::sys::NO_EVENT; EVENTS_PER_PASS];
    // The readiness wait outlives a pass woken for another reason, so that a completion is
    // never thrown away and no poll is cancelled and submitted again per pass.
    let mut wait: Option<Pin<Box<dyn Future<Output = io::Result<()>> + '_>>> = None;
    let mut more = true;
    loop {
        if !more {
            let woken = poll_fn(|cx| {
                {
                    let mut core = shard.borrow_mut();
                    let backlogged = core.outboxes.backlogged();
                    if !core.closing.is_empty() || (!core.again.is_empty() && !backlogged) {
                        return Poll::Ready(Ok(()));
                    }
                    core.io_waker = Some(cx.waker().clone());
                    if backlogged {
                        // Socket events wait in the kernel; the flusher wakes this task
                        // once the outboxes have drained (`Core::flush_all`).
                        core.io_backlogged = true;
                        return Poll::Pending;
                    }
                }
                let w = wait.get_or_insert_with(|| Box::pin(ready.readable(false)));
                let result = std::task::ready!(w.as_mut().poll(cx));
                wait = None;
                Poll::Ready(result)
            })
            .await;
            if let Err(e) = woken {
                log!(
                    WARN,
                    shard.borrow().log_id,
                    "waiting for socket events failed: {e}"
                );
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        more = shard.borrow_mut().io_pass(&mut events);
        if more {
            yield_now().await;
        }
    }
}

/// Accepts connections on one listener until shutdown.
pub(crate) async fn accept_loop(shard: Shard, listener: TcpListener) {
    // Register for the stop signal once: a task's waker stays valid for the task's life, and
    // `will_wake` does not recognise monoio's cloned wakers, so a per-poll check pushed one
    // waker per accepted connection (16 B each, kept until shutdown).
    let mut registered = false;
    loop {
        let accepted = {
            let mut accept = pin!(listener.accept());
            poll_fn(|cx| {
                {
                    let mut core = shard.borrow_mut();
                    if core.stopping {
                        return Poll::Ready(None);
                    }
                    if !registered {
                        core.stop_wakers.push(cx.waker().clone());
                        registered = true;
                    }
                }
                accept.as_mut().poll(cx).map(Some)
            })
            .await
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                if let Err(e) = stream.set_nodelay(true) {
                    log!(WARN, shard.borrow().log_id, "TCP_NODELAY on {peer}: {e}");
                }
                // SAFETY: `into_raw_fd` released ownership of the fd to us; nothing else
                // closes it.
                let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
                let mut core = shard.borrow_mut();
                core.tick_clock();
                core.stats.accepted += 1;
                let _ = core.new_conn(fd, peer, Phase::AwaitingConnect);
            }
            Some(Err(e)) => {
                log!(WARN, shard.borrow().log_id, "accept failed: {e}");
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Drains the other shards' channels; parks (and lets senders wake it) when empty.
pub(crate) async fn mailbox_task(shard: Shard) {
    let shared = std::sync::Arc::clone(&shard.borrow().shared);
    let me = shard.borrow().id.index();
    loop {
        poll_fn(|cx| {
            let core = shard.borrow();
            let ready = |core: &Core| {
                let stop = shared.stop.load(Ordering::SeqCst);
                let all_routed = shared.wills_routed.load(Ordering::SeqCst) == shared.shards;
                (stop && !core.wills_routed)
                    || (core.wills_routed && !core.stopping && all_routed)
                    || any_pending(&core.inbox)
            };
            if ready(&core) {
                return Poll::Ready(());
            }
            let notifier = &shared.mesh.notifiers[me];
            notifier.park(cx);
            if ready(&core) {
                notifier.unpark();
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        let drained = {
            let mut core = shard.borrow_mut();
            core.tick_clock();
            if shared.stop.load(Ordering::SeqCst) && !core.wills_routed {
                // Step 1: route every due will and push the envelopes into the channels.
                core.route_shutdown_wills();
                core.flush_all();
                if shared.wills_routed.fetch_add(1, Ordering::SeqCst) + 1 == shared.shards {
                    shared.mesh.notifiers.iter().for_each(|n| n.notify());
                }
            }
            if core.wills_routed
                && !core.stopping
                && shared.wills_routed.load(Ordering::SeqCst) == shared.shards
            {
                // Step 2: every shard's wills are in our channels; deliver them, then close
                // (each connection's output, wills included, is flushed before its close).
                while core.drain_inbox(DRAIN_BUDGET) > 0 {}
                core.begin_shutdown();
            }
            core.drain_inbox(DRAIN_BUDGET)
        };
        if drained == DRAIN_BUDGET {
            yield_now().await;
        }
    }
}

/// Advances the timer wheel once per tick.
pub(crate) async fn timer_task(shard: Shard) {
    loop {
        monoio::time::sleep(Duration::from_millis(TICK_MS)).await;
        shard.borrow_mut().on_tick();
    }
}

/// Writes dirty connections and sends outboxes once per loop turn: woken by the first
/// connection marked dirty (or envelope queued), it runs after the tasks already ready.
pub(crate) async fn flusher_task(shard: Shard) {
    loop {
        poll_fn(|cx| {
            let mut core = shard.borrow_mut();
            if core.dirty.is_empty() && !core.outboxes.is_pending() {
                core.flusher = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let complete = shard.borrow_mut().flush_all();
        if !complete {
            // A destination channel is full: give that shard time to drain.
            yield_now().await;
        }
    }
}

/// A shard's life: start its tasks, run until shutdown, give connections a moment to
/// receive their last bytes.
pub(crate) async fn shard_main(
    shard: Shard,
    listeners: Vec<TcpListener>,
    ready: monoio::net::UnixStream,
) {
    monoio::spawn(io_task(Rc::clone(&shard), ready));
    let mut accepting = Vec::with_capacity(listeners.len());
    for listener in listeners {
        use std::os::fd::AsRawFd;
        shard.borrow_mut().listener_fds.push(listener.as_raw_fd());
        accepting.push(monoio::spawn(accept_loop(Rc::clone(&shard), listener)));
    }
    monoio::spawn(mailbox_task(Rc::clone(&shard)));
    monoio::spawn(timer_task(Rc::clone(&shard)));
    monoio::spawn(flusher_task(Rc::clone(&shard)));
    // Wait for shutdown to begin.
    poll_fn(|cx| {
        let mut core = shard.borrow_mut();
        if core.stopping {
            Poll::Ready(())
        } else {
            core.stop_wakers.push(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    // Then for every connection to close (bounded).
    let drained = poll_fn(|cx| {
        let mut core = shard.borrow_mut();
        if core.conns.is_empty() {
            Poll::Ready(())
        } else {
            core.stop_wakers.push(cx.waker().clone());
            Poll::Pending
        }
    });
    let _ = monoio::time::timeout(SHUTDOWN_GRACE, drained).await;
    shard.borrow_mut().flush_all();
    // The accept loops were woken with the stop; each drops its listener as it ends.
    for accept in accepting {
        accept.await;
    }
}

#[cfg(test)]
mod tests {
    /// Per-connection memory is a first-class metric: these bounds catch a regression
    /// (e.g. a buffer or timer moved into the connection, `Limits` or a `Will` stored inline
    /// in every session) before a benchmark does. An idle connection is exactly one `Conn`
    /// and one `Client` (no task: see `io_task`).
    #[test]
    fn per_connection_state_stays_small() {
        use std::mem::size_of;
        let conn = size_of::<super::super::core::Conn>();
        let client = size_of::<super::super::core::Client>();
        let session = size_of::<crate::session::Session>();
        eprintln!("Conn: {conn} B, Client: {client} B (Session: {session} B)");
        assert!(conn <= 112, "Conn grew to {conn} bytes");
        assert!(session <= 272, "Session grew to {session} bytes");
        assert!(client <= 288, "Client grew to {client} bytes");
    }
}
