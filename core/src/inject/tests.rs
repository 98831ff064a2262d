use proptest::prelude::*;

use super::*;

fn settings() -> Settings {
    Settings {
        defaulthost: "mail".into(),
        defaultdomain: "example.org".into(),
        plusdomain: "plus.example.org".into(),
        idhost: "id.example.org".into(),
        flags: Flags::default(),
        mailhost: None,
        mailuser: "joe".into(),
        mailrhost: None,
        mailruser: "joe".into(),
        fullname: None,
        mft: None,
    }
}

fn req(args: &[&str]) -> Request {
    Request {
        args: args.iter().map(|s| s.to_string()).collect(),
        now: 811_485_414, // 19 Sep 1995 04:36:54
        pid: 42,
        ..Request::default()
    }
}

fn run(input: &str, s: &Settings, r: &Request) -> (String, Injected) {
    let i = inject(input.as_bytes(), s, r).unwrap();
    (String::from_utf8(i.message(input.as_bytes())).unwrap(), i)
}

#[test]
fn adds_date_messageid_from_only_when_missing() {
    let (text, i) = run("Subject: x\n\nbody\n", &settings(), &req(&["bob"]));
    assert_eq!(
        text,
        "Date: 19 Sep 1995 04:36:54 -0000\n\
         Message-ID: <19950919043654.42.qmail@id.example.org>\n\
         From: joe@mail.example.org\n\
         Cc: recipient list not shown: ;\n\
         Subject: x\n\nbody\n"
    );
    assert_eq!(i.recipients, ["bob@mail.example.org"]);
    assert_eq!(i.sender, "joe@mail.example.org");
    let full = "Date: today\nMessage-ID: <a@b>\nFrom: me@x.y\nTo: you@x.y\n\nb\n";
    let (text, _) = run(full, &settings(), &req(&["bob"]));
    assert_eq!(text, full);
}

#[test]
fn header_rewriting_table() {
    let cases = [
        ("To: bob\n", "To: bob@mail.example.org\n"),
        ("To: bob@host\n", "To: bob@host.example.org\n"),
        ("To: bob@host.com.\n", "To: bob@host.com\n"),
        ("To: bob@\n", "To: bob@mail.example.org\n"),
        ("To: bob@host+\n", "To: bob@host.plus.example.org\n"),
        ("To: bob@[1.2.3.4]\n", "To: bob@[1.2.3.4]\n"),
        ("To: <@r1,@r2:bob@x.y>\n", "To: <bob@x.y>\n"),
        (
            "To: Bob Smith <bob>\n",
            "To: Bob Smith <bob@mail.example.org>\n",
        ),
        (
            "To: \"Smith, Bob\" <bob@x.y>\n",
            "To: \"Smith, Bob\" <bob@x.y>\n",
        ),
        (
            "To: bob (Bob) , ann@a.b\n",
            "To: bob@mail.example.org (Bob), ann@a.b\n",
        ),
        (
            "To: bob ann\n",
            "To: bob@mail.example.org, ann@mail.example.org\n",
        ),
        (
            "To: friends: a@b.c, d;\n",
            "To: friends: a@b.c, d@mail.example.org;\n",
        ),
        ("To: empty: ;\n", "To: empty: ;\n"),
        ("Cc: <>\n", "Cc: <>\n"),
        ("Reply-To: x\n", "Reply-To: x@mail.example.org\n"),
        ("Subject: bob\n", "Subject: bob\n"),
        ("To: (a\n", "To: (a\n"),
    ];
    for (field, want) in cases {
        let input = format!("Date: d\nMessage-ID: m\nFrom: f@x.y\n{field}\nbody\n");
        let (text, _) = run(&input, &settings(), &req(&["r@x.y"]));
        let to = field.starts_with("To:") || field.starts_with("Cc:");
        let cc = if to {
            ""
        } else {
            "Cc: recipient list not shown: ;\n"
        };
        let want = format!("{cc}Date: d\nMessage-ID: m\nFrom: f@x.y\n{want}\nbody\n");
        assert_eq!(text, want, "for {field:?}");
    }
}

