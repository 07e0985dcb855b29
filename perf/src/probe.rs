//! A bystander client: one plain MQTT connection that sends PINGREQ every `INTERVAL` for the
//! whole run and records how long each PINGRESP takes. It measures what a load (a storm of
//! TLS handshakes, say) costs the broker's other clients, independently of the load's own
//! connections. Blocking I/O on its own thread; never touches the workers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{Report, new_histogram};
use crate::wire::{self, Protocol};

/// Time between the end of one ping and the next.
const INTERVAL: Duration = Duration::from_millis(5);

/// Longest wait for one PINGRESP before the probe gives up (and reports it).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Histogram<u64>, String>>,
}

impl Probe {
    /// Connects to `host:port` (with the run's user name and password, if any) and starts
    /// pinging (failures show in `finish`).
    pub fn start(host: Ipv4Addr, port: u16, credentials: Option<(String, String)>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            run(SocketAddr::from((host, port)), credentials.as_ref(), &flag)
        });
        Probe { stop, thread }
    }

    /// Stops the probe and adds `probe_pingresp_*` (microseconds) to the report.
    pub fn finish(self, rep: &mut Report) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        let h = self
            .thread
            .join()
            .map_err(|_| "the probe thread panicked".to_string())??;
        rep.percentiles("probe_pingresp", &h);
        Ok(())
    }
}

fn run(
    addr: SocketAddr,
    credentials: Option<&(String, String)>,
    stop: &AtomicBool,
) -> Result<Histogram<u64>, String> {
    let err = |what: &str, e: std::io::Error| format!("probe {addr}: {what}: {e}");
    let mut s = TcpStream::connect(addr).map_err(|e| err("connect", e))?;
    s.set_nodelay(true).map_err(|e| err("nodelay", e))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| err("timeout", e))?;
    let mut out = Vec::new();
    let id = format!("probe-{}", std::process::id());
    let credentials = credentials.map(|(u, p)| (u.as_str(), p.as_str()));
    wire::encode_connect(&mut out, Protocol::V311, &id, 60, false, credentials);
    s.write_all(&out).map_err(|e| err("CONNECT", e))?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).map_err(|e| err("CONNACK", e))?;
    if connack[0] >> 4 != 2 || connack[3] != 0 {
        return Err(format!("probe {addr}: CONNACK {connack:?}"));
    }
    let mut h = new_histogram();
    let mut ping = Vec::new();
    wire::encode_pingreq(&mut ping);
    while !stop.load(Ordering::Acquire) {
        let start = Instant::now();
        s.write_all(&ping).map_err(|e| err("PINGREQ", e))?;
        let mut resp = [0u8; 2];
        s.read_exact(&mut resp).map_err(|e| err("PINGRESP", e))?;
        if resp != [0xd0, 0x00] {
            return Err(format!("probe {addr}: expected PINGRESP, got {resp:?}"));
        }
        h.saturating_record(start.elapsed().as_micros().max(1) as u64);
        std::thread::sleep(INTERVAL);
    }
    Ok(h)
}
