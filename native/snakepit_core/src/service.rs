//! The gRPC `BridgeService` over a [`Store`]: each handler decodes, calls the
//! store once, and encodes. Store calls are short and in memory, so they run
//! inline on the runtime's worker threads; the one whose cost grows with a
//! session (ListVariables) runs on the blocking pool, a few at a time, so it
//! never holds up the workers that serve everyone else.
//!
//! Limits of this edge: watch streams per connection and in all, and the
//! message size of every response (a response that would not fit is refused
//! with a message saying so, instead of failing in the transport).

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

/// The message of a request about one session, once the caller is allowed it.
#[allow(clippy::result_large_err)]
fn authorized<T: AboutSession>(request: Request<T>) -> Result<T, Status> {
    authorize(&request, request.get_ref().session_id())?;
    Ok(request.into_inner())
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
use crate::store::{BatchGet, Change, Input, NewVariable, Store, WatchRequest};
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
    /// Whether shutdown began, read without waiting...
    stopping: watch::Receiver<bool>,
    /// ...and a wait for it, polled when `stopping` changed, or when the
    /// stream is polled by a task it has not registered with yet.
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stop_waker: Option<std::task::Waker>,
    stopped: bool,
}

impl WatchStream {
    /// Whether shutdown began; registers the task to be woken when it does.
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> bool {
        let changed = !matches!(self.stopping.has_changed(), Ok(false));
        let registered = self.stop_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !changed && registered {
            return false;
        }
        self.stop_waker = Some(cx.waker().clone());
        self.stop.as_mut().poll(cx).is_ready()
    }
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
            if this.poll_stop(cx) {
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

/// The stream type of WatchVariables.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<wire::EncodedUpdate, Status>> + Send + 'static>>;

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
        let req = authorized(request)?;
        self.store.create_session(&req.session_id, to_metadata(req.metadata), self.config.session_ttl)?;
        Ok(Response::new(InitializeSessionResponse {
            success: true,
            error_message: String::new(),
            initial_variables: HashMap::new(),
        }))
    }

