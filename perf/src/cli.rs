//! Command line: scenario, knobs and their defaults. Parsing is strict: an unknown flag, a flag
//! that does not apply to the scenario or a bad value is an error with a clear message.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::payload::HEADER_LEN;
use crate::wire::Protocol;

pub const USAGE: &str = "\
ringmq-bench: MQTT load generator (closed and open loop, QoS 0/1/2, MQTT 3.1.1 and 5.0)

USAGE:
  ringmq-bench <SCENARIO> [OPTIONS]

SCENARIOS:
  pairs          N publishers, each to its own topic, each with its own subscriber
  fan-in         N publishers -> M subscribers on a wildcard (default 8 -> 1)
  fan-out        N publishers -> M subscribers on a wildcard (default 1 -> 8)
  shared         N publishers -> a $share group of M subscribers (default 8 -> 4)
  idle           hold --connections N idle connections; with --pid, broker RSS per connection
  connect-rate   open --connections N connections; connects/s and CONNACK latency
  mqttsn         MQTT-SN publishers over UDP -> an MQTT subscriber (own options:
                 ringmq-bench mqttsn --help)
  subscriptions  --connections N clients subscribe to --filters K filters each; with --pid,
                 broker RSS per subscription, then broker CPU per publish at that size

TARGET AND CONNECTIONS:
  --host IP            broker address (IPv4 or localhost) [127.0.0.1]
  --port N             broker port [1883]
  --protocol 3|5       MQTT 3.1.1 or 5.0 (also 3.1.1, 5.0) [3.1.1]
  --client-prefix S    client id prefix; ids are PREFIX-PID-<role><n> [bench]
  --threads N          event-loop threads [number of cores]
  --source-ips N       bind connections to 127.0.0.1..N round-robin (loopback targets only);
                       0 = automatic: one per 20,000 connections [0]
  --concurrency N      handshakes in flight at once, all threads together; keep it below
                       the broker's listen backlog or SYNs are dropped and retried after 1 s
                       (reported as listen_overflows) [32]
  --pid PID            broker pid: report its CPU use (and RSS for idle)
  --tls                MQTT over TLS (rustls); needs --cafile
  --cafile FILE        PEM CA certificate(s) the broker's certificate must chain to
  --server-name NAME   name the broker's certificate must carry [localhost]
  --ws                 MQTT over WebSocket (with --tls: over TLS), path --ws-path
  --ws-path PATH       WebSocket upgrade path [/mqtt]
  --probe-port N       during the run, a plain MQTT client on this port of --host sends
                       PINGREQ every 5 ms; its PINGRESP latency is reported (probe_*)
  --username U         CONNECT with this user name (every connection)
  --password P         and this password (with --username) [empty]

MESSAGING SCENARIOS:
  --pairs N            pairs (pairs) [4]
  --publishers N       publishers (fan-in, fan-out, shared)
  --subscribers M      subscribers (fan-in, fan-out, shared)
  --topics K           publisher i publishes to topic i mod K (fan-in, fan-out, shared)
                       [one per publisher]
  --qos 0|1|2          QoS of publishes and subscriptions [0]
  --payload BYTES      payload size, at least 24 (the header) [64]
  --duration T         measured time [3s]
  --warmup T           load before measuring, not counted [1s]
  --drain T            longest wait for outstanding messages after the run [5s]
  --window W           closed loop: undelivered messages per publisher
                       [256 for QoS 0, 64 for QoS 1/2]
  --rate R             open loop instead: R publishes/s in total, at fixed times; latency is
                       measured from the scheduled time (no coordinated omission)
  --persistent         subscribers keep their session: 3.1.1 clean session 0, 5.0 clean
                       start 0 with a session expiry of 300 s (a persistent broker stores
                       their QoS 1/2 messages before acknowledging the publishers)

IDLE, CONNECT-RATE AND SUBSCRIPTIONS:
  --connections N      connections [1000]
  --hold T             idle: hold time after all are connected; RSS read at the end [10s]
                       subscriptions: settle time before each RSS reading [10s]

