//! Crash consistency: a child process (this test binary in "writer child" mode) writes batches
//! as fast as it can and prints each ticket as soon as its `Committed` arrives; the parent
//! SIGKILLs it at random moments (also right after open and recovery), reopens the store, and
//! checks that it holds exactly the effect of batches 1..=D of each source for some D at least
//! the last printed ticket: nothing acknowledged lost, no batch torn, no message leaked.
//!
//! Each batch puts a session, a subscription, a message and an entry referencing it, removes an
//! older entry, sets an entry's state, puts and removes await-rel rows, puts and removes an
//! entry within the batch (folded away), and now and then removes a whole session.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::b;
use ringmq_storage::{
    AwaitRelRecord, Batch, Completion, EntryRecord, EntryState, MessageRecord, MsgId, Op,
    Recovered, SessionRecord, Store, StoreOptions, SubRecord, WriterOptions,
};

const SOURCES: usize = 2;
const SLOTS: u64 = 16;
const KILLS: usize = 30;

fn slot(s: usize, k: u64) -> Bytes {
    b(&format!("s{s}-c{k}"))
}

fn msg_id(s: usize, t: u64) -> u64 {
    ((s as u64) << 40) | t
}

fn payload(s: usize, t: u64) -> Bytes {
    Bytes::from(msg_id(s, t).to_le_bytes().repeat(8))
}

/// The ops of batch `t` of source `s`; a pure function of both.
fn batch_ops(s: usize, t: u64) -> Vec<Op> {
    let client = slot(s, t % SLOTS);
    let id = msg_id(s, t);
    let message = MessageRecord {
        topic: b("crash/test"),
        payload: payload(s, t),
        qos: 1,
        retain: false,
        expires_at_ms: None,
        properties: Bytes::new(),
    };
    let entry = EntryRecord {
        msg: MsgId(id),
        qos: 1,
        retain: false,
        sub_ids: vec![(t % 7) as u32],
        state: EntryState::Queued,
    };
    let record = SessionRecord {
        protocol: 5,
        expiry_secs: t as u32,
        connected: true,
        expires_at_ms: None,
        will: None,
        will_due_ms: None,
    };
    let mut ops = vec![
        Op::PutMessage {
            id: MsgId(id),
            record: Arc::new(message),
        },
        Op::PutSession {
            client: client.clone(),
            record,
        },
        Op::PutSub {
            client: client.clone(),
            filter: b(&format!("f/{}", t % 5)),
            record: SubRecord {
                options: 1,
                id: Some(t as u32),
            },
        },
        Op::PutEntry {
            client: client.clone(),
            seq: t,
            record: entry.clone(),
        },
        Op::PutEntry {
            client: client.clone(),
            seq: (1 << 40) | t,
            record: entry,
        },
        Op::RemoveEntry {
            client: client.clone(),
            seq: (1 << 40) | t,
        },
        Op::PutAwaitRel {
            client: client.clone(),
            packet_id: (t % 100) as u16,
            record: AwaitRelRecord {
                msg: Some(MsgId(id)),
            },
        },
    ];
    if t > 3 * SLOTS {
        ops.push(Op::RemoveEntry {
            client: client.clone(),
            seq: t - 3 * SLOTS,
        });
    }
    if t.is_multiple_of(7) && t > SLOTS {
        ops.push(Op::SetEntryState {
            client: client.clone(),
            seq: t - SLOTS,
            state: EntryState::Sent {
                packet_id: t as u16,
            },
        });
    }
    if t.is_multiple_of(3) {
        ops.push(Op::RemoveAwaitRel {
            client,
            packet_id: ((t - 3) % 100) as u16,
        });
    }
    if t.is_multiple_of(50) {
        ops.push(Op::RemoveSession {
            client: slot(s, (t + 8) % SLOTS),
        });
    }
    ops
}

/// What the store must hold after some prefix of batches: applied op by op with the store's
/// documented semantics.
#[derive(Default, Debug, PartialEq)]
struct Model {
    sessions: BTreeMap<Bytes, SessionRecord>,
    subs: BTreeMap<(Bytes, Bytes), SubRecord>,
    entries: BTreeMap<(Bytes, u64), EntryRecord>,
    await_rel: BTreeMap<(Bytes, u16), AwaitRelRecord>,
    /// Every body ever offered (the model keeps all; the check keeps only referenced ones).
    bodies: HashMap<u64, Arc<MessageRecord>>,
}

