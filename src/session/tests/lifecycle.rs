//! Keep alive, DISCONNECT, wills and their delay, session expiry, takeover, shutdown.

use super::*;

fn with_will(v: ProtocolVersion, clean: bool, expiry: Option<u32>, delay: Option<u32>) -> Connect {
    let mut c = connect_packet(v, "c1", clean);
    c.will = Some(will("status/c1", QoS::AtLeastOnce, delay));
    c.properties.session_expiry_interval = expiry;
    c
}

/// The will message as published at `now_ms`.
fn will_published(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { message: m, .. } => Some(&**m),
            _ => None,
        })
        .collect()
}

#[test]
fn keep_alive_times_out_at_one_and_a_half() {
    // [MQTT-3.1.2-24]: keep alive 60 s -> 90 s; any packet resets it.
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, true, None, None),
    );
    assert_eq!(h.s.next_deadline(), Some(h.now + 90_000));
    h.advance(89_999);
    assert_eq!(h.take(), (vec![], vec![]));
    h.packet(Packet::PingReq);
    assert_eq!(h.packets(), vec![Packet::PingResp]);
    assert_eq!(h.s.next_deadline(), Some(h.now + 90_000));
    h.advance(90_000);
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![disconnect(ReasonCode::KeepAliveTimeout)]);
    assert_eq!(actions[0], Action::Close { will: true });
    let wills = will_published(&actions);
    assert_eq!(wills.len(), 1);
    assert_eq!(wills[0].topic, topic("status/c1"));
    assert_eq!(wills[0].qos, QoS::AtLeastOnce);
    assert_eq!(wills[0].origin, Some(client("c1")));
    assert_eq!(actions.last(), Some(&Action::Ended));
    assert_eq!(h.s.next_deadline(), None);
}

#[test]
fn keep_alive_3x_timeout_closes_without_packet() {
    let mut h = Harness::v311();
    h.advance(90_000);
    assert_eq!(
        h.take(),
        (vec![], vec![Action::Close { will: true }, Action::Ended])
    );
}

#[test]
fn keep_alive_zero_means_no_timer_for_3x_and_the_cap_for_v5() {
    let mut c = connect_packet(ProtocolVersion::V311, "c1", true);
    c.keep_alive = 0;
    let h = Harness::connected(Limits::default(), c);
    assert_eq!(h.s.next_deadline(), None);
    let mut c = connect_packet(ProtocolVersion::V5, "c1", true);
    c.keep_alive = 0;
    let h = Harness::connected(Limits::default(), c);
    assert_eq!(h.s.next_deadline(), Some(h.now + 3600 * 1500));
}

#[test]
fn normal_disconnect_discards_the_will() {
    // [MQTT-3.1.2-10].
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, true, None, None),
    );
    h.packet(disconnect(ReasonCode::NormalDisconnection));
    let (packets, actions) = h.take();
    assert!(packets.is_empty(), "the server answers nothing");
    assert_eq!(actions, [Action::Close { will: false }, Action::Ended]);
}

#[test]
fn disconnect_with_will_message_publishes_it() {
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, true, None, None),
    );
    h.packet(disconnect(ReasonCode::DisconnectWithWillMessage));
    let actions = h.actions();
    assert_eq!(actions[0], Action::Close { will: true });
    assert_eq!(will_published(&actions).len(), 1);
}

#[test]
fn disconnect_with_server_only_reason_is_protocol_error() {
    // bad input #64.
    for code in [
        ReasonCode::ServerBusy,
        ReasonCode::ServerShuttingDown,
        ReasonCode::SessionTakenOver,
        ReasonCode::NotAuthorized,
        ReasonCode::KeepAliveTimeout,
    ] {
        let mut h = Harness::v5();
        h.packet(disconnect(code));
        assert_eq!(
            h.take(),
            (
                vec![disconnect(ReasonCode::ProtocolError)],
                vec![Action::Close { will: true }, Action::Ended]
            ),
            "{code:?}"
        );
    }
}

