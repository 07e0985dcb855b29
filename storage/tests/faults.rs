//! Failing commits: injected through `fault::FaultyBackend`, and real ones (a full tmpfs, a
//! read-only mount). The writer must answer `Failed` and never `Committed` for a transaction
//! that did not commit, keep the ops, and land them once the fault clears.
//!
//! The mount tests need root (CI runs as root). Without it they fail with a message that says
//! so: they are not skipped.

mod common;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ringmq_storage::fault::{FaultOn, FaultPlan};
use ringmq_storage::{Completion, FailureKind, OpenError, Store, StoreOptions, WriterOptions};

fn faulty(plan: &FaultPlan) -> StoreOptions {
    StoreOptions {
        backend: Some(plan.factory()),
        ..Default::default()
    }
}

/// Everything batch `t` writes: a session, a message and an entry referencing it.
fn ops(t: u64) -> Vec<ringmq_storage::Op> {
    let c = format!("c{t}");
    vec![
        put_session(&c, t as u32),
        put_message(t, b"body"),
        put_entry(&c, 1, t),
    ]
}

fn assert_batches_on_disk(dir: &Path, tickets: impl IntoIterator<Item = u64>) {
    let (_store, rec) = reopen(dir);
    for t in tickets {
        let c = b(&format!("c{t}"));
        let s = rec
            .sessions
            .iter()
            .find(|s| s.client == c)
            .unwrap_or_else(|| panic!("batch {t} lost"));
        assert_eq!(s.entries, vec![(1, entry(t))]);
        assert!(rec.messages.contains_key(&t));
    }
}

#[test]
fn failed_syncs_answer_failed_then_the_retry_lands_them() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (w, _) = start(dir.path(), 1, &faulty(&plan), WriterOptions::default());
    assert_eq!(
        w.roundtrip(0, 1, ops(1)),
        Completion::Committed { ticket: 1 }
    );
    plan.fail_always(FaultOn::Sync, ErrorKind::Other);
    assert_eq!(
        w.roundtrip(0, 2, ops(2)),
        Completion::Failed {
            ticket: 2,
            kind: FailureKind::Io
        }
    );
    assert!(!w.writer.healthy());
    // While unhealthy a new batch is answered at once, and kept.
    let t0 = Instant::now();
    assert_eq!(
        w.roundtrip(0, 3, ops(3)),
        Completion::Failed {
            ticket: 3,
            kind: FailureKind::Io
        }
    );
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "answered without waiting for the retry"
    );
    // Once syncs succeed again, the retry (after a reopen) commits batches 2 and 3.
    plan.heal();
    assert_eq!(w.next(0), Completion::Committed { ticket: 3 });
    assert!(w.writer.healthy());
    assert!(plan.injected() >= 1);
    w.writer.stop().unwrap();
    assert_batches_on_disk(dir.path(), 1..=3);
}

#[test]
fn a_one_shot_write_failure_is_failed_then_committed_by_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (w, _) = start(dir.path(), 1, &faulty(&plan), WriterOptions::default());
    plan.fail_nth(FaultOn::Write, 1, ErrorKind::StorageFull);
    assert_eq!(
        w.roundtrip(0, 1, ops(1)),
        Completion::Failed {
            ticket: 1,
            kind: FailureKind::DiskFull
        }
    );
    assert_eq!(w.next(0), Completion::Committed { ticket: 1 });
    w.writer.stop().unwrap();
    assert_batches_on_disk(dir.path(), [1]);
}

#[test]
fn while_every_commit_fails_nothing_is_committed_and_all_lands_after_healing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (w, _) = start(dir.path(), 2, &faulty(&plan), WriterOptions::default());
    assert_eq!(
        w.roundtrip(0, 1, ops(1)),
        Completion::Committed { ticket: 1 }
    );
    plan.fail_always(FaultOn::AnyWrite, ErrorKind::StorageFull);
    let mut next = 2;
    let end = Instant::now() + Duration::from_millis(1600);
    while Instant::now() < end {
        let source = (next % 2) as usize;
        w.send(source, next, ops(next));
        match w.next(source) {
            Completion::Failed { ticket, kind } => {
                assert_eq!((ticket, kind), (next, FailureKind::DiskFull));
            }
            other => panic!("{other:?} while every write fails"),
        }
        next += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several retries ran and failed; still nothing committed.
    assert!(
        w.writer.stats().failed_transactions >= 3,
        "{:?}",
        w.writer.stats()
    );
    assert!(w.done.iter().all(|d| d.is_empty()));
    assert!(!w.writer.healthy());
    plan.heal();
    let last = next - 1;
    let expect = |s: u64| (2..=last).filter(|t| t % 2 == s).max().unwrap();
    assert_eq!(w.next(0), Completion::Committed { ticket: expect(0) });
    assert_eq!(w.next(1), Completion::Committed { ticket: expect(1) });
    assert!(w.writer.healthy());
    assert_eq!(w.writer.stats().pending_ops, 0);
    w.writer.stop().unwrap();
    assert_batches_on_disk(dir.path(), 1..=last);
}

