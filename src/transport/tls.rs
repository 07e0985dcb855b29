//! TLS for one connection over rustls's unbuffered API: records are decrypted where the
//! shard read them, and an idle connection keeps nothing but rustls's session state.
//!
//! Owns: feeding socket bytes to `rustls::server::UnbufferedServerConnection`, handing the
//! decrypted bytes on, encrypting outgoing bytes, and the bytes of an incomplete record (or
//! handshake message) between reads, bounded by `MAX_PENDING_HANDSHAKE` before the
//! handshake completes and by one record (`MAX_RECORD`) after.
//!
//! Must never: keep a buffer while nothing is pending, hold decrypted bytes (they go to the
//! caller at once), send application data before the handshake completes, or panic on any
//! input.
//!
//! Memory of an idle connection after the handshake and one packet each way, measured by
//! `tests/transport_memory.rs` (live heap bytes requested, counted by the test binary's
//! allocator, 1,000 connections after 300 warm-up handshakes; `Box<Transport>` included;
//! rustls 0.23.48 with `ring` and RingMQ's ChaCha20-Poly1305 record protection
//! (`super::tls_cipher`), ECDSA P-256 certificates from rcgen, a rustls client with its
//! default suites (AES-256-GCM first, ChaCha20-Poly1305 third); allocator rounding and kernel
//! socket buffers not included; 2026-12-05):
//!
//! | case | bytes per connection |
//! |---|---|
//! | `mqtts://`, TLS 1.3 (ChaCha20-Poly1305: the listener's default preference) | 2,313 |
//! | `mqtts://`, TLS 1.2 (ChaCha20-Poly1305) | 2,209 |
//! | `mqtts://`, TLS 1.3, client certificate (rustls keeps the client's chain) | 2,667 |
//! | `wss://`, TLS 1.3 (`WsSession` in the `TlsSession`'s box) | 2,369 |
//! | `mqtts://`, TLS 1.3, AES-256-GCM (`tls_cipher_preference = "client"`) | 3,345 |
//! | `mqtts://`, TLS 1.2, AES-256-GCM (`tls_cipher_preference = "client"`) | 3,241 |
//! | for comparison: `rustls::ServerConnection` alone, TLS 1.3 (ChaCha20-Poly1305) | 5,274 |
//!
//! Of the 2,313 bytes: 40 are the `Transport` box, about 1,120 the boxed `TlsSession`
//! (`UnbufferedServerConnection` is 1,088 bytes inline), the rest is rustls's heap: the
//! traffic keys, the TLS 1.3 key schedule, and what it keeps from the handshake (allocation
//! sizes seen live per idle connection: 1,120 `TlsSession`, 640 the handshake deframer's
//! span list, 2 x 44 the record encrypter and decrypter (key and IV), 224 the boxed TLS 1.3
//! traffic state (its key schedule; 120 with TLS 1.2), 2 x 96 two chunk queues, 9 the SNI
//! name). With AES-GCM the encrypter and decrypter are `ring`'s, 560 bytes each (its key
//! type holds an AES key schedule and GHASH table whatever the algorithm): 1,032 bytes
//! more. Of these only the `TlsSession` and the ChaCha20-Poly1305 keys are ours: the span
//! list (allocated with room for 16 spans by `HandshakeDeframer::default`) and the queues (a
//! `VecDeque` keeps the room its handshake records took) stay allocated while idle, and
//! rustls 0.23.48 has no call that frees them. In mimalloc's size classes the 1,120 B box
//! takes 1,280 B, each 44 B key 48 B (each 560 B AES-GCM key 640 B), so the broker's RSS
//! grows by more than this table says (README "Transports"). The buffered API costs 2.9 KB
//! more because it also keeps its own receive buffer and queue capacities. A client
//! certificate chain adds its DER size (a P-256 leaf here: about 350 bytes; an RSA chain
//! with an intermediate adds 2-3 KB).
//!
//! While reading, rustls 0.23 still copies each decrypted record into a `Vec` of its own
//! (its unbuffered reader hands records out of an internal queue); that allocation lives
//! only within the call.

