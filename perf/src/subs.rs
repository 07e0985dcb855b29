//! The `subscriptions` scenario: what a broker's memory and routing cost per subscription.
//!
//! Timeline (main thread): connect `--connections` clients and read the broker's RSS; tell the
//! workers to subscribe (client `c` to `--filters` filters, in SUBSCRIBE packets of
//! `FILTERS_PER_PACKET`) and wait for every SUBACK; read the RSS again after `--hold`; the
//! growth divided by the subscriptions is the broker's cost per subscription. Then, for
//! `--duration`, one publisher on its own thread sends QoS 0 publishes to random subscribed
//! topics (each matches exactly one subscription, so nearly every publish misses the
//! broker's caches), and the broker's CPU time per publish is its routing and delivery cost
//! at that size.
//!
//! Filters look like device subscriptions: `rmqb/<tag>/site<c/100>/dev<c>/sensor<k>/+`
//! (`--exact`: without the `/+`), every one distinct.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::plan::{Role, Shared};
use crate::report::{ErrorKind, Report, ThreadReport};
use crate::run::{self, progress, sleep_until};
use crate::sys;
use crate::wire;
use crate::worker::{ConnState, Worker};

/// Filters per SUBSCRIBE: below the per-packet limits brokers set (RingMQ refuses more than
/// 256), and few enough packets that 10,000 clients subscribe in seconds.
const FILTERS_PER_PACKET: usize = 50;
/// Publishes written per `write` by the publisher thread.
const PUBLISH_BATCH: usize = 256;
/// Longest wait for the SUBACKs, per 100,000 subscriptions (and at least 60 s).
const SUBSCRIBE_TIMEOUT_PER_100K: Duration = Duration::from_secs(30);

/// Filter `k` of client `c`.
pub fn filter(out: &mut String, tag: u32, c: u32, k: u32, exact: bool) {
    out.clear();
    let _ = write!(out, "rmqb/{tag:08x}/site{}/dev{c}/sensor{k}", c / 100);
    if !exact {
        out.push_str("/+");
    }
}

/// A topic that matches filter `k` of client `c` and no other.
fn topic(out: &mut String, tag: u32, c: u32, k: u32, exact: bool) {
    filter(out, tag, c, k, true);
    if !exact {
        out.push_str("/v");
    }
}

impl Worker {
    /// Sends every SUBSCRIBE of this thread's ready connections (once).
    pub fn subscribe_filters(&mut self) {
        let (tag, k, exact) = (self.sh.tag, self.sh.cfg.filters, self.sh.cfg.exact);
        let proto = self.sh.cfg.protocol;
        self.subacks_due = vec![0; self.conns.len()];
        let mut filters: Vec<String> = Vec::with_capacity(FILTERS_PER_PACKET);
        for i in 0..self.conns.len() {
            let Role::Filters(c) = self.conns[i].role else {
                continue;
            };
            if self.conns[i].state != ConnState::Ready {
                continue;
            }
            let mut packet_id = 1u16;
            for first in (0..k).step_by(FILTERS_PER_PACKET) {
                let last = (first + FILTERS_PER_PACKET).min(k);
                filters.resize_with(last - first, String::new);
                for (f, n) in filters.iter_mut().zip(first..last) {
                    filter(f, tag, c, n as u32, exact);
                }
                let out = &mut self.conns[i].out;
                wire::encode_subscribe_all(out, proto, packet_id, &filters, 0);
                packet_id = packet_id.wrapping_add(1).max(1);
                self.subacks_due[i] += 1;
            }
            self.mark_dirty(i);
        }
    }

