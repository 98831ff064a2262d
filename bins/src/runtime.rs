//! The runtime this binary was built with: mio by default, smol with
//! `--no-default-features --features smol`. Both implement
//! [`sqmail_core::service::Runtime`], so the rest of `bins/` names neither.

#[cfg(feature = "mio")]
pub use sqmail_mio::Mio as Chosen;

#[cfg(all(feature = "smol", not(feature = "mio")))]
pub use sqmail_smol::Smol as Chosen;

#[cfg(not(any(feature = "mio", feature = "smol")))]
compile_error!("build sqmail with the `mio` or the `smol` feature");
