//! Authentication benchmarks: what one password check costs per hash format (the figure the
//! argon2id parameters in `src/auth/password.rs` were chosen by), and what an ACL decision
//! costs per message.
//!
//! Run: `cargo bench --bench auth` (a filter such as `-- acl/` runs one part).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ringmq::auth::acl::{Acl, AclSubject};
use ringmq::auth::password::PasswordHash;
use ringmq::auth::random::OsRandom;
use ringmq::router::{TopicFilter, TopicName};

/// `alice` / `secret` from mosquitto_passwd 2.0.11 (its default: PBKDF2-SHA-512, 101 rounds).
const MOSQUITTO_7: &str = "$7$101$BW726NgiluKURka5$gt72JOwWhNSE97oHYKGfcphmK9HiLaQH2rynfAW76MlVrAtLUT4Gybfi4auMvJFUj6OYvA5GikSh8mAEZzOygw==";

fn password_checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("password");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    let argon = PasswordHash::argon2id(b"correct horse", &mut OsRandom).expect("hash");
    group.bench_function("argon2id_verify", |b| {
        b.iter(|| argon.verify(black_box(b"correct horse")))
    });
    let mosquitto = PasswordHash::parse(MOSQUITTO_7).expect("mosquitto hash");
    group.bench_function("mosquitto_pbkdf2_101_verify", |b| {
        b.iter(|| mosquitto.verify(black_box(b"secret")))
    });
    group.finish();
}

/// 1000 users with 5 rules each, 3 patterns: a user's decision walks its 5 rules and the
/// patterns.
fn acl_text() -> String {
    let mut text = String::from("topic read public/#\npattern read clients/%c/#\n");
    text.push_str("pattern readwrite users/%u/#\npattern deny users/%u/secret/#\n");
    for u in 0..1000 {
        text.push_str(&format!(
            "user u{u}\ntopic read sensors/{u}/+/temp\ntopic readwrite rooms/{u}/#\n\
             topic write cmd/{u}\ntopic deny rooms/{u}/private/#\ntopic read $SYS/broker/load\n"
        ));
    }
    text
}

fn acl_decisions(c: &mut Criterion) {
    let acl = Acl::parse(&acl_text()).expect("acl");
    let who = AclSubject::new("device-17", Some("u500"));
    let hit = TopicName::new(Bytes::from_static(b"rooms/500/kitchen/light")).expect("topic");
    let miss = TopicName::new(Bytes::from_static(b"rooms/501/kitchen/light")).expect("topic");
    let pattern = TopicName::new(Bytes::from_static(b"users/u500/inbox")).expect("topic");
    let filter = TopicFilter::new(Bytes::from_static(b"sensors/500/+/temp")).expect("filter");
    let mut group = c.benchmark_group("acl");
    group.bench_function("may_read_granted", |b| {
        b.iter(|| acl.may_read(black_box(&who), black_box(&hit)))
    });
    group.bench_function("may_read_refused", |b| {
        b.iter(|| acl.may_read(black_box(&who), black_box(&miss)))
    });
    group.bench_function("may_publish_pattern", |b| {
        b.iter(|| acl.may_publish(black_box(&who), black_box(&pattern)))
    });
    group.bench_function("may_subscribe", |b| {
        b.iter(|| acl.may_subscribe(black_box(&who), black_box(&filter)))
    });
    group.bench_function("subject_and_may_read", |b| {
        b.iter(|| {
            let who = AclSubject::new(black_box("device-17"), black_box(Some("u500")));
            acl.may_read(&who, black_box(&hit))
        })
    });
    group.finish();
}

criterion_group!(benches, password_checks, acl_decisions);
criterion_main!(benches);
