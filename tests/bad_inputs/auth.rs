//! bad-input row 19 (ACL pattern substitution), row 23 with a password file in force, ways
//! around authentication (pipelined packets behind a refused CONNECT, a second CONNECT
//! while the first is checked, a SCRAM user that differs from the CONNECT's user name,
//! a refused client homed on another shard), and password files the broker must refuse
//! (at start, with exit status 1 and the file and line named; at reload, keeping the rules
//! in force). Brokers here allow anonymous clients too, so the bystander can connect.

use std::time::Duration;

use ringmq::codec::ReasonCode as R;
use ringmq::codec::{Packet, ProtocolVersion, QoS};
use ringmq::config::Config;

use super::common::authfiles::AuthFiles;
use super::common::process::{BrokerProcess, DataDir};
use super::common::{Client, connect_credentials};
use super::{
    cat, connect_raw, lp, publish_raw, refused_at_connect, unique_id, with_bystander_config,
};

/// Bystander rules plus `extra`: anonymous clients may use `bystander/#`.
fn acl_text(extra: &str) -> String {
    format!("topic readwrite bystander/#\n{extra}")
}

/// Points the config at the files that exist and lets anonymous clients in.
fn use_files(files: &AuthFiles) -> impl FnOnce(&mut Config) {
    let (passwd, acl) = (files.passwd(), files.acl());
    move |c: &mut Config| {
        c.auth.password_file = passwd.exists().then_some(passwd);
        c.auth.acl_file = acl.exists().then_some(acl);
        c.auth.allow_anonymous = Some(true);
    }
}

fn connect_ok(addr: std::net::SocketAddr, v: ProtocolVersion, id: &str, user: &str) -> Client {
    let (c, ack) = Client::connect_with(addr, connect_credentials(v, id, Some(user), None));
    assert_eq!(ack.reason, R::Success, "{id} as {user}");
    c
}

fn sub_code(c: &mut Client, filter: &str) -> R {
    c.subscribe(filter, QoS::AtLeastOnce).reasons[0]
}

/// Row 19: `+`, `#` or `/` in a user name or client id never widen a pattern. User name
/// `a/#` with `pattern readwrite dev/%u/#` gets nothing (it would grant `dev/a/#/...`, i.e.
/// all of `dev/a`); a `deny` pattern with such a value denies everything; a client id with
/// `/` is refused at CONNECT (0x85 / 3.x 0x02) while the ACL has `%c` patterns.
fn row_19_acl_pattern_substitution(v: ProtocolVersion) {
    let files = AuthFiles::new("row19");
    files.write_acl(&acl_text(
        "user x/y\ntopic read public/#\n\
         pattern readwrite dev/%u/#\npattern read box/%c/#\npattern deny private/%u/#\n",
    ));
    with_bystander_config(v, use_files(&files), |broker| {
        let addr = broker.addr;
        let no = if v.is_v5() {
            R::NotAuthorized
        } else {
            R::UnspecifiedError
        };
        // The control: a plain user name gets its pattern.
        let mut a = connect_ok(addr, v, &unique_id("row19"), "a");
        assert_eq!(sub_code(&mut a, "dev/a/#"), R::GrantedQoS1);
        for user in ["a/#", "+", "#", "a/b", "dev/+"] {
            let mut c = connect_ok(addr, v, &unique_id("row19"), user);
            for f in ["dev/a/#", "dev/+/#", "dev/#", "#", "dev/a/b"] {
                assert_eq!(sub_code(&mut c, f), no, "user {user:?} subscribing {f}");
            }
            c.publish("dev/a/x", b"x", QoS::AtMostOnce, false);
            c.ping();
        }
        // Nothing the wildcard user names reached the real user's topics.
        a.expect_nothing();
        // Deny pattern with an unsafe value: fails closed, even for its own read rule.
        let mut xy = connect_ok(addr, v, &unique_id("row19"), "x/y");
        assert_eq!(
            sub_code(&mut xy, "public/#"),
            no,
            "deny %u with '/' denies all"
        );
        // %c with '/', '+' or '#' in the client id: refused at CONNECT.
        for id in ["c/1", "c+", "c#"] {
            let bytes = connect_raw(v, 0x02, &[], &lp(id.as_bytes()));
            if v.is_v5() {
                refused_at_connect(addr, v, &bytes, &[R::ClientIdentifierNotValid], id);
                continue;
            }
            // 3.x has a return code for this refusal (0x02), so it is not a plain close.
            let mut c = Client::tcp(addr, v);
            c.send_bytes(&bytes);
            match c.recv() {
                Packet::ConnAck(a) => assert_eq!(a.reason.v3_connack_return_code(), 0x02),
                other => panic!("{id}: expected CONNACK 0x02, got {other:?}"),
            }
            c.expect_closed();
        }
        let mut ok = Client::connect(addr, v, &unique_id("c1"), true).0;
        assert_eq!(
            sub_code(&mut ok, "box/nothing/#"),
            no,
            "another client's box"
        );
    });
}

