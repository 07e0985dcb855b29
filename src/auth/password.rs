//! The password file: parsing, the hash formats, and checking a password.
//!
//! Owns: the file format and every hash format RingMQ reads or writes. One line per user:
//!
//! ```text
//! # comment (a line whose first non-blank character is '#'); blank lines are ignored
//! USER:HASH[:SCRAM]
//! ```
//!
//! `USER` and `HASH` are trimmed of surrounding blanks (as mosquitto does); a user name holds
//! no `:`, and appears once. `HASH` is one of:
//!
//! - `$argon2id$v=19$m=M,t=T,p=P$SALT$HASH`: argon2 in PHC string format, what `ringmq
//!   passwd` writes (`argon2i`/`argon2d` are read too). The cost is recorded in the string,
//!   so changing `ARGON2_*` below never invalidates an existing file.
//! - `$6$SALT$HASH`: mosquitto's salted SHA-512, `HASH = SHA-512(password || salt)`,
//!   both fields standard base64 with padding (mosquitto 1.6 and earlier).
//! - `$7$ITERATIONS$SALT$HASH`: mosquitto's PBKDF2-HMAC-SHA-512 with a 64-byte output
//!   (mosquitto 2.0's default), same base64.
//!
//! So a mosquitto password file works unchanged. The optional `SCRAM` field holds the key
//! material for SCRAM-SHA-256 (RFC 5802 section 3), in a PHC-like form that `ringmq passwd`
//! writes next to the argon2id hash:
//!
//! ```text
//! $scram-sha-256$i=ITERATIONS$SALT$STOREDKEY$SERVERKEY     (base64 with padding)
//! ```
//!
//! mosquitto ignores everything after a second `:`, so it can still read such a file where it
//! knows the first hash. Note that the SCRAM field is only as strong as PBKDF2-SHA-256 with
//! its iteration count: whoever steals the file attacks the weaker of the two fields.
//!
//! Must never: put a password, or the hash of one, into an error or a log line; compare
//! secrets in variable time; answer an unknown user faster than a known one (`lookup` hands
//! back a dummy hash of the same kind and cost, see `PasswordFile::dummy`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{Output, PasswordHash as Phc, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::random::{RandomError, RandomSource};
use super::scram::ScramCredentials;

/// Argon2id memory cost in KiB for new hashes. OWASP's password storage cheat sheet lists
/// equally strong argon2id settings from (19 MiB, t=2) to (7 MiB, t=5); we take the one with
/// the least memory because every verifier thread holds it while hashing and an idle broker
/// is about 4 MB. Measured on the project's 2-core machine: 11 ms per hash in a quiet loop,
/// 12-16 ms with `cargo bench --bench auth -- password/` while other builds ran; within the
/// 10-50 ms we aim for (slow enough that guessing is expensive, fast enough that two
/// verifier threads answer well over 100 CONNECTs a second).
pub const ARGON2_M_COST_KIB: u32 = 7168;
/// Argon2id passes for new hashes (see `ARGON2_M_COST_KIB`).
pub const ARGON2_T_COST: u32 = 5;
/// Argon2id lanes: 1, since the crate computes lanes one after another anyway.
pub const ARGON2_P_COST: u32 = 1;
/// Salt bytes for new argon2id hashes (the PHC recommendation).
const ARGON2_SALT_LEN: usize = 16;

/// Largest argon2 memory cost accepted from a file (1 GiB): one verification with more would
/// let a typo in the file stall a verifier thread and take that much memory.
const MAX_ARGON2_M_COST_KIB: u32 = 1024 * 1024;
/// Largest PBKDF2 iteration count accepted from a file, for the same reason (10 million is
/// several seconds of hashing; mosquitto's default is 101).
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Salt length mosquitto writes for `$6$` and `$7$` (bytes).
const MOSQUITTO_SALT_LEN: usize = 12;
/// Digest length of mosquitto's `$6$` and `$7$` hashes (SHA-512 output).
const MOSQUITTO_HASH_LEN: usize = 64;