#[test]
fn long_lists_fold_at_80() {
    let addrs: Vec<String> = (0..8).map(|i| format!("user{i}@example.com")).collect();
    let input = format!("To: {}\n\n", addrs.join(", "));
    let (text, _) = run(&input, &settings(), &req(&[]));
    let to: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("To:"))
        .take(3)
        .collect();
    assert_eq!(
        to,
        [
            // 79 columns, but qmail counts the 2 bytes of a tentative break.
            "To: user0@example.com, user1@example.com, user2@example.com,",
            "  user3@example.com, user4@example.com, user5@example.com, user6@example.com,",
            "  user7@example.com",
        ]
    );
}

#[test]
fn t_extraction_and_bcc_removal() {
    let input = "To: a@x.y, B <b@x.y>\nCc: grp: c@x.y;\nBcc: d@x.y\nApparently-To: e@x.y\nReturn-Path: <z@q.r>\nContent-Length: 5\nSubject: s\n\nhi\n";
    let (text, i) = run(input, &settings(), &req(&[]));
    let mut r = i.recipients.clone();
    r.sort();
    assert_eq!(r, ["a@x.y", "b@x.y", "c@x.y", "d@x.y", "e@x.y"]);
    assert!(!text.contains("Bcc"), "{text}");
    assert!(!text.contains("Return-Path"), "{text}");
    assert!(!text.contains("Content-Length"), "{text}");
    assert_eq!(i.sender, "z@q.r");
    // -a ignores the header; -H takes both.
    let mut r2 = req(&["arg"]);
    let (_, i) = run(input, &settings(), &r2);
    assert_eq!(i.recipients, ["arg@mail.example.org"]);
    r2.recipients = Recipients::Both;
    let (_, i) = run(input, &settings(), &r2);
    assert_eq!(i.recipients.len(), 6);
}

#[test]
fn resent_fields_take_over() {
    let input = "To: a@x.y\nResent-To: r@x.y\nResent-Bcc: s@x.y\n\n";
    let (text, i) = run(input, &settings(), &req(&[]));
    assert_eq!(i.recipients, ["r@x.y", "s@x.y"]);
    assert!(text.starts_with("Resent-Date: 19 Sep 1995"), "{text}");
    assert!(text.contains("\nResent-Message-ID: <1995"), "{text}");
    assert!(
        text.contains("\nResent-From: joe@mail.example.org\n"),
        "{text}"
    );
    assert!(!text.contains("Resent-Bcc"));
    assert!(!text.contains("\nDate: "));
}

#[test]
fn from_uses_name_host_and_flags() {
    let mut s = settings();
    s.fullname = Some("Joe Q. User".into());
    s.mailhost = Some("corp".into());
    s.mailrhost = s.mailhost.clone();
    let (text, i) = run("\n", &s, &req(&["x@y.z"]));
    assert!(
        text.contains("\nFrom: \"Joe Q. User\" <joe@corp.example.org>\n"),
        "{text}"
    );
    assert_eq!(i.sender, "joe@corp.example.org");
    s.flags = Flags::parse("cr");
    s.mailruser = "list".into();
    s.mailrhost = Some("lists.example.com".into());
    let (text, i) = run("\n", &s, &req(&["x@y.z"]));
    assert!(
        text.contains("\nFrom: joe@corp.example.org (Joe Q. User)\n"),
        "{text}"
    );
    assert_eq!(i.sender, "list-@lists.example.com-@[]");
    s.flags = Flags::parse("fi");
    let (text, _) = run("From: a@b.c\nMessage-ID: <x@y>\n\n", &s, &req(&["x@y.z"]));
    assert!(!text.contains("a@b.c") && !text.contains("<x@y>"), "{text}");
}