/// Row 23 with a password file in force: an unsupported method is 0x8C, auth data without a
/// method 0x82 (the decoder), and SCRAM-SHA-256 is the one method that starts an exchange.
/// (5.0 only: 3.x has no properties.)
#[test]
fn row_23_methods_with_a_password_file() {
    let v = ProtocolVersion::V5;
    let files = AuthFiles::new("row23");
    files.ringmq_user("user", "pencil");
    with_bystander_config(v, use_files(&files), |broker| {
        let str_prop = |id: u8, s: &[u8]| cat(&[&[id], &lp(s)]);
        for (method, want) in [
            (&b"SCRAM-X"[..], R::BadAuthenticationMethod),
            (b"SCRAM-SHA-1", R::BadAuthenticationMethod),
            (b"", R::BadAuthenticationMethod),
        ] {
            let props = cat(&[&str_prop(0x15, method), &str_prop(0x16, b"n,,n=user,r=a")]);
            let bytes = connect_raw(v, 0x02, &props, &lp(b"m23"));
            refused_at_connect(broker.addr, v, &bytes, &[want], "method");
        }
        let data_only = connect_raw(v, 0x02, &str_prop(0x16, b"x"), &lp(b"m23"));
        refused_at_connect(broker.addr, v, &data_only, &[R::ProtocolError], "data only");
        let props = cat(&[
            &str_prop(0x15, b"SCRAM-SHA-256"),
            &str_prop(0x16, b"n,,n=user,r=abc"),
        ]);
        let mut c = Client::tcp(broker.addr, v);
        c.send_bytes(&connect_raw(v, 0x02, &props, &lp(b"m23")));
        assert!(
            matches!(c.recv(), Packet::Auth(a) if a.reason == R::ContinueAuthentication),
            "SCRAM-SHA-256 starts an exchange"
        );
        c.drop_connection();
    });
}

/// Packets behind a CONNECT whose password is wrong, or behind one still being checked,
/// never act: not a pipelined PUBLISH, not a second CONNECT with the right password, and not
/// on another shard (the check runs before the hand-off).
fn auth_bypass_by_pipelining(v: ProtocolVersion) {
    let files = AuthFiles::new("bypass");
    files.mosquitto_user("alice", "right", &[]);
    files.write_acl(&acl_text("user alice\ntopic readwrite #\n"));
    with_bystander_config(v, use_files(&files), |broker| {
        let addr = broker.addr;
        let mut watcher = Client::connect_with(
            addr,
            connect_credentials(v, &unique_id("watch"), Some("alice"), Some(b"right")),
        )
        .0;
        watcher.subscribe("secret/#", QoS::AtMostOnce);
        for home in 0..2 {
            let id = broker.client_id_on("intruder", home);
            let wrong = |pw: &[u8]| cat(&[&lp(id.as_bytes()), &lp(b"alice"), &lp(pw)]);
            let connect = |pw: &[u8]| connect_raw(v, 0xC2, &[], &wrong(pw));
            let publish = publish_raw(v, 0x30, b"secret/x", None, &[], b"stolen");
            for bytes in [
                cat(&[&connect(b"wrong"), &publish]),
                cat(&[&connect(b"wrong"), &connect(b"right"), &publish]),
            ] {
                let mut c = Client::tcp(addr, v);
                c.send_bytes(&bytes);
                let got = c.expect_closed();
                assert!(
                    matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason.is_error()),
                    "only a refusal: {got:?}"
                );
            }
            // Right password, then a second CONNECT: a protocol violation after CONNACK.
            let mut c = Client::tcp(addr, v);
            c.send_bytes(&cat(&[&connect(b"right"), &connect(b"right"), &publish]));
            assert!(matches!(c.recv(), Packet::ConnAck(a) if a.reason == R::Success));
            c.expect_closed();
        }
        watcher.expect_nothing();
        watcher.ping();
    });
}

