//! The writer thread: group commit, completions, heartbeat, and retry after a failed commit.
//!
//! Owns: the database once the store is started, the message reference counts, the pending
//! (uncommitted or failed) ops, and every [`Completion`] sent. One thread, one write
//! transaction at a time. Must never: answer `Committed` for a batch whose ops are not durable,
//! split a batch over two transactions, block a sender, or stop retrying ops it answered
//! `Failed` (they stay pending until a commit takes them, or `stop` reports them).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::OpenError;
use crate::error::{SendError, StopError, failure_kind, is_disk_full};
use crate::flush::{Flushed, flush, read_txn_seq};
use crate::open::{Db, RefCounts, Store, StoreOptions, contain_panics, open_database};
use crate::pending::Pending;
use crate::types::{Batch, Completion, FailureKind, Notify};

/// With nothing to write, the writer still commits `last_alive_ms` this often, so that after a
/// crash the broker can date it to within this interval (it costs one fsync per interval).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// After a failed commit, the writer retries (reopening the database first) this often. Long
/// enough that a full disk is not hammered, short enough that the broker resumes within a
/// second of space coming back.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Default cap on the ops of one transaction. At 1024 ops per commit redb reaches ~800k
/// records/s with p50 1.2 ms (storage/DESIGN.md); 4096 keeps a commit near 5 ms at worst, so
/// a burst does not delay the next group by much more than that.
pub const DEFAULT_MAX_TXN_OPS: usize = 4096;

/// When the writer commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Commit as soon as a batch is queued, with everything else queued by then (group
    /// commit). `Committed` means on disk: the broker acknowledges after it.
    #[default]
    Sync,
    /// Commit every `interval_ms` (or when a transaction's cap is reached). Completions are
    /// still sent after each commit; a broker that acknowledges without waiting for them loses
    /// at most the last `interval_ms` (plus one commit) of acknowledged work on a crash.
    Relaxed { interval_ms: u64 },
}

/// How the writer runs.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    pub durability: Durability,
    /// Ops above which the writer stops adding batches to a transaction (a batch is never
    /// split, so one large batch may exceed it). Default [`DEFAULT_MAX_TXN_OPS`].
    pub max_txn_ops: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            durability: Durability::Sync,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }
}

/// Counters the writer keeps; a snapshot by [`WriterHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Committed transactions (heartbeats included).
    pub transactions: u64,
    /// Failed commit attempts (first tries and retries).
    pub failed_transactions: u64,
    /// Batches and ops taken from the queue.
    pub batches: u64,
    pub ops: u64,
    /// Ops a later op of the same transaction replaced before they reached disk (an entry put
    /// and removed before the commit, for one).
    pub absorbed_ops: u64,
    pub rows_written: u64,
    pub rows_removed: u64,
    /// Broken op contracts and undecodable rows met while writing (see `storage/DESIGN.md`).
    pub anomalies: u64,
    /// Ops sent and not yet taken by the writer.
    pub queued_ops: u64,
    /// Ops taken and not yet committed: the retry list while unhealthy.
    pub pending_ops: u64,
}

enum Msg {
    Batch(Batch),
    Stop,
}

/// State shared by the handle, its senders and the thread.
#[derive(Default)]
struct Shared {
    healthy: AtomicBool,
    queued_ops: AtomicUsize,
    pending_ops: AtomicUsize,
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
    absorbed_ops: AtomicU64,
    rows_written: AtomicU64,
    rows_removed: AtomicU64,
    anomalies: AtomicU64,
}

/// Sends batches to the writer. Cheap to clone: one per shard.
#[derive(Clone)]
pub struct BatchSender {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    sources: usize,
}

