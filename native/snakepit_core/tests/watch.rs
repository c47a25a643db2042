//! WatchVariables over gRPC, end to end.

mod common;

use std::time::Duration;

use common::*;
use snakepit_core::proto::bridge_service_client::BridgeServiceClient;
use snakepit_core::proto::*;
use snakepit_core::server::ServerConfig;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

fn watch_req(sid: &str, ids: &[&str], initial: bool) -> WatchVariablesRequest {
    WatchVariablesRequest {
        session_id: sid.into(),
        variable_identifiers: ids.iter().map(|s| s.to_string()).collect(),
        include_initial_values: initial,
        ..Default::default()
    }
}

async fn open(c: &mut BridgeServiceClient<Channel>, req: WatchVariablesRequest) -> Streaming<VariableUpdate> {
    c.watch_variables(req).await.unwrap().into_inner()
}

async fn next(stream: &mut Streaming<VariableUpdate>) -> Option<VariableUpdate> {
    tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("an update within 5 s").unwrap()
}

async fn set_int(c: &mut BridgeServiceClient<Channel>, sid: &str, name: &str, v: i64) {
    c.set_variable(SetVariableRequest {
        session_id: sid.into(),
        variable_identifier: name.into(),
        value: any("integer", &v.to_string()),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn watcher_count(c: &mut BridgeServiceClient<Channel>, sid: &str) -> i32 {
    c.get_session(GetSessionRequest { session_id: sid.into() }).await.unwrap().into_inner().watcher_count
}

/// Polls until the session's watcher count is `want`, failing after 5 s.
async fn await_watchers(c: &mut BridgeServiceClient<Channel>, sid: &str, want: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = watcher_count(c, sid).await;
        if n == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "watcher count stuck at {n}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn initial_values_then_live_changes_with_source() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let id = register(&mut c, "s", "counter", "integer", "0", "").await;
    let mut stream = open(&mut c, watch_req("s", &["counter"], true)).await;
    let first = next(&mut stream).await.unwrap();
    assert_eq!((first.update_type.as_str(), first.variable_id.as_str()), ("initial_value", id.as_str()));
    assert_eq!(watcher_count(&mut c, "s").await, 1);
    // A watcher that keeps up gets every change.
    for v in 1..=3 {
        set_int(&mut c, "s", "counter", v).await;
        let u = next(&mut stream).await.unwrap();
        assert_eq!(u.update_type, "value_change");
        assert_eq!(u.update_source, "python");
        let var = u.variable.unwrap();
        assert_eq!((var.version, var.value.unwrap().value), (v + 1, v.to_string().into_bytes()));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_come_before_anything_is_streamed() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "0", "").await;
    let cases = [
        (watch_req("s", &[], true), Code::InvalidArgument),
        (watch_req("s", &["x", "nope"], true), Code::NotFound),
        (watch_req("nope", &["x"], true), Code::NotFound),
    ];
    for (req, code) in cases {
        assert_eq!(c.watch_variables(req).await.unwrap_err().code(), code);
    }
    assert_eq!(watcher_count(&mut c, "s").await, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn deletion_and_session_cleanup_end_the_stream_with_ok() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "a", "integer", "0", "").await;
    register(&mut c, "s", "b", "integer", "0", "").await;
    let mut stream = open(&mut c, watch_req("s", &["a", "b"], false)).await;
    await_watchers(&mut c, "s", 1).await;
    c.delete_variable(DeleteVariableRequest { session_id: "s".into(), variable_identifier: "a".into() }).await.unwrap();
    let deleted = next(&mut stream).await.unwrap();
    assert_eq!((deleted.update_type.as_str(), deleted.variable.unwrap().name.as_str()), ("deleted", "a"));
    c.cleanup_session(CleanupSessionRequest { session_id: "s".into(), force: false }).await.unwrap();
    let closed = next(&mut stream).await.unwrap();
    assert_eq!(closed.update_type, "session_closed");
    assert!(next(&mut stream).await.is_none(), "the stream ends with OK after session_closed");
    server.shutdown().await;
}

#[tokio::test]
async fn resumed_streams_skip_what_the_client_has() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "a", "integer", "0", "").await;
    register(&mut c, "s", "b", "integer", "0", "").await;
    set_int(&mut c, "s", "a", 1).await; // a at version 2
    let mut req = watch_req("s", &["a", "b"], true);
    req.since_versions = [("a".to_string(), 2), ("b".to_string(), 0)].into();
    let mut stream = open(&mut c, req).await;
    let u = next(&mut stream).await.unwrap();
    assert_eq!((u.update_type.as_str(), u.variable.unwrap().name.as_str()), ("initial_value", "b"));
    set_int(&mut c, "s", "a", 2).await;
    let u = next(&mut stream).await.unwrap();
    assert_eq!((u.update_type.as_str(), u.variable.unwrap().version), ("value_change", 3));
    server.shutdown().await;
}

#[tokio::test]
async fn streams_opened_and_closed_leave_no_watchers() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "0", "").await;
    let before = server.store.stats();
    for round in 0..10 {
        let mut streams = Vec::new();
        for _ in 0..100 {
            let mut s = open(&mut c, watch_req("s", &["x"], true)).await;
            next(&mut s).await.unwrap();
            streams.push(s);
        }
        if round == 0 {
            assert_eq!(watcher_count(&mut c, "s").await, 100);
        }
        drop(streams);
        await_watchers(&mut c, "s", 0).await;
    }
    let after = server.store.stats();
    assert_eq!(after.grpc_watchers, before.grpc_watchers);
    assert_eq!(after.watchers_opened - before.watchers_opened, 1000);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_subscription() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "0", "").await;
    {
        // Its own connection, dropped whole: the server sees the connection close.
        let mut other = server.client().await;
        let mut stream = open(&mut other, watch_req("s", &["x"], true)).await;
        next(&mut stream).await.unwrap();
        await_watchers(&mut c, "s", 1).await;
    }
    await_watchers(&mut c, "s", 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn server_shutdown_ends_open_streams_promptly() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "0", "").await;
    let mut stream = open(&mut c, watch_req("s", &["x"], true)).await;
    next(&mut stream).await.unwrap();
    // shutdown() fails the test if serve() has not returned within 5 s.
    server.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap();
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable),
        Ok(None) => {}
        Ok(Some(u)) => panic!("unexpected update {u:?}"),
    }
}

