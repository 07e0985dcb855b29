//! Address validation (`client::validation`): a client that never proves its address (a
//! spoofed one) gets at most three times what came from its address plus a few small
//! challenges; a client that answers the challenge gets everything; a guessed MsgId is no
//! proof; MsgIds are the client's own.

use super::*;
use crate::auth::random::FixedRandom;
use crate::mqttsn::client::validation::{CHALLENGE_MAX_LEN, FREE_CHALLENGES};

/// The address the attacker writes into its datagrams: the victim's, which never answers.
const VICTIM: u32 = 66;

fn subscribe_msg(msg_id: u16, filter: &str, qos: QoS) -> SnMessage {
    SnMessage::Subscribe(SnSubscribe {
        dup: false,
        qos,
        msg_id: MsgId(msg_id),
        topic: SubTopic::Name(b(filter)),
    })
}

fn payload(i: usize) -> String {
    format!("{i:03} {}", "x".repeat(100))
}

/// Every other message at QoS 1.
fn qos_of(i: usize) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The gateway of `br` again, its secret drawn from `random`.
fn regateway(br: &mut Broker, random: FixedRandom) {
    let settings = GatewaySettings::new(&config(), Arc::clone(&br.limits));
    br.gw = Gateway::with_random(Arc::new(settings), Box::new(random));
}

#[test]
fn a_spoofed_subscriber_gets_three_times_its_bytes_and_a_few_small_challenges() {
    for (filter, qos) in [
        ("busy/topic", QoS::AtMostOnce),
        ("busy/topic", QoS::AtLeastOnce),
        ("#", QoS::AtMostOnce),
        ("#", QoS::AtLeastOnce),
    ] {
        let mut br = Broker::new();
        br.mqtt_connect("pub");
        // Keep alive 0: only the unanswered challenges can end it.
        br.send(VICTIM, connect_msg("spoofed", false, true, 0));
        br.send(VICTIM, subscribe_msg(1, filter, qos));
        for i in 0..300 {
            br.mqtt_publish("pub", "busy/topic", &payload(i), qos_of(i), false);
            br.advance(250);
        }
        br.advance(60_000);
        let got = br.take(VICTIM);
        let challenges = got
            .iter()
            .filter(|m| matches!(m, SnMessage::Register { .. }))
            .count();
        let (sent, received) = (br.bytes_to[&VICTIM], br.bytes_from[&VICTIM]);
        let bound = 3 * received + usize::from(FREE_CHALLENGES) * CHALLENGE_MAX_LEN;
        assert!(
            sent <= bound,
            "{filter} {qos:?}: {sent} bytes for {received}: {got:?}"
        );
        assert!(
            (1..=usize::from(FREE_CHALLENGES)).contains(&challenges),
            "{filter} {qos:?}: {got:?}"
        );
        assert!(
            publishes(&got).len() <= 1,
            "{filter} {qos:?}: no 100-byte message fits: {got:?}"
        );
        assert_eq!(br.gw.client_count(), 0, "lost after N_retry challenges");
        let s = br.gw.stats();
        assert_eq!(s.lost, 1);
        if qos == QoS::AtMostOnce {
            assert!(s.clients.unvalidated_dropped > 0, "{s:?}");
        }
    }
}

