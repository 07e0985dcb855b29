//! The WebSocket opening handshake (RFC 6455 section 4.2) with MQTT's rules (MQTT 5.0
//! section 6): parsing the HTTP/1.1 upgrade request and writing the `101 Switching
//! Protocols` answer, or an HTTP error response.
//!
//! Owns: which requests upgrade (GET, HTTP/1.1, the listener's path, `Upgrade: websocket`,
//! `Connection: upgrade`, version 13, a 16-byte key, a `Host`, and `mqtt` or `mqttv3.1` among
//! the offered subprotocols) and the status each refusal gets.
//!
//! Must never: read past the end of the request (the bytes after it are WebSocket frames),
//! wait for a request longer than `MAX_REQUEST`, or answer 101 to a request it did not check
//! completely.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, BytesMut};
use sha1::{Digest, Sha1};

use super::ws::UpgradeError;
use crate::config::WsPath;

/// Longest upgrade request accepted, request line and headers. Browsers send about 500
/// bytes to 2 KiB (cookies included); 8 KiB is what common HTTP servers allow per header
/// block, and a longer request is refused once this many bytes arrived without its end.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Most header lines parsed (stack space: 32 bytes each). Browsers send about 15.
const MAX_HEADERS: usize = 48;

/// RFC 6455 section 1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Checks the request at the start of `buf`. When it upgrades: the 101 response is appended
/// to `out` and the request's length returned (what follows is frames). `Ok(None)`: the
/// request is incomplete and may still fit. On error the HTTP error response is in `out`.
pub(crate) fn respond(
    buf: &[u8],
    path: &WsPath,
    out: &mut BytesMut,
) -> Result<Option<usize>, UpgradeError> {
    let end = match find_end(buf) {
        Some(end) => end,
        None if buf.len() >= MAX_REQUEST => return Err(refuse(UpgradeError::RequestTooLarge, out)),
        None => return Ok(None),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(UpgradeError::RequestTooLarge, out));
        }
        Ok(_) | Err(_) => return Err(refuse(UpgradeError::MalformedRequest, out)),
    }
    match check(&request, path) {
        Ok(upgrade) => {
            write_101(&upgrade, out);
            Ok(Some(end))
        }
        Err(e) => Err(refuse(e, out)),
    }
}

/// The length of the request up to and including its empty line, if it is within
/// `MAX_REQUEST` bytes.
fn find_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_REQUEST)];
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// What the 101 response needs from an accepted request.
struct Upgrade<'a> {
    key: &'a [u8],
    protocol: &'static str,
}

fn check<'a>(
    request: &httparse::Request<'_, 'a>,
    path: &WsPath,
) -> Result<Upgrade<'a>, UpgradeError> {
    if request.method != Some("GET") {
        return Err(UpgradeError::NotGet);
    }
    if request.version != Some(1) {
        return Err(UpgradeError::NotHttp11);
    }
    let target = request.path.unwrap_or_default();
    let target_path = target.split_once('?').map_or(target, |(p, _)| p);
    if target_path != path.as_str() {
        return Err(UpgradeError::WrongPath);
    }
    let headers = &*request.headers;
    let has_token = |name: &str, token: &str| {
        values(headers, name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    let mut version = values(headers, "sec-websocket-version");
    if version.next().map(<[u8]>::trim_ascii) != Some(b"13") || version.next().is_some() {
        return Err(UpgradeError::UnsupportedVersion);
    }
    let mut keys = values(headers, "sec-websocket-key");
    let key = keys.next().map(<[u8]>::trim_ascii).unwrap_or_default();
    let key_ok = BASE64.decode(key).is_ok_and(|k| k.len() == 16);
    if !key_ok || keys.next().is_some() {
        return Err(UpgradeError::BadKey);
    }
    if values(headers, "host").next().is_none() {
        return Err(UpgradeError::MissingHost);
    }
    let offered = |name: &str| {
        values(headers, "sec-websocket-protocol")
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|p| p.trim_ascii() == name.as_bytes())
    };
    // [MQTT-6.0.0-3]: the client offers "mqtt"; [MQTT-6.0.0-4]: the server answers "mqtt".
    // "mqttv3.1" is what MQTT 3.1 clients (older Paho JavaScript) offer.
    let protocol = if offered("mqtt") {
        "mqtt"
    } else if offered("mqttv3.1") {
        "mqttv3.1"
    } else {
        return Err(UpgradeError::NoMqttProtocol);
    };
    Ok(Upgrade { key, protocol })
}

/// Every value of header `name` (case-insensitive), in order.
fn values<'h, 'b: 'h>(
    headers: &'h [httparse::Header<'b>],
    name: &'h str,
) -> impl Iterator<Item = &'b [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 section 4.2.2, item 5.4).
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

fn write_101(upgrade: &Upgrade<'_>, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.put_slice(b"Connection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.put_slice(accept_key(upgrade.key).as_bytes());
    out.put_slice(b"\r\nSec-WebSocket-Protocol: ");
    out.put_slice(upgrade.protocol.as_bytes());
    out.put_slice(b"\r\n\r\n");
}

/// Appends the HTTP response for a refused request and hands the error back.
fn refuse(error: UpgradeError, out: &mut BytesMut) -> UpgradeError {
    let (status, extra) = match error {
        UpgradeError::RequestTooLarge => ("431 Request Header Fields Too Large", ""),
        UpgradeError::MalformedRequest
        | UpgradeError::NotHttp11
        | UpgradeError::BadKey
        | UpgradeError::MissingHost
        | UpgradeError::NoMqttProtocol => ("400 Bad Request", ""),
        UpgradeError::NotGet => ("405 Method Not Allowed", "Allow: GET\r\n"),
        UpgradeError::WrongPath => ("404 Not Found", ""),
        UpgradeError::NotUpgrade | UpgradeError::UnsupportedVersion => (
            "426 Upgrade Required",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        ),
    };
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(extra.as_bytes());
    out.put_slice(b"Connection: close\r\nContent-Length: 0\r\n\r\n");
    error
}
