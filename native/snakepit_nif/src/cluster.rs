//! NIFs behind `Snakepit.Bridge.Cluster`: serving sessions another BEAM node owns.
//!
//! The core's service forwards a call about a session its store does not
//! hold to a [`Forwarder`]; [`ClusterForwarder`] is ours. It sends the call to
//! ONE registered Elixir process (`cluster_register/1`), which carries it over
//! Erlang distribution to the owner, whose NIF serves it (`cluster_serve/3`,
//! `cluster_wire_watch/4`) against its store; the answer comes back through
//! a resource (`cluster_reply/2`, `cluster_stream_*`).
//!
//! Messages to the registered process:
//! - `{:snakepit_forward, reply, method, session_id, request, binary_encoding}`:
//!   a unary call; answered with `cluster_reply(reply, answer)`.
//! - `{:snakepit_forward_watch, stream, session_id, request, binary_encoding}`:
//!   a WatchVariables call; answered with `cluster_stream_open/2`, `_push/2`, `_close/2`.
//!
//! To the sink of an open forwarded stream: `{:snakepit_forward_ack, stream, n}`
//! (the client consumed `n` more updates) and `{:snakepit_forward_cancel, stream}`
//! (the client went away). To the relay of an owner-side watch:
//! `{:snakepit_wire_updates, wire_ref, [update]}` (never more than
//! [`WINDOW`] unacknowledged) and `{:snakepit_wire_end, wire_ref}`.
//!
//! Nothing waits forever: a reply or stream resource collected without an
//! answer fails its call with UNAVAILABLE, and dead sinks and relays are
//! monitored. Messages are sent from runtime threads (BEAM threads may not
//! send with an owned environment); the rare send that would happen on a
//! BEAM thread is handed to the runtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use once_cell::sync::Lazy;
use rustler::types::tuple::{get_tuple, make_tuple};
use rustler::{
    Atom, Binary, Encoder, Env, Error, LocalPid, Monitor, NewBinary, NifResult, OwnedEnv, ResourceArc, Term,
};
use snakepit_core::forward::{
    self, BoxFuture, Bytes, Forwarder, Method, RemoteSender, RemoteStream, Status, StreamFeedback, WINDOW,
};
use snakepit_core::server::ServerConfig;
use snakepit_core::service::{Service, ServiceConfig};
use snakepit_core::watch::{Canceller, Owner};
use snakepit_core::wire::{self, Encoding};
use snakepit_core::StoreError;
use tokio::sync::{oneshot, watch, Notify};

use crate::atoms;
use crate::server::runtime;
use crate::STORE;

rustler::atoms! {
    snakepit_forward,
    snakepit_forward_watch,
    snakepit_forward_ack,
    snakepit_forward_cancel,
    snakepit_wire_updates,
    snakepit_wire_end,
    status,
    session_not_found,
    already_exists,
    unavailable,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process calls are forwarded to; `ACTIVE` mirrors `Some`, read on
/// every call about a missing session without taking the lock.
static RECEIVER: Mutex<Option<LocalPid>> = Mutex::new(None);
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn receiver() -> Option<LocalPid> {
    *lock(&RECEIVER)
}

/// Makes `pid` the one process forwarded calls go to, replacing any.
#[rustler::nif]
fn cluster_register(pid: LocalPid) -> Atom {
    *lock(&RECEIVER) = Some(pid);
    ACTIVE.store(true, Ordering::Release);
    atoms::ok()
}

/// No more forwarding: every call is served locally, as without a cluster.
#[rustler::nif]
fn cluster_unregister() -> Atom {
    *lock(&RECEIVER) = None;
    ACTIVE.store(false, Ordering::Release);
    atoms::ok()
}

/// A message, built in the environment it is sent from.
type Message = Box<dyn for<'a> FnOnce(Env<'a>) -> Term<'a> + Send>;

/// Sends `message` to `pid`; false if it is dead. On a BEAM thread (where an
/// owned environment may not send) the send is handed to the runtime and
/// reported as made.
fn send(pid: LocalPid, message: Message) -> bool {
    if rustler::thread::is_scheduler_thread() {
        if let Ok(rt) = runtime() {
            rt.spawn(async move {
                send(pid, message);
            });
        }
        return true;
    }
    OwnedEnv::new().send_and_clear(&pid, message).is_ok()
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut b = NewBinary::new(env, bytes.len());
    b.as_mut_slice().copy_from_slice(bytes);
    b.into()
}

