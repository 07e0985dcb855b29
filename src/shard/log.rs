//! A tiny stderr logger: one line per event, UTC timestamp, level, shard.
//!
//! Owns: the log line format. Lines about a connection name the client id (once known) and
//! the peer address, so an operator can grep one client's story.
//!
//! Must never: allocate per call beyond the formatted line, or panic when stderr is closed.

use std::fmt::Arguments;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one log line to stderr: `2026-01-02T03:04:05.678Z INFO  shard 3: ...`.
pub fn write(level: &str, shard: Option<u16>, args: Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let line = match shard {
        Some(s) => format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z {level:<5} shard {s}: {args}\n",
            sod / 3600,
            sod / 60 % 60,
            sod % 60,
            now.subsec_millis()
        ),
        None => format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z {level:<5} {args}\n",
            sod / 3600,
            sod / 60 % 60,
            sod % 60,
            now.subsec_millis()
        ),
    };
    // One write per line keeps lines from different shards whole.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

/// `log!(INFO, shard, "...", args)`; `shard` is an `Option<u16>`.
#[macro_export]
macro_rules! log {
    ($level:ident, $shard:expr, $($arg:tt)*) => {
        $crate::shard::log::write(stringify!($level), $shard, format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
