//! The thread-per-core runtime: the only code that touches sockets, io_uring/epoll and the
//! clock.
//!
//! Owns: shard threads (one monoio runtime each, pinned when configured, io_uring where the
//! kernel allows it and epoll otherwise), the listeners (every shard accepts on its own
//! SO_REUSEPORT socket), connections and their hand-off to the client's home shard
//! (`home_shard`), the cross-shard channels, per-shard timer wheels, and start/stop.
//!
//! Files: `event_loop.rs` (the one loop of a shard and its shutdown steps), `listen.rs`
//! (listening sockets and accept), `io.rs` (readiness, read/decode and flush), `layered.rs`
//! (the same through a TLS, WebSocket or PROXY transport), `core.rs`
//! (shard state, sessions, actions, timers), `route.rs` (publish/subscribe flow and
//! envelopes), `routes.rs` (the router tables of a shard), `registry.rs` (client id ->
//! client), `slots.rs` (the chunked slab of connections and clients), `ids.rs` (their
//! typed keys: `ConnId`, `ClientSlot`, `ConnKey`), `mailbox.rs`
//! (channels, notifier, outboxes), `timer.rs` (clock and wheel), `sys.rs` (libc: sockets,
//! the epoll `Poller`, signals), `close.rs` (why connections close, the close line),
//! `stats.rs` (counters, snapshots, `$SYS`), `panic.rs` (the hook that stops the process
//! when a shard panics), `auth.rs` (CONNECT authentication, the shared `[auth]` snapshot
//! and its reload), `access.rs` (the ACL applied to a shard's clients), `mqttsn.rs` (the
//! MQTT-SN gateway's UDP socket, datagram routes and socketless connections). Logging is
//! `crate::log`; the shared statistics are `crate::metrics`.
//!
//! Must never: run protocol logic (that is `session`, `codec`, `router`), block a shard
//! thread, or share mutable state between shards except through the channels.

mod access;
mod auth;
mod clients;
mod close;
mod core;
mod event_loop;
mod hold;
mod ids;
mod io;
mod layered;
#[allow(unsafe_code)] // getrlimit
mod limits;
mod listen;
mod mailbox;
mod mqttsn;
pub mod panic;
mod partial;
mod persist;
mod recovery;
mod registry;
mod retained;
mod route;
mod routes;
mod share;
mod slots;
mod stats;
#[allow(unsafe_code)] // the socket, epoll and eventfd system calls
pub mod sys;
pub mod timer;
#[allow(unsafe_code)] // the io_uring ring, its buffer ring and their completions
mod uring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::config::{Config, DriverKind};
use crate::metrics::StatsBoard;
use crate::metrics::http::MetricsServer;
use crate::router::interest::{MAX_SHARDS, ShardId};
use crate::transport::ListenerRuntime;

use self::mailbox::{Envelope, Mesh};
use self::timer::Clock;
pub use crate::config::DEFAULT_CROSS_SHARD_QUEUE;

/// Pending connections the kernel queues per listener before `accept`.
const LISTEN_BACKLOG: i32 = 4096;

/// io_uring submission queue entries per shard. Connections and listeners never have an
/// operation in the ring (their readiness comes from the shard's poller), so a turn submits
/// only a handful: the poller's poll, the timer, the wake-up from other threads.
const RING_ENTRIES: u32 = 256;

/// Why the broker could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime of shard {shard}: {source}")]
    Runtime {
        shard: usize,
        source: std::io::Error,
    },
    #[error("cannot start shard thread {shard}: {source}")]
    Thread {
        shard: usize,
        source: std::io::Error,
    },
    #[error("{0} shards requested; at most {MAX_SHARDS} are supported")]
    TooManyShards(usize),
    #[error("shard {0} panicked")]
    ShardPanicked(usize),
    #[error("signal handling failed: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Storage(ringmq_storage::OpenError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Listener(crate::config::ConfigError),
    #[error("{0}")]
    Auth(crate::auth::AuthError),
    #[error("cannot start the password verifier threads: {0}")]
    Verifiers(std::io::Error),
}

impl BrokerError {
    /// The process exit status for this error: 2 for what the operator's settings caused
    /// (a listener whose files do not load, an address that cannot be bound), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BrokerError::Bind { .. }
            | BrokerError::Metrics { .. }
            | BrokerError::Listener(_)
            | BrokerError::TooManyShards(_) => 2,
            BrokerError::Runtime { .. }
            | BrokerError::Thread { .. }
            | BrokerError::ShardPanicked(_)
            | BrokerError::Signal(_)
            | BrokerError::Storage(_)
            | BrokerError::Auth(_)
            | BrokerError::Verifiers(_) => 1,
        }
    }
}

