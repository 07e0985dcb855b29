//! TLS: handshakes with a rustls client through memory buffers, client certificates and
//! identities, refusals (old versions, floods, bad files), reload.

use std::sync::Arc;

use bytes::BytesMut;

use super::super::tls_config::{TlsAcceptor, TlsFileProblem, TlsFiles, identity_of};
use super::super::{
    CloseReason, MAX_PENDING_HANDSHAKE, MAX_RECORD, ReadStatus, TlsError, TransportError,
};
use super::*;

const CONNECT: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";

#[test]
fn handshake_then_mqtt_bytes_both_ways() {
    let pki = Pki::new();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
        let config = pki.client_config(&[b"mqtt"], None, versions);
        let mut client =
            rustls::ClientConnection::new(config, "localhost".try_into().expect("name"))
                .expect("client");
        let mut seen = Seen::default();
        assert!(!t.handshake_done());
        pump(&mut client, &mut t, usize::MAX, &mut seen).expect("handshake");
        assert!(t.handshake_done() && !client.is_handshaking());
        assert_eq!(t.alpn_protocol(), Some(&b"mqtt"[..]));
        assert_eq!(client.protocol_version(), Some(versions[0].version));

        client_send(&mut client, CONNECT);
        pump(&mut client, &mut t, usize::MAX, &mut seen).expect("data");
        assert_eq!(&seen.app[..], CONNECT);
        assert_eq!(seen.status, Some(ReadStatus::Open));
        assert_eq!(t.buffered(), 0, "an idle connection keeps nothing");

        let mut wire = BytesMut::new();
        t.write(b"\x20\x02\x00\x00", &mut wire).expect("write");
        client.read_tls(&mut &wire[..]).expect("read_tls");
        client.process_new_packets().expect("process");
        assert_eq!(client_plaintext(&mut client), b"\x20\x02\x00\x00");
        assert_eq!(t.peer_identity(), None);
    }
}

#[test]
fn input_split_at_any_size_and_large_transfers() {
    let pki = Pki::new();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in [1, 5, 7, 1000, 16_389, 65_536] {
        let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
        let mut client = pki.client(&[], None);
        let mut seen = Seen::default();
        pump(&mut client, &mut t, chunk, &mut seen).expect("handshake");
        client_send(&mut client, &big);
        pump(&mut client, &mut t, chunk, &mut seen).expect("data");
        assert_eq!(seen.app.len(), big.len(), "chunk {chunk}");
        assert!(seen.app[..] == big[..], "chunk {chunk}");
        assert!(t.buffered() <= MAX_RECORD);

        let mut wire = BytesMut::new();
        t.write(&big, &mut wire).expect("write");
        let mut got = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).expect("read_tls");
            client.process_new_packets().expect("process");
            got.extend(client_plaintext(&mut client));
        }
        client.process_new_packets().expect("process");
        got.extend(client_plaintext(&mut client));
        assert!(
            got == big,
            "chunk {chunk}: {} of {} bytes",
            got.len(),
            big.len()
        );
    }
}

#[test]
fn alpn_mqtt_is_chosen_when_offered_and_other_protocols_are_refused() {
    let pki = Pki::new();
    let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
    let mut client = pki.client(&[b"x-other", b"mqtt"], None);
    pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).expect("handshake");
    assert_eq!(client.alpn_protocol(), Some(&b"mqtt"[..]));

    let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
    let mut client = pki.client(&[b"x-other"], None);
    let err = pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).expect_err("refused");
    assert!(
        matches!(
            err,
            TransportError::Tls(TlsError::Protocol(rustls::Error::NoApplicationProtocol))
        ),
        "{err}"
    );
}

