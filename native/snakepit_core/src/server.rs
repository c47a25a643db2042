//! Serving the bridge: `serve` runs until a shutdown future completes (the
//! caller owns the listener, so tests bind port 0); `RunningServer` wraps it for
//! callers outside async code, such as the NIF.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::limits::{Limits, DEFAULT_MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES};
use crate::net::{self, ConnInfo, ConnLimits};
use crate::proto::bridge_service_server::BridgeServiceServer;
use crate::service::{Service, ServiceConfig};
use crate::store::{Store, DEFAULT_SESSION_TTL};

/// Room for unary calls on a connection beside its watch streams.
const STREAMS_BESIDE_WATCHES: usize = 100;

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Idle TTL of sessions created over gRPC.
    pub session_ttl: Duration,
    /// Largest message accepted or sent, each way; bigger requests are refused.
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive pings; frees the streams of clients whose host vanished.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How often expired sessions are swept (access also expires them lazily).
    pub sweep_interval: Duration,
    /// Open connections at once. Each costs a file descriptor; the default
    /// leaves a BEAM with the usual soft limit of 1,024 most of its own.
    pub max_connections: usize,
    /// A new connection must send the HTTP/2 preface within this time, or it is closed.
    pub handshake_timeout: Duration,
    /// A connection with no call in progress for this long is closed (clients
    /// reconnect on their next call); `None` keeps idle connections forever.
    pub idle_timeout: Option<Duration>,
    /// WatchVariables streams open at once on one connection.
    pub max_watchers_per_connection: usize,
    /// WatchVariables streams open at once on this server.
    pub max_watchers: usize,
    /// The store's limits; applied to the store when the server starts.
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            session_ttl: DEFAULT_SESSION_TTL,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(1),
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            max_watchers_per_connection: 1024,
            max_watchers: 16_384,
            limits: Limits::default(),
        }
    }
}

impl From<&ServerConfig> for ServiceConfig {
    fn from(c: &ServerConfig) -> ServiceConfig {
        ServiceConfig {
            session_ttl: c.session_ttl,
            max_message_bytes: c.max_message_bytes,
            max_watchers: c.max_watchers,
            max_watchers_per_connection: c.max_watchers_per_connection,
        }
    }
}

impl ServerConfig {
    /// The defaults with another message limit, and the store limits sized for it.
    pub fn with_max_message_bytes(max_message_bytes: usize) -> ServerConfig {
        ServerConfig {
            max_message_bytes,
            limits: Limits::for_message_bytes(max_message_bytes),
            ..ServerConfig::default()
        }
    }

    /// Refuses settings that make no sense (zero limits, a message limit a
    /// variable cannot fit in); the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(format!(
                "max_message_bytes must be at least {MIN_MESSAGE_BYTES}, got {}",
                self.max_message_bytes
            ));
        }
        let counts = [
            ("max_connections", self.max_connections),
            ("max_watchers_per_connection", self.max_watchers_per_connection),
            ("max_watchers", self.max_watchers),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        let times = [
            ("session_ttl", self.session_ttl),
            ("keepalive_timeout", self.keepalive_timeout),
            ("sweep_interval", self.sweep_interval),
            ("handshake_timeout", self.handshake_timeout),
        ];
        if let Some((name, _)) = times.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be positive"));
        }
        self.limits.check_fits(self.max_message_bytes)
    }
}

/// Serves the bridge on `listener` until `shutdown` completes, then finishes
/// in-flight calls and returns. Refuses a config that does not validate, and
/// applies its store limits to `store`.
pub async fn serve(
    store: Store,
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    config.validate()?;
    store.set_limits(config.limits);
    let sweeper = tokio::spawn(sweep(store.clone(), config.sweep_interval));
    let _stop_sweeper = AbortOnDrop(sweeper);
    // Graceful shutdown waits for open calls; watch streams never end on their
    // own, so they are told to finish (with UNAVAILABLE) when shutdown begins.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let service = BridgeServiceServer::new(Service::new(store, ServiceConfig::from(&config), stopping))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let service = InterceptedService::new(service, note_call);
    // Our own accept loop: a connection cap, handshake and idle deadlines, and
    // accept errors that back off (and TCP_NODELAY: without it each streamed
    // message waits ~40 ms for Nagle and delayed ACKs).
    let limits = ConnLimits {
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
    };
    let (incoming, _open) = net::incoming(listener, limits);
    Server::builder()
        .http2_keepalive_interval(config.keepalive_interval)
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        // Watch streams are counted by the service, which refuses extras with
        // a clear status; this caps what any one connection can open at all.
        .max_concurrent_streams(
            u32::try_from(config.max_watchers_per_connection.saturating_add(STREAMS_BESIDE_WATCHES))
                .unwrap_or(u32::MAX),
        )
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Every call restarts its connection's idle clock.
fn note_call(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(conn) = request.extensions().get::<ConnInfo>() {
        conn.state.touch();
    }
    Ok(request)
}

async fn sweep(store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        store.sweep_expired();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server running on a runtime, controlled from synchronous code.
/// Dropping it asks the server to stop without waiting.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    finished: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Starts serving `listener` on `runtime`. The listener is already bound, so
    /// connections are accepted (queued) from the moment this returns.
    pub fn start(
        runtime: &Handle,
        store: Store,
        listener: std::net::TcpListener,
        config: ServerConfig,
    ) -> std::io::Result<RunningServer> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let (done, finished) = mpsc::channel();
        let task = runtime.spawn(async move {
            let stop = async {
                let _ = stop.await;
            };
            if let Err(e) = serve(store, listener, config, stop).await {
                eprintln!("snakepit bridge server on {addr} failed: {e}");
            }
            let _ = done.send(());
        });
        Ok(RunningServer { addr, shutdown: Some(shutdown), finished, task })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight calls finish for up to `grace`, then
    /// aborts what remains. Blocks the calling thread: never call it from async
    /// code. Returns whether the server finished within `grace`.
    pub fn stop(mut self, grace: Duration) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.finished.recv_timeout(grace) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.task.abort();
                false
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