    /// A SUBACK of the subscriptions scenario: once the last one came, the connection counts
    /// as subscribed (or as refused if any filter was).
    pub fn on_filters_suback(&mut self, i: usize, body: &[u8]) -> Result<(), wire::WireError> {
        let (_, codes) = wire::parse_suback_codes(body, self.sh.cfg.protocol)?;
        let Some(due) = self.subacks_due.get_mut(i).filter(|d| **d > 0) else {
            return Err(wire::WireError::Malformed); // a SUBACK we did not ask for
        };
        *due -= 1;
        if codes.iter().any(|&c| c >= 0x80) {
            *due = 0;
            self.report.count_error(ErrorKind::SubackRefused);
            self.sh.refused.fetch_add(1, Ordering::AcqRel);
        } else if *due == 0 {
            self.sh.subscribed.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// The main thread's timeline of the scenario (see the module doc).
pub fn run_subscriptions(
    sh: &Arc<Shared>,
    handles: Vec<JoinHandle<ThreadReport>>,
) -> Result<(Report, i32), String> {
    let cfg = &sh.cfg;
    let pid = cfg.pid;
    let rss_empty = pid.and_then(sys::pid_rss_bytes);
    let ok = run::wait_handshakes(sh);
    if !ok || sh.failed.load(Ordering::Acquire) > 0 {
        return Err(run::setup_failure(sh, handles, !ok));
    }
    let n = cfg.connections;
    let subscriptions = (n * cfg.filters) as u64;
    progress(sh, &format!("{n} connected; settling {:?}", cfg.hold));
    sleep_until(sh, sh.now_ns() + cfg.hold.as_nanos() as u64);
    let rss_conns = pid.and_then(sys::pid_rss_bytes);
    let t0 = Instant::now();
    sh.subscribe_now.store(true, Ordering::Release);
    sh.wake_all();
    let timeout = SUBSCRIBE_TIMEOUT_PER_100K
        .mul_f64(subscriptions as f64 / 100_000.0)
        .max(Duration::from_secs(60));
    let mut next_line = Duration::from_secs(1);
    let all_done = loop {
        let (done, refused) = (
            sh.subscribed.load(Ordering::Acquire),
            sh.refused.load(Ordering::Acquire),
        );
        if done + refused >= n {
            break refused == 0;
        }
        if t0.elapsed() > timeout {
            break false;
        }
        if t0.elapsed() >= next_line {
            progress(
                sh,
                &format!("subscribed: {done}/{n} clients, {refused} refused"),
            );
            next_line += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let subscribe_s = t0.elapsed().as_secs_f64();
    progress(
        sh,
        &format!("subscribed in {subscribe_s:.1}s; settling {:?}", cfg.hold),
    );
    sleep_until(sh, sh.now_ns() + cfg.hold.as_nanos() as u64);
    let rss_subs = pid.and_then(sys::pid_rss_bytes);

    let mut rep = Report::default();
    run::header(&mut rep, cfg);
    rep.int("connections", n as u64);
    rep.int("filters_per_connection", cfg.filters as u64);
    rep.str("filter_kind", if cfg.exact { "exact" } else { "wildcard" });
    rep.int("subscriptions", subscriptions);
    rep.str("all_subscribed", if all_done { "yes" } else { "no" });
    rep.num("subscribe_s", subscribe_s);
    rep.num("subscriptions_per_s", subscriptions as f64 / subscribe_s);
    if let (Some(a), Some(b), Some(c)) = (rss_empty, rss_conns, rss_subs) {
        rep.int("broker_rss_empty_bytes", a);
        rep.int("broker_rss_connected_bytes", b);
        rep.int("broker_rss_subscribed_bytes", c);
        rep.num(
            "broker_bytes_per_connection",
            (b as f64 - a as f64) / n as f64,
        );
        rep.num(
            "broker_bytes_per_subscription",
            (c as f64 - b as f64) / subscriptions as f64,
        );
    } else if pid.is_some() {
        rep.str("broker_rss", "unreadable (/proc/PID/status)");
    }
    if all_done && !cfg.duration.is_zero() {
        publish_phase(sh, &mut rep)?;
    }
    let r = run::stop_and_join(sh, handles)?;
    rep.int("received_total", r.received_total);
    run::errors(&mut rep, &r);
    Ok((rep, if all_done { 0 } else { 1 }))
}

/// One publisher thread for `--duration`; the broker's CPU over that time per publish.
fn publish_phase(sh: &Arc<Shared>, rep: &mut Report) -> Result<(), String> {
    let pid = sh.cfg.pid;
    let received0 = run::live_totals(sh).1;
    let cpu0 = pid.and_then(sys::pid_cpu_time);
    let t0 = Instant::now();
    let publisher = {
        let sh = Arc::clone(sh);
        std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || publish(&sh))
            .map_err(|e| format!("spawning the publisher: {e}"))?
    };
    let sent = publisher
        .join()
        .map_err(|_| "the publisher panicked".to_string())?
        .map_err(|e| format!("publisher: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(sys::pid_cpu_time);
    // Deliveries still on their way: wait until none arrived for a second (at most 10 s).
    let mut last = run::live_totals(sh).1;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let now = run::live_totals(sh).1;
        if now == last {
            break;
        }
        last = now;
    }
    rep.num("publish_s", secs);
    rep.int("published", sent);
    rep.num("published_per_s", sent as f64 / secs);
    rep.int("delivered", last - received0);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let cpu = (b - a).as_secs_f64();
        rep.num("broker_cpu_pct", 100.0 * cpu / secs);
        rep.num("broker_us_per_publish", 1e6 * cpu / sent.max(1) as f64);
    }
    Ok(())
}

/// The publisher: a blocking connection writing batches of QoS 0 publishes to random
/// subscribed topics until `--duration` is over (paced to `--rate` when given). Returns the
/// publishes written.
fn publish(sh: &Shared) -> std::io::Result<u64> {
    let cfg = &sh.cfg;
    let mut stream = TcpStream::connect((cfg.host, cfg.port))?;
    stream.set_nodelay(true)?;
    let mut out = Vec::with_capacity(64 * 1024);
    let id = format!("{}-{}-publisher", cfg.client_prefix, std::process::id());
    let credentials = cfg.username.as_deref().map(|u| (u, cfg.password.as_str()));
    wire::encode_connect(&mut out, cfg.protocol, &id, 60, false, credentials);
    stream.write_all(&out)?;
    let mut connack = [0u8; 64];
    let mut have = 0;
    while wire::split_frame(&connack[..have], connack.len())
        .ok()
        .flatten()
        .is_none()
    {
        match stream.read(&mut connack[have..])? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => have += n,
        }
    }
    let payload = vec![b'p'; cfg.payload];
    let (clients, filters) = (cfg.connections as u64, cfg.filters as u64);
    let mut rng = u64::from(sh.tag) | 1;
    let mut name = String::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < cfg.duration {
        if let Some(rate) = cfg.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        out.clear();
        for _ in 0..PUBLISH_BATCH {
            // xorshift64: uniform enough to spread publishes over every subscription.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let (c, k) = ((rng >> 20) % clients, (rng >> 4) % filters);
            topic(&mut name, sh.tag, c as u32, k as u32, cfg.exact);
            wire::encode_publish_qos0(&mut out, cfg.protocol, name.as_bytes(), &payload);
        }
        stream.write_all(&out)?;
        sent += PUBLISH_BATCH as u64;
    }
    out.clear();
    wire::encode_disconnect(&mut out);
    stream.write_all(&out)?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_their_topics() {
        let mut s = String::new();
        filter(&mut s, 0xab, 1234, 7, false);
        assert_eq!(s, "rmqb/000000ab/site12/dev1234/sensor7/+");
        topic(&mut s, 0xab, 1234, 7, false);
        assert_eq!(s, "rmqb/000000ab/site12/dev1234/sensor7/v");
        filter(&mut s, 0xab, 5, 0, true);
        assert_eq!(s, "rmqb/000000ab/site0/dev5/sensor0");
        topic(&mut s, 0xab, 5, 0, true);
        assert_eq!(s, "rmqb/000000ab/site0/dev5/sensor0");
    }
}
