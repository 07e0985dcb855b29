//! `Authenticator` tests: settings, the CONNECT decision for every kind of client, the one
//! refusal -> reason code map, reload, SCRAM over the loaded file, and the verifier pool.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::auth::password::tests::TempDir;
use crate::auth::password::{PasswordHash, format_scram_field};
use crate::auth::scram::tests::{Client, exchange};
use crate::auth::scram::{SCRAM_ITERATIONS, ScramCredentials};

/// `alice` / `secret` in mosquitto's `$7$` format (see `password::tests::MOSQUITTO_FILE`).
const ALICE: &str = "alice:$7$101$BW726NgiluKURka5$gt72JOwWhNSE97oHYKGfcphmK9HiLaQH2rynfAW76MlVrAtLUT4Gybfi4auMvJFUj6OYvA5GikSh8mAEZzOygw==\n";

fn with_passwords(text: &str) -> Authenticator {
    let config = AuthConfig {
        password_file: Some("pw".into()),
        ..AuthConfig::default()
    };
    Authenticator::from_texts(&config, Some(text), None, [1; 32]).expect("load")
}

fn verdict(d: Decision) -> Decision {
    match d {
        Decision::NeedsHashCheck(c) => c.verify_blocking(),
        other => other,
    }
}

fn is_allow(d: &Decision) -> bool {
    matches!(d, Decision::Allow)
}

fn refusal(d: &Decision) -> Option<Refusal> {
    match d {
        Decision::Refuse(r) => Some(*r),
        _ => None,
    }
}

#[test]
fn anonymous_default_follows_the_password_file() {
    let mut c = AuthConfig::default();
    assert!(c.anonymous_allowed());
    assert_eq!(c.verifier_threads, DEFAULT_VERIFIER_THREADS);
    c.password_file = Some("pw".into());
    assert!(!c.anonymous_allowed());
    c.allow_anonymous = Some(true);
    assert!(c.anonymous_allowed());
    assert_eq!(c.validate(), Ok(()));

    let nobody = AuthConfig {
        allow_anonymous: Some(false),
        ..AuthConfig::default()
    };
    assert_eq!(nobody.validate(), Err(AuthConfigError::NobodyCanConnect));
    for threads in [0, 17] {
        let c = AuthConfig {
            verifier_threads: threads,
            ..AuthConfig::default()
        };
        assert_eq!(c.validate(), Err(AuthConfigError::VerifierThreads));
    }
}

#[test]
fn connect_decisions() {
    let auth = with_passwords(ALICE);
    let d = |u: Option<&str>, p: Option<&[u8]>| verdict(auth.check_connect(u, p, "client-1"));
    assert!(is_allow(&d(Some("alice"), Some(b"secret"))));
    assert_eq!(
        refusal(&d(Some("alice"), Some(b"wrong"))),
        Some(Refusal::BadCredentials)
    );
    assert_eq!(
        refusal(&d(Some("alice"), None)),
        Some(Refusal::BadCredentials)
    );
    // Unknown users take the same path (a hash check) and get the same answer.
    assert!(matches!(
        auth.check_connect(Some("mallory"), Some(b"secret"), "c"),
        Decision::NeedsHashCheck(_)
    ));
    assert_eq!(
        refusal(&d(Some("mallory"), Some(b"secret"))),
        Some(Refusal::BadCredentials)
    );
    assert_eq!(
        refusal(&d(Some("mallory"), None)),
        Some(Refusal::BadCredentials)
    );
    assert_eq!(
        refusal(&d(None, None)),
        Some(Refusal::NotAuthorized),
        "no anonymous by default"
    );
    assert_eq!(
        refusal(&d(None, Some(b"secret"))),
        Some(Refusal::NotAuthorized)
    );

    let open =
        Authenticator::from_texts(&AuthConfig::default(), None, None, [0; 32]).expect("open");
    assert!(is_allow(&open.check_connect(None, None, "c")));
    assert!(is_allow(&open.check_connect(
        Some("anyone"),
        Some(b"x"),
        "c"
    )));

    let anon_too = AuthConfig {
        password_file: Some("pw".into()),
        allow_anonymous: Some(true),
        ..AuthConfig::default()
    };
    let auth = Authenticator::from_texts(&anon_too, Some(ALICE), None, [0; 32]).expect("load");
    assert!(is_allow(&auth.check_connect(None, None, "c")));
    assert_eq!(
        refusal(&verdict(auth.check_connect(Some("alice"), Some(b"x"), "c"))),
        Some(Refusal::BadCredentials),
        "anonymous allowed does not make a wrong password right"
    );
}