#[test]
fn sender_from_f_and_print_mode() {
    let mut r = req(&["x@y.z"]);
    r.sender = Some("bounces".into());
    r.print = true;
    let (text, i) = run("Subject: s\n\n", &settings(), &r);
    assert_eq!(i.sender, "bounces@mail.example.org");
    assert!(text.starts_with("Return-Path: <bounces@mail.example.org>\nDate: "));
    r.sender = Some(String::new());
    let (_, i) = run("\n", &settings(), &r);
    assert_eq!(i.sender, "");
}

#[test]
fn header_shapes() {
    // No blank line: the first non-field line starts the body; qmail adds it.
    let (text, _) = run(
        "Date: d\nMessage-ID: m\nFrom: f@x.y\nTo: t@x.y\nnot a field\nmore",
        &settings(),
        &req(&[]),
    );
    assert_eq!(
        text,
        "Date: d\nMessage-ID: m\nFrom: f@x.y\nTo: t@x.y\n\nnot a field\nmore\n"
    );
    // Folded fields stay whole; an mbox From line is kept under a name.
    let s = split_header(b"From x Mon\nSubject: a\n b\n\nbody");
    assert_eq!(
        s.fields,
        [
            b"MBOX-Line: From x Mon\n".to_vec(),
            b"Subject: a\n b\n".to_vec()
        ]
    );
    assert_eq!(s.body_start, 25);
}

#[test]
fn errors() {
    let e = inject(b"From: <a@b\n\n", &settings(), &req(&["x@y.z"])).unwrap_err();
    assert_eq!(e.to_string(), "unable to parse this line:\nFrom: <a@b");
    // A local part is quoted first (qmail's quote2), so only a bad host fails.
    let e = inject(b"\n", &settings(), &req(&["a@(b"])).unwrap_err();
    assert_eq!(e, InjectError::Address("a@(b".into()));
    assert_eq!(e.to_string(), "unable to parse address: a@(b");
    let e = inject(b"Subject: x\n\n", &settings(), &req(&[])).unwrap_err();
    assert_eq!(e, InjectError::NoRecipients);
}

#[test]
fn mail_followup_to() {
    let mut s = settings();
    s.mft = Some(vec!["list@x.y".into()]);
    let (text, _) = run("To: list@x.y, a@b.c\n\n", &s, &req(&[]));
    assert!(
        text.contains("\nMail-Followup-To: list@x.y,\n  a@b.c\n"),
        "{text}"
    );
}

#[test]
fn settings_precedence() {
    let control = |n: &str| match n {
        "me" => Some("me.example.org\n".to_string()),
        "defaultdomain" => Some("dd.org\n".to_string()),
        _ => None,
    };
    let env = |n: &str| match n {
        "MAILUSER" => Some("mu".to_string()),
        "USER" => Some("u".to_string()),
        "QMAILIDHOST" => Some("idh".to_string()),
        "QMAILINJECT" => Some("c".to_string()),
        _ => None,
    };
    let s = Settings::load(&control, &env);
    assert_eq!(s.defaultdomain, "dd.org");
    assert_eq!(s.defaulthost, "me.example.org");
    assert_eq!(s.idhost, "idh");
    assert_eq!(s.mailuser, "mu");
    assert!(s.flags.name_comment);
    let none = |_: &str| None;
    let s = Settings::load(&none, &none);
    assert_eq!(
        (s.plusdomain.as_str(), s.mailuser.as_str()),
        ("plusdomain", "anonymous")
    );
}

proptest! {
    #[test]
    fn never_panics(input in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = inject(&input, &settings(), &req(&["a"]));
        let _ = token::parse(&input).map(|t| token::unparse(&t, 80));
    }

    #[test]
    fn header_ish_never_panics(input in "[A-Za-z:;,<>@.()\\[\\]\"\\\\ \n-]{0,200}") {
        let _ = inject(input.as_bytes(), &settings(), &req(&[]));
    }
}

