//! Per-thread results, their aggregation, and the final report as a table or as JSON.

use hdrhistogram::Histogram;

/// Why a connection failed or a packet was refused; each is counted, none panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// connect() failed or was refused.
    Connect,
    /// The broker closed the connection (EOF, reset, DISCONNECT) before we asked.
    Closed,
    /// read/write failed with another error.
    Io,
    /// Bytes that are not a valid packet, or a packet not allowed in the current state.
    Protocol,
    ConnackRefused,
    SubackRefused,
    /// The TLS or WebSocket layer failed (handshake, certificate, upgrade, frames).
    Transport,
}

pub const ERROR_KINDS: [(ErrorKind, &str); 7] = [
    (ErrorKind::Connect, "connect_failed"),
    (ErrorKind::Closed, "closed_by_broker"),
    (ErrorKind::Io, "io_error"),
    (ErrorKind::Protocol, "protocol_error"),
    (ErrorKind::ConnackRefused, "connack_refused"),
    (ErrorKind::SubackRefused, "suback_refused"),
    (ErrorKind::Transport, "transport_error"),
];

/// Microseconds, 1 us .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// What one worker measured. Sums across workers give the run's totals.
#[derive(Debug, Clone)]
pub struct ThreadReport {
    /// Publishes whose send (or scheduled) time fell in the measured window.
    pub sent_window: u64,
    /// Deliveries received in the measured window.
    pub received_window: u64,
    pub sent_total: u64,
    pub received_total: u64,
    /// End-to-end latency of messages sent in the measured window (us).
    pub latency: Histogram<u64>,
    /// QoS 1/2: from queuing a publish to its PUBACK (QoS 2: PUBREC), measured window (us).
    pub ack_latency: Histogram<u64>,
    /// Open loop: how late the generator sent relative to the schedule (us).
    pub send_lag: Histogram<u64>,
    /// CONNECT start (socket creation) to CONNACK (us).
    pub connack: Histogram<u64>,
    pub errors: [u64; ERROR_KINDS.len()],
    pub distinct: u64,
    pub duplicates: u64,
    pub late: u64,
    pub out_of_order: u64,
    pub lost: u64,
    /// Messages with another run's tag or an unknown publisher.
    pub foreign: u64,
    /// Open loop: messages scheduled before the end but never sent.
    pub behind: u64,
    /// 5.0 acknowledgements with a failure reason code (>= 0x80).
    pub rejected: u64,
    /// QoS 1/2 publishes the broker had not acknowledged when the run stopped.
    pub unacked: u64,
    /// Event-loop syscalls (epoll, read, send, eventfd): the generator's own cost per message.
    pub syscalls: u64,
    /// ns since epoch of the last connection becoming ready.
    pub last_ready_ns: u64,
}

impl ThreadReport {
    pub fn new() -> ThreadReport {
        ThreadReport {
            sent_window: 0,
            received_window: 0,
            sent_total: 0,
            received_total: 0,
            latency: new_histogram(),
            ack_latency: new_histogram(),
            send_lag: new_histogram(),
            connack: new_histogram(),
            errors: [0; ERROR_KINDS.len()],
            distinct: 0,
            duplicates: 0,
            late: 0,
            out_of_order: 0,
            lost: 0,
            foreign: 0,
            behind: 0,
            rejected: 0,
            unacked: 0,
            syscalls: 0,
            last_ready_ns: 0,
        }
    }

    pub fn count_error(&mut self, kind: ErrorKind) {
        if let Some(i) = ERROR_KINDS.iter().position(|(k, _)| *k == kind) {
            self.errors[i] += 1;
        }
    }

    pub fn merge(&mut self, o: &ThreadReport) {
        self.sent_window += o.sent_window;
        self.received_window += o.received_window;
        self.sent_total += o.sent_total;
        self.received_total += o.received_total;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.ack_latency.add(&o.ack_latency);
        let _ = self.send_lag.add(&o.send_lag);
        let _ = self.connack.add(&o.connack);
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.distinct += o.distinct;
        self.duplicates += o.duplicates;
        self.late += o.late;
        self.out_of_order += o.out_of_order;
        self.lost += o.lost;
        self.foreign += o.foreign;
        self.behind += o.behind;
        self.rejected += o.rejected;
        self.unacked += o.unacked;
        self.syscalls += o.syscalls;
        self.last_ready_ns = self.last_ready_ns.max(o.last_ready_ns);
    }
}

impl Default for ThreadReport {
    fn default() -> Self {
        Self::new()
    }
}

/// The final report: ordered (key, value) rows, printed as a table or flat JSON.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(u64),
    Num(f64),
}

impl Report {
    pub fn str(&mut self, k: &str, v: impl Into<String>) {
        self.rows.push((k.into(), Value::Str(v.into())));
    }

    pub fn int(&mut self, k: &str, v: u64) {
        self.rows.push((k.into(), Value::Int(v)));
    }

    pub fn num(&mut self, k: &str, v: f64) {
        self.rows.push((k.into(), Value::Num(v)));
    }

    /// p50/p90/p99/p99.9/max of a histogram under `prefix`.
    pub fn percentiles(&mut self, prefix: &str, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        for (name, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)] {
            self.int(&format!("{prefix}_{name}_us"), h.value_at_percentile(q));
        }
        self.int(&format!("{prefix}_max_us"), h.max());
        self.int(&format!("{prefix}_count"), h.len());
    }

    pub fn json(&self) -> String {
        let mut s = String::from("{\n");
        for (i, (k, v)) in self.rows.iter().enumerate() {
            let val = match v {
                Value::Str(x) => format!("\"{}\"", escape(x)),
                Value::Int(x) => x.to_string(),
                Value::Num(x) if x.is_finite() => format!("{x:.3}"),
                Value::Num(_) => "null".into(),
            };
            let comma = if i + 1 < self.rows.len() { "," } else { "" };
            s += &format!("  \"{}\": {val}{comma}\n", escape(k));
        }
        s + "}"
    }

    pub fn table(&self) -> String {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in &self.rows {
            let val = match v {
                Value::Str(x) => x.clone(),
                Value::Int(x) => group_digits(*x),
                Value::Num(x) => format!("{x:.1}"),
            };
            s += &format!("{k:<width$}  {val}\n");
        }
        s
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// 1234567 -> "1 234 567": readable in a table, unambiguous in any locale.
fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_table_format() {
        let mut r = Report::default();
        r.str("scenario", "pa\"irs");
        r.int("sent", 1234567);
        r.num("rate", 1.5);
        assert_eq!(
            r.json(),
            "{\n  \"scenario\": \"pa\\\"irs\",\n  \"sent\": 1234567,\n  \"rate\": 1.500\n}"
        );
        assert_eq!(
            r.table(),
            "scenario  pa\"irs\nsent      1 234 567\nrate      1.5\n"
        );
    }
}