SUBSCRIPTIONS:
  --filters K          filters per connection: client c subscribes to
                       rmqb/<tag>/site<c/100>/dev<c>/sensor<k>/+ for k < K [100]
  --exact              the same filters without the trailing /+ (no wildcard)
  --duration T         then one publisher sends QoS 0 publishes to random subscribed topics
                       (each matches one subscription) for T; 0 skips it [3s]
  --rate R             publishes/s of that publisher [as fast as the broker reads]
  --payload BYTES      payload size of those publishes [64]

OUTPUT:
  --json               print the final report as JSON on stdout (progress stays on stderr)
  --quiet              no progress lines
  -h, --help           this text

Durations: 500ms, 3s, 1m, or plain seconds. Exit status: 0 ok, 1 setup or usage error,
3 a QoS guarantee was broken (QoS 1/2 loss, QoS 2 duplicates).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Pairs,
    FanIn,
    FanOut,
    Shared,
    Idle,
    ConnectRate,
    Subscriptions,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pairs => "pairs",
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Shared => "shared",
            Scenario::Idle => "idle",
            Scenario::ConnectRate => "connect-rate",
            Scenario::Subscriptions => "subscriptions",
        }
    }

    pub fn is_messaging(self) -> bool {
        !matches!(
            self,
            Scenario::Idle | Scenario::ConnectRate | Scenario::Subscriptions
        )
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub scenario: Scenario,
    pub host: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub client_prefix: String,
    pub threads: usize,
    pub source_ips: usize,
    pub concurrency: usize,
    pub pid: Option<u32>,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub qos: u8,
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain: Duration,
    pub window: usize,
    pub rate: Option<f64>,
    pub connections: usize,
    pub hold: Duration,
    pub json: bool,
    pub quiet: bool,
    /// Subscribers connect with a persistent session.
    pub persistent: bool,
    /// MQTT over TLS, verified against `cafile` for `server_name`.
    pub tls: bool,
    pub cafile: Option<String>,
    pub server_name: String,
    /// MQTT over WebSocket on `ws_path`.
    pub ws: bool,
    pub ws_path: String,
    /// A plain MQTT port to measure PINGRESP latency on during the run.
    pub probe_port: Option<u16>,
    /// Every CONNECT carries this user name and `password`.
    pub username: Option<String>,
    pub password: String,
    /// Subscriptions: filters per connection.
    pub filters: usize,
    /// Subscriptions: filters without a wildcard.
    pub exact: bool,
}

impl Config {
    /// Total connections this run opens.
    pub fn total_connections(&self) -> usize {
        if self.scenario.is_messaging() {
            self.publishers + self.subscribers
        } else {
            self.connections
        }
    }

    /// The transport under MQTT, as reports name it.
    pub fn transport_name(&self) -> &'static str {
        match (self.tls, self.ws) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }

    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5.0",
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration '{s}' (use e.g. 500ms, 3s, 1m)");
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: invalid number '{v}'"))
}

/// Flags that only some scenarios accept.
fn check_applies(flag: &str, scenario: Scenario) -> Result<(), String> {
    use Scenario::*;
    let ok = match flag {
        "--pairs" => scenario == Pairs,
        "--publishers" | "--subscribers" | "--topics" => {
            matches!(scenario, FanIn | FanOut | Shared)
        }
        "--qos" | "--warmup" | "--drain" | "--window" | "--persistent" => scenario.is_messaging(),
        "--payload" | "--duration" | "--rate" => {
            scenario.is_messaging() || scenario == Subscriptions
        }
        "--connections" => !scenario.is_messaging(),
        "--hold" => matches!(scenario, Idle | Subscriptions),
        "--filters" | "--exact" => scenario == Subscriptions,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{flag} does not apply to scenario '{}'",
            scenario.name()
        ))
    }
}

