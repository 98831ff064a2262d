//! The mio DNS driver against unbound on loopback.

#[path = "support/unbound.rs"]
mod unbound;

use sqmail_mio::dns::resolve;

#[test]
fn against_unbound() {
    unbound::cases(resolve);
}

#[test]
fn silent_server_is_temporary() {
    unbound::silent_server(resolve);
}
