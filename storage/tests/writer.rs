//! The writer thread against a real redb file: completions per source in ticket order, group
//! commit, folding (cancellation), message reference counts, relaxed mode, stop, heartbeat, and
//! that what was committed is what recovery reads back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ringmq_storage::{
    AwaitRelRecord, Completion, Durability, EntryState, MsgId, Op, StoreOptions, WriterOptions,
};

#[test]
fn batches_from_many_threads_complete_in_ticket_order_and_group() {
    let dir = tempfile::tempdir().unwrap();
    const SOURCES: usize = 4;
    const BATCHES: u64 = 300;
    let (w, _) = start_default(dir.path(), SOURCES);
    let senders: Vec<_> = (0..SOURCES)
        .map(|s| {
            let tx = w.writer.sender();
            std::thread::spawn(move || {
                for t in 1..=BATCHES {
                    let client = format!("s{s}-c{}", t % 10);
                    let ops = vec![
                        put_message(s as u64 * 1_000_000 + t, b"payload"),
                        put_session(&client, t as u32),
                        put_entry(&client, t, s as u64 * 1_000_000 + t),
                    ];
                    tx.send(ringmq_storage::Batch {
                        source: s,
                        ticket: t,
                        ops,
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in senders {
        t.join().unwrap();
    }
    for s in 0..SOURCES {
        let mut last = 0;
        while last < BATCHES {
            match w.next(s) {
                Completion::Committed { ticket } => {
                    assert!(ticket > last, "source {s}: ticket {ticket} after {last}");
                    last = ticket;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let stats = w.writer.stats();
    assert_eq!(stats.batches, SOURCES as u64 * BATCHES);
    assert!(
        stats.transactions < stats.batches,
        "group commit: {} batches in {} transactions",
        stats.batches,
        stats.transactions
    );
    w.writer.stop().unwrap();
    let (store, rec) = reopen(dir.path());
    let counts = store.counts().unwrap();
    assert_eq!(counts.sessions, SOURCES as u64 * 10);
    assert_eq!(counts.entries, SOURCES as u64 * BATCHES);
    assert_eq!(counts.msgs, SOURCES as u64 * BATCHES);
    assert_eq!(rec.max_msg_id, (SOURCES as u64 - 1) * 1_000_000 + BATCHES);
}

#[test]
fn one_payload_for_a_hundred_entries_is_stored_once_and_freed_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    let mut ops = vec![put_message(42, &[7u8; 1000])];
    for i in 0..100 {
        let c = format!("client-{i}");
        ops.push(put_session(&c, 60));
        ops.push(put_entry(&c, 1, 42));
    }
    assert_eq!(w.roundtrip(0, 1, ops), Completion::Committed { ticket: 1 });
    let stats = w.writer.stats();
    w.writer.stop().unwrap();
    // 100 sessions + 100 entries + 1 message (+ nothing else).
    assert_eq!(stats.rows_written, 201);
    let (store, rec) = reopen(dir.path());
    let counts = store.counts().unwrap();
    assert_eq!((counts.entries, counts.msgs), (100, 1));
    assert_eq!(rec.messages.len(), 1);
    assert_eq!(rec.messages[&42].payload.len(), 1000);
    drop(store);

    // Removing 99 references keeps the message; the last one deletes it.
    let (w, _) = start_default(dir.path(), 1);
    let ops = (0..99)
        .map(|i| remove_entry(&format!("client-{i}"), 1))
        .collect();
    assert_eq!(w.roundtrip(0, 1, ops), Completion::Committed { ticket: 1 });
    w.writer.stop().unwrap();
    let (store, _) = reopen(dir.path());
    assert_eq!(store.counts().unwrap().msgs, 1);
    drop(store);
    let (w, _) = start_default(dir.path(), 1);
    assert_eq!(
        w.roundtrip(0, 1, vec![remove_entry("client-99", 1)]),
        Completion::Committed { ticket: 1 }
    );
    w.writer.stop().unwrap();
    let (store, rec) = reopen(dir.path());
    assert_eq!(store.counts().unwrap().msgs, 0);
    assert_eq!(
        rec.repairs.unreferenced_messages, 0,
        "the writer deleted it, not recovery"
    );
}

#[test]
fn a_message_put_again_while_stored_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    w.roundtrip(
        0,
        1,
        vec![
            put_session("a", 1),
            put_message(1, b"x"),
            put_entry("a", 1, 1),
        ],
    );
    let before = w.writer.stats().rows_written;
    w.roundtrip(0, 2, vec![put_message(1, b"x"), put_entry("a", 2, 1)]);
    assert_eq!(w.writer.stats().rows_written - before, 1, "only the entry");
    w.writer.stop().unwrap();
}

#[test]
fn enqueue_and_ack_in_one_transaction_never_reach_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    w.roundtrip(0, 1, vec![put_session("a", 1)]);
    let before = w.writer.stats();
    let ops = vec![
        put_message(9, b"quick"),
        put_entry("a", 1, 9),
        Op::SetEntryState {
            client: b("a"),
            seq: 1,
            state: EntryState::Sent { packet_id: 1 },
        },
        remove_entry("a", 1),
        put_await("a", 5, Some(9)),
        Op::RemoveAwaitRel {
            client: b("a"),
            packet_id: 5,
        },
    ];
    assert_eq!(w.roundtrip(0, 2, ops), Completion::Committed { ticket: 2 });
    let after = w.writer.stats();
    assert_eq!(
        after.rows_written, before.rows_written,
        "no entry, await-rel or message row written"
    );
    assert_eq!(after.rows_removed, before.rows_removed);
    assert_eq!(after.absorbed_ops - before.absorbed_ops, 3);
    w.writer.stop().unwrap();
    let (store, _) = reopen(dir.path());
    let c = store.counts().unwrap();
    assert_eq!((c.entries, c.msgs, c.await_rel), (0, 0, 0));
}

#[test]
fn a_message_nobody_references_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    w.roundtrip(0, 1, vec![put_message(5, b"orphan")]);
    assert_eq!(w.writer.stats().rows_written, 0);
    w.writer.stop().unwrap();
}

#[test]
fn remove_session_removes_everything_of_that_client_and_frees_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    let mut ops = vec![put_message(1, b"one"), put_message(2, b"two")];
    for c in ["a", "ab", "b"] {
        ops.push(put_session(c, 1));
        ops.push(Op::PutSub {
            client: b(c),
            filter: b("x/#"),
            record: sub(1),
        });
        ops.push(Op::PutSub {
            client: b(c),
            filter: b("y/+"),
            record: sub(2),
        });
        ops.push(put_entry(c, 1, 1));
        ops.push(put_await(c, 3, Some(2)));
    }
    w.roundtrip(0, 1, ops);
    // "a" goes; "ab" (a longer id with the same prefix) and "b" stay.
    w.roundtrip(
        0,
        2,
        vec![
            Op::RemoveSession { client: b("a") },
            Op::RemoveSession { client: b("b") },
        ],
    );
    w.writer.stop().unwrap();
    let (store, rec) = reopen(dir.path());
    let c = store.counts().unwrap();
    assert_eq!(
        (c.sessions, c.subs, c.entries, c.await_rel, c.msgs),
        (1, 2, 1, 1, 2)
    );
    assert_eq!(rec.sessions.len(), 1);
    let s = &rec.sessions[0];
    assert_eq!(s.client, b("ab"));
    assert_eq!(s.subs.len(), 2);
    assert_eq!(s.entries, vec![(1, entry(1))]);
    assert_eq!(
        s.await_rel,
        vec![(
            3,
            AwaitRelRecord {
                msg: Some(MsgId(2))
            }
        )]
    );
    drop(store);
    let (w, _) = start_default(dir.path(), 1);
    w.roundtrip(0, 1, vec![Op::RemoveSession { client: b("ab") }]);
    w.writer.stop().unwrap();
    let (store, _) = reopen(dir.path());
    assert_eq!(store.counts().unwrap(), Default::default());
}

#[test]
fn recovery_reads_back_exactly_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (w, rec) = start_default(dir.path(), 2);
    assert!(rec.sessions.is_empty() && rec.last_alive_ms.is_none());
    let retained = message(b"last value");
    w.roundtrip(
        0,
        1,
        vec![
            put_message(10, b"m10"),
            put_session("dev-1", 3600),
            Op::PutSub {
                client: b("dev-1"),
                filter: b("cmd/dev-1/#"),
                record: sub(3),
            },
            put_entry("dev-1", 5, 10),
            put_entry("dev-1", 6, 10),
            Op::SetEntryState {
                client: b("dev-1"),
                seq: 5,
                state: EntryState::Released { packet_id: 77 },
            },
            put_await("dev-1", 12, None),
            Op::PutRetained {
                topic: b("status/dev-1"),
                record: retained.clone(),
            },
            Op::PutRetained {
                topic: b("status/old"),
                record: retained.clone(),
            },
        ],
    );
    w.roundtrip(
        1,
        1,
        vec![
            Op::RemoveRetained {
                topic: b("status/old"),
            },
            Op::RemoveSub {
                client: b("dev-1"),
                filter: b("nothing"),
            },
        ],
    );
    w.writer.stop().unwrap();
    let (_store, rec) = reopen(dir.path());
    assert_eq!(rec.sessions.len(), 1);
    let s = &rec.sessions[0];
    assert_eq!(s.record, session(3600));
    assert_eq!(s.subs, vec![(b("cmd/dev-1/#"), sub(3))]);
    let mut e5 = entry(10);
    e5.state = EntryState::Released { packet_id: 77 };
    assert_eq!(s.entries, vec![(5, e5), (6, entry(10))]);
    assert_eq!(s.await_rel, vec![(12, AwaitRelRecord { msg: None })]);
    assert_eq!(rec.retained, vec![(b("status/dev-1"), retained)]);
    assert_eq!(*rec.messages[&10], message(b"m10"));
    assert!(rec.last_alive_ms.is_some());
    assert_eq!(rec.max_msg_id, 10);
}

#[test]
fn relaxed_mode_commits_on_the_interval_and_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriterOptions {
        durability: Durability::Relaxed { interval_ms: 100 },
        ..Default::default()
    };
    let (w, _) = start(dir.path(), 1, &StoreOptions::default(), opts);
    let t0 = std::time::Instant::now();
    for t in 1..=20 {
        w.send(0, t, vec![put_session(&format!("c{t}"), 1)]);
    }
    let mut last = 0;
    while last < 20 {
        let Completion::Committed { ticket } = w.next(0) else {
            panic!("failed")
        };
        last = ticket;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(90),
        "waited for the interval"
    );
    // One commit for all 20 when they are sent within the interval; a loaded machine may
    // spread them over a few.
    assert!(w.writer.stats().transactions <= 3, "{:?}", w.writer.stats());
    w.writer.stop().unwrap();
    let (store, _) = reopen(dir.path());
    assert_eq!(store.counts().unwrap().sessions, 20);
}

#[test]
fn stop_commits_everything_already_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    for t in 1..=500u64 {
        w.send(
            0,
            t,
            vec![
                put_session(&format!("c{t}"), 1),
                put_message(t, b"x"),
                put_entry(&format!("c{t}"), 1, t),
            ],
        );
    }
    let Started { writer, done } = w;
    writer.stop().unwrap();
    let last = done[0].try_iter().last();
    assert_eq!(last, Some(Completion::Committed { ticket: 500 }));
    let (store, _) = reopen(dir.path());
    let c = store.counts().unwrap();
    assert_eq!((c.sessions, c.entries, c.msgs), (500, 500, 500));
}

#[test]
fn heartbeat_is_written_when_idle_and_notify_runs_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = ringmq_storage::Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let notified = Arc::new(std::sync::Mutex::new(Vec::new()));
    let n2 = notified.clone();
    let writer = store.start_writer(
        1,
        vec![tx],
        Arc::new(move |s: usize| n2.lock().unwrap().push(s)),
        WriterOptions::default(),
    );
    writer
        .send(ringmq_storage::Batch {
            source: 0,
            ticket: 1,
            ops: vec![],
        })
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(Completion::Committed { ticket: 1 })
    );
    assert!(wait_until(Duration::from_secs(5), || !notified
        .lock()
        .unwrap()
        .is_empty()));
    let t1 = writer.stats().transactions;
    assert!(
        wait_until(Duration::from_secs(5), || writer.stats().transactions > t1),
        "an idle heartbeat commit"
    );
    let err = writer
        .send(ringmq_storage::Batch {
            source: 3,
            ticket: 1,
            ops: vec![],
        })
        .unwrap_err();
    assert!(matches!(err, ringmq_storage::SendError::BadSource { .. }));
    writer.stop().unwrap();
    let before = ringmq_storage::Store::open(dir.path(), &StoreOptions::default())
        .unwrap()
        .1
        .last_alive_ms
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now >= before && now - before < 10_000,
        "last_alive_ms {before} vs now {now}"
    );
}

#[test]
fn client_ids_are_opaque_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = start_default(dir.path(), 1);
    let odd = Bytes::from_static(&[0, 255, 0, 1]);
    w.roundtrip(
        0,
        1,
        vec![Op::PutSession {
            client: odd.clone(),
            record: session(1),
        }],
    );
    w.writer.stop().unwrap();
    let (_s, rec) = reopen(dir.path());
    assert_eq!(rec.sessions[0].client, odd);
}
