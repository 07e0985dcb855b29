//! One event loop per thread over many non-blocking connections (edge-triggered epoll).
//!
//! A loop turn: wait for events (or a wake-up, or the next open-loop send time), read each
//! readable socket into the thread's scratch buffer and handle every complete packet, let each
//! publisher queue what the load model allows, then write each connection's queued output in
//! one `send` call, publish delivery progress and wake parked threads whose publishers it
//! unblocked. Protocol handling per packet lives in `traffic.rs`.
//!
//! It owns its connections, publisher and subscriber state and accounting; it never blocks on
//! another thread and never panics on an I/O result (failures are counted per kind).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::accounting::SeqTracker;
use crate::link::Link;
use crate::plan::{NOT_STARTED, Role, Shared, Timing};
use crate::report::{ErrorKind, ThreadReport};
use crate::sys::{self, Epoll, Fd};
use crate::traffic::{PubState, SubState};
use crate::wire::{self, WireError};

/// Token of the wake-up eventfd; connection tokens are their index.
const WAKE_TOKEN: u64 = u64::MAX;
/// Reads per connection per turn before it yields to the others (it is revisited next turn).
const READS_PER_TURN: usize = 4;
/// Bytes read per call; big enough to take everything a busy socket holds at once.
const SCRATCH: usize = 256 * 1024;
/// Keep alive sent in CONNECT; a PINGREQ goes out after half of it without other traffic.
pub const KEEP_ALIVE_S: u16 = 60;
/// Longest sleep in epoll: phase changes also wake us explicitly, this is only a backstop.
const MAX_SLEEP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    NotStarted,
    /// Non-blocking connect in progress; CONNECT is already queued.
    Connecting,
    AwaitConnack,
    AwaitSuback,
    Ready,
    Closed,
}

#[derive(Debug)]
pub struct Conn {
    pub fd: Option<Fd>,
    pub state: ConnState,
    /// Role with the index of the worker-local publisher or subscriber state.
    pub role: Role,
    /// Index into this thread's connection specs (client id, source address).
    pub spec: usize,
    pub out: Vec<u8>,
    /// Bytes of `out` already written.
    pub out_pos: usize,
    /// Set after a short write; cleared by the next EPOLLOUT edge.
    pub write_blocked: bool,
    pub in_dirty: bool,
    /// An incomplete trailing packet from the last read.
    pub pending: Vec<u8>,
    pub started_ns: u64,
    pub last_tx_ns: u64,
    /// TLS and/or WebSocket under MQTT (`--tls`, `--ws`); `out` then holds MQTT bytes that
    /// the link wraps at flush time, once its handshakes are done.
    pub link: Option<Box<Link>>,
}

impl Conn {
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos + self.link.as_ref().map_or(0, |l| l.queued())
    }
}

#[derive(Debug)]
pub struct Worker {
    pub sh: Arc<Shared>,
    pub id: usize,
    epoll: Epoll,
    pub conns: Vec<Conn>,
    next_open: usize,
    handshaking: usize,
    handshake_cap: usize,
    pub pubs: Vec<PubState>,
    pub subs: Vec<SubState>,
    /// Trackers of the slots this thread owns, indexed by edge id (None for others' edges).
    pub trackers: Vec<Option<SeqTracker>>,
    /// Edges whose head moved this turn, to publish once per turn.
    pub touched: Vec<u32>,
    pub touched_flag: Vec<bool>,
    /// Threads to wake at the end of this turn (reused to avoid an allocation per turn).
    wake: Vec<bool>,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    carry: Vec<usize>,
    pub now: u64,
    pub timing: Option<Timing>,
    pub report: ThreadReport,
    /// Subscriptions scenario: SUBACKs still due per connection (empty until it subscribes).
    pub subacks_due: Vec<u32>,
    last_tick: u64,
    stopping: bool,
    /// The first TLS/WebSocket error of this thread was printed.
    link_error_shown: bool,
}