    async fn cleanup_session(
        &self,
        request: Request<CleanupSessionRequest>,
    ) -> Result<Response<CleanupSessionResponse>, Status> {
        let removed = self.store.delete_session(&authorized(request)?.session_id, Source::Python).unwrap_or(0);
        Ok(Response::new(CleanupSessionResponse {
            success: true,
            resources_cleaned: i32::try_from(removed).unwrap_or(i32::MAX),
        }))
    }

    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        let info = self.store.get_session(&authorized(request)?.session_id)?;
        Ok(Response::new(GetSessionResponse {
            session_id: info.id,
            metadata: wire::metadata(&info.metadata),
            created_at: Some(wire::timestamp(info.created_at_us)),
            variable_count: i32::try_from(info.variable_count).unwrap_or(i32::MAX),
            tool_count: 0,
            watcher_count: i32::try_from(info.watcher_count).unwrap_or(i32::MAX),
        }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let valid = self.store.touch_session(&authorized(request)?.session_id);
        Ok(Response::new(HeartbeatResponse { server_time: Some(now()), session_valid: valid }))
    }

    async fn get_variable(
        &self,
        request: Request<GetVariableRequest>,
    ) -> Result<Response<GetVariableResponse>, Status> {
        let encoding = wire::Encoding::of(request.metadata());
        let req = authorized(request)?;
        let var = self.store.get_variable(&req.session_id, &req.variable_identifier)?;
        self.fits(
            GetVariableResponse { variable: Some(wire::variable(&var, encoding)), from_cache: false },
            "the variable",
            "raise max_message_bytes",
        )
    }

    async fn set_variable(
        &self,
        request: Request<SetVariableRequest>,
    ) -> Result<Response<SetVariableResponse>, Status> {
        let req = authorized(request)?;
        let (declared, raw) = wire::decode_any(req.value.as_ref(), &req.binary_value)?;
        let change = Change { expected_version: req.expected_version, ..from_python(req.metadata) };
        let input = Input { value: Ok(raw), declared: Some(declared) };
        let version = self.store.update_variable(&req.session_id, &req.variable_identifier, input, &change)?;
        Ok(Response::new(SetVariableResponse { success: true, error_message: String::new(), new_version: version }))
    }

    async fn get_variables(
        &self,
        request: Request<BatchGetVariablesRequest>,
    ) -> Result<Response<BatchGetVariablesResponse>, Status> {
        // The compact form follows the same rule: without the header, big
        // arrays are elements of values_json like any other value.
        let encoding = wire::Encoding::of(request.metadata());
        let req = authorized(request)?;
        let BatchGet { found, missing } = self.store.get_variables(&req.session_id, req.variable_identifiers)?;
        let response = if req.values_only {
            let (values, variables) = wire::batch_values(found, req.include_metadata, encoding);
            BatchGetVariablesResponse { variables, missing_variables: missing, values: Some(values) }
        } else {
            let variables =
                found.into_iter().map(|(k, v)| (k, wire::variable_with(&v, req.include_metadata, encoding))).collect();
            BatchGetVariablesResponse { variables, missing_variables: missing, values: None }
        };
        self.fits(response, "the batch read's response", "read fewer variables at once")
    }

    async fn set_variables(
        &self,
        request: Request<BatchSetVariablesRequest>,
    ) -> Result<Response<BatchSetVariablesResponse>, Status> {
        let req = authorized(request)?;
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

    async fn register_variable(
        &self,
        request: Request<RegisterVariableRequest>,
    ) -> Result<Response<RegisterVariableResponse>, Status> {
        let req = authorized(request)?;
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

    async fn list_variables(
        &self,
        request: Request<ListVariablesRequest>,
    ) -> Result<Response<ListVariablesResponse>, Status> {
        let encoding = wire::Encoding::of(request.metadata());
        let req = authorized(request)?;
        let _turn = self.scans.acquire().await.map_err(|_| Status::unavailable("the server is shutting down"))?;
        let store = self.store.clone();
        let response = tokio::task::spawn_blocking(move || {
            let vars = store.list_variables(&req.session_id, Some(&req.pattern))?;
            let variables = vars.iter().map(|v| wire::variable(v, encoding)).collect();
            Ok::<_, StoreError>(ListVariablesResponse { variables })
        })
        .await
        .map_err(|e| Status::internal(format!("listing the variables failed: {e}")))??;
        self.fits(response, "the listing", "narrow the pattern or raise max_message_bytes")
    }

    async fn delete_variable(
        &self,
        request: Request<DeleteVariableRequest>,
    ) -> Result<Response<DeleteVariableResponse>, Status> {
        let req = authorized(request)?;
        self.store.delete_variable(&req.session_id, &req.variable_identifier)?;
        Ok(Response::new(DeleteVariableResponse { success: true, error_message: String::new() }))
    }

    type WatchVariablesStream = UpdateStream;

    async fn watch_variables(
        &self,
        request: Request<WatchVariablesRequest>,
    ) -> Result<Response<Self::WatchVariablesStream>, Status> {
        authorize(&request, request.get_ref().session_id())?;
        let slots = self.watcher_slots(net::conn_info(request.extensions()))?;
        let encoding = wire::Encoding::of(request.metadata());
        let req = request.into_inner();
        let watch = WatchRequest {
            identifiers: req.variable_identifiers,
            patterns: req.patterns,
            include_initial: req.include_initial_values,
            since_versions: req.since_versions,
        };
        // Refusals (unknown session or variable, empty list) happen here,
        // before anything is streamed.
        let sub = self.store.watch(&req.session_id, &watch, Owner::Grpc)?;
        tracing::debug!(session = %clip(&req.session_id), "watch stream started");
        let mut stopping = self.stopping.clone();
        let stream = WatchStream {
            sub,
            _slots: slots,
            encoding,
            buffered: VecDeque::new(),
            stopping: self.stopping.clone(),
            stop: Box::pin(async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            }),
            stop_waker: None,
            stopped: false,
        };
        // The response headers say the watch is registered, so a client can
        // tell it apart from a refusal (a trailers-only response) before any
        // update arrives, whatever order its library reports the two in.
        let mut response = Response::new(Box::pin(stream) as UpdateStream);
        response.metadata_mut().insert(WATCH_OPEN_KEY, tonic::metadata::MetadataValue::from_static("open"));
        Ok(response)
    }
}