/// With SCRAM the rules apply to the user the exchange proved, whatever the CONNECT's user
/// name field says.
#[test]
fn auth_bypass_by_a_user_name_field_next_to_scram() {
    let files = AuthFiles::new("scram-name");
    files.ringmq_user("user", "pencil");
    files.ringmq_user("admin", "other");
    files.write_acl(&acl_text(
        "user admin\ntopic readwrite #\nuser user\ntopic readwrite user/#\n",
    ));
    with_bystander_config(ProtocolVersion::V5, use_files(&files), |broker| {
        let mut c = Client::tcp(broker.addr, ProtocolVersion::V5);
        let mut connect = connect_credentials(ProtocolVersion::V5, "sn", Some("admin"), None);
        connect.properties.authentication_method = Some(super::common::s("SCRAM-SHA-256"));
        connect.properties.authentication_data =
            Some(bytes::Bytes::from_static(b"n,,n=user,r=abcdef"));
        c.send(&Packet::Connect(Box::new(connect)));
        let server_first = match c.recv() {
            Packet::Auth(a) => a.properties.authentication_data.expect("data"),
            other => panic!("expected AUTH, got {other:?}"),
        };
        let fin = scram_final("n=user,r=abcdef", &server_first, b"pencil");
        c.send(&Packet::Auth(ringmq::codec::Auth {
            reason: R::ContinueAuthentication,
            properties: ringmq::codec::AuthProperties {
                authentication_method: Some(super::common::s("SCRAM-SHA-256")),
                authentication_data: Some(fin.into()),
                ..Default::default()
            },
        }));
        assert!(matches!(c.recv(), Packet::ConnAck(a) if a.reason == R::Success));
        assert_eq!(
            sub_code(&mut c, "admin/#"),
            R::NotAuthorized,
            "the proven user's rules"
        );
        assert_eq!(sub_code(&mut c, "user/#"), R::GrantedQoS1);
    });
}

/// client-final for `bare` (client-first-message-bare) and `server_first` (RFC 5802).
fn scram_final(bare: &str, server_first: &[u8], password: &[u8]) -> Vec<u8> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let hmac = |k: &[u8], m: &[u8]| -> [u8; 32] {
        let mut h = Hmac::<Sha256>::new_from_slice(k).expect("key");
        h.update(m);
        h.finalize().into_bytes().into()
    };
    let sf = std::str::from_utf8(server_first).expect("ascii");
    let attr = |k: &str| sf.split(',').find_map(|a| a.strip_prefix(k)).expect("attr");
    let salt = B64.decode(attr("s=")).expect("salt");
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, attr("i=").parse().expect("i"), &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let without = format!("c=biws,r={}", attr("r="));
    let sig = hmac(
        &Sha256::digest(client_key),
        format!("{bare},{sf},{without}").as_bytes(),
    );
    let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
    format!("{without},p={}", B64.encode(proof)).into_bytes()
}

both_versions!(row_19_acl_pattern_substitution, auth_bypass_by_pipelining,);

