//! ACL tests: the file format, who gets which rules, deny, patterns and their substitution,
//! `$SYS`, and subscription coverage.

use bytes::Bytes;

use super::*;

fn acl(text: &str) -> Acl {
    Acl::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn topic(s: &str) -> TopicName {
    TopicName::new(Bytes::copy_from_slice(s.as_bytes())).expect(s)
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(Bytes::copy_from_slice(s.as_bytes())).expect(s)
}

fn read(a: &Acl, who: &AclSubject<'_>, t: &str) -> bool {
    a.may_read(who, &topic(t))
}

fn publish(a: &Acl, who: &AclSubject<'_>, t: &str) -> bool {
    a.may_publish(who, &topic(t))
}

fn subscribe(a: &Acl, who: &AclSubject<'_>, f: &str) -> bool {
    a.may_subscribe(who, &filter(f))
}

const EXAMPLE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic read shared/+/status
topic write  shared/commands with spaces
topic deny alice/secret/#

user bob
topic bob/#

pattern read clients/%c/#
pattern write users/%u/out
";

#[test]
fn rules_go_to_the_right_clients() {
    let a = acl(EXAMPLE);
    let anon = AclSubject::new("anon-1", None);
    let alice = AclSubject::new("phone", Some("alice"));
    let bob = AclSubject::new("laptop", Some("bob"));
    let carol = AclSubject::new("c", Some("carol")); // no section of her own

    assert!(read(&a, &anon, "public/news"));
    assert!(!publish(&a, &anon, "public/news"), "read only");
    assert!(
        !read(&a, &alice, "public/news"),
        "anonymous rules are not everyone's"
    );

    assert!(read(&a, &alice, "alice/x") && publish(&a, &alice, "alice/x"));
    assert!(read(&a, &alice, "shared/7/status"));
    assert!(!read(&a, &alice, "shared/7/status/more"));
    assert!(publish(&a, &alice, "shared/commands with spaces"));
    assert!(
        !read(&a, &alice, "shared/commands with spaces"),
        "write only"
    );
    assert!(!read(&a, &alice, "bob/x"));

    assert!(
        read(&a, &bob, "bob/x") && publish(&a, &bob, "bob/x"),
        "no access word: readwrite"
    );

    // Patterns apply to everyone, each with their own values.
    for (who, id) in [
        (&anon, "anon-1"),
        (&alice, "phone"),
        (&bob, "laptop"),
        (&carol, "c"),
    ] {
        assert!(read(&a, who, &format!("clients/{id}/cfg")));
        assert!(!read(&a, who, "clients/someone-else/cfg"));
    }
    assert!(publish(&a, &carol, "users/carol/out"));
    assert!(!publish(&a, &carol, "users/alice/out"));
    assert!(
        !publish(&a, &anon, "users//out"),
        "%u never applies without a user name"
    );
    assert!(!read(&a, &carol, "public/news"), "not granted: refused");
}

#[test]
fn deny_wins_wherever_it_stands() {
    let a = acl(EXAMPLE);
    let alice = AclSubject::new("phone", Some("alice"));
    assert!(!read(&a, &alice, "alice/secret"));
    assert!(!read(&a, &alice, "alice/secret/deeper"));
    assert!(!publish(&a, &alice, "alice/secret/x"));
    assert!(read(&a, &alice, "alice/secretive"));
    // A deny pattern overrides a user's own grant, and the reverse order changes nothing.
    for text in [
        "user u\ntopic readwrite #\npattern deny private/#\n",
        "pattern deny private/#\nuser u\ntopic readwrite #\n",
    ] {
        let a = acl(text);
        let u = AclSubject::new("c", Some("u"));
        assert!(read(&a, &u, "anything") && !read(&a, &u, "private/x"));
    }
}

#[test]
fn unsafe_substitutions_never_widen_a_pattern() {
    let a = acl("pattern readwrite dev/%u/#\npattern read id/%c\n");
    let normal = AclSubject::new("c1", Some("a"));
    assert!(read(&a, &normal, "dev/a/x") && publish(&a, &normal, "dev/a"));
    assert!(subscribe(&a, &normal, "dev/a/#"));

    // User name `a/#`: substituted as text it would grant `dev/a/#/#`, i.e. all of `dev/a`.
    let evil = AclSubject::new("c2", Some("a/#"));
    for t in ["dev/a/x", "dev/a", "dev/a/#/x", "dev/x"] {
        if let Ok(t) = TopicName::new(Bytes::copy_from_slice(t.as_bytes())) {
            assert!(!a.may_read(&evil, &t), "{t}");
            assert!(!a.may_publish(&evil, &t), "{t}");
        }
    }
    assert!(!subscribe(&a, &evil, "dev/a/#"));
    assert!(!subscribe(&a, &evil, "dev/#"));
    assert!(read(&a, &evil, "id/c2"), "the safe client id still works");

    for name in ["x+", "+", "#", "a/b"] {
        let who = AclSubject::new("c3", Some(name));
        assert!(
            !read(&a, &who, "dev/x/y") && !read(&a, &who, "dev/a/b/y"),
            "{name}"
        );
        assert!(!subscribe(&a, &who, "dev/+/#"), "{name}");
    }
    let evil_id = AclSubject::new("+", Some("a"));
    assert!(!read(&a, &evil_id, "id/x") && read(&a, &evil_id, "dev/a/x"));
}

#[test]
fn deny_patterns_with_unsafe_values_fail_closed() {
    let a = acl("pattern deny private/%u/#\npattern read #\n");
    let ok = AclSubject::new("c", Some("ann"));
    assert!(read(&a, &ok, "x") && !read(&a, &ok, "private/ann/x") && read(&a, &ok, "private/bo/x"));
    let slashed = AclSubject::new("c", Some("ann/x"));
    assert!(
        !read(&a, &slashed, "x"),
        "the deny cannot be placed, so it covers everything"
    );
    assert!(!subscribe(&a, &slashed, "x/#"));
    let anon = AclSubject::new("c", None);
    assert!(
        read(&a, &anon, "private/x"),
        "%u rules do not apply without a user name"
    );
}

#[test]
fn sys_topics_only_where_a_rule_names_them() {
    let a = acl("topic read #\ntopic read +/status\nuser admin\ntopic read $SYS/#\ntopic read #\n");
    let anon = AclSubject::new("c", None);
    let admin = AclSubject::new("c", Some("admin"));
    assert!(read(&a, &anon, "a/b") && read(&a, &anon, "x/status"));
    assert!(!read(&a, &anon, "$SYS/broker/uptime"));
    assert!(!read(&a, &anon, "$SYS/status"), "+ does not match $SYS");
    assert!(!subscribe(&a, &anon, "$SYS/#"));
    assert!(
        subscribe(&a, &anon, "#"),
        "# matches no $ topic, so it is covered"
    );
    assert!(read(&a, &admin, "$SYS/broker/uptime"));
    assert!(subscribe(&a, &admin, "$SYS/broker/+"));
    assert!(!publish(&a, &admin, "$SYS/x"));
}

#[test]
fn subscriptions_need_every_matched_topic_readable() {
    let a = acl(
        "user u\ntopic read sensors/#\ntopic read rooms/+/temp\ntopic deny sensors/secret/#\n\
         topic write cmd/#\n",
    );
    let u = AclSubject::new("c", Some("u"));
    for (f, want) in [
        ("sensors/a", true),
        ("sensors/+/temp", false), // can match sensors/secret/temp
        ("sensors/a/#", true),
        ("sensors/#", false),      // overlaps the deny
        ("sensors/+/x", false),    // can match sensors/secret/x
        ("sensors/secret", false), // sensors/secret/# matches its parent
        ("rooms/+/temp", true),
        ("rooms/kitchen/temp", true),
        ("rooms/#", false), // rooms/x/humidity is not readable
        ("rooms/+/+", false),
        ("#", false),
        ("cmd/#", false), // write only
        ("$share/g/rooms/+/temp", true),
        ("$share/g/rooms/#", false),
    ] {
        assert_eq!(subscribe(&a, &u, f), want, "{f}");
    }
}

#[test]
fn subscribe_access_is_full_partial_or_denied() {
    use super::SubscribeAccess::{Denied, Full, Partial};
    let a = acl(
        "user u\ntopic read sensors/#\ntopic read rooms/+/temp\ntopic deny sensors/secret/#\n\
         topic write cmd/#\ntopic read $SYS/broker/#\npattern read clients/%c/#\n",
    );
    let u = AclSubject::new("c", Some("u"));
    for (f, want) in [
        ("sensors/a", Full),
        ("sensors/#", Partial),      // all but sensors/secret/...
        ("sensors/+/temp", Partial), // all but sensors/secret/temp
        ("sensors/secret/#", Denied),
        ("sensors/secret/x", Denied),
        ("rooms/#", Partial), // only rooms/+/temp
        ("rooms/kitchen/humidity", Denied),
        ("#", Partial),
        ("+/+/temp", Partial),
        ("cmd/#", Denied), // write only
        ("$SYS/#", Partial),
        ("$SYS/broker/load", Full),
        ("clients/c/#", Full),
        ("clients/other/#", Denied),
        ("clients/+/x", Partial),
        ("$share/g/rooms/#", Partial),
        ("$share/g/cmd/x", Denied),
    ] {
        assert_eq!(a.subscribe_access(&u, &filter(f)), want, "{f}");
        assert_eq!(
            subscribe(&a, &u, f),
            want == Full,
            "{f} agrees with may_subscribe"
        );
    }
    // `#` never reaches `$` topics through a first-level wildcard rule.
    let open = acl("topic read #\n");
    let anon = AclSubject::new("c", None);
    assert_eq!(open.subscribe_access(&anon, &filter("$SYS/#")), Denied);
    assert_eq!(open.subscribe_access(&anon, &filter("#")), Full);
    // An unsafe %c in a deny pattern takes everything.
    let deny = acl("topic read #\npattern deny clients/%c/#\n");
    let bad = AclSubject::new("a/b", None);
    assert_eq!(deny.subscribe_access(&bad, &filter("x/#")), Denied);
}

#[test]
fn an_empty_acl_refuses_everything() {
    let a = acl("# nothing granted\n\n");
    let who = AclSubject::new("c", Some("u"));
    assert!(!read(&a, &who, "a") && !publish(&a, &who, "a") && !subscribe(&a, &who, "a"));
    assert!(!a.uses_client_id());
    assert!(acl("pattern read x/%c\n").uses_client_id());
}

#[test]
fn format_details() {
    // Tabs and extra blanks, an indented comment, a repeated user section, CRLF.
    let a = acl(
        "user\tu  \r\n  # note\r\ntopic\tread   a/b\r\nuser v\ntopic read v\nuser u\ntopic c\n",
    );
    let u = AclSubject::new("c", Some("u"));
    assert!(read(&a, &u, "a/b") && read(&a, &u, "c") && publish(&a, &u, "c"));
    assert!(!read(&a, &u, "v"));
    // A user name with a space is the rest of the line, as in mosquitto.
    let a = acl("user John Smith\ntopic read j/#\n");
    assert!(read(&a, &AclSubject::new("c", Some("John Smith")), "j/x"));
}

#[test]
fn errors_name_the_line_and_reason() {
    let cases: &[(&str, usize, AclLineError)] = &[
        (
            "topic read a\nfrobnicate x\n",
            2,
            AclLineError::UnknownDirective,
        ),
        ("user\n", 1, AclLineError::MissingUser),
        ("user   \n", 1, AclLineError::MissingUser),
        ("\n\ntopic\n", 3, AclLineError::MissingFilter),
        ("topic read\n", 1, AclLineError::MissingFilter),
        ("pattern deny\n", 1, AclLineError::MissingFilter),
        ("topic reed a/b\n", 1, AclLineError::BadAccess),
        (
            "topic read a/#/b\n",
            1,
            AclLineError::BadFilter(FilterError::BadWildcard),
        ),
        (
            "pattern read a+/%c\n",
            1,
            AclLineError::BadFilter(FilterError::BadWildcard),
        ),
        (
            "# c\ntopic a#\n",
            2,
            AclLineError::BadFilter(FilterError::BadWildcard),
        ),
    ];
    for (text, line, reason) in cases {
        let e = Acl::parse(text).expect_err(text);
        assert_eq!(
            e,
            AclError {
                line: *line,
                reason: *reason
            },
            "{text:?}"
        );
        assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
    }
}
