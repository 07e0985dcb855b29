//! Enhanced authentication (`session::auth`): the SCRAM exchange before CONNACK and
//! re-authentication after it, with RFC 7677's user and a client written from RFC 5802; the
//! SUBSCRIBE policy.

use super::connect::connack;
use super::*;
use crate::auth::Refusal;
use crate::auth::random::OsRandom;
use crate::auth::scram::METHOD;
use crate::auth::scram::tests::{Client, rfc_users};
use crate::codec::{Auth, AuthProperties};

fn auth(reason: ReasonCode, method: &str, data: &str) -> Auth {
    Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(mstr(method)),
            authentication_data: Some(Bytes::copy_from_slice(data.as_bytes())),
            ..AuthProperties::default()
        },
    }
}

/// The one AUTH packet in `out`: its reason and data.
fn server_auth(out: &mut BytesMut) -> (ReasonCode, String) {
    let packets = decode_all(out, Some(ProtocolVersion::V5));
    match packets.as_slice() {
        [Packet::Auth(a)] => {
            assert_eq!(a.properties.authentication_method, Some(mstr(METHOD)));
            let data = a.properties.authentication_data.clone().unwrap_or_default();
            (a.reason, String::from_utf8(data.to_vec()).expect("ascii"))
        }
        other => panic!("expected one AUTH, got {other:?}"),
    }
}

/// CONNECT with SCRAM as `user`/`password`, through to the outcome.
fn connect_scram(user: &str, password: &[u8]) -> Result<Authenticated, AuthError> {
    let users = rfc_users();
    let client = Client::new(user, password, "fyko+d2lbbFgONRv9qkxdawL");
    let first = Bytes::from(client.first());
    let mut out = BytesMut::new();
    let a = Authenticating::start(mstr(METHOD), Some(&first), &users, &mut OsRandom, &mut out)?;
    let (reason, server_first) = server_auth(&mut out);
    assert_eq!(reason, ReasonCode::ContinueAuthentication);
    let (fin, v) = client.last(&server_first);
    let done = a.on_packet(Packet::Auth(auth(
        ReasonCode::ContinueAuthentication,
        METHOD,
        &fin,
    )))?;
    assert_eq!(done.server_final, v.as_bytes(), "the server proves the key");
    Ok(done)
}

#[test]
fn scram_before_connack_succeeds_and_connack_carries_server_final() {
    let done = connect_scram("user", b"pencil").expect("authenticated");
    assert_eq!(done.username, "user");
    let mut h = Harness::new(Limits::default());
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.properties.authentication_method = Some(mstr(METHOD));
    let how = Attach {
        auth: Some(&done),
        ..Attach::default()
    };
    h.s.connect_with_auth(c, how, h.now, &mut h.out, &mut h.actions);
    let ack = connack(&mut h);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(ack.properties.authentication_method, Some(mstr(METHOD)));
    assert_eq!(ack.properties.authentication_data, Some(done.server_final));
}

#[test]
fn wrong_password_and_unknown_user_fail_alike() {
    let bad = AuthError::Refused(Refusal::BadCredentials);
    assert_eq!(connect_scram("user", b"pencil!"), Err(bad));
    assert_eq!(connect_scram("nobody", b"pencil"), Err(bad));
    assert_eq!(bad.connack_code(), ReasonCode::BadUserNameOrPassword);
    assert_eq!(bad.disconnect_code(), ReasonCode::NotAuthorized);
    assert!(bad.is_bad_credentials());
}

#[test]
fn out_of_sequence_packets_before_connack_are_protocol_errors() {
    let users = rfc_users();
    let first = Bytes::from(Client::new("user", b"pencil", "abc").first());
    let start = || {
        let mut out = BytesMut::new();
        Authenticating::start(mstr(METHOD), Some(&first), &users, &mut OsRandom, &mut out)
            .expect("start")
    };
    let cases = [
        Packet::PingReq,
        Packet::Publish(publish("a", QoS::AtMostOnce, None)),
        Packet::Auth(auth(ReasonCode::ReAuthenticate, METHOD, "x")),
        Packet::Auth(auth(ReasonCode::Success, METHOD, "x")),
        Packet::Auth(auth(ReasonCode::ContinueAuthentication, "OTHER", "x")),
    ];
    for p in cases {
        assert_eq!(start().on_packet(p).err(), Some(AuthError::Protocol));
    }
    assert_eq!(
        AuthError::Protocol.connack_code(),
        ReasonCode::ProtocolError
    );
    // A client-first the server cannot parse: refused as not authorized.
    let mut out = BytesMut::new();
    let junk = Bytes::from_static(b"p=tls-unique,,n=user,r=abc");
    let r = Authenticating::start(mstr(METHOD), Some(&junk), &users, &mut OsRandom, &mut out);
    assert_eq!(r.err(), Some(AuthError::Refused(Refusal::NotAuthorized)));
    assert!(out.is_empty(), "nothing is written for a refused start");
}

