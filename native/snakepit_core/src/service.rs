//! The gRPC `BridgeService` over a [`Store`]: each handler decodes, calls the
//! store once, and encodes. Store calls are short and in memory, so they run
//! inline on the runtime's worker threads; the one whose cost grows with a
//! session (ListVariables) runs on the blocking pool, a few at a time, so it
//! never holds up the workers that serve everyone else.
//!
//! Limits of this edge: watch streams per connection and in all, and the
//! message size of every response (a response that would not fit is refused
//! with a message saying so, instead of failing in the transport).
//!
//! With an active [`Forwarder`], a call about a session this store does not
//! hold goes to the node that does (InitializeSession always goes: the
//! cluster picks where a session lives); authorization stays here, on the
//! node the client reached. [`Service::serve_forwarded`] is the owner's end.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::sync::Semaphore;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{self, Grant};
use crate::error::clip;
use crate::error::StoreError;
use crate::forward::{Bytes, Forwarder, Method, RemoteStream};
use crate::limits::exceeded;
use crate::model::{Metadata, Source, Update};
use crate::net::{self, ConnInfo};

/// Checks that the caller's token covers `session_id`. A request without a
/// grant came through no authenticating interceptor (only in-process tests
/// build such a service), and is allowed.
#[allow(clippy::result_large_err)]
fn authorize<T>(request: &Request<T>, session_id: &str) -> Result<(), Status> {
    request.extensions().get::<Grant>().map_or(Ok(()), |grant| grant.allows(session_id))
}

/// Requests that name the session they are about.
trait AboutSession {
    fn session_id(&self) -> &str;
}

macro_rules! about_session {
    ($($request:ty),* $(,)?) => {
        $(impl AboutSession for $request {
            fn session_id(&self) -> &str {
                &self.session_id
            }
        })*
    };
}

about_session!(
    InitializeSessionRequest,
    CleanupSessionRequest,
    GetSessionRequest,
    HeartbeatRequest,
    GetVariableRequest,
    SetVariableRequest,
    BatchGetVariablesRequest,
    BatchSetVariablesRequest,
    RegisterVariableRequest,
    ListVariablesRequest,
    DeleteVariableRequest,
    WatchVariablesRequest,
);
use crate::proto::bridge_service_server::BridgeService;
use crate::proto::*;
use crate::store::{BatchGet, Change, Input, NewVariable, Store};
use crate::value::VarType;
use crate::watch::{Owner, Subscription};
use crate::wire;

/// The settings of a service; see [`crate::server::ServerConfig`] for each.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub session_ttl: Duration,
    pub max_message_bytes: usize,
    pub max_watchers: usize,
    pub max_watchers_per_connection: usize,
    /// Where calls about sessions this store does not hold go; `None` serves
    /// every call locally.
    pub forwarder: Option<Arc<dyn Forwarder>>,
}

/// Response header of a WatchVariables stream the server registered (value "open").
pub const WATCH_OPEN_KEY: &str = "snakepit-watch";

/// Scans of whole sessions (ListVariables) running at once; more wait their turn.
const CONCURRENT_SCANS: usize = 2;

/// The service: a store handle plus the settings of this server.
#[derive(Clone, Debug)]
pub struct Service {
    store: Store,
    config: Arc<ServiceConfig>,
    /// Becomes true when the server shuts down; open watch streams then end.
    stopping: watch::Receiver<bool>,
    /// Open WatchVariables streams of this server.
    watchers: Arc<AtomicUsize>,
    scans: Arc<Semaphore>,
}

impl Service {
    /// A service over `store`; watch streams end with UNAVAILABLE once
    /// `stopping` turns true.
    pub fn new(store: Store, config: ServiceConfig, stopping: watch::Receiver<bool>) -> Service {
        Service {
            store,
            config: Arc::new(config),
            stopping,
            watchers: Arc::default(),
            scans: Arc::new(Semaphore::new(CONCURRENT_SCANS)),
        }
    }

    /// Refuses a response bigger than the message limit with a message that
    /// says what to do, rather than letting the transport fail it.
    fn fits<T: Message>(&self, response: T, what: &str, advice: &str) -> Result<Response<T>, Status> {
        let size = response.encoded_len();
        if size > self.config.max_message_bytes {
            return Err(StoreError::ResourceExhausted(format!(
                "{what} would be {size} bytes: over the limit max_message_bytes = {}; {advice}",
                self.config.max_message_bytes
            ))
            .into());
        }
        Ok(Response::new(response))
    }

    /// Takes a watch-stream slot of the connection and one of the server;
    /// both are released when the stream ends.
    fn watcher_slots(&self, conn: Option<&ConnInfo>) -> Result<WatcherSlots, Status> {
        let per_connection = self.config.max_watchers_per_connection;
        let connection = match conn {
            Some(c) => Some(c.state.try_add_watcher(per_connection).ok_or_else(|| {
                exceeded(
                    format_args!("this connection has {per_connection} watch streams open"),
                    "max_watchers_per_connection",
                    per_connection,
                )
            })?),
            // Only in-process transports without our accept loop come here.
            None => None,
        };
        let max = self.config.max_watchers;
        let taken = self.watchers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        match taken {
            Ok(_) => Ok(WatcherSlots { _server: ServerSlot(self.watchers.clone()), _connection: connection }),
            Err(_) => {
                Err(exceeded(format_args!("the server has {max} watch streams open"), "max_watchers", max).into())
            }
        }
    }