/// Parses `args` (without the program name). `Ok(None)` means help was requested.
pub fn parse(args: &[String]) -> Result<Option<Config>, String> {
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(None);
    }
    let scenario = match args[0].as_str() {
        "pairs" => Scenario::Pairs,
        "fan-in" => Scenario::FanIn,
        "fan-out" => Scenario::FanOut,
        "shared" => Scenario::Shared,
        "idle" => Scenario::Idle,
        "connect-rate" => Scenario::ConnectRate,
        "subscriptions" => Scenario::Subscriptions,
        other => return Err(format!("unknown scenario '{other}' (see --help)")),
    };
    let (publishers, subscribers) = match scenario {
        Scenario::FanIn => (8, 1),
        Scenario::FanOut => (1, 8),
        Scenario::Shared => (8, 4),
        _ => (4, 4),
    };
    let mut c = Config {
        scenario,
        host: Ipv4Addr::LOCALHOST,
        port: 1883,
        protocol: Protocol::V311,
        client_prefix: "bench".into(),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        source_ips: 0,
        concurrency: 32,
        pid: None,
        publishers,
        subscribers,
        topics: 0,
        qos: 0,
        payload: 64,
        duration: Duration::from_secs(3),
        warmup: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        window: 0,
        rate: None,
        connections: 1000,
        hold: Duration::from_secs(10),
        json: false,
        quiet: false,
        persistent: false,
        tls: false,
        cafile: None,
        server_name: "localhost".into(),
        ws: false,
        ws_path: "/mqtt".into(),
        probe_port: None,
        username: None,
        password: String::new(),
        filters: 100,
        exact: false,
    };
    let mut i = 1;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (args[i].clone(), None),
        };
        i += 1;
        check_applies(&flag, scenario)?;
        if matches!(
            flag.as_str(),
            "--json" | "--quiet" | "--persistent" | "--tls" | "--ws" | "--exact"
        ) {
            match flag.as_str() {
                "--json" => c.json = true,
                "--quiet" => c.quiet = true,
                "--tls" => c.tls = true,
                "--ws" => c.ws = true,
                "--exact" => c.exact = true,
                _ => c.persistent = true,
            }
            continue;
        }
        let v = match inline {
            Some(v) => v,
            None => {
                let v = args.get(i).ok_or_else(|| format!("{flag} needs a value"))?;
                i += 1;
                v.clone()
            }
        };
        apply(&mut c, &flag, &v)?;
    }
    validate(&mut c)?;
    Ok(Some(c))
}

fn apply(c: &mut Config, flag: &str, v: &str) -> Result<(), String> {
    match flag {
        "--host" => {
            c.host = if v == "localhost" {
                Ipv4Addr::LOCALHOST
            } else {
                v.parse()
                    .map_err(|_| format!("--host: '{v}' is not an IPv4 address"))?
            }
        }
        "--port" => c.port = num(flag, v)?,
        "--protocol" => {
            c.protocol = match v {
                "3" | "4" | "3.1.1" | "311" => Protocol::V311,
                "5" | "5.0" => Protocol::V5,
                _ => return Err(format!("--protocol: '{v}' (use 3.1.1 or 5)")),
            }
        }
        "--client-prefix" => c.client_prefix = v.to_string(),
        "--threads" => c.threads = num(flag, v)?,
        "--source-ips" => c.source_ips = num(flag, v)?,
        "--concurrency" => c.concurrency = num(flag, v)?,
        "--pid" => c.pid = Some(num(flag, v)?),
        "--username" => c.username = Some(v.to_string()),
        "--password" => c.password = v.to_string(),
        "--pairs" => {
            c.publishers = num(flag, v)?;
            c.subscribers = c.publishers;
        }
        "--publishers" => c.publishers = num(flag, v)?,
        "--subscribers" => c.subscribers = num(flag, v)?,
        "--topics" => c.topics = num(flag, v)?,
        "--qos" => c.qos = num(flag, v)?,
        "--payload" => c.payload = num(flag, v)?,
        "--duration" => c.duration = parse_duration(v)?,
        "--warmup" => c.warmup = parse_duration(v)?,
        "--drain" => c.drain = parse_duration(v)?,
        "--window" => c.window = num(flag, v)?,
        "--rate" => c.rate = Some(num(flag, v)?),
        "--connections" => c.connections = num(flag, v)?,
        "--hold" => c.hold = parse_duration(v)?,
        "--cafile" => c.cafile = Some(v.to_string()),
        "--server-name" => c.server_name = v.to_string(),
        "--ws-path" => {
            if !v.starts_with('/') || v.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(format!("--ws-path: '{v}' (a path like /mqtt)"));
            }
            c.ws_path = v.to_string()
        }
        "--probe-port" => c.probe_port = Some(num(flag, v)?),
        "--filters" => c.filters = num(flag, v)?,
        _ => return Err(format!("unknown option '{flag}' (see --help)")),
    }
    Ok(())
}

