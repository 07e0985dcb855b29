//! Authentication as the runtime runs it: who a connection is, decided between its CONNECT
//! and its session.
//!
//! Owns: the `[auth]` snapshot every shard shares and its reload (`AuthShared`: the
//! `Authenticator` in force, the verifier threads, the failure throttle), this shard's copy
//! of the snapshot and the connections whose CONNECT waits (`ShardAuth`), and the CONNECT
//! path from `validate_connect` to the hand-off or the attach.
//!
//! Where it happens: on the shard that decoded the CONNECT, before the hand-off to the
//! client's home shard, so a refused client never costs the home shard anything and the
//! home shard receives an authenticated connection (its `Identity` travels in the
//! `Handoff`).
//!
//! A password check is **parked**: the check runs on a verifier thread (argon2id takes
//! 11-16 ms), the connection moves to `Phase::Verifying`, where it is neither read nor
//! decoded (the bytes read after its CONNECT wait in its input, the kernel keeps the rest),
//! and its CONNECT timeout keeps running. The verifier sends `(ConnKey, Decision)` on this
//! shard's verdict channel and wakes the shard's notifier; every turn of the loop takes the
//! verdicts (`auth_turn`, next to the storage completions), and a verdict for a connection
//! that closed meanwhile (the generation differs) is dropped. A job that panics never
//! answers: the CONNECT timeout ends its connection.
//!
//! A v5 CONNECT with Authentication Method `SCRAM-SHA-256` moves to
//! `Phase::Authenticating` with a `session::Authenticating` exchange: the connection is read,
//! but only AUTH (and DISCONNECT) are accepted until CONNACK.
//!
//! Repeated failures (a wrong password, a failed SCRAM proof) from one source address are
//! counted in one `FailureThrottle` for all shards (SO_REUSEPORT spreads one address over
//! every shard); while a source owes a delay, its CONNECTs with credentials are refused at
//! once, without a check, with 0x89 Server busy (3.x 0x03): a guesser gets a few tries a
//! minute, and a flood of them costs a lock and a table lookup each, never a hash.
//!
//! Reload: `AuthShared::reload` replaces the snapshot and bumps its epoch; each shard
//! compares the epoch once per turn and applies the new rules to its clients
//! (`Core::apply_new_rules`).
//!
//! Must never: hash on a shard thread, read or decode a parked connection, answer a CONNECT
//! in a way that tells a known user from an unknown one, or keep a parked connection past
//! its CONNECT timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender};

use super::close::CloseReason;
use super::core::{Core, Phase};
use super::ids::{ConnId, ConnKey};
use super::io::Step;
use super::mailbox::Notifier;
use crate::auth::acl::AclSubject;
use crate::auth::random::OsRandom;
use crate::auth::throttle::{FailureThrottle, ThrottleConfig};
use crate::auth::verifier::{Reply, VerifierPool, Wake};
use crate::auth::{AuthConfig, AuthError, Authenticator, Decision, Refusal};
use crate::codec::{Connect, MqttStr, Packet, ProtocolVersion, ReasonCode};
use crate::log;
use crate::session::{Authenticated, Authenticating, ClientId};

/// What every shard shares for authentication.
#[derive(Debug)]
pub(crate) struct AuthShared {
    /// The snapshot in force; replaced whole by `reload`.
    current: RwLock<Arc<Authenticator>>,
    /// Bumped (under the write lock) each time `current` is replaced: a shard reads it once
    /// per turn to learn that it must pick up new rules.
    epoch: AtomicU64,
    pool: VerifierPool,
    /// Touched only by CONNECTs that carry credentials.
    throttle: Mutex<FailureThrottle>,
}

impl AuthShared {
    /// Loads the files `config` names and starts the verifier threads.
    pub(crate) fn start(config: &AuthConfig) -> Result<AuthShared, super::BrokerError> {
        let snapshot = Authenticator::load(config).map_err(super::BrokerError::Auth)?;
        let pool =
            VerifierPool::start(config.verifier_threads).map_err(super::BrokerError::Verifiers)?;
        Ok(AuthShared {
            current: RwLock::new(Arc::new(snapshot)),
            epoch: AtomicU64::new(0),
            pool,
            throttle: Mutex::new(FailureThrottle::new(ThrottleConfig::default())),
        })
    }