#[tokio::test]
async fn atomic_batches_arrive_adjacent_on_the_wire() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    for n in ["a", "b", "c"] {
        register(&mut c, "s", n, "integer", "0", "").await;
    }
    let mut stream = open(&mut c, watch_req("s", &["a", "b", "c"], false)).await;
    await_watchers(&mut c, "s", 1).await;
    set_int(&mut c, "s", "c", 1).await;
    c.set_variables(BatchSetVariablesRequest {
        session_id: "s".into(),
        updates: [("a".to_string(), any("integer", "5").unwrap()), ("b".to_string(), any("integer", "5").unwrap())]
            .into(),
        atomic: true,
        ..Default::default()
    })
    .await
    .unwrap();
    set_int(&mut c, "s", "c", 2).await;
    // c's first change may coalesce into its second; the batch must not split.
    let mut names = Vec::new();
    loop {
        let var = next(&mut stream).await.unwrap().variable.unwrap();
        names.push(var.name.clone());
        if var.name == "c" && var.version == 3 {
            break;
        }
    }
    let a = names.iter().position(|n| n == "a").unwrap();
    let b = names.iter().position(|n| n == "b").unwrap();
    assert_eq!(a.abs_diff(b), 1, "{names:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_pattern_watch_over_grpc_gets_matching_registrations() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "temp_a", "integer", "1", "").await;
    let req = WatchVariablesRequest {
        session_id: "s".into(),
        patterns: vec!["temp_*".into()],
        include_initial_values: true,
        ..Default::default()
    };
    let mut stream = open(&mut c, req).await;
    let first = next(&mut stream).await.unwrap();
    assert_eq!((first.update_type.as_str(), first.variable.unwrap().name.as_str()), ("initial_value", "temp_a"));
    register(&mut c, "s", "other", "integer", "2", "").await;
    register(&mut c, "s", "temp_b", "integer", "3", "").await;
    let registered = next(&mut stream).await.unwrap();
    assert_eq!(registered.update_type, "registered");
    let var = registered.variable.unwrap();
    assert_eq!((var.name.as_str(), var.version, var.value.unwrap().value), ("temp_b", 1, b"3".to_vec()));
    // Neither identifiers nor patterns: INVALID_ARGUMENT, as an empty list was.
    let none = c.watch_variables(watch_req("s", &[], true)).await.unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn a_registered_watch_says_so_in_its_headers_and_a_refusal_does_not() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "1", "").await;
    let open = c.watch_variables(watch_req("s", &["x"], false)).await.unwrap();
    assert_eq!(open.metadata().get(snakepit_core::service::WATCH_OPEN_KEY).unwrap(), "open");
    // A refusal is trailers-only: an error status, no such header to be seen.
    let refused = c.watch_variables(watch_req("s", &["missing"], false)).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(refused.metadata().get(snakepit_core::service::WATCH_OPEN_KEY).is_none());
    server.shutdown().await;
}
