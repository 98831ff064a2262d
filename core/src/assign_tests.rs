use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

const SEED: &[u8] = b"=ftp:alias:29990:29998:/var/qmail/alias:-:ftp:\n\
+ftp-:alias:29990:29998:/var/qmail/alias:-ftp-::\n\
+ftp:peter:2052:100:/home/peter:-:ftp:\n\
.\n";

fn map(a: &[Assignment]) -> HashMap<Vec<u8>, Vec<u8>> {
    cdb_records(a).into_iter().collect()
}

fn find(m: &HashMap<Vec<u8>, Vec<u8>>, local: &str) -> Option<UserEntry> {
    lookup::<()>(local.as_bytes(), |k| Ok(m.get(k).cloned())).unwrap()
}

/// The `.qmail` file qmail-local would read first.
fn qmail_file(e: &UserEntry) -> String {
    format!(
        "{}/.qmail{}{}",
        String::from_utf8_lossy(&e.home),
        String::from_utf8_lossy(&e.dash),
        String::from_utf8_lossy(&e.ext)
    )
}

#[test]
fn seed_examples() {
    let a = parse("users/assign", SEED).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].kind, Kind::Exact);
    assert_eq!(a[1].kind, Kind::Prefix);
    assert_eq!(a[2].entry.uid, 2052);
    let m = map(&a);
    let ftp = find(&m, "ftp").unwrap();
    assert_eq!(ftp.user, b"alias");
    assert_eq!(qmail_file(&ftp), "/var/qmail/alias/.qmail-ftp");
    let some = find(&m, "ftp-something").unwrap();
    assert_eq!(some.user, b"alias");
    assert_eq!(qmail_file(&some), "/var/qmail/alias/.qmail-ftp-something");
    let stuff = find(&m, "ftpstuff").unwrap();
    assert_eq!(
        (stuff.user.as_slice(), stuff.uid, stuff.gid),
        (&b"peter"[..], 2052, 100)
    );
    assert_eq!(qmail_file(&stuff), "/home/peter/.qmail-ftpstuff");
    assert_eq!(find(&m, "FTP").unwrap().user, b"alias");
    assert_eq!(find(&m, "other"), None);
}

#[test]
fn cdb_encoding_is_qmail_newu() {
    let a = parse("users/assign", SEED).unwrap();
    let r = cdb_records(&a);
    assert_eq!(r[0].0, b"!ftp\0");
    assert_eq!(
        r[0].1,
        b"alias\x0029990\x0029998\x00/var/qmail/alias\x00-\x00ftp"
    );
    assert_eq!(r[1].0, b"!ftp-");
    assert_eq!(
        r[1].1,
        b"alias\x0029990\x0029998\x00/var/qmail/alias\x00-ftp-\x00"
    );
    assert_eq!(r[3], (Vec::new(), b"-p".to_vec()));
}

#[test]
fn wildcard_keeps_case_of_rest_and_falls_back_to_bang() {
    let a = parse("a", b"+:alias:1:2:/h:-::\n+Ab:u:3:4:/u:-:x-:\n.\n").unwrap();
    let m = map(&a);
    let e = find(&m, "abCD").unwrap();
    assert_eq!((e.user, e.ext), (b"u".to_vec(), b"x-CD".to_vec()));
    // Only prefixes ending in a wildchar are tried: "a" ends in no wildchar.
    let e = find(&m, "aX").unwrap();
    assert_eq!((e.user, e.ext), (b"alias".to_vec(), b"aX".to_vec()));
}

#[test]
fn errors_name_file_and_line() {
    let cases: &[(&[u8], usize)] = &[
        (b"=a:b:1:2:/h:-:x:\n=bad\n.\n", 2),
        (b"=a:b:1:2:/h:-:x:\n", 2),
        (b"=a:b:x:2:/h:-:x:\n.\n", 1),
        (b"=a:b:1:2:/h:-:x\n.\n", 1),
        (b"-a:b:1:2:/h:-:x:\n.\n", 1),
        (b"=a\0:b:1:2:/h:-:x:\n.\n", 1),
        (b"\n.\n", 1),
    ];
    for (text, line) in cases {
        let e = parse("users/assign", text).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("users/assign", *line), "{e}");
    }
    assert_eq!(parse("f", b".\n").unwrap(), vec![]);
    assert_eq!(parse("f", b".").unwrap(), vec![]);
}

#[test]
fn missing_wildchars_or_bad_record_is_an_error() {
    let r = lookup::<()>(b"x", |_| Ok(None));
    assert_eq!(r, Err(LookupError::BadRecord));
    let r = lookup::<()>(b"x", |k| {
        Ok(Some(if k.is_empty() {
            vec![]
        } else {
            b"u\0x".to_vec()
        }))
    });
    assert_eq!(r, Err(LookupError::BadRecord));
}

proptest! {
    #[test]
    fn never_panics(text in proptest::collection::vec(any::<u8>(), 0..200), local in "[a-zA-Z-]{0,12}") {
        if let Ok(a) = parse("f", &text) {
            let m = map(&a);
            let _ = lookup::<()>(local.as_bytes(), |k| Ok(m.get(k).cloned()));
        }
        let _ = lookup::<()>(local.as_bytes(), |_| Ok(Some(text.clone())));
    }
}