/// Why one line of a password file is invalid. Says what is wrong, never what the line holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no ':' between user name and hash")]
    MissingSeparator,
    #[error("empty user name")]
    EmptyUser,
    #[error("user name appears on an earlier line")]
    DuplicateUser,
    #[error("more than two ':'-separated fields after the user name")]
    TooManyFields,
    #[error("unknown hash format (expected $argon2id$, $6$ or $7$)")]
    UnknownHashFormat,
    #[error("malformed argon2 PHC string")]
    BadArgon2,
    #[error("argon2 cost above the accepted maximum (m <= 1 GiB)")]
    Argon2TooCostly,
    #[error("malformed mosquitto $6$ hash (expected $6$SALT$HASH in base64)")]
    BadSha512,
    #[error("malformed mosquitto $7$ hash (expected $7$ITERATIONS$SALT$HASH in base64)")]
    BadPbkdf2,
    #[error("PBKDF2 iteration count outside 1..=10000000")]
    BadIterations,
    #[error("malformed SCRAM field (expected $scram-sha-256$i=N$SALT$STOREDKEY$SERVERKEY)")]
    BadScram,
}

/// Why a password file could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordFileError {
    /// The 1-based line and what is wrong with it.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: LineError },
    /// The dummy hash for unknown users could not be salted.
    #[error("cannot make the dummy hash: {0}")]
    Dummy(HashError),
}

/// A password hash in one of the formats of the module doc.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// A PHC string, checked at parse time (algorithm, parameters, salt and output present).
    Argon2(Box<str>),
    /// mosquitto `$6$`: `SHA-512(password || salt)`.
    Sha512 { salt: Box<[u8]>, hash: Box<[u8]> },
    /// mosquitto `$7$`: PBKDF2-HMAC-SHA-512.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Box<[u8]>,
        hash: Box<[u8]>,
    },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            PasswordHash::Argon2(_) => "argon2",
            PasswordHash::Sha512 { .. } => "mosquitto-sha512",
            PasswordHash::Pbkdf2Sha512 { .. } => "mosquitto-pbkdf2-sha512",
        };
        write!(f, "PasswordHash({kind})")
    }
}

impl fmt::Display for PasswordHash {
    /// The file form of the hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Argon2(phc) => f.write_str(phc),
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ),
        }
    }
}

/// Why a new hash could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("argon2 refused the input (password longer than 4 GiB?)")]
    Argon2,
}

/// The argon2id hasher with RingMQ's parameters for new hashes.
fn ringmq_argon2() -> Argon2<'static> {
    // The constants are inside argon2's bounds (m >= 8 * p, t >= 1, 1 <= p), so `new` cannot
    // fail; a test checks it.
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .expect("ARGON2_* constants are valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHash {
    /// Hashes `password` with argon2id and RingMQ's parameters (tens of milliseconds).
    pub fn argon2id(
        password: &[u8],
        rng: &mut dyn RandomSource,
    ) -> Result<PasswordHash, HashError> {
        let mut salt = [0u8; ARGON2_SALT_LEN];
        rng.fill(&mut salt)?;
        let salt = SaltString::encode_b64(&salt).map_err(|_| HashError::Argon2)?;
        let phc = ringmq_argon2()
            .hash_password(password, &salt)
            .map_err(|_| HashError::Argon2)?;
        Ok(PasswordHash::Argon2(phc.to_string().into()))
    }

    /// Parses the hash field of a line.
    pub fn parse(field: &str) -> Result<PasswordHash, LineError> {
        if let Some(rest) = field.strip_prefix("$6$") {
            let (salt, hash) = rest.split_once('$').ok_or(LineError::BadSha512)?;
            let salt = decode_exact(salt, MOSQUITTO_SALT_LEN).ok_or(LineError::BadSha512)?;
            let hash = decode_exact(hash, MOSQUITTO_HASH_LEN).ok_or(LineError::BadSha512)?;
            Ok(PasswordHash::Sha512 { salt, hash })
        } else if let Some(rest) = field.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(LineError::BadPbkdf2);
            };
            let iterations: u32 = iterations.parse().map_err(|_| LineError::BadPbkdf2)?;
            if !(1..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
                return Err(LineError::BadIterations);
            }
            let salt = decode_exact(salt, MOSQUITTO_SALT_LEN).ok_or(LineError::BadPbkdf2)?;
            let hash = decode_exact(hash, MOSQUITTO_HASH_LEN).ok_or(LineError::BadPbkdf2)?;
            Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        } else if field.starts_with("$argon2") {
            check_argon2(field)?;
            Ok(PasswordHash::Argon2(field.into()))
        } else {
            Err(LineError::UnknownHashFormat)
        }
    }

    /// Whether `password` matches. Costs what the format costs whatever the answer; the final
    /// comparison is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(phc) => {
                // Parsed at load, so this fails only if memory is exhausted; then: no match.
                let Ok(parsed) = Phc::new(phc) else {
                    return false;
                };
                // `verify_password` takes algorithm, version and cost from the string and
                // compares outputs in constant time (`password_hash::Output`'s `PartialEq`).
                argon2::PasswordVerifier::verify_password(&Argon2::default(), password, &parsed)
                    .is_ok()
            }
            PasswordHash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                bool::from(d.finalize().as_slice().ct_eq(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; MOSQUITTO_HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.as_slice().ct_eq(hash))
            }
        }
    }

    /// A hash of the same format and cost that no password matches: random salt, zero
    /// output. Verifying against it takes as long as against `self`.
    pub fn dummy_like(&self, rng: &mut dyn RandomSource) -> Result<PasswordHash, HashError> {
        match self {
            PasswordHash::Argon2(phc) => {
                let mut salt = [0u8; ARGON2_SALT_LEN];
                rng.fill(&mut salt)?;
                let salt = SaltString::encode_b64(&salt).map_err(|_| HashError::Argon2)?;
                let mut parsed = Phc::new(phc).map_err(|_| HashError::Argon2)?;
                let len = parsed.hash.map_or(32, |h| h.len());
                parsed.salt = Some(salt.as_salt());
                parsed.hash = Some(Output::new(&vec![0u8; len]).map_err(|_| HashError::Argon2)?);
                Ok(PasswordHash::Argon2(parsed.to_string().into()))
            }
            PasswordHash::Sha512 { salt, hash } => Ok(PasswordHash::Sha512 {
                salt: random_bytes(rng, salt.len())?,
                hash: vec![0; hash.len()].into(),
            }),
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => Ok(PasswordHash::Pbkdf2Sha512 {
                iterations: *iterations,
                salt: random_bytes(rng, salt.len())?,
                hash: vec![0; hash.len()].into(),
            }),
        }
    }
}