/// The home shard of a client id: where its session, takeover, will and expiry live (and,
/// for a topic, the shard that orders its retained updates). FNV-1a: stable across runs and
/// platforms, so storage keys stay on the same shard.
pub fn home_shard(client_id: &[u8], shards: usize) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in client_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ShardId::of_hash(h, shards)
}

/// What every shard shares (read-only after start, except the stop flag).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    pub(crate) mesh: Mesh,
    pub(crate) shards: usize,
    pub(crate) stop: AtomicBool,
    /// Shards that, after `stop`, have routed their sessions' wills and flushed the
    /// envelopes: when it reaches `shards`, every will is in a channel and connections may
    /// close (see `event_loop::Lifecycle`).
    pub(crate) wills_routed: AtomicUsize,
    /// Mixed into assigned client ids so two broker runs do not hand out the same ids.
    pub(crate) id_entropy: u64,
    /// The key of every shard's interest-replica hashes (`InterestIndex::for_shard`): one
    /// random value per run, the same on every shard.
    pub(crate) interest_seed: u64,
    /// Wall-clock milliseconds at broker-clock 0 (stored times are wall-clock times).
    pub(crate) wall_epoch_ms: u64,
    /// Shards that restored their stored sessions and sent the routing updates they make
    /// (the start-up barrier: no shard serves clients before every shard's are in).
    pub(crate) restored: AtomicUsize,
    /// What each shard holds, for the broker-wide limits (`limits.rs`).
    pub(crate) load: Vec<limits::ShardLoad>,
    /// `Limits::max_connections` in force (the fd limit when it is 0).
    pub(crate) max_connections: usize,
    /// Every shard's latest statistics (`stats.rs` writes, `$SYS` and metrics read).
    pub(crate) stats: Arc<StatsBoard>,
    /// The password and ACL files in force, the verifier threads, the failure throttle.
    pub(crate) auth: auth::AuthShared,
}

impl Shared {
    /// Reloads the password and ACL files (`AuthShared::reload`) and wakes every shard to
    /// apply them; an error keeps the rules in force.
    fn reload_auth(&self) -> Result<(), crate::auth::AuthError> {
        self.auth.reload()?;
        for n in &self.mesh.notifiers {
            n.notify();
        }
        Ok(())
    }

    fn trigger_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for n in &self.mesh.notifiers {
            n.notify();
        }
    }
}

/// A running broker. Dropping it without `shutdown` leaves the shards running.
#[derive(Debug)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// The UDP address the MQTT-SN gateway answers on (port 0 resolved).
    mqttsn_addr: Option<SocketAddr>,
    /// The storage writer: stopped (after committing everything the shards sent) once the
    /// shards are done.
    writer: Option<ringmq_storage::WriterHandle>,
    /// The Prometheus endpoint (`--metrics`), stopped with the shards.
    metrics: Option<MetricsServer>,
}

/// A cloneable way to ask a running broker to stop (e.g. from a signal thread).
#[derive(Clone, Debug)]
pub struct StopTrigger(Arc<Shared>);

impl StopTrigger {
    pub fn stop(&self) {
        self.0.trigger_stop();
    }
}

impl BrokerHandle {
    /// The addresses actually bound (port 0 resolved), in `config.listeners` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.clone()
    }

    /// The address of the Prometheus endpoint (port 0 resolved), if one runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
    }

    /// The UDP address of the MQTT-SN gateway (port 0 resolved), if it runs.
    pub fn mqttsn_addr(&self) -> Option<SocketAddr> {
        self.mqttsn_addr
    }

    /// Number of shard threads.
    pub fn shards(&self) -> usize {
        self.shared.shards
    }

    pub fn stop_trigger(&self) -> StopTrigger {
        StopTrigger(Arc::clone(&self.shared))
    }

    /// Reloads the password file and the ACL file without disconnecting anyone (what
    /// SIGHUP does): new CONNECTs, SUBSCRIBEs and PUBLISHes are judged by the new rules at
    /// once, and every shard drops the subscriptions its clients may no longer hold at its
    /// next turn. On error (a file that cannot be read or parsed: the error names it, with
    /// the line and the reason) the rules in force stay.
    pub fn reload_auth(&self) -> Result<(), crate::auth::AuthError> {
        self.shared.reload_auth()
    }

    /// Stops accepting, closes every connection (v5 clients get DISCONNECT 0x8B) and waits
    /// for the shard threads.
    pub fn shutdown(self) -> Result<(), BrokerError> {
        self.shared.trigger_stop();
        self.join()
    }

    /// Waits for the shard threads (after a `StopTrigger::stop`), then for the storage
    /// writer to commit what they sent.
    pub fn join(self) -> Result<(), BrokerError> {
        let mut result = Ok(());
        if let Some(m) = self.metrics {
            m.stop();
        }
        for (i, t) in self.threads.into_iter().enumerate() {
            if t.join().is_err() {
                result = Err(BrokerError::ShardPanicked(i));
            }
        }
        if let Some(writer) = self.writer
            && let Err(e) = writer.stop()
        {
            crate::log!(ERROR, None, "the storage writer stopped with an error: {e}");
        }
        result
    }
}

