//! Access control lists in mosquitto's `acl_file` format, and the decisions the broker asks
//! of them.
//!
//! Owns: parsing the file and answering `may_subscribe`, `may_read` and `may_publish` for a
//! client (its client id and user name). The format, one directive per line:
//!
//! ```text
//! # comment (first non-blank character '#'); blank lines are ignored
//! topic [read|write|readwrite|deny] FILTER     # readwrite when the access is left out
//! user NAME                                    # the `topic` lines below are NAME's
//! pattern [read|write|readwrite|deny] FILTER   # every client; %c = client id, %u = user name
//! ```
//!
//! `topic` lines before the first `user` line are for clients without a user name; `pattern`
//! lines apply to every client wherever they stand; a `user` may appear more than once (its
//! rules add up). FILTER is the rest of the line (spaces kept inside) and follows the
//! wildcard rules of a subscription filter.
//!
//! Semantics: once an ACL is configured, whatever no rule grants is refused; a matching
//! `deny` wins over any grant. `+` and `#` in the first level do not match `$` topics, so
//! `$SYS/...` is readable only where a rule names it (e.g. `topic read $SYS/#`).
//! A subscription is allowed only when every topic it can match is readable: some read rule
//! covers the whole filter and no deny rule overlaps it. (mosquitto's default ACL accepts
//! every subscription and filters each delivery instead; RingMQ refuses up front, and
//! `may_read` still filters deliveries and retained messages for rules that changed since.)
//!
//! `%c`/`%u` never widen a pattern: a client id or user name holding `/`, `+` or `#` would add
//! levels or wildcards, so a granting pattern that uses it never matches, and a `deny`
//! pattern that uses it matches everything (fail closed). A pattern with `%u` does not apply
//! to a client without a user name (as in mosquitto). Other `%` sequences are literal.
//! Differences from mosquitto's parser, all towards refusing: an access word without a
//! filter (`topic read`) is an error, not a rule for the topic `read`; tabs separate words.
//!
//! Must never: allocate per decision (the broker asks per message for `may_read`), or give
//! an error that hides which line is wrong.

mod filter;

use std::collections::HashMap;

pub use filter::FilterError;
use filter::{AclFilter, Subst};

use crate::router::{TopicFilter, TopicName};

/// What a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// Neither, and wins over grants.
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn grants(self, want: Want) -> bool {
        matches!(
            (self, want),
            (Access::Read | Access::ReadWrite, Want::Read)
                | (Access::Write | Access::ReadWrite, Want::Write)
        )
    }
}

/// How much of a subscription filter a client may read (`Acl::subscribe_access`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeAccess {
    /// Every topic the filter can match: deliveries need no check.
    Full,
    /// Some topics: granted, and each delivery is checked with `may_read`.
    Partial,
    /// No topic (or a deny rule takes the whole filter): SUBACK 0x87 / 3.x 0x80.
    Denied,
}

/// What a client asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

/// What is asked about: a topic name (read, publish) or a subscription filter.
#[derive(Clone, Copy, Debug)]
enum Query<'a> {
    Topic(&'a [u8]),
    Filter(&'a [u8]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: AclFilter,
}

/// Why a line of an ACL file is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AclLineError {
    #[error("unknown directive (expected topic, pattern or user)")]
    UnknownDirective,
    #[error("user without a name")]
    MissingUser,
    #[error("no topic filter")]
    MissingFilter,
    #[error("access must be read, write, readwrite or deny")]
    BadAccess,
    #[error(transparent)]
    BadFilter(#[from] FilterError),
}

/// An ACL file that could not be loaded: the 1-based line and the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AclError {
    pub line: usize,
    pub reason: AclLineError,
}

/// Who asks: the values `%c` and `%u` stand for and the user whose rules apply. Cheap to
/// make (one scan of each string, no allocation); the broker may make one per decision.
#[derive(Clone, Copy, Debug)]
pub struct AclSubject<'a> {
    client_id: &'a str,
    username: Option<&'a str>,
    /// Neither holds `/`, `+` or `#` (module doc).
    client_id_safe: bool,
    username_safe: bool,
}

/// Whether a value may be substituted into a pattern level.
fn substitutable(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, b'/' | b'+' | b'#'))
}

impl<'a> AclSubject<'a> {
    pub fn new(client_id: &'a str, username: Option<&'a str>) -> AclSubject<'a> {
        AclSubject {
            client_id,
            username,
            client_id_safe: substitutable(client_id),
            username_safe: username.is_some_and(substitutable),
        }
    }
}

/// Whether a rule applies to a subject, and with which substitution.
enum Applies<'a> {
    No,
    Yes(Subst<'a>),
    /// A deny pattern whose placeholder value is unsafe: it matches everything.
    Everything,
}

impl Rule {
    fn applies<'a>(&self, who: &AclSubject<'a>) -> Applies<'a> {
        let f = &self.filter;
        if f.uses_username && who.username.is_none() {
            return Applies::No;
        }
        let unsafe_value =
            (f.uses_username && !who.username_safe) || (f.uses_client_id && !who.client_id_safe);
        match (unsafe_value, self.access) {
            (true, Access::Deny) => Applies::Everything,
            (true, _) => Applies::No,
            (false, _) => Applies::Yes(Subst {
                client_id: who.client_id,
                username: who.username.unwrap_or(""),
            }),
        }
    }
}