/// A `[auth]` table pointing at `passwd` in `files`, as a config file.
fn config_file(files: &AuthFiles, data: &DataDir) -> std::path::PathBuf {
    let path = data.0.join("ringmq.toml");
    let text = format!(
        "[auth]\npassword_file = \"{}\"\n",
        AuthFiles::path_str(&files.passwd())
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// Password files the broker refuses to start with: exit status 1, the file and line named,
/// never the line's content. Lines mosquitto tools leave (comments, blank lines, CRLF) are
/// fine.
#[test]
fn password_file_parsing_at_start() {
    let base = "alice:$7$101$yhe3Fc6H/XESrwmH$jZ/rv8UDsMCh6Me5ZuJ1uA/OUnhYApX6cLNXc6O6SnS5m3rurUPXt4UI5Mxxl7p+7pu3ap3AE2w5+hQPvoc3DA==";
    let cases = [
        ("no separator", "# users\nalice\n", Some(2)),
        ("unknown format", "alice:$1$abc$def\n", Some(1)),
        ("duplicate user", &format!("{base}\n{base}\n")[..], Some(2)),
        (
            "iterations out of range",
            "alice:$7$999999999$yhe3Fc6H/XESrwmH$jZ/r\n",
            Some(1),
        ),
        (
            "truncated hash",
            "alice:$7$101$yhe3Fc6H/XESrwmH$jZ/rv8\n",
            Some(1),
        ),
        (
            "empty user name",
            ":$7$101$yhe3Fc6H/XESrwmH$jZ/rv8\n",
            Some(1),
        ),
        (
            "comments, blank lines, CRLF",
            &format!("# c\r\n\r\n{base}\r\n")[..],
            None,
        ),
    ];
    for (what, text, bad_line) in cases {
        let files = AuthFiles::new("pwparse");
        files.write_passwd(text);
        let data = DataDir::new("pwparse");
        let config = config_file(&files, &data);
        let args = ["--config", AuthFiles::path_str(&config)];
        match (BrokerProcess::try_start_in(&data, &args), bad_line) {
            (Err((status, log)), Some(line)) => {
                assert!(status.contains("exit status: 1"), "{what}: {status}");
                assert!(log.contains("passwd"), "{what}: names the file: {log}");
                assert!(log.contains(&format!("line {line}")), "{what}: {log}");
                assert!(!log.contains("yhe3Fc6H"), "{what}: no content: {log}");
            }
            (Ok(b), None) => drop(b),
            (Ok(_), Some(_)) => panic!("{what}: started"),
            (Err((status, log)), None) => panic!("{what}: did not start ({status}): {log}"),
        }
    }
}

/// SIGHUP with a password file that no longer parses (or is gone) keeps the users in force
/// and logs the file, line and reason; a good file afterwards takes effect (reloaded with
/// `ringmq reload --pid PID`).
#[test]
fn password_file_parsing_at_reload() {
    let files = AuthFiles::new("pwreload");
    files.mosquitto_user("alice", "one", &[]);
    let data = DataDir::new("pwreload");
    let config = config_file(&files, &data);
    let broker = BrokerProcess::start_in(&data, &["--config", AuthFiles::path_str(&config)]);
    let v = ProtocolVersion::V5;
    let login = |pw: &str| {
        let c = connect_credentials(v, &unique_id("pw"), Some("alice"), Some(pw.as_bytes()));
        let (client, ack) = Client::connect_with(broker.addr, c);
        if ack.reason == R::Success {
            client.disconnect();
        }
        ack.reason
    };
    assert_eq!(login("one"), R::Success);
    let good = std::fs::read_to_string(files.passwd()).expect("passwd");
    for (broken, needle) in [
        (format!("{good}bob\n"), "line 2"),
        (format!("{good}{good}"), "line 2"),
    ] {
        files.write_passwd(&broken);
        hup_and_wait(&broker, needle);
        assert_eq!(login("one"), R::Success, "old users stay");
    }
    std::fs::remove_file(files.passwd()).expect("remove");
    hup_and_wait(&broker, "cannot read");
    assert_eq!(login("one"), R::Success, "old users stay");
    files.mosquitto_user("alice", "two", &[]);
    // `ringmq reload --pid PID` is SIGHUP by another name.
    let seen = broker.log().matches("files reloaded").count();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["reload", "--pid", &broker.pid().to_string()])
        .status()
        .expect("ringmq reload");
    assert!(status.success());
    while broker.log().matches("files reloaded").count() == seen {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(login("one"), R::BadUserNameOrPassword);
    assert_eq!(login("two"), R::Success);
    assert!(!broker.log().contains("$7$"), "no hash in the log");
}

/// SIGHUP, then waits for one more log line holding `needle`.
fn hup_and_wait(broker: &BrokerProcess, needle: &str) {
    let start = std::time::Instant::now();
    let seen = broker.log().matches(needle).count();
    broker.signal(libc::SIGHUP);
    while broker.log().matches(needle).count() == seen {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no {needle:?} in the log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
