//! SCRAM-SHA-256 (RFC 5802, RFC 7677) server side, for MQTT 5 enhanced authentication with
//! the Authentication Method `SCRAM-SHA-256` [MQTT-4.12].
//!
//! Owns: the server state machine and the key material (`ScramCredentials`: salt, iteration
//! count, StoredKey, ServerKey; the password itself is never stored). The MQTT exchange is
//! CONNECT (client-first) -> AUTH 0x18 (server-first) -> AUTH 0x18 (client-final) -> CONNACK
//! (server-final), each message in the Authentication Data property. Call order:
//! `ScramServer::new`, `handle_client_first`, `handle_client_final`; any other order, and any
//! call after an error, is `ScramError::OutOfOrder`.
//!
//! Decisions: channel binding is not offered (no `SCRAM-SHA-256-PLUS`), so the gs2 flag must
//! be `n`, or `y` (the client could bind but believes the server cannot; RFC 5802 section 6
//! requires a server without channel binding to accept it); `p=` is refused. An authorization
//! identity (`a=`) is accepted only when it equals the user name. The `m=` extension is
//! refused (RFC 5802 section 5.1: "the server MUST fail"); other extensions are parsed and
//! ignored. User names are compared byte for byte after `=2C`/`=3D` decoding: SASLprep
//! (RFC 4013) is not applied to names or passwords, which makes no difference for ASCII.
//! An unknown user (or one without SCRAM material) gets a mock salt that is stable per name
//! and fails at the proof with the same error as a wrong password, so the exchange never
//! reveals whether a user exists (RFC 5802 section 9 advises this).
//!
//! Must never: panic on any input, compare a proof in variable time, or do I/O; randomness
//! comes from the caller's `RandomSource`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::random::{RandomError, RandomSource};

/// The Authentication Method name (RFC 7677 section 2; MQTT 5 Authentication Method).
pub const METHOD: &str = "SCRAM-SHA-256";

/// Iterations `ringmq passwd` uses for new SCRAM material, and for mock users. RFC 7677
/// section 4 asks for at least 4096; the cost falls on the client (the server never runs
/// PBKDF2), and MQTT clients are often small devices, so we stay at that minimum.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// Salt bytes for new SCRAM material (RFC 5802 leaves the length open; 16 as for argon2).
pub const SCRAM_SALT_LEN: usize = 16;

/// Characters of server nonce. Each is drawn uniformly from 93 printable characters, so 30
/// carry about 196 bits; 30 is also the length of RFC 7677's example, which the tests replay.
const SERVER_NONCE_CHARS: usize = 30;

/// Longest SCRAM message accepted (bytes). The longest legitimate one is client-first with an
/// MQTT-sized user name (up to 65535 bytes, escaped); we bound it far lower because nothing
/// is gained by a longer name and the messages are kept until the exchange ends.
const MAX_MESSAGE_LEN: usize = 4096;

/// `printable` of RFC 5802 section 7: 0x21..=0x7E except `,`.
const PRINTABLE: &[u8; 93] = b"!\"#$%&'()*+-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 over the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC is defined for keys of every length (RFC 2104 section 2), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// What the server keeps per user for SCRAM-SHA-256 (RFC 5802 section 3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// Salt for `SaltedPassword := Hi(password, salt, i)`.
    pub salt: Box<[u8]>,
    /// `i`, at least 1.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of logs: with StoredKey and a recorded exchange an attacker could
        // impersonate the user.
        write!(
            f,
            "ScramCredentials {{ iterations: {}, .. }}",
            self.iterations
        )
    }
}

impl ScramCredentials {
    /// Derives the key material from a password (RFC 5802 section 3). Costs `iterations`
    /// HMACs; for the `passwd` tool and tests, not for a shard thread.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations.max(1), &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, &[b"Server Key"]);
        ScramCredentials {
            salt: salt.into(),
            iterations: iterations.max(1),
            stored_key,
            server_key,
        }
    }

    /// Mock material for an unknown user: stable per name for one `secret` (so repeated
    /// attempts see the same salt, as for a real user), and no password can match it.
    pub fn mock(secret: &[u8; 32], username: &str) -> ScramCredentials {
        let salt = hmac(secret, &[b"salt\0", username.as_bytes()]);
        ScramCredentials {
            salt: salt[..SCRAM_SALT_LEN].into(),
            iterations: SCRAM_ITERATIONS,
            stored_key: hmac(secret, &[b"stored\0", username.as_bytes()]),
            server_key: hmac(secret, &[b"server\0", username.as_bytes()]),
        }
    }
}

