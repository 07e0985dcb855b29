//! The byte paths of connections that came in on a TLS, WebSocket or PROXY-protocol listener:
//! their bytes pass through the connection's `Transport` (`crate::transport`) between the
//! socket and the MQTT codec. Plain TCP connections never come here.
//!
//! Owns: `ConnExtra` (what only some connections have: a partial packet, the transport and
//! the wire bytes it made that the socket has not taken yet), the read step (socket bytes ->
//! `Transport::read` -> the shard's second scratch buffer `Core::app` -> the decoder), the
//! flush step (MQTT output up to the first waiting hold -> `Transport::write` -> one `send`),
//! the farewell at close (`Transport::close`), the TLS handshake time budget of a turn, and the
//! facts a transport gives about its client (the PROXY address, the certificate's identity).
//!
//! Must never: wrap (encrypt, frame) output behind a waiting hold (wrapped bytes can no
//! longer be held back or taken back: `Holds` positions are MQTT positions in `Conn::out`),
//! reorder wire bytes, or start a TLS handshake step once a turn has spent
//! `HANDSHAKE_TIME_PER_TURN` on them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::core::{Conn, Core, Phase};
use super::ids::{ConnId, ConnKey};
use super::io::Step;
use super::sys::{self, IoOutcome};
use crate::codec::{Connect, MqttStr};
use crate::log;
use crate::transport::{CloseReason, ReadStatus, Transport, TransportError};

/// CPU time a turn may spend reading TLS handshakes. A full handshake costs the broker
/// about 0.15 ms with X25519 (what OpenSSL and browsers offer first) and 0.6-0.9 ms with
/// P-384 (what rustls clients on `ring` offer first), measured with `ringmq-bench
/// connect-rate --tls` (README "Transports"). Once a turn has spent this long on them, the
/// connections with handshake input wait, in arrival order, for the next turns: a burst of
/// thousands of new TLS clients delays the shard's other clients by about this much per turn
/// instead of by the whole burst (measured: a bystander's worst PINGRESP during a burst of
/// 5,000 handshakes went from 296-425 ms unbounded to the machine's noise floor). The first
/// handshake of a turn always runs, and the CONNECT timeout still covers the waiting ones.
pub(crate) const HANDSHAKE_TIME_PER_TURN: Duration = Duration::from_millis(2);

/// The parts of a connection most connections do not have, boxed together so that an idle
/// plain TCP connection pays one null pointer for all of them.
#[derive(Debug)]
pub(crate) struct ConnExtra {
    /// An incomplete trailing MQTT packet, kept between reads (boxed: rare, and every idle
    /// TLS connection carries this field).
    input: Option<Box<BytesMut>>,
    /// The transport of a TLS, WebSocket or PROXY-protocol listener.
    transport: Option<Transport>,
    /// Bytes for the socket the transport made (TLS records, WebSocket frames, the HTTP
    /// 101, handshake messages) that the socket has not taken yet; freed once it has.
    wire: BytesMut,
    /// The farewell `Transport::close` sends when the connection ends (a WebSocket close
    /// status; TLS sends close_notify whatever it is).
    close_reason: CloseReason,
}

impl ConnExtra {
    /// The extra part of a connection accepted on a listener with a transport.
    pub(crate) fn with_transport(transport: Transport) -> Box<ConnExtra> {
        Box::new(ConnExtra {
            input: None,
            transport: Some(transport),
            wire: BytesMut::new(),
            close_reason: CloseReason::Normal,
        })
    }

    /// Whether nothing in it needs keeping.
    fn is_empty(&self) -> bool {
        self.input.is_none() && self.transport.is_none() && self.wire.is_empty()
    }
}

impl Conn {
    /// Takes the saved partial packet (the box goes once nothing else is in it).
    pub(crate) fn take_input(&mut self) -> Option<BytesMut> {
        let extra = self.extra.as_mut()?;
        let input = extra.input.take();
        if extra.is_empty() {
            self.extra = None;
        }
        input.map(|b| *b)
    }

