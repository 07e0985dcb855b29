//! Broker configuration: every limit and setting, its default, and loading from TOML and the
//! command line.
//!
//! Owns: the `Config` value handed to the shards at start. Each default is documented on
//! its field and in README "Command line and configuration" (the `[limits]` table). Every
//! field is a TOML key of the same name; unknown keys are an error so that a typo never
//! silently leaves a default in place. Listener URLs and their TLS / PROXY settings live in
//! `listener`.
//!
//! Must never: panic on user input; every error is a `ConfigError` with a message that names
//! the offending argument, key or value.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::auth::passwd::{PASSWD_USAGE, PasswdAction, PasswdArgs, invalid_user_name};
use crate::router::delivery::OverlapMode;
use crate::router::shared::ShareStrategy;
use crate::session::TopicAliasPolicy;

mod listener;
mod mqttsn;
mod ops;

pub use listener::{ListenerConfig, ListenerKind, ListenerUrl, TlsCipherPreference, WsPath};
pub use mqttsn::MqttSnConfig;
pub use ops::{DEFAULT_SYS_INTERVAL_SECS, OpsConfig};

/// Which I/O driver the shards use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring where the kernel (and seccomp) allow it, epoll otherwise.
    #[default]
    Auto,
    /// Always epoll (the `legacy` driver).
    Epoll,
    /// As `Auto`, and on io_uring the shards also receive through their own ring: each
    /// attached plain TCP connection has a multishot receive into a per-shard pool of
    /// provided buffers instead of epoll readiness and `recv` (`shard/uring.rs`). Off by
    /// default: it makes fewer syscalls but, as built, costs more CPU per message (README,
    /// "The I/O is readiness-based").
    Uring,
}

impl DriverKind {
    /// The kind a `--driver` value or `RINGMQ_DRIVER` names.
    fn parse(s: &str) -> Option<DriverKind> {
        match s {
            "auto" | "" => Some(DriverKind::Auto),
            "epoll" => Some(DriverKind::Epoll),
            "uring" => Some(DriverKind::Uring),
            _ => None,
        }
    }
}

