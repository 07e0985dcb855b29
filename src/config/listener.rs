//! Listener settings: where a listener binds, which transport it speaks (MQTT over TCP, TLS,
//! WebSocket, WebSocket over TLS, or MQTT-SN over UDP), the paths of its TLS files and whether
//! a PROXY protocol header precedes each connection.
//!
//! Owns: the `--listen URL` syntax (`mqtt://`, `mqtts://`, `ws://`, `wss://`, `mqttsn://`, or
//! a bare `HOST:PORT` for plain MQTT), the `[[listeners]]` TOML table, and the checks that
//! need no file access (a TLS listener names its certificate and key, a plain one names no TLS
//! setting, a WebSocket path is well formed, no address is used twice by one protocol, at most
//! one MQTT-SN listener).
//!
//! Must never: read a file or depend on the runtime. Loading and checking the certificate
//! files is `transport::ListenerRuntime::load`'s job; this module stores only paths, so that
//! `Config` stays `Clone + Debug + PartialEq`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::ConfigError;

/// The transport a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// MQTT over TCP (`mqtt://`, or a bare `HOST:PORT`).
    Mqtt,
    /// MQTT over TLS over TCP (`mqtts://`).
    Mqtts,
    /// MQTT over WebSocket (`ws://`).
    Ws,
    /// MQTT over WebSocket over TLS (`wss://`).
    Wss,
    /// MQTT-SN 1.2 over UDP (`mqttsn://`), served by the gateway built into the shards
    /// (`crate::mqttsn`, settings in `[mqttsn]`).
    MqttSn,
}

impl ListenerKind {
    /// The URL scheme of this kind.
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::MqttSn => "mqttsn",
        }
    }

    /// The kind a URL scheme names (`mqtt`, `mqtts`, `ws`, `wss`, `mqttsn`).
    pub fn from_scheme(scheme: &str) -> Option<ListenerKind> {
        match scheme {
            "mqtt" => Some(ListenerKind::Mqtt),
            "mqtts" => Some(ListenerKind::Mqtts),
            "ws" => Some(ListenerKind::Ws),
            "wss" => Some(ListenerKind::Wss),
            "mqttsn" => Some(ListenerKind::MqttSn),
            _ => None,
        }
    }

    /// Whether the listener is a UDP socket (MQTT-SN) rather than a TCP one.
    pub fn is_udp(self) -> bool {
        self == ListenerKind::MqttSn
    }

    /// Whether the connection starts with a TLS handshake.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Mqtts | ListenerKind::Wss)
    }

    /// Whether MQTT travels in WebSocket frames.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// Which cipher suite a TLS listener picks among those the client offers
/// (`tls_cipher_preference` in a `[[listeners]]` table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TlsCipherPreference {
    /// `"compact"`: ChaCha20-Poly1305 whenever the client offers it (OpenSSL, rustls and
    /// browsers all do), else the client's choice (AES-GCM). Its record keys take 44 bytes a
    /// direction where AES-GCM's take 560, so an idle connection costs about 1 KB less.
    #[default]
    Compact,
    /// `"client"`: the client's first choice (most clients put AES-GCM first).
    Client,
}

impl TlsCipherPreference {
    /// The setting's value in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            TlsCipherPreference::Compact => "compact",
            TlsCipherPreference::Client => "client",
        }
    }

    /// The preference a configuration value names (`compact`, `client`).
    pub fn from_name(name: &str) -> Option<TlsCipherPreference> {
        match name {
            "compact" => Some(TlsCipherPreference::Compact),
            "client" => Some(TlsCipherPreference::Client),
            _ => None,
        }
    }
}

/// Longest WebSocket path accepted in a listener URL. A path is compared with the request
/// line of every upgrade; 256 bytes is far more than any MQTT deployment uses.
const MAX_WS_PATH: usize = 256;

/// The HTTP path a WebSocket listener upgrades on: starts with `/`, visible ASCII only, no
/// query (`?`) or fragment (`#`), at most 256 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WsPath(String);

impl WsPath {
    /// The path used when a `ws://` or `wss://` URL names none: what MQTT clients use by
    /// convention (mosquitto's and HiveMQ's examples, the Paho JavaScript default).
    pub const DEFAULT: &'static str = "/mqtt";