    /// Whether bytes not decoded yet are kept (an incomplete packet, or input the receive
    /// ring brought while the connection could not be read).
    pub(crate) fn has_input(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.input.is_some())
    }

    /// Keeps an incomplete trailing packet until more bytes arrive.
    pub(crate) fn keep_input(&mut self, input: BytesMut) {
        match self.extra.as_mut() {
            Some(extra) => extra.input = Some(Box::new(input)),
            None => {
                self.extra = Some(Box::new(ConnExtra {
                    input: Some(Box::new(input)),
                    transport: None,
                    wire: BytesMut::new(),
                    close_reason: CloseReason::Normal,
                }))
            }
        }
    }

    /// The connection's transport; `None` for plain TCP.
    pub(crate) fn transport(&self) -> Option<&Transport> {
        self.extra.as_ref()?.transport.as_ref()
    }

    /// Output not written yet: MQTT bytes and wire bytes the transport made of them. This is
    /// what counts against `max_output_buffer`.
    pub(crate) fn output_len(&self) -> usize {
        self.out.len() + self.extra.as_ref().map_or(0, |x| x.wire.len())
    }

    /// Whether anything waits to be written.
    pub(crate) fn has_output(&self) -> bool {
        self.output_len() > 0
    }

    /// Whether the next read of this connection may run a TLS handshake step (the costly
    /// part of a new TLS connection).
    fn in_tls_handshake(&self) -> bool {
        self.transport()
            .is_some_and(|t| t.listener().tls().is_some() && !t.handshake_done())
    }

    /// The farewell for the transport when the connection ends.
    pub(crate) fn close_reason(&self) -> CloseReason {
        self.extra
            .as_ref()
            .map_or(CloseReason::Normal, |x| x.close_reason)
    }
}

/// What ended a write through a transport.
#[derive(Debug)]
pub(crate) enum FlushFailure {
    Socket(io::Error),
    Transport(TransportError),
}

/// Wraps the MQTT output that no hold keeps back into wire bytes (one WebSocket frame, TLS
/// records of at most 16 KiB) and sends what the wire holds with one `send`. Nothing is
/// wrapped while the socket is full: the output then waits as MQTT bytes (where the session
/// sees it against `max_output_buffer`) and leaves as one frame once the socket drains.
pub(crate) fn flush_layered(conn: &mut Conn) -> Result<usize, FlushFailure> {
    if conn.write_blocked {
        return Ok(0);
    }
    let ready = conn
        .holds
        .as_ref()
        .map_or(conn.out.len(), |h| h.writable(conn.out.len()));
    let Some(extra) = conn.extra.as_mut() else {
        return Ok(0);
    };
    let Some(transport) = extra.transport.as_mut() else {
        return Ok(0);
    };
    if ready > 0 {
        transport
            .write(&conn.out[..ready], &mut extra.wire)
            .map_err(FlushFailure::Transport)?;
        if ready == conn.out.len() {
            conn.out = BytesMut::new();
        } else {
            conn.out.advance(ready);
        }
        if let Some(h) = conn.holds.as_mut() {
            h.advance(ready);
            if h.is_empty() {
                conn.holds = None;
            }
        }
    }
    send_wire(conn)
}

/// A lingering connection's MQTT output is all wrapped: the transport's farewell for the
/// connection's close reason (WebSocket close frame, TLS close_notify) joins the wire bytes,
/// and they go out as far as the socket takes them. The caller sends FIN once
/// `Conn::has_output` is false. Calling it again only sends what is left.
pub(crate) fn send_farewell(conn: &mut Conn) -> Result<usize, FlushFailure> {
    let reason = conn.close_reason();
    let Some(extra) = conn.extra.as_mut() else {
        return Ok(0);
    };
    let Some(transport) = extra.transport.as_mut() else {
        return Ok(0);
    };
    transport.close(reason, &mut extra.wire);
    send_wire(conn)
}

