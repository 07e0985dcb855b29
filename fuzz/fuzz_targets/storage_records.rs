//! Fuzz target for the storage record encodings (`ringmq_storage::record`): the first byte picks
//! the record kind, the rest is decoded as that record. Decoding must never panic. Oracle: every
//! record that decodes re-encodes to exactly the input (each record has one encoding), and
//! those bytes decode to an equal record. A store file read at start goes through the same
//! decoders, so this is what keeps a damaged record from panicking the broker.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use ringmq_storage::{
    AwaitRelRecord, DecodeError, EntryRecord, MessageRecord, SessionRecord, SubRecord,
};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, buf)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => check(buf, SessionRecord::decode, SessionRecord::encode),
        1 => check(buf, SubRecord::decode, SubRecord::encode),
        2 => check(buf, MessageRecord::decode, MessageRecord::encode),
        3 => check(buf, EntryRecord::decode, EntryRecord::encode),
        _ => check(buf, AwaitRelRecord::decode, AwaitRelRecord::encode),
    }
});

fn check<R: PartialEq + Debug>(
    buf: &[u8],
    decode: fn(&[u8]) -> Result<R, DecodeError>,
    encode: fn(&R, &mut Vec<u8>),
) {
    let Ok(record) = decode(buf) else { return };
    let mut out = Vec::new();
    encode(&record, &mut out);
    assert_eq!(out, buf, "encode(decode(b)) != b for {record:?}");
    match decode(&out) {
        Ok(again) => assert_eq!(again, record, "decode(encode(r)) != r"),
        Err(e) => panic!("re-encoded record failed to decode: {e} for {record:?}"),
    }
}
