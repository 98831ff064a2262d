//! The control files qmail-send reads at start (and, for the rewriting
//! rules, again on SIGHUP).

use sqmail_core::bounce::BounceSettings;
use sqmail_core::control::{parse_int, parse_line, parse_list, ControlError, ReadResult};

use crate::scheduler::{Config, Rewriter, VirtualDomains};

/// qmail's conf-spawn: the most deliveries per channel at once.
pub const MAX_CONCURRENCY: u64 = 120;

/// What `sqmail send` runs with.
#[derive(Clone, Debug)]
pub struct SendControls {
    pub scheduler: Config,
    pub bounce: BounceSettings,
}

/// Reads one control file: its bytes, `None` when missing.
pub type Reader<'a> = dyn FnMut(&str) -> ReadResult + 'a;

fn get(read: &mut Reader<'_>, name: &str) -> Result<Option<Vec<u8>>, ControlError> {
    read(name).map_err(|e| ControlError::new(name, 0, e))
}

fn line(read: &mut Reader<'_>, name: &str) -> Result<Option<String>, ControlError> {
    match get(read, name)? {
        Some(bytes) => parse_line(name, &bytes),
        None => Ok(None),
    }
}

fn list(read: &mut Reader<'_>, name: &str) -> Result<Option<Vec<String>>, ControlError> {
    match get(read, name)? {
        Some(bytes) => parse_list(name, &bytes).map(Some),
        None => Ok(None),
    }
}

fn int(read: &mut Reader<'_>, name: &str, default: u64) -> Result<u64, ControlError> {
    match get(read, name)? {
        Some(bytes) => Ok(parse_int(name, &bytes)?.unwrap_or(default)),
        None => Ok(default),
    }
}

/// `me`, which qmail-send cannot run without.
fn me(read: &mut Reader<'_>) -> Result<String, ControlError> {
    line(read, "me")?.ok_or_else(|| ControlError::new("me", 0, "missing: run sqmail setup"))
}

/// `locals` (default `me`), `percenthack`, `virtualdomains`, `envnoathost`.
pub fn load_rewriter(read: &mut Reader<'_>) -> Result<Rewriter, ControlError> {
    let me = me(read)?;
    let locals = list(read, "locals")?.unwrap_or_else(|| vec![me.clone()]);
    let percenthack = list(read, "percenthack")?.unwrap_or_default();
    let virtualdomains = match get(read, "virtualdomains")? {
        Some(bytes) => VirtualDomains::parse("virtualdomains", &bytes)?,
        None => VirtualDomains::default(),
    };
    let envnoathost = line(read, "envnoathost")?.unwrap_or_else(|| me.clone());
    Ok(Rewriter::new(
        &locals,
        &percenthack,
        virtualdomains,
        &envnoathost,
    ))
}

/// Everything qmail-send reads, with qmail's defaults.
pub fn load(read: &mut Reader<'_>) -> Result<SendControls, ControlError> {
    let me = me(read)?;
    let rewriter = load_rewriter(read)?;
    let concurrency = |read: &mut Reader<'_>, name, default| -> Result<usize, ControlError> {
        Ok(int(read, name, default)?.min(MAX_CONCURRENCY) as usize)
    };
    let local = concurrency(read, "concurrencylocal", 10)?;
    let remote = concurrency(read, "concurrencyremote", 20)?;
    let queuelifetime = int(read, "queuelifetime", 604_800)?;
    let bouncefrom = line(read, "bouncefrom")?.unwrap_or_else(|| "MAILER-DAEMON".into());
    let bouncehost = line(read, "bouncehost")?.unwrap_or_else(|| me.clone());
    // s/qmail: an empty first line, or one holding '@', discards double
    // bounces. A missing file is qmail's default, postmaster.
    let doublebounceto = match get(read, "doublebounceto")? {
        None => "postmaster".to_string(),
        Some(bytes) => match parse_line("doublebounceto", &bytes)? {
            Some(to) if !to.contains('@') => to,
            _ => String::new(),
        },
    };
    let doublebouncehost = line(read, "doublebouncehost")?.unwrap_or_else(|| me.clone());
    let max_bytes = Some(int(read, "bouncemaxbytes", 0)?).filter(|&n| n > 0);
    Ok(SendControls {
        scheduler: Config {
            concurrency: [local, remote],
            queuelifetime,
            rewriter,
            doublebounceto: doublebounceto.clone(),
            doublebouncehost: doublebouncehost.clone(),
            express: true,
        },
        bounce: BounceSettings {
            bouncefrom,
            bouncehost,
            doublebounceto,
            doublebouncehost,
            max_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Channel;
    use std::collections::HashMap;

    fn load_from(files: &[(&str, &str)]) -> Result<SendControls, ControlError> {
        let files: HashMap<String, Vec<u8>> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        load(&mut |name| Ok(files.get(name).cloned()))
    }

    #[test]
    fn qmail_defaults_come_from_me() {
        let c = load_from(&[("me", "box.example\n")]).unwrap();
        assert_eq!(c.scheduler.concurrency, [10, 20]);
        assert_eq!(c.scheduler.queuelifetime, 604_800);
        assert_eq!(c.bounce.bouncefrom, "MAILER-DAEMON");
        assert_eq!(c.bounce.bouncehost, "box.example");
        assert_eq!(c.bounce.doublebounceto, "postmaster");
        assert_eq!(c.bounce.doublebouncehost, "box.example");
        assert_eq!(c.bounce.max_bytes, None);
        let (ch, addr) = c.scheduler.rewriter.classify(b"joe");
        assert_eq!(
            (ch, addr.as_slice()),
            (Channel::Local, &b"joe@box.example"[..])
        );
    }

    #[test]
    fn files_override_defaults() {
        let c = load_from(&[
            ("me", "box.example"),
            ("locals", "a.example\n"),
            ("virtualdomains", "v.example:vu\n"),
            ("concurrencylocal", "500"),
            ("concurrencyremote", "3"),
            ("queuelifetime", "3600"),
            ("bouncemaxbytes", "1000"),
            ("doublebounceto", "@"),
        ])
        .unwrap();
        assert_eq!(c.scheduler.concurrency, [120, 3]);
        assert_eq!(c.scheduler.queuelifetime, 3600);
        assert_eq!(c.bounce.max_bytes, Some(1000));
        assert_eq!(c.bounce.doublebounceto, "");
        let r = &c.scheduler.rewriter;
        assert_eq!(r.classify(b"x@box.example").0, Channel::Remote);
        assert_eq!(r.classify(b"x@a.example").0, Channel::Local);
        assert_eq!(r.classify(b"x@v.example").1, b"vu-x@v.example");
    }

    #[test]
    fn errors_name_the_file() {
        let e = load_from(&[]).unwrap_err();
        assert!(e.to_string().contains("me"), "{e}");
        let e = load_from(&[("me", "m"), ("queuelifetime", "soon")]).unwrap_err();
        assert!(e.to_string().contains("queuelifetime"), "{e}");
    }
}
