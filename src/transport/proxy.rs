//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the line or
//! block a load balancer sends before the client's first byte, naming the client's real
//! address.
//!
//! Owns: parsing one header, version 1 (text, at most 107 bytes) or version 2 (binary, a
//! 16-byte preamble and a declared length, at most `MAX_V2_LEN`), and the partial header kept
//! between reads while one arrives in pieces.
//!
//! Must never: accept bytes that are not a header on a listener that requires one (the
//! client could otherwise pick its own address), wait for more than the longest header
//! allowed, or allocate by a length before checking it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What a PROXY header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyAddr {
    /// v2 `LOCAL`: the proxy's own connection (a health check); use the socket's addresses.
    Local,
    /// v1 `UNKNOWN`, or v2 with an unspecified or Unix-socket family: no IP address given;
    /// use the socket's addresses.
    Unknown,
    /// The client's address as the proxy saw it, and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

impl ProxyAddr {
    /// The client's real address, when the header gives one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            ProxyAddr::Proxied { source, .. } => Some(*source),
            ProxyAddr::Local | ProxyAddr::Unknown => None,
        }
    }
}

/// Why the bytes at the start of a connection are not an acceptable PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line")]
    V1Malformed,
    #[error("PROXY v2 version is not 2")]
    V2Version,
    #[error("PROXY v2 command is neither LOCAL nor PROXY")]
    V2Command,
    #[error("PROXY v2 address family or transport not supported")]
    V2Family,
    #[error("PROXY v2 header longer than the {MAX_V2_LEN} bytes accepted")]
    V2TooLong,
    #[error("PROXY v2 address block shorter than its family needs")]
    V2ShortAddress,
}

/// Longest v1 line, `\r\n` included (the spec's worst case, a TCP6 line with both ports).
pub const MAX_V1_LEN: usize = 107;

/// Largest v2 length field accepted (address block plus TLVs). Addresses take at most 216
/// bytes (Unix sockets); the TLVs proxies send in practice (ALPN, authority, unique id of up
/// to 128 bytes, a cloud endpoint id, SSL details) fit in a few hundred. The spec allows
/// 65535; we refuse more than 4 KiB rather than hold that per connection.
pub const MAX_V2_LEN: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_PREAMBLE: usize = 16;

/// Parses the header at the start of `buf`: the header and the bytes it took, `Ok(None)` when
/// `buf` is a strict prefix of a header that may still be valid, or the reason it cannot be
/// one (decided as soon as the bytes seen rule every header out).
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyAddr, usize)>, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == V1_PREFIX[0] {
        parse_v1(buf)
    } else if first == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else {
        Err(ProxyError::Missing)
    }
}

/// Whether `buf` and `expected` agree on their common length.
fn agrees(buf: &[u8], expected: &[u8]) -> bool {
    let n = buf.len().min(expected.len());
    buf[..n] == expected[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyAddr, usize)>, ProxyError> {
    if !agrees(buf, V1_PREFIX) {
        return Err(ProxyError::Missing);
    }
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= MAX_V1_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1Malformed),
    }
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..cr]).map_err(|_| ProxyError::V1Malformed)?;
    Ok(Some((parse_v1_fields(line)?, cr + 2)))
}

/// `TCP4 SRC DST SPORT DPORT`, `TCP6 ...`, or `UNKNOWN` followed by anything.
fn parse_v1_fields(line: &str) -> Result<ProxyAddr, ProxyError> {
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(ProxyAddr::Unknown);
    }
    let mut fields = line.split(' ');
    let mut next = || fields.next().ok_or(ProxyError::V1Malformed);
    let (proto, src, dst, sport, dport) = (next()?, next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1Malformed);
    }
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (ipv4(src)?.into(), ipv4(dst)?.into()),
        "TCP6" => (ipv6(src)?.into(), ipv6(dst)?.into()),
        _ => return Err(ProxyError::V1Malformed),
    };
    Ok(ProxyAddr::Proxied {
        source: SocketAddr::new(src, port(sport)?),
        destination: SocketAddr::new(dst, port(dport)?),
    })
}

