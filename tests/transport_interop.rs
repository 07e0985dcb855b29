//! The transports against real third-party clients, on the broker as a process:
//! mosquitto_pub/mosquitto_sub over TLS (`--cafile`) and with client certificates (the
//! certificate's name is the username), rumqttc over TLS, Eclipse Paho (Python) over ws://
//! and wss://, `openssl s_client` for the TLS versions and cipher suites, and a real browser (Debian's headless
//! Chromium driven by puppeteer-core) running MQTT.js and Paho JavaScript over ws://, with a
//! TCP client of the test on the other side.
//!
//! Every tool is required: a missing one fails the test with what to install (`.ci/run`
//! installs them; `tests/interop/setup.sh` installs the npm and PyPI packages, and is run by
//! these tests when its install is missing). Mosquitto's command-line clients as Debian
//! ships them (2.0.11) have no WebSocket transport, so they are used over TLS only.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::process::{BrokerProcess, DataDir};
use common::transport::Pki;
use common::{Client, connect_packet, publish};
use ringmq::codec::{Ack, Packet, ProtocolVersion, QoS};
use ringmq::config::TlsCipherPreference;

/// The listeners of the interop broker, in this order.
const PLAIN: usize = 0;
const MQTTS: usize = 1;
const MTLS: usize = 2;
const WS: usize = 3;
const WSS: usize = 4;
/// `mqtts://` with `tls_cipher_preference = "client"`.
const CLIENT_ORDER: usize = 5;

struct Setup {
    broker: BrokerProcess,
    pki: Pki,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let pki = Pki::new(name);
        let toml = [
            "listen = [\"127.0.0.1:0\"]\n".to_owned(),
            Pki::toml(&pki.listener("mqtts://127.0.0.1:0")),
            Pki::toml(&pki.mtls_listener("mqtts://127.0.0.1:0")),
            Pki::toml(&pki.listener("ws://127.0.0.1:0/mqtt")),
            Pki::toml(&pki.listener("wss://127.0.0.1:0/mqtt")),
            Pki::toml(&{
                let mut l = pki.listener("mqtts://127.0.0.1:0");
                l.tls_cipher_preference = Some(TlsCipherPreference::Client);
                l
            }),
        ]
        .concat();
        let broker = BrokerProcess::start_config(&toml, &["--shards", "2"]);
        Setup { broker, pki }
    }

    fn port(&self, listener: usize) -> String {
        self.broker.addrs[listener].port().to_string()
    }

    fn addr(&self, listener: usize) -> SocketAddr {
        self.broker.addrs[listener]
    }

    /// Waits until the broker's log contains `text`.
    fn wait_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.broker.log();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Fails the test unless `tool` is on the PATH.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is required by this test: install the Debian package `{package}` (.ci/run does)"
    );
}

/// The npm and PyPI packages' install (`tests/interop/setup.sh`, run once per test binary).
fn interop_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/setup.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/interop/setup.sh");
        assert!(out.status.success(), "tests/interop/setup.sh failed");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        PathBuf::from(
            text.lines()
                .last()
                .expect("setup.sh prints its directory")
                .trim(),
        )
    })
}

/// Waits for `child` up to `limit` (then kills it and fails the test); returns its output.
fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish within {limit:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    wait_output(child, limit, what)
}