impl Model {
    fn apply(&mut self, op: Op) {
        match op {
            Op::PutSession { client, record } => {
                self.sessions.insert(client, record);
            }
            Op::RemoveSession { client } => {
                self.sessions.remove(&client);
                self.subs.retain(|(c, _), _| *c != client);
                self.entries.retain(|(c, _), _| *c != client);
                self.await_rel.retain(|(c, _), _| *c != client);
            }
            Op::PutSub {
                client,
                filter,
                record,
            } => {
                self.subs.insert((client, filter), record);
            }
            Op::RemoveSub { client, filter } => {
                self.subs.remove(&(client, filter));
            }
            Op::PutMessage { id, record } => {
                self.bodies.insert(id.0, record);
            }
            Op::PutEntry {
                client,
                seq,
                record,
            } => {
                self.entries.insert((client, seq), record);
            }
            Op::SetEntryState { client, seq, state } => {
                if let Some(e) = self.entries.get_mut(&(client, seq)) {
                    e.state = state;
                }
            }
            Op::RemoveEntry { client, seq } => {
                self.entries.remove(&(client, seq));
            }
            Op::PutAwaitRel {
                client,
                packet_id,
                record,
            } => {
                self.await_rel.insert((client, packet_id), record);
            }
            Op::RemoveAwaitRel { client, packet_id } => {
                self.await_rel.remove(&(client, packet_id));
            }
            Op::PutRetained { .. }
            | Op::RemoveRetained { .. }
            | Op::PutFanout { .. }
            | Op::RemoveFanout { .. } => unreachable!("not generated"),
        }
    }

    /// Asserts `rec` holds exactly this model (of every source).
    fn check(&self, rec: &Recovered) {
        let sessions: BTreeMap<_, _> = rec
            .sessions
            .iter()
            .map(|s| (s.client.clone(), s.record.clone()))
            .collect();
        assert_eq!(sessions, self.sessions, "sessions");
        let mut subs = BTreeMap::new();
        let mut entries = BTreeMap::new();
        let mut await_rel = BTreeMap::new();
        for s in &rec.sessions {
            subs.extend(
                s.subs
                    .iter()
                    .map(|(f, r)| ((s.client.clone(), f.clone()), *r)),
            );
            entries.extend(
                s.entries
                    .iter()
                    .map(|(q, e)| ((s.client.clone(), *q), e.clone())),
            );
            await_rel.extend(
                s.await_rel
                    .iter()
                    .map(|(p, a)| ((s.client.clone(), *p), *a)),
            );
        }
        assert_eq!(subs, self.subs, "subs");
        assert_eq!(entries, self.entries, "entries");
        assert_eq!(await_rel, self.await_rel, "await_rel");
        let mut referenced: Vec<u64> = self.entries.values().map(|e| e.msg.0).collect();
        referenced.extend(self.await_rel.values().filter_map(|a| a.msg.map(|m| m.0)));
        referenced.sort_unstable();
        referenced.dedup();
        let mut stored: Vec<u64> = rec.messages.keys().copied().collect();
        stored.sort_unstable();
        assert_eq!(stored, referenced, "exactly the referenced messages");
        for id in stored {
            assert_eq!(rec.messages[&id], self.bodies[&id], "body of {id}");
        }
    }
}

/// The highest batch of source `s` in the store: the newest batch always leaves its own
/// session row, whose expiry is its ticket.
fn durable_prefix(rec: &Recovered, s: usize) -> u64 {
    let prefix = format!("s{s}-");
    rec.sessions
        .iter()
        .filter(|x| x.client.starts_with(prefix.as_bytes()))
        .map(|x| u64::from(x.record.expiry_secs))
        .max()
        .unwrap_or(0)
}