impl Worker {
    pub fn new(sh: Arc<Shared>, id: usize) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.add(sh.threads[id].wake.raw(), WAKE_TOKEN)?;
        let specs = &sh.plan.conns_by_thread[id];
        let mut w = Worker {
            epoll,
            conns: Vec::with_capacity(specs.len()),
            next_open: 0,
            handshaking: 0,
            handshake_cap: sh.cfg.concurrency.div_ceil(sh.cfg.threads),
            pubs: Vec::new(),
            subs: Vec::new(),
            trackers: (0..sh.plan.edges).map(|_| None).collect(),
            touched: Vec::new(),
            touched_flag: vec![false; sh.plan.edges],
            wake: vec![false; sh.cfg.threads],
            scratch: vec![0; SCRATCH.max(2 * (sh.cfg.payload + 4096))],
            dirty: Vec::new(),
            carry: Vec::new(),
            now: 0,
            timing: None,
            report: ThreadReport::new(),
            subacks_due: Vec::new(),
            last_tick: 0,
            stopping: false,
            link_error_shown: false,
            id,
            sh: sh.clone(),
        };
        for (spec, cs) in specs.iter().enumerate() {
            let role = match cs.role {
                Role::Publisher(p) => Role::Publisher(w.add_publisher(p, spec) as u32),
                Role::Subscriber(s) => Role::Subscriber(w.add_subscriber(s) as u32),
                Role::Idle => Role::Idle,
                Role::Filters(n) => Role::Filters(n),
            };
            w.conns.push(Conn {
                fd: None,
                state: ConnState::NotStarted,
                role,
                spec,
                out: Vec::new(),
                out_pos: 0,
                write_blocked: false,
                in_dirty: false,
                pending: Vec::new(),
                started_ns: 0,
                last_tx_ns: 0,
                link: None,
            });
        }
        Ok(w)
    }

    fn add_subscriber(&mut self, s: u32) -> usize {
        let plan = &self.sh.plan;
        let slot = &plan.slots[plan.subs[s as usize].slot as usize];
        let n = slot.edge_count(plan.pubs.len());
        for e in slot.edge_base..slot.edge_base + n as u32 {
            if self.trackers[e as usize].is_none() {
                self.trackers[e as usize] = Some(SeqTracker::default());
            }
        }
        self.subs.push(SubState::new(s, &self.sh, n));
        self.subs.len() - 1
    }

    fn add_publisher(&mut self, p: u32, conn: usize) -> usize {
        self.pubs.push(PubState::new(&self.sh, p, conn));
        self.pubs.len() - 1
    }

    /// Runs until the main thread sets `stop`; returns what this thread measured.
    pub fn run(mut self) -> ThreadReport {
        sys::tighten_timer_slack();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            self.now = self.sh.now_ns();
            if self.sh.stop.load(Ordering::Acquire) {
                break;
            }
            self.open_connections();
            if self.subacks_due.is_empty() && self.sh.subscribe_now.load(Ordering::Acquire) {
                self.subscribe_filters();
            }
            if self.timing.is_none() {
                let start = self.sh.start_ns.load(Ordering::Acquire);
                if start != NOT_STARTED {
                    self.timing = Some(Timing::from_start(&self.sh.cfg, start));
                    self.schedule_open_loop(start);
                }
            }
            let timeout = self.sleep_time();
            // Only EINTR-like failures are possible with valid arguments: treat as no events.
            let n = self.epoll.wait(&mut events, timeout).unwrap_or_default();
            self.report.syscalls += 1;
            self.sh.threads[self.id]
                .parked
                .0
                .store(false, Ordering::SeqCst);
            self.now = self.sh.now_ns();
            for ev in &events[..n] {
                let (token, bits) = (ev.u64, ev.events);
                if token == WAKE_TOKEN {
                    self.sh.threads[self.id].wake.drain();
                    self.report.syscalls += 1;
                } else {
                    self.on_event(token as usize, bits);
                }
            }
            for i in std::mem::take(&mut self.carry) {
                self.read_conn(i);
            }
            self.now = self.sh.now_ns();
            self.publish_turn();
            self.flush_all();
            self.publish_progress();
            self.tick();
        }
        self.shutdown();
        self.report
    }

    /// Opens connections while fewer than `handshake_cap` handshakes are in flight.
    fn open_connections(&mut self) {
        while self.handshaking < self.handshake_cap && self.next_open < self.conns.len() {
            let i = self.next_open;
            self.next_open += 1;
            let spec = &self.sh.plan.conns_by_thread[self.id][self.conns[i].spec];
            self.conns[i].started_ns = self.now;
            self.conns[i].state = ConnState::Connecting;
            self.handshaking += 1;
            let fd = sys::start_connect(spec.source, self.sh.cfg.host, self.sh.cfg.port)
                .and_then(|fd| self.epoll.add(fd.raw(), i as u64).map(|()| fd));
            let link = match &self.sh.link {
                None => Ok(None),
                Some(cfg) => {
                    Link::new(cfg, (self.id as u64) << 32 | i as u64).map(|l| Some(Box::new(l)))
                }
            };
            let Ok(link) = link else {
                self.fail(i, ErrorKind::Transport);
                continue;
            };
            match fd {
                Ok(fd) => {
                    let c = &mut self.conns[i];
                    c.fd = Some(fd);
                    c.link = link;
                    let persistent =
                        self.sh.cfg.persistent && matches!(spec.role, Role::Subscriber(_));
                    let cfg = &self.sh.cfg;
                    let credentials = cfg.username.as_deref().map(|u| (u, cfg.password.as_str()));
                    wire::encode_connect(
                        &mut c.out,
                        cfg.protocol,
                        &spec.client_id,
                        KEEP_ALIVE_S,
                        persistent,
                        credentials,
                    );
                }
                Err(_) => self.fail(i, ErrorKind::Connect),
            }
        }
    }

    /// How long epoll may sleep: zero with work left over, until the next scheduled send in
    /// open loop, else until woken (bounded by MAX_SLEEP).
    fn sleep_time(&mut self) -> Option<Duration> {
        if !self.carry.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut sleep = MAX_SLEEP;
        if let Some(next) = self.next_due() {
            sleep = sleep.min(Duration::from_nanos(next.saturating_sub(self.now)));
        }
        if sleep.is_zero() {
            return Some(sleep);
        }
        // Park, then look once more: a delivery published before `parked` was visible to the
        // other thread would otherwise be missed until MAX_SLEEP.
        self.sh.threads[self.id]
            .parked
            .0
            .store(true, Ordering::SeqCst);
        if self.any_publisher_unblocked() {
            self.sh.threads[self.id]
                .parked
                .0
                .store(false, Ordering::SeqCst);
            return Some(Duration::ZERO);
        }
        Some(sleep)
    }

    fn on_event(&mut self, i: usize, bits: u32) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.state == ConnState::Closed {
            return;
        }
        let err = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if c.state == ConnState::Connecting {
            if bits & libc::EPOLLOUT as u32 == 0 && !err {
                return;
            }
            let res =
                c.fd.as_ref()
                    .map_or(Ok(()), |fd| sys::take_socket_error(fd.raw()));
            if res.is_err() {
                self.fail(i, ErrorKind::Connect);
                return;
            }
            c.state = ConnState::AwaitConnack;
        }
        if bits & libc::EPOLLOUT as u32 != 0 {
            c.write_blocked = false;
        }
        if c.queued() > 0 {
            self.mark_dirty(i);
        }
        if bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 || err {
            self.read_conn(i);
        }
    }

    pub fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.in_dirty {
            c.in_dirty = true;
            self.dirty.push(i);
        }
    }

    /// Reads what the socket holds (up to READS_PER_TURN calls) and handles every complete
    /// packet; an incomplete tail is kept in the connection's `pending`.
    fn read_conn(&mut self, i: usize) {
        if self.conns[i].link.is_some() {
            self.read_linked(i);
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut drained = false;
        for _ in 0..READS_PER_TURN {
            let c = &mut self.conns[i];
            let Some(fd) = c.fd.as_ref() else {
                drained = true;
                break;
            };
            let have = c.pending.len();
            scratch[..have].copy_from_slice(&c.pending);
            let space = scratch.len() - have;
            self.report.syscalls += 1;
            let n = match sys::read(fd.raw(), &mut scratch[have..]) {
                Ok(0) => Err(ErrorKind::Closed),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ErrorKind::Closed),
                Err(_) => Err(ErrorKind::Io),
            };
            let n = match n {
                Ok(n) => n,
                Err(kind) => {
                    self.fail(i, kind);
                    drained = true;
                    break;
                }
            };
            self.now = self.sh.now_ns();
            let Ok(used) = self.handle_bytes(i, &scratch[..have + n]) else {
                self.fail(i, ErrorKind::Protocol);
                drained = true;
                break;
            };
            let c = &mut self.conns[i];
            c.pending.clear();
            if c.state == ConnState::Closed {
                drained = true;
                break;
            }
            c.pending.extend_from_slice(&scratch[used..have + n]);
            if c.pending.len() > scratch.len() / 2 {
                self.fail(i, ErrorKind::Protocol); // a frame larger than we accept
                drained = true;
                break;
            }
            if n < space {
                // A short read emptied the socket; new data will raise a new edge.
                drained = true;
                break;
            }
        }
        if !drained {
            // Still data after READS_PER_TURN full reads, and edge-triggered epoll will not
            // report it again: come back next turn, after the other connections.
            self.carry.push(i);
        }
        self.scratch = scratch;
    }

    /// `read_conn` for a connection with a link: socket bytes go through it, and the MQTT
    /// bytes it gives (after the incomplete tail kept from the last read, in `pending`) are
    /// handled; what the link must send (handshake, pong) marks the connection dirty.
    fn read_linked(&mut self, i: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut drained = false;
        for _ in 0..READS_PER_TURN {
            let c = &mut self.conns[i];
            let (Some(fd), Some(link)) = (c.fd.as_ref(), c.link.as_mut()) else {
                drained = true;
                break;
            };
            self.report.syscalls += 1;
            let n = match sys::read(fd.raw(), &mut scratch) {
                Ok(0) => Err(ErrorKind::Closed),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ErrorKind::Closed),
                Err(_) => Err(ErrorKind::Io),
            };
            let n = match n {
                Ok(n) => n,
                Err(kind) => {
                    self.fail(i, kind);
                    drained = true;
                    break;
                }
            };
            let was_ready = link.ready();
            let mut app = std::mem::take(&mut c.pending);
            let fed = link.input(&scratch[..n], &mut app);
            let ready = link.ready();
            let wire_out = link.queued() > 0;
            if let Err(e) = fed {
                if !self.link_error_shown && !self.sh.cfg.quiet && !self.stopping {
                    // One line per thread: enough to tell a certificate problem from a
                    // refused upgrade; the counts are in the report.
                    eprintln!("ringmq-bench: connection {i}: {e}");
                    self.link_error_shown = true;
                }
                let kind = match e {
                    crate::link::LinkError::Closed => ErrorKind::Closed,
                    crate::link::LinkError::Tls(_) | crate::link::LinkError::Ws(_) => {
                        ErrorKind::Transport
                    }
                };
                self.fail(i, kind);
                drained = true;
                break;
            }
            if wire_out || (ready && !was_ready) {
                self.mark_dirty(i);
            }
            self.now = self.sh.now_ns();
            let Ok(used) = self.handle_bytes(i, &app) else {
                self.fail(i, ErrorKind::Protocol);
                drained = true;
                break;
            };
            let c = &mut self.conns[i];
            if c.state == ConnState::Closed {
                drained = true;
                break;
            }
            app.drain(..used);
            if app.len() > scratch.len() / 2 {
                self.fail(i, ErrorKind::Protocol); // a frame larger than we accept
                drained = true;
                break;
            }
            c.pending = app;
            if n < scratch.len() {
                drained = true;
                break;
            }
        }
        if !drained {
            self.carry.push(i);
        }
        self.scratch = scratch;
    }

    /// Handles every complete frame in `buf`; returns the bytes consumed.
    fn handle_bytes(&mut self, i: usize, buf: &[u8]) -> Result<usize, WireError> {
        let max = self.scratch_len_limit();
        let mut used = 0;
        while let Some((frame, n)) = wire::split_frame(&buf[used..], max)? {
            used += n;
            self.on_frame(i, frame)?;
            if self.conns[i].state == ConnState::Closed {
                break;
            }
        }
        Ok(used)
    }

    /// Frames must fit in half the scratch buffer with their header.
    fn scratch_len_limit(&self) -> usize {
        SCRATCH.max(2 * (self.sh.cfg.payload + 4096)) / 2
    }

    /// The connection finished its handshake (CONNACK, and SUBACK for subscribers).
    pub fn became_ready(&mut self, i: usize) {
        self.conns[i].state = ConnState::Ready;
        self.handshaking = self.handshaking.saturating_sub(1);
        let us = self.now.saturating_sub(self.conns[i].started_ns) / 1000;
        self.report.connack.saturating_record(us.max(1));
        self.report.last_ready_ns = self.report.last_ready_ns.max(self.now);
        self.sh.ready.fetch_add(1, Ordering::AcqRel);
    }

    /// Closes a connection and counts why. Errors after we asked to stop are not failures.
    pub fn fail(&mut self, i: usize, kind: ErrorKind) {
        let c = &mut self.conns[i];
        if c.state == ConnState::Closed {
            return;
        }
        let handshaking = matches!(
            c.state,
            ConnState::Connecting | ConnState::AwaitConnack | ConnState::AwaitSuback
        );
        c.state = ConnState::Closed;
        c.fd = None;
        c.out = Vec::new();
        c.out_pos = 0;
        c.pending = Vec::new();
        c.link = None;
        if self.stopping {
            return;
        }
        self.report.count_error(kind);
        if handshaking {
            self.handshaking = self.handshaking.saturating_sub(1);
            self.sh.failed.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// One `send` per dirty connection with everything it has queued.
    fn flush_all(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].in_dirty = false;
            self.flush(i);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.write_blocked || c.queued() == 0 || c.state == ConnState::Connecting {
            return;
        }
        if c.link.is_some() {
            self.flush_linked(i);
            return;
        }
        let Some(fd) = c.fd.as_ref() else { return };
        self.report.syscalls += 1;
        match sys::send(fd.raw(), &c.out[c.out_pos..]) {
            Ok(n) => {
                c.out_pos += n;
                c.last_tx_ns = self.now;
                if c.out_pos == c.out.len() {
                    c.out.clear();
                    c.out_pos = 0;
                } else {
                    c.write_blocked = true;
                    if c.out_pos >= 64 * 1024 {
                        c.out.drain(..c.out_pos);
                        c.out_pos = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.write_blocked = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.mark_dirty(i),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.fail(i, ErrorKind::Closed)
            }
            Err(_) => self.fail(i, ErrorKind::Io),
        }
    }

    /// `flush` for a connection with a link: the MQTT bytes are wrapped (once the handshakes
    /// are done) into one WebSocket frame / TLS records, then the link's bytes are sent.
    fn flush_linked(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let (Some(fd), Some(link)) = (c.fd.as_ref(), c.link.as_mut()) else {
            return;
        };
        if link.ready() && c.out_pos < c.out.len() {
            if link.wrap(&c.out[c.out_pos..]).is_err() {
                self.fail(i, ErrorKind::Transport);
                return;
            }
            c.out.clear();
            c.out_pos = 0;
        }
        if link.queued() == 0 {
            return;
        }
        self.report.syscalls += 1;
        match sys::send(fd.raw(), &link.wire[link.wire_pos..]) {
            Ok(n) => {
                let short = n < link.queued();
                link.sent(n);
                c.last_tx_ns = self.now;
                c.write_blocked = short;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.write_blocked = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.mark_dirty(i),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.fail(i, ErrorKind::Closed)
            }
            Err(_) => self.fail(i, ErrorKind::Io),
        }
    }

    /// Publishes moved edge heads and wakes parked threads owning their publishers.
    fn publish_progress(&mut self) {
        let live = &self.sh.threads[self.id].live.0;
        live.sent.store(self.report.sent_total, Ordering::Relaxed);
        live.received
            .store(self.report.received_total, Ordering::Relaxed);
        if self.touched.is_empty() {
            return;
        }
        for e in self.touched.drain(..) {
            self.touched_flag[e as usize] = false;
            if let Some(t) = &self.trackers[e as usize] {
                self.sh.edge_head[e as usize]
                    .0
                    .store(t.head(), Ordering::SeqCst);
            }
            let p = self.sh.plan.edge_pub[e as usize] as usize;
            self.wake[self.sh.plan.pubs[p].thread] = true;
        }
        for t in 0..self.wake.len() {
            let w = std::mem::take(&mut self.wake[t]);
            if w && t != self.id && self.sh.threads[t].parked.0.swap(false, Ordering::SeqCst) {
                self.sh.threads[t].wake.notify();
                self.report.syscalls += 1;
            }
        }
    }

    /// Once a second: PINGREQ on connections quiet for half the keep alive.
    fn tick(&mut self) {
        if self.now - self.last_tick < 1_000_000_000 {
            return;
        }
        self.last_tick = self.now;
        let quiet = u64::from(KEEP_ALIVE_S) * 500_000_000;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.state == ConnState::Ready && self.now.saturating_sub(c.last_tx_ns) > quiet {
                wire::encode_pingreq(&mut c.out);
                c.last_tx_ns = self.now;
                self.mark_dirty(i);
            }
        }
        self.flush_all();
    }

    /// DISCONNECT everyone (best effort, one write), then close; accounts lost messages.
    fn shutdown(&mut self) {
        self.stopping = true;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.state == ConnState::Ready {
                wire::encode_disconnect(&mut c.out);
                c.write_blocked = false;
                self.flush(i);
            }
            self.conns[i].fd = None;
        }
        self.finish_accounting();
    }
}
