//! Why a connection closes, and the one log line and counter each close gets.
//!
//! Owns: `CloseReason` (given with every `Core::request_close`, the first one given wins),
//! the inference of why a session let its connection go (`SessionCall`: what the shard
//! had just asked of the session, refined by the v5 DISCONNECT the session wrote last), and
//! the close line: `client ID at PEER: connection closed: REASON`, rate-limited per reason
//! (one `Limiter` per `CloseKind`, so a flood of one kind never hides the others).
//!
//! Must never: log a close twice or not at all, or let a flood of closes write more than
//! `LINES_PER_KIND_PER_SECOND` lines per reason.

use std::fmt;
use std::io;

use crate::codec::{DecodeError, ErrorResponse, Packet, PacketType, ReasonCode, ReasonContext};
use crate::log::{Level, Limiter};
use crate::metrics::CloseKind;
use crate::transport::CloseReason as Farewell;

/// Characters of a refused client id the close line shows.
const SHOWN_ID_CHARS: usize = 64;

/// Why a connection closed: the detail of its log line.
#[derive(Debug)]
pub(crate) enum CloseReason {
    /// The client sent DISCONNECT with this code.
    ClientDisconnect(ReasonCode),
    /// End of stream without DISCONNECT.
    PeerClosed,
    SocketError(io::Error),
    /// The connection's transport (TLS, WebSocket, PROXY header) failed or refused its
    /// bytes: what it said.
    Transport(String),
    /// An incomplete packet past its time limit or the shard's share of
    /// `max_partial_input_bytes`; the code of the DISCONNECT sent (v5 past CONNACK).
    IncompletePacket {
        code: Option<ReasonCode>,
        why: String,
    },
    /// Bytes that are not a valid packet, and what the client was answered.
    ProtocolError {
        error: DecodeError,
        answer: ErrorResponse,
    },
    /// The session refused a valid packet (v5: the code of the DISCONNECT it sent).
    Violation {
        packet: PacketType,
        code: Option<ReasonCode>,
    },
    /// Closed by the broker at a place that names no reason (input after a refused CONNECT).
    Other,
    /// CONNECT refused with `code`; the client id it asked for (cut to
    /// `SHOWN_ID_CHARS`) and what the code alone does not say (e.g. which limit), if
    /// anything.
    ConnectRefused {
        code: ReasonCode,
        client_id: String,
        why: String,
    },
    /// CONNECT refused with `code` without a check: its source failed to authenticate too
    /// often (a flood of these has its own rate limit, apart from other refusals).
    ConnectThrottled {
        code: ReasonCode,
    },
    ConnectTimeout,
    /// The CONNECT's password check was not done within `connect_timeout_secs`.
    VerifyTimeout,
    KeepAlive,
    Takeover,
    SlowConsumer {
        secs: u64,
        max_out: usize,
    },
    Shutdown,
    StorageFailure(ReasonCode),
    /// The session ended (or let its connection go) for a reason the shard did not see.
    SessionEnded,
}

impl CloseReason {
    pub(crate) fn kind(&self) -> CloseKind {
        match self {
            CloseReason::ClientDisconnect(_) => CloseKind::ClientDisconnect,
            CloseReason::PeerClosed => CloseKind::PeerClosed,
            CloseReason::SocketError(_) => CloseKind::SocketError,
            CloseReason::Transport(_) => CloseKind::Transport,
            CloseReason::ProtocolError { .. } => CloseKind::ProtocolError,
            CloseReason::IncompletePacket { .. } => CloseKind::IncompletePacket,
            CloseReason::Violation { .. } => CloseKind::Violation,
            CloseReason::Other => CloseKind::Other,
            CloseReason::ConnectRefused { .. } | CloseReason::ConnectThrottled { .. } => {
                CloseKind::ConnectRefused
            }
            CloseReason::ConnectTimeout | CloseReason::VerifyTimeout => CloseKind::ConnectTimeout,
            CloseReason::KeepAlive => CloseKind::KeepAlive,
            CloseReason::Takeover => CloseKind::Takeover,
            CloseReason::SlowConsumer { .. } => CloseKind::SlowConsumer,
            CloseReason::Shutdown => CloseKind::Shutdown,
            CloseReason::StorageFailure(_) => CloseKind::StorageFailure,
            CloseReason::SessionEnded => CloseKind::SessionEnded,
        }
    }

    /// Closes the client asked for (or that end the broker's life) are INFO; closes the
    /// broker imposed on a misbehaving or slow client are WARN; a failing store is ERROR.
    pub(crate) fn level(&self) -> Level {
        match self {
            CloseReason::ClientDisconnect(_)
            | CloseReason::PeerClosed
            | CloseReason::SocketError(_)
            | CloseReason::Transport(_)
            | CloseReason::ConnectRefused { .. }
            | CloseReason::ConnectThrottled { .. }
            | CloseReason::ConnectTimeout
            | CloseReason::VerifyTimeout
            | CloseReason::KeepAlive
            | CloseReason::Takeover
            | CloseReason::Shutdown
            | CloseReason::SessionEnded => Level::Info,
            CloseReason::ProtocolError { .. }
            | CloseReason::IncompletePacket { .. }
            | CloseReason::Violation { .. }
            | CloseReason::Other
            | CloseReason::SlowConsumer { .. } => Level::Warn,
            CloseReason::StorageFailure(_) => Level::Error,
        }
    }