/// Protocol and resource limits enforced per client. Plain data shared by the session state
/// machine (sans-IO) and the shard runtime.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted from a client, fixed header included (bytes). Checked against
    /// the declared remaining length before any allocation. Advertised to v5 clients.
    pub max_packet_size: u32,
    /// Seconds a new connection has to deliver its CONNECT.
    pub connect_timeout_secs: u32,
    /// Largest CONNECT packet accepted (bytes); before CONNECT the client is unauthenticated.
    pub max_connect_size: u32,
    /// Bytes the whole broker holds of packets whose last bytes have not arrived (shared
    /// equally by the shards). A connection whose incomplete packet would pass its shard's
    /// share is closed (v5: DISCONNECT 0x97). 0: no limit.
    pub max_partial_input_bytes: usize,
    /// Seconds from a packet's first byte to its last; a connection still short of the rest
    /// is closed (v5: DISCONNECT 0x8D). 0: no limit.
    pub incomplete_packet_timeout_secs: u32,
    /// Outbound QoS 1/2 messages in flight per client (capped further by a v5 client's
    /// Receive Maximum). 128 rather than 32: with one subscriber, QoS 1 throughput is this
    /// window per round trip (measured: 8 -> 1 fan-in QoS 1 went from 0.73M to 1.2M msgs/s;
    /// 256 gained nothing more); the window costs memory only while a subscriber lags.
    pub max_inflight: u16,
    /// Our Receive Maximum: inbound QoS 1/2 publishes a client may have unacknowledged.
    /// Exceeding it is answered with DISCONNECT 0x93 (v5) or a close (3.x).
    pub receive_maximum: u16,
    /// When true, exceeding `receive_maximum` is only logged instead of disconnecting.
    pub receive_maximum_log_only: bool,
    /// Inbound QoS 2 packet ids awaiting PUBREL per client.
    pub max_awaiting_rel: usize,
    /// Messages queued per session while offline or while the inflight window is full.
    pub max_queued_messages: usize,
    /// Payload bytes queued per session.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Most topic levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Longest topic name or filter (bytes).
    pub max_topic_len: usize,
    /// Longest client id (bytes).
    pub max_client_id_len: usize,
    /// Subscriptions per client; more are refused with SUBACK 0x97 (quota exceeded).
    pub max_subscriptions: usize,
    /// Topic filters one SUBSCRIBE may carry; the ones beyond get SUBACK 0x97 (3.x 0x80).
    /// Each filter may scan the retained store, so one packet must not carry unbounded work.
    pub max_subscribe_filters: usize,
    /// User properties per packet.
    pub max_user_properties: usize,
    /// Topic aliases a v5 client may use towards us (our Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Whether (and how) the broker assigns topic aliases to its deliveries to v5 clients
    /// that accept them (CONNECT Topic Alias Maximum > 0): `recent` keeps the most
    /// recently used topics, `hot` the most frequent, `off` assigns none. Off by default:
    /// some clients announce a Topic Alias Maximum but fail on an aliased PUBLISH (e.g.
    /// libmosquitto 2.0.11, see `tests/interop.rs`), and mosquitto, EMQX and HiveMQ do
    /// not alias their deliveries, so clients do not expect it.
    pub outbound_topic_aliases: TopicAliasPolicy,
    /// Most outbound aliases per connection, whatever the client accepts: each costs a
    /// copy of its topic name for the connection's life.
    pub outbound_topic_alias_maximum: u16,
    /// Largest keep alive accepted (seconds). A v5 client asking for more (or 0) is told this
    /// value as Server Keep Alive; a 3.x client asking for more is refused with CONNACK 0x02.
    pub max_keep_alive: u16,
    /// When set, the keep alive of every v5 client, whatever it asked: sent in each v5
    /// CONNACK as Server Keep Alive and enforced (1.5x) [MQTT-3.2.2-21]. 3.x clients
    /// cannot be told a value and keep their own (capped by `max_keep_alive`).
    pub server_keep_alive: Option<u16>,
    /// Returned as Response Information in the CONNACK of a v5 client that sets Request
    /// Response Information to 1 [MQTT-3.1.2-28]: the basis of its response topics.
    pub response_information: Option<String>,
    /// Largest session expiry interval granted to v5 clients (seconds).
    pub max_session_expiry: u32,
    /// Session expiry of a 3.x session that outlives its connection (clean session 0), which
    /// has no expiry of its own (seconds; 4294967295: never). Without one, a client that
    /// never returns would hold its session and queue forever.
    pub session_expiry_3x: u32,
    /// Connections the broker serves at once, all shards together; a CONNECT beyond is
    /// refused (v5 0x97, 3.x 0x03), and connections far beyond are closed at accept. 0: the
    /// process's file-descriptor limit less a reserve.
    pub max_connections: usize,
    /// Sessions (connected or not) the broker keeps, all shards together; a new one beyond is
    /// refused (v5 0x97, 3.x 0x03). 0: no limit.
    pub max_sessions: usize,
    /// Retained messages kept (each shard holds a replica); a new retained topic beyond is
    /// refused (v5 PUBACK/PUBREC 0x97; otherwise delivered without being retained).
    pub max_retained_messages: usize,
    /// Topic and payload bytes of the retained messages (per replica), with the same rule.
    pub max_retained_bytes: usize,
    /// Whether retained messages are accepted (0x9A when not).
    pub retain_available: bool,
    /// Highest QoS accepted from clients.
    pub max_qos: u8,
    /// Whether shared subscriptions are accepted.
    pub shared_subscriptions: bool,
    /// Whether wildcard subscriptions are accepted.
    pub wildcard_subscriptions: bool,
    /// Whether v5 subscription identifiers are accepted.
    pub subscription_identifiers: bool,
    /// A message matching several subscriptions of one client: one PUBLISH per matching
    /// subscription (`per_subscription`, as mosquitto, HiveMQ and EMQX) or one per client at
    /// the highest QoS with every identifier (`single`) [MQTT-3.3.4-2..5].
    pub overlapping_subscriptions: OverlapMode,
    /// How the member of a share group that receives a message is chosen (see
    /// `ShareStrategy`); `round_robin` spreads a group's messages over all its members.
    pub shared_subscription_strategy: ShareStrategy,
    /// Bytes of encoded output buffered per connection before the connection counts as slow:
    /// QoS 0 messages are then dropped (and counted); a connection that stays over the limit
    /// for `slow_consumer_timeout_secs` is disconnected.
    pub max_output_buffer: usize,
    /// Seconds a connection may keep its output over `max_output_buffer`.
    pub slow_consumer_timeout_secs: u32,
    /// Envelopes (publishes and routing updates) one shard may queue for another: its channel
    /// holds this many, and once as many more wait in the sending shard, that shard stops
    /// reading its clients until the other catches up (TCP back-pressure on publishers).
    pub cross_shard_queue: usize,
}

/// Default of `Limits::cross_shard_queue`, envelopes per (source, destination) channel. Large
/// enough to absorb a burst of a whole loop turn of publishes (tens of thousands of messages
/// at full rate) without the sender falling back to its outbox; small enough that a stalled
/// shard holds at most a few MB of envelopes (each is a few words plus an `Arc`). Memory is
/// held only while envelopes are queued (list channel), so the bound costs nothing on an idle
/// broker.
pub const DEFAULT_CROSS_SHARD_QUEUE: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            connect_timeout_secs: 10,
            max_connect_size: 64 * 1024,
            max_partial_input_bytes: 64 * 1024 * 1024,
            incomplete_packet_timeout_secs: 60,
            max_inflight: 128,
            receive_maximum: 32,
            receive_maximum_log_only: false,
            max_awaiting_rel: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_offline: false,
            max_topic_levels: 128,
            max_topic_len: 4096,
            max_client_id_len: 256,
            max_subscriptions: 1000,
            max_subscribe_filters: 256,
            max_user_properties: 64,
            topic_alias_maximum: 10,
            outbound_topic_aliases: TopicAliasPolicy::Off,
            outbound_topic_alias_maximum: 10,
            max_keep_alive: 3600,
            server_keep_alive: None,
            response_information: None,
            max_session_expiry: u32::MAX,
            session_expiry_3x: 7 * 24 * 3600,
            max_connections: 0,
            max_sessions: 0,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 256 * 1024 * 1024,
            retain_available: true,
            max_qos: 2,
            shared_subscriptions: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            overlapping_subscriptions: OverlapMode::PerSubscription,
            shared_subscription_strategy: ShareStrategy::RoundRobin,
            max_output_buffer: 4 * 1024 * 1024,
            slow_consumer_timeout_secs: 30,
            cross_shard_queue: DEFAULT_CROSS_SHARD_QUEUE,
        }
    }
}