fn disconnect_with_expiry(expiry: u32) -> Packet {
    let mut d = crate::codec::Disconnect::new(ReasonCode::NormalDisconnection);
    d.properties.session_expiry_interval = Some(expiry);
    Packet::Disconnect(d)
}

#[test]
fn disconnect_raising_expiry_from_zero_is_protocol_error() {
    // bad input #65 [MQTT-3.14.2-2].
    let mut h = Harness::v5();
    h.packet(disconnect_with_expiry(1));
    assert_eq!(h.take().0, vec![disconnect(ReasonCode::ProtocolError)]);
}

#[test]
fn disconnect_may_change_a_non_zero_expiry() {
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, false, Some(100), None),
    );
    h.packet(disconnect_with_expiry(5));
    assert_eq!(h.actions(), [Action::Close { will: false }]);
    assert_eq!(h.s.next_deadline(), Some(h.now + 5_000));
    h.advance(5_000);
    assert_eq!(h.actions(), [Action::Ended]);
    // And down to 0: the session ends at once.
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, false, Some(100), None),
    );
    h.packet(disconnect_with_expiry(0));
    assert_eq!(h.actions(), [Action::Close { will: false }, Action::Ended]);
}

#[test]
fn will_delay_publishes_after_the_delay() {
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, false, Some(100), Some(10)),
    );
    h.lost();
    assert_eq!(h.actions(), []);
    assert_eq!(h.s.next_deadline(), Some(h.now + 10_000));
    h.advance(9_999);
    assert_eq!(h.actions(), []);
    h.advance(1);
    let actions = h.actions();
    assert_eq!(will_published(&actions).len(), 1);
    // The session itself lives on until its expiry.
    assert_eq!(h.s.next_deadline(), Some(h.now - 10_000 + 100_000));
    h.advance(90_000);
    assert_eq!(h.actions(), [Action::Ended]);
}

#[test]
fn will_goes_out_when_the_session_expires_first() {
    // [MQTT-3.1.3-9]: delay 100 s, expiry 5 s -> will at 5 s, then Ended.
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, false, Some(5), Some(100)),
    );
    h.lost();
    assert_eq!(h.s.next_deadline(), Some(h.now + 5_000));
    h.advance(5_000);
    let actions = h.actions();
    assert_eq!(will_published(&actions).len(), 1);
    assert_eq!(actions.last(), Some(&Action::Ended));
    // Counted as expired (`$SYS/broker/clients/expired`).
    assert_eq!(h.s.counted().map(|s| s.expired), Some(1));
}

#[test]
fn a_session_that_ends_otherwise_is_not_counted_as_expired() {
    // Expiry 0: the session ends with its connection, nothing expired.
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, true, None, None),
    );
    h.lost();
    assert_eq!(h.actions().last(), Some(&Action::Ended));
    assert_eq!(h.s.counted().map(|s| s.expired), None);
}

#[test]
fn will_delay_with_expiry_zero_publishes_at_once() {
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V5, true, None, Some(30)),
    );
    h.lost();
    let actions = h.actions();
    assert_eq!(will_published(&actions).len(), 1);
    assert_eq!(actions.last(), Some(&Action::Ended));
}

#[test]
fn resuming_before_the_delay_cancels_the_will() {
    // [MQTT-3.1.3-9].
    let c = with_will(ProtocolVersion::V5, false, Some(100), Some(10));
    let mut h = Harness::connected(Limits::default(), c.clone());
    h.lost();
    h.advance(5_000);
    h.take();
    h.connect(connect_packet(ProtocolVersion::V5, "c1", false), true);
    let (_, actions) = h.take();
    assert!(will_published(&actions).is_empty());
    h.lost();
    h.advance(20_000);
    assert!(will_published(&h.take().1).is_empty());
}

