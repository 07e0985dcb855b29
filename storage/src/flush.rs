//! Writes a [`Pending`] into one redb write transaction and works out the message references.
//!
//! Owns: the translation of folded ops into row writes, in key order, and the reference count
//! arithmetic: an entry or await-rel row written adds a reference on its message, the row it
//! replaces or removes drops one (read back from redb, so the ops need not say what they
//! replace). A message whose count goes from 0 to more is written from the pending bodies; one
//! that drops to 0 is deleted; one never referenced is never written. Must never: commit, or
//! change the writer's reference counts (the writer applies [`Flushed::ref_changes`] only once
//! the commit succeeded, so a failed transaction leaves them as the disk is).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::open::RefCounts;
use crate::pending::{EntryAction, Pending};
use crate::record::DecodeError;
use crate::schema;
use crate::types::{AwaitRelRecord, EntryRecord, MsgId};

/// What a flushed transaction did, for the writer to apply after the commit.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    /// `(message id, references after this transaction)`; 0 means the row was deleted.
    pub ref_changes: Vec<(u64, u32)>,
    pub rows_written: u64,
    pub rows_removed: u64,
    /// References to a message neither stored nor offered by a `PutMessage` (the broker broke
    /// the op contract), and rows met while writing that did not decode. Recovery repairs both.
    pub anomalies: u64,
}

/// Reference deltas per message id, gathered while writing rows.
#[derive(Default)]
struct Deltas(HashMap<u64, i64>);

impl Deltas {
    fn add(&mut self, msg: MsgId, d: i64) {
        *self.0.entry(msg.0).or_insert(0) += d;
    }

    /// Drops the reference an old row held; a row that does not decode counts as an anomaly.
    fn release(&mut self, old: Result<Option<MsgId>, DecodeError>, anomalies: &mut u64) {
        match old {
            Ok(Some(msg)) => self.add(msg, -1),
            Ok(None) => {}
            Err(_) => *anomalies += 1,
        }
    }
}

/// Wall clock in ms since the UNIX epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Applies `pending` to `txn`, numbered `seq`. `refs` are the committed reference counts.
pub(crate) fn flush(
    txn: &WriteTransaction,
    pending: &Pending,
    refs: &RefCounts,
    seq: u64,
    buf: &mut Vec<u8>,
) -> Result<Flushed, redb::Error> {
    let mut out = Flushed::default();
    let mut deltas = Deltas::default();
    for client in &pending.wiped {
        wipe(txn, client, &mut deltas, &mut out)?;
    }
    write_plain(txn, pending, buf, &mut out)?;
    write_entries(txn, pending, buf, &mut deltas, &mut out)?;
    write_await_rel(txn, pending, buf, &mut deltas, &mut out)?;
    write_fanout(txn, pending, &mut deltas, &mut out)?;
    write_messages(txn, pending, refs, &deltas, buf, &mut out)?;
    let mut meta = txn.open_table(schema::META)?;
    meta.insert(schema::META_LAST_ALIVE_MS, now_ms())?;
    meta.insert(schema::META_TXN_SEQ, seq)?;
    Ok(out)
}

/// The number of the last committed writer transaction (0 before the first).
pub(crate) fn read_txn_seq(db: &redb::Database) -> Result<u64, redb::Error> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let meta = txn.open_table(schema::META)?;
    Ok(meta.get(schema::META_TXN_SEQ)?.map_or(0, |g| g.value()))
}

/// Removes every row of `client`, releasing the references of its entries and await-rel rows.
fn wipe(
    txn: &WriteTransaction,
    client: &Bytes,
    deltas: &mut Deltas,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    let c = client.as_ref();
    let mut sessions = txn.open_table(schema::SESSIONS)?;
    out.rows_removed += u64::from(sessions.remove(c)?.is_some());
    let mut subs = txn.open_table(schema::SUBS)?;
    let mut filters: Vec<Vec<u8>> = Vec::new();
    for row in subs.range((c, &[][..])..)? {
        let (k, _) = row?;
        let (rc, filter) = k.value();
        if rc != c {
            break;
        }
        filters.push(filter.to_vec());
    }
    for f in &filters {
        subs.remove((c, f.as_slice()))?;
    }
    out.rows_removed += filters.len() as u64;
    let mut anomalies = 0;
    let mut removed = 0u64;
    let mut entries = txn.open_table(schema::ENTRIES)?;
    entries.retain_in((c, 0)..=(c, u64::MAX), |_, v| {
        deltas.release(EntryRecord::decode_msg(v).map(Some), &mut anomalies);
        removed += 1;
        false
    })?;
    let mut await_rel = txn.open_table(schema::AWAIT_REL)?;
    await_rel.retain_in((c, 0)..=(c, u16::MAX), |_, v| {
        deltas.release(AwaitRelRecord::decode(v).map(|a| a.msg), &mut anomalies);
        removed += 1;
        false
    })?;
    out.rows_removed += removed;
    out.anomalies += anomalies;
    Ok(())
}

/// `buf` holding what `encode` writes.
fn encoded(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
    buf.clear();
    encode(buf);
    buf.as_slice()
}

/// Puts or removes one row of a table without references; counts it.
fn put_or_remove<K: redb::Key + 'static>(
    table: &mut Table<'_, K, &'static [u8]>,
    key: K::SelfType<'_>,
    value: Option<&[u8]>,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    match value {
        Some(v) => {
            table.insert(key, v)?;
            out.rows_written += 1;
        }
        None => out.rows_removed += u64::from(table.remove(key)?.is_some()),
    }
    Ok(())
}

