//! `sqmail smtpd` (qmail-smtpd): one session on stdin/stdout under
//! tcpserver or sslserver, or, with `--listen`, a daemon serving many
//! connections with tcpserver's access rules built in.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use sqmail_core::conn::ConnInfo;
use sqmail_core::control::scan_ulong;
use sqmail_core::service::{Admission, Runtime, ServeLimits, SessionFactory, Shutdown};
use sqmail_core::smtp::reception::Reception;
use sqmail_core::smtp::Config;
use sqmail_core::tcprules;
use sqmail_queue::cdbmap::CdbMap;
use sqmail_queue::sink::Target;

use crate::cli::HomeArgs;
use crate::controls::{self, ControlCache};
use crate::home::Home;
use crate::runtime::Chosen;
use crate::signals;
use crate::store::QueueStore;

#[derive(Args, Debug)]
pub struct SmtpdArgs {
    #[command(flatten)]
    home: HomeArgs,
    /// Serve as a daemon on this address (IPv4 or [IPv6]:port); may be
    /// given more than once. Without it, one session on stdin/stdout.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// tcprules database (as `tcpserver -x`): allow or deny by client
    /// address, and set RELAYCLIENT or DATABYTES per client.
    #[arg(short = 'x', long = "rules", value_name = "CDB")]
    rules: Option<PathBuf>,
    /// Connections served at once (tcpserver -c).
    #[arg(long, default_value_t = 1000)]
    max_connections: usize,
    /// Connections from one IP address at once.
    #[arg(long, default_value_t = 50)]
    max_per_ip: usize,
    /// Threads that commit messages (write, fsync) off the event loop.
    /// Concurrent fsyncs share ext4 journal commits, so more than the
    /// number of cores raises the accept rate; they mostly sleep.
    #[arg(long, default_value_t = ServeLimits::default().blocking_threads)]
    commit_threads: usize,
    /// s/qmail's `checkpassword subprogram` for SMTP AUTH. Accepted so that
    /// existing run scripts start; AUTH itself is not offered yet.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    auth_program: Vec<String>,
}

pub fn main(args: SmtpdArgs) -> ExitCode {
    let home = args.home.home();
    if !args.auth_program.is_empty() {
        eprintln!(
            "sqmail smtpd: warning: SMTP AUTH is not offered yet; ignoring {:?}",
            args.auth_program
        );
    }
    let result = if args.listen.is_empty() {
        ucspi(&home)
    } else {
        daemon(&home, &args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sqmail smtpd: {e}");
            ExitCode::from(111)
        }
    }
}

/// Where messages go: `$QMAILQUEUE` if set, else the queue itself.
fn injection_target(home: &Home) -> Result<Arc<Target>, String> {
    Target::from_env(home.path())
        .map(Arc::new)
        .map_err(|e| format!("{}/queue: {}", home.path().display(), e.text()))
}

