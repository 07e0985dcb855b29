//! The layers under MQTT when the broker is reached over TLS (`--tls`) or WebSocket (`--ws`,
//! path `/mqtt`), or both: a rustls client connection (the `ring` provider) and a minimal
//! WebSocket client of this crate's own (RFC 6455: the upgrade request, masked binary frames
//! out, unmasked frames in, pong for ping). Independent of the broker's transport module, so
//! that a bug there cannot hide on both sides.
//!
//! A `Link` turns raw socket bytes into MQTT bytes (`input`) and MQTT bytes into socket bytes
//! (`wrap`), and keeps the socket bytes not sent yet (`wire`). MQTT bytes are wrapped only
//! once every handshake is done (`ready`), so a CONNECT queued at connect time waits.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Longest HTTP response to the upgrade accepted.
const MAX_RESPONSE: usize = 8 * 1024;

/// What went wrong under MQTT.
#[derive(Debug)]
pub enum LinkError {
    Tls(String),
    Ws(&'static str),
    /// The peer closed (WebSocket close, TLS close_notify).
    Closed,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Tls(e) => write!(f, "TLS: {e}"),
            LinkError::Ws(e) => write!(f, "WebSocket: {e}"),
            LinkError::Closed => f.write_str("closed by the broker"),
        }
    }
}

/// Settings shared by every connection of a run.
#[derive(Clone)]
pub struct LinkConfig {
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// `Host` header and path of the upgrade request, when over WebSocket.
    pub ws: Option<(String, String)>,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("tls", &self.tls.is_some())
            .field("ws", &self.ws)
            .finish()
    }
}

impl LinkConfig {
    /// `cafile`: PEM roots to verify the broker against; `server_name`: the name its
    /// certificate must carry; `ws`: (host header, path).
    pub fn new(
        tls: Option<(&str, &str)>,
        ws: Option<(String, String)>,
    ) -> Result<Option<LinkConfig>, String> {
        if tls.is_none() && ws.is_none() {
            return Ok(None);
        }
        let tls = match tls {
            None => None,
            Some((cafile, name)) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(cafile)
                    .map_err(|e| format!("--cafile {cafile}: {e}"))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("--cafile {cafile}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--cafile {cafile}: {e}"))?;
                }
                // Key exchange as OpenSSL and browsers order it (X25519 first). rustls's
                // `ring` provider puts P-384 first, and the server follows the client's
                // order: P-384 costs the broker about 4x the CPU of X25519 per handshake.
                use rustls::crypto::ring::kx_group;
                #[allow(deprecated)]
                let mut provider = rustls::crypto::ring::default_provider();
                provider.kx_groups =
                    vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
                let provider = Arc::new(provider);
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = if ws.is_some() {
                    vec![b"http/1.1".to_vec()]
                } else {
                    vec![b"mqtt".to_vec()]
                };
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("--server-name: '{name}' is not a valid name"))?;
                Some((Arc::new(config), name))
            }
        };
        Ok(Some(LinkConfig { tls, ws }))
    }
}

/// The layers of one connection.
pub struct Link {
    tls: Option<Box<rustls::ClientConnection>>,
    ws: Option<Ws>,
    /// Socket bytes to send, from `wire_pos` on.
    pub wire: Vec<u8>,
    pub wire_pos: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("tls", &self.tls.is_some())
            .field("queued", &self.queued())
            .finish()
    }
}

/// WebSocket client state.
struct Ws {
    /// The 101 has not arrived yet; the response so far.
    upgrading: Option<Vec<u8>>,
    /// Header bytes of the next server frame while they arrive in pieces.
    header: Vec<u8>,
    /// A frame header was read and its payload is arriving.
    in_frame: bool,
    /// Payload bytes left in the current frame, and its opcode.
    remaining: u64,
    opcode: u8,
    /// A control frame's payload while it arrives.
    control: Vec<u8>,
    /// Source of mask keys (xorshift; masking needs no secrecy from a load generator).
    rng: u64,
}

