//! MQTT UTF-8 string rules [MQTT-1.5.4-1..3].

/// Why bytes are not a valid MQTT string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringError {
    InvalidUtf8,
    ForbiddenCodePoint,
}

/// Checks bytes against the MQTT string rules.
pub fn validate_str(bytes: &[u8]) -> Result<(), StringError> {
    let s = std::str::from_utf8(bytes).map_err(|_| StringError::InvalidUtf8)?;
    if s.chars().any(|c| c == '\0') {
        return Err(StringError::ForbiddenCodePoint);
    }
    Ok(())
}
