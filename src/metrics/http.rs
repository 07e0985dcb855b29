//! The Prometheus endpoint: a tiny blocking HTTP/1.1 server on a thread of its own
//! (`ringmq-metrics`), answering `GET /metrics` with what `scrape` encodes, one request per
//! connection, one connection at a time (a Prometheus server scrapes every few seconds).
//!
//! Owns: the listening socket, request parsing (`httparse`, headers at most
//! `MAX_REQUEST_BYTES`), timeouts, and the answers: 200 with the metrics, 404 for another
//! path, 405 for another method, 400 for what does not parse.
//!
//! Must never: run on a shard thread, wait for a client longer than `IO_TIMEOUT`, or keep
//! more than one connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::log;

/// How long a scraper may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the accept wait returns to look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

/// A request's head may be this long; a longer one is answered 400.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The running endpoint; `stop` (or dropping it) ends the thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `scrape()` (the text and its content type) at `/metrics`.
    pub fn start(
        addr: SocketAddr,
        scrape: impl Fn() -> String + Send + 'static,
    ) -> io::Result<MetricsServer> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ringmq-metrics".to_owned())
            .spawn(move || serve(&listener, &flag, &scrape))?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    // `accept` on a socket with a receive timeout returns EAGAIN when it expires: the loop
    // looks at the stop flag that often.
    socket.set_read_timeout(Some(STOP_POLL))?;
    Ok(socket.into())
}

fn serve(listener: &TcpListener, stop: &AtomicBool, scrape: &dyn Fn() -> String) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, scrape) {
                    log!(DEBUG, None, "metrics request from {peer}: {e}");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log!(WARN, None, "metrics endpoint: accept failed: {e}");
                std::thread::sleep(STOP_POLL);
            }
        }
    }
}

/// Reads one request and writes its answer.
fn answer(mut stream: TcpStream, scrape: &dyn Fn() -> String) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    let (status, body) = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(()); // Closed before a whole request: nothing to answer.
        }
        len += n;
        match route(&buf[..len]) {
            Some(answer) => break answer,
            None if len == buf.len() => break (Status::BadRequest, String::new()),
            None => {}
        }
    };
    let body = match status {
        Status::Ok => scrape(),
        Status::BadRequest | Status::NotFound | Status::MethodNotAllowed => body,
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.line(),
        match status {
            Status::Ok => super::prom::CONTENT_TYPE,
            Status::BadRequest | Status::NotFound | Status::MethodNotAllowed => {
                "text/plain; charset=utf-8"
            }
        },
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
        }
    }
}

/// The answer to a request head (`None`: incomplete, read more). The body of a 200 is
/// made by the caller.
fn route(head: &[u8]) -> Option<(Status, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Err(e) => Some((Status::BadRequest, format!("{e}\n"))),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            Some(match (req.method, path) {
                (Some("GET"), "/metrics") => (Status::Ok, String::new()),
                (Some("GET"), _) => (Status::NotFound, "try /metrics\n".to_owned()),
                _ => (Status::MethodNotAllowed, "GET only\n".to_owned()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), || {
            "# TYPE x gauge\nx 1\n".to_owned()
        })
        .expect("start");
        let addr = server.addr();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\n# TYPE x gauge\nx 1\n"), "{ok}");
        let split = get(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(split.starts_with("HTTP/1.1 200"), "{split}");
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, "\x01\x02 garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        server.stop();
        assert!(TcpStream::connect(addr).is_err(), "closed after stop");
    }
}