/// One `send` of the wire bytes, unless the socket is full; returns the bytes sent.
fn send_wire(conn: &mut Conn) -> Result<usize, FlushFailure> {
    if conn.write_blocked {
        return Ok(0);
    }
    // A gateway client (no socket) never has a transport.
    let Some(fd) = conn.fd.as_ref() else {
        return Ok(0);
    };
    let Some(extra) = conn.extra.as_mut() else {
        return Ok(0);
    };
    if extra.wire.is_empty() {
        return Ok(0);
    }
    match sys::send(fd.as_fd(), &extra.wire).map_err(FlushFailure::Socket)? {
        IoOutcome::Done(n) if n == extra.wire.len() => {
            extra.wire = BytesMut::new();
            Ok(n)
        }
        IoOutcome::Done(n) => {
            extra.wire.advance(n);
            conn.write_blocked = true;
            Ok(n)
        }
        IoOutcome::WouldBlock => {
            conn.write_blocked = true;
            Ok(0)
        }
    }
}

/// The last write of a connection with a transport: the MQTT output no hold keeps back
/// (the final CONNACK or DISCONNECT), the transport's farewell (WebSocket close frame, TLS
/// close_notify), whatever of it the socket takes now; then FIN. Wire bytes are the exact
/// continuation of what was sent, so they are offered even after a short write.
pub(crate) fn last_flush_layered(conn: &mut Conn, reason: CloseReason) {
    let Some(fd) = conn.fd.as_ref() else {
        return;
    };
    let ready = conn
        .holds
        .as_ref()
        .map_or(conn.out.len(), |h| h.writable(conn.out.len()));
    if let Some(extra) = conn.extra.as_mut()
        && let Some(transport) = extra.transport.as_mut()
    {
        if ready > 0 {
            // Refused only when the transport is closed already (its farewell is out).
            let _ = transport.write(&conn.out[..ready], &mut extra.wire);
        }
        transport.close(reason, &mut extra.wire);
        if !extra.wire.is_empty() {
            let _ = sys::send(fd.as_fd(), &extra.wire);
        }
    }
    sys::shutdown_write(fd.as_fd());
}

/// When this turn's first TLS handshake step began, and the connections that wait for a
/// later turn (oldest first).
#[derive(Debug, Default)]
pub(crate) struct HandshakeBudget {
    started: Option<Instant>,
    waiting: VecDeque<ConnKey>,
}

impl HandshakeBudget {
    /// Whether this turn's time for handshakes is spent.
    fn spent(&self) -> bool {
        self.started
            .is_some_and(|t| t.elapsed() >= HANDSHAKE_TIME_PER_TURN)
    }
}

impl HandshakeBudget {
    /// Whether connections wait for a later turn's budget.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

impl Core {
    /// The start of a turn's socket work: a fresh handshake budget, spent first on the
    /// connections that waited for it (in arrival order).
    pub(crate) fn handshake_turn(&mut self) {
        self.handshakes.started = None;
        let waiting = std::mem::take(&mut self.handshakes.waiting);
        for key in waiting {
            if self.conns.live(key).is_none() {
                continue;
            }
            if self.reads_held() || self.handshakes.spent() {
                self.handshakes.waiting.push_back(key);
            } else {
                self.service_read(key.id);
            }
        }
    }

    /// Whether connection `id` must wait for a later turn before it is read: its read would
    /// run a TLS handshake step and this turn's time for those is spent.
    pub(crate) fn defer_handshake(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conns.get(id) else {
            return false;
        };
        if !conn.in_tls_handshake() {
            return false;
        }
        if self.handshakes.spent() {
            let key = ConnKey::new(id, conn.generation);
            if !self.handshakes.waiting.contains(&key) {
                self.handshakes.waiting.push_back(key);
            }
            return true;
        }
        self.handshakes.started.get_or_insert_with(Instant::now);
        false
    }

    /// Bytes `input` read from connection `id`, which has a transport: they go through it,
    /// the MQTT bytes that come out are decoded, and what the transport must send (handshake
    /// records, the HTTP 101, a pong, a farewell) waits in the connection's wire bytes for
    /// the end of the turn.
    pub(crate) fn read_through(&mut self, id: ConnId, input: &mut [u8]) -> Step {
        let mut app = std::mem::take(&mut self.app);
        let step = self.read_through_into(id, input, &mut app);
        app.clear();
        self.app = app;
        step
    }