#[test]
fn clean_start_while_will_pending_publishes_it_and_drops_subscriptions() {
    let c = with_will(ProtocolVersion::V5, false, Some(100), Some(10));
    let mut h = Harness::connected(Limits::default(), c);
    h.packet(Packet::Subscribe(crate::codec::Subscribe {
        packet_id: pid(1),
        filters: vec![(filter("a"), sub_opts(QoS::AtMostOnce))],
        properties: Default::default(),
    }));
    h.lost();
    h.take();
    h.connect(connect_packet(ProtocolVersion::V5, "c1", true), true);
    let (packets, actions) = h.take();
    assert!(matches!(&packets[0], Packet::ConnAck(c) if !c.session_present));
    assert_eq!(will_published(&actions).len(), 1);
    assert!(actions.contains(&Action::Unsubscribe {
        filter: filter("a")
    }));
    assert_eq!(h.s.subscriptions().count(), 0);
}

#[test]
fn will_properties_are_carried_into_the_message() {
    let mut c = with_will(ProtocolVersion::V5, true, None, None);
    if let Some(w) = &mut c.will {
        w.retain = true;
        w.properties.message_expiry_interval = Some(60);
        w.properties.content_type = Some(mstr("text/plain"));
        w.properties.payload_format_indicator = Some(true);
    }
    let mut h = Harness::connected(Limits::default(), c);
    h.lost();
    let actions = h.actions();
    let m = will_published(&actions)[0];
    assert!(m.retain);
    assert_eq!(m.payload, Bytes::from_static(b"gone"));
    assert_eq!(m.expires_at_ms, Some(h.now + 60_000));
    assert_eq!(m.properties.content_type, Some(mstr("text/plain")));
    assert_eq!(m.properties.payload_format_indicator, Some(true));
    assert_eq!(m.properties.topic_alias, None);
}

#[test]
fn protocol_error_publishes_the_will() {
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V311, true, None, None),
    );
    h.packet(Packet::PingResp);
    let (packets, actions) = h.take();
    assert!(packets.is_empty());
    assert_eq!(actions[0], Action::Close { will: true });
    assert_eq!(will_published(&actions).len(), 1);
}

#[test]
fn takeover_v5_sends_0x8e_and_keeps_a_persistent_session() {
    // bad input #31: the same session object serves the new connection.
    let c = with_will(ProtocolVersion::V5, false, Some(100), None);
    let mut h = Harness::connected(Limits::default(), c.clone());
    h.deliver(&message("t", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.take();
    h.s.taken_over(h.now, &mut h.out, &mut h.actions);
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![disconnect(ReasonCode::SessionTakenOver)]);
    assert_eq!(actions[0], Action::Close { will: true });
    assert_eq!(will_published(&actions).len(), 1);
    assert!(!actions.contains(&Action::Ended));
    // A connection_lost for the old socket afterwards is a no-op.
    h.lost();
    assert_eq!(h.take(), (vec![], vec![]));
    h.connect(c.clone(), true);
    let packets = h.take().0;
    assert!(matches!(&packets[0], Packet::ConnAck(c) if c.session_present));
    assert!(publishes(&packets[1..])[0].dup);
    // Many takeovers in a row stay consistent.
    for _ in 0..100 {
        h.s.taken_over(h.now, &mut h.out, &mut h.actions);
        h.connect(c.clone(), true);
    }
    h.take();
    assert!(h.s.is_connected());
    assert_eq!(h.s.data().inflight.len(), 1);
}

#[test]
fn takeover_of_expiry_zero_session_ends_it() {
    let mut h = Harness::v311();
    h.s.taken_over(h.now, &mut h.out, &mut h.actions);
    assert_eq!(
        h.take(),
        (vec![], vec![Action::Close { will: true }, Action::Ended])
    );
    assert!(h.s.is_ended());
}

#[test]
fn shutdown_without_a_store_publishes_the_will_then_sends_0x8b() {
    // A delayed will is due at shutdown: a session nothing stores ends with the broker.
    let c = with_will(ProtocolVersion::V5, false, Some(100), Some(30));
    let mut h = Harness::connected(Limits::default(), c);
    h.s.publish_will_at_shutdown(h.now, false, &mut h.actions);
    let (packets, actions) = h.take();
    assert!(packets.is_empty());
    assert!(
        matches!(actions.as_slice(), [Action::Publish { message: m, .. }] if m.topic.as_str() == "status/c1")
    );
    assert!(h.s.data().will.is_none());
    h.s.shutdown(h.now, &mut h.out, &mut h.actions);
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![disconnect(ReasonCode::ServerShuttingDown)]);
    assert_eq!(actions, [Action::Close { will: false }]);
    assert_eq!(h.s.next_deadline(), Some(h.now + 100_000));
}

