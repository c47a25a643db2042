//! Serving the bridge: `serve` runs until a shutdown future completes (the
//! caller owns the listener, so tests bind port 0); `RunningServer` wraps it for
//! callers outside async code, such as the NIF.
//!
//! Beside `snakepit.bridge.BridgeService`, the server answers the standard
//! `grpc.health.v1.Health` (SERVING until shutdown begins, then NOT_SERVING)
//! and server reflection (`grpc.reflection.v1` and `v1alpha`). They share the
//! accept loop, its connection guard, TLS and the message limit. Every call but
//! health checking must carry a valid token when the server has one (see
//! [`crate::auth`]); refusals are logged at warn with the peer's address.

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
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::auth::{self, Grant, Secret};
use crate::limits::{Limits, DEFAULT_MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES};
use crate::net::{self, ConnLimits};
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
    /// The server's token; `None` serves without authentication (refused off
    /// loopback unless `allow_insecure`).
    pub auth: Option<Secret>,
    /// Certificate and key to serve TLS with; `None` serves plain HTTP/2.
    pub tls: Option<Tls>,
    /// Serve a non-loopback address without TLS and a token anyway.
    pub allow_insecure: bool,
    /// Where calls about sessions this node's store does not hold go (see
    /// [`crate::forward`]); `None` serves every call locally.
    pub forwarder: Option<std::sync::Arc<dyn crate::forward::Forwarder>>,
}

/// TLS settings, as PEM text.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate chain.
    pub cert_pem: Vec<u8>,
    /// The certificate's private key.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("client_certificates_required", &self.client_ca_pem.is_some()).finish()
    }
}

impl Tls {
    /// Reads the PEM files; the message names the file that could not be read.
    pub fn from_files(cert: &str, key: &str, client_ca: Option<&str>) -> Result<Tls, String> {
        let read =
            |what: &str, path: &str| std::fs::read(path).map_err(|e| format!("cannot read the {what} {path}: {e}"));
        Ok(Tls {
            cert_pem: read("TLS certificate", cert)?,
            key_pem: read("TLS key", key)?,
            client_ca_pem: client_ca.map(|path| read("client CA certificate", path)).transpose()?,
        })
    }