/// When an acknowledgement may leave, relative to the storage commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK and the CONNACK of a stored session leave
    /// only after the commit that makes what they announce durable: nothing acknowledged is
    /// lost by a crash or power loss.
    #[default]
    Sync,
    /// Acknowledgements leave at once; the store commits every `commit_interval_ms`. A crash
    /// loses at most that interval of acknowledged messages.
    Relaxed,
    /// Nothing is stored (`--in-memory`): sessions, queues and retained messages end with
    /// the process.
    None,
}

/// Where and how sessions, queued QoS 1/2 messages and retained messages are stored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the store (`ringmq.redb`); created if missing.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// `durability = "relaxed"`: milliseconds between commits.
    pub commit_interval_ms: u64,
    /// Page cache the store may keep in memory, in MiB.
    pub cache_mb: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("ringmq-data"),
            durability: Durability::Sync,
            commit_interval_ms: 10,
            cache_mb: 64,
        }
    }
}

/// Everything the broker needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Every listener the broker binds: the TOML `listen` entries (plain MQTT) first, then the
    /// `[[listeners]]` tables; or the `--listen` arguments, which replace both.
    pub listeners: Vec<ListenerConfig>,
    /// Number of shards (threads); 0 means one per available core.
    pub shards: usize,
    /// I/O driver choice; the `RINGMQ_DRIVER=epoll` environment variable forces epoll.
    pub driver: DriverKind,
    /// Pin each shard thread to a core.
    pub pin_threads: bool,
    /// Per-client limits.
    pub limits: Limits,
    /// Persistence.
    pub storage: StorageConfig,
    /// Authentication and authorization (`[auth]`).
    pub auth: AuthConfig,
    /// The MQTT-SN gateway (`[mqttsn]`).
    pub mqttsn: MqttSnConfig,
    /// Logs, `$SYS` and metrics (top-level keys `log_level`, `log_format`,
    /// `sys_interval_secs`, `metrics`).
    pub ops: OpsConfig,
}

/// The listener when none is configured.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1883);

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::new(ListenerUrl::mqtt(DEFAULT_LISTEN))],
            shards: 0,
            driver: DriverKind::Auto,
            pin_threads: true,
            limits: Limits::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            mqttsn: MqttSnConfig::default(),
            ops: OpsConfig::default(),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("invalid value {value:?} for {what}")]
    Value { what: &'static str, value: String },
    /// A listener's settings or files are unusable (named by its URL).
    #[error("listener {listener}: {problem}")]
    Listener { listener: String, problem: String },
}

/// The TOML file as written: every key optional, so that "not given" (defaults apply) and
/// "given" can be told apart for the two listener keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<Vec<SocketAddr>>,
    listeners: Option<Vec<ListenerConfig>>,
    shards: Option<usize>,
    driver: Option<DriverKind>,
    pin_threads: Option<bool>,
    limits: Option<Limits>,
    storage: Option<StorageConfig>,
    auth: Option<AuthConfig>,
    mqttsn: Option<MqttSnConfig>,
    log_level: Option<String>,
    log_format: Option<String>,
    sys_interval_secs: Option<u32>,
    metrics: Option<String>,
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Box<Config>),
    /// `ringmq passwd ...`: edit a password file and exit.
    Passwd(PasswdArgs),
    /// `ringmq reload --pid PID`: tell a running broker to reload its password and ACL
    /// files (SIGHUP) and exit.
    Reload {
        pid: u32,
    },
    Help,
    Version,
}

/// The `--help` text.
pub const USAGE: &str = "\
ringmq: MQTT broker (3.1, 3.1.1, 5.0)

USAGE:
    ringmq [OPTIONS]
    ringmq passwd [-c] [--stdin] [--no-scram] FILE USER   add or update USER in FILE
    ringmq passwd -D FILE USER                             delete USER from FILE
    ringmq reload --pid PID       reload the password and ACL files of the broker PID
                                  (the same as kill -HUP PID)

OPTIONS:
    --listen URL         listener (repeatable; default 127.0.0.1:1883): HOST:PORT or
                         mqtt://HOST:PORT for MQTT over TCP; mqtts://HOST:PORT,
                         ws://HOST:PORT/PATH and wss://HOST:PORT/PATH need the
                         TLS files of a [[listeners]] table in --config;
                         mqttsn://HOST:PORT runs the MQTT-SN 1.2 gateway on UDP
                         (conventionally port 1884; settings in [mqttsn])
    --shards N           shard threads (default: one per core)
    --data-dir DIR       where sessions and messages are stored (default ./ringmq-data)
    --durability MODE    sync (acknowledge after commit, default), relaxed, or none
    --in-memory          store nothing (same as --durability none)
    --config FILE        TOML configuration file (see README for every key)
    --epoll              force the epoll driver (also RINGMQ_DRIVER=epoll)
    --driver KIND        auto (default), epoll, or uring (io_uring with the shards'
                         receive ring; also RINGMQ_DRIVER=uring)
    --no-pin             do not pin shard threads to cores
    --log-level LEVEL    error, warn, info (default) or debug
    --log-format FORMAT  text (default) or json (one object per line)
    --sys-interval SECS  seconds between $SYS updates (default 10; 0: none)
    --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics
    -h, --help           print this help
    -V, --version        print the version

