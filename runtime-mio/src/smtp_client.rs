//! SMTP client connections for remote delivery: a core [`Client`] driven
//! over one socket on a mio `Poll` of its own. A delivery thread blocks
//! in it; the machine's deadlines bound every wait.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use sqmail_core::remote;
use sqmail_core::service::{ConnectError, SmtpConnection, Step, Transaction};
use sqmail_core::smtp::client::{Client, ClientConfig, Delivery, Envelope};

const SOCKET: Token = Token(0);
/// How long QUIT waits for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);

pub struct Connection {
    poll: Poll,
    events: Events,
    stream: TcpStream,
    client: Client,
}

/// Waits (at most `timeout`) for the connect `socket` started to finish.
pub fn connect(
    socket: std::net::TcpStream,
    timeout: Duration,
    config: Arc<ClientConfig>,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::from_std(socket);
    let mut poll = Poll::new().map_err(ConnectError::Failed)?;
    poll.registry()
        .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
        .map_err(ConnectError::Failed)?;
    let mut events = Events::with_capacity(4);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ConnectError::TimedOut);
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result.map_err(ConnectError::Failed)?,
        }
        if events.is_empty() {
            continue;
        }
        if let Some(e) = stream.take_error().map_err(ConnectError::Failed)? {
            return Err(ConnectError::Failed(e));
        }
        match stream.peer_addr() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
            Err(e) => return Err(ConnectError::Failed(e)),
        }
    }
    Ok(Connection {
        poll,
        events,
        stream,
        client: Client::new(config, Instant::now()),
    })
}

impl SmtpConnection for Connection {
    fn send(&mut self, envelope: Envelope, message: &mut dyn Read) -> Delivery {
        if self.client.send(Instant::now(), envelope).is_err() {
            return remote::unreadable();
        }
        let mut transaction = Transaction::new(message);
        loop {
            let step = transaction.step(&mut self.client, Instant::now());
            self.flush();
            match step {
                Step::Done(delivery) => return delivery,
                Step::Again => {}
                Step::Wait => {
                    self.wait(self.client.poll_timeout());
                    self.client.handle_timeout(Instant::now());
                }
            }
        }
    }

    fn is_reusable(&self) -> bool {
        self.client.is_reusable()
    }

    fn quit(mut self) {
        let give_up = Instant::now() + QUIT_WAIT;
        self.client.quit(Instant::now());
        while !self.client.is_closed() && Instant::now() < give_up {
            while self.client.poll_event().is_some() {}
            self.flush();
            self.wait(Some(give_up));
        }
    }
}

impl Connection {
    /// Writes what the machine has to send, as far as the socket takes it.
    fn flush(&mut self) {
        while !self.client.transmit().is_empty() {
            match self.stream.write(self.client.transmit()) {
                Ok(n) => self.client.advance_transmit(Instant::now(), n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.client.handle_eof(Instant::now()),
            }
        }
    }

    /// Reads what the socket has; if nothing, waits for it (or for
    /// `deadline`) and reads again. Reading first matters: epoll is edge
    /// triggered, and an edge may have been reported already (the greeting
    /// can arrive with the connect's own event).
    fn wait(&mut self, deadline: Option<Instant>) {
        if self.read_all() {
            return;
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {
                self.read_all();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.client.handle_eof(Instant::now()),
        }
    }

    /// Reads until the socket would block; whether anything happened.
    fn read_all(&mut self) -> bool {
        let mut buf = [0; 16 * 1024];
        let mut read = false;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.client.handle_eof(Instant::now());
                    return true;
                }
                Ok(n) => {
                    self.client.handle_input(Instant::now(), &buf[..n]);
                    read = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.client.handle_eof(Instant::now());
                    return true;
                }
            }
        }
    }
}
