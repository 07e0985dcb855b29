//! Transports: the byte transforms between a socket and the MQTT codec for listeners that
//! do not speak plain MQTT over TCP: TLS (rustls), WebSocket (RFC 6455), WebSocket over TLS,
//! each optionally behind a PROXY protocol header. Sans-IO: bytes in, bytes out.
//!
//! Owns: the per-connection `Transport` (the layers of its listener, in wire order PROXY ->
//! TLS -> WebSocket -> MQTT), the per-listener `ListenerRuntime` they share, and the rule
//! that every input leads to progress, "need more" (the bytes kept, bounded) or a typed
//! error with the farewell for the peer (TLS alert, HTTP error, close frame) already in
//! the wire output.
//!
//! Must never: touch a socket or the clock (a handshake that never finishes is the shard's
//! timeout to enforce: it ends with CONNECT's, see `Transport::handshake_done`), allocate by
//! an unchecked length, keep a buffer for an idle connection, or panic on input.
//!
//! Call order, per connection (the shard's side):
//! 1. accept -> `ListenerRuntime::new_transport` (`None`: plain TCP, no transport at all);
//! 2. bytes read -> `Transport::read(input, app, wire)`: decode `app` as MQTT, send `wire`;
//!    `ReadStatus::Closed`: after decoding `app` and sending `wire`, close the socket; `Err`:
//!    send `wire` (best effort), then close;
//! 3. MQTT bytes to send -> `Transport::write(app, wire)`, then send `wire`;
//! 4. the broker ends the connection -> `Transport::close(reason, wire)`, send `wire`, close.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

mod listener;
pub mod proxy;
mod tls;
mod tls_cipher;
pub mod tls_config;
mod ws;
mod ws_handshake;

#[cfg(test)]
mod tests;

pub use listener::ListenerRuntime;
pub use proxy::{ProxyAddr, ProxyError};
pub use tls::{MAX_PENDING_HANDSHAKE, MAX_RECORD, TlsError};
pub use tls_config::{TlsAcceptor, TlsFileProblem, TlsFiles, TlsLoadError, identity_of};
pub use ws::{FRAME_SLACK, FrameError, UpgradeError, WsError, WsSettings, close_code};
pub use ws_handshake::MAX_REQUEST as MAX_WS_REQUEST;

use proxy::ProxyDecoder;
use tls::TlsSession;
use ws::WsSession;

/// Why a transport ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("PROXY protocol: {0}")]
    Proxy(#[from] ProxyError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Ws(#[from] WsError),
    /// `write` after `close` or after the peer closed.
    #[error("transport closed")]
    Closed,
}

/// What a read left the connection in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Keep reading.
    Open,
    /// The peer closed cleanly (WebSocket close, TLS close_notify); our answer is in
    /// `wire`. Decode what `app` holds, send `wire`, then close the socket.
    Closed,
}

/// Why the broker closes a connection, for the farewell the transport sends (a WebSocket
/// close status; TLS sends close_notify whatever the reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A DISCONNECT, a session takeover: the connection did its job.
    Normal,
    /// The broker is shutting down.
    GoingAway,
    /// The client broke the MQTT protocol.
    ProtocolError,
    /// The client broke a broker rule (authorisation, keep alive, a slow consumer).
    PolicyViolation,
    /// The client sent a packet over the size limit.
    TooBig,
    /// The broker failed.
    InternalError,
}

impl CloseReason {
    /// The WebSocket close status code (RFC 6455 section 7.4.1).
    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::Normal => close_code::NORMAL,
            CloseReason::GoingAway => close_code::GOING_AWAY,
            CloseReason::ProtocolError => close_code::PROTOCOL_ERROR,
            CloseReason::PolicyViolation => close_code::POLICY_VIOLATION,
            CloseReason::TooBig => close_code::TOO_BIG,
            CloseReason::InternalError => close_code::INTERNAL_ERROR,
        }
    }
}

/// Where the PROXY header stands, on a listener that expects one.
#[derive(Debug)]
enum ProxyStage {
    /// Not complete yet.
    Pending(ProxyDecoder),
    /// Received.
    Done(ProxyAddr),
}

