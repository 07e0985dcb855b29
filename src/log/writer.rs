//! The logger thread: takes lines from the queue, formats them (text or JSON, UTC
//! timestamps) and writes them to stderr, several lines per `write`; once a second it
//! reports what the rate limit suppressed and what a full queue dropped.
//!
//! Must never: panic on a closed stderr, or hold a line back for longer than a second
//! while the queue is quiet.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{Format, Level, Line, Msg};

/// How often suppressed and dropped counts are reported (and the longest the thread sleeps).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Lines taken from the queue per `write` to stderr.
const LINES_PER_WRITE: usize = 256;

/// The thread's body; returns when every sender is gone (never, in the broker).
pub(super) fn run(rx: Receiver<Msg>) {
    let mut buf = String::new();
    let mut dropped_reported = 0;
    let mut next_report = Instant::now() + REPORT_EVERY;
    loop {
        let wait = next_report.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                let mut msg = Some(msg);
                for _ in 0..LINES_PER_WRITE {
                    match msg.take() {
                        Some(Msg::Line(line)) => format_line(&line, super::format(), &mut buf),
                        Some(Msg::Flush(ack)) => {
                            report(&mut buf, &mut dropped_reported);
                            emit(&mut buf);
                            let _ = ack.send(());
                        }
                        None => break,
                    }
                    msg = rx.try_recv().ok();
                }
                emit(&mut buf);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                report(&mut buf, &mut dropped_reported);
                emit(&mut buf);
                return;
            }
        }
        if Instant::now() >= next_report {
            report(&mut buf, &mut dropped_reported);
            emit(&mut buf);
            next_report = Instant::now() + REPORT_EVERY;
        }
    }
}

/// Adds the summary lines: per kind, how many lines the rate limit suppressed since the
/// last report; how many a full queue dropped.
fn report(buf: &mut String, dropped_reported: &mut u64) {
    let at = SystemTime::now();
    for (kind, n) in super::take_suppressed() {
        let text = format!(
            "{n} more line(s) like {kind} suppressed (limit {} per second)",
            super::LINES_PER_KIND_PER_SECOND
        );
        let line = Line {
            at,
            level: Level::Warn,
            shard: None,
            kind: "log",
            text,
        };
        format_line(&line, super::format(), buf);
    }
    let dropped = super::dropped_lines();
    if dropped > *dropped_reported {
        let line = Line {
            at,
            level: Level::Warn,
            shard: None,
            kind: "log",
            text: format!(
                "{} log line(s) dropped: the log queue was full",
                dropped - *dropped_reported
            ),
        };
        format_line(&line, super::format(), buf);
        *dropped_reported = dropped;
    }
}

/// Writes `buf` to stderr (one `write_all`, so lines of one batch stay whole) and clears it.
fn emit(buf: &mut String) {
    if !buf.is_empty() {
        let _ = std::io::stderr().lock().write_all(buf.as_bytes());
        buf.clear();
    }
}

/// The fallback when the logger thread could not be started: the line is written now.
pub(super) fn write_now(line: &Line) {
    let mut buf = String::new();
    format_line(line, super::format(), &mut buf);
    emit(&mut buf);
}

/// Appends `line` in `format` to `out`, newline included.
pub(crate) fn format_line(line: &Line, format: Format, out: &mut String) {
    use std::fmt::Write as _;
    let now = line.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let (hh, mm, ss, ms) = (sod / 3600, sod / 60 % 60, sod % 60, now.subsec_millis());
    let level = line.level.name();
    let _ = match format {
        Format::Text => {
            let _ = write!(
                out,
                "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z {level:<5} "
            );
            match line.shard {
                Some(s) => writeln!(out, "shard {s}: {}", line.text),
                None => writeln!(out, "{}", line.text),
            }
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"ts\":\"{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z\",\
                 \"level\":\"{}\",",
                level.to_ascii_lowercase()
            );
            if let Some(s) = line.shard {
                let _ = write!(out, "\"shard\":{s},");
            }
            out.push_str("\"site\":");
            json_string(line.kind, out);
            out.push_str(",\"msg\":");
            json_string(&line.text, out);
            writeln!(out, "}}")
        }
    };
}

/// Appends `s` as a JSON string (RFC 8259: quote, backslash and control characters escaped).
fn json_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    fn line(shard: Option<u16>, text: &str) -> Line {
        Line {
            at: UNIX_EPOCH + Duration::from_millis(1_704_067_200_123),
            level: Level::Warn,
            shard,
            kind: "src/x.rs:7",
            text: text.to_owned(),
        }
    }

    #[test]
    fn text_lines() {
        let mut out = String::new();
        format_line(&line(Some(3), "hello"), Format::Text, &mut out);
        format_line(&line(None, "bye"), Format::Text, &mut out);
        assert_eq!(
            out,
            "2024-01-01T00:00:00.123Z WARN  shard 3: hello\n2024-01-01T00:00:00.123Z WARN  bye\n"
        );
    }

    #[test]
    fn json_lines_escape_what_json_requires() {
        let mut out = String::new();
        format_line(&line(Some(0), "a \"b\"\\\n\u{1}é"), Format::Json, &mut out);
        assert_eq!(
            out,
            "{\"ts\":\"2024-01-01T00:00:00.123Z\",\"level\":\"warn\",\"shard\":0,\
             \"site\":\"src/x.rs:7\",\"msg\":\"a \\\"b\\\"\\\\\\n\\u0001é\"}\n"
        );
        out.clear();
        format_line(&line(None, "x"), Format::Json, &mut out);
        assert!(!out.contains("shard"), "{out}");
    }
}