#[test]
fn stop_while_unhealthy_reports_what_is_not_durable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (w, _) = start(dir.path(), 1, &faulty(&plan), WriterOptions::default());
    plan.fail_always(FaultOn::Sync, ErrorKind::Other);
    assert!(matches!(
        w.roundtrip(0, 1, ops(1)),
        Completion::Failed { .. }
    ));
    let err = w.writer.stop().unwrap_err();
    assert!(
        matches!(
            err,
            ringmq_storage::StopError::NotDurable {
                ops: 3,
                kind: FailureKind::Io
            }
        ),
        "{err}"
    );
    plan.heal();
    // A failed fsync does not say the data is absent: the batch is either wholly there or not.
    let (_s, rec) = reopen(dir.path());
    match rec.sessions.as_slice() {
        [] => assert!(rec.messages.is_empty()),
        [s] => assert_eq!(s.entries, vec![(1, entry(1))]),
        more => panic!("{more:?}"),
    }
}

#[test]
fn a_commit_whose_sync_failed_but_landed_keeps_the_reference_counts_right() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (w, _) = start(dir.path(), 1, &faulty(&plan), WriterOptions::default());
    // The pages and header are written, then the fsync fails: the commit is in the file.
    plan.fail_nth(FaultOn::Sync, 1, ErrorKind::Other);
    assert!(matches!(
        w.roundtrip(0, 1, ops(1)),
        Completion::Failed { ticket: 1, .. }
    ));
    assert_eq!(w.next(0), Completion::Committed { ticket: 1 });
    // Dropping the only reference must delete the message, as if the first try had succeeded.
    assert_eq!(
        w.roundtrip(0, 2, vec![remove_entry("c1", 1)]),
        Completion::Committed { ticket: 2 }
    );
    assert_eq!(w.writer.stats().anomalies, 0);
    w.writer.stop().unwrap();
    let (store, rec) = reopen(dir.path());
    assert_eq!(store.counts().unwrap().msgs, 0);
    assert_eq!(rec.repairs, Default::default());
}

/// A tmpfs mounted on a fresh directory; unmounted on drop.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(options: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&path)
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (or CAP_SYS_ADMIN); mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount { path, _dir: dir }
    }

    fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", options])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success(), "remount {options}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_fails_commits_and_they_land_once_space_is_freed() {
    let m = Mount::tmpfs("size=4m");
    let store_dir = m.path.join("store");
    // Ballast to delete later, standing for whatever an operator frees.
    std::fs::write(m.path.join("ballast"), vec![1u8; 1536 << 10]).unwrap();
    let (w, _) = start(
        &store_dir,
        1,
        &StoreOptions::default(),
        WriterOptions::default(),
    );
    let payload = vec![0xabu8; 32 << 10];
    let mut committed = 0;
    let mut ticket = 0;
    let failed_at = loop {
        ticket += 1;
        assert!(ticket < 1000, "the disk never filled");
        let c = format!("c{ticket}");
        let batch = vec![
            put_session(&c, 1),
            put_message(ticket, &payload),
            put_entry(&c, 1, ticket),
        ];
        match w.roundtrip(0, ticket, batch) {
            Completion::Committed { ticket } => committed = ticket,
            Completion::Failed { ticket, kind } => {
                assert_eq!(kind, FailureKind::DiskFull);
                break ticket;
            }
        }
    };
    assert!(committed >= 10, "only {committed} batches fit");
    // Still full: retries fail, new batches are refused at once, nothing is committed.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        w.done[0].is_empty(),
        "no answer while full: {:?}",
        w.done[0].try_recv()
    );
    assert!(!w.writer.healthy());
    std::fs::remove_file(m.path.join("ballast")).unwrap();
    assert_eq!(w.next(0), Completion::Committed { ticket: failed_at });
    assert!(w.writer.healthy());
    w.writer.stop().unwrap();
    let (_s, rec) = reopen(&store_dir);
    assert_eq!(rec.sessions.len() as u64, failed_at);
    assert_eq!(rec.messages.len() as u64, failed_at);
    assert!(
        rec.messages
            .values()
            .all(|m| m.payload.len() == payload.len())
    );
}

#[test]
fn a_read_only_file_system_is_an_io_error_naming_the_file() {
    // An empty read-only mount: the store cannot even be created.
    let m = Mount::tmpfs("size=1m,ro");
    let err = Store::open(&m.path.join("store"), &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&m.path.display().to_string()),
        "{err}"
    );

    // An existing store on a file system remounted read-only.
    let m = Mount::tmpfs("size=4m");
    let (store, _) = Store::open(&m.path, &StoreOptions::default()).unwrap();
    drop(store);
    m.remount("remount,ro");
    let err = Store::open(&m.path, &StoreOptions::default()).unwrap_err();
    let OpenError::Io { path, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(path, &m.path.join("ringmq.redb"));
    assert_eq!(source.kind(), ErrorKind::ReadOnlyFilesystem, "{source}");
    assert!(err.to_string().contains("ringmq.redb"), "{err}");
}
