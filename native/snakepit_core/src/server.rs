//! Serving the bridge: `serve` runs until a shutdown future completes (the
//! caller owns the listener, so tests bind port 0); `RunningServer` wraps it for
//! callers outside async code, such as the NIF.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::proto::bridge_service_server::BridgeServiceServer;
use crate::service::Service;
use crate::store::{Store, DEFAULT_SESSION_TTL};

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            session_ttl: DEFAULT_SESSION_TTL,
            max_message_bytes: 4 * 1024 * 1024,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// Serves the bridge on `listener` until `shutdown` completes, then finishes
/// in-flight calls and returns.
pub async fn serve(
    store: Store,
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let sweeper = tokio::spawn(sweep(store.clone(), config.sweep_interval));
    let _stop_sweeper = AbortOnDrop(sweeper);
    // Graceful shutdown waits for open calls; watch streams never end on their
    // own, so they are told to finish (with UNAVAILABLE) when shutdown begins.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let service = BridgeServiceServer::new(Service::new(store, config.session_ttl, stopping))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // serve_with_incoming ignores Server::tcp_nodelay; without nodelay on the
    // incoming sockets each streamed message waits ~40 ms (Nagle + delayed ACK).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .http2_keepalive_interval(config.keepalive_interval)
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
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