/// A dummy argon2id hash with RingMQ's parameters (for a file without users), made without
/// hashing: a template with zero salt and output, then `dummy_like`.
fn ringmq_dummy(rng: &mut dyn RandomSource) -> Result<PasswordHash, HashError> {
    let zeros_16 = "AAAAAAAAAAAAAAAAAAAAAA"; // 16 zero bytes, PHC base64 (no padding)
    let zeros_32 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let template = format!(
        "$argon2id$v=19$m={ARGON2_M_COST_KIB},t={ARGON2_T_COST},p={ARGON2_P_COST}${zeros_16}${zeros_32}"
    );
    PasswordHash::Argon2(template.into()).dummy_like(rng)
}

fn random_bytes(rng: &mut dyn RandomSource, len: usize) -> Result<Box<[u8]>, RandomError> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v)?;
    Ok(v.into())
}

/// Standard base64 of exactly `len` bytes.
fn decode_exact(s: &str, len: usize) -> Option<Box<[u8]>> {
    let v = B64.decode(s).ok()?;
    (v.len() == len).then(|| v.into())
}

/// Checks a PHC string the way `verify` will use it, and bounds its cost.
fn check_argon2(field: &str) -> Result<(), LineError> {
    let phc = Phc::new(field).map_err(|_| LineError::BadArgon2)?;
    Algorithm::try_from(phc.algorithm).map_err(|_| LineError::BadArgon2)?;
    if phc.salt.is_none() || phc.hash.is_none() {
        return Err(LineError::BadArgon2);
    }
    let params = Params::try_from(&phc).map_err(|_| LineError::BadArgon2)?;
    if params.m_cost() > MAX_ARGON2_M_COST_KIB {
        return Err(LineError::Argon2TooCostly);
    }
    Ok(())
}

