//! Accepted connections, guarded against hostile or broken clients.
//!
//! The server lives inside the user's BEAM node, so a client must not be able to
//! exhaust its descriptors or spin a core. [`incoming`] replaces tonic's
//! `TcpIncoming` and adds:
//! - a cap on open connections: past it a new socket is closed at once (the
//!   client sees the connection closed; gRPC clients report UNAVAILABLE and retry);
//! - a handshake deadline: the HTTP/2 preface and a frame header must arrive in time;
//! - an optional idle timeout: no call started and no watch stream open for that long;
//! - accept errors that back off (descriptor or memory exhaustion) instead of spinning.
//!
//! Deadlines are enforced in [`GuardedStream`]'s `poll_read`: it polls a timer, so the
//! connection task wakes when the deadline passes, and fails the read with `TimedOut`,
//! which makes hyper drop the connection (and with it the slot).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TlsConnectInfo};

/// The HTTP/2 client preface (24 bytes) plus one frame header (9): what a real
/// client sends first, so what must arrive before the handshake deadline.
pub const HANDSHAKE_BYTES: usize = 24 + 9;

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Limits applied to every accepted connection; see the module doc for why each exists.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Most connections open at once; a connection accepted past it is closed at once.
    pub max_connections: usize,
    /// Time allowed to send [`HANDSHAKE_BYTES`] after the TCP accept.
    pub handshake_timeout: Duration,
    /// Close a connection with no call started and no watch stream open for this
    /// long; `None` keeps idle connections forever. The clock counts call starts
    /// only: a single call running longer than this is cut off with its connection.
    pub idle_timeout: Option<Duration>,
}

/// Per-connection state shared between the IO wrapper and the request handlers:
/// handlers report activity here, the wrapper reads it to enforce the idle timeout.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last activity.
    last_active: AtomicU64,
    watchers: AtomicUsize,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState { epoch: Instant::now(), last_active: AtomicU64::new(0), watchers: AtomicUsize::new(0) }
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos().try_into().unwrap_or(u64::MAX)
    }

    /// A call started on this connection: restarts the idle clock.
    pub fn touch(&self) {
        self.last_active.fetch_max(self.since_epoch(Instant::now()), Ordering::Relaxed);
    }

    /// Takes a watch-stream slot if fewer than `max` are open on this connection, so
    /// one connection cannot hold unbounded subscriptions. The slot counts as activity
    /// (the idle timeout never fires) for as long as it lives.
    pub fn try_add_watcher(self: &Arc<Self>, max: usize) -> Option<WatcherSlot> {
        self.watchers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(WatcherSlot { state: Arc::clone(self) })
    }

    /// Watch streams open on this connection now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    fn last_active(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_active.load(Ordering::Relaxed))
    }
}

/// One open watch stream on a connection. Dropping it releases the slot and
/// restarts the idle clock, so the connection gets a full idle period after its
/// last stream ends.
#[derive(Debug)]
pub struct WatcherSlot {
    state: Arc<ConnState>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.state.touch();
        self.state.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What handlers find in request extensions (`request.extensions().get::<ConnInfo>()`):
/// the peer, and the connection's state to report calls and watch streams to.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address, as returned by accept.
    pub remote_addr: Option<SocketAddr>,
    /// Shared with the connection's [`GuardedStream`].
    pub state: Arc<ConnState>,
}

/// The [`ConnInfo`] of a call (over TLS or not), from its request's
/// extensions, if it came through [`incoming`].
pub fn conn_info(extensions: &tonic::Extensions) -> Option<&ConnInfo> {
    extensions.get::<ConnInfo>().or_else(|| extensions.get::<TlsConnectInfo<ConnInfo>>().map(TlsConnectInfo::get_ref))
}

/// A handle on the number of open connections, for stats and tests.
#[derive(Debug, Clone)]
pub struct ConnCounter(Arc<AtomicUsize>);