fn unavailable_status(message: &str) -> Status {
    Status::unavailable(message.to_string())
}

/// `{:status, code, message, [{key, value}]}`: a status to pass through verbatim.
fn status_term<'a>(env: Env<'a>, s: &Status) -> Term<'a> {
    let (code, message, metadata) = forward::status_parts(s);
    let metadata: Vec<Term<'a>> =
        metadata.iter().map(|(k, v)| make_tuple(env, &[binary(env, k.as_bytes()), binary(env, v)])).collect();
    make_tuple(env, &[status().encode(env), code.encode(env), binary(env, message.as_bytes()), metadata.encode(env)])
}

fn text(term: Term) -> NifResult<String> {
    let b: Binary = term.decode()?;
    Ok(String::from_utf8_lossy(b.as_slice()).into_owned())
}

/// A status from `{:status, code, message, metadata}` (code 0..16) or one
/// of the `{:error, reason}` shapes; anything else is badarg.
fn status_of(term: Term) -> NifResult<Status> {
    let parts = get_tuple(term)?;
    let tag: Atom = parts.first().ok_or(Error::BadArg)?.decode()?;
    match parts.as_slice() {
        [_, code, message, metadata] if tag == status() => {
            let code: i32 = code.decode()?;
            if !(0..=16).contains(&code) {
                return Err(Error::BadArg);
            }
            let metadata: Vec<(Binary, Binary)> = metadata.decode()?;
            let metadata = metadata
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(k.as_slice()).into_owned(), v.as_slice().to_vec()))
                .collect();
            Ok(forward::status_from_parts(code, text(*message)?, metadata))
        }
        [_, reason] if tag == atoms::error() => {
            let reason = get_tuple(*reason)?;
            let [kind, detail] = reason.as_slice() else { return Err(Error::BadArg) };
            let kind: Atom = kind.decode()?;
            let detail = text(*detail)?;
            if kind == session_not_found() {
                Ok(StoreError::SessionNotFound(detail).into())
            } else if kind == already_exists() {
                Ok(StoreError::SessionExists(detail).into())
            } else if kind == unavailable() {
                Ok(Status::unavailable(detail))
            } else {
                Err(Error::BadArg)
            }
        }
        _ => Err(Error::BadArg),
    }
}

fn encoding_of(binary: bool) -> Encoding {
    if binary {
        Encoding::Binary
    } else {
        Encoding::Json
    }
}

/// The forwarder installed into every server `server_start` starts; reads
/// the registered process at call time.
#[derive(Debug)]
pub struct ClusterForwarder;

/// Sends `message` to the registered process `pid` and waits for the answer
/// `rx` brings; UNAVAILABLE if the process is gone or drops the question.
async fn ask<T>(pid: LocalPid, message: Message, rx: oneshot::Receiver<Result<T, Status>>) -> Result<T, Status> {
    if !send(pid, message) {
        return Err(unavailable_status("the cluster process is gone"));
    }
    rx.await.unwrap_or_else(|_| Err(unavailable_status("the cluster did not answer")))
}

impl Forwarder for ClusterForwarder {
    fn active(&self) -> bool {
        ACTIVE.load(Ordering::Acquire)
    }

    fn unary(
        &self,
        method: Method,
        session_id: &str,
        request: Bytes,
        encoding: Encoding,
    ) -> BoxFuture<Result<Bytes, Status>> {
        let session_id = session_id.to_string();
        Box::pin(async move {
            let pid = receiver().ok_or_else(|| unavailable_status("no cluster process is registered"))?;
            let (tx, rx) = oneshot::channel();
            let reply = ResourceArc::new(ReplyResource { tx: Mutex::new(Some(tx)) });
            let message: Message = Box::new(move |env| {
                let method =
                    Atom::from_str(env, method.as_str()).map_or_else(|_| atoms::nil().encode(env), |a| a.encode(env));
                make_tuple(
                    env,
                    &[
                        snakepit_forward().encode(env),
                        reply.encode(env),
                        method,
                        binary(env, session_id.as_bytes()),
                        binary(env, &request),
                        (encoding == Encoding::Binary).encode(env),
                    ],
                )
            });
            ask(pid, message, rx).await
        })
    }