PASSWD OPTIONS:
    -c                   create FILE (replacing an existing one)
    -D                   delete USER
    --stdin              read the password from the first line of standard input
                         (default: prompt twice on the terminal, without echo)
    --no-scram           write no SCRAM-SHA-256 material, only the argon2id hash
";

impl Config {
    /// Parses a TOML document. `listen = [...]` (plain MQTT) and `[[listeners]]` tables
    /// may both appear; together they replace the default listener.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut config = Config::default();
        let mqttsn = file.mqttsn.unwrap_or_default();
        if file.listen.is_some() || file.listeners.is_some() || mqttsn.enabled {
            let mut listeners = if file.listen.is_some() || file.listeners.is_some() {
                let plain = file.listen.unwrap_or_default().into_iter();
                let plain = plain.map(|a| ListenerConfig::new(ListenerUrl::mqtt(a)));
                let mut tables = file.listeners.unwrap_or_default();
                for table in &mut tables {
                    table.apply_protocol()?;
                }
                plain.chain(tables).collect()
            } else {
                std::mem::take(&mut config.listeners)
            };
            if mqttsn.enabled {
                listeners.push(ListenerConfig::new(ListenerUrl::mqttsn(mqttsn.listen)));
            }
            config.set_listeners(listeners);
        }
        config.shards = file.shards.unwrap_or(config.shards);
        config.driver = file.driver.unwrap_or(config.driver);
        config.pin_threads = file.pin_threads.unwrap_or(config.pin_threads);
        config.limits = file.limits.unwrap_or(config.limits);
        config.storage = file.storage.unwrap_or(config.storage);
        config.auth = file.auth.unwrap_or(config.auth);
        config.mqttsn = mqttsn;
        config.ops.apply_file(ops::OpsFile {
            log_level: file.log_level,
            log_format: file.log_format,
            sys_interval_secs: file.sys_interval_secs,
            metrics: file.metrics,
        })?;
        Ok(config)
    }

    /// Replaces the listeners.
    pub fn set_listeners(&mut self, listeners: Vec<ListenerConfig>) {
        self.listeners = listeners;
    }

    /// The UDP address of the MQTT-SN listener, if there is one (at most one is served:
    /// `validate`); the gateway runs exactly when there is.
    pub fn mqttsn_listener(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.url.kind.is_udp())
            .map(|l| l.url.addr)
    }

    /// A configuration with one plain MQTT listener on `addr` (e.g. port 0 in tests).
    pub fn listen_on(mut self, addr: SocketAddr) -> Config {
        self.listeners = vec![ListenerConfig::new(ListenerUrl::mqtt(addr))];
        self
    }

    /// Applies environment overrides (`RINGMQ_DRIVER=epoll|auto|uring`).
    pub fn apply_env(&mut self, driver: Option<&str>) -> Result<(), ConfigError> {
        let Some(name) = driver else {
            return Ok(());
        };
        match DriverKind::parse(name) {
            Some(kind) => {
                self.driver = kind;
                Ok(())
            }
            None => Err(ConfigError::Value {
                what: "RINGMQ_DRIVER",
                value: name.to_owned(),
            }),
        }
    }

    /// The shard count to run with.
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Parses command-line arguments (without the program name). `--config` is read first so
/// that flags given on the command line override the file whatever their order.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let args: Vec<String> = args.into_iter().collect();
    if args.first().map(String::as_str) == Some("passwd") {
        return parse_passwd_args(&args[1..]).map(Command::Passwd);
    }
    if args.first().map(String::as_str) == Some("reload") {
        return match &args[1..] {
            [flag, pid] if flag == "--pid" => match pid.parse::<u32>() {
                Ok(pid) if pid > 0 => Ok(Command::Reload { pid }),
                _ => Err(ConfigError::Value {
                    what: "reload --pid (a process id)",
                    value: pid.clone(),
                }),
            },
            _ => Err(ConfigError::Usage(
                "usage: ringmq reload --pid PID".to_owned(),
            )),
        };
    }
    let mut listen = Vec::new();
    let mut shards = None;
    let mut config_path = None;
    let mut epoll = false;
    let mut driver = None;
    let mut no_pin = false;
    let mut data_dir = None;
    let mut durability = None;
    let mut ops_flags: Vec<(ops::OpsKey, &'static str, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let mut value = |name: &'static str| -> Result<String, ConfigError> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| ConfigError::Usage(format!("{name} needs a value")))
        };
        match arg {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => {
                let v = value("--listen")?;
                let url: ListenerUrl = v
                    .parse()
                    .map_err(|e| ConfigError::Usage(format!("--listen: {e}")))?;
                listen.push(ListenerConfig::new(url));
            }
            "--shards" => {
                let v = value("--shards")?;
                let n: usize = v.parse().map_err(|_| ConfigError::Value {
                    what: "--shards",
                    value: v.clone(),
                })?;
                if n == 0 || n > 64 {
                    return Err(ConfigError::Value {
                        what: "--shards (1..=64)",
                        value: v,
                    });
                }
                shards = Some(n);
            }
            "--config" => config_path = Some(PathBuf::from(value("--config")?)),
            "--data-dir" => data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--in-memory" => durability = Some(Durability::None),
            "--durability" => {
                let v = value("--durability")?;
                durability = Some(match v.as_str() {
                    "sync" => Durability::Sync,
                    "relaxed" => Durability::Relaxed,
                    "none" => Durability::None,
                    _ => {
                        return Err(ConfigError::Value {
                            what: "--durability (sync, relaxed, none)",
                            value: v,
                        });
                    }
                });
            }
            "--epoll" => epoll = true,
            "--driver" => {
                let v = value("--driver")?;
                driver = Some(DriverKind::parse(&v).ok_or(ConfigError::Value {
                    what: "--driver (auto, epoll, uring)",
                    value: v,
                })?);
            }
            "--no-pin" => no_pin = true,
            "--log-level" => ops_flags.push((
                ops::OpsKey::LogLevel,
                "--log-level (error, warn, info, debug)",
                value("--log-level")?,
            )),
            "--log-format" => ops_flags.push((
                ops::OpsKey::LogFormat,
                "--log-format (text, json)",
                value("--log-format")?,
            )),
            "--sys-interval" => ops_flags.push((
                ops::OpsKey::SysInterval,
                "--sys-interval (seconds, 0: off)",
                value("--sys-interval")?,
            )),
            "--metrics" => ops_flags.push((
                ops::OpsKey::Metrics,
                "--metrics (HOST:PORT)",
                value("--metrics")?,
            )),
            other => {
                return Err(ConfigError::Usage(format!(
                    "unknown argument {other:?}; see ringmq --help"
                )));
            }
        }
        i += 1;
    }
    let mut config = match &config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            Config::from_toml(&text, path)?
        }
        None => Config::default(),
    };
    if !listen.is_empty() {
        // A `--listen URL` for a TLS listener takes its files from the config file's
        // `[[listeners]]` table with the same URL.
        let from_file = std::mem::take(&mut config.listeners);
        let listen = listen.into_iter().map(|l| {
            from_file
                .iter()
                .find(|f| f.url == l.url)
                .cloned()
                .unwrap_or(l)
        });
        config.set_listeners(listen.collect());
    }
    if let Some(n) = shards {
        config.shards = n;
    }
    if let Some(kind) = driver {
        config.driver = kind;
    }
    if epoll {
        config.driver = DriverKind::Epoll;
    }
    if no_pin {
        config.pin_threads = false;
    }
    if let Some(dir) = data_dir {
        config.storage.data_dir = dir;
    }
    if let Some(d) = durability {
        config.storage.durability = d;
    }
    for (key, what, v) in ops_flags {
        config.ops.set(key, what, &v)?;
    }
    config.validate()?;
    Ok(Command::Run(Box::new(config)))
}

