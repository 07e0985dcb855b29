//! Fuzz target for the codec: arbitrary bytes are decoded at every protocol level and in both
//! roles, packet after packet until the buffer ends or an error occurs. Oracle: every packet
//! that decodes re-encodes to exactly `encoded_len` bytes, and those bytes decode to an equal
//! packet with nothing left over. Every error must map to a response without panicking.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::codec::{self, DecodeLimits, Packet, ProtocolVersion, Role};

const VERSIONS: [Option<ProtocolVersion>; 4] =
    [None, Some(ProtocolVersion::V31), Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        for role in [Role::Server, Role::Client] {
            let limits = DecodeLimits { max_packet_size: 1 << 16, max_user_properties: 16, role };
            decode_all(data, version, &limits);
        }
    }
});

fn decode_all(data: &[u8], mut version: Option<ProtocolVersion>, limits: &DecodeLimits) {
    let mut buf = BytesMut::from(data);
    loop {
        match codec::decode(&mut buf, version, limits) {
            Ok(Some(packet)) => {
                let level = match (&packet, version) {
                    (Packet::Connect(c), _) => c.protocol,
                    (_, Some(v)) => v,
                    (_, None) => panic!("a non-CONNECT packet decoded before CONNECT"),
                };
                roundtrip(&packet, level, version, limits);
                // After CONNECT the connection speaks the CONNECT's level.
                version = Some(level);
            }
            Ok(None) => return,
            Err(e) => {
                let _ = e.response(version, false);
                let _ = e.response(version, true);
                let _ = e.reason_code();
                return;
            }
        }
    }
}

fn roundtrip(
    packet: &Packet,
    level: ProtocolVersion,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) {
    let mut out = BytesMut::new();
    codec::encode(packet, level, &mut out);
    assert_eq!(out.len(), codec::encoded_len(packet, level), "encoded_len disagrees");
    let again = codec::decode(&mut out, version, limits);
    match again {
        Ok(Some(p)) => assert_eq!(&p, packet, "decode(encode(p)) != p"),
        other => panic!("re-encoded packet failed to decode: {other:?} for {packet:?}"),
    }
    assert!(out.is_empty(), "re-encoded packet left {} bytes", out.len());
}
