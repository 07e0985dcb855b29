//! A store the broker cannot use gives a clear message naming the file and exit code 1, never
//! a panic: damaged, truncated, another format version, locked by a running broker, on a
//! read-only file system. A full disk at run time is never acknowledged: v5 publishers get
//! 0x97, 3.x publishers are disconnected, and once there is room again the broker carries on
//! by itself without losing what it acknowledged. A broker killed with SIGKILL can be started
//! again at once on the same port.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use ringmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

use crate::common::process::{BrokerProcess, DataDir};
use crate::common::{Client, connect_packet, publish};

/// Starts a broker on `dir` expecting it to refuse: exit status 1 and a log line naming the
/// store file; returns the log.
fn refused(dir: &DataDir) -> String {
    match BrokerProcess::try_start_in(dir, &[]) {
        Ok(_) => panic!("the broker started on a store it should refuse"),
        Err((status, log)) => {
            assert!(
                status.contains("exit status: 1"),
                "exit {status}; log:\n{log}"
            );
            assert!(
                log.contains("ringmq.redb"),
                "the message names the file:\n{log}"
            );
            assert!(!log.contains("panicked"), "no panic:\n{log}");
            log
        }
    }
}

/// A store with a session in it (started and stopped once).
fn store_with_a_session(name: &str) -> DataDir {
    let dir = DataDir::new(name);
    let broker = BrokerProcess::start_in(&dir, &[]);
    let (c, _) = Client::connect(broker.addr, ProtocolVersion::V311, "kept", false);
    c.disconnect();
    assert!(broker.terminate(Duration::from_secs(10)).success());
    dir
}

#[test]
fn a_damaged_store_is_refused_with_a_message() {
    let dir = store_with_a_session("damaged");
    let file = dir.0.join("ringmq.redb");
    let mut bytes = std::fs::read(&file).expect("store file");
    let len = bytes.len();
    for b in &mut bytes[len / 3..len / 3 + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes).expect("write damage");
    let log = refused(&dir);
    assert!(log.contains("damaged"), "{log}");
}

#[test]
fn a_truncated_store_is_refused_with_a_message() {
    let dir = store_with_a_session("truncated");
    let file = dir.0.join("ringmq.redb");
    let bytes = std::fs::read(&file).expect("store file");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    refused(&dir);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_with_a_message() {
    let dir = DataDir::new("garbage");
    std::fs::write(dir.0.join("ringmq.redb"), vec![0x42; 64 * 1024]).expect("garbage");
    refused(&dir);
}

/// Rewrites the format version in the store's meta table with the storage crate's own
/// file layout (the broker must refuse a format it does not know).
#[test]
fn a_store_of_another_format_version_is_refused_with_a_message() {
    let dir = store_with_a_session("version");
    {
        let db = redb::Database::open(dir.0.join("ringmq.redb")).expect("open with redb");
        let txn = db.begin_write().expect("write txn");
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut meta = txn.open_table(def).expect("meta table");
            meta.insert("format_version", ringmq_storage::FORMAT_VERSION + 1)
                .expect("set version");
        }
        txn.commit().expect("commit");
    }
    let log = refused(&dir);
    assert!(log.contains("version"), "{log}");
}

#[test]
fn a_second_broker_on_the_same_store_is_refused() {
    let dir = DataDir::new("locked");
    let first = BrokerProcess::start_in(&dir, &[]);
    let log = refused(&dir);
    assert!(log.contains("in use") || log.contains("lock"), "{log}");
    drop(first);
}

/// A tmpfs mounted on a fresh directory; unmounted on drop. Needs root, as CI has.
struct Mount {
    dir: DataDir,
}