    fn watch(&self, session_id: &str, request: Bytes, encoding: Encoding) -> BoxFuture<Result<RemoteStream, Status>> {
        let session_id = session_id.to_string();
        Box::pin(async move {
            let pid = receiver().ok_or_else(|| unavailable_status("no cluster process is registered"))?;
            let (tx, rx) = oneshot::channel();
            let stream = ResourceArc::new(StreamResource {
                state: Mutex::new(StreamState { opening: Some(tx), sender: None, monitor: None }),
            });
            let message: Message = Box::new(move |env| {
                make_tuple(
                    env,
                    &[
                        snakepit_forward_watch().encode(env),
                        stream.encode(env),
                        binary(env, session_id.as_bytes()),
                        binary(env, &request),
                        (encoding == Encoding::Binary).encode(env),
                    ],
                )
            });
            ask(pid, message, rx).await
        })
    }
}

/// The forwarder servers install; one for all of them.
pub(crate) fn forwarder() -> Arc<dyn Forwarder> {
    static FORWARDER: Lazy<Arc<dyn Forwarder>> = Lazy::new(|| Arc::new(ClusterForwarder));
    FORWARDER.clone()
}

/// Where a forwarded unary call's answer goes. Collected unanswered, its
/// sender drops and the call fails with UNAVAILABLE.
pub struct ReplyResource {
    tx: Mutex<Option<oneshot::Sender<Result<Bytes, Status>>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ReplyResource {}

/// Answers a forwarded unary call: `{:ok, response}`, `{:status, code,
/// message, metadata}` or `{:error, {:session_not_found | :already_exists |
/// :unavailable, detail}}`. A second answer is ignored.
#[rustler::nif]
fn cluster_reply(reply: ResourceArc<ReplyResource>, answer: Term) -> NifResult<Atom> {
    let parts = get_tuple(answer)?;
    let result = match parts.as_slice() {
        [tag, response] if tag.decode::<Atom>()? == atoms::ok() => {
            let response: Binary = response.decode()?;
            Ok(Bytes::copy_from_slice(response.as_slice()))
        }
        _ => Err(status_of(answer)?),
    };
    if let Some(tx) = lock(&reply.tx).take() {
        // The handler may be gone (its client cancelled): nothing to tell.
        let _ = tx.send(result);
    }
    Ok(atoms::ok())
}

/// The service that serves forwarded calls here: over `STORE`, with the
/// settings of the server started last (the defaults before any), never
/// forwarding.
static SERVICE: Lazy<Mutex<Service>> = Lazy::new(|| Mutex::new(service(ServiceConfig::from(&ServerConfig::default()))));

/// Never turns true: forwarded unary calls have no stream to end at shutdown.
static NEVER_STOPPING: Lazy<watch::Sender<bool>> = Lazy::new(|| watch::channel(false).0);

fn service(config: ServiceConfig) -> Service {
    Service::new(STORE.clone(), ServiceConfig { forwarder: None, ..config }, NEVER_STOPPING.subscribe())
}

/// Serves forwarded calls with `config` from now on (`server_start` calls it).
pub(crate) fn use_config(config: ServiceConfig) {
    *lock(&SERVICE) = service(config);
}

/// Serves a forwarded unary call against this node's store: `{:ok,
/// response}` or `{:status, code, message, metadata}`. Dirty: it may wait
/// on the blocking pool (ListVariables) or start the runtime.
#[rustler::nif(schedule = "DirtyIo")]
fn cluster_serve<'a>(env: Env<'a>, method: Atom, request: Binary, binary_encoding: bool) -> NifResult<Term<'a>> {
    let method = Method::parse(&method.to_term(env).atom_to_string()?).ok_or(Error::BadArg)?;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return Ok(status_term(env, &Status::unavailable(format!("cannot start the tokio runtime: {e}")))),
    };
    let service = lock(&SERVICE).clone();
    match rt.block_on(service.serve_forwarded(method, request.as_slice(), encoding_of(binary_encoding))) {
        Ok(response) => Ok((atoms::ok(), binary(env, &response)).encode(env)),
        Err(s) => Ok(status_term(env, &s)),
    }
}

/// This node's end of a forwarded WatchVariables call: before it opens, the
/// handler waits on `opening`; once open, `sender` feeds the gRPC stream.
pub struct StreamResource {
    state: Mutex<StreamState>,
}

struct StreamState {
    opening: Option<oneshot::Sender<Result<RemoteStream, Status>>>,
    sender: Option<RemoteSender>,
    monitor: Option<Monitor>,
}

