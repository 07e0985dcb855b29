//! The shard's receive ring (io_uring driver only): one io_uring per shard, owned here, with
//! a provided-buffer ring (`IORING_REGISTER_PBUF_RING`) that the kernel fills for whichever
//! connection has input, and one multishot receive (`RecvMulti` with buffer select) per
//! plain TCP connection once it is attached to its session on its home shard.
//!
//! Owns: the ring, the buffer pool (one allocation of `BUF_COUNT` x `BUF_SIZE` bytes; the
//! kernel takes buffers from the ring's head, `recycle` gives them back at its tail), the
//! snapshot of completions a turn handles, and the count of multishot receives still in
//! flight (`armed`, for the drain at shutdown).
//!
//! The ring's own fd sits in the shard's epoll set (`Poller`), so the runtime's one wait on
//! the poller also wakes on completions. A turn takes the completions, hands each one's
//! bytes to the same decode path as the scratch buffer (`Core::ring_pass`), and gives the
//! buffer back at once; submissions (arming, cancelling) go to the kernel once per turn.
//!
//! A connection's fd may be closed while its receive is still in the ring: the request holds
//! its own reference to the socket, which is released when the request ends (its cancel is
//! queued at the close), and a late completion names the connection's slot and generation,
//! which no longer match, so its bytes are dropped and its buffer goes back.
//!
//! Must never: give the kernel a buffer that is still being read, free the buffer pool while
//! a receive may still write into it, or arm a second receive on a connection whose first
//! has not ended (two receives would reorder its bytes).

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// Buffers in the pool: how many receives may be completed and not yet handled. Beyond it a
/// receive ends with `ENOBUFS` and is armed again at the next turn (input waits in the
/// socket meanwhile).
pub(crate) const BUF_COUNT: u16 = 256;

/// Size of one buffer: one completion carries at most this much. Pages are made resident
/// only as the kernel first writes them.
pub(crate) const BUF_SIZE: usize = 4096;

/// The buffer group id of the pool (the only one of the ring).
const BUF_GROUP: u16 = 0;

/// Submission queue entries. A turn that arms or cancels more submits as it goes.
const SQ_ENTRIES: u32 = 256;

/// Completion queue entries (the kernel keeps what does not fit; nothing is dropped).
const CQ_ENTRIES: u32 = 4096;

/// The user data of cancel requests (their own completions are ignored). No connection
/// token has it: slot `u32::MAX` is never a connection's.
const CANCEL_TOKEN: u64 = u64::MAX;

const PAGE: usize = 4096;

/// One completion, copied out of the ring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    /// The connection's token (slot and generation), as armed.
    pub(crate) token: u64,
    /// Bytes received (0: the peer closed), or a negative errno.
    pub(crate) result: i32,
    /// The buffer that holds the bytes, when the kernel picked one.
    pub(crate) buffer: Option<u16>,
    /// The receive stays armed (`IORING_CQE_F_MORE`); false: this was its last completion.
    pub(crate) more: bool,
}

/// The shard's receive ring and its buffer pool.
pub(crate) struct RecvRing {
    ring: IoUring,
    /// The ring of buffer descriptors shared with the kernel (page-aligned).
    descriptors: NonNull<BufRingEntry>,
    /// The buffers, `BUF_COUNT` x `BUF_SIZE` bytes.
    buffers: NonNull<u8>,
    /// Our tail of the descriptor ring (the kernel owns the head).
    tail: u16,
    /// Multishot receives submitted and not ended yet.
    armed: usize,
    /// Submission failed (the ring is unusable): the pool is never freed.
    broken: bool,
}

impl std::fmt::Debug for RecvRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvRing")
            .field("armed", &self.armed)
            .field("tail", &self.tail)
            .finish_non_exhaustive()
    }
}

fn descriptors_layout() -> Layout {
    let size = usize::from(BUF_COUNT) * std::mem::size_of::<BufRingEntry>();
    // The kernel wants the descriptor ring page-aligned.
    Layout::from_size_align(size.max(PAGE), PAGE).unwrap_or_else(|_| Layout::new::<u8>())
}

fn buffers_layout() -> Layout {
    Layout::from_size_align(usize::from(BUF_COUNT) * BUF_SIZE, PAGE)
        .unwrap_or_else(|_| Layout::new::<u8>())
}