impl Mount {
    fn tmpfs(name: &str, options: &str) -> Mount {
        let dir = DataDir::new(name);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", dir.path()])
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (CI runs as root); mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_read_only_directory_is_refused_with_a_message() {
    let m = Mount::tmpfs("readonly", "ro,size=1m");
    refused(&m.dir);
}

/// Fills a small file system under a running broker: publishes that need the store are
/// refused (v5 PUBACK 0x97; 3.x disconnected), nothing acknowledged is lost, and once the
/// disk has room the broker accepts durable work again by itself.
#[test]
fn a_full_disk_is_never_acknowledged_and_the_broker_recovers_when_there_is_room() {
    let m = Mount::tmpfs("full", "size=4m");
    let broker = BrokerProcess::start_in(&m.dir, &["--shards", "2"]);
    let v = ProtocolVersion::V5;
    let mut c = connect_packet(v, "offline-reader", false);
    c.properties.session_expiry_interval = Some(3600);
    let (mut reader, _) = Client::connect_with(broker.addr, c.clone());
    reader.subscribe("fill/#", QoS::AtLeastOnce);
    reader.disconnect();
    // Take the rest of the file system with a file the test controls.
    let ballast = m.dir.0.join("ballast");
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", ballast.display()),
            "bs=64k",
        ])
        .output();
    let (mut p, _) = Client::connect(broker.addr, v, "filler", true);
    let payload = vec![b'x'; 8 * 1024];
    let mut acked = 0u32;
    let mut refused = 0u32;
    for id in 1..=400u16 {
        p.send(&Packet::Publish(publish(
            "fill/a",
            &payload,
            QoS::AtLeastOnce,
            Some(id),
        )));
        match p.recv() {
            Packet::PubAck(a) if a.reason == ReasonCode::Success => acked += 1,
            Packet::PubAck(a) => {
                assert_eq!(a.reason, ReasonCode::QuotaExceeded, "the refusal code");
                refused += 1;
            }
            Packet::Disconnect(d) => {
                // A commit that failed after the publish was routed closes the connection.
                assert_eq!(d.reason, ReasonCode::QuotaExceeded);
                refused += 1;
                let (again, _) = Client::connect(broker.addr, v, "filler", true);
                p = again;
            }
            other => panic!("unexpected {other:?}"),
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(refused > 0, "the disk never filled ({acked} acknowledged)");
    // A 3.x publisher of durable work is disconnected (its acknowledgement has no code).
    let (mut old, _) = Client::connect(broker.addr, ProtocolVersion::V311, "old-filler", true);
    old.send(&Packet::Publish(publish(
        "fill/b",
        &payload,
        QoS::AtLeastOnce,
        Some(1),
    )));
    let closing = old.expect_closed();
    assert!(
        !closing.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "3.x: no acknowledgement without a commit, got {closing:?}"
    );
    // Room again: the broker takes durable work by itself.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut p, _) = Client::connect(broker.addr, v, "filler", true);
    let mut id = 1000;
    loop {
        id += 1;
        p.send(&Packet::Publish(publish(
            "fill/c",
            b"after",
            QoS::AtLeastOnce,
            Some(id),
        )));
        match p.recv() {
            Packet::PubAck(a) if a.reason == ReasonCode::Success => break,
            Packet::PubAck(_) => {}
            Packet::Disconnect(_) => {
                let (again, _) = Client::connect(broker.addr, v, "filler", true);
                p = again;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not recover once there was room"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Everything acknowledged reaches the persistent reader, after a restart too.
    let broker = {
        assert!(broker.terminate(Duration::from_secs(10)).success());
        BrokerProcess::start_in(&m.dir, &["--shards", "2"])
    };
    let (mut reader, ack) = Client::connect_with(broker.addr, c);
    assert!(ack.session_present);
    let mut got = 0u32;
    while let Ok(Some(Packet::Publish(pkt))) = reader.recv_within(Duration::from_secs(2)) {
        reader.ack(&pkt);
        if pkt.topic.as_str() == "fill/a" {
            got += 1;
        }
    }
    assert!(
        got >= acked,
        "{acked} publishes were acknowledged before the disk filled, {got} arrived"
    );
    drop(broker);
}

/// After SIGKILL the next broker binds the same port at once: no operation of the killed
/// process keeps its listening socket alive.
#[test]
fn a_restart_right_after_sigkill_binds_the_same_port() {
    let dir = DataDir::new("rebind");
    for driver in ["auto", "epoll"] {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        for _ in 0..10 {
            let args = ["--listen", &listen, "--shards", "2"];
            let mut broker = start_with_driver(&dir, &args, driver);
            let _c = Client::connect(broker.addr, ProtocolVersion::V311, "probe", true);
            broker.signal(libc::SIGKILL);
            let _ = broker.wait_exit(Duration::from_secs(5));
        }
    }
}

fn start_with_driver(dir: &DataDir, args: &[&str], driver: &str) -> BrokerProcess {
    let mut all = vec![];
    if driver == "epoll" {
        all.push("--epoll");
    }
    all.extend_from_slice(args);
    match BrokerProcess::try_start_in(dir, &all) {
        Ok(b) => b,
        Err((status, log)) => panic!("restart on {driver} failed at once ({status}):\n{log}"),
    }
}