/// mosquitto_sub for 3 messages on `topic/#` and mosquitto_pub of one message per QoS, over
/// the TLS listener `listener` with `tls_args`; returns the subscriber's lines.
fn mosquitto_round(
    setup: &Setup,
    listener: usize,
    version: &str,
    id: &str,
    tls_args: &[&str],
    pub_args: &[&str],
) -> Vec<String> {
    let host = "localhost";
    let port = setup.port(listener);
    let topic = format!("mq/{id}");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h", host, "-p", &port, "-V", version, "-i", id, "-q", "2", "-v",
        ])
        .args(["-C", "3", "-W", "20", "-t", &format!("{topic}/#")])
        .args(tls_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    setup.wait_log(&format!("client {id} connected"));
    std::thread::sleep(Duration::from_millis(300)); // its SUBSCRIBE follows the CONNACK
    for qos in ["0", "1", "2"] {
        let out = run(
            Command::new("mosquitto_pub")
                .args(["-h", host, "-p", &port, "-V", version, "-q", qos])
                .args(["-t", &format!("{topic}/{qos}"), "-m", &format!("tls {qos}")])
                .args(pub_args),
            Duration::from_secs(20),
            "mosquitto_pub",
        );
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = wait_output(sub, Duration::from_secs(25), "mosquitto_sub");
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn mosquitto_clients_over_tls() {
    require("mosquitto_sub", "mosquitto-clients");
    let setup = Setup::new("mosquitto-tls");
    let ca = setup.pki.ca_file.to_str().expect("path").to_owned();
    for version in ["mqttv311", "mqttv5"] {
        let id = format!("tls-sub-{version}");
        let tls = ["--cafile", ca.as_str()];
        let lines = mosquitto_round(&setup, MQTTS, version, &id, &tls, &tls);
        let want: Vec<String> = (0..3).map(|q| format!("mq/{id}/{q} tls {q}")).collect();
        assert_eq!(lines, want, "{version}");
    }
}

#[test]
fn mosquitto_clients_with_client_certificates() {
    require("mosquitto_sub", "mosquitto-clients");
    let setup = Setup::new("mosquitto-mtls");
    let ca = setup.pki.ca_file.to_str().expect("path").to_owned();
    let sub_cert = setup.pki.client_cert("device-7");
    let pub_cert = setup.pki.client_cert("device-8");
    let files = |c: &common::transport::Issued| {
        [
            c.cert_file.to_str().expect("path").to_owned(),
            c.key_file.to_str().expect("path").to_owned(),
        ]
    };
    let [sc, sk] = files(&sub_cert);
    let [pc, pk] = files(&pub_cert);
    let sub_tls = ["--cafile", &ca, "--cert", &sc, "--key", &sk];
    let pub_tls = ["--cafile", &ca, "--cert", &pc, "--key", &pk];
    let lines = mosquitto_round(&setup, MTLS, "mqttv5", "mtls-sub", &sub_tls, &pub_tls);
    assert_eq!(lines.len(), 3, "{lines:?}");
    // The certificates' names are the users (use_identity_as_username).
    setup.wait_log("names user \"device-7\"");
    setup.wait_log("names user \"device-8\"");

    // Without a client certificate the handshake is refused.
    let out = run(
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &setup.port(MTLS), "--cafile", &ca])
            .args(["-t", "mq/x", "-m", "refused", "-i", "no-cert"]),
        Duration::from_secs(20),
        "mosquitto_pub without a certificate",
    );
    assert!(
        !out.status.success(),
        "published without a client certificate"
    );
    assert!(!setup.broker.log().contains("client no-cert connected"));
}