#[test]
fn reauthentication_on_a_live_connection() {
    let users = rfc_users();
    let done = connect_scram("user", b"pencil").expect("authenticated");
    let mut e = Enhanced::new(&done);
    for round in 0..2 {
        let client = Client::new("user", b"pencil", &format!("nonce{round}"));
        let mut out = BytesMut::new();
        let a = auth(ReasonCode::ReAuthenticate, METHOD, &client.first());
        e.on_auth(a, &users, &mut OsRandom, &mut out)
            .expect("AUTH 0x19");
        let (reason, server_first) = server_auth(&mut out);
        assert_eq!(reason, ReasonCode::ContinueAuthentication);
        let (fin, v) = client.last(&server_first);
        let a = auth(ReasonCode::ContinueAuthentication, METHOD, &fin);
        e.on_auth(a, &users, &mut OsRandom, &mut out)
            .expect("client-final");
        assert_eq!(server_auth(&mut out), (ReasonCode::Success, v));
    }
}

#[test]
fn reauthentication_failures() {
    let users = rfc_users();
    let done = connect_scram("user", b"pencil").expect("authenticated");
    let run = |user: &str, password: &[u8]| {
        let mut e = Enhanced::new(&done);
        let client = Client::new(user, password, "n");
        let mut out = BytesMut::new();
        let a = auth(ReasonCode::ReAuthenticate, METHOD, &client.first());
        e.on_auth(a, &users, &mut OsRandom, &mut out)?;
        let (_, server_first) = server_auth(&mut out);
        let (fin, _) = client.last(&server_first);
        let a = auth(ReasonCode::ContinueAuthentication, METHOD, &fin);
        e.on_auth(a, &users, &mut OsRandom, &mut out)
    };
    assert_eq!(
        run("user", b"wrong"),
        Err(AuthError::Refused(Refusal::BadCredentials))
    );
    // Another user, even with the right password, is not this connection's user.
    let other = run("nobody", b"pencil");
    assert!(other.is_err());
    let mut e = Enhanced::new(&done);
    let mut out = BytesMut::new();
    for a in [
        auth(
            ReasonCode::ContinueAuthentication,
            METHOD,
            "c=biws,r=x,p=AA==",
        ),
        auth(ReasonCode::Success, METHOD, ""),
        auth(ReasonCode::ReAuthenticate, "PLAIN", "x"),
    ] {
        assert_eq!(
            e.on_auth(a, &users, &mut OsRandom, &mut out),
            Err(AuthError::Protocol)
        );
    }
    assert_eq!(
        AuthError::Protocol.disconnect_code(),
        ReasonCode::ProtocolError
    );
}

#[test]
fn subscribe_policy_refuses_per_filter() {
    struct OnlyA;
    impl AccessPolicy for OnlyA {
        fn may_subscribe(&self, f: &TopicFilter) -> bool {
            f.filter_bytes().starts_with(b"a/")
        }
    }
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut h = Harness::connected(Limits::default(), connect_packet(v, "c1", true));
        let s = crate::codec::Subscribe {
            packet_id: pid(1),
            filters: vec![
                (filter("a/#"), sub_opts(QoS::AtLeastOnce)),
                (filter("b/#"), sub_opts(QoS::AtLeastOnce)),
            ],
            properties: Default::default(),
        };
        h.s.handle_packet_with(
            Packet::Subscribe(s),
            &OnlyA,
            h.now,
            &mut h.out,
            &mut h.actions,
        );
        let (packets, actions) = h.take();
        let [Packet::SubAck(ack)] = packets.as_slice() else {
            panic!("expected SUBACK, got {packets:?}");
        };
        let refused = match v {
            // 3.x has one failure code, 0x80; the decoder reads it back as 0x80.
            ProtocolVersion::V5 => ReasonCode::NotAuthorized,
            ProtocolVersion::V311 | ProtocolVersion::V31 => ReasonCode::UnspecifiedError,
        };
        assert_eq!(ack.reasons, vec![ReasonCode::GrantedQoS1, refused]);
        assert!(matches!(
            actions.as_slice(),
            [Action::Subscribe { filter: f, .. }] if f == &filter("a/#")
        ));
        assert_eq!(h.s.subscriptions().count(), 1);
        // Revoked later (the rules changed): gone, as by UNSUBSCRIBE, nothing sent.
        assert!(h.s.revoke_subscription(&filter("a/#"), &mut h.actions));
        assert!(!h.s.revoke_subscription(&filter("a/#"), &mut h.actions));
        let (packets, actions) = h.take();
        assert!(packets.is_empty());
        assert!(matches!(actions.as_slice(), [Action::Unsubscribe { .. }]));
        assert_eq!(h.s.subscriptions().count(), 0);
    }
}
