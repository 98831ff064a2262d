//! The runtime this binary was built with: mio by default, smol with
//! `--no-default-features --features smol`. Both offer the same interface.

#[cfg(feature = "mio")]
pub use sqmail_mio::{serve_smtp, serve_smtp_stdio, Shutdown};

#[cfg(all(feature = "smol", not(feature = "mio")))]
pub use sqmail_smol::{serve_smtp, serve_smtp_stdio, Shutdown};

#[cfg(not(any(feature = "mio", feature = "smol")))]
compile_error!("build sqmail with the `mio` or the `smol` feature");
