//! Both runtimes' SMTP client connections over real loopback sockets,
//! against a scripted server thread: one suite, run once per runtime
//! through [`Runtime::connect_smtp`].
//!
//! Every wait is bounded (the server's read timeouts, short client
//! timeouts), so a broken driver fails a test instead of hanging it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sqmail_core::service::{ConnectError, Runtime, SmtpConnection};
use sqmail_core::smtp::client::{ClientConfig, Delivery, Envelope, Status};
use sqmail_core::smtp::data::{BodyDecoder, Decoded};

/// How the scripted server misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// PIPELINING and SIZE; refuses `bad@` recipients; takes any number
    /// of messages.
    Good,
    /// Greets, then never answers.
    Stalls,
    /// Says 354, reads a little of the message and closes.
    DiesInData,
}

/// What the server saw: its command lines and the messages it took (as
/// the queue would store them).
#[derive(Debug, Default)]
struct Seen {
    commands: Vec<String>,
    messages: Vec<Vec<u8>>,
}

fn server(peer: Peer) -> (SocketAddr, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Seen::default();
        let _ = converse(peer, stream, &mut seen);
        seen
    });
    (addr, handle)
}

fn converse(peer: Peer, stream: TcpStream, seen: &mut Seen) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 fake.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        seen.commands.push(command.clone());
        if peer == Peer::Stalls {
            continue;
        }
        let verb = command.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-fake.test\r\n250-PIPELINING\r\n250 SIZE 10000000\r\n",
            "MAIL" | "RSET" => b"250 ok\r\n",
            "RCPT" if command.contains("<bad@") => b"550 5.1.1 no such user\r\n",
            "RCPT" => b"250 ok\r\n",
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            "DATA" => {
                out.write_all(b"354 go\r\n")?;
                if peer == Peer::DiesInData {
                    let mut some = [0; 100];
                    input.read_exact(&mut some)?;
                    return Ok(());
                }
                seen.messages.push(read_message(&mut input)?);
                b"250 ok queued\r\n"
            }
            _ => b"502 what\r\n",
        };
        out.write_all(reply)?;
    }
}

/// The message up to `CRLF . CRLF`, unstuffed, as our server reads it.
fn read_message(input: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut decoder = BodyDecoder::new(0, 1000);
    let mut message = Vec::new();
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (n, how) = decoder.decode(buf, &mut message);
        input.consume(n);
        match how {
            Decoded::NeedMore => {}
            Decoded::End => return Ok(message),
            Decoded::BareLineEnding => return Err(io::ErrorKind::InvalidData.into()),
        }
    }
}

fn config(timeout: Duration) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        helo: "me.test".into(),
        timeout,
        peer: IpAddr::from([127, 0, 0, 1]),
    })
}

fn envelope(recipients: &[&str], message: &[u8]) -> Envelope {
    Envelope {
        sender: b"a@me.test".to_vec(),
        recipients: recipients.iter().map(|r| r.as_bytes().to_vec()).collect(),
        size: message.len() as u64,
        eight_bit: false,
    }
}

/// A connect started without waiting, as remote delivery starts it
/// (from a bound local address): the runtime waits for it.
fn start(addr: SocketAddr, bind: Option<IpAddr>) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_nonblocking(true).unwrap();
    if let Some(ip) = bind {
        socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    }
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => panic!("connect: {e}"),
        _ => socket.into(),
    }
}

fn connect<R: Runtime>(addr: SocketAddr, timeout: Duration) -> R::SmtpConnection {
    let bind = Some(IpAddr::from([127, 0, 0, 1]));
    R::connect_smtp(start(addr, bind), Duration::from_secs(5), config(timeout))
        .unwrap_or_else(|e| panic!("connect: {e:?}"))
}

fn report(d: &Delivery) -> String {
    String::from_utf8(d.report()).unwrap()
}

/// A message bigger than any socket buffer, with lines that need stuffing.
fn big_message() -> Vec<u8> {
    let mut m = b"Subject: big\n\n".to_vec();
    for i in 0..20_000 {
        m.extend_from_slice(
            format!(".line {i} of the message, long enough to add up\n").as_bytes(),
        );
    }
    m
}

