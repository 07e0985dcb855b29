//! Record encodings: round trips of generated records, and a property test that any bytes
//! decode to a record or an error, never a panic, and that what decodes re-encodes to the same
//! bytes (every record has exactly one encoding). The libFuzzer target `fuzz/fuzz_targets/
//! storage_records.rs` checks the same oracle with coverage guidance.

use bytes::Bytes;
use ringmq_storage::{
    AwaitRelRecord, EntryRecord, EntryState, MessageRecord, MsgId, SessionRecord, SubRecord,
    WillRecord,
};

/// xorshift64*: deterministic, dependency-free randomness for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn flip(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// Biased to the edges, where encodings change length.
    fn num(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(128),
            3 => 1 << self.below(64),
            4 => u64::from(u32::MAX),
            _ => self.next(),
        }
    }
    fn u32(&mut self) -> u32 {
        self.num() as u32
    }
    fn bytes(&mut self, max: u64) -> Bytes {
        let n = self.below(max + 1) as usize;
        (0..n)
            .map(|_| self.next() as u8)
            .collect::<Vec<u8>>()
            .into()
    }
    fn opt(&mut self) -> Option<u64> {
        self.flip().then(|| self.num())
    }
}

fn gen_message(r: &mut Rng) -> MessageRecord {
    MessageRecord {
        topic: r.bytes(40),
        payload: r.bytes(300),
        qos: r.below(3) as u8,
        retain: r.flip(),
        expires_at_ms: r.opt(),
        properties: r.bytes(20),
    }
}

fn gen_session(r: &mut Rng) -> SessionRecord {
    let will = r.flip().then(|| WillRecord {
        topic: r.bytes(40),
        payload: r.bytes(200),
        qos: r.below(3) as u8,
        retain: r.flip(),
        delay_secs: r.u32(),
        properties: r.bytes(20),
    });
    SessionRecord {
        protocol: r.next() as u8,
        expiry_secs: r.u32(),
        connected: r.flip(),
        expires_at_ms: r.opt(),
        will,
        will_due_ms: r.opt(),
    }
}

fn gen_entry(r: &mut Rng) -> EntryRecord {
    let state = match r.below(3) {
        0 => EntryState::Queued,
        1 => EntryState::Sent {
            packet_id: r.next() as u16,
        },
        _ => EntryState::Released {
            packet_id: r.next() as u16,
        },
    };
    let n = r.below(4);
    EntryRecord {
        msg: MsgId(r.num()),
        qos: r.below(3) as u8,
        retain: r.flip(),
        sub_ids: (0..n).map(|_| r.u32()).collect(),
        state,
    }
}

fn enc(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v);
    v
}

#[test]
fn generated_records_round_trip() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let s = gen_session(&mut r);
        assert_eq!(SessionRecord::decode(&enc(|o| s.encode(o))), Ok(s));
        let m = gen_message(&mut r);
        assert_eq!(MessageRecord::decode(&enc(|o| m.encode(o))), Ok(m));
        let e = gen_entry(&mut r);
        assert_eq!(EntryRecord::decode(&enc(|o| e.encode(o))), Ok(e));
        let sub = SubRecord {
            options: r.next() as u8,
            id: r.flip().then(|| r.u32()),
        };
        assert_eq!(SubRecord::decode(&enc(|o| sub.encode(o))), Ok(sub));
        let a = AwaitRelRecord {
            msg: r.opt().map(MsgId),
        };
        assert_eq!(AwaitRelRecord::decode(&enc(|o| a.encode(o))), Ok(a));
    }
}

#[test]
fn encodings_are_compact() {
    let e = EntryRecord {
        msg: MsgId(1000),
        qos: 1,
        retain: false,
        sub_ids: vec![],
        state: EntryState::Queued,
    };
    assert_eq!(enc(|o| e.encode(o)).len(), 3, "flags + 2-byte varint");
    let sub = SubRecord {
        options: 2,
        id: None,
    };
    assert_eq!(enc(|o| sub.encode(o)).len(), 1);
    assert!(enc(|o| AwaitRelRecord { msg: None }.encode(o)).is_empty());
}

/// Decodes `buf` as every record kind; whatever decodes must re-encode to exactly `buf`.
fn check_all(buf: &[u8]) {
    if let Ok(s) = SessionRecord::decode(buf) {
        assert_eq!(enc(|o| s.encode(o)), buf, "session {s:?}");
    }
    if let Ok(m) = MessageRecord::decode(buf) {
        assert_eq!(enc(|o| m.encode(o)), buf, "message {m:?}");
    }
    if let Ok(e) = EntryRecord::decode(buf) {
        assert_eq!(enc(|o| e.encode(o)), buf, "entry {e:?}");
    }
    if let Ok(s) = SubRecord::decode(buf) {
        assert_eq!(enc(|o| s.encode(o)), buf, "sub {s:?}");
    }
    if let Ok(a) = AwaitRelRecord::decode(buf) {
        assert_eq!(enc(|o| a.encode(o)), buf, "await-rel {a:?}");
    }
}

#[test]
fn random_bytes_never_panic_and_decode_canonically() {
    let mut r = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..200_000 {
        let len = r.below(48) as usize;
        let buf: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        check_all(&buf);
    }
}

#[test]
fn mutated_encodings_never_panic_and_decode_canonically() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    for _ in 0..50_000 {
        let mut buf = match r.below(5) {
            0 => enc(|o| gen_session(&mut r).encode(o)),
            1 => enc(|o| gen_message(&mut r).encode(o)),
            2 => enc(|o| gen_entry(&mut r).encode(o)),
            3 => enc(|o| {
                SubRecord {
                    options: 1,
                    id: Some(r.u32()),
                }
                .encode(o)
            }),
            _ => enc(|o| {
                AwaitRelRecord {
                    msg: Some(MsgId(r.num())),
                }
                .encode(o)
            }),
        };
        for _ in 0..=r.below(3) {
            match r.below(3) {
                0 if !buf.is_empty() => {
                    let i = r.below(buf.len() as u64) as usize;
                    buf[i] ^= 1 << r.below(8);
                }
                1 if !buf.is_empty() => buf.truncate(r.below(buf.len() as u64) as usize),
                _ => buf.push(r.next() as u8),
            }
        }
        check_all(&buf);
    }
}

#[test]
fn errors_are_typed() {
    use ringmq_storage::DecodeError;
    assert_eq!(
        SessionRecord::decode(&[]),
        Err(DecodeError::UnexpectedEnd { at: 0 })
    );
    assert_eq!(
        SessionRecord::decode(&[0x80, 5, 0]),
        Err(DecodeError::ReservedFlags { flags: 0x80 })
    );
    assert_eq!(
        MessageRecord::decode(&[0b110, 0, 0]),
        Err(DecodeError::BadQos { qos: 3 })
    );
    assert_eq!(
        SubRecord::decode(&[1, 1, 1]),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    // A subscription id above u32::MAX.
    assert_eq!(
        SubRecord::decode(&[1, 0x80, 0x80, 0x80, 0x80, 0x10]),
        Err(DecodeError::OutOfRange { at: 1 })
    );
}