#[test]
fn shutdown_publishes_a_pending_delayed_will_of_an_offline_session() {
    let c = with_will(ProtocolVersion::V5, false, Some(100), Some(30));
    let mut h = Harness::connected(Limits::default(), c);
    h.lost();
    assert!(h.actions().is_empty(), "the will waits for its delay");
    h.s.publish_will_at_shutdown(h.now, false, &mut h.actions);
    assert!(matches!(h.actions().as_slice(), [Action::Publish { .. }]));
    h.s.publish_will_at_shutdown(h.now, false, &mut h.actions);
    assert!(h.actions().is_empty(), "published once");
}

#[test]
fn shutdown_keeps_the_will_of_a_stored_session_until_it_ends() {
    // A clean shutdown with a store: the session outlives the restart and its will is not
    // published; it goes out only if the session expires before the client returns.
    let c = with_will(ProtocolVersion::V5, false, Some(100), Some(30));
    let mut h = Harness::connected(Limits::default(), c);
    h.changes.clear();
    h.s.publish_will_at_shutdown(h.now, true, &mut h.actions);
    assert!(h.actions().is_empty());
    h.s.shutdown(h.now, &mut h.out, &mut h.actions);
    let (packets, actions) = h.take();
    assert_eq!(packets, vec![disconnect(ReasonCode::ServerShuttingDown)]);
    assert_eq!(actions, [Action::Close { will: false }]);
    assert_eq!(h.take_changes(), vec![Change::Header]);
    let header = h.s.header();
    assert!(!header.connected);
    assert_eq!(header.expires_at_ms, Some(h.now + 100_000));
    assert!(header.will.is_some(), "the will is kept");
    h.advance(100_000);
    let (_, actions) = h.take();
    assert_eq!(
        will_published(&actions).len(),
        1,
        "published when the session ends"
    );
}

#[test]
fn connection_lost_3x_persistent_session_expires_after_session_expiry_3x() {
    let mut h = Harness::connected(
        Limits::default(),
        connect_packet(ProtocolVersion::V311, "c1", false),
    );
    h.lost();
    assert_eq!(h.actions(), []);
    let expiry = u64::from(Limits::default().session_expiry_3x) * 1000;
    assert_eq!(h.s.next_deadline(), Some(h.now + expiry));
    // Configured to never expire, as 3.x itself would have it.
    let limits = Limits {
        session_expiry_3x: u32::MAX,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V311, "c1", false));
    h.lost();
    assert_eq!(h.s.next_deadline(), None);
    assert!(!h.s.is_connected());
    assert_eq!(h.s.protocol(), Some(ProtocolVersion::V311));
}

#[test]
fn session_expiry_is_capped() {
    let limits = Limits {
        max_session_expiry: 60,
        ..Limits::default()
    };
    let mut c = connect_packet(ProtocolVersion::V5, "c1", false);
    c.properties.session_expiry_interval = Some(u32::MAX);
    let mut h = Harness::new(limits);
    h.connect(c, false);
    let packets = h.take().0;
    let Packet::ConnAck(connack) = &packets[0] else {
        panic!("CONNACK expected");
    };
    assert_eq!(connack.properties.session_expiry_interval, Some(60));
    h.lost();
    assert_eq!(h.s.next_deadline(), Some(h.now + 60_000));
}