    /// Checks `path`; the error says what is wrong with it.
    pub fn new(path: &str) -> Result<WsPath, &'static str> {
        if !path.starts_with('/') {
            return Err("a WebSocket path must start with '/'");
        }
        if path.len() > MAX_WS_PATH {
            return Err("a WebSocket path is at most 256 bytes");
        }
        if !path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        {
            return Err("a WebSocket path holds visible ASCII only, without '?' or '#'");
        }
        Ok(WsPath(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a listener binds and what it speaks, as written in `--listen` or `url = "..."`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenerUrl {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    /// The upgrade path; `Some` exactly for the WebSocket kinds.
    pub path: Option<WsPath>,
}

impl ListenerUrl {
    /// A plain MQTT listener on `addr`.
    pub fn mqtt(addr: SocketAddr) -> ListenerUrl {
        ListenerUrl {
            kind: ListenerKind::Mqtt,
            addr,
            path: None,
        }
    }

    /// An MQTT-SN (UDP) listener on `addr`.
    pub fn mqttsn(addr: SocketAddr) -> ListenerUrl {
        ListenerUrl {
            kind: ListenerKind::MqttSn,
            addr,
            path: None,
        }
    }
}

impl FromStr for ListenerUrl {
    type Err = String;

    /// `mqtt://HOST:PORT`, `mqtts://HOST:PORT`, `ws://HOST:PORT[/PATH]`,
    /// `wss://HOST:PORT[/PATH]`, `mqttsn://HOST:PORT` (UDP) or a bare `HOST:PORT` (plain
    /// MQTT). HOST is an IP address (IPv6 in brackets); the port is required.
    fn from_str(s: &str) -> Result<ListenerUrl, String> {
        let Some((scheme, rest)) = s.split_once("://") else {
            let addr = s
                .parse()
                .map_err(|_| format!("{s:?} is neither HOST:PORT nor a listener URL"))?;
            return Ok(ListenerUrl::mqtt(addr));
        };
        let kind = ListenerKind::from_scheme(scheme)
            .ok_or_else(|| format!("unknown scheme {scheme:?} (mqtt, mqtts, ws, wss or mqttsn)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let addr: SocketAddr = authority.parse().map_err(|_| {
            format!("{authority:?} in {s:?} is not IP:PORT (an IPv6 address goes in brackets)")
        })?;
        let path = match (kind.is_websocket(), path) {
            (true, None) => Some(WsPath(WsPath::DEFAULT.to_owned())),
            (true, Some(p)) => Some(WsPath::new(p).map_err(|e| format!("{s:?}: {e}"))?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(format!(
                    "{s:?}: only ws:// and wss:// listeners take a path"
                ));
            }
        };
        Ok(ListenerUrl { kind, addr, path })
    }
}

impl TryFrom<String> for ListenerUrl {
    type Error = String;

    fn try_from(s: String) -> Result<ListenerUrl, String> {
        s.parse()
    }
}

impl fmt::Display for ListenerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.scheme(), self.addr)?;
        match &self.path {
            Some(p) => f.write_str(p.as_str()),
            None => Ok(()),
        }
    }
}

/// One listener: a `[[listeners]]` table, a `--listen` argument, or an entry of the
/// top-level `listen` list (plain MQTT).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and transport, e.g. `mqtts://0.0.0.0:8883` or `ws://0.0.0.0:8080/mqtt`.
    #[serde(deserialize_with = "url_from_string")]
    pub url: ListenerUrl,
    /// The transport by name (`mqtt`, `mqtts`, `ws`, `wss`, `mqttsn`), for a table whose `url`
    /// is a bare `HOST:PORT` (`protocol = "mqttsn"`, `url = "0.0.0.0:1884"`); applied by
    /// `ListenerConfig::apply_protocol` when the file is read. With a scheme in `url` it must
    /// name the same transport.
    #[serde(default, deserialize_with = "kind_from_string")]
    pub protocol: Option<ListenerKind>,
    /// PEM file with the server's certificate chain, leaf first (TLS listeners only).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM bundle of the CAs that client certificates are verified against. When set, the
    /// server asks every client for a certificate; see `require_client_cert`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients that present no certificate. When false, a client
    /// without a certificate is accepted and one with a certificate must still pass
    /// verification.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Take the MQTT username from the client certificate (its subject CN, else its first
    /// DNS, e-mail or URI SAN). Needs `client_ca` and `require_client_cert`.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) giving the real
    /// client address; a connection without one is closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Which cipher suite the server picks (TLS listeners only); `None`: the default,
    /// `TlsCipherPreference::Compact`.
    #[serde(default, deserialize_with = "cipher_preference_from_string")]
    pub tls_cipher_preference: Option<TlsCipherPreference>,
}

fn url_from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ListenerUrl, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn kind_from_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ListenerKind>, D::Error> {
    let s = String::deserialize(d)?;
    ListenerKind::from_scheme(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown protocol {s:?} (mqtt, mqtts, ws, wss or mqttsn)"
        ))
    })
}