impl StreamResource {
    /// Ends the stream: refuses it before it opened, else ends it after what was pushed.
    fn close(&self, status: Option<Status>) {
        let mut st = lock(&self.state);
        if let Some(opening) = st.opening.take() {
            let refusal = status.unwrap_or_else(|| unavailable_status("the watch ended before it opened"));
            let _ = opening.send(Err(refusal));
        } else if let Some(sender) = st.sender.take() {
            if let Some(status) = status {
                sender.fail(status);
            }
        }
    }
}

#[rustler::resource_impl]
impl rustler::Resource for StreamResource {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        lock(&self.state).monitor = None;
        self.close(Some(unavailable_status("the cluster relay of this watch exited")));
    }
}

/// Tells the sink of an open stream what its client did.
struct Feedback {
    stream: ResourceArc<StreamResource>,
    sink: LocalPid,
}

impl StreamFeedback for Feedback {
    fn ack(&self, n: usize) {
        let stream = self.stream.clone();
        send(
            self.sink,
            Box::new(move |env| {
                make_tuple(env, &[snakepit_forward_ack().encode(env), stream.encode(env), (n as u64).encode(env)])
            }),
        );
    }

    fn cancel(&self) {
        // Pushes after this are dropped at once, not queued for nobody.
        lock(&self.stream.state).sender = None;
        let stream = self.stream.clone();
        send(
            self.sink,
            Box::new(move |env| make_tuple(env, &[snakepit_forward_cancel().encode(env), stream.encode(env)])),
        );
    }
}

/// The owner accepted the watch: the call returns its stream (with the
/// open header); acks and cancellation go to `sink`, which is monitored
/// (its death ends the stream with UNAVAILABLE). Later opens are ignored.
#[rustler::nif]
fn cluster_stream_open(env: Env, stream: ResourceArc<StreamResource>, sink: LocalPid) -> Atom {
    let mut st = lock(&stream.state);
    let Some(opening) = st.opening.take() else {
        return atoms::ok();
    };
    let feedback = Feedback { stream: stream.clone(), sink };
    let (sender, remote) = RemoteStream::channel(Box::new(feedback));
    match stream.monitor(Some(env), &sink) {
        Some(m) => {
            st.monitor = Some(m);
            st.sender = Some(sender);
        }
        // Already dead: the stream ends as its death would end it.
        None => sender.fail(unavailable_status("the cluster relay of this watch exited")),
    }
    drop(st);
    // A refusal means the handler is gone (its client cancelled); dropping
    // the stream tells the sink to cancel.
    let _ = opening.send(Ok(remote));
    atoms::ok()
}

/// Encoded `VariableUpdate` messages for an open stream, in order; ignored
/// once it is closed (or before it opened). Runs on a normal scheduler and
/// copies the binaries: push one relayed batch (at most [`WINDOW`] updates) a call.
#[rustler::nif]
fn cluster_stream_push(stream: ResourceArc<StreamResource>, updates: Vec<Binary>) -> Atom {
    let st = lock(&stream.state);
    if let Some(sender) = &st.sender {
        for u in updates {
            if !sender.push(Bytes::copy_from_slice(u.as_slice())) {
                break;
            }
        }
    }
    atoms::ok()
}

/// Ends a forwarded watch: `:ok` (a normal end), `{:status, ...}` or
/// `{:error, ...}` as for `cluster_reply/2`. Before the stream opened it is
/// the refusal of the call (`:ok` there is UNAVAILABLE: nothing was opened);
/// after, the stream's last item.
#[rustler::nif]
fn cluster_stream_close(env: Env, stream: ResourceArc<StreamResource>, reason: Term) -> NifResult<Atom> {
    let status = match reason.decode::<Atom>() {
        Ok(a) if a == atoms::ok() => None,
        Ok(_) => return Err(Error::BadArg),
        Err(_) => Some(status_of(reason)?),
    };
    stream.close(status);
    if let Some(m) = lock(&stream.state).monitor.take() {
        stream.demonitor(Some(env), &m);
    }
    Ok(atoms::ok())
}

/// The owner's end of a forwarded watch: a gRPC-owned subscription whose
/// updates a task sends to the relay, within the credit it was given.
pub struct WireResource {
    canceller: Canceller,
    /// Sends happen under this lock; cancel takes it to close, so nothing is
    /// sent after `cluster_wire_cancel` returns.
    open: Mutex<bool>,
    /// Updates the relay may still receive unacknowledged (at most [`WINDOW`]).
    credit: AtomicUsize,
    wake: Notify,
    monitor: Mutex<Option<Monitor>>,
}

