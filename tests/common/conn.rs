//! A blocking MQTT connection that reports failures instead of panicking, for tests whose
//! broker may close a connection or die under it at any moment (crash and stress tests).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq::codec::{self, Connect, DecodeLimits, Packet, ProtocolVersion};

pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Conn {
    /// Connects and sends `connect`; returns the connection and the CONNACK (an error when
    /// anything else arrives, or nothing within 5 s).
    pub fn open(addr: SocketAddr, connect: Connect) -> std::io::Result<(Conn, codec::ConnAck)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            buf: BytesMut::new(),
            version: connect.protocol,
        };
        c.send(&Packet::Connect(Box::new(connect)))?;
        match c.recv(Duration::from_secs(5))? {
            Some(Packet::ConnAck(a)) => Ok((c, a)),
            other => Err(std::io::Error::other(format!(
                "CONNACK expected: {other:?}"
            ))),
        }
    }

    pub fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        codec::encode(p, self.version, &mut out);
        self.stream.write_all(&out)
    }

    /// The next packet within `timeout` (`None`: nothing yet); an error once the connection
    /// is gone or the broker sent bytes that do not decode.
    pub fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Packet>> {
        let limits = DecodeLimits {
            max_packet_size: 1 << 24,
            max_user_properties: 1000,
            role: codec::Role::Client,
        };
        let deadline = Instant::now() + timeout;
        loop {
            match codec::decode(&mut self.buf, Some(self.version), &limits) {
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(format!("{e:?}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