#[test]
fn one_map_from_refusal_to_connack_byte() {
    use ProtocolVersion::{V5, V311};
    let table = [
        (Refusal::BadCredentials, 0x86, 0x04),
        (Refusal::NotAuthorized, 0x87, 0x05),
        (Refusal::ClientIdRefused, 0x85, 0x02),
        (Refusal::ServerBusy, 0x89, 0x03),
        (Refusal::Unavailable, 0x88, 0x03),
        (Refusal::BadAuthMethod, 0x8C, 0x04),
    ];
    for (r, v5, v3) in table {
        assert_eq!(
            (r.connack_byte(V5), r.connack_byte(V311)),
            (v5, v3),
            "{r:?}"
        );
    }
    assert_eq!(
        Refusal::from(ScramError::InvalidProof),
        Refusal::BadCredentials
    );
    assert_eq!(Refusal::from(ScramError::Malformed), Refusal::NotAuthorized);
    assert_eq!(
        Refusal::from(verifier::SubmitError::Busy),
        Refusal::ServerBusy
    );
}

#[test]
fn client_ids_that_patterns_cannot_hold_are_refused() {
    let config = AuthConfig::default();
    let with_c =
        Authenticator::from_texts(&config, None, Some("pattern readwrite d/%c/#\n"), [0; 32])
            .expect("load");
    for id in ["a/b", "+", "x#"] {
        assert_eq!(
            refusal(&with_c.check_connect(None, None, id)),
            Some(Refusal::ClientIdRefused)
        );
    }
    assert!(is_allow(&with_c.check_connect(None, None, "plain")));
    let without_c =
        Authenticator::from_texts(&config, None, Some("topic read #\n"), [0; 32]).expect("load");
    assert!(
        is_allow(&without_c.check_connect(None, None, "a/b")),
        "no %c: no policy"
    );
}

#[test]
fn acl_decisions_default_to_open_without_an_acl() {
    use crate::router::{TopicFilter, TopicName};
    let open =
        Authenticator::from_texts(&AuthConfig::default(), None, None, [0; 32]).expect("open");
    let who = AclSubject::new("c", None);
    let t = TopicName::from_static("a/b");
    let f = TopicFilter::from_static("#");
    assert!(open.acl().is_none());
    assert!(open.may_read(&who, &t) && open.may_publish(&who, &t) && open.may_subscribe(&who, &f));
    let closed = Authenticator::from_texts(
        &AuthConfig::default(),
        None,
        Some("topic read a/#\n"),
        [0; 32],
    )
    .expect("acl");
    assert!(closed.may_read(&who, &t) && !closed.may_publish(&who, &t));
    assert!(!closed.may_subscribe(&who, &f));
}

#[test]
fn reload_replaces_or_keeps_the_old_snapshot() {
    let dir = TempDir::new("reload");
    let pw = dir.0.join("passwords");
    let acl = dir.0.join("acl");
    std::fs::write(&pw, ALICE).expect("write");
    std::fs::write(&acl, "user alice\ntopic read a/#\n").expect("write");
    let config = AuthConfig {
        password_file: Some(pw.clone()),
        acl_file: Some(acl.clone()),
        ..AuthConfig::default()
    };
    let v1 = Authenticator::load(&config).expect("load");
    assert!(is_allow(&verdict(v1.check_connect(
        Some("alice"),
        Some(b"secret"),
        "c"
    ))));

    std::fs::write(&pw, format!("{ALICE}bob:not-a-hash\n")).expect("write");
    let err = v1.reload().expect_err("broken file");
    let shown = err.to_string();
    assert!(
        shown.contains("passwords") && shown.contains("line 2"),
        "{shown}"
    );
    assert!(!shown.contains("not-a-hash"), "{shown}");
    assert!(is_allow(&verdict(v1.check_connect(
        Some("alice"),
        Some(b"secret"),
        "c"
    ))));

    let bob = PasswordHash::argon2id(b"builder", &mut OsRandom).expect("hash");
    std::fs::write(&pw, format!("{ALICE}bob:{bob}\n")).expect("write");
    std::fs::write(&acl, "user alice\ntopic read a/#\nfrobnicate\n").expect("write");
    let err = v1.reload().expect_err("broken ACL");
    assert!(err.to_string().contains("line 3"), "{err}");
    std::fs::write(&acl, "user bob\ntopic read b/#\n").expect("write");
    let v2 = v1.reload().expect("reload");
    assert!(is_allow(&verdict(v2.check_connect(
        Some("bob"),
        Some(b"builder"),
        "c"
    ))));
    let bob_who = AclSubject::new("c", Some("bob"));
    assert!(v2.may_read(&bob_who, &crate::router::TopicName::from_static("b/1")));

    std::fs::remove_file(&acl).expect("rm");
    assert!(matches!(v2.reload(), Err(AuthError::Read { .. })));
    // Permission problems are read errors too (skipped as root, who reads anything).
    std::fs::write(&acl, "").expect("write");
    std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    if std::fs::read(&acl).is_err() {
        assert!(matches!(v2.reload(), Err(AuthError::Read { .. })));
    }
}

