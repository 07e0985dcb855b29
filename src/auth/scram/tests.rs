//! SCRAM-SHA-256 server tests: the RFC 7677 example byte for byte, a client written from
//! RFC 5802 section 3, and the ways an exchange must fail.

use super::*;
use crate::auth::random::{FixedRandom, OsRandom};

/// RFC 7677 section 3.
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

/// One user, `user` / `pencil` with the RFC's salt; everyone else unknown.
pub(crate) struct OneUser(ScramCredentials);

impl ScramUsers for OneUser {
    fn scram_user(&self, username: &str) -> ScramUser {
        if username == "user" {
            ScramUser::known(self.0.clone())
        } else {
            ScramUser::unknown(&[7; 32], username)
        }
    }
}

pub(crate) fn rfc_users() -> OneUser {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
    OneUser(ScramCredentials::derive(b"pencil", &salt, 4096))
}

/// Random bytes that the nonce sampler turns into `chars` (each char's index in PRINTABLE).
fn bytes_for_nonce(chars: &str) -> Vec<u8> {
    chars
        .bytes()
        .map(|c| PRINTABLE.iter().position(|&p| p == c).expect("printable") as u8)
        .collect()
}

#[test]
fn rfc7677_example_byte_for_byte() {
    let users = rfc_users();
    let mut rng = FixedRandom::new(&bytes_for_nonce(RFC_SERVER_NONCE));
    let mut server = ScramServer::new();
    let first = server
        .handle_client_first(RFC_CLIENT_FIRST.as_bytes(), &users, &mut rng)
        .expect("client-first");
    assert_eq!(first, RFC_SERVER_FIRST.as_bytes());
    let done = server
        .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
        .expect("client-final");
    assert_eq!(done.username, "user");
    assert_eq!(done.server_final, RFC_SERVER_FINAL.as_bytes());
    assert_eq!(
        server.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
        Err(ScramError::OutOfOrder),
        "an exchange cannot be replayed"
    );
}

/// A SCRAM-SHA-256 client following RFC 5802 section 3 step by step, independent of the
/// server's code paths except the shared `hmac` helper.
pub(crate) struct Client {
    password: Vec<u8>,
    nonce: String,
    first_bare: String,
}

impl Client {
    pub(crate) fn new(user: &str, password: &[u8], nonce: &str) -> Client {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Client {
            password: password.to_vec(),
            nonce: nonce.to_owned(),
            first_bare: format!("n={name},r={nonce}"),
        }
    }

    pub(crate) fn first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// client-final and the ServerSignature the server must answer with.
    pub(crate) fn last(&self, server_first: &str) -> (String, String) {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = Some(v.to_owned()),
                ("s=", v) => salt = Some(B64.decode(v).expect("salt")),
                ("i=", v) => iterations = Some(v.parse::<u32>().expect("i")),
                _ => panic!("unexpected attribute {attr}"),
            }
        }
        let (nonce, salt, i) = (nonce.expect("r"), salt.expect("s"), iterations.expect("i"));
        assert!(nonce.starts_with(&self.nonce), "server nonce extends ours");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, i, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, &[b"Server Key"]);
        let server_signature = hmac(&server_key, &[auth.as_bytes()]);
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_signature)),
        )
    }
}

/// Runs a whole exchange with OS randomness; the server's result.
pub(crate) fn exchange(
    users: &dyn ScramUsers,
    client: &Client,
) -> Result<ScramSuccess, ScramError> {
    let mut server = ScramServer::new();
    let first = server.handle_client_first(client.first().as_bytes(), users, &mut OsRandom)?;
    let first = std::str::from_utf8(&first).expect("server-first is ASCII");
    let (fin, expected_v) = client.last(first);
    let done = server.handle_client_final(fin.as_bytes())?;
    assert_eq!(
        done.server_final,
        expected_v.as_bytes(),
        "server proves the key"
    );
    Ok(done)
}

#[test]
fn rfc_client_against_server() {
    let users = rfc_users();
    let ok = exchange(
        &users,
        &Client::new("user", b"pencil", "fyko+d2lbbFgONRv9qkxdawL"),
    );
    assert_eq!(ok.map(|s| s.username), Ok("user".to_owned()));
    let bad = exchange(
        &users,
        &Client::new("user", b"pencil!", "fyko+d2lbbFgONRv9qkxdawL"),
    );
    assert_eq!(bad, Err(ScramError::InvalidProof));
}

