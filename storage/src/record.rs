//! The byte encoding of every stored record (format version 1, see `storage/DESIGN.md`).
//!
//! Owns: turning records into compact bytes and back. Decoding is total: any byte sequence gives
//! a record or a [`DecodeError`], never a panic, never an allocation larger than the input.
//! Must never: touch redb or the file system, or accept bytes it would not write itself
//! (`decode(encode(r)) == r`, and `encode(decode(b)) == b` for every `b` that decodes).

use bytes::Bytes;

use crate::types::{
    AwaitRelRecord, EntryRecord, EntryState, MessageRecord, MsgId, SessionRecord, SubRecord,
    WillRecord,
};

/// Why bytes are not a record. `Copy`: the offset is enough to find the damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early at byte {at}")]
    UnexpectedEnd { at: usize },
    #[error("{extra} unexpected bytes after the record")]
    TrailingBytes { extra: usize },
    #[error("invalid or overlong varint at byte {at}")]
    BadVarint { at: usize },
    #[error("value at byte {at} is out of range for its field")]
    OutOfRange { at: usize },
    #[error("reserved flag bits set: {flags:#04x}")]
    ReservedFlags { flags: u8 },
    #[error("QoS {qos} is not 0, 1 or 2")]
    BadQos { qos: u8 },
}

// Flag bits. One flag byte starts each record that has optional fields; unknown bits are an
// error so that a later format can give them a meaning without old builds misreading it.
const QOS_MASK: u8 = 0b0000_0110;
const QOS_SHIFT: u32 = 1;
const RETAIN: u8 = 0b0000_0001;

const SESSION_CONNECTED: u8 = 0b0001;
const SESSION_EXPIRES: u8 = 0b0010;
const SESSION_WILL: u8 = 0b0100;
const SESSION_WILL_DUE: u8 = 0b1000;

const MSG_EXPIRES: u8 = 0b1000;

const ENTRY_STATE_MASK: u8 = 0b0001_1000;
const ENTRY_STATE_SHIFT: u32 = 3;

/// A bounded reader over one record: every read checks the remaining length first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::UnexpectedEnd { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let hi = self.u8()?;
        let lo = self.u8()?;
        Ok(u16::from_be_bytes([hi, lo]))
    }

    /// LEB128, at most 10 bytes; the last byte may not be a zero continuation (no overlong
    /// encodings, so each value has exactly one encoding).
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(DecodeError::BadVarint { at: start });
            }
            value |= part << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::BadVarint { at: start });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint { at: start })
    }

    fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        let at = self.pos;
        u32::try_from(self.varint()?).map_err(|_| DecodeError::OutOfRange { at })
    }

    /// A length-prefixed byte string; the length is checked against what is left before any
    /// allocation.
    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::OutOfRange { at })?;
        if len > self.remaining() {
            return Err(DecodeError::UnexpectedEnd { at: self.buf.len() });
        }
        let out = Bytes::copy_from_slice(&self.buf[self.pos..self.pos + len]);
        self.pos += len;
        Ok(out)
    }

    fn rest(&mut self) -> Bytes {
        let out = Bytes::copy_from_slice(&self.buf[self.pos..]);
        self.pos = self.buf.len();
        out
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn check_flags(flags: u8, allowed: u8) -> Result<(), DecodeError> {
    if flags & !allowed != 0 {
        return Err(DecodeError::ReservedFlags { flags });
    }
    Ok(())
}

fn qos_bits(qos: u8) -> u8 {
    (qos << QOS_SHIFT) & QOS_MASK
}

fn qos_of(flags: u8) -> Result<u8, DecodeError> {
    let qos = (flags & QOS_MASK) >> QOS_SHIFT;
    if qos > 2 {
        return Err(DecodeError::BadQos { qos });
    }
    Ok(qos)
}

impl SessionRecord {
    /// `flags, protocol, varint expiry_secs, [varint expires_at_ms], [varint will_due_ms],
    /// [will]`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.connected {
            flags |= SESSION_CONNECTED;
        }
        if self.expires_at_ms.is_some() {
            flags |= SESSION_EXPIRES;
        }
        if self.will.is_some() {
            flags |= SESSION_WILL;
        }
        if self.will_due_ms.is_some() {
            flags |= SESSION_WILL_DUE;
        }
        out.push(flags);
        out.push(self.protocol);
        put_varint(out, u64::from(self.expiry_secs));
        if let Some(at) = self.expires_at_ms {
            put_varint(out, at);
        }
        if let Some(at) = self.will_due_ms {
            put_varint(out, at);
        }
        if let Some(will) = &self.will {
            will.encode(out);
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let flags = r.u8()?;
        check_flags(
            flags,
            SESSION_CONNECTED | SESSION_EXPIRES | SESSION_WILL | SESSION_WILL_DUE,
        )?;
        let protocol = r.u8()?;
        let expiry_secs = r.varint_u32()?;
        let expires_at_ms = if flags & SESSION_EXPIRES != 0 {
            Some(r.varint()?)
        } else {
            None
        };
        let will_due_ms = if flags & SESSION_WILL_DUE != 0 {
            Some(r.varint()?)
        } else {
            None
        };
        let will = if flags & SESSION_WILL != 0 {
            Some(WillRecord::read(&mut r)?)
        } else {
            None
        };
        r.finish()?;
        Ok(SessionRecord {
            protocol,
            expiry_secs,
            connected: flags & SESSION_CONNECTED != 0,
            expires_at_ms,
            will,
            will_due_ms,
        })
    }
}

