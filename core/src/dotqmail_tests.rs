use super::*;
use proptest::prelude::*;
use Instruction::*;

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn seed_vacation_example() {
    let file = "# My vacation .qmail file\n\
| [ \"$SENDER\" = \"ddts@x.com\" ] && exit 99 || exit 0\n\
|/usr/local/bin/vacation -j psamuel\n\
&peter@isp.com.au\n\
/home/psamuel/Mailbox\n\
/home/psamuel/Maildir/\n";
    assert_eq!(
        parse(file.as_bytes()).unwrap(),
        vec![
            Comment,
            Program(v(" [ \"$SENDER\" = \"ddts@x.com\" ] && exit 99 || exit 0")),
            Program(v("/usr/local/bin/vacation -j psamuel")),
            Forward(v("peter@isp.com.au")),
            Mbox(v("/home/psamuel/Mailbox")),
            Maildir(v("/home/psamuel/Maildir/")),
        ]
    );
}

#[test]
fn line_types() {
    let cases: &[(&str, Instruction)] = &[
        ("# c", Comment),
        ("./Maildir/", Maildir(v("./Maildir/"))),
        ("./Mailbox  \t", Mbox(v("./Mailbox"))),
        ("joe@example.com", Forward(v("joe@example.com"))),
        ("&|odd", Forward(v("|odd"))),
        ("-odd", Forward(v("-odd"))),
        ("+list", List),
        ("+other", Ignored),
        ("|cat\0tail", Program(v("cat"))),
    ];
    for (line, want) in cases {
        assert_eq!(
            parse(line.as_bytes()).unwrap(),
            vec![want.clone()],
            "{line:?}"
        );
    }
    // Seed: a comments-only file delivers nowhere, successfully.
    assert_eq!(
        parse(b"# nothing\n# here\n").unwrap(),
        vec![Comment, Comment]
    );
    assert_eq!(
        parse(b"a\n\n  \nb").unwrap(),
        vec![Forward(v("a")), Comment, Comment, Forward(v("b"))]
    );
}

#[test]
fn blank_first_line_defers() {
    for f in [&b"\n./Maildir/\n"[..], b"   \n", b"", b"\0x\n"] {
        assert_eq!(parse(f), Err(BLANK_FIRST_LINE), "{f:?}");
    }
}

#[test]
fn forward_only() {
    let p = parse(b"a@b\n./M/\n").unwrap();
    assert_eq!(check_forward_only(&p, false), Ok(()));
    assert_eq!(check_forward_only(&p, true), Err(FILE_WITH_X_BIT));
    let p = parse(b"|x\n+list\n|y\n").unwrap();
    assert_eq!(check_forward_only(&p, false), Err(PROG_WITH_X_BIT));
    assert_eq!(
        check_forward_only(&parse(b"a\n&b\n").unwrap(), true),
        Ok(())
    );
}

fn names(dash: &str, ext: &str) -> Vec<(String, Option<String>)> {
    search_order(dash.as_bytes(), ext.as_bytes())
        .into_iter()
        .map(|c| {
            (
                String::from_utf8(c.name).unwrap(),
                c.default.map(|d| String::from_utf8(d).unwrap()),
            )
        })
        .collect()
}

#[test]
fn lookup_order_matches_qmesearch() {
    let s = |x: &str| x.to_string();
    assert_eq!(
        names("-", "Foo.Bar-baz"),
        vec![
            (s(".qmail-foo:bar-baz"), None),
            (s(".qmail-foo:bar-default"), Some(s("baz"))),
            (s(".qmail-default"), Some(s("Foo.Bar-baz"))),
        ]
    );
    assert_eq!(
        names("-", "a-b-"),
        vec![
            (s(".qmail-a-b-"), None),
            (s(".qmail-a-b-default"), Some(s(""))),
            (s(".qmail-a-default"), Some(s("b-"))),
            (s(".qmail-default"), Some(s("a-b-"))),
        ]
    );
    assert_eq!(names("-", "")[0], (s(".qmail-"), None));
    assert_eq!(names("-", "")[1], (s(".qmail-default"), Some(s(""))));
    assert_eq!(names("", "")[0], (s(".qmail"), None));
    assert_eq!(
        names("-", "x-default")[0],
        (s(".qmail-x-default"), Some(s("default")))
    );
    let (o, od) = owner_files(b"-", b"List");
    assert_eq!(
        (o, od),
        (v(".qmail-list-owner"), v(".qmail-list-owner-default"))
    );
}

