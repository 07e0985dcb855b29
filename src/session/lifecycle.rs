//! The end of a connection and of a session: DISCONNECT from either side, protocol
//! violations, keep-alive timeouts, takeover, shutdown, the will and its delay, session
//! expiry.
//!
//! `violation` is the one function that decides how a protocol violation is answered:
//! v5 -> DISCONNECT with the reason code, then close; 3.x -> close without a packet
//! (docs/bad-inputs.md, "Close"). Either way the will is published [MQTT-3.1.2-8].

use bytes::BytesMut;

use crate::codec::{Disconnect, Packet, ReasonCode};

use super::persist::Change;
use super::types::Message;
use super::{Action, Offline, Session, State};

/// Why a connection is detached from its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Detach {
    /// DISCONNECT 0x00 from the client: the will is discarded [MQTT-3.1.2-10].
    Normal,
    /// Network loss, keep-alive timeout, protocol violation, takeover, or v5 DISCONNECT 0x04
    /// "with will": the will is published (after its delay) [MQTT-3.1.2-8].
    WithWill,
}

impl Session {
    /// Answers a protocol violation by the client with `code` (v5 DISCONNECT, 3.x plain
    /// close), then detaches with the will.
    pub(super) fn violation(
        &mut self,
        code: ReasonCode,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        self.server_disconnect(code, now_ms, out, actions);
    }

    /// The server closes the connection with `code`: v5 DISCONNECT [MQTT-3.14.0-... the
    /// server may send DISCONNECT before closing], `Close { will: true }`, will handling and
    /// expiry. No-op when no connection is attached.
    pub(super) fn server_disconnect(
        &mut self,
        code: ReasonCode,
        now_ms: u64,
        out: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let State::Connected(c) = &self.state else {
            return;
        };
        if c.protocol.is_v5() {
            self.send(&Packet::Disconnect(Disconnect::new(code)), out);
        }
        actions.push(Action::Close { will: true });
        self.detach(Detach::WithWill, now_ms, actions);
    }

    /// Body of `Session::shutdown` (see there for the choice about wills).
    pub(super) fn shut_down(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        let State::Connected(c) = &self.state else {
            return;
        };
        if c.protocol.is_v5() {
            let disconnect = Disconnect::new(ReasonCode::ServerShuttingDown);
            self.send(&Packet::Disconnect(disconnect), out);
        }
        actions.push(Action::Close { will: false });
        if self.data.session_expiry_secs == 0 {
            self.end_session(actions);
        } else {
            // The session outlives the broker (when it is stored) with its expiry running
            // from now; its will stays, to be published only if the session ends before the
            // client returns (a reconnect replaces it).
            let expiry = self.data.session_expiry_secs;
            self.state = State::Offline(Offline {
                expires_at_ms: (expiry != u32::MAX)
                    .then(|| now_ms.saturating_add(u64::from(expiry) * 1000)),
                will_due_ms: None,
            });
            self.persist(Change::Header, actions);
        }
    }

    /// Detaches the connection: decides the will and starts session expiry. With expiry 0
    /// the session ends now (after publishing the will, whatever its delay [MQTT-3.1.3-9]).
    pub(super) fn detach(&mut self, how: Detach, now_ms: u64, actions: &mut Vec<Action>) {
        if how == Detach::Normal {
            self.data.will = None;
        }
        let expiry = self.data.session_expiry_secs;
        let expires_at_ms =
            (expiry != u32::MAX).then(|| now_ms.saturating_add(u64::from(expiry) * 1000));
        let mut will_due_ms = None;
        if self.data.will.is_some() {
            let delay = self.data.will_delay_secs;
            if delay == 0 || expiry == 0 {
                self.publish_will(now_ms, actions);
            } else {
                let due = now_ms.saturating_add(u64::from(delay) * 1000);
                // The will goes out when the delay or the session ends, whichever first.
                will_due_ms = Some(expires_at_ms.map_or(due, |e| due.min(e)));
            }
        }
        if expiry == 0 {
            self.end_session(actions);
            return;
        }
        self.state = State::Offline(Offline {
            expires_at_ms,
            will_due_ms,
        });
        self.persist(Change::Header, actions);
    }

    /// Publishes the pending will (if any) as a `Publish` action and forgets it.
    pub(super) fn publish_will(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if let Some(will) = self.data.will.take() {
            let message = Message::from_will(&will, &self.client_id, now_ms);
            actions.push(Action::Publish {
                message: std::sync::Arc::new(message),
                ack: None,
            });
        }
        if let State::Offline(o) = &mut self.state {
            o.will_due_ms = None;
        }
    }

    /// The session is over: `Ended`, nothing kept but the subscriptions (for the shard's
    /// router cleanup through `subscriptions()`).
    pub(super) fn end_session(&mut self, actions: &mut Vec<Action>) {
        if self.persisted {
            actions.push(Action::Persist(Change::Removed));
            self.persisted = false;
        }
        let subscriptions = std::mem::take(&mut self.data.subscriptions);
        let old = self.data.take();
        self.data.subscriptions = subscriptions;
        self.state = State::Ended;
        actions.push(Action::Ended);
        return_to_groups(old, actions);
    }

    /// Body of `Session::handle_timeout`.
    pub(super) fn timeout(&mut self, now_ms: u64, out: &mut BytesMut, actions: &mut Vec<Action>) {
        match &self.state {
            State::Connected(c) => {
                let expired = c
                    .keep_alive_timeout_ms
                    .is_some_and(|t| now_ms >= c.last_packet_ms.saturating_add(u64::from(t)));
                if expired {
                    // [MQTT-3.1.2-22]: no packet within 1.5 × keep alive.
                    self.server_disconnect(ReasonCode::KeepAliveTimeout, now_ms, out, actions);
                }
            }
            State::Offline(o) => {
                let o = *o;
                let ends = o.expires_at_ms.is_some_and(|t| now_ms >= t);
                if o.will_due_ms.is_some_and(|t| now_ms >= t) {
                    self.publish_will(now_ms, actions);
                    if !ends {
                        self.persist(Change::Header, actions);
                    }
                }
                if ends {
                    self.publish_will(now_ms, actions);
                    self.count(|s| &mut s.expired, 1);
                    self.end_session(actions);
                }
            }
            State::Detached | State::Ended => {}
        }
    }
}

/// `Action::ReturnToGroup` for every message of an ending session that a share group picked
/// it for and that its client does not have yet: flows still waiting for PUBACK/PUBREC
/// (the oldest), then the queue, in delivery order. A QoS 2 flow past PUBREC is the
/// client's already; QoS 0 carries no promise and is not passed on.
pub(super) fn return_to_groups(data: super::SessionData, actions: &mut Vec<Action>) {
    let sent = data.inflight.into_iter().filter_map(|flow| match flow {
        super::Outbound::Published { delivery, .. } => Some(delivery),
        super::Outbound::Released { .. } => None,
    });
    for entry in sent.chain(data.queue) {
        if let (Some(group), false) = (
            entry.share_group,
            entry.qos == crate::codec::QoS::AtMostOnce,
        ) {
            actions.push(Action::ReturnToGroup {
                group,
                message: entry.message,
            });
        }
    }
}