#[test]
fn a_client_that_answers_the_challenge_gets_every_message() {
    let mut br = Broker::new();
    br.mqtt_connect("pub");
    br.connect(1, "dev1", true, 0);
    let s = br.subscribe(1, 1, SubTopic::Name(b("busy/topic")), QoS::AtLeastOnce);
    let SnMessage::SubAck { topic_id, .. } = s else {
        panic!("{s:?}")
    };
    let sent: Vec<String> = (0..40).map(payload).collect();
    // Not validated yet, and no message fits what its three datagrams pay for: the
    // messages wait and the topic id the client has is announced again as the challenge.
    for (i, m) in sent[..20].iter().enumerate() {
        br.mqtt_publish("pub", "busy/topic", m, qos_of(i), false);
    }
    let got = br.take(1);
    let [
        SnMessage::Register {
            topic_id: t,
            msg_id,
            ref topic_name,
        },
    ] = got[..]
    else {
        panic!("one challenge expected, got {got:?}")
    };
    assert_eq!((t, topic_name), (topic_id, &b("busy/topic")));
    br.send(
        1,
        SnMessage::RegAck {
            topic_id,
            msg_id,
            code: ReturnCode::Accepted,
        },
    );
    // Validated: what waited (QoS 1 in the session's queue, QoS 0 in the gateway's) and
    // what follows arrives, in order, none lost.
    let mut received: Vec<String> = Vec::new();
    for round in 0..100 {
        if round == 3 {
            for (i, m) in sent.iter().enumerate().skip(20) {
                br.mqtt_publish("pub", "busy/topic", m, qos_of(i), false);
            }
        }
        let got = br.take(1);
        for p in publishes(&got) {
            received.push(text(p));
            if p.qos == SnQoS::One {
                br.send(
                    1,
                    SnMessage::PubAck {
                        topic_id,
                        msg_id: p.msg_id,
                        code: ReturnCode::Accepted,
                    },
                );
            }
        }
        assert!(
            got.iter().all(|m| matches!(m, SnMessage::Publish(_))),
            "{got:?}"
        );
        if received.len() == sent.len() {
            break;
        }
    }
    assert_eq!(received, sent);
    let s = br.gw.stats().clients;
    assert_eq!((s.unvalidated_dropped, s.dropped_qos0), (0, 0));
}

#[test]
fn a_qos_1_acknowledgement_validates_without_a_challenge() {
    let mut br = Broker::new();
    br.mqtt_connect("pub");
    br.connect(1, "dev1", true, 0);
    br.subscribe(1, 1, SubTopic::Short(*b"ab"), QoS::AtLeastOnce);
    br.mqtt_publish("pub", "ab", "small", QoS::AtLeastOnce, false);
    let got = br.take(1);
    let p = publishes(&got)[0].clone();
    br.send(
        1,
        SnMessage::PubAck {
            topic_id: TopicId::NONE,
            msg_id: p.msg_id,
            code: ReturnCode::Accepted,
        },
    );
    let big = payload(0);
    br.mqtt_publish("pub", "ab", &big, QoS::AtMostOnce, false);
    let got = br.take(1);
    assert_eq!(
        publishes(&got).iter().map(|p| text(p)).collect::<Vec<_>>(),
        [big]
    );
}

#[test]
fn a_guessed_msg_id_is_no_proof() {
    let mut br = Broker::new();
    br.mqtt_connect("pub");
    br.send(VICTIM, connect_msg("spoofed", false, true, 0));
    br.send(VICTIM, subscribe_msg(1, "busy/topic", QoS::AtLeastOnce));
    br.take(VICTIM);
    br.mqtt_publish("pub", "busy/topic", &payload(0), QoS::AtLeastOnce, false);
    // The challenge goes to the victim: the attacker never sees its MsgId.
    let got = br.take(VICTIM);
    let [
        SnMessage::Register {
            topic_id, msg_id, ..
        },
    ] = got[..]
    else {
        panic!("one challenge expected, got {got:?}")
    };
    // Guesses: the session's first packet ids (what a PUBLISH would carry without the
    // gateway's offset), and the neighbours of the real challenge.
    let real = msg_id.0;
    let guesses: Vec<u16> = [1, 2, real.wrapping_add(1), real.wrapping_sub(1), 3, 4]
        .into_iter()
        .filter(|&g| g != real && g != 0)
        .take(5)
        .collect();
    for (n, &g) in guesses.iter().enumerate() {
        let guess = if n % 2 == 0 {
            SnMessage::RegAck {
                topic_id,
                msg_id: MsgId(g),
                code: ReturnCode::Accepted,
            }
        } else {
            SnMessage::PubAck {
                topic_id,
                msg_id: MsgId(g),
                code: ReturnCode::Accepted,
            }
        };
        br.send(VICTIM, guess);
        if n < 4 {
            for i in 0..10 {
                br.mqtt_publish("pub", "busy/topic", &payload(i), QoS::AtMostOnce, false);
            }
            // Still bound by the budget (which the guesses themselves add to).
            let (sent, received) = (br.bytes_to[&VICTIM], br.bytes_from[&VICTIM]);
            assert!(
                sent <= 3 * received,
                "guess {g} (real {real}) opened the stream: {sent} bytes for {received}"
            );
            assert_eq!(br.gw.client_count(), 1);
        }
    }
    // The fifth wrong proof ends it.
    assert_eq!(br.gw.client_count(), 0);
    assert_eq!(br.gw.stats().lost, 1);
}