/// Arguments after `passwd` (see `auth::passwd`).
fn parse_passwd_args(args: &[String]) -> Result<PasswdArgs, ConfigError> {
    let usage = |what: &str| ConfigError::Usage(format!("{what}; usage: {PASSWD_USAGE}"));
    let (mut create, mut delete, mut from_stdin, mut scram) = (false, false, false, true);
    let mut positional = Vec::new();
    for arg in args {
        match arg.as_str() {
            "-c" => create = true,
            "-D" => delete = true,
            "--stdin" => from_stdin = true,
            "--no-scram" => scram = false,
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(usage(&format!("unknown passwd option {flag:?}")));
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [file, user] =
        <[String; 2]>::try_from(positional).map_err(|_| usage("passwd needs FILE and USER"))?;
    if let Some(why) = invalid_user_name(&user) {
        return Err(usage(why));
    }
    let action = match (delete, create, from_stdin, scram) {
        (true, false, false, true) => PasswdAction::Delete,
        (true, ..) => return Err(usage("-D takes no -c, --stdin or --no-scram")),
        (false, create, from_stdin, scram) => PasswdAction::Set {
            create,
            from_stdin,
            scram,
        },
    };
    Ok(PasswdArgs {
        file: PathBuf::from(file),
        user,
        action,
    })
}

impl Config {
    /// Rejects values the broker cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |what: &'static str, v: &dyn std::fmt::Display| {
            Err(ConfigError::Value {
                what,
                value: v.to_string(),
            })
        };
        listener::validate_listeners(&self.listeners)?;
        if self.shards > 64 {
            return bad("shards (0..=64)", &self.shards);
        }
        if l.max_packet_size < 64 || l.max_packet_size > 268_435_460 {
            return bad(
                "limits.max_packet_size (64..=268435460)",
                &l.max_packet_size,
            );
        }
        if l.receive_maximum == 0 {
            return bad("limits.receive_maximum (1..=65535)", &l.receive_maximum);
        }
        if l.max_inflight == 0 {
            return bad("limits.max_inflight (1..=65535)", &l.max_inflight);
        }
        if l.max_qos > 2 {
            return bad("limits.max_qos (0..=2)", &l.max_qos);
        }
        if l.max_topic_levels == 0 || l.max_topic_len == 0 {
            return bad("limits.max_topic_levels / max_topic_len (> 0)", &0);
        }
        if l.connect_timeout_secs == 0 {
            return bad("limits.connect_timeout_secs (> 0)", &0);
        }
        if l.cross_shard_queue == 0 {
            return bad("limits.cross_shard_queue (> 0)", &0);
        }
        if let Some(k) = l.server_keep_alive
            && l.max_keep_alive != 0
            && (k == 0 || k > l.max_keep_alive)
        {
            return bad("limits.server_keep_alive (1..=max_keep_alive)", &k);
        }
        if let Some(info) = &l.response_information
            && crate::codec::MqttStr::try_from_str(info).is_none()
        {
            return bad("limits.response_information (an MQTT string)", info);
        }
        let s = &self.storage;
        if s.commit_interval_ms == 0 || s.commit_interval_ms > 60_000 {
            return bad(
                "storage.commit_interval_ms (1..=60000)",
                &s.commit_interval_ms,
            );
        }
        if s.cache_mb == 0 {
            return bad("storage.cache_mb (> 0)", &0);
        }
        self.auth
            .validate()
            .map_err(|e| ConfigError::Usage(e.to_string()))?;
        self.ops.validate()?;
        self.mqttsn.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn defaults_listen_on_loopback_1883() {
        let Command::Run(c) = parse_args(args("")).expect("parse") else {
            panic!("not run")
        };
        let urls: Vec<String> = c.listeners.iter().map(|l| l.url.to_string()).collect();
        assert_eq!(urls, ["mqtt://127.0.0.1:1883"]);
        assert_eq!(c.limits.max_packet_size, 1024 * 1024);
        assert_eq!(c.limits.receive_maximum, 32);
    }

    #[test]
    fn repeated_listen_and_shards() {
        let cmd =
            parse_args(args("--listen 127.0.0.1:1 --listen [::1]:2 --shards 4")).expect("parse");
        let Command::Run(c) = cmd else {
            panic!("not run")
        };
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.shards, 4);
        assert_eq!(c.effective_shards(), 4);
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        for bad in [
            "--listen",
            "--listen nope",
            "--shards 0",
            "--shards x",
            "--frobnicate",
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let p = std::path::Path::new("t.toml");
        let c = Config::from_toml("shards = 2\n[limits]\nmax_inflight = 7\n", p).expect("toml");
        assert_eq!(c.shards, 2);
        assert_eq!(c.limits.max_inflight, 7);
        assert_eq!(c.limits.receive_maximum, 32, "unset keys keep defaults");
        assert!(Config::from_toml("[limits]\nmax_inflite = 7\n", p).is_err());
        assert!(Config::from_toml("listen = [\"not an addr\"]\n", p).is_err());
    }

    #[test]
    fn storage_table_and_flags() {
        let p = std::path::Path::new("t.toml");
        let text = "[storage]\ndata_dir = \"/var/lib/ringmq\"\ndurability = \"relaxed\"\n\
                    commit_interval_ms = 5\n";
        let c = Config::from_toml(text, p).expect("toml");
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/ringmq"));
        assert_eq!(c.storage.durability, Durability::Relaxed);
        assert_eq!(c.storage.commit_interval_ms, 5);
        assert_eq!(c.storage.cache_mb, 64, "unset keys keep defaults");
        assert!(Config::from_toml("[storage]\ndurability = \"fast\"\n", p).is_err());
        assert!(Config::from_toml("[storage]\ndata = \"x\"\n", p).is_err());
        let Command::Run(c) = parse_args(args("--data-dir /tmp/x --in-memory")).expect("parse")
        else {
            panic!("not run")
        };
        assert_eq!(c.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.storage.durability, Durability::None);
        let Command::Run(c) = parse_args(args("--durability relaxed")).expect("parse") else {
            panic!("not run")
        };
        assert_eq!(c.storage.durability, Durability::Relaxed);
        assert!(parse_args(args("--durability maybe")).is_err());
        assert_eq!(Config::default().storage.durability, Durability::Sync);
    }

    #[test]
    fn listen_urls_on_the_command_line() {
        let Command::Run(c) =
            parse_args(args("--listen 127.0.0.1:1 --listen ws://127.0.0.1:2/mqtt")).expect("parse")
        else {
            panic!("not run")
        };
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners[0].is_plain_tcp() && !c.listeners[1].is_plain_tcp());
        let e = parse_args(args("--listen mqtts://127.0.0.1:3")).expect_err("no cert");
        assert!(e.to_string().contains("mqtts://127.0.0.1:3"), "{e}");
        let e = parse_args(args("--listen wss://127.0.0.1:3/a?b")).expect_err("bad path");
        assert!(e.to_string().contains("'?'"), "{e}");
        let Command::Run(c) = parse_args(args(
            "--listen 127.0.0.1:1 --listen mqttsn://127.0.0.1:1884",
        ))
        .expect("parse") else {
            panic!("not run")
        };
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.mqttsn_listener(),
            Some("127.0.0.1:1884".parse().expect("addr"))
        );
    }

    #[test]
    fn toml_listeners_join_the_listen_list() {
        let p = std::path::Path::new("t.toml");
        let text = r#"
            listen = ["127.0.0.1:1883"]
            [[listeners]]
            url = "mqtts://0.0.0.0:8883"
            cert = "/etc/ringmq/server.pem"
            key = "/etc/ringmq/server.key"
            client_ca = "/etc/ringmq/ca.pem"
            require_client_cert = true
            use_identity_as_username = true
            [[listeners]]
            url = "ws://0.0.0.0:8080/mqtt"
            proxy_protocol = true
            [[listeners]]
            url = "mqtt://0.0.0.0:1884"
        "#;
        let c = Config::from_toml(text, p).expect("toml");
        c.validate().expect("valid");
        let urls: Vec<String> = c.listeners.iter().map(|l| l.url.to_string()).collect();
        assert_eq!(
            urls,
            [
                "mqtt://127.0.0.1:1883",
                "mqtts://0.0.0.0:8883",
                "ws://0.0.0.0:8080/mqtt",
                "mqtt://0.0.0.0:1884"
            ]
        );
        assert!(c.listeners[1].use_identity_as_username);
        assert!(c.listeners[2].proxy_protocol);

        let only_tls = Config::from_toml(
            "[[listeners]]\nurl = \"mqtts://0.0.0.0:8883\"\ncert = \"c\"\nkey = \"k\"\n",
            p,
        )
        .expect("toml");
        assert_eq!(
            only_tls.listeners.len(),
            1,
            "no default listener beside [[listeners]]"
        );
        assert_eq!(Config::from_toml("", p).expect("empty"), Config::default());

        for bad in [
            "[[listeners]]\nurl = \"http://0.0.0.0:80\"\n",
            "[[listeners]]\nurl = \"mqtt://0.0.0.0:1\"\ncertificate = \"c\"\n",
        ] {
            assert!(Config::from_toml(bad, p).is_err(), "{bad}");
        }
        let plain_with_cert = "[[listeners]]\nurl = \"ws://0.0.0.0:1\"\ncert = \"c\"\n";
        let c = Config::from_toml(plain_with_cert, p).expect("parses");
        let e = c.validate().expect_err("cert on ws://").to_string();
        assert!(
            e.contains("ws://0.0.0.0:1/mqtt") && e.contains("not TLS"),
            "{e}"
        );
    }

    /// `protocol` names the transport of a table whose `url` is a bare `HOST:PORT`.
    #[test]
    fn a_listener_table_may_name_its_protocol() {
        let p = std::path::Path::new("t.toml");
        let text = "[[listeners]]\nprotocol = \"mqttsn\"\nurl = \"127.0.0.1:1884\"\n\
                    [[listeners]]\nprotocol = \"ws\"\nurl = \"127.0.0.1:8080\"\n\
                    [[listeners]]\nprotocol = \"mqtts\"\nurl = \"mqtts://127.0.0.1:8883\"\n\
                    cert = \"c\"\nkey = \"k\"\n";
        let c = Config::from_toml(text, p).expect("parses");
        let urls: Vec<String> = c.listeners.iter().map(|l| l.url.to_string()).collect();
        assert_eq!(
            urls,
            [
                "mqttsn://127.0.0.1:1884",
                "ws://127.0.0.1:8080/mqtt",
                "mqtts://127.0.0.1:8883"
            ]
        );
        for bad in [
            "[[listeners]]\nprotocol = \"mqttsn\"\nurl = \"ws://127.0.0.1:1/x\"\n",
            "[[listeners]]\nprotocol = \"udp\"\nurl = \"127.0.0.1:1\"\n",
        ] {
            assert!(Config::from_toml(bad, p).is_err(), "{bad}");
        }
    }

    /// `tls_cipher_preference`: `compact` (the default) or `client`; anything else is an
    /// error that names the setting.
    #[test]
    fn tls_cipher_preference_is_compact_or_client() {
        let p = std::path::Path::new("t.toml");
        let table = |v: &str| {
            format!("[[listeners]]\nurl = \"mqtts://0.0.0.0:8883\"\ncert = \"c\"\nkey = \"k\"\n{v}")
        };
        for (line, want) in [
            ("", None),
            (
                "tls_cipher_preference = \"compact\"\n",
                Some(TlsCipherPreference::Compact),
            ),
            (
                "tls_cipher_preference = \"client\"\n",
                Some(TlsCipherPreference::Client),
            ),
        ] {
            let c = Config::from_toml(&table(line), p).expect("parses");
            c.validate().expect("valid");
            assert_eq!(c.listeners[0].tls_cipher_preference, want, "{line}");
        }
        let e = Config::from_toml(&table("tls_cipher_preference = \"aes\"\n"), p)
            .expect_err("unknown value")
            .to_string();
        assert!(
            e.contains("tls_cipher_preference") && e.contains("compact or client"),
            "{e}"
        );
        assert_eq!(TlsCipherPreference::default(), TlsCipherPreference::Compact);
    }

    #[test]
    fn validate_rejects_zero_receive_maximum() {
        let mut c = Config::default();
        c.limits.receive_maximum = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn delivery_settings_parse_and_validate() {
        let p = std::path::Path::new("t.toml");
        let c = Config::from_toml(
            "[limits]\noverlapping_subscriptions = \"single\"\n\
             shared_subscription_strategy = \"least_loaded\"\n\
             outbound_topic_aliases = \"hot\"\noutbound_topic_alias_maximum = 4\n\
             server_keep_alive = 30\nresponse_information = \"replies/\"\n",
            p,
        )
        .expect("toml");
        let l = &c.limits;
        assert_eq!(l.overlapping_subscriptions, OverlapMode::Single);
        assert_eq!(l.shared_subscription_strategy, ShareStrategy::LeastLoaded);
        assert_eq!(l.outbound_topic_aliases, TopicAliasPolicy::Hot);
        assert_eq!(l.outbound_topic_alias_maximum, 4);
        assert_eq!(l.server_keep_alive, Some(30));
        assert_eq!(l.response_information.as_deref(), Some("replies/"));
        assert!(c.validate().is_ok());
        let d = Limits::default();
        assert_eq!(
            (
                d.overlapping_subscriptions,
                d.shared_subscription_strategy,
                d.outbound_topic_aliases,
                d.server_keep_alive,
            ),
            (
                OverlapMode::PerSubscription,
                ShareStrategy::RoundRobin,
                TopicAliasPolicy::Off,
                None
            )
        );
        for bad in [
            "[limits]\noverlapping_subscriptions = \"twice\"\n",
            "[limits]\nshared_subscription_strategy = \"roundrobin\"\n",
            "[limits]\noutbound_topic_aliases = \"lru\"\n",
        ] {
            assert!(Config::from_toml(bad, p).is_err(), "{bad}");
        }
        for bad_keep_alive in [0, 3601] {
            let mut c = Config::default();
            c.limits.server_keep_alive = Some(bad_keep_alive);
            assert!(c.validate().is_err(), "server_keep_alive {bad_keep_alive}");
        }
        let mut c = Config::default();
        c.limits.response_information = Some("nul\0".to_owned());
        assert!(c.validate().is_err());
    }

    #[test]
    fn auth_table_parses_and_rejects_unknown_keys() {
        let p = std::path::Path::new("t.toml");
        let c = Config::from_toml(
            "[auth]\npassword_file = \"/etc/ringmq/passwd\"\nacl_file = \"acl\"\n\
             verifier_threads = 1\n",
            p,
        )
        .expect("toml");
        assert_eq!(
            c.auth.password_file,
            Some(PathBuf::from("/etc/ringmq/passwd"))
        );
        assert_eq!(c.auth.acl_file, Some(PathBuf::from("acl")));
        assert_eq!(c.auth.verifier_threads, 1);
        assert!(
            !c.auth.anonymous_allowed(),
            "a password file turns anonymous off"
        );
        assert!(c.validate().is_ok());
        assert!(Config::default().auth.anonymous_allowed());
        assert!(Config::from_toml("[auth]\npasword_file = \"x\"\n", p).is_err());
        let nobody = Config::from_toml("[auth]\nallow_anonymous = false\n", p).expect("toml");
        assert!(nobody.validate().is_err(), "nobody could connect");
        let threads = Config::from_toml("[auth]\nverifier_threads = 0\n", p).expect("toml");
        assert!(threads.validate().is_err());
    }

    #[test]
    fn passwd_subcommand() {
        let set = |create, from_stdin, scram| PasswdAction::Set {
            create,
            from_stdin,
            scram,
        };
        let cases = [
            ("passwd f u", set(false, false, true)),
            ("passwd -c f u", set(true, false, true)),
            ("passwd --stdin -c f u --no-scram", set(true, true, false)),
            ("passwd -D f u", PasswdAction::Delete),
        ];
        for (line, action) in cases {
            let want = PasswdArgs {
                file: PathBuf::from("f"),
                user: "u".to_owned(),
                action,
            };
            assert_eq!(parse_args(args(line)).expect(line), Command::Passwd(want));
        }
        for bad in [
            "passwd",
            "passwd f",
            "passwd f u extra",
            "passwd -x f u",
            "passwd -D -c f u",
            "passwd -D --stdin f u",
            "passwd f a:b",
            "passwd f #u",
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad} accepted");
        }
        // Only as the first argument: the broker's own flags are unchanged.
        assert!(parse_args(args("--shards 2 passwd f u")).is_err());
    }

    #[test]
    fn reload_subcommand() {
        assert_eq!(
            parse_args(args("reload --pid 42")).expect("reload"),
            Command::Reload { pid: 42 }
        );
        for bad in [
            "reload",
            "reload --pid",
            "reload --pid 0",
            "reload --pid x",
            "reload 42",
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn env_forces_epoll() {
        let mut c = Config::default();
        c.apply_env(Some("epoll")).expect("env");
        assert_eq!(c.driver, DriverKind::Epoll);
        c.apply_env(Some("uring")).expect("env");
        assert_eq!(c.driver, DriverKind::Uring);
        assert!(c.apply_env(Some("bogus")).is_err());
    }

    #[test]
    fn driver_flag_names_the_kind() {
        let Command::Run(c) = parse_args(args("--driver uring")).expect("parse") else {
            panic!("not a run");
        };
        assert_eq!(c.driver, DriverKind::Uring);
        // `--epoll` wins over any `--driver`, as it did over the default.
        let Command::Run(c) = parse_args(args("--driver uring --epoll")).expect("parse") else {
            panic!("not a run");
        };
        assert_eq!(c.driver, DriverKind::Epoll);
        assert!(parse_args(args("--driver io_uring")).is_err());
        assert!(parse_args(args("--driver")).is_err());
    }
}
