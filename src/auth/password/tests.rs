//! Password file tests: mosquitto's formats (embedded lines and a live `mosquitto_passwd`),
//! argon2id round trips, the dummy for unknown users, and error messages.

use super::*;
use crate::auth::random::{FixedRandom, OsRandom};

/// Made by the author with mosquitto_passwd 2.0.11 (Debian 12), `-b` batch mode:
/// `mosquitto_passwd -c -b pw alice secret` (default `$7$`, 101 iterations),
/// `mosquitto_passwd -b -H sha512 pw bob hunter2`,
/// `mosquitto_passwd -b -H sha512-pbkdf2 -I 1000 pw carol 'p@ss w:rd'`.
const MOSQUITTO_FILE: &str = "\
alice:$7$101$BW726NgiluKURka5$gt72JOwWhNSE97oHYKGfcphmK9HiLaQH2rynfAW76MlVrAtLUT4Gybfi4auMvJFUj6OYvA5GikSh8mAEZzOygw==
bob:$6$ElS7LpGqBL1sGTGN$ee9BJq6Bb/ZXOCHyh7AYAThbPWiQv7KawnvOhnnWQMgnJZVgmapgNEoGD2Uclfv0Skf1fjnO4xiV/p+bCG8mjA==
carol:$7$1000$s9beQrfDK7/Ua/5n$KHG2jIX3W4SAzyt5oEyzDrgTShjlvcFnmLE7lNOsewtHZLhDZKS0rl/094D/8gEtJP5dhDXHBIwDJw5WnpshJg==
";

fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
    PasswordFile::parse(text, &mut OsRandom)
}

#[test]
fn mosquitto_lines_verify() {
    let f = parse(MOSQUITTO_FILE).expect("mosquitto file");
    assert_eq!(f.len(), 3);
    for (user, good) in [
        ("alice", &b"secret"[..]),
        ("bob", b"hunter2"),
        ("carol", b"p@ss w:rd"),
    ] {
        let c = f.lookup(user);
        assert!(c.verify(good), "{user} with the right password");
        assert!(!c.verify(b"wrong"), "{user} with a wrong password");
        assert!(!c.verify(b""), "{user} with an empty password");
        assert!(c.scram().is_none());
    }
    assert!(
        !f.lookup("alice").verify(b"hunter2"),
        "another user's password"
    );
    assert!(!f.lookup("mallory").verify(b"secret"));
}

/// A directory of its own under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ringmq-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the real `mosquitto_passwd`. Not ignored: CI installs it (`.ci/run`, Debian package
/// `mosquitto`); without it this test fails and says how to get it.
#[test]
fn files_written_by_mosquitto_passwd_verify() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("mosquitto_passwd")
            .args(args)
            .output();
        match out {
            Ok(o) => assert!(o.status.success(), "mosquitto_passwd {args:?}: {o:?}"),
            Err(e) => panic!(
                "cannot run mosquitto_passwd ({e}); install it with \
                 `apt-get install mosquitto` (Debian/Ubuntu) or see .ci/run"
            ),
        }
    };
    let dir = TempDir::new("mosq");
    let file = dir.0.join("pw");
    let path = file.to_str().expect("utf-8 temp path");
    run(&["-c", "-b", path, "dora", "first password"]);
    run(&["-b", "-H", "sha512", path, "emil", "zweites-Passwort"]);
    run(&[
        "-b",
        "-H",
        "sha512-pbkdf2",
        "-I",
        "2000",
        path,
        "fritz",
        "d\u{e9}j\u{e0} vu:3",
    ]);
    run(&["-b", path, "dora", "changed"]);
    let f = parse(&std::fs::read_to_string(&file).expect("read")).expect("parse");
    assert_eq!(f.len(), 3);
    assert!(f.lookup("dora").verify(b"changed"));
    assert!(!f.lookup("dora").verify(b"first password"));
    assert!(f.lookup("emil").verify(b"zweites-Passwort"));
    assert!(f.lookup("fritz").verify("d\u{e9}j\u{e0} vu:3".as_bytes()));
    assert!(!f.lookup("fritz").verify(b"deja vu:3"));
}