#[test]
fn old_protocol_versions_are_refused_with_an_alert() {
    let pki = Pki::new();
    for version in [[3u8, 1], [3, 2]] {
        let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
        // A TLS 1.0 / 1.1 ClientHello: no supported_versions extension.
        let mut hello = vec![version[0], version[1]];
        hello.extend_from_slice(&[0x5a; 32]); // random
        hello.push(0); // session id
        hello.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
        hello.extend_from_slice(&[1, 0]); // null compression
        let mut handshake = vec![1, 0, 0, hello.len() as u8];
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 3, 1, 0, handshake.len() as u8];
        record.extend_from_slice(&handshake);

        let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
        let err = t
            .read(&mut record, &mut app, &mut wire)
            .expect_err("refused");
        assert!(
            matches!(
                err,
                TransportError::Tls(TlsError::Protocol(rustls::Error::PeerIncompatible(_)))
            ),
            "{err}"
        );
        // A fatal alert record (rustls answers handshake_failure).
        assert_eq!(&wire[..], &[0x15, 3, 3, 0, 2, 2, 40], "{wire:02x?}");
        let mut more = record.clone();
        assert_eq!(
            t.read(&mut more, &mut app, &mut wire).expect("after error"),
            ReadStatus::Closed
        );
    }
}

/// The first bytes of a ClientHello record that announces a handshake message of `len`.
fn hello_fragment(len: u32, fragment: usize) -> Vec<u8> {
    let body = fragment - 4;
    let mut rec = vec![0x16, 3, 3];
    rec.extend_from_slice(&(fragment as u16).to_be_bytes());
    rec.push(1);
    rec.extend_from_slice(&len.to_be_bytes()[1..]);
    rec.extend(std::iter::repeat_n(0x41, body));
    rec
}

#[test]
fn input_before_the_handshake_completes_stays_bounded() {
    let pki = Pki::new();
    let config = pki.listener("mqtts://127.0.0.1:8883");
    // A handshake message announced at 64 KiB - 1 and sent slowly, record after record.
    let mut t = transport(&config);
    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    let mut result = Ok(ReadStatus::Open);
    let mut rounds = 0;
    while result.is_ok() && rounds < 1000 {
        let mut rec = if rounds == 0 {
            hello_fragment(0xffff, 16_384)
        } else {
            let mut r = vec![0x16, 3, 3, 0x40, 0];
            r.extend(std::iter::repeat_n(0x41, 16_384));
            r
        };
        for piece in rec.chunks_mut(5000) {
            result = t.read(piece, &mut app, &mut wire);
            assert!(t.buffered() <= MAX_PENDING_HANDSHAKE, "{}", t.buffered());
        }
        rounds += 1;
    }
    assert!(result.is_err(), "a message that never parses is refused");
    assert!(rounds < 10, "refused after {rounds} records");

    // Records of every type, back to back, as fast as possible.
    for record in [
        vec![0x14, 3, 3, 0, 1, 1],       // ChangeCipherSpec
        vec![0x15, 3, 3, 0, 2, 1, 0],    // warning alert
        vec![0x16, 3, 3, 0, 0],          // empty handshake record
        vec![0x17, 3, 3, 0, 3, 1, 2, 3], // application data before the handshake
    ] {
        let mut t = transport(&config);
        let mut flood: Vec<u8> = record
            .iter()
            .copied()
            .cycle()
            .take(record.len() * 20_000)
            .collect();
        let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
        let mut refused = false;
        for piece in flood.chunks_mut(65_536) {
            if t.read(piece, &mut app, &mut wire).is_err() {
                refused = true;
                break;
            }
            assert!(t.buffered() <= MAX_PENDING_HANDSHAKE);
        }
        assert!(refused, "flood of {record:?} refused");
        assert!(app.is_empty());
        assert!(wire.len() < 64, "only an alert goes back");
    }

    // A record longer than TLS allows is refused from its header.
    let mut t = transport(&config);
    let (mut app, mut wire) = (BytesMut::new(), BytesMut::new());
    let err = t
        .read(&mut [0x16, 3, 3, 0xff, 0xff], &mut app, &mut wire)
        .expect_err("oversized record");
    assert!(matches!(err, TransportError::Tls(_)), "{err}");
}