impl ConnCounter {
    /// Connections accepted and not yet dropped.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One unit of the connection cap; released on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot(Arc::clone(open)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
enum Phase {
    /// Bytes read so far, waiting for [`HANDSHAKE_BYTES`].
    Handshake(usize),
    Open,
}

/// An accepted socket holding a connection slot and enforcing the handshake and
/// idle deadlines in `poll_read`. Implements tonic's `Connected` with [`ConnInfo`].
#[derive(Debug)]
pub struct GuardedStream {
    // Declared first so the slot is released before the socket closes: a client
    // that sees the close can connect again at once.
    _slot: Slot,
    io: TcpStream,
    info: ConnInfo,
    phase: Phase,
    idle_timeout: Option<Duration>,
    /// The next deadline; `None` once the handshake is done and there is no idle timeout.
    timer: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    fn new(io: TcpStream, remote_addr: SocketAddr, slot: Slot, limits: &ConnLimits) -> GuardedStream {
        GuardedStream {
            _slot: slot,
            io,
            info: ConnInfo { remote_addr: Some(remote_addr), state: Arc::new(ConnState::new()) },
            phase: Phase::Handshake(0),
            idle_timeout: limits.idle_timeout,
            timer: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
        }
    }

    /// Polls the deadline timer (registering the waker). `Err` when a deadline passed
    /// and the connection must close; re-arms when the connection was active meanwhile.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            let Some(timer) = self.timer.as_mut() else {
                return Ok(());
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            if let Phase::Handshake(_) = self.phase {
                tracing::debug!(peer = ?self.info.remote_addr, "connection closed: no handshake before the deadline");
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 handshake before the deadline"));
            }
            // (Never None here: the timer is dropped at the handshake when there is no idle timeout.)
            let Some(idle) = self.idle_timeout else { return Ok(()) };
            let now = Instant::now();
            let state = &self.info.state;
            let next = if state.watchers() > 0 { now + idle } else { state.last_active() + idle };
            if next <= now {
                tracing::debug!(peer = ?self.info.remote_addr, "connection closed: idle");
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
            }
            timer.as_mut().reset(next);
        }
    }

    /// Counts handshake bytes; once complete, switches the timer to the idle clock.
    fn on_read(&mut self, n: usize, cx: &mut Context<'_>) {
        let Phase::Handshake(seen) = self.phase else { return };
        let seen = seen + n;
        if seen < HANDSHAKE_BYTES {
            self.phase = Phase::Handshake(seen);
            return;
        }
        self.phase = Phase::Open;
        self.info.state.touch();
        match (self.idle_timeout, self.timer.as_mut()) {
            (Some(idle), Some(timer)) => {
                timer.as_mut().reset(Instant::now() + idle);
                // Register the waker for the new deadline now.
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            _ => self.timer = None,
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        tracing::debug!(peer = ?self.info.remote_addr, "connection closed");
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.poll_deadline(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.on_read(n, cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The accept loop as a stream for `Server::serve_with_incoming_shutdown`, plus a
/// counter of open connections. The stream never yields errors: accept errors are
/// handled here (see [`ConnLimits`] and the module doc), so tonic's loop never spins.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
) -> (impl Stream<Item = Result<GuardedStream, io::Error>> + Send + 'static, ConnCounter) {
    let open = Arc::new(AtomicUsize::new(0));
    let counter = ConnCounter(Arc::clone(&open));
    (Incoming { listener, limits, open, backoff: None, next_delay: MIN_BACKOFF }, counter)
}

struct Incoming {
    listener: TcpListener,
    limits: ConnLimits,
    open: Arc<AtomicUsize>,
    /// Armed after a resource error; accept is not retried before it fires.
    backoff: Option<Pin<Box<Sleep>>>,
    next_delay: Duration,
}

impl Stream for Incoming {
    type Item = Result<GuardedStream, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // poll_accept spends the task's coop budget, so rejecting a flood in this
        // loop still yields to the runtime now and then.
        loop {
            if let Some(sleep) = this.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((io, addr)) => {
                    this.next_delay = MIN_BACKOFF;
                    let Some(slot) = Slot::take(&this.open, this.limits.max_connections) else {
                        tracing::warn!(
                            peer = %addr,
                            max_connections = this.limits.max_connections,
                            "connection refused at the limit max_connections"
                        );
                        drop(io); // at the cap: closed at once rather than left waiting
                        continue;
                    };
                    tracing::debug!(peer = %addr, "connection opened");
                    // Without nodelay each streamed message waits ~40 ms (Nagle + delayed ACK).
                    let _ = io.set_nodelay(true);
                    return Poll::Ready(Some(Ok(GuardedStream::new(io, addr, slot, &this.limits))));
                }
                Err(e) if is_per_connection(&e) => continue,
                Err(_) => {
                    // Out of descriptors or memory (or an error we do not know): the
                    // pending connection stays queued and accept would fail again at once.
                    this.backoff = Some(Box::pin(tokio::time::sleep(this.next_delay)));
                    this.next_delay = (this.next_delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Errors of one pending connection (it was reset, or the network reported an error
/// for it, which Linux passes to accept); the next accept may well succeed.
fn is_per_connection(e: &io::Error) -> bool {
    let Some(code) = e.raw_os_error() else { return false };
    [
        libc::ECONNABORTED,
        libc::ECONNRESET,
        libc::EINTR,
        libc::EPROTO,
        libc::EPERM,
        libc::ETIMEDOUT,
        libc::ENETDOWN,
        libc::ENETUNREACH,
        libc::EHOSTDOWN,
        libc::EHOSTUNREACH,
        libc::ENOPROTOOPT,
        libc::EOPNOTSUPP,
    ]
    .contains(&code)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, so the connection cap rather than a
/// low default soft limit (often 1024) bounds the server, and the BEAM's own ports are
/// not starved by our sockets. Never lowers it. Returns (old soft, new soft).
///
/// The limit is process-wide and inherited by child processes spawned afterwards.
// rlim_t is u32 on some 32-bit targets, so the u64::from calls are not useless everywhere.
#[allow(clippy::useless_conversion)]
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = u64::from(lim.rlim_cur);
    #[allow(unused_mut)]
    let mut target = lim.rlim_max;
    // macOS refuses a soft limit above OPEN_MAX even when the hard limit is unlimited.
    #[cfg(target_vendor = "apple")]
    {
        target = target.min(10240);
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= target {
        return Ok((old, old));
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit reads one rlimit from the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((old, u64::from(target)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    use tokio::sync::mpsc;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// The preface plus a 9-byte (empty SETTINGS) frame header.
    fn handshake() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        v
    }

    struct Harness {
        addr: SocketAddr,
        counter: ConnCounter,
        /// The ConnInfo of each admitted connection, in accept order.
        admitted: mpsc::UnboundedReceiver<ConnInfo>,
        /// How each admitted connection's reads ended (error kind, or None for EOF).
        ended: mpsc::UnboundedReceiver<Option<io::ErrorKind>>,
    }

    /// Serves `incoming()` like hyper would: one task per connection reading until error or EOF.
    async fn serve(limits: ConnLimits) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, counter) = incoming(listener, limits);
        let (admitted_tx, admitted) = mpsc::unbounded_channel();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(conn) = stream.next().await {
                let mut conn = conn.expect("incoming yields no errors");
                let _ = admitted_tx.send(conn.connect_info());
                let ended_tx = ended_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    let end = loop {
                        match conn.read(&mut buf).await {
                            Ok(0) => break None,
                            Ok(_) => {}
                            Err(e) => break Some(e.kind()),
                        }
                    };
                    drop(conn);
                    let _ = ended_tx.send(end);
                });
            }
        });
        Harness { addr, counter, admitted, ended }
    }

    fn limits(max: usize, handshake: u64, idle: Option<u64>) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            handshake_timeout: Duration::from_millis(handshake),
            idle_timeout: idle.map(Duration::from_millis),
        }
    }

    /// True when the server closed `c` within `within` (EOF or reset), false if still open.
    async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, c.read(&mut buf)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("server sent {n} bytes"),
        }
    }

    async fn wait_open(counter: &ConnCounter, n: usize) {
        let t = Instant::now();
        while counter.open() != n {
            assert!(t.elapsed() < Duration::from_secs(2), "open() stayed {} (want {n})", counter.open());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn connect(h: &mut Harness, send: &[u8]) -> (TcpStream, ConnInfo) {
        use tokio::io::AsyncWriteExt;
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        c.write_all(send).await.unwrap();
        let info = tokio::time::timeout(Duration::from_secs(2), h.admitted.recv()).await.unwrap().unwrap();
        (c, info)
    }

    /// `c` is closed by a 300 ms deadline counted from `start` (not before it,
    /// nor long after), the server saw a timeout, and its slot is free again.
    async fn closed_at_300ms_deadline(h: &mut Harness, c: &mut TcpStream, start: Instant, left_open: &str) {
        assert!(closed_within(c, Duration::from_secs(2)).await, "{left_open}");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(280), "closed too early: {took:?}");
        assert!(took < Duration::from_millis(1500), "closed too late: {took:?}");
        assert_eq!(h.ended.recv().await.unwrap(), Some(io::ErrorKind::TimedOut));
        wait_open(&h.counter, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connection_closed_at_handshake_deadline() {
        let mut h = serve(limits(10, 300, None)).await;
        let t = Instant::now();
        let (mut c, _) = connect(&mut h, b"").await;
        wait_open(&h.counter, 1).await;
        closed_at_300ms_deadline(&mut h, &mut c, t, "silent connection left open").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_preface_closed_at_handshake_deadline() {
        let mut h = serve(limits(10, 300, None)).await;
        let (mut c, _) = connect(&mut h, &handshake()[..HANDSHAKE_BYTES - 1]).await;
        assert!(closed_within(&mut c, Duration::from_secs(2)).await, "32 bytes passed the handshake");
        wait_open(&h.counter, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handshake_in_pieces_passes_deadline() {
        use tokio::io::AsyncWriteExt;
        let mut h = serve(limits(10, 300, None)).await;
        let hs = handshake();
        let (mut c, _) = connect(&mut h, &hs[..10]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(&hs[10..]).await.unwrap();
        assert!(!closed_within(&mut c, Duration::from_millis(900)).await, "closed after a full handshake");
        assert_eq!(h.counter.open(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cap_closes_extra_connections_at_once() {
        let mut h = serve(limits(3, 10_000, None)).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect(&mut h, &handshake()).await.0);
        }
        wait_open(&h.counter, 3).await;

        let t = Instant::now();
        let mut extra = TcpStream::connect(h.addr).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_millis(500)).await, "4th connection admitted");
        assert!(t.elapsed() < Duration::from_millis(500));
        for c in &mut held {
            assert!(!closed_within(c, Duration::from_millis(50)).await, "held connection closed");
        }
        assert_eq!(h.counter.open(), 3);
        assert!(h.admitted.try_recv().is_err(), "4th connection reached the server");

        drop(held.pop());
        wait_open(&h.counter, 2).await;
        let (mut again, _) = connect(&mut h, &handshake()).await;
        assert!(!closed_within(&mut again, Duration::from_millis(300)).await, "free slot refused");
        assert_eq!(h.counter.open(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connection_closed() {
        let mut h = serve(limits(10, 5_000, Some(300))).await;
        let t = Instant::now();
        let (mut c, _) = connect(&mut h, &handshake()).await;
        closed_at_300ms_deadline(&mut h, &mut c, t, "idle connection left open").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watcher_slot_keeps_connection_open() {
        let mut h = serve(limits(10, 5_000, Some(300))).await;
        let (mut c, info) = connect(&mut h, &handshake()).await;
        let slot = info.state.try_add_watcher(1).unwrap();
        assert!(!closed_within(&mut c, Duration::from_millis(1000)).await, "closed with a watch stream open");
        let t = Instant::now();
        drop(slot);
        assert!(closed_within(&mut c, Duration::from_secs(2)).await, "left open after the watch stream ended");
        let took = t.elapsed();
        // A full idle period after the slot went, not the leftover of an older deadline.
        assert!(took >= Duration::from_millis(280), "closed too early after the slot: {took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn touch_postpones_idle_close() {
        let mut h = serve(limits(10, 5_000, Some(300))).await;
        let (mut c, info) = connect(&mut h, &handshake()).await;
        for _ in 0..10 {
            assert!(!closed_within(&mut c, Duration::from_millis(100)).await, "closed while calls kept coming");
            info.state.touch();
        }
        let t = Instant::now();
        assert!(closed_within(&mut c, Duration::from_secs(2)).await, "left open after calls stopped");
        assert!(t.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", t.elapsed());
    }

    /// Through tonic and hyper for real: the type fits `serve_with_incoming_shutdown`, a real
    /// HTTP/2 handshake passes the deadline, the idle close is clean and the client reconnects.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_grpc_connection_passes_handshake_and_idles_out() {
        use crate::proto::bridge_service_client::BridgeServiceClient;
        use crate::proto::bridge_service_server::BridgeServiceServer;
        use crate::proto::PingRequest;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, counter) = incoming(listener, limits(10, 200, Some(600)));
        let (_stopping_tx, stopping) = tokio::sync::watch::channel(false);
        let service = crate::service::Service::new(
            crate::Store::new(),
            crate::service::ServiceConfig::from(&crate::server::ServerConfig::default()),
            stopping,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BridgeServiceServer::new(service))
                .serve_with_incoming_shutdown(stream, async {
                    let _ = stopped.await;
                }),
        );
        let mut client = BridgeServiceClient::connect(format!("http://{addr}")).await.unwrap();
        // Past the handshake deadline, within the idle timeout.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(counter.open(), 1, "the real handshake passed the deadline");
        assert_eq!(client.ping(PingRequest { message: "hi".into() }).await.unwrap().into_inner().message, "hi");
        wait_open(&counter, 0).await;
        let again = client.ping(PingRequest { message: "again".into() }).await;
        assert_eq!(again.unwrap().into_inner().message, "again", "client reconnects after the idle close");
        assert_eq!(counter.open(), 1);
        stop.send(()).unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }

    #[test]
    fn watcher_slots_are_capped_and_freed() {
        let state = Arc::new(ConnState::new());
        let a = state.try_add_watcher(2).unwrap();
        let _b = state.try_add_watcher(2).unwrap();
        assert_eq!(state.watchers(), 2);
        assert!(state.try_add_watcher(2).is_none());
        assert_eq!(state.watchers(), 2, "a refused slot is not counted");
        let before = state.last_active.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        drop(a);
        assert_eq!(state.watchers(), 1);
        assert!(state.last_active.load(Ordering::Relaxed) > before, "dropping a slot restarts the idle clock");
        assert!(state.try_add_watcher(2).is_some());
        assert!(state.try_add_watcher(0).is_none());
    }

    #[test]
    fn accept_errors_classified() {
        let err = io::Error::from_raw_os_error;
        assert!(is_per_connection(&err(libc::ECONNABORTED)));
        assert!(is_per_connection(&err(libc::ECONNRESET)));
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(!is_per_connection(&err(code)), "{code} must back off");
        }
        assert!(!is_per_connection(&io::Error::other("unknown")));
    }
}