    fn server_config(&self, handshake_timeout: Duration) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(handshake_timeout);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
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
            auth: None,
            tls: None,
            allow_insecure: false,
            forwarder: None,
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
            forwarder: c.forwarder.clone(),
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
        self.limits.check_fits(self.max_message_bytes)?;
        if let Some(tls) = &self.tls {
            // Parses the certificate and key now, so a bad file fails the start.
            Server::builder()
                .tls_config(tls.server_config(self.handshake_timeout))
                .map_err(|e| format!("tls: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    /// Refuses to serve a non-loopback `addr` without TLS and a token unless
    /// `allow_insecure`; see [`auth::check_exposure`].
    pub fn check_exposure(&self, addr: SocketAddr) -> Result<(), String> {
        auth::check_exposure(addr, self.tls.is_some(), self.auth.is_some(), self.allow_insecure)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    config.check_exposure(listener.local_addr()?)?;
    if config.auth.is_none() {
        tracing::warn!(addr = %listener.local_addr()?, "serving without a token: any process that can connect can use every session");
    }
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
    let secret = config.auth.clone().map(std::sync::Arc::new);
    let to_bridge = {
        let secret = secret.clone();
        move |request| authenticate(secret.as_deref(), request)
    };
    let to_reflection = move |request| {
        let request = authenticate(secret.as_deref(), request)?;
        auth::check_server_call(request.extensions())?;
        Ok(request)
    };
    let service = LogRefusals(InterceptedService::new(service, to_bridge));
    // Health needs no token: probes and load balancers do not have one.
    let health = HealthServer::new(HealthUntilStop { inner: health, stopping: stopping.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let health = InterceptedService::new(health, note_activity);
    let reflection_v1 = reflection().build_v1()?.max_decoding_message_size(max).max_encoding_message_size(max);
    let reflection_v1 =
        LogRefusals(InterceptedService::new(EndOnStop::new(reflection_v1, stopping.clone()), to_reflection.clone()));
    let reflection_v1alpha =
        reflection().build_v1alpha()?.max_decoding_message_size(max).max_encoding_message_size(max);
    let reflection_v1alpha =
        LogRefusals(InterceptedService::new(EndOnStop::new(reflection_v1alpha, stopping), to_reflection));
    // Our own accept loop: a connection cap, handshake and idle deadlines, and
    // accept errors that back off (and TCP_NODELAY: without it each streamed
    // message waits ~40 ms for Nagle and delayed ACKs).
    let limits = ConnLimits {
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
    };
    let (incoming, _open) = net::incoming(listener, limits);
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config(config.handshake_timeout))?;
    }
    builder
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
    if let Some(conn) = net::conn_info(request.extensions()) {
        conn.state.touch();
    }
    Ok(request)
}

/// Notes activity, then checks the token (when the server has one) and
/// leaves what it grants in the request's extensions for the handlers.
#[allow(clippy::result_large_err)]
fn authenticate(secret: Option<&Secret>, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let mut request = note_activity(request)?;
    let grant = match secret {
        Some(secret) => secret.check(request.metadata())?,
        None => Grant::Server,
    };
    request.extensions_mut().insert(grant);
    Ok(request)
}

/// Logs the calls a service refuses for who the caller is or what it asked
/// for (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) at warn, with
/// the peer's address and the method; never the token.
#[derive(Clone)]
struct LogRefusals<S>(S);

impl<S: NamedService> NamedService for LogRefusals<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> TowerService<http::Request<B>> for LogRefusals<S>
where
    S: TowerService<http::Request<B>, Response = http::Response<R>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = LogRefusal<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = net::conn_info(request.extensions()).and_then(|c| c.remote_addr);
        let method = request.uri().clone();
        LogRefusal { inner: self.0.call(request), peer, method }
    }
}

/// The response future of [`LogRefusals`].
struct LogRefusal<F> {
    inner: F,
    peer: Option<SocketAddr>,
    method: http::Uri,
}

impl<F, R, E> Future for LogRefusal<F>
where
    F: Future<Output = Result<http::Response<R>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let Ok(response) = &output {
            // A refusal is a trailers-only response: its status is in the headers.
            if let Some(status) = tonic::Status::from_header_map(response.headers()) {
                let (peer, method) = (self.peer, self.method.path());
                let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
                match status.code() {
                    tonic::Code::Unauthenticated => {
                        tracing::warn!(%peer, method, "unauthenticated call refused (missing or invalid token)")
                    }
                    tonic::Code::PermissionDenied => {
                        tracing::warn!(%peer, method, "call refused: outside what its session token grants")
                    }
                    tonic::Code::ResourceExhausted => {
                        tracing::warn!(%peer, method, reason = status.message(), "call refused at a limit")
                    }
                    _ => {}
                }
            }
        }
        Poll::Ready(output)
    }
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

/// Sends panic messages to `tracing` at error (with where they happened)
/// instead of straight to stderr: inside the BEAM they reach Logger. Replaces
/// the process's panic hook; call it once, at start.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), location, "panic: {message}");
    }));
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
    /// connections are accepted (queued) from the moment this returns. A config
    /// that does not validate, or may not serve this address, is an
    /// `InvalidInput` error saying why.
    pub fn start(
        runtime: &Handle,
        store: Store,
        listener: std::net::TcpListener,
        config: ServerConfig,
    ) -> std::io::Result<RunningServer> {
        let addr = listener.local_addr()?;
        let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
        config.validate().map_err(invalid)?;
        config.check_exposure(addr).map_err(invalid)?;
        listener.set_nonblocking(true)?;
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
                tracing::error!(%addr, error = %e, "the bridge server failed");
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