    /// The forwarder to send a call about `session_id` to: an active one,
    /// when this store does not hold the session (or `always`). With no
    /// forwarder this costs nothing; with one, one lookup.
    fn forward_to(&self, session_id: &str, always: bool) -> Option<&dyn Forwarder> {
        let f = self.config.forwarder.as_deref()?;
        (f.active() && (always || !self.store.session_exists(session_id))).then_some(f)
    }

    /// Authorizes the call, then says where it is served.
    #[allow(clippy::result_large_err)]
    fn route<T: AboutSession>(&self, request: Request<T>, always: bool) -> Result<Route<'_, T>, Status> {
        authorize(&request, request.get_ref().session_id())?;
        match self.forward_to(request.get_ref().session_id(), always) {
            None => Ok(Route::Local(request.into_inner())),
            Some(f) => {
                let encoding = wire::Encoding::of(request.metadata());
                Ok(Route::Remote(f, request.into_inner(), encoding))
            }
        }
    }

    /// Serves a call another node forwarded here (see [`crate::forward`]):
    /// decodes `request` as `method`'s message, serves it against this store
    /// with `encoding`, and encodes the response. The caller was authorized
    /// on the node it reached, so no grant is checked; nothing is forwarded
    /// again, whether or not the session is here.
    pub async fn serve_forwarded(
        &self,
        method: Method,
        request: &[u8],
        encoding: wire::Encoding,
    ) -> Result<Bytes, Status> {
        #[allow(clippy::result_large_err)]
        fn decode<T: Message + Default>(request: &[u8]) -> Result<T, Status> {
            T::decode(request).map_err(|e| Status::invalid_argument(format!("the message does not decode: {e}")))
        }
        #[allow(clippy::result_large_err)]
        fn encode<T: Message>(response: Result<Response<T>, Status>) -> Result<Bytes, Status> {
            Ok(response?.into_inner().encode_to_vec().into())
        }
        match method {
            Method::InitializeSession => encode(self.local_initialize_session(decode(request)?)),
            Method::CleanupSession => encode(self.local_cleanup_session(decode(request)?)),
            Method::GetSession => encode(self.local_get_session(decode(request)?)),
            Method::Heartbeat => encode(self.local_heartbeat(decode(request)?)),
            Method::GetVariable => encode(self.local_get_variable(decode(request)?, encoding)),
            Method::SetVariable => encode(self.local_set_variable(decode(request)?)),
            Method::GetVariables => encode(self.local_get_variables(decode(request)?, encoding)),
            Method::SetVariables => encode(self.local_set_variables(decode(request)?)),
            Method::RegisterVariable => encode(self.local_register_variable(decode(request)?)),
            Method::ListVariables => encode(self.local_list_variables(decode(request)?, encoding).await),
            Method::DeleteVariable => encode(self.local_delete_variable(decode(request)?)),
        }
    }
}

/// Where a call is served.
enum Route<'a, T> {
    /// Here: the store holds the session (or nothing forwards).
    Local(T),
    /// By the owner, through this forwarder, answered with this encoding.
    Remote(&'a dyn Forwarder, T, wire::Encoding),
}

/// Sends `request` to the owner of its session and decodes the answer.
async fn forward<Req, Resp>(
    f: &dyn Forwarder,
    method: Method,
    request: &Req,
    encoding: wire::Encoding,
) -> Result<Resp, Status>
where
    Req: Message + AboutSession,
    Resp: Message + Default,
{
    let bytes = f.unary(method, request.session_id(), request.encode_to_vec().into(), encoding).await?;
    Resp::decode(bytes).map_err(|e| Status::internal(format!("the owner's {method} response does not decode: {e}")))
}

/// A watch stream's slots, held for its life.
struct WatcherSlots {
    _server: ServerSlot,
    _connection: Option<net::WatcherSlot>,
}

/// One of the server's watch-stream slots.
struct ServerSlot(Arc<AtomicUsize>);

impl Drop for ServerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn now() -> prost_types::Timestamp {
    let us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    wire::timestamp(us)
}

fn to_metadata(m: HashMap<String, String>) -> Metadata {
    m.into_iter().collect()
}

fn from_python(metadata: HashMap<String, String>) -> Change {
    Change { source: Source::Python, metadata: to_metadata(metadata), expected_version: 0 }
}

/// Whether shutdown began, checked by a stream on each poll without waiting.
struct StopSignal {
    /// Whether shutdown began, read without waiting...
    stopping: watch::Receiver<bool>,
    /// ...and a wait for it, polled when `stopping` changed, or when the
    /// stream is polled by a task it has not registered with yet.
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    waker: Option<std::task::Waker>,
}