impl Link {
    /// A new connection's layers; the TLS ClientHello and the upgrade request are queued.
    pub fn new(config: &LinkConfig, seed: u64) -> Result<Link, LinkError> {
        let mut link = Link {
            tls: None,
            ws: None,
            wire: Vec::new(),
            wire_pos: 0,
        };
        if let Some((tls, name)) = &config.tls {
            let mut conn = rustls::ClientConnection::new(Arc::clone(tls), name.clone())
                .map_err(|e| LinkError::Tls(e.to_string()))?;
            // A window of messages is written at once (512 x 2 KiB is 1 MiB) and `wire` holds
            // what the socket has not taken yet: rustls's default 64 KiB limit would make
            // `write_all` fail with WriteZero once a window outgrows it.
            conn.set_buffer_limit(None);
            link.tls = Some(Box::new(conn));
        }
        if let Some((host, path)) = &config.ws {
            let mut ws = Ws {
                upgrading: Some(Vec::new()),
                header: Vec::new(),
                in_frame: false,
                remaining: 0,
                opcode: 0,
                control: Vec::new(),
                rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            };
            let key = base64_16(&ws.next_bytes16());
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
            );
            link.ws = Some(ws);
            link.send_below_ws(request.as_bytes())?;
        }
        link.pump_tls()?;
        Ok(link)
    }

    /// Every handshake is done: MQTT bytes may be wrapped.
    pub fn ready(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| !t.is_handshaking())
            && self.ws.as_ref().is_none_or(|w| w.upgrading.is_none())
    }

    pub fn queued(&self) -> usize {
        self.wire.len() - self.wire_pos
    }

    /// Socket bytes in; MQTT bytes out (appended to `app`). Handshake answers, pongs and
    /// TLS records to send go to `wire`.
    pub fn input(&mut self, raw: &[u8], app: &mut Vec<u8>) -> Result<(), LinkError> {
        match self.tls.as_mut() {
            None => self.input_below_tls(raw, app),
            Some(tls) => {
                let mut rd = raw;
                let mut plain = Vec::new();
                while !rd.is_empty() {
                    tls.read_tls(&mut rd)
                        .map_err(|e| LinkError::Tls(e.to_string()))?;
                    let state = tls
                        .process_new_packets()
                        .map_err(|e| LinkError::Tls(e.to_string()))?;
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = plain.len();
                        plain.resize(start + n, 0);
                        tls.reader()
                            .read_exact(&mut plain[start..])
                            .map_err(|e| LinkError::Tls(e.to_string()))?;
                    }
                    if state.peer_has_closed() {
                        return Err(LinkError::Closed);
                    }
                }
                self.pump_tls()?;
                if plain.is_empty() {
                    return Ok(());
                }
                self.input_below_tls(&plain, app)
            }
        }
    }

    /// MQTT bytes out: one masked binary frame (over WebSocket), TLS records (over TLS).
    pub fn wrap(&mut self, app: &[u8]) -> Result<(), LinkError> {
        if app.is_empty() {
            return Ok(());
        }
        match self.ws.as_mut() {
            Some(ws) => {
                let mut frame = Vec::with_capacity(app.len() + 14);
                ws.frame(0x2, app, &mut frame);
                self.send_below_ws(&frame)
            }
            None => self.send_below_ws(app),
        }
    }

    /// Bytes from the WebSocket layer (or MQTT without one) to TLS or the socket.
    fn send_below_ws(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        match self.tls.as_mut() {
            None => {
                self.compact();
                self.wire.extend_from_slice(bytes);
                Ok(())
            }
            Some(tls) => {
                tls.writer()
                    .write_all(bytes)
                    .map_err(|e| LinkError::Tls(e.to_string()))?;
                self.pump_tls()
            }
        }
    }

    /// Moves the records rustls queued into `wire`.
    fn pump_tls(&mut self) -> Result<(), LinkError> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        if self.wire_pos > 0 && self.wire_pos == self.wire.len() {
            self.wire.clear();
            self.wire_pos = 0;
        }
        while tls.wants_write() {
            tls.write_tls(&mut self.wire)
                .map_err(|e| LinkError::Tls(e.to_string()))?;
        }
        Ok(())
    }

    fn compact(&mut self) {
        if self.wire_pos > 0 && self.wire_pos == self.wire.len() {
            self.wire.clear();
            self.wire_pos = 0;
        } else if self.wire_pos >= 64 * 1024 {
            self.wire.drain(..self.wire_pos);
            self.wire_pos = 0;
        }
    }

    /// `sent` bytes of `wire` went out.
    pub fn sent(&mut self, sent: usize) {
        self.wire_pos += sent;
        self.compact();
    }

    fn input_below_tls(&mut self, bytes: &[u8], app: &mut Vec<u8>) -> Result<(), LinkError> {
        let Some(ws) = self.ws.as_mut() else {
            app.extend_from_slice(bytes);
            return Ok(());
        };
        let mut reply = Vec::new();
        let result = ws.input(bytes, app, &mut reply);
        if !reply.is_empty() {
            self.send_below_ws(&reply)?;
        }
        result
    }
}

