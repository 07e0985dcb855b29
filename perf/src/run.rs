//! The main thread's part of a run: spawn the workers, wait for every handshake, start the
//! clock, print progress once a second on stderr, drain, stop, and build the final report.
//! It never touches a connection; workers own them.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cli::{Config, Scenario};
use crate::link::LinkConfig;
use crate::plan::{Plan, Shared, Timing};
use crate::probe::Probe;
use crate::report::{ERROR_KINDS, Report, ThreadReport};
use crate::sys;
use crate::worker::Worker;

/// Exit status when a QoS guarantee was broken.
pub const EXIT_VIOLATION: i32 = 3;
/// Delay between "everyone is ready" and the first send, so every worker sees the start.
const START_DELAY_NS: u64 = 5_000_000;
/// The drain ends early when no delivery arrived for this long (QoS 0 loss at the tail).
const DRAIN_QUIET_NS: u64 = 1_000_000_000;

/// Runs the configured scenario; returns the process exit status or a setup error.
pub fn run(cfg: Config) -> Result<i32, String> {
    let tag = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u32;
    let plan = Plan::build(&cfg, tag);
    let ws = cfg
        .ws
        .then(|| (format!("{}:{}", cfg.host, cfg.port), cfg.ws_path.clone()));
    let tls = cfg
        .cafile
        .as_deref()
        .map(|ca| (ca, cfg.server_name.as_str()));
    let link = LinkConfig::new(tls, ws)?;
    let sh = Arc::new(Shared::new(cfg, plan, tag, link).map_err(|e| format!("eventfd: {e}"))?);
    let probe = sh.cfg.probe_port.map(|port| {
        let credentials = sh
            .cfg
            .username
            .clone()
            .map(|u| (u, sh.cfg.password.clone()));
        Probe::start(sh.cfg.host, port, credentials)
    });
    let mut handles = Vec::new();
    for id in 0..sh.cfg.threads {
        let w = Worker::new(sh.clone(), id).map_err(|e| format!("epoll: {e}"))?;
        let h = std::thread::Builder::new()
            .name(format!("bench-{id}"))
            .spawn(move || w.run())
            .map_err(|e| format!("spawning a worker thread: {e}"))?;
        handles.push(h);
    }
    let overflows0 = sys::listen_overflows();
    let (mut report, status) = match sh.cfg.scenario {
        Scenario::Idle => run_idle(&sh, handles),
        Scenario::ConnectRate => run_connect_rate(&sh, handles),
        Scenario::Subscriptions => crate::subs::run_subscriptions(&sh, handles),
        _ => run_messaging(&sh, handles),
    }?;
    if let Some(probe) = probe {
        probe.finish(&mut report)?;
    }
    if let (Some(a), Some(b)) = (overflows0, sys::listen_overflows()) {
        // Host-wide counter: another program's listen queue overflowing would count too.
        report.int("listen_overflows", b.saturating_sub(a));
    }
    if sh.cfg.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(status)
}

pub(crate) fn stop_and_join(
    sh: &Shared,
    handles: Vec<JoinHandle<ThreadReport>>,
) -> Result<ThreadReport, String> {
    sh.stop.store(true, Ordering::Release);
    sh.wake_all();
    let mut total = ThreadReport::new();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "a worker thread panicked".to_string())?;
        total.merge(&r);
    }
    Ok(total)
}

pub(crate) fn progress(sh: &Shared, line: &str) {
    if !sh.cfg.quiet {
        eprintln!("{line}");
    }
}

pub(crate) fn live_totals(sh: &Shared) -> (u64, u64) {
    sh.threads.iter().fold((0, 0), |(s, r), t| {
        (
            s + t.live.0.sent.load(Ordering::Relaxed),
            r + t.live.0.received.load(Ordering::Relaxed),
        )
    })
}

pub(crate) fn sleep_until(sh: &Shared, ns: u64) {
    let now = sh.now_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos(ns - now));
    }
}

