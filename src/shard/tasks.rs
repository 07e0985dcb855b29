//! The async glue: the few monoio tasks of a shard and the one task per connection.
//!
//! Tasks of a shard: one accept loop per listener, the mailbox task (drains the other
//! shards' channels), the timer task (one 1 s tick drives the wheel), the flusher (writes
//! dirty connections and sends the outboxes once per turn), and one task per connection that
//! waits for "readable, or writable when blocked, or told to close" and calls into `Core`.
//!
//! Must never: hold a `RefCell` borrow of the core across an `.await`, or release a
//! connection's fd while an operation on it is in flight (hand-off happens only right after
//! a completed readiness wait, with no other op submitted).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};

use super::core::{Core, Phase};
use super::io::{HandoffParts, ReadOutcome};
use super::mailbox::{Envelope, Handoff, any_pending};
use super::timer::TICK_MS;
use crate::log;
use crate::router::interest::ShardId;

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

enum Event {
    Close,
    Readable(std::io::Result<()>),
    Writable(std::io::Result<()>),
}

/// The writability wait of a connection, on the heap: created only once the connection is
/// write-blocked (rare), so an idle connection's task carries one readiness future, not two.
type WriteWait<'a> = Option<Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>>;

/// Polls for the next thing connection `id` must handle: told to close, writable while it is
/// write-blocked, or readable unless it is paused.
fn poll_event<'a>(
    shard: &Shard,
    id: u32,
    stream: &'a TcpStream,
    read: Pin<&mut impl Future<Output = io::Result<()>>>,
    write: &mut WriteWait<'a>,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    let (blocked, paused) = {
        let mut core = shard.borrow_mut();
        let max_out = core.shared.config.limits.max_output_buffer;
        let Some(conn) = core.conns.get_mut(id as usize) else {
            return Poll::Ready(Event::Close);
        };
        if conn.phase == Phase::Closing {
            return Poll::Ready(Event::Close);
        }
        if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            conn.waker = Some(cx.waker().clone());
        }
        // A client that does not read its socket while we hold more than the limit for
        // it is not read either: TCP back-pressure instead of unbounded output.
        (
            conn.write_blocked,
            conn.write_blocked && conn.out.len() > max_out,
        )
    };
    if blocked {
        let write = write.get_or_insert_with(|| Box::pin(stream.writable(false)));
        if let Poll::Ready(r) = write.as_mut().poll(cx) {
            return Poll::Ready(Event::Writable(r));
        }
    }
    if !paused {
        if let Poll::Ready(r) = read.poll(cx) {
            return Poll::Ready(Event::Readable(r));
        }
    }
    Poll::Pending
}

/// The task of one connection, from accept (or hand-off) to close.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in the task's state"
)]
pub(crate) fn conn_task(shard: Shard, id: u32, stream: TcpStream) -> impl Future<Output = ()> {
    // An `async` block, not an `async fn`: an `async fn` keeps its arguments twice in its
    // state (the 80 B `TcpStream` included), this block only its captures.
    async move {
        // Relaxed readiness is right after a read that filled the buffer (more is waiting);
        // after a short read the legacy driver must ask the kernel again (our own `recv`
        // consumed the readiness it recorded).
        let mut relaxed = true;
        loop {
            // Inline, not in a helper `async fn`: that one kept its arguments and a
            // second copy of the readiness future.
            let event = {
                let mut read = pin!(stream.readable(relaxed));
                let mut write: WriteWait<'_> = None;
                poll_fn(|cx| poll_event(&shard, id, &stream, read.as_mut(), &mut write, cx)).await
            };
            let outcome = {
                let mut core = shard.borrow_mut();
                match event {
                    Event::Close => ReadOutcome::Close,
                    Event::Readable(Ok(())) => core.on_readable(id),
                    Event::Writable(Ok(())) => {
                        core.on_writable(id);
                        ReadOutcome::Continue { drained: !relaxed }
                    }
                    Event::Readable(Err(e)) | Event::Writable(Err(e)) => {
                        core.close_lost(id, Some(e));
                        ReadOutcome::Close
                    }
                }
            };
            match outcome {
                ReadOutcome::Continue { drained } => relaxed = !drained,
                ReadOutcome::Close => break,
                ReadOutcome::Handoff(parts) => {
                    hand_off(&shard, id, stream, *parts);
                    return;
                }
            }
        }
        shard.borrow_mut().finish_conn(id);
        drop(stream);
    }
}

/// Moves connection `id` to its home shard. The readiness futures of `conn_task` have
/// completed and been dropped, so no operation holds the fd.
fn hand_off(shard: &Shard, id: u32, stream: TcpStream, parts: HandoffParts) {
    let mut core = shard.borrow_mut();
    let Some(conn) = core.conns.try_remove(id as usize) else {
        return;
    };
    let raw = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` released ownership of `raw` to us; nothing else closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let HandoffParts {
        home,
        connect,
        client_id,
        assigned,
        leftover,
    } = parts;
    let Some(dst) = ShardId::new(home as u8) else {
        return;
    };
    let handoff = Handoff {
        fd,
        peer: conn.peer,
        connect,
        client_id,
        assigned,
        leftover,
    };
    core.send_to(dst, Envelope::Handoff(Box::new(handoff)));
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
                use std::os::fd::AsRawFd;
                let id = {
                    let mut core = shard.borrow_mut();
                    core.tick_clock();
                    core.stats.accepted += 1;
                    core.new_conn(stream.as_raw_fd(), peer, Phase::AwaitingConnect)
                };
                monoio::spawn(conn_task(Rc::clone(&shard), id, stream));
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
pub(crate) async fn shard_main(shard: Shard, listeners: Vec<TcpListener>) {
    for listener in listeners {
        monoio::spawn(accept_loop(Rc::clone(&shard), listener));
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
    let mut core = shard.borrow_mut();
    core.flush_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `size_of` of what an async fn returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The same for a method with one argument.
    fn method_future_size<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Per-connection memory is a first-class metric: these bounds catch a regression
    /// (e.g. a buffer or timer moved into the connection, `Limits` or a `Will` stored inline
    /// in every session) before a benchmark does.
    #[test]
    fn per_connection_state_stays_small() {
        use std::mem::size_of;
        let task = future_size(conn_task as fn(Shard, u32, TcpStream) -> _);
        let conn = size_of::<super::super::core::Conn>();
        let client = size_of::<super::super::core::Client>();
        let session = size_of::<crate::session::Session>();
        let read = method_future_size(TcpStream::readable as fn(&'static TcpStream, bool) -> _);
        eprintln!(
            "conn_task future: {task} B (readable: {read} B), Conn: {conn} B, \
             Client: {client} B (Session: {session} B)"
        );
        assert!(task <= 288, "connection task future grew to {task} bytes");
        assert!(conn <= 160, "Conn grew to {conn} bytes");
        assert!(session <= 352, "Session grew to {session} bytes");
        assert!(client <= 368, "Client grew to {client} bytes");
    }
}