impl WireResource {
    fn close(&self) {
        *lock(&self.open) = false;
        self.canceller.cancel();
        self.wake.notify_one();
    }

    fn is_open(&self) -> bool {
        *lock(&self.open)
    }
}

#[rustler::resource_impl]
impl rustler::Resource for WireResource {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.close();
    }
}

/// Registers a forwarded watch on this node's store (as a gRPC watcher, so
/// it keeps the session alive) and relays its updates to `relay`: `{:ok,
/// wire_ref}` or `{:status, code, message, metadata}` (the refusal). Dirty:
/// the first watch may have to start the runtime.
#[rustler::nif(schedule = "DirtyIo")]
fn cluster_wire_watch<'a>(
    env: Env<'a>,
    session_id: Binary<'a>,
    request: Binary<'a>,
    binary_encoding: bool,
    relay: LocalPid,
) -> Term<'a> {
    let session_id = String::from_utf8_lossy(session_id.as_slice()).into_owned();
    let encoding = encoding_of(binary_encoding);
    let watch = match forward::watch_request(request.as_slice()) {
        Ok(w) => w,
        Err(s) => return status_term(env, &s),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return status_term(env, &Status::unavailable(format!("cannot start the tokio runtime: {e}"))),
    };
    let sub = match STORE.watch(&session_id, &watch, Owner::Grpc) {
        Ok(sub) => sub,
        Err(e) => return status_term(env, &e.into()),
    };
    let wire_ref = ResourceArc::new(WireResource {
        canceller: sub.canceller(),
        open: Mutex::new(true),
        credit: AtomicUsize::new(WINDOW),
        wake: Notify::new(),
        monitor: Mutex::new(None),
    });
    match wire_ref.monitor(Some(env), &relay) {
        Some(m) => *lock(&wire_ref.monitor) = Some(m),
        // The relay is already dead: nobody will read these updates.
        None => {
            wire_ref.close();
            return (atoms::ok(), wire_ref).encode(env);
        }
    }
    let wire = wire_ref.clone();
    rt.spawn(async move {
        let mut msg_env = OwnedEnv::new();
        let mut buffered = VecDeque::new();
        loop {
            // Without credit nothing is taken: what waits stays in the
            // subscription, coalesced, however slow the client at the far end.
            let credit = loop {
                if !wire.is_open() {
                    return;
                }
                let credit = wire.credit.load(Ordering::Acquire);
                if credit > 0 {
                    break credit;
                }
                wire.wake.notified().await;
            };
            if buffered.is_empty() {
                match sub.next_batch().await {
                    Some(batch) => buffered.extend(batch),
                    None => {
                        let open = lock(&wire.open);
                        if *open {
                            let wire = wire.clone();
                            let _ = msg_env.send_and_clear(&relay, |env| (snakepit_wire_end(), wire).encode(env));
                        }
                        return;
                    }
                }
                continue;
            }
            let n = credit.min(buffered.len());
            let updates: Vec<Bytes> = buffered.drain(..n).map(|u| wire::encoded_update(&u, encoding).0).collect();
            // Built outside the lock: copying big updates takes a while, and
            // cancel waits on the lock from a scheduler.
            let message = msg_env.run(|env| {
                let list: Vec<Term> = updates.iter().map(|u| binary(env, u)).collect();
                msg_env.save((snakepit_wire_updates(), wire.clone(), list).encode(env))
            });
            let open = lock(&wire.open);
            if !*open {
                return;
            }
            wire.credit.fetch_sub(n, Ordering::AcqRel);
            let sent = msg_env.send_and_clear(&relay, |env| message.load(env));
            drop(open);
            if sent.is_err() {
                wire.close();
                return;
            }
        }
    });
    (atoms::ok(), wire_ref).encode(env)
}

/// Gives back `n` updates of credit (capped at the window); `:ok`.
#[rustler::nif]
fn cluster_wire_ack(wire_ref: ResourceArc<WireResource>, n: u64) -> Atom {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let _ =
        wire_ref.credit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(c.saturating_add(n).min(WINDOW)));
    wire_ref.wake.notify_one();
    atoms::ok()
}

/// Ends an owner-side watch at once; idempotent. Nothing is sent after it returns.
#[rustler::nif]
fn cluster_wire_cancel(env: Env, wire_ref: ResourceArc<WireResource>) -> Atom {
    wire_ref.close();
    if let Some(m) = lock(&wire_ref.monitor).take() {
        wire_ref.demonitor(Some(env), &m);
    }
    atoms::ok()
}