impl StopSignal {
    fn new(stopping: &watch::Receiver<bool>) -> StopSignal {
        let mut wait = stopping.clone();
        StopSignal {
            stopping: stopping.clone(),
            stop: Box::pin(async move {
                let _ = wait.wait_for(|stopping| *stopping).await;
            }),
            waker: None,
        }
    }

    /// Whether shutdown began; registers the task to be woken when it does.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let changed = !matches!(self.stopping.has_changed(), Ok(false));
        let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !changed && registered {
            return false;
        }
        self.waker = Some(cx.waker().clone());
        self.stop.as_mut().poll(cx).is_ready()
    }
}

/// The response stream of one WatchVariables call. Polled by the connection
/// when it can send: a slow client simply polls less often, and its updates
/// coalesce in the subscription meanwhile. Dropping it (client gone, any
/// reason) drops the subscription. Once shutdown begins it ends with
/// UNAVAILABLE, before any update not yet taken from the subscription.
struct WatchStream {
    sub: Subscription,
    /// Held for the life of the stream.
    _slots: WatcherSlots,
    encoding: wire::Encoding,
    /// Taken from the subscription, not yet sent; shared with the other
    /// streams that send them, and encoded once for all (`wire::encoded_update`).
    buffered: VecDeque<Arc<Update>>,
    stop: StopSignal,
    stopped: bool,
}

impl Stream for WatchStream {
    type Item = Result<wire::EncodedUpdate, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(u) = this.buffered.pop_front() {
                return Poll::Ready(Some(Ok(wire::encoded_update(&u, this.encoding))));
            }
            if this.stopped {
                return Poll::Ready(None);
            }
            if this.stop.poll(cx) {
                this.stopped = true;
                return Poll::Ready(Some(Err(Status::unavailable("the server is shutting down"))));
            }
            match this.sub.poll_batch(cx) {
                Poll::Ready(Some(batch)) => this.buffered.extend(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        tracing::debug!("watch stream ended");
    }
}

/// The response stream of a WatchVariables call whose session another node
/// owns: the owner's updates, already encoded, with the same slots and the
/// same end at shutdown as [`WatchStream`]. Dropping it cancels the owner's
/// watch (see [`RemoteStream`]).
struct ForwardedStream {
    remote: RemoteStream,
    _slots: WatcherSlots,
    stop: StopSignal,
    stopped: bool,
}

impl Stream for ForwardedStream {
    type Item = Result<wire::EncodedUpdate, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stopped {
            return Poll::Ready(None);
        }
        if this.stop.poll(cx) {
            this.stopped = true;
            return Poll::Ready(Some(Err(Status::unavailable("the server is shutting down"))));
        }
        Pin::new(&mut this.remote).poll_next(cx)
    }
}

impl Drop for ForwardedStream {
    fn drop(&mut self) {
        tracing::debug!("forwarded watch stream ended");
    }
}

/// The response of a registered watch: the response headers say so, so a
/// client can tell it apart from a refusal (a trailers-only response) before
/// any update arrives, whatever order its library reports the two in.
fn open_watch(stream: UpdateStream) -> Response<UpdateStream> {
    let mut response = Response::new(stream);
    response.metadata_mut().insert(WATCH_OPEN_KEY, tonic::metadata::MetadataValue::from_static("open"));
    response
}

/// The stream type of WatchVariables.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<wire::EncodedUpdate, Status>> + Send + 'static>>;

/// The handlers' work once a call is authorized and found to be about a
/// session here; [`Service::serve_forwarded`] calls them straight.
impl Service {
    #[allow(clippy::result_large_err)]
    fn local_initialize_session(
        &self,
        req: InitializeSessionRequest,
    ) -> Result<Response<InitializeSessionResponse>, Status> {
        self.store.create_session(&req.session_id, to_metadata(req.metadata), self.config.session_ttl)?;
        Ok(Response::new(InitializeSessionResponse {
            success: true,
            error_message: String::new(),
            initial_variables: HashMap::new(),
        }))
    }

    #[allow(clippy::result_large_err)]
    fn local_cleanup_session(&self, req: CleanupSessionRequest) -> Result<Response<CleanupSessionResponse>, Status> {
        let removed = self.store.delete_session(&req.session_id, Source::Python).unwrap_or(0);
        Ok(Response::new(CleanupSessionResponse {
            success: true,
            resources_cleaned: i32::try_from(removed).unwrap_or(i32::MAX),
        }))
    }

    #[allow(clippy::result_large_err)]
    fn local_get_session(&self, req: GetSessionRequest) -> Result<Response<GetSessionResponse>, Status> {
        let info = self.store.get_session(&req.session_id)?;
        Ok(Response::new(GetSessionResponse {
            session_id: info.id,
            metadata: wire::metadata(&info.metadata),
            created_at: Some(wire::timestamp(info.created_at_us)),
            variable_count: i32::try_from(info.variable_count).unwrap_or(i32::MAX),
            tool_count: 0,
            watcher_count: i32::try_from(info.watcher_count).unwrap_or(i32::MAX),
        }))
    }

