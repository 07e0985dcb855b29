//! The operator's settings: log level and format, the `$SYS` interval and the Prometheus
//! endpoint; their TOML keys (`log_level`, `log_format`, `sys_interval_secs`, `metrics`)
//! and flags (`--log-level`, `--log-format`, `--sys-interval`, `--metrics`).
//!
//! Must never: depend on the runtime (the log level and format are the logger's plain
//! enums; `main` hands them over before the broker starts).

use std::net::{SocketAddr, ToSocketAddrs};

use super::ConfigError;
use crate::log::{Format, Level};

/// Seconds between two `$SYS` updates when nothing says otherwise (mosquitto's default).
pub const DEFAULT_SYS_INTERVAL_SECS: u32 = 10;

/// The longest `$SYS` interval accepted: a day (longer would only mean "never").
const MAX_SYS_INTERVAL_SECS: u32 = 86_400;

/// What the operator sees of the broker: logs, `$SYS`, metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsConfig {
    /// Lowest level written (`error`, `warn`, `info`, `debug`).
    pub log_level: Level,
    /// `text` (one human-readable line) or `json` (one object per line, for collectors).
    pub log_format: Format,
    /// Seconds between `$SYS` updates; 0: no `$SYS` topics.
    pub sys_interval_secs: u32,
    /// Where the Prometheus endpoint (`/metrics`) listens; `None`: no endpoint.
    pub metrics: Option<SocketAddr>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            log_level: Level::Info,
            log_format: Format::Text,
            sys_interval_secs: DEFAULT_SYS_INTERVAL_SECS,
            metrics: None,
        }
    }
}

/// The keys as the TOML file gives them (each optional).
#[derive(Debug, Default)]
pub(super) struct OpsFile {
    pub(super) log_level: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) sys_interval_secs: Option<u32>,
    pub(super) metrics: Option<String>,
}

/// One of the settings, for `OpsConfig::set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpsKey {
    LogLevel,
    LogFormat,
    SysInterval,
    Metrics,
}

impl OpsConfig {
    /// Applies the file's keys.
    pub(super) fn apply_file(&mut self, file: OpsFile) -> Result<(), ConfigError> {
        if let Some(v) = file.log_level {
            self.set(OpsKey::LogLevel, "log_level (error, warn, info, debug)", &v)?;
        }
        if let Some(v) = file.log_format {
            self.set(OpsKey::LogFormat, "log_format (text, json)", &v)?;
        }
        if let Some(v) = file.sys_interval_secs {
            self.sys_interval_secs = v;
        }
        if let Some(v) = file.metrics {
            self.set(OpsKey::Metrics, "metrics (HOST:PORT)", &v)?;
        }
        Ok(())
    }

    /// Sets `key` from its text; `what` names the flag or key (and its values) in errors.
    pub(super) fn set(
        &mut self,
        key: OpsKey,
        what: &'static str,
        value: &str,
    ) -> Result<(), ConfigError> {
        let bad = || ConfigError::Value {
            what,
            value: value.to_owned(),
        };
        match key {
            OpsKey::LogLevel => self.log_level = Level::parse(value).ok_or_else(bad)?,
            OpsKey::LogFormat => self.log_format = Format::parse(value).ok_or_else(bad)?,
            OpsKey::SysInterval => self.sys_interval_secs = value.parse().map_err(|_| bad())?,
            OpsKey::Metrics => self.metrics = Some(metrics_addr(value).ok_or_else(bad)?),
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.sys_interval_secs > MAX_SYS_INTERVAL_SECS {
            return Err(ConfigError::Value {
                what: "sys_interval_secs / --sys-interval (0..=86400)",
                value: self.sys_interval_secs.to_string(),
            });
        }
        Ok(())
    }
}

/// `HOST:PORT` (a literal address, or a name such as `localhost` resolved once at start).
fn metrics_addr(value: &str) -> Option<SocketAddr> {
    value
        .parse()
        .ok()
        .or_else(|| value.to_socket_addrs().ok()?.next())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Command, Config, parse_args};

    fn run(line: &str) -> Result<Config, ConfigError> {
        match parse_args(line.split_whitespace().map(str::to_owned))? {
            Command::Run(c) => Ok(*c),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run("").expect("parse");
        assert_eq!(c.ops, OpsConfig::default());
        assert_eq!(c.ops.sys_interval_secs, 10);
        assert_eq!(c.ops.log_level, Level::Info);
        assert_eq!(c.ops.metrics, None);
    }

    #[test]
    fn flags() {
        let c = run("--log-level debug --log-format json --sys-interval 0 --metrics 127.0.0.1:9")
            .expect("parse");
        assert_eq!(c.ops.log_level, Level::Debug);
        assert_eq!(c.ops.log_format, Format::Json);
        assert_eq!(c.ops.sys_interval_secs, 0);
        assert_eq!(c.ops.metrics, Some("127.0.0.1:9".parse().expect("addr")));
        for bad in [
            "--log-level loud",
            "--log-format xml",
            "--sys-interval -1",
            "--sys-interval 86401",
            "--metrics nowhere",
            "--metrics",
        ] {
            let e = run(bad).expect_err(bad).to_string();
            assert!(
                e.contains(bad.split(' ').next().expect("flag")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn toml_keys_and_flags_override_them() {
        let p = Path::new("t.toml");
        let text = "log_level = \"warn\"\nlog_format = \"json\"\nsys_interval_secs = 2\n\
                    metrics = \"127.0.0.1:9100\"\n";
        let c = Config::from_toml(text, p).expect("toml");
        assert_eq!(c.ops.log_level, Level::Warn);
        assert_eq!(c.ops.log_format, Format::Json);
        assert_eq!(c.ops.sys_interval_secs, 2);
        assert_eq!(c.ops.metrics, Some("127.0.0.1:9100".parse().expect("addr")));
        let e = Config::from_toml("log_level = \"loud\"\n", p).expect_err("bad level");
        assert!(e.to_string().contains("log_level"), "{e}");
        assert!(Config::from_toml("log_levl = \"info\"\n", p).is_err());

        let dir = std::env::temp_dir().join(format!("ringmq-ops-{}", std::process::id()));
        std::fs::write(&dir, text).expect("write");
        let line = format!("--config {} --log-level error", dir.display());
        let c = run(&line).expect("parse");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(c.ops.log_level, Level::Error, "the flag wins");
        assert_eq!(c.ops.sys_interval_secs, 2, "the file's other keys stay");
    }
}
