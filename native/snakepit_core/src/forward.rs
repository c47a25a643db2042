//! Serving sessions another node owns: the service forwards a call about a
//! session its store does not hold to a [`Forwarder`], which carries it to
//! the owner and brings the encoded answer back. The core knows nothing of
//! how (the NIF carries calls over Erlang distribution); it defines the
//! trait, the method names both sides agree on, and [`RemoteStream`], the
//! receiving end of a forwarded WatchVariables stream.
//!
//! # Flow control of a forwarded watch
//! The owner sends at most [`WINDOW`] updates not yet acknowledged; the
//! stream here acknowledges [`ACK_EVERY`] at a time as the client consumes
//! them. A slow client thus holds back the owner, whose subscription
//! coalesces what waits (one pending update per variable), instead of this
//! node buffering an unbounded backlog for it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::Stream;

use crate::proto::WatchVariablesRequest;
use crate::store::WatchRequest;
use crate::wire::{self, EncodedUpdate};

pub use prost::bytes::Bytes;
pub use tonic::{Code, Status};

/// Updates the owner may send on one forwarded watch without an
/// acknowledgement. Enough to keep a stream busy across a round trip between
/// nodes; small enough that what a slow client leaves unread stays at the
/// owner, coalesced, rather than queued here.
pub const WINDOW: usize = 64;

/// Updates consumed between two acknowledgements: half the window, so the
/// owner gets credit back before it runs dry, at one message per 32 updates.
pub const ACK_EVERY: usize = 32;

/// The unary methods that can be forwarded, named as the handlers of the
/// tonic service are (`get_variables` is BatchGetVariables, `set_variables`
/// BatchSetVariables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    InitializeSession,
    CleanupSession,
    GetSession,
    Heartbeat,
    GetVariable,
    SetVariable,
    GetVariables,
    SetVariables,
    RegisterVariable,
    ListVariables,
    DeleteVariable,
}

impl Method {
    /// Every method, in proto order.
    pub const ALL: [Method; 11] = [
        Method::InitializeSession,
        Method::CleanupSession,
        Method::GetSession,
        Method::Heartbeat,
        Method::GetVariable,
        Method::SetVariable,
        Method::GetVariables,
        Method::SetVariables,
        Method::RegisterVariable,
        Method::ListVariables,
        Method::DeleteVariable,
    ];

    /// The snake_case name of the handler.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::InitializeSession => "initialize_session",
            Method::CleanupSession => "cleanup_session",
            Method::GetSession => "get_session",
            Method::Heartbeat => "heartbeat",
            Method::GetVariable => "get_variable",
            Method::SetVariable => "set_variable",
            Method::GetVariables => "get_variables",
            Method::SetVariables => "set_variables",
            Method::RegisterVariable => "register_variable",
            Method::ListVariables => "list_variables",
            Method::DeleteVariable => "delete_variable",
        }
    }

    /// The method named `name` (as [`Method::as_str`] gives it).
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A boxed future, as the methods of [`Forwarder`] return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Carries calls about sessions this node does not hold to the node that does.
pub trait Forwarder: Send + Sync + fmt::Debug {
    /// Whether there is a cluster to forward to; when false the service
    /// serves everything locally, as without a forwarder.
    fn active(&self) -> bool;

    /// Forwards one unary call: `request` is the encoded request message of
    /// `method`; the answer is the encoded response message, or the status
    /// the owner (or the way there) ended the call with.
    fn unary(
        &self,
        method: Method,
        session_id: &str,
        request: Bytes,
        encoding: wire::Encoding,
    ) -> BoxFuture<Result<Bytes, Status>>;

    /// Forwards a WatchVariables call (`request` encoded). Resolves once the
    /// owner registered the watch, with the stream of its updates, or with
    /// the status it refused the watch with.
    fn watch(
        &self,
        session_id: &str,
        request: Bytes,
        encoding: wire::Encoding,
    ) -> BoxFuture<Result<RemoteStream, Status>>;
}

