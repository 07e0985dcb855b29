//! Logging that never blocks a shard: `log!` formats the message on the calling thread and
//! hands the line to one logger thread through a bounded queue; the logger thread stamps,
//! formats (text or JSON) and writes it to stderr.
//!
//! Owns: the level filter (`--log-level`), the line format (`--log-format`), the per-kind
//! rate limit (`Limiter`: each `log!` call site is one kind, and a caller may name a shared
//! kind with `log_with!`), the queue to the logger thread and the counts of what was
//! suppressed or dropped. Lines about a connection name the client id (once known) and the
//! peer address, so an operator can grep one client's story.
//!
//! A line is admitted when its level is enabled and its kind has written fewer than
//! `LINES_PER_KIND_PER_SECOND` lines in the current second; past that it is counted and the
//! logger thread writes one line per kind and second saying how many it suppressed. When the
//! queue is full (the logger thread cannot write as fast as lines come), the line is dropped
//! and counted, and the count is reported the same way.
//!
//! Must never: block or wait on the calling thread (apart from `flush`, which only the
//! process's exit and the panic hook call), take a lock per line, or panic when stderr is
//! closed.

mod writer;

use std::fmt::Arguments;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};

/// Lines one kind (a call site, or a `log_with!` limiter) may write per second. Enough to
/// follow a handful of clients' stories line by line; a flood of bad clients (15,000
/// refused CONNECTs a second were measured before this limit) costs at most this many lines
/// per kind and second, plus one summary line.
pub const LINES_PER_KIND_PER_SECOND: u32 = 20;

/// Lines the queue to the logger thread holds. At ~150 bytes a line this is under 1 MiB,
/// and it absorbs a burst of every kind at its limit for several seconds while stderr is
/// slow (a pipe to a busy collector).
const QUEUE_LINES: usize = 8192;

/// How long `flush` waits for the logger thread (the exit and the panic hook must not hang
/// on a stderr that no one reads).
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// How serious a line is; `--log-level` keeps this level and the ones above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    Error = 0,
    Warn = 1,
    #[default]
    Info = 2,
    Debug = 3,
}

impl Level {
    /// The names `log!` call sites use (`log!(WARN, ...)`).
    pub const ERROR: Level = Level::Error;
    pub const WARN: Level = Level::Warn;
    pub const INFO: Level = Level::Info;
    pub const DEBUG: Level = Level::Debug;

