//! Recovery: reads a store into memory at open, checks its format, and collects its garbage.
//!
//! Owns: [`Recovered`], the format check (and the creation of a new store's tables), the
//! rebuild of message reference counts, and the one cleanup transaction at open (messages
//! nobody references, rows whose session is gone, references to missing messages). Must never:
//! panic or trust a length from the file; a record that does not decode is
//! `OpenError::Corrupt` naming the table and key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::error::{OpenError, open_error};
use crate::open::RefCounts;
use crate::record::{DecodeError, to_vec};
use crate::schema::{self, FORMAT_VERSION, META_FORMAT_VERSION, META_LAST_ALIVE_MS, TABLE_NAMES};
use crate::types::{AwaitRelRecord, EntryRecord, MessageRecord, SessionRecord, SubRecord};

/// One session as stored, with everything keyed under its client id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredSession {
    pub client: Bytes,
    pub record: SessionRecord,
    /// `(filter, record)`, ascending filter.
    pub subs: Vec<(Bytes, SubRecord)>,
    /// `(seq, record)`, ascending seq: the queue in delivery order.
    pub entries: Vec<(u64, EntryRecord)>,
    /// `(packet id, record)`, ascending packet id.
    pub await_rel: Vec<(u16, AwaitRelRecord)>,
}

/// Everything a store holds, read at open.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Ascending client id.
    pub sessions: Vec<RecoveredSession>,
    /// Every message an entry or await-rel row references, and no other: each `msg` in
    /// `sessions` is a key here.
    pub messages: HashMap<u64, Arc<MessageRecord>>,
    /// `(topic, message)`, ascending topic.
    pub retained: Vec<(Bytes, MessageRecord)>,
    /// Fan-outs a crash cut short: `(message, shard)`, the shard still to store its part.
    /// Every message here is in `messages`.
    pub fanout: Vec<(crate::types::MsgId, u8)>,
    /// Wall clock (ms since the UNIX epoch) of the last commit before this open: after a crash,
    /// about when the broker died (the writer commits at least every 2 s). `None` for a new
    /// store.
    pub last_alive_ms: Option<u64>,
    /// The highest message id in the file or referenced from it; number new messages above it.
    pub max_msg_id: u64,
    /// What the cleanup at open removed.
    pub repairs: Repairs,
}

/// Rows recovery removed. Unreferenced messages are normal (the last reference was dropped in
/// a transaction before a crash left them; the writer deletes them as it goes otherwise); the
/// other two only come from a broker that broke the op contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    pub unreferenced_messages: u64,
    /// Subs, entries and await-rel rows whose session row does not exist.
    pub orphan_rows: u64,
    /// Entries (removed) and await-rel rows (unlinked) that referenced a missing message.
    pub dangling_refs: u64,
}

/// Rows to delete or rewrite in the cleanup transaction.
#[derive(Default)]
struct Garbage {
    msgs: Vec<u64>,
    subs: Vec<(Bytes, Bytes)>,
    entries: Vec<(Bytes, u64)>,
    await_rel: Vec<(Bytes, u16)>,
    /// Await-rel rows to rewrite without their (missing) message.
    unlink: Vec<(Bytes, u16)>,
    /// Fan-out rows whose message is missing.
    fanout: Vec<(u64, u8)>,
}

impl Garbage {
    fn is_empty(&self) -> bool {
        self.msgs.is_empty()
            && self.subs.is_empty()
            && self.entries.is_empty()
            && self.await_rel.is_empty()
            && self.unlink.is_empty()
            && self.fanout.is_empty()
    }
}

/// `?` for any redb error on the open path.
trait OrOpen<T> {
    fn or_open(self, path: &Path) -> Result<T, OpenError>;
}

impl<T, E: Into<redb::Error>> OrOpen<T> for Result<T, E> {
    fn or_open(self, path: &Path) -> Result<T, OpenError> {
        self.map_err(|e| open_error(path, e))
    }
}

fn corrupt(path: &Path, table: &str, key: String, err: DecodeError) -> OpenError {
    OpenError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("record in table {table} at key {key} does not decode: {err}"),
    }
}