fn ipv4(s: &str) -> Result<Ipv4Addr, ProxyError> {
    s.parse().map_err(|_| ProxyError::V1Malformed)
}

fn ipv6(s: &str) -> Result<Ipv6Addr, ProxyError> {
    s.parse().map_err(|_| ProxyError::V1Malformed)
}

/// A decimal port, 0..=65535, digits only and no leading zero (as the spec writes them).
fn port(s: &str) -> Result<u16, ProxyError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::V1Malformed);
    }
    s.parse().map_err(|_| ProxyError::V1Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyAddr, usize)>, ProxyError> {
    if !agrees(buf, V2_SIGNATURE) {
        return Err(ProxyError::Missing);
    }
    let Some(preamble) = buf.get(..V2_PREAMBLE) else {
        return Ok(None);
    };
    let (ver_cmd, family) = (preamble[12], preamble[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    let len = usize::from(u16::from_be_bytes([preamble[14], preamble[15]]));
    if len > MAX_V2_LEN {
        return Err(ProxyError::V2TooLong);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2Command),
    };
    let Some(block) = buf.get(V2_PREAMBLE..V2_PREAMBLE + len) else {
        return Ok(None);
    };
    let addr = if local {
        // "The receiver must ... use the real connection endpoints and discard the protocol
        // block including the family" (section 2.2).
        ProxyAddr::Local
    } else {
        v2_address(family, block)?
    };
    Ok(Some((addr, V2_PREAMBLE + len)))
}

/// The address block of a v2 `PROXY` command; TLVs after it are skipped.
fn v2_address(family: u8, block: &[u8]) -> Result<ProxyAddr, ProxyError> {
    const STREAM: u8 = 1;
    let (af, transport) = (family >> 4, family & 0x0f);
    if af != 0 && transport != STREAM {
        // A datagram (or unknown) transport on a TCP listener: the proxy is misconfigured.
        return Err(ProxyError::V2Family);
    }
    let need = match af {
        0 => return Ok(ProxyAddr::Unknown),
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(ProxyError::V2Family),
    };
    let a = block.get(..need).ok_or(ProxyError::V2ShortAddress)?;
    let port_at = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let (src, dst, ports): (IpAddr, IpAddr, usize) = match af {
        1 => {
            let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
            (ip(0).into(), ip(4).into(), 8)
        }
        2 => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                Ipv6Addr::from(o)
            };
            (ip(0).into(), ip(16).into(), 32)
        }
        // AF_UNIX: paths, not IP addresses.
        _ => return Ok(ProxyAddr::Unknown),
    };
    Ok(ProxyAddr::Proxied {
        source: SocketAddr::new(src, port_at(ports)),
        destination: SocketAddr::new(dst, port_at(ports + 2)),
    })
}

/// A header that may arrive over several reads. Holds nothing until a read ends inside the
/// header, then at most `16 + MAX_V2_LEN` bytes.
#[derive(Debug, Default)]
pub struct ProxyDecoder {
    partial: Vec<u8>,
}

