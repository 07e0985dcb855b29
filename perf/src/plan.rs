//! The run's plan (who publishes where, who expects what, which thread owns which connection)
//! and the little state threads share: per-publisher sent counters, per-edge delivery progress
//! for the closed loop, park flags and wake-ups, live counters for progress lines.
//!
//! An *edge* is one (receiver slot, publisher) stream whose messages are accounted for. A slot
//! is a subscriber, or a whole `$share` group (a message is due once per group). Every slot is
//! owned by exactly one thread, so its trackers need no locks; only the progress head of each
//! edge is published through an atomic.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::cli::{Config, Scenario};
use crate::link::LinkConfig;
use crate::sys::EventFd;

/// Keeps atomics written by different threads on different cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher(u32),
    Subscriber(u32),
    Idle,
    /// Subscriptions scenario: connection number `n` of the run, subscribing to its filters
    /// (`subs::filter`) once the main thread says so.
    Filters(u32),
}

#[derive(Debug, Clone)]
pub struct ConnSpec {
    pub role: Role,
    pub client_id: String,
    pub source: Option<Ipv4Addr>,
}

/// Which publishers a slot receives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    All,
    One(u32),
}

#[derive(Debug, Clone)]
pub struct SlotPlan {
    pub expect: Expect,
    /// Edge id of its first expected publisher; edges of a slot are contiguous.
    pub edge_base: u32,
}

impl SlotPlan {
    /// Edge index within the slot for messages of `publisher`, if expected.
    pub fn local(&self, publisher: u32, publishers: usize) -> Option<u32> {
        match self.expect {
            Expect::All if (publisher as usize) < publishers => Some(publisher),
            Expect::One(p) if p == publisher => Some(0),
            _ => None,
        }
    }