    #[allow(clippy::result_large_err)]
    fn local_heartbeat(&self, req: HeartbeatRequest) -> Result<Response<HeartbeatResponse>, Status> {
        let valid = self.store.touch_session(&req.session_id);
        Ok(Response::new(HeartbeatResponse { server_time: Some(now()), session_valid: valid }))
    }

    #[allow(clippy::result_large_err)]
    fn local_get_variable(
        &self,
        req: GetVariableRequest,
        encoding: wire::Encoding,
    ) -> Result<Response<GetVariableResponse>, Status> {
        let var = self.store.get_variable(&req.session_id, &req.variable_identifier)?;
        self.fits_variable(GetVariableResponse { variable: Some(wire::variable(&var, encoding)), from_cache: false })
    }

    #[allow(clippy::result_large_err)]
    fn fits_variable(&self, response: GetVariableResponse) -> Result<Response<GetVariableResponse>, Status> {
        self.fits(response, "the variable", "raise max_message_bytes")
    }

    #[allow(clippy::result_large_err)]
    fn local_set_variable(&self, req: SetVariableRequest) -> Result<Response<SetVariableResponse>, Status> {
        let (declared, raw) = wire::decode_any(req.value.as_ref(), &req.binary_value)?;
        let change = Change { expected_version: req.expected_version, ..from_python(req.metadata) };
        let input = Input { value: Ok(raw), declared: Some(declared) };
        let version = self.store.update_variable(&req.session_id, &req.variable_identifier, input, &change)?;
        Ok(Response::new(SetVariableResponse { success: true, error_message: String::new(), new_version: version }))
    }

    #[allow(clippy::result_large_err)]
    fn local_get_variables(
        &self,
        req: BatchGetVariablesRequest,
        encoding: wire::Encoding,
    ) -> Result<Response<BatchGetVariablesResponse>, Status> {
        let BatchGet { found, missing } = self.store.get_variables(&req.session_id, req.variable_identifiers)?;
        let response = if req.values_only {
            let (values, variables) = wire::batch_values(found, req.include_metadata, encoding);
            BatchGetVariablesResponse { variables, missing_variables: missing, values: Some(values) }
        } else {
            let variables =
                found.into_iter().map(|(k, v)| (k, wire::variable_with(&v, req.include_metadata, encoding))).collect();
            BatchGetVariablesResponse { variables, missing_variables: missing, values: None }
        };
        self.fits_batch(response)
    }

    #[allow(clippy::result_large_err)]
    fn fits_batch(&self, response: BatchGetVariablesResponse) -> Result<Response<BatchGetVariablesResponse>, Status> {
        self.fits(response, "the batch read's response", "read fewer variables at once")
    }

    #[allow(clippy::result_large_err)]
    fn local_set_variables(
        &self,
        req: BatchSetVariablesRequest,
    ) -> Result<Response<BatchSetVariablesResponse>, Status> {
        let mut binary = req.binary_updates;
        let mut updates: Vec<(String, Input)> = req
            .updates
            .into_iter()
            .map(|(key, any)| {
                let bytes = binary.remove(&key).unwrap_or_default();
                let input = match wire::decode_any(Some(&any), &bytes) {
                    Ok((declared, raw)) => Input { value: Ok(raw), declared: Some(declared) },
                    Err(e) => Input { value: Err(e), declared: None },
                };
                (key, input)
            })
            .collect();
        // The compact form joins the same batch; malformed, it refuses the whole request.
        let compact =
            wire::compact_updates(req.value_identifiers, &req.values_json, req.float_identifiers, req.float_values)?;
        updates.extend(compact);
        // Map order is random on the wire; a fixed order makes outcomes repeatable.
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = updates.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(StoreError::InvalidArgument(format!(
                "identifier {} is given more than once (updates, value_identifiers and float_identifiers together)",
                clip(&pair[0].0)
            ))
            .into());
        }
        // Binary payloads left over had no value in `updates` to pair with.
        let orphans: HashMap<String, String> =
            binary.into_keys().map(|k| (k, "binary_updates has this key but updates does not".into())).collect();
        if req.atomic && !orphans.is_empty() {
            // All or nothing: a malformed key refuses the batch before the store sees it.
            return Ok(Response::new(BatchSetVariablesResponse {
                success: false,
                errors: orphans,
                new_versions: HashMap::new(),
            }));
        }
        let outcome = self.store.update_variables(&req.session_id, updates, req.atomic, &from_python(req.metadata))?;
        let mut errors: HashMap<String, String> = outcome.errors.into_iter().map(|(k, e)| (k, e.to_string())).collect();
        errors.extend(orphans);
        Ok(Response::new(BatchSetVariablesResponse {
            success: errors.is_empty(),
            errors,
            new_versions: outcome.applied.into_iter().collect(),
        }))
    }

    #[allow(clippy::result_large_err)]
    fn local_register_variable(
        &self,
        req: RegisterVariableRequest,
    ) -> Result<Response<RegisterVariableResponse>, Status> {
        let ty = VarType::parse(&req.r#type)?;
        let value = wire::decode_value(ty, req.initial_value.as_ref(), &req.initial_binary_value)?;
        let constraints = wire::constraints_from_json(&req.constraints_json)?;
        let new = NewVariable { name: req.name, ty, value, constraints, metadata: to_metadata(req.metadata) };
        let var = self.store.register_variable(&req.session_id, new, Source::Python)?;
        Ok(Response::new(RegisterVariableResponse {
            success: true,
            variable_id: var.id.to_string(),
            error_message: String::new(),
        }))
    }

    async fn local_list_variables(
        &self,
        req: ListVariablesRequest,
        encoding: wire::Encoding,
    ) -> Result<Response<ListVariablesResponse>, Status> {
        let _turn = self.scans.acquire().await.map_err(|_| Status::unavailable("the server is shutting down"))?;
        let store = self.store.clone();
        let response = tokio::task::spawn_blocking(move || {
            let vars = store.list_variables(&req.session_id, Some(&req.pattern))?;
            let variables = vars.iter().map(|v| wire::variable(v, encoding)).collect();
            Ok::<_, StoreError>(ListVariablesResponse { variables })
        })
        .await
        .map_err(|e| Status::internal(format!("listing the variables failed: {e}")))??;
        self.fits_listing(response)
    }

    #[allow(clippy::result_large_err)]
    fn fits_listing(&self, response: ListVariablesResponse) -> Result<Response<ListVariablesResponse>, Status> {
        self.fits(response, "the listing", "narrow the pattern or raise max_message_bytes")
    }

    #[allow(clippy::result_large_err)]
    fn local_delete_variable(&self, req: DeleteVariableRequest) -> Result<Response<DeleteVariableResponse>, Status> {
        self.store.delete_variable(&req.session_id, &req.variable_identifier)?;
        Ok(Response::new(DeleteVariableResponse { success: true, error_message: String::new() }))
    }
}

