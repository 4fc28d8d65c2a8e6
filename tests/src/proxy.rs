//! A TCP fault-injection proxy for loopback tests.
//!
//! The test kernels have neither `tc netem` nor toxiproxy, so fault tests put a
//! [`FaultProxy`] between the store and Redis or Postgres: point the store at
//! [`FaultProxy::addr`] instead of the server, then switch the proxy's [`Fault`] mode while
//! the test runs. Every mode applies to connections that are already open as well as to new
//! ones, so a pooled client feels the fault on its next request.
//!
//! [`FaultProxy::inject`] returns a [`FaultGuard`] that switches back to [`Fault::Pass`]
//! when dropped; [`FaultProxy::set`] switches until the next call. Dropping the proxy
//! closes its port and every connection through it.
//!
//! For example, in a `#[tokio::test]`, with `redis` a running `RedisServer`:
//!
//! ```text
//! use tiered_sessions_tests::{Fault, FaultProxy};
//!
//! let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
//! let redis_url = format!("redis://127.0.0.1:{}", proxy.port());
//! // ... build the store from redis_url, create a session ...
//! {
//!     let _hung = proxy.inject(Fault::Blackhole);
//!     // ... loading the session must time out and fall back to Postgres ...
//! }
//! // ... Redis answers again ...
//! ```

use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

/// Size of the buffer each direction reads into.
const CHUNK_SIZE: usize = 16 * 1024;
/// Chunks a direction holds (read, not yet written) before it stops reading.
const CHUNKS_IN_FLIGHT: usize = 64;
/// How long re-binding the port after [`Fault::Refuse`] retries while it is in use.
const REBIND_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of those retries.
const REBIND_POLL: Duration = Duration::from_millis(20);

/// What a [`FaultProxy`] does to the traffic through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes both ways as soon as they arrive.
    #[default]
    Pass,
    /// Forward every chunk read from either side this long after it was read: a slow
    /// network. Chunks are timestamped rather than forwarded one sleep at a time, so the
    /// delay adds latency (once per direction, so twice per round trip) without limiting
    /// throughput. Order within a direction is kept.
    Delay(Duration),
    /// Forward nothing either way, on existing and newly accepted connections: a network
    /// partition or a hung server. Connections stay open, and bytes sent meanwhile are held
    /// (as TCP would keep retransmitting them) and delivered, late, once the mode changes:
    /// a byte stream never loses bytes in the middle.
    Blackhole,
    /// Close every connection abruptly (the client sees `ECONNRESET`), and reset new ones
    /// as soon as they are accepted, while this mode holds: a crashing server.
    Reset,
    /// Close the listening port, so connecting fails with `ECONNREFUSED`, and close
    /// existing connections like [`Reset`](Self::Reset): a server that is down. Switching
    /// to any other mode binds the same port again.
    Refuse,
}

impl Fault {
    /// Whether this mode closes connections.
    fn closes(self) -> bool {
        matches!(self, Self::Reset | Self::Refuse)
    }
}

