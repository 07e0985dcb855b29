//! A blocking MQTT-SN 1.2 client over a real UDP socket, built on RingMQ's MQTT-SN codec,
//! for the gateway's black-box tests. `drop_every`: the test's socket layer loses every
//! n-th datagram it receives (retransmission tests).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq::codec::QoS;
use ringmq::mqttsn::codec::{
    self, MsgId, ReturnCode, SnConnect, SnMessage, SnPublish, SnQoS, SnSubscribe, SubTopic,
    TopicId, TopicRef, WillTopic,
};

use super::{QUIET, WAIT};

pub struct SnClient {
    pub sock: UdpSocket,
    pub gw: SocketAddr,
    /// Lose every n-th received datagram.
    pub drop_every: Option<u64>,
    pub received: u64,
    pub dropped: u64,
    next_id: u16,
}

impl SnClient {
    pub fn new(gw: SocketAddr) -> SnClient {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        SnClient {
            sock,
            gw,
            drop_every: None,
            received: 0,
            dropped: 0,
            next_id: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    pub fn msg_id(&mut self) -> MsgId {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        MsgId(self.next_id)
    }

    pub fn send(&self, m: &SnMessage) {
        let b = codec::encode_to_bytes(m).expect("encodable");
        self.sock.send_to(&b, self.gw).expect("send");
    }

    pub fn send_raw(&self, b: &[u8]) {
        self.sock.send_to(b, self.gw).expect("send");
    }

    /// The next message within `timeout` (datagrams the loss model drops are skipped).
    pub fn recv_within(&mut self, timeout: Duration) -> Option<SnMessage> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                if Instant::now() >= deadline {
                    return None;
                }
                continue;
            };
            assert_eq!(from, self.gw, "a datagram from another address");
            self.received += 1;
            if self
                .drop_every
                .is_some_and(|k| self.received.is_multiple_of(k))
            {
                self.dropped += 1;
                continue;
            }
            let bytes = Bytes::copy_from_slice(&buf[..n]);
            return Some(codec::decode(&bytes).expect("the gateway sends valid datagrams"));
        }
    }

    pub fn recv(&mut self) -> SnMessage {
        self.recv_within(WAIT)
            .unwrap_or_else(|| panic!("no datagram within {WAIT:?}"))
    }

    /// Raw bytes of the next datagram within `timeout`.
    pub fn recv_raw_within(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        self.sock.set_read_timeout(Some(timeout)).expect("timeout");
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }

    pub fn expect_nothing(&mut self) {
        if let Some(m) = self.recv_within(QUIET) {
            panic!("expected nothing, got {m:?}");
        }
    }

    pub fn connect_msg(id: &str, will: bool, clean: bool, duration: u16) -> SnMessage {
        SnMessage::Connect(SnConnect {
            will,
            clean_session: clean,
            protocol_id: 0x01,
            duration,
            client_id: Bytes::copy_from_slice(id.as_bytes()),
        })
    }

    /// CONNECT without a will; returns the CONNACK's code.
    pub fn connect(&mut self, id: &str, clean: bool, duration: u16) -> ReturnCode {
        self.send(&SnClient::connect_msg(id, false, clean, duration));
        match self.recv() {
            SnMessage::ConnAck { code } => code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// CONNECT with a will, through the WILLTOPICREQ / WILLMSGREQ prompts (6.3).
    pub fn connect_with_will(
        &mut self,
        id: &str,
        duration: u16,
        topic: &str,
        msg: &[u8],
        qos: QoS,
    ) {
        self.send(&SnClient::connect_msg(id, true, true, duration));
        assert_eq!(self.recv(), SnMessage::WillTopicReq);
        self.send(&SnMessage::WillTopic(Some(WillTopic {
            qos,
            retain: false,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
        })));
        assert_eq!(self.recv(), SnMessage::WillMsgReq);
        self.send(&SnMessage::WillMsg {
            msg: Bytes::copy_from_slice(msg),
        });
        assert_eq!(
            self.recv(),
            SnMessage::ConnAck {
                code: ReturnCode::Accepted
            }
        );
    }

    /// REGISTER a topic name; returns its id.
    pub fn register(&mut self, name: &str) -> TopicId {
        let msg_id = self.msg_id();
        self.send(&SnMessage::Register {
            topic_id: TopicId::NONE,
            msg_id,
            topic_name: Bytes::copy_from_slice(name.as_bytes()),
        });
        match self.recv() {
            SnMessage::RegAck {
                topic_id,
                msg_id: m,
                code: ReturnCode::Accepted,
            } if m == msg_id => topic_id,
            other => panic!("expected REGACK, got {other:?}"),
        }
    }

    /// SUBSCRIBE; returns the SUBACK's (topic id, granted QoS, code).
    pub fn subscribe(&mut self, topic: SubTopic, qos: QoS) -> (TopicId, QoS, ReturnCode) {
        let msg_id = self.msg_id();
        self.send(&SnMessage::Subscribe(SnSubscribe {
            dup: false,
            qos,
            msg_id,
            topic,
        }));
        match self.recv() {
            SnMessage::SubAck {
                qos,
                topic_id,
                msg_id: m,
                code,
            } if m == msg_id => (topic_id, qos, code),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn publish_msg(&mut self, topic: TopicRef, qos: SnQoS, data: &[u8]) -> SnMessage {
        let msg_id = match qos {
            SnQoS::One | SnQoS::Two => self.msg_id(),
            SnQoS::Zero | SnQoS::MinusOne => MsgId(0),
        };
        SnMessage::Publish(SnPublish {
            dup: false,
            qos,
            retain: false,
            topic,
            msg_id,
            data: Bytes::copy_from_slice(data),
        })
    }

    /// PUBLISH and complete the client's side of the QoS flow; returns the PUBACK code
    /// (QoS 1), or `Accepted` for the others.
    pub fn publish(&mut self, topic: TopicRef, qos: SnQoS, data: &[u8]) -> ReturnCode {
        let m = self.publish_msg(topic, qos, data);
        let SnMessage::Publish(p) = &m else {
            unreachable!()
        };
        let msg_id = p.msg_id;
        self.send(&m);
        match qos {
            SnQoS::Zero | SnQoS::MinusOne => ReturnCode::Accepted,
            SnQoS::One => match self.recv() {
                SnMessage::PubAck {
                    msg_id: m, code, ..
                } if m == msg_id => code,
                other => panic!("expected PUBACK, got {other:?}"),
            },
            SnQoS::Two => {
                match self.recv() {
                    SnMessage::PubRec { msg_id: m } if m == msg_id => {}
                    SnMessage::PubAck { code, .. } => return code,
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&SnMessage::PubRel { msg_id });
                match self.recv() {
                    SnMessage::PubComp { msg_id: m } if m == msg_id => ReturnCode::Accepted,
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// The next PUBLISH, acknowledged as its QoS asks (QoS 2: PUBREC, PUBREL, PUBCOMP).
    /// REGISTERs before it are acknowledged and returned with it.
    pub fn receive_publish(&mut self) -> (SnPublish, Vec<(TopicId, Bytes)>) {
        let mut registered = Vec::new();
        loop {
            match self.recv() {
                SnMessage::Register {
                    topic_id,
                    msg_id,
                    topic_name,
                } => {
                    self.send(&SnMessage::RegAck {
                        topic_id,
                        msg_id,
                        code: ReturnCode::Accepted,
                    });
                    registered.push((topic_id, topic_name));
                }
                SnMessage::Publish(p) => {
                    self.ack(&p);
                    return (p, registered);
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Acknowledges a received PUBLISH as its QoS asks.
    pub fn ack(&mut self, p: &SnPublish) {
        let topic_id = match p.topic {
            TopicRef::Normal(id) | TopicRef::Predefined(id) => id,
            TopicRef::Short(s) => TopicId(u16::from_be_bytes(s)),
        };
        match p.qos {
            SnQoS::One => self.send(&SnMessage::PubAck {
                topic_id,
                msg_id: p.msg_id,
                code: ReturnCode::Accepted,
            }),
            SnQoS::Two => {
                self.send(&SnMessage::PubRec { msg_id: p.msg_id });
                match self.recv() {
                    SnMessage::PubRel { msg_id } if msg_id == p.msg_id => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&SnMessage::PubComp { msg_id: p.msg_id });
            }
            SnQoS::Zero | SnQoS::MinusOne => {}
        }
    }
}