#[tonic::async_trait]
impl BridgeService for Service {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        auth::check_server_call(request.extensions())?;
        let message = request.into_inner().message;
        Ok(Response::new(PingResponse { message, server_time: Some(now()) }))
    }

    async fn initialize_session(
        &self,
        request: Request<InitializeSessionRequest>,
    ) -> Result<Response<InitializeSessionResponse>, Status> {
        // Always forwarded: the cluster makes ids unique and picks the owner.
        match self.route(request, true)? {
            Route::Local(req) => self.local_initialize_session(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::InitializeSession, &req, enc).await?)),
        }
    }

    async fn cleanup_session(
        &self,
        request: Request<CleanupSessionRequest>,
    ) -> Result<Response<CleanupSessionResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_cleanup_session(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::CleanupSession, &req, enc).await?)),
        }
    }

    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_get_session(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::GetSession, &req, enc).await?)),
        }
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_heartbeat(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::Heartbeat, &req, enc).await?)),
        }
    }

    async fn get_variable(
        &self,
        request: Request<GetVariableRequest>,
    ) -> Result<Response<GetVariableResponse>, Status> {
        let encoding = wire::Encoding::of(request.metadata());
        match self.route(request, false)? {
            Route::Local(req) => self.local_get_variable(req, encoding),
            Route::Remote(f, req, enc) => self.fits_variable(forward(f, Method::GetVariable, &req, enc).await?),
        }
    }

    async fn set_variable(
        &self,
        request: Request<SetVariableRequest>,
    ) -> Result<Response<SetVariableResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_set_variable(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::SetVariable, &req, enc).await?)),
        }
    }

    async fn get_variables(
        &self,
        request: Request<BatchGetVariablesRequest>,
    ) -> Result<Response<BatchGetVariablesResponse>, Status> {
        // The compact form follows the same rule: without the header, big
        // arrays are elements of values_json like any other value.
        let encoding = wire::Encoding::of(request.metadata());
        match self.route(request, false)? {
            Route::Local(req) => self.local_get_variables(req, encoding),
            Route::Remote(f, req, enc) => self.fits_batch(forward(f, Method::GetVariables, &req, enc).await?),
        }
    }

    async fn set_variables(
        &self,
        request: Request<BatchSetVariablesRequest>,
    ) -> Result<Response<BatchSetVariablesResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_set_variables(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::SetVariables, &req, enc).await?)),
        }
    }

    async fn register_variable(
        &self,
        request: Request<RegisterVariableRequest>,
    ) -> Result<Response<RegisterVariableResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_register_variable(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::RegisterVariable, &req, enc).await?)),
        }
    }

    async fn list_variables(
        &self,
        request: Request<ListVariablesRequest>,
    ) -> Result<Response<ListVariablesResponse>, Status> {
        let encoding = wire::Encoding::of(request.metadata());
        match self.route(request, false)? {
            Route::Local(req) => self.local_list_variables(req, encoding).await,
            Route::Remote(f, req, enc) => self.fits_listing(forward(f, Method::ListVariables, &req, enc).await?),
        }
    }

    async fn delete_variable(
        &self,
        request: Request<DeleteVariableRequest>,
    ) -> Result<Response<DeleteVariableResponse>, Status> {
        match self.route(request, false)? {
            Route::Local(req) => self.local_delete_variable(req),
            Route::Remote(f, req, enc) => Ok(Response::new(forward(f, Method::DeleteVariable, &req, enc).await?)),
        }
    }

    type WatchVariablesStream = UpdateStream;

    async fn watch_variables(
        &self,
        request: Request<WatchVariablesRequest>,
    ) -> Result<Response<Self::WatchVariablesStream>, Status> {
        authorize(&request, request.get_ref().session_id())?;
        // Taken here, on the node the client reached, for forwarded watches too.
        let slots = self.watcher_slots(net::conn_info(request.extensions()))?;
        let encoding = wire::Encoding::of(request.metadata());
        let mut req = request.into_inner();
        if let Some(f) = self.forward_to(&req.session_id, false) {
            // The owner's refusals arrive here, as the status of the call.
            let remote = f.watch(&req.session_id, req.encode_to_vec().into(), encoding).await?;
            tracing::debug!(session = %clip(&req.session_id), "forwarded watch stream started");
            let stream =
                ForwardedStream { remote, _slots: slots, stop: StopSignal::new(&self.stopping), stopped: false };
            return Ok(open_watch(Box::pin(stream)));
        }
        // Refusals (unknown session or variable, empty list) happen here,
        // before anything is streamed.
        let session_id = std::mem::take(&mut req.session_id);
        let sub = self.store.watch(&session_id, &crate::forward::to_watch_request(req), Owner::Grpc)?;
        tracing::debug!(session = %clip(&session_id), "watch stream started");
        let stream = WatchStream {
            sub,
            _slots: slots,
            encoding,
            buffered: VecDeque::new(),
            stop: StopSignal::new(&self.stopping),
            stopped: false,
        };
        Ok(open_watch(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{RemoteSender, StreamFeedback};
    use crate::value::Value;
    use std::sync::Mutex;
    use tokio_stream::StreamExt;

    /// Forwards to another service over its own store (the "owner"),
    /// recording what it forwarded.
    #[derive(Debug)]
    struct Fake {
        active: bool,
        owner: Service,
        calls: Mutex<Vec<(Method, String)>>,
        watches: Mutex<Vec<String>>,
        /// The sender of the last watch accepted, for the test to feed.
        sender: Arc<Mutex<Option<RemoteSender>>>,
        acks: Arc<AtomicUsize>,
    }

    struct Acks(Arc<AtomicUsize>);

    impl StreamFeedback for Acks {
        fn ack(&self, n: usize) {
            self.0.fetch_add(n, Ordering::SeqCst);
        }
        fn cancel(&self) {}
    }

    impl Forwarder for Fake {
        fn active(&self) -> bool {
            self.active
        }

        fn unary(
            &self,
            method: Method,
            session_id: &str,
            request: Bytes,
            encoding: wire::Encoding,
        ) -> crate::forward::BoxFuture<Result<Bytes, Status>> {
            self.calls.lock().unwrap().push((method, session_id.to_string()));
            let owner = self.owner.clone();
            Box::pin(async move { owner.serve_forwarded(method, &request, encoding).await })
        }

        fn watch(
            &self,
            session_id: &str,
            request: Bytes,
            _encoding: wire::Encoding,
        ) -> crate::forward::BoxFuture<Result<RemoteStream, Status>> {
            self.watches.lock().unwrap().push(session_id.to_string());
            // Refused as the owner would: its store decides.
            let refused = crate::forward::watch_request(&request)
                .and_then(|w| self.owner.store.watch(session_id, &w, Owner::Grpc).map_err(Status::from))
                .err();
            let (sender, stream) = RemoteStream::channel(Box::new(Acks(self.acks.clone())));
            *self.sender.lock().unwrap() = Some(sender);
            Box::pin(async move {
                match refused {
                    Some(status) => Err(status),
                    None => Ok(stream),
                }
            })
        }
    }

    fn config(forwarder: Option<Arc<dyn Forwarder>>) -> ServiceConfig {
        ServiceConfig {
            session_ttl: Duration::from_secs(60),
            max_message_bytes: 4 << 20,
            max_watchers: 16,
            max_watchers_per_connection: 16,
            forwarder,
        }
    }

    fn service(store: Store, forwarder: Option<Arc<dyn Forwarder>>) -> Service {
        let (tx, stopping) = watch::channel(false);
        // Kept open for the test's life: a dropped sender is not a stop.
        std::mem::forget(tx);
        Service::new(store, config(forwarder), stopping)
    }

    /// (this node's service, the owner's store, the fake between them)
    fn cluster(active: bool) -> (Service, Store, Arc<Fake>) {
        let owner_store = Store::new();
        let fake = Arc::new(Fake {
            active,
            owner: service(owner_store.clone(), None),
            calls: Mutex::default(),
            watches: Mutex::default(),
            sender: Arc::default(),
            acks: Arc::default(),
        });
        (service(Store::new(), Some(fake.clone())), owner_store, fake)
    }

    fn integer(x: i64) -> prost_types::Any {
        wire::encode_value(VarType::Integer, &Value::Integer(x), wire::Encoding::Json).0
    }

    fn register(session: &str, name: &str, x: i64) -> RegisterVariableRequest {
        RegisterVariableRequest {
            session_id: session.into(),
            name: name.into(),
            r#type: "integer".into(),
            initial_value: Some(integer(x)),
            ..Default::default()
        }
    }

    fn get(session: &str, name: &str) -> GetVariableRequest {
        GetVariableRequest { session_id: session.into(), variable_identifier: name.into(), ..Default::default() }
    }

    fn value_of(response: &GetVariableResponse) -> Vec<u8> {
        response.variable.as_ref().unwrap().value.as_ref().unwrap().value.clone()
    }

    fn calls(fake: &Fake) -> Vec<(Method, String)> {
        fake.calls.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_session_held_here_is_served_here() {
        let (b, _, fake) = cluster(true);
        b.store.create_session("here", Metadata::default(), Duration::from_secs(60)).unwrap();
        b.register_variable(Request::new(register("here", "x", 1))).await.unwrap();
        let got = b.get_variable(Request::new(get("here", "x"))).await.unwrap().into_inner();
        assert_eq!(value_of(&got), b"1");
        let beat = b
            .heartbeat(Request::new(HeartbeatRequest { session_id: "here".into(), ..Default::default() }))
            .await
            .unwrap();
        assert!(beat.into_inner().session_valid);
        assert!(calls(&fake).is_empty());
    }

    #[tokio::test]
    async fn a_session_held_elsewhere_is_forwarded() {
        let (b, owner, fake) = cluster(true);
        owner.create_session("there", Metadata::default(), Duration::from_secs(60)).unwrap();
        b.register_variable(Request::new(register("there", "x", 7))).await.unwrap();
        let set = SetVariableRequest {
            session_id: "there".into(),
            variable_identifier: "x".into(),
            value: Some(integer(8)),
            ..Default::default()
        };
        assert_eq!(b.set_variable(Request::new(set)).await.unwrap().into_inner().new_version, 2);
        let got = b.get_variable(Request::new(get("there", "x"))).await.unwrap().into_inner();
        assert_eq!(value_of(&got), b"8");
        // The owner's refusal comes back whole, trailing metadata and all.
        let missing = b.get_variable(Request::new(get("there", "nope"))).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(missing.metadata().get(wire::ERROR_KIND_KEY).unwrap(), "variable_not_found");
        assert!(!b.store.session_exists("there"));
        let methods: Vec<Method> = calls(&fake).into_iter().map(|(m, _)| m).collect();
        assert_eq!(methods, [Method::RegisterVariable, Method::SetVariable, Method::GetVariable, Method::GetVariable]);
        assert!(calls(&fake).iter().all(|(_, s)| s == "there"));
    }

    #[tokio::test]
    async fn initialize_session_is_always_forwarded() {
        let (b, owner, fake) = cluster(true);
        b.store.create_session("local", Metadata::default(), Duration::from_secs(60)).unwrap();
        let init = |id: &str| Request::new(InitializeSessionRequest { session_id: id.into(), ..Default::default() });
        assert!(b.initialize_session(init("new")).await.unwrap().into_inner().success);
        assert!(owner.session_exists("new") && !b.store.session_exists("new"));
        // Even an id this node holds: the cluster decides.
        let exists = b.initialize_session(init("local")).await;
        assert!(exists.is_ok(), "the owner's store has no session \"local\"");
        assert_eq!(
            calls(&fake),
            [(Method::InitializeSession, "new".into()), (Method::InitializeSession, "local".into())]
        );
    }

    #[tokio::test]
    async fn an_inactive_forwarder_changes_nothing() {
        let (b, owner, fake) = cluster(false);
        let init = Request::new(InitializeSessionRequest { session_id: "s".into(), ..Default::default() });
        b.initialize_session(init).await.unwrap();
        assert!(b.store.session_exists("s") && !owner.session_exists("s"));
        let gone = b.get_session(Request::new(GetSessionRequest { session_id: "other".into() })).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
        let beat = b
            .heartbeat(Request::new(HeartbeatRequest { session_id: "other".into(), ..Default::default() }))
            .await
            .unwrap();
        assert!(!beat.into_inner().session_valid);
        assert!(calls(&fake).is_empty());
        assert!(fake.watches.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn serve_forwarded_serves_the_local_store_only() {
        let store = Store::new();
        // A forwarder that would take everything: serve_forwarded must not use it.
        let (_, _, fake) = cluster(true);
        let owner = service(store.clone(), Some(fake.clone()));
        store.create_session("s", Metadata::default(), Duration::from_secs(60)).unwrap();
        let reg = register("s", "x", 1).encode_to_vec();
        owner.serve_forwarded(Method::RegisterVariable, &reg, wire::Encoding::Json).await.unwrap();
        let set = SetVariableRequest {
            session_id: "s".into(),
            variable_identifier: "x".into(),
            value: Some(integer(5)),
            ..Default::default()
        };
        let bytes =
            owner.serve_forwarded(Method::SetVariable, &set.encode_to_vec(), wire::Encoding::Json).await.unwrap();
        assert_eq!(SetVariableResponse::decode(bytes).unwrap().new_version, 2);
        let bytes =
            owner.serve_forwarded(Method::GetVariable, &get("s", "x").encode_to_vec(), wire::Encoding::Binary).await;
        assert_eq!(value_of(&GetVariableResponse::decode(bytes.unwrap()).unwrap()), b"5");
        let missing = owner
            .serve_forwarded(Method::GetVariable, &get("s", "nope").encode_to_vec(), wire::Encoding::Json)
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(missing.metadata().get(wire::ERROR_KIND_KEY).unwrap(), "variable_not_found");
        // A session this store lacks is a miss here, not another hop.
        let elsewhere = owner
            .serve_forwarded(Method::GetVariable, &get("absent", "x").encode_to_vec(), wire::Encoding::Json)
            .await
            .unwrap_err();
        assert_eq!(elsewhere.metadata().get(wire::ERROR_KIND_KEY).unwrap(), "session_not_found");
        let garbage = owner.serve_forwarded(Method::GetVariable, b"\xff\xff", wire::Encoding::Json).await.unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        assert!(calls(&fake).is_empty());
    }

    #[tokio::test]
    async fn binary_encoding_reaches_the_owner() {
        let store = Store::new();
        let owner = service(store.clone(), None);
        store.create_session("s", Metadata::default(), Duration::from_secs(60)).unwrap();
        let big = Value::Embedding(vec![0.5; wire::BINARY_THRESHOLD]);
        let (any, bin) = wire::encode_value(VarType::Embedding, &big, wire::Encoding::Binary);
        let reg = RegisterVariableRequest {
            session_id: "s".into(),
            name: "e".into(),
            r#type: "embedding".into(),
            initial_value: Some(any),
            initial_binary_value: bin,
            ..Default::default()
        };
        owner.serve_forwarded(Method::RegisterVariable, &reg.encode_to_vec(), wire::Encoding::Json).await.unwrap();
        for (encoding, binary) in [(wire::Encoding::Json, false), (wire::Encoding::Binary, true)] {
            let bytes = owner.serve_forwarded(Method::GetVariable, &get("s", "e").encode_to_vec(), encoding).await;
            let var = GetVariableResponse::decode(bytes.unwrap()).unwrap().variable.unwrap();
            assert_eq!(!var.binary_value.is_empty(), binary);
        }
    }

    #[tokio::test]
    async fn a_watch_of_a_session_held_elsewhere_streams_what_the_owner_pushes() {
        let (b, owner, fake) = cluster(true);
        owner.create_session("there", Metadata::default(), Duration::from_secs(60)).unwrap();
        let watch = |names: &[&str]| {
            Request::new(WatchVariablesRequest {
                session_id: "there".into(),
                variable_identifiers: names.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            })
        };
        // Refused by the owner: the call's status, before any stream.
        let refused = b.watch_variables(watch(&["nope"])).await.err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert_eq!(b.watchers.load(Ordering::SeqCst), 0);
        b.register_variable(Request::new(register("there", "x", 1))).await.unwrap();
        let response = b.watch_variables(watch(&["x"])).await.unwrap();
        assert_eq!(response.metadata().get(WATCH_OPEN_KEY).unwrap(), "open");
        assert_eq!(b.watchers.load(Ordering::SeqCst), 1);
        let mut stream = response.into_inner();
        let sender = fake.sender.lock().unwrap().take().unwrap();
        for i in 0..crate::forward::ACK_EVERY {
            assert!(sender.push(Bytes::from(vec![i as u8])));
        }
        for i in 0..crate::forward::ACK_EVERY {
            assert_eq!(stream.next().await.unwrap().unwrap().0.as_ref(), &[i as u8]);
        }
        assert_eq!(fake.acks.load(Ordering::SeqCst), crate::forward::ACK_EVERY);
        drop(sender);
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(b.watchers.load(Ordering::SeqCst), 0);
        assert_eq!(*fake.watches.lock().unwrap(), ["there", "there"]);
    }

    #[tokio::test]
    async fn a_forwarded_watch_ends_unavailable_when_the_server_stops() {
        let owner_store = Store::new();
        let fake = Arc::new(Fake {
            active: true,
            owner: service(owner_store.clone(), None),
            calls: Mutex::default(),
            watches: Mutex::default(),
            sender: Arc::default(),
            acks: Arc::default(),
        });
        owner_store.create_session("there", Metadata::default(), Duration::from_secs(60)).unwrap();
        owner_store
            .register_variable(
                "there",
                NewVariable {
                    name: "x".into(),
                    ty: VarType::Integer,
                    value: crate::value::Raw::Int(1),
                    constraints: crate::value::Raw::Nil,
                    metadata: Metadata::default(),
                },
                Source::Elixir,
            )
            .unwrap();
        let (stop, stopping) = watch::channel(false);
        let b = Service::new(Store::new(), config(Some(fake.clone())), stopping);
        let request = WatchVariablesRequest {
            session_id: "there".into(),
            variable_identifiers: vec!["x".into()],
            ..Default::default()
        };
        let mut stream = b.watch_variables(Request::new(request)).await.unwrap().into_inner();
        stop.send(true).unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }
}
