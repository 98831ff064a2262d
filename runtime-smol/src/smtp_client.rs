//! SMTP client connections for remote delivery: a core [`Client`] driven
//! over an async-io socket, each call blocking its delivery thread in
//! `smol::block_on`. Every step races the socket against the machine's
//! deadline.

use std::future::pending;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use sqmail_core::remote;
use sqmail_core::service::{ConnectError, SmtpConnection};
use sqmail_core::smtp::client::{Client, ClientConfig, ClientEvent, Delivery, Envelope};

/// How long QUIT waits for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);

pub struct Connection {
    stream: Async<TcpStream>,
    client: Client,
    /// The socket failed, or the message could not be read mid-DATA.
    broken: bool,
    buf: Vec<u8>,
}

/// What ended one wait.
enum Woke {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Deadline,
}

/// Connects to `peer` from `bind`, within `timeout`.
pub fn connect(
    peer: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
    config: Arc<ClientConfig>,
) -> Result<Connection, ConnectError> {
    let socket = crate::connect::start(peer, bind).map_err(ConnectError::Failed)?;
    let stream = Async::new(socket).map_err(ConnectError::Failed)?;
    smol::block_on(async {
        let made = async { Some(stream.writable().await) }.or(async {
            Timer::after(timeout).await;
            None
        });
        match made.await {
            None => return Err(ConnectError::TimedOut),
            Some(Err(e)) => return Err(ConnectError::Failed(e)),
            Some(Ok(())) => {}
        }
        if let Some(e) = stream
            .get_ref()
            .take_error()
            .map_err(ConnectError::Failed)?
        {
            return Err(ConnectError::Failed(e));
        }
        stream.get_ref().peer_addr().map_err(ConnectError::Failed)?;
        Ok(())
    })?;
    Ok(Connection {
        stream,
        client: Client::new(config, Instant::now()),
        broken: false,
        buf: vec![0; 16 * 1024],
    })
}

impl SmtpConnection for Connection {
    fn send(&mut self, envelope: Envelope, message: &mut dyn Read) -> Delivery {
        if self.client.send(Instant::now(), envelope).is_err() {
            self.broken = true;
            return remote::unreadable();
        }
        smol::block_on(self.transaction(message))
    }

    fn is_reusable(&self) -> bool {
        !self.broken && self.client.is_reusable()
    }

    fn quit(mut self) {
        let give_up = Instant::now() + QUIT_WAIT;
        self.client.quit(Instant::now());
        smol::block_on(async {
            while !self.client.is_closed() && !self.broken && Instant::now() < give_up {
                while self.client.poll_event().is_some() {}
                let deadline = self
                    .client
                    .poll_timeout()
                    .map_or(give_up, |d| d.min(give_up));
                self.step(Some(deadline)).await;
            }
        });
    }
}

impl Connection {
    /// Runs the machine until the envelope's Delivery, feeding `message`
    /// as the server takes it.
    async fn transaction(&mut self, message: &mut dyn Read) -> Delivery {
        let mut chunk = vec![0; 64 * 1024];
        let mut feeding = false;
        loop {
            while let Some(event) = self.client.poll_event() {
                match event {
                    ClientEvent::WantBody => feeding = true,
                    ClientEvent::Done(d) => return d,
                    ClientEvent::Ready => {}
                    ClientEvent::Closed => self.broken = true,
                }
            }
            // Feeding may end the transaction (the last chunk, or a
            // partial final line): its events come before any wait.
            let mut fed = false;
            while feeding && self.client.wants_body() {
                fed = true;
                let now = Instant::now();
                match message.read(&mut chunk) {
                    Ok(0) => {
                        feeding = false;
                        let _ = self.client.end_body(now);
                    }
                    Ok(n) => {
                        let _ = self.client.body(now, &chunk[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.broken = true;
                        return remote::unreadable();
                    }
                }
            }
            if fed {
                continue;
            }
            if self.broken && self.client.transmit().is_empty() {
                // The machine settles every envelope before it closes.
                return remote::no_connection();
            }
            let deadline = self.client.poll_timeout();
            self.step(deadline).await;
        }
    }

    /// One wait: the server's bytes, room to write, or the deadline.
    async fn step(&mut self, deadline: Option<Instant>) {
        let woke = {
            let (stream, transmit, buf) = (&self.stream, self.client.transmit(), &mut self.buf);
            let read = async { Woke::Read((&*stream).read(buf).await) };
            let write = async {
                if transmit.is_empty() {
                    pending().await
                } else {
                    Woke::Wrote((&*stream).write(transmit).await)
                }
            };
            let timer = async {
                match deadline {
                    Some(at) => {
                        Timer::at(at).await;
                        Woke::Deadline
                    }
                    None => pending().await,
                }
            };
            read.or(write).or(timer).await
        };
        let now = Instant::now();
        match woke {
            Woke::Read(Ok(0)) | Woke::Read(Err(_)) => {
                self.client.handle_eof(now);
                self.broken = true;
            }
            Woke::Read(Ok(n)) => self.client.handle_input(now, &self.buf[..n]),
            Woke::Wrote(Ok(n)) => self.client.advance_transmit(now, n),
            Woke::Wrote(Err(_)) => {
                self.client.handle_eof(now);
                self.broken = true;
            }
            Woke::Deadline => {}
        }
        self.client.handle_timeout(now);
    }
}