#[test]
fn rumqttc_over_tls() {
    let setup = Setup::new("rumqttc");
    let config = setup.pki.client_config(&[], None);
    let port = setup.addr(MQTTS).port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let got = rt.block_on(async move {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
        let mut options = MqttOptions::new("rumqttc-tls", "localhost", port);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe("rumqttc/#", QoS::ExactlyOnce)
            .await
            .expect("subscribe");
        let mut got = Vec::new();
        let run = async {
            loop {
                match eventloop.poll().await.expect("event loop") {
                    Event::Incoming(Packet::SubAck(_)) => {
                        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                            .into_iter()
                            .enumerate()
                        {
                            client
                                .publish(format!("rumqttc/{i}"), qos, false, format!("m{i}"))
                                .await
                                .expect("publish");
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        got.push((p.topic.clone(), p.payload.to_vec(), p.qos as u8));
                        if got.len() == 3 {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("rumqttc got its messages");
        got.sort();
        got
    });
    let want: Vec<(String, Vec<u8>, u8)> = (0..3u8)
        .map(|i| (format!("rumqttc/{i}"), format!("m{i}").into_bytes(), i))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn openssl_s_client_tls_versions() {
    require("openssl", "openssl");
    let setup = Setup::new("openssl");
    let connect = setup.addr(MQTTS).to_string();
    let ca = setup.pki.ca_file.to_str().expect("path").to_owned();
    // SECLEVEL=0 lets the client offer TLS 1.0 and 1.1 at all (OpenSSL 3 refuses them by
    // default), so that a refusal is the broker's.
    for (flag, accepted) in [
        ("-tls1", false),
        ("-tls1_1", false),
        ("-tls1_2", true),
        ("-tls1_3", true),
    ] {
        let out = run(
            Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-servername", "localhost"])
                .args(["-CAfile", &ca, "-verify_return_error", flag])
                .args(["-cipher", "DEFAULT:@SECLEVEL=0"]),
            Duration::from_secs(20),
            "openssl s_client",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let version = match flag {
            "-tls1" => "TLSv1\n",
            "-tls1_1" => "TLSv1.1",
            "-tls1_2" => "TLSv1.2",
            _ => "TLSv1.3",
        };
        let negotiated = text.contains(&format!("New, {}", version.trim_end()))
            && text.contains("Verify return code: 0 (ok)");
        assert_eq!(negotiated, accepted, "{flag}:\n{text}");
        if !accepted {
            assert!(!out.status.success(), "{flag}:\n{text}");
        }
    }
}

/// The suite `openssl s_client` agrees: ChaCha20-Poly1305 by default (OpenSSL offers it
/// after AES-GCM), AES-GCM when the client offers nothing else or the listener follows the
/// client's order.
#[test]
fn openssl_s_client_cipher_suites() {
    require("openssl", "openssl");
    let setup = Setup::new("ciphers");
    let ca = setup.pki.ca_file.to_str().expect("path").to_owned();
    let cases: [(usize, &[&str], &str); 8] = [
        (MQTTS, &["-tls1_3"], "TLS_CHACHA20_POLY1305_SHA256"),
        (WSS, &["-tls1_3"], "TLS_CHACHA20_POLY1305_SHA256"),
        (MQTTS, &["-tls1_2"], "ECDHE-ECDSA-CHACHA20-POLY1305"),
        (
            MQTTS,
            &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
            "TLS_AES_256_GCM_SHA384",
        ),
        (
            MQTTS,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (CLIENT_ORDER, &["-tls1_3"], "TLS_AES_256_GCM_SHA384"),
        (CLIENT_ORDER, &["-tls1_2"], "ECDHE-ECDSA-AES256-GCM-SHA384"),
        (
            CLIENT_ORDER,
            &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ];
    for (listener, args, want) in cases {
        let connect = setup.addr(listener).to_string();
        let out = run(
            Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-servername", "localhost"])
                .args(["-CAfile", &ca, "-verify_return_error"])
                .args(args),
            Duration::from_secs(20),
            "openssl s_client",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(&format!("Cipher is {want}\n"))
                && text.contains("Verify return code: 0 (ok)"),
            "listener {listener} {args:?}: want {want}:\n{text}"
        );
    }
}

/// A TCP client subscribed to `py/#` sees what the Python clients publish.
#[test]
fn paho_python_over_websocket_and_websocket_tls() {
    let dir = interop_dir();
    let python = dir.join("venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/paho_ws.py");
    let setup = Setup::new("paho-python");
    let (mut tcp, _) = Client::connect(setup.addr(PLAIN), ProtocolVersion::V5, "py-watcher", true);
    tcp.subscribe("py/#", QoS::ExactlyOnce);
    let ca = setup.pki.ca_file.to_str().expect("path").to_owned();
    for (scheme, listener, v5) in [
        ("ws", WS, false),
        ("ws", WS, true),
        ("wss", WSS, false),
        ("wss", WSS, true),
    ] {
        let id = format!("paho-{scheme}-{}", if v5 { "v5" } else { "v311" });
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args([scheme, &setup.port(listener), &id, &ca]);
        if v5 {
            cmd.arg("--v5");
        }
        let out = run(&mut cmd, Duration::from_secs(40), "paho_ws.py");
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            setup.broker.log()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for qos in 0..3 {
            let want = format!(
                "{{\"topic\": \"py/{id}/{qos}\", \"payload\": \"{scheme} {qos}\", \"qos\": {qos}}}"
            );
            assert!(stdout.contains(&want), "{id}: {stdout}");
        }
        let mut seen: Vec<(String, u8)> = (0..3)
            .map(|_| {
                let p = tcp.recv_publish();
                (p.topic.as_str().to_owned(), p.qos as u8)
            })
            .collect();
        seen.sort();
        let want: Vec<(String, u8)> = (0..3u8).map(|q| (format!("py/{id}/{q}"), q)).collect();
        assert_eq!(seen, want, "the TCP client sees {id}'s messages");
    }
}

/// Serves the browser page and the two libraries over HTTP until the process ends.
fn serve_page(node_modules: &Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("http bind");
    let addr = listener.local_addr().expect("addr");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let files: Arc<Vec<(&'static str, PathBuf, &'static str)>> = Arc::new(vec![
        ("/index.html", here.join("browser.html"), "text/html"),
        (
            "/mqtt.min.js",
            node_modules.join("mqtt/dist/mqtt.min.js"),
            "text/javascript",
        ),
        (
            "/paho-mqtt.js",
            node_modules.join("paho-mqtt/paho-mqtt.js"),
            "text/javascript",
        ),
    ]);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let files = Arc::clone(&files);
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let response = match files.iter().find(|(p, _, _)| *p == path) {
                    Some((_, file, kind)) => {
                        let body = std::fs::read(file).expect("page file");
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                };
                let _ = std::io::Write::write_all(&mut stream, &response);
            });
        }
    });
    addr
}

/// A real browser: MQTT.js (MQTT 5) and Paho JavaScript (3.1.1) over ws:// subscribe,
/// publish at QoS 0/1/2, receive their own messages, and exchange messages with a TCP client
/// of this test (which echoes every `to-tcp/LIB/QOS` to `to-browser/LIB/QOS` at that QoS).
#[test]
fn browser_mqtt_js_and_paho_js_over_websocket() {
    require("chromium", "chromium");
    require("node", "nodejs");
    let dir = interop_dir();
    let node_dir = dir.join("node");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/browser.mjs"),
        node_dir.join("browser.mjs"),
    )
    .expect("copy browser.mjs");
    let setup = Setup::new("browser");
    let http = serve_page(&node_dir.join("node_modules"));

    let (mut tcp, _) = Client::connect(setup.addr(PLAIN), ProtocolVersion::V5, "echo", true);
    tcp.subscribe("to-tcp/#", QoS::ExactlyOnce);
    // Each library publishes its three, then waits for the echoes before the next library
    // starts. Every flow is answered as its packets come: the browser has an echo as soon as
    // the broker has its PUBLISH, so the next library's first message may arrive here while
    // this client's QoS 2 flow for that echo is still open.
    let echo = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut open = 0usize; // echoes whose flow has not ended
        while seen.len() < 6 || open > 0 {
            match tcp.recv() {
                Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => tcp.send(&Packet::PubAck(Ack::new(id))),
                        (QoS::ExactlyOnce, Some(id)) => tcp.send(&Packet::PubRec(Ack::new(id))),
                        _ => {}
                    }
                    let topic = p.topic.as_str().replacen("to-tcp/", "to-browser/", 1);
                    let payload = format!("echo {}", String::from_utf8_lossy(&p.payload));
                    let id = (p.qos != QoS::AtMostOnce).then(|| tcp.next_packet_id());
                    tcp.send(&Packet::Publish(publish(
                        &topic,
                        payload.as_bytes(),
                        p.qos,
                        id,
                    )));
                    open += usize::from(id.is_some());
                    seen.push((p.topic.as_str().to_owned(), p.qos as u8));
                }
                Packet::PubRel(a) => tcp.send(&Packet::PubComp(Ack::new(a.packet_id))),
                Packet::PubRec(a) => tcp.send(&Packet::PubRel(Ack::new(a.packet_id))),
                Packet::PubAck(_) | Packet::PubComp(_) => open -= 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        seen.sort();
        seen
    });

    let profile = DataDir::new("chromium-profile");
    let page = format!(
        "http://{http}/index.html?url=ws://127.0.0.1:{}/mqtt",
        setup.port(WS)
    );
    let out = run(
        Command::new("node")
            .arg(node_dir.join("browser.mjs"))
            .args([page.as_str(), profile.path()])
            .current_dir(&node_dir),
        Duration::from_secs(120),
        "node browser.mjs",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "browser run failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"ok\":true"),
        "{stdout}\n{}",
        setup.broker.log()
    );
    assert!(
        stdout.contains("HeadlessChrome"),
        "a real Chromium ran: {stdout}"
    );
    for lib in ["mqttjs", "paho"] {
        for qos in 0..3 {
            for want in [
                format!("\"topic\":\"self/{lib}/{qos}\",\"payload\":\"self {qos}\",\"qos\":{qos}"),
                format!(
                    "\"topic\":\"to-browser/{lib}/{qos}\",\"payload\":\"echo hello {qos}\",\"qos\":{qos}"
                ),
            ] {
                assert!(stdout.contains(&want), "{want} missing: {stdout}");
            }
        }
    }
    let seen = echo.join().expect("echo thread");
    let want: Vec<(String, u8)> = ["mqttjs", "paho"]
        .iter()
        .flat_map(|lib| (0..3u8).map(move |q| (format!("to-tcp/{lib}/{q}"), q)))
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(seen, want);
    setup.wait_log("client browser-mqttjs connected");
    setup.wait_log("client browser-paho connected");
    let _ = connect_packet;
}