use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::{ServerConfig, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

use super::TransportError;
use super::tls_config::identity_of;

/// Largest TLS record on the wire: 5-byte header, 2^14 bytes of plaintext, and the 2048
/// bytes of expansion TLS 1.2 allows (rustls refuses anything longer).
pub const MAX_RECORD: usize = 5 + 16_384 + 2048;

/// Bytes kept between reads before the handshake completes: one handshake message of up to
/// 64 KiB (rustls's own limit; a client certificate chain is the largest) joined across
/// records, plus one more record. A client that sends more without completing it is
/// refused.
pub const MAX_PENDING_HANDSHAKE: usize = 0x1_0000 + MAX_RECORD;

/// Rounds of the rustls state machine handled in one write or alert flush: each round
/// encodes one queued record, so this bounds what a write may emit before its own data
/// (session tickets, a key update, alerts: a handful in practice).
const MAX_QUEUED_ROUNDS: usize = 64;

/// Why a TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol or failed verification; rustls's alert, if any, was
    /// appended to the wire output.
    #[error(transparent)]
    Protocol(#[from] rustls::Error),
    /// The peer sent more bytes than any incomplete record or handshake message may take.
    #[error("{0} bytes of incomplete TLS input")]
    TooMuchBuffered(usize),
    /// Application data was written before the handshake completed.
    #[error("TLS handshake not complete")]
    Handshaking,
    /// The connection was closed (by us or, for writes, fully by both sides).
    #[error("TLS connection closed")]
    Closed,
    /// rustls reported a state this transport never enables (early data).
    #[error("unexpected TLS state {0}")]
    Unexpected(&'static str),
    /// Encrypting failed: the key's record limit was reached.
    #[error("TLS encryption exhausted")]
    EncryptExhausted,
}

/// One TLS server connection.
pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not discarded yet: a partial record, or a handshake message
    /// joined across records. Empty (no allocation) while idle.
    pending: Vec<u8>,
    /// The handshake completed (and the identity check, when asked for, passed).
    established: bool,
    /// The peer sent close_notify; later input is ignored.
    peer_closed: bool,
    /// We sent close_notify or gave up on the connection; nothing more is written.
    closed: bool,
    /// The layer above failed in the middle of a read: records rustls decrypted after that
    /// are dropped rather than delivered.
    app_failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("pending", &self.pending.len())
            .field("established", &self.established)
            .field("peer_closed", &self.peer_closed)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<TlsSession, TlsError> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            pending: Vec::new(),
            established: false,
            peer_closed: false,
            closed: false,
            app_failed: false,
        })
    }

    /// Handles bytes read from the socket. `input` is decrypted in place (its contents are
    /// garbage afterwards). Plaintext goes to `sink` record by record, as soon as each is
    /// decrypted; handshake records to send go to `wire`. Returns whether the peer closed
    /// (close_notify). On error, any alert rustls queued is in `wire`.
    pub(crate) fn read<F>(
        &mut self,
        input: &mut [u8],
        wire: &mut BytesMut,
        sink: &mut F,
    ) -> Result<bool, TransportError>
    where
        F: FnMut(&[u8]) -> Result<(), TransportError>,
    {
        if self.peer_closed || self.closed {
            return Ok(true);
        }
        let result = self.read_records(input, wire, sink);
        match &result {
            Ok(_) => {}
            Err(TransportError::Tls(_)) => {
                self.closed = true;
                self.pending = Vec::new();
                self.flush_alerts(wire);
            }
            // The layer above refused what it was given; TLS itself is sound and may still
            // carry that layer's farewell. What was not read yet is dropped.
            Err(_) => {
                self.app_failed = true;
                self.pending = Vec::new();
            }
        }
        result
    }

    fn read_records<F>(
        &mut self,
        mut input: &mut [u8],
        wire: &mut BytesMut,
        sink: &mut F,
    ) -> Result<bool, TransportError>
    where
        F: FnMut(&[u8]) -> Result<(), TransportError>,
    {
        // Complete what an earlier read left, taking only as much input as the bound allows
        // per round; once nothing is left pending, the rest is decrypted where it lies.
        while !self.pending.is_empty() && !input.is_empty() {
            let room = self.pending_limit().saturating_sub(self.pending.len());
            if room == 0 {
                return Err(TlsError::TooMuchBuffered(self.pending.len()).into());
            }
            let n = room.min(input.len());
            let (now, later) = std::mem::take(&mut input).split_at_mut(n);
            input = later;
            self.pending.extend_from_slice(now);
            let (used, closed) = process(&mut self.conn, &mut self.pending, wire, sink)?;
            self.pending.drain(..used.min(self.pending.len()));
            if closed {
                return Ok(self.peer_has_closed());
            }
        }
        if self.pending.is_empty() && !input.is_empty() {
            let (used, closed) = process(&mut self.conn, input, wire, sink)?;
            if closed {
                return Ok(self.peer_has_closed());
            }
            let rest = input.get(used..).unwrap_or_default();
            if rest.len() > self.pending_limit() {
                return Err(TlsError::TooMuchBuffered(rest.len()).into());
            }
            self.pending.extend_from_slice(rest);
        }
        self.release_pending();
        if !self.established && !self.conn.is_handshaking() {
            self.established = true;
        }
        Ok(false)
    }

    fn peer_has_closed(&mut self) -> bool {
        self.peer_closed = true;
        self.pending = Vec::new();
        true
    }

    fn pending_limit(&self) -> usize {
        if self.established {
            MAX_RECORD
        } else {
            MAX_PENDING_HANDSHAKE
        }
    }

    /// Frees the pending buffer when empty, and gives back room a large handshake message
    /// or a burst left behind.
    fn release_pending(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        } else if self.pending.capacity() > 2 * MAX_RECORD {
            self.pending.shrink_to_fit();
        }
    }

    /// Encrypts `plain` into `wire` (records of at most 16 KiB of plaintext).
    pub(crate) fn write(&mut self, plain: &[u8], wire: &mut BytesMut) -> Result<(), TlsError> {
        if plain.is_empty() {
            return Ok(());
        }
        self.with_write_traffic(wire, |w, wire| {
            append_sized(wire, |out| w.encrypt(plain, out)).map_err(|e| match e {
                EncryptError::InsufficientSize(_) => TlsError::Unexpected("buffer size"),
                EncryptError::EncryptExhausted => TlsError::EncryptExhausted,
            })
        })
    }

    /// Appends close_notify to `wire` (when the handshake completed and nothing was closed
    /// yet); nothing is written after it.
    pub(crate) fn close(&mut self, wire: &mut BytesMut) {
        if self.closed || !self.established {
            self.closed = true;
            return;
        }
        let sent = self.with_write_traffic(wire, |w, wire| {
            append_sized(wire, |out| w.queue_close_notify(out))
                .map_err(|_| TlsError::Unexpected("close_notify"))
        });
        // A failure leaves the connection to be closed without close_notify: the shard
        // closes the socket either way.
        let _ = sent;
        self.closed = true;
    }

    /// Runs rustls until it allows application data (encoding any records it queued first,
    /// such as session tickets), then calls `f`.
    fn with_write_traffic<R>(
        &mut self,
        wire: &mut BytesMut,
        f: impl FnOnce(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut BytesMut,
        ) -> Result<R, TlsError>,
    ) -> Result<R, TlsError> {
        if self.closed {
            return Err(TlsError::Closed);
        }
        if !self.established {
            return Err(TlsError::Handshaking);
        }
        for _ in 0..MAX_QUEUED_ROUNDS {
            // `pending` holds no complete record (reads process everything), so this call
            // only reports what may be sent.
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.pending);
            match state? {
                ConnectionState::WriteTraffic(mut w) => return f(&mut w, wire),
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, wire)?,
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => {}
                ConnectionState::ReadTraffic(mut records) if self.app_failed => {
                    while records.next_record().is_some() {}
                }
                ConnectionState::Closed => return Err(TlsError::Closed),
                ConnectionState::BlockedHandshake => return Err(TlsError::Handshaking),
                other => return Err(TlsError::Unexpected(state_name(&other))),
            }
            self.pending.drain(..discard.min(self.pending.len()));
        }
        Err(TlsError::Unexpected("endless queued records"))
    }

    /// After an error: encodes the alert(s) rustls queued into `wire`.
    ///
    /// Only while rustls has records queued (`wants_write`): it hands those out before it
    /// looks at the input buffer. Called with no queued record, it would go on to parse the
    /// buffer, and its handshake reassembly remembers positions in the buffer of the failed
    /// call, which is gone (rustls 0.23.48 panics on that).
    fn flush_alerts(&mut self, wire: &mut BytesMut) {
        for _ in 0..MAX_QUEUED_ROUNDS {
            if !self.conn.wants_write() {
                return;
            }
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode(&mut e, wire).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// The handshake completed.
    pub(crate) fn is_established(&self) -> bool {
        self.established
    }

    /// The username a client certificate gives (`tls_config::identity_of` on the leaf),
    /// once the handshake completed.
    pub(crate) fn peer_identity(&self) -> Option<String> {
        if !self.established {
            return None;
        }
        identity_of(self.conn.peer_certificates()?.first()?)
    }

    /// The ALPN protocol chosen, if any.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Received bytes held until more arrive.
    pub(crate) fn buffered(&self) -> usize {
        self.pending.len()
    }
}

/// Drives rustls over `buf` until it needs more bytes: returns how many bytes of `buf` it
/// is done with, and whether the peer sent close_notify.
fn process<F>(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    wire: &mut BytesMut,
    sink: &mut F,
) -> Result<(usize, bool), TransportError>
where
    F: FnMut(&[u8]) -> Result<(), TransportError>,
{
    let mut used = 0;
    loop {
        let rest = buf.get_mut(used..).unwrap_or_default();
        let UnbufferedStatus { discard, state } = conn.process_tls_records(rest);
        let mut extra = 0;
        match state.map_err(TlsError::from)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(TlsError::from)?;
                    extra += record.discard;
                    sink(record.payload)?;
                }
            }
            ConnectionState::EncodeTlsData(mut e) => encode(&mut e, wire)?,
            ConnectionState::TransmitTlsData(t) => t.done(),
            // Bytes after close_notify are never read.
            ConnectionState::PeerClosed | ConnectionState::Closed => return Ok((buf.len(), true)),
            ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                return Ok((used + discard, false));
            }
            other => return Err(TlsError::Unexpected(state_name(&other)).into()),
        }
        used += discard + extra;
    }
}

