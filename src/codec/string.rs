//! MQTT UTF-8 string rules (spec 1.5.4), applied once, at the edge, to every string field.
//!
//! Owns: the decision whether a byte sequence may become an `MqttStr`. Must never: allocate,
//! or accept bytes that a later layer would have to re-check.
//!
//! Rules, by clause:
//! - [MQTT-1.5.4-1] well-formed UTF-8; no encodings of U+D800..U+DFFF (UTF-8 decoding already
//!   rejects encoded surrogates and overlong forms): Malformed Packet.
//! - [MQTT-1.5.4-2] no U+0000: Malformed Packet.
//! - 1.5.4 (non-normative "SHOULD NOT ... MAY treat it as a Malformed Packet"): the control
//!   characters U+0001..U+001F and U+007F..U+009F and the Unicode non-characters (U+FDD0..U+FDEF
//!   and U+nFFFE/U+nFFFF of every plane). RingMQ takes the MAY: it rejects them in every string
//!   (client id, username, topics, property strings) so that no log, ACL substitution or
//!   subscriber ever sees them (bad input #18).
//! - [MQTT-1.5.4-3] a BOM (U+FEFF) is kept as is, never stripped: it is not rejected here.
//! - 1.5.4: at most 65,535 bytes (the length prefix is two bytes).

/// Why bytes are not a valid MQTT string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringError {
    /// Not well-formed UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// U+0000 [MQTT-1.5.4-2], a control character or a non-character (1.5.4).
    ForbiddenCodePoint,
    /// Longer than 65,535 bytes; only reachable through `MqttStr::try_from_str`.
    TooLong,
}

/// Checks bytes against the MQTT string rules.
pub fn validate_str(bytes: &[u8]) -> Result<(), StringError> {
    if bytes.len() > usize::from(u16::MAX) {
        return Err(StringError::TooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)?;
    // Fast path for the common all-ASCII case: only C0 controls (with NUL) and DEL are out.
    if s.is_ascii() {
        return if bytes.iter().all(|&b| (0x20..0x7F).contains(&b)) {
            Ok(())
        } else {
            Err(StringError::ForbiddenCodePoint)
        };
    }
    if s.chars().any(is_forbidden) {
        return Err(StringError::ForbiddenCodePoint);
    }
    Ok(())
}

/// U+0000, the C0/C1 control characters and DEL, and the Unicode non-characters.
fn is_forbidden(c: char) -> bool {
    let v = u32::from(c);
    v <= 0x1F
        || (0x7F..=0x9F).contains(&v)
        || (0xFDD0..=0xFDEF).contains(&v)
        || (v & 0xFFFE) == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_multibyte_text() {
        assert_eq!(validate_str(b""), Ok(()));
        assert_eq!(validate_str(b"sensors/temp 1"), Ok(()));
        assert_eq!(
            validate_str("caf\u{e9}/\u{6c34}/\u{1F600}".as_bytes()),
            Ok(())
        );
        // A BOM is kept, not rejected [MQTT-1.5.4-3].
        assert_eq!(validate_str(&[0xEF, 0xBB, 0xBF, b'a']), Ok(()));
    }

    #[test]
    fn rejects_null_and_controls() {
        for b in [0x00u8, 0x01, 0x09, 0x0A, 0x1F, 0x7F] {
            assert_eq!(
                validate_str(&[b'a', b]),
                Err(StringError::ForbiddenCodePoint),
                "{b:#x}"
            );
        }
        // U+0080 and U+009F (C1), U+FFFF, U+FFFE, U+FDD0, U+1FFFF.
        for s in [
            "\u{80}",
            "\u{9F}",
            "\u{FFFF}",
            "\u{FFFE}",
            "\u{FDD0}",
            "\u{1FFFF}",
        ] {
            assert_eq!(
                validate_str(s.as_bytes()),
                Err(StringError::ForbiddenCodePoint),
                "{s:?}"
            );
        }
        assert_eq!(validate_str("\u{A0}".as_bytes()), Ok(()));
    }

    #[test]
    fn rejects_ill_formed_utf8() {
        // Encoded surrogate U+D800, overlong '/', lone continuation byte, truncated sequence.
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0xAF],
            &[0x80],
            &[0xE6, 0xB0],
        ] {
            assert_eq!(validate_str(bad), Err(StringError::InvalidUtf8), "{bad:x?}");
        }
    }

    #[test]
    fn rejects_over_65535_bytes() {
        assert_eq!(validate_str(&[b'a'; 65_535]), Ok(()));
        assert_eq!(validate_str(&[b'a'; 65_536]), Err(StringError::TooLong));
    }
}
