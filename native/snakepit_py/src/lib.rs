//! `snakepit_bridge_native`: a gRPC transport for the `snakepit_bridge` Python
//! package, with tonic underneath.
//!
//! It carries serialized protobuf messages (bytes in, bytes out): the Python
//! package keeps encoding requests and decoding responses with its generated
//! stubs, so both transports share every line of protocol logic and only the
//! HTTP/2 work moves out of Python. Each call runs as a task on one tokio
//! runtime thread; its results wait in the call's own queue until Python takes
//! them. Python learns that something arrived either by blocking on the call
//! (GIL released) or, under asyncio, through a [`Waker`]: a socket whose read
//! end the event loop watches, written at most once however many results
//! arrive before the loop drains it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::runtime::Runtime;
use tokio::sync::{watch, Notify};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, KeyAndValueRef, MetadataMap};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// Messages a stream may hold that Python has not taken yet. Past it the task
/// stops reading, HTTP/2 flow control reaches the server, and the server
/// coalesces: a watcher that falls behind gets the latest value, as with grpcio.
const STREAM_BUFFER: usize = 64;
/// HTTP/2 windows: grpcio's initial stream window, so a stalled reader holds
/// back as few messages as it does there; the connection's is room for many
/// such streams.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// grpcio's default limit for a received message.
const DEFAULT_MAX_RECEIVE: usize = 4 * 1024 * 1024;
/// How tonic's message for a response over the limit starts (tonic 0.14, codec/decode.rs).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";
/// How often a blocked call looks for Ctrl-C (KeyboardInterrupt).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// One runtime per process, made on first use. After a fork the child makes
/// its own (the parent's threads do not exist there).
static RUNTIME: Lazy<Mutex<(u32, Arc<Runtime>)>> = Lazy::new(|| Mutex::new((std::process::id(), new_runtime())));

fn new_runtime() -> Arc<Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("snakepit-native")
            .enable_all()
            .build()
            .expect("the tokio runtime of snakepit_bridge_native could not start"),
    )
}

fn runtime() -> Arc<Runtime> {
    let mut current = lock(&RUNTIME);
    let pid = std::process::id();
    if current.0 != pid {
        // Forked: the old runtime's threads are gone; dropping it would wait for them.
        let stale = std::mem::replace(&mut *current, (pid, new_runtime()));
        std::mem::forget(stale);
    }
    current.1.clone()
}

/// A poisoned lock only means a panic elsewhere; the data is still consistent
/// (every critical section here is a few field updates).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Passes serialized messages through unchanged: Python encodes and decodes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

// ------------------------------------------------------------------ waker

struct WakerShared {
    tokens: Mutex<(Vec<u64>, bool)>,
    write_end: UnixStream,
    read_end: UnixStream,
}

impl WakerShared {
    /// Queue `token` and make the read end readable, unless it already is.
    fn post(&self, token: u64) {
        let mut guard = lock(&self.tokens);
        guard.0.push(token);
        if !guard.1 {
            guard.1 = true;
            // A full socket buffer is already readable: nothing is lost.
            let _ = (&self.write_end).write(&[1]);
        }
    }
}

/// Tells an asyncio event loop that calls have news: watch [`Waker::fileno`]
/// for reading (`loop.add_reader`), then call [`Waker::drain`].
#[pyclass(frozen, module = "snakepit_bridge_native")]
struct Waker {
    shared: Arc<WakerShared>,
}

#[pymethods]
impl Waker {
    #[new]
    fn new() -> PyResult<Self> {
        let (write_end, read_end) =
            UnixStream::pair().map_err(|e| PyRuntimeError::new_err(format!("socketpair: {e}")))?;
        for end in [&write_end, &read_end] {
            end.set_nonblocking(true).map_err(|e| PyRuntimeError::new_err(format!("socketpair: {e}")))?;
        }
        Ok(Self { shared: Arc::new(WakerShared { tokens: Mutex::new((Vec::new(), false)), write_end, read_end }) })
    }

    /// The descriptor that becomes readable when tokens are waiting.
    fn fileno(&self) -> i32 {
        self.shared.read_end.as_raw_fd()
    }

    /// The tokens posted since the last drain, in order; the descriptor is read empty first.
    fn drain(&self) -> Vec<u64> {
        // Empty the socket before taking the tokens: a token posted after the
        // take finds the flag cleared and writes again, so none is stranded.
        // At most one byte is written per drain (the flag below), so one read
        // that does not fill the buffer has emptied it.
        let mut sink = [0u8; 64];
        while matches!((&self.shared.read_end).read(&mut sink), Ok(n) if n == sink.len()) {}
        let mut guard = lock(&self.shared.tokens);
        guard.1 = false;
        std::mem::take(&mut guard.0)
    }
}

// ------------------------------------------------------------------ calls

