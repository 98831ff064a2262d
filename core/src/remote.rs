//! qmail-remote's decisions, without I/O: the controls it reads, where a
//! domain's mail goes (`smtproutes`, else its MX hosts), which addresses
//! to try in which order, the texts of failures that happen before any
//! SMTP, and how one SMTP transaction's results become each recipient's.

use std::net::IpAddr;
use std::time::Duration;

use crate::control::{ControlError, ReadResult, Reader};
use crate::dns::{self, Destination, Query};
use crate::smtp::client::{Delivery, Status};
use crate::smtproutes::{Route, SmtpRoutes, SMTP_PORT};

/// What qmail-remote reads from `control/`, afresh for each delivery so an
/// edit takes effect at the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteControls {
    /// `helohost`, else `me`: the name given in EHLO/HELO.
    pub helohost: String,
    /// `timeoutconnect` (default 60 s).
    pub timeout_connect: Duration,
    /// `timeoutremote` (default 1200 s), for each reply awaited.
    pub timeout_remote: Duration,
    /// `outgoingip`: the local address connections come from.
    pub outgoing_ip: Option<IpAddr>,
    pub routes: SmtpRoutes,
}

impl RemoteControls {
    /// Loads the controls through `read(name)` (the file's bytes, `None`
    /// when absent); errors name the file and line.
    pub fn load_with(read: &mut dyn FnMut(&str) -> ReadResult) -> Result<Self, ControlError> {
        let mut files = Reader::new(read);
        let me = files.line("me")?;
        let helohost = files
            .line("helohost")?
            .or(me)
            .ok_or_else(|| ControlError::new("me", 0, "neither helohost nor me is set"))?;
        let outgoing_ip = match files.line("outgoingip")? {
            Some(ip) => Some(ip.parse().map_err(|_| {
                ControlError::new("outgoingip", 1, format!("not an IP address: {ip:?}"))
            })?),
            None => None,
        };
        // 0 would time out at once; qmail's tools treat it as 1 too.
        let mut seconds = |name: &str, default: u64| -> Result<Duration, ControlError> {
            Ok(Duration::from_secs(files.int(name, default)?.max(1)))
        };
        let timeout_connect = seconds("timeoutconnect", 60)?;
        let timeout_remote = seconds("timeoutremote", 1200)?;
        let routes = match files.bytes("smtproutes")? {
            Some(bytes) => SmtpRoutes::parse(&bytes)?,
            None => SmtpRoutes::default(),
        };
        Ok(RemoteControls {
            helohost,
            timeout_connect,
            timeout_remote,
            outgoing_ip,
            routes,
        })
    }
}

/// Where the mail for one domain goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Look this up and connect to what it gives, on `port`. `relay` is an
    /// `smtproutes` host, which is never checked against our own addresses.
    Lookup {
        query: Query,
        port: u16,
        relay: bool,
    },
    /// An address literal: that address, nothing to look up.
    Literal { ip: IpAddr, port: u16 },
}