impl RecvRing {
    /// A ring with its buffer pool registered; an error when the kernel lacks io_uring,
    /// multishot receive or provided-buffer rings (the shard then reads through epoll).
    pub(crate) fn new() -> io::Result<RecvRing> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)?;
        let (dl, bl) = (descriptors_layout(), buffers_layout());
        // SAFETY: both layouts have a non-zero size.
        let (d, b) = unsafe { (alloc_zeroed(dl), alloc(bl)) };
        let (Some(descriptors), Some(buffers)) = (NonNull::new(d), NonNull::new(b)) else {
            // SAFETY: each pointer, when not null, came from `alloc*` with its layout.
            unsafe {
                if !d.is_null() {
                    dealloc(d, dl);
                }
                if !b.is_null() {
                    dealloc(b, bl);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut this = RecvRing {
            ring,
            descriptors: descriptors.cast(),
            buffers,
            tail: 0,
            armed: 0,
            broken: false,
        };
        // SAFETY: the descriptor ring is a live, zeroed, page-aligned allocation of
        // `BUF_COUNT` entries that stays allocated (and unmoved) until `Drop`, which
        // unregisters it first (or leaks it).
        unsafe {
            this.ring.submitter().register_buf_ring(
                this.descriptors.as_ptr() as u64,
                BUF_COUNT,
                BUF_GROUP,
            )?;
        }
        for bid in 0..BUF_COUNT {
            this.recycle(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The ring's fd, for the shard's poller (readable while completions wait).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's fd lives as long as `self.ring`, which the borrow outlives not.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// Queues a multishot receive on `fd`; its completions carry `token`. The caller makes
    /// sure no other receive of this fd is in the ring.
    pub(crate) fn arm(&mut self, fd: RawFd, token: u64) {
        let entry = opcode::RecvMulti::new(Fd(fd), BUF_GROUP)
            .build()
            .user_data(token);
        self.push(&entry);
        self.armed += 1;
    }

    /// Queues the cancel of the receive armed with `token` (its last completion follows).
    pub(crate) fn cancel(&mut self, token: u64) {
        let entry = opcode::AsyncCancel::new(token)
            .build()
            .user_data(CANCEL_TOKEN)
            .flags(squeue::Flags::SKIP_SUCCESS);
        self.push(&entry);
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the entries pushed reference no user memory (a receive selects its
            // buffer from the registered pool; a cancel names a user-data value).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            if self.submit().is_err() {
                // Cannot happen with a valid ring; the entry is lost and the connection
                // waits for its timers (keep alive) rather than the shard spinning here.
                return;
            }
        }
    }

    /// Hands the queued submissions to the kernel (one `io_uring_enter`), if there are any.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submitter().submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EBUSY: the completion queue overflowed; what was taken is taken, the rest
                // goes at the next turn, after completions were reaped.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
    }

    /// Appends at most `max` waiting completions (not those of cancels) to `out`; returns
    /// whether more wait.
    pub(crate) fn take_completions(&mut self, out: &mut Vec<Completion>, max: usize) -> bool {
        if self.ring.submission().cq_overflow() {
            // Completions that did not fit wait in the kernel until an `io_uring_enter` asks
            // for events (the crate adds GETEVENTS while the overflow flag is up); nothing
            // else would bring them (a connection's end among them).
            let _ = self.ring.submitter().submit();
        }
        let mut cq = self.ring.completion();
        let mut taken = 0;
        for cqe in &mut cq {
            if cqe.user_data() == CANCEL_TOKEN {
                continue;
            }
            let more = cqueue::more(cqe.flags());
            if !more {
                self.armed = self.armed.saturating_sub(1);
            }
            out.push(Completion {
                token: cqe.user_data(),
                result: cqe.result(),
                buffer: cqueue::buffer_select(cqe.flags()),
                more,
            });
            taken += 1;
            if taken == max {
                break;
            }
        }
        cq.sync();
        let left = !cq.is_empty();
        drop(cq);
        left || self.ring.submission().cq_overflow()
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed over.
    ///
    /// # Safety
    ///
    /// `bid` must come from a completion taken from this ring and not recycled yet, and the
    /// slice must be dropped before `recycle(bid)` and before the ring is dropped.
    pub(crate) unsafe fn bytes<'a>(&self, bid: u16, len: usize) -> &'a [u8] {
        let bid = usize::from(bid % BUF_COUNT);
        let len = len.min(BUF_SIZE);
        // SAFETY: the pointer is within the pool (bid < BUF_COUNT, len <= BUF_SIZE); the
        // kernel wrote these bytes before posting the completion and writes this buffer no
        // more until it is recycled (caller's contract), so nothing mutates them meanwhile.
        unsafe { std::slice::from_raw_parts(self.buffers.as_ptr().add(bid * BUF_SIZE), len) }
    }

    /// Gives buffer `bid` back to the kernel (visible at the next `publish`).
    pub(crate) fn recycle(&mut self, bid: u16) {
        let bid = bid % BUF_COUNT;
        let index = usize::from(self.tail & (BUF_COUNT - 1));
        // SAFETY: `index` < BUF_COUNT, within the descriptor ring; the kernel reads only
        // descriptors between its head and the published tail, and this one is past the
        // published tail until `publish`. The buffer address is within the pool.
        unsafe {
            let entry = &mut *self.descriptors.as_ptr().add(index);
            entry.set_addr(self.buffers.as_ptr().add(usize::from(bid) * BUF_SIZE) as u64);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the recycled buffers to the kernel (one release store of the tail).
    pub(crate) fn publish(&mut self) {
        // SAFETY: the tail is the `resv` field of the first descriptor, a properly aligned
        // u16 inside the live descriptor ring that the kernel reads (never writes); an
        // atomic store with release ordering makes the descriptors written before it
        // visible first, as the kernel's acquire load of the tail expects.
        unsafe {
            let tail = BufRingEntry::tail(self.descriptors.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// At shutdown, after every connection's cancel was queued: submits, then takes and
    /// recycles completions until no receive is left in flight or `limit` passed.
    pub(crate) fn drain(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut done = Vec::new();
        while self.armed > 0 && !self.broken && Instant::now() < until {
            let ts = Timespec::from(Duration::from_millis(10));
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(_) => break,
            }
            done.clear();
            self.take_completions(&mut done, usize::MAX);
            for c in &done {
                if let Some(bid) = c.buffer {
                    self.recycle(bid);
                }
            }
            self.publish();
        }
    }
}

impl Drop for RecvRing {
    fn drop(&mut self) {
        if self.armed > 0 || self.broken {
            // A receive may still write into the pool: leave it allocated (this happens
            // only when the shutdown's drain timed out, once per shard).
            return;
        }
        let _ = self.ring.submitter().unregister_buf_ring(BUF_GROUP);
        // SAFETY: no receive is in flight and the pool is unregistered, so the kernel holds
        // no pointer into either allocation; both came from `alloc*` with these layouts.
        unsafe {
            dealloc(self.descriptors.as_ptr().cast(), descriptors_layout());
            dealloc(self.buffers.as_ptr(), buffers_layout());
        }
    }
}

/// Where a connection's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RingRecv {
    /// The poller's readiness and `recv` into the scratch buffer (every connection until it
    /// is attached on its home shard; TLS, WebSocket and PROXY connections always).
    Off,
    /// A multishot receive is in the ring; its bytes are decoded as they come.
    Armed,
    /// Its cancel is queued (the connection may not be read now); bytes that still come
    /// are kept in the connection until it is read again.
    Cancelling,
    /// No receive is in the ring (it ended: cancelled, out of buffers, or with its last
    /// bytes); armed again when the connection may be read.
    Stopped,
}

/// Completions handled per turn: the channels and timers are served between batches.
const COMPLETIONS_PER_TURN: usize = 1024;

/// The poller token of the ring's fd (a listener-style token no listener uses).
pub(crate) const RING_INDEX: usize = u32::MAX as usize - 2;

use std::os::fd::AsFd;

use super::core::{Core, Phase};
use super::ids::{ConnId, ConnKey};
use super::io::Step;

impl Core {
    /// Moves connection `id`'s input from the poller to the ring, once it is attached here
    /// (a plain TCP connection, open, not closing): the poller then watches only its output
    /// space, and a multishot receive brings its bytes. No-op on the epoll driver.
    pub(crate) fn ring_adopt(&mut self, id: ConnId) {
        let Some(ring) = self.recv_ring.as_mut() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.ring != RingRecv::Off
            || conn.phase != Phase::Open
            || conn.client.is_none()
            || conn.peer_closed
            || conn.transport().is_some()
        {
            return;
        }
        let Some(fd) = conn.fd.as_ref() else {
            return;
        };
        let token = ConnKey::new(id, conn.generation).token();
        if let Err(e) = self.poller.watch_output(fd.as_fd(), token) {
            crate::log!(
                WARN,
                self.log_id,
                "cannot move the connection from {} to the receive ring: {e}",
                conn.peer
            );
            return;
        }
        ring.arm(fd.as_raw_fd(), token);
        conn.ring = RingRecv::Armed;
    }

    /// Takes this turn's completions (unless every read is held) and acts on each; returns
    /// true when completions are left for the next turn.
    pub(crate) fn ring_pass(&mut self) -> bool {
        if self.reads_held() {
            return false;
        }
        let Some(ring) = self.recv_ring.as_mut() else {
            return false;
        };
        let mut done = std::mem::take(&mut self.completions);
        done.clear();
        let more = ring.take_completions(&mut done, COMPLETIONS_PER_TURN);
        if !done.is_empty() {
            self.tick_clock();
            // As for a read (`on_readable`): envelopes already queued were sent before these
            // bytes arrived (the completions were taken first), so they apply first.
            if super::mailbox::any_pending(&self.inbox) {
                self.drain_inbox(super::event_loop::DRAIN_BUDGET);
            }
            for c in &done {
                self.on_completion(*c);
            }
            if let Some(ring) = self.recv_ring.as_mut() {
                ring.publish();
            }
        }
        self.completions = done;
        more
    }

    fn on_completion(&mut self, c: Completion) {
        let key = ConnKey::from_token(c.token);
        let id = key.id;
        let live = self
            .conns
            .live(key)
            .is_some_and(|conn| conn.ring != RingRecv::Off);
        if live {
            if let (Ok(n @ 1..), Some(bid), Some(ring)) =
                (usize::try_from(c.result), c.buffer, self.recv_ring.as_ref())
            {
                // SAFETY: `bid` was just handed over by this completion and is recycled
                // only below, after `bytes` is last used; the ring lives in `self` for the
                // shard's whole life.
                let bytes = unsafe { ring.bytes(bid, n) };
                self.ring_input(id, bytes);
            }
            if !c.more {
                self.ring_ended(key, c.result);
            }
        }
        if let (Some(bid), Some(ring)) = (c.buffer, self.recv_ring.as_mut()) {
            ring.recycle(bid);
        }
    }

    /// Whether connection `id`'s input may be decoded now (see `io::service_read`).
    fn ring_may_read(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .is_some_and(|c| c.phase == Phase::Open && !self.reads_paused(c))
            && !self.read_held(id)
    }

    /// Bytes the ring received for connection `id`: decoded now, or kept until it may be
    /// read (its receive is then cancelled: what the client sends meanwhile waits in the
    /// socket, as it does on the epoll path).
    fn ring_input(&mut self, id: ConnId, bytes: &[u8]) {
        self.stats.bytes_received += bytes.len() as u64;
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.phase != Phase::Open {
            // Closing: input is no longer acted on (a lingering connection's is thrown away).
            return;
        }
        if conn.ring == RingRecv::Armed && self.ring_may_read(id) {
            if let Some(conn) = self.conns.get_mut(id) {
                // What this read publishes decides which shards it feeds (`send_to`).
                conn.feeds = 0;
            }
            match self.process_input(id, bytes) {
                Step::Continue => {}
                // An open connection is never handed off; close it rather than move an fd
                // whose receive is in this ring.
                Step::Close | Step::Handoff(_) => self.request_close(id),
            }
            return;
        }
        let held = self.read_held(id);
        let Some(ring) = self.recv_ring.as_mut() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let mut input = conn.take_input().unwrap_or_default();
        input.extend_from_slice(bytes);
        conn.keep_input(input);
        if conn.ring == RingRecv::Armed {
            ring.cancel(ConnKey::new(id, conn.generation).token());
            conn.ring = RingRecv::Cancelling;
        }
        if held {
            self.again.push(ConnKey::new(id, conn.generation));
        } else {
            // Paused for its output (the drained output resumes it, `io::on_event`), or
            // cancelled for a hold that is over (the receive's last completion resumes it,
            // `ring_ended`).
            conn.read_pending = true;
        }
    }

    /// Connection `id`'s receive ended with `result` (its last completion).
    fn ring_ended(&mut self, key: ConnKey, result: i32) {
        let id = key.id;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.ring = RingRecv::Stopped;
        let eof = result == 0;
        let error = (result < 0 && result != -libc::ECANCELED && result != -libc::ENOBUFS)
            .then(|| std::io::Error::from_raw_os_error(-result));
        match conn.phase {
            Phase::Lingering | Phase::Draining => {
                if eof || error.is_some() {
                    self.close_now(id);
                } else {
                    // Input is read and thrown away until the client closes.
                    self.ring_arm(id);
                }
            }
            Phase::Open => {
                if let Some(e) = error {
                    self.close_lost(id, Some(e));
                    return;
                }
                conn.peer_closed |= eof;
                if self.ring_may_read(id) {
                    self.ring_resume(id);
                } else if self.read_held(id) {
                    self.again.push(key);
                } else if let Some(conn) = self.conns.get_mut(id) {
                    conn.read_pending = true;
                }
            }
            // Closing at the end of this turn: a closed peer makes it close at once
            // (`finish_conn`), otherwise it lingers and is armed again then.
            _ => conn.peer_closed |= eof || error.is_some(),
        }
    }

    /// Arms connection `id`'s receive again if none is in the ring.
    pub(crate) fn ring_arm(&mut self, id: ConnId) {
        let Some(ring) = self.recv_ring.as_mut() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.ring != RingRecv::Stopped || conn.peer_closed {
            return;
        }
        if let Some(fd) = conn.fd.as_ref() {
            ring.arm(fd.as_raw_fd(), ConnKey::new(id, conn.generation).token());
            conn.ring = RingRecv::Armed;
        }
    }

    /// Connection `id` (on the ring) may be read again: what was kept is decoded, then its
    /// receive is armed again (or, if the peer closed meanwhile, it closes).
    pub(crate) fn ring_resume(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        match conn.phase {
            Phase::Lingering | Phase::Draining => return self.ring_arm(id),
            Phase::Open => {}
            _ => return,
        }
        let paused = self.reads_paused(conn);
        let kept = conn.ring != RingRecv::Armed && conn.has_input();
        if let Some(conn) = self.conns.get_mut(id) {
            conn.read_pending = paused;
        }
        if paused {
            return;
        }
        if kept {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.feeds = 0;
            }
            match self.process_input(id, &[]) {
                Step::Continue => {}
                Step::Close | Step::Handoff(_) => {
                    self.request_close(id);
                    return;
                }
            }
        }
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        if conn.peer_closed && conn.ring == RingRecv::Stopped {
            self.close_lost(id, None);
            return;
        }
        self.ring_arm(id);
    }

    /// Connection `id` (on the ring) has input the shard has not decoded yet: kept while it
    /// could not be read, or possibly waiting in the ring while every read is held.
    pub(crate) fn ring_unread(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some_and(|c| {
            c.ring != RingRecv::Off
                && ((c.ring != RingRecv::Armed && c.has_input()) || self.reads_held())
        })
    }

    /// The connection leaves the shard (its fd closes next): its receive is cancelled. The
    /// request keeps its own reference to the socket until it ends, and its completions no
    /// longer match a live connection.
    pub(crate) fn ring_release(&mut self, conn: &super::core::Conn, id: ConnId) {
        if conn.ring == RingRecv::Armed
            && let Some(ring) = self.recv_ring.as_mut()
        {
            ring.cancel(ConnKey::new(id, conn.generation).token());
        }
    }

    /// The end of a turn: what was armed or cancelled goes to the kernel.
    pub(crate) fn ring_submit(&mut self) {
        if let Some(ring) = self.recv_ring.as_mut()
            && let Err(e) = ring.submit()
        {
            crate::log!(WARN, self.log_id, "the receive ring failed: {e}");
        }
    }

    /// The shard's last step: every receive is cancelled (the connections are closed), and
    /// their last completions are waited for so that the buffer pool can be freed.
    pub(crate) fn ring_drain(&mut self) {
        if let Some(ring) = self.recv_ring.as_mut() {
            ring.drain(Duration::from_secs(1));
        }
    }
}