fn validate(c: &mut Config) -> Result<(), String> {
    if c.threads == 0 || c.threads > 256 {
        return Err("--threads must be 1..256".into());
    }
    if c.qos > 2 {
        return Err("--qos must be 0, 1 or 2".into());
    }
    if c.payload < HEADER_LEN || c.payload > 16 << 20 {
        return Err(format!(
            "--payload must be {HEADER_LEN}..16777216 bytes (the header needs {HEADER_LEN})"
        ));
    }
    if c.scenario.is_messaging() && (c.publishers == 0 || c.subscribers == 0) {
        return Err("publishers and subscribers must be at least 1".into());
    }
    if c.client_prefix.is_empty() || c.client_prefix.len() > 64 {
        return Err("--client-prefix must be 1..64 bytes".into());
    }
    if c.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if c.username.is_none() && !c.password.is_empty() {
        return Err("--password needs --username".into());
    }
    if c.duration.is_zero() && c.scenario != Scenario::Subscriptions {
        return Err("--duration must be positive".into());
    }
    if c.scenario == Scenario::Subscriptions && (c.filters == 0 || c.filters > 100_000) {
        return Err("--filters must be 1..100000".into());
    }
    if let Some(r) = c.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if c.tls != c.cafile.is_some() {
        return Err("--tls and --cafile go together".into());
    }
    if c.topics == 0 {
        c.topics = c.publishers;
    }
    if c.window == 0 {
        c.window = if c.qos == 0 { 256 } else { 64 };
    }
    if c.source_ips == 0 {
        c.source_ips = c.total_connections().div_ceil(20_000).max(1);
    }
    if c.source_ips > 1 && !c.host.is_loopback() {
        return Err("--source-ips > 1 needs a loopback (127.0.0.0/8) target".into());
    }
    if c.source_ips > 254 {
        return Err("--source-ips must be at most 254".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Config>, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_follow_the_bar() {
        let c = p("pairs").unwrap().unwrap();
        assert_eq!(
            (c.publishers, c.subscribers, c.qos, c.payload, c.window),
            (4, 4, 0, 64, 256)
        );
        assert_eq!(c.protocol, Protocol::V311);
        assert_eq!(c.duration, Duration::from_secs(3));
        let c = p("fan-in --qos 1 --protocol 5 --duration=500ms")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.publishers, c.subscribers, c.window, c.topics),
            (8, 1, 64, 8)
        );
        assert_eq!(
            (c.protocol, c.duration),
            (Protocol::V5, Duration::from_millis(500))
        );
        let c = p("idle --connections 30000").unwrap().unwrap();
        assert_eq!(c.source_ips, 2);
        let c = p("subscriptions --connections 10000 --filters 100 --exact --duration 0")
            .unwrap()
            .unwrap();
        assert_eq!((c.connections, c.filters, c.exact), (10_000, 100, true));
        assert!(c.duration.is_zero());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(p("pairs --qos 3").is_err());
        assert!(p("pairs --payload 10").is_err());
        assert!(p("pairs --publishers 2").is_err());
        assert!(p("idle --qos 1").is_err());
        assert!(p("pairs --filters 3").is_err());
        assert!(p("subscriptions --filters 0").is_err());
        assert!(p("nope").is_err());
        assert!(p("pairs --bogus 1").is_err());
        assert!(p("pairs --duration").is_err());
        assert!(p("pairs --duration 3x").is_err());
        assert!(p("pairs --rate -5").is_err());
        assert!(p("pairs --help").unwrap().is_none());
        assert!(p("pairs --tls").is_err(), "--tls without --cafile");
        assert!(
            p("pairs --cafile ca.pem").is_err(),
            "--cafile without --tls"
        );
        let c = p("idle --tls --cafile ca.pem --ws").unwrap().unwrap();
        assert_eq!((c.transport_name(), c.ws_path.as_str()), ("wss", "/mqtt"));
    }
}