/// Parses the optional SCRAM field (module doc).
pub fn parse_scram_field(field: &str) -> Result<ScramCredentials, LineError> {
    let rest = field
        .strip_prefix("$scram-sha-256$i=")
        .ok_or(LineError::BadScram)?;
    let mut parts = rest.split('$');
    let (Some(i), Some(salt), Some(stored), Some(server), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(LineError::BadScram);
    };
    let iterations: u32 = i.parse().map_err(|_| LineError::BadScram)?;
    let salt = B64.decode(salt).map_err(|_| LineError::BadScram)?;
    let key = |s: &str| -> Option<[u8; 32]> { B64.decode(s).ok()?.try_into().ok() };
    match (key(stored), key(server)) {
        (Some(stored_key), Some(server_key)) if iterations >= 1 && !salt.is_empty() => {
            Ok(ScramCredentials {
                salt: salt.into(),
                iterations,
                stored_key,
                server_key,
            })
        }
        _ => Err(LineError::BadScram),
    }
}

/// The file form of SCRAM material (module doc).
pub fn format_scram_field(c: &ScramCredentials) -> String {
    format!(
        "$scram-sha-256$i={}${}${}${}",
        c.iterations,
        B64.encode(&c.salt),
        B64.encode(c.stored_key),
        B64.encode(c.server_key)
    )
}

/// One user's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub hash: PasswordHash,
    pub scram: Option<ScramCredentials>,
}

/// Parses one line: `Ok(None)` for blank and comment lines, else the user and entry.
pub fn parse_line(line: &str) -> Result<Option<(&str, UserEntry)>, LineError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = line.split_once(':').ok_or(LineError::MissingSeparator)?;
    let user = user.trim();
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    let mut fields = rest.split(':');
    let hash = PasswordHash::parse(fields.next().unwrap_or("").trim())?;
    let scram = fields
        .next()
        .map(|f| parse_scram_field(f.trim()))
        .transpose()?;
    if fields.next().is_some() {
        return Err(LineError::TooManyFields);
    }
    Ok(Some((user, UserEntry { hash, scram })))
}

/// What `PasswordFile::lookup` found: the entry to verify against, and whether it is real.
#[derive(Clone, Debug)]
pub struct Credential {
    entry: Arc<UserEntry>,
    /// False when `entry` is the dummy: verification runs, then fails.
    known: bool,
}

impl Credential {
    /// Whether `password` is this user's. An unknown user costs the same and is `false`.
    pub fn verify(&self, password: &[u8]) -> bool {
        // Both operands are evaluated: `&` does not short-circuit.
        self.entry.hash.verify(password) & self.known
    }

    /// The user's SCRAM material, if the file has some (never for the dummy).
    pub fn scram(&self) -> Option<&ScramCredentials> {
        if self.known {
            self.entry.scram.as_ref()
        } else {
            None
        }
    }
}

/// A loaded password file.
#[derive(Debug)]
pub struct PasswordFile {
    /// Keyed by user name; std's SipHash because the names in lookups come from clients.
    users: HashMap<Box<str>, Arc<UserEntry>>,
    /// What an unknown user is verified against: `dummy_like` of the first entry in the file
    /// (argon2id with RingMQ's parameters for an empty file). A file that mixes formats still
    /// lets timing tell users of a cheaper format from the rest; `ringmq passwd` rewrites a
    /// user's line as argon2id, so such a file converges as passwords are reset.
    dummy: Arc<UserEntry>,
}

impl PasswordFile {
    /// Parses a whole file. `rng` salts the dummy hash.
    pub fn parse(
        text: &str,
        rng: &mut dyn RandomSource,
    ) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        let mut first: Option<Arc<UserEntry>> = None;
        for (i, line) in text.lines().enumerate() {
            let err = |reason| PasswordFileError::Line {
                line: i + 1,
                reason,
            };
            let Some((user, entry)) = parse_line(line).map_err(err)? else {
                continue;
            };
            let entry = Arc::new(entry);
            first.get_or_insert_with(|| entry.clone());
            if users.insert(Box::<str>::from(user), entry).is_some() {
                return Err(err(LineError::DuplicateUser));
            }
        }
        let hash = match &first {
            Some(e) => e.hash.dummy_like(rng),
            None => ringmq_dummy(rng),
        }
        .map_err(PasswordFileError::Dummy)?;
        Ok(PasswordFile {
            users,
            dummy: Arc::new(UserEntry { hash, scram: None }),
        })
    }

    /// The credential to check `user`'s password against: the user's, or the dummy.
    pub fn lookup(&self, user: &str) -> Credential {
        match self.users.get(user) {
            Some(entry) => Credential {
                entry: entry.clone(),
                known: true,
            },
            None => Credential {
                entry: self.dummy.clone(),
                known: false,
            },
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests;
