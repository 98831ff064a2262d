//! qmail's control files (`$QMAILHOME/control/*`), parsed from text.
//!
//! The host reads the files; this module only interprets their bytes, with
//! qmail's rules (`control.c`): list files skip blank and `#` lines, every
//! line loses its trailing blanks, single-line files use their first line.
//!
//! Deliberate differences from qmail 1.03, all of them turning a silent
//! misreading into either the evidently intended value or a loud error:
//! - a trailing `\r` counts as whitespace (qmail keeps it, so a file saved
//!   with CRLF line ends silently never matches);
//! - an empty single-line file falls back to its default, as an absent one
//!   does (qmail would use the empty string, e.g. a greeting of `220  ESMTP`);
//! - an integer file that is not a plain decimal number is an error (qmail
//!   reads the leading digits and silently keeps the default for garbage);
//! - a NUL byte or invalid UTF-8 is an error (qmail would split the line).

use std::fmt;

/// A control file could not be used. `line` is 1-based; 0 when the problem
/// is not tied to a line (a missing required file, an unreadable file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// The file's name below `control/` (`"rcpthosts"`), a path if it
    /// contains a `/`, or empty when the caller knows the name and will fill it in.
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl ControlError {
    pub fn new(file: &str, line: usize, message: impl Into<String>) -> Self {
        ControlError {
            file: file.to_string(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            write!(f, "line {}: {}", self.line, self.message)
        } else if self.file.contains('/') {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "control/{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for ControlError {}

/// Strips what qmail's `striptrailingwhitespace` strips, plus `\r`.
fn strip_trailing(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &line[..end]
}

/// One line as text, or the error naming it.
fn line_text<'a>(file: &str, number: usize, line: &'a [u8]) -> Result<&'a str, ControlError> {
    if line.contains(&0) {
        return Err(ControlError::new(file, number, "NUL byte in line"));
    }
    std::str::from_utf8(line).map_err(|_| ControlError::new(file, number, "invalid UTF-8"))
}

/// A list file (qmail `control_readfile`): one entry per line, trailing
/// whitespace stripped, empty lines and lines starting with `#` skipped.
/// Leading whitespace is kept, as in qmail.
pub fn parse_list(file: &str, contents: &[u8]) -> Result<Vec<String>, ControlError> {
    let mut out = Vec::new();
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let line = line_text(file, i + 1, strip_trailing(raw))?;
        if !line.is_empty() && !line.starts_with('#') {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// A single-line file (qmail `control_readline`): the first line with
/// trailing whitespace stripped; `None` when that is empty.
pub fn parse_line(file: &str, contents: &[u8]) -> Result<Option<String>, ControlError> {
    let first = contents.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line_text(file, 1, strip_trailing(first))?;
    Ok((!line.is_empty()).then(|| line.to_string()))
}

/// An integer file (qmail `control_readint`): the first line must be a
/// decimal number; `None` when the file's first line is empty.
pub fn parse_int(file: &str, contents: &[u8]) -> Result<Option<u64>, ControlError> {
    let Some(line) = parse_line(file, contents)? else {
        return Ok(None);
    };
    if !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ControlError::new(
            file,
            1,
            format!("not a number: {line:?}"),
        ));
    }
    line.parse()
        .map(Some)
        .map_err(|_| ControlError::new(file, 1, format!("number too large: {line}")))
}

/// qmail's `scan_ulong` as used on `$DATABYTES`: the leading decimal
/// digits, 0 when there are none (saturating instead of wrapping).
pub fn scan_ulong(s: &str) -> u64 {
    s.bytes().take_while(u8::is_ascii_digit).fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// What the host's reader returns for one file: its bytes, `None` when it
/// does not exist, or a description of why it could not be read.
pub type ReadResult = Result<Option<Vec<u8>>, String>;

/// Control files through the host's reader, each with qmail's parser;
/// errors name the file.
pub struct Reader<'a> {
    read: &'a mut dyn FnMut(&str) -> ReadResult,
}

impl<'a> Reader<'a> {
    pub fn new(read: &'a mut dyn FnMut(&str) -> ReadResult) -> Self {
        Reader { read }
    }

    /// The file's bytes, `None` when it does not exist.
    pub fn bytes(&mut self, name: &str) -> Result<Option<Vec<u8>>, ControlError> {
        (self.read)(name).map_err(|e| ControlError::new(name, 0, e))
    }

    pub fn line(&mut self, name: &str) -> Result<Option<String>, ControlError> {
        match self.bytes(name)? {
            Some(bytes) => parse_line(name, &bytes),
            None => Ok(None),
        }
    }

    pub fn list(&mut self, name: &str) -> Result<Option<Vec<String>>, ControlError> {
        match self.bytes(name)? {
            Some(bytes) => parse_list(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// An integer file, `default` when absent or empty.
    pub fn int(&mut self, name: &str, default: u64) -> Result<u64, ControlError> {
        match self.bytes(name)? {
            Some(bytes) => Ok(parse_int(name, &bytes)?.unwrap_or(default)),
            None => Ok(default),
        }
    }
}

/// Everything qmail-smtpd reads from `control/` (qmail-smtpd.c `setup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpdControls {
    /// `me`; optional for qmail-smtpd, which needs it only as a default.
    pub me: Option<String>,
    /// `smtpgreeting`, else `me`. Sent after `220 ` (then ` ESMTP`).
    pub smtpgreeting: String,
    /// `localiphost`, else `me`; `None` turns the `box@[ip]` rewrite off.
    pub localiphost: Option<String>,
    /// `rcpthosts` lines. `None` (no file) means qmail 1.03's behaviour of
    /// accepting every recipient; an existing empty file accepts none.
    pub rcpthosts: Option<Vec<String>>,
    /// `badmailfrom` lines (absent = empty).
    pub badmailfrom: Vec<String>,
    /// `databytes`, or `$DATABYTES`; 0 means unlimited.
    pub databytes: u64,
    /// `timeoutsmtpd` in seconds (default 1200; 0 becomes 1 as in qmail).
    pub timeoutsmtpd: u64,
}

impl SmtpdControls {
    /// Loads the controls through `read("rcpthosts")`, which returns the
    /// file's text or `None` if it does not exist.
    pub fn load(read: &mut dyn FnMut(&str) -> Option<String>) -> Result<Self, ControlError> {
        Self::load_with(&mut |name| Ok(read(name).map(String::into_bytes)))
    }

    /// Like [`SmtpdControls::load`], over raw bytes and with read errors,
    /// so invalid UTF-8 and unreadable files are reported with their name.
    pub fn load_with(read: &mut dyn FnMut(&str) -> ReadResult) -> Result<Self, ControlError> {
        let mut files = Reader::new(read);
        let me = files.line("me")?;
        let smtpgreeting = files
            .line("smtpgreeting")?
            .or_else(|| me.clone())
            .ok_or_else(|| {
                ControlError::new("smtpgreeting", 0, "neither smtpgreeting nor me is set")
            })?;
        let localiphost = files.line("localiphost")?.or_else(|| me.clone());
        let rcpthosts = files.list("rcpthosts")?;
        let badmailfrom = files.list("badmailfrom")?.unwrap_or_default();
        let databytes = files.int("databytes", 0)?;
        let timeoutsmtpd = files.int("timeoutsmtpd", 1200)?.max(1);
        Ok(SmtpdControls {
            me,
            smtpgreeting,
            localiphost,
            rcpthosts,
            badmailfrom,
            databytes,
            timeoutsmtpd,
        })
    }

    /// Applies `$DATABYTES`, which overrides `control/databytes`; parsed
    /// as qmail does (leading digits, none at all means 0 = unlimited).
    pub fn apply_databytes_env(&mut self, value: &str) {
        self.databytes = scan_ulong(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn load(files: &[(&str, &str)]) -> Result<SmtpdControls, ControlError> {
        let map: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SmtpdControls::load(&mut |name| map.get(name).cloned())
    }

    #[test]
    fn error_display_names_file_and_line() {
        let e = ControlError::new("rcpthosts", 3, "NUL byte in line");
        assert_eq!(e.to_string(), "control/rcpthosts:3: NUL byte in line");
        let e = ControlError::new("/etc/tcp.smtp", 2, "bad");
        assert_eq!(e.to_string(), "/etc/tcp.smtp:2: bad");
        let e = ControlError::new("", 2, "bad");
        assert_eq!(e.to_string(), "line 2: bad");
    }

    #[test]
    fn list_skips_comments_and_blank_lines() {
        let text =
            b"# comment\nexample.com  \n\n\t\n.example.net\t\n  # kept: not at column 0\nlast";
        assert_eq!(
            parse_list("rcpthosts", text).unwrap(),
            vec![
                "example.com",
                ".example.net",
                "  # kept: not at column 0",
                "last"
            ]
        );
    }

    #[test]
    fn list_strips_crlf() {
        assert_eq!(
            parse_list("rcpthosts", b"a.example\r\nb.example\r\n").unwrap(),
            vec!["a.example", "b.example"]
        );
    }

    #[test]
    fn list_rejects_nul_and_bad_utf8_with_line() {
        let e = parse_list("badmailfrom", b"ok\nb\0d\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("badmailfrom", 2));
        let e = parse_list("rcpthosts", b"a\nb\nc\xff\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("rcpthosts", 3));
    }

    #[test]
    fn single_line_takes_first_line() {
        assert_eq!(
            parse_line("me", b"mx.example.com \nignored\n").unwrap(),
            Some("mx.example.com".into())
        );
        assert_eq!(parse_line("me", b"").unwrap(), None);
        assert_eq!(parse_line("me", b"  \n").unwrap(), None);
        // Only the first line matters, as in qmail.
        assert_eq!(parse_line("me", b"x\n\xff").unwrap(), Some("x".into()));
    }

    #[test]
    fn integers() {
        assert_eq!(parse_int("databytes", b"1000 \n").unwrap(), Some(1000));
        assert_eq!(parse_int("databytes", b"").unwrap(), None);
        for bad in [&b"10k"[..], b"-1", b" 5", b"+5", b"99999999999999999999999"] {
            let e = parse_int("databytes", bad).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("databytes", 1), "{bad:?}");
        }
    }

    #[test]
    fn scan_ulong_is_lenient_like_qmail() {
        assert_eq!(scan_ulong("1000"), 1000);
        assert_eq!(scan_ulong("1000abc"), 1000);
        assert_eq!(scan_ulong("abc"), 0);
        assert_eq!(scan_ulong(""), 0);
        assert_eq!(scan_ulong("99999999999999999999999"), u64::MAX);
    }

    #[test]
    fn smtpd_defaults_come_from_me() {
        let c = load(&[("me", "mx.example.com\n")]).unwrap();
        assert_eq!(
            c,
            SmtpdControls {
                me: Some("mx.example.com".into()),
                smtpgreeting: "mx.example.com".into(),
                localiphost: Some("mx.example.com".into()),
                rcpthosts: None,
                badmailfrom: vec![],
                databytes: 0,
                timeoutsmtpd: 1200,
            }
        );
    }

    #[test]
    fn smtpd_reads_every_file() {
        let c = load(&[
            ("me", "mx.example.com"),
            ("smtpgreeting", "hello there\n"),
            ("localiphost", "example.com\n"),
            ("rcpthosts", "example.com\n.example.com\n"),
            ("badmailfrom", "spam@example.net\n@spam.example\n"),
            ("databytes", "10000000\n"),
            ("timeoutsmtpd", "0\n"),
        ])
        .unwrap();
        assert_eq!(c.smtpgreeting, "hello there");
        assert_eq!(c.localiphost.as_deref(), Some("example.com"));
        assert_eq!(c.rcpthosts.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.badmailfrom.len(), 2);
        assert_eq!(c.databytes, 10_000_000);
        assert_eq!(c.timeoutsmtpd, 1, "qmail turns a timeout of 0 into 1");
    }

    #[test]
    fn greeting_needs_me_or_smtpgreeting() {
        let e = load(&[]).unwrap_err();
        assert_eq!(e.file, "smtpgreeting");
        let c = load(&[("smtpgreeting", "hi")]).unwrap();
        assert_eq!((c.me, c.localiphost), (None, None));
        let c = load(&[("me", "m"), ("smtpgreeting", "\n")]).unwrap();
        assert_eq!(c.smtpgreeting, "m");
    }

    #[test]
    fn existing_empty_rcpthosts_is_not_absent() {
        let c = load(&[("me", "m"), ("rcpthosts", "# nothing\n")]).unwrap();
        assert_eq!(c.rcpthosts, Some(vec![]));
    }

    #[test]
    fn bad_integer_file_fails_load() {
        let e = load(&[("me", "m"), ("databytes", "lots")]).unwrap_err();
        assert_eq!(e.to_string(), "control/databytes:1: not a number: \"lots\"");
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = SmtpdControls::load_with(&mut |name| {
            if name == "rcpthosts" {
                Err("permission denied".into())
            } else {
                Ok(Some(b"m".to_vec()))
            }
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "control/rcpthosts:0: permission denied");
    }

    #[test]
    fn databytes_env_overrides() {
        let mut c = load(&[("me", "m"), ("databytes", "5")]).unwrap();
        c.apply_databytes_env("20000");
        assert_eq!(c.databytes, 20000);
        c.apply_databytes_env("junk");
        assert_eq!(c.databytes, 0);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_list("x", &bytes);
            let _ = parse_line("x", &bytes);
            let _ = parse_int("x", &bytes);
        }

        #[test]
        fn list_entries_are_clean(lines in proptest::collection::vec("[ -~\t]{0,20}", 0..10)) {
            let text = lines.join("\n");
            for entry in parse_list("x", text.as_bytes()).unwrap() {
                prop_assert!(!entry.is_empty());
                prop_assert!(!entry.starts_with('#'));
                prop_assert!(!entry.ends_with([' ', '\t']));
            }
        }
    }
}