#[test]
fn write_before_the_handshake_is_refused() {
    let pki = Pki::new();
    let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
    let mut wire = BytesMut::new();
    let err = t
        .write(b"\x20\x02\x00\x00", &mut wire)
        .expect_err("not yet");
    assert!(
        matches!(err, TransportError::Tls(TlsError::Handshaking)),
        "{err}"
    );
    assert!(wire.is_empty());
}

#[test]
fn close_notify_both_ways() {
    let pki = Pki::new();
    let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
    let mut client = pki.client(&[], None);
    let mut seen = Seen::default();
    pump(&mut client, &mut t, usize::MAX, &mut seen).expect("handshake");
    client_send(&mut client, CONNECT);
    client.send_close_notify();
    pump(&mut client, &mut t, usize::MAX, &mut seen).expect("close");
    assert_eq!(
        &seen.app[..],
        CONNECT,
        "bytes before close_notify are delivered"
    );
    assert_eq!(seen.status, Some(ReadStatus::Closed));
    let mut buf = [0u8; 8];
    assert_eq!(
        client.reader().read(&mut buf).expect("clean close"),
        0,
        "our close_notify"
    );

    let mut t = transport(&pki.listener("mqtts://127.0.0.1:8883"));
    let mut client = pki.client(&[], None);
    pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).expect("handshake");
    let mut wire = BytesMut::new();
    t.close(CloseReason::GoingAway, &mut wire);
    client.read_tls(&mut &wire[..]).expect("read_tls");
    client.process_new_packets().expect("process");
    assert_eq!(client.reader().read(&mut buf).expect("clean close"), 0);
    assert!(matches!(
        t.write(b"x", &mut wire),
        Err(TransportError::Closed)
    ));
}

fn mtls_listener(pki: &Pki, required: bool, identity: bool) -> ListenerConfig {
    let mut l = pki.listener("mqtts://127.0.0.1:8883");
    l.client_ca = Some(pki.ca_file.clone());
    l.require_client_cert = required;
    l.use_identity_as_username = identity;
    l
}

#[test]
fn client_certificates_and_identities() {
    let pki = Pki::new();
    let config = mtls_listener(&pki, true, true);
    let handshake = |cert: Option<&Issued>| {
        let mut t = transport(&config);
        let mut client = pki.client(&[], cert);
        pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).map(|()| t)
    };
    let device = pki.issue(Some("device-42"), &["dev42.example"]);
    let t = handshake(Some(&device)).expect("valid client cert");
    assert_eq!(t.peer_identity().as_deref(), Some("device-42"));

    let san_only = pki.issue(None, &["sensor.example"]);
    let t = handshake(Some(&san_only)).expect("SAN identity");
    assert_eq!(t.peer_identity().as_deref(), Some("sensor.example"));

    let nameless = pki.issue(None, &[]);
    let err = handshake(Some(&nameless)).expect_err("no identity: refused");
    assert!(
        matches!(err, TransportError::Tls(TlsError::Protocol(_))),
        "{err}"
    );

    assert!(handshake(None).is_err(), "certificate required");

    let other = Pki::new();
    let stranger = other.issue(Some("device-42"), &[]);
    assert!(handshake(Some(&stranger)).is_err(), "unknown CA");

    // Optional client certificates: none is fine, a bad one is not.
    let config = mtls_listener(&pki, false, false);
    let optional = |cert: Option<&Issued>| {
        let mut t = transport(&config);
        let mut client = pki.client(&[], cert);
        pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).map(|()| t)
    };
    let t = optional(None).expect("no certificate");
    assert_eq!(t.peer_identity(), None);
    let t = optional(Some(&device)).expect("good certificate");
    assert_eq!(
        t.peer_identity(),
        None,
        "identity only with use_identity_as_username"
    );
    assert!(optional(Some(&stranger)).is_err());
}

#[test]
fn identity_of_prefers_cn_and_refuses_control_characters() {
    let pki = Pki::new();
    let both = pki.issue(Some("cn-name"), &["san.example"]);
    assert_eq!(identity_of(&both.der).as_deref(), Some("cn-name"));
    assert_eq!(
        identity_of(&pki.issue(None, &["a.example"]).der).as_deref(),
        Some("a.example")
    );
    assert_eq!(identity_of(&pki.issue(None, &[]).der), None);
    assert_eq!(identity_of(&pki.issue(Some("bad\u{1}name"), &[]).der), None);
    assert_eq!(identity_of(b"not a certificate"), None);
    assert_eq!(identity_of(&[]), None);
}