fn cipher_preference_from_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<TlsCipherPreference>, D::Error> {
    let s = String::deserialize(d)?;
    TlsCipherPreference::from_name(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown tls_cipher_preference {s:?} (compact or client)"
        ))
    })
}

impl ListenerConfig {
    /// A listener with no TLS file and no PROXY header for `url`.
    pub fn new(url: ListenerUrl) -> ListenerConfig {
        ListenerConfig {
            url,
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: false,
            use_identity_as_username: false,
            proxy_protocol: false,
            protocol: None,
            tls_cipher_preference: None,
        }
    }

    /// Applies `protocol` to `url`: a bare `HOST:PORT` (read as plain MQTT) takes the named
    /// transport (a WebSocket one with the path `/mqtt`); a URL with another scheme is an
    /// error. A plain `mqtt://` URL counts as bare.
    pub fn apply_protocol(&mut self) -> Result<(), ConfigError> {
        let Some(kind) = self.protocol.take() else {
            return Ok(());
        };
        if self.url.kind == kind {
            return Ok(());
        }
        if self.url.kind != ListenerKind::Mqtt {
            return Err(self.error(format!(
                "protocol = \"{}\" but the url says {}://",
                kind.scheme(),
                self.url.kind.scheme()
            )));
        }
        self.url.kind = kind;
        if kind.is_websocket() {
            self.url.path = Some(WsPath(WsPath::DEFAULT.to_owned()));
        }
        Ok(())
    }

    /// Plain MQTT over TCP with no PROXY header: its connections carry no transport (the
    /// shard reads and writes their sockets directly).
    pub fn is_plain_tcp(&self) -> bool {
        self.url.kind == ListenerKind::Mqtt && !self.proxy_protocol
    }

    fn error(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::Listener {
            listener: self.url.to_string(),
            problem: problem.into(),
        }
    }

    /// The checks that need no file: TLS files named exactly where TLS is spoken, client
    /// certificate settings that hang together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.kind.is_tls() {
            if self.cert.is_none() {
                return Err(self.error("a TLS listener needs `cert` (PEM certificate chain)"));
            }
            if self.key.is_none() {
                return Err(self.error("a TLS listener needs `key` (PEM private key)"));
            }
        } else {
            let tls_keys = [
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("client_ca", self.client_ca.is_some()),
                ("require_client_cert", self.require_client_cert),
                ("use_identity_as_username", self.use_identity_as_username),
                (
                    "tls_cipher_preference",
                    self.tls_cipher_preference.is_some(),
                ),
            ];
            if let Some((name, _)) = tls_keys.iter().find(|(_, set)| *set) {
                return Err(self.error(format!(
                    "`{name}` is a TLS setting but this listener is not TLS (use mqtts:// or wss://)"
                )));
            }
        }
        if self.url.kind.is_udp() && self.proxy_protocol {
            return Err(self.error("`proxy_protocol` is for TCP listeners, not mqttsn://"));
        }
        if self.require_client_cert && self.client_ca.is_none() {
            return Err(self.error("`require_client_cert` needs `client_ca`"));
        }
        if self.use_identity_as_username && !self.require_client_cert {
            return Err(self.error(
                "`use_identity_as_username` needs `client_ca` and `require_client_cert = true`",
            ));
        }
        Ok(())
    }
}

