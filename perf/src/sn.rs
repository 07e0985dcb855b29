//! `ringmq-bench mqttsn`: MQTT-SN 1.2 publishers over UDP -> one MQTT subscriber over TCP.
//!
//! Each publisher is a UDP socket that CONNECTs to the gateway and REGISTERs its own topic
//! `bench/sn/<n>`; publisher threads then publish for the measured time: QoS 0 paced at
//! `--rate` publishes/s in total (0: as fast as the threads go; UDP then drops what the
//! kernel buffers cannot hold, which the report shows as loss), QoS 1 in a closed loop of
//! `--window` unacknowledged publishes per publisher. The subscriber subscribes to
//! `bench/sn/#` at QoS 0 and counts deliveries. Reported: publishes sent and acknowledged,
//! deliveries per second, and with `--pid` the broker's CPU time per delivery.
//!
//! The MQTT-SN and MQTT bytes are written by hand here (a handful of fixed layouts): the
//! load generator does not depend on the broker's crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
ringmq-bench mqttsn: MQTT-SN publishers over UDP -> one MQTT subscriber over TCP

USAGE:
  ringmq-bench mqttsn [OPTIONS]

OPTIONS:
  --host IP          broker address [127.0.0.1]
  --port N           MQTT (TCP) port of the subscriber [1883]
  --sn-port N        MQTT-SN (UDP) port of the publishers [1884]
  --clients N        MQTT-SN publishers [64]
  --threads N        publisher threads [2]
  --qos 0|1          QoS of the publishes [0]
  --payload BYTES    payload size [64]
  --window W         QoS 1: unacknowledged publishes per publisher [8]
  --rate R           QoS 0: publishes/s in total, 0 = unpaced [0]
  --duration SECS    measured time [3]
  --pid PID          broker pid: report its CPU time per delivery
";

#[derive(Debug, Clone)]
struct Options {
    host: String,
    port: u16,
    sn_port: u16,
    clients: usize,
    threads: usize,
    qos: u8,
    payload: usize,
    window: usize,
    rate: u64,
    duration: Duration,
    pid: Option<u32>,
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        host: "127.0.0.1".to_owned(),
        port: 1883,
        sn_port: 1884,
        clients: 64,
        threads: 2,
        qos: 0,
        payload: 64,
        window: 8,
        rate: 0,
        duration: Duration::from_secs(3),
        pid: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: bad number {v:?}"))
        };
        match flag.as_str() {
            "--host" => o.host = value.clone(),
            "--port" => o.port = num(value)? as u16,
            "--sn-port" => o.sn_port = num(value)? as u16,
            "--clients" => o.clients = num(value)?.max(1) as usize,
            "--threads" => o.threads = num(value)?.max(1) as usize,
            "--qos" => o.qos = num(value)?.min(1) as u8,
            "--payload" => o.payload = num(value)?.min(1000) as usize,
            "--window" => o.window = num(value)?.max(1) as usize,
            "--rate" => o.rate = num(value)?,
            "--duration" => o.duration = Duration::from_secs(num(value)?.max(1)),
            "--pid" => o.pid = Some(num(value)? as u32),
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    Ok(Some(o))
}

/// Runs the scenario; the exit status.
pub fn main(args: &[String]) -> Result<i32, String> {
    let Some(o) = parse(args)? else {
        print!("{USAGE}");
        return Ok(0);
    };
    let mqtt: SocketAddr = format!("{}:{}", o.host, o.port)
        .parse()
        .map_err(|e| format!("--host/--port: {e}"))?;
    let gw: SocketAddr = format!("{}:{}", o.host, o.sn_port)
        .parse()
        .map_err(|e| format!("--host/--sn-port: {e}"))?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sub = subscriber(mqtt, Arc::clone(&delivered), Arc::clone(&stop))?;
    // Connect and register every publisher before the clock starts.
    let mut pubs = Vec::with_capacity(o.clients);
    for n in 0..o.clients {
        pubs.push(Publisher::connect(gw, n).map_err(|e| format!("publisher {n}: {e}"))?);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let per_thread = o.clients.div_ceil(o.threads);
    let cpu0 = o.pid.and_then(pid_cpu_ticks);
    let d0 = delivered.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut threads = Vec::new();
    while !pubs.is_empty() {
        let mine: Vec<Publisher> = pubs.drain(..per_thread.min(pubs.len())).collect();
        let (o, sent, acked, stop) = (
            o.clone(),
            Arc::clone(&sent),
            Arc::clone(&acked),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || {
            publish_loop(mine, &o, &sent, &acked, &stop)
        }));
    }
    std::thread::sleep(o.duration);
    let elapsed = start.elapsed();
    let delivered_n = delivered.load(Ordering::Relaxed) - d0;
    let cpu = o.pid.and_then(pid_cpu_ticks).zip(cpu0).map(|(b, a)| b - a);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(sub);
    let (sent, acked) = (sent.load(Ordering::Relaxed), acked.load(Ordering::Relaxed));
    let rate = delivered_n as f64 / elapsed.as_secs_f64();
    println!(
        "mqttsn qos {} clients {} payload {} B: sent {sent}, acknowledged {acked}, delivered \
         {delivered_n} ({:.1}% of sent), {rate:.0} deliveries/s",
        o.qos,
        o.clients,
        o.payload,
        100.0 * delivered_n as f64 / sent.max(1) as f64
    );
    if let Some(ticks) = cpu {
        let secs = ticks as f64 / clock_ticks_per_sec();
        println!(
            "broker CPU {secs:.2} s in {:.2} s ({:.0}%), {:.2} us per delivery",
            elapsed.as_secs_f64(),
            100.0 * secs / elapsed.as_secs_f64(),
            1e6 * secs / delivered_n.max(1) as f64
        );
    }
    Ok(0)
}

