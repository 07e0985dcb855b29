//! Authentication and authorization: who may connect (password file, SCRAM-SHA-256), and
//! what they may publish, subscribe to and receive (ACL file).
//!
//! Owns: the `[auth]` settings (`AuthConfig`), an immutable snapshot of the loaded files
//! (`Authenticator`), the CONNECT decision (`check_connect` -> `Decision`) and the one map
//! from a refusal to its reason code (`Refusal::reason_code`). The parts:
//!
//! - `password`: the password file (argon2id, mosquitto `$6$`/`$7$`, SCRAM material);
//! - `acl`: mosquitto's ACL format and the read / publish / subscribe decisions;
//! - `scram`: the SCRAM-SHA-256 server state machine for MQTT 5 enhanced authentication;
//! - `throttle`: exponential delay of repeated failures per source address;
//! - `verifier`: the threads that run password hashing off the shards;
//! - `passwd`: the `ringmq passwd` tool that edits a password file;
//! - `random`: the randomness seam.
//!
//! How the shard uses it (`shard::auth`): every shard holds the `Arc<Authenticator>` in
//! force and picks up the result of `reload()` when that is `Ok`. For each CONNECT:
//! `check_connect`; on `Decision::NeedsHashCheck(check)` it submits `check.verify_blocking()`
//! to the `VerifierPool` and continues when the reply arrives. For MQTT 5 Authentication
//! Method `SCRAM-SHA-256` it runs a `ScramServer` (through `session::auth`) with the
//! `Authenticator` as its `ScramUsers`. Afterwards it asks `subscribe_access` per SUBSCRIBE
//! filter, `may_publish` per PUBLISH and will, and `may_read` per delivery on a subscription
//! the ACL covers only in part.
//!
//! Must never: reveal whether a user exists (an unknown user costs a full hash check and gets
//! the same refusal as a wrong password), hash on a shard thread, keep a half-loaded snapshot
//! (a reload either yields a complete new one or an error), or put a password in a log or
//! error.

#![forbid(unsafe_code)]

pub mod acl;
pub mod passwd;
pub mod password;
pub mod random;
pub mod scram;
pub mod throttle;
pub mod verifier;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::codec::{ProtocolVersion, ReasonCode};
use acl::{Acl, AclError, AclSubject};
use password::{Credential, PasswordFile, PasswordFileError};
use random::{OsRandom, RandomError, RandomSource};
use scram::{ScramError, ScramUser, ScramUsers};

/// Default verifier threads: two keep one slow check from delaying every other CONNECT,
/// and on the 2-core machines RingMQ is measured on more would only compete with shards.
pub const DEFAULT_VERIFIER_THREADS: usize = 2;

/// The `[auth]` table of the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Password file (`password` module doc for the format).
    pub password_file: Option<PathBuf>,
    /// ACL file (`acl` module doc); without one every client may do everything.
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a user name may connect; unset means "only when no
    /// password file is configured".
    pub allow_anonymous: Option<bool>,
    /// Threads that verify passwords (1..=16).
    pub verifier_threads: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            verifier_threads: DEFAULT_VERIFIER_THREADS,
        }
    }
}

/// Why an `[auth]` table cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.verifier_threads must be 1..=16")]
    VerifierThreads,
    #[error("auth.allow_anonymous = false needs auth.password_file (no client could connect)")]
    NobodyCanConnect,
}

impl AuthConfig {
    /// `allow_anonymous` with its default applied.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }

    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if !(1..=verifier::MAX_VERIFIER_THREADS).contains(&self.verifier_threads) {
            return Err(AuthConfigError::VerifierThreads);
        }
        if !self.anonymous_allowed() && self.password_file.is_none() {
            return Err(AuthConfigError::NobodyCanConnect);
        }
        Ok(())
    }
}

/// Why the files could not be loaded; the previous snapshot, if any, stays in force.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: PasswordFileError,
    },
    #[error("ACL file {}: {source}", path.display())]
    Acl { path: PathBuf, source: AclError },
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Why a client is refused. `reason_code` is the only place these become wire codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong password, unknown user, missing password, failed SCRAM proof: one answer for all.
    BadCredentials,
    /// Not allowed to connect at all (anonymous when anonymous clients are not allowed), or a
    /// SCRAM exchange that broke the protocol.
    NotAuthorized,
    /// The client id is refused by policy: it holds `/`, `+` or `#` while the ACL has `%c`
    /// patterns, so no pattern could ever grant it anything.
    ClientIdRefused,
    /// The verifier queue is full.
    ServerBusy,
    /// The server cannot authenticate now (the random generator failed).
    Unavailable,
    /// v5 Authentication Method other than `SCRAM-SHA-256`, or SCRAM without a password file.
    BadAuthMethod,
}