/// `(key, value)` pairs of ASCII metadata, as Python takes them.
type Pairs = Vec<(String, String)>;

/// How a call ended: a gRPC status code (0 is OK), its message and the trailers.
#[derive(Clone)]
struct End {
    code: i32,
    details: String,
    trailers: Pairs,
}

impl End {
    fn from_status(status: &Status) -> Self {
        // A status tonic made from a broken connection (it keeps the cause as
        // its source: an I/O or HTTP/2 error, or hyper's "operation was
        // canceled" when the connection closed under the call, as after a
        // refused client certificate) is UNAVAILABLE, as grpcio reports it: the
        // server is gone, and a retrying client should treat it so. A status
        // the server sent has no source.
        let code = match status.code() {
            Code::Unknown | Code::Internal | Code::Cancelled if std::error::Error::source(status).is_some() => {
                Code::Unavailable
            }
            // tonic's answer to a response over max_receive_message_length; grpcio's is this code.
            Code::OutOfRange if status.message().starts_with(TONIC_TOO_LARGE) => Code::ResourceExhausted,
            code => code,
        };
        Self { code: code as i32, details: status.message().to_owned(), trailers: pairs(status.metadata()) }
    }

    fn into_tuple(self) -> (i32, String, Pairs) {
        (self.code, self.details, self.trailers)
    }

    fn local(code: Code, details: &str) -> Self {
        Self { code: code as i32, details: details.to_owned(), trailers: Vec::new() }
    }
}

#[derive(Default)]
struct Inner {
    headers: Option<Pairs>,
    messages: VecDeque<bytes::Bytes>,
    end: Option<End>,
    /// Asyncio waiters (a task reading while another awaits the headers or the end).
    waiters: Vec<(Arc<WakerShared>, u64, Want)>,
    /// Threads blocked in [`Call::wait`]: the condvar is signalled only when
    /// there are some (a signal is a system call even with nobody waiting).
    blocked: usize,
    task: Option<tokio::task::AbortHandle>,
}

impl Inner {
    fn ready(&self, what: Want) -> bool {
        self.end.is_some()
            || match what {
                Want::Headers => self.headers.is_some(),
                Want::Message => !self.messages.is_empty(),
                Want::End => false,
            }
    }
}

#[derive(Clone, Copy)]
enum Want {
    Headers,
    Message,
    End,
}

impl TryFrom<u8> for Want {
    type Error = PyErr;

    fn try_from(v: u8) -> PyResult<Self> {
        match v {
            0 => Ok(Want::Headers),
            1 => Ok(Want::Message),
            2 => Ok(Want::End),
            _ => Err(PyValueError::new_err(format!("unknown wait kind {v} (0: headers, 1: message, 2: end)"))),
        }
    }
}

#[derive(Default)]
struct CallState {
    inner: Mutex<Inner>,
    changed: Condvar,
    room: Notify,
}

impl CallState {
    /// Apply `f` under the lock, then wake whoever waits for news.
    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let (due, blocked): (Vec<_>, bool) = {
            let mut inner = lock(&self.inner);
            f(&mut inner);
            let blocked = inner.blocked > 0;
            let due = if inner.waiters.is_empty() {
                Vec::new()
            } else {
                let waiters = std::mem::take(&mut inner.waiters);
                let (due, waiting) = waiters.into_iter().partition(|(_, _, want)| inner.ready(*want));
                inner.waiters = waiting;
                due
            };
            (due, blocked)
        };
        if blocked {
            self.changed.notify_all();
        }
        for (waker, token, _) in due {
            waker.post(token);
        }
    }

    fn finish(&self, end: End) {
        self.update(|inner| {
            if inner.end.is_none() {
                inner.headers.get_or_insert_with(Vec::new);
                inner.end = Some(end);
            }
        });
    }
}

fn pairs(map: &MetadataMap) -> Pairs {
    map.iter()
        .filter_map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())),
            KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

/// One RPC in flight: its response headers, messages and end, as they come.
///
/// Unary and server-streaming calls are the same thing on the wire from the
/// client's side (one request, then messages, then trailers); Python checks
/// that a unary call got exactly one message.
#[pyclass(frozen, module = "snakepit_bridge_native")]
struct Call {
    state: Arc<CallState>,
}

#[pymethods]
impl Call {
    /// The response headers once they came (`[]` if the call ended without), else `None`.
    fn headers(&self) -> Option<Pairs> {
        lock(&self.state.inner).headers.clone()
    }