impl Ws {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn next_bytes16(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        k[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        k
    }

    /// A masked client frame.
    fn frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = (self.next_u64() as u32).to_le_bytes();
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }

    /// Server bytes in: the 101 first, then frames.
    fn input(
        &mut self,
        mut bytes: &[u8],
        app: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<(), LinkError> {
        if let Some(response) = self.upgrading.as_mut() {
            let kept = response.len();
            response.extend_from_slice(bytes);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                if response.len() > MAX_RESPONSE {
                    return Err(LinkError::Ws("upgrade response too long"));
                }
                return Ok(());
            };
            if !response.starts_with(b"HTTP/1.1 101") {
                return Err(LinkError::Ws("upgrade refused"));
            }
            bytes = &bytes[end + 4 - kept..];
            self.upgrading = None;
        }
        while !bytes.is_empty() {
            if !self.in_frame {
                if self.header_needed(&mut bytes)? {
                    return Ok(());
                }
                self.in_frame = true;
            }
            let n = (self.remaining as usize).min(bytes.len());
            let (payload, rest) = bytes.split_at(n);
            bytes = rest;
            self.remaining -= n as u64;
            if self.opcode & 0x8 == 0 {
                app.extend_from_slice(payload);
            } else {
                self.control.extend_from_slice(payload);
            }
            if self.remaining == 0 {
                self.in_frame = false;
                self.finish_frame(reply)?;
            }
        }
        Ok(())
    }

    /// Reads a frame header; true when `bytes` ran out before it was complete.
    fn header_needed(&mut self, bytes: &mut &[u8]) -> Result<bool, LinkError> {
        let take = bytes.len().min(14 - self.header.len());
        self.header.extend_from_slice(&bytes[..take]);
        let h = &self.header;
        if h.len() < 2 {
            *bytes = &[];
            return Ok(true);
        }
        if h[1] & 0x80 != 0 {
            return Err(LinkError::Ws("masked server frame"));
        }
        let (len, size) = match h[1] & 0x7f {
            126 if h.len() >= 4 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 if h.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            126 | 127 => {
                *bytes = &[];
                return Ok(true);
            }
            n => (u64::from(n), 2),
        };
        let opcode = h[0] & 0x0f;
        if opcode == 0x1 {
            return Err(LinkError::Ws("text frame"));
        }
        // Bytes of `bytes` beyond this header belong to the payload.
        let used = size - (self.header.len() - take);
        *bytes = &bytes[used..];
        self.header.clear();
        self.opcode = opcode;
        self.remaining = len;
        Ok(false)
    }

    fn finish_frame(&mut self, reply: &mut Vec<u8>) -> Result<(), LinkError> {
        let control = std::mem::take(&mut self.control);
        match self.opcode {
            0x9 => self.frame(0xa, &control, reply),
            0x8 => return Err(LinkError::Closed),
            _ => {}
        }
        Ok(())
    }
}

/// Base64 (RFC 4648, padded) of 16 bytes: the `Sec-WebSocket-Key`.
fn base64_16(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_key_is_base64_of_16_bytes() {
        assert_eq!(base64_16(&[0; 16]), "AAAAAAAAAAAAAAAAAAAAAA==");
        // RFC 6455 section 1.3's sample nonce.
        assert_eq!(base64_16(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn frames_in_pieces_and_control_frames() {
        let config = LinkConfig::new(None, Some(("h".into(), "/mqtt".into())))
            .expect("config")
            .expect("some");
        let mut link = Link::new(&config, 7).expect("link");
        assert!(link.wire.starts_with(b"GET /mqtt HTTP/1.1\r\n"));
        assert!(!link.ready());
        let mut app = Vec::new();
        let mut server = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        server.extend_from_slice(&[0x82, 0x02, 0x20, 0x02]); // CONNACK, first half
        server.extend_from_slice(&[0x89, 0x01, b'p']); // ping
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend_from_slice(&[0x41; 256]);
        server.extend_from_slice(&long);
        for piece in server.chunks(3) {
            link.input(piece, &mut app).expect("input");
        }
        assert!(link.ready());
        assert_eq!(&app[..2], &[0x20, 0x02]);
        assert!(app.len() == 2 + 256 && app[2..].iter().all(|&b| b == 0x41));
        // The pong went out masked, after the request.
        let pong_at = link.wire.windows(2).position(|w| w == [0x8a, 0x81]);
        assert!(pong_at.is_some(), "{:?}", link.wire);
        assert!(matches!(
            link.input(&[0x88, 0x00], &mut app),
            Err(LinkError::Closed)
        ));
    }
}
