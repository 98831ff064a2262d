//! `Received:` lines as qmail writes them (`received.c`, `qmail-queue.c`,
//! `date822fmt.c`), byte for byte, so that tools which parse qmail's
//! headers keep working. Lines end in LF: the queue stores LF.

use crate::conn::ConnInfo;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (H. Hinnant's `civil_from_days`); exact for every `i64` day.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// qmail's `date822fmt`: `"26 Sep 1995 04:46:54 -0000"`, always UTC, day
/// not zero-padded, no weekday (the trailing newline qmail adds is left to
/// the callers here).
pub fn rfc822_date(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS[(month as usize).saturating_sub(1) % 12];
    format!(
        "{day} {month_name} {year} {:02}:{:02}:{:02} -0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The bytes qmail's `safeput` lets through; everything else, including
/// each byte of a non-ASCII character, becomes `?`. Keeps a hostile HELO or
/// ident reply from forging header structure.
fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".@%+/=:-[]".contains(&b)
}

fn safe_push(out: &mut String, text: &str) {
    out.extend(
        text.bytes()
            .map(|b| if is_safe(b) { char::from(b) } else { '?' }),
    );
}

/// qmail-smtpd's `Received:` line:
///
/// ```text
/// Received: from REMOTEHOST (HELO helo) (INFO@REMOTEIP)
///   by LOCALHOST with PROTOCOL; DATE
/// ```
///
/// `helo` is what the client said in HELO/EHLO, empty if it said
/// nothing; the `(HELO ...)` part appears only when it differs (ignoring
/// ASCII case) from the remote host name, as in qmail, where the name
/// defaults to `unknown`. `protocol` is `SMTP`, `ESMTP`, or an RFC 3848
/// value such as `ESMTPS`/`ESMTPA`.
pub fn smtp_received(conn: &ConnInfo, helo: &str, protocol: &str, unix_secs: i64) -> String {
    let remote_host = conn.remote_host.as_deref().unwrap_or("unknown");
    let remote_ip = non_empty(&conn.remote_ip).unwrap_or("unknown");
    let local = conn
        .local_host
        .as_deref()
        .or_else(|| non_empty(&conn.local_ip))
        .unwrap_or("unknown");
    let mut out = String::from("Received: from ");
    safe_push(&mut out, remote_host);
    if !helo.is_empty() && !helo.eq_ignore_ascii_case(remote_host) {
        out.push_str(" (HELO ");
        safe_push(&mut out, helo);
        out.push(')');
    }
    out.push_str(" (");
    if let Some(info) = &conn.remote_info {
        safe_push(&mut out, info);
        out.push('@');
    }
    safe_push(&mut out, remote_ip);
    out.push_str(")\n  by ");
    safe_push(&mut out, local);
    out.push_str(" with ");
    safe_push(&mut out, protocol);
    out.push_str("; ");
    out.push_str(&rfc822_date(unix_secs));
    out.push('\n');
    out
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Who ran qmail-queue, which decides the wording of its `Received:` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invoker {
    /// uid of `alias`: "invoked by alias".
    Alias,
    /// uid of `qmaild` (the network daemons): "invoked from network".
    Network,
    /// uid of `qmails` (qmail-send's bounces): "invoked for bounce".
    Bounce,
    /// Anyone else: "invoked by uid N".
    Uid(u32),
}

/// qmail-queue's own line: `Received: (qmail PID invoked ...); DATE`.
pub fn queue_received(pid: u32, invoker: Invoker, unix_secs: i64) -> String {
    let how = match invoker {
        Invoker::Alias => "by alias".to_string(),
        Invoker::Network => "from network".to_string(),
        Invoker::Bounce => "for bounce".to_string(),
        Invoker::Uid(uid) => format!("by uid {uid}"),
    };
    format!(
        "Received: (qmail {pid} invoked {how}); {}\n",
        rfc822_date(unix_secs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates() {
        let cases: &[(i64, &str)] = &[
            (0, "1 Jan 1970 00:00:00 -0000"),
            (812_090_814, "26 Sep 1995 04:46:54 -0000"),
            (951_782_400, "29 Feb 2000 00:00:00 -0000"),
            (1_700_000_000, "14 Nov 2023 22:13:20 -0000"),
            (1_795_452_153, "23 Nov 2026 16:42:33 -0000"),
            (4_133_980_799, "31 Dec 2100 23:59:59 -0000"),
            (-1, "31 Dec 1969 23:59:59 -0000"),
            (-2_208_988_800, "1 Jan 1900 00:00:00 -0000"),
        ];
        for &(t, want) in cases {
            assert_eq!(rfc822_date(t), want, "{t}");
        }
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            remote_ip: "192.48.96.5".into(),
            remote_host: Some("relay1.uu.net".into()),
            remote_info: Some("7".into()),
            local_ip: "10.0.0.1".into(),
            local_host: Some("silverton.berkeley.edu".into()),
            relay_client: None,
            recipients_450: false,
        }
    }

    #[test]
    fn received_like_qmails_example() {
        // The example in qmail's received.c.
        assert_eq!(
            smtp_received(&conn(), "uunet.uu.net", "SMTP", 812_090_814),
            "Received: from relay1.uu.net (HELO uunet.uu.net) (7@192.48.96.5)\n  \
             by silverton.berkeley.edu with SMTP; 26 Sep 1995 04:46:54 -0000\n"
        );
    }

    #[test]
    fn helo_part_only_when_different() {
        let r = smtp_received(&conn(), "RELAY1.uu.net", "ESMTP", 0);
        assert!(
            r.starts_with("Received: from relay1.uu.net (7@192.48.96.5)\n"),
            "{r}"
        );
        let r = smtp_received(&conn(), "", "ESMTP", 0);
        assert!(
            r.starts_with("Received: from relay1.uu.net (7@192.48.96.5)\n"),
            "{r}"
        );
    }

    #[test]
    fn unknown_defaults() {
        let c = ConnInfo::default();
        assert_eq!(
            smtp_received(&c, "client.example", "ESMTPS", 0),
            "Received: from unknown (HELO client.example) (unknown)\n  \
             by unknown with ESMTPS; 1 Jan 1970 00:00:00 -0000\n"
        );
        // `HELO unknown` from a host without rDNS shows no HELO part.
        assert!(
            smtp_received(&c, "UNKNOWN", "SMTP", 0).starts_with("Received: from unknown (unknown)")
        );
        // TCPLOCALIP stands in for a missing TCPLOCALHOST.
        let c = ConnInfo {
            local_ip: "10.0.0.1".into(),
            ..ConnInfo::default()
        };
        assert!(smtp_received(&c, "", "SMTP", 0).contains("\n  by 10.0.0.1 with SMTP; "));
    }

    #[test]
    fn unsafe_bytes_become_question_marks() {
        let c = ConnInfo {
            remote_info: Some("ev il\r\n".into()),
            ..conn()
        };
        let r = smtp_received(&c, "x\r\nBcc: a@b (c)\té", "ESMTP", 0);
        assert!(
            r.starts_with(
                "Received: from relay1.uu.net (HELO x??Bcc:?a@b??c????) (ev?il??@192.48.96.5)\n"
            ),
            "{r}"
        );
    }

    #[test]
    fn queue_lines() {
        let t = 812_090_814;
        let d = "26 Sep 1995 04:46:54 -0000";
        assert_eq!(
            queue_received(4321, Invoker::Alias, t),
            format!("Received: (qmail 4321 invoked by alias); {d}\n")
        );
        assert_eq!(
            queue_received(1, Invoker::Network, t),
            format!("Received: (qmail 1 invoked from network); {d}\n")
        );
        assert_eq!(
            queue_received(2, Invoker::Bounce, t),
            format!("Received: (qmail 2 invoked for bounce); {d}\n")
        );
        assert_eq!(
            queue_received(3, Invoker::Uid(1000), t),
            format!("Received: (qmail 3 invoked by uid 1000); {d}\n")
        );
    }

    proptest! {
        #[test]
        fn dates_never_panic_and_have_the_shape(t: i64) {
            let d = rfc822_date(t);
            prop_assert!(d.ends_with(" -0000"));
        }

        #[test]
        fn dates_roundtrip_days(t in -100_000_000_000i64..100_000_000_000) {
            // Consecutive days differ by exactly one calendar day.
            let (y1, m1, d1) = civil_from_days(t.div_euclid(86_400));
            let (y2, m2, d2) = civil_from_days(t.div_euclid(86_400) + 1);
            prop_assert!(
                (y1, m1, d1 + 1) == (y2, m2, d2)
                    || (y1, m1 + 1, 1) == (y2, m2, d2)
                    || (y1 + 1, 1, 1) == (y2, m2, d2)
            );
        }

        #[test]
        fn received_is_two_lines(helo in "\\PC{0,30}", host in proptest::option::of("\\PC{0,30}"),
                                 info in proptest::option::of("\\PC{0,10}")) {
            let c = ConnInfo { remote_host: host, remote_info: info, ..conn() };
            let r = smtp_received(&c, &helo, "ESMTP", 0);
            prop_assert_eq!(r.matches('\n').count(), 2);
            prop_assert!(r.is_ascii());
            prop_assert!(!r.contains('\r'));
        }
    }
}