/// A TCP proxy on `127.0.0.1` that forwards to one upstream address (a Redis or
/// Postgres server) and injects [`Fault`]s, for tests on kernels without `tc netem`.
///
/// Point the client at [`addr`](Self::addr) instead of the upstream, then switch modes
/// with [`set`](Self::set) or [`inject`](Self::inject); every mode also applies to
/// connections already open. Each accepted connection gets its own connection to the
/// upstream; if that fails, the client's is reset. Start, switch and drop the proxy
/// inside a tokio runtime. Dropping it closes the port and every connection through it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// State shared by the proxy handle and its accept task.
#[derive(Debug)]
struct Shared {
    /// `None` while in [`Fault::Refuse`] and after the proxy is dropped. `set` closes and
    /// re-binds it itself, so a connect right after `set` returns already sees the change.
    listener: Mutex<Option<TcpListener>>,
    mode: watch::Sender<Fault>,
    open: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:<free port>` and forwards every connection to `upstream`, in
    /// [`Fault::Pass`] mode.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = bind((Ipv4Addr::LOCALHOST, 0).into())
            .expect("cannot bind 127.0.0.1:0 for the fault proxy: is loopback up?");
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let shared = Arc::new(Shared {
            listener: Mutex::new(Some(listener)),
            mode: watch::Sender::new(Fault::Pass),
            open: Arc::default(),
        });
        let accept_task = tokio::spawn(accept_loop(Arc::clone(&shared), upstream));
        FaultProxy {
            addr,
            shared,
            accept_task,
        }
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of [`addr`](Self::addr).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches to `fault` now, for existing and new connections, until the next switch.
    ///
    /// Leaving [`Fault::Refuse`] binds the same port again before returning; while the
    /// kernel reports the port in use, that retries (blocking the thread) for up to 2 s.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again (another socket took it while it was closed), or
    /// when called outside a tokio runtime.
    pub fn set(&self, fault: Fault) {
        if let Err(err) = self.switch(fault) {
            panic!("the fault proxy cannot bind {} again: {err}", self.addr);
        }
    }

    /// Switches to `fault` like [`set`](Self::set) until the returned guard is dropped,
    /// then back to [`Fault::Pass`].
    pub fn inject(&self, fault: Fault) -> FaultGuard<'_> {
        self.set(fault);
        FaultGuard { proxy: self }
    }

    /// How many proxied connections (client and upstream both connected) are open now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    fn switch(&self, fault: Fault) -> io::Result<()> {
        {
            let mut listener = lock(&self.shared.listener);
            if fault == Fault::Refuse {
                *listener = None;
            } else if listener.is_none() {
                *listener = Some(rebind(self.addr)?);
            }
        }
        // Also wakes the accept loop, which must look at the new listener.
        self.shared.mode.send_replace(fault);
        Ok(())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        *lock(&self.shared.listener) = None;
        // The accept task owns the connection tasks, so this aborts them too.
        self.accept_task.abort();
    }
}

/// Switches its proxy back to [`Fault::Pass`] when dropped; see [`FaultProxy::inject`].
#[must_use = "the fault ends when the guard is dropped; use `FaultProxy::set` to keep it"]
#[derive(Debug)]
pub struct FaultGuard<'a> {
    proxy: &'a FaultProxy,
}

impl Drop for FaultGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A second panic would abort the process and hide the first one.
            let _ = self.proxy.switch(Fault::Pass);
        } else {
            self.proxy.set(Fault::Pass);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Listens on `addr` with `SO_REUSEADDR`, so the port can be bound again while
/// connections accepted on it are still open.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// [`bind`], retried for up to [`REBIND_TIMEOUT`] while the port is in use.
fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = std::time::Instant::now() + REBIND_TIMEOUT;
    loop {
        match bind(addr) {
            Err(err)
                if err.kind() == io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(REBIND_POLL);
            }
            result => return result,
        }
    }
}

/// Accepts connections while the port is open and spawns [`forward`] for each. The
/// connection tasks live in a `JoinSet` owned here: aborting this task aborts them too.
async fn accept_loop(shared: Arc<Shared>, upstream: SocketAddr) {
    let mut mode = shared.mode.subscribe();
    let mut connections = JoinSet::new();
    loop {
        // `set` replaces the listener, so look it up on every poll. While there is none,
        // only the mode change that `set` sends afterwards wakes this loop.
        let accept = poll_fn(|cx| match lock(&shared.listener).as_ref() {
            Some(listener) => listener.poll_accept(cx),
            None => Poll::Pending,
        });
        tokio::select! {
            accepted = accept => {
                // An accept error concerns that one connection only.
                if let Ok((client, _)) = accepted {
                    let mode = shared.mode.subscribe();
                    connections.spawn(forward(client, upstream, mode, Arc::clone(&shared.open)));
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Proxies one accepted connection until a side closes or fails, or the mode closes it.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Fault>,
    open: Arc<AtomicUsize>,
) {
    if mode.borrow().closes() {
        return reset(client);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let counted = OpenConnection::new(open);
    // Requests and replies are small: don't let Nagle's algorithm hold them back.
    let _ = client.set_nodelay(true).and(server.set_nodelay(true));

    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let closed_by_fault = tokio::select! {
        _ = pump(client_read, server_write, mode.clone()) => false,
        _ = pump(server_read, client_write, mode.clone()) => false,
        _ = mode.wait_for(|fault| fault.closes()) => true,
    };
    if closed_by_fault {
        // Uncount first: a client that sees the reset may look at the count at once.
        drop(counted);
        drop(server);
        reset(client);
    }
    // Otherwise a side closed or failed; dropping both streams closes the other one.
}

/// Closes `client` abruptly: with `SO_LINGER` 0 the kernel sends RST instead of FIN, so
/// the client sees `ECONNRESET` rather than a clean end of stream.
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

/// Copies `from` to `to` under the current mode until `from` ends (then shuts `to` down)
/// or either side fails. A reader stamps each chunk with the time it is due and queues it;
/// a writer forwards the queued chunks in order, each at its due time.
async fn pump(
    from: ReadHalf<'_>,
    to: WriteHalf<'_>,
    mode: watch::Receiver<Fault>,
) -> io::Result<()> {
    let (queue, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::try_join!(
        read_chunks(from, queue, &mode),
        write_chunks(to, chunks, &mode)
    )?;
    Ok(())
}

/// The reading half of [`pump`]. Returning drops `queue`, so the writer finishes.
async fn read_chunks(
    mut from: ReadHalf<'_>,
    queue: mpsc::Sender<(Instant, Vec<u8>)>,
    mode: &watch::Receiver<Fault>,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK_SIZE];
    loop {
        let read = from.read(&mut buf).await?;
        if read == 0 {
            return Ok(());
        }
        let fault = *mode.borrow();
        let due = match fault {
            Fault::Delay(delay) => Instant::now() + delay,
            _ => Instant::now(),
        };
        if queue.send((due, buf[..read].to_vec())).await.is_err() {
            return Ok(()); // The writer failed; `try_join!` reports its error.
        }
    }
}

/// The writing half of [`pump`]: holds chunks that come due in [`Fault::Blackhole`] until
/// the mode changes.
async fn write_chunks(
    mut to: WriteHalf<'_>,
    mut chunks: mpsc::Receiver<(Instant, Vec<u8>)>,
    mode: &watch::Receiver<Fault>,
) -> io::Result<()> {
    let mut mode = mode.clone();
    while let Some((due, chunk)) = chunks.recv().await {
        if due > Instant::now() {
            sleep_until(due).await;
        }
        if mode
            .wait_for(|fault| *fault != Fault::Blackhole)
            .await
            .is_err()
        {
            return Ok(()); // The proxy is gone.
        }
        to.write_all(&chunk).await?;
    }
    to.shutdown().await
}

/// Counts one proxied connection in [`FaultProxy::connections`] while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::ErrorKind;

    use tokio::time::timeout;

    /// How long a connection that should be closed may take to look closed.
    const PROMPTLY: Duration = Duration::from_secs(1);

    /// Starts a server that echoes everything back; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    /// A proxy in front of a fresh echo server, and a client connected through it.
    async fn proxied() -> (FaultProxy, TcpStream) {
        let proxy = FaultProxy::start(echo_server().await).await;
        let client = connect(&proxy).await;
        (proxy, client)
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        TcpStream::connect(proxy.addr())
            .await
            .expect("connect to the proxy")
    }

    /// Writes `message` and reads as many bytes back.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut reply = vec![0; message.len()];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    async fn assert_echoes(stream: &mut TcpStream, message: &[u8]) {
        let reply = timeout(PROMPTLY, round_trip(stream, message))
            .await
            .expect("no echo within 1 s")
            .expect("echo through the proxy");
        assert_eq!(reply, message);
    }

    /// Fails unless reading `stream` fails with `ECONNRESET` within [`PROMPTLY`].
    async fn assert_reset(stream: &mut TcpStream) {
        let read = timeout(PROMPTLY, stream.read(&mut [0; 16])).await;
        let err = read
            .expect("the connection is still open after 1 s")
            .expect_err("read from a connection that should be reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    }

    #[tokio::test]
    async fn pass_forwards_both_ways_and_counts_connections() {
        let (proxy, mut client) = proxied().await;
        assert_echoes(&mut client, b"hello").await;
        // Several chunks' worth, in order.
        let bulk: Vec<u8> = (0..100_000_u32).map(|i| (i % 251) as u8).collect();
        assert_echoes(&mut client, &bulk).await;
        assert_eq!(proxy.connections(), 1);

        drop(client);
        let deadline = Instant::now() + PROMPTLY;
        while proxy.connections() != 0 {
            assert!(
                Instant::now() < deadline,
                "connection still counted after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn delay_holds_back_each_direction() {
        let (proxy, mut client) = proxied().await;
        let delay = Duration::from_millis(200);
        let guard = proxy.inject(Fault::Delay(delay));
        let started = Instant::now();
        assert_echoes(&mut client, b"slow").await;
        let took = started.elapsed();
        // Once per direction.
        assert!(took >= 2 * delay, "round trip took only {took:?}");

        drop(guard);
        let started = Instant::now();
        assert_echoes(&mut client, b"fast").await;
        assert!(
            started.elapsed() < delay,
            "still delayed after the guard dropped"
        );
    }

    #[tokio::test]
    async fn blackhole_forwards_nothing_until_switched_back() {
        let (proxy, mut client) = proxied().await;
        assert_echoes(&mut client, b"warm").await;
        let guard = proxy.inject(Fault::Blackhole);
        let mut fresh = connect(&proxy).await;
        let (old, new) = tokio::join!(
            timeout(Duration::from_millis(300), round_trip(&mut client, b"lost")),
            timeout(Duration::from_millis(300), round_trip(&mut fresh, b"lost")),
        );
        assert!(old.is_err(), "an existing connection was answered: {old:?}");
        assert!(new.is_err(), "a new connection was answered: {new:?}");

        drop(guard);
        // Held, not lost: what was sent during the blackhole arrives late, in order.
        for stream in [&mut client, &mut fresh] {
            let mut held = [0; 4];
            timeout(PROMPTLY, stream.read_exact(&mut held))
                .await
                .expect("the held bytes arrive once the blackhole ends")
                .expect("read");
            assert_eq!(&held, b"lost");
        }
        assert_echoes(&mut client, b"back").await;
    }

    #[tokio::test]
    async fn reset_closes_existing_and_new_connections() {
        let (proxy, mut client) = proxied().await;
        assert_echoes(&mut client, b"warm").await;
        let guard = proxy.inject(Fault::Reset);
        assert_reset(&mut client).await;
        assert_eq!(proxy.connections(), 0);

        // The reset may come before the connect completes, or after it.
        let attempt = timeout(PROMPTLY, async {
            let mut fresh = TcpStream::connect(proxy.addr()).await?;
            round_trip(&mut fresh, b"ping").await
        })
        .await
        .expect("a new connection hangs instead of being reset");
        assert!(attempt.is_err(), "answered while Reset: {attempt:?}");

        drop(guard);
        assert_echoes(&mut connect(&proxy).await, b"again").await;
    }

    #[tokio::test]
    async fn refuse_closes_the_port_and_reopens_the_same_one() {
        let (proxy, mut client) = proxied().await;
        assert_echoes(&mut client, b"warm").await;
        let port = proxy.port();
        let guard = proxy.inject(Fault::Refuse);
        let err = TcpStream::connect(proxy.addr())
            .await
            .expect_err("connected while Refuse");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert_reset(&mut client).await;

        drop(guard);
        let mut again = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("the port is open again after Refuse");
        assert_echoes(&mut again, b"again").await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_everything() {
        let (proxy, mut client) = proxied().await;
        assert_echoes(&mut client, b"warm").await;
        let addr = proxy.addr();
        drop(proxy);

        let read = timeout(PROMPTLY, client.read(&mut [0; 16]))
            .await
            .expect("the connection is still open after 1 s");
        assert!(matches!(read, Ok(0) | Err(_)), "read {read:?} after drop");
        let err = TcpStream::connect(addr)
            .await
            .expect_err("connected to a dropped proxy");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }
}