#[test]
fn argon2id_round_trip_records_parameters() {
    let h = PasswordHash::argon2id(b"correct horse", &mut OsRandom).expect("hash");
    let text = h.to_string();
    assert!(
        text.starts_with(&format!(
            "$argon2id$v=19$m={ARGON2_M_COST_KIB},t={ARGON2_T_COST},p={ARGON2_P_COST}$"
        )),
        "{text}"
    );
    let parsed = PasswordHash::parse(&text).expect("parse");
    assert_eq!(parsed, h);
    assert!(parsed.verify(b"correct horse"));
    assert!(!parsed.verify(b"correct horsE"));
    // A fixed salt gives the same hash: the only randomness is the salt.
    let a = PasswordHash::argon2id(b"x", &mut FixedRandom::new(&[9; 16])).expect("a");
    let b = PasswordHash::argon2id(b"x", &mut FixedRandom::new(&[9; 16])).expect("b");
    assert_eq!(a, b);
}

#[test]
fn argon2_hashes_from_other_tools_and_costs_verify() {
    // Other parameters than ours (as another tool or an older RingMQ would write them).
    let argon = Argon2::new(
        Algorithm::Argon2i,
        Version::V0x13,
        Params::new(64, 1, 2, Some(24)).expect("params"),
    );
    let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
    let phc = argon.hash_password(b"pw", &salt).expect("hash").to_string();
    assert!(phc.starts_with("$argon2i$v=19$m=64,t=1,p=2$"), "{phc}");
    let h = PasswordHash::parse(&phc).expect("parse");
    assert!(h.verify(b"pw"));
    assert!(!h.verify(b"pW"));
}

#[test]
fn unknown_users_verify_against_a_dummy_of_the_same_cost() {
    let f = parse(MOSQUITTO_FILE).expect("file");
    let ghost = f.lookup("ghost");
    match (&ghost.entry.hash, &f.lookup("alice").entry.hash) {
        (
            PasswordHash::Pbkdf2Sha512 {
                iterations: a,
                salt,
                hash,
            },
            PasswordHash::Pbkdf2Sha512 {
                iterations: b,
                salt: real_salt,
                ..
            },
        ) => {
            assert_eq!(a, b, "same iteration count as the first user");
            assert_eq!(salt.len(), real_salt.len());
            assert_ne!(salt, real_salt, "a fresh salt, not the user's");
            assert!(hash.iter().all(|&b| b == 0));
        }
        other => panic!("dummy of another kind: {other:?}"),
    }
    assert!(!ghost.verify(b"secret"));

    let ours = format!(
        "u:{}\n",
        PasswordHash::argon2id(b"pw", &mut OsRandom).expect("hash")
    );
    let f = parse(&ours).expect("file");
    let PasswordHash::Argon2(dummy) = &f.lookup("ghost").entry.hash else {
        panic!("dummy of another kind")
    };
    let params = format!("m={ARGON2_M_COST_KIB},t={ARGON2_T_COST},p={ARGON2_P_COST}$");
    assert!(dummy.contains(&params), "{dummy}");
    assert!(!f.lookup("ghost").verify(b"pw"));

    // No users at all: the dummy still costs an argon2id verification with our parameters.
    let empty = parse("# nobody\n").expect("empty");
    assert!(empty.is_empty());
    let PasswordHash::Argon2(dummy) = &empty.lookup("x").entry.hash else {
        panic!("dummy of another kind")
    };
    assert!(dummy.contains(&params), "{dummy}");
    assert!(!empty.lookup("x").verify(b""));
}

#[test]
fn comments_blank_lines_crlf_and_blanks_around_fields() {
    let text = format!(
        "# users\r\n\r\n   \n  # indented comment\n  alice : {} \r\nbob:{}\n",
        MOSQUITTO_FILE
            .lines()
            .next()
            .expect("alice")
            .split_once(':')
            .expect(":")
            .1,
        MOSQUITTO_FILE
            .lines()
            .nth(1)
            .expect("bob")
            .split_once(':')
            .expect(":")
            .1,
    );
    let f = parse(&text).expect("parse");
    assert_eq!(f.len(), 2);
    assert!(f.lookup("alice").verify(b"secret"));
    assert!(f.lookup("bob").verify(b"hunter2"));
}

