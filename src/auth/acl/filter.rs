//! ACL filters: a rule's topic filter, compiled once, with `%c`/`%u` templates, and the three
//! relations the ACL needs between a rule and what a client asks for.
//!
//! Owns: `matches` (a topic name), `covers` (every topic a subscription filter can match is
//! matched by the rule) and `intersects` (some topic is matched by both), all under the
//! rules of spec 4.7: `#` matches the parent level and any children [MQTT-4.7.1-2], `+`
//! exactly one level [MQTT-4.7.1-3], and a wildcard in the first level never matches a
//! topic starting with `$` [MQTT-4.7.2-1], which is what keeps `$SYS/...` unreadable unless
//! a rule names it.
//!
//! Must never: allocate or recurse while matching (the broker calls these per message), or
//! be handed a substitution value holding `/`, `+` or `#` (the caller, `Acl`, checks; such a
//! value would add levels or wildcards to the rule).

use std::fmt;

/// One level of a compiled filter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    /// `+`
    Plus,
    /// `#` (always the last level)
    Hash,
    /// A literal level.
    Exact(Box<str>),
    /// A `pattern` level holding `%c` or `%u`: literal once substituted.
    Template(Box<[Piece]>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    ClientId,
    Username,
}

/// Why a rule's filter is invalid (the rules of a subscription filter, spec 4.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("'#' must be alone in the last level, '+' alone in its level")]
    BadWildcard,
}

/// Values substituted for `%c` and `%u`; neither holds `/`, `+` or `#`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Subst<'a> {
    pub client_id: &'a str,
    /// Empty when the client has no user name; rules using `%u` are then skipped before any
    /// matching, so the empty value is never substituted for an absent name.
    pub username: &'a str,
}

/// A compiled rule filter.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct AclFilter {
    levels: Box<[Level]>,
    pub uses_client_id: bool,
    pub uses_username: bool,
}

impl fmt::Debug for AclFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.levels.iter()).finish()
    }
}