    /// A client id from a refused CONNECT as the close line shows it: its first
    /// `SHOWN_ID_CHARS` characters (a refused id may be up to `max_connect_size` long).
    pub(crate) fn shown_id(id: &str) -> String {
        match id.char_indices().nth(SHOWN_ID_CHARS) {
            Some((cut, _)) => format!("{}...", &id[..cut]),
            None => id.to_owned(),
        }
    }

    /// What the connection's transport says as it closes (a WebSocket close status; TLS
    /// sends close_notify whatever it is).
    pub(crate) fn farewell(&self) -> Farewell {
        match self {
            CloseReason::ProtocolError {
                error: DecodeError::PacketTooLarge,
                ..
            } => Farewell::TooBig,
            CloseReason::ProtocolError { .. } | CloseReason::Violation { .. } => {
                Farewell::ProtocolError
            }
            CloseReason::ConnectTimeout
            | CloseReason::KeepAlive
            | CloseReason::SlowConsumer { .. }
            | CloseReason::IncompletePacket { .. } => Farewell::PolicyViolation,
            // The broker did not answer in time, or could not store: not the client's fault.
            CloseReason::VerifyTimeout | CloseReason::StorageFailure(_) => Farewell::InternalError,
            CloseReason::Shutdown => Farewell::GoingAway,
            CloseReason::ClientDisconnect(_)
            | CloseReason::PeerClosed
            | CloseReason::SocketError(_)
            | CloseReason::Transport(_)
            | CloseReason::Other
            | CloseReason::ConnectRefused { .. }
            | CloseReason::ConnectThrottled { .. }
            | CloseReason::Takeover
            | CloseReason::SessionEnded => Farewell::Normal,
        }
    }

    /// The limiter of this reason's lines.
    pub(crate) fn limiter(&self) -> &'static Limiter {
        match self {
            CloseReason::ConnectThrottled { .. } => &THROTTLED,
            other => &LIMITERS[other.kind().index()],
        }
    }
}

/// Throttled CONNECTs come in floods (a password guesser): their lines are limited apart,
/// so that they never hide the other refusals.
static THROTTLED: Limiter = Limiter::new("connection closed: connect_refused (throttled)");

/// One rate limit per close reason, in `CloseKind::ALL` order.
static LIMITERS: [Limiter; CloseKind::COUNT] = [
    Limiter::new("connection closed: disconnect"),
    Limiter::new("connection closed: peer_closed"),
    Limiter::new("connection closed: socket_error"),
    Limiter::new("connection closed: protocol_error"),
    Limiter::new("connection closed: violation"),
    Limiter::new("connection closed: other"),
    Limiter::new("connection closed: connect_refused"),
    Limiter::new("connection closed: connect_timeout"),
    Limiter::new("connection closed: keep_alive"),
    Limiter::new("connection closed: takeover"),
    Limiter::new("connection closed: slow_consumer"),
    Limiter::new("connection closed: shutdown"),
    Limiter::new("connection closed: storage_failure"),
    Limiter::new("connection closed: session_ended"),
    Limiter::new("connection closed: incomplete_packet"),
    Limiter::new("connection closed: transport"),
];

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientDisconnect(code) => {
                write!(f, "DISCONNECT from the client ({})", code.name())
            }
            CloseReason::PeerClosed => f.write_str("closed by the peer without DISCONNECT"),
            CloseReason::SocketError(e) => write!(f, "socket error: {e}"),
            CloseReason::Transport(e) => write!(f, "transport error: {e}"),
            CloseReason::ProtocolError { error, answer } => {
                write!(f, "protocol error: {error:?}; answered {answer:?}")
            }
            CloseReason::IncompletePacket { code, why } => {
                write!(f, "incomplete packet: {why}")?;
                match code {
                    Some(c) => write!(f, " (DISCONNECT {})", c.name()),
                    None => Ok(()),
                }
            }
            CloseReason::Violation { packet, code } => {
                write!(f, "{packet:?} refused by the session")?;
                match code {
                    Some(c) => write!(f, " (DISCONNECT {})", c.name()),
                    None => Ok(()),
                }
            }
            CloseReason::Other => f.write_str("closed by the broker"),
            CloseReason::ConnectRefused {
                code,
                client_id,
                why,
            } => {
                write!(
                    f,
                    "CONNECT of client id {client_id:?} refused ({}",
                    code.name()
                )?;
                if !why.is_empty() {
                    write!(f, ": {why}")?;
                }
                f.write_str(")")
            }
            CloseReason::ConnectThrottled { code } => write!(
                f,
                "CONNECT refused without a check ({}): its source failed to authenticate \
                 too often",
                code.name()
            ),
            CloseReason::ConnectTimeout => f.write_str("no CONNECT in time"),
            CloseReason::VerifyTimeout => f.write_str("password check not done in time"),
            CloseReason::KeepAlive => f.write_str("keep alive timeout"),
            CloseReason::Takeover => f.write_str("taken over by a new connection"),
            CloseReason::SlowConsumer { secs, max_out } => write!(
                f,
                "slow consumer (output over {max_out} bytes, or messages waiting with no \
                 acknowledgement, for {secs}s)"
            ),
            CloseReason::Shutdown => f.write_str("the broker is stopping"),
            CloseReason::StorageFailure(code) => write!(
                f,
                "storage commit failed ({}); its acknowledgements were withheld",
                code.name()
            ),
            CloseReason::SessionEnded => f.write_str("closed by the session"),
        }
    }
}

