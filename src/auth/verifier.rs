//! A small pool of verifier threads, so that slow password hashing (argon2id: 11-16 ms, PBKDF2
//! with many iterations: longer) never runs on a shard thread.
//!
//! Owns: the threads and their bounded job queue. A shard calls `submit(job, reply)`: the
//! job runs on a verifier thread, its result is sent on the reply's `crossbeam_channel`
//! sender, then the reply's wake callback runs (the shard passes its notifier, the way other
//! threads post into a shard's mailbox). When the queue is full `submit` fails at once with
//! `SubmitError::Busy`, which the shard answers with CONNACK 0x89 Server busy (3.x: 0x03
//! Server unavailable) via `Refusal::ServerBusy`: a flood of CONNECTs costs queue slots, not
//! unbounded memory or latency.
//!
//! Must never: block the submitting thread, run a job on the caller's thread, or let a
//! panicking job take a verifier thread down (the panic is caught and logged; that job's
//! reply is never sent, so the shard's connect timeout ends the connection).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Jobs a verifier thread may have queued, per thread. At 11-16 ms per argon2id check this is
/// about 1 s of work queued per thread: well inside the default 10 s connect timeout, so a
/// queued CONNECT is answered before its client gives up, and beyond it clients are better
/// told "busy" at once.
pub const QUEUE_PER_THREAD: usize = 64;

/// Largest pool accepted from the configuration; hashing is CPU-bound, so more threads than
/// cores only adds memory (each argon2id check holds its 7 MiB while it runs).
pub const MAX_VERIFIER_THREADS: usize = 16;

/// What a shard passes to be told that a reply is waiting.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Where a job's result goes.
pub struct Reply<T> {
    tx: Sender<T>,
    /// Called after each successful send; not called when the receiver is gone.
    wake: Wake,
}

impl<T> Reply<T> {
    pub fn new(tx: Sender<T>, wake: Wake) -> Reply<T> {
        Reply { tx, wake }
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply { .. }")
    }
}

/// Why a job was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: refuse the client as busy.
    #[error("verifier queue full")]
    Busy,
    /// The pool is shutting down.
    #[error("verifier pool stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool. Dropping it lets queued jobs finish, then joins the threads.