    fn read_through_into(&mut self, id: ConnId, input: &mut [u8], app: &mut BytesMut) -> Step {
        let Some(conn) = self.conns.get_mut(id) else {
            return Step::Close;
        };
        let socket_peer = conn.peer;
        let Some(extra) = conn.extra.as_mut() else {
            return Step::Close;
        };
        let Some(transport) = extra.transport.as_mut() else {
            return Step::Close;
        };
        let had_proxy = transport.proxy_addr().is_some();
        let result = transport.read(input, app, &mut extra.wire);
        if !had_proxy && let Some(proxy) = transport.proxy_addr() {
            let client = transport.client_addr();
            if let Some(client) = client {
                conn.peer = client;
            }
            log!(
                INFO,
                self.log_id,
                "PROXY header from {socket_peer}: client address {} ({proxy:?})",
                client.map_or_else(|| "not given".to_owned(), |a| a.to_string())
            );
        }
        self.mark_dirty(id);
        match result {
            Ok(status) => {
                let step = if app.is_empty() {
                    Step::Continue
                } else {
                    self.process_input(id, app)
                };
                match (status, step) {
                    (ReadStatus::Open, step) => step,
                    (ReadStatus::Closed, Step::Continue) => Step::Close,
                    (ReadStatus::Closed, step) => step,
                }
            }
            Err(e) => {
                self.close_for(id, super::close::CloseReason::Transport(e.to_string()));
                Step::Close
            }
        }
    }

    /// The farewell connection `id`'s transport sends when it closes (no effect on a
    /// plain TCP connection).
    pub(crate) fn set_close_reason(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(extra) = self.conns.get_mut(id).and_then(|c| c.extra.as_mut()) {
            extra.close_reason = reason;
        }
    }

    /// On a listener with `use_identity_as_username`, the client certificate's identity is
    /// the CONNECT's username, whatever the client sent as one. Returns whether it was: the
    /// verified certificate then authenticates the client (no password check).
    pub(crate) fn apply_identity(&self, id: ConnId, connect: &mut Connect) -> bool {
        let Some(conn) = self.conns.get(id) else {
            return false;
        };
        let Some(identity) = conn.transport().and_then(Transport::peer_identity) else {
            return false;
        };
        // `identity_of` admits only names that are valid MQTT strings.
        if let Some(name) = MqttStr::try_from_str(&identity) {
            log!(
                INFO,
                self.log_id,
                "client certificate of {} names user {identity:?}",
                conn.peer
            );
            connect.username = Some(name);
            return true;
        }
        false
    }

