//! Interop through the shard runtime with a third-party client (rumqttc), MQTT 3.1.1 and
//! 5.0, publisher and subscriber homed on different shards.

mod common;

use std::time::Duration;

use common::Broker;
use ringmq::config::DriverKind;

const SHARDS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v311_across_shards() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    for driver in [DriverKind::Auto, DriverKind::Epoll] {
        let broker = Broker::start_driver(SHARDS, driver);
        let addr = broker.addr;
        let opts = |id: String| {
            let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(10));
            o
        };
        let (sub, mut sub_loop) = AsyncClient::new(opts(broker.client_id_on("rumq-sub", 1)), 16);
        let (publisher, mut pub_loop) =
            AsyncClient::new(opts(broker.client_id_on("rumq-pub", 2)), 16);
        sub.subscribe("interop/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let received = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 3 {
                match sub_loop.poll().await.expect("subscriber event loop") {
                    Event::Incoming(Packet::Publish(p)) => got.push(p.payload.to_vec()),
                    Event::Incoming(Packet::SubAck(_)) => {}
                    _ => {}
                }
            }
            got
        });
        let driver_task = tokio::spawn(async move {
            loop {
                if pub_loop.poll().await.is_err() {
                    break;
                }
            }
        });
        // Let the SUBSCRIBE land before publishing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publisher
                .publish("interop/x", qos, false, format!("m{i}"))
                .await
                .expect("publish");
        }
        let got = tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .expect("messages within 10 s")
            .expect("subscriber task");
        assert_eq!(got, vec![b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()]);
        driver_task.abort();
        broker.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_across_shards() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = Broker::start_driver(SHARDS, DriverKind::Auto);
    let addr = broker.addr;
    let opts = |id: String| {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(10));
        o
    };
    let (sub, mut sub_loop) = AsyncClient::new(opts(broker.client_id_on("rumq5-sub", 3)), 16);
    let (publisher, mut pub_loop) = AsyncClient::new(opts(broker.client_id_on("rumq5-pub", 0)), 16);
    sub.subscribe("v5/#", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    let received = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 2 {
            if let Event::Incoming(Packet::Publish(p)) =
                sub_loop.poll().await.expect("subscriber event loop")
            {
                got.push(p.payload.to_vec());
            }
        }
        got
    });
    let driver_task = tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher
        .publish("v5/a", QoS::AtLeastOnce, false, "one")
        .await
        .expect("publish");
    publisher
        .publish("v5/b", QoS::ExactlyOnce, false, "two")
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("messages within 10 s")
        .expect("subscriber task");
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    driver_task.abort();
    broker.stop();
}
