//! qmail-smtpd's control files, kept current in a long-running daemon.
//!
//! qmail-smtpd is a new process per connection, so an edit to `rcpthosts`
//! takes effect at the next connection. The daemon keeps that promise by
//! checking the files' modification times (at most once a second) and
//! reloading when one changed.
//!
//! The cdbs that `control/recipients` names are the exception: `sqmail
//! user` replaces them by rename while the daemon runs, and the next RCPT
//! must see the change, so they are opened afresh for every lookup.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sqmail_core::control::SmtpdControls;
use sqmail_core::policy::SmtpPolicy;
use sqmail_core::recipients::{self, Recipients};
use sqmail_core::smtp::Config;
use sqmail_queue::cdbmap::{CdbMap, FreshCdb};

use crate::home::Home;

/// The files whose change means a reload.
const WATCHED: [&str; 9] = [
    "me",
    "smtpgreeting",
    "localiphost",
    "rcpthosts",
    "morercpthosts.cdb",
    "badmailfrom",
    "databytes",
    "timeoutsmtpd",
    "recipients",
];

/// What one load of the control files gives the SMTP server.
pub struct Loaded {
    pub controls: SmtpdControls,
    pub policy: Arc<SmtpPolicy>,
    /// The sessions' limits and texts, shared by every connection.
    pub config: Arc<Config>,
}

/// Reads the controls (and `$DATABYTES`, which overrides them).
pub fn load(home: &Home) -> Result<Loaded, String> {
    let mut controls = SmtpdControls::load_with(&mut |name| home.control_bytes(name))
        .map_err(|e| format!("{}: {e}", home.path().display()))?;
    if let Ok(value) = std::env::var("DATABYTES") {
        controls.apply_databytes_env(&value);
    }
    let more = home.control("morercpthosts.cdb");
    let more: Option<Box<dyn sqmail_core::policy::Lookup>> = match CdbMap::open(&more) {
        Ok(map) => Some(Box::new(map)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", more.display())),
    };
    let policy = Arc::new(SmtpPolicy::new(&controls, more).with_recipients(load_recipients(home)?));
    let config = Arc::new(server_config(&controls));
    Ok(Loaded {
        controls,
        policy,
        config,
    })
}

/// `control/recipients` (absent: nothing is checked), each cdb path
/// relative to the qmail home. A cdb that cannot be opened now is an error
/// naming the file and line.
fn load_recipients(home: &Home) -> Result<Recipients, String> {
    let Some(text) = home.read_control("recipients").map_err(|e| e.to_string())? else {
        return Ok(Recipients::default());
    };
    let in_home = |e: sqmail_core::control::ControlError| format!("{}: {e}", home.path().display());
    let rules = recipients::parse("recipients", text.as_bytes()).map_err(in_home)?;
    Recipients::build("recipients", &rules, &mut |path| {
        let path = home.path().join(path);
        CdbMap::open(&path).map_err(|e| e.to_string())?;
        Ok(Box::new(FreshCdb::new(path)))
    })
    .map_err(in_home)
}

/// The session's limits and texts from the controls.
fn server_config(controls: &SmtpdControls) -> Config {
    let mut config = Config::new(controls.smtpgreeting.clone());
    config.databytes = controls.databytes;
    config.idle_timeout = Duration::from_secs(controls.timeoutsmtpd);
    config
}

/// The controls of a daemon, reloaded when a file changes.
pub struct ControlCache {
    home: Home,
    state: Mutex<CacheState>,
}

struct CacheState {
    loaded: Arc<Loaded>,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl ControlCache {
    pub fn new(home: Home) -> Result<Self, String> {
        let stamps = stamps(&home);
        let loaded = Arc::new(load(&home)?);
        Ok(ControlCache {
            home,
            state: Mutex::new(CacheState {
                loaded,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current controls. A file that became unreadable or malformed
    /// keeps the last good version in force and says so on stderr.
    pub fn current(&self) -> Arc<Loaded> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= Duration::from_secs(1) {
            state.checked = Instant::now();
            let now = stamps(&self.home);
            if now != state.stamps {
                state.stamps = now;
                match load(&self.home) {
                    Ok(loaded) => state.loaded = Arc::new(loaded),
                    Err(e) => eprintln!("sqmail smtpd: keeping the previous controls: {e}"),
                }
            }
        }
        state.loaded.clone()
    }
}

fn stamps(home: &Home) -> Vec<Option<SystemTime>> {
    WATCHED
        .iter()
        .map(|name| {
            let path: PathBuf = home.control(name);
            std::fs::metadata(path).and_then(|m| m.modified()).ok()
        })
        .collect()
}
