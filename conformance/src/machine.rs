//! The bare machine as a [`Peer`]: `Server` + `Reception<MemoryStore>` +
//! `SmtpPolicy`, built from the trace's directives exactly as the binary
//! builds them from control files, driven with `pump` on a virtual clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqmail_core::conn::ConnInfo;
use sqmail_core::control::SmtpdControls;
use sqmail_core::policy::SmtpPolicy;
use sqmail_core::smtp::host::{pump, Step};
use sqmail_core::smtp::reception::{MemoryStore, Reception};
use sqmail_core::smtp::{Config, Server};

use crate::run::{take_reply, Next, Peer, QueuedMessage};
use crate::trace::{ExpectedEnvelope, Setup, DEFAULT_IP};

/// The limit on host steps after one input, so a machine that loops is a
/// failure rather than a hang.
const MAX_SETTLE: usize = 100_000;

pub struct MachinePeer {
    server: Server,
    host: Reception<MemoryStore>,
    now: Instant,
    /// Bytes the machine transmitted that the runner has not read yet.
    out: Vec<u8>,
    closed: bool,
}

/// The controls a trace's setup stands for, parsed by the core's own
/// control-file reader from the files the wire runner writes.
pub fn controls(setup: &Setup) -> Result<SmtpdControls, String> {
    let files = setup.control_files();
    SmtpdControls::load(&mut |name| {
        files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| text.clone())
    })
    .map_err(|e| e.to_string())
}

/// The connection's facts for a trace's setup.
pub fn conn_info(setup: &Setup) -> ConnInfo {
    ConnInfo {
        remote_ip: setup.remote_ip.clone().unwrap_or_else(|| DEFAULT_IP.into()),
        local_ip: setup.local_ip.clone().unwrap_or_else(|| DEFAULT_IP.into()),
        relay_client: setup.relayclient.clone(),
        ..ConnInfo::default()
    }
}

/// The machine's configuration for a trace's setup.
pub fn config(setup: &Setup, controls: &SmtpdControls) -> Config {
    let mut config = Config::new(controls.smtpgreeting.clone());
    config.databytes = controls.databytes;
    config.idle_timeout = Duration::from_secs(controls.timeoutsmtpd);
    if let Some(n) = setup.max_recipients {
        config.max_recipients = n;
    }
    if let Some(n) = setup.max_errors {
        config.max_errors = n;
    }
    if let Some(n) = setup.max_line {
        config.max_line = n;
    }
    config
}

impl MachinePeer {
    pub fn new(setup: &Setup) -> Result<MachinePeer, String> {
        let controls = controls(setup)?;
        let config = Arc::new(config(setup, &controls));
        let policy = Arc::new(SmtpPolicy::new(&controls, None));
        let store = MemoryStore {
            unix_time: 1_700_000_000,
            ..MemoryStore::default()
        };
        let now = Instant::now();
        let mut peer = MachinePeer {
            server: Server::new(config, now),
            host: Reception::new(policy, conn_info(setup), store),
            now,
            out: Vec::new(),
            closed: false,
        };
        peer.settle()?;
        Ok(peer)
    }

    /// The store, for checks beyond the trace's.
    pub fn store(&self) -> &MemoryStore {
        self.host.store()
    }

    /// Hands events to the host and collects output until the machine waits.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..MAX_SETTLE {
            match pump(&mut self.server, &mut self.host, self.now) {
                Step::Wait => {}
                Step::Close => self.closed = true,
                Step::Blocked(ticket, job) => {
                    let verdict = job();
                    self.server
                        .answer(self.now, ticket, verdict)
                        .map_err(|e| format!("answer refused: {e:?}"))?;
                    continue;
                }
            }
            let n = self.server.transmit().len();
            if n == 0 {
                if self.closed != self.server.is_closed() {
                    return Err(format!(
                        "pump said close={} but the machine says closed={}",
                        self.closed,
                        self.server.is_closed()
                    ));
                }
                return Ok(());
            }
            self.out.extend_from_slice(self.server.transmit());
            self.server.advance_transmit(n);
        }
        Err("the machine did not settle".into())
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() && !self.closed {
            let room = self.server.input_capacity();
            if room == 0 {
                return Err("the machine takes no input, yet asks for nothing".into());
            }
            let n = room.min(data.len());
            self.server.handle_input(self.now, &data[..n]);
            data = &data[n..];
            self.settle()?;
        }
        Ok(())
    }
}

impl Peer for MachinePeer {
    fn send(&mut self, bytes: &[u8], bytewise: bool) -> Result<(), String> {
        if bytewise {
            for b in bytes.chunks(1) {
                self.feed(b)?;
            }
            Ok(())
        } else {
            self.feed(bytes)
        }
    }

    fn next(&mut self) -> Result<Next, String> {
        if let Some(reply) = take_reply(&mut self.out)? {
            return Ok(Next::Reply(reply));
        }
        if self.closed {
            return Ok(Next::Closed(std::mem::take(&mut self.out)));
        }
        Err(match self.out.is_empty() {
            true => "no reply: the server waits for input".into(),
            false => format!(
                "the server waits with an incomplete reply {:?}",
                String::from_utf8_lossy(&self.out)
            ),
        })
    }

    fn client_close(&mut self) -> Result<Vec<u8>, String> {
        if !self.closed {
            self.server.handle_eof(self.now);
            self.settle()?;
        }
        if !self.closed {
            return Err("the server did not close after the client's end of stream".into());
        }
        Ok(std::mem::take(&mut self.out))
    }

    fn wait(&mut self, secs: u64) -> Result<(), String> {
        self.now += Duration::from_secs(secs);
        if let Some(deadline) = self.server.poll_timeout() {
            if deadline <= self.now {
                self.server.handle_timeout(self.now);
            }
        }
        self.settle()
    }

    fn queued(&mut self) -> Result<Vec<QueuedMessage>, String> {
        Ok(self
            .host
            .store()
            .committed
            .iter()
            .map(|(env, data)| QueuedMessage {
                envelope: ExpectedEnvelope {
                    sender: env.sender.clone(),
                    recipients: env.recipients.clone(),
                },
                data: data.clone(),
            })
            .collect())
    }
}
