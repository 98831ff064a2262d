//! SMTP client connections for remote delivery: a core [`Client`] driven
//! over an async-io socket, each call blocking its delivery thread in
//! `smol::block_on`. Every step races the socket against the machine's
//! deadline.

use std::future::pending;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use sqmail_core::remote;
use sqmail_core::service::{ConnectError, SmtpConnection, Step, Transaction};
use sqmail_core::smtp::client::{Client, ClientConfig, Delivery, Envelope};

/// How long QUIT waits for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);

pub struct Connection {
    stream: Async<TcpStream>,
    client: Client,
    buf: Vec<u8>,
}

/// What ended one wait.
enum Woke {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Deadline,
}

/// Waits (at most `timeout`) for the connect `socket` started to finish.
pub fn connect(
    socket: TcpStream,
    timeout: Duration,
    config: Arc<ClientConfig>,
) -> Result<Connection, ConnectError> {
    let stream = Async::new(socket).map_err(ConnectError::Failed)?;
    smol::block_on(async {
        let made = async { Some(stream.writable().await) }.or(async {
            Timer::after(timeout).await;
            None
        });
        match made.await {
            None => Err(ConnectError::TimedOut),
            Some(Err(e)) => Err(ConnectError::Failed(e)),
            Some(Ok(())) => match stream.get_ref().take_error() {
                Ok(None) => stream
                    .get_ref()
                    .peer_addr()
                    .map(drop)
                    .map_err(ConnectError::Failed),
                Ok(Some(e)) | Err(e) => Err(ConnectError::Failed(e)),
            },
        }
    })?;
    Ok(Connection {
        stream,
        client: Client::new(config, Instant::now()),
        buf: vec![0; 16 * 1024],
    })
}

impl SmtpConnection for Connection {
    fn send(&mut self, envelope: Envelope, message: &mut dyn Read) -> Delivery {
        if self.client.send(Instant::now(), envelope).is_err() {
            return remote::unreadable();
        }
        let mut transaction = Transaction::new(message);
        smol::block_on(async {
            loop {
                match transaction.step(&mut self.client, Instant::now()) {
                    Step::Done(delivery) => return delivery,
                    // Nothing is waited for: the step only writes.
                    Step::Again => self.step(Some(Instant::now())).await,
                    Step::Wait => self.step(self.client.poll_timeout()).await,
                }
            }
        })
    }

    fn is_reusable(&self) -> bool {
        self.client.is_reusable()
    }

    fn quit(mut self) {
        let give_up = Instant::now() + QUIT_WAIT;
        self.client.quit(Instant::now());
        smol::block_on(async {
            while !self.client.is_closed() && Instant::now() < give_up {
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
            // Writing first: a step after feeding must not wait on reads.
            write.or(read).or(timer).await
        };
        let now = Instant::now();
        match woke {
            Woke::Read(Ok(0) | Err(_)) | Woke::Wrote(Err(_)) => self.client.handle_eof(now),
            Woke::Read(Ok(n)) => self.client.handle_input(now, &self.buf[..n]),
            Woke::Wrote(Ok(n)) => self.client.advance_transmit(now, n),
            Woke::Deadline => {}
        }
        self.client.handle_timeout(now);
    }
}
