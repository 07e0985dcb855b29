//! Recovery-time measurement: builds a store of 100,000 sessions x 10 subscriptions and
//! 1,000,000 queued entries over 10,000 shared messages, leaves it as a crash would (the
//! process exits without closing the database), then times what a restart does.
//!
//! ```text
//! cargo run --release -p ringmq-storage --example recovery_time -- build /tmp/rt
//! cargo run --release -p ringmq-storage --example recovery_time -- open /tmp/rt
//! ```
//!
//! `build` writes through the writer thread (batches of one session each, as a shard would
//! send them) and exits without stopping it. `open` times redb's repair of the crashed file
//! alone, then `Store::open` to `Recovered` on the repaired file (clean open, reading every
//! table, rebuilding reference counts), then the same with `verify_on_open`. Arguments after
//! the directory: sessions, subscriptions per session, entries, messages.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringmq_storage::{
    Batch, Completion, EntryRecord, EntryState, MessageRecord, MsgId, Op, SessionRecord, Store,
    StoreOptions, SubRecord, WriterOptions,
};

struct Shape {
    sessions: u64,
    subs: u64,
    entries: u64,
    messages: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = match args.as_slice() {
        [_, mode, dir, ..] => (mode.as_str(), Path::new(dir)),
        _ => {
            eprintln!("usage: recovery_time build|open DIR [sessions subs entries messages]");
            std::process::exit(2);
        }
    };
    let n = |i: usize, d: u64| args.get(i).map_or(d, |a| a.parse().expect("a number"));
    let shape = Shape {
        sessions: n(3, 100_000),
        subs: n(4, 10),
        entries: n(5, 1_000_000),
        messages: n(6, 10_000),
    };
    match mode {
        "build" => build(dir, &shape),
        "open" => open(dir),
        other => panic!("unknown mode {other}"),
    }
}

fn build(dir: &Path, shape: &Shape) {
    let _ = std::fs::remove_dir_all(dir);
    let (store, _) = Store::open(dir, &StoreOptions::default()).expect("open");
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = store.start_writer(
        1,
        vec![tx],
        Arc::new(|_s: usize| {}),
        WriterOptions::default(),
    );
    let bodies: Vec<Arc<MessageRecord>> = (0..shape.messages)
        .map(|i| {
            Arc::new(MessageRecord {
                topic: Bytes::from(format!("telemetry/site-{}/device/{i}", i % 100)),
                payload: Bytes::from(vec![(i % 251) as u8; 200]),
                qos: 1,
                retain: false,
                expires_at_ms: None,
                // An empty v5 property block (its length, 0), as the broker stores it.
                properties: Bytes::from_static(&[0]),
            })
        })
        .collect();
    let per_session = shape.entries / shape.sessions;
    let started = Instant::now();
    let mut acked = 0;
    for s in 0..shape.sessions {
        let client = Bytes::from(format!("device-{s:08}"));
        let mut ops = vec![Op::PutSession {
            client: client.clone(),
            record: SessionRecord {
                protocol: 5,
                expiry_secs: 86_400,
                connected: false,
                expires_at_ms: Some(1_800_000_000_000),
                will: None,
                will_due_ms: None,
            },
        }];
        for f in 0..shape.subs {
            ops.push(Op::PutSub {
                client: client.clone(),
                filter: Bytes::from(format!("commands/{s}/{f}/#")),
                record: SubRecord {
                    options: 1,
                    id: Some(f as u32 + 1),
                },
            });
        }
        for e in 0..per_session {
            let m = (s * per_session + e) % shape.messages;
            ops.push(Op::PutMessage {
                id: MsgId(m + 1),
                record: bodies[m as usize].clone(),
            });
            ops.push(Op::PutEntry {
                client: client.clone(),
                seq: e,
                record: EntryRecord {
                    msg: MsgId(m + 1),
                    qos: 1,
                    retain: false,
                    sub_ids: vec![1],
                    state: EntryState::Queued,
                },
            });
        }
        writer
            .send(Batch {
                source: 0,
                ticket: s + 1,
                ops,
            })
            .expect("send");
        // Keep about 64 batches in flight, as a shard would.
        while s + 1 - acked > 64 {
            if let Completion::Committed { ticket } = rx.recv().expect("completion") {
                acked = ticket;
            }
        }
    }
    while acked < shape.sessions {
        match rx.recv().expect("completion") {
            Completion::Committed { ticket } => acked = ticket,
            Completion::Failed { ticket, kind } => panic!("batch {ticket} failed: {kind:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = writer.stats();
    println!(
        "built {} sessions, {} subscriptions, {} entries over {} messages in {secs:.1} s \
         ({} transactions, {:.0} ops/s)",
        shape.sessions,
        shape.sessions * shape.subs,
        per_session * shape.sessions,
        shape.messages,
        stats.transactions,
        stats.ops as f64 / secs
    );
    print_size(dir);
    // Leave the database as a crash does: no close, no final commit.
    std::process::exit(0);
}

/// VmHWM of this process, from /proc (0 where there is none).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn print_size(dir: &Path) {
    let len = std::fs::metadata(dir.join(ringmq_storage::FILE_NAME))
        .expect("file")
        .len();
    println!("file size: {:.1} MiB", len as f64 / (1 << 20) as f64);
}

fn open(dir: &Path) {
    print_size(dir);
    let file = dir.join(ringmq_storage::FILE_NAME);
    let t = Instant::now();
    let mut builder = redb::Builder::new();
    builder.set_cache_size(ringmq_storage::DEFAULT_CACHE_BYTES);
    let db = builder.create(&file).expect("redb open");
    drop(db);
    println!(
        "redb open (repairs a crashed file): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    for verify in [false, true] {
        let t = Instant::now();
        let options = StoreOptions {
            verify_on_open: verify,
            ..Default::default()
        };
        let (store, rec) = Store::open(dir, &options).expect("Store::open");
        let secs = t.elapsed().as_secs_f64();
        let subs: usize = rec.sessions.iter().map(|s| s.subs.len()).sum();
        let entries: usize = rec.sessions.iter().map(|s| s.entries.len()).sum();
        println!(
            "Store::open to Recovered (verify_on_open={verify}): {secs:.3} s: {} sessions, {subs} \
             subscriptions, {entries} entries, {} messages",
            rec.sessions.len(),
            rec.messages.len()
        );
        println!("  peak RSS so far: {} MiB", peak_rss_mib());
        drop(store);
        let t = Instant::now();
        drop(rec);
        println!("  dropping Recovered: {:.3} s", t.elapsed().as_secs_f64());
    }
}
