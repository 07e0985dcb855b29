//! Password and ACL files for the authentication tests, in a directory of their own: made
//! by `mosquitto_passwd` (Debian package `mosquitto`, installed by `.ci/run`) and by
//! `ringmq passwd`, exactly as an operator would, and rewritten in place for reloads.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::process::DataDir;

/// A directory holding `passwd` and `acl`.
pub struct AuthFiles {
    dir: DataDir,
}

impl AuthFiles {
    pub fn new(tag: &str) -> AuthFiles {
        AuthFiles {
            dir: DataDir::new(&format!("auth-{tag}")),
        }
    }

    pub fn passwd(&self) -> PathBuf {
        self.dir.0.join("passwd")
    }

    pub fn acl(&self) -> PathBuf {
        self.dir.0.join("acl")
    }

    pub fn path_str(p: &std::path::Path) -> &str {
        p.to_str().expect("utf-8 path")
    }

    /// Adds `user` with `password` to `passwd` with `mosquitto_passwd -b` (its default
    /// format, `$7$` PBKDF2-SHA-512), plus `extra` options (e.g. `-I 3000000`).
    pub fn mosquitto_user(&self, user: &str, password: &str, extra: &[&str]) {
        let file = self.passwd();
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.args(extra);
        if !file.exists() {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&file)
            .args([user, password])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("mosquitto_passwd not runnable ({e}): install mosquitto (.ci/run does)")
            });
        assert!(status.success(), "mosquitto_passwd failed: {status}");
    }

    /// Adds `user` with `ringmq passwd --stdin` (argon2id and SCRAM-SHA-256 material).
    pub fn ringmq_user(&self, user: &str, password: &str) {
        let file = self.passwd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        cmd.arg("passwd");
        if !file.exists() {
            cmd.arg("-c");
        }
        let mut child = cmd
            .args(["--stdin", Self::path_str(&file), user])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringmq passwd");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .expect("password");
        drop(stdin);
        let out = child.wait_with_output().expect("ringmq passwd runs");
        assert!(
            out.status.success(),
            "ringmq passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replaces `passwd` with `text` (atomically, as `ringmq passwd` does).
    pub fn write_passwd(&self, text: &str) {
        write_atomically(&self.passwd(), text);
    }

    /// Replaces `acl` with `text` (atomically).
    pub fn write_acl(&self, text: &str) {
        write_atomically(&self.acl(), text);
    }
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over");
}