#[test]
fn msg_ids_are_the_clients_own_and_kept_when_it_reconnects_from_its_address() {
    let mut br = Broker::new();
    regateway(&mut br, FixedRandom::new(&[7; 32]));
    br.mqtt_connect("pub");
    br.connect(1, "dev1", false, 0);
    br.subscribe(1, 1, SubTopic::Short(*b"ab"), QoS::AtLeastOnce);
    br.mqtt_publish("pub", "ab", "x", QoS::AtLeastOnce, false);
    let first = publishes(&br.take(1))[0].msg_id;
    assert_ne!(first, MsgId(1), "not the session's packet id");
    // Unacknowledged; the client connects again from its address: the resumed session
    // resends the message under the same MsgId.
    let resent = |br: &mut Broker, addr: u32| {
        br.send(addr, connect_msg("dev1", false, false, 0));
        let got = br.take(addr);
        assert_eq!(
            got.first(),
            Some(&SnMessage::ConnAck {
                code: ReturnCode::Accepted
            })
        );
        let p = publishes(&got);
        assert_eq!(p.len(), 1, "{got:?}");
        assert!(p[0].dup);
        p[0].msg_id
    };
    assert_eq!(resent(&mut br, 1), first);
    // From another address the same client has other MsgIds.
    assert_ne!(resent(&mut br, 2), first);
}

#[test]
fn without_a_secret_from_the_system_connect_is_refused() {
    let mut br = Broker::new();
    regateway(&mut br, FixedRandom::new(&[]));
    br.send(1, connect_msg("dev1", false, true, 60));
    assert_eq!(
        br.take(1),
        vec![SnMessage::ConnAck {
            code: ReturnCode::Congestion
        }]
    );
    assert_eq!(br.gw.client_count(), 0);
    assert_eq!(br.gw.stats().refused_connects, 1);
}

#[test]
fn a_lost_publish_is_sent_again_once_the_challenge_is_answered() {
    let mut br = Broker::new();
    br.mqtt_connect("pub");
    br.connect(1, "dev1", true, 0);
    br.subscribe(1, 1, SubTopic::Short(*b"ab"), QoS::AtLeastOnce);
    // Within the budget, just: lost on the way (never acknowledged).
    br.mqtt_publish("pub", "ab", &"p".repeat(25), QoS::AtLeastOnce, false);
    let first = publishes(&br.take(1))[0].clone();
    // T_retry later the retransmission does not fit; the challenge goes instead.
    br.advance(10_000);
    let got = br.take(1);
    let [
        SnMessage::Register {
            topic_id,
            msg_id,
            ref topic_name,
        },
    ] = got[..]
    else {
        panic!("one challenge expected, got {got:?}")
    };
    assert_eq!(topic_name, &b("ab"));
    br.send(
        1,
        SnMessage::RegAck {
            topic_id,
            msg_id,
            code: ReturnCode::Accepted,
        },
    );
    br.advance(10_000);
    let got = br.take(1);
    let again = publishes(&got);
    assert_eq!(again.len(), 1, "{got:?}");
    assert!(again[0].dup);
    assert_eq!(
        (again[0].msg_id, &again[0].data),
        (first.msg_id, &first.data)
    );
    assert_eq!(br.gw.client_count(), 1);
}
