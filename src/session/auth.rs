//! Enhanced authentication [MQTT-4.12] and the authorization questions a session asks.
//!
//! Owns: the AUTH exchanges of one connection, as sans-IO state machines (packets in, packets
//! written into `out`, a verdict out; the user store and the randomness are arguments), and
//! `AccessPolicy`, the question a SUBSCRIBE puts to the rules in force.
//!
//! # States
//!
//! ```text
//!  CONNECT with Authentication Method M (the caller accepted M: SCRAM-SHA-256)
//!     │ Authenticating::start          writes AUTH 0x18 (server-first)
//!     ▼
//!  Authenticating ── AUTH 0x18, method M, client-final ─▶ Authenticated { user, server-final }
//!     │                                                       │ caller: CONNACK 0x00 carrying
//!     │ any other packet, wrong method, failed proof          │ M and server-final, then the
//!     ▼                                                       ▼ session (Enhanced kept)
//!  AuthError: CONNACK with `reason_code()`, close          Connected
//!
//!  Enhanced (idle) ── AUTH 0x19, method M, client-first ─▶ Enhanced (exchange running)
//!     ▲                     writes AUTH 0x18 (server-first)       │
//!     └──── AUTH 0x18, client-final, same user ◀──────────────────┘
//!           writes AUTH 0x00 (server-final); anything else: DISCONNECT (0x82 or 0x87)
//! ```
//!
//! `Authenticating` exists between CONNECT and CONNACK, before any session is attached: the
//! connection may still move to its client's home shard, so the shard keeps this value
//! next to the connection and gives the outcome to `Session::connect_with_auth`. While it
//! runs the client may send only AUTH (or DISCONNECT) [MQTT-3.1.2-30]. `Enhanced` is the
//! connected state of a connection that authenticated with a method: re-authentication
//! [MQTT-4.12.1] runs beside the normal flow of packets, with the same method and for the
//! same user (a different user is refused: the session's rules were decided for the first
//! one). It lives with the shard (one per such connection, a side table) rather than in
//! every `Session`, whose size is budgeted per idle connection.
//!
//! Must never: reveal whether a user exists (the SCRAM server fails an unknown user at the
//! proof, like a wrong password), accept a packet out of sequence, or touch a socket, the
//! clock or the random generator except through the `RandomSource` it is given.

use bytes::{Bytes, BytesMut};

use crate::auth::Refusal;
use crate::auth::random::RandomSource;
use crate::auth::scram::{ScramServer, ScramUsers};
use crate::codec::{self, Auth, AuthProperties, MqttStr, Packet, ProtocolVersion, ReasonCode};
use crate::router::topic::TopicFilter;

/// The authorization question of a SUBSCRIBE, answered by the rules in force for this
/// client (the shard implements it over the ACL).
pub trait AccessPolicy {
    /// Whether the client may hold a subscription to `filter` (SUBACK 0x87 / 3.x 0x80
    /// otherwise). True also when only some of its topics are readable: the shard then
    /// checks each delivery.
    fn may_subscribe(&self, filter: &TopicFilter) -> bool;
}

/// No rules: everything is allowed.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl AccessPolicy for AllowAll {
    fn may_subscribe(&self, _: &TopicFilter) -> bool {
        true
    }
}

/// Why an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The credentials or the exchange were refused (see `Refusal`).
    Refused(Refusal),
    /// The client broke the sequence of [MQTT-4.12]: a packet other than AUTH, a reason
    /// code the client may not use there, another method.
    Protocol,
}

impl AuthError {
    /// The CONNACK reason code before CONNACK (3.x never gets here: AUTH is v5 only).
    pub fn connack_code(self) -> ReasonCode {
        match self {
            AuthError::Refused(r) => r.reason_code(),
            AuthError::Protocol => ReasonCode::ProtocolError,
        }
    }

    /// The DISCONNECT reason code after CONNACK: DISCONNECT has no 0x86 or 0x8C, so a failed
    /// re-authentication is 0x87 [MQTT-4.12.1-2].
    pub fn disconnect_code(self) -> ReasonCode {
        match self {
            AuthError::Refused(
                Refusal::BadCredentials
                | Refusal::NotAuthorized
                | Refusal::ClientIdRefused
                | Refusal::BadAuthMethod,
            ) => ReasonCode::NotAuthorized,
            AuthError::Refused(Refusal::ServerBusy) => ReasonCode::ServerBusy,
            AuthError::Refused(Refusal::Unavailable) => ReasonCode::UnspecifiedError,
            AuthError::Protocol => ReasonCode::ProtocolError,
        }
    }

    /// Whether the client failed to prove its credentials (the failure throttle counts it).
    pub fn is_bad_credentials(self) -> bool {
        self == AuthError::Refused(Refusal::BadCredentials)
    }
}

/// A finished exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub method: MqttStr,
    /// The user the client proved to be.
    pub username: String,
    /// Authentication Data for the CONNACK (SCRAM server-final-message).
    pub server_final: Bytes,
}

