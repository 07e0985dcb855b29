//! Bounded reading of packet fields: integers, variable byte integers, length-prefixed
//! binary data and strings.
//!
//! Owns: the only code that advances through a packet body. A `Reader` never reads past its
//! end: a length prefix becomes a bounded sub-reader (`sub`), a short field is
//! `UnexpectedEof`, and leftover bytes are `TrailingBytes` (`finish`). Fields come out as
//! zero-copy `Bytes` views of the packet.
//!
//! Must never: panic, allocate a buffer sized by a length read from the wire, or read a
//! variable byte integer past its fourth byte [MQTT-1.5.5-1].

use bytes::{Buf, Bytes};

use super::error::DecodeError;
use super::model::MqttStr;
use super::string::{StringError, validate_str};

/// The largest value a four-byte variable byte integer holds (spec 1.5.5).
pub const VBI_MAX: u32 = 268_435_455;

/// Result of parsing a variable byte integer from the front of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vbi {
    /// The value and the number of bytes it took.
    Complete(u32, usize),
    /// The slice ends before the last byte.
    Incomplete,
    /// The fourth byte has its continuation bit set: a fifth byte would follow, which the
    /// spec forbids [MQTT-1.5.5-1]. Decided without looking at the fifth byte.
    TooLong,
}

/// Parses a variable byte integer (spec 1.5.5). Non-minimal encodings (e.g. `80 00`) are
/// accepted: the minimum-length rule binds senders, and the value is unambiguous.
pub(crate) fn parse_vbi(buf: &[u8]) -> Vbi {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Vbi::Incomplete;
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Vbi::Complete(value, i + 1);
        }
    }
    Vbi::TooLong
}

/// A cursor over the bytes of one packet (or of one length-prefixed part of it).
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.first().ok_or(DecodeError::UnexpectedEof)?;
        self.buf.advance(1);
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let v = match *self.buf {
            [a, b, ..] => u16::from_be_bytes([a, b]),
            _ => return Err(DecodeError::UnexpectedEof),
        };
        self.buf.advance(2);
        Ok(v)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let v = match *self.buf {
            [a, b, c, d, ..] => u32::from_be_bytes([a, b, c, d]),
            _ => return Err(DecodeError::UnexpectedEof),
        };
        self.buf.advance(4);
        Ok(v)
    }

    /// A variable byte integer inside a packet (property length, subscription identifier).
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        match parse_vbi(&self.buf) {
            Vbi::Complete(v, n) => {
                self.buf.advance(n);
                Ok(v)
            }
            Vbi::Incomplete => Err(DecodeError::UnexpectedEof),
            Vbi::TooLong => Err(DecodeError::VariableByteIntegerTooLong),
        }
    }

    /// The next `n` bytes as a zero-copy view; `n` is checked against what is left before
    /// anything is taken.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEof);
        }
        Ok(self.buf.split_to(n))
    }

    /// A bounded sub-reader over the next `n` bytes (a length-prefixed block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.take(n).map(Reader::new)
    }

    /// Binary Data (spec 1.5.6): two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// UTF-8 Encoded String (spec 1.5.4), validated by `string::validate_str`.
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary()?;
        validate_str(&bytes).map_err(DecodeError::from)?;
        Ok(MqttStr::from_validated(bytes))
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Ends reading: bytes after the last field are an error (the packet is longer than its
    /// fields, bad input #6).
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

impl From<StringError> for DecodeError {
    fn from(e: StringError) -> DecodeError {
        match e {
            StringError::InvalidUtf8 => DecodeError::InvalidUtf8,
            StringError::ForbiddenCodePoint => DecodeError::ForbiddenCodePoint,
            // A string read from the wire has a two-byte length: this cannot be reached by
            // decoding, but the mapping must still say something.
            StringError::TooLong => DecodeError::UnexpectedEof,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_boundaries_from_the_spec_table() {
        // Spec 1.5.5, table 1-1.
        assert_eq!(parse_vbi(&[0x00]), Vbi::Complete(0, 1));
        assert_eq!(parse_vbi(&[0x7F]), Vbi::Complete(127, 1));
        assert_eq!(parse_vbi(&[0x80, 0x01]), Vbi::Complete(128, 2));
        assert_eq!(parse_vbi(&[0xFF, 0x7F]), Vbi::Complete(16_383, 2));
        assert_eq!(parse_vbi(&[0x80, 0x80, 0x01]), Vbi::Complete(16_384, 3));
        assert_eq!(parse_vbi(&[0xFF, 0xFF, 0x7F]), Vbi::Complete(2_097_151, 3));
        assert_eq!(
            parse_vbi(&[0x80, 0x80, 0x80, 0x01]),
            Vbi::Complete(2_097_152, 4)
        );
        assert_eq!(
            parse_vbi(&[0xFF, 0xFF, 0xFF, 0x7F]),
            Vbi::Complete(VBI_MAX, 4)
        );
    }

    #[test]
    fn vbi_too_long_is_decided_at_the_fourth_byte() {
        assert_eq!(parse_vbi(&[0xFF, 0xFF, 0xFF, 0xFF]), Vbi::TooLong);
        assert_eq!(parse_vbi(&[0x80, 0x80, 0x80]), Vbi::Incomplete);
        assert_eq!(parse_vbi(&[]), Vbi::Incomplete);
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x03, b'a', b'b']));
        assert_eq!(r.remaining(), 4);
        assert_eq!(r.binary(), Err(DecodeError::UnexpectedEof));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, b'a', b'b', 0x01]));
        assert_eq!(r.binary().as_deref(), Ok(&b"ab"[..]));
        assert_eq!(r.u16(), Err(DecodeError::UnexpectedEof));
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes));
    }
}
