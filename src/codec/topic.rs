//! `TopicName` and `TopicFilter`: validated newtypes and the matching rules of spec 4.7.
//! A leaf of the codec (it needs only `MqttStr`): the codec decodes into these types and the
//! router (`crate::router::topic` re-exports this module) matches them, so neither depends
//! on the other's internals.
//!
//! Owns the wire rules for topic names and filters (4.7.1, 4.7.3), the shared-subscription
//! syntax `$share/{group}/{filter}` (4.8.2) and topic matching (4.7.2). Broker limits (depth,
//! length below the wire maximum) are settings checked by the caller with `level_count()` and
//! `len()`.
//!
//! Must never: recurse over levels (a topic may have 32k levels, bad input #38), panic on
//! input, or hold a value that breaks the rules checked by the constructors.

use std::fmt;

use bytes::Bytes;

use super::MqttStr;

/// The longest topic name or filter the wire can carry: a two-byte length prefix [MQTT-1.5.4].
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Prefix of a shared subscription [MQTT-4.8.2].
const SHARE_PREFIX: &[u8] = b"$share/";

/// Why a topic name or filter is invalid.
///
/// Callers map these to reason codes: 0x90 Topic Name invalid for names, 0x8F Topic Filter
/// invalid for filters (0x9E Shared Subscriptions not supported is never produced here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    /// Zero-length name or filter [MQTT-4.7.3-1].
    Empty,
    /// Not a well-formed MQTT string: ill-formed UTF-8 [MQTT-1.5.4-1] or U+0000
    /// [MQTT-1.5.4-2].
    InvalidUtf8,
    /// A topic name holds `+` or `#` [MQTT-3.3.2-2].
    Wildcard,
    /// A filter has `#` not alone or not last [MQTT-4.7.1-2], or `+` not alone in its level
    /// [MQTT-4.7.1-3].
    BadWildcardPlacement,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong,
    /// `$share/...` with an empty or wildcard group, or no filter part [MQTT-4.8.2].
    BadSharedSubscription,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TopicError::Empty => "empty topic",
            TopicError::InvalidUtf8 => "topic is not a valid MQTT UTF-8 string",
            TopicError::Wildcard => "wildcard in topic name",
            TopicError::BadWildcardPlacement => "wildcard not alone in its level or # not last",
            TopicError::TooLong => "topic longer than 65535 bytes",
            TopicError::BadSharedSubscription => "malformed shared subscription",
        };
        f.write_str(s)
    }
}

impl std::error::Error for TopicError {}

/// Checks the rules common to names and filters: length, UTF-8, no U+0000.
fn check_string(bytes: &[u8]) -> Result<(), TopicError> {
    check_len(bytes)?;
    if std::str::from_utf8(bytes).is_err() || bytes.contains(&0) {
        return Err(TopicError::InvalidUtf8);
    }
    Ok(())
}

/// The length rules alone, for strings whose UTF-8 an `MqttStr` already vouches for.
fn check_len(bytes: &[u8]) -> Result<(), TopicError> {
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    if bytes.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    Ok(())
}

/// A topic name: a valid MQTT string without wildcards, 1..=65535 bytes.
///
/// `TopicName::default()` is the empty name. It exists only for an inbound v5 PUBLISH that
/// carries a Topic Alias and no name [MQTT-3.3.2-... 3.3.4]; the session replaces it with the
/// aliased name before routing. `new` never returns it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(Bytes);

impl TopicName {
    /// Validates `bytes` as a topic name [MQTT-4.7.3-1], [MQTT-3.3.2-2].
    pub fn new(bytes: Bytes) -> Result<TopicName, TopicError> {
        check_string(&bytes)?;
        TopicName::without_wildcards(bytes)
    }

    /// A name from a string the codec already validated (well-formed UTF-8, no U+0000):
    /// the decoder's path, which would otherwise check the same bytes twice.
    pub fn from_mqtt_str(s: MqttStr) -> Result<TopicName, TopicError> {
        let bytes = s.into_bytes();
        check_len(&bytes)?;
        TopicName::without_wildcards(bytes)
    }