/// What a [`RemoteStream`] tells the side that feeds it.
pub trait StreamFeedback: Send + Sync {
    /// `n` more updates were consumed: the owner may send `n` more.
    fn ack(&self, n: usize);
    /// The stream was dropped before the owner ended it (the client went
    /// away, or the server stopped): the owner should stop sending.
    fn cancel(&self);
}

/// Feeds a [`RemoteStream`]. Dropping it ends the stream (OK).
#[derive(Debug)]
pub struct RemoteSender {
    tx: mpsc::UnboundedSender<Result<EncodedUpdate, Status>>,
}

impl RemoteSender {
    /// Queues one encoded `VariableUpdate`; false once the stream is gone.
    /// Unbounded here because the owner keeps within [`WINDOW`].
    pub fn push(&self, update: Bytes) -> bool {
        self.tx.send(Ok(EncodedUpdate(update))).is_ok()
    }

    /// Ends the stream with `status` as its last item.
    pub fn fail(self, status: Status) {
        let _ = self.tx.send(Err(status));
    }
}

/// The updates of a watch another node serves: already-encoded
/// `VariableUpdate` messages, then the end (OK, or a terminal status).
/// Consumption is acknowledged through its [`StreamFeedback`]; dropped
/// before the end, it tells the feeder to cancel.
pub struct RemoteStream {
    rx: mpsc::UnboundedReceiver<Result<EncodedUpdate, Status>>,
    feedback: Box<dyn StreamFeedback>,
    /// Consumed since the last acknowledgement.
    consumed: usize,
    /// The feeder ended the stream: nothing to cancel.
    ended: bool,
}

impl fmt::Debug for RemoteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStream").field("consumed", &self.consumed).field("ended", &self.ended).finish()
    }
}

impl RemoteStream {
    /// A stream and the sender that feeds it.
    pub fn channel(feedback: Box<dyn StreamFeedback>) -> (RemoteSender, RemoteStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        (RemoteSender { tx }, RemoteStream { rx, feedback, consumed: 0, ended: false })
    }
}

impl Stream for RemoteStream {
    type Item = Result<EncodedUpdate, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(update))) => {
                this.consumed += 1;
                if this.consumed >= ACK_EVERY {
                    this.consumed -= ACK_EVERY;
                    this.feedback.ack(ACK_EVERY);
                }
                Poll::Ready(Some(Ok(update)))
            }
            Poll::Ready(Some(Err(status))) => {
                this.ended = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        if !self.ended {
            self.feedback.cancel();
        }
    }
}

/// A status's parts, for carrying it between nodes: code, message, and its
/// metadata (binary `-bin` values decoded to their bytes).
pub fn status_parts(status: &Status) -> (i32, String, Vec<(String, Vec<u8>)>) {
    use tonic::metadata::KeyAndValueRef;
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|entry| match entry {
            KeyAndValueRef::Ascii(k, v) => Some((k.as_str().to_string(), v.as_bytes().to_vec())),
            KeyAndValueRef::Binary(k, v) => v.to_bytes().ok().map(|b| (k.as_str().to_string(), b.to_vec())),
        })
        .collect();
    (status.code() as i32, status.message().to_string(), metadata)
}

/// The status [`status_parts`] took apart. A code outside 0..=16 is
/// UNKNOWN; metadata entries that are not valid headers are left out.
pub fn status_from_parts(code: i32, message: String, metadata: Vec<(String, Vec<u8>)>) -> Status {
    use tonic::metadata::{MetadataKey, MetadataValue};
    let mut status = Status::new(Code::from(code), message);
    let md = status.metadata_mut();
    for (key, value) in metadata {
        if key.ends_with("-bin") {
            if let Ok(k) = MetadataKey::from_bytes(key.as_bytes()) {
                md.append_bin(k, MetadataValue::from_bytes(&value));
            }
        } else if let (Ok(k), Ok(v)) =
            (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_slice()))
        {
            md.append(k, v);
        }
    }
    status
}