/// A loaded ACL file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// `topic` rules before the first `user` line: clients without a user name.
    anonymous: Vec<Rule>,
    /// `topic` rules per user name. std's SipHash: the names come from clients.
    users: HashMap<Box<str>, Vec<Rule>>,
    /// `pattern` rules, for every client.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parses a whole file.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<Box<str>> = None;
        for (i, line) in text.lines().enumerate() {
            let err = |reason| AclError {
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = split_word(line);
            match word {
                "user" if rest.is_empty() => return Err(err(AclLineError::MissingUser)),
                "user" => {
                    user = Some(rest.into());
                    acl.users.entry(rest.into()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest, word == "pattern").map_err(err)?;
                    let list = match (word, &user) {
                        ("pattern", _) => &mut acl.patterns,
                        (_, None) => &mut acl.anonymous,
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default(),
                    };
                    list.push(rule);
                }
                _ => return Err(err(AclLineError::UnknownDirective)),
            }
        }
        Ok(acl)
    }

    /// Whether `who` may subscribe to `filter` (for `$share/{group}/f`, to `f`): every topic
    /// the filter can match must be readable.
    pub fn may_subscribe(&self, who: &AclSubject<'_>, filter: &TopicFilter) -> bool {
        self.decide(who, Want::Read, Query::Filter(filter.filter_bytes()))
    }

    /// How much of `filter` (for `$share/{group}/f`, of `f`) `who` may read: all of it
    /// (`may_subscribe`), some of it (a read rule intersects the filter and no deny rule
    /// takes all of it: deliveries must then be checked with `may_read`), or nothing.
    pub fn subscribe_access(&self, who: &AclSubject<'_>, filter: &TopicFilter) -> SubscribeAccess {
        let f = filter.filter_bytes();
        if self.decide(who, Want::Read, Query::Filter(f)) {
            return SubscribeAccess::Full;
        }
        let rules = || self.rules_for(who).chain(&self.patterns);
        let denied_whole =
            rules()
                .filter(|r| r.access == Access::Deny)
                .any(|rule| match rule.applies(who) {
                    Applies::No => false,
                    Applies::Everything => true,
                    Applies::Yes(s) => rule.filter.covers(f, s),
                });
        if denied_whole {
            return SubscribeAccess::Denied;
        }
        let some_grant =
            rules()
                .filter(|r| r.access.grants(Want::Read))
                .any(|rule| match rule.applies(who) {
                    Applies::Yes(s) => rule.filter.intersects(f, s),
                    Applies::No | Applies::Everything => false,
                });
        if some_grant {
            SubscribeAccess::Partial
        } else {
            SubscribeAccess::Denied
        }
    }

    /// Whether a message on `topic` may be delivered to `who` (wildcard subscriptions,
    /// retained messages).
    pub fn may_read(&self, who: &AclSubject<'_>, topic: &TopicName) -> bool {
        self.decide(who, Want::Read, Query::Topic(topic.as_bytes()))
    }

    /// Whether `who` may publish on `topic` (also for a will).
    pub fn may_publish(&self, who: &AclSubject<'_>, topic: &TopicName) -> bool {
        self.decide(who, Want::Write, Query::Topic(topic.as_bytes()))
    }

    /// Whether some pattern uses `%c`.
    pub fn uses_client_id(&self) -> bool {
        self.patterns.iter().any(|r| r.filter.uses_client_id)
    }

    /// Deny first (a deny that matches the topic, or overlaps the filter, refuses), then any
    /// grant (that matches the topic, or covers the whole filter).
    fn decide(&self, who: &AclSubject<'_>, want: Want, query: Query<'_>) -> bool {
        let rules = || self.rules_for(who).chain(&self.patterns);
        for rule in rules().filter(|r| r.access == Access::Deny) {
            let hit = match rule.applies(who) {
                Applies::No => false,
                Applies::Everything => true,
                Applies::Yes(s) => match query {
                    Query::Topic(t) => rule.filter.matches(t, s),
                    Query::Filter(f) => rule.filter.intersects(f, s),
                },
            };
            if hit {
                return false;
            }
        }
        rules()
            .filter(|r| r.access.grants(want))
            .any(|rule| match rule.applies(who) {
                Applies::Yes(s) => match query {
                    Query::Topic(t) => rule.filter.matches(t, s),
                    Query::Filter(f) => rule.filter.covers(f, s),
                },
                Applies::No | Applies::Everything => false,
            })
    }
}

impl Acl {
    /// The `topic` rules of `who`: its user's, or the anonymous ones.
    fn rules_for(&self, who: &AclSubject<'_>) -> std::slice::Iter<'_, Rule> {
        let own: &[Rule] = match who.username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        own.iter()
    }
}

/// The first word and the trimmed rest of a line (words split on ASCII blanks).
fn split_word(line: &str) -> (&str, &str) {
    match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((w, rest)) => (w, rest.trim()),
        None => (line, ""),
    }
}

/// `[ACCESS] FILTER`: with one word it is the filter (readwrite), as in mosquitto.
fn parse_rule(rest: &str, pattern: bool) -> Result<Rule, AclLineError> {
    if rest.is_empty() {
        return Err(AclLineError::MissingFilter);
    }
    let (first, tail) = split_word(rest);
    let (access, filter) = if tail.is_empty() {
        if Access::parse(first).is_some() {
            return Err(AclLineError::MissingFilter);
        }
        (Access::ReadWrite, first)
    } else {
        (Access::parse(first).ok_or(AclLineError::BadAccess)?, tail)
    };
    Ok(Rule {
        access,
        filter: AclFilter::parse(filter, pattern)?,
    })
}

#[cfg(test)]
mod tests;
