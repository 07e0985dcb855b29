//! A shard's listening sockets: every shard binds each listen address with SO_REUSEPORT and
//! accepts on its own socket, through the same poller as its connections (no accept
//! operation is ever left in flight in the ring, so a killed broker's port is free for the
//! next start at once).
//!
//! Owns: the listeners of one shard, the accept discipline (accept until `EAGAIN` or the
//! per-turn budget, and remember a listener whose budget ran out, because no new edge will
//! come for connections already waiting) and the answer to running out of file descriptors
//! (a reserve fd is given up to take one waiting connection and close it at once, with a
//! rate-limited log line).
//!
//! Must never: block, leave a listener with connections waiting and no reason to look at it
//! again, or log once per refused connection.

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::core::{Core, Phase};
use super::layered::ConnExtra;
use super::sys::{self, Accepted};
use crate::log;
use crate::transport::ListenerRuntime;

/// Connections accepted per listener per turn: a connection storm cannot keep the shard from
/// its existing clients for more than a few milliseconds.
const ACCEPTS_PER_TURN: usize = 256;

/// Seconds between two log lines about the file-descriptor limit (the count of refused
/// connections is in the line).
const FD_LIMIT_LOG_INTERVAL_MS: u64 = 10_000;

/// The poller token of listener `index`: slot `u32::MAX`, which no connection slot reaches,
/// and the listener's index as the generation.
pub(crate) fn listener_token(index: usize) -> u64 {
    (index as u64) << 32 | u64::from(u32::MAX)
}

/// The listener index a token names, if it names one.
pub(crate) fn listener_of(token: u64) -> Option<usize> {
    (token as u32 == u32::MAX).then_some((token >> 32) as usize)
}

/// One listening socket and the settings of its listener.
#[derive(Debug)]
struct Listener {
    socket: TcpListener,
    /// What its connections speak (the transport each gets at accept).
    runtime: Arc<ListenerRuntime>,
}

/// The listening sockets of one shard.
#[derive(Debug)]
pub(crate) struct Listeners {
    sockets: Vec<Listener>,
    /// Listeners whose accept budget ran out with connections still waiting.
    again: Vec<usize>,
    /// Given up when the process is out of fds (see the module doc); reopened after.
    reserve: Option<OwnedFd>,
    /// Connections refused for lack of fds since the last log line, and when that was.
    refused: u64,
    refused_logged_ms: u64,
}

impl Listeners {
    /// `runtimes[i]` holds the settings of `sockets[i]`.
    pub(crate) fn new(sockets: Vec<TcpListener>, runtimes: Vec<Arc<ListenerRuntime>>) -> Listeners {
        let sockets = sockets
            .into_iter()
            .zip(runtimes)
            .map(|(socket, runtime)| Listener { socket, runtime })
            .collect();
        Listeners {
            sockets,
            again: Vec::new(),
            reserve: sys::reserve_fd().ok(),
            refused: 0,
            refused_logged_ms: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Registers every listener with the poller.
    pub(crate) fn register(&self, poller: &sys::Poller) -> std::io::Result<()> {
        for (i, l) in self.sockets.iter().enumerate() {
            poller.add_listener(l.socket.as_fd(), listener_token(i))?;
        }
        Ok(())
    }

    /// Whether a listener waits to be accepted from again.
    pub(crate) fn has_again(&self) -> bool {
        !self.again.is_empty()
    }

    /// Stops accepting: the sockets refuse new connections from now on and close.
    pub(crate) fn close(&mut self, poller: &sys::Poller) {
        for l in self.sockets.drain(..) {
            poller.delete(l.socket.as_fd());
            sys::shutdown_listener(l.socket.as_fd());
        }
        self.again.clear();
    }
}

impl Core {
    /// Accepts on listener `index` until it has nothing waiting or the budget runs out.
    pub(crate) fn accept_ready(&mut self, index: usize) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.listeners.sockets.get(index) else {
                return; // Closed at shutdown.
            };
            match sys::accept(listener.socket.as_fd()) {
                Ok(Accepted::Conn(fd, peer)) => {
                    let runtime = Arc::clone(&listener.runtime);
                    self.adopt_accepted(fd, peer, &runtime);
                }
                Ok(Accepted::WouldBlock) => return,
                Err(e) if is_fd_limit(&e) => {
                    self.refuse_for_fd_limit(index);
                    return;
                }
                Err(e) => {
                    log!(WARN, self.log_id, "accept failed: {e}");
                    return;
                }
            }
        }
        if !self.listeners.again.contains(&index) {
            self.listeners.again.push(index);
        }
    }

    /// Accepts again on the listeners whose budget ran out last turn.
    pub(crate) fn accept_again(&mut self) {
        for index in std::mem::take(&mut self.listeners.again) {
            self.accept_ready(index);
        }
    }

    /// A connection accepted on the listener `runtime` describes: with that listener's
    /// transport (none for plain MQTT), waiting for its handshakes and CONNECT.
    fn adopt_accepted(
        &mut self,
        fd: OwnedFd,
        peer: std::net::SocketAddr,
        runtime: &Arc<ListenerRuntime>,
    ) {
        if self.far_beyond_connection_limit() {
            // Far beyond `max_connections`: closed unread (the ones just beyond the limit
            // are refused with a CONNACK).
            self.listeners.refused += 1;
            return;
        }
        if let Err(e) = sys::set_nodelay(fd.as_fd()) {
            log!(WARN, self.log_id, "TCP_NODELAY on {peer}: {e}");
        }
        self.stats.accepted += 1;
        let transport = match runtime.new_transport() {
            Ok(transport) => transport,
            Err(e) => {
                log!(WARN, self.log_id, "connection from {peer}: {e}; closing it");
                return;
            }
        };
        let extra = transport.map(|t| ConnExtra::with_transport(*t));
        let _ = self.new_conn(Some(fd), peer, Phase::AwaitingConnect, extra);
    }

    /// Out of fds: take one waiting connection with the reserve fd's place and close it, so
    /// the client learns at once instead of waiting in the backlog, then keep the reserve
    /// again. The listener is looked at again next turn (more may wait).
    fn refuse_for_fd_limit(&mut self, index: usize) {
        self.listeners.reserve = None;
        let took_one = match self.listeners.sockets.get(index) {
            Some(listener) => {
                matches!(sys::accept(listener.socket.as_fd()), Ok(Accepted::Conn(..)))
            }
            None => false,
        };
        self.listeners.reserve = sys::reserve_fd().ok();
        if took_one {
            // Dropped (closed) above; more may wait. When none did, `accept` fails with
            // EMFILE even on an empty backlog, so only a new edge brings us back.
            self.listeners.refused += 1;
            if !self.listeners.again.contains(&index) {
                self.listeners.again.push(index);
            }
        }
        let now = self.now_ms;
        if self.listeners.refused_logged_ms == 0
            || now >= self.listeners.refused_logged_ms + FD_LIMIT_LOG_INTERVAL_MS
        {
            log!(
                WARN,
                self.log_id,
                "out of file descriptors: {} connection(s) refused since the last report \
                 (raise the process fd limit or lower max_connections)",
                self.listeners.refused
            );
            self.listeners.refused = 0;
            self.listeners.refused_logged_ms = now.max(1);
        }
    }
}

fn is_fd_limit(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