/// Checks every listener, that no two of one protocol (TCP or UDP) bind the same address, and
/// that at most one is MQTT-SN (its gateway answers from one port: see `crate::shard`).
pub(super) fn validate_listeners(listeners: &[ListenerConfig]) -> Result<(), ConfigError> {
    if listeners.is_empty() {
        return Err(ConfigError::Value {
            what: "listen / listeners (at least one listener)",
            value: "[]".to_owned(),
        });
    }
    for (i, l) in listeners.iter().enumerate() {
        l.validate()?;
        // Port 0 asks the kernel for a free port: each such listener gets its own. TCP and
        // UDP ports are apart.
        let before = &listeners[..i];
        let same_protocol = |o: &&ListenerConfig| o.url.kind.is_udp() == l.url.kind.is_udp();
        let twice = l.url.addr.port() != 0
            && before
                .iter()
                .filter(same_protocol)
                .any(|o| o.url.addr == l.url.addr);
        if twice {
            return Err(l.error(format!("address {} is used by two listeners", l.url.addr)));
        }
        if l.url.kind.is_udp() && before.iter().any(|o| o.url.kind.is_udp()) {
            return Err(l.error(
                "a second MQTT-SN listener (one is served; bind [::] or 0.0.0.0 for all addresses)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ListenerUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_forms() {
        let u = url("127.0.0.1:1883");
        assert_eq!((u.kind, u.path), (ListenerKind::Mqtt, None));
        assert_eq!(url("mqtt://0.0.0.0:1883").kind, ListenerKind::Mqtt);
        let u = url("mqtts://[::1]:8883");
        assert_eq!(u.kind, ListenerKind::Mqtts);
        assert_eq!(u.addr, "[::1]:8883".parse().expect("addr"));
        let u = url("ws://0.0.0.0:8080/ws/mqtt");
        assert_eq!(u.kind, ListenerKind::Ws);
        assert_eq!(u.path.as_ref().map(WsPath::as_str), Some("/ws/mqtt"));
        let u = url("wss://0.0.0.0:8443");
        assert_eq!(u.path.as_ref().map(WsPath::as_str), Some("/mqtt"));
        assert_eq!(u.to_string(), "wss://0.0.0.0:8443/mqtt");
        assert_eq!(url("mqtt://1.2.3.4:5").to_string(), "mqtt://1.2.3.4:5");
        let u = url("mqttsn://0.0.0.0:1884");
        assert_eq!((u.kind, u.path.is_none()), (ListenerKind::MqttSn, true));
        assert!(u.kind.is_udp());
        assert_eq!(u.to_string(), "mqttsn://0.0.0.0:1884");
    }

    #[test]
    fn bad_urls_say_why() {
        for bad in [
            "http://0.0.0.0:80",
            "mqtt://0.0.0.0",
            "mqtt://localhost:1883",
            "mqtt://0.0.0.0:1883/mqtt",
            "ws://0.0.0.0:80/a b",
            "ws://0.0.0.0:80/mqtt?x=1",
            "ws://::1:80/mqtt",
            "mqttsn://0.0.0.0:1884/x",
            "udp://0.0.0.0:1884",
            "nope",
            "",
        ] {
            assert!(bad.parse::<ListenerUrl>().is_err(), "{bad} accepted");
        }
        assert!(WsPath::new("mqtt").is_err());
        assert!(WsPath::new(&format!("/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn tls_settings_belong_to_tls_listeners() {
        let mut l = ListenerConfig::new(url("mqtt://0.0.0.0:1883"));
        assert!(l.validate().is_ok());
        l.cert = Some("c.pem".into());
        let e = l.validate().expect_err("cert on plain").to_string();
        assert!(
            e.contains("mqtt://0.0.0.0:1883") && e.contains("`cert`"),
            "{e}"
        );

        let mut l = ListenerConfig::new(url("mqtts://0.0.0.0:8883"));
        assert!(
            l.validate()
                .expect_err("no cert")
                .to_string()
                .contains("`cert`")
        );
        l.cert = Some("c.pem".into());
        assert!(
            l.validate()
                .expect_err("no key")
                .to_string()
                .contains("`key`")
        );
        l.key = Some("k.pem".into());
        assert!(l.validate().is_ok());
        l.require_client_cert = true;
        assert!(
            l.validate().is_err(),
            "require_client_cert without client_ca"
        );
        l.client_ca = Some("ca.pem".into());
        assert!(l.validate().is_ok());
        l.require_client_cert = false;
        l.use_identity_as_username = true;
        assert!(l.validate().is_err(), "identity with optional client certs");

        let mut ws = ListenerConfig::new(url("ws://0.0.0.0:8080"));
        ws.tls_cipher_preference = Some(TlsCipherPreference::Client);
        let e = ws
            .validate()
            .expect_err("cipher preference on ws://")
            .to_string();
        assert!(e.contains("`tls_cipher_preference`"), "{e}");
    }

    #[test]
    fn one_address_one_listener() {
        let a = ListenerConfig::new(url("mqtt://0.0.0.0:1883"));
        let b = ListenerConfig::new(url("ws://0.0.0.0:1883/mqtt"));
        let e = validate_listeners(&[a, b]).expect_err("duplicate");
        assert!(e.to_string().contains("used by two listeners"), "{e}");
        assert!(validate_listeners(&[]).is_err());
        // TCP and UDP ports are apart; two MQTT-SN listeners are not served.
        let tcp = ListenerConfig::new(url("mqtt://0.0.0.0:1883"));
        let udp = ListenerConfig::new(url("mqttsn://0.0.0.0:1883"));
        assert!(validate_listeners(&[tcp.clone(), udp.clone()]).is_ok());
        let udp2 = ListenerConfig::new(url("mqttsn://0.0.0.0:1884"));
        let e = validate_listeners(&[tcp, udp, udp2]).expect_err("two mqttsn");
        assert!(e.to_string().contains("second MQTT-SN"), "{e}");
        let mut proxied = ListenerConfig::new(url("mqttsn://0.0.0.0:1884"));
        proxied.proxy_protocol = true;
        assert!(proxied.validate().is_err());
    }
}