/// What `ScramUsers` found for a name.
#[derive(Clone, Debug)]
pub struct ScramUser {
    credentials: ScramCredentials,
    /// False for a mock: the exchange runs to the end and then fails.
    known: bool,
}

impl ScramUser {
    pub fn known(credentials: ScramCredentials) -> ScramUser {
        ScramUser {
            credentials,
            known: true,
        }
    }

    /// A user that does not exist or has no SCRAM material (see `ScramCredentials::mock`).
    pub fn unknown(secret: &[u8; 32], username: &str) -> ScramUser {
        ScramUser {
            credentials: ScramCredentials::mock(secret, username),
            known: false,
        }
    }
}

/// The credential store as the state machine sees it.
pub trait ScramUsers {
    /// Always answers: a real user, or `ScramUser::unknown` (never "no such user").
    fn scram_user(&self, username: &str) -> ScramUser;
}

/// Why an exchange failed. Every variant ends the exchange; the broker refuses the CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("SCRAM message longer than {MAX_MESSAGE_LEN} bytes")]
    TooLong,
    #[error("channel binding requested but not supported")]
    ChannelBindingNotSupported,
    #[error("mandatory SCRAM extension (m=) not supported")]
    ExtensionNotSupported,
    #[error("authorization identity differs from the user name")]
    AuthzidNotSupported,
    #[error("channel binding data does not match the gs2 header")]
    ChannelBindingMismatch,
    #[error("nonce does not match")]
    NonceMismatch,
    /// Wrong password, unknown user, or a user without SCRAM material: one error for all.
    #[error("invalid proof")]
    InvalidProof,
    #[error("SCRAM message out of order")]
    OutOfOrder,
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Server side of one exchange.
#[derive(Debug, Default)]
pub struct ScramServer {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    AwaitClientFirst,
    AwaitClientFinal(Box<Pending>),
    /// Finished (successfully or not); every further message is out of order.
    Done,
}

/// What client-final is checked against.
#[derive(Debug)]
struct Pending {
    username: String,
    /// The gs2 header exactly as received; `c=` must carry it back (no binding data).
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    user: ScramUser,
}

/// A successful exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSuccess {
    /// The authenticated user (the decoded `n=` of client-first).
    pub username: String,
    /// server-final-message (`v=...`), for the CONNACK's Authentication Data.
    pub server_final: Bytes,
}

impl ScramServer {
    pub fn new() -> ScramServer {
        ScramServer::default()
    }

    /// Takes client-first-message (CONNECT's Authentication Data) and returns
    /// server-first-message (for AUTH 0x18).
    pub fn handle_client_first(
        &mut self,
        msg: &[u8],
        users: &dyn ScramUsers,
        rng: &mut dyn RandomSource,
    ) -> Result<Bytes, ScramError> {
        let State::AwaitClientFirst = self.state else {
            self.state = State::Done;
            return Err(ScramError::OutOfOrder);
        };
        self.state = State::Done;
        let first = parse_client_first(msg)?;
        let mut nonce = String::with_capacity(first.client_nonce.len() + SERVER_NONCE_CHARS);
        nonce.push_str(first.client_nonce);
        push_server_nonce(&mut nonce, rng)?;
        let user = users.scram_user(&first.username);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&user.credentials.salt),
            user.credentials.iterations
        );
        let reply = Bytes::from(server_first.clone().into_bytes());
        self.state = State::AwaitClientFinal(Box::new(Pending {
            username: first.username,
            gs2_header: first.gs2_header.to_owned(),
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
            user,
        }));
        Ok(reply)
    }

    /// Takes client-final-message (the client's AUTH) and, when the proof is right, returns
    /// the user and server-final-message (for CONNACK).
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<ScramSuccess, ScramError> {
        let State::AwaitClientFinal(pending) = std::mem::take(&mut self.state) else {
            self.state = State::Done;
            return Err(ScramError::OutOfOrder);
        };
        self.state = State::Done;
        let fin = parse_client_final(msg)?;
        if B64
            .decode(fin.channel_binding)
            .map_err(|_| ScramError::Malformed)?
            != pending.gs2_header.as_bytes()
        {
            return Err(ScramError::ChannelBindingMismatch);
        }
        // Not secret (both nonces were sent in clear), so an ordinary comparison is fine.
        if fin.nonce != pending.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = [
            pending.client_first_bare.as_bytes(),
            b",",
            pending.server_first.as_bytes(),
            b",",
            fin.without_proof.as_bytes(),
        ];
        let creds = &pending.user.credentials;
        let client_signature = hmac(&creds.stored_key, &auth_message);
        let mut client_key = fin.proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let proof_ok =
            stored.ct_eq(&creds.stored_key) & subtle::Choice::from(u8::from(pending.user.known));
        if !bool::from(proof_ok) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&creds.server_key, &auth_message);
        let server_final = format!("v={}", B64.encode(server_signature));
        Ok(ScramSuccess {
            username: pending.username,
            server_final: Bytes::from(server_final.into_bytes()),
        })
    }
}

