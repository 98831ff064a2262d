//! Both runtimes run the same suite: the daemon and stdio mode over real
//! loopback sockets and pipes, with an in-memory host. One suite, included
//! once per runtime, is how "two runtimes, one behaviour" stays checked.
//!
//! Every wait is bounded (socket read timeouts, `recv_timeout`), so a broken
//! runtime fails a test instead of hanging it.

mod mio {
    type Rt = sqmail_mio::Mio;
    include!("runtime_suite/suite.rs");
}

mod smol {
    type Rt = sqmail_smol::Smol;
    include!("runtime_suite/suite.rs");
}