/// Starts the shards and returns once every one is accepting. Loads the listeners' files
/// first (`ListenerRuntime::load_all`); `start_with` takes them loaded.
pub fn start(config: Config) -> Result<BrokerHandle, BrokerError> {
    let runtimes = ListenerRuntime::load_all(&config).map_err(BrokerError::Listener)?;
    start_with(config, runtimes)
}

/// Starts the shards with the listeners' loaded settings (`runtimes[i]` belongs to
/// `config.listeners[i]`) and returns once every one is accepting.
pub fn start_with(
    config: Config,
    runtimes: Vec<Arc<ListenerRuntime>>,
) -> Result<BrokerHandle, BrokerError> {
    let shards = config.effective_shards();
    if shards > MAX_SHARDS {
        return Err(BrokerError::TooManyShards(shards));
    }
    // Before any listener: a password or ACL file that cannot be loaded stops the start.
    let auth = auth::AuthShared::start(&config.auth)?;
    // TCP listeners here; the MQTT-SN one (UDP) is the gateway's (`mqttsn.rs`).
    let tcp: Vec<usize> = (0..config.listeners.len())
        .filter(|&i| !config.listeners[i].url.kind.is_udp())
        .collect();
    let addrs: Vec<SocketAddr> = tcp.iter().map(|&i| config.listeners[i].url.addr).collect();
    let runtimes: Vec<Arc<ListenerRuntime>> = tcp
        .iter()
        .filter_map(|&i| runtimes.get(i).cloned())
        .collect();
    let (listeners, local_addrs) = bind_listeners(&addrs, shards)?;
    let (udp, mqttsn_addr) = match config.mqttsn_listener() {
        Some(addr) => {
            let per_shard = config.mqttsn.socket_per_shard;
            let (sockets, bound) = bind_udp(addr, shards, per_shard)?;
            (sockets.into_iter().map(Some).collect(), Some(bound))
        }
        None => ((0..shards).map(|_| None).collect::<Vec<_>>(), None),
    };
    let mut udp = udp.into_iter();
    let (mesh, receivers) = Mesh::new(shards);
    let id_entropy = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let clock = Clock::new();
    let max_connections = limits::effective_max_connections(config.limits.max_connections);
    let shared = Arc::new(Shared {
        load: (0..shards).map(|_| limits::ShardLoad::default()).collect(),
        max_connections,
        config,
        wall_epoch_ms: persist::wall_epoch_ms(clock.now_ms()),
        clock,
        mesh,
        shards,
        stop: AtomicBool::new(false),
        wills_routed: AtomicUsize::new(0),
        id_entropy,
        interest_seed: {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(id_entropy)
        },
        restored: AtomicUsize::new(0),
        stats: Arc::new(StatsBoard::new(shards)),
        auth,
    });
    let mut opened = recovery::open(&shared.config, &shared)?;
    let metrics = match shared.config.ops.metrics {
        Some(addr) => Some(start_metrics(addr, &shared, opened.sender.clone())?),
        None => None,
    };
    let writer = opened.writer.take();
    let mut recoveries = std::mem::take(&mut opened.recoveries).into_iter();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(shards);
    for (i, (listeners, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let shard_shared = Arc::clone(&shared);
        let ready = ready_tx.clone();
        let start = ShardStart {
            listeners,
            udp: udp.next().flatten(),
            runtimes: runtimes.clone(),
            inbox,
            persist: recovery::persist_for(&mut opened, i, shared.wall_epoch_ms),
            recovery: recoveries.next().unwrap_or_default(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("{}{i}", panic::SHARD_THREAD_PREFIX))
            .spawn(move || shard_thread(shard_shared, i, start, ready));
        match spawned {
            Ok(t) => threads.push(t),
            Err(source) => {
                // The others wait at the start-up barrier for this one.
                shared.restored.fetch_add(1, Ordering::SeqCst);
                let handle = BrokerHandle {
                    shared,
                    threads,
                    local_addrs,
                    mqttsn_addr,
                    writer: None,
                    metrics,
                };
                let _ = handle.shutdown();
                return Err(BrokerError::Thread { shard: i, source });
            }
        }
    }
    drop(opened);
    drop(ready_tx);
    let mut first_error = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(BrokerError::ShardPanicked(usize::MAX));
            }
        }
    }
    let handle = BrokerHandle {
        shared,
        threads,
        local_addrs,
        mqttsn_addr,
        writer,
        metrics,
    };
    if let Some(e) = first_error {
        let _ = handle.shutdown();
        return Err(e);
    }
    Ok(handle)
}