/// The TLS and WebSocket layers of a connection, each combination in one allocation (the
/// shard keeps it for every idle TLS or WebSocket connection).
#[derive(Debug)]
enum Layers {
    /// Neither: a PROXY-only listener.
    None,
    /// Boxed (56 B), so that the `Transport` the shard embeds stays small.
    Ws(Box<WsSession>),
    /// Boxed: rustls's connection is about 1.1 KB inline, which a WebSocket or PROXY-only
    /// transport should not carry.
    Tls(Box<TlsSession>),
    /// WebSocket over TLS in one box: the 1,120 B `TlsSession` takes mimalloc's 1,280 B size
    /// class, whose slack holds the WebSocket state, so it costs no allocation of its own.
    Wss(Box<Wss>),
}

#[derive(Debug)]
struct Wss {
    tls: TlsSession,
    ws: WsSession,
}

/// The transform layers of one connection. The shard holds it in the connection's rarely
/// present part, so a plain TCP connection pays one null pointer; 40 B, which every idle
/// TLS or WebSocket connection carries.
#[derive(Debug)]
pub struct Transport {
    listener: Arc<ListenerRuntime>,
    /// `None` on a listener without PROXY headers; boxed (the two addresses are 64 B) so
    /// that TLS and WebSocket connections do not carry them.
    proxy: Option<Box<ProxyStage>>,
    layers: Layers,
    /// An error or a close ended the transport; input is ignored, writes refused.
    closed: bool,
}

impl Transport {
    /// Handles bytes read from the socket (`input` is overwritten: TLS decrypts in place).
    /// Appends the MQTT bytes they carried to `app` and what must go back to the peer to
    /// `wire`. Keeps only an incomplete PROXY header, TLS record or WebSocket frame header
    /// between calls. On `Err`, `wire` holds the farewell (TLS alert, HTTP error response,
    /// WebSocket close frame): send it if possible, then close.
    pub fn read(
        &mut self,
        input: &mut [u8],
        app: &mut BytesMut,
        wire: &mut BytesMut,
    ) -> Result<ReadStatus, TransportError> {
        if self.closed {
            return Ok(ReadStatus::Closed);
        }
        let result = self.read_layers(input, app, wire);
        if !matches!(result, Ok(ReadStatus::Open)) {
            self.closed = true;
        }
        result
    }

    fn read_layers(
        &mut self,
        mut input: &mut [u8],
        app: &mut BytesMut,
        wire: &mut BytesMut,
    ) -> Result<ReadStatus, TransportError> {
        if let Some(stage) = self.proxy.as_deref_mut()
            && let ProxyStage::Pending(decoder) = stage
        {
            let Some((addr, used)) = decoder.feed(input)? else {
                return Ok(ReadStatus::Open);
            };
            *stage = ProxyStage::Done(addr);
            input = input.get_mut(used..).unwrap_or_default();
        }
        let settings = self.listener.ws();
        let closed = match (&mut self.layers, settings) {
            (Layers::None, _) => {
                app.extend_from_slice(input);
                false
            }
            (Layers::Ws(ws), Some(settings)) => ws.read(input, settings, app, wire)?,
            (Layers::Tls(tls), _) => {
                let closed = tls.read(input, wire, &mut |plain| {
                    app.extend_from_slice(plain);
                    Ok(())
                })?;
                if closed {
                    tls.close(wire);
                }
                closed
            }
            (Layers::Wss(wss), Some(settings)) => {
                read_wss(&mut wss.tls, &mut wss.ws, settings, input, app, wire)?
            }
            // `new_transport` makes a WebSocket layer only for a listener with settings.
            (Layers::Ws(_) | Layers::Wss(_), None) => return Err(TransportError::Closed),
        };
        Ok(if closed {
            ReadStatus::Closed
        } else {
            ReadStatus::Open
        })
    }