/// Appends `SERVER_NONCE_CHARS` characters drawn uniformly from `PRINTABLE`: a byte is kept
/// when below 186 (= 2 * 93, so `b % 93` is unbiased), others are drawn again.
fn push_server_nonce(nonce: &mut String, rng: &mut dyn RandomSource) -> Result<(), ScramError> {
    /// Refills before giving up on a generator that keeps returning bytes >= 186: a
    /// working one needs about 1.4 refills of 32 bytes for 30 characters.
    const MAX_REFILLS: usize = 64;
    let mut wanted = SERVER_NONCE_CHARS;
    for _ in 0..MAX_REFILLS {
        let mut buf = [0u8; 32];
        rng.fill(&mut buf[..wanted.min(32)])?;
        for &b in &buf[..wanted.min(32)] {
            if b < 186 {
                nonce.push(char::from(PRINTABLE[usize::from(b % 93)]));
                wanted -= 1;
            }
        }
        if wanted == 0 {
            return Ok(());
        }
    }
    Err(ScramError::Random(RandomError))
}

/// The parts of client-first-message the exchange needs.
#[derive(Debug)]
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    username: String,
    client_nonce: &'a str,
}

/// `client-first-message = gs2-header client-first-message-bare` (RFC 5802 section 7).
fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let msg = as_message(msg)?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed)?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
        _ => return Err(ScramError::Malformed),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
    let gs2_header = &msg[..msg.len() - bare.len()];
    let mut attrs = bare.split(',');
    let user_attr = attrs.next().ok_or(ScramError::Malformed)?;
    if user_attr.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    let username = sasl_name(user_attr.strip_prefix("n=").ok_or(ScramError::Malformed)?)?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed)?;
    if !is_nonce(client_nonce) {
        return Err(ScramError::Malformed);
    }
    check_extensions(attrs)?;
    if !authzid.is_empty() {
        let a = sasl_name(authzid.strip_prefix("a=").ok_or(ScramError::Malformed)?)?;
        if a != username {
            return Err(ScramError::AuthzidNotSupported);
        }
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        username,
        client_nonce,
    })
}

/// The parts of client-final-message the exchange needs.
#[derive(Debug)]
struct ClientFinal<'a> {
    without_proof: &'a str,
    channel_binding: &'a str,
    nonce: &'a str,
    proof: [u8; 32],
}

/// `client-final-message = channel-binding "," nonce ["," extensions] "," proof`.
fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let msg = as_message(msg)?;
    // The proof is the last attribute, and base64 holds no `,`.
    let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
    let proof: [u8; 32] = B64
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or(ScramError::Malformed)?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(ScramError::Malformed)?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed)?;
    check_extensions(attrs)?;
    Ok(ClientFinal {
        without_proof,
        channel_binding,
        nonce,
        proof,
    })
}

/// Length bound, then UTF-8 (every SCRAM message is UTF-8, RFC 5802 section 7).
fn as_message(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::TooLong);
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)
}

/// `saslname`: `=2C` and `=3D` stand for `,` and `=`; any other `=` is an error (RFC 5802
/// section 5.1). Empty names are refused.
fn sasl_name(s: &str) -> Result<String, ScramError> {
    if s.is_empty() {
        return Err(ScramError::Malformed);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `c-nonce = printable+`.
fn is_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',')
}

/// `extensions = attr-val *("," attr-val)`, `attr-val = ALPHA "=" value`: checked, ignored.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for a in attrs {
        let mut bytes = a.bytes();
        let ok = matches!(bytes.next(), Some(c) if c.is_ascii_alphabetic())
            && bytes.next() == Some(b'=')
            && a.len() > 2;
        if !ok {
            return Err(ScramError::Malformed);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