/// Runs the broker until SIGINT or SIGTERM, then shuts it down cleanly. SIGHUP reloads the
/// password and ACL files (`BrokerHandle::reload_auth`) and the TLS certificates of every
/// TLS listener (`reload_tls`); it never ends the process.
pub fn run(config: Config, runtimes: Vec<Arc<ListenerRuntime>>) -> Result<(), BrokerError> {
    // Block the signals before any shard thread exists, so that every thread inherits the
    // mask and only the waiting thread receives them.
    sys::block_signals().map_err(BrokerError::Signal)?;
    let urls: Vec<String> = config
        .listeners
        .iter()
        .filter(|l| !l.url.kind.is_udp())
        .map(|l| l.url.to_string())
        .collect();
    let handle = start_with(config, runtimes.clone())?;
    let mut addrs: Vec<String> = handle
        .local_addrs()
        .iter()
        .zip(&urls)
        .map(|(a, url)| format!("{a} ({})", url.split("://").next().unwrap_or("mqtt")))
        .collect();
    if let Some(a) = handle.mqttsn_addr() {
        addrs.push(format!("{a} (mqttsn)"));
    }
    crate::log!(INFO, None, "listening on {}", addrs.join(", "));
    loop {
        let sig = sys::wait_for_signal().map_err(BrokerError::Signal)?;
        if sig == libc::SIGHUP {
            crate::log!(INFO, None, "SIGHUP received: reloading");
            reload_auth_files(&handle);
            reload_tls(&runtimes);
            continue;
        }
        crate::log!(INFO, None, "signal {sig} received; shutting down");
        break;
    }
    handle.shutdown()?;
    crate::log!(INFO, None, "stopped");
    Ok(())
}

/// Starts the Prometheus endpoint on `addr`: each scrape copies the board and the storage
/// writer's counters (through `writer`, a sender of its own) on the endpoint's thread.
fn start_metrics(
    addr: SocketAddr,
    shared: &Arc<Shared>,
    writer: Option<ringmq_storage::BatchSender>,
) -> Result<MetricsServer, BrokerError> {
    let shared = Arc::clone(shared);
    MetricsServer::start(addr, move || {
        crate::metrics::prom::encode(crate::metrics::prom::Scrape {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: shared.clock.now_ms() / 1000,
            shards: shared.stats.read_all(),
            writer: writer.as_ref().map(ringmq_storage::BatchSender::stats),
            log_dropped: crate::log::dropped_lines(),
            log_suppressed: crate::log::suppressed_lines(),
            memory: crate::metrics::ProcessMemory::read(),
        })
    })
    .map_err(|source| BrokerError::Metrics { addr, source })
}

/// SIGHUP: every TLS listener reads its certificate, key and client CA files again. New
/// connections use what loaded; a listener whose files fail keeps the configuration it had
/// (the error names the file and the problem). Open connections keep theirs either way.
pub fn reload_tls(runtimes: &[Arc<ListenerRuntime>]) {
    let tls = runtimes.iter().filter(|rt| rt.tls().is_some());
    let mut any = false;
    for rt in tls {
        any = true;
        match rt.reload_tls() {
            Ok(()) => crate::log!(
                INFO,
                None,
                "SIGHUP: listener {}: TLS certificate reloaded",
                rt.config().url
            ),
            Err(e) => crate::log!(
                ERROR,
                None,
                "SIGHUP: {e}; the listener keeps its previous certificate"
            ),
        }
    }
    if !any {
        crate::log!(INFO, None, "SIGHUP: no TLS listener to reload");
    }
}