/// Between CONNECT and CONNACK: the server's challenge was sent, the client's answer awaited.
#[derive(Debug)]
pub struct Authenticating {
    method: MqttStr,
    scram: ScramServer,
}

impl Authenticating {
    /// CONNECT carried Authentication Method `method` (accepted by the caller) and `data`
    /// (SCRAM client-first-message): writes AUTH 0x18 with server-first-message into `out`.
    pub fn start(
        method: MqttStr,
        data: Option<&Bytes>,
        users: &dyn ScramUsers,
        rng: &mut dyn RandomSource,
        out: &mut BytesMut,
    ) -> Result<Authenticating, AuthError> {
        let mut scram = ScramServer::new();
        let first = data.map_or(&[][..], |d| &d[..]);
        let server_first = scram
            .handle_client_first(first, users, rng)
            .map_err(|e| AuthError::Refused(Refusal::from(e)))?;
        write_auth(
            ReasonCode::ContinueAuthentication,
            &method,
            server_first,
            out,
        );
        Ok(Authenticating { method, scram })
    }

    /// The client's next packet: AUTH 0x18 with the same method and client-final-message
    /// [MQTT-4.12.0-3], [MQTT-4.12.0-5]. Nothing is written: the caller answers with CONNACK.
    pub fn on_packet(mut self, packet: Packet) -> Result<Authenticated, AuthError> {
        let Packet::Auth(auth) = packet else {
            return Err(AuthError::Protocol); // [MQTT-3.1.2-30]
        };
        let data = continuation(&auth, &self.method)?;
        let done = self
            .scram
            .handle_client_final(&data)
            .map_err(|e| AuthError::Refused(Refusal::from(e)))?;
        Ok(Authenticated {
            method: self.method,
            username: done.username,
            server_final: done.server_final,
        })
    }
}

/// After CONNACK, for a connection that authenticated with a method: re-authentication.
#[derive(Debug)]
pub struct Enhanced {
    method: MqttStr,
    username: String,
    /// A re-authentication in progress (AUTH 0x18 sent, client-final awaited).
    running: Option<Box<ScramServer>>,
}

impl Enhanced {
    pub fn new(done: &Authenticated) -> Enhanced {
        Enhanced {
            method: done.method.clone(),
            username: done.username.clone(),
            running: None,
        }
    }

    /// An AUTH packet on the live connection [MQTT-4.12.1]: writes the answer (AUTH 0x18 or
    /// AUTH 0x00) into `out`, or returns why the connection must end (DISCONNECT with
    /// `AuthError::disconnect_code`).
    pub fn on_auth(
        &mut self,
        auth: Auth,
        users: &dyn ScramUsers,
        rng: &mut dyn RandomSource,
        out: &mut BytesMut,
    ) -> Result<(), AuthError> {
        if auth.properties.authentication_method.as_ref() != Some(&self.method) {
            return Err(AuthError::Protocol); // [MQTT-4.12.1-1]
        }
        let data = auth
            .properties
            .authentication_data
            .as_ref()
            .map_or(&[][..], |d| &d[..]);
        match (auth.reason, self.running.take()) {
            (ReasonCode::ReAuthenticate, None) => {
                let mut scram = Box::new(ScramServer::new());
                let server_first = scram
                    .handle_client_first(data, users, rng)
                    .map_err(|e| AuthError::Refused(Refusal::from(e)))?;
                write_auth(
                    ReasonCode::ContinueAuthentication,
                    &self.method,
                    server_first,
                    out,
                );
                self.running = Some(scram);
                Ok(())
            }
            (ReasonCode::ContinueAuthentication, Some(mut scram)) => {
                let done = scram
                    .handle_client_final(data)
                    .map_err(|e| AuthError::Refused(Refusal::from(e)))?;
                if done.username != self.username {
                    return Err(AuthError::Refused(Refusal::NotAuthorized));
                }
                write_auth(ReasonCode::Success, &self.method, done.server_final, out);
                Ok(())
            }
            // 0x19 while one runs, 0x18 with none running, 0x00 from the client.
            _ => Err(AuthError::Protocol),
        }
    }
}

/// The client-final data of an AUTH that continues an exchange under `method`.
fn continuation(auth: &Auth, method: &MqttStr) -> Result<Bytes, AuthError> {
    if auth.reason != ReasonCode::ContinueAuthentication
        || auth.properties.authentication_method.as_ref() != Some(method)
    {
        return Err(AuthError::Protocol);
    }
    Ok(auth
        .properties
        .authentication_data
        .clone()
        .unwrap_or_default())
}

/// Writes an AUTH packet with `reason`, `method` and `data`.
fn write_auth(reason: ReasonCode, method: &MqttStr, data: Bytes, out: &mut BytesMut) {
    let auth = Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(method.clone()),
            authentication_data: Some(data),
            ..AuthProperties::default()
        },
    };
    codec::encode(&Packet::Auth(auth), ProtocolVersion::V5, out);
}
