//! `ringmq passwd`: adds, updates and deletes users in a password file.
//!
//! ```text
//! ringmq passwd [-c] [--stdin] [--no-scram] FILE USER    add or update USER
//! ringmq passwd -D FILE USER                             delete USER
//! ```
//!
//! Owns: editing the file. A new or changed user gets an argon2id hash and, unless
//! `--no-scram`, SCRAM-SHA-256 material (`password` module doc for the line format). Other
//! lines (users, comments, mosquitto hashes) are kept as they are, in their order. `-c`
//! starts a new file (replacing an existing one, as `mosquitto_passwd -c` does); without it
//! the file must exist and parse. The password is read from the terminal without echo, twice,
//! or with `--stdin` as the first line of standard input (line ending removed).
//!
//! The file is replaced atomically: written to a temporary file in the same directory with
//! mode 0600, flushed to disk, renamed over the old one, and the directory flushed; a reader
//! (the broker reloading) sees the old file or the new one, never a mix.
//!
//! Must never: echo or print a password, write a file the broker would refuse to load, or
//! leave a file readable by others.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::password::{self, PasswordFile, PasswordFileError, PasswordHash};
use super::random::{OsRandom, RandomSource};
use super::scram::{SCRAM_ITERATIONS, SCRAM_SALT_LEN, ScramCredentials};

/// What `ringmq passwd` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdArgs {
    pub file: PathBuf,
    pub user: String,
    pub action: PasswdAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswdAction {
    /// Add or update the user.
    Set {
        /// `-c`: start a new file.
        create: bool,
        /// `--stdin`: password from standard input instead of the terminal.
        from_stdin: bool,
        /// Write SCRAM-SHA-256 material (not with `--no-scram`).
        scram: bool,
    },
    /// `-D`: remove the user.
    Delete,
}

/// The usage line, for `--help` and errors.
pub const PASSWD_USAGE: &str =
    "ringmq passwd [-c] [--stdin] [--no-scram] FILE USER | ringmq passwd -D FILE USER";

/// Why a user name cannot go into a password file, or `None` if it can.
pub fn invalid_user_name(user: &str) -> Option<&'static str> {
    if user.is_empty() {
        Some("the user name is empty")
    } else if user.contains(':') {
        Some("a user name cannot contain ':'")
    } else if user.chars().any(char::is_control) {
        Some("a user name cannot contain control characters")
    } else if user.trim() != user {
        Some("a user name cannot start or end with blanks")
    } else if user.starts_with('#') {
        Some("a user name cannot start with '#' (it would read as a comment)")
    } else if user.len() > usize::from(u16::MAX) {
        Some("a user name is at most 65535 bytes (MQTT)")
    } else {
        None
    }
}