fn state_name(state: &ConnectionState<'_, '_, ServerConnectionData>) -> &'static str {
    match state {
        ConnectionState::ReadTraffic(_) => "ReadTraffic",
        ConnectionState::PeerClosed => "PeerClosed",
        ConnectionState::Closed => "Closed",
        ConnectionState::ReadEarlyData(_) => "ReadEarlyData",
        ConnectionState::EncodeTlsData(_) => "EncodeTlsData",
        ConnectionState::TransmitTlsData(_) => "TransmitTlsData",
        ConnectionState::BlockedHandshake => "BlockedHandshake",
        ConnectionState::WriteTraffic(_) => "WriteTraffic",
        _ => "unknown",
    }
}

/// Encodes one queued handshake (or alert) record at the end of `wire`.
fn encode(
    e: &mut EncodeTlsData<'_, ServerConnectionData>,
    wire: &mut BytesMut,
) -> Result<(), TlsError> {
    append_sized(wire, |out| e.encode(out)).map_err(|err| match err {
        EncodeError::InsufficientSize(_) => TlsError::Unexpected("buffer size"),
        // Already in `wire` from an earlier round.
        EncodeError::AlreadyEncoded => TlsError::Unexpected("record encoded twice"),
    })
}

/// Runs `write` on the spare end of `wire`: first on an empty slice to learn the size it
/// needs (rustls reports it without writing), then on exactly that much room.
fn append_sized<E>(
    wire: &mut BytesMut,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E>
where
    E: SizeHint,
{
    let need = match write(&mut []) {
        Ok(_) => return Ok(()),
        Err(e) => match e.required_size() {
            Some(n) => n,
            None => return Err(e),
        },
    };
    let start = wire.len();
    wire.resize(start + need, 0);
    match write(&mut wire[start..]) {
        Ok(n) => {
            wire.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            wire.truncate(start);
            Err(e)
        }
    }
}

/// The size an encode or encrypt call asked for.
trait SizeHint {
    fn required_size(&self) -> Option<usize>;
}

impl SizeHint for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(s) => Some(s.required_size),
            EncodeError::AlreadyEncoded => None,
        }
    }
}

impl SizeHint for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(s) => Some(s.required_size),
            EncryptError::EncryptExhausted => None,
        }
    }
}