fn two_messages_on_one_connection<R: Runtime>() {
    let (addr, server) = server(Peer::Good);
    let mut conn = connect::<R>(addr, Duration::from_secs(10));
    let first = b"Subject: one\n\n.hello\n..\n".to_vec();
    let d = conn.send(
        envelope(&["b@x.test", "bad@x.test"], &first),
        &mut &first[..],
    );
    assert_eq!(
        report(&d),
        "r\0h127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n\0\
         K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0"
    );
    assert!(conn.is_reusable());
    let second = big_message();
    let d = conn.send(envelope(&["c@x.test"], &second), &mut &second[..]);
    assert_eq!(d.message.0, Status::Accepted, "{}", report(&d));
    conn.quit();
    let seen = server.join().unwrap();
    assert_eq!(seen.messages, [first, second]);
    assert_eq!(
        seen.commands.first().map(String::as_str),
        Some("EHLO me.test")
    );
    assert_eq!(seen.commands.last().map(String::as_str), Some("QUIT"));
    let mails: Vec<_> = seen
        .commands
        .iter()
        .filter(|c| c.starts_with("MAIL"))
        .collect();
    assert_eq!(mails.len(), 2);
    assert!(mails[1].ends_with(&format!(" SIZE={}", big_message().len())));
}

fn a_stalled_peer_times_out<R: Runtime>() {
    let (addr, server) = server(Peer::Stalls);
    let mut conn = connect::<R>(addr, Duration::from_millis(300));
    let message = b"x\n".to_vec();
    let started = Instant::now();
    let d = conn.send(envelope(&["b@x.test"], &message), &mut &message[..]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(d.message.0, Status::Temporary);
    assert!(d.message.1.contains("(#4.4.2)"), "{}", report(&d));
    assert!(!conn.is_reusable());
    conn.quit();
    assert_eq!(server.join().unwrap().commands, ["EHLO me.test"]);
}

fn a_peer_dying_in_data<R: Runtime>() {
    let (addr, server) = server(Peer::DiesInData);
    let mut conn = connect::<R>(addr, Duration::from_secs(10));
    let message = big_message();
    let d = conn.send(envelope(&["b@x.test"], &message), &mut &message[..]);
    assert_eq!(d.message.0, Status::Temporary, "{}", report(&d));
    assert!(!conn.is_reusable());
    conn.quit();
    assert!(server.join().unwrap().messages.is_empty());
}

/// A message source that fails part way.
struct Failing(usize);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = self.0.min(buf.len());
        buf[..n].fill(b'a');
        self.0 -= n;
        Ok(n)
    }
}

fn an_unreadable_message<R: Runtime>() {
    let (addr, server) = server(Peer::Good);
    let mut conn = connect::<R>(addr, Duration::from_secs(10));
    let d = conn.send(envelope(&["b@x.test"], b"aaaa"), &mut Failing(4));
    assert_eq!(report(&d), "ZUnable to read message. (#4.3.0)\n\0");
    assert!(!conn.is_reusable());
    conn.quit();
    assert!(server.join().unwrap().messages.is_empty());
}

fn a_refused_connection<R: Runtime>() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    match R::connect_smtp(
        start(addr, None),
        Duration::from_secs(5),
        config(Duration::from_secs(5)),
    ) {
        Err(ConnectError::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
        Err(ConnectError::TimedOut) => panic!("refused, not timed out"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

macro_rules! on_both_runtimes {
    ($($test:ident),*) => {
        mod mio {
            $(#[test] fn $test() { super::$test::<sqmail_mio::Mio>() })*
        }
        mod smol {
            $(#[test] fn $test() { super::$test::<sqmail_smol::Smol>() })*
        }
    };
}

on_both_runtimes!(
    two_messages_on_one_connection,
    a_stalled_peer_times_out,
    a_peer_dying_in_data,
    an_unreadable_message,
    a_refused_connection
);