#[test]
fn server_nonce_is_fresh_and_printable() {
    let users = rfc_users();
    let mut nonces = Vec::new();
    for _ in 0..2 {
        let mut s = ScramServer::new();
        let first = s
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes(), &users, &mut OsRandom)
            .expect("first");
        let first = String::from_utf8(first.to_vec()).expect("ascii");
        let nonce = first[2..].split(',').next().expect("r").to_owned();
        assert_eq!(
            nonce.len(),
            "rOprNGfwEbeRWgbNEkqO".len() + SERVER_NONCE_CHARS
        );
        assert!(is_nonce(&nonce));
        nonces.push(nonce);
    }
    assert_ne!(nonces[0], nonces[1]);
}

#[test]
fn unknown_user_looks_like_a_known_one_and_fails_at_the_proof() {
    let users = rfc_users();
    let first_of = |name: &str| {
        let mut s = ScramServer::new();
        let c = Client::new(name, b"pencil", "abc");
        let first = s
            .handle_client_first(c.first().as_bytes(), &users, &mut OsRandom)
            .expect("first");
        String::from_utf8(first.to_vec()).expect("ascii")
    };
    let salt_iter = |first: &str| first.split_once(",s=").map(|(_, r)| r.to_owned());
    // Stable salt per unknown name, as a real user's is; same iteration count.
    assert_eq!(salt_iter(&first_of("ghost")), salt_iter(&first_of("ghost")));
    assert_ne!(salt_iter(&first_of("ghost")), salt_iter(&first_of("other")));
    assert!(first_of("ghost").ends_with(",i=4096"));
    let r = exchange(&users, &Client::new("ghost", b"pencil", "abc"));
    assert_eq!(r, Err(ScramError::InvalidProof));
}

#[test]
fn escaped_names_and_matching_authzid() {
    let salt = [1u8; 16];
    let creds = ScramCredentials::derive(b"pw", &salt, 4096);
    struct Named(ScramCredentials);
    impl ScramUsers for Named {
        fn scram_user(&self, username: &str) -> ScramUser {
            if username == "a,b=c" {
                ScramUser::known(self.0.clone())
            } else {
                ScramUser::unknown(&[0; 32], username)
            }
        }
    }
    let users = Named(creds);
    let ok = exchange(&users, &Client::new("a,b=c", b"pw", "n1"));
    assert_eq!(ok.map(|s| s.username), Ok("a,b=c".to_owned()));

    let mut s = ScramServer::new();
    let msg = b"n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=x";
    assert!(s.handle_client_first(msg, &users, &mut OsRandom).is_ok());
    let mut s = ScramServer::new();
    let msg = b"n,a=admin,n=a=2Cb=3Dc,r=x";
    assert_eq!(
        s.handle_client_first(msg, &users, &mut OsRandom),
        Err(ScramError::AuthzidNotSupported)
    );
}

#[test]
fn bad_client_first_messages() {
    let users = rfc_users();
    let cases: &[(&[u8], ScramError)] = &[
        (b"", ScramError::Malformed),
        (b"n,,", ScramError::Malformed),
        (b"x,,n=user,r=abc", ScramError::Malformed),
        (
            b"p=tls-unique,,n=user,r=abc",
            ScramError::ChannelBindingNotSupported,
        ),
        (b"n,,m=ext,n=user,r=abc", ScramError::ExtensionNotSupported),
        (b"n,,n=,r=abc", ScramError::Malformed),
        (b"n,,n=us=er,r=abc", ScramError::Malformed),
        (b"n,,n=user=2", ScramError::Malformed),
        (b"n,,n=user", ScramError::Malformed),
        (b"n,,n=user,r=", ScramError::Malformed),
        (b"n,,n=user,r=a b", ScramError::Malformed),
        (b"n,,r=abc,n=user", ScramError::Malformed),
        (b"n,,n=user,r=abc,1=x", ScramError::Malformed),
        (b"n,,n=user,r=abc,x", ScramError::Malformed),
        (b"n,x,n=user,r=abc", ScramError::Malformed),
        (b"n,,n=\xff,r=abc", ScramError::Malformed),
    ];
    for (msg, want) in cases {
        let mut s = ScramServer::new();
        let got = s.handle_client_first(msg, &users, &mut OsRandom);
        assert_eq!(got, Err(*want), "{:?}", String::from_utf8_lossy(msg));
        assert_eq!(
            s.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(ScramError::OutOfOrder),
            "a failed exchange stays failed"
        );
    }
    let mut s = ScramServer::new();
    let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
    assert_eq!(
        s.handle_client_first(long.as_bytes(), &users, &mut OsRandom),
        Err(ScramError::TooLong)
    );
    // Extensions after the nonce are allowed and ignored; `y` is accepted (RFC 5802 s. 6).
    let mut s = ScramServer::new();
    assert!(
        s.handle_client_first(b"y,,n=user,r=abc,x=1", &users, &mut OsRandom)
            .is_ok()
    );
}

