//! What a listener needs at run time, built from its configuration: the loaded TLS
//! configuration (reloadable), the WebSocket settings, whether a PROXY header is expected.
//! Shared by every shard and every connection of the listener through one `Arc`.
//!
//! Owns: turning a `ListenerConfig` (paths) into loaded material, with errors that name the
//! listener and the file; making each new connection's `Transport`.
//!
//! Must never: open a socket (binding is the shard's job), or start a listener whose files
//! failed to load.

use std::sync::Arc;

use super::tls::TlsSession;
use super::tls_config::{TlsAcceptor, TlsFiles, TlsLoadError};
use super::ws::{WsSession, WsSettings};
use super::{Layers, ProxyStage, Transport, TransportError, Wss};
use crate::config::{Config, ConfigError, Limits, ListenerConfig, ListenerKind};

/// ALPN protocols of an MQTT-over-TLS listener: `mqtt` (the IANA registration for MQTT;
/// clients that offer no ALPN are accepted too).
const ALPN_MQTT: &[&[u8]] = &[b"mqtt"];

/// ALPN protocols of a WebSocket-over-TLS listener: the upgrade is an HTTP/1.1 request.
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A listener's loaded settings.
#[derive(Debug)]
pub struct ListenerRuntime {
    config: ListenerConfig,
    tls: Option<TlsAcceptor>,
    ws: Option<WsSettings>,
}

impl ListenerRuntime {
    /// Checks `config` and loads its files. The error names the listener, the file and the
    /// problem (a `ConfigError`, so `main` exits with status 2 before any listener opens).
    pub fn load(
        config: &ListenerConfig,
        limits: &Limits,
    ) -> Result<Arc<ListenerRuntime>, ConfigError> {
        config.validate()?;
        let tls = match (config.url.kind.is_tls(), &config.cert, &config.key) {
            (true, Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.client_ca.clone(),
                    require_client_cert: config.require_client_cert,
                    identity_required: config.use_identity_as_username,
                    cipher_preference: config.tls_cipher_preference.unwrap_or_default(),
                };
                let alpn = match config.url.kind {
                    ListenerKind::Wss => ALPN_HTTP1,
                    ListenerKind::Mqtt
                    | ListenerKind::Mqtts
                    | ListenerKind::Ws
                    | ListenerKind::MqttSn => ALPN_MQTT,
                };
                Some(TlsAcceptor::load(files, alpn).map_err(|e| listener_error(config, &e))?)
            }
            // `validate` refused a TLS listener without its files.
            _ => None,
        };
        let ws = config
            .url
            .path
            .clone()
            .map(|path| WsSettings::new(path, limits.max_packet_size));
        Ok(Arc::new(ListenerRuntime {
            config: config.clone(),
            tls,
            ws,
        }))
    }

    /// Loads every listener of `config`, in order; stops at the first that fails.
    pub fn load_all(config: &Config) -> Result<Vec<Arc<ListenerRuntime>>, ConfigError> {
        config
            .listeners
            .iter()
            .map(|l| ListenerRuntime::load(l, &config.limits))
            .collect()
    }

    /// The transport for a connection just accepted on this listener: `None` for plain MQTT
    /// without a PROXY header (the shard reads and writes the socket directly, and the
    /// connection pays nothing for transports).
    pub fn new_transport(self: &Arc<Self>) -> Result<Option<Box<Transport>>, TransportError> {
        if self.config.is_plain_tcp() {
            return Ok(None);
        }
        let layers = match (&self.tls, &self.ws) {
            (None, None) => Layers::None,
            (None, Some(_)) => Layers::Ws(Box::new(WsSession::new())),
            (Some(acceptor), None) => Layers::Tls(Box::new(TlsSession::new(acceptor.current())?)),
            (Some(acceptor), Some(_)) => Layers::Wss(Box::new(Wss {
                tls: TlsSession::new(acceptor.current())?,
                ws: WsSession::new(),
            })),
        };
        let proxy = self
            .config
            .proxy_protocol
            .then(|| Box::new(ProxyStage::Pending(Default::default())));
        Ok(Some(Box::new(Transport {
            listener: Arc::clone(self),
            proxy,
            layers,
            closed: false,
        })))
    }

    /// Reloads the TLS files (for SIGHUP): new connections use them, open ones keep theirs.
    /// On error nothing changes. A listener without TLS has nothing to reload.
    pub fn reload_tls(&self) -> Result<(), ConfigError> {
        match &self.tls {
            Some(acceptor) => acceptor
                .reload()
                .map_err(|e| listener_error(&self.config, &e)),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    pub fn ws(&self) -> Option<&WsSettings> {
        self.ws.as_ref()
    }
}

fn listener_error(config: &ListenerConfig, e: &TlsLoadError) -> ConfigError {
    ConfigError::Listener {
        listener: config.url.to_string(),
        problem: e.to_string(),
    }
}
