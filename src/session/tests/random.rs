//! A deterministic random walk over inputs (packets, deliveries, timeouts, reconnects) that
//! checks the session's invariants after every step and that every byte it writes decodes.
//! A cheap stand-in for the fuzz target until one exists.

use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn qos(&mut self) -> QoS {
        QoS::from_bits(self.below(3) as u8).unwrap_or_default()
    }
}

fn step(h: &mut Harness, rng: &mut Rng, v: ProtocolVersion) {
    let id = 1 + rng.below(6) as u16;
    let topics = ["a", "b/c", "$SYS/x"];
    let t = topics[rng.below(3) as usize];
    match rng.below(14) {
        0 | 1 => {
            let qos = rng.qos();
            let mut p = publish(t, qos, (qos != QoS::AtMostOnce).then_some(id));
            p.dup = qos != QoS::AtMostOnce && rng.below(2) == 0;
            h.packet(Packet::Publish(p));
        }
        2 => h.packet(Packet::PubAck(ack(id))),
        3 => h.packet(Packet::PubRec(ack(id))),
        4 => h.packet(Packet::PubRel(ack(id))),
        5 => h.packet(Packet::PubComp(ack(id))),
        6..=8 => {
            let qos = rng.qos();
            let m = message(["a", "b/c"][rng.below(2) as usize], rng.qos());
            h.deliver(&m, &live(qos));
        }
        9 => h.advance(rng.below(100_000)),
        10 => h.lost(),
        11 => {
            let mut c = connect_packet(v, "c1", rng.below(4) == 0);
            if v.is_v5() {
                c.properties.session_expiry_interval = Some(rng.below(200) as u32);
                c.properties.receive_maximum = Some(1 + rng.below(4) as u16);
            }
            if !h.s.is_ended() {
                let present = !matches!(h.s.state, State::Detached);
                h.connect(c, present);
            }
        }
        12 => h.packet(Packet::PingReq),
        _ => h.packet(Packet::Subscribe(crate::codec::Subscribe {
            packet_id: pid(id),
            filters: vec![(filter("a/#"), sub_opts(rng.qos()))],
            properties: Default::default(),
        })),
    }
}

fn check(h: &mut Harness, limits: &Limits) {
    let (_, _) = h.take(); // every written byte must decode
    let d = h.s.data();
    assert!(d.inflight.len() <= usize::from(limits.max_inflight));
    // The bounds may be exceeded by one window's worth after a resume with a smaller
    // Receive Maximum (`SessionData::requeue_front`); every payload here is 7 bytes.
    let window = usize::from(limits.max_inflight);
    assert!(d.queue.len() <= limits.max_queued_messages + window);
    let bytes: usize = d.queue.iter().map(QueuedMessage::cost).sum();
    assert_eq!(bytes, d.queued_bytes);
    assert!(d.queued_bytes <= limits.max_queued_bytes + 7 * window);
    assert!(d.awaiting_rel.len() <= limits.max_awaiting_rel);
    let mut ids: Vec<u16> = d.inflight.iter().map(|o| o.packet_id().get()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), d.inflight.len(), "packet ids unique");
}

#[test]
fn random_walks_keep_the_invariants() {
    let limits = Limits {
        max_inflight: 3,
        max_queued_messages: 5,
        max_queued_bytes: 30,
        max_awaiting_rel: 4,
        receive_maximum: 3,
        queue_qos0_offline: true,
        ..Limits::default()
    };
    for seed in 1..=200u64 {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut h = Harness::new(limits.clone());
            h.connect(connect_packet(v, "c1", false), false);
            for _ in 0..300 {
                step(&mut h, &mut rng, v);
                check(&mut h, &limits);
                if h.s.is_ended() {
                    break;
                }
            }
        }
    }
}
