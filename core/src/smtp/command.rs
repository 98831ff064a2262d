//! SMTP command lines: the verb and its argument, and the ESMTP
//! parameters of MAIL (RFC 1870 SIZE, RFC 6152 BODY).

use super::Reply;

/// One command line, its verb matched without regard to case.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a [u8]),
    Ehlo(&'a [u8]),
    /// The text after `MAIL FROM:`.
    Mail(&'a [u8]),
    /// The text after `RCPT TO:`.
    Rcpt(&'a [u8]),
    Data(&'a [u8]),
    Rset(&'a [u8]),
    Noop,
    Quit(&'a [u8]),
    Vrfy(&'a [u8]),
    Help,
    /// Known SMTP commands this server does not offer (EXPN, TURN, ...).
    NotImplemented,
    /// MAIL or RCPT without its `FROM:`/`TO:`.
    BadSyntax(Reply),
    Unknown,
}

/// Splits a command line (without its line ending) into verb and argument.
pub fn parse(line: &[u8]) -> Command<'_> {
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    if is("HELO") {
        Command::Helo(arg)
    } else if is("EHLO") {
        Command::Ehlo(arg)
    } else if is("MAIL") {
        match strip_keyword(arg, b"FROM:") {
            Some(path) => Command::Mail(path),
            None => Command::BadSyntax(Reply::new(501, "5.5.4", "syntax: MAIL FROM:<address>")),
        }
    } else if is("RCPT") {
        match strip_keyword(arg, b"TO:") {
            Some(path) => Command::Rcpt(path),
            None => Command::BadSyntax(Reply::new(501, "5.5.4", "syntax: RCPT TO:<address>")),
        }
    } else if is("DATA") {
        Command::Data(arg)
    } else if is("RSET") {
        Command::Rset(arg)
    } else if is("NOOP") {
        Command::Noop
    } else if is("QUIT") {
        Command::Quit(arg)
    } else if is("VRFY") {
        Command::Vrfy(arg)
    } else if is("HELP") {
        Command::Help
    } else if [
        "EXPN", "TURN", "ETRN", "BDAT", "STARTTLS", "AUTH", "ATRN", "SAML", "SEND", "SOML",
    ]
    .iter()
    .any(|v| is(v))
    {
        Command::NotImplemented
    } else {
        Command::Unknown
    }
}

/// Spaces and tabs at either end are dropped: clients often send them.
fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// `FROM:<x>` or `FROM: <x>` (a space after the colon is common) → `<x>`.
fn strip_keyword<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| trim(&arg[keyword.len()..]))
        .filter(|rest| !rest.is_empty())
}

/// RFC 6152 body types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// The parameters of one MAIL command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: BodyType,
}

/// Parses ` KEY=VALUE KEY ...` after a MAIL path.
pub fn parse_mail_params(rest: &[u8]) -> Result<MailParams, Reply> {
    let mut params = MailParams::default();
    let mut seen_size = false;
    let mut seen_body = false;
    for word in rest.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (key, value) = split_param(word)?;
        if key.eq_ignore_ascii_case(b"SIZE") {
            // RFC 1870 allows 20 digits, more than a u64 holds: saturate.
            let size = value
                .filter(|v| !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit))
                .map(|v| {
                    v.iter().fold(0u64, |n, d| {
                        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                    })
                })
                .ok_or(Reply::new(501, "5.5.4", "syntax error in SIZE parameter"))?;
            if std::mem::replace(&mut seen_size, true) {
                return Err(duplicate());
            }
            params.size = Some(size);
        } else if key.eq_ignore_ascii_case(b"BODY") {
            params.body = match value {
                Some(v) if v.eq_ignore_ascii_case(b"7BIT") => BodyType::SevenBit,
                Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => BodyType::EightBitMime,
                _ => return Err(Reply::new(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")),
            };
            if std::mem::replace(&mut seen_body, true) {
                return Err(duplicate());
            }
        } else {
            return Err(unrecognized());
        }
    }
    Ok(params)
}

/// RCPT takes no parameters this server offers; any is unrecognised.
pub fn parse_rcpt_params(rest: &[u8]) -> Result<(), Reply> {
    match rest.split(|&b| b == b' ').find(|w| !w.is_empty()) {
        Some(word) => {
            split_param(word)?;
            Err(unrecognized())
        }
        None => Ok(()),
    }
}

/// RFC 5321 esmtp-param: keyword [= value], value without `=`, space or controls.
fn split_param(word: &[u8]) -> Result<(&[u8], Option<&[u8]>), Reply> {
    let (key, value) = match word.iter().position(|&b| b == b'=') {
        Some(i) => (&word[..i], Some(&word[i + 1..])),
        None => (word, None),
    };
    let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
        && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    let value_ok = value.is_none_or(|v| v.iter().all(|&b| (33..=126).contains(&b) && b != b'='));
    if key_ok && value_ok {
        Ok((key, value))
    } else {
        Err(Reply::new(501, "5.5.4", "syntax error in parameters"))
    }
}

fn unrecognized() -> Reply {
    Reply::new(555, "5.5.4", "unrecognized parameter")
}

fn duplicate() -> Reply {
    Reply::new(501, "5.5.4", "duplicate parameter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_ignore_case_and_keep_arguments() {
        assert_eq!(parse(b"hElO  x.org "), Command::Helo(b"x.org"));
        assert_eq!(parse(b"EHLO"), Command::Ehlo(b""));
        assert_eq!(parse(b"mail from: <a@b>"), Command::Mail(b"<a@b>"));
        assert_eq!(parse(b"RCPT TO:<a@b> X"), Command::Rcpt(b"<a@b> X"));
        assert_eq!(parse(b"NOOP whatever"), Command::Noop);
        assert_eq!(parse(b"expn list"), Command::NotImplemented);
        assert_eq!(parse(b"MAILFROM:<a@b>"), Command::Unknown);
        assert_eq!(parse(b""), Command::Unknown);
    }

    #[test]
    fn mail_and_rcpt_need_their_keyword() {
        assert!(matches!(parse(b"MAIL <a@b>"), Command::BadSyntax(r) if r.code == 501));
        assert!(matches!(parse(b"RCPT TO:"), Command::BadSyntax(r) if r.code == 501));
    }

    #[test]
    fn mail_parameters() {
        let p = parse_mail_params(b" SIZE=1000 body=8bitmime").unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: BodyType::EightBitMime
            }
        );
        assert_eq!(parse_mail_params(b" SIZE=x").unwrap_err().code, 501);
        let huge = parse_mail_params(b" SIZE=99999999999999999999").unwrap();
        assert_eq!(huge.size, Some(u64::MAX));
        assert_eq!(
            parse_mail_params(b" SIZE=999999999999999999999")
                .unwrap_err()
                .code,
            501
        );
        assert_eq!(parse_mail_params(b" SIZE=1 SIZE=2").unwrap_err().code, 501);
        assert_eq!(
            parse_mail_params(b" BODY=BINARYMIME").unwrap_err().code,
            501
        );
        assert_eq!(parse_mail_params(b" FOO=bar").unwrap_err().code, 555);
        assert_eq!(parse_mail_params(b" =bar").unwrap_err().code, 501);
        assert_eq!(parse_rcpt_params(b" NOTIFY=NEVER").unwrap_err().code, 555);
        assert!(parse_rcpt_params(b"").is_ok());
    }
}