/// Why `ringmq passwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not exist (use -c to create it)", path.display())]
    Missing { path: PathBuf },
    #[error("{} is not a valid password file, not changed: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: PasswordFileError,
    },
    #[error("user {user:?} is not in {}", path.display())]
    NoSuchUser { path: PathBuf, user: String },
    #[error("cannot read the password: {0}")]
    Input(std::io::Error),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("the passwords do not match")]
    Mismatch,
    #[error("cannot hash the password: {0}")]
    Hash(#[from] password::HashError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the command, reading the password from the terminal or standard input.
pub fn run(args: &PasswdArgs) -> Result<(), PasswdError> {
    let password = match args.action {
        PasswdAction::Delete => None,
        PasswdAction::Set { from_stdin, .. } => Some(if from_stdin {
            password_from(&mut std::io::stdin().lock())?
        } else {
            password_from_terminal()?
        }),
    };
    run_with(args, password.as_ref().map(|p| p.as_bytes()), &mut OsRandom)
}

/// `run` with the password already read (`None` for `-D`): the testable part.
pub fn run_with(
    args: &PasswdArgs,
    password: Option<&[u8]>,
    rng: &mut dyn RandomSource,
) -> Result<(), PasswdError> {
    let existing = match args.action {
        PasswdAction::Set { create: true, .. } => None,
        PasswdAction::Set { create: false, .. } | PasswdAction::Delete => {
            Some(read_existing(&args.file)?)
        }
    };
    let new_line = match (args.action, password) {
        (PasswdAction::Delete, _) => None,
        (PasswdAction::Set { scram, .. }, Some(pw)) => Some(user_line(&args.user, pw, scram, rng)?),
        (PasswdAction::Set { .. }, None) => return Err(PasswdError::EmptyPassword),
    };
    let (text, found) = edit(
        existing.as_deref().unwrap_or(""),
        &args.user,
        new_line.as_deref(),
    );
    if !found && args.action == PasswdAction::Delete {
        return Err(PasswdError::NoSuchUser {
            path: args.file.clone(),
            user: args.user.clone(),
        });
    }
    write_atomically(&args.file, &text).map_err(|source| PasswdError::Write {
        path: args.file.clone(),
        source,
    })
}

/// The file's text, which must parse (the tool never edits a file the broker would refuse).
fn read_existing(path: &Path) -> Result<String, PasswdError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PasswdError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(PasswdError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    PasswordFile::parse(&text, &mut OsRandom).map_err(|source| PasswdError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(text)
}

/// `USER:ARGON2ID[:SCRAM]`.
fn user_line(
    user: &str,
    password: &[u8],
    scram: bool,
    rng: &mut dyn RandomSource,
) -> Result<String, PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let hash = PasswordHash::argon2id(password, rng)?;
    let mut line = format!("{user}:{hash}");
    if scram {
        let mut salt = [0u8; SCRAM_SALT_LEN];
        rng.fill(&mut salt).map_err(password::HashError::from)?;
        let creds = ScramCredentials::derive(password, &salt, SCRAM_ITERATIONS);
        line.push(':');
        line.push_str(&password::format_scram_field(&creds));
    }
    Ok(line)
}

/// Replaces `user`'s line with `new_line` (or removes it when `None`), keeping every other
/// line; appends `new_line` when the user is not there. Returns the text and whether the
/// user was found.
fn edit(text: &str, user: &str, new_line: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + new_line.map_or(0, str::len) + 1);
    let mut found = false;
    for line in text.lines() {
        let is_user = matches!(password::parse_line(line), Ok(Some((u, _))) if u == user);
        if is_user {
            found = true;
            if let Some(new) = new_line {
                out.push_str(new);
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let (false, Some(new)) = (found, new_line) {
        out.push_str(new);
        out.push('\n');
    }
    (out, found)
}

/// Temporary file (mode 0600) in the same directory, fsync, rename, fsync the directory.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode above is filtered by the umask; set it outright.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    std::fs::File::open(&dir)?.sync_all()
}

/// The first line of `input`, without its line ending.
fn password_from(input: &mut dyn BufRead) -> Result<Zeroizing<String>, PasswdError> {
    let mut line = Zeroizing::new(String::new());
    input.read_line(&mut line).map_err(PasswdError::Input)?;
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    if line.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    Ok(line)
}

/// Prompts twice on the terminal without echo.
fn password_from_terminal() -> Result<Zeroizing<String>, PasswdError> {
    let first =
        Zeroizing::new(rpassword::prompt_password("Password: ").map_err(PasswdError::Input)?);
    if first.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let again = Zeroizing::new(
        rpassword::prompt_password("Reenter password: ").map_err(PasswdError::Input)?,
    );
    if *first != *again {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_keeps_other_lines_and_order() {
        let text = "# users\nalice:$6$x\n\nbob:$7$y\n";
        let (t, found) = edit(text, "alice", Some("alice:NEW"));
        // parse_line fails on the fake hashes, so nothing matches: appended.
        assert!(!found);
        assert_eq!(t, "# users\nalice:$6$x\n\nbob:$7$y\nalice:NEW\n");

        let h = PasswordHash::argon2id(b"pw", &mut OsRandom).expect("hash");
        let text = format!("# users\r\nalice:{h}\n\nbob:{h}");
        let (t, found) = edit(&text, "alice", Some("alice:NEW"));
        assert!(found);
        assert_eq!(t, format!("# users\nalice:NEW\n\nbob:{h}\n"));
        let (t, found) = edit(&text, "bob", None);
        assert!(found);
        assert_eq!(t, format!("# users\nalice:{h}\n\n"));
        let (t, found) = edit("", "carol", Some("carol:X"));
        assert!(!found);
        assert_eq!(t, "carol:X\n");
    }

    #[test]
    fn password_from_stdin_takes_the_first_line() {
        let p = |s: &str| password_from(&mut s.as_bytes()).map(|z| z.to_string());
        assert_eq!(p("secret\n").expect("lf"), "secret");
        assert_eq!(p("secret\r\nmore\n").expect("crlf"), "secret");
        assert_eq!(p(" spaced out ").expect("no newline"), " spaced out ");
        assert!(matches!(p("\n"), Err(PasswdError::EmptyPassword)));
        assert!(matches!(p(""), Err(PasswdError::EmptyPassword)));
    }

    #[test]
    fn user_names_that_cannot_be_stored() {
        for bad in ["", "a:b", "a\nb", " a", "a ", "#a", "a\tb"] {
            assert!(invalid_user_name(bad).is_some(), "{bad:?}");
        }
        for good in ["a", "a b", "user@example.com", "a/#", "d\u{e9}j\u{e0}"] {
            assert_eq!(invalid_user_name(good), None, "{good:?}");
        }
    }
}