    /// Wraps MQTT bytes for the wire (TLS records, a WebSocket binary frame, or both) and
    /// appends them to `wire`. Call it with everything queued for the connection in a loop
    /// turn at once: each call is one frame and at least one record.
    pub fn write(&mut self, app: &[u8], wire: &mut BytesMut) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::Closed);
        }
        match &mut self.layers {
            Layers::None => wire.extend_from_slice(app),
            Layers::Ws(ws) => ws.write(app, wire)?,
            Layers::Tls(tls) => tls.write(app, wire)?,
            Layers::Wss(wss) => {
                let mut framed = BytesMut::with_capacity(app.len() + 10);
                wss.ws.write(app, &mut framed)?;
                wss.tls.write(&framed, wire)?;
            }
        }
        Ok(())
    }

    /// Appends the farewell for `reason` to `wire`: a WebSocket close frame (if the upgrade
    /// completed), then TLS close_notify (if the handshake completed). Nothing is read or
    /// written afterwards.
    pub fn close(&mut self, reason: CloseReason, wire: &mut BytesMut) {
        if self.closed {
            return;
        }
        self.closed = true;
        let code = reason.ws_code();
        match &mut self.layers {
            Layers::None => {}
            Layers::Ws(ws) => ws.close(code, wire),
            Layers::Tls(tls) => tls.close(wire),
            Layers::Wss(wss) => {
                let mut frame = BytesMut::new();
                wss.ws.close(code, &mut frame);
                if !frame.is_empty() {
                    // A refused write leaves only close_notify (or nothing) to send.
                    let _ = wss.tls.write(&frame, wire);
                }
                wss.tls.close(wire);
            }
        }
    }

    /// Every layer finished its handshake (PROXY header received, TLS established,
    /// WebSocket upgraded): MQTT bytes may flow. Until then the shard's CONNECT timeout
    /// (`limits.connect_timeout_secs`, counted from accept) is the handshake timeout: no
    /// CONNECT can arrive before the handshakes end.
    pub fn handshake_done(&self) -> bool {
        !matches!(self.proxy.as_deref(), Some(ProxyStage::Pending(_)))
            && self.tls().is_none_or(|t| t.is_established())
            && self.ws().is_none_or(|w| w.upgraded())
    }

    /// The MQTT username the client certificate gives, when the listener sets
    /// `use_identity_as_username` and the TLS handshake completed (the handshake refuses a
    /// certificate without one, so this is `Some` on such a listener once established).
    pub fn peer_identity(&self) -> Option<String> {
        if !self.listener.config().use_identity_as_username {
            return None;
        }
        self.tls()?.peer_identity()
    }

    /// What the PROXY header said, once received.
    pub fn proxy_addr(&self) -> Option<ProxyAddr> {
        match self.proxy.as_deref()? {
            ProxyStage::Done(addr) => Some(*addr),
            ProxyStage::Pending(_) => None,
        }
    }

    /// The client's real address when a PROXY header gave one: use it instead of the
    /// socket's peer address (for logs, ACLs, `$SYS`).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr()?.source()
    }

    /// The ALPN protocol the TLS handshake chose, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls()?.alpn_protocol()
    }

    /// Bytes held between reads in all layers (zero for an idle connection).
    pub fn buffered(&self) -> usize {
        let proxy = match self.proxy.as_deref() {
            Some(ProxyStage::Pending(d)) => d.buffered(),
            Some(ProxyStage::Done(_)) | None => 0,
        };
        proxy + self.tls().map_or(0, |t| t.buffered()) + self.ws().map_or(0, |w| w.buffered())
    }

    fn tls(&self) -> Option<&TlsSession> {
        match &self.layers {
            Layers::Tls(tls) => Some(tls),
            Layers::Wss(wss) => Some(&wss.tls),
            Layers::None | Layers::Ws(_) => None,
        }
    }

    fn ws(&self) -> Option<&WsSession> {
        match &self.layers {
            Layers::Ws(ws) => Some(ws),
            Layers::Wss(wss) => Some(&wss.ws),
            Layers::None | Layers::Tls(_) => None,
        }
    }

    /// The listener this connection came from.
    pub fn listener(&self) -> &Arc<ListenerRuntime> {
        &self.listener
    }
}

/// WebSocket over TLS: each decrypted record goes straight through the WebSocket decoder;
/// what the WebSocket layer must send (101, pong, close) is encrypted after the read.
fn read_wss(
    tls: &mut TlsSession,
    ws: &mut WsSession,
    settings: &WsSettings,
    input: &mut [u8],
    app: &mut BytesMut,
    wire: &mut BytesMut,
) -> Result<bool, TransportError> {
    let mut ws_out = BytesMut::new();
    let mut ws_closed = false;
    let read = tls.read(input, wire, &mut |plain| {
        ws_closed |= ws.read(plain, settings, app, &mut ws_out)?;
        Ok(())
    });
    if !ws_out.is_empty() {
        // The farewell of a WebSocket error goes out too, when TLS still can send it.
        let sent = tls.write(&ws_out, wire);
        if read.is_ok() {
            sent?;
        }
    }
    let tls_closed = match read {
        Ok(closed) => closed,
        Err(e) => {
            if matches!(e, TransportError::Ws(_)) {
                tls.close(wire);
            }
            return Err(e);
        }
    };
    if ws_closed || tls_closed {
        tls.close(wire);
    }
    Ok(ws_closed || tls_closed)
}