#[test]
fn scram_field_round_trip() {
    let creds = ScramCredentials::derive(b"pencil", b"0123456789abcdef", 4096);
    let field = format_scram_field(&creds);
    assert!(field.starts_with("$scram-sha-256$i=4096$"), "{field}");
    assert_eq!(parse_scram_field(&field), Ok(creds.clone()));
    let hash = PasswordHash::argon2id(b"pencil", &mut OsRandom).expect("hash");
    let f = parse(&format!("user:{hash}:{field}\n")).expect("parse");
    let c = f.lookup("user");
    assert!(c.verify(b"pencil"));
    assert_eq!(c.scram(), Some(&creds));
    assert_eq!(f.lookup("nobody").scram(), None);
    for bad in [
        "$scram-sha-1$i=4096$AAAA$AAAA$AAAA",
        "$scram-sha-256$i=0$c2FsdA==$",
        "$scram-sha-256$4096$c2FsdA==$x$y",
        "$scram-sha-256$i=4096$$a$b",
        "$scram-sha-256$i=4096$c2FsdA==$c2FsdA==$c2FsdA==",
    ] {
        assert_eq!(parse_scram_field(bad), Err(LineError::BadScram), "{bad}");
    }
    let mut extra = field.clone();
    extra.push_str("$AAAA");
    assert_eq!(parse_scram_field(&extra), Err(LineError::BadScram));
}

#[test]
fn errors_name_the_line_and_reason_and_nothing_secret() {
    let hash = MOSQUITTO_FILE
        .lines()
        .nth(1)
        .expect("bob")
        .split_once(':')
        .expect(":")
        .1;
    let cases: Vec<(String, usize, LineError)> = vec![
        ("# c\nnocolon\n".into(), 2, LineError::MissingSeparator),
        (format!(":{hash}\n"), 1, LineError::EmptyUser),
        (format!("a:{hash}\n\na:{hash}\n"), 3, LineError::DuplicateUser),
        ("a:plaintext-password\n".into(), 1, LineError::UnknownHashFormat),
        ("a:\n".into(), 1, LineError::UnknownHashFormat),
        ("a:$6$c2FsdA==$c2FsdA==\n".into(), 1, LineError::BadSha512),
        ("a:$6$onlysalt\n".into(), 1, LineError::BadSha512),
        ("a:$7$x$AAAAAAAAAAAAAAAA$AA\n".into(), 1, LineError::BadPbkdf2),
        ("a:$7$0$AAAAAAAAAAAAAAAA$AA\n".into(), 1, LineError::BadIterations),
        ("a:$7$99999999$AAAAAAAAAAAAAAAA$AA\n".into(), 1, LineError::BadIterations),
        ("a:$argon2id$v=19$m=64,t=1,p=1$short\n".into(), 1, LineError::BadArgon2),
        (
            "a:$argon2id$v=19$m=2000000,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
                .into(),
            1,
            LineError::Argon2TooCostly,
        ),
        ("a:$argon2id$v=19$m=64,t=1,p=1\n".into(), 1, LineError::BadArgon2),
        (format!("a:{hash}:$scram-sha-256$i=1\n"), 1, LineError::BadScram),
        (format!("a:{hash}:x:y\n"), 1, LineError::BadScram),
    ];
    for (text, line, reason) in cases {
        let err = parse(&text).expect_err(&text);
        assert_eq!(err, PasswordFileError::Line { line, reason }, "{text}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("line {line}: ")), "{shown}");
        assert!(!shown.contains("plaintext-password") && !shown.contains("c2FsdA"));
    }
    // A third field after a valid SCRAM field.
    let scram = format_scram_field(&ScramCredentials::derive(b"p", b"s", 1));
    let err = parse(&format!("a:{hash}:{scram}:more\n")).expect_err("4 fields");
    assert_eq!(
        err,
        PasswordFileError::Line {
            line: 1,
            reason: LineError::TooManyFields
        }
    );
}

#[test]
fn debug_output_hides_hashes() {
    let f = parse(MOSQUITTO_FILE).expect("file");
    let shown = format!("{f:?}");
    assert!(!shown.contains("BW726"), "{shown}");
    assert!(shown.contains("mosquitto-pbkdf2-sha512"));
}

#[test]
fn hashes_print_in_file_form() {
    for line in MOSQUITTO_FILE.lines() {
        let (_, field) = line.split_once(':').expect(":");
        assert_eq!(
            PasswordHash::parse(field).expect("parse").to_string(),
            field
        );
    }
}
