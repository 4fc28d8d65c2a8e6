//! Loopback ports.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds `127.0.0.1:0`, reads the port the kernel chose and closes the socket again, so
/// another process may take the port before the caller binds it. The server types in this
/// crate notice that (the server exits because the port is taken) and retry on another
/// port; do the same when you bind the port yourself.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("cannot bind 127.0.0.1:0: is the loopback interface up?");
    listener
        .local_addr()
        .expect("a bound listener has a local address")
        .port()
}

/// Whether something else is listening on (or otherwise holding) `127.0.0.1:port`.
///
/// Used after a server exited during startup, to tell "the port was taken" (retry) from
/// any other failure (report it) by the error kind rather than by log text.
pub(crate) fn port_in_use(port: u16) -> bool {
    matches!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)),
        Err(err) if err.kind() == ErrorKind::AddrInUse
    )
}