    fn without_wildcards(bytes: Bytes) -> Result<TopicName, TopicError> {
        if bytes.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::Wildcard); // [MQTT-3.3.2-2]
        }
        Ok(TopicName(bytes))
    }

    /// A name from a literal, for tests and `$SYS` constants.
    ///
    /// # Panics
    /// If `s` is not a valid topic name: a bug in the literal, never input.
    pub fn from_static(s: &'static str) -> TopicName {
        match TopicName::new(Bytes::from_static(s.as_bytes())) {
            Ok(t) => t,
            Err(e) => panic!("invalid static topic name {s:?}: {e}"),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name; valid UTF-8 by construction, so the fallback is unreachable.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The shared buffer, to hand out without copying.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True only for the alias-only placeholder (`default()`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The levels, split on `/`; empty levels are levels (`a//b` has three).
    pub fn levels(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.0.split(|&b| b == b'/')
    }

    /// Number of levels: separators + 1 (the empty placeholder counts as one level).
    pub fn level_count(&self) -> usize {
        count_levels(&self.0)
    }

    /// Starts with `$`: wildcards at the first level never match it [MQTT-4.7.2-1].
    pub fn is_dollar(&self) -> bool {
        self.0.first() == Some(&b'$')
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({:?})", self.as_str())
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn count_levels(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'/').count() + 1
}

/// A topic filter, possibly a shared subscription `$share/{group}/{filter}`.
///
/// Invariant: `self.0[self.filter_start..]` is a valid non-shared filter, and when
/// `filter_start > 0` the bytes before it are `$share/{group}/` with a valid group.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    bytes: Bytes,
    /// Offset of the matched part: 0 for a plain filter, `len("$share/{group}/")` for a
    /// shared one. At most `MAX_TOPIC_LEN`, so it fits in `u32`.
    filter_start: u32,
}

impl TopicFilter {
    /// Validates `bytes` as a filter [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1], and as a
    /// shared subscription when it starts with `$share/` [MQTT-4.8.2].
    pub fn new(bytes: Bytes) -> Result<TopicFilter, TopicError> {
        check_string(&bytes)?;
        TopicFilter::checked_string(bytes)
    }

    /// A filter from a string the codec already validated (see `TopicName::from_mqtt_str`).
    pub fn from_mqtt_str(s: MqttStr) -> Result<TopicFilter, TopicError> {
        let bytes = s.into_bytes();
        check_len(&bytes)?;
        TopicFilter::checked_string(bytes)
    }

    /// The filter rules, once the string rules hold.
    fn checked_string(bytes: Bytes) -> Result<TopicFilter, TopicError> {
        let filter_start = match bytes.strip_prefix(SHARE_PREFIX) {
            None => 0,
            Some(rest) => {
                // `$share/{group}/{filter}`: the group ends at the next `/`, which must exist.
                let group_len = rest
                    .iter()
                    .position(|&b| b == b'/')
                    .ok_or(TopicError::BadSharedSubscription)?;
                let group = &rest[..group_len];
                if group.is_empty() || group.iter().any(|&b| b == b'+' || b == b'#') {
                    return Err(TopicError::BadSharedSubscription);
                }
                if rest.len() == group_len + 1 {
                    return Err(TopicError::BadSharedSubscription);
                }
                SHARE_PREFIX.len() + group_len + 1
            }
        };
        check_filter_levels(&bytes[filter_start..])?;
        // `filter_start < bytes.len() <= MAX_TOPIC_LEN`, so the conversion cannot fail.
        let filter_start = u32::try_from(filter_start).map_err(|_| TopicError::TooLong)?;
        Ok(TopicFilter {
            bytes,
            filter_start,
        })
    }

    /// A filter from a literal, for tests and constants.
    ///
    /// # Panics
    /// If `s` is not a valid filter: a bug in the literal, never input.
    pub fn from_static(s: &'static str) -> TopicFilter {
        match TopicFilter::new(Bytes::from_static(s.as_bytes())) {
            Ok(t) => t,
            Err(e) => panic!("invalid static topic filter {s:?}: {e}"),
        }
    }

    /// The whole filter as on the wire, `$share/{group}/` included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole filter; valid UTF-8 by construction, so the fallback is unreachable.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap_or("")
    }

    pub fn as_shared(&self) -> &Bytes {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: `new` rejects empty filters. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The share group name of a `$share/{group}/{filter}` subscription.
    pub fn share_group(&self) -> Option<&[u8]> {
        if self.filter_start == 0 {
            return None;
        }
        // The group sits between the prefix and the `/` before `filter_start`.
        self.bytes
            .get(SHARE_PREFIX.len()..self.filter_start as usize - 1)
    }

    pub fn is_shared(&self) -> bool {
        self.filter_start != 0
    }

    /// The part that is matched against topic names, without `$share/{group}/`.
    pub fn filter_bytes(&self) -> &[u8] {
        &self.bytes[self.filter_start as usize..]
    }

    /// The matched part as a shared buffer (a cheap slice of the same allocation).
    pub fn filter_shared(&self) -> Bytes {
        self.bytes.slice(self.filter_start as usize..)
    }

    /// Levels of the matched part.
    pub fn levels(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.filter_bytes().split(|&b| b == b'/')
    }

    /// Number of levels of the matched part.
    pub fn level_count(&self) -> usize {
        count_levels(self.filter_bytes())
    }

    /// Whether the matched part holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter_bytes().iter().any(|&b| b == b'+' || b == b'#')
    }

    /// Whether this filter matches `topic` [MQTT-4.7].
    pub fn matches(&self, topic: &TopicName) -> bool {
        topic_matches(self.filter_bytes(), topic.as_bytes())
    }
}

/// Checks wildcard placement of a non-shared filter (non-empty, UTF-8 already checked).
fn check_filter_levels(filter: &[u8]) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::BadSharedSubscription);
    }
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let has_hash = level.contains(&b'#');
        let has_plus = level.contains(&b'+');
        if has_hash && (level.len() != 1 || levels.peek().is_some()) {
            return Err(TopicError::BadWildcardPlacement);
        }
        if has_plus && level.len() != 1 {
            return Err(TopicError::BadWildcardPlacement);
        }
    }
    Ok(())
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", self.as_str())
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the (non-shared) filter `filter` matches the topic name `topic` [MQTT-4.7].
///
/// Both are assumed valid (a `TopicFilter::filter_bytes()` and a `TopicName`); on other input
/// the answer is unspecified but there is no panic. Iterative, O(len).
pub fn topic_matches(filter: &[u8], topic: &[u8]) -> bool {
    // Wildcards at the first level never match a `$` topic [MQTT-4.7.2-1].
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|&b| b == b'/');
    let mut t = topic.split(|&b| b == b'/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches the parent level and any number of children [MQTT-4.7.1-2].
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<TopicName, TopicError> {
        TopicName::new(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn filter(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn topic_name_validation() {
        use TopicError::*;
        let cases: &[(&[u8], Result<(), TopicError>)] = &[
            (b"a", Ok(())),
            (b"/", Ok(())),
            (b"a//b", Ok(())),
            (b"$SYS/broker", Ok(())),
            (b"$share/g/x", Ok(())),
            (b" ", Ok(())),
            ("caf\u{e9}/\u{1F600}".as_bytes(), Ok(())),
            (b"", Err(Empty)),
            (b"a/+", Err(Wildcard)),
            (b"a/#", Err(Wildcard)),
            (b"+", Err(Wildcard)),
            (b"top#ic", Err(Wildcard)),
            (b"a\0b", Err(InvalidUtf8)),
            (b"\xff\xfe", Err(InvalidUtf8)),
            (b"\xed\xa0\x80", Err(InvalidUtf8)), // UTF-16 surrogate [MQTT-1.5.4-1]
        ];
        for (input, want) in cases {
            let got = TopicName::new(Bytes::copy_from_slice(input)).map(|_| ());
            assert_eq!(got, *want, "name {:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(name(&"a".repeat(65_535)).map(|t| t.len()), Ok(65_535));
        assert_eq!(name(&"a".repeat(65_536)), Err(TooLong));
    }

    #[test]
    fn topic_name_accessors() {
        let t = TopicName::from_static("$SYS/a//b");
        assert!(t.is_dollar());
        assert_eq!(t.level_count(), 4);
        let levels: Vec<&[u8]> = t.levels().collect();
        assert_eq!(levels, [&b"$SYS"[..], b"a", b"", b"b"]);
        assert_eq!(t.as_str(), "$SYS/a//b");
        assert_eq!(t.as_shared().as_ref(), b"$SYS/a//b");
        assert!(!TopicName::from_static("a$").is_dollar());
        let empty = TopicName::default();
        assert!(empty.is_empty());
        assert_eq!(empty.level_count(), 1);
    }

    #[test]
    fn deep_topic_is_not_recursive() {
        // bad input #38: 10,000 levels must not blow the stack.
        let deep = "a/".repeat(10_000) + "a";
        let t = name(&deep).expect("valid deep topic");
        assert_eq!(t.level_count(), 10_001);
        let f = filter(&("+/".repeat(10_000) + "#")).expect("valid deep filter");
        assert!(f.matches(&t));
        assert!(topic_matches(deep.as_bytes(), deep.as_bytes()));
    }

    #[test]
    fn topic_filter_validation() {
        use TopicError::*;
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("#", Ok(())),
            ("+", Ok(())),
            ("/", Ok(())),
            ("/#", Ok(())),
            ("+/+", Ok(())),
            ("a/+/b/#", Ok(())),
            ("sport/tennis/player1/#", Ok(())),
            ("$SYS/#", Ok(())),
            ("$share", Ok(())), // not a shared subscription: no `/` after `$share`
            ("$shared/g/x", Ok(())),
            ("$share/g/#", Ok(())),
            ("$share/g/a/+/c", Ok(())),
            ("", Err(Empty)),
            ("a/#/b", Err(BadWildcardPlacement)),
            ("a#", Err(BadWildcardPlacement)),
            ("#/", Err(BadWildcardPlacement)),
            ("a/b#", Err(BadWildcardPlacement)),
            ("sport+", Err(BadWildcardPlacement)),
            ("a/+b", Err(BadWildcardPlacement)),
            ("++", Err(BadWildcardPlacement)),
            ("a\0", Err(InvalidUtf8)),
            ("$share/", Err(BadSharedSubscription)),
            ("$share/p", Err(BadSharedSubscription)),
            ("$share/p/", Err(BadSharedSubscription)), // bad input #57
            ("$share//x", Err(BadSharedSubscription)),
            ("$share/+/x", Err(BadSharedSubscription)),
            ("$share/#/x", Err(BadSharedSubscription)),
            ("$share/g+/x", Err(BadSharedSubscription)),
            ("$share/g/a#", Err(BadWildcardPlacement)),
        ];
        for (input, want) in cases {
            assert_eq!(filter(input).map(|_| ()), *want, "filter {input:?}");
        }
        assert_eq!(
            TopicFilter::new(Bytes::from_static(b"\xc3")),
            Err(InvalidUtf8)
        );
        assert_eq!(filter(&"a".repeat(65_536)), Err(TooLong));
    }

    #[test]
    fn shared_filter_parts() {
        let f = TopicFilter::from_static("$share/consumers/sport/+/#");
        assert_eq!(f.share_group(), Some(&b"consumers"[..]));
        assert_eq!(f.filter_bytes(), b"sport/+/#");
        assert_eq!(f.filter_shared().as_ref(), b"sport/+/#");
        assert_eq!(f.as_bytes(), b"$share/consumers/sport/+/#");
        assert!(f.is_shared() && f.has_wildcards());
        assert_eq!(f.level_count(), 3);
        assert!(f.matches(&TopicName::from_static("sport/tennis/x")));
        assert!(!f.matches(&TopicName::from_static("$share/consumers/sport/tennis")));

        let plain = TopicFilter::from_static("a/b");
        assert_eq!(plain.share_group(), None);
        assert_eq!(plain.filter_bytes(), b"a/b");
        assert!(!plain.has_wildcards() && !plain.is_shared());
        // A shared filter whose filter part is a `$` topic.
        let sys = TopicFilter::from_static("$share/g/$SYS/#");
        assert!(sys.matches(&TopicName::from_static("$SYS/x")));
        // `$share/g/$share/h/x`: only the first `$share/g/` is the prefix.
        let nested = TopicFilter::from_static("$share/g/$share/h/x");
        assert_eq!(nested.share_group(), Some(&b"g"[..]));
        assert_eq!(nested.filter_bytes(), b"$share/h/x");
    }

    /// (filter, topic, matches): spec 4.7 examples and edge cases.
    const MATCH_CASES: &[(&str, &str, bool)] = &[
        // 4.7.1.2 multi-level wildcard examples.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sports", false),
        // 4.7.1.3 single-level wildcard examples.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/+", "a/", true),
        ("+/+", "a", false),
        ("+/+", "a/b/c", false),
        ("+", "a", true),
        ("+", "", true), // `+` matches an empty level (empty topic only reachable in tests)
        // `#` alone and `/#`.
        ("#", "a", true),
        ("#", "a/b/c", true),
        ("#", "/", true),
        ("/#", "/", true),
        ("/#", "/a", true),
        ("/#", "a", false),
        ("/#", "", true), // `/#` matches its parent level "" too
        // `a/#` versus `a`, `a/`, and empty levels.
        ("a/#", "a", true),
        ("a/#", "a/", true),
        ("a/#", "ab", false),
        ("a/+", "a/", true),
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("a/+/b", "a//b", true),
        ("a/b", "a/b/", false),
        ("a/b/", "a/b/", true),
        ("a/b", "a/b", true),
        ("a/b", "A/b", false),
        // 4.7.2 `$` topics [MQTT-4.7.2-1].
        ("#", "$SYS", false),
        ("#", "$SYS/broker/load", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/#", "$SYSX/a", false),
        ("+", "$SYS", false),
        ("+/#", "$foo/bar", false),
        ("a/#", "a/$SYS", true), // `$` only matters at the first level
        ("+/$x", "a/$x", true),
        ("$share/g/x", "$share/g/x", true), // the filter *part* of a share; literal here
        ("x/y", "$share/g/x/y", false),
    ];

    #[test]
    fn matching_table() {
        assert!(MATCH_CASES.len() >= 40);
        for &(f, t, want) in MATCH_CASES {
            assert_eq!(
                topic_matches(f.as_bytes(), t.as_bytes()),
                want,
                "{f:?} vs {t:?}"
            );
            // Through the newtypes too, where both are constructible.
            if let (Ok(f), Ok(t)) = (filter(f), name(t))
                && !f.is_shared()
            {
                assert_eq!(f.matches(&t), want, "{f:?} vs {t:?}");
            }
        }
    }

    #[test]
    fn shared_forms_match_their_filter_part() {
        let cases = [
            ("$share/g/#", "a/b", true),
            ("$share/g/#", "$SYS/x", false),
            ("$share/g/+/b", "a/b", true),
            ("$share/g/a", "$share/g/a", false),
            ("$share/g/a", "a", true),
        ];
        for (f, t, want) in cases {
            let f = filter(f).expect("valid");
            let t = name(t).expect("valid");
            assert_eq!(f.matches(&t), want, "{f:?} vs {t:?}");
        }
    }
}
