//! Fuzz target for the MQTT-SN gateway. The input is a run of datagrams, each as long as its
//! own first (length) octet says (the rest of the input when that octet is 0, 1 or too large).
//! Oracle: every datagram that decodes re-encodes to exactly `encoded_len` octets, and those
//! decode to an equal message (decode -> encode -> decode is stable); and the gateway, fed
//! every datagram from one of three addresses with the clock moving on, never panics and
//! never answers an address without a connection with more octets than it received.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringmq::auth::random::{RandomError, RandomSource};
use ringmq::config::{Limits, MqttSnConfig};
use ringmq::mqttsn::codec;
use ringmq::mqttsn::{Gateway, GatewaySettings, Output};
use std::sync::Arc;

/// The gateway's secret from fixed bytes: the same input takes the same path every run.
struct Fixed;

impl RandomSource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
        buf.fill(7);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut config = MqttSnConfig::default();
    config.retry_interval_secs = 1;
    let settings = Arc::new(GatewaySettings::new(&config, Arc::new(Limits::default())));
    let mut gw: Gateway<u8> = Gateway::with_random(settings, Box::new(Fixed));
    let mut out = Vec::new();
    let mut now = 0u64;
    let mut rest = data;
    let mut n = 0u8;
    while !rest.is_empty() {
        let len = match rest[0] as usize {
            0 | 1 => rest.len(),
            l => l.min(rest.len()),
        };
        let (datagram, tail) = rest.split_at(len);
        rest = tail;
        let datagram = Bytes::copy_from_slice(datagram);
        roundtrip(&datagram);
        let from = n % 3;
        let known = gw.knows(&from);
        out.clear();
        gw.handle_datagram(from, datagram.clone(), now, &mut out);
        for o in &out {
            if let Output::Send {
                to,
                datagram: reply,
            } = o
            {
                assert_eq!(
                    *to, from,
                    "a datagram made the gateway send to a third address"
                );
                assert!(
                    known || reply.len() <= datagram.len(),
                    "{} octets from an unknown address answered with {}",
                    datagram.len(),
                    reply.len()
                );
            }
        }
        now += 700;
        out.clear();
        gw.handle_timeout(now, &mut out);
        n = n.wrapping_add(1);
    }
});

fn roundtrip(datagram: &Bytes) {
    let Ok(msg) = codec::decode(datagram) else {
        return;
    };
    let again = codec::encode_to_bytes(&msg).expect("a decoded message encodes");
    assert_eq!(again.len(), msg.encoded_len(), "encoded_len disagrees");
    assert_eq!(codec::decode(&again), Ok(msg), "decode(encode(m)) != m");
}