#[derive(Debug)]
pub struct VerifierPool {
    /// `None` only during drop.
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl VerifierPool {
    /// Starts `threads` verifier threads (at least 1) with a queue of
    /// `threads * QUEUE_PER_THREAD` jobs.
    pub fn start(threads: usize) -> std::io::Result<VerifierPool> {
        let threads = threads.clamp(1, MAX_VERIFIER_THREADS);
        VerifierPool::with_queue(threads, threads * QUEUE_PER_THREAD)
    }

    /// Like `start`, with an explicit queue length (at least 1).
    pub fn with_queue(threads: usize, queue: usize) -> std::io::Result<VerifierPool> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        let mut pool = VerifierPool {
            jobs: Some(tx),
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ringmq-verify-{i}"))
                .spawn(move || run(rx))?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Queues `job`; its result goes to `reply`. Never blocks.
    pub fn submit<T, J>(&self, job: J, reply: Reply<T>) -> Result<(), SubmitError>
    where
        T: Send + 'static,
        J: FnOnce() -> T + Send + 'static,
    {
        let jobs = self.jobs.as_ref().ok_or(SubmitError::Stopped)?;
        let task: Job = Box::new(move || {
            if reply.tx.send(job()).is_ok() {
                (reply.wake)();
            }
        });
        jobs.try_send(task).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Busy,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    /// Number of verifier threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// A verifier thread: jobs until the pool is dropped and the queue is empty.
fn run(jobs: Receiver<Job>) {
    for job in jobs {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            eprintln!("ringmq: a verifier job panicked; its client gets no answer");
        }
    }
}

impl Drop for VerifierPool {
    fn drop(&mut self) {
        self.jobs = None; // closes the queue: threads drain it and return
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn counter() -> (Arc<AtomicUsize>, Wake) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (
            n,
            Arc::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[test]
    fn jobs_run_off_thread_and_reply_then_wake() {
        let pool = VerifierPool::start(2).expect("pool");
        assert_eq!(pool.threads(), 2);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wakes, wake) = counter();
        let caller = std::thread::current().id();
        for i in 0..10u32 {
            let job = move || (i, std::thread::current().id() != caller);
            pool.submit(job, Reply::new(tx.clone(), wake.clone()))
                .expect("submit");
        }
        let mut got: Vec<(u32, bool)> = (0..10)
            .map(|_| rx.recv_timeout(WAIT).expect("reply"))
            .collect();
        got.sort();
        assert_eq!(got, (0..10).map(|i| (i, true)).collect::<Vec<_>>());
        drop(pool); // joins: every wake has happened
        assert_eq!(wakes.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn a_full_queue_is_busy_at_once_and_recovers() {
        let pool = VerifierPool::with_queue(1, 1).expect("pool");
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (_, wake) = counter();
        let blocker = move || {
            started_tx.send(()).expect("started");
            gate_rx.recv().expect("gate");
            "first"
        };
        pool.submit(blocker, Reply::new(tx.clone(), wake.clone()))
            .expect("first");
        started_rx.recv_timeout(WAIT).expect("thread busy");
        pool.submit(|| "queued", Reply::new(tx.clone(), wake.clone()))
            .expect("fits the queue");
        assert_eq!(
            pool.submit(|| "refused", Reply::new(tx.clone(), wake.clone())),
            Err(SubmitError::Busy)
        );
        gate_tx.send(()).expect("open");
        assert_eq!(rx.recv_timeout(WAIT), Ok("first"));
        assert_eq!(rx.recv_timeout(WAIT), Ok("queued"));
        pool.submit(|| "later", Reply::new(tx, wake))
            .expect("room again");
        assert_eq!(rx.recv_timeout(WAIT), Ok("later"));
    }

    #[test]
    fn two_threads_run_two_jobs_at_once() {
        let pool = VerifierPool::start(2).expect("pool");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (_, wake) = counter();
        for _ in 0..2 {
            let b = barrier.clone();
            // Each job waits for the other: only returns if both run concurrently.
            pool.submit(
                move || b.wait().is_leader(),
                Reply::new(tx.clone(), wake.clone()),
            )
            .expect("submit");
        }
        let leaders = [rx.recv_timeout(WAIT), rx.recv_timeout(WAIT)];
        assert_eq!(leaders.iter().filter(|r| **r == Ok(true)).count(), 1);
    }

    #[test]
    fn a_gone_receiver_or_a_panicking_job_harms_nothing() {
        let pool = VerifierPool::with_queue(1, 4).expect("pool");
        let (wakes, wake) = counter();
        let (tx, rx) = crossbeam_channel::unbounded::<u8>();
        drop(rx);
        pool.submit(|| 1u8, Reply::new(tx, wake.clone()))
            .expect("submit");
        let (tx, rx) = crossbeam_channel::unbounded::<u8>();
        pool.submit(
            || -> u8 { panic!("job panics (expected in this test)") },
            Reply::new(tx.clone(), wake.clone()),
        )
        .expect("submit");
        pool.submit(|| 2u8, Reply::new(tx, wake)).expect("submit");
        assert_eq!(
            rx.recv_timeout(WAIT),
            Ok(2),
            "the thread survived the panic"
        );
        drop(pool);
        assert_eq!(
            wakes.load(Ordering::SeqCst),
            1,
            "woken only for the delivered reply"
        );
    }

    #[test]
    fn drop_finishes_queued_jobs() {
        let pool = VerifierPool::with_queue(1, 8).expect("pool");
        let (tx, rx) = crossbeam_channel::unbounded();
        let (_, wake) = counter();
        for i in 0..8 {
            pool.submit(move || i, Reply::new(tx.clone(), wake.clone()))
                .expect("submit");
        }
        drop(pool);
        assert_eq!(rx.try_iter().count(), 8);
    }
}