/// Starts the RFC exchange and returns the server waiting for client-final.
fn rfc_server_after_first(users: &OneUser) -> ScramServer {
    let mut rng = FixedRandom::new(&bytes_for_nonce(RFC_SERVER_NONCE));
    let mut server = ScramServer::new();
    server
        .handle_client_first(RFC_CLIENT_FIRST.as_bytes(), users, &mut rng)
        .expect("first");
    server
}

#[test]
fn bad_client_final_messages() {
    let users = rfc_users();
    let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let cases: Vec<(String, ScramError)> = vec![
        (String::new(), ScramError::Malformed),
        (format!("c=biws,r={nonce}"), ScramError::Malformed),
        (format!("c=biws,r={nonce},p=AAAA"), ScramError::Malformed),
        (format!("c=biws,r={nonce},p=!!!"), ScramError::Malformed),
        (format!("r={nonce},c=biws,p={proof}"), ScramError::Malformed),
        (
            format!("c=eSws,r={nonce},p={proof}"),
            ScramError::ChannelBindingMismatch,
        ),
        (format!("c=b!ws,r={nonce},p={proof}"), ScramError::Malformed),
        (
            format!("c=biws,r={nonce}x,p={proof}"),
            ScramError::NonceMismatch,
        ),
        (
            format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,p={proof}"),
            ScramError::NonceMismatch,
        ),
        // The right proof for a different client-final (an extension added): wrong.
        (
            format!("c=biws,r={nonce},x=1,p={proof}"),
            ScramError::InvalidProof,
        ),
        (
            format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVR="),
            ScramError::Malformed, // non-canonical padding bits
        ),
        (
            format!("c=biws,r={nonce},p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
            ScramError::InvalidProof,
        ),
    ];
    for (msg, want) in cases {
        let mut server = rfc_server_after_first(&users);
        assert_eq!(
            server.handle_client_final(msg.as_bytes()),
            Err(want),
            "{msg}"
        );
    }
    let mut fresh = ScramServer::new();
    assert_eq!(
        fresh.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic generator (xorshift): messages mutated from valid ones.
    let users = rfc_users();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let base = if next() % 2 == 0 {
            RFC_CLIENT_FIRST
        } else {
            RFC_CLIENT_FINAL
        };
        let mut msg = base.as_bytes().to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % (msg.len() + 1);
            match next() % 3 {
                0 if at < msg.len() => msg[at] = next() as u8,
                1 => msg.insert(at, next() as u8),
                _ => msg.truncate(at),
            }
        }
        let mut rng = FixedRandom::new(&bytes_for_nonce(RFC_SERVER_NONCE));
        let mut s = ScramServer::new();
        let _ = s.handle_client_first(&msg, &users, &mut rng);
        let _ = s.handle_client_final(&msg);
        let mut s = rfc_server_after_first(&users);
        let _ = s.handle_client_final(&msg);
    }
}

#[test]
fn nonce_sampler_rejects_biased_bytes_and_gives_up_on_a_stuck_source() {
    // 186..=255 are redrawn: with them interleaved the RFC nonce still comes out.
    let mut bytes = Vec::new();
    for b in bytes_for_nonce(RFC_SERVER_NONCE) {
        bytes.extend([200, b]);
    }
    bytes.resize(bytes.len() + 64, 255);
    let mut nonce = String::new();
    push_server_nonce(&mut nonce, &mut FixedRandom::new(&bytes)).expect("nonce");
    assert_eq!(nonce, RFC_SERVER_NONCE);

    struct Stuck;
    impl RandomSource for Stuck {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
            buf.fill(255);
            Ok(())
        }
    }
    assert_eq!(
        push_server_nonce(&mut String::new(), &mut Stuck),
        Err(ScramError::Random(RandomError))
    );
}

#[test]
fn credentials_debug_hides_keys() {
    let c = ScramCredentials::derive(b"pw", b"salt", 1);
    let shown = format!("{c:?}");
    assert!(!shown.contains("stored_key") && shown.contains("iterations: 1"));
}
