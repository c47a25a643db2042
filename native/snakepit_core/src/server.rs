//! Serving the bridge: `serve` runs until a shutdown future completes (the
//! caller owns the listener, so tests bind port 0); `RunningServer` wraps it for
//! callers outside async code, such as the NIF.
//!
//! Beside `snakepit.bridge.BridgeService`, the server answers the standard
//! `grpc.health.v1.Health` (SERVING until shutdown begins, then NOT_SERVING)
//! and server reflection (`grpc.reflection.v1` and `v1alpha`). They share the
//! accept loop, its connection guard and the message limit, but not the
//! BridgeService interceptor.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use http_body::{Body, Frame};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tonic::codegen::{http, BoxStream, Service as TowerService};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

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
    let (stopping_tx, stopping) = watch::channel(false);
    // Health turns NOT_SERVING first, so load balancers move away while
    // in-flight calls drain, and health watchers see it before their stream ends.
    let reporter = HealthReporter::new();
    reporter.set_serving::<BridgeServiceServer<Service>>().await;
    let health = HealthService::from_health_reporter(reporter.clone());
    let shutdown = async move {
        shutdown.await;
        for name in ["", <BridgeServiceServer<Service> as NamedService>::NAME] {
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
        let _ = stopping_tx.send(true);
    };
    let max = config.max_message_bytes;
    let service = BridgeServiceServer::new(Service::new(store, ServiceConfig::from(&config), stopping.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let service = InterceptedService::new(service, note_activity);
    let health = HealthServer::new(HealthUntilStop { inner: health, stopping: stopping.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let health = InterceptedService::new(health, note_activity);
    let reflection_v1 = reflection().build_v1()?.max_decoding_message_size(max).max_encoding_message_size(max);
    let reflection_v1 = InterceptedService::new(EndOnStop::new(reflection_v1, stopping.clone()), note_activity);
    let reflection_v1alpha =
        reflection().build_v1alpha()?.max_decoding_message_size(max).max_encoding_message_size(max);
    let reflection_v1alpha = InterceptedService::new(EndOnStop::new(reflection_v1alpha, stopping), note_activity);
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
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Every call, whatever the service: restarts its connection's idle clock.
fn note_activity(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(conn) = request.extensions().get::<ConnInfo>() {
        conn.state.touch();
    }
    Ok(request)
}

/// Reflection over our proto (and the well-known types it imports), health and
/// reflection itself, so a client lists every service the server answers.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// tonic-health's service, but a `Watch` stream ends with UNAVAILABLE once
/// shutdown begins (after NOT_SERVING), as graceful shutdown waits for open streams.
struct HealthUntilStop {
    inner: HealthService,
    stopping: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Health for HealthUntilStop {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let state = Some((statuses, self.stopping.clone()));
        let stream = futures_util::stream::unfold(state, |state| async move {
            let (mut statuses, mut stopping) = state?;
            // Biased: a status already set (NOT_SERVING is set before `stopping`)
            // is sent before the stream ends.
            let status = tokio::select! {
                biased;
                status = statuses.next() => status,
                _ = stopping.wait_for(|stopping| *stopping) => None,
            };
            match status {
                Some(status) => Some((status, Some((statuses, stopping)))),
                None => Some((Err(tonic::Status::unavailable("the server is shutting down")), None)),
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Wraps a service so that its request bodies end once shutdown begins: a
/// reflection stream the client keeps open then finishes (OK) instead of
/// holding graceful shutdown forever.
#[derive(Clone)]
struct EndOnStop<S> {
    inner: S,
    stopping: watch::Receiver<bool>,
}

impl<S> EndOnStop<S> {
    fn new(inner: S, stopping: watch::Receiver<bool>) -> EndOnStop<S> {
        EndOnStop { inner, stopping }
    }
}

impl<S: NamedService> NamedService for EndOnStop<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> TowerService<http::Request<B>> for EndOnStop<S>
where
    S: TowerService<http::Request<StopBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut stopping = self.stopping.clone();
        let stop = Box::pin(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
        self.inner.call(request.map(|body| StopBody { body: Box::pin(body), stop, stopped: false }))
    }
}

/// A request body that ends (cleanly, between messages) once shutdown begins.
struct StopBody<B> {
    body: Pin<Box<B>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
}

impl<B: Body> Body for StopBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        if this.stopped {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.body.as_mut().poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.stop.as_mut().poll(cx).is_ready() {
            this.stopped = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.stopped || self.body.is_end_stream()
    }
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