    /// A write through connection `id`'s transport failed: its output is dropped and it
    /// closes (at once when it was closing already).
    pub(crate) fn flush_failed(&mut self, id: ConnId, failure: FlushFailure) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.out = BytesMut::new();
            if matches!(conn.phase, Phase::Lingering | Phase::Draining) {
                // Closing already, and nothing more can reach the client.
                self.close_now(id);
                return;
            }
        }
        match failure {
            FlushFailure::Socket(e) => self.close_lost(id, Some(e)),
            FlushFailure::Transport(e) => {
                self.close_for(id, super::close::CloseReason::Transport(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::OwnedFd;

    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::config::{Limits, ListenerConfig};
    use crate::shard::core::Phase;
    use crate::shard::hold::Holds;
    use crate::transport::ListenerRuntime;

    const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    /// A connection of a `ws://` listener whose upgrade is done, over one end of a socket
    /// pair; the other end is returned (what the "client" receives). The 101 is not sent.
    fn ws_conn() -> (Conn, UnixStream) {
        let config = ListenerConfig::new("ws://127.0.0.1:1/mqtt".parse().expect("url"));
        let rt = ListenerRuntime::load(&config, &Limits::default()).expect("listener");
        let mut transport = rt.new_transport().expect("transport").expect("not plain");
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let mut app = BytesMut::new();
        let mut wire = BytesMut::new();
        let mut request = UPGRADE.to_vec();
        transport
            .read(&mut request, &mut app, &mut wire)
            .expect("upgrade");
        assert!(transport.handshake_done() && wire.starts_with(b"HTTP/1.1 101"));
        let conn = Conn {
            fd: Some(OwnedFd::from(ours)),
            generation: 1,
            timer_tick: 0,
            phase: Phase::Open,
            dirty: false,
            write_blocked: false,
            read_pending: false,
            peer_closed: false,
            ring: crate::shard::uring::RingRecv::Off,
            feeds: 0,
            holds: None,
            version: None,
            client: None,
            since: 0,
            peer: "127.0.0.1:1".parse().expect("addr"),
            extra: Some(ConnExtra::with_transport(*transport)),
            out: BytesMut::new(),
        };
        theirs.set_nonblocking(true).expect("nonblocking");
        (conn, theirs)
    }

    fn received(peer: &mut UnixStream) -> Vec<u8> {
        let mut got = vec![0; 1024];
        match peer.read(&mut got) {
            Ok(n) => got.truncate(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => got.clear(),
            Err(e) => panic!("{e}"),
        }
        got
    }

    /// Output behind a waiting hold is not wrapped: the first flush sends one frame with
    /// what precedes the hold, and the held bytes stay MQTT bytes in `out` until the hold
    /// is released, then leave in a frame of their own.
    #[test]
    fn held_output_is_never_wrapped_early() {
        let (mut conn, mut peer) = ws_conn();
        conn.out.extend_from_slice(b"\xd0\x00"); // PINGRESP: not held
        let mut holds = Box::<Holds>::default();
        let hold = holds.at(2);
        holds.add_remote(hold, 1);
        conn.holds = Some(holds);
        conn.out.extend_from_slice(b"\x40\x02\x00\x07"); // PUBACK 7: held
        flush_layered(&mut conn).expect("flush");
        assert_eq!(
            received(&mut peer),
            b"\x82\x02\xd0\x00",
            "one frame, up to the hold"
        );
        assert_eq!(
            &conn.out[..],
            b"\x40\x02\x00\x07",
            "held bytes stay unwrapped"
        );
        assert!(conn.extra.as_ref().is_some_and(|x| x.wire.is_empty()));

        flush_layered(&mut conn).expect("flush");
        assert_eq!(received(&mut peer), b"", "still held");

        if let Some(h) = conn.holds.as_mut() {
            h.remote_done(hold);
        }
        flush_layered(&mut conn).expect("flush");
        assert_eq!(received(&mut peer), b"\x82\x04\x40\x02\x00\x07");
        assert!(conn.out.is_empty() && conn.holds.is_none());
    }

    /// While the socket is full nothing more is wrapped: the output waits as MQTT bytes
    /// (counted by the session against `max_output_buffer`) and leaves later as one frame.
    #[test]
    fn nothing_is_wrapped_while_the_socket_is_full() {
        let (mut conn, mut peer) = ws_conn();
        conn.write_blocked = true;
        conn.out.extend_from_slice(b"\xd0\x00");
        flush_layered(&mut conn).expect("flush");
        conn.out.extend_from_slice(b"\xd0\x00");
        assert_eq!(conn.output_len(), 4);
        assert!(conn.extra.as_ref().is_some_and(|x| x.wire.is_empty()));
        conn.write_blocked = false;
        flush_layered(&mut conn).expect("flush");
        assert_eq!(received(&mut peer), b"\x82\x04\xd0\x00\xd0\x00");
    }

    /// What every idle TLS or WebSocket connection carries besides its layers' state: the
    /// box stays in mimalloc's 96 B size class (it was 144 B while `Transport` held the
    /// PROXY addresses inline; measured RSS slope in README "Transports").
    #[test]
    fn extra_state_stays_small() {
        let extra = std::mem::size_of::<ConnExtra>();
        let transport = std::mem::size_of::<Transport>();
        eprintln!("ConnExtra: {extra} B (Transport: {transport} B)");
        assert!(extra <= 96, "ConnExtra grew to {extra} bytes");
    }

    /// The partial-input box goes away once nothing is in it (a plain TCP connection).
    #[test]
    fn partial_input_box_is_freed() {
        let (mut conn, _peer) = ws_conn();
        conn.extra = None;
        conn.keep_input(BytesMut::from(&b"\x30"[..]));
        assert!(conn.extra.is_some());
        assert_eq!(conn.take_input().as_deref(), Some(&b"\x30"[..]));
        assert!(conn.extra.is_none());
    }
}