/// SIGHUP's part for authentication: the password and ACL files.
fn reload_auth_files(handle: &BrokerHandle) {
    match handle.reload_auth() {
        Ok(()) => crate::log!(INFO, None, "password and ACL files reloaded"),
        Err(e) => crate::log!(ERROR, None, "reload failed, the rules in force stay: {e}"),
    }
}

type Listeners = Vec<Vec<std::net::TcpListener>>;

/// Binds every listen address once per shard with SO_REUSEPORT. Port 0 is resolved by the
/// first bind; the other shards bind the port it got.
fn bind_listeners(
    addrs: &[SocketAddr],
    shards: usize,
) -> Result<(Listeners, Vec<SocketAddr>), BrokerError> {
    let mut per_shard: Listeners = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        // SO_REUSEPORT lets any process of the same user join an existing group: a second
        // broker started by mistake would silently take a share of the connections. A bind
        // without SO_REUSEPORT fails if anyone holds the port, so probe with one first.
        if addr.port() != 0 {
            drop(
                std::net::TcpListener::bind(addr)
                    .map_err(|source| BrokerError::Bind { addr, source })?,
            );
        }
        let mut actual = addr;
        for listeners in per_shard.iter_mut() {
            let l = bind_one(actual).map_err(|source| BrokerError::Bind { addr, source })?;
            actual = l
                .local_addr()
                .map_err(|source| BrokerError::Bind { addr, source })?;
            listeners.push(l);
        }
        bound.push(actual);
    }
    Ok((per_shard, bound))
}