/// Waits until every connection is ready or has failed, printing progress; false on timeout.
pub(crate) fn wait_handshakes(sh: &Shared) -> bool {
    let total = sh.cfg.total_connections();
    let deadline = sh.now_ns() + (10 + total as u64 / 1000) * 1_000_000_000;
    let mut next_line = sh.now_ns() + 1_000_000_000;
    loop {
        let (ready, failed) = (
            sh.ready.load(Ordering::Acquire),
            sh.failed.load(Ordering::Acquire),
        );
        if ready + failed >= total {
            return true;
        }
        let now = sh.now_ns();
        if now > deadline {
            return false;
        }
        if now >= next_line {
            progress(
                sh,
                &format!("connecting: {ready}/{total} ready, {failed} failed"),
            );
            next_line += 1_000_000_000;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn setup_failure(
    sh: &Shared,
    handles: Vec<JoinHandle<ThreadReport>>,
    timed_out: bool,
) -> String {
    let total = sh.cfg.total_connections();
    let ready = sh.ready.load(Ordering::Acquire);
    let r = stop_and_join(sh, handles).unwrap_or_default();
    let errors: Vec<String> = ERROR_KINDS
        .iter()
        .zip(r.errors)
        .filter(|(_, n)| *n > 0)
        .map(|((_, name), n)| format!("{name}={n}"))
        .collect();
    format!(
        "setup failed: {ready}/{total} connections ready{} ({}); is a broker listening on {}:{}?",
        if timed_out { " before the timeout" } else { "" },
        if errors.is_empty() {
            "no errors".to_string()
        } else {
            errors.join(", ")
        },
        sh.cfg.host,
        sh.cfg.port
    )
}

fn run_messaging(
    sh: &Arc<Shared>,
    handles: Vec<JoinHandle<ThreadReport>>,
) -> Result<(Report, i32), String> {
    let ok = wait_handshakes(sh);
    if !ok || sh.failed.load(Ordering::Acquire) > 0 {
        return Err(setup_failure(sh, handles, !ok));
    }
    progress(
        sh,
        &format!("all connected; topics rmqb/{:08x}/...; starting", sh.tag),
    );
    let start = sh.now_ns() + START_DELAY_NS;
    let t = Timing::from_start(&sh.cfg, start);
    sh.start_ns.store(start, Ordering::Release);
    sh.wake_all();
    let pid = sh.cfg.pid;
    let mut marks = None;
    let mut last = (live_totals(sh), start);
    let mut next_line = start + 1_000_000_000;
    while sh.now_ns() < t.meas_end {
        let next = next_line.min(if marks.is_none() {
            t.warm_end
        } else {
            t.meas_end
        });
        sleep_until(sh, next.min(t.meas_end));
        let now = sh.now_ns();
        if marks.is_none() && now >= t.warm_end {
            marks = Some((sys::process_cpu_time(), pid.and_then(sys::pid_cpu_time)));
        }
        if now >= next_line {
            let cur = live_totals(sh);
            let secs = (now - last.1) as f64 / 1e9;
            let phase = if now < t.warm_end {
                "warmup"
            } else {
                "measure"
            };
            progress(
                sh,
                &format!(
                    "[{:5.1}s] {phase:7} sent {:>10.0}/s  received {:>10.0}/s",
                    (now - start) as f64 / 1e9,
                    (cur.0 - last.0.0) as f64 / secs,
                    (cur.1 - last.0.1) as f64 / secs
                ),
            );
            last = (cur, now);
            next_line += 1_000_000_000;
        }
    }
    let gen_cpu = sys::process_cpu_time();
    let broker_cpu = pid.and_then(sys::pid_cpu_time);
    let drain_s = drain(sh, t);
    let r = stop_and_join(sh, handles)?;
    let cpu = marks.map(|(g0, b0)| (gen_cpu - g0, broker_cpu.zip(b0).map(|(b1, b0)| b1 - b0)));
    Ok(messaging_report(sh, &r, drain_s, cpu))
}

/// Waits until everything sent was delivered, nothing arrived for DRAIN_QUIET_NS, or the
/// configured drain time is over. Returns the time spent, in seconds.
fn drain(sh: &Shared, t: Timing) -> f64 {
    let limit = t.meas_end + sh.cfg.drain.as_nanos() as u64;
    let mut last_recv = live_totals(sh).1;
    let mut last_change = sh.now_ns();
    loop {
        let now = sh.now_ns();
        if sh.all_delivered() || now >= limit || now - last_change > DRAIN_QUIET_NS {
            return (now.saturating_sub(t.meas_end)) as f64 / 1e9;
        }
        let recv = live_totals(sh).1;
        if recv != last_recv {
            last_recv = recv;
            last_change = now;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn messaging_report(
    sh: &Shared,
    r: &ThreadReport,
    drain_s: f64,
    cpu: Option<(Duration, Option<Duration>)>,
) -> (Report, i32) {
    let cfg = &sh.cfg;
    let secs = cfg.duration.as_secs_f64();
    let expected: u64 = (0..sh.plan.edges)
        .map(|e| {
            sh.pub_sent[sh.plan.edge_pub[e] as usize]
                .0
                .load(Ordering::SeqCst)
        })
        .sum();
    let mut rep = Report::default();
    header(&mut rep, cfg);
    rep.int("publishers", cfg.publishers as u64);
    rep.int("subscribers", cfg.subscribers as u64);
    rep.int(
        "topics",
        if cfg.scenario == Scenario::Pairs {
            cfg.publishers
        } else {
            cfg.topics
        } as u64,
    );
    rep.int("qos", u64::from(cfg.qos));
    rep.int("payload_bytes", cfg.payload as u64);
    match cfg.rate {
        Some(rate) => {
            rep.str("load", "open-loop");
            rep.num("target_rate", rate);
        }
        None => {
            rep.str("load", "closed-loop");
            rep.int("window", cfg.window as u64);
        }
    }
    rep.num("warmup_s", cfg.warmup.as_secs_f64());
    rep.num("duration_s", secs);
    rep.num("drain_s", drain_s);
    rep.num("sent_per_s", r.sent_window as f64 / secs);
    rep.num("received_per_s", r.received_window as f64 / secs);
    rep.int("sent_total", r.sent_total);
    rep.int("expected_deliveries", expected);
    rep.int("received_total", r.received_total);
    rep.int("lost", r.lost);
    rep.int("duplicates", r.duplicates);
    rep.int("out_of_order", r.out_of_order);
    rep.int("late", r.late);
    rep.int("foreign", r.foreign);
    rep.int("rejected", r.rejected);
    if cfg.qos > 0 {
        rep.int("unacked", r.unacked);
    }
    if cfg.rate.is_some() {
        rep.int("behind_schedule", r.behind);
        rep.percentiles("send_lag", &r.send_lag);
    }
    rep.percentiles("latency", &r.latency);
    if cfg.qos > 0 {
        // PUBACK (QoS 1) or PUBREC (QoS 2) after the publish was queued.
        rep.percentiles("ack_latency", &r.ack_latency);
    }
    errors(&mut rep, r);
    let messages = (r.sent_total + r.received_total).max(1);
    rep.num(
        "generator_syscalls_per_msg",
        r.syscalls as f64 / messages as f64,
    );
    if let Some((gen_cpu, broker_cpu)) = cpu {
        rep.num("generator_cpu_pct", 100.0 * gen_cpu.as_secs_f64() / secs);
        if let Some(b) = broker_cpu {
            rep.num("broker_cpu_pct", 100.0 * b.as_secs_f64() / secs);
        }
    }
    let mut violations = Vec::new();
    if cfg.qos >= 1 && r.lost > 0 {
        violations.push(format!("QoS {} lost {} messages", cfg.qos, r.lost));
    }
    if cfg.qos == 2 && r.duplicates > 0 {
        violations.push(format!("QoS 2 delivered {} duplicates", r.duplicates));
    }
    let status = if violations.is_empty() {
        0
    } else {
        EXIT_VIOLATION
    };
    rep.str(
        "verdict",
        if violations.is_empty() {
            "ok".into()
        } else {
            violations.join("; ")
        },
    );
    (rep, status)
}

pub(crate) fn header(rep: &mut Report, cfg: &Config) {
    rep.str("scenario", cfg.scenario.name());
    rep.str("broker", format!("{}:{}", cfg.host, cfg.port));
    rep.str("protocol", cfg.protocol_name());
    rep.str("transport", cfg.transport_name());
    rep.int("threads", cfg.threads as u64);
}

pub(crate) fn errors(rep: &mut Report, r: &ThreadReport) {
    for ((_, name), n) in ERROR_KINDS.iter().zip(r.errors) {
        rep.int(name, n);
    }
}

fn run_idle(
    sh: &Arc<Shared>,
    handles: Vec<JoinHandle<ThreadReport>>,
) -> Result<(Report, i32), String> {
    // The before reading comes after spawning, but no worker has connected until it runs its
    // first loop turn; spawning threads does not touch the broker.
    let pid = sh.cfg.pid;
    let rss0 = pid.and_then(sys::pid_rss_bytes);
    let t0 = sh.now_ns();
    let ok = wait_handshakes(sh);
    let connect_s = (sh.now_ns() - t0) as f64 / 1e9;
    let ready = sh.ready.load(Ordering::Acquire) as u64;
    progress(
        sh,
        &format!(
            "{ready} connected in {connect_s:.2}s; holding {:?}",
            sh.cfg.hold
        ),
    );
    let end = sh.now_ns() + sh.cfg.hold.as_nanos() as u64;
    let mut next_line = sh.now_ns() + 1_000_000_000;
    while sh.now_ns() < end {
        sleep_until(sh, next_line.min(end));
        if let Some(rss) = pid.and_then(sys::pid_rss_bytes) {
            progress(
                sh,
                &format!("holding {ready} connections; broker RSS {} KiB", rss / 1024),
            );
        }
        next_line += 1_000_000_000;
    }
    let rss1 = pid.and_then(sys::pid_rss_bytes);
    let r = stop_and_join(sh, handles)?;
    let mut rep = Report::default();
    header(&mut rep, &sh.cfg);
    rep.int("connections", sh.cfg.connections as u64);
    rep.int("connected", ready);
    rep.str("all_connected", if ok { "yes" } else { "no (timed out)" });
    rep.num("connect_s", connect_s);
    rep.num("hold_s", sh.cfg.hold.as_secs_f64());
    if let (Some(a), Some(b)) = (rss0, rss1) {
        rep.int("broker_rss_before_bytes", a);
        rep.int("broker_rss_after_bytes", b);
        rep.num(
            "broker_bytes_per_connection",
            (b as f64 - a as f64) / ready.max(1) as f64,
        );
    } else if pid.is_some() {
        rep.str("broker_rss", "unreadable (/proc/PID/status)");
    }
    if let Some(own) = sys::pid_rss_bytes(std::process::id()) {
        rep.int("generator_rss_bytes", own);
    }
    errors(&mut rep, &r);
    Ok((rep, 0))
}

fn run_connect_rate(
    sh: &Arc<Shared>,
    handles: Vec<JoinHandle<ThreadReport>>,
) -> Result<(Report, i32), String> {
    let t0 = sh.now_ns();
    let cpu0 = (
        sys::process_cpu_time(),
        sh.cfg.pid.and_then(sys::pid_cpu_time),
    );
    let ok = wait_handshakes(sh);
    let cpu1 = (
        sys::process_cpu_time(),
        sh.cfg.pid.and_then(sys::pid_cpu_time),
    );
    let ready = sh.ready.load(Ordering::Acquire) as u64;
    let r = stop_and_join(sh, handles)?;
    let secs = (r.last_ready_ns.max(t0 + 1) - t0) as f64 / 1e9;
    let mut rep = Report::default();
    header(&mut rep, &sh.cfg);
    rep.int("connections", sh.cfg.connections as u64);
    rep.int("concurrency", sh.cfg.concurrency as u64);
    rep.int("connected", ready);
    rep.str("all_connected", if ok { "yes" } else { "no (timed out)" });
    rep.num("elapsed_s", secs);
    rep.num("connects_per_s", ready as f64 / secs);
    rep.percentiles("connack", &r.connack);
    errors(&mut rep, &r);
    rep.num(
        "generator_cpu_pct",
        100.0 * (cpu1.0 - cpu0.0).as_secs_f64() / secs,
    );
    if let (Some(b0), Some(b1)) = (cpu0.1, cpu1.1) {
        rep.num("broker_cpu_pct", 100.0 * (b1 - b0).as_secs_f64() / secs);
    }
    Ok((rep, 0))
}
