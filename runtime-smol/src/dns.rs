//! Blocking DNS lookups: a core [`Lookup`](sqmail_core::dns::Lookup)
//! driven over UDP and TCP with async-io sockets on a local executor, for
//! delivery threads.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::rc::Rc;
use std::time::Instant;

use async_io::{Async, Timer};
use smol::channel::{self, Sender};
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::LocalExecutor;
use sqmail_core::dns::{Destination, Error, Query, Resolver};

/// Answers waiting for the machine; receivers wait while it is full.
const QUEUE: usize = 16;

/// An answer from a server, over TCP without its length prefix.
type Reply = (SocketAddr, bool, Vec<u8>);

/// Looks `query` up, waiting for the answer (at most the resolver's
/// timeout times its attempts per question).
pub fn resolve(resolver: &Resolver, query: Query) -> Result<Vec<Destination>, Error> {
    let executor = LocalExecutor::new();
    smol::block_on(executor.run(drive(&executor, resolver, query)))
        .unwrap_or_else(|e| Err(Error::Temporary(format!("DNS sockets: {e}"))))
}

async fn drive(
    executor: &LocalExecutor<'_>,
    resolver: &Resolver,
    query: Query,
) -> io::Result<Result<Vec<Destination>, Error>> {
    let (tx, rx) = channel::bounded::<Reply>(QUEUE);
    let mut udp: [Option<Rc<Async<UdpSocket>>>; 2] = [None, None];
    // Dropped on return, which cancels them.
    let mut tasks = Vec::new();
    let mut lookup = resolver.lookup(Instant::now(), query);
    loop {
        if let Some(answer) = lookup.result() {
            return Ok(answer);
        }
        while let Some(t) = lookup.poll_transmit() {
            if t.tcp {
                tasks.push(executor.spawn(exchange_tcp(t.server, t.bytes, tx.clone())));
                continue;
            }
            let family = usize::from(t.server.is_ipv6());
            let socket = match &udp[family] {
                Some(socket) => Rc::clone(socket),
                None => {
                    let socket = Rc::new(bind(family)?);
                    tasks.push(executor.spawn(receive(Rc::clone(&socket), tx.clone())));
                    udp[family] = Some(Rc::clone(&socket));
                    socket
                }
            };
            // A datagram not sent is one not answered: the machine retries.
            let _ = socket.send_to(&t.bytes, t.server).await;
        }
        let deadline = lookup.poll_timeout().unwrap_or_else(Instant::now);
        let reply = async { rx.recv().await.ok() }.or(async {
            Timer::at(deadline).await;
            None
        });
        match reply.await {
            Some((server, tcp, bytes)) => {
                lookup.handle_response(Instant::now(), server, tcp, &bytes)
            }
            None => lookup.handle_timeout(Instant::now()),
        }
    }
}

fn bind(family: usize) -> io::Result<Async<UdpSocket>> {
    let any = match family {
        0 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        _ => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    Async::<UdpSocket>::bind(any)
}

/// Every datagram on `socket`, with its sender (the machine checks it).
async fn receive(socket: Rc<Async<UdpSocket>>, tx: Sender<Reply>) {
    let mut buf = vec![0; 65535];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if tx.send((from, false, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

/// One question over its own connection; a failure is a try that times
/// out in the machine.
async fn exchange_tcp(server: SocketAddr, question: Vec<u8>, tx: Sender<Reply>) {
    let answer = async {
        let mut stream = Async::<TcpStream>::connect(server).await?;
        stream.write_all(&question).await?;
        let mut len = [0; 2];
        stream.read_exact(&mut len).await?;
        let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut message).await?;
        io::Result::Ok(message)
    };
    if let Ok(message) = answer.await {
        let _ = tx.send((server, true, message)).await;
    }
}
