//! Storage commit throughput and latency, through `ringmq-storage`'s writer thread on a real
//! redb file (in the system temp directory), every commit `Durability::Immediate`:
//!
//! - `commit/N`: one batch of N record writes (~100 B values, overwriting a key space of
//!   100,000 retained topics so the tree size stays put), sent and waited for: time per
//!   iteration is the commit latency, throughput the records per second.
//! - `enqueue_ack/cancelled_1x64`: 64 enqueue+ack pairs (PutMessage, PutEntry, RemoveEntry of
//!   the same entry) per batch, waited for: what a subscriber acknowledging within one commit
//!   costs (the pairs fold away; only the meta rows are written).
//! - `enqueue_ack/cancelled_16x64`: 16 such batches back to back, waiting for the last: the
//!   writer's throughput when the pairs fold away.
//! - `enqueue_ack/separate_1x64`: the pairs with each ack in the batch after its enqueue, so
//!   every entry and message is written and then deleted.
//! - `pipelined/16x64`: 64 batches of 16 records sent back to back, waiting for the last:
//!   group commit folds them into a few transactions.
//!
//! Run: `cargo bench --bench storage -- --warm-up-time 1 --measurement-time 5`.
//! Figures and the machine they were measured on: `storage/DESIGN.md`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::Receiver;
use ringmq_storage::{
    Batch, Completion, EntryRecord, EntryState, MessageRecord, MsgId, Op, Store, StoreOptions,
    WriterHandle, WriterOptions,
};

/// Distinct keys the commit benchmarks overwrite.
const KEY_SPACE: u64 = 100_000;

struct Bench {
    writer: WriterHandle,
    done: Receiver<Completion>,
    ticket: u64,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = Store::open(dir.path(), &StoreOptions::default()).expect("open store");
        let (tx, done) = crossbeam_channel::unbounded();
        let writer = store.start_writer(
            1,
            vec![tx],
            Arc::new(|_s: usize| {}),
            WriterOptions::default(),
        );
        Bench {
            writer,
            done,
            ticket: 0,
            _dir: dir,
        }
    }

    fn send(&mut self, ops: Vec<Op>) -> u64 {
        self.ticket += 1;
        self.writer
            .send(Batch {
                source: 0,
                ticket: self.ticket,
                ops,
            })
            .expect("send");
        self.ticket
    }

    fn wait_for(&self, ticket: u64) {
        loop {
            match self
                .done
                .recv_timeout(Duration::from_secs(30))
                .expect("completion")
            {
                Completion::Committed { ticket: t } if t >= ticket => return,
                Completion::Committed { .. } => {}
                Completion::Failed { ticket, kind } => panic!("batch {ticket} failed: {kind:?}"),
            }
        }
    }
}

fn record(i: u64) -> MessageRecord {
    MessageRecord {
        topic: Bytes::from_static(b"bench/topic"),
        payload: Bytes::from(i.to_le_bytes().repeat(10)),
        qos: 1,
        retain: true,
        expires_at_ms: None,
        properties: Bytes::new(),
    }
}

fn records(next: &mut u64, n: u64) -> Vec<Op> {
    (0..n)
        .map(|_| {
            *next += 1;
            let k = *next % KEY_SPACE;
            Op::PutRetained {
                topic: Bytes::from(format!("bench/{k:06}")),
                record: record(k),
            }
        })
        .collect()
}

fn commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    let mut b = Bench::new();
    let mut next = 0;
    // Fill the key space first so every size measures the same tree.
    for _ in 0..KEY_SPACE / 1000 {
        let ops = records(&mut next, 1000);
        let t = b.send(ops);
        b.wait_for(t);
    }
    for n in [1u64, 16, 128, 1024] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(n.to_string(), |bench| {
            bench.iter(|| {
                let ops = records(&mut next, n);
                let t = b.send(ops);
                b.wait_for(t);
            })
        });
    }
    g.finish();
    b.writer.stop().expect("stop");
}

fn entry(msg: u64) -> EntryRecord {
    EntryRecord {
        msg: MsgId(msg),
        qos: 1,
        retain: false,
        sub_ids: vec![],
        state: EntryState::Queued,
    }
}

fn enqueue_ack(c: &mut Criterion) {
    const PAIRS: u64 = 64;
    let mut g = c.benchmark_group("enqueue_ack");
    g.throughput(Throughput::Elements(PAIRS));
    let client = Bytes::from_static(b"subscriber-1");
    let mut b = Bench::new();
    let body = Arc::new(record(0));
    let mut seq = 0;
    b.send(vec![Op::PutSession {
        client: client.clone(),
        record: ringmq_storage::SessionRecord {
            protocol: 5,
            expiry_secs: 3600,
            connected: true,
            expires_at_ms: None,
            will: None,
            will_due_ms: None,
        },
    }]);
    let pairs = |seq: &mut u64| {
        let mut ops = Vec::with_capacity(3 * PAIRS as usize);
        for _ in 0..PAIRS {
            *seq += 1;
            ops.push(Op::PutMessage {
                id: MsgId(*seq),
                record: body.clone(),
            });
            ops.push(Op::PutEntry {
                client: client.clone(),
                seq: *seq,
                record: entry(*seq),
            });
            ops.push(Op::RemoveEntry {
                client: client.clone(),
                seq: *seq,
            });
        }
        ops
    };
    g.bench_function("cancelled_1x64", |bench| {
        bench.iter(|| {
            let ops = pairs(&mut seq);
            let t = b.send(ops);
            b.wait_for(t);
        })
    });
    g.throughput(Throughput::Elements(16 * PAIRS));
    g.bench_function("cancelled_16x64", |bench| {
        bench.iter(|| {
            let mut last = 0;
            for _ in 0..16 {
                let ops = pairs(&mut seq);
                last = b.send(ops);
            }
            b.wait_for(last);
        })
    });
    g.throughput(Throughput::Elements(PAIRS));
    let mut acks: Vec<Op> = Vec::new();
    g.bench_function("separate_1x64", |bench| {
        bench.iter(|| {
            let mut ops = std::mem::take(&mut acks);
            for _ in 0..PAIRS {
                seq += 1;
                ops.push(Op::PutMessage {
                    id: MsgId(seq),
                    record: body.clone(),
                });
                ops.push(Op::PutEntry {
                    client: client.clone(),
                    seq,
                    record: entry(seq),
                });
                acks.push(Op::RemoveEntry {
                    client: client.clone(),
                    seq,
                });
            }
            let t = b.send(ops);
            b.wait_for(t);
        })
    });
    g.finish();
    b.writer.stop().expect("stop");
}

fn pipelined(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipelined");
    g.throughput(Throughput::Elements(16 * 64));
    let mut b = Bench::new();
    let mut next = 0;
    g.bench_function("16x64", |bench| {
        bench.iter(|| {
            let mut last = 0;
            for _ in 0..64 {
                let ops = records(&mut next, 16);
                last = b.send(ops);
            }
            b.wait_for(last);
        })
    });
    g.finish();
    let stats = b.writer.stats();
    eprintln!(
        "pipelined: {} batches in {} transactions ({:.1} batches per commit)",
        stats.batches,
        stats.transactions,
        stats.batches as f64 / stats.transactions.max(1) as f64
    );
    b.writer.stop().expect("stop");
}

criterion_group!(benches, commit, enqueue_ack, pipelined);
criterion_main!(benches);