impl AclFilter {
    /// Compiles `text`; `%c` and `%u` are placeholders only when `pattern` (as in mosquitto,
    /// `topic` lines are literal).
    pub fn parse(text: &str, pattern: bool) -> Result<AclFilter, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        let mut levels = Vec::new();
        let mut parts = text.split('/').peekable();
        while let Some(part) = parts.next() {
            let level = match part {
                "#" if parts.peek().is_none() => Level::Hash,
                "+" => Level::Plus,
                p if p.contains(['+', '#']) => return Err(FilterError::BadWildcard),
                p if pattern && (p.contains("%c") || p.contains("%u")) => template(p),
                p => Level::Exact(p.into()),
            };
            levels.push(level);
        }
        let uses = |which: &Piece| {
            levels.iter().any(|l| match l {
                Level::Template(pieces) => pieces.contains(which),
                _ => false,
            })
        };
        Ok(AclFilter {
            uses_client_id: uses(&Piece::ClientId),
            uses_username: uses(&Piece::Username),
            levels: levels.into(),
        })
    }

    /// Whether the rule matches the topic name `topic` (a valid `TopicName`).
    pub fn matches(&self, topic: &[u8], subst: Subst<'_>) -> bool {
        if topic.first() == Some(&b'$') && self.starts_with_wildcard() {
            return false; // [MQTT-4.7.2-1]
        }
        let mut rule = self.levels.iter();
        let mut t = topic.split(|&b| b == b'/');
        loop {
            match (rule.next(), t.next()) {
                (Some(Level::Hash), _) => return true,
                (Some(Level::Plus), Some(_)) => {}
                (Some(l), Some(tl)) => {
                    if !literal_eq(l, tl, subst) {
                        return false;
                    }
                }
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether every topic the subscription filter `filter` (the matched part of a valid
    /// `TopicFilter`) can match is matched by the rule.
    pub fn covers(&self, filter: &[u8], subst: Subst<'_>) -> bool {
        if self.starts_with_wildcard() && first_is_dollar_literal(filter) {
            return false;
        }
        let mut rule = self.levels.iter();
        let mut f = filter.split(|&b| b == b'/');
        loop {
            match (rule.next(), f.next()) {
                (Some(Level::Hash), _) => return true,
                // `+` covers one level of any kind except `#`, which spans many.
                (Some(Level::Plus), Some(fl)) => {
                    if fl == b"#" {
                        return false;
                    }
                }
                (Some(l), Some(fl)) => {
                    if fl == b"+" || fl == b"#" || !literal_eq(l, fl, subst) {
                        return false;
                    }
                }
                (None, None) => return true,
                // The rule is longer (and does not end in `#`), or the filter is.
                _ => return false,
            }
        }
    }

    /// Whether some topic is matched both by the rule and by the subscription filter.
    pub fn intersects(&self, filter: &[u8], subst: Subst<'_>) -> bool {
        let filter_wild = matches!(filter.first(), Some(b'+' | b'#'))
            && matches!(filter.get(1), None | Some(b'/'));
        if (self.starts_with_wildcard() && first_is_dollar_literal(filter))
            || (filter_wild && self.first_is_dollar_literal(subst))
        {
            return false;
        }
        let mut rule = self.levels.iter();
        let mut f = filter.split(|&b| b == b'/');
        loop {
            match (rule.next(), f.next()) {
                (Some(Level::Hash), _) | (_, Some(b"#")) => return true,
                (Some(Level::Plus), Some(_)) | (Some(_), Some(b"+")) => {}
                (Some(l), Some(fl)) => {
                    if !literal_eq(l, fl, subst) {
                        return false;
                    }
                }
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn starts_with_wildcard(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Plus | Level::Hash))
    }

    /// Whether the rule's first level, substituted, is a literal starting with `$`.
    fn first_is_dollar_literal(&self, subst: Subst<'_>) -> bool {
        match self.levels.first() {
            Some(Level::Exact(s)) => s.starts_with('$'),
            Some(Level::Template(pieces)) => pieces
                .iter()
                .map(|p| resolve(p, subst))
                .find(|s| !s.is_empty())
                .is_some_and(|s| s.starts_with('$')),
            _ => false,
        }
    }
}

/// A `pattern` level with placeholders, split into pieces.
fn template(level: &str) -> Level {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        let piece = match rest.get(i + 1..i + 2) {
            Some("c") => Some(Piece::ClientId),
            Some("u") => Some(Piece::Username),
            _ => None,
        };
        match piece {
            Some(p) => {
                text.push_str(&rest[..i]);
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text).into()));
                }
                pieces.push(p);
                rest = &rest[i + 2..];
            }
            // Any other `%` is literal, as in mosquitto.
            None => {
                text.push_str(&rest[..=i]);
                rest = &rest[i + 1..];
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text.into()));
    }
    Level::Template(pieces.into())
}

fn resolve<'a>(piece: &'a Piece, subst: Subst<'a>) -> &'a str {
    match piece {
        Piece::Text(t) => t,
        Piece::ClientId => subst.client_id,
        Piece::Username => subst.username,
    }
}

/// Whether a literal (or template) rule level equals the level `other`, without building
/// the substituted string. Wildcard levels never equal a literal here.
fn literal_eq(level: &Level, other: &[u8], subst: Subst<'_>) -> bool {
    match level {
        Level::Exact(s) => s.as_bytes() == other,
        Level::Template(pieces) => {
            let mut rest = other;
            for p in pieces.iter() {
                let Some(tail) = rest.strip_prefix(resolve(p, subst).as_bytes()) else {
                    return false;
                };
                rest = tail;
            }
            rest.is_empty()
        }
        Level::Plus | Level::Hash => false,
    }
}