impl std::fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSender")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl BatchSender {
    /// Queues a batch for the next transaction. Never blocks: the queue is unbounded, and the
    /// broker bounds what it has in flight (see [`BatchSender::queued_ops`] and the tickets it
    /// has not seen answered).
    pub fn send(&self, batch: Batch) -> Result<(), SendError> {
        if batch.source >= self.sources {
            return Err(SendError::BadSource {
                batch,
                sources: self.sources,
            });
        }
        let ops = batch.ops.len();
        self.shared.queued_ops.fetch_add(ops, Ordering::Relaxed);
        self.tx.send(Msg::Batch(batch)).map_err(|e| {
            self.shared.queued_ops.fetch_sub(ops, Ordering::Relaxed);
            match e.0 {
                Msg::Batch(batch) => SendError::Stopped { batch },
                Msg::Stop => unreachable!("send only sends batches"),
            }
        })
    }

    /// `false` from a failed commit until a retry succeeds. While `false`, new batches are
    /// answered `Failed` and kept for the retry: the broker should refuse new durable work.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Ops sent and not yet taken into a transaction.
    pub fn queued_ops(&self) -> usize {
        self.shared.queued_ops.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> WriterStats {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            transactions: get(&s.transactions),
            failed_transactions: get(&s.failed_transactions),
            batches: get(&s.batches),
            ops: get(&s.ops),
            absorbed_ops: get(&s.absorbed_ops),
            rows_written: get(&s.rows_written),
            rows_removed: get(&s.rows_removed),
            anomalies: get(&s.anomalies),
            queued_ops: s.queued_ops.load(Ordering::Relaxed) as u64,
            pending_ops: s.pending_ops.load(Ordering::Relaxed) as u64,
        }
    }
}

/// The running writer. [`WriterHandle::stop`] (or dropping it) commits what was sent and joins
/// the thread. Shards send through [`WriterHandle::sender`] clones.
pub struct WriterHandle {
    sender: BatchSender,
    thread: Option<JoinHandle<Result<(), StopError>>>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// See [`BatchSender::send`].
    pub fn send(&self, batch: Batch) -> Result<(), SendError> {
        self.sender.send(batch)
    }

    /// See [`BatchSender::healthy`].
    pub fn healthy(&self) -> bool {
        self.sender.healthy()
    }

    /// See [`BatchSender::queued_ops`].
    pub fn queued_ops(&self) -> usize {
        self.sender.queued_ops()
    }

    pub fn stats(&self) -> WriterStats {
        self.sender.stats()
    }

    /// A sender for one shard.
    pub fn sender(&self) -> BatchSender {
        self.sender.clone()
    }

    /// Commits everything sent before this call (through any sender), answers it, closes the
    /// database and joins the thread. Batches sent through other senders after this call are
    /// refused or lost: stop the shards first.
    pub fn stop(mut self) -> Result<(), StopError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), StopError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // A send error means the thread has already ended; join tells how.
        let _ = self.sender.tx.send(Msg::Stop);
        thread.join().unwrap_or(Err(StopError::Panicked))
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

impl Store {
    /// Starts the writer thread, which owns the database from now on. `completions[s]`
    /// receives the answers for source `s` (`completions.len()` must be `sources`), and
    /// `notify.notify(s)` runs after each transaction's answers to `s` are in its channel.
    pub fn start_writer(
        self,
        sources: usize,
        completions: Vec<Sender<Completion>>,
        notify: Arc<dyn Notify>,
        options: WriterOptions,
    ) -> WriterHandle {
        assert_eq!(
            completions.len(),
            sources,
            "one completion channel per source"
        );
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        shared.healthy.store(true, Ordering::Relaxed);
        // A store whose meta cannot be read failed recovery already; 0 restarts the numbering.
        let committed_seq = read_txn_seq(&self.db).unwrap_or(0);
        let writer = Writer {
            db: self.db,
            committed_seq,
            unsure: None,
            path: self.path,
            store_options: self.options,
            refs: self.refs,
            pending: Pending::default(),
            waiting: Vec::new(),
            covered: vec![None; sources],
            failure: None,
            next_retry: Instant::now(),
            last_commit: Instant::now(),
            stopping: false,
            completions,
            notify,
            shared: shared.clone(),
            rx,
            options,
            buf: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("ringmq-storage".into())
            .spawn(move || writer.run())
            .expect("spawning the storage writer thread");
        WriterHandle {
            sender: BatchSender {
                tx,
                shared,
                sources,
            },
            thread: Some(thread),
        }
    }
}

fn apply_ref_changes(refs: &mut RefCounts, changes: &[(u64, u32)]) {
    for &(id, n) in changes {
        if n == 0 {
            refs.remove(&id);
        } else {
            refs.insert(id, n);
        }
    }
}

struct Writer {
    /// `None` after a failed commit until the reopen before the next attempt.
    db: Db,
    /// `META_TXN_SEQ` of the last commit known to be in the file.
    committed_seq: u64,
    /// A failed commit that may have landed: its number and reference changes.
    unsure: Option<(u64, Vec<(u64, u32)>)>,
    path: PathBuf,
    store_options: StoreOptions,
    /// Committed references per message id.
    refs: RefCounts,
    pending: Pending,
    /// `(source, ticket)` of batches in `pending` not answered yet.
    waiting: Vec<(usize, u64)>,
    /// Per source, the highest ticket in `pending` (answered `Failed` or not yet answered): the
    /// `Committed` ticket once a commit takes them.
    covered: Vec<Option<u64>>,
    /// Why the last commit failed; `None` while healthy.
    failure: Option<FailureKind>,
    next_retry: Instant,
    last_commit: Instant,
    stopping: bool,
    completions: Vec<Sender<Completion>>,
    notify: Arc<dyn Notify>,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    options: WriterOptions,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A panic on this thread (a bug) ends the writer: senders see `Stopped`, and
        // `healthy()` must not keep saying true.
        if std::thread::panicking() {
            self.shared.healthy.store(false, Ordering::Relaxed);
        }
    }
}