fn files(pki: &Pki) -> TlsFiles {
    TlsFiles {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        client_ca: None,
        require_client_cert: false,
        identity_required: false,
        cipher_preference: Default::default(),
    }
}

#[test]
fn bad_files_are_named_with_their_problem() {
    let pki = Pki::new();
    let other = Pki::new();
    let load = |f: TlsFiles| {
        TlsAcceptor::load(f, &[])
            .map(|_| ())
            .expect_err("must fail")
    };

    let mut f = files(&pki);
    f.cert = pki.dir.path().join("missing.pem");
    let e = load(f);
    assert!(matches!(e.problem, TlsFileProblem::Read(_)), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let mut f = files(&pki);
    f.key = other.key.clone();
    let e = load(f);
    assert!(matches!(e.problem, TlsFileProblem::KeyMismatch(_)), "{e}");
    assert_eq!(e.file, other.key);

    let mut f = files(&pki);
    f.key = pki.cert.clone();
    assert!(matches!(load(f).problem, TlsFileProblem::NoPrivateKey));

    let mut f = files(&pki);
    f.cert = pki.key.clone();
    assert!(matches!(load(f).problem, TlsFileProblem::NoCertificate));

    let mut f = files(&pki);
    f.cert = pki
        .dir
        .write("torn.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
    assert!(matches!(load(f).problem, TlsFileProblem::Pem(_)));

    let mut f = files(&pki);
    f.client_ca = Some(pki.dir.write("empty-ca.pem", ""));
    let e = load(f);
    assert!(matches!(e.problem, TlsFileProblem::NoCertificate), "{e}");

    // Through the listener: a ConfigError naming the listener and the file.
    let mut l = pki.listener("mqtts://127.0.0.1:8883");
    l.key = Some(other.key.clone());
    let e = ListenerRuntime::load(&l, &Limits::default()).expect_err("mismatch");
    let text = e.to_string();
    assert!(
        text.contains("mqtts://127.0.0.1:8883") && text.contains("does not match"),
        "{text}"
    );
}

#[test]
fn reload_takes_new_files_and_keeps_the_old_on_error() {
    let pki = Pki::new();
    let runtime = runtime(&pki.listener("mqtts://127.0.0.1:8883"));
    let acceptor = runtime.tls().expect("TLS listener");
    let first = acceptor.current();
    let presented = || {
        let mut t = runtime.new_transport().expect("t").expect("tls");
        let mut client = pki.client(&[], None);
        pump(&mut client, &mut t, usize::MAX, &mut Seen::default()).expect("handshake");
        client.peer_certificates().expect("server cert")[0].clone()
    };
    assert_eq!(presented(), pki.server.der);

    std::fs::write(&pki.cert, "not a certificate").expect("break cert");
    let e = acceptor.reload().expect_err("broken file");
    assert_eq!(e.file, pki.cert);
    let e = runtime.reload_tls().expect_err("broken file");
    assert!(e.to_string().contains("server.pem"), "{e}");
    assert!(Arc::ptr_eq(&first, &acceptor.current()), "old config kept");
    assert_eq!(presented(), pki.server.der);

    let renewed = pki.issue(Some("ringmq renewed"), &["localhost"]);
    std::fs::write(&pki.cert, &renewed.pem).expect("cert");
    std::fs::write(&pki.key, &renewed.key_pem).expect("key");
    runtime.reload_tls().expect("renewed files load");
    assert!(!Arc::ptr_eq(&first, &acceptor.current()));
    assert_eq!(
        presented(),
        renewed.der,
        "new connections use the new certificate"
    );

    std::fs::write(&pki.key, "garbage").expect("break key");
    assert!(runtime.reload_tls().is_err());
    assert_eq!(presented(), renewed.der);
}