    /// The next message if one is waiting, else `None` (then see [`Call::end`]).
    fn try_message<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let message = {
            let mut inner = lock(&self.state.inner);
            let full = inner.messages.len() >= STREAM_BUFFER;
            let message = inner.messages.pop_front();
            if full && message.is_some() {
                self.state.room.notify_one();
            }
            message
        };
        message.map(|m| PyBytes::new(py, &m))
    }

    /// How the call ended, `(code, details, trailers)`, once it has and every message was taken.
    fn end(&self) -> Option<(i32, String, Pairs)> {
        let inner = lock(&self.state.inner);
        if !inner.messages.is_empty() {
            return None;
        }
        inner.end.clone().map(End::into_tuple)
    }

    /// How the call ended, once it has, whether or not messages are left to take
    /// (what a caller asking for the status code or trailers wants).
    fn status(&self) -> Option<(i32, String, Pairs)> {
        lock(&self.state.inner).end.clone().map(End::into_tuple)
    }

    /// Ask `waker` to post `token` (once) when `what` is there: for 0 the
    /// headers, for 1 a message, for 2 the end; the end satisfies all three.
    /// Returns `False` (and arms nothing) when it is already there.
    fn arm(&self, waker: &Waker, token: u64, what: u8) -> PyResult<bool> {
        let what = Want::try_from(what)?;
        let mut inner = lock(&self.state.inner);
        if inner.ready(what) {
            return Ok(false);
        }
        inner.waiters.push((waker.shared.clone(), token, what));
        Ok(true)
    }

    /// Forget the waiter `token` (its wait was cancelled before the news came).
    fn disarm(&self, token: u64) {
        lock(&self.state.inner).waiters.retain(|(_, t, _)| *t != token);
    }

    /// Block (without the GIL) until `what` (as for [`Call::arm`]) or the end is
    /// there, or `timeout` seconds passed; returns whether it is there. Ctrl-C
    /// interrupts the wait (KeyboardInterrupt).
    #[pyo3(signature = (what, timeout=None))]
    fn wait(&self, py: Python<'_>, what: u8, timeout: Option<f64>) -> PyResult<bool> {
        let what = Want::try_from(what)?;
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SIGNAL_POLL),
                None => SIGNAL_POLL,
            };
            let state = &self.state;
            let ready = py.detach(|| {
                let mut inner = lock(&state.inner);
                inner.blocked += 1;
                let (mut inner, _) = state
                    .changed
                    .wait_timeout_while(inner, slice, |i| !i.ready(what))
                    .unwrap_or_else(|e| e.into_inner());
                inner.blocked -= 1;
                inner.ready(what)
            });
            if ready || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(ready);
            }
            py.check_signals()?;
        }
    }

    /// Cancel the call (the server sees the stream reset); its end becomes
    /// CANCELLED unless it had already ended. Idempotent.
    fn cancel(&self) {
        let task = lock(&self.state.inner).task.take();
        if let Some(task) = task {
            task.abort();
        }
        self.state.finish(End::local(Code::Cancelled, "Locally cancelled by application!"));
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Nobody can read it any more: stop the RPC rather than let it run on.
        if let Some(task) = lock(&self.state.inner).task.take() {
            task.abort();
        }
    }
}

// ------------------------------------------------------------------ channel

/// A connection to one server (made at the first call, remade after a failure).
#[pyclass(frozen, module = "snakepit_bridge_native")]
struct Channel {
    client: tonic::client::Grpc<tonic::transport::Channel>,
    max_send: usize,
    pid: u32,
    closed: watch::Sender<bool>,
    runtime: Arc<Runtime>,
}