/// Whether a subscription filter's first level is a literal starting with `$`.
fn first_is_dollar_literal(filter: &[u8]) -> bool {
    filter.first() == Some(&b'$')
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: Subst<'static> = Subst {
        client_id: "c1",
        username: "u1",
    };

    fn f(s: &str) -> AclFilter {
        AclFilter::parse(s, true).expect(s)
    }

    #[test]
    fn parse_rejects_misplaced_wildcards() {
        for bad in ["a/#/b", "a#", "a/b+", "+a", "#/"] {
            assert_eq!(
                AclFilter::parse(bad, false),
                Err(FilterError::BadWildcard),
                "{bad}"
            );
        }
        assert_eq!(AclFilter::parse("", false), Err(FilterError::Empty));
        for good in ["#", "+", "a/+/#", "/", "a//b", "$SYS/#", "100%", "%x/%"] {
            assert!(AclFilter::parse(good, true).is_ok(), "{good}");
        }
        let p = f("dev/%u-%c/x%cy/%%u");
        assert!(p.uses_client_id && p.uses_username);
        let t = AclFilter::parse("dev/%u", false).expect("topic");
        assert!(!t.uses_username, "topic lines are literal");
    }

    #[test]
    fn matching_follows_the_spec() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/load", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (rule, topic, want) in cases {
            assert_eq!(
                f(rule).matches(topic.as_bytes(), NOBODY),
                *want,
                "{rule} {topic}"
            );
        }
    }

    #[test]
    fn templates_substitute_per_level_without_allocating() {
        let s = Subst {
            client_id: "dev7",
            username: "ann",
        };
        assert!(f("d/%u/%c/#").matches(b"d/ann/dev7/x", s));
        assert!(!f("d/%u/%c/#").matches(b"d/bob/dev7/x", s));
        assert!(f("d/pre-%u-%c").matches(b"d/pre-ann-dev7", s));
        assert!(!f("d/pre-%u-%c").matches(b"d/pre-ann-dev7x", s));
        assert!(!f("d/pre-%u-%c").matches(b"d/pre-ann-dev", s));
        assert!(f("%u/+").matches(b"ann/x", s));
        let empty = Subst {
            client_id: "c",
            username: "",
        };
        assert!(f("d/%u/x").matches(b"d//x", empty));
    }

    #[test]
    fn covers_means_every_matched_topic_is_matched() {
        let cases: &[(&str, &str, bool)] = &[
            ("#", "#", true),
            ("#", "a/+/#", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/#", true),
            ("$SYS/#", "$SYS/broker/+", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "a/b/+/#", true),
            ("a/#", "#", false),
            ("a/#", "+/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/+/#", "a/#", false),
            ("a/b", "a/b", true),
            ("a/b", "a/+", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("+", "+", true),
            ("+", "#", false),
        ];
        for (rule, filter, want) in cases {
            assert_eq!(
                f(rule).covers(filter.as_bytes(), NOBODY),
                *want,
                "{rule} {filter}"
            );
        }
    }

    #[test]
    fn intersects_means_some_topic_is_matched_by_both() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "#", true),
            ("a/b", "+/b", true),
            ("a/b", "+/c", false),
            ("a/#", "a", true),
            ("a", "a/#", true),
            ("a", "a/+", false),
            ("a/+", "+/b", true),
            ("a/+/c", "a/b", false),
            ("$SYS/#", "#", false),
            ("$SYS/x", "+/x", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/+", true),
            ("+", "+", true),
            ("secret/#", "secret", true),
        ];
        for (rule, filter, want) in cases {
            assert_eq!(
                f(rule).intersects(filter.as_bytes(), NOBODY),
                *want,
                "{rule} {filter}"
            );
        }
        let dollar_user = Subst {
            client_id: "c",
            username: "$admin",
        };
        assert!(!f("%u/#").intersects(b"#", dollar_user));
        assert!(f("%u/#").intersects(b"$admin/x", dollar_user));
    }
}
