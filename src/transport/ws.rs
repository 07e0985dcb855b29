//! WebSocket (RFC 6455) server side for MQTT: after the opening handshake
//! (`ws_handshake`), client frames are unmasked into the MQTT byte stream and MQTT bytes go
//! out as unmasked binary frames.
//!
//! Owns: the frame state of one connection (at most 14 header bytes and the position in the
//! current frame's payload; a control frame's payload, at most 125 bytes, only while one
//! arrives), the frame rules (binary only: a text frame closes with 1003 [MQTT-6.0.0-1];
//! client frames masked, RSV bits clear, continuation frames only inside a fragmented
//! message, control frames unfragmented and at most 125 bytes: otherwise 1002; a data frame
//! longer than the listener's cap: 1009, decided from the header before any payload), ping
//! answered with pong, close answered with close.
//!
//! Must never: buffer a data frame (payload bytes go to the caller as they arrive, so MQTT
//! packets split across frames, or several in one frame, need nothing here), allocate by a
//! frame's declared length, or read input after a close was sent or received.

use bytes::{BufMut, BytesMut};

use super::ws_handshake;
use crate::config::WsPath;

/// Why the opening handshake was refused (each maps to one HTTP status in
/// `ws_handshake`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade request longer than 8 KiB (431)")]
    RequestTooLarge,
    #[error("malformed HTTP request (400)")]
    MalformedRequest,
    #[error("request method is not GET (405)")]
    NotGet,
    #[error("request is not HTTP/1.1 (400)")]
    NotHttp11,
    #[error("request path is not this listener's WebSocket path (404)")]
    WrongPath,
    #[error("not a WebSocket upgrade request (426)")]
    NotUpgrade,
    #[error("Sec-WebSocket-Version is not 13 (426)")]
    UnsupportedVersion,
    #[error("missing or malformed Sec-WebSocket-Key (400)")]
    BadKey,
    #[error("missing Host header (400)")]
    MissingHost,
    #[error("client does not offer the mqtt subprotocol (400)")]
    NoMqttProtocol,
}

/// Why a client's frames end the connection (each maps to one close code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("text frame; MQTT uses binary frames only (1003)")]
    TextFrame,
    #[error("unmasked client frame (1002)")]
    Unmasked,
    #[error("reserved bits set without an extension (1002)")]
    ReservedBits,
    #[error("unknown opcode (1002)")]
    UnknownOpcode,
    #[error("continuation frame outside a fragmented message (1002)")]
    UnexpectedContinuation,
    #[error("new data frame inside a fragmented message (1002)")]
    ExpectedContinuation,
    #[error("fragmented control frame (1002)")]
    ControlFragmented,
    #[error("control frame longer than 125 bytes (1002)")]
    ControlTooLong,
    #[error("data frame longer than this listener accepts (1009)")]
    FrameTooLarge,
    #[error("close frame with a 1-byte payload (1002)")]
    BadClosePayload,
    #[error("close frame with a status code not allowed on the wire (1002)")]
    BadCloseCode,
    #[error("close frame reason is not UTF-8 (1007)")]
    CloseReasonNotUtf8,
}

impl FrameError {
    /// The status code of the close frame sent for this error.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TextFrame => 1003,
            FrameError::Unmasked
            | FrameError::ReservedBits
            | FrameError::UnknownOpcode
            | FrameError::UnexpectedContinuation
            | FrameError::ExpectedContinuation
            | FrameError::ControlFragmented
            | FrameError::ControlTooLong
            | FrameError::BadClosePayload
            | FrameError::BadCloseCode => 1002,
            FrameError::FrameTooLarge => 1009,
            FrameError::CloseReasonNotUtf8 => 1007,
        }
    }
}