/// One MQTT-SN publisher: its socket and registered topic id.
struct Publisher {
    sock: UdpSocket,
    topic: u16,
    next_id: u16,
    outstanding: usize,
}

impl Publisher {
    fn connect(gw: SocketAddr, n: usize) -> std::io::Result<Publisher> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(gw)?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let id = format!("snbench-{}-{n}", std::process::id());
        // CONNECT: clean session, ProtocolId 1, keep alive 300 s.
        let mut c = vec![0, 0x04, 0x04, 0x01, 0x01, 0x2C];
        c.extend_from_slice(id.as_bytes());
        c[0] = c.len() as u8;
        let reply = request(&sock, &c, 0x05)?;
        if reply.get(2) != Some(&0) {
            return Err(std::io::Error::other(format!("CONNACK {reply:?}")));
        }
        let name = format!("bench/sn/{n}");
        let mut r = vec![0, 0x0A, 0, 0, 0, 1];
        r.extend_from_slice(name.as_bytes());
        r[0] = r.len() as u8;
        let reply = request(&sock, &r, 0x0B)?;
        if reply.len() != 7 || reply[6] != 0 {
            return Err(std::io::Error::other(format!("REGACK {reply:?}")));
        }
        sock.set_nonblocking(true)?;
        Ok(Publisher {
            sock,
            topic: u16::from_be_bytes([reply[2], reply[3]]),
            next_id: 1,
            outstanding: 0,
        })
    }

    fn publish(&mut self, qos: u8, payload: &[u8]) -> bool {
        let msg_id = if qos == 0 { 0 } else { self.next_id };
        let [t0, t1] = self.topic.to_be_bytes();
        let [m0, m1] = msg_id.to_be_bytes();
        let body = [0x0C, qos << 5, t0, t1, m0, m1];
        let mut d = Vec::with_capacity(3 + body.len() + payload.len());
        let len = 1 + body.len() + payload.len();
        if len <= 255 {
            d.push(len as u8);
        } else {
            let [h, l] = ((len + 2) as u16).to_be_bytes();
            d.extend_from_slice(&[0x01, h, l]);
        }
        d.extend_from_slice(&body);
        d.extend_from_slice(payload);
        let ok = self.sock.send(&d).is_ok();
        if ok && qos == 1 {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            self.outstanding += 1;
        }
        ok
    }

    /// Reads what arrived; returns the PUBACKs.
    fn read_acks(&mut self, buf: &mut [u8]) -> u64 {
        let mut n = 0;
        while let Ok(len) = self.sock.recv(buf) {
            if len >= 7 && buf[1] == 0x0D {
                n += 1;
                self.outstanding = self.outstanding.saturating_sub(1);
            }
        }
        n
    }
}

/// Sends `msg` and waits for a reply of type `want` (blocking socket).
fn request(sock: &UdpSocket, msg: &[u8], want: u8) -> std::io::Result<Vec<u8>> {
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        sock.send(msg)?;
        while let Ok(n) = sock.recv(&mut buf) {
            if n >= 2 && buf[1] == want {
                return Ok(buf[..n].to_vec());
            }
        }
    }
    Err(std::io::Error::other(format!(
        "no reply of type {want:#04x}"
    )))
}

fn publish_loop(
    mut pubs: Vec<Publisher>,
    o: &Options,
    sent: &AtomicU64,
    acked: &AtomicU64,
    stop: &AtomicBool,
) {
    let payload = vec![b'x'; o.payload];
    let mut buf = [0u8; 512];
    let share = (o.rate as f64) * pubs.len() as f64 / o.clients as f64;
    let start = Instant::now();
    let mut n_sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut progress = false;
        for p in &mut pubs {
            if o.qos == 1 {
                acked.fetch_add(p.read_acks(&mut buf), Ordering::Relaxed);
                while p.outstanding < o.window && p.publish(1, &payload) {
                    n_sent += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    progress = true;
                }
            } else {
                if share > 0.0 && n_sent as f64 >= share * start.elapsed().as_secs_f64() {
                    continue;
                }
                if p.publish(0, &payload) {
                    n_sent += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    progress = true;
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The MQTT 3.1.1 subscriber: CONNECT, SUBSCRIBE bench/sn/# at QoS 0, then count PUBLISH
/// packets until `stop`.
fn subscriber(
    addr: SocketAddr,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("subscriber: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let id = format!("snbench-sub-{}", std::process::id());
    let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    connect[1] = (connect.len() - 2) as u8;
    let filter = b"bench/sn/#";
    let mut sub = vec![0x82, 0, 0, 1];
    sub.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    sub.extend_from_slice(filter);
    sub.push(0);
    sub[1] = (sub.len() - 2) as u8;
    s.write_all(&connect)
        .and_then(|()| s.write_all(&sub))
        .map_err(|e| format!("subscriber: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    // CONNACK (4 bytes) and SUBACK (5 bytes) come before any delivery.
    let mut head = [0u8; 9];
    s.read_exact(&mut head)
        .map_err(|e| format!("subscriber CONNACK/SUBACK: {e}"))?;
    Ok(std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = s.read(&mut buf) else { continue };
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut at = 0;
            let mut count = 0;
            while let Some((kind, len)) = frame(&pending[at..]) {
                if kind >> 4 == 3 {
                    count += 1;
                }
                at += len;
            }
            pending.drain(..at);
            delivered.fetch_add(count, Ordering::Relaxed);
        }
    }))
}

/// The first byte and total length of the complete MQTT packet at the start of `b`.
fn frame(b: &[u8]) -> Option<(u8, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i + len;
            return (b.len() >= total).then_some((b[0], total));
        }
    }
    None
}

fn pid_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