fn ctx(sender: &str) -> Context {
    Context {
        user: v("joe"),
        home: v("/home/joe"),
        local: v("joe-a-b-c-d"),
        dash: v("-"),
        ext: v("a-b-c-d"),
        host: v("mx.mail.example.com"),
        sender: v(sender),
    }
}

#[test]
fn lines_and_environment() {
    let c = ctx("a b@x.org");
    assert_eq!(
        c.dtline(),
        v("Delivered-To: joe-a-b-c-d@mx.mail.example.com\n")
    );
    assert_eq!(c.rpline(), v("Return-Path: <\"a b\"@x.org>\n"));
    assert_eq!(ctx("").rpline(), v("Return-Path: <>\n"));
    assert_eq!(ctx("p@q").rpline(), v("Return-Path: <p@q>\n"));
    assert_eq!(c.ufline(0), v("From a-b@x.org Thu Jan 01 00:00:00 1970\n"));
    assert_eq!(
        ctx("").ufline(1_000_000_000),
        v("From MAILER-DAEMON Sun Sep 09 01:46:40 2001\n")
    );
    let env = c.environment(0, b"ns", Some(b"d"));
    let get =
        |k: &str| String::from_utf8(env.iter().find(|e| e.0 == k).unwrap().1.clone()).unwrap();
    assert_eq!(get("EXT"), "a-b-c-d");
    assert_eq!(get("EXT2"), "b-c-d");
    assert_eq!(get("EXT3"), "c-d");
    assert_eq!(get("EXT4"), "d");
    assert_eq!(get("HOST2"), "mx.mail.example");
    assert_eq!(get("HOST3"), "mx.mail");
    assert_eq!(get("HOST4"), "mx");
    assert_eq!(get("RECIPIENT"), "joe-a-b-c-d@mx.mail.example.com");
    assert_eq!(get("NEWSENDER"), "ns");
    assert_eq!(get("DEFAULT"), "d");
    assert_eq!(get("USER"), "joe");
    assert!(ctx("x")
        .environment(0, b"", None)
        .iter()
        .all(|e| e.0 != "DEFAULT"));
}

#[test]
fn newsender_rules() {
    let c = ctx("s@x");
    assert_eq!(c.newsender(false, false), v("s@x"));
    assert_eq!(
        c.newsender(true, false),
        v("joe-a-b-c-d-owner@mx.mail.example.com")
    );
    assert_eq!(
        c.newsender(true, true),
        v("joe-a-b-c-d-owner-@mx.mail.example.com-@[]")
    );
    assert_eq!(ctx("").newsender(true, true), v(""));
    assert_eq!(ctx("#@[]").newsender(true, true), v("#@[]"));
}

#[test]
fn exit_codes() {
    use ProgramExit::*;
    for (code, want) in [
        (0, Ok),
        (99, Stop),
        (100, Hard),
        (111, Soft),
        (1, Soft),
        (2, Soft),
    ] {
        assert_eq!(program_exit(code), want);
    }
    for code in [64, 65, 70, 76, 77, 78, 112] {
        assert_eq!(program_exit(code), Hard);
    }
}

#[test]
fn loop_detection_and_from_quoting() {
    let dt = b"Delivered-To: a@b\n";
    assert!(looping(b"X: y\nDelivered-To: a@b\n\nbody\n", dt));
    assert!(!looping(b"X: y\n\nDelivered-To: a@b\n", dt));
    assert!(!looping(b"Delivered-To: A@b\n\n", dt));
    assert!(!looping(b"Delivered-To: a@b", dt));
    assert!(needs_from_quote(b"From x"));
    assert!(needs_from_quote(b">>From x"));
    assert!(!needs_from_quote(b"from x"));
    assert!(!needs_from_quote(b">From"));
    assert_eq!(did_line(1, 2, 3), "did 1+2+3\n");
    assert_eq!(myctime(951_782_400), "Tue Feb 29 00:00:00 2000\n");
}

proptest! {
    #[test]
    fn parsers_never_panic(text in proptest::collection::vec(any::<u8>(), 0..200),
                           ext in proptest::collection::vec(any::<u8>(), 0..20)) {
        if let Ok(p) = parse(&text) {
            let _ = check_forward_only(&p, true);
        }
        let _ = search_order(b"-", &ext);
        let _ = looping(&text, b"Delivered-To: x\n");
        let _ = quote2(&text);
        let mut c = ctx("");
        c.ext = ext.clone();
        c.host = text.clone();
        let _ = c.environment(u64::from(u32::MAX), &ext, None);
        let _ = myctime(u64::from(u32::MAX) * 100);
    }
}