impl Refusal {
    /// The v5 reason code; 3.x clients get `ReasonCode::v3_connack_return_code` of it
    /// (0x86 -> 0x04, 0x87 -> 0x05, 0x85 -> 0x02, 0x89/0x88 -> 0x03), which the encoder
    /// applies.
    pub const fn reason_code(self) -> ReasonCode {
        match self {
            Refusal::BadCredentials => ReasonCode::BadUserNameOrPassword,
            Refusal::NotAuthorized => ReasonCode::NotAuthorized,
            Refusal::ClientIdRefused => ReasonCode::ClientIdentifierNotValid,
            Refusal::ServerBusy => ReasonCode::ServerBusy,
            Refusal::Unavailable => ReasonCode::ServerUnavailable,
            Refusal::BadAuthMethod => ReasonCode::BadAuthenticationMethod,
        }
    }

    /// The CONNACK byte for `version` (v5 reason code or 3.x return code).
    pub const fn connack_byte(self, version: ProtocolVersion) -> u8 {
        match version {
            ProtocolVersion::V5 => self.reason_code().code(),
            ProtocolVersion::V31 | ProtocolVersion::V311 => {
                self.reason_code().v3_connack_return_code()
            }
        }
    }
}

impl From<ScramError> for Refusal {
    fn from(e: ScramError) -> Refusal {
        match e {
            ScramError::InvalidProof => Refusal::BadCredentials,
            ScramError::Malformed
            | ScramError::TooLong
            | ScramError::ChannelBindingNotSupported
            | ScramError::ExtensionNotSupported
            | ScramError::AuthzidNotSupported
            | ScramError::ChannelBindingMismatch
            | ScramError::NonceMismatch
            | ScramError::OutOfOrder => Refusal::NotAuthorized,
            ScramError::Random(_) => Refusal::Unavailable,
        }
    }
}

impl From<verifier::SubmitError> for Refusal {
    fn from(e: verifier::SubmitError) -> Refusal {
        match e {
            verifier::SubmitError::Busy => Refusal::ServerBusy,
            verifier::SubmitError::Stopped => Refusal::Unavailable,
        }
    }
}

/// The answer to a CONNECT.
#[derive(Debug)]
pub enum Decision {
    Allow,
    Refuse(Refusal),
    /// The password must be hashed: run `verify_blocking` on a verifier thread.
    NeedsHashCheck(HashCheck),
}

/// A password check to run off the shard. Owns what it needs (`Send + 'static`); the password
/// is wiped from memory when the check is dropped.
pub struct HashCheck {
    credential: Credential,
    password: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for HashCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashCheck { .. }")
    }
}

impl HashCheck {
    /// Hashes (tens of milliseconds): `Allow`, or `Refuse(BadCredentials)` for a wrong
    /// password and for an unknown user alike.
    pub fn verify_blocking(self) -> Decision {
        if self.credential.verify(&self.password) {
            Decision::Allow
        } else {
            Decision::Refuse(Refusal::BadCredentials)
        }
    }
}

