//! The broker-wide limits on state that clients create: connections, sessions and retained
//! messages. Each shard publishes how many connections and sessions it holds once per turn
//! (two relaxed stores); the checks read the sum, a turn old at most, which is exact enough
//! for a limit and costs the hot path nothing.
//!
//! Owns: the per-shard load figures, the effective connection limit (the file-descriptor
//! limit when none is set) and the decisions: a CONNECT beyond `max_connections` or a new
//! session beyond `max_sessions` is refused (v5 0x97, 3.x 0x03), connections far beyond the
//! limit are closed at accept, and a new retained topic beyond the retained limits is refused
//! (see `Core::retained_over_limit`).
//!
//! Must never: refuse what is already held (a reconnecting client resumes its session; a
//! retained topic is replaced whatever the limits).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Shared;
use super::core::Core;
use crate::codec::ReasonCode;
use crate::session::Message;

/// Files kept for everything that is not a client connection (listeners, the store, the
/// pollers, the runtimes' rings, logs).
const FD_RESERVE: usize = 128;

/// What one shard holds, as the others may read it.
#[derive(Debug, Default)]
pub(crate) struct ShardLoad {
    connections: AtomicUsize,
    sessions: AtomicUsize,
}

/// The connection limit in force: `configured`, or the process's file-descriptor limit less
/// a reserve when it is 0.
pub(crate) fn effective_max_connections(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into; no other memory is involved.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    (lim.rlim_cur as usize).saturating_sub(FD_RESERVE).max(1)
}

impl Shared {
    fn total(&self, pick: impl Fn(&ShardLoad) -> &AtomicUsize) -> usize {
        self.load
            .iter()
            .map(|l| pick(l).load(Ordering::Relaxed))
            .sum()
    }
}

impl Core {
    /// Publishes this shard's counts for the others' limit checks (once per turn).
    pub(crate) fn publish_load(&self) {
        if let Some(load) = self.shared.load.get(self.id.index()) {
            load.connections.store(self.conns.len(), Ordering::Relaxed);
            load.sessions.store(self.clients.len(), Ordering::Relaxed);
        }
    }

    /// `Err` with the refusal code when a new client connection is beyond
    /// `max_connections`.
    pub(crate) fn admit_connection(&self) -> Result<(), ReasonCode> {
        if self.shared.total(|l| &l.connections) > self.shared.max_connections {
            return Err(ReasonCode::QuotaExceeded);
        }
        Ok(())
    }

    /// Whether an accepted connection is so far beyond the limit that it is closed at once,
    /// unread (the others are refused politely at CONNECT).
    pub(crate) fn far_beyond_connection_limit(&self) -> bool {
        let max = self.shared.max_connections;
        self.shared.total(|l| &l.connections) >= max.saturating_add(max / 10 + 16)
    }

    /// `Err` with the refusal code when a new session is beyond `max_sessions`.
    pub(crate) fn admit_session(&self) -> Result<(), ReasonCode> {
        let max = self.shared.config.limits.max_sessions;
        if max > 0 && self.shared.total(|l| &l.sessions) >= max {
            return Err(ReasonCode::QuotaExceeded);
        }
        Ok(())
    }

    /// Whether `message` would add a retained topic beyond `max_retained_messages` or
    /// `max_retained_bytes` (this shard's replica; every replica holds the same). Replacing
    /// or deleting a retained message is always allowed. The broker's own `$SYS` topics
    /// neither count nor are refused (they are routed without this check).
    pub(crate) fn retained_over_limit(&self, message: &Message) -> bool {
        if !message.retain || message.payload.is_empty() {
            return false;
        }
        let store = self.routes.levels.retained();
        if store.get(&message.topic).is_some() {
            return false;
        }
        let l = &self.shared.config.limits;
        let size = message.topic.len() + message.payload.len();
        store.client_len() >= l.max_retained_messages
            || store.client_bytes().saturating_add(size) > l.max_retained_bytes
    }
}