#[test]
fn scram_users_come_from_the_password_file() {
    let salt = [5u8; 16];
    let creds = ScramCredentials::derive(b"pencil", &salt, SCRAM_ITERATIONS);
    let hash = PasswordHash::argon2id(b"pencil", &mut OsRandom).expect("hash");
    let file = format!("user:{hash}:{}\n{ALICE}", format_scram_field(&creds));
    let auth = with_passwords(&file);
    assert_eq!(auth.scram_method("SCRAM-SHA-256"), Ok(()));
    assert_eq!(
        auth.scram_method("SCRAM-SHA-1"),
        Err(Refusal::BadAuthMethod)
    );
    let ok = exchange(&auth, &Client::new("user", b"pencil", "n0nce"));
    assert_eq!(ok.map(|s| s.username), Ok("user".to_owned()));
    let wrong = exchange(&auth, &Client::new("user", b"pencil2", "n0nce"));
    assert_eq!(wrong, Err(ScramError::InvalidProof));
    // alice has no SCRAM material; ghost does not exist: both look alike and fail alike.
    for name in ["alice", "ghost"] {
        let r = exchange(&auth, &Client::new(name, b"secret", "n0nce"));
        assert_eq!(r, Err(ScramError::InvalidProof), "{name}");
    }
    let no_file =
        Authenticator::from_texts(&AuthConfig::default(), None, None, [0; 32]).expect("x");
    assert_eq!(
        no_file.scram_method("SCRAM-SHA-256"),
        Err(Refusal::BadAuthMethod)
    );
}

#[test]
fn hash_checks_run_on_the_verifier_pool() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let auth = Arc::new(with_passwords(ALICE));
    let pool = verifier::VerifierPool::start(1).expect("pool");
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake: verifier::Wake = Arc::new(|| {});
    for (conn, pw) in [(1u32, &b"secret"[..]), (2, b"nope")] {
        let Decision::NeedsHashCheck(check) = auth.check_connect(Some("alice"), Some(pw), "c")
        else {
            panic!("hash check expected")
        };
        assert_send_static(&check);
        let job = move || (conn, is_allow(&check.verify_blocking()));
        pool.submit(job, verifier::Reply::new(tx.clone(), wake.clone()))
            .expect("submit");
    }
    let mut got: Vec<(u32, bool)> = (0..2)
        .map(|_| {
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("reply")
        })
        .collect();
    got.sort();
    assert_eq!(got, [(1, true), (2, false)]);
}

#[test]
fn snapshots_can_be_shared_between_shards() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Authenticator>();
    assert_send_sync::<HashCheck>();
}

#[test]
fn debug_output_holds_no_secrets() {
    let auth = with_passwords(ALICE);
    let shown = format!("{auth:?}");
    assert!(
        !shown.contains("BW726") && shown.contains("users: 1"),
        "{shown}"
    );
    let Decision::NeedsHashCheck(check) = auth.check_connect(Some("alice"), Some(b"hunter2"), "c")
    else {
        panic!("hash check expected")
    };
    assert!(!format!("{check:?}").contains("hunter2"));
}