impl Writer {
    fn run(mut self) -> Result<(), StopError> {
        while !self.stopping {
            let wake = match self.failure {
                None => self.last_commit + HEARTBEAT,
                Some(_) => self.next_retry,
            };
            match self.rx.recv_deadline(wake) {
                Ok(msg) => self.take(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            let now = Instant::now();
            match self.failure {
                None if self.waiting.is_empty() && now < self.last_commit + HEARTBEAT => {}
                None => {
                    self.gather();
                    self.commit();
                }
                Some(_) if now >= self.next_retry => {
                    self.drain();
                    self.commit();
                }
                Some(kind) => self.answer_failed(kind),
            }
        }
        self.finish()
    }

    /// Folds one message in; a batch's ops all land in `pending` together.
    fn take(&mut self, msg: Msg) {
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Stop => {
                self.stopping = true;
                return;
            }
        };
        let n = batch.ops.len();
        self.shared.queued_ops.fetch_sub(n, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared.ops.fetch_add(n as u64, Ordering::Relaxed);
        for op in batch.ops {
            self.pending.apply(op);
        }
        self.shared
            .pending_ops
            .store(self.pending.ops, Ordering::Relaxed);
        self.waiting.push((batch.source, batch.ticket));
        let covered = &mut self.covered[batch.source];
        *covered = Some(covered.map_or(batch.ticket, |t| t.max(batch.ticket)));
    }

    /// Adds what is already queued, up to the cap; in relaxed mode first waits out the interval.
    fn gather(&mut self) {
        if let Durability::Relaxed { interval_ms } = self.options.durability {
            let until = Instant::now() + Duration::from_millis(interval_ms);
            while !self.stopping && self.pending.ops < self.options.max_txn_ops {
                match self.rx.recv_deadline(until) {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
        }
        while !self.stopping && self.pending.ops < self.options.max_txn_ops {
            match self.rx.try_recv() {
                Ok(msg) => self.take(msg),
                Err(_) => break,
            }
        }
    }

    /// Takes everything queued, cap or not (a retry or the final commit).
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Batch(b)) => self.take(Msg::Batch(b)),
                Ok(Msg::Stop) => self.stopping = true,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// One transaction with everything pending; answers every source involved.
    fn commit(&mut self) {
        match self.try_commit() {
            Ok(flushed) => self.committed(flushed),
            Err(kind) => {
                self.shared
                    .failed_transactions
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.healthy.store(false, Ordering::Relaxed);
                self.failure = Some(kind);
                self.next_retry = Instant::now() + RETRY_INTERVAL;
                self.answer_failed(kind);
            }
        }
    }

    fn try_commit(&mut self) -> Result<Flushed, FailureKind> {
        if self.db.0.is_none() {
            self.reopen()?;
        }
        let db = self.db.0.as_ref().expect("reopened above");
        let seq = self.committed_seq + 1;
        let (pending, refs, buf) = (&self.pending, &self.refs, &mut self.buf);
        let mut written = None;
        let attempt = catch_unwind(AssertUnwindSafe(|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            written = Some(flush(&txn, pending, refs, seq, buf)?);
            txn.commit()?;
            Ok(())
        }));
        let kind = match (attempt, written) {
            (Ok(Ok(())), Some(flushed)) => {
                self.committed_seq = seq;
                return Ok(flushed);
            }
            (Ok(Err(e)), written) => {
                self.unsure = written.map(|w| (seq, w.ref_changes));
                failure_kind(&e)
            }
            // redb found damage it did not expect (debug builds panic on some checks); the
            // reopen before the retry repairs what it can.
            (Err(_), written) => {
                self.unsure = written.map(|w| (seq, w.ref_changes));
                FailureKind::Io
            }
            (Ok(Ok(())), None) => unreachable!("a commit without a flush"),
        };
        // redb fails every later operation after an I/O error until reopened; reopen always.
        self.db = Db(None);
        Err(kind)
    }

    /// Opens the database again after a failure, and settles whether the failed commit landed:
    /// a commit whose fsync failed may still be in the file, and then its reference changes
    /// hold. The retry rewrites the same rows either way (every pending op is a state, not a
    /// delta), so only the counts need settling.
    fn reopen(&mut self) -> Result<(), FailureKind> {
        let reopened = contain_panics(&self.path, || {
            open_database(&self.path, &self.store_options)
        })
        .map_err(|e| match e {
            OpenError::Io { source, .. } if is_disk_full(&source) => FailureKind::DiskFull,
            _ => FailureKind::Io,
        })?;
        if let Some((seq, changes)) = &self.unsure {
            let on_disk = read_txn_seq(&reopened).map_err(|e| failure_kind(&e))?;
            if on_disk == *seq {
                apply_ref_changes(&mut self.refs, changes);
                self.committed_seq = *seq;
            }
            self.unsure = None;
        }
        self.db = Db(Some(reopened));
        Ok(())
    }

    fn committed(&mut self, flushed: Flushed) {
        apply_ref_changes(&mut self.refs, &flushed.ref_changes);
        let s = &self.shared;
        s.transactions.fetch_add(1, Ordering::Relaxed);
        s.absorbed_ops
            .fetch_add(self.pending.absorbed, Ordering::Relaxed);
        s.rows_written
            .fetch_add(flushed.rows_written, Ordering::Relaxed);
        s.rows_removed
            .fetch_add(flushed.rows_removed, Ordering::Relaxed);
        s.anomalies.fetch_add(flushed.anomalies, Ordering::Relaxed);
        s.pending_ops.store(0, Ordering::Relaxed);
        s.healthy.store(true, Ordering::Relaxed);
        self.pending.clear();
        self.waiting.clear();
        self.failure = None;
        self.last_commit = Instant::now();
        for source in 0..self.covered.len() {
            if let Some(ticket) = self.covered[source].take() {
                let _ = self.completions[source].send(Completion::Committed { ticket });
                self.notify.notify(source);
            }
        }
    }

    /// Answers every waiting batch `Failed`; their ops stay pending for the retry.
    fn answer_failed(&mut self, kind: FailureKind) {
        let mut touched = vec![false; self.completions.len()];
        for (source, ticket) in self.waiting.drain(..) {
            let _ = self.completions[source].send(Completion::Failed { ticket, kind });
            touched[source] = true;
        }
        for (source, t) in touched.into_iter().enumerate() {
            if t {
                self.notify.notify(source);
            }
        }
    }

    /// The last commit: everything queued, one attempt (after a reopen if unhealthy).
    fn finish(mut self) -> Result<(), StopError> {
        self.drain();
        if !self.pending.is_empty() || !self.waiting.is_empty() {
            self.commit();
        }
        match self.failure {
            Some(kind) => Err(StopError::NotDurable {
                ops: self.pending.ops,
                kind,
            }),
            None => Ok(()),
        }
    }
}