/// A WebSocket failure: before the upgrade (an HTTP error response was sent) or after (a
/// close frame was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("WebSocket upgrade refused: {0}")]
    Upgrade(#[from] UpgradeError),
    #[error("WebSocket frame refused: {0}")]
    Frame(#[from] FrameError),
    /// Data was written before the upgrade completed.
    #[error("WebSocket upgrade not complete")]
    NotOpen,
    /// Data was written after a close frame was sent or received.
    #[error("WebSocket closed")]
    Closed,
}

/// Close status codes RingMQ sends on its own initiative (RFC 6455 section 7.4.1).
pub mod close_code {
    /// The connection did what it was for (a DISCONNECT, a session taken over).
    pub const NORMAL: u16 = 1000;
    /// The broker is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol (MQTT's, not only WebSocket's).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client broke a rule of the broker (an ACL, a keep-alive timeout).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message too large to handle.
    pub const TOO_BIG: u16 = 1009;
    /// The broker failed.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// A listener's WebSocket settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsSettings {
    /// The path upgrades are accepted on.
    pub path: WsPath,
    /// Longest data frame accepted (payload bytes).
    pub max_frame: u64,
}

/// Extra room a frame may have over the broker's largest packet: a client may put a
/// packet and the start of the next (say a PINGREQ, or a small PUBACK batch) in one frame.
pub const FRAME_SLACK: u64 = 4 * 1024;

impl WsSettings {
    /// Settings with the frame cap derived from the broker's largest packet.
    pub fn new(path: WsPath, max_packet_size: u32) -> WsSettings {
        WsSettings {
            path,
            max_frame: u64::from(max_packet_size) + FRAME_SLACK,
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// Longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;

/// One WebSocket server connection.
#[derive(Debug)]
pub(crate) struct WsSession {
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the upgrade request; `request` holds it while it arrives in pieces
    /// (empty, unallocated, when it came in one read).
    Handshake {
        request: Vec<u8>,
    },
    Open(Frames),
    /// A close frame was sent (or the handshake refused); input is ignored.
    Closed,
}

/// Where the decoder is in the frame stream.
#[derive(Debug, Default)]
struct Frames {
    /// Header bytes of the next frame while they arrive in pieces.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The frame whose payload is arriving.
    current: Option<Frame>,
    /// A data message was started by a frame without FIN: only continuations may follow.
    in_message: bool,
    /// The payload of the control frame arriving (at most 125 bytes; no allocation
    /// otherwise).
    control: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    opcode: u8,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of this frame already unmasked, modulo 4: where the mask key stands.
    offset: u8,
}

impl WsSession {
    pub(crate) fn new() -> WsSession {
        WsSession {
            phase: Phase::Handshake {
                request: Vec::new(),
            },
        }
    }

    /// Handles bytes from the peer: appends unmasked MQTT bytes to `app` and what must be
    /// sent (the 101 or an HTTP error, pong, close) to `wire`. Returns true once the
    /// connection is closed (a close frame received and answered). On error the HTTP error
    /// response or close frame is already in `wire`.
    pub(crate) fn read(
        &mut self,
        input: &[u8],
        settings: &WsSettings,
        app: &mut BytesMut,
        wire: &mut BytesMut,
    ) -> Result<bool, WsError> {
        let input = match &mut self.phase {
            Phase::Closed => return Ok(true),
            Phase::Open(_) => input,
            Phase::Handshake { request } => match upgrade(request, input, settings, wire) {
                Ok(Some(rest)) => {
                    self.phase = Phase::Open(Frames::default());
                    rest
                }
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.phase = Phase::Closed;
                    return Err(e.into());
                }
            },
        };
        let Phase::Open(frames) = &mut self.phase else {
            return Ok(true);
        };
        match frames.read(input, settings.max_frame, app, wire) {
            Ok(closed) => {
                if closed {
                    self.phase = Phase::Closed;
                }
                Ok(closed)
            }
            Err(e) => {
                write_close(e.close_code(), wire);
                self.phase = Phase::Closed;
                Err(e.into())
            }
        }
    }

    /// Wraps MQTT bytes in one binary frame.
    pub(crate) fn write(&mut self, app: &[u8], wire: &mut BytesMut) -> Result<(), WsError> {
        match self.phase {
            Phase::Open(_) if app.is_empty() => Ok(()),
            Phase::Open(_) => {
                write_frame(OP_BINARY, app, wire);
                Ok(())
            }
            Phase::Handshake { .. } => Err(WsError::NotOpen),
            Phase::Closed => Err(WsError::Closed),
        }
    }

    /// Sends a close frame with `code` (see `close_code`) if the connection is open; nothing
    /// is read or written after it.
    pub(crate) fn close(&mut self, code: u16, wire: &mut BytesMut) {
        if let Phase::Open(_) = self.phase {
            write_close(code, wire);
        }
        self.phase = Phase::Closed;
    }

    /// The upgrade completed (whether or not the connection was closed since).
    pub(crate) fn upgraded(&self) -> bool {
        !matches!(self.phase, Phase::Handshake { .. })
    }

    /// Bytes held between reads (a partial request, frame header or control payload).
    pub(crate) fn buffered(&self) -> usize {
        match &self.phase {
            Phase::Handshake { request } => request.len(),
            Phase::Open(f) => usize::from(f.header_len) + f.control.len(),
            Phase::Closed => 0,
        }
    }
}

/// Feeds the upgrade request: the input after it once it is complete and answered.
fn upgrade<'i>(
    request: &mut Vec<u8>,
    input: &'i [u8],
    settings: &WsSettings,
    wire: &mut BytesMut,
) -> Result<Option<&'i [u8]>, UpgradeError> {
    if request.is_empty() {
        return match ws_handshake::respond(input, &settings.path, wire)? {
            Some(end) => Ok(Some(&input[end..])),
            None => {
                request.extend_from_slice(input);
                Ok(None)
            }
        };
    }
    let kept = request.len();
    // `respond` decides on any `MAX_REQUEST` bytes, so no more is ever kept.
    let take = input
        .len()
        .min(ws_handshake::MAX_REQUEST.saturating_sub(kept));
    request.extend_from_slice(&input[..take]);
    match ws_handshake::respond(request, &settings.path, wire)? {
        Some(end) => {
            *request = Vec::new();
            Ok(Some(
                input.get(end.saturating_sub(kept)..).unwrap_or_default(),
            ))
        }
        None => Ok(None),
    }
}

impl Frames {
    /// Decodes frames from `input` until it is used up; returns true after a close.
    fn read(
        &mut self,
        mut input: &[u8],
        max_frame: u64,
        app: &mut BytesMut,
        wire: &mut BytesMut,
    ) -> Result<bool, FrameError> {
        loop {
            let mut frame = match self.current {
                Some(frame) => frame,
                None => match self.next_header(&mut input, max_frame)? {
                    Some(frame) => frame,
                    None => return Ok(false),
                },
            };
            let n = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let (payload, rest) = input.split_at(n);
            input = rest;
            if frame.opcode & 0x8 == 0 {
                let start = app.len();
                app.extend_from_slice(payload);
                unmask(&mut app[start..], frame.mask, frame.offset);
            } else {
                // At most 125 bytes in all (checked with the header).
                let start = self.control.len();
                self.control.extend_from_slice(payload);
                unmask(&mut self.control[start..], frame.mask, frame.offset);
            }
            frame.remaining -= n as u64;
            frame.offset = ((usize::from(frame.offset) + n) % 4) as u8;
            if frame.remaining > 0 {
                self.current = Some(frame);
                return Ok(false);
            }
            self.current = None;
            if self.finish(frame, wire)? {
                return Ok(true);
            }
        }
    }

    /// Takes the next frame's header from `input` (with bytes kept from earlier reads) and
    /// checks it. `Ok(None)`: all of `input` was kept, the header is not complete.
    fn next_header(
        &mut self,
        input: &mut &[u8],
        max_frame: u64,
    ) -> Result<Option<Frame>, FrameError> {
        if input.is_empty() {
            return Ok(None);
        }
        let kept = usize::from(self.header_len);
        let take = input.len().min(MAX_HEADER - kept);
        self.header[kept..kept + take].copy_from_slice(&input[..take]);
        let have = &self.header[..kept + take];
        match parse_header(have, max_frame, self.in_message)? {
            None => {
                // `take` is all of `input`: a full 14 bytes always holds a header.
                self.header_len = (kept + take) as u8;
                *input = &[];
                Ok(None)
            }
            Some((frame, size)) => {
                self.header_len = 0;
                *input = &input[size - kept..];
                Ok(Some(frame))
            }
        }
    }

    /// A frame's payload is complete: acts on it. Returns true after a close.
    fn finish(&mut self, frame: Frame, wire: &mut BytesMut) -> Result<bool, FrameError> {
        match frame.opcode {
            OP_BINARY | OP_CONTINUATION => self.in_message = !frame.fin,
            OP_PING => write_frame(OP_PONG, &self.control, wire),
            OP_CLOSE => {
                let code = close_payload(&self.control)?;
                self.control = Vec::new();
                match code {
                    Some(code) => write_close(code, wire),
                    None => write_frame(OP_CLOSE, &[], wire),
                }
                return Ok(true);
            }
            // OP_PONG (unsolicited pongs are allowed and ignored); the header check lets
            // no other opcode through.
            _ => {}
        }
        self.control = Vec::new();
        Ok(false)
    }
}

/// Parses and checks a frame header: the frame and the header's size, or `Ok(None)` when
/// `h` is too short to decide.
fn parse_header(
    h: &[u8],
    max_frame: u64,
    in_message: bool,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let [b0, b1, ..] = *h else {
        return Ok(None);
    };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    match opcode {
        OP_TEXT => return Err(FrameError::TextFrame),
        OP_BINARY if in_message => return Err(FrameError::ExpectedContinuation),
        OP_CONTINUATION if !in_message => return Err(FrameError::UnexpectedContinuation),
        OP_BINARY | OP_CONTINUATION => {}
        OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(FrameError::ControlFragmented),
        OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::UnknownOpcode),
    }
    // [RFC 6455 5.1]: a server closes the connection on an unmasked client frame.
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, len_size) = match b1 & 0x7f {
        126 => match h.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match h.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    // Decided before the mask key arrives: a frame claiming 2^63 bytes is refused at its
    // tenth byte.
    if opcode & 0x8 != 0 && len > MAX_CONTROL as u64 {
        return Err(FrameError::ControlTooLong);
    }
    if len > max_frame {
        return Err(FrameError::FrameTooLarge);
    }
    let size = 2 + len_size + 4;
    let Some(m) = h.get(2 + len_size..size) else {
        return Ok(None);
    };
    let frame = Frame {
        opcode,
        fin,
        remaining: len,
        mask: [m[0], m[1], m[2], m[3]],
        offset: 0,
    };
    Ok(Some((frame, size)))
}

/// The status code of a received close frame (`None` for an empty one) after the checks of
/// RFC 6455 sections 5.5.1 and 7.4.
fn close_payload(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(FrameError::BadClosePayload),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
    if !allowed {
        return Err(FrameError::BadCloseCode);
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(FrameError::CloseReasonNotUtf8);
    }
    Ok(Some(code))
}

/// Unmasks `buf` in place; `offset` is where the mask key stands at `buf[0]`. Eight bytes
/// at a time: payloads are mostly MQTT publishes of hundreds of bytes or more.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: u8) {
    let key: [u8; 8] = std::array::from_fn(|i| mask[(usize::from(offset) + i) % 4]);
    let word = u64::from_ne_bytes(key);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(b) ^ word).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// Appends an unmasked frame with FIN set.
fn write_frame(opcode: u8, payload: &[u8], out: &mut BytesMut) {
    out.reserve(10 + payload.len());
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

fn write_close(code: u16, out: &mut BytesMut) {
    write_frame(OP_CLOSE, &code.to_be_bytes(), out);
}