/// Sessions, subscriptions and retained messages: rows that hold no references.
fn write_plain(
    txn: &WriteTransaction,
    pending: &Pending,
    buf: &mut Vec<u8>,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    let mut sessions = txn.open_table(schema::SESSIONS)?;
    for (client, record) in &pending.sessions {
        let value = record.as_ref().map(|r| encoded(buf, |b| r.encode(b)));
        put_or_remove(&mut sessions, client.as_ref(), value, out)?;
    }
    let mut subs = txn.open_table(schema::SUBS)?;
    for ((client, filter), record) in &pending.subs {
        let value = record.as_ref().map(|r| encoded(buf, |b| r.encode(b)));
        put_or_remove(&mut subs, (client.as_ref(), filter.as_ref()), value, out)?;
    }
    let mut retained = txn.open_table(schema::RETAINED)?;
    for (topic, record) in &pending.retained {
        let value = record.as_ref().map(|r| encoded(buf, |b| r.encode(b)));
        put_or_remove(&mut retained, topic.as_ref(), value, out)?;
    }
    Ok(())
}

fn write_entries(
    txn: &WriteTransaction,
    pending: &Pending,
    buf: &mut Vec<u8>,
    deltas: &mut Deltas,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(schema::ENTRIES)?;
    for ((client, seq), action) in &pending.entries {
        let key = (client.as_ref(), *seq);
        match action {
            EntryAction::Put(record) => {
                buf.clear();
                record.encode(buf);
                let old = table
                    .insert(key, buf.as_slice())?
                    .map(|g| EntryRecord::decode_msg(g.value()));
                deltas.release(old.transpose(), &mut out.anomalies);
                deltas.add(record.msg, 1);
                out.rows_written += 1;
            }
            EntryAction::SetState(state) => {
                let Some(old) = table.get(key)?.map(|g| EntryRecord::decode(g.value())) else {
                    continue;
                };
                let Ok(mut record) = old else {
                    out.anomalies += 1;
                    continue;
                };
                record.state = *state;
                buf.clear();
                record.encode(buf);
                table.insert(key, buf.as_slice())?;
                out.rows_written += 1;
            }
            EntryAction::Remove => {
                let old = table
                    .remove(key)?
                    .map(|g| EntryRecord::decode_msg(g.value()));
                out.rows_removed += u64::from(old.is_some());
                deltas.release(old.transpose(), &mut out.anomalies);
            }
        }
    }
    Ok(())
}

fn write_await_rel(
    txn: &WriteTransaction,
    pending: &Pending,
    buf: &mut Vec<u8>,
    deltas: &mut Deltas,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(schema::AWAIT_REL)?;
    for ((client, packet_id), record) in &pending.await_rel {
        let key = (client.as_ref(), *packet_id);
        let old = match record {
            Some(r) => {
                buf.clear();
                r.encode(buf);
                if let Some(msg) = r.msg {
                    deltas.add(msg, 1);
                }
                out.rows_written += 1;
                table
                    .insert(key, buf.as_slice())?
                    .map(|g| AwaitRelRecord::decode(g.value()))
            }
            None => {
                let old = table
                    .remove(key)?
                    .map(|g| AwaitRelRecord::decode(g.value()));
                out.rows_removed += u64::from(old.is_some());
                old
            }
        };
        deltas.release(
            old.map(|o| o.map(|a| a.msg)).unwrap_or(Ok(None)),
            &mut out.anomalies,
        );
    }
    Ok(())
}

/// Fan-out records: a row written adds a reference on its message, one removed drops it.
fn write_fanout(
    txn: &WriteTransaction,
    pending: &Pending,
    deltas: &mut Deltas,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(schema::FANOUT)?;
    for (&(msg, shard), &put) in &pending.fanout {
        if put {
            if table.insert((msg, shard), ())?.is_none() {
                deltas.add(MsgId(msg), 1);
            }
            out.rows_written += 1;
        } else if table.remove((msg, shard))?.is_some() {
            deltas.add(MsgId(msg), -1);
            out.rows_removed += 1;
        }
    }
    Ok(())
}

/// Writes bodies that gained their first reference, deletes those that lost their last.
fn write_messages(
    txn: &WriteTransaction,
    pending: &Pending,
    refs: &RefCounts,
    deltas: &Deltas,
    buf: &mut Vec<u8>,
    out: &mut Flushed,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(schema::MSGS)?;
    let mut ids: Vec<u64> = deltas
        .0
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    for id in ids {
        let before = refs.get(&id).copied().unwrap_or(0);
        let after = i64::from(before) + deltas.0[&id];
        let after = if after < 0 {
            // More releases than references: the counts were off (a row that did not decode
            // when it was written?). Recovery recounts; here the message is gone.
            out.anomalies += 1;
            0
        } else {
            u32::try_from(after).unwrap_or(u32::MAX)
        };
        if before == 0 && after > 0 {
            match pending.messages.get(&id) {
                Some(record) => {
                    buf.clear();
                    record.encode(buf);
                    table.insert(id, buf.as_slice())?;
                    out.rows_written += 1;
                }
                None if table.get(id)?.is_some() => {}
                None => out.anomalies += 1,
            }
        } else if before > 0 && after == 0 {
            out.rows_removed += u64::from(table.remove(id)?.is_some());
        }
        out.ref_changes.push((id, after));
    }
    Ok(())
}