/// The target for `domain` by `smtproutes` (else its MX hosts on
/// `mx_port`, which is 25 except in tests), or why it has none.
pub fn target(routes: &SmtpRoutes, domain: &str, mx_port: u16) -> Result<Target, Delivery> {
    match routes.lookup(domain) {
        None | Some(Route::Mx) => match literal(domain) {
            Some(ip) => Ok(Target::Literal { ip, port: mx_port }),
            None => Ok(Target::Lookup {
                query: Query::Mx(domain.to_string()),
                port: mx_port,
                relay: false,
            }),
        },
        Some(Route::Relay {
            auth: Some(_),
            host,
            ..
        }) => Err(failed(
            Status::Temporary,
            format!(
                "control/smtproutes asks for SMTP AUTH at {host}, \
                 which this sqmail does not speak yet. (#4.3.0)\n"
            ),
        )),
        // A relay may be a bare address too, as s/qmail sites write it.
        Some(Route::Relay { host, port, .. }) => Ok(match literal(host).or(host.parse().ok()) {
            Some(ip) => Target::Literal { ip, port: *port },
            None => Target::Lookup {
                query: Query::Host(host.clone()),
                port: *port,
                relay: true,
            },
        }),
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3).
fn literal(host: &str) -> Option<IpAddr> {
    let inner = host.strip_prefix('[')?.strip_suffix(']')?;
    let inner = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse().ok()
}

/// The addresses to try, in order. As qmail-remote: when one of our own
/// addresses (`is_me`) is among a domain's MX hosts, only better MX hosts
/// are used, and none being better is a permanent failure (a mail loop
/// otherwise). Relays, and ports other than SMTP's, are not checked: the
/// peer there is some other server.
pub fn addresses(
    destinations: &[Destination],
    target: &Target,
    is_me: &dyn Fn(IpAddr) -> bool,
) -> Result<Vec<IpAddr>, Delivery> {
    let checked = matches!(
        target,
        Target::Lookup {
            relay: false,
            port: SMTP_PORT,
            ..
        }
    );
    let mine = destinations
        .iter()
        .filter(|d| checked && d.addrs.iter().any(|&ip| is_me(ip)))
        .map(|d| d.preference)
        .min();
    let usable: Vec<IpAddr> = destinations
        .iter()
        .filter(|d| mine.is_none_or(|me| d.preference < me))
        .flat_map(|d| d.addrs.iter().copied())
        .collect();
    if mine.is_some() && usable.is_empty() {
        return Err(failed(
            Status::Permanent,
            "Sorry. Although I'm listed as a best-preference MX or A for that host,\n\
             it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n"
                .into(),
        ));
    }
    Ok(usable)
}

/// A failed lookup of `host`, in qmail-remote's words.
pub fn dns_failure(host: &str, error: &dns::Error) -> Delivery {
    match error {
        dns::Error::NotFound => failed(
            Status::Permanent,
            format!("Sorry, I couldn't find any host named {host}. (#5.1.2)\n"),
        ),
        dns::Error::NullMx => failed(
            Status::Permanent,
            format!("Sorry, {host} says it accepts no mail (null MX, RFC 7505). (#5.1.10)\n"),
        ),
        dns::Error::Temporary(_) => failed(
            Status::Temporary,
            "Sorry, I couldn't find any host by that name. (#4.1.2)\n".into(),
        ),
    }
}

/// Every address was skipped (tcpto) or refused the connection.
pub fn no_connection() -> Delivery {
    failed(
        Status::Temporary,
        "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n".into(),
    )
}

/// `outgoingip` is not an address of this machine.
pub fn cannot_bind(ip: IpAddr) -> Delivery {
    failed(
        Status::Temporary,
        format!("System can't bind to local ip address: {ip}. (#4.3.0)\n"),
    )
}

/// The message could not be read from the queue.
pub fn unreadable() -> Delivery {
    failed(
        Status::Temporary,
        "Unable to read message. (#4.3.0)\n".into(),
    )
}

/// A failure of the whole message before any recipient was tried.
fn failed(status: Status, text: String) -> Delivery {
    Delivery::whole(status, text)
}

/// Each of `count` recipients' result, as qmail-rspawn reads the report:
/// a recipient the server refused has its own; one it accepted shares the
/// message's (delivered only if the message was); when the transaction
/// failed before the recipients were tried, all share the message's.
pub fn per_recipient(delivery: &Delivery, count: usize) -> Vec<(Status, &str)> {
    let message = (delivery.message.0, delivery.message.1.as_str());
    if delivery.recipients.len() != count {
        return vec![message; count];
    }
    delivery
        .recipients
        .iter()
        .map(|(status, text)| match status {
            Status::Accepted => message,
            refused => (*refused, text.as_str()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<'a>(files: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> ReadResult + 'a {
        move |name| {
            Ok(files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| text.as_bytes().to_vec()))
        }
    }

    #[test]
    fn controls_default_as_qmail_remote() {
        let c = RemoteControls::load_with(&mut read(&[("me", "mx.example\n")])).unwrap();
        assert_eq!(c.helohost, "mx.example");
        assert_eq!(c.timeout_connect, Duration::from_secs(60));
        assert_eq!(c.timeout_remote, Duration::from_secs(1200));
        assert_eq!(c.outgoing_ip, None);
        assert_eq!(c.routes, SmtpRoutes::default());
        let c = RemoteControls::load_with(&mut read(&[
            ("me", "mx.example"),
            ("helohost", "out.example"),
            ("timeoutconnect", "5"),
            ("timeoutremote", "0"),
            ("outgoingip", "192.0.2.9"),
        ]))
        .unwrap();
        assert_eq!(c.helohost, "out.example");
        assert_eq!(c.timeout_connect, Duration::from_secs(5));
        assert_eq!(c.timeout_remote, Duration::from_secs(1));
        assert_eq!(c.outgoing_ip, Some("192.0.2.9".parse().unwrap()));
    }

    #[test]
    fn bad_controls_name_their_file_and_line() {
        let e = RemoteControls::load_with(&mut read(&[])).unwrap_err();
        assert_eq!(e.file, "me");
        let e = RemoteControls::load_with(&mut read(&[("me", "a"), ("outgoingip", "nowhere")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "control/outgoingip:1: not an IP address: \"nowhere\""
        );
        let e = RemoteControls::load_with(&mut read(&[("me", "a"), ("smtproutes", "x\n")]))
            .unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("smtproutes", 1));
    }

    #[test]
    fn targets_follow_smtproutes_then_mx() {
        let routes = SmtpRoutes::parse(
            b"relayed.example:smtp.isp.example:2525\n\
              lit.example:[192.0.2.5]\n\
              bare.example:192.0.2.6;2526\n\
              mx.example:\n\
              auth.example:smtp.isp.example|u|p\n",
        )
        .unwrap();
        let t = |d| target(&routes, d, 25);
        assert_eq!(
            t("relayed.example").unwrap(),
            Target::Lookup {
                query: Query::Host("smtp.isp.example".into()),
                port: 2525,
                relay: true
            }
        );
        assert_eq!(
            t("lit.example").unwrap(),
            Target::Literal {
                ip: "192.0.2.5".parse().unwrap(),
                port: 25
            }
        );
        assert_eq!(
            t("bare.example").unwrap(),
            Target::Literal {
                ip: "192.0.2.6".parse().unwrap(),
                port: 2526
            }
        );
        for d in ["mx.example", "other.example"] {
            assert_eq!(
                t(d).unwrap(),
                Target::Lookup {
                    query: Query::Mx(d.into()),
                    port: 25,
                    relay: false
                }
            );
        }
        assert_eq!(
            target(&routes, "[IPv6:2001:db8::1]", 2526).unwrap(),
            Target::Literal {
                ip: "2001:db8::1".parse().unwrap(),
                port: 2526
            }
        );
        let deferred = t("auth.example").unwrap_err();
        assert_eq!(deferred.message.0, Status::Temporary);
    }

    fn dest(preference: u16, ips: &[&str]) -> Destination {
        Destination {
            host: format!("mx{preference}.example"),
            preference,
            addrs: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_host_listed_as_its_own_mx_uses_only_better_ones() {
        let mx = Target::Lookup {
            query: Query::Mx("d.example".into()),
            port: SMTP_PORT,
            relay: false,
        };
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        let is_me = move |ip: IpAddr| ip == me;
        let dests = [
            dest(5, &["192.0.2.5", "2001:db8::5"]),
            dest(10, &["192.0.2.1"]),
            dest(20, &["192.0.2.20"]),
        ];
        let ips = addresses(&dests, &mx, &is_me).unwrap();
        assert_eq!(
            ips,
            [
                "192.0.2.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        let looping = addresses(&dests[1..], &mx, &is_me).unwrap_err();
        assert_eq!(looping.message.0, Status::Permanent);
        assert!(looping.message.1.ends_with("(#5.4.6)\n"));
        // A relay, or another port, is some other server.
        let relay = Target::Lookup {
            query: Query::Host("r.example".into()),
            port: SMTP_PORT,
            relay: true,
        };
        assert_eq!(addresses(&dests[1..], &relay, &is_me).unwrap().len(), 2);
        let test_port = Target::Lookup {
            query: Query::Mx("d.example".into()),
            port: 2525,
            relay: false,
        };
        assert_eq!(addresses(&dests[1..], &test_port, &is_me).unwrap().len(), 2);
    }

    #[test]
    fn dns_failures_read_as_qmail_remote_says_them() {
        let gone = dns_failure("nx.example", &dns::Error::NotFound);
        assert_eq!(
            gone.message,
            (
                Status::Permanent,
                "Sorry, I couldn't find any host named nx.example. (#5.1.2)\n".to_string()
            )
        );
        assert_eq!(
            dns_failure("n.example", &dns::Error::NullMx).message.0,
            Status::Permanent
        );
        let later = dns_failure("t.example", &dns::Error::Temporary("SERVFAIL".into()));
        assert_eq!(later.message.0, Status::Temporary);
        assert!(later
            .report()
            .starts_with(b"ZSorry, I couldn't find any host by that name."));
    }

    #[test]
    fn recipients_share_the_message_result_unless_refused() {
        let d = Delivery {
            recipients: vec![
                (Status::Accepted, String::new()),
                (Status::Permanent, "no such user".into()),
                (Status::Temporary, "mailbox busy".into()),
            ],
            message: (Status::Accepted, "accepted message".into()),
        };
        assert_eq!(
            per_recipient(&d, 3),
            [
                (Status::Accepted, "accepted message"),
                (Status::Permanent, "no such user"),
                (Status::Temporary, "mailbox busy")
            ]
        );
        let early = no_connection();
        assert_eq!(
            per_recipient(&early, 2),
            [(Status::Temporary, early.message.1.as_str()); 2]
        );
    }
}
