//! The redb tables of a RingMQ store and the format version (see `storage/DESIGN.md`).
//!
//! Owns: table names, key and value types, meta keys and the format version. Must never: hold
//! state or open a database; values are the byte encodings of `record`.

use redb::TableDefinition;

/// The file name inside the store's directory.
pub const FILE_NAME: &str = "ringmq.redb";

/// Version of the table layout and record encodings this build writes and reads. A file with
/// another version is refused at open (`OpenError::Version`); a later build that changes the
/// format bumps this and converts older files explicitly.
pub const FORMAT_VERSION: u64 = 1;

/// `client id -> SessionRecord`.
pub(crate) const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// `(client id, filter) -> SubRecord`.
pub(crate) const SUBS: TableDefinition<(&[u8], &[u8]), &[u8]> = TableDefinition::new("subs");
/// `(client id, seq) -> EntryRecord`; a session's queue in delivery order.
pub(crate) const ENTRIES: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("entries");
/// `(client id, packet id) -> AwaitRelRecord`.
pub(crate) const AWAIT_REL: TableDefinition<(&[u8], u16), &[u8]> =
    TableDefinition::new("await_rel");
/// `message id -> MessageRecord`; each row referenced by at least one entry or await-rel row.
pub(crate) const MSGS: TableDefinition<u64, &[u8]> = TableDefinition::new("msgs");
/// `topic -> MessageRecord`.
pub(crate) const RETAINED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retained");
/// `(message id, shard) -> ()`: the shard has yet to store its part of the fan-out of a QoS
/// 2 message whose publisher's inbound id is stored (see `Op::PutFanout`); each row holds
/// one reference on the message.
pub(crate) const FANOUT: TableDefinition<(u64, u8), ()> = TableDefinition::new("fanout");
/// Named numbers: [`META_FORMAT_VERSION`], [`META_LAST_ALIVE_MS`], [`META_TXN_SEQ`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
/// Wall clock (ms since the UNIX epoch) of the last commit; written by every transaction.
pub(crate) const META_LAST_ALIVE_MS: &str = "last_alive_ms";
/// Number of the last writer transaction, one more in every commit. After a commit that
/// reported failure, the writer reads it back to learn whether that transaction landed anyway
/// (a failed fsync can leave it in the file).
pub(crate) const META_TXN_SEQ: &str = "txn_seq";

/// Every table name, for messages and for telling a foreign redb file from a new one.
pub(crate) const TABLE_NAMES: [&str; 8] = [
    "sessions",
    "subs",
    "entries",
    "await_rel",
    "msgs",
    "retained",
    "fanout",
    "meta",
];