    /// The name in text lines (padded by the writer) and, lower-cased, in JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    /// Parses `error`, `warn`, `info` or `debug` (as `--log-level` and the TOML key take
    /// them).
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// `2026-01-02T03:04:05.678Z INFO  shard 3: message`
    #[default]
    Text,
    /// One JSON object per line: `{"ts":...,"level":"info","shard":3,"site":...,"msg":...}`.
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT_JSON: AtomicBool = AtomicBool::new(false);
/// Lines dropped because the queue was full (reported by the logger thread, and exported).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines suppressed by the rate limit, all kinds (exported; per kind in each `Limiter`).
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
/// The limiters that suppressed something at least once: the logger thread reports their
/// counts. Pushed to once per limiter for the life of the process.
static SUPPRESSING: Mutex<Vec<&'static Limiter>> = Mutex::new(Vec::new());

/// Sets the lowest level written (lines below it cost one relaxed load).
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn level() -> Level {
    Level::from_u8(MAX_LEVEL.load(Ordering::Relaxed))
}

pub fn set_format(format: Format) {
    FORMAT_JSON.store(format == Format::Json, Ordering::Relaxed);
}

pub fn format() -> Format {
    if FORMAT_JSON.load(Ordering::Relaxed) {
        Format::Json
    } else {
        Format::Text
    }
}

/// Whether lines of `level` are written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Lines dropped so far because the logger thread's queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Lines suppressed so far by the per-kind rate limit.
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// The rate limit of one kind of line: at most `LINES_PER_KIND_PER_SECOND` per wall-clock
/// second, shared by every thread. Lives in a `static` (one per `log!` call site, or one a
/// caller names for a class of lines).
#[derive(Debug)]
pub struct Limiter {
    /// What the summary line names: the call site, or the class.
    kind: &'static str,
    /// The second the count is for.
    second: AtomicU64,
    count: AtomicU32,
    /// Suppressed and not reported yet.
    suppressed: AtomicU64,
    registered: AtomicBool,
}

impl Limiter {
    pub const fn new(kind: &'static str) -> Limiter {
        Limiter {
            kind,
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Whether one more line of this kind may be written in wall-clock second `now_s`.
    /// Two threads crossing into a new second at once may both reset the count: a few
    /// lines more, never fewer.
    fn admit(&'static self, now_s: u64) -> bool {
        let second = self.second.load(Ordering::Relaxed);
        if second != now_s
            && self
                .second
                .compare_exchange(second, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < LINES_PER_KIND_PER_SECOND {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        if !self.registered.swap(true, Ordering::Relaxed) {
            SUPPRESSING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self);
        }
        false
    }

    /// Takes the count suppressed since the last call.
    fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

/// One admitted line on its way to the logger thread.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) at: SystemTime,
    pub(crate) level: Level,
    pub(crate) shard: Option<u16>,
    pub(crate) kind: &'static str,
    pub(crate) text: String,
}

/// What the logger thread takes from its queue.
#[derive(Debug)]
pub(crate) enum Msg {
    Line(Line),
    /// Write everything queued before this, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The queue to the logger thread, started at the first line. `None`: the thread could not
/// be started; lines are then written by the caller (the only blocking fallback).
fn queue() -> Option<&'static Sender<Msg>> {
    static QUEUE: OnceLock<Option<Sender<Msg>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
            std::thread::Builder::new()
                .name("ringmq-log".to_owned())
                .spawn(move || writer::run(rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Writes one line of `level` for `shard` if `limit` admits it. What `log!` calls.
pub fn write(limit: &'static Limiter, level: Level, shard: Option<u16>, args: Arguments<'_>) {
    let at = SystemTime::now();
    let now_s = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if !limit.admit(now_s) {
        return;
    }
    let line = Line {
        at,
        level,
        shard,
        kind: limit.kind,
        text: std::fmt::format(args),
    };
    match queue() {
        Some(tx) => match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        },
        None => writer::write_now(&line),
    }
}

/// `write` for a level known only at run time: nothing when `level` is not enabled.
pub fn write_at(limit: &'static Limiter, level: Level, shard: Option<u16>, args: Arguments<'_>) {
    if enabled(level) {
        write(limit, level, shard, args);
    }
}

/// Writes one line at once on the calling thread, past the queue and the rate limit: for
/// the panic hook, whose line must not be lost to a full queue.
pub fn write_direct(level: Level, shard: Option<u16>, args: Arguments<'_>) {
    writer::write_now(&Line {
        at: SystemTime::now(),
        level,
        shard,
        kind: "direct",
        text: std::fmt::format(args),
    });
}

/// Waits (at most `FLUSH_WAIT`) until every line queued before this call is written. For the
/// end of the process and the panic hook; never called on a shard's normal path.
pub fn flush() {
    let Some(tx) = queue() else {
        return;
    };
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
    if tx.send_timeout(Msg::Flush(ack_tx), FLUSH_WAIT).is_ok() {
        let _ = ack_rx.recv_timeout(FLUSH_WAIT);
    }
}

/// The limiters with suppressed lines to report, and their counts (taken).
pub(crate) fn take_suppressed() -> Vec<(&'static str, u64)> {
    let limiters = SUPPRESSING.lock().unwrap_or_else(|e| e.into_inner());
    limiters
        .iter()
        .map(|l| (l.kind, l.take_suppressed()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// `log!(INFO, shard, "...", args)`; `shard` is an `Option<u16>`. Each call site is one
/// kind for the rate limit.
#[macro_export]
macro_rules! log {
    ($level:ident, $shard:expr, $($arg:tt)*) => {{
        let level = $crate::log::Level::$level;
        if $crate::log::enabled(level) {
            static LIMIT: $crate::log::Limiter =
                $crate::log::Limiter::new(concat!(file!(), ":", line!()));
            $crate::log::write(&LIMIT, level, $shard, format_args!($($arg)*));
        }
    }};
}

/// `log_with!(&LIMITER, INFO, shard, "...", args)`: as `log!`, rate-limited as the kind
/// `LIMITER` (a `&'static Limiter`) names, e.g. one kind per close reason.
#[macro_export]
macro_rules! log_with {
    ($limit:expr, $level:ident, $shard:expr, $($arg:tt)*) => {{
        let level = $crate::log::Level::$level;
        if $crate::log::enabled(level) {
            $crate::log::write($limit, level, $shard, format_args!($($arg)*));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_cut_at_its_limit_and_counted() {
        static L: Limiter = Limiter::new("test:1");
        let admitted = (0..100).filter(|_| L.admit(1_000)).count();
        assert_eq!(admitted, LINES_PER_KIND_PER_SECOND as usize);
        assert_eq!(
            L.take_suppressed(),
            100 - u64::from(LINES_PER_KIND_PER_SECOND)
        );
        assert_eq!(L.take_suppressed(), 0, "taken once");
        assert!(L.admit(1_001), "a new second admits again");
        let reported = SUPPRESSING
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.kind == "test:1");
        assert!(reported, "registered for the summary line");
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("WARN"), None);
        assert!(Level::Error < Level::Debug);
        assert_eq!(Format::parse("json"), Some(Format::Json));
        assert_eq!(Format::parse("xml"), None);
    }
}
