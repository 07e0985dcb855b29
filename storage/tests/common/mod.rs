//! Helpers shared by the storage tests: record builders, a writer with per-source completion
//! channels, and waiting for completions.
#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, unbounded};
use ringmq_storage::{
    AwaitRelRecord, Batch, Completion, EntryRecord, EntryState, MessageRecord, MsgId, Op,
    Recovered, SessionRecord, Store, StoreOptions, SubRecord, WillRecord, WriterHandle,
    WriterOptions,
};

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn session(expiry_secs: u32) -> SessionRecord {
    SessionRecord {
        protocol: 5,
        expiry_secs,
        connected: false,
        expires_at_ms: Some(1_700_000_000_000 + u64::from(expiry_secs)),
        will: Some(WillRecord {
            topic: b("will/topic"),
            payload: b("gone"),
            qos: 1,
            retain: true,
            delay_secs: 30,
            properties: Bytes::from_static(&[0x01, 0x01]),
        }),
        will_due_ms: None,
    }
}

pub fn message(payload: &[u8]) -> MessageRecord {
    MessageRecord {
        topic: b("sensors/a/temp"),
        payload: Bytes::copy_from_slice(payload),
        qos: 1,
        retain: false,
        expires_at_ms: None,
        properties: Bytes::new(),
    }
}

pub fn entry(msg: u64) -> EntryRecord {
    EntryRecord {
        msg: MsgId(msg),
        qos: 1,
        retain: false,
        sub_ids: vec![7],
        state: EntryState::Queued,
    }
}

pub fn sub(id: u32) -> SubRecord {
    SubRecord {
        options: 1,
        id: Some(id),
    }
}

pub fn put_message(id: u64, payload: &[u8]) -> Op {
    Op::PutMessage {
        id: MsgId(id),
        record: Arc::new(message(payload)),
    }
}

pub fn put_entry(client: &str, seq: u64, msg: u64) -> Op {
    Op::PutEntry {
        client: b(client),
        seq,
        record: entry(msg),
    }
}

pub fn remove_entry(client: &str, seq: u64) -> Op {
    Op::RemoveEntry {
        client: b(client),
        seq,
    }
}

pub fn put_session(client: &str, expiry: u32) -> Op {
    Op::PutSession {
        client: b(client),
        record: session(expiry),
    }
}

pub fn put_await(client: &str, packet_id: u16, msg: Option<u64>) -> Op {
    Op::PutAwaitRel {
        client: b(client),
        packet_id,
        record: AwaitRelRecord {
            msg: msg.map(MsgId),
        },
    }
}

/// A started writer with one completion receiver per source.
pub struct Started {
    pub writer: WriterHandle,
    pub done: Vec<Receiver<Completion>>,
}

pub fn start(
    dir: &Path,
    sources: usize,
    options: &StoreOptions,
    w: WriterOptions,
) -> (Started, Recovered) {
    let (store, recovered) = Store::open(dir, options).expect("open store");
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..sources).map(|_| unbounded()).unzip();
    let writer = store.start_writer(sources, txs, Arc::new(|_s: usize| {}), w);
    (Started { writer, done: rxs }, recovered)
}

pub fn start_default(dir: &Path, sources: usize) -> (Started, Recovered) {
    start(
        dir,
        sources,
        &StoreOptions::default(),
        WriterOptions::default(),
    )
}

impl Started {
    pub fn send(&self, source: usize, ticket: u64, ops: Vec<Op>) {
        self.writer
            .send(Batch {
                source,
                ticket,
                ops,
            })
            .expect("send batch");
    }

    /// Waits for the next completion of `source`.
    pub fn next(&self, source: usize) -> Completion {
        self.done[source]
            .recv_timeout(Duration::from_secs(20))
            .expect("a completion within 20 s")
    }

    /// Sends one batch and waits for its answer.
    pub fn roundtrip(&self, source: usize, ticket: u64, ops: Vec<Op>) -> Completion {
        self.send(source, ticket, ops);
        self.next(source)
    }
}

pub fn reopen(dir: &Path) -> (Store, Recovered) {
    Store::open(dir, &StoreOptions::default()).expect("reopen store")
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}