fn show(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

/// Reads the store; returns it with the reference count of every referenced message.
pub(crate) fn recover(db: &Database, path: &Path) -> Result<(Recovered, RefCounts), OpenError> {
    let Some(last_alive_ms) = check_format(db, path)? else {
        return Ok((Recovered::default(), RefCounts::default()));
    };
    let txn = db.begin_read().or_open(path)?;
    let mut garbage = Garbage::default();
    let mut repairs = Repairs::default();
    let mut refs = RefCounts::default();
    let mut sessions = read_sessions(&txn, path)?;
    attach_subs(&txn, path, &mut sessions, &mut garbage)?;
    attach_entries(&txn, path, &mut sessions, &mut refs, &mut garbage)?;
    attach_await_rel(&txn, path, &mut sessions, &mut refs, &mut garbage)?;
    let mut fanout = read_fanout(&txn, path, &mut refs)?;
    repairs.orphan_rows =
        (garbage.subs.len() + garbage.entries.len() + garbage.await_rel.len()) as u64;
    let (messages, max_id) = read_messages(&txn, path, &refs, &mut garbage)?;
    repairs.unreferenced_messages = garbage.msgs.len() as u64;
    repairs.dangling_refs = drop_dangling(&mut sessions, &messages, &mut refs, &mut garbage);
    fanout.retain(|(m, s)| {
        let present = messages.contains_key(&m.0);
        if !present {
            garbage.fanout.push((m.0, *s));
        }
        present
    });
    let retained = read_retained(&txn, path)?;
    drop(txn);
    if !garbage.is_empty() {
        collect_garbage(db, path, &garbage)?;
    }
    let max_msg_id = refs.keys().copied().fold(max_id, u64::max);
    let recovered = Recovered {
        sessions,
        messages,
        retained,
        fanout,
        last_alive_ms: last_alive_ms.0,
        max_msg_id,
        repairs,
    };
    Ok((recovered, refs))
}

/// The last-alive stamp of an existing store.
struct LastAlive(Option<u64>);

/// Checks the format version; creates the tables of a new (table-less) file and returns `None`.
fn check_format(db: &Database, path: &Path) -> Result<Option<LastAlive>, OpenError> {
    let txn = db.begin_read().or_open(path)?;
    let names: Vec<String> = txn
        .list_tables()
        .or_open(path)?
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    let corrupt = |detail: String| OpenError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    if !names.iter().any(|n| n == "meta") {
        if !names.is_empty() {
            return Err(corrupt(format!(
                "it holds tables {names:?} but no format version: not a RingMQ store"
            )));
        }
        drop(txn);
        create_tables(db, path)?;
        return Ok(None);
    }
    let meta = txn.open_table(schema::META).or_open(path)?;
    let found = meta
        .get(META_FORMAT_VERSION)
        .or_open(path)?
        .map(|g| g.value());
    match found {
        None => return Err(corrupt("the meta table has no format version".to_string())),
        Some(found) if found != FORMAT_VERSION => {
            return Err(OpenError::Version {
                path: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        Some(_) => {}
    }
    if let Some(missing) = TABLE_NAMES.iter().find(|t| !names.iter().any(|n| n == *t)) {
        return Err(corrupt(format!("table {missing} is missing")));
    }
    let last_alive = meta
        .get(META_LAST_ALIVE_MS)
        .or_open(path)?
        .map(|g| g.value());
    Ok(Some(LastAlive(last_alive)))
}

/// All tables and the format version, in one transaction: a crash leaves none or all.
fn create_tables(db: &Database, path: &Path) -> Result<(), OpenError> {
    let txn = db.begin_write().or_open(path)?;
    {
        txn.open_table(schema::SESSIONS).or_open(path)?;
        txn.open_table(schema::SUBS).or_open(path)?;
        txn.open_table(schema::ENTRIES).or_open(path)?;
        txn.open_table(schema::AWAIT_REL).or_open(path)?;
        txn.open_table(schema::MSGS).or_open(path)?;
        txn.open_table(schema::RETAINED).or_open(path)?;
        txn.open_table(schema::FANOUT).or_open(path)?;
        let mut meta = txn.open_table(schema::META).or_open(path)?;
        meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)
            .or_open(path)?;
    }
    txn.commit().or_open(path)
}

fn read_sessions(txn: &ReadTransaction, path: &Path) -> Result<Vec<RecoveredSession>, OpenError> {
    let table = txn.open_table(schema::SESSIONS).or_open(path)?;
    let mut out = Vec::new();
    for row in table.iter().or_open(path)? {
        let (k, v) = row.or_open(path)?;
        let client = k.value();
        let record = SessionRecord::decode(v.value())
            .map_err(|e| corrupt(path, "sessions", show(client), e))?;
        out.push(RecoveredSession {
            client: Bytes::copy_from_slice(client),
            record,
            subs: Vec::new(),
            entries: Vec::new(),
            await_rel: Vec::new(),
        });
    }
    Ok(out)
}

/// The session for `client` among `sessions` (ascending), moving `cursor` forward. Every child
/// table is keyed by client id first in the same byte order, so one pass joins them.
fn seek(sessions: &[RecoveredSession], cursor: &mut usize, client: &[u8]) -> Option<usize> {
    while *cursor < sessions.len() && sessions[*cursor].client.as_ref() < client {
        *cursor += 1;
    }
    (*cursor < sessions.len() && sessions[*cursor].client.as_ref() == client).then_some(*cursor)
}

fn attach_subs(
    txn: &ReadTransaction,
    path: &Path,
    sessions: &mut [RecoveredSession],
    garbage: &mut Garbage,
) -> Result<(), OpenError> {
    let table = txn.open_table(schema::SUBS).or_open(path)?;
    let mut cursor = 0;
    for row in table.iter().or_open(path)? {
        let (k, v) = row.or_open(path)?;
        let (client, filter) = k.value();
        let Some(i) = seek(sessions, &mut cursor, client) else {
            garbage.subs.push((
                Bytes::copy_from_slice(client),
                Bytes::copy_from_slice(filter),
            ));
            continue;
        };
        let record = SubRecord::decode(v.value()).map_err(|e| {
            corrupt(
                path,
                "subs",
                format!("({}, {})", show(client), show(filter)),
                e,
            )
        })?;
        sessions[i]
            .subs
            .push((Bytes::copy_from_slice(filter), record));
    }
    Ok(())
}

fn attach_entries(
    txn: &ReadTransaction,
    path: &Path,
    sessions: &mut [RecoveredSession],
    refs: &mut RefCounts,
    garbage: &mut Garbage,
) -> Result<(), OpenError> {
    let table = txn.open_table(schema::ENTRIES).or_open(path)?;
    let mut cursor = 0;
    for row in table.iter().or_open(path)? {
        let (k, v) = row.or_open(path)?;
        let (client, seq) = k.value();
        let Some(i) = seek(sessions, &mut cursor, client) else {
            garbage.entries.push((Bytes::copy_from_slice(client), seq));
            continue;
        };
        let record = EntryRecord::decode(v.value())
            .map_err(|e| corrupt(path, "entries", format!("({}, {seq})", show(client)), e))?;
        *refs.entry(record.msg.0).or_insert(0) += 1;
        sessions[i].entries.push((seq, record));
    }
    Ok(())
}

fn attach_await_rel(
    txn: &ReadTransaction,
    path: &Path,
    sessions: &mut [RecoveredSession],
    refs: &mut RefCounts,
    garbage: &mut Garbage,
) -> Result<(), OpenError> {
    let table = txn.open_table(schema::AWAIT_REL).or_open(path)?;
    let mut cursor = 0;
    for row in table.iter().or_open(path)? {
        let (k, v) = row.or_open(path)?;
        let (client, packet_id) = k.value();
        let Some(i) = seek(sessions, &mut cursor, client) else {
            garbage
                .await_rel
                .push((Bytes::copy_from_slice(client), packet_id));
            continue;
        };
        let record = AwaitRelRecord::decode(v.value()).map_err(|e| {
            corrupt(
                path,
                "await_rel",
                format!("({}, {packet_id})", show(client)),
                e,
            )
        })?;
        if let Some(msg) = record.msg {
            *refs.entry(msg.0).or_insert(0) += 1;
        }
        sessions[i].await_rel.push((packet_id, record));
    }
    Ok(())
}

/// The fan-out rows, each a reference on its message.
fn read_fanout(
    txn: &ReadTransaction,
    path: &Path,
    refs: &mut RefCounts,
) -> Result<Vec<(crate::types::MsgId, u8)>, OpenError> {
    let table = txn.open_table(schema::FANOUT).or_open(path)?;
    let mut out = Vec::new();
    for row in table.iter().or_open(path)? {
        let (k, _) = row.or_open(path)?;
        let (msg, shard) = k.value();
        *refs.entry(msg).or_insert(0) += 1;
        out.push((crate::types::MsgId(msg), shard));
    }
    Ok(out)
}

/// Decodes the referenced messages; lists the others for deletion. Returns the highest id seen.
fn read_messages(
    txn: &ReadTransaction,
    path: &Path,
    refs: &RefCounts,
    garbage: &mut Garbage,
) -> Result<(HashMap<u64, Arc<MessageRecord>>, u64), OpenError> {
    let table = txn.open_table(schema::MSGS).or_open(path)?;
    let mut messages = HashMap::with_capacity(refs.len());
    let mut max_id = 0;
    for row in table.iter().or_open(path)? {
        let (k, v) = row.or_open(path)?;
        let id = k.value();
        max_id = max_id.max(id);
        if !refs.contains_key(&id) {
            garbage.msgs.push(id);
            continue;
        }
        let record = MessageRecord::decode(v.value())
            .map_err(|e| corrupt(path, "msgs", id.to_string(), e))?;
        messages.insert(id, Arc::new(record));
    }
    Ok((messages, max_id))
}

/// Removes entries, and unlinks await-rel rows, whose message is missing, so that every `msg`
/// in `sessions` is in `messages`. Returns how many there were.
fn drop_dangling(
    sessions: &mut [RecoveredSession],
    messages: &HashMap<u64, Arc<MessageRecord>>,
    refs: &mut RefCounts,
    garbage: &mut Garbage,
) -> u64 {
    let before = garbage.entries.len() + garbage.unlink.len();
    for s in sessions.iter_mut() {
        s.entries.retain(|(seq, e)| {
            let present = messages.contains_key(&e.msg.0);
            if !present {
                garbage.entries.push((s.client.clone(), *seq));
            }
            present
        });
        for (packet_id, a) in &mut s.await_rel {
            if a.msg.is_some_and(|m| !messages.contains_key(&m.0)) {
                a.msg = None;
                garbage.unlink.push((s.client.clone(), *packet_id));
            }
        }
    }
    refs.retain(|id, _| messages.contains_key(id));
    (garbage.entries.len() + garbage.unlink.len() - before) as u64
}

fn read_retained(
    txn: &ReadTransaction,
    path: &Path,
) -> Result<Vec<(Bytes, MessageRecord)>, OpenError> {
    let table = txn.open_table(schema::RETAINED).or_open(path)?;
    let mut out = Vec::new();
    for row in table.iter().or_open(path)? {
        let (k, v) = row.or_open(path)?;
        let topic = k.value();
        let record = MessageRecord::decode(v.value())
            .map_err(|e| corrupt(path, "retained", show(topic), e))?;
        out.push((Bytes::copy_from_slice(topic), record));
    }
    Ok(out)
}

fn collect_garbage(db: &Database, path: &Path, g: &Garbage) -> Result<(), OpenError> {
    let txn = db.begin_write().or_open(path)?;
    {
        let mut msgs = txn.open_table(schema::MSGS).or_open(path)?;
        for id in &g.msgs {
            msgs.remove(*id).or_open(path)?;
        }
        let mut subs = txn.open_table(schema::SUBS).or_open(path)?;
        for (c, f) in &g.subs {
            subs.remove((c.as_ref(), f.as_ref())).or_open(path)?;
        }
        let mut entries = txn.open_table(schema::ENTRIES).or_open(path)?;
        for (c, seq) in &g.entries {
            entries.remove((c.as_ref(), *seq)).or_open(path)?;
        }
        let mut await_rel = txn.open_table(schema::AWAIT_REL).or_open(path)?;
        for (c, p) in &g.await_rel {
            await_rel.remove((c.as_ref(), *p)).or_open(path)?;
        }
        let mut fanout = txn.open_table(schema::FANOUT).or_open(path)?;
        for (m, s) in &g.fanout {
            fanout.remove((*m, *s)).or_open(path)?;
        }
        let unlinked = to_vec(|o| AwaitRelRecord { msg: None }.encode(o));
        for (c, p) in &g.unlink {
            await_rel
                .insert((c.as_ref(), *p), unlinked.as_slice())
                .or_open(path)?;
        }
    }
    txn.commit().or_open(path)
}