    /// The snapshot in force and its epoch.
    pub(crate) fn snapshot(&self) -> (u64, Arc<Authenticator>) {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (self.epoch.load(Ordering::SeqCst), Arc::clone(&current))
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Reads the password and ACL files again. On success the new snapshot is in force for
    /// every CONNECT from now on (the shards apply it to their clients at their next turn);
    /// on error the old one stays and the error names the file, line and reason.
    pub(crate) fn reload(&self) -> Result<(), AuthError> {
        let (_, old) = self.snapshot();
        let new = old.reload()?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(new);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, FailureThrottle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Who a client authenticated as; travels with a handed-off connection to the home shard.
#[derive(Debug, Default)]
pub(crate) struct Identity {
    /// The user name the rules apply to: the CONNECT's (checked against the password file
    /// when there is one), or the SCRAM user.
    pub(crate) username: Option<Box<str>>,
    /// The client authenticated with an Authentication Method (CONNACK carries its last
    /// data; AUTH packets after CONNACK are re-authentication).
    pub(crate) enhanced: Option<Box<Authenticated>>,
}

/// A CONNECT waiting for its verdict.
#[derive(Debug)]
struct Pending {
    connect: Box<Connect>,
    client_id: ClientId,
    assigned: bool,
    source: IpAddr,
    /// A SCRAM exchange in progress; `None`: a password check on a verifier thread.
    exchange: Option<Authenticating>,
}

type Verdict = (ConnKey, Decision);

/// This shard's side: the snapshot it uses, its verdict channel, the waiting CONNECTs and
/// what the ACL needs per client (`access`).
pub(crate) struct ShardAuth {
    /// The snapshot this shard applies; replaced at the turn after a reload.
    pub(crate) snapshot: Arc<Authenticator>,
    epoch: u64,
    verdicts_tx: Sender<Verdict>,
    verdicts: Receiver<Verdict>,
    /// Wakes this shard after a verdict was sent.
    wake: Wake,
    pending: HashMap<ConnKey, Pending>,
    pub(crate) access: super::access::Access,
    /// CONNECTs refused by the throttle since the last log line about them, and when that
    /// line was written (one line a second at most, whatever the flood).
    throttled: u64,
    throttled_logged_ms: u64,
}

impl std::fmt::Debug for ShardAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardAuth")
            .field("epoch", &self.epoch)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl ShardAuth {
    pub(crate) fn new(shared: &AuthShared, notifier: Arc<Notifier>) -> ShardAuth {
        let (epoch, snapshot) = shared.snapshot();
        let (verdicts_tx, verdicts) = crossbeam_channel::unbounded();
        ShardAuth {
            snapshot,
            epoch,
            verdicts_tx,
            verdicts,
            wake: Arc::new(move || notifier.notify()),
            pending: HashMap::new(),
            access: super::access::Access::default(),
            throttled: 0,
            throttled_logged_ms: 0,
        }
    }
}

/// How often, at most, refusals by the throttle are logged (as one line with their count).
const THROTTLE_LOG_INTERVAL_MS: u64 = 1_000;

impl Core {
    /// Once per turn: pick up a reloaded snapshot, then act on the verdicts that arrived.
    pub(crate) fn auth_turn(&mut self) {
        if self.shared.auth.epoch() != self.auth.epoch {
            let (epoch, snapshot) = self.shared.auth.snapshot();
            self.auth.epoch = epoch;
            self.auth.snapshot = snapshot;
            self.apply_new_rules();
        }
        while let Ok((key, decision)) = self.auth.verdicts.try_recv() {
            self.on_verdict(key, decision);
        }
    }

    /// Whether a verdict or a reload waits for a turn.
    pub(crate) fn auth_has_work(&self) -> bool {
        !self.auth.verdicts.is_empty() || self.shared.auth.epoch() != self.auth.epoch
    }

    /// Connection `id` closed: a CONNECT it left waiting is forgotten.
    pub(crate) fn auth_conn_closed(&mut self, key: ConnKey) {
        self.auth.pending.remove(&key);
    }

    /// After `validate_connect`: establishes who the client is (at once, after a password
    /// check, or after a SCRAM exchange), then `admit`s it. `certified`: the username is the
    /// identity of a client certificate the TLS handshake verified (`use_identity_as_username`),
    /// which authenticates the client by itself: only the client-id policy still applies.
    pub(crate) fn authenticate(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        client_id: ClientId,
        assigned: bool,
        certified: bool,
        rest: &mut BytesMut,
    ) -> Step {
        let Some(conn) = self.conns.get(id) else {
            return Step::Close;
        };
        let key = ConnKey::new(id, conn.generation);
        let pending = Pending {
            source: conn.peer.ip(),
            connect,
            client_id,
            assigned,
            exchange: None,
        };
        let method = match pending.connect.protocol {
            ProtocolVersion::V5 => pending.connect.properties.authentication_method.clone(),
            ProtocolVersion::V31 | ProtocolVersion::V311 => None,
        };
        if let Some(method) = method {
            if certified {
                // The certificate says who the client is; an exchange would name a user of
                // its own.
                return self.refuse_auth(id, &pending, Refusal::BadAuthMethod);
            }
            return self.start_exchange(id, key, pending, method);
        }
        let snapshot = Arc::clone(&self.auth.snapshot);
        let c = &pending.connect;
        let decision = if certified {
            match snapshot.check_client_id(pending.client_id.as_str()) {
                Ok(()) => Decision::Allow,
                Err(refusal) => Decision::Refuse(refusal),
            }
        } else {
            snapshot.check_connect(
                c.username.as_ref().map(MqttStr::as_str),
                c.password.as_deref(),
                pending.client_id.as_str(),
            )
        };
        match decision {
            Decision::Allow => {
                let identity = Identity {
                    username: c.username.as_ref().map(|u| u.as_str().into()),
                    enhanced: None,
                };
                let Pending {
                    connect,
                    client_id,
                    assigned,
                    ..
                } = pending;
                self.admit(id, connect, client_id, assigned, identity, rest)
            }
            Decision::Refuse(refusal) => self.refuse_auth(id, &pending, refusal),
            Decision::NeedsHashCheck(check) => {
                if self.throttled(pending.source) {
                    return self.refuse_throttled(id, &pending);
                }
                let reply = Reply::new(self.auth.verdicts_tx.clone(), Arc::clone(&self.auth.wake));
                if let Err(e) = self
                    .shared
                    .auth
                    .pool
                    .submit(move || (key, check.verify_blocking()), reply)
                {
                    return self.refuse_auth(id, &pending, Refusal::from(e));
                }
                // Parked: nothing more is read or decoded until the verdict.
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.phase = Phase::Verifying;
                    if !rest.is_empty() {
                        conn.keep_input(rest.split());
                    }
                }
                self.auth.pending.insert(key, pending);
                Step::Continue
            }
        }
    }

    /// A v5 CONNECT with an Authentication Method: start the exchange (AUTH 0x18) or refuse.
    fn start_exchange(
        &mut self,
        id: ConnId,
        key: ConnKey,
        mut p: Pending,
        method: MqttStr,
    ) -> Step {
        let snapshot = Arc::clone(&self.auth.snapshot);
        let usable = snapshot
            .scram_method(method.as_str())
            .and_then(|()| snapshot.check_client_id(p.client_id.as_str()));
        if let Err(refusal) = usable {
            return self.refuse_auth(id, &p, refusal);
        }
        if self.throttled(p.source) {
            return self.refuse_throttled(id, &p);
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return Step::Close;
        };
        let data = p.connect.properties.authentication_data.as_ref();
        match Authenticating::start(method, data, &*snapshot, &mut OsRandom, &mut conn.out) {
            Ok(exchange) => {
                conn.phase = Phase::Authenticating;
                conn.version = Some(ProtocolVersion::V5);
                p.exchange = Some(exchange);
                self.auth.pending.insert(key, p);
                self.mark_dirty(id);
                Step::Continue
            }
            Err(e) => self.refuse_exchange(id, &p, e),
        }
    }

    /// A packet on a connection in `Phase::Authenticating`: the client's AUTH finishes the
    /// exchange; anything else refuses the CONNECT (a DISCONNECT just closes).
    pub(crate) fn on_authenticating_packet(
        &mut self,
        id: ConnId,
        packet: Packet,
        rest: &mut BytesMut,
    ) -> Step {
        let Some(conn) = self.conns.get(id) else {
            return Step::Close;
        };
        let key = ConnKey::new(id, conn.generation);
        let Some(mut p) = self.auth.pending.remove(&key) else {
            return Step::Close;
        };
        if let Packet::Disconnect(d) = packet {
            self.close_for(id, CloseReason::ClientDisconnect(d.reason));
            return Step::Close;
        }
        let Some(exchange) = p.exchange.take() else {
            return Step::Close;
        };
        match exchange.on_packet(packet) {
            Ok(done) => {
                self.shared.auth.throttle().record_success(p.source);
                let identity = Identity {
                    username: Some(done.username.as_str().into()),
                    enhanced: Some(Box::new(done)),
                };
                self.admit(id, p.connect, p.client_id, p.assigned, identity, rest)
            }
            Err(e) => self.refuse_exchange(id, &p, e),
        }
    }

    /// The verifier's answer for a parked CONNECT.
    fn on_verdict(&mut self, key: ConnKey, decision: Decision) {
        let Some(p) = self.auth.pending.remove(&key) else {
            return; // Closed meanwhile (its CONNECT timeout, a shutdown).
        };
        let id = key.id;
        let live = self
            .conns
            .live(key)
            .is_some_and(|c| c.phase == Phase::Verifying);
        if !live {
            return;
        }
        let refusal = match decision {
            Decision::Allow => None,
            Decision::Refuse(refusal) => Some(refusal),
            // `verify_blocking` answers Allow or Refuse; anything else is not a yes.
            Decision::NeedsHashCheck(_) => Some(Refusal::Unavailable),
        };
        if let Some(refusal) = refusal {
            self.refuse_auth(id, &p, refusal);
            return;
        }
        self.shared.auth.throttle().record_success(p.source);
        let mut rest = self
            .conns
            .get_mut(id)
            .and_then(|c| c.take_input())
            .unwrap_or_default();
        let identity = Identity {
            username: p.connect.username.as_ref().map(|u| u.as_str().into()),
            enhanced: None,
        };
        match self.admit(id, p.connect, p.client_id, p.assigned, identity, &mut rest) {
            Step::Handoff(parts) => self.hand_off(id, *parts),
            Step::Close => {}
            Step::Continue => self.resume_input(id, rest),
        }
    }

    /// A connection attached after its verdict: what it sent behind the CONNECT is decoded
    /// now, and its socket is read again (input that arrived while it was parked raised no
    /// new edge).
    fn resume_input(&mut self, id: ConnId, rest: BytesMut) {
        if let Some(conn) = self.conns.get_mut(id)
            && !rest.is_empty()
        {
            conn.keep_input(rest);
        }
        match self.process_input(id, &[]) {
            Step::Continue => {}
            Step::Close => self.request_close(id),
            // Attached here: a later hand-off cannot come of it.
            Step::Handoff(parts) => self.hand_off(id, *parts),
        }
        if let Some(conn) = self.conns.get(id) {
            self.again.push(ConnKey::new(id, conn.generation));
        }
    }

    /// The client is who it says: its will must be one it may publish, then the connection
    /// goes to its home shard or is attached here.
    fn admit(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        client_id: ClientId,
        assigned: bool,
        identity: Identity,
        rest: &mut BytesMut,
    ) -> Step {
        if let Some(will) = &connect.will {
            let who = AclSubject::new(client_id.as_str(), identity.username.as_deref());
            if !self.auth.snapshot.may_publish(&who, &will.topic) {
                let why = format!("its will topic {} is not allowed", will.topic.as_str());
                let code = ReasonCode::NotAuthorized;
                return self.refuse_connect_at(
                    id,
                    connect.protocol,
                    code,
                    client_id.as_str(),
                    &why,
                );
            }
        }
        self.place(id, connect, client_id, assigned, identity, rest)
    }

    /// Refuses a CONNECT whose credentials or exchange were refused (counted by the throttle
    /// when the credentials were wrong).
    fn refuse_auth(&mut self, id: ConnId, p: &Pending, refusal: Refusal) -> Step {
        if refusal == Refusal::BadCredentials {
            self.shared
                .auth
                .throttle()
                .record_failure(p.source, self.now_ms);
        }
        let code = refusal.reason_code();
        self.refuse_connect_at(id, p.connect.protocol, code, p.client_id.as_str(), "")
    }

    fn refuse_exchange(&mut self, id: ConnId, p: &Pending, e: crate::session::AuthError) -> Step {
        if e.is_bad_credentials() {
            self.shared
                .auth
                .throttle()
                .record_failure(p.source, self.now_ms);
        }
        let code = e.connack_code();
        self.refuse_connect_at(id, p.connect.protocol, code, p.client_id.as_str(), "")
    }

    /// Refuses a CONNECT from a source that owes a delay: 0x89 Server busy (3.x 0x03), no
    /// check, and one log line a second for all of them.
    fn refuse_throttled(&mut self, id: ConnId, p: &Pending) -> Step {
        self.auth.throttled += 1;
        if self.now_ms >= self.auth.throttled_logged_ms + THROTTLE_LOG_INTERVAL_MS {
            log!(
                WARN,
                self.log_id,
                "{} CONNECT(s) refused as busy: their source (last {}) failed to authenticate \
                 too often and is slowed down",
                self.auth.throttled,
                p.source
            );
            self.auth.throttled = 0;
            self.auth.throttled_logged_ms = self.now_ms;
        }
        let code = Refusal::ServerBusy.reason_code();
        let reason = CloseReason::ConnectThrottled { code };
        self.write_refusal(id, p.connect.protocol, code, reason)
    }

    /// Whether `source` owes a delay for earlier failures (then its CONNECT is refused
    /// without a check; see the module documentation).
    fn throttled(&self, source: IpAddr) -> bool {
        self.shared.auth.throttle().delay_ms(source, self.now_ms) > 0
    }
}