#[test]
fn backslash_before_a_line_break_quotes_nothing() {
    // qmail takes the LF into the address and prints `"\<LF>"`, ending
    // the header early; here the backslash is dropped and the LF folds.
    let cases: [(&str, &str, &[&str]); 4] = [
        ("To:\\\n", "To:\n", &[]),
        (
            "To: a\\\n b@c\n",
            "To: a@mail.example.org, b@c.example.org\n",
            &["a@mail.example.org", "b@c.example.org"],
        ),
        ("To: a@b.c\\\n", "To: a@b.c\n", &["a@b.c"]),
        // At the end of the input, with no LF at all.
        ("To: a@b.c\\", "To: a@b.c\n", &["a@b.c"]),
    ];
    let mut r = req(&[]);
    r.print = true;
    for (input, want, rcpts) in cases {
        let input = format!("Date: d\nMessage-ID: m\nFrom: f@x.y\n{input}");
        let (text, i) = run(&input, &settings(), &r);
        let want = format!(
            "Return-Path: <joe@mail.example.org>\nDate: d\nMessage-ID: m\nFrom: f@x.y\n{want}"
        );
        assert_eq!(text, want, "for {input:?}");
        assert_eq!(i.recipients, rcpts, "for {input:?}");
    }
    assert_eq!(token::parse(b"\\"), Some(vec![]));
    assert_eq!(
        token::parse(b"a\\\n\tb\\"),
        Some(vec![Tok::Atom(b"a".to_vec()), Tok::Atom(b"b".to_vec())])
    );
    // Inside quotes the LF stays, and prints back as the fold it was.
    let (text, i) = run("To: \"a\\\n b\"@c.d\n", &settings(), &r);
    assert!(text.ends_with("\nTo: \"a\\\n b\"@c.d\n"), "{text:?}");
    assert_eq!(i.recipients, ["a\n b@c.d"]);
}

/// Header bytes: any, or made of field names, address syntax, backslashes
/// and line breaks.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        r#"((To|Cc|Bcc|From|Sender|Return-Path|Subject|From |x) ?:?([a-z;,<>@.()\[\]" \t\\]|\\?\n[ \t]?){0,20}\n){0,6}"#
            .prop_map(String::into_bytes),
    ]
}

/// The input up to the line that ends its header, included: what a host
/// reading line by line with `in_header` has when it stops.
fn header_and_next_line(input: &[u8]) -> &[u8] {
    let mut end = 0;
    for line in input.split_inclusive(|&b| b == b'\n') {
        let open = end > 0;
        end += line.len();
        if !in_header(line, open) {
            break;
        }
    }
    &input[..end]
}

proptest! {
    /// The header written reads back as just its fields and ends where the
    /// body starts: nothing in it ends the header early or moves text into
    /// the body (the fuzz target's invariant).
    #[test]
    fn header_reads_back_whole(input in header_bytes(), print in any::<bool>()) {
        let mut r = req(&["a"]);
        r.print = print;
        let Ok(i) = inject(&input, &settings(), &r) else {
            return Ok(());
        };
        let header = if split_header(&input).insert_blank {
            &i.header[..i.header.len() - 1]
        } else {
            &i.header[..]
        };
        let again = split_header(&i.message(&input));
        prop_assert_eq!(lossy(&again.fields.concat()), lossy(header));
        prop_assert_eq!(again.body_start, header.len());
    }

    /// A host may stop reading at the line that ends the header and stream
    /// the rest.
    #[test]
    fn header_and_next_line_are_enough(input in header_bytes(), body in ".{0,20}") {
        let input = [&input[..], body.as_bytes()].concat();
        let head = header_and_next_line(&input);
        let r = req(&["a"]);
        prop_assert_eq!(inject(head, &settings(), &r), inject(&input, &settings(), &r));
    }
}

#[test]
fn quote_escapes_line_breaks_as_qmail_does() {
    assert_eq!(quote("a\nb"), "\"a\\\nb\"");
    assert_eq!(quote("a\r\"b"), "\"a\\\r\\\"b\"");
    assert_eq!(quote2("x y@h"), "\"x y\"@h");
}