/// One session under tcpserver: the connection's facts come from its
/// environment, as qmail-smtpd reads them.
pub(crate) fn ucspi(home: &Home) -> Result<(), String> {
    let loaded = match controls::load(home) {
        Ok(loaded) => loaded,
        Err(e) => {
            // qmail-smtpd's answer when it cannot read its controls.
            println!("421 4.3.0 unable to read controls\r");
            return Err(e);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let conn = ConnInfo {
        remote_ip: env("TCPREMOTEIP").unwrap_or_else(|| "unknown".into()),
        remote_host: env("TCPREMOTEHOST"),
        remote_info: env("TCPREMOTEINFO"),
        local_ip: env("TCPLOCALIP").unwrap_or_else(|| "unknown".into()),
        local_host: env("TCPLOCALHOST"),
        relay_client: env("RELAYCLIENT"),
        recipients_450: env("RECIPIENTS450").is_some(),
    };
    let target = match injection_target(home) {
        Ok(target) => target,
        Err(e) => {
            println!("421 4.3.0 unable to open the queue\r");
            return Err(e);
        }
    };
    let host = Reception::new(loaded.policy.clone(), conn, QueueStore::new(target));
    Chosen::serve_smtp_stdio(loaded.config.clone(), Box::new(host)).map_err(|e| e.to_string())
}

fn daemon(home: &Home, args: &SmtpdArgs) -> Result<(), String> {
    let limits = ServeLimits {
        max_connections: args.max_connections,
        max_per_ip: args.max_per_ip,
        blocking_threads: args.commit_threads.max(1),
    };
    let shutdown = Shutdown::new();
    let _signals = signals::trigger_on_signals(&shutdown).map_err(|e| e.to_string())?;
    serve(home, &args.listen, args.rules.clone(), limits, shutdown)
}

/// The daemon on `listen` until `shutdown` (which its caller triggers).
pub fn serve(
    home: &Home,
    listen: &[SocketAddr],
    rules: Option<PathBuf>,
    limits: ServeLimits,
    shutdown: Shutdown,
) -> Result<(), String> {
    if let Some(rules) = &rules {
        CdbMap::open(rules).map_err(|e| format!("{}: {e}", rules.display()))?;
    }
    if loaded_rcpthosts_missing(home) {
        eprintln!(
            "sqmail smtpd: warning: {} does not exist: no domain accepts mail from \
             clients without RELAYCLIENT (qmail would relay for everyone)",
            home.control("rcpthosts").display()
        );
    }
    let factory = Arc::new(Factory {
        controls: ControlCache::new(home.clone())?,
        rules,
        target: injection_target(home)?,
    });
    let listeners = listen
        .iter()
        .map(|addr| TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    for addr in listen {
        eprintln!(
            "sqmail smtpd: listening on {addr}, home {}",
            home.path().display()
        );
    }
    Chosen::serve_smtp(listeners, limits, factory, shutdown).map_err(|e| e.to_string())
}

/// The daemon's per-connection decisions: tcprules, then the controls.
struct Factory {
    controls: ControlCache,
    rules: Option<PathBuf>,
    target: Arc<Target>,
}

impl SessionFactory for Factory {
    fn admit(&self, peer: SocketAddr, local: SocketAddr) -> Admission {
        let remote_ip = peer.ip().to_canonical().to_string();
        let rule = match &self.rules {
            Some(path) => match lookup_rule(path, &remote_ip) {
                Ok(rule) => rule,
                Err(e) => {
                    eprintln!(
                        "sqmail smtpd: {}: {e}; refusing {remote_ip}",
                        path.display()
                    );
                    return Admission::Deny;
                }
            },
            None => None,
        };
        if rule.as_ref().is_some_and(|r| !r.allow) {
            return Admission::Deny;
        }
        let setting = |name: &str| {
            rule.as_ref()
                .and_then(|r| r.env.iter().find(|(k, _)| k == name))
                .and_then(|(_, v)| v.clone())
        };
        let loaded = self.controls.current();
        // A per-client DATABYTES (tcprules) changes only this session's limit.
        let config = match setting("DATABYTES") {
            Some(value) => {
                let mut config = Config::clone(&loaded.config);
                config.databytes = scan_ulong(&value);
                Arc::new(config)
            }
            None => loaded.config.clone(),
        };
        let conn = ConnInfo {
            remote_ip,
            remote_host: None,
            remote_info: None,
            local_ip: local.ip().to_canonical().to_string(),
            local_host: loaded.controls.me.clone(),
            relay_client: setting("RELAYCLIENT"),
            // As under tcpserver: the rules' value, else the daemon's own.
            recipients_450: match rule
                .as_ref()
                .and_then(|r| r.env.iter().find(|(k, _)| k == "RECIPIENTS450"))
            {
                Some((_, value)) => value.is_some(),
                None => std::env::var_os("RECIPIENTS450").is_some(),
            },
        };
        let store = QueueStore::new(self.target.clone());
        Admission::Accept {
            config,
            host: Box::new(Reception::new(loaded.policy.clone(), conn, store)),
        }
    }
}

/// The first rule tcpserver would apply to this client, if any. The cdb
/// is opened for each connection, as tcpserver does, so a rebuilt rules
/// file applies at once.
fn lookup_rule(path: &Path, remote_ip: &str) -> Result<Option<tcprules::Rule>, String> {
    let db = CdbMap::open(path).map_err(|e| e.to_string())?;
    let mut get = |key: &[u8]| db.get(key).map_err(|e| tcprules::RuleError(e.to_string()));
    tcprules::find_rule(&mut get, remote_ip, None, None).map_err(|e| e.0)
}

fn loaded_rcpthosts_missing(home: &Home) -> bool {
    !home.control("rcpthosts").exists()
}