    pub fn edge_count(&self, publishers: usize) -> usize {
        match self.expect {
            Expect::All => publishers,
            Expect::One(_) => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubPlan {
    pub topic: String,
    /// Edges that must deliver this publisher's messages (one per receiving slot).
    pub edges: Vec<u32>,
    pub thread: usize,
}

#[derive(Debug, Clone)]
pub struct SubPlan {
    pub filter: String,
    pub slot: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub pubs: Vec<PubPlan>,
    pub subs: Vec<SubPlan>,
    pub slots: Vec<SlotPlan>,
    /// Owner thread of each slot.
    pub slot_thread: Vec<usize>,
    pub edges: usize,
    /// Publisher of each edge.
    pub edge_pub: Vec<u32>,
    pub conns_by_thread: Vec<Vec<ConnSpec>>,
}

impl Plan {
    pub fn build(cfg: &Config, tag: u32) -> Plan {
        let threads = cfg.threads;
        let pid = std::process::id();
        let mut plan = Plan {
            conns_by_thread: vec![Vec::new(); threads],
            ..Plan::default()
        };
        let source = |n: usize| {
            (cfg.source_ips > 1).then(|| Ipv4Addr::new(127, 0, 0, 1 + (n % cfg.source_ips) as u8))
        };
        let mut n = 0usize;
        let mut add = |plan: &mut Plan, thread: usize, role: Role, kind: char, i: usize| {
            plan.conns_by_thread[thread].push(ConnSpec {
                role,
                client_id: format!("{}-{pid}-{kind}{i}", cfg.client_prefix),
                source: source(n),
            });
            n += 1;
        };
        if cfg.scenario == Scenario::Subscriptions {
            for i in 0..cfg.connections {
                add(&mut plan, i % threads, Role::Filters(i as u32), 'f', i);
            }
            return plan;
        }
        if !cfg.scenario.is_messaging() {
            for i in 0..cfg.connections {
                add(&mut plan, i % threads, Role::Idle, 'i', i);
            }
            return plan;
        }
        let base = format!("rmqb/{tag:08x}");
        let p_count = cfg.publishers;
        // Slots and subscribers. Members of a shared group share one slot and one thread.
        let (slot_count, filter) = match cfg.scenario {
            Scenario::Pairs => (p_count, String::new()),
            Scenario::Shared => (1, format!("$share/{}/{base}/#", cfg.client_prefix)),
            _ => (cfg.subscribers, format!("{base}/#")),
        };
        let mut edge = 0u32;
        for s in 0..slot_count {
            let expect = if cfg.scenario == Scenario::Pairs {
                Expect::One(s as u32)
            } else {
                Expect::All
            };
            let slot = SlotPlan {
                expect,
                edge_base: edge,
            };
            edge += slot.edge_count(p_count) as u32;
            plan.slots.push(slot);
            plan.slot_thread.push(s % threads);
        }
        plan.edges = edge as usize;
        plan.edge_pub = vec![0; plan.edges];
        for i in 0..cfg.subscribers {
            let (slot, filter) = match cfg.scenario {
                Scenario::Pairs => (i, format!("{base}/{i}")),
                Scenario::Shared => (0, filter.clone()),
                _ => (i, filter.clone()),
            };
            plan.subs.push(SubPlan {
                filter,
                slot: slot as u32,
            });
            let thread = plan.slot_thread[slot];
            add(&mut plan, thread, Role::Subscriber(i as u32), 's', i);
        }
        for i in 0..p_count {
            let thread = match cfg.scenario {
                // A pair lives on one thread: its round trip needs no cross-thread wake-up.
                Scenario::Pairs => i % threads,
                // Publishers start on the thread after the subscribers' first one.
                _ => (i + 1) % threads,
            };
            let topic = match cfg.scenario {
                Scenario::Pairs => format!("{base}/{i}"),
                _ => format!("{base}/{}", i % cfg.topics),
            };
            let edges: Vec<u32> = plan
                .slots
                .iter()
                .filter_map(|s| s.local(i as u32, p_count).map(|l| s.edge_base + l))
                .collect();
            for &e in &edges {
                plan.edge_pub[e as usize] = i as u32;
            }
            plan.pubs.push(PubPlan {
                topic,
                edges,
                thread,
            });
            add(&mut plan, thread, Role::Publisher(i as u32), 'p', i);
        }
        plan
    }
}

/// Counters a worker publishes once per loop turn for the progress lines.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

#[derive(Debug)]
pub struct ThreadShared {
    /// Set while the worker may block in epoll; a thread that advances one of its publishers'
    /// edges swaps it to false and writes `wake` (only then: wake-ups cost a syscall).
    pub parked: Padded<AtomicBool>,
    pub wake: EventFd,
    pub live: Padded<Live>,
}

/// Sentinel for "not started yet" in `Shared::start_ns`.
pub const NOT_STARTED: u64 = u64::MAX;

#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub plan: Plan,
    /// Random per run, carried in every payload.
    pub tag: u32,
    pub epoch: Instant,
    /// Start of the warm-up, in ns since `epoch`; NOT_STARTED until every connection is ready.
    pub start_ns: AtomicU64,
    pub stop: AtomicBool,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    /// Subscriptions scenario: set by the main thread once every connection is ready (and
    /// the broker's RSS with connections only was read); workers then send their SUBSCRIBEs.
    pub subscribe_now: AtomicBool,
    /// Subscriptions scenario: connections whose every filter was granted, and those that had
    /// one refused.
    pub subscribed: AtomicUsize,
    pub refused: AtomicUsize,
    /// Messages each publisher has queued so far (sequence numbers 0..sent).
    pub pub_sent: Vec<Padded<AtomicU64>>,
    /// One past the highest sequence number delivered on each edge.
    pub edge_head: Vec<Padded<AtomicU64>>,
    pub threads: Vec<ThreadShared>,
    /// TLS and WebSocket settings of every connection; `None` for plain TCP.
    pub link: Option<LinkConfig>,
}

impl Shared {
    pub fn new(
        cfg: Config,
        plan: Plan,
        tag: u32,
        link: Option<LinkConfig>,
    ) -> std::io::Result<Shared> {
        let threads = (0..cfg.threads)
            .map(|_| {
                Ok(ThreadShared {
                    parked: Padded(AtomicBool::new(false)),
                    wake: EventFd::new()?,
                    live: Padded(Live::default()),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Shared {
            pub_sent: (0..plan.pubs.len()).map(|_| Padded::default()).collect(),
            edge_head: (0..plan.edges).map(|_| Padded::default()).collect(),
            cfg,
            plan,
            tag,
            epoch: Instant::now(),
            start_ns: AtomicU64::new(NOT_STARTED),
            stop: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            subscribe_now: AtomicBool::new(false),
            subscribed: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            threads,
            link,
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Messages of `publisher` delivered on every edge (the closed loop's progress).
    pub fn delivered(&self, publisher: usize) -> u64 {
        self.plan.pubs[publisher]
            .edges
            .iter()
            .map(|&e| self.edge_head[e as usize].0.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    pub fn wake_all(&self) {
        for t in &self.threads {
            t.wake.notify();
        }
    }

    /// True when every edge has delivered everything its publisher sent.
    pub fn all_delivered(&self) -> bool {
        (0..self.plan.pubs.len())
            .all(|p| self.delivered(p) >= self.pub_sent[p].0.load(Ordering::SeqCst))
    }
}

/// Measurement window boundaries, in ns since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub start: u64,
    pub warm_end: u64,
    pub meas_end: u64,
}

impl Timing {
    pub fn from_start(cfg: &Config, start: u64) -> Timing {
        let warm_end = start + cfg.warmup.as_nanos() as u64;
        Timing {
            start,
            warm_end,
            meas_end: warm_end + cfg.duration.as_nanos() as u64,
        }
    }

    pub fn measured(&self, t: u64) -> bool {
        t >= self.warm_end && t < self.meas_end
    }
}
