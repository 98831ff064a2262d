use super::*;

fn settings() -> BounceSettings {
    BounceSettings {
        bouncefrom: "MAILER-DAEMON".into(),
        bouncehost: "mx.example.org".into(),
        doublebounceto: "postmaster".into(),
        doublebouncehost: "example.org".into(),
        max_bytes: None,
    }
}

const MSG: &[u8] = b"Subject: hi\n\nhello\n";
const DATE: &str = "26 Sep 1995 04:46:54 -0000";

fn failures() -> Vec<Failure> {
    vec![
        Failure {
            recipient: "joe@example.org".into(),
            report: "Sorry, no mailbox here by that name. (#5.1.1)\n".into(),
        },
        Failure {
            recipient: "bob@example.org".into(),
            report: "first\n\nsecond".into(),
        },
    ]
}

fn input<'a>(sender: &'a str, f: &'a [Failure]) -> BounceInput<'a> {
    BounceInput {
        sender,
        failures: f,
        date: DATE,
        message_len: MSG.len() as u64,
    }
}

fn send(b: Bounce) -> Composed {
    match b {
        Bounce::Send(c) => c,
        Bounce::Discard => panic!("discarded"),
    }
}

#[test]
fn bounce_is_qmail_text() {
    let f = failures();
    let c = send(compose(&input("alice@example.com", &f), &settings()));
    assert_eq!(c.sender, "");
    assert_eq!(c.recipient, "alice@example.com");
    let expected = "Date: 26 Sep 1995 04:46:54 -0000\n\
From: MAILER-DAEMON@mx.example.org\n\
To: alice@example.com\n\
Subject: failure notice\n\
\n\
Hi. This is the qmail-send program at mx.example.org.\n\
I'm afraid I wasn't able to deliver your message to the following addresses.\n\
This is a permanent error; I've given up. Sorry it didn't work out.\n\
\n\
<joe@example.org>:\n\
Sorry, no mailbox here by that name. (#5.1.1)\n\
\n\
<bob@example.org>:\n\
first\n\
/second\n\
\n\
--- Below this line is a copy of the message.\n\
\n\
Return-Path: <alice@example.com>\n\
Subject: hi\n\
\n\
hello\n";
    assert_eq!(String::from_utf8(c.with_message(MSG)).unwrap(), expected);
}

#[test]
fn double_bounce() {
    let f = failures();
    let c = send(compose(&input("", &f[..1]), &settings()));
    assert_eq!(c.sender, "#@[]");
    assert_eq!(c.recipient, "postmaster@example.org");
    let text = String::from_utf8(c.with_message(MSG)).unwrap();
    assert!(text.contains("\nTo: postmaster@example.org\n"));
    assert!(text.contains(
        "at mx.example.org.\nI tried to deliver a bounce message to this address, but the bounce bounced!\n\n<joe@"
    ));
    assert!(text.ends_with(
        "--- Below this line is the original bounce.\n\nReturn-Path: <>\nSubject: hi\n\nhello\n"
    ));
}

#[test]
fn triple_bounce_and_disabled_double_bounces_are_discarded() {
    let f = failures();
    assert_eq!(compose(&input("#@[]", &f), &settings()), Bounce::Discard);
    let mut s = settings();
    s.doublebounceto = String::new();
    assert_eq!(compose(&input("", &f), &s), Bounce::Discard);
}

#[test]
fn verp_sender_loses_its_marker_and_local_parts_are_quoted() {
    let f = failures();
    let mut s = settings();
    s.bouncefrom = "mailer daemon".into();
    let c = send(compose(&input("list-@example.com-@[]", &f), &s));
    assert_eq!(c.recipient, "list-@example.com");
    let text = String::from_utf8(c.prefix).unwrap();
    assert!(text.contains("From: \"mailer daemon\"@mx.example.org\n"));
    assert!(text.ends_with("Return-Path: <list-@example.com>\n"));
}

#[test]
fn truncated_copy_says_so() {
    let f = failures();
    let mut s = settings();
    s.max_bytes = Some(5);
    let c = send(compose(&input("a@b", &f), &s));
    assert_eq!(c.copy_len, 5);
    let text = String::from_utf8(c.with_message(MSG)).unwrap();
    assert!(text.ends_with(
        "--- Below this line is the first 5 bytes of the message.\n\nReturn-Path: <a@b>\nSubje"
    ));
    // A limit the message fits in changes nothing.
    s.max_bytes = Some(1000);
    let c = send(compose(&input("a@b", &f), &s));
    assert!(c
        .prefix
        .ends_with(b"a copy of the message.\n\nReturn-Path: <a@b>\n"));
}

#[test]
fn paragraphs_as_addbounce() {
    assert_eq!(paragraph("a@b", ""), "<a@b>:\n\n");
    assert_eq!(paragraph("a\nb", "x\n\n\ny\n"), "<a_b>:\nx\n//y\n\n");
}