#[test]
fn discard_publishes_a_pending_will_and_ends() {
    // The shard's path for a clean start after a takeover: the old session is dropped.
    let c = with_will(ProtocolVersion::V5, false, Some(100), Some(10));
    let mut h = Harness::connected(Limits::default(), c);
    h.s.taken_over(h.now, &mut h.out, &mut h.actions);
    let (_, actions) = h.take();
    assert!(will_published(&actions).is_empty(), "delayed");
    h.s.discard(h.now, &mut h.actions);
    let actions = h.actions();
    assert_eq!(will_published(&actions).len(), 1);
    assert_eq!(actions.last(), Some(&Action::Ended));
    assert!(h.s.is_ended());
    h.s.discard(h.now, &mut h.actions);
    assert_eq!(h.actions(), []);
    // Discarding a connected session closes it with its will.
    let mut h = Harness::connected(
        Limits::default(),
        with_will(ProtocolVersion::V311, false, None, None),
    );
    h.s.discard(h.now, &mut h.actions);
    let actions = h.actions();
    assert_eq!(actions[0], Action::Close { will: true });
    assert_eq!(will_published(&actions).len(), 1);
    assert_eq!(actions.last(), Some(&Action::Ended));
}

/// The messages a share group picked this session for go back to the group when the
/// session ends: QoS 1/2 flows not acknowledged and queued ones, oldest first, after
/// `Ended`; not QoS 0, not a QoS 2 flow past PUBREC, not non-shared deliveries.
#[test]
fn an_ending_session_returns_its_share_groups_messages() {
    let limits = Limits {
        max_inflight: 3,
        ..Limits::default()
    };
    let mut h = Harness::connected(limits, connect_packet(ProtocolVersion::V5, "c1", true));
    let group = Arc::new(filter("$share/g/jobs/#"));
    let shared = |qos| Delivery {
        share_group: Some(&group),
        ..live(qos)
    };
    let m = |t: &'static str, qos| message(t, qos);
    let q2 = m("jobs/released", QoS::ExactlyOnce);
    h.deliver(&q2, &shared(QoS::ExactlyOnce)); // id 1, PUBREC'd below
    h.deliver(
        &m("jobs/acked", QoS::AtLeastOnce),
        &shared(QoS::AtLeastOnce),
    ); // id 2, acked
    h.deliver(&m("jobs/sent", QoS::AtLeastOnce), &shared(QoS::AtLeastOnce)); // id 3
    h.packet(Packet::PubRec(ack(1)));
    h.packet(Packet::PubAck(ack(2)));
    h.deliver(
        &m("jobs/sent2", QoS::ExactlyOnce),
        &shared(QoS::ExactlyOnce),
    ); // id 4
    h.deliver(
        &m("jobs/queued", QoS::AtLeastOnce),
        &shared(QoS::AtLeastOnce),
    );
    h.deliver(&m("jobs/q0", QoS::AtMostOnce), &shared(QoS::AtMostOnce));
    h.deliver(
        &m("jobs/capped", QoS::AtLeastOnce),
        &shared(QoS::AtMostOnce),
    );
    h.deliver(&m("plain", QoS::AtLeastOnce), &live(QoS::AtLeastOnce));
    h.deliver(
        &m("jobs/queued2", QoS::ExactlyOnce),
        &shared(QoS::AtLeastOnce),
    );
    assert_eq!(h.s.data().queue.len(), 5);
    h.take();
    h.lost();
    let (_, actions) = h.take();
    let ended = actions
        .iter()
        .position(|a| *a == Action::Ended)
        .expect("ended");
    let returned: Vec<(&str, &str)> = actions[ended + 1..]
        .iter()
        .map(|a| match a {
            Action::ReturnToGroup { group, message } => (group.as_str(), message.topic.as_str()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let g = "$share/g/jobs/#";
    assert_eq!(
        returned,
        [
            (g, "jobs/sent"),
            (g, "jobs/sent2"),
            (g, "jobs/queued"),
            (g, "jobs/queued2")
        ]
    );
}
