//! SMTP client connections for remote delivery: a core
//! [`Client`] driven over one socket on a mio `Poll` of its own. A
//! delivery thread blocks in it; the machine's deadlines bound every wait.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use sqmail_core::remote;
use sqmail_core::service::{ConnectError, SmtpConnection};
use sqmail_core::smtp::client::{Client, ClientConfig, ClientEvent, Delivery, Envelope};

const SOCKET: Token = Token(0);
/// How long QUIT waits for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);

pub struct Connection {
    poll: Poll,
    events: Events,
    stream: TcpStream,
    client: Client,
    /// The socket failed under the machine (or the message could not be
    /// read mid-DATA): never reuse it.
    broken: bool,
}

/// Connects to `peer` from `bind`, within `timeout`.
pub fn connect(
    peer: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
    config: Arc<ClientConfig>,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + timeout;
    let socket = crate::connect::start(peer, bind).map_err(ConnectError::Failed)?;
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
        broken: false,
    })
}

impl SmtpConnection for Connection {
    fn send(&mut self, envelope: Envelope, message: &mut dyn Read) -> Delivery {
        if self.client.send(Instant::now(), envelope).is_err() {
            self.broken = true;
            return remote::unreadable();
        }
        self.run(message)
    }

    fn is_reusable(&self) -> bool {
        !self.broken && self.client.is_reusable()
    }

    fn quit(mut self) {
        let give_up = Instant::now() + QUIT_WAIT;
        self.client.quit(Instant::now());
        while !self.client.is_closed() && Instant::now() < give_up && !self.broken {
            while self.client.poll_event().is_some() {}
            self.flush();
            self.wait(Some(give_up));
        }
    }
}

impl Connection {
    /// Runs the machine until the envelope's Delivery, feeding `message`
    /// when the server asks for it.
    fn run(&mut self, message: &mut dyn Read) -> Delivery {
        let mut chunk = vec![0; 64 * 1024];
        let mut feeding = false;
        let mut delivery = None;
        loop {
            while let Some(event) = self.client.poll_event() {
                match event {
                    ClientEvent::WantBody => feeding = true,
                    ClientEvent::Done(d) => delivery = Some(d),
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
                        // Mid-DATA there is no clean way back: drop it all.
                        self.broken = true;
                        return remote::unreadable();
                    }
                }
            }
            self.flush();
            if let Some(d) = delivery.take() {
                return d;
            }
            if fed {
                continue;
            }
            if self.broken && self.client.transmit().is_empty() {
                // Closed without a Delivery cannot happen: the machine
                // settles every envelope before it closes.
                return remote::no_connection();
            }
            let deadline = self.client.poll_timeout();
            self.wait(deadline);
            self.client.handle_timeout(Instant::now());
        }
    }

    /// Writes what the machine has to send, as far as the socket takes it.
    fn flush(&mut self) {
        while !self.client.transmit().is_empty() {
            match self.stream.write(self.client.transmit()) {
                Ok(n) => self.client.advance_transmit(Instant::now(), n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.client.handle_eof(Instant::now());
                    self.broken = true;
                    return;
                }
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
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                self.client.handle_eof(Instant::now());
                self.broken = true;
            }
            return;
        }
        self.read_all();
    }

    /// Reads until the socket would block; whether anything happened.
    fn read_all(&mut self) -> bool {
        let mut buf = [0; 16 * 1024];
        let mut read = false;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.client.handle_eof(Instant::now());
                    self.broken = true;
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
                    self.broken = true;
                    return true;
                }
            }
        }
    }
}
