//! Blocking DNS lookups: a core [`Lookup`](sqmail_core::dns::Lookup)
//! driven over UDP and TCP on a mio `Poll` of its own, for delivery
//! threads.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use sqmail_core::dns::{self, Destination, Error, Query, Resolver};

/// The UDP sockets, by family; TCP connections follow.
const UDP: [Token; 2] = [Token(0), Token(1)];
const FIRST_TCP: usize = 2;
/// A length prefix and the largest message.
const MAX_TCP: usize = 2 + 65535;

/// Looks `query` up, waiting for the answer (at most the resolver's
/// timeout times its attempts per question).
pub fn resolve(resolver: &Resolver, query: Query) -> Result<Vec<Destination>, Error> {
    drive(resolver, query).unwrap_or_else(|e| Err(Error::Temporary(format!("DNS sockets: {e}"))))
}

/// One TCP exchange: the question out, the framed answer in.
struct Conn {
    server: SocketAddr,
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
}

fn drive(resolver: &Resolver, query: Query) -> io::Result<Result<Vec<Destination>, Error>> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(16);
    let mut udp: [Option<UdpSocket>; 2] = [None, None];
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = vec![0; 65535];
    let mut lookup = resolver.lookup(Instant::now(), query);
    loop {
        if let Some(answer) = lookup.result() {
            return Ok(answer);
        }
        while let Some(t) = lookup.poll_transmit() {
            if t.tcp {
                // A failed connect is a try that times out in the machine.
                let Ok(mut stream) = TcpStream::connect(t.server) else {
                    continue;
                };
                let token = Token(FIRST_TCP + conns.len());
                poll.registry().register(
                    &mut stream,
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                let (server, out) = (t.server, t.bytes);
                let input = Vec::new();
                conns.push(Some(Conn {
                    server,
                    stream,
                    out,
                    written: 0,
                    input,
                }));
            } else {
                let family = usize::from(t.server.is_ipv6());
                let socket = match &mut udp[family] {
                    Some(socket) => socket,
                    slot @ None => slot.insert(bind(&poll, family)?),
                };
                // A datagram not sent is one not answered: the machine retries.
                let _ = socket.send_to(&t.bytes, t.server);
            }
        }
        let wait = lookup
            .poll_timeout()
            .map(|d| d.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, wait) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => result?,
        }
        for event in events.iter() {
            let Token(i) = event.token();
            if let Some(socket) = udp.get(i).and_then(Option::as_ref) {
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    lookup.handle_response(Instant::now(), from, false, &buf[..n]);
                }
            } else if let Some(slot) = i.checked_sub(FIRST_TCP).and_then(|c| conns.get_mut(c)) {
                let Some(conn) = slot else { continue };
                match conn.pump() {
                    Ok(false) => {}
                    Ok(true) => {
                        let message = dns::tcp_message(&conn.input).unwrap_or_default();
                        lookup.handle_response(Instant::now(), conn.server, true, message);
                        *slot = None;
                    }
                    Err(_) => *slot = None,
                }
            }
        }
        lookup.handle_timeout(Instant::now());
    }
}

fn bind(poll: &Poll, family: usize) -> io::Result<UdpSocket> {
    let any = match family {
        0 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        _ => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let mut socket = UdpSocket::bind(any)?;
    poll.registry()
        .register(&mut socket, UDP[family], Interest::READABLE)?;
    Ok(socket)
}

impl Conn {
    /// Writes what it can and reads what came; true once the answer is in.
    fn pump(&mut self) -> io::Result<bool> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let mut chunk = [0; 4096];
        while dns::tcp_message(&self.input).is_none() {
            let room = (MAX_TCP - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Not ready yet, including a connect still in progress.
fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected | io::ErrorKind::Interrupted
    )
}