/// One loaded configuration: the files as they were when read. Immutable; share it in an
/// `Arc` and replace it with `reload`.
pub struct Authenticator {
    config: AuthConfig,
    passwords: Option<PasswordFile>,
    acl: Option<Arc<Acl>>,
    /// Keys SCRAM's mock salts for unknown users; kept across reloads so a name's mock salt
    /// does not change when the files do.
    scram_secret: [u8; 32],
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .field(
                "users",
                &self.passwords.as_ref().map_or(0, PasswordFile::len),
            )
            .field("acl", &self.acl.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Authenticator {
    /// Reads the files `config` names.
    pub fn load(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let mut secret = [0u8; 32];
        OsRandom.fill(&mut secret)?;
        Authenticator::load_with_secret(config, secret)
    }

    fn load_with_secret(config: &AuthConfig, secret: [u8; 32]) -> Result<Authenticator, AuthError> {
        let passwords = match &config.password_file {
            Some(p) => Some(read(p)?),
            None => None,
        };
        let acl = match &config.acl_file {
            Some(p) => Some(read(p)?),
            None => None,
        };
        Authenticator::from_texts(config, passwords.as_deref(), acl.as_deref(), secret)
    }

    /// Builds a snapshot from file contents (what `load` does after reading). `passwords`
    /// and `acl` stand for the files `config` names; errors name those paths.
    pub fn from_texts(
        config: &AuthConfig,
        passwords: Option<&str>,
        acl: Option<&str>,
        scram_secret: [u8; 32],
    ) -> Result<Authenticator, AuthError> {
        let path = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
        let passwords = passwords
            .map(|t| PasswordFile::parse(t, &mut OsRandom))
            .transpose()
            .map_err(|source| AuthError::PasswordFile {
                path: path(&config.password_file),
                source,
            })?;
        let acl = acl
            .map(Acl::parse)
            .transpose()
            .map_err(|source| AuthError::Acl {
                path: path(&config.acl_file),
                source,
            })?;
        Ok(Authenticator {
            config: config.clone(),
            passwords,
            acl: acl.map(Arc::new),
            scram_secret,
        })
    }

    /// Reads the same files again. `Err` leaves `self` as it was: keep using it.
    pub fn reload(&self) -> Result<Authenticator, AuthError> {
        Authenticator::load_with_secret(&self.config, self.scram_secret)
    }

    /// The settings this snapshot was loaded with.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Decides a CONNECT with user name and password (not for SCRAM; see `scram_method`).
    /// `client_id` is the id the session will have (an assigned one if the client sent none).
    pub fn check_connect(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        client_id: &str,
    ) -> Decision {
        if self.refuses_client_id(client_id) {
            return Decision::Refuse(Refusal::ClientIdRefused);
        }
        let Some(user) = username else {
            return if self.config.anonymous_allowed() {
                Decision::Allow
            } else {
                Decision::Refuse(Refusal::NotAuthorized)
            };
        };
        let Some(passwords) = &self.passwords else {
            // No password file: user names are not checked (as in mosquitto).
            return Decision::Allow;
        };
        match password {
            // Refused without a lookup, for known and unknown users alike.
            None => Decision::Refuse(Refusal::BadCredentials),
            Some(pw) => Decision::NeedsHashCheck(HashCheck {
                credential: passwords.lookup(user),
                password: Zeroizing::new(pw.to_vec()),
            }),
        }
    }

    /// Whether a v5 Authentication Method can be used: `SCRAM-SHA-256` with a password file.
    /// `Err(BadAuthMethod)` is the CONNACK answer otherwise [MQTT-4.12.0-1].
    pub fn scram_method(&self, method: &str) -> Result<(), Refusal> {
        if method == scram::METHOD && self.passwords.is_some() {
            Ok(())
        } else {
            Err(Refusal::BadAuthMethod)
        }
    }

    /// The ACL, when one is configured; without one everything is allowed.
    pub fn acl(&self) -> Option<&Arc<Acl>> {
        self.acl.as_ref()
    }

    /// Whether `who` may publish on `topic` (true without an ACL).
    pub fn may_publish(&self, who: &AclSubject<'_>, topic: &crate::router::TopicName) -> bool {
        self.acl.as_ref().is_none_or(|a| a.may_publish(who, topic))
    }

    /// Whether a message on `topic` may be delivered to `who` (true without an ACL).
    pub fn may_read(&self, who: &AclSubject<'_>, topic: &crate::router::TopicName) -> bool {
        self.acl.as_ref().is_none_or(|a| a.may_read(who, topic))
    }

    /// Whether `who` may subscribe to `filter` (true without an ACL).
    pub fn may_subscribe(&self, who: &AclSubject<'_>, filter: &crate::router::TopicFilter) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.may_subscribe(who, filter))
    }

    /// How much of `filter` `who` may read (`Full` without an ACL); see
    /// `Acl::subscribe_access`.
    pub fn subscribe_access(
        &self,
        who: &AclSubject<'_>,
        filter: &crate::router::TopicFilter,
    ) -> acl::SubscribeAccess {
        self.acl.as_ref().map_or(acl::SubscribeAccess::Full, |a| {
            a.subscribe_access(who, filter)
        })
    }

    /// The client-id policy alone (`check_connect` applies it too): for a CONNECT that
    /// authenticates with SCRAM instead of a password.
    pub fn check_client_id(&self, client_id: &str) -> Result<(), Refusal> {
        if self.refuses_client_id(client_id) {
            Err(Refusal::ClientIdRefused)
        } else {
            Ok(())
        }
    }

    /// The client-id policy of `Refusal::ClientIdRefused`.
    fn refuses_client_id(&self, client_id: &str) -> bool {
        self.acl.as_ref().is_some_and(|a| a.uses_client_id())
            && client_id.bytes().any(|b| matches!(b, b'/' | b'+' | b'#'))
    }
}

impl ScramUsers for Authenticator {
    fn scram_user(&self, username: &str) -> ScramUser {
        let known = self
            .passwords
            .as_ref()
            .and_then(|p| p.lookup(username).scram().cloned());
        match known {
            Some(c) => ScramUser::known(c),
            None => ScramUser::unknown(&self.scram_secret, username),
        }
    }
}

#[cfg(test)]
mod tests;
