//! A panic on a shard thread stops the whole process (logged, then SIGABRT); a panic that is
//! contained on purpose elsewhere (redb's panics inside `Store::open`, a verifier job) does
//! not. The hook is the one `main` installs (`ringmq::shard::panic`); each case runs in a
//! child process (this test binary again, with `RINGMQ_TEST_PANIC_CHILD` naming the case),
//! because an abort ends the process it happens in.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use ringmq::shard::panic::{SHARD_THREAD_PREFIX, install_abort_on_shard_panic, is_shard_thread};

const CHILD: &str = "RINGMQ_TEST_PANIC_CHILD";

/// The child's body: a no-op in a normal test run (the variable is unset).
#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD) else {
        return;
    };
    install_abort_on_shard_panic();
    match case.as_str() {
        "shard" => {
            ringmq::log!(INFO, Some(3), "a line queued before the panic");
            let t = std::thread::Builder::new()
                .name(format!("{SHARD_THREAD_PREFIX}3"))
                .spawn(|| panic!("deliberate test panic"))
                .expect("spawn");
            let _ = t.join();
        }
        "contained" => {
            // As `ringmq_storage::Store::open` contains redb's panics on the starting thread.
            let caught = std::panic::catch_unwind(|| panic!("contained on the main thread"));
            assert!(caught.is_err());
            // As a verifier thread whose job panics.
            let t = std::thread::Builder::new()
                .name("ringmq-verify-0".to_owned())
                .spawn(|| {
                    let caught = std::panic::catch_unwind(|| panic!("contained job"));
                    assert!(caught.is_err());
                })
                .expect("spawn");
            t.join().expect("the verifier thread survives");
        }
        other => panic!("unknown case {other}"),
    }
    println!("child survived");
}

fn run_child(case: &str) -> Output {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, case)
        .output()
        .expect("child runs")
}

#[test]
fn a_shard_thread_panic_aborts_the_process_after_logging_it() {
    let out = run_child("shard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{:?}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("child survived"), "{stdout}");
    let queued = stderr
        .find("a line queued before the panic")
        .expect("queued lines are flushed first");
    let panic_line = stderr
        .lines()
        .find(|l| l.contains("shard thread panicked"))
        .unwrap_or_else(|| panic!("no panic line:\n{stderr}"));
    assert!(
        panic_line.contains("ERROR")
            && panic_line.contains("shard 3")
            && panic_line.contains("deliberate test panic")
            && panic_line.contains("panic_hook.rs"),
        "{panic_line}"
    );
    assert!(queued < stderr.find("shard thread panicked").expect("found"));
}

#[test]
fn contained_panics_on_other_threads_do_not_abort() {
    let out = run_child("contained");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("child survived"), "{stdout}");
}

/// The hook recognises the broker's shard threads by their names: every shard runs on a
/// thread the hook aborts for.
#[test]
fn the_shards_run_on_threads_the_hook_aborts_for() {
    let broker = common::Broker::start(3);
    let mut shard_threads = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let comm =
            std::fs::read_to_string(task.expect("task").path().join("comm")).unwrap_or_default();
        if is_shard_thread(Some(comm.trim_end())) {
            shard_threads += 1;
        }
    }
    assert_eq!(shard_threads, 3);
    broker.stop();
}