/// Child mode: write as fast as possible until killed.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os("RINGMQ_STORAGE_CRASH_DIR") else {
        return;
    };
    let (store, rec) = Store::open(Path::new(&dir), &StoreOptions::default()).unwrap();
    let starts: Vec<u64> = (0..SOURCES).map(|s| durable_prefix(&rec, s)).collect();
    println!("RECOVERED");
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..SOURCES).map(|_| crossbeam_channel::unbounded()).unzip();
    let writer = store.start_writer(
        SOURCES,
        txs,
        Arc::new(|_s: usize| {}),
        WriterOptions::default(),
    );
    let acked: Arc<Vec<AtomicU64>> = Arc::new(starts.iter().map(|t| AtomicU64::new(*t)).collect());
    for (s, rx) in rxs.into_iter().enumerate() {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for c in rx {
                match c {
                    Completion::Committed { ticket } => {
                        println!("C {s} {ticket}");
                        acked[s].store(ticket, Ordering::Release);
                    }
                    Completion::Failed { ticket, kind } => println!("F {s} {ticket} {kind:?}"),
                }
            }
        });
    }
    let senders: Vec<_> = (0..SOURCES)
        .map(|s| {
            let tx = writer.sender();
            let acked = acked.clone();
            let start = starts[s];
            std::thread::spawn(move || {
                for t in start + 1.. {
                    // At most 256 batches in flight, as a shard bounds what it waits for.
                    while t - acked[s].load(Ordering::Acquire) > 256 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    tx.send(Batch {
                        source: s,
                        ticket: t,
                        ops: batch_ops(s, t),
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(60));
    drop(senders);
    std::process::exit(0);
}

/// When the parent kills the child.
enum KillAt {
    Delay(Duration),
    Recovery,
    Commits(usize),
}

/// Runs one writer child on `dir`, kills it as `kill` says, and returns what it printed.
fn run_child(dir: &Path, kill: KillAt, jitter: u64) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGMQ_STORAGE_CRASH_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    match kill {
        KillAt::Delay(d) => std::thread::sleep(d),
        KillAt::Recovery => loop {
            let l = line_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("child recovered");
            // libtest prints "test crash_writer_child ... " before the test runs.
            let done = l.ends_with("RECOVERED");
            lines.push(l);
            if done {
                // Kill within the next few hundred µs: during the first commits.
                std::thread::sleep(Duration::from_micros(jitter % 500));
                break;
            }
        },
        KillAt::Commits(n) => {
            let mut seen = 0;
            while seen < n && Instant::now() < deadline {
                if let Ok(l) = line_rx.recv_timeout(Duration::from_secs(1)) {
                    seen += usize::from(l.starts_with("C "));
                    lines.push(l);
                }
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(line_rx.try_iter());
    lines
}

/// The last ticket printed per source, and how many `Committed` lines there were.
fn printed_tickets(lines: &[String]) -> ([u64; SOURCES], u64) {
    let mut printed = [0u64; SOURCES];
    let mut count = 0;
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        match f.as_slice() {
            ["C", s, t] => {
                let (s, t): (usize, u64) = (s.parse().unwrap(), t.parse().unwrap());
                assert!(t > printed[s], "tickets of source {s} out of order");
                printed[s] = t;
                count += 1;
            }
            ["F", ..] => panic!("a commit failed in the child: {l}"),
            _ => {}
        }
    }
    (printed, count)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged_and_tears_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = 0x853c_49e6_748f_ea9b_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut model = Model::default();
    let mut applied = [0u64; SOURCES];
    let (mut printed_total, mut beyond_printed) = (0u64, 0u64);
    let started = Instant::now();
    for round in 0..KILLS {
        let kill = match round % 3 {
            0 => KillAt::Recovery,
            1 => KillAt::Delay(Duration::from_millis(next() % 300)),
            _ => KillAt::Commits(1 + (next() % 100) as usize),
        };
        let lines = run_child(dir.path(), kill, next());
        let (printed, count) = printed_tickets(&lines);
        printed_total += count;
        let (store, rec) =
            Store::open(dir.path(), &StoreOptions::default()).expect("reopen after SIGKILL");
        for s in 0..SOURCES {
            let d = durable_prefix(&rec, s);
            assert!(
                d >= printed[s],
                "round {round}: source {s} acknowledged {} but only {d} survived",
                printed[s]
            );
            assert!(
                d >= applied[s],
                "round {round}: source {s} went back from {} to {d}",
                applied[s]
            );
            beyond_printed += d - printed[s].max(applied[s]);
            for t in applied[s] + 1..=d {
                for op in batch_ops(s, t) {
                    model.apply(op);
                }
            }
            applied[s] = d;
        }
        model.check(&rec);
        assert_eq!(rec.repairs.orphan_rows + rec.repairs.dangling_refs, 0);
        drop(store);
    }
    let total: u64 = applied.iter().sum();
    eprintln!(
        "crash test: {KILLS} SIGKILLs in {:.1} s; {total} batches durable ({applied:?} per \
         source), {printed_total} Committed lines printed, {beyond_printed} batches durable but \
         killed before printing",
        started.elapsed().as_secs_f64()
    );
    assert!(
        total > 1000,
        "the children wrote too little to mean anything: {total}"
    );
}