#[pymethods]
impl Channel {
    /// `address` is `host:port`. With `tls`, `root_certificates` (PEM) are the
    /// CAs trusted for the server's certificate and `private_key` plus
    /// `certificate_chain` (PEM) a client certificate for mutual TLS.
    #[new]
    #[pyo3(signature = (address, *, tls=false, root_certificates=None, private_key=None, certificate_chain=None,
                        max_receive_message_length=None, max_send_message_length=None))]
    fn new(
        address: &str,
        tls: bool,
        root_certificates: Option<&[u8]>,
        private_key: Option<&[u8]>,
        certificate_chain: Option<&[u8]>,
        max_receive_message_length: Option<usize>,
        max_send_message_length: Option<usize>,
    ) -> PyResult<Self> {
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| PyValueError::new_err(format!("invalid address {address:?}: {e}")))?
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .tcp_nodelay(true);
        if tls {
            let mut config = ClientTlsConfig::new();
            if let Some(roots) = root_certificates {
                config = config.ca_certificate(Certificate::from_pem(roots));
            }
            match (private_key, certificate_chain) {
                (Some(key), Some(chain)) => config = config.identity(Identity::from_pem(chain, key)),
                (None, None) => {}
                _ => return Err(PyValueError::new_err("private_key and certificate_chain go together")),
            }
            endpoint =
                endpoint.tls_config(config).map_err(|e| PyValueError::new_err(format!("TLS configuration: {e}")))?;
        }
        let runtime = runtime();
        // connect_lazy spawns the channel's worker, so it needs the runtime entered.
        let channel = {
            let _entered = runtime.enter();
            endpoint.connect_lazy()
        };
        let client = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(max_receive_message_length.unwrap_or(DEFAULT_MAX_RECEIVE))
            .max_encoding_message_size(usize::MAX);
        let max_send = max_send_message_length.unwrap_or(usize::MAX);
        Ok(Self { client, max_send, pid: std::process::id(), closed: watch::Sender::new(false), runtime })
    }

    /// Start `method` (`/package.Service/Method`) with one serialized request;
    /// `metadata` are ASCII `(key, value)` pairs, `timeout` seconds (a
    /// deadline: DEADLINE_EXCEEDED past it). Returns the [`Call`] at once.
    #[pyo3(signature = (method, request, metadata, timeout=None))]
    fn call(
        &self,
        method: &str,
        request: &[u8],
        metadata: Vec<(String, String)>,
        timeout: Option<f64>,
    ) -> PyResult<Call> {
        if std::process::id() != self.pid {
            return Err(PyRuntimeError::new_err("this channel was made before a fork; make a new one in this process"));
        }
        let path = http::uri::PathAndQuery::from_str(method)
            .map_err(|e| PyValueError::new_err(format!("invalid method path {method:?}: {e}")))?;
        let mut request = tonic::Request::new(bytes::Bytes::copy_from_slice(request));
        for (key, value) in metadata {
            let k = AsciiMetadataKey::from_str(&key)
                .map_err(|_| PyValueError::new_err(format!("invalid metadata key {key:?}")))?;
            let v = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|_| PyValueError::new_err(format!("invalid metadata value for {key:?}")))?;
            request.metadata_mut().append(k, v);
        }
        let timeout = match timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(PyValueError::new_err(format!("timeout must be a non-negative number of seconds, got {t}")))
            }
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let state = Arc::new(CallState::default());
        if *self.closed.borrow() {
            state.finish(End::local(Code::Cancelled, "the channel is closed"));
            return Ok(Call { state });
        }
        if request.get_ref().len() > self.max_send {
            // As grpcio: refused before sending, with RESOURCE_EXHAUSTED.
            let details = format!("Sent message larger than max ({} vs. {})", request.get_ref().len(), self.max_send);
            state.finish(End::local(Code::ResourceExhausted, &details));
            return Ok(Call { state });
        }
        let work = run(state.clone(), self.client.clone(), path, request);
        let mut closed = self.closed.subscribe();
        let task_state = state.clone();
        let task = self.runtime.spawn(async move {
            let deadline = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = work => {}
                () = deadline => task_state.finish(End::local(Code::DeadlineExceeded, "Deadline Exceeded")),
                _ = closed.wait_for(|c| *c) => task_state.finish(End::local(Code::Cancelled, "the channel is closed")),
            }
        });
        let mut inner = lock(&state.inner);
        if inner.end.is_none() {
            inner.task = Some(task.abort_handle());
        }
        drop(inner);
        Ok(Call { state })
    }

    /// Close the channel: calls in flight end CANCELLED, later ones at once. Idempotent.
    fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Whether [`Channel::close`] was called.
    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// Drive one call to its end, filling `state` as results come.
async fn run(
    state: Arc<CallState>,
    mut client: tonic::client::Grpc<tonic::transport::Channel>,
    path: http::uri::PathAndQuery,
    request: tonic::Request<bytes::Bytes>,
) {
    if let Err(e) = client.ready().await {
        state.finish(End::local(Code::Unavailable, &format!("the server cannot be reached: {e}")));
        return;
    }
    let response = match client.server_streaming(request, path, RawCodec).await {
        Ok(r) => r,
        Err(status) => return state.finish(End::from_status(&status)),
    };
    let headers = pairs(response.metadata());
    state.update(|inner| inner.headers = Some(headers));
    let mut stream = response.into_inner();
    loop {
        loop {
            // Wait for room; `notify_one` keeps a permit, so a wake between
            // the check and the wait is not lost.
            let notified = state.room.notified();
            if lock(&state.inner).messages.len() < STREAM_BUFFER {
                break;
            }
            notified.await;
        }
        match stream.message().await {
            Ok(Some(message)) => state.update(|inner| inner.messages.push_back(message)),
            Ok(None) => {
                let trailers = match stream.trailers().await {
                    Ok(t) => t.as_ref().map(pairs).unwrap_or_default(),
                    Err(status) => return state.finish(End::from_status(&status)),
                };
                return state.finish(End { code: 0, details: String::new(), trailers });
            }
            Err(status) => return state.finish(End::from_status(&status)),
        }
    }
}

#[pymodule]
fn snakepit_bridge_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Channel>()?;
    m.add_class::<Call>()?;
    m.add_class::<Waker>()?;
    m.add("STREAM_BUFFER", STREAM_BUFFER)?;
    Ok(())
}