/// Binds the MQTT-SN address once per shard with SO_REUSEPORT (see `mqttsn.rs`), or once for
/// shard 0 with a copy of that socket for the others to send from (`per_shard` false): each
/// socket with whether its shard reads it. Port 0 is resolved by the first bind.
fn bind_udp(
    addr: SocketAddr,
    shards: usize,
    per_shard: bool,
) -> Result<(Vec<(std::net::UdpSocket, bool)>, SocketAddr), BrokerError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |at: SocketAddr| -> std::io::Result<std::net::UdpSocket> {
        let socket = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if at.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // ADVERTISE may go to a broadcast address.
        socket.set_broadcast(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        Ok(socket.into())
    };
    let err = |source| BrokerError::Bind { addr, source };
    // As for TCP: a plain bind first fails if anyone holds the port.
    if addr.port() != 0 {
        drop(std::net::UdpSocket::bind(addr).map_err(err)?);
    }
    let mut actual = addr;
    let mut sockets = Vec::with_capacity(shards);
    for i in 0..shards {
        let s = match sockets.first() {
            Some((first, _)) if !per_shard => std::net::UdpSocket::try_clone(first).map_err(err)?,
            Some(_) | None => bind(actual).map_err(err)?,
        };
        actual = s.local_addr().map_err(err)?;
        sockets.push((s, per_shard || i == 0));
    }
    Ok((sockets, actual))
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

type Ready = std::sync::mpsc::Sender<Result<(), BrokerError>>;

/// What a shard thread starts with.
#[derive(Debug)]
struct ShardStart {
    listeners: Vec<std::net::TcpListener>,
    /// The shard's MQTT-SN socket, when the gateway runs, and whether the shard reads it.
    udp: Option<(std::net::UdpSocket, bool)>,
    /// The loaded settings of each listener, by the same index.
    runtimes: Vec<Arc<ListenerRuntime>>,
    inbox: Vec<Receiver<Envelope>>,
    persist: persist::Persist,
    recovery: recovery::ShardRecovery,
}

/// The body of one shard thread: pin, build the runtime of the configured driver, run.
fn shard_thread(shared: Arc<Shared>, index: usize, start: ShardStart, ready: Ready) {
    if shared.config.pin_threads {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Err(e) = monoio::utils::bind_to_cpu_set(Some(index % cpus)) {
            crate::log!(
                WARN,
                Some(index as u16),
                "cannot pin to cpu {}: {e}",
                index % cpus
            );
        }
    }
    let runtime_error = |source| {
        // The others wait at the start-up barrier for this one.
        shared.restored.fetch_add(1, Ordering::SeqCst);
        BrokerError::Runtime {
            shard: index,
            source,
        }
    };
    match shared.config.driver {
        DriverKind::Epoll => {
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .with_entries(RING_ENTRIES)
                .build()
            {
                Ok(mut rt) => rt.block_on(shard_body(Arc::clone(&shared), index, start, ready)),
                Err(e) => {
                    let _ = ready.send(Err(runtime_error(e)));
                }
            }
        }
        DriverKind::Auto | DriverKind::Uring => {
            match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .with_entries(RING_ENTRIES)
                .build()
            {
                Ok(mut rt) => rt.block_on(shard_body(Arc::clone(&shared), index, start, ready)),
                Err(e) => {
                    let _ = ready.send(Err(runtime_error(e)));
                }
            }
        }
    }
}

/// Inside the shard's runtime: register the listeners with a new poller, build the core,
/// run the loop until the shard stops.
async fn shard_body(shared: Arc<Shared>, index: usize, start: ShardStart, ready: Ready) {
    let ShardStart {
        listeners,
        udp,
        runtimes,
        inbox,
        persist,
        mut recovery,
    } = start;
    let fail = |e: BrokerError| {
        shared.restored.fetch_add(1, Ordering::SeqCst);
        let _ = ready.send(Err(e));
    };
    let Some(id) = ShardId::new(index as u8) else {
        fail(BrokerError::TooManyShards(index + 1));
        return;
    };
    let listeners = listen::Listeners::new(listeners, runtimes);
    let (poller, poller_ready) = match new_poller() {
        Ok(p) => p,
        Err(source) => {
            fail(BrokerError::Runtime {
                shard: index,
                source,
            });
            return;
        }
    };
    crate::log!(
        INFO,
        Some(index as u16),
        "running on {} with {} listener(s)",
        if monoio::utils::is_legacy() {
            "epoll"
        } else {
            "io_uring"
        },
        listeners.len()
    );
    let mut core = core::Core::new(id, Arc::clone(&shared), inbox, poller, listeners, persist);
    if let Some((udp, reads)) = udp {
        let limits = Arc::clone(&core.session_limits);
        let sn = mqttsn::SnRuntime::new(udp, reads, &shared, id, limits);
        core.sn = Some(Box::new(sn));
    }
    // Stored sessions first, on every shard, and every shard's routing updates applied
    // everywhere, before the listeners open (before this, connections wait in the backlog).
    let restored = core.restore(&mut recovery);
    core.flush_outboxes_unbounded();
    recovery::restored_barrier(&shared);
    while core.drain_inbox(usize::MAX) > 0 {}
    core.after_restore(&restored, &recovery);
    core.mark_restored(&restored);
    drop(recovery);
    if shared.config.driver == DriverKind::Uring && !monoio::utils::is_legacy() {
        core.recv_ring = start_recv_ring(&core.poller, index);
    }
    let registered = core.listeners.register(&core.poller).and_then(|()| {
        core.sn
            .as_ref()
            .map_or(Ok(()), |sn| sn.register(&core.poller))
    });
    if let Err(source) = registered {
        let _ = ready.send(Err(BrokerError::Runtime {
            shard: index,
            source,
        }));
        return;
    }
    let _ = ready.send(Ok(()));
    event_loop::run(core, poller_ready).await;
}

/// The io_uring driver's receive ring (`uring.rs`), its fd watched by the poller; `None`
/// (connections are then read through the poller, as on the epoll driver) when the kernel
/// refuses it.
fn start_recv_ring(poller: &sys::Poller, index: usize) -> Option<Box<uring::RecvRing>> {
    use std::os::fd::AsFd;
    let started = uring::RecvRing::new().and_then(|ring| {
        poller.add_listener(ring.fd().as_fd(), listen::listener_token(uring::RING_INDEX))?;
        Ok(ring)
    });
    match started {
        Ok(ring) => {
            crate::log!(
                INFO,
                Some(index as u16),
                "attached plain TCP connections receive through the io_uring receive ring"
            );
            Some(Box::new(ring))
        }
        Err(e) => {
            crate::log!(
                WARN,
                Some(index as u16),
                "no receive ring ({e}): connections are read through epoll"
            );
            None
        }
    }
}

/// The shard's poller and, on a second fd of it, what the runtime waits on: the runtime has
/// no type for "any fd", and a `UnixStream` is only ever asked `readable()` here (never read
/// or written), which is a poll of the fd whatever it is.
fn new_poller() -> std::io::Result<(sys::Poller, monoio::net::UnixStream)> {
    let poller = sys::Poller::new()?;
    let fd = poller.try_clone_fd()?;
    let stream = monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
    Ok((poller, stream))
}