/// What the shard last asked of a session, for `SessionCall::close_reason` when the session
/// answers with `Action::Close`. Set before every call that can close a connection.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum SessionCall {
    #[default]
    Other,
    /// `handle_packet`; the reason code when the packet is a DISCONNECT.
    Packet {
        packet: PacketType,
        disconnect: Option<ReasonCode>,
    },
    /// `handle_timeout` (keep alive).
    Timeout,
    /// `acknowledge` refusing a publish because the store is failing.
    StoreRefused,
    /// `shutdown`.
    Shutdown,
}

impl SessionCall {
    pub(crate) fn packet(packet: &Packet) -> SessionCall {
        SessionCall::Packet {
            packet: packet.packet_type(),
            disconnect: match packet {
                Packet::Disconnect(d) => Some(d.reason),
                _ => None,
            },
        }
    }

    /// Why the session closed its connection after this call; `out` is the connection's
    /// output (for a v5 client it ends with the DISCONNECT the session wrote, if any).
    pub(crate) fn close_reason(self, out: &[u8]) -> CloseReason {
        let written = trailing_disconnect(out);
        match self {
            SessionCall::Packet {
                disconnect: Some(code),
                ..
            } => CloseReason::ClientDisconnect(code),
            SessionCall::Packet { packet, .. } => CloseReason::Violation {
                packet,
                code: written,
            },
            SessionCall::Timeout => CloseReason::KeepAlive,
            SessionCall::StoreRefused => CloseReason::StorageFailure(ReasonCode::QuotaExceeded),
            SessionCall::Shutdown => CloseReason::Shutdown,
            SessionCall::Other => match written {
                Some(ReasonCode::KeepAliveTimeout) => CloseReason::KeepAlive,
                Some(ReasonCode::ServerShuttingDown) => CloseReason::Shutdown,
                Some(_) | None => CloseReason::SessionEnded,
            },
        }
    }
}

/// The reason code of a v5 DISCONNECT without properties at the end of `out` (how
/// `Session` writes one before `Action::Close`: `E0 01 code`).
fn trailing_disconnect(out: &[u8]) -> Option<ReasonCode> {
    match out {
        [.., 0xE0, 0x01, code] => ReasonCode::from_wire(ReasonContext::Disconnect, *code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::codec::{Disconnect, ProtocolVersion};

    #[test]
    fn the_sessions_disconnect_names_the_violation() {
        let mut out = BytesMut::from(&b"earlier output"[..]);
        let d = Packet::Disconnect(Disconnect::new(ReasonCode::ReceiveMaximumExceeded));
        crate::codec::encode(&d, ProtocolVersion::V5, &mut out);
        let call = SessionCall::Packet {
            packet: PacketType::Publish,
            disconnect: None,
        };
        let reason = call.close_reason(&out);
        assert_eq!(reason.kind(), CloseKind::Violation);
        let text = reason.to_string();
        assert!(
            text.contains("Publish") && text.contains("eceive"),
            "{text}"
        );
        let mut ka = BytesMut::new();
        let d = Packet::Disconnect(Disconnect::new(ReasonCode::KeepAliveTimeout));
        crate::codec::encode(&d, ProtocolVersion::V5, &mut ka);
        assert_eq!(
            SessionCall::Other.close_reason(&ka).kind(),
            CloseKind::KeepAlive
        );
        assert_eq!(
            SessionCall::Other.close_reason(b"").kind(),
            CloseKind::SessionEnded
        );
    }

    #[test]
    fn a_client_disconnect_is_not_a_violation() {
        let call = SessionCall::packet(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        assert_eq!(call.close_reason(b"").kind(), CloseKind::ClientDisconnect);
        assert_eq!(call.close_reason(b"").level(), Level::Info);
    }
}