impl WillRecord {
    /// `flags (retain, qos), varint delay_secs, bytes topic, bytes properties, bytes payload`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(qos_bits(self.qos) | if self.retain { RETAIN } else { 0 });
        put_varint(out, u64::from(self.delay_secs));
        put_bytes(out, &self.topic);
        put_bytes(out, &self.properties);
        put_bytes(out, &self.payload);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        check_flags(flags, RETAIN | QOS_MASK)?;
        let qos = qos_of(flags)?;
        let delay_secs = r.varint_u32()?;
        let topic = r.bytes()?;
        let properties = r.bytes()?;
        let payload = r.bytes()?;
        Ok(WillRecord {
            topic,
            payload,
            qos,
            retain: flags & RETAIN != 0,
            delay_secs,
            properties,
        })
    }
}

impl SubRecord {
    /// `options, [varint id]`: the id is present exactly when bytes follow the options.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.options);
        if let Some(id) = self.id {
            put_varint(out, u64::from(id));
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let options = r.u8()?;
        let id = if r.remaining() > 0 {
            Some(r.varint_u32()?)
        } else {
            None
        };
        r.finish()?;
        Ok(SubRecord { options, id })
    }
}

impl MessageRecord {
    /// `flags (retain, qos, expires), [varint expires_at_ms], bytes topic, bytes properties,
    /// payload (the rest)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = qos_bits(self.qos) | if self.retain { RETAIN } else { 0 };
        if self.expires_at_ms.is_some() {
            flags |= MSG_EXPIRES;
        }
        out.push(flags);
        if let Some(at) = self.expires_at_ms {
            put_varint(out, at);
        }
        put_bytes(out, &self.topic);
        put_bytes(out, &self.properties);
        out.extend_from_slice(&self.payload);
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let flags = r.u8()?;
        check_flags(flags, RETAIN | QOS_MASK | MSG_EXPIRES)?;
        let qos = qos_of(flags)?;
        let expires_at_ms = if flags & MSG_EXPIRES != 0 {
            Some(r.varint()?)
        } else {
            None
        };
        let topic = r.bytes()?;
        let properties = r.bytes()?;
        let payload = r.rest();
        Ok(MessageRecord {
            topic,
            payload,
            qos,
            retain: flags & RETAIN != 0,
            expires_at_ms,
            properties,
        })
    }
}

impl EntryRecord {
    /// `flags (retain, qos, state), varint msg, [u16 BE packet_id unless Queued],
    /// varint sub_id*` (the ids run to the end).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (state, packet_id) = match self.state {
            EntryState::Queued => (0u8, None),
            EntryState::Sent { packet_id } => (1, Some(packet_id)),
            EntryState::Released { packet_id } => (2, Some(packet_id)),
        };
        out.push(
            qos_bits(self.qos)
                | if self.retain { RETAIN } else { 0 }
                | (state << ENTRY_STATE_SHIFT),
        );
        put_varint(out, self.msg.0);
        if let Some(id) = packet_id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        for id in &self.sub_ids {
            put_varint(out, u64::from(*id));
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let flags = r.u8()?;
        check_flags(flags, RETAIN | QOS_MASK | ENTRY_STATE_MASK)?;
        let qos = qos_of(flags)?;
        let msg = MsgId(r.varint()?);
        let state = match (flags & ENTRY_STATE_MASK) >> ENTRY_STATE_SHIFT {
            0 => EntryState::Queued,
            1 => EntryState::Sent {
                packet_id: r.u16()?,
            },
            2 => EntryState::Released {
                packet_id: r.u16()?,
            },
            _ => return Err(DecodeError::ReservedFlags { flags }),
        };
        // Each id takes at least one byte: the count is bounded by the input.
        let mut sub_ids = Vec::new();
        while r.remaining() > 0 {
            sub_ids.push(r.varint_u32()?);
        }
        Ok(EntryRecord {
            msg,
            qos,
            retain: flags & RETAIN != 0,
            sub_ids,
            state,
        })
    }

    /// The message id alone, for reference counting without decoding the rest.
    pub(crate) fn decode_msg(buf: &[u8]) -> Result<MsgId, DecodeError> {
        let mut r = Reader::new(buf);
        let flags = r.u8()?;
        check_flags(flags, RETAIN | QOS_MASK | ENTRY_STATE_MASK)?;
        Ok(MsgId(r.varint()?))
    }
}

impl AwaitRelRecord {
    /// Empty for no message, else `varint msg`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(msg) = self.msg {
            put_varint(out, msg.0);
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.is_empty() {
            return Ok(AwaitRelRecord { msg: None });
        }
        let mut r = Reader::new(buf);
        let msg = MsgId(r.varint()?);
        r.finish()?;
        Ok(AwaitRelRecord { msg: Some(msg) })
    }
}

/// Encodes into a fresh buffer (the writer reuses one buffer instead).
pub fn to_vec(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_has_one_encoding_per_value() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.remaining(), 0);
        }
        // Overlong zero, 11-byte and overflowing forms are refused.
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        let mut ten = vec![0xff; 9];
        ten.push(0x02);
        assert!(Reader::new(&ten).varint().is_err());
    }

    #[test]
    fn bytes_length_is_checked_before_allocating() {
        // Claims u64::MAX bytes in a 10-byte input.
        let mut buf = Vec::new();
        put_varint(&mut buf, u64::MAX);
        assert!(Reader::new(&buf).bytes().is_err());
    }

    #[test]
    fn entry_msg_alone_matches_full_decode() {
        let e = EntryRecord {
            msg: MsgId(987_654_321),
            qos: 2,
            retain: true,
            sub_ids: vec![1, 268_435_455],
            state: EntryState::Released { packet_id: 65535 },
        };
        let buf = to_vec(|o| e.encode(o));
        assert_eq!(EntryRecord::decode_msg(&buf), Ok(e.msg));
        assert_eq!(EntryRecord::decode(&buf), Ok(e));
    }
}