/// Decodes a forwarded WatchVariablesRequest into what [`crate::Store::watch`]
/// takes; INVALID_ARGUMENT if it does not decode.
#[allow(clippy::result_large_err)]
pub fn watch_request(request: &[u8]) -> Result<WatchRequest, Status> {
    let req = WatchVariablesRequest::decode(request)
        .map_err(|e| Status::invalid_argument(format!("the message does not decode: {e}")))?;
    Ok(to_watch_request(req))
}

/// What a WatchVariablesRequest asks the store for.
pub(crate) fn to_watch_request(req: WatchVariablesRequest) -> WatchRequest {
    WatchRequest {
        identifiers: req.variable_identifiers,
        patterns: req.patterns,
        include_initial: req.include_initial_values,
        since_versions: req.since_versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorded {
        acks: Vec<usize>,
        cancels: usize,
    }

    struct Record(Arc<Mutex<Recorded>>);

    impl StreamFeedback for Record {
        fn ack(&self, n: usize) {
            self.0.lock().unwrap().acks.push(n);
        }
        fn cancel(&self) {
            self.0.lock().unwrap().cancels += 1;
        }
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
        assert_eq!(Method::GetVariables.as_str(), "get_variables");
        assert_eq!(Method::parse("watch_variables"), None);
    }

    #[tokio::test]
    async fn a_remote_stream_delivers_pushed_bytes_and_acknowledges() {
        use tokio_stream::StreamExt;
        let log = Arc::new(Mutex::new(Recorded::default()));
        let (tx, mut stream) = RemoteStream::channel(Box::new(Record(log.clone())));
        for i in 0..(ACK_EVERY * 2 + 5) {
            assert!(tx.push(Bytes::from(vec![i as u8])));
        }
        for i in 0..(ACK_EVERY * 2 + 5) {
            assert_eq!(stream.next().await.unwrap().unwrap().0, Bytes::from(vec![i as u8]));
        }
        assert_eq!(log.lock().unwrap().acks, vec![ACK_EVERY, ACK_EVERY]);
        tx.fail(Status::not_found("gone"));
        assert_eq!(stream.next().await.unwrap().unwrap_err().code(), Code::NotFound);
        assert!(stream.next().await.is_none());
        drop(stream);
        // The feeder ended it: nothing to cancel.
        assert_eq!(log.lock().unwrap().cancels, 0);
    }

    #[tokio::test]
    async fn a_remote_stream_dropped_early_cancels_once() {
        use tokio_stream::StreamExt;
        let log = Arc::new(Mutex::new(Recorded::default()));
        let (tx, mut stream) = RemoteStream::channel(Box::new(Record(log.clone())));
        tx.push(Bytes::from_static(b"x"));
        assert!(stream.next().await.is_some());
        drop(stream);
        assert_eq!(log.lock().unwrap().cancels, 1);
        assert!(!tx.push(Bytes::from_static(b"y")));
        // Ended by dropping the sender: no cancel either.
        let log = Arc::new(Mutex::new(Recorded::default()));
        let (tx, mut stream) = RemoteStream::channel(Box::new(Record(log.clone())));
        drop(tx);
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(log.lock().unwrap().cancels, 0);
    }

    #[test]
    fn statuses_survive_their_parts() {
        let s = Status::from(crate::StoreError::VersionConflict { expected: 1, current: 4 });
        let (code, message, md) = status_parts(&s);
        let back = status_from_parts(code, message, md);
        assert_eq!(back.code(), s.code());
        assert_eq!(back.message(), s.message());
        assert_eq!(back.metadata().get(wire::ERROR_KIND_KEY).unwrap(), "version_conflict");
        assert_eq!(back.metadata().get(wire::CURRENT_VERSION_KEY).unwrap(), "4");
        let bad =
            status_from_parts(99, "m".into(), vec![("Bad Key".into(), b"v".to_vec()), ("k-bin".into(), vec![0, 1])]);
        assert_eq!(bad.code(), Code::Unknown);
        assert_eq!(bad.metadata().get_bin("k-bin").unwrap().to_bytes().unwrap().as_ref(), &[0, 1]);
        assert_eq!(bad.metadata().len(), 1);
    }
}
