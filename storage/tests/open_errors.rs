//! `Store::open` on files it must refuse: locked, damaged, truncated, another format version,
//! a foreign redb file, a record that does not decode. Each gives its `OpenError` variant with
//! the file named in the message, and none panics, not even in this debug build where redb
//! panics on some damaged pages.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use redb::{Database, TableDefinition};
use ringmq_storage::{Completion, OpenError, Store, StoreOptions};

const FILE: &str = "ringmq.redb";

/// A store with 300 sessions, each with a message and an entry.
fn populated(dir: &Path) -> Vec<u8> {
    let (w, _) = start_default(dir, 1);
    for t in 1..=300u64 {
        let c = format!("client-{t}");
        let ops = vec![
            put_session(&c, 1),
            put_message(t, &[t as u8; 200]),
            put_entry(&c, 1, t),
        ];
        assert_eq!(w.roundtrip(0, t, ops), Completion::Committed { ticket: t });
    }
    w.writer.stop().unwrap();
    std::fs::read(dir.join(FILE)).unwrap()
}

fn open(dir: &Path) -> Result<usize, OpenError> {
    Store::open(dir, &StoreOptions::default()).map(|(_, r)| r.sessions.len())
}

#[test]
fn a_second_open_in_this_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Locked { path } if path.ends_with(FILE)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&dir.path().join(FILE).display().to_string()),
        "{err}"
    );
    // A running writer holds the lock too; stopping it releases it.
    let (tx, _rx) = crossbeam_channel::unbounded();
    let w = first.start_writer(
        1,
        vec![tx],
        std::sync::Arc::new(|_s: usize| {}),
        Default::default(),
    );
    assert!(matches!(open(dir.path()), Err(OpenError::Locked { .. })));
    w.stop().unwrap();
    assert_eq!(open(dir.path()).unwrap(), 0);
}

/// Child mode for the test below: holds the store open until killed.
#[test]
fn hold_store_child() {
    let Some(dir) = std::env::var_os("RINGMQ_STORAGE_HOLD_DIR") else {
        return;
    };
    let (_store, _) = Store::open(Path::new(&dir), &StoreOptions::default()).unwrap();
    println!("HELD");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn an_open_held_by_another_process_is_locked_until_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_store_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGMQ_STORAGE_HOLD_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("HELD")),
        "the child did not open the store"
    );
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(open(dir.path()).unwrap(), 0);
}

#[test]
fn garbage_is_corrupt_and_an_empty_file_is_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join(FILE), &garbage).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains("damaged or not a RingMQ store"),
        "{err}"
    );
    std::fs::write(dir.path().join(FILE), b"").unwrap();
    assert_eq!(open(dir.path()).unwrap(), 0);
}

#[test]
fn a_truncated_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let orig = populated(dir.path());
    for cut in [
        100,
        511,
        4096,
        8192,
        orig.len() / 2,
        orig.len() - 4096,
        orig.len() - 1,
    ] {
        std::fs::write(dir.path().join(FILE), &orig[..cut]).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(err, OpenError::Corrupt { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    std::fs::write(dir.path().join(FILE), &orig).unwrap();
    assert_eq!(open(dir.path()).unwrap(), 300);
}

/// Damage to any page gives `Corrupt` or (in unused space, or inside a payload) a store that
/// still opens; never a panic. Without `verify_on_open` some of these reach redb's debug
/// panics, which open contains; with it every damaged tree page is found by its checksum.
#[test]
fn damaged_pages_are_corrupt_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let orig = populated(dir.path());
    let mut contained = 0;
    for verify in [false, true] {
        let options = StoreOptions {
            verify_on_open: verify,
            ..Default::default()
        };
        let mut corrupt = 0;
        for page in 0..orig.len() / 4096 {
            for off in [0, 100, 2000] {
                let mut d = orig.clone();
                let at = page * 4096 + off;
                d[at..at + 64].iter_mut().for_each(|b| *b ^= 0x5a);
                std::fs::write(dir.path().join(FILE), &d).unwrap();
                match Store::open(dir.path(), &options) {
                    Ok(_) => {}
                    Err(OpenError::Corrupt { detail, .. }) => {
                        corrupt += 1;
                        if detail.contains("stopped on damaged data") {
                            contained += 1;
                            assert!(!verify, "verify_on_open should catch it first: {detail}");
                        }
                    }
                    Err(e) => panic!("page {page}+{off}: {e:?}"),
                }
            }
        }
        assert!(
            corrupt > 20,
            "verify={verify}: only {corrupt} damaged pages noticed"
        );
    }
    assert!(
        contained > 0,
        "expected some of redb's panics to be contained"
    );
}

#[test]
fn another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = Database::create(dir.path().join(FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Version {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn a_foreign_redb_file_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, &str>::new("accounts"))
            .unwrap()
            .insert("a", "b")
            .unwrap();
        txn.commit().unwrap();
    }
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Corrupt { detail, .. } if detail.contains("not a RingMQ store")),
        "{err:?}"
    );
}

#[test]
fn a_record_that_does_not_decode_names_its_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = Database::create(dir.path().join(FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        let def = TableDefinition::<&[u8], &[u8]>::new("sessions");
        txn.open_table(def)
            .unwrap()
            .insert(&b"client-7"[..], &[0xffu8][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let err = open(dir.path()).unwrap_err();
    let OpenError::Corrupt { detail, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        detail.contains("table sessions") && detail.contains("\"client-7\""),
        "{detail}"
    );
}

#[test]
fn a_directory_that_cannot_be_created_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file.join("store"), &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("a-file"), "{err}");
}
