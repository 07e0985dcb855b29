//! Black-box tests of `ringmq passwd`: the built binary, passwords on standard input
//! (`--stdin`), and the file it leaves checked with the library's own parser.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ringmq::auth::password::PasswordFile;
use ringmq::auth::random::OsRandom;

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ringmq-passwd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `ringmq passwd ARGS` with `stdin` as standard input.
fn passwd(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmq");
    let mut input = child.stdin.take().expect("stdin");
    // The tool may exit before reading (usage errors): a broken pipe is fine then.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("wait")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "passwd prints nothing on success");
}

fn failed(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

fn load(path: &Path) -> PasswordFile {
    let text = std::fs::read_to_string(path).expect("read");
    PasswordFile::parse(&text, &mut OsRandom).expect("the broker can load it")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn create_add_update_delete() {
    let dir = TempDir::new("cycle");
    let file = dir.0.join("passwords");
    let f = file.to_str().expect("utf-8 path");

    ok(&passwd(&["-c", "--stdin", f, "alice"], "wonderland\n"));
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    let line = text.lines().next().expect("one line");
    assert!(
        line.starts_with("alice:$argon2id$v=19$m=7168,t=5,p=1$"),
        "{line}"
    );
    assert!(line.contains(":$scram-sha-256$i=4096$"), "{line}");
    assert!(!text.contains("wonderland"));
    assert!(load(&file).lookup("alice").verify(b"wonderland"));

    ok(&passwd(&["--stdin", "--no-scram", f, "bob"], "builder\r\n"));
    let pw = load(&file);
    assert!(pw.lookup("bob").verify(b"builder"), "CRLF removed");
    assert!(pw.lookup("bob").scram().is_none());
    assert!(pw.lookup("alice").scram().is_some());

    ok(&passwd(&["--stdin", f, "alice"], "new one\n"));
    let pw = load(&file);
    assert!(pw.lookup("alice").verify(b"new one"));
    assert!(!pw.lookup("alice").verify(b"wonderland"));
    assert_eq!(pw.len(), 2);
    let order: Vec<String> = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .map(|l| l.split(':').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(order, ["alice", "bob"], "updated in place");

    ok(&passwd(&["-D", f, "alice"], ""));
    let pw = load(&file);
    assert_eq!(pw.len(), 1);
    assert!(!pw.lookup("alice").verify(b"new one"));
    assert_eq!(mode(&file), 0o600);

    failed(&passwd(&["-D", f, "alice"], ""), 1, "not in");
    // -c replaces the file.
    ok(&passwd(&["-c", "--stdin", f, "carol"], "c\n"));
    let pw = load(&file);
    assert_eq!(pw.len(), 1);
    assert!(pw.lookup("carol").verify(b"c"));
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["passwords"], "no temporary files left behind");
}

#[test]
fn keeps_mosquitto_lines_and_comments() {
    let dir = TempDir::new("mosq");
    let file = dir.0.join("pw");
    // alice / secret, written by mosquitto_passwd 2.0.11 (see src/auth/password/tests.rs).
    let mosquitto = "# managed by hand\n\
        alice:$7$101$BW726NgiluKURka5$gt72JOwWhNSE97oHYKGfcphmK9HiLaQH2rynfAW76MlVrAtLUT4Gybfi4auMvJFUj6OYvA5GikSh8mAEZzOygw==\n";
    std::fs::write(&file, mosquitto).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    ok(&passwd(
        &["--stdin", file.to_str().expect("path"), "dave"],
        "d4ve\n",
    ));
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.starts_with(mosquitto),
        "existing lines untouched:\n{text}"
    );
    let pw = load(&file);
    assert!(pw.lookup("alice").verify(b"secret"));
    assert!(pw.lookup("dave").verify(b"d4ve"));
    assert_eq!(mode(&file), 0o600, "tightened to 0600");
}

#[test]
fn refusals_leave_the_file_alone() {
    let dir = TempDir::new("refuse");
    let file = dir.0.join("pw");
    let f = file.to_str().expect("path");

    failed(
        &passwd(&["--stdin", f, "u"], "x\n"),
        1,
        "does not exist (use -c",
    );
    assert!(!file.exists());
    failed(&passwd(&["-c", "--stdin", f, "u"], "\n"), 1, "empty");
    assert!(!file.exists());

    let broken = "ok:$6$c2FsdA==$c2FsdA==\n";
    std::fs::write(&file, broken).expect("write");
    failed(&passwd(&["--stdin", f, "u"], "x\n"), 1, "line 1");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), broken);

    // Usage errors exit 2 (as for the broker's own flags).
    failed(&passwd(&["--stdin", f], "x\n"), 2, "FILE and USER");
    failed(&passwd(&["--stdin", f, "a:b"], "x\n"), 2, "':'");
    failed(&passwd(&["-D", "-c", f, "u"], ""), 2, "-D takes no");
    failed(
        &passwd(&["--bogus", f, "u"], ""),
        2,
        "unknown passwd option",
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), broken);
}

#[test]
fn help_mentions_passwd_and_broker_flags_still_work() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("ringmq passwd [-c]") && help.contains("--listen URL"));
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--shards", "0"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "broker flags are parsed as before"
    );
}