impl ProxyDecoder {
    /// Feeds the next bytes read: the header and how many bytes of `input` it took (the
    /// rest belongs to the next layer), `Ok(None)` when all of `input` was kept, or an error.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<(ProxyAddr, usize)>, ProxyError> {
        if self.partial.is_empty() {
            let found = parse(input)?;
            if found.is_none() {
                self.partial.extend_from_slice(input);
            }
            return Ok(found);
        }
        let kept = self.partial.len();
        // `parse` rejects anything longer than the longest header before we get here, so
        // the partial header plus the bytes it can still need stay below this bound.
        let take = input
            .len()
            .min((V2_PREAMBLE + MAX_V2_LEN).saturating_sub(kept));
        self.partial.extend_from_slice(&input[..take]);
        match parse(&self.partial)? {
            Some((addr, used)) => {
                self.partial = Vec::new();
                Ok(Some((addr, used.saturating_sub(kept))))
            }
            // Unreachable by `parse`'s bounds (a buffer of the longest header's size is
            // complete or refused); refusing keeps the decoder total without a panic.
            None if take < input.len() => Err(ProxyError::V2TooLong),
            None => Ok(None),
        }
    }

    /// Bytes held while a header is incomplete.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket addr")
    }

    fn proxied(src: &str, dst: &str) -> ProxyAddr {
        ProxyAddr::Proxied {
            source: sa(src),
            destination: sa(dst),
        }
    }

    #[test]
    fn v1_examples_from_the_spec() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (addr, used) = parse(line).expect("valid").expect("complete");
        assert_eq!(addr, proxied("192.168.0.1:56324", "192.168.0.11:443"));
        assert_eq!(&line[used..], b"GET / HTTP/1.1\r\n");

        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 1883\r\n";
        let (addr, used) = parse(line).expect("valid").expect("complete");
        assert_eq!(addr, proxied("[2001:db8::1]:65535", "[2001:db8::2]:1883"));
        assert_eq!(used, line.len());

        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Some((ProxyAddr::Unknown, 15)))
        );
        let unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(
            parse(unknown),
            Ok(Some((ProxyAddr::Unknown, unknown.len())))
        );
    }

    #[test]
    fn v1_worst_case_is_107_bytes() {
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {ip} {ip} 65535 65535\r\n");
        assert_eq!(line.len(), MAX_V1_LEN);
        assert_eq!(
            parse(line.as_bytes()),
            Ok(Some((ProxyAddr::Unknown, MAX_V1_LEN)))
        );
        let line = format!("PROXY TCP6 {ip} {ip} 65535 65535\r\n");
        assert!(parse(line.as_bytes()).expect("valid").is_some());
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(ProxyError::V1TooLong));
        // Without its end, a line is refused once it cannot fit any more.
        assert_eq!(parse(&[b'P'; 1][..]), Ok(None));
        let no_end = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(parse(no_end.as_bytes()), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v1_malformed_lines() {
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 7\r\n",
            b"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 65536\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +5632 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n",
            b"PROXY TCP6 192.168.0.1 2001:db8::2 1 2\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 2\rX",
            b"PROXY TCP4 192.168.0.1 192.168.0.\xff 1 2\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ProxyError::V1Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn not_a_header_is_refused_at_once() {
        // An MQTT CONNECT, a TLS ClientHello, an HTTP request: the first byte decides.
        assert_eq!(parse(&[0x10, 0x0c]), Err(ProxyError::Missing));
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(ProxyError::Missing));
        assert_eq!(parse(b"GET /mqtt HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXZ"), Err(ProxyError::Missing));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIZ"), Err(ProxyError::Missing));
        assert_eq!(parse(b""), Ok(None));
    }

    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(family);
        h.extend_from_slice(&u16::try_from(block.len()).expect("len").to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn v2_inet_inet6_local_unix() {
        let block = [192, 168, 0, 1, 10, 0, 0, 2, 0xdc, 0x04, 0x07, 0x5b];
        let mut h = v2(0x21, 0x11, &block);
        h.extend_from_slice(b"\x10\x0c");
        let (addr, used) = parse(&h).expect("valid").expect("complete");
        assert_eq!(addr, proxied("192.168.0.1:56324", "10.0.0.2:1883"));
        assert_eq!(&h[used..], b"\x10\x0c");

        let mut block6 = [0u8; 36];
        block6[0] = 0x20;
        block6[1] = 0x01;
        block6[15] = 1;
        block6[16] = 0x20;
        block6[17] = 0x01;
        block6[31] = 2;
        block6[32..].copy_from_slice(&[0x01, 0xbb, 0x22, 0xb3]);
        let h = v2(0x21, 0x21, &block6);
        let (addr, _) = parse(&h).expect("valid").expect("complete");
        assert_eq!(addr, proxied("[2001::1]:443", "[2001::2]:8883"));

        // LOCAL: the family and block are ignored, whatever they hold.
        let h = v2(0x20, 0x00, &[]);
        assert_eq!(parse(&h), Ok(Some((ProxyAddr::Local, 16))));
        let h = v2(0x20, 0x11, &block);
        assert_eq!(parse(&h), Ok(Some((ProxyAddr::Local, 28))));
        // UNSPEC and Unix sockets give no IP address.
        assert_eq!(
            parse(&v2(0x21, 0x00, &[])),
            Ok(Some((ProxyAddr::Unknown, 16)))
        );
        let h = v2(0x21, 0x31, &[0u8; 216]);
        assert_eq!(parse(&h), Ok(Some((ProxyAddr::Unknown, 232))));
        // TLVs after the addresses are skipped.
        let mut with_tlv = block.to_vec();
        with_tlv.extend_from_slice(&[0x01, 0x00, 0x04, b'm', b'q', b't', b't']);
        let h = v2(0x21, 0x11, &with_tlv);
        assert_eq!(parse(&h).expect("valid").expect("complete").1, h.len());
    }

    #[test]
    fn v2_bad_headers() {
        let block = [0u8; 12];
        assert_eq!(parse(&v2(0x11, 0x11, &block)), Err(ProxyError::V2Version));
        assert_eq!(parse(&v2(0x22, 0x11, &block)), Err(ProxyError::V2Command));
        assert_eq!(parse(&v2(0x21, 0x12, &block)), Err(ProxyError::V2Family));
        assert_eq!(parse(&v2(0x21, 0x41, &block)), Err(ProxyError::V2Family));
        assert_eq!(
            parse(&v2(0x21, 0x11, &block[..11])),
            Err(ProxyError::V2ShortAddress)
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &block)),
            Err(ProxyError::V2ShortAddress)
        );
        // The declared length is checked before the block arrives.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&h), Err(ProxyError::V2TooLong));
        h.truncate(15);
        assert_eq!(parse(&h), Ok(None));
    }

    #[test]
    fn decoder_takes_headers_in_pieces_and_stops_at_their_end() {
        let mut stream = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        stream.extend_from_slice(b"MQTT");
        for split in 0..stream.len() {
            let mut d = ProxyDecoder::default();
            let (a, b) = stream.split_at(split);
            let got = match d.feed(a).expect("first") {
                Some((addr, used)) => (addr, a[used..].iter().chain(b).copied().collect()),
                None => {
                    let (addr, used) = d.feed(b).expect("second").expect("complete");
                    (addr, b[used..].to_vec())
                }
            };
            assert_eq!(got.0, proxied("1.2.3.4:1", "5.6.7.8:2"), "split {split}");
            assert_eq!(got.1, b"MQTT".to_vec(), "split {split}");
            assert_eq!(d.buffered(), 0);
        }
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nMQTT";
        for split in 0..line.len() {
            let mut d = ProxyDecoder::default();
            let (a, b) = line.split_at(split);
            let rest: Vec<u8> = match d.feed(a).expect("first") {
                Some((_, used)) => a[used..].iter().chain(b).copied().collect(),
                None => {
                    let (_, used) = d.feed(b).expect("second").expect("complete");
                    b[used..].to_vec()
                }
            };
            assert_eq!(rest, b"MQTT".to_vec(), "split {split}");
        }
    }

    #[test]
    fn decoder_stays_bounded_byte_by_byte() {
        let mut d = ProxyDecoder::default();
        let mut fed = 0;
        let err = loop {
            match d.feed(b"PROXY UNKNOWN xxxxxxxx") {
                Ok(None) => fed += 1,
                Ok(Some(_)) => panic!("no line end was sent"),
                Err(e) => break e,
            }
            assert!(d.buffered() < MAX_V1_LEN, "buffered {}", d.buffered());
        };
        assert_eq!(err, ProxyError::V1TooLong);
        assert!(fed < 10);
    }
}
